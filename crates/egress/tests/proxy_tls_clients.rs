//! HTTPS through CONNECT with curl and Python requests, and plain HTTP with
//! requests. The HTTPS target is `openssl s_server` on 127.0.0.1 with a
//! certificate for `feed.weather.test` made for the test.

mod harness;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::*;
use portcullis_egress::Verdict;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// `openssl s_server -www` on 127.0.0.1; killed when dropped.
struct TlsServer {
    port: u16,
    child: Child,
}

impl TlsServer {
    /// Starts the server with `cert` and `key` and waits until it accepts
    /// connections, for at most 10 s.
    async fn start(cert: &Path, key: &Path) -> Self {
        let port = closed_port().await;
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start openssl s_server");
        let server = Self { port, child };

        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((LOOPBACK, port)).await.is_err() {
            assert!(Instant::now() < deadline, "openssl s_server listens within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Makes a self-signed P-256 certificate for `feed.weather.test` in `dir`.
async fn make_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=feed.weather.test", "-addext", "subjectAltName=DNS:feed.weather.test"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("run openssl req");
    assert!(status.success(), "openssl req made the test certificate");
    (cert, key)
}

/// Runs the requests client on `urls` and returns one JSON object per URL.
async fn python_requests(proxy_url: &str, ca_file: &Path, urls: &[String]) -> Vec<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/requests_client.py");
    let mut command = Command::new("python3");
    command.arg(script).arg(proxy_url).arg(ca_file).args(urls).stdin(Stdio::null()).kill_on_drop(true);
    let output =
        tokio::time::timeout(CLIENT_TIMEOUT, command.output()).await.expect("python3 finishes").expect("run python3");
    assert!(
        output.status.success(),
        "requests_client.py failed (is requests installed? python3 -m pip install requests): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn https_through_connect_with_curl() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(dir.path()).await;
    let tls = TlsServer::start(&cert, &key).await;
    let mut proxy = Harness::start(Options::new(&[tls.port])).await;
    let url = format!("https://feed.weather.test:{}/", tls.port);
    let cacert = cert.to_str().unwrap();

    let result = curl(&["-x", &proxy.proxy_url(WEATHER_APP, WEATHER_APP), "--cacert", cacert, &url]).await;
    assert_eq!(result.connect_status, 200, "{result:?}");
    assert_eq!(result.status, 200, "{result:?}");
    assert!(result.body.contains("s_server"), "{}", result.body);

    let blocked = format!("https://blocked.weather.test:{}/", tls.port);
    let refused = curl(&["-x", &proxy.proxy_url(WEATHER_APP, WEATHER_APP), "--cacert", cacert, &blocked]).await;
    assert_eq!(refused.connect_status, 403, "{refused:?}");

    let events = proxy.drain_events();
    let rules: Vec<(Verdict, &str)> = events.iter().map(|event| (event.verdict, event.rule.as_str())).collect();
    assert_eq!(rules, [(Verdict::Allow, "allow_cidrs[0]"), (Verdict::Deny, "deny_hosts[0]")]);
    assert_eq!(events[0].connected.map(|address| address.port()), Some(tls.port));
    proxy.stop().await;
}

#[tokio::test]
async fn python_requests_through_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(dir.path()).await;
    let tls = TlsServer::start(&cert, &key).await;
    let target = TargetServer::start().await;
    let mut proxy = Harness::start(Options::new(&[tls.port, target.port])).await;

    let urls = [
        format!("http://feed.weather.test:{}/forecast?city=bergen", target.port),
        format!("https://feed.weather.test:{}/", tls.port),
        format!("https://blocked.weather.test:{}/", tls.port),
        format!("http://blocked.weather.test:{}/", target.port),
    ];
    let results = python_requests(&proxy.proxy_url(WEATHER_APP, WEATHER_APP), &cert, &urls).await;
    assert_eq!(results.len(), 4, "{results:?}");

    assert_eq!(results[0]["status"], 200, "{}", results[0]);
    assert_eq!(results[0]["body"], "hello from the target\n");
    assert_eq!(results[1]["status"], 200, "{}", results[1]);
    assert!(results[1]["body"].as_str().unwrap().contains("s_server"), "{}", results[1]);
    assert_eq!(results[2]["status"], serde_json::Value::Null, "{}", results[2]);
    assert!(results[2]["error"].as_str().unwrap().contains("403"), "{}", results[2]);
    assert_eq!(results[3]["status"], 403, "{}", results[3]);
    assert!(results[3]["body"].as_str().unwrap().contains(r#""rule":"deny_hosts[0]""#), "{}", results[3]);

    let seen = target.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/forecast?city=bergen");
    assert!(!seen[0].headers.contains_key("proxy-authorization"));

    let events = proxy.drain_events();
    let rules: Vec<(Verdict, &str)> = events.iter().map(|event| (event.verdict, event.rule.as_str())).collect();
    assert_eq!(
        rules,
        [
            (Verdict::Allow, "allow_cidrs[0]"),
            (Verdict::Allow, "allow_cidrs[0]"),
            (Verdict::Deny, "deny_hosts[0]"),
            (Verdict::Deny, "deny_hosts[0]"),
        ]
    );

    let wrong = format!("http://{WEATHER_APP}:wrong@{}", proxy.address);
    let results = python_requests(&wrong, &cert, &urls[..1]).await;
    assert_eq!(results[0]["status"], 407, "{}", results[0]);
    assert!(proxy.drain_events().is_empty());
    proxy.stop().await;
}
