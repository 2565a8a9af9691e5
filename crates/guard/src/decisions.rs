//! The decisions in force, as an immutable snapshot that enforcement points
//! read without locking.

use std::collections::HashMap;
use std::sync::Arc;

use portcullis_store::{DecisionKind, DecisionRecord};
use tokio::sync::watch;

/// The action an enforcement point takes for an app at a given time.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No decision in force.
    Allow,
    /// Limit the app to `per_second` requests per second.
    Throttle {
        /// The lowest rate among the throttles in force, in requests per second.
        per_second: f64,
        /// End of that throttle in milliseconds since the Unix epoch; `None`
        /// until an operator lifts it.
        until: Option<i64>,
        /// The store id of that throttle.
        decision_id: i64,
    },
    /// Refuse every request and connection of the app.
    Ban {
        /// End of the ban in force that lasts longest, in milliseconds since
        /// the Unix epoch; `None` until an operator lifts it.
        until: Option<i64>,
        /// The reason of that ban.
        reason: String,
        /// The store id of that ban.
        decision_id: i64,
    },
}

/// A snapshot of the decisions in force, by app. Never changes once
/// published; the guard publishes a new one on every change.
///
/// A snapshot may still hold a decision that expired after it was built:
/// every reader treats such an entry as absent, so an expiry takes effect
/// at its time even before the guard publishes the next snapshot.
#[derive(Debug, Clone, Default)]
pub struct DecisionSet {
    by_app: HashMap<String, Vec<DecisionRecord>>,
}

/// The subscription of an enforcement point. It always contains the latest
/// snapshot, and `changed()` wakes on each new one.
pub type DecisionReceiver = watch::Receiver<Arc<DecisionSet>>;

impl DecisionSet {
    /// Builds a snapshot of `records`, keeping only those in force at `now_ms`.
    pub fn from_records(records: impl IntoIterator<Item = DecisionRecord>, now_ms: i64) -> Self {
        let mut set = Self::default();
        for record in records {
            set.insert(record, now_ms);
        }
        set
    }

    /// Returns what to do with `app_id` at `now_ms`: a ban in force wins over
    /// any throttle, and among throttles the lowest rate wins.
    pub fn verdict(&self, app_id: &str, now_ms: i64) -> Verdict {
        let mut verdict = Verdict::Allow;
        for record in self.by_app.get(app_id).into_iter().flatten().filter(|r| r.in_force_at(now_ms)) {
            let until = record.decision.expires_at;
            match (record.decision.kind, &verdict) {
                (DecisionKind::Ban, Verdict::Ban { until: current, .. }) if !lasts_longer(until, *current) => {}
                (DecisionKind::Ban, _) => {
                    verdict = Verdict::Ban { until, reason: record.decision.reason.clone(), decision_id: record.id };
                }
                (DecisionKind::Throttle { .. }, Verdict::Ban { .. }) => {}
                (DecisionKind::Throttle { per_second }, Verdict::Throttle { per_second: current, .. })
                    if per_second >= *current => {}
                (DecisionKind::Throttle { per_second }, _) => {
                    verdict = Verdict::Throttle { per_second, until, decision_id: record.id };
                }
            }
        }
        verdict
    }

    /// Returns the decisions in force at `now_ms`, in increasing id order.
    pub fn in_force(&self, now_ms: i64) -> Vec<&DecisionRecord> {
        let mut records: Vec<&DecisionRecord> =
            self.by_app.values().flatten().filter(|record| record.in_force_at(now_ms)).collect();
        records.sort_by_key(|record| record.id);
        records
    }

    /// Returns the ids of every decision in the snapshot, expired or not, in
    /// increasing order.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.by_app.values().flatten().map(|record| record.id).collect();
        ids.sort_unstable();
        ids
    }

    /// Returns a copy with `record` added if it is in force at `now_ms`.
    pub(crate) fn with(&self, record: DecisionRecord, now_ms: i64) -> Self {
        let mut set = self.clone();
        set.insert(record, now_ms);
        set
    }

    /// Returns a copy without the decisions that are no longer in force at
    /// `now_ms`.
    pub(crate) fn without_expired(&self, now_ms: i64) -> Self {
        Self::from_records(self.by_app.values().flatten().cloned(), now_ms)
    }

    fn insert(&mut self, record: DecisionRecord, now_ms: i64) {
        if record.in_force_at(now_ms) {
            self.by_app.entry(record.decision.app_id.clone()).or_default().push(record);
        }
    }
}

/// Returns whether an end time `a` is later than `b`, where `None` means
/// "until lifted".
fn lasts_longer(a: Option<i64>, b: Option<i64>) -> bool {
    match (a, b) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(a), Some(b)) => a > b,
    }
}

#[cfg(test)]
mod tests {
    use portcullis_store::{DecisionOrigin, NewDecision};

    use super::*;

    fn record(id: i64, kind: DecisionKind, expires_at: Option<i64>) -> DecisionRecord {
        DecisionRecord {
            id,
            decision: NewDecision {
                app_id: "bad-app".into(),
                kind,
                reason: format!("reason {id}"),
                policy: None,
                evidence: "{}".into(),
                origin: DecisionOrigin::Operator,
                simulated: false,
                started_at: 0,
                expires_at,
            },
            lifted_at: None,
            lifted_by: None,
        }
    }

    #[test]
    fn ban_wins_over_throttle() {
        let set = DecisionSet::from_records(
            [
                record(1, DecisionKind::Throttle { per_second: 1.0 }, Some(100)),
                record(2, DecisionKind::Ban, Some(50)),
                record(3, DecisionKind::Ban, Some(80)),
            ],
            10,
        );
        assert_eq!(
            set.verdict("bad-app", 10),
            Verdict::Ban { until: Some(80), reason: "reason 3".into(), decision_id: 3 }
        );
        assert_eq!(set.verdict("other-app", 10), Verdict::Allow);
        assert_eq!(set.verdict("bad-app", 80), Verdict::Throttle { per_second: 1.0, until: Some(100), decision_id: 1 });
        assert_eq!(set.verdict("bad-app", 100), Verdict::Allow);
    }

    #[test]
    fn lowest_throttle_wins() {
        let set = DecisionSet::from_records(
            [
                record(1, DecisionKind::Throttle { per_second: 5.0 }, None),
                record(2, DecisionKind::Throttle { per_second: 0.5 }, Some(50)),
                record(3, DecisionKind::Throttle { per_second: 2.0 }, Some(70)),
            ],
            0,
        );
        assert_eq!(set.verdict("bad-app", 0), Verdict::Throttle { per_second: 0.5, until: Some(50), decision_id: 2 });
        assert_eq!(set.verdict("bad-app", 60), Verdict::Throttle { per_second: 2.0, until: Some(70), decision_id: 3 });
        assert_eq!(set.verdict("bad-app", 70), Verdict::Throttle { per_second: 5.0, until: None, decision_id: 1 });
    }

    #[test]
    fn unlimited_ban_lasts_longest() {
        let set =
            DecisionSet::from_records([record(1, DecisionKind::Ban, None), record(2, DecisionKind::Ban, Some(50))], 0);
        assert_eq!(set.verdict("bad-app", 0), Verdict::Ban { until: None, reason: "reason 1".into(), decision_id: 1 });
        assert_eq!(set.without_expired(60).ids(), [1]);
    }
}
