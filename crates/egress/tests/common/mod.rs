//! Builders shared by the egress integration tests. Nothing here opens a
//! socket: names resolve through fixed answers.

#![allow(dead_code)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_config::{AppId, EgressSettings, HostPattern, Mode, Space, SpaceName};
use portcullis_egress::{AppRules, EgressRules, Engine, Resolve, StaticResolver};

/// A public address used as a resolver answer. It is only classified,
/// never connected to.
pub const PUBLIC_V4: &str = "93.184.216.34";

/// A public IPv6 address, only classified.
pub const PUBLIC_V6: &str = "2606:2800:220:1:248:1893:25c8:1946";

pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap_or_else(|_| panic!("test address {text:?} must parse"))
}

pub fn exact(name: &str) -> HostPattern {
    HostPattern::Exact(name.to_owned())
}

pub fn suffix(domain: &str) -> HostPattern {
    HostPattern::Suffix(domain.to_owned())
}

/// Enforced settings that allow `*.example.org` on ports 80 and 443 and
/// nothing else.
pub fn settings() -> EgressSettings {
    EgressSettings {
        mode: Mode::Enforce,
        allow_hosts: vec![suffix("example.org")],
        allow_cidrs: Vec::new(),
        allow_ports: vec![80, 443],
        deny_hosts: Vec::new(),
        deny_cidrs: Vec::new(),
        static_hosts: Default::default(),
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(60),
        max_tunnel_lifetime: Duration::from_secs(3600),
        max_tunnels_per_app: 4,
        tunnel_buffer_bytes: 1 << 20,
        max_bytes_per_app: None,
        countries: None,
    }
}

pub fn app_id() -> AppId {
    AppId::parse("weather-app").expect("valid app id")
}

pub fn live_space() -> Space {
    Space { services: Vec::new(), egress_allow_hosts: None }
}

pub fn engine(settings: EgressSettings, resolver: impl Resolve + 'static) -> Engine {
    let rules = EgressRules::new(settings).expect("rules build");
    Engine::new(Arc::new(rules), Arc::new(resolver))
}

/// An app that inherits the platform list, in the live space.
pub fn app(engine: &Engine) -> AppRules {
    AppRules::new(engine.rules(), app_id(), SpaceName::Live, &live_space(), None).expect("app rules build")
}

/// A resolver answering `PUBLIC_V4` for the names the tests use.
pub fn public_resolver() -> StaticResolver {
    let mut resolver = StaticResolver::new();
    for name in [
        "example.org",
        "a.example.org",
        "a.b.example.org",
        "api.example.org",
        "www.example.org",
        "bad.example.org",
        "evilexample.org",
        "xn--bcher-kva.example.org",
        "other.test",
    ] {
        resolver = resolver.with(name, &[ip(PUBLIC_V4)]);
    }
    resolver
}
