//! Prometheus counters of the running proxy: decisions by app, verdict and
//! rule, bytes by app and direction, and failed authentications, encoded as
//! a scrape would see them.

mod harness;

use harness::*;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

fn scrape(harness: &Harness) -> String {
    let mut registry = Registry::default();
    harness.metrics.register(&mut registry);
    let mut text = String::new();
    encode(&mut text, &registry).expect("the registry encodes");
    text
}

#[tokio::test]
async fn metrics_count_decisions_and_bytes() {
    let target = TargetServer::start().await;
    let proxy = Harness::start(Options::new(&[target.port])).await;
    let proxy_url = proxy.proxy_url(WEATHER_APP, WEATHER_APP);

    let url = format!("http://127.0.0.1:{}/forecast", target.port);
    for _ in 0..2 {
        let allowed = curl(&["--proxy", &proxy_url, &url]).await;
        assert_eq!(allowed.status, 200, "{allowed:?}");
    }
    let denied = curl(&["--proxy", &proxy_url, &format!("http://blocked.weather.test:{}/", target.port)]).await;
    assert_eq!(denied.status, 403, "{denied:?}");
    let tunnel =
        curl(&["--proxytunnel", "--proxy", &proxy_url, &format!("http://feed.weather.test:{}/", target.port)]).await;
    assert_eq!(tunnel.status, 200, "{tunnel:?}");

    // The tunnel's bytes are recorded as they are copied; wait until the
    // proxy has seen the tunnel close.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while proxy.proxy.tunnels().open(&portcullis_config::AppId::parse(WEATHER_APP).unwrap()) > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the tunnel did not close");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let text = scrape(&proxy);
    assert!(
        text.contains(
            r#"portcullis_egress_decisions_total{app_id="weather-app",verdict="allow",rule="allow_cidrs[0]"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"portcullis_egress_decisions_total{app_id="weather-app",verdict="deny",rule="deny_hosts[0]"} 1"#
        ),
        "{text}"
    );
    assert!(!text.contains("blocked.weather.test"), "a host name became a label: {text}");

    let (sent, received) = proxy.bytes.totals(&portcullis_config::AppId::parse(WEATHER_APP).unwrap());
    assert!(sent > 0 && received > 0, "bytes were copied both ways: {sent} {received}");
    assert!(
        text.contains(&format!(r#"portcullis_egress_bytes_total{{app_id="weather-app",direction="sent"}} {sent}"#)),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"portcullis_egress_bytes_total{{app_id="weather-app",direction="received"}} {received}"#
        )),
        "{text}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn refusals_before_a_decision_are_counted() {
    let target = TargetServer::start().await;
    let mut proxy = Harness::start(Options::new(&[target.port])).await;
    let url = format!("http://feed.weather.test:{}/", target.port);
    let other = portcullis_config::AppId::parse(OTHER_APP).unwrap();
    assert!(proxy.apps.remove(&other), "the harness registers rules for {OTHER_APP}");

    // (what the client sends, status, body part, the event's reason and
    // rule, or None for a refusal before authentication)
    let anonymous = format!("http://{}", proxy.address);
    let wrong_secret = format!("http://{WEATHER_APP}:not-the-secret@{}", proxy.address);
    let cases = [
        (anonymous.clone(), 407, "proxy_authentication_required", None),
        (wrong_secret.clone(), 407, "proxy_authentication_required", None),
        (proxy.proxy_url(BANNED_APP, BANNED_APP), 403, r#""rule":"guard:ban""#, Some((BANNED_APP, "app_banned"))),
        (proxy.proxy_url(OTHER_APP, OTHER_APP), 403, r#""rule":"app:no-rules""#, Some((OTHER_APP, "no_rules"))),
    ];
    for (proxy_url, status, body, event) in cases {
        let result = curl(&["--proxy", &proxy_url, &url]).await;
        assert_eq!(result.status, status, "{proxy_url}: {result:?}");
        assert!(result.body.contains(body), "{proxy_url}: {result:?}");

        let events = proxy.drain_events();
        match event {
            None => assert!(events.is_empty(), "{proxy_url}: {events:?}"),
            Some((app, reason)) => {
                assert_eq!(events.len(), 1, "{proxy_url}: {events:?}");
                assert_eq!(events[0].app_id.as_str(), app);
                assert_eq!(events[0].reason.as_str(), reason);
                assert_eq!(events[0].requested_host, "feed.weather.test");
                assert_eq!(events[0].port, target.port);
                assert!(!events[0].reason.is_violation(), "{reason} must not count toward a ban");
            }
        }
    }
    assert!(target.requests().is_empty(), "no refused request reached the target");

    let text = scrape(&proxy);
    for expected in [
        r#"portcullis_egress_authentication_failures_total{problem="missing_credentials"} 1"#,
        r#"portcullis_egress_authentication_failures_total{problem="wrong_secret"} 1"#,
        r#"portcullis_egress_decisions_total{app_id="banned-app",verdict="deny",rule="guard:ban"} 1"#,
        r#"portcullis_egress_decisions_total{app_id="other-app",verdict="deny",rule="app:no-rules"} 1"#,
    ] {
        assert!(text.contains(expected), "{expected} missing from\n{text}");
    }
    proxy.stop().await;
}
