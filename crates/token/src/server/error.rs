//! Error responses of RFC 6749 section 5.2, as JSON.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An OAuth error response. `description` is shown to the client, so it
/// never contains a token, a secret or an internal error; those are logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// HTTP status.
    pub status: StatusCode,
    /// The RFC 6749 error code.
    pub error: &'static str,
    /// A short human-readable reason.
    pub description: String,
    /// Seconds to wait, for 429.
    pub retry_after: Option<u64>,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self { status, error, description: description.into(), retry_after: None }
    }

    /// Creates an error for a missing, repeated or malformed parameter.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// Creates an error for a client that could not be authenticated (HTTP 401).
    pub fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    /// Creates an error for a code or refresh token that is invalid, expired, spent or not the
    /// client's.
    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    /// Creates an error for a client that may not use this grant or operation.
    pub fn unauthorized_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unauthorized_client", description)
    }

    /// Creates an error for a grant type other than the three supported.
    pub fn unsupported_grant_type(grant_type: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!(
                "grant type {grant_type:?} is not supported; use client_credentials, authorization_code or refresh_token"
            ),
        )
    }

    /// Creates an error for a scope that is unknown, not granted, or spans several services.
    pub fn invalid_scope(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", description)
    }

    /// Creates an error for a request body longer than `max` bytes (HTTP 413).
    pub fn body_too_large(max: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            format!("the request body exceeds {max} bytes; send only the form parameters"),
        )
    }

    /// Too many requests from one client.
    pub fn rate_limited(retry_after: u64) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "slow_down",
            format!("too many token requests; retry after {retry_after} s"),
        );
        error.retry_after = Some(retry_after);
        error
    }

    /// Creates an error for an internal failure and logs its detail, which the client never sees.
    pub fn server_error(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "token service failure");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal error; try again later")
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            // Logged where it was created, with the detail.
        } else {
            tracing::info!(error = self.error, description = %self.description, "token request rejected");
        }
        let body = serde_json::json!({ "error": self.error, "error_description": self.description });
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<portcullis_store::StoreError> for OAuthError {
    fn from(error: portcullis_store::StoreError) -> Self {
        Self::server_error(&error)
    }
}
