//! Load benchmark of the gateway against the upstream alone and against
//! nginx as a TLS reverse proxy, all on 127.0.0.1. Run through
//! `bench/gateway`, which builds it in release mode.
//!
//! `bench_gateway run DURATION_SECS MAX_REQUESTS` sets up a CA, an mTLS
//! upstream, nginx and the gateway (in a child process, so its resident
//! memory can be read alone), then runs the load client at 1, 16 and 64
//! connections against each and prints a Markdown table. Every load run is
//! bounded by both DURATION_SECS and MAX_REQUESTS.
//!
//! wrk cannot present a client certificate, so the load client is written
//! here: hyper's HTTP/1.1 client over rustls with the app's certificate,
//! one keep-alive connection per worker, one request in flight per
//! connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_gateway::{EventSinks, FileSink, Gateway, GatewayTls};
use portcullis_guard::{DecisionSet, event_queue};
use portcullis_identity::{
    CertificateKind, IssuedLeaf, LeafRequest, Lifetimes, PlatformAcceptor, PlatformCa, PlatformClientVerifier,
    RenewingCertificate, SpiffeId, TrustCache, TrustDomain, init_ca,
};
use portcullis_store::Store;
use portcullis_token::{InvalidationsHandle, SigningKeys, TokenIssuer, TokenRequest, Verifier, VerifierKeys};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};

const ISSUER: &str = "https://token.bench.example";
const GRACE: i64 = 330;

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn issue(ca: &PlatformCa, store: &Store, kind: CertificateKind, name: &str) -> IssuedLeaf {
    let identity = SpiffeId::new(ca.trust_domain(), kind, name).unwrap();
    let request = LeafRequest::new(identity, &Lifetimes::default()).with_dns_names(["localhost", "127.0.0.1"]);
    ca.issue_and_record(store, &request).await.unwrap()
}

/// Builds a client-certificate verifier whose trust cache reloads every
/// second for the life of the process, as a listener's does.
async fn verifier(ca: &PlatformCa, store: &Store) -> Arc<PlatformClientVerifier> {
    let cache = TrustCache::new();
    cache.refresh(store).await.unwrap();
    std::mem::forget(cache.spawn_refresher(store.clone(), portcullis_identity::REFRESH_INTERVAL));
    PlatformClientVerifier::new(ca.root(), ca.trust_domain().clone(), cache).unwrap()
}

/// Starts an mTLS upstream that responds `ok` to every request.
async fn upstream(ca: &PlatformCa, store: &Store) -> SocketAddr {
    let leaf = issue(ca, store, CertificateKind::Service, "weather").await;
    let acceptor = PlatformAcceptor::new(
        RenewingCertificate::new(&leaf).unwrap(),
        verifier(ca, store).await,
        &[b"h2", b"http/1.1"],
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok((tls, _)) = acceptor.accept(tcp).await else { return };
                let service = service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    address
}

/// The child process: runs the gateway from the files in `dir` and prints
/// its port.
async fn serve_gateway(dir: &Path, upstream: u16) {
    let ca = PlatformCa::load(&dir.join("ca")).unwrap();
    let store = Store::open_in(dir).await.unwrap();
    let keys = SigningKeys::load_or_create(&dir.join("token-keys.json"), now(), GRACE).unwrap();
    let public = VerifierKeys::from_public_keys(&keys.public_keys(now())).unwrap();
    let tokens = Verifier::new(ISSUER, public, GRACE, 30, InvalidationsHandle::default());

    let config_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/weather-platform/platform.toml");
    let mut config = portcullis_config::load(&config_path).unwrap();
    config.trust_domain = "bench.example".to_owned();
    for service in &mut config.services {
        service.upstream = format!("https://127.0.0.1:{upstream}");
    }
    config.gateway.rate_per_second = 1_000_000.0;
    config.gateway.rate_burst = 1_000_000;

    let leaf = issue(&ca, &store, CertificateKind::Platform, "gateway").await;
    let certificate = RenewingCertificate::new(&leaf).unwrap();
    let tls = GatewayTls {
        server_certificate: certificate.clone(),
        client_certificate: certificate,
        verifier: verifier(&ca, &store).await,
        platform_root: ca.root().clone(),
    };
    let (_decisions, receiver) = tokio::sync::watch::channel(Arc::new(DecisionSet::default()));
    let (guard, mut guard_events) = event_queue(portcullis_guard::DEFAULT_QUEUE_CAPACITY);
    tokio::spawn(async move { while guard_events.recv().await.is_some() {} });
    let (file, _writer) = FileSink::open(&dir.join("access.jsonl"), 65_536).await.unwrap();
    let gateway = Gateway::new(&config, tls, tokens, receiver, EventSinks::new(Some(guard), Some(file))).unwrap();
    let running = gateway.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    println!("{}", running.local_addr().port());
    std::future::pending::<()>().await;
}

fn write_nginx(dir: &Path, leaf_dir: &Path, port: u16, upstream: u16) -> PathBuf {
    let conf = format!(
        r#"worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    upstream service {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {leaf}/cert.pem;
        ssl_certificate_key {leaf}/key.pem;
        location / {{
            proxy_pass https://service;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_certificate {leaf}/cert.pem;
            proxy_ssl_certificate_key {leaf}/key.pem;
            proxy_ssl_trusted_certificate {leaf}/ca-bundle.pem;
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
        }}
    }}
}}
"#,
        dir = dir.display(),
        leaf = leaf_dir.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// Runs `connections` workers against `port` until `duration` passes or
/// `max_requests` are sent, and returns requests/s, p50 and p99 in ms.
async fn load(
    port: u16,
    client_config: Arc<rustls::ClientConfig>,
    path: &str,
    token: Option<&str>,
    connections: usize,
    duration: Duration,
    max_requests: usize,
) -> (f64, f64, f64, usize) {
    let started = Instant::now();
    let deadline = started + duration;
    let per_worker = max_requests / connections;
    let mut workers = Vec::new();
    for _ in 0..connections {
        let config = Arc::clone(&client_config);
        let path = path.to_owned();
        let token = token.map(str::to_owned);
        workers.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
            tokio::spawn(connection);
            let mut latencies = Vec::with_capacity(per_worker);
            let mut failures = 0;
            while latencies.len() < per_worker && Instant::now() < deadline {
                let mut request = http::Request::get(&path).header("host", "localhost");
                if let Some(token) = &token {
                    request = request.header("authorization", format!("Bearer {token}"));
                }
                let request = request.body(Empty::<Bytes>::new()).unwrap();
                let sent = Instant::now();
                let response = match sender.send_request(request).await {
                    Ok(response) => response,
                    Err(error) => {
                        eprintln!("port {port}: request failed: {error}");
                        break;
                    }
                };
                let status = response.status();
                let ok = status == 200;
                let _ = response.into_body().collect().await;
                if ok {
                    latencies.push(sent.elapsed());
                } else {
                    if failures == 0 {
                        eprintln!("port {port}: first failure has status {status}");
                    }
                    failures += 1;
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for worker in workers {
        let (mut part, failed) = worker.await.unwrap();
        latencies.append(&mut part);
        failures += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)));
    let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    (latencies.len() as f64 / elapsed, ms(at(0.5)), ms(at(0.99)), failures)
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("gateway") {
        serve_gateway(Path::new(&args[2]), args[3].parse().unwrap()).await;
        return;
    }
    let duration = Duration::from_secs(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10));
    let max_requests: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(200_000);

    let dir = tempfile::tempdir().unwrap();
    let domain = TrustDomain::parse("bench.example").unwrap();
    init_ca(&dir.path().join("ca"), &domain, false).unwrap();
    let ca = PlatformCa::load(&dir.path().join("ca")).unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    let app = issue(&ca, &store, CertificateKind::App, "bench-app").await;
    let upstream = upstream(&ca, &store).await;

    let keys = Arc::new(RwLock::new(SigningKeys::generate(now() - 10, GRACE).unwrap()));
    keys.read().unwrap().save(&dir.path().join("token-keys.json")).unwrap();
    let issuer = TokenIssuer::new(ISSUER, 300, Arc::clone(&keys));
    let scopes = vec!["weather:read".to_owned()];
    let audience = "spiffe://bench.example/service/weather";
    let request =
        TokenRequest { app_id: "bench-app", audience, scopes: &scopes, certificate_der: app.chain()[0].as_ref() };
    let (token, _) = issuer.issue(&request, now()).unwrap();

    let proxy_leaf = issue(&ca, &store, CertificateKind::Platform, "nginx").await;
    let proxy_files = dir.path().join("nginx-leaf");
    proxy_leaf.write_files(&proxy_files).unwrap();
    let nginx_port = free_port();
    let nginx_conf = write_nginx(dir.path(), &proxy_files, nginx_port, upstream.port());
    let mut nginx = tokio::process::Command::new("nginx")
        .args(["-e", "stderr", "-c"])
        .arg(&nginx_conf)
        .args(["-g", "daemon off;"])
        .kill_on_drop(true)
        .spawn()
        .expect("nginx starts (Debian package nginx)");

    let mut gateway = tokio::process::Command::new(std::env::current_exe().unwrap())
        .arg("gateway")
        .arg(dir.path())
        .arg(upstream.port().to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(gateway.stdout.take().unwrap()).lines();
    let gateway_port: u16 = lines.next_line().await.unwrap().unwrap().parse().unwrap();
    let gateway_pid = gateway.id().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let client = Arc::new(
        portcullis_identity::policy::client_config(ca.root(), RenewingCertificate::new(&app).unwrap(), &[b"http/1.1"])
            .unwrap(),
    );
    let rss_idle = resident_kib(gateway_pid);
    let targets = [
        ("upstream direct (mTLS)", upstream.port(), None),
        ("Portcullis gateway", gateway_port, Some(token.as_str())),
        ("nginx (TLS proxy)", nginx_port, None),
    ];

    println!("duration {} s per run, at most {max_requests} requests per run", duration.as_secs());
    println!("| target | connections | requests/s | p50 ms | p99 ms | failures |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let mut rates = std::collections::HashMap::new();
    let mut rss_peak = rss_idle;
    for connections in [1, 16, 64] {
        for (name, port, token) in &targets {
            let (rate, p50, p99, failures) =
                load(*port, Arc::clone(&client), "/weather/v1/today", *token, connections, duration, max_requests)
                    .await;
            rss_peak = rss_peak.max(resident_kib(gateway_pid));
            rates.insert((*name, connections), rate);
            println!("| {name} | {connections} | {rate:.0} | {p50:.2} | {p99:.2} | {failures} |");
        }
    }
    println!();
    for connections in [1, 16, 64] {
        let upstream = rates[&("upstream direct (mTLS)", connections)];
        let gateway = rates[&("Portcullis gateway", connections)];
        let nginx = rates[&("nginx (TLS proxy)", connections)];
        println!(
            "{connections} connections: gateway/upstream {:.2}, gateway/nginx {:.2}",
            gateway / upstream,
            gateway / nginx
        );
    }
    println!("gateway resident memory: {rss_idle} KiB idle, {rss_peak} KiB peak after runs");
    let _ = gateway.kill().await;
    let _ = nginx.kill().await;
}
