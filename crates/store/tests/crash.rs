//! A writer killed with SIGKILL in the middle of a stream of committed
//! writes loses none of them.
//!
//! The test runs this same test binary again as the writer (the ignored test
//! `crash_writer`), reads the id of every committed decision from its
//! standard output, kills it without warning, then reopens the store and
//! looks for every id it was told about.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_store::*;

const WRITER_URL_ENV: &str = "PORTCULLIS_CRASH_WRITER_URL";

/// Committed writes to observe before the kill.
const WRITES_BEFORE_KILL: usize = 300;

/// The writer: inserts decisions forever, printing each id once its insert
/// returned, which is after the commit. Runs only when the parent test
/// starts it.
#[tokio::test]
#[ignore = "started by the crash tests as a child process"]
async fn crash_writer() {
    let url = std::env::var(WRITER_URL_ENV).expect("run by the crash tests only");
    let store = Store::open(&url).await.unwrap();
    let mut stdout = std::io::stdout().lock();
    // Bounded so a writer whose parent died stops by itself.
    for n in 0..1_000_000_u64 {
        let id = store
            .insert_decision(&NewDecision {
                app_id: format!("app-{}", n % 7),
                kind: DecisionKind::Ban,
                reason: format!("write {n}"),
                policy: None,
                evidence: "{}".into(),
                origin: DecisionOrigin::Operator,
                simulated: false,
                started_at: now_ms(),
                expires_at: None,
            })
            .await
            .unwrap();
        writeln!(stdout, "committed {id}").unwrap();
        stdout.flush().unwrap();
    }
}

/// Kills the child on drop, so a failing assertion leaves no writer behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn kill_writer_and_check(url: &str) {
    let mut child = Child(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_writer", "--ignored", "--nocapture", "--test-threads=1"])
            .env(WRITER_URL_ENV, url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let mut committed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    while committed.len() < WRITES_BEFORE_KILL {
        assert!(Instant::now() < deadline, "writer committed only {} rows in 120 s", committed.len());
        let line = lines.next().expect("writer exited early").unwrap();
        if let Some(id) = line.strip_prefix("committed ") {
            committed.push(id.parse::<i64>().unwrap());
        }
    }

    // SIGKILL: no destructor, no WAL checkpoint, no connection close.
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));

    // Ids printed after the kill started may also be present; every id
    // printed before must be.
    let store = Store::open(url).await.unwrap();
    let stored: std::collections::BTreeSet<i64> = store.decisions(None).await.unwrap().iter().map(|d| d.id).collect();
    let missing: Vec<&i64> = committed.iter().filter(|id| !stored.contains(id)).collect();
    assert!(missing.is_empty(), "committed rows lost after SIGKILL: {missing:?}");
    assert!(stored.len() >= WRITES_BEFORE_KILL);
    store.close().await;
}

#[tokio::test]
async fn sqlite_keeps_committed_rows_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join(SQLITE_FILE).display());
    kill_writer_and_check(&url).await;
}

#[tokio::test]
async fn postgres_keeps_committed_rows_after_sigkill() {
    let Some(database) = common::postgres("crash").await else {
        return;
    };
    kill_writer_and_check(&database.url).await;
    database.drop_now().await;
}
