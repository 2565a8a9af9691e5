//! Measures the memory that request buffering takes for a body that
//! arrives in one chunk and for the same body in one-byte chunks. Not a
//! check: it prints figures for docs/benchmarks.md and runs only when
//! asked for, in a release build:
//!
//! ```sh
//! cargo test --release -p portcullis-gateway --test buffer_memory -- --ignored --nocapture
//! ```

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

/// Bytes of the body, one byte short of the default `gateway.max_body_bytes`.
const BODY_BYTES: usize = 1024 * 1024 - 1;

/// Returns this process's resident memory in KiB, from `/proc/self/status`.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("VmRSS in /proc/self/status");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS in KiB")
}

/// Sends a chunked request head and `BODY_BYTES` of data in chunks of
/// `chunk` bytes, without the last chunk, so that the gateway keeps the
/// body buffered. Writes through one reused 64 KiB buffer, so that the
/// sender's own memory stays small next to what the gateway holds.
async fn send_unfinished(tls: &mut (impl AsyncWriteExt + Unpin), token: &str, chunk: usize) {
    let head = format!(
        "POST /records/v1/held HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();

    let mut pending = Vec::with_capacity(64 * 1024);
    let mut left = BODY_BYTES;
    while left > 0 {
        let size = chunk.min(left);
        pending.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        pending.extend(std::iter::repeat_n(b'a', size));
        pending.extend_from_slice(b"\r\n");
        left -= size;
        if pending.len() >= 60 * 1024 || left == 0 {
            tls.write_all(&pending).await.unwrap();
            pending.clear();
        }
    }
    tls.flush().await.unwrap();
}

#[tokio::test]
#[ignore = "a measurement for docs/benchmarks.md, not a check"]
async fn buffered_body_memory_by_chunk_size() {
    let h = Harness::start(|config| config.gateway.upstream_timeout = Duration::from_secs(60)).await;
    let token = h.token("records", &["records:write"]);

    // Each body stays held while the next one arrives, so that memory the
    // allocator kept from one body cannot hide the growth of the next.
    let mut open = Vec::new();
    for chunk in [BODY_BYTES, 1024, 1] {
        let mut tls = connect(&h, b"http/1.1", false).await;
        let before = resident_kib();
        send_unfinished(&mut tls, &token, chunk).await;

        // Time for the gateway to read the whole body, which it then keeps.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let growth = resident_kib().saturating_sub(before);
        println!("chunks of {chunk} bytes: {BODY_BYTES} body bytes kept, resident memory grew by {growth} KiB");
        open.push(tls);
    }
    drop(open);
    assert!(h.upstream.seen().is_empty(), "no body was complete, so none went upstream");
}
