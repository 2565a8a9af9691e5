//! Registered third-party apps.

use serde::Serialize;
use sqlx::Row;

use crate::{Store, StoreError, now_ms, unique_violation};

/// Where an app is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AppState {
    /// Registered; no version has passed its checks yet.
    Submitted,
    /// Dependencies checked.
    Checked,
    /// Running a sandbox trial.
    InTrial,
    /// Trial passed; waiting for the operator.
    AwaitingApproval,
    /// Approved and deployed in the live space.
    Live,
    /// Stopped by a deadline or the operator.
    Suspended,
    /// Banned by the guard.
    Banned,
    /// Refused at a check, trial or approval.
    Rejected,
    /// Withdrawn for good.
    Retired,
}

impl AppState {
    const ALL: [(AppState, &'static str); 9] = [
        (Self::Submitted, "submitted"),
        (Self::Checked, "checked"),
        (Self::InTrial, "in_trial"),
        (Self::AwaitingApproval, "awaiting_approval"),
        (Self::Live, "live"),
        (Self::Suspended, "suspended"),
        (Self::Banned, "banned"),
        (Self::Rejected, "rejected"),
        (Self::Retired, "retired"),
    ];

    /// The state's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(state, _)| *state == self).map(|(_, name)| *name).unwrap_or("unknown")
    }

    fn parse(value: &str) -> Result<Self, StoreError> {
        Self::ALL
            .iter()
            .find(|(_, name)| *name == value)
            .map(|(state, _)| *state)
            .ok_or_else(|| StoreError::Corrupt { column: "apps.state", value: value.to_owned() })
    }
}

impl std::fmt::Display for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One registered app.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppRecord {
    /// App id (a lowercase DNS label, checked by the caller).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Developer or organisation responsible for the app.
    pub owner: String,
    /// Lifecycle state.
    pub state: AppState,
    /// Registration time, ms since the Unix epoch.
    pub created_at: i64,
    /// Last change, ms since the Unix epoch.
    pub updated_at: i64,
}

const COLUMNS: &str = "id, name, owner, state, created_at, updated_at";

fn from_row(row: &sqlx::any::AnyRow) -> Result<AppRecord, StoreError> {
    Ok(AppRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        state: AppState::parse(&row.try_get::<String, _>("state")?)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    /// Registers a new app in state `submitted`.
    pub async fn insert_app(&self, id: &str, name: &str, owner: &str) -> Result<AppRecord, StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO apps (id, name, owner, state, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(id)
        .bind(name)
        .bind(owner)
        .bind(AppState::Submitted.as_str())
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| unique_violation(e, || format!("app {id:?}")))?;
        Ok(AppRecord {
            id: id.to_owned(),
            name: name.to_owned(),
            owner: owner.to_owned(),
            state: AppState::Submitted,
            created_at: now,
            updated_at: now,
        })
    }

    /// Returns the app with `id`, if registered.
    pub async fn app(&self, id: &str) -> Result<Option<AppRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM apps WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Lists every app, ordered by id.
    pub async fn apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM apps ORDER BY id")))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Sets an app's lifecycle state. Returns false if no such app exists.
    pub async fn set_app_state(&self, id: &str, state: AppState) -> Result<bool, StoreError> {
        let result = sqlx::query("UPDATE apps SET state = $1, updated_at = $2 WHERE id = $3")
            .bind(state.as_str())
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Deletes an app with its versions, grants, findings and trials.
    /// Returns false if no such app exists. Decisions and certificates stay,
    /// as the record of what happened.
    pub async fn remove_app(&self, id: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM apps WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(result.rows_affected() == 1)
    }
}
