//! Forwarding plain HTTP requests in absolute form (RFC 9112 section
//! 3.2.2) to the checked address, one upstream connection per request.

use std::sync::Arc;

use http::header::{CONNECTION, EXPECT, HOST, HeaderName, HeaderValue, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA};
use http::{HeaderMap, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::{Instant, sleep_until};

use super::Context;
use super::auth::Caller;
use super::body::{MeteredBody, ProxyBody, stop_when};
use super::error::ProxyError;
use super::handle::{Upstream, open_upstream};
use super::tunnel::{Activity, idle_watchdog};
use crate::host::split_authority;
use crate::limits::Direction;

/// The `Via` entry the proxy adds (RFC 9110 section 7.6.3).
const VIA_ENTRY: &str = "1.1 portcullis-egress";

/// Forwards an absolute-form `http://` request and streams the response
/// back. The target's authority replaces any `Host` header, the request
/// goes out in origin form, and hop-by-hop and `Proxy-*` header fields are
/// removed both ways. The response head must arrive before the exchange
/// has been idle for `idle_timeout` (request body bytes count as activity).
pub(crate) async fn forward(
    context: &Arc<Context>,
    caller: &Caller,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let uri = request.uri().clone();
    let app_id = caller.app_id.to_string();
    let bad_target = |problem| ProxyError::BadTarget { app_id: app_id.clone(), target: uri.to_string(), problem };

    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad_target("https:// targets go through CONNECT")),
        Some(_) => return Err(bad_target("only http:// targets can be forwarded")),
        None => return Err(bad_target("a request to the proxy needs an absolute-form target, http://host/path")),
    }
    let Some(authority) = uri.authority() else {
        return Err(bad_target("the target has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(bad_target("the target must not contain user information"));
    }
    let (host, port) = if authority.port().is_some() {
        split_authority(authority.as_str()).map_err(|_| bad_target("the target's port must be from 1 to 65535"))?
    } else {
        (authority.host(), 80)
    };
    let origin_form: Uri = uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .parse()
        .map_err(|_| bad_target("the target's path is not valid"))?;
    let host_header =
        HeaderValue::from_str(authority.as_str()).map_err(|_| bad_target("the target's host is not valid"))?;

    let method = request.method().clone();
    let mut upstream = open_upstream(context, caller, &method, host, port).await?;
    let sent = upstream.meter(context, &caller.app_id, Direction::Sent);
    let received = upstream.meter(context, &caller.app_id, Direction::Received);
    let (request_cap, response_cap) = match upstream.cap.take() {
        Some((_, watch)) => (Some(watch.clone()), Some(watch)),
        None => (None, None),
    };
    let Upstream { stream, engine, slot, host, port, .. } = upstream;
    let upstream_error = |error: hyper::Error| ProxyError::Upstream {
        app_id: app_id.clone(),
        host: host.clone(),
        port,
        message: error.to_string(),
    };

    let settings = engine.rules().settings();
    let (idle, lifetime) = (settings.idle_timeout, settings.max_tunnel_lifetime);
    let deadline = Instant::now() + lifetime;
    let slot = Arc::new(slot);
    let activity = Activity::new();

    let (mut parts, body) = request.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    // hyper's server has already answered `Expect: 100-continue` once the
    // body is read, so the expectation is met and is not passed on.
    parts.headers.remove(EXPECT);
    parts.headers.insert(HOST, host_header);
    parts.headers.append(VIA, HeaderValue::from_static(VIA_ENTRY));
    parts.uri = origin_form;
    parts.version = Version::HTTP_11;
    let target_len = parts.uri.path_and_query().map_or(1, |target| target.as_str().len());
    let request_line = parts.method.as_str().len() + 1 + target_len + " HTTP/1.1".len();
    sent.record(head_bytes(request_line, &parts.headers));
    let bans = Arc::clone(&context.proxy.bans);
    let request_stop = stop_when(request_cap, Arc::clone(&bans), caller.app_id.clone());
    let body = MeteredBody::new(body, sent, (idle, deadline), Arc::clone(&activity), Arc::clone(&slot), request_stop);
    let outgoing = Request::from_parts(parts, body);

    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(upstream_error)?;
    let abort = context.abort.clone();
    context.tasks.spawn(async move {
        tokio::select! {
            result = connection => {
                if let Err(error) = result {
                    tracing::debug!(%error, "upstream HTTP connection ended with an error");
                }
            }
            () = abort.cancelled() => {}
        }
    });

    let response = tokio::select! {
        result = sender.send_request(outgoing) => result.map_err(upstream_error)?,
        () = idle_watchdog(&activity, idle) => {
            return Err(ProxyError::UpstreamTimeout { app_id, host, port, timeout: idle });
        }
        () = sleep_until(deadline) => {
            return Err(ProxyError::UpstreamTimeout { app_id, host, port, timeout: lifetime });
        }
    };
    activity.touch();

    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    let status_line =
        "HTTP/1.1 ".len() + parts.status.as_str().len() + 1 + parts.status.canonical_reason().map_or(0, str::len);
    received.record(head_bytes(status_line, &parts.headers));
    tracing::debug!(%host, port, status = parts.status.as_u16(), "egress response head forwarded");
    let response_stop = stop_when(response_cap, bans, caller.app_id.clone());
    let body = MeteredBody::new(body, received, (idle, deadline), activity, slot, response_stop);
    Ok(Response::from_parts(parts, body.boxed()))
}

/// Returns the size in bytes of an HTTP/1.1 message head with a start line
/// of `start_line` bytes and `headers` (RFC 9112 section 2.1): each line
/// ends in CRLF, each field is `name: value`, and an empty line ends the
/// head. Heads count toward the app's byte cap like bodies, so an app
/// cannot move data in header fields for free.
fn head_bytes(start_line: usize, headers: &HeaderMap) -> usize {
    let fields: usize = headers.iter().map(|(name, value)| name.as_str().len() + 2 + value.len() + 2).sum();
    start_line + 2 + fields + 2
}

/// Removes the header fields that apply to one connection only (RFC 9110
/// section 7.6.1): those named in `Connection`, the standard hop-by-hop
/// fields, and every `Proxy-*` field, so the app's proxy credentials never
/// reach the destination.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }

    for name in [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");

    let proxy_fields: Vec<HeaderName> =
        headers.keys().filter(|name| name.as_str().starts_with("proxy-")).cloned().collect();
    for name in proxy_fields {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_bytes_counts_wire_form() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.org"));
        headers.insert("x-data", HeaderValue::from_static("abc"));
        // "GET / HTTP/1.1\r\nhost: example.org\r\nx-data: abc\r\n\r\n"
        assert_eq!(head_bytes("GET / HTTP/1.1".len(), &headers), 16 + 19 + 13 + 2);
        assert_eq!(head_bytes(14, &HeaderMap::new()), 18);
    }

    #[test]
    fn hop_by_hop_fields_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, x-trace"),
            ("x-trace", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic YTpi"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "text/plain"),
            ("content-length", "3"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }

        remove_hop_by_hop(&mut headers);

        let mut left: Vec<&str> = headers.keys().map(|name| name.as_str()).collect();
        left.sort();
        assert_eq!(left, ["accept", "content-length"]);
    }
}
