//! Log output: human-readable lines on a terminal, JSON lines for machines.
//!
//! The filter comes from `PORTCULLIS_LOG` (tracing's env-filter syntax, for
//! example `info,portcullis_store=debug`), default `info` (`warn` for
//! `portcullis up` on a terminal, whose progress lines would drown).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text for people, coloured when standard error is a terminal.
    Human,
    /// One JSON object per line, with span fields such as app_id and request_id.
    Json,
}

/// Installs the global subscriber writing to standard error, with
/// `default_filter` unless `PORTCULLIS_LOG` is set.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).with_target(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
    }
}
