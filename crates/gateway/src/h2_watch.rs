//! Rejections that h2 makes by itself on an app's HTTP/2 connection, found
//! by reading the frame headers that pass through the connection.
//!
//! h2 responds to some requests before hyper hands them to the gateway's
//! handler: a header list over `gateway.max_header_bytes` gets a bare 431
//! (RFC 9113 section 10.5.1), and a malformed request head, a stream over
//! the concurrency limit or a stream-level flow-control error gets
//! RST_STREAM (section 5.4.2). Neither h2 nor hyper reports these, so
//! without this watcher they would leave no access event and the guard
//! could not count them. It is written by hand because no crate exposes a
//! server's own stream rejections, and it reads only the 9-byte frame
//! headers (section 4.1) and the 4-byte RST_STREAM error code, never HPACK.
//!
//! A rejection is reported for a stream on which the gateway has sent
//! neither a response head nor a reset before. The watch reads the app's
//! bytes before h2 does, so it cannot tell whether h2 rejected the head or
//! a later frame on the same stream. It therefore counts every reset of an
//! unanswered stream: otherwise an app could hide a malformed head by
//! sending any frame on the stream right after it.
//!
//! h2 may also reset a request that reached the handler, for the app's
//! protocol error before the response head (a body longer than its
//! content-length, malformed trailers). Through [`ResetLedger`], the
//! handler's event then records the reset too, so the request gets one
//! event.

use std::collections::{BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 section 3.4), which precedes
/// the app's first frame.
const CLIENT_PREFACE_LENGTH: usize = 24;

/// Frame types (RFC 9113 section 6).
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;

/// The END_STREAM flag of a HEADERS frame (RFC 9113 section 6.2).
const END_STREAM: u8 = 0x1;

/// The largest header block of h2's own 431 response, which carries only
/// `:status`: at most a dynamic table size update and one field of 5
/// bytes. Every response of the gateway also carries a 32-character
/// request id, so its header block is longer.
const BARE_STATUS_BLOCK: usize = 8;

/// Streams remembered as waiting for a response. hyper allows 200
/// concurrent streams by default. Streams that the app reset itself get no
/// response and stay until newer ones push them out.
const MAX_WATCHED_STREAMS: usize = 4096;

/// A request that h2 rejected before the handler received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamRejection {
    /// h2 sent 431 because the header list was over the limit.
    HeadersTooLarge {
        /// The stream id.
        stream: u32,
    },
    /// h2 reset the stream with this RST_STREAM error code.
    Reset {
        /// The stream id.
        stream: u32,
        /// The error code (RFC 9113 section 7).
        code: u32,
    },
}

/// Error codes of a reset of an unanswered stream that the app's own
/// frames caused (RFC 9113 section 7): PROTOCOL_ERROR, INTERNAL_ERROR,
/// FLOW_CONTROL_ERROR, STREAM_CLOSED, FRAME_SIZE_ERROR and REFUSED_STREAM.
/// INTERNAL_ERROR is hyper's reset of a request it cannot take, such as a
/// CONNECT with a content-length. The gateway's handler cannot fail (its
/// error type is `Infallible`), and its own resets (NO_ERROR, CANCEL, or INTERNAL_ERROR for a failed
/// response body) come after a response head.
const APP_FAULT_CODES: [u32; 6] = [0x1, 0x2, 0x3, 0x5, 0x6, 0x7];

/// One frame's header (RFC 9113 section 4.1).
#[derive(Debug, Clone, Copy)]
struct FrameHead {
    length: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// A reader of frame boundaries in one direction of a connection. It keeps
/// each frame's header and the first 4 payload bytes, and skips the rest.
#[derive(Debug, Default)]
struct FrameCursor {
    /// Bytes still to skip before the first frame.
    skip: usize,
    header: [u8; 9],
    header_filled: usize,
    current: Option<FrameHead>,
    /// Payload bytes of the current frame not yet passed.
    payload_left: usize,
    payload_start: [u8; 4],
    payload_start_filled: usize,
}

impl FrameCursor {
    /// Passes `bytes` and calls `complete` with each frame whose payload
    /// has been passed, and the first bytes of that payload.
    fn feed(&mut self, mut bytes: &[u8], mut complete: impl FnMut(FrameHead, &[u8])) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let skipped = self.skip.min(bytes.len());
                self.skip -= skipped;
                bytes = &bytes[skipped..];
                continue;
            }

            let Some(head) = self.current else {
                let header_bytes = (9 - self.header_filled).min(bytes.len());
                let end = self.header_filled + header_bytes;
                self.header[self.header_filled..end].copy_from_slice(&bytes[..header_bytes]);
                self.header_filled = end;
                bytes = &bytes[header_bytes..];
                if self.header_filled == 9 {
                    let head = parse_head(&self.header);
                    self.header_filled = 0;
                    self.payload_start_filled = 0;
                    if head.length == 0 {
                        complete(head, &[]);
                    } else {
                        self.current = Some(head);
                        self.payload_left = head.length;
                    }
                }
                continue;
            };

            let passed = self.payload_left.min(bytes.len());
            let start_bytes = (self.payload_start.len() - self.payload_start_filled).min(passed);
            let end = self.payload_start_filled + start_bytes;
            self.payload_start[self.payload_start_filled..end].copy_from_slice(&bytes[..start_bytes]);
            self.payload_start_filled = end;
            self.payload_left -= passed;
            bytes = &bytes[passed..];
            if self.payload_left == 0 {
                self.current = None;
                complete(head, &self.payload_start[..self.payload_start_filled]);
            }
        }
    }
}

fn parse_head(header: &[u8; 9]) -> FrameHead {
    FrameHead {
        length: usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]),
        kind: header[3],
        flags: header[4],
        // The reserved high bit is not part of the id.
        stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
    }
}

/// The frame state of one HTTP/2 connection: what the app sent on each
/// open stream, and which rejections h2 sent back.
#[derive(Debug)]
pub(crate) struct FrameWatch {
    inbound: FrameCursor,
    outbound: FrameCursor,
    /// Streams the app opened to which the gateway has sent neither a
    /// response head nor a reset.
    unanswered: BTreeSet<u32>,
    /// The highest stream id the app has opened.
    highest_opened: u32,
}

impl Default for FrameWatch {
    fn default() -> Self {
        Self {
            inbound: FrameCursor { skip: CLIENT_PREFACE_LENGTH, ..FrameCursor::default() },
            outbound: FrameCursor::default(),
            unanswered: BTreeSet::new(),
            highest_opened: 0,
        }
    }
}

impl FrameWatch {
    /// Passes bytes that the app sent, after TLS.
    pub fn inbound(&mut self, bytes: &[u8]) {
        let Self { inbound, unanswered, highest_opened, .. } = self;
        inbound.feed(bytes, |head, _| {
            // Only a HEADERS frame with a new stream id opens a stream.
            // Trailers, DATA, RST_STREAM and the rest leave the stream
            // unanswered, because h2 may still reset it for its head.
            if head.kind != HEADERS || head.stream <= *highest_opened {
                return;
            }
            *highest_opened = head.stream;
            unanswered.insert(head.stream);
            if unanswered.len() > MAX_WATCHED_STREAMS {
                unanswered.pop_first();
            }
        });
    }

    /// Passes bytes that the gateway sent, before TLS, and returns the
    /// rejections among them.
    pub fn outbound(&mut self, bytes: &[u8]) -> Vec<StreamRejection> {
        let Self { outbound, unanswered, .. } = self;
        let mut rejections = Vec::new();
        outbound.feed(bytes, |head, payload| {
            if head.kind != HEADERS && head.kind != RST_STREAM {
                return;
            }
            if !unanswered.remove(&head.stream) {
                return;
            }

            if head.kind == HEADERS && head.flags & END_STREAM != 0 && head.length <= BARE_STATUS_BLOCK {
                rejections.push(StreamRejection::HeadersTooLarge { stream: head.stream });
            }
            if head.kind == RST_STREAM && payload.len() == 4 {
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                if APP_FAULT_CODES.contains(&code) {
                    rejections.push(StreamRejection::Reset { stream: head.stream, code });
                }
            }
        });
        rejections
    }
}

/// The callback that records a rejection.
pub(crate) type ReportRejection = Arc<dyn Fn(StreamRejection) + Send + Sync>;

/// REFUSED_STREAM (RFC 9113 section 7): h2 rejected the stream before
/// hyper passed it on, so no handler ever receives it.
const REFUSED_STREAM: u32 = 0x7;

/// How long the event of a reset waits before it is recorded, so that the
/// handler of a request that h2 reset can take it over. A handler learns
/// of the reset within [`crate::body::RESET_CHECK_DELAY`].
pub(crate) const RESET_EVENT_DELAY: Duration = Duration::from_millis(200);

/// The resets of one HTTP/2 connection's streams that the frame watch
/// found, shared with the handlers of the connection's requests, so that
/// a request that reached its handler before h2 reset it gets one access
/// event, not two.
///
/// The watch reads h2's RST_STREAM as h2 writes it, before the handler of a
/// request on that stream, if any, learns of the reset. So
/// [`ResetLedger::hold`] keeps each reset back for [`RESET_EVENT_DELAY`].
/// A handler that learns that h2 reset its request calls
/// [`ResetLedger::claim`], which takes a held reset with the same code,
/// and records the request's own event with its method, path and route.
/// Once the delay has passed, the watch records the reset's event, and a
/// handler that claims it within another delay records none.
///
/// NOTE: hyper passes no stream id to the handler, so a claim takes the
/// oldest reset with the same code. The number of events is right when
/// each reset is claimed within the delays, but when h2 resets two streams
/// of one connection with the same code at once, an event may carry the
/// other stream's request. A handler learns of a reset only from its
/// request body. h2 can also reset a stream after the body has ended, for
/// a WINDOW_UPDATE overflow or HEADERS after END_STREAM, and hyper then
/// lets the handler run on until the upstream responds. Such a request
/// still gets two events: the reset's 400 and the handler's.
#[derive(Debug, Default)]
pub(crate) struct ResetLedger {
    state: Mutex<LedgerState>,
}

#[derive(Debug, Default)]
struct LedgerState {
    /// Held resets, oldest first, each with the time its event is due.
    held: VecDeque<(Instant, StreamRejection)>,
    /// Error codes of resets whose events the watch recorded and that no
    /// handler has claimed, each with the time until which it can be.
    recorded: VecDeque<(Instant, u32)>,
}

impl LedgerState {
    /// Drops the recorded resets that can no longer be claimed at `now`.
    fn expire(&mut self, now: Instant) {
        while self.recorded.front().is_some_and(|(until, _)| *until <= now) {
            self.recorded.pop_front();
        }
    }
}

/// The handler's part in the event of a request that h2 reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Record the request's event, which also records the reset.
    Record,
    /// Record nothing, because the watch has recorded the reset.
    AlreadyRecorded,
}

impl ResetLedger {
    /// Returns whether a handler may see `rejection`, so that its event
    /// must be held back. A 431 or a refused stream never reaches one.
    pub fn holds(rejection: StreamRejection) -> bool {
        matches!(rejection, StreamRejection::Reset { code, .. } if code != REFUSED_STREAM)
    }

    /// Holds `rejection` back and returns the time its event is due.
    pub fn hold(&self, rejection: StreamRejection, now: Instant) -> Instant {
        let due = now + RESET_EVENT_DELAY;
        self.lock().held.push_back((due, rejection));
        due
    }

    /// Removes the held resets whose events are due at `now` and keeps
    /// them claimable for another [`RESET_EVENT_DELAY`]. The caller
    /// records their events.
    pub fn take_due(&self, now: Instant) -> Vec<StreamRejection> {
        let mut state = self.lock();
        state.expire(now);
        let mut due = Vec::new();
        while let Some(&(at, rejection)) = state.held.front()
            && at <= now
        {
            state.held.pop_front();
            if let StreamRejection::Reset { code, .. } = rejection {
                state.recorded.push_back((now + RESET_EVENT_DELAY, code));
            }
            due.push(rejection);
        }
        due
    }

    /// Claims the event of a reset with `code` for a handler whose request
    /// h2 reset with that code.
    pub fn claim(&self, code: u32, now: Instant) -> Claim {
        let mut state = self.lock();
        state.expire(now);
        let fits = |rejection: &StreamRejection| matches!(rejection, StreamRejection::Reset { code: held, .. } if *held == code);
        if let Some(index) = state.held.iter().position(|(_, rejection)| fits(rejection)) {
            state.held.remove(index);
            return Claim::Record;
        }
        if let Some(index) = state.recorded.iter().position(|(_, recorded)| *recorded == code) {
            state.recorded.remove(index);
            return Claim::AlreadyRecorded;
        }
        // The watch saw no such reset, so only the handler's event
        // records it.
        Claim::Record
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An I/O stream that passes every byte to a [`FrameWatch`] when `watch`
/// is set, and reports the rejections found. Without a watch it only passes
/// the calls on, for HTTP/1.1 connections.
pub(crate) struct WatchedIo<S> {
    inner: S,
    watch: Option<(FrameWatch, ReportRejection)>,
}

impl<S> WatchedIo<S> {
    /// Wraps `inner`, watching its frames if `watch` is set.
    pub fn new(inner: S, watch: Option<ReportRejection>) -> Self {
        Self { inner, watch: watch.map(|report| (FrameWatch::default(), report)) }
    }

    fn written(&mut self, chunks: &[&[u8]]) {
        if let Some((watch, report)) = &mut self.watch {
            for chunk in chunks {
                for rejection in watch.outbound(chunk) {
                    report(rejection);
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some((watch, _)) = &mut self.watch {
            watch.inbound(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            self.written(&[&buf[..written]]);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        // HTTP/1.1 connections have no watch and skip the list of chunks.
        if let Poll::Ready(Ok(written)) = polled
            && self.watch.is_some()
        {
            let mut left = written;
            let mut chunks = Vec::with_capacity(bufs.len());
            for buf in bufs {
                let written_here = left.min(buf.len());
                chunks.push(&buf[..written_here]);
                left -= written_here;
            }
            self.written(&chunks);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: u8 = 0x0;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = payload.len() as u32;
        let mut bytes = length.to_be_bytes()[1..].to_vec();
        bytes.extend_from_slice(&[kind, flags]);
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn reset(stream: u32, code: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &code.to_be_bytes())
    }

    /// Returns a watch past the preface and the app's SETTINGS frame.
    fn started() -> FrameWatch {
        let mut watch = FrameWatch::default();
        watch.inbound(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        watch.inbound(&frame(0x4, 0, 0, &[]));
        watch
    }

    #[test]
    fn reset_of_a_bare_head_is_reported() {
        let mut watch = started();
        watch.inbound(&frame(HEADERS, 0x5, 1, &[0x82; 20]));
        assert_eq!(watch.outbound(&reset(1, 0x1)), [StreamRejection::Reset { stream: 1, code: 0x1 }]);
        assert_eq!(watch.outbound(&reset(1, 0x1)), [], "a stream is reported once");
    }

    #[test]
    fn bare_431_is_reported_once() {
        let mut watch = started();
        watch.inbound(&frame(HEADERS, 0x4, 3, &[0; 100]));
        let mut sent = frame(HEADERS, 0x5, 3, &[0x48, 0x03, b'4', b'3', b'1']);
        sent.extend(reset(3, 0x1));
        assert_eq!(watch.outbound(&sent), [StreamRejection::HeadersTooLarge { stream: 3 }]);
    }

    #[test]
    fn reset_after_more_frames_is_reported() {
        let cases: [(&str, Vec<u8>); 5] = [
            ("body frame", frame(DATA, 0, 1, b"x")),
            ("trailers", frame(HEADERS, 0x5, 1, &[0x82])),
            ("WINDOW_UPDATE", frame(0x8, 0, 1, &[0, 0, 0, 0])),
            ("the app's own RST_STREAM", frame(RST_STREAM, 0, 1, &[0, 0, 0, 0x8])),
            ("unknown frame type", frame(0x20, 0, 1, b"")),
        ];
        for (case, more_inbound) in cases {
            let mut watch = started();
            watch.inbound(&[frame(HEADERS, 0x4, 1, &[0x82]), more_inbound].concat());
            assert_eq!(watch.outbound(&reset(1, 0x1)), [StreamRejection::Reset { stream: 1, code: 0x1 }], "{case}");
        }
    }

    #[test]
    fn answered_streams_are_not_reported() {
        let cases: [(&str, Vec<u8>); 4] = [
            ("own CANCEL", reset(1, 0x8)),
            ("own NO_ERROR", reset(1, 0x0)),
            ("response head with a request id", frame(HEADERS, 0x5, 1, &[0; 40])),
            ("reset after a response head", [frame(HEADERS, 0x4, 1, &[0; 40]), reset(1, 0x2)].concat()),
        ];
        for (case, sent) in cases {
            let mut watch = started();
            watch.inbound(&frame(HEADERS, 0x4, 1, &[0x82]));
            assert_eq!(watch.outbound(&sent), [], "{case}");
        }
    }

    #[test]
    fn unanswered_streams_are_bounded() {
        let mut watch = started();
        for index in 0..MAX_WATCHED_STREAMS as u32 + 10 {
            watch.inbound(&frame(HEADERS, 0x5, 2 * index + 1, &[0x82]));
        }
        assert_eq!(watch.unanswered.len(), MAX_WATCHED_STREAMS);
        assert_eq!(watch.outbound(&reset(1, 0x1)), [], "the oldest stream was pushed out");
        assert_eq!(watch.outbound(&reset(21, 0x1)), [StreamRejection::Reset { stream: 21, code: 0x1 }]);
    }

    #[test]
    fn trailers_after_a_response_are_not_431() {
        let mut watch = started();
        watch.inbound(&frame(HEADERS, 0x5, 1, &[0x82]));
        assert_eq!(watch.outbound(&frame(HEADERS, 0x4, 1, &[0; 40])), []);
        assert_eq!(watch.outbound(&frame(HEADERS, 0x5, 1, &[0xbe])), [], "a 1-byte trailer block");
    }

    #[test]
    fn frames_split_at_every_byte() {
        let mut inbound = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        inbound.extend(frame(HEADERS, 0x5, 1, &[0x82; 30]));
        inbound.extend(frame(HEADERS, 0x5, 3, &[0x82; 30]));
        let mut outbound = frame(0x4, 0, 0, &[0; 6]);
        outbound.extend(reset(1, 0x7));
        outbound.extend(frame(HEADERS, 0x5, 3, &[0x88]));

        let mut watch = FrameWatch::default();
        for byte in &inbound {
            watch.inbound(std::slice::from_ref(byte));
        }
        let rejections: Vec<_> = outbound.iter().flat_map(|byte| watch.outbound(std::slice::from_ref(byte))).collect();
        assert_eq!(
            rejections,
            [StreamRejection::Reset { stream: 1, code: 0x7 }, StreamRejection::HeadersTooLarge { stream: 3 }]
        );
    }

    fn stream_reset(stream: u32, code: u32) -> StreamRejection {
        StreamRejection::Reset { stream, code }
    }

    fn ledger() -> ResetLedger {
        ResetLedger::default()
    }

    /// A handler that claims within the delay takes the held reset, whose
    /// event then never becomes due.
    #[test]
    fn ledger_claim_within_the_delay_takes_the_reset() {
        let ledger = ledger();
        let start = Instant::now();
        ledger.hold(stream_reset(1, 0x1), start);

        assert_eq!(ledger.claim(0x1, start), Claim::Record);
        assert_eq!(ledger.take_due(start + RESET_EVENT_DELAY), Vec::new());
    }

    /// Once the watch has recorded a reset, one claim of its code within
    /// another delay records nothing, and a claim beyond that records its
    /// own event.
    #[test]
    fn ledger_claim_after_the_delay_records_once() {
        let ledger = ledger();
        let start = Instant::now();
        let due = ledger.hold(stream_reset(1, 0x1), start);

        assert_eq!(ledger.take_due(due), vec![stream_reset(1, 0x1)]);
        assert_eq!(ledger.claim(0x1, due), Claim::AlreadyRecorded);
        assert_eq!(ledger.claim(0x1, due), Claim::Record);
    }

    /// A recorded reset that no handler claimed in time is not taken by a
    /// later request's claim, which then records its own event.
    #[test]
    fn ledger_recorded_resets_expire() {
        let ledger = ledger();
        let start = Instant::now();
        let due = ledger.hold(stream_reset(1, 0x1), start);
        ledger.take_due(due);

        assert_eq!(ledger.claim(0x1, due + RESET_EVENT_DELAY), Claim::Record);
    }

    /// A claim takes only a reset with its own code, and resets become due
    /// in the order they were held.
    #[test]
    fn ledger_claim_matches_the_code() {
        let ledger = ledger();
        let start = Instant::now();
        ledger.hold(stream_reset(1, 0x1), start);
        ledger.hold(stream_reset(3, 0x3), start + Duration::from_millis(1));
        ledger.hold(stream_reset(5, 0x1), start + Duration::from_millis(2));

        assert_eq!(ledger.claim(0x3, start), Claim::Record);
        assert_eq!(ledger.take_due(start + RESET_EVENT_DELAY), vec![stream_reset(1, 0x1)]);
        let later = start + RESET_EVENT_DELAY + Duration::from_millis(2);
        assert_eq!(ledger.take_due(later), vec![stream_reset(5, 0x1)]);
        assert_eq!(ledger.claim(0x3, later), Claim::Record, "the recorded resets have another code");
    }

    /// Only resets that a handler may see are held: not h2's 431 and not
    /// REFUSED_STREAM.
    #[test]
    fn ledger_holds_only_resets_a_handler_may_see() {
        assert!(ResetLedger::holds(stream_reset(1, 0x1)));
        assert!(ResetLedger::holds(stream_reset(1, 0x3)));
        assert!(!ResetLedger::holds(stream_reset(1, REFUSED_STREAM)));
        assert!(!ResetLedger::holds(StreamRejection::HeadersTooLarge { stream: 1 }));
    }
}
