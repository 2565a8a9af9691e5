//! The per-app byte cap, `egress.max_bytes_per_app`, through the running
//! proxy: refusals with an event, closing of open tunnels, and the end of
//! the accounting period. Every target is a loopback server the test starts.

mod harness;

use std::time::Duration;

use harness::*;
use portcullis_config::AppId;
use portcullis_egress::{BYTE_LIMIT_RULE, ReasonCode, Verdict};

/// The cap the tests set, in bytes.
const CAP: u64 = 256 * 1024;

/// What the source server sends per connection: four times the cap.
const SOURCE_BYTES: usize = 4 * CAP as usize;

fn capped(ports: &[u16], period: Option<Duration>) -> Options {
    let mut options = Options::new(ports);
    options.max_bytes_per_app = Some(CAP);
    options.byte_cap_period = period;
    options
}

#[tokio::test]
async fn byte_cap_closes_tunnel_and_refuses() {
    let source = SourceServer::start(SOURCE_BYTES).await;
    let target = TargetServer::start().await;
    let mut proxy = Harness::start(capped(&[source.port, target.port], None)).await;
    let basic = proxy.basic(WEATHER_APP);

    let mut tunnel = raw_connect(proxy.address, Some(&basic), &format!("127.0.0.1:{}", source.port)).await;
    assert_eq!(tunnel.status, 200, "{}", tunnel.body);
    let read = read_until_closed(&mut tunnel.stream, Duration::from_secs(10)).await;
    assert!(read as u64 >= CAP - 64 * 1024, "tunnel closed early, after {read} bytes");
    assert!(read < SOURCE_BYTES, "tunnel was not closed at the cap: {read} bytes read");
    let usage = proxy.proxy.byte_cap().expect("a cap is set").usage(&AppId::parse(WEATHER_APP).unwrap()).bytes();
    assert!(usage >= CAP, "counted {usage} bytes");

    let refused = raw_connect(proxy.address, Some(&basic), &format!("127.0.0.1:{}", target.port)).await;
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("\"rule\":\"limit:bytes\""), "{}", refused.body);
    assert!(refused.body.contains("\"reason\":\"byte_limit\""), "{}", refused.body);

    let url = format!("http://127.0.0.1:{}/forecast", target.port);
    let forwarded = curl(&["--proxy", &proxy.proxy_url(WEATHER_APP, WEATHER_APP), &url]).await;
    assert_eq!(forwarded.status, 403, "{forwarded:?}");
    assert!(forwarded.body.contains("limit:bytes"), "{forwarded:?}");
    assert!(target.requests().is_empty(), "a refused request reached the target");

    let events = proxy.drain_events();
    let refusals: Vec<_> = events.iter().filter(|event| event.rule == BYTE_LIMIT_RULE).collect();
    assert_eq!(refusals.len(), 2, "{events:?}");
    for event in refusals {
        assert_eq!(event.verdict, Verdict::Deny);
        assert_eq!(event.reason, ReasonCode::ByteLimit);
        assert_eq!(event.app_id.as_str(), WEATHER_APP);
        assert!(event.resolved.is_empty(), "no lookup for a capped app: {event:?}");
    }

    let other = curl(&["--proxy", &proxy.proxy_url(OTHER_APP, OTHER_APP), &url]).await;
    assert_eq!(other.status, 200, "another app keeps its own count: {other:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn byte_cap_counts_header_bytes() {
    // Requests without a body but with an 8 KiB header field each: only
    // the heads can reach the cap.
    let target = TargetServer::start().await;
    let proxy = Harness::start(capped(&[target.port], None)).await;
    let url = format!("http://127.0.0.1:{}/forecast", target.port);
    let padding = format!("x-padding: {}", "a".repeat(8 * 1024));
    let proxy_url = proxy.proxy_url(WEATHER_APP, WEATHER_APP);

    // 256 KiB of 8 KiB heads is 32 requests; 64 bounds the loop. The
    // exchange that crosses the cap is closed without a response, as a
    // tunnel would be, and later requests get 403.
    let mut refused_at = None;
    let mut cut = 0;
    for attempt in 1..=64 {
        let result = curl(&["--proxy", &proxy_url, "-H", &padding, &url]).await;
        if result.status == 403 {
            assert!(result.body.contains("limit:bytes"), "{result:?}");
            refused_at = Some(attempt);
            break;
        }
        if result.status == 0 {
            cut += 1;
            continue;
        }
        assert_eq!(result.status, 200, "attempt {attempt}: {result:?}");
    }
    let refused_at = refused_at.expect("header bytes never reached the byte cap");
    assert!((30..=34).contains(&refused_at), "refused at request {refused_at}");
    assert!(cut <= 1, "{cut} exchanges were cut at the cap");
    assert!(target.requests().len() < refused_at, "a refused request reached the target");
    proxy.stop().await;
}

#[tokio::test]
async fn byte_cap_closes_idle_tunnels() {
    let source = SourceServer::start(SOURCE_BYTES).await;
    let silent = SilentServer::start().await;
    let proxy = Harness::start(capped(&[source.port, silent.port], None)).await;
    let basic = proxy.basic(WEATHER_APP);

    let mut idle = raw_connect(proxy.address, Some(&basic), &format!("127.0.0.1:{}", silent.port)).await;
    assert_eq!(idle.status, 200, "{}", idle.body);
    let mut busy = raw_connect(proxy.address, Some(&basic), &format!("127.0.0.1:{}", source.port)).await;
    assert_eq!(busy.status, 200, "{}", busy.body);

    read_until_closed(&mut busy.stream, Duration::from_secs(10)).await;
    let idle_read = read_until_closed(&mut idle.stream, Duration::from_secs(3)).await;
    assert_eq!(idle_read, 0, "the idle tunnel moved no bytes");
    proxy.stop().await;
}

#[tokio::test]
async fn byte_cap_period_ends() {
    let source = SourceServer::start(SOURCE_BYTES).await;
    let target = TargetServer::start().await;
    let period = Duration::from_millis(1500);
    let proxy = Harness::start(capped(&[source.port, target.port], Some(period))).await;
    let basic = proxy.basic(WEATHER_APP);
    let target_authority = format!("127.0.0.1:{}", target.port);

    let mut tunnel = raw_connect(proxy.address, Some(&basic), &format!("127.0.0.1:{}", source.port)).await;
    assert_eq!(tunnel.status, 200, "{}", tunnel.body);
    read_until_closed(&mut tunnel.stream, Duration::from_secs(10)).await;
    let refused = raw_connect(proxy.address, Some(&basic), &target_authority).await;
    assert_eq!(refused.status, 403, "{}", refused.body);

    tokio::time::sleep(period + Duration::from_millis(200)).await;
    let allowed = raw_connect(proxy.address, Some(&basic), &target_authority).await;
    assert_eq!(allowed.status, 200, "a new period starts from zero: {}", allowed.body);
    proxy.stop().await;
}
