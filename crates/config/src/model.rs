//! The validated platform configuration.
//!
//! A value of these types exists only after every check in `validate` passed:
//! names are well formed, numbers are in range, and every reference (a route's
//! scope, a space's service) points at something defined.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

/// An app id: a lowercase DNS label of 1 to 63 characters (`[a-z0-9-]`, not
/// starting or ending with `-`). It appears in SPIFFE ids, network names and
/// log fields, so it is restricted to characters that are safe in all three.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct AppId(String);

impl AppId {
    /// Parses an app id, returning what is wrong with it on failure.
    pub fn parse(value: &str) -> Result<Self, String> {
        check_dns_label(value)?;
        Ok(Self(value.to_owned()))
    }

    /// Returns the id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks that `value` is a lowercase DNS label (RFC 1123 section 2.1).
pub(crate) fn check_dns_label(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 63 {
        return Err("1 to 63 characters".into());
    }
    if !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err("only lowercase letters, digits and '-'".into());
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err("no '-' at the start or end".into());
    }
    Ok(())
}

/// The whole platform configuration.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformConfig {
    /// The file this configuration was read from.
    pub source: PathBuf,
    /// SPIFFE trust domain, for example `weather.example`.
    pub trust_domain: String,
    /// Data directory named in the file, resolved against the file's folder.
    pub data_dir: Option<PathBuf>,
    /// Store URL; `None` means the SQLite file in the data directory.
    pub store_url: Option<String>,
    /// Listener addresses.
    pub listeners: Listeners,
    /// Certificate lifetimes.
    pub identity: IdentitySettings,
    /// OAuth 2.0 token service settings.
    pub token: TokenSettings,
    /// Platform services, in file order. Names are unique.
    pub services: Vec<Service>,
    /// Spaces by name; `live` is always present.
    pub spaces: BTreeMap<SpaceName, Space>,
    /// Gateway limits.
    pub gateway: GatewaySettings,
    /// Guard policies and escalation.
    pub guard: GuardSettings,
    /// Egress rules and limits.
    pub egress: EgressSettings,
    /// Container or process driver and hardening defaults.
    pub runtime: RuntimeSettings,
}

impl PlatformConfig {
    /// Finds a service by name.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Socket addresses of the platform's servers.
#[derive(Debug, Clone, Serialize)]
pub struct Listeners {
    /// Gateway: apps call services here over mutual TLS.
    pub gateway: SocketAddr,
    /// Egress proxy.
    pub egress: SocketAddr,
    /// OAuth 2.0 token service (mutual TLS for apps and services).
    pub token: SocketAddr,
    /// The customer consent page (server-authenticated TLS only, for
    /// browsers); `None` disables the authorization code grant.
    pub consent: Option<SocketAddr>,
    /// Operator REST API and metrics.
    pub operator: SocketAddr,
}

/// Certificate lifetimes and renewal point.
#[derive(Debug, Clone, Serialize)]
pub struct IdentitySettings {
    /// Lifetime of certificates for the platform's own components (default 1 h).
    pub platform_cert_lifetime: Duration,
    /// Lifetime of app certificates (default 24 h).
    pub app_cert_lifetime: Duration,
    /// Fraction of the lifetime after which a certificate is renewed, in
    /// 0.1..=0.9 (default 2/3).
    pub renew_at: f64,
}

/// OAuth 2.0 token service settings.
#[derive(Debug, Clone, Serialize)]
pub struct TokenSettings {
    /// The `iss` of every token: an https URL without query or fragment.
    pub issuer: String,
    /// Lifetime of access tokens (default 5 min).
    pub access_token_lifetime: Duration,
    /// Lifetime of refresh tokens (default 30 days).
    pub refresh_token_lifetime: Duration,
    /// How often the signing key is replaced (default 24 h).
    pub key_rotation: Duration,
    /// Sustained token requests per second per client.
    pub rate_per_second: f64,
    /// Token requests allowed in a burst above the sustained rate.
    pub rate_burst: u32,
}

/// One platform service behind the gateway.
#[derive(Debug, Clone, Serialize)]
pub struct Service {
    /// A lowercase DNS label, unique among services.
    pub name: String,
    /// Base URL the gateway forwards to (`http` or `https`).
    pub upstream: String,
    /// Whether the gateway offers HTTP/2 to an `https` upstream (ALPN
    /// decides). When false it speaks HTTP/1.1 over a pool of kept-alive
    /// connections, as a reverse proxy usually does.
    pub upstream_http2: bool,
    /// Sustained requests per second per app to this service, overriding
    /// `gateway.rate_per_second`.
    pub rate_per_second: Option<f64>,
    /// Requests per app allowed at once to this service, overriding
    /// `gateway.rate_burst`.
    pub rate_burst: Option<u32>,
    /// Scopes this service defines, each `<name>:<action>`.
    pub scopes: Vec<String>,
    /// Routes; each route's scope is one of `scopes`.
    pub routes: Vec<Route>,
}

/// A path prefix, optionally limited to some methods, and the scope it needs.
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    /// A canonical path prefix starting with `/`.
    pub prefix: String,
    /// Upper-case method names; empty means every method.
    pub methods: Vec<String>,
    /// The scope a caller needs.
    pub scope: String,
}

/// The name of a space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpaceName {
    /// The space of approved apps.
    Live,
    /// The space of trials.
    Sandbox,
}

impl fmt::Display for SpaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Live => "live",
            Self::Sandbox => "sandbox",
        })
    }
}

/// The services and egress hosts apps in one space may reach.
#[derive(Debug, Clone, Serialize)]
pub struct Space {
    /// Services reachable through the gateway from this space.
    pub services: Vec<String>,
    /// A narrower egress host allow-list for this space; `None` means the
    /// platform-wide list. Always a subset of the platform-wide list.
    pub egress_allow_hosts: Option<Vec<HostPattern>>,
}

/// Gateway limits.
#[derive(Debug, Clone, Serialize)]
pub struct GatewaySettings {
    /// Maximum size of the request head in bytes (response: 431).
    pub max_header_bytes: u64,
    /// Maximum request body size in bytes (response: 413).
    pub max_body_bytes: u64,
    /// Time allowed to receive the request head (response: 408).
    pub header_read_timeout: Duration,
    /// Time after which a connection on which no byte moved either way is
    /// shut down gracefully: requests in flight finish, then it closes.
    pub idle_timeout: Duration,
    /// Connections one app may hold open at once, over all gateway
    /// workers. A connection above it gets 429 to its first request and is
    /// closed.
    pub max_connections_per_app: u32,
    /// Whether a request body without a declared length (chunked, or
    /// HTTP/2 without Content-Length) is read whole before the request
    /// goes upstream, so that a body over `max_body_bytes` gets 413 before
    /// the upstream receives any of it. Off, such bodies stream.
    pub request_buffering: bool,
    /// Bytes of buffer for request bodies that one app may hold at once,
    /// over all its requests, counted by each buffer's capacity (response
    /// above it: 429). At least `max_body_bytes` while `request_buffering`
    /// is on.
    pub max_buffered_bytes_per_app: u64,
    /// Time allowed for the upstream to send the response head (response:
    /// 504), and for each wait for more of the response body (the response
    /// is cut).
    pub upstream_timeout: Duration,
    /// Sustained requests per second per app and service.
    pub rate_per_second: f64,
    /// Requests allowed in a burst above the sustained rate.
    pub rate_burst: u32,
    /// How long a gateway worker keeps polling its sockets instead of
    /// sleeping after a request is sent upstream or gets its response head,
    /// while at most one request is in flight on it. Zero turns busy polling off.
    /// Read when the gateway starts.
    pub busy_poll_window: Duration,
}

/// Guard policies and escalation.
#[derive(Debug, Clone, Serialize)]
pub struct GuardSettings {
    /// Apps never banned or throttled by the guard.
    pub exempt_apps: Vec<AppId>,
    /// Upper bound of an escalated ban.
    pub max_ban: Duration,
    /// Policies in file order; names are unique.
    pub policies: Vec<Policy>,
}

/// The signal a guard policy counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "classes")]
pub enum Signal {
    /// Responses in the listed outcome classes.
    Responses(Vec<OutcomeClass>),
    /// Every request.
    Requests,
    /// Request and response bytes.
    Bytes,
    /// Refused egress attempts.
    EgressViolations,
}

/// Outcome classes the guard counts, by HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum OutcomeClass {
    /// Any 2xx status.
    #[serde(rename = "2xx")]
    Success,
    /// 400 Bad Request: malformed request.
    #[serde(rename = "400")]
    BadRequest,
    /// 401 Unauthorized: missing or invalid credentials.
    #[serde(rename = "401")]
    Unauthorized,
    /// 403 Forbidden: authenticated but not allowed.
    #[serde(rename = "403")]
    Forbidden,
    /// 404 Not Found: no route.
    #[serde(rename = "404")]
    NotFound,
    /// 413 or 431: body or header too large.
    #[serde(rename = "too_large")]
    TooLarge,
    /// 429 Too Many Requests.
    #[serde(rename = "429")]
    TooManyRequests,
    /// Any 5xx status.
    #[serde(rename = "5xx")]
    ServerError,
}

impl OutcomeClass {
    /// The spellings accepted in the configuration, in display order.
    pub const NAMES: [&'static str; 8] = ["2xx", "400", "401", "403", "404", "too_large", "429", "5xx"];

    /// Returns the class's spelling in the configuration and in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Success => "2xx",
            Self::BadRequest => "400",
            Self::Unauthorized => "401",
            Self::Forbidden => "403",
            Self::NotFound => "404",
            Self::TooLarge => "too_large",
            Self::TooManyRequests => "429",
            Self::ServerError => "5xx",
        }
    }

    /// Parses one of [`Self::NAMES`].
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "2xx" => Self::Success,
            "400" => Self::BadRequest,
            "401" => Self::Unauthorized,
            "403" => Self::Forbidden,
            "404" => Self::NotFound,
            "too_large" => Self::TooLarge,
            "429" => Self::TooManyRequests,
            "5xx" => Self::ServerError,
            _ => return None,
        })
    }
}

/// Whether a policy or rule set acts or only records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decisions take effect.
    Enforce,
    /// Decisions are recorded as what enforce would have done.
    Report,
}

/// The action a policy takes when its threshold is reached.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Action {
    /// Refuse every request of the app.
    Ban,
    /// Limit the app to a request rate.
    Throttle {
        /// Requests per second allowed while throttled.
        per_second: f64,
    },
}

/// One guard policy.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    /// Unique name, shown as the reason of its decisions.
    pub name: String,
    /// What is counted.
    pub signal: Signal,
    /// Count at which the policy acts (at least 1).
    pub threshold: u64,
    /// Length of the sliding window.
    pub window: Duration,
    /// What happens.
    pub action: Action,
    /// How long the decision lasts before escalation.
    pub duration: Duration,
    /// Enforce or report.
    pub mode: Mode,
}

/// A host name rule: an exact name or every name below a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum HostPattern {
    /// Exactly this name, in lowercase ASCII (IDNA) form without a trailing dot.
    Exact(String),
    /// Any name that ends in `.` followed by this domain, not the domain itself.
    Suffix(String),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Suffix(domain) => write!(f, "*.{domain}"),
        }
    }
}

/// Egress rules and limits.
#[derive(Debug, Clone, Serialize)]
pub struct EgressSettings {
    /// Enforce or report.
    pub mode: Mode,
    /// Hosts apps may reach.
    pub allow_hosts: Vec<HostPattern>,
    /// Address ranges apps may reach, including private ones listed here.
    pub allow_cidrs: Vec<IpNet>,
    /// Destination ports allowed.
    pub allow_ports: Vec<u16>,
    /// Hosts always refused.
    pub deny_hosts: Vec<HostPattern>,
    /// Address ranges always refused.
    pub deny_cidrs: Vec<IpNet>,
    /// Fixed answers the proxy's resolver returns before asking DNS, for
    /// test and demo hosts: a normalised host name and the one address it
    /// resolves to. Every address is inside `allow_cidrs` (checked at load).
    pub static_hosts: BTreeMap<String, IpAddr>,
    /// Time allowed to connect to a destination.
    pub connect_timeout: Duration,
    /// A tunnel without traffic for this long is closed.
    pub idle_timeout: Duration,
    /// A tunnel is closed after this long in any case.
    pub max_tunnel_lifetime: Duration,
    /// Open tunnels allowed per app.
    pub max_tunnels_per_app: u32,
    /// Largest copy buffer of one direction of a tunnel, in bytes. A
    /// tunnel starts with 4 KiB per direction and doubles a buffer each
    /// time one read fills it, so an open tunnel uses at most twice this.
    pub tunnel_buffer_bytes: usize,
    /// Bytes an app may move through the egress proxy, both directions
    /// together, per accounting period of one hour; `None` means no cap.
    pub max_bytes_per_app: Option<u64>,
    /// Optional country rule.
    pub countries: Option<CountryRule>,
}

/// Countries allowed or denied, looked up in a MaxMind-format database.
#[derive(Debug, Clone, Serialize)]
pub struct CountryRule {
    /// Path of the database.
    pub database: PathBuf,
    /// Whether `codes` lists the only countries allowed or countries refused.
    pub allow: bool,
    /// Upper-case ISO 3166-1 alpha-2 codes.
    pub codes: Vec<String>,
}

/// The driver that runs apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// Hardened containers through the Docker Engine API.
    Docker,
    /// Child processes with rlimits; weaker isolation.
    Process,
}

/// Driver and hardening defaults.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeSettings {
    /// The driver.
    pub driver: Driver,
    /// Limits for every app.
    pub hardening: Hardening,
}

/// Seccomp profile choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Seccomp {
    /// Docker's default profile.
    Default,
    /// The platform's stricter profile.
    Strict,
}

/// Limits applied to every app.
#[derive(Debug, Clone, Serialize)]
pub struct Hardening {
    /// Memory limit in MiB; swap is limited to the same value.
    pub memory_mib: u64,
    /// CPU quota in cores.
    pub cpus: f64,
    /// Maximum processes and threads in the container.
    pub pids: u64,
    /// Open file descriptors.
    pub nofile: u64,
    /// Processes of the app's UID.
    pub nproc: u64,
    /// Queued signals.
    pub sigpending: u64,
    /// Size of the writable /tmp in MiB.
    pub tmpfs_mib: u64,
    /// Whether the root filesystem is read-only.
    pub read_only_root: bool,
    /// Seccomp profile.
    pub seccomp: Seccomp,
    /// Size of one log file in MiB.
    pub log_max_mib: u64,
    /// Number of log files kept.
    pub log_max_files: u64,
    /// Restarts after a crash.
    pub restart_max: u64,
    /// First UID (and GID) handed to apps.
    pub uid_base: u32,
}
