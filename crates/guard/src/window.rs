//! A sliding-window counter made of fixed-size time buckets.
//!
//! Hand-written rather than taken from a rate-limiting crate, because those
//! count permits against the system clock. The guard sums other tallies
//! (per-class arrays, byte counts) against an injected clock, and a quiet
//! app's window must use almost no memory.
//!
//! A window of length `W` is cut into [`BUCKETS`] buckets of `W / BUCKETS`
//! milliseconds (the resolution, rounded down, at least 1 ms). The count at
//! time `t` is the sum of the bucket holding `t` and the buckets before it,
//! [`BUCKETS`] in all. So every event younger than `W - resolution` is
//! counted, and no event older than `W` is.

use std::collections::VecDeque;
use std::time::Duration;

use crate::clock::duration_ms;

/// Buckets per window; the resolution is the window length divided by this.
pub const BUCKETS: i64 = 60;

/// A value that buckets add up.
pub(crate) trait Tally: Default + Clone {
    /// Adds `other` to `self`, saturating.
    fn add(&mut self, other: &Self);
    /// Subtracts `other`, which was added before, from `self`.
    fn subtract(&mut self, other: &Self);
}

impl Tally for u64 {
    fn add(&mut self, other: &Self) {
        *self = self.saturating_add(*other);
    }

    fn subtract(&mut self, other: &Self) {
        *self = self.saturating_sub(*other);
    }
}

impl<const N: usize> Tally for [u64; N]
where
    [u64; N]: Default,
{
    fn add(&mut self, other: &Self) {
        for (mine, theirs) in self.iter_mut().zip(other) {
            mine.add(theirs);
        }
    }

    fn subtract(&mut self, other: &Self) {
        for (mine, theirs) in self.iter_mut().zip(other) {
            mine.subtract(theirs);
        }
    }
}

/// A sliding-window sum of tallies.
///
/// Invariants: `buckets` holds only non-empty buckets, in increasing bucket
/// number, all within the window of the newest; `sum` is their total.
#[derive(Debug, Clone)]
pub(crate) struct SlidingWindow<T> {
    resolution_ms: i64,
    buckets: VecDeque<(i64, T)>,
    sum: T,
}

impl<T: Tally> SlidingWindow<T> {
    /// Creates an empty window of length `window` (at least 1 ms).
    pub fn new(window: Duration) -> Self {
        let resolution_ms = (duration_ms(window) / BUCKETS).max(1);
        Self { resolution_ms, buckets: VecDeque::new(), sum: T::default() }
    }

    /// Adds `tally` at `at_ms`. An event older than the newest bucket is
    /// counted in the newest bucket, so a late event stays in the window
    /// slightly longer than it should rather than being lost.
    pub fn add(&mut self, at_ms: i64, tally: &T) {
        let mut bucket = at_ms.div_euclid(self.resolution_ms);
        if let Some((newest, _)) = self.buckets.back() {
            bucket = bucket.max(*newest);
        }
        self.expire(bucket);

        match self.buckets.back_mut() {
            Some((number, counts)) if *number == bucket => counts.add(tally),
            _ => self.buckets.push_back((bucket, tally.clone())),
        }
        self.sum.add(tally);
    }

    /// Returns the sum of the window at `now_ms`, dropping buckets that left it.
    pub fn total(&mut self, now_ms: i64) -> &T {
        self.expire(now_ms.div_euclid(self.resolution_ms));
        &self.sum
    }

    /// Empties the window.
    pub fn clear(&mut self) {
        self.buckets.clear();
        self.sum = T::default();
    }

    /// Returns whether the window contains no bucket at `now_ms`.
    pub fn is_empty(&mut self, now_ms: i64) -> bool {
        self.expire(now_ms.div_euclid(self.resolution_ms));
        self.buckets.is_empty()
    }

    /// Returns the length of one bucket in milliseconds.
    #[cfg(test)]
    pub fn resolution_ms(&self) -> i64 {
        self.resolution_ms
    }

    /// Drops the buckets that are not within the window ending in bucket `current`.
    fn expire(&mut self, current: i64) {
        while let Some((number, counts)) = self.buckets.front() {
            if *number > current - BUCKETS {
                break;
            }
            self.sum.subtract(counts);
            self.buckets.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_window_only() {
        let mut window = SlidingWindow::<u64>::new(Duration::from_secs(60));
        assert_eq!(window.resolution_ms(), 1000);
        window.add(0, &3);
        window.add(59_000, &4);
        assert_eq!(*window.total(59_999), 7);
        // The bucket of time 0 leaves the window at 60 s.
        assert_eq!(*window.total(60_000), 4);
        assert_eq!(*window.total(118_999), 4);
        assert_eq!(*window.total(119_000), 0);
        assert!(window.is_empty(119_000));
    }

    #[test]
    fn late_event_goes_to_newest_bucket() {
        let mut window = SlidingWindow::<u64>::new(Duration::from_secs(60));
        window.add(30_000, &1);
        window.add(1_000, &1);
        assert_eq!(*window.total(30_000), 2);
        assert_eq!(*window.total(89_999), 2);
        assert_eq!(*window.total(90_000), 0);
    }

    #[test]
    fn array_tallies_add_per_slot() {
        let mut window = SlidingWindow::<[u64; 2]>::new(Duration::from_secs(5));
        assert_eq!(window.resolution_ms(), 83);
        window.add(0, &[1, 0]);
        window.add(10, &[0, 2]);
        assert_eq!(*window.total(100), [1, 2]);
        assert_eq!(*window.total(4_980), [0, 0]);
    }

    #[test]
    fn memory_stays_within_bucket_count() {
        let mut window = SlidingWindow::<u64>::new(Duration::from_secs(1));
        for at in 0..10_000 {
            window.add(at, &1);
        }
        assert_eq!(window.buckets.len(), BUCKETS as usize);
        assert_eq!(*window.total(9_999), 960);
    }
}
