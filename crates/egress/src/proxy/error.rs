//! Errors of the proxy server: refused or failed requests and failed secret
//! operations, each mapped to the status code the client gets.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use portcullis_store::StoreError;

use crate::decision::ReasonCode;
use crate::error::EgressError;

/// A request the proxy refused or could not serve, or a failed secret
/// operation. The message is for the log and names the app, host and
/// value; clients get only the fixed body of [`reply`](super::reply).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The request has no usable `Proxy-Authorization: Basic` header.
    /// Likely cause: the app's HTTP client was started without the
    /// credentials in its `HTTP_PROXY` or `HTTPS_PROXY` URL.
    #[error("request from {peer} has no valid Proxy-Authorization Basic credentials: {problem}")]
    MissingCredentials {
        /// The client's address.
        peer: SocketAddr,
        /// The problem with the header.
        problem: &'static str,
    },

    /// The credentials name an app whose secret does not match, or an app
    /// that has no secret. Likely cause: a secret from an earlier deploy,
    /// or one app trying another app's identity.
    #[error("app {claimed:?} from {peer} presented a wrong egress proxy secret")]
    WrongSecret {
        /// The app id as claimed, which is not proven.
        claimed: String,
        /// The client's address.
        peer: SocketAddr,
    },

    /// The guard has banned the app.
    #[error("app {app_id} is banned, so its egress request was refused")]
    Banned {
        /// The app.
        app_id: String,
    },

    /// The app authenticated, but no egress rules are registered for it.
    /// Likely cause: the runtime issued a secret but did not insert the
    /// app's rules into the proxy's `AppDirectory`.
    #[error("app {app_id} has no egress rules registered on this proxy; insert them at deploy")]
    NotDeployed {
        /// The app.
        app_id: String,
    },

    /// The request target is not authority-form for CONNECT, nor
    /// absolute-form `http://` for other methods.
    #[error("app {app_id}: invalid request target {target:?}: {problem}")]
    BadTarget {
        /// The app.
        app_id: String,
        /// The request target as received.
        target: String,
        /// The problem, also sent to the client.
        problem: &'static str,
    },

    /// The app already has `max_tunnels_per_app` tunnels or exchanges open.
    #[error("app {app_id} already has {limit} open egress tunnels, the egress.max_tunnels_per_app limit")]
    TunnelLimit {
        /// The app.
        app_id: String,
        /// The limit.
        limit: u32,
    },

    /// The app has reached `egress.max_bytes_per_app` in the current
    /// accounting period.
    #[error("app {app_id}: egress to {host}:{port} refused: {source}")]
    ByteLimit {
        /// The app.
        app_id: String,
        /// The host as requested.
        host: String,
        /// The port.
        port: u16,
        /// The byte cap's error, naming the count, the cap and the time
        /// until the period ends.
        source: EgressError,
    },

    /// The engine refused the destination.
    #[error("app {app_id}: egress to {host}:{port} denied by {rule} ({})", reason.as_str())]
    Denied {
        /// The app.
        app_id: String,
        /// The host, normalised.
        host: String,
        /// The port.
        port: u16,
        /// The rule that refused it.
        rule: String,
        /// The reason code.
        reason: ReasonCode,
    },

    /// No checked address accepted a connection within `connect_timeout`.
    #[error("app {app_id}: connecting to {host}:{port} failed: {source}")]
    ConnectTimeout {
        /// The app.
        app_id: String,
        /// The host, normalised.
        host: String,
        /// The port.
        port: u16,
        /// The engine's error, naming the address and the timeout.
        source: EgressError,
    },

    /// Every checked address refused the connection or was unreachable.
    #[error("app {app_id}: connecting to {host}:{port} failed: {source}")]
    Unreachable {
        /// The app.
        app_id: String,
        /// The host, normalised.
        host: String,
        /// The port.
        port: u16,
        /// The engine's error, naming the address.
        source: EgressError,
    },

    /// The HTTP exchange with the destination failed after connecting.
    #[error("app {app_id}: the HTTP exchange with {host}:{port} failed: {message}")]
    Upstream {
        /// The app.
        app_id: String,
        /// The host, normalised.
        host: String,
        /// The port.
        port: u16,
        /// The HTTP client's message.
        message: String,
    },

    /// The destination sent no response head while the exchange was idle
    /// for `idle_timeout`, or within `max_tunnel_lifetime`.
    #[error("app {app_id}: {host}:{port} sent no response within {timeout:?}")]
    UpstreamTimeout {
        /// The app.
        app_id: String,
        /// The host, normalised.
        host: String,
        /// The port.
        port: u16,
        /// The limit that ran out.
        timeout: Duration,
    },

    /// Reading or writing an app's proxy secret in the store failed.
    #[error("egress proxy secret of app {app_id}: {source}")]
    Store {
        /// The app.
        app_id: String,
        /// The store's error.
        source: StoreError,
    },
}

impl ProxyError {
    /// Returns the status code the client gets for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingCredentials { .. } | Self::WrongSecret { .. } => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Self::Banned { .. } | Self::NotDeployed { .. } | Self::Denied { .. } | Self::ByteLimit { .. } => {
                StatusCode::FORBIDDEN
            }
            Self::BadTarget { .. } => StatusCode::BAD_REQUEST,
            Self::TunnelLimit { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ConnectTimeout { .. } | Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Unreachable { .. } | Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::Store { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}
