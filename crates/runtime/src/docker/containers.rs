//! App and platform containers: create, start, stop, remove, list, logs,
//! statistics, and disconnecting a banned app from its network.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStatsResponse, ContainerSummary, EndpointIpamConfig,
    EndpointSettings, HostConfig, NetworkConnectRequest, NetworkDisconnectRequest, NetworkingConfig, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions, StatsOptions,
    StopContainerOptions,
};
use futures_util::StreamExt;
use serde::Serialize;

use super::DockerDriver;
use super::network::AppAddresses;
use crate::error::{RuntimeError, is_not_found, is_not_modified};
use crate::labels::{self, Role};
use crate::profile::{CREDENTIALS_MOUNT, HardeningProfile};

/// Seconds an app gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT_SECONDS: i32 = 10;

/// UID and GID of the gateway and egress proxy containers (`nobody`).
const PLATFORM_UID: u32 = 65534;

/// What the driver needs to start one app container.
#[derive(Debug, Clone)]
pub struct AppLaunch {
    /// The app id.
    pub app_id: String,
    /// The local image reference.
    pub image: String,
    /// Command and arguments; empty keeps the image's.
    pub command: Vec<String>,
    /// The app's own environment variables (the manifest's `env`).
    pub env: BTreeMap<String, String>,
    /// The app's TCP port, if it serves requests; passed as `PORTCULLIS_PORT`.
    pub port: Option<u16>,
    /// The hardening profile.
    pub profile: HardeningProfile,
    /// Host directory with cert.pem, key.pem and ca-bundle.pem, owned by the
    /// app's UID; mounted read-only.
    pub credentials_dir: PathBuf,
    /// The app's egress proxy secret, put in `HTTP_PROXY` and `HTTPS_PROXY`.
    pub proxy_secret: String,
}

/// One app container found by its labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppContainer {
    /// The app id (label `io.portcullis.app`).
    pub app_id: String,
    /// The container id.
    pub container_id: String,
    /// The container name.
    pub name: String,
    /// Docker's state: created, running, restarting, exited, paused or dead.
    pub state: String,
    /// Docker's status line, such as "Up 3 minutes".
    pub status: String,
    /// The image reference.
    pub image: String,
}

/// Resource use of one app container, from one Engine statistics sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppStats {
    /// The app id.
    pub app_id: String,
    /// The container id.
    pub container_id: String,
    /// Memory in use in bytes, less the inactive page cache (as `docker stats` shows it).
    pub memory_bytes: u64,
    /// Memory limit in bytes.
    pub memory_limit_bytes: u64,
    /// CPU use in percent of one core over the sampling interval (about 1 s).
    pub cpu_percent: f64,
    /// Processes and threads in the container.
    pub pids: u64,
    /// The pids limit, if the Engine reports it.
    pub pids_limit: Option<u64>,
}

/// A platform container: the gateway, the egress proxy or a service.
#[derive(Debug, Clone, Default)]
pub struct PlatformContainerSpec {
    /// Gateway, Egress or Service.
    pub role: Option<Role>,
    /// For a service: its name, part of the container name.
    pub service_name: Option<String>,
    /// The local image reference.
    pub image: String,
    /// Command and arguments; empty keeps the image's.
    pub command: Vec<String>,
    /// Environment as `NAME=value`.
    pub env: Vec<String>,
    /// For a service: its fixed address on its network. Default: one the
    /// Engine picks from the services network's upper half.
    pub address: Option<Ipv4Addr>,
    /// For a service: put it on the outbound network instead of the
    /// services network (a test host that the egress proxy reaches).
    pub on_out_network: bool,
    /// Host paths mounted into the container.
    pub mounts: Vec<BindMount>,
    /// `UID:GID` to run as. Default: `nobody` (65534).
    pub user: Option<String>,
}

/// A host path mounted into a platform container.
#[derive(Debug, Clone)]
pub struct BindMount {
    /// The host path.
    pub source: PathBuf,
    /// The path inside the container.
    pub target: String,
    /// Whether the container may only read it.
    pub read_only: bool,
}

impl DockerDriver {
    /// Creates and starts the app's container on its own network, after
    /// joining the gateway and egress proxy containers (if running) to that
    /// network. The image must be present locally.
    #[tracing::instrument(skip_all, fields(app_id = %launch.app_id, container_id))]
    pub async fn deploy(&self, launch: &AppLaunch) -> Result<AppContainer, RuntimeError> {
        let app_id = launch.app_id.as_str();

        if let Err(error) = self.docker.inspect_image(&launch.image).await {
            if is_not_found(&error) {
                return Err(RuntimeError::ImageMissing { app_id: app_id.to_owned(), image: launch.image.clone() });
            }
            return Err(RuntimeError::docker("inspect image", launch.image.clone(), error));
        }
        if let Some(existing) = self.find_app(app_id).await? {
            return Err(RuntimeError::AlreadyDeployed {
                app_id: app_id.to_owned(),
                container_id: existing.container_id,
            });
        }

        let addresses = self.ensure_app_network(app_id).await?;
        self.join_platform_containers(app_id, &addresses).await?;

        let network = labels::app_network_name(&self.options.instance, app_id);
        let name = labels::app_container_name(&self.options.instance, app_id);
        let uid = launch.profile.uid;
        let body = ContainerCreateBody {
            image: Some(launch.image.clone()),
            cmd: (!launch.command.is_empty()).then(|| launch.command.clone()),
            env: Some(self.app_env(launch, &addresses)),
            user: Some(format!("{uid}:{uid}")),
            hostname: Some(app_id.to_owned()),
            labels: Some(labels::object_labels(
                &self.options.instance,
                Role::App,
                Some(app_id),
                &self.options.extra_labels,
            )),
            stop_timeout: Some(i64::from(STOP_TIMEOUT_SECONDS)),
            host_config: Some(launch.profile.host_config(&launch.credentials_dir, &network)),
            networking_config: Some(endpoint(&network, addresses.app)),
            ..Default::default()
        };
        let options = CreateContainerOptions { name: Some(name.clone()), ..Default::default() };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| RuntimeError::docker("create container", format!("app {app_id:?} ({name})"), e))?;
        tracing::Span::current().record("container_id", created.id.as_str());

        self.docker
            .start_container(&created.id, None)
            .await
            .map_err(|e| RuntimeError::docker("start container", format!("app {app_id:?} ({})", created.id), e))?;
        tracing::info!(address = %addresses.app, uid, image = %launch.image, "app container started");

        self.find_app(app_id).await?.ok_or_else(|| RuntimeError::NotDeployed {
            app_id: app_id.to_owned(),
            instance: self.options.instance.clone(),
        })
    }

    /// The environment of an app: its own variables, then the platform's:
    /// the gateway's URL, the paths of its certificate, key and CA bundle,
    /// and the egress proxy with its credential.
    fn app_env(&self, launch: &AppLaunch, addresses: &AppAddresses) -> Vec<String> {
        let proxy = format!(
            "http://{}:{}@{}:{}",
            launch.app_id, launch.proxy_secret, addresses.egress, self.options.proxy_port
        );
        let gateway_host = match &self.options.platform_names {
            Some(names) => names.gateway.clone(),
            None => addresses.gateway.to_string(),
        };
        let mut no_proxy = addresses.gateway.to_string();
        let mut env: Vec<String> = launch.env.iter().map(|(name, value)| format!("{name}={value}")).collect();
        if let Some(names) = &self.options.platform_names {
            env.push(format!("PORTCULLIS_TOKEN_URL=https://{}:{}/oauth2/token", names.token, names.token_port));
            no_proxy = format!("{no_proxy},{},{}", names.gateway, names.token);
        }
        env.extend([
            format!("PORTCULLIS_APP_ID={}", launch.app_id),
            format!("PORTCULLIS_GATEWAY=https://{gateway_host}:{}", self.options.gateway_port),
            format!("PORTCULLIS_CERT={CREDENTIALS_MOUNT}/cert.pem"),
            format!("PORTCULLIS_KEY={CREDENTIALS_MOUNT}/key.pem"),
            format!("PORTCULLIS_CA_BUNDLE={CREDENTIALS_MOUNT}/ca-bundle.pem"),
            format!("HTTP_PROXY={proxy}"),
            format!("HTTPS_PROXY={proxy}"),
            format!("http_proxy={proxy}"),
            format!("https_proxy={proxy}"),
            format!("NO_PROXY={no_proxy}"),
            format!("no_proxy={no_proxy}"),
        ]);
        if let Some(port) = launch.port {
            env.push(format!("PORTCULLIS_PORT={port}"));
        }
        env
    }

    /// Returns the names the gateway container carries on app networks.
    fn gateway_aliases(&self) -> Vec<String> {
        self.options.platform_names.iter().flat_map(|names| [names.gateway.clone(), names.token.clone()]).collect()
    }

    /// Connects this instance's gateway and egress proxy containers, where
    /// they exist, to the app's network at their fixed addresses.
    async fn join_platform_containers(&self, app_id: &str, addresses: &AppAddresses) -> Result<(), RuntimeError> {
        let network = labels::app_network_name(&self.options.instance, app_id);
        for (role, address) in [(Role::Gateway, addresses.gateway), (Role::Egress, addresses.egress)] {
            let name = labels::platform_container_name(&self.options.instance, role);
            match self.docker.inspect_container(&name, None).await {
                Ok(container) => {
                    let aliases = if role == Role::Gateway { self.gateway_aliases() } else { Vec::new() };
                    self.connect_once(&container, &network, address, aliases).await?;
                }
                Err(error) if is_not_found(&error) => {
                    tracing::warn!(
                        app_id,
                        role = role.as_str(),
                        "platform container not running: the app cannot reach it until it starts"
                    );
                }
                Err(error) => return Err(RuntimeError::docker("inspect container", name, error)),
            }
        }
        Ok(())
    }

    async fn connect_once(
        &self,
        container: &ContainerInspectResponse,
        network: &str,
        address: Ipv4Addr,
        aliases: Vec<String>,
    ) -> Result<(), RuntimeError> {
        let id = container.id.clone().unwrap_or_default();
        let connected = container
            .network_settings
            .as_ref()
            .and_then(|settings| settings.networks.as_ref())
            .is_some_and(|networks| networks.contains_key(network));
        if connected {
            return Ok(());
        }
        let request = NetworkConnectRequest {
            container: id.clone(),
            endpoint_config: Some(EndpointSettings {
                ipam_config: Some(EndpointIpamConfig { ipv4_address: Some(address.to_string()), ..Default::default() }),
                aliases: (!aliases.is_empty()).then_some(aliases),
                ..Default::default()
            }),
        };
        self.docker
            .connect_network(network, request)
            .await
            .map_err(|e| RuntimeError::docker("connect to network", format!("{id} to {network}"), e))
    }

    /// Creates and starts a gateway, egress proxy or service container and
    /// joins it to its networks: the gateway to the services network, the
    /// control network and every app network, the egress proxy to the
    /// outbound network and every app network, a service to the services
    /// network (or the outbound network) only. Returns the container id. It
    /// runs as `nobody` (or `spec.user`) with every capability dropped, a
    /// read-only root and `no-new-privileges`.
    pub async fn start_platform_container(&self, spec: &PlatformContainerSpec) -> Result<String, RuntimeError> {
        self.ensure_platform_networks().await?;
        let instance = &self.options.instance;
        let service_network = labels::service_network_name(instance);
        let out_network = labels::out_network_name(instance);
        let role = spec.role.unwrap_or(Role::Service);

        let (name, first_network, first_address) = match role {
            Role::Gateway => {
                let address = Ipv4Addr::from(u32::from(self.service_subnet().network()) + 2);
                (labels::platform_container_name(instance, Role::Gateway), service_network, Some(address))
            }
            Role::Egress => {
                let address = Ipv4Addr::from(u32::from(self.out_subnet().network()) + 3);
                (labels::platform_container_name(instance, Role::Egress), out_network, Some(address))
            }
            _ => {
                let service = spec.service_name.as_deref().unwrap_or("service");
                let network = if spec.on_out_network { out_network } else { service_network };
                (format!("pc-{instance}-service-{service}"), network, spec.address)
            }
        };
        let mounts: Vec<String> = spec
            .mounts
            .iter()
            .map(|mount| {
                let mode = if mount.read_only { "ro" } else { "rw" };
                format!("{}:{}:{mode}", mount.source.display(), mount.target)
            })
            .collect();

        let mut endpoint_settings = EndpointSettings::default();
        if let Some(address) = first_address {
            endpoint_settings.ipam_config =
                Some(EndpointIpamConfig { ipv4_address: Some(address.to_string()), ..Default::default() });
        }
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(spec.env.clone()),
            user: Some(spec.user.clone().unwrap_or_else(|| format!("{PLATFORM_UID}:{PLATFORM_UID}"))),
            labels: Some(labels::object_labels(instance, role, None, &self.options.extra_labels)),
            host_config: Some(HostConfig {
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                readonly_rootfs: Some(true),
                tmpfs: Some(HashMap::from([("/tmp".into(), "rw,noexec,nosuid,nodev,size=16m".into())])),
                network_mode: Some(first_network.clone()),
                binds: (!mounts.is_empty()).then_some(mounts),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::ON_FAILURE),
                    maximum_retry_count: Some(5),
                }),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(first_network, endpoint_settings)])),
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions { name: Some(name.clone()), ..Default::default() };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| RuntimeError::docker("create container", name.clone(), e))?;

        if matches!(role, Role::Gateway | Role::Egress) {
            let container = self
                .docker
                .inspect_container(&created.id, None)
                .await
                .map_err(|e| RuntimeError::docker("inspect container", name.clone(), e))?;
            let control =
                if role == Role::Gateway { self.gateway_control_address() } else { self.egress_control_address() };
            self.connect_once(&container, &labels::control_network_name(instance), control, Vec::new()).await?;
            for network in self.networks(Role::AppNetwork).await? {
                let Some(app_id) = network.labels.as_ref().and_then(|l| l.get(labels::APP)).cloned() else { continue };
                let Some(addresses) = self.app_addresses(&app_id).await? else { continue };
                let (address, aliases) = if role == Role::Gateway {
                    (addresses.gateway, self.gateway_aliases())
                } else {
                    (addresses.egress, Vec::new())
                };
                self.connect_once(&container, &labels::app_network_name(instance, &app_id), address, aliases).await?;
            }
        }

        self.docker
            .start_container(&created.id, None)
            .await
            .map_err(|e| RuntimeError::docker("start container", name.clone(), e))?;
        tracing::info!(container_id = %created.id, role = role.as_str(), "platform container started");
        Ok(created.id)
    }

    /// Lists this instance's app containers, running or not, ordered by app
    /// id. This is how a restarted platform finds the apps it started.
    pub async fn list_apps(&self) -> Result<Vec<AppContainer>, RuntimeError> {
        let mut apps: Vec<AppContainer> =
            self.list_containers(Some(Role::App), None).await?.iter().filter_map(app_container).collect();
        apps.sort_by(|a, b| a.app_id.cmp(&b.app_id));
        Ok(apps)
    }

    /// Returns the app's container, if any.
    pub async fn find_app(&self, app_id: &str) -> Result<Option<AppContainer>, RuntimeError> {
        Ok(self.list_containers(Some(Role::App), Some(app_id)).await?.iter().find_map(app_container))
    }

    async fn require_app(&self, app_id: &str) -> Result<AppContainer, RuntimeError> {
        self.find_app(app_id).await?.ok_or_else(|| RuntimeError::NotDeployed {
            app_id: app_id.to_owned(),
            instance: self.options.instance.clone(),
        })
    }

    /// Inspects the app's container: its effective configuration and state.
    pub async fn inspect_app(&self, app_id: &str) -> Result<ContainerInspectResponse, RuntimeError> {
        let app = self.require_app(app_id).await?;
        self.docker
            .inspect_container(&app.container_id, None)
            .await
            .map_err(|e| RuntimeError::docker("inspect container", format!("app {app_id:?} ({})", app.container_id), e))
    }

    /// Stops the app's container (SIGTERM, then SIGKILL after 10 s). A
    /// stopped container is not an error.
    #[tracing::instrument(skip(self), fields(container_id))]
    pub async fn stop_app(&self, app_id: &str) -> Result<(), RuntimeError> {
        let app = self.require_app(app_id).await?;
        tracing::Span::current().record("container_id", app.container_id.as_str());
        let options = StopContainerOptions { t: Some(STOP_TIMEOUT_SECONDS), ..Default::default() };
        match self.docker.stop_container(&app.container_id, Some(options)).await {
            Ok(()) => {}
            Err(error) if is_not_modified(&error) => {}
            Err(error) => {
                return Err(RuntimeError::docker(
                    "stop container",
                    format!("app {app_id:?} ({})", app.container_id),
                    error,
                ));
            }
        }
        tracing::info!("app container stopped");
        Ok(())
    }

    /// Removes the app's container (stopping it first) and its network.
    /// Returns false if the app had neither.
    #[tracing::instrument(skip(self))]
    pub async fn remove_app(&self, app_id: &str) -> Result<bool, RuntimeError> {
        let container = self.find_app(app_id).await?;
        if let Some(app) = &container {
            let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            match self.docker.remove_container(&app.container_id, Some(options)).await {
                Ok(()) => {}
                Err(error) if is_not_found(&error) => {}
                Err(error) => {
                    return Err(RuntimeError::docker(
                        "remove container",
                        format!("app {app_id:?} ({})", app.container_id),
                        error,
                    ));
                }
            }
            tracing::info!(container_id = %app.container_id, "app container removed");
        }
        let had_network = self.app_addresses(app_id).await?.is_some();
        self.remove_app_network(app_id).await?;
        Ok(container.is_some() || had_network)
    }

    /// Returns the last `tail` lines of the app's standard output and error
    /// (all lines when `None`), each with its stream prefixed where it is
    /// standard error.
    pub async fn app_logs(&self, app_id: &str, tail: Option<usize>) -> Result<Vec<String>, RuntimeError> {
        let app = self.require_app(app_id).await?;
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: tail.map_or_else(|| "all".to_owned(), |n| n.to_string()),
            ..Default::default()
        };
        let mut stream = self.docker.logs(&app.container_id, Some(options));
        let mut lines = Vec::new();
        while let Some(item) = stream.next().await {
            let output = item
                .map_err(|e| RuntimeError::docker("read logs", format!("app {app_id:?} ({})", app.container_id), e))?;
            let (prefix, message) = match output {
                bollard::container::LogOutput::StdErr { message } => ("stderr: ", message),
                other => ("", other.into_bytes()),
            };
            for line in String::from_utf8_lossy(&message).lines() {
                lines.push(format!("{prefix}{line}"));
            }
        }
        Ok(lines)
    }

    /// Samples the app's memory, CPU and pids from the Engine's statistics.
    /// Takes about a second, because CPU use is measured between two samples.
    pub async fn app_stats(&self, app_id: &str) -> Result<AppStats, RuntimeError> {
        let app = self.require_app(app_id).await?;
        let options = StatsOptions { stream: false, one_shot: false };
        let sample = self
            .docker
            .stats(&app.container_id, Some(options))
            .next()
            .await
            .ok_or_else(|| RuntimeError::Conflict {
                object: format!("app {app_id:?} ({})", app.container_id),
                message: "the Engine returned no statistics; check that the container is running".into(),
            })?
            .map_err(|e| {
                RuntimeError::docker("read statistics", format!("app {app_id:?} ({})", app.container_id), e)
            })?;
        Ok(stats_of(app_id, &app.container_id, &sample))
    }

    /// Disconnects the app's container from its network, so it can reach
    /// nothing; the container keeps running. Returns false if it was already
    /// disconnected.
    pub async fn isolate_app(&self, app_id: &str) -> Result<bool, RuntimeError> {
        let app = self.require_app(app_id).await?;
        let network = labels::app_network_name(&self.options.instance, app_id);
        if !self.is_connected(&app, &network).await? {
            return Ok(false);
        }
        let request = NetworkDisconnectRequest { container: app.container_id.clone(), force: Some(true) };
        self.docker.disconnect_network(&network, request).await.map_err(|e| {
            RuntimeError::docker("disconnect from network", format!("app {app_id:?} ({})", app.container_id), e)
        })?;
        tracing::warn!(app_id, container_id = %app.container_id, network, "app container disconnected");
        Ok(true)
    }

    /// Reconnects the app's container to its network at its fixed address.
    /// Returns false if it was already connected.
    pub async fn reconnect_app(&self, app_id: &str) -> Result<bool, RuntimeError> {
        let app = self.require_app(app_id).await?;
        let network = labels::app_network_name(&self.options.instance, app_id);
        if self.is_connected(&app, &network).await? {
            return Ok(false);
        }
        let addresses = self.ensure_app_network(app_id).await?;
        let container = self.docker.inspect_container(&app.container_id, None).await.map_err(|e| {
            RuntimeError::docker("inspect container", format!("app {app_id:?} ({})", app.container_id), e)
        })?;
        self.connect_once(&container, &network, addresses.app, Vec::new()).await?;
        tracing::info!(app_id, container_id = %app.container_id, network, "app container reconnected");
        Ok(true)
    }

    /// Returns whether the app's container is attached to its network.
    pub async fn app_connected(&self, app_id: &str) -> Result<bool, RuntimeError> {
        let app = self.require_app(app_id).await?;
        let network = labels::app_network_name(&self.options.instance, app_id);
        self.is_connected(&app, &network).await
    }

    async fn is_connected(&self, app: &AppContainer, network: &str) -> Result<bool, RuntimeError> {
        let container = self
            .docker
            .inspect_container(&app.container_id, None)
            .await
            .map_err(|e| RuntimeError::docker("inspect container", app.container_id.clone(), e))?;
        Ok(container
            .network_settings
            .and_then(|settings| settings.networks)
            .is_some_and(|networks| networks.contains_key(network)))
    }

    /// Removes every container and network of this platform instance. For
    /// tear-down and tests; it touches nothing without the instance's labels.
    pub async fn remove_everything(&self) -> Result<(), RuntimeError> {
        for container in self.list_containers(None, None).await? {
            let Some(id) = container.id else { continue };
            let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            if let Err(error) = self.docker.remove_container(&id, Some(options)).await
                && !is_not_found(&error)
            {
                return Err(RuntimeError::docker("remove container", id, error));
            }
        }
        for role in [Role::AppNetwork, Role::ServiceNetwork, Role::OutNetwork, Role::ControlNetwork] {
            for network in self.networks(role).await? {
                let Some(name) = network.name else { continue };
                if let Err(error) = self.docker.remove_network(&name).await
                    && !is_not_found(&error)
                {
                    return Err(RuntimeError::docker("remove network", name, error));
                }
            }
        }
        Ok(())
    }

    async fn list_containers(
        &self,
        role: Option<Role>,
        app_id: Option<&str>,
    ) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(labels::filter(&self.options.instance, role, app_id)),
            ..Default::default()
        };
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(|e| RuntimeError::docker("list containers", app_id.unwrap_or("all apps"), e))
    }
}

fn endpoint(network: &str, address: Ipv4Addr) -> NetworkingConfig {
    let settings = EndpointSettings {
        ipam_config: Some(EndpointIpamConfig { ipv4_address: Some(address.to_string()), ..Default::default() }),
        ..Default::default()
    };
    NetworkingConfig { endpoints_config: Some(HashMap::from([(network.to_owned(), settings)])) }
}

fn app_container(summary: &ContainerSummary) -> Option<AppContainer> {
    let labels = summary.labels.as_ref()?;
    Some(AppContainer {
        app_id: labels.get(labels::APP)?.clone(),
        container_id: summary.id.clone()?,
        name: summary.names.as_ref()?.first()?.trim_start_matches('/').to_owned(),
        state: summary.state.as_ref().map(|state| state.to_string()).unwrap_or_default(),
        status: summary.status.clone().unwrap_or_default(),
        image: summary.image.clone().unwrap_or_default(),
    })
}

/// Computes memory, CPU and pids figures the way `docker stats` does.
fn stats_of(app_id: &str, container_id: &str, sample: &ContainerStatsResponse) -> AppStats {
    let memory = sample.memory_stats.clone().unwrap_or_default();
    let cache = memory
        .stats
        .as_ref()
        .and_then(|stats| stats.get("total_inactive_file").or_else(|| stats.get("inactive_file")).copied());
    let usage = memory.usage.unwrap_or(0);
    let memory_bytes = usage.saturating_sub(cache.unwrap_or(0).min(usage));

    let cpu = sample.cpu_stats.clone().unwrap_or_default();
    let previous = sample.precpu_stats.clone().unwrap_or_default();
    let total =
        |stats: &bollard::models::ContainerCpuStats| stats.cpu_usage.as_ref().and_then(|u| u.total_usage).unwrap_or(0);
    let cpu_delta = total(&cpu).saturating_sub(total(&previous)) as f64;
    let system_delta = cpu.system_cpu_usage.unwrap_or(0).saturating_sub(previous.system_cpu_usage.unwrap_or(0)) as f64;
    let online = f64::from(cpu.online_cpus.unwrap_or(1).max(1));
    let cpu_percent = if system_delta > 0.0 { cpu_delta / system_delta * online * 100.0 } else { 0.0 };

    let pids = sample.pids_stats.clone().unwrap_or_default();
    AppStats {
        app_id: app_id.to_owned(),
        container_id: container_id.to_owned(),
        memory_bytes,
        memory_limit_bytes: memory.limit.unwrap_or(0),
        cpu_percent,
        pids: pids.current.unwrap_or(0),
        pids_limit: pids.limit,
    }
}
