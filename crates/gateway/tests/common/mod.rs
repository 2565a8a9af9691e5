//! A platform CA, a recording upstream, a token issuer and a gateway on
//! 127.0.0.1 for the integration tests. Everything stops when the
//! [`Harness`] is dropped.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_config::PlatformConfig;
use portcullis_gateway::{EventSinks, FileSink, FileWriter, Gateway, GatewayTls, RunningGateway};
use portcullis_guard::{DecisionSet, EventReceiver, GuardEvent, event_queue};
use portcullis_identity::{
    CertificateKind, IssuedLeaf, LeafRequest, Lifetimes, PlatformAcceptor, PlatformCa, PlatformClientVerifier,
    RenewingCertificate, SpiffeId, TrustCache, TrustDomain, init_ca,
};
use portcullis_store::{DecisionKind, DecisionOrigin, DecisionRecord, NewDecision, Store};
use portcullis_token::{InvalidationsHandle, SigningKeys, TokenIssuer, TokenRequest, Verifier, VerifierKeys};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Trust domain of every test platform.
pub const DOMAIN: &str = "weather.example";
/// The `iss` of test tokens.
pub const ISSUER: &str = "https://token.weather.example";
/// Key grace period of the test token keys, in seconds.
pub const GRACE: i64 = 330;
/// The app every test uses unless it says otherwise.
pub const APP: &str = "app-a";

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The audience of a service.
pub fn audience(service: &str) -> String {
    format!("spiffe://{DOMAIN}/service/{service}")
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// The request trailers, if any arrived.
    pub trailers: Option<http::HeaderMap>,
}

/// An mTLS upstream on 127.0.0.1 that records every request and responds
/// 200 with `saw <target>`; `/slow/` paths wait 3 s first, and `/close/`
/// paths get `Connection: close`.
pub struct Recorder {
    pub address: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// TLS connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    async fn start(platform: &Platform) -> Self {
        let leaf = platform.issue(CertificateKind::Service, "weather", &["localhost", "127.0.0.1"]).await;
        let certificate = RenewingCertificate::new(&leaf).unwrap();
        let cache = TrustCache::new();
        cache.refresh(&platform.store).await.unwrap();
        let verifier = PlatformClientVerifier::new(platform.ca.root(), platform.domain(), cache).unwrap();
        let acceptor = PlatformAcceptor::new(certificate, verifier, &[b"h2", b"http/1.1"]).unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let record = Arc::clone(&seen);
        let accepted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let acceptor = acceptor.clone();
                let record = Arc::clone(&record);
                let accepted = Arc::clone(&accepted);
                tokio::spawn(async move {
                    let Ok((tls, _)) = acceptor.accept(tcp).await else { return };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        let record = Arc::clone(&record);
                        async move {
                            let (head, body) = request.into_parts();
                            let (body, trailers) = match body.collect().await {
                                Ok(collected) => {
                                    let trailers = collected.trailers().cloned();
                                    (collected.to_bytes(), trailers)
                                }
                                Err(_) => (Bytes::new(), None),
                            };
                            let target = head.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
                            record.lock().unwrap().push(Seen {
                                method: head.method.to_string(),
                                target: target.clone(),
                                version: head.version,
                                headers: head.headers,
                                body,
                                trailers,
                            });
                            if target.contains("/slow/") {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                            }
                            let connection = if target.contains("/close/") { "close" } else { "x-upstream-hop" };
                            let response = http::Response::builder()
                                .header("connection", connection)
                                .header("x-upstream-hop", "1")
                                .body(Full::new(Bytes::from(format!("saw {target}"))))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { address, seen, connections, task }
    }

    /// The requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Forgets the requests seen so far.
    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

/// A CA in a temporary directory with its SQLite store.
pub struct Platform {
    pub dir: tempfile::TempDir,
    pub ca: Arc<PlatformCa>,
    pub store: Store,
}

impl Platform {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let domain = TrustDomain::parse(DOMAIN).unwrap();
        init_ca(&dir.path().join("ca"), &domain, false).unwrap();
        let ca = Arc::new(PlatformCa::load(&dir.path().join("ca")).unwrap());
        let store = Store::open_in(dir.path()).await.unwrap();
        Self { dir, ca, store }
    }

    pub fn domain(&self) -> TrustDomain {
        self.ca.trust_domain().clone()
    }

    /// Issues and records a leaf for `kind`/`name`.
    pub async fn issue(&self, kind: CertificateKind, name: &str, dns: &[&str]) -> IssuedLeaf {
        let identity = SpiffeId::new(self.ca.trust_domain(), kind, name).unwrap();
        let request = LeafRequest::new(identity, &Lifetimes::default()).with_dns_names(dns.iter().copied());
        self.ca.issue_and_record(&self.store, &request).await.unwrap()
    }
}

/// The gateway with its platform, upstream, tokens and event queues.
pub struct Harness {
    pub platform: Platform,
    pub upstream: Recorder,
    pub config: PlatformConfig,
    pub gateway: Option<RunningGateway>,
    pub cache: Arc<TrustCache>,
    pub issuer: TokenIssuer,
    pub invalidations: InvalidationsHandle,
    pub decisions: watch::Sender<Arc<DecisionSet>>,
    pub guard_events: EventReceiver,
    pub access_log: PathBuf,
    pub writer: Option<FileWriter>,
    pub app: IssuedLeaf,
    pub app_files: PathBuf,
}

/// The example configuration with both services pointed at `upstream`.
pub fn example_config(upstream: SocketAddr) -> PlatformConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/weather-platform/platform.toml");
    let mut config = portcullis_config::load(&path).unwrap();
    for service in &mut config.services {
        service.upstream = format!("https://127.0.0.1:{}", upstream.port());
    }
    config
}

impl Harness {
    /// Starts everything with the example configuration, changed by `adjust`.
    pub async fn start(adjust: impl FnOnce(&mut PlatformConfig)) -> Self {
        Self::start_with_workers(None, adjust).await
    }

    /// Starts everything like [`Harness::start`], with `workers` gateway
    /// workers if given. One worker puts every app connection on one
    /// upstream pool, which the pool tests count connections of.
    pub async fn start_with_workers(workers: Option<usize>, adjust: impl FnOnce(&mut PlatformConfig)) -> Self {
        Self::start_built(workers, adjust, |gateway| gateway).await
    }

    /// Starts everything like [`Harness::start_with_workers`], with the
    /// gateway changed by `build` before it starts.
    pub async fn start_built(
        workers: Option<usize>,
        adjust: impl FnOnce(&mut PlatformConfig),
        build: impl FnOnce(Gateway) -> Gateway,
    ) -> Self {
        let platform = Platform::new().await;
        let upstream = Recorder::start(&platform).await;
        let mut config = example_config(upstream.address);
        adjust(&mut config);

        let app = platform.issue(CertificateKind::App, APP, &[]).await;
        let app_files = platform.dir.path().join("clients").join(APP);
        app.write_files(&app_files).unwrap();

        let leaf = platform.issue(CertificateKind::Platform, "gateway", &["localhost", "127.0.0.1"]).await;
        let certificate = RenewingCertificate::new(&leaf).unwrap();
        let cache = TrustCache::new();
        cache.refresh(&platform.store).await.unwrap();
        let verifier = PlatformClientVerifier::new(platform.ca.root(), platform.domain(), Arc::clone(&cache)).unwrap();

        let keys = Arc::new(RwLock::new(SigningKeys::generate(now() - 10, GRACE).unwrap()));
        let issuer = TokenIssuer::new(ISSUER, 300, Arc::clone(&keys));
        let invalidations = InvalidationsHandle::default();
        let public = VerifierKeys::from_public_keys(&keys.read().unwrap().public_keys(now())).unwrap();
        let tokens = Verifier::new(ISSUER, public, GRACE, 30, invalidations.clone());

        let (decisions, decision_receiver) = watch::channel(Arc::new(DecisionSet::default()));
        let (guard_sender, guard_events) = event_queue(1024);
        let access_log = platform.dir.path().join("access.jsonl");
        let (file, writer) = FileSink::open(&access_log, 1024).await.unwrap();
        let sinks = EventSinks::new(Some(guard_sender), Some(file));

        let tls = GatewayTls {
            server_certificate: certificate.clone(),
            client_certificate: certificate,
            verifier,
            platform_root: platform.ca.root().clone(),
        };
        let mut gateway = Gateway::new(&config, tls, tokens, decision_receiver, sinks).unwrap();
        if let Some(workers) = workers {
            gateway = gateway.with_workers(workers);
        }
        let gateway = build(gateway).start("127.0.0.1:0".parse().unwrap()).await.unwrap();

        Self {
            platform,
            upstream,
            config,
            gateway: Some(gateway),
            cache,
            issuer,
            invalidations,
            decisions,
            guard_events,
            access_log,
            writer: Some(writer),
            app,
            app_files,
        }
    }

    pub fn port(&self) -> u16 {
        self.gateway.as_ref().unwrap().local_addr().port()
    }

    /// A token for the test app on `service` with `scopes`, bound to `leaf`.
    pub fn token_for(&self, leaf: &IssuedLeaf, app: &str, service: &str, scopes: &[&str], at: i64) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let audience = audience(service);
        let request = TokenRequest {
            app_id: app,
            audience: &audience,
            scopes: &scopes,
            certificate_der: leaf.chain()[0].as_ref(),
        };
        self.issuer.issue(&request, at).unwrap().0
    }

    /// A valid token of the test app for `service` with `scopes`.
    pub fn token(&self, service: &str, scopes: &[&str]) -> String {
        self.token_for(&self.app, APP, service, scopes, now())
    }

    /// Publishes a guard decision for `app_id`.
    pub fn decide(&self, app_id: &str, kind: DecisionKind) {
        let record = DecisionRecord {
            id: 1,
            decision: NewDecision {
                app_id: app_id.to_owned(),
                kind,
                reason: "test decision".to_owned(),
                policy: None,
                evidence: "{}".to_owned(),
                origin: DecisionOrigin::Operator,
                simulated: false,
                started_at: now() * 1000 - 1000,
                expires_at: None,
            },
            lifted_at: None,
            lifted_by: None,
        };
        self.decisions.send_replace(Arc::new(DecisionSet::from_records([record], now() * 1000)));
    }

    /// Drains the guard events queued so far.
    pub fn guard_events(&mut self) -> Vec<GuardEvent> {
        // The gateway hands events over every FLUSH_INTERVAL; wait for two.
        std::thread::sleep(portcullis_gateway::FLUSH_INTERVAL * 3);
        let mut events = Vec::new();
        while let Ok(event) = self.guard_events.try_recv() {
            events.push(event);
        }
        events
    }

    /// Sends raw bytes over a new TLS connection with the test app's
    /// certificate and returns everything received until the gateway closes
    /// or `wait` passes.
    pub async fn raw(&self, bytes: &[u8], wait: Duration) -> String {
        raw_exchange(self.port(), &self.platform, &self.app, bytes, wait).await
    }

    /// Sends `GET target` with the test app's valid token for `service` and
    /// `scopes` and returns the status.
    pub async fn get(&self, target: &str, token: &str) -> u16 {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        status_of(&self.raw(request.as_bytes(), Duration::from_secs(5)).await)
    }

    /// Reads the access log after flushing it.
    pub async fn access_log(&mut self) -> Vec<serde_json::Value> {
        // Dropping the gateway drops its sinks, so the writer drains and stops.
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown(Duration::from_secs(5)).await;
        }
        if let Some(writer) = self.writer.take() {
            writer.finish().await;
        }
        let text = std::fs::read_to_string(&self.access_log).unwrap();
        text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }
}

/// Connects to the gateway with `leaf` and exchanges raw bytes.
pub async fn raw_exchange(port: u16, platform: &Platform, leaf: &IssuedLeaf, bytes: &[u8], wait: Duration) -> String {
    let certificate = RenewingCertificate::new(leaf).unwrap();
    let config = portcullis_identity::policy::client_config(platform.ca.root(), certificate, &[b"http/1.1"]).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let Ok(mut tls) = connector.connect(name, tcp).await else { return String::new() };
    if tls.write_all(bytes).await.is_err() {
        return String::new();
    }
    let mut received = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut chunk = [0u8; 8192];
        loop {
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&received).into_owned()
}

/// The status of the first response in `received`, or 0 if there is none.
pub fn status_of(received: &str) -> u16 {
    statuses(received).first().copied().unwrap_or(0)
}

/// The statuses of every response in `received`, in order.
pub fn statuses(received: &str) -> Vec<u16> {
    received.match_indices("HTTP/1.1 ").filter_map(|(at, _)| received.get(at + 9..at + 12)?.parse().ok()).collect()
}

/// Opens a TLS connection to the gateway with the test app's certificate,
/// offering the ALPN protocol `alpn`. With `reset_on_close`, closing the
/// connection sends RST instead of FIN.
pub async fn connect(h: &Harness, alpn: &[u8], reset_on_close: bool) -> tokio_rustls::client::TlsStream<TcpStream> {
    let certificate = RenewingCertificate::new(&h.app).unwrap();
    let config = portcullis_identity::policy::client_config(h.platform.ca.root(), certificate, &[alpn]).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", h.port())).await.unwrap();
    if reset_on_close {
        socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO)).unwrap();
    }
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// Opens an HTTP/2 connection to the gateway with the test app's
/// certificate. The returned task drives the connection.
pub async fn http2_client(
    h: &Harness,
) -> (hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>, tokio::task::JoinHandle<()>) {
    let tls = connect(h, b"h2", false).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, driver)
}
