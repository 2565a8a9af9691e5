//! Classification of every special-purpose range: its first and last
//! address, one inside, and the neighbours just outside. Addresses are only
//! classified; nothing is connected to.

mod common;

use std::collections::BTreeSet;

use common::ip;
use ipnet::IpNet;
use portcullis_egress::special::{SPECIAL_RANGES, classify};

/// The rule id `classify` gives an address, or `-` for a public address.
fn rule_of(address: &str) -> String {
    classify(ip(address)).map_or_else(|| "-".to_owned(), |class| class.rule_id())
}

/// (range, [address, expected rule id]...) with the first, last, an inside
/// address, and the neighbours below and above where they exist. `-` means
/// public. A first or last address that falls in a more specific range
/// expects that range's id.
const ROWS: &[(&str, &[(&str, &str)])] = &[
    (
        "0.0.0.0/8",
        &[
            ("0.0.0.0", "special:unspecified"),
            ("0.255.255.255", "special:this-network"),
            ("0.1.2.3", "special:this-network"),
            ("1.0.0.0", "-"),
        ],
    ),
    ("0.0.0.0/32", &[("0.0.0.0", "special:unspecified"), ("0.0.0.1", "special:this-network")]),
    (
        "10.0.0.0/8",
        &[
            ("10.0.0.0", "special:private"),
            ("10.255.255.255", "special:private"),
            ("10.1.2.3", "special:private"),
            ("9.255.255.255", "-"),
            ("11.0.0.0", "-"),
        ],
    ),
    (
        "100.64.0.0/10",
        &[
            ("100.64.0.0", "special:shared-cgnat"),
            ("100.127.255.255", "special:shared-cgnat"),
            ("100.100.100.200", "special:shared-cgnat"),
            ("100.63.255.255", "-"),
            ("100.128.0.0", "-"),
        ],
    ),
    (
        "127.0.0.0/8",
        &[
            ("127.0.0.0", "special:loopback"),
            ("127.255.255.255", "special:loopback"),
            ("127.0.0.1", "special:loopback"),
            ("126.255.255.255", "-"),
            ("128.0.0.0", "-"),
        ],
    ),
    (
        "169.254.0.0/16",
        &[
            ("169.254.0.0", "special:link-local"),
            ("169.254.255.255", "special:link-local"),
            ("169.254.1.1", "special:link-local"),
            ("169.253.255.255", "-"),
            ("169.255.0.0", "-"),
        ],
    ),
    (
        "169.254.169.254/32",
        &[
            ("169.254.169.254", "special:cloud-metadata"),
            ("169.254.169.253", "special:link-local"),
            ("169.254.169.255", "special:link-local"),
        ],
    ),
    (
        "172.16.0.0/12",
        &[
            ("172.16.0.0", "special:private"),
            ("172.31.255.255", "special:private"),
            ("172.20.1.1", "special:private"),
            ("172.15.255.255", "-"),
            ("172.32.0.0", "-"),
        ],
    ),
    (
        "192.0.0.0/24",
        &[
            ("192.0.0.0", "special:ietf-protocol-assignments"),
            ("192.0.0.255", "special:ietf-protocol-assignments"),
            ("192.0.0.8", "special:ietf-protocol-assignments"),
            ("191.255.255.255", "-"),
            ("192.0.1.0", "-"),
        ],
    ),
    (
        "192.0.2.0/24",
        &[
            ("192.0.2.0", "special:documentation"),
            ("192.0.2.255", "special:documentation"),
            ("192.0.2.1", "special:documentation"),
            ("192.0.1.255", "-"),
            ("192.0.3.0", "-"),
        ],
    ),
    (
        "192.88.99.0/24",
        &[
            ("192.88.99.0", "special:6to4-relay-anycast"),
            ("192.88.99.255", "special:6to4-relay-anycast"),
            ("192.88.99.1", "special:6to4-relay-anycast"),
            ("192.88.98.255", "-"),
            ("192.88.100.0", "-"),
        ],
    ),
    (
        "192.168.0.0/16",
        &[
            ("192.168.0.0", "special:private"),
            ("192.168.255.255", "special:private"),
            ("192.168.1.1", "special:private"),
            ("192.167.255.255", "-"),
            ("192.169.0.0", "-"),
        ],
    ),
    (
        "198.18.0.0/15",
        &[
            ("198.18.0.0", "special:benchmarking"),
            ("198.19.255.255", "special:benchmarking"),
            ("198.18.5.5", "special:benchmarking"),
            ("198.17.255.255", "-"),
            ("198.20.0.0", "-"),
        ],
    ),
    (
        "198.51.100.0/24",
        &[
            ("198.51.100.0", "special:documentation"),
            ("198.51.100.255", "special:documentation"),
            ("198.51.100.7", "special:documentation"),
            ("198.51.99.255", "-"),
            ("198.51.101.0", "-"),
        ],
    ),
    (
        "203.0.113.0/24",
        &[
            ("203.0.113.0", "special:documentation"),
            ("203.0.113.255", "special:documentation"),
            ("203.0.113.9", "special:documentation"),
            ("203.0.112.255", "-"),
            ("203.0.114.0", "-"),
        ],
    ),
    (
        "224.0.0.0/4",
        &[
            ("224.0.0.0", "special:multicast"),
            ("239.255.255.255", "special:multicast"),
            ("230.1.2.3", "special:multicast"),
            ("223.255.255.255", "-"),
            ("240.0.0.0", "special:reserved"),
        ],
    ),
    (
        "240.0.0.0/4",
        &[
            ("240.0.0.0", "special:reserved"),
            ("255.255.255.255", "special:broadcast"),
            ("250.1.2.3", "special:reserved"),
            ("239.255.255.255", "special:multicast"),
        ],
    ),
    ("255.255.255.255/32", &[("255.255.255.255", "special:broadcast"), ("255.255.255.254", "special:reserved")]),
    ("::/128", &[("::", "special:unspecified"), ("::1", "special:loopback")]),
    (
        "::1/128",
        &[("::1", "special:loopback"), ("::", "special:unspecified"), ("::2", "special:ipv4-compatible:this-network")],
    ),
    (
        "::/96",
        &[
            ("::", "special:unspecified"),
            ("::ffff:ffff", "special:ipv4-compatible:broadcast"),
            ("::7f00:1", "special:ipv4-compatible:loopback"),
            ("::808:808", "special:ipv4-compatible"),
            ("::1:0:0", "special:ipv6-not-global-unicast"),
        ],
    ),
    (
        "::ffff:0:0/96",
        &[
            ("::ffff:0.0.0.0", "special:ipv4-mapped:unspecified"),
            ("::ffff:255.255.255.255", "special:ipv4-mapped:broadcast"),
            ("::ffff:127.0.0.1", "special:ipv4-mapped:loopback"),
            ("::ffff:8.8.8.8", "-"),
            ("::fffe:ffff:ffff", "special:ipv6-not-global-unicast"),
            ("::1:0:0:0", "special:ipv6-not-global-unicast"),
        ],
    ),
    (
        "64:ff9b::/96",
        &[
            ("64:ff9b::", "special:nat64:unspecified"),
            ("64:ff9b::ffff:ffff", "special:nat64:broadcast"),
            ("64:ff9b::a9fe:a9fe", "special:nat64:cloud-metadata"),
            ("64:ff9b::808:808", "-"),
            ("64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff", "special:ipv6-not-global-unicast"),
            ("64:ff9b::1:0:0", "special:ipv6-not-global-unicast"),
        ],
    ),
    (
        "64:ff9b:1::/48",
        &[
            ("64:ff9b:1::", "special:nat64-local"),
            ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", "special:nat64-local"),
            ("64:ff9b:1::808:808", "special:nat64-local"),
            ("64:ff9b:0:ffff:ffff:ffff:ffff:ffff", "special:ipv6-not-global-unicast"),
            ("64:ff9b:2::", "special:ipv6-not-global-unicast"),
        ],
    ),
    (
        "100::/64",
        &[
            ("100::", "special:discard-only"),
            ("100::ffff:ffff:ffff:ffff", "special:discard-only"),
            ("100::1", "special:discard-only"),
            ("ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "special:ipv6-not-global-unicast"),
            ("100:0:0:1::", "special:ipv6-not-global-unicast"),
        ],
    ),
    (
        "2001::/23",
        &[
            ("2001::", "special:teredo"),
            ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", "special:ietf-protocol-assignments"),
            ("2001:1::1", "special:ietf-protocol-assignments"),
            ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "-"),
            ("2001:200::", "-"),
        ],
    ),
    (
        "2001::/32",
        &[
            ("2001::", "special:teredo"),
            ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", "special:teredo"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "special:teredo"),
            ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "-"),
            ("2001:1::", "special:ietf-protocol-assignments"),
        ],
    ),
    (
        "2001:2::/48",
        &[
            ("2001:2::", "special:benchmarking"),
            ("2001:2:0:ffff:ffff:ffff:ffff:ffff", "special:benchmarking"),
            ("2001:2::1", "special:benchmarking"),
            ("2001:1:ffff:ffff:ffff:ffff:ffff:ffff", "special:ietf-protocol-assignments"),
            ("2001:2:1::", "special:ietf-protocol-assignments"),
        ],
    ),
    (
        "2001:10::/28",
        &[
            ("2001:10::", "special:orchid"),
            ("2001:1f:ffff:ffff:ffff:ffff:ffff:ffff", "special:orchid"),
            ("2001:10::1", "special:orchid"),
            ("2001:f:ffff:ffff:ffff:ffff:ffff:ffff", "special:ietf-protocol-assignments"),
            ("2001:20::", "special:ietf-protocol-assignments"),
        ],
    ),
    (
        "2001:db8::/32",
        &[
            ("2001:db8::", "special:documentation"),
            ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "special:documentation"),
            ("2001:db8::1", "special:documentation"),
            ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "-"),
            ("2001:db9::", "-"),
        ],
    ),
    (
        "2002::/16",
        &[
            ("2002::", "special:6to4:unspecified"),
            ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "special:6to4:broadcast"),
            ("2002:7f00:1::", "special:6to4:loopback"),
            ("2002:808:808::1", "-"),
            ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "-"),
            ("2003::", "-"),
        ],
    ),
    (
        "3fff::/20",
        &[
            ("3fff::", "special:documentation"),
            ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", "special:documentation"),
            ("3fff:1::1", "special:documentation"),
            ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "-"),
            ("3fff:1000::", "-"),
        ],
    ),
    (
        "5f00::/16",
        &[
            ("5f00::", "special:srv6-sid"),
            ("5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "special:srv6-sid"),
            ("5f00:1::1", "special:srv6-sid"),
            ("5eff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "special:ipv6-not-global-unicast"),
            ("5f01::", "special:ipv6-not-global-unicast"),
        ],
    ),
    (
        "fc00::/7",
        &[
            ("fc00::", "special:unique-local"),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "special:unique-local"),
            ("fd12:3456::1", "special:unique-local"),
            ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "special:ipv6-not-global-unicast"),
            ("fe00::", "special:ipv6-not-global-unicast"),
        ],
    ),
    (
        "fd00:ec2::254/128",
        &[
            ("fd00:ec2::254", "special:cloud-metadata"),
            ("fd00:ec2::253", "special:unique-local"),
            ("fd00:ec2::255", "special:unique-local"),
        ],
    ),
    (
        "fe80::/10",
        &[
            ("fe80::", "special:link-local"),
            ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "special:link-local"),
            ("fe80::1", "special:link-local"),
            ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "special:ipv6-not-global-unicast"),
            ("fec0::", "special:site-local"),
        ],
    ),
    (
        "fec0::/10",
        &[
            ("fec0::", "special:site-local"),
            ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "special:site-local"),
            ("fec0::1", "special:site-local"),
            ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "special:link-local"),
            ("ff00::", "special:multicast"),
        ],
    ),
    (
        "ff00::/8",
        &[
            ("ff00::", "special:multicast"),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "special:multicast"),
            ("ff02::1", "special:multicast"),
            ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "special:site-local"),
        ],
    ),
];

#[test]
fn every_range_has_a_row() {
    let table: BTreeSet<IpNet> = SPECIAL_RANGES.iter().map(|range| range.net).collect();
    let rows: BTreeSet<IpNet> = ROWS.iter().map(|(net, _)| net.parse().expect("row CIDR parses")).collect();
    assert_eq!(table, rows, "the test rows and the special-purpose table list different ranges");
}

#[test]
fn range_edges_classified() {
    for (range, cases) in ROWS {
        for (address, expected) in *cases {
            assert_eq!(rule_of(address), *expected, "address {address} (row {range})");
        }
    }
}

#[test]
fn public_addresses_not_special() {
    for address in ["1.1.1.1", "8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001::1", "2600::"] {
        assert_eq!(rule_of(address), "-", "{address}");
    }
}

#[test]
fn ipv6_outside_global_unicast() {
    assert_eq!(rule_of("4000::1"), "special:ipv6-not-global-unicast");
    assert_eq!(rule_of("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), "special:ipv6-not-global-unicast");
    assert_eq!(rule_of("2000::"), "-");
    assert_eq!(rule_of("3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), "-");
}

#[test]
fn embedded_description_names_inner_address() {
    let address = ip("2002:a9fe:a9fe::1");
    let class = classify(address).expect("6to4 of the metadata address is special");
    let text = class.describe(address);
    assert!(text.contains("169.254.169.254"), "{text}");
    assert!(text.contains("6to4"), "{text}");
}
