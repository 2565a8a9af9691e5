//! Policy evaluation: what an event adds to each policy's window, when a
//! policy fires, and the reason and evidence of its decision.

use std::time::Duration;

use portcullis_config::{Policy, Signal};
use serde_json::{Value, json};

use crate::event::GuardEvent;
use crate::stats::{PolicyState, PolicyWindow, class_name, classify, slot};

/// A policy whose count reached its threshold for an app.
#[derive(Debug, Clone)]
pub(crate) struct Crossing {
    /// Index of the policy in the configuration.
    pub policy: usize,
    /// The evidence to store with the decision.
    pub evidence: Value,
}

/// Adds `event` to the windows of `states` (one per policy, same order) and
/// returns the policies that crossed their threshold with it.
///
/// A policy fires when its count reaches the threshold. Its window is then
/// emptied, so the events that made one decision never count towards the
/// next: a flood makes one decision, not one per event past the threshold,
/// and an app that offends again after its ban expired is judged on the new
/// events alone. (The engine also makes no new decision for a policy while
/// that policy's previous decision for the app still runs.)
pub(crate) fn evaluate(
    policies: &[Policy],
    states: &mut [PolicyState],
    event: &GuardEvent,
    at_ms: i64,
) -> Vec<Crossing> {
    let mut crossings = Vec::new();
    for (index, (policy, state)) in policies.iter().zip(states.iter_mut()).enumerate() {
        let (count, detail) = match (&policy.signal, &mut state.window) {
            (Signal::Responses(classes), PolicyWindow::Classes(window)) => {
                let class = match event {
                    GuardEvent::Access { status, .. } => classify(*status).filter(|c| classes.contains(c)),
                    GuardEvent::EgressViolation { .. } => None,
                };
                if let Some(class) = class {
                    let mut tally = [0; 8];
                    tally[slot(class)] = 1;
                    window.add(at_ms, &tally);
                }
                let tally = window.total(at_ms);
                let by_class: serde_json::Map<String, Value> =
                    classes.iter().map(|class| (class_name(*class).to_owned(), json!(tally[slot(*class)]))).collect();
                (classes.iter().map(|class| tally[slot(*class)]).sum(), Some(("classes", Value::Object(by_class))))
            }
            (signal, PolicyWindow::Total(window)) => {
                let amount = match (signal, event) {
                    (Signal::Requests, GuardEvent::Access { .. }) => 1,
                    (Signal::Bytes, GuardEvent::Access { bytes, .. }) => *bytes,
                    (Signal::EgressViolations, GuardEvent::EgressViolation { .. }) => 1,
                    _ => 0,
                };
                if amount > 0 {
                    window.add(at_ms, &amount);
                }
                (*window.total(at_ms), None)
            }
            // A state is always built from its own policy's signal.
            _ => continue,
        };

        if count < policy.threshold {
            state.armed = true;
            continue;
        }
        if !state.armed {
            continue;
        }
        match &mut state.window {
            PolicyWindow::Classes(window) => window.clear(),
            PolicyWindow::Total(window) => window.clear(),
        }

        let mut evidence = json!({
            "signal": signal_name(&policy.signal),
            "count": count,
            "threshold": policy.threshold,
            "window_ms": policy.window.as_millis() as u64,
            "at_ms": at_ms,
            "last_event": describe(event),
        });
        if let Some((key, value)) = detail {
            evidence[key] = value;
        }
        crossings.push(Crossing { policy: index, evidence });
    }
    crossings
}

/// Re-arms a policy whose decision could not be stored, so the next event
/// past the threshold tries again.
pub(crate) fn rearm(states: &mut [PolicyState], policy: usize) {
    if let Some(state) = states.get_mut(policy) {
        state.armed = true;
    }
}

/// Returns the configuration spelling of a signal.
fn signal_name(signal: &Signal) -> &'static str {
    match signal {
        Signal::Responses(_) => "responses",
        Signal::Requests => "requests",
        Signal::Bytes => "bytes",
        Signal::EgressViolations => "egress_violations",
    }
}

/// Describes the event that completed the count, for the evidence.
fn describe(event: &GuardEvent) -> Value {
    match event {
        GuardEvent::Access { service, status, bytes, .. } => {
            json!({ "kind": "access", "service": service, "status": status, "bytes": bytes })
        }
        GuardEvent::EgressViolation { host, rule, .. } => {
            json!({ "kind": "egress_violation", "host": host, "rule": rule })
        }
    }
}

/// Returns the reason text of a policy's decisions, such as
/// `401 or 403 at least 20 times in 60s`.
pub fn reason(policy: &Policy) -> String {
    let window = display_window(policy.window);
    let threshold = policy.threshold;
    match &policy.signal {
        Signal::Responses(classes) => {
            let names: Vec<&str> = classes.iter().map(|class| class_name(*class)).collect();
            let classes = match names.split_last() {
                Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
                _ => names.concat(),
            };
            let times = if threshold == 1 { "time" } else { "times" };
            format!("{classes} at least {threshold} {times} in {window}")
        }
        Signal::Requests => format!("at least {threshold} requests in {window}"),
        Signal::Bytes => format!("at least {threshold} bytes in {window}"),
        Signal::EgressViolations => {
            let violations = if threshold == 1 { "violation" } else { "violations" };
            format!("at least {threshold} egress {violations} in {window}")
        }
    }
}

/// Formats a window in days or hours when whole, else in seconds or
/// milliseconds, so a 60-second window reads `60s`.
fn display_window(window: Duration) -> String {
    let ms = window.as_millis();
    for (size, unit) in [(86_400_000, "d"), (3_600_000, "h"), (1000, "s")] {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use portcullis_config::{Action, Mode, OutcomeClass};

    use super::*;

    fn policy(signal: Signal, threshold: u64, window: Duration) -> Policy {
        Policy {
            name: "p".into(),
            signal,
            threshold,
            window,
            action: Action::Ban,
            duration: Duration::from_secs(3600),
            mode: Mode::Enforce,
        }
    }

    #[test]
    fn reason_texts() {
        let cases = [
            (
                policy(
                    Signal::Responses(vec![OutcomeClass::Unauthorized, OutcomeClass::Forbidden]),
                    20,
                    Duration::from_secs(60),
                ),
                "401 or 403 at least 20 times in 60s",
            ),
            (
                policy(
                    Signal::Responses(vec![OutcomeClass::BadRequest, OutcomeClass::NotFound, OutcomeClass::TooLarge]),
                    1,
                    Duration::from_millis(1500),
                ),
                "400, 404 or too_large at least 1 time in 1500ms",
            ),
            (policy(Signal::Requests, 1000, Duration::from_secs(5)), "at least 1000 requests in 5s"),
            (policy(Signal::Bytes, 1_000_000, Duration::from_secs(86_400)), "at least 1000000 bytes in 1d"),
            (policy(Signal::EgressViolations, 1, Duration::from_secs(3600)), "at least 1 egress violation in 1h"),
        ];
        for (policy, expected) in cases {
            assert_eq!(reason(&policy), expected);
        }
    }
}
