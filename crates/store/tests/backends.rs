//! The same store operations on SQLite and on a real PostgreSQL server.

mod common;

use portcullis_store::*;

async fn exercise(store: &Store) {
    assert_eq!(store.schema_version().await.unwrap(), 5);

    // App UIDs: allocated from the base, stable, never reused after removal.
    assert_eq!(store.app_uid("uid-one", 300_000).await.unwrap(), 300_000);
    assert_eq!(store.app_uid("uid-two", 300_000).await.unwrap(), 300_001);
    assert_eq!(store.app_uid("uid-one", 300_000).await.unwrap(), 300_000);
    assert_eq!(store.existing_app_uid("uid-three").await.unwrap(), None);
    assert_eq!(store.app_uid("uid-three", 100).await.unwrap(), 300_002);
    assert_eq!(store.app_uid("uid-four", 400_000).await.unwrap(), 400_000);

    // Apps.
    let app = store.insert_app("weather-app", "Weather App", "acme").await.unwrap();
    assert_eq!(app.state, AppState::Submitted);
    let duplicate = store.insert_app("weather-app", "Again", "acme").await.unwrap_err();
    assert!(matches!(duplicate, StoreError::Duplicate { .. }), "{duplicate}");
    assert_eq!(duplicate.to_string(), "app \"weather-app\" already exists");
    store.insert_app("bad-app", "Bad App", "mallory").await.unwrap();
    assert!(store.set_app_state("bad-app", AppState::Live).await.unwrap());
    assert!(!store.set_app_state("no-such-app", AppState::Live).await.unwrap());
    let apps = store.apps().await.unwrap();
    let ids: Vec<&str> = apps.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["bad-app", "weather-app"]);
    assert_eq!(store.app("bad-app").await.unwrap().unwrap().state, AppState::Live);
    assert_eq!(store.app("nobody").await.unwrap(), None);

    // Grants.
    assert!(store.add_grant("weather-app", "weather", "weather:read", "operator").await.unwrap());
    assert!(!store.add_grant("weather-app", "weather", "weather:read", "operator").await.unwrap());
    assert!(store.add_grant("bad-app", "records", "records:read", "operator").await.unwrap());
    assert_eq!(store.grants(None).await.unwrap().len(), 2);
    let grants = store.grants(Some("weather-app")).await.unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].scope, "weather:read");
    assert!(store.remove_grant("weather-app", "weather", "weather:read").await.unwrap());
    assert!(!store.remove_grant("weather-app", "weather", "weather:read").await.unwrap());

    // Decisions: one in force, one simulated, one expired, one lifted.
    let now = now_ms();
    let decision = |kind, simulated, started_at, expires_at| NewDecision {
        app_id: "bad-app".into(),
        kind,
        reason: "401 or 403 at least 20 times in 60s".into(),
        policy: Some("unauthorised".into()),
        evidence: r#"{"401":17,"403":3}"#.into(),
        origin: DecisionOrigin::Guard,
        simulated,
        started_at,
        expires_at,
    };
    let ban =
        store.insert_decision(&decision(DecisionKind::Ban, false, now - 1000, Some(now + 3_600_000))).await.unwrap();
    let report =
        store.insert_decision(&decision(DecisionKind::Ban, true, now - 1000, Some(now + 3_600_000))).await.unwrap();
    let expired = store
        .insert_decision(&decision(DecisionKind::Throttle { per_second: 1.0 }, false, now - 10_000, Some(now - 1)))
        .await
        .unwrap();
    let lifted = store
        .insert_decision(&decision(DecisionKind::Throttle { per_second: 2.5 }, false, now - 1000, None))
        .await
        .unwrap();
    assert!(ban < report && report < expired && expired < lifted);
    assert!(store.lift_decision(lifted, "operator", now).await.unwrap());
    assert!(!store.lift_decision(lifted, "operator", now).await.unwrap());

    let in_force: Vec<i64> = store.decisions_in_force(now).await.unwrap().iter().map(|d| d.id).collect();
    assert_eq!(in_force, [ban]);
    let all = store.decisions(Some("bad-app")).await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].id, lifted, "newest first");
    assert_eq!(all[0].decision.kind, DecisionKind::Throttle { per_second: 2.5 });
    assert_eq!(all[0].lifted_by.as_deref(), Some("operator"));
    let stored = store.decision(report).await.unwrap().unwrap();
    assert!(stored.decision.simulated);
    assert_eq!(stored.decision.evidence, r#"{"401":17,"403":3}"#);
    assert!(store.decisions(Some("weather-app")).await.unwrap().is_empty());

    // The escalation base skips simulated, lifted and operator decisions and throttles.
    assert_eq!(store.latest_guard_ban("bad-app").await.unwrap().map(|d| d.id), Some(ban));
    let operator_ban =
        NewDecision { origin: DecisionOrigin::Operator, ..decision(DecisionKind::Ban, false, now, None) };
    store.insert_decision(&operator_ban).await.unwrap();
    let lifted_ban = store.insert_decision(&decision(DecisionKind::Ban, false, now, Some(now + 1))).await.unwrap();
    assert!(store.lift_decision(lifted_ban, "operator", now).await.unwrap());
    assert_eq!(store.latest_guard_ban("bad-app").await.unwrap().map(|d| d.id), Some(ban));
    assert_eq!(store.latest_guard_ban("weather-app").await.unwrap(), None);

    // Certificates, pins and revocation.
    let cert = |serial: &str, pin: &str, not_after| CertificateRecord {
        serial: serial.into(),
        identity: "spiffe://weather.example/app/weather-app".into(),
        kind: CertificateKind::App,
        subject: "weather-app".into(),
        spki_sha256: pin.into(),
        not_before: now - 1000,
        not_after,
        issued_at: now - 1000,
        revoked_at: None,
        revocation_reason: None,
    };
    store.insert_certificate(&cert("0a", "pin-old", now + 1000)).await.unwrap();
    store.insert_certificate(&cert("0b", "pin-new", now + 5000)).await.unwrap();
    store.insert_certificate(&cert("0c", "pin-expired", now - 1)).await.unwrap();
    assert!(matches!(store.insert_certificate(&cert("0a", "x", now)).await, Err(StoreError::Duplicate { .. })));
    assert_eq!(store.valid_pins(CertificateKind::App, "weather-app", now).await.unwrap(), ["pin-new", "pin-old"]);
    let by_subject = store.valid_pins_of_kind(CertificateKind::App, now).await.unwrap();
    assert_eq!(
        by_subject,
        [("weather-app".to_owned(), "pin-new".to_owned()), ("weather-app".to_owned(), "pin-old".to_owned())]
    );
    assert!(store.valid_pins_of_kind(CertificateKind::Service, now).await.unwrap().is_empty());
    assert!(store.revoke_certificate("0a", "key compromise", now).await.unwrap());
    assert!(!store.revoke_certificate("0a", "again", now).await.unwrap());
    assert_eq!(store.valid_pins(CertificateKind::App, "weather-app", now).await.unwrap(), ["pin-new"]);
    assert_eq!(store.revoked_serials(now).await.unwrap(), ["0a"]);
    assert_eq!(store.revoke_subject(CertificateKind::App, "weather-app", "app banned", now).await.unwrap(), 2);
    assert!(store.valid_pins(CertificateKind::App, "weather-app", now).await.unwrap().is_empty());
    assert_eq!(store.certificates(Some((CertificateKind::App, "weather-app"))).await.unwrap().len(), 3);
    assert!(store.certificates(Some((CertificateKind::Service, "weather-app"))).await.unwrap().is_empty());
    assert_eq!(store.certificate("0b").await.unwrap().unwrap().revocation_reason.as_deref(), Some("app banned"));

    // OAuth state.
    assert!(store.add_redirect_uri("weather-app", "https://app.example/callback").await.unwrap());
    assert!(!store.add_redirect_uri("weather-app", "https://app.example/callback").await.unwrap());
    assert_eq!(store.redirect_uris("weather-app").await.unwrap(), ["https://app.example/callback"]);
    store.insert_customer("alice", "$argon2id$stand-in").await.unwrap();
    assert!(matches!(store.insert_customer("alice", "x").await, Err(StoreError::Duplicate { .. })));
    assert_eq!(store.customer_secret_hash("alice").await.unwrap().as_deref(), Some("$argon2id$stand-in"));
    assert_eq!(store.customer_secret_hash("bob").await.unwrap(), None);

    let refresh = |hash: &str, jti: &str, expires_at| RefreshTokenRecord {
        token_hash: hash.into(),
        family_id: "family-1".into(),
        app_id: "weather-app".into(),
        customer_id: "alice".into(),
        audience: "spiffe://weather.example/service/weather".into(),
        scopes: "weather:read".into(),
        access_jti: jti.into(),
        access_exp: 1_900_000_000,
        issued_at: now,
        expires_at,
        used_at: None,
        revoked_at: None,
    };
    store.insert_refresh_token(&refresh("hash-1", "jti-1", now + 60_000)).await.unwrap();
    store.insert_refresh_token(&refresh("hash-2", "jti-2", now + 60_000)).await.unwrap();
    store.insert_refresh_token(&refresh("hash-old", "jti-0", now - 1)).await.unwrap();
    assert!(
        matches!(store.use_refresh_token("hash-1", now).await.unwrap(), RefreshUse::Fresh(r) if r.access_jti == "jti-1")
    );
    assert_eq!(store.use_refresh_token("hash-old", now).await.unwrap(), RefreshUse::Invalid);
    assert_eq!(store.use_refresh_token("hash-none", now).await.unwrap(), RefreshUse::Unknown);
    match store.use_refresh_token("hash-1", now).await.unwrap() {
        RefreshUse::Reused { family_id, app_id, access_tokens } => {
            assert_eq!(family_id, "family-1");
            assert_eq!(app_id, "weather-app");
            let jtis: Vec<&str> = access_tokens.iter().map(|(jti, _)| jti.as_str()).collect();
            assert_eq!(jtis.len(), 3);
            assert!(jtis.contains(&"jti-2"));
        }
        other => panic!("reuse not detected: {other:?}"),
    }
    assert_eq!(store.use_refresh_token("hash-2", now).await.unwrap(), RefreshUse::Invalid, "family revoked");

    store.revoke_access_token("jti-9", "weather-app", 2_000).await.unwrap();
    store.revoke_access_token("jti-8", "weather-app", 1_000).await.unwrap();
    assert_eq!(store.revoked_access_tokens(1_500).await.unwrap(), [("jti-9".to_owned(), 2_000)]);
    store.set_token_cut_off("weather-app", 100).await.unwrap();
    store.set_token_cut_off("weather-app", 50).await.unwrap();
    assert_eq!(store.token_cut_offs().await.unwrap(), [("weather-app".to_owned(), 100)]);
    store.set_token_cut_off("weather-app", 150).await.unwrap();
    assert_eq!(store.token_cut_offs().await.unwrap(), [("weather-app".to_owned(), 150)]);

    // Egress proxy secrets: one per app, replaced on rotation, removed
    // with the app.
    assert_eq!(store.proxy_secret("weather-app").await.unwrap(), None);
    store.set_proxy_secret("weather-app", "hash-a", now).await.unwrap();
    store.set_proxy_secret("bad-app", "hash-b", now).await.unwrap();
    store.set_proxy_secret("weather-app", "hash-c", now + 1).await.unwrap();
    let secret = store.proxy_secret("weather-app").await.unwrap().unwrap();
    assert_eq!(secret.secret_hash, "hash-c");
    assert_eq!(secret.issued_at, now + 1);
    assert_eq!(store.proxy_secret("bad-app").await.unwrap().unwrap().secret_hash, "hash-b");
    let unknown = store.set_proxy_secret("no-such-app", "hash-d", now).await.unwrap_err();
    assert_eq!(unknown.to_string(), "app \"no-such-app\" not found");
    assert!(store.remove_proxy_secret("weather-app").await.unwrap());
    assert!(!store.remove_proxy_secret("weather-app").await.unwrap());
    assert_eq!(store.proxy_secret("weather-app").await.unwrap(), None);

    // Manifest egress host lists: an empty list stays empty, a new deploy
    // replaces the list, and removing the list restores the space's.
    assert_eq!(store.app_egress_hosts("weather-app").await.unwrap(), None);
    let listed = vec!["api.example.org".to_owned(), "*.cdn.example.org".to_owned()];
    store.set_app_egress_hosts("weather-app", &listed, now).await.unwrap();
    store.set_app_egress_hosts("bad-app", &[], now).await.unwrap();
    assert_eq!(store.app_egress_hosts("weather-app").await.unwrap(), Some(listed));
    assert_eq!(store.app_egress_hosts("bad-app").await.unwrap(), Some(Vec::new()));
    store.set_app_egress_hosts("weather-app", &["api.example.org".to_owned()], now + 1).await.unwrap();
    let all = store.all_app_egress_hosts().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all["weather-app"], ["api.example.org"]);
    assert_eq!(all["bad-app"], Vec::<String>::new());
    let unknown = store.set_app_egress_hosts("no-such-app", &[], now).await.unwrap_err();
    assert_eq!(unknown.to_string(), "app \"no-such-app\" not found");
    assert!(store.remove_app_egress_hosts("weather-app").await.unwrap());
    assert!(!store.remove_app_egress_hosts("weather-app").await.unwrap());
    assert_eq!(store.app_egress_hosts("weather-app").await.unwrap(), None);

    // Removing an app removes its grants, proxy secret and egress host list
    // but keeps decisions.
    assert!(store.remove_app("bad-app").await.unwrap());
    assert!(!store.remove_app("bad-app").await.unwrap());
    assert!(store.grants(Some("bad-app")).await.unwrap().is_empty());
    assert_eq!(store.proxy_secret("bad-app").await.unwrap(), None);
    assert_eq!(store.app_egress_hosts("bad-app").await.unwrap(), None);
    assert_eq!(store.decisions(Some("bad-app")).await.unwrap().len(), 6);
}

#[tokio::test]
async fn sqlite_backend_round_trip() {
    let (store, dir) = common::sqlite().await;
    assert_eq!(store.backend(), Backend::Sqlite);
    exercise(&store).await;
    store.close().await;

    // Reopening applies no migration twice and keeps the rows.
    let reopened = Store::open_in(dir.path()).await.unwrap();
    assert_eq!(reopened.apps().await.unwrap().len(), 1);
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(
            &sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join(SQLITE_FILE).display())).await.unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn postgres_backend_round_trip() {
    let Some(database) = common::postgres("round_trip").await else {
        return;
    };
    let store = Store::open(&database.url).await.expect("open PostgreSQL store");
    assert_eq!(store.backend(), Backend::Postgres);
    exercise(&store).await;
    store.close().await;
    let reopened = Store::open(&database.url).await.unwrap();
    assert_eq!(reopened.apps().await.unwrap().len(), 1);
    reopened.close().await;
    database.drop_now().await;
}

#[tokio::test]
async fn unsupported_url_is_rejected() {
    let error = Store::open("mysql://root:hunter2@db/x").await.unwrap_err();
    assert_eq!(error.to_string(), "unsupported store URL scheme \"mysql\": use sqlite:PATH or postgres://USER@HOST/DB");
}
