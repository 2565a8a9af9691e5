//! The Docker driver against the real Engine: the effective configuration
//! of a deployed app, the network topology, ban enforcement, re-adoption and
//! the image builder.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{APP_PORT, TestEnv, can_fetch, env_map, exec};
use portcullis_guard::DecisionSet;
use portcullis_runtime::docker::{DockerDriver, build_image, portcullis_image_context};
use portcullis_runtime::labels::{self, Role};
use portcullis_runtime::profile::{HardeningProfile, Relaxable, Relaxation};
use portcullis_store::{DecisionKind, DecisionOrigin, DecisionRecord, NewDecision};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployed_container_matches_profile() {
    let Some(env) = TestEnv::start("deployed_container_matches_profile").await else { return };
    let app = env.deploy("profile-app", &[], &[]).await;
    let inspect = env.driver.inspect_app("profile-app").await.unwrap();
    let host = inspect.host_config.clone().unwrap();
    let config = inspect.config.clone().unwrap();
    let uid = env.store.existing_app_uid("profile-app").await.unwrap().unwrap();
    let profile = HardeningProfile::new("profile-app", &env.hardening, uid, env.driver.apparmor());

    // Identity: a non-root UID and GID from uid_base, unique to the app.
    assert!(uid >= env.hardening.uid_base);
    assert_eq!(config.user.as_deref(), Some(format!("{uid}:{uid}").as_str()));
    let id = exec(env.driver.client(), &app.container_id, &["id"], Duration::from_secs(5)).await;
    assert!(id.output.contains(&format!("uid={uid} gid={uid}")), "{}", id.output);

    // Resources.
    assert_eq!(host.memory, Some(64 * 1024 * 1024));
    assert_eq!(host.memory_swap, Some(64 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.cpu_shares, Some(512));
    assert_eq!(host.pids_limit, Some(64));
    let mut ulimits: Vec<(String, i64, i64)> = host
        .ulimits
        .clone()
        .unwrap()
        .into_iter()
        .map(|u| (u.name.unwrap(), u.soft.unwrap(), u.hard.unwrap()))
        .collect();
    ulimits.sort();
    assert_eq!(ulimits, [("nofile".into(), 256, 256), ("nproc".into(), 64, 64), ("sigpending".into(), 32, 32)]);

    // Privileges.
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(host.cap_add.clone().unwrap_or_default(), Vec::<String>::new());
    assert_eq!(host.privileged, Some(false));
    let security_opt = host.security_opt.clone().unwrap();
    assert_eq!(security_opt, profile.security_opt());
    assert!(security_opt.contains(&"no-new-privileges:true".to_owned()));
    assert!(!security_opt.iter().any(|o| o.contains("seccomp")), "Docker's default seccomp profile applies");
    if env.driver.apparmor() {
        assert_eq!(inspect.app_armor_profile.as_deref(), Some("docker-default"));
    }

    // Filesystem.
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.tmpfs.clone().unwrap()["/tmp"], "rw,noexec,nosuid,nodev,size=8m");
    let mounts = inspect.mounts.clone().unwrap();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert_eq!(mounts[0].destination.as_deref(), Some("/run/portcullis"));
    assert_eq!(mounts[0].rw, Some(false));
    assert_eq!(host.binds.clone().unwrap_or_default(), Vec::<String>::new());
    assert_eq!(host.devices.clone().unwrap_or_default().len(), 0);
    let key =
        exec(env.driver.client(), &app.container_id, &["cat", "/run/portcullis/key.pem"], Duration::from_secs(5)).await;
    assert!(key.output.contains("PRIVATE KEY"), "the app can read its key");
    let write = exec(env.driver.client(), &app.container_id, &["touch", "/written"], Duration::from_secs(5)).await;
    assert_ne!(write.code, 0, "root filesystem must be read-only");

    // Namespaces.
    let network = labels::app_network_name(&env.driver.options().instance, "profile-app");
    assert_eq!(host.network_mode.as_deref(), Some(network.as_str()));
    assert_eq!(host.pid_mode.clone().unwrap_or_default(), "");
    assert_eq!(host.ipc_mode.as_deref(), Some("private"));
    assert_eq!(host.uts_mode.clone().unwrap_or_default(), "");
    assert_eq!(host.userns_mode.clone().unwrap_or_default(), "");
    assert_eq!(host.cgroup_parent.clone().unwrap_or_default(), "");

    // Logs and restarts.
    let log = host.log_config.clone().unwrap();
    assert_eq!(log.typ.as_deref(), Some("json-file"));
    assert_eq!(log.config.as_ref().unwrap()["max-size"], "1m");
    assert_eq!(log.config.as_ref().unwrap()["max-file"], "2");
    let restart = host.restart_policy.clone().unwrap();
    assert_eq!(restart.name.map(|n| n.to_string()).as_deref(), Some("on-failure"));
    assert_eq!(restart.maximum_retry_count, Some(2));

    // Environment: gateway, credentials and proxy with the app's secret.
    let environment = env_map(&config.env.clone().unwrap());
    let addresses = env.driver.app_addresses("profile-app").await.unwrap().unwrap();
    assert_eq!(environment["PORTCULLIS_GATEWAY"], format!("https://{}:8443", addresses.gateway));
    assert_eq!(environment["HTTPS_PROXY"], format!("http://profile-app:test-secret@{}:3128", addresses.egress));
    assert_eq!(environment["PORTCULLIS_CA_BUNDLE"], "/run/portcullis/ca-bundle.pem");

    // Labels.
    let container_labels = config.labels.clone().unwrap();
    assert_eq!(container_labels[labels::MANAGED], "true");
    assert_eq!(container_labels[labels::APP], "profile-app");
    assert_eq!(container_labels[labels::INSTANCE], env.driver.options().instance);

    // CIS Docker Benchmark section 5 rules, as docker-bench-security
    // evaluates them (tests/data/cis-docker-bench-section5.tsv).
    let cis = include_str!("data/cis-docker-bench-section5.tsv");
    let mounts_text = format!("{mounts:?}");
    for line in cis.lines().filter(|l| !l.starts_with('#')) {
        let check = line.split('\t').next().unwrap();
        let pass = match check {
            "5.1" => {
                !env.driver.apparmor()
                    || inspect.app_armor_profile.as_deref().is_some_and(|p| !p.is_empty() && p != "unconfined")
            }
            "5.2" => !security_opt.is_empty(),
            "5.3" => host.cap_add.clone().unwrap_or_default().is_empty(),
            "5.4" => host.privileged != Some(true),
            "5.5" => mounts.iter().all(|m| m.rw == Some(false)),
            "5.9" => host.network_mode.as_deref() != Some("host"),
            "5.10" => host.memory.unwrap_or(0) != 0,
            "5.11" => host.cpu_shares.unwrap_or(0) != 0,
            "5.12" => host.readonly_rootfs == Some(true),
            // The platform's default is restart_max = 3 (configurable);
            // docker-bench-security wants exactly 5.
            "5.14" => host.restart_policy.as_ref().and_then(|p| p.maximum_retry_count) == Some(2),
            "5.15" => host.pid_mode.as_deref() != Some("host"),
            "5.16" => host.ipc_mode.as_deref() != Some("host"),
            "5.17" => host.devices.clone().unwrap_or_default().is_empty(),
            "5.18" => host.ulimits.as_ref().is_some_and(|u| !u.is_empty()),
            "5.19" => mounts.iter().all(|m| !m.propagation.as_deref().unwrap_or("").contains("shared")),
            "5.20" => host.uts_mode.as_deref() != Some("host"),
            "5.21" => {
                !security_opt.iter().any(|o| o.contains("seccomp:unconfined") || o.contains("seccomp=unconfined"))
            }
            "5.24" => host.cgroup_parent.clone().unwrap_or_default().is_empty(),
            "5.25" => security_opt.iter().any(|o| o.contains("no-new-privileges")),
            "5.28" => !matches!(host.pids_limit, None | Some(0) | Some(-1)),
            "5.30" => !host.userns_mode.clone().unwrap_or_default().to_lowercase().contains("host"),
            "5.31" => !mounts_text.contains("docker.sock"),
            other => panic!("CIS check {other} has no rule in this test"),
        };
        assert!(pass, "CIS Docker Benchmark check {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_reach_only_gateway_and_proxy() {
    let Some(env) = TestEnv::start("apps_reach_only_gateway_and_proxy").await else { return };
    env.start_gateway_and_proxy().await;
    let service = portcullis_runtime::docker::PlatformContainerSpec {
        role: Some(Role::Service),
        service_name: Some("weather".into()),
        image: env.busybox_image.clone(),
        command: common::httpd(8080),
        env: Vec::new(),
        ..Default::default()
    };
    let service_id = env.driver.start_platform_container(&service).await.unwrap();
    let alpha = env.deploy("alpha", &[], &[]).await;
    let _beta = env.deploy("beta", &[], &[]).await;

    let docker = env.driver.client();
    let alpha_net = env.driver.app_addresses("alpha").await.unwrap().unwrap();
    let beta_net = env.driver.app_addresses("beta").await.unwrap().unwrap();
    assert_ne!(alpha_net.subnet, beta_net.subnet);

    // A listener on every host address, to show the host is not reachable.
    let host_listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_listener.local_addr().unwrap().port();
    let service_ip = docker
        .inspect_container(&service_id, None)
        .await
        .unwrap()
        .network_settings
        .unwrap()
        .networks
        .unwrap()
        .into_values()
        .next()
        .unwrap()
        .ip_address
        .unwrap();

    assert!(can_fetch(docker, &alpha.container_id, &format!("http://{}:8443/", alpha_net.gateway)).await, "gateway");
    assert!(
        can_fetch(docker, &alpha.container_id, &format!("http://{}:3128/", alpha_net.egress)).await,
        "egress proxy"
    );
    assert!(
        !can_fetch(docker, &alpha.container_id, &format!("http://{}:{APP_PORT}/", beta_net.app)).await,
        "other app"
    );
    assert!(
        !can_fetch(docker, &alpha.container_id, &format!("http://{}:8443/", beta_net.gateway)).await,
        "gateway on other app's network"
    );
    assert!(!can_fetch(docker, &alpha.container_id, &format!("http://{service_ip}:8080/")).await, "service directly");
    let bridge = std::net::Ipv4Addr::from(u32::from(alpha_net.subnet.network()) + 1);
    assert!(!can_fetch(docker, &alpha.container_id, &format!("http://{bridge}:{host_port}/")).await, "host via bridge");
    let out_host = std::net::Ipv4Addr::from(u32::from(env.driver.out_subnet().network()) + 1);
    assert!(
        !can_fetch(docker, &alpha.container_id, &format!("http://{out_host}:{host_port}/")).await,
        "host via out network"
    );

    // The gateway reaches the app, and the networks are internal.
    let gateway = labels::platform_container_name(&env.driver.options().instance, Role::Gateway);
    assert!(can_fetch(docker, &gateway, &format!("http://{}:{APP_PORT}/", alpha_net.app)).await, "gateway to app");
    let network =
        docker.inspect_network(&labels::app_network_name(&env.driver.options().instance, "alpha"), None).await.unwrap();
    assert_eq!(network.internal, Some(true));
    assert_eq!(network.options.unwrap()["com.docker.network.bridge.inhibit_ipv4"], "true");
    let out = docker.inspect_network(&labels::out_network_name(&env.driver.options().instance), None).await.unwrap();
    assert_eq!(out.internal, Some(false));
    let out_members: Vec<String> = out.containers.unwrap().into_values().filter_map(|c| c.name).collect();
    assert_eq!(out_members, [labels::platform_container_name(&env.driver.options().instance, Role::Egress)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_disconnects_and_unban_reconnects() {
    let Some(env) = TestEnv::start("ban_disconnects_and_unban_reconnects").await else { return };
    env.start_gateway_and_proxy().await;
    let bad = env.deploy("bad-app", &[], &[]).await;
    let good = env.deploy("good-app", &[], &[]).await;
    let docker = env.driver.client();
    let bad_gateway = format!("http://{}:8443/", env.driver.app_addresses("bad-app").await.unwrap().unwrap().gateway);
    let good_gateway = format!("http://{}:8443/", env.driver.app_addresses("good-app").await.unwrap().unwrap().gateway);

    let (sender, receiver) = tokio::sync::watch::channel(Arc::new(DecisionSet::default()));
    let task = tokio::spawn(portcullis_runtime::enforce::follow_decisions(env.driver.clone(), receiver));
    let now = portcullis_store::now_ms();
    let ban = DecisionRecord {
        id: 1,
        decision: NewDecision {
            app_id: "bad-app".into(),
            kind: DecisionKind::Ban,
            reason: "test ban".into(),
            policy: None,
            evidence: "{}".into(),
            origin: DecisionOrigin::Operator,
            simulated: false,
            started_at: now,
            expires_at: Some(now + 60_000),
        },
        lifted_at: None,
        lifted_by: None,
    };
    sender.send(Arc::new(DecisionSet::from_records([ban], now))).unwrap();
    wait_for(|| async { !env.driver.app_connected("bad-app").await.unwrap() }).await;
    assert!(!can_fetch(docker, &bad.container_id, &bad_gateway).await, "banned app reaches nothing");
    assert!(can_fetch(docker, &good.container_id, &good_gateway).await, "other app unaffected");
    let state = docker.inspect_container(&bad.container_id, None).await.unwrap().state.unwrap();
    assert_eq!(state.running, Some(true), "a ban disconnects, it does not stop");

    sender.send(Arc::new(DecisionSet::default())).unwrap();
    wait_for(|| async { env.driver.app_connected("bad-app").await.unwrap() }).await;
    assert!(can_fetch(docker, &bad.container_id, &bad_gateway).await, "unbanned app reaches the gateway again");

    drop(sender);
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_platform_adopts_its_apps() {
    let Some(env) = TestEnv::start("restarted_platform_adopts_its_apps").await else { return };
    let first = env.deploy("keep-app", &[], &[]).await;
    let second = env.deploy("other-app", &[], &[]).await;

    let restarted = DockerDriver::connect(env.driver.options().clone()).await.unwrap();
    let apps = restarted.list_apps().await.unwrap();
    let ids: Vec<(&str, &str)> = apps.iter().map(|a| (a.app_id.as_str(), a.container_id.as_str())).collect();
    assert_eq!(ids, [("keep-app", first.container_id.as_str()), ("other-app", second.container_id.as_str())]);
    assert!(apps.iter().all(|a| a.state == "running"), "{apps:?}");

    let mut other_instance = env.driver.options().clone();
    other_instance.instance = format!("{}x", other_instance.instance);
    let stranger = DockerDriver::connect(other_instance).await.unwrap();
    assert!(stranger.list_apps().await.unwrap().is_empty(), "another instance sees none of them");

    let first_uid = env.store.existing_app_uid("keep-app").await.unwrap().unwrap();
    let second_uid = env.store.existing_app_uid("other-app").await.unwrap().unwrap();
    assert_ne!(first_uid, second_uid);
    assert!(env.driver.remove_app("keep-app").await.unwrap());
    let third = env.deploy("third-app", &[], &[]).await;
    let third_uid = env.store.existing_app_uid("third-app").await.unwrap().unwrap();
    assert!(third_uid > second_uid, "a removed app's UID is not reused");
    assert!(env.driver.find_app("keep-app").await.unwrap().is_none());

    env.driver.stop_app("other-app").await.unwrap();
    let stopped = env.driver.find_app("other-app").await.unwrap().unwrap();
    assert_eq!(stopped.state, "exited");
    let stats = env.driver.app_stats("third-app").await.unwrap();
    assert_eq!(stats.memory_limit_bytes, 64 * 1024 * 1024);
    assert!(stats.pids >= 1);
    assert_eq!(third.app_id, "third-app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_seccomp_and_relaxations() {
    let Some(mut env) = TestEnv::start("strict_seccomp_and_relaxations").await else { return };
    env.hardening.seccomp = portcullis_config::Seccomp::Strict;
    let strict = env.deploy("strict-app", &[], &[]).await;
    env.start_gateway_and_proxy().await;
    let docker = env.driver.client();
    let addresses = env.driver.app_addresses("strict-app").await.unwrap().unwrap();
    let gateway = labels::platform_container_name(&env.driver.options().instance, Role::Gateway);
    assert!(can_fetch(docker, &gateway, &format!("http://{}:{APP_PORT}/", addresses.app)).await, "strict app serves");
    let unshare = exec(docker, &strict.container_id, &["unshare", "-U", "true"], Duration::from_secs(5)).await;
    assert_ne!(unshare.code, 0, "unshare refused: {}", unshare.output);
    let host = env.driver.inspect_app("strict-app").await.unwrap().host_config.unwrap();
    assert!(host.security_opt.unwrap().iter().any(|o| o.starts_with("seccomp={")));

    let relaxed = env
        .deploy(
            "relaxed-app",
            &[],
            &[Relaxation { setting: Relaxable::WritableRoot, reason: "writes a cache under /var".into() }],
        )
        .await;
    let host = env.driver.inspect_app("relaxed-app").await.unwrap().host_config.unwrap();
    assert_eq!(host.readonly_rootfs, Some(false));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]), "other settings stay");
    let write = exec(
        docker,
        &relaxed.container_id,
        &["sh", "-c", "mkdir -p /var && echo x > /var/cache"],
        Duration::from_secs(5),
    )
    .await;
    assert_ne!(write.code, 0, "a non-root app still cannot write root-owned directories: {}", write.output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portcullis_image_builds_from_scratch() {
    let Some(env) = TestEnv::start("portcullis_image_builds_from_scratch").await else { return };
    // Debian's static busybox stands in for the static Portcullis binary.
    let context = portcullis_image_context(std::path::Path::new("/bin/busybox")).unwrap();
    let tag = format!("portcullis-test-{}/portcullis:1", env.run_id);
    build_image(&env.driver, &tag, Role::Gateway, &context).await.unwrap();
    let image = env.driver.client().inspect_image(&tag).await.unwrap();
    let config = image.config.unwrap();
    assert_eq!(config.entrypoint, Some(vec!["/portcullis".to_owned()]));
    assert_eq!(config.user.as_deref(), Some("65534:65534"));
    let image_labels = config.labels.unwrap();
    assert_eq!(image_labels[labels::MANAGED], "true");
    assert_eq!(image_labels[labels::ROLE], "gateway");
    assert_eq!(image.root_fs.unwrap().layers.unwrap().len(), 1, "one layer: nothing from a base image");
}

/// Polls `condition` every 100 ms for at most 10 s.
async fn wait_for<F, Fut>(condition: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("condition not met within 10 s");
}
