//! The in-memory copy of the store's revocations and app pins that
//! client-certificate verifiers consult on every handshake.
//!
//! A rustls verifier runs synchronously inside the handshake, so it cannot
//! query the store. A background task reloads both sets from the store
//! every [`REFRESH_INTERVAL`] (1 s), so a revocation or a newly recorded
//! pin takes effect on new handshakes within about one interval plus one
//! store query. The same bound applies to a newly issued app leaf: it is
//! rejected with `access_denied` until the next reload, so a deploy that
//! issues and connects at once calls [`TrustCache::refresh`] first. If
//! reloading keeps failing, the sets age past
//! [`MAX_STALENESS`] and verifiers reject every certificate (fail closed)
//! until a reload succeeds.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use portcullis_store::{CertificateKind, Store};

use crate::IdentityError;

/// How often the refresher reloads revocations and pins: 1 s.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Age after which verifiers stop trusting the cached sets: 30 s.
pub const MAX_STALENESS: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Snapshot {
    revoked: HashSet<String>,
    app_pins: HashMap<String, HashSet<String>>,
    loaded_at: Option<Instant>,
}

/// The outcome of a revocation and pin check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustVerdict {
    /// Neither revoked nor, for an app, unpinned.
    Accepted,
    /// The serial is revoked.
    Revoked,
    /// The app's valid pins do not include this key.
    NotPinned,
    /// The cache was never loaded or is older than [`MAX_STALENESS`].
    Stale,
}

/// Revoked serials and valid app pins, swapped in whole on each reload so
/// a handshake never sees half an update.
#[derive(Debug, Default)]
pub struct TrustCache {
    snapshot: ArcSwap<Snapshot>,
}

impl TrustCache {
    /// Creates an empty cache; verifiers reject everything until the first
    /// [`refresh`](Self::refresh).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Reloads revoked serials and app pins from the store.
    pub async fn refresh(&self, store: &Store) -> Result<(), IdentityError> {
        let now = portcullis_store::now_ms();
        let revoked: HashSet<String> = store.revoked_serials(now).await?.into_iter().collect();
        let mut app_pins: HashMap<String, HashSet<String>> = HashMap::new();
        for (app_id, pin) in store.valid_pins_of_kind(CertificateKind::App, now).await? {
            app_pins.entry(app_id).or_default().insert(pin);
        }

        let changed = {
            let old = self.snapshot.load();
            old.revoked != revoked || old.app_pins != app_pins
        };
        if changed {
            tracing::debug!(revoked = revoked.len(), apps = app_pins.len(), "revocations and pins reloaded");
        }
        self.snapshot.store(Arc::new(Snapshot { revoked, app_pins, loaded_at: Some(Instant::now()) }));
        Ok(())
    }

    /// Starts a task that calls [`refresh`](Self::refresh) every
    /// `interval` until the returned guard is dropped. Failures are logged
    /// and retried on the next tick.
    pub fn spawn_refresher(self: &Arc<Self>, store: Store, interval: Duration) -> RefresherGuard {
        let cache = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failures: u64 = 0;
            loop {
                ticker.tick().await;
                match cache.refresh(&store).await {
                    Ok(()) => failures = 0,
                    Err(error) => {
                        failures += 1;
                        // Log the first failure and then every 60th, so an
                        // outage does not write a line a second.
                        if failures == 1 || failures % 60 == 0 {
                            tracing::warn!(%error, failures, "reloading revocations and pins failed");
                        }
                    }
                }
            }
        });
        RefresherGuard { task }
    }

    /// Checks a certificate's serial and, for an app, its pin.
    pub fn check(&self, serial: &str, app_pin: Option<(&str, &str)>) -> TrustVerdict {
        let snapshot = self.snapshot.load();
        match snapshot.loaded_at {
            Some(at) if at.elapsed() <= MAX_STALENESS => {}
            _ => return TrustVerdict::Stale,
        }
        if snapshot.revoked.contains(serial) {
            return TrustVerdict::Revoked;
        }
        if let Some((app_id, pin)) = app_pin {
            let pinned = snapshot.app_pins.get(app_id).is_some_and(|pins| pins.contains(pin));
            if !pinned {
                return TrustVerdict::NotPinned;
            }
        }
        TrustVerdict::Accepted
    }

    /// Returns whether `serial` was revoked as of the last reload. Long-lived
    /// connections can call this per request, because revocation only
    /// affects new handshakes.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.snapshot.load().revoked.contains(serial)
    }
}

/// Stops the refresher task when dropped.
#[derive(Debug)]
pub struct RefresherGuard {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RefresherGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}
