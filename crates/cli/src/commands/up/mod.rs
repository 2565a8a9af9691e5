//! `portcullis up` and `portcullis down`: the example platform in one
//! command.
//!
//! `up` creates the CA if there is none and registers the example's apps and
//! grants (idempotently). It starts the platform, the example services and
//! the outbound test hosts, and runs the apps with the process driver. It
//! stops an app as soon as the guard bans it, and on Ctrl-C or SIGTERM it
//! stops everything it started. `down` stops what a running or crashed `up` recorded.

mod example;
mod start;
mod state;

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;

use super::{Global, UsageError, load_config};
use crate::EXIT_OK;
pub use example::Example;
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

    /// Driver for the apps. Default: runtime.driver from the configuration.
    #[arg(long, value_enum, value_name = "DRIVER")]
    driver: Option<DriverArg>,
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
    let driver = args.driver.unwrap_or(match config.runtime.driver {
        portcullis_config::Driver::Docker => DriverArg::Docker,
        portcullis_config::Driver::Process => DriverArg::Process,
    });
    if driver == DriverArg::Docker {
        return Err(UsageError(
            "`up` runs the example's apps with the process driver only so far; pass --driver process".into(),
        )
        .into());
    }
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
    let context = start::Context { config, example, bin_dir, data_dir, store, commands, progress: Progress::new() };
    start::run(context).await?;
    Ok(EXIT_OK)
}

/// Runs `down`.
pub async fn down(global: &Global, args: DownArgs) -> anyhow::Result<u8> {
    let config = load_config(&args.config)?;
    let data_dir = global.data_dir(config.data_dir.as_deref())?;
    let Some(state) = UpState::read(&data_dir)? else {
        println!("nothing to stop: no portcullis up recorded in {}", data_dir.display());
        return Ok(EXIT_OK);
    };
    let lines = tokio::task::spawn_blocking(move || state::stop_recorded(&state, &data_dir)).await?;
    for line in &lines {
        println!("{line}");
    }
    if lines.is_empty() {
        println!("nothing was running; removed the stale record");
    }
    Ok(EXIT_OK)
}
