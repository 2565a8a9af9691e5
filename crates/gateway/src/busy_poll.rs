//! Optional busy polling for a worker's runtime
//! (`gateway.busy_poll_window`).
//!
//! A worker that runs out of work parks its thread in `epoll_wait`. The next
//! packet then has to wake the thread, which on a virtual machine can mean
//! halting and resuming the virtual processor, and the request that follows
//! runs on cold caches. With a window set, a worker that has started or
//! finished a request within the window keeps polling its sockets instead
//! of sleeping. HAProxy's `busy-polling` option makes the same trade.
//!
//! The cost is processor time while the worker would otherwise be idle: up
//! to one core per worker under steady light load, as seen by `top`, and
//! nothing once no request has arrived for a whole window. While idle
//! inside the window the worker calls `sched_yield` after each poll, so a
//! thread of another process that is ready to run on the same core goes
//! first.
//!
//! The polling is a task on the worker's runtime that yields in a loop.
//! Tokio's current-thread scheduler polls its I/O driver without blocking
//! whenever a yielded task is waiting, so each turn of the loop checks the
//! sockets once. Tokio has no busy-poll setting, and `SO_BUSY_POLL` works
//! only for network devices with NAPI polling, not for the loopback or
//! virtual networks the gateway usually serves, so the loop is written here.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

thread_local! {
    /// The polling state of the worker running on this thread, if it polls.
    static POLLER: RefCell<Option<Arc<Activity>>> = const { RefCell::new(None) };
}

/// Activity marks shared between a worker's requests and its polling task. All
/// users run on the same thread, so relaxed ordering is enough; the types
/// are atomic only because tokio requires spawned tasks to be `Send`.
#[derive(Debug, Default)]
struct Activity {
    /// Incremented by every mark.
    marks: AtomicU64,
    /// True while the polling task waits for a mark instead of polling.
    waiting: AtomicBool,
    wake: Notify,
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

/// Records activity on this thread's worker, which starts or extends its
/// polling window. Costs a thread-local lookup when the worker does not poll.
pub(crate) fn mark() {
    POLLER.with(|poller| {
        if let Some(activity) = poller.borrow().as_ref() {
            activity.marks.fetch_add(1, Ordering::Relaxed);
            if activity.waiting.load(Ordering::Relaxed) {
                activity.waiting.store(false, Ordering::Relaxed);
                activity.wake.notify_one();
            }
        }
    });
}

/// Polls for `window` after each mark, then waits for the next mark.
async fn poll_while_active(activity: Arc<Activity>, window: Duration) {
    loop {
        activity.waiting.store(true, Ordering::Relaxed);
        activity.wake.notified().await;

        let mut seen = activity.marks.load(Ordering::Relaxed);
        let mut since = Instant::now();
        loop {
            tokio::task::yield_now().await;
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

    /// The polling task runs while marks arrive and goes back to waiting
    /// once a window passes without one.
    #[test]
    fn polls_only_after_marks() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            start(Duration::from_millis(20));
            tokio::task::yield_now().await;
            let activity = POLLER.with(|poller| poller.borrow().clone()).unwrap();
            assert!(activity.waiting.load(Ordering::Relaxed), "waits before the first mark");

            mark();
            assert!(!activity.waiting.load(Ordering::Relaxed), "a mark wakes the polling task");
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(!activity.waiting.load(Ordering::Relaxed), "still polling inside the window");

            tokio::time::sleep(Duration::from_millis(60)).await;
            assert!(activity.waiting.load(Ordering::Relaxed), "waits again after an idle window");
            assert_eq!(activity.marks.load(Ordering::Relaxed), 1);
        });
    }
}
