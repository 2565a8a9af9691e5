//! The process driver: apps as child processes, for machines without Docker.
//!
//! Limits are set by util-linux's `prlimit` wrapping the app's command, and,
//! when Portcullis runs as root, util-linux's `setpriv` switches to the app's
//! UID and GID, clears supplementary groups, sets `no_new_privs` and drops
//! every capability. Both are separate programs, so the workspace needs no
//! unsafe `pre_exec` code.
//!
//! NOTE: this is much weaker isolation than the Docker driver. Apps share the
//! host's filesystem, network, PID and IPC namespaces; there is no seccomp
//! filter, no CPU quota and no read-only root, and the memory limit is on
//! virtual address space (`RLIMIT_AS`), not resident memory. Use it for
//! development only.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::error::RuntimeError;
use crate::profile::{HardeningProfile, MIB};

/// One app started by the process driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessApp {
    /// The app id.
    pub app_id: String,
    /// The process id of the wrapper (`setpriv` or `prlimit`), which the app
    /// replaces by exec.
    pub pid: u32,
    /// Whether the process is still running.
    pub running: bool,
    /// File with the app's standard output and error.
    pub log_file: PathBuf,
}

/// Runs apps as child processes of the platform. Apps live only as long as
/// this driver: they are killed when it is dropped, and a restarted platform
/// does not find them again.
#[derive(Debug)]
pub struct ProcessDriver {
    logs_dir: PathBuf,
    as_root: bool,
    children: Mutex<HashMap<String, (Child, PathBuf)>>,
}

impl ProcessDriver {
    /// Creates the driver, writing app logs under `logs_dir`. Logs a warning
    /// that isolation is weaker than with Docker.
    pub fn new(logs_dir: &Path) -> Self {
        let as_root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false);
        tracing::warn!(
            as_root,
            "PROCESS DRIVER: apps run as plain child processes with rlimits only. They share the host's filesystem, \
             network and process namespaces, with no seccomp filter and no CPU quota. Do not run untrusted apps \
             this way; use runtime.driver = \"docker\""
        );
        Self { logs_dir: logs_dir.to_owned(), as_root, children: Mutex::new(HashMap::new()) }
    }

    /// The full command line that starts `program` under `profile`:
    /// `setpriv` (when running as root) then `prlimit` then the program.
    pub fn command_line(&self, profile: &HardeningProfile, program: &[String]) -> Vec<String> {
        let mut line = Vec::new();
        if self.as_root {
            line.extend([
                "setpriv".to_owned(),
                format!("--reuid={}", profile.uid),
                format!("--regid={}", profile.uid),
                "--clear-groups".to_owned(),
                "--no-new-privs".to_owned(),
                "--inh-caps=-all".to_owned(),
                "--bounding-set=-all".to_owned(),
                "--".to_owned(),
            ]);
        }
        line.extend([
            "prlimit".to_owned(),
            format!("--nproc={}", profile.nproc),
            format!("--nofile={}", profile.nofile),
            format!("--sigpending={}", profile.sigpending),
            format!("--as={}", profile.memory_mib * MIB),
            "--core=0".to_owned(),
            "--".to_owned(),
        ]);
        line.extend(program.iter().cloned());
        line
    }

    /// Starts `program` for the app with exactly the environment `env` and
    /// its output appended to `<logs_dir>/<app_id>.log`. Returns the pid.
    #[tracing::instrument(skip(self, program, env, profile))]
    pub async fn start(
        &self,
        app_id: &str,
        program: &[String],
        env: &BTreeMap<String, String>,
        profile: &HardeningProfile,
    ) -> Result<u32, RuntimeError> {
        let mut children = self.children.lock().await;
        if let Some((child, _)) = children.get_mut(app_id)
            && matches!(child.try_wait(), Ok(None))
        {
            return Err(RuntimeError::AlreadyDeployed {
                app_id: app_id.to_owned(),
                container_id: format!("pid {}", child.id().unwrap_or(0)),
            });
        }

        std::fs::create_dir_all(&self.logs_dir).map_err(|e| RuntimeError::io(app_id, "create", &self.logs_dir, e))?;
        let log_file = self.logs_dir.join(format!("{app_id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .map_err(|e| RuntimeError::io(app_id, "open", &log_file, e))?;
        let log_err = log.try_clone().map_err(|e| RuntimeError::io(app_id, "open", &log_file, e))?;

        let line = self.command_line(profile, program);
        let child = Command::new(&line[0])
            .args(&line[1..])
            .env_clear()
            .envs(env)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RuntimeError::io(app_id, "start (is util-linux installed?)", &line[0], e))?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(pid, uid = profile.uid, as_root = self.as_root, "app process started");
        children.insert(app_id.to_owned(), (child, log_file));
        Ok(pid)
    }

    /// Kills the app's process and waits for it. Returns false if the app was
    /// not started by this driver.
    pub async fn stop(&self, app_id: &str) -> Result<bool, RuntimeError> {
        let mut children = self.children.lock().await;
        let Some((mut child, _)) = children.remove(app_id) else { return Ok(false) };
        if let Err(error) = child.kill().await {
            tracing::warn!(app_id, %error, "cannot kill the app process; it may have exited already");
        }
        tracing::info!(app_id, "app process stopped");
        Ok(true)
    }

    /// Lists the apps started by this driver.
    pub async fn list(&self) -> Vec<ProcessApp> {
        let mut children = self.children.lock().await;
        let mut apps: Vec<ProcessApp> = children
            .iter_mut()
            .map(|(app_id, (child, log_file))| ProcessApp {
                app_id: app_id.clone(),
                pid: child.id().unwrap_or(0),
                running: matches!(child.try_wait(), Ok(None)),
                log_file: log_file.clone(),
            })
            .collect();
        apps.sort_by(|a, b| a.app_id.cmp(&b.app_id));
        apps
    }

    /// Returns the last `tail` lines of the app's log (all when `None`).
    pub async fn logs(&self, app_id: &str, tail: Option<usize>) -> Result<Vec<String>, RuntimeError> {
        let log_file = self.logs_dir.join(format!("{app_id}.log"));
        let text = std::fs::read_to_string(&log_file).map_err(|e| RuntimeError::io(app_id, "read", &log_file, e))?;
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let skip = tail.map_or(0, |n| lines.len().saturating_sub(n));
        Ok(lines.into_iter().skip(skip).collect())
    }

    /// Statistics are not collected by this driver.
    pub async fn stats(&self, _app_id: &str) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported {
            operation: "stats",
            driver: "process",
            hint: "; use runtime.driver = \"docker\"",
        })
    }
}
