//! A Portcullis TLS listener for TLS scanners: creates a throwaway CA in
//! DIR, a server certificate for 127.0.0.1 and localhost, and a client
//! certificate written as DIR/client.pem (certificate chain and key in one
//! file, the form `testssl.sh --mtls` takes), then serves HTTP/1.1 on
//! 127.0.0.1:PORT with the shared TLS policy until killed.
//!
//! Usage: tls_server DIR PORT

use std::sync::Arc;

use portcullis_identity::{
    CertificateKind, LeafRequest, Lifetimes, PlatformAcceptor, PlatformCa, PlatformClientVerifier, REFRESH_INTERVAL,
    RenewingCertificate, SpiffeId, TrustCache, TrustDomain, init_ca,
};
use portcullis_store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(port)) = (args.next(), args.next()) else {
        return Err("usage: tls_server DIR PORT".into());
    };
    let dir = std::path::PathBuf::from(dir);
    let port: u16 = port.parse()?;

    let domain = TrustDomain::parse("scan.example")?;
    init_ca(&dir.join("ca"), &domain, true)?;
    let ca = PlatformCa::load(&dir.join("ca"))?;
    let store = Store::open_in(&dir).await?;
    let lifetimes = Lifetimes::default();

    let server_id = SpiffeId::new(&domain, CertificateKind::Platform, "gateway")?;
    let server_leaf = ca
        .issue_and_record(&store, &LeafRequest::new(server_id, &lifetimes).with_dns_names(["localhost", "127.0.0.1"]))
        .await?;
    let client_leaf =
        ca.issue_and_record(&store, &LeafRequest::new(SpiffeId::app(&domain, "scanner")?, &lifetimes)).await?;
    std::fs::write(dir.join("ca-bundle.pem"), client_leaf.root_pem())?;
    portcullis_identity::write_private(
        &dir.join("client.pem"),
        format!("{}{}", client_leaf.chain_pem(), client_leaf.key_pem()).as_bytes(),
    )?;

    let cache = TrustCache::new();
    cache.refresh(&store).await?;
    let _refresher = cache.spawn_refresher(store.clone(), REFRESH_INTERVAL);
    let verifier = PlatformClientVerifier::new(ca.root(), domain.clone(), Arc::clone(&cache))?;
    let acceptor = PlatformAcceptor::new(RenewingCertificate::new(&server_leaf)?, verifier, &[b"http/1.1"])?;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on 127.0.0.1:{port}");
    loop {
        let (tcp, _) = listener.accept().await?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok((mut tls, peer)) = acceptor.accept(tcp).await else { return };
            let mut buffer = [0u8; 4096];
            let _ = tls.read(&mut buffer).await;
            let body = peer.identity().to_string();
            let response =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = tls.write_all(response.as_bytes()).await;
            let _ = tls.shutdown().await;
        });
    }
}
