//! `portcullis`: the operator's command for the Portcullis platform.
//!
//! Exit codes: 0 success, 1 a check found problems, 2 usage or
//! configuration error (clap's own usage errors also exit 2).

mod commands;
mod logging;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's allocator, because the gateway allocates
/// and frees about 40 small blocks per request on every worker thread.
/// glibc's `malloc` and `free` were about a tenth of the gateway's
/// instructions per request. The gateway's resident memory grows by about
/// 16 MiB (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code when a check ran and found problems.
pub const EXIT_PROBLEMS: u8 = 1;
/// Exit code for a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

/// Portcullis: a security layer for platforms that run third-party apps in
/// containers.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, propagate_version = true, max_term_width = 100)]
#[command(after_help = "Exit codes: 0 success, 1 a check found problems, 2 usage or configuration error.")]
struct Cli {
    /// Directory for the CA, the store and logs. Default: $XDG_DATA_HOME/portcullis
    /// (or ~/.local/share/portcullis), unless the configuration sets data_dir.
    #[arg(long, global = true, env = "PORTCULLIS_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Log line format on standard error: "human" (coloured on a terminal) or
    /// "json" (one JSON object per line).
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Human, value_name = "FORMAT")]
    log_format: logging::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a platform configuration and run the platform's servers.
    Serve(commands::serve::Args),
    /// Register, list, show and remove third-party apps; deploy, stop and
    /// remove their containers, read their logs and resource use.
    #[command(subcommand)]
    App(commands::app::Command),
    /// List, show, add and lift ban and throttle decisions.
    #[command(subcommand)]
    Ban(commands::ban::Command),
    /// Manage the platform CA: create it, issue, list and revoke certificates.
    #[command(subcommand)]
    Ca(commands::ca::Command),
    /// Grant, withdraw and list the scopes apps may use on services.
    #[command(subcommand)]
    Grant(commands::grant::Command),
    /// Show per-app requests, outcome classes, rates and decisions of the
    /// running platform.
    Status(commands::status::Args),
    /// Run the example platform with its services and apps until Ctrl-C.
    Up(commands::up::Args),
    /// Stop what `portcullis up` started and remove its files.
    Down(commands::up::DownArgs),
    /// Create customers who can approve apps on the consent page.
    #[command(subcommand)]
    Customer(commands::grant::CustomerCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let up_on_terminal = matches!(cli.command, Command::Up(_)) && std::io::IsTerminal::is_terminal(&std::io::stdout());
    logging::init(cli.log_format, if up_on_terminal { "warn" } else { "info" });
    let json_logs = cli.log_format == logging::LogFormat::Json;

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("portcullis: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_PROBLEMS);
        }
    };

    let global = commands::Global { data_dir: cli.data_dir };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => commands::serve::run(&global, args).await,
            Command::App(command) => commands::app::run(&global, command).await,
            Command::Ban(command) => commands::ban::run(&global, command).await,
            Command::Ca(command) => commands::ca::run(&global, command).await,
            Command::Grant(command) => commands::grant::run(&global, command).await,
            Command::Status(args) => commands::status::run(&global, args).await,
            Command::Up(args) => commands::up::run(&global, args).await,
            Command::Down(args) => commands::up::down(&global, args).await,
            Command::Customer(command) => commands::grant::run_customer(&global, command).await,
        }
    });

    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            let code = commands::exit_code_of(&error);
            // People read the line below; machines reading JSON logs get
            // the failure as a log record too.
            if json_logs {
                tracing::error!(error = format!("{error:#}"), "command failed");
            }
            eprintln!("portcullis: error: {error:#}");
            ExitCode::from(code)
        }
    }
}
