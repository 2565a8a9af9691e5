//! The platform's networks: one internal network per app, the internal
//! services network, the egress proxy's outbound network and the control
//! network.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bollard::models::{Ipam, IpamConfig, Network, NetworkCreateRequest, NetworkInspect};
use bollard::query_parameters::ListNetworksOptions;
use ipnet::Ipv4Net;

use super::DockerDriver;
use crate::error::{RuntimeError, is_not_found};
use crate::labels::{self, Role};

/// Docker bridge option that leaves the host's side of the bridge without an
/// IPv4 address (honoured by Engine 20.10).
const INHIBIT_IPV4: &str = "com.docker.network.bridge.inhibit_ipv4";

/// Prefix length of an app network: 16 addresses, 4 in use.
const APP_PREFIX: u8 = 28;

/// The fixed addresses on one app network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppAddresses {
    /// The app network's subnet.
    pub subnet: Ipv4Net,
    /// The gateway container's address: subnet + 2.
    pub gateway: Ipv4Addr,
    /// The egress proxy container's address: subnet + 3.
    pub egress: Ipv4Addr,
    /// The app container's address: subnet + 4.
    pub app: Ipv4Addr,
}

impl AppAddresses {
    /// The addresses inside `subnet`.
    pub fn in_subnet(subnet: Ipv4Net) -> Self {
        let base = u32::from(subnet.network());
        Self {
            subnet,
            gateway: Ipv4Addr::from(base + 2),
            egress: Ipv4Addr::from(base + 3),
            app: Ipv4Addr::from(base + 4),
        }
    }
}

impl DockerDriver {
    /// The services network's subnet: the pool's first /24.
    pub fn service_subnet(&self) -> Ipv4Net {
        nth_subnet(self.options.subnet_pool, 24, 0)
    }

    /// The outbound network's subnet: the pool's second /24.
    pub fn out_subnet(&self) -> Ipv4Net {
        nth_subnet(self.options.subnet_pool, 24, 1)
    }

    /// Returns the control network's subnet: the pool's third /24.
    pub fn control_subnet(&self) -> Ipv4Net {
        nth_subnet(self.options.subnet_pool, 24, 2)
    }

    /// Returns the gateway container's address on the control network: subnet + 2.
    /// The host reaches it there; apps never do.
    pub fn gateway_control_address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.control_subnet().network()) + 2)
    }

    /// Returns the egress proxy container's address on the control network: subnet
    /// + 3. From there it reports refusals to the gateway container's guard.
    pub fn egress_control_address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.control_subnet().network()) + 3)
    }

    /// Creates the services network, the outbound network and the control
    /// network if they do not exist yet.
    pub async fn ensure_platform_networks(&self) -> Result<(), RuntimeError> {
        let instance = &self.options.instance;
        let service_subnet = self.service_subnet();
        let dynamic_range = nth_subnet(service_subnet, 25, 1);
        self.ensure_network(
            &labels::service_network_name(instance),
            Role::ServiceNetwork,
            None,
            service_subnet,
            Some(dynamic_range),
            Isolation::Internal,
        )
        .await?;
        self.ensure_network(
            &labels::out_network_name(instance),
            Role::OutNetwork,
            None,
            self.out_subnet(),
            None,
            Isolation::RouteOut,
        )
        .await?;
        // Internal, but with the host's address on the bridge, so that the
        // host (and only the host) reaches the gateway container.
        self.ensure_network(
            &labels::control_network_name(instance),
            Role::ControlNetwork,
            None,
            self.control_subnet(),
            None,
            Isolation::InternalWithHost,
        )
        .await?;
        Ok(())
    }

    /// Returns the app's network and its addresses, creating the network on a
    /// free /28 of the pool if it does not exist.
    pub async fn ensure_app_network(&self, app_id: &str) -> Result<AppAddresses, RuntimeError> {
        let name = labels::app_network_name(&self.options.instance, app_id);
        if let Some(network) = self.network(&name).await? {
            return addresses_of(network.ipam.as_ref()).ok_or_else(|| RuntimeError::Conflict {
                object: name.clone(),
                message: "the app network has no IPv4 subnet; remove it with `portcullis app rm`".into(),
            });
        }

        let pool = self.options.subnet_pool;
        // The first three /24s hold the services, outbound and control networks.
        let first = (256 / 16) * 3;
        let count = 1u32 << (APP_PREFIX - pool.prefix_len());
        let used = self.used_subnets().await?;
        for index in first..count {
            let subnet = nth_subnet(pool, APP_PREFIX, index);
            if used.iter().any(|other| other.contains(&subnet.network()) || subnet.contains(&other.network())) {
                continue;
            }
            match self.ensure_network(&name, Role::AppNetwork, Some(app_id), subnet, None, Isolation::Internal).await {
                Ok(()) => return Ok(AppAddresses::in_subnet(subnet)),
                Err(RuntimeError::Docker { source, .. }) if source.to_string().contains("overlaps") => continue,
                Err(error) => return Err(error),
            }
        }
        Err(RuntimeError::SubnetPoolExhausted { app_id: app_id.to_owned(), pool: pool.to_string() })
    }

    /// Returns the addresses of the app's network, if it exists.
    pub async fn app_addresses(&self, app_id: &str) -> Result<Option<AppAddresses>, RuntimeError> {
        let name = labels::app_network_name(&self.options.instance, app_id);
        Ok(self.network(&name).await?.and_then(|network| addresses_of(network.ipam.as_ref())))
    }

    /// Removes the app's network; missing is not an error.
    pub async fn remove_app_network(&self, app_id: &str) -> Result<(), RuntimeError> {
        let name = labels::app_network_name(&self.options.instance, app_id);
        let Some(network) = self.network(&name).await? else { return Ok(()) };

        let containers: Vec<String> = network.containers.unwrap_or_default().into_keys().collect();
        for container in containers {
            let request = bollard::models::NetworkDisconnectRequest { container, force: Some(true) };
            if let Err(error) = self.docker.disconnect_network(&name, request).await
                && !is_not_found(&error)
            {
                return Err(RuntimeError::docker("disconnect from network", name.clone(), error));
            }
        }
        match self.docker.remove_network(&name).await {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(RuntimeError::docker("remove network", name, error)),
        }
    }

    /// Lists this instance's networks of `role`.
    pub(crate) async fn networks(&self, role: Role) -> Result<Vec<Network>, RuntimeError> {
        let options = ListNetworksOptions { filters: Some(labels::filter(&self.options.instance, Some(role), None)) };
        self.docker
            .list_networks(Some(options))
            .await
            .map_err(|e| RuntimeError::docker("list networks", role.as_str(), e))
    }

    /// Returns this instance's network called `name`, if any. A network of
    /// that name without this instance's labels is reported as an error and
    /// left alone.
    async fn network(&self, name: &str) -> Result<Option<NetworkInspect>, RuntimeError> {
        let network = match self.docker.inspect_network(name, None).await {
            Ok(network) => network,
            Err(error) if is_not_found(&error) => return Ok(None),
            Err(error) => return Err(RuntimeError::docker("inspect network", name, error)),
        };
        let labels = network.labels.clone().unwrap_or_default();
        let ours = labels.get(labels::MANAGED).is_some_and(|v| v == "true")
            && labels.get(labels::INSTANCE).is_some_and(|v| *v == self.options.instance);
        if !ours || network.name.as_deref() != Some(name) {
            return Err(RuntimeError::Conflict {
                object: name.to_owned(),
                message:
                    "a network of this name exists but was not created by this platform instance; rename or remove it"
                        .into(),
            });
        }
        Ok(Some(network))
    }

    async fn ensure_network(
        &self,
        name: &str,
        role: Role,
        app_id: Option<&str>,
        subnet: Ipv4Net,
        ip_range: Option<Ipv4Net>,
        isolation: Isolation,
    ) -> Result<(), RuntimeError> {
        if self.network(name).await?.is_some() {
            return Ok(());
        }

        let internal = isolation != Isolation::RouteOut;
        let mut options = HashMap::new();
        if isolation == Isolation::Internal {
            options.insert(INHIBIT_IPV4.to_owned(), "true".to_owned());
        }
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            internal: Some(internal),
            attachable: Some(false),
            enable_ipv6: Some(false),
            ipam: Some(Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(subnet.to_string()),
                    ip_range: ip_range.map(|range| range.to_string()),
                    ..Default::default()
                }]),
                options: None,
            }),
            options: Some(options),
            labels: Some(labels::object_labels(&self.options.instance, role, app_id, &self.options.extra_labels)),
            ..Default::default()
        };
        self.docker.create_network(request).await.map_err(|e| RuntimeError::docker("create network", name, e))?;
        tracing::info!(network = name, %subnet, internal, "network created");
        Ok(())
    }

    /// Every IPv4 subnet of every network on the host, ours or not, so a new
    /// app network never overlaps one.
    async fn used_subnets(&self) -> Result<Vec<Ipv4Net>, RuntimeError> {
        let networks = self
            .docker
            .list_networks(None::<ListNetworksOptions>)
            .await
            .map_err(|e| RuntimeError::docker("list networks", "all", e))?;
        Ok(networks.iter().flat_map(|network| subnets_of(network.ipam.as_ref())).collect())
    }
}

/// The isolation of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// No route out and no address on the host.
    Internal,
    /// No route out, but the host has an address on the bridge.
    InternalWithHost,
    /// A plain bridge with a route out through the host.
    RouteOut,
}

fn subnets_of(ipam: Option<&Ipam>) -> Vec<Ipv4Net> {
    let configs = ipam.and_then(|ipam| ipam.config.clone()).unwrap_or_default();
    configs.iter().filter_map(|config| config.subnet.as_deref()?.parse().ok()).collect()
}

fn addresses_of(ipam: Option<&Ipam>) -> Option<AppAddresses> {
    subnets_of(ipam).first().copied().map(AppAddresses::in_subnet)
}

/// The `index`-th subnet of length `prefix` inside `pool`.
fn nth_subnet(pool: Ipv4Net, prefix: u8, index: u32) -> Ipv4Net {
    let size = 1u32 << (32 - prefix);
    let base = u32::from(pool.network()) + index * size;
    Ipv4Net::new(Ipv4Addr::from(base), prefix).unwrap_or(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_plan() {
        let pool: Ipv4Net = "10.213.0.0/16".parse().unwrap();
        assert_eq!(nth_subnet(pool, 24, 1).to_string(), "10.213.1.0/24");
        assert_eq!(nth_subnet(pool, 24, 2).to_string(), "10.213.2.0/24");
        assert_eq!(nth_subnet(pool, 28, 48).to_string(), "10.213.3.0/28");
        let addresses = AppAddresses::in_subnet(nth_subnet(pool, 28, 49));
        assert_eq!(addresses.gateway.to_string(), "10.213.3.18");
        assert_eq!(addresses.egress.to_string(), "10.213.3.19");
        assert_eq!(addresses.app.to_string(), "10.213.3.20");
    }
}
