//! The weather platform's example services and apps, which `portcullis up`
//! starts beside the platform:
//!
//! - `weather-service`: the weather service behind the gateway, and with
//!   `--plain` the outbound test host `feed.weather.test`;
//! - `records-service`: per-app records in memory, keyed by the
//!   `x-portcullis-app-id` header the gateway adds;
//! - `forecast-app`: a well-behaved app;
//! - `rogue-app`: an app that calls a service it has no grant for, floods the
//!   gateway and tries a forbidden outbound host.
//!
//! The apps read their configuration from the environment the runtime sets
//! ([`AppEnv`]) and print one JSON line per request outcome on standard
//! output ([`Outcome`]).

pub mod client;
pub mod server;
pub mod tls;

use std::time::{Duration, Instant};

pub use client::{AppEnv, HttpsClient, ProxyClient, Response};

/// One request's outcome, printed as a JSON line on standard output.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    /// The app id.
    pub app_id: &'a str,
    /// The step of the app's run, such as `weather` or `feed`.
    pub step: &'a str,
    /// The platform part called: `token`, `gateway` or `egress`.
    pub via: &'a str,
    /// Method and path, or the absolute URL for the egress proxy.
    pub target: String,
    /// The HTTP status, or `None` when no response arrived.
    pub status: Option<u16>,
    /// Whether the app expected this status.
    pub expected: bool,
    /// The response's `error` field, or the transport error.
    pub error: Option<String>,
}

impl Outcome<'_> {
    /// Prints the outcome as one JSON line on standard output.
    pub fn print(&self) {
        let line = serde_json::json!({
            "kind": "outcome",
            "app_id": self.app_id,
            "step": self.step,
            "via": self.via,
            "target": self.target,
            "status": self.status,
            "expected": self.expected,
            "error": self.error,
        });
        println!("{line}");
    }
}

/// Prints the outcome of one request and returns its status and `error`
/// code. `expected` lists the statuses the app expects.
pub fn report(
    app_id: &str,
    step: &str,
    via: &str,
    target: String,
    result: &Result<Response, String>,
    expected: &[u16],
) -> (Option<u16>, Option<String>) {
    let (status, error) = match result {
        Ok(response) => (Some(response.status), error_code(&response.body)),
        Err(error) => (None, Some(error.clone())),
    };
    let is_expected = status.is_some_and(|s| expected.contains(&s));
    Outcome { app_id, step, via, target, status, expected: is_expected, error: error.clone() }.print();
    (status, error)
}

/// Requests an access token for `scope` with the client credentials grant
/// and prints the outcome, expecting `expected` (200 for a granted scope).
/// Returns the token, or `None` when the token service refused.
pub async fn request_token(
    app_id: &str,
    client: &mut HttpsClient,
    token_path: &str,
    scope: &str,
    expected: u16,
) -> Option<String> {
    let target = format!("POST {token_path} scope={scope}");
    match client::fetch_token(client, token_path, scope).await {
        Ok(token) => {
            let result = Ok(Response { status: 200, body: bytes::Bytes::new() });
            report(app_id, "token", "token", target, &result, &[expected]);
            Some(token)
        }
        Err(refused) => {
            report(app_id, "token", "token", target, &refused, &[expected]);
            None
        }
    }
}

/// Returns the `error` field of a JSON response body, if there is one.
pub fn error_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("error").and_then(|e| e.as_str()).map(str::to_owned)
}

/// A deadline for a bounded loop: the loop ends at `count` iterations or
/// when `limit` has passed, whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    remaining: u64,
    deadline: Instant,
}

impl Bound {
    /// Creates a bound of `count` iterations within `limit`.
    pub fn new(count: u64, limit: Duration) -> Self {
        Self { remaining: count, deadline: Instant::now() + limit }
    }

    /// Takes one iteration; false when the count or the time is used up.
    pub fn take(&mut self) -> bool {
        if self.remaining == 0 || Instant::now() >= self.deadline {
            return false;
        }
        self.remaining -= 1;
        true
    }
}

/// Reads an integer environment variable, or `default` when it is unset.
///
/// # Panics
///
/// When the variable is set but is not a non-negative integer, naming it.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a non-negative integer")),
        Err(_) => default,
    }
}
