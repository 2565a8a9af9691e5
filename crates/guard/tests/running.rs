//! The guard as a running task: the event queue, the published snapshot,
//! and decisions that other processes write to the store.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use portcullis_guard::{Clock, Guard, SystemClock, Verdict, event_queue};
use portcullis_store::{DecisionKind, DecisionOrigin, NewDecision, Store};

/// Upper bound on any wait in these tests, far above the expected times so
/// that a slow machine does not fail them.
const WAIT: Duration = Duration::from_secs(5);

async fn running_guard() -> (portcullis_guard::RunningGuard, Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    let guard = Guard::start(example_settings(), store.clone(), Arc::new(SystemClock)).await.unwrap();
    (guard.spawn(4096), store, dir)
}

#[tokio::test]
async fn crossing_event_publishes_ban_quickly() {
    let (running, store, _dir) = running_guard().await;
    let mut decisions = running.decisions.clone();
    let now = SystemClock.now_ms();
    for _ in 0..19 {
        assert!(running.events.send(access("bad-app", "weather", 401, 10, now)));
    }

    let sent = Instant::now();
    assert!(running.events.send(access("bad-app", "weather", 401, 10, now)));
    tokio::time::timeout(WAIT, decisions.wait_for(|set| !set.ids().is_empty())).await.unwrap().unwrap();
    let latency = sent.elapsed();
    assert!(latency < Duration::from_secs(1), "ban published after {latency:?}");

    let verdict = decisions.borrow().verdict("bad-app", SystemClock.now_ms());
    let Verdict::Ban { decision_id, reason, .. } = verdict else { panic!("expected a ban, got {verdict:?}") };
    assert_eq!(reason, "401 or 403 at least 20 times in 60s");
    // Stored before it was published.
    assert!(store.decision(decision_id).await.unwrap().is_some());
    running.stop().await;
}

#[tokio::test]
async fn operator_ban_is_picked_up_within_a_poll() {
    let (running, store, _dir) = running_guard().await;
    let mut decisions = running.decisions.clone();
    let now = SystemClock.now_ms();
    let id = store
        .insert_decision(&NewDecision {
            app_id: "bad-app".into(),
            kind: DecisionKind::Throttle { per_second: 2.0 },
            reason: "manual".into(),
            policy: None,
            evidence: "{}".into(),
            origin: DecisionOrigin::Operator,
            simulated: false,
            started_at: now,
            expires_at: Some(now + HOUR_MS),
        })
        .await
        .unwrap();

    let started = Instant::now();
    tokio::time::timeout(WAIT, decisions.wait_for(|set| set.ids() == [id])).await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "picked up after {:?}", started.elapsed());
    assert_eq!(
        decisions.borrow().verdict("bad-app", SystemClock.now_ms()),
        Verdict::Throttle { per_second: 2.0, until: Some(now + HOUR_MS), decision_id: id }
    );

    assert!(store.lift_decision(id, "operator", SystemClock.now_ms()).await.unwrap());
    tokio::time::timeout(WAIT, decisions.wait_for(|set| set.ids().is_empty())).await.unwrap().unwrap();
    running.stop().await;
}

#[tokio::test]
async fn full_queue_drops_and_counts() {
    let (sender, mut receiver) = event_queue(2);
    let event = access("busy-app", "weather", 200, 1, T0);
    assert!(sender.send(event.clone()));
    assert!(sender.clone().send(event.clone()));
    assert!(!sender.send(event.clone()));
    assert!(!sender.send(event.clone()));
    assert_eq!(sender.dropped_events(), 2);

    assert_eq!(receiver.recv().await, Some(event.clone()));
    assert!(sender.send(event.clone()));
    assert_eq!(sender.dropped_events(), 2);

    drop(receiver);
    assert!(!sender.send(event));
    assert_eq!(sender.dropped_events(), 3);
}

#[tokio::test]
async fn stopped_guard_keeps_last_snapshot() {
    let (running, _store, _dir) = running_guard().await;
    let decisions = running.decisions.clone();
    let events = running.events.clone();
    let now = SystemClock.now_ms();
    events.send(portcullis_guard::GuardEvent::EgressViolation {
        app_id: portcullis_config::AppId::parse("leaky-app").unwrap(),
        host: "exfil.example.net".into(),
        rule: "not in allow_hosts".into(),
        at_ms: now,
    });
    let mut waiting = decisions.clone();
    tokio::time::timeout(WAIT, waiting.wait_for(|set| !set.ids().is_empty())).await.unwrap().unwrap();
    running.stop().await;

    assert!(matches!(decisions.borrow().verdict("leaky-app", SystemClock.now_ms()), Verdict::Ban { .. }));
    assert!(!events.send(access("leaky-app", "weather", 200, 1, now)));
    assert_eq!(events.dropped_events(), 1);
}
