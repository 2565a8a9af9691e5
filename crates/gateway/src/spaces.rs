//! The services each admitted app may call: those of its space (the
//! sandbox while the app is in a trial, live otherwise). The caller that
//! follows the app states replaces the apps' spaces as a whole, and a
//! configuration reload replaces the spaces' services, each at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_config::{Space, SpaceName};

/// App ids with the space each runs in, and the services of each space.
/// An app that is not listed, or whose space is not configured, is not
/// admitted to any service (fail closed): one that is banned, suspended,
/// rejected or retired, or one registered since the last replacement.
#[derive(Debug, Default)]
pub struct AppServices {
    apps: ArcSwap<HashMap<String, SpaceName>>,
    spaces: ArcSwap<HashMap<SpaceName, Vec<String>>>,
}

/// Whether an app may call a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The service is in the app's space.
    Allowed,
    /// The app is not admitted at all.
    NotAdmitted,
    /// The app is admitted, but its space does not include the service.
    NotInSpace,
}

impl AppServices {
    /// Creates a directory that admits no app and has no spaces.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the services of every space at once with those in `spaces`,
    /// the configuration's `[spaces]` tables.
    pub fn set_spaces(&self, spaces: &BTreeMap<SpaceName, Space>) {
        let spaces = spaces.iter().map(|(name, space)| (*name, space.services.clone())).collect();
        self.spaces.store(Arc::new(spaces));
    }

    /// Replaces every app's space with `apps`, app id to space, at once.
    /// Requests already routed keep the decision they got.
    pub fn replace_apps(&self, apps: HashMap<String, SpaceName>) {
        self.apps.store(Arc::new(apps));
    }

    /// Returns the services `app_id` may call, or `None` if it is not
    /// admitted.
    pub fn services_of(&self, app_id: &str) -> Option<Vec<String>> {
        let space = *self.apps.load().get(app_id)?;
        self.spaces.load().get(&space).cloned()
    }

    pub(crate) fn check(&self, app_id: &str, service: &str) -> Admission {
        let Some(space) = self.apps.load().get(app_id).copied() else {
            return Admission::NotAdmitted;
        };
        match self.spaces.load().get(&space) {
            None => Admission::NotAdmitted,
            Some(services) if services.iter().any(|name| name == service) => Admission::Allowed,
            Some(_) => Admission::NotInSpace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(services: &[&str]) -> Space {
        Space { services: services.iter().map(|name| (*name).to_owned()).collect(), egress_allow_hosts: None }
    }

    #[test]
    fn admission_follows_apps_and_spaces() {
        let directory = AppServices::new();
        assert_eq!(directory.check("trial-app", "weather"), Admission::NotAdmitted, "an empty directory admits no app");

        directory.set_spaces(&BTreeMap::from([
            (SpaceName::Live, space(&["weather", "records"])),
            (SpaceName::Sandbox, space(&["weather"])),
        ]));
        directory.replace_apps(HashMap::from([
            ("trial-app".to_owned(), SpaceName::Sandbox),
            ("live-app".to_owned(), SpaceName::Live),
        ]));
        // (app, service, admission)
        let cases = [
            ("trial-app", "weather", Admission::Allowed),
            ("trial-app", "records", Admission::NotInSpace),
            ("live-app", "records", Admission::Allowed),
            ("unknown-app", "weather", Admission::NotAdmitted),
        ];
        for (app, service, expected) in cases {
            assert_eq!(directory.check(app, service), expected, "{app} calling {service}");
        }
        assert_eq!(directory.services_of("trial-app"), Some(vec!["weather".to_owned()]));

        directory.set_spaces(&BTreeMap::from([(SpaceName::Live, space(&["weather"]))]));
        assert_eq!(directory.check("live-app", "records"), Admission::NotInSpace, "new spaces apply at once");
        assert_eq!(directory.check("trial-app", "weather"), Admission::NotAdmitted, "a space no longer configured");

        directory.replace_apps(HashMap::from([("live-app".to_owned(), SpaceName::Live)]));
        assert_eq!(directory.check("trial-app", "weather"), Admission::NotAdmitted, "a removed app loses access");
        assert_eq!(directory.check("live-app", "weather"), Admission::Allowed);
    }
}
