//! Ban enforcement: a banned app's container is disconnected from its
//! network, and reconnected when the ban ends.

use std::time::Duration;

use portcullis_guard::{DecisionReceiver, DecisionSet, Verdict};

use crate::docker::DockerDriver;
use crate::error::RuntimeError;

/// How often the decisions are re-applied without a new snapshot, so a ban
/// that expires takes effect within this time.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What [`apply_decisions`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enforcement {
    /// Apps disconnected because a ban is in force.
    pub isolated: Vec<String>,
    /// Apps reconnected because no ban is in force any more.
    pub reconnected: Vec<String>,
}

/// Brings every app container of the driver's instance in line with
/// `decisions` at `now_ms` (milliseconds since the Unix epoch): an app under
/// a ban is disconnected from its network, any other app is connected.
/// Throttles are left to the gateway and egress proxy. A failure for one
/// app is logged and the others are still handled.
pub async fn apply_decisions(
    driver: &DockerDriver,
    decisions: &DecisionSet,
    now_ms: i64,
) -> Result<Enforcement, RuntimeError> {
    let mut enforcement = Enforcement::default();
    for app in driver.list_apps().await? {
        let app_id = app.app_id.as_str();
        let result = match decisions.verdict(app_id, now_ms) {
            Verdict::Ban { reason, decision_id, .. } => driver.isolate_app(app_id).await.map(|changed| {
                if changed {
                    tracing::warn!(app_id, container_id = %app.container_id, decision_id, reason, "ban enforced");
                    enforcement.isolated.push(app.app_id.clone());
                }
            }),
            _ => driver.reconnect_app(app_id).await.map(|changed| {
                if changed {
                    tracing::info!(app_id, container_id = %app.container_id, "ban over: app reconnected");
                    enforcement.reconnected.push(app.app_id.clone());
                }
            }),
        };
        if let Err(error) = result {
            tracing::error!(app_id, container_id = %app.container_id, %error, "cannot enforce the decisions for this app");
        }
    }
    Ok(enforcement)
}

/// Follows the guard's decisions until the sender is dropped: applies each
/// new snapshot, and re-applies the latest every [`RECHECK_INTERVAL`] so
/// expiries and containers started meanwhile are handled. Errors are logged
/// and retried at the next tick.
pub async fn follow_decisions(driver: DockerDriver, mut receiver: DecisionReceiver) {
    tracing::info!(instance = %driver.options().instance, "ban enforcement started");
    let mut ticker = tokio::time::interval(RECHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = receiver.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = ticker.tick() => {}
        }
        let snapshot = receiver.borrow_and_update().clone();
        if let Err(error) = apply_decisions(&driver, &snapshot, portcullis_store::now_ms()).await {
            tracing::error!(%error, "cannot apply the decisions; retrying");
        }
    }
    tracing::info!("ban enforcement stopped: the guard closed its decisions");
}
