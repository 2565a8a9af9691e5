//! The egress proxy's per-app rules, rebuilt from the store while the
//! platform runs: each app's space (a sandbox trial or live), the host list
//! of its deployed manifest, and apps registered or removed since start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use portcullis_config::{AppId, PlatformConfig, SpaceName};
use portcullis_egress::proxy::AppDirectory;
use portcullis_egress::{AppRules, EgressRules};
use portcullis_store::{AppState, Store};

/// How often the egress proxy reloads app rules from the store. A new app,
/// a new manifest or a move between the sandbox and live spaces takes
/// effect within this time.
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// Builds the rules of every app that may use the egress proxy, with one
/// problem message, keyed by the stored app id, per app whose rules fell
/// back to fewer host names or none. Apps that are banned, suspended,
/// rejected or retired in the store get no rules, so the proxy rejects them
/// with 403, as the token service rejects their token requests.
pub(crate) async fn load(
    config: &PlatformConfig,
    rules: &EgressRules,
    store: &Store,
) -> Result<(Vec<AppRules>, HashMap<String, String>), portcullis_store::StoreError> {
    let manifests = store.all_app_egress_hosts().await?;
    let mut loaded = Vec::new();
    let mut problems = HashMap::new();

    for app in store.apps().await? {
        if !is_admitted(app.state) {
            continue;
        }
        let Ok(app_id) = AppId::parse(&app.id) else {
            problems.insert(app.id.clone(), "the registered app id is not valid, so the app gets no rules".to_owned());
            continue;
        };
        let requested = manifests.get(&app.id).map(Vec::as_slice);
        match app_rules(config, rules, space_of(app.state), app_id.clone(), requested) {
            Ok(app_rules) => loaded.push(app_rules),
            Err((fallback, problem)) => {
                loaded.extend(fallback);
                problems.insert(app_id.to_string(), problem);
            }
        }
    }
    Ok((loaded, problems))
}

/// Returns whether an app in `state` may use the gateway and the egress
/// proxy at all. Banned, suspended, rejected and retired apps may not.
pub(crate) fn is_admitted(state: AppState) -> bool {
    !matches!(state, AppState::Banned | AppState::Suspended | AppState::Rejected | AppState::Retired)
}

/// Returns the space an app in `state` runs in: the sandbox during a
/// trial, live otherwise.
pub(crate) fn space_of(state: AppState) -> SpaceName {
    if state == AppState::InTrial { SpaceName::Sandbox } else { SpaceName::Live }
}

/// Builds one app's rules: the sandbox space while the app is in a trial,
/// the live space otherwise, narrowed by its manifest's list if one was
/// stored. On failure returns the fail-closed rules (no host names, or none
/// at all without a space) and the reason.
fn app_rules(
    config: &PlatformConfig,
    rules: &EgressRules,
    space_name: SpaceName,
    app_id: AppId,
    requested: Option<&[String]>,
) -> Result<AppRules, (Option<AppRules>, String)> {
    let Some(space) = config.spaces.get(&space_name) else {
        let problem = format!("app {app_id} is in a trial but the configuration has no [spaces.{space_name}]");
        return Err((None, problem));
    };

    AppRules::new(rules, app_id.clone(), space_name, space, requested).map_err(|error| {
        let none =
            AppRules::new(rules, app_id, space_name, space, Some(&[])).expect("an empty host list narrows every list");
        (Some(none), error.to_string())
    })
}

/// Rebuilds every app's rules in `directory` at once from `rules` and the
/// spaces of `config`, keeping each app's space and manifest hosts, for a
/// configuration reload. The next refresh from the store follows. An app
/// whose manifest the new rules no longer cover keeps no host names, and
/// one whose space is gone keeps no rules. Logs each such problem.
pub(crate) fn rebuild(config: &PlatformConfig, rules: &EgressRules, directory: &AppDirectory) {
    let mut rebuilt = Vec::new();
    let mut problems = HashMap::new();
    for app in directory.all() {
        let requested: Option<Vec<String>> = app.hosts().map(|hosts| hosts.iter().map(ToString::to_string).collect());
        match app_rules(config, rules, app.space(), app.app_id().clone(), requested.as_deref()) {
            Ok(app_rules) => rebuilt.push(app_rules),
            Err((fallback, problem)) => {
                rebuilt.extend(fallback);
                problems.insert(app.app_id().to_string(), problem);
            }
        }
    }
    directory.replace_all(rebuilt);
    report_problems(&problems, &HashMap::new());
}

/// Reloads `directory` from the store at each [`RefreshTicks`] until the
/// task is aborted. Each reload takes the spaces from `config` and the
/// platform-wide rules from `rules`. Logs each app whose rules changed, and
/// each problem once until it changes. A failed store query keeps the
/// current rules.
pub(crate) async fn refresh(
    config: Arc<ArcSwap<PlatformConfig>>,
    rules: impl Fn() -> Arc<EgressRules>,
    store: Store,
    directory: Arc<AppDirectory>,
    reloaded: watch::Receiver<()>,
    mut reported: HashMap<String, String>,
) {
    let mut ticks = RefreshTicks::new(reloaded).await;
    loop {
        ticks.next().await;
        let (loaded, problems) = match load(&config.load(), &rules(), &store).await {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::warn!(%error, "reloading the egress rules of apps failed; the current rules stay");
                continue;
            }
        };
        for app_id in directory.replace_all(loaded) {
            match directory.get(&app_id) {
                Some(app) => {
                    tracing::info!(app_id = %app_id, space = %app.space(), hosts = ?app.hosts(), "egress rules of app updated")
                }
                None => tracing::info!(app_id = %app_id, "egress rules of app removed"),
            }
        }
        report_problems(&problems, &reported);
        reported = problems;
    }
}

/// The moments to reload app data from the store: every
/// [`REFRESH_INTERVAL`], and at once after a configuration reload.
pub(crate) struct RefreshTicks {
    interval: tokio::time::Interval,
    reloaded: watch::Receiver<()>,
}

impl RefreshTicks {
    /// Starts the interval, skipping its first tick, which is immediate.
    pub(crate) async fn new(reloaded: watch::Receiver<()>) -> Self {
        let mut interval = tokio::time::interval(REFRESH_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        Self { interval, reloaded }
    }

    /// Waits for the next interval tick or configuration reload.
    pub(crate) async fn next(&mut self) {
        tokio::select! {
            _ = self.interval.tick() => {}
            Ok(()) = self.reloaded.changed() => {}
        }
    }
}

/// Logs each problem that is not in `reported` with the same text.
pub(crate) fn report_problems(problems: &HashMap<String, String>, reported: &HashMap<String, String>) {
    report_new(problems, reported, |app_id, problem| {
        tracing::error!(
            app_id,
            problem,
            "egress rules of app fall back to none; fix the manifest or the configuration"
        );
    });
}

/// Calls `log` with each app id and problem in `problems` that is not in
/// `reported` with the same text, so a refresh logs a problem once until
/// it changes.
pub(crate) fn report_new(
    problems: &HashMap<String, String>,
    reported: &HashMap<String, String>,
    log: impl Fn(&str, &str),
) {
    for (app_id, problem) in problems {
        if reported.get(app_id) != Some(problem) {
            log(app_id, problem);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/weather-platform/platform.toml");

    /// Parses the example configuration with a second allowed host, so a
    /// manifest has something to narrow.
    fn config() -> PlatformConfig {
        let text = EXAMPLE.replace(
            "allow_hosts = [\"feed.weather.test\"]",
            "allow_hosts = [\"feed.weather.test\", \"*.example.org\"]",
        );
        portcullis_config::parse(Path::new("platform.toml"), &text).unwrap()
    }

    async fn store_with(apps: &[(&str, AppState)]) -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await.unwrap();
        for (id, state) in apps {
            store.insert_app(id, id, "test").await.unwrap();
            store.set_app_state(id, *state).await.unwrap();
        }
        (store, dir)
    }

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|host| (*host).to_owned()).collect()
    }

    #[tokio::test]
    async fn load_picks_space_and_manifest() {
        let config = config();
        let rules = EgressRules::new(config.egress.clone()).unwrap();
        let (store, _dir) = store_with(&[
            ("plain", AppState::Submitted),
            ("narrowed", AppState::Live),
            ("trial", AppState::InTrial),
            ("widening", AppState::Live),
            ("retired", AppState::Retired),
            ("banned", AppState::Banned),
        ])
        .await;
        store.set_app_egress_hosts("narrowed", &hosts(&["api.example.org"]), 1).await.unwrap();
        store.set_app_egress_hosts("widening", &hosts(&["evil.test"]), 1).await.unwrap();
        store.set_app_egress_hosts("retired", &hosts(&[]), 1).await.unwrap();

        let (loaded, problems) = load(&config, &rules, &store).await.unwrap();
        let by_id: HashMap<String, AppRules> =
            loaded.into_iter().map(|rules| (rules.app_id().as_str().to_owned(), rules)).collect();

        let mut ids: Vec<&str> = by_id.keys().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["narrowed", "plain", "trial", "widening"], "banned and retired apps get no rules");

        assert_eq!(by_id["plain"].space(), SpaceName::Live);
        assert_eq!(by_id["plain"].hosts(), None, "no stored manifest: the space's list applies");

        assert_eq!(by_id["narrowed"].space(), SpaceName::Live);
        let narrowed: Vec<String> = by_id["narrowed"].hosts().unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(narrowed, ["api.example.org"]);

        assert_eq!(by_id["trial"].space(), SpaceName::Sandbox, "an app in a trial runs in the sandbox space");

        assert_eq!(by_id["widening"].hosts(), Some(&[][..]), "a widening list falls back to no host names");
        let problem = &problems["widening"];
        assert!(problem.contains("\"evil.test\""), "{problem}");
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[tokio::test]
    async fn trial_without_sandbox_space_gets_no_rules() {
        let text = EXAMPLE.replace("[spaces.sandbox]\nservices = [\"weather\"]\negress_allow_hosts = []\n", "");
        let config = portcullis_config::parse(Path::new("platform.toml"), &text).unwrap();
        assert!(!config.spaces.contains_key(&SpaceName::Sandbox), "the sandbox space was not removed");
        let rules = EgressRules::new(config.egress.clone()).unwrap();
        let (store, _dir) = store_with(&[("trial", AppState::InTrial)]).await;

        let (loaded, problems) = load(&config, &rules, &store).await.unwrap();
        assert!(loaded.is_empty(), "{loaded:?}");
        let problem = &problems["trial"];
        assert!(problem.contains("[spaces.sandbox]"), "{problem}");
    }

    #[tokio::test]
    async fn refresh_follows_the_store() {
        let config = config();
        let rules = Arc::new(EgressRules::new(config.egress.clone()).unwrap());
        let (store, _dir) = store_with(&[("early", AppState::Live)]).await;
        let directory = Arc::new(AppDirectory::new());
        let (loaded, problems) = load(&config, &rules, &store).await.unwrap();
        directory.replace_all(loaded);
        let early = AppId::parse("early").unwrap();
        let late = AppId::parse("late").unwrap();
        assert!(directory.get(&late).is_none());

        let (_reloaded, reloads) = watch::channel(());
        let config = Arc::new(ArcSwap::from_pointee(config));
        let task = tokio::spawn(refresh(
            config,
            move || Arc::clone(&rules),
            store.clone(),
            Arc::clone(&directory),
            reloads,
            problems,
        ));
        store.insert_app("late", "late", "test").await.unwrap();
        store.set_app_egress_hosts("late", &hosts(&["api.example.org"]), 1).await.unwrap();
        store.set_app_state("early", AppState::InTrial).await.unwrap();

        // Bounded wait: three refresh intervals.
        let deadline = tokio::time::Instant::now() + REFRESH_INTERVAL * 3;
        while directory.get(&late).is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        task.abort();

        let late_rules = directory.get(&late).expect("an app registered after start gets rules");
        assert_eq!(late_rules.hosts().map(<[_]>::len), Some(1));
        assert_eq!(directory.get(&early).unwrap().space(), SpaceName::Sandbox);
    }

    #[tokio::test]
    async fn rebuild_applies_new_rules_at_once() {
        let config = config();
        let rules = EgressRules::new(config.egress.clone()).unwrap();
        let (store, _dir) = store_with(&[("narrowed", AppState::Live), ("trial", AppState::InTrial)]).await;
        store.set_app_egress_hosts("narrowed", &hosts(&["api.example.org"]), 1).await.unwrap();
        let directory = AppDirectory::new();
        directory.replace_all(load(&config, &rules, &store).await.unwrap().0);

        // The platform list drops *.example.org, and the sandbox space goes.
        let text = EXAMPLE.replace("[spaces.sandbox]\nservices = [\"weather\"]\negress_allow_hosts = []\n", "");
        let next = portcullis_config::parse(Path::new("platform.toml"), &text).unwrap();
        let next_rules = EgressRules::new(next.egress.clone()).unwrap();
        rebuild(&next, &next_rules, &directory);

        let narrowed = directory.get(&AppId::parse("narrowed").unwrap()).expect("the live app keeps rules");
        assert_eq!(narrowed.hosts(), Some(&[][..]), "a manifest the new list does not cover falls back to none");
        assert!(directory.get(&AppId::parse("trial").unwrap()).is_none(), "no sandbox space: no rules");
    }
}
