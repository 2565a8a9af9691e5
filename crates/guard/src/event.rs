//! The events the guard consumes and the bounded queue that carries them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use portcullis_config::AppId;
use tokio::sync::mpsc;

/// One observation about an app, converted by its producer (the gateway or
/// the egress proxy) from that producer's own event type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GuardEvent {
    /// The gateway sent the response to one request of an app.
    Access {
        /// The app that sent the request.
        app_id: AppId,
        /// The platform service the request was routed to.
        service: String,
        /// HTTP status of the response, whether it came from the service or
        /// from the gateway itself.
        status: u16,
        /// Request and response bytes together.
        bytes: u64,
        /// When the response was sent, in milliseconds since the Unix epoch.
        at_ms: i64,
    },
    /// The egress proxy refused an outbound connection of an app.
    EgressViolation {
        /// The app that tried to connect.
        app_id: AppId,
        /// The destination host name or address as requested.
        host: String,
        /// The rule that refused it, such as `not in allow_hosts`.
        rule: String,
        /// When the connection was refused, in milliseconds since the Unix epoch.
        at_ms: i64,
    },
}

impl GuardEvent {
    /// Returns the app the event is about.
    pub fn app_id(&self) -> &AppId {
        match self {
            Self::Access { app_id, .. } | Self::EgressViolation { app_id, .. } => app_id,
        }
    }

    /// Returns when the event happened, in milliseconds since the Unix epoch.
    pub fn at_ms(&self) -> i64 {
        match self {
            Self::Access { at_ms, .. } | Self::EgressViolation { at_ms, .. } => *at_ms,
        }
    }
}

/// The producers' end of the guard's event queue. Cheap to clone; every
/// clone shares one dropped-events counter.
///
/// Sending never waits: when the queue is full, or the guard has stopped,
/// the event is dropped and counted, so the request path never stalls on
/// the guard.
#[derive(Debug, Clone)]
pub struct EventSender {
    queue: mpsc::Sender<GuardEvent>,
    dropped: Arc<AtomicU64>,
}

/// The guard's end of the event queue.
pub type EventReceiver = mpsc::Receiver<GuardEvent>;

/// Creates a bounded event queue holding at most `capacity` events
/// (at least 1).
pub fn event_queue(capacity: usize) -> (EventSender, EventReceiver) {
    let (queue, receiver) = mpsc::channel(capacity.max(1));
    (EventSender { queue, dropped: Arc::new(AtomicU64::new(0)) }, receiver)
}

impl EventSender {
    /// Queues `event` without waiting. Returns false, and counts the event
    /// as dropped, if the queue is full or the guard has stopped.
    pub fn send(&self, event: GuardEvent) -> bool {
        match self.queue.try_send(event) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Returns how many events all clones of this sender have dropped since
    /// the queue was created.
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
