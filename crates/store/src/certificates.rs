//! Certificates issued by the platform CA, their SPKI pins and revocations.

use serde::Serialize;
use sqlx::Row;

use crate::{Store, StoreError, unique_violation};

/// Whom a certificate was issued to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateKind {
    /// A third-party app (`spiffe://<td>/app/<id>`).
    App,
    /// A platform service (`spiffe://<td>/service/<name>`).
    Service,
    /// A component of Portcullis itself (`spiffe://<td>/platform/<name>`).
    Platform,
}

impl CertificateKind {
    /// The kind's name as stored and as used in SPIFFE paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Service => "service",
            Self::Platform => "platform",
        }
    }

    fn parse(value: &str) -> Result<Self, StoreError> {
        match value {
            "app" => Ok(Self::App),
            "service" => Ok(Self::Service),
            "platform" => Ok(Self::Platform),
            _ => Err(StoreError::Corrupt { column: "certificates.kind", value: value.to_owned() }),
        }
    }
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateRecord {
    /// Serial number, lowercase hex without separators.
    pub serial: String,
    /// SPIFFE id in the URI SAN.
    pub identity: String,
    /// App, service or platform component.
    pub kind: CertificateKind,
    /// App id, service name or component name.
    pub subject: String,
    /// Base64 SHA-256 of the DER SubjectPublicKeyInfo.
    pub spki_sha256: String,
    /// Validity start, ms since the Unix epoch.
    pub not_before: i64,
    /// Validity end, ms since the Unix epoch.
    pub not_after: i64,
    /// Issue time, ms since the Unix epoch.
    pub issued_at: i64,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
    /// Why it was revoked.
    pub revocation_reason: Option<String>,
}

const COLUMNS: &str =
    "serial, identity, kind, subject, spki_sha256, not_before, not_after, issued_at, revoked_at, revocation_reason";

fn from_row(row: &sqlx::any::AnyRow) -> Result<CertificateRecord, StoreError> {
    Ok(CertificateRecord {
        serial: row.try_get("serial")?,
        identity: row.try_get("identity")?,
        kind: CertificateKind::parse(&row.try_get::<String, _>("kind")?)?,
        subject: row.try_get("subject")?,
        spki_sha256: row.try_get("spki_sha256")?,
        not_before: row.try_get("not_before")?,
        not_after: row.try_get("not_after")?,
        issued_at: row.try_get("issued_at")?,
        revoked_at: row.try_get("revoked_at")?,
        revocation_reason: row.try_get("revocation_reason")?,
    })
}

impl Store {
    /// Records an issued certificate.
    pub async fn insert_certificate(&self, record: &CertificateRecord) -> Result<(), StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO certificates ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        )))
        .bind(&record.serial)
        .bind(&record.identity)
        .bind(record.kind.as_str())
        .bind(&record.subject)
        .bind(&record.spki_sha256)
        .bind(record.not_before)
        .bind(record.not_after)
        .bind(record.issued_at)
        .bind(record.revoked_at)
        .bind(&record.revocation_reason)
        .execute(&self.pool)
        .await
        .map_err(|e| unique_violation(e, || format!("certificate serial {}", record.serial)))?;
        Ok(())
    }

    /// Returns the certificate with `serial`.
    pub async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM certificates WHERE serial = $1")))
            .bind(serial)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Lists certificates, newest first, optionally of one kind and subject.
    pub async fn certificates(
        &self,
        of: Option<(CertificateKind, &str)>,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        let (kind, subject) = match of {
            Some((kind, subject)) => (Some(kind.as_str()), Some(subject)),
            None => (None, None),
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM certificates \
             WHERE (CAST($1 AS TEXT) IS NULL OR (kind = $1 AND subject = $2)) ORDER BY issued_at DESC, serial"
        )))
        .bind(kind)
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Revokes one certificate. Returns false if it does not exist or was
    /// already revoked.
    pub async fn revoke_certificate(&self, serial: &str, reason: &str, at_ms: i64) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE certificates SET revoked_at = $1, revocation_reason = $2 WHERE serial = $3 AND revoked_at IS NULL",
        )
        .bind(at_ms)
        .bind(reason)
        .bind(serial)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Revokes every unrevoked certificate of a subject and returns how many.
    pub async fn revoke_subject(
        &self,
        kind: CertificateKind,
        subject: &str,
        reason: &str,
        at_ms: i64,
    ) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE certificates SET revoked_at = $1, revocation_reason = $2 \
             WHERE kind = $3 AND subject = $4 AND revoked_at IS NULL",
        )
        .bind(at_ms)
        .bind(reason)
        .bind(kind.as_str())
        .bind(subject)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Lists the serials of all revoked certificates that have not expired
    /// at `now_ms` (an expired certificate is refused anyway).
    pub async fn revoked_serials(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let serials = sqlx::query_scalar(
            "SELECT serial FROM certificates WHERE revoked_at IS NOT NULL AND not_after > $1 ORDER BY serial",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(serials)
    }

    /// Lists the SPKI pins of a subject's certificates that are valid at
    /// `now_ms` and not revoked. During rotation this holds the old and the
    /// new pin.
    pub async fn valid_pins(
        &self,
        kind: CertificateKind,
        subject: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let pins = sqlx::query_scalar(
            "SELECT DISTINCT spki_sha256 FROM certificates WHERE kind = $1 AND subject = $2 \
             AND revoked_at IS NULL AND not_before <= $3 AND not_after > $3 ORDER BY spki_sha256",
        )
        .bind(kind.as_str())
        .bind(subject)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(pins)
    }

    /// Lists `(subject, pin)` for every certificate of `kind` that is valid
    /// at `now_ms` and not revoked: the pin sets of all subjects in one
    /// query, for a verifier that caches them in memory.
    pub async fn valid_pins_of_kind(
        &self,
        kind: CertificateKind,
        now_ms: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT subject, spki_sha256 FROM certificates WHERE kind = $1 \
             AND revoked_at IS NULL AND not_before <= $2 AND not_after > $2 ORDER BY subject, spki_sha256",
        )
        .bind(kind.as_str())
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok((row.try_get("subject")?, row.try_get("spki_sha256")?))).collect()
    }
}
