//! Shared set-up of the Docker tests: a per-test platform instance with its
//! own label, subnet pool, UID range, store and CA, and images built FROM
//! scratch with Debian's static busybox.
//!
//! Every object a test creates carries `io.portcullis.test=<run id>` and is
//! removed by that label when the test ends, also when it fails.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::query_parameters::{ListContainersOptions, ListImagesOptions, RemoveContainerOptions, RemoveImageOptions};
use futures_util::StreamExt;
use portcullis_config::{Hardening, Seccomp};
use portcullis_identity::{Lifetimes, PlatformCa, TrustDomain};
use portcullis_runtime::deploy::{DeployRequest, deploy_app};
use portcullis_runtime::docker::{
    AppContainer, DockerDriver, DockerOptions, ImageContext, PlatformContainerSpec, build_image,
};
use portcullis_runtime::labels::Role;
use portcullis_runtime::manifest::Manifest;
use portcullis_runtime::profile::Relaxation;
use portcullis_store::Store;

/// The label every test object carries; its value is the test's run id.
pub const TEST_LABEL: &str = "io.portcullis.test";

/// Leftovers of earlier runs older than this are removed at start.
const LEFTOVER_AGE: Duration = Duration::from_secs(20 * 60);

/// Port of the app stand-ins (busybox httpd).
pub const APP_PORT: u16 = 8080;

static NEXT_POOL: AtomicU32 = AtomicU32::new(0);

/// One test's platform instance.
pub struct TestEnv {
    pub run_id: String,
    pub driver: DockerDriver,
    pub store: Store,
    pub ca: PlatformCa,
    pub hardening: Hardening,
    pub apps_dir: PathBuf,
    pub busybox_image: String,
    _dir: tempfile::TempDir,
    _cleanup: Cleanup,
}

/// Returns a Docker client, or `None` (with a message) when the Engine is
/// unreachable outside CI. Under CI (`CI` set) an unreachable Engine fails
/// the test.
pub async fn docker_or_skip(test: &str) -> Option<Docker> {
    let result = async {
        let docker = Docker::connect_with_local_defaults()?.negotiate_version().await?;
        docker.ping().await?;
        Ok::<_, bollard::errors::Error>(docker)
    }
    .await;
    match result {
        Ok(docker) => Some(docker),
        Err(error) if std::env::var_os("CI").is_some() => {
            panic!("{test}: the Docker Engine is unreachable under CI: {error}")
        }
        Err(error) => {
            eprintln!("{test}: skipped: the Docker Engine is unreachable: {error}");
            None
        }
    }
}

/// A hardening profile small enough for tests.
pub fn test_hardening(uid_base: u32) -> Hardening {
    Hardening {
        memory_mib: 64,
        cpus: 0.5,
        pids: 64,
        nofile: 256,
        nproc: 64,
        sigpending: 32,
        tmpfs_mib: 8,
        read_only_root: true,
        seccomp: Seccomp::Default,
        log_max_mib: 1,
        log_max_files: 2,
        restart_max: 2,
        uid_base,
    }
}

impl TestEnv {
    /// Sets up a fresh instance, or returns `None` when Docker is
    /// unreachable outside CI.
    pub async fn start(test: &str) -> Option<Self> {
        let docker = docker_or_skip(test).await?;
        remove_leftovers(&docker).await;

        let run_id = format!("{:08x}", rand_u32());
        let mut driver = None;
        let start = rand_u32() % 64;
        for attempt in 0..16 {
            let index = (start + NEXT_POOL.fetch_add(1, Ordering::Relaxed) + attempt) % 64;
            let options = DockerOptions {
                instance: format!("t{run_id}"),
                subnet_pool: format!("10.214.{}.0/22", index * 4).parse().unwrap(),
                gateway_port: 8443,
                proxy_port: 3128,
                platform_names: None,
                extra_labels: HashMap::from([(TEST_LABEL.to_owned(), run_id.clone())]),
            };
            let candidate = DockerDriver::connect(options).await.expect("connect to Docker");
            match candidate.ensure_platform_networks().await {
                Ok(()) => {
                    driver = Some((candidate, index));
                    break;
                }
                Err(error) => {
                    eprintln!("{test}: subnet pool busy ({error}); trying another");
                    candidate.remove_everything().await.ok();
                }
            }
        }
        let (driver, pool_index) = driver.expect("a free /22 in 10.214.0.0/16 for the test");
        let cleanup = Cleanup { run_id: run_id.clone() };

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await.unwrap();
        let ca_dir = dir.path().join("ca");
        portcullis_identity::init_ca(&ca_dir, &TrustDomain::parse("test.example").unwrap(), false).unwrap();
        let ca = PlatformCa::load(&ca_dir).unwrap();
        let apps_dir = dir.path().join("apps");

        let busybox_image = format!("portcullis-test-{run_id}/busybox:1");
        build_image(&driver, &busybox_image, Role::App, &busybox_context().unwrap())
            .await
            .expect("build busybox image");

        Some(Self {
            run_id,
            driver,
            store,
            ca,
            hardening: test_hardening(400_000 + pool_index * 1000),
            apps_dir,
            busybox_image,
            _dir: dir,
            _cleanup: cleanup,
        })
    }

    /// Starts busybox httpd stand-ins for the gateway (8443) and the egress
    /// proxy (3128).
    pub async fn start_gateway_and_proxy(&self) {
        for (role, port) in [(Role::Gateway, 8443), (Role::Egress, 3128)] {
            let spec = PlatformContainerSpec {
                role: Some(role),
                service_name: None,
                image: self.busybox_image.clone(),
                command: httpd(port),
                env: Vec::new(),
                ..Default::default()
            };
            self.driver.start_platform_container(&spec).await.expect("start stand-in");
        }
    }

    /// Deploys a busybox app running `command` (httpd on 8080 when empty).
    pub async fn deploy(&self, app_id: &str, command: &[&str], relaxations: &[Relaxation]) -> AppContainer {
        self.deploy_image(app_id, &self.busybox_image, command, relaxations).await
    }

    /// Deploys `image` as app `app_id`.
    pub async fn deploy_image(
        &self,
        app_id: &str,
        image: &str,
        command: &[&str],
        relaxations: &[Relaxation],
    ) -> AppContainer {
        let command: Vec<String> =
            if command.is_empty() { httpd(APP_PORT) } else { command.iter().map(|s| (*s).to_owned()).collect() };
        let manifest = Manifest::parse(
            Path::new("test.toml"),
            &format!("id = {app_id:?}\nimage = {image:?}\ncommand = {command:?}\nport = {APP_PORT}\n"),
        )
        .unwrap();
        let request = DeployRequest {
            manifest: &manifest,
            hardening: &self.hardening,
            relaxations,
            proxy_secret: "test-secret",
            apps_dir: &self.apps_dir,
        };
        deploy_app(&self.driver, &self.store, &self.ca, &Lifetimes::default(), request).await.expect("deploy app")
    }
}

/// `httpd -f -p PORT -h /www`: busybox's web server in the foreground.
pub fn httpd(port: u16) -> Vec<String> {
    ["/bin/httpd", "-f", "-p", &port.to_string(), "-h", "/www"].iter().map(|s| (*s).to_owned()).collect()
}

/// A FROM-scratch image with Debian's static busybox, its applets as
/// symlinks, a page at /www/index.html and a setuid-root copy of busybox at
/// /bin/busybox-suid for the privilege escalation attack (busybox runs the
/// applet named by its first argument when its own name starts with
/// "busybox").
pub fn busybox_context() -> std::io::Result<ImageContext> {
    let busybox = std::fs::read("/bin/busybox")
        .map_err(|e| std::io::Error::new(e.kind(), format!("/bin/busybox: {e}; apt-get install busybox-static")))?;
    let applets = std::process::Command::new("/bin/busybox").arg("--list").output()?;
    let mut context = ImageContext::new()
        .file("/bin/busybox", busybox.clone(), 0o755)
        .file("/bin/busybox-suid", busybox, 0o755)
        .file("/www/index.html", b"ok\n".to_vec(), 0o644)
        .file("/etc/passwd", b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n".to_vec(), 0o644);
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        if applet != "busybox" {
            context = context.symlink(&format!("/bin/{applet}"), "/bin/busybox");
        }
    }
    // The build context's setuid bit does not survive COPY, so it is set in
    // a build step.
    Ok(context.run(&["/bin/busybox", "chmod", "4755", "/bin/busybox-suid"]).command(&["/bin/sh"]))
}

/// Output and exit code of a command run in a container.
#[derive(Debug)]
pub struct ExecOutput {
    pub code: i64,
    pub output: String,
}

/// Runs `command` in `container` (as the container's user) and waits at most
/// `timeout`.
pub async fn exec(docker: &Docker, container: &str, command: &[&str], timeout: Duration) -> ExecOutput {
    let options = CreateExecOptions {
        cmd: Some(command.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let exec = docker.create_exec(container, options).await.expect("create exec");
    let mut output = String::new();
    let run = async {
        if let StartExecResults::Attached { output: mut stream, .. } = docker.start_exec(&exec.id, None).await.unwrap()
        {
            while let Some(Ok(chunk)) = stream.next().await {
                output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        }
    };
    let timed_out = tokio::time::timeout(timeout, run).await.is_err();
    let inspect = docker.inspect_exec(&exec.id).await.expect("inspect exec");
    let code = if timed_out { -1 } else { inspect.exit_code.unwrap_or(-1) };
    ExecOutput { code, output }
}

/// Returns whether `wget` inside `container` gets an answer from `url`
/// within 3 seconds. The app's proxy variables are ignored (`-Y off`), so
/// the connection goes straight to `url`. The time limit comes from
/// busybox `timeout`, because Debian's busybox 1.35 `wget -T` crashes with
/// a segmentation fault.
pub async fn can_fetch(docker: &Docker, container: &str, url: &str) -> bool {
    let command = ["timeout", "3", "wget", "-Y", "off", "-q", "-O", "-", url];
    exec(docker, container, &command, Duration::from_secs(6)).await.code == 0
}

/// Removes every container, network and image of the run on drop, from a
/// thread of its own so it also runs when the test panics.
struct Cleanup {
    run_id: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let run_id = self.run_id.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let Ok(docker) = Docker::connect_with_local_defaults() else { return };
                let Ok(docker) = docker.negotiate_version().await else { return };
                remove_labelled(&docker, &format!("{TEST_LABEL}={run_id}"), None).await;
            });
        });
        thread.join().ok();
    }
}

/// Removes test objects of earlier runs that are older than 20 minutes, so
/// a crashed run leaves nothing behind for long, while a run in progress in
/// another process is left alone.
async fn remove_leftovers(docker: &Docker) {
    let cutoff = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
        - LEFTOVER_AGE.as_secs() as i64;
    remove_labelled(docker, TEST_LABEL, Some(cutoff)).await;
}

/// Removes containers, then networks, then images with `label` (a key or
/// `key=value`), only those created before `created_before` (Unix seconds)
/// when given.
async fn remove_labelled(docker: &Docker, label: &str, created_before: Option<i64>) {
    let filters = HashMap::from([("label".to_owned(), vec![label.to_owned()])]);
    let old = |created: Option<i64>| created_before.is_none_or(|cutoff| created.is_some_and(|c| c < cutoff));

    let options = ListContainersOptions { all: true, filters: Some(filters.clone()), ..Default::default() };
    for container in docker.list_containers(Some(options)).await.unwrap_or_default() {
        if old(container.created)
            && let Some(id) = container.id
        {
            let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            docker.remove_container(&id, Some(options)).await.ok();
        }
    }

    let options = bollard::query_parameters::ListNetworksOptions { filters: Some(filters.clone()) };
    for network in docker.list_networks(Some(options)).await.unwrap_or_default() {
        let created = network.created.as_ref().and_then(|c| c.parse::<TimeStamp>().ok()).map(|t| t.0);
        if old(created)
            && let Some(id) = network.id
        {
            docker.remove_network(&id).await.ok();
        }
    }

    let options = ListImagesOptions { all: true, filters: Some(filters), ..Default::default() };
    for image in docker.list_images(Some(options)).await.unwrap_or_default() {
        if old(Some(image.created)) {
            let options = RemoveImageOptions { force: true, ..Default::default() };
            docker.remove_image(&image.id, Some(options), None).await.ok();
        }
    }
}

/// A Docker RFC 3339 time parsed to Unix seconds, ignoring the fraction.
struct TimeStamp(i64);

impl std::str::FromStr for TimeStamp {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let date = text.get(0..10).ok_or(())?;
        let time = text.get(11..19).ok_or(())?;
        let mut parts = date.split('-').map(|p| p.parse::<i64>());
        let (y, m, d) = (
            parts.next().ok_or(())?.map_err(|_| ())?,
            parts.next().ok_or(())?.map_err(|_| ())?,
            parts.next().ok_or(())?.map_err(|_| ())?,
        );
        let mut clock = time.split(':').map(|p| p.parse::<i64>());
        let (h, min, s) = (
            clock.next().ok_or(())?.map_err(|_| ())?,
            clock.next().ok_or(())?.map_err(|_| ())?,
            clock.next().ok_or(())?.map_err(|_| ())?,
        );
        // Days from the civil date (proleptic Gregorian), UTC.
        let (y, m) = if m <= 2 { (y - 1, m + 12) } else { (y, m) };
        let days = 365 * y + y / 4 - y / 100 + y / 400 + (153 * (m - 3) + 2) / 5 + d - 719_469;
        Ok(Self(days * 86_400 + h * 3600 + min * 60 + s))
    }
}

/// A random number from the standard library's randomly seeded hasher.
pub fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    hasher.finish() as u32
}

/// Environment lines of a container as a map.
pub fn env_map(env: &[String]) -> BTreeMap<String, String> {
    env.iter().filter_map(|line| line.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}
