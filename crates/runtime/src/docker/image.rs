//! Local image builds FROM scratch: no base image is ever pulled.

use std::collections::HashMap;
use std::path::Path;

use bollard::query_parameters::BuildImageOptions;
use futures_util::StreamExt;

use super::DockerDriver;
use crate::error::RuntimeError;
use crate::labels::{self, Role};

/// The files of a FROM-scratch image, built in memory as a tar build context.
///
/// Paths are absolute paths inside the image. Files keep the permission
/// bits given, except setuid and setgid bits, which the Engine's COPY drops;
/// set those with [`ImageContext::run`].
#[derive(Debug, Clone, Default)]
pub struct ImageContext {
    files: Vec<(String, Vec<u8>, u32)>,
    symlinks: Vec<(String, String)>,
    run: Vec<Vec<String>>,
    entrypoint: Vec<String>,
    command: Vec<String>,
    user: Option<String>,
}

impl ImageContext {
    /// An empty image.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file with `contents` and permission `mode` (such as `0o755`).
    pub fn file(mut self, path: &str, contents: Vec<u8>, mode: u32) -> Self {
        self.files.push((path.to_owned(), contents, mode));
        self
    }

    /// Adds a file copied from the host.
    pub fn copy(self, path: &str, source: &Path, mode: u32) -> Result<Self, RuntimeError> {
        let contents = std::fs::read(source).map_err(|e| RuntimeError::io("-", "read", source, e))?;
        Ok(self.file(path, contents, mode))
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.symlinks.push((path.to_owned(), target.to_owned()));
        self
    }

    /// Adds a build step that runs `command` (exec form, no shell) inside
    /// the image after the files are copied, such as a `chmod`.
    pub fn run(mut self, command: &[&str]) -> Self {
        self.run.push(command.iter().map(|s| (*s).to_owned()).collect());
        self
    }

    /// Sets the entrypoint.
    pub fn entrypoint(mut self, entrypoint: &[&str]) -> Self {
        self.entrypoint = entrypoint.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Sets the default command.
    pub fn command(mut self, command: &[&str]) -> Self {
        self.command = command.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Sets the default user, such as `65534:65534`.
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self
    }

    /// The Dockerfile: FROM scratch, one COPY of the root, then the settings.
    fn dockerfile(&self) -> String {
        let mut text = String::from("FROM scratch\nCOPY rootfs/ /\n");
        for command in &self.run {
            text.push_str(&format!("RUN {}\n", serde_json::Value::from(command.clone())));
        }
        if let Some(user) = &self.user {
            text.push_str(&format!("USER {user}\n"));
        }
        if !self.entrypoint.is_empty() {
            text.push_str(&format!("ENTRYPOINT {}\n", serde_json::Value::from(self.entrypoint.clone())));
        }
        if !self.command.is_empty() {
            text.push_str(&format!("CMD {}\n", serde_json::Value::from(self.command.clone())));
        }
        text
    }

    /// The build context as an uncompressed tar archive.
    fn tar(&self) -> std::io::Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        let dockerfile = self.dockerfile();
        append(&mut builder, "Dockerfile", dockerfile.as_bytes(), 0o644)?;
        for (path, contents, mode) in &self.files {
            append(&mut builder, &format!("rootfs{path}"), contents, *mode)?;
        }
        for (path, target) in &self.symlinks {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            header.set_mode(0o777);
            header.set_mtime(0);
            builder.append_link(&mut header, format!("rootfs{path}"), target)?;
        }
        builder.into_inner()
    }
}

fn append(builder: &mut tar::Builder<Vec<u8>>, path: &str, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(contents.len() as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, path, contents)
}

/// The image context of the Portcullis binary for the gateway and egress
/// proxy containers: the statically linked `binary` at `/portcullis`,
/// running as `nobody`. Build the binary with
/// `RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu -p portcullis-cli`
/// (scripts/build-image does this), because a scratch image has no C library.
pub fn portcullis_image_context(binary: &Path) -> Result<ImageContext, RuntimeError> {
    Ok(ImageContext::new().copy("/portcullis", binary, 0o755)?.user("65534:65534").entrypoint(&["/portcullis"]))
}

/// Builds `context` as image `tag` with this instance's labels plus
/// `io.portcullis.role=<role>`. Returns the image id. Never pulls: the
/// context starts FROM scratch.
pub async fn build_image(
    driver: &DockerDriver,
    tag: &str,
    role: Role,
    context: &ImageContext,
) -> Result<String, RuntimeError> {
    let tar = context.tar().map_err(|e| RuntimeError::Build { tag: tag.to_owned(), message: format!("tar: {e}") })?;
    let labels: HashMap<String, String> =
        labels::object_labels(&driver.options.instance, role, None, &driver.options.extra_labels);
    let options = BuildImageOptions {
        dockerfile: "Dockerfile".into(),
        t: Some(tag.to_owned()),
        rm: true,
        forcerm: true,
        labels: Some(labels),
        ..Default::default()
    };

    let mut stream = driver.docker.build_image(options, None, Some(bollard::body_full(tar.into())));
    let mut image_id = None;
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| RuntimeError::Build { tag: tag.to_owned(), message: e.to_string() })?;
        if let Some(detail) = info.error_detail {
            return Err(RuntimeError::Build { tag: tag.to_owned(), message: detail.message.unwrap_or_default() });
        }
        if let Some(aux) = info.aux {
            image_id = aux.id;
        }
    }

    let image =
        driver.docker.inspect_image(tag).await.map_err(|e| RuntimeError::docker("inspect image", tag.to_owned(), e))?;
    let id = image_id.or(image.id).unwrap_or_default();
    tracing::info!(tag, image_id = %id, "image built");
    Ok(id)
}

impl DockerDriver {
    /// Removes every image this instance built (selected by label), and
    /// returns how many. Images of anyone else are never touched.
    pub async fn remove_images(&self) -> Result<usize, RuntimeError> {
        let options = bollard::query_parameters::ListImagesOptions {
            all: false,
            filters: Some(labels::filter(&self.options.instance, None, None)),
            ..Default::default()
        };
        let images = self
            .docker
            .list_images(Some(options))
            .await
            .map_err(|e| RuntimeError::docker("list images", self.options.instance.clone(), e))?;
        let mut removed = 0;
        for image in images {
            let options = bollard::query_parameters::RemoveImageOptions { force: true, ..Default::default() };
            match self.docker.remove_image(&image.id, Some(options), None).await {
                Ok(_) => removed += 1,
                Err(error) if crate::error::is_not_found(&error) => {}
                Err(error) => return Err(RuntimeError::docker("remove image", image.id.clone(), error)),
            }
        }
        Ok(removed)
    }
}
