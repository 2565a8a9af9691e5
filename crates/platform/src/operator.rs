//! The operator API on `listeners.operator`: status, bans, grants and
//! Prometheus metrics.
//!
//! Every route requires a client certificate from the platform CA with a
//! platform identity (`spiffe://<trust-domain>/platform/<name>`); apps and
//! services are refused with 403. Reading (GET) is open to every platform
//! identity, such as a monitoring system's `platform/monitor`; changing
//! bans and grants only to `platform/cli` and `platform/operator`. The
//! `portcullis` command issues itself a short-lived `platform/cli`
//! certificate to call it. Only `platform/egress`, an egress proxy running
//! in another process, may post its refusals to the guard, and it may do
//! nothing else but read.
//!
//! | route | does |
//! | --- | --- |
//! | `GET /metrics` | Prometheus text exposition |
//! | `GET /v1/status` | per-app statistics over the last minute and the decision in force |
//! | `GET /v1/bans`, `GET /v1/bans/{id}` | decisions (`?all=true` for every decision, `?app=ID` for one app) |
//! | `POST /v1/bans` | adds an operator ban or throttle |
//! | `DELETE /v1/bans/{id}` | lifts a decision |
//! | `GET /v1/grants`, `POST /v1/grants`, `DELETE /v1/grants` | lists, adds and withdraws grants |
//! | `POST /v1/guard/egress-violations` | hands an egress proxy's refusals to the guard (`platform/egress` only) |

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use portcullis_guard::{DecisionReceiver, StatsReader, Verdict};
use portcullis_store::{DecisionKind, DecisionOrigin, NewDecision, Store, now_ms};
use portcullis_token::server::{TlsClient, TokenService};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{Value, json};

/// The parts of the running platform that the operator API uses.
#[derive(Clone)]
pub(crate) struct OperatorState {
    pub trust_domain: String,
    pub events: portcullis_guard::EventSender,
    pub store: Store,
    pub stats: StatsReader,
    pub decisions: DecisionReceiver,
    pub token: TokenService,
    pub registry: Arc<Registry>,
}

/// An API error: a status and a short message for the operator.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.0.is_server_error() {
            tracing::error!(status = %self.0, error = %self.1, "operator API failure");
        }
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<portcullis_store::StoreError> for ApiError {
    fn from(error: portcullis_store::StoreError) -> Self {
        Self(StatusCode::INTERNAL_SERVER_ERROR, format!("store: {error}"))
    }
}

type ApiResult = Result<Response, ApiError>;

pub(crate) fn router(state: OperatorState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/bans", get(list_bans).post(add_ban))
        .route("/v1/bans/{id}", get(show_ban).delete(lift_ban))
        .route("/v1/grants", get(list_grants).post(add_grant).delete(remove_grant))
        .route(crate::report::EGRESS_VIOLATIONS_PATH, axum::routing::post(egress_violations))
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_platform_identity))
        .with_state(state)
}

/// Platform components that may change bans and grants.
const WRITERS: [&str; 2] = ["cli", "operator"];

/// The platform component that may report egress refusals.
const REPORTER: &str = "egress";

/// Maximum length of the host or rule text in a reported refusal, in bytes.
const MAX_REPORTED_TEXT: usize = 512;

/// Most tolerated clock difference of a reported refusal's time, in
/// milliseconds; a refusal from further in the future is refused.
const MAX_CLOCK_SKEW_MS: i64 = 60_000;

/// Hands a separate egress proxy's refusals to the guard. The whole batch
/// is checked before any refusal is queued, so a bad batch changes nothing.
async fn egress_violations(State(state): State<OperatorState>, body: axum::body::Bytes) -> ApiResult {
    let batch: crate::report::Violations =
        serde_json::from_slice(&body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))?;
    if batch.violations.len() > crate::report::MAX_BATCH {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} refusals in one batch; send at most {}", batch.violations.len(), crate::report::MAX_BATCH),
        ));
    }
    let now = now_ms();
    let mut events = Vec::with_capacity(batch.violations.len());
    for violation in batch.violations {
        let app_id = portcullis_config::AppId::parse(&violation.app_id).map_err(|e| {
            ApiError(StatusCode::BAD_REQUEST, format!("app_id {:?} is not a valid app id: {e}", violation.app_id))
        })?;
        if violation.host.len() > MAX_REPORTED_TEXT || violation.rule.len() > MAX_REPORTED_TEXT {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("host and rule may have at most {MAX_REPORTED_TEXT} bytes each"),
            ));
        }
        if violation.at_ms > now + MAX_CLOCK_SKEW_MS || violation.at_ms < 0 {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("at_ms {} is not a time in the past (now is {now})", violation.at_ms),
            ));
        }
        events.push(portcullis_guard::GuardEvent::EgressViolation {
            app_id,
            host: violation.host,
            rule: violation.rule,
            at_ms: violation.at_ms,
        });
    }
    let accepted = events.len();
    for event in events {
        state.events.send(event);
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": accepted }))).into_response())
}

/// Refuses every caller but a platform component of this trust domain, and
/// changes from any component but [`WRITERS`].
async fn require_platform_identity(
    State(state): State<OperatorState>,
    client: Option<Extension<TlsClient>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let prefix = format!("spiffe://{}/platform/", state.trust_domain);
    let reading = request.method() == axum::http::Method::GET;
    let reporting = request.uri().path() == crate::report::EGRESS_VIOLATIONS_PATH;
    match client {
        Some(Extension(client)) if client.spiffe_id.starts_with(&prefix) => {
            let component = &client.spiffe_id[prefix.len()..];
            let allowed = if reporting { component == REPORTER } else { reading || WRITERS.contains(&component) };
            if allowed {
                next.run(request).await
            } else {
                // Read the small request body first: an HTTP/2 client whose
                // body is left unread sees the stream reset, not the 403.
                let _ = axum::body::to_bytes(request.into_body(), 64 * 1024).await;
                tracing::warn!(identity = %client.spiffe_id, "operator API rejected a change from a read-only identity");
                let message = if reporting {
                    format!("platform/{component} may not report egress refusals; only platform/{REPORTER} may")
                } else {
                    format!("platform/{component} may only read; changes need platform/cli or platform/operator")
                };
                ApiError(StatusCode::FORBIDDEN, message).into_response()
            }
        }
        Some(Extension(client)) => {
            tracing::warn!(identity = %client.spiffe_id, "operator API rejected a non-platform identity");
            ApiError(StatusCode::FORBIDDEN, "the operator API requires a platform certificate".into()).into_response()
        }
        None => ApiError(StatusCode::UNAUTHORIZED, "a client certificate is required".into()).into_response(),
    }
}

async fn metrics(State(state): State<OperatorState>) -> ApiResult {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &state.registry)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}

/// Returns the decision in force for an app as JSON, or null.
fn verdict_json(verdict: Verdict) -> Value {
    match verdict {
        Verdict::Allow => Value::Null,
        Verdict::Ban { until, reason, decision_id } => {
            json!({ "kind": "ban", "until": until, "reason": reason, "decision_id": decision_id })
        }
        Verdict::Throttle { per_second, until, decision_id } => {
            json!({ "kind": "throttle", "per_second": per_second, "until": until, "decision_id": decision_id })
        }
    }
}

async fn status(State(state): State<OperatorState>) -> ApiResult {
    let now = now_ms();
    let snapshot = state.decisions.borrow().clone();

    // Registered apps, and apps with a decision in force though unregistered.
    let mut ids: BTreeSet<String> = state.store.apps().await?.into_iter().map(|a| a.id).collect();
    ids.extend(snapshot.in_force(now).iter().map(|d| d.decision.app_id.clone()));

    let apps: Vec<Value> = ids
        .iter()
        .map(|id| {
            let stats = state.stats.app(id);
            json!({
                "app_id": id,
                "stats": stats,
                "decision": verdict_json(snapshot.verdict(id, now)),
            })
        })
        .collect();
    Ok(Json(json!({ "kind": "status", "window_seconds": portcullis_guard::STATS_WINDOW.as_secs(), "apps": apps }))
        .into_response())
}

#[derive(Debug, Deserialize)]
struct BanQuery {
    #[serde(default)]
    all: bool,
    app: Option<String>,
}

async fn list_bans(State(state): State<OperatorState>, Query(query): Query<BanQuery>) -> ApiResult {
    let now = now_ms();
    let decisions: Vec<_> = if query.all {
        state.store.decisions(query.app.as_deref()).await?
    } else {
        let mut records = state.store.decisions_in_force(now).await?;
        records.retain(|d| query.app.as_deref().is_none_or(|app| d.decision.app_id == app));
        records
    };
    Ok(Json(json!({ "kind": "decision_list", "decisions": decisions })).into_response())
}

async fn show_ban(State(state): State<OperatorState>, Path(id): Path<i64>) -> ApiResult {
    match state.store.decision(id).await? {
        Some(record) => Ok(Json(json!({ "kind": "decision", "decision": record })).into_response()),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no decision {id}"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBan {
    app_id: String,
    /// Seconds.
    duration_secs: u64,
    reason: String,
    throttle_per_second: Option<f64>,
}

async fn add_ban(State(state): State<OperatorState>, Json(ban): Json<NewBan>) -> ApiResult {
    let app = portcullis_config::AppId::parse(&ban.app_id)
        .map_err(|rule| ApiError(StatusCode::BAD_REQUEST, format!("invalid app_id {:?}: {rule}", ban.app_id)))?;
    if !(1..=365 * 86_400).contains(&ban.duration_secs) {
        return Err(ApiError(StatusCode::BAD_REQUEST, "duration_secs must be from 1 to 31536000".into()));
    }
    let kind = match ban.throttle_per_second {
        None => DecisionKind::Ban,
        Some(rate) if (0.001..=1_000_000.0).contains(&rate) => DecisionKind::Throttle { per_second: rate },
        Some(rate) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("throttle_per_second {rate} is not from 0.001 to 1000000"),
            ));
        }
    };
    let now = now_ms();
    let decision = NewDecision {
        app_id: app.as_str().to_owned(),
        kind,
        reason: ban.reason,
        policy: None,
        evidence: "{}".into(),
        origin: DecisionOrigin::Operator,
        simulated: false,
        started_at: now,
        expires_at: Some(now + (ban.duration_secs * 1000) as i64),
    };
    let id = state.store.insert_decision(&decision).await?;
    if kind == DecisionKind::Ban {
        // A banned app's tokens stop working at once, not only its requests.
        state.token.invalidate_app(app.as_str()).await?;
    }
    tracing::info!(app_id = %app, decision_id = id, "operator decision added through the API");
    let record = state.store.decision(id).await?;
    Ok((StatusCode::CREATED, Json(json!({ "kind": "decision", "decision": record }))).into_response())
}

async fn lift_ban(State(state): State<OperatorState>, Path(id): Path<i64>) -> ApiResult {
    if !state.store.lift_decision(id, "operator", now_ms()).await? {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no decision {id} in force")));
    }
    tracing::info!(decision_id = id, "decision lifted through the API");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
struct GrantQuery {
    app: Option<String>,
}

async fn list_grants(State(state): State<OperatorState>, Query(query): Query<GrantQuery>) -> ApiResult {
    let grants = state.store.grants(query.app.as_deref()).await?;
    Ok(Json(json!({ "kind": "grant_list", "grants": grants })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    app_id: String,
    service: String,
    scope: String,
}

async fn add_grant(State(state): State<OperatorState>, Json(grant): Json<GrantBody>) -> ApiResult {
    // The token service's list, which a configuration reload replaces.
    let Some(scopes) = state.token.scopes_of_service(&grant.service) else {
        return Err(ApiError(StatusCode::BAD_REQUEST, format!("service {:?} is not defined", grant.service)));
    };
    if !scopes.contains(&grant.scope) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "service {} does not define scope {:?}; it defines {}",
                grant.service,
                grant.scope,
                scopes.join(", ")
            ),
        ));
    }
    if state.store.app(&grant.app_id).await?.is_none() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("app {:?} is not registered", grant.app_id)));
    }
    let added = state.store.add_grant(&grant.app_id, &grant.service, &grant.scope, "operator").await?;
    tracing::info!(app_id = %grant.app_id, service = %grant.service, scope = %grant.scope, "grant added through the API");
    let status = if added { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({ "added": added }))).into_response())
}

async fn remove_grant(State(state): State<OperatorState>, Json(grant): Json<GrantBody>) -> ApiResult {
    if !state.store.remove_grant(&grant.app_id, &grant.service, &grant.scope).await? {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("app {:?} has no grant {}", grant.app_id, grant.scope)));
    }
    // Pushed to this process's gateway at once; others reload within 1 s.
    state.token.invalidate_app(&grant.app_id).await?;
    tracing::info!(app_id = %grant.app_id, scope = %grant.scope, "grant withdrawn through the API");
    Ok(StatusCode::NO_CONTENT.into_response())
}
