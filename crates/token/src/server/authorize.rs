//! The authorization endpoint and its consent page (RFC 6749 section 4.1.1,
//! PKCE per RFC 7636).
//!
//! `GET` validates the request and shows the customer the app and the
//! scopes it asks for, with a form to sign in and approve or deny. `POST`
//! checks the CSRF token, the customer's secret and the request again, then
//! redirects back to the app with a code or with `access_denied`.
//!
//! CSRF protection: the page sets a random cookie and embeds an HMAC of the
//! cookie and of every request parameter. A form is accepted once, within
//! 10 minutes. A cross-site form cannot read the
//! cookie (`SameSite=Strict`, `HttpOnly`), so it cannot produce a matching
//! HMAC, and the HMAC also stops a tampered form from approving other scopes.

use std::collections::HashMap;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{PendingCode, TokenService, random_secret, secret_hash};

const CSRF_COOKIE: &str = "portcullis_csrf";

/// How long a consent form stays valid: 10 minutes.
const CSRF_LIFETIME_SECS: i64 = 600;

/// Request parameters the consent form carries through, in a fixed order
/// for the CSRF HMAC.
const CARRIED: [&str; 7] =
    ["response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge", "code_challenge_method"];

/// A validated authorization request.
struct Request {
    app_id: String,
    app_name: String,
    app_owner: String,
    redirect_uri: String,
    scopes: Vec<String>,
    audience: String,
    service: String,
    state: Option<String>,
    code_challenge: String,
}

/// The outcome of a failed request: either the page itself shows the error (the client
/// or redirect URI is not trustworthy, so no redirect) or the error goes
/// back to the registered redirect URI.
enum Failure {
    Page(StatusCode, String),
    Redirect(Response),
}

fn page_error(status: StatusCode, message: impl Into<String>) -> Failure {
    Failure::Page(status, message.into())
}

fn redirect_error(redirect_uri: &str, error: &str, description: &str, state: Option<&str>) -> Failure {
    Failure::Redirect(redirect_with(redirect_uri, &[("error", error), ("error_description", description)], state))
}

fn redirect_with(redirect_uri: &str, params: &[(&str, &str)], state: Option<&str>) -> Response {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        query.append_pair(name, value);
    }
    if let Some(state) = state {
        query.append_pair("state", state);
    }
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{redirect_uri}{separator}{}", query.finish())).into_response()
}

/// Validates the parameters of an authorization request.
async fn validate(service: &TokenService, params: &HashMap<String, String>) -> Result<Request, Failure> {
    let store = &service.inner.store;
    let Some(app_id) = params.get("client_id") else {
        return Err(page_error(StatusCode::BAD_REQUEST, "The request names no client (client_id is missing)."));
    };
    let app = match store.app(app_id).await {
        Ok(Some(app)) => app,
        Ok(None) => return Err(page_error(StatusCode::BAD_REQUEST, format!("No app {app_id:?} is registered."))),
        Err(error) => {
            tracing::error!(%error, "consent page: loading the app failed");
            return Err(page_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error; try again later."));
        }
    };

    // The redirect URI must be registered exactly (RFC 9700 section 2.1);
    // until it is known to be, errors are shown here, never redirected.
    let Some(redirect_uri) = params.get("redirect_uri") else {
        return Err(page_error(StatusCode::BAD_REQUEST, "The request has no redirect_uri."));
    };
    let registered = store.redirect_uris(app_id).await.unwrap_or_default();
    if !registered.contains(redirect_uri) {
        return Err(page_error(
            StatusCode::BAD_REQUEST,
            format!("{redirect_uri:?} is not a registered redirect URI of app {app_id}."),
        ));
    }

    let state = params.get("state").map(String::as_str);
    let fail = |error: &str, description: &str| redirect_error(redirect_uri, error, description, state);

    if params.get("response_type").map(String::as_str) != Some("code") {
        return Err(fail("unsupported_response_type", "response_type must be code"));
    }
    let Some(code_challenge) = params.get("code_challenge") else {
        return Err(fail("invalid_request", "PKCE is required: send code_challenge with code_challenge_method S256"));
    };
    if params.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return Err(fail("invalid_request", "code_challenge_method must be S256"));
    }
    if code_challenge.len() != 43 || URL_SAFE_NO_PAD.decode(code_challenge).is_err() {
        return Err(fail("invalid_request", "code_challenge must be a base64url SHA-256 digest"));
    }

    let scopes: Vec<String> = params
        .get("scope")
        .map(|s| s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    if scopes.is_empty() {
        return Err(fail("invalid_scope", "scope is missing"));
    }
    let Some(target) = service.service_of(&scopes) else {
        return Err(fail("invalid_scope", "scopes are unknown or belong to more than one service"));
    };
    // A customer can only consent within what the operator granted the app.
    let granted = store.grants(Some(app_id)).await.unwrap_or_default();
    if scopes.iter().any(|scope| !granted.iter().any(|g| &g.scope == scope)) {
        return Err(fail("invalid_scope", "the app may not request these scopes"));
    }

    Ok(Request {
        app_id: app.id,
        app_name: app.name,
        app_owner: app.owner,
        redirect_uri: redirect_uri.clone(),
        scopes,
        audience: target.audience.clone(),
        service: target.name.clone(),
        state: state.map(str::to_owned),
        code_challenge: code_challenge.clone(),
    })
}

fn csrf_mac(service: &TokenService, cookie: &str, params: &HashMap<String, String>) -> String {
    let mut message = String::from(cookie);
    for name in CARRIED {
        message.push('\n');
        message.push_str(params.get(name).map_or("", String::as_str));
    }
    let tag = aws_lc_rs::hmac::sign(&service.inner.csrf_key, message.as_bytes());
    URL_SAFE_NO_PAD.encode(tag.as_ref())
}

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

/// Adds the headers every consent response carries: no caching, no
/// framing (clickjacking), no scripts.
fn harden(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn error_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Authorization failed</title></head>\
         <body><h1>Authorization failed</h1><p>{}</p></body></html>",
        escape(message)
    );
    harden((status, Html(body)).into_response())
}

fn consent_page(
    service: &TokenService,
    request: &Request,
    params: &HashMap<String, String>,
    notice: Option<&str>,
) -> Response {
    // The cookie carries its issue time, covered by the MAC, so a form
    // expires after CSRF_LIFETIME_SECS.
    let cookie = format!("{}.{}", random_secret(), service.now());
    let mac = csrf_mac(service, &cookie, params);

    let scopes: String = request.scopes.iter().map(|s| format!("<li><code>{}</code></li>", escape(s))).collect();
    let hidden: String = CARRIED
        .iter()
        .filter_map(|name| params.get(*name).map(|value| (name, value)))
        .map(|(name, value)| format!("<input type=\"hidden\" name=\"{name}\" value=\"{}\">", escape(value)))
        .collect();
    let notice = notice.map(|n| format!("<p role=\"alert\"><strong>{}</strong></p>", escape(n))).unwrap_or_default();

    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Authorize {app}</title></head><body>\
         <h1>Authorize {app}</h1>\
         <p>The app <strong>{app}</strong> (id <code>{id}</code>, by {owner}) asks to use the service \
         <strong>{service_name}</strong> on your behalf with these permissions:</p><ul>{scopes}</ul>{notice}\
         <form method=\"post\" action=\"/oauth2/authorize\">{hidden}\
         <input type=\"hidden\" name=\"csrf\" value=\"{mac}\">\
         <label>Customer id <input name=\"customer_id\" autocomplete=\"username\"></label>\
         <label>Secret <input name=\"customer_secret\" type=\"password\" autocomplete=\"current-password\"></label>\
         <button name=\"decision\" value=\"approve\">Approve</button>\
         <button name=\"decision\" value=\"deny\">Deny</button></form></body></html>",
        app = escape(&request.app_name),
        id = escape(&request.app_id),
        owner = escape(&request.app_owner),
        service_name = escape(&request.service),
    );

    let mut response = harden(Html(body).into_response());
    let cookie = format!("{CSRF_COOKIE}={cookie}; Path=/oauth2/authorize; Secure; HttpOnly; SameSite=Strict");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("cookie is ASCII"));
    response
}

/// Handles `GET /oauth2/authorize`.
pub(super) async fn show(State(service): State<TokenService>, RawQuery(query): RawQuery) -> Response {
    let params = match super::parse_form(query.unwrap_or_default().as_bytes()) {
        Ok(params) => params,
        Err(error) => return error_page(StatusCode::BAD_REQUEST, &error.description),
    };
    match validate(&service, &params).await {
        Ok(request) => consent_page(&service, &request, &params, None),
        Err(Failure::Page(status, message)) => error_page(status, &message),
        Err(Failure::Redirect(response)) => response,
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == CSRF_COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Handles `POST /oauth2/authorize`: the customer's decision.
pub(super) async fn decide(
    State(service): State<TokenService>,
    headers: HeaderMap,
    super::FormBody(body): super::FormBody,
) -> Response {
    let params = match super::parse_form(&body) {
        Ok(params) => params,
        Err(error) => return error_page(StatusCode::BAD_REQUEST, &error.description),
    };

    let now = service.now();
    let csrf_ok = match (cookie_value(&headers), params.get("csrf")) {
        (Some(cookie), Some(mac)) => {
            let expected = csrf_mac(&service, &cookie, &params);
            let genuine =
                aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), mac.as_bytes()).is_ok();
            let issued = cookie.rsplit_once('.').and_then(|(_, t)| t.parse::<i64>().ok()).unwrap_or(0);
            let fresh = now - issued <= CSRF_LIFETIME_SECS;
            // Each form is accepted once: a replayed post is refused.
            genuine && fresh && service.claim_form(mac, issued + CSRF_LIFETIME_SECS)
        }
        _ => false,
    };
    if !csrf_ok {
        tracing::warn!("consent form rejected: CSRF token missing or invalid");
        return error_page(
            StatusCode::FORBIDDEN,
            "The form has expired or was not sent from this page. Start again from the app.",
        );
    }

    let request = match validate(&service, &params).await {
        Ok(request) => request,
        Err(Failure::Page(status, message)) => return error_page(status, &message),
        Err(Failure::Redirect(response)) => return response,
    };
    let state = request.state.as_deref();

    match params.get("decision").map(String::as_str) {
        Some("deny") => {
            tracing::info!(app_id = %request.app_id, "customer denied consent");
            return redirect_with(&request.redirect_uri, &[("error", "access_denied")], state);
        }
        Some("approve") => {}
        _ => return error_page(StatusCode::BAD_REQUEST, "Choose Approve or Deny."),
    }

    let customer_id = params.get("customer_id").map(String::as_str).unwrap_or_default();
    let secret = params.get("customer_secret").map(String::as_str).unwrap_or_default();
    // Each attempt costs an Argon2 hash: limit attempts per customer id,
    // and overall, before computing it.
    if !service.allow_sign_in(customer_id) {
        tracing::warn!(app_id = %request.app_id, customer_id, "consent sign-in rate limited");
        let mut response =
            consent_page(&service, &request, &params, Some("Too many attempts. Wait a minute and try again."));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        return response;
    }
    if !customer_secret_matches(&service, customer_id, secret).await {
        tracing::info!(app_id = %request.app_id, customer_id, "consent sign-in failed");
        let mut response = consent_page(&service, &request, &params, Some("Customer id or secret is wrong."));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    }

    let code = random_secret();
    let pending = PendingCode {
        app_id: request.app_id.clone(),
        customer_id: customer_id.to_owned(),
        redirect_uri: request.redirect_uri.clone(),
        audience: request.audience.clone(),
        scopes: request.scopes.clone(),
        code_challenge: request.code_challenge.clone(),
        expires_at: service.now() + super::CODE_LIFETIME_SECS,
        family_id: None,
    };
    service.inner.codes.lock().unwrap_or_else(|p| p.into_inner()).insert(secret_hash(&code), pending);
    tracing::info!(app_id = %request.app_id, customer_id, scope = %request.scopes.join(" "), "customer approved consent");
    redirect_with(&request.redirect_uri, &[("code", &code)], state)
}

/// Verifies a customer's secret against its Argon2id hash. Unknown
/// customers take the same path through a fixed dummy hash, so the timing
/// does not reveal which ids exist.
async fn customer_secret_matches(service: &TokenService, customer_id: &str, secret: &str) -> bool {
    const DUMMY: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0p3vzmn0JrQfHY8w1ByL3Zv2IxvA0mq7LZbc6C4ftHE";
    let stored = match service.inner.store.customer_secret_hash(customer_id).await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::error!(%error, "consent page: loading the customer failed");
            None
        }
    };
    let known = stored.is_some();
    let hash_text = stored.unwrap_or_else(|| DUMMY.to_owned());
    let secret = secret.to_owned();
    let matches = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash_text)
            .is_ok_and(|hash| Argon2::default().verify_password(secret.as_bytes(), &hash).is_ok())
    })
    .await
    .unwrap_or(false);
    known && matches
}

/// Hashes a customer secret with Argon2id and a random salt, for storing.
pub fn hash_customer_secret(secret: &str) -> String {
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;
    use aws_lc_rs::rand::SecureRandom;

    let mut bytes = [0_u8; 16];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes).expect("system random number generator");
    let salt = SaltString::encode_b64(&bytes).expect("16 bytes is a valid salt length");
    Argon2::default().hash_password(secret.as_bytes(), &salt).expect("Argon2 with default parameters").to_string()
}
