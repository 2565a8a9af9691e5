//! The accept loop and graceful shutdown.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{self, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handle::handle;
use super::tunnel::{Activity, idle_watchdog};
use super::{Context, Proxy};

/// Pause after a failed accept, such as when the process is out of file
/// descriptors, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Time that tasks get to end after the abort signal.
const ABORT_WAIT: Duration = Duration::from_secs(5);

/// Serves the egress proxy on `listener` until `shutdown` completes, then
/// shuts down gracefully and returns.
///
/// Shutdown stops accepting connections, lets requests in progress finish
/// and closes idle keep-alive connections. Connections, forwarded exchanges
/// and tunnels still open after [`ListenerLimits::shutdown_grace`](super::ListenerLimits)
/// are closed. The future returns once every task has ended, or at most
/// 5 s after that.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: impl Future<Output = ()>) {
    let context = Arc::new(Context {
        proxy,
        tasks: TaskTracker::new(),
        draining: CancellationToken::new(),
        abort: CancellationToken::new(),
    });
    // Logged as text, so an unknown address reads "unknown", not `None`.
    let local = listener.local_addr().map_or_else(|_| "unknown".to_owned(), |address| address.to_string());
    tracing::info!(address = %local, "egress proxy listening");

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "egress proxy failed to accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };

        let connection_context = Arc::clone(&context);
        context.tasks.spawn(async move {
            let limits = connection_context.proxy.limits;
            let service_context = Arc::clone(&connection_context);
            let service = service_fn(move |request| handle(Arc::clone(&service_context), peer, request));
            let activity = Activity::new();
            let stream = ActiveStream { inner: stream, activity: Arc::clone(&activity) };
            // One second past the idle timeout, so that an exchange's own
            // idle timeout can still send its 504 first.
            let idle = connection_context.proxy.engine().rules().settings().idle_timeout + Duration::from_secs(1);

            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_header_size(limits.max_head_bytes)
                .max_buf_size(limits.max_head_bytes.max(8192))
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);

            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = idle_watchdog(&activity, idle) => {
                    tracing::debug!(%peer, ?idle, "egress proxy connection closed: no byte moved");
                    Ok(())
                }
                () = connection_context.draining.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        result = connection.as_mut() => result,
                        () = connection_context.abort.cancelled() => Ok(()),
                    }
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "egress proxy connection ended with an error");
            }
        });
    }

    drop(listener);
    tracing::info!(address = %local, "egress proxy stopped accepting; draining connections");
    context.draining.cancel();
    context.tasks.close();

    let grace = context.proxy.limits.shutdown_grace;
    if tokio::time::timeout(grace, context.tasks.wait()).await.is_err() {
        tracing::info!(
            open_tasks = context.tasks.len(),
            ?grace,
            "egress proxy closing what is still open after the grace time"
        );
        context.abort.cancel();
        if tokio::time::timeout(ABORT_WAIT, context.tasks.wait()).await.is_err() {
            tracing::warn!(open_tasks = context.tasks.len(), "egress proxy tasks still running after the abort signal");
        }
    }
    tracing::info!(address = %local, "egress proxy stopped");
}

/// The app's connection, marking in `activity` each read or write that
/// moved bytes. The connection task closes a connection on which nothing
/// moved for longer than `egress.idle_timeout`. Without that, a client
/// that stops reading a forwarded response would hold the exchange, its
/// upstream connection and its tunnel slot, because hyper then stops
/// polling the response body and the body's own timers with it.
struct ActiveStream<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for ActiveStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ActiveStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, bytes);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, buffers);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
