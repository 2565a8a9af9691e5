//! The configuration file as written, before validation.
//!
//! Every struct rejects unknown keys. Numbers that have a range are read as
//! `i64` or `f64` so that an out-of-range value reaches validation and gets a
//! message naming the range, instead of a bare integer-type error.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub trust_domain: String,
    pub data_dir: Option<String>,
    #[serde(default)]
    pub store: RawStore,
    pub listeners: RawListeners,
    #[serde(default)]
    pub identity: RawIdentity,
    #[serde(default)]
    pub token: RawToken,
    #[serde(default)]
    pub services: Vec<RawService>,
    pub spaces: BTreeMap<String, RawSpace>,
    #[serde(default)]
    pub gateway: RawGateway,
    #[serde(default)]
    pub guard: RawGuard,
    #[serde(default)]
    pub egress: RawEgress,
    pub runtime: RawRuntime,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListeners {
    pub gateway: String,
    pub egress: String,
    pub token: String,
    pub consent: Option<String>,
    pub operator: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIdentity {
    pub platform_cert_lifetime: Option<String>,
    pub app_cert_lifetime: Option<String>,
    pub renew_at: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawToken {
    pub issuer: Option<String>,
    pub access_token_lifetime: Option<String>,
    pub refresh_token_lifetime: Option<String>,
    pub key_rotation: Option<String>,
    pub rate_per_second: Option<f64>,
    pub rate_burst: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub name: String,
    pub upstream: String,
    pub upstream_http2: Option<bool>,
    pub rate_per_second: Option<f64>,
    pub rate_burst: Option<i64>,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub prefix: String,
    pub methods: Option<Vec<String>>,
    pub scope: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSpace {
    pub services: Vec<String>,
    pub egress_allow_hosts: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    pub max_header_bytes: Option<i64>,
    pub max_body_bytes: Option<i64>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections_per_app: Option<i64>,
    pub request_buffering: Option<bool>,
    pub max_buffered_bytes_per_app: Option<i64>,
    pub upstream_timeout: Option<String>,
    pub busy_poll_window: Option<String>,
    pub rate_per_second: Option<f64>,
    pub rate_burst: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGuard {
    #[serde(default)]
    pub exempt_apps: Vec<String>,
    pub max_ban: Option<String>,
    #[serde(default)]
    pub policies: Vec<RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub name: String,
    pub signal: String,
    pub classes: Option<Vec<String>>,
    pub threshold: i64,
    pub window: String,
    pub action: String,
    pub throttle_per_second: Option<f64>,
    pub duration: String,
    pub mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEgress {
    pub mode: Option<String>,
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
    pub allow_ports: Option<Vec<i64>>,
    #[serde(default)]
    pub deny_hosts: Vec<String>,
    #[serde(default)]
    pub deny_cidrs: Vec<String>,
    #[serde(default)]
    pub static_hosts: BTreeMap<String, String>,
    pub connect_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_tunnel_lifetime: Option<String>,
    pub max_tunnels_per_app: Option<i64>,
    pub tunnel_buffer_bytes: Option<i64>,
    pub max_bytes_per_app: Option<i64>,
    pub countries: Option<RawCountries>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCountries {
    pub database: String,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRuntime {
    pub driver: String,
    #[serde(default)]
    pub hardening: RawHardening,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHardening {
    pub memory_mib: Option<i64>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
    pub nofile: Option<i64>,
    pub nproc: Option<i64>,
    pub sigpending: Option<i64>,
    pub tmpfs_mib: Option<i64>,
    pub read_only_root: Option<bool>,
    pub seccomp: Option<String>,
    pub log_max_mib: Option<i64>,
    pub log_max_files: Option<i64>,
    pub restart_max: Option<i64>,
    pub uid_base: Option<i64>,
}
