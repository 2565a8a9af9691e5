//! The split of a configuration's settings into those that
//! [`crate::Platform::reload`] applies to the running platform and those
//! that take effect only after a restart.
//!
//! Applied at run time:
//!
//! - through [`portcullis_gateway::RunningGateway::reload`], the services'
//!   routes, upstream URLs and `upstream_http2`, and the `[gateway]` limits
//!   and rates except `busy_poll_window`;
//! - through [`portcullis_token::server::TokenService::reload_services`],
//!   the service names and scopes that tokens are issued for and grants
//!   accepted for;
//! - the spaces: their services for the gateway, their egress host lists
//!   for the egress proxy's app rules, both rebuilt at once;
//! - through [`portcullis_egress::proxy::Proxy::reload_rules`], the
//!   `[egress]` rules and timeouts except `static_hosts`,
//!   `max_tunnels_per_app` and `max_bytes_per_app`.
//!
//! Everything else is read once when the platform starts. A reload that
//! changes it logs a warning naming the setting and leaves the running
//! value in force.

use portcullis_config::PlatformConfig;
use serde::Serialize;

/// The result of a reload that was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadOutcome {
    /// Configuration keys whose new value differs from the running one but
    /// needs a restart, such as `listeners`. Empty when the new
    /// configuration was applied in full.
    pub restart_required: Vec<&'static str>,
}

/// Returns the keys that differ between `running` (the configuration the
/// platform started with) and `next` and that only a restart applies.
pub(crate) fn restart_required_changes(running: &PlatformConfig, next: &PlatformConfig) -> Vec<&'static str> {
    let (egress, next_egress) = (&running.egress, &next.egress);
    let sections: [(&'static str, bool); 12] = [
        ("trust_domain", running.trust_domain != next.trust_domain),
        ("data_dir", running.data_dir != next.data_dir),
        ("store.url", running.store_url != next.store_url),
        ("listeners", differs(&running.listeners, &next.listeners)),
        ("identity", differs(&running.identity, &next.identity)),
        ("token", differs(&running.token, &next.token)),
        ("guard", differs(&running.guard, &next.guard)),
        ("egress.static_hosts", differs(&egress.static_hosts, &next_egress.static_hosts)),
        ("egress.max_tunnels_per_app", egress.max_tunnels_per_app != next_egress.max_tunnels_per_app),
        ("egress.max_bytes_per_app", egress.max_bytes_per_app != next_egress.max_bytes_per_app),
        ("runtime", differs(&running.runtime, &next.runtime)),
        ("gateway.busy_poll_window", running.gateway.busy_poll_window != next.gateway.busy_poll_window),
    ];
    sections.into_iter().filter(|(_, changed)| *changed).map(|(key, _)| key).collect()
}

/// Compares two settings by their serialised form, because the
/// configuration types implement `Serialize` but not `PartialEq`. A value
/// that fails to serialise counts as changed, so its change is reported.
fn differs<T: Serialize>(running: &T, next: &T) -> bool {
    match (serde_json::to_value(running), serde_json::to_value(next)) {
        (Ok(running), Ok(next)) => running != next,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> PlatformConfig {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/weather-platform/platform.toml");
        portcullis_config::load(&path).unwrap()
    }

    #[test]
    fn run_time_changes_need_no_restart() {
        let running = example();
        let mut next = example();
        next.services[0].routes[0].prefix = "/weather/".to_owned();
        next.services[0].upstream = "https://127.0.0.1:9999".to_owned();
        next.gateway.rate_per_second = 1.0;
        next.gateway.max_body_bytes = 10;
        next.services[1].scopes.push("records:admin".to_owned());
        next.spaces.get_mut(&portcullis_config::SpaceName::Sandbox).unwrap().services.push("records".to_owned());
        next.spaces.get_mut(&portcullis_config::SpaceName::Sandbox).unwrap().egress_allow_hosts = None;
        next.egress.allow_ports.push(8080);
        next.egress.idle_timeout = std::time::Duration::from_secs(5);

        assert_eq!(restart_required_changes(&running, &next), Vec::<&str>::new());
    }

    #[test]
    fn start_only_changes_are_named() {
        let running = example();
        let mut next = example();
        next.listeners.gateway = "127.0.0.1:1".parse().unwrap();
        next.token.rate_burst += 1;
        next.egress.max_tunnels_per_app += 1;
        next.egress.static_hosts.clear();
        next.gateway.busy_poll_window = std::time::Duration::from_micros(200);

        assert_eq!(
            restart_required_changes(&running, &next),
            ["listeners", "token", "egress.static_hosts", "egress.max_tunnels_per_app", "gateway.busy_poll_window"]
        );
    }
}
