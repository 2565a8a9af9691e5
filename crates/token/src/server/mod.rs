//! The OAuth 2.0 authorization server (RFC 6749) of the platform.
//!
//! Endpoints, on the token listener (client certificates required) unless
//! noted, both under the platform's TLS policy:
//!
//! | path | does |
//! | --- | --- |
//! | `POST /oauth2/token` | `client_credentials`, `authorization_code` with PKCE S256, `refresh_token` |
//! | `GET`, `POST /oauth2/authorize` | the customer consent page, on the consent listener |
//! | `POST /oauth2/introspect` | RFC 7662, for platform services and components |
//! | `POST /oauth2/revoke` | RFC 7009, for the token's app and platform components |
//! | `GET /.well-known/oauth-authorization-server` | RFC 8414 metadata |
//! | `GET /oauth2/jwks` | the signing keys (RFC 7517) |
//!
//! Apps authenticate with their mutual-TLS certificate (RFC 8705 section
//! 2.1, `tls_client_auth`). The listener puts the verified certificate and
//! its SPIFFE id into each request as a [`TlsClient`] extension. The consent
//! listener serves customers' browsers, which have no client certificate.

mod authorize;
mod error;
mod introspect;
mod listener;
mod metadata;
mod token_endpoint;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::routing::{get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http_body_util::BodyExt;
use portcullis_config::PlatformConfig;
use portcullis_store::Store;

pub use authorize::hash_customer_secret;
pub use error::OAuthError;
pub use listener::{serve_mutual_tls, serve_public_tls};

use crate::{InvalidationsHandle, TokenError, TokenIssuer, Verifier, VerifierKeys};

/// The verified client certificate of the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct TlsClient {
    /// The SPIFFE id from the certificate's URI SAN.
    pub spiffe_id: String,
    /// The DER certificate, for the token binding.
    pub certificate_der: Arc<Vec<u8>>,
}

/// The kind and name of a [`TlsClient`] within this trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An app, by id.
    App(String),
    /// A platform service, by name.
    Service(String),
    /// A component of Portcullis itself.
    Platform(String),
}

/// A service as the token service needs it: its audience and scopes.
#[derive(Debug, Clone)]
struct ServiceInfo {
    name: String,
    audience: String,
    scopes: Vec<String>,
}

/// An authorization code waiting to be exchanged (RFC 6749 section 4.1.2).
#[derive(Debug, Clone)]
struct PendingCode {
    app_id: String,
    customer_id: String,
    redirect_uri: String,
    audience: String,
    scopes: Vec<String>,
    /// The PKCE S256 challenge (RFC 7636 section 4.2).
    code_challenge: String,
    /// Seconds since the Unix epoch.
    expires_at: i64,
    /// Set once exchanged; a second exchange revokes this family.
    family_id: Option<String>,
}

/// Lifetime of an authorization code: 60 seconds.
const CODE_LIFETIME_SECS: i64 = 60;

/// The token service's shared state. Cheap to clone.
#[derive(Clone)]
pub struct TokenService {
    inner: Arc<Inner>,
}

struct Inner {
    trust_domain: String,
    /// Base URL of the consent listener, if configured.
    consent_url: Option<String>,
    issuer: TokenIssuer,
    verifier: Verifier,
    invalidations: InvalidationsHandle,
    store: Store,
    /// The configured services, replaced by [`TokenService::reload_services`].
    services: ArcSwap<Vec<ServiceInfo>>,
    refresh_lifetime_secs: i64,
    limiter: DefaultKeyedRateLimiter<String>,
    /// Codes by the SHA-256 of their value.
    codes: Mutex<HashMap<String, PendingCode>>,
    /// Key of the consent page's CSRF tokens.
    csrf_key: aws_lc_rs::hmac::Key,
    /// Consent forms already posted, by MAC, with their expiry (seconds).
    used_forms: Mutex<HashMap<String, i64>>,
    /// Consent sign-in attempts per customer id.
    sign_in_per_customer: DefaultKeyedRateLimiter<String>,
    /// Consent sign-in attempts overall, which bounds the Argon2 work.
    sign_in_overall: governor::DefaultDirectRateLimiter,
    clock: Arc<dyn Fn() -> i64 + Send + Sync>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService").field("issuer", &self.inner.issuer.issuer()).finish_non_exhaustive()
    }
}

/// Returns the services of `config` with their audiences in `trust_domain`.
fn services_of(config: &PlatformConfig, trust_domain: &str) -> Vec<ServiceInfo> {
    config
        .services
        .iter()
        .map(|service| ServiceInfo {
            name: service.name.clone(),
            audience: format!("spiffe://{trust_domain}/service/{}", service.name),
            scopes: service.scopes.clone(),
        })
        .collect()
}

/// Returns the current time in seconds since the Unix epoch.
fn system_clock() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl TokenService {
    /// Creates the service for `config`, with `issuer`'s keys, the shared
    /// `invalidations` (the gateway's verifier reads the same handle) and
    /// the system clock.
    pub fn new(
        config: &PlatformConfig,
        issuer: TokenIssuer,
        invalidations: InvalidationsHandle,
        store: Store,
    ) -> Result<Self, TokenError> {
        Self::with_clock(config, issuer, invalidations, store, Arc::new(system_clock))
    }

    /// Like [`TokenService::new`], with an injected clock returning seconds
    /// since the Unix epoch.
    pub fn with_clock(
        config: &PlatformConfig,
        issuer: TokenIssuer,
        invalidations: InvalidationsHandle,
        store: Store,
        clock: Arc<dyn Fn() -> i64 + Send + Sync>,
    ) -> Result<Self, TokenError> {
        let now = clock();
        let (public, grace) = {
            let keys = issuer.keys().read().unwrap_or_else(|p| p.into_inner());
            (keys.public_keys(now), keys.grace_secs())
        };
        let verifier = Verifier::new(
            issuer.issuer(),
            VerifierKeys::from_public_keys(&public)?,
            grace,
            crate::DEFAULT_LEEWAY_SECS,
            invalidations.clone(),
        );

        let services = services_of(config, &config.trust_domain);

        let token = &config.token;
        let burst = NonZeroU32::new(token.rate_burst.max(1)).expect("burst is at least 1");
        let period = Duration::from_secs_f64(1.0 / token.rate_per_second);
        let quota = Quota::with_period(period).expect("validated rate is positive").allow_burst(burst);

        let rng = aws_lc_rs::rand::SystemRandom::new();
        let csrf_key = aws_lc_rs::hmac::Key::generate(aws_lc_rs::hmac::HMAC_SHA256, &rng)
            .map_err(|_| TokenError::Key { kid: "(csrf)".into(), reason: "key generation failed".into() })?;

        Ok(Self {
            inner: Arc::new(Inner {
                trust_domain: config.trust_domain.clone(),
                consent_url: config.listeners.consent.map(|address| format!("https://{address}")),
                issuer,
                verifier,
                invalidations,
                store,
                services: ArcSwap::from_pointee(services),
                refresh_lifetime_secs: token.refresh_token_lifetime.as_secs() as i64,
                limiter: RateLimiter::keyed(quota),
                codes: Mutex::new(HashMap::new()),
                csrf_key,
                used_forms: Mutex::new(HashMap::new()),
                sign_in_per_customer: RateLimiter::keyed(
                    Quota::per_minute(NonZeroU32::new(5).expect("non-zero"))
                        .allow_burst(NonZeroU32::new(5).expect("non-zero")),
                ),
                sign_in_overall: RateLimiter::direct(
                    Quota::per_second(NonZeroU32::new(10).expect("non-zero"))
                        .allow_burst(NonZeroU32::new(20).expect("non-zero")),
                ),
                clock,
            }),
        })
    }

    /// Returns the routes of the token listener, which requires client
    /// certificates: token, introspection, revocation, metadata and JWKS.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/oauth2/token", post(token_endpoint::token))
            .route("/oauth2/introspect", post(introspect::introspect))
            .route("/oauth2/revoke", post(introspect::revoke))
            .route("/.well-known/oauth-authorization-server", get(metadata::metadata))
            .route("/oauth2/jwks", get(metadata::jwks))
            .with_state(self.clone())
    }

    /// Returns the routes of the consent listener, which browsers reach without a
    /// client certificate: the authorization endpoint and the metadata.
    pub fn consent_router(&self) -> Router {
        Router::new()
            .route("/oauth2/authorize", get(authorize::show).post(authorize::decide))
            .route("/.well-known/oauth-authorization-server", get(metadata::metadata))
            .with_state(self.clone())
    }

    /// Returns a verifier sharing this service's keys and invalidations, for the
    /// gateway.
    pub fn verifier(&self) -> &Verifier {
        &self.inner.verifier
    }

    /// Seconds since the Unix epoch, from the injected clock.
    fn now(&self) -> i64 {
        (self.inner.clock)()
    }

    /// Records a consent form as posted; returns false if it was posted
    /// before. `expires_at` is in seconds.
    fn claim_form(&self, mac: &str, expires_at: i64) -> bool {
        let mut used = self.inner.used_forms.lock().unwrap_or_else(|p| p.into_inner());
        if used.contains_key(mac) {
            return false;
        }
        used.insert(mac.to_owned(), expires_at);
        true
    }

    /// Returns whether another consent sign-in attempt for `customer_id` is
    /// allowed now: at most 5 a minute per customer id and 10 a second
    /// overall, with small bursts.
    fn allow_sign_in(&self, customer_id: &str) -> bool {
        self.inner.sign_in_overall.check().is_ok()
            && self.inner.sign_in_per_customer.check_key(&customer_id.to_owned()).is_ok()
    }

    /// Classifies a client certificate's SPIFFE id within the trust domain.
    fn caller(&self, client: Option<&TlsClient>) -> Option<Caller> {
        let client = client?;
        let path = client.spiffe_id.strip_prefix("spiffe://")?.strip_prefix(self.inner.trust_domain.as_str())?;
        let (kind, name) = path.strip_prefix('/')?.split_once('/')?;
        if name.is_empty() || name.contains('/') {
            return None;
        }
        match kind {
            "app" => Some(Caller::App(name.to_owned())),
            "service" => Some(Caller::Service(name.to_owned())),
            "platform" => Some(Caller::Platform(name.to_owned())),
            _ => None,
        }
    }

    /// Finds the one service all `scopes` belong to.
    fn service_of(&self, scopes: &[String]) -> Option<ServiceInfo> {
        let first = scopes.first()?;
        let services = self.inner.services.load();
        let service = services.iter().find(|s| s.scopes.contains(first))?;
        scopes.iter().all(|scope| service.scopes.contains(scope)).then(|| service.clone())
    }

    /// Replaces the services and scopes tokens can be issued for with those
    /// of `config`. Tokens already issued keep working until they expire or
    /// are invalidated; the gateway decides whether their service still has
    /// routes. The trust domain of the running service is kept.
    pub fn reload_services(&self, config: &PlatformConfig) {
        self.inner.services.store(Arc::new(services_of(config, &self.inner.trust_domain)));
    }

    /// Returns the scopes of the configured service `name`, or `None` if no
    /// service has that name.
    pub fn scopes_of_service(&self, name: &str) -> Option<Vec<String>> {
        let services = self.inner.services.load();
        services.iter().find(|service| service.name == name).map(|service| service.scopes.clone())
    }

    /// Returns every scope of every configured service, in file order.
    fn scopes(&self) -> Vec<String> {
        self.inner.services.load().iter().flat_map(|service| service.scopes.iter().cloned()).collect()
    }

    /// Refuses every token of `app_id` issued up to now, in the store (for
    /// other processes) and in the shared handle (for this one, at once).
    /// Used when a grant is withdrawn, the app is banned or its credentials
    /// are rotated.
    pub async fn invalidate_app(&self, app_id: &str) -> Result<(), portcullis_store::StoreError> {
        let now = self.now();
        self.inner.store.set_token_cut_off(app_id, now).await?;
        self.inner.store.revoke_refresh_tokens_of_app(app_id, now * 1000).await?;
        self.inner.invalidations.cut_off_app(app_id, now);
        Ok(())
    }

    /// Reloads revoked tokens and cut-offs from the store, picking up
    /// changes made by other processes (the CLI withdrawing a grant).
    pub async fn sync_invalidations(&self) -> Result<(), portcullis_store::StoreError> {
        let now = self.now();
        let revoked = self.inner.store.revoked_access_tokens(now).await?;
        let cut_offs = self.inner.store.token_cut_offs().await?;
        self.inner.invalidations.replace(revoked, cut_offs);
        self.inner.codes.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, code| code.expires_at > now);
        self.inner.used_forms.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, expires_at| *expires_at > now);
        self.inner.sign_in_per_customer.retain_recent();
        Ok(())
    }

    /// Replaces the signing key once it is `rotation` old, saves the key
    /// file at `key_file`, and hands the new public keys to the verifier.
    /// Returns whether a new key was made.
    pub fn rotate_keys_if_due(&self, rotation: Duration, key_file: &std::path::Path) -> Result<bool, TokenError> {
        let now = self.now();
        let mut keys = self.inner.issuer.keys().write().unwrap_or_else(|p| p.into_inner());
        let due = keys.current_created_at() + rotation.as_secs() as i64 <= now;
        if due {
            keys.rotate(now)?;
            keys.save(key_file)?;
        } else {
            keys.prune(now);
        }
        self.inner.verifier.set_keys(VerifierKeys::from_public_keys(&keys.public_keys(now))?);
        Ok(due)
    }

    /// Runs [`TokenService::rotate_keys_if_due`] once a minute until the
    /// task is dropped; errors are logged and retried on the next tick.
    pub async fn run_key_rotation(self, rotation: Duration, key_file: std::path::PathBuf) {
        let mut ticker = tokio::time::interval(Duration::from_secs(60));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(error) = self.rotate_keys_if_due(rotation, &key_file) {
                tracing::error!(%error, "rotating the token signing key failed; retrying in a minute");
            }
        }
    }

    /// Runs [`TokenService::sync_invalidations`] every `period` until the
    /// task is dropped; errors are logged and retried on the next tick.
    pub async fn run_sync(self, period: Duration) {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(error) = self.sync_invalidations().await {
                tracing::warn!(%error, "reloading token invalidations from the store failed; retrying");
            }
        }
    }
}

/// Hex SHA-256 of a secret, the form in which codes and refresh tokens are
/// kept, so a copy of the store or of memory does not yield usable tokens.
fn secret_hash(secret: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random secret: 32 bytes, base64url.
fn random_secret() -> String {
    use aws_lc_rs::rand::SecureRandom;
    use base64::Engine;
    let mut bytes = [0_u8; 32];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes).expect("system random number generator");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Parses an `application/x-www-form-urlencoded` body or query, rejecting
/// a repeated parameter (RFC 6749 section 3.1 and 3.2).
/// The largest form body any endpoint reads, in bytes. Token, introspection,
/// revocation and consent requests are a few hundred bytes, so 64 KiB
/// leaves room without letting a client make the service buffer megabytes.
pub const MAX_FORM_BYTES: usize = 64 * 1024;

/// The maximum number of bytes of an over-long body that are read and
/// discarded before the 413 is sent, and the maximum time for that. See
/// [`FormBody`].
const DISCARD_MAX_BYTES: u64 = 8 * 1024 * 1024;
const DISCARD_TIMEOUT: Duration = Duration::from_secs(5);

/// A request body read whole, up to [`MAX_FORM_BYTES`]. A longer body is
/// rejected with an RFC 6749 JSON error and status 413, and a body that
/// fails to arrive with 400, instead of axum's plain-text rejections.
///
/// Over HTTP/1.1 a declared length over the limit is rejected before the
/// body is read, so hyper sends no 100 Continue and the client no body.
/// Over HTTP/2 an early response ends in a stream reset that some clients
/// (curl 7.88) report as an error instead of the 413, so the rest of the
/// body is read and discarded first, up to [`DISCARD_MAX_BYTES`] within
/// [`DISCARD_TIMEOUT`].
pub(super) struct FormBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for FormBody {
    type Rejection = OAuthError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let http2 = request.version() == axum::http::Version::HTTP_2;
        let declared = request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        let mut body = request.into_body();

        let too_large = |mut body: axum::body::Body| async move {
            tracing::info!(declared, http2, "request body rejected: longer than {MAX_FORM_BYTES} bytes");
            if http2 {
                discard(&mut body).await;
            }
            Err(OAuthError::body_too_large(MAX_FORM_BYTES))
        };
        if declared.is_some_and(|length| length > MAX_FORM_BYTES as u64) {
            return too_large(body).await;
        }

        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| {
                tracing::info!(%error, "reading the request body failed");
                OAuthError::invalid_request("reading the request body failed; send the whole form again")
            })?;
            if let Ok(data) = frame.into_data() {
                if bytes.len() + data.len() > MAX_FORM_BYTES {
                    return too_large(body).await;
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok(FormBody(Bytes::from(bytes)))
    }
}

/// Reads and drops the rest of `body`, within the bounds above.
async fn discard(body: &mut axum::body::Body) {
    let mut read = 0u64;
    let _ = tokio::time::timeout(DISCARD_TIMEOUT, async {
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |data| data.len() as u64);
            if read > DISCARD_MAX_BYTES {
                break;
            }
        }
    })
    .await;
}

fn parse_form(bytes: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut params = HashMap::new();
    for (name, value) in form_urlencoded::parse(bytes) {
        if params.insert(name.to_string(), value.to_string()).is_some() {
            return Err(OAuthError::invalid_request(format!("parameter {name} is repeated")));
        }
    }
    Ok(params)
}
