//! The app manifest: what an app requests, in a TOML file parsed strictly.
//!
//! Unknown keys and wrong types are rejected with their dotted key path, so a
//! typo never passes silently. The format is documented in docs/manifest.md.

use std::collections::BTreeMap;
use std::path::Path;

use portcullis_config::AppId;
use serde::Deserialize;

use crate::error::RuntimeError;

/// A validated app manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The app id.
    pub id: AppId,
    /// The local image reference; it is never pulled.
    pub image: String,
    /// Command and arguments; empty means the image's own.
    pub command: Vec<String>,
    /// Extra environment variables. Names starting with `PORTCULLIS_` and the
    /// proxy variables are reserved for the platform.
    pub env: BTreeMap<String, String>,
    /// TCP port the app listens on inside its network, if it serves requests.
    pub port: Option<u16>,
    /// Platform services and the scopes requested on each.
    pub services: Vec<ServiceRequest>,
    /// Internet hosts the app wants to reach through the egress proxy: exact
    /// names or `*.domain`.
    pub egress_hosts: Vec<String>,
    /// Limits that narrow the platform's hardening defaults.
    pub resources: Resources,
}

/// One platform service an app requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRequest {
    /// Service name, a DNS label.
    pub name: String,
    /// Scopes on that service, each `<service>:<action>`.
    pub scopes: Vec<String>,
}

/// Limits requested by the manifest; each may only be lower than the
/// platform's `runtime.hardening` value. `None` keeps the platform's value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory in MiB.
    pub memory_mib: Option<u64>,
    /// CPU quota in cores.
    pub cpus: Option<f64>,
    /// Processes and threads in the container.
    pub pids: Option<u64>,
    /// Open file descriptors per process.
    pub nofile: Option<u64>,
    /// Processes of the app's UID.
    pub nproc: Option<u64>,
    /// Queued signals of the app's UID.
    pub sigpending: Option<u64>,
    /// Size of /tmp in MiB.
    pub tmpfs_mib: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    id: String,
    image: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    port: Option<u16>,
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    egress: RawEgress,
    #[serde(default)]
    resources: Resources,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgress {
    #[serde(default)]
    hosts: Vec<String>,
}

/// Environment variable names the platform sets itself.
const RESERVED_ENV: [&str; 4] = ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"];

impl Manifest {
    /// Reads and validates the manifest file at `path`.
    pub fn load(path: &Path) -> Result<Self, RuntimeError> {
        let text = std::fs::read_to_string(path).map_err(|error| RuntimeError::Manifest {
            file: path.to_owned(),
            key: "(file)".into(),
            message: format!("cannot read: {error}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates manifest text; `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, RuntimeError> {
        let fail =
            |key: &str, message: String| RuntimeError::Manifest { file: path.to_owned(), key: key.to_owned(), message };

        let deserializer =
            toml::Deserializer::parse(text).map_err(|error| fail("(syntax)", error.message().trim().to_owned()))?;
        let raw: RawManifest = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let key = error.path().to_string();
            let key = if key == "." { "(top level)".to_owned() } else { key };
            fail(&key, error.into_inner().message().trim().to_owned())
        })?;

        let id = AppId::parse(&raw.id).map_err(|rule| fail("id", format!("invalid app id {:?}: {rule}", raw.id)))?;

        if raw.image.trim().is_empty() || raw.image.chars().any(char::is_whitespace) {
            return Err(fail(
                "image",
                format!("invalid image reference {:?}: expected a name such as app:1.0", raw.image),
            ));
        }

        for name in raw.env.keys() {
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(fail(
                    &format!("env.{name}"),
                    "invalid variable name: expected letters, digits and '_'".into(),
                ));
            }
            if name.starts_with("PORTCULLIS_") || RESERVED_ENV.contains(&name.as_str()) {
                return Err(fail(&format!("env.{name}"), "reserved: the platform sets this variable".into()));
            }
        }

        if raw.port == Some(0) {
            return Err(fail("port", "invalid port 0: expected 1 to 65535".into()));
        }

        let mut services = Vec::new();
        for (index, service) in raw.services.into_iter().enumerate() {
            AppId::parse(&service.name).map_err(|rule| {
                fail(&format!("services[{index}].name"), format!("invalid service name {:?}: {rule}", service.name))
            })?;
            for (scope_index, scope) in service.scopes.iter().enumerate() {
                let valid = scope
                    .split_once(':')
                    .is_some_and(|(name, action)| name == service.name && !action.is_empty() && !action.contains(':'));
                if !valid {
                    return Err(fail(
                        &format!("services[{index}].scopes[{scope_index}]"),
                        format!("invalid scope {scope:?}: expected \"{}:<action>\"", service.name),
                    ));
                }
            }
            services.push(ServiceRequest { name: service.name, scopes: service.scopes });
        }

        for (index, host) in raw.egress.hosts.iter().enumerate() {
            if !is_host_pattern(host) {
                return Err(fail(
                    &format!("egress.hosts[{index}]"),
                    format!(
                        "invalid host {host:?}: expected a lowercase name such as api.example.com or *.example.com"
                    ),
                ));
            }
        }

        check_resources(&raw.resources).map_err(|(key, message)| fail(&format!("resources.{key}"), message))?;

        Ok(Self {
            id,
            image: raw.image,
            command: raw.command,
            env: raw.env,
            port: raw.port,
            services,
            egress_hosts: raw.egress.hosts,
            resources: raw.resources,
        })
    }
}

/// Checks that each resource is positive; the upper bounds are the platform's
/// limits, checked at deploy.
fn check_resources(resources: &Resources) -> Result<(), (&'static str, String)> {
    let integers = [
        ("memory_mib", resources.memory_mib, 16),
        ("pids", resources.pids, 1),
        ("nofile", resources.nofile, 16),
        ("nproc", resources.nproc, 1),
        ("sigpending", resources.sigpending, 1),
        ("tmpfs_mib", resources.tmpfs_mib, 1),
    ];
    for (key, value, minimum) in integers {
        if let Some(value) = value
            && value < minimum
        {
            return Err((key, format!("invalid value {value}: expected at least {minimum}")));
        }
    }
    if let Some(cpus) = resources.cpus
        && !(cpus >= 0.01 && cpus.is_finite())
    {
        return Err(("cpus", format!("invalid value {cpus}: expected at least 0.01 cores")));
    }
    Ok(())
}

/// Returns whether `host` is a lowercase DNS name, optionally with a leading
/// `*.`, with at least two labels.
fn is_host_pattern(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let labels: Vec<&str> = name.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, RuntimeError> {
        Manifest::parse(Path::new("app.toml"), text)
    }

    const FULL: &str = r#"
id = "weather-app"
image = "weather-app:1.2"
command = ["/bin/app", "--listen", "0.0.0.0:8080"]
port = 8080

[env]
LOG_LEVEL = "info"

[[services]]
name = "weather"
scopes = ["weather:read"]

[egress]
hosts = ["api.example.com", "*.tiles.example.org"]

[resources]
memory_mib = 128
cpus = 0.25
"#;

    #[test]
    fn full_manifest_parses() {
        let manifest = parse(FULL).unwrap();
        assert_eq!(manifest.id.as_str(), "weather-app");
        assert_eq!(manifest.port, Some(8080));
        assert_eq!(manifest.services, [ServiceRequest { name: "weather".into(), scopes: vec!["weather:read".into()] }]);
        assert_eq!(manifest.egress_hosts.len(), 2);
        assert_eq!(manifest.resources.memory_mib, Some(128));
        assert_eq!(manifest.resources.pids, None);
    }

    #[test]
    fn unknown_key_names_path() {
        let error = parse(&FULL.replace("memory_mib", "memroy_mib")).unwrap_err();
        let RuntimeError::Manifest { key, message, .. } = &error else { panic!("{error}") };
        assert_eq!(key, "resources.memroy_mib");
        assert!(message.contains("unknown field"), "{message}");
    }

    #[test]
    fn wrong_type_names_path() {
        let error = parse(&FULL.replace("cpus = 0.25", "cpus = \"lots\"")).unwrap_err();
        let RuntimeError::Manifest { key, .. } = &error else { panic!("{error}") };
        assert_eq!(key, "resources.cpus");
    }

    #[test]
    fn scope_of_other_service_rejected() {
        let error = parse(&FULL.replace("weather:read", "records:read")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "app.toml: services[0].scopes[0]: invalid scope \"records:read\": expected \"weather:<action>\""
        );
    }

    #[test]
    fn reserved_env_rejected() {
        let error = parse(&FULL.replace("LOG_LEVEL", "HTTPS_PROXY")).unwrap_err();
        let RuntimeError::Manifest { key, .. } = &error else { panic!("{error}") };
        assert_eq!(key, "env.HTTPS_PROXY");
    }

    #[test]
    fn invalid_values_rejected() {
        let cases = [
            ("id = \"weather-app\"", "id = \"Weather_App\"", "id"),
            ("image = \"weather-app:1.2\"", "image = \"\"", "image"),
            ("port = 8080", "port = 0", "port"),
            ("\"api.example.com\"", "\"API.example.com\"", "egress.hosts[0]"),
            ("memory_mib = 128", "memory_mib = 1", "resources.memory_mib"),
            ("cpus = 0.25", "cpus = 0.0", "resources.cpus"),
        ];
        for (from, to, expected_key) in cases {
            let error = parse(&FULL.replace(from, to)).unwrap_err();
            let RuntimeError::Manifest { key, .. } = &error else { panic!("{error}") };
            assert_eq!(key, expected_key, "{error}");
        }
    }
}
