//! The space each app runs in for the gateway, rebuilt from the store while
//! the platform runs. An app in a trial runs in the sandbox space, other
//! apps in the live space. Apps that are banned, suspended, rejected or
//! retired in the store are left out, so the gateway admits them to no
//! service. The spaces' services come from the configuration, which a
//! reload replaces at once.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_config::{PlatformConfig, SpaceName};
use portcullis_gateway::AppServices;
use portcullis_store::Store;
use tokio::sync::watch;

use crate::egress_apps::{RefreshTicks, is_admitted, report_new, space_of};

/// Returns the space of every admitted app, by app id, and one problem
/// message per app whose space is not configured, which the gateway then
/// admits to no service.
pub(crate) async fn load(
    config: &PlatformConfig,
    store: &Store,
) -> Result<(HashMap<String, SpaceName>, HashMap<String, String>), portcullis_store::StoreError> {
    let mut spaces = HashMap::new();
    let mut problems = HashMap::new();
    for app in store.apps().await? {
        if !is_admitted(app.state) {
            continue;
        }
        let space_name = space_of(app.state);
        if !config.spaces.contains_key(&space_name) {
            let problem = format!("app {} is in a trial but the configuration has no [spaces.{space_name}]", app.id);
            problems.insert(app.id.clone(), problem);
        }
        spaces.insert(app.id, space_name);
    }
    Ok((spaces, problems))
}

/// Reloads the apps' spaces in `directory` from the store every
/// [`REFRESH_INTERVAL`](crate::egress_apps::REFRESH_INTERVAL), and at once when `reloaded` changes after a
/// configuration reload, until the task is aborted. Problems are judged
/// against the configuration in `config` at each reload. A failed store
/// query keeps the current directory.
pub(crate) async fn refresh(
    config: Arc<ArcSwap<PlatformConfig>>,
    store: Store,
    directory: Arc<AppServices>,
    reloaded: watch::Receiver<()>,
    mut reported: HashMap<String, String>,
) {
    let mut ticks = RefreshTicks::new(reloaded).await;
    loop {
        ticks.next().await;
        let (spaces, problems) = match load(&config.load(), &store).await {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::warn!(%error, "reloading the gateway services of apps failed; the current ones stay");
                continue;
            }
        };
        directory.replace_apps(spaces);
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
    async fn spaces_follow_state() {
        let config = portcullis_config::parse(Path::new("platform.toml"), EXAMPLE).unwrap();
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

        let (spaces, problems) = load(&config, &store).await.unwrap();
        let mut ids: Vec<&str> = spaces.keys().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["live", "submitted", "trial"]);
        assert_eq!(spaces["live"], SpaceName::Live);
        assert_eq!(spaces["submitted"], SpaceName::Live);
        assert_eq!(spaces["trial"], SpaceName::Sandbox, "an app in a trial runs in the sandbox space");
        assert!(problems.is_empty(), "{problems:?}");

        let text = EXAMPLE.replace("[spaces.sandbox]\nservices = [\"weather\"]\negress_allow_hosts = []\n", "");
        let without_sandbox = portcullis_config::parse(Path::new("platform.toml"), &text).unwrap();
        let (_, problems) = load(&without_sandbox, &store).await.unwrap();
        assert!(problems["trial"].contains("[spaces.sandbox]"), "{problems:?}");
    }
}
