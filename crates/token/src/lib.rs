//! OAuth 2.0 access tokens for Portcullis apps.
//!
//! Access tokens are JWTs in the RFC 9068 profile, signed ES256 and bound to
//! the app's mutual-TLS certificate with the `cnf` claim's `x5t#S256`
//! member (RFC 8705 section 3.1). A stolen token is useless without the
//! app's private key, because the gateway compares the binding with the
//! certificate of the connection the token arrived on.
//!
//! - [`SigningKeys`]: ES256 keys with rotation and a grace period, and the JWKS.
//! - [`TokenIssuer`]: mints tokens.
//! - [`Verifier`]: the gateway's check of every token, returning a
//!   [`VerifiedToken`] that only it can construct.
//! - [`Invalidations`]: revoked token ids and per-app cut-off times, pushed
//!   to verifiers so that revocation, grant withdrawal, a ban or credential
//!   rotation take effect before the token expires.

mod claims;
mod invalidation;
mod issue;
mod keys;
pub mod server;
mod verify;

use std::path::PathBuf;

pub use claims::{AccessClaims, Confirmation, certificate_thumbprint};
pub use invalidation::{Invalidations, InvalidationsHandle};
pub use issue::{TokenIssuer, TokenRequest};
pub use keys::{PublicKey, SigningKeys};
pub use verify::{RejectReason, VerifiedToken, Verifier, VerifierKeys};

/// The JWS `typ` header of access tokens (RFC 9068 section 2.1).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// Default access token lifetime: 5 minutes.
pub const DEFAULT_LIFETIME_SECS: i64 = 300;

/// Default clock leeway for time claims: 30 seconds.
pub const DEFAULT_LEEWAY_SECS: i64 = 30;

/// A failure of the token service itself, as opposed to a rejected token
/// (see [`RejectReason`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// A signing key could not be created or decoded.
    #[error("signing key {kid}: {reason}")]
    Key {
        /// Key id, or a placeholder for a key without one yet.
        kid: String,
        /// What failed.
        reason: String,
    },

    /// The key file could not be read or written.
    #[error("token key file {path}: {reason}; check its permissions, or move it away to start with a fresh key")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },

    /// Signing a token failed.
    #[error("signing a token for app {app_id} failed: {reason}")]
    Sign {
        /// The app the token was for.
        app_id: String,
        /// What failed.
        reason: String,
    },
}
