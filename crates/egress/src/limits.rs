//! Per-app limits the proxy server applies to open tunnels: a concurrent
//! tunnel count with a guard that releases on drop, and byte accounting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use portcullis_config::AppId;

use crate::error::EgressError;

/// Counts open tunnels per app and refuses one beyond the limit
/// (`egress.max_tunnels_per_app`).
#[derive(Debug)]
pub struct TunnelCounter {
    limit: u32,
    open: Mutex<HashMap<AppId, u32>>,
}

impl TunnelCounter {
    /// Creates a counter allowing `limit` concurrent tunnels per app.
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self { limit, open: Mutex::new(HashMap::new()) })
    }

    /// Counts one more open tunnel for `app_id`, or returns
    /// [`EgressError::TunnelLimit`] if the app already has `limit` open.
    /// The tunnel counts until the returned guard is dropped.
    pub fn acquire(self: &Arc<Self>, app_id: &AppId) -> Result<TunnelGuard, EgressError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(app_id.clone()).or_insert(0);
        if *count >= self.limit {
            return Err(EgressError::TunnelLimit { app_id: app_id.to_string(), limit: self.limit });
        }
        *count += 1;
        Ok(TunnelGuard { counter: Arc::clone(self), app_id: app_id.clone() })
    }

    /// Returns the number of tunnels `app_id` has open.
    pub fn open(&self, app_id: &AppId) -> u32 {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(app_id).copied().unwrap_or(0)
    }

    fn release(&self, app_id: &AppId) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(app_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(app_id);
            }
        }
    }
}

/// One open tunnel of an app; dropping it releases the slot.
#[derive(Debug)]
pub struct TunnelGuard {
    counter: Arc<TunnelCounter>,
    app_id: AppId,
}

impl TunnelGuard {
    /// Returns the app the tunnel belongs to.
    pub fn app_id(&self) -> &AppId {
        &self.app_id
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.counter.release(&self.app_id);
    }
}

/// The direction of proxied bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the app to the destination.
    Sent,
    /// From the destination to the app.
    Received,
}

/// A hook the proxy calls after copying bytes of an app's tunnel, such as
/// a metrics exporter or the guard's byte signal.
pub trait ByteAccounting: Send + Sync {
    /// Records `bytes` copied in `direction` for `app_id`.
    fn record(&self, app_id: &AppId, direction: Direction, bytes: u64);
}

/// Byte totals per app since start, kept in memory.
#[derive(Debug, Default)]
pub struct ByteCounter {
    totals: Mutex<HashMap<AppId, Arc<AppBytes>>>,
}

/// Byte totals of one app.
#[derive(Debug, Default)]
pub struct AppBytes {
    sent: AtomicU64,
    received: AtomicU64,
}

impl AppBytes {
    /// Bytes sent by the app, in bytes.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Bytes received by the app, in bytes.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl ByteCounter {
    /// Creates an empty counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the (sent, received) totals of `app_id` in bytes, zero for an
    /// app never recorded.
    pub fn totals(&self, app_id: &AppId) -> (u64, u64) {
        let totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        totals.get(app_id).map_or((0, 0), |bytes| (bytes.sent(), bytes.received()))
    }
}

impl ByteAccounting for ByteCounter {
    fn record(&self, app_id: &AppId, direction: Direction, bytes: u64) {
        let entry = {
            let mut totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(totals.entry(app_id.clone()).or_default())
        };
        let counter = match direction {
            Direction::Sent => &entry.sent,
            Direction::Received => &entry.received,
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }
}
