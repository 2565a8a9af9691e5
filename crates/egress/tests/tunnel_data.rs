//! Bulk data through a CONNECT tunnel arrives byte for byte, in order, in
//! both directions, at the smallest and the default `egress.tunnel_buffer_bytes`
//! (the copy buffer grows while a tunnel moves bulk data). Every target is
//! a loopback echo server the test starts.

mod harness;

use std::time::Duration;

use harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Bytes the client sends through the tunnel and reads back.
const TOTAL_BYTES: usize = 6 * 1024 * 1024;

/// Returns `length` bytes of a pattern that repeats only every 251 * 256
/// bytes, so a dropped, repeated or reordered chunk of any power-of-two
/// size shows.
fn pattern(length: usize) -> Vec<u8> {
    (0..length).map(|i| ((i % 251) as u8).wrapping_add((i / 251 % 256) as u8)).collect()
}

/// Echoes every byte of each connection back until the client closes.
async fn echo_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind the echo server");
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    (port, task)
}

#[tokio::test]
async fn bulk_data_crosses_tunnel_intact() {
    for buffer_bytes in [16 * 1024, 1024 * 1024] {
        let (port, echo) = echo_server().await;
        let mut options = Options::new(&[port]);
        options.tunnel_buffer_bytes = buffer_bytes;
        let proxy = Harness::start(options).await;
        let basic = proxy.basic(WEATHER_APP);

        let tunnel = raw_connect(proxy.address, Some(&basic), &format!("127.0.0.1:{port}")).await;
        assert_eq!(tunnel.status, 200, "buffer {buffer_bytes}: {}", tunnel.body);
        let (mut read, mut write) = tunnel.stream.into_split();
        let sent = pattern(TOTAL_BYTES);
        let to_send = sent.clone();
        let writer = tokio::spawn(async move {
            // Uneven write sizes, so reads on the far side do not line up
            // with the proxy's buffer.
            for chunk in to_send.chunks(77_777) {
                write.write_all(chunk).await.unwrap();
            }
            write.shutdown().await.unwrap();
        });
        let mut received = Vec::with_capacity(TOTAL_BYTES);
        tokio::time::timeout(Duration::from_secs(20), read.read_to_end(&mut received))
            .await
            .unwrap_or_else(|_| panic!("buffer {buffer_bytes}: echo timed out after 20 s, {} bytes", received.len()))
            .unwrap();
        writer.await.unwrap();

        assert_eq!(received.len(), TOTAL_BYTES, "buffer {buffer_bytes}");
        let first_difference = received.iter().zip(&sent).position(|(a, b)| a != b);
        assert_eq!(first_difference, None, "buffer {buffer_bytes}: bytes differ");
        proxy.stop().await;
        echo.abort();
    }
}
