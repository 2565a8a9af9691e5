//! Services, their scopes and routes.

use std::collections::BTreeMap;

use super::*;
use crate::model::*;
use crate::raw::*;

pub(super) fn services(check: &Checker, raw: &[RawService]) -> Result<Vec<Service>> {
    let mut services: Vec<Service> = Vec::new();
    let mut route_owners: BTreeMap<(String, String), String> = BTreeMap::new();

    for (index, service) in raw.iter().enumerate() {
        let key = format!("services[{index}]");
        check_dns_label(&service.name).map_err(|rule| {
            check.invalid(format!("{key}.name"), quote(&service.name), format!("a lowercase DNS label: {rule}"))
        })?;
        if services.iter().any(|s| s.name == service.name) {
            return Err(check.invalid(
                format!("{key}.name"),
                quote(&service.name),
                "a name not used by another service",
            ));
        }

        let upstream = upstream(check, &format!("{key}.upstream"), &service.upstream)?;
        let upstream_http2 = service.upstream_http2.unwrap_or(false);
        if upstream_http2 && !upstream.starts_with("https://") {
            return Err(check.invalid(
                format!("{key}.upstream_http2"),
                "true",
                "false for an http:// upstream, because HTTP/2 needs TLS here (h2c is not supported)",
            ));
        }
        let scopes = scopes(check, &key, &service.name, &service.scopes)?;

        let mut routes = Vec::new();
        for (route_index, route) in service.routes.iter().enumerate() {
            let route_key = format!("{key}.routes[{route_index}]");
            let route = self::route(check, &route_key, route, &scopes)?;
            let methods: Vec<String> = if route.methods.is_empty() { vec!["*".into()] } else { route.methods.clone() };
            for method in methods {
                let slot = (route.prefix.clone(), method.clone());
                if let Some(owner) = route_owners.get(&slot) {
                    return Err(check.invalid(
                        format!("{route_key}.prefix"),
                        quote(&route.prefix),
                        format!("a prefix and method ({method}) not already routed by {owner}"),
                    ));
                }
                route_owners.insert(slot, route_key.clone());
            }
            routes.push(route);
        }

        // The same ranges as gateway.rate_per_second and gateway.rate_burst.
        let rate_per_second = match service.rate_per_second {
            Some(rate) => Some(check.float(
                &format!("{key}.rate_per_second"),
                Some(rate),
                rate,
                0.001,
                1_000_000.0,
                "requests per second",
            )?),
            None => None,
        };
        let rate_burst = match service.rate_burst {
            Some(burst) => {
                Some(check.integer(&format!("{key}.rate_burst"), Some(burst), burst, 1, 1_000_000, "requests")? as u32)
            }
            None => None,
        };

        services.push(Service {
            name: service.name.clone(),
            upstream,
            upstream_http2,
            rate_per_second,
            rate_burst,
            scopes,
            routes,
        });
    }

    // A route for every method overlaps every method-specific route of the
    // same prefix: the router could not tell which scope applies.
    for ((prefix, method), owner) in &route_owners {
        if method != "*" {
            if let Some(other) = route_owners.get(&(prefix.clone(), "*".into())) {
                return Err(check.invalid(
                    format!("{owner}.prefix"),
                    quote(prefix),
                    format!("a prefix not also routed for every method by {other}"),
                ));
            }
        }
    }
    Ok(services)
}

pub(super) fn upstream(check: &Checker, key: &str, text: &str) -> Result<String> {
    let expected = "an http:// or https:// URL with a host, without user info, query or fragment";
    let url = url::Url::parse(text).map_err(|_| check.invalid(key, quote(&redact_userinfo(text)), expected))?;
    let valid = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none();
    if !valid {
        return Err(check.invalid(key, quote(&redact_userinfo(text)), expected));
    }

    // The gateway sends each request's app id and scopes to the service.
    // Over a network that must be mutual TLS, so plain HTTP is accepted only
    // where the request never leaves the host.
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if url.scheme() == "http" && !loopback {
        return Err(check.invalid(
            key,
            quote(text),
            "an https:// URL, because the gateway reaches services over mutual TLS; http:// is accepted only for a loopback address or localhost",
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

pub(super) fn scopes(check: &Checker, key: &str, service: &str, raw: &[String]) -> Result<Vec<String>> {
    if raw.is_empty() {
        return Err(check.invalid(
            format!("{key}.scopes"),
            "[]",
            format!("at least one scope such as \"{service}:read\""),
        ));
    }
    let mut scopes = Vec::new();
    for (index, scope) in raw.iter().enumerate() {
        let scope_key = format!("{key}.scopes[{index}]");
        let action = scope.strip_prefix(service).and_then(|rest| rest.strip_prefix(':'));
        let valid = action.is_some_and(|action| {
            !action.is_empty()
                && action
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
        });
        if !valid {
            return Err(check.invalid(
                scope_key,
                quote(scope),
                format!("\"{service}:<action>\" with an action of lowercase letters, digits, '-', '_' or '.'"),
            ));
        }
        if scopes.contains(scope) {
            return Err(check.invalid(scope_key, quote(scope), "a scope not listed twice"));
        }
        scopes.push(scope.clone());
    }
    Ok(scopes)
}

/// Checks that a route prefix is already canonical, so that the gateway's
/// path canonicalisation can never produce a spelling that a prefix was
/// written to catch but does not match.
pub(super) fn canonical_prefix_problem(prefix: &str) -> Option<&'static str> {
    if !prefix.starts_with('/') {
        return Some("starts with '/'");
    }
    if prefix.contains("//") {
        return Some("contains no \"//\"");
    }
    if prefix.split('/').any(|segment| segment == "." || segment == "..") {
        return Some("contains no \".\" or \"..\" segment");
    }
    if prefix.chars().any(|c| matches!(c, '%' | ';' | '\\' | '?' | '#') || c.is_control() || c.is_whitespace()) {
        return Some("contains no '%', ';', '\\', '?', '#', space or control character");
    }
    if !prefix.is_ascii() {
        return Some("is ASCII (percent-encoding is not accepted in prefixes)");
    }
    None
}

pub(super) fn route(check: &Checker, key: &str, raw: &RawRoute, scopes: &[String]) -> Result<Route> {
    if let Some(rule) = canonical_prefix_problem(&raw.prefix) {
        return Err(check.invalid(
            format!("{key}.prefix"),
            quote(&raw.prefix),
            format!("a canonical path prefix that {rule}"),
        ));
    }

    let mut methods = Vec::new();
    for (index, method) in raw.methods.iter().flatten().enumerate() {
        if !METHODS.contains(&method.as_str()) {
            return Err(check.invalid(
                format!("{key}.methods[{index}]"),
                quote(method),
                format!("one of {}", METHODS.join(", ")),
            ));
        }
        if methods.contains(method) {
            return Err(check.invalid(format!("{key}.methods[{index}]"), quote(method), "a method not listed twice"));
        }
        methods.push(method.clone());
    }
    if raw.methods.as_ref().is_some_and(Vec::is_empty) {
        return Err(check.invalid(
            format!("{key}.methods"),
            "[]",
            "at least one method, or no methods key for every method",
        ));
    }

    if !scopes.contains(&raw.scope) {
        return Err(check.invalid(
            format!("{key}.scope"),
            quote(&raw.scope),
            format!("one of the service's scopes: {}", scopes.join(", ")),
        ));
    }
    Ok(Route { prefix: raw.prefix.clone(), methods, scope: raw.scope.clone() })
}

/// Replaces the user info of a URL-like text with `***`, so an error never
/// echoes a password written into a URL.
pub(super) fn redact_userinfo(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => text.to_owned(),
    }
}
