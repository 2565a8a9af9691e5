//! The guard itself: counts events, applies policies, stores decisions and
//! publishes the decisions in force.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use portcullis_config::{Action, GuardSettings, Mode, OutcomeClass};
use portcullis_store::{DecisionKind, DecisionOrigin, DecisionRecord, NewDecision, Store};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::clock::{Clock, duration_ms};
use crate::decisions::{DecisionReceiver, DecisionSet};
use crate::event::{EventReceiver, EventSender, GuardEvent, event_queue};
use crate::metrics::{AppLabels, DecisionLabels, GuardMetrics, RequestLabels};
use crate::policy::{self, Crossing};
use crate::stats::{AppState, AppStats, STATS_WINDOW};
use crate::{GuardError, POLL_INTERVAL};

/// Time an app's state is kept after its latest event beyond the longest
/// window, so an app that pauses briefly keeps its counts.
pub const IDLE_MARGIN: Duration = Duration::from_secs(60);

/// The counters of every app, shared between the guard and [`StatsReader`]s.
type AppTable = Arc<Mutex<HashMap<String, AppState>>>;

/// The guard: consumes [`GuardEvent`]s, keeps per-app counters over sliding
/// windows, turns policy crossings into stored decisions and publishes the
/// decisions in force as a [`DecisionSet`].
///
/// Run it with [`Guard::spawn`]; tests may call [`Guard::handle`] and
/// [`Guard::refresh`] directly, with a [`crate::ManualClock`].
pub struct Guard {
    settings: GuardSettings,
    exempt: HashSet<String>,
    /// Time after which an app without events is forgotten, in milliseconds.
    idle_after_ms: i64,
    store: Store,
    clock: Arc<dyn Clock>,
    apps: AppTable,
    /// The guard decisions, enforced or simulated, that are still running,
    /// by app and policy: a policy does not decide again for an app while
    /// its previous decision runs.
    running: HashMap<(String, String), Running>,
    publisher: watch::Sender<Arc<DecisionSet>>,
    metrics: GuardMetrics,
}

/// A guard decision that is still running.
#[derive(Debug, Clone, Copy)]
struct Running {
    id: i64,
    expires_at: Option<i64>,
    simulated: bool,
}

impl Guard {
    /// Creates a guard over `store` and publishes the decisions in force
    /// there, so bans survive a restart.
    pub async fn start(settings: GuardSettings, store: Store, clock: Arc<dyn Clock>) -> Result<Self, GuardError> {
        let longest = settings.policies.iter().map(|p| p.window).max().unwrap_or_default().max(STATS_WINDOW);
        let (publisher, _) = watch::channel(Arc::new(DecisionSet::default()));
        let mut guard = Self {
            exempt: settings.exempt_apps.iter().map(|app| app.as_str().to_owned()).collect(),
            idle_after_ms: duration_ms(longest + IDLE_MARGIN),
            settings,
            store,
            clock,
            apps: AppTable::default(),
            running: HashMap::new(),
            publisher,
            metrics: GuardMetrics::default(),
        };
        guard.poll_store(guard.clock.now_ms()).await?;
        tracing::info!(
            policies = guard.settings.policies.len(),
            decisions_in_force = guard.publisher.borrow().ids().len(),
            "guard started"
        );
        Ok(guard)
    }

    /// Returns the guard's Prometheus counters, to register.
    pub fn metrics(&self) -> &GuardMetrics {
        &self.metrics
    }

    /// Returns a subscription to the decisions in force.
    pub fn subscribe(&self) -> DecisionReceiver {
        self.publisher.subscribe()
    }

    /// Returns a reader of the per-app statistics.
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader { apps: Arc::clone(&self.apps), clock: Arc::clone(&self.clock) }
    }

    /// Returns how many apps the guard holds counters for.
    pub fn tracked_apps(&self) -> usize {
        self.table().len()
    }

    /// Counts `event` and returns the decisions it caused, each stored before
    /// it is published.
    ///
    /// An event time later than the clock counts as now. On a store failure
    /// the policy stays armed, so the next event past the threshold tries again.
    pub async fn handle(&mut self, event: GuardEvent) -> Result<Vec<DecisionRecord>, GuardError> {
        let now = self.clock.now_ms();
        let at = event.at_ms().min(now);
        let app_id = event.app_id().as_str().to_owned();
        let crossings = self.count(&app_id, &event, now, at);

        let mut decided = Vec::new();
        for crossing in crossings {
            match self.decide(&app_id, &crossing, now).await {
                Ok(Some(record)) => decided.push(record),
                Ok(None) => {}
                Err(error) => {
                    if let Some(state) = self.table().get_mut(&app_id) {
                        policy::rearm(&mut state.policies, crossing.policy);
                    }
                    return Err(error);
                }
            }
        }
        Ok(decided)
    }

    /// Forgets idle apps, then reloads the decisions in force from the store
    /// (picking up decisions other processes added or lifted) and publishes
    /// them if they changed. If the store cannot be read, expired decisions
    /// are still removed and published.
    pub async fn refresh(&mut self) -> Result<(), GuardError> {
        let now = self.clock.now_ms();
        let idle_after = self.idle_after_ms;
        let forgotten = {
            let mut apps = self.table();
            let before = apps.len();
            apps.retain(|_, state| now - state.last_event_ms <= idle_after);
            before - apps.len()
        };
        if forgotten > 0 {
            tracing::debug!(forgotten, "idle apps forgotten");
        }

        self.running.retain(|_, running| running.expires_at.is_none_or(|end| end > now));

        if let Err(error) = self.poll_store(now).await {
            let swept = self.publisher.borrow().without_expired(now);
            self.publish_if_changed(swept);
            return Err(error);
        }
        Ok(())
    }

    /// Runs the guard on a new event queue of `queue_capacity` events until
    /// [`RunningGuard::stop`] is called, reloading the store every
    /// [`POLL_INTERVAL`].
    pub fn spawn(self, queue_capacity: usize) -> RunningGuard {
        let (events, receiver) = event_queue(queue_capacity);
        let (stop, stopped) = oneshot::channel();
        let decisions = self.subscribe();
        let stats = self.stats_reader();
        let task = tokio::spawn(self.run(receiver, stopped));
        RunningGuard { events, decisions, stats, stop, task }
    }

    async fn run(mut self, mut events: EventReceiver, mut stop: oneshot::Receiver<()>) {
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                event = events.recv() => {
                    let Some(event) = event else { break };
                    let app_id = event.app_id().clone();
                    if let Err(error) = self.handle(event).await {
                        tracing::error!(%app_id, error = %error, "guard decision failed");
                    }
                }
                _ = poll.tick() => {
                    if let Err(error) = self.refresh().await {
                        tracing::warn!(error = %error, "guard refresh failed; expired decisions swept in memory");
                    }
                }
            }
        }
        tracing::info!("guard stopped");
    }

    /// Adds the event to the app's counters and returns the policies it
    /// made cross.
    fn count(&self, app_id: &str, event: &GuardEvent, now: i64, at: i64) -> Vec<Crossing> {
        let policies = if self.exempt.contains(app_id) { &[][..] } else { &self.settings.policies[..] };
        let mut apps = self.table();
        let state = apps.entry(app_id.to_owned()).or_insert_with(|| AppState::new(policies, now));
        state.last_event_ms = now;

        match event {
            GuardEvent::Access { service, status, bytes, .. } => {
                state.record_access(service, *status, *bytes, at);
                let class = crate::stats::classify(*status).map_or("other", OutcomeClass::label);
                let labels =
                    RequestLabels { app_id: app_id.to_owned(), service: service.clone(), class: class.to_owned() };
                self.metrics.requests.get_or_create(&labels).inc();
                self.metrics.bytes.get_or_create(&labels).inc_by(*bytes);
            }
            GuardEvent::EgressViolation { .. } => {
                state.record_egress_violation(at);
                self.metrics.egress_violations.get_or_create(&AppLabels { app_id: app_id.to_owned() }).inc();
            }
        }
        policy::evaluate(policies, &mut state.policies, event, at)
    }

    /// Turns a crossing into a stored decision, unless the policy's previous
    /// decision for the app is still running.
    async fn decide(
        &mut self,
        app_id: &str,
        crossing: &Crossing,
        now: i64,
    ) -> Result<Option<DecisionRecord>, GuardError> {
        let policy = &self.settings.policies[crossing.policy];
        let key = (app_id.to_owned(), policy.name.clone());
        if let Some(running) = self.running.get(&key).filter(|r| r.expires_at.is_none_or(|end| end > now)) {
            tracing::debug!(app_id, policy = %policy.name, decision_id = running.id, "policy crossed again while its decision runs");
            return Ok(None);
        }

        let simulated = policy.mode == Mode::Report;
        let (kind, duration) = match policy.action {
            Action::Ban => (DecisionKind::Ban, self.escalated_ban(app_id, policy.duration).await?),
            Action::Throttle { per_second } => (DecisionKind::Throttle { per_second }, policy.duration),
        };
        let decision = NewDecision {
            app_id: app_id.to_owned(),
            kind,
            reason: policy::reason(policy),
            policy: Some(policy.name.clone()),
            evidence: crossing.evidence.to_string(),
            origin: DecisionOrigin::Guard,
            simulated,
            started_at: now,
            expires_at: Some(now.saturating_add(duration_ms(duration))),
        };
        // NOTE: a decision the store cannot record is not published, so while
        // the store is down the guard fails open; the policy re-arms and the
        // next event past the threshold tries again.
        let id = self.store.insert_decision(&decision).await.map_err(|source| GuardError::StoreDecision {
            app_id: app_id.to_owned(),
            policy: policy.name.clone(),
            source,
        })?;
        let record = DecisionRecord { id, decision, lifted_at: None, lifted_by: None };
        let labels = DecisionLabels {
            kind: if matches!(kind, DecisionKind::Ban) { "ban" } else { "throttle" }.to_owned(),
            mode: if simulated { "report" } else { "enforce" }.to_owned(),
        };
        self.metrics.decisions.get_or_create(&labels).inc();
        self.running.insert(key, Running { id, expires_at: record.decision.expires_at, simulated });

        let seconds = duration.as_secs();
        if simulated {
            tracing::info!(app_id, policy = %policy.name, decision_id = id, ?kind, seconds, reason = %record.decision.reason, "report mode: decision recorded, not enforced");
        } else {
            let next = self.publisher.borrow().with(record.clone(), now);
            self.publisher.send_replace(Arc::new(next));
            tracing::warn!(app_id, policy = %policy.name, decision_id = id, ?kind, seconds, reason = %record.decision.reason, "decision in force");
        }
        Ok(Some(record))
    }

    /// Returns the length of a new guard ban of `app_id`: twice the app's
    /// previous guard ban, at least `base`, at most `max_ban`.
    async fn escalated_ban(&self, app_id: &str, base: Duration) -> Result<Duration, GuardError> {
        let previous = self
            .store
            .latest_guard_ban(app_id)
            .await
            .map_err(|source| GuardError::History { app_id: app_id.to_owned(), source })?;
        let doubled = match previous {
            None => Duration::ZERO,
            Some(record) => match record.decision.expires_at {
                Some(end) => Duration::from_millis(end.saturating_sub(record.decision.started_at).max(0) as u64)
                    .saturating_mul(2),
                None => self.settings.max_ban,
            },
        };
        Ok(base.max(doubled).min(self.settings.max_ban))
    }

    /// Replaces the published set with the store's decisions in force.
    async fn poll_store(&mut self, now: i64) -> Result<(), GuardError> {
        let records =
            self.store.decisions_in_force(now).await.map_err(|source| GuardError::LoadDecisions { source })?;

        let ids: HashSet<i64> = records.iter().map(|record| record.id).collect();
        self.running.retain(|_, running| running.simulated || ids.contains(&running.id));
        for record in &records {
            if let (DecisionOrigin::Guard, Some(policy)) = (record.decision.origin, &record.decision.policy) {
                let running = Running { id: record.id, expires_at: record.decision.expires_at, simulated: false };
                self.running.entry((record.decision.app_id.clone(), policy.clone())).or_insert(running);
            }
        }

        self.publish_if_changed(DecisionSet::from_records(records, now));
        Ok(())
    }

    fn publish_if_changed(&self, next: DecisionSet) {
        if next.ids() != self.publisher.borrow().ids() {
            tracing::debug!(decisions = next.ids().len(), "decisions in force changed");
            self.publisher.send_replace(Arc::new(next));
        }
    }

    fn table(&self) -> MutexGuard<'_, HashMap<String, AppState>> {
        // A panic while counting leaves the counters usable, so a poisoned
        // lock is taken over rather than spreading the panic.
        self.apps.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Read access to the per-app statistics of a guard. Cheap to clone.
#[derive(Clone)]
pub struct StatsReader {
    apps: AppTable,
    clock: Arc<dyn Clock>,
}

impl StatsReader {
    /// Returns the statistics of `app_id` over the last [`STATS_WINDOW`], or
    /// `None` if the guard holds no counters for it.
    pub fn app(&self, app_id: &str) -> Option<AppStats> {
        let now = self.clock.now_ms();
        let mut apps = self.apps.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        apps.get_mut(app_id).map(|state| state.stats(app_id, now))
    }

    /// Returns how many apps the guard holds counters for.
    pub fn tracked_apps(&self) -> usize {
        self.apps.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }
}

/// A guard running as a task, with the handles its producers and
/// enforcement points use.
pub struct RunningGuard {
    /// Queue for producers; clone it for each one.
    pub events: EventSender,
    /// Subscription for enforcement points; clone it for each one.
    pub decisions: DecisionReceiver,
    /// The per-app statistics.
    pub stats: StatsReader,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RunningGuard {
    /// Stops the guard after the event or refresh in progress and waits for
    /// it. Events still queued are not counted. Subscribers keep the last
    /// snapshot, whose expired entries still read as absent.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        if let Err(error) = self.task.await {
            tracing::error!(error = %error, "guard task failed");
        }
    }
}
