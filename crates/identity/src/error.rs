//! The error type of the identity crate.

use std::path::PathBuf;

/// An identity operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// `ca init` found a CA already in place.
    #[error("a CA already exists in {}: pass --force to replace it (every certificate it issued stops verifying)", dir.display())]
    CaExists {
        /// The CA directory.
        dir: PathBuf,
    },

    /// A file the CA needs is missing.
    #[error("{} is missing: run `portcullis ca init` first, or restore the file", path.display())]
    CaFileMissing {
        /// The missing file.
        path: PathBuf,
    },

    /// Reading or writing a file failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done: "read", "write", "create".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// A PEM file holds no usable certificate or key.
    #[error("invalid PEM in {}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A CA certificate on disk is not a CA certificate of a SPIFFE trust
    /// domain, or does not match its key.
    #[error("invalid CA certificate {}: {reason}; run `portcullis ca init --force` to create a new CA", path.display())]
    InvalidCa {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A trust domain, app id, service or component name is not usable in a
    /// SPIFFE id.
    #[error("invalid {what} {value:?}: {rule}")]
    InvalidName {
        /// Which kind of name: "trust domain", "app id", ...
        what: &'static str,
        /// The value given.
        value: String,
        /// The rule it breaks.
        rule: String,
    },

    /// A DNS name for a server certificate is not a valid DNS name or IP
    /// address.
    #[error("invalid DNS name {value:?} for a certificate: use a name such as gateway.example or an IP address")]
    InvalidDnsName {
        /// The value given.
        value: String,
    },

    /// A certificate lifetime is zero or too long to represent.
    #[error("invalid certificate lifetime {seconds} s: use a lifetime between 1 s and 397 days")]
    InvalidLifetime {
        /// The lifetime given, in seconds.
        seconds: u64,
    },

    /// rcgen failed to build or sign a certificate.
    #[error("cannot create the certificate for {identity}: {source}")]
    Certificate {
        /// The SPIFFE id or CA name being issued.
        identity: String,
        /// The rcgen error.
        source: rcgen::Error,
    },

    /// The operating system's random number generator failed.
    #[error("cannot draw a random certificate serial: the system random number generator failed")]
    Random,

    /// A certificate could not be parsed as X.509.
    #[error("cannot parse the certificate: {reason}")]
    Parse {
        /// The parser's message.
        reason: String,
    },

    /// rustls refused a certificate, key or configuration.
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),

    /// The platform CA has no usable root certificate for a trust store.
    #[error("cannot use the platform root certificate as a trust anchor: {reason}")]
    TrustAnchor {
        /// The verifier builder's message.
        reason: String,
    },

    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] portcullis_store::StoreError),
}

impl IdentityError {
    /// Wraps an I/O error with the action and the path.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { action, path, source }
    }
}
