//! One module per command.

pub mod app;
pub mod ban;
pub mod ca;
pub mod grant;
pub mod serve;
pub mod status;
pub mod up;

use std::path::{Path, PathBuf};

use anyhow::Context;
use portcullis_store::Store;

use crate::{EXIT_PROBLEMS, EXIT_USAGE};

/// Options shared by every command.
#[derive(Debug, Clone)]
pub struct Global {
    /// `--data-dir`, if given.
    pub data_dir: Option<PathBuf>,
}

/// An error in what the operator asked for (a bad argument, a broken
/// configuration), as opposed to a failure while doing it. Exits with 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Maps an error to the documented exit code.
pub fn exit_code_of(error: &anyhow::Error) -> u8 {
    let usage = error.chain().any(|cause| cause.is::<UsageError>() || cause.is::<portcullis_config::ConfigError>());
    if usage { EXIT_USAGE } else { EXIT_PROBLEMS }
}

impl Global {
    /// Resolves the data directory: `--data-dir`, else the configuration's
    /// `data_dir`, else `$XDG_DATA_HOME/portcullis`, else
    /// `$HOME/.local/share/portcullis` (the XDG Base Directory default).
    pub fn data_dir(&self, from_config: Option<&Path>) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        if let Some(dir) = from_config {
            return Ok(dir.to_owned());
        }
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| Path::new(v).is_absolute()) {
            return Ok(PathBuf::from(xdg).join("portcullis"));
        }
        let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).ok_or_else(|| {
            UsageError("neither --data-dir, XDG_DATA_HOME nor HOME is set: pass --data-dir DIR".into())
        })?;
        Ok(PathBuf::from(home).join(".local/share/portcullis"))
    }

    /// Creates the data directory if needed (mode 0700) and returns it.
    pub fn ensure_data_dir(&self, from_config: Option<&Path>) -> anyhow::Result<PathBuf> {
        let dir = self.data_dir(from_config)?;
        create_private_dir(&dir)?;
        warn_if_shared(&dir);
        Ok(dir)
    }

    /// Opens the store: `store_url` if the configuration names one, else the
    /// SQLite file in the data directory.
    ///
    /// Commands that take no configuration pass `None` for both; then, if
    /// `PORTCULLIS_CONFIG` names a configuration and `--data-dir` is not
    /// given, that configuration's store and data directory are used, so
    /// every command works on the same platform as `serve`.
    pub async fn open_store(&self, store_url: Option<&str>, from_config: Option<&Path>) -> anyhow::Result<Store> {
        if store_url.is_none() && from_config.is_none() && self.data_dir.is_none() {
            if let Some(path) = std::env::var_os("PORTCULLIS_CONFIG").filter(|v| !v.is_empty()) {
                let config = load_config(Path::new(&path))?;
                return self.open_store_exactly(config.store_url.as_deref(), config.data_dir.as_deref()).await;
            }
        }
        self.open_store_exactly(store_url, from_config).await
    }

    async fn open_store_exactly(&self, store_url: Option<&str>, from_config: Option<&Path>) -> anyhow::Result<Store> {
        match store_url {
            Some(url) => Store::open(url).await.context("opening the store named by store.url"),
            None => {
                let dir = self.ensure_data_dir(from_config)?;
                Store::open_in(&dir).await.with_context(|| format!("opening the store in {}", dir.display()))
            }
        }
    }
}

/// Creates `dir` and its parents; a new `dir` is readable only by its owner.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))
}

/// Warns when an existing data directory is readable or writable by other
/// users: it holds the CA, the store and the event logs. The directory's
/// mode is the operator's choice, so it is reported rather than changed.
fn warn_if_shared(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(dir) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{mode:o}"),
                "the data directory is accessible to other users; run `chmod 700` on it"
            );
        }
    }
}

/// Loads and validates a configuration file; failures exit with 2.
pub fn load_config(path: &Path) -> anyhow::Result<portcullis_config::PlatformConfig> {
    Ok(portcullis_config::load(path)?)
}
