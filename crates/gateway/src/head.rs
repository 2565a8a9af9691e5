//! A check of every HTTP/1.1 request head before hyper reads it.
//!
//! hyper settles two framing cases on its own, before the gateway's
//! handler receives the request: with Content-Length next to a chunked
//! Transfer-Encoding it drops Content-Length, and of two equal
//! Content-Length lines it keeps one. A careful proxy rejects both with
//! 400 (RFC 9112 section 6.3 allows a server to, and RFC 9110 section 8.6
//! to reject a repeated length), because another hop may have framed the
//! same bytes differently. hyper offers no hook on the raw head, so
//! [`HeadCheckedIo`] sits between the TLS stream and hyper. It parses each
//! request head with httparse (the parser hyper itself uses), follows the
//! body's framing to find where the next head starts, and holds back a head
//! whose framing is ambiguous. hyper never receives it: it reads the
//! requests before it, then end of stream, responds to those requests and
//! ends the connection, and the gateway then sends 400 for the held head.
//! hyper must run with `half_close(true)`, or it would treat that end of
//! stream as the app leaving and drop the responses still in progress.
//!
//! Invariants: bytes reach hyper unchanged and in the order they arrived.
//! A head is passed on only whole and only after the check. A rejected
//! head and everything after it are never passed on.
//!
//! A head that httparse rejects (a space or control character in a header
//! name, obsolete line folding, a bare CR) or that does not end within
//! hyper's buffer is held back the same way. The gateway then responds
//! with its own JSON error body and access event rather than hyper's empty
//! 400 or 431. The scanner stops checking and passes bytes through only
//! inside a chunked body that hyper would reject, and hyper then rejects
//! the same bytes and closes the connection.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// hyper's limit on header lines in a request head. httparse gets the same
/// limit, so hyper rejects a head with more lines (431).
const MAX_HEADERS: usize = 100;

/// The initial size of a connection's head buffer, in bytes. The buffer
/// doubles whenever a longer head needs it.
const INITIAL_BUFFER: usize = 4096;

/// The longest Content-Length value accepted: 19 digits always fit a u64.
const MAX_LENGTH_DIGITS: usize = 19;

/// A request head the scanner rejected, with what the access event needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// The method, or empty if the head could not be parsed.
    pub method: String,
    /// The request target up to `?`, lossily decoded, or empty if the head
    /// could not be parsed.
    pub path: String,
    /// Why, naming the header (for the log, not the app).
    pub reason: String,
    /// The head did not end within `max_head` bytes (431, not 400).
    pub too_large: Option<usize>,
}

/// The place where the scanner leaves a rejection for the connection task,
/// which sends the 400 once hyper has finished the requests before it.
#[derive(Debug, Default)]
pub(crate) struct RejectionSlot {
    rejection: Mutex<Option<Rejection>>,
    /// Set when hyper has read every byte before the rejected head and
    /// asked for more, so the head is the next request it would have read.
    reached: std::sync::atomic::AtomicBool,
    /// Set while part of a request head has arrived but not yet gone to
    /// hyper. For hyper the connection then looks idle.
    head_pending: std::sync::atomic::AtomicBool,
}

impl RejectionSlot {
    fn set(&self, rejection: Rejection) {
        *self.rejection.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(rejection);
    }

    /// Returns whether part of a request head has arrived and waits for
    /// the rest, so a header read timeout now cuts a request, not an idle
    /// keep-alive connection.
    pub fn head_pending(&self) -> bool {
        self.head_pending.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn mark_reached(&self) {
        self.reached.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes the rejection if hyper reached the rejected head. A head
    /// behind a request that ended the connection (`Connection: close`, or
    /// an error hyper responded to) is never read, so it gets no response.
    pub fn take_reached(&self) -> Option<Rejection> {
        let rejection = self.rejection.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()?;
        if self.reached.load(std::sync::atomic::Ordering::Relaxed) {
            return Some(rejection);
        }
        tracing::debug!(reason = %rejection.reason, "rejected request head not reached before the connection ended");
        None
    }
}

/// The scanner's position in the request stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a request head.
    Head,
    /// In a Content-Length body with this many bytes left.
    Length(u64),
    /// In a chunked body (RFC 9112 section 7.1).
    Chunked(Chunk),
    /// Not checking any more, because hyper rejects what follows.
    Passthrough,
    /// A head was rejected, so nothing more is passed on.
    Rejected,
}

/// The position inside a chunked body, as hyper's decoder tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// `digit` records whether the size has at least one hex digit.
    Size {
        size: u64,
        digit: bool,
    },
    SizeSpace {
        size: u64,
    },
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
}

/// The result of [`Scanner::scan`] over a run of not yet approved bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// How many bytes from the start may go to hyper.
    pub approved: usize,
    /// Set when the head right after the approved bytes was rejected.
    pub rejection: Option<Rejection>,
}

/// Follows the requests of one HTTP/1.1 connection.
#[derive(Debug)]
pub(crate) struct Scanner {
    state: State,
    /// How many bytes of the waiting head are known to hold no end of
    /// head, so that each read parses again only when new bytes may end it.
    head_checked: usize,
}

impl Scanner {
    /// Creates a scanner at the start of a connection. With `enabled =
    /// false` it passes everything through (HTTP/2 connections).
    pub fn new(enabled: bool) -> Self {
        Self { state: if enabled { State::Head } else { State::Passthrough }, head_checked: 0 }
    }

    fn passthrough(&self) -> bool {
        self.state == State::Passthrough
    }

    fn rejected(&self) -> bool {
        self.state == State::Rejected
    }

    /// Stops checking, for a stream that ends inside a head.
    fn give_up(&mut self) {
        if self.state != State::Rejected {
            self.state = State::Passthrough;
        }
    }

    /// Rejects the waiting head because it did not end within `max_head`
    /// bytes.
    fn reject_too_large(&mut self, max_head: usize) -> Rejection {
        self.state = State::Rejected;
        Rejection {
            method: String::new(),
            path: String::new(),
            reason: format!("request head does not end within {max_head} bytes"),
            too_large: Some(max_head),
        }
    }

    /// Scans `bytes`, which start where the last approved byte ended, as
    /// far as it can. Bytes of an incomplete head are not approved, so the
    /// caller passes them again with more bytes behind them.
    pub fn scan(&mut self, bytes: &[u8]) -> Scanned {
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                State::Rejected => break,
                State::Passthrough => at = bytes.len(),
                State::Head if !may_end_head(&bytes[at..], self.head_checked) => {
                    self.head_checked = bytes.len() - at;
                    break;
                }
                State::Head => match check_head(&bytes[at..]) {
                    HeadCheck::Partial => {
                        self.head_checked = bytes.len() - at;
                        break;
                    }
                    HeadCheck::Unparsable(error) => {
                        self.state = State::Rejected;
                        let rejection = Rejection {
                            method: String::new(),
                            path: String::new(),
                            reason: format!("malformed request head: {error}"),
                            too_large: None,
                        };
                        return Scanned { approved: at, rejection: Some(rejection) };
                    }
                    HeadCheck::Rejected(rejection) => {
                        self.state = State::Rejected;
                        return Scanned { approved: at, rejection: Some(rejection) };
                    }
                    HeadCheck::Complete { length, body } => {
                        at += length;
                        self.state = body;
                        self.head_checked = 0;
                    }
                },
                State::Length(left) => {
                    let take = left.min((bytes.len() - at) as u64);
                    at += take as usize;
                    self.state = if take == left { State::Head } else { State::Length(left - take) };
                }
                State::Chunked(Chunk::Data(left)) => {
                    let take = left.min((bytes.len() - at) as u64);
                    at += take as usize;
                    self.state = State::Chunked(if take == left { Chunk::DataCr } else { Chunk::Data(left - take) });
                }
                State::Chunked(chunk) => {
                    self.state = step_chunked(chunk, bytes[at]);
                    at += 1;
                }
            }
        }
        Scanned { approved: at, rejection: None }
    }
}

/// Returns whether `head` may contain the end of a request head (an empty
/// line, `\n\n` or `\n\r\n`) after its first `checked` bytes, which are
/// known to hold none. hyper guards its own parser the same way.
fn may_end_head(head: &[u8], checked: usize) -> bool {
    let from = checked.saturating_sub(2);
    let Some(tail) = head.get(from..) else { return false };

    // memchr finds each line feed with vector instructions. A head of about
    // 1 KiB has a dozen of them, so this costs far less than comparing every
    // pair and triple of bytes.
    memchr::memchr_iter(b'\n', tail).any(|at| match &tail[at + 1..] {
        [b'\n', ..] | [b'\r', b'\n', ..] => true,
        _ => false,
    })
}

/// Moves the chunked-body position over one byte. Whatever hyper's decoder
/// would reject ends the check ([`State::Passthrough`]).
fn step_chunked(chunk: Chunk, byte: u8) -> State {
    let next = match (chunk, byte) {
        (Chunk::Size { size, .. }, _) if byte.is_ascii_hexdigit() => {
            let value = u64::from(char::from(byte).to_digit(16).unwrap_or(0));
            match size.checked_mul(16).and_then(|s| s.checked_add(value)) {
                Some(size) => Chunk::Size { size, digit: true },
                None => return State::Passthrough,
            }
        }
        (Chunk::Size { digit: false, .. }, _) => return State::Passthrough,
        (Chunk::Size { size, .. } | Chunk::SizeSpace { size }, b' ' | b'\t') => Chunk::SizeSpace { size },
        (Chunk::Size { size, .. } | Chunk::SizeSpace { size } | Chunk::Extension { size }, b';') => {
            Chunk::Extension { size }
        }
        (Chunk::Size { size, .. } | Chunk::SizeSpace { size } | Chunk::Extension { size }, b'\r') => {
            Chunk::SizeLf { size }
        }
        (Chunk::Extension { .. }, b'\n') => return State::Passthrough,
        (Chunk::Extension { size }, _) => Chunk::Extension { size },
        (Chunk::SizeLf { size: 0 }, b'\n') => Chunk::TrailerStart,
        (Chunk::SizeLf { size }, b'\n') => Chunk::Data(size),
        (Chunk::DataCr, b'\r') => Chunk::DataLf,
        (Chunk::DataLf, b'\n') => Chunk::Size { size: 0, digit: false },
        (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
        (Chunk::TrailerStart | Chunk::TrailerLine, b'\n') => return State::Passthrough,
        (Chunk::TrailerLine, b'\r') => Chunk::TrailerLf,
        (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
        (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
        (Chunk::EndLf, b'\n') => return State::Head,
        _ => return State::Passthrough,
    };
    State::Chunked(next)
}

/// The outcome of checking the bytes at the start of a head.
#[derive(Debug)]
enum HeadCheck {
    /// More bytes are needed.
    Partial,
    /// httparse rejects the head, so hyper would reject it too.
    Unparsable(httparse::Error),
    Rejected(Rejection),
    /// A head of `length` bytes followed by a body framed as `body`.
    Complete {
        length: usize,
        body: State,
    },
}

/// Parses one request head and decides its body framing (RFC 9112
/// section 6.3). It rejects every head whose framing another parser could
/// read differently: Content-Length next to Transfer-Encoding, more than
/// one Content-Length line (equal or not), a Content-Length that is not
/// plain digits, Transfer-Encoding outside HTTP/1.1, and any
/// Transfer-Encoding other than exactly `chunked`.
fn check_head(bytes: &[u8]) -> HeadCheck {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return HeadCheck::Partial,
        Err(error) => return HeadCheck::Unparsable(error),
    };

    let mut lengths = Vec::new();
    let mut codings = Vec::new();
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            lengths.push(header.value);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            codings.extend(header.value.split(|&b| b == b',').map(|coding| coding.trim_ascii()));
        }
    }
    let reject = |reason: String| {
        let target = request.path.unwrap_or_default();
        HeadCheck::Rejected(Rejection {
            method: request.method.unwrap_or_default().to_owned(),
            path: target.split('?').next().unwrap_or_default().to_owned(),
            reason,
            too_large: None,
        })
    };

    if !codings.is_empty() {
        if !lengths.is_empty() {
            return reject("both Content-Length and Transfer-Encoding".to_owned());
        }
        if request.version != Some(1) {
            return reject("Transfer-Encoding outside HTTP/1.1".to_owned());
        }
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case(b"chunked") {
            let named: Vec<String> = codings.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
            return reject(format!("Transfer-Encoding {named:?} is not exactly chunked"));
        }
        return HeadCheck::Complete { length, body: State::Chunked(Chunk::Size { size: 0, digit: false }) };
    }

    match lengths.as_slice() {
        [] => HeadCheck::Complete { length, body: State::Head },
        [value] => {
            let value = value.trim_ascii();
            let parsed =
                (!value.is_empty() && value.len() <= MAX_LENGTH_DIGITS && value.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(value).ok()?.parse::<u64>().ok())
                    .flatten();
            match parsed {
                Some(0) => HeadCheck::Complete { length, body: State::Head },
                Some(size) => HeadCheck::Complete { length, body: State::Length(size) },
                None => reject(format!("invalid Content-Length {:?}", String::from_utf8_lossy(value))),
            }
        }
        several => reject(format!("{} Content-Length headers", several.len())),
    }
}

/// The connection stream given to hyper. Reads pass through [`Scanner`],
/// and writes go straight to `inner`.
pub(crate) struct HeadCheckedIo<S> {
    inner: S,
    scanner: Scanner,
    /// Bytes read from `inner`: `buf[start..approved]` may go to hyper,
    /// `buf[approved..end]` wait for the rest of their head. It grows up
    /// to `max_head` bytes as heads need it.
    buf: Vec<u8>,
    max_head: usize,
    start: usize,
    approved: usize,
    end: usize,
    slot: std::sync::Arc<RejectionSlot>,
}

impl<S> HeadCheckedIo<S> {
    /// Wraps `inner`. `max_head` must be hyper's `max_buf_size`: a head
    /// that does not complete within it is left for hyper to reject.
    pub fn new(inner: S, enabled: bool, max_head: usize, slot: std::sync::Arc<RejectionSlot>) -> Self {
        let buf = if enabled { vec![0; INITIAL_BUFFER.min(max_head)] } else { Vec::new() };
        Self { inner, scanner: Scanner::new(enabled), buf, max_head, start: 0, approved: 0, end: 0, slot }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadCheckedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.approved > this.start {
                let n = (this.approved - this.start).min(out.remaining());
                out.put_slice(&this.buf[this.start..this.start + n]);
                this.start += n;
                return Poll::Ready(Ok(()));
            }
            if this.scanner.rejected() {
                // End of stream: hyper responds to the requests it has read
                // and ends the connection, then the task sends the 400.
                this.slot.mark_reached();
                return Poll::Ready(Ok(()));
            }
            if this.scanner.passthrough() && this.start == this.end {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }

            // Move the waiting head to the front, then read behind it.
            this.buf.copy_within(this.start..this.end, 0);
            this.end -= this.start;
            this.approved = 0;
            this.start = 0;
            if this.end == this.buf.len() && this.buf.len() < this.max_head {
                let grown = (this.buf.len() * 2).min(this.max_head);
                this.buf.resize(grown, 0);
            }
            if this.end == this.buf.len() {
                // Only a head waits unapproved, and it does not end within
                // hyper's buffer.
                let rejection = this.scanner.reject_too_large(this.max_head);
                tracing::info!(reason = %rejection.reason, "request head rejected");
                this.slot.set(rejection);
                continue;
            }
            let mut read = ReadBuf::new(&mut this.buf[this.end..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let filled = read.filled().len();
            if filled == 0 {
                // End of stream: hand over any partial head, which hyper
                // reports as an incomplete message.
                this.scanner.give_up();
                if this.end == 0 {
                    return Poll::Ready(Ok(()));
                }
                this.approved = this.end;
                continue;
            }
            this.end += filled;

            let scanned = this.scanner.scan(&this.buf[this.approved..this.end]);
            this.approved += scanned.approved;
            let pending = this.approved < this.end && !this.scanner.rejected();
            this.slot.head_pending.store(pending, std::sync::atomic::Ordering::Relaxed);
            if let Some(rejection) = scanned.rejection {
                tracing::info!(reason = %rejection.reason, method = %rejection.method, "request head rejected");
                this.slot.set(rejection);
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadCheckedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// After a rejection the connection task still writes the 400, so
    /// hyper's shutdown only flushes.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.scanner.rejected() {
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `stream` whole, then again fed one byte at a time (rescanning
    /// unapproved bytes as the IO wrapper does); both must agree.
    fn scan_all(stream: &[u8]) -> Scanned {
        let whole = Scanner::new(true).scan(stream);

        let mut scanner = Scanner::new(true);
        let mut approved = 0;
        let mut rejection = None;
        for end in 1..=stream.len() {
            let scanned = scanner.scan(&stream[approved..end]);
            approved += scanned.approved;
            if scanned.rejection.is_some() {
                rejection = scanned.rejection;
                break;
            }
        }
        assert_eq!(whole, Scanned { approved, rejection: rejection.clone() }, "byte-wise scan differs");
        whole
    }

    const GET: &str = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n";

    #[test]
    fn scanner_follows_heads_and_bodies() {
        let cases: &[(&str, String)] = &[
            ("no body", format!("{GET}{GET}")),
            ("length body", format!("POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello{GET}")),
            ("zero length", format!("POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n{GET}")),
            (
                "chunked",
                format!(
                    "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{GET}"
                ),
            ),
            (
                "chunked with extension, spaces and trailer",
                format!(
                    "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\nA ;x=y\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n{GET}"
                ),
            ),
            ("leading empty line", format!("\r\n{GET}{GET}")),
            ("bare LF line ends", format!("GET /a HTTP/1.1\nHost: h\n\n{GET}")),
            (
                "long chunk size with leading zeros",
                format!(
                    "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{}5\r\nhello\r\n0\r\n\r\n{GET}",
                    "0".repeat(40)
                ),
            ),
        ];
        for (name, stream) in cases {
            let scanned = scan_all(stream.as_bytes());
            assert_eq!(scanned, Scanned { approved: stream.len(), rejection: None }, "{name}");
        }
    }

    #[test]
    fn scanner_rejects_ambiguous_framing() {
        let first = "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok";
        let cases: &[(&str, &str, &str)] = &[
            ("CL.TE", "Content-Length: 3\r\nTransfer-Encoding: chunked", "both Content-Length and Transfer-Encoding"),
            ("TE.CL", "Transfer-Encoding: chunked\r\nContent-Length: 3", "both Content-Length and Transfer-Encoding"),
            ("equal lengths", "Content-Length: 3\r\nContent-Length: 3", "2 Content-Length headers"),
            ("differing lengths", "Content-Length: 3\r\nContent-Length: 4", "2 Content-Length headers"),
            ("length list", "Content-Length: 3, 3", "invalid Content-Length \"3, 3\""),
            ("signed length", "Content-Length: +3", "invalid Content-Length \"+3\""),
            ("20 digits", "Content-Length: 00000000000000000003", "invalid Content-Length \"00000000000000000003\""),
            ("gzip", "Transfer-Encoding: gzip", "Transfer-Encoding [\"gzip\"] is not exactly chunked"),
            (
                "chunked twice",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                "Transfer-Encoding [\"chunked\", \"chunked\"] is not exactly chunked",
            ),
            ("substring", "Transfer-Encoding: xchunked", "Transfer-Encoding [\"xchunked\"] is not exactly chunked"),
        ];
        for (name, lines, reason) in cases {
            let stream = format!("{first}POST /y?q=1 HTTP/1.1\r\nHost: h\r\n{lines}\r\n\r\nabc{GET}");
            let scanned = scan_all(stream.as_bytes());
            let rejection =
                Rejection { method: "POST".into(), path: "/y".into(), reason: (*reason).into(), too_large: None };
            assert_eq!(scanned, Scanned { approved: first.len(), rejection: Some(rejection) }, "{name}");
        }
    }

    #[test]
    fn scanner_rejects_te_in_http_1_0() {
        let stream = "POST /z HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let scanned = scan_all(stream.as_bytes());
        assert_eq!(scanned.approved, 0);
        assert_eq!(scanned.rejection.unwrap().reason, "Transfer-Encoding outside HTTP/1.1");
    }

    #[test]
    fn scanner_rejects_malformed_heads() {
        // (case, second head, httparse's reason)
        let cases: &[(&str, &str, &str)] = &[
            ("space in name", "GET / HTTP/1.1\r\nX A: b\r\n\r\n", "invalid header name"),
            ("space before colon", "GET / HTTP/1.1\r\nX-A : b\r\n\r\n", "invalid header name"),
            ("obs-fold", "GET / HTTP/1.1\r\nX-A: b\r\n c\r\n\r\n", "invalid header name"),
            ("control in name", "GET / HTTP/1.1\r\nX\x01A: b\r\n\r\n", "invalid header name"),
            ("bare CR", "GET / HTTP/1.1\r\nX-A: b\rc\r\n\r\n", "invalid header value"),
            ("bad version", "GET / HTTP/9.9\r\n\r\n", "invalid HTTP version"),
        ];
        for (name, head, reason) in cases {
            let stream = format!("{GET}{head}{GET}");
            let scanned = scan_all(stream.as_bytes());
            assert_eq!(scanned.approved, GET.len(), "{name}: the first request passes");
            let rejection = scanned.rejection.unwrap_or_else(|| panic!("{name}: not rejected"));
            assert_eq!(rejection.reason, format!("malformed request head: {reason}"), "{name}");
            assert_eq!(rejection.too_large, None, "{name}");
        }
    }

    #[test]
    fn scanner_passes_hyper_errors_through() {
        let cases: &[(&str, String)] = &[
            (
                "bad chunk size",
                "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
                    .to_owned(),
            ),
            (
                "chunk without CRLF",
                format!("POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy0\r\n\r\n{GET}"),
            ),
        ];
        for (name, stream) in cases {
            let scanned = scan_all(stream.as_bytes());
            assert_eq!(scanned, Scanned { approved: stream.len(), rejection: None }, "{name}");
        }
    }

    #[test]
    fn head_end_search_skips_checked_bytes() {
        let head = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        assert!(may_end_head(head, 0));
        assert!(may_end_head(head, head.len() - 3), "marker spanning the checked boundary");
        assert!(!may_end_head(head, head.len() + 2));
        assert!(!may_end_head(b"GET / HTTP/1.1\r\nHost: h\r\n", 0));
        assert!(may_end_head(b"GET / HTTP/1.1\nHost: h\n\n", 0));
    }

    #[test]
    fn scanner_incomplete_head_waits() {
        let scanned = scan_all(b"GET / HTTP/1.1\r\nHost: h\r\n");
        assert_eq!(scanned, Scanned { approved: 0, rejection: None });
    }
}
