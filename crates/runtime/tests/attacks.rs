//! The attack suite: real attacks from a deployed, hardened app container
//! against the platform, while a well-behaved neighbour app is probed
//! through the gateway stand-in. Every target is a container or network this
//! test created. With `PORTCULLIS_ATTACK_REPORT=FILE` the results are written
//! as a Markdown table (scripts/attack-suite writes docs/attack-suite.md).

mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::{APP_PORT, ExecOutput, TestEnv, can_fetch, exec};
use portcullis_runtime::docker::{ImageContext, PlatformContainerSpec, build_image};
use portcullis_runtime::labels::{self, Role};

/// How long each resource attack runs.
const ATTACK_SECONDS: u64 = 6;

/// One attack's outcome.
struct Outcome {
    name: &'static str,
    tried: String,
    result: String,
    contained: bool,
    success_rate: f64,
    p99_ratio: f64,
}

/// Neighbour probe results: (successes, attempts, latencies in seconds).
struct Probe {
    ok: usize,
    total: usize,
    latencies: Vec<f64>,
}

impl Probe {
    fn success_rate(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.ok as f64 / self.total as f64 }
    }

    fn p99(&self) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return f64::NAN;
        }
        sorted[((sorted.len() as f64 * 0.99).ceil() as usize).clamp(1, sorted.len()) - 1]
    }
}

/// Sends HTTP requests to `url` from inside the network namespace of the
/// container with host pid `pid` (the gateway stand-in), in batches of 10
/// with curl, until `duration` has passed. At most 100 batches.
async fn probe(pid: i64, url: &str, duration: Duration) -> Probe {
    let deadline = Instant::now() + duration;
    let mut probe = Probe { ok: 0, total: 0, latencies: Vec::new() };
    for _ in 0..100 {
        if Instant::now() >= deadline {
            break;
        }
        let mut command = tokio::process::Command::new("nsenter");
        command.args(["-t", &pid.to_string(), "-n", "curl", "-s", "-o", "/dev/null", "--max-time", "2"]);
        command.args(["-w", "%{http_code} %{time_total}\\n"]);
        for _ in 0..10 {
            command.arg(url);
        }
        let output = command.output().await.expect("nsenter and curl (util-linux, curl)");
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let mut parts = line.split_whitespace();
            let (Some(code), Some(seconds)) = (parts.next(), parts.next()) else { continue };
            probe.total += 1;
            if code == "200" {
                probe.ok += 1;
                probe.latencies.push(seconds.parse().unwrap_or(f64::NAN));
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    probe
}

/// The attack image: busybox plus Debian's stress-ng with the shared
/// libraries it loads (from `ldd`), so it runs FROM scratch.
fn attack_image_context() -> ImageContext {
    let mut context = common::busybox_context().unwrap();
    let stress = "/usr/bin/stress-ng";
    let ldd = std::process::Command::new("ldd").arg(stress).output().expect("ldd");
    assert!(ldd.status.success(), "stress-ng missing: apt-get install stress-ng");
    context = context.copy(stress, std::path::Path::new(stress), 0o755).unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line.split_whitespace().find(|word| word.starts_with('/'));
        if let Some(path) = path {
            let real = std::fs::canonicalize(path).unwrap();
            context = context.copy(path, &real, 0o755).unwrap();
        }
    }
    context
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_are_contained() {
    let Some(env) = TestEnv::start("attacks_are_contained").await else { return };
    if std::process::Command::new("stress-ng").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "stress-ng is required under CI");
        eprintln!("attacks_are_contained: skipped: stress-ng is not installed (apt-get install stress-ng)");
        return;
    }
    let docker = env.driver.client().clone();
    let instance = env.driver.options().instance.clone();
    let image = format!("portcullis-test-{}/attack:1", env.run_id);
    build_image(&env.driver, &image, Role::App, &attack_image_context()).await.expect("build attack image");

    env.start_gateway_and_proxy().await;
    let service = PlatformContainerSpec {
        role: Some(Role::Service),
        service_name: Some("records".into()),
        image: env.busybox_image.clone(),
        command: common::httpd(8080),
        env: Vec::new(),
        ..Default::default()
    };
    let service_id = env.driver.start_platform_container(&service).await.unwrap();
    let service_ip =
        docker.inspect_container(&service_id, None).await.unwrap().network_settings.unwrap().networks.unwrap();
    let service_ip = service_ip.into_values().next().unwrap().ip_address.unwrap();

    let neighbour = env.deploy("neighbour", &[], &[]).await;
    let neighbour_addresses = env.driver.app_addresses("neighbour").await.unwrap().unwrap();
    let neighbour_url = format!("http://{}:{APP_PORT}/", neighbour_addresses.app);
    let neighbour_pid =
        docker.inspect_container(&neighbour.container_id, None).await.unwrap().state.unwrap().pid.unwrap();
    let gateway = labels::platform_container_name(&instance, Role::Gateway);
    let gateway_pid = docker.inspect_container(&gateway, None).await.unwrap().state.unwrap().pid.unwrap();

    let baseline = probe(gateway_pid, &neighbour_url, Duration::from_secs(3)).await;
    assert!(baseline.success_rate() >= 0.99, "baseline: neighbour answers {}/{}", baseline.ok, baseline.total);
    let baseline_p99 = baseline.p99();

    let host_listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_listener.local_addr().unwrap().port();

    let mut outcomes = Vec::new();
    let mut attack_index = 0;
    let mut attacker = async |command: Vec<String>, resource: bool| {
        attack_index += 1;
        let app_id = format!("attacker-{attack_index}");
        let app = env.deploy_image(&app_id, &image, &["sleep", "3600"], &[]).await;
        let addresses = env.driver.app_addresses(&app_id).await.unwrap().unwrap();
        let command: Vec<String> =
            command.iter().map(|part| part.replace("{gateway}", &addresses.gateway.to_string())).collect();
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let limit = Duration::from_secs(if resource { ATTACK_SECONDS + 4 } else { 15 });
        let window = Duration::from_secs(if resource { ATTACK_SECONDS } else { 2 });

        let sampler = async {
            tokio::time::sleep(Duration::from_secs(ATTACK_SECONDS / 2)).await;
            env.driver.app_stats(&app_id).await.ok()
        };
        let (output, neighbour_probe, stats) = tokio::join!(
            exec(&docker, &app.container_id, &args, limit),
            probe(gateway_pid, &neighbour_url, window),
            async { if resource { sampler.await } else { None } }
        );
        let host_up = std::process::Command::new("true").status().is_ok_and(|s| s.success())
            && docker.ping().await.is_ok()
            && docker.inspect_container(&gateway, None).await.unwrap().state.unwrap().running == Some(true);
        (app_id, addresses, output, neighbour_probe, stats, host_up)
    };

    // Resource exhaustion.
    let resource_attacks: [(&str, &str, Vec<&str>); 5] = [
        (
            "fork bomb",
            "stress-ng --fork 8 (forks until the pids limit)",
            vec!["stress-ng", "--fork", "8", "--temp-path", "/tmp", "--timeout", "6s"],
        ),
        (
            "memory bomb",
            "stress-ng --vm 2 --vm-bytes 256M (4x the 64 MiB limit)",
            vec!["stress-ng", "--vm", "2", "--vm-bytes", "256M", "--vm-keep", "--temp-path", "/tmp", "--timeout", "6s"],
        ),
        (
            "CPU hog",
            "stress-ng --cpu 4 (8x the 0.5-core quota)",
            vec!["stress-ng", "--cpu", "4", "--temp-path", "/tmp", "--timeout", "6s"],
        ),
        (
            "pending-signal exhaustion",
            "stress-ng --sigq 4 (queued signals), then read RLIMIT_SIGPENDING",
            vec![
                "sh",
                "-c",
                "stress-ng --sigq 4 --temp-path /tmp --timeout 6s; grep 'Max pending signals' /proc/self/limits",
            ],
        ),
        (
            "shell fork bomb",
            "b(){ b|b& }; b in busybox sh",
            vec!["timeout", "-s", "KILL", "6", "sh", "-c", "b(){ b|b& }; b; sleep 6"],
        ),
    ];
    for (name, tried, command) in resource_attacks {
        let command = command.into_iter().map(str::to_owned).collect();
        let (app_id, _, output, neighbour_probe, stats, host_up) = attacker(command, true).await;
        let stats = stats.expect("statistics during the attack");
        let (contained, result) = match name {
            "memory bomb" => (
                stats.memory_bytes <= 64 * 1024 * 1024,
                format!(
                    "memory {:.1} MiB of 64 MiB; workers OOM-killed and restarted",
                    stats.memory_bytes as f64 / 1048576.0
                ),
            ),
            "CPU hog" => (stats.cpu_percent <= 60.0, format!("CPU {:.0}% of one core (quota 50%)", stats.cpu_percent)),
            "pending-signal exhaustion" => (
                output.output.contains("Max pending signals       32")
                    || output.output.contains("Max pending signals 32"),
                format!(
                    "RLIMIT_SIGPENDING 32 in force: {}",
                    output.output.lines().last().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ")
                ),
            ),
            _ => (stats.pids <= 64, format!("{} processes at the sample, pids limit 64", stats.pids)),
        };
        env.driver.remove_app(&app_id).await.unwrap();
        outcomes.push(Outcome {
            name,
            tried: tried.to_owned(),
            result,
            contained: contained && host_up,
            success_rate: neighbour_probe.success_rate(),
            p99_ratio: neighbour_probe.p99() / baseline_p99,
        });
    }

    // Filesystem, network and privilege attacks: each must fail.
    let uid_check = "stat -c %a /bin/busybox-suid; /bin/busybox-suid id -u";
    let attacks: Vec<(&str, String, Vec<String>)> = vec![
        (
            "tmpfs fill",
            "dd 64 MiB into /tmp (8 MiB tmpfs), write to /, run a binary from /tmp".into(),
            sh(
                "dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1; echo size=$(stat -c %s /tmp/fill); cp /bin/busybox /tmp/x && /tmp/x true; echo exec=$?; touch /root-file; echo root=$?",
            ),
        ),
        (
            "ARP spoofing",
            "arping -U -s <gateway> (gratuitous ARP claiming the gateway's address)".into(),
            sh("arping -U -c 2 -I eth0 -s {gateway} {gateway} 2>&1; echo rc=$?"),
        ),
        ("connect to another app", format!("wget {neighbour_url} (neighbour on its own network)"), vec![]),
        ("connect to a service", format!("wget http://{service_ip}:8080/ (service network)"), vec![]),
        (
            "connect to the host",
            "wget to the app network's bridge address and the outbound network's gateway, host listener on 0.0.0.0"
                .into(),
            vec![],
        ),
        ("setuid binary", "run a setuid-root busybox copy: id -u".into(), sh(uid_check)),
        ("mount", "mount -t tmpfs none /tmp".into(), sh("mount -t tmpfs none /tmp 2>&1; echo rc=$?")),
        (
            "raw socket",
            "stress-ng --rawsock (SOCK_RAW) and --rawpkt (AF_PACKET)".into(),
            sh(
                "stress-ng --rawsock 1 --rawpkt 1 --temp-path /tmp --timeout 2s 2>&1 | grep -i -E 'raw|not permitted|skipp'; echo done",
            ),
        ),
        (
            "ptrace a neighbour",
            "kill -0 and read /proc/<pid>/status of the neighbour's host pid".into(),
            sh(&format!(
                "kill -0 {neighbour_pid} 2>&1; echo kill=$?; cat /proc/{neighbour_pid}/status 2>&1 | head -1; ls /proc | grep -c '^[0-9]'"
            )),
        ),
        (
            "write /proc/sys and /sys",
            "echo 1 > /proc/sys/kernel/sysrq; echo x > /sys/kernel/uevent_helper".into(),
            sh("echo 1 > /proc/sys/kernel/sysrq; echo proc=$?; echo x > /sys/kernel/uevent_helper; echo sys=$?"),
        ),
        (
            "load a kernel module",
            "insmod /tmp/m.ko".into(),
            sh("echo x > /tmp/m.ko; insmod /tmp/m.ko 2>&1; echo rc=$?"),
        ),
    ];
    for (name, tried, command) in attacks {
        let network_attack = command.is_empty();
        let command = if network_attack { sh("true") } else { command };
        let (app_id, addresses, output, neighbour_probe, _, host_up) = attacker(command, false).await;
        let ExecOutput { output, .. } = output;
        let app = env.driver.find_app(&app_id).await.unwrap().unwrap();
        let uid = env.store.existing_app_uid(&app_id).await.unwrap().unwrap();
        let (contained, result) = match name {
            "tmpfs fill" => {
                let size = output
                    .lines()
                    .find_map(|l| l.strip_prefix("size="))
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(u64::MAX);
                (
                    size <= 8 * 1024 * 1024 && !output.contains("exec=0") && !output.contains("root=0"),
                    format!(
                        "/tmp stopped at {:.1} MiB (No space left on device); exec from /tmp and writes to / refused",
                        size as f64 / 1048576.0
                    ),
                )
            }
            "ARP spoofing" => (!output.contains("rc=0"), first_error(&output)),
            "connect to another app" => {
                let reached = can_fetch(&docker, &app.container_id, &neighbour_url).await;
                (!reached, if reached { "connected".into() } else { "no route: timed out".into() })
            }
            "connect to a service" => {
                let reached = can_fetch(&docker, &app.container_id, &format!("http://{service_ip}:8080/")).await;
                (!reached, if reached { "connected".into() } else { "no route: timed out".into() })
            }
            "connect to the host" => {
                let bridge = std::net::Ipv4Addr::from(u32::from(addresses.subnet.network()) + 1);
                let out_gateway = std::net::Ipv4Addr::from(u32::from(env.driver.out_subnet().network()) + 1);
                let a = can_fetch(&docker, &app.container_id, &format!("http://{bridge}:{host_port}/")).await;
                let b = can_fetch(&docker, &app.container_id, &format!("http://{out_gateway}:{host_port}/")).await;
                (!a && !b, "no address of the host is reachable: the bridge has no IPv4 address".into())
            }
            "setuid binary" => {
                let lines: Vec<&str> = output.lines().collect();
                (
                    lines.first() == Some(&"4755") && lines.get(1) == Some(&uid.to_string().as_str()),
                    format!(
                        "mode {} but id -u = {} (no-new-privileges)",
                        lines.first().unwrap_or(&"?"),
                        lines.get(1).unwrap_or(&"?")
                    ),
                )
            }
            "mount" | "load a kernel module" => (!output.contains("rc=0"), first_error(&output)),
            "raw socket" => (
                !output.contains("passed: 2") && !output.contains("successful run completed"),
                output.lines().filter(|l| !l.starts_with("done")).map(str::trim).collect::<Vec<_>>().join("; "),
            ),
            "ptrace a neighbour" => (
                output.contains("kill=1") && !output.contains("Name:"),
                format!(
                    "pid {neighbour_pid} does not exist in the app's PID namespace ({} pids visible)",
                    output.lines().last().unwrap_or("?")
                ),
            ),
            "write /proc/sys and /sys" => {
                (!output.contains("proc=0") && !output.contains("sys=0"), "both refused: read-only file system".into())
            }
            _ => unreachable!(),
        };
        env.driver.remove_app(&app_id).await.unwrap();
        outcomes.push(Outcome {
            name,
            tried,
            result,
            contained: contained && host_up,
            success_rate: neighbour_probe.success_rate(),
            p99_ratio: neighbour_probe.p99() / baseline_p99,
        });
    }

    write_report(&outcomes, baseline_p99);
    for outcome in &outcomes {
        assert!(outcome.contained, "{}: not contained: {}", outcome.name, outcome.result);
        assert!(
            outcome.success_rate >= 0.9,
            "{}: neighbour answered only {:.0}%",
            outcome.name,
            outcome.success_rate * 100.0
        );
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// The first line of `output` that is not a status marker, as the result.
fn first_error(output: &str) -> String {
    output.lines().find(|l| !l.starts_with("rc=") && !l.trim().is_empty()).unwrap_or("refused").trim().to_owned()
}

fn write_report(outcomes: &[Outcome], baseline_p99: f64) {
    let Some(path) = std::env::var_os("PORTCULLIS_ATTACK_REPORT") else { return };
    let mut text = String::new();
    writeln!(text, "# Attack suite\n").unwrap();
    writeln!(text, "Written by `scripts/attack-suite` from the test `attacks_are_contained` in").unwrap();
    writeln!(text, "crates/runtime/tests/attacks.rs. Each attack runs in a freshly deployed app container with the")
        .unwrap();
    writeln!(text, "test hardening profile (64 MiB, 0.5 CPU, 64 pids, nproc 64, sigpending 32, 8 MiB /tmp, every")
        .unwrap();
    writeln!(text, "capability dropped, no-new-privileges, read-only root, Docker's default seccomp profile). A")
        .unwrap();
    writeln!(text, "well-behaved neighbour app (busybox httpd) is probed from the gateway stand-in's network").unwrap();
    writeln!(text, "namespace with curl during each attack. Neighbour p99 ratio is the p99 latency during the attack")
        .unwrap();
    writeln!(text, "divided by the baseline p99 ({:.2} ms) measured before the first attack.\n", baseline_p99 * 1000.0)
        .unwrap();
    writeln!(text, "| attack | what was tried | result | contained | neighbour success | neighbour p99 ratio |")
        .unwrap();
    writeln!(text, "| --- | --- | --- | --- | --- | --- |").unwrap();
    for o in outcomes {
        writeln!(
            text,
            "| {} | {} | {} | {} | {:.1}% | {:.2} |",
            o.name,
            o.tried.replace('|', "\\|"),
            o.result.replace('|', "\\|"),
            if o.contained { "yes" } else { "NO" },
            o.success_rate * 100.0,
            o.p99_ratio
        )
        .unwrap();
    }
    std::fs::write(path, text).unwrap();
}
