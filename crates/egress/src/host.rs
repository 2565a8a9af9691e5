//! Parsing of requested hosts: IP literals in every spelling that common
//! clients accept, and host names normalised to the form the rules compare.
//!
//! The IPv4 parser is written here rather than taken from a crate because
//! the spellings that matter are the ones HTTP clients accept, and
//! `std::net::Ipv4Addr::from_str` accepts only dotted-quad decimal. Browsers
//! and curl (since 7.77) follow the WHATWG URL Standard's host parser, which
//! keeps the old `inet_aton` forms: `2130706433`, `0177.0.0.1`, `0x7f.1`,
//! `127.1`. A proxy that read `0x7f.1` as a name while the client's stack
//! connects to 127.0.0.1 would check the wrong destination, so every string
//! that the WHATWG parser reads as an address is read as that address here.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::error::HostError;

/// Maximum length of a host name in ASCII form, without the trailing dot
/// (RFC 1035 section 2.3.4 allows 255 octets on the wire, which is 253
/// characters of text).
pub const MAX_NAME_LEN: usize = 253;

/// Maximum length of one label (RFC 1035 section 2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// A requested destination host after parsing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Host {
    /// A host name in lowercase ASCII (IDNA A-label) form, without a
    /// trailing dot. Every label is 1 to 63 letters, digits or `-`, not
    /// starting or ending with `-`.
    Name(String),
    /// An IP address literal, as the address it denotes. An IPv6 zone id
    /// (`%25eth0`) is dropped.
    Ip(IpAddr),
}

impl Host {
    /// Parses a host as an HTTP client would read it from a URL or a CONNECT
    /// authority, without the port.
    ///
    /// Steps, following the WHATWG URL Standard's host parser:
    /// 1. `[...]` is an IPv6 literal, with an optional zone id after `%25`
    ///    or `%` (RFC 6874).
    /// 2. Otherwise the text is percent-decoded and mapped with UTS 46
    ///    (lowercase, full-width forms folded, IDNA A-labels).
    /// 3. If the last label is a number (decimal, `0x` hex or `0` octal),
    ///    the whole host is an IPv4 literal and must parse as one.
    /// 4. Otherwise it is a name: one trailing dot is removed and each label
    ///    must be letters, digits and `-` (stricter than WHATWG, which also
    ///    lets `_` and `!` through).
    pub fn parse(text: &str) -> Result<Self, HostError> {
        let invalid = |reason: &'static str| HostError { host: text.to_owned(), reason };

        if text.is_empty() {
            return Err(invalid("the host is empty"));
        }

        if let Some(inner) = text.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(invalid("an IPv6 literal must end with ']'"))?;
            return parse_ipv6_literal(inner).map(Host::Ip).map_err(invalid);
        }

        let decoded = percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .map_err(|_| invalid("the percent-decoded host is not UTF-8"))?;
        let ascii = idna::domain_to_ascii_cow(decoded.as_bytes(), idna::AsciiDenyList::URL)
            .map_err(|_| invalid("the host is not a valid internationalised domain name (UTS 46)"))?;

        if ends_in_number(&ascii) {
            return parse_ipv4(&ascii)
                .map(|ip| Host::Ip(IpAddr::V4(ip)))
                .ok_or(invalid("the last label is a number, so the host must be an IPv4 address, and it is not one"));
        }

        let name = ascii.strip_suffix('.').unwrap_or(&ascii);
        check_name(name).map_err(invalid)?;
        Ok(Host::Name(name.to_owned()))
    }

    /// Returns the name, if this host is a name.
    pub fn name(&self) -> Option<&str> {
        match self {
            Host::Name(name) => Some(name),
            Host::Ip(_) => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// Splits a CONNECT request target in authority form (`host:port` or
/// `[v6]:port`, RFC 9110 section 9.3.6) into host text and port. The host
/// text still has to go through [`Host::parse`]. The port must be decimal
/// digits from 1 to 65535.
pub fn split_authority(authority: &str) -> Result<(&str, u16), HostError> {
    let invalid = |reason: &'static str| HostError { host: authority.to_owned(), reason };

    let (host, port) = authority.rsplit_once(':').ok_or(invalid("the authority has no port; expected host:port"))?;
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(invalid("an IPv6 address in an authority must be in brackets, as [::1]:443"));
    }
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("the port must be a decimal number from 1 to 65535"));
    }
    let port: u16 = port.parse().map_err(|_| invalid("the port must be a decimal number from 1 to 65535"))?;
    if port == 0 {
        return Err(invalid("the port must be a decimal number from 1 to 65535"));
    }
    Ok((host, port))
}

/// Parses the inside of `[...]`: an IPv6 address with an optional zone id.
///
/// NOTE: the zone id is checked for shape and then dropped, so a connection
/// to a link-local address allowed by a CIDR rule carries no scope id and
/// the kernel picks no interface for it.
fn parse_ipv6_literal(inner: &str) -> Result<IpAddr, &'static str> {
    let (address, zone) = match inner.split_once('%') {
        Some((address, zone)) => {
            // RFC 6874 writes the '%' as "%25"; curl also accepts a bare '%'.
            let zone = zone.strip_prefix("25").unwrap_or(zone);
            (address, Some(zone))
        }
        None => (inner, None),
    };
    if let Some(zone) = zone {
        let valid = !zone.is_empty()
            && zone.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        if !valid {
            return Err("the IPv6 zone id after '%25' must be letters, digits, '-', '.', '_' or '~'");
        }
    }
    address.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| "the text in brackets is not an IPv6 address")
}

/// Implements the WHATWG URL Standard's "ends in a number" check: whether the last
/// label (ignoring one trailing empty label) is all digits or parses as an
/// IPv4 number (`0x` hex, `0` octal, decimal).
fn ends_in_number(host: &str) -> bool {
    let mut labels: Vec<&str> = host.split('.').collect();
    if labels.last() == Some(&"") {
        if labels.len() == 1 {
            return false;
        }
        labels.pop();
    }
    let last = labels.last().copied().unwrap_or_default();
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    parse_ipv4_number(last).is_some()
}

/// Parses one part of an IPv4 literal: `0x` or `0X` then hex digits (none
/// means 0), `0` then octal digits, or decimal digits. Values too large for
/// a `u64` are rejected, since they could never form an address anyway.
fn parse_ipv4_number(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) = if part.len() >= 2 && (part.starts_with("0x") || part.starts_with("0X")) {
        (&part[2..], 16)
    } else if part.len() >= 2 && part.starts_with('0') {
        (&part[1..], 8)
    } else {
        (part, 10)
    };

    let mut value: u64 = 0;
    for c in digits.chars() {
        let digit = c.to_digit(radix)?;
        value = value.checked_mul(u64::from(radix))?.checked_add(u64::from(digit))?;
    }
    Some(value)
}

/// Implements the WHATWG URL Standard's IPv4 parser: one to four parts separated by
/// `.`, an optional trailing `.`, every part but the last at most 255, and
/// the last filling the remaining bytes (`127.1` is 127.0.0.1, `2130706433`
/// is 127.0.0.1).
pub(crate) fn parse_ipv4(text: &str) -> Option<Ipv4Addr> {
    let mut parts: Vec<&str> = text.split('.').collect();
    if parts.len() > 1 && parts.last() == Some(&"") {
        parts.pop();
    }
    if parts.len() > 4 {
        return None;
    }

    let numbers: Vec<u64> = parts.iter().map(|part| parse_ipv4_number(part)).collect::<Option<_>>()?;
    let (last, leading) = numbers.split_last()?;
    if leading.iter().any(|&n| n > 255) {
        return None;
    }
    let last_bits = 8 * (4 - leading.len() as u32);
    if *last >= 1u64 << last_bits {
        return None;
    }

    let mut address = *last;
    for (index, &n) in leading.iter().enumerate() {
        address += n << (24 - 8 * index as u32);
    }
    Some(Ipv4Addr::from(u32::try_from(address).ok()?))
}

/// Checks a lowercase ASCII name without its trailing dot against RFC 1123
/// section 2.1 host name syntax. Labels are 1 to 63 letters, digits or `-`,
/// and the name has at most 253 characters.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the host name is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("the host name is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("the host name has an empty label ('..' or a leading '.')");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("a label of the host name is longer than 63 characters");
        }
        if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err("a label of the host name contains a character other than a letter, digit or '-'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label of the host name starts or ends with '-'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_number_radixes() {
        assert_eq!(parse_ipv4_number("0x"), Some(0));
        assert_eq!(parse_ipv4_number("0X1f"), Some(31));
        assert_eq!(parse_ipv4_number("017"), Some(15));
        assert_eq!(parse_ipv4_number("08"), None);
        assert_eq!(parse_ipv4_number("0"), Some(0));
        assert_eq!(parse_ipv4_number("99999999999999999999999"), None);
        assert_eq!(parse_ipv4_number(""), None);
    }

    #[test]
    fn ipv4_last_part_limits() {
        assert_eq!(parse_ipv4("1.16777215"), Some(Ipv4Addr::new(1, 255, 255, 255)));
        assert_eq!(parse_ipv4("1.16777216"), None);
        assert_eq!(parse_ipv4("4294967295"), Some(Ipv4Addr::BROADCAST));
        assert_eq!(parse_ipv4("4294967296"), None);
        assert_eq!(parse_ipv4("256.1"), None);
        assert_eq!(parse_ipv4("1..1"), None);
    }

    #[test]
    fn authority_split() {
        assert_eq!(split_authority("example.org:443").unwrap(), ("example.org", 443));
        assert_eq!(split_authority("[::1]:8080").unwrap(), ("[::1]", 8080));
        assert!(split_authority("::1:80").is_err());
        assert!(split_authority("example.org").is_err());
        assert!(split_authority("example.org:0").is_err());
        assert!(split_authority("example.org:+80").is_err());
        assert!(split_authority("example.org:65536").is_err());
    }
}
