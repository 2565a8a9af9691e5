//! The records service keeps each app's records apart, keyed by the
//! `x-portcullis-app-id` header. (This test also makes `cargo test` build
//! the example binaries that `portcullis up` runs.)

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the service on drop, so a failing test leaves no process behind.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends one HTTP/1.1 request and returns the status and body.
fn request(port: u16, method: &str, app_id: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let header = app_id.map(|id| format!("x-portcullis-app-id: {id}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} /records/v1/notes HTTP/1.1\r\nHost: localhost\r\n{header}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    (status, serde_json::from_str(body).unwrap())
}

#[test]
fn records_are_kept_per_app() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _service = Service(
        Command::new(env!("CARGO_BIN_EXE_records-service"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--plain"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "records-service did not listen within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(request(port, "POST", Some("alpha"), "first").0, 201);
    assert_eq!(request(port, "POST", Some("alpha"), "second").0, 201);
    assert_eq!(request(port, "POST", Some("beta"), "other").0, 201);

    let (status, alpha) = request(port, "GET", Some("alpha"), "");
    assert_eq!(status, 200);
    assert_eq!(alpha["records"], serde_json::json!(["first", "second"]));
    let (_, beta) = request(port, "GET", Some("beta"), "");
    assert_eq!(beta["records"], serde_json::json!(["other"]));

    let (status, refusal) = request(port, "GET", None, "");
    assert_eq!(status, 400);
    assert_eq!(refusal["error"], "missing_app_id");
}
