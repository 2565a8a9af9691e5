//! `portcullis ca`: the platform CA, leaf issuance, listing and revocation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use portcullis_identity::{
    CA_DIR, CertificateKind, IdentityError, LeafRequest, Lifetimes, PlatformCa, SpiffeId, TrustDomain,
};
use portcullis_store::CertificateRecord;

use super::{Global, UsageError, load_config};
use crate::output::{Format, print_json, print_table, timestamp};
use crate::{EXIT_OK, EXIT_PROBLEMS};

/// Subcommands of `ca`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create the root CA and the intermediate issuing CA in <data-dir>/ca.
    ///
    /// After this, the root key (ca/root-key.pem) can be moved offline:
    /// issuing needs only the intermediate.
    Init {
        /// Platform configuration file; its trust_domain is used.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// SPIFFE trust domain, such as weather.example (instead of --config).
        #[arg(long, value_name = "DOMAIN")]
        trust_domain: Option<String>,
        /// Replace an existing CA; every certificate it issued stops verifying.
        #[arg(long)]
        force: bool,
    },
    /// Issue a leaf certificate and write cert.pem, key.pem and ca-bundle.pem.
    Issue {
        #[command(flatten)]
        subject: Filter,
        /// DNS name or IP address for a server certificate; repeatable.
        #[arg(long = "dns", value_name = "NAME")]
        dns_names: Vec<String>,
        /// Lifetime such as "2h" or "30m". Default: platform_cert_lifetime
        /// (1h) for --platform, app_cert_lifetime (24h) otherwise.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        lifetime: Option<Duration>,
        /// Directory for cert.pem (leaf and intermediate), key.pem (mode
        /// 0600) and ca-bundle.pem (root).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Platform configuration file: lifetimes, store and data directory.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// List issued certificates with their status.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Output format: "table" or "json".
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Platform configuration file: store and data directory.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Revoke one certificate by serial, or every certificate of a subject.
    /// Listeners refuse it from their next revocation reload (within 1 s).
    Revoke {
        /// Serial number in hex, as `ca list` shows it.
        #[arg(required_unless_present_any = ["app", "service", "platform"], conflicts_with_all = ["app", "service", "platform"])]
        serial: Option<String>,
        #[command(flatten)]
        filter: Filter,
        /// Why, recorded with the revocation.
        #[arg(long, default_value = "unspecified")]
        reason: String,
        /// Platform configuration file: store and data directory.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// At most one subject: --app, --service or --platform.
#[derive(Debug, clap::Args)]
#[group(required = false, multiple = false)]
pub struct Filter {
    /// App id (spiffe://<trust-domain>/app/<ID>).
    #[arg(long, value_name = "ID")]
    app: Option<String>,
    /// Platform service name (spiffe://<trust-domain>/service/<NAME>).
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
    /// Portcullis component (spiffe://<trust-domain>/platform/<COMPONENT>).
    #[arg(long, value_name = "COMPONENT")]
    platform: Option<String>,
}

impl Filter {
    fn subject(&self) -> Option<(CertificateKind, &str)> {
        match (&self.app, &self.service, &self.platform) {
            (Some(app), _, _) => Some((CertificateKind::App, app)),
            (_, Some(service), _) => Some((CertificateKind::Service, service)),
            (_, _, Some(component)) => Some((CertificateKind::Platform, component)),
            _ => None,
        }
    }
}

/// Maps identity errors caused by the operator's input to exit code 2.
fn usage_or(error: IdentityError) -> anyhow::Error {
    match error {
        IdentityError::CaExists { .. }
        | IdentityError::InvalidName { .. }
        | IdentityError::InvalidDnsName { .. }
        | IdentityError::InvalidLifetime { .. }
        | IdentityError::CaFileMissing { .. } => UsageError(error.to_string()).into(),
        other => other.into(),
    }
}

/// Runs a `ca` subcommand.
pub async fn run(global: &Global, command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Init { config, trust_domain, force } => init(global, config.as_deref(), trust_domain, force),
        Command::Issue { subject, dns_names, lifetime, out, config } => {
            issue(global, &subject, dns_names, lifetime, &out, config.as_deref()).await
        }
        Command::List { filter, format, config } => list(global, &filter, format, config.as_deref()).await,
        Command::Revoke { serial, filter, reason, config } => {
            revoke(global, serial.as_deref(), &filter, &reason, config.as_deref()).await
        }
    }
}

fn init(global: &Global, config: Option<&Path>, trust_domain: Option<String>, force: bool) -> anyhow::Result<u8> {
    let config = config.map(load_config).transpose()?;
    let domain = match (trust_domain, &config) {
        (Some(domain), _) => domain,
        (None, Some(config)) => config.trust_domain.clone(),
        (None, None) => {
            return Err(UsageError("no trust domain: pass --trust-domain DOMAIN or --config FILE".into()).into());
        }
    };
    let domain = TrustDomain::parse(&domain).map_err(usage_or)?;

    let data_dir = global.ensure_data_dir(config.as_ref().and_then(|c| c.data_dir.as_deref()))?;
    let summary = portcullis_identity::init_ca(&data_dir.join(CA_DIR), &domain, force).map_err(usage_or)?;
    println!("created the platform CA for {} in {}", summary.trust_domain, summary.dir.display());
    println!("  root serial          {}", summary.root_serial);
    println!("  intermediate serial  {}", summary.intermediate_serial);
    println!("  intermediate expires {}", timestamp(portcullis_store::unix_ms(summary.intermediate_not_after)));
    println!(
        "the root key {} is not needed to issue: keep it offline",
        summary.dir.join(portcullis_identity::ROOT_KEY).display()
    );
    Ok(EXIT_OK)
}

async fn issue(
    global: &Global,
    subject: &Filter,
    dns_names: Vec<String>,
    lifetime: Option<Duration>,
    out: &Path,
    config: Option<&Path>,
) -> anyhow::Result<u8> {
    let config = config.map(load_config).transpose()?;
    let config_dir = config.as_ref().and_then(|c| c.data_dir.as_deref());
    let lifetimes = config.as_ref().map(|c| Lifetimes::from_settings(&c.identity)).unwrap_or_default();

    let data_dir = global.data_dir(config_dir)?;
    let ca = PlatformCa::load(&data_dir.join(CA_DIR)).map_err(usage_or)?;
    if let Some(config) = &config
        && config.trust_domain != ca.trust_domain().as_str()
    {
        return Err(UsageError(format!(
            "the configuration's trust domain {:?} differs from the CA's {:?}: fix trust_domain or run `portcullis ca init --force`",
            config.trust_domain,
            ca.trust_domain().as_str()
        ))
        .into());
    }

    let (kind, name) = subject
        .subject()
        .ok_or_else(|| UsageError("name the subject with --app ID, --service NAME or --platform COMPONENT".into()))?;
    let identity = SpiffeId::new(ca.trust_domain(), kind, name).map_err(usage_or)?;
    let mut request = LeafRequest::new(identity, &lifetimes).with_dns_names(dns_names);
    if let Some(lifetime) = lifetime {
        request = request.with_lifetime(lifetime);
    }

    let store = global.open_store(config.as_ref().and_then(|c| c.store_url.as_deref()), config_dir).await?;
    // An app certificate is pinned to its app id at once, so it is issued
    // only for a registered app.
    if kind == portcullis_identity::CertificateKind::App && store.app(name).await?.is_none() {
        store.close().await;
        return Err(UsageError(format!(
            "app {name:?} is not registered; register it with `portcullis app register` first"
        ))
        .into());
    }
    let leaf = ca.issue_and_record(&store, &request).await.map_err(usage_or)?;
    store.close().await;
    let paths =
        leaf.write_files(out).with_context(|| format!("writing the certificate files into {}", out.display()))?;

    println!("issued {} serial {}", leaf.identity(), leaf.serial());
    println!("  expires   {}", timestamp(portcullis_store::unix_ms(leaf.not_after())));
    println!("  pin       {}", leaf.spki_pin());
    for path in paths {
        println!("  wrote     {}", path.display());
    }
    Ok(EXIT_OK)
}

/// Status of a record at `now_ms`: revoked wins over expired.
fn status(record: &CertificateRecord, now_ms: i64) -> &'static str {
    if record.revoked_at.is_some() {
        "revoked"
    } else if record.not_after <= now_ms {
        "expired"
    } else {
        "valid"
    }
}

async fn list(global: &Global, filter: &Filter, format: Format, config: Option<&Path>) -> anyhow::Result<u8> {
    let config = config.map(load_config).transpose()?;
    let store = global
        .open_store(
            config.as_ref().and_then(|c| c.store_url.as_deref()),
            config.as_ref().and_then(|c| c.data_dir.as_deref()),
        )
        .await?;
    let records = store.certificates(filter.subject()).await?;
    store.close().await;

    let now = portcullis_store::now_ms();
    match format {
        Format::Json => {
            let certificates: Vec<serde_json::Value> = records
                .iter()
                .map(|record| {
                    let mut value = serde_json::to_value(record).unwrap_or_default();
                    value["status"] = status(record, now).into();
                    value
                })
                .collect();
            print_json(&serde_json::json!({ "kind": "certificate_list", "certificates": certificates }))?;
        }
        Format::Table => {
            let rows = records
                .iter()
                .map(|r| vec![r.identity.clone(), r.serial.clone(), timestamp(r.not_after), status(r, now).to_owned()])
                .collect();
            print_table(&["IDENTITY", "SERIAL", "EXPIRES", "STATUS"], rows);
        }
    }
    Ok(EXIT_OK)
}

async fn revoke(
    global: &Global,
    serial: Option<&str>,
    filter: &Filter,
    reason: &str,
    config: Option<&Path>,
) -> anyhow::Result<u8> {
    let config = config.map(load_config).transpose()?;
    let store = global
        .open_store(
            config.as_ref().and_then(|c| c.store_url.as_deref()),
            config.as_ref().and_then(|c| c.data_dir.as_deref()),
        )
        .await?;
    let now = portcullis_store::now_ms();

    let code = match (serial, filter.subject()) {
        (Some(serial), _) => {
            let serial = serial.trim_start_matches("0x").replace(':', "").to_ascii_lowercase();
            if store.revoke_certificate(&serial, reason, now).await? {
                tracing::info!(serial = %serial, reason, "certificate revoked");
                println!("revoked certificate {serial}");
                EXIT_OK
            } else if store.certificate(&serial).await?.is_some() {
                eprintln!("portcullis: certificate {serial} is already revoked");
                EXIT_PROBLEMS
            } else {
                eprintln!("portcullis: no certificate with serial {serial}; `portcullis ca list` shows the serials");
                EXIT_PROBLEMS
            }
        }
        (None, Some((kind, subject))) => {
            let count = store.revoke_subject(kind, subject, reason, now).await?;
            tracing::info!(kind = kind.as_str(), subject, count, reason, "certificates revoked");
            println!("revoked {count} certificates of {} {subject}", kind.as_str());
            if count == 0 { EXIT_PROBLEMS } else { EXIT_OK }
        }
        (None, None) => return Err(UsageError("name a SERIAL or one of --app, --service, --platform".into()).into()),
    };
    store.close().await;
    Ok(code)
}
