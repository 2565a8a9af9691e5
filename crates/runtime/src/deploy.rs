//! Deploying an app from its manifest: UID, hardening profile, certificate
//! and container, in that order.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use portcullis_config::Hardening;
use portcullis_identity::{CertificateKind, LeafRequest, Lifetimes, PlatformCa, SpiffeId};
use portcullis_store::Store;

use crate::docker::{AppContainer, AppLaunch, DockerDriver};
use crate::error::RuntimeError;
use crate::manifest::Manifest;
use crate::profile::{HardeningProfile, Relaxation};

/// Everything about one deployment besides the platform's handles.
#[derive(Debug, Clone, Copy)]
pub struct DeployRequest<'a> {
    /// The validated manifest.
    pub manifest: &'a Manifest,
    /// The platform's `runtime.hardening` settings.
    pub hardening: &'a Hardening,
    /// The operator's relaxations for this app; usually none.
    pub relaxations: &'a [Relaxation],
    /// The app's egress proxy secret.
    pub proxy_secret: &'a str,
    /// Directory holding one directory per app (`<data-dir>/apps`); the app's
    /// credentials go to `<apps_dir>/<id>/credentials`.
    pub apps_dir: &'a Path,
}

/// Deploys an app: allocates (or reuses) its UID from `runtime.hardening.uid_base`,
/// builds its hardening profile, issues its certificate into its credentials
/// directory, and starts its container on its own network.
pub async fn deploy_app(
    driver: &DockerDriver,
    store: &Store,
    ca: &PlatformCa,
    lifetimes: &Lifetimes,
    request: DeployRequest<'_>,
) -> Result<AppContainer, RuntimeError> {
    let manifest = request.manifest;
    let app_id = manifest.id.as_str();

    let uid = store
        .app_uid(app_id, request.hardening.uid_base)
        .await
        .map_err(|source| RuntimeError::Store { app_id: app_id.to_owned(), source })?;
    let profile = HardeningProfile::new(app_id, request.hardening, uid, driver.apparmor())
        .narrow(app_id, &manifest.resources)?
        .relax(app_id, request.relaxations)?;

    let credentials_dir = request.apps_dir.join(app_id).join("credentials");
    write_credentials(store, ca, lifetimes, app_id, uid, &credentials_dir).await?;

    let launch = AppLaunch {
        app_id: app_id.to_owned(),
        image: manifest.image.clone(),
        command: manifest.command.clone(),
        env: manifest.env.clone(),
        port: manifest.port,
        profile,
        credentials_dir,
        proxy_secret: request.proxy_secret.to_owned(),
    };
    driver.deploy(&launch).await
}

/// Issues the app's certificate and writes cert.pem, key.pem and
/// ca-bundle.pem into `dir`, owned by `uid` (user and group) with the
/// directory at mode 0500 and the files at 0400, so only the app (and root)
/// can read its key. Changing the owner needs root (or CAP_CHOWN).
pub async fn write_credentials(
    store: &Store,
    ca: &PlatformCa,
    lifetimes: &Lifetimes,
    app_id: &str,
    uid: u32,
    dir: &Path,
) -> Result<[PathBuf; 3], RuntimeError> {
    let identity = SpiffeId::new(ca.trust_domain(), CertificateKind::App, app_id)
        .map_err(|source| RuntimeError::Identity { app_id: app_id.to_owned(), source })?;
    let leaf = ca
        .issue_and_record(store, &LeafRequest::new(identity, lifetimes))
        .await
        .map_err(|source| RuntimeError::Identity { app_id: app_id.to_owned(), source })?;
    let paths = leaf.write_files(dir).map_err(|source| RuntimeError::Identity { app_id: app_id.to_owned(), source })?;

    for path in &paths {
        restrict(app_id, path, uid, 0o400)?;
    }
    restrict(app_id, dir, uid, 0o500)?;
    tracing::info!(app_id, uid, serial = leaf.serial(), dir = %dir.display(), "app certificate issued");
    Ok(paths)
}

fn restrict(app_id: &str, path: &Path, uid: u32, mode: u32) -> Result<(), RuntimeError> {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).map_err(|e| RuntimeError::io(app_id, "chown", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| RuntimeError::io(app_id, "chmod", path, e))
}
