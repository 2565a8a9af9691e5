//! Request rates per app and service (GCRA through governor), the guard's
//! throttles per app with the same mechanism at their own rate, and the
//! count of each app's open connections.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The limit that rejected a request, and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    /// `configured` (gateway.rate_per_second) or `throttle` (a guard verdict).
    pub limit: &'static str,
    /// Whole seconds until the next request would be allowed, at least 1
    /// (the `Retry-After` value, RFC 9110 section 10.2.3).
    pub retry_after_secs: u64,
}

/// A rate and burst, the inputs of one GCRA quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained requests per second, greater than 0.
    pub per_second: f64,
    /// Requests allowed at once, at least 1.
    pub burst: u32,
}

impl Rate {
    fn quota(self) -> Quota {
        let period = Duration::from_secs_f64(1.0 / self.per_second.max(1e-6));
        let burst = NonZeroU32::new(self.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(burst))
            .allow_burst(burst)
    }
}

/// One configured limiter, rebuilt when its rate changes.
struct Configured {
    rate: Rate,
    limiter: DefaultKeyedRateLimiter<(String, String)>,
}

impl Configured {
    fn new(rate: Rate) -> Arc<Self> {
        Arc::new(Self { rate, limiter: RateLimiter::keyed(rate.quota()) })
    }
}

/// The configured rates: `gateway.rate_per_second` and `gateway.rate_burst`
/// for every service, and the services that set their own.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRates {
    /// The rate of services without their own.
    pub default: Rate,
    /// Rates of services that set `rate_per_second` or `rate_burst`, by
    /// service name.
    pub services: HashMap<String, Rate>,
}

/// The limiter of every service with its own rate, and the one shared by
/// the others.
struct Limiters {
    default: Arc<Configured>,
    services: HashMap<String, Arc<Configured>>,
}

impl Limiters {
    /// Builds limiters for `rates`, keeping those of `previous` whose rate
    /// did not change, so their counts go on.
    fn new(rates: &ServiceRates, previous: Option<&Limiters>) -> Self {
        let reuse = |rate: Rate, old: Option<&Arc<Configured>>| match old {
            Some(old) if old.rate == rate => Arc::clone(old),
            _ => Configured::new(rate),
        };
        let default = reuse(rates.default, previous.map(|p| &p.default));
        let services = rates
            .services
            .iter()
            .map(|(service, &rate)| (service.clone(), reuse(rate, previous.and_then(|p| p.services.get(service)))))
            .collect();
        Self { default, services }
    }

    fn of(&self, service: &str) -> &Configured {
        self.services.get(service).unwrap_or(&self.default)
    }
}

/// The gateway's rate limits. Keys are the app id from the verified client
/// certificate and the routed service, never a header the app chose.
pub struct RateLimits {
    configured: ArcSwap<Limiters>,
    throttles: Mutex<HashMap<String, (f64, Arc<DefaultDirectRateLimiter>)>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").field("default", &self.configured.load().default.rate).finish_non_exhaustive()
    }
}

impl RateLimits {
    /// Creates limits per app and service at `rates`.
    pub fn new(rates: &ServiceRates) -> Self {
        Self {
            configured: ArcSwap::from_pointee(Limiters::new(rates, None)),
            throttles: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    /// Replaces the configured rates. A service's counts restart only if
    /// its rate changed, so a reload keeps the state of every other service.
    pub fn set_rates(&self, rates: &ServiceRates) {
        let previous = self.configured.load();
        self.configured.store(Arc::new(Limiters::new(rates, Some(&previous))));
    }

    /// Counts one request of `app_id` to `service`. With `throttle`
    /// (requests per second from a guard verdict) the app's throttle is
    /// checked first, with a burst of one second's worth of requests.
    pub fn check(&self, app_id: &str, service: &str, throttle: Option<f64>) -> Result<(), Exceeded> {
        if let Some(per_second) = throttle {
            let limiter = self.throttle_limiter(app_id, per_second);
            if let Err(not_until) = limiter.check() {
                return Err(self.exceeded("throttle", not_until.wait_time_from(self.clock.now())));
            }
        }

        let configured = self.configured.load();
        match configured.of(service).limiter.check_key(&(app_id.to_owned(), service.to_owned())) {
            Ok(()) => Ok(()),
            Err(not_until) => Err(self.exceeded("configured", not_until.wait_time_from(self.clock.now()))),
        }
    }

    fn exceeded(&self, limit: &'static str, wait: Duration) -> Exceeded {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Exceeded { limit, retry_after_secs: secs.max(1) }
    }

    /// Returns the throttle limiter of `app_id`, made anew when the
    /// throttle's rate differs from the one it was made with.
    fn throttle_limiter(&self, app_id: &str, per_second: f64) -> Arc<DefaultDirectRateLimiter> {
        let mut throttles = self.throttles.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((rate, limiter)) = throttles.get(app_id) {
            if *rate == per_second {
                return Arc::clone(limiter);
            }
        }
        let burst = per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32;
        let limiter = Arc::new(RateLimiter::direct(Rate { per_second, burst }.quota()));
        throttles.insert(app_id.to_owned(), (per_second, Arc::clone(&limiter)));
        limiter
    }

    /// Forgets apps whose state has returned to a full bucket, and
    /// throttles of apps in `active_throttles`' complement, so memory stays
    /// bounded by the apps seen recently.
    pub fn retain_recent(&self, active_throttles: impl Fn(&str) -> bool) {
        let configured = self.configured.load();
        for limiter in configured.services.values().chain([&configured.default]) {
            limiter.limiter.retain_recent();
            limiter.limiter.shrink_to_fit();
        }
        let mut throttles = self.throttles.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        throttles.retain(|app_id, _| active_throttles(app_id));
    }
}

/// A per-app amount in use, over all gateway workers: open connections
/// for `gateway.max_connections_per_app`, buffered request body bytes for
/// `gateway.max_buffered_bytes_per_app`.
///
/// Invariant: the amount of an app is the sum of its live [`TallySlot`]s,
/// and an app without any has no entry.
#[derive(Debug, Default)]
pub(crate) struct AppTally {
    used: Mutex<HashMap<String, u64>>,
}

/// One app's share of an [`AppTally`]. Dropping it gives the share back.
#[derive(Debug)]
pub(crate) struct TallySlot {
    tally: Arc<AppTally>,
    app_id: String,
    amount: u64,
}

impl AppTally {
    /// Takes `amount` for `app_id` if the app's total stays within `limit`,
    /// or returns `None` and takes nothing.
    pub fn acquire(self: &Arc<Self>, app_id: &str, amount: u64, limit: u64) -> Option<TallySlot> {
        let mut slot = TallySlot { tally: Arc::clone(self), app_id: app_id.to_owned(), amount: 0 };
        slot.grow(amount, limit).then_some(slot)
    }

    /// Returns the amount `app_id` uses.
    #[cfg(test)]
    pub fn used(&self, app_id: &str) -> u64 {
        let used = self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        used.get(app_id).copied().unwrap_or(0)
    }
}

impl TallySlot {
    /// Adds `amount` to this slot if the app's total stays within `limit`.
    /// Returns false, and adds nothing, otherwise.
    pub fn grow(&mut self, amount: u64, limit: u64) -> bool {
        let mut used = self.tally.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let total = used.get(&self.app_id).copied().unwrap_or(0);
        if total.saturating_add(amount) > limit {
            return false;
        }
        if amount > 0 {
            used.insert(self.app_id.clone(), total + amount);
            self.amount += amount;
        }
        true
    }
}

impl Drop for TallySlot {
    fn drop(&mut self) {
        if self.amount == 0 {
            return;
        }
        let mut used = self.tally.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(total) = used.get_mut(&self.app_id) {
            *total = total.saturating_sub(self.amount);
            if *total == 0 {
                used.remove(&self.app_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(default: Rate, services: &[(&str, Rate)]) -> ServiceRates {
        ServiceRates { default, services: services.iter().map(|(name, rate)| ((*name).to_owned(), *rate)).collect() }
    }

    #[test]
    fn service_rate_overrides_default() {
        let slow = Rate { per_second: 0.5, burst: 1 };
        let limits = RateLimits::new(&rates(Rate { per_second: 0.5, burst: 3 }, &[("records", slow)]));
        assert_eq!(limits.check("app-a", "records", None), Ok(()));
        assert_eq!(limits.check("app-a", "records", None).unwrap_err().limit, "configured", "records allows 1");
        for _ in 0..3 {
            assert_eq!(limits.check("app-a", "weather", None), Ok(()), "weather keeps the default burst of 3");
        }
        assert!(limits.check("app-a", "weather", None).is_err());
    }

    #[test]
    fn reload_keeps_counts_of_unchanged_services() {
        let default = Rate { per_second: 0.5, burst: 1 };
        let limits = RateLimits::new(&rates(default, &[("records", default)]));
        assert_eq!(limits.check("app-a", "weather", None), Ok(()));
        assert_eq!(limits.check("app-a", "records", None), Ok(()));

        // records gets a new rate, weather keeps the default.
        limits.set_rates(&rates(default, &[("records", Rate { per_second: 0.5, burst: 2 })]));
        assert!(limits.check("app-a", "weather", None).is_err(), "weather's count went on");
        assert_eq!(limits.check("app-a", "records", None), Ok(()), "records' count restarted");
        assert_eq!(limits.check("app-a", "records", None), Ok(()));
        assert!(limits.check("app-a", "records", None).is_err());
    }

    #[test]
    fn burst_then_refusal_with_retry_after() {
        let limits = RateLimits::new(&rates(Rate { per_second: 0.5, burst: 3 }, &[]));
        for _ in 0..3 {
            assert_eq!(limits.check("app-a", "weather", None), Ok(()));
        }
        let refused = limits.check("app-a", "weather", None).unwrap_err();
        assert_eq!(refused.limit, "configured");
        assert_eq!(refused.retry_after_secs, 2);
        assert_eq!(limits.check("app-a", "records", None), Ok(()), "services are counted apart");
        assert_eq!(limits.check("app-b", "weather", None), Ok(()), "apps are counted apart");
    }

    #[test]
    fn throttle_uses_its_own_rate() {
        let limits = RateLimits::new(&rates(Rate { per_second: 1000.0, burst: 1000 }, &[]));
        assert_eq!(limits.check("app-a", "weather", Some(1.0)), Ok(()));
        let refused = limits.check("app-a", "weather", Some(1.0)).unwrap_err();
        assert_eq!(refused.limit, "throttle");
        assert_eq!(refused.retry_after_secs, 1);
    }

    #[test]
    fn connection_slots_count_per_app() {
        let counts = Arc::new(AppTally::default());
        let first = counts.acquire("app-a", 1, 2).expect("first of two");
        let second = counts.acquire("app-a", 1, 2).expect("second of two");
        assert!(counts.acquire("app-a", 1, 2).is_none(), "a third is over the limit");
        assert_eq!(counts.used("app-a"), 2, "a refused connection is not counted");

        let other = counts.acquire("app-b", 1, 2).expect("another app has its own count");
        assert_eq!(counts.used("app-b"), 1);

        drop(first);
        assert_eq!(counts.used("app-a"), 1);
        let third = counts.acquire("app-a", 1, 2).expect("a closed connection frees its place");
        drop((second, third, other));
        assert_eq!(counts.used("app-a"), 0);
        assert!(counts.used.lock().unwrap().is_empty(), "apps without connections leave no entry");
    }

    #[test]
    fn buffer_slots_grow_within_the_app_budget() {
        let tally = Arc::new(AppTally::default());
        let mut first = tally.acquire("app-a", 0, 100).expect("an empty slot always fits");
        assert_eq!(tally.used("app-a"), 0);
        assert!(tally.used.lock().unwrap().is_empty(), "an empty slot leaves no entry");

        assert!(first.grow(60, 100));
        let mut second = tally.acquire("app-a", 30, 100).expect("90 of 100");
        assert!(!second.grow(11, 100), "101 would pass the budget");
        assert_eq!(tally.used("app-a"), 90, "a refused growth adds nothing");
        assert!(second.grow(10, 100), "exactly the budget fits");
        assert!(tally.acquire("app-b", 100, 100).is_some(), "another app has its own budget");

        drop(first);
        assert_eq!(tally.used("app-a"), 40, "a dropped slot gives back all it grew by");
        drop(second);
        assert!(tally.used.lock().unwrap().is_empty());
    }
}
