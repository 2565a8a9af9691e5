//! Guard policies.

use std::collections::BTreeSet;
use std::time::Duration;

use super::*;
use crate::model::*;
use crate::raw::*;

pub(super) fn guard(check: &Checker, raw: &RawGuard) -> Result<GuardSettings> {
    let mut exempt_apps = Vec::new();
    for (index, app) in raw.exempt_apps.iter().enumerate() {
        let id = AppId::parse(app).map_err(|rule| {
            check.invalid(format!("guard.exempt_apps[{index}]"), quote(app), format!("an app id: {rule}"))
        })?;
        exempt_apps.push(id);
    }
    let max_ban = check.duration("guard.max_ban", raw.max_ban.as_deref(), DAY * 7, MINUTE, DAY * 365)?;

    let mut policies: Vec<Policy> = Vec::new();
    for (index, policy) in raw.policies.iter().enumerate() {
        let policy = self::policy(check, &format!("guard.policies[{index}]"), policy)?;
        if policies.iter().any(|p| p.name == policy.name) {
            return Err(check.invalid(
                format!("guard.policies[{index}].name"),
                quote(&policy.name),
                "a name not used by another policy",
            ));
        }
        if policy.duration > max_ban {
            return Err(check.invalid(
                format!("guard.policies[{index}].duration"),
                quote(&display_duration(policy.duration)),
                format!("at most guard.max_ban ({})", display_duration(max_ban)),
            ));
        }
        policies.push(policy);
    }
    Ok(GuardSettings { exempt_apps, max_ban, policies })
}

pub(super) fn policy(check: &Checker, key: &str, raw: &RawPolicy) -> Result<Policy> {
    check_dns_label(&raw.name)
        .map_err(|rule| check.invalid(format!("{key}.name"), quote(&raw.name), format!("a lowercase name: {rule}")))?;

    let signal = match raw.signal.as_str() {
        "responses" => {
            let Some(names) = raw.classes.as_ref().filter(|c| !c.is_empty()) else {
                return Err(check.invalid(
                    format!("{key}.classes"),
                    "(missing value)",
                    format!("a list of outcome classes for signal \"responses\": {}", OutcomeClass::NAMES.join(", ")),
                ));
            };
            let mut classes = BTreeSet::new();
            for (index, name) in names.iter().enumerate() {
                let class = OutcomeClass::parse(name).ok_or_else(|| {
                    check.invalid(
                        format!("{key}.classes[{index}]"),
                        quote(name),
                        format!("one of {}", OutcomeClass::NAMES.join(", ")),
                    )
                })?;
                classes.insert(class);
            }
            Signal::Responses(classes.into_iter().collect())
        }
        "requests" | "bytes" | "egress_violations" => {
            if raw.classes.is_some() {
                return Err(check.invalid(
                    format!("{key}.classes"),
                    "(key present)",
                    "no classes unless signal is \"responses\"",
                ));
            }
            match raw.signal.as_str() {
                "requests" => Signal::Requests,
                "bytes" => Signal::Bytes,
                _ => Signal::EgressViolations,
            }
        }
        other => {
            return Err(check.invalid(
                format!("{key}.signal"),
                quote(other),
                "one of \"responses\", \"requests\", \"bytes\", \"egress_violations\"",
            ));
        }
    };

    let threshold =
        check.integer(&format!("{key}.threshold"), Some(raw.threshold), 0, 1, 1_000_000_000, "events in the window")?;
    let window = check.duration(&format!("{key}.window"), Some(&raw.window), MINUTE, Duration::from_secs(1), DAY)?;
    let duration =
        check.duration(&format!("{key}.duration"), Some(&raw.duration), HOUR, Duration::from_secs(1), DAY * 365)?;

    let action = match raw.action.as_str() {
        "ban" => {
            if raw.throttle_per_second.is_some() {
                return Err(check.invalid(
                    format!("{key}.throttle_per_second"),
                    "(key present)",
                    "no throttle_per_second unless action is \"throttle\"",
                ));
            }
            Action::Ban
        }
        "throttle" => {
            let Some(rate) = raw.throttle_per_second else {
                return Err(check.invalid(
                    format!("{key}.throttle_per_second"),
                    "(missing value)",
                    "requests per second allowed while throttled, such as 1.0",
                ));
            };
            let per_second = check.float(
                &format!("{key}.throttle_per_second"),
                Some(rate),
                0.0,
                0.001,
                1_000_000.0,
                "requests per second",
            )?;
            Action::Throttle { per_second }
        }
        other => return Err(check.invalid(format!("{key}.action"), quote(other), "\"ban\" or \"throttle\"")),
    };

    let mode = check.one_of(
        &format!("{key}.mode"),
        raw.mode.as_deref(),
        Mode::Enforce,
        &[("enforce", Mode::Enforce), ("report", Mode::Report)],
    )?;

    Ok(Policy { name: raw.name.clone(), signal, threshold, window, action, duration, mode })
}
