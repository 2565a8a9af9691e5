//! The request handler: checks in a fixed order, then forwarding.
//!
//! Order, first failure wins:
//!
//! 1. head size (431), a connection over the app's connection limit (429),
//!    method, framing and target (400);
//! 2. a revoked or unpinned client certificate or stale trust data (403,
//!    503), a guard ban (403);
//! 3. the path rule (400), the route (404), the app's admission and space
//!    (403), the rate limits (429);
//! 4. the bearer token and its binding (401), the route's scope (403), a
//!    declared body size (413), and with `gateway.request_buffering` a body
//!    without a declared size read whole (413, 429, 408, 400);
//! 5. then the upstream (502, 504, or its own status).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portcullis_config::GatewaySettings;
use portcullis_guard::{DecisionReceiver, Verdict};
use portcullis_identity::{TrustCache, TrustVerdict};
use tracing::Instrument;

use crate::body::{
    BoxError, LimitedBody, PendingEvent, ReadWholeError, RequestCounters, ResponseBody, StallLimitedBody, WholeBody,
    app_went_away, read_whole,
};
use crate::error::GatewayError;
use crate::events::{AccessEvent, EventSinks, now_ms};
use crate::framing::{
    APP_ID_HEADER, REQUEST_ID_HEADER, SCOPES_HEADER, ServerNames, check_head, new_request_id, strip_hop_by_hop,
    strip_request_headers,
};
use crate::h2_watch::{Claim, ResetLedger};
use crate::limits::{AppTally, RateLimits};
use crate::path::canonicalise;
use crate::pool::UpstreamPool;
use crate::routes::RouteTable;
use crate::spaces::{Admission, AppServices};

/// State shared by every connection; the swappable parts change on reload.
pub(crate) struct Shared {
    pub routes: ArcSwap<RouteTable>,
    pub settings: ArcSwap<GatewaySettings>,
    pub limits: RateLimits,
    pub tokens: portcullis_token::Verifier,
    pub trust: Arc<TrustCache>,
    pub decisions: DecisionReceiver,
    pub sinks: EventSinks,
    /// The names an absolute-form request target may use for the gateway.
    pub server_names: ServerNames,
    /// Each app's open connections, for `gateway.max_connections_per_app`.
    pub connections: Arc<AppTally>,
    /// Each app's buffered request body bytes, for
    /// `gateway.max_buffered_bytes_per_app`.
    pub buffered: Arc<AppTally>,
    /// The services of each app's space; `None` admits every app to every
    /// service, leaving the decision to tokens and grants.
    pub app_services: Option<Arc<AppServices>>,
}

/// The connection facts the gateway takes from the TLS handshake.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub app_id: String,
    pub serial: String,
    /// The connection's local address, which an absolute-form request
    /// target may name instead of one of [`Shared::server_names`].
    pub local_addr: SocketAddr,
    /// SHA-256 thumbprint of the client certificate (base64url), compared
    /// with the token's `cnf.x5t#S256`.
    pub certificate_thumbprint: String,
    /// SPKI pin of the client certificate, checked against the app's valid
    /// pins on each request.
    pub spki_pin: String,
    /// `gateway.max_connections_per_app` if the app already held that many
    /// other connections when this one opened. Its requests then get 429.
    pub over_connection_limit: Option<u32>,
    /// The resets that the frame watch found on this connection, for
    /// HTTP/2 connections.
    pub h2_resets: Option<Arc<ResetLedger>>,
}

/// Handles one request; never fails, because every failure becomes a
/// response here.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    pool: Arc<UpstreamPool>,
    peer: Arc<Peer>,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let request_id = new_request_id();
    // A span costs about 5,000 instructions per request with the `portcullis`
    // binary's log subscriber, yet at the default level no event inside a
    // forwarded request is written. The request runs in its span only when
    // debug events are on, and a refusal gets its span when it is logged.
    let request_span = || tracing::info_span!("request", app_id = %peer.app_id, request_id = %request_id);
    let span = if tracing::enabled!(tracing::Level::DEBUG) { request_span() } else { tracing::Span::none() };
    let counters = Arc::new(RequestCounters::default());
    let event = AccessEvent {
        at_ms: 0,
        request_id: request_id.clone(),
        app_id: peer.app_id.clone(),
        service: String::new(),
        route: String::new(),
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        status: 0,
        bytes_in: 0,
        bytes_out: 0,
        latency_us: 0,
        reason: None,
    };

    // Created before forwarding: if hyper drops this future, the pending
    // event still records the request, which the upstream may have received.
    let mut pending =
        PendingEvent::new(event, started, Arc::clone(&counters), shared.sinks.clone(), peer.h2_resets.clone());

    let result = forward(&shared, &pool, &peer, request, &request_id, &counters, &mut pending.event)
        .instrument(span.clone())
        .await;
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            let span = if span.is_none() { request_span() } else { span };
            let _entered = span.enter();
            pending.event.reason = Some(error.code().to_owned());
            if let GatewayError::Http2StreamReset { recorded: true, .. } = error {
                // The frame watch has recorded the reset's event for this
                // request. The response goes nowhere, because h2 has closed
                // the stream.
                pending.discard();
            }
            error.to_response(&request_id).map(|body| body.map_err(|never| match never {}).boxed_unsync())
        }
    };

    pending.event.status = response.status().as_u16();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response.map(|body| ResponseBody::new(body, pending))
}

/// The identity headers as ready-made names, which `insert` would otherwise
/// parse and copy from the string on every request.
const APP_ID: HeaderName = HeaderName::from_static(APP_ID_HEADER);
const SCOPES: HeaderName = HeaderName::from_static(SCOPES_HEADER);
const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

type UpstreamResponse = Response<http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>>;

async fn forward(
    shared: &Shared,
    pool: &UpstreamPool,
    peer: &Peer,
    request: Request<Incoming>,
    request_id: &str,
    counters: &Arc<RequestCounters>,
    event: &mut AccessEvent,
) -> Result<UpstreamResponse, GatewayError> {
    if let Some(limit) = peer.over_connection_limit {
        return Err(GatewayError::TooManyConnections { app_id: peer.app_id.clone(), limit });
    }
    let settings = shared.settings.load_full();
    check_head(&request, settings.max_header_bytes, &shared.server_names, peer.local_addr)?;

    // The handshake checked revocation, the pin and staleness once, and a
    // connection can outlive all three, so each request checks them again.
    match shared.trust.check(&peer.serial, Some((&peer.app_id, &peer.spki_pin))) {
        TrustVerdict::Accepted => {}
        TrustVerdict::Revoked => {
            return Err(GatewayError::Revoked { app_id: peer.app_id.clone(), serial: peer.serial.clone() });
        }
        TrustVerdict::NotPinned => {
            return Err(GatewayError::NotPinned { app_id: peer.app_id.clone(), serial: peer.serial.clone() });
        }
        TrustVerdict::Stale => return Err(GatewayError::TrustStale),
    }
    let verdict = shared.decisions.borrow().verdict(&peer.app_id, now_ms());
    let throttle = match verdict {
        Verdict::Ban { reason, .. } => return Err(GatewayError::Banned { app_id: peer.app_id.clone(), reason }),
        Verdict::Throttle { per_second, .. } => Some(per_second),
        Verdict::Allow => None,
    };

    let path = canonicalise(request.uri().path())
        .map_err(|rejection| GatewayError::Path { path: request.uri().path().to_owned(), rejection })?;
    event.path = path.as_str().to_owned();

    let routes = shared.routes.load_full();
    let method = request.method().as_str().to_owned();
    let route = routes
        .find(&path, &method)
        .ok_or_else(|| GatewayError::NoRoute { method: method.clone(), path: path.as_str().to_owned() })?;
    let upstream = Arc::clone(&route.upstream);
    event.service = upstream.service.clone();
    event.route = route.prefix.clone();

    if let Some(app_services) = &shared.app_services {
        match app_services.check(&peer.app_id, &upstream.service) {
            Admission::Allowed => {}
            Admission::NotAdmitted => return Err(GatewayError::NotAdmitted { app_id: peer.app_id.clone() }),
            Admission::NotInSpace => {
                return Err(GatewayError::ServiceNotInSpace {
                    app_id: peer.app_id.clone(),
                    service: upstream.service.clone(),
                });
            }
        }
    }

    shared.limits.check(&peer.app_id, &upstream.service, throttle).map_err(|exceeded| GatewayError::RateLimited {
        app_id: peer.app_id.clone(),
        service: upstream.service.clone(),
        limit: exceeded.limit,
        retry_after_secs: exceeded.retry_after_secs,
    })?;

    let token = bearer_token(request.headers())?;
    let now_secs = now_ms() / 1000;
    let token_error = |reason| GatewayError::Token { service: upstream.service.clone(), reason };
    let verified = shared
        .tokens
        .verify_for_thumbprint(token, &upstream.audience, &peer.certificate_thumbprint, now_secs)
        .map_err(token_error)?;
    if verified.app_id() != peer.app_id {
        return Err(GatewayError::AppMismatch {
            certificate_app: peer.app_id.clone(),
            token_app: verified.app_id().to_owned(),
        });
    }
    verified.require_scope(&route.scope).map_err(token_error)?;
    tracing::debug!(service = %upstream.service, route = %route.prefix, path = %path, "request allowed");

    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > settings.max_body_bytes) {
        return Err(GatewayError::BodyTooLarge { max: settings.max_body_bytes });
    }

    let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let target = format!("{}{}{}", upstream.base_path, path.as_str(), query);
    let mut parts = upstream.origin.clone().into_parts();
    parts.path_and_query =
        Some(target.parse().map_err(|_| GatewayError::Internal(format!("upstream target {target:?}")))?);
    let uri = Uri::from_parts(parts).map_err(|e| GatewayError::Internal(format!("upstream URI: {e}")))?;

    let (mut head, body) = request.into_parts();
    let body = if settings.request_buffering && body.size_hint().exact().is_none() && !body.is_end_stream() {
        let whole = read_whole_body(shared, &settings, peer, body, counters).await?;
        LimitedBody::buffered(whole, Arc::clone(counters))
    } else {
        LimitedBody::new(body, settings.max_body_bytes, Arc::clone(counters))
    };
    strip_request_headers(&mut head.headers);
    let scopes = verified.claims().scope.clone();
    for (name, value) in [(APP_ID, peer.app_id.as_str()), (SCOPES, scopes.as_str()), (REQUEST_ID, request_id)] {
        let value =
            HeaderValue::from_str(value).map_err(|_| GatewayError::Internal(format!("header value for {name}")))?;
        head.headers.insert(name, value);
    }
    head.uri = uri;
    head.version = http::Version::HTTP_11;
    let upstream_request = Request::from_parts(head, body);

    // Only a request that passed every check starts or extends busy
    // polling, so rejected requests cannot keep a worker's core busy.
    let in_flight = crate::busy_poll::request_started();
    let sent = tokio::time::timeout(settings.upstream_timeout, pool.send(&upstream, upstream_request)).await;
    drop(in_flight);
    // A stalled or failed request body is the app's doing and gets a 4xx,
    // so the guard does not count it against the service.
    let body_pending = !counters.ended.load(Ordering::Relaxed);
    let response = match sent {
        Err(_) if body_pending && counters.waiting_for_app.load(Ordering::Relaxed) => {
            return Err(GatewayError::BodyStalled { after: settings.upstream_timeout });
        }
        Err(_) => {
            return Err(GatewayError::UpstreamTimeout {
                service: upstream.service.clone(),
                after: settings.upstream_timeout,
            });
        }
        Ok(Err(_)) if counters.too_large.load(Ordering::Relaxed) => {
            return Err(GatewayError::BodyTooLarge { max: settings.max_body_bytes });
        }
        Ok(Err(error)) if counters.app_went_away.load(Ordering::Relaxed) => {
            return Err(GatewayError::BodyCutByApp { detail: error.detail });
        }
        Ok(Err(_)) if counters.h2_reset_code.load(Ordering::Relaxed) != 0 => {
            return Err(own_stream_reset(peer, counters));
        }
        Ok(Err(error)) if counters.failed.load(Ordering::Relaxed) => {
            return Err(GatewayError::BodyAborted { detail: error.detail });
        }
        Ok(Err(error)) => {
            let service = upstream.service.clone();
            return Err(match error.connect_timed_out {
                Some(after) => GatewayError::UpstreamConnectTimeout { service, after },
                None => GatewayError::UpstreamUnreachable { service, detail: error.detail },
            });
        }
        Ok(Ok(response)) => response,
    };

    let (mut head, body) = response.into_parts();
    strip_hop_by_hop(&mut head.headers);
    head.version = http::Version::HTTP_11;
    let body = StallLimitedBody::new(body.map_err(|e| Box::new(e) as BoxError), settings.upstream_timeout);
    Ok(Response::from_parts(head, body.boxed_unsync()))
}

/// Reads a request body without a declared length whole, within
/// `gateway.max_body_bytes`, the app's `gateway.max_buffered_bytes_per_app`
/// and `gateway.upstream_timeout` for the whole body, before any of it goes
/// upstream.
async fn read_whole_body(
    shared: &Shared,
    settings: &GatewaySettings,
    peer: &Peer,
    body: Incoming,
    counters: &RequestCounters,
) -> Result<WholeBody, GatewayError> {
    let budget = settings.max_buffered_bytes_per_app;
    let slot = shared
        .buffered
        .acquire(&peer.app_id, 0, budget)
        .ok_or_else(|| GatewayError::BufferFull { app_id: peer.app_id.clone(), limit: budget })?;
    let read = read_whole(body, settings.max_body_bytes, slot, budget, counters);
    match tokio::time::timeout(settings.upstream_timeout, read).await {
        Ok(Ok(whole)) => Ok(whole),
        Ok(Err(ReadWholeError::TooLarge)) => Err(GatewayError::BodyTooLarge { max: settings.max_body_bytes }),
        Ok(Err(ReadWholeError::BudgetExhausted)) => {
            Err(GatewayError::BufferFull { app_id: peer.app_id.clone(), limit: budget })
        }
        Ok(Err(ReadWholeError::Failed(_))) if counters.h2_reset_code.load(Ordering::Relaxed) != 0 => {
            Err(own_stream_reset(peer, counters))
        }
        Ok(Err(ReadWholeError::Failed(error))) if app_went_away(&error) => {
            Err(GatewayError::BodyCutByApp { detail: error.to_string() })
        }
        Ok(Err(ReadWholeError::Failed(error))) => Err(GatewayError::BodyAborted { detail: error.to_string() }),
        Err(_) => Err(GatewayError::BodyStalled { after: settings.upstream_timeout }),
    }
}

/// Builds the error of a request whose stream the gateway's own h2 reset,
/// and claims the reset's event from the connection's [`ResetLedger`], so
/// that the request and the reset get one event between them.
fn own_stream_reset(peer: &Peer, counters: &RequestCounters) -> GatewayError {
    let code = counters.h2_reset_code.load(Ordering::Relaxed);
    let claim = peer.h2_resets.as_ref().map_or(Claim::Record, |ledger| ledger.claim(code, Instant::now()));
    GatewayError::Http2StreamReset { code, recorded: claim == Claim::AlreadyRecorded }
}

/// Returns the token of the one `Authorization: Bearer` header
/// (RFC 6750 section 2.1; the scheme is case-insensitive, RFC 9110
/// section 11.1).
fn bearer_token(headers: &http::HeaderMap) -> Result<&str, GatewayError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(GatewayError::MissingToken { detail: "no Authorization header" })?;
    if values.next().is_some() {
        return Err(GatewayError::MissingToken { detail: "more than one Authorization header" });
    }
    let value = value.to_str().map_err(|_| GatewayError::MissingToken { detail: "non-ASCII Authorization header" })?;
    let (scheme, token) =
        value.split_once(' ').ok_or(GatewayError::MissingToken { detail: "Authorization without a scheme" })?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(GatewayError::MissingToken { detail: "Authorization scheme is not Bearer" });
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(GatewayError::MissingToken { detail: "empty bearer token" });
    }
    Ok(token)
}
