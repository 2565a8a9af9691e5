//! What the gateway writes to its log per request at the default level:
//! nothing for a forwarded request, and one line for a rejection, inside a
//! span that names the app and the request id.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Collects every log line of the process.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn rejection_logged_in_request_span() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt().with_env_filter("info").with_ansi(false).with_writer(move || writer.clone()).init();

    let h = Harness::start(|_| {}).await;
    let token = h.token("weather", &["weather:read"]);
    assert_eq!(h.get("/weather/v1/today", &token).await, 200);
    let rejected = h
        .raw(b"GET /weather/v1/today HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", Duration::from_secs(5))
        .await;
    assert_eq!(status_of(&rejected), 401, "{rejected}");
    let request_id = rejected
        .lines()
        .find_map(|line| line.strip_prefix("x-portcullis-request-id: "))
        .unwrap_or_else(|| panic!("no request id in {rejected}"))
        .trim()
        .to_owned();

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log.lines().filter(|line| line.contains("request")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains(&format!("request{{app_id={APP} request_id={request_id}}}")), "{}", lines[0]);
    assert!(lines[0].contains("request rejected"), "{}", lines[0]);
}
