//! Access events: one per request, sent to the guard and to a JSON-lines
//! file. Both queues are bounded and never make a request wait; a full
//! queue drops the event, counts it and logs at most one warning every
//! [`OVERFLOW_LOG_INTERVAL`]. A thread per destination takes the queued
//! events every [`FLUSH_INTERVAL`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_config::AppId;
use portcullis_guard::{EventSender, GuardEvent};
use serde::Serialize;

use crate::error::GatewayError;

/// Shortest time between two warnings about dropped events.
pub const OVERFLOW_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The outcome of one request, as written to the access log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
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

/// How often the background threads take the queued events. Requests only
/// append to a queue under a short lock and never wake a thread, which at
/// tens of thousands of requests per second would cost a context switch
/// each. The guard therefore receives an event at most this much later.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// The destinations of access events.
#[derive(Debug, Clone, Default)]
pub struct EventSinks {
    guard: Option<GuardSink>,
    file: Option<FileSink>,
}

impl EventSinks {
    /// Sinks for the guard's queue and the access log file; either may be absent.
    pub fn new(guard: Option<EventSender>, file: Option<FileSink>) -> Self {
        Self { guard: guard.map(GuardSink::start), file }
    }

    /// Queues the event for the guard (as a [`GuardEvent::Access`]) and
    /// for the file. It only takes a short lock, so it never waits on I/O.
    ///
    /// A refusal with reason `app_not_admitted` goes to the file only. The
    /// app's state already keeps it out. An app registered moments ago gets
    /// that refusal until the gateway's directory lists it, which must not
    /// count toward a ban.
    pub fn emit(&self, event: AccessEvent) {
        let for_guard = event.reason.as_deref() != Some(NOT_ADMITTED);
        if let Some(guard) = self.guard.as_ref().filter(|_| for_guard) {
            match AppId::parse(&event.app_id) {
                Ok(app_id) => guard.queue.push(GuardEvent::Access {
                    app_id,
                    service: event.service.clone(),
                    status: event.status,
                    bytes: event.bytes_in + event.bytes_out,
                    at_ms: event.at_ms,
                }),
                Err(reason) => tracing::error!(app_id = %event.app_id, %reason, "access event not sent to the guard"),
            }
        }
        if let Some(file) = &self.file {
            file.queue.push(event);
        }
    }

    /// Events dropped so far because a queue was full: the file's queue,
    /// and the queue in front of the guard's.
    pub fn dropped_file_events(&self) -> u64 {
        self.file.as_ref().map_or(0, FileSink::dropped) + self.guard.as_ref().map_or(0, |g| g.queue.dropped())
    }
}

/// The reason of a refusal of an app that is not admitted to any service.
pub(crate) const NOT_ADMITTED: &str = "app_not_admitted";

/// Forwards access events to the guard's queue every [`FLUSH_INTERVAL`].
#[derive(Debug, Clone)]
struct GuardSink {
    queue: BatchSender<GuardEvent>,
}

impl GuardSink {
    fn start(guard: EventSender) -> Self {
        let capacity = portcullis_guard::DEFAULT_QUEUE_CAPACITY;
        let (queue, _done) = spawn_batch_thread("access-to-guard", "guard", capacity, move |events| {
            for event in events {
                // The guard's queue counts what it drops itself.
                guard.send(event);
            }
        });
        Self { queue }
    }
}

/// The access log: a bounded queue drained by a thread that appends one
/// JSON line per event and flushes after each batch.
#[derive(Debug, Clone)]
pub struct FileSink {
    queue: BatchSender<AccessEvent>,
}

/// The thread writing the access log. [`FileWriter::finish`] waits until it
/// has written every queued event, after every [`FileSink`] is dropped.
#[derive(Debug)]
pub struct FileWriter {
    done: tokio::sync::oneshot::Receiver<()>,
    path: PathBuf,
}

impl FileWriter {
    /// Waits until the writer thread has written every event and stopped.
    pub async fn finish(self) {
        if self.done.await.is_err() {
            tracing::error!(path = %self.path.display(), "access log writer thread failed");
        }
    }
}

impl FileSink {
    /// Opens `path` for appending and starts the writer thread, with room
    /// for `capacity` queued events.
    pub async fn open(path: &Path, capacity: usize) -> Result<(Self, FileWriter), GatewayError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| GatewayError::AccessLog { path: path.to_owned(), source })?;
        let log_path = path.to_owned();
        let mut writer = std::io::BufWriter::with_capacity(64 * 1024, file);
        let (queue, done) = spawn_batch_thread("access-log", "access log", capacity, move |events| {
            write_lines(&mut writer, &events, &log_path);
        });
        let done = done.map_err(|source| GatewayError::AccessLog { path: path.to_owned(), source })?;
        Ok((Self { queue }, FileWriter { done, path: path.to_owned() }))
    }

    /// Events dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }
}

/// Appends one JSON line per event, encoded straight into the buffered
/// writer, and flushes. serde_json fails to encode only maps with
/// non-string keys and values whose own `Serialize` fails, and an event
/// has neither, so the errors left are I/O errors. The first one ends the
/// batch and is logged.
fn write_lines(writer: &mut std::io::BufWriter<std::fs::File>, events: &[AccessEvent], path: &Path) {
    let result = events.iter().try_for_each(|event| {
        serde_json::to_writer(&mut *writer, event).map_err(std::io::Error::from)?;
        writer.write_all(b"\n")
    });
    if let Err(error) = result.and_then(|()| writer.flush()) {
        tracing::error!(path = %path.display(), %error, "cannot write the access log");
    }
}

/// The sending side of a batch queue: a bounded `Vec` behind a mutex.
#[derive(Debug)]
struct BatchSender<T> {
    shared: Arc<BatchQueue<T>>,
    /// Held by every sender; the thread stops once none is left.
    _alive: Arc<()>,
}

impl<T> Clone for BatchSender<T> {
    fn clone(&self) -> Self {
        Self { shared: Arc::clone(&self.shared), _alive: Arc::clone(&self._alive) }
    }
}

#[derive(Debug)]
struct BatchQueue<T> {
    pending: Mutex<Vec<T>>,
    capacity: usize,
    dropped: AtomicU64,
    last_warning_ms: AtomicI64,
    name: &'static str,
}

impl<T> BatchSender<T> {
    /// Queues `item`, or drops and counts it when the queue is full.
    fn push(&self, item: T) {
        let queue = &self.shared;
        {
            let mut pending = queue.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if pending.len() < queue.capacity {
                pending.push(item);
                return;
            }
        }

        let dropped = queue.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ms();
        let last = queue.last_warning_ms.load(Ordering::Relaxed);
        if now - last >= OVERFLOW_LOG_INTERVAL.as_millis() as i64
            && queue.last_warning_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(queue = queue.name, dropped_total = dropped, "access event queue full; events dropped");
        }
    }

    fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// Starts a thread that hands the queued items to `handle` every
/// [`FLUSH_INTERVAL`], and once more after the last sender is dropped.
/// Returns the sender and a receiver that completes when the thread ends.
fn spawn_batch_thread<T: Send + 'static>(
    thread_name: &str,
    name: &'static str,
    capacity: usize,
    mut handle: impl FnMut(Vec<T>) + Send + 'static,
) -> (BatchSender<T>, std::io::Result<tokio::sync::oneshot::Receiver<()>>) {
    let shared = Arc::new(BatchQueue {
        pending: Mutex::new(Vec::new()),
        capacity: capacity.max(1),
        dropped: AtomicU64::new(0),
        last_warning_ms: AtomicI64::new(0),
        name,
    });
    let alive = Arc::new(());
    let sender = BatchSender { shared: Arc::clone(&shared), _alive: Arc::clone(&alive) };
    let senders_left = Arc::downgrade(&alive);
    drop(alive);

    let (done, finished) = tokio::sync::oneshot::channel();
    let take = move || std::mem::take(&mut *shared.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    let spawned = std::thread::Builder::new().name(thread_name.to_owned()).spawn(move || {
        loop {
            std::thread::sleep(FLUSH_INTERVAL);
            let last_round = senders_left.strong_count() == 0;
            let items = take();
            if !items.is_empty() {
                handle(items);
            }
            if last_round {
                break;
            }
        }
        let _ = done.send(());
    });
    (sender, spawned.map(|_| finished))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
