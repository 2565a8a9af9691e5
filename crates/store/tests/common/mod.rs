//! Test stores on both backends.

#![allow(dead_code)]

use portcullis_store::Store;
use sqlx::Executor;

/// Environment variable with the URL of a PostgreSQL server whose user may
/// create databases. `scripts/test` starts such a server and sets it.
pub const POSTGRES_ENV: &str = "PORTCULLIS_TEST_POSTGRES_URL";

/// A store in a fresh SQLite file; the directory must outlive the store.
pub async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.expect("open SQLite store");
    (store, dir)
}

/// A PostgreSQL database created for one test and dropped by [`PgDatabase::drop_now`].
pub struct PgDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn drop_now(self) {
        let admin = sqlx::AnyPool::connect(&self.admin_url).await.unwrap();
        admin
            .execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .await
            .unwrap();
        admin.close().await;
    }
}

/// Creates a fresh PostgreSQL database, or returns `None` when no server is
/// configured. Under CI (the `CI` variable set) a missing server fails the
/// test instead, so the PostgreSQL path is never skipped silently there.
pub async fn postgres(test: &str) -> Option<PgDatabase> {
    sqlx::any::install_default_drivers();
    let Ok(admin_url) = std::env::var(POSTGRES_ENV) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{POSTGRES_ENV} must be set under CI; run the tests with scripts/test"
        );
        eprintln!("skipping the PostgreSQL half of {test}: {POSTGRES_ENV} is not set (scripts/test sets it)");
        return None;
    };
    let name = format!("portcullis_{test}_{}", std::process::id());
    let admin = sqlx::AnyPool::connect(&admin_url).await.expect("connect to the test PostgreSQL server");
    admin.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).await.unwrap();
    admin.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.unwrap();
    admin.close().await;

    let (base, _) = admin_url.rsplit_once('/').expect("URL with a database name");
    let url = format!("{base}/{name}");
    Some(PgDatabase { admin_url, name, url })
}
