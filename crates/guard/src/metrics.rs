//! Prometheus counters of what the guard sees and decides.
//!
//! Labels are app ids from verified certificates, configured service names
//! and fixed outcome classes, so the number of series is bounded by the
//! registered apps, not by what an app sends.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of a request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The app.
    pub app_id: String,
    /// The service it called.
    pub service: String,
    /// The outcome class: `2xx`, `400`, `401`, `403`, `404`, `too_large`,
    /// `429`, `5xx`, or `other` for statuses outside these classes.
    pub class: String,
}

/// Labels of an app counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    /// The app.
    pub app_id: String,
}

/// Labels of a decision counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `ban` or `throttle`.
    pub kind: String,
    /// `enforce`, or `report` for decisions only recorded.
    pub mode: String,
}

/// The guard's counters. Cheap to clone; clones share the counters.
#[derive(Debug, Clone, Default)]
pub struct GuardMetrics {
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) bytes: Family<RequestLabels, Counter>,
    pub(crate) egress_violations: Family<AppLabels, Counter>,
    pub(crate) decisions: Family<DecisionLabels, Counter>,
}

impl GuardMetrics {
    /// Registers the counters in `registry` under the `portcullis` prefix.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "portcullis_requests",
            "Gateway requests by app, service and outcome class",
            self.requests.clone(),
        );
        registry.register(
            "portcullis_request_bytes",
            "Request and response bytes through the gateway by app, service and outcome class",
            self.bytes.clone(),
        );
        registry.register(
            "portcullis_egress_violations",
            "Refused egress connections by app",
            self.egress_violations.clone(),
        );
        registry.register("portcullis_guard_decisions", "Guard decisions by kind and mode", self.decisions.clone());
    }
}
