//! Country rules with MaxMind's published test databases. The addresses
//! are only classified; nothing is connected to.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use portcullis_config::{CountryRule, Mode};
use portcullis_egress::{CountryDb, EgressError, EgressRules, ReasonCode, StaticResolver, Verdict};

fn data(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(file)
}

/// (host the tests request, address it resolves to, country in the
/// GeoIP2-Country test data)
const HOSTS: &[(&str, &str, Option<&str>)] = &[
    ("gb.example.org", "81.2.69.142", Some("GB")),
    ("se.example.org", "89.160.20.128", Some("SE")),
    ("cn.example.org", "175.16.199.5", Some("CN")),
    ("bt.example.org", "67.43.156.1", Some("BT")),
    ("jp.example.org", "2001:218::1", Some("JP")),
    ("kr.example.org", "2001:220::1", Some("KR")),
    ("none.example.org", "8.8.8.8", None),
];

fn resolver() -> StaticResolver {
    HOSTS.iter().fold(StaticResolver::new(), |resolver, (name, address, _)| resolver.with(name, &[ip(address)]))
}

fn country_engine(database: &str, allow: bool, codes: &[&str], mode: Mode) -> portcullis_egress::Engine {
    let mut settings = settings();
    settings.mode = mode;
    settings.countries =
        Some(CountryRule { database: data(database), allow, codes: codes.iter().map(|c| (*c).to_owned()).collect() });
    engine(settings, resolver())
}

#[test]
fn database_lookups_match_source_data() {
    let db = CountryDb::open(&data("GeoIP2-Country-Test.mmdb")).unwrap();
    for (_, address, country) in HOSTS {
        assert_eq!(db.country(ip(address)).unwrap().as_deref(), *country, "{address}");
    }
}

#[test]
fn geolite_database_lookups() {
    let db = CountryDb::open(&data("GeoLite2-Country-Test.mmdb")).unwrap();
    assert_eq!(db.country(ip("81.2.69.142")).unwrap().as_deref(), Some("GB"));
    assert_eq!(db.country(ip("89.160.20.128")).unwrap().as_deref(), Some("SE"));
    assert_eq!(db.country(ip("8.8.8.8")).unwrap(), None);
}

#[tokio::test]
async fn country_deny_list() {
    let engine = country_engine("GeoIP2-Country-Test.mmdb", false, &["CN", "KR"], Mode::Enforce);
    let app = app(&engine);

    // (host, verdict, rule)
    let cases = [
        ("cn.example.org", Verdict::Deny, "country:deny:CN"),
        ("kr.example.org", Verdict::Deny, "country:deny:KR"),
        ("gb.example.org", Verdict::Allow, "allow_hosts[0]"),
        ("jp.example.org", Verdict::Allow, "allow_hosts[0]"),
        ("none.example.org", Verdict::Deny, "country:unknown"),
    ];
    for (host, verdict, rule) in cases {
        let decision = engine.decide(&app, host, 443).await;
        assert_eq!(decision.verdict, verdict, "{host}: {}", decision.message);
        assert_eq!(decision.rule, rule, "{host}");
    }

    let denied = engine.decide(&app, "cn.example.org", 443).await;
    assert_eq!(denied.reason, ReasonCode::CountryDenied);
    assert!(denied.message.contains("175.16.199.5"), "{}", denied.message);
}

#[tokio::test]
async fn country_allow_list() {
    let engine = country_engine("GeoIP2-Country-Test.mmdb", true, &["GB", "JP"], Mode::Enforce);
    let app = app(&engine);

    let cases = [
        ("gb.example.org", Verdict::Allow, "allow_hosts[0]", ReasonCode::HostAllowed),
        ("jp.example.org", Verdict::Allow, "allow_hosts[0]", ReasonCode::HostAllowed),
        ("se.example.org", Verdict::Deny, "country:allow", ReasonCode::CountryNotAllowed),
        ("bt.example.org", Verdict::Deny, "country:allow", ReasonCode::CountryNotAllowed),
        ("none.example.org", Verdict::Deny, "country:unknown", ReasonCode::CountryUnknown),
    ];
    for (host, verdict, rule, reason) in cases {
        let decision = engine.decide(&app, host, 443).await;
        assert_eq!(decision.verdict, verdict, "{host}: {}", decision.message);
        assert_eq!(decision.rule, rule, "{host}");
        assert_eq!(decision.reason, reason, "{host}");
    }
}

#[tokio::test]
async fn country_rule_report_mode() {
    let engine = country_engine("GeoLite2-Country-Test.mmdb", false, &["SE"], Mode::Report);
    let decision = engine.decide(&app(&engine), "se.example.org", 443).await;
    assert_eq!(decision.verdict, Verdict::ReportOnlyDeny);
    assert_eq!(decision.rule, "country:deny:SE");
    assert!(decision.target.is_some());
}

#[test]
fn unreadable_database_rejected() {
    let mut settings = settings();
    settings.countries = Some(CountryRule { database: data("missing.mmdb"), allow: true, codes: vec!["GB".into()] });
    let error = EgressRules::new(settings.clone()).expect_err("a missing database must fail");
    assert!(matches!(error, EgressError::CountryDatabase { .. }), "{error}");
    assert!(error.to_string().contains("missing.mmdb"), "{error}");

    settings.countries = Some(CountryRule { database: data("SOURCES.md"), allow: true, codes: vec!["GB".into()] });
    let error = EgressRules::new(settings).expect_err("a file that is no database must fail");
    assert!(error.to_string().contains("SOURCES.md"), "{error}");
}

/// Cross-checks the crate's lookups against libmaxminddb's `mmdblookup`
/// (Debian package mmdb-bin). Skipped when the tool is missing, except in
/// CI, which installs it.
#[test]
fn lookups_match_mmdblookup() {
    let available = Command::new("mmdblookup").arg("--version").output().is_ok();
    if !available {
        assert!(std::env::var_os("CI").is_none(), "CI must install mmdb-bin for mmdblookup");
        eprintln!("mmdblookup not found; install the mmdb-bin package to run this cross-check");
        return;
    }

    let file = data("GeoIP2-Country-Test.mmdb");
    let db = CountryDb::open(&file).unwrap();
    for (_, address, country) in HOSTS.iter().filter(|(_, _, country)| country.is_some()) {
        let output = Command::new("mmdblookup")
            .arg("--file")
            .arg(&file)
            .args(["--ip", address, "country", "iso_code"])
            .output()
            .expect("mmdblookup runs");
        assert!(output.status.success(), "mmdblookup failed for {address}");
        let text = String::from_utf8_lossy(&output.stdout);
        let expected = format!("\"{}\"", country.unwrap());
        assert!(text.contains(&expected), "mmdblookup says {text:?} for {address}");
        assert_eq!(db.country(ip(address)).unwrap().as_deref(), *country, "{address}");
    }
}
