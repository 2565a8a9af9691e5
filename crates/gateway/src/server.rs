//! The listener: TLS handshakes, HTTP/1.1 and HTTP/2 connections, reload
//! and graceful shutdown.
//!
//! The gateway runs one worker thread per core, each with a single-threaded
//! tokio runtime, its own listening socket on the same address
//! (`SO_REUSEPORT`, so the kernel spreads new connections over them) and
//! its own pool of upstream connections. A request is then served from
//! accept to upstream response on one thread, with no hand-over between
//! threads. With one shared work-stealing runtime, much of the time went to
//! waking threads to pass each request to the one task that owned the
//! upstream HTTP/2 connection. Routes, limits, rate state, tokens and
//! decisions are shared by all workers.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use portcullis_config::PlatformConfig;
use portcullis_guard::DecisionReceiver;
use portcullis_identity::{PlatformAcceptor, PlatformClientVerifier};
use rustls::client::ResolvesClientCert;
use rustls::server::ResolvesServerCert;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::error::GatewayError;
use crate::events::{AccessEvent, EventSinks};
use crate::framing::{REQUEST_ID_HEADER, ServerNames};
use crate::h2_watch::{ReportRejection, ResetLedger, StreamRejection, WatchedIo};
use crate::head::{HeadCheckedIo, Rejection, RejectionSlot};
use crate::limits::{Rate, RateLimits, ServiceRates};
use crate::pool::{DEFAULT_CONNECT_TIMEOUT, UpstreamPool, UpstreamTls};
use crate::proxy::{Peer, Shared, handle};
use crate::routes::RouteTable;
use crate::spaces::AppServices;
use crate::timer::ConnectionTimer;

/// ALPN protocols offered to apps and upstreams, HTTP/2 first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// hyper's smallest allowed HTTP/1 read buffer; heads between
/// `gateway.max_header_bytes` and this size are rejected by the handler.
const MIN_READ_BUFFER: usize = 8192;

/// The certificates and trust the gateway needs.
pub struct GatewayTls {
    /// The gateway's server certificate, usually a `RenewingCertificate`.
    pub server_certificate: Arc<dyn ResolvesServerCert>,
    /// The client certificate presented to upstreams, usually the same
    /// `RenewingCertificate`.
    pub client_certificate: Arc<dyn ResolvesClientCert>,
    /// The verifier of app certificates; its trust cache supplies pins and
    /// revocations.
    pub verifier: Arc<PlatformClientVerifier>,
    /// The platform root, the only trust anchor for upstream certificates.
    pub platform_root: CertificateDer<'static>,
}

/// A gateway ready to listen.
pub struct Gateway {
    shared: Shared,
    acceptor: PlatformAcceptor,
    upstream_tls: UpstreamTls,
    upstream_connect_timeout: Duration,
    workers: usize,
}

impl Gateway {
    /// Builds a gateway from the configuration's services and `gateway`
    /// section. `tokens` verifies bearer tokens (share its keys and
    /// invalidations with the token service), `decisions` is the guard's
    /// subscription and `sinks` receive the access events.
    pub fn new(
        config: &PlatformConfig,
        tls: GatewayTls,
        tokens: portcullis_token::Verifier,
        decisions: DecisionReceiver,
        sinks: EventSinks,
    ) -> Result<Self, GatewayError> {
        let routes = RouteTable::from_config(config)?;
        let trust = Arc::clone(tls.verifier.cache());
        let acceptor = PlatformAcceptor::new(tls.server_certificate, tls.verifier, &ALPN)?;

        // The pool sets the ALPN list per connection kind.
        let client_config =
            portcullis_identity::policy::client_config(&tls.platform_root, tls.client_certificate, &[])?;
        let upstream_tls = UpstreamTls::new(client_config);
        let workers = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);

        let shared = Shared {
            routes: ArcSwap::from_pointee(routes),
            settings: ArcSwap::from_pointee(config.gateway.clone()),
            limits: RateLimits::new(&rates_of(config)),
            tokens,
            trust,
            decisions,
            sinks,
            server_names: ServerNames::for_trust_domain(&config.trust_domain),
            connections: Arc::default(),
            buffered: Arc::default(),
            app_services: None,
        };
        Ok(Self { shared, acceptor, upstream_tls, upstream_connect_timeout: DEFAULT_CONNECT_TIMEOUT, workers })
    }

    /// Restricts each app to the services in `app_services`: an app not
    /// listed there gets 403 `app_not_admitted`, and a service outside its
    /// list 403 `service_not_in_space`. Without it, every app with a valid
    /// token may call the token's service.
    pub fn with_app_services(mut self, app_services: Arc<AppServices>) -> Self {
        self.shared.app_services = Some(app_services);
        self
    }

    /// Adds names by which apps reach the gateway, DNS names or IP
    /// addresses without a port, to those an absolute-form request target
    /// may use. By default these are `localhost`, `gateway.<trust_domain>`
    /// (the names of the listener certificate the platform issues) and the
    /// local address of each connection. Fails on the first name that is
    /// neither a DNS name nor an IP address.
    pub fn with_server_names<S: AsRef<str>>(
        mut self,
        names: impl IntoIterator<Item = S>,
    ) -> Result<Self, GatewayError> {
        for name in names {
            self.shared.server_names.add(name.as_ref())?;
        }
        Ok(self)
    }

    /// Sets how long opening an upstream connection may take: TCP, the TLS
    /// handshake and the HTTP/2 preface (default
    /// [`DEFAULT_CONNECT_TIMEOUT`], 5 s). Past it the app gets 502 with
    /// `upstream_connect_timeout`. It takes effect only when shorter than
    /// `gateway.upstream_timeout`, which otherwise ends the wait first with
    /// 504. Fails unless `timeout` is between 1 ms and 60 s.
    pub fn with_upstream_connect_timeout(mut self, timeout: Duration) -> Result<Self, GatewayError> {
        self.upstream_connect_timeout = valid_connect_timeout(timeout)?;
        Ok(self)
    }

    /// Sets the number of worker threads (default: one per core, as
    /// `std::thread::available_parallelism` reports). At least 1.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Binds `address` (use port 0 for an ephemeral port) once per worker
    /// and starts the workers. Must be called inside a tokio runtime, which
    /// runs the housekeeping task.
    pub async fn start(self, address: SocketAddr) -> Result<RunningGateway, GatewayError> {
        let shared = Arc::new(self.shared);

        // The first socket fixes the port, so that a port 0 request gives
        // every worker the same ephemeral port.
        let first = reuse_port_listener(address)?;
        let local_addr = first.local_addr().map_err(|source| GatewayError::Bind { address, source })?;
        let mut listeners = vec![first];
        for _ in 1..self.workers {
            listeners.push(reuse_port_listener(local_addr)?);
        }

        let (stop, stopped) = watch::channel(false);
        let (force, forced) = watch::channel(false);
        let (finished, all_finished) = mpsc::channel::<()>(1);
        let mut threads = Vec::new();
        for (index, listener) in listeners.into_iter().enumerate() {
            let worker = Worker {
                listener,
                acceptor: self.acceptor.clone(),
                shared: Arc::clone(&shared),
                upstream_tls: self.upstream_tls.clone(),
                upstream_connect_timeout: self.upstream_connect_timeout,
                stopped: stopped.clone(),
                forced: forced.clone(),
                _finished: finished.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("gateway-{index}"))
                .spawn(move || worker.run())
                .map_err(|source| GatewayError::Bind { address: local_addr, source })?;
            threads.push(thread);
        }
        let housekeeping = tokio::spawn(housekeeping(Arc::clone(&shared)));
        let busy_poll_window = shared.settings.load().busy_poll_window;
        tracing::info!(
            address = %local_addr,
            workers = threads.len(),
            routes = shared.routes.load().len(),
            "gateway listening"
        );
        Ok(RunningGateway { shared, local_addr, stop, force, all_finished, housekeeping, busy_poll_window })
    }
}

/// Returns `timeout` if it lies between 1 ms and 60 s. Zero would fail
/// every new upstream connection, and a connect timeout counts only while
/// it is shorter than `gateway.upstream_timeout`.
fn valid_connect_timeout(timeout: Duration) -> Result<Duration, GatewayError> {
    if timeout < Duration::from_millis(1) || timeout > Duration::from_secs(60) {
        return Err(GatewayError::Setting {
            setting: "with_upstream_connect_timeout",
            value: format!("{timeout:?}"),
            reason: "give a duration from 1 ms to 60 s",
        });
    }
    Ok(timeout)
}

/// Opens a listening socket on `address` with `SO_REUSEPORT`, so that each
/// worker has its own. Linux hands the connections of one port only to sockets
/// of the same user.
fn reuse_port_listener(address: SocketAddr) -> Result<std::net::TcpListener, GatewayError> {
    use socket2::{Domain, Protocol, Socket, Type};

    let bind_error = |source| GatewayError::Bind { address, source };
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP)).map_err(bind_error)?;
    socket.set_reuse_address(true).map_err(bind_error)?;
    socket.set_reuse_port(true).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    socket.bind(&address.into()).map_err(bind_error)?;
    socket.listen(1024).map_err(bind_error)?;
    Ok(socket.into())
}

/// One worker thread's share of the gateway.
struct Worker {
    listener: std::net::TcpListener,
    acceptor: PlatformAcceptor,
    shared: Arc<Shared>,
    upstream_tls: UpstreamTls,
    upstream_connect_timeout: Duration,
    stopped: watch::Receiver<bool>,
    forced: watch::Receiver<bool>,
    /// Dropped when the thread ends; the shutdown waits for every worker's.
    _finished: mpsc::Sender<()>,
}

impl Worker {
    /// Runs the worker's runtime: accepts until stopped, then waits until
    /// its connections have finished or the shutdown's deadline forces the
    /// end, and drops whatever is still open.
    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "cannot start a gateway worker's runtime");
                return;
            }
        };
        let Worker {
            listener,
            acceptor,
            shared,
            upstream_tls,
            upstream_connect_timeout,
            stopped,
            mut forced,
            _finished,
        } = self;
        runtime.block_on(async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::error!(%error, "cannot register a gateway worker's listener");
                    return;
                }
            };
            let pool = Arc::new(UpstreamPool::new(upstream_tls, upstream_connect_timeout));
            crate::busy_poll::start(shared.settings.load().busy_poll_window);
            let (alive, mut drained) = mpsc::channel::<()>(1);
            accept_loop(listener, acceptor, shared, pool, stopped, alive).await;
            tokio::select! {
                _ = drained.recv() => {}
                _ = forced.wait_for(|forced| *forced) => {}
            }
        });
    }
}

/// Returns the configured rates: the gateway's for every service, and a
/// service's own where it sets `rate_per_second` or `rate_burst` (the
/// other then comes from the gateway).
fn rates_of(config: &PlatformConfig) -> ServiceRates {
    let default = Rate { per_second: config.gateway.rate_per_second, burst: config.gateway.rate_burst };
    let services = config
        .services
        .iter()
        .filter(|service| service.rate_per_second.is_some() || service.rate_burst.is_some())
        .map(|service| {
            let rate = Rate {
                per_second: service.rate_per_second.unwrap_or(default.per_second),
                burst: service.rate_burst.unwrap_or(default.burst),
            };
            (service.name.clone(), rate)
        })
        .collect();
    ServiceRates { default, services }
}

/// A gateway that is accepting connections. Dropping it without
/// [`RunningGateway::shutdown`] aborts the accept loop; open connections
/// then end on their own.
pub struct RunningGateway {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    force: watch::Sender<bool>,
    all_finished: mpsc::Receiver<()>,
    housekeeping: tokio::task::JoinHandle<()>,
    /// The busy-poll window the workers started with.
    busy_poll_window: Duration,
}

/// The outcome of a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// Every connection finished its requests before the deadline.
    Drained,
    /// The deadline passed; the remaining connections were dropped.
    DeadlinePassed,
}

impl RunningGateway {
    /// The address the gateway listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Applies the routes, upstreams and `gateway` limits of `config`
    /// without a restart. Requests already routed finish with the table
    /// they started with. Rate counts restart only if the rate changed.
    /// The listener address, TLS settings and `gateway.busy_poll_window`
    /// are not reloaded. A changed window is logged at debug only, because
    /// the platform's reload names it among the settings that need a
    /// restart.
    pub fn reload(&self, config: &PlatformConfig) -> Result<(), GatewayError> {
        let routes = RouteTable::from_config(config)?;
        let count = routes.len();
        if config.gateway.busy_poll_window != self.busy_poll_window {
            tracing::debug!(
                running = ?self.busy_poll_window,
                configured = ?config.gateway.busy_poll_window,
                "gateway.busy_poll_window changed; it takes effect only when the gateway restarts"
            );
        }
        self.shared.routes.store(Arc::new(routes));
        self.shared.settings.store(Arc::new(config.gateway.clone()));
        self.shared.limits.set_rates(&rates_of(config));
        tracing::info!(routes = count, "gateway configuration reloaded");
        Ok(())
    }

    /// Access events dropped by the file sink because its queue was full.
    pub fn dropped_access_events(&self) -> u64 {
        self.shared.sinks.dropped_file_events()
    }

    /// A function returning [`Self::dropped_access_events`], for a metrics
    /// collector that outlives this handle's borrow.
    pub fn dropped_counter(&self) -> Arc<dyn Fn() -> u64 + Send + Sync> {
        let shared = Arc::clone(&self.shared);
        Arc::new(move || shared.sinks.dropped_file_events())
    }

    /// Stops accepting connections, asks every open connection to finish
    /// its requests in flight (HTTP/1.1 closes after the current response,
    /// HTTP/2 sends GOAWAY), and waits for them up to `deadline`.
    pub async fn shutdown(mut self, deadline: Duration) -> ShutdownOutcome {
        tracing::info!(deadline = ?deadline, "gateway shutting down");
        let _ = self.stop.send(true);
        self.housekeeping.abort();
        let outcome = match tokio::time::timeout(deadline, self.all_finished.recv()).await {
            Ok(_) => ShutdownOutcome::Drained,
            Err(_) => {
                let _ = self.force.send(true);
                let _ = tokio::time::timeout(Duration::from_secs(5), self.all_finished.recv()).await;
                ShutdownOutcome::DeadlinePassed
            }
        };
        tracing::info!(?outcome, "gateway stopped");
        outcome
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        // The workers stop accepting, ask their connections to finish and
        // end when they have.
        let _ = self.stop.send(true);
        self.housekeeping.abort();
    }
}

/// Drops, every minute, the rate state of apps not seen recently.
async fn housekeeping(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let now = crate::events::now_ms();
        let decisions = shared.decisions.borrow().clone();
        shared.limits.retain_recent(|app_id| {
            matches!(decisions.verdict(app_id, now), portcullis_guard::Verdict::Throttle { .. })
        });
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: PlatformAcceptor,
    shared: Arc<Shared>,
    pool: Arc<UpstreamPool>,
    mut stopped: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Running out of file descriptors is the usual cause; wait
                // instead of spinning.
                tracing::error!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let connection = serve_connection(
            tcp,
            remote,
            acceptor.clone(),
            Arc::clone(&shared),
            Arc::clone(&pool),
            stopped.clone(),
            alive.clone(),
        );
        tokio::spawn(connection);
    }
}

/// Runs the TLS handshake and then HTTP on one connection. `alive` is
/// held until the connection ends, and on HTTP/2 connections also until
/// its held reset events are recorded. That is how shutdown counts them.
async fn serve_connection(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: PlatformAcceptor,
    shared: Arc<Shared>,
    pool: Arc<UpstreamPool>,
    mut stopped: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let settings = shared.settings.load_full();
    let local_addr = match tcp.local_addr() {
        Ok(address) => address,
        Err(error) => {
            tracing::info!(%remote, %error, "reading the local address of a new connection failed; connection closed");
            return;
        }
    };
    let (tls, verified) = match tokio::time::timeout(settings.header_read_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(error)) => {
            tracing::info!(%remote, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%remote, "TLS handshake timed out");
            return;
        }
    };
    let Some(app_id) = verified.app_id().map(str::to_owned) else {
        tracing::warn!(%remote, identity = %verified.identity(), "connection rejected: not an app");
        return;
    };
    let certificate_thumbprint = match tls.get_ref().1.peer_certificates().and_then(|chain| chain.first()) {
        Some(leaf) => portcullis_token::certificate_thumbprint(leaf.as_ref()),
        None => return,
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());

    // Held until the connection ends. A connection over the limit is not
    // counted: its first request gets 429 and the connection closes, and if
    // no request arrives within header_read_timeout it is dropped.
    let limit = settings.max_connections_per_app;
    let slot = shared.connections.acquire(&app_id, 1, u64::from(limit));
    let over_connection_limit = slot.is_none().then_some(limit);
    if over_connection_limit.is_some() {
        tracing::info!(%remote, %app_id, limit, "connection over gateway.max_connections_per_app; its first request gets 429");
    }
    let peer = Arc::new(Peer {
        app_id,
        serial: verified.serial().to_owned(),
        certificate_thumbprint,
        spki_pin: verified.spki_pin().to_owned(),
        local_addr,
        over_connection_limit,
        h2_resets: h2.then(|| Arc::new(ResetLedger::default())),
    });
    tracing::debug!(%remote, app_id = %peer.app_id, h2, "connection accepted");

    let max_buf_size = (settings.max_header_bytes as usize).max(MIN_READ_BUFFER);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(ConnectionTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        // The request-head check ends the stream before a rejected head, and
        // hyper must then still finish the responses in progress.
        .half_close(true)
        .max_buf_size(max_buf_size)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(settings.max_header_bytes.min(u32::MAX as u64) as u32);
    let builder = if h2 { builder.http2_only() } else { builder.http1_only() };

    let io = SharedIo::new(tls);
    let rejections = Arc::new(RejectionSlot::default());
    let checked = HeadCheckedIo::new(io.clone(), !h2, max_buf_size, Arc::clone(&rejections));
    let report: Option<ReportRejection> = h2.then(|| {
        let shared = Arc::clone(&shared);
        let peer = Arc::clone(&peer);
        let alive = alive.clone();
        Arc::new(move |rejection| report_stream_rejection(&shared, &peer, remote, &alive, rejection)) as ReportRejection
    });
    let watched = WatchedIo::new(checked, report);
    let service_shared = Arc::clone(&shared);
    let service_peer = Arc::clone(&peer);
    let answered = over_connection_limit.map(|_| Arc::new(tokio::sync::Notify::new()));
    let service_answered = answered.clone();
    let service = service_fn(move |request| {
        let shared = Arc::clone(&service_shared);
        let pool = Arc::clone(&pool);
        let peer = Arc::clone(&service_peer);
        let answered = service_answered.clone();
        async move {
            let response = handle(shared, pool, peer, request).await;
            if let Some(answered) = answered {
                answered.notify_one();
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let connection = builder.serve_connection(TokioIo::new(watched), service);
    tokio::pin!(connection);

    // Resolves only on a connection over the limit: true once the response
    // to its first request exists, false if no request arrived in time.
    let over_limit_done = async {
        match &answered {
            Some(answered) => tokio::time::timeout(settings.header_read_timeout, answered.notified()).await.is_ok(),
            None => std::future::pending().await,
        }
    };

    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopped.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.as_mut().await
        }
        () = io.idle(settings.idle_timeout) => {
            tracing::debug!(%remote, app_id = %peer.app_id, idle = ?settings.idle_timeout, "idle connection shut down");
            connection.as_mut().graceful_shutdown();
            connection.as_mut().await
        }
        in_time = over_limit_done => {
            if !in_time {
                tracing::info!(%remote, app_id = %peer.app_id, "connection over the connection limit sent no request in time; closed");
                return;
            }
            // The 429 of HTTP/1.1 carries `Connection: close`; HTTP/2 gets
            // GOAWAY after the streams in progress.
            connection.as_mut().graceful_shutdown();
            tokio::time::timeout(settings.header_read_timeout, connection.as_mut()).await.unwrap_or(Ok(()))
        }
    };
    drop(slot);

    let mut io = io;
    if let Some(rejection) = rejections.take_reached() {
        answer_rejected_head(&mut io, &shared, &peer, rejection).await;
        return;
    }
    if let Err(error) = result {
        let timed_out = error.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout);
        if timed_out {
            answer_head_timeout(&mut io, &shared, &peer, remote, rejections.head_pending()).await;
        } else if let Some(reason) = http2_protocol_error(error.as_ref()) {
            record_http2_protocol_error(&shared, &peer, remote, reason);
        } else {
            tracing::debug!(%remote, %error, "connection ended with an error");
        }
    }
}

/// Returns the error code of the GOAWAY frame that h2 sent because the
/// app broke the HTTP/2 protocol (RFC 9113 section 5.4.1). Returns `None`
/// for any other end of the connection: a GOAWAY the app sent, a graceful
/// shutdown (NO_ERROR), or an I/O error.
fn http2_protocol_error(error: &(dyn std::error::Error + 'static)) -> Option<h2::Reason> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(h2_error) = current.downcast_ref::<h2::Error>() {
            let reason = h2_error.reason().filter(|reason| *reason != h2::Reason::NO_ERROR);
            return reason.filter(|_| h2_error.is_go_away() && h2_error.is_library());
        }
        cause = current.source();
    }
    None
}

/// Records one access event with status 400 and reason
/// `http2_protocol_error` for a connection that h2 closed with GOAWAY
/// because of a protocol error, so the guard counts it as malformed. h2
/// has already sent the GOAWAY frame, which is the only response.
fn record_http2_protocol_error(shared: &Shared, peer: &Peer, remote: SocketAddr, reason: h2::Reason) {
    let request_id = crate::framing::new_request_id();
    tracing::info!(%remote, app_id = %peer.app_id, %request_id, %reason, "HTTP/2 connection closed for a protocol error");
    let event = head_event(peer, request_id, (String::new(), String::new()), StatusCode::BAD_REQUEST, 0);
    shared.sinks.emit(AccessEvent { reason: Some("http2_protocol_error".to_owned()), ..event });
}

/// Records the access event of a request that h2 rejected before the
/// handler received it. A header list over the limit gets 431
/// `headers_too_large`, a stream over the concurrency limit (REFUSED_STREAM)
/// 429 `too_many_streams`, and any other reset that the app's frames caused
/// 400 `http2_stream_error`. h2 has already sent its response or reset.
fn record_stream_rejection(shared: &Shared, peer: &Peer, remote: SocketAddr, rejection: StreamRejection) {
    const REFUSED_STREAM: u32 = 0x7;

    let request_id = crate::framing::new_request_id();
    let (status, reason) = match rejection {
        StreamRejection::HeadersTooLarge { .. } => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large"),
        StreamRejection::Reset { code: REFUSED_STREAM, .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_streams"),
        StreamRejection::Reset { .. } => (StatusCode::BAD_REQUEST, crate::body::H2_STREAM_ERROR),
    };
    tracing::info!(%remote, app_id = %peer.app_id, %request_id, ?rejection, reason, "HTTP/2 stream rejected by h2");
    let event = head_event(peer, request_id, (String::new(), String::new()), status, 0);
    shared.sinks.emit(AccessEvent { reason: Some(reason.to_owned()), ..event });
}

/// Records `rejection` at once, or, if a handler may take it over, after
/// [`crate::h2_watch::RESET_EVENT_DELAY`] unless a handler has claimed it
/// by then. The delayed recording keeps the worker's shutdown waiting
/// through `alive`.
fn report_stream_rejection(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    remote: SocketAddr,
    alive: &mpsc::Sender<()>,
    rejection: StreamRejection,
) {
    let Some(ledger) = peer.h2_resets.as_ref().filter(|_| ResetLedger::holds(rejection)) else {
        record_stream_rejection(shared, peer, remote, rejection);
        return;
    };

    let due = ledger.hold(rejection, std::time::Instant::now());
    let (shared, peer, alive) = (Arc::clone(shared), Arc::clone(peer), alive.clone());
    tokio::spawn(async move {
        tokio::time::sleep_until(due.into()).await;
        let Some(ledger) = peer.h2_resets.as_ref() else { return };
        for rejection in ledger.take_due(std::time::Instant::now()) {
            record_stream_rejection(&shared, &peer, remote, rejection);
        }
        drop(alive);
    });
}

/// Sends 408 (RFC 9110 section 15.5.9) on a connection whose request head
/// did not arrive within `gateway.header_read_timeout`, which hyper closes
/// without a response. Records an access event only if part of a head had
/// arrived (`head_started`), because hyper's timer also ends idle
/// keep-alive connections, which are not requests.
async fn answer_head_timeout(io: &mut SharedIo, shared: &Shared, peer: &Peer, remote: SocketAddr, head_started: bool) {
    let request_id = crate::framing::new_request_id();
    tracing::info!(%remote, app_id = %peer.app_id, %request_id, head_started, "request head not received in time");
    let body = serde_json::json!({ "error": "request_timeout", "request_id": request_id }).to_string();
    let headers =
        [("content-type", "application/json"), ("connection", "close"), (REQUEST_ID_HEADER, request_id.as_str())];
    let response = encode_response(StatusCode::REQUEST_TIMEOUT, headers, body.as_bytes());
    write_and_close(io, &response).await;
    if !head_started {
        return;
    }

    let event = head_event(peer, request_id, (String::new(), String::new()), StatusCode::REQUEST_TIMEOUT, body.len());
    shared.sinks.emit(AccessEvent { reason: Some("request_timeout".to_owned()), ..event });
}

/// Sends 400 for a request head that [`crate::head`] held back, after
/// hyper has responded to the requests before it, and records the access
/// event.
async fn answer_rejected_head(io: &mut SharedIo, shared: &Shared, peer: &Peer, rejection: Rejection) {
    let request_id = crate::framing::new_request_id();
    let span = tracing::info_span!("request", app_id = %peer.app_id, request_id = %request_id);
    let error = match rejection.too_large {
        Some(max) => GatewayError::HeadersTooLarge { size: max as u64, max: max as u64 },
        None => GatewayError::Framing { reason: rejection.reason },
    };
    let response = span.in_scope(|| error.to_response(&request_id));
    let body = response.body().clone().collect().await.map(|collected| collected.to_bytes()).unwrap_or_default();

    let headers = response
        .headers()
        .iter()
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .chain([(REQUEST_ID_HEADER, request_id.as_str())]);
    let bytes = encode_response(response.status(), headers, &body);
    write_and_close(io, &bytes).await;

    let event = head_event(peer, request_id, (rejection.method, rejection.path), response.status(), body.len());
    shared.sinks.emit(AccessEvent { reason: Some(error.code().to_owned()), ..event });
}

/// Builds the access event of a response the gateway wrote itself for a
/// request head that never reached a route: no service, route or latency.
fn head_event(
    peer: &Peer,
    request_id: String,
    (method, path): (String, String),
    status: StatusCode,
    bytes_out: usize,
) -> AccessEvent {
    AccessEvent {
        at_ms: crate::events::now_ms(),
        request_id,
        app_id: peer.app_id.clone(),
        service: String::new(),
        route: String::new(),
        method,
        path,
        status: status.as_u16(),
        bytes_in: 0,
        bytes_out: bytes_out as u64,
        latency_us: 0,
        reason: None,
    }
}

/// Encodes an HTTP/1.1 response that the gateway writes itself, after hyper
/// has let go of the connection, with a Content-Length for `body`.
fn encode_response<'a>(
    status: StatusCode,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or_default());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));

    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Writes a whole response that the gateway built itself and closes the
/// connection, giving up after a second on an app that does not read.
async fn write_and_close(io: &mut SharedIo, bytes: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = io.write_all(bytes).await;
        let _ = io.shutdown().await;
    })
    .await;
}

/// The TLS stream shared between hyper and the connection task, so the
/// task can still write a 408 or 400 after hyper has let go of the
/// connection. It also counts the reads and writes that moved bytes, for
/// the idle timeout.
/// Each poll locks the mutex briefly; only one task uses it at a time.
#[derive(Clone)]
struct SharedIo {
    inner: Arc<Mutex<tokio_rustls::server::TlsStream<TcpStream>>>,
    /// Reads and writes that moved at least one byte. A counter, not a
    /// time, so that the request path reads no clock for it.
    moves: Arc<AtomicU64>,
}

impl SharedIo {
    fn new(stream: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        Self { inner: Arc::new(Mutex::new(stream)), moves: Arc::new(AtomicU64::new(0)) }
    }

    fn with<R>(&self, f: impl FnOnce(Pin<&mut tokio_rustls::server::TlsStream<TcpStream>>) -> R) -> R {
        let mut guard = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(Pin::new(&mut *guard))
    }

    fn moved(&self) {
        self.moves.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns once no byte has moved during one whole `idle` period, so
    /// between `idle` and twice `idle` after the last byte.
    async fn idle(&self, idle: Duration) {
        let mut seen = self.moves.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(idle).await;
            let now = self.moves.load(Ordering::Relaxed);
            if now == seen {
                return;
            }
            seen = now;
        }
    }
}

impl AsyncRead for SharedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.with(|stream| stream.poll_read(cx, buf));
        if buf.filled().len() > before {
            self.moved();
        }
        polled
    }
}

impl AsyncWrite for SharedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = self.with(|stream| stream.poll_write(cx, buf));
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.moved();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.with(|stream| stream.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.with(|stream| stream.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = self.with(|stream| stream.poll_write_vectored(cx, bufs));
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.moved();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_timeout_range_is_checked() {
        let cases = [
            (Duration::ZERO, false),
            (Duration::from_micros(999), false),
            (Duration::from_millis(1), true),
            (Duration::from_secs(5), true),
            (Duration::from_secs(60), true),
            (Duration::from_secs(61), false),
        ];
        for (timeout, valid) in cases {
            assert_eq!(valid_connect_timeout(timeout).is_ok(), valid, "{timeout:?}");
        }
        let message = valid_connect_timeout(Duration::ZERO).unwrap_err().to_string();
        assert_eq!(
            message,
            "invalid gateway setting with_upstream_connect_timeout = 0ns: give a duration from 1 ms to 60 s"
        );
    }
}
