//! Special-purpose address ranges that an app must not reach unless an
//! operator lists them in `allow_cidrs`.
//!
//! Sources:
//! - IANA IPv4 Special-Purpose Address Registry and IANA IPv6 Special-Purpose
//!   Address Registry (structure defined by RFC 6890, updated by RFC 8190).
//!   Every block the registries mark as not globally reachable is listed,
//!   with the RFC the registry names beside it.
//! - Multicast (224.0.0.0/4, RFC 5771; ff00::/8, RFC 4291) and the
//!   deprecated IPv6 site-local block (fec0::/10, RFC 3879), which the
//!   address-space registries hold rather than the special-purpose ones.
//! - Cloud instance metadata endpoints: 169.254.169.254 (AWS, Google Cloud,
//!   Azure, OpenStack) and fd00:ec2::254 (AWS over IPv6). Both sit inside
//!   ranges already listed, and get their own entry so a denial names them.
//!
//! Some blocks inside 192.0.0.0/24 and 2001::/23 are marked globally
//! reachable (PCP and TURN anycast, AMT, AS112, ORCHIDv2, Drone Remote ID).
//! They are refused with their enclosing block, because no app needs to
//! open a TCP connection to them through a forward proxy.
//!
//! IPv6 forms that embed an IPv4 address are checked by the address they
//! embed: IPv4-mapped (`::ffff:0:0/96`), IPv4-compatible (`::/96`), 6to4
//! (`2002::/16`, RFC 3056) and the well-known NAT64 prefix (`64:ff9b::/96`,
//! RFC 6052). Teredo (`2001::/32`) and the local-use NAT64 prefix
//! (`64:ff9b:1::/48`, RFC 8215) are refused whole, and so is every IPv6
//! address outside `2000::/3`, the only block IANA allocates for global
//! unicast (IANA IPv6 Address Space registry).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::IpNet;

/// One special-purpose address block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialRange {
    /// The block.
    pub net: IpNet,
    /// A stable short id, used in rule ids as `special:<id>`.
    pub id: &'static str,
    /// The registry's name for the block.
    pub name: &'static str,
    /// The RFC or other source that defines the block.
    pub source: &'static str,
}

/// The IPv4 blocks: (CIDR, id, name, source).
const IPV4: &[(&str, &str, &str, &str)] = &[
    ("0.0.0.0/8", "this-network", "\"This network\"", "RFC 791"),
    ("0.0.0.0/32", "unspecified", "\"This host on this network\"", "RFC 1122"),
    ("10.0.0.0/8", "private", "Private-Use", "RFC 1918"),
    ("100.64.0.0/10", "shared-cgnat", "Shared Address Space", "RFC 6598"),
    ("127.0.0.0/8", "loopback", "Loopback", "RFC 1122"),
    ("169.254.0.0/16", "link-local", "Link Local", "RFC 3927"),
    ("169.254.169.254/32", "cloud-metadata", "Cloud instance metadata service", "AWS, Google Cloud, Azure"),
    ("172.16.0.0/12", "private", "Private-Use", "RFC 1918"),
    ("192.0.0.0/24", "ietf-protocol-assignments", "IETF Protocol Assignments", "RFC 6890"),
    ("192.0.2.0/24", "documentation", "Documentation (TEST-NET-1)", "RFC 5737"),
    ("192.88.99.0/24", "6to4-relay-anycast", "Deprecated (6to4 Relay Anycast)", "RFC 7526"),
    ("192.168.0.0/16", "private", "Private-Use", "RFC 1918"),
    ("198.18.0.0/15", "benchmarking", "Benchmarking", "RFC 2544"),
    ("198.51.100.0/24", "documentation", "Documentation (TEST-NET-2)", "RFC 5737"),
    ("203.0.113.0/24", "documentation", "Documentation (TEST-NET-3)", "RFC 5737"),
    ("224.0.0.0/4", "multicast", "Multicast", "RFC 5771"),
    ("240.0.0.0/4", "reserved", "Reserved", "RFC 1112"),
    ("255.255.255.255/32", "broadcast", "Limited Broadcast", "RFC 8190, RFC 919"),
];

/// The IPv6 blocks: (CIDR, id, name, source).
const IPV6: &[(&str, &str, &str, &str)] = &[
    ("::/128", "unspecified", "Unspecified Address", "RFC 4291"),
    ("::1/128", "loopback", "Loopback Address", "RFC 4291"),
    ("::/96", "ipv4-compatible", "IPv4-compatible (deprecated)", "RFC 4291 section 2.5.5.1"),
    ("::ffff:0:0/96", "ipv4-mapped", "IPv4-mapped Address", "RFC 4291"),
    ("64:ff9b::/96", "nat64", "IPv4-IPv6 Translation", "RFC 6052"),
    ("64:ff9b:1::/48", "nat64-local", "IPv4-IPv6 Translation (local use)", "RFC 8215"),
    ("100::/64", "discard-only", "Discard-Only Address Block", "RFC 6666"),
    ("2001::/23", "ietf-protocol-assignments", "IETF Protocol Assignments", "RFC 2928"),
    ("2001::/32", "teredo", "TEREDO", "RFC 4380"),
    ("2001:2::/48", "benchmarking", "Benchmarking", "RFC 5180"),
    ("2001:10::/28", "orchid", "Deprecated (previously ORCHID)", "RFC 4843"),
    ("2001:db8::/32", "documentation", "Documentation", "RFC 3849"),
    ("2002::/16", "6to4", "6to4", "RFC 3056"),
    ("3fff::/20", "documentation", "Documentation", "RFC 9637"),
    ("5f00::/16", "srv6-sid", "Segment Routing (SRv6) SIDs", "RFC 9602"),
    ("fc00::/7", "unique-local", "Unique-Local", "RFC 4193"),
    ("fd00:ec2::254/128", "cloud-metadata", "Cloud instance metadata service", "AWS"),
    ("fe80::/10", "link-local", "Link-Local Unicast", "RFC 4291"),
    ("fec0::/10", "site-local", "Site-local (deprecated)", "RFC 3879"),
    ("ff00::/8", "multicast", "Multicast", "RFC 4291"),
];

/// Blocks whose embedded IPv4 address decides, and whose own entry decides
/// only when the embedded address is public (`None` = the address is then
/// treated as public).
const EMBEDDING: &[(&str, bool)] =
    &[("ipv4-mapped", false), ("nat64", false), ("6to4", false), ("ipv4-compatible", true)];

/// Every special-purpose block, IPv4 first, in table order.
pub static SPECIAL_RANGES: LazyLock<Vec<SpecialRange>> = LazyLock::new(|| {
    IPV4.iter()
        .chain(IPV6)
        .map(|&(cidr, id, name, source)| SpecialRange {
            net: cidr.parse().expect("the special-purpose table contains only valid CIDRs"),
            id,
            name,
            source,
        })
        .collect()
});

/// The special-purpose block an address falls in, and the embedding form it
/// was found through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// The block that decided: for an embedding form, the block of the
    /// embedded IPv4 address.
    pub range: &'static SpecialRange,
    /// The embedding block (`ipv4-mapped`, `6to4`, `nat64`,
    /// `ipv4-compatible`) and the IPv4 address found in it, if the address
    /// was judged by an embedded address.
    pub embedded: Option<(&'static SpecialRange, Ipv4Addr)>,
}

impl Classification {
    /// Returns the rule id: `special:<id>`, or `special:<form>:<id>` for an
    /// embedded address, such as `special:6to4:loopback`.
    pub fn rule_id(&self) -> String {
        match &self.embedded {
            Some((form, _)) => format!("special:{}:{}", form.id, self.range.id),
            None => format!("special:{}", self.range.id),
        }
    }

    /// Returns a sentence naming the address, the block and its source.
    pub fn describe(&self, ip: IpAddr) -> String {
        let range = self.range;
        match &self.embedded {
            Some((form, inner)) => format!(
                "{ip} is a {} address embedding {inner}, which is in {} ({}, {})",
                form.name, range.net, range.name, range.source
            ),
            None => format!("{ip} is in {} ({}, {})", range.net, range.name, range.source),
        }
    }
}

/// Finds the most specific special-purpose block containing `ip`, following
/// embedded IPv4 addresses as the module documentation describes. Returns
/// `None` for an address that may be reached without an explicit CIDR rule.
pub fn classify(ip: IpAddr) -> Option<Classification> {
    let range = longest_match(ip);

    if let (Some(range), IpAddr::V6(v6)) = (range, ip) {
        if let Some(&(_, refuse_when_public)) = EMBEDDING.iter().find(|(id, _)| *id == range.id) {
            let inner = ipv4_in_form(range.id, v6);
            if let Some(inner_class) = classify(IpAddr::V4(inner)) {
                return Some(Classification { range: inner_class.range, embedded: Some((range, inner)) });
            }
            return refuse_when_public.then_some(Classification { range, embedded: None });
        }
    }

    if let Some(range) = range {
        return Some(Classification { range, embedded: None });
    }

    if let IpAddr::V6(v6) = ip {
        if v6.segments()[0] & 0xe000 != 0x2000 {
            return Some(Classification { range: &OUTSIDE_GLOBAL_UNICAST, embedded: None });
        }
    }
    None
}

/// The pseudo-entry for IPv6 addresses outside `2000::/3`.
static OUTSIDE_GLOBAL_UNICAST: LazyLock<SpecialRange> = LazyLock::new(|| SpecialRange {
    net: "::/0".parse().expect("valid CIDR"),
    id: "ipv6-not-global-unicast",
    name: "Outside 2000::/3, the IPv6 global unicast block",
    source: "IANA IPv6 Address Space registry, RFC 4291",
});

fn longest_match(ip: IpAddr) -> Option<&'static SpecialRange> {
    SPECIAL_RANGES.iter().filter(|range| range.net.contains(&ip)).max_by_key(|range| range.net.prefix_len())
}

/// Returns the IPv4 address embedded in an IPv4-mapped, IPv4-compatible,
/// NAT64 (`64:ff9b::/96`) or 6to4 address, or `None` for any other address.
pub fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    let range = longest_match(ip)?;
    EMBEDDING.iter().any(|(id, _)| *id == range.id).then(|| ipv4_in_form(range.id, v6))
}

/// Extracts the IPv4 address inside an embedding form: the low 32 bits for
/// IPv4-mapped, IPv4-compatible and NAT64 /96 (RFC 6052 section 2.2), bits
/// 16 to 47 for 6to4 (RFC 3056 section 2).
fn ipv4_in_form(form: &str, v6: Ipv6Addr) -> Ipv4Addr {
    let octets = v6.octets();
    if form == "6to4" {
        Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5])
    } else {
        Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_parses_with_host_bits_clear() {
        for range in SPECIAL_RANGES.iter() {
            assert_eq!(range.net, range.net.trunc(), "{} has host bits set", range.net);
        }
        assert_eq!(SPECIAL_RANGES.len(), IPV4.len() + IPV6.len());
    }
}
