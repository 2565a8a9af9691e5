//! SPIFFE ids of the platform: `spiffe://<trust-domain>/<kind>/<name>`.
//!
//! The SPIFFE ID standard (SPIFFE-ID.md, sections 2.1 and 2.2) allows
//! lowercase letters, digits, `.`, `-` and `_` in a trust domain and any
//! number of path segments. Portcullis narrows the path to exactly two
//! segments: the kind (`app`, `service`, `platform`) and a lowercase DNS
//! label, so an id maps one-to-one onto a store row.

use std::fmt;

use portcullis_store::CertificateKind;

use crate::IdentityError;

/// A SPIFFE trust domain, such as `weather.example`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain: 1 to 255 characters of lowercase letters,
    /// digits, `.`, `-` and `_`.
    pub fn parse(value: &str) -> Result<Self, IdentityError> {
        let invalid = |rule: &str| IdentityError::InvalidName {
            what: "trust domain",
            value: value.to_owned(),
            rule: rule.to_owned(),
        };
        if value.is_empty() || value.len() > 255 {
            return Err(invalid("use 1 to 255 characters"));
        }
        let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_');
        if !value.bytes().all(allowed) {
            return Err(invalid("use only lowercase letters, digits, '.', '-' and '_'"));
        }
        Ok(Self(value.to_owned()))
    }

    /// The trust domain as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE id, `spiffe://<trust-domain>`, which
    /// the CA certificates carry as their URI SAN.
    pub fn id(&self) -> String {
        format!("spiffe://{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identity of one workload: an app, a platform service or a
/// component of Portcullis.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    kind: CertificateKind,
    name: String,
}

impl SpiffeId {
    /// Builds the id of `name` of `kind` in `trust_domain`. The name must
    /// be a lowercase DNS label (1 to 63 characters of `[a-z0-9-]`, no `-`
    /// at either end), the rule for app ids and service names.
    pub fn new(trust_domain: &TrustDomain, kind: CertificateKind, name: &str) -> Result<Self, IdentityError> {
        if let Err(rule) = portcullis_config::AppId::parse(name) {
            let what = match kind {
                CertificateKind::App => "app id",
                CertificateKind::Service => "service name",
                CertificateKind::Platform => "platform component name",
            };
            return Err(IdentityError::InvalidName { what, value: name.to_owned(), rule });
        }
        Ok(Self { trust_domain: trust_domain.clone(), kind, name: name.to_owned() })
    }

    /// The id of app `app_id`.
    pub fn app(trust_domain: &TrustDomain, app_id: &str) -> Result<Self, IdentityError> {
        Self::new(trust_domain, CertificateKind::App, app_id)
    }

    /// Parses `spiffe://<trust-domain>/<kind>/<name>`.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let invalid =
            |rule: &str| IdentityError::InvalidName { what: "SPIFFE id", value: uri.to_owned(), rule: rule.to_owned() };
        let rest = uri.strip_prefix("spiffe://").ok_or_else(|| invalid("it must start with spiffe://"))?;
        let (domain, path) = rest.split_once('/').ok_or_else(|| invalid("it has no path"))?;
        let trust_domain = TrustDomain::parse(domain)?;
        let (kind, name) = path.split_once('/').ok_or_else(|| invalid("the path must be /<kind>/<name>"))?;
        let kind = match kind {
            "app" => CertificateKind::App,
            "service" => CertificateKind::Service,
            "platform" => CertificateKind::Platform,
            _ => return Err(invalid("the kind must be app, service or platform")),
        };
        Self::new(&trust_domain, kind, name)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// App, service or platform component.
    pub fn kind(&self) -> CertificateKind {
        self.kind
    }

    /// The app id, service name or component name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The app id, if this is an app's identity.
    pub fn app_id(&self) -> Option<&str> {
        (self.kind == CertificateKind::App).then_some(self.name.as_str())
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/{}/{}", self.trust_domain, self.kind.as_str(), self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_id_round_trips() {
        let domain = TrustDomain::parse("weather.example").unwrap();
        for (kind, name, text) in [
            (CertificateKind::App, "forecast-app", "spiffe://weather.example/app/forecast-app"),
            (CertificateKind::Service, "weather", "spiffe://weather.example/service/weather"),
            (CertificateKind::Platform, "gateway", "spiffe://weather.example/platform/gateway"),
        ] {
            let id = SpiffeId::new(&domain, kind, name).unwrap();
            assert_eq!(id.to_string(), text);
            assert_eq!(SpiffeId::parse(text).unwrap(), id);
        }
    }

    #[test]
    fn spiffe_id_rejects_malformed() {
        for bad in [
            "https://weather.example/app/a",
            "spiffe://weather.example",
            "spiffe://weather.example/app",
            "spiffe://weather.example/app/a/b",
            "spiffe://weather.example/user/a",
            "spiffe://Weather.example/app/a",
            "spiffe://weather.example/app/UPPER",
            "spiffe://weather.example/app/",
            "spiffe://weather.example/app/-lead",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn app_id_only_for_apps() {
        let domain = TrustDomain::parse("td").unwrap();
        assert_eq!(SpiffeId::app(&domain, "a1").unwrap().app_id(), Some("a1"));
        assert_eq!(SpiffeId::new(&domain, CertificateKind::Service, "a1").unwrap().app_id(), None);
    }
}
