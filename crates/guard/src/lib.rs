//! The guard of Portcullis: statistics per app over sliding windows,
//! policies, and ban and throttle decisions with escalation.
//!
//! Detection is separate from remediation. The gateway and the egress proxy
//! turn their events into [`GuardEvent`]s and queue them with an
//! [`EventSender`], which never waits. The [`Guard`] counts them per app and
//! per service, and when a policy's count in its window reaches the
//! threshold it stores a decision and then publishes the new
//! [`DecisionSet`]. Enforcement points subscribe with a [`DecisionReceiver`]
//! and ask [`DecisionSet::verdict`] before each request or connection.
//!
//! Not in this crate: enforcing verdicts (the gateway, the egress proxy and
//! the runtime do that) and exporting metrics.

mod clock;
mod decisions;
mod engine;
mod event;
mod metrics;
mod policy;
mod stats;
mod window;

use std::time::Duration;

pub use clock::{Clock, ManualClock, SystemClock};
pub use decisions::{DecisionReceiver, DecisionSet, Verdict};
pub use engine::{Guard, IDLE_MARGIN, RunningGuard, StatsReader};
pub use event::{EventReceiver, EventSender, GuardEvent, event_queue};
pub use metrics::{AppLabels, DecisionLabels, GuardMetrics, RequestLabels};
pub use policy::reason;
pub use stats::{AppStats, MAX_SERVICES_PER_APP, OTHER_SERVICE, STATS_WINDOW, ServiceStats, classify};
pub use window::BUCKETS;

/// How often a running guard reloads the decisions in force from the store,
/// which picks up decisions other processes added or lifted and removes
/// expired ones.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Capacity of the event queue that [`Guard::spawn`] callers usually want:
/// a few seconds of a busy gateway.
pub const DEFAULT_QUEUE_CAPACITY: usize = 65_536;

/// A guard operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// A decision could not be stored, so it was not published either.
    #[error("cannot store the decision of policy {policy:?} for app {app_id:?}: {source}")]
    StoreDecision {
        /// The app the decision was about.
        app_id: String,
        /// The policy that decided.
        policy: String,
        /// The store error.
        source: portcullis_store::StoreError,
    },

    /// The previous bans of an app could not be read, so the length of a
    /// new ban is unknown.
    #[error("cannot read the ban history of app {app_id:?}: {source}")]
    History {
        /// The app.
        app_id: String,
        /// The store error.
        source: portcullis_store::StoreError,
    },

    /// The decisions in force could not be read from the store.
    #[error("cannot load the decisions in force from the store: {source}")]
    LoadDecisions {
        /// The store error.
        source: portcullis_store::StoreError,
    },
}
