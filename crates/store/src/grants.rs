//! Grants: which scopes of which service an app may use.

use serde::Serialize;
use sqlx::Row;

use crate::{Store, StoreError, now_ms};

/// One granted scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantRecord {
    /// The app.
    pub app_id: String,
    /// The service.
    pub service: String,
    /// The scope, `<service>:<action>`.
    pub scope: String,
    /// Operator or customer who granted it.
    pub granted_by: String,
    /// When, ms since the Unix epoch.
    pub created_at: i64,
}

impl Store {
    /// Grants `scope` on `service` to an app. Granting an existing grant
    /// again changes nothing and returns false.
    pub async fn add_grant(
        &self,
        app_id: &str,
        service: &str,
        scope: &str,
        granted_by: &str,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "INSERT INTO grants (app_id, service, scope, granted_by, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (app_id, service, scope) DO NOTHING",
        )
        .bind(app_id)
        .bind(service)
        .bind(scope)
        .bind(granted_by)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Withdraws a grant. Returns false if it did not exist.
    pub async fn remove_grant(&self, app_id: &str, service: &str, scope: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM grants WHERE app_id = $1 AND service = $2 AND scope = $3")
            .bind(app_id)
            .bind(service)
            .bind(scope)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Lists grants, optionally of one app, ordered by app, service, scope.
    pub async fn grants(&self, app_id: Option<&str>) -> Result<Vec<GrantRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT app_id, service, scope, granted_by, created_at FROM grants \
             WHERE (CAST($1 AS TEXT) IS NULL OR app_id = $1) ORDER BY app_id, service, scope",
        )
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(GrantRecord {
                    app_id: row.try_get("app_id")?,
                    service: row.try_get("service")?,
                    scope: row.try_get("scope")?,
                    granted_by: row.try_get("granted_by")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }
}
