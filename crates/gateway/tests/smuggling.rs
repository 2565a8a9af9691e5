//! Request smuggling and framing cases sent as raw bytes over one TLS
//! connection: each is refused with 400, or handled so that the next
//! request on the connection is not desynchronised.
//!
//! A rejected request is never forwarded, and neither is anything behind it
//! on the connection: the gateway responds with 400 and closes.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(5);

/// The body of the first request. Read as chunked it would end after
/// `0\r\n\r\n` and leave `G` in front of the next request.
const BODY: &str = "0\r\n\r\nG";

fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b'x' => {
                    out.push(u8::from_str_radix(&text[i + 2..i + 4], 16).unwrap());
                    i += 2;
                }
                other => out.extend_from_slice(&[b'\\', other]),
            }
            i += 2;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// A POST carrying `header` (raw bytes) and Content-Length framing of
/// [`BODY`], followed on the same connection by a plain request.
fn pipelined(token: &str, header: &[u8]) -> Vec<u8> {
    let mut bytes = b"POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(
        format!("\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{BODY}", BODY.len()).as_bytes(),
    );
    bytes.extend_from_slice(
        format!("POST /records/v1/next HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    bytes
}

/// What the gateway did with a pipelined pair of requests.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// 400, and the upstream saw nothing.
    Refused,
    /// Both answered 200; the upstream saw both, the first with [`BODY`].
    LengthFramed,
    /// Anything else, described.
    Other(String),
}

fn outcome(h: &Harness, received: &str) -> Outcome {
    let seen = h.upstream.seen();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    let statuses = statuses(received);
    if statuses == [400] && seen.is_empty() {
        return Outcome::Refused;
    }
    if statuses == [200, 200] && targets == ["/records/v1/first", "/records/v1/next"] && seen[0].body == BODY.as_bytes()
    {
        return Outcome::LengthFramed;
    }
    Outcome::Other(format!("statuses {statuses:?}, upstream saw {targets:?}"))
}

/// Asserts that the exchange was refused with 400 and nothing reached the
/// upstream.
fn assert_refused(h: &Harness, name: &str, received: &str) {
    assert_eq!(statuses(received), [400], "{name}: {received}");
    assert!(h.upstream.seen().is_empty(), "{name}: upstream saw {:?}", h.upstream.seen());
}

/// Asserts that both requests were answered 200 and the upstream saw
/// exactly them, with the first body intact.
fn assert_handled(h: &Harness, name: &str, received: &str) {
    assert_eq!(statuses(received), [200, 200], "{name}: {received}");
    let seen = h.upstream.seen();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(targets, ["/records/v1/first", "/records/v1/next"], "{name}");
    assert_eq!(seen[0].body, BODY.as_bytes(), "{name}");
    assert_eq!(seen[1].body.len(), 0, "{name}");
}

#[tokio::test]
async fn transfer_encoding_mutations_from_smuggler() {
    let h = Harness::start(|_| {}).await;
    let token = h.token("records", &["records:read", "records:write"]);
    let table = include_str!("data/te-obfuscation-mutations.tsv");

    let mut checked = 0;
    let mut failures = Vec::new();
    for line in table.lines().skip(1) {
        let mut columns = line.split('\t');
        let (name, header, expected) = (columns.next().unwrap(), columns.next().unwrap(), columns.next().unwrap());
        h.upstream.clear();
        let received = h.raw(&pipelined(&token, &unescape(header)), WAIT).await;

        // A header that is not Transfer-Encoding leaves Content-Length in
        // charge. Every other row either is malformed or, when valid,
        // puts Transfer-Encoding next to Content-Length, and both are rejected.
        // (httparse ends a header line at a bare LF, so `x-nout` carries a
        // valid Transfer-Encoding line and is rejected for that.)
        let wanted = if expected.starts_with("other header") || expected.starts_with("not framing") {
            Outcome::LengthFramed
        } else {
            Outcome::Refused
        };
        let got = outcome(&h, &received);
        if got != wanted {
            failures.push(format!("{name}: got {got:?}, expected {wanted:?}"));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(checked, 30);
}

#[tokio::test]
async fn framing_cases_are_refused_or_handled() {
    let h = Harness::start(|_| {}).await;
    let token = h.token("records", &["records:read", "records:write"]);
    let auth = format!("Authorization: Bearer {token}\r\n");
    let next = format!(
        "POST /records/v1/next HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );

    let refused: Vec<(&str, String)> = vec![
        (
            "duplicate differing CL",
            format!(
                "POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 6\r\nContent-Length: 1\r\n\r\n{BODY}"
            ),
        ),
        (
            "CL list",
            format!("POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 6, 6\r\n\r\n{BODY}"),
        ),
        (
            "CL plus sign",
            format!("POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: +6\r\n\r\n{BODY}"),
        ),
        (
            "CL negative",
            format!("POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: -1\r\n\r\n"),
        ),
        (
            "TE gzip",
            format!("POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Transfer-Encoding: gzip\r\n\r\n"),
        ),
        (
            "TE gzip, chunked",
            format!(
                "POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "TE chunked twice",
            format!(
                "POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "obs-fold",
            format!(
                "POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}X-A: b\r\n c\r\nContent-Length: 0\r\n\r\n"
            ),
        ),
        (
            "space in name",
            format!("POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}X A: b\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "control in name",
            format!(
                "POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}X\x01A: b\r\nContent-Length: 0\r\n\r\n"
            ),
        ),
        (
            "NUL in value",
            format!(
                "POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}X-A: b\x00c\r\nContent-Length: 0\r\n\r\n"
            ),
        ),
        (
            "absolute-form elsewhere",
            format!(
                "POST https://evil.example/records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\n\r\n"
            ),
        ),
        (
            "absolute-form http",
            format!(
                "POST http://localhost/records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\n\r\n"
            ),
        ),
        ("missing Host", format!("POST /records/v1/first HTTP/1.1\r\n{auth}Content-Length: 0\r\n\r\n")),
        (
            "two Hosts",
            format!(
                "POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n{auth}Content-Length: 0\r\n\r\n"
            ),
        ),
        ("CONNECT", format!("CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n{auth}\r\n")),
    ];
    for (name, first) in &refused {
        h.upstream.clear();
        let received = h.raw(format!("{first}{next}").as_bytes(), WAIT).await;
        assert_refused(&h, name, &received);
    }

    let ambiguous: Vec<(&str, String)> = vec![
        (
            "CL.TE",
            format!(
                "POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n{BODY}"
            ),
        ),
        (
            "TE.CL",
            format!(
                "POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n{BODY}"
            ),
        ),
        (
            "duplicate equal CL",
            format!(
                "POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 6\r\nContent-Length: 6\r\n\r\n{BODY}"
            ),
        ),
    ];
    for (name, first) in &ambiguous {
        h.upstream.clear();
        let received = h.raw(format!("{first}{next}").as_bytes(), WAIT).await;
        assert_refused(&h, name, &received);
        assert!(received.contains("\"error\":\"invalid_request\""), "{name}: {received}");
        assert!(received.to_ascii_lowercase().contains("connection: close"), "{name}: {received}");
    }

    let handled: Vec<(&str, String)> = vec![
        (
            "chunked alone",
            format!(
                "POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Transfer-Encoding: chunked\r\n\r\n6\r\n{BODY}\r\n0\r\n\r\n"
            ),
        ),
        (
            "chunked with extension",
            format!(
                "POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Transfer-Encoding: chunked\r\n\r\n6;x=y\r\n{BODY}\r\n0\r\n\r\n"
            ),
        ),
        (
            "absolute-form this host",
            format!(
                "POST https://localhost/records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 6\r\n\r\n{BODY}"
            ),
        ),
        (
            "Content-Length",
            format!("POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 6\r\n\r\n{BODY}"),
        ),
    ];
    for (name, first) in &handled {
        h.upstream.clear();
        let received = h.raw(format!("{first}{next}").as_bytes(), WAIT).await;
        assert_handled(&h, name, &received);
    }
}

/// A valid request, then a head with two equal Content-Length lines, then
/// a third request, all written at once. The first gets its upstream's
/// response, the second 400 and the third nothing. The access log contains
/// one event for each of the first two.
#[tokio::test]
async fn pipelined_ambiguous_head_is_rejected() {
    let mut h = Harness::start(|_| {}).await;
    let token = h.token("records", &["records:read", "records:write"]);
    let auth = format!("Authorization: Bearer {token}\r\n");
    let stream = format!(
        "POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 6\r\n\r\n{BODY}\
         POST /records/v1/smuggled?x=1 HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 6\r\nContent-Length: 6\r\n\r\n{BODY}\
         GET /records/v1/third HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    );

    let received = h.raw(stream.as_bytes(), WAIT).await;

    assert_eq!(statuses(&received), [200, 400], "{received}");
    let targets: Vec<String> = h.upstream.seen().into_iter().map(|seen| seen.target).collect();
    assert_eq!(targets, ["/records/v1/first"]);
    let log = h.access_log().await;
    let summary: Vec<(String, String, u64, Option<String>)> = log
        .iter()
        .map(|event| {
            (
                event["method"].as_str().unwrap().to_owned(),
                event["path"].as_str().unwrap().to_owned(),
                event["status"].as_u64().unwrap(),
                event["reason"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("POST".to_owned(), "/records/v1/first".to_owned(), 200, None),
            ("POST".to_owned(), "/records/v1/smuggled".to_owned(), 400, Some("invalid_request".to_owned())),
        ]
    );
    let rejected_id = log[1]["request_id"].as_str().unwrap();
    assert!(received.contains(&format!("x-portcullis-request-id: {rejected_id}")), "{received}");
}

/// Heads that httparse, and so hyper, cannot parse get the gateway's own
/// 400 with a JSON body and request id after the request before them, and
/// one access event each, so the guard counts malformed requests.
#[tokio::test]
async fn malformed_heads_get_json_and_events() {
    let mut h = Harness::start(|_| {}).await;
    let token = h.token("records", &["records:read", "records:write"]);
    let auth = format!("Authorization: Bearer {token}\r\n");
    let first = format!("GET /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n");
    let cases = [
        ("obs-fold", "X-A: b\r\n c\r\n"),
        ("space in name", "X A: b\r\n"),
        ("space before colon", "X-A : b\r\n"),
        ("control in name", "X\x01A: b\r\n"),
        ("bare CR in value", "X-A: b\rc\r\n"),
    ];

    for (name, line) in cases {
        let stream = format!("{first}GET /records/v1/second HTTP/1.1\r\nHost: localhost\r\n{auth}{line}\r\n");
        let received = h.raw(stream.as_bytes(), WAIT).await;
        assert_eq!(statuses(&received), [200, 400], "{name}: {received}");
        assert!(received.contains("{\"error\":\"invalid_request\""), "{name}: {received}");
        assert_eq!(received.matches("x-portcullis-request-id: ").count(), 2, "{name}: {received}");
    }

    let log = h.access_log().await;
    let rejected: Vec<(u64, Option<&str>)> = log
        .iter()
        .filter(|event| event["status"] != 200)
        .map(|event| (event["status"].as_u64().unwrap(), event["reason"].as_str()))
        .collect();
    assert_eq!(rejected, vec![(400, Some("invalid_request")); cases.len()]);
    assert_eq!(log.len(), 2 * cases.len(), "one event per request");
    let targets: Vec<String> = h.upstream.seen().into_iter().map(|seen| seen.target).collect();
    assert_eq!(targets, vec!["/records/v1/first".to_owned(); cases.len()], "no malformed head reached the upstream");
}

/// Three pipelined GETs and then an ambiguous head, written at once: each
/// GET gets its own 200 in order, then the 400.
#[tokio::test]
async fn pipelined_gets_precede_the_400() {
    let h = Harness::start(|_| {}).await;
    let token = h.token("records", &["records:read", "records:write"]);
    let auth = format!("Authorization: Bearer {token}\r\n");
    let mut stream = String::new();
    for name in ["g1", "g2", "g3"] {
        stream.push_str(&format!("GET /records/v1/{name} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n"));
    }
    stream.push_str(&format!(
        "POST /records/v1/smuggled HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 6\r\nContent-Length: 6\r\n\r\n{BODY}"
    ));

    let received = h.raw(stream.as_bytes(), WAIT).await;

    assert_eq!(statuses(&received), [200, 200, 200, 400], "{received}");
    let targets: Vec<String> = h.upstream.seen().into_iter().map(|seen| seen.target).collect();
    assert_eq!(targets, ["/records/v1/g1", "/records/v1/g2", "/records/v1/g3"]);
}

/// An ambiguous head behind a request with `Connection: close` is never
/// read by hyper, so it gets no 400 and no access event.
#[tokio::test]
async fn rejected_head_after_close_gets_no_response() {
    let mut h = Harness::start(|_| {}).await;
    let token = h.token("records", &["records:read", "records:write"]);
    let auth = format!("Authorization: Bearer {token}\r\n");
    let stream = format!(
        "POST /records/v1/first HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\nContent-Length: 6\r\n\r\n{BODY}\
         POST /records/v1/smuggled HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 6\r\nContent-Length: 6\r\n\r\n{BODY}"
    );

    let received = h.raw(stream.as_bytes(), WAIT).await;

    assert_eq!(statuses(&received), [200], "{received}");
    let log = h.access_log().await;
    let paths: Vec<&str> = log.iter().map(|event| event["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/records/v1/first"]);
}

/// The HTTP/2 connection preface (RFC 9113 section 3.4) and an empty
/// SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Builds one HTTP/2 frame (RFC 9113 section 4.1).
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = (payload.len() as u32).to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Header fields in the order sent: name and value.
type Fields = Vec<(String, String)>;

/// One received HTTP/2 frame: type, flags, stream id and payload.
type H2Frame = (u8, u8, u32, Vec<u8>);

/// Splits `received` into HTTP/2 frames, up to the first incomplete one.
fn h2_frames(received: &[u8]) -> Vec<H2Frame> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 9 <= received.len() {
        let length = u32::from_be_bytes([0, received[at], received[at + 1], received[at + 2]]) as usize;
        let Some(payload) = received.get(at + 9..at + 9 + length) else { break };
        let stream = u32::from_be_bytes(received[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
        frames.push((received[at + 3], received[at + 4], stream, payload.to_vec()));
        at += 9 + length;
    }
    frames
}

/// Returns the error code of the first GOAWAY frame in `received`, a
/// sequence of HTTP/2 frames, or `None` if there is none.
fn goaway_code(received: &[u8]) -> Option<u32> {
    let (_, _, _, payload) = h2_frames(received).into_iter().find(|(kind, ..)| *kind == 0x7)?;
    Some(u32::from_be_bytes(payload.get(4..8)?.try_into().ok()?))
}

/// Encodes an HPACK integer with a prefix of `bits` bits after `flags`
/// (RFC 7541 section 5.1).
fn hpack_integer(flags: u8, bits: u32, value: usize) -> Vec<u8> {
    let max = (1usize << bits) - 1;
    if value < max {
        return vec![flags | value as u8];
    }
    let mut bytes = vec![flags | max as u8];
    let mut rest = value - max;
    while rest >= 128 {
        bytes.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    bytes.push(rest as u8);
    bytes
}

/// Encodes a header block of literal fields without indexing and with new
/// names, none Huffman-coded (RFC 7541 section 6.2.2), in the order given.
fn hpack_block(fields: &[(String, String)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        block.extend(hpack_integer(0, 7, name.len()));
        block.extend_from_slice(name.as_bytes());
        block.extend(hpack_integer(0, 7, value.len()));
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// Reads frames until `stream` ends (a frame on it with END_STREAM, or
/// RST_STREAM), the connection ends or [`WAIT`] passes, and returns every
/// frame read.
async fn read_until_stream_ends(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    stream: u32,
) -> Vec<H2Frame> {
    use tokio::io::AsyncReadExt;

    let mut received = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 16384];
        while !h2_frames(&received)
            .iter()
            .any(|(kind, flags, id, _)| *id == stream && (flags & 0x1 != 0 || *kind == 0x3))
        {
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    h2_frames(&received)
}

/// Connection-level HTTP/2 protocol errors: h2 closes the connection with
/// GOAWAY and the error code, the request reaches no upstream, and each
/// connection yields one access event with status 400 and reason
/// `http2_protocol_error`, which the guard counts as malformed.
#[tokio::test]
async fn http2_protocol_errors_get_events() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PROTOCOL_ERROR: u32 = 0x1;
    const FRAME_SIZE_ERROR: u32 = 0x6;
    // (case, frames after the preface, GOAWAY error code; RFC 9113 section)
    let cases: [(&str, Vec<u8>, u32); 5] = [
        ("DATA on stream 0 (6.1)", h2_frame(0x0, 0x1, 0, b"x"), PROTOCOL_ERROR),
        ("HEADERS on an even stream id (5.1.1)", h2_frame(0x1, 0x5, 2, b"\x82"), PROTOCOL_ERROR),
        // RFC 9113 requires FRAME_SIZE_ERROR here. h2 sends PROTOCOL_ERROR
        // for every malformed frame whose length fits the maximum.
        ("PING of 7 bytes (6.7)", h2_frame(0x6, 0x0, 0, b"1234567"), PROTOCOL_ERROR),
        ("frame over the 16384-byte default maximum (4.2)", h2_frame(0x6, 0x0, 0, &[0; 16385]), FRAME_SIZE_ERROR),
        ("WINDOW_UPDATE of 0 on the connection (6.9)", h2_frame(0x8, 0x0, 0, b"\x00\x00\x00\x00"), PROTOCOL_ERROR),
    ];

    let mut h = Harness::start(|_| {}).await;
    for (case, frames, expected) in &cases {
        let mut tls = connect(&h, b"h2", false).await;
        tls.write_all(&[H2_PREFACE, frames].concat()).await.unwrap();
        let mut received = Vec::new();
        let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut received)).await;
        assert_eq!(goaway_code(&received), Some(*expected), "{case}: {received:?}");
    }
    assert!(h.upstream.seen().is_empty(), "a request reached the upstream");

    let log = h.access_log().await;
    let outcomes: Vec<(u64, Option<&str>)> =
        log.iter().map(|event| (event["status"].as_u64().unwrap(), event["reason"].as_str())).collect();
    assert_eq!(outcomes, vec![(400, Some("http2_protocol_error")); cases.len()], "{log:?}");
}

/// Stream-level rejections that h2 or hyper makes before the handler
/// receives the request. A malformed request head gets RST_STREAM with
/// PROTOCOL_ERROR (RFC 9113 section 8.1.1), also when more frames on the
/// stream follow it. A header list over the limit gets a bare 431.
/// Each gets one access event, the connection keeps working, and a valid
/// request on the next stream gets its response and its own event.
#[tokio::test]
async fn http2_stream_refusals_get_events() {
    use tokio::io::AsyncWriteExt;

    const PROTOCOL_ERROR: u32 = 0x1;
    let mut h = Harness::start(|config| config.gateway.max_header_bytes = 2048).await;
    let token = h.token("weather", &["weather:read"]);
    let head = |path: &str| -> Vec<(String, String)> {
        [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", path)]
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .to_vec()
    };
    let with = |extra: &[(&str, &str)]| {
        let mut fields = head("/weather/v1/bad");
        fields.extend(extra.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())));
        fields
    };
    let big = "a".repeat(3000);
    let misplaced: Vec<(String, String)> = [(":method", "GET"), ("x-a", "1"), (":scheme", "https"), (":path", "/x")]
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .to_vec();

    let alone = |fields: &Fields| h2_frame(0x1, 0x5, 1, &hpack_block(fields));
    // The head without END_STREAM, then another frame on the same stream in
    // the same write, as a client sends a body right after its head.
    let keep_alive = with(&[("connection", "keep-alive")]);
    let followed = |follower: Vec<u8>| [h2_frame(0x1, 0x4, 1, &hpack_block(&keep_alive)), follower].concat();
    let connect_with_length: Fields =
        [(":method", "CONNECT"), (":authority", "localhost:443"), ("content-length", "5")]
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .to_vec();

    // (case, frames on stream 1, RST_STREAM code or None for 431)
    let cases: Vec<(&str, Vec<u8>, Option<u32>)> = vec![
        ("connection-specific header (8.2.2)", alone(&keep_alive), Some(PROTOCOL_ERROR)),
        ("TE other than trailers (8.2.2)", alone(&with(&[("te", "gzip")])), Some(PROTOCOL_ERROR)),
        ("no :path (8.3.1)", alone(&head("/x")[..3].to_vec()), Some(PROTOCOL_ERROR)),
        ("second :path (8.3.1)", alone(&with(&[(":path", "/weather/v1/other")])), Some(PROTOCOL_ERROR)),
        ("keep-alive header (8.2.2)", alone(&with(&[("keep-alive", "timeout=5")])), Some(PROTOCOL_ERROR)),
        ("transfer-encoding header (8.2.2)", alone(&with(&[("transfer-encoding", "chunked")])), Some(PROTOCOL_ERROR)),
        ("upgrade header (8.2.2)", alone(&with(&[("upgrade", "websocket")])), Some(PROTOCOL_ERROR)),
        ("empty :path (8.3.1)", alone(&head("")), Some(PROTOCOL_ERROR)),
        ("pseudo-header after a regular field (8.3)", alone(&misplaced), Some(PROTOCOL_ERROR)),
        ("malformed head, then its DATA", followed(h2_frame(0x0, 0x1, 1, b"hello")), Some(PROTOCOL_ERROR)),
        ("malformed head, then PRIORITY", followed(h2_frame(0x2, 0x0, 1, &[0, 0, 0, 0, 15])), Some(PROTOCOL_ERROR)),
        ("malformed head, then WINDOW_UPDATE", followed(h2_frame(0x8, 0x0, 1, &[0, 0, 0x10, 0])), Some(PROTOCOL_ERROR)),
        ("malformed head, then an unknown frame type", followed(h2_frame(0x20, 0x0, 1, b"")), Some(PROTOCOL_ERROR)),
        // hyper, not h2, resets this one, with INTERNAL_ERROR.
        ("CONNECT with content-length (8.5)", h2_frame(0x1, 0x4, 1, &hpack_block(&connect_with_length)), Some(0x2)),
        ("header list over gateway.max_header_bytes (10.5.1)", alone(&with(&[("x-big", big.as_str())])), None),
        (
            "header list over the limit, then its DATA",
            [h2_frame(0x1, 0x4, 1, &hpack_block(&with(&[("x-big", big.as_str())]))), h2_frame(0x0, 0x1, 1, b"x")]
                .concat(),
            None,
        ),
    ];

    let mut valid = head("/weather/v1/after");
    valid.push(("authorization".to_owned(), format!("Bearer {token}")));
    let valid = hpack_block(&valid);
    for (case, first, expected) in &cases {
        let mut tls = connect(&h, b"h2", false).await;
        let mut sent = H2_PREFACE.to_vec();
        sent.extend(first);
        sent.extend(h2_frame(0x1, 0x5, 3, &valid));
        tls.write_all(&sent).await.unwrap();
        tls.flush().await.unwrap();

        let frames = read_until_stream_ends(&mut tls, 3).await;
        let on_first: Vec<(u8, u8, usize)> = frames
            .iter()
            .filter(|(_, _, stream, _)| *stream == 1)
            .map(|(kind, flags, _, payload)| (*kind, *flags, payload.len()))
            .collect();
        match expected {
            Some(code) => {
                let reset = frames.iter().find(|(kind, _, stream, _)| *kind == 0x3 && *stream == 1);
                let reset = reset.unwrap_or_else(|| {
                    panic!(
                        "{case}: no RST_STREAM on stream 1 in {:?}",
                        frames.iter().map(|f| (f.0, f.1, f.2, f.3.len())).collect::<Vec<_>>()
                    )
                });
                assert_eq!(u32::from_be_bytes(reset.3[..4].try_into().unwrap()), *code, "{case}");
            }
            None => {
                assert_eq!(on_first.first().map(|(kind, flags, _)| (*kind, flags & 0x1)), Some((0x1, 0x1)), "{case}");
                assert!(on_first[0].2 <= 8, "{case}: a bare status, not the gateway's own response: {on_first:?}");
            }
        }
        assert!(frames.iter().any(|(kind, _, stream, _)| *kind == 0x1 && *stream == 3), "{case}: {frames:?}");
    }

    let targets: Vec<String> = h.upstream.seen().iter().map(|seen| seen.target.clone()).collect();
    assert_eq!(targets, vec!["/weather/v1/after".to_owned(); cases.len()], "only the valid requests go upstream");

    let log = h.access_log().await;
    let mut outcomes: Vec<(u64, Option<&str>)> =
        log.iter().map(|event| (event["status"].as_u64().unwrap(), event["reason"].as_str())).collect();
    outcomes.sort();
    let mut expected: Vec<(u64, Option<&str>)> = vec![(200, None); cases.len()];
    for (_, _, reset) in &cases {
        expected.push(match reset {
            Some(_) => (400, Some("http2_stream_error")),
            None => (431, Some("headers_too_large")),
        });
    }
    expected.sort();
    assert_eq!(outcomes, expected, "{log:?}");
}

/// Builds a HEADERS frame on `stream` for `method` and `path` with the
/// bearer `token` and an optional content-length, without END_STREAM: a
/// body is to follow.
fn request_head(stream: u32, method: &str, path: &str, token: &str, length: Option<&str>) -> Vec<u8> {
    let mut fields: Fields = [
        (":method", method),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path),
        ("authorization", &format!("Bearer {token}")),
    ]
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .to_vec();
    fields.extend(length.map(|length| ("content-length".to_owned(), length.to_owned())));
    h2_frame(0x1, 0x4, stream, &hpack_block(&fields))
}

/// One access event as status, reason, method, path and service.
type EventOutcome = (u64, Option<String>, String, String, String);

/// Returns the outcomes of `log`'s events, sorted.
fn event_outcomes(log: &[serde_json::Value]) -> Vec<EventOutcome> {
    let text = |event: &serde_json::Value, key: &str| event[key].as_str().unwrap_or_default().to_owned();
    let mut outcomes: Vec<EventOutcome> = log
        .iter()
        .map(|event| {
            let reason = event["reason"].as_str().map(str::to_owned);
            (
                event["status"].as_u64().unwrap(),
                reason,
                text(event, "method"),
                text(event, "path"),
                text(event, "service"),
            )
        })
        .collect();
    outcomes.sort();
    outcomes
}

fn event_outcome(status: u64, reason: Option<&str>, method: &str, path: &str, service: &str) -> EventOutcome {
    (status, reason.map(str::to_owned), method.to_owned(), path.to_owned(), service.to_owned())
}

/// A request that reached its handler and that h2 then reset for the app's
/// protocol error gets one access event, the handler's, with its method,
/// path and service, and reason `http2_stream_error`. The head goes first
/// and the offending frames 200 ms later, so that the handler has the
/// request when h2 resets it. A body with a content-length streams to the
/// upstream, and hyper drops the handler at the reset. A body without one
/// is read whole by the handler when request buffering is on.
#[tokio::test]
async fn http2_late_reset_gets_one_event() {
    use tokio::io::AsyncWriteExt;

    const PROTOCOL_ERROR: u32 = 0x1;
    const FLOW_CONTROL_ERROR: u32 = 0x3;
    let trailers = hpack_block(&[("x-checksum".to_owned(), "1".to_owned())]);
    // A send window above 2^31-1 is a stream error (RFC 9113 section 6.9.1).
    let window_overflow = h2_frame(0x8, 0x0, 1, &0x7fff_ffffu32.to_be_bytes());
    let data = |flags: u8, payload: &[u8]| h2_frame(0x0, flags, 1, payload);
    let broken = "/records/v1/broken";

    // (case, method, path, content-length, frames right after the head,
    // frames 200 ms later, reset code)
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, &str, &str, Option<&str>, Vec<u8>, Vec<u8>, u32)> = vec![
        (
            "DATA longer than content-length (8.1.1)",
            "POST",
            broken,
            Some("5"),
            vec![],
            data(0x1, b"0123456789"),
            PROTOCOL_ERROR,
        ),
        (
            "DATA shorter than content-length (8.1.1)",
            "POST",
            broken,
            Some("5"),
            vec![],
            data(0x1, b"abc"),
            PROTOCOL_ERROR,
        ),
        (
            "trailers without END_STREAM (8.1)",
            "POST",
            broken,
            None,
            vec![],
            [data(0x0, b"abc"), h2_frame(0x1, 0x4, 1, &trailers)].concat(),
            PROTOCOL_ERROR,
        ),
        (
            "part of the body, then a window overflow (6.9.1)",
            "POST",
            broken,
            Some("5"),
            data(0x0, b"ab"),
            window_overflow,
            FLOW_CONTROL_ERROR,
        ),
    ];

    for buffering in [true, false] {
        for (case, method, path, length, with_head, offending, code) in &cases {
            let case = format!("{case}, request buffering {buffering}");
            let mut h = Harness::start(|config| config.gateway.request_buffering = buffering).await;
            let token = h.token("records", &["records:read", "records:write"]);
            let mut tls = connect(&h, b"h2", false).await;
            let mut first = H2_PREFACE.to_vec();
            first.extend(request_head(1, method, path, &token, *length));
            first.extend(with_head);
            tls.write_all(&first).await.unwrap();
            tls.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;

            let mut rest = offending.clone();
            rest.extend(request_head(3, "POST", "/records/v1/after", &token, Some("2")));
            rest.extend(h2_frame(0x0, 0x1, 3, b"ok"));
            tls.write_all(&rest).await.unwrap();
            tls.flush().await.unwrap();

            let frames = read_until_stream_ends(&mut tls, 3).await;
            let reset = frames.iter().find(|(kind, _, stream, _)| *kind == 0x3 && *stream == 1);
            let sent_code = reset.map(|(.., payload)| u32::from_be_bytes(payload[..4].try_into().unwrap()));
            assert_eq!(sent_code, Some(*code), "{case}");
            drop(tls);

            let log = h.access_log().await;
            let expected = [
                event_outcome(200, None, "POST", "/records/v1/after", "records"),
                event_outcome(400, Some("http2_stream_error"), method, path, "records"),
            ];
            assert_eq!(event_outcomes(&log), expected, "{case}: {log:?}");
        }
    }
}

/// A reset that the frame watch recorded long before is not taken over by
/// a later request that h2 resets while the app closes the connection:
/// the malformed head and the later request get one event each.
#[tokio::test]
async fn http2_old_reset_is_not_taken_over() {
    use tokio::io::AsyncWriteExt;

    let malformed: Fields = [(":method", "GET"), (":scheme", "https"), (":path", "/x"), ("connection", "keep-alive")]
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .to_vec();
    for reset_on_close in [false, true] {
        for buffering in [true, false] {
            let case = format!("RST on close {reset_on_close}, request buffering {buffering}");
            let mut h = Harness::start(|config| config.gateway.request_buffering = buffering).await;
            let token = h.token("records", &["records:write"]);
            let mut tls = connect(&h, b"h2", reset_on_close).await;
            let mut first = H2_PREFACE.to_vec();
            first.extend(h2_frame(0x1, 0x5, 1, &hpack_block(&malformed)));
            tls.write_all(&first).await.unwrap();
            tls.flush().await.unwrap();
            let frames = read_until_stream_ends(&mut tls, 1).await;
            let reset = frames.iter().find(|(kind, _, stream, _)| *kind == 0x3 && *stream == 1);
            let code = reset.map(|(.., payload)| u32::from_be_bytes(payload[..4].try_into().unwrap()));
            assert_eq!(code, Some(0x1), "{case}: PROTOCOL_ERROR for the malformed head, in {frames:?}");

            // The malformed head's event is recorded 200 ms after its reset and
            // can be claimed for another 200 ms.
            tokio::time::sleep(Duration::from_millis(600)).await;
            tls.write_all(&request_head(3, "POST", "/records/v1/closed", &token, Some("5"))).await.unwrap();
            tls.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            tls.write_all(&h2_frame(0x0, 0x1, 3, b"0123456789")).await.unwrap();
            tls.flush().await.unwrap();
            drop(tls);

            let log = h.access_log().await;
            let outcomes = event_outcomes(&log);
            assert_eq!(outcomes.len(), 2, "{case}: {log:?}");
            assert_eq!(outcomes[0], event_outcome(400, Some("http2_stream_error"), "", "", ""), "{case}");
            // Whether h2 or the closed connection ends the request first
            // depends on timing.
            let late = &outcomes[1];
            assert!(late.0 == 400 || late.0 == 499, "{case}: {late:?}");
            assert_eq!(late.3, "/records/v1/closed", "{case}");
        }
    }
}

/// Many streams of one connection end at once in different ways. After
/// their handlers have them, h2 resets 40 for a body longer than its
/// content-length and 20 for a WINDOW_UPDATE overflow mid-body. h2 also
/// rejects 20 malformed heads, and the app cancels 20 streams itself. Each
/// stream gets one event, with the method and path for those that reached
/// a handler, and each reset request's path appears once.
#[tokio::test]
async fn http2_mixed_resets_get_one_event_each() {
    use tokio::io::AsyncWriteExt;

    const LATE: u32 = 40;
    const WINDOW: u32 = 20;
    const MALFORMED: u32 = 20;
    const CANCELLED: u32 = 20;
    const CANCEL: u32 = 0x8;
    let malformed: Fields = [(":method", "GET"), (":scheme", "https"), (":path", "/x"), ("connection", "keep-alive")]
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .to_vec();
    let malformed = hpack_block(&malformed);

    for buffering in [true, false] {
        let mut h = Harness::start(|config| {
            config.gateway.request_buffering = buffering;
            config.gateway.rate_burst = 2000;
            config.gateway.rate_per_second = 2000.0;
        })
        .await;
        let token = h.token("records", &["records:read", "records:write"]);
        let mut tls = connect(&h, b"h2", false).await;

        let mut next_stream = 1u32;
        let mut open = |kind: &str, count: u32| -> Vec<(u32, String)> {
            (0..count)
                .map(|index| {
                    let stream = next_stream;
                    next_stream += 2;
                    (stream, format!("/records/v1/{kind}-{index}"))
                })
                .collect()
        };
        let late = open("late", LATE);
        let window = open("window", WINDOW);
        let cancelled = open("cancelled", CANCELLED);
        let mut heads = H2_PREFACE.to_vec();
        for (stream, path) in late.iter().chain(&window).chain(&cancelled) {
            heads.extend(request_head(*stream, "POST", path, &token, Some("5")));
        }
        tls.write_all(&heads).await.unwrap();
        tls.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;

        // One write that ends every stream, interleaved.
        let malformed_streams = open("malformed", MALFORMED);
        let (last, _) = open("last", 1)[0].clone();
        let mut burst = Vec::new();
        for index in 0..LATE as usize {
            if let Some((stream, _)) = late.get(index) {
                burst.extend(h2_frame(0x0, 0x1, *stream, b"0123456789"));
            }
            if let Some((stream, _)) = malformed_streams.get(index) {
                burst.extend(h2_frame(0x1, 0x5, *stream, &malformed));
            }
            if let Some((stream, _)) = window.get(index) {
                burst.extend(h2_frame(0x0, 0x0, *stream, b"ab"));
                burst.extend(h2_frame(0x8, 0x0, *stream, &0x7fff_ffffu32.to_be_bytes()));
            }
            if let Some((stream, _)) = cancelled.get(index) {
                burst.extend(h2_frame(0x3, 0x0, *stream, &CANCEL.to_be_bytes()));
            }
        }
        let mut last_head: Fields = [(":method", "GET"), (":scheme", "https"), (":authority", "localhost")]
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .to_vec();
        last_head.push((":path".to_owned(), "/records/v1/last".to_owned()));
        last_head.push(("authorization".to_owned(), format!("Bearer {token}")));
        burst.extend(h2_frame(0x1, 0x5, last, &hpack_block(&last_head)));
        tls.write_all(&burst).await.unwrap();
        tls.flush().await.unwrap();
        read_until_stream_ends(&mut tls, last).await;
        drop(tls);

        let case = format!("request buffering {buffering}");
        let outcomes = event_outcomes(&h.access_log().await);
        let mut tally: std::collections::BTreeMap<(u64, Option<String>, bool), u32> = Default::default();
        for (status, reason, _, path, _) in &outcomes {
            *tally.entry((*status, reason.clone(), !path.is_empty())).or_default() += 1;
        }
        let stream_error = Some("http2_stream_error".to_owned());
        let expected = std::collections::BTreeMap::from([
            ((200, None, true), 1),
            ((400, stream_error.clone(), true), LATE + WINDOW),
            ((400, stream_error, false), MALFORMED),
            ((499, Some("client_closed".to_owned()), true), CANCELLED),
        ]);
        assert_eq!(tally, expected, "{case}");

        let mut reset_paths: Vec<&str> = outcomes
            .iter()
            .filter(|event| event.0 == 400 && !event.3.is_empty())
            .map(|event| event.3.as_str())
            .collect();
        reset_paths.sort();
        let mut expected_paths: Vec<&str> = late.iter().chain(&window).map(|(_, path)| path.as_str()).collect();
        expected_paths.sort();
        assert_eq!(reset_paths, expected_paths, "{case}: each reset request once");
    }
}

/// An app that opens more HTTP/2 streams at once than the 200 that hyper
/// allows gets REFUSED_STREAM for the extra one (RFC 9113 section 5.1.2),
/// recorded as 429 `too_many_streams`. The 200 open streams wait for their
/// bodies and end when the app closes the connection.
#[tokio::test]
async fn http2_streams_over_the_limit_get_events() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const REFUSED_STREAM: u32 = 0x7;
    const ALLOWED: u32 = 200;
    let mut h = Harness::start(|config| config.gateway.rate_burst = 1000).await;
    let token = h.token("records", &["records:write"]);
    let mut tls = connect(&h, b"h2", false).await;
    tls.write_all(H2_PREFACE).await.unwrap();
    tls.flush().await.unwrap();

    // The limit applies once the app acknowledges the gateway's SETTINGS.
    let mut received = Vec::new();
    let mut chunk = [0u8; 16384];
    let settings_arrived = tokio::time::timeout(WAIT, async {
        while !h2_frames(&received).iter().any(|(kind, flags, ..)| *kind == 0x4 && flags & 0x1 == 0) {
            let n = tls.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the gateway closed the connection before its SETTINGS");
            received.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(settings_arrived.is_ok(), "no SETTINGS from the gateway");

    let mut sent = h2_frame(0x4, 0x1, 0, b"");
    for index in 0..=ALLOWED {
        let fields: Fields = [
            (":method", "POST".to_owned()),
            (":scheme", "https".to_owned()),
            (":authority", "localhost".to_owned()),
            (":path", format!("/records/v1/open-{index}")),
            ("authorization", format!("Bearer {token}")),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        // END_HEADERS without END_STREAM: a body is to follow.
        sent.extend(h2_frame(0x1, 0x4, 2 * index + 1, &hpack_block(&fields)));
    }
    tls.write_all(&sent).await.unwrap();
    tls.flush().await.unwrap();

    let refused_stream = 2 * ALLOWED + 1;
    let reset_arrived = tokio::time::timeout(WAIT, async {
        while !h2_frames(&received).iter().any(|(kind, ..)| *kind == 0x3) {
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(reset_arrived.is_ok(), "no RST_STREAM within {WAIT:?}");
    let resets: Vec<(u32, u32)> = h2_frames(&received)
        .iter()
        .filter(|(kind, ..)| *kind == 0x3)
        .map(|(_, _, stream, payload)| (*stream, u32::from_be_bytes(payload[..4].try_into().unwrap())))
        .collect();
    assert_eq!(resets, [(refused_stream, REFUSED_STREAM)]);
    drop(tls);

    assert!(h.upstream.seen().is_empty(), "no body arrived whole, so nothing went upstream");
    let log = h.access_log().await;
    let rejected: Vec<_> = log.iter().filter(|event| event["reason"] == "too_many_streams").collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["status"], 429);
    // Closing the connection either drops a stream's handler or fails the
    // body it is reading. Either way the app went away: 499.
    let closed = log.iter().filter(|event| event["status"] == 499 && event["reason"] == "client_closed").count();
    assert_eq!(closed, ALLOWED as usize, "each open stream ends once, as 499");
    assert_eq!(log.len(), ALLOWED as usize + 1);
}
