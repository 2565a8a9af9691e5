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
        Ok(dir)
    }

    /// Opens the store: `store_url` if the configuration names one, else the
    /// SQLite file in the data directory.
    pub async fn open_store(&self, store_url: Option<&str>, from_config: Option<&Path>) -> anyhow::Result<Store> {
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

/// Loads and validates a configuration file; failures exit with 2.
pub fn load_config(path: &Path) -> anyhow::Result<portcullis_config::PlatformConfig> {
    Ok(portcullis_config::load(path)?)
}
