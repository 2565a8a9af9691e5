//! Per-app and per-service counters, and the state each policy keeps per app.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use portcullis_config::{OutcomeClass, Policy, Signal};
use serde::Serialize;

use crate::window::SlidingWindow;

/// Length of the statistics window of [`AppStats`].
pub const STATS_WINDOW: Duration = Duration::from_secs(60);

/// Maximum distinct service names counted per app. Events for further names
/// are counted under [`OTHER_SERVICE`], so a producer that sends arbitrary
/// names cannot grow an app's state without bound.
pub const MAX_SERVICES_PER_APP: usize = 64;

/// The service name that collects events past [`MAX_SERVICES_PER_APP`].
pub const OTHER_SERVICE: &str = "(other)";

/// Every outcome class, in the order of their slots in a tally.
const CLASSES: [OutcomeClass; 8] = [
    OutcomeClass::Success,
    OutcomeClass::BadRequest,
    OutcomeClass::Unauthorized,
    OutcomeClass::Forbidden,
    OutcomeClass::NotFound,
    OutcomeClass::TooLarge,
    OutcomeClass::TooManyRequests,
    OutcomeClass::ServerError,
];

/// Returns the outcome class of an HTTP status, or `None` for statuses no
/// class covers (1xx, 3xx and the 4xx codes without a class of their own).
pub fn classify(status: u16) -> Option<OutcomeClass> {
    Some(match status {
        200..=299 => OutcomeClass::Success,
        400 => OutcomeClass::BadRequest,
        401 => OutcomeClass::Unauthorized,
        403 => OutcomeClass::Forbidden,
        404 => OutcomeClass::NotFound,
        413 | 431 => OutcomeClass::TooLarge,
        429 => OutcomeClass::TooManyRequests,
        500..=599 => OutcomeClass::ServerError,
        _ => return None,
    })
}

/// Returns the slot of `class` in a per-class tally.
pub(crate) fn slot(class: OutcomeClass) -> usize {
    CLASSES.iter().position(|c| *c == class).unwrap_or_default()
}

/// Returns the configuration spelling of `class`, such as `401` or `too_large`.
pub(crate) fn class_name(class: OutcomeClass) -> &'static str {
    OutcomeClass::NAMES[slot(class)]
}

/// Counts of one service in one bucket: the per-class outcomes, then
/// unclassified statuses, requests and bytes.
type ServiceTally = [u64; 11];
const UNCLASSIFIED: usize = 8;
const REQUESTS: usize = 9;
const BYTES: usize = 10;

/// The counters of one app over the last [`STATS_WINDOW`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppStats {
    /// The app.
    pub app_id: String,
    /// Length of the window the counts cover, in seconds.
    pub window_seconds: u64,
    /// Counts per service, by service name.
    pub services: BTreeMap<String, ServiceStats>,
    /// Egress connections refused in the window.
    pub egress_violations: u64,
}

/// The counters of one app on one service over the last [`STATS_WINDOW`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceStats {
    /// Requests answered.
    pub requests: u64,
    /// Requests per second, averaged over the whole window.
    ///
    /// NOTE: for an app seen for less than the window, this is lower than
    /// its current rate.
    pub requests_per_second: f64,
    /// Request and response bytes.
    pub bytes: u64,
    /// Responses per outcome class, by configuration spelling (`401`,
    /// `too_large`); classes with no response are left out.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Responses whose status no outcome class covers.
    pub unclassified: u64,
}

/// The window one policy counts in for one app.
#[derive(Debug, Clone)]
pub(crate) enum PolicyWindow {
    /// Responses, per class slot.
    Classes(SlidingWindow<[u64; 8]>),
    /// Requests, bytes or egress violations.
    Total(SlidingWindow<u64>),
}

/// One policy's state for one app.
#[derive(Debug, Clone)]
pub(crate) struct PolicyState {
    pub window: PolicyWindow,
    /// False from the moment the count reaches the threshold until it falls
    /// below it again, so a policy fires once per crossing.
    pub armed: bool,
}

impl PolicyState {
    fn new(policy: &Policy) -> Self {
        let window = match policy.signal {
            Signal::Responses(_) => PolicyWindow::Classes(SlidingWindow::new(policy.window)),
            _ => PolicyWindow::Total(SlidingWindow::new(policy.window)),
        };
        Self { window, armed: true }
    }
}

/// Everything the guard keeps about one app.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    /// Clock time of the app's latest event, in milliseconds since the Unix epoch.
    pub last_event_ms: i64,
    services: HashMap<String, SlidingWindow<ServiceTally>>,
    egress: SlidingWindow<u64>,
    /// One entry per configured policy, in configuration order; empty for
    /// exempt apps.
    pub policies: Vec<PolicyState>,
}

impl AppState {
    pub fn new(policies: &[Policy], now_ms: i64) -> Self {
        Self {
            last_event_ms: now_ms,
            services: HashMap::new(),
            egress: SlidingWindow::new(STATS_WINDOW),
            policies: policies.iter().map(PolicyState::new).collect(),
        }
    }

    /// Counts one response in the statistics.
    pub fn record_access(&mut self, service: &str, status: u16, bytes: u64, at_ms: i64) {
        let mut tally = ServiceTally::default();
        match classify(status) {
            Some(class) => tally[slot(class)] = 1,
            None => tally[UNCLASSIFIED] = 1,
        }
        tally[REQUESTS] = 1;
        tally[BYTES] = bytes;

        let name = if self.services.contains_key(service) || self.services.len() < MAX_SERVICES_PER_APP {
            service
        } else {
            OTHER_SERVICE
        };
        self.services.entry(name.to_owned()).or_insert_with(|| SlidingWindow::new(STATS_WINDOW)).add(at_ms, &tally);
    }

    /// Counts one refused egress connection in the statistics.
    pub fn record_egress_violation(&mut self, at_ms: i64) {
        self.egress.add(at_ms, &1);
    }

    /// Returns the statistics at `now_ms`.
    pub fn stats(&mut self, app_id: &str, now_ms: i64) -> AppStats {
        let seconds = STATS_WINDOW.as_secs();
        self.services.retain(|_, window| !window.is_empty(now_ms));

        let mut services = BTreeMap::new();
        for (name, window) in &mut self.services {
            let tally = window.total(now_ms);
            let outcomes = CLASSES
                .iter()
                .enumerate()
                .filter(|(index, _)| tally[*index] > 0)
                .map(|(index, class)| (class_name(*class), tally[index]))
                .collect();
            let stats = ServiceStats {
                requests: tally[REQUESTS],
                requests_per_second: tally[REQUESTS] as f64 / seconds as f64,
                bytes: tally[BYTES],
                outcomes,
                unclassified: tally[UNCLASSIFIED],
            };
            services.insert(name.clone(), stats);
        }
        AppStats {
            app_id: app_id.to_owned(),
            window_seconds: seconds,
            services,
            egress_violations: *self.egress.total(now_ms),
        }
    }
}
