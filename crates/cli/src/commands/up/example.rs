//! The example description that `portcullis up` reads beside the platform
//! configuration: which services, outbound test hosts and apps to start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use portcullis_config::{AppId, PlatformConfig};
use serde::Deserialize;

use crate::commands::UsageError;

/// The parsed and checked example description.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    /// Platform services to start, each at the address of its upstream URL.
    #[serde(default)]
    pub services: Vec<ExampleService>,
    /// Outbound test hosts to start.
    #[serde(default)]
    pub hosts: Vec<ExampleHost>,
    /// Apps to register, grant and run.
    #[serde(default)]
    pub apps: Vec<ExampleApp>,
}

/// A platform service run by `up`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExampleService {
    /// The service's name in the platform configuration.
    pub name: String,
    /// The binary's file name in the binary directory.
    pub binary: String,
    /// Filled in from the service's upstream URL.
    #[serde(skip)]
    pub listen: Option<SocketAddr>,
}

/// An outbound test host run by `up`: a plain HTTP server on loopback.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExampleHost {
    /// The host name apps use; in `egress.static_hosts`.
    pub name: String,
    /// The listening address, which must use the address `static_hosts` gives.
    pub listen: SocketAddr,
    /// The binary's file name in the binary directory.
    pub binary: String,
}

/// An app run by `up`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExampleApp {
    /// The app id.
    pub id: String,
    /// Display name at registration.
    pub name: String,
    /// Owner at registration.
    pub owner: String,
    /// The binary's file name in the binary directory.
    pub binary: String,
    /// Scopes granted to the app, each `<service>:<action>`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Variables added to the runtime's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn invalid(path: &Path, key: &str, message: impl std::fmt::Display) -> anyhow::Error {
    UsageError(format!("{}: {key}: {message}", path.display())).into()
}

impl Example {
    /// Reads `path` and checks it against `config`. Every service must have
    /// a loopback `https://` upstream, and every host must be pinned in
    /// `egress.static_hosts` to the address it listens on. Every app id must
    /// be valid and every scope one the configuration defines.
    pub fn load(path: &Path, config: &PlatformConfig) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            UsageError(format!("{}: cannot read the example description: {e}; pass --example FILE", path.display()))
        })?;
        let mut example: Example = toml::from_str(&text)
            .map_err(|e| UsageError(format!("{}: invalid example description: {e}", path.display())))?;

        for (index, service) in example.services.iter_mut().enumerate() {
            let key = format!("services[{index}]");
            let Some(configured) = config.services.iter().find(|s| s.name == service.name) else {
                return Err(invalid(
                    path,
                    &key,
                    format!("service {:?} is not in the platform configuration", service.name),
                ));
            };
            let url = url::Url::parse(&configured.upstream.to_string())
                .map_err(|e| invalid(path, &key, format!("upstream {} is not a URL: {e}", configured.upstream)))?;
            let address = url
                .socket_addrs(|| None)
                .ok()
                .and_then(|addresses| addresses.into_iter().next())
                .filter(|address| address.ip().is_loopback() && url.scheme() == "https");
            let Some(address) = address else {
                return Err(invalid(
                    path,
                    &key,
                    format!("upstream {} of {:?} must be an https:// URL on a loopback address", url, service.name),
                ));
            };
            service.listen = Some(address);
        }

        for (index, host) in example.hosts.iter().enumerate() {
            let key = format!("hosts[{index}]");
            match config.egress.static_hosts.get(&host.name) {
                Some(address) if *address == host.listen.ip() && address.is_loopback() => {}
                Some(address) => {
                    return Err(invalid(
                        path,
                        &key,
                        format!(
                            "listen {} must use {address}, the loopback address egress.static_hosts gives",
                            host.listen
                        ),
                    ));
                }
                None => {
                    return Err(invalid(path, &key, format!("{:?} is not in egress.static_hosts", host.name)));
                }
            }
        }

        for (index, app) in example.apps.iter().enumerate() {
            let key = format!("apps[{index}]");
            AppId::parse(&app.id).map_err(|e| invalid(path, &format!("{key}.id"), e))?;
            for scope in &app.scopes {
                let service = scope.split_once(':').map(|(service, _)| service).unwrap_or_default();
                let defined = config.services.iter().any(|s| s.name == service && s.scopes.contains(scope));
                if !defined {
                    return Err(invalid(
                        path,
                        &format!("{key}.scopes"),
                        format!("{scope:?} is not a configured scope"),
                    ));
                }
            }
        }
        Ok(example)
    }

    /// Returns the default location: `example.toml` beside the configuration file.
    pub fn default_path(config_path: &Path) -> PathBuf {
        config_path.parent().unwrap_or(Path::new(".")).join("example.toml")
    }

    /// Returns every binary the example runs, without repeats.
    pub fn binaries(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .services
            .iter()
            .map(|s| s.binary.as_str())
            .chain(self.hosts.iter().map(|h| h.binary.as_str()))
            .chain(self.apps.iter().map(|a| a.binary.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}
