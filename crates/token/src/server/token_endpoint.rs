//! The token endpoint (RFC 6749 section 3.2).

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_store::{AppState, DecisionKind, RefreshTokenRecord, RefreshUse};
use tracing::Instrument;

use super::{Caller, OAuthError, TlsClient, TokenService, random_secret, secret_hash};
use crate::{AccessClaims, TokenRequest};

/// Handles `POST /oauth2/token`.
pub(super) async fn token(
    State(service): State<TokenService>,
    client: Option<Extension<TlsClient>>,
    headers: axum::http::HeaderMap,
    super::FormBody(body): super::FormBody,
) -> Response {
    // RFC 6749 section 3.2: parameters come form-encoded.
    let form = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")
    });
    if !form {
        return OAuthError::invalid_request("the body must be application/x-www-form-urlencoded").into_response();
    }
    match handle(&service, client.as_ref().map(|c| &c.0), &body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn handle(service: &TokenService, client: Option<&TlsClient>, body: &[u8]) -> Result<Response, OAuthError> {
    // Client authentication first (RFC 8705 section 2): only an app's
    // certificate is a client credential here.
    let Some(client) = client else {
        return Err(OAuthError::invalid_client("a client certificate issued by the platform CA is required"));
    };
    let Some(Caller::App(app_id)) = service.caller(Some(client)) else {
        return Err(OAuthError::invalid_client(format!(
            "client certificate identity {} is not an app of this platform",
            client.spiffe_id
        )));
    };

    let params = super::parse_form(body)?;
    if let Some(client_id) = params.get("client_id") {
        if client_id != &app_id {
            return Err(OAuthError::invalid_client(format!(
                "client_id {client_id:?} does not match the client certificate (app {app_id})"
            )));
        }
    }

    if let Err(not_until) = service.inner.limiter.check_key(&app_id) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        return Err(OAuthError::rate_limited(wait.as_secs().max(1)));
    }

    check_app_standing(service, &app_id).await?;

    let span = tracing::info_span!("token_request", app_id = %app_id);
    async {
        match params.get("grant_type").map(String::as_str) {
            None => Err(OAuthError::invalid_request("grant_type is missing")),
            Some("client_credentials") => client_credentials(service, &app_id, client, &params).await,
            Some("authorization_code") => authorization_code(service, &app_id, client, &params).await,
            Some("refresh_token") => refresh_token(service, &app_id, client, &params).await,
            Some(other) => Err(OAuthError::unsupported_grant_type(other)),
        }
    }
    .instrument(span)
    .await
}

/// Refuses apps that are not registered, not in a running state, or banned.
async fn check_app_standing(service: &TokenService, app_id: &str) -> Result<(), OAuthError> {
    let store = &service.inner.store;
    let Some(app) = store.app(app_id).await? else {
        return Err(OAuthError::invalid_client(format!("app {app_id} is not registered")));
    };
    if matches!(app.state, AppState::Banned | AppState::Suspended | AppState::Rejected | AppState::Retired) {
        return Err(OAuthError::unauthorized_client(format!("app {app_id} is {}", app.state)));
    }
    let now_ms = service.now() * 1000;
    let banned = store
        .decisions(Some(app_id))
        .await?
        .iter()
        .any(|d| d.in_force_at(now_ms) && d.decision.kind == DecisionKind::Ban);
    if banned {
        return Err(OAuthError::unauthorized_client(format!("app {app_id} is banned")));
    }
    Ok(())
}

fn split_scopes(scope: Option<&String>) -> Result<Vec<String>, OAuthError> {
    let scopes: Vec<String> =
        scope.map(|s| s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default();
    if scopes.is_empty() {
        return Err(OAuthError::invalid_scope(
            "scope is missing; request the scopes of one service, such as weather:read",
        ));
    }
    Ok(scopes)
}

/// The client credentials grant (RFC 6749 section 4.4): scopes the operator
/// granted to the app, all of one service.
async fn client_credentials(
    service: &TokenService,
    app_id: &str,
    client: &TlsClient,
    params: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    let scopes = split_scopes(params.get("scope"))?;
    let Some(target) = service.service_of(&scopes) else {
        return Err(OAuthError::invalid_scope(format!(
            "scopes {:?} are unknown or belong to more than one service",
            scopes.join(" ")
        )));
    };

    let granted = service.inner.store.grants(Some(app_id)).await?;
    if let Some(missing) = scopes.iter().find(|scope| !granted.iter().any(|g| &g.scope == *scope)) {
        return Err(OAuthError::invalid_scope(format!("scope {missing} is not granted to app {app_id}")));
    }

    let audience = target.audience.clone();
    let (token, claims) = mint(service, app_id, &audience, &scopes, client)?;
    tracing::info!(app_id, service = %target.name, scope = %claims.scope, jti = %claims.jti, "access token issued");
    Ok(token_response(&token, &claims, None))
}

fn mint(
    service: &TokenService,
    app_id: &str,
    audience: &str,
    scopes: &[String],
    client: &TlsClient,
) -> Result<(String, AccessClaims), OAuthError> {
    let request = TokenRequest { app_id, audience, scopes, certificate_der: &client.certificate_der };
    service.inner.issuer.issue(&request, service.now()).map_err(|e| OAuthError::server_error(&e))
}

fn token_response(token: &str, claims: &AccessClaims, refresh_token: Option<&str>) -> Response {
    let mut body = serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": claims.exp - claims.iat,
        "scope": claims.scope,
    });
    if let Some(refresh) = refresh_token {
        body["refresh_token"] = refresh.into();
    }
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn required<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<&'a str, OAuthError> {
    params.get(name).map(String::as_str).ok_or_else(|| OAuthError::invalid_request(format!("{name} is missing")))
}

/// Checks a PKCE code verifier against an S256 challenge (RFC 7636 section
/// 4.6): 43 to 128 unreserved characters whose SHA-256, base64url, is the
/// challenge.
fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !well_formed {
        return false;
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref()) == challenge
}

/// Checks that the operator still grants the app every one of `scopes`.
async fn check_still_granted(service: &TokenService, app_id: &str, scopes: &[String]) -> Result<(), OAuthError> {
    let granted = service.inner.store.grants(Some(app_id)).await?;
    match scopes.iter().find(|scope| !granted.iter().any(|g| &g.scope == *scope)) {
        Some(missing) => {
            Err(OAuthError::invalid_grant(format!("scope {missing} is no longer granted to app {app_id}")))
        }
        None => Ok(()),
    }
}

enum CodeRefusal {
    /// The code was exchanged before; the family issued from it.
    Replayed(String),
    /// Unknown, expired, or not this client's.
    Invalid(&'static str),
}

/// Checks a presented code and marks it spent.
fn claim_code(
    service: &TokenService,
    app_id: &str,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
    now: i64,
) -> Result<super::PendingCode, CodeRefusal> {
    let mut codes = service.inner.codes.lock().unwrap_or_else(|p| p.into_inner());
    let Some(pending) = codes.get_mut(&secret_hash(code)).filter(|p| p.expires_at > now) else {
        return Err(CodeRefusal::Invalid("authorization code is invalid or expired"));
    };
    if let Some(family) = &pending.family_id {
        return Err(CodeRefusal::Replayed(family.clone()));
    }
    if pending.app_id != app_id || pending.redirect_uri != redirect_uri {
        return Err(CodeRefusal::Invalid("authorization code was issued to another client or redirect URI"));
    }
    if !pkce_matches(verifier, &pending.code_challenge) {
        return Err(CodeRefusal::Invalid("code_verifier does not match the code challenge"));
    }
    pending.family_id = Some(random_secret());
    Ok(pending.clone())
}

/// The authorization code grant (RFC 6749 section 4.1.3) with PKCE.
async fn authorization_code(
    service: &TokenService,
    app_id: &str,
    client: &TlsClient,
    params: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    let code = required(params, "code")?;
    let redirect_uri = required(params, "redirect_uri")?;
    let verifier = required(params, "code_verifier")?;
    let now = service.now();

    // Mark the code spent, so a replay is detected. The lock is released
    // before any await.
    let claimed = claim_code(service, app_id, code, redirect_uri, verifier, now);
    let pending = match claimed {
        Ok(pending) => pending,
        Err(CodeRefusal::Replayed(family)) => {
            revoke_family(service, &family, app_id).await?;
            tracing::warn!(app_id, family = %family, "authorization code replayed; tokens issued from it revoked");
            return Err(OAuthError::invalid_grant("authorization code was already used"));
        }
        Err(CodeRefusal::Invalid(description)) => return Err(OAuthError::invalid_grant(description)),
    };

    let family = pending.family_id.clone().expect("just set");
    check_still_granted(service, app_id, &pending.scopes).await?;
    let (token, claims) = mint(service, app_id, &pending.audience, &pending.scopes, client)?;
    let refresh = store_refresh_token(service, &family, &pending.customer_id, &pending.audience, &claims).await?;
    tracing::info!(app_id, customer_id = %pending.customer_id, jti = %claims.jti, "access and refresh token issued for consent");
    Ok(token_response(&token, &claims, Some(&refresh)))
}

async fn store_refresh_token(
    service: &TokenService,
    family_id: &str,
    customer_id: &str,
    audience: &str,
    claims: &AccessClaims,
) -> Result<String, OAuthError> {
    let refresh = random_secret();
    let now_ms = service.now() * 1000;
    service
        .inner
        .store
        .insert_refresh_token(&RefreshTokenRecord {
            token_hash: secret_hash(&refresh),
            family_id: family_id.to_owned(),
            app_id: claims.sub.clone(),
            customer_id: customer_id.to_owned(),
            audience: audience.to_owned(),
            scopes: claims.scope.clone(),
            access_jti: claims.jti.clone(),
            access_exp: claims.exp,
            issued_at: now_ms,
            expires_at: now_ms + service.inner.refresh_lifetime_secs * 1000,
            used_at: None,
            revoked_at: None,
        })
        .await?;
    Ok(refresh)
}

/// Revokes a refresh token family and every access token issued with it.
pub(super) async fn revoke_family(service: &TokenService, family_id: &str, app_id: &str) -> Result<(), OAuthError> {
    let store = &service.inner.store;
    let access = store.revoke_refresh_family(family_id, service.now() * 1000).await?;
    for (jti, exp) in access {
        store.revoke_access_token(&jti, app_id, exp).await?;
        service.inner.invalidations.revoke_token(&jti, exp);
    }
    Ok(())
}

/// The refresh token grant (RFC 6749 section 6), rotating the refresh token
/// on every use.
async fn refresh_token(
    service: &TokenService,
    app_id: &str,
    client: &TlsClient,
    params: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    let presented = required(params, "refresh_token")?;
    let hash = secret_hash(presented);
    let store = &service.inner.store;

    // A token of another app is refused before it is spent, so one app
    // cannot burn another's family.
    match store.refresh_token(&hash).await? {
        Some(record) if record.app_id == app_id => {}
        _ => return Err(OAuthError::invalid_grant("refresh token is invalid, expired or revoked")),
    }

    let record = match store.use_refresh_token(&hash, service.now() * 1000).await? {
        RefreshUse::Fresh(record) => record,
        RefreshUse::Reused { family_id, access_tokens, .. } => {
            for (jti, exp) in access_tokens {
                store.revoke_access_token(&jti, app_id, exp).await?;
                service.inner.invalidations.revoke_token(&jti, exp);
            }
            tracing::warn!(app_id, family = %family_id, "spent refresh token reused; token family revoked");
            return Err(OAuthError::invalid_grant("refresh token was already used; its token family is revoked"));
        }
        RefreshUse::Invalid | RefreshUse::Unknown => {
            return Err(OAuthError::invalid_grant("refresh token is invalid, expired or revoked"));
        }
    };

    // A refresh may narrow the scopes, never widen them (section 6).
    let consented: Vec<String> = record.scopes.split(' ').map(str::to_owned).collect();
    let scopes = match params.get("scope") {
        None => consented.clone(),
        Some(_) => {
            let requested = split_scopes(params.get("scope"))?;
            if let Some(extra) = requested.iter().find(|s| !consented.contains(s)) {
                return Err(OAuthError::invalid_scope(format!("scope {extra} was not consented to")));
            }
            requested
        }
    };

    // A customer's consent lives within the operator's grants: once the
    // operator withdraws a scope, the family cannot mint it again.
    if let Err(error) = check_still_granted(service, app_id, &scopes).await {
        revoke_family(service, &record.family_id, app_id).await?;
        tracing::info!(app_id, family = %record.family_id, "refresh rejected: a consented scope is no longer granted; family revoked");
        return Err(error);
    }

    let (token, claims) = mint(service, app_id, &record.audience, &scopes, client)?;
    let refresh =
        store_refresh_token(service, &record.family_id, &record.customer_id, &record.audience, &claims).await?;
    tracing::info!(app_id, jti = %claims.jti, "access token refreshed");
    Ok(token_response(&token, &claims, Some(&refresh)))
}
