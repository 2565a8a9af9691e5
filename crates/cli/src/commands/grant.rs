//! `portcullis grant` and `portcullis customer`: what apps may do, and who
//! may consent on customers' behalf.

use std::path::PathBuf;

use portcullis_store::GrantRecord;

use super::{Global, UsageError, load_config};
use crate::output::{Format, print_json, print_table, timestamp};
use crate::{EXIT_OK, EXIT_PROBLEMS};

/// Subcommands of `grant`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Grant an app a scope on a service.
    Add {
        /// App id.
        #[arg(long)]
        app: String,
        /// Service name, as in the configuration's [[services]].
        #[arg(long)]
        service: String,
        /// Scope, written <service>:<action>, such as weather:read.
        #[arg(long)]
        scope: String,
        /// Platform configuration, to check that the service defines the scope.
        #[arg(long, short = 'c', env = "PORTCULLIS_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Withdraw a grant. Tokens the app already has stop working within a second
    /// on every running token service and gateway.
    Remove {
        /// App id.
        #[arg(long)]
        app: String,
        /// Service name.
        #[arg(long)]
        service: String,
        /// Scope.
        #[arg(long)]
        scope: String,
    },
    /// List grants.
    List {
        /// Only this app's grants.
        #[arg(long)]
        app: Option<String>,
        /// Output format: "table" or "json".
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// Runs a `grant` subcommand.
pub async fn run(global: &Global, command: Command) -> anyhow::Result<u8> {
    let store = global.open_store(None, None).await?;
    let code = match command {
        Command::Add { app, service, scope, config } => {
            check_scope(&service, &scope, config.as_deref())?;
            if store.app(&app).await?.is_none() {
                return Err(UsageError(format!(
                    "app {app:?} is not registered; register it with `portcullis app register`"
                ))
                .into());
            }
            if store.add_grant(&app, &service, &scope, "operator").await? {
                tracing::info!(app_id = %app, service = %service, scope = %scope, "grant added");
                println!("granted {scope} on {service} to app {app}");
            } else {
                println!("app {app} already has {scope} on {service}");
            }
            EXIT_OK
        }
        Command::Remove { app, service, scope } => {
            if !store.remove_grant(&app, &service, &scope).await? {
                eprintln!(
                    "portcullis: app {app:?} has no grant {scope} on {service}; `portcullis grant list --app {app}` shows its grants"
                );
                return Ok(EXIT_PROBLEMS);
            }
            // Tokens issued up to now may carry the withdrawn scope: cut them
            // off, and revoke the refresh tokens that could mint new ones.
            let now_ms = portcullis_store::now_ms();
            store.set_token_cut_off(&app, now_ms / 1000).await?;
            store.revoke_refresh_tokens_of_app(&app, now_ms).await?;
            tracing::info!(app_id = %app, service = %service, scope = %scope, "grant withdrawn; earlier tokens invalidated");
            println!("withdrew {scope} on {service} from app {app}; its earlier tokens are invalidated");
            EXIT_OK
        }
        Command::List { app, format } => {
            let grants = store.grants(app.as_deref()).await?;
            match format {
                Format::Json => print_json(&serde_json::json!({ "kind": "grant_list", "grants": grants }))?,
                Format::Table => {
                    print_table(&["APP", "SERVICE", "SCOPE", "GRANTED BY", "SINCE"], grants.iter().map(row).collect())
                }
            }
            EXIT_OK
        }
    };
    store.close().await;
    Ok(code)
}

fn row(grant: &GrantRecord) -> Vec<String> {
    vec![
        grant.app_id.clone(),
        grant.service.clone(),
        grant.scope.clone(),
        grant.granted_by.clone(),
        timestamp(grant.created_at),
    ]
}

/// Checks that `scope` belongs to `service`, against the configuration
/// when one is given.
fn check_scope(service: &str, scope: &str, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    if !scope.strip_prefix(service).is_some_and(|rest| rest.starts_with(':') && rest.len() > 1) {
        return Err(UsageError(format!(
            "scope {scope:?} is not a scope of service {service:?}; write it {service}:<action>"
        ))
        .into());
    }
    let Some(path) = config else {
        return Ok(());
    };
    let config = load_config(path)?;
    let Some(defined) = config.service(service) else {
        let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        return Err(UsageError(format!(
            "service {service:?} is not defined in {}; defined: {}",
            path.display(),
            names.join(", ")
        ))
        .into());
    };
    if !defined.scopes.iter().any(|s| s == scope) {
        return Err(UsageError(format!(
            "service {service} does not define scope {scope:?}; it defines {}",
            defined.scopes.join(", ")
        ))
        .into());
    }
    Ok(())
}

/// Subcommands of `customer`.
#[derive(Debug, clap::Subcommand)]
pub enum CustomerCommand {
    /// Create a customer who can approve apps on the consent page. Prints a
    /// generated secret once; only its Argon2id hash is stored.
    Add {
        /// Customer id, as typed on the consent page.
        #[arg(long)]
        id: String,
    },
}

/// Runs a `customer` subcommand.
pub async fn run_customer(global: &Global, command: CustomerCommand) -> anyhow::Result<u8> {
    let store = global.open_store(None, None).await?;
    match command {
        CustomerCommand::Add { id } => {
            if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
                return Err(UsageError(format!(
                    "invalid customer id {id:?}: 1 to 128 characters, no control characters"
                ))
                .into());
            }
            let secret = random_secret();
            store.insert_customer(&id, &portcullis_token::server::hash_customer_secret(&secret)).await?;
            tracing::info!(customer_id = %id, "customer created");
            println!(
                "created customer {id}\nsecret: {secret}\n(shown once; give it to the customer over a safe channel)"
            );
        }
    }
    store.close().await;
    Ok(EXIT_OK)
}

fn random_secret() -> String {
    use base64::Engine;
    let mut bytes = [0_u8; 24];
    aws_lc_rs::rand::fill(&mut bytes).expect("system random number generator");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
