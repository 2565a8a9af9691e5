//! The hardening profile applied to every app container.
//!
//! [`HardeningProfile::new`] starts from the platform's `runtime.hardening`
//! settings, [`HardeningProfile::narrow`] applies a manifest's resources
//! (which may only lower a limit), and [`HardeningProfile::relax`] applies
//! the operator's explicit relaxations, each logged with its reason.
//! Privileged mode, host namespaces, devices and host paths other than the
//! app's read-only credentials directory are never part of the profile and
//! no relaxation adds them.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{
    HostConfig, HostConfigLogConfig, Mount, MountType, ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum,
};
use portcullis_config::{Hardening, Seccomp};

use crate::error::RuntimeError;
use crate::manifest::Resources;

/// Mount point of the app's credentials directory, read-only.
pub const CREDENTIALS_MOUNT: &str = "/run/portcullis";

/// The AppArmor profile Docker ships and loads where AppArmor is enabled.
pub const APPARMOR_PROFILE: &str = "docker-default";

/// The platform's own seccomp profile for `seccomp = "strict"`: an allow-list
/// that refuses namespace, mount, tracing, kernel-module, keyring, BPF and
/// raw packet system calls (see `seccomp/strict.json` in this crate).
pub const STRICT_SECCOMP_PROFILE: &str = include_str!("../seccomp/strict.json");

/// A setting of the profile that an operator may relax for one app.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Relaxable {
    /// A writable root filesystem instead of a read-only one.
    WritableRoot,
    /// No seccomp filter at all.
    SeccompUnconfined,
    /// Allow setuid binaries and file capabilities to raise privileges.
    NewPrivileges,
    /// Keep one capability, such as `NET_BIND_SERVICE`.
    Capability(String),
    /// No AppArmor profile.
    AppArmorUnconfined,
}

impl std::fmt::Display for Relaxable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::WritableRoot => f.write_str("read_only_root"),
            Self::SeccompUnconfined => f.write_str("seccomp"),
            Self::NewPrivileges => f.write_str("no_new_privileges"),
            Self::Capability(name) => write!(f, "cap_drop (keep {name})"),
            Self::AppArmorUnconfined => f.write_str("apparmor"),
        }
    }
}

/// An operator's explicit relaxation of one setting, with the reason that is
/// logged when it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relaxation {
    /// The setting relaxed.
    pub setting: Relaxable,
    /// Why the app needs it; must not be blank.
    pub reason: String,
}

/// The seccomp filter of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompFilter {
    /// Docker's default profile (nothing is passed; the Engine applies it).
    DockerDefault,
    /// [`STRICT_SECCOMP_PROFILE`].
    Strict,
    /// No filter; only through a [`Relaxation`].
    Unconfined,
}

/// The limits and security settings of one app container.
///
/// Invariant: every limit is at most the platform's `runtime.hardening`
/// value, and every weaker setting came from a logged [`Relaxation`].
#[derive(Debug, Clone, PartialEq)]
pub struct HardeningProfile {
    /// UID and GID the app runs as; unique to the app.
    pub uid: u32,
    /// Memory limit in MiB; memory plus swap is limited to the same value.
    pub memory_mib: u64,
    /// CPU quota in cores.
    pub cpus: f64,
    /// Maximum processes and threads in the container (pids cgroup).
    pub pids: u64,
    /// `RLIMIT_NOFILE`: open file descriptors per process.
    pub nofile: u64,
    /// `RLIMIT_NPROC`: processes of the app's UID.
    pub nproc: u64,
    /// `RLIMIT_SIGPENDING`: queued signals of the app's UID.
    pub sigpending: u64,
    /// Size of the tmpfs at /tmp in MiB.
    pub tmpfs_mib: u64,
    /// Whether the root filesystem is read-only.
    pub read_only_root: bool,
    /// The seccomp filter.
    pub seccomp: SeccompFilter,
    /// Whether `no-new-privileges` is set.
    pub no_new_privileges: bool,
    /// Capabilities kept after dropping all; empty unless relaxed.
    pub cap_add: Vec<String>,
    /// AppArmor profile, when the host has AppArmor enabled.
    pub apparmor: Option<String>,
    /// Size of one json-file log in MiB.
    pub log_max_mib: u64,
    /// Number of json-file logs kept.
    pub log_max_files: u64,
    /// Restarts after a non-zero exit (policy `on-failure`).
    pub restart_max: u64,
}

impl HardeningProfile {
    /// Builds the profile from the platform settings for an app running as
    /// `uid`. `apparmor` is whether the host has AppArmor enabled (see
    /// [`apparmor_enabled`]). A `read_only_root = false` in the platform
    /// configuration is applied as a relaxation and logged.
    pub fn new(app_id: &str, hardening: &Hardening, uid: u32, apparmor: bool) -> Self {
        let profile = Self {
            uid,
            memory_mib: hardening.memory_mib,
            cpus: hardening.cpus,
            pids: hardening.pids,
            nofile: hardening.nofile,
            nproc: hardening.nproc,
            sigpending: hardening.sigpending,
            tmpfs_mib: hardening.tmpfs_mib,
            read_only_root: true,
            seccomp: match hardening.seccomp {
                Seccomp::Strict => SeccompFilter::Strict,
                _ => SeccompFilter::DockerDefault,
            },
            no_new_privileges: true,
            cap_add: Vec::new(),
            apparmor: apparmor.then(|| APPARMOR_PROFILE.to_owned()),
            log_max_mib: hardening.log_max_mib,
            log_max_files: hardening.log_max_files,
            restart_max: hardening.restart_max,
        };
        if hardening.read_only_root {
            return profile;
        }
        let relaxation = Relaxation {
            setting: Relaxable::WritableRoot,
            reason: "runtime.hardening.read_only_root = false in the platform configuration".into(),
        };
        profile.relax(app_id, std::slice::from_ref(&relaxation)).unwrap_or_else(|_| unreachable!("reason is set"))
    }

    /// Lowers limits to what the manifest requests. A request above the
    /// platform's limit is an error, never a silent cap.
    pub fn narrow(mut self, app_id: &str, resources: &Resources) -> Result<Self, RuntimeError> {
        fn lower(app_id: &str, key: &'static str, limit: &mut u64, requested: Option<u64>) -> Result<(), RuntimeError> {
            match requested {
                Some(value) if value > *limit => Err(RuntimeError::Widening {
                    app_id: app_id.to_owned(),
                    key,
                    requested: value.to_string(),
                    limit: limit.to_string(),
                }),
                Some(value) => {
                    *limit = value;
                    Ok(())
                }
                None => Ok(()),
            }
        }

        lower(app_id, "memory_mib", &mut self.memory_mib, resources.memory_mib)?;
        lower(app_id, "pids", &mut self.pids, resources.pids)?;
        lower(app_id, "nofile", &mut self.nofile, resources.nofile)?;
        lower(app_id, "nproc", &mut self.nproc, resources.nproc)?;
        lower(app_id, "sigpending", &mut self.sigpending, resources.sigpending)?;
        lower(app_id, "tmpfs_mib", &mut self.tmpfs_mib, resources.tmpfs_mib)?;
        if let Some(cpus) = resources.cpus {
            if cpus > self.cpus {
                return Err(RuntimeError::Widening {
                    app_id: app_id.to_owned(),
                    key: "cpus",
                    requested: cpus.to_string(),
                    limit: self.cpus.to_string(),
                });
            }
            self.cpus = cpus;
        }
        Ok(self)
    }

    /// Applies the operator's relaxations, logging each at warn level with
    /// the app id, the setting and the reason.
    pub fn relax(mut self, app_id: &str, relaxations: &[Relaxation]) -> Result<Self, RuntimeError> {
        for relaxation in relaxations {
            if relaxation.reason.trim().is_empty() {
                return Err(RuntimeError::RelaxationWithoutReason {
                    app_id: app_id.to_owned(),
                    setting: relaxation.setting.to_string(),
                });
            }

            match &relaxation.setting {
                Relaxable::WritableRoot => self.read_only_root = false,
                Relaxable::SeccompUnconfined => self.seccomp = SeccompFilter::Unconfined,
                Relaxable::NewPrivileges => self.no_new_privileges = false,
                Relaxable::Capability(name) => {
                    let upper = name.to_ascii_uppercase();
                    let name = upper.trim_start_matches("CAP_").to_owned();
                    if !self.cap_add.contains(&name) {
                        self.cap_add.push(name);
                    }
                }
                Relaxable::AppArmorUnconfined => self.apparmor = Some("unconfined".into()),
            }
            tracing::warn!(
                app_id,
                setting = %relaxation.setting,
                reason = %relaxation.reason,
                "hardening relaxed by the operator"
            );
        }
        Ok(self)
    }

    /// The `SecurityOpt` list: `no-new-privileges`, the seccomp profile unless
    /// it is Docker's default, and the AppArmor profile if any.
    pub fn security_opt(&self) -> Vec<String> {
        let mut options = Vec::new();
        if self.no_new_privileges {
            options.push("no-new-privileges:true".to_owned());
        }
        match self.seccomp {
            SeccompFilter::DockerDefault => {}
            SeccompFilter::Strict => options.push(format!("seccomp={}", compact_json(STRICT_SECCOMP_PROFILE))),
            SeccompFilter::Unconfined => options.push("seccomp=unconfined".to_owned()),
        }
        if let Some(profile) = &self.apparmor {
            options.push(format!("apparmor={profile}"));
        }
        options
    }

    /// The Docker `HostConfig` of the app container, attached to `network`
    /// only, with `credentials_dir` mounted read-only at
    /// [`CREDENTIALS_MOUNT`] as its one mount.
    pub fn host_config(&self, credentials_dir: &Path, network: &str) -> HostConfig {
        let memory_bytes = (self.memory_mib * MIB) as i64;
        let ulimit = |name: &str, value: u64| ResourcesUlimits {
            name: Some(name.to_owned()),
            soft: Some(value as i64),
            hard: Some(value as i64),
        };

        HostConfig {
            memory: Some(memory_bytes),
            memory_swap: Some(memory_bytes),
            nano_cpus: Some((self.cpus * 1e9).round() as i64),
            cpu_shares: Some(((self.cpus * 1024.0).round() as i64).max(2)),
            pids_limit: Some(self.pids as i64),
            ulimits: Some(vec![
                ulimit("nproc", self.nproc),
                ulimit("nofile", self.nofile),
                ulimit("sigpending", self.sigpending),
            ]),
            oom_kill_disable: Some(false),

            cap_drop: Some(vec!["ALL".to_owned()]),
            cap_add: (!self.cap_add.is_empty()).then(|| self.cap_add.clone()),
            security_opt: Some(self.security_opt()),
            privileged: Some(false),
            readonly_rootfs: Some(self.read_only_root),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_owned(),
                format!("rw,noexec,nosuid,nodev,size={}m", self.tmpfs_mib),
            )])),

            network_mode: Some(network.to_owned()),
            ipc_mode: Some("private".to_owned()),
            devices: Some(Vec::new()),
            mounts: Some(vec![Mount {
                target: Some(CREDENTIALS_MOUNT.to_owned()),
                source: Some(credentials_dir.display().to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            }]),
            publish_all_ports: Some(false),

            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_owned()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), format!("{}m", self.log_max_mib)),
                    ("max-file".to_owned(), self.log_max_files.to_string()),
                ])),
            }),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::ON_FAILURE),
                maximum_retry_count: Some(self.restart_max as i64),
            }),
            ..Default::default()
        }
    }
}

/// Bytes in a MiB.
pub const MIB: u64 = 1024 * 1024;

/// Returns whether the host kernel has AppArmor enabled, read from
/// `/sys/module/apparmor/parameters/enabled` (`Y` when enabled).
pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|value| value.trim() == "Y")
}

/// Strips the whitespace from a JSON document, so it fits one `SecurityOpt`
/// entry.
fn compact_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text).map(|value| value.to_string()).unwrap_or_else(|_| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn hardening() -> Hardening {
        Hardening {
            memory_mib: 256,
            cpus: 0.5,
            pids: 128,
            nofile: 1024,
            nproc: 128,
            sigpending: 64,
            tmpfs_mib: 16,
            read_only_root: true,
            seccomp: Seccomp::Default,
            log_max_mib: 10,
            log_max_files: 3,
            restart_max: 3,
            uid_base: 200_000,
        }
    }

    #[test]
    fn narrow_lowers_limits() {
        let resources = Resources { memory_mib: Some(64), cpus: Some(0.25), pids: Some(32), ..Default::default() };
        let profile = HardeningProfile::new("a", &hardening(), 200_000, false).narrow("a", &resources).unwrap();
        assert_eq!(profile.memory_mib, 64);
        assert_eq!(profile.cpus, 0.25);
        assert_eq!(profile.pids, 32);
        assert_eq!(profile.nofile, 1024);
    }

    #[test]
    fn narrow_rejects_widening() {
        let resources = Resources { memory_mib: Some(512), ..Default::default() };
        let error = HardeningProfile::new("a", &hardening(), 200_000, false).narrow("a", &resources).unwrap_err();
        assert_eq!(
            error.to_string(),
            "app \"a\": resources.memory_mib = 512 exceeds the platform limit 256: a manifest may only narrow the limits; lower it or raise runtime.hardening.memory_mib"
        );

        let resources = Resources { cpus: Some(2.0), ..Default::default() };
        let error = HardeningProfile::new("a", &hardening(), 200_000, false).narrow("a", &resources).unwrap_err();
        assert!(matches!(error, RuntimeError::Widening { key: "cpus", .. }), "{error}");
    }

    #[test]
    fn relaxation_needs_reason() {
        let relaxation = Relaxation { setting: Relaxable::WritableRoot, reason: "  ".into() };
        let error = HardeningProfile::new("a", &hardening(), 200_000, false).relax("a", &[relaxation]).unwrap_err();
        assert!(matches!(error, RuntimeError::RelaxationWithoutReason { .. }), "{error}");
    }

    #[test]
    fn relaxations_apply() {
        let relaxations = [
            Relaxation { setting: Relaxable::WritableRoot, reason: "legacy app writes to /var".into() },
            Relaxation { setting: Relaxable::Capability("cap_net_bind_service".into()), reason: "port 80".into() },
            Relaxation { setting: Relaxable::SeccompUnconfined, reason: "debugging".into() },
        ];
        let profile = HardeningProfile::new("a", &hardening(), 200_000, true).relax("a", &relaxations).unwrap();
        assert!(!profile.read_only_root);
        assert_eq!(profile.cap_add, ["NET_BIND_SERVICE"]);
        assert_eq!(profile.security_opt(), ["no-new-privileges:true", "seccomp=unconfined", "apparmor=docker-default"]);
    }

    #[test]
    fn config_writable_root_is_relaxation() {
        let mut settings = hardening();
        settings.read_only_root = false;
        let profile = HardeningProfile::new("a", &settings, 200_000, false);
        assert!(!profile.read_only_root);
        assert!(profile.no_new_privileges);
    }

    #[test]
    fn host_config_defaults() {
        let profile = HardeningProfile::new("a", &hardening(), 200_000, false);
        let config = profile.host_config(Path::new("/data/apps/a/credentials"), "pc-x-app-a");
        assert_eq!(config.memory, Some(256 * 1024 * 1024));
        assert_eq!(config.memory_swap, config.memory);
        assert_eq!(config.nano_cpus, Some(500_000_000));
        assert_eq!(config.pids_limit, Some(128));
        assert_eq!(config.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(config.cap_add, None);
        assert_eq!(config.security_opt, Some(vec!["no-new-privileges:true".to_owned()]));
        assert_eq!(config.readonly_rootfs, Some(true));
        assert_eq!(config.tmpfs.unwrap()["/tmp"], "rw,noexec,nosuid,nodev,size=16m");
        assert_eq!(config.mounts.as_ref().map(Vec::len), Some(1));
        assert_eq!(config.binds, None);
    }

    #[test]
    fn strict_seccomp_is_valid_json() {
        let profile: serde_json::Value = serde_json::from_str(STRICT_SECCOMP_PROFILE).unwrap();
        assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
        let allowed: Vec<&str> = profile["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|rule| rule["action"] == "SCMP_ACT_ALLOW")
            .flat_map(|rule| rule["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()))
            .collect();
        for refused in ["ptrace", "mount", "unshare", "setns", "init_module", "bpf", "keyctl", "kexec_load"] {
            assert!(!allowed.contains(&refused), "{refused} must not be allowed");
        }
        for needed in ["read", "write", "openat", "execve", "mmap", "futex", "clone", "socket", "connect"] {
            assert!(allowed.contains(&needed), "{needed} must be allowed");
        }
    }
}
