//! The sending side of the bounded egress event queue. Sending never waits:
//! a full or closed queue drops the event and counts it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::event::EgressEvent;

#[derive(Debug, Clone)]
pub(crate) struct EventSink {
    sender: mpsc::Sender<EgressEvent>,
    dropped: Arc<AtomicU64>,
}

impl EventSink {
    pub fn new(sender: mpsc::Sender<EgressEvent>) -> Self {
        Self { sender, dropped: Arc::new(AtomicU64::new(0)) }
    }

    /// Queues `event` without waiting, or counts it as dropped.
    pub fn send(&self, event: EgressEvent) {
        let queue_state = match self.sender.try_send(event) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "full",
            Err(TrySendError::Closed(_)) => "closed",
        };

        // Logged at 1, 2, 4, 8, ... drops, so a queue that stays full does
        // not flood the log.
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if dropped.is_power_of_two() {
            tracing::warn!(dropped, queue_state, "egress event queue is {queue_state}; events are being dropped");
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// How often a consumer of the event queue should take the queued events
/// with [`next_batch`].
pub const EVENT_BATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Waits `interval`, then takes every event queued so far. Returns `None`
/// once the queue is closed and empty.
///
/// A consumer that takes events this way never registers to be woken, so a
/// request's event costs the proxy no thread wake-up. Awaiting each event
/// instead costs one per decision, which at thousands of tunnel setups per
/// second is a large share of the proxy's time.
pub async fn next_batch(
    receiver: &mut mpsc::Receiver<EgressEvent>,
    interval: std::time::Duration,
) -> Option<Vec<EgressEvent>> {
    use tokio::sync::mpsc::error::TryRecvError;

    tokio::time::sleep(interval).await;
    let mut batch = Vec::new();
    loop {
        match receiver.try_recv() {
            Ok(event) => batch.push(event),
            Err(TryRecvError::Empty) => return Some(batch),
            Err(TryRecvError::Disconnected) if batch.is_empty() => return None,
            Err(TryRecvError::Disconnected) => return Some(batch),
        }
    }
}
