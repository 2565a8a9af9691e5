//! A gateway with busy polling on serves requests like one without, polls
//! while requests keep coming, and sleeps once a whole window passes
//! without one. The worker's processor time comes from
//! `/proc/self/task/*/stat`, in clock ticks of usually 10 ms.
//!
//! Every test starts one gateway worker, named `gateway-0` like the worker
//! of any other gateway, so the tests run one at a time and each finds its
//! worker by the thread id that appeared when its gateway started.
//!
//! A worker counts the requests whose handler is running and polls only
//! while that count is at most one. A count left too high by cancelled or
//! rejected requests would stop the polling for good. After such traffic,
//! each test checks that the worker sleeps and that a single slow request,
//! alone in flight, makes it poll again.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use portcullis_gateway::ShutdownOutcome;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

/// The polling window of every test. Far above the 10 ms the configuration
/// accepts, so that tick counts on a shared machine stay clear.
const WINDOW: Duration = Duration::from_millis(300);

/// Makes the tests of this binary run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Thread ids in this process of the threads named `name`.
fn threads_named(name: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else { continue };
        if comm.trim_end() == name {
            ids.push(path.file_name().unwrap().to_str().unwrap().parse().unwrap());
        }
    }
    ids
}

/// User and system clock ticks of thread `id` in this process, or `None`
/// once the thread has ended.
fn thread_ticks(id: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{id}/stat")).ok()?;
    // The fields after the parenthesised name; utime and stime are the
    // 14th and 15th fields of the whole line (proc_pid_stat(5)).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    Some(fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap())
}

/// Measures the clock ticks that worker `id` uses in the next `period`.
async fn ticks_during(id: u64, period: Duration) -> u64 {
    let before = thread_ticks(id).expect("worker thread running");
    tokio::time::sleep(period).await;
    thread_ticks(id).expect("worker thread running") - before
}

/// Starts a gateway with one worker polling for [`WINDOW`] and returns it
/// with the worker's thread id.
async fn start_polling() -> (Harness, u64) {
    let before = threads_named("gateway-0");
    let h = Harness::start_with_workers(Some(1), |config| config.gateway.busy_poll_window = WINDOW).await;

    // A new thread sets its own name once it runs, which can be a moment
    // after the gateway has started.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let started: Vec<u64> = threads_named("gateway-0").into_iter().filter(|id| !before.contains(id)).collect();
        if started.len() == 1 {
            return (h, started[0]);
        }
        assert!(Instant::now() < deadline, "expected one new worker thread, found {started:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits up to 5 s until the upstream has seen `count` requests.
async fn wait_for_upstream(h: &Harness, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.upstream.seen().len() < count {
        assert!(Instant::now() < deadline, "upstream saw {} requests, expected {count}", h.upstream.seen().len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `GET path` on the HTTP/2 connection `sender` in a task that
/// returns the status.
fn spawn_http2_get(sender: &SendRequest<Empty<Bytes>>, port: u16, path: &str, token: &str) -> JoinHandle<u16> {
    let request = http::Request::get(format!("https://localhost:{port}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::new())
        .unwrap();
    let mut sender = sender.clone();
    tokio::spawn(async move {
        sender.ready().await.unwrap();
        sender.send_request(request).await.map(|response| response.status().as_u16()).unwrap_or(0)
    })
}

/// Checks that worker `id` sleeps once a window has passed, then that one
/// slow request alone in flight makes it poll. The slow request's client
/// then closes, and the gateway finishes the request when the upstream
/// responds after 3 s.
async fn assert_idle_then_polls_again(h: &Harness, id: u64, token: &str) {
    tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
    let idle = ticks_during(id, Duration::from_millis(400)).await;
    assert!(idle <= 2, "worker used {idle} ticks with no request for a window, expected at most 2");

    let seen = h.upstream.seen().len();
    let request = format!(
        "GET /weather/v1/slow/alone HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let mut slow = connect(h, b"http/1.1", false).await;
    slow.write_all(request.as_bytes()).await.unwrap();
    wait_for_upstream(h, seen + 1).await;
    let polling = ticks_during(id, Duration::from_millis(150)).await;
    drop(slow);
    assert!(polling >= 3, "worker used {polling} ticks with one request in flight, expected at least 3 (30 ms)");
}

/// Waits up to 1 s for worker `id` to end, which it does right after the
/// shutdown reports the end of its connections.
async fn assert_thread_ends(id: u64) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while thread_ticks(id).is_some() {
        assert!(Instant::now() < deadline, "worker thread still running 1 s after the shutdown");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Shuts the gateway down and checks that its worker thread ends.
async fn shut_down(mut h: Harness, id: u64) {
    let started = Instant::now();
    let outcome = h.gateway.take().unwrap().shutdown(Duration::from_secs(5)).await;
    assert_eq!(outcome, ShutdownOutcome::Drained, "shutdown took {:?}", started.elapsed());
    assert_thread_ends(id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_then_sleeps() {
    let _serial = SERIAL.lock().await;
    let (h, id) = start_polling().await;
    let token = h.token("weather", &["weather:read"]);

    // Requests are served and reach the upstream as usual.
    for _ in 0..3 {
        assert_eq!(h.get("/weather/v1/today", &token).await, 200);
    }
    assert_eq!(h.upstream.seen().len(), 3);

    // Inside the window after the last request the worker keeps polling:
    // a sleeping worker would use no ticks in these 150 ms.
    let polling = ticks_during(id, Duration::from_millis(150)).await;
    assert!(polling >= 3, "worker used {polling} ticks inside the window, expected at least 3 (30 ms)");

    // Once the window has passed, it sleeps.
    tokio::time::sleep(WINDOW).await;
    let idle = ticks_during(id, Duration::from_millis(500)).await;
    assert!(idle <= 2, "worker used {idle} ticks after the window, expected at most 2");

    shut_down(h, id).await;
}

/// Several HTTP/2 streams in flight stop the polling, and streams that the
/// client resets while the upstream is slow leave no request counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_reset_streams_release_count() {
    let _serial = SERIAL.lock().await;
    let (h, id) = start_polling().await;
    let token = h.token("weather", &["weather:read"]);
    let (sender, driver) = http2_client(&h).await;

    // Three fast streams at once all get 200.
    let fast: Vec<_> =
        (0..3).map(|i| spawn_http2_get(&sender, h.port(), &format!("/weather/v1/fast{i}"), &token)).collect();
    for stream in fast {
        assert_eq!(stream.await.unwrap(), 200);
    }

    // Four slow streams in flight: the worker sleeps although they started
    // inside the window.
    let slow: Vec<_> =
        (0..4).map(|i| spawn_http2_get(&sender, h.port(), &format!("/weather/v1/slow/{i}"), &token)).collect();
    wait_for_upstream(&h, 7).await;
    let busy = ticks_during(id, Duration::from_millis(200)).await;
    assert!(busy <= 2, "worker used {busy} ticks with four requests in flight, expected at most 2");

    // Dropping the response futures resets the four streams.
    for stream in &slow {
        stream.abort();
    }
    for stream in slow {
        assert!(stream.await.unwrap_err().is_cancelled());
    }

    assert_idle_then_polls_again(&h, id, &token).await;
    drop(sender);
    driver.abort();
    shut_down(h, id).await;
}

/// Clients that close their connection, with FIN or with RST, while the
/// upstream is slow leave no request counted once the upstream responds.
/// The gateway allows half-closed HTTP/1.1 connections, so hyper reads
/// nothing while a handler runs and detects neither close before then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_releases_count() {
    let _serial = SERIAL.lock().await;
    let (h, id) = start_polling().await;
    let token = h.token("weather", &["weather:read"]);
    let request =
        format!("GET /weather/v1/slow/gone HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");

    let mut clients = Vec::new();
    for reset_on_close in [false, true] {
        let mut tls = connect(&h, b"http/1.1", reset_on_close).await;
        tls.write_all(request.as_bytes()).await.unwrap();
        clients.push(tls);
    }
    wait_for_upstream(&h, 2).await;
    drop(clients);

    // The upstream responds to the abandoned requests 3 s after it
    // received them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_idle_then_polls_again(&h, id, &token).await;
    shut_down(h, id).await;
}

/// Requests rejected inside the handler (401, 404) and before it (400 for a
/// malformed head, 431 for an oversized one) start no polling, so an app
/// sending only rejected requests cannot keep a worker busy, and leave no
/// request counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_release_count() {
    let _serial = SERIAL.lock().await;
    let (h, id) = start_polling().await;
    let token = h.token("weather", &["weather:read"]);

    assert_eq!(h.get("/weather/v1/today", "not-a-token").await, 401);
    assert_eq!(h.get("/nowhere/v1/today", &token).await, 404);
    let malformed =
        h.raw(b"GET /weather/v1/today HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n", Duration::from_secs(5)).await;
    assert_eq!(status_of(&malformed), 400);
    let oversized = format!(
        "GET /weather/v1/today HTTP/1.1\r\nHost: localhost\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(h.config.gateway.max_header_bytes as usize * 2)
    );
    assert_eq!(status_of(&h.raw(oversized.as_bytes(), Duration::from_secs(5)).await), 431);
    assert!(h.upstream.seen().is_empty(), "a rejected request reached the upstream");
    let refusal_ticks = ticks_during(id, Duration::from_millis(150)).await;
    assert!(refusal_ticks <= 2, "worker used {refusal_ticks} ticks after rejected requests, expected at most 2");

    assert_idle_then_polls_again(&h, id, &token).await;
    shut_down(h, id).await;
}

/// A shutdown right after a request, while the worker polls, finishes at
/// once, and one that has to drop a request in flight ends the worker too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_polling() {
    let _serial = SERIAL.lock().await;
    let (mut h, id) = start_polling().await;
    let token = h.token("weather", &["weather:read"]);

    assert_eq!(h.get("/weather/v1/today", &token).await, 200);
    let started = Instant::now();
    shut_down(h, id).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(200), "shutdown took {took:?} while polling, expected under 200 ms");

    let (next, id) = start_polling().await;
    h = next;
    let token = h.token("weather", &["weather:read"]);
    let (sender, driver) = http2_client(&h).await;
    let slow = spawn_http2_get(&sender, h.port(), "/weather/v1/slow/cut", &token);
    wait_for_upstream(&h, 1).await;
    let outcome = h.gateway.take().unwrap().shutdown(Duration::from_millis(300)).await;
    assert_eq!(outcome, ShutdownOutcome::DeadlinePassed);
    assert_thread_ends(id).await;
    assert_eq!(slow.await.unwrap(), 0, "the dropped request got a response");
    driver.abort();
}
