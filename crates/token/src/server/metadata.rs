//! Authorization server metadata (RFC 8414) and the JWKS (RFC 7517).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::TokenService;

/// Handles `GET /.well-known/oauth-authorization-server`.
pub(super) async fn metadata(State(service): State<TokenService>) -> Json<serde_json::Value> {
    let issuer = service.inner.issuer.issuer();
    let scopes = service.scopes();
    let mut grant_types = vec!["client_credentials", "refresh_token"];
    if service.inner.consent_url.is_some() {
        grant_types.push("authorization_code");
    }
    let mut document = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
        "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
        "jwks_uri": format!("{issuer}/oauth2/jwks"),
        "scopes_supported": scopes,
        "response_types_supported": ["code"],
        "grant_types_supported": grant_types,
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["tls_client_auth"],
        "introspection_endpoint_auth_methods_supported": ["tls_client_auth"],
        "revocation_endpoint_auth_methods_supported": ["tls_client_auth"],
        "tls_client_certificate_bound_access_tokens": true,
        "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
    });
    if let Some(consent) = &service.inner.consent_url {
        document["authorization_endpoint"] = format!("{consent}/oauth2/authorize").into();
    }
    Json(document)
}

/// Handles `GET /oauth2/jwks`.
pub(super) async fn jwks(State(service): State<TokenService>) -> Response {
    let now = service.now();
    let document = service.inner.issuer.keys().read().unwrap_or_else(|p| p.into_inner()).jwks(now);
    let mut response = Json(document).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
    response
}
