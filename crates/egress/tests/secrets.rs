//! Proxy secrets against a real SQLite store: verification, rotation and
//! revocation, in the process that changes the secret and in another one
//! (a second `ProxySecrets` on the same store) that reads it from a cache.

use std::time::Duration;

use portcullis_config::AppId;
use portcullis_egress::proxy::{ProxySecrets, SECRET_CACHE_TTL};
use portcullis_store::Store;

async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    store.insert_app("weather-app", "Weather", "test").await.unwrap();
    (dir, store)
}

#[tokio::test]
async fn rotation_takes_effect_at_once_locally() {
    let (_dir, store) = store().await;
    let secrets = ProxySecrets::new(store);
    let app = AppId::parse("weather-app").unwrap();

    let first = secrets.issue(&app).await.unwrap();
    assert!(secrets.verify(&app, first.expose()).await.unwrap());
    assert!(!secrets.verify(&app, "wrong").await.unwrap());

    let second = secrets.issue(&app).await.unwrap();
    assert!(!secrets.verify(&app, first.expose()).await.unwrap(), "the old secret still works after rotation");
    assert!(secrets.verify(&app, second.expose()).await.unwrap());

    assert!(secrets.revoke(&app).await.unwrap());
    assert!(!secrets.verify(&app, second.expose()).await.unwrap(), "a revoked secret still works");
}

#[tokio::test]
async fn other_process_sees_rotation_within_ttl() {
    let (_dir, store) = store().await;
    let operator = ProxySecrets::new(store.clone());
    let proxy = ProxySecrets::new(store);
    let app = AppId::parse("weather-app").unwrap();

    let first = operator.issue(&app).await.unwrap();
    assert!(proxy.verify(&app, first.expose()).await.unwrap());

    let second = operator.issue(&app).await.unwrap();
    tokio::time::sleep(SECRET_CACHE_TTL + Duration::from_millis(100)).await;
    assert!(!proxy.verify(&app, first.expose()).await.unwrap(), "the old secret works after the cache expired");
    assert!(proxy.verify(&app, second.expose()).await.unwrap());

    assert!(operator.revoke(&app).await.unwrap());
    tokio::time::sleep(SECRET_CACHE_TTL + Duration::from_millis(100)).await;
    assert!(!proxy.verify(&app, second.expose()).await.unwrap(), "a revoked secret works after the cache expired");
}

#[tokio::test]
async fn unknown_apps_are_not_cached() {
    let (_dir, store) = store().await;
    let proxy = ProxySecrets::new(store.clone());
    let operator = ProxySecrets::new(store);
    let app = AppId::parse("weather-app").unwrap();

    // No secret yet: refused, and the miss is not remembered, so a secret
    // issued right after works at once.
    assert!(!proxy.verify(&app, "anything").await.unwrap());
    let secret = operator.issue(&app).await.unwrap();
    assert!(proxy.verify(&app, secret.expose()).await.unwrap());
}
