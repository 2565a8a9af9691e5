//! Copying bytes both ways through a CONNECT tunnel, with the idle timeout,
//! the lifetime limit and per-app byte accounting.
//!
//! Between two TCP sockets the bytes move with splice(2) through a kernel
//! pipe per direction ([`splice_tunnel`]), so the payload never enters the
//! proxy's memory. Without it, a relay spends most of its time copying each
//! byte into user space and back out. Other streams go through a buffer
//! ([`copy_tunnel`]).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::body::Meter;
use crate::limits::CapWatch;

/// Size of each direction's copy buffer, in bytes.
const BUFFER_BYTES: usize = 64 * 1024;

/// Requested size of each direction's splice pipe, in bytes. Linux caps it
/// at `/proc/sys/fs/pipe-max-size` (1 MiB by default); if the request
/// fails, the pipe keeps its default of 64 KiB.
const PIPE_BYTES: usize = 256 * 1024;

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
        }
    }
}

/// Limits and accounting for one tunnel.
pub(crate) struct TunnelPolicy {
    pub idle: Duration,
    pub lifetime: Duration,
    pub sent: Meter,
    pub received: Meter,
    pub stop: CancellationToken,
    /// Resolves when the app reaches its byte cap; `None` without a cap.
    pub cap: Option<CapWatch>,
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
/// tunnel is `policy.lifetime` old, the app reaches its byte cap or
/// `policy.stop` is cancelled. Either
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
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let cap = policy.cap.take();
    let policy = &policy;
    let both_ways = async {
        tokio::try_join!(
            pump(client_read, upstream_write, &policy.sent, &bytes.sent, &activity),
            pump(upstream_read, client_write, &policy.received, &bytes.received, &activity),
        )
        .map(|_| ())
    };
    supervise(both_ways, &activity, policy, cap).await
}

/// Runs `both_ways` until it ends or a limit of `policy` (idle time,
/// lifetime, shutdown, the byte cap `cap`) ends the tunnel first.
async fn supervise(
    both_ways: impl Future<Output = io::Result<()>>,
    activity: &Activity,
    policy: &TunnelPolicy,
    cap: Option<CapWatch>,
) -> TunnelEnd {
    let deadline = activity.opened + policy.lifetime;
    let cap_reached = async move {
        match cap {
            Some(cap) => cap.reached().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = both_ways => match result {
            Ok(()) => TunnelEnd::Closed,
            Err(_) => TunnelEnd::Failed,
        },
        () = idle_watchdog(activity, policy.idle) => TunnelEnd::Idle,
        () = sleep_until(deadline) => TunnelEnd::Lifetime,
        () = policy.stop.cancelled() => TunnelEnd::Shutdown,
        () = cap_reached => TunnelEnd::ByteLimit,
    }
}

/// Moves bytes between two TCP sockets with splice(2) under the same limits
/// and accounting as [`copy_tunnel`]. Both pumps borrow both sockets,
/// because readiness and `splice` need only shared references.
pub(crate) async fn splice_tunnel(
    client: TcpStream,
    upstream: TcpStream,
    mut policy: TunnelPolicy,
    bytes: &TunnelBytes,
) -> TunnelEnd {
    let activity = Activity::new();
    let cap = policy.cap.take();
    let policy = &policy;
    let both_ways = async {
        tokio::try_join!(
            splice_pump(&client, &upstream, &policy.sent, &bytes.sent, &activity),
            splice_pump(&upstream, &client, &policy.received, &bytes.received, &activity),
        )
        .map(|_| ())
    };
    supervise(both_ways, &activity, policy, cap).await
}

/// Splices from `from` into a pipe and from the pipe into `to`, until end
/// of data, then shuts down `to`'s sending half. The pipe is emptied into
/// `to` before the next read, so a read never waits on a full pipe and the
/// bytes counted are the bytes delivered.
async fn splice_pump(
    from: &TcpStream,
    to: &TcpStream,
    meter: &Meter,
    total: &AtomicU64,
    activity: &Activity,
) -> io::Result<()> {
    use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};

    let (pipe_out, pipe_in) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
    let capacity = fcntl_setpipe_size(&pipe_in, PIPE_BYTES).unwrap_or(BUFFER_BYTES).max(BUFFER_BYTES);
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    loop {
        let read = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || Ok(splice(from, None, &pipe_in, None, capacity, flags)?)) {
                Ok(read) => break read,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        };
        if read == 0 {
            rustix::net::shutdown(to, rustix::net::Shutdown::Write)?;
            return Ok(());
        }
        activity.touch();

        let mut left = read;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || Ok(splice(&pipe_out, None, to, None, left, flags)?)) {
                Ok(written) => left -= written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
        activity.touch();
        meter.record(read);
        total.fetch_add(read as u64, Ordering::Relaxed);

        // While data keeps arriving, no splice waits, so without a yield the
        // tunnel's other branches (byte cap, shutdown, lifetime) would not
        // be polled until tokio's cooperative budget runs out.
        tokio::task::yield_now().await;
    }
}

/// Copies from `from` to `to` until end of data, then shuts down `to`'s
/// sending half.
async fn pump<R, W>(mut from: R, mut to: W, meter: &Meter, total: &AtomicU64, activity: &Activity) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; BUFFER_BYTES];
    loop {
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        activity.touch();

        to.write_all(&buffer[..read]).await?;
        activity.touch();
        meter.record(read);
        total.fetch_add(read as u64, Ordering::Relaxed);
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
