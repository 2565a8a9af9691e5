//! Optional busy polling for a worker's runtime
//! (`gateway.busy_poll_window`).
//!
//! A worker that runs out of work parks its thread in `epoll_wait`. The next
//! packet then has to wake the thread, which on a virtual machine can mean
//! halting and resuming the virtual processor, and the request that follows
//! runs on cold caches. With a window set, a worker keeps polling its
//! sockets instead of sleeping while at most one request is in flight on
//! it and a request was sent upstream or got its response head within the
//! window. Only requests that passed every check count, so an app whose
//! requests are all rejected cannot keep a worker busy. HAProxy's
//! global `busy-polling` option (its configuration manual, "Performance
//! tuning") makes the same trade.
//!
//! Polling pays off when a worker's requests form one chain of short waits:
//! a client that sends its next request as soon as it receives the last
//! response. With several requests in flight the worker rarely runs out of
//! work, and one wake-up serves several events. Polling would then only
//! take processor time from the upstreams and clients that those requests
//! wait for, so the worker sleeps as usual. The cost is processor time
//! while the worker would otherwise be idle: up to one core per worker
//! under steady light load, as seen by `top`, and nothing once no request
//! has been forwarded for a whole window. While idle inside the window the
//! worker calls `sched_yield` after each poll, which asks the scheduler to
//! run any other thread waiting for the same core first.
//!
//! The polling is a task on the worker's runtime that yields in a loop.
//! Tokio's current-thread scheduler polls its I/O driver without blocking
//! whenever a yielded task is waiting, so each turn of the loop checks the
//! sockets once. Tokio has no busy-poll setting, and `SO_BUSY_POLL` works
//! only for network devices with NAPI polling, not for the loopback or
//! virtual networks the gateway usually serves, so the loop is written here.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

thread_local! {
    /// The polling state of the worker running on this thread, if it polls.
    static POLLER: RefCell<Option<Arc<Activity>>> = const { RefCell::new(None) };
}

/// Maximum number of requests in flight at which a worker still polls.
const MAX_IN_FLIGHT: usize = 1;

/// Request activity shared between a worker's requests and its polling
/// task. All users run on the same thread, so relaxed ordering is enough.
/// The types are atomic only because tokio requires spawned tasks to be
/// `Send`.
#[derive(Debug, Default)]
struct Activity {
    /// Incremented whenever a request is sent upstream or its wait ends.
    marks: AtomicU64,
    /// Requests sent upstream and waiting for the response head.
    in_flight: AtomicUsize,
    /// True while the polling task waits for a mark instead of polling.
    waiting: AtomicBool,
    wake: Notify,
}

impl Activity {
    /// Counts a mark and wakes the polling task if it waits and the worker
    /// is lightly loaded.
    fn mark(&self) {
        self.marks.fetch_add(1, Ordering::Relaxed);
        if self.waiting.load(Ordering::Relaxed) && self.in_flight.load(Ordering::Relaxed) <= MAX_IN_FLIGHT {
            self.waiting.store(false, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }
}

/// Starts the polling task on the current worker's runtime, polling for
/// `window` after each mark. Does nothing for a zero window. Must run
/// inside the worker's current-thread runtime, on its thread.
pub(crate) fn start(window: Duration) {
    if window.is_zero() {
        return;
    }
    let activity = Arc::new(Activity::default());
    POLLER.with(|poller| *poller.borrow_mut() = Some(Arc::clone(&activity)));
    tokio::spawn(poll_while_active(activity, window));
}

/// Counts one forwarded request in flight on this thread's worker, from
/// its upstream send until the guard is dropped (when the response head
/// has arrived, or the request failed or was cancelled). Both ends start or
/// extend the polling window. Costs a
/// thread-local lookup when the worker does not poll.
pub(crate) fn request_started() -> InFlight {
    let activity = POLLER.with(|poller| poller.borrow().clone());
    if let Some(activity) = &activity {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.mark();
    }
    InFlight(activity)
}

/// A request in flight, counted until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Option<Arc<Activity>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(activity) = &self.0 {
            activity.in_flight.fetch_sub(1, Ordering::Relaxed);
            activity.mark();
        }
    }
}

/// Polls for `window` after each mark while the worker is lightly loaded,
/// then waits for the next mark.
async fn poll_while_active(activity: Arc<Activity>, window: Duration) {
    loop {
        activity.waiting.store(true, Ordering::Relaxed);
        activity.wake.notified().await;

        let mut seen = activity.marks.load(Ordering::Relaxed);
        let mut since = Instant::now();
        loop {
            tokio::task::yield_now().await;
            if activity.in_flight.load(Ordering::Relaxed) > MAX_IN_FLIGHT {
                break;
            }
            let marks = activity.marks.load(Ordering::Relaxed);
            if marks != seen {
                seen = marks;
                since = Instant::now();
            } else if since.elapsed() >= window {
                break;
            } else {
                // Idle inside the window: a thread waiting for this core
                // runs first, if there is one.
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polling task runs while requests come one at a time, stops
    /// while two are in flight, and goes back to waiting once a window
    /// passes without a request.
    #[test]
    fn polls_only_under_light_load() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            start(Duration::from_millis(20));
            tokio::task::yield_now().await;
            let activity = POLLER.with(|poller| poller.borrow().clone()).unwrap();
            let waiting = || activity.waiting.load(Ordering::Relaxed);
            assert!(waiting(), "waits before the first request");

            let first = request_started();
            assert!(!waiting(), "a request wakes the polling task");
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(!waiting(), "still polling inside the window");

            let second = request_started();
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(waiting(), "two requests in flight stop the polling");
            drop(second);
            assert!(!waiting(), "back to one request: polling again");
            drop(first);
            assert_eq!(activity.in_flight.load(Ordering::Relaxed), 0);

            tokio::time::sleep(Duration::from_millis(60)).await;
            assert!(waiting(), "waits again after an idle window");
            assert_eq!(activity.marks.load(Ordering::Relaxed), 4);
        });
    }
}
