//! Measures token issuance and verification throughput on one thread.
//!
//! Run with `bench/token` (release build). Prints one JSON object.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use portcullis_token::*;

const AUDIENCE: &str = "spiffe://bench.example/service/weather";
const CERTIFICATE: &[u8] = b"a DER certificate stand-in of typical size: the thumbprint hashes these bytes";

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let budget = Duration::from_secs(seconds);
    let now = 1_800_000_000;

    let keys = Arc::new(RwLock::new(SigningKeys::generate(now, 330).unwrap()));
    let issuer = TokenIssuer::new("https://token.bench.example", 300, keys.clone());
    let public = VerifierKeys::from_public_keys(&keys.read().unwrap().public_keys(now)).unwrap();
    let verifier = Verifier::new("https://token.bench.example", public, 330, 30, InvalidationsHandle::default());
    let scopes = vec!["weather:read".to_owned()];
    let request =
        TokenRequest { app_id: "bench-app", audience: AUDIENCE, scopes: &scopes, certificate_der: CERTIFICATE };

    // Issuance, bounded by time and by count.
    let start = Instant::now();
    let mut tokens = Vec::new();
    while start.elapsed() < budget && tokens.len() < 10_000_000 {
        tokens.push(issuer.issue(&request, now).unwrap().0);
    }
    let issued_per_second = tokens.len() as f64 / start.elapsed().as_secs_f64();

    // Cold: each token once, so every call verifies a signature.
    let start = Instant::now();
    let mut cold = 0_u64;
    for token in &tokens {
        verifier.verify(token, AUDIENCE, CERTIFICATE, now + 1).unwrap();
        cold += 1;
        if cold % 1024 == 0 && start.elapsed() >= budget {
            break;
        }
    }
    let cold_per_second = cold as f64 / start.elapsed().as_secs_f64();

    // Warm: an app reusing its token, the common case; every check but the
    // signature runs on each call.
    let token = &tokens[0];
    let start = Instant::now();
    let mut warm = 0_u64;
    while warm < 100_000_000 {
        verifier.verify(token, AUDIENCE, CERTIFICATE, now + 1).unwrap();
        warm += 1;
        if warm % 4096 == 0 && start.elapsed() >= budget {
            break;
        }
    }
    let warm_per_second = warm as f64 / start.elapsed().as_secs_f64();

    println!(
        "{}",
        serde_json::json!({
            "threads": 1,
            "seconds_per_phase": seconds,
            "issued_per_second": issued_per_second.round(),
            "verified_new_token_per_second": cold_per_second.round(),
            "verified_reused_token_per_second": warm_per_second.round(),
        })
    );
}
