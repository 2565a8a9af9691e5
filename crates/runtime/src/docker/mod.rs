//! The Docker driver: app containers and their networks over the Engine API.
//!
//! The topology, with addresses from [`DockerOptions::subnet_pool`]:
//!
//! ```text
//!   pc-<instance>-svc (internal)   first /24 of the pool: gateway .2, services from .128
//!   pc-<instance>-out              second /24: egress proxy .3, with a route out
//!   pc-<instance>-ctl (internal)   third /24: host .1, gateway .2 (operator API), egress proxy .3
//!   pc-<instance>-app-<id> (internal, one /28 per app after those):
//!       .1 reserved by Docker (no address on the host), gateway .2, egress proxy .3, app .4
//! ```
//!
//! The app and services networks are created with
//! `com.docker.network.bridge.inhibit_ipv4`, so the host's side of the bridge
//! has no IPv4 address and an app cannot open a connection to the host
//! through its network. Only the control network, which apps never join,
//! gives the host an address.

mod containers;
mod image;
mod network;

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bollard::Docker;
use ipnet::Ipv4Net;

use crate::error::RuntimeError;

pub use containers::{AppContainer, AppLaunch, AppStats, BindMount, PlatformContainerSpec};
pub use image::{ImageContext, build_image, portcullis_image_context};
pub use network::AppAddresses;

/// Settings of the Docker driver.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    /// Value of the `io.portcullis.instance` label on every object, and part
    /// of every name; a lowercase DNS label.
    pub instance: String,
    /// Addresses for the platform's networks: the first /24 for the services
    /// network, the second for the outbound network, the third for the
    /// control network, and /28s after those for apps. Must not overlap any
    /// other network on the host; at least a /22.
    pub subnet_pool: Ipv4Net,
    /// TCP port of the gateway's app listener, given to apps.
    pub gateway_port: u16,
    /// TCP port of the egress proxy, given to apps in `HTTP_PROXY`.
    pub proxy_port: u16,
    /// Names apps use for the gateway and the token service, when the
    /// gateway container serves both. Without them apps get the gateway's
    /// address and no token service URL.
    pub platform_names: Option<PlatformNames>,
    /// Labels added to every object besides the platform's (tests add a
    /// per-run label here).
    pub extra_labels: HashMap<String, String>,
}

impl Default for DockerOptions {
    fn default() -> Self {
        Self {
            instance: "default".into(),
            subnet_pool: Ipv4Net::new(Ipv4Addr::new(10, 213, 0, 0), 16).unwrap_or_default(),
            gateway_port: 8443,
            proxy_port: 3128,
            platform_names: None,
            extra_labels: HashMap::new(),
        }
    }
}

/// DNS names of the gateway container on every app network.
///
/// The gateway container joins each app network with these names as
/// network aliases, which the Engine's DNS server answers inside that
/// network. Apps connect by name, so the TLS server name is one that the
/// platform's certificates carry (`gateway.<trust domain>`,
/// `token.<trust domain>`), whatever address the app network gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformNames {
    /// The gateway's name, in `PORTCULLIS_GATEWAY`.
    pub gateway: String,
    /// The token service's name, in `PORTCULLIS_TOKEN_URL`.
    pub token: String,
    /// The token service's TCP port.
    pub token_port: u16,
}

/// A connection to the Docker Engine with the platform's options.
///
/// Cloning is cheap and shares the connection.
#[derive(Debug, Clone)]
pub struct DockerDriver {
    docker: Docker,
    options: DockerOptions,
    apparmor: bool,
}

impl DockerDriver {
    /// Connects to the local Engine (`DOCKER_HOST` or the Unix socket),
    /// negotiates the API version (Debian's Engine 20.10 speaks 1.41) and
    /// checks that it responds to a ping.
    pub async fn connect(options: DockerOptions) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults().map_err(|source| RuntimeError::Connect { source })?;
        let docker = docker.negotiate_version().await.map_err(|source| RuntimeError::Connect { source })?;
        docker.ping().await.map_err(|source| RuntimeError::Connect { source })?;

        let apparmor = crate::profile::apparmor_enabled();
        tracing::debug!(
            instance = %options.instance,
            api_version = %docker.client_version(),
            apparmor,
            "connected to the Docker Engine"
        );
        Ok(Self { docker, options, apparmor })
    }

    /// The Engine client, for callers that need an API call the driver does
    /// not wrap.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// The driver's options.
    pub fn options(&self) -> &DockerOptions {
        &self.options
    }

    /// Whether the host has AppArmor enabled, so app containers get the
    /// `docker-default` profile.
    pub fn apparmor(&self) -> bool {
        self.apparmor
    }
}
