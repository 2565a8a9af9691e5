//! The control-plane store of Portcullis: apps, app versions, grants,
//! decisions, findings, trials, issued certificates, OAuth state, the
//! egress proxy's per-app secrets and the egress host lists of app manifests.
//!
//! One set of queries runs on SQLite (the embedded default, a file in the
//! data directory in WAL mode) and on PostgreSQL (for several nodes), through
//! sqlx's `Any` driver. Queries use `$1`-style placeholders, which both
//! backends accept, and only types both map the same way: `TEXT`, `BIGINT`
//! and `DOUBLE PRECISION` (flags are `BIGINT` 0 or 1, because the `Any`
//! driver cannot decode SQLite booleans). Times are `i64` milliseconds since the
//! Unix epoch.
//!
//! Each backend has its own migration files, because the two spell an
//! auto-incrementing key differently; the schemas are otherwise identical.

mod app_egress_hosts;
mod app_uids;
mod apps;
mod certificates;
mod decisions;
mod grants;
mod oauth;
mod proxy_secrets;

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor};

pub use apps::{AppRecord, AppState};
pub use certificates::{CertificateKind, CertificateRecord};
pub use decisions::{DecisionKind, DecisionOrigin, DecisionRecord, NewDecision};
pub use grants::GrantRecord;
pub use oauth::{RefreshTokenRecord, RefreshUse};
pub use proxy_secrets::ProxySecretRecord;

/// File name of the SQLite database inside the data directory.
pub const SQLITE_FILE: &str = "portcullis.db";

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL names no supported database.
    #[error("unsupported store URL scheme {scheme:?}: use sqlite:PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl {
        /// The scheme found (the rest of the URL may hold a password).
        scheme: String,
    },

    /// Connecting to the database failed.
    #[error("cannot open the {backend} store: {source}")]
    Connect {
        /// Which backend.
        backend: Backend,
        /// The driver error.
        source: sqlx::Error,
    },

    /// Applying the schema migrations failed.
    #[error("cannot migrate the {backend} store: {source}")]
    Migrate {
        /// Which backend.
        backend: Backend,
        /// The migration error.
        source: sqlx::migrate::MigrateError,
    },

    /// A row that must be unique exists already.
    #[error("{what} already exists")]
    Duplicate {
        /// What was being inserted, such as `app "weather-app"`.
        what: String,
    },

    /// A row refers to another row that does not exist, such as a secret for
    /// an app that was never registered.
    #[error("{what} not found")]
    NotFound {
        /// The missing row, such as `app "weather-app"`.
        what: String,
    },

    /// A row has a value the code does not know, such as a state written by
    /// a newer version.
    #[error("unreadable {column} {value:?} in the store")]
    Corrupt {
        /// Table and column.
        column: &'static str,
        /// The stored value.
        value: String,
    },

    /// A query failed.
    #[error("store query failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// Maps a foreign key violation on a row keyed by `app_id` to
/// [`StoreError::NotFound`] naming the app, and any other error to
/// [`StoreError::Query`].
pub(crate) fn missing_app(app_id: &str, error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::NotFound { what: format!("app {app_id:?}") }
        }
        _ => StoreError::Query(error),
    }
}

/// The database behind a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        })
    }
}

/// A connection pool to the control-plane database, migrated to the
/// current schema. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens (creating if needed) the SQLite store in `data_dir`.
    pub async fn open_in(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(SQLITE_FILE);
        let store = Self::open(&format!("sqlite://{}?mode=rwc", path.display())).await?;

        // The database contains secret hashes and security state, so it and
        // its WAL and shared-memory files are readable by their owner only.
        for suffix in ["", "-wal", "-shm"] {
            let file = data_dir.join(format!("{SQLITE_FILE}{suffix}"));
            if file.exists() {
                use std::os::unix::fs::PermissionsExt;
                if let Err(error) = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                    tracing::warn!(file = %file.display(), %error, "cannot make the store file private");
                }
            }
        }
        Ok(store)
    }

    /// Opens the store at `url` (`sqlite:PATH` or `postgres://…`) and applies
    /// pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();

        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            let scheme = url.split(':').next().unwrap_or_default().to_owned();
            return Err(StoreError::UnsupportedUrl { scheme });
        };
        let connect = |source| StoreError::Connect { backend, source };

        let options = AnyConnectOptions::from_str(url).map_err(connect)?;

        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // Durability: a commit returns only once it is in the
                        // WAL on disk, so a killed process loses no committed
                        // row. Foreign keys are off by default in SQLite.
                        conn.execute(
                            "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(connect)?;

        if backend == Backend::Sqlite {
            // WAL mode is a property of the database file and persists.
            pool.execute("PRAGMA journal_mode = WAL;").await.map_err(connect)?;
        }

        migrator(backend).run(&pool).await.map_err(|source| StoreError::Migrate { backend, source })?;

        tracing::debug!(%backend, "store opened and migrated");
        Ok(Self { pool, backend })
    }

    /// Which database this store uses.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection, waiting for queries in flight.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Returns the newest migration version applied.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success").fetch_one(&self.pool).await?;
        Ok(version.unwrap_or(0))
    }
}

/// The migrations of `backend`, embedded in the binary.
fn migrator(backend: Backend) -> Migrator {
    let files: &[(i64, &str, &'static str)] = match backend {
        Backend::Sqlite => &[
            (1, "initial", include_str!("../migrations/sqlite/0001_initial.sql")),
            (2, "oauth", include_str!("../migrations/sqlite/0002_oauth.sql")),
            (3, "proxy secrets", include_str!("../migrations/sqlite/0003_proxy_secrets.sql")),
            (4, "app uids", include_str!("../migrations/sqlite/0004_app_uids.sql")),
            (5, "app egress hosts", include_str!("../migrations/sqlite/0005_app_egress_hosts.sql")),
        ],
        Backend::Postgres => &[
            (1, "initial", include_str!("../migrations/postgres/0001_initial.sql")),
            (2, "oauth", include_str!("../migrations/postgres/0002_oauth.sql")),
            (3, "proxy secrets", include_str!("../migrations/postgres/0003_proxy_secrets.sql")),
            (4, "app uids", include_str!("../migrations/postgres/0004_app_uids.sql")),
            (5, "app egress hosts", include_str!("../migrations/postgres/0005_app_egress_hosts.sql")),
        ],
    };
    let migrations = files
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(*sql),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

/// Milliseconds since the Unix epoch for `time`.
pub fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// Maps a unique-constraint violation to [`StoreError::Duplicate`].
fn unique_violation(error: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Duplicate { what: what() },
        _ => StoreError::Query(error),
    }
}
