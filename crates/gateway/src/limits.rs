//! Request rates per app and service (GCRA through governor), and the guard's
//! throttles per app with the same mechanism at their own rate.

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

/// The configured limiter, rebuilt when its rate changes.
struct Configured {
    rate: Rate,
    limiter: DefaultKeyedRateLimiter<(String, String)>,
}

/// The gateway's rate limits. Keys are the app id from the verified client
/// certificate and the routed service, never a header the app chose.
pub struct RateLimits {
    configured: ArcSwap<Configured>,
    throttles: Mutex<HashMap<String, (f64, Arc<DefaultDirectRateLimiter>)>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").field("rate", &self.configured.load().rate).finish_non_exhaustive()
    }
}

impl RateLimits {
    /// Creates limits of `rate` per app and service.
    pub fn new(rate: Rate) -> Self {
        Self {
            configured: ArcSwap::from_pointee(Configured { rate, limiter: RateLimiter::keyed(rate.quota()) }),
            throttles: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    /// Replaces the configured rate. Counts restart only if the rate
    /// changed, so a reload with the same settings keeps every app's state.
    pub fn set_rate(&self, rate: Rate) {
        if self.configured.load().rate != rate {
            self.configured.store(Arc::new(Configured { rate, limiter: RateLimiter::keyed(rate.quota()) }));
        }
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
        match configured.limiter.check_key(&(app_id.to_owned(), service.to_owned())) {
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
        configured.limiter.retain_recent();
        configured.limiter.shrink_to_fit();
        let mut throttles = self.throttles.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        throttles.retain(|app_id, _| active_throttles(app_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_retry_after() {
        let limits = RateLimits::new(Rate { per_second: 0.5, burst: 3 });
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
        let limits = RateLimits::new(Rate { per_second: 1000.0, burst: 1000 });
        assert_eq!(limits.check("app-a", "weather", Some(1.0)), Ok(()));
        let refused = limits.check("app-a", "weather", Some(1.0)).unwrap_err();
        assert_eq!(refused.limit, "throttle");
        assert_eq!(refused.retry_after_secs, 1);
    }
}
