//! Load tools for `bench/egress`: a loopback target server, a Portcullis
//! egress proxy that allows only that target, and a load client. Each runs
//! in its own process, listens or connects on 127.0.0.1 only, and the
//! client stops after a fixed count of operations or a time limit,
//! whichever comes first.
//!
//! ```text
//! egress_bench target                      # prints: port P
//! egress_bench proxy P EVENTS_FILE         # prints: proxy ADDRESS USER:SECRET
//! egress_bench setups PROXY AUTH P COUNT CONCURRENCY SECONDS
//! egress_bench throughput PROXY|direct AUTH P BYTES SECONDS
//! ```
//!
//! AUTH is `USER:SECRET` or `-` for none. The target reads one command
//! byte per connection: `e` echoes every byte back, `s` followed by an
//! 8-byte big-endian count sends that many bytes and closes.

/// The allocator of the `portcullis` binary, so the proxy runs here as it
/// does there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use portcullis_config::{AppId, EgressSettings, Mode, Space, SpaceName};
use portcullis_egress::proxy::{AppDirectory, Proxy, ProxySecrets, serve};
use portcullis_egress::{AppRules, EgressEvent, EgressRules, Engine, StaticResolver};
use portcullis_store::Store;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Size of the client's and the target's read and write buffers, in bytes.
const CHUNK_BYTES: usize = 64 * 1024;

/// The app id the benchmark proxy registers.
const BENCH_APP: &str = "bench-app";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |index: usize| -> &str {
        args.get(index).map(String::as_str).unwrap_or_else(|| {
            eprintln!("usage: see the module documentation of crates/egress/examples/egress_bench.rs");
            std::process::exit(2)
        })
    };
    let number = |index: usize| -> u64 {
        arg(index).parse().unwrap_or_else(|_| panic!("argument {index} must be a number, got {:?}", arg(index)))
    };

    match arg(0) {
        "target" => current_thread().block_on(run_target()),
        "proxy" => tokio::runtime::Runtime::new().unwrap().block_on(run_proxy(number(1) as u16, arg(2).to_owned())),
        "setups" => {
            let (proxy, auth, port) = (arg(1).parse().unwrap(), auth_header(arg(2)), number(3) as u16);
            let (count, concurrency, seconds) = (number(4), number(5), number(6));
            current_thread().block_on(run_setups(proxy, auth, port, count, concurrency, seconds));
        }
        "throughput" => {
            let proxy = if arg(1) == "direct" { None } else { Some(arg(1).parse().unwrap()) };
            let (auth, port, bytes, seconds) = (auth_header(arg(2)), number(3) as u16, number(4), number(5));
            current_thread().block_on(run_throughput(proxy, auth, port, bytes, seconds));
        }
        other => {
            eprintln!("unknown command {other:?}; expected target, proxy, setups or throughput");
            std::process::exit(2);
        }
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn auth_header(text: &str) -> Option<String> {
    (text != "-").then(|| format!("Basic {}", STANDARD.encode(text)))
}

/// Serves echo and source connections on 127.0.0.1 until killed.
async fn run_target() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    println!("port {}", listener.local_addr().unwrap().port());
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        stream.set_nodelay(true).ok();
        tokio::spawn(async move {
            let _ = serve_target(stream).await;
        });
    }
}

async fn serve_target(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    match stream.read_u8().await? {
        b'e' => loop {
            let read = stream.read(&mut buffer).await?;
            if read == 0 {
                return Ok(());
            }
            stream.write_all(&buffer[..read]).await?;
        },
        b's' => {
            let mut left = stream.read_u64().await?;
            while left > 0 {
                let size = left.min(buffer.len() as u64) as usize;
                stream.write_all(&buffer[..size]).await?;
                left -= size as u64;
            }
            stream.shutdown().await
        }
        _ => Ok(()),
    }
}

/// Runs a Portcullis egress proxy on 127.0.0.1 that allows only
/// 127.0.0.1:`target_port`, writing each event as a JSON line to
/// `events_file` as `portcullis serve` does, until killed.
async fn run_proxy(target_port: u16, events_file: String) {
    // The `portcullis` binary's default logging: human lines on stderr at
    // info, so each request's tracing costs here what it costs there.
    tracing_subscriber::fmt().with_env_filter("info").with_writer(std::io::stderr).init();
    let settings = EgressSettings {
        mode: Mode::Enforce,
        allow_hosts: Vec::new(),
        allow_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
        allow_ports: vec![target_port],
        deny_hosts: Vec::new(),
        deny_cidrs: Vec::new(),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        max_tunnel_lifetime: Duration::from_secs(3600),
        max_tunnels_per_app: 10_000,
        tunnel_buffer_bytes: 1 << 20,
        max_bytes_per_app: None,
        static_hosts: Default::default(),
        countries: None,
    };
    let rules = Arc::new(EgressRules::new(settings).unwrap());
    let engine = Engine::new(Arc::clone(&rules), Arc::new(StaticResolver::new()));

    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(store_dir.path()).await.unwrap();
    store.insert_app(BENCH_APP, BENCH_APP, "bench").await.unwrap();
    let app_id = AppId::parse(BENCH_APP).unwrap();
    let secrets = ProxySecrets::new(store);
    let secret = secrets.issue(&app_id).await.unwrap();
    let apps = Arc::new(AppDirectory::new());
    let space = Space { services: Vec::new(), egress_allow_hosts: None };
    apps.insert(AppRules::new(&rules, app_id, SpaceName::Live, &space, None).unwrap());

    let (sender, mut events) = tokio::sync::mpsc::channel::<EgressEvent>(65_536);
    let mut file = Some(std::io::BufWriter::new(std::fs::File::create(&events_file).unwrap()));
    tokio::spawn(async move {
        use portcullis_egress::proxy::{EVENT_BATCH_INTERVAL, next_batch};
        while let Some(batch) = next_batch(&mut events, EVENT_BATCH_INTERVAL).await {
            let mut lines = Vec::new();
            for event in &batch {
                serde_json::to_writer(&mut lines, event).unwrap();
                lines.push(b'\n');
            }
            let mut writer = file.take().unwrap();
            file = Some(
                tokio::task::spawn_blocking(move || {
                    std::io::Write::write_all(&mut writer, &lines).unwrap();
                    std::io::Write::flush(&mut writer).unwrap();
                    writer
                })
                .await
                .unwrap(),
            );
        }
    });

    let proxy = Arc::new(Proxy::new(engine, apps, secrets, sender));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    println!("proxy {} {BENCH_APP}:{}", listener.local_addr().unwrap(), secret.expose());
    serve(listener, proxy, std::future::pending()).await;
}

/// Opens a tunnel to 127.0.0.1:`port`, directly if `proxy` is `None`.
async fn open(proxy: Option<SocketAddr>, auth: &Option<String>, port: u16) -> std::io::Result<BufReader<TcpStream>> {
    let Some(proxy) = proxy else {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        stream.set_nodelay(true)?;
        return Ok(BufReader::with_capacity(CHUNK_BYTES, stream));
    };
    let stream = TcpStream::connect(proxy).await?;
    stream.set_nodelay(true)?;
    let mut stream = BufReader::with_capacity(CHUNK_BYTES, stream);
    let mut request = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    if let Some(value) = auth {
        request.push_str(&format!("Proxy-Authorization: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.get_mut().write_all(request.as_bytes()).await?;

    let mut status = String::new();
    stream.read_line(&mut status).await?;
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(format!("CONNECT failed: {}", status.trim())));
    }
    let mut line = String::new();
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::other("the proxy closed inside the response head"));
        }
        if line == "\r\n" {
            return Ok(stream);
        }
    }
}

/// Opens up to `count` tunnels, `concurrency` at a time, for at most
/// `seconds`. Each tunnel carries one byte each way through the echo
/// target before it closes. Prints tunnels per second and failures.
async fn run_setups(proxy: SocketAddr, auth: Option<String>, port: u16, count: u64, concurrency: u64, seconds: u64) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let auth = Arc::new(auth);

    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, done, failed, auth) = (next.clone(), done.clone(), failed.clone(), auth.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count && Instant::now() < deadline {
                let round_trip = async {
                    let mut stream = open(Some(proxy), &auth, port).await?;
                    stream.get_mut().write_all(b"ex").await?;
                    let echoed = stream.read_u8().await?;
                    if echoed != b'x' {
                        return Err(std::io::Error::other("wrong echo"));
                    }
                    Ok::<_, std::io::Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(5), round_trip).await {
                    Ok(Ok(())) => done.fetch_add(1, Ordering::Relaxed),
                    Ok(Err(error)) => {
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first failure: {error}");
                        }
                        0
                    }
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let done = done.load(Ordering::Relaxed);
    println!(
        "setups {done} failed {} seconds {elapsed:.2} per_second {:.0}",
        failed.load(Ordering::Relaxed),
        done as f64 / elapsed
    );
}

/// Receives `bytes` from the source target through one tunnel (or a
/// direct connection), within `seconds`, and prints MiB per second.
async fn run_throughput(proxy: Option<SocketAddr>, auth: Option<String>, port: u16, bytes: u64, seconds: u64) {
    let transfer = async {
        let mut stream = open(proxy, &auth, port).await?;
        stream.get_mut().write_u8(b's').await?;
        stream.get_mut().write_u64(bytes).await?;
        let started = Instant::now();
        let mut buffer = vec![0u8; CHUNK_BYTES];
        let mut received = 0u64;
        loop {
            let read = stream.read(&mut buffer).await?;
            if read == 0 {
                break;
            }
            received += read as u64;
        }
        Ok::<_, std::io::Error>((received, started.elapsed().as_secs_f64()))
    };
    match tokio::time::timeout(Duration::from_secs(seconds), transfer).await {
        Ok(Ok((received, elapsed))) => {
            let rate = received as f64 / elapsed / (1024.0 * 1024.0);
            println!("received {received} seconds {elapsed:.3} mib_per_second {rate:.0}");
            if received != bytes {
                eprintln!("expected {bytes} bytes, received {received}");
                std::process::exit(1);
            }
        }
        Ok(Err(error)) => {
            eprintln!("transfer failed: {error}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("transfer did not finish within {seconds} s");
            std::process::exit(1);
        }
    }
}
