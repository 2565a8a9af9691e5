//! The upstream connection pool of one gateway worker: kept-alive HTTP/1.1
//! connections, one at a time per request, and one shared HTTP/2
//! connection per upstream.
//!
//! Written here on hyper's connection API rather than taken from
//! hyper-util's pooled client. That client cost about a tenth of the
//! gateway's instructions per request in its checkout, dispatch and
//! return. It also copied its large request futures in memory and
//! spawned a task per HTTP/1.1 request to wait for the connection to
//! become idle. Each worker runs on one thread, so the pool's lock is
//! never contended. The lock exists only because hyper's service futures
//! must be `Send`.
//!
//! Invariants: an HTTP/1.1 connection goes back to the pool only after
//! its whole response body has arrived and the client has taken its whole
//! request body. A request is sent again, on a new connection, only when
//! hyper returns it unsent. That happens when a pooled connection closed
//! just before the request was written.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::{LimitedBody, RequestCounters};
use crate::routes::Upstream;

/// How long an idle HTTP/1.1 connection stays in the pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle HTTP/1.1 connections kept per upstream and worker; a connection
/// coming back to a full list is closed.
const MAX_IDLE_PER_UPSTREAM: usize = 256;

/// How long opening an upstream connection may take unless
/// [`crate::Gateway::with_upstream_connect_timeout`] sets another value:
/// the TCP connection, the TLS handshake and, for HTTP/2, the connection
/// preface. A request to an upstream that drops SYN packets or never
/// completes the TLS handshake then gets 502 after this time, not 504
/// after the whole `gateway.upstream_timeout`. With Linux's initial
/// retransmission timeout of 1 s, 5 s leaves room for a lost SYN to be
/// sent again twice, after 1 s and after 3 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The reason a request got no response from the upstream.
#[derive(Debug)]
pub(crate) struct UpstreamError {
    /// The failure with its causes, for the log only.
    pub detail: String,
    /// Set when opening the connection took longer than the connect
    /// timeout, which is then the value.
    pub connect_timed_out: Option<Duration>,
}

impl UpstreamError {
    fn new(context: &str, error: &dyn std::error::Error) -> Self {
        let mut detail = format!("{context}: {error}");
        let mut source = error.source();
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        Self { detail, connect_timed_out: None }
    }

    fn other(detail: String) -> Self {
        Self { detail, connect_timed_out: None }
    }
}

/// The TLS settings for upstream connections, shared by every worker.
#[derive(Clone)]
pub(crate) struct UpstreamTls {
    /// Offers only `http/1.1` by ALPN.
    http1: TlsConnector,
    /// Offers `h2`, then `http/1.1`.
    http2: TlsConnector,
}

impl UpstreamTls {
    /// Builds both connectors from `config` (mutual TLS to the platform's
    /// services), setting the ALPN list of each.
    pub(crate) fn new(config: ClientConfig) -> Self {
        let mut http1 = config.clone();
        http1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut http2 = config;
        http2.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self { http1: TlsConnector::from(Arc::new(http1)), http2: TlsConnector::from(Arc::new(http2)) }
    }
}

/// One worker's pool.
pub(crate) struct UpstreamPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    tls: UpstreamTls,
    /// The maximum time [`UpstreamPool::connect`] may take.
    connect_timeout: Duration,
    /// foldhash rather than SipHash: the keys come from the configuration,
    /// not from requests.
    idle: Mutex<HashMap<PoolKey, Idle, foldhash::fast::RandomState>>,
}

/// The name of an upstream's connections: [`Upstream::pool_key`].
type PoolKey = Arc<str>;

#[derive(Default)]
struct Idle {
    /// Oldest first; requests take the newest.
    http1: Vec<(http1::SendRequest<LimitedBody>, Instant)>,
    http2: Option<http2::SendRequest<LimitedBody>>,
    /// Held while a new connection to an `upstream_http2` service opens,
    /// so that requests arriving meanwhile wait for that one connection
    /// instead of each opening their own.
    http2_connecting: Arc<tokio::sync::Mutex<()>>,
}

/// A connection checked out for one request.
enum Connection {
    Http1(http1::SendRequest<LimitedBody>),
    Http2(http2::SendRequest<LimitedBody>),
}

impl UpstreamPool {
    /// Creates an empty pool that connects with `tls` and gives up opening
    /// a connection after `connect_timeout`.
    pub(crate) fn new(tls: UpstreamTls, connect_timeout: Duration) -> Self {
        Self { inner: Arc::new(PoolInner { tls, connect_timeout, idle: Mutex::new(HashMap::default()) }) }
    }

    /// Sends `request` to `upstream` on a pooled connection, or on a new
    /// one. The request's URI must be in absolute form; over HTTP/1.1 it
    /// is sent in origin form with `Host` set to the upstream's authority.
    /// The caller bounds the time.
    pub(crate) async fn send(
        &self,
        upstream: &Upstream,
        mut request: Request<LimitedBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let key = &upstream.pool_key;
        let origin = &upstream.origin;
        let authority = origin
            .authority()
            .cloned()
            .ok_or_else(|| UpstreamError::other(format!("upstream URL {origin} has no host")))?;
        let absolute = request.uri().clone();

        // A pooled connection first; if it closed before taking the
        // request, once more on a new connection.
        for reused in [true, false] {
            let connection = match reused {
                true => match self.checkout(key) {
                    Some(connection) => connection,
                    None => continue,
                },
                // Boxed: the connect future is large and rarely needed, and
                // would otherwise be copied with this one on every request.
                false => Box::pin(self.connect_or_share(upstream, &authority)).await?,
            };
            match connection {
                Connection::Http1(mut sender) => {
                    if sender.ready().await.is_err() {
                        continue;
                    }
                    to_origin_form(&mut request, &absolute, &authority);
                    let request_counters = Arc::clone(request.body().counters());
                    match sender.try_send_request(request).await {
                        Ok(response) => {
                            let ticket = Ticket {
                                pool: Arc::clone(&self.inner),
                                key: Arc::clone(key),
                                sender,
                                request_counters,
                            };
                            return Ok(response.map(|body| PooledBody { inner: body, ticket: Some(ticket) }));
                        }
                        Err(mut failed) => match failed.take_message() {
                            Some(unsent) if reused => request = unsent,
                            _ => return Err(UpstreamError::new("upstream request failed", failed.error())),
                        },
                    }
                }
                Connection::Http2(mut sender) => {
                    *request.uri_mut() = absolute.clone();
                    request.headers_mut().remove(header::HOST);
                    match sender.try_send_request(request).await {
                        Ok(response) => return Ok(response.map(|body| PooledBody { inner: body, ticket: None })),
                        Err(mut failed) => match failed.take_message() {
                            Some(unsent) if reused => {
                                self.forget_http2(key);
                                request = unsent;
                            }
                            _ => return Err(UpstreamError::new("upstream request failed", failed.error())),
                        },
                    }
                }
            }
        }
        Err(UpstreamError::other("no upstream connection could take the request".to_owned()))
    }

    /// Takes an open connection to `key`: the shared HTTP/2 one, or the
    /// most recently used idle HTTP/1.1 one. Drops closed and expired
    /// connections on the way.
    fn checkout(&self, key: &str) -> Option<Connection> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = idle.get_mut(key)?;
        if let Some(sender) = &entry.http2 {
            if !sender.is_closed() {
                return Some(Connection::Http2(sender.clone()));
            }
            entry.http2 = None;
        }
        let now = Instant::now();
        entry.http1.retain(|(sender, since)| !sender.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT);
        entry.http1.pop().map(|(sender, _)| Connection::Http1(sender))
    }

    /// Opens a connection like [`Self::connect`]. For an `upstream_http2`
    /// service it first waits for any connection already opening, and
    /// takes that one if it is an open HTTP/2 connection.
    ///
    /// NOTE: an `upstream_http2` service whose upstream chooses HTTP/1.1
    /// by ALPN also opens its connections one at a time per worker.
    async fn connect_or_share(&self, upstream: &Upstream, authority: &Authority) -> Result<Connection, UpstreamError> {
        if !upstream.http2 {
            return self.connect(upstream, authority).await;
        }
        let connecting = {
            let mut idle = self.inner.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            Arc::clone(&idle.entry(Arc::clone(&upstream.pool_key)).or_default().http2_connecting)
        };
        let _connecting = connecting.lock().await;
        let shared = {
            let idle = self.inner.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            idle.get(&upstream.pool_key).and_then(|entry| entry.http2.clone()).filter(|sender| !sender.is_closed())
        };
        match shared {
            Some(sender) => Ok(Connection::Http2(sender)),
            None => self.connect(upstream, authority).await,
        }
    }

    fn forget_http2(&self, key: &str) {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = idle.get_mut(key) {
            entry.http2 = None;
        }
    }

    /// Opens a connection like [`Self::open`], failing with
    /// [`UpstreamError::connect_timed_out`] set once that takes longer than
    /// the pool's connect timeout.
    async fn connect(&self, upstream: &Upstream, authority: &Authority) -> Result<Connection, UpstreamError> {
        let limit = self.inner.connect_timeout;
        match tokio::time::timeout(limit, self.open(upstream, authority)).await {
            Ok(opened) => opened,
            Err(_) => Err(UpstreamError {
                detail: format!("opening a connection to {authority} timed out after {limit:?}"),
                connect_timed_out: Some(limit),
            }),
        }
    }

    /// Opens a connection: TCP, then mutual TLS for `https` origins, then
    /// HTTP/2 if the upstream chose `h2` by ALPN, else HTTP/1.1. The
    /// connection's driver runs as its own task until the connection
    /// closes. A new HTTP/2 connection is shared at once.
    async fn open(&self, upstream: &Upstream, authority: &Authority) -> Result<Connection, UpstreamError> {
        let tls = upstream.origin.scheme() == Some(&Scheme::HTTPS);
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = match host.parse::<IpAddr>() {
            Ok(ip) => TcpStream::connect(SocketAddr::new(ip, port)).await,
            Err(_) => TcpStream::connect((host, port)).await,
        }
        .map_err(|error| UpstreamError::new(&format!("connecting to {host}:{port} failed"), &error))?;
        let _ = tcp.set_nodelay(true);
        if !tls {
            return self.handshake_http1(TokioIo::new(tcp)).await;
        }

        let name = ServerName::try_from(host.to_owned())
            .map_err(|error| UpstreamError::new(&format!("invalid upstream host {host:?}"), &error))?;
        let connector = if upstream.http2 { &self.inner.tls.http2 } else { &self.inner.tls.http1 };
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|error| UpstreamError::new(&format!("TLS with {host}:{port} failed"), &error))?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
            return self.handshake_http1(TokioIo::new(stream)).await;
        }

        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| UpstreamError::new("HTTP/2 handshake with the upstream failed", &error))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream HTTP/2 connection ended");
            }
        });
        let mut idle = self.inner.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        idle.entry(Arc::clone(&upstream.pool_key)).or_default().http2 = Some(sender.clone());
        Ok(Connection::Http2(sender))
    }

    async fn handshake_http1<T>(&self, io: TokioIo<T>) -> Result<Connection, UpstreamError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|error| UpstreamError::new("HTTP/1.1 handshake with the upstream failed", &error))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(Connection::Http1(sender))
    }
}

/// Rewrites `request` for HTTP/1.1 (RFC 9112 section 3.2): the target in
/// origin form and `Host` naming the upstream.
fn to_origin_form(request: &mut Request<LimitedBody>, absolute: &Uri, authority: &Authority) {
    let target = absolute.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(target);
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        request.headers_mut().insert(header::HOST, host);
    }
}

/// Returns an HTTP/1.1 connection to its pool once the response on it has
/// ended.
struct Ticket {
    pool: Arc<PoolInner>,
    key: PoolKey,
    sender: http1::SendRequest<LimitedBody>,
    /// The request's counters. Their `ended` flag is false while the
    /// request body is still being sent.
    request_counters: Arc<RequestCounters>,
}

impl Ticket {
    /// Pools the connection, or drops it if it is closed or still sending
    /// the request body. An upstream may respond before it has read the
    /// whole request body, and a pooled connection in that state would
    /// make the next request wait until the slow body ends.
    fn release(self) {
        if self.sender.is_closed() || !self.request_counters.ended.load(Ordering::Relaxed) {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let list = &mut idle.entry(self.key).or_default().http1;
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push((self.sender, Instant::now()));
        }
    }
}

/// An upstream response body. Over HTTP/1.1 it returns the connection to
/// the pool once the whole body has arrived, whether the body was read to
/// its end or dropped after its last byte, unless the request body has not
/// ended yet. A body dropped earlier closes its connection.
pub(crate) struct PooledBody {
    inner: Incoming,
    ticket: Option<Ticket>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            ticket.release();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            this.release();
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

impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
