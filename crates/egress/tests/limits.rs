//! Tunnel counting and byte accounting per app.

mod common;

use common::app_id;
use portcullis_config::AppId;
use std::time::Duration;

use portcullis_egress::{ByteAccounting, ByteCap, ByteCounter, Direction, EgressError, TunnelCounter};

#[test]
fn tunnel_limit_enforced_and_released() {
    let counter = TunnelCounter::new(2);
    let app = app_id();

    let first = counter.acquire(&app).expect("first tunnel");
    let second = counter.acquire(&app).expect("second tunnel");
    assert_eq!(counter.open(&app), 2);

    let error = counter.acquire(&app).expect_err("third tunnel is over the limit");
    assert!(matches!(&error, EgressError::TunnelLimit { app_id, limit: 2 } if app_id == "weather-app"), "{error}");
    assert!(error.to_string().contains("max_tunnels_per_app"), "{error}");
    assert_eq!(counter.open(&app), 2, "a refused tunnel is not counted");

    drop(first);
    assert_eq!(counter.open(&app), 1);
    let third = counter.acquire(&app).expect("a slot is free after a drop");
    assert_eq!(third.app_id(), &app);

    drop(second);
    drop(third);
    assert_eq!(counter.open(&app), 0);
}

#[test]
fn tunnel_limit_is_per_app() {
    let counter = TunnelCounter::new(1);
    let one = app_id();
    let other = AppId::parse("other-app").unwrap();

    let _held = counter.acquire(&one).unwrap();
    assert!(counter.acquire(&one).is_err());
    let _other = counter.acquire(&other).expect("another app has its own count");
    assert_eq!(counter.open(&other), 1);
}

#[test]
fn tunnel_guards_across_threads() {
    let counter = TunnelCounter::new(8);
    let app = app_id();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let counter = counter.clone();
            let app = app.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    if let Ok(guard) = counter.acquire(&app) {
                        drop(guard);
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    assert_eq!(counter.open(&app), 0, "every guard released its slot");
}

#[test]
fn bytes_counted_per_app_and_direction() {
    let counter = ByteCounter::new();
    let app = app_id();
    let other = AppId::parse("other-app").unwrap();

    counter.record(&app, Direction::Sent, 100);
    counter.record(&app, Direction::Sent, 20);
    counter.record(&app, Direction::Received, 5000);
    counter.record(&other, Direction::Received, 7);

    assert_eq!(counter.totals(&app), (120, 5000));
    assert_eq!(counter.totals(&other), (0, 7));
    assert_eq!(counter.totals(&AppId::parse("idle-app").unwrap()), (0, 0));
}

#[test]
fn byte_cap_counts_both_directions() {
    let cap = ByteCap::new(1000, Duration::from_secs(3600));
    let app = app_id();

    cap.record(&app, Direction::Sent, 400);
    cap.record(&app, Direction::Received, 500);
    assert_eq!(cap.usage(&app).bytes(), 900);
    assert!(cap.usage(&app).check().is_ok(), "900 of 1000 bytes is under the cap");

    cap.record(&app, Direction::Received, 100);
    let error = cap.usage(&app).check().expect_err("1000 of 1000 bytes reaches the cap");
    assert!(
        matches!(&error, EgressError::ByteLimit { app_id, bytes: 1000, limit: 1000, .. } if app_id == "weather-app")
    );
    let message = error.to_string();
    assert!(message.contains("weather-app"), "{message}");
    assert!(message.contains("egress.max_bytes_per_app"), "{message}");

    let other = AppId::parse("other-app").unwrap();
    assert!(cap.usage(&other).check().is_ok(), "each app has its own count");
}

#[tokio::test]
async fn byte_cap_wakes_watchers() {
    let cap = ByteCap::new(1000, Duration::from_secs(3600));
    let usage = cap.usage(&app_id());
    let watch = usage.check().expect("under the cap");
    let waiting = tokio::spawn(watch.reached());

    usage.record(999);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "999 bytes is under the cap");

    usage.record(1);
    tokio::time::timeout(Duration::from_secs(2), waiting).await.expect("the watcher wakes").unwrap();
}

#[tokio::test]
async fn byte_cap_period_restarts() {
    let cap = ByteCap::new(1000, Duration::from_millis(200));
    let usage = cap.usage(&app_id());
    usage.record(1500);
    assert!(usage.check().is_err());

    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(usage.bytes(), 0, "the period ended");
    assert!(usage.check().is_ok(), "a new period starts from zero");
}
