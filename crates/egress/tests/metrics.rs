//! Prometheus counters of the running proxy: decisions by app, verdict and
//! rule, and bytes by app and direction, encoded as a scrape would see them.

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
