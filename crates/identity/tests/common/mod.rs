//! A platform CA, a store and a small mTLS HTTP/1.1 server on loopback for
//! the integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis_identity::{
    CertificateKind, IssuedLeaf, LeafRequest, Lifetimes, PlatformAcceptor, PlatformCa, PlatformClientVerifier,
    RefresherGuard, RenewingCertificate, SpiffeId, TrustCache, TrustDomain, init_ca,
};
use portcullis_store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Trust domain of every test CA.
pub const DOMAIN: &str = "weather.example";

/// A CA in a temporary data directory, with its SQLite store.
pub struct Platform {
    pub dir: tempfile::TempDir,
    pub ca: Arc<PlatformCa>,
    pub store: Store,
}

impl Platform {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let domain = TrustDomain::parse(DOMAIN).unwrap();
        init_ca(&dir.path().join("ca"), &domain, false).unwrap();
        let ca = Arc::new(PlatformCa::load(&dir.path().join("ca")).unwrap());
        let store = Store::open_in(dir.path()).await.unwrap();
        Self { dir, ca, store }
    }

    pub fn id(&self, kind: CertificateKind, name: &str) -> SpiffeId {
        SpiffeId::new(self.ca.trust_domain(), kind, name).unwrap()
    }

    /// Issues and records a leaf for `kind`/`name` with default lifetimes.
    pub async fn issue(&self, kind: CertificateKind, name: &str, dns: &[&str]) -> IssuedLeaf {
        let request = LeafRequest::new(self.id(kind, name), &Lifetimes::default()).with_dns_names(dns.iter().copied());
        self.ca.issue_and_record(&self.store, &request).await.unwrap()
    }

    /// Issues and records an app leaf whose validity ended an hour ago.
    pub async fn issue_expired(&self, app_id: &str) -> IssuedLeaf {
        let request = LeafRequest::new(self.id(CertificateKind::App, app_id), &Lifetimes::default())
            .with_lifetime(Duration::from_secs(3600))
            .valid_from(SystemTime::now() - Duration::from_secs(2 * 3600));
        self.ca.issue_and_record(&self.store, &request).await.unwrap()
    }

    /// Writes `leaf` as cert.pem, key.pem and ca-bundle.pem into a new
    /// subdirectory `name` and returns it.
    pub fn write(&self, name: &str, leaf: &IssuedLeaf) -> PathBuf {
        let out = self.dir.path().join("clients").join(name);
        leaf.write_files(&out).unwrap();
        out
    }
}

/// A CA the platform does not trust, issuing for the platform's own SPIFFE
/// ids: a stolen-name attack.
pub fn rogue_ca() -> (tempfile::TempDir, PlatformCa) {
    let dir = tempfile::tempdir().unwrap();
    let domain = TrustDomain::parse(DOMAIN).unwrap();
    init_ca(dir.path(), &domain, false).unwrap();
    let ca = PlatformCa::load(dir.path()).unwrap();
    (dir, ca)
}

/// An mTLS HTTP/1.1 server on 127.0.0.1 that responds to every request with
/// `200 OK` and the peer's SPIFFE id as the body. Stops when dropped.
pub struct TestServer {
    pub port: u16,
    pub certificate: Arc<RenewingCertificate>,
    pub cache: Arc<TrustCache>,
    task: tokio::task::JoinHandle<()>,
    _refresher: RefresherGuard,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start(platform: &Platform) -> Self {
        let leaf = platform.issue(CertificateKind::Platform, "gateway", &["localhost", "127.0.0.1"]).await;
        let certificate = RenewingCertificate::new(&leaf).unwrap();

        let cache = TrustCache::new();
        cache.refresh(&platform.store).await.unwrap();
        let refresher = cache.spawn_refresher(platform.store.clone(), portcullis_identity::REFRESH_INTERVAL);

        let verifier =
            PlatformClientVerifier::new(platform.ca.root(), platform.ca.trust_domain().clone(), cache.clone()).unwrap();
        let acceptor = PlatformAcceptor::new(certificate.clone(), verifier, &[b"http/1.1"]).unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok((mut tls, peer)) = acceptor.accept(tcp).await else { return };
                    let body = peer.identity().to_string();
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = tls.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        while let Some(end) = find(&buffer, b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                            buffer.drain(..end + 4);
                            let close = head.contains("connection: close");
                            let response = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n{}\r\n{body}",
                                body.len(),
                                if close { "Connection: close\r\n" } else { "" }
                            );
                            if tls.write_all(response.as_bytes()).await.is_err() {
                                return;
                            }
                            if close {
                                let _ = tls.shutdown().await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        Self { port, certificate, cache, task, _refresher: refresher }
    }
}

impl TestServer {
    /// Reloads revocations and pins now instead of waiting for the
    /// refresher, as a deploy does after recording a new leaf.
    pub async fn reload(&self, platform: &Platform) {
        self.cache.refresh(&platform.store).await.unwrap();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What a client program printed and how it exited.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub output: String,
}

/// Runs `curl` against the server with the client files in `client`
/// (without a client certificate if `with_cert` is false).
pub async fn curl(port: u16, client: &Path, with_cert: bool, extra: &[&str]) -> Outcome {
    let mut command = tokio::process::Command::new("curl");
    command
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg("--cacert")
        .arg(client.join("ca-bundle.pem"));
    if with_cert {
        command.arg("--cert").arg(client.join("cert.pem")).arg("--key").arg(client.join("key.pem"));
    }
    command.args(extra).arg(format!("https://localhost:{port}/"));
    run(command).await
}

/// Runs `openssl s_client`, sends one request and reads until the server
/// closes.
pub async fn openssl(port: u16, client: &Path, with_cert: bool, extra: &[&str]) -> Outcome {
    let mut command = tokio::process::Command::new("openssl");
    command
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost"])
        .args(["-verify_return_error", "-ign_eof", "-CAfile"])
        .arg(client.join("ca-bundle.pem"));
    if with_cert {
        // -cert sends only the first certificate of the file; -cert_chain
        // adds the intermediate from the same file.
        command.arg("-cert").arg(client.join("cert.pem")).arg("-key").arg(client.join("key.pem"));
        command.arg("-cert_chain").arg(client.join("cert.pem"));
    }
    command.args(extra);
    command.stdin(std::process::Stdio::piped());
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl is installed (Debian package openssl)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    drop(stdin);
    collect(child).await
}

async fn run(mut command: tokio::process::Command) -> Outcome {
    let child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl is installed (Debian package curl)");
    collect(child).await
}

async fn collect(child: tokio::process::Child) -> Outcome {
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("client finished within 20 s")
        .unwrap();
    Outcome {
        code: output.status.code(),
        output: format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
    }
}
