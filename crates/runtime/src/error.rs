//! The runtime's error type.

use std::path::PathBuf;

/// A runtime operation that failed. Each message names the app id, the
/// container or network where one is involved, the value at fault and what to
/// do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The Docker Engine could not be reached or its API version negotiated.
    #[error(
        "cannot reach the Docker Engine: {source}; start the daemon (systemctl start docker) or set DOCKER_HOST, or use runtime.driver = \"process\""
    )]
    Connect {
        /// The client error.
        source: bollard::errors::Error,
    },

    /// A Docker Engine API call failed.
    #[error("docker: {action} failed for {object}: {source}")]
    Docker {
        /// What was being done, such as "create container".
        action: &'static str,
        /// The app, container, network or image involved.
        object: String,
        /// The client error.
        source: bollard::errors::Error,
    },

    /// No container managed by this platform instance runs the app.
    #[error(
        "app {app_id:?} has no container on platform instance {instance:?}; deploy it with `portcullis app deploy`"
    )]
    NotDeployed {
        /// The app id.
        app_id: String,
        /// The platform instance label value.
        instance: String,
    },

    /// The app already has a container.
    #[error("app {app_id:?} already has container {container_id}; remove it first with `portcullis app rm {app_id}`")]
    AlreadyDeployed {
        /// The app id.
        app_id: String,
        /// The existing container.
        container_id: String,
    },

    /// The image is not present locally; the runtime never pulls.
    #[error(
        "image {image:?} of app {app_id:?} is not present on this host: build or load it first (images are never pulled)"
    )]
    ImageMissing {
        /// The app id.
        app_id: String,
        /// The image reference.
        image: String,
    },

    /// A manifest could not be read or is invalid.
    #[error("{file}: {key}: {message}")]
    Manifest {
        /// The manifest file.
        file: PathBuf,
        /// Dotted key path, such as `resources.memory_mib`.
        key: String,
        /// What was found and what is accepted.
        message: String,
    },

    /// A manifest asked for more than the platform's hardening defaults allow.
    #[error(
        "app {app_id:?}: resources.{key} = {requested} exceeds the platform limit {limit}: a manifest may only narrow the limits; lower it or raise runtime.hardening.{key}"
    )]
    Widening {
        /// The app id.
        app_id: String,
        /// The resource key, such as `memory_mib`.
        key: &'static str,
        /// The value the manifest requested.
        requested: String,
        /// The platform's limit.
        limit: String,
    },

    /// A relaxation of the hardening profile was given without a reason.
    #[error("app {app_id:?}: relaxing {setting} needs a reason; state why the app needs it")]
    RelaxationWithoutReason {
        /// The app id.
        app_id: String,
        /// The setting, such as `read_only_root`.
        setting: String,
    },

    /// No free subnet is left in the pool for a new app network.
    #[error("app {app_id:?}: no free /28 subnet left in the pool {pool}; remove unused apps or choose a larger pool")]
    SubnetPoolExhausted {
        /// The app id.
        app_id: String,
        /// The pool.
        pool: String,
    },

    /// The app's UID could not be allocated or is out of range.
    #[error("app {app_id:?}: cannot allocate a UID from base {uid_base}: {message}")]
    Uid {
        /// The app id.
        app_id: String,
        /// The configured base.
        uid_base: u32,
        /// What went wrong.
        message: String,
    },

    /// The store failed.
    #[error("app {app_id:?}: store: {source}")]
    Store {
        /// The app id.
        app_id: String,
        /// The store error.
        source: portcullis_store::StoreError,
    },

    /// The app's certificate could not be issued or written.
    #[error("app {app_id:?}: cannot issue or write its certificate: {source}")]
    Identity {
        /// The app id.
        app_id: String,
        /// The identity error.
        source: portcullis_identity::IdentityError,
    },

    /// A file or directory operation failed.
    #[error("app {app_id:?}: {action} {}: {source}", path.display())]
    Io {
        /// The app id, or `-` for platform-wide files.
        app_id: String,
        /// What was being done, such as "chown".
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// The operation is not available with this driver.
    #[error("{operation} is not supported by the {driver} driver{hint}")]
    Unsupported {
        /// The operation, such as "stats".
        operation: &'static str,
        /// The driver name.
        driver: &'static str,
        /// How to get it, with a leading separator, or empty.
        hint: &'static str,
    },

    /// A Docker object with a platform name is not this instance's, or is
    /// in a state the runtime cannot use.
    #[error("{object}: {message}")]
    Conflict {
        /// The network, container or image name.
        object: String,
        /// What is wrong and what to do.
        message: String,
    },

    /// An image build failed.
    #[error("building image {tag:?} failed: {message}")]
    Build {
        /// The image tag.
        tag: String,
        /// The builder's message.
        message: String,
    },
}

impl RuntimeError {
    /// Wraps a Docker client error with the action and object.
    pub(crate) fn docker(action: &'static str, object: impl Into<String>, source: bollard::errors::Error) -> Self {
        Self::Docker { action, object: object.into(), source }
    }

    /// Wraps an I/O error with the app id, action and path.
    pub(crate) fn io(app_id: &str, action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { app_id: app_id.to_owned(), action, path: path.into(), source }
    }
}

/// Returns whether a Docker error is a 404 from the Engine.
pub(crate) fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(error, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// Returns whether a Docker error is a 304 (already started or stopped).
pub(crate) fn is_not_modified(error: &bollard::errors::Error) -> bool {
    matches!(error, bollard::errors::Error::DockerResponseServerError { status_code: 304, .. })
}
