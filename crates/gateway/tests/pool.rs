//! End-to-end checks of the gateway's per-worker upstream pool and of its
//! HTTP/1.1 header read timer, against scripted upstreams that misbehave
//! on purpose: they stall, close idle connections, respond before reading
//! the request body, send GOAWAY or restart.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_identity::{CertificateKind, PlatformAcceptor, PlatformClientVerifier, RenewingCertificate, TrustCache};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream;

const WAIT: Duration = Duration::from_secs(5);

/// What a scripted upstream does with one request.
#[derive(Clone)]
enum Reply {
    /// Writes the bytes and waits for the next request on the connection.
    Send(Vec<u8>),
    /// Writes the bytes and closes the connection, without a
    /// `Connection: close` header.
    SendAndClose(Vec<u8>),
    /// Waits, writes the bytes and waits for the next request.
    Delayed(Duration, Vec<u8>),
    /// Writes the first bytes, waits, writes the second bytes and waits
    /// for the next request.
    SendTwice(Vec<u8>, Duration, Vec<u8>),
    /// Writes the bytes and then neither reads nor writes until the test
    /// ends.
    SendAndHold(Vec<u8>),
    /// Writes the bytes as soon as the head has arrived, before the
    /// request body, then reads the body and waits for the next request.
    BeforeBody(Vec<u8>),
    /// Closes the connection after reading the request, without a response.
    Close,
}

/// A request as a scripted upstream saw it.
#[derive(Debug, Clone, PartialEq)]
struct SeenRequest {
    /// The upstream connection it came on, counted from 1.
    connection: usize,
    method: String,
    target: String,
    /// The body with any chunked framing removed.
    body: Vec<u8>,
}

type Script = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// A plain-HTTP/1.1 upstream on 127.0.0.1 whose replies come from a
/// script keyed by request target. Stops when dropped.
struct ScriptedUpstream {
    address: SocketAddr,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every
        // connection task.
        self.task.abort();
    }
}

impl ScriptedUpstream {
    /// Starts the upstream. With `idle_close`, a connection that waits
    /// longer than that for its next request is closed, like a server's
    /// keep-alive timeout.
    async fn start(idle_close: Option<Duration>, script: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let script: Script = Arc::new(script);
        let (record, accepted) = (Arc::clone(&seen), Arc::clone(&connections));
        let task = tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let connection = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                tasks.spawn(serve_scripted(tcp, connection, idle_close, Arc::clone(&script), Arc::clone(&record)));
            }
        });
        Self { address, seen, connections, task }
    }

    fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Returns the URL to put in a service's `upstream`.
    fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

async fn serve_scripted(
    mut tcp: TcpStream,
    connection: usize,
    idle_close: Option<Duration>,
    script: Script,
    record: Arc<Mutex<Vec<SeenRequest>>>,
) {
    let mut buffer = Vec::new();
    loop {
        let head_end = match idle_close {
            Some(idle) => match tokio::time::timeout(idle, read_until(&mut tcp, &mut buffer, b"\r\n\r\n")).await {
                Ok(found) => found,
                Err(_) => return,
            },
            None => read_until(&mut tcp, &mut buffer, b"\r\n\r\n").await,
        };
        let Some(head_end) = head_end else { return };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        buffer.drain(..head_end + 4);
        let mut words = head.split(' ');
        let method = words.next().unwrap_or_default().to_owned();
        let target = words.next().unwrap_or_default().to_owned();
        let reply = script(&target);

        if let Reply::BeforeBody(bytes) = &reply
            && tcp.write_all(bytes).await.is_err()
        {
            return;
        }
        let Some(body) = read_request_body(&mut tcp, &mut buffer, &head).await else { return };
        record.lock().unwrap().push(SeenRequest { connection, method, target, body });

        let written = match reply {
            Reply::Send(bytes) => tcp.write_all(&bytes).await,
            Reply::Delayed(delay, bytes) => {
                tokio::time::sleep(delay).await;
                tcp.write_all(&bytes).await
            }
            Reply::SendTwice(first, delay, second) => {
                let written = tcp.write_all(&first).await;
                tokio::time::sleep(delay).await;
                written.and(tcp.write_all(&second).await)
            }
            Reply::BeforeBody(_) => Ok(()),
            Reply::SendAndClose(bytes) => {
                let _ = tcp.write_all(&bytes).await;
                return;
            }
            Reply::SendAndHold(bytes) => {
                let _ = tcp.write_all(&bytes).await;
                std::future::pending::<()>().await;
                return;
            }
            Reply::Close => return,
        };
        if written.is_err() {
            return;
        }
    }
}

/// Reads into `buffer` until it contains `needle`. Returns where the
/// needle starts, or `None` if the peer closed first.
async fn read_until<S: AsyncReadExt + Unpin>(stream: &mut S, buffer: &mut Vec<u8>, needle: &[u8]) -> Option<usize> {
    loop {
        if let Some(at) = find(buffer, needle) {
            return Some(at);
        }
        let mut chunk = [0u8; 65536];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads a request body framed by `Content-Length` or chunked coding
/// (without trailers) and returns it decoded.
async fn read_request_body(tcp: &mut TcpStream, buffer: &mut Vec<u8>, head: &str) -> Option<Vec<u8>> {
    if header_value(head, "transfer-encoding").is_some_and(|value| value.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = read_until(tcp, buffer, b"\r\n").await?;
            let line = String::from_utf8_lossy(&buffer[..line_end]).into_owned();
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            buffer.drain(..line_end + 2);
            while buffer.len() < size + 2 {
                let mut chunk = [0u8; 65536];
                match tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
            body.extend_from_slice(&buffer[..size]);
            buffer.drain(..size + 2);
            if size == 0 {
                return Some(body);
            }
        }
    }
    let length: usize = header_value(head, "content-length").map_or(Some(0), |value| value.parse().ok())?;
    while buffer.len() < length {
        let mut chunk = [0u8; 65536];
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    Some(buffer.drain(..length).collect())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Builds a 200 response with `body` and a `Content-Length`.
fn ok(body: &[u8]) -> Vec<u8> {
    let mut bytes = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// `length` bytes of a pattern that shows shifted or repeated ranges.
fn pattern(length: usize) -> Vec<u8> {
    (0..length).map(|i| (i % 251) as u8).collect()
}

/// An app's TLS connection to the gateway with the test app's certificate,
/// and the bytes received on it but not yet parsed.
struct AppConnection {
    tls: TlsStream<TcpStream>,
    buffer: Vec<u8>,
}

impl AppConnection {
    async fn open(h: &Harness) -> Self {
        let certificate = RenewingCertificate::new(&h.app).unwrap();
        let config =
            portcullis_identity::policy::client_config(h.platform.ca.root(), certificate, &[b"http/1.1"]).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(("127.0.0.1", h.port())).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        Self { tls, buffer: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).await.unwrap();
        self.tls.flush().await.unwrap();
    }

    /// Reads one response. Returns `(0, [])` if the gateway closed the
    /// connection or nothing complete arrived within `WAIT`. `no_body` is for
    /// responses to HEAD.
    async fn response(&mut self, no_body: bool) -> (u16, Vec<u8>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some((status, body, used)) = parse_response(&self.buffer, no_body) {
                self.buffer.drain(..used);
                return (status, body);
            }
            let mut chunk = vec![0u8; 65536];
            match tokio::time::timeout_at(deadline, self.tls.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buffer.extend_from_slice(&chunk[..n]),
                _ => return (0, Vec::new()),
            }
        }
    }

    /// Waits up to `wait` for the gateway to close the connection and
    /// returns whether it did.
    async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(wait, self.tls.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(_) => return false,
            }
        }
    }
}

/// Parses the first complete response in `buffer` into its status, its
/// body (chunked coding removed) and the bytes it took.
fn parse_response(buffer: &[u8], no_body: bool) -> Option<(u16, Vec<u8>, usize)> {
    let end = find(buffer, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buffer[..end]).ok()?;
    let status: u16 = head.get(9..12)?.parse().ok()?;
    if no_body || status == 204 || status == 304 {
        return Some((status, Vec::new(), end));
    }
    if header_value(head, "transfer-encoding").is_some_and(|value| value.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut at = end;
        loop {
            let line_end = at + find(&buffer[at..], b"\r\n")?;
            let line = std::str::from_utf8(&buffer[at..line_end]).ok()?;
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if buffer.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&buffer[at..at + size]);
            at += size + 2;
            if size == 0 {
                return Some((status, body, at));
            }
        }
    }
    let length: usize = header_value(head, "content-length").map_or(Some(0), |value| value.parse().ok())?;
    if buffer.len() < end + length {
        return None;
    }
    Some((status, buffer[end..end + length].to_vec(), end + length))
}

/// A keep-alive request for the records service, which allows every
/// method the tests use.
fn records_request(method: &str, target: &str, token: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes =
        format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n{extra}\r\n")
            .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Starts a one-worker gateway, so that every app connection uses the same
/// upstream pool, with the records service on `upstream`.
async fn start_gateway(upstream: String, adjust: impl FnOnce(&mut portcullis_config::PlatformConfig)) -> Harness {
    Harness::start_with_workers(Some(1), |config| {
        let records = config.services.iter_mut().find(|service| service.name == "records").unwrap();
        records.upstream = upstream;
        adjust(config);
    })
    .await
}

fn records_token(h: &Harness) -> String {
    h.token("records", &["records:read", "records:write"])
}

fn targets(seen: &[SeenRequest]) -> Vec<(usize, &str)> {
    seen.iter().map(|request| (request.connection, request.target.as_str())).collect()
}

/// A response body the app abandons half-way closes its upstream
/// connection: the next request opens a new one and gets its own complete
/// response, never the rest of the abandoned body.
#[tokio::test]
async fn abandoned_body_is_not_reused() {
    let upstream = ScriptedUpstream::start(None, |target| match target {
        "/records/v1/big" => {
            let mut partial = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
            partial.extend_from_slice(&[b'x'; 1000]);
            Reply::SendAndHold(partial)
        }
        _ => Reply::Send(ok(b"next")),
    })
    .await;
    let h = start_gateway(upstream.url(), |_| {}).await;
    let token = records_token(&h);

    let mut app = AppConnection::open(&h).await;
    app.send(&records_request("GET", "/records/v1/big", &token, "", b"")).await;
    // The head and the first 1000 body bytes arrive; the rest never does.
    let _ =
        tokio::time::timeout(Duration::from_secs(1), read_until(&mut app.tls, &mut app.buffer, b"xxxxxxxxxx")).await;
    assert!(find(&app.buffer, b"200 OK").is_some(), "{:?}", String::from_utf8_lossy(&app.buffer));
    drop(app);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut app = AppConnection::open(&h).await;
    app.send(&records_request("GET", "/records/v1/next", &token, "", b"")).await;
    assert_eq!(app.response(false).await, (200, b"next".to_vec()));
    assert_eq!(targets(&upstream.seen()), [(1, "/records/v1/big"), (2, "/records/v1/next")]);
}

/// An upstream that responds before it has read the request body returns
/// its connection to the pool while the app is still sending that body.
/// Another request must not wait behind that unfinished body.
#[tokio::test]
async fn early_response_does_not_block_pool() {
    let upstream = ScriptedUpstream::start(None, |target| match target {
        "/records/v1/early" => Reply::BeforeBody(ok(b"early")),
        _ => Reply::Send(ok(b"next")),
    })
    .await;
    let h = start_gateway(upstream.url(), |config| config.gateway.upstream_timeout = Duration::from_secs(2)).await;
    let token = records_token(&h);

    // The app declares 1000 bytes and sends 10, then keeps its connection open.
    let mut slow = AppConnection::open(&h).await;
    slow.send(&records_request("POST", "/records/v1/early", &token, "Content-Length: 1000\r\n", &[b'a'; 10])).await;
    assert_eq!(slow.response(false).await, (200, b"early".to_vec()));

    let mut app = AppConnection::open(&h).await;
    app.send(&records_request("GET", "/records/v1/next", &token, "", b"")).await;
    let started = Instant::now();
    assert_eq!(app.response(false).await, (200, b"next".to_vec()), "after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(1), "waited {:?}", started.elapsed());
    drop(slow);
}

/// An idle pooled connection that the upstream closed is replaced: the
/// next request succeeds on a new connection, and the upstream receives
/// every request exactly once.
#[tokio::test]
async fn closed_idle_connection_is_replaced() {
    // (case, keep-alive timeout of the upstream, reply to the first
    // request, pause between the two requests)
    let cases = [
        ("closed after response", None, Reply::SendAndClose(ok(b"first")), Duration::from_millis(300)),
        ("closed after response, back to back", None, Reply::SendAndClose(ok(b"first")), Duration::ZERO),
        ("keep-alive timeout", Some(Duration::from_millis(200)), Reply::Send(ok(b"first")), Duration::from_millis(500)),
    ];
    for (case, idle_close, first, pause) in cases {
        let (upstream, responses) = first_then_second(idle_close, first, pause).await;
        assert_eq!(responses, [(200, b"first".to_vec()), (200, b"second".to_vec())], "{case}");
        assert_eq!(targets(&upstream.seen()), [(1, "/records/v1/first"), (2, "/records/v1/second")], "{case}");
    }
}

/// Starts a scripted upstream that replies to `/records/v1/first` with
/// `first` and any other target with `second`, sends those two requests
/// on one app connection with `pause` between them, and returns the
/// upstream and both responses.
async fn first_then_second(
    idle_close: Option<Duration>,
    first: Reply,
    pause: Duration,
) -> (ScriptedUpstream, [(u16, Vec<u8>); 2]) {
    let upstream = ScriptedUpstream::start(idle_close, move |target| match target {
        "/records/v1/first" => first.clone(),
        _ => Reply::Send(ok(b"second")),
    })
    .await;
    let h = start_gateway(upstream.url(), |_| {}).await;
    let token = records_token(&h);

    let mut app = AppConnection::open(&h).await;
    app.send(&records_request("GET", "/records/v1/first", &token, "", b"")).await;
    let first_response = app.response(false).await;
    tokio::time::sleep(pause).await;
    app.send(&records_request("GET", "/records/v1/second", &token, "", b"")).await;
    (upstream, [first_response, app.response(false).await])
}

/// Bytes an upstream sends after a complete response are not taken as the
/// response to the next request on that connection, which could belong
/// to another app: the next request gets its own response.
#[tokio::test]
async fn extra_bytes_are_not_a_response() {
    let forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged";
    let mut together = ok(b"first");
    together.extend_from_slice(forged);
    // (case, reply to the first request)
    let cases = [
        ("in the same write", Reply::Send(together)),
        ("while idle", Reply::SendTwice(ok(b"first"), Duration::from_millis(100), forged.to_vec())),
    ];
    for (case, first) in cases {
        let (upstream, responses) = first_then_second(None, first, Duration::from_millis(300)).await;
        assert_eq!(responses, [(200, b"first".to_vec()), (200, b"second".to_vec())], "{case}");
        assert_eq!(upstream.seen().last().map(|seen| seen.target.clone()).as_deref(), Some("/records/v1/second"));
    }
}

/// A request that reached the upstream on a pooled connection is not sent
/// again when the upstream closes without a response: the app gets 502.
#[tokio::test]
async fn sent_request_is_not_repeated() {
    let upstream = ScriptedUpstream::start(None, |target| match target {
        "/records/v1/first" => Reply::Send(ok(b"first")),
        _ => Reply::Close,
    })
    .await;
    let h = start_gateway(upstream.url(), |_| {}).await;
    let token = records_token(&h);

    let mut app = AppConnection::open(&h).await;
    app.send(&records_request("GET", "/records/v1/first", &token, "", b"")).await;
    assert_eq!(app.response(false).await, (200, b"first".to_vec()));
    app.send(&records_request("POST", "/records/v1/lost", &token, "Content-Length: 4\r\n", b"once")).await;
    assert_eq!(app.response(false).await.0, 502);

    let seen = upstream.seen();
    assert_eq!(targets(&seen), [(1, "/records/v1/first"), (1, "/records/v1/lost")]);
    assert_eq!(seen[1].body, b"once");
}

/// One case of [`framing_through_pooled_connection`]: method, target,
/// request headers, request body, status expected, response body expected
/// and the request body the upstream must receive.
type FramingCase<'a> = (&'a str, &'a str, &'a str, &'a [u8], u16, &'a [u8], &'a [u8]);

/// Responses without a body, chunked responses, large bodies and request
/// bodies pass through a pooled HTTP/1.1 connection byte for byte, and the
/// connection serves the next request afterwards.
#[tokio::test]
async fn framing_through_pooled_connection() {
    let large = pattern(4 * 1024 * 1024);
    let mut large_chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in large.chunks(100_000) {
        large_chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        large_chunked.extend_from_slice(piece);
        large_chunked.extend_from_slice(b"\r\n");
    }
    large_chunked.extend_from_slice(b"0\r\n\r\n");
    let replies = [
        // HEAD: the length of the body a GET would get, and no body.
        ("/records/v1/head", b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n".to_vec()),
        ("/records/v1/no-content", b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
        // 304 with the length of the representation, and no body.
        (
            "/records/v1/not-modified",
            b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 11\r\n\r\n".to_vec(),
        ),
        (
            "/records/v1/chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(),
        ),
        ("/records/v1/large", ok(&large)),
        ("/records/v1/large-chunked", large_chunked),
        ("/records/v1/post", ok(b"posted")),
        ("/records/v1/after", ok(b"after")),
    ];
    let upstream = ScriptedUpstream::start(None, move |target| {
        let reply = replies.iter().find(|(path, _)| *path == target).map(|(_, bytes)| bytes.clone());
        Reply::Send(reply.unwrap_or_else(|| ok(b"unknown")))
    })
    .await;
    let h = start_gateway(upstream.url(), |config| config.gateway.max_body_bytes = 8 * 1024 * 1024).await;
    let token = records_token(&h);

    let large_request = pattern(3 * 1024 * 1024);
    let large_length = format!("Content-Length: {}\r\n", large_request.len());
    let chunked = "Transfer-Encoding: chunked\r\n";
    let empty: &[u8] = b"";
    let cases: [FramingCase; 9] = [
        ("HEAD", "/records/v1/head", "", empty, 200, empty, empty),
        ("GET", "/records/v1/no-content", "", empty, 204, empty, empty),
        ("GET", "/records/v1/not-modified", "If-None-Match: \"v1\"\r\n", empty, 304, empty, empty),
        ("GET", "/records/v1/chunked", "", empty, 200, b"hello world", empty),
        ("GET", "/records/v1/large", "", empty, 200, &large, empty),
        ("GET", "/records/v1/large-chunked", "", empty, 200, &large, empty),
        ("POST", "/records/v1/post", "Content-Length: 5\r\n", b"hello", 200, b"posted", b"hello"),
        (
            "POST",
            "/records/v1/post",
            chunked,
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            200,
            b"posted",
            b"hello world",
        ),
        ("PUT", "/records/v1/post", &large_length, &large_request, 200, b"posted", &large_request),
    ];
    for (method, target, extra, body, status, expected, upstream_body) in cases {
        // Each case on a new app connection, then a GET on the same one.
        let mut app = AppConnection::open(&h).await;
        let mut bytes = records_request(method, target, &token, extra, body);
        bytes.extend_from_slice(&records_request("GET", "/records/v1/after", &token, "Connection: close\r\n", b""));
        app.send(&bytes).await;

        let (got_status, got_body) = app.response(method == "HEAD").await;
        assert_eq!(got_status, status, "{method} {target}");
        assert!(got_body == expected, "{method} {target}: {} bytes, {} expected", got_body.len(), expected.len());
        assert_eq!(app.response(false).await, (200, b"after".to_vec()), "{method} {target}");

        let seen = upstream.seen();
        let case_seen = &seen[seen.len() - 2];
        assert_eq!((case_seen.method.as_str(), case_seen.target.as_str()), (method, target));
        assert!(case_seen.body == upstream_body, "{method} {target}: upstream saw {} bytes", case_seen.body.len());
        assert_eq!(seen[seen.len() - 1].target, "/records/v1/after", "{method} {target}");
        assert_eq!(upstream.connections(), 1, "{method} {target}: connection not reused");
    }
}

/// An upstream that does not respond within `upstream_timeout` gets 504,
/// and its late response never reaches a later request, which gets a
/// new connection. An upstream port with no listener gets 502.
#[tokio::test]
async fn timeout_and_unreachable() {
    let upstream = ScriptedUpstream::start(None, |target| match target {
        "/records/v1/late" => Reply::Delayed(Duration::from_millis(1500), ok(b"late")),
        _ => Reply::Send(ok(b"next")),
    })
    .await;
    let h = start_gateway(upstream.url(), |config| config.gateway.upstream_timeout = Duration::from_secs(1)).await;
    let token = records_token(&h);

    let mut app = AppConnection::open(&h).await;
    app.send(&records_request("GET", "/records/v1/late", &token, "", b"")).await;
    assert_eq!(app.response(false).await.0, 504);
    // Once at once, and once after the late response was written.
    for pause in [Duration::ZERO, Duration::from_secs(1)] {
        tokio::time::sleep(pause).await;
        app.send(&records_request("GET", "/records/v1/next", &token, "", b"")).await;
        assert_eq!(app.response(false).await, (200, b"next".to_vec()), "after {pause:?}");
    }
    assert_eq!(targets(&upstream.seen()), [(1, "/records/v1/late"), (2, "/records/v1/next"), (2, "/records/v1/next")]);

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let h = start_gateway(format!("http://{closed}"), |_| {}).await;
    let mut app = AppConnection::open(&h).await;
    app.send(&records_request("GET", "/records/v1/next", &records_token(&h), "", b"")).await;
    assert_eq!(app.response(false).await.0, 502);
}

/// A response body that stops arriving for longer than `upstream_timeout`
/// is cut. The app gets the head and the bytes sent so far, then the
/// connection closes (HTTP/1.1) or the stream is reset (HTTP/2). The
/// access event gives the reason. A body whose pieces arrive closer
/// together than the limit arrives whole.
#[tokio::test]
async fn stalled_body_is_cut() {
    let upstream = ScriptedUpstream::start(None, |target| match target {
        "/records/v1/stall" => Reply::SendAndHold(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec()),
        _ => Reply::SendTwice(
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nslow".to_vec(),
            Duration::from_millis(300),
            b"body".to_vec(),
        ),
    })
    .await;
    let mut h =
        start_gateway(upstream.url(), |config| config.gateway.upstream_timeout = Duration::from_millis(600)).await;
    let token = records_token(&h);

    let mut app = AppConnection::open(&h).await;
    app.send(&records_request("GET", "/records/v1/slow", &token, "", b"")).await;
    assert_eq!(app.response(false).await, (200, b"slowbody".to_vec()));

    let mut app = AppConnection::open(&h).await;
    app.send(&records_request("GET", "/records/v1/stall", &token, "", b"")).await;
    assert!(app.closed_within(Duration::from_secs(3)).await, "the stalled response was not cut");
    let received = String::from_utf8_lossy(&app.buffer).into_owned();
    assert!(received.starts_with("HTTP/1.1 200 OK\r\n"), "{received}");
    assert!(received.ends_with("\r\n\r\n0123456789"), "{received}");

    // Over HTTP/2 only the stalled stream is reset: the next request on
    // the same connection gets its whole response.
    let (mut sender, driver) = http2_client(&h).await;
    let get = |path: &str| {
        http::Request::get(format!("https://localhost:{}{path}", h.port()))
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::new())
            .unwrap()
    };
    let response = sender.send_request(get("/records/v1/stall")).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(3), response.into_body().collect()).await;
    let error = body.expect("the stalled stream was not reset").expect_err("a cut body must fail");
    // hyper's debug output names the HTTP/2 reset that the gateway sent.
    assert!(format!("{error:?}").contains("Reset(StreamId(1), INTERNAL_ERROR, Remote)"), "{error:?}");
    let response = sender.send_request(get("/records/v1/slow")).await.unwrap();
    assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "slowbody");
    driver.abort();

    let log = h.access_log().await;
    let events = |path: &str| log.iter().filter(|event| event["path"] == path).cloned().collect::<Vec<_>>();
    let stalled = events("/records/v1/stall");
    assert_eq!(stalled.len(), 2);
    for event in stalled {
        assert_eq!(event["status"], 200);
        assert_eq!(event["bytes_out"], 10);
        assert_eq!(event["reason"], "upstream_body_timeout");
    }
    let slow = events("/records/v1/slow");
    assert_eq!(slow.len(), 2);
    for event in slow {
        assert_eq!(event["bytes_out"], 8);
        assert_eq!(event["reason"], serde_json::Value::Null);
    }
}

/// An HTTP/2 upstream over mutual TLS with the platform's service
/// certificate. Each response waits `delay`, so that requests overlap.
struct Http2Upstream {
    address: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Every request: the upstream connection it came on, counted from 1,
    /// and its path.
    seen: Arc<Mutex<Vec<(usize, String)>>>,
    /// Connections numbered up to this value send GOAWAY and finish.
    goaway: watch::Sender<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Http2Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Http2Upstream {
    async fn start(platform: &Platform, listener: TcpListener, delay: Duration) -> Self {
        let leaf = platform.issue(CertificateKind::Service, "records", &["localhost", "127.0.0.1"]).await;
        let certificate = RenewingCertificate::new(&leaf).unwrap();
        let cache = TrustCache::new();
        cache.refresh(&platform.store).await.unwrap();
        let verifier = PlatformClientVerifier::new(platform.ca.root(), platform.domain(), cache).unwrap();
        let acceptor = PlatformAcceptor::new(certificate, verifier, &[b"h2"]).unwrap();

        let address = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (goaway, goaway_receiver) = watch::channel(0);
        let (accepted, record) = (Arc::clone(&connections), Arc::clone(&seen));
        let task = tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, record) = (acceptor.clone(), Arc::clone(&record));
                let mut goaway = goaway_receiver.clone();
                let connection = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                tasks.spawn(async move {
                    let Ok((tls, _)) = acceptor.accept(tcp).await else { return };
                    let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        record.lock().unwrap().push((connection, request.uri().path().to_owned()));
                        async move {
                            tokio::time::sleep(delay).await;
                            let body = Full::new(Bytes::from(format!("saw {}", request.uri().path())));
                            Ok::<_, std::convert::Infallible>(http::Response::new(body))
                        }
                    });
                    let serving = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service);
                    tokio::pin!(serving);
                    tokio::select! {
                        _ = serving.as_mut() => return,
                        _ = goaway.wait_for(|last| *last >= connection) => {}
                    }
                    serving.as_mut().graceful_shutdown();
                    let _ = serving.await;
                });
            }
        });
        Self { address, connections, seen, goaway, task }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<(usize, String)> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops the upstream and waits until its listening socket is closed.
    async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

/// Starts a one-worker gateway whose records service is reached over
/// HTTP/2 at a reserved port. Returns the listening socket on that port,
/// which accepts TCP connections but no TLS handshake until an upstream
/// takes it.
async fn start_http2_gateway() -> (Harness, TcpListener) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let h = start_gateway(format!("https://{address}"), |config| {
        let records = config.services.iter_mut().find(|service| service.name == "records").unwrap();
        records.upstream_http2 = true;
    })
    .await;
    listener.set_nonblocking(true).unwrap();
    (h, TcpListener::from_std(listener).unwrap())
}

/// Starts the gateway and an HTTP/2 upstream on the reserved port.
async fn start_http2(delay: Duration) -> (Harness, Http2Upstream) {
    let (h, listener) = start_http2_gateway().await;
    let upstream = Http2Upstream::start(&h.platform, listener, delay).await;
    (h, upstream)
}

/// Concurrent requests through one worker share one HTTP/2 connection,
/// whether or not an earlier request has opened it.
#[tokio::test]
async fn http2_requests_share_connection() {
    // (case, whether one request opens the connection first)
    for (case, warm) in [("warm pool", true), ("cold pool", false)] {
        let (h, listener) = start_http2_gateway().await;
        let token = records_token(&h);
        let delay = Duration::from_millis(300);
        let mut listener = Some(listener);
        let mut upstream = None;
        if warm {
            upstream = Some(Http2Upstream::start(&h.platform, listener.take().unwrap(), delay).await);
            let mut app = AppConnection::open(&h).await;
            app.send(&records_request("GET", "/records/v1/warm", &token, "", b"")).await;
            assert_eq!(app.response(false).await, (200, b"saw /records/v1/warm".to_vec()), "{case}");
        }

        // Eight requests in flight at once, on eight app connections.
        let mut apps = Vec::new();
        for _ in 0..8 {
            apps.push(AppConnection::open(&h).await);
        }
        for app in &mut apps {
            app.send(&records_request("GET", "/records/v1/many", &token, "", b"")).await;
        }
        // Cold, the upstream starts its TLS handshakes only now, so that
        // all eight requests arrive while the first connection is opening.
        if let Some(listener) = listener {
            tokio::time::sleep(Duration::from_millis(200)).await;
            upstream = Some(Http2Upstream::start(&h.platform, listener, delay).await);
        }
        let upstream = upstream.unwrap();

        for app in &mut apps {
            assert_eq!(app.response(false).await, (200, b"saw /records/v1/many".to_vec()), "{case}");
        }
        assert_eq!(upstream.seen().len(), 8 + usize::from(warm), "{case}");
        assert_eq!(upstream.connections(), 1, "{case}");
    }
}

/// After the upstream's HTTP/2 connection ends, by GOAWAY or by a restart
/// of the upstream on the same port, later requests succeed on a new
/// connection, which the pool then keeps.
#[tokio::test]
async fn http2_reconnects_after_goaway_or_restart() {
    // (case, upstream connections expected on the last upstream)
    for (case, connections) in [("goaway", 2), ("restart", 1)] {
        let (h, mut upstream) = start_http2(Duration::ZERO).await;
        let token = records_token(&h);
        let mut app = AppConnection::open(&h).await;
        app.send(&records_request("GET", "/records/v1/one", &token, "", b"")).await;
        assert_eq!(app.response(false).await, (200, b"saw /records/v1/one".to_vec()), "{case}");

        if case == "goaway" {
            upstream.goaway.send_replace(upstream.connections());
        } else {
            let address = upstream.address;
            upstream.stop().await;
            let listener = TcpListener::bind(address).await.unwrap();
            upstream = Http2Upstream::start(&h.platform, listener, Duration::ZERO).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;

        for target in ["/records/v1/two", "/records/v1/three"] {
            app.send(&records_request("GET", target, &token, "", b"")).await;
            let expected = format!("saw {target}").into_bytes();
            assert_eq!(app.response(false).await, (200, expected), "{case} {target}");
        }
        assert_eq!(upstream.connections(), connections, "{case}: {:?}", upstream.seen());
    }
}

/// The header read timeout applies to each request head on its own. A
/// slow head gets 408. A keep-alive connection with many quick heads, or
/// with a slow body, is not cut off. An idle connection is closed after
/// the timeout.
#[tokio::test]
async fn header_timer_per_request() {
    let upstream = ScriptedUpstream::start(None, |target| match target {
        "/records/v1/slow" => Reply::Delayed(Duration::from_millis(800), ok(b"slow")),
        _ => Reply::Send(ok(b"fast")),
    })
    .await;
    let h =
        start_gateway(upstream.url(), |config| config.gateway.header_read_timeout = Duration::from_millis(500)).await;
    let token = records_token(&h);
    let fast = records_request("GET", "/records/v1/fast", &token, "", b"");

    // A head that stops half-way.
    let mut app = AppConnection::open(&h).await;
    app.send(&fast[..20]).await;
    assert_eq!(app.response(false).await.0, 408);

    // Six whole heads 200 ms apart: 1.2 s on one connection.
    let mut app = AppConnection::open(&h).await;
    for index in 0..6 {
        app.send(&fast).await;
        assert_eq!(app.response(false).await, (200, b"fast".to_vec()), "request {index}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Three heads, each sent in four pieces 100 ms apart (300 ms a head).
    let mut app = AppConnection::open(&h).await;
    for index in 0..3 {
        for piece in fast.chunks(fast.len() / 4 + 1) {
            app.send(piece).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(app.response(false).await, (200, b"fast".to_vec()), "trickled request {index}");
    }

    // A body sent in five pieces 250 ms apart: the timeout covers only
    // the head, and the next head still gets the whole timeout.
    let mut app = AppConnection::open(&h).await;
    app.send(&records_request("POST", "/records/v1/fast", &token, "Content-Length: 10\r\n", b"")).await;
    for piece in [b"ab", b"cd", b"ef", b"gh", b"ij"] {
        tokio::time::sleep(Duration::from_millis(250)).await;
        app.send(piece).await;
    }
    assert_eq!(app.response(false).await, (200, b"fast".to_vec()), "trickled body");
    assert_eq!(upstream.seen().last().map(|seen| seen.body.clone()), Some(b"abcdefghij".to_vec()));
    app.send(&fast).await;
    assert_eq!(app.response(false).await, (200, b"fast".to_vec()), "after a trickled body");

    // An upstream slower than the timeout, then a request at once.
    let mut app = AppConnection::open(&h).await;
    app.send(&records_request("GET", "/records/v1/slow", &token, "", b"")).await;
    assert_eq!(app.response(false).await, (200, b"slow".to_vec()));
    app.send(&fast).await;
    assert_eq!(app.response(false).await, (200, b"fast".to_vec()));

    // An idle connection stays open for a while, then closes.
    assert!(!app.closed_within(Duration::from_millis(300)).await, "closed before the timeout");
    assert!(app.closed_within(Duration::from_millis(1200)).await, "still open after the timeout");
}

/// A task that is aborted when this is dropped, also when a test fails.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts a listener on 127.0.0.1 that accepts TCP connections and keeps
/// them open without sending a byte of TLS, until the returned task is
/// dropped.
async fn silent_upstream() -> (SocketAddr, AbortOnDrop) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut open_connections = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            open_connections.push(tcp);
        }
    });
    (address, AbortOnDrop(task))
}

/// Starts a listener on 127.0.0.1 with a backlog of 0 whose one queue
/// slot is taken by a connection it never accepts. Linux then drops further SYN
/// packets to it, as a filtered or overloaded host does. Both sockets
/// close when the returned values are dropped.
fn full_backlog_upstream() -> (SocketAddr, socket2::Socket, std::net::TcpStream) {
    use socket2::{Domain, Protocol, Socket, Type};

    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    socket.listen(0).unwrap();
    let address = socket.local_addr().unwrap().as_socket().unwrap();
    let queued = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).unwrap();
    (address, socket, queued)
}

/// An upstream that never completes TCP or TLS gets 502 with
/// `upstream_connect_timeout` once the connect timeout passes, well before
/// `gateway.upstream_timeout` would give 504.
#[tokio::test]
async fn upstream_connect_timeout_is_502() {
    let connect_timeout = Duration::from_millis(300);
    let upstream_timeout = Duration::from_secs(4);

    let (silent, _silent_task) = silent_upstream().await;
    let (full, _full_listener, _queued) = full_backlog_upstream();
    let full_probe = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(full)).await;
    assert!(full_probe.is_err(), "the full backlog accepted a connection: {full_probe:?}");

    for (case, address) in [("TLS never answered", silent), ("SYN dropped", full)] {
        let mut h = Harness::start_built(
            Some(1),
            |config| {
                config.gateway.upstream_timeout = upstream_timeout;
                let weather = config.services.iter_mut().find(|service| service.name == "weather").unwrap();
                weather.upstream = format!("https://{address}");
            },
            |gateway| gateway.with_upstream_connect_timeout(connect_timeout).unwrap(),
        )
        .await;
        let token = h.token("weather", &["weather:read"]);
        let request = format!(
            "GET /weather/v1/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );

        let started = Instant::now();
        let received = h.raw(request.as_bytes(), WAIT).await;
        let elapsed = started.elapsed();
        assert_eq!(status_of(&received), 502, "{case}: {received}");
        assert!(received.contains("\"error\":\"upstream_connect_timeout\""), "{case}: {received}");
        assert!(elapsed >= connect_timeout, "{case}: answered after {elapsed:?}");
        assert!(elapsed < upstream_timeout / 2, "{case}: answered after {elapsed:?}");

        let log = h.access_log().await;
        assert_eq!(log.len(), 1, "{case}: {log:?}");
        assert_eq!(log[0]["status"], 502, "{case}");
        assert_eq!(log[0]["reason"], "upstream_connect_timeout", "{case}");
    }
}
