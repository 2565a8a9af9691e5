//! `portcullis ban`: the decisions in the store, and bans and throttles set
//! by hand.
//!
//! A running guard reloads the decisions in force from the store every
//! second, so what these commands add or lift takes effect within about a
//! second.

use std::time::Duration;

use portcullis_config::AppId;
use portcullis_store::{DecisionKind, DecisionOrigin, DecisionRecord, NewDecision, Store, now_ms};
use serde_json::{Value, json};

use super::{Global, UsageError};
use crate::output::{Format, print_json, print_table, timestamp};
use crate::{EXIT_OK, EXIT_PROBLEMS};

/// The `lifted_by` value of decisions lifted through these commands.
const OPERATOR: &str = "operator";

/// Maximum length of an operator decision: the upper end of the range that
/// `guard.max_ban` accepts in the configuration.
const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// Columns of `ban list`.
const LIST_HEADER: [&str; 9] = ["ID", "APP", "KIND", "REASON", "POLICY", "ORIGIN", "STARTED", "EXPIRES", "SIMULATED"];

/// Subcommands of `ban`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List decisions, newest first: by default those in force now.
    List {
        /// Also list expired, lifted and simulated decisions.
        #[arg(long)]
        all: bool,
        /// Only list decisions about this app id.
        #[arg(long, value_name = "ID")]
        app: Option<String>,
        /// Output format: "table" or "json".
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show one decision with its evidence; exits 1 if there is no decision with this id.
    Show {
        /// Decision id, as listed by `ban list`.
        id: i64,
        /// Output format: "table" or "json".
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Ban an app, or throttle it with --throttle, as the operator.
    Add {
        /// App id to act on; it need not be registered yet.
        #[arg(long, value_name = "ID")]
        app: String,
        /// How long the decision lasts, with a unit: "30m", "1h", "7d" (1s to 365d).
        #[arg(long, value_name = "DURATION")]
        duration: String,
        /// Reason shown with the decision, such as a ticket or what the app did.
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// Throttle the app to this many requests per second (0.001 to 1000000)
        /// instead of banning it.
        #[arg(long, value_name = "PER_SECOND")]
        throttle: Option<f64>,
    },
    /// Lift a decision by id, or every decision in force for an app with
    /// --app; exits 1 if nothing was lifted.
    #[command(group = clap::ArgGroup::new("target").required(true).args(["id", "app"]))]
    Remove {
        /// Decision id, as listed by `ban list`.
        id: Option<i64>,
        /// Lift every decision in force for this app id.
        #[arg(long, value_name = "ID")]
        app: Option<String>,
    },
}

/// Runs a `ban` subcommand.
pub async fn run(global: &Global, command: Command) -> anyhow::Result<u8> {
    let store = global.open_store(None, None).await?;
    let code = match command {
        Command::List { all, app, format } => list(&store, all, app.as_deref(), format).await?,
        Command::Show { id, format } => show(&store, id, format).await?,
        Command::Add { app, duration, reason, throttle } => add(&store, &app, &duration, reason, throttle).await?,
        Command::Remove { id, app } => remove(&store, id, app.as_deref()).await?,
    };
    store.close().await;
    Ok(code)
}

async fn list(store: &Store, all: bool, app: Option<&str>, format: Format) -> anyhow::Result<u8> {
    let app = app.map(app_id).transpose()?;
    let app = app.as_ref().map(AppId::as_str);
    let mut decisions = if all { store.decisions(app).await? } else { store.decisions_in_force(now_ms()).await? };
    decisions.retain(|record| app.is_none_or(|app| record.decision.app_id == app));
    decisions.sort_by_key(|record| std::cmp::Reverse(record.id));

    match format {
        Format::Json => {
            let views: Vec<Value> = decisions.iter().map(view).collect();
            print_json(&json!({ "kind": "decision_list", "decisions": views }))?;
        }
        Format::Table => print_table(&LIST_HEADER, decisions.iter().map(row).collect()),
    }
    Ok(EXIT_OK)
}

async fn show(store: &Store, id: i64, format: Format) -> anyhow::Result<u8> {
    let Some(record) = store.decision(id).await? else {
        eprintln!("portcullis: decision {id} not found; `portcullis ban list --all` lists every decision");
        return Ok(EXIT_PROBLEMS);
    };
    match format {
        Format::Json => print_json(&json!({ "kind": "decision", "decision": view(&record) }))?,
        Format::Table => {
            let mut fields: Vec<(&str, String)> = LIST_HEADER.iter().copied().zip(row(&record)).collect();
            fields.push(("IN FORCE", yes_no(record.in_force_at(now_ms()))));
            fields.push(("LIFTED", record.lifted_at.map_or_else(|| "-".to_owned(), timestamp)));
            fields.push(("LIFTED BY", record.lifted_by.clone().unwrap_or_else(|| "-".to_owned())));
            fields.push(("EVIDENCE", serde_json::to_string_pretty(&evidence(&record))?));
            print_table(&["FIELD", "VALUE"], fields.into_iter().map(|(k, v)| vec![k.to_owned(), v]).collect());
        }
    }
    Ok(EXIT_OK)
}

async fn add(store: &Store, app: &str, duration: &str, reason: String, throttle: Option<f64>) -> anyhow::Result<u8> {
    let app = app_id(app)?;
    let duration = parse_duration(duration)?;
    let kind = match throttle {
        None => DecisionKind::Ban,
        Some(per_second) if (0.001..=1_000_000.0).contains(&per_second) => DecisionKind::Throttle { per_second },
        Some(per_second) => {
            return Err(UsageError(format!(
                "invalid --throttle {per_second}: expected requests per second from 0.001 to 1000000"
            ))
            .into());
        }
    };

    let now = now_ms();
    let expires_at = now.saturating_add(duration.as_millis() as i64);
    let decision = NewDecision {
        app_id: app.as_str().to_owned(),
        kind,
        reason,
        policy: None,
        evidence: "{}".into(),
        origin: DecisionOrigin::Operator,
        simulated: false,
        started_at: now,
        expires_at: Some(expires_at),
    };
    let id = store.insert_decision(&decision).await?;
    tracing::info!(app_id = %app, decision_id = id, kind = kind_text(kind), expires_at, "operator decision added");
    if kind == DecisionKind::Ban {
        // As the operator API does: tokens issued before the ban stay
        // refused after it ends, and refresh tokens cannot mint new ones.
        store.set_token_cut_off(app.as_str(), now / 1000).await?;
        store.revoke_refresh_tokens_of_app(app.as_str(), now).await?;
    }

    let until = timestamp(expires_at);
    match kind {
        DecisionKind::Ban => {
            println!("banned app {app} until {until} (decision {id}); its earlier tokens are invalidated")
        }
        DecisionKind::Throttle { per_second } => {
            println!("throttled app {app} to {per_second} requests per second until {until} (decision {id})")
        }
    }
    Ok(EXIT_OK)
}

async fn remove(store: &Store, id: Option<i64>, app: Option<&str>) -> anyhow::Result<u8> {
    let now = now_ms();
    let ids: Vec<i64> = match (id, app) {
        (Some(id), _) => vec![id],
        (None, Some(app)) => {
            let app = app_id(app)?;
            let in_force = store.decisions_in_force(now).await?;
            let ids: Vec<i64> = in_force
                .iter()
                .filter(|record| record.decision.app_id == app.as_str())
                .map(|record| record.id)
                .collect();
            if ids.is_empty() {
                eprintln!("portcullis: no decision about app {app} is in force");
                return Ok(EXIT_PROBLEMS);
            }
            ids
        }
        (None, None) => return Err(UsageError("name a decision id or --app ID".into()).into()),
    };

    let mut lifted = 0;
    for id in ids {
        if store.lift_decision(id, OPERATOR, now).await? {
            tracing::info!(decision_id = id, "decision lifted by the operator");
            println!("lifted decision {id}");
            lifted += 1;
        } else {
            eprintln!("portcullis: decision {id} not found or already lifted");
        }
    }
    Ok(if lifted > 0 { EXIT_OK } else { EXIT_PROBLEMS })
}

fn app_id(value: &str) -> anyhow::Result<AppId> {
    AppId::parse(value).map_err(|rule| UsageError(format!("invalid app id {value:?}: {rule}")).into())
}

/// Parses a `--duration` such as `90m`, from 1 second to [`MAX_DURATION`].
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let invalid = || {
        UsageError(format!(
            "invalid --duration {text:?}: expected a duration from 1s to 365d, written with a unit such as \"30m\", \"1h\" or \"7d\""
        ))
    };
    let duration = humantime::parse_duration(text).map_err(|_| invalid())?;
    if duration < Duration::from_secs(1) || duration > MAX_DURATION {
        return Err(invalid().into());
    }
    Ok(duration)
}

fn kind_text(kind: DecisionKind) -> String {
    match kind {
        DecisionKind::Ban => "ban".to_owned(),
        DecisionKind::Throttle { per_second } => format!("throttle {per_second}/s"),
    }
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// Returns the stored evidence as JSON, or as a string if it is not JSON.
fn evidence(record: &DecisionRecord) -> Value {
    serde_json::from_str(&record.decision.evidence).unwrap_or_else(|_| Value::String(record.decision.evidence.clone()))
}

/// Formats one decision as a row under [`LIST_HEADER`].
fn row(record: &DecisionRecord) -> Vec<String> {
    let decision = &record.decision;
    vec![
        record.id.to_string(),
        decision.app_id.clone(),
        kind_text(decision.kind),
        decision.reason.clone(),
        decision.policy.clone().unwrap_or_else(|| "-".to_owned()),
        origin_text(decision.origin).to_owned(),
        timestamp(decision.started_at),
        decision.expires_at.map_or_else(|| "until lifted".to_owned(), timestamp),
        yes_no(decision.simulated),
    ]
}

fn origin_text(origin: DecisionOrigin) -> &'static str {
    match origin {
        DecisionOrigin::Guard => "guard",
        DecisionOrigin::Operator => "operator",
    }
}

/// Returns the JSON form of one decision. Times are milliseconds since the
/// Unix epoch; `throttle_per_second` is null for a ban.
fn view(record: &DecisionRecord) -> Value {
    let decision = &record.decision;
    let (kind, rate) = match decision.kind {
        DecisionKind::Ban => ("ban", None),
        DecisionKind::Throttle { per_second } => ("throttle", Some(per_second)),
    };
    json!({
        "id": record.id,
        "app_id": decision.app_id,
        "kind": kind,
        "throttle_per_second": rate,
        "reason": decision.reason,
        "policy": decision.policy,
        "origin": origin_text(decision.origin),
        "simulated": decision.simulated,
        "in_force": record.in_force_at(now_ms()),
        "started_at": decision.started_at,
        "expires_at": decision.expires_at,
        "lifted_at": record.lifted_at,
        "lifted_by": record.lifted_by,
        "evidence": evidence(record),
    })
}
