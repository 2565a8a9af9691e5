//! A well-behaved example app. Each round it reads the weather, writes a
//! record and reads its records back through the gateway, and fetches the
//! feed from the allow-listed outbound host through the egress proxy. It
//! prints one JSON line per request outcome on standard output.
//!
//! Environment: the runtime's variables (see `AppEnv`), plus `FEED_URL`,
//! `EXAMPLE_ROUNDS` (default 300) and `EXAMPLE_INTERVAL_MS` (default 1000).

use std::time::{Duration, Instant};

use bytes::Bytes;
use portcullis_examples::{AppEnv, Bound, HttpsClient, ProxyClient, env_u64, report, request_token};

/// Tokens are fetched again after this long; they live 5 minutes by default.
const TOKEN_REFRESH: Duration = Duration::from_secs(120);

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a Tokio runtime");
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("forecast-app: {message}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run() -> Result<(), String> {
    let env = AppEnv::from_env()?;
    let feed = std::env::var("FEED_URL").map_err(|_| "the environment variable FEED_URL is not set")?;
    let feed = url::Url::parse(&feed).map_err(|e| format!("FEED_URL is not a URL: {e}"))?;
    let tls = env.tls()?;
    let mut token_client = HttpsClient::new(&env.token_url, tls.clone());
    let mut gateway = HttpsClient::new(&env.gateway, tls);
    let proxy = ProxyClient::new(&env.proxy)?;

    let rounds = env_u64("EXAMPLE_ROUNDS", 300);
    let interval = Duration::from_millis(env_u64("EXAMPLE_INTERVAL_MS", 1000));
    let mut bound = Bound::new(rounds, interval * (rounds as u32).saturating_add(60));
    let mut tokens: Option<(Instant, String, String)> = None;
    let mut round = 0u64;

    while bound.take() {
        round += 1;
        if tokens.as_ref().is_none_or(|(at, _, _)| at.elapsed() > TOKEN_REFRESH) {
            let path = env.token_url.path();
            let weather = request_token(&env.app_id, &mut token_client, path, "weather:read", 200).await;
            let records = request_token(&env.app_id, &mut token_client, path, "records:read records:write", 200).await;
            tokens = weather.zip(records).map(|(w, r)| (Instant::now(), w, r));
        }
        if let Some((_, weather_token, records_token)) = &tokens {
            let bearer = |token: &str| [("authorization", format!("Bearer {token}"))];

            let result = gateway.send("GET", "/weather/v1/today", &bearer(weather_token), Bytes::new()).await;
            report(&env.app_id, "weather", "gateway", "GET /weather/v1/today".into(), &result, &[200]);

            let mut headers = bearer(records_token).to_vec();
            headers.push(("content-type", "text/plain".into()));
            let note = Bytes::from(format!("round {round}: sunny"));
            let result = gateway.send("POST", "/records/v1/notes", &headers, note).await;
            report(&env.app_id, "record-write", "gateway", "POST /records/v1/notes".into(), &result, &[201]);

            let result = gateway.send("GET", "/records/v1/notes", &bearer(records_token), Bytes::new()).await;
            report(&env.app_id, "record-read", "gateway", "GET /records/v1/notes".into(), &result, &[200]);
        }

        let result = proxy.get(&feed).await;
        report(&env.app_id, "feed", "egress", format!("GET {feed}"), &result, &[200]);

        tokio::time::sleep(interval).await;
    }
    eprintln!("forecast-app: finished after {round} rounds");
    Ok(())
}
