//! The UID each app runs as, allocated once and never reused.

use crate::{Store, StoreError, now_ms};

/// Attempts before giving up when concurrent allocations collide.
const ALLOCATE_ATTEMPTS: usize = 5;

impl Store {
    /// Returns the UID of `app_id`, allocating the next free one at or above
    /// `uid_base` on first use. UIDs are never reused: rows stay when an app
    /// is removed, and a new UID is always above every UID handed out
    /// before. An app keeps its UID for good, even if `uid_base` changes
    /// later.
    pub async fn app_uid(&self, app_id: &str, uid_base: u32) -> Result<u32, StoreError> {
        for _ in 0..ALLOCATE_ATTEMPTS {
            if let Some(uid) = self.existing_app_uid(app_id).await? {
                return Ok(uid);
            }

            let highest: Option<i64> =
                sqlx::query_scalar("SELECT MAX(uid) FROM app_uids").fetch_one(&self.pool).await?;
            let candidate = highest.map_or(i64::from(uid_base), |uid| (uid + 1).max(i64::from(uid_base)));
            let result = sqlx::query(
                "INSERT INTO app_uids (app_id, uid, allocated_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(app_id)
            .bind(candidate)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
            if result.rows_affected() == 1 {
                return u32::try_from(candidate)
                    .map_err(|_| StoreError::Corrupt { column: "app_uids.uid", value: candidate.to_string() });
            }
        }
        Err(StoreError::Duplicate { what: format!("a UID for app {app_id:?} (concurrent allocations collided)") })
    }

    /// Returns the UID already allocated to `app_id`, if any.
    pub async fn existing_app_uid(&self, app_id: &str) -> Result<Option<u32>, StoreError> {
        let uid: Option<i64> = sqlx::query_scalar("SELECT uid FROM app_uids WHERE app_id = $1")
            .bind(app_id)
            .fetch_optional(&self.pool)
            .await?;
        uid.map(|uid| {
            u32::try_from(uid).map_err(|_| StoreError::Corrupt { column: "app_uids.uid", value: uid.to_string() })
        })
        .transpose()
    }
}
