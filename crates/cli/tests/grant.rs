//! `portcullis grant`, `portcullis customer` and redirect URIs, as an
//! operator runs them.

mod common;

use common::*;

use std::path::Path;
use std::process::Output;

fn register(dir: &Path, id: &str, extra: &[&str]) -> Output {
    let mut args = vec!["app", "register", "--id", id, "--name", "Weather", "--owner", "acme"];
    args.extend_from_slice(extra);
    portcullis(dir, &args)
}

#[tokio::test]
async fn grant_add_list_remove() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(register(dir.path(), "weather-app", &[]).status.code(), Some(0));

    let add = portcullis(
        dir.path(),
        &[
            "grant",
            "add",
            "--app",
            "weather-app",
            "--service",
            "weather",
            "--scope",
            "weather:read",
            "--config",
            EXAMPLE,
        ],
    );
    assert_eq!(add.status.code(), Some(0), "{}", stderr(&add));
    assert_eq!(stdout(&add), "granted weather:read on weather to app weather-app\n");

    let again = portcullis(
        dir.path(),
        &["grant", "add", "--app", "weather-app", "--service", "weather", "--scope", "weather:read"],
    );
    assert_eq!(stdout(&again), "app weather-app already has weather:read on weather\n");

    let list = portcullis(dir.path(), &["grant", "list", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(json["kind"], "grant_list");
    assert_eq!(json["grants"][0]["app_id"], "weather-app");
    assert_eq!(json["grants"][0]["scope"], "weather:read");
    assert_eq!(json["grants"][0]["granted_by"], "operator");

    // A refresh token from a customer's consent, which could mint the
    // withdrawn scope again.
    let store = portcullis_store::Store::open_in(dir.path()).await.unwrap();
    let now = portcullis_store::now_ms();
    store
        .insert_refresh_token(&portcullis_store::RefreshTokenRecord {
            token_hash: "seeded-hash".into(),
            family_id: "seeded-family".into(),
            app_id: "weather-app".into(),
            customer_id: "alice".into(),
            audience: "spiffe://weather.example/service/weather".into(),
            scopes: "weather:read".into(),
            access_jti: "seeded-jti".into(),
            access_exp: now / 1000 + 300,
            issued_at: now,
            expires_at: now + 3_600_000,
            used_at: None,
            revoked_at: None,
        })
        .await
        .unwrap();
    store.close().await;

    let remove = portcullis(
        dir.path(),
        &["grant", "remove", "--app", "weather-app", "--service", "weather", "--scope", "weather:read"],
    );
    assert_eq!(remove.status.code(), Some(0), "{}", stderr(&remove));
    assert!(stdout(&remove).contains("its earlier tokens are invalidated"));

    // The cut-off that running services pick up is in the store.
    let store = portcullis_store::Store::open_in(dir.path()).await.unwrap();
    let cut_offs = store.token_cut_offs().await.unwrap();
    assert_eq!(cut_offs.len(), 1);
    assert_eq!(cut_offs[0].0, "weather-app");
    let refresh = store.refresh_token("seeded-hash").await.unwrap().unwrap();
    assert!(refresh.revoked_at.is_some(), "grant remove revokes the app's refresh tokens");
    store.close().await;

    let missing = portcullis(
        dir.path(),
        &["grant", "remove", "--app", "weather-app", "--service", "weather", "--scope", "weather:read"],
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("has no grant weather:read on weather"));
}

#[test]
fn grant_add_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(register(dir.path(), "weather-app", &[]).status.code(), Some(0));

    // (case, arguments, message)
    let cases: [(&str, Vec<&str>, &str); 4] = [
        (
            "scope of another service",
            vec!["--app", "weather-app", "--service", "weather", "--scope", "records:read"],
            "scope \"records:read\" is not a scope of service \"weather\"",
        ),
        (
            "unknown service",
            vec!["--app", "weather-app", "--service", "billing", "--scope", "billing:read", "--config", EXAMPLE],
            "service \"billing\" is not defined in",
        ),
        (
            "undefined scope",
            vec!["--app", "weather-app", "--service", "weather", "--scope", "weather:write", "--config", EXAMPLE],
            "service weather does not define scope \"weather:write\"; it defines weather:read",
        ),
        (
            "unregistered app",
            vec!["--app", "ghost-app", "--service", "weather", "--scope", "weather:read"],
            "app \"ghost-app\" is not registered",
        ),
    ];
    for (case, arguments, message) in cases {
        let mut args = vec!["grant", "add"];
        args.extend(arguments);
        let output = portcullis(dir.path(), &args);
        assert_eq!(output.status.code(), Some(2), "{case}");
        assert!(stderr(&output).contains(message), "{case}: {}", stderr(&output));
    }
}

#[test]
fn redirect_uris_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let good = register(
        dir.path(),
        "weather-app",
        &["--redirect-uri", "https://app.example/callback", "--redirect-uri", "http://127.0.0.1:8080/cb"],
    );
    assert_eq!(good.status.code(), Some(0), "{}", stderr(&good));

    for bad in ["http://app.example/callback", "https://app.example/cb#frag", "javascript:alert(1)", "not a url"] {
        let output = register(dir.path(), "other-app", &["--redirect-uri", bad]);
        assert_eq!(output.status.code(), Some(2), "{bad}");
        assert!(stderr(&output).contains(&format!("invalid redirect URI {bad:?}")), "{bad}: {}", stderr(&output));
    }
}

#[test]
fn customer_add_prints_secret_once() {
    let dir = tempfile::tempdir().unwrap();
    let output = portcullis(dir.path(), &["customer", "add", "--id", "alice"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    let secret = text.lines().find_map(|l| l.strip_prefix("secret: ")).unwrap();
    assert_eq!(secret.len(), 32);
    assert!(!stderr(&output).contains(secret), "the secret must not be logged");

    let again = portcullis(dir.path(), &["customer", "add", "--id", "alice"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("customer \"alice\" already exists"));
}
