//! The platform-wide rules and an app's narrower rules.

use std::net::IpAddr;

use ipnet::IpNet;
use portcullis_config::{AppId, CountryRule, EgressSettings, HostPattern, Mode, Space, SpaceName};

use crate::country::CountryDb;
use crate::error::EgressError;
use crate::pattern::{covers, matches, parse_pattern};

/// The platform-wide egress rules: the validated `[egress]` settings and,
/// when a country rule is set, its open database.
#[derive(Debug)]
pub struct EgressRules {
    pub(crate) settings: EgressSettings,
    pub(crate) countries: Option<(CountryRule, CountryDb)>,
}

impl EgressRules {
    /// Builds the rules from validated settings, opening the country
    /// database if a country rule is set.
    pub fn new(settings: EgressSettings) -> Result<Self, EgressError> {
        let countries = match &settings.countries {
            Some(rule) => Some((rule.clone(), CountryDb::open(&rule.database)?)),
            None => None,
        };
        Ok(Self { settings, countries })
    }

    /// Returns the settings the rules were built from.
    pub fn settings(&self) -> &EgressSettings {
        &self.settings
    }

    /// Finds the first `deny_hosts` entry matching `name`.
    pub(crate) fn denied_host(&self, name: &str) -> Option<usize> {
        self.settings.deny_hosts.iter().position(|pattern| matches(pattern, name))
    }

    /// Finds the first `deny_cidrs` entry containing `ip` or the IPv4
    /// address it embeds (6to4, NAT64, IPv4-compatible), since traffic to
    /// such an address ends at the embedded one.
    pub(crate) fn denied_cidr(&self, ip: IpAddr) -> Option<usize> {
        let embedded = crate::special::embedded_ipv4(ip).map(IpAddr::V4);
        self.settings
            .deny_cidrs
            .iter()
            .position(|net| net.contains(&ip) || embedded.is_some_and(|inner| net.contains(&inner)))
    }

    /// Finds the most specific `allow_cidrs` entry containing `ip`, the
    /// first in list order among equally specific ones. The most specific
    /// entry decides, so a broad entry listed first cannot hide a narrower
    /// one that opens a special-purpose range.
    pub(crate) fn allowed_cidr(&self, ip: IpAddr) -> Option<(usize, &IpNet)> {
        let mut best: Option<(usize, &IpNet)> = None;
        for (index, net) in self.settings.allow_cidrs.iter().enumerate() {
            let narrower = best.is_none_or(|(_, chosen)| net.prefix_len() > chosen.prefix_len());
            if net.contains(&ip) && narrower {
                best = Some((index, net));
            }
        }
        best
    }
}

/// One app's egress rules: its manifest's host list, and the host list of
/// the space it runs in. Both can only narrow the platform-wide list, which
/// [`AppRules::new`] checks.
///
/// NOTE: manifests narrow host names only. `allow_cidrs`, `allow_ports` and
/// the country rule are the operator's and apply to every app alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRules {
    pub(crate) app_id: AppId,
    pub(crate) space: SpaceName,
    pub(crate) space_hosts: Option<Vec<HostPattern>>,
    pub(crate) hosts: Option<Vec<HostPattern>>,
    pub(crate) mode: Mode,
}

impl AppRules {
    /// Builds an app's rules for `space`, from the host patterns its
    /// manifest requests (`None`: the manifest lists none and the app gets
    /// the space's list, or the platform's if the space has none).
    ///
    /// Each requested pattern must be in normalised form (`api.example.org`,
    /// `*.example.org`). It must be covered by a pattern of
    /// `egress.allow_hosts` and, if the space has a list, by one of the
    /// space's. Otherwise [`EgressError::HostWidened`] names the pattern. The app's list runs
    /// in the platform's mode; see [`with_mode`](Self::with_mode).
    pub fn new(
        rules: &EgressRules,
        app_id: AppId,
        space_name: SpaceName,
        space: &Space,
        requested: Option<&[String]>,
    ) -> Result<Self, EgressError> {
        let hosts = match requested {
            None => None,
            Some(requested) => {
                let mut hosts = Vec::with_capacity(requested.len());
                for text in requested {
                    let pattern = parse_pattern(text).map_err(|expected| EgressError::InvalidManifestHost {
                        app_id: app_id.to_string(),
                        host: text.clone(),
                        expected,
                    })?;
                    check_narrows(&app_id, text, &pattern, "egress.allow_hosts".into(), &rules.settings.allow_hosts)?;
                    if let Some(space_hosts) = &space.egress_allow_hosts {
                        let scope = format!("spaces.{space_name}.egress_allow_hosts");
                        check_narrows(&app_id, text, &pattern, scope, space_hosts)?;
                    }
                    hosts.push(pattern);
                }
                Some(hosts)
            }
        };

        Ok(Self {
            app_id,
            space: space_name,
            space_hosts: space.egress_allow_hosts.clone(),
            hosts,
            mode: rules.settings.mode,
        })
    }

    /// Sets the mode of the app's own host list, so that narrowing an app
    /// can be staged in report mode while the platform rules stay enforced.
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Returns the app.
    pub fn app_id(&self) -> &AppId {
        &self.app_id
    }

    /// Returns the space the app runs in.
    pub fn space(&self) -> SpaceName {
        self.space
    }

    /// Returns the manifest's host patterns, if it lists any.
    pub fn hosts(&self) -> Option<&[HostPattern]> {
        self.hosts.as_deref()
    }
}

fn check_narrows(
    app_id: &AppId,
    text: &str,
    pattern: &HostPattern,
    scope: String,
    outer: &[HostPattern],
) -> Result<(), EgressError> {
    if outer.iter().any(|allowed| covers(allowed, pattern)) {
        return Ok(());
    }
    Err(EgressError::HostWidened { app_id: app_id.to_string(), host: text.to_owned(), scope })
}
