//! `portcullis app`: the registry of third-party apps and their containers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use portcullis_config::{AppId, Driver};
use portcullis_identity::{CA_DIR, Lifetimes, PlatformCa};
use portcullis_runtime::RuntimeError;
use portcullis_runtime::docker::{AppContainer, DockerDriver, DockerOptions};
use portcullis_runtime::manifest::Manifest;
use portcullis_runtime::profile::{Relaxable, Relaxation};
use portcullis_store::AppRecord;

use super::{Global, UsageError, load_config};
use crate::output::{Format, print_json, print_table, timestamp};
use crate::{EXIT_OK, EXIT_PROBLEMS};

/// Subcommands of `app`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Register a new app in state "submitted".
    Register {
        /// App id: a lowercase DNS label (letters, digits, '-'; 1 to 63 characters).
        #[arg(long)]
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Developer or organisation responsible for the app.
        #[arg(long)]
        owner: String,
        /// OAuth redirect URI for the authorization code grant (repeatable):
        /// an https:// URL, or http://127.0.0.1 or http://[::1] with a port for
        /// native apps (RFC 8252 section 7.3). Matched exactly.
        #[arg(long = "redirect-uri", value_name = "URI")]
        redirect_uris: Vec<String>,
    },
    /// List registered apps with the state of their containers ("-" when an
    /// app has none or Docker is unreachable).
    List {
        /// Output format: "table" or "json".
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show one app; exits 1 if it is not registered.
    Show {
        /// App id.
        id: String,
        /// Output format: "table" or "json".
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove an app with its versions, grants, findings and trials; its
    /// decisions and certificates stay on record. Exits 1 if it is not registered.
    Remove {
        /// App id.
        id: String,
    },
    /// Deploy an app from its manifest as a hardened container on its own
    /// network, with a fresh certificate. The app must be registered and its
    /// image present locally (images are never pulled).
    Deploy {
        /// The app's manifest (TOML, see docs/manifest.md).
        manifest: PathBuf,
        /// Platform configuration file: hardening limits, driver, store and
        /// data directory.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// The app's egress proxy secret, put in HTTP_PROXY and HTTPS_PROXY as
        /// http://<app-id>:<secret>@<proxy>:<port> and stored (as its
        /// SHA-256) for the proxy. Without it a new random secret is issued.
        #[arg(long, env = "PORTCULLIS_PROXY_SECRET", hide_env_values = true, value_name = "SECRET")]
        proxy_secret: Option<String>,
        /// Relax one hardening setting, with the reason (logged):
        /// SETTING=REASON, where SETTING is read_only_root, seccomp,
        /// no_new_privileges, apparmor or cap:NAME. Repeatable.
        #[arg(long = "relax", value_name = "SETTING=REASON")]
        relaxations: Vec<String>,
    },
    /// Issue a new egress proxy secret for a registered app and print it
    /// once, with the proxy URL for HTTP_PROXY. The app's earlier secret
    /// stops working at once. `app deploy` issues one itself; this is for
    /// apps started by other means.
    ProxySecret {
        /// App id.
        id: String,
        /// Platform configuration file, for the egress proxy's address.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
    /// Stop an app's container (SIGTERM, then SIGKILL after 10 seconds).
    Stop {
        /// App id.
        id: String,
    },
    /// Remove an app's container and its network; the registration stays.
    Rm {
        /// App id.
        id: String,
    },
    /// Print an app's standard output and error.
    Logs {
        /// App id.
        id: String,
        /// Print only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// Report an app's memory (bytes and MiB), CPU (percent of one core,
    /// sampled over about 1 second) and process count against its limits.
    Stats {
        /// App id.
        id: String,
        /// Output format: "table" or "json".
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

fn app_id(value: &str) -> anyhow::Result<AppId> {
    AppId::parse(value).map_err(|rule| UsageError(format!("invalid app id {value:?}: {rule}")).into())
}

/// Runs an `app` subcommand.
pub async fn run(global: &Global, command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Deploy { manifest, config, proxy_secret, relaxations } => {
            return deploy(global, &manifest, &config, proxy_secret.as_deref(), &relaxations).await;
        }
        Command::ProxySecret { id, config } => return proxy_secret(global, &id, &config).await,
        Command::Stop { id } => {
            let id = app_id(&id)?;
            docker().await?.stop_app(id.as_str()).await?;
            println!("stopped app {id}");
            return Ok(EXIT_OK);
        }
        Command::Rm { id } => {
            let id = app_id(&id)?;
            if !docker().await?.remove_app(id.as_str()).await? {
                eprintln!("portcullis: app {id:?} has no container or network");
                return Ok(EXIT_PROBLEMS);
            }
            println!("removed the container and network of app {id}");
            return Ok(EXIT_OK);
        }
        Command::Logs { id, tail } => {
            let id = app_id(&id)?;
            for line in docker().await?.app_logs(id.as_str(), tail).await? {
                println!("{line}");
            }
            return Ok(EXIT_OK);
        }
        Command::Stats { id, format } => {
            let id = app_id(&id)?;
            let stats = docker().await?.app_stats(id.as_str()).await?;
            match format {
                Format::Json => print_json(&serde_json::json!({ "kind": "app_stats", "stats": stats }))?,
                Format::Table => print_table(
                    &["APP", "CONTAINER", "MEMORY MIB", "LIMIT MIB", "CPU %", "PIDS", "PIDS LIMIT"],
                    vec![vec![
                        stats.app_id.clone(),
                        stats.container_id.chars().take(12).collect(),
                        format!("{:.1}", stats.memory_bytes as f64 / MIB),
                        format!("{:.0}", stats.memory_limit_bytes as f64 / MIB),
                        format!("{:.1}", stats.cpu_percent),
                        stats.pids.to_string(),
                        stats.pids_limit.map_or_else(|| "-".to_owned(), |limit| limit.to_string()),
                    ]],
                ),
            }
            return Ok(EXIT_OK);
        }
        _ => {}
    }

    let store = global.open_store(None, None).await?;
    match command {
        Command::Register { id, name, owner, redirect_uris } => {
            let id = app_id(&id)?;
            check_display_text("--name", &name)?;
            check_display_text("--owner", &owner)?;
            for uri in &redirect_uris {
                check_redirect_uri(uri)?;
            }
            let record = store.insert_app(id.as_str(), &name, &owner).await?;
            for uri in &redirect_uris {
                store.add_redirect_uri(id.as_str(), uri).await?;
            }
            tracing::info!(app_id = %record.id, owner = %record.owner, "app registered");
            println!("registered app {}", record.id);
        }
        Command::List { format } => {
            let apps = store.apps().await?;
            let containers = container_states().await;
            let container_of = |id: &str| containers.get(id).map(|c| c.state.clone());
            match format {
                Format::Json => {
                    let apps: Vec<serde_json::Value> = apps
                        .iter()
                        .map(|app| {
                            let mut value = serde_json::to_value(app).unwrap_or_default();
                            value["container_state"] = serde_json::json!(container_of(&app.id));
                            value
                        })
                        .collect();
                    print_json(&serde_json::json!({ "kind": "app_list", "apps": apps }))?
                }
                Format::Table => print_table(
                    &["ID", "NAME", "OWNER", "STATE", "CONTAINER", "REGISTERED"],
                    apps.iter()
                        .map(|app| {
                            let mut cells = row(app);
                            cells.insert(4, container_of(&app.id).unwrap_or_else(|| "-".into()));
                            cells
                        })
                        .collect(),
                ),
            }
        }
        Command::Show { id, format } => {
            let Some(app) = store.app(app_id(&id)?.as_str()).await? else {
                eprintln!("portcullis: app {id:?} is not registered; `portcullis app list` shows the registered apps");
                return Ok(EXIT_PROBLEMS);
            };
            match format {
                Format::Json => print_json(&serde_json::json!({ "kind": "app", "app": app }))?,
                Format::Table => print_table(&["ID", "NAME", "OWNER", "STATE", "REGISTERED"], vec![row(&app)]),
            }
        }
        Command::Deploy { .. }
        | Command::ProxySecret { .. }
        | Command::Stop { .. }
        | Command::Rm { .. }
        | Command::Logs { .. }
        | Command::Stats { .. } => {}
        Command::Remove { id } => {
            if !store.remove_app(app_id(&id)?.as_str()).await? {
                eprintln!("portcullis: app {id:?} is not registered");
                return Ok(EXIT_PROBLEMS);
            }
            tracing::info!(app_id = %id, "app removed");
            println!("removed app {id}");
        }
    }
    store.close().await;
    Ok(EXIT_OK)
}

fn row(app: &AppRecord) -> Vec<String> {
    vec![app.id.clone(), app.name.clone(), app.owner.clone(), app.state.to_string(), timestamp(app.created_at)]
}

/// Checks a name shown in tables and on the consent page: 1 to 200
/// characters, no control characters (which could rewrite an operator's
/// terminal).
fn check_display_text(option: &str, value: &str) -> anyhow::Result<()> {
    let length = value.chars().count();
    if length == 0 || length > 200 || value.chars().any(char::is_control) {
        return Err(UsageError(format!(
            "invalid {option} {value:?}: expected 1 to 200 characters without control characters"
        ))
        .into());
    }
    Ok(())
}

/// Checks a redirect URI: https, or plain http only to a loopback address
/// (RFC 8252 section 7.3), with no fragment (RFC 6749 section 3.1.2).
fn check_redirect_uri(uri: &str) -> anyhow::Result<()> {
    let invalid = || {
        UsageError(format!(
            "invalid redirect URI {uri:?}: use an https:// URL, or http://127.0.0.1:PORT/... for a native app, without a fragment"
        ))
    };
    let url = url::Url::parse(uri).map_err(|_| invalid())?;
    let loopback = matches!(url.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
        || matches!(url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback());
    let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && loopback);
    if !scheme_ok || url.host().is_none() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(invalid().into());
    }
    Ok(())
}

/// Bytes in a MiB, for display.
const MIB: f64 = 1024.0 * 1024.0;

/// Returns the platform instance the app commands work on: `PORTCULLIS_INSTANCE`,
/// or `default` (which is also what `portcullis up` uses by default).
fn instance() -> String {
    std::env::var("PORTCULLIS_INSTANCE").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "default".into())
}

/// Connects to the Docker Engine for this platform instance.
async fn docker() -> anyhow::Result<DockerDriver> {
    Ok(DockerDriver::connect(DockerOptions { instance: instance(), ..DockerOptions::default() }).await?)
}

/// The container of each app, by app id; empty when Docker is unreachable.
async fn container_states() -> HashMap<String, AppContainer> {
    let apps = match docker().await {
        Ok(driver) => driver.list_apps().await.map_err(anyhow::Error::from),
        Err(error) => Err(error),
    };
    match apps {
        Ok(apps) => apps.into_iter().map(|app| (app.app_id.clone(), app)).collect(),
        Err(error) => {
            tracing::debug!(%error, "no container states: Docker is unreachable");
            HashMap::new()
        }
    }
}

/// Parses `SETTING=REASON` relaxations.
fn parse_relaxations(values: &[String]) -> anyhow::Result<Vec<Relaxation>> {
    values
        .iter()
        .map(|value| {
            let (setting, reason) = value.split_once('=').ok_or_else(|| {
                UsageError(format!("invalid --relax {value:?}: expected SETTING=REASON, such as read_only_root=\"writes /var/cache\""))
            })?;
            let setting = match setting {
                "read_only_root" => Relaxable::WritableRoot,
                "seccomp" => Relaxable::SeccompUnconfined,
                "no_new_privileges" => Relaxable::NewPrivileges,
                "apparmor" => Relaxable::AppArmorUnconfined,
                other => match other.strip_prefix("cap:") {
                    Some(name) if !name.is_empty() => Relaxable::Capability(name.to_owned()),
                    _ => {
                        return Err(UsageError(format!(
                            "invalid --relax setting {other:?}: expected read_only_root, seccomp, no_new_privileges, apparmor or cap:NAME"
                        ))
                        .into());
                    }
                },
            };
            Ok(Relaxation { setting, reason: reason.to_owned() })
        })
        .collect()
}

async fn deploy(
    global: &Global,
    manifest_path: &Path,
    config_path: &Path,
    proxy_secret: Option<&str>,
    relaxations: &[String],
) -> anyhow::Result<u8> {
    let config = load_config(config_path)?;
    let manifest = Manifest::load(manifest_path).map_err(|error| UsageError(error.to_string()))?;
    let relaxations = parse_relaxations(relaxations)?;
    if proxy_secret.is_some_and(|secret| secret.is_empty() || secret.contains(['@', ':', '/'])) {
        return Err(UsageError(
            "invalid proxy secret: it must be non-empty without '@', ':' or '/'; leave --proxy-secret out to have one issued".into(),
        )
        .into());
    }
    if config.runtime.driver != Driver::Docker {
        return Err(UsageError(
            "runtime.driver is \"process\": process-driver apps live only inside `portcullis serve`, so `app deploy` needs runtime.driver = \"docker\"".into(),
        )
        .into());
    }

    let data_dir = global.ensure_data_dir(config.data_dir.as_deref())?;
    let store = global.open_store(config.store_url.as_deref(), config.data_dir.as_deref()).await?;
    let app_id = manifest.id.as_str();
    if store.app(app_id).await?.is_none() {
        return Err(UsageError(format!(
            "app {app_id:?} is not registered: run `portcullis app register --id {app_id} --name NAME --owner OWNER` first"
        ))
        .into());
    }
    check_egress_hosts(&config, &manifest)?;
    let ca = PlatformCa::load(&data_dir.join(CA_DIR))
        .map_err(|error| UsageError(format!("{error}; create the CA with `portcullis ca init`")))?;
    let lifetimes = Lifetimes::from_settings(&config.identity);

    // The same ports and names as the gateway and egress proxy of this
    // configuration, so the app finds them.
    let settings =
        super::up::DockerSettings { instance: instance(), subnet_pool: super::up::DEFAULT_SUBNET_POOL.parse()? };
    let driver = super::up::connect_docker(&config, &settings).await?;

    // The proxy checks the app's secret against the stored hash, so the
    // secret the container gets is stored first.
    let secrets = portcullis_egress::proxy::ProxySecrets::new(store.clone());
    let app = manifest.id.clone();
    let issued;
    let proxy_secret = match proxy_secret {
        Some(secret) => {
            secrets.set(&app, secret).await?;
            secret
        }
        None => {
            issued = secrets.issue(&app).await?;
            issued.expose()
        }
    };
    let request = portcullis_runtime::deploy::DeployRequest {
        manifest: &manifest,
        hardening: &config.runtime.hardening,
        relaxations: &relaxations,
        proxy_secret,
        apps_dir: &data_dir.join("apps"),
    };
    // The egress proxy narrows the app to this list within a few seconds,
    // before its container has started.
    store.set_app_egress_hosts(app_id, &manifest.egress_hosts, portcullis_store::now_ms()).await?;
    let container = portcullis_runtime::deploy::deploy_app(&driver, &store, &ca, &lifetimes, request)
        .await
        .map_err(|error| match error {
            RuntimeError::Widening { .. }
            | RuntimeError::ImageMissing { .. }
            | RuntimeError::AlreadyDeployed { .. } => anyhow::Error::from(UsageError(error.to_string())),
            other => anyhow::Error::from(other),
        })
        .with_context(|| format!("deploying app {app_id:?} from {}", manifest_path.display()))?;
    store.close().await;

    tracing::info!(app_id, container_id = %container.container_id, "app deployed");
    println!("deployed app {app_id} in container {} ({})", container.name, container.container_id);
    Ok(EXIT_OK)
}

/// Issues a new egress proxy secret for a registered app and prints it
/// with the proxy URL that goes into HTTP_PROXY and HTTPS_PROXY.
async fn proxy_secret(global: &Global, id: &str, config_path: &Path) -> anyhow::Result<u8> {
    let config = load_config(config_path)?;
    let app = app_id(id)?;
    let store = global.open_store(config.store_url.as_deref(), config.data_dir.as_deref()).await?;
    if store.app(app.as_str()).await?.is_none() {
        return Err(UsageError(format!(
            "app {id:?} is not registered: run `portcullis app register --id {id} --name NAME --owner OWNER` first"
        ))
        .into());
    }
    let secret = portcullis_egress::proxy::ProxySecrets::new(store.clone()).issue(&app).await?;
    store.close().await;

    println!("egress proxy secret of app {app} (shown once): {}", secret.expose());
    println!("HTTP_PROXY=http://{app}:{}@{}", secret.expose(), config.listeners.egress);
    Ok(EXIT_OK)
}

/// Checks that the manifest's egress hosts narrow the platform's
/// `egress.allow_hosts` and the live space's list, so that a widening
/// manifest is rejected at deploy with the pattern named, rather than
/// leaving the app without egress.
fn check_egress_hosts(config: &portcullis_config::PlatformConfig, manifest: &Manifest) -> anyhow::Result<()> {
    use portcullis_config::SpaceName;
    use portcullis_egress::{AppRules, EgressRules};

    let rules = EgressRules::new(config.egress.clone())?;
    let live = config.spaces.get(&SpaceName::Live).expect("validated configuration has a live space");
    AppRules::new(&rules, manifest.id.clone(), SpaceName::Live, live, Some(&manifest.egress_hosts))
        .map_err(|error| UsageError(error.to_string()))?;
    Ok(())
}
