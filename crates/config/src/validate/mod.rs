//! Turns the raw file into a [`PlatformConfig`], checking every range and
//! reference. Each check returns the first problem as one [`ConfigError`].

mod egress;
mod guard;
mod platform;
mod public_suffix;
mod services;

use std::path::Path;
use std::time::Duration;

use crate::ConfigError;
use crate::model::*;
use crate::raw::*;
use egress::*;
use guard::*;
use platform::*;
use services::*;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// HTTP methods a route may name (RFC 9110 section 9 plus PATCH).
const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"];

type Result<T> = std::result::Result<T, ConfigError>;

struct Checker<'a> {
    file: &'a Path,
}

impl Checker<'_> {
    fn invalid(&self, key: impl Into<String>, value: impl Into<String>, expected: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            key: key.into(),
            value: value.into(),
            expected: expected.into(),
        }
    }

    fn duration(
        &self,
        key: &str,
        value: Option<&str>,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Result<Duration> {
        let Some(text) = value else {
            return Ok(default);
        };
        // A key whose maximum is below a second would reject "30s" itself,
        // so its examples use smaller units.
        let examples = if max < Duration::from_secs(1) { "\"200us\" or \"1ms\"" } else { "\"30s\", \"10m\" or \"1h\"" };
        let expected = || {
            format!(
                "a duration from {} to {}, written with a unit such as {examples}",
                display_duration(min),
                display_duration(max)
            )
        };
        let parsed = humantime::parse_duration(text).map_err(|_| self.invalid(key, quote(text), expected()))?;
        if parsed < min || parsed > max {
            return Err(self.invalid(key, quote(text), expected()));
        }
        Ok(parsed)
    }

    fn integer(&self, key: &str, value: Option<i64>, default: i64, min: i64, max: i64, unit: &str) -> Result<u64> {
        let value = value.unwrap_or(default);
        if value < min || value > max {
            return Err(self.invalid(key, value.to_string(), format!("an integer from {min} to {max} ({unit})")));
        }
        Ok(value as u64)
    }

    fn float(&self, key: &str, value: Option<f64>, default: f64, min: f64, max: f64, unit: &str) -> Result<f64> {
        let value = value.unwrap_or(default);
        if !(value.is_finite() && value >= min && value <= max) {
            return Err(self.invalid(key, value.to_string(), format!("a number from {min} to {max} ({unit})")));
        }
        Ok(value)
    }

    fn one_of<T: Copy>(&self, key: &str, value: Option<&str>, default: T, choices: &[(&str, T)]) -> Result<T> {
        let Some(text) = value else {
            return Ok(default);
        };
        choices.iter().find(|(name, _)| *name == text).map(|(_, choice)| *choice).ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(name, _)| quote(name)).collect();
            self.invalid(key, quote(text), format!("one of {}", names.join(", ")))
        })
    }
}

/// Formats a duration in the largest whole unit, as the file spells it.
fn display_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    let units = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1000, "s")];
    for (size, unit) in units {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn quote(text: &str) -> String {
    format!("{text:?}")
}

pub(crate) fn validate(file: &Path, raw: RawConfig) -> Result<PlatformConfig> {
    let check = Checker { file };

    let trust_domain = trust_domain(&check, &raw.trust_domain)?;
    let data_dir = data_dir(&check, file, raw.data_dir.as_deref())?;
    let store_url = store_url(&check, raw.store.url)?;
    let listeners = listeners(&check, &raw.listeners)?;
    let identity = identity(&check, &raw.identity)?;
    let token = token(&check, &raw.token, &listeners)?;
    let services = services(&check, &raw.services)?;
    let egress = egress(&check, &raw.egress)?;
    let spaces = spaces(&check, &raw.spaces, &services, &egress)?;
    let gateway = gateway(&check, &raw.gateway)?;
    let guard = guard(&check, &raw.guard)?;
    let runtime = runtime(&check, &raw.runtime)?;

    Ok(PlatformConfig {
        source: file.to_owned(),
        trust_domain,
        data_dir,
        store_url,
        listeners,
        identity,
        token,
        services,
        spaces,
        gateway,
        guard,
        egress,
        runtime,
    })
}
