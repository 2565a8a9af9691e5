//! Platform configuration for Portcullis: one TOML file, parsed strictly.
//!
//! [`load`] reads the file, rejects unknown keys and wrong types with the key
//! path, then validates ranges and references and returns a
//! [`PlatformConfig`]. Every failure is one [`ConfigError`] naming the file,
//! the key path, the bad value and what is accepted, because a typo in a
//! security policy must never pass silently.

mod model;
mod raw;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read the configuration: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// The file is not valid TOML.
    #[error("{file}{location}: invalid TOML: {message}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// Line and column, if known.
        location: Location,
        /// The parser's message.
        message: String,
    },

    /// A key has a value of the wrong type or is not a known key.
    #[error("{file}{location}: {key}: {message}")]
    Shape {
        /// The file.
        file: PathBuf,
        /// Line and column, if known.
        location: Location,
        /// Dotted key path, such as `guard.policies[0].window`.
        key: String,
        /// What was found and what is accepted.
        message: String,
    },

    /// A value is out of range, malformed, or refers to something undefined.
    #[error("{file}: {key}: {}: expected {expected}", describe_value(value))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Dotted key path, such as `services[1].routes[0].scope`.
        key: String,
        /// The value as written, quoted where it was a string.
        value: String,
        /// What is accepted.
        expected: String,
    },
}

/// Phrases a value for an error: `invalid value "x"`, or `missing value`
/// for the placeholder `(missing)`.
fn describe_value(value: &str) -> String {
    match value.strip_prefix('(').and_then(|v| v.strip_suffix(')')) {
        Some(note) => note.to_owned(),
        None => format!("invalid value {value}"),
    }
}

impl ConfigError {
    /// The key path the error is about, if it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Shape { key, .. } | Self::Invalid { key, .. } => Some(key),
            Self::Read { .. } | Self::Syntax { .. } => None,
        }
    }
}

/// A line and column in the configuration file, 1-based.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Location(Option<(usize, usize)>);

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((line, column)) => write!(f, ":{line}:{column}"),
            None => Ok(()),
        }
    }
}

impl Location {
    fn from_span(text: &str, span: Option<std::ops::Range<usize>>) -> Self {
        let Some(span) = span else {
            return Self(None);
        };
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        Self(Some((line, column)))
    }
}

/// Adds the text the parser's error points at to its message. For a
/// duplicate key, the message names the key or table header and the fix.
fn syntax_message(text: &str, message: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else { return message.to_owned() };
    let line_start = text[..span.start.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or_default().trim();
    if line.is_empty() {
        return message.to_owned();
    }
    let snippet: String = line.chars().take(80).collect();
    if message.starts_with("duplicate key") {
        return format!("{message} `{snippet}`: it is defined earlier in the file; merge the two into one");
    }
    format!("{message} in `{snippet}`")
}

/// Rewrites the deserializer's type mismatch between `i128` and `i64` as an
/// integer out of range; other messages pass unchanged.
fn shape_message(message: &str) -> String {
    let too_large = message
        .strip_prefix("invalid type: integer `")
        .and_then(|rest| rest.split_once("` as i128"))
        .map(|(number, _)| number);
    match too_large {
        Some(number) => format!("integer {number} is out of range: no setting accepts more than {}", i64::MAX),
        None => message.to_owned(),
    }
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<PlatformConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: path.to_owned(), source })?;
    parse(path, &text)
}

/// Validates configuration `text` as if it had been read from `path`.
///
/// `path` names the file in errors and anchors a relative `data_dir`.
pub fn parse(path: &Path, text: &str) -> Result<PlatformConfig, ConfigError> {
    let deserializer = toml::Deserializer::parse(text).map_err(|error| ConfigError::Syntax {
        file: path.to_owned(),
        location: Location::from_span(text, error.span()),
        message: syntax_message(text, error.message().trim(), error.span()),
    })?;

    let raw: raw::RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let key = error.path().to_string();
        let inner = error.into_inner();
        ConfigError::Shape {
            file: path.to_owned(),
            location: Location::from_span(text, inner.span()),
            key: if key == "." { "(top level)".into() } else { key },
            message: shape_message(inner.message().trim()),
        }
    })?;

    validate::validate(path, raw)
}
