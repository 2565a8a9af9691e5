//! Measures leaf issuance: a new ECDSA P-256 key and an ECDSA-SHA256
//! signature by the intermediate per leaf. Run in release mode through
//! `scripts/bench-identity`.
//!
//! Usage: issue_bench [COUNT] (default 5000, at most 1000000).

use std::time::Instant;

use portcullis_identity::{CertificateKind, LeafRequest, Lifetimes, PlatformCa, SpiffeId, TrustDomain, init_ca};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: u32 = std::env::args().nth(1).map(|v| v.parse()).transpose()?.unwrap_or(5000).min(1_000_000);

    let dir = tempfile::tempdir()?;
    let domain = TrustDomain::parse("bench.example")?;
    init_ca(dir.path(), &domain, false)?;
    let ca = PlatformCa::load(dir.path())?;
    let lifetimes = Lifetimes::default();

    let requests: Vec<LeafRequest> = (0..count)
        .map(|i| {
            SpiffeId::new(&domain, CertificateKind::App, &format!("app-{i}")).map(|id| LeafRequest::new(id, &lifetimes))
        })
        .collect::<Result<_, _>>()?;

    let start = Instant::now();
    for request in &requests {
        ca.issue(request)?;
    }
    let elapsed = start.elapsed();

    let rate = f64::from(count) / elapsed.as_secs_f64();
    println!("issued {count} leaves in {:.3} s on one thread: {rate:.0} leaves/s", elapsed.as_secs_f64());
    Ok(())
}
