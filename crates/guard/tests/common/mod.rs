//! A guard over a fresh SQLite store with a manual clock, configured from
//! the example platform file.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use portcullis_config::{AppId, GuardSettings};
use portcullis_guard::{Guard, GuardEvent, ManualClock};
use portcullis_store::{DecisionRecord, Store};

pub const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/weather-platform/platform.toml");

/// 2026-12-04T12:00:00Z in milliseconds since the Unix epoch.
pub const T0: i64 = 1_796_385_600_000;

pub const HOUR_MS: i64 = 3_600_000;

/// Loads the guard settings of the example file, with `edit` applied to its text.
pub fn settings_with(edit: impl FnOnce(String) -> String) -> GuardSettings {
    let text = edit(std::fs::read_to_string(EXAMPLE).unwrap());
    portcullis_config::parse(Path::new(EXAMPLE), &text).expect("edited example is valid").guard
}

/// Loads the guard settings of the example file as committed.
pub fn example_settings() -> GuardSettings {
    portcullis_config::load(Path::new(EXAMPLE)).unwrap().guard
}

/// A guard, its clock (at [`T0`]) and its store.
pub struct Harness {
    pub guard: Guard,
    pub clock: Arc<ManualClock>,
    pub store: Store,
    pub dir: tempfile::TempDir,
}

impl Harness {
    pub async fn new(settings: GuardSettings) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await.unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let guard = Guard::start(settings, store.clone(), clock.clone()).await.unwrap();
        Self { guard, clock, store, dir }
    }

    /// Replaces the guard with a new one over the same store and clock, as
    /// after a restart.
    pub async fn restart(&mut self, settings: GuardSettings) {
        self.guard = Guard::start(settings, self.store.clone(), self.clock.clone()).await.unwrap();
    }

    /// Sends `count` responses with `status` from `app`, one every `spacing_ms`
    /// starting now, and moves the clock along. Returns every decision made,
    /// with the 1-based number of the event that caused it.
    pub async fn responses(
        &mut self,
        app: &str,
        status: u16,
        count: usize,
        spacing_ms: i64,
    ) -> Vec<(usize, DecisionRecord)> {
        let mut decisions = Vec::new();
        for n in 1..=count {
            if n > 1 {
                self.clock.advance(Duration::from_millis(spacing_ms as u64));
            }
            let event = access(app, "weather", status, 100, self.now());
            for record in self.guard.handle(event).await.unwrap() {
                decisions.push((n, record));
            }
        }
        decisions
    }

    /// Sends one egress violation from `app` now.
    pub async fn egress_violation(&mut self, app: &str) -> Vec<DecisionRecord> {
        let event = GuardEvent::EgressViolation {
            app_id: AppId::parse(app).unwrap(),
            host: "exfil.example.net".into(),
            rule: "not in allow_hosts".into(),
            at_ms: self.now(),
        };
        self.guard.handle(event).await.unwrap()
    }

    pub fn now(&self) -> i64 {
        use portcullis_guard::Clock;
        self.clock.now_ms()
    }

    pub fn verdict(&self, app: &str) -> portcullis_guard::Verdict {
        self.guard.subscribe().borrow().verdict(app, self.now())
    }
}

pub fn access(app: &str, service: &str, status: u16, bytes: u64, at_ms: i64) -> GuardEvent {
    GuardEvent::Access { app_id: AppId::parse(app).unwrap(), service: service.into(), status, bytes, at_ms }
}
