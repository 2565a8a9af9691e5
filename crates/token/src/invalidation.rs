//! Revoked tokens and per-app cut-off times, shared with every verifier.
//!
//! A cut-off invalidates every token of an app issued at or before a given
//! second. Withdrawing a grant, banning an app and rotating its credentials
//! all set one, so tokens issued before the change stop working at once
//! instead of at expiry. Because `iat` has a resolution of one second, a
//! token issued in the same second as the cut-off is refused too: the app
//! requests a new token a second later.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// An immutable snapshot of what is invalidated.
#[derive(Debug, Clone, Default)]
pub struct Invalidations {
    /// Revoked token ids and their expiry (seconds), kept until expiry.
    revoked: HashMap<String, i64>,
    /// Per app: tokens with `iat` at or before this second are refused.
    cut_offs: HashMap<String, i64>,
}

impl Invalidations {
    /// Returns whether the token `jti` was revoked.
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.contains_key(jti)
    }

    /// Returns the cut-off second of an app, if any.
    pub fn cut_off(&self, app_id: &str) -> Option<i64> {
        self.cut_offs.get(app_id).copied()
    }

    /// Number of revoked token ids held.
    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }
}

/// A shared, updatable [`Invalidations`]. Updates replace the snapshot, so a
/// verifier sees each change on its next call, with no polling delay.
#[derive(Debug, Clone, Default)]
pub struct InvalidationsHandle {
    current: Arc<RwLock<Arc<Invalidations>>>,
}

impl InvalidationsHandle {
    /// Returns the current snapshot.
    pub fn snapshot(&self) -> Arc<Invalidations> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn update(&self, change: impl FnOnce(&mut Invalidations)) {
        let mut guard = self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = Invalidations::clone(&guard);
        change(&mut next);
        *guard = Arc::new(next);
    }

    /// Revokes one token until its expiry `exp` (seconds).
    pub fn revoke_token(&self, jti: &str, exp: i64) {
        self.update(|inv| {
            inv.revoked.insert(jti.to_owned(), exp);
        });
        tracing::info!(jti, "access token revoked");
    }

    /// Refuses every token of `app_id` issued at or before `at` (seconds).
    /// A later cut-off replaces an earlier one; an earlier one is ignored.
    pub fn cut_off_app(&self, app_id: &str, at: i64) {
        self.update(|inv| {
            let entry = inv.cut_offs.entry(app_id.to_owned()).or_insert(at);
            *entry = (*entry).max(at);
        });
        tracing::info!(app_id, at, "access tokens of app invalidated");
    }

    /// Replaces the whole snapshot with state loaded from the store, which
    /// is the source of truth when several processes change it.
    pub fn replace(
        &self,
        revoked: impl IntoIterator<Item = (String, i64)>,
        cut_offs: impl IntoIterator<Item = (String, i64)>,
    ) {
        let next = Invalidations { revoked: revoked.into_iter().collect(), cut_offs: cut_offs.into_iter().collect() };
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(next);
    }

    /// Drops revoked ids whose tokens expired before `now` minus `leeway`,
    /// and cut-offs older than `max_lifetime + leeway`, which no unexpired
    /// token can precede.
    pub fn prune(&self, now: i64, max_lifetime: i64, leeway: i64) {
        self.update(|inv| {
            inv.revoked.retain(|_, exp| *exp + leeway >= now);
            inv.cut_offs.retain(|_, at| *at + max_lifetime + leeway >= now);
        });
    }
}
