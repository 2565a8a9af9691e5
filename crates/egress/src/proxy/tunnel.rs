//! Copying bytes both ways through a CONNECT tunnel, with the idle timeout,
//! the lifetime limit and per-app byte accounting.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use portcullis_config::AppId;

use super::BanCheck;
use super::body::Meter;
use crate::limits::CapWatch;

/// Starting size of each direction's copy buffer, in bytes. Most tunnels
/// carry little, and zeroing two 64 KiB buffers per tunnel was a visible
/// share of the cost of a tunnel setup. A buffer doubles each time one
/// read fills it, up to `egress.tunnel_buffer_bytes`.
const START_BUFFER_BYTES: usize = 4 * 1024;

/// How often an open tunnel calls the ban check for its app.
/// A ban closes the app's tunnels within this time.
pub(crate) const BAN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes one direction of a tunnel moves between two yields to the
/// scheduler; bounds how far a tunnel can run past the byte cap.
const YIELD_BYTES: usize = 256 * 1024;

/// The reason a tunnel closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TunnelEnd {
    /// Both sides closed their sending half.
    Closed,
    /// A side failed to read or write.
    Failed,
    /// No byte moved either way for the idle timeout.
    Idle,
    /// The tunnel reached the maximum lifetime.
    Lifetime,
    /// The proxy shut down.
    Shutdown,
    /// The app reached its byte cap, `egress.max_bytes_per_app`.
    ByteLimit,
    /// The app was banned while the tunnel was open.
    Banned,
}

impl TunnelEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Failed => "failed",
            Self::Idle => "idle_timeout",
            Self::Lifetime => "max_lifetime",
            Self::Shutdown => "shutdown",
            Self::ByteLimit => "byte_limit",
            Self::Banned => "banned",
        }
    }
}

/// Limits and accounting for one tunnel.
pub(crate) struct TunnelPolicy {
    pub idle: Duration,
    pub lifetime: Duration,
    /// Largest copy buffer per direction, `egress.tunnel_buffer_bytes`.
    pub buffer_bytes: usize,
    pub sent: Meter,
    pub received: Meter,
    pub stop: CancellationToken,
    /// Resolves when the app reaches its byte cap; `None` without a cap.
    pub cap: Option<CapWatch>,
    /// The proxy's ban check and the tunnel's app.
    pub ban: (Arc<dyn BanCheck>, AppId),
}

/// The time of the last byte either way, in ms since the tunnel or
/// exchange opened.
pub(crate) struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { opened: Instant::now(), last_ms: AtomicU64::new(0) })
    }

    pub fn touch(&self) {
        let elapsed = self.opened.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(elapsed, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Bytes copied through one tunnel.
#[derive(Debug, Default)]
pub(crate) struct TunnelBytes {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

/// Copies bytes between `client` and `upstream` until both sides have
/// closed, one fails, no byte moves either way for `policy.idle`, the
/// tunnel is `policy.lifetime` old, the app reaches its byte cap or is
/// banned, or `policy.stop` is cancelled. Either
/// side's end of data is passed on as a write shutdown, so half-closed
/// connections work.
pub(crate) async fn copy_tunnel<C, U>(
    client: C,
    upstream: U,
    mut policy: TunnelPolicy,
    bytes: &TunnelBytes,
) -> TunnelEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let deadline = activity.opened + policy.lifetime;
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);

    let cap = policy.cap.take();
    let cap_reached = async move {
        match cap {
            Some(cap) => cap.reached().await,
            None => std::future::pending().await,
        }
    };
    let policy = &policy;
    let both_ways = async {
        tokio::try_join!(
            pump(client_read, upstream_write, policy.buffer_bytes, &policy.sent, &bytes.sent, &activity),
            pump(upstream_read, client_write, policy.buffer_bytes, &policy.received, &bytes.received, &activity),
        )
    };

    tokio::select! {
        result = both_ways => match result {
            Ok(_) => TunnelEnd::Closed,
            Err(_) => TunnelEnd::Failed,
        },
        () = idle_watchdog(&activity, policy.idle) => TunnelEnd::Idle,
        () = sleep_until(deadline) => TunnelEnd::Lifetime,
        () = policy.stop.cancelled() => TunnelEnd::Shutdown,
        () = cap_reached => TunnelEnd::ByteLimit,
        () = ban_watch(policy.ban.0.as_ref(), &policy.ban.1) => TunnelEnd::Banned,
    }
}

/// Returns once `check` reports `app_id` as banned, asking every
/// [`BAN_CHECK_INTERVAL`].
pub(crate) async fn ban_watch(check: &dyn BanCheck, app_id: &AppId) {
    let mut interval = tokio::time::interval(BAN_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if check.is_banned(app_id) {
            return;
        }
    }
}

/// Copies from `from` to `to` until end of data, then shuts down `to`'s
/// sending half. The buffer starts at [`START_BUFFER_BYTES`] and doubles,
/// up to `max_buffer` bytes, each time a read fills it. With a byte cap,
/// one read takes at most what is left under the cap (but at least
/// [`START_BUFFER_BYTES`]), so a large buffer does not let a tunnel run
/// far past the cap.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    max_buffer: usize,
    meter: &Meter,
    total: &AtomicU64,
    activity: &Activity,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; START_BUFFER_BYTES.min(max_buffer)];
    let mut since_yield = 0;
    loop {
        let want = match &meter.usage {
            Some(usage) => buffer.len().min(usage.remaining().max(START_BUFFER_BYTES as u64) as usize),
            None => buffer.len(),
        };
        let read = from.read(&mut buffer[..want]).await?;
        if read == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        activity.touch();
        if read == buffer.len() && buffer.len() < max_buffer {
            buffer.resize((buffer.len() * 2).min(max_buffer), 0);
        }

        to.write_all(&buffer[..read]).await?;
        activity.touch();
        meter.record(read);
        total.fetch_add(read as u64, Ordering::Relaxed);

        // While both sockets stay ready, no read or write waits. Without a
        // yield, the tunnel's other branches (byte cap, shutdown, lifetime)
        // would wait for tokio's cooperative budget of 128 socket operations,
        // and a tunnel could run megabytes past the byte cap. A yield per
        // chunk cost about a tenth of the throughput, so it comes every
        // YIELD_BYTES.
        since_yield += read;
        if since_yield >= YIELD_BYTES {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// Returns once no byte has moved for `idle`. Each wake-up either returns
/// or sleeps until a later deadline, so the loop ends or waits.
pub(crate) async fn idle_watchdog(activity: &Activity, idle: Duration) {
    loop {
        let due = activity.last() + idle;
        if Instant::now() >= due {
            return;
        }
        sleep_until(due).await;
    }
}
