//! A running egress proxy on 127.0.0.1 with a temporary SQLite store,
//! loopback target servers, and the real clients (curl, Python requests)
//! the tests drive it with. Every server here listens on 127.0.0.1 only and
//! stops when its guard is dropped, also when a test fails.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_config::{AppId, EgressSettings, HostPattern, Mode, Space, SpaceName};
use portcullis_egress::proxy::{AppDirectory, ListenerLimits, Proxy, ProxySecret, ProxySecrets, serve};
use portcullis_egress::{
    AppRules, ByteCap, ByteCounter, EgressEvent, EgressMetrics, EgressRules, Engine, StaticResolver,
};
use portcullis_store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The apps every harness registers: two that may use the proxy and one
/// the ban check refuses.
pub const WEATHER_APP: &str = "weather-app";
pub const OTHER_APP: &str = "other-app";
pub const BANNED_APP: &str = "banned-app";

/// How long any client command may run.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A request a target server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An HTTP/1.1 server on 127.0.0.1 that records each request and answers
/// 200 with `hello from the target`.
pub struct TargetServer {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl TargetServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind the target server");
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let recorded = Arc::clone(&recorded);
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let recorded = Arc::clone(&recorded);
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.map(|body| body.to_bytes()).unwrap_or_default();
                            recorded.lock().unwrap().push(Seen {
                                method: parts.method,
                                target: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            });
                            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(
                                b"hello from the target\n",
                            ))))
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { port, seen, task }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TargetServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP server on 127.0.0.1 that accepts connections and keeps them open
/// without sending, counting accepts.
pub struct SilentServer {
    pub port: u16,
    pub accepted: Arc<Mutex<usize>>,
    task: JoinHandle<()>,
}

impl SilentServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind the silent server");
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(Mutex::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                *count.lock().unwrap() += 1;
                open.push(stream);
            }
        });
        Self { port, accepted, task }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP server on 127.0.0.1 that sends `bytes` zero bytes on each
/// connection, then keeps it open until the client closes.
pub struct SourceServer {
    pub port: u16,
    task: JoinHandle<()>,
}

impl SourceServer {
    pub async fn start(bytes: usize) -> Self {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind the source server");
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let chunk = vec![0u8; 8192];
                    let mut left = bytes;
                    while left > 0 {
                        let size = left.min(chunk.len());
                        if stream.write_all(&chunk[..size]).await.is_err() {
                            return;
                        }
                        left -= size;
                    }
                    let mut sink = [0u8; 1024];
                    while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
                });
            }
        });
        Self { port, task }
    }
}

impl Drop for SourceServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads from `stream` until the peer closes it or resets it, within
/// `limit`, and returns the bytes read. Panics if it stays open longer.
pub async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> usize {
    let mut total = 0;
    let mut buffer = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("the connection is still open after {limit:?}, {total} bytes read"));
        match read {
            Ok(0) | Err(_) => return total,
            Ok(read) => total += read,
        }
    }
}

/// Settings for a harness. Ports are the only ones apps may reach.
pub struct Options {
    pub allow_loopback: bool,
    pub allow_ports: Vec<u16>,
    pub max_tunnels_per_app: u32,
    pub tunnel_buffer_bytes: usize,
    pub max_bytes_per_app: Option<u64>,
    /// The byte cap's accounting period; the proxy's default unless set.
    pub byte_cap_period: Option<Duration>,
    pub idle_timeout: Duration,
    pub max_tunnel_lifetime: Duration,
    pub event_capacity: usize,
    pub listener: ListenerLimits,
}

impl Options {
    pub fn new(allow_ports: &[u16]) -> Self {
        Self {
            allow_loopback: true,
            allow_ports: allow_ports.to_vec(),
            max_tunnels_per_app: 8,
            tunnel_buffer_bytes: 1 << 20,
            max_bytes_per_app: None,
            byte_cap_period: None,
            idle_timeout: Duration::from_secs(5),
            max_tunnel_lifetime: Duration::from_secs(60),
            event_capacity: 64,
            listener: ListenerLimits::default(),
        }
    }
}

/// A running proxy with its store, secrets and event queue.
pub struct Harness {
    pub address: SocketAddr,
    pub proxy: Arc<Proxy>,
    pub events: mpsc::Receiver<EgressEvent>,
    pub bytes: Arc<ByteCounter>,
    pub metrics: EgressMetrics,
    /// The apps the ban check reports as banned; starts with `BANNED_APP`.
    pub banned: Arc<Mutex<Vec<String>>>,
    /// The registered apps' rules, which a test may change.
    pub apps: Arc<AppDirectory>,
    secrets: HashMap<&'static str, ProxySecret>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    _store_dir: tempfile::TempDir,
}

/// Test host names and the addresses the injected resolver returns. Only
/// 127.0.0.1 is ever connected to; the others are only classified.
pub const NAMES: &[(&str, &str)] = &[
    ("feed.weather.test", "127.0.0.1"),
    ("blocked.weather.test", "127.0.0.1"),
    ("metadata.weather.test", "169.254.169.254"),
];

impl Harness {
    pub async fn start(options: Options) -> Self {
        let settings = EgressSettings {
            mode: Mode::Enforce,
            allow_hosts: vec![HostPattern::Suffix("weather.test".into())],
            allow_cidrs: if options.allow_loopback { vec!["127.0.0.0/8".parse().unwrap()] } else { Vec::new() },
            allow_ports: options.allow_ports.clone(),
            deny_hosts: vec![HostPattern::Exact("blocked.weather.test".into())],
            deny_cidrs: Vec::new(),
            static_hosts: Default::default(),
            connect_timeout: Duration::from_secs(2),
            idle_timeout: options.idle_timeout,
            max_tunnel_lifetime: options.max_tunnel_lifetime,
            max_tunnels_per_app: options.max_tunnels_per_app,
            tunnel_buffer_bytes: options.tunnel_buffer_bytes,
            max_bytes_per_app: options.max_bytes_per_app,
            countries: None,
        };
        let resolver = NAMES
            .iter()
            .fold(StaticResolver::new(), |resolver, (name, address)| resolver.with(name, &[address.parse().unwrap()]));
        let rules = Arc::new(EgressRules::new(settings).expect("rules build"));
        let engine = Engine::new(Arc::clone(&rules), Arc::new(resolver));

        let store_dir = tempfile::tempdir().expect("temporary store directory");
        let store = Store::open_in(store_dir.path()).await.expect("open the SQLite store");
        let secrets = ProxySecrets::new(store.clone());
        let apps = Arc::new(AppDirectory::new());
        let mut issued = HashMap::new();
        for name in [WEATHER_APP, OTHER_APP, BANNED_APP] {
            store.insert_app(name, name, "acme").await.expect("register the app");
            let app_id = AppId::parse(name).unwrap();
            issued.insert(name, secrets.issue(&app_id).await.expect("issue a secret"));
            let space = Space { services: Vec::new(), egress_allow_hosts: None };
            apps.insert(AppRules::new(&rules, app_id, SpaceName::Live, &space, None).expect("app rules"));
        }

        let (sender, events) = mpsc::channel(options.event_capacity);
        let banned = Arc::new(Mutex::new(vec![BANNED_APP.to_owned()]));
        let bytes = Arc::new(ByteCounter::new());
        let metrics = EgressMetrics::new();
        let mut proxy = Proxy::new(engine, Arc::clone(&apps), secrets, sender).with_metrics(metrics.clone());
        if let (Some(limit), Some(period)) = (options.max_bytes_per_app, options.byte_cap_period) {
            proxy = proxy.with_byte_cap(Some(ByteCap::new(limit, period)));
        }
        let proxy = proxy
            .with_ban_check(Arc::new({
                let banned = Arc::clone(&banned);
                move |app_id: &AppId| banned.lock().unwrap().iter().any(|name| name == app_id.as_str())
            }))
            .with_byte_accounting(Arc::clone(&bytes) as _)
            .with_listener_limits(options.listener);
        let proxy = Arc::new(proxy);

        let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind the proxy");
        let address = listener.local_addr().unwrap();
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::clone(&proxy), async move {
            let _ = stop.await;
        }));

        Self {
            address,
            proxy,
            events,
            bytes,
            metrics,
            banned,
            apps,
            secrets: issued,
            shutdown: Some(shutdown),
            server: Some(server),
            _store_dir: store_dir,
        }
    }

    pub fn secret(&self, app: &str) -> &str {
        self.secrets[app].expose()
    }

    /// The proxy URL with `app`'s user name and `secret_of`'s secret.
    pub fn proxy_url(&self, app: &str, secret_of: &str) -> String {
        format!("http://{app}:{}@{}", self.secret(secret_of), self.address)
    }

    /// The value of `Proxy-Authorization` for `app` with its own secret.
    pub fn basic(&self, app: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{app}:{}", self.secret(app))))
    }

    /// Returns every event queued so far.
    pub fn drain_events(&mut self) -> Vec<EgressEvent> {
        let mut events = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            events.push(event);
        }
        events
    }

    /// Stops the proxy and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(20), server).await.expect("serve returns after shutdown").unwrap();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// What curl reported.
#[derive(Debug)]
pub struct CurlResult {
    pub exit_code: i32,
    /// `%{http_code}`: the final response's status, 0 if none.
    pub status: u16,
    /// `%{http_connect}`: the status of the proxy's CONNECT response, 0 if
    /// curl sent no CONNECT.
    pub connect_status: u16,
    pub body: String,
}

/// Runs Debian's curl with `args`, ignoring any curlrc and proxy variables
/// of the environment.
pub async fn curl(args: &[&str]) -> CurlResult {
    let mut command = tokio::process::Command::new("curl");
    command
        .arg("-q")
        .args(["--silent", "--show-error", "--max-time", "10", "--noproxy", ""])
        .args(["--write-out", "\n%{http_code} %{http_connect}"])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for variable in ["http_proxy", "https_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"] {
        command.env_remove(variable);
    }
    let output =
        tokio::time::timeout(CLIENT_TIMEOUT, command.output()).await.expect("curl finishes").expect("run curl");

    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, codes) = stdout.rsplit_once('\n').expect("curl wrote its status line");
    let mut codes = codes.split(' ').map(|code| code.parse::<u16>().unwrap_or(0));
    CurlResult {
        exit_code: output.status.code().unwrap_or(-1),
        status: codes.next().unwrap_or(0),
        connect_status: codes.next().unwrap_or(0),
        body: body.to_owned(),
    }
}

/// A CONNECT response read from a raw socket, and the socket, which is the
/// tunnel on success.
pub struct RawConnect {
    pub status: u16,
    pub body: String,
    pub stream: TcpStream,
}

/// Sends `CONNECT target` with the given `Proxy-Authorization` value over a
/// fresh connection and reads the response head and, on refusal, its body.
pub async fn raw_connect(proxy: SocketAddr, authorization: Option<&str>, target: &str) -> RawConnect {
    let mut stream = TcpStream::connect(proxy).await.expect("connect to the proxy");
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(value) = authorization {
        request.push_str(&format!("Proxy-Authorization: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();

    let head = read_head(&mut stream).await;
    let status: u16 = head.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status code");
    let length = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut body)).await.expect("body in time").unwrap();
    RawConnect { status, body: String::from_utf8(body).unwrap(), stream }
}

/// Reads up to the end of a response head, one byte at a time so that no
/// tunnel byte is consumed.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 16 * 1024, "response head too long");
        let mut byte = [0u8; 1];
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await.expect("head in time").unwrap();
        assert_eq!(read, 1, "connection closed inside the response head: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Returns a loopback port that nothing listens on: bound, then released.
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    listener.local_addr().unwrap().port()
}
