//! `portcullis up` on the Docker driver.
//!
//! Everything runs in containers built here FROM scratch, on the topology of
//! [`portcullis_runtime::docker`]:
//!
//! - the gateway container runs `portcullis serve --only gateway` (gateway,
//!   token service, consent page, operator API) on the services network,
//!   the control network and every app network;
//! - the egress proxy container runs `portcullis serve --only egress` on the
//!   outbound network and every app network;
//! - each example service runs in its own container on the services
//!   network, each outbound test host on the outbound network;
//! - each app runs hardened on its own internal network.
//!
//! Both platform containers mount the data directory (store, CA, token
//! keys, event logs) with the offline root key hidden under `/dev/null`,
//! and run as the data directory's owner with every capability dropped.
//! This process forwards the configured operator listener to the gateway
//! container over the control network, so `portcullis status` works
//! unchanged, and follows the stored decisions to disconnect banned apps.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use portcullis_config::{AppId, PlatformConfig};
use portcullis_identity::{CertificateKind, LeafRequest, Lifetimes, PlatformCa, SpiffeId};
use portcullis_runtime::docker::{
    AppLaunch, BindMount, DockerDriver, DockerOptions, ImageContext, PlatformContainerSpec, PlatformNames, build_image,
    portcullis_image_context,
};
use portcullis_runtime::labels::Role;
use portcullis_runtime::profile::HardeningProfile;
use portcullis_store::Store;

use super::state::UpState;
use super::{Example, Progress};

/// Time a platform container, service or host has to accept connections.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Mount point of the derived configuration in the platform containers.
const CONFIG_MOUNT: &str = "/run/portcullis/platform.toml";

/// Mount point of a service's certificate directory in its container.
const SERVICE_CREDENTIALS_MOUNT: &str = "/run/portcullis/service";

/// First host number of fixed addresses for services and test hosts. The
/// gateway and egress proxy use .2 and .3, and the Engine hands out the
/// upper half of the services network.
const FIRST_FIXED_HOST: u32 = 10;

/// The Docker settings `up` was given.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Instance label and name prefix of every object.
    pub instance: String,
    /// The address pool of the platform's networks.
    pub subnet_pool: ipnet::Ipv4Net,
}

/// Everything the Docker run needs from the common start.
pub struct Run<'a> {
    pub config: &'a PlatformConfig,
    pub config_path: &'a Path,
    pub example: &'a Example,
    pub bin_dir: &'a Path,
    pub data_dir: &'a Path,
    pub store: &'a Store,
    pub ca: &'a PlatformCa,
    pub lifetimes: &'a Lifetimes,
    pub run_dir: &'a Path,
    pub progress: Progress,
    pub settings: Settings,
}

/// Connects to the Docker Engine with the options `up` uses for `config`.
pub async fn connect(config: &PlatformConfig, settings: &Settings) -> anyhow::Result<DockerDriver> {
    let options = DockerOptions {
        instance: settings.instance.clone(),
        subnet_pool: settings.subnet_pool,
        gateway_port: config.listeners.gateway.port(),
        proxy_port: config.listeners.egress.port(),
        platform_names: Some(PlatformNames {
            gateway: format!("gateway.{}", config.trust_domain),
            token: format!("token.{}", config.trust_domain),
            token_port: config.listeners.token.port(),
        }),
        extra_labels: Default::default(),
    };
    Ok(DockerDriver::connect(options).await?)
}

/// Returns whether the ELF file at `path` is statically linked: it has no
/// `PT_INTERP` program header naming a dynamic loader.
///
/// Read by hand because only the program header table is needed; see the
/// System V ABI, "Program Header", for the offsets.
fn is_static_elf(path: &Path) -> anyhow::Result<bool> {
    const PT_INTERP: u32 = 3;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let u16_at = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |at: usize| bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);

    // 64-bit little-endian ELF only: the targets Portcullis builds for.
    if bytes.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        anyhow::bail!("{} is not a 64-bit little-endian ELF executable", path.display());
    }
    let (Some(table), Some(entry_size), Some(count)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        anyhow::bail!("{} has a truncated ELF header", path.display());
    };
    for index in 0..usize::from(count) {
        let at = usize::try_from(table).unwrap_or(usize::MAX).saturating_add(index * usize::from(entry_size));
        match u32_at(at) {
            Some(PT_INTERP) => return Ok(false),
            Some(_) => {}
            None => anyhow::bail!("{} has a truncated program header table", path.display()),
        }
    }
    Ok(true)
}

/// Checks that each binary in `paths` is statically linked, so it runs in
/// a FROM-scratch image.
fn require_static(paths: &[PathBuf]) -> anyhow::Result<()> {
    for path in paths {
        if !is_static_elf(path)? {
            return Err(super::UsageError(format!(
                "{} is dynamically linked, but the Docker driver's images are FROM scratch and need static \
                 binaries; build them with scripts/build-static and pass --bin-dir \
                 target/static/x86_64-unknown-linux-gnu/debug (scripts/up does both), or use --driver process",
                path.display()
            ))
            .into());
        }
    }
    Ok(())
}

/// Returns the `index`-th fixed address in `subnet`.
fn fixed_address(subnet: ipnet::Ipv4Net, index: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + FIRST_FIXED_HOST + index as u32)
}

/// Runs the example on the Docker driver until Ctrl-C or SIGTERM.
pub async fn run(run: Run<'_>, state: &mut UpState) -> anyhow::Result<()> {
    let Run { config, config_path, example, bin_dir, data_dir, store, ca, lifetimes, run_dir, progress, settings } =
        run;

    if config.store_url.is_some() {
        return Err(super::UsageError(
            "the Docker driver of `up` shares the SQLite store in the data directory with its containers; \
             remove store.url from the configuration or use --driver process"
                .into(),
        )
        .into());
    }
    if !super::running_as_root() {
        return Err(super::UsageError(
            "the Docker driver gives every app its own UID and must hand it its key file, which needs root; \
             run `portcullis up` as root or use --driver process"
                .into(),
        )
        .into());
    }
    let portcullis_binary = bin_dir.join("portcullis");
    let mut binaries = vec![portcullis_binary.clone()];
    binaries.extend(example.binaries().iter().map(|name| bin_dir.join(name)));
    require_static(&binaries)?;

    let driver = connect(config, &settings).await?;
    state.docker_instance = Some(settings.instance.clone());
    state.write(data_dir)?;
    super::state::record_docker_instance(data_dir, &settings.instance)?;
    driver.remove_everything().await.context("removing what an earlier run of this instance left")?;

    // Images.
    let instance = &settings.instance;
    let platform_image = format!("pc-{instance}/portcullis:latest");
    let examples_image = format!("pc-{instance}/examples:latest");
    progress.start(&format!("building image {platform_image}"));
    build_image(&driver, &platform_image, Role::Image, &portcullis_image_context(&portcullis_binary)?).await?;
    progress.step(&format!("built image {platform_image}"));
    progress.start(&format!("building image {examples_image}"));
    let mut context = ImageContext::new().user("65534:65534");
    for name in example.binaries() {
        context = context.copy(&format!("/bin/{name}"), &bin_dir.join(name), 0o755)?;
    }
    build_image(&driver, &examples_image, Role::Image, &context).await?;
    progress.step(&format!("built image {examples_image}"));

    driver.ensure_platform_networks().await?;

    // Credentials and proxy secrets first: the platform containers load the
    // pins and secrets from the store when they start.
    let apps_dir = run_dir.join("apps");
    super::start::create_dir(&apps_dir, 0o711)?;
    let secrets = portcullis_egress::proxy::ProxySecrets::new(store.clone());
    let mut launches = Vec::new();
    for app in &example.apps {
        let uid = store.app_uid(&app.id, config.runtime.hardening.uid_base).await?;
        super::start::create_dir(&apps_dir.join(&app.id), 0o711)?;
        let credentials_dir = apps_dir.join(&app.id).join("credentials");
        portcullis_runtime::deploy::write_credentials(store, ca, lifetimes, &app.id, uid, &credentials_dir).await?;
        let app_id = AppId::parse(&app.id).map_err(anyhow::Error::msg)?;
        let secret = secrets.issue(&app_id).await?;
        launches.push(AppLaunch {
            app_id: app.id.clone(),
            image: examples_image.clone(),
            command: vec![format!("/bin/{}", app.binary)],
            env: app.env.clone(),
            port: None,
            profile: HardeningProfile::new(&app.id, &config.runtime.hardening, uid, driver.apparmor()),
            credentials_dir,
            proxy_secret: secret.expose().to_owned(),
        });
    }

    // Services and outbound test hosts.
    let mut upstreams = BTreeMap::new();
    for (index, service) in example.services.iter().enumerate() {
        let port = service.listen.expect("Example::load fills in listen").port();
        let address = fixed_address(driver.service_subnet(), index);
        let identity = SpiffeId::new(ca.trust_domain(), CertificateKind::Service, &service.name)?;
        let request = LeafRequest::new(identity, lifetimes).with_dns_names([address.to_string()]);
        let leaf = ca.issue_and_record(store, &request).await?;
        let dir = run_dir.join("services").join(&service.name);
        let paths = leaf.write_files(&dir)?;
        for path in &paths {
            nobody_only(path, 0o400)?;
        }
        nobody_only(&dir, 0o500)?;

        let listen = SocketAddr::from((address, port));
        let spec = PlatformContainerSpec {
            role: Some(Role::Service),
            service_name: Some(service.name.clone()),
            image: examples_image.clone(),
            command: vec![
                format!("/bin/{}", service.binary),
                "--listen".into(),
                listen.to_string(),
                "--cert".into(),
                format!("{SERVICE_CREDENTIALS_MOUNT}/cert.pem"),
                "--key".into(),
                format!("{SERVICE_CREDENTIALS_MOUNT}/key.pem"),
                "--ca-bundle".into(),
                format!("{SERVICE_CREDENTIALS_MOUNT}/ca-bundle.pem"),
            ],
            address: Some(address),
            mounts: vec![BindMount { source: dir, target: SERVICE_CREDENTIALS_MOUNT.into(), read_only: true }],
            ..Default::default()
        };
        driver.start_platform_container(&spec).await?;
        upstreams.insert(service.name.clone(), listen);
    }
    let mut hosts = BTreeMap::new();
    for (index, host) in example.hosts.iter().enumerate() {
        let address = fixed_address(driver.out_subnet(), index);
        let listen = SocketAddr::from((address, host.listen.port()));
        let spec = PlatformContainerSpec {
            role: Some(Role::Service),
            service_name: Some(format!("host-{}", host.name)),
            image: examples_image.clone(),
            command: vec![format!("/bin/{}", host.binary), "--listen".into(), listen.to_string(), "--plain".into()],
            address: Some(address),
            on_out_network: true,
            ..Default::default()
        };
        driver.start_platform_container(&spec).await?;
        wait_for_listen(&driver, &format!("host {}", host.name), listen).await?;
        hosts.insert(host.name.clone(), address);
    }
    progress.step(&format!(
        "started containers of {}",
        example
            .services
            .iter()
            .map(|s| s.name.as_str())
            .chain(example.hosts.iter().map(|h| h.name.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // The platform's two containers.
    let derived = run_dir.join("platform.toml");
    write_container_config(config_path, &derived, &upstreams, &hosts)?;
    let owner = std::fs::metadata(data_dir).with_context(|| format!("reading {}", data_dir.display()))?;
    let mut mounts = vec![
        BindMount { source: data_dir.to_owned(), target: data_dir.display().to_string(), read_only: false },
        BindMount { source: derived, target: CONFIG_MOUNT.into(), read_only: true },
    ];
    let root_key = data_dir.join("ca").join("root-key.pem");
    if root_key.exists() {
        mounts.push(BindMount {
            source: PathBuf::from("/dev/null"),
            target: root_key.display().to_string(),
            read_only: true,
        });
    }
    let gateway_control = driver.gateway_control_address();
    let operator_in_container = SocketAddr::from((gateway_control, config.listeners.operator.port()));
    for (role, part) in [(Role::Gateway, "gateway"), (Role::Egress, "egress")] {
        progress.start(&format!("starting the {part} container"));
        let mut command = vec![
            "--log-format".into(),
            "json".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "serve".into(),
            "--config".into(),
            CONFIG_MOUNT.into(),
            "--only".into(),
            part.into(),
        ];
        if role == Role::Egress {
            // One guard, in the gateway container, counts every app's
            // requests and refusals.
            command.extend(["--report-to".into(), operator_in_container.to_string()]);
        }
        let spec = PlatformContainerSpec {
            role: Some(role),
            image: platform_image.clone(),
            command,
            env: vec![format!("RUST_LOG={}", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))],
            mounts: mounts.clone(),
            user: Some(format!("{}:{}", owner.uid(), owner.gid())),
            ..Default::default()
        };
        driver.start_platform_container(&spec).await?;
    }
    let egress_out = Ipv4Addr::from(u32::from(driver.out_subnet().network()) + 3);
    wait_for_listen(&driver, "gateway container", (gateway_control, config.listeners.gateway.port()).into()).await?;
    wait_for_listen(&driver, "gateway container", (gateway_control, config.listeners.operator.port()).into()).await?;
    wait_for_listen(&driver, "egress proxy container", (egress_out, config.listeners.egress.port()).into()).await?;
    for (name, listen) in &upstreams {
        // An app's first requests fail with 502 until its service listens,
        // so a slow service is reported but does not stop the example.
        if let Err(error) = wait_for_listen(&driver, &format!("service {name}"), *listen).await {
            progress.alert(&format!("{error:#}"));
        }
    }
    progress.step(&format!("gateway and egress proxy containers started from {platform_image}"));

    let relay = tokio::spawn(relay(config.listeners.operator, operator_in_container));
    let relay = AbortOnDrop(relay);

    // Apps.
    for launch in &launches {
        progress.start(&format!("deploying {}", launch.app_id));
        let container = driver.deploy(launch).await?;
        progress.step(&format!(
            "deployed {} hardened as UID {} ({})",
            launch.app_id,
            launch.profile.uid,
            &container.container_id[..12.min(container.container_id.len())]
        ));
        // A ban stored by an earlier run applies at once, not at the first
        // tick of the loop below.
        enforce_decisions(&driver, store, &progress).await;
    }

    println!();
    println!("The example platform is running on Docker (instance {instance}).");
    println!("Operator API: https://{} (forwarded to the gateway container)", config.listeners.operator);
    println!("Watch it:     portcullis status --config {}", config_path.display());
    println!("App output:   PORTCULLIS_INSTANCE={instance} portcullis app logs APP");
    println!(
        "Events:       {} and {}",
        data_dir.join("access.jsonl").display(),
        data_dir.join("egress.jsonl").display()
    );
    println!("Stop:         Ctrl-C here, or portcullis down --config {}", config_path.display());
    println!();

    let outcome = follow(&driver, store, &progress).await;

    progress.start("removing the containers and networks");
    drop(relay);
    let removed = driver.remove_everything().await;
    progress.step("removed the example's containers and networks (images stay for the next run)");
    outcome?;
    removed?;
    Ok(())
}

/// Makes `path` owned by `nobody` (the UID service containers run as) with
/// `mode`.
fn nobody_only(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, Some(65534), Some(65534))
        .with_context(|| format!("cannot change the owner of {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot change the mode of {}", path.display()))
}

/// Writes the configuration the platform containers run with. It is the
/// operator's file with the listeners on every address of the container
/// and the services' upstreams at their containers. Each outbound test host
/// is pinned to its container's address and opened in `egress.allow_cidrs`
/// in place of any loopback range, which inside a container means the
/// container itself.
fn write_container_config(
    source: &Path,
    target: &Path,
    upstreams: &BTreeMap<String, SocketAddr>,
    hosts: &BTreeMap<String, Ipv4Addr>,
) -> anyhow::Result<()> {
    use toml::Value;

    let text = std::fs::read_to_string(source).with_context(|| format!("cannot read {}", source.display()))?;
    let mut document: toml::Table = text.parse().with_context(|| format!("{} is not TOML", source.display()))?;
    document.remove("data_dir");

    if let Some(Value::Table(listeners)) = document.get_mut("listeners") {
        for (_, value) in listeners.iter_mut() {
            if let Some(address) = value.as_str().and_then(|text| text.parse::<SocketAddr>().ok()) {
                *value = Value::String(format!("0.0.0.0:{}", address.port()));
            }
        }
    }
    if let Some(Value::Array(services)) = document.get_mut("services") {
        for service in services.iter_mut().filter_map(Value::as_table_mut) {
            let name = service.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
            if let Some(address) = upstreams.get(&name) {
                service.insert("upstream".into(), Value::String(format!("https://{address}")));
            }
        }
    }
    if let Some(Value::Table(egress)) = document.get_mut("egress") {
        let mut cidrs: Vec<Value> = egress
            .get("allow_cidrs")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|cidr| {
                cidr.as_str()
                    .and_then(|text| text.parse::<ipnet::IpNet>().ok())
                    .is_none_or(|net| !net.network().is_loopback())
            })
            .collect();
        let mut static_hosts = toml::Table::new();
        for (name, address) in hosts {
            static_hosts.insert(name.clone(), Value::String(address.to_string()));
            cidrs.push(Value::String(format!("{address}/32")));
        }
        egress.insert("allow_cidrs".into(), Value::Array(cidrs));
        egress.insert("static_hosts".into(), Value::Table(static_hosts));
    }

    let header = format!(
        "# Written by `portcullis up` from {} for its gateway and egress proxy containers.\n",
        source.display()
    );
    std::fs::write(target, header + &toml::to_string(&document)?)
        .with_context(|| format!("cannot write {}", target.display()))?;
    portcullis_config::load(target).with_context(|| format!("the derived configuration {}", target.display()))?;
    Ok(())
}

/// Waits until `address` accepts connections from this host, failing after
/// [`LISTEN_TIMEOUT`] with the tail of the containers' logs.
async fn wait_for_listen(driver: &DockerDriver, what: &str, address: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(address)).await;
        if matches!(attempt, Ok(Ok(_))) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let instance = &driver.options().instance;
            anyhow::bail!(
                "the {what} did not listen on {address} within {} s; see `docker logs` of the pc-{instance}-* containers",
                LISTEN_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Forwards every TCP connection to `listen` to `target`, byte for byte.
/// TLS passes through untouched, so the operator API still receives the
/// client's certificate.
async fn relay(listen: SocketAddr, target: SocketAddr) {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%listen, %error, "cannot listen for the operator API; `portcullis status` will not reach it");
            return;
        }
    };
    loop {
        let Ok((mut client, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            match tokio::net::TcpStream::connect(target).await {
                Ok(mut upstream) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(error) => tracing::warn!(%target, %error, "cannot reach the gateway container's operator API"),
            }
        });
    }
}

/// Applies the stored decisions to the app containers twice a second (a
/// banned app is disconnected from its network, reconnected when the ban
/// ends), and returns on Ctrl-C or SIGTERM.
async fn follow(driver: &DockerDriver, store: &Store, progress: &Progress) -> anyhow::Result<()> {
    let stop = super::stop_signal();
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = &mut stop => {
                result?;
                break;
            }
            _ = ticker.tick() => {}
        }
        enforce_decisions(driver, store, progress).await;
    }
    tracing::info!("stop signal received");
    Ok(())
}

/// Reads the decisions in force and applies them to the app containers
/// once: a banned app is disconnected from its network, an app whose ban
/// ended is reconnected. Failures are logged and retried by the caller.
async fn enforce_decisions(driver: &DockerDriver, store: &Store, progress: &Progress) {
    let now_ms = portcullis_store::now_ms();
    let records = match store.decisions_in_force(now_ms).await {
        Ok(records) => records,
        Err(error) => {
            tracing::warn!(%error, "cannot read the decisions; retrying");
            return;
        }
    };
    let decisions = portcullis_guard::DecisionSet::from_records(records, now_ms);
    match portcullis_runtime::enforce::apply_decisions(driver, &decisions, now_ms).await {
        Ok(enforcement) => {
            for app_id in enforcement.isolated {
                let reason = match decisions.verdict(&app_id, now_ms) {
                    portcullis_guard::Verdict::Ban { reason, .. } => reason,
                    _ => String::new(),
                };
                progress.alert(&format!(
                    "{app_id} banned by the guard ({reason}); its container was disconnected from its network"
                ));
            }
            for app_id in enforcement.reconnected {
                progress.step(&format!("{app_id}'s ban ended; its container was reconnected"));
            }
        }
        Err(error) => tracing::warn!(%error, "cannot apply the decisions; retrying"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_binaries_are_told_apart() {
        let me = std::env::current_exe().unwrap();
        assert_eq!(is_static_elf(&me).unwrap(), cfg!(target_feature = "crt-static"));

        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("script");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        let error = is_static_elf(&text).unwrap_err().to_string();
        assert!(error.contains("is not a 64-bit little-endian ELF"), "{error}");
    }
}
