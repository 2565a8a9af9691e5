//! `portcullis app`: the registry of third-party apps.

use portcullis_config::AppId;
use portcullis_store::AppRecord;

use super::{Global, UsageError};
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
    /// List registered apps.
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
}

fn app_id(value: &str) -> anyhow::Result<AppId> {
    AppId::parse(value).map_err(|rule| UsageError(format!("invalid app id {value:?}: {rule}")).into())
}

/// Runs an `app` subcommand.
pub async fn run(global: &Global, command: Command) -> anyhow::Result<u8> {
    let store = global.open_store(None, None).await?;
    match command {
        Command::Register { id, name, owner, redirect_uris } => {
            let id = app_id(&id)?;
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
            match format {
                Format::Json => print_json(&serde_json::json!({ "kind": "app_list", "apps": apps }))?,
                Format::Table => {
                    print_table(&["ID", "NAME", "OWNER", "STATE", "REGISTERED"], apps.iter().map(row).collect())
                }
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
