//! Decisions of the engine on names: wildcards, deny-lists, report mode,
//! ports, manifests, DNS rebinding and mixed answers. Names resolve through
//! injected answers; nothing is connected to.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use portcullis_config::{Mode, Space, SpaceName};
use portcullis_egress::{
    AppRules, EgressError, EgressEvent, ReasonCode, Resolve, ResolveFuture, StaticResolver, Verdict,
};

/// A resolver that returns one answer per call, in order, repeating the
/// last, and counts its calls.
struct SequenceResolver {
    answers: Vec<Vec<IpAddr>>,
    calls: AtomicUsize,
}

impl SequenceResolver {
    fn new(answers: &[&[&str]]) -> Self {
        let answers = answers.iter().map(|answer| answer.iter().map(|a| ip(a)).collect()).collect();
        Self { answers, calls: AtomicUsize::new(0) }
    }
}

impl Resolve for SequenceResolver {
    fn resolve<'a>(&'a self, _name: &'a str) -> ResolveFuture<'a> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = self.answers[call.min(self.answers.len() - 1)].clone();
        Box::pin(async move { Ok(answer) })
    }
}

/// A resolver that records the names it was asked for.
#[derive(Default)]
struct RecordingResolver {
    names: Mutex<Vec<String>>,
}

impl Resolve for RecordingResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
        self.names.lock().unwrap().push(name.to_owned());
        Box::pin(async move { Ok(vec![ip(PUBLIC_V4)]) })
    }
}

#[tokio::test]
async fn wildcard_edge_cases() {
    let engine = engine(settings(), public_resolver());
    let app = app(&engine);

    // (requested host, normalised host, verdict, rule)
    let cases = [
        ("a.example.org", "a.example.org", Verdict::Allow, "allow_hosts[0]"),
        ("a.b.example.org", "a.b.example.org", Verdict::Allow, "allow_hosts[0]"),
        ("A.EXAMPLE.ORG.", "a.example.org", Verdict::Allow, "allow_hosts[0]"),
        ("example.org", "example.org", Verdict::Deny, "default:not-allowed"),
        ("EXAMPLE.ORG.", "example.org", Verdict::Deny, "default:not-allowed"),
        ("evilexample.org", "evilexample.org", Verdict::Deny, "default:not-allowed"),
        ("bücher.example.org", "xn--bcher-kva.example.org", Verdict::Allow, "allow_hosts[0]"),
        ("BÜCHER.Example.Org", "xn--bcher-kva.example.org", Verdict::Allow, "allow_hosts[0]"),
        ("xn--bcher-kva.example.org", "xn--bcher-kva.example.org", Verdict::Allow, "allow_hosts[0]"),
        ("a\u{3002}example\u{3002}org", "a.example.org", Verdict::Allow, "allow_hosts[0]"),
        ("other.test", "other.test", Verdict::Deny, "default:not-allowed"),
    ];
    for (requested, host, verdict, rule) in cases {
        let decision = engine.decide(&app, requested, 443).await;
        assert_eq!(decision.host, host, "normalised host of {requested:?}");
        assert_eq!(decision.verdict, verdict, "verdict of {requested:?}: {}", decision.message);
        assert_eq!(decision.rule, rule, "rule of {requested:?}");
    }
}

#[tokio::test]
async fn allowed_name_pins_addresses() {
    let engine = engine(settings(), public_resolver());
    let decision = engine.decide(&app(&engine), "api.example.org", 443).await;
    assert_eq!(decision.verdict, Verdict::Allow);
    assert_eq!(decision.reason, ReasonCode::HostAllowed);
    assert_eq!(decision.mode, Mode::Enforce);
    let target = decision.target.expect("allowed decision has a target");
    assert_eq!(target.addresses(), &[SocketAddr::new(ip(PUBLIC_V4), 443)]);
}

#[tokio::test]
async fn invalid_names_denied() {
    let engine = engine(settings(), public_resolver());
    let app = app(&engine);
    let long_label = format!("{}.example.org", "a".repeat(64));
    for requested in [
        "exa mple.example.org",
        "a..example.org",
        "-a.example.org",
        "a_b.example.org",
        ".example.org",
        long_label.as_str(),
        "a.example.org:443",
    ] {
        let decision = engine.decide(&app, requested, 443).await;
        assert_eq!(decision.rule, "malformed:host", "{requested:?}");
        assert_eq!(decision.verdict, Verdict::Deny, "{requested:?}");
        assert!(decision.resolved.is_empty(), "{requested:?} was resolved");
    }
}

#[tokio::test]
async fn names_resolved_as_fqdn_once() {
    let resolver = std::sync::Arc::new(RecordingResolver::default());
    let rules = portcullis_egress::EgressRules::new(settings()).unwrap();
    let engine = portcullis_egress::Engine::new(std::sync::Arc::new(rules), resolver.clone());
    engine.decide(&app(&engine), "API.Example.Org.", 443).await;
    assert_eq!(*resolver.names.lock().unwrap(), vec!["api.example.org".to_owned()]);
}

#[tokio::test]
async fn deny_beats_allow() {
    let mut settings = settings();
    settings.deny_hosts = vec![exact("other.test"), exact("bad.example.org")];
    settings.deny_cidrs = vec!["93.184.216.0/24".parse().unwrap()];
    settings.allow_cidrs = vec!["93.184.216.0/24".parse().unwrap()];
    let engine = engine(settings, public_resolver().with("good.example.org", &[ip("1.1.1.1")]));
    let app = app(&engine);

    let by_name = engine.decide(&app, "BAD.example.org", 443).await;
    assert_eq!(by_name.verdict, Verdict::Deny);
    assert_eq!(by_name.rule, "deny_hosts[1]");
    assert_eq!(by_name.reason, ReasonCode::HostDenied);
    assert!(by_name.resolved.is_empty(), "a denied host must not be resolved");

    let by_address = engine.decide(&app, "api.example.org", 443).await;
    assert_eq!(by_address.rule, "deny_cidrs[0]");
    assert_eq!(by_address.reason, ReasonCode::CidrDenied);
    assert_eq!(by_address.verdict, Verdict::Deny);

    let literal = engine.decide(&app, "93.184.216.34", 443).await;
    assert_eq!(literal.rule, "deny_cidrs[0]", "deny_cidrs must beat allow_cidrs");

    let nat64 = engine.decide(&app, "[64:ff9b::5db8:d822]", 443).await;
    assert_eq!(nat64.rule, "deny_cidrs[0]", "a NAT64 form of a denied address is denied");

    let good = engine.decide(&app, "good.example.org", 443).await;
    assert_eq!(good.verdict, Verdict::Allow);
}

#[tokio::test]
async fn port_refused_before_resolution() {
    let resolver = std::sync::Arc::new(SequenceResolver::new(&[&[PUBLIC_V4]]));
    let rules = portcullis_egress::EgressRules::new(settings()).unwrap();
    let engine = portcullis_egress::Engine::new(std::sync::Arc::new(rules), resolver.clone());

    let decision = engine.decide(&app(&engine), "api.example.org", 22).await;
    assert_eq!(decision.verdict, Verdict::Deny);
    assert_eq!(decision.rule, "allow_ports");
    assert_eq!(decision.reason, ReasonCode::PortNotAllowed);
    assert!(decision.message.contains("port 22"), "{}", decision.message);
    assert_eq!(resolver.calls.load(Ordering::SeqCst), 0, "a refused port must not be resolved");
}

#[tokio::test]
async fn report_mode_records_would_deny() {
    let mut settings = settings();
    settings.mode = Mode::Report;
    settings.deny_hosts = vec![exact("bad.example.org")];
    let resolver = public_resolver().with("loop.example.org", &[ip("127.0.0.1")]);
    let engine = engine(settings, resolver);
    let app = app(&engine);

    let not_listed = engine.decide(&app, "other.test", 443).await;
    assert_eq!(not_listed.verdict, Verdict::ReportOnlyDeny);
    assert_eq!(not_listed.rule, "default:not-allowed");
    assert_eq!(not_listed.reason, ReasonCode::NotAllowed);
    assert_eq!(not_listed.mode, Mode::Report);
    let target = not_listed.target.expect("report-only deny still connects");
    assert_eq!(target.addresses(), &[SocketAddr::new(ip(PUBLIC_V4), 443)]);

    let port = engine.decide(&app, "api.example.org", 8080).await;
    assert_eq!(port.verdict, Verdict::ReportOnlyDeny);
    assert_eq!(port.rule, "allow_ports");

    let first_recorded = engine.decide(&app, "other.test", 8080).await;
    assert_eq!(first_recorded.rule, "allow_ports", "the first would-be denial is reported");

    let listed = engine.decide(&app, "api.example.org", 443).await;
    assert_eq!(listed.verdict, Verdict::Allow);
    assert_eq!(listed.mode, Mode::Report);

    let loopback = engine.decide(&app, "loop.example.org", 443).await;
    assert_eq!(loopback.verdict, Verdict::Deny, "special-purpose addresses are enforced in report mode");
    assert_eq!(loopback.rule, "special:loopback");
    assert_eq!(loopback.mode, Mode::Enforce);

    let denied = engine.decide(&app, "bad.example.org", 443).await;
    assert_eq!(denied.verdict, Verdict::Deny, "deny_hosts is enforced in report mode");
    assert_eq!(denied.rule, "deny_hosts[0]");
}

#[tokio::test]
async fn rebinding_second_answer_ignored() {
    let resolver = std::sync::Arc::new(SequenceResolver::new(&[&[PUBLIC_V4], &["127.0.0.1"]]));
    let rules = portcullis_egress::EgressRules::new(settings()).unwrap();
    let engine = portcullis_egress::Engine::new(std::sync::Arc::new(rules), resolver.clone());

    let decision = engine.decide(&app(&engine), "api.example.org", 443).await;
    assert_eq!(decision.verdict, Verdict::Allow);
    let target = decision.target.expect("allowed");
    assert_eq!(target.addresses(), &[SocketAddr::new(ip(PUBLIC_V4), 443)], "the decision pins the checked address");
    assert_eq!(resolver.calls.load(Ordering::SeqCst), 1, "the engine resolves once");
}

#[tokio::test]
async fn rebinding_within_answer_refused() {
    let engine = engine(settings(), StaticResolver::new().with("api.example.org", &[ip(PUBLIC_V4), ip("127.0.0.1")]));
    let decision = engine.decide(&app(&engine), "api.example.org", 443).await;
    assert_eq!(decision.verdict, Verdict::Deny);
    assert_eq!(decision.rule, "special:loopback");
    assert_eq!(decision.resolved, vec![ip(PUBLIC_V4), ip("127.0.0.1")]);
    assert!(decision.target.is_none());
}

#[tokio::test]
async fn mixed_answers_refused() {
    // (answer, rule)
    let cases: [(&[&str], &str); 5] = [
        (&[PUBLIC_V4, "10.0.0.1"], "special:private"),
        (&["192.168.1.1", PUBLIC_V4], "special:private"),
        (&[PUBLIC_V6, "fd00:ec2::254"], "special:cloud-metadata"),
        (&[PUBLIC_V4, "::ffff:169.254.169.254"], "special:cloud-metadata"),
        (&[PUBLIC_V4, PUBLIC_V6, "100.64.1.1"], "special:shared-cgnat"),
    ];
    for (answer, rule) in cases {
        let addresses: Vec<IpAddr> = answer.iter().map(|a| ip(a)).collect();
        let engine = engine(settings(), StaticResolver::new().with("api.example.org", &addresses));
        let decision = engine.decide(&app(&engine), "api.example.org", 443).await;
        assert_eq!(decision.verdict, Verdict::Deny, "{answer:?}");
        assert_eq!(decision.rule, rule, "{answer:?}");
        assert_eq!(decision.reason, ReasonCode::SpecialAddress, "{answer:?}");
        assert!(decision.target.is_none(), "{answer:?}");
    }
}

#[tokio::test]
async fn allow_cidr_opens_special_range() {
    let mut settings = settings();
    settings.allow_cidrs = vec!["10.1.0.0/16".parse().unwrap()];
    let resolver = StaticResolver::new()
        .with("db.example.org", &[ip("10.1.2.3")])
        .with("mixed.example.org", &[ip("10.1.2.3"), ip("10.2.0.1")]);
    let engine = engine(settings, resolver);
    let app = app(&engine);

    let inside = engine.decide(&app, "db.example.org", 443).await;
    assert_eq!(inside.verdict, Verdict::Allow);
    assert_eq!(inside.rule, "allow_cidrs[0]");
    assert_eq!(inside.reason, ReasonCode::CidrAllowed);

    let partly = engine.decide(&app, "mixed.example.org", 443).await;
    assert_eq!(partly.verdict, Verdict::Deny, "one address outside the CIDR refuses the answer");
    assert_eq!(partly.rule, "special:private");
}

#[tokio::test]
async fn broad_allow_cidr_does_not_open_special_ranges() {
    // Two halves of the IPv4 space allow every public address, but are not
    // an explicit opening of loopback, private or metadata addresses.
    let mut settings = settings();
    settings.allow_cidrs = vec!["0.0.0.0/1".parse().unwrap(), "128.0.0.0/1".parse().unwrap()];
    let resolver = StaticResolver::new()
        .with("public.example.org", &[ip("93.184.216.34")])
        .with("loopback.example.org", &[ip("127.0.0.1")])
        .with("private.example.org", &[ip("10.1.2.3")])
        .with("metadata.example.org", &[ip("169.254.169.254")]);
    let engine = engine(settings, resolver);
    let app = app(&engine);

    let public = engine.decide(&app, "public.example.org", 443).await;
    assert_eq!(public.verdict, Verdict::Allow);
    assert_eq!(public.rule, "allow_cidrs[0]");
    for (host, rule) in [
        ("loopback.example.org", "special:loopback"),
        ("private.example.org", "special:private"),
        ("metadata.example.org", "special:cloud-metadata"),
    ] {
        let decision = engine.decide(&app, host, 443).await;
        assert_eq!(decision.verdict, Verdict::Deny, "{host}");
        assert_eq!(decision.rule, rule, "{host}");
    }
}

#[tokio::test]
async fn embedding_allow_cidr_needs_embedded_range() {
    // (allow_cidrs, literal, verdict, rule)
    let cases = [
        ("64:ff9b::/96", "[64:ff9b::7f00:1]", Verdict::Deny, "special:nat64:loopback"),
        ("64:ff9b::/96", "[64:ff9b::a9fe:a9fe]", Verdict::Deny, "special:nat64:cloud-metadata"),
        ("64:ff9b::/96", "[64:ff9b::a01:203]", Verdict::Deny, "special:nat64:private"),
        ("64:ff9b::a00:0/104", "[64:ff9b::a01:203]", Verdict::Allow, "allow_cidrs[0]"),
        ("64:ff9b::a00:0/104", "[64:ff9b::7f00:1]", Verdict::Deny, "special:nat64:loopback"),
        ("2002::/16", "[2002:7f00:1::]", Verdict::Deny, "special:6to4:loopback"),
        ("2002::/16", "[2002:c0a8:101::]", Verdict::Deny, "special:6to4:private"),
        ("2002:a00::/24", "[2002:a01:203::]", Verdict::Allow, "allow_cidrs[0]"),
        ("::/96", "[::7f00:1]", Verdict::Deny, "special:ipv4-compatible:loopback"),
        ("::7f00:0/104", "[::7f00:1]", Verdict::Allow, "allow_cidrs[0]"),
    ];
    for (cidr, literal, verdict, rule) in cases {
        let mut settings = settings();
        settings.allow_cidrs = vec![cidr.parse().unwrap()];
        let engine = engine(settings, StaticResolver::new());
        let decision = engine.decide(&app(&engine), literal, 443).await;
        assert_eq!(decision.verdict, verdict, "{literal} with allow_cidrs {cidr}: {}", decision.message);
        assert_eq!(decision.rule, rule, "{literal} with allow_cidrs {cidr}");
    }
}

#[tokio::test]
async fn most_specific_allow_cidr_decides() {
    let mut settings = settings();
    settings.allow_cidrs =
        vec!["0.0.0.0/1".parse().unwrap(), "10.1.0.0/16".parse().unwrap(), "10.1.2.0/24".parse().unwrap()];
    let engine = engine(settings, StaticResolver::new());
    let app = app(&engine);

    let narrow = engine.decide(&app, "10.1.2.3", 443).await;
    assert_eq!(narrow.verdict, Verdict::Allow, "{}", narrow.message);
    assert_eq!(narrow.rule, "allow_cidrs[2]");

    let wider = engine.decide(&app, "10.1.9.9", 443).await;
    assert_eq!(wider.verdict, Verdict::Allow, "{}", wider.message);
    assert_eq!(wider.rule, "allow_cidrs[1]");

    let outside = engine.decide(&app, "10.2.0.1", 443).await;
    assert_eq!(outside.verdict, Verdict::Deny);
    assert_eq!(outside.rule, "special:private");
}

#[tokio::test]
async fn unlisted_name_not_looked_up() {
    let resolver = std::sync::Arc::new(RecordingResolver::default());
    let rules = portcullis_egress::EgressRules::new(settings()).unwrap();
    let engine = portcullis_egress::Engine::new(std::sync::Arc::new(rules), resolver.clone());
    let app = app(&engine);

    let decision = engine.decide(&app, "c2VjcmV0.exfil.test", 443).await;
    assert_eq!(decision.verdict, Verdict::Deny);
    assert_eq!(decision.rule, "default:not-allowed");
    assert!(decision.resolved.is_empty(), "{:?}", decision.resolved);
    assert!(resolver.names.lock().unwrap().is_empty(), "a name no rule admits must not be looked up");

    let listed = engine.decide(&app, "api.example.org", 443).await;
    assert_eq!(listed.verdict, Verdict::Allow);
    assert_eq!(resolver.names.lock().unwrap().len(), 1, "a listed name is looked up once");
}

#[tokio::test]
async fn unlisted_name_looked_up_for_allow_cidrs() {
    // With allow_cidrs entries, the addresses of an unlisted name decide, so
    // the name is looked up.
    let mut settings = settings();
    settings.allow_cidrs = vec!["93.184.216.0/24".parse().unwrap()];
    let resolver = std::sync::Arc::new(RecordingResolver::default());
    let rules = portcullis_egress::EgressRules::new(settings).unwrap();
    let engine = portcullis_egress::Engine::new(std::sync::Arc::new(rules), resolver.clone());

    let decision = engine.decide(&app(&engine), "cdn.other.test", 443).await;
    assert_eq!(decision.verdict, Verdict::Allow, "{PUBLIC_V4} is inside the CIDR: {}", decision.message);
    assert_eq!(decision.rule, "allow_cidrs[0]");
    assert_eq!(resolver.names.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn resolution_failures_denied() {
    let engine = engine(settings(), StaticResolver::new().with("empty.example.org", &[]));
    let app = app(&engine);

    let missing = engine.decide(&app, "missing.example.org", 443).await;
    assert_eq!(missing.rule, "resolve:failed");
    assert_eq!(missing.reason, ReasonCode::ResolveFailed);
    assert_eq!(missing.verdict, Verdict::Deny);

    let empty = engine.decide(&app, "empty.example.org", 443).await;
    assert_eq!(empty.rule, "resolve:no-addresses");
    assert_eq!(empty.reason, ReasonCode::NoAddresses);
}

fn manifest(hosts: &[&str]) -> Vec<String> {
    hosts.iter().map(|h| (*h).to_owned()).collect()
}

#[test]
fn manifest_widening_rejected() {
    let mut settings = settings();
    settings.allow_hosts = vec![suffix("example.org"), exact("feed.weather.test")];
    let rules = portcullis_egress::EgressRules::new(settings).unwrap();
    let space = live_space();

    // (requested hosts, host the error must name)
    let cases = [
        (manifest(&["api.example.org", "evil.test"]), "evil.test"),
        (manifest(&["example.org"]), "example.org"),
        (manifest(&["*.weather.test"]), "*.weather.test"),
        (manifest(&["*.feed.weather.test"]), "*.feed.weather.test"),
        (manifest(&["evilexample.org"]), "evilexample.org"),
    ];
    for (requested, host) in cases {
        let error =
            AppRules::new(&rules, app_id(), SpaceName::Live, &space, Some(&requested)).expect_err("widening must fail");
        match &error {
            EgressError::HostWidened { host: named, scope, app_id } => {
                assert_eq!(named, host);
                assert_eq!(scope, "egress.allow_hosts");
                assert_eq!(app_id, "weather-app");
            }
            other => panic!("{requested:?}: expected HostWidened, got {other}"),
        }
        assert!(error.to_string().contains(&format!("{host:?}")), "{error}");
    }
}

#[test]
fn manifest_cannot_widen_space() {
    let rules = portcullis_egress::EgressRules::new(settings()).unwrap();
    let space = Space { services: Vec::new(), egress_allow_hosts: Some(vec![exact("api.example.org")]) };
    let requested = manifest(&["www.example.org"]);
    let error = AppRules::new(&rules, app_id(), SpaceName::Sandbox, &space, Some(&requested)).expect_err("must fail");
    assert!(
        matches!(&error, EgressError::HostWidened { host, scope, .. } if host == "www.example.org" && scope == "spaces.sandbox.egress_allow_hosts"),
        "{error}"
    );
}

#[test]
fn manifest_host_must_be_normalised() {
    let rules = portcullis_egress::EgressRules::new(settings()).unwrap();
    let requested = manifest(&["API.example.org."]);
    let error =
        AppRules::new(&rules, app_id(), SpaceName::Live, &live_space(), Some(&requested)).expect_err("must fail");
    assert!(matches!(&error, EgressError::InvalidManifestHost { host, .. } if host == "API.example.org."), "{error}");
    assert!(error.to_string().contains("\"api.example.org\""), "{error}");
}

#[tokio::test]
async fn manifest_narrows_platform_list() {
    let rules = portcullis_egress::EgressRules::new(settings()).unwrap();
    let requested = manifest(&["api.example.org"]);
    let narrowed = AppRules::new(&rules, app_id(), SpaceName::Live, &live_space(), Some(&requested)).unwrap();
    let engine = portcullis_egress::Engine::new(std::sync::Arc::new(rules), std::sync::Arc::new(public_resolver()));

    let listed = engine.decide(&narrowed, "api.example.org", 443).await;
    assert_eq!(listed.verdict, Verdict::Allow);
    assert_eq!(listed.rule, "app:allow_hosts[0]");

    let unlisted = engine.decide(&narrowed, "www.example.org", 443).await;
    assert_eq!(unlisted.verdict, Verdict::Deny);
    assert_eq!(unlisted.rule, "default:not-allowed");
    assert!(unlisted.message.contains("manifest"), "{}", unlisted.message);

    let staged = narrowed.with_mode(Mode::Report);
    let reported = engine.decide(&staged, "www.example.org", 443).await;
    assert_eq!(reported.verdict, Verdict::ReportOnlyDeny);
    assert_eq!(reported.mode, Mode::Report);
}

#[tokio::test]
async fn space_list_narrows() {
    let rules = portcullis_egress::EgressRules::new(settings()).unwrap();
    let space = Space { services: Vec::new(), egress_allow_hosts: Some(vec![exact("api.example.org")]) };
    let app = AppRules::new(&rules, app_id(), SpaceName::Sandbox, &space, None).unwrap();
    let engine = portcullis_egress::Engine::new(std::sync::Arc::new(rules), std::sync::Arc::new(public_resolver()));

    let listed = engine.decide(&app, "api.example.org", 443).await;
    assert_eq!(listed.rule, "spaces.sandbox.egress_allow_hosts[0]");
    assert_eq!(listed.verdict, Verdict::Allow);

    let unlisted = engine.decide(&app, "www.example.org", 443).await;
    assert_eq!(unlisted.verdict, Verdict::Deny);
    assert!(unlisted.message.contains("spaces.sandbox.egress_allow_hosts"), "{}", unlisted.message);
}

#[tokio::test]
async fn event_serialises_decision() {
    let engine = engine(settings(), StaticResolver::new().with("api.example.org", &[ip(PUBLIC_V4), ip("10.0.0.1")]));
    let decision = engine.decide(&app(&engine), "API.example.org", 443).await;
    let event = EgressEvent::new(&app_id(), "API.example.org", &decision);
    let json = serde_json::to_value(&event).unwrap();

    assert_eq!(json["app_id"], "weather-app");
    assert_eq!(json["requested_host"], "API.example.org");
    assert_eq!(json["host"], "api.example.org");
    assert_eq!(json["port"], 443);
    assert_eq!(json["resolved"], serde_json::json!([PUBLIC_V4, "10.0.0.1"]));
    assert_eq!(json["connected"], serde_json::Value::Null);
    assert_eq!(json["verdict"], "deny");
    assert_eq!(json["reason"], "special_address");
    assert_eq!(json["rule"], "special:private");
    assert_eq!(json["mode"], "enforce");

    let connected = event.with_connected(SocketAddr::new(ip(PUBLIC_V4), 443));
    assert_eq!(serde_json::to_value(&connected).unwrap()["connected"], "93.184.216.34:443");
}
