//! The running part of `portcullis up`: credentials, the platform, the
//! example's processes, ban enforcement and the orderly stop.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use portcullis_config::{AppId, PlatformConfig};
use portcullis_identity::{CertificateKind, LeafRequest, Lifetimes, PlatformCa, SpiffeId};
use portcullis_runtime::process::ProcessDriver;
use portcullis_runtime::profile::HardeningProfile;
use portcullis_store::Store;

use super::state::{RUN_DIR_PREFIX, RUN_MARKER, Recorded, UpState, remove_run_dir, up_dir};
use super::{Example, Progress};

/// Time a started service or host has to accept connections.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything `up` has checked before it starts anything.
pub struct Context {
    /// The validated configuration.
    pub config: PlatformConfig,
    /// Its file.
    pub config_path: PathBuf,
    /// The validated example description.
    pub example: Example,
    /// The directory of the example's binaries.
    pub bin_dir: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The opened store.
    pub store: Store,
    /// Command lines the operator can use on this run.
    pub commands: Commands,
    /// Progress output.
    pub progress: Progress,
    /// With the Docker driver, its settings; `None` runs the process driver.
    pub docker: Option<super::docker::Settings>,
}

/// The `status` and `down` command lines for this configuration and data
/// directory, printed for the operator.
pub struct Commands {
    /// `portcullis status --config FILE`.
    pub status: String,
    /// `portcullis down --config FILE`.
    pub down: String,
}

/// Removes the run directory and the state file when `up` ends, also on an
/// error after they were created.
struct Cleanup {
    data_dir: PathBuf,
    run_dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_run_dir(&self.run_dir);
        UpState::remove(&self.data_dir);
    }
}

/// One process `up` started itself (a service or an outbound test host).
struct Started {
    record: Recorded,
    child: tokio::process::Child,
}

pub(super) fn create_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // The process umask may have narrowed the mode.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

/// Formats the URL of a listener on `address`, with loopback in place of an
/// unspecified address.
fn local_url(scheme: &str, address: SocketAddr) -> String {
    format!("{scheme}://{}", local_addr(address))
}

/// Runs the example until Ctrl-C or SIGTERM.
pub async fn run(context: Context) -> anyhow::Result<()> {
    let Context { config, config_path, example, bin_dir, data_dir, store, commands, progress, docker } = context;

    // CA.
    let ca_dir = data_dir.join("ca");
    if ca_dir.join(portcullis_identity::INTERMEDIATE_CERT).exists() {
        progress.step(&format!("reusing the platform CA in {}", ca_dir.display()));
    } else {
        let domain = portcullis_identity::TrustDomain::parse(&config.trust_domain)?;
        portcullis_identity::init_ca(&ca_dir, &domain, false).context("creating the platform CA")?;
        progress.step(&format!("created the platform CA in {} (keep ca/root-key.pem offline)", ca_dir.display()));
    }
    let ca = PlatformCa::load(&ca_dir).with_context(|| format!("loading the platform CA from {}", ca_dir.display()))?;
    let lifetimes = Lifetimes::from_settings(&config.identity);

    register(&store, &example).await?;
    let ids: Vec<&str> = example.apps.iter().map(|a| a.id.as_str()).collect();
    progress.step(&format!("registered apps {} with their grants", ids.join(", ")));

    // Run directory, readable along the path by the apps' UIDs.
    let run_id = format!("{}-{}", std::process::id(), portcullis_store::now_ms());
    let run_dir = std::env::temp_dir().join(format!("{RUN_DIR_PREFIX}{run_id}"));
    create_dir(&run_dir, 0o711)?;
    let mut state = UpState {
        run_id: run_id.clone(),
        up_pid: std::process::id(),
        run_dir: run_dir.clone(),
        processes: Vec::new(),
        docker_instance: None,
    };
    state.write(&data_dir)?;
    let _cleanup = Cleanup { data_dir: data_dir.clone(), run_dir: run_dir.clone() };

    if let Some(settings) = docker {
        let run = super::docker::Run {
            config: &config,
            config_path: &config_path,
            example: &example,
            bin_dir: &bin_dir,
            data_dir: &data_dir,
            store: &store,
            ca: &ca,
            lifetimes: &lifetimes,
            run_dir: &run_dir,
            progress,
            settings,
        };
        let outcome = super::docker::run(run, &mut state).await;
        store.close().await;
        return outcome;
    }

    // Credentials for the apps and the services, before the platform starts
    // so its trust cache already contains every pin.
    let own_uid = std::fs::metadata("/proc/self").map(|m| m.uid()).context("reading /proc/self")?;
    let mut app_uids = BTreeMap::new();
    let mut proxy_secrets = BTreeMap::new();
    let secrets = portcullis_egress::proxy::ProxySecrets::new(store.clone());
    for app in &example.apps {
        // Without root the apps run as this user, so their files are ours.
        let uid = if own_uid == 0 { store.app_uid(&app.id, config.runtime.hardening.uid_base).await? } else { own_uid };
        let app_dir = run_dir.join("apps").join(&app.id);
        create_dir(&run_dir.join("apps"), 0o711)?;
        create_dir(&app_dir, 0o711)?;
        portcullis_runtime::deploy::write_credentials(
            &store,
            &ca,
            &lifetimes,
            &app.id,
            uid,
            &app_dir.join("credentials"),
        )
        .await?;
        let app_id = AppId::parse(&app.id).map_err(anyhow::Error::msg)?;
        proxy_secrets.insert(app.id.clone(), secrets.issue(&app_id).await?);
        app_uids.insert(app.id.clone(), uid);
    }
    for service in &example.services {
        let listen = service.listen.expect("Example::load fills in listen");
        let identity = SpiffeId::new(ca.trust_domain(), CertificateKind::Service, &service.name)?;
        let request =
            LeafRequest::new(identity, &lifetimes).with_dns_names(["localhost".to_owned(), listen.ip().to_string()]);
        let leaf = ca.issue_and_record(&store, &request).await?;
        leaf.write_files(&run_dir.join("services").join(&service.name))?;
    }
    progress.step("issued certificates and egress proxy secrets");

    // Platform.
    let platform = portcullis_platform::Platform::start(&config, &data_dir, store.clone())
        .await
        .context("starting the platform")?;
    let addresses = platform.addresses().clone();
    progress.step(&format!(
        "platform started: gateway {}, egress proxy {}, token service {}",
        addresses.gateway, addresses.egress, addresses.token
    ));

    // Services and outbound test hosts.
    let logs_dir = up_dir(&data_dir).join("logs");
    create_dir(&logs_dir, 0o700)?;
    let mut started = Vec::new();
    for service in &example.services {
        let listen = service.listen.expect("Example::load fills in listen");
        let dir = run_dir.join("services").join(&service.name);
        let args = [
            "--listen".to_owned(),
            listen.to_string(),
            "--cert".to_owned(),
            dir.join("cert.pem").display().to_string(),
            "--key".to_owned(),
            dir.join("key.pem").display().to_string(),
            "--ca-bundle".to_owned(),
            dir.join("ca-bundle.pem").display().to_string(),
        ];
        let child =
            spawn(&bin_dir.join(&service.binary), &args, &run_id, &logs_dir.join(format!("{}.log", service.name)))?;
        started.push(Started {
            record: Recorded { role: "service".into(), name: service.name.clone(), pid: child.id().unwrap_or(0) },
            child,
        });
        state.processes.push(started.last().expect("pushed").record.clone());
        state.write(&data_dir)?;
        wait_for_listen(listen, started.last_mut().expect("pushed")).await?;
    }
    for host in &example.hosts {
        let args = ["--listen".to_owned(), host.listen.to_string(), "--plain".to_owned()];
        let child = spawn(&bin_dir.join(&host.binary), &args, &run_id, &logs_dir.join(format!("{}.log", host.name)))?;
        started.push(Started {
            record: Recorded { role: "host".into(), name: host.name.clone(), pid: child.id().unwrap_or(0) },
            child,
        });
        state.processes.push(started.last().expect("pushed").record.clone());
        state.write(&data_dir)?;
        wait_for_listen(host.listen, started.last_mut().expect("pushed")).await?;
    }
    let names: Vec<String> = started.iter().map(|s| s.record.name.clone()).collect();
    progress.step(&format!("started {}", names.join(", ")));

    // Apps, on the process driver.
    let driver = ProcessDriver::new(&up_dir(&data_dir).join("apps"));
    let app_bin_dir = run_dir.join("bin");
    create_dir(&app_bin_dir, 0o755)?;
    for app in &example.apps {
        let binary = app_bin_dir.join(&app.binary);
        if !binary.exists() {
            std::fs::copy(bin_dir.join(&app.binary), &binary)
                .with_context(|| format!("cannot copy {} to {}", app.binary, app_bin_dir.display()))?;
            std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))?;
        }
        let credentials = run_dir.join("apps").join(&app.id).join("credentials");
        let app_id = AppId::parse(&app.id).map_err(anyhow::Error::msg)?;
        let proxy_url = proxy_secrets[&app.id].proxy_url(&app_id, local_addr(addresses.egress));
        let gateway = local_addr(addresses.gateway);

        let mut env = app.env.clone();
        env.insert(RUN_MARKER.into(), run_id.clone());
        env.insert("PORTCULLIS_APP_ID".into(), app.id.clone());
        env.insert("PORTCULLIS_GATEWAY".into(), local_url("https", gateway));
        env.insert("PORTCULLIS_TOKEN_URL".into(), format!("{}/oauth2/token", local_url("https", addresses.token)));
        env.insert("PORTCULLIS_CERT".into(), credentials.join("cert.pem").display().to_string());
        env.insert("PORTCULLIS_KEY".into(), credentials.join("key.pem").display().to_string());
        env.insert("PORTCULLIS_CA_BUNDLE".into(), credentials.join("ca-bundle.pem").display().to_string());
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            env.insert(name.into(), proxy_url.clone());
        }
        for name in ["NO_PROXY", "no_proxy"] {
            env.insert(name.into(), gateway.ip().to_string());
        }

        let profile = HardeningProfile::new(&app.id, &config.runtime.hardening, app_uids[&app.id], false);
        let pid = driver.start(&app.id, &[binary.display().to_string()], &env, &profile).await?;
        state.processes.push(Recorded { role: "app".into(), name: app.id.clone(), pid });
        state.write(&data_dir)?;
    }
    progress.step(&format!("started apps {} (process driver)", ids.join(", ")));

    println!();
    println!("The example platform is running. Operator API: https://{}", addresses.operator);
    println!("Watch it:    {}", commands.status);
    println!("App output:  {}/<app>.log", up_dir(&data_dir).join("apps").display());
    println!(
        "Events:      {} and {}",
        data_dir.join("access.jsonl").display(),
        data_dir.join("egress.jsonl").display()
    );
    println!("Stop:        Ctrl-C here, or {}", commands.down);
    println!();

    follow(&driver, &platform, &progress).await?;

    // Stop everything, apps first so their connections close before the
    // platform drains.
    for app in driver.list().await {
        driver.stop(&app.app_id).await?;
    }
    for mut process in started {
        let _ = process.child.start_kill();
        let _ = process.child.wait().await;
        tracing::info!(role = process.record.role, name = process.record.name, pid = process.record.pid, "stopped");
    }
    platform.shutdown().await;
    store.close().await;
    progress.step("stopped the apps, services, hosts and platform");
    Ok(())
}

/// Returns the address to connect to for a listener on `address`.
fn local_addr(address: SocketAddr) -> SocketAddr {
    let mut address = address;
    if address.ip().is_unspecified() {
        address.set_ip(if address.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    address
}

/// Registers each app that is not registered yet and adds each scope it
/// does not hold yet, so repeated runs change nothing.
async fn register(store: &Store, example: &Example) -> anyhow::Result<()> {
    for app in &example.apps {
        if store.app(&app.id).await?.is_none() {
            store.insert_app(&app.id, &app.name, &app.owner).await?;
            tracing::info!(app_id = app.id, "app registered");
        }
        let grants = store.grants(Some(&app.id)).await?;
        for scope in &app.scopes {
            let service = scope.split_once(':').map(|(service, _)| service).unwrap_or_default();
            if !grants.iter().any(|g| g.service == service && &g.scope == scope) {
                store.add_grant(&app.id, service, scope, "operator").await?;
                tracing::info!(app_id = app.id, service, scope, "scope granted");
            }
        }
    }
    Ok(())
}

/// Starts `binary` with `args`, an environment holding only the run marker,
/// and its output appended to `log`.
fn spawn(binary: &Path, args: &[String], run_id: &str, log: &Path) -> anyhow::Result<tokio::process::Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = file.try_clone()?;
    tokio::process::Command::new(binary)
        .args(args)
        .env_clear()
        .env(RUN_MARKER, run_id)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))
}

/// Waits until `address` accepts connections, failing when the process
/// exits or [`LISTEN_TIMEOUT`] passes.
async fn wait_for_listen(address: SocketAddr, process: &mut Started) -> anyhow::Result<()> {
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    while tokio::net::TcpStream::connect(address).await.is_err() {
        if let Some(status) = process.child.try_wait()? {
            anyhow::bail!(
                "{} {} exited with {status} before listening on {address}; see its log",
                process.record.role,
                process.record.name
            );
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "{} {} did not listen on {address} within {} s; is another process using the port?",
                process.record.role,
                process.record.name,
                LISTEN_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Stops each app the guard bans, reports apps that exit, and returns on
/// Ctrl-C or SIGTERM.
async fn follow(
    driver: &ProcessDriver,
    platform: &portcullis_platform::Platform,
    progress: &Progress,
) -> anyhow::Result<()> {
    let stop = super::stop_signal();
    tokio::pin!(stop);
    let mut decisions = platform.guard().decisions.clone();
    let mut ticker = tokio::time::interval(portcullis_runtime::enforce::RECHECK_INTERVAL);
    let mut exited = HashSet::new();
    loop {
        tokio::select! {
            result = &mut stop => {
                result?;
                break;
            }
            _ = decisions.changed() => {}
            _ = ticker.tick() => {}
        }
        let snapshot = decisions.borrow_and_update().clone();
        let now_ms = portcullis_store::now_ms();
        for app in driver.list().await {
            if let portcullis_guard::Verdict::Ban { reason, decision_id, .. } = snapshot.verdict(&app.app_id, now_ms) {
                driver.stop(&app.app_id).await?;
                tracing::warn!(app_id = app.app_id, decision_id, reason, "ban enforced: app process stopped");
                progress.alert(&format!("{} banned by the guard ({reason}); its process was stopped", app.app_id));
            } else if !app.running && exited.insert(app.app_id.clone()) {
                progress.step(&format!("{} exited; its output is in {}", app.app_id, app.log_file.display()));
            }
        }
    }
    tracing::info!("stop signal received");
    Ok(())
}
