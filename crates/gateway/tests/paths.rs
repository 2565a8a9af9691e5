//! Path spellings that try to reach the records service with a token that
//! is only good for weather. None may reach records; each gets its exact
//! status, and the upstream sees only what the plain spelling would reach.

mod common;

use common::*;

/// Target, expected status, and the one target the upstream must see
/// (`None`: the upstream sees nothing).
const CASES: &[(&str, u16, Option<&str>)] = &[
    ("/weather/v1/../../records/v1/x", 400, None),
    ("/weather/v1/./../../records/v1/x", 400, None),
    ("/weather/v1/%2e%2e/%2e%2e/records/v1/x", 400, None),
    ("/weather/v1/%2E%2E/%2E%2E/records/v1/x", 400, None),
    ("/weather/v1/.%2e/.%2E/records/v1/x", 400, None),
    ("/weather/v1/%2e/x", 400, None),
    ("/weather/v1/..%2f..%2frecords%2fv1%2fx", 400, None),
    ("/weather/v1/..%2F..%2Frecords%2Fv1%2Fx", 400, None),
    ("/weather%2fv1%2f..%2f..%2frecords/v1/x", 400, None),
    ("/records%2fv1/x", 400, None),
    ("/weather/v1/%252e%252e/%252e%252e/records/v1/x", 400, None),
    ("/weather/v1/%25252e%25252e/records/v1/x", 400, None),
    ("/weather/v1/%252f/records", 400, None),
    ("/weather/v1/..;/..;/records/v1/x", 400, None),
    ("/weather/v1;/../../records/v1/x", 400, None),
    ("/records/v1;jsessionid=1/x", 400, None),
    ("/records/v1/x;.css", 400, None),
    ("//records/v1/x", 400, None),
    ("/records//v1/x", 400, None),
    ("/weather/v1//../records/v1/x", 400, None),
    ("/weather/v1/..\\..\\records\\v1\\x", 400, None),
    ("/weather/v1/%5c..%5c..%5crecords%5cv1%5cx", 400, None),
    ("/weather/v1/%5C..%5C..%5Crecords", 400, None),
    ("/weather/v1/%c0%ae%c0%ae/%c0%ae%c0%ae/records/v1/x", 400, None),
    ("/weather/v1/%C0%AE%C0%AE/%C0%AE%C0%AE/records/v1/x", 400, None),
    ("/weather/v1/..%c0%af..%c0%afrecords/v1/x", 400, None),
    ("/weather/v1/%e0%80%ae%e0%80%ae/records/v1/x", 400, None),
    ("/weather/v1/%c1%9c../records", 400, None),
    ("/weather/v1/x/..", 400, None),
    ("/weather/v1/.../records/v1/x", 400, None),
    ("/weather/v1/%00/../records/v1/x", 400, None),
    ("/weather/v1/%0d%0aHost:%20records", 400, None),
    ("/weather/v1/%09/x", 400, None),
    ("/weather/v1/x%20/../records/v1/x", 400, None),
    ("/records./v1/x", 404, None),
    ("/records/v1./x", 404, None),
    ("/Records/v1/x", 404, None),
    ("/records/v1", 404, None),
    ("/weather/v1/x?/../../records/v1/x", 200, Some("/weather/v1/x?/../../records/v1/x")),
    ("/weather/v1/x?a=%2e%2e%2frecords", 200, Some("/weather/v1/x?a=%2e%2e%2frecords")),
    ("/weather/v1/%78", 200, Some("/weather/v1/x")),
    ("/records/v1/x", 401, None),
    ("/%72ecords/v1/x", 401, None),
    ("/records/v1/%2e%2e/x", 400, None),
    // Percent-encoded compatibility look-alikes of `.`, `/`, `\`, `%`, `;`,
    // `?` and `#`: an upstream that applies NFKC would read them as the
    // ASCII character.
    ("/weather/v1/%EF%BC%8E%EF%BC%8E/%EF%BC%8E%EF%BC%8E/records/v1/x", 400, None),
    ("/weather/v1/%ef%bc%8e%ef%bc%8e/x", 400, None),
    ("/weather/v1/..%EF%BC%8F..%EF%BC%8Frecords%EF%BC%8Fv1%EF%BC%8Fx", 400, None),
    ("/weather%EF%BC%8Fv1%EF%BC%8F..%EF%BC%8F..%EF%BC%8Frecords/v1/x", 400, None),
    ("/weather/v1/%EF%BC%BC..%EF%BC%BCrecords", 400, None),
    ("/weather/v1/%E2%80%A5/%E2%80%A5/records/v1/x", 400, None),
    ("/weather/v1/%E2%80%A4%E2%80%A4/records/v1/x", 400, None),
    ("/weather/v1/%E2%80%A6/records/v1/x", 400, None),
    ("/weather/v1/%EF%B9%92%EF%B9%92/records/v1/x", 400, None),
    ("/weather/v1/%EF%B9%A8..%EF%B9%A8records", 400, None),
    ("/weather/v1/%EF%BC%85%32%65%EF%BC%85%32%65/records", 400, None),
    ("/weather/v1/x%EF%BC%9Bjsessionid=1", 400, None),
    ("/weather/v1/x%EF%BC%9Fa=1", 400, None),
    ("/weather/v1/x%EF%BC%83fragment", 400, None),
    // Non-ASCII characters that NFKC does not turn into a structural
    // character stay escaped, and a look-alike of a letter routes nowhere.
    ("/weather/v1/%E2%81%84records", 200, Some("/weather/v1/%E2%81%84records")),
    ("/weather/v1/caf%c3%a9", 200, Some("/weather/v1/caf%C3%A9")),
    ("/%EF%BD%92ecords/v1/x", 404, None),
];

/// The HTTP version the table is sent with.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Http1,
    Http2,
}

/// Sends every case of [`CASES`] over `protocol` and returns a line for
/// each case whose status or upstream target differs from the table.
async fn table_failures(protocol: Protocol) -> Vec<String> {
    let h = Harness::start(|_| {}).await;
    let token = h.token("weather", &["weather:read"]);

    let mut failures = Vec::new();
    for (target, status, reaches) in CASES {
        h.upstream.clear();
        let got = match protocol {
            Protocol::Http1 => Ok(h.get(target, &token).await),
            Protocol::Http2 => get_over_http2(&h, target, &token).await,
        };
        let seen: Vec<String> = h.upstream.seen().into_iter().map(|s| s.target).collect();
        let expected_seen: Vec<String> = reaches.iter().map(|s| s.to_string()).collect();
        if got != Ok(*status) || seen != expected_seen {
            failures.push(format!(
                "{protocol:?} {target}: {got:?} (expected {status}), upstream saw {seen:?} (expected {expected_seen:?})"
            ));
        }
    }
    failures
}

/// Sends `GET target` with `token` over a new HTTP/2 connection, where the
/// target travels as the `:path` pseudo-header, and returns the status.
async fn get_over_http2(h: &Harness, target: &str, token: &str) -> Result<u16, String> {
    let (mut sender, driver) = http2_client(h).await;
    let request = http::Request::get(format!("https://localhost:{}{target}", h.port()))
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|error| format!("the client cannot build the request: {error}"))?;
    let sent = sender.send_request(request).await;
    driver.abort();
    sent.map(|response| response.status().as_u16()).map_err(|error| format!("no response: {error}"))
}

#[tokio::test]
async fn path_spellings_never_reach_records() {
    assert!(CASES.len() >= 30);
    let failures = table_failures(Protocol::Http1).await;
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

/// The path table over HTTP/2: every spelling gets the status it gets over
/// HTTP/1.1, and the upstream receives the same target.
#[tokio::test]
async fn path_spellings_over_http2() {
    let failures = table_failures(Protocol::Http2).await;
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

/// A fragment is not part of a request target (RFC 9112 section 3.2);
/// hyper drops it while parsing, so the request reaches what the path
/// before `#` reaches and the fragment never leaves the gateway.
#[tokio::test]
async fn fragment_is_dropped_before_routing() {
    let h = Harness::start(|_| {}).await;
    let token = h.token("weather", &["weather:read"]);
    let status = h.get("/weather/v1/x#/../../records/v1/x", &token).await;
    let seen: Vec<String> = h.upstream.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(status, 200);
    assert_eq!(seen, ["/weather/v1/x"]);

    let status = h.get("/records/v1/x#/weather/v1/x", &token).await;
    assert_eq!(status, 401, "the fragment does not change the route");
}
