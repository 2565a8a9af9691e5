//! The Portcullis control plane: starts the platform's parts from one
//! configuration and wires them together.
//!
//! [`Platform::start`] opens the store, loads the platform CA, issues each
//! listener its own certificate (renewed before it expires), and starts:
//!
//! - the trust cache that every app-facing listener consults for pins and
//!   revocations, reloaded every second;
//! - the guard, with its event queue and decision subscription;
//! - the token service on `listeners.token` (client certificates required)
//!   and, if configured, the consent page on `listeners.consent`, with the
//!   reload of token invalidations twice a second and signing key rotation;
//! - the gateway on `listeners.gateway`, sharing the token service's
//!   verifier, reading the guard's decisions and sending it one access
//!   event per request (also written to `<data-dir>/access.jsonl`);
//! - the egress proxy on `listeners.egress`, with every registered app's
//!   rules (the live space's list), the guard's bans, and its events sent
//!   to the guard (refusals) and to `<data-dir>/egress.jsonl`.
//!
//! - with the Docker driver, ban enforcement on app containers (a banned
//!   app's container is disconnected from its networks until the ban ends);
//! - the operator API on `listeners.operator` (platform certificates only):
//!   status, bans, grants and Prometheus metrics.
//!
//! [`Platform::reload`] applies a new configuration's routes and gateway
//! limits without a restart (see [`reload`] for what needs a restart), and
//! [`Platform::shutdown`] stops accepting, drains the listeners and stops
//! the guard.

mod egress_apps;
mod gateway_apps;
mod operator;
pub mod reload;
pub mod report;

pub use reload::ReloadOutcome;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use portcullis_config::PlatformConfig;
use portcullis_guard::{Guard, RunningGuard, SystemClock};
use portcullis_identity::{
    CertificateKind, IssuedLeaf, LeafRequest, Lifetimes, PlatformAcceptor, PlatformCa, PlatformClientVerifier,
    RefresherGuard, RenewalGuard, RenewingCertificate, SpiffeId, TrustCache, policy,
};
use portcullis_store::Store;
use portcullis_token::server::TokenService;
use portcullis_token::{InvalidationsHandle, SigningKeys, TokenIssuer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A failure to start the platform.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// The CA directory has no usable CA.
    #[error("no platform CA in {dir}: {source}; create one with `portcullis ca init --config FILE`")]
    NoCa {
        /// The CA directory.
        dir: PathBuf,
        /// Why loading failed.
        source: portcullis_identity::IdentityError,
    },

    /// The CA is for another trust domain than the configuration.
    #[error("the CA in {dir} is for trust domain {found:?}, but the configuration says {expected:?}")]
    TrustDomainMismatch {
        /// The CA directory.
        dir: PathBuf,
        /// The CA's trust domain.
        found: String,
        /// The configuration's.
        expected: String,
    },

    /// A listener could not bind its address.
    #[error("cannot listen on {address} for the {listener} listener: {source}; is another process using it?")]
    Bind {
        /// Which listener (the configuration key under `listeners`).
        listener: &'static str,
        /// The address.
        address: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },

    /// Issuing a certificate or building a TLS configuration failed.
    #[error("identity: {0}")]
    Identity(#[from] portcullis_identity::IdentityError),

    /// The token service could not start.
    #[error("token service: {0}")]
    Token(#[from] portcullis_token::TokenError),

    /// The guard could not start.
    #[error("guard: {0}")]
    Guard(#[from] portcullis_guard::GuardError),

    /// The gateway could not start.
    #[error("gateway: {0}")]
    Gateway(#[from] portcullis_gateway::GatewayError),

    /// The egress proxy could not start.
    #[error("egress proxy: {0}")]
    Egress(#[from] portcullis_egress::EgressError),

    /// A log file could not be opened.
    #[error("cannot open {path}: {source}")]
    LogFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] portcullis_store::StoreError),

    /// The trust domain does not make a valid server name for reporting.
    #[error("cannot report egress refusals to {target}: operator.<trust domain> is not a valid server name")]
    ReportTarget {
        /// The operator API address.
        target: SocketAddr,
    },
}

/// The destination of the egress proxy's refusals.
enum ViolationSink {
    /// The guard in this process.
    Local(portcullis_guard::EventSender),
    /// The guard of the gateway part, through its operator API.
    Remote(report::Reporter),
}

/// Addresses the running platform listens on.
#[derive(Debug, Clone)]
pub struct Addresses {
    /// The gateway.
    pub gateway: SocketAddr,
    /// The egress proxy.
    pub egress: SocketAddr,
    /// The operator API.
    pub operator: SocketAddr,
    /// The token service.
    pub token: SocketAddr,
    /// The consent page, if configured.
    pub consent: Option<SocketAddr>,
}

/// Which parts of the platform one process runs.
///
/// With the Docker driver the gateway and the egress proxy run in separate
/// containers, one process each. Each process runs its own guard on the
/// events its part produces (access events, or egress refusals). Both
/// guards store their decisions and reload the other's from the store every
/// [`portcullis_guard::POLL_INTERVAL`], so a ban decided by either is
/// enforced by both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parts {
    /// Every part in one process.
    #[default]
    All,
    /// The gateway, the token service, the consent page and the operator
    /// API, with a guard fed by the gateway's access events.
    Gateway,
    /// The egress proxy. Its refusals go to the guard of the gateway part
    /// at `report_to` (an operator API address), or, without it, to a guard
    /// in this process.
    Egress {
        /// The operator API of the gateway part.
        report_to: Option<SocketAddr>,
    },
}

impl Parts {
    fn gateway(self) -> bool {
        matches!(self, Self::All | Self::Gateway)
    }

    fn egress(self) -> bool {
        matches!(self, Self::All | Self::Egress { .. })
    }
}

/// The running platform.
pub struct Platform {
    /// The configuration the platform started with. Reloads compare
    /// against it, because the settings they cannot apply keep these values.
    config: PlatformConfig,
    addresses: Addresses,
    gateway: Option<portcullis_gateway::RunningGateway>,
    access_writer: Option<portcullis_gateway::FileWriter>,
    guard: RunningGuard,
    token: Option<TokenService>,
    /// The configuration in force, which the gateway's app services and
    /// the egress proxy's app rules are rebuilt from; a reload replaces it.
    current: Arc<ArcSwap<PlatformConfig>>,
    /// Changed after a reload, so both are rebuilt at once.
    reloaded: watch::Sender<()>,
    /// The egress proxy, whose platform-wide rules a reload replaces.
    egress: Option<Arc<portcullis_egress::proxy::Proxy>>,
    /// The egress proxy's app rules, which a reload rebuilds at once.
    egress_apps: Option<Arc<portcullis_egress::proxy::AppDirectory>>,
    /// The gateway's apps and spaces, whose services a reload replaces.
    gateway_spaces: Option<Arc<portcullis_gateway::AppServices>>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    _renewals: Vec<RenewalGuard>,
    _trust_refresher: RefresherGuard,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform").field("addresses", &self.addresses).finish_non_exhaustive()
    }
}

/// Completes when `stop` becomes true or its sender is dropped.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

async fn bind(listener: &'static str, address: SocketAddr) -> Result<TcpListener, PlatformError> {
    TcpListener::bind(address).await.map_err(|source| PlatformError::Bind { listener, address, source })
}

impl Platform {
    /// Starts every part of the platform that `config` describes, with its
    /// CA and keys in `data_dir` and its state in `store`.
    pub async fn start(config: &PlatformConfig, data_dir: &Path, store: Store) -> Result<Self, PlatformError> {
        Self::start_parts(config, data_dir, store, Parts::All).await
    }

    /// Starts the `parts` of the platform that `config` describes; the
    /// listeners of the other parts are neither bound nor served.
    pub async fn start_parts(
        config: &PlatformConfig,
        data_dir: &Path,
        store: Store,
        parts: Parts,
    ) -> Result<Self, PlatformError> {
        let ca_dir = data_dir.join("ca");
        let ca =
            Arc::new(PlatformCa::load(&ca_dir).map_err(|source| PlatformError::NoCa { dir: ca_dir.clone(), source })?);
        if ca.trust_domain().as_str() != config.trust_domain {
            return Err(PlatformError::TrustDomainMismatch {
                dir: ca_dir,
                found: ca.trust_domain().as_str().to_owned(),
                expected: config.trust_domain.clone(),
            });
        }
        let lifetimes = Lifetimes::from_settings(&config.identity);

        let trust = TrustCache::new();
        trust.refresh(&store).await?;
        let trust_refresher = trust.spawn_refresher(store.clone(), portcullis_identity::REFRESH_INTERVAL);

        let (stop, stop_rx) = watch::channel(false);
        let mut servers = Vec::new();
        let mut background = Vec::new();
        let mut renewals = Vec::new();
        let current = Arc::new(ArcSwap::from_pointee(config.clone()));
        let (reloaded, _) = watch::channel(());

        // Guard.
        let mut registry = prometheus_client::registry::Registry::default();
        let guard = Guard::start(config.guard.clone(), store.clone(), Arc::new(SystemClock)).await?;
        guard.metrics().register(&mut registry);
        let stats = guard.stats_reader();
        let guard = guard.spawn(portcullis_guard::DEFAULT_QUEUE_CAPACITY);

        let mut addresses = Addresses {
            gateway: config.listeners.gateway,
            egress: config.listeners.egress,
            operator: config.listeners.operator,
            token: config.listeners.token,
            consent: config.listeners.consent,
        };
        let mut token = None;
        let mut gateway = None;
        let mut access_writer = None;
        let mut gateway_spaces = None;

        if parts.gateway() {
            // Token service.
            let token_listener = bind("token", config.listeners.token).await?;
            let consent_listener = match config.listeners.consent {
                Some(address) => Some(bind("consent", address).await?),
                None => None,
            };
            addresses.token = token_listener.local_addr().map_err(|source| PlatformError::Bind {
                listener: "token",
                address: config.listeners.token,
                source,
            })?;
            addresses.consent = consent_listener.as_ref().and_then(|l| l.local_addr().ok());

            let token_dir = data_dir.join("token");
            std::fs::create_dir_all(&token_dir).map_err(|e| portcullis_token::TokenError::KeyFile {
                path: token_dir.clone(),
                reason: e.to_string(),
            })?;
            let key_file = token_dir.join("signing-keys.json");
            let lifetime = config.token.access_token_lifetime.as_secs() as i64;
            let grace = lifetime + portcullis_token::DEFAULT_LEEWAY_SECS;
            let keys = Arc::new(RwLock::new(SigningKeys::load_or_create(&key_file, now_secs(), grace)?));
            let issuer = TokenIssuer::new(config.token.issuer.clone(), lifetime, keys);
            let service = TokenService::new(config, issuer, InvalidationsHandle::default(), store.clone())?;
            service.sync_invalidations().await?;
            background.push(tokio::spawn(service.clone().run_sync(Duration::from_millis(500))));
            background.push(tokio::spawn(service.clone().run_key_rotation(config.token.key_rotation, key_file)));

            let (certificate, renewal) =
                listener_certificate(&ca, &store, &lifetimes, config, "token", addresses.token).await?;
            renewals.push(renewal);
            let verifier = PlatformClientVerifier::new(ca.root(), ca.trust_domain().clone(), Arc::clone(&trust))?;
            let acceptor = PlatformAcceptor::new(certificate, verifier, &[b"h2", b"http/1.1"])?;
            servers.push(tokio::spawn(portcullis_token::server::serve_mutual_tls(
                "token",
                token_listener,
                acceptor,
                service.router(),
                stopped(stop_rx.clone()),
            )));

            if let (Some(listener), Some(address)) = (consent_listener, addresses.consent) {
                let (certificate, renewal) =
                    listener_certificate(&ca, &store, &lifetimes, config, "consent", address).await?;
                renewals.push(renewal);
                let tls = Arc::new(policy::public_server_config(certificate, &[b"http/1.1"])?);
                servers.push(tokio::spawn(portcullis_token::server::serve_public_tls(
                    "consent",
                    listener,
                    tls,
                    service.consent_router(),
                    stopped(stop_rx.clone()),
                )));
            }

            // Gateway.
            let (certificate, renewal) =
                listener_certificate(&ca, &store, &lifetimes, config, "gateway", config.listeners.gateway).await?;
            renewals.push(renewal);
            let tls = portcullis_gateway::GatewayTls {
                server_certificate: certificate.clone(),
                client_certificate: certificate,
                verifier: PlatformClientVerifier::new(ca.root(), ca.trust_domain().clone(), Arc::clone(&trust))?,
                platform_root: ca.root().clone(),
            };
            let access_log = data_dir.join("access.jsonl");
            let (access_file, writer) = portcullis_gateway::FileSink::open(&access_log, 65_536).await?;
            make_private(&access_log);
            let sinks = portcullis_gateway::EventSinks::new(Some(guard.events.clone()), Some(access_file));
            let app_services = Arc::new(portcullis_gateway::AppServices::new());
            app_services.set_spaces(&config.spaces);
            let (spaces, problems) = gateway_apps::load(config, &store).await?;
            app_services.replace_apps(spaces);
            gateway_apps::report_problems(&problems, &std::collections::HashMap::new());
            background.push(tokio::spawn(gateway_apps::refresh(
                Arc::clone(&current),
                store.clone(),
                Arc::clone(&app_services),
                reloaded.subscribe(),
                problems,
            )));
            gateway_spaces = Some(Arc::clone(&app_services));
            let running = portcullis_gateway::Gateway::new(
                config,
                tls,
                service.verifier().clone(),
                guard.decisions.clone(),
                sinks,
            )?
            .with_app_services(app_services)
            .start(config.listeners.gateway)
            .await?;
            addresses.gateway = running.local_addr();
            token = Some(service);
            gateway = Some(running);
            access_writer = Some(writer);
        }

        // Egress proxy.
        let mut proxy = None;
        let mut egress_apps = None;
        if parts.egress() {
            let egress_listener = bind("egress", config.listeners.egress).await?;
            addresses.egress = egress_listener.local_addr().unwrap_or(config.listeners.egress);
            let egress_metrics = portcullis_egress::EgressMetrics::new();
            egress_metrics.register(&mut registry);
            let (running, directory, egress_events, refresh) =
                egress_proxy(config, &store, &guard, egress_metrics, (&current, reloaded.subscribe())).await?;
            background.push(refresh);
            egress_apps = Some(directory);
            let sink = match parts {
                Parts::Egress { report_to: Some(target) } => {
                    let (certificate, renewal) =
                        listener_certificate(&ca, &store, &lifetimes, config, "egress", config.listeners.egress)
                            .await?;
                    renewals.push(renewal);
                    let tls = Arc::new(policy::client_config(ca.root(), certificate, &[b"http/1.1"])?);
                    let name = rustls::pki_types::ServerName::try_from(format!("operator.{}", config.trust_domain))
                        .map_err(|_| PlatformError::ReportTarget { target })?;
                    let (reporter, task) = report::Reporter::spawn(target, name, tls, 65_536);
                    background.push(task);
                    tracing::info!(%target, "egress refusals go to the guard of the gateway part");
                    ViolationSink::Remote(reporter)
                }
                _ => ViolationSink::Local(guard.events.clone()),
            };
            background.push(tokio::spawn(forward_egress_events(egress_events, sink, data_dir.join("egress.jsonl"))));
            servers.push(tokio::spawn(portcullis_egress::proxy::serve(
                egress_listener,
                Arc::clone(&running),
                stopped(stop_rx.clone()),
            )));
            proxy = Some(running);
        }
        let egress = proxy.clone();
        let dropped = Arc::new(DroppedEvents {
            guard: guard.events.clone(),
            gateway: gateway.as_ref().map(portcullis_gateway::RunningGateway::dropped_counter),
            egress: proxy,
        });
        registry.register_collector(Box::new(dropped));

        // Ban enforcement on containers: a banned app's container is cut off
        // from its networks and reconnected when the ban ends. When the parts
        // run in separate containers, the process that started them
        // (`portcullis up`) has the Docker socket and does this instead.
        if parts == Parts::All && config.runtime.driver == portcullis_config::Driver::Docker {
            match portcullis_runtime::docker::DockerDriver::connect(portcullis_runtime::docker::DockerOptions::default()).await {
                Ok(driver) => background.push(tokio::spawn(portcullis_runtime::enforce::follow_decisions(
                    driver,
                    guard.decisions.clone(),
                ))),
                Err(error) => {
                    tracing::warn!(%error, "Docker Engine unreachable: bans are enforced by the gateway and the egress proxy, not on containers");
                }
            }
        }

        // Operator API.
        if let Some(service) = &token {
            let operator_listener = bind("operator", config.listeners.operator).await?;
            addresses.operator = operator_listener.local_addr().unwrap_or(config.listeners.operator);
            let (certificate, renewal) =
                listener_certificate(&ca, &store, &lifetimes, config, "operator", addresses.operator).await?;
            renewals.push(renewal);
            let verifier = PlatformClientVerifier::new(ca.root(), ca.trust_domain().clone(), Arc::clone(&trust))?;
            let acceptor = PlatformAcceptor::new(certificate, verifier, &[b"h2", b"http/1.1"])?;
            let state = operator::OperatorState {
                trust_domain: config.trust_domain.clone(),
                events: guard.events.clone(),
                store: store.clone(),
                stats,
                decisions: guard.decisions.clone(),
                token: service.clone(),
                registry: Arc::new(registry),
            };
            servers.push(tokio::spawn(portcullis_token::server::serve_mutual_tls(
                "operator",
                operator_listener,
                acceptor,
                operator::router(state),
                stopped(stop_rx.clone()),
            )));
        }

        tracing::info!(
            ?parts,
            operator = %addresses.operator,
            gateway = %addresses.gateway,
            egress = %addresses.egress,
            token = %addresses.token,
            consent = ?addresses.consent,
            "platform started"
        );
        Ok(Self {
            config: config.clone(),
            addresses,
            gateway,
            access_writer,
            guard,
            token,
            current,
            reloaded,
            egress,
            egress_apps,
            gateway_spaces,
            stop,
            servers,
            background,
            _renewals: renewals,
            _trust_refresher: trust_refresher,
        })
    }

    /// The addresses the platform listens on.
    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }

    /// The running guard: its event queue, decisions and statistics.
    pub fn guard(&self) -> &RunningGuard {
        &self.guard
    }

    /// Returns the token service, unless this process runs only the egress proxy.
    pub fn token(&self) -> Option<&TokenService> {
        self.token.as_ref()
    }

    /// Applies the settings of `config` that can change at run time, listed
    /// in [`reload`]. These are the gateway's routes, upstreams and limits,
    /// the services and scopes of the token service and the operator API,
    /// the spaces, and the egress proxy's platform-wide rules. Requests
    /// already routed finish with their routes, and open egress tunnels
    /// with their rules.
    ///
    /// Settings that need a restart, such as `listeners`, keep their running
    /// value. Each one that changed is logged as a warning and returned in
    /// [`ReloadOutcome::restart_required`]. On an error nothing was applied
    /// and the running configuration stays in force.
    pub fn reload(&self, config: &PlatformConfig) -> Result<ReloadOutcome, PlatformError> {
        let restart_required = reload::restart_required_changes(&self.config, config);
        // The token audiences and the gateway's names derive from the trust
        // domain, which only a restart changes.
        let mut applied = config.clone();
        applied.trust_domain.clone_from(&self.config.trust_domain);

        // Built first, because opening the country database can fail.
        let egress_rules = match &self.egress {
            Some(_) => Some(Arc::new(portcullis_egress::EgressRules::new(applied.egress.clone())?)),
            None => None,
        };
        if let Some(gateway) = &self.gateway {
            gateway.reload(&applied)?;
        }
        if let Some(token) = &self.token {
            token.reload_services(&applied);
        }
        if let Some(spaces) = &self.gateway_spaces {
            spaces.set_spaces(&applied.spaces);
        }
        if let (Some(proxy), Some(rules)) = (&self.egress, egress_rules) {
            proxy.reload_rules(Arc::clone(&rules));
            if let Some(directory) = &self.egress_apps {
                egress_apps::rebuild(&applied, &rules, directory);
            }
        }
        self.current.store(Arc::new(applied));
        self.reloaded.send_replace(());

        for setting in &restart_required {
            tracing::warn!(
                setting,
                config = %config.source.display(),
                "setting changed in the configuration file but not applied; restart the platform to apply it"
            );
        }
        tracing::info!(
            config = %config.source.display(),
            services = config.services.len(),
            not_applied = restart_required.len(),
            "configuration reloaded"
        );
        Ok(ReloadOutcome { restart_required })
    }

    /// Stops accepting connections, drains the listeners and stops the guard.
    pub async fn shutdown(self) {
        tracing::info!("platform stopping");
        let _ = self.stop.send(true);
        if let Some(gateway) = self.gateway {
            let outcome = gateway.shutdown(Duration::from_secs(30)).await;
            tracing::info!(?outcome, "gateway stopped");
        }
        if let Some(writer) = self.access_writer {
            writer.finish().await;
        }
        for server in self.servers {
            let _ = server.await;
        }
        for task in self.background {
            task.abort();
        }
        self.guard.stop().await;
        tracing::info!("platform stopped");
    }
}

/// Issues the certificate of the platform component `component`, listening
/// on `address`, and keeps it renewed.
async fn listener_certificate(
    ca: &Arc<PlatformCa>,
    store: &Store,
    lifetimes: &Lifetimes,
    config: &PlatformConfig,
    component: &str,
    address: SocketAddr,
) -> Result<(Arc<RenewingCertificate>, RenewalGuard), PlatformError> {
    let request = component_request(ca, lifetimes, component, address)?;
    let leaf: IssuedLeaf = ca.issue_and_record(store, &request).await?;
    let certificate = RenewingCertificate::new(&leaf)?;

    let (ca, store, lifetimes) = (Arc::clone(ca), store.clone(), lifetimes.clone());
    let component = component.to_owned();
    let renewal = certificate.spawn_renewal(config.identity.renew_at, move || {
        let (ca, store, lifetimes, component) = (Arc::clone(&ca), store.clone(), lifetimes.clone(), component.clone());
        async move {
            let request = component_request(&ca, &lifetimes, &component, address)?;
            ca.issue_and_record(&store, &request).await
        }
    });
    Ok((certificate, renewal))
}

/// The leaf request of a platform component: its SPIFFE id, and as server
/// names `localhost`, the listener's address unless it is unspecified, and
/// `<component>.<trust domain>`.
fn component_request(
    ca: &PlatformCa,
    lifetimes: &Lifetimes,
    component: &str,
    address: SocketAddr,
) -> Result<LeafRequest, portcullis_identity::IdentityError> {
    let id = SpiffeId::new(ca.trust_domain(), CertificateKind::Platform, component)?;
    let mut names = vec!["localhost".to_owned(), format!("{component}.{}", ca.trust_domain().as_str())];
    if !address.ip().is_unspecified() {
        names.push(address.ip().to_string());
    }
    Ok(LeafRequest::new(id, lifetimes).with_dns_names(names))
}

/// The egress proxy, its directory of app rules, the receiving end of its
/// event queue, and the task that keeps its app rules in step with the
/// store.
type EgressProxy = (
    Arc<portcullis_egress::proxy::Proxy>,
    Arc<portcullis_egress::proxy::AppDirectory>,
    tokio::sync::mpsc::Receiver<portcullis_egress::EgressEvent>,
    tokio::task::JoinHandle<()>,
);

/// Builds the egress proxy with the rules of every registered app (see
/// [`egress_apps`]), the guard's bans and the registered `metrics`. The
/// apps' rules follow the configuration in `current` and are rebuilt when
/// `reloaded` changes.
async fn egress_proxy(
    config: &PlatformConfig,
    store: &Store,
    guard: &RunningGuard,
    metrics: portcullis_egress::EgressMetrics,
    (current, reloaded): (&Arc<ArcSwap<PlatformConfig>>, watch::Receiver<()>),
) -> Result<EgressProxy, PlatformError> {
    use portcullis_config::AppId;
    use portcullis_egress::proxy::{AppDirectory, Proxy, ProxySecrets};
    use portcullis_egress::{EgressRules, Engine, HickoryResolver};

    let rules = Arc::new(EgressRules::new(config.egress.clone())?);
    let apps = Arc::new(AppDirectory::new());
    let (loaded, problems) = egress_apps::load(config, &rules, store).await?;
    apps.replace_all(loaded);
    egress_apps::report_problems(&problems, &std::collections::HashMap::new());

    let resolver = Arc::new(portcullis_egress::PinnedResolver::new(
        &config.egress.static_hosts,
        HickoryResolver::from_system_conf()?,
    ));
    let engine = Engine::new(rules, resolver);
    let (events, receiver) = tokio::sync::mpsc::channel(65_536);
    let decisions = guard.decisions.clone();
    let banned = move |app_id: &AppId| {
        let now_ms = portcullis_store::now_ms();
        matches!(decisions.borrow().verdict(app_id.as_str(), now_ms), portcullis_guard::Verdict::Ban { .. })
    };
    let proxy = Proxy::new(engine, Arc::clone(&apps), ProxySecrets::new(store.clone()), events)
        .with_ban_check(Arc::new(banned))
        .with_metrics(metrics);
    let proxy = Arc::new(proxy);

    let rules_in_force = {
        let proxy = Arc::clone(&proxy);
        move || proxy.engine().shared_rules()
    };
    let refresh = tokio::spawn(egress_apps::refresh(
        Arc::clone(current),
        rules_in_force,
        store.clone(),
        Arc::clone(&apps),
        reloaded,
        problems,
    ));
    Ok((proxy, apps, receiver, refresh))
}

/// Writes each egress event as a JSON line to `path`, and sends every
/// enforced refusal that [`ReasonCode::is_violation`] counts to the guard as
/// an egress violation. Refusals by the byte cap, by a failed DNS lookup or
/// by an address missing from the country database are not sent, because
/// an app that meets them is not probing forbidden destinations.
///
/// [`ReasonCode::is_violation`]: portcullis_egress::ReasonCode::is_violation
async fn forward_egress_events(
    mut events: tokio::sync::mpsc::Receiver<portcullis_egress::EgressEvent>,
    guard: ViolationSink,
    path: PathBuf,
) {
    use portcullis_egress::proxy::{EVENT_BATCH_INTERVAL, next_batch};
    use std::os::unix::fs::OpenOptionsExt;

    let mut file = match std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path) {
        Ok(file) => Some(std::io::BufWriter::new(file)),
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "cannot open the egress event log; events go to the guard only");
            None
        }
    };
    while let Some(batch) = next_batch(&mut events, EVENT_BATCH_INTERVAL).await {
        let mut lines = Vec::new();
        for event in &batch {
            forward_violation(event, &guard);
            if serde_json::to_writer(&mut lines, event).is_ok() {
                lines.push(b'\n');
            }
        }
        if lines.is_empty() {
            continue;
        }
        let Some(mut writer) = file.take() else { continue };
        let written = tokio::task::spawn_blocking(move || {
            std::io::Write::write_all(&mut writer, &lines)
                .and_then(|()| std::io::Write::flush(&mut writer))
                .map(|()| writer)
        })
        .await;
        match written {
            Ok(Ok(writer)) => file = Some(writer),
            Ok(Err(error)) => {
                tracing::error!(path = %path.display(), %error, "writing the egress event log failed; events go to the guard only");
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "the egress event log writer failed; events go to the guard only");
            }
        }
    }
}

/// Sends an enforced refusal to the guard as an egress violation if its
/// reason is a violation.
fn forward_violation(event: &portcullis_egress::EgressEvent, guard: &ViolationSink) {
    if event.verdict != portcullis_egress::Verdict::Deny || !event.reason.is_violation() {
        return;
    }
    let violation = portcullis_guard::GuardEvent::EgressViolation {
        app_id: event.app_id.clone(),
        host: event.requested_host.clone(),
        rule: event.rule.clone(),
        at_ms: portcullis_store::now_ms(),
    };
    match guard {
        ViolationSink::Local(sender) => {
            sender.send(violation);
        }
        ViolationSink::Remote(reporter) => reporter.send(&violation),
    }
}

/// Reports the events each queue dropped because it was full, at scrape
/// time, as Prometheus counters.
struct DroppedEvents {
    guard: portcullis_guard::EventSender,
    gateway: Option<Arc<dyn Fn() -> u64 + Send + Sync>>,
    egress: Option<Arc<portcullis_egress::proxy::Proxy>>,
}

impl std::fmt::Debug for DroppedEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DroppedEvents").finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for DroppedEvents {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;

        let counters = [
            (
                "portcullis_guard_dropped_events",
                "Events dropped because the guard's queue was full",
                self.guard.dropped_events(),
            ),
            (
                "portcullis_gateway_dropped_access_events",
                "Access events the gateway dropped because a queue was full",
                self.gateway.as_ref().map_or(0, |count| count()),
            ),
            (
                "portcullis_egress_dropped_events",
                "Egress events dropped because the queue was full",
                self.egress.as_ref().map_or(0, |proxy| proxy.dropped_events()),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// Makes a log file readable by its owner only: access and egress events
/// name apps, hosts and paths.
fn make_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(error) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(file = %path.display(), %error, "cannot make the log file private");
    }
}
