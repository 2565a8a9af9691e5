//! The connect helper against loopback listeners this test starts. The
//! listener address is opened to apps by an explicit `allow_cidrs` entry.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use portcullis_egress::{EgressRules, Engine, Resolve, ResolveFuture, StaticResolver, Verdict, connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const LOOPBACK: &str = "127.0.0.1";

/// Answers the listener's address first and `::1` afterwards, counting
/// calls, as a rebinding DNS server would switch its answer.
struct RebindingResolver {
    calls: AtomicUsize,
}

impl Resolve for RebindingResolver {
    fn resolve<'a>(&'a self, _name: &'a str) -> ResolveFuture<'a> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let answer: IpAddr = if call == 0 { ip(LOOPBACK) } else { ip("::1") };
        Box::pin(async move { Ok(vec![answer]) })
    }
}

async fn listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind((ip(LOOPBACK), 0)).await.expect("bind a loopback listener");
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

fn loopback_engine(port: u16, resolver: Arc<dyn Resolve>) -> Engine {
    let mut settings = settings();
    settings.allow_cidrs = vec!["127.0.0.1/32".parse().unwrap()];
    settings.allow_ports = vec![port];
    Engine::new(Arc::new(EgressRules::new(settings).unwrap()), resolver)
}

/// Accepts one connection within five seconds, echoes one byte, and
/// returns the peer's view of the local address.
async fn echo_once(listener: TcpListener) -> SocketAddr {
    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("accept within 5 s")
        .expect("accept");
    let local = stream.local_addr().unwrap();
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await.unwrap();
    stream.write_all(&byte).await.unwrap();
    local
}

#[tokio::test]
async fn connects_to_checked_literal() {
    let (listener, port) = listener().await;
    let server = tokio::spawn(echo_once(listener));
    let engine = loopback_engine(port, Arc::new(StaticResolver::new()));

    let decision = engine.decide(&app(&engine), LOOPBACK, port).await;
    assert_eq!(decision.verdict, Verdict::Allow, "{}", decision.message);
    assert_eq!(decision.rule, "allow_cidrs[0]");
    let target = decision.target.expect("allowed");

    let (mut stream, address) = connect(&target, Duration::from_secs(2)).await.expect("connect");
    assert_eq!(address, SocketAddr::new(ip(LOOPBACK), port));
    assert_eq!(stream.peer_addr().unwrap(), address);
    stream.write_all(b"x").await.unwrap();
    let mut echoed = [0u8; 1];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"x");
    assert_eq!(server.await.unwrap(), SocketAddr::new(ip(LOOPBACK), port));
}

#[tokio::test]
async fn connect_uses_only_pinned_address() {
    let (listener, port) = listener().await;
    let server = tokio::spawn(echo_once(listener));
    let resolver = Arc::new(RebindingResolver { calls: AtomicUsize::new(0) });
    let engine = loopback_engine(port, resolver.clone());

    let decision = engine.decide(&app(&engine), "svc.example.org", port).await;
    assert_eq!(decision.verdict, Verdict::Allow, "{}", decision.message);
    let target = decision.target.expect("allowed");
    assert_eq!(target.addresses(), &[SocketAddr::new(ip(LOOPBACK), port)]);

    let (mut stream, address) = connect(&target, Duration::from_secs(2)).await.expect("connect");
    assert_eq!(address, SocketAddr::new(ip(LOOPBACK), port), "connected to the checked address");
    assert_eq!(stream.peer_addr().unwrap(), address);
    assert_eq!(resolver.calls.load(Ordering::SeqCst), 1, "connect must not resolve again");

    stream.write_all(b"y").await.unwrap();
    let mut echoed = [0u8; 1];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(server.await.unwrap().port(), port);

    let second = engine.decide(&app(&engine), "svc.example.org", port).await;
    assert_eq!(second.verdict, Verdict::Deny, "the rebound answer is checked on its own");
    assert_eq!(second.rule, "special:loopback");
}

#[tokio::test]
async fn silent_first_address_leaves_time_for_next() {
    // 127.0.0.1:port has a backlog of 0 whose one slot is taken, so Linux
    // drops further SYN packets to it, like a filtered host. The same port
    // on 127.0.0.2 accepts.
    let full = tokio::net::TcpSocket::new_v4().unwrap();
    full.bind(SocketAddr::new(ip(LOOPBACK), 0)).unwrap();
    let port = full.local_addr().unwrap().port();
    let full = full.listen(0).unwrap();
    let _queued = std::net::TcpStream::connect_timeout(&full.local_addr().unwrap(), Duration::from_secs(1)).unwrap();
    let probe =
        tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(full.local_addr().unwrap()))
            .await;
    assert!(probe.is_err(), "the full backlog accepted a connection: {probe:?}");
    let open = TcpListener::bind((ip("127.0.0.2"), port)).await.expect("bind 127.0.0.2 on the same port");

    let mut settings = settings();
    settings.allow_cidrs = vec!["127.0.0.0/30".parse().unwrap()];
    settings.allow_ports = vec![port];
    let resolver = StaticResolver::new().with("two.example.org", &[ip(LOOPBACK), ip("127.0.0.2")]);
    let engine = Engine::new(Arc::new(EgressRules::new(settings).unwrap()), Arc::new(resolver));
    let decision = engine.decide(&app(&engine), "two.example.org", port).await;
    assert_eq!(decision.verdict, Verdict::Allow, "{}", decision.message);
    let target = decision.target.expect("allowed");

    let started = std::time::Instant::now();
    let (stream, address) = connect(&target, Duration::from_secs(2)).await.expect("the second address accepts");
    assert_eq!(address, SocketAddr::new(ip("127.0.0.2"), port));
    assert_eq!(stream.peer_addr().unwrap(), address);
    assert!(started.elapsed() < Duration::from_millis(1900), "took {:?}", started.elapsed());
    drop(open);
}
