//! Statistics per app and service, and the memory of many apps.

mod common;

use std::time::Duration;

use common::*;
use portcullis_guard::{IDLE_MARGIN, MAX_SERVICES_PER_APP, OTHER_SERVICE};

#[tokio::test]
async fn idle_apps_are_forgotten() {
    let mut harness = Harness::new(example_settings()).await;
    for n in 0..10_000 {
        let event = access(&format!("app-{n}"), "weather", 200, 10, T0);
        assert!(harness.guard.handle(event).await.unwrap().is_empty());
    }
    assert_eq!(harness.guard.tracked_apps(), 10_000);

    // The maximum window of the example is the egress policy's hour.
    harness.clock.advance(Duration::from_secs(3600) + IDLE_MARGIN);
    harness.guard.refresh().await.unwrap();
    assert_eq!(harness.guard.tracked_apps(), 10_000, "kept until longest window plus margin");

    let event = access("app-7", "weather", 200, 10, harness.now());
    harness.guard.handle(event).await.unwrap();
    harness.clock.advance(Duration::from_millis(1));
    harness.guard.refresh().await.unwrap();
    assert_eq!(harness.guard.tracked_apps(), 1);
    assert!(harness.guard.stats_reader().app("app-7").is_some());
    assert!(harness.guard.stats_reader().app("app-8").is_none());
}

#[tokio::test]
async fn stats_per_service_and_class() {
    let mut harness = Harness::new(example_settings()).await;
    let events = [
        ("weather", 200, 1000),
        ("weather", 200, 500),
        ("weather", 404, 10),
        ("records", 401, 20),
        ("records", 302, 30),
        ("records", 503, 40),
        ("records", 431, 50),
    ];
    for (service, status, bytes) in events {
        harness.guard.handle(access("stats-app", service, status, bytes, T0)).await.unwrap();
    }
    harness.egress_violation("stats-app").await;

    let stats = harness.guard.stats_reader().app("stats-app").unwrap();
    assert_eq!(stats.window_seconds, 60);
    assert_eq!(stats.egress_violations, 1);
    let weather = &stats.services["weather"];
    assert_eq!(weather.requests, 3);
    assert_eq!(weather.bytes, 1510);
    assert_eq!(weather.requests_per_second, 0.05);
    assert_eq!(weather.outcomes.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(), [("2xx", 2), ("404", 1)]);
    let records = &stats.services["records"];
    assert_eq!(records.requests, 4);
    assert_eq!(records.unclassified, 1);
    assert_eq!(
        records.outcomes.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(),
        [("401", 1), ("5xx", 1), ("too_large", 1)]
    );

    // A minute later the window is empty.
    harness.clock.advance(Duration::from_secs(60));
    let stats = harness.guard.stats_reader().app("stats-app").unwrap();
    assert!(stats.services.is_empty());
    assert_eq!(stats.egress_violations, 0);
}

#[tokio::test]
async fn service_names_per_app_are_bounded() {
    let mut harness = Harness::new(example_settings()).await;
    for n in 0..(MAX_SERVICES_PER_APP + 10) {
        harness.guard.handle(access("noisy-app", &format!("svc-{n}"), 200, 1, T0)).await.unwrap();
    }
    let stats = harness.guard.stats_reader().app("noisy-app").unwrap();
    assert_eq!(stats.services.len(), MAX_SERVICES_PER_APP + 1);
    assert_eq!(stats.services[OTHER_SERVICE].requests, 10);
}
