//! The egress event the proxy sends to the guard and the log.

use std::net::{IpAddr, SocketAddr};

use portcullis_config::{AppId, Mode};
use serde::Serialize;

use crate::decision::{Decision, ReasonCode, Verdict};

/// One outbound connection decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressEvent {
    /// The app that asked.
    pub app_id: AppId,
    /// The host as the app wrote it.
    pub requested_host: String,
    /// The host after normalisation (as requested if it was invalid).
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// Every address the host resolved to; empty if the decision came
    /// before resolution.
    pub resolved: Vec<IpAddr>,
    /// The address the proxy connected to, once it has.
    pub connected: Option<SocketAddr>,
    /// The verdict.
    pub verdict: Verdict,
    /// The stable reason code.
    pub reason: ReasonCode,
    /// The rule that decided.
    pub rule: String,
    /// The mode of the rule set that decided.
    pub mode: Mode,
}

impl EgressEvent {
    /// Builds the event for `decision` on `app_id`'s request for
    /// `requested_host`.
    pub fn new(app_id: &AppId, requested_host: &str, decision: &Decision) -> Self {
        Self {
            app_id: app_id.clone(),
            requested_host: requested_host.to_owned(),
            host: decision.host.clone(),
            port: decision.port,
            resolved: decision.resolved.clone(),
            connected: None,
            verdict: decision.verdict,
            reason: decision.reason,
            rule: decision.rule.clone(),
            mode: decision.mode,
        }
    }

    /// Records the address the proxy connected to.
    pub fn with_connected(mut self, address: SocketAddr) -> Self {
        self.connected = Some(address);
        self
    }
}
