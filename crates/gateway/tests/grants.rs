//! Tokens of an app that has no grant for the routed service, or lacks
//! the route's scope, or whose grant was withdrawn after the token was
//! issued. None reaches the upstream.
//!
//! The token service issues a token only for a service and scopes the app
//! has grants for, so an app without a grant for a service can present
//! only a token issued for another service, or one without the route's
//! scope. A token for another service is not a token for this resource
//! at all, so it is 401 `invalid_token` (RFC 6750 section 3.1), like any
//! token with the wrong audience. A token without the route's scope is
//! 403 `insufficient_scope`. Withdrawing a grant cuts off every token the
//! app was issued up to that second, so such a token is revoked and gets
//! 401 `invalid_token`.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(5);

/// A case: name, token, method, target, then the expected status, `error`
/// and `error_description`.
type Case = (&'static str, String, &'static str, &'static str, u16, &'static str, &'static str);

const OTHER_SERVICE: &str = "the token was issued for another service";
const MISSING_SCOPE: &str = "the token lacks the scope this route requires";

/// Sends `method target` with `token` and returns the raw response.
async fn send(h: &Harness, method: &str, target: &str, token: &str) -> String {
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    h.raw(request.as_bytes(), WAIT).await
}

/// Returns the value of the response header `name` (lower case), if present.
fn header<'a>(received: &'a str, name: &str) -> Option<&'a str> {
    let head = received.split_once("\r\n\r\n").map_or(received, |(head, _)| head);
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Checks one case: status, the JSON error body, the `WWW-Authenticate`
/// challenge, and that the upstream saw nothing.
async fn check(h: &Harness, case: &Case) {
    let (name, token, method, target, status, error, description) = case;
    h.upstream.clear();
    let received = send(h, method, target, token).await;

    assert_eq!(status_of(&received), *status, "{name}: {received}");
    let body = received.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let body: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{name}: {received}"));
    assert_eq!(body["error"], *error, "{name}");
    assert_eq!(body["error_description"], *description, "{name}");
    let challenge = format!("Bearer error=\"{error}\", error_description=\"{description}\"");
    assert_eq!(header(&received, "www-authenticate"), Some(challenge.as_str()), "{name}");
    assert!(h.upstream.seen().is_empty(), "{name}: the upstream saw {:?}", h.upstream.seen());
}

#[tokio::test]
async fn missing_grant_401_missing_scope_403() {
    let h = Harness::start(|_| {}).await;
    let weather = h.token("weather", &["weather:read"]);
    let records_read = h.token("records", &["records:read"]);
    let no_scopes = h.token("records", &[]);

    let cases: Vec<Case> = vec![
        (
            "no grant for records, read route",
            weather.clone(),
            "GET",
            "/records/v1/x",
            401,
            "invalid_token",
            OTHER_SERVICE,
        ),
        (
            "no grant for records, write route",
            weather.clone(),
            "POST",
            "/records/v1/x",
            401,
            "invalid_token",
            OTHER_SERVICE,
        ),
        ("no grant for weather", records_read.clone(), "GET", "/weather/v1/today", 401, "invalid_token", OTHER_SERVICE),
        ("write scope not granted", records_read, "POST", "/records/v1/x", 403, "insufficient_scope", MISSING_SCOPE),
        ("token without scopes", no_scopes, "GET", "/records/v1/x", 403, "insufficient_scope", MISSING_SCOPE),
    ];
    for case in &cases {
        check(&h, case).await;
    }

    // The same token still reaches the service it was issued for.
    h.upstream.clear();
    let received = send(&h, "GET", "/weather/v1/today", &weather).await;
    assert_eq!(status_of(&received), 200, "{received}");
    assert_eq!(h.upstream.seen().len(), 1);
}

/// Withdrawing a grant cuts off the app's earlier tokens: they are revoked
/// (401), for the withdrawn service and every other. A token issued after
/// the cut-off, for the grants the app still holds, works.
#[tokio::test]
async fn withdrawn_grant_revokes_earlier_tokens() {
    let h = Harness::start(|_| {}).await;
    let issued = now() - 2;
    let records = h.token_for(&h.app, APP, "records", &["records:read"], issued);
    let weather = h.token_for(&h.app, APP, "weather", &["weather:read"], issued);

    h.invalidations.cut_off_app(APP, issued + 1);

    let revoked = "the app's tokens were invalidated; request a new one";
    let cases: Vec<Case> = vec![
        ("withdrawn service", records, "GET", "/records/v1/x", 401, "invalid_token", revoked),
        ("other service", weather.clone(), "GET", "/weather/v1/today", 401, "invalid_token", revoked),
        ("withdrawn service, other token", weather, "GET", "/records/v1/x", 401, "invalid_token", revoked),
    ];
    for case in &cases {
        check(&h, case).await;
    }

    h.upstream.clear();
    let fresh = h.token_for(&h.app, APP, "weather", &["weather:read"], issued + 2);
    let received = send(&h, "GET", "/weather/v1/today", &fresh).await;
    assert_eq!(status_of(&received), 200, "{received}");
    assert_eq!(h.upstream.seen().len(), 1);
}
