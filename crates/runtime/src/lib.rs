//! Runtime of Portcullis: third-party apps as hardened containers, each on
//! its own internal network that it shares only with the gateway and the
//! egress proxy.
//!
//! - [`docker::DockerDriver`] drives the Docker Engine over its API
//!   (bollard, API version negotiated).
//! - [`process::ProcessDriver`] runs apps as child processes with resource
//!   limits on machines without Docker; its isolation is much weaker.
//! - [`profile::HardeningProfile`] is the profile every app container gets;
//!   only an operator's [`profile::Relaxation`] weakens a setting.
//! - [`deploy::deploy_app`] deploys an app from its [`manifest::Manifest`].
//! - [`enforce::follow_decisions`] disconnects banned apps.
//!
//! Every Docker object carries the labels in [`labels`]; nothing without
//! them is ever changed.

pub mod deploy;
pub mod docker;
pub mod enforce;
mod error;
pub mod labels;
pub mod manifest;
pub mod process;
pub mod profile;

pub use error::RuntimeError;
