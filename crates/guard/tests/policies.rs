//! The example platform's policies, event by event, with a manual clock.

mod common;

use common::*;
use portcullis_guard::Verdict;
use portcullis_store::{DecisionKind, DecisionOrigin};
use serde_json::json;

/// What one run of events is expected to decide.
struct Expected {
    /// 1-based number of the event that causes the decision.
    at_event: usize,
    policy: &'static str,
    kind: DecisionKind,
    duration_ms: i64,
    reason: &'static str,
}

struct Case {
    name: &'static str,
    /// Status, count and spacing in milliseconds of each run of responses, in order.
    runs: &'static [(u16, usize, i64)],
    expected: Option<Expected>,
}

#[tokio::test]
async fn example_policies_table() {
    let unauthorised = |at_event| Expected {
        at_event,
        policy: "unauthorised",
        kind: DecisionKind::Ban,
        duration_ms: HOUR_MS,
        reason: "401 or 403 at least 20 times in 60s",
    };
    let flood = |at_event| Expected {
        at_event,
        policy: "flood",
        kind: DecisionKind::Throttle { per_second: 5.0 },
        duration_ms: 600_000,
        reason: "at least 1000 requests in 5s",
    };
    let cases = [
        Case { name: "19 x 401", runs: &[(401, 19, 100)], expected: None },
        Case { name: "20 x 401", runs: &[(401, 20, 100)], expected: Some(unauthorised(20)) },
        Case {
            name: "10 x 401 then 10 x 403",
            runs: &[(401, 10, 100), (403, 10, 100)],
            expected: Some(unauthorised(20)),
        },
        Case { name: "20 x 401 over 61 s", runs: &[(401, 20, 3_200)], expected: None },
        Case { name: "20 x 404", runs: &[(404, 20, 100)], expected: None },
        Case { name: "49 x 400", runs: &[(400, 49, 100)], expected: None },
        Case {
            name: "50 x 400",
            runs: &[(400, 50, 100)],
            expected: Some(Expected {
                at_event: 50,
                policy: "malformed",
                kind: DecisionKind::Throttle { per_second: 1.0 },
                duration_ms: 600_000,
                reason: "400 at least 50 times in 60s",
            }),
        },
        Case { name: "1000 requests in 4 s", runs: &[(200, 1000, 4)], expected: Some(flood(1000)) },
        Case { name: "1000 requests at once", runs: &[(200, 1000, 0)], expected: Some(flood(1000)) },
        Case { name: "999 requests at once", runs: &[(200, 999, 0)], expected: None },
        Case { name: "1000 requests over 6 s", runs: &[(200, 1000, 6)], expected: None },
        Case { name: "2000 requests in 8 s", runs: &[(200, 2000, 4)], expected: Some(flood(1000)) },
    ];

    for case in cases {
        let mut harness = Harness::new(example_settings()).await;
        let mut decisions = Vec::new();
        let mut sent = 0;
        for (status, count, spacing) in case.runs {
            harness.clock.advance(std::time::Duration::from_millis(*spacing as u64));
            for (n, record) in harness.responses("bad-app", *status, *count, *spacing).await {
                decisions.push((sent + n, record));
            }
            sent += count;
        }

        let Some(expected) = case.expected else {
            assert!(decisions.is_empty(), "{}: expected no decision, got {decisions:?}", case.name);
            assert_eq!(harness.verdict("bad-app"), Verdict::Allow, "{}", case.name);
            continue;
        };
        assert_eq!(decisions.len(), 1, "{}: expected one decision, got {decisions:?}", case.name);
        let (at_event, record) = &decisions[0];
        let decision = &record.decision;
        assert_eq!(*at_event, expected.at_event, "{}", case.name);
        assert_eq!(decision.policy.as_deref(), Some(expected.policy), "{}", case.name);
        assert_eq!(decision.kind, expected.kind, "{}", case.name);
        assert_eq!(decision.reason, expected.reason, "{}", case.name);
        assert_eq!(decision.expires_at.unwrap() - decision.started_at, expected.duration_ms, "{}", case.name);
        assert_eq!(decision.origin, DecisionOrigin::Guard, "{}", case.name);
        assert!(!decision.simulated, "{}", case.name);

        let stored = harness.store.decision(record.id).await.unwrap().expect("decision stored");
        assert_eq!(&stored, record, "{}", case.name);

        let verdict = harness.verdict("bad-app");
        match expected.kind {
            DecisionKind::Ban => assert!(
                matches!(verdict, Verdict::Ban { decision_id, .. } if decision_id == record.id),
                "{}: {verdict:?}",
                case.name
            ),
            DecisionKind::Throttle { per_second: expected_rate } => assert!(
                matches!(verdict, Verdict::Throttle { per_second, decision_id, .. } if per_second == expected_rate && decision_id == record.id),
                "{}: {verdict:?}",
                case.name
            ),
        }
        assert_eq!(harness.verdict("other-app"), Verdict::Allow, "{}", case.name);
    }
}

#[tokio::test]
async fn ban_evidence_counts_each_class() {
    let mut harness = Harness::new(example_settings()).await;
    assert!(harness.responses("bad-app", 401, 17, 100).await.is_empty());
    let decisions = harness.responses("bad-app", 403, 3, 100).await;
    assert_eq!(decisions.len(), 1);
    let (n, record) = &decisions[0];
    assert_eq!(*n, 3);

    let evidence: serde_json::Value = serde_json::from_str(&record.decision.evidence).unwrap();
    assert_eq!(
        evidence,
        json!({
            "signal": "responses",
            "count": 20,
            "threshold": 20,
            "window_ms": 60_000,
            "at_ms": T0 + 1_800,
            "classes": { "401": 17, "403": 3 },
            "last_event": { "kind": "access", "service": "weather", "status": 403, "bytes": 100 },
        })
    );
    assert_eq!(record.decision.started_at, T0 + 1_800);
    assert_eq!(record.decision.expires_at, Some(T0 + 1_800 + HOUR_MS));
}

#[tokio::test]
async fn one_egress_violation_bans() {
    let mut harness = Harness::new(example_settings()).await;
    let decisions = harness.egress_violation("leaky-app").await;
    assert_eq!(decisions.len(), 1);
    let decision = &decisions[0].decision;
    assert_eq!(decision.policy.as_deref(), Some("egress-violation"));
    assert_eq!(decision.kind, DecisionKind::Ban);
    assert_eq!(decision.reason, "at least 1 egress violation in 1h");
    let evidence: serde_json::Value = serde_json::from_str(&decision.evidence).unwrap();
    assert_eq!(
        evidence["last_event"],
        json!({ "kind": "egress_violation", "host": "exfil.example.net", "rule": "not in allow_hosts" })
    );
    assert_eq!(
        harness.verdict("leaky-app"),
        Verdict::Ban {
            until: Some(T0 + HOUR_MS),
            reason: "at least 1 egress violation in 1h".into(),
            decision_id: decisions[0].id
        }
    );
}

#[tokio::test]
async fn decision_fires_once_per_crossing() {
    let mut harness = Harness::new(example_settings()).await;
    // 100 responses past the threshold make one decision.
    let decisions = harness.responses("bad-app", 401, 120, 100).await;
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].0, 20);
    assert_eq!(harness.store.decisions(Some("bad-app")).await.unwrap().len(), 1);
}

#[tokio::test]
async fn exempt_app_is_never_acted_on() {
    let settings = settings_with(|text| text.replace("exempt_apps = []", "exempt_apps = [\"trusted-app\"]"));
    let mut harness = Harness::new(settings).await;
    assert!(harness.responses("trusted-app", 401, 100, 10).await.is_empty());
    assert!(harness.responses("trusted-app", 200, 2000, 0).await.is_empty());
    assert!(harness.egress_violation("trusted-app").await.is_empty());
    assert_eq!(harness.verdict("trusted-app"), Verdict::Allow);
    assert!(harness.store.decisions(Some("trusted-app")).await.unwrap().is_empty());

    // Its statistics are still kept.
    let stats = harness.guard.stats_reader().app("trusted-app").unwrap();
    assert_eq!(stats.egress_violations, 1);
    assert_eq!(stats.services["weather"].requests, 2100);
}

#[tokio::test]
async fn report_mode_records_simulated_decision() {
    let settings = settings_with(|text| {
        text.replacen("duration = \"1h\"\nmode = \"enforce\"", "duration = \"1h\"\nmode = \"report\"", 1)
    });
    assert_eq!(settings.policies[0].mode, portcullis_config::Mode::Report);
    let mut harness = Harness::new(settings).await;

    let decisions = harness.responses("bad-app", 401, 20, 100).await;
    assert_eq!(decisions.len(), 1);
    let record = &decisions[0].1;
    assert!(record.decision.simulated);
    assert_eq!(record.decision.reason, "401 or 403 at least 20 times in 60s");
    assert!(harness.store.decision(record.id).await.unwrap().unwrap().decision.simulated);
    assert_eq!(harness.verdict("bad-app"), Verdict::Allow);
    assert!(harness.guard.subscribe().borrow().ids().is_empty());

    // While the simulated ban runs, a new crossing records nothing more.
    harness.clock.advance(std::time::Duration::from_secs(120));
    assert!(harness.responses("bad-app", 401, 20, 100).await.is_empty());
}

#[tokio::test]
async fn bans_escalate_up_to_max_ban() {
    let mut harness = Harness::new(example_settings()).await;
    let mut lengths = Vec::new();
    for _ in 0..10 {
        let decisions = harness.responses("bad-app", 401, 20, 100).await;
        assert_eq!(decisions.len(), 1, "{decisions:?}");
        let decision = &decisions[0].1.decision;
        lengths.push((decision.expires_at.unwrap() - decision.started_at) / HOUR_MS);

        // Past the ban's end the app is allowed again.
        harness.clock.set(decision.expires_at.unwrap());
        harness.guard.refresh().await.unwrap();
        assert_eq!(harness.verdict("bad-app"), Verdict::Allow);
    }
    assert_eq!(lengths, [1, 2, 4, 8, 16, 32, 64, 128, 168, 168]);
}

#[tokio::test]
async fn throttles_do_not_escalate_bans() {
    let mut harness = Harness::new(example_settings()).await;
    assert_eq!(harness.responses("bad-app", 400, 50, 10).await.len(), 1);
    harness.clock.advance(std::time::Duration::from_secs(3600));
    let decisions = harness.responses("bad-app", 401, 20, 10).await;
    let decision = &decisions[0].1.decision;
    assert_eq!(decision.expires_at.unwrap() - decision.started_at, HOUR_MS);
}

#[tokio::test]
async fn lifted_ban_is_not_escalated() {
    let mut harness = Harness::new(example_settings()).await;
    let first = harness.responses("bad-app", 401, 20, 10).await;
    assert!(harness.store.lift_decision(first[0].1.id, "operator", harness.now()).await.unwrap());
    harness.guard.refresh().await.unwrap();
    assert_eq!(harness.verdict("bad-app"), Verdict::Allow);

    harness.clock.advance(std::time::Duration::from_secs(120));
    let second = harness.responses("bad-app", 401, 20, 10).await;
    let decision = &second[0].1.decision;
    assert_eq!(decision.expires_at.unwrap() - decision.started_at, HOUR_MS);
}

#[tokio::test]
async fn ban_expires_by_itself() {
    let mut harness = Harness::new(example_settings()).await;
    let decisions = harness.responses("bad-app", 401, 20, 100).await;
    let expires_at = decisions[0].1.decision.expires_at.unwrap();
    let receiver = harness.guard.subscribe();

    // Readers treat the expired entry as absent before any sweep.
    harness.clock.set(expires_at - 1);
    assert!(matches!(harness.verdict("bad-app"), Verdict::Ban { .. }));
    harness.clock.set(expires_at);
    assert_eq!(harness.verdict("bad-app"), Verdict::Allow);
    assert_eq!(receiver.borrow().ids(), [decisions[0].1.id]);

    // The sweep removes it and publishes.
    harness.guard.refresh().await.unwrap();
    assert!(receiver.borrow().ids().is_empty());
}

#[tokio::test]
async fn restart_keeps_ban_and_history() {
    let mut harness = Harness::new(example_settings()).await;
    let first = harness.responses("bad-app", 401, 20, 100).await;
    let first_id = first[0].1.id;

    harness.restart(example_settings()).await;
    assert!(matches!(harness.verdict("bad-app"), Verdict::Ban { decision_id, .. } if decision_id == first_id));
    // The loaded ban still holds off a second decision by the same policy.
    assert!(harness.responses("bad-app", 401, 20, 100).await.is_empty());

    harness.clock.set(first[0].1.decision.expires_at.unwrap());
    harness.restart(example_settings()).await;
    assert_eq!(harness.verdict("bad-app"), Verdict::Allow);
    let second = harness.responses("bad-app", 401, 20, 100).await;
    let decision = &second[0].1.decision;
    assert_eq!(decision.expires_at.unwrap() - decision.started_at, 2 * HOUR_MS);
}

#[tokio::test]
async fn operator_decisions_are_picked_up() {
    let mut harness = Harness::new(example_settings()).await;
    let ban = portcullis_store::NewDecision {
        app_id: "bad-app".into(),
        kind: DecisionKind::Ban,
        reason: "manual".into(),
        policy: None,
        evidence: "{}".into(),
        origin: DecisionOrigin::Operator,
        simulated: false,
        started_at: T0,
        expires_at: Some(T0 + HOUR_MS),
    };
    let id = harness.store.insert_decision(&ban).await.unwrap();
    assert_eq!(harness.verdict("bad-app"), Verdict::Allow);

    harness.guard.refresh().await.unwrap();
    assert_eq!(
        harness.verdict("bad-app"),
        Verdict::Ban { until: Some(T0 + HOUR_MS), reason: "manual".into(), decision_id: id }
    );

    assert!(harness.store.lift_decision(id, "operator", T0).await.unwrap());
    harness.guard.refresh().await.unwrap();
    assert_eq!(harness.verdict("bad-app"), Verdict::Allow);
}

#[tokio::test]
async fn offence_after_expiry_bans_again() {
    // A ban shorter than the policy's 60 s window, so the first offence's
    // events are still in the window when the ban expires.
    let mut settings = example_settings();
    let unauthorised = settings.policies.iter_mut().find(|p| p.name == "unauthorised").unwrap();
    unauthorised.duration = std::time::Duration::from_secs(2);
    let mut harness = Harness::new(settings).await;
    let first = harness.responses("repeat-app", 401, 20, 100).await;
    assert_eq!(first.len(), 1);
    let expires_at = first[0].1.decision.expires_at.unwrap();

    // The ban expires and the app sends twenty more 401s within the same
    // minute: judged on the new events alone, the 19th is below the
    // threshold and the 20th bans again, for twice as long.
    harness.clock.set(expires_at);
    harness.guard.refresh().await.unwrap();
    assert_eq!(harness.verdict("repeat-app"), Verdict::Allow);
    let below = harness.responses("repeat-app", 401, 19, 1).await;
    assert!(below.is_empty(), "{below:?}");
    let second = harness.responses("repeat-app", 401, 1, 1).await;
    assert_eq!(second.len(), 1);
    let record = &second[0].1;
    assert_eq!(record.decision.expires_at.unwrap() - record.decision.started_at, 4_000);
}
