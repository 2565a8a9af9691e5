//! The services each app may call through the gateway, rebuilt from the
//! store while the platform runs. An app in a trial gets those of the
//! sandbox space, other apps those of the live space. Apps that are banned,
//! suspended, rejected or retired in the store get none.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_config::PlatformConfig;
use portcullis_gateway::AppServices;
use portcullis_store::Store;
use tokio::sync::watch;

use crate::egress_apps::{REFRESH_INTERVAL, is_admitted, report_new, space_of};

/// Returns the services of every admitted app, by app id, and one problem
/// message per app that gets none because its space is not configured.
pub(crate) async fn load(
    config: &PlatformConfig,
    store: &Store,
) -> Result<(HashMap<String, Vec<String>>, HashMap<String, String>), portcullis_store::StoreError> {
    let mut services = HashMap::new();
    let mut problems = HashMap::new();
    for app in store.apps().await? {
        if !is_admitted(app.state) {
            continue;
        }
        let space_name = space_of(app.state);
        match config.spaces.get(&space_name) {
            Some(space) => {
                services.insert(app.id, space.services.clone());
            }
            None => {
                let problem =
                    format!("app {} is in a trial but the configuration has no [spaces.{space_name}]", app.id);
                problems.insert(app.id, problem);
            }
        }
    }
    Ok((services, problems))
}

/// Reloads `directory` from the store every [`REFRESH_INTERVAL`], and at
/// once when `reloaded` changes after a configuration reload, until the
/// task is aborted. The spaces come from the configuration in
/// `config` at each reload. A failed store query keeps the current
/// directory.
pub(crate) async fn refresh(
    config: Arc<ArcSwap<PlatformConfig>>,
    store: Store,
    directory: Arc<AppServices>,
    mut reloaded: watch::Receiver<()>,
    mut reported: HashMap<String, String>,
) {
    let mut interval = tokio::time::interval(REFRESH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;

    loop {
        tokio::select! {
            _ = interval.tick() => {}
            Ok(()) = reloaded.changed() => {}
        }
        let (services, problems) = match load(&config.load(), &store).await {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::warn!(%error, "reloading the gateway services of apps failed; the current ones stay");
                continue;
            }
        };
        directory.replace_all(services);
        report_problems(&problems, &reported);
        reported = problems;
    }
}

/// Logs each problem that is not in `reported` with the same text.
pub(crate) fn report_problems(problems: &HashMap<String, String>, reported: &HashMap<String, String>) {
    report_new(problems, reported, |app_id, problem| {
        tracing::error!(app_id, problem, "app may call no service through the gateway; fix the configuration");
    });
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use portcullis_store::AppState;

    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/weather-platform/platform.toml");

    #[tokio::test]
    async fn services_follow_state_and_space() {
        let text = EXAMPLE.replace(
            "[spaces.live]\nservices = [\"weather\", \"records\"]",
            "[spaces.live]\nservices = [\"records\", \"weather\"]",
        );
        let config = portcullis_config::parse(Path::new("platform.toml"), &text).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await.unwrap();
        let apps = [
            ("submitted", AppState::Submitted),
            ("trial", AppState::InTrial),
            ("live", AppState::Live),
            ("suspended", AppState::Suspended),
            ("banned", AppState::Banned),
            ("retired", AppState::Retired),
        ];
        for (id, state) in apps {
            store.insert_app(id, id, "test").await.unwrap();
            store.set_app_state(id, state).await.unwrap();
        }

        let (services, problems) = load(&config, &store).await.unwrap();
        let mut ids: Vec<&str> = services.keys().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["live", "submitted", "trial"]);
        assert_eq!(services["live"], ["records", "weather"]);
        assert_eq!(services["submitted"], ["records", "weather"]);
        assert_eq!(services["trial"], ["weather"], "an app in a trial gets the sandbox space's services");
        assert!(problems.is_empty(), "{problems:?}");

        let text = EXAMPLE.replace("[spaces.sandbox]\nservices = [\"weather\"]\negress_allow_hosts = []\n", "");
        let without_sandbox = portcullis_config::parse(Path::new("platform.toml"), &text).unwrap();
        let (services, problems) = load(&without_sandbox, &store).await.unwrap();
        assert!(!services.contains_key("trial"), "no sandbox space: the app in a trial gets no service");
        assert!(problems["trial"].contains("[spaces.sandbox]"), "{problems:?}");
    }
}
