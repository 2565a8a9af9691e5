//! Turns the raw file into a [`PlatformConfig`], checking every range and
//! reference. Each check returns the first problem as one [`ConfigError`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::model::*;
use crate::raw::*;
use crate::ConfigError;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// HTTP methods a route may name (RFC 9110 section 9 plus PATCH).
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
];

type Result<T> = std::result::Result<T, ConfigError>;

struct Checker<'a> {
    file: &'a Path,
}

impl Checker<'_> {
    fn invalid(&self, key: impl Into<String>, value: impl Into<String>, expected: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            key: key.into(),
            value: value.into(),
            expected: expected.into(),
        }
    }

    fn duration(&self, key: &str, value: Option<&str>, default: Duration, min: Duration, max: Duration) -> Result<Duration> {
        let Some(text) = value else {
            return Ok(default);
        };
        let expected = || {
            format!(
                "a duration from {} to {}, written with a unit such as \"30s\", \"10m\" or \"1h\"",
                display_duration(min),
                display_duration(max)
            )
        };
        let parsed = humantime::parse_duration(text).map_err(|_| self.invalid(key, quote(text), expected()))?;
        if parsed < min || parsed > max {
            return Err(self.invalid(key, quote(text), expected()));
        }
        Ok(parsed)
    }

    fn integer(&self, key: &str, value: Option<i64>, default: i64, min: i64, max: i64, unit: &str) -> Result<u64> {
        let value = value.unwrap_or(default);
        if value < min || value > max {
            return Err(self.invalid(key, value.to_string(), format!("an integer from {min} to {max} ({unit})")));
        }
        Ok(value as u64)
    }

    fn float(&self, key: &str, value: Option<f64>, default: f64, min: f64, max: f64, unit: &str) -> Result<f64> {
        let value = value.unwrap_or(default);
        if !(value.is_finite() && value >= min && value <= max) {
            return Err(self.invalid(key, value.to_string(), format!("a number from {min} to {max} ({unit})")));
        }
        Ok(value)
    }

    fn one_of<T: Copy>(&self, key: &str, value: Option<&str>, default: T, choices: &[(&str, T)]) -> Result<T> {
        let Some(text) = value else {
            return Ok(default);
        };
        choices
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, choice)| *choice)
            .ok_or_else(|| {
                let names: Vec<String> = choices.iter().map(|(name, _)| quote(name)).collect();
                self.invalid(key, quote(text), format!("one of {}", names.join(", ")))
            })
    }
}

/// Formats a duration in the largest whole unit, as the file spells it.
fn display_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    let units = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1000, "s")];
    for (size, unit) in units {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn quote(text: &str) -> String {
    format!("{text:?}")
}

pub(crate) fn validate(file: &Path, raw: RawConfig) -> Result<PlatformConfig> {
    let check = Checker { file };

    let trust_domain = trust_domain(&check, &raw.trust_domain)?;
    let data_dir = data_dir(&check, file, raw.data_dir.as_deref())?;
    let store_url = store_url(&check, raw.store.url)?;
    let listeners = listeners(&check, &raw.listeners)?;
    let identity = identity(&check, &raw.identity)?;
    let services = services(&check, &raw.services)?;
    let egress = egress(&check, &raw.egress)?;
    let spaces = spaces(&check, &raw.spaces, &services, &egress)?;
    let gateway = gateway(&check, &raw.gateway)?;
    let guard = guard(&check, &raw.guard)?;
    let runtime = runtime(&check, &raw.runtime)?;

    Ok(PlatformConfig {
        source: file.to_owned(),
        trust_domain,
        data_dir,
        store_url,
        listeners,
        identity,
        services,
        spaces,
        gateway,
        guard,
        egress,
        runtime,
    })
}

fn trust_domain(check: &Checker, value: &str) -> Result<String> {
    let expected = "a lowercase DNS name such as \"platform.example\" (letters, digits, '-' and '.')";
    if value.len() > 253 || value.split('.').any(|label| check_dns_label(label).is_err()) {
        return Err(check.invalid("trust_domain", quote(value), expected));
    }
    Ok(value.to_owned())
}

fn data_dir(check: &Checker, file: &Path, value: Option<&str>) -> Result<Option<PathBuf>> {
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

fn store_url(check: &Checker, value: Option<String>) -> Result<Option<String>> {
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

fn listeners(check: &Checker, raw: &RawListeners) -> Result<Listeners> {
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
        operator: address("operator", &raw.operator)?,
    };

    let all = [
        ("gateway", listeners.gateway),
        ("egress", listeners.egress),
        ("token", listeners.token),
        ("operator", listeners.operator),
    ];
    for (index, (key, address)) in all.iter().enumerate() {
        if address.port() == 0 {
            return Err(check.invalid(format!("listeners.{key}"), quote(&address.to_string()), "a port from 1 to 65535"));
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

fn identity(check: &Checker, raw: &RawIdentity) -> Result<IdentitySettings> {
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

fn services(check: &Checker, raw: &[RawService]) -> Result<Vec<Service>> {
    let mut services: Vec<Service> = Vec::new();
    let mut route_owners: BTreeMap<(String, String), String> = BTreeMap::new();

    for (index, service) in raw.iter().enumerate() {
        let key = format!("services[{index}]");
        check_dns_label(&service.name)
            .map_err(|rule| check.invalid(format!("{key}.name"), quote(&service.name), format!("a lowercase DNS label: {rule}")))?;
        if services.iter().any(|s| s.name == service.name) {
            return Err(check.invalid(format!("{key}.name"), quote(&service.name), "a name not used by another service"));
        }

        let upstream = upstream(check, &format!("{key}.upstream"), &service.upstream)?;
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

        services.push(Service { name: service.name.clone(), upstream, scopes, routes });
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

fn upstream(check: &Checker, key: &str, text: &str) -> Result<String> {
    let expected = "an http:// or https:// URL with a host, without user info, query or fragment";
    let url = url::Url::parse(text).map_err(|_| check.invalid(key, quote(text), expected))?;
    let valid = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none();
    if !valid {
        return Err(check.invalid(key, quote(text), expected));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

fn scopes(check: &Checker, key: &str, service: &str, raw: &[String]) -> Result<Vec<String>> {
    if raw.is_empty() {
        return Err(check.invalid(format!("{key}.scopes"), "[]", format!("at least one scope such as \"{service}:read\"")));
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
fn canonical_prefix_problem(prefix: &str) -> Option<&'static str> {
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

fn route(check: &Checker, key: &str, raw: &RawRoute, scopes: &[String]) -> Result<Route> {
    if let Some(rule) = canonical_prefix_problem(&raw.prefix) {
        return Err(check.invalid(format!("{key}.prefix"), quote(&raw.prefix), format!("a canonical path prefix that {rule}")));
    }

    let mut methods = Vec::new();
    for (index, method) in raw.methods.iter().flatten().enumerate() {
        if !METHODS.contains(&method.as_str()) {
            return Err(check.invalid(format!("{key}.methods[{index}]"), quote(method), format!("one of {}", METHODS.join(", "))));
        }
        if methods.contains(method) {
            return Err(check.invalid(format!("{key}.methods[{index}]"), quote(method), "a method not listed twice"));
        }
        methods.push(method.clone());
    }
    if raw.methods.as_ref().is_some_and(Vec::is_empty) {
        return Err(check.invalid(format!("{key}.methods"), "[]", "at least one method, or no methods key for every method"));
    }

    if !scopes.contains(&raw.scope) {
        return Err(check.invalid(format!("{key}.scope"), quote(&raw.scope), format!("one of the service's scopes: {}", scopes.join(", "))));
    }
    Ok(Route { prefix: raw.prefix.clone(), methods, scope: raw.scope.clone() })
}

fn spaces(
    check: &Checker,
    raw: &BTreeMap<String, RawSpace>,
    services: &[Service],
    egress: &EgressSettings,
) -> Result<BTreeMap<SpaceName, Space>> {
    let mut spaces = BTreeMap::new();
    for (name, space) in raw {
        let key = format!("spaces.{name}");
        let space_name = match name.as_str() {
            "live" => SpaceName::Live,
            "sandbox" => SpaceName::Sandbox,
            _ => return Err(check.invalid(key, quote(name), "a space named \"live\" or \"sandbox\"")),
        };

        for (index, service) in space.services.iter().enumerate() {
            if !services.iter().any(|s| &s.name == service) {
                let defined: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
                return Err(check.invalid(
                    format!("{key}.services[{index}]"),
                    quote(service),
                    format!("a service defined under [[services]]: {}", defined.join(", ")),
                ));
            }
        }

        let egress_allow_hosts = match &space.egress_allow_hosts {
            None => None,
            Some(hosts) => {
                let mut patterns = Vec::new();
                for (index, host) in hosts.iter().enumerate() {
                    let host_key = format!("{key}.egress_allow_hosts[{index}]");
                    let pattern = host_pattern(check, &host_key, host)?;
                    if !egress.allow_hosts.iter().any(|platform| covers(platform, &pattern)) {
                        return Err(check.invalid(
                            host_key,
                            quote(host),
                            "a host also allowed by egress.allow_hosts (a space can only narrow the platform's list)",
                        ));
                    }
                    patterns.push(pattern);
                }
                Some(patterns)
            }
        };

        spaces.insert(space_name, Space { services: space.services.clone(), egress_allow_hosts });
    }
    if !spaces.contains_key(&SpaceName::Live) {
        return Err(check.invalid("spaces", "(no [spaces.live] table)", "a [spaces.live] table listing the services live apps may reach"));
    }
    Ok(spaces)
}

/// Returns whether every name matched by `inner` is matched by `outer`.
fn covers(outer: &HostPattern, inner: &HostPattern) -> bool {
    match (outer, inner) {
        (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
        (HostPattern::Exact(_), HostPattern::Suffix(_)) => false,
        (HostPattern::Suffix(domain), HostPattern::Exact(name) | HostPattern::Suffix(name)) => {
            name.strip_suffix(domain.as_str()).is_some_and(|rest| rest.ends_with('.'))
                || (matches!(inner, HostPattern::Suffix(_)) && name == domain)
        }
    }
}

/// Parses a host rule: an exact name or `*.` followed by a domain, in the
/// normalised form the proxy compares against (lowercase IDNA A-labels, no
/// trailing dot). A non-normalised spelling is rejected with the normalised
/// one suggested, so the file always shows what is matched.
fn host_pattern(check: &Checker, key: &str, text: &str) -> Result<HostPattern> {
    let (wildcard, name) = match text.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if name.is_empty() || name == "*" || text == "*" {
        return Err(check.invalid(key, quote(text), "a host name or \"*.domain\"; a rule matching every host is not accepted"));
    }
    if name.contains('*') {
        return Err(check.invalid(key, quote(text), "'*' only as a leading \"*.\" label, such as \"*.example.org\""));
    }
    if name.parse::<IpAddr>().is_ok() || name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok() {
        return Err(check.invalid(key, quote(text), "a host name; list IP addresses in allow_cidrs or deny_cidrs"));
    }

    let normalised = idna::domain_to_ascii(name.trim_end_matches('.')).unwrap_or_default();
    let valid = !normalised.is_empty()
        && normalised.len() <= 253
        && normalised.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        return Err(check.invalid(key, quote(text), "a host name of letters, digits and '-' in dot-separated labels"));
    }
    if normalised != name {
        let suggestion = if wildcard { format!("*.{normalised}") } else { normalised };
        return Err(check.invalid(key, quote(text), format!("the normalised spelling {}", quote(&suggestion))));
    }
    if wildcard && !name.contains('.') {
        return Err(check.invalid(key, quote(text), "a wildcard below a domain of at least two labels, such as \"*.example.org\""));
    }

    Ok(if wildcard { HostPattern::Suffix(name.to_owned()) } else { HostPattern::Exact(name.to_owned()) })
}

fn host_list(check: &Checker, key: &str, raw: &[String]) -> Result<Vec<HostPattern>> {
    raw.iter()
        .enumerate()
        .map(|(index, host)| host_pattern(check, &format!("{key}[{index}]"), host))
        .collect()
}

fn cidr_list(check: &Checker, key: &str, raw: &[String]) -> Result<Vec<IpNet>> {
    let mut nets = Vec::new();
    for (index, text) in raw.iter().enumerate() {
        let key = format!("{key}[{index}]");
        let net: IpNet = text
            .parse()
            .map_err(|_| check.invalid(&key, quote(text), "a CIDR range such as \"203.0.113.0/24\" or \"2001:db8::/32\""))?;
        if net.trunc() != net {
            return Err(check.invalid(&key, quote(text), format!("the network address {}", quote(&net.trunc().to_string()))));
        }
        if net.prefix_len() == 0 {
            return Err(check.invalid(&key, quote(text), "a range narrower than every address"));
        }
        nets.push(net);
    }
    Ok(nets)
}

fn egress(check: &Checker, raw: &RawEgress) -> Result<EgressSettings> {
    let mode = check.one_of("egress.mode", raw.mode.as_deref(), Mode::Enforce, &[("enforce", Mode::Enforce), ("report", Mode::Report)])?;

    let mut allow_ports = Vec::new();
    for (index, port) in raw.allow_ports.clone().unwrap_or_else(|| vec![80, 443]).into_iter().enumerate() {
        let port = check.integer(&format!("egress.allow_ports[{index}]"), Some(port), 0, 1, 65_535, "TCP port")?;
        allow_ports.push(port as u16);
    }

    let countries = match &raw.countries {
        None => None,
        Some(countries) => Some(country_rule(check, countries)?),
    };

    Ok(EgressSettings {
        mode,
        allow_hosts: host_list(check, "egress.allow_hosts", &raw.allow_hosts)?,
        allow_cidrs: cidr_list(check, "egress.allow_cidrs", &raw.allow_cidrs)?,
        allow_ports,
        deny_hosts: host_list(check, "egress.deny_hosts", &raw.deny_hosts)?,
        deny_cidrs: cidr_list(check, "egress.deny_cidrs", &raw.deny_cidrs)?,
        connect_timeout: check.duration("egress.connect_timeout", raw.connect_timeout.as_deref(), Duration::from_secs(5), Duration::from_millis(100), MINUTE * 2)?,
        idle_timeout: check.duration("egress.idle_timeout", raw.idle_timeout.as_deref(), MINUTE, Duration::from_secs(1), HOUR)?,
        max_tunnel_lifetime: check.duration("egress.max_tunnel_lifetime", raw.max_tunnel_lifetime.as_deref(), HOUR, Duration::from_secs(1), DAY)?,
        max_tunnels_per_app: check.integer("egress.max_tunnels_per_app", raw.max_tunnels_per_app, 32, 1, 10_000, "tunnels")? as u32,
        countries,
    })
}

fn country_rule(check: &Checker, raw: &RawCountries) -> Result<CountryRule> {
    let (allow, codes, key) = match (&raw.allow, &raw.deny) {
        (Some(codes), None) => (true, codes, "egress.countries.allow"),
        (None, Some(codes)) => (false, codes, "egress.countries.deny"),
        _ => {
            return Err(check.invalid("egress.countries", "(both or neither of allow and deny set)", "exactly one of allow or deny"));
        }
    };
    if codes.is_empty() {
        return Err(check.invalid(key, "[]", "at least one ISO 3166-1 alpha-2 country code"));
    }
    for (index, code) in codes.iter().enumerate() {
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(check.invalid(format!("{key}[{index}]"), quote(code), "an upper-case ISO 3166-1 alpha-2 code such as \"DE\""));
        }
    }
    if raw.database.is_empty() {
        return Err(check.invalid("egress.countries.database", "\"\"", "the path of a MaxMind-format (.mmdb) database"));
    }
    Ok(CountryRule { database: PathBuf::from(&raw.database), allow, codes: codes.clone() })
}

fn gateway(check: &Checker, raw: &RawGateway) -> Result<GatewaySettings> {
    Ok(GatewaySettings {
        max_header_bytes: check.integer("gateway.max_header_bytes", raw.max_header_bytes, 16 * 1024, 1024, 1024 * 1024, "bytes")?,
        max_body_bytes: check.integer("gateway.max_body_bytes", raw.max_body_bytes, 1024 * 1024, 0, 1024 * 1024 * 1024, "bytes")?,
        header_read_timeout: check.duration("gateway.header_read_timeout", raw.header_read_timeout.as_deref(), Duration::from_secs(10), Duration::from_millis(100), MINUTE * 5)?,
        upstream_timeout: check.duration("gateway.upstream_timeout", raw.upstream_timeout.as_deref(), Duration::from_secs(30), Duration::from_millis(100), HOUR)?,
        rate_per_second: check.float("gateway.rate_per_second", raw.rate_per_second, 50.0, 0.001, 1_000_000.0, "requests per second")?,
        rate_burst: check.integer("gateway.rate_burst", raw.rate_burst, 100, 1, 1_000_000, "requests")? as u32,
    })
}

fn guard(check: &Checker, raw: &RawGuard) -> Result<GuardSettings> {
    let mut exempt_apps = Vec::new();
    for (index, app) in raw.exempt_apps.iter().enumerate() {
        let id = AppId::parse(app)
            .map_err(|rule| check.invalid(format!("guard.exempt_apps[{index}]"), quote(app), format!("an app id: {rule}")))?;
        exempt_apps.push(id);
    }
    let max_ban = check.duration("guard.max_ban", raw.max_ban.as_deref(), DAY * 7, MINUTE, DAY * 365)?;

    let mut policies: Vec<Policy> = Vec::new();
    for (index, policy) in raw.policies.iter().enumerate() {
        let policy = self::policy(check, &format!("guard.policies[{index}]"), policy)?;
        if policies.iter().any(|p| p.name == policy.name) {
            return Err(check.invalid(format!("guard.policies[{index}].name"), quote(&policy.name), "a name not used by another policy"));
        }
        if policy.duration > max_ban {
            return Err(check.invalid(
                format!("guard.policies[{index}].duration"),
                quote(&display_duration(policy.duration)),
                format!("at most guard.max_ban ({})", display_duration(max_ban)),
            ));
        }
        policies.push(policy);
    }
    Ok(GuardSettings { exempt_apps, max_ban, policies })
}

fn policy(check: &Checker, key: &str, raw: &RawPolicy) -> Result<Policy> {
    check_dns_label(&raw.name)
        .map_err(|rule| check.invalid(format!("{key}.name"), quote(&raw.name), format!("a lowercase name: {rule}")))?;

    let signal = match raw.signal.as_str() {
        "responses" => {
            let Some(names) = raw.classes.as_ref().filter(|c| !c.is_empty()) else {
                return Err(check.invalid(
                    format!("{key}.classes"),
                    "(missing value)",
                    format!("a list of outcome classes for signal \"responses\": {}", OutcomeClass::NAMES.join(", ")),
                ));
            };
            let mut classes = BTreeSet::new();
            for (index, name) in names.iter().enumerate() {
                let class = OutcomeClass::parse(name).ok_or_else(|| {
                    check.invalid(format!("{key}.classes[{index}]"), quote(name), format!("one of {}", OutcomeClass::NAMES.join(", ")))
                })?;
                classes.insert(class);
            }
            Signal::Responses(classes.into_iter().collect())
        }
        "requests" | "bytes" | "egress_violations" => {
            if raw.classes.is_some() {
                return Err(check.invalid(format!("{key}.classes"), "(key present)", "no classes unless signal is \"responses\""));
            }
            match raw.signal.as_str() {
                "requests" => Signal::Requests,
                "bytes" => Signal::Bytes,
                _ => Signal::EgressViolations,
            }
        }
        other => {
            return Err(check.invalid(format!("{key}.signal"), quote(other), "one of \"responses\", \"requests\", \"bytes\", \"egress_violations\""));
        }
    };

    let threshold = check.integer(&format!("{key}.threshold"), Some(raw.threshold), 0, 1, 1_000_000_000, "events in the window")?;
    let window = check.duration(&format!("{key}.window"), Some(&raw.window), MINUTE, Duration::from_secs(1), DAY)?;
    let duration = check.duration(&format!("{key}.duration"), Some(&raw.duration), HOUR, Duration::from_secs(1), DAY * 365)?;

    let action = match raw.action.as_str() {
        "ban" => {
            if raw.throttle_per_second.is_some() {
                return Err(check.invalid(format!("{key}.throttle_per_second"), "(key present)", "no throttle_per_second unless action is \"throttle\""));
            }
            Action::Ban
        }
        "throttle" => {
            let Some(rate) = raw.throttle_per_second else {
                return Err(check.invalid(format!("{key}.throttle_per_second"), "(missing value)", "requests per second allowed while throttled, such as 1.0"));
            };
            let per_second = check.float(&format!("{key}.throttle_per_second"), Some(rate), 0.0, 0.001, 1_000_000.0, "requests per second")?;
            Action::Throttle { per_second }
        }
        other => return Err(check.invalid(format!("{key}.action"), quote(other), "\"ban\" or \"throttle\"")),
    };

    let mode = check.one_of(&format!("{key}.mode"), raw.mode.as_deref(), Mode::Enforce, &[("enforce", Mode::Enforce), ("report", Mode::Report)])?;

    Ok(Policy { name: raw.name.clone(), signal, threshold, window, action, duration, mode })
}

fn runtime(check: &Checker, raw: &RawRuntime) -> Result<RuntimeSettings> {
    let driver = check.one_of("runtime.driver", Some(&raw.driver), Driver::Docker, &[("docker", Driver::Docker), ("process", Driver::Process)])?;
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
        seccomp: check.one_of(&key("seccomp"), h.seccomp.as_deref(), Seccomp::Default, &[("default", Seccomp::Default), ("strict", Seccomp::Strict)])?,
        log_max_mib: check.integer(&key("log_max_mib"), h.log_max_mib, 10, 1, 10 * 1024, "MiB")?,
        log_max_files: check.integer(&key("log_max_files"), h.log_max_files, 3, 1, 100, "files")?,
        restart_max: check.integer(&key("restart_max"), h.restart_max, 3, 0, 100, "restarts")?,
        uid_base: check.integer(&key("uid_base"), h.uid_base, 200_000, 10_000, 2_000_000_000, "UID")? as u32,
    };
    Ok(RuntimeSettings { driver, hardening })
}
