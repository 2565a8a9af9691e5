//! Sending egress refusals to the guard of another process.
//!
//! When the egress proxy runs alone (`portcullis serve --only egress`), its
//! refusals still belong to the one guard that keeps every app's
//! statistics: the gateway part's. The reporter posts them in batches to
//! that part's operator API (`POST /v1/guard/egress-violations`) over
//! mutual TLS with the `platform/egress` certificate. The server name is
//! `operator.<trust domain>`, which every operator certificate carries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use portcullis_guard::GuardEvent;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The operator API route that takes egress refusals.
pub const EGRESS_VIOLATIONS_PATH: &str = "/v1/guard/egress-violations";

/// Maximum number of refusals in one request; the route rejects larger batches.
pub const MAX_BATCH: usize = 1000;

/// Attempts per batch before it is dropped (and counted).
const ATTEMPTS: u32 = 5;

/// Time one attempt may take, connection and TLS handshake included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// One refusal on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Violation {
    /// The app that was refused.
    pub app_id: String,
    /// The destination as requested.
    pub host: String,
    /// The rule that refused it.
    pub rule: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// The request body of [`EGRESS_VIOLATIONS_PATH`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Violations {
    /// At most [`MAX_BATCH`] refusals.
    pub violations: Vec<Violation>,
}

/// The sending end: a bounded queue. Sending only tries to queue, so it
/// never waits.
#[derive(Debug, Clone)]
pub struct Reporter {
    queue: mpsc::Sender<Violation>,
    dropped: Arc<AtomicU64>,
}

impl Reporter {
    /// Starts the task that posts to the operator API at `target`, with
    /// `tls` (a client configuration holding the `platform/egress`
    /// certificate) and `server_name`.
    pub fn spawn(
        target: SocketAddr,
        server_name: rustls::pki_types::ServerName<'static>,
        tls: Arc<rustls::ClientConfig>,
        capacity: usize,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(target, server_name, tls, receiver, Arc::clone(&dropped)));
        (Self { queue, dropped }, task)
    }

    /// Queues one refusal; a full queue drops it and counts it.
    pub fn send(&self, event: &GuardEvent) {
        let GuardEvent::EgressViolation { app_id, host, rule, at_ms } = event else { return };
        let violation = Violation { app_id: app_id.to_string(), host: host.clone(), rule: rule.clone(), at_ms: *at_ms };
        if self.queue.try_send(violation).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refusals dropped so far: queue full, or every attempt failed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn run(
    target: SocketAddr,
    server_name: rustls::pki_types::ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    mut receiver: mpsc::Receiver<Violation>,
    dropped: Arc<AtomicU64>,
) {
    let connector = tokio_rustls::TlsConnector::from(tls);
    let mut batch = Vec::new();
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let count = batch.len();
        let body = match serde_json::to_vec(&Violations { violations: std::mem::take(&mut batch) }) {
            Ok(body) => Bytes::from(body),
            Err(error) => {
                tracing::error!(%error, "cannot encode egress refusals for the guard");
                continue;
            }
        };
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            let outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, post(&connector, target, &server_name, body.clone()))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())));
            match outcome {
                Ok(()) => break,
                Err(error) if attempt == ATTEMPTS => {
                    dropped.fetch_add(count as u64, Ordering::Relaxed);
                    tracing::error!(%target, %error, count, "egress refusals dropped: the guard is unreachable");
                }
                Err(error) => {
                    tracing::warn!(%target, %error, attempt, "cannot report egress refusals to the guard; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}

async fn post(
    connector: &tokio_rustls::TlsConnector,
    target: SocketAddr,
    server_name: &rustls::pki_types::ServerName<'static>,
    body: Bytes,
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(target).await.map_err(|e| format!("connect: {e}"))?;
    let stream = connector.connect(server_name.clone(), tcp).await.map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(connection);
    let request = hyper::Request::post(EGRESS_VIOLATIONS_PATH)
        .header(hyper::header::HOST, server_name.to_str().as_ref())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Err(format!("status {status}: {}", String::from_utf8_lossy(&text)))
}
