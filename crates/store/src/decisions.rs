//! Guard and operator decisions: bans and throttles with their evidence.

use serde::Serialize;
use sqlx::Row;

use crate::{Store, StoreError};

/// What a decision does to an app.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DecisionKind {
    /// Every request and connection of the app is refused.
    Ban,
    /// The app is limited to a request rate.
    Throttle {
        /// Requests per second allowed.
        per_second: f64,
    },
}

/// Who made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionOrigin {
    /// A guard policy crossed its threshold.
    Guard,
    /// An operator acted by hand.
    Operator,
}

impl DecisionOrigin {
    fn as_str(self) -> &'static str {
        match self {
            Self::Guard => "guard",
            Self::Operator => "operator",
        }
    }
}

/// A decision to store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewDecision {
    /// The app it applies to.
    pub app_id: String,
    /// Ban or throttle.
    pub kind: DecisionKind,
    /// Human-readable reason.
    pub reason: String,
    /// The guard policy that decided, if any.
    pub policy: Option<String>,
    /// The counts that triggered it, as a JSON object.
    pub evidence: String,
    /// Guard or operator.
    pub origin: DecisionOrigin,
    /// True when a policy in report mode recorded what enforce would do.
    pub simulated: bool,
    /// Start, ms since the Unix epoch.
    pub started_at: i64,
    /// End, ms since the Unix epoch; `None` until lifted by hand.
    pub expires_at: Option<i64>,
}

/// A stored decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionRecord {
    /// Store-assigned id, increasing.
    pub id: i64,
    /// The decision as made.
    #[serde(flatten)]
    pub decision: NewDecision,
    /// When it was lifted before expiry, ms since the Unix epoch.
    pub lifted_at: Option<i64>,
    /// Who lifted it.
    pub lifted_by: Option<String>,
}

impl DecisionRecord {
    /// Returns whether the decision is in force at `now_ms`: not simulated,
    /// not lifted, started and not expired.
    pub fn in_force_at(&self, now_ms: i64) -> bool {
        !self.decision.simulated
            && self.lifted_at.is_none()
            && self.decision.started_at <= now_ms
            && self.decision.expires_at.is_none_or(|end| end > now_ms)
    }
}

const COLUMNS: &str = "id, app_id, kind, throttle_per_second, reason, policy, evidence, origin, simulated, \
                       started_at, expires_at, lifted_at, lifted_by";

fn from_row(row: &sqlx::any::AnyRow) -> Result<DecisionRecord, StoreError> {
    let kind: String = row.try_get("kind")?;
    let kind = match kind.as_str() {
        "ban" => DecisionKind::Ban,
        "throttle" => {
            DecisionKind::Throttle { per_second: row.try_get::<Option<f64>, _>("throttle_per_second")?.unwrap_or(0.0) }
        }
        _ => return Err(StoreError::Corrupt { column: "decisions.kind", value: kind }),
    };
    let origin: String = row.try_get("origin")?;
    let origin = match origin.as_str() {
        "guard" => DecisionOrigin::Guard,
        "operator" => DecisionOrigin::Operator,
        _ => return Err(StoreError::Corrupt { column: "decisions.origin", value: origin }),
    };
    Ok(DecisionRecord {
        id: row.try_get("id")?,
        decision: NewDecision {
            app_id: row.try_get("app_id")?,
            kind,
            reason: row.try_get("reason")?,
            policy: row.try_get("policy")?,
            evidence: row.try_get("evidence")?,
            origin,
            simulated: row.try_get::<i64, _>("simulated")? == 1,
            started_at: row.try_get("started_at")?,
            expires_at: row.try_get("expires_at")?,
        },
        lifted_at: row.try_get("lifted_at")?,
        lifted_by: row.try_get("lifted_by")?,
    })
}

impl Store {
    /// Stores a decision and returns its id. The row is committed when this
    /// returns.
    pub async fn insert_decision(&self, decision: &NewDecision) -> Result<i64, StoreError> {
        let (kind, rate) = match decision.kind {
            DecisionKind::Ban => ("ban", None),
            DecisionKind::Throttle { per_second } => ("throttle", Some(per_second)),
        };
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO decisions (app_id, kind, throttle_per_second, reason, policy, evidence, origin, simulated, started_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(&decision.app_id)
        .bind(kind)
        .bind(rate)
        .bind(&decision.reason)
        .bind(&decision.policy)
        .bind(&decision.evidence)
        .bind(decision.origin.as_str())
        .bind(i64::from(decision.simulated))
        .bind(decision.started_at)
        .bind(decision.expires_at)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    /// Returns the decision with `id`.
    pub async fn decision(&self, id: i64) -> Result<Option<DecisionRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM decisions WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Lists decisions, newest first, optionally for one app only.
    pub async fn decisions(&self, app_id: Option<&str>) -> Result<Vec<DecisionRecord>, StoreError> {
        let rows = match app_id {
            Some(app) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM decisions WHERE app_id = $1 ORDER BY id DESC"
                )))
                .bind(app)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM decisions ORDER BY id DESC")))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(from_row).collect()
    }

    /// Lists the decisions in force at `now_ms`, oldest first.
    pub async fn decisions_in_force(&self, now_ms: i64) -> Result<Vec<DecisionRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM decisions WHERE simulated = $1 AND lifted_at IS NULL AND started_at <= $2 \
             AND (expires_at IS NULL OR expires_at > $2) ORDER BY id"
        )))
        .bind(0_i64)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Returns the newest guard ban of `app_id` that took effect (not
    /// simulated) and was not lifted by hand, the base of the next ban's
    /// escalation.
    pub async fn latest_guard_ban(&self, app_id: &str) -> Result<Option<DecisionRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM decisions WHERE app_id = $1 AND origin = $2 AND kind = $3 AND simulated = $4 \
             AND lifted_at IS NULL ORDER BY id DESC LIMIT 1"
        )))
        .bind(app_id)
        .bind(DecisionOrigin::Guard.as_str())
        .bind("ban")
        .bind(0_i64)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Lifts a decision before its expiry. Returns false if it does not
    /// exist or was already lifted.
    pub async fn lift_decision(&self, id: i64, by: &str, at_ms: i64) -> Result<bool, StoreError> {
        let result =
            sqlx::query("UPDATE decisions SET lifted_at = $1, lifted_by = $2 WHERE id = $3 AND lifted_at IS NULL")
                .bind(at_ms)
                .bind(by)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(result.rows_affected() == 1)
    }
}
