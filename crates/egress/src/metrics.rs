//! Prometheus counters of the proxy's decisions and proxied bytes.
//!
//! Labels are app ids of authenticated apps, verdicts, rule ids and
//! directions. Rule ids name a configuration entry by its index
//! (`allow_hosts[2]`), a country code from the configuration or a fixed
//! code (`special:loopback`, `limit:bytes`), never a requested host or
//! address, so the number of series is bounded by the registered apps and
//! the configuration, not by what an app requests.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use portcullis_config::AppId;

use crate::decision::Verdict;
use crate::limits::Direction;
use crate::proxy::ProxyError;

/// Labels of the decision counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The app.
    pub app_id: String,
    /// `allow`, `deny` or `report_only_deny`.
    pub verdict: String,
    /// The rule that decided, such as `allow_cidrs[0]` or `limit:bytes`.
    pub rule: String,
}

/// Labels of the byte counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByteLabels {
    /// The app.
    pub app_id: String,
    /// `sent` (app to destination) or `received` (destination to app).
    pub direction: String,
}

/// Labels of the counter of failed authentications.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthenticationLabels {
    /// `missing_credentials` or `wrong_secret`. The claimed app id is not
    /// a label: it is not proven, and a client could create any number.
    pub problem: String,
}

/// The proxy's counters. Cheap to clone; clones share the counters.
#[derive(Debug, Clone, Default)]
pub struct EgressMetrics {
    decisions: Family<DecisionLabels, Counter>,
    bytes: Family<ByteLabels, Counter>,
    authentication_failures: Family<AuthenticationLabels, Counter>,
}

impl EgressMetrics {
    /// Creates counters that are not registered anywhere yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `portcullis_egress_decisions_total`,
    /// `portcullis_egress_bytes_total` and
    /// `portcullis_egress_authentication_failures_total` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "portcullis_egress_decisions",
            "Egress proxy decisions by app, verdict and deciding rule",
            self.decisions.clone(),
        );
        registry.register(
            "portcullis_egress_bytes",
            "Bytes copied through the egress proxy by app and direction",
            self.bytes.clone(),
        );
        registry.register(
            "portcullis_egress_authentication_failures",
            "Egress proxy requests refused with 407, by problem",
            self.authentication_failures.clone(),
        );
    }

    /// Counts one failed authentication, labelled `missing_credentials`
    /// or `wrong_secret`. Other errors are not counted here.
    pub(crate) fn count_authentication_failure(&self, error: &ProxyError) {
        let problem = match error {
            ProxyError::MissingCredentials { .. } => "missing_credentials",
            ProxyError::WrongSecret { .. } => "wrong_secret",
            _ => return,
        };
        let labels = AuthenticationLabels { problem: problem.to_owned() };
        self.authentication_failures.get_or_create(&labels).inc();
    }

    /// Counts one decision.
    pub fn count_decision(&self, app_id: &AppId, verdict: Verdict, rule: &str) {
        let labels =
            DecisionLabels { app_id: app_id.to_string(), verdict: verdict.as_str().to_owned(), rule: rule.to_owned() };
        self.decisions.get_or_create(&labels).inc();
    }

    /// Returns the byte counter of `app_id` and `direction`, which a tunnel
    /// looks up once and then increments per copied chunk.
    pub fn bytes_counter(&self, app_id: &AppId, direction: Direction) -> Counter {
        let labels = ByteLabels { app_id: app_id.to_string(), direction: direction.as_str().to_owned() };
        self.bytes.get_or_create(&labels).clone()
    }
}
