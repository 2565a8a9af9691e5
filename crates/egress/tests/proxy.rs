//! The egress proxy server end to end: the proxy, its clients (Debian's
//! curl) and its targets all run on 127.0.0.1, and test host names resolve
//! through injected answers, never through DNS.

mod harness;

use std::time::{Duration, Instant};

use harness::*;
use portcullis_config::AppId;
use portcullis_egress::proxy::ListenerLimits;
use portcullis_egress::{ReasonCode, TUNNEL_LIMIT_RULE, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one case expects.
struct Expected {
    /// curl's `%{http_code}`, the final status.
    status: u16,
    /// curl's `%{http_connect}`, the CONNECT status (0: no CONNECT sent).
    connect_status: u16,
    /// Text the response body must contain.
    body: &'static str,
    /// The one event's verdict and rule, or no event.
    event: Option<(Verdict, &'static str)>,
    /// The request targets the target server must see in this case.
    target_saw: &'static [&'static str],
}

#[tokio::test]
async fn proxy_cases_with_curl() {
    let target = TargetServer::start().await;
    let unlisted = TargetServer::start().await;
    let closed = closed_port().await;
    let mut proxy = Harness::start(Options::new(&[target.port, closed])).await;

    let port = target.port;
    let own = proxy.proxy_url(WEATHER_APP, WEATHER_APP);
    let wrong_secret = format!("http://{WEATHER_APP}:not-the-secret@{}", proxy.address);
    let anonymous = format!("http://{}", proxy.address);
    let borrowed = proxy.proxy_url(WEATHER_APP, OTHER_APP);
    let banned = proxy.proxy_url(BANNED_APP, BANNED_APP);
    let authorization = format!("Proxy-Authorization: {}", proxy.basic(WEATHER_APP));
    let origin_form = format!("http://{}/forecast", proxy.address);

    let cases: Vec<(&str, Vec<String>, Expected)> = vec![
        (
            "allowed host via CONNECT",
            vec!["-p".into(), "-x".into(), own.clone(), format!("http://feed.weather.test:{port}/tunnel")],
            Expected {
                status: 200,
                connect_status: 200,
                body: "hello from the target",
                event: Some((Verdict::Allow, "allow_cidrs[0]")),
                target_saw: &["/tunnel"],
            },
        ),
        (
            "allowed host via absolute-form GET",
            vec!["-x".into(), own.clone(), format!("http://feed.weather.test:{port}/forecast?city=oslo")],
            Expected {
                status: 200,
                connect_status: 0,
                body: "hello from the target",
                event: Some((Verdict::Allow, "allow_cidrs[0]")),
                target_saw: &["/forecast?city=oslo"],
            },
        ),
        (
            "denied host via absolute-form GET",
            vec!["-x".into(), own.clone(), format!("http://blocked.weather.test:{port}/")],
            Expected {
                status: 403,
                connect_status: 0,
                body: r#""rule":"deny_hosts[0]""#,
                event: Some((Verdict::Deny, "deny_hosts[0]")),
                target_saw: &[],
            },
        ),
        (
            "denied host via CONNECT",
            vec!["-p".into(), "-x".into(), own.clone(), format!("http://blocked.weather.test:{port}/")],
            Expected {
                status: 0,
                connect_status: 403,
                body: "",
                event: Some((Verdict::Deny, "deny_hosts[0]")),
                target_saw: &[],
            },
        ),
        (
            "denied port",
            vec!["-p".into(), "-x".into(), own.clone(), format!("http://feed.weather.test:{}/", unlisted.port)],
            Expected {
                status: 0,
                connect_status: 403,
                body: "",
                event: Some((Verdict::Deny, "allow_ports")),
                target_saw: &[],
            },
        ),
        (
            "denied port via absolute-form GET",
            vec!["-x".into(), own.clone(), format!("http://feed.weather.test:{}/", unlisted.port)],
            Expected {
                status: 403,
                connect_status: 0,
                body: r#""rule":"allow_ports""#,
                event: Some((Verdict::Deny, "allow_ports")),
                target_saw: &[],
            },
        ),
        (
            "missing credentials",
            vec!["-x".into(), anonymous.clone(), format!("http://feed.weather.test:{port}/")],
            Expected {
                status: 407,
                connect_status: 0,
                body: "proxy_authentication_required",
                event: None,
                target_saw: &[],
            },
        ),
        (
            "missing credentials on CONNECT",
            vec!["-p".into(), "-x".into(), anonymous.clone(), format!("http://feed.weather.test:{port}/")],
            Expected { status: 0, connect_status: 407, body: "", event: None, target_saw: &[] },
        ),
        (
            "wrong secret",
            vec!["-x".into(), wrong_secret.clone(), format!("http://feed.weather.test:{port}/")],
            Expected {
                status: 407,
                connect_status: 0,
                body: "proxy_authentication_required",
                event: None,
                target_saw: &[],
            },
        ),
        (
            "another app's secret",
            vec!["-x".into(), borrowed.clone(), format!("http://feed.weather.test:{port}/")],
            Expected {
                status: 407,
                connect_status: 0,
                body: "proxy_authentication_required",
                event: None,
                target_saw: &[],
            },
        ),
        (
            "banned app",
            vec!["-x".into(), banned.clone(), format!("http://feed.weather.test:{port}/")],
            Expected {
                status: 403,
                connect_status: 0,
                body: r#""rule":"guard:ban""#,
                event: Some((Verdict::Deny, "guard:ban")),
                target_saw: &[],
            },
        ),
        (
            "origin-form request to the proxy",
            vec!["-H".into(), authorization.clone(), origin_form.clone()],
            Expected {
                status: 400,
                connect_status: 0,
                body: "absolute-form",
                event: Some((Verdict::Deny, "malformed:target")),
                target_saw: &[],
            },
        ),
        (
            "https target in absolute form",
            vec![
                "-H".into(),
                authorization.clone(),
                "--request-target".into(),
                format!("https://feed.weather.test:{port}/"),
                format!("http://{}/", proxy.address),
            ],
            Expected {
                status: 400,
                connect_status: 0,
                body: "CONNECT",
                event: Some((Verdict::Deny, "malformed:target")),
                target_saw: &[],
            },
        ),
        (
            "CONNECT to a name resolving to the metadata address",
            vec!["-p".into(), "-x".into(), own.clone(), format!("http://metadata.weather.test:{port}/")],
            Expected {
                status: 0,
                connect_status: 403,
                body: "",
                event: Some((Verdict::Deny, "special:cloud-metadata")),
                target_saw: &[],
            },
        ),
        (
            "CONNECT to a closed port",
            vec!["-p".into(), "-x".into(), own.clone(), format!("http://feed.weather.test:{closed}/")],
            Expected {
                status: 0,
                connect_status: 502,
                body: "",
                event: Some((Verdict::Allow, "allow_cidrs[0]")),
                target_saw: &[],
            },
        ),
    ];

    for (name, args, expected) in cases {
        let before = target.requests().len();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let result = curl(&args).await;

        assert_eq!(result.status, expected.status, "{name}: status; {result:?}");
        assert_eq!(result.connect_status, expected.connect_status, "{name}: CONNECT status; {result:?}");
        assert!(result.body.contains(expected.body), "{name}: body {:?} lacks {:?}", result.body, expected.body);
        let seen = target.requests().split_off(before);
        let targets: Vec<&str> = seen.iter().map(|request| request.target.as_str()).collect();
        assert_eq!(targets, expected.target_saw, "{name}: requests the target saw");
        for request in &seen {
            assert!(!request.headers.contains_key("proxy-authorization"), "{name}: the credentials reached the target");
        }

        let events = proxy.drain_events();
        match expected.event {
            None => assert!(events.is_empty(), "{name}: no event expected, got {events:?}"),
            Some((verdict, rule)) => {
                assert_eq!(events.len(), 1, "{name}: one event per decision, got {events:?}");
                assert_eq!(events[0].verdict, verdict, "{name}: event verdict");
                assert_eq!(events[0].rule, rule, "{name}: event rule");
                let app = if name == "banned app" { BANNED_APP } else { WEATHER_APP };
                assert_eq!(events[0].app_id.as_str(), app, "{name}: event app");
            }
        }
    }
    assert!(unlisted.requests().is_empty(), "the unlisted port was never connected to");
    assert_eq!(proxy.proxy.dropped_events(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn forwarded_request_headers() {
    let target = TargetServer::start().await;
    let proxy = Harness::start(Options::new(&[target.port])).await;
    let url = format!("http://feed.weather.test:{}/forecast?city=oslo", target.port);

    let result = curl(&[
        "-x",
        &proxy.proxy_url(WEATHER_APP, WEATHER_APP),
        "-H",
        "Connection: x-hop",
        "-H",
        "X-Hop: dropped",
        "-H",
        "Proxy-Trace: dropped",
        "-H",
        "X-End-To-End: kept",
        "--data",
        "city=oslo",
        &url,
    ])
    .await;
    assert_eq!(result.status, 200, "{result:?}");

    let seen = target.requests();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, "/forecast?city=oslo");
    assert_eq!(request.body.as_ref(), b"city=oslo");
    assert_eq!(request.headers["host"], format!("feed.weather.test:{}", target.port).as_str());
    assert_eq!(request.headers["via"], "1.1 portcullis-egress");
    assert_eq!(request.headers["x-end-to-end"], "kept");
    for dropped in ["proxy-authorization", "proxy-connection", "proxy-trace", "x-hop"] {
        assert!(!request.headers.contains_key(dropped), "{dropped} reached the target");
    }

    // Heads count like bodies: the request head as the target received it,
    // CRLF after each line and an empty line at the end.
    let request_line = format!("POST {} HTTP/1.1", request.target).len();
    let fields: usize = request.headers.iter().map(|(name, value)| name.as_str().len() + 2 + value.len() + 2).sum();
    let (sent, received) = proxy.bytes.totals(&AppId::parse(WEATHER_APP).unwrap());
    assert_eq!(sent, (request_line + 2 + fields + 2 + "city=oslo".len()) as u64);
    let body = "hello from the target\n".len() as u64;
    assert!(received > body + "HTTP/1.1 200 OK\r\n\r\n".len() as u64, "response head not counted: {received}");
    assert!(received < body + 200, "{received}");
    proxy.stop().await;
}

#[tokio::test]
async fn refusal_body_names_rule() {
    let target = TargetServer::start().await;
    let unlisted = TargetServer::start().await;
    let proxy = Harness::start(Options::new(&[target.port])).await;
    let authorization = proxy.basic(WEATHER_APP);

    // (CONNECT target, status, rule, reason)
    let cases = [
        (format!("blocked.weather.test:{}", target.port), 403, "deny_hosts[0]", "host_denied"),
        (format!("feed.weather.test:{}", unlisted.port), 403, "allow_ports", "port_not_allowed"),
        (format!("metadata.weather.test:{}", target.port), 403, "special:cloud-metadata", "special_address"),
    ];
    for (connect_target, status, rule, reason) in cases {
        let response = raw_connect(proxy.address, Some(&authorization), &connect_target).await;
        assert_eq!(response.status, status, "{connect_target}");
        let body: serde_json::Value = serde_json::from_str(&response.body).expect("a JSON body");
        assert_eq!(body["error"], "egress_denied", "{connect_target}");
        assert_eq!(body["rule"], rule, "{connect_target}");
        assert_eq!(body["reason"], reason, "{connect_target}");
        assert_eq!(body.as_object().unwrap().len(), 3, "{connect_target}: no other detail in {body}");
    }

    let anonymous = raw_connect(proxy.address, None, &format!("feed.weather.test:{}", target.port)).await;
    assert_eq!(anonymous.status, 407);
    let mut stream = TcpStream::connect(proxy.address).await.unwrap();
    stream.write_all(b"GET http://feed.weather.test/ HTTP/1.1\r\nHost: feed.weather.test\r\n\r\n").await.unwrap();
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 407"), "{head}");
    assert!(head.contains("proxy-authenticate: basic realm=\"portcullis-egress\"\r\n"), "{head}");
    assert!(target.requests().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn loopback_literal_without_allow_cidr() {
    let target = TargetServer::start().await;
    let mut options = Options::new(&[target.port]);
    options.allow_loopback = false;
    let mut proxy = Harness::start(options).await;

    let url = format!("http://2130706433:{}/", target.port);
    let result = curl(&["-x", &proxy.proxy_url(WEATHER_APP, WEATHER_APP), &url]).await;
    assert_eq!(result.status, 403, "{result:?}");
    assert!(result.body.contains(r#""rule":"special:loopback""#), "{}", result.body);

    for spelling in ["0x7f.1", "127.0.0.1", "[::ffff:127.0.0.1]", "017700000001"] {
        let response =
            raw_connect(proxy.address, Some(&proxy.basic(WEATHER_APP)), &format!("{spelling}:{}", target.port)).await;
        assert_eq!(response.status, 403, "{spelling}");
        assert!(response.body.contains(r#""rule":"special:loopback""#), "{spelling}: {}", response.body);
    }

    let events = proxy.drain_events();
    assert_eq!(events.len(), 5);
    assert!(
        events.iter().all(|event| event.verdict == Verdict::Deny && event.rule == "special:loopback"),
        "{events:?}"
    );
    assert!(target.requests().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn tunnel_limit_returns_429() {
    let silent = SilentServer::start().await;
    let mut options = Options::new(&[silent.port]);
    options.max_tunnels_per_app = 2;
    // The silent server never closes, so a tunnel whose client left ends
    // at the idle timeout; a short one keeps the test fast.
    options.idle_timeout = Duration::from_secs(1);
    options.listener = ListenerLimits { shutdown_grace: Duration::from_millis(200), ..ListenerLimits::default() };
    let mut proxy = Harness::start(options).await;
    let app_id = AppId::parse(WEATHER_APP).unwrap();
    let connect_target = format!("feed.weather.test:{}", silent.port);

    let first = raw_connect(proxy.address, Some(&proxy.basic(WEATHER_APP)), &connect_target).await;
    let second = raw_connect(proxy.address, Some(&proxy.basic(WEATHER_APP)), &connect_target).await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(proxy.proxy.tunnels().open(&app_id), 2);

    let url = format!("http://{connect_target}/");
    let refused = curl(&["-p", "-x", &proxy.proxy_url(WEATHER_APP, WEATHER_APP), &url]).await;
    assert_eq!(refused.connect_status, 429, "{refused:?}");
    let refused = raw_connect(proxy.address, Some(&proxy.basic(WEATHER_APP)), &connect_target).await;
    assert_eq!(refused.status, 429);
    assert!(refused.body.contains(r#""rule":"max_tunnels_per_app""#), "{}", refused.body);

    // The limit is per app: another app still gets a tunnel.
    let other = raw_connect(proxy.address, Some(&proxy.basic(OTHER_APP)), &connect_target).await;
    assert_eq!(other.status, 200);

    // Closing the tunnels frees the slots.
    drop((first, second));
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.proxy.tunnels().open(&app_id) > 0 {
        assert!(Instant::now() < deadline, "slots freed within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = raw_connect(proxy.address, Some(&proxy.basic(WEATHER_APP)), &connect_target).await;
    assert_eq!(again.status, 200);

    // 4 tunnels and 2 refusals by the limit, each with its event. A
    // refusal comes before the lookup, so it names no address.
    let events = proxy.drain_events();
    assert_eq!(events.len(), 6, "{events:?}");
    let refusals: Vec<_> = events.iter().filter(|event| event.rule == TUNNEL_LIMIT_RULE).collect();
    assert_eq!(refusals.len(), 2, "{events:?}");
    for event in refusals {
        assert_eq!(event.verdict, Verdict::Deny);
        assert_eq!(event.reason, ReasonCode::TunnelLimit);
        assert_eq!(event.app_id.as_str(), WEATHER_APP);
        assert_eq!(event.host, "feed.weather.test");
        assert!(event.resolved.is_empty(), "{event:?}");
    }
    drop((other, again));
    proxy.stop().await;
}

#[tokio::test]
async fn idle_tunnel_closed() {
    let silent = SilentServer::start().await;
    let mut options = Options::new(&[silent.port]);
    options.idle_timeout = Duration::from_millis(300);
    let proxy = Harness::start(options).await;
    let app_id = AppId::parse(WEATHER_APP).unwrap();

    let mut tunnel =
        raw_connect(proxy.address, Some(&proxy.basic(WEATHER_APP)), &format!("feed.weather.test:{}", silent.port))
            .await;
    assert_eq!(tunnel.status, 200);
    let opened = Instant::now();

    // Traffic keeps the tunnel open past the idle timeout.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        tunnel.stream.write_all(b"ping").await.expect("tunnel still open while busy");
    }
    let last_write = Instant::now();
    assert!(last_write - opened >= Duration::from_millis(450));

    let mut buffer = [0u8; 16];
    let read =
        tokio::time::timeout(Duration::from_secs(5), tunnel.stream.read(&mut buffer)).await.expect("closed within 5 s");
    let idle = last_write.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "the proxy closed the tunnel: {read:?}");
    assert!(idle >= Duration::from_millis(250), "closed after the idle timeout, not before: {idle:?}");
    assert!(idle < Duration::from_secs(3), "closed soon after the idle timeout: {idle:?}");

    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.proxy.tunnels().open(&app_id) > 0 {
        assert!(Instant::now() < deadline, "slot freed within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (sent, _) = proxy.bytes.totals(&app_id);
    assert_eq!(sent, 12, "three 4-byte writes recorded");
    proxy.stop().await;
}

/// Waits up to `limit` for the proxy to close `stream`, writing a byte
/// every 100 ms so that the idle timeout cannot be what closes it, and
/// returns the time until it closed.
async fn busy_until_closed(stream: &mut TcpStream, limit: Duration) -> Duration {
    let opened = Instant::now();
    let mut buffer = [0u8; 16];
    while opened.elapsed() < limit {
        if stream.write_all(b"x").await.is_err() {
            return opened.elapsed();
        }
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return opened.elapsed(),
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    panic!("the tunnel was still open after {limit:?}");
}

/// Starts an HTTP server on loopback that responds to one request with
/// `count` chunks of `chunk` bytes, pausing `pause` after each, for at most
/// 20 s. Returns its port and task.
async fn streaming_upstream(chunk: usize, count: usize, pause: Duration) -> (u16, tokio::task::JoinHandle<()>) {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let Ok((mut stream, _)) = upstream.accept().await else { return };
        let mut head = [0u8; 4096];
        let _ = stream.read(&mut head).await;
        let data = vec![b'x'; chunk];
        let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", chunk * count);
        let _ = stream.write_all(response.as_bytes()).await;
        let started = Instant::now();
        for _ in 0..count {
            if started.elapsed() > Duration::from_secs(20) || stream.write_all(&data).await.is_err() {
                return;
            }
            tokio::time::sleep(pause).await;
        }
    });
    (port, server)
}

/// A client that stops reading a large forwarded response loses the
/// connection once nothing has moved for the idle timeout, and its slot is
/// freed.
#[tokio::test]
async fn stalled_reader_frees_slot() {
    // Up to 1 GiB, written as fast as the proxy takes it.
    let (port, server) = streaming_upstream(64 * 1024, 1 << 14, Duration::ZERO).await;

    let mut options = Options::new(&[port]);
    options.idle_timeout = Duration::from_secs(1);
    let proxy = Harness::start(options).await;
    let app_id = AppId::parse(WEATHER_APP).unwrap();

    let mut client = TcpStream::connect(proxy.address).await.unwrap();
    let request = format!(
        "GET http://feed.weather.test:{port}/big HTTP/1.1\r\nHost: feed.weather.test:{port}\r\nProxy-Authorization: {}\r\n\r\n",
        proxy.basic(WEATHER_APP)
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.proxy.tunnels().open(&app_id) == 0 {
        assert!(Instant::now() < deadline, "the exchange never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The client reads nothing; the socket buffers fill and stay full.
    let deadline = Instant::now() + Duration::from_secs(8);
    while proxy.proxy.tunnels().open(&app_id) > 0 {
        assert!(Instant::now() < deadline, "a client that stopped reading kept its slot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(client);
    server.abort();
    proxy.stop().await;
}

/// A ban ends a forwarded exchange that is still streaming.
#[tokio::test]
async fn ban_ends_forwarded_exchange() {
    // 1 KiB every 100 ms, for 15 s.
    let (port, server) = streaming_upstream(1024, 150, Duration::from_millis(100)).await;

    let proxy = Harness::start(Options::new(&[port])).await;
    let app_id = AppId::parse(WEATHER_APP).unwrap();
    let mut client = TcpStream::connect(proxy.address).await.unwrap();
    let request = format!(
        "GET http://feed.weather.test:{port}/slow HTTP/1.1\r\nHost: feed.weather.test:{port}\r\nProxy-Authorization: {}\r\n\r\n",
        proxy.basic(WEATHER_APP)
    );
    client.write_all(request.as_bytes()).await.unwrap();
    // Read the body for 1.5 s, so the exchange's ban checks have run
    // before the ban.
    let mut buffer = vec![0u8; 4096];
    let mut before_ban = 0;
    let reading = Instant::now();
    while reading.elapsed() < Duration::from_millis(1500) {
        match tokio::time::timeout(Duration::from_secs(1), client.read(&mut buffer)).await {
            Ok(Ok(read)) if read > 0 => before_ban += read,
            other => panic!("the response stopped before the ban: {other:?}"),
        }
    }
    assert!(before_ban > 10 * 1024, "only {before_ban} bytes before the ban");

    proxy.banned.lock().unwrap().push(WEATHER_APP.to_owned());
    let banned_at = Instant::now();
    loop {
        assert!(banned_at.elapsed() < Duration::from_secs(5), "the exchange went on 5 s after the ban");
        match tokio::time::timeout(Duration::from_secs(5), client.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!("no byte and no close within 5 s"),
        }
    }
    let open_for = banned_at.elapsed();
    assert!(open_for < Duration::from_millis(2500), "closed {open_for:?} after the ban, expected within 2 checks");

    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.proxy.tunnels().open(&app_id) > 0 {
        assert!(Instant::now() < deadline, "slot freed within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.abort();
    proxy.stop().await;
}

#[tokio::test]
async fn tunnel_lifetime_enforced() {
    let silent = SilentServer::start().await;
    let mut options = Options::new(&[silent.port]);
    options.max_tunnel_lifetime = Duration::from_millis(800);
    let proxy = Harness::start(options).await;

    let target = format!("feed.weather.test:{}", silent.port);
    let mut tunnel = raw_connect(proxy.address, Some(&proxy.basic(WEATHER_APP)), &target).await;
    assert_eq!(tunnel.status, 200, "{}", tunnel.body);
    let open_for = busy_until_closed(&mut tunnel.stream, Duration::from_secs(5)).await;
    assert!(open_for >= Duration::from_millis(600), "closed before the lifetime: {open_for:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn ban_closes_open_tunnel() {
    let silent = SilentServer::start().await;
    let proxy = Harness::start(Options::new(&[silent.port])).await;
    let app_id = AppId::parse(WEATHER_APP).unwrap();

    let target = format!("feed.weather.test:{}", silent.port);
    let mut tunnel = raw_connect(proxy.address, Some(&proxy.basic(WEATHER_APP)), &target).await;
    assert_eq!(tunnel.status, 200, "{}", tunnel.body);
    let mut other = raw_connect(proxy.address, Some(&proxy.basic(OTHER_APP)), &target).await;
    assert_eq!(other.status, 200, "{}", other.body);

    proxy.banned.lock().unwrap().push(WEATHER_APP.to_owned());
    let open_for = busy_until_closed(&mut tunnel.stream, Duration::from_secs(5)).await;
    assert!(open_for < Duration::from_secs(3), "closed within two ban checks: {open_for:?}");

    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.proxy.tunnels().open(&app_id) > 0 {
        assert!(Instant::now() < deadline, "slot freed within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    other.stream.write_all(b"still open").await.expect("another app's tunnel stays open");
    let mut buffer = [0u8; 1];
    let quiet = tokio::time::timeout(Duration::from_millis(300), other.stream.read(&mut buffer)).await;
    assert!(quiet.is_err(), "another app's tunnel was closed: {quiet:?}");
    proxy.stop().await;
}

/// A client that sends its first tunnel bytes in the same write as the
/// CONNECT head (as some clients pipeline a TLS ClientHello): the proxy has
/// already read them with the head and must forward them first.
#[tokio::test]
async fn tunnel_forwards_bytes_sent_with_head() {
    let target = TargetServer::start().await;
    let proxy = Harness::start(Options::new(&[target.port])).await;
    let app_id = AppId::parse(WEATHER_APP).unwrap();

    let authority = format!("feed.weather.test:{}", target.port);
    let inner = format!("GET /early HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let request = format!(
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: {}\r\n\r\n{inner}",
        proxy.basic(WEATHER_APP)
    );
    let mut stream = TcpStream::connect(proxy.address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();

    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await.expect("in time").unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 200"), "the target did not answer the early request: {rest}");
    assert_eq!(target.requests().iter().map(|r| r.target.as_str()).collect::<Vec<_>>(), ["/early"]);

    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.proxy.tunnels().open(&app_id) > 0 {
        assert!(Instant::now() < deadline, "slot freed within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (sent, received) = proxy.bytes.totals(&app_id);
    assert_eq!(sent, inner.len() as u64, "the early bytes are counted once");
    assert!(received > 0);
    proxy.stop().await;
}

#[tokio::test]
async fn full_event_queue_counts_drops() {
    let target = TargetServer::start().await;
    let mut options = Options::new(&[target.port]);
    options.event_capacity = 1;
    let mut proxy = Harness::start(options).await;
    let url = format!("http://feed.weather.test:{}/", target.port);

    for attempt in 0..3 {
        let result = curl(&["-x", &proxy.proxy_url(WEATHER_APP, WEATHER_APP), &url]).await;
        assert_eq!(result.status, 200, "attempt {attempt}: a full queue does not fail the request");
    }

    assert_eq!(proxy.proxy.dropped_events(), 2);
    let events = proxy.drain_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].verdict, Verdict::Allow);
    assert_eq!(events[0].rule, "allow_cidrs[0]");
    assert_eq!(target.requests().len(), 3);
    proxy.stop().await;
}

#[tokio::test]
async fn listener_head_limits() {
    let target = TargetServer::start().await;
    let mut options = Options::new(&[target.port]);
    options.listener = ListenerLimits {
        header_read_timeout: Duration::from_millis(500),
        max_head_bytes: 8192,
        ..ListenerLimits::default()
    };
    let proxy = Harness::start(options).await;

    // A head larger than max_head_bytes gets 431.
    let mut stream = TcpStream::connect(proxy.address).await.unwrap();
    let filler = "a".repeat(10_000);
    let request = format!("GET http://feed.weather.test:{}/ HTTP/1.1\r\nX-Filler: {filler}\r\n\r\n", target.port);
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");

    // A head not finished within header_read_timeout closes the connection.
    let mut stream = TcpStream::connect(proxy.address).await.unwrap();
    stream.write_all(b"GET http://feed.weather.test/ HTTP/1.1\r\nX-Slow: ").await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await.expect("closed within 5 s");
    let waited = started.elapsed();
    assert!(read.is_ok() || read.is_err(), "connection ended");
    assert!(waited >= Duration::from_millis(400), "closed after the timeout, not before: {waited:?}");
    assert!(waited < Duration::from_secs(3), "closed soon after the timeout: {waited:?}");
    assert!(rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(&rest));

    assert!(target.requests().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn shutdown_closes_open_tunnels() {
    let silent = SilentServer::start().await;
    let mut options = Options::new(&[silent.port]);
    options.listener = ListenerLimits { shutdown_grace: Duration::from_millis(200), ..ListenerLimits::default() };
    let proxy = Harness::start(options).await;
    let address = proxy.address;

    let mut tunnel =
        raw_connect(address, Some(&proxy.basic(WEATHER_APP)), &format!("feed.weather.test:{}", silent.port)).await;
    assert_eq!(tunnel.status, 200);

    let started = Instant::now();
    proxy.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5), "serve returned within the grace time and the abort wait");

    let mut buffer = [0u8; 8];
    let read =
        tokio::time::timeout(Duration::from_secs(5), tunnel.stream.read(&mut buffer)).await.expect("tunnel closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(TcpStream::connect(address).await.is_err(), "the listener is closed");
}
