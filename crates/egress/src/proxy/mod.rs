//! The egress forward proxy server: plain HTTP in absolute form and HTTPS
//! (or any TCP protocol) through CONNECT, on hyper 1 and Tokio.
//!
//! # Request path
//!
//! 1. The caller is identified by `Proxy-Authorization: Basic` with its app
//!    id as the user name and its proxy secret as the password
//!    ([`ProxySecrets`]). Missing or wrong credentials get 407 with
//!    `Proxy-Authenticate: Basic realm="portcullis-egress"` (RFC 9110
//!    section 11.7.1).
//! 2. A banned app gets 403 ([`BanCheck`]); an app without registered rules
//!    ([`AppDirectory`]) gets 403 as well.
//! 3. The request target must be authority-form for CONNECT (RFC 9110
//!    section 9.3.6), or absolute-form `http://` for any other method (RFC
//!    9112 section 3.2.2). Any other target gets 400.
//! 4. An app that has reached `max_bytes_per_app` in the current period
//!    gets 403 naming the rule `limit:bytes`, with an event. Otherwise it
//!    takes one of its `max_tunnels_per_app` slots, or gets 429.
//! 5. The engine decides ([`Engine::evaluate`]); the decision becomes one
//!    [`EgressEvent`] on the bounded event queue and one log line. A
//!    refusal gets 403 naming the rule id and reason code.
//! 6. The proxy connects to the checked addresses within
//!    `connect_timeout` (504 on timeout, 502 on failure) and either answers
//!    200 and copies bytes both ways (CONNECT), or forwards the request
//!    without hop-by-hop and `Proxy-*` headers and streams the response
//!    back (absolute form).
//!
//! Tunnels and forwarded exchanges close after `idle_timeout` without a
//! byte either way, after `max_tunnel_lifetime` in any case, and when their
//! app reaches its byte cap ([`ByteCap`]); their bytes are recorded per app
//! through [`ByteAccounting`].

mod auth;
mod body;
mod error;
mod events;
mod forward;
mod handle;
mod reply;
mod secrets;
mod serve;
mod tunnel;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use portcullis_config::AppId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::Engine;
use crate::event::EgressEvent;
use crate::limits::{BYTE_CAP_PERIOD, ByteAccounting, ByteCap, ByteCounter, TunnelCounter};
use crate::metrics::EgressMetrics;
use crate::rules::{AppRules, EgressRules};

pub use error::ProxyError;
pub use events::{EVENT_BATCH_INTERVAL, next_batch};
pub use secrets::{ProxySecret, ProxySecrets, SECRET_BYTES, SECRET_CACHE_TTL};
pub use serve::serve;

use events::EventSink;

/// The realm the proxy names in `Proxy-Authenticate`.
pub const REALM: &str = "portcullis-egress";

/// Decides whether an app is banned, so that its requests get 403 before
/// any decision. The guard supplies the real check; a closure
/// `Fn(&AppId) -> bool` works as one.
pub trait BanCheck: Send + Sync {
    /// Returns whether `app_id` is banned now. Called once per request, on
    /// the request path, so it must not block.
    fn is_banned(&self, app_id: &AppId) -> bool;
}

impl<F> BanCheck for F
where
    F: Fn(&AppId) -> bool + Send + Sync,
{
    fn is_banned(&self, app_id: &AppId) -> bool {
        self(app_id)
    }
}

/// The default [`BanCheck`]: no app is ever banned.
#[derive(Debug, Clone, Copy, Default)]
pub struct NeverBanned;

impl BanCheck for NeverBanned {
    fn is_banned(&self, _app_id: &AppId) -> bool {
        false
    }
}

/// The egress rules of the apps deployed behind this proxy, keyed by app
/// id. The platform rebuilds it from the store while it runs (see
/// [`replace_all`](Self::replace_all)), and an authenticated app without
/// rules gets 403.
#[derive(Debug, Default)]
pub struct AppDirectory {
    apps: RwLock<HashMap<AppId, Arc<AppRules>>>,
}

impl AppDirectory {
    /// Creates an empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `rules` under their app id, replacing earlier rules.
    pub fn insert(&self, rules: AppRules) {
        let mut apps = self.apps.write().unwrap_or_else(PoisonError::into_inner);
        apps.insert(rules.app_id().clone(), Arc::new(rules));
    }

    /// Replaces every app's rules with `rules` in one step, so a lookup gets
    /// either the whole old directory or the whole new one. Returns the ids
    /// of the apps whose rules were added, changed or removed, sorted.
    pub fn replace_all(&self, rules: Vec<AppRules>) -> Vec<AppId> {
        let mut next: HashMap<AppId, Arc<AppRules>> =
            rules.into_iter().map(|rules| (rules.app_id().clone(), Arc::new(rules))).collect();
        let mut apps = self.apps.write().unwrap_or_else(PoisonError::into_inner);

        let mut changed: Vec<AppId> = Vec::new();
        for (app_id, rules) in &mut next {
            match apps.get(app_id) {
                // Keep the old allocation when nothing changed.
                Some(old) if old == rules => *rules = Arc::clone(old),
                _ => changed.push(app_id.clone()),
            }
        }
        changed.extend(apps.keys().filter(|app_id| !next.contains_key(*app_id)).cloned());
        *apps = next;
        drop(apps);

        changed.sort();
        changed
    }

    /// Removes an app's rules. Returns false if none were registered.
    pub fn remove(&self, app_id: &AppId) -> bool {
        let mut apps = self.apps.write().unwrap_or_else(PoisonError::into_inner);
        apps.remove(app_id).is_some()
    }

    /// Returns the rules of every registered app, in no particular order.
    pub fn all(&self) -> Vec<Arc<AppRules>> {
        let apps = self.apps.read().unwrap_or_else(PoisonError::into_inner);
        apps.values().cloned().collect()
    }

    /// Returns the rules registered for `app_id`.
    pub fn get(&self, app_id: &AppId) -> Option<Arc<AppRules>> {
        let apps = self.apps.read().unwrap_or_else(PoisonError::into_inner);
        apps.get(app_id).cloned()
    }
}

/// Limits of the proxy's own listener, which the platform configuration
/// does not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Time a client has to send a whole request head. After it, hyper
    /// closes the connection.
    pub header_read_timeout: Duration,
    /// Maximum size of a request head (request line and header fields), in
    /// bytes; a larger head gets 431. At least 8192, the smallest read
    /// buffer hyper accepts.
    pub max_head_bytes: usize,
    /// Time that connections and tunnels get to finish after shutdown
    /// starts, before they are closed.
    pub shutdown_grace: Duration,
}

impl Default for ListenerLimits {
    /// 10 s to send a request head, 16 KiB per head, 10 s of grace.
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_head_bytes: 16 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Everything the proxy server needs, shared by all its connections.
pub struct Proxy {
    /// The engine in force; [`Proxy::reload_rules`] replaces it. A request
    /// loads it once, and its decision and its tunnel or exchange use that
    /// one.
    engine: ArcSwap<Engine>,
    apps: Arc<AppDirectory>,
    secrets: ProxySecrets,
    bans: Arc<dyn BanCheck>,
    tunnels: Arc<TunnelCounter>,
    bytes: Arc<dyn ByteAccounting>,
    cap: Option<Arc<ByteCap>>,
    metrics: EgressMetrics,
    events: EventSink,
    limits: ListenerLimits,
}

impl Proxy {
    /// Builds a proxy over `engine` (whose settings give the connect, idle
    /// and lifetime limits and `max_tunnels_per_app`), the deployed apps'
    /// rules, the secret store, and the sending side of the bounded event
    /// queue. No app is banned and bytes go to a fresh [`ByteCounter`]
    /// until set otherwise. With `max_bytes_per_app` set, each app's bytes
    /// are capped per [`BYTE_CAP_PERIOD`].
    pub fn new(
        engine: Engine,
        apps: Arc<AppDirectory>,
        secrets: ProxySecrets,
        events: mpsc::Sender<EgressEvent>,
    ) -> Self {
        let settings = engine.rules().settings();
        let tunnels = TunnelCounter::new(settings.max_tunnels_per_app);
        let cap = settings.max_bytes_per_app.map(|limit| ByteCap::new(limit, BYTE_CAP_PERIOD));
        Self {
            engine: ArcSwap::from_pointee(engine),
            apps,
            secrets,
            bans: Arc::new(NeverBanned),
            tunnels,
            bytes: Arc::new(ByteCounter::new()),
            cap,
            metrics: EgressMetrics::new(),
            events: EventSink::new(events),
            limits: ListenerLimits::default(),
        }
    }

    /// Returns the engine in force.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.load_full()
    }

    /// Replaces the platform-wide rules for requests that start from now
    /// on: host, CIDR, port and country rules, the mode and the connect,
    /// idle, lifetime and buffer settings. Open tunnels and exchanges keep
    /// the settings they started with. `max_tunnels_per_app` and
    /// `max_bytes_per_app` keep the values the proxy was built with; the
    /// apps' rules in the [`AppDirectory`] must be rebuilt from `rules` by
    /// the caller.
    pub fn reload_rules(&self, rules: Arc<EgressRules>) {
        let engine = self.engine.load().with_rules(rules);
        self.engine.store(Arc::new(engine));
    }

    /// Sets the ban check the guard supplies.
    pub fn with_ban_check(mut self, bans: Arc<dyn BanCheck>) -> Self {
        self.bans = bans;
        self
    }

    /// Sets where bytes copied per app are recorded.
    pub fn with_byte_accounting(mut self, bytes: Arc<dyn ByteAccounting>) -> Self {
        self.bytes = bytes;
        self
    }

    /// Sets the counters of decisions and bytes, registered by the caller.
    pub fn with_metrics(mut self, metrics: EgressMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Replaces the byte cap built from `max_bytes_per_app`, for example
    /// with one of a shorter period; `None` removes the cap.
    pub fn with_byte_cap(mut self, cap: Option<Arc<ByteCap>>) -> Self {
        self.cap = cap;
        self
    }

    /// Returns the per-app byte cap, if one is set.
    pub fn byte_cap(&self) -> Option<&Arc<ByteCap>> {
        self.cap.as_ref()
    }

    /// Sets the limits of the proxy's own listener.
    ///
    /// # Panics
    ///
    /// If `limits.max_head_bytes` is below 8192.
    pub fn with_listener_limits(mut self, limits: ListenerLimits) -> Self {
        assert!(limits.max_head_bytes >= 8192, "max_head_bytes must be at least 8192, got {}", limits.max_head_bytes);
        self.limits = limits;
        self
    }

    /// Returns the number of events dropped because the event queue was
    /// full or closed, since start.
    pub fn dropped_events(&self) -> u64 {
        self.events.dropped()
    }

    /// Returns the per-app tunnel counter.
    pub fn tunnels(&self) -> &Arc<TunnelCounter> {
        &self.tunnels
    }
}

/// The state of one [`serve`] call, shared by its connections and tunnels.
pub(crate) struct Context {
    proxy: Arc<Proxy>,
    /// Every connection, tunnel and upstream connection task.
    tasks: TaskTracker,
    /// Cancelled when shutdown starts: connections finish and close.
    draining: CancellationToken,
    /// Cancelled when the grace time is over: everything closes.
    abort: CancellationToken,
}
