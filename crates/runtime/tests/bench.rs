//! Deploy time of a hardened app against a plain `docker run` of the same
//! image, in the same run. Ignored by default; scripts/bench-runtime runs it
//! and records the figures.

mod common;

use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::CreateContainerOptions;
use common::{APP_PORT, TEST_LABEL, TestEnv};

/// Rounds of each kind of start.
const ROUNDS: usize = 5;

/// Polls `url` with curl (inside the network namespace of `pid` when given)
/// every 10 ms until it answers 200, for at most 10 s.
async fn wait_answer(pid: Option<i64>, url: &str) -> Duration {
    let start = Instant::now();
    for _ in 0..1000 {
        let mut command = match pid {
            Some(pid) => {
                let mut c = tokio::process::Command::new("nsenter");
                c.args(["-t", &pid.to_string(), "-n", "curl"]);
                c
            }
            None => tokio::process::Command::new("curl"),
        };
        let output = command
            .args(["-s", "-o", "/dev/null", "--max-time", "1", "-w", "%{http_code}", url])
            .output()
            .await
            .unwrap();
        if output.stdout == b"200" {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{url} did not answer within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by scripts/bench-runtime"]
async fn deploy_time_against_docker_run() {
    let Some(env) = TestEnv::start("deploy_time_against_docker_run").await else { return };
    env.start_gateway_and_proxy().await;
    let docker = env.driver.client().clone();
    let gateway = portcullis_runtime::labels::platform_container_name(
        &env.driver.options().instance,
        portcullis_runtime::labels::Role::Gateway,
    );
    let gateway_pid = docker.inspect_container(&gateway, None).await.unwrap().state.unwrap().pid.unwrap();

    // A plain bridge network of the test's own, so the host reaches the
    // plain containers directly.
    let plain_network = format!("pc-t{}-plain", env.run_id);
    let pool = env.driver.options().subnet_pool;
    let plain_subnet = format!("{}/24", std::net::Ipv4Addr::from(u32::from(pool.network()) + 3 * 256));
    docker
        .create_network(NetworkCreateRequest {
            name: plain_network.clone(),
            ipam: Some(bollard::models::Ipam {
                config: Some(vec![bollard::models::IpamConfig { subnet: Some(plain_subnet), ..Default::default() }]),
                ..Default::default()
            }),
            labels: Some([(TEST_LABEL.to_owned(), env.run_id.clone())].into()),
            ..Default::default()
        })
        .await
        .unwrap();

    let mut hardened = Vec::new();
    let mut plain = Vec::new();
    for round in 0..ROUNDS {
        let app_id = format!("bench-{round}");
        let start = Instant::now();
        env.deploy(&app_id, &[], &[]).await;
        let addresses = env.driver.app_addresses(&app_id).await.unwrap().unwrap();
        wait_answer(Some(gateway_pid), &format!("http://{}:{APP_PORT}/", addresses.app)).await;
        hardened.push(start.elapsed().as_secs_f64());

        let start = Instant::now();
        let name = format!("pc-t{}-plain-{round}", env.run_id);
        let body = ContainerCreateBody {
            image: Some(env.busybox_image.clone()),
            cmd: Some(common::httpd(APP_PORT)),
            labels: Some([(TEST_LABEL.to_owned(), env.run_id.clone())].into()),
            host_config: Some(HostConfig { network_mode: Some(plain_network.clone()), ..Default::default() }),
            ..Default::default()
        };
        let created = docker
            .create_container(Some(CreateContainerOptions { name: Some(name), ..Default::default() }), body)
            .await
            .unwrap();
        docker.start_container(&created.id, None).await.unwrap();
        let ip = docker.inspect_container(&created.id, None).await.unwrap().network_settings.unwrap().networks.unwrap()
            [&plain_network]
            .ip_address
            .clone()
            .unwrap();
        wait_answer(None, &format!("http://{ip}:{APP_PORT}/")).await;
        plain.push(start.elapsed().as_secs_f64());
    }

    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let hardened_median = median(&mut hardened);
    let plain_median = median(&mut plain);
    let ratio = hardened_median / plain_median;
    println!(
        "BENCH hardened_median_ms={:.0} plain_median_ms={:.0} ratio={ratio:.2} rounds={ROUNDS}",
        hardened_median * 1000.0,
        plain_median * 1000.0
    );
    println!(
        "BENCH hardened_ms={:?} plain_ms={:?}",
        hardened.iter().map(|s| (s * 1000.0).round()).collect::<Vec<_>>(),
        plain.iter().map(|s| (s * 1000.0).round()).collect::<Vec<_>>()
    );
    docker.remove_network(&plain_network).await.ok();
}
