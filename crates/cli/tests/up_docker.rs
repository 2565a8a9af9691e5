//! `portcullis up` runs the weather example on the Docker driver: the
//! gateway and egress proxy run as containers built from a static
//! portcullis binary, the services and apps as containers on their own
//! networks. The well-behaved app keeps working, the misbehaving one is
//! banned and its container disconnected, the `app` commands see and
//! manage the containers, and `down` leaves nothing with the run's label.
//!
//! The static binaries come from `PORTCULLIS_STATIC_BIN_DIR` (set by
//! scripts/test) or are built here with scripts/build-static.

mod common;

use common::{free_ports, outcomes_in as outcomes, portcullis, replaced};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PLATFORM: &str = include_str!("../../../examples/weather-platform/platform.toml");
const EXAMPLE: &str = include_str!("../../../examples/weather-platform/example.toml");

/// Maximum wait for the platform to come up and the misbehaving app's ban.
const BAN_TIMEOUT: Duration = Duration::from_secs(180);

/// The label every Docker object of one `up` instance carries.
const INSTANCE_LABEL: &str = "io.portcullis.instance";

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("run the docker command")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Lists the ids of every object of `kind` (container, network, volume, image)
/// labelled with `instance`.
fn labelled(kind: &str, instance: &str) -> Vec<String> {
    let filter = format!("label={INSTANCE_LABEL}={instance}");
    let output = match kind {
        "container" => docker(&["ps", "-aq", "--filter", &filter]),
        "image" => docker(&["images", "-q", "--filter", &filter]),
        _ => docker(&[kind, "ls", "-q", "--filter", &filter]),
    };
    assert!(output.status.success(), "docker {kind} ls failed: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).split_whitespace().map(str::to_owned).collect()
}

/// Runs `portcullis` with the test's instance in `PORTCULLIS_INSTANCE`.
fn portcullis_in(instance: &str, data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("PORTCULLIS_INSTANCE", instance)
        .env_remove("PORTCULLIS_LOG")
        .env_remove("PORTCULLIS_CONFIG")
        .output()
        .expect("run portcullis")
}

/// The running `portcullis up`. On drop (also when an assertion fails) it
/// is stopped, `portcullis down` runs, and whatever still carries the
/// run's label is removed with the docker command.
struct Up {
    child: Child,
    data: PathBuf,
    config: PathBuf,
    instance: String,
}

impl Drop for Up {
    fn drop(&mut self) {
        common::terminate(&mut self.child, Duration::from_secs(60));
        let _ = portcullis(&self.data, &["down", "--config", self.config.to_str().unwrap()]);
        for id in labelled("container", &self.instance) {
            let _ = docker(&["rm", "-f", &id]);
        }
        for id in labelled("network", &self.instance) {
            let _ = docker(&["network", "rm", &id]);
        }
        for id in labelled("image", &self.instance) {
            let _ = docker(&["rmi", "-f", &id]);
        }
    }
}

/// What both runs of `up` share.
struct UpArgs<'a> {
    data: &'a Path,
    config: &'a Path,
    instance: &'a str,
    pool: &'a str,
    bin_dir: &'a Path,
}

/// Starts `portcullis up` on the Docker driver with its output in
/// `<dir>/<name>.out` and `<dir>/<name>.err`.
fn start_up(args: &UpArgs<'_>, dir: &Path, name: &str) -> Up {
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("--data-dir")
        .arg(args.data)
        .args(["--log-format", "json", "up", "--config", args.config.to_str().unwrap(), "--driver", "docker"])
        .args(["--instance", args.instance, "--subnet-pool", args.pool, "--bin-dir"])
        .arg(args.bin_dir)
        .env_remove("PORTCULLIS_LOG")
        .env_remove("PORTCULLIS_INSTANCE")
        .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Up { child, data: args.data.to_owned(), config: args.config.to_owned(), instance: args.instance.to_owned() }
}

/// Stops `up` with SIGTERM and checks that it exits 0 within 60 s.
fn stop_up(up: &mut Up, log: &dyn Fn() -> String) {
    assert!(Command::new("kill").args(["-TERM", &up.child.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(status) = up.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "up did not stop within 60 s of SIGTERM\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(exit.code(), Some(0), "{}", log());
}

/// Returns the directory of the static binaries.
fn static_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PORTCULLIS_STATIC_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(root.join("scripts/build-static")).current_dir(&root).output().unwrap();
    assert!(output.status.success(), "scripts/build-static failed: {}", text(&output));
    let last = String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or_default().to_owned();
    root.join(last)
}

/// Lists the networks a container is connected to.
fn networks_of(container: &str) -> Vec<String> {
    let output = docker(&["inspect", "--format", "{{json .NetworkSettings.Networks}}", container]);
    assert!(output.status.success(), "docker inspect {container}: {}", text(&output));
    let networks: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    networks.as_object().map(|n| n.keys().cloned().collect()).unwrap_or_default()
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)).unwrap();
    u32::from_le_bytes(bytes)
}

#[test]
fn up_on_docker_bans_rogue_and_serves_forecast() {
    if !docker(&["info", "--format", "{{.ServerVersion}}"]).status.success() {
        assert!(std::env::var_os("CI").is_none(), "the Docker Engine is unreachable under CI");
        eprintln!("skipped: the Docker Engine is unreachable");
        return;
    }
    let bin_dir = static_bin_dir();

    // The example, with the operator API (the one listener on the host) on
    // a free port, and a run-specific instance and address pool.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let operator_port = free_ports(1)[0];
    let platform = replaced(PLATFORM, &[("127.0.0.1:8446", format!("127.0.0.1:{operator_port}"))]);
    let example = replaced(
        EXAMPLE,
        &[(
            "feed.weather.test:9103/forecast\"",
            "feed.weather.test:9103/forecast\", EXAMPLE_INTERVAL_MS = \"300\"".into(),
        )],
    );
    let config = dir.path().join("platform.toml");
    std::fs::write(&config, platform).unwrap();
    std::fs::write(dir.path().join("example.toml"), example).unwrap();
    let config_arg = config.to_str().unwrap().to_owned();
    let instance = format!("t{:08x}", random_u32());
    let pool = format!("10.215.{}.0/22", (random_u32() % 64) * 4);

    let started = Instant::now();
    let up_args = UpArgs { data: &data, config: &config, instance: &instance, pool: &pool, bin_dir: &bin_dir };
    let mut up = start_up(&up_args, dir.path(), "up");
    let up_log = || {
        let out = std::fs::read_to_string(dir.path().join("up.out")).unwrap_or_default();
        let err = std::fs::read_to_string(dir.path().join("up.err")).unwrap_or_default();
        format!("stdout:\n{out}\nstderr:\n{err}")
    };

    // The misbehaving app is banned by the egress policy.
    let rogue_container = format!("pc-{instance}-app-rogue-app");
    let decision = loop {
        if let Some(status) = up.child.try_wait().unwrap() {
            panic!("portcullis up exited early with {status}\n{}", up_log());
        }
        if data.join("portcullis.db").exists() {
            let bans = portcullis(&data, &["ban", "list", "--app", "rogue-app", "--format", "json"]);
            let bans: serde_json::Value = serde_json::from_slice(&bans.stdout).unwrap_or_default();
            if let Some(decision) = bans["decisions"].as_array().and_then(|d| d.first()) {
                break decision.clone();
            }
        }
        assert!(started.elapsed() < BAN_TIMEOUT, "rogue-app was not banned in time\n{}", up_log());
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(decision["kind"], "ban", "{decision}");
    assert_eq!(decision["policy"], "egress-violation", "{decision}");
    assert_eq!(decision["origin"], "guard", "{decision}");

    // Its container is cut off from every network.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !networks_of(&rogue_container).is_empty() {
        assert!(Instant::now() < deadline, "{rogue_container} still connected\n{}", up_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let forecast_container = format!("pc-{instance}-app-forecast-app");
    assert_eq!(networks_of(&forecast_container), vec![format!("pc-{instance}-app-forecast-app")]);

    // The well-behaved app keeps working after the ban, as `app logs` shows.
    let deadline = Instant::now() + Duration::from_secs(60);
    let forecast = loop {
        let logs = portcullis_in(&instance, &data, &["app", "logs", "forecast-app"]);
        assert_eq!(logs.status.code(), Some(0), "{}", text(&logs));
        let lines = outcomes(&String::from_utf8_lossy(&logs.stdout));
        if lines.iter().filter(|o| o["step"] == "feed").count() >= 5 {
            break lines;
        }
        assert!(Instant::now() < deadline, "forecast-app made fewer than 5 rounds\n{}", text(&logs));
        std::thread::sleep(Duration::from_millis(500));
    };
    let unexpected: Vec<_> = forecast.iter().filter(|o| o["expected"] != true).collect();
    assert!(unexpected.is_empty(), "forecast-app outcomes not as expected: {unexpected:?}");
    assert!(forecast.iter().any(|o| o["step"] == "record-read" && o["status"] == 200), "{forecast:?}");
    assert!(forecast.iter().any(|o| o["step"] == "feed" && o["status"] == 200), "{forecast:?}");

    // The operator sees both apps through the forwarded operator API.
    let status = portcullis(&data, &["status", "--config", &config_arg, "--format", "json"]);
    assert_eq!(status.status.code(), Some(0), "{}\n{}", text(&status), up_log());
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let app = |id: &str| status["apps"].as_array().unwrap().iter().find(|a| a["app_id"] == id).cloned();
    let forecast_status = app("forecast-app").unwrap_or_else(|| panic!("forecast-app missing: {status}"));
    let rogue_status = app("rogue-app").unwrap_or_else(|| panic!("rogue-app missing: {status}"));
    assert!(forecast_status["decision"].is_null(), "{forecast_status}");
    assert!(forecast_status["stats"]["services"]["weather"]["outcomes"]["2xx"].as_u64() > Some(0), "{forecast_status}");
    assert_eq!(rogue_status["decision"]["kind"], "ban", "{rogue_status}");
    // The egress container reported the refusal to the gateway container's guard.
    assert!(rogue_status["stats"]["egress_violations"].as_u64() >= Some(1), "{rogue_status}");
    assert!(!rogue_status["decision"]["reason"].as_str().unwrap_or_default().is_empty(), "{rogue_status}");

    // The egress proxy rejected the forbidden host and allowed the feed,
    // and the access log contains the gateway requests.
    let rogue_logs = portcullis_in(&instance, &data, &["app", "logs", "rogue-app"]);
    let rogue = outcomes(&String::from_utf8_lossy(&rogue_logs.stdout));
    common::assert_example_events(&data, &forecast, &rogue);

    // The app commands on the running containers.
    let list = portcullis_in(&instance, &data, &["app", "list", "--format", "json"]);
    assert_eq!(list.status.code(), Some(0), "{}", text(&list));
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.contains("forecast-app"), "{listed}");
    assert!(listed.contains("rogue-app"), "{listed}");
    let stats = portcullis_in(&instance, &data, &["app", "stats", "forecast-app", "--format", "json"]);
    assert_eq!(stats.status.code(), Some(0), "{}", text(&stats));
    let stats: serde_json::Value = serde_json::from_slice::<serde_json::Value>(&stats.stdout).unwrap()["stats"].clone();
    assert_eq!(stats["memory_limit_bytes"], 256 * 1024 * 1024, "{stats}");
    assert_eq!(stats["pids_limit"], 128, "{stats}");
    let stop = portcullis_in(&instance, &data, &["app", "stop", "rogue-app"]);
    assert_eq!(stop.status.code(), Some(0), "{}", text(&stop));
    let state = docker(&["inspect", "--format", "{{.State.Status}}", &rogue_container]);
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "exited");
    let rm = portcullis_in(&instance, &data, &["app", "rm", "rogue-app"]);
    assert_eq!(rm.status.code(), Some(0), "{}", text(&rm));
    assert!(!docker(&["inspect", &rogue_container]).status.success(), "{rogue_container} still exists");

    // A redeployed banned app is cut off again by the running platform.
    let manifest = dir.path().join("rogue.toml");
    std::fs::write(
        &manifest,
        format!(
            "id = \"rogue-app\"\nimage = \"pc-{instance}/examples:latest\"\ncommand = [\"/bin/rogue-app\"]\n\
             [env]\nFORBIDDEN_URL = \"http://exfil.forbidden.test:443/upload\"\n"
        ),
    )
    .unwrap();
    let deploy = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("--data-dir")
        .arg(&data)
        .args(["app", "deploy", manifest.to_str().unwrap(), "--config", &config_arg])
        .env("PORTCULLIS_INSTANCE", &instance)
        .env("PORTCULLIS_PROXY_SECRET", "not-the-registered-secret")
        .env_remove("PORTCULLIS_CONFIG")
        .output()
        .unwrap();
    assert_eq!(deploy.status.code(), Some(0), "{}", text(&deploy));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !networks_of(&rogue_container).is_empty() {
        assert!(Instant::now() < deadline, "the redeployed {rogue_container} was not cut off\n{}", up_log());
        std::thread::sleep(Duration::from_millis(200));
    }

    // SIGTERM: up removes the containers and networks it started.
    stop_up(&mut up, &up_log);
    assert_eq!(labelled("container", &instance), Vec::<String>::new());
    assert_eq!(labelled("network", &instance), Vec::<String>::new());
    assert!(!labelled("image", &instance).is_empty(), "the images should stay for the next run");

    // A second run reuses the CA and the stored ban: rogue-app is cut off
    // as soon as it is deployed, and forecast-app works again.
    let mut second = start_up(&up_args, dir.path(), "up2");
    let second_log = || std::fs::read_to_string(dir.path().join("up2.err")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(120);
    let forecast_again = loop {
        let logs = portcullis_in(&instance, &data, &["app", "logs", "forecast-app"]);
        let lines = outcomes(&String::from_utf8_lossy(&logs.stdout));
        if lines.iter().any(|o| o["step"] == "feed") {
            break lines;
        }
        assert!(second.child.try_wait().unwrap().is_none(), "the second up exited\n{}", second_log());
        assert!(Instant::now() < deadline, "forecast-app did not work in the second run\n{}", second_log());
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(forecast_again.iter().all(|o| o["expected"] == true), "{forecast_again:?}");
    assert!(second_log().contains("reusing the platform CA"), "{}", second_log());
    // forecast-app may work before rogue-app is deployed. Once it is, the
    // stored ban cuts it off right after its deploy, and it stays cut off.
    // The gateway and egress proxy reject its requests in any case.
    while !second_log().contains("deployed rogue-app") {
        assert!(Instant::now() < deadline, "rogue-app was not deployed in the second run\n{}", second_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let cut_off_by = Instant::now() + Duration::from_secs(5);
    while !networks_of(&rogue_container).is_empty() {
        assert!(Instant::now() < cut_off_by, "rogue-app is connected in the second run\n{}", second_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(networks_of(&rogue_container).is_empty(), "rogue-app was reconnected in the second run");
    let bans = portcullis(&data, &["ban", "list", "--app", "rogue-app", "--format", "json"]);
    let bans: serde_json::Value = serde_json::from_slice(&bans.stdout).unwrap();
    assert_eq!(bans["decisions"].as_array().map(Vec::len), Some(1), "the stored ban was not reused: {bans}");
    stop_up(&mut second, &second_log);

    // down removes the images too; nothing with the label is left.
    let down = portcullis(&data, &["down", "--config", &config_arg]);
    assert_eq!(down.status.code(), Some(0), "{}", text(&down));
    for kind in ["container", "network", "volume", "image"] {
        assert_eq!(labelled(kind, &instance), Vec::<String>::new(), "{kind}s left after down");
    }
}
