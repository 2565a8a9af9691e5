//! Bodies of forwarded exchanges: counted per app, closed when idle or
//! too old, and holding the app's tunnel slot until they end.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, SizeHint};
use portcullis_config::AppId;
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep, sleep, sleep_until};

use super::BanCheck;
use super::tunnel::{Activity, ban_watch};
use crate::limits::{AppUsage, ByteAccounting, CapWatch, Direction, TunnelGuard};

/// The error type of proxied bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the proxy sends.
pub(crate) type ProxyBody = BoxBody<Bytes, BoxError>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

pub(crate) fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Records bytes of one app in one direction, in the accounting hook and,
/// if a cap is set, in the app's byte cap usage.
#[derive(Clone)]
pub(crate) struct Meter {
    pub app_id: AppId,
    pub direction: Direction,
    pub accounting: Arc<dyn ByteAccounting>,
    pub usage: Option<Arc<AppUsage>>,
    /// `portcullis_egress_bytes_total` of this app and direction.
    pub counter: Counter,
}

impl Meter {
    pub fn record(&self, bytes: usize) {
        self.accounting.record(&self.app_id, self.direction, bytes as u64);
        self.counter.inc_by(bytes as u64);
        if let Some(usage) = &self.usage {
            usage.record(bytes as u64);
        }
    }
}

/// Resolves, with the reason, when an exchange must end before its bodies
/// do: the app reached its byte cap or was banned.
pub(crate) type StopFuture = Pin<Box<dyn Future<Output = &'static str> + Send>>;

/// Builds the [`StopFuture`] of one body of an exchange of `app_id`.
pub(crate) fn stop_when(cap: Option<CapWatch>, bans: Arc<dyn BanCheck>, app_id: AppId) -> StopFuture {
    Box::pin(async move {
        let cap_reached = async move {
            match cap {
                Some(cap) => cap.reached().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cap_reached => "the app reached egress.max_bytes_per_app",
            () = ban_watch(bans.as_ref(), &app_id) => "the app was banned",
        }
    })
}

/// A body that records its data bytes, marks the exchange's activity,
/// fails after `idle` without a frame, at `deadline` or when its
/// [`StopFuture`] resolves, and keeps the exchange's tunnel slot while it
/// lives.
///
/// The limits act only while hyper polls the body. A client that stops
/// reading a response stops the polling, and the connection's own idle
/// watchdog in [`serve`](super::serve) then closes it.
pub(crate) struct MeteredBody<B> {
    inner: B,
    meter: Meter,
    activity: Arc<Activity>,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    deadline: Pin<Box<Sleep>>,
    /// In a mutex only so the body is `Sync`, as `BoxBody` needs; it is
    /// reached through `&mut self` and never locked.
    stop: Mutex<StopFuture>,
    _slot: Arc<TunnelGuard>,
}

impl<B> MeteredBody<B> {
    pub fn new(
        inner: B,
        meter: Meter,
        limits: (Duration, Instant),
        activity: Arc<Activity>,
        slot: Arc<TunnelGuard>,
        stop: StopFuture,
    ) -> Self {
        let (idle, deadline) = limits;
        Self {
            inner,
            meter,
            activity,
            idle,
            idle_timer: Box::pin(sleep(idle)),
            deadline: Box::pin(sleep_until(deadline)),
            stop: Mutex::new(stop),
            _slot: slot,
        }
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();

        let stop = this.stop.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Poll::Ready(reason) = stop.as_mut().poll(cx) {
            return Poll::Ready(Some(Err(reason.into())));
        }
        // Checked before the inner body, so a body that always has data
        // ready still ends at the deadline.
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err("the exchange reached egress.max_tunnel_lifetime".into())));
        }

        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.meter.record(data.len());
                }
                this.activity.touch();
                this.idle_timer.as_mut().reset(Instant::now() + this.idle);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.idle_timer.as_mut().poll(cx).is_ready() {
                    let message = format!("no body data for {:?}, the egress.idle_timeout", this.idle);
                    return Poll::Ready(Some(Err(message.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::BodyExt;

    use super::*;
    use crate::limits::{ByteCounter, TunnelCounter};

    /// A body whose next frame is always ready, like a fast upstream.
    struct EndlessBody;

    impl Body for EndlessBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"data")))))
        }
    }

    #[tokio::test]
    async fn deadline_ends_always_ready_body() {
        let app_id = AppId::parse("weather-app").unwrap();
        let slot = TunnelCounter::new(1).acquire(&app_id).unwrap();
        let meter = Meter {
            app_id,
            direction: Direction::Received,
            accounting: Arc::new(ByteCounter::new()),
            usage: None,
            counter: Counter::default(),
        };
        let deadline = Instant::now() + Duration::from_millis(50);
        let limits = (Duration::from_secs(60), deadline);
        let stop: StopFuture = Box::pin(std::future::pending());
        let mut body = MeteredBody::new(EndlessBody, meter, limits, Activity::new(), Arc::new(slot), stop);

        let mut frames = 0_u64;
        let error = loop {
            match body.frame().await {
                Some(Ok(_)) => frames += 1,
                Some(Err(error)) => break error,
                None => panic!("the endless body ended"),
            }
            // Bounded: a 50 ms deadline ends the body long before this.
            assert!(frames < 100_000_000, "the deadline never ended the body");
            if frames % 1024 == 0 {
                tokio::task::yield_now().await;
            }
        };
        assert_eq!(error.to_string(), "the exchange reached egress.max_tunnel_lifetime");
        assert!(Instant::now() >= deadline);
    }
}
