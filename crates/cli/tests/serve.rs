//! `portcullis serve` runs the platform until SIGTERM, with real clients.

mod common;

use common::portcullis;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EXAMPLE: &str = include_str!("../../../examples/weather-platform/platform.toml");

/// Kills the server on drop, so a failing test leaves no process behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Ports that were free a moment ago, for the listeners.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> =
        (0..count).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn wait_for_port(port: u16, server: &mut Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("portcullis serve exited early with {status}");
        }
        assert!(Instant::now() < deadline, "portcullis serve did not listen on {port} within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Fetches a `weather:read` token over mutual TLS with curl, with the app
/// certificate in `app_dir`, from the token service on `port`, and returns
/// the token response.
fn fetch_token(app_dir: &Path, port: u16) -> serde_json::Value {
    let file = |name: &str| app_dir.join(name).display().to_string();
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(["--cacert", &file("ca-bundle.pem"), "--cert", &file("cert.pem"), "--key", &file("key.pem")])
        .args(["--data", "grant_type=client_credentials&scope=weather:read"])
        .arg(format!("https://127.0.0.1:{port}/oauth2/token"))
        .output()
        .unwrap();
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&output.stdout)))
}

/// Issues an egress proxy secret for `app` in the platform's store, as the
/// runtime does at deploy, and returns it.
fn issue_proxy_secret(data: &Path, app: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let store = portcullis_store::Store::open_in(data).await.expect("open the platform's store");
        let secrets = portcullis_egress::proxy::ProxySecrets::new(store);
        let app_id = portcullis_config::AppId::parse(app).unwrap();
        secrets.issue(&app_id).await.expect("issue a proxy secret").expose().to_owned()
    })
}

fn start_serve(data: &Path, config: &str, extra: &[&str]) -> Server {
    Server(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("--data-dir")
            .arg(data)
            .args(["--log-format", "json", "serve", "--config", config])
            .args(extra)
            .env_remove("PORTCULLIS_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn serve_runs_token_service_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ports = free_ports(6);
    let config = dir.path().join("platform.toml");
    std::fs::write(&config, example_with_ports(&ports, ports[5])).unwrap();
    let config = config.to_str().unwrap();

    // Without a CA, serve refuses with the fix.
    let output = portcullis(&data, &["serve", "--config", config]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("create one with `portcullis ca init --config FILE`"));

    for args in [
        vec!["app", "register", "--id", "weather-app", "--name", "Weather", "--owner", "acme"],
        vec!["app", "register", "--id", "egress-app", "--name", "Egress probe", "--owner", "acme"],
        vec![
            "grant",
            "add",
            "--app",
            "weather-app",
            "--service",
            "weather",
            "--scope",
            "weather:read",
            "--config",
            config,
        ],
    ] {
        let output = portcullis(&data, &args);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let app_dir = dir.path().join("app");
    let mut server = start_serve(&data, config, &["--init"]);
    wait_for_port(ports[2], &mut server);
    let output = portcullis(&data, &["ca", "issue", "--app", "weather-app", "--out", app_dir.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));

    assert!(data.join("ca/intermediate.pem").exists(), "serve --init created the CA");

    // A certificate issued while the platform runs is accepted within the
    // trust cache's reload interval of one second.
    std::thread::sleep(Duration::from_millis(1500));

    // An app fetches a token with curl over mutual TLS.
    let file = |name: &str| app_dir.join(name).display().to_string();
    let body = fetch_token(&app_dir, ports[2]);
    assert_eq!(body["token_type"], "Bearer", "{body}");
    assert_eq!(body["scope"], "weather:read");

    // The consent page answers without a client certificate.
    let consent = Command::new("curl")
        .args(["--silent", "--max-time", "10", "--output", "/dev/null", "--write-out", "%{http_code}"])
        .args(["--cacert", &file("ca-bundle.pem")])
        .arg(format!("https://127.0.0.1:{}/.well-known/oauth-authorization-server", ports[4]))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&consent.stdout), "200");

    // The app calls the weather service through the gateway; a plain HTTP
    // server started here stands in for the service.
    let _upstream = Server(
        Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &ports[5].to_string()])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::fs::create_dir_all(dir.path().join("weather/v1")).unwrap();
    std::fs::write(dir.path().join("weather/v1/today"), "sunny\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", ports[5])).is_err() {
        assert!(Instant::now() < deadline, "the stand-in service did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let access_token = body["access_token"].as_str().unwrap().to_owned();
    let gateway = |path: &str, token: Option<&str>| -> (String, String) {
        let mut command = Command::new("curl");
        command.args(["--silent", "--max-time", "10", "--write-out", "\n%{http_code}"]).args([
            "--cacert",
            &file("ca-bundle.pem"),
            "--cert",
            &file("cert.pem"),
            "--key",
            &file("key.pem"),
        ]);
        if let Some(token) = token {
            command.args(["--header", &format!("Authorization: Bearer {token}")]);
        }
        let output = command.arg(format!("https://127.0.0.1:{}{path}", ports[0])).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        let (body, status) = text.rsplit_once('\n').unwrap();
        (status.to_owned(), body.to_owned())
    };
    assert_eq!(gateway("/weather/v1/today", Some(&access_token)), ("200".into(), "sunny\n".into()));

    // Twenty requests without a token cross the guard's "unauthorised"
    // policy; the gateway then refuses even a valid token.
    for attempt in 0..20 {
        let (status, _) = gateway("/weather/v1/today", None);
        assert_eq!(status, "401", "attempt {attempt}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let (status, refusal) = loop {
        let (status, body) = gateway("/weather/v1/today", Some(&access_token));
        if status != "200" || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, "403", "{refusal}");
    assert!(refusal.contains("banned"), "{refusal}");
    let bans = portcullis(&data, &["ban", "list", "--format", "json"]);
    let bans: serde_json::Value = serde_json::from_slice(&bans.stdout).unwrap();
    assert_eq!(bans["decisions"][0]["app_id"], "weather-app", "{bans}");
    assert_eq!(bans["decisions"][0]["policy"], "unauthorised", "{bans}");

    // The operator sees the counts and the ban.
    let status = portcullis(&data, &["status", "--config", config, "--format", "json"]);
    assert_eq!(status.status.code(), Some(0), "{}", String::from_utf8_lossy(&status.stderr));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let apps = status["apps"].as_array().expect("an apps array");
    let app = apps.iter().find(|app| app["app_id"] == "weather-app").expect("weather-app in the status");
    assert_eq!(app["app_id"], "weather-app", "{status}");
    assert_eq!(app["stats"]["services"]["weather"]["outcomes"]["401"], 20, "{status}");
    assert_eq!(app["decision"]["kind"], "ban", "{status}");
    let table = portcullis(&data, &["status", "--config", config]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("weather-app") && table.contains("banned: "), "{table}");

    // A refused egress request is counted by app, verdict and rule. The
    // proxy refuses the port before connecting, so nothing is contacted.
    let secret = issue_proxy_secret(&data, "egress-app");
    let egress = Command::new("curl")
        .args(["--silent", "--max-time", "10", "--noproxy", "", "--proxytunnel", "--output", "/dev/null"])
        .args(["--write-out", "%{http_connect}"])
        .args(["--proxy", &format!("http://egress-app:{secret}@127.0.0.1:{}", ports[1])])
        .arg(format!("http://127.0.0.1:{}/", ports[5]))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&egress.stdout), "403");

    // Prometheus metrics, for a platform certificate only.
    let monitor = dir.path().join("monitor");
    let issued = portcullis(&data, &["ca", "issue", "--platform", "monitor", "--out", monitor.to_str().unwrap()]);
    assert_eq!(issued.status.code(), Some(0));
    let scrape = |client: &Path| -> (String, String) {
        let file = |name: &str| client.join(name).display().to_string();
        let output = Command::new("curl")
            .args(["--silent", "--max-time", "10", "--write-out", "\n%{http_code}"])
            .args(["--cacert", &file("ca-bundle.pem"), "--cert", &file("cert.pem"), "--key", &file("key.pem")])
            .arg(format!("https://127.0.0.1:{}/metrics", ports[3]))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        let (body, status) = text.rsplit_once('\n').unwrap();
        (status.to_owned(), body.to_owned())
    };
    let (code, metrics) = scrape(&monitor);
    assert_eq!(code, "200", "{metrics}");
    assert!(
        metrics.contains(r#"portcullis_requests_total{app_id="weather-app",service="weather",class="401"} 20"#),
        "{metrics}"
    );
    // Two bans: weather-app's for the 401s, egress-app's for its egress
    // violation.
    assert!(metrics.contains(r#"portcullis_guard_decisions_total{kind="ban",mode="enforce"} 2"#), "{metrics}");
    assert!(metrics.contains("portcullis_guard_dropped_events_total 0"), "{metrics}");
    assert!(
        metrics
            .contains(r#"portcullis_egress_decisions_total{app_id="egress-app",verdict="deny",rule="allow_ports"} 1"#),
        "{metrics}"
    );
    assert_eq!(scrape(&app_dir).0, "403", "an app certificate may not use the operator API");

    // A monitoring certificate may read but not change bans.
    let file = |name: &str| monitor.join(name).display().to_string();
    let change = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10", "--output", "/dev/null", "--write-out", "%{http_code}"])
        .args(["--cacert", &file("ca-bundle.pem"), "--cert", &file("cert.pem"), "--key", &file("key.pem")])
        .args(["--header", "Content-Type: application/json"])
        .args(["--data", r#"{"app_id":"weather-app","duration_secs":60,"reason":"test"}"#])
        .arg(format!("https://127.0.0.1:{}/v1/bans", ports[3]))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&change.stdout), "403", "{}", String::from_utf8_lossy(&change.stderr));

    // Every gateway request is in the access log.
    let access = std::fs::read_to_string(data.join("access.jsonl")).unwrap_or_default();
    assert!(access.lines().count() >= 22, "{access}");

    // SIGTERM stops it cleanly.
    let pid = server.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not stop within 20 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0));
    let mut log = String::new();
    std::io::Read::read_to_string(server.0.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("\"platform started\""), "{log}");
    assert!(log.contains("\"platform stopped\""), "{log}");
}

/// An HTTP/1.1 upstream on 127.0.0.1 in place of the weather service.
/// It responds to every request with 200 and `ok <target>` after
/// `delay`, reports each target on `arrived` when the head is read, and
/// stops when dropped.
struct Upstream {
    port: u16,
    arrived: std::sync::mpsc::Receiver<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(delay: Duration) -> Self {
        use std::io::{BufRead, Write};
        use std::sync::atomic::Ordering;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (report, arrived) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let report = report.clone();
                std::thread::spawn(move || {
                    stream.set_nonblocking(false).unwrap();
                    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    // Keep-alive connections from the gateway's pool carry
                    // one request after another.
                    loop {
                        let mut request_line = String::new();
                        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut header = String::new();
                        while reader.read_line(&mut header).is_ok_and(|n| n > 0) && header != "\r\n" {
                            header.clear();
                        }
                        let target = request_line.split(' ').nth(1).unwrap_or_default().to_owned();
                        let _ = report.send(target.clone());
                        std::thread::sleep(delay);
                        let body = format!("ok {target}\n");
                        let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if writer.write_all(response.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { port, arrived, stop, thread: Some(thread) }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The server's standard error (JSON log lines), collected by a thread.
struct Log(std::sync::Arc<std::sync::Mutex<String>>);

impl Log {
    fn collect(server: &mut Server) -> Self {
        use std::io::BufRead;
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let lines = std::io::BufReader::new(server.0.stderr.take().unwrap());
        let sink = std::sync::Arc::clone(&text);
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Self(text)
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Waits up to 10 s for a log line containing every one of `parts`
    /// and returns it.
    fn wait_for_line(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text();
            if let Some(line) = text.lines().find(|line| parts.iter().all(|part| line.contains(part))) {
                return line.to_owned();
            }
            assert!(Instant::now() < deadline, "no log line with {parts:?} within 10 s:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A running `portcullis serve` with one registered app, `weather-app`,
/// and its token for the weather service.
struct Running {
    server: Server,
    log: Log,
    ports: Vec<u16>,
    config: std::path::PathBuf,
    app_dir: std::path::PathBuf,
    token: String,
}

/// Returns the example configuration with free loopback ports for the listeners
/// (`ports[0..5]`: gateway, egress, token, operator, consent) and the
/// weather service at `http://127.0.0.1:<upstream>`.
fn example_with_ports(ports: &[u16], upstream: u16) -> String {
    EXAMPLE
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{}", ports[0]))
        .replace("127.0.0.1:8444", &format!("127.0.0.1:{}", ports[1]))
        .replace("127.0.0.1:8445", &format!("127.0.0.1:{}", ports[2]))
        .replace("127.0.0.1:8446", &format!("127.0.0.1:{}", ports[3]))
        .replace("127.0.0.1:8447", &format!("127.0.0.1:{}", ports[4]))
        .replace("https://127.0.0.1:9101", &format!("http://127.0.0.1:{upstream}"))
}

/// Starts `portcullis serve --init` in `dir` with [`example_with_ports`],
/// registers `weather-app` with a grant of `weather:read`, issues its
/// certificate and fetches its token.
fn start_platform(dir: &Path, upstream: u16) -> Running {
    let data = dir.join("data");
    let ports = free_ports(5);
    let config = dir.join("platform.toml");
    std::fs::write(&config, example_with_ports(&ports, upstream)).unwrap();
    let config_text = config.to_str().unwrap();

    for args in [
        vec!["app", "register", "--id", "weather-app", "--name", "Weather", "--owner", "acme"],
        vec!["grant", "add", "--app", "weather-app", "--service", "weather", "--scope", "weather:read"],
    ] {
        let args: Vec<&str> =
            if args[0] == "grant" { args.into_iter().chain(["--config", config_text]).collect() } else { args };
        let output = portcullis(&data, &args);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    let mut server = start_serve(&data, config_text, &["--init"]);
    let log = Log::collect(&mut server);
    wait_for_port(ports[2], &mut server);
    wait_for_port(ports[0], &mut server);
    let app_dir = dir.join("app");
    let output = portcullis(&data, &["ca", "issue", "--app", "weather-app", "--out", app_dir.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));

    // The trust cache reloads within a second and then accepts the new
    // certificate.
    std::thread::sleep(Duration::from_millis(1500));

    let body = fetch_token(&app_dir, ports[2]);
    let token = body["access_token"].as_str().unwrap_or_else(|| panic!("no access token: {body}")).to_owned();

    Running { server, log, ports, config, app_dir, token }
}

impl Running {
    /// Builds the curl command for `GET path` through the gateway with the app's
    /// certificate and token.
    fn gateway_request(&self, path: &str) -> Command {
        let file = |name: &str| self.app_dir.join(name).display().to_string();
        let mut command = Command::new("curl");
        command
            .args(["--silent", "--max-time", "20", "--write-out", "\n%{http_code}"])
            .args(["--cacert", &file("ca-bundle.pem"), "--cert", &file("cert.pem"), "--key", &file("key.pem")])
            .args(["--header", &format!("Authorization: Bearer {}", self.token)])
            .arg(format!("https://127.0.0.1:{}{path}", self.ports[0]));
        command
    }

    /// Sends `GET path` through the gateway and returns the status and body.
    fn get(&self, path: &str) -> (String, String) {
        split_status(&String::from_utf8_lossy(&self.gateway_request(path).output().unwrap().stdout))
    }

    /// Sends `signal` (`HUP`, `TERM`) to the server.
    fn signal(&self, signal: &str) {
        let pid = self.server.0.id().to_string();
        assert!(Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap().success());
    }

    /// Waits up to 20 s for the server to exit and returns its exit code.
    fn wait_for_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.server.0.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "serve did not stop within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Splits curl's output written with `--write-out "\n%{http_code}"` into
/// the status and the body.
fn split_status(text: &str) -> (String, String) {
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", text));
    (status.to_owned(), body.to_owned())
}

/// SIGHUP re-reads the configuration file: a new route is served without a
/// restart, a changed listener is named in a warning, and an invalid file
/// is logged with the file and the problem while the running routes stay.
#[test]
fn serve_reloads_configuration_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(Duration::ZERO);
    let mut running = start_platform(dir.path(), upstream.port);
    let original = std::fs::read_to_string(&running.config).unwrap();

    assert_eq!(running.get("/weather/v1/today"), ("200".into(), "ok /weather/v1/today\n".into()));
    let (status, body) = running.get("/weather/v2/today");
    assert_eq!(status, "404", "{body}");
    assert!(body.contains("\"no_route\""), "{body}");

    // Widen the weather route to /weather/ and move the consent listener,
    // which needs a restart.
    let spare = free_ports(1)[0];
    let widened = original
        .replace("prefix = \"/weather/v1/\"", "prefix = \"/weather/\"")
        .replace(&format!("127.0.0.1:{}", running.ports[4]), &format!("127.0.0.1:{spare}"));
    assert_ne!(widened, original);
    std::fs::write(&running.config, &widened).unwrap();
    running.signal("HUP");
    running.log.wait_for_line(&["configuration reloaded"]);

    assert_eq!(running.get("/weather/v2/today"), ("200".into(), "ok /weather/v2/today\n".into()));
    let warning = running.log.wait_for_line(&["not applied", "\"setting\":\"listeners\""]);
    assert!(warning.contains("WARN"), "{warning}");

    // An invalid file that would also remove /weather/v2/ is not applied
    // at all.
    let invalid = original.replace("rate_per_second = 50.0", "rate_per_second = -1.0");
    assert_ne!(invalid, original);
    std::fs::write(&running.config, &invalid).unwrap();
    running.signal("HUP");
    let config_path = running.config.display().to_string();
    let error = running.log.wait_for_line(&["configuration reload failed"]);
    assert!(error.contains("ERROR"), "{error}");
    assert!(error.contains(&config_path), "the error names the file: {error}");
    assert!(error.contains("gateway.rate_per_second"), "the error names the key: {error}");

    assert_eq!(running.get("/weather/v2/today"), ("200".into(), "ok /weather/v2/today\n".into()));
    assert_eq!(running.get("/weather/v1/today"), ("200".into(), "ok /weather/v1/today\n".into()));

    running.signal("TERM");
    assert_eq!(running.wait_for_exit(), Some(0));
}

/// A request in flight when SIGTERM arrives gets its response before the
/// process exits 0.
#[test]
fn serve_drains_request_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(Duration::from_secs(1));
    let mut running = start_platform(dir.path(), upstream.port);

    let mut request = Server(running.gateway_request("/weather/v1/slow").stdout(Stdio::piped()).spawn().unwrap());
    let arrived = upstream.arrived.recv_timeout(Duration::from_secs(10)).expect("the request reached the upstream");
    assert_eq!(arrived, "/weather/v1/slow");
    running.signal("TERM");

    let mut output = String::new();
    std::io::Read::read_to_string(request.0.stdout.as_mut().unwrap(), &mut output).unwrap();
    assert_eq!(split_status(&output), ("200".into(), "ok /weather/v1/slow\n".into()));
    assert_eq!(running.wait_for_exit(), Some(0));
    running.log.wait_for_line(&["gateway stopped", "Drained"]);
}
