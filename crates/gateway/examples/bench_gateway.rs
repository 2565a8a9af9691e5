//! Load benchmark of the gateway against the upstream alone and against
//! nginx as a TLS reverse proxy, all on 127.0.0.1. Run through
//! `bench/gateway`, which builds it in release mode.
//!
//! `bench_gateway run DURATION_SECS MAX_REQUESTS ROUNDS` sets up a CA, then
//! starts the mTLS upstream and the gateway each in a child process of its
//! own (so neither shares a runtime with the load client, and the gateway's
//! resident memory can be read alone) and nginx, then runs the load client
//! at 1, 16 and 64 connections against each and prints a Markdown table.
//! It repeats that ROUNDS times (default 1) on the same processes. With
//! more than one round it ends with the median of each column and the
//! ratios of the medians. Single runs on a small virtual machine vary by
//! more than the differences they measure.
//!
//! The load client is oha (`cargo install oha`), which presents the app's
//! client certificate (`--cert`, `--key`), which wrk cannot. oha keeps one
//! connection per `-c` with one request in flight each. A 1 s oha run
//! before each measured run warms the connections up and is not counted.
//! oha bounds a run by time only (its `-n` and `-z` exclude each other),
//! so MAX_REQUESTS does not apply to it.
//!
//! `bench_gateway hold` sets up the same processes, prints their ports,
//! the app's certificate files and an oha command line, and waits for
//! Ctrl-C, so that a profiler can watch one target under load.
//!
//! Without oha on the PATH, or with `BENCH_CLIENT=builtin`, the client
//! written here runs instead: hyper's HTTP/1.1 client over rustls with
//! the app's certificate, one keep-alive connection per worker, one
//! request in flight per connection. Each of its runs first opens its
//! connections and sends warm-up requests for [`WARM_UP`] (at most
//! [`WARM_UP_REQUESTS`] per connection), which are not counted. The
//! measured part starts when every connection is warm and is bounded by
//! both DURATION_SECS and MAX_REQUESTS.

/// The allocator of the `portcullis` binary, so the gateway runs here as it
/// does there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
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

/// Warm-up time per run before measuring.
const WARM_UP: Duration = Duration::from_secs(1);
/// Upper bound on warm-up requests per connection.
const WARM_UP_REQUESTS: usize = 2_000;

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

/// Runs the upstream child process: an mTLS server that responds `ok` to
/// every request, with the CA and store in `dir`. Prints its port.
async fn serve_upstream(dir: &Path) {
    let ca = PlatformCa::load(&dir.join("ca")).unwrap();
    let store = Store::open_in(dir).await.unwrap();
    let leaf = issue(&ca, &store, CertificateKind::Service, "weather").await;
    let acceptor = PlatformAcceptor::new(
        RenewingCertificate::new(&leaf).unwrap(),
        verifier(&ca, &store).await,
        &[b"h2", b"http/1.1"],
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap().port());
    while let Ok((tcp, _)) = listener.accept().await {
        // Without TCP_NODELAY a response written in two segments waits for
        // the peer's delayed ACK (up to 40 ms on Linux).
        let _ = tcp.set_nodelay(true);
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
}

/// Starts this program as a child process with `args` and returns it
/// with the port it prints on its first line.
async fn spawn_child(args: &[&std::ffi::OsStr]) -> (tokio::process::Child, u16) {
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port = lines.next_line().await.unwrap().expect("the child prints its port").parse().unwrap();
    (child, port)
}

/// Runs the gateway child process from the files in `dir` and prints its
/// port.
async fn serve_gateway(dir: &Path, upstream: u16) {
    // The `portcullis` binary's default logging: human lines on stderr at
    // info, so each request's tracing span costs here what it costs there.
    tracing_subscriber::fmt().with_env_filter("info").with_writer(std::io::stderr).init();
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
    // Busy polling on, as documented in docs/benchmarks.md. BENCH_BUSY_POLL_US
    // overrides the window, 0 turns it off.
    let busy_poll_us = std::env::var("BENCH_BUSY_POLL_US").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    config.gateway.busy_poll_window = Duration::from_micros(busy_poll_us);

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
    // As in `portcullis serve`, each request checks the app's space.
    let app_services = Arc::new(portcullis_gateway::AppServices::new());
    app_services.set_spaces(&config.spaces);
    app_services.replace_apps(HashMap::from([("bench-app".to_owned(), portcullis_config::SpaceName::Live)]));
    let gateway = Gateway::new(&config, tls, tokens, receiver, EventSinks::new(Some(guard), Some(file)))
        .unwrap()
        .with_app_services(app_services);
    let running = gateway.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    println!("{}", running.local_addr().port());
    std::future::pending::<()>().await;
}

/// Writes the nginx configuration, set to match the gateway where the two
/// overlap. nginx runs as many worker processes as the gateway has runtime
/// worker threads (`workers`) and uses the same TLS policy class: TLS 1.2
/// and 1.3, a required client certificate from the platform CA, and no
/// session resumption on either side. It keeps HTTP/1.1 connections to the
/// upstream alive and writes a buffered access log line per request, as
/// the gateway's file sink does.
fn write_nginx(dir: &Path, leaf_dir: &Path, port: u16, upstream: u16, workers: usize) -> PathBuf {
    let conf = format!(
        r#"worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/nginx-access.log combined buffer=64k flush=1s;
    keepalive_requests 1000000;
    upstream service {{
        server 127.0.0.1:{upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {leaf}/cert.pem;
        ssl_certificate_key {leaf}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate {leaf}/ca-bundle.pem;
        ssl_verify_client on;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / {{
            proxy_pass https://service;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_certificate {leaf}/cert.pem;
            proxy_ssl_certificate_key {leaf}/key.pem;
            proxy_ssl_trusted_certificate {leaf}/ca-bundle.pem;
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse off;
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

/// Measured results of one load run.
struct Outcome {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    failures: usize,
    /// The negotiated TLS version and cipher suite of the first connection.
    tls: String,
    /// CPU time (user and system) of the target's own processes per
    /// request, in µs; NaN when not measured.
    cpu_us: f64,
}

impl Outcome {
    /// Computes the median of each column over `outcomes` on its own (the
    /// mean of the middle two for an even count), the sum of the failures
    /// and the first run's TLS parameters.
    fn median(outcomes: &[Outcome]) -> Outcome {
        let median_of = |value: fn(&Outcome) -> f64| {
            let mut values: Vec<f64> = outcomes.iter().map(value).collect();
            values.sort_by(f64::total_cmp);
            let middle = values.len() / 2;
            if values.len().is_multiple_of(2) { (values[middle - 1] + values[middle]) / 2.0 } else { values[middle] }
        };
        Outcome {
            rate: median_of(|o| o.rate),
            p50_ms: median_of(|o| o.p50_ms),
            p99_ms: median_of(|o| o.p99_ms),
            failures: outcomes.iter().map(|o| o.failures).sum(),
            tls: outcomes.first().map(|o| o.tls.clone()).unwrap_or_default(),
            cpu_us: median_of(|o| o.cpu_us),
        }
    }
}

/// Returns numeric field `field` (numbered as in proc(5), from 3 on) of
/// the `stat` file at `path`, or 0 if it cannot be read. Fields are counted
/// after the command name, which may contain spaces.
fn stat_field(path: &Path, field: usize) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_name.split_whitespace().nth(field - 3).and_then(|value| value.parse().ok()).unwrap_or(0)
}

/// Returns the CPU time, user and system, that the processes `pids` and
/// their threads have used so far, in µs: fields 14 and 15 of each
/// `/proc/PID/task/*/stat`, in clock ticks of `getconf CLK_TCK`.
fn cpu_time_us(pids: &[u32], ticks_per_second: u64) -> u64 {
    let mut ticks = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.flatten() {
            let stat = task.path().join("stat");
            ticks += stat_field(&stat, 14) + stat_field(&stat, 15);
        }
    }
    ticks * 1_000_000 / ticks_per_second.max(1)
}

/// Returns the ids of the processes whose parent (field 4 of their
/// `stat`) is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat_field(&Path::new("/proc").join(pid.to_string()).join("stat"), 4) == u64::from(parent))
        .collect()
}

/// Returns `getconf CLK_TCK`, the unit of the times in `/proc`.
fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}

/// Sends one GET and reads the whole response; returns its status.
async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
    authorization: Option<&str>,
) -> Result<http::StatusCode, hyper::Error> {
    let mut request = http::Request::get(path).header("host", "localhost");
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let response = sender.send_request(request.body(Empty::<Bytes>::new()).unwrap()).await?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    Ok(status)
}

/// Opens `connections` keep-alive connections to `port`, warms them up,
/// then sends requests on each until `duration` passes or `max_requests`
/// (split evenly between connections) are sent.
async fn load(
    port: u16,
    client_config: Arc<rustls::ClientConfig>,
    path: &str,
    token: Option<&str>,
    connections: usize,
    duration: Duration,
    max_requests: usize,
) -> Outcome {
    let per_worker = max_requests / connections;
    let ready = Arc::new(tokio::sync::Barrier::new(connections));
    let mut workers = Vec::new();
    for _ in 0..connections {
        let config = Arc::clone(&client_config);
        let ready = Arc::clone(&ready);
        let path = path.to_owned();
        let authorization = token.map(|token| format!("Bearer {token}"));
        workers.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
            let session = tls.get_ref().1;
            let tls_text = format!(
                "{:?} {:?}",
                session.protocol_version(),
                session.negotiated_cipher_suite().map(|suite| suite.suite())
            );
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
            tokio::spawn(connection);

            let warm_until = Instant::now() + WARM_UP;
            for _ in 0..WARM_UP_REQUESTS {
                if Instant::now() >= warm_until || send(&mut sender, &path, authorization.as_deref()).await.is_err() {
                    break;
                }
            }
            ready.wait().await;

            let started = Instant::now();
            let deadline = started + duration;
            let mut latencies = Vec::with_capacity(per_worker);
            let mut failures = 0;
            while latencies.len() < per_worker && Instant::now() < deadline {
                let sent = Instant::now();
                match send(&mut sender, &path, authorization.as_deref()).await {
                    Ok(status) if status == 200 => latencies.push(sent.elapsed()),
                    Ok(status) => {
                        if failures == 0 {
                            eprintln!("port {port}: first failure has status {status}");
                        }
                        failures += 1;
                    }
                    Err(error) => {
                        eprintln!("port {port}: request failed: {error}");
                        failures += 1;
                        break;
                    }
                }
            }
            (latencies, failures, started, Instant::now(), tls_text)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    let mut first_start: Option<Instant> = None;
    let mut last_end: Option<Instant> = None;
    let mut tls = String::new();
    for worker in workers {
        let (mut part, failed, started, ended, tls_text) = worker.await.unwrap();
        latencies.append(&mut part);
        failures += failed;
        first_start = Some(first_start.map_or(started, |first| first.min(started)));
        last_end = Some(last_end.map_or(ended, |last| last.max(ended)));
        if tls.is_empty() {
            tls = tls_text;
        }
    }
    let elapsed = match (first_start, last_end) {
        (Some(start), Some(end)) => (end - start).as_secs_f64(),
        _ => f64::NAN,
    };
    latencies.sort();
    let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)));
    let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    Outcome {
        rate: latencies.len() as f64 / elapsed,
        p50_ms: ms(at(0.5)),
        p99_ms: ms(at(0.99)),
        failures,
        tls,
        cpu_us: f64::NAN,
    }
}

/// Prints what a profiler needs to drive the three targets by hand, then
/// waits for Ctrl-C and stops every process it started.
async fn hold(dir: &tempfile::TempDir, app: &IssuedLeaf, token: &str, ports: [u16; 3], gateway_pid: u32) {
    let [cert, key, ca] = app.write_files(&dir.path().join("app-leaf")).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let [upstream, gateway, nginx] = ports;
    println!("upstream port {upstream}, gateway port {gateway} (pid {gateway_pid}), nginx port {nginx}");
    println!("cert {} key {} ca {} token {}", cert.display(), key.display(), ca.display(), token_file.display());
    println!(
        "oha --no-tui --ipv4 -c 16 -z 10s --cacert {} --cert {} --key {} -H \"Authorization: Bearer $(cat {})\" https://localhost:{gateway}/weather/v1/today",
        ca.display(),
        cert.display(),
        key.display(),
        token_file.display()
    );
    println!("holding; Ctrl-C or SIGTERM stops everything");
    // The child processes end when their handles drop, so SIGTERM must end
    // this function too instead of killing the process outright.
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// The app's certificate files, as oha reads them.
struct OhaClient {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl OhaClient {
    /// Runs oha against `port` for `duration` at `connections`, after a
    /// 1 s warm-up run, and reads its JSON report. Also measures the CPU
    /// time that `pids` use during the measured run.
    fn load(
        &self,
        port: u16,
        path: &str,
        token: Option<&str>,
        connections: usize,
        duration: Duration,
        pids: &[u32],
    ) -> Outcome {
        let run = |seconds: u64| {
            let mut command = std::process::Command::new("oha");
            command
                .args(["--no-tui", "--output-format", "json", "--ipv4", "-c", &connections.to_string()])
                .args(["-z", &format!("{seconds}s")])
                .arg("--cacert")
                .arg(&self.ca)
                .arg("--cert")
                .arg(&self.cert)
                .arg("--key")
                .arg(&self.key);
            if let Some(token) = token {
                command.args(["-H", &format!("Authorization: Bearer {token}")]);
            }
            let output = command.arg(format!("https://localhost:{port}{path}")).output().expect("oha runs");
            assert!(output.status.success(), "oha failed: {}", String::from_utf8_lossy(&output.stderr));
            serde_json::from_slice::<serde_json::Value>(&output.stdout).expect("oha prints JSON")
        };
        run(1);
        let ticks_per_second = clock_ticks_per_second();
        let cpu_before = cpu_time_us(pids, ticks_per_second);
        let report = run(duration.as_secs().max(1));
        let cpu_used = cpu_time_us(pids, ticks_per_second) - cpu_before;

        let seconds = |value: &serde_json::Value| value.as_f64().unwrap_or(f64::NAN) * 1000.0;
        let statuses = report["statusCodeDistribution"].as_object().cloned().unwrap_or_default();
        let not_ok: u64 = statuses.iter().filter(|(status, _)| *status != "200").filter_map(|(_, n)| n.as_u64()).sum();
        // Requests cut off by the end of the run are not failures.
        let errors: u64 = report["errorDistribution"]
            .as_object()
            .map(|errors| {
                errors
                    .iter()
                    .filter(|(error, _)| !error.contains("aborted due to deadline"))
                    .filter_map(|(_, n)| n.as_u64())
                    .sum()
            })
            .unwrap_or(0);
        let rate = report["summary"]["requestsPerSec"].as_f64().unwrap_or(f64::NAN);
        let requests = rate * report["summary"]["total"].as_f64().unwrap_or(f64::NAN);
        Outcome {
            rate,
            p50_ms: seconds(&report["latencyPercentiles"]["p50"]),
            p99_ms: seconds(&report["latencyPercentiles"]["p99"]),
            failures: (not_ok + errors) as usize,
            tls: "oha".to_owned(),
            cpu_us: cpu_used as f64 / requests,
        }
    }
}

/// The nginx master process, stopped with SIGTERM when dropped (also when
/// the benchmark panics). SIGKILL would leave its worker processes behind.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
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
    match args.get(1).map(String::as_str) {
        Some("gateway") => return serve_gateway(Path::new(&args[2]), args[3].parse().unwrap()).await,
        Some("upstream") => return serve_upstream(Path::new(&args[2])).await,
        _ => {}
    }
    let duration = Duration::from_secs(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10));
    let max_requests: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let rounds: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    // The gateway child runs tokio's default multi-threaded runtime, one
    // worker thread per available core; nginx gets as many processes.
    let workers = std::thread::available_parallelism().map_or(1, usize::from);

    let dir = tempfile::tempdir().unwrap();
    let domain = TrustDomain::parse("bench.example").unwrap();
    init_ca(&dir.path().join("ca"), &domain, false).unwrap();
    let ca = PlatformCa::load(&dir.path().join("ca")).unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    let app = issue(&ca, &store, CertificateKind::App, "bench-app").await;
    let (upstream, upstream_port) = spawn_child(&["upstream".as_ref(), dir.path().as_os_str()]).await;
    let upstream_pid = upstream.id().unwrap_or(0);

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
    let nginx_conf = write_nginx(dir.path(), &proxy_files, nginx_port, upstream_port, workers);
    let nginx = std::process::Command::new("nginx")
        .args(["-e", "stderr", "-c"])
        .arg(&nginx_conf)
        .args(["-g", "daemon off;"])
        .spawn()
        .expect("nginx starts (Debian package nginx)");
    let nginx_pid = nginx.id();
    let _nginx = Nginx(nginx);

    let upstream_port_text = upstream_port.to_string();
    let (mut gateway, gateway_port) =
        spawn_child(&["gateway".as_ref(), dir.path().as_os_str(), upstream_port_text.as_ref()]).await;
    let gateway_pid = gateway.id().unwrap();
    // Lets the trust caches of the children reload the certificates issued
    // after they started (they refresh every second).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let client = Arc::new(
        portcullis_identity::policy::client_config(ca.root(), RenewingCertificate::new(&app).unwrap(), &[b"http/1.1"])
            .unwrap(),
    );
    let oha_found = std::process::Command::new("oha").arg("--version").output().is_ok_and(|o| o.status.success());
    let oha = (oha_found && std::env::var("BENCH_CLIENT").as_deref() != Ok("builtin")).then(|| {
        let [cert, key, ca] = app.write_files(&dir.path().join("app-leaf")).unwrap();
        OhaClient { cert, key, ca }
    });
    let rss_idle = resident_kib(gateway_pid);
    if args.get(1).map(String::as_str) == Some("hold") {
        return hold(&dir, &app, &token, [upstream_port, gateway_port, nginx_port], gateway_pid).await;
    }
    // The CPU time per request counts each target's own processes: the
    // upstream for the direct path, the gateway, and nginx's workers.
    let nginx_workers = children_of(nginx_pid);
    let targets = [
        (DIRECT, upstream_port, false, vec![upstream_pid]),
        (GATEWAY, gateway_port, true, vec![gateway_pid]),
        (NGINX, nginx_port, false, nginx_workers),
    ];

    let client_name = if oha.is_some() { "oha" } else { "the built-in client" };
    println!(
        "load client {client_name}; duration {} s per run after a {} s warm-up, at most {max_requests} requests per run (built-in client only); {workers} gateway worker threads and nginx worker processes; {rounds} round(s)",
        duration.as_secs(),
        WARM_UP.as_secs(),
    );
    let mut results: HashMap<(&str, usize), Vec<Outcome>> = HashMap::new();
    let mut rss_peak = rss_idle;
    for round in 1..=rounds {
        // A fresh token per round, because several rounds outlast the
        // lifetime of one token.
        let (token, _) = issuer.issue(&request, now()).unwrap();
        println!();
        println!("round {round}:");
        println!();
        print_header();
        for connections in CONNECTIONS {
            for (name, port, needs_token, pids) in &targets {
                let token = needs_token.then_some(token.as_str());
                let path = "/weather/v1/today";
                let outcome = match &oha {
                    Some(oha) => oha.load(*port, path, token, connections, duration, pids),
                    None => load(*port, Arc::clone(&client), path, token, connections, duration, max_requests).await,
                };
                rss_peak = rss_peak.max(resident_kib(gateway_pid));
                print_row(name, connections, &outcome);
                results.entry((*name, connections)).or_default().push(outcome);
            }
        }
        println!();
        print_ratios(|name, connections| results[&(name, connections)].last().unwrap());
    }

    if rounds > 1 {
        println!();
        println!("median of {rounds} rounds, each column on its own:");
        println!();
        print_header();
        let medians: HashMap<(&str, usize), Outcome> =
            results.iter().map(|(key, outcomes)| (*key, Outcome::median(outcomes))).collect();
        for connections in CONNECTIONS {
            for (name, ..) in &targets {
                print_row(name, connections, &medians[&(*name, connections)]);
            }
        }
        println!();
        print_ratios(|name, connections| &medians[&(name, connections)]);
    }
    println!("gateway resident memory: {rss_idle} KiB idle, {rss_peak} KiB peak after runs");
    let _ = gateway.kill().await;
}

const DIRECT: &str = "upstream direct (mTLS)";
const GATEWAY: &str = "Portcullis gateway";
const NGINX: &str = "nginx (TLS proxy)";
const CONNECTIONS: [usize; 3] = [1, 16, 64];

/// Prints the head of a results table, whose rows [`print_row`] prints.
fn print_header() {
    println!("| target | connections | requests/s | p50 ms | p99 ms | failures | TLS | CPU µs per request |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
}

/// Prints one target's outcome at one connection count as a table row.
fn print_row(name: &str, connections: usize, outcome: &Outcome) {
    println!(
        "| {name} | {connections} | {:.0} | {:.2} | {:.2} | {} | {} | {:.1} |",
        outcome.rate, outcome.p50_ms, outcome.p99_ms, outcome.failures, outcome.tls, outcome.cpu_us
    );
}

/// Prints the gateway's ratios to the direct path and to nginx at each
/// connection count, taking each target's outcome from `outcome`.
fn print_ratios<'a>(outcome: impl Fn(&'static str, usize) -> &'a Outcome) {
    for connections in CONNECTIONS {
        let upstream = outcome(DIRECT, connections);
        let gateway = outcome(GATEWAY, connections);
        let nginx = outcome(NGINX, connections);
        println!(
            "{connections} connections: gateway/upstream {:.2}, gateway/nginx {:.2}, gateway p99 - upstream p99 {:.2} ms, gateway CPU per request / nginx's {:.2}",
            gateway.rate / upstream.rate,
            gateway.rate / nginx.rate,
            gateway.p99_ms - upstream.p99_ms,
            gateway.cpu_us / nginx.cpu_us,
        );
    }
}
