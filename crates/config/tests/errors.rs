//! Broken configurations, each derived from the weather example by one edit,
//! and the exact key path the error must name.

use std::path::Path;
use std::time::Duration;

use portcullis_config::{ConfigError, parse};

const EXAMPLE: &str = include_str!("../../../examples/weather-platform/platform.toml");

fn edited(from: &str, to: &str) -> String {
    assert!(EXAMPLE.contains(from), "the example no longer contains {from:?}");
    EXAMPLE.replacen(from, to, 1)
}

fn error_of(text: &str) -> ConfigError {
    parse(Path::new("platform.toml"), text).expect_err("the configuration should be rejected")
}

#[test]
fn example_is_valid() {
    let config = parse(Path::new("examples/weather-platform/platform.toml"), EXAMPLE).expect("example parses");
    assert_eq!(config.trust_domain, "weather.example");
    assert_eq!(config.services.len(), 2);
    assert_eq!(config.guard.policies.len(), 4);
    assert_eq!(config.identity.app_cert_lifetime.as_secs(), 86_400);
    assert_eq!(config.egress.max_bytes_per_app, Some(10 * 1024 * 1024 * 1024));
    assert_eq!(config.egress.tunnel_buffer_bytes, 1024 * 1024);
    assert_eq!(config.egress.static_hosts["feed.weather.test"], std::net::IpAddr::from([127, 0, 0, 1]));
}

#[test]
fn broken_configurations_name_key_path() {
    // (case, edited text, key path in the error, text the message must contain)
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("unknown top-level key", format!("trust_domian = \"x\"\n{EXAMPLE}"), "trust_domian", "unknown field"),
        ("unknown nested key", edited("pids = 128 ", "pid = 128 "), "runtime.hardening.pid", "unknown field"),
        (
            "wrong type",
            edited("threshold = 20\n", "threshold = \"twenty\"\n"),
            "guard.policies[0].threshold",
            "invalid type",
        ),
        (
            "negative memory limit",
            edited("memory_mib = 256", "memory_mib = -256"),
            "runtime.hardening.memory_mib",
            "from 16 to",
        ),
        (
            "zero-length window",
            edited("window = \"5s\"", "window = \"0s\""),
            "guard.policies[2].window",
            "duration from",
        ),
        (
            "duration without unit",
            edited("duration = \"1h\"", "duration = \"3600\""),
            "guard.policies[0].duration",
            "with a unit",
        ),
        (
            "route to unknown scope",
            edited("scope = \"weather:read\"", "scope = \"weather:write\""),
            "services[0].routes[0].scope",
            "weather:read",
        ),
        (
            "space names unknown service",
            edited("services = [\"weather\", \"records\"]", "services = [\"weather\", \"billing\"]"),
            "spaces.live.services[1]",
            "records",
        ),
        ("unknown space", edited("[spaces.sandbox]", "[spaces.staging]"), "spaces.staging", "sandbox"),
        (
            "busy poll window too long",
            edited("busy_poll_window = \"0s\"", "busy_poll_window = \"50ms\""),
            "gateway.busy_poll_window",
            "from 0ms to 10ms",
        ),
        (
            "prefix with dot segment",
            edited("prefix = \"/weather/v1/\"", "prefix = \"/weather/../v1/\""),
            "services[0].routes[0].prefix",
            "segment",
        ),
        (
            "prefix with percent",
            edited("prefix = \"/weather/v1/\"", "prefix = \"/weather/%2e/\""),
            "services[0].routes[0].prefix",
            "'%'",
        ),
        (
            "unknown method",
            edited("methods = [\"GET\", \"HEAD\"]", "methods = [\"GET\", \"FETCH\"]"),
            "services[0].routes[0].methods[1]",
            "GET",
        ),
        (
            "duplicate route",
            edited("methods = [\"POST\", \"PUT\", \"DELETE\"]", "methods = [\"POST\", \"GET\"]"),
            "services[1].routes[1].prefix",
            "not already routed",
        ),
        (
            "scope of another service",
            edited("scopes = [\"weather:read\"]", "scopes = [\"records:read\"]"),
            "services[0].scopes[0]",
            "weather:<action>",
        ),
        (
            "HTTP/2 to a plain HTTP upstream",
            edited(
                "upstream = \"https://127.0.0.1:9101\"\n# The gateway",
                "upstream = \"http://127.0.0.1:9101\"\n# The gateway",
            )
            .replacen("upstream_http2 = false", "upstream_http2 = true", 1),
            "services[0].upstream_http2",
            "h2c is not supported",
        ),
        (
            "plain HTTP upstream over the network",
            edited("upstream = \"https://127.0.0.1:9101\"", "upstream = \"http://10.1.2.3:9101\""),
            "services[0].upstream",
            "http:// is accepted only for a loopback address or localhost",
        ),
        (
            "plain HTTP upstream by name",
            edited("upstream = \"https://127.0.0.1:9101\"", "upstream = \"http://weather.internal:9101\""),
            "services[0].upstream",
            "an https:// URL, because the gateway reaches services over mutual TLS",
        ),
        (
            "service rate out of range",
            edited("upstream_http2 = false", "upstream_http2 = false\nrate_per_second = 0.0"),
            "services[0].rate_per_second",
            "a number from 0.001 to 1000000 (requests per second)",
        ),
        (
            "upstream_http2 not a boolean",
            edited("upstream_http2 = false", "upstream_http2 = \"yes\""),
            "services[0].upstream_http2",
            "invalid type",
        ),
        (
            "upstream without scheme",
            edited("upstream = \"https://127.0.0.1:9101\"", "upstream = \"127.0.0.1:9101\""),
            "services[0].upstream",
            "https://",
        ),
        (
            "duplicate service",
            edited("name = \"records\"", "name = \"weather\""),
            "services[1].name",
            "not used by another service",
        ),
        (
            "bad listener",
            edited("gateway = \"127.0.0.1:8443\"", "gateway = \"localhost:8443\""),
            "listeners.gateway",
            "IP address and port",
        ),
        (
            "listener reused",
            edited("egress = \"127.0.0.1:8444\"", "egress = \"127.0.0.1:8443\""),
            "listeners.egress",
            "listeners.gateway",
        ),
        (
            "match-all egress host",
            edited("allow_hosts = [\"feed.weather.test\"]", "allow_hosts = [\"*\"]"),
            "egress.allow_hosts[0]",
            "every host",
        ),
        (
            "wildcard in the middle",
            edited("allow_hosts = [\"feed.weather.test\"]", "allow_hosts = [\"feed.*.test\"]"),
            "egress.allow_hosts[0]",
            "leading",
        ),
        (
            "upper-case host",
            edited("allow_hosts = [\"feed.weather.test\"]", "allow_hosts = [\"Feed.Weather.test.\"]"),
            "egress.allow_hosts[0]",
            "\"feed.weather.test\"",
        ),
        (
            "unicode host",
            edited("allow_hosts = [\"feed.weather.test\"]", "allow_hosts = [\"bücher.test\"]"),
            "egress.allow_hosts[0]",
            "xn--bcher-kva.test",
        ),
        (
            "short IPv4 as host",
            edited("allow_hosts = [\"feed.weather.test\"]", "allow_hosts = [\"127.1\"]"),
            "egress.allow_hosts[0]",
            "ending in \"1\" as an IPv4 address",
        ),
        (
            "decimal IPv4 as host",
            edited("deny_hosts = [\"*.forbidden.test\"]", "deny_hosts = [\"2130706433\"]"),
            "egress.deny_hosts[0]",
            "allow_cidrs or deny_cidrs",
        ),
        (
            "hex IPv4 as host",
            edited("deny_hosts = [\"*.forbidden.test\"]", "deny_hosts = [\"0x7f.1\"]"),
            "egress.deny_hosts[0]",
            "ending in \"1\"",
        ),
        (
            "numeric last label",
            edited("allow_hosts = [\"feed.weather.test\"]", "allow_hosts = [\"*.example.0x1f\"]"),
            "egress.allow_hosts[0]",
            "ending in \"0x1f\"",
        ),
        (
            "wildcard below a country suffix",
            edited("allow_hosts = [\"feed.weather.test\"]", "allow_hosts = [\"*.co.uk\"]"),
            "egress.allow_hosts[0]",
            "\"*.example.co.uk\"; \"co.uk\" is a public suffix",
        ),
        (
            "wildcard below a hosting suffix",
            edited("allow_hosts = [\"feed.weather.test\"]", "allow_hosts = [\"*.github.io\"]"),
            "egress.allow_hosts[0]",
            "\"github.io\" is a public suffix",
        ),
        (
            "wildcard above a cloud storage suffix",
            edited("allow_hosts = [\"feed.weather.test\"]", "allow_hosts = [\"*.amazonaws.com\"]"),
            "egress.allow_hosts[0]",
            "exact host names under \"amazonaws.com\"",
        ),
        (
            "wildcard over a wildcard suffix rule",
            edited("allow_hosts = [\"feed.weather.test\"]", "allow_hosts = [\"*.kawasaki.jp\"]"),
            "egress.allow_hosts[0]",
            "\"*.kawasaki.jp\" is a public suffix below it",
        ),
        (
            "wildcard on a multi-label suffix",
            edited("allow_hosts = [\"feed.weather.test\"]", "allow_hosts = [\"*.s3.amazonaws.com\"]"),
            "egress.allow_hosts[0]",
            "\"s3.amazonaws.com\" is a public suffix, under which",
        ),
        (
            "wildcard below an IDN suffix",
            edited("allow_hosts = [\"feed.weather.test\"]", "allow_hosts = [\"*.xn--fiqs8s\"]"),
            "egress.allow_hosts[0]",
            "below a domain of at least two labels",
        ),
        (
            "wildcard below a generic suffix",
            edited("allow_hosts = [\"feed.weather.test\"]", "allow_hosts = [\"*.com\"]"),
            "egress.allow_hosts[0]",
            "below a domain of at least two labels",
        ),
        (
            "mapped IPv6 deny range",
            edited("deny_cidrs = []", "deny_cidrs = [\"::ffff:10.0.0.0/104\"]"),
            "egress.deny_cidrs[0]",
            "the IPv4 form \"10.0.0.0/8\"",
        ),
        (
            "space widens egress",
            edited("egress_allow_hosts = []", "egress_allow_hosts = [\"evil.test\"]"),
            "spaces.sandbox.egress_allow_hosts[0]",
            "only narrow",
        ),
        (
            "cidr with host bits",
            edited("allow_cidrs = [\"127.0.0.1/32\"]", "allow_cidrs = [\"10.1.2.3/8\"]"),
            "egress.allow_cidrs[0]",
            "\"10.0.0.0/8\"",
        ),
        (
            "port out of range",
            edited("allow_ports = [443, 9103]", "allow_ports = [443, 70000]"),
            "egress.allow_ports[1]",
            "65535",
        ),
        (
            "byte cap too small",
            edited("max_bytes_per_app = 10737418240", "max_bytes_per_app = 1024"),
            "egress.max_bytes_per_app",
            "from 1048576 to 1125899906842624 (bytes per app per hour)",
        ),
        (
            "negative byte cap",
            edited("max_bytes_per_app = 10737418240", "max_bytes_per_app = -1"),
            "egress.max_bytes_per_app",
            "from 1048576",
        ),
        (
            "tunnel buffer too small",
            edited("tunnel_buffer_bytes = 1048576", "tunnel_buffer_bytes = 4096"),
            "egress.tunnel_buffer_bytes",
            "from 16384 to 16777216 (bytes per direction of a tunnel)",
        ),
        (
            "tunnel buffer too large",
            edited("tunnel_buffer_bytes = 1048576", "tunnel_buffer_bytes = 1073741824"),
            "egress.tunnel_buffer_bytes",
            "invalid value 1073741824",
        ),
        (
            "static host outside allow_cidrs",
            edited("\"feed.weather.test\" = \"127.0.0.1\"", "\"feed.weather.test\" = \"127.0.0.2\""),
            "egress.static_hosts.feed.weather.test",
            "add \"127.0.0.2/32\" to egress.allow_cidrs",
        ),
        (
            "static host not an address",
            edited("\"feed.weather.test\" = \"127.0.0.1\"", "\"feed.weather.test\" = \"localhost\""),
            "egress.static_hosts.feed.weather.test",
            "one IP address",
        ),
        (
            "static host wildcard",
            edited("static_hosts = { \"feed.weather.test\"", "static_hosts = { \"*.weather.test\""),
            "egress.static_hosts.*.weather.test",
            "wildcards cannot be pinned",
        ),
        (
            "static host not normalised",
            edited("static_hosts = { \"feed.weather.test\"", "static_hosts = { \"Feed.Weather.test\""),
            "egress.static_hosts.Feed.Weather.test",
            "\"feed.weather.test\"",
        ),
        (
            "static host metadata address",
            edited("allow_cidrs = [\"127.0.0.1/32\"]", "allow_cidrs = [\"127.0.0.1/32\", \"169.254.0.0/16\"]")
                .replace("\"feed.weather.test\" = \"127.0.0.1\"", "\"feed.weather.test\" = \"169.254.169.254\""),
            "egress.static_hosts.feed.weather.test",
            "cloud metadata",
        ),
        (
            "unknown outcome class",
            edited("classes = [\"400\"]", "classes = [\"418\"]"),
            "guard.policies[1].classes[0]",
            "too_large",
        ),
        (
            "throttle without rate",
            edited("throttle_per_second = 1.0\n", ""),
            "guard.policies[1].throttle_per_second",
            "requests per second",
        ),
        (
            "unknown mode",
            edited(
                "mode = \"enforce\"\n\n[[guard.policies]]\nname = \"malformed\"",
                "mode = \"dry-run\"\n\n[[guard.policies]]\nname = \"malformed\"",
            ),
            "guard.policies[0].mode",
            "report",
        ),
        ("unknown driver", edited("driver = \"docker\"", "driver = \"podman\""), "runtime.driver", "process"),
        ("renewal too late", edited("renew_at = 0.667", "renew_at = 1.5"), "identity.renew_at", "0.9"),
        (
            "bad trust domain",
            edited("trust_domain = \"weather.example\"", "trust_domain = \"Weather Example\""),
            "trust_domain",
            "DNS name",
        ),
        (
            "missing live space",
            edited("[spaces.live]\nservices = [\"weather\", \"records\"]\n", ""),
            "spaces",
            "[spaces.live]",
        ),
        (
            "bad exempt app",
            edited("exempt_apps = []", "exempt_apps = [\"Ops_Probe\"]"),
            "guard.exempt_apps[0]",
            "lowercase",
        ),
        (
            "ban longer than max",
            edited("max_ban = \"7d\"", "max_ban = \"30m\""),
            "guard.policies[0].duration",
            "guard.max_ban",
        ),
        (
            "store url scheme",
            edited("# url = \"postgres://portcullis@localhost/portcullis\"", "url = \"mysql://root:secret@db/x\""),
            "store.url",
            "postgres://",
        ),
    ];

    assert!(cases.len() >= 12);
    for (case, text, key, needle) in cases {
        let error = error_of(&text);
        println!("{case}: {error}");
        assert_eq!(error.key(), Some(key), "{case}: wrong key path in: {error}");
        let message = error.to_string();
        assert!(message.starts_with("platform.toml"), "{case}: file not named in: {message}");
        assert!(message.contains(needle), "{case}: {needle:?} missing from: {message}");
    }
}

#[test]
fn store_url_error_hides_password() {
    let text = edited("# url = \"postgres://portcullis@localhost/portcullis\"", "url = \"mysql://root:hunter2@db/x\"");
    let message = error_of(&text).to_string();
    assert!(!message.contains("hunter2"), "password leaked into: {message}");
}

#[test]
fn upstream_error_hides_password() {
    let text = edited("upstream = \"https://127.0.0.1:9101\"", "upstream = \"http://user:hunter2@127.0.0.1:9101/\"");
    let message = error_of(&text).to_string();
    assert!(!message.contains("hunter2"), "password leaked into: {message}");
    assert!(message.contains("\"http://***@127.0.0.1:9101/\""), "{message}");
}

#[test]
fn syntax_error_names_line() {
    let error = error_of("trust_domain = \"a\"\nlisteners = [\n");
    let message = error.to_string();
    assert!(matches!(error, ConfigError::Syntax { .. }), "{message}");
    assert!(message.starts_with("platform.toml:"), "{message}");
}

#[test]
fn duplicate_table_names_header() {
    let message = error_of(&format!("{EXAMPLE}\n[gateway]\nmax_header_bytes = 1\n")).to_string();
    let line = EXAMPLE.lines().count() + 2;
    assert!(message.starts_with(&format!("platform.toml:{line}:")), "{message}");
    assert!(message.contains("duplicate key `[gateway]`"), "{message}");
    assert!(message.contains("merge the two"), "{message}");
}

#[test]
fn huge_integer_is_out_of_range() {
    let error = error_of(&edited("max_body_bytes = 1048576", "max_body_bytes = 99999999999999999999999"));
    assert_eq!(error.key(), Some("gateway.max_body_bytes"));
    let message = error.to_string();
    assert!(message.contains("integer 99999999999999999999999 is out of range"), "{message}");
    assert!(!message.contains("i128"), "{message}");
}

#[test]
fn buffer_budget_must_hold_one_body() {
    let text = edited("max_buffered_bytes_per_app = 16777216", "max_buffered_bytes_per_app = 1000");
    let error = error_of(&text);
    assert_eq!(error.key(), Some("gateway.max_buffered_bytes_per_app"));
    let message = error.to_string();
    assert!(message.contains("1000"), "{message}");
    assert!(message.contains("at least gateway.max_body_bytes (1048576)"), "{message}");

    let streaming = text.replace("request_buffering = true", "request_buffering = false");
    assert!(parse(Path::new("platform.toml"), &streaming).is_ok(), "without buffering the budget is unused");
}

#[test]
fn wrong_type_names_line() {
    let message = error_of(&edited("threshold = 20\n", "threshold = \"twenty\"\n")).to_string();
    let line = EXAMPLE.lines().position(|l| l == "threshold = 20").unwrap() + 1;
    assert!(message.starts_with(&format!("platform.toml:{line}:")), "{message}");
}

#[test]
fn busy_poll_window_rejects_bad_values() {
    let expected = "expected a duration from 0ms to 10ms, written with a unit such as \"200us\" or \"1ms\"";
    for value in ["-1ms", "20ms", "abc", "10", "10ms 1ns"] {
        let text = edited("busy_poll_window = \"0s\"", &format!("busy_poll_window = \"{value}\""));
        let error = error_of(&text);
        assert_eq!(error.key(), Some("gateway.busy_poll_window"), "{value}: {error}");
        assert_eq!(
            error.to_string(),
            format!("platform.toml: gateway.busy_poll_window: invalid value \"{value}\": {expected}")
        );
    }

    let error = error_of(&edited("busy_poll_window = \"0s\"", "busy_poll_window = 10"));
    assert_eq!(error.key(), Some("gateway.busy_poll_window"));
    assert!(error.to_string().contains("invalid type: integer `10`, expected a string"), "{error}");
}

#[test]
fn busy_poll_window_accepts_range() {
    for (value, window) in
        [("0s", Duration::ZERO), ("200us", Duration::from_micros(200)), ("10ms", Duration::from_millis(10))]
    {
        let text = edited("busy_poll_window = \"0s\"", &format!("busy_poll_window = \"{value}\""));
        let config = parse(Path::new("platform.toml"), &text).expect(value);
        assert_eq!(config.gateway.busy_poll_window, window, "{value}");
    }
}

#[test]
fn wildcards_below_registrable_domains_accepted() {
    // Wildcards one label below a public suffix, and public-suffix
    // wildcards in the deny-list, which only narrows.
    for allow in ["*.example.co.uk", "*.weather.test", "*.pages.example.org", "*.xn--fiqs8s.xn--55qx5d.cn"] {
        let text = edited("allow_hosts = [\"feed.weather.test\"]", &format!("allow_hosts = [\"{allow}\"]"));
        let config = parse(Path::new("platform.toml"), &text).expect(allow);
        assert_eq!(config.egress.allow_hosts.len(), 1, "{allow}");
    }

    let text = edited("deny_hosts = [\"*.forbidden.test\"]", "deny_hosts = [\"*.co.uk\", \"*.github.io\"]");
    let config = parse(Path::new("platform.toml"), &text).expect("public-suffix wildcards in deny_hosts");
    assert_eq!(config.egress.deny_hosts.len(), 2);
}
