//! Per-app secrets of the egress proxy, stored as the SHA-256 of the secret.

use serde::Serialize;
use sqlx::Row;

use crate::{Store, StoreError, missing_app};

/// The stored form of an app's egress proxy secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxySecretRecord {
    /// The app the secret identifies.
    pub app_id: String,
    /// Lowercase hex SHA-256 of the secret.
    pub secret_hash: String,
    /// Issue time, ms since the Unix epoch.
    pub issued_at: i64,
}

impl Store {
    /// Stores `secret_hash` as the egress proxy secret of `app_id`,
    /// replacing an earlier one, so the earlier secret stops working at once.
    /// Returns [`StoreError::NotFound`] if no app `app_id` exists.
    pub async fn set_proxy_secret(&self, app_id: &str, secret_hash: &str, issued_at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO proxy_secrets (app_id, secret_hash, issued_at) VALUES ($1, $2, $3) \
             ON CONFLICT (app_id) DO UPDATE SET secret_hash = excluded.secret_hash, issued_at = excluded.issued_at",
        )
        .bind(app_id)
        .bind(secret_hash)
        .bind(issued_at)
        .execute(&self.pool)
        .await
        .map_err(|error| missing_app(app_id, error))?;
        Ok(())
    }

    /// Returns the stored egress proxy secret of `app_id`, if one was issued.
    pub async fn proxy_secret(&self, app_id: &str) -> Result<Option<ProxySecretRecord>, StoreError> {
        let row = sqlx::query("SELECT app_id, secret_hash, issued_at FROM proxy_secrets WHERE app_id = $1")
            .bind(app_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(ProxySecretRecord {
            app_id: row.try_get("app_id")?,
            secret_hash: row.try_get("secret_hash")?,
            issued_at: row.try_get("issued_at")?,
        }))
    }

    /// Removes the egress proxy secret of `app_id`. Returns false if it had none.
    pub async fn remove_proxy_secret(&self, app_id: &str) -> Result<bool, StoreError> {
        let result =
            sqlx::query("DELETE FROM proxy_secrets WHERE app_id = $1").bind(app_id).execute(&self.pool).await?;
        Ok(result.rows_affected() == 1)
    }
}
