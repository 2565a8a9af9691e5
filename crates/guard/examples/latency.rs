//! Measures the time from the event that crosses a ban threshold to the
//! published snapshot that contains the ban, on a SQLite store in a
//! temporary directory (the embedded default, `synchronous = FULL`).
//!
//! Run with `scripts/bench-guard`, or
//! `cargo run --release -p portcullis-guard --example latency -- [TRIALS]`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_config::AppId;
use portcullis_guard::{Guard, GuardEvent, SystemClock, Verdict};
use portcullis_store::{Store, now_ms};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/weather-platform/platform.toml");

#[tokio::main]
async fn main() {
    let trials: usize = std::env::args().nth(1).map_or(200, |arg| arg.parse().expect("TRIALS is a whole number"));
    let settings = portcullis_config::load(Path::new(EXAMPLE)).expect("example configuration").guard;
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open_in(dir.path()).await.expect("store");
    let running = Guard::start(settings, store, Arc::new(SystemClock)).await.expect("guard").spawn(4096);

    let mut latencies = Vec::with_capacity(trials);
    for trial in 0..trials {
        let app = AppId::parse(&format!("bench-{trial}")).unwrap();
        let event = |app_id: AppId| GuardEvent::Access {
            app_id,
            service: "weather".into(),
            status: 401,
            bytes: 100,
            at_ms: now_ms(),
        };
        for _ in 0..19 {
            running.events.send(event(app.clone()));
        }
        let mut decisions = running.decisions.clone();
        decisions.mark_unchanged();

        let sent = Instant::now();
        running.events.send(event(app.clone()));
        let banned = decisions.wait_for(|set| matches!(set.verdict(app.as_str(), now_ms()), Verdict::Ban { .. }));
        tokio::time::timeout(Duration::from_secs(10), banned).await.expect("ban within 10 s").expect("guard running");
        latencies.push(sent.elapsed());
    }
    running.stop().await;

    latencies.sort();
    let percentile = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    println!(
        "trials {trials}: min {:?}, median {:?}, p90 {:?}, p99 {:?}, max {:?}",
        latencies[0],
        percentile(50),
        percentile(90),
        percentile(99),
        latencies[latencies.len() - 1]
    );
}
