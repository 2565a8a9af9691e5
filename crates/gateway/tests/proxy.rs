//! End-to-end behaviour of the gateway over real sockets: authorisation,
//! header rewriting, limits, events, reload and shutdown.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use portcullis_guard::GuardEvent;
use portcullis_identity::{CertificateKind, LeafRequest, SpiffeId};
use portcullis_store::DecisionKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);

fn request(method: &str, target: &str, token: &str, extra: &str) -> Vec<u8> {
    format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n{extra}Connection: close\r\n\r\n")
        .into_bytes()
}

fn body_of(received: &str) -> &str {
    received.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[tokio::test]
async fn allowed_call_reaches_upstream_rewritten() {
    let mut h = Harness::start(|_| {}).await;
    let token = h.token("weather", &["weather:read"]);
    let mut extra = "X-Portcullis-App-Id: forged\r\nX-Portcullis-Scopes: records:write\r\nKeep-Alive: 5\r\nProxy-Authorization: x\r\nTE: trailers\r\n".to_owned();
    for name in FORGED_IDENTITY_NAMES {
        extra.push_str(&format!("{name}: admin\r\n"));
    }
    let received = h.raw(&request("GET", "/weather/v1/%74oday?city=oslo&x=%2e", &token, &extra), WAIT).await;

    assert_eq!(status_of(&received), 200, "{received}");
    assert_eq!(body_of(&received), "saw /weather/v1/today?city=oslo&x=%2e");
    let lower = received.to_ascii_lowercase();
    assert!(lower.contains("x-portcullis-request-id: "), "{received}");
    assert!(!lower.contains("x-upstream-hop"), "hop-by-hop response header forwarded: {received}");

    let seen = h.upstream.seen();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.target, "/weather/v1/today?city=oslo&x=%2e");
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.headers["x-portcullis-app-id"], "app-a");
    assert_eq!(seen.headers["x-portcullis-scopes"], "weather:read");
    assert_eq!(seen.headers.get_all("x-portcullis-app-id").iter().count(), 1);
    assert_eq!(seen.headers["x-portcullis-request-id"].len(), 32);
    for removed in ["authorization", "keep-alive", "proxy-authorization", "te"] {
        assert!(seen.headers.get(removed).is_none(), "{removed} forwarded");
    }
    for name in FORGED_IDENTITY_NAMES {
        assert!(seen.headers.get(name).is_none(), "{name} forwarded");
    }
    let own: Vec<&str> =
        seen.headers.keys().map(|name| name.as_str()).filter(|name| name.contains("portcullis")).collect();
    assert_eq!(own, ["x-portcullis-app-id", "x-portcullis-scopes", "x-portcullis-request-id"]);

    let events = h.guard_events();
    assert_eq!(events.len(), 1, "{events:?}");
    let GuardEvent::Access { app_id, service, status, .. } = &events[0] else { panic!("{events:?}") };
    assert_eq!((app_id.as_str(), service.as_str(), *status), ("app-a", "weather", 200));

    let log = h.access_log().await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["path"], "/weather/v1/today");
    assert_eq!(log[0]["route"], "/weather/v1/");
    assert_eq!(log[0]["method"], "GET");
    assert_eq!(log[0]["status"], 200);
    assert_eq!(log[0]["bytes_out"], body_of(&received).len());
    assert!(log[0]["reason"].is_null());
}

/// Spellings of the gateway's identity headers that CGI-style upstreams
/// (RFC 3875 section 4.1.18) read as the same variable, such as
/// `HTTP_X_PORTCULLIS_APP_ID`. The gateway must remove every one.
const FORGED_IDENTITY_NAMES: [&str; 8] = [
    "x_portcullis_app_id",
    "X_PORTCULLIS_APP_ID",
    "X_Portcullis_Scopes",
    "x-portcullis_app-id",
    "x_portcullis-request_id",
    "X-PORTCULLIS_scopes",
    "x.portcullis.app.id",
    "x_portcullis_",
];

/// Request trailers follow the rule of the request head: over HTTP/2 to an
/// HTTP/2 upstream, which forwards trailers, identity names in every
/// spelling are removed and other trailers pass.
#[tokio::test]
async fn identity_trailers_are_stripped() {
    let h = start_with_records_over_http2().await;
    let token = h.token("records", &["records:write"]);

    let tls = connect(&h, b"h2", false).await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });

    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    trailers.insert("x-portcullis-app-id", "admin".parse().unwrap());
    for name in FORGED_IDENTITY_NAMES {
        let name = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).unwrap();
        trailers.append(name, "admin".parse().unwrap());
    }
    let body = http_body_util::BodyExt::with_trailers(
        http_body_util::Full::new(bytes::Bytes::from_static(b"record")),
        Box::pin(async move { Some(Ok::<_, std::convert::Infallible>(trailers)) }),
    );
    let request = http::Request::post(format!("https://localhost:{}/records/v1/x", h.port()))
        .header("authorization", format!("Bearer {token}"))
        .body(body)
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    driver.abort();

    let seen = h.upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, http::Version::HTTP_2);
    assert_eq!(seen[0].body, "record");
    let received = seen[0].trailers.clone().unwrap_or_default();
    assert_eq!(received.get("x-checksum").map(|v| v.as_bytes()), Some(b"abc".as_slice()));
    assert!(received.get("x-portcullis-app-id").is_none(), "{received:?}");
    for name in FORGED_IDENTITY_NAMES {
        assert!(received.get(name.to_ascii_lowercase()).is_none(), "trailer {name} forwarded");
    }
}

/// Starts the example platform with `upstream_http2 = true` for the
/// records service only.
async fn start_with_records_over_http2() -> Harness {
    Harness::start(|config| {
        let records = config.services.iter_mut().find(|service| service.name == "records").unwrap();
        records.upstream_http2 = true;
    })
    .await
}

/// A service with `upstream_http2 = true` is reached over HTTP/2, the
/// others over HTTP/1.1, from the same gateway.
#[tokio::test]
async fn upstream_protocol_follows_service_setting() {
    let h = start_with_records_over_http2().await;

    let weather = h.token("weather", &["weather:read"]);
    let records = h.token("records", &["records:read"]);
    assert_eq!(h.get("/weather/v1/today", &weather).await, 200);
    assert_eq!(h.get("/records/v1/list", &records).await, 200);

    let versions: Vec<(String, http::Version)> =
        h.upstream.seen().into_iter().map(|seen| (seen.target, seen.version)).collect();
    assert_eq!(
        versions,
        [
            ("/weather/v1/today".to_owned(), http::Version::HTTP_11),
            ("/records/v1/list".to_owned(), http::Version::HTTP_2)
        ]
    );
}

/// Requests that arrive one after another on one app connection share one
/// upstream connection, over HTTP/1.1 (in origin form, with `Host` naming
/// the upstream) and over HTTP/2. An upstream response with
/// `Connection: close` retires its connection, and the next request opens
/// a new one.
#[tokio::test]
async fn upstream_connections_are_pooled() {
    let h = start_with_records_over_http2().await;
    let weather = h.token("weather", &["weather:read"]);
    let records = h.token("records", &["records:read"]);
    let upstream_host = format!("127.0.0.1:{}", h.upstream.address.port());

    // (target, token, upstream connections expected, version expected)
    // The closing case runs first, so no pooled connection of another case
    // is there to take its first request.
    let cases = [
        ("/weather/v1/close/today", &weather, 6, http::Version::HTTP_11),
        ("/weather/v1/today", &weather, 1, http::Version::HTTP_11),
        ("/records/v1/list", &records, 1, http::Version::HTTP_2),
    ];
    for (target, token, connections, version) in cases {
        h.upstream.clear();
        let before = h.upstream.connections.load(std::sync::atomic::Ordering::SeqCst);
        let mut bytes = Vec::new();
        for _ in 0..5 {
            let keep_alive =
                format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");
            bytes.extend_from_slice(keep_alive.as_bytes());
        }
        bytes.extend_from_slice(&request("GET", target, token, ""));

        let received = h.raw(&bytes, WAIT).await;
        assert_eq!(statuses(&received), [200; 6], "{target}: {received}");
        let after = h.upstream.connections.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(after - before, connections, "{target}");
        let seen = h.upstream.seen();
        assert_eq!(seen.len(), 6, "{target}");
        for request in seen {
            assert_eq!(request.target, target);
            assert_eq!(request.version, version, "{target}");
            if version == http::Version::HTTP_11 {
                assert_eq!(request.headers.get_all("host").iter().collect::<Vec<_>>(), [upstream_host.as_str()]);
            }
        }
    }
}

#[tokio::test]
async fn token_failures_are_refused_with_reason() {
    let mut h = Harness::start(|_| {}).await;
    let other = h.platform.issue(CertificateKind::App, "app-b", &[]).await;
    h.cache.refresh(&h.platform.store).await.unwrap();

    let expired = h.token_for(&h.app, APP, "weather", &["weather:read"], now() - 3600);
    let other_certificate = h.token_for(&other, APP, "weather", &["weather:read"], now());
    let other_app = h.token_for(&h.app, "app-b", "weather", &["weather:read"], now());
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        ("missing", String::new(), 401, "missing_token", "exactly one Authorization: Bearer header is required"),
        ("expired", expired, 401, "invalid_token", "the token has expired"),
        (
            "wrong audience",
            h.token("records", &["weather:read"]),
            401,
            "invalid_token",
            "the token was issued for another service",
        ),
        (
            "other certificate",
            other_certificate,
            401,
            "invalid_token",
            "the token is bound to another client certificate",
        ),
        (
            "other app",
            other_app,
            401,
            "invalid_token",
            "the token was issued to another app than the client certificate's",
        ),
        ("garbage", "not.a.token".to_owned(), 401, "invalid_token", "the token is not a well-formed signed JWT"),
        (
            "missing scope",
            h.token("weather", &[]),
            403,
            "insufficient_scope",
            "the token lacks the scope this route requires",
        ),
    ];
    for (name, token, status, error, description) in &cases {
        let bytes = if token.is_empty() {
            b"GET /weather/v1/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_vec()
        } else {
            request("GET", "/weather/v1/x", token, "")
        };
        let received = h.raw(&bytes, WAIT).await;
        assert_eq!(status_of(&received), *status, "{name}: {received}");
        let body: serde_json::Value = serde_json::from_str(body_of(&received)).unwrap();
        assert_eq!(body["error"], *error, "{name}");
        assert_eq!(body["error_description"], *description, "{name}");
        assert_eq!(body["request_id"].as_str().unwrap().len(), 32, "{name}");
    }

    // records:read does not grant records:write on the POST route.
    let read_only = h.token("records", &["records:read"]);
    let received = h.raw(&request("POST", "/records/v1/x", &read_only, "Content-Length: 0\r\n"), WAIT).await;
    assert_eq!(status_of(&received), 403, "{received}");
    assert!(h.upstream.seen().is_empty(), "{:?}", h.upstream.seen());
    assert_eq!(h.guard_events().len(), cases.len() + 1);
}

#[tokio::test]
async fn routes_methods_and_longest_prefix() {
    let h = Harness::start(|config| {
        let mut narrow = config.services[1].routes[0].clone();
        narrow.prefix = "/weather/v1/admin/".into();
        narrow.scope = "records:read".into();
        narrow.methods = vec!["GET".into()];
        config.services[1].routes.push(narrow);
    })
    .await;
    let weather = h.token("weather", &["weather:read"]);
    let records = h.token("records", &["records:read"]);

    assert_eq!(h.get("/weather/v1/admin/x", &weather).await, 401, "longest prefix routes to records");
    assert_eq!(h.get("/weather/v1/admin/x", &records).await, 200);
    assert_eq!(h.get("/weather/v2/x", &weather).await, 404);
    assert_eq!(h.get("/weather/v1", &weather).await, 404);
    let received = h.raw(&request("DELETE", "/weather/v1/x", &weather, ""), WAIT).await;
    assert_eq!(status_of(&received), 404, "method filter: {received}");
}

/// Methods outside the standard set are rejected before routing, so `post`
/// cannot miss the POST-only route below and fall through to the route for
/// every method, which a read-only token passes.
#[tokio::test]
async fn nonstandard_methods_are_rejected() {
    let mut h = Harness::start(|config| {
        let records = config.services.iter_mut().find(|service| service.name == "records").unwrap();
        let mut admin = records.routes[1].clone();
        admin.prefix = "/records/v1/admin/".into();
        admin.methods = vec!["POST".into()];
        records.routes.push(admin);
        let mut any = records.routes[0].clone();
        any.prefix = "/records/v1/".into();
        any.methods = Vec::new();
        records.routes.retain(|route| route.prefix != "/records/v1/");
        records.routes.push(any);
    })
    .await;
    let read_only = h.token("records", &["records:read"]);

    let methods = ["post", "Post", "pOST", "get", "Get", "GET.", "GET_", "PROPFIND"];
    for method in methods {
        let received = h.raw(&request(method, "/records/v1/admin/x", &read_only, "Content-Length: 0\r\n"), WAIT).await;
        assert_eq!(status_of(&received), 400, "{method}: {received}");
        let body: serde_json::Value = serde_json::from_str(body_of(&received)).unwrap();
        assert_eq!(body["error"], "invalid_method", "{method}");
        assert_eq!(body["request_id"].as_str().map(str::len), Some(32), "{method}");
    }
    assert!(h.upstream.seen().is_empty(), "{:?}", h.upstream.seen());

    // The same method in upper case reaches the POST-only route and its scope.
    let received = h.raw(&request("POST", "/records/v1/admin/x", &read_only, "Content-Length: 0\r\n"), WAIT).await;
    assert_eq!(status_of(&received), 403, "{received}");

    let log = h.access_log().await;
    assert_eq!(log.len(), methods.len() + 1, "{log:?}");
    for (event, method) in log.iter().zip(methods) {
        assert_eq!(event["method"], method);
        assert_eq!(event["status"], 400, "{method}");
        assert_eq!(event["reason"], "invalid_method", "{method}");
    }
}

/// An absolute-form target is accepted only with an authority that names
/// the gateway: `localhost`, `gateway.<trust domain>` or the address the
/// connection arrived on, with the listener's port if a port is given, or
/// a name added with `Gateway::with_server_names`. The Host header must
/// repeat the authority in every case.
#[tokio::test]
async fn absolute_form_must_name_gateway() {
    let h =
        Harness::start_built(None, |_| {}, |gateway| gateway.with_server_names(["API.Gateway.test"]).unwrap()).await;
    let token = h.token("weather", &["weather:read"]);
    let port = h.port();
    let upstream_port = h.upstream.address.port();

    let cases = [
        ("localhost".to_owned(), 200),
        (format!("localhost:{port}"), 200),
        (format!("LocalHost:{port}"), 200),
        ("gateway.weather.example".to_owned(), 200),
        (format!("127.0.0.1:{port}"), 200),
        ("127.0.0.1".to_owned(), 200),
        ("api.gateway.test".to_owned(), 200),
        (format!("api.gateway.test:{port}"), 200),
        ("gateway.test".to_owned(), 400),
        ("evil.example".to_owned(), 400),
        (format!("evil.example:{port}"), 400),
        ("localhost.evil.example".to_owned(), 400),
        ("weather.example".to_owned(), 400),
        ("records.weather.example".to_owned(), 400),
        (format!("127.0.0.1:{upstream_port}"), 400),
        (format!("localhost:{upstream_port}"), 400),
        ("127.0.0.2".to_owned(), 400),
        ("[::1]".to_owned(), 400),
        ("app-a@localhost".to_owned(), 400),
    ];
    for (authority, status) in &cases {
        let bytes = format!(
            "GET https://{authority}/weather/v1/x HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        let received = h.raw(bytes.as_bytes(), WAIT).await;
        assert_eq!(status_of(&received), *status, "{authority}: {received}");
        if *status == 400 {
            assert!(body_of(&received).contains("\"error\":\"invalid_request\""), "{authority}: {received}");
        }
    }

    let accepted = cases.iter().filter(|(_, status)| *status == 200).count();
    assert_eq!(h.upstream.seen().len(), accepted);
    for seen in h.upstream.seen() {
        assert_eq!(seen.target, "/weather/v1/x");
    }
}

#[tokio::test]
async fn ban_and_throttle_from_the_guard() {
    let h = Harness::start(|_| {}).await;
    let token = h.token("weather", &["weather:read"]);

    h.decide(APP, DecisionKind::Ban);
    let received = h.raw(&request("GET", "/weather/v1/x", &token, ""), WAIT).await;
    assert_eq!(status_of(&received), 403);
    assert!(body_of(&received).contains("\"error\":\"banned\""), "{received}");

    h.decide(APP, DecisionKind::Throttle { per_second: 1.0 });
    assert_eq!(h.get("/weather/v1/x", &token).await, 200);
    let received = h.raw(&request("GET", "/weather/v1/x", &token, ""), WAIT).await;
    assert_eq!(status_of(&received), 429, "{received}");
    assert!(received.to_ascii_lowercase().contains("retry-after: 1\r\n"), "{received}");
    assert_eq!(h.upstream.seen().len(), 1);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let h = Harness::start(|config| {
        config.gateway.rate_per_second = 0.2;
        config.gateway.rate_burst = 2;
    })
    .await;
    let token = h.token("weather", &["weather:read"]);
    assert_eq!(h.get("/weather/v1/x", &token).await, 200);
    assert_eq!(h.get("/weather/v1/x", &token).await, 200);
    let received = h.raw(&request("GET", "/weather/v1/x", &token, ""), WAIT).await;
    assert_eq!(status_of(&received), 429);
    assert!(received.to_ascii_lowercase().contains("retry-after: 5\r\n"), "{received}");
    assert!(body_of(&received).contains("rate_limited"));
    assert_eq!(h.upstream.seen().len(), 2);
}

#[tokio::test]
async fn service_rate_overrides_gateway_rate() {
    let h = Harness::start(|config| {
        config.gateway.rate_per_second = 0.2;
        config.gateway.rate_burst = 3;
        let records = config.services.iter_mut().find(|service| service.name == "records").unwrap();
        records.rate_burst = Some(1);
    })
    .await;
    let weather = h.token("weather", &["weather:read"]);
    let records = h.token("records", &["records:read"]);

    assert_eq!(h.get("/records/v1/x", &records).await, 200);
    let received = h.raw(&request("GET", "/records/v1/x", &records, ""), WAIT).await;
    assert_eq!(status_of(&received), 429, "records allows a burst of 1: {received}");
    assert!(received.to_ascii_lowercase().contains("retry-after: 5\r\n"), "{received}");
    for attempt in 1..=3 {
        assert_eq!(h.get("/weather/v1/x", &weather).await, 200, "weather request {attempt} of the default burst");
    }
    assert_eq!(h.get("/weather/v1/x", &weather).await, 429);
}

/// Returns the targets the upstream saw whose path ends with one of `names`.
fn seen_ending(h: &Harness, names: &[&str]) -> Vec<String> {
    let seen = h.upstream.seen();
    seen.iter().map(|s| s.target.clone()).filter(|target| names.iter().any(|name| target.ends_with(name))).collect()
}

#[tokio::test]
async fn body_limits_for_length_and_chunked() {
    let h = Harness::start(|config| config.gateway.max_body_bytes = 10).await;
    let token = h.token("records", &["records:write"]);

    let received = h.raw(&request("POST", "/records/v1/declared", &token, "Content-Length: 11\r\n"), WAIT).await;
    assert_eq!(status_of(&received), 413, "{received}");

    let mut chunked = request("POST", "/records/v1/chunked", &token, "Transfer-Encoding: chunked\r\n");
    chunked.extend_from_slice(b"6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n");
    let received = h.raw(&chunked, WAIT).await;
    assert_eq!(status_of(&received), 413, "{received}");
    assert!(body_of(&received).contains("\"error\":\"body_too_large\""), "{received}");

    // Exactly the limit, in three chunks: read whole, then forwarded with
    // the length it turned out to have.
    let mut small = request("POST", "/records/v1/small", &token, "Transfer-Encoding: chunked\r\n");
    small.extend_from_slice(b"4\r\nabcd\r\n4\r\nefgh\r\n2\r\nij\r\n0\r\n\r\n");
    let received = h.raw(&small, WAIT).await;
    assert_eq!(status_of(&received), 200, "{received}");

    assert_eq!(
        seen_ending(&h, &["/declared", "/chunked", "/small"]),
        ["/records/v1/small"],
        "refused bodies never go upstream"
    );
    let seen = h.upstream.seen();
    let forwarded = seen.iter().find(|s| s.target.ends_with("/small")).unwrap();
    assert_eq!(forwarded.body, "abcdefghij");
    assert_eq!(forwarded.headers.get("content-length").unwrap(), "10");
    assert_eq!(forwarded.headers.get("transfer-encoding"), None);
}

/// A chunked body's trailers reach an HTTP/1.1 upstream when `Trailer`
/// announces them. `Trailer` then names only the trailers that pass, and
/// an identity trailer is removed even when announced.
#[tokio::test]
async fn announced_trailers_reach_an_http1_upstream() {
    let h = Harness::start(|_| {}).await;
    let token = h.token("records", &["records:write"]);
    let announce = "Transfer-Encoding: chunked\r\nTrailer: x-checksum, x-portcullis-app-id\r\n";
    let mut sent = request("POST", "/records/v1/trailers", &token, announce);
    sent.extend_from_slice(b"5\r\nhello\r\n0\r\nx-checksum: abc\r\nx-portcullis-app-id: admin\r\n\r\n");
    let received = h.raw(&sent, WAIT).await;
    assert_eq!(status_of(&received), 200, "{received}");

    let seen = h.upstream.seen();
    let forwarded = seen.iter().find(|s| s.target.ends_with("/trailers")).unwrap();
    assert_eq!(forwarded.body, "hello");
    assert_eq!(forwarded.headers.get("trailer").unwrap(), "x-checksum");
    assert_eq!(forwarded.headers.get("transfer-encoding").unwrap(), "chunked", "trailers need chunked framing");
    let trailers = forwarded.trailers.as_ref().expect("trailers arrived");
    assert_eq!(trailers.get("x-checksum").unwrap(), "abc");
    assert_eq!(trailers.get("x-portcullis-app-id"), None);
}

/// With request buffering off, a chunked body streams upstream chunked,
/// and one over the limit still gets 413.
#[tokio::test]
async fn chunked_body_streams_without_request_buffering() {
    let h = Harness::start(|config| {
        config.gateway.max_body_bytes = 10;
        config.gateway.request_buffering = false;
    })
    .await;
    let token = h.token("records", &["records:write"]);

    let mut small = request("POST", "/records/v1/streamed", &token, "Transfer-Encoding: chunked\r\n");
    small.extend_from_slice(b"4\r\nabcd\r\n0\r\n\r\n");
    let received = h.raw(&small, WAIT).await;
    assert_eq!(status_of(&received), 200, "{received}");
    let seen = h.upstream.seen();
    let streamed = seen.iter().find(|s| s.target.ends_with("/streamed")).unwrap();
    assert_eq!(streamed.body, "abcd");
    assert_eq!(streamed.headers.get("transfer-encoding").unwrap(), "chunked");
    assert_eq!(streamed.headers.get("content-length"), None);

    let mut big = request("POST", "/records/v1/big", &token, "Transfer-Encoding: chunked\r\n");
    big.extend_from_slice(b"6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n");
    let received = h.raw(&big, WAIT).await;
    assert_eq!(status_of(&received), 413, "{received}");
}

/// Bodies read whole count against the app's buffer budget while they wait:
/// a second body that does not fit gets 429 until the first has gone.
#[tokio::test]
async fn buffered_bodies_share_the_app_budget() {
    let h = Harness::start(|config| {
        config.gateway.max_body_bytes = 10;
        config.gateway.max_buffered_bytes_per_app = 10;
    })
    .await;
    let token = h.token("records", &["records:write"]);

    let mut second = request("POST", "/records/v1/second", &token, "Transfer-Encoding: chunked\r\n");
    second.extend_from_slice(b"4\r\nabcd\r\n0\r\n\r\n");

    // The first body sends 8 bytes and waits. Once the gateway has read
    // them, a 4-byte body no longer fits. A second body that the gateway
    // takes in before those 8 bytes gets 200 and may make the first one
    // the body that gets 429 instead, so each attempt starts afresh.
    let mut rejected = None;
    let mut first = None;
    for _ in 0..10 {
        let mut waiting = connect(&h, b"http/1.1", false).await;
        let mut head = request("POST", "/records/v1/first", &token, "Transfer-Encoding: chunked\r\n");
        head.extend_from_slice(b"8\r\n01234567\r\n");
        waiting.write_all(&head).await.unwrap();
        waiting.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;

        let received = h.raw(&second, WAIT).await;
        if status_of(&received) == 429 {
            rejected = Some(received);
            first = Some(waiting);
            break;
        }
        assert_eq!(status_of(&received), 200, "{received}");
    }
    let mut first = first.expect("the first body stays buffered");
    let rejected = rejected.expect("a body over the app's remaining budget gets 429");
    assert!(body_of(&rejected).contains("\"error\":\"request_buffer_full\""), "{rejected}");
    assert!(rejected.to_ascii_lowercase().contains("retry-after: 1\r\n"), "{rejected}");

    // The first body completes, goes upstream and frees its share.
    first.write_all(b"2\r\n89\r\n0\r\n\r\n").await.unwrap();
    first.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, first.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = h.upstream.seen();
    assert_eq!(seen.iter().find(|s| s.target.ends_with("/first")).unwrap().body, "0123456789");

    let received = h.raw(&second, WAIT).await;
    assert_eq!(status_of(&received), 200, "the budget is free again: {received}");
}

/// A request body of data frames with no size hint, so that the client
/// sends no content-length.
struct Chunks(std::collections::VecDeque<bytes::Bytes>);

impl http_body::Body for Chunks {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|chunk| Ok(http_body::Frame::data(chunk))))
    }
}

/// An HTTP/2 request body without content-length is read whole as well.
#[tokio::test]
async fn http2_body_without_length_is_buffered() {
    let h = Harness::start(|config| config.gateway.max_body_bytes = 10).await;
    let token = h.token("records", &["records:write"]);
    let tls = connect(&h, b"h2", false).await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });

    for (name, chunks, status) in [("/h2-small", ["abcde", "fghij"], 200), ("/h2-big", ["abcdef", "ghijkl"], 413)] {
        let body = Chunks(chunks.iter().map(|chunk| bytes::Bytes::from(*chunk)).collect());
        let request = http::Request::post(format!("https://localhost:{}/records/v1{name}", h.port()))
            .header("authorization", format!("Bearer {token}"))
            .body(body)
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), status, "{name}");
    }

    assert_eq!(seen_ending(&h, &["/h2-small", "/h2-big"]), ["/records/v1/h2-small"]);
    let seen = h.upstream.seen();
    let forwarded = seen.iter().find(|s| s.target.ends_with("/h2-small")).unwrap();
    assert_eq!(forwarded.body, "abcdefghij");
    assert_eq!(forwarded.headers.get("content-length").unwrap(), "10");
    driver.abort();
}

#[tokio::test]
async fn header_limits_and_timeouts() {
    let mut h = Harness::start(|config| {
        config.gateway.max_header_bytes = 2048;
        config.gateway.header_read_timeout = Duration::from_millis(500);
        config.gateway.upstream_timeout = Duration::from_secs(1);
    })
    .await;
    let token = h.token("weather", &["weather:read"]);

    let big = format!("X-Big: {}\r\n", "a".repeat(3000));
    let received = h.raw(&request("GET", "/weather/v1/x", &token, &big), WAIT).await;
    assert_eq!(status_of(&received), 431, "handler check below hyper's buffer: {received}");
    let huge = format!("X-Big: {}\r\n", "a".repeat(20000));
    let received = h.raw(&request("GET", "/weather/v1/x", &token, &huge), WAIT).await;
    assert_eq!(status_of(&received), 431, "a head longer than hyper's buffer: {received}");
    assert!(body_of(&received).contains("\"error\":\"headers_too_large\""), "{received}");
    assert!(received.contains("x-portcullis-request-id: "), "{received}");

    let received = h.raw(b"GET /weather/v1/x HTTP/1.1\r\nHost: loc", WAIT).await;
    assert_eq!(status_of(&received), 408, "{received}");
    assert!(received.contains("x-portcullis-request-id: "), "{received}");

    // An idle keep-alive connection also ends with 408, but it carried no
    // request, so it records no access event.
    let received = h.raw(b"", WAIT).await;
    assert_eq!(status_of(&received), 408, "{received}");

    let received = h.raw(&request("GET", "/weather/v1/slow/x", &token, ""), WAIT).await;
    assert_eq!(status_of(&received), 504, "{received}");
    assert!(!body_of(&received).contains("127.0.0.1"), "{received}");

    let log = h.access_log().await;
    let outcomes: Vec<(u64, Option<&str>)> =
        log.iter().map(|event| (event["status"].as_u64().unwrap(), event["reason"].as_str())).collect();
    assert_eq!(
        outcomes,
        [
            (431, Some("headers_too_large")),
            (431, Some("headers_too_large")),
            (408, Some("request_timeout")),
            (504, Some("upstream_timeout")),
        ]
    );
}

#[tokio::test]
async fn stalled_and_broken_bodies_are_client_errors() {
    let mut h = Harness::start(|config| config.gateway.upstream_timeout = Duration::from_millis(800)).await;
    let token = h.token("records", &["records:read", "records:write"]);

    // 10 of 100 announced bytes, then nothing: the app stalls, not the
    // upstream, which waits for the rest.
    let mut stalled = request("POST", "/records/v1/stalled", &token, "Content-Length: 100\r\n");
    stalled.extend_from_slice(b"0123456789");
    let received = h.raw(&stalled, WAIT).await;
    assert_eq!(status_of(&received), 408, "{received}");
    assert!(body_of(&received).contains("\"error\":\"request_body_timeout\""), "{received}");

    // A chunked body with a malformed second chunk size.
    let mut broken = request("POST", "/records/v1/broken", &token, "Transfer-Encoding: chunked\r\n");
    broken.extend_from_slice(b"5\r\nhello\r\nzz\r\n");
    let received = h.raw(&broken, WAIT).await;
    assert_eq!(status_of(&received), 400, "{received}");
    assert!(body_of(&received).contains("\"error\":\"invalid_request_body\""), "{received}");

    // Half a chunked body, then the app closes the connection: the app
    // went away, which is not a malformed body.
    let mut cut = request("POST", "/records/v1/cut", &token, "Transfer-Encoding: chunked\r\n");
    cut.extend_from_slice(b"a\r\n01234");
    let mut tls = connect(&h, b"http/1.1", false).await;
    tls.write_all(&cut).await.unwrap();
    tls.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut rest)).await;
    drop(tls);

    let log = h.access_log().await;
    let outcomes: Vec<(u64, Option<&str>)> =
        log.iter().map(|event| (event["status"].as_u64().unwrap(), event["reason"].as_str())).collect();
    assert_eq!(
        outcomes,
        [(408, Some("request_body_timeout")), (400, Some("invalid_request_body")), (499, Some("client_closed"))]
    );
}

/// An HTTP/2 connection that carries requests stays open, and one on which
/// nothing moves is shut down after one to two idle timeouts.
#[tokio::test]
async fn idle_http2_connection_is_closed() {
    let h = Harness::start(|config| config.gateway.idle_timeout = Duration::from_secs(1)).await;
    let token = h.token("weather", &["weather:read"]);
    let (mut sender, driver) = http2_client(&h).await;
    let request = || {
        http::Request::get(format!("https://localhost:{}/weather/v1/x", h.port()))
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::new())
            .unwrap()
    };

    // A request every 300 ms for 2.5 s: the connection stays open.
    let busy = std::time::Instant::now();
    while busy.elapsed() < Duration::from_millis(2500) {
        let response = sender.send_request(request()).await.expect("the busy connection stays open");
        assert_eq!(response.status(), 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!driver.is_finished(), "a busy connection was closed");

    // Then nothing: the gateway ends the connection within two timeouts.
    let idle = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(4), driver).await.expect("the idle connection was not closed").unwrap();
    let after = idle.elapsed();
    assert!(after >= Duration::from_millis(900), "closed after {after:?}, before the idle timeout");
    assert!(after < Duration::from_millis(2500), "closed after {after:?}");
}

#[tokio::test]
async fn unreachable_upstream_is_502_without_detail() {
    let h = Harness::start(|config| config.services[0].upstream = "https://127.0.0.1:1".into()).await;
    let token = h.token("weather", &["weather:read"]);
    let received = h.raw(&request("GET", "/weather/v1/x", &token, ""), WAIT).await;
    assert_eq!(status_of(&received), 502, "{received}");
    let body: serde_json::Value = serde_json::from_str(body_of(&received)).unwrap();
    assert_eq!(body["error"], "upstream_unreachable");
    assert_eq!(body["error_description"], "the service is unreachable");
    assert_eq!(body.as_object().unwrap().len(), 3);
}

/// An app that resets its HTTP/2 stream, or closes its HTTP/2 connection,
/// while the upstream works on the request gets exactly one access event.
/// It has status 499 and reason `client_closed`, although no response was
/// sent. The recorder delays its response to `/slow/` requests by 3 s.
#[tokio::test]
async fn client_gone_before_response_is_recorded() {
    for close_connection in [false, true] {
        let mut h = Harness::start(|_| {}).await;
        let token = h.token("weather", &["weather:read"]);
        let (sender, driver) = http2_client(&h).await;

        let request = http::Request::get(format!("https://localhost:{}/weather/v1/slow/gone", h.port()))
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let mut stream_sender = sender.clone();
        let stream = tokio::spawn(async move { stream_sender.send_request(request).await.is_ok() });

        let deadline = std::time::Instant::now() + WAIT;
        while h.upstream.seen().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the upstream never received the request");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // Aborting the task drops the response future, which resets the
        // stream. Aborting the driver as well closes the connection.
        stream.abort();
        if close_connection {
            driver.abort();
            drop(sender);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;

        let events = h.guard_events();
        assert_eq!(events.len(), 1, "close_connection {close_connection}: {events:?}");
        let GuardEvent::Access { status, .. } = &events[0] else { panic!("{events:?}") };
        assert_eq!(*status, 499, "close_connection {close_connection}");

        let log = h.access_log().await;
        assert_eq!(log.len(), 1, "close_connection {close_connection}: {log:?}");
        assert_eq!(log[0]["status"], 499, "close_connection {close_connection}");
        assert_eq!(log[0]["reason"], "client_closed", "close_connection {close_connection}");
        assert_eq!(log[0]["path"], "/weather/v1/slow/gone", "close_connection {close_connection}");
        assert_eq!(log[0]["service"], "weather", "close_connection {close_connection}");
        assert_eq!(log[0]["bytes_out"], 0, "close_connection {close_connection}");
        driver.abort();
    }
}

#[tokio::test]
async fn reload_swaps_routes_without_restart() {
    let h = Harness::start(|_| {}).await;
    let token = h.token("weather", &["weather:read"]);
    assert_eq!(h.get("/weather/v2/x", &token).await, 404);

    let mut config = h.config.clone();
    config.services[0].routes[0].prefix = "/weather/v2/".into();
    h.gateway.as_ref().unwrap().reload(&config).unwrap();
    assert_eq!(h.get("/weather/v2/x", &token).await, 200);
    assert_eq!(h.get("/weather/v1/x", &token).await, 404);
}

/// Opens an HTTP/1.1 connection over TLS with `leaf`, sends `request` and
/// checks that it gets 200, and returns the open connection.
async fn open_http1(
    h: &Harness,
    leaf: &portcullis_identity::IssuedLeaf,
    request: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certificate = portcullis_identity::RenewingCertificate::new(leaf).unwrap();
    let config = portcullis_identity::policy::client_config(h.platform.ca.root(), certificate, &[b"http/1.1"]).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", h.port())).await.unwrap();
    let mut tls = connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = vec![0u8; 4096];
    let n = tls.read(&mut buffer).await.unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&buffer[..n])), 200);
    tls
}

/// Sends `request` on `tls` and returns what arrives until the gateway
/// closes the connection, or [`WAIT`] passes.
async fn send_and_read_to_end(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    request: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut rest = String::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_string(&mut rest)).await;
    rest
}

#[tokio::test]
async fn revocation_cuts_an_open_connection() {
    let h = Harness::start(|_| {}).await;
    let token = h.token("weather", &["weather:read"]);
    let first = format!("GET /weather/v1/a HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");

    // One connection: a request, then revocation, then a second request.
    let mut tls = open_http1(&h, &h.app, &first).await;
    h.platform.store.revoke_certificate(h.app.serial(), "test", now() * 1000).await.unwrap();
    h.cache.refresh(&h.platform.store).await.unwrap();
    let rest = send_and_read_to_end(&mut tls, &first).await;
    assert_eq!(status_of(&rest), 403, "{rest}");
    assert!(rest.contains("certificate_revoked"), "{rest}");
    assert_eq!(h.upstream.seen().len(), 1);
}

#[tokio::test]
async fn expired_pin_cuts_an_open_connection() {
    let h = Harness::start(|_| {}).await;
    // A second certificate of the test app that expires 2 s from now.
    let identity = SpiffeId::new(h.platform.ca.trust_domain(), CertificateKind::App, APP).unwrap();
    let lifetimes = portcullis_identity::Lifetimes { app: Duration::from_secs(2), ..Default::default() };
    let short =
        h.platform.ca.issue_and_record(&h.platform.store, &LeafRequest::new(identity, &lifetimes)).await.unwrap();
    h.cache.refresh(&h.platform.store).await.unwrap();
    let token = h.token_for(&short, APP, "weather", &["weather:read"], now());
    let request = format!("GET /weather/v1/a HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");

    let mut tls = open_http1(&h, &short, &request).await;

    // Past the certificate's expiry, the reloaded pins no longer list it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    h.cache.refresh(&h.platform.store).await.unwrap();
    let rest = send_and_read_to_end(&mut tls, &request).await;
    assert_eq!(status_of(&rest), 403, "{rest}");
    assert!(rest.contains("certificate_not_pinned"), "{rest}");
    assert_eq!(h.upstream.seen().len(), 1);
}

#[tokio::test]
async fn non_app_certificate_is_refused() {
    let h = Harness::start(|_| {}).await;
    let service = h.platform.issue(CertificateKind::Service, "records", &[]).await;
    h.cache.refresh(&h.platform.store).await.unwrap();
    let request = b"GET /weather/v1/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let received = raw_exchange(h.port(), &h.platform, &service, request, WAIT).await;
    assert_eq!(received, "", "a service identity got a response");
    assert!(h.upstream.seen().is_empty());
}

#[tokio::test]
async fn shutdown_drains_requests_in_flight() {
    let mut h = Harness::start(|_| {}).await;
    let token = h.token("weather", &["weather:read"]);
    let port = h.port();
    let app = h.app.clone();
    let platform_root = h.platform.ca.root().clone();
    let in_flight = tokio::spawn({
        let bytes = request("GET", "/weather/v1/slow/x", &token, "");
        async move {
            let certificate = portcullis_identity::RenewingCertificate::new(&app).unwrap();
            let config =
                portcullis_identity::policy::client_config(&platform_root, certificate, &[b"http/1.1"]).unwrap();
            let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let mut tls =
                connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            tls.write_all(&bytes).await.unwrap();
            let mut received = String::new();
            let _ = tls.read_to_string(&mut received).await;
            received
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let gateway = h.gateway.take().unwrap();
    let outcome = gateway.shutdown(Duration::from_secs(10)).await;
    assert_eq!(outcome, portcullis_gateway::ShutdownOutcome::Drained);
    let received = in_flight.await.unwrap();
    assert_eq!(status_of(&received), 200, "{received}");
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(refused.is_err(), "still accepting after shutdown");
    let log = h.access_log().await;
    assert_eq!(log.len(), 1);
}

/// An app may hold `gateway.max_connections_per_app` connections. One more,
/// over HTTP/1.1 or HTTP/2, gets 429 `too_many_connections` to its first
/// request, is closed, and reaches no upstream. Closing a counted
/// connection frees its place.
#[tokio::test]
async fn connections_per_app_are_limited() {
    let mut h = Harness::start(|config| config.gateway.max_connections_per_app = 2).await;
    let token = h.token("weather", &["weather:read"]);
    let keep_alive = format!("GET /weather/v1/a HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");
    let first = open_http1(&h, &h.app, &keep_alive).await;
    let _second = open_http1(&h, &h.app, &keep_alive).await;
    assert_eq!(h.upstream.seen().len(), 2);

    // HTTP/1.1: the third connection's first request is refused and the
    // connection ends, so the pipelined second request gets no response.
    let pipelined = format!("{keep_alive}{keep_alive}");
    let received = h.raw(pipelined.as_bytes(), WAIT).await;
    assert_eq!(statuses(&received), [429], "{received}");
    assert!(received.contains("\"error\":\"too_many_connections\""), "{received}");
    assert!(received.to_ascii_lowercase().contains("retry-after: 1\r\n"), "{received}");
    assert!(received.to_ascii_lowercase().contains("connection: close\r\n"), "{received}");

    // HTTP/2: the same refusal, then GOAWAY ends the connection.
    let (mut sender, driver) = http2_client(&h).await;
    let request = http::Request::get(format!("https://localhost:{}/weather/v1/b", h.port()))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 429);
    tokio::time::timeout(WAIT, driver).await.expect("the connection over the limit stays open").unwrap();
    assert_eq!(h.upstream.seen().len(), 2, "no refused request reached the upstream");

    // Closing a counted connection frees a place.
    drop(first);
    let mut freed = 0;
    for _ in 0..50 {
        freed = h.get("/weather/v1/c", &token).await;
        if freed == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(freed, 200, "a closed connection did not free its place");

    let log = h.access_log().await;
    let over_limit: Vec<_> = log.iter().filter(|event| event["reason"] == "too_many_connections").collect();
    assert_eq!(over_limit.len(), 2, "{log:?}");
    assert!(over_limit.iter().all(|event| event["status"] == 429), "{over_limit:?}");
}

/// A connection over the limit that sends no request is dropped after
/// `gateway.header_read_timeout`, so idle extra connections cannot pile up.
#[tokio::test]
async fn idle_connection_over_the_limit_is_dropped() {
    let h = Harness::start(|config| {
        config.gateway.max_connections_per_app = 1;
        config.gateway.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    let token = h.token("weather", &["weather:read"]);
    let keep_alive = format!("GET /weather/v1/a HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");
    let _counted = open_http1(&h, &h.app, &keep_alive).await;

    let (_sender, driver) = http2_client(&h).await;
    tokio::time::timeout(Duration::from_secs(3), driver)
        .await
        .expect("the idle extra connection was not dropped")
        .unwrap();
}

/// With an app directory, an app reaches only the services of its space.
/// Another service gets 403 `service_not_in_space`, and an app that leaves
/// the directory gets 403 `app_not_admitted` until it returns. A change of
/// the spaces applies to the next request. All run on one connection with
/// valid tokens. Nothing rejected reaches the upstream, and
/// `app_not_admitted` does not reach the guard.
#[tokio::test]
async fn app_reaches_only_its_space() {
    use portcullis_config::SpaceName;

    let directory = Arc::new(portcullis_gateway::AppServices::new());
    let mut h = Harness::start_built(None, |_| {}, {
        let directory = Arc::clone(&directory);
        move |gateway| gateway.with_app_services(directory)
    })
    .await;
    directory.set_spaces(&h.config.spaces);
    let in_space = |space| HashMap::from([(APP.to_owned(), space)]);
    directory.replace_apps(in_space(SpaceName::Sandbox));
    let weather = h.token("weather", &["weather:read"]);
    let records = h.token("records", &["records:read"]);
    let get = |path: &str, token: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n")
    };
    let mut tls = open_http1(&h, &h.app, &get("/weather/v1/a", &weather)).await;
    let mut no_weather = h.config.spaces.clone();
    no_weather.get_mut(&SpaceName::Sandbox).unwrap().services.clear();

    // (the app's space, if it changes first; the spaces, if they change
    // first; request, status, error code)
    let steps = [
        (None, None, get("/records/v1/b", &records), 403, "service_not_in_space"),
        (Some(HashMap::new()), None, get("/weather/v1/c", &weather), 403, "app_not_admitted"),
        (Some(in_space(SpaceName::Live)), None, get("/records/v1/d", &records), 200, ""),
        (Some(in_space(SpaceName::Sandbox)), None, get("/weather/v1/e", &weather), 200, ""),
        (None, Some(&no_weather), get("/weather/v1/f", &weather), 403, "service_not_in_space"),
        (None, Some(&h.config.spaces), get("/weather/v1/g", &weather), 200, ""),
    ];
    for (apps, spaces, request, status, code) in steps {
        if let Some(apps) = apps {
            directory.replace_apps(apps);
        }
        if let Some(spaces) = spaces {
            directory.set_spaces(spaces);
        }
        let received = exchange(&mut tls, &request).await;
        assert_eq!(status_of(&received), status, "{request}: {received}");
        assert!(received.contains(code), "{request}: {received}");
    }

    let seen: Vec<String> = h.upstream.seen().into_iter().map(|seen| seen.target).collect();
    assert_eq!(seen, ["/weather/v1/a", "/records/v1/d", "/weather/v1/e", "/weather/v1/g"]);
    let guard_statuses: Vec<u16> = h
        .guard_events()
        .into_iter()
        .filter_map(|event| match event {
            GuardEvent::Access { status, .. } => Some(status),
            _ => None,
        })
        .collect();
    assert_eq!(guard_statuses, [200, 403, 200, 200, 403, 200], "app_not_admitted is not sent to the guard");
    let log = h.access_log().await;
    let reasons: Vec<Option<&str>> = log.iter().map(|event| event["reason"].as_str()).collect();
    let expected =
        [None, Some("service_not_in_space"), Some("app_not_admitted"), None, None, Some("service_not_in_space"), None];
    assert_eq!(reasons, expected);
}

/// Sends one request on an open HTTP/1.1 connection and returns the
/// response, read until its body is complete.
async fn exchange(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let complete = |received: &[u8]| {
        let text = String::from_utf8_lossy(received);
        let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
        let length = head
            .lines()
            .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
            .and_then(|value| value.trim().parse::<usize>().ok());
        length.is_some_and(|length| body.len() >= length)
    };
    while !complete(&received) {
        let read = tokio::time::timeout(WAIT, tls.read(&mut chunk)).await.expect("the response is complete").unwrap();
        assert!(read > 0, "the connection closed: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8_lossy(&received).into_owned()
}
