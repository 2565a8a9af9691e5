//! curl and openssl s_client against a server built from the platform TLS
//! policy: valid, missing, expired, unpinned, rogue and revoked client
//! certificates, and protocol versions and suites outside the policy.

mod common;

use std::time::{Duration, Instant};

use common::{Platform, TestServer, curl, openssl, rogue_ca};
use portcullis_identity::{CertificateKind, LeafRequest, Lifetimes};

/// curl's exit code when the server's alert arrives on the first read
/// (TLS 1.3 sends the client-certificate verdict after the handshake).
const CURL_RECV_ERROR: i32 = 56;

/// The client-certificate cases shared by both clients: directory name,
/// whether to send the certificate, and the alert text OpenSSL prints for
/// the server's rejection (`None` for success).
struct Case {
    name: &'static str,
    with_cert: bool,
    alert: Option<&'static str>,
}

const CASES: &[Case] = &[
    Case { name: "valid", with_cert: true, alert: None },
    Case { name: "none", with_cert: false, alert: Some("alert certificate required") },
    Case { name: "expired", with_cert: true, alert: Some("alert certificate expired") },
    // Issued by the platform CA but never recorded: its pin is unknown.
    Case { name: "unrecorded", with_cert: true, alert: Some("alert access denied") },
    // Same SPIFFE id and same CA names from a CA the platform never
    // created: the intermediate's signature does not verify under the root.
    Case { name: "rogue", with_cert: true, alert: Some("alert decrypt error") },
];

/// Writes the client files of every case and returns the platform.
async fn prepare() -> (Platform, tempfile::TempDir) {
    let platform = Platform::new().await;
    let app = platform.id(CertificateKind::App, "forecast");

    let valid = platform.issue(CertificateKind::App, "forecast", &[]).await;
    let valid_dir = platform.write("valid", &valid);
    platform.write("none", &valid);
    platform.write("expired", &platform.issue_expired("forecast").await);

    let unrecorded = platform.ca.issue(&LeafRequest::new(app.clone(), &Lifetimes::default())).unwrap();
    platform.write("unrecorded", &unrecorded);

    let (rogue_dir, rogue) = rogue_ca();
    let rogue_leaf = rogue.issue(&LeafRequest::new(app, &Lifetimes::default())).unwrap();
    let dir = platform.write("rogue", &rogue_leaf);
    // The rogue client trusts the platform root, so only the server's
    // verifier stands between it and the service.
    std::fs::copy(valid_dir.join("ca-bundle.pem"), dir.join("ca-bundle.pem")).unwrap();
    (platform, rogue_dir)
}

#[tokio::test]
async fn curl_client_certificate_cases() {
    let (platform, _rogue) = prepare().await;
    let server = TestServer::start(&platform).await;

    for case in CASES {
        let dir = platform.dir.path().join("clients").join(case.name);
        let outcome = curl(server.port, &dir, case.with_cert, &[]).await;
        match case.alert {
            None => {
                assert_eq!(outcome.code, Some(0), "{}: {}", case.name, outcome.output);
                assert_eq!(outcome.output, "spiffe://weather.example/app/forecast", "{}", case.name);
            }
            Some(alert) => {
                assert_eq!(outcome.code, Some(CURL_RECV_ERROR), "{}: {}", case.name, outcome.output);
                assert!(outcome.output.contains(alert), "{}: expected {alert:?} in {}", case.name, outcome.output);
            }
        }
    }
}

#[tokio::test]
async fn openssl_client_certificate_cases() {
    let (platform, _rogue) = prepare().await;
    let server = TestServer::start(&platform).await;

    for case in CASES {
        let dir = platform.dir.path().join("clients").join(case.name);
        let outcome = openssl(server.port, &dir, case.with_cert, &[]).await;
        match case.alert {
            None => {
                assert_eq!(outcome.code, Some(0), "{}: {}", case.name, outcome.output);
                assert!(outcome.output.contains("HTTP/1.1 200 OK"), "{}: {}", case.name, outcome.output);
                assert!(outcome.output.contains("spiffe://weather.example/app/forecast"), "{}", outcome.output);
            }
            Some(alert) => {
                assert_eq!(outcome.code, Some(1), "{}: {}", case.name, outcome.output);
                assert!(outcome.output.contains(alert), "{}: expected {alert:?} in {}", case.name, outcome.output);
                assert!(!outcome.output.contains("200 OK"), "{}: {}", case.name, outcome.output);
            }
        }
    }
}

#[tokio::test]
async fn tls12_with_aead_suite_accepted() {
    let (platform, _rogue) = prepare().await;
    let server = TestServer::start(&platform).await;
    let dir = platform.dir.path().join("clients/valid");

    let outcome = curl(server.port, &dir, true, &["--tls-max", "1.2"]).await;
    assert_eq!(outcome.code, Some(0), "{}", outcome.output);

    for suite in ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"] {
        let outcome = openssl(server.port, &dir, true, &["-tls1_2", "-cipher", suite]).await;
        assert_eq!(outcome.code, Some(0), "{suite}: {}", outcome.output);
        assert!(outcome.output.contains(&format!("Cipher is {suite}")), "{suite}: {}", outcome.output);
    }
}

#[tokio::test]
async fn weak_protocols_and_suites_rejected() {
    let (platform, _rogue) = prepare().await;
    let server = TestServer::start(&platform).await;
    let dir = platform.dir.path().join("clients/valid");

    // SECLEVEL=0 lets OpenSSL 3 offer what it would refuse by default, so
    // the server, not the client, has to say no. rustls responds to a hello
    // without TLS 1.2 or 1.3 with a handshake_failure alert (number 40).
    let cases: &[(&[&str], &str)] = &[
        (&["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"], "alert handshake failure"),
        (&["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"], "alert handshake failure"),
        (&["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"], "alert handshake failure"),
        (&["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"], "alert handshake failure"),
        (&["-tls1_2", "-cipher", "AES128-GCM-SHA256"], "alert handshake failure"),
    ];
    for (args, alert) in cases {
        let outcome = openssl(server.port, &dir, true, args).await;
        assert_eq!(outcome.code, Some(1), "{args:?}: {}", outcome.output);
        assert!(outcome.output.contains(alert), "{args:?}: expected {alert:?} in {}", outcome.output);
    }
}

#[tokio::test]
async fn revoked_while_running_refused_within_2s() {
    let platform = Platform::new().await;
    let server = TestServer::start(&platform).await;
    let leaf = platform.issue(CertificateKind::App, "forecast", &[]).await;
    let dir = platform.write("revoked", &leaf);
    server.reload(&platform).await;

    let before = curl(server.port, &dir, true, &[]).await;
    assert_eq!(before.code, Some(0), "{}", before.output);

    let revoked =
        platform.store.revoke_certificate(leaf.serial(), "key compromise", portcullis_store::now_ms()).await.unwrap();
    assert!(revoked);
    let start = Instant::now();

    // Poll until the first refusal, at most 20 tries over about 2 s.
    let mut refused = None;
    for _ in 0..20 {
        let outcome = curl(server.port, &dir, true, &[]).await;
        if outcome.code != Some(0) {
            refused = Some((start.elapsed(), outcome));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (elapsed, outcome) = refused.expect("the revoked certificate was still accepted after 20 tries");
    assert!(elapsed <= Duration::from_secs(2), "refused only after {elapsed:?}");
    assert_eq!(outcome.code, Some(CURL_RECV_ERROR), "{}", outcome.output);
    assert!(outcome.output.contains("alert certificate revoked"), "{}", outcome.output);

    let openssl_outcome = openssl(server.port, &dir, true, &[]).await;
    assert!(openssl_outcome.output.contains("alert certificate revoked"), "{}", openssl_outcome.output);
}

#[tokio::test]
async fn revoke_app_refuses_every_leaf() {
    let platform = Platform::new().await;
    let server = TestServer::start(&platform).await;
    let first = platform.write("first", &platform.issue(CertificateKind::App, "forecast", &[]).await);
    let second = platform.write("second", &platform.issue(CertificateKind::App, "forecast", &[]).await);
    let other = platform.write("other", &platform.issue(CertificateKind::App, "radar", &[]).await);
    server.reload(&platform).await;
    for dir in [&first, &second, &other] {
        let outcome = curl(server.port, dir, true, &[]).await;
        assert_eq!(outcome.code, Some(0), "{}: {}", dir.display(), outcome.output);
    }

    let count = platform
        .store
        .revoke_subject(CertificateKind::App, "forecast", "app banned", portcullis_store::now_ms())
        .await
        .unwrap();
    assert_eq!(count, 2);
    tokio::time::sleep(Duration::from_millis(2000)).await;

    for dir in [&first, &second] {
        let outcome = curl(server.port, dir, true, &[]).await;
        assert!(outcome.output.contains("alert certificate revoked"), "{}: {}", dir.display(), outcome.output);
    }
    let outcome = curl(server.port, &other, true, &[]).await;
    assert_eq!(outcome.code, Some(0), "other app: {}", outcome.output);
}
