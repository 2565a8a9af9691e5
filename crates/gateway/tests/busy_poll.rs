//! A gateway with busy polling on serves requests like one without, polls
//! while requests keep coming, and sleeps once a whole window passes
//! without one. The worker's processor time comes from
//! `/proc/self/task/*/stat`, in clock ticks of usually 10 ms. This test has
//! its own binary, so the one gateway worker it starts is the only thread
//! named `gateway-0` in the process.

mod common;

use std::time::Duration;

use common::*;

/// User and system clock ticks of the thread named `name` in this process.
fn thread_ticks(name: &str) -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        if std::fs::read_to_string(path.join("comm")).unwrap().trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap();
        // The fields after the parenthesised name; utime and stime are the
        // 14th and 15th fields of the whole line (proc_pid_stat(5)).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        return fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    panic!("no thread named {name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_then_sleeps() {
    let window = Duration::from_millis(300);
    let h = Harness::start_with_workers(Some(1), |config| config.gateway.busy_poll_window = window).await;
    let token = h.token("weather", &["weather:read"]);

    // Requests are served and reach the upstream as usual.
    for _ in 0..3 {
        assert_eq!(h.get("/weather/v1/today", &token).await, 200);
    }
    assert_eq!(h.upstream.seen().len(), 3);

    // Inside the window after the last request the worker keeps polling:
    // a sleeping worker would use no ticks in these 150 ms.
    let before = thread_ticks("gateway-0");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let polling = thread_ticks("gateway-0") - before;
    assert!(polling >= 3, "worker used {polling} ticks inside the window, expected at least 3 (30 ms)");

    // Once the window has passed, it sleeps.
    tokio::time::sleep(window).await;
    let before = thread_ticks("gateway-0");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = thread_ticks("gateway-0") - before;
    assert!(idle <= 2, "worker used {idle} ticks after the window, expected at most 2");
}
