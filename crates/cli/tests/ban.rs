//! `portcullis ban` on a store with known decisions.

mod common;

use common::*;

use std::path::Path;
use std::time::{Duration, SystemTime};

use portcullis_store::{DecisionKind, DecisionOrigin, NewDecision, Store};

/// 2026-12-01T00:00:00Z in milliseconds since the Unix epoch.
const STARTED: i64 = 1_796_083_200_000;
/// 2099-01-01T00:00:00Z, far enough ahead to stay in force.
const FAR_FUTURE: i64 = 4_070_908_800_000;

/// Stores three decisions: 1 a guard ban in force, 2 an expired operator
/// throttle, 3 a simulated guard ban.
fn seed(data_dir: &Path) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let store = Store::open_in(data_dir).await.unwrap();
        let guard_ban = NewDecision {
            app_id: "bad-app".into(),
            kind: DecisionKind::Ban,
            reason: "401 or 403 at least 20 times in 60s".into(),
            policy: Some("unauthorised".into()),
            evidence: r#"{"count":20,"classes":{"401":17,"403":3}}"#.into(),
            origin: DecisionOrigin::Guard,
            simulated: false,
            started_at: STARTED,
            expires_at: Some(FAR_FUTURE),
        };
        store.insert_decision(&guard_ban).await.unwrap();
        let throttle = NewDecision {
            app_id: "slow-app".into(),
            kind: DecisionKind::Throttle { per_second: 2.5 },
            reason: "manual".into(),
            policy: None,
            evidence: "{}".into(),
            origin: DecisionOrigin::Operator,
            simulated: false,
            started_at: STARTED,
            expires_at: Some(STARTED + 3_600_000),
        };
        store.insert_decision(&throttle).await.unwrap();
        store.insert_decision(&NewDecision { simulated: true, ..guard_ban }).await.unwrap();
        store.close().await;
    });
}

#[test]
fn ban_list_shows_decisions_in_force() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());

    let output = portcullis(dir.path(), &["ban", "list"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), TABLE_IN_FORCE);

    let output = portcullis(dir.path(), &["ban", "list", "--app", "slow-app"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(!stdout(&output).contains("slow-app"), "{}", stdout(&output));
}

const TABLE_IN_FORCE: &str = "\
┌─────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────┐
│ ID   APP       KIND   REASON                                POLICY         ORIGIN   STARTED                EXPIRES                SIMULATED │
╞═════════════════════════════════════════════════════════════════════════════════════════════════════════════════════════════════════════════╡
│ 1    bad-app   ban    401 or 403 at least 20 times in 60s   unauthorised   guard    2026-12-01T00:00:00Z   2099-01-01T00:00:00Z   no        │
└─────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────┘
";

#[test]
fn ban_list_all_as_json() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());

    let output = portcullis(dir.path(), &["ban", "list", "--all", "--format", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["kind"], "decision_list");
    let ids: Vec<i64> = json["decisions"].as_array().unwrap().iter().map(|d| d["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [3, 2, 1]);
    let throttle = &json["decisions"][1];
    assert_eq!(
        *throttle,
        serde_json::json!({
            "id": 2,
            "app_id": "slow-app",
            "kind": "throttle",
            "throttle_per_second": 2.5,
            "reason": "manual",
            "policy": null,
            "origin": "operator",
            "simulated": false,
            "in_force": false,
            "started_at": STARTED,
            "expires_at": STARTED + 3_600_000,
            "lifted_at": null,
            "lifted_by": null,
            "evidence": {},
        })
    );
    assert_eq!(json["decisions"][0]["simulated"], true);
    assert_eq!(json["decisions"][0]["in_force"], false);

    let output = portcullis(dir.path(), &["ban", "list", "--all", "--app", "bad-app", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["decisions"].as_array().unwrap().len(), 2);
}

#[test]
fn ban_show_includes_evidence() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());

    let output = portcullis(dir.path(), &["ban", "show", "1"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), SHOW_TABLE);

    let output = portcullis(dir.path(), &["ban", "show", "1", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["kind"], "decision");
    assert_eq!(json["decision"]["evidence"], serde_json::json!({ "count": 20, "classes": { "401": 17, "403": 3 } }));
    assert_eq!(json["decision"]["in_force"], true);

    let missing = portcullis(dir.path(), &["ban", "show", "99"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(stdout(&missing), "");
    assert_eq!(
        stderr(&missing),
        "portcullis: decision 99 not found; `portcullis ban list --all` lists every decision\n"
    );
}

const SHOW_TABLE: &str = "\
┌─────────────────────────────────────────────────┐
│ FIELD       VALUE                               │
╞═════════════════════════════════════════════════╡
│ ID          1                                   │
│ APP         bad-app                             │
│ KIND        ban                                 │
│ REASON      401 or 403 at least 20 times in 60s │
│ POLICY      unauthorised                        │
│ ORIGIN      guard                               │
│ STARTED     2026-12-01T00:00:00Z                │
│ EXPIRES     2099-01-01T00:00:00Z                │
│ SIMULATED   no                                  │
│ IN FORCE    yes                                 │
│ LIFTED      -                                   │
│ LIFTED BY   -                                   │
│ EVIDENCE    {                                   │
│               \"classes\": {                      │
│                 \"401\": 17,                      │
│                 \"403\": 3                        │
│               },                                │
│               \"count\": 20                       │
│             }                                   │
└─────────────────────────────────────────────────┘
";

#[test]
fn ban_add_and_remove_round_trip() {
    let dir = tempfile::tempdir().unwrap();

    let before = SystemTime::now();
    let output =
        portcullis(dir.path(), &["ban", "add", "--app", "bad-app", "--duration", "1h", "--reason", "scraping"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    let until = text
        .strip_prefix("banned app bad-app until ")
        .and_then(|rest| rest.strip_suffix(" (decision 1); its earlier tokens are invalidated\n"))
        .unwrap_or_else(|| panic!("unexpected output {text:?}"));
    let until = humantime::parse_rfc3339(until).unwrap();
    let hour = Duration::from_secs(3600);
    assert!(until >= before + hour - Duration::from_secs(1), "{until:?}");
    assert!(until <= SystemTime::now() + hour, "{until:?}");
    let cut_offs = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::open_in(dir.path()).await.unwrap();
        store.token_cut_offs().await.unwrap()
    });
    let banned_at = before.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(
        cut_offs.iter().any(|(app, cut_off)| app == "bad-app" && *cut_off >= banned_at),
        "the ban cuts off earlier tokens: {cut_offs:?}"
    );

    let output = portcullis(
        dir.path(),
        &["ban", "add", "--app", "bad-app", "--duration", "10m", "--reason", "slow down", "--throttle", "2.5"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).starts_with("throttled app bad-app to 2.5 requests per second until "));
    assert!(stdout(&output).ends_with(" (decision 2)\n"));

    let list = portcullis(dir.path(), &["ban", "list", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(json["decisions"][0]["kind"], "throttle");
    assert_eq!(json["decisions"][0]["origin"], "operator");
    assert_eq!(json["decisions"][1]["reason"], "scraping");

    let output = portcullis(dir.path(), &["ban", "remove", "1"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(stdout(&output), "lifted decision 1\n");
    let output = portcullis(dir.path(), &["ban", "remove", "1"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr(&output), "portcullis: decision 1 not found or already lifted\n");

    let output = portcullis(dir.path(), &["ban", "remove", "--app", "bad-app"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(stdout(&output), "lifted decision 2\n");
    let output = portcullis(dir.path(), &["ban", "remove", "--app", "bad-app"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr(&output), "portcullis: no decision about app bad-app is in force\n");

    let show = portcullis(dir.path(), &["ban", "show", "2", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
    assert_eq!(json["decision"]["lifted_by"], "operator");
    assert_eq!(json["decision"]["in_force"], false);
}

#[test]
fn ban_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["ban", "add", "--app", "bad-app", "--duration", "0s", "--reason", "x"],
            "portcullis: error: invalid --duration \"0s\": expected a duration from 1s to 365d, written with a unit such as \"30m\", \"1h\" or \"7d\"\n",
        ),
        (
            &["ban", "add", "--app", "bad-app", "--duration", "1 fortnight", "--reason", "x"],
            "portcullis: error: invalid --duration \"1 fortnight\": expected a duration from 1s to 365d, written with a unit such as \"30m\", \"1h\" or \"7d\"\n",
        ),
        (
            &["ban", "add", "--app", "Bad_App", "--duration", "1h", "--reason", "x"],
            "portcullis: error: invalid app id \"Bad_App\": only lowercase letters, digits and '-'\n",
        ),
        (
            &["ban", "add", "--app", "bad-app", "--duration", "1h", "--reason", "x", "--throttle", "0"],
            "portcullis: error: invalid --throttle 0: expected requests per second from 0.001 to 1000000\n",
        ),
        (
            &["ban", "list", "--app", "bad-app-"],
            "portcullis: error: invalid app id \"bad-app-\": no '-' at the start or end\n",
        ),
    ];
    for (args, message) in cases {
        let output = portcullis(dir.path(), args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert_eq!(stderr(&output), message, "{args:?}");
    }

    for args in [&["ban", "remove"][..], &["ban", "remove", "1", "--app", "bad-app"]] {
        assert_eq!(portcullis(dir.path(), args).status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn ban_help_names_units() {
    let dir = tempfile::tempdir().unwrap();
    let output = portcullis(dir.path(), &["ban", "add", "--help"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(text.contains("How long the decision lasts, with a unit: \"30m\", \"1h\", \"7d\" (1s to 365d)"), "{text}");
    assert!(text.contains("Throttle the app to this many requests per second (0.001 to 1000000)"), "{text}");
}
