//! The services each admitted app may call: those of its space (the
//! sandbox while the app is in a trial, live otherwise). The caller that
//! follows the app states replaces the whole directory at once.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// App ids and the services each may call. An app that is not listed is
/// not admitted to any service (fail closed): one that is banned,
/// suspended, rejected or retired, or one registered since the last
/// replacement.
#[derive(Debug, Default)]
pub struct AppServices {
    apps: ArcSwap<HashMap<String, Arc<[String]>>>,
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
    /// Creates a directory that admits no app.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every entry with `apps`, app id to service names, at once.
    /// Requests already routed keep the decision they got.
    pub fn replace_all(&self, apps: HashMap<String, Vec<String>>) {
        let apps = apps.into_iter().map(|(app_id, services)| (app_id, Arc::from(services))).collect();
        self.apps.store(Arc::new(apps));
    }

    /// Returns the services `app_id` may call, or `None` if it is not
    /// admitted.
    pub fn services_of(&self, app_id: &str) -> Option<Arc<[String]>> {
        self.apps.load().get(app_id).cloned()
    }

    pub(crate) fn check(&self, app_id: &str, service: &str) -> Admission {
        match self.apps.load().get(app_id) {
            None => Admission::NotAdmitted,
            Some(services) if services.iter().any(|name| name == service) => Admission::Allowed,
            Some(_) => Admission::NotInSpace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_follows_replacement() {
        let spaces = AppServices::new();
        assert_eq!(spaces.check("trial-app", "weather"), Admission::NotAdmitted, "an empty directory admits no app");

        let apps = HashMap::from([
            ("trial-app".to_owned(), vec!["weather".to_owned()]),
            ("live-app".to_owned(), vec!["weather".to_owned(), "records".to_owned()]),
        ]);
        spaces.replace_all(apps);
        // (app, service, admission)
        let cases = [
            ("trial-app", "weather", Admission::Allowed),
            ("trial-app", "records", Admission::NotInSpace),
            ("live-app", "records", Admission::Allowed),
            ("unknown-app", "weather", Admission::NotAdmitted),
        ];
        for (app, service, expected) in cases {
            assert_eq!(spaces.check(app, service), expected, "{app} calling {service}");
        }

        spaces.replace_all(HashMap::from([("live-app".to_owned(), vec!["weather".to_owned()])]));
        assert_eq!(spaces.check("trial-app", "weather"), Admission::NotAdmitted, "a removed app loses access");
        assert_eq!(spaces.check("live-app", "records"), Admission::NotInSpace);
    }
}
