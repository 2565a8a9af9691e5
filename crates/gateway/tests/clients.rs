//! Real app clients against the gateway: curl over HTTP/1.1 and HTTP/2,
//! and Python's requests, each with certificate, key and CA bundle files.

mod common;

use std::time::Duration;

use common::*;

async fn curl(h: &Harness, http: &str, path: &str, token: &str) -> (String, String) {
    let port = h.port();
    let files = &h.app_files;
    let output = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10", http])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg("--cacert")
        .arg(files.join("ca-bundle.pem"))
        .arg("--cert")
        .arg(files.join("cert.pem"))
        .arg("--key")
        .arg(files.join("key.pem"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--write-out", "\n%{http_code} %{http_version}"])
        .arg(format!("https://localhost:{port}{path}"))
        .kill_on_drop(true)
        .output()
        .await
        .expect("curl runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (body.to_owned(), status.to_owned())
}

#[tokio::test]
async fn curl_over_http1_and_http2() {
    let h = Harness::start(|_| {}).await;
    let token = h.token("weather", &["weather:read"]);

    let (body, status) = curl(&h, "--http1.1", "/weather/v1/today", &token).await;
    assert_eq!(status, "200 1.1");
    assert_eq!(body, "saw /weather/v1/today");

    let (body, status) = curl(&h, "--http2", "/weather/v1/today?x=1", &token).await;
    assert_eq!(status, "200 2");
    assert_eq!(body, "saw /weather/v1/today?x=1");

    let (body, status) = curl(&h, "--http2", "/records/v1/x", &token).await;
    assert_eq!(status, "401 2");
    assert!(body.starts_with("{\"error\":\"invalid_token\""), "{body}");

    // curl removes dot-segments itself unless told not to.
    let (_, status) = curl(&h, "--path-as-is", "/weather/v1/../../records/v1/x", &token).await;
    assert_eq!(status, "400 2");

    let seen = h.upstream.seen();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(targets, ["/weather/v1/today", "/weather/v1/today?x=1"]);
    assert_eq!(seen[1].headers["x-portcullis-app-id"], APP);
}

const PYTHON: &str = r#"
import sys, requests
port, files, token = sys.argv[1], sys.argv[2], sys.argv[3]
session = requests.Session()
session.cert = (files + "/cert.pem", files + "/key.pem")
# Passed per request: a session-wide verify loses to REQUESTS_CA_BUNDLE.
bundle = files + "/ca-bundle.pem"
headers = {"Authorization": "Bearer " + token}
for path in ["/weather/v1/today", "/records/v1/x", "/weather/v1/%2e%2e/records"]:
    response = session.get("https://localhost:" + port + path, headers=headers, verify=bundle, timeout=10)
    print(response.status_code, response.headers.get("x-portcullis-request-id", "-")[:4] != "-", response.text)
"#;

#[tokio::test]
async fn python_requests_as_the_app() {
    let h = Harness::start(|_| {}).await;
    let token = h.token("weather", &["weather:read"]);
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("python3")
            .arg("-c")
            .arg(PYTHON)
            .arg(h.port().to_string())
            .arg(&h.app_files)
            .arg(&token)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "stdout {stdout}\nstderr {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(lines[0], "200 True saw /weather/v1/today");
    assert!(lines[1].starts_with("401 True {\"error\":\"invalid_token\""), "{}", lines[1]);
    assert!(lines[2].starts_with("400 True {\"error\":\"invalid_path\""), "{}", lines[2]);
    assert_eq!(h.upstream.seen().len(), 1);
}
