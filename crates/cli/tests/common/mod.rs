//! Running the `portcullis` binary in tests.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// The weather example's configuration file.
pub const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/weather-platform/platform.toml");

/// Runs `portcullis --data-dir DATA_DIR ARGS...` with no log filter or
/// configuration taken from the environment.
pub fn portcullis(data_dir: &Path, args: &[&str]) -> Output {
    // A shared data directory draws a warning on standard error, which
    // tests that compare it exactly do not expect.
    if data_dir.exists() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("PORTCULLIS_LOG")
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("PORTCULLIS_DATA_DIR")
        .output()
        .expect("run portcullis")
}

/// Standard output as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Standard error as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}
