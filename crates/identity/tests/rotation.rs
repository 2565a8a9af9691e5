//! Rotation under load, pin overlap, and issuing with the root key offline,
//! with a rustls client built from the platform policy.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Platform, TestServer};
use portcullis_identity::{
    CertificateKind, LeafRequest, Lifetimes, PlatformCa, RenewingCertificate, policy, serial_hex,
};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

type Client = BufReader<tokio_rustls::client::TlsStream<TcpStream>>;

/// Opens a TLS connection to the server presenting `client`.
async fn connect(platform: &Platform, port: u16, client: Arc<RenewingCertificate>) -> Client {
    let config = policy::client_config(platform.ca.root(), client, &[b"http/1.1"]).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    BufReader::new(tls)
}

/// Sends one keep-alive request and returns the body.
async fn request_body(client: &mut Client) -> String {
    client.get_mut().write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        client.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    client.read_exact(&mut body).await.unwrap();
    String::from_utf8(body).unwrap()
}

/// Serial of the certificate the server presented on `client`.
fn server_serial(client: &Client) -> String {
    let certs = client.get_ref().get_ref().1.peer_certificates().unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();
    serial_hex(cert.raw_serial())
}

#[tokio::test]
async fn server_rotation_keeps_open_connection() {
    let platform = Platform::new().await;
    let server = TestServer::start(&platform).await;
    let app = RenewingCertificate::new(&platform.issue(CertificateKind::App, "forecast", &[]).await).unwrap();
    server.reload(&platform).await;

    let mut open = connect(&platform, server.port, app.clone()).await;
    assert_eq!(request_body(&mut open).await, "spiffe://weather.example/app/forecast");
    let old_serial = server_serial(&open);
    assert_eq!(old_serial, server.certificate.serial());

    let renewed = platform.issue(CertificateKind::Platform, "gateway", &["localhost"]).await;
    server.certificate.replace(&renewed).unwrap();
    assert_ne!(renewed.serial(), old_serial);

    // The connection opened before the rotation goes on working.
    for _ in 0..3 {
        assert_eq!(request_body(&mut open).await, "spiffe://weather.example/app/forecast");
    }
    assert_eq!(server_serial(&open), old_serial);

    let mut fresh = connect(&platform, server.port, app).await;
    assert_eq!(request_body(&mut fresh).await, "spiffe://weather.example/app/forecast");
    assert_eq!(server_serial(&fresh), renewed.serial());
}

#[tokio::test]
async fn renewal_task_replaces_leaf_at_renew_point() {
    let platform = Platform::new().await;
    let request = LeafRequest::new(platform.id(CertificateKind::Platform, "gateway"), &Lifetimes::default())
        .with_dns_names(["localhost"])
        .with_lifetime(Duration::from_secs(3));
    let first = platform.ca.issue_and_record(&platform.store, &request).await.unwrap();
    let certificate = RenewingCertificate::new(&first).unwrap();

    let (ca, store) = (platform.ca.clone(), platform.store.clone());
    let _renewal = certificate.spawn_renewal(2.0 / 3.0, move || {
        let (ca, store, request) = (ca.clone(), store.clone(), request.clone());
        async move { ca.issue_and_record(&store, &request).await }
    });

    // Renewal is due 2 s into a 3 s life; give it up to 4 s.
    let mut renewed = false;
    for _ in 0..40 {
        if certificate.serial() != first.serial() {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(renewed, "leaf {} was not renewed", first.serial());
    let records = platform.store.certificates(Some((CertificateKind::Platform, "gateway"))).await.unwrap();
    assert!(records.len() >= 2, "renewed leaf was not recorded: {records:?}");
}

#[tokio::test]
async fn client_rotation_overlaps_pins() {
    let platform = Platform::new().await;
    let server = TestServer::start(&platform).await;
    let old = platform.issue(CertificateKind::App, "forecast", &[]).await;
    let client = RenewingCertificate::new(&old).unwrap();
    server.reload(&platform).await;
    let mut open = connect(&platform, server.port, client.clone()).await;
    assert_eq!(request_body(&mut open).await, "spiffe://weather.example/app/forecast");

    let new = platform.issue(CertificateKind::App, "forecast", &[]).await;
    assert_ne!(new.spki_pin(), old.spki_pin());
    client.replace(&new).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // Old and new keys are both valid pins until the old leaf expires.
    let pins = platform.store.valid_pins(CertificateKind::App, "forecast", portcullis_store::now_ms()).await.unwrap();
    assert_eq!(pins.len(), 2);
    let mut fresh = connect(&platform, server.port, client.clone()).await;
    assert_eq!(request_body(&mut fresh).await, "spiffe://weather.example/app/forecast");
    let old_only = RenewingCertificate::new(&old).unwrap();
    let mut with_old = connect(&platform, server.port, old_only).await;
    assert_eq!(request_body(&mut with_old).await, "spiffe://weather.example/app/forecast");
    assert_eq!(request_body(&mut open).await, "spiffe://weather.example/app/forecast");
}

#[tokio::test]
async fn issue_with_root_key_offline() {
    let platform = Platform::new().await;
    let server = TestServer::start(&platform).await;
    let ca_dir = platform.dir.path().join("ca");
    let offline = platform.dir.path().join("offline-root-key.pem");
    std::fs::rename(ca_dir.join(portcullis_identity::ROOT_KEY), &offline).unwrap();

    let ca = PlatformCa::load(&ca_dir).unwrap();
    let request = LeafRequest::new(platform.id(CertificateKind::App, "forecast"), &Lifetimes::default());
    let leaf = ca.issue_and_record(&platform.store, &request).await.unwrap();
    assert_eq!(leaf.chain().len(), 2);
    assert!(!ca_dir.join(portcullis_identity::ROOT_KEY).exists());

    // The server trusts the root: the leaf chains to it without its key.
    server.reload(&platform).await;
    let mut client = connect(&platform, server.port, RenewingCertificate::new(&leaf).unwrap()).await;
    assert_eq!(request_body(&mut client).await, "spiffe://weather.example/app/forecast");
}
