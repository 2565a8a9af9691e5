//! `portcullis serve`: validate the configuration and run the platform.

use std::path::{Path, PathBuf};

use anyhow::Context;
use portcullis_config::{Action, Mode, PlatformConfig, SpaceName};

use super::{Global, load_config};
use crate::EXIT_OK;
use crate::output::{Format, print_json};

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
#[command(long_about = "Validate a platform configuration and run the platform's servers.\n\n\
With --check, only validate the file and print a summary of what would run; \
exit 2 if the file is invalid.")]
pub struct Args {
    /// Platform configuration file (TOML).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,

    /// Only validate the configuration and print a summary; start nothing.
    #[arg(long)]
    check: bool,

    /// Create the platform CA in the data directory first if there is none
    /// (as `portcullis ca init` would). An existing CA is always reused.
    #[arg(long, conflicts_with = "check")]
    init: bool,

    /// Run only one part of the platform: "gateway" (gateway, token
    /// service, consent page, operator API) or "egress" (egress proxy).
    /// Each part runs its own guard; the two share decisions through the
    /// store. Default: every part in this process.
    #[arg(long, value_enum, value_name = "PART", conflicts_with = "check")]
    only: Option<PartArg>,

    /// With --only egress: the operator API of the gateway part (IP:port),
    /// whose guard then counts this proxy's refusals, so one guard holds
    /// every app's statistics. Default: a guard in this process.
    #[arg(long, value_name = "ADDRESS", requires = "only")]
    report_to: Option<std::net::SocketAddr>,

    /// Summary format for --check: "table" (text for people) or "json" (the
    /// validated configuration with every default filled in).
    #[arg(long, value_enum, default_value_t = Format::Table, value_name = "FORMAT")]
    format: Format,
}

/// A part for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PartArg {
    /// The gateway, token service, consent page and operator API.
    Gateway,
    /// The egress proxy.
    Egress,
}

/// Runs `serve`.
pub async fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let config = load_config(&args.config)?;
    let data_dir = global.data_dir(config.data_dir.as_deref())?;

    if args.check {
        match args.format {
            Format::Json => print_json(&serde_json::json!({
                "kind": "config_check",
                "valid": true,
                "data_dir": data_dir,
                "config": config,
            }))?,
            Format::Table => print!("{}", summary(&config, &data_dir)),
        }
        return Ok(EXIT_OK);
    }

    // Installed before the platform starts, so that a SIGHUP or SIGTERM
    // sent during the start is queued instead of ending the process.
    let mut signals = Signals::install()?;

    let data_dir = global.ensure_data_dir(config.data_dir.as_deref())?;
    let ca_dir = data_dir.join("ca");
    if args.init && !ca_dir.join(portcullis_identity::INTERMEDIATE_CERT).exists() {
        let domain = portcullis_identity::TrustDomain::parse(&config.trust_domain)?;
        portcullis_identity::init_ca(&ca_dir, &domain, false).context("creating the platform CA")?;
        tracing::info!(dir = %ca_dir.display(), trust_domain = %config.trust_domain, "platform CA created; keep ca/root-key.pem offline");
    }
    let store = global.open_store(config.store_url.as_deref(), config.data_dir.as_deref()).await?;
    tracing::info!(config = %args.config.display(), data_dir = %data_dir.display(), backend = %store.backend(), "platform starting");

    let parts = match args.only {
        None => portcullis_platform::Parts::All,
        Some(PartArg::Gateway) => portcullis_platform::Parts::Gateway,
        Some(PartArg::Egress) => portcullis_platform::Parts::Egress { report_to: args.report_to },
    };
    let platform = portcullis_platform::Platform::start_parts(&config, &data_dir, store.clone(), parts)
        .await
        .context("starting the platform")?;
    while signals.next().await? == Signal::Reload {
        reload(&args.config, &platform);
    }
    tracing::info!("stop signal received");
    platform.shutdown().await;
    store.close().await;
    Ok(EXIT_OK)
}

/// The action a signal requests from `serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// SIGHUP: read the configuration file again.
    Reload,
    /// SIGINT (Ctrl-C) or SIGTERM: drain and exit.
    Stop,
}

/// The signal handlers of `serve`.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            hangup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// Waits for the next signal.
    async fn next(&mut self) -> anyhow::Result<Signal> {
        let signal = tokio::select! {
            received = self.interrupt.recv() => received.map(|()| Signal::Stop),
            received = self.terminate.recv() => received.map(|()| Signal::Stop),
            received = self.hangup.recv() => received.map(|()| Signal::Reload),
        };
        signal.context("the signal handlers stopped")
    }
}

/// Reads and validates `path` again and applies it to `platform`. An
/// invalid file is logged as an error naming the file and the problem, and
/// the platform keeps its running configuration, because a half-applied
/// configuration could open routes the operator did not mean to open.
fn reload(path: &Path, platform: &portcullis_platform::Platform) {
    tracing::info!(config = %path.display(), "SIGHUP received; reloading the configuration");
    let config = match portcullis_config::load(path) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(
                config = %path.display(),
                %error,
                "configuration reload failed: the file is invalid; the previous configuration stays in force"
            );
            return;
        }
    };
    if let Err(error) = platform.reload(&config) {
        tracing::error!(
            config = %path.display(),
            %error,
            "configuration reload failed; the previous configuration stays in force"
        );
    }
}

/// Formats the short summary printed by `serve --check`.
fn summary(config: &PlatformConfig, data_dir: &std::path::Path) -> String {
    let mut lines = vec![format!("configuration is valid: {}", config.source.display())];
    let mut row = |key: &str, value: String| lines.push(format!("  {key:<15}{value}"));

    row("trust domain", config.trust_domain.clone());
    row("data directory", data_dir.display().to_string());
    row(
        "store",
        match &config.store_url {
            Some(url) if url.starts_with("sqlite:") => format!("SQLite {url}"),
            Some(_) => "PostgreSQL (store.url)".into(),
            None => format!("SQLite {}", data_dir.join(portcullis_store::SQLITE_FILE).display()),
        },
    );
    let l = &config.listeners;
    let consent = l.consent.map_or_else(|| "off".to_owned(), |address| address.to_string());
    row(
        "listeners",
        format!(
            "gateway {}, egress {}, token {}, consent {consent}, operator {}",
            l.gateway, l.egress, l.token, l.operator
        ),
    );
    for service in &config.services {
        row(
            "service",
            format!(
                "{} -> {} ({} routes, scopes {})",
                service.name,
                service.upstream,
                service.routes.len(),
                service.scopes.join(" ")
            ),
        );
    }
    for (name, space) in &config.spaces {
        let egress = match &space.egress_allow_hosts {
            None => "platform egress list".to_owned(),
            Some(hosts) => format!("{} egress hosts", hosts.len()),
        };
        let label = match name {
            SpaceName::Live => "space live",
            SpaceName::Sandbox => "space sandbox",
        };
        row(label, format!("services {}; {egress}", space.services.join(", ")));
    }
    let policies: Vec<String> = config
        .guard
        .policies
        .iter()
        .map(|p| {
            let action = match p.action {
                Action::Ban => "ban",
                Action::Throttle { .. } => "throttle",
            };
            let mode = if p.mode == Mode::Report { ", report only" } else { "" };
            format!("{} ({action}{mode})", p.name)
        })
        .collect();
    row("guard", format!("{} policies: {}", policies.len(), policies.join(", ")));
    let e = &config.egress;
    let ports: Vec<String> = e.allow_ports.iter().map(u16::to_string).collect();
    row(
        "egress",
        format!(
            "{} mode; {} allowed hosts, {} allowed CIDR ranges, ports {}",
            if e.mode == Mode::Enforce { "enforce" } else { "report" },
            e.allow_hosts.len(),
            e.allow_cidrs.len(),
            ports.join(", ")
        ),
    );
    let h = &config.runtime.hardening;
    row(
        "runtime",
        format!(
            "{} driver; {} MiB memory, {} CPUs, {} pids, read-only root {}",
            match config.runtime.driver {
                portcullis_config::Driver::Docker => "docker",
                portcullis_config::Driver::Process => "process",
            },
            h.memory_mib,
            h.cpus,
            h.pids,
            if h.read_only_root { "on" } else { "OFF" }
        ),
    );
    lines.push(String::new());
    lines.join("\n")
}
