//! Running the `portcullis` binary in tests.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// The weather example's configuration file.
pub const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/weather-platform/platform.toml");

/// Runs `portcullis --data-dir DATA_DIR ARGS...` with no log filter or
/// configuration taken from the environment.
pub fn portcullis(data_dir: &Path, args: &[&str]) -> Output {
    // A shared data directory draws a warning on standard error, which
    // tests that compare it exactly do not expect.
    if data_dir.exists() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("PORTCULLIS_LOG")
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("PORTCULLIS_DATA_DIR")
        .output()
        .expect("run portcullis")
}

/// Standard output as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Standard error as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// Free TCP ports on loopback, as the kernel hands them out.
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> =
        (0..count).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// `text` with each `(from, to)` replaced; fails if `from` is missing, so
/// a changed example cannot make a test silently test something else.
pub fn replaced(text: &str, pairs: &[(&str, String)]) -> String {
    let mut text = text.to_owned();
    for (from, to) in pairs {
        assert!(text.contains(from), "the example no longer contains {from:?}");
        text = text.replace(from, to);
    }
    text
}

/// Returns the JSON lines of `text` that are objects with `"kind": "outcome"`, as
/// the example apps print them.
pub fn outcomes_in(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|value| value["kind"] == "outcome")
        .collect()
}

/// Reads the JSON lines of a file, skipping lines that do not parse.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

/// Sends SIGTERM to `child` and waits up to `limit` for it to exit, then
/// kills it. For clean-up on drop; tests that check the exit do it themselves.
pub fn terminate(child: &mut std::process::Child, limit: std::time::Duration) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = std::time::Instant::now() + limit;
        while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Checks the event logs in `data` against what the example apps printed:
/// the egress proxy refused rogue-app's forbidden host and allowed
/// forecast-app's feed, and every gateway request that got a response has
/// an access event.
pub fn assert_example_events(data: &Path, forecast: &[serde_json::Value], rogue: &[serde_json::Value]) {
    let forbidden = rogue.iter().find(|o| o["step"] == "forbidden-host").expect("rogue-app tried the forbidden host");
    assert_eq!(forbidden["status"], 403, "{forbidden}");
    assert_eq!(forbidden["error"], "egress_denied", "{forbidden}");
    let egress = json_lines(&data.join("egress.jsonl"));
    let refusal = egress
        .iter()
        .find(|e| e["app_id"] == "rogue-app" && e["requested_host"] == "exfil.forbidden.test")
        .unwrap_or_else(|| panic!("no egress event for the forbidden host: {egress:?}"));
    assert_eq!(refusal["verdict"], "deny", "{refusal}");
    assert!(refusal["connected"].is_null(), "{refusal}");
    assert!(
        egress.iter().any(|e| e["app_id"] == "forecast-app" && e["verdict"] == "allow"),
        "no allowed feed request in {egress:?}"
    );

    // An event is written for every request that got a response, so per
    // app there are at least as many events as such requests.
    let access = json_lines(&data.join("access.jsonl"));
    for (app_id, lines) in [("forecast-app", forecast), ("rogue-app", rogue)] {
        let answered = lines.iter().filter(|o| o["via"] == "gateway" && o["status"].is_u64()).count();
        let events = access.iter().filter(|e| e["app_id"] == app_id).count();
        assert!(answered > 0, "{app_id} made no gateway request");
        assert!(events >= answered, "{app_id}: {events} access events for {answered} answered requests");
    }
}
