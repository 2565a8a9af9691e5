//! A misbehaving example app. In order, it:
//!
//! 1. fetches a weather:read token (granted) and requests a records token
//!    (not granted: the token service refuses);
//! 2. calls the records service `NO_GRANT_CALLS` times (default 10) with its
//!    weather token, which the gateway refuses as a token for another service;
//! 3. floods the gateway with `FLOOD_REQUESTS` requests (default 300), most
//!    of which the gateway's rate limit refuses;
//! 4. tries `FORBIDDEN_URL` through the egress proxy, which refuses it and
//!    reports the violation to the guard;
//! 5. calls the weather service every 500 ms, at most 40 times, until the
//!    gateway answers that it is banned.
//!
//! Every loop is bounded in count and time. It prints one JSON line per
//! request outcome; `expected` says whether the platform answered as a
//! secure platform should.

use std::time::Duration;

use bytes::Bytes;
use portcullis_examples::{AppEnv, Bound, HttpsClient, ProxyClient, env_u64, report, request_token};

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a Tokio runtime");
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("rogue-app: {message}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run() -> Result<(), String> {
    let env = AppEnv::from_env()?;
    let forbidden = std::env::var("FORBIDDEN_URL").map_err(|_| "the environment variable FORBIDDEN_URL is not set")?;
    let forbidden = url::Url::parse(&forbidden).map_err(|e| format!("FORBIDDEN_URL is not a URL: {e}"))?;
    let tls = env.tls()?;
    let mut token_client = HttpsClient::new(&env.token_url, tls.clone());
    let mut gateway = HttpsClient::new(&env.gateway, tls);
    let proxy = ProxyClient::new(&env.proxy)?;
    let token_path = env.token_url.path().to_owned();

    // 1. Tokens.
    let Some(weather_token) = request_token(&env.app_id, &mut token_client, &token_path, "weather:read", 200).await
    else {
        return Err("no weather token; nothing else to try".into());
    };
    request_token(&env.app_id, &mut token_client, &token_path, "records:write", 400).await;

    let bearer = [("authorization", format!("Bearer {weather_token}"))];

    // 2. A service without a grant.
    let mut bound = Bound::new(env_u64("NO_GRANT_CALLS", 10), Duration::from_secs(30));
    while bound.take() {
        let result = gateway.send("GET", "/records/v1/notes", &bearer, Bytes::new()).await;
        report(&env.app_id, "no-grant", "gateway", "GET /records/v1/notes".into(), &result, &[401, 403]);
    }

    // 3. A flood.
    let mut bound = Bound::new(env_u64("FLOOD_REQUESTS", 300), Duration::from_secs(30));
    while bound.take() {
        let result = gateway.send("GET", "/weather/v1/today", &bearer, Bytes::new()).await;
        report(&env.app_id, "flood", "gateway", "GET /weather/v1/today".into(), &result, &[200, 429]);
    }

    // 4. A forbidden outbound host.
    let result = proxy.get(&forbidden).await;
    report(&env.app_id, "forbidden-host", "egress", format!("GET {forbidden}"), &result, &[403]);

    // 5. Until banned.
    let mut bound = Bound::new(40, Duration::from_secs(30));
    while bound.take() {
        let result = gateway.send("GET", "/weather/v1/today", &bearer, Bytes::new()).await;
        let (status, error) = report(
            &env.app_id,
            "after-violation",
            "gateway",
            "GET /weather/v1/today".into(),
            &result,
            &[200, 403, 429],
        );
        if status == Some(403) && error.as_deref() == Some("banned") {
            eprintln!("rogue-app: banned by the platform");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
