//! `portcullis up` and `portcullis down`: the example platform in one
//! command.
//!
//! `up` creates the CA if there is none and registers the example's apps and
//! grants (idempotently). It starts the platform, the example services and
//! the outbound test hosts, and runs the apps with the process driver. It
//! stops an app as soon as the guard bans it, and on Ctrl-C or SIGTERM it
//! stops everything it started. `down` stops what a running or crashed `up` recorded.

mod docker;
mod example;
mod start;
mod state;

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;

use super::{Global, UsageError, load_config};
use crate::EXIT_OK;
pub use docker::{Settings as DockerSettings, connect as connect_docker};
pub use example::Example;

/// The default address pool of the Docker driver's networks.
pub const DEFAULT_SUBNET_POOL: &str = "10.213.0.0/16";
use state::UpState;

/// The driver that runs the example's apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverArg {
    /// Child processes with rlimits (weak isolation, no Docker needed).
    Process,
    /// Hardened Docker containers.
    Docker,
}

/// Arguments of `up`.
#[derive(Debug, clap::Args)]
#[command(long_about = "Run the example platform: the platform's servers, the example services, an \
outbound test host and two apps, one well-behaved and one that the guard bans. Runs until Ctrl-C or \
SIGTERM, then stops everything it started.")]
pub struct Args {
    /// Platform configuration file (TOML).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,

    /// Example description: services, outbound test hosts and apps.
    /// Default: example.toml beside the configuration file.
    #[arg(long, value_name = "FILE")]
    example: Option<PathBuf>,

    /// Directory with the example's binaries. Default: the directory of this
    /// portcullis binary.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,

    /// Driver for the apps. Default: runtime.driver from the configuration,
    /// falling back to the process driver when no Docker Engine responds.
    #[arg(long, value_enum, value_name = "DRIVER")]
    driver: Option<DriverArg>,

    /// Docker driver: the instance label and name prefix of every object
    /// `up` creates (a lowercase DNS label).
    /// `portcullis app` commands find them through `PORTCULLIS_INSTANCE`.
    /// The example's own instance keeps `down` away from a platform's
    /// real apps, which are in instance "default".
    #[arg(long, default_value = "example", value_name = "NAME")]
    instance: String,

    /// Docker driver: the address pool of the platform's networks (at
    /// least a /22, overlapping no other network on the host).
    #[arg(long, default_value = DEFAULT_SUBNET_POOL, value_name = "CIDR")]
    subnet_pool: ipnet::Ipv4Net,
}

/// Arguments of `down`.
#[derive(Debug, clap::Args)]
pub struct DownArgs {
    /// Platform configuration file that `up` was started with.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
}

/// Progress lines: short lines on standard output on a terminal, log
/// records otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    terminal: bool,
}

impl Progress {
    fn new() -> Self {
        Self { terminal: std::io::stdout().is_terminal() }
    }

    /// Reports the start of a step that may take a while.
    pub fn start(&self, text: &str) {
        if self.terminal {
            println!("  … {text}");
        } else {
            tracing::info!(step = text, "up: starting");
        }
    }

    /// Reports one finished step.
    pub fn step(&self, text: &str) {
        if self.terminal {
            println!("  ✓ {text}");
        } else {
            tracing::info!(step = text, "up");
        }
    }

    /// Reports something the operator should notice.
    pub fn alert(&self, text: &str) {
        if self.terminal {
            println!("  ! {text}");
        } else {
            tracing::warn!(step = text, "up");
        }
    }
}

/// Runs `up`.
pub async fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let config = load_config(&args.config)?;
    let valid_instance = !args.instance.is_empty()
        && args.instance.len() <= 32
        && args.instance.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !args.instance.starts_with('-');
    if !valid_instance {
        return Err(UsageError(format!(
            "--instance {:?} is not a lowercase DNS label of at most 32 characters (letters, digits, hyphens)",
            args.instance
        ))
        .into());
    }
    if args.subnet_pool.prefix_len() > 22 {
        return Err(UsageError(format!(
            "--subnet-pool {} is too small: the platform needs at least a /22",
            args.subnet_pool
        ))
        .into());
    }
    let settings = docker::Settings { instance: args.instance.clone(), subnet_pool: args.subnet_pool };
    let driver = match (args.driver, config.runtime.driver) {
        (Some(driver), _) => driver,
        (None, portcullis_config::Driver::Process) => DriverArg::Process,
        (None, portcullis_config::Driver::Docker) => match docker::connect(&config, &settings).await {
            Ok(_) if !running_as_root() => {
                Progress::new().alert(
                    "the Docker driver needs root to give each app its own UID; running the apps with the \
                     process driver, whose isolation is much weaker",
                );
                DriverArg::Process
            }
            Ok(_) => DriverArg::Docker,
            Err(error) => {
                Progress::new().alert(&format!(
                    "no Docker Engine answered ({error:#}); running the apps with the process driver,                      whose isolation is much weaker"
                ));
                DriverArg::Process
            }
        },
    };
    let example_path = args.example.clone().unwrap_or_else(|| Example::default_path(&args.config));
    let example = Example::load(&example_path, &config)?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .context("cannot find the portcullis binary's directory; pass --bin-dir DIR")?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
    };
    for binary in example.binaries() {
        if !bin_dir.join(binary).is_file() {
            return Err(UsageError(format!(
                "the example binary {binary} is not in {}; build it with \
                 `cargo build --release -p portcullis-examples` or pass --bin-dir DIR",
                bin_dir.display()
            ))
            .into());
        }
    }

    let data_dir = global.ensure_data_dir(config.data_dir.as_deref())?;
    std::fs::create_dir_all(state::up_dir(&data_dir))
        .with_context(|| format!("cannot create {}", state::up_dir(&data_dir).display()))?;
    if let Some(previous) = UpState::read(&data_dir)? {
        if previous.up_running() {
            return Err(UsageError(format!(
                "portcullis up is already running for {} (pid {}); stop it with `portcullis down --config {}`",
                data_dir.display(),
                previous.up_pid,
                args.config.display()
            ))
            .into());
        }
        let dir = data_dir.clone();
        let lines = tokio::task::spawn_blocking(move || state::stop_recorded(&previous, &dir)).await?;
        for line in lines {
            tracing::info!(line, "cleaned up after an earlier run that did not stop");
        }
    }

    let data_dir_option =
        global.data_dir.as_ref().map(|dir| format!(" --data-dir {}", dir.display())).unwrap_or_default();
    let commands = start::Commands {
        status: format!("portcullis{data_dir_option} status --config {}", args.config.display()),
        down: format!("portcullis{data_dir_option} down --config {}", args.config.display()),
    };
    let store = global.open_store(config.store_url.as_deref(), config.data_dir.as_deref()).await?;
    let docker = (driver == DriverArg::Docker).then_some(settings);
    let context = start::Context {
        config,
        config_path: args.config.clone(),
        example,
        bin_dir,
        data_dir,
        store,
        commands,
        progress: Progress::new(),
        docker,
    };
    start::run(context).await?;
    Ok(EXIT_OK)
}

/// Returns whether this process runs as root.
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Removes every container, network and image of the Docker `instance`
/// and its record, and returns the line to print.
async fn remove_docker_instance(
    config: &portcullis_config::PlatformConfig,
    data_dir: &std::path::Path,
    instance: &str,
) -> anyhow::Result<String> {
    let settings = docker::Settings { instance: instance.to_owned(), subnet_pool: DEFAULT_SUBNET_POOL.parse()? };
    let driver = docker::connect(config, &settings)
        .await
        .context("connecting to the Docker Engine to remove the example's containers, networks and images")?;
    driver.remove_everything().await?;
    let images = driver.remove_images().await?;
    state::forget_docker_instance(data_dir);
    Ok(format!("removed the containers, networks and {images} images of Docker instance {instance}"))
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
pub(super) async fn stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

/// Runs `down`.
pub async fn down(global: &Global, args: DownArgs) -> anyhow::Result<u8> {
    let config = load_config(&args.config)?;
    let data_dir = global.data_dir(config.data_dir.as_deref())?;
    let Some(state) = UpState::read(&data_dir)? else {
        if let Some(instance) = state::docker_instance(&data_dir) {
            println!("{}", remove_docker_instance(&config, &data_dir, &instance).await?);
            return Ok(EXIT_OK);
        }
        println!("nothing to stop: no portcullis up recorded in {}", data_dir.display());
        return Ok(EXIT_OK);
    };
    let instance = state.docker_instance.clone();
    let dir = data_dir.clone();
    let mut lines = tokio::task::spawn_blocking(move || state::stop_recorded(&state, &dir)).await?;
    if let Some(instance) = instance.or_else(|| state::docker_instance(&data_dir)) {
        lines.push(remove_docker_instance(&config, &data_dir, &instance).await?);
    }
    for line in &lines {
        println!("{line}");
    }
    if lines.is_empty() {
        println!("nothing was running; removed the stale record");
    }
    Ok(EXIT_OK)
}
