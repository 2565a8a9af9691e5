//! The `portcullis` binary as an operator runs it.

mod common;

use std::process::Command;

use common::*;

#[test]
fn help_lists_commands_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let output = portcullis(dir.path(), &["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    for command in ["serve", "app", "ban"] {
        assert!(text.contains(&format!("\n  {command} ")), "{command} missing from:\n{text}");
    }
    assert!(text.contains("Exit codes: 0 success, 1 a check found problems, 2 usage or configuration error"));
}

#[test]
fn serve_check_prints_summary() {
    let dir = tempfile::tempdir().unwrap();
    let output = portcullis(dir.path(), &["serve", "--config", EXAMPLE, "--check"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.starts_with("configuration is valid: "), "{text}");
    assert!(text.contains("trust domain   weather.example"), "{text}");
    assert!(text.contains("weather -> https://127.0.0.1:9101 (1 routes, scopes weather:read)"), "{text}");
    assert!(
        text.contains("4 policies: unauthorised (ban), malformed (throttle), flood (throttle), egress-violation (ban)"),
        "{text}"
    );
    assert!(!dir.path().join("portcullis.db").exists(), "--check must not create the store");
}

#[test]
fn serve_check_json_is_machine_readable() {
    let dir = tempfile::tempdir().unwrap();
    let output = portcullis(dir.path(), &["serve", "--config", EXAMPLE, "--check", "--format", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["kind"], "config_check");
    assert_eq!(json["valid"], true);
    assert_eq!(json["config"]["listeners"]["gateway"], "127.0.0.1:8443");
    assert_eq!(json["config"]["guard"]["policies"][0]["window"]["secs"], 60);
    assert_eq!(json["config"]["runtime"]["hardening"]["memory_mib"], 256);
}

#[test]
fn broken_config_exits_2_naming_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("platform.toml");
    let text = std::fs::read_to_string(EXAMPLE).unwrap().replace("memory_mib = 256", "memory_mib = -1");
    std::fs::write(&file, text).unwrap();

    let output = portcullis(dir.path(), &["serve", "--config", file.to_str().unwrap(), "--check"]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message
            .contains("runtime.hardening.memory_mib: invalid value -1: expected an integer from 16 to 1048576 (MiB)"),
        "{message}"
    );
    assert!(message.contains(file.to_str().unwrap()), "{message}");
}

#[test]
fn missing_config_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let output = portcullis(dir.path(), &["serve", "--config", "/nonexistent/platform.toml", "--check"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("/nonexistent/platform.toml: cannot read the configuration"));
}

#[test]
fn usage_error_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let output = portcullis(dir.path(), &["serve", "--no-such-flag"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn app_registry_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let register =
        portcullis(dir.path(), &["app", "register", "--id", "weather-app", "--name", "Weather", "--owner", "acme"]);
    assert_eq!(register.status.code(), Some(0), "{}", stderr(&register));
    assert_eq!(stdout(&register), "registered app weather-app\n");

    let again = portcullis(dir.path(), &["app", "register", "--id", "weather-app", "--name", "W", "--owner", "acme"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("app \"weather-app\" already exists"), "{}", stderr(&again));

    let bad = portcullis(dir.path(), &["app", "register", "--id", "Weather_App", "--name", "W", "--owner", "acme"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("invalid app id \"Weather_App\": only lowercase letters, digits and '-'"));

    let list = portcullis(dir.path(), &["app", "list", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(json["kind"], "app_list");
    assert_eq!(json["apps"][0]["id"], "weather-app");
    assert_eq!(json["apps"][0]["state"], "submitted");

    let table = stdout(&portcullis(dir.path(), &["app", "list"]));
    assert!(table.contains("weather-app") && table.contains("submitted"), "{table}");

    assert_eq!(portcullis(dir.path(), &["app", "show", "nobody"]).status.code(), Some(1));
    assert_eq!(portcullis(dir.path(), &["app", "remove", "weather-app"]).status.code(), Some(0));
    assert_eq!(portcullis(dir.path(), &["app", "remove", "weather-app"]).status.code(), Some(1));
}

#[test]
fn deploy_rejects_widening_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let register = portcullis(dir.path(), &["app", "register", "--id", "wide-app", "--name", "W", "--owner", "acme"]);
    assert_eq!(register.status.code(), Some(0), "{}", stderr(&register));
    let manifest = dir.path().join("wide.toml");
    std::fs::write(
        &manifest,
        "id = \"wide-app\"\nimage = \"wide:latest\"\n[egress]\nhosts = [\"feed.weather.test\", \"evil.test\"]\n",
    )
    .unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["app", "deploy", manifest.to_str().unwrap(), "--config", EXAMPLE])
        .env("PORTCULLIS_PROXY_SECRET", "a-secret")
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("egress host \"evil.test\" is not allowed by egress.allow_hosts"), "{message}");
    assert!(message.contains("remove the host from the manifest"), "{message}");
}

#[test]
fn json_log_format_writes_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let output = portcullis(
        dir.path(),
        &["--log-format", "json", "app", "register", "--id", "logged-app", "--name", "L", "--owner", "acme"],
    );
    assert_eq!(output.status.code(), Some(0));
    let log = stderr(&output);
    let line = log.lines().find(|l| l.contains("app registered")).unwrap_or_else(|| panic!("no log line in {log}"));
    let json: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(json["level"], "INFO");
    assert_eq!(json["app_id"], "logged-app");
    assert_eq!(json["message"], "app registered");
}

#[test]
fn data_dir_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    let output = portcullis(&dir, &["app", "list"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn config_env_selects_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("platform-data");
    let config = dir.path().join("platform.toml");
    let text = std::fs::read_to_string(EXAMPLE)
        .unwrap()
        .replace("# data_dir = \"/var/lib/portcullis\"", &format!("data_dir = \"{}\"", data.display()));
    std::fs::write(&config, text).unwrap();

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["app", "register", "--id", "env-app", "--name", "Env", "--owner", "acme"])
        .env("PORTCULLIS_CONFIG", &config)
        .env("HOME", dir.path())
        .env_remove("PORTCULLIS_DATA_DIR")
        .env_remove("XDG_DATA_HOME")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(data.join("portcullis.db").exists(), "the configuration's data directory holds the store");
    let listed = portcullis(&data, &["app", "list", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&listed)).unwrap();
    assert_eq!(json["apps"][0]["id"], "env-app");
}

/// `app proxy-secret` issues a secret that the egress proxy accepts, prints
/// it once with the proxy URL, and makes the earlier secret invalid. An
/// unregistered app is a usage error.
#[test]
fn proxy_secret_is_issued_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let register = portcullis(dir.path(), &["app", "register", "--id", "feed-app", "--name", "F", "--owner", "acme"]);
    assert_eq!(register.status.code(), Some(0), "{}", stderr(&register));

    let issue = || {
        let output = portcullis(dir.path(), &["app", "proxy-secret", "feed-app", "--config", EXAMPLE]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let text = stdout(&output);
        let secret = text
            .lines()
            .find_map(|line| line.strip_prefix("egress proxy secret of app feed-app (shown once): "))
            .unwrap_or_else(|| panic!("no secret in {text:?}"))
            .to_owned();
        assert!(text.contains(&format!("HTTP_PROXY=http://feed-app:{secret}@127.0.0.1:8444\n")), "{text}");
        secret
    };
    let first = issue();
    let second = issue();
    assert_ne!(first, second);

    let app = portcullis_config::AppId::parse("feed-app").unwrap();
    let verified = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = portcullis_store::Store::open_in(dir.path()).await.unwrap();
        let secrets = portcullis_egress::proxy::ProxySecrets::new(store);
        (secrets.verify(&app, &first).await.unwrap(), secrets.verify(&app, &second).await.unwrap())
    });
    assert_eq!(verified, (false, true), "only the latest secret is valid");

    let unknown = portcullis(dir.path(), &["app", "proxy-secret", "no-such-app", "--config", EXAMPLE]);
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
    assert!(stderr(&unknown).contains("app \"no-such-app\" is not registered"), "{}", stderr(&unknown));
}
