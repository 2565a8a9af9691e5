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
    ("/records/v1/x", 403, None),
    ("/%72ecords/v1/x", 403, None),
    ("/records/v1/%2e%2e/x", 400, None),
];

#[tokio::test]
async fn path_spellings_never_reach_records() {
    let h = Harness::start(|_| {}).await;
    let token = h.token("weather", &["weather:read"]);
    assert!(CASES.len() >= 30);

    let mut failures = Vec::new();
    for (target, status, reaches) in CASES {
        h.upstream.clear();
        let got = h.get(target, &token).await;
        let seen: Vec<String> = h.upstream.seen().into_iter().map(|s| s.target).collect();
        let expected_seen: Vec<String> = reaches.iter().map(|s| s.to_string()).collect();
        if got != *status || seen != expected_seen {
            failures.push(format!(
                "{target}: status {got} (expected {status}), upstream saw {seen:?} (expected {expected_seen:?})"
            ));
        }
    }
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
    assert_eq!(status, 403, "the fragment does not change the route");
}
