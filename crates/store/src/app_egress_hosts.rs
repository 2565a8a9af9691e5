//! The egress host list of each deployed app's manifest, which the egress
//! proxy uses to narrow the app's allow-list.

use std::collections::HashMap;

use sqlx::Row;

use crate::{Store, StoreError, missing_app};

impl Store {
    /// Stores `hosts` as the egress host list of `app_id`'s manifest,
    /// replacing an earlier list. An empty list is kept as such: the app may
    /// then reach no host name. Returns [`StoreError::NotFound`] if no app
    /// `app_id` exists.
    pub async fn set_app_egress_hosts(
        &self,
        app_id: &str,
        hosts: &[String],
        updated_at: i64,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(hosts).expect("a list of strings always serialises");
        sqlx::query(
            "INSERT INTO app_egress_hosts (app_id, hosts, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (app_id) DO UPDATE SET hosts = excluded.hosts, updated_at = excluded.updated_at",
        )
        .bind(app_id)
        .bind(json)
        .bind(updated_at)
        .execute(&self.pool)
        .await
        .map_err(|error| missing_app(app_id, error))?;
        Ok(())
    }

    /// Returns the stored egress host list of `app_id`, or `None` if no
    /// manifest list was stored for it.
    pub async fn app_egress_hosts(&self, app_id: &str) -> Result<Option<Vec<String>>, StoreError> {
        let row = sqlx::query("SELECT hosts FROM app_egress_hosts WHERE app_id = $1")
            .bind(app_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| decode_hosts(&row.try_get::<String, _>("hosts")?)).transpose()
    }

    /// Returns every stored egress host list, keyed by app id.
    pub async fn all_app_egress_hosts(&self) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let rows = sqlx::query("SELECT app_id, hosts FROM app_egress_hosts").fetch_all(&self.pool).await?;
        let mut lists = HashMap::with_capacity(rows.len());
        for row in rows {
            let app_id: String = row.try_get("app_id")?;
            let hosts = decode_hosts(&row.try_get::<String, _>("hosts")?)?;
            lists.insert(app_id, hosts);
        }
        Ok(lists)
    }

    /// Removes the egress host list of `app_id`, so the app gets its space's
    /// list again. Returns false if it had none.
    pub async fn remove_app_egress_hosts(&self, app_id: &str) -> Result<bool, StoreError> {
        let result =
            sqlx::query("DELETE FROM app_egress_hosts WHERE app_id = $1").bind(app_id).execute(&self.pool).await?;
        Ok(result.rows_affected() == 1)
    }
}

fn decode_hosts(json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json)
        .map_err(|_| StoreError::Corrupt { column: "app_egress_hosts.hosts", value: json.to_owned() })
}
