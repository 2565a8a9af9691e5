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
