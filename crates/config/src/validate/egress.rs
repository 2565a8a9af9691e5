//! Egress rules, host patterns and spaces.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::*;
use crate::model::*;
use crate::raw::*;

pub(super) fn spaces(
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
        return Err(check.invalid(
            "spaces",
            "(no [spaces.live] table)",
            "a [spaces.live] table listing the services live apps may reach",
        ));
    }
    Ok(spaces)
}

/// Returns whether every name matched by `inner` is matched by `outer`.
pub(super) fn covers(outer: &HostPattern, inner: &HostPattern) -> bool {
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
pub(super) fn host_pattern(check: &Checker, key: &str, text: &str) -> Result<HostPattern> {
    let (wildcard, name) = match text.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if name.is_empty() || name == "*" || text == "*" {
        return Err(check.invalid(
            key,
            quote(text),
            "a host name or \"*.domain\"; a rule matching every host is not accepted",
        ));
    }
    if name.contains('*') {
        return Err(check.invalid(key, quote(text), "'*' only as a leading \"*.\" label, such as \"*.example.org\""));
    }
    if name.parse::<IpAddr>().is_ok() || name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok() {
        return Err(check.invalid(key, quote(text), "a host name; list IP addresses in allow_cidrs or deny_cidrs"));
    }

    if let Some(last) = name.trim_end_matches('.').rsplit('.').next().filter(|label| is_number_label(label)) {
        return Err(check.invalid(
            key,
            quote(text),
            format!(
                "a host name whose last label is not a number; clients read a name ending in {} as an IPv4 address, so list addresses in allow_cidrs or deny_cidrs",
                quote(last)
            ),
        ));
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
        return Err(check.invalid(
            key,
            quote(text),
            "a wildcard below a domain of at least two labels, such as \"*.example.org\"",
        ));
    }

    Ok(if wildcard { HostPattern::Suffix(name.to_owned()) } else { HostPattern::Exact(name.to_owned()) })
}

/// Returns true for a label that the WHATWG URL Standard's host parser
/// reads as a number (decimal digits, or `0x` and hex digits), which makes
/// the whole host an IPv4 address, as in `127.1` or `0x7f.1`.
fn is_number_label(label: &str) -> bool {
    let hex = label.strip_prefix("0x").or_else(|| label.strip_prefix("0X"));
    match hex {
        Some(digits) => digits.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()),
    }
}

pub(super) fn host_list(check: &Checker, key: &str, raw: &[String]) -> Result<Vec<HostPattern>> {
    raw.iter().enumerate().map(|(index, host)| host_pattern(check, &format!("{key}[{index}]"), host)).collect()
}

/// Parses an allow-list of host rules, rejecting a wildcard `*.D` when `D`
/// is a public suffix or has one below it (`*.co.uk`, `*.github.io`,
/// `*.amazonaws.com` with `s3.amazonaws.com` below it). Names under a
/// public suffix belong to unrelated owners, so the rule would admit hosts
/// that anyone can register. Deny-lists may use such wildcards.
fn allow_list(check: &Checker, key: &str, raw: &[String]) -> Result<Vec<HostPattern>> {
    let patterns = host_list(check, key, raw)?;
    for (index, pattern) in patterns.iter().enumerate() {
        let HostPattern::Suffix(domain) = pattern else { continue };
        let Some(suffix) = super::public_suffix::suffix_at_or_below(domain) else { continue };
        let expected = if suffix == *domain {
            format!(
                "a wildcard below a registrable domain, such as \"*.example.{domain}\"; {} is a public suffix, under which anyone can register a name",
                quote(domain)
            )
        } else {
            format!(
                "exact host names under {}; {} is a public suffix below it, so the wildcard would admit names that anyone can register",
                quote(domain),
                quote(&suffix)
            )
        };
        return Err(check.invalid(format!("{key}[{index}]"), quote(&raw[index]), expected));
    }
    Ok(patterns)
}

pub(super) fn cidr_list(check: &Checker, key: &str, raw: &[String]) -> Result<Vec<IpNet>> {
    let mut nets = Vec::new();
    for (index, text) in raw.iter().enumerate() {
        let key = format!("{key}[{index}]");
        let net: IpNet = text.parse().map_err(|_| {
            check.invalid(&key, quote(text), "a CIDR range such as \"203.0.113.0/24\" or \"2001:db8::/32\"")
        })?;
        if net.trunc() != net {
            return Err(check.invalid(
                &key,
                quote(text),
                format!("the network address {}", quote(&net.trunc().to_string())),
            ));
        }
        if net.prefix_len() == 0 {
            return Err(check.invalid(&key, quote(text), "a range narrower than every address"));
        }
        // The proxy checks an IPv4-mapped address in a DNS response as the
        // IPv4 address it denotes, so a range in the mapped form never matches.
        if let IpNet::V6(v6) = net {
            let mapped: ipnet::Ipv6Net = "::ffff:0:0/96".parse().expect("valid CIDR");
            if v6.prefix_len() >= 96 && mapped.contains(&v6.network()) {
                let ipv4 = v6.network().to_ipv4_mapped().expect("inside ::ffff:0:0/96");
                let suggestion = format!("{ipv4}/{}", v6.prefix_len() - 96);
                return Err(check.invalid(&key, quote(text), format!("the IPv4 form {}", quote(&suggestion))));
            }
        }
        nets.push(net);
    }
    Ok(nets)
}

/// Smallest `egress.max_bytes_per_app`, 1 MiB: a lower cap would close
/// tunnels after a few TLS handshakes.
const MIN_BYTES_PER_APP: i64 = 1 << 20;

/// Largest `egress.max_bytes_per_app`, 1 PiB.
const MAX_BYTES_PER_APP: i64 = 1 << 50;

/// Default `egress.tunnel_buffer_bytes`, 1 MiB. A larger buffer means fewer
/// read and write calls per byte of a bulk tunnel (measured in
/// docs/benchmarks.md).
const DEFAULT_TUNNEL_BUFFER_BYTES: i64 = 1 << 20;

/// Smallest `egress.tunnel_buffer_bytes`, 16 KiB: about one TLS record,
/// whose plaintext RFC 8446 section 5.1 caps at 16 KiB.
const MIN_TUNNEL_BUFFER_BYTES: i64 = 16 << 10;

/// Largest `egress.tunnel_buffer_bytes`, 16 MiB.
const MAX_TUNNEL_BUFFER_BYTES: i64 = 16 << 20;

pub(super) fn egress(check: &Checker, raw: &RawEgress) -> Result<EgressSettings> {
    let mode = check.one_of(
        "egress.mode",
        raw.mode.as_deref(),
        Mode::Enforce,
        &[("enforce", Mode::Enforce), ("report", Mode::Report)],
    )?;

    let mut allow_ports = Vec::new();
    for (index, port) in raw.allow_ports.clone().unwrap_or_else(|| vec![80, 443]).into_iter().enumerate() {
        let port = check.integer(&format!("egress.allow_ports[{index}]"), Some(port), 0, 1, 65_535, "TCP port")?;
        allow_ports.push(port as u16);
    }

    let countries = match &raw.countries {
        None => None,
        Some(countries) => Some(country_rule(check, countries)?),
    };

    let allow_cidrs = cidr_list(check, "egress.allow_cidrs", &raw.allow_cidrs)?;
    let static_hosts = static_hosts(check, &raw.static_hosts, &allow_cidrs)?;

    Ok(EgressSettings {
        mode,
        allow_hosts: allow_list(check, "egress.allow_hosts", &raw.allow_hosts)?,
        allow_cidrs,
        allow_ports,
        deny_hosts: host_list(check, "egress.deny_hosts", &raw.deny_hosts)?,
        deny_cidrs: cidr_list(check, "egress.deny_cidrs", &raw.deny_cidrs)?,
        static_hosts,
        connect_timeout: check.duration(
            "egress.connect_timeout",
            raw.connect_timeout.as_deref(),
            Duration::from_secs(5),
            Duration::from_millis(100),
            MINUTE * 2,
        )?,
        idle_timeout: check.duration(
            "egress.idle_timeout",
            raw.idle_timeout.as_deref(),
            MINUTE,
            Duration::from_secs(1),
            HOUR,
        )?,
        max_tunnel_lifetime: check.duration(
            "egress.max_tunnel_lifetime",
            raw.max_tunnel_lifetime.as_deref(),
            HOUR,
            Duration::from_secs(1),
            DAY,
        )?,
        max_tunnels_per_app: check.integer(
            "egress.max_tunnels_per_app",
            raw.max_tunnels_per_app,
            32,
            1,
            10_000,
            "tunnels",
        )? as u32,
        tunnel_buffer_bytes: check.integer(
            "egress.tunnel_buffer_bytes",
            raw.tunnel_buffer_bytes,
            DEFAULT_TUNNEL_BUFFER_BYTES,
            MIN_TUNNEL_BUFFER_BYTES,
            MAX_TUNNEL_BUFFER_BYTES,
            "bytes per direction of a tunnel",
        )? as usize,
        max_bytes_per_app: match raw.max_bytes_per_app {
            None => None,
            Some(bytes) => Some(check.integer(
                "egress.max_bytes_per_app",
                Some(bytes),
                0,
                MIN_BYTES_PER_APP,
                MAX_BYTES_PER_APP,
                "bytes per app per hour",
            )?),
        },
        countries,
    })
}

/// Validates `egress.static_hosts`: each key is an exact, normalised host
/// name and each value one IP address inside an `allow_cidrs` entry, so a
/// pinned name can never reach an address the operator did not open
/// explicitly. The unspecified, broadcast and multicast addresses and the
/// cloud metadata addresses are rejected even when a range covers them.
fn static_hosts(
    check: &Checker,
    raw: &BTreeMap<String, String>,
    allow_cidrs: &[IpNet],
) -> Result<BTreeMap<String, IpAddr>> {
    const METADATA: [&str; 2] = ["169.254.169.254", "fd00:ec2::254"];

    let mut hosts = BTreeMap::new();
    for (name, text) in raw {
        let key = format!("egress.static_hosts.{name}");
        if name.starts_with("*.") {
            return Err(check.invalid(&key, quote(name), "an exact host name; wildcards cannot be pinned"));
        }
        host_pattern(check, &key, name)?;

        let address: IpAddr = text
            .parse()
            .map_err(|_| check.invalid(&key, quote(text), "one IP address such as \"127.0.0.1\" or \"::1\""))?;
        let forbidden = address.is_unspecified()
            || address.is_multicast()
            || address == IpAddr::from([255, 255, 255, 255])
            || METADATA.iter().any(|m| m.parse::<IpAddr>().is_ok_and(|m| m == address));
        if forbidden {
            return Err(check.invalid(&key, quote(text), "a unicast address other than a cloud metadata address"));
        }
        if !allow_cidrs.iter().any(|net| net.contains(&address)) {
            return Err(check.invalid(
                &key,
                quote(text),
                format!(
                    "an address inside an egress.allow_cidrs entry; add \"{}\" to egress.allow_cidrs",
                    IpNet::from(address)
                ),
            ));
        }
        hosts.insert(name.clone(), address);
    }
    Ok(hosts)
}

pub(super) fn country_rule(check: &Checker, raw: &RawCountries) -> Result<CountryRule> {
    let (allow, codes, key) = match (&raw.allow, &raw.deny) {
        (Some(codes), None) => (true, codes, "egress.countries.allow"),
        (None, Some(codes)) => (false, codes, "egress.countries.deny"),
        _ => {
            return Err(check.invalid(
                "egress.countries",
                "(both or neither of allow and deny set)",
                "exactly one of allow or deny",
            ));
        }
    };
    if codes.is_empty() {
        return Err(check.invalid(key, "[]", "at least one ISO 3166-1 alpha-2 country code"));
    }
    for (index, code) in codes.iter().enumerate() {
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(check.invalid(
                format!("{key}[{index}]"),
                quote(code),
                "an upper-case ISO 3166-1 alpha-2 code such as \"DE\"",
            ));
        }
    }
    if raw.database.is_empty() {
        return Err(check.invalid(
            "egress.countries.database",
            "\"\"",
            "the path of a MaxMind-format (.mmdb) database",
        ));
    }
    Ok(CountryRule { database: PathBuf::from(&raw.database), allow, codes: codes.clone() })
}
