//! Errors of the egress engine. A refused destination is not an error but a
//! [`Decision`](crate::Decision); these are failures to build rules, open a
//! database, resolve or connect.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A host that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host {host:?}: {reason}")]
pub struct HostError {
    /// The host as requested.
    pub host: String,
    /// The problem, as a sentence fragment.
    pub reason: &'static str,
}

/// A failure of the egress engine outside a decision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EgressError {
    /// An app's manifest requests a host the platform (or the app's space)
    /// does not allow. Likely cause: the app developer listed a host the
    /// operator has not put in `egress.allow_hosts`.
    #[error(
        "app {app_id}: egress host {host:?} is not allowed by {scope}; an app's list can only narrow it, so remove the host from the manifest or ask the operator to add it"
    )]
    HostWidened {
        /// The app.
        app_id: String,
        /// The host pattern as written in the manifest.
        host: String,
        /// The list that would have been widened (`egress.allow_hosts` or
        /// `spaces.<name>.egress_allow_hosts`).
        scope: String,
    },

    /// An app's manifest lists a host pattern that is not well formed.
    #[error("app {app_id}: invalid egress host {host:?} in the manifest: expected {expected}")]
    InvalidManifestHost {
        /// The app.
        app_id: String,
        /// The host pattern as written.
        host: String,
        /// The accepted form, with the normalised spelling where there is one.
        expected: String,
    },

    /// The MaxMind-format country database could not be opened or is not a
    /// country database.
    #[error("cannot open the country database {path}: {message}; check egress.countries.database")]
    CountryDatabase {
        /// The database file.
        path: PathBuf,
        /// The reader's message.
        message: String,
    },

    /// The system resolver configuration could not be read.
    #[error("cannot set up the DNS resolver: {message}; check /etc/resolv.conf")]
    ResolverSetup {
        /// The resolver's message.
        message: String,
    },

    /// Connecting to a checked address failed.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// The address tried last.
        address: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },

    /// No checked address accepted a connection within the connect timeout.
    #[error(
        "connecting to {address} timed out after {timeout:?}; raise egress.connect_timeout if the destination is slow"
    )]
    ConnectTimeout {
        /// The address tried last.
        address: SocketAddr,
        /// The timeout for one attempt.
        timeout: Duration,
    },

    /// The app already has the maximum number of open tunnels.
    #[error(
        "app {app_id} already has {limit} open egress tunnels, the egress.max_tunnels_per_app limit; close one first"
    )]
    TunnelLimit {
        /// The app.
        app_id: String,
        /// The limit.
        limit: u32,
    },

    /// The app has moved its `egress.max_bytes_per_app` in the current
    /// accounting period.
    #[error(
        "app {app_id} has moved {bytes} bytes through the egress proxy, reaching the egress.max_bytes_per_app limit of {limit} bytes; the period ends in {resets_in:?}"
    )]
    ByteLimit {
        /// The app.
        app_id: String,
        /// Bytes counted in the current period.
        bytes: u64,
        /// The cap, in bytes per period.
        limit: u64,
        /// Time until the current period ends.
        resets_in: Duration,
    },
}
