//! The decision: whether an app may connect to a host and port, and to
//! which exact addresses.
//!
//! # Precedence
//!
//! Rules are checked in this order; the first rule that denies decides, and
//! every address of a name must pass:
//!
//! 1. Malformed host → deny (`malformed:host`).
//! 2. `deny_hosts` → deny (`deny_hosts[i]`).
//! 3. Port not in `allow_ports` → deny (`allow_ports`).
//! 4. If `allow_cidrs` is empty, a host name must pass step 9 now, before
//!    any lookup, so that a name no rule can admit never reaches a DNS
//!    server. With `allow_cidrs` entries, a name outside the host lists is
//!    still looked up, because its addresses may fall inside them.
//! 5. Resolution: failure or no address → deny (`resolve:failed`,
//!    `resolve:no-addresses`). IP literals skip this step.
//! 6. Per address, `deny_cidrs` (also matching the IPv4 address a 6to4,
//!    NAT64 or IPv4-compatible address embeds) → deny (`deny_cidrs[i]`).
//! 7. Per address, special-purpose range → deny (`special:<id>`), unless
//!    the address is inside an `allow_cidrs` entry that lies within that
//!    special-purpose range (a broader entry such as `0.0.0.0/1` does not
//!    open it).
//! 8. Per address, `allow_cidrs` → this address is allowed
//!    (`allow_cidrs[i]`), and steps 9 and 10 are skipped for it.
//! 9. The host name must match `allow_hosts`, the space's
//!    `egress_allow_hosts` if set, and the app's manifest list if set → else
//!    deny (`default:not-allowed`). An IP literal outside `allow_cidrs` is
//!    denied here too.
//! 10. Per address, the country rule → deny (`country:deny:<CC>`,
//!     `country:allow`, `country:unknown`).
//! 11. Otherwise allow: `allow_cidrs[i]` if every address was allowed by a
//!     CIDR, else the narrowest host list's entry (`app:allow_hosts[i]`,
//!     `spaces.<space>.egress_allow_hosts[i]` or `allow_hosts[i]`).
//!
//! # Report mode
//!
//! Steps 3, 4, 9 and 10 follow the mode of their rule set: the platform's
//! `egress.mode`, or for the app's manifest list the app's mode. In report
//! mode their denial is recorded and evaluation goes on. If nothing
//! enforced denies, the verdict is [`Verdict::ReportOnlyDeny`] with the
//! first recorded denial, and the connection may proceed. Steps 1, 2, 5, 6
//! and 7 are enforced in every mode: report mode stages allow-lists, and
//! never opens deny-lists or special-purpose addresses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use portcullis_config::{HostPattern, Mode};

use crate::country::CountryDb;
use crate::decision::{CheckedTarget, Decision, Finding, ReasonCode, Verdict};
use crate::host::Host;
use crate::pattern::matches;
use crate::resolve::Resolve;
use crate::rules::{AppRules, EgressRules};
use crate::special::classify;

/// The egress decision engine: platform rules plus a resolver. Cheap to
/// clone and safe to share between connections.
#[derive(Clone)]
pub struct Engine {
    rules: Arc<EgressRules>,
    resolver: Arc<dyn Resolve>,
}

/// A denial that ends evaluation, or a report-mode denial recorded so far.
type Step<T> = Result<T, Finding>;

impl Engine {
    /// Builds an engine from platform rules and a resolver.
    pub fn new(rules: Arc<EgressRules>, resolver: Arc<dyn Resolve>) -> Self {
        Self { rules, resolver }
    }

    /// Returns the platform rules.
    pub fn rules(&self) -> &EgressRules {
        &self.rules
    }

    /// Returns the platform rules, shared.
    pub fn shared_rules(&self) -> Arc<EgressRules> {
        Arc::clone(&self.rules)
    }

    /// Returns an engine with `rules` and this engine's resolver.
    pub fn with_rules(&self, rules: Arc<EgressRules>) -> Self {
        Self { rules, resolver: Arc::clone(&self.resolver) }
    }

    /// Decides whether `app` may connect to `host` (as the client wrote it,
    /// without the port) on `port`, following the precedence in the module
    /// documentation. Resolves names once; a permitted decision carries the
    /// exact addresses checked, to be passed to [`connect`](crate::connect).
    ///
    /// Logs denials (and report-only denials) at info and allows at debug,
    /// with the app id, host, port and rule.
    pub async fn decide(&self, app: &AppRules, host: &str, port: u16) -> Decision {
        let decision = self.evaluate(app, host, port).await;
        log_decision(app, &decision);
        decision
    }

    /// Decides like [`decide`](Self::decide) without logging, for a caller
    /// that writes the decision into its own log line, as the proxy server
    /// does.
    pub async fn evaluate(&self, app: &AppRules, requested: &str, port: u16) -> Decision {
        let mut report: Option<Finding> = None;
        let mut decision = Decision {
            verdict: Verdict::Deny,
            reason: ReasonCode::InvalidHost,
            message: String::new(),
            rule: String::new(),
            mode: Mode::Enforce,
            host: requested.to_owned(),
            port,
            resolved: Vec::new(),
            target: None,
        };

        let host = match Host::parse(requested) {
            Ok(host) => host,
            Err(error) => {
                let finding = Finding::enforced(ReasonCode::InvalidHost, "malformed:host", error.to_string());
                return finish(decision, Err(finding), None);
            }
        };
        decision.host = host.to_string();

        if let Err(denial) = self.check_host_and_port(&host, port, &mut report) {
            return finish(decision, Err(denial), report);
        }

        let mut host_allow = None;
        if host.name().is_some() && self.rules.settings.allow_cidrs.is_empty() {
            match self.check_host_allowed(app, &host, &mut report) {
                Ok(finding) => host_allow = Some(finding),
                Err(denial) => return finish(decision, Err(denial), report),
            }
        }

        let addresses = match self.resolve(&host).await {
            Ok(addresses) => addresses,
            Err(denial) => return finish(decision, Err(denial), report),
        };
        decision.resolved = addresses.clone();

        let outcome = self.check_addresses(app, &host, &addresses, host_allow, &mut report);
        if outcome.is_ok() {
            let sockets = addresses.iter().map(|&ip| SocketAddr::new(ip, port)).collect();
            decision.target = Some(CheckedTarget::new(sockets));
        }
        finish(decision, outcome, report)
    }

    /// Steps 2 and 3: `deny_hosts` and `allow_ports`.
    fn check_host_and_port(&self, host: &Host, port: u16, report: &mut Option<Finding>) -> Step<()> {
        if let Some(name) = host.name() {
            if let Some(index) = self.rules.denied_host(name) {
                let pattern = &self.rules.settings.deny_hosts[index];
                let message = format!("{name} matches deny_hosts entry {pattern}");
                return Err(Finding::enforced(ReasonCode::HostDenied, format!("deny_hosts[{index}]"), message));
            }
        }

        if !self.rules.settings.allow_ports.contains(&port) {
            let message = format!("port {port} is not in allow_ports {:?}", self.rules.settings.allow_ports);
            let finding = Finding::staged(self.rules.settings.mode, ReasonCode::PortNotAllowed, "allow_ports", message);
            record(report, finding)?;
        }
        Ok(())
    }

    /// Step 5: the literal, or every address the name resolves to, with
    /// IPv4-mapped IPv6 addresses turned into the IPv4 address they denote
    /// and duplicates removed.
    async fn resolve(&self, host: &Host) -> Step<Vec<IpAddr>> {
        let answer = match host {
            Host::Ip(ip) => vec![*ip],
            Host::Name(name) => match self.resolver.resolve(name).await {
                Ok(answer) => answer,
                Err(message) => {
                    let message = format!("resolving {name} failed: {message}");
                    return Err(Finding::enforced(ReasonCode::ResolveFailed, "resolve:failed", message));
                }
            },
        };

        let mut addresses: Vec<IpAddr> = Vec::with_capacity(answer.len());
        for ip in answer.into_iter().map(|ip| ip.to_canonical()) {
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
        if addresses.is_empty() {
            let message = format!("{host} resolved to no address");
            return Err(Finding::enforced(ReasonCode::NoAddresses, "resolve:no-addresses", message));
        }
        Ok(addresses)
    }

    /// Steps 6 to 11 over every address, with the host lists' finding if
    /// step 4 already checked them. Returns the allowing finding.
    fn check_addresses(
        &self,
        app: &AppRules,
        host: &Host,
        addresses: &[IpAddr],
        mut host_allow: Option<Finding>,
        report: &mut Option<Finding>,
    ) -> Step<Finding> {
        let mut cidr_allow: Option<Finding> = None;

        for &ip in addresses {
            if let Some(index) = self.rules.denied_cidr(ip) {
                let net = self.rules.settings.deny_cidrs[index];
                let message = format!("{host} address {ip} is in deny_cidrs entry {net}");
                return Err(Finding::enforced(ReasonCode::CidrDenied, format!("deny_cidrs[{index}]"), message));
            }

            let allowed_cidr = self.rules.allowed_cidr(ip);
            if let Some(class) = classify(ip) {
                // Only a CIDR rule within the special-purpose range opens it:
                // a broad rule such as 0.0.0.0/1 is written for public
                // addresses and must not open loopback or private ones. For
                // a form that embeds an IPv4 address, the rule must lie
                // within the embedded range as seen through the form, so
                // 64:ff9b::/96 does not open 64:ff9b::7f00:1 (127.0.0.1), but
                // 64:ff9b::a00:0/104 opens NAT64 forms of 10.0.0.0/8.
                let required_prefix = match class.embedded {
                    Some((form, _)) => form.net.prefix_len() + class.range.net.prefix_len(),
                    None => class.range.net.prefix_len(),
                };
                let explicit = allowed_cidr.is_some_and(|(_, net)| net.prefix_len() >= required_prefix);
                if !explicit {
                    let message = format!("{host} address {}; list it in allow_cidrs to reach it", class.describe(ip));
                    return Err(Finding::enforced(ReasonCode::SpecialAddress, class.rule_id(), message));
                }
            }

            if let Some((index, net)) = allowed_cidr {
                if cidr_allow.is_none() {
                    let message = format!("{host} address {ip} is in allow_cidrs entry {net}");
                    cidr_allow = Some(Finding::staged(
                        self.rules.settings.mode,
                        ReasonCode::CidrAllowed,
                        format!("allow_cidrs[{index}]"),
                        message,
                    ));
                }
                continue;
            }

            if host_allow.is_none() {
                host_allow = Some(self.check_host_allowed(app, host, report)?);
            }
            self.check_country(host, ip, report)?;
        }

        Ok(host_allow.or(cidr_allow).expect("an address list is never empty"))
    }

    /// Step 9: the host name against the platform, space and app lists.
    fn check_host_allowed(&self, app: &AppRules, host: &Host, report: &mut Option<Finding>) -> Step<Finding> {
        let platform_mode = self.rules.settings.mode;
        let not_allowed =
            |mode: Mode, message: String| Finding::staged(mode, ReasonCode::NotAllowed, "default:not-allowed", message);

        let Some(name) = host.name() else {
            let message = format!("{host} is an IP address outside allow_cidrs");
            record(report, not_allowed(platform_mode, message.clone()))?;
            return Ok(not_allowed(platform_mode, message));
        };

        let mut allowed_by = None;

        match first_match(&self.rules.settings.allow_hosts, name) {
            Some(index) => allowed_by = Some((format!("allow_hosts[{index}]"), platform_mode)),
            None => record(report, not_allowed(platform_mode, format!("{name} matches no entry of allow_hosts")))?,
        }

        if let Some(space_hosts) = &app.space_hosts {
            let list = format!("spaces.{}.egress_allow_hosts", app.space);
            match first_match(space_hosts, name) {
                Some(index) => allowed_by = Some((format!("{list}[{index}]"), platform_mode)),
                None => record(report, not_allowed(platform_mode, format!("{name} matches no entry of {list}")))?,
            }
        }

        if let Some(app_hosts) = &app.hosts {
            match first_match(app_hosts, name) {
                Some(index) => allowed_by = Some((format!("app:allow_hosts[{index}]"), app.mode)),
                None => {
                    let message = format!("{name} matches no egress host of app {}'s manifest", app.app_id);
                    record(report, not_allowed(app.mode, message))?;
                }
            }
        }

        let (rule, mode) = allowed_by.unwrap_or_else(|| ("default:not-allowed".into(), platform_mode));
        let message = format!("{name} is allowed by {rule}");
        Ok(Finding::staged(mode, ReasonCode::HostAllowed, rule, message))
    }

    /// Step 10: the country of one address.
    fn check_country(&self, host: &Host, ip: IpAddr, report: &mut Option<Finding>) -> Step<()> {
        let Some((rule, db)) = &self.rules.countries else {
            return Ok(());
        };
        let mode = self.rules.settings.mode;

        let code = match lookup_country(db, ip) {
            Some(code) => code,
            None => {
                let message = format!("{host} address {ip} has no country in {}", db.path().display());
                return record(report, Finding::staged(mode, ReasonCode::CountryUnknown, "country:unknown", message));
            }
        };

        let listed = rule.codes.contains(&code);
        if rule.allow && !listed {
            let message =
                format!("{host} address {ip} is in {code}, which is not in the country allow-list {:?}", rule.codes);
            return record(report, Finding::staged(mode, ReasonCode::CountryNotAllowed, "country:allow", message));
        }
        if !rule.allow && listed {
            let message = format!("{host} address {ip} is in {code}, which is in the country deny-list");
            return record(
                report,
                Finding::staged(mode, ReasonCode::CountryDenied, format!("country:deny:{code}"), message),
            );
        }
        Ok(())
    }
}

/// Looks up a country, treating a lookup error like an unknown country so
/// that an allow-list fails closed.
fn lookup_country(db: &CountryDb, ip: IpAddr) -> Option<String> {
    match db.country(ip) {
        Ok(code) => code,
        Err(error) => {
            tracing::warn!(address = %ip, database = %db.path().display(), %error, "country lookup failed");
            None
        }
    }
}

fn first_match(patterns: &[HostPattern], name: &str) -> Option<usize> {
    patterns.iter().position(|pattern| matches(pattern, name))
}

/// Ends evaluation on an enforced denial, or records a report-mode denial
/// (keeping the first) and lets evaluation go on.
fn record(report: &mut Option<Finding>, finding: Finding) -> Step<()> {
    if finding.mode == Mode::Enforce {
        return Err(finding);
    }
    report.get_or_insert(finding);
    Ok(())
}

/// Turns the outcome into the decision's verdict, reason and rule.
fn finish(mut decision: Decision, outcome: Step<Finding>, report: Option<Finding>) -> Decision {
    let (verdict, finding) = match (outcome, report) {
        (Err(denial), _) => (Verdict::Deny, denial),
        (Ok(_), Some(reported)) => (Verdict::ReportOnlyDeny, reported),
        (Ok(allow), None) => (Verdict::Allow, allow),
    };
    if verdict == Verdict::Deny {
        decision.target = None;
    }
    decision.verdict = verdict;
    decision.reason = finding.reason;
    decision.message = finding.message;
    decision.rule = finding.rule;
    decision.mode = finding.mode;
    decision
}

fn log_decision(app: &AppRules, decision: &Decision) {
    let app_id = app.app_id.as_str();
    let verdict = decision.verdict.as_str();
    let reason = decision.reason.as_str();
    if decision.verdict == Verdict::Allow {
        tracing::debug!(app_id, host = %decision.host, port = decision.port, rule = %decision.rule, verdict, reason, "egress allowed");
    } else {
        tracing::info!(app_id, host = %decision.host, port = decision.port, rule = %decision.rule, verdict, reason, message = %decision.message, "egress denied");
    }
}
