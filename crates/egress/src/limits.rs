//! Per-app limits the proxy server applies to open tunnels: a concurrent
//! tunnel count with a guard that releases on drop, byte accounting, and a
//! byte cap per accounting period.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use portcullis_config::AppId;
use tokio::sync::watch;
use tokio::time::Instant;

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

    /// Returns the number of tunnels each app may hold open, fixed when the
    /// counter was made.
    pub fn limit(&self) -> u32 {
        self.limit
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

impl Direction {
    /// Returns the direction as a stable lowercase string: `sent` or
    /// `received`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
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

/// The accounting period of [`ByteCap`]: one hour.
pub const BYTE_CAP_PERIOD: Duration = Duration::from_secs(3600);

/// Caps the bytes each app moves through the proxy, both directions
/// together, per accounting period (`egress.max_bytes_per_app` per
/// [`BYTE_CAP_PERIOD`]).
///
/// Periods are fixed and per app: an app's period starts with the first
/// byte counted or request checked after its previous period ended, so an
/// app that was idle starts afresh. Once an app's count reaches the cap,
/// [`AppUsage::check`] refuses new connections and every watcher from
/// [`AppUsage::check`] is told to close, until the period ends.
///
/// NOTE: the periods are fixed, not sliding, so an app can move up to twice
/// the cap within one hour that spans the end of a period. A tunnel also
/// copies the chunk it is writing before it closes. Each tunnel read takes
/// at most what is left under the cap, or 4 KiB when less is left, so
/// with several tunnels reading at once the count can pass the cap by up
/// to that much per open tunnel.
#[derive(Debug)]
pub struct ByteCap {
    limit: u64,
    period: Duration,
    apps: Mutex<HashMap<AppId, Arc<AppUsage>>>,
}

impl ByteCap {
    /// Creates a cap of `limit` bytes per app per `period`.
    pub fn new(limit: u64, period: Duration) -> Arc<Self> {
        Arc::new(Self { limit, period, apps: Mutex::new(HashMap::new()) })
    }

    /// Returns the cap, in bytes per period.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Returns the accounting period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Returns the usage of `app_id`, created empty on first use. The
    /// proxy looks it up once per tunnel or exchange and records into it.
    pub fn usage(&self, app_id: &AppId) -> Arc<AppUsage> {
        let mut apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        let usage = apps.entry(app_id.clone()).or_insert_with(|| {
            let (reached, _) = watch::channel(());
            Arc::new(AppUsage {
                app_id: app_id.clone(),
                limit: self.limit,
                period: self.period,
                window: Mutex::new(None),
                reached,
            })
        });
        Arc::clone(usage)
    }
}

impl ByteAccounting for ByteCap {
    fn record(&self, app_id: &AppId, _direction: Direction, bytes: u64) {
        self.usage(app_id).record(bytes);
    }
}

/// One app's bytes in its current accounting period.
#[derive(Debug)]
pub struct AppUsage {
    app_id: AppId,
    limit: u64,
    period: Duration,
    window: Mutex<Option<UsageWindow>>,
    /// Notified each time the app's count reaches the cap.
    reached: watch::Sender<()>,
}

#[derive(Debug, Clone, Copy)]
struct UsageWindow {
    started: Instant,
    bytes: u64,
}

impl AppUsage {
    /// Counts `bytes` moved either way. When the count reaches the cap,
    /// tells every watcher to close and logs it once per period.
    pub fn record(&self, bytes: u64) {
        let now = Instant::now();
        let (before, after) = {
            let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
            let current = self.current(&mut window, now);
            let before = current.bytes;
            current.bytes = before.saturating_add(bytes);
            (before, current.bytes)
        };
        if before < self.limit && after >= self.limit {
            tracing::info!(
                app_id = %self.app_id,
                bytes = after,
                limit = self.limit,
                period_s = self.period.as_secs(),
                "app reached egress.max_bytes_per_app; closing its tunnels"
            );
            self.reached.send_replace(());
        }
    }

    /// Returns a watcher that resolves when the app next reaches the cap,
    /// or [`EgressError::ByteLimit`] if it has reached it in the current
    /// period.
    pub fn check(&self) -> Result<CapWatch, EgressError> {
        let now = Instant::now();
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.current(&mut window, now);
        if current.bytes >= self.limit {
            let resets_in = (current.started + self.period).saturating_duration_since(now);
            return Err(EgressError::ByteLimit {
                app_id: self.app_id.to_string(),
                bytes: current.bytes,
                limit: self.limit,
                resets_in,
            });
        }
        Ok(CapWatch { receiver: self.reached.subscribe() })
    }

    /// Returns the bytes left under the cap in the current period (0 once
    /// the cap is reached).
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.bytes())
    }

    /// Returns the bytes counted in the current period.
    pub fn bytes(&self) -> u64 {
        let window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        window.filter(|w| w.started.elapsed() < self.period).map_or(0, |w| w.bytes)
    }

    /// Returns the current period, starting a new one if the last has
    /// ended or none has started.
    fn current<'a>(&self, window: &'a mut Option<UsageWindow>, now: Instant) -> &'a mut UsageWindow {
        let expired = window.is_none_or(|w| now.saturating_duration_since(w.started) >= self.period);
        if expired {
            *window = Some(UsageWindow { started: now, bytes: 0 });
        }
        window.as_mut().expect("set above")
    }
}

/// Resolves when an app reaches its byte cap after the watcher was made.
/// A clone watches from the same point.
#[derive(Debug, Clone)]
pub struct CapWatch {
    receiver: watch::Receiver<()>,
}

impl CapWatch {
    /// Waits until the app reaches its byte cap. Never resolves if the cap
    /// is dropped first.
    pub async fn reached(mut self) {
        if self.receiver.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
