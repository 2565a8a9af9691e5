//! Access events: one per request, sent to the guard and to a JSON-lines
//! file. Both queues are bounded and never make a request wait; a full
//! queue drops the event, counts it and logs at most one warning every
//! [`OVERFLOW_LOG_INTERVAL`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use portcullis_config::AppId;
use portcullis_guard::{EventSender, GuardEvent};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::GatewayError;

/// Shortest time between two warnings about dropped events.
pub const OVERFLOW_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The outcome of one request, as written to the access log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessEvent {
    /// When the response ended, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The gateway's request id, also sent to the app and the upstream.
    pub request_id: String,
    /// The app, from the client certificate.
    pub app_id: String,
    /// The routed service; empty if no route was found.
    pub service: String,
    /// The matched route prefix; empty if none.
    pub route: String,
    /// Request method.
    pub method: String,
    /// Canonical path, or the received path (lossily decoded) if it broke
    /// the path rule.
    pub path: String,
    /// Response status sent to the app.
    pub status: u16,
    /// Request body bytes read from the app.
    pub bytes_in: u64,
    /// Response body bytes sent to the app.
    pub bytes_out: u64,
    /// From the request head to the end of the response body, in microseconds.
    pub latency_us: u64,
    /// The refusal's reason code (the `error` member of the body); `None`
    /// for a forwarded request.
    pub reason: Option<String>,
}

/// The destinations of access events.
#[derive(Debug, Clone, Default)]
pub struct EventSinks {
    guard: Option<EventSender>,
    file: Option<FileSink>,
}

impl EventSinks {
    /// Sinks to the guard queue `guard` and the file sink `file`, either
    /// optional.
    pub fn new(guard: Option<EventSender>, file: Option<FileSink>) -> Self {
        Self { guard, file }
    }

    /// Delivers `event` to every sink without waiting.
    pub fn emit(&self, event: AccessEvent) {
        if let Some(guard) = &self.guard {
            match AppId::parse(&event.app_id) {
                Ok(app_id) => {
                    guard.send(GuardEvent::Access {
                        app_id,
                        service: event.service.clone(),
                        status: event.status,
                        bytes: event.bytes_in + event.bytes_out,
                        at_ms: event.at_ms,
                    });
                }
                Err(reason) => tracing::error!(app_id = %event.app_id, %reason, "access event not sent to the guard"),
            }
        }
        if let Some(file) = &self.file {
            file.send(&event);
        }
    }

    /// Events dropped by the file sink because its queue was full.
    pub fn dropped_file_events(&self) -> u64 {
        self.file.as_ref().map_or(0, FileSink::dropped)
    }
}

/// A JSON-lines access log written by a background task from a bounded
/// queue.
#[derive(Debug, Clone)]
pub struct FileSink {
    queue: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
    last_warning_ms: Arc<AtomicI64>,
}

/// The writer thread of a [`FileSink`]. Await [`FileWriter::finish`] after
/// the last sender is dropped to flush the file.
#[derive(Debug)]
pub struct FileWriter {
    done: tokio::sync::oneshot::Receiver<()>,
    path: PathBuf,
}

impl FileWriter {
    /// Waits until every queued event is written and flushed.
    pub async fn finish(self) {
        if self.done.await.is_err() {
            tracing::error!(path = %self.path.display(), "access log writer thread failed");
        }
    }
}

impl FileSink {
    /// Opens `path` for appending and starts the writer thread with a queue
    /// of `capacity` events.
    ///
    /// The writer is a plain thread with blocking writes, not a tokio task
    /// with `tokio::fs`, because `tokio::fs` hands every write to the
    /// blocking pool and back, which costs two thread wake-ups per batch
    /// on the request path's cores.
    pub async fn open(path: &Path, capacity: usize) -> Result<(Self, FileWriter), GatewayError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| GatewayError::AccessLog { path: path.to_owned(), source })?;
        let (queue, receiver) = mpsc::channel::<String>(capacity.max(1));
        let (done, finished) = tokio::sync::oneshot::channel();
        let log_path = path.to_owned();
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || {
                write_lines(receiver, file, &log_path);
                let _ = done.send(());
            })
            .map_err(|source| GatewayError::AccessLog { path: path.to_owned(), source })?;
        let sink = Self { queue, dropped: Arc::new(AtomicU64::new(0)), last_warning_ms: Arc::new(AtomicI64::new(0)) };
        Ok((sink, FileWriter { done: finished, path: path.to_owned() }))
    }

    fn send(&self, event: &AccessEvent) {
        let mut line = match serde_json::to_string(event) {
            Ok(line) => line,
            Err(error) => {
                tracing::error!(%error, "cannot encode an access event");
                return;
            }
        };
        line.push('\n');
        if self.queue.try_send(line).is_ok() {
            return;
        }

        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ms();
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if now - last >= OVERFLOW_LOG_INTERVAL.as_millis() as i64
            && self.last_warning_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(dropped_total = dropped, "access log queue full; events dropped");
        }
    }

    /// Events dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Writes every line from `receiver` to `file` until all senders are
/// dropped, flushing after each batch of lines that were already queued.
fn write_lines(mut receiver: mpsc::Receiver<String>, file: std::fs::File, path: &Path) {
    let mut writer = std::io::BufWriter::with_capacity(64 * 1024, file);
    while let Some(line) = receiver.blocking_recv() {
        let mut result = writer.write_all(line.as_bytes());
        while let Ok(line) = receiver.try_recv() {
            if result.is_ok() {
                result = writer.write_all(line.as_bytes());
            }
        }
        if let Err(error) = result.and_then(|()| writer.flush()) {
            tracing::error!(path = %path.display(), %error, "cannot write the access log");
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
