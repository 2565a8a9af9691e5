//! Top-level settings: trust domain, data directory, store, listeners,
//! identity, gateway limits and runtime.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::model::*;
use crate::raw::*;

pub(super) fn trust_domain(check: &Checker, value: &str) -> Result<String> {
    let expected = "a lowercase DNS name such as \"platform.example\" (letters, digits, '-' and '.')";
    if value.len() > 253 || value.split('.').any(|label| check_dns_label(label).is_err()) {
        return Err(check.invalid("trust_domain", quote(value), expected));
    }
    Ok(value.to_owned())
}

pub(super) fn data_dir(check: &Checker, file: &Path, value: Option<&str>) -> Result<Option<PathBuf>> {
    let Some(text) = value else {
        return Ok(None);
    };
    if text.is_empty() {
        return Err(check.invalid("data_dir", quote(text), "a directory path"));
    }
    let path = Path::new(text);
    if path.is_absolute() {
        return Ok(Some(path.to_owned()));
    }
    let base = file.parent().unwrap_or(Path::new("."));
    Ok(Some(base.join(path)))
}

pub(super) fn store_url(check: &Checker, value: Option<String>) -> Result<Option<String>> {
    let Some(url) = value else {
        return Ok(None);
    };
    let accepted = ["sqlite:", "postgres://", "postgresql://"];
    if !accepted.iter().any(|prefix| url.starts_with(prefix)) {
        // NOTE: the URL may hold a password, so only its scheme is echoed.
        let scheme = url.split(':').next().unwrap_or_default();
        return Err(check.invalid(
            "store.url",
            format!("with scheme {}", quote(scheme)),
            "a sqlite: or postgres:// URL",
        ));
    }
    Ok(Some(url))
}

pub(super) fn listeners(check: &Checker, raw: &RawListeners) -> Result<Listeners> {
    let address = |key: &str, text: &str| -> Result<SocketAddr> {
        text.parse().map_err(|_| {
            check.invalid(
                format!("listeners.{key}"),
                quote(text),
                "an IP address and port such as \"127.0.0.1:8443\" or \"[::1]:8443\"",
            )
        })
    };
    let listeners = Listeners {
        gateway: address("gateway", &raw.gateway)?,
        egress: address("egress", &raw.egress)?,
        token: address("token", &raw.token)?,
        consent: raw.consent.as_deref().map(|text| address("consent", text)).transpose()?,
        operator: address("operator", &raw.operator)?,
    };

    let mut all = vec![
        ("gateway", listeners.gateway),
        ("egress", listeners.egress),
        ("token", listeners.token),
        ("operator", listeners.operator),
    ];
    if let Some(consent) = listeners.consent {
        all.push(("consent", consent));
    }
    for (index, (key, address)) in all.iter().enumerate() {
        if address.port() == 0 {
            return Err(check.invalid(
                format!("listeners.{key}"),
                quote(&address.to_string()),
                "a port from 1 to 65535",
            ));
        }
        if let Some((other, _)) = all[..index].iter().find(|(_, earlier)| earlier == address) {
            return Err(check.invalid(
                format!("listeners.{key}"),
                quote(&address.to_string()),
                format!("an address not already used by listeners.{other}"),
            ));
        }
    }
    Ok(listeners)
}

pub(super) fn identity(check: &Checker, raw: &RawIdentity) -> Result<IdentitySettings> {
    Ok(IdentitySettings {
        platform_cert_lifetime: check.duration(
            "identity.platform_cert_lifetime",
            raw.platform_cert_lifetime.as_deref(),
            HOUR,
            MINUTE * 5,
            DAY * 30,
        )?,
        app_cert_lifetime: check.duration(
            "identity.app_cert_lifetime",
            raw.app_cert_lifetime.as_deref(),
            DAY,
            MINUTE * 5,
            DAY * 90,
        )?,
        renew_at: check.float("identity.renew_at", raw.renew_at, 2.0 / 3.0, 0.1, 0.9, "fraction of the lifetime")?,
    })
}

pub(super) fn gateway(check: &Checker, raw: &RawGateway) -> Result<GatewaySettings> {
    let settings = GatewaySettings {
        max_header_bytes: check.integer(
            "gateway.max_header_bytes",
            raw.max_header_bytes,
            16 * 1024,
            1024,
            1024 * 1024,
            "bytes",
        )?,
        max_body_bytes: check.integer(
            "gateway.max_body_bytes",
            raw.max_body_bytes,
            1024 * 1024,
            0,
            1024 * 1024 * 1024,
            "bytes",
        )?,
        header_read_timeout: check.duration(
            "gateway.header_read_timeout",
            raw.header_read_timeout.as_deref(),
            Duration::from_secs(10),
            Duration::from_millis(100),
            MINUTE * 5,
        )?,
        idle_timeout: check.duration(
            "gateway.idle_timeout",
            raw.idle_timeout.as_deref(),
            MINUTE,
            Duration::from_secs(1),
            HOUR,
        )?,
        max_connections_per_app: check.integer(
            "gateway.max_connections_per_app",
            raw.max_connections_per_app,
            256,
            1,
            1_000_000,
            "connections",
        )? as u32,
        request_buffering: raw.request_buffering.unwrap_or(true),
        max_buffered_bytes_per_app: check.integer(
            "gateway.max_buffered_bytes_per_app",
            raw.max_buffered_bytes_per_app,
            16 * 1024 * 1024,
            0,
            16 * 1024 * 1024 * 1024,
            "bytes",
        )?,
        upstream_timeout: check.duration(
            "gateway.upstream_timeout",
            raw.upstream_timeout.as_deref(),
            Duration::from_secs(30),
            Duration::from_millis(100),
            HOUR,
        )?,
        rate_per_second: check.float(
            "gateway.rate_per_second",
            raw.rate_per_second,
            50.0,
            0.001,
            1_000_000.0,
            "requests per second",
        )?,
        rate_burst: check.integer("gateway.rate_burst", raw.rate_burst, 100, 1, 1_000_000, "requests")? as u32,
        busy_poll_window: check.duration(
            "gateway.busy_poll_window",
            raw.busy_poll_window.as_deref(),
            Duration::ZERO,
            Duration::ZERO,
            Duration::from_millis(10),
        )?,
    };

    // A budget below one whole body would reject every body near the limit.
    if settings.request_buffering && settings.max_buffered_bytes_per_app < settings.max_body_bytes {
        return Err(check.invalid(
            "gateway.max_buffered_bytes_per_app",
            settings.max_buffered_bytes_per_app.to_string(),
            format!(
                "at least gateway.max_body_bytes ({}) while gateway.request_buffering is true; raise it or lower gateway.max_body_bytes",
                settings.max_body_bytes
            ),
        ));
    }
    Ok(settings)
}

pub(super) fn runtime(check: &Checker, raw: &RawRuntime) -> Result<RuntimeSettings> {
    let driver = check.one_of(
        "runtime.driver",
        Some(&raw.driver),
        Driver::Docker,
        &[("docker", Driver::Docker), ("process", Driver::Process)],
    )?;
    let h = &raw.hardening;
    let key = |name: &str| format!("runtime.hardening.{name}");
    let hardening = Hardening {
        memory_mib: check.integer(&key("memory_mib"), h.memory_mib, 256, 16, 1024 * 1024, "MiB")?,
        cpus: check.float(&key("cpus"), h.cpus, 0.5, 0.01, 1024.0, "cores")?,
        pids: check.integer(&key("pids"), h.pids, 128, 1, 1_000_000, "processes")?,
        nofile: check.integer(&key("nofile"), h.nofile, 1024, 16, 1_048_576, "file descriptors")?,
        nproc: check.integer(&key("nproc"), h.nproc, 128, 1, 1_000_000, "processes")?,
        sigpending: check.integer(&key("sigpending"), h.sigpending, 64, 1, 1_000_000, "signals")?,
        tmpfs_mib: check.integer(&key("tmpfs_mib"), h.tmpfs_mib, 16, 1, 64 * 1024, "MiB")?,
        read_only_root: h.read_only_root.unwrap_or(true),
        seccomp: check.one_of(
            &key("seccomp"),
            h.seccomp.as_deref(),
            Seccomp::Default,
            &[("default", Seccomp::Default), ("strict", Seccomp::Strict)],
        )?,
        log_max_mib: check.integer(&key("log_max_mib"), h.log_max_mib, 10, 1, 10 * 1024, "MiB")?,
        log_max_files: check.integer(&key("log_max_files"), h.log_max_files, 3, 1, 100, "files")?,
        restart_max: check.integer(&key("restart_max"), h.restart_max, 3, 0, 100, "restarts")?,
        uid_base: check.integer(&key("uid_base"), h.uid_base, 200_000, 10_000, 2_000_000_000, "UID")? as u32,
    };
    Ok(RuntimeSettings { driver, hardening })
}

pub(super) fn token(check: &Checker, raw: &RawToken, listeners: &Listeners) -> Result<TokenSettings> {
    let issuer = match &raw.issuer {
        None => format!("https://{}", listeners.token),
        Some(text) => {
            let expected = "an https:// URL with a host, without user info, query or fragment";
            let shown = quote(&super::services::redact_userinfo(text));
            let url = url::Url::parse(text).map_err(|_| check.invalid("token.issuer", shown.clone(), expected))?;
            let valid = url.scheme() == "https"
                && url.host().is_some()
                && url.username().is_empty()
                && url.query().is_none()
                && url.fragment().is_none();
            if !valid {
                return Err(check.invalid("token.issuer", shown, expected));
            }
            text.trim_end_matches('/').to_owned()
        }
    };
    let access_token_lifetime = check.duration(
        "token.access_token_lifetime",
        raw.access_token_lifetime.as_deref(),
        MINUTE * 5,
        MINUTE,
        HOUR,
    )?;
    Ok(TokenSettings {
        issuer,
        access_token_lifetime,
        refresh_token_lifetime: check.duration(
            "token.refresh_token_lifetime",
            raw.refresh_token_lifetime.as_deref(),
            DAY * 30,
            HOUR,
            DAY * 365,
        )?,
        key_rotation: check.duration("token.key_rotation", raw.key_rotation.as_deref(), DAY, HOUR, DAY * 90)?,
        rate_per_second: check.float(
            "token.rate_per_second",
            raw.rate_per_second,
            5.0,
            0.01,
            10_000.0,
            "requests per second",
        )?,
        rate_burst: check.integer("token.rate_burst", raw.rate_burst, 20, 1, 100_000, "requests")? as u32,
    })
}
