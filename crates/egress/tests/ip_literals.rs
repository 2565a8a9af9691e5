//! IP literals in the spellings HTTP clients accept (WHATWG URL host parser,
//! `inet_aton` forms), each with the address it must parse to and the
//! decision it must get. Nothing is connected to.

mod common;

use common::{app, engine, ip, public_resolver, settings};
use portcullis_egress::{Host, ReasonCode, Verdict};

/// (spelling, address it denotes, verdict, rule id)
const LITERALS: &[(&str, &str, Verdict, &str)] = &[
    ("127.0.0.1", "127.0.0.1", Verdict::Deny, "special:loopback"),
    ("2130706433", "127.0.0.1", Verdict::Deny, "special:loopback"),
    ("0177.0.0.1", "127.0.0.1", Verdict::Deny, "special:loopback"),
    ("0x7f.1", "127.0.0.1", Verdict::Deny, "special:loopback"),
    ("0X7F.1", "127.0.0.1", Verdict::Deny, "special:loopback"),
    ("127.1", "127.0.0.1", Verdict::Deny, "special:loopback"),
    ("127.0.1", "127.0.0.1", Verdict::Deny, "special:loopback"),
    ("0x7f000001", "127.0.0.1", Verdict::Deny, "special:loopback"),
    ("017700000001", "127.0.0.1", Verdict::Deny, "special:loopback"),
    ("0x7f.0.0.0x1", "127.0.0.1", Verdict::Deny, "special:loopback"),
    ("0177.1", "127.0.0.1", Verdict::Deny, "special:loopback"),
    ("127.000.000.001", "127.0.0.1", Verdict::Deny, "special:loopback"),
    ("127.0.0.1.", "127.0.0.1", Verdict::Deny, "special:loopback"),
    ("0x7F.0x0.0x0.0x1", "127.0.0.1", Verdict::Deny, "special:loopback"),
    ("%31%32%37.0.0.1", "127.0.0.1", Verdict::Deny, "special:loopback"),
    ("\u{ff11}\u{ff12}\u{ff17}.\u{ff10}.\u{ff10}.\u{ff11}", "127.0.0.1", Verdict::Deny, "special:loopback"),
    ("127\u{3002}0\u{3002}0\u{3002}1", "127.0.0.1", Verdict::Deny, "special:loopback"),
    ("127.255.255.254", "127.255.255.254", Verdict::Deny, "special:loopback"),
    ("0", "0.0.0.0", Verdict::Deny, "special:unspecified"),
    ("0.0.0.0", "0.0.0.0", Verdict::Deny, "special:unspecified"),
    ("0x0", "0.0.0.0", Verdict::Deny, "special:unspecified"),
    ("[::1]", "::1", Verdict::Deny, "special:loopback"),
    ("[0:0:0:0:0:0:0:1]", "::1", Verdict::Deny, "special:loopback"),
    ("[::]", "::", Verdict::Deny, "special:unspecified"),
    ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1", Verdict::Deny, "special:loopback"),
    ("[::FFFF:7F00:1]", "::ffff:127.0.0.1", Verdict::Deny, "special:loopback"),
    ("[::ffff:a9fe:a9fe]", "::ffff:169.254.169.254", Verdict::Deny, "special:cloud-metadata"),
    ("[fe80::1%25eth0]", "fe80::1", Verdict::Deny, "special:link-local"),
    ("[fe80::1%eth0]", "fe80::1", Verdict::Deny, "special:link-local"),
    ("[FE80::1%251]", "fe80::1", Verdict::Deny, "special:link-local"),
    ("169.254.169.254", "169.254.169.254", Verdict::Deny, "special:cloud-metadata"),
    ("0xa9fea9fe", "169.254.169.254", Verdict::Deny, "special:cloud-metadata"),
    ("2852039166", "169.254.169.254", Verdict::Deny, "special:cloud-metadata"),
    ("0251.0376.0251.0376", "169.254.169.254", Verdict::Deny, "special:cloud-metadata"),
    ("169.254.43518", "169.254.169.254", Verdict::Deny, "special:cloud-metadata"),
    ("[fd00:ec2::254]", "fd00:ec2::254", Verdict::Deny, "special:cloud-metadata"),
    ("10.0.0.1", "10.0.0.1", Verdict::Deny, "special:private"),
    ("012.0.0.1", "10.0.0.1", Verdict::Deny, "special:private"),
    ("167772161", "10.0.0.1", Verdict::Deny, "special:private"),
    ("0xc0.0xa8.1", "192.168.0.1", Verdict::Deny, "special:private"),
    ("172.16.1", "172.16.0.1", Verdict::Deny, "special:private"),
    ("100.64.0.1", "100.64.0.1", Verdict::Deny, "special:shared-cgnat"),
    ("192.0.0.170", "192.0.0.170", Verdict::Deny, "special:ietf-protocol-assignments"),
    ("198.18.0.1", "198.18.0.1", Verdict::Deny, "special:benchmarking"),
    ("192.0.2.1", "192.0.2.1", Verdict::Deny, "special:documentation"),
    ("255.255.255.255", "255.255.255.255", Verdict::Deny, "special:broadcast"),
    ("4294967295", "255.255.255.255", Verdict::Deny, "special:broadcast"),
    ("224.0.0.1", "224.0.0.1", Verdict::Deny, "special:multicast"),
    ("240.0.0.1", "240.0.0.1", Verdict::Deny, "special:reserved"),
    ("[::127.0.0.1]", "::127.0.0.1", Verdict::Deny, "special:ipv4-compatible:loopback"),
    ("[2002:7f00:1::1]", "2002:7f00:1::1", Verdict::Deny, "special:6to4:loopback"),
    ("[2002:a9fe:a9fe::]", "2002:a9fe:a9fe::", Verdict::Deny, "special:6to4:cloud-metadata"),
    ("[64:ff9b::7f00:1]", "64:ff9b::7f00:1", Verdict::Deny, "special:nat64:loopback"),
    ("[64:ff9b::10.0.0.1]", "64:ff9b::a00:1", Verdict::Deny, "special:nat64:private"),
    ("[64:ff9b:1::808:808]", "64:ff9b:1::808:808", Verdict::Deny, "special:nat64-local"),
    ("[2001::1]", "2001::1", Verdict::Deny, "special:teredo"),
    ("[ff02::1]", "ff02::1", Verdict::Deny, "special:multicast"),
    ("[fc00::1]", "fc00::1", Verdict::Deny, "special:unique-local"),
    // Public addresses: allowed only through allow_cidrs (93.184.216.0/24 here).
    ("93.184.216.34", "93.184.216.34", Verdict::Allow, "allow_cidrs[0]"),
    ("0x5d.0xb8.0xd8.0x22", "93.184.216.34", Verdict::Allow, "allow_cidrs[0]"),
    ("1572395042", "93.184.216.34", Verdict::Allow, "allow_cidrs[0]"),
    ("93.12113954", "93.184.216.34", Verdict::Allow, "allow_cidrs[0]"),
    ("[::ffff:93.184.216.34]", "::ffff:93.184.216.34", Verdict::Allow, "allow_cidrs[0]"),
    ("8.8.8.8", "8.8.8.8", Verdict::Deny, "default:not-allowed"),
    ("[64:ff9b::808:808]", "64:ff9b::808:808", Verdict::Deny, "default:not-allowed"),
    ("[2002:808:808::1]", "2002:808:808::1", Verdict::Deny, "default:not-allowed"),
];

/// Spellings no client reads as an address and that are not valid names.
const INVALID: &[&str] = &[
    "1.2.3.4.5",
    "256.0.0.1",
    "0x100.1",
    "08.0.0.1",
    "1.2.3.09",
    "127.0.0.1..",
    "1.16777216",
    "4294967296",
    "example.123",
    "example.0x1",
    "[::1",
    "[127.0.0.1]",
    "[fe80::1%]",
    "[fe80::1%25]",
    "[::1]x",
    "",
    "%zz.example.org",
];

#[test]
fn literal_table_is_large() {
    assert!(LITERALS.len() >= 40, "only {} literal spellings", LITERALS.len());
}

#[test]
fn literals_parse_to_address() {
    for &(spelling, expected, _, _) in LITERALS {
        let parsed = Host::parse(spelling);
        assert_eq!(parsed, Ok(Host::Ip(ip(expected))), "spelling {spelling:?}");
    }
}

#[tokio::test]
async fn literals_get_expected_decision() {
    let mut settings = settings();
    settings.allow_cidrs = vec!["93.184.216.0/24".parse().unwrap()];
    let engine = engine(settings, public_resolver());
    let app = app(&engine);

    for &(spelling, expected, verdict, rule) in LITERALS {
        let decision = engine.decide(&app, spelling, 443).await;
        assert_eq!(decision.verdict, verdict, "verdict for {spelling:?}: {}", decision.message);
        assert_eq!(decision.rule, rule, "rule for {spelling:?}: {}", decision.message);
        let checked = ip(expected).to_canonical();
        assert_eq!(decision.resolved, vec![checked], "checked address for {spelling:?}");
        if verdict == Verdict::Allow {
            let target = decision.target.expect("an allowed decision has a target");
            assert_eq!(target.addresses(), &[std::net::SocketAddr::new(checked, 443)], "{spelling:?}");
        } else {
            assert!(decision.target.is_none(), "denied {spelling:?} has a target");
        }
    }
}

#[test]
fn invalid_spellings_fail_to_parse() {
    for &spelling in INVALID {
        assert!(Host::parse(spelling).is_err(), "{spelling:?} parsed as {:?}", Host::parse(spelling));
    }
}

#[tokio::test]
async fn invalid_spellings_denied_as_malformed() {
    let engine = engine(settings(), public_resolver());
    let app = app(&engine);
    for &spelling in INVALID {
        let decision = engine.decide(&app, spelling, 443).await;
        assert_eq!(decision.verdict, Verdict::Deny, "{spelling:?}");
        assert_eq!(decision.rule, "malformed:host", "{spelling:?}");
        assert_eq!(decision.reason, ReasonCode::InvalidHost, "{spelling:?}");
        assert!(decision.message.contains("invalid host"), "{spelling:?}: {}", decision.message);
    }
}
