//! One request to the proxy: authenticate the caller, decide, connect, and
//! hand over to the tunnel or the forwarder.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

use portcullis_config::{AppId, Mode};

use super::auth::{Caller, admit, authenticate};
use super::body::{Meter, ProxyBody, empty};
use super::error::ProxyError;
use super::forward::forward;
use super::reply::error_response;
use super::tunnel::{TunnelBytes, TunnelPolicy, copy_tunnel};
use super::{Context, Proxy};
use crate::connect::connect;
use crate::decision::{
    BANNED_RULE, BYTE_LIMIT_RULE, Decision, INVALID_TARGET_RULE, NO_RULES_RULE, ReasonCode, TUNNEL_LIMIT_RULE, Verdict,
};
use crate::engine::Engine;
use crate::error::EgressError;
use crate::event::EgressEvent;
use crate::host::{Host, split_authority};
use crate::limits::{AppUsage, CapWatch, Direction, TunnelGuard};

/// A connection to a checked address, with the app's tunnel slot and, if
/// a byte cap is set, the app's usage and a watcher for reaching the cap.
/// `engine` is the one that decided, whose timeouts the exchange keeps.
pub(crate) struct Upstream {
    pub stream: TcpStream,
    pub engine: Arc<Engine>,
    pub slot: TunnelGuard,
    pub host: String,
    pub port: u16,
    pub cap: Option<(Arc<AppUsage>, CapWatch)>,
}

impl Upstream {
    /// Returns the meter of `direction` for this connection's app.
    pub fn meter(&self, context: &Context, app_id: &AppId, direction: Direction) -> Meter {
        Meter {
            app_id: app_id.clone(),
            direction,
            accounting: Arc::clone(&context.proxy.bytes),
            usage: self.cap.as_ref().map(|(usage, _)| Arc::clone(usage)),
            counter: context.proxy.metrics.bytes_counter(app_id, direction),
        }
    }
}

/// Serves one request. Every error becomes its response here.
pub(crate) async fn handle(
    context: Arc<Context>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let app_id = match authenticate(&context.proxy, peer, request.headers()).await {
        Ok(app_id) => app_id,
        Err(error) => {
            context.proxy.metrics.count_authentication_failure(&error);
            log_refusal(&error, None);
            return Ok(error_response(&error));
        }
    };
    let caller = match admit(&context.proxy, app_id.clone()) {
        Ok(caller) => caller,
        Err(error) => {
            record_rejection(&context.proxy, &app_id, request.method(), request.uri(), &error);
            log_refusal(&error, Some(&app_id));
            return Ok(error_response(&error));
        }
    };

    // A span costs thousands of instructions per request with the
    // `portcullis` binary's log subscriber, yet at the default level an
    // allowed request writes no event. The request runs in its span only
    // when debug events are on; the refusal lines name the app themselves.
    let request_span =
        || tracing::info_span!("egress_request", app_id = %caller.app_id, %peer, method = %request.method());
    let span = if tracing::enabled!(tracing::Level::DEBUG) { request_span() } else { tracing::Span::none() };
    // Cheap to clone: the parts of a `Uri` share their bytes.
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let result = async {
        if request.method() == Method::CONNECT {
            open_tunnel(&context, &caller, request).await
        } else {
            forward(&context, &caller, request).await
        }
    }
    .instrument(span)
    .await;

    Ok(result.unwrap_or_else(|error| {
        if let ProxyError::BadTarget { .. } = error {
            record_rejection(&context.proxy, &caller.app_id, &method, &uri, &error);
        }
        log_refusal(&error, Some(&caller.app_id));
        error_response(&error)
    }))
}

/// The host and port a request names in its target, as far as it does,
/// for the event of a rejection that came before a decision. Without a
/// port in the target it is the scheme's (80, or 443 for `https`), or 0
/// for CONNECT.
struct RequestedTarget {
    host: String,
    port: u16,
}

impl RequestedTarget {
    fn of(method: &Method, uri: &http::Uri) -> Self {
        let default_port = match uri.scheme_str() {
            _ if method == Method::CONNECT => 0,
            Some("https") => 443,
            _ => 80,
        };
        match uri.authority() {
            Some(authority) => {
                Self { host: authority.host().to_owned(), port: authority.port_u16().unwrap_or(default_port) }
            }
            None => Self { host: String::new(), port: 0 },
        }
    }
}

/// Counts and sends the event of a rejection of an authenticated app that
/// came before the engine decided: a ban, missing rules or an invalid
/// target. Other errors produce no event here.
fn record_rejection(proxy: &Proxy, app_id: &AppId, method: &Method, uri: &http::Uri, error: &ProxyError) {
    let (reason, rule) = match error {
        ProxyError::Banned { .. } => (ReasonCode::AppBanned, BANNED_RULE),
        ProxyError::NotDeployed { .. } => (ReasonCode::NoRules, NO_RULES_RULE),
        ProxyError::BadTarget { .. } => (ReasonCode::InvalidTarget, INVALID_TARGET_RULE),
        _ => return,
    };
    let target = RequestedTarget::of(method, uri);
    let decision = rejection(reason, rule, error.to_string(), normalised(&target.host), target.port);
    proxy.metrics.count_decision(app_id, decision.verdict, &decision.rule);
    proxy.events.send(EgressEvent::new(app_id, &target.host, &decision));
}

/// Returns `requested` in normalised form, or as requested if it is not a
/// valid host. Performs no lookup.
fn normalised(requested: &str) -> String {
    Host::parse(requested).map_or_else(|_| requested.to_owned(), |host| host.to_string())
}

/// Builds the decision of a rejection that no rule set made.
fn rejection(reason: ReasonCode, rule: &str, message: String, host: String, port: u16) -> Decision {
    Decision {
        verdict: Verdict::Deny,
        reason,
        message,
        rule: rule.to_owned(),
        mode: Mode::Enforce,
        host,
        port,
        resolved: Vec::new(),
        target: None,
    }
}

/// Handles CONNECT (RFC 9110 section 9.3.6): the target must be
/// authority-form `host:port`. On success the response is 200 without a
/// body, and the tunnel runs in its own task once hyper hands over the
/// connection.
async fn open_tunnel(
    context: &Arc<Context>,
    caller: &Caller,
    mut request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let uri = request.uri().clone();
    let bad_target =
        |problem| ProxyError::BadTarget { app_id: caller.app_id.to_string(), target: uri.to_string(), problem };

    let authority = match (uri.scheme(), uri.authority()) {
        (None, Some(authority)) => authority,
        _ => return Err(bad_target("CONNECT needs an authority-form target, host:port")),
    };
    if authority.as_str().contains('@') {
        return Err(bad_target("the target must not contain user information"));
    }
    let (host, port) = split_authority(authority.as_str())
        .map_err(|_| bad_target("CONNECT needs host:port with a port from 1 to 65535"))?;

    let mut upstream = open_upstream(context, caller, &Method::CONNECT, host, port).await?;

    let on_upgrade = hyper::upgrade::on(&mut request);
    let settings = upstream.engine.rules().settings();
    let policy = TunnelPolicy {
        idle: settings.idle_timeout,
        lifetime: settings.max_tunnel_lifetime,
        buffer_bytes: settings.tunnel_buffer_bytes,
        sent: upstream.meter(context, &caller.app_id, Direction::Sent),
        received: upstream.meter(context, &caller.app_id, Direction::Received),
        stop: context.abort.clone(),
        cap: upstream.cap.take().map(|(_, watch)| watch),
        ban: (Arc::clone(&context.proxy.bans), caller.app_id.clone()),
    };

    let tunnel = async move {
        let Upstream { stream, slot, host, port, .. } = upstream;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%host, port, %error, "client left before the tunnel opened");
                return;
            }
        };

        let opened = Instant::now();
        let bytes = TunnelBytes::default();
        let end = copy_tunnel(TokioIo::new(upgraded), stream, policy, &bytes).await;
        drop(slot);
        tracing::debug!(
            %host,
            port,
            end = end.as_str(),
            sent = bytes.sent.into_inner(),
            received = bytes.received.into_inner(),
            duration_ms = opened.elapsed().as_millis() as u64,
            "egress tunnel closed"
        );
    };
    context.tasks.spawn(tunnel.instrument(tracing::Span::current()));

    Ok(Response::new(empty()))
}

/// Checks the app's byte cap, takes a tunnel slot, decides, sends the
/// event, writes the decision's log line and connects to the checked
/// addresses.
pub(crate) async fn open_upstream(
    context: &Context,
    caller: &Caller,
    method: &Method,
    host: &str,
    port: u16,
) -> Result<Upstream, ProxyError> {
    let proxy = &context.proxy;
    let engine = proxy.engine();
    let settings = engine.rules().settings();
    let app_id = caller.app_id.to_string();

    let cap = match &proxy.cap {
        None => None,
        Some(cap) => {
            let usage = cap.usage(&caller.app_id);
            match usage.check() {
                Ok(watch) => Some((usage, watch)),
                Err(source) => {
                    let limit = (ReasonCode::ByteLimit, BYTE_LIMIT_RULE, source.to_string());
                    let error = |host| ProxyError::ByteLimit { app_id: app_id.clone(), host, port, source };
                    return Err(refuse_by_limit(proxy, caller, method, (host, port), limit, error));
                }
            }
        }
    };

    let slot = match proxy.tunnels.acquire(&caller.app_id) {
        Ok(slot) => slot,
        Err(source) => {
            let limit = (ReasonCode::TunnelLimit, TUNNEL_LIMIT_RULE, source.to_string());
            let error = |_| ProxyError::TunnelLimit { app_id: app_id.clone(), limit: proxy.tunnels.limit() };
            return Err(refuse_by_limit(proxy, caller, method, (host, port), limit, error));
        }
    };

    let decision = engine.evaluate(&caller.rules, host, port).await;
    proxy.metrics.count_decision(&caller.app_id, decision.verdict, &decision.rule);
    let event = EgressEvent::new(&caller.app_id, host, &decision);

    let Some(target) = &decision.target else {
        proxy.events.send(event);
        let error = ProxyError::Denied {
            app_id,
            host: decision.host.clone(),
            port,
            rule: decision.rule.clone(),
            reason: decision.reason,
        };
        log_decision(&caller.app_id, method, &decision, Err(&error));
        return Err(error);
    };

    match connect(target, settings.connect_timeout).await {
        Ok((stream, address)) => {
            proxy.events.send(event.with_connected(address));
            log_decision(&caller.app_id, method, &decision, Ok(Some(address)));
            Ok(Upstream { stream, engine: Arc::clone(&engine), slot, host: decision.host.clone(), port, cap })
        }
        Err(source) => {
            proxy.events.send(event);
            let host = decision.host.clone();
            let error = match source {
                EgressError::ConnectTimeout { .. } => ProxyError::ConnectTimeout { app_id, host, port, source },
                _ => ProxyError::Unreachable { app_id, host, port, source },
            };
            log_decision(&caller.app_id, method, &decision, Err(&error));
            Err(error)
        }
    }
}

/// Builds the refusal of an app at one of its limits (the byte cap or the
/// tunnel limit) from `limit` (reason, rule id, message) and `error`,
/// which receives the normalised host. Sends the event and writes the log
/// line a decision would have. The host is normalised without a lookup,
/// and no address is resolved.
fn refuse_by_limit(
    proxy: &Proxy,
    caller: &Caller,
    method: &Method,
    (requested, port): (&str, u16),
    (reason, rule, message): (ReasonCode, &str, String),
    error: impl FnOnce(String) -> ProxyError,
) -> ProxyError {
    let host = normalised(requested);
    let decision = rejection(reason, rule, message, host.clone(), port);
    proxy.metrics.count_decision(&caller.app_id, decision.verdict, &decision.rule);
    proxy.events.send(EgressEvent::new(&caller.app_id, requested, &decision));
    let error = error(host);
    log_decision(&caller.app_id, method, &decision, Err(&error));
    error
}

/// Writes the one log line of a decision: refusals and failed connections
/// at info, successful allows at debug.
fn log_decision(
    app_id: &AppId,
    method: &Method,
    decision: &Decision,
    outcome: Result<Option<SocketAddr>, &ProxyError>,
) {
    let verdict = decision.verdict.as_str();
    let reason = decision.reason.as_str();
    let (host, port, rule) = (&decision.host, decision.port, &decision.rule);

    match outcome {
        Err(error) => {
            let status = error.status().as_u16();
            tracing::info!(%app_id, %method, %host, port, verdict, reason, %rule, status, message = %decision.message, %error, "egress request refused");
        }
        Ok(connected) if decision.verdict == Verdict::Allow => {
            let connected = connected.map(|address| address.to_string());
            tracing::debug!(%method, %host, port, verdict, reason, %rule, status = 200, connected, "egress request allowed");
        }
        Ok(connected) => {
            let connected = connected.map(|address| address.to_string());
            tracing::info!(%app_id, %method, %host, port, verdict, reason, %rule, status = 200, connected, message = %decision.message, "egress request allowed in report mode");
        }
    }
}

/// Logs a refusal that did not come from a decision; decisions log their
/// own line in [`open_upstream`]. `app_id` is the identified caller, if
/// the refusal came after identification.
fn log_refusal(error: &ProxyError, app_id: Option<&AppId>) {
    let status = error.status().as_u16();
    let app_id = app_id.map(tracing::field::display);
    match error {
        ProxyError::Denied { .. }
        | ProxyError::ByteLimit { .. }
        | ProxyError::TunnelLimit { .. }
        | ProxyError::ConnectTimeout { .. }
        | ProxyError::Unreachable { .. } => {}
        ProxyError::WrongSecret { claimed, peer } => {
            tracing::warn!(claimed_app_id = %claimed, %peer, status, "egress proxy authentication failed: wrong secret");
        }
        ProxyError::MissingCredentials { peer, problem } => {
            tracing::info!(%peer, status, problem, "egress proxy authentication failed: no credentials");
        }
        ProxyError::NotDeployed { .. } => tracing::warn!(app_id, status, %error, "egress request refused"),
        ProxyError::Store { .. } => tracing::error!(app_id, status, %error, "egress request failed"),
        _ => tracing::info!(app_id, status, %error, "egress request refused"),
    }
}
