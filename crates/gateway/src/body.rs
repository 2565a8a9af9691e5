//! Body wrappers that count bytes, enforce the request body limit while
//! streaming, cut a forwarded response body that stalls, and emit the
//! access event when the response ends.
//!
//! These are written here rather than taken from http-body-util's
//! `Limited` because the gateway must also count the bytes for the access
//! event and tell a body-limit failure (413) apart from an upstream failure
//! (502) after the upstream client has consumed the error.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;

use crate::events::{AccessEvent, EventSinks, now_ms};
use crate::framing::strip_request_headers;
use crate::h2_watch::{Claim, ResetLedger};
use crate::limits::TallySlot;

/// A boxed error of a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Counters shared between the request body and the access event.
#[derive(Debug, Default)]
pub struct RequestCounters {
    /// Request body bytes read so far.
    pub bytes_in: AtomicU64,
    /// Set when the body went over the limit.
    pub too_large: AtomicBool,
    /// Set once the upstream client has taken the whole body. Until then
    /// the upstream connection is still writing the request, so the pool
    /// must not hand it to another request.
    pub ended: AtomicBool,
    /// Set while the last read of the body waited for the app, so a stalled
    /// exchange is the app's doing, not the upstream's.
    pub waiting_for_app: AtomicBool,
    /// Set when the app's body failed: a reset stream, a closed connection
    /// or a malformed chunk.
    pub failed: AtomicBool,
    /// Set with `failed` when the app went away (closed or reset the
    /// connection, or reset its stream) rather than sent a malformed body.
    pub app_went_away: AtomicBool,
    /// Set with `failed` to the RST_STREAM error code when the gateway's
    /// own h2 reset the stream for the app's protocol error, such as a
    /// body longer than its content-length. 0 otherwise.
    pub h2_reset_code: AtomicU32,
}

impl RequestCounters {
    /// Marks the body failed with `error`, and notes whether the app went
    /// away.
    fn fail(&self, error: &hyper::Error) {
        self.failed.store(true, Ordering::Relaxed);
        if app_went_away(error) {
            self.app_went_away.store(true, Ordering::Relaxed);
        }
        if let Some(code) = own_h2_reset(error) {
            self.h2_reset_code.store(code, Ordering::Relaxed);
        }
    }
}

/// Returns `error` and its sources, outermost first.
fn causes(error: &hyper::Error) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error as &(dyn std::error::Error + 'static)), |cause| cause.source())
}

/// Returns the RST_STREAM error code if `error` is a reset that the
/// gateway's own h2 sent for the app's protocol error on the stream.
fn own_h2_reset(error: &hyper::Error) -> Option<u32> {
    let h2_error = causes(error).find_map(|cause| cause.downcast_ref::<h2::Error>())?;
    let own_reset = h2_error.is_reset() && h2_error.is_library();
    h2_error.reason().filter(|_| own_reset).map(u32::from)
}

/// Returns whether a body `error` means that the app went away: its
/// connection closed or was reset mid-body, or it reset its HTTP/2 stream
/// or sent GOAWAY. A malformed chunk, or a reset that the gateway's own h2
/// sent for a protocol error, is the app's fault instead.
pub(crate) fn app_went_away(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() {
        return true;
    }
    for cause in causes(error) {
        if let Some(h2_error) = cause.downcast_ref::<h2::Error>() {
            return h2_error.is_remote() || h2_error.is_io();
        }
        if let Some(io_error) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            return matches!(
                io_error.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
            );
        }
    }
    false
}

/// The request body forwarded upstream: counts bytes, fails once more
/// than `limit` bytes arrived (which also covers chunked bodies), and
/// removes from request trailers what [`strip_request_headers`] removes
/// from the head.
///
/// NOTE: a streaming body without Content-Length that passes the limit
/// has partly reached the upstream when the app gets 413. The upstream
/// then receives a request that ends with an error, never complete. With
/// `gateway.request_buffering` on, such bodies are read whole first and
/// forwarded as [`LimitedBody::buffered`], which the upstream receives
/// only complete.
pub struct LimitedBody {
    source: Source,
    limit: u64,
    counters: Arc<RequestCounters>,
}

/// The source of a [`LimitedBody`]'s frames.
enum Source {
    /// The app's body, read as the upstream takes it.
    Streaming(hyper::body::Incoming),
    /// The app's whole body, read before the request went upstream, with
    /// the app's share of the buffer budget, kept until dropped.
    Buffered {
        /// The data, taken by the first poll. `None` for an empty body.
        data: Option<Bytes>,
        /// The trailers, sent after the data. With trailers the upstream
        /// request needs chunked framing.
        trailers: Option<http::HeaderMap>,
        _slot: TallySlot,
    },
}

impl LimitedBody {
    /// Wraps `inner` with a limit of `limit` bytes.
    pub fn new(inner: hyper::body::Incoming, limit: u64, counters: Arc<RequestCounters>) -> Self {
        Self { source: Source::Streaming(inner), limit, counters }
    }

    /// Forwards a body read whole by [`read_whole`]. The counters already
    /// contain its size.
    pub(crate) fn buffered(whole: WholeBody, counters: Arc<RequestCounters>) -> Self {
        let WholeBody { data, trailers, slot } = whole;
        let data = Some(data).filter(|data| !data.is_empty());
        Self { source: Source::Buffered { data, trailers, _slot: slot }, limit: u64::MAX, counters }
    }

    /// Returns the counters, which the upstream pool reads to learn
    /// whether the body has ended.
    pub(crate) fn counters(&self) -> &Arc<RequestCounters> {
        &self.counters
    }
}

/// A request body read whole before forwarding: its data in one buffer,
/// whatever the number of chunks or frames it came in.
pub(crate) struct WholeBody {
    data: Bytes,
    trailers: Option<http::HeaderMap>,
    slot: TallySlot,
}

/// The first capacity of a buffered body's data, in bytes, unless the body
/// limit is smaller.
const FIRST_BUFFER_BYTES: usize = 4 * 1024;

/// The reason [`read_whole`] stopped before the body's end.
#[derive(Debug)]
pub(crate) enum ReadWholeError {
    /// More than the body limit arrived.
    TooLarge,
    /// The app's buffer budget could not take the buffer's next growth.
    BudgetExhausted,
    /// The app's body failed: a reset stream, a closed connection or a
    /// malformed chunk.
    Failed(hyper::Error),
}

/// Reads `body` to its end, at most `limit` data bytes, and copies its data
/// into one buffer. The buffer's capacity is charged to `slot` within
/// `budget` bytes for the app, and never exceeds `limit`. Counts the bytes
/// in `counters` and removes from trailers what [`strip_request_headers`]
/// removes from the head. The caller bounds the time it takes.
///
/// Copying matters: each chunk hyper yields is a slice of a read buffer,
/// so keeping tiny chunks would keep whole read buffers alive and use far
/// more memory than the bytes charged.
pub(crate) async fn read_whole(
    mut body: hyper::body::Incoming,
    limit: u64,
    mut slot: TallySlot,
    budget: u64,
    counters: &RequestCounters,
) -> Result<WholeBody, ReadWholeError> {
    use http_body_util::BodyExt;

    let limit_bytes = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut data: Vec<u8> = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            counters.fail(&error);
            ReadWholeError::Failed(error)
        })?;

        let chunk = match frame.into_data() {
            Ok(chunk) => chunk,
            Err(frame) => {
                if let Ok(mut received) = frame.into_trailers() {
                    strip_request_headers(&mut received);
                    trailers = Some(received);
                }
                continue;
            }
        };
        let length = chunk.len() as u64;
        let total = counters.bytes_in.fetch_add(length, Ordering::Relaxed) + length;
        if total > limit {
            counters.too_large.store(true, Ordering::Relaxed);
            return Err(ReadWholeError::TooLarge);
        }

        // Grows by doubling, for few copies, but never past the body limit,
        // so that a single body always fits a budget of at least the limit.
        let needed = data.len() + chunk.len();
        if needed > data.capacity() {
            let target = (data.capacity() * 2).max(FIRST_BUFFER_BYTES).min(limit_bytes).max(needed);
            if !slot.grow((target - data.capacity()) as u64, budget) {
                return Err(ReadWholeError::BudgetExhausted);
            }
            data.reserve_exact(target - data.len());
        }
        data.extend_from_slice(&chunk);
    }
    Ok(WholeBody { data: Bytes::from(data), trailers, slot })
}

/// The error a [`LimitedBody`] returns past its limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct BodyLimitExceeded(u64);

impl Drop for LimitedBody {
    /// Polls a streaming body that ends unfinished once more, without
    /// waiting, so that the cause of its end reaches the counters. hyper
    /// drops the handler, and the upstream request with this body, as
    /// soon as h2 has reset the stream, before anything has read the
    /// body's error. The access event needs that error to tell a reset
    /// by the app from one by the gateway's h2.
    fn drop(&mut self) {
        let Source::Streaming(inner) = &mut self.source else { return };
        if self.counters.ended.load(Ordering::Relaxed) || self.counters.failed.load(Ordering::Relaxed) {
            return;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let Poll::Ready(Some(Err(error))) = Pin::new(inner).poll_frame(&mut cx) {
            self.counters.fail(&error);
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let inner = match &mut this.source {
            Source::Streaming(inner) => inner,
            Source::Buffered { data, trailers, .. } => {
                let next = match data.take() {
                    Some(data) => Some(Frame::data(data)),
                    None => trailers.take().map(Frame::trailers),
                };
                if data.is_none() && trailers.is_none() {
                    this.counters.ended.store(true, Ordering::Relaxed);
                }
                return Poll::Ready(next.map(Ok));
            }
        };
        let polled = Pin::new(inner).poll_frame(cx);
        this.counters.waiting_for_app.store(polled.is_pending(), Ordering::Relaxed);
        match polled {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total =
                        this.counters.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
                    if total > this.limit {
                        this.counters.too_large.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyLimitExceeded(this.limit)))));
                    }
                }

                // Trailers (HTTP/2, or a chunked HTTP/1.1 body) follow the
                // same rule as the request head, so an app cannot place an
                // identity header behind its body.
                if let Some(trailers) = frame.trailers_mut() {
                    strip_request_headers(trailers);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.counters.fail(&error);
                Poll::Ready(Some(Err(Box::new(error))))
            }
            Poll::Ready(None) => {
                this.counters.ended.store(true, Ordering::Relaxed);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Also marks the body ended: hyper stops polling a body once this
    /// returns true, and never polls one that is empty from the start.
    fn is_end_stream(&self) -> bool {
        let ended = match &self.source {
            Source::Streaming(inner) => inner.is_end_stream(),
            Source::Buffered { data, trailers, .. } => data.is_none() && trailers.is_none(),
        };
        if ended {
            self.counters.ended.store(true, Ordering::Relaxed);
        }
        ended
    }

    /// A buffered body without trailers has an exact size, so the upstream
    /// receives it with Content-Length.
    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Streaming(inner) => inner.size_hint(),
            Source::Buffered { data, trailers: None, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
            Source::Buffered { trailers: Some(_), .. } => SizeHint::default(),
        }
    }
}

/// The status in the access event of a request whose app went away before
/// the response head: 499, which nginx introduced for "client closed
/// request". No HTTP standard defines a status for this case, and the app
/// receives no response.
pub const CLIENT_CLOSED_STATUS: u16 = 499;

/// The reason code in the access event of a request whose app went away
/// before the response head.
pub const CLIENT_CLOSED: &str = "client_closed";

/// The reason code in the access event of an HTTP/2 stream that the
/// gateway's h2 reset for the app's protocol error.
pub const H2_STREAM_ERROR: &str = "http2_stream_error";

/// The access event of one request, from the request head until it is
/// emitted.
///
/// Invariant: the event is emitted exactly once. [`ResponseBody`] emits it
/// when the response body ends or is dropped. A `PendingEvent` dropped
/// before that emits it itself with [`CLIENT_CLOSED_STATUS`] and reason
/// [`CLIENT_CLOSED`]. That happens when hyper drops the handler's future
/// because the app reset its HTTP/2 stream or closed an HTTP/2 connection,
/// possibly while the upstream works on the forwarded request.
pub struct PendingEvent {
    /// The event, filled in by the handler as the request passes its checks.
    pub event: AccessEvent,
    /// When the request head arrived.
    started: Instant,
    /// Request body counters.
    counters: Arc<RequestCounters>,
    /// The sinks that receive the event.
    sinks: EventSinks,
    /// The resets found on the request's connection, for HTTP/2.
    h2_resets: Option<Arc<ResetLedger>>,
    /// Set on the copy that waits for the body's error after hyper dropped
    /// the handler. Its own drop records the event at once.
    deferred: bool,
    /// Set once the event went to the sinks.
    emitted: bool,
}

impl PendingEvent {
    /// Starts the event of a request whose head arrived at `started`.
    pub fn new(
        event: AccessEvent,
        started: Instant,
        counters: Arc<RequestCounters>,
        sinks: EventSinks,
        h2_resets: Option<Arc<ResetLedger>>,
    ) -> Self {
        Self { event, started, counters, sinks, h2_resets, deferred: false, emitted: false }
    }

    /// Drops the event unsent, for a request whose event another part of
    /// the gateway has recorded.
    pub fn discard(&mut self) {
        self.emitted = true;
    }

    /// Completes the event with the byte counts and latency and emits it,
    /// unless it was emitted already.
    fn finish(&mut self, bytes_out: u64) {
        if self.emitted {
            return;
        }
        self.emitted = true;
        self.event.bytes_in = self.counters.bytes_in.load(Ordering::Relaxed);
        self.event.bytes_out = bytes_out;
        // A deferred event carries the time at which its request ended.
        if !self.deferred {
            self.stamp_end();
        }
        self.sinks.emit(std::mem::take(&mut self.event));
    }

    /// Sets the event's time and latency to now.
    fn stamp_end(&mut self) {
        self.event.latency_us = self.started.elapsed().as_micros() as u64;
        self.event.at_ms = now_ms();
    }

    /// Records a request that ended before its response head: 400
    /// `http2_stream_error` if the gateway's h2 reset its stream for the
    /// app's protocol error, unless the frame watch recorded that reset,
    /// and 499 `client_closed` otherwise.
    fn finish_unanswered(&mut self) {
        let reset_code = self.counters.h2_reset_code.load(Ordering::Relaxed);
        let claim = match &self.h2_resets {
            Some(ledger) if reset_code != 0 => Some(ledger.claim(reset_code, Instant::now())),
            _ => None,
        };
        match claim {
            Some(Claim::AlreadyRecorded) => {
                self.discard();
                return;
            }
            Some(Claim::Record) => {
                self.event.status = StatusCode::BAD_REQUEST.as_u16();
                self.event.reason = Some(H2_STREAM_ERROR.to_owned());
            }
            None => {
                self.event.status = CLIENT_CLOSED_STATUS;
                self.event.reason = Some(CLIENT_CLOSED.to_owned());
            }
        }
        tracing::debug!(
            app_id = %self.event.app_id,
            request_id = %self.event.request_id,
            service = %self.event.service,
            reason = self.event.reason.as_deref().unwrap_or_default(),
            "request ended before the response head"
        );
        self.finish(0);
    }
}

/// How long the event of an HTTP/2 request whose handler hyper dropped
/// waits for the request body's error. hyper drops the handler as soon as
/// h2 has reset the stream. The upstream connection that owns the body
/// drops it in its next turn, well within this time, and the body's drop
/// reads the error.
pub(crate) const RESET_CHECK_DELAY: Duration = Duration::from_millis(50);

impl Drop for PendingEvent {
    fn drop(&mut self) {
        if self.emitted {
            return;
        }

        // NOTE: a request cut off because a shutdown's deadline passed is
        // also dropped here and recorded as client_closed.
        let on_runtime = tokio::runtime::Handle::try_current().is_ok();
        if self.h2_resets.is_none() || self.deferred || !on_runtime {
            self.finish_unanswered();
            return;
        }

        // An HTTP/2 request: the stream may have been reset by the app or
        // by the gateway's h2, and the body's error shows which.
        self.stamp_end();
        let mut deferred = Self {
            event: std::mem::take(&mut self.event),
            started: self.started,
            counters: Arc::clone(&self.counters),
            sinks: self.sinks.clone(),
            h2_resets: self.h2_resets.take(),
            deferred: true,
            emitted: false,
        };
        self.emitted = true;
        tokio::spawn(async move {
            tokio::time::sleep(RESET_CHECK_DELAY).await;
            deferred.finish_unanswered();
        });
    }
}

/// The reason code in the access event of a response whose body stalled.
pub const BODY_STALLED: &str = "upstream_body_timeout";

/// The error that ends a forwarded response body after no frame arrived
/// for the stall limit. hyper then closes an HTTP/1.1 connection, or
/// resets the HTTP/2 stream, because the body is incomplete.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body stalled for {0:?}")]
pub struct BodyStalled(Duration);

/// A forwarded response body that fails with [`BodyStalled`] once no frame
/// has arrived for `limit`.
pub struct StallLimitedBody<B> {
    inner: B,
    limit: Duration,
    /// Made at the first wait, so that a body that arrives with its head
    /// costs no timer, and moved forward at each frame after that.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> StallLimitedBody<B> {
    /// Wraps `inner`, allowing at most `limit` between two frames.
    pub fn new(inner: B, limit: Duration) -> Self {
        Self { inner, limit, timer: None }
    }
}

impl<B> Body for StallLimitedBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                if let Some(timer) = &mut this.timer {
                    timer.as_mut().reset(tokio::time::Instant::now() + this.limit);
                }
            }
            Poll::Ready(_) => {}
            Poll::Pending => {
                // Polling the timer registers `cx`'s waker for its deadline.
                let limit = this.limit;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Box::new(BodyStalled(limit)))));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts bytes sent and emits its request's access
/// event exactly once: at the end of the body, or when the body is dropped
/// early (the app closed the connection or the upstream failed). A body cut
/// by [`StallLimitedBody`] is logged and gets [`BODY_STALLED`] as reason.
pub struct ResponseBody {
    inner: UnsyncBoxBody<Bytes, BoxError>,
    bytes_out: u64,
    event: Option<PendingEvent>,
}

impl ResponseBody {
    /// Wraps `inner`; `event` is emitted when the body ends.
    pub fn new(inner: UnsyncBoxBody<Bytes, BoxError>, event: PendingEvent) -> Self {
        Self { inner, bytes_out: 0, event: Some(event) }
    }

    /// Logs a body cut because it stalled and records the reason in its
    /// access event.
    fn record_stall(&mut self, stalled: &BodyStalled) {
        if let Some(pending) = &mut self.event {
            let event = &pending.event;
            tracing::warn!(
                app_id = %event.app_id,
                request_id = %event.request_id,
                service = %event.service,
                bytes_out = self.bytes_out,
                after = ?stalled.0,
                "upstream response body stalled; response cut"
            );
            pending.event.reason = Some(BODY_STALLED.to_owned());
        }
    }

    fn finish(&mut self) {
        if let Some(mut event) = self.event.take() {
            event.finish(self.bytes_out);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_out += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(Some(Err(error))) => {
                if let Some(stalled) = error.downcast_ref::<BodyStalled>() {
                    this.record_stall(stalled);
                }
                this.finish();
            }
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
