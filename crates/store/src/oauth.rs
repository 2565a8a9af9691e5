//! OAuth 2.0 state: redirect URIs, customers, refresh token families,
//! revoked access tokens and per-app token cut-offs.

use serde::Serialize;
use sqlx::Row;

use crate::{Store, StoreError, now_ms, unique_violation};

/// One refresh token, stored by the SHA-256 of its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefreshTokenRecord {
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    /// The consent this token descends from.
    pub family_id: String,
    /// The app (OAuth client).
    pub app_id: String,
    /// The customer who consented.
    pub customer_id: String,
    /// The service's SPIFFE id.
    pub audience: String,
    /// Space-separated consented scopes.
    pub scopes: String,
    /// Id of the access token issued together with this refresh token.
    pub access_jti: String,
    /// Expiry of that access token, seconds since the Unix epoch.
    pub access_exp: i64,
    /// Issue time, ms since the Unix epoch.
    pub issued_at: i64,
    /// Expiry, ms since the Unix epoch.
    pub expires_at: i64,
    /// When it was spent.
    pub used_at: Option<i64>,
    /// When its family was revoked.
    pub revoked_at: Option<i64>,
}

/// The outcome of presenting a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// Unspent and valid: it is now marked spent.
    Fresh(RefreshTokenRecord),
    /// Already spent: a sign of theft (RFC 9700 section 4.14.2). The family
    /// is now revoked; the access tokens listed as (jti, exp) must be revoked
    /// by the caller.
    Reused {
        /// The family that was revoked.
        family_id: String,
        /// The app it belonged to.
        app_id: String,
        /// Access tokens of the family, as (jti, exp in seconds).
        access_tokens: Vec<(String, i64)>,
    },
    /// Expired or revoked earlier.
    Invalid,
    /// No such token.
    Unknown,
}

const COLUMNS: &str = "token_hash, family_id, app_id, customer_id, audience, scopes, access_jti, access_exp, \
                       issued_at, expires_at, used_at, revoked_at";

fn from_row(row: &sqlx::any::AnyRow) -> Result<RefreshTokenRecord, StoreError> {
    Ok(RefreshTokenRecord {
        token_hash: row.try_get("token_hash")?,
        family_id: row.try_get("family_id")?,
        app_id: row.try_get("app_id")?,
        customer_id: row.try_get("customer_id")?,
        audience: row.try_get("audience")?,
        scopes: row.try_get("scopes")?,
        access_jti: row.try_get("access_jti")?,
        access_exp: row.try_get("access_exp")?,
        issued_at: row.try_get("issued_at")?,
        expires_at: row.try_get("expires_at")?,
        used_at: row.try_get("used_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

impl Store {
    /// Registers a redirect URI for an app. Returns false if already registered.
    pub async fn add_redirect_uri(&self, app_id: &str, uri: &str) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "INSERT INTO app_redirect_uris (app_id, redirect_uri) VALUES ($1, $2) \
             ON CONFLICT (app_id, redirect_uri) DO NOTHING",
        )
        .bind(app_id)
        .bind(uri)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Lists an app's redirect URIs.
    pub async fn redirect_uris(&self, app_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT redirect_uri FROM app_redirect_uris WHERE app_id = $1 ORDER BY redirect_uri")
            .bind(app_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Creates a customer with an Argon2id hash of their secret.
    pub async fn insert_customer(&self, id: &str, secret_hash: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO customers (id, secret_hash, created_at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(secret_hash)
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(|e| unique_violation(e, || format!("customer {id:?}")))?;
        Ok(())
    }

    /// Returns a customer's secret hash, if the customer exists.
    pub async fn customer_secret_hash(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT secret_hash FROM customers WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Stores a new refresh token.
    pub async fn insert_refresh_token(&self, record: &RefreshTokenRecord) -> Result<(), StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO refresh_tokens ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        )))
        .bind(&record.token_hash)
        .bind(&record.family_id)
        .bind(&record.app_id)
        .bind(&record.customer_id)
        .bind(&record.audience)
        .bind(&record.scopes)
        .bind(&record.access_jti)
        .bind(record.access_exp)
        .bind(record.issued_at)
        .bind(record.expires_at)
        .bind(record.used_at)
        .bind(record.revoked_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Spends a refresh token at `now_ms`. The spend is one conditional
    /// UPDATE, so two concurrent uses of the same token cannot both succeed:
    /// the second sees it spent and revokes the family.
    pub async fn use_refresh_token(&self, token_hash: &str, now_ms: i64) -> Result<RefreshUse, StoreError> {
        let spent = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $1 \
             WHERE token_hash = $2 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $1",
        )
        .bind(now_ms)
        .bind(token_hash)
        .execute(&self.pool)
        .await?;

        let row =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM refresh_tokens WHERE token_hash = $1")))
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?;
        let Some(record) = row.as_ref().map(from_row).transpose()? else {
            return Ok(RefreshUse::Unknown);
        };

        if spent.rows_affected() == 1 {
            return Ok(RefreshUse::Fresh(record));
        }
        if record.used_at.is_some() && record.revoked_at.is_none() {
            let access_tokens = self.revoke_refresh_family(&record.family_id, now_ms).await?;
            return Ok(RefreshUse::Reused { family_id: record.family_id, app_id: record.app_id, access_tokens });
        }
        Ok(RefreshUse::Invalid)
    }

    /// Revokes every refresh token of a family and returns the access tokens
    /// issued with them, as (jti, exp in seconds).
    pub async fn revoke_refresh_family(&self, family_id: &str, now_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL")
            .bind(now_ms)
            .bind(family_id)
            .execute(&self.pool)
            .await?;
        let rows =
            sqlx::query("SELECT access_jti, access_exp FROM refresh_tokens WHERE family_id = $1 ORDER BY issued_at")
                .bind(family_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|row| Ok((row.try_get("access_jti")?, row.try_get("access_exp")?))).collect()
    }

    /// Revokes every refresh token of an app; returns how many were revoked.
    pub async fn revoke_refresh_tokens_of_app(&self, app_id: &str, now_ms: i64) -> Result<u64, StoreError> {
        let result = sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE app_id = $2 AND revoked_at IS NULL")
            .bind(now_ms)
            .bind(app_id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    /// Looks up a refresh token without spending it.
    pub async fn refresh_token(&self, token_hash: &str) -> Result<Option<RefreshTokenRecord>, StoreError> {
        let row =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM refresh_tokens WHERE token_hash = $1")))
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Records a revoked access token until its expiry `expires_at` (seconds).
    pub async fn revoke_access_token(&self, jti: &str, app_id: &str, expires_at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, app_id, expires_at, revoked_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(app_id)
        .bind(expires_at)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Lists revoked access tokens that expire after `now_secs`, as (jti, exp).
    pub async fn revoked_access_tokens(&self, now_secs: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > $1 ORDER BY jti")
            .bind(now_secs)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok((row.try_get("jti")?, row.try_get("expires_at")?))).collect()
    }

    /// Sets an app's token cut-off (seconds); an earlier value never replaces a later one.
    pub async fn set_token_cut_off(&self, app_id: &str, cut_off: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO token_cut_offs (app_id, cut_off) VALUES ($1, $2) \
             ON CONFLICT (app_id) DO UPDATE SET cut_off = CASE WHEN token_cut_offs.cut_off > excluded.cut_off \
             THEN token_cut_offs.cut_off ELSE excluded.cut_off END",
        )
        .bind(app_id)
        .bind(cut_off)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Lists every app's token cut-off, as (app id, seconds).
    pub async fn token_cut_offs(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows =
            sqlx::query("SELECT app_id, cut_off FROM token_cut_offs ORDER BY app_id").fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok((row.try_get("app_id")?, row.try_get("cut_off")?))).collect()
    }
}
