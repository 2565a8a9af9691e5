//! `portcullis status`: per-app statistics and decisions of the running platform.
//!
//! The command calls the operator API of the platform that `--config`
//! describes. It authenticates with a certificate it issues itself from the
//! platform CA in the data directory (`spiffe://<trust-domain>/platform/cli`,
//! valid 5 minutes), so it must run where the CA's intermediate key is.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use portcullis_identity::{CertificateKind, LeafRequest, Lifetimes, PlatformCa, RenewingCertificate, SpiffeId};
use serde_json::Value;

use super::{Global, load_config};
use crate::output::{Format, print_json, print_table};
use crate::{EXIT_OK, EXIT_PROBLEMS};

/// Lifetime of the certificate the command issues itself.
const CLI_CERT_LIFETIME: Duration = Duration::from_secs(300);

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Platform configuration file; its listeners.operator is called.
    #[arg(long, short = 'c', env = "PORTCULLIS_CONFIG", value_name = "FILE")]
    config: PathBuf,

    /// Output format: "table" or "json" (the operator API's document).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Runs `status`.
pub async fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let config = load_config(&args.config)?;
    let data_dir = global.data_dir(config.data_dir.as_deref())?;
    let document = match operator_get(global, &config, &data_dir, "/v1/status").await {
        Ok(document) => document,
        Err(error) => {
            eprintln!(
                "portcullis: cannot reach the operator API at {}: {error:#}; is `portcullis serve` running with this configuration?",
                config.listeners.operator
            );
            return Ok(EXIT_PROBLEMS);
        }
    };

    match args.format {
        Format::Json => print_json(&document)?,
        Format::Table => {
            let header = [
                "APP",
                "REQUESTS",
                "2XX",
                "400",
                "401",
                "403",
                "404",
                "429",
                "5XX",
                "REQ/S",
                "EGRESS DENIED",
                "DECISION",
            ];
            let rows = document["apps"].as_array().map(|apps| apps.iter().map(row).collect()).unwrap_or_default();
            print_table(&header, rows);
            let window = document["window_seconds"].as_u64().unwrap_or(60);
            println!("counts cover the last {window} s");
        }
    }
    Ok(EXIT_OK)
}

/// Formats one table row: the app's counts summed over its services.
fn row(app: &Value) -> Vec<String> {
    let services = app["stats"]["services"].as_object();
    let sum =
        |field: &str| -> f64 { services.map_or(0.0, |s| s.values().map(|v| v[field].as_f64().unwrap_or(0.0)).sum()) };
    let class = |name: &str| -> String {
        let total: u64 = services.map_or(0, |s| s.values().map(|v| v["outcomes"][name].as_u64().unwrap_or(0)).sum());
        total.to_string()
    };
    let decision = match app["decision"]["kind"].as_str() {
        Some("ban") => format!("banned: {}", app["decision"]["reason"].as_str().unwrap_or_default()),
        Some("throttle") => format!("throttled to {}/s", app["decision"]["per_second"]),
        _ => "-".into(),
    };
    vec![
        app["app_id"].as_str().unwrap_or_default().to_owned(),
        format!("{}", sum("requests") as u64),
        class("2xx"),
        class("400"),
        class("401"),
        class("403"),
        class("404"),
        class("429"),
        class("5xx"),
        format!("{:.1}", sum("requests_per_second")),
        app["stats"]["egress_violations"].as_u64().unwrap_or(0).to_string(),
        decision,
    ]
}

/// Sends `GET path` to the operator API and returns the JSON body.
async fn operator_get(
    global: &Global,
    config: &portcullis_config::PlatformConfig,
    data_dir: &Path,
    path: &str,
) -> anyhow::Result<Value> {
    let ca = PlatformCa::load(&data_dir.join("ca")).context("loading the platform CA")?;
    let store = global.open_store(config.store_url.as_deref(), config.data_dir.as_deref()).await?;
    let id = SpiffeId::new(ca.trust_domain(), CertificateKind::Platform, "cli")?;
    let request = LeafRequest::new(id, &Lifetimes::from_settings(&config.identity)).with_lifetime(CLI_CERT_LIFETIME);
    let leaf = ca.issue_and_record(&store, &request).await?;
    store.close().await;

    let tls = portcullis_identity::policy::client_config(ca.root(), RenewingCertificate::new(&leaf)?, &[b"http/1.1"])?;
    let mut address: SocketAddr = config.listeners.operator;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(address))
        .await
        .context("connecting timed out after 5 s")??;
    // Every platform certificate names `localhost`; a listener on an
    // unspecified address (as in a container) has no IP address in it.
    let name = if address.ip().is_loopback() {
        rustls::pki_types::ServerName::try_from("localhost").expect("valid name")
    } else {
        rustls::pki_types::ServerName::IpAddress(address.ip().into())
    };
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await.context("TLS handshake")?;

    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request =
        hyper::Request::get(path).header(hyper::header::HOST, address.to_string()).body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        anyhow::bail!("status {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(serde_json::from_slice(&body).context("parsing the operator API's response")?)
}
