//! Every failure of the gateway, classified by source, and the one place
//! where a refusal becomes a response.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::path::PathRejection;

/// The origin of a failure, which sets its log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The app sent something the gateway refuses (4xx, logged at info).
    Client,
    /// The upstream service failed or did not respond (5xx, logged at error).
    Upstream,
    /// The gateway itself failed (5xx, logged at error).
    Internal,
}

/// A gateway failure. Messages name the offending value and are for the
/// log only; clients see [`GatewayError::code`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The request path breaks the path rule (see [`crate::path`]).
    #[error("path {path:?} rejected: {rejection}")]
    Path {
        /// The path as received, lossily decoded.
        path: String,
        /// The part of the rule it breaks.
        rejection: PathRejection,
    },

    /// The request's framing or target is ambiguous (RFC 9112 sections 3.2,
    /// 6.1 and 6.3).
    #[error("malformed request: {reason}")]
    Framing {
        /// The problem, naming the header.
        reason: String,
    },

    /// The request method is not one of the registered standard methods
    /// (RFC 9110 section 9.1 and PATCH from RFC 5789). Method names are
    /// case-sensitive, so `post` is an extension method, not POST.
    #[error("method {method:?} is not a standard method; use one of {allowed}")]
    NonStandardMethod {
        /// The method as received.
        method: String,
        /// The accepted methods, space-separated.
        allowed: &'static str,
    },

    /// The request head is larger than `gateway.max_header_bytes`.
    #[error("request head of {size} bytes exceeds the maximum of {max} bytes")]
    HeadersTooLarge {
        /// Size counted: target, names and values with separators.
        size: u64,
        /// The configured maximum.
        max: u64,
    },

    /// The request body is larger than `gateway.max_body_bytes`.
    #[error("request body exceeds the maximum of {max} bytes")]
    BodyTooLarge {
        /// The configured maximum.
        max: u64,
    },

    /// The app stopped sending its request body for the upstream timeout
    /// while the upstream waited for it.
    #[error("request body stalled for {after:?}")]
    BodyStalled {
        /// The upstream timeout that passed.
        after: std::time::Duration,
    },

    /// Reading this request's body whole would take the app's buffered
    /// request bodies over `gateway.max_buffered_bytes_per_app`.
    #[error(
        "app {app_id} would hold more than {limit} bytes of request body buffers, the gateway.max_buffered_bytes_per_app limit"
    )]
    BufferFull {
        /// The app.
        app_id: String,
        /// The limit in bytes.
        limit: u64,
    },

    /// The app's request body failed before its end for the app's fault:
    /// a malformed chunk, or a protocol error that made the gateway reset
    /// the stream.
    #[error("request body failed: {detail}")]
    BodyAborted {
        /// The failure, for the log only.
        detail: String,
    },

    /// The app went away before its request body ended: it closed or
    /// reset the connection, or reset its HTTP/2 stream. No response
    /// reaches it, and the access event gets 499 `client_closed`, as when
    /// it goes away at any other point before the response head.
    #[error("app closed the request before its body ended: {detail}")]
    BodyCutByApp {
        /// The failure, for the log only.
        detail: String,
    },

    /// The gateway's own h2 reset the request's stream for the app's
    /// protocol error after the handler received the request, such as
    /// malformed trailers. No response reaches the app. The access event
    /// matches the one that the HTTP/2 frame watch records for a reset.
    #[error("HTTP/2 stream reset by the gateway with error code {code:#x} for the app's protocol error")]
    Http2StreamReset {
        /// The RST_STREAM error code (RFC 9113 section 7).
        code: u32,
        /// Set when the frame watch has recorded the reset's event already,
        /// so the request records none.
        recorded: bool,
    },

    /// No route covers the path with this method.
    #[error("no route for {method} {path}")]
    NoRoute {
        /// Request method.
        method: String,
        /// Canonical path.
        path: String,
    },

    /// No `Authorization: Bearer` header, or more than one.
    #[error("missing bearer token: {detail}")]
    MissingToken {
        /// The header found instead.
        detail: &'static str,
    },

    /// The token failed verification or lacks the route's scope.
    #[error("token rejected for service {service}: {reason}")]
    Token {
        /// The routed service.
        service: String,
        /// The verifier's reason.
        reason: portcullis_token::RejectReason,
    },

    /// The token belongs to another app than the client certificate.
    #[error("token of app {token_app} presented on a connection of app {certificate_app}")]
    AppMismatch {
        /// The app of the client certificate.
        certificate_app: String,
        /// The token's subject.
        token_app: String,
    },

    /// The connection's client certificate was revoked after the handshake.
    #[error("client certificate {serial} of app {app_id} is revoked")]
    Revoked {
        /// The app.
        app_id: String,
        /// Certificate serial, lowercase hex.
        serial: String,
    },

    /// The connection's client certificate is no longer among the app's
    /// valid pins, for example because it expired after the handshake.
    #[error("client certificate {serial} of app {app_id} is no longer pinned")]
    NotPinned {
        /// The app.
        app_id: String,
        /// Certificate serial, lowercase hex.
        serial: String,
    },

    /// The revocations and pins were not reloaded from the store within
    /// their maximum staleness, so no certificate can be trusted.
    #[error("the trust data is stale; the store may be unreachable")]
    TrustStale,

    /// A guard ban is in force for the app.
    #[error("app {app_id} is banned: {reason}")]
    Banned {
        /// The app.
        app_id: String,
        /// The ban's reason.
        reason: String,
    },

    /// The app is not admitted to any service: it is banned, suspended,
    /// rejected or retired in the store, or registered too recently to be
    /// known to the gateway.
    #[error("app {app_id} is not admitted to any service")]
    NotAdmitted {
        /// The app.
        app_id: String,
    },

    /// The routed service is not among those of the app's space.
    #[error("service {service} is not in the space of app {app_id}")]
    ServiceNotInSpace {
        /// The app.
        app_id: String,
        /// The routed service.
        service: String,
    },

    /// The app already has `gateway.max_connections_per_app` other
    /// connections open. This one gets the refusal for its first request
    /// and is closed.
    #[error("app {app_id} already holds {limit} connections to the gateway, the gateway.max_connections_per_app limit")]
    TooManyConnections {
        /// The app.
        app_id: String,
        /// The limit.
        limit: u32,
    },

    /// The app exceeded its rate for the service, or its guard throttle.
    #[error("app {app_id} exceeded its {limit} rate for service {service}; retry in {retry_after_secs} s")]
    RateLimited {
        /// The app.
        app_id: String,
        /// The routed service.
        service: String,
        /// `configured` or `throttle`.
        limit: &'static str,
        /// Seconds until a request would be allowed, at least 1.
        retry_after_secs: u64,
    },

    /// The upstream could not be reached or failed mid-response.
    #[error("upstream of service {service} failed: {detail}")]
    UpstreamUnreachable {
        /// The service.
        service: String,
        /// The client error chain.
        detail: String,
    },

    /// Opening a connection to the upstream (TCP, TLS handshake and, for
    /// HTTP/2, the connection preface) took longer than the connect timeout.
    #[error("connecting to the upstream of service {service} timed out after {after:?}")]
    UpstreamConnectTimeout {
        /// The service.
        service: String,
        /// The connect timeout.
        after: Duration,
    },

    /// The upstream did not send a response head in time.
    #[error("upstream of service {service} did not respond within {after:?}")]
    UpstreamTimeout {
        /// The service.
        service: String,
        /// `gateway.upstream_timeout`.
        after: Duration,
    },

    /// A service's upstream URL cannot be used.
    #[error("service {service}: upstream URL {url:?} is invalid: {reason}")]
    UpstreamUrl {
        /// The service.
        service: String,
        /// The URL from the configuration.
        url: String,
        /// The problem.
        reason: String,
    },

    /// A gateway setting given through the [`crate::Gateway`] builder is
    /// out of range.
    #[error("invalid gateway setting {setting} = {value}: {reason}")]
    Setting {
        /// The builder method.
        setting: &'static str,
        /// The value given.
        value: String,
        /// The valid range.
        reason: &'static str,
    },

    /// A server name given for the gateway cannot be used.
    #[error("invalid gateway server name {name:?}: {reason}")]
    ServerName {
        /// The name as given.
        name: String,
        /// The problem and how to fix it.
        reason: String,
    },

    /// The listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address from `listeners.gateway`.
        address: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },

    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] portcullis_identity::IdentityError),

    /// The access log file could not be opened.
    #[error("cannot open the access log {path}: {source}")]
    AccessLog {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// Any other internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// Returns where the failure came from.
    pub fn source_class(&self) -> ErrorSource {
        match self {
            Self::UpstreamUnreachable { .. } | Self::UpstreamConnectTimeout { .. } | Self::UpstreamTimeout { .. } => {
                ErrorSource::Upstream
            }
            Self::UpstreamUrl { .. }
            | Self::ServerName { .. }
            | Self::Setting { .. }
            | Self::Bind { .. }
            | Self::Tls(_)
            | Self::AccessLog { .. }
            | Self::TrustStale
            | Self::Internal(_) => ErrorSource::Internal,
            _ => ErrorSource::Client,
        }
    }

    /// Returns the HTTP status the app receives.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Path { .. } | Self::Framing { .. } | Self::NonStandardMethod { .. } => StatusCode::BAD_REQUEST,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyStalled { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::BodyAborted { .. } | Self::Http2StreamReset { .. } => StatusCode::BAD_REQUEST,
            Self::BodyCutByApp { .. } => {
                StatusCode::from_u16(crate::body::CLIENT_CLOSED_STATUS).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::MissingToken { .. } | Self::AppMismatch { .. } => StatusCode::UNAUTHORIZED,
            Self::Token { reason, .. } if reason.error_code() == "insufficient_scope" => StatusCode::FORBIDDEN,
            Self::Token { .. } => StatusCode::UNAUTHORIZED,
            Self::Revoked { .. }
            | Self::NotPinned { .. }
            | Self::Banned { .. }
            | Self::NotAdmitted { .. }
            | Self::ServiceNotInSpace { .. } => StatusCode::FORBIDDEN,
            Self::TrustStale => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited { .. } | Self::TooManyConnections { .. } | Self::BufferFull { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::UpstreamUnreachable { .. } | Self::UpstreamConnectTimeout { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Returns the fixed, short reason the app receives in the `error`
    /// member of the body, and the access event records. It never contains
    /// request or upstream data.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Path { .. } => "invalid_path",
            Self::Framing { .. } => "invalid_request",
            Self::NonStandardMethod { .. } => "invalid_method",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyStalled { .. } => "request_body_timeout",
            Self::BodyAborted { .. } => "invalid_request_body",
            Self::BodyCutByApp { .. } => crate::body::CLIENT_CLOSED,
            Self::Http2StreamReset { .. } => crate::body::H2_STREAM_ERROR,
            Self::NoRoute { .. } => "no_route",
            Self::MissingToken { .. } => "missing_token",
            Self::Token { reason, .. } => reason.error_code(),
            Self::AppMismatch { .. } => "invalid_token",
            Self::Revoked { .. } => "certificate_revoked",
            Self::NotPinned { .. } => "certificate_not_pinned",
            Self::TrustStale => "trust_unavailable",
            Self::Banned { .. } => "banned",
            Self::RateLimited { .. } => "rate_limited",
            Self::TooManyConnections { .. } => "too_many_connections",
            Self::BufferFull { .. } => "request_buffer_full",
            Self::NotAdmitted { .. } => crate::events::NOT_ADMITTED,
            Self::ServiceNotInSpace { .. } => "service_not_in_space",
            Self::UpstreamUnreachable { .. } => "upstream_unreachable",
            Self::UpstreamConnectTimeout { .. } => "upstream_connect_timeout",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            _ => "internal_error",
        }
    }

    /// Returns a fixed sentence saying which check failed, for the
    /// `error_description` member of the body. Like [`Self::code`], it never
    /// contains request or upstream data.
    pub fn description(&self) -> &'static str {
        match self {
            Self::Path { .. } => "the path is not in canonical form or contains a forbidden spelling",
            Self::Framing { .. } => "the request's framing or headers are malformed",
            Self::NonStandardMethod { .. } => "the method is not a standard HTTP method in upper case",
            Self::HeadersTooLarge { .. } => "the request headers exceed the gateway's limit",
            Self::BodyTooLarge { .. } => "the request body exceeds the gateway's limit",
            Self::BodyStalled { .. } => "the request body did not arrive in time",
            Self::BodyAborted { .. } => "the request body ended before it was complete",
            Self::BodyCutByApp { .. } => "the app closed the request before its body ended",
            Self::Http2StreamReset { .. } => "the request broke the HTTP/2 protocol and its stream was reset",
            Self::NoRoute { .. } => "no route matches this method and path",
            Self::MissingToken { .. } => "exactly one Authorization: Bearer header is required",
            Self::Token { reason, .. } => reason.description(),
            Self::AppMismatch { .. } => "the token was issued to another app than the client certificate's",
            Self::Revoked { .. } => "the client certificate was revoked",
            Self::NotPinned { .. } => {
                "the client certificate is no longer valid for this app; reconnect with a current one"
            }
            Self::TrustStale => "the gateway cannot check certificates right now; retry later",
            Self::Banned { .. } => "the app is banned by the platform",
            Self::RateLimited { .. } => {
                "the app's rate limit for this service is exhausted; retry after Retry-After seconds"
            }
            Self::NotAdmitted { .. } => "the app is not admitted to platform services in its current state",
            Self::ServiceNotInSpace { .. } => "the service is not available in the app's space",
            Self::TooManyConnections { .. } => {
                "the app has as many connections open as the gateway allows; send requests on an open connection"
            }
            Self::BufferFull { .. } => {
                "the app's request bodies in flight fill its buffer at the gateway; send fewer at once, or declare Content-Length"
            }
            Self::UpstreamUnreachable { .. } => "the service is unreachable",
            Self::UpstreamConnectTimeout { .. } => "the service did not accept a connection in time",
            Self::UpstreamTimeout { .. } => "the service did not answer in time",
            _ => "the gateway failed; the request id identifies the failure in the platform's logs",
        }
    }

    /// Logs the failure with its detail at the level of its source and
    /// builds the response: the status, the fixed JSON body
    /// `{"error": code, "error_description": text, "request_id": id}` and,
    /// where RFC 6750 section 3
    /// or RFC 9110 section 10.2.3 asks for them, `WWW-Authenticate` or
    /// `Retry-After`.
    pub fn to_response(&self, request_id: &str) -> Response<Full<Bytes>> {
        let status = self.status();
        match self.source_class() {
            ErrorSource::Client if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED => {
                tracing::warn!(request_id, status = status.as_u16(), error = %self, "request rejected")
            }
            ErrorSource::Client => {
                tracing::info!(request_id, status = status.as_u16(), error = %self, "request rejected")
            }
            ErrorSource::Upstream | ErrorSource::Internal => {
                tracing::error!(request_id, status = status.as_u16(), error = %self, "request failed")
            }
        }

        let body = serde_json::json!({
            "error": self.code(),
            "error_description": self.description(),
            "request_id": request_id,
        })
        .to_string();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            Self::MissingToken { .. } => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Token { .. } | Self::AppMismatch { .. } => {
                let value = format!("Bearer error=\"{}\", error_description=\"{}\"", self.code(), self.description());
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(header::WWW_AUTHENTICATE, value);
                }
            }
            Self::RateLimited { retry_after_secs, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::TooManyConnections { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Self::BufferFull { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            Self::Revoked { .. } | Self::NotPinned { .. } | Self::Framing { .. } => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}
