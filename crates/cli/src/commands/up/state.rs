//! What a running `portcullis up` started, recorded in
//! `<data-dir>/up/state.json` so that `portcullis down` can stop exactly
//! those processes and remove exactly those files.
//!
//! Every process `up` starts has `PORTCULLIS_UP_RUN=<run id>` in its
//! environment. `down` signals a recorded PID only while its environment
//! still contains that marker, so a PID reused by an unrelated process after a
//! crash is left alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The environment variable that marks processes started by one `up` run.
pub const RUN_MARKER: &str = "PORTCULLIS_UP_RUN";

/// Prefix of the run directory's name under the system's temporary directory.
pub const RUN_DIR_PREFIX: &str = "portcullis-up-";

/// One started process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    /// `service`, `host` or `app`.
    pub role: String,
    /// The service name, host name or app id.
    pub name: String,
    /// The process id.
    pub pid: u32,
}

/// The state of one `up` run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpState {
    /// The run id, also the value of [`RUN_MARKER`].
    pub run_id: String,
    /// The PID of the `portcullis up` process.
    pub up_pid: u32,
    /// The run directory with the apps' credentials and binaries.
    pub run_dir: PathBuf,
    /// Processes started so far.
    pub processes: Vec<Recorded>,
    /// With the Docker driver: the instance label of every object started.
    #[serde(default)]
    pub docker_instance: Option<String>,
}

/// `<data-dir>/up`.
pub fn up_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("up")
}

fn state_path(data_dir: &Path) -> PathBuf {
    up_dir(data_dir).join("state.json")
}

impl UpState {
    /// Reads the state file, or `None` when there is none.
    pub fn read(data_dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = state_path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is not a valid state file; remove it after stopping what it lists", path.display())
            })?)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the state file (replacing it atomically).
    pub fn write(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = state_path(data_dir);
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        std::fs::rename(&temporary, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Removes the state file.
    pub fn remove(data_dir: &Path) {
        let path = state_path(data_dir);
        if let Err(error) = std::fs::remove_file(&path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), %error, "cannot remove the up state file");
        }
    }

    /// Returns whether the recorded `portcullis up` process is still running.
    pub fn up_running(&self) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", self.up_pid)) else { return false };
        cmdline.split(|b| *b == 0).any(|arg| arg == b"up")
    }

    /// Returns whether `pid` is a process of this run (its environment contains the marker).
    pub fn is_ours(&self, pid: u32) -> bool {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
        let marker = format!("{RUN_MARKER}={}", self.run_id);
        environ.split(|b| *b == 0).any(|entry| entry == marker.as_bytes())
    }
}

fn docker_instance_path(data_dir: &Path) -> PathBuf {
    up_dir(data_dir).join("docker-instance")
}

/// Records the Docker instance of a run in `<data-dir>/up/docker-instance`.
/// The record outlives the run, because the images it built stay for the
/// next one until `down` removes them.
pub fn record_docker_instance(data_dir: &Path, instance: &str) -> anyhow::Result<()> {
    let path = docker_instance_path(data_dir);
    std::fs::write(&path, instance).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads the Docker instance recorded by [`record_docker_instance`], if any.
pub fn docker_instance(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(docker_instance_path(data_dir)).ok()?;
    Some(text.trim().to_owned()).filter(|instance| !instance.is_empty())
}

/// Removes the record of [`record_docker_instance`].
pub fn forget_docker_instance(data_dir: &Path) {
    let _ = std::fs::remove_file(docker_instance_path(data_dir));
}

/// Removes the run directory if it is one `up` created: directly under the
/// system's temporary directory with the [`RUN_DIR_PREFIX`] name.
pub fn remove_run_dir(run_dir: &Path) {
    let ours = run_dir.parent() == Some(std::env::temp_dir().as_path())
        && run_dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(RUN_DIR_PREFIX));
    if !ours {
        tracing::warn!(dir = %run_dir.display(), "not removing a run directory that up did not create");
        return;
    }
    // Credentials directories are read-only (0500); without root their
    // files can be removed only after the directory is writable again.
    if let Ok(apps) = std::fs::read_dir(run_dir.join("apps")) {
        use std::os::unix::fs::PermissionsExt;
        for app in apps.flatten() {
            let _ = std::fs::set_permissions(app.path().join("credentials"), std::fs::Permissions::from_mode(0o700));
        }
    }
    if let Err(error) = std::fs::remove_dir_all(run_dir)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %run_dir.display(), %error, "cannot remove the run directory");
    }
}

/// Sends `signal` (such as `TERM` or `KILL`) to `pid` with util-linux's or
/// procps' `kill`.
pub fn signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Waits until `check` is false or `limit` passes; returns whether it became false.
pub fn wait_until_gone(limit: Duration, check: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while check() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// Stops what `state` records: the `up` process first (it stops its own
/// children), then every recorded process still marked as this run's,
/// with SIGTERM and after 5 s SIGKILL. Removes the run directory and the
/// state file. Returns one line per action for the operator.
pub fn stop_recorded(state: &UpState, data_dir: &Path) -> Vec<String> {
    let mut done = Vec::new();
    if state.up_running() && state.up_pid != std::process::id() {
        signal(state.up_pid, "TERM");
        if wait_until_gone(Duration::from_secs(60), || state.up_running()) {
            done.push(format!("stopped portcullis up (pid {})", state.up_pid));
        } else {
            done.push(format!("portcullis up (pid {}) did not stop within 60 s of SIGTERM", state.up_pid));
        }
    }
    for process in &state.processes {
        if !state.is_ours(process.pid) {
            continue;
        }
        signal(process.pid, "TERM");
        if !wait_until_gone(Duration::from_secs(5), || state.is_ours(process.pid)) {
            signal(process.pid, "KILL");
            wait_until_gone(Duration::from_secs(5), || state.is_ours(process.pid));
        }
        done.push(format!("stopped {} {} (pid {})", process.role, process.name, process.pid));
    }
    if state.run_dir.exists() {
        remove_run_dir(&state.run_dir);
        done.push(format!("removed {}", state.run_dir.display()));
    }
    UpState::remove(data_dir);
    done
}
