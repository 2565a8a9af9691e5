//! Labels and names of the Docker objects the runtime creates.
//!
//! Every container, network and image the runtime creates carries
//! [`MANAGED`], [`INSTANCE`] and, for app objects, [`APP`]. Every query the
//! runtime makes filters on [`MANAGED`] and [`INSTANCE`], so nothing else on
//! the host's Docker is read back as ours or changed, and a restarted
//! Portcullis finds its own objects again by label.

use std::collections::HashMap;

/// Marks an object as created by Portcullis; the value is `true`.
pub const MANAGED: &str = "io.portcullis.managed";
/// The app id an object belongs to.
pub const APP: &str = "io.portcullis.app";
/// The platform instance that created the object, so two Portcullis
/// instances (or a test run) on one host never adopt each other's objects.
pub const INSTANCE: &str = "io.portcullis.instance";
/// The object's role: `app`, `gateway`, `egress`, `service`, `network-app`,
/// `network-services`, `network-out` or `network-control`.
pub const ROLE: &str = "io.portcullis.role";

/// The role label of a platform object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// A third-party app container.
    App,
    /// The gateway container.
    Gateway,
    /// The egress proxy container.
    Egress,
    /// A platform service container.
    Service,
    /// An app's internal network.
    AppNetwork,
    /// The internal network of the gateway and the services.
    ServiceNetwork,
    /// The egress proxy's network with a route out.
    OutNetwork,
    /// The internal network on which the host reaches the gateway
    /// container's operator API.
    ControlNetwork,
    /// A locally built image.
    Image,
}

impl Role {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Gateway => "gateway",
            Self::Egress => "egress",
            Self::Service => "service",
            Self::AppNetwork => "network-app",
            Self::ServiceNetwork => "network-services",
            Self::OutNetwork => "network-out",
            Self::ControlNetwork => "network-control",
            Self::Image => "image",
        }
    }
}

/// The labels of one object: the platform labels plus any extra ones
/// (tests add a per-run label here).
pub(crate) fn object_labels(
    instance: &str,
    role: Role,
    app_id: Option<&str>,
    extra: &HashMap<String, String>,
) -> HashMap<String, String> {
    let mut labels = extra.clone();
    labels.insert(MANAGED.into(), "true".into());
    labels.insert(INSTANCE.into(), instance.into());
    labels.insert(ROLE.into(), role.as_str().into());
    if let Some(app_id) = app_id {
        labels.insert(APP.into(), app_id.into());
    }
    labels
}

/// A Docker `label` filter list that selects this instance's objects, with
/// optional role and app conditions.
pub(crate) fn filter(instance: &str, role: Option<Role>, app_id: Option<&str>) -> HashMap<String, Vec<String>> {
    let mut conditions = vec![format!("{MANAGED}=true"), format!("{INSTANCE}={instance}")];
    if let Some(role) = role {
        conditions.push(format!("{ROLE}={}", role.as_str()));
    }
    if let Some(app_id) = app_id {
        conditions.push(format!("{APP}={app_id}"));
    }
    HashMap::from([("label".to_owned(), conditions)])
}

/// The name of an app's container: `pc-<instance>-app-<id>`.
pub fn app_container_name(instance: &str, app_id: &str) -> String {
    format!("pc-{instance}-app-{app_id}")
}

/// The name of an app's network: `pc-<instance>-app-<id>`.
pub fn app_network_name(instance: &str, app_id: &str) -> String {
    format!("pc-{instance}-app-{app_id}")
}

/// The name of the services network: `pc-<instance>-svc`.
pub fn service_network_name(instance: &str) -> String {
    format!("pc-{instance}-svc")
}

/// The name of the egress proxy's outbound network: `pc-<instance>-out`.
pub fn out_network_name(instance: &str) -> String {
    format!("pc-{instance}-out")
}

/// Returns the name of the control network: `pc-<instance>-ctl`.
pub fn control_network_name(instance: &str) -> String {
    format!("pc-{instance}-ctl")
}

/// The name of a platform container: `pc-<instance>-<role>`.
pub fn platform_container_name(instance: &str, role: Role) -> String {
    format!("pc-{instance}-{}", role.as_str())
}
