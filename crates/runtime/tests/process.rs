//! The process driver: an app process gets exactly the limits, identity and
//! environment of its profile, and the driver starts, lists, stops and
//! reads the logs of its apps. Runs without Docker; the UID, group and
//! capability checks need root and are left out otherwise.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use portcullis_runtime::RuntimeError;
use portcullis_runtime::process::ProcessDriver;
use portcullis_runtime::profile::HardeningProfile;

/// A UID that no account on a test machine uses.
const APP_UID: u32 = 310_417;

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
}

/// Waits until the app's process has exited and returns its log.
async fn finished_log(driver: &ProcessDriver, app_id: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while driver.list().await.iter().any(|app| app.app_id == app_id && app.running) {
        assert!(Instant::now() < deadline, "{app_id} still runs after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    driver.logs(app_id, None).await.unwrap()
}

/// Returns the value after `name=` in the probe's output.
fn value<'a>(log: &'a [String], name: &str) -> &'a str {
    let prefix = format!("{name}=");
    log.iter()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("the probe printed no {name}: {log:?}"))
}

#[tokio::test]
async fn process_gets_profile_limits() {
    let dir = tempfile::tempdir().unwrap();
    let driver = ProcessDriver::new(dir.path());
    let hardening = common::test_hardening(300_000);
    let profile = HardeningProfile::new("probe", &hardening, APP_UID, false);
    let env = BTreeMap::from([("PROBE_VARIABLE".to_owned(), "set".to_owned())]);

    // bash's ulimit: -n open files, -u processes, -i pending signals,
    // -v address space in KiB, -c core file size in blocks.
    let script = "echo nofile=$(ulimit -n); echo nproc=$(ulimit -u); echo sigpending=$(ulimit -i); \
                  echo address_space_kib=$(ulimit -v); echo core=$(ulimit -c); \
                  echo uid=$(id -u); echo gid=$(id -g); echo groups=$(id -G); \
                  echo no_new_privs=$(awk '/^NoNewPrivs/ {print $2}' /proc/self/status); \
                  echo cap_bounding=$(awk '/^CapBnd/ {print $2}' /proc/self/status); \
                  echo cap_effective=$(awk '/^CapEff/ {print $2}' /proc/self/status); \
                  echo probe_variable=${PROBE_VARIABLE:-missing}; \
                  echo cargo_variable=${CARGO_MANIFEST_DIR:-missing}; echo cwd=$(pwd)";
    let program = ["/bin/bash".to_owned(), "-c".to_owned(), script.to_owned()];
    let pid = driver.start("probe", &program, &env, &profile).await.unwrap();
    assert!(pid > 0);
    let log = finished_log(&driver, "probe").await;

    assert_eq!(value(&log, "nofile"), hardening.nofile.to_string());
    assert_eq!(value(&log, "nproc"), hardening.nproc.to_string());
    assert_eq!(value(&log, "sigpending"), hardening.sigpending.to_string());
    assert_eq!(value(&log, "address_space_kib"), (hardening.memory_mib * 1024).to_string());
    assert_eq!(value(&log, "core"), "0");
    assert_eq!(value(&log, "probe_variable"), "set");
    assert_eq!(value(&log, "cargo_variable"), "missing", "the app inherited the platform's environment");
    assert_eq!(value(&log, "cwd"), "/");

    if running_as_root() {
        assert_eq!(value(&log, "uid"), APP_UID.to_string());
        assert_eq!(value(&log, "gid"), APP_UID.to_string());
        assert_eq!(value(&log, "groups"), APP_UID.to_string(), "supplementary groups were not cleared");
        assert_eq!(value(&log, "no_new_privs"), "1");
        assert_eq!(value(&log, "cap_bounding"), "0000000000000000");
        assert_eq!(value(&log, "cap_effective"), "0000000000000000");
    } else {
        eprintln!("not root: the UID, group and capability checks are left out");
    }
}

#[tokio::test]
async fn process_driver_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let driver = ProcessDriver::new(dir.path());
    let profile = HardeningProfile::new("sleeper", &common::test_hardening(300_000), APP_UID, false);
    let program = ["/bin/sh".to_owned(), "-c".to_owned(), "echo started; exec sleep 30".to_owned()];

    let pid = driver.start("sleeper", &program, &BTreeMap::new(), &profile).await.unwrap();
    let listed = driver.list().await;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].app_id.as_str(), listed[0].pid, listed[0].running), ("sleeper", pid, true));
    assert_eq!(listed[0].log_file, dir.path().join("sleeper.log"));

    // A second start of a running app is refused and names the process.
    let error = driver.start("sleeper", &program, &BTreeMap::new(), &profile).await.unwrap_err();
    assert!(matches!(error, RuntimeError::AlreadyDeployed { .. }), "{error}");
    assert!(error.to_string().contains(&format!("pid {pid}")), "{error}");

    let deadline = Instant::now() + Duration::from_secs(5);
    while driver.logs("sleeper", None).await.unwrap() != ["started"] {
        assert!(Instant::now() < deadline, "no output from the app");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert!(driver.stop("sleeper").await.unwrap());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} still exists after stop");
    assert!(driver.list().await.is_empty());
    assert!(!driver.stop("sleeper").await.unwrap(), "a second stop found the app");

    let error = driver.stats("sleeper").await.unwrap_err().to_string();
    assert!(error.contains("runtime.driver = \"docker\""), "{error}");
    let error = driver.logs("never-started", None).await.unwrap_err().to_string();
    assert!(error.contains("never-started.log"), "{error}");
}
