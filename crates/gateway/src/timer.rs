//! The timer behind hyper's HTTP/1.1 header read timeout, one per app
//! connection.
//!
//! hyper drops its header timer once a request head has arrived and
//! creates a new one when it starts reading the next head. With hyper-util's
//! `TokioTimer` every request thus allocated, registered and removed a
//! tokio timer entry, and often woke its own runtime's driver through an
//! eventfd write. Here each connection keeps one tokio `Sleep` for its
//! whole life. A new deadline only moves that sleep, and moving a
//! registered sleep later is a single atomic update in tokio. The entry
//! goes back into tokio's timer wheel only after it has fired.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Hands out sleeps that share one tokio `Sleep`. hyper's HTTP/1.1 server
/// has at most one header timer per connection, so one connection's
/// sleeps never need different deadlines at the same time.
#[derive(Clone)]
pub(crate) struct ConnectionTimer {
    sleep: Arc<Mutex<Pin<Box<tokio::time::Sleep>>>>,
}

impl ConnectionTimer {
    /// Creates the connection's sleep, not yet registered with the
    /// runtime. Must be called inside a tokio runtime with time enabled.
    pub(crate) fn new() -> Self {
        // A far deadline that no connection reaches before its first reset.
        let idle = tokio::time::sleep(Duration::from_secs(24 * 60 * 60));
        Self { sleep: Arc::new(Mutex::new(Box::pin(idle))) }
    }
}

impl hyper::rt::Timer for ConnectionTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        lock(&self.sleep).as_mut().reset(deadline.into());
        Box::pin(SharedSleep { sleep: Arc::clone(&self.sleep) })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        lock(&self.sleep).as_mut().reset(new_deadline.into());
        if !sleep.is::<SharedSleep>() {
            *sleep = self.sleep_until(new_deadline);
        }
    }
}

/// One of hyper's header timers: completes when the connection's sleep,
/// at its latest deadline, has passed.
struct SharedSleep {
    sleep: Arc<Mutex<Pin<Box<tokio::time::Sleep>>>>,
}

impl Future for SharedSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        lock(&self.sleep).as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for SharedSleep {}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use hyper::rt::Timer;

    use super::*;

    /// A later deadline replaces an earlier one, an earlier one replaces a
    /// later one, and a sleep that has fired can be armed again.
    #[tokio::test(start_paused = true)]
    async fn deadlines_move_both_ways_and_rearm() {
        let timer = ConnectionTimer::new();
        let start = Instant::now();
        let clock = tokio::time::Instant::now();
        let at = |secs| start + Duration::from_secs(secs);

        let first = timer.sleep_until(at(10));
        timer.sleep_until(at(20)).await;
        assert_eq!(clock.elapsed().as_secs(), 20);
        drop(first);

        let mut sleep = timer.sleep_until(at(40));
        timer.reset(&mut sleep, at(25));
        sleep.await;
        assert_eq!(clock.elapsed().as_secs(), 25);

        timer.sleep_until(at(26)).await;
        assert_eq!(clock.elapsed().as_secs(), 26);
    }
}
