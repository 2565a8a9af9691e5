//! Decisions as values: verdict, reason code and text, the id of the rule
//! that decided, and for a connection that may proceed, the exact addresses
//! that were checked.

use std::net::{IpAddr, SocketAddr};

use portcullis_config::Mode;
use serde::Serialize;

/// The outcome class of a requested connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The connection may proceed.
    Allow,
    /// The connection is refused.
    Deny,
    /// A rule set in report mode would have refused the connection; it may
    /// proceed, and the decision records the refusal.
    ReportOnlyDeny,
}

impl Verdict {
    /// Returns whether the proxy may connect.
    pub fn permits_connection(self) -> bool {
        matches!(self, Verdict::Allow | Verdict::ReportOnlyDeny)
    }

    /// Returns the verdict as a stable lowercase string.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::ReportOnlyDeny => "report_only_deny",
        }
    }
}

/// A stable, machine-readable reason for a decision. The serialised and
/// [`as_str`](Self::as_str) forms never change meaning once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReasonCode {
    /// The host is not a valid host name or IP literal.
    InvalidHost,
    /// The host matches `deny_hosts`.
    HostDenied,
    /// An address matches `deny_cidrs`.
    CidrDenied,
    /// An address is special-purpose (loopback, private, metadata, ...).
    SpecialAddress,
    /// The port is not in `allow_ports`.
    PortNotAllowed,
    /// Name resolution failed.
    ResolveFailed,
    /// The name resolved to no address.
    NoAddresses,
    /// An address's country is in the country deny-list.
    CountryDenied,
    /// An address's country is not in the country allow-list.
    CountryNotAllowed,
    /// An address has no country in the database while a country rule is set.
    CountryUnknown,
    /// The host matches none of the allow-lists that apply.
    NotAllowed,
    /// Every address is inside `allow_cidrs`.
    CidrAllowed,
    /// The host name matches the allow-lists that apply.
    HostAllowed,
    /// The app has reached `egress.max_bytes_per_app` in the current
    /// accounting period.
    ByteLimit,
    /// The app already has `egress.max_tunnels_per_app` tunnels and
    /// exchanges open.
    TunnelLimit,
    /// The request target is not a valid CONNECT or `http://` target, so
    /// no host could be checked.
    InvalidTarget,
    /// The guard has banned the app.
    AppBanned,
    /// No egress rules are registered for the app.
    NoRules,
}

impl ReasonCode {
    /// Returns the code as a stable snake_case string, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::InvalidHost => "invalid_host",
            ReasonCode::HostDenied => "host_denied",
            ReasonCode::CidrDenied => "cidr_denied",
            ReasonCode::SpecialAddress => "special_address",
            ReasonCode::PortNotAllowed => "port_not_allowed",
            ReasonCode::ResolveFailed => "resolve_failed",
            ReasonCode::NoAddresses => "no_addresses",
            ReasonCode::CountryDenied => "country_denied",
            ReasonCode::CountryNotAllowed => "country_not_allowed",
            ReasonCode::CountryUnknown => "country_unknown",
            ReasonCode::NotAllowed => "not_allowed",
            ReasonCode::CidrAllowed => "cidr_allowed",
            ReasonCode::HostAllowed => "host_allowed",
            ReasonCode::ByteLimit => "byte_limit",
            ReasonCode::TunnelLimit => "tunnel_limit",
            ReasonCode::InvalidTarget => "invalid_target",
            ReasonCode::AppBanned => "app_banned",
            ReasonCode::NoRules => "no_rules",
        }
    }

    /// Returns true for a denial caused by what the app chose to request: a
    /// malformed or denied host, a forbidden address, port or country, or a
    /// name outside the allow-lists. A failed or empty DNS answer, an
    /// address missing from the country database, the byte cap, the tunnel
    /// limit, a ban and missing rules are not violations, because they
    /// follow from the state of DNS, the database, the app's quotas or the
    /// platform. Neither is an invalid request target (origin form, an
    /// `https://` URL), which a misconfigured client sends and which names
    /// no destination to probe. The guard counts only violations toward
    /// bans.
    pub fn is_violation(self) -> bool {
        match self {
            ReasonCode::InvalidHost
            | ReasonCode::HostDenied
            | ReasonCode::CidrDenied
            | ReasonCode::SpecialAddress
            | ReasonCode::PortNotAllowed
            | ReasonCode::CountryDenied
            | ReasonCode::CountryNotAllowed
            | ReasonCode::NotAllowed => true,
            ReasonCode::ResolveFailed
            | ReasonCode::NoAddresses
            | ReasonCode::CountryUnknown
            | ReasonCode::CidrAllowed
            | ReasonCode::HostAllowed
            | ReasonCode::ByteLimit
            | ReasonCode::TunnelLimit
            | ReasonCode::InvalidTarget
            | ReasonCode::AppBanned
            | ReasonCode::NoRules => false,
        }
    }
}

/// The rule id of a refusal by the per-app byte cap,
/// `egress.max_bytes_per_app`.
pub const BYTE_LIMIT_RULE: &str = "limit:bytes";

/// The rule id of a refusal by the per-app tunnel limit,
/// `egress.max_tunnels_per_app`.
pub const TUNNEL_LIMIT_RULE: &str = "max_tunnels_per_app";

/// The rule id of a refusal of a request target that names no checkable
/// host and port.
pub const INVALID_TARGET_RULE: &str = "malformed:target";

/// The rule id of a refusal because the guard has banned the app.
pub const BANNED_RULE: &str = "guard:ban";

/// The rule id of a refusal because no egress rules are registered for the
/// app.
pub const NO_RULES_RULE: &str = "app:no-rules";

/// The addresses a permitted connection may go to: every address the name
/// resolved to (or the literal), each checked, with the requested port.
///
/// Only the engine constructs this type, so holding one proves the checks
/// ran. [`connect`](crate::connect) takes it, and so connects to nothing a
/// second lookup could have changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckedTarget {
    addresses: Vec<SocketAddr>,
}

impl CheckedTarget {
    pub(crate) fn new(addresses: Vec<SocketAddr>) -> Self {
        debug_assert!(!addresses.is_empty());
        Self { addresses }
    }

    /// Returns the checked addresses in resolver order. The list is never empty.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }
}

/// The outcome of one egress check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Allow, deny or report-only deny.
    pub verdict: Verdict,
    /// The reason as a stable code.
    pub reason: ReasonCode,
    /// The reason for a person: names the host, address and rule.
    pub message: String,
    /// The rule that decided, such as `deny_hosts[2]`, `allow_cidrs[0]`,
    /// `special:loopback`, `country:deny:KP` or `default:not-allowed`.
    pub rule: String,
    /// The mode of the rule set that decided. Rules that are always
    /// enforced report [`Mode::Enforce`].
    pub mode: Mode,
    /// The requested host, normalised, or as requested if it was invalid.
    pub host: String,
    /// The requested port.
    pub port: u16,
    /// Every address the host resolved to (or the literal), in resolver
    /// order; empty when the decision came before resolution.
    pub resolved: Vec<IpAddr>,
    /// The addresses the connection may use; `Some` exactly when
    /// [`Verdict::permits_connection`] is true.
    pub target: Option<CheckedTarget>,
}

impl Decision {
    /// Returns whether the proxy may connect.
    pub fn is_permitted(&self) -> bool {
        self.verdict.permits_connection()
    }
}

/// A rule's finding before the verdict and the target are attached.
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub reason: ReasonCode,
    pub message: String,
    pub rule: String,
    /// The mode of the rule set the rule belongs to. A denial in
    /// [`Mode::Report`] becomes [`Verdict::ReportOnlyDeny`].
    pub mode: Mode,
}

impl Finding {
    /// Creates a finding of a rule that is enforced in every mode.
    pub fn enforced(reason: ReasonCode, rule: impl Into<String>, message: String) -> Self {
        Self { reason, message, rule: rule.into(), mode: Mode::Enforce }
    }

    /// Creates a finding of a rule that follows its rule set's `mode`.
    pub fn staged(mode: Mode, reason: ReasonCode, rule: impl Into<String>, message: String) -> Self {
        Self { reason, message, rule: rule.into(), mode }
    }
}

#[cfg(test)]
mod tests {
    use super::ReasonCode;

    #[test]
    fn violations_are_app_choices() {
        // (reason, counts toward a ban)
        let cases = [
            (ReasonCode::InvalidHost, true),
            (ReasonCode::InvalidTarget, false),
            (ReasonCode::HostDenied, true),
            (ReasonCode::CidrDenied, true),
            (ReasonCode::SpecialAddress, true),
            (ReasonCode::PortNotAllowed, true),
            (ReasonCode::CountryDenied, true),
            (ReasonCode::CountryNotAllowed, true),
            (ReasonCode::NotAllowed, true),
            (ReasonCode::ResolveFailed, false),
            (ReasonCode::NoAddresses, false),
            (ReasonCode::CountryUnknown, false),
            (ReasonCode::ByteLimit, false),
            (ReasonCode::TunnelLimit, false),
            (ReasonCode::AppBanned, false),
            (ReasonCode::NoRules, false),
            (ReasonCode::CidrAllowed, false),
            (ReasonCode::HostAllowed, false),
        ];
        for (reason, expected) in cases {
            assert_eq!(reason.is_violation(), expected, "{}", reason.as_str());
        }
    }
}
