//! Token introspection (RFC 7662) and revocation (RFC 7009).
//!
//! Both require an authenticated caller. Introspection is for platform
//! services, which see only tokens meant for them, and for platform
//! components, which see all. Revocation is for the app a token was issued
//! to, and for platform components.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::{Caller, OAuthError, TlsClient, TokenService, secret_hash};

/// Handles `POST /oauth2/introspect`.
pub(super) async fn introspect(
    State(service): State<TokenService>,
    client: Option<Extension<TlsClient>>,
    super::FormBody(body): super::FormBody,
) -> Response {
    let caller = match service.caller(client.as_ref().map(|c| &c.0)) {
        Some(caller @ (Caller::Service(_) | Caller::Platform(_))) => caller,
        _ => {
            return OAuthError::invalid_client("introspection requires a platform service or component certificate")
                .into_response();
        }
    };
    let params = match super::parse_form(&body) {
        Ok(params) => params,
        Err(error) => return error.into_response(),
    };
    let Some(token) = params.get("token") else {
        return OAuthError::invalid_request("token is missing").into_response();
    };

    let inactive = Json(serde_json::json!({ "active": false })).into_response();
    let Ok(claims) = service.inner.verifier.inspect(token, service.now()) else {
        return inactive;
    };
    if let Caller::Service(name) = &caller {
        let own = format!("spiffe://{}/service/{name}", service.inner.trust_domain);
        if claims.aud != own {
            return inactive;
        }
    }

    Json(serde_json::json!({
        "active": true,
        "scope": claims.scope,
        "client_id": claims.client_id,
        "sub": claims.sub,
        "aud": claims.aud,
        "iss": claims.iss,
        "exp": claims.exp,
        "iat": claims.iat,
        "nbf": claims.nbf,
        "jti": claims.jti,
        "token_type": "Bearer",
        "cnf": { "x5t#S256": claims.cnf.x5t_s256 },
    }))
    .into_response()
}

/// Handles `POST /oauth2/revoke`. Unknown and already invalid tokens get
/// 200, as RFC 7009 section 2.2 requires.
pub(super) async fn revoke(
    State(service): State<TokenService>,
    client: Option<Extension<TlsClient>>,
    super::FormBody(body): super::FormBody,
) -> Response {
    match handle_revoke(&service, client.as_ref().map(|c| &c.0), &body).await {
        Ok(()) => axum::http::StatusCode::OK.into_response(),
        Err(error) => error.into_response(),
    }
}

async fn handle_revoke(service: &TokenService, client: Option<&TlsClient>, body: &[u8]) -> Result<(), OAuthError> {
    let caller = match service.caller(client) {
        Some(caller @ (Caller::App(_) | Caller::Platform(_))) => caller,
        _ => {
            return Err(OAuthError::invalid_client(
                "revocation requires the app's or a platform component's certificate",
            ));
        }
    };
    let params = super::parse_form(body)?;
    let Some(token) = params.get("token") else {
        return Err(OAuthError::invalid_request("token is missing"));
    };
    let may_revoke = |app_id: &str| match &caller {
        Caller::App(own) => own == app_id,
        _ => true,
    };

    // An access token: a JWS with three parts.
    if token.split('.').count() == 3 {
        if let Ok(claims) = service.inner.verifier.inspect(token, service.now()) {
            if !may_revoke(&claims.sub) {
                return Err(OAuthError::unauthorized_client("the token was issued to another app"));
            }
            service.inner.store.revoke_access_token(&claims.jti, &claims.sub, claims.exp).await?;
            service.inner.invalidations.revoke_token(&claims.jti, claims.exp);
        }
        return Ok(());
    }

    // A refresh token: revoke its whole family and the access tokens in it.
    if let Some(record) = service.inner.store.refresh_token(&secret_hash(token)).await? {
        if !may_revoke(&record.app_id) {
            return Err(OAuthError::unauthorized_client("the token was issued to another app"));
        }
        super::token_endpoint::revoke_family(service, &record.family_id, &record.app_id).await?;
        tracing::info!(app_id = %record.app_id, "refresh token family revoked on request");
    }
    Ok(())
}
