//! The token service over real TLS sockets, driven by authlib (Python), an
//! OAuth 2.0 client library no one here wrote, and by curl.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, RwLock};

use portcullis_identity::{
    CertificateKind, LeafRequest, Lifetimes, PlatformAcceptor, PlatformCa, PlatformClientVerifier, RenewingCertificate,
    SpiffeId, TrustCache, TrustDomain, init_ca, policy,
};
use portcullis_store::Store;
use portcullis_token::server::{TokenService, hash_customer_secret, serve_mutual_tls, serve_public_tls};
use portcullis_token::{InvalidationsHandle, SigningKeys, TokenIssuer};
use tokio::net::TcpListener;

const EXAMPLE: &str = include_str!("../../../examples/weather-platform/platform.toml");
const DOMAIN: &str = "weather.example";
const CUSTOMER_SECRET: &str = "correct horse battery staple";

struct Platform {
    dir: tempfile::TempDir,
    ca: PlatformCa,
    store: Store,
    service: TokenService,
    token_url: String,
    consent_url: String,
    /// Dropping it stops both servers.
    _stop: tokio::sync::watch::Sender<bool>,
}

/// Completes when `stop` is set or its sender is dropped.
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

impl Platform {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let domain = TrustDomain::parse(DOMAIN).unwrap();
        init_ca(&dir.path().join("ca"), &domain, false).unwrap();
        let ca = PlatformCa::load(&dir.path().join("ca")).unwrap();
        let store = Store::open_in(dir.path()).await.unwrap();

        // Listeners first, so the configuration can name their ports.
        let token_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let consent_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let token_address = token_listener.local_addr().unwrap();
        let consent_address = consent_listener.local_addr().unwrap();
        let text = EXAMPLE
            .replace("token = \"127.0.0.1:8445\"", &format!("token = \"{token_address}\""))
            .replace("consent = \"127.0.0.1:8447\"", &format!("consent = \"{consent_address}\""));
        let config = portcullis_config::parse(Path::new("platform.toml"), &text).unwrap();

        // Apps, grants, a redirect URI and a customer.
        store.insert_app("weather-app", "Weather App", "acme").await.unwrap();
        store.insert_app("other-app", "Other App", "mallory").await.unwrap();
        store.add_grant("weather-app", "weather", "weather:read", "operator").await.unwrap();
        store.add_redirect_uri("weather-app", "https://app.example/callback").await.unwrap();
        store.insert_customer("alice", &hash_customer_secret(CUSTOMER_SECRET)).await.unwrap();

        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let keys = Arc::new(RwLock::new(SigningKeys::generate(now, 330).unwrap()));
        let issuer = TokenIssuer::new(config.token.issuer.clone(), 300, keys);
        let service = TokenService::new(&config, issuer, InvalidationsHandle::default(), store.clone()).unwrap();

        let server_id = SpiffeId::new(ca.trust_domain(), CertificateKind::Platform, "token").unwrap();
        let request = LeafRequest::new(server_id, &Lifetimes::default()).with_dns_names(["127.0.0.1"]);
        let server_leaf = ca.issue_and_record(&store, &request).await.unwrap();
        let certificate = RenewingCertificate::new(&server_leaf).unwrap();

        let platform = Self {
            token_url: format!("https://{token_address}/oauth2/token"),
            consent_url: format!("https://{consent_address}"),
            dir,
            ca,
            store,
            service,
            _stop: tokio::sync::watch::channel(false).0,
        };
        let cache = platform.issue_clients().await;

        let verifier =
            PlatformClientVerifier::new(platform.ca.root(), TrustDomain::parse(DOMAIN).unwrap(), cache).unwrap();
        let acceptor = PlatformAcceptor::new(certificate.clone(), verifier, &[b"h2", b"http/1.1"]).unwrap();
        let public = Arc::new(policy::public_server_config(certificate, &[b"http/1.1"]).unwrap());

        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(serve_mutual_tls(
            "token",
            token_listener,
            acceptor,
            platform.service.router(),
            stopped(stop_rx.clone()),
        ));
        tokio::spawn(serve_public_tls(
            "consent",
            consent_listener,
            public,
            platform.service.consent_router(),
            stopped(stop_rx),
        ));
        Self { _stop: stop, ..platform }
    }

    /// Issues client certificates for both apps and a service, writes them
    /// to files, and returns a trust cache that knows their pins.
    async fn issue_clients(&self) -> Arc<TrustCache> {
        for (kind, name) in [
            (CertificateKind::App, "weather-app"),
            (CertificateKind::App, "other-app"),
            (CertificateKind::Service, "weather"),
            (CertificateKind::Service, "records"),
        ] {
            let id = SpiffeId::new(self.ca.trust_domain(), kind, name).unwrap();
            let leaf =
                self.ca.issue_and_record(&self.store, &LeafRequest::new(id, &Lifetimes::default())).await.unwrap();
            leaf.write_files(&self.client_dir(name)).unwrap();
        }
        let cache = TrustCache::new();
        cache.refresh(&self.store).await.unwrap();
        cache
    }

    fn client_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("clients").join(name)
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn client_args(dir: &Path) -> [String; 3] {
    [
        dir.join("cert.pem").display().to_string(),
        dir.join("key.pem").display().to_string(),
        dir.join("ca-bundle.pem").display().to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_drives_both_grants() {
    let platform = Platform::start().await;
    let [cert, key, ca] = client_args(&platform.client_dir("weather-app"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/authlib_client.py");

    let output = tokio::process::Command::new("python3")
        .args([script, &platform.token_url, &platform.consent_url, &cert, &key, &ca, "alice", CUSTOMER_SECRET])
        .output()
        .await
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "authlib client failed:\n{stderr}");
    let results: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    assert_eq!(results["client_credentials"]["token_type"], "Bearer");
    assert_eq!(results["client_credentials"]["scope"], "weather:read");
    assert_eq!(results["client_credentials"]["expires_in"], 300);
    assert_eq!(results["client_credentials_ungranted"], "invalid_scope");
    assert_eq!(results["consent_page_status"], 200);
    assert_eq!(results["consent_status"], 303);
    assert_eq!(results["redirect_state_matches"], true);
    assert_eq!(results["redirect_has_code"], true);
    assert_eq!(results["consent_without_csrf_status"], 403);
    assert_eq!(results["consent_replay_status"], 403);
    assert_eq!(results["secret_guesses"], serde_json::json!([401, 401, 401, 401, 401, 429, 429]));
    assert_eq!(results["authorization_code"]["scope"], "weather:read");
    assert_eq!(results["authorization_code"]["has_refresh_token"], true);
    assert_eq!(results["code_replay"], "invalid_grant");
    assert_eq!(results["refresh_rotated"], true);
    assert_eq!(results["refresh_reuse"], "invalid_grant");
    assert_eq!(results["refresh_after_family_revoked"], "invalid_grant");
    assert_eq!(results["deny_error"], "access_denied");

    // The client credentials token is bound to the app's certificate.
    let der = std::fs::read_to_string(&cert).unwrap();
    let leaf = rustls_pki_types::pem::PemObject::pem_slice_iter(der.as_bytes())
        .next()
        .map(|c: Result<rustls_pki_types::CertificateDer<'static>, _>| c.unwrap())
        .unwrap();
    let audience = format!("spiffe://{DOMAIN}/service/weather");
    let token = results["client_credentials"]["access_token"].as_str().unwrap();
    let verified = platform.service.verifier().verify(token, &audience, &leaf, now_secs()).unwrap();
    assert_eq!(verified.app_id(), "weather-app");

    // The access token of the reused refresh family was revoked.
    let refreshed = results["refreshed_access_token"].as_str().unwrap();
    assert_eq!(
        platform.service.verifier().verify(refreshed, &audience, &leaf, now_secs()).err(),
        Some(portcullis_token::RejectReason::Revoked)
    );
}

/// Runs curl as the holder of the certificate in the client directory
/// `client`, and returns (HTTP status, body).
fn curl_as(client: &Path, args: &[&str]) -> (u16, String) {
    let [cert, key, ca] = client_args(client);
    let mut all = vec!["--cacert", ca.as_str(), "--cert", cert.as_str(), "--key", key.as_str()];
    all.extend_from_slice(args);
    curl(&all)
}

/// Runs curl against the token listener and returns (HTTP status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10", "--write-out", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_errors_follow_rfc_6749() {
    let platform = Platform::start().await;
    let url = platform.token_url.clone();
    let ca = client_args(&platform.client_dir("weather-app"))[2].clone();
    let app = |body: &str| curl_as(&platform.client_dir("weather-app"), &["--data", body, &url]);

    // (case, body, status, error code)
    let cases = [
        ("no grant type", "scope=weather:read", 400, "invalid_request"),
        ("unknown grant type", "grant_type=password&username=a&password=b", 400, "unsupported_grant_type"),
        ("no scope", "grant_type=client_credentials", 400, "invalid_scope"),
        ("scope not granted", "grant_type=client_credentials&scope=records:read", 400, "invalid_scope"),
        ("unknown scope", "grant_type=client_credentials&scope=admin:all", 400, "invalid_scope"),
        (
            "scopes of two services",
            "grant_type=client_credentials&scope=weather:read+records:read",
            400,
            "invalid_scope",
        ),
        (
            "repeated parameter",
            "grant_type=client_credentials&scope=weather:read&scope=weather:read",
            400,
            "invalid_request",
        ),
        (
            "client_id of another app",
            "grant_type=client_credentials&scope=weather:read&client_id=other-app",
            401,
            "invalid_client",
        ),
        (
            "bad authorization code",
            "grant_type=authorization_code&code=nope&redirect_uri=https://app.example/callback&code_verifier=x",
            400,
            "invalid_grant",
        ),
        (
            "code grant without verifier",
            "grant_type=authorization_code&code=nope&redirect_uri=https://app.example/callback",
            400,
            "invalid_request",
        ),
        ("unknown refresh token", "grant_type=refresh_token&refresh_token=nope", 400, "invalid_grant"),
    ];
    for (case, body, status, error) in cases {
        let (got_status, got_body) = app(body);
        assert_eq!(got_status, status, "{case}: {got_body}");
        let json: serde_json::Value =
            serde_json::from_str(&got_body).unwrap_or_else(|_| panic!("{case}: not JSON: {got_body}"));
        assert_eq!(json["error"], error, "{case}");
        assert!(json["error_description"].is_string(), "{case}");
    }

    // Parameters must be form-encoded (RFC 6749 section 3.2).
    let (status, body) = curl_as(
        &platform.client_dir("weather-app"),
        &["--header", "Content-Type: application/json", "--data", r#"{"grant_type":"client_credentials"}"#, &url],
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("application/x-www-form-urlencoded"), "{body}");

    // A valid request, for contrast.
    let (status, body) = app("grant_type=client_credentials&scope=weather:read");
    assert_eq!(status, 200, "{body}");

    // A service certificate is not a client credential at the token endpoint.
    let (status, body) =
        curl_as(&platform.client_dir("weather"), &["--data", "grant_type=client_credentials&scope=weather:read", &url]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid_client"), "{body}");

    // An app without the grant.
    let (status, body) = curl_as(
        &platform.client_dir("other-app"),
        &["--data", "grant_type=client_credentials&scope=weather:read", &url],
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("scope weather:read is not granted to app other-app"), "{body}");

    // No client certificate at all: the handshake itself fails.
    let (status, _) = curl(&["--cacert", &ca, "--data", "grant_type=client_credentials&scope=weather:read", &url]);
    assert_eq!(status, 0);
}

/// A form body over the limit gets 413 with a JSON error over HTTP/1.1 and
/// over HTTP/2, not a reset stream or a closed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_token_request_is_413_on_both_versions() {
    let platform = Platform::start().await;
    let url = platform.token_url.clone();
    let dir = tempfile::tempdir().unwrap();
    let form = dir.path().join("form");
    let filler = "a".repeat(3 * 1024 * 1024);
    std::fs::write(&form, format!("grant_type=client_credentials&scope=weather:read&x={filler}")).unwrap();
    let data = format!("@{}", form.display());

    for version in ["--http1.1", "--http2"] {
        let (status, body) = curl_as(&platform.client_dir("weather-app"), &[version, "--data-binary", &data, &url]);
        assert_eq!(status, 413, "{version}: {body}");
        let json: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{version}: not JSON: {body}"));
        assert_eq!(json["error"], "invalid_request", "{version}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_is_rate_limited_per_client() {
    let platform = Platform::start().await;
    let [_, _, ca] = client_args(&platform.client_dir("weather-app"));
    let body = "grant_type=client_credentials&scope=weather:read";

    // The example allows a burst of 20 above 5 per second; 40 quick requests
    // (in one curl process, one connection) must meet a 429.
    let cert_path = platform.client_dir("weather-app").join("cert.pem").display().to_string();
    let key_path = platform.client_dir("weather-app").join("key.pem").display().to_string();
    let mut args: Vec<String> = Vec::new();
    for index in 0..41 {
        if index > 0 {
            args.push("--next".into());
        }
        args.extend(["--silent", "--output", "/dev/null", "--write-out", "%{http_code}\n"].map(String::from));
        args.extend([
            "--cacert".into(),
            ca.clone(),
            "--cert".into(),
            cert_path.clone(),
            "--key".into(),
            key_path.clone(),
        ]);
        args.extend(["--data".into(), body.into(), platform.token_url.clone()]);
    }
    let output = Command::new("curl").args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let statuses: Vec<u16> = text.lines().map(|l| l.parse().unwrap_or_else(|_| panic!("{text}"))).collect();
    assert_eq!(statuses.len(), 41);
    assert_eq!(statuses[0], 200);
    assert!(statuses.contains(&429), "no 429 in {statuses:?}");

    // Another client is not affected by the first one's limit.
    let (status, body) = curl_as(&platform.client_dir("other-app"), &["--data", body, &platform.token_url]);
    assert_eq!(status, 400, "other-app has its own bucket: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_and_revocation_require_authenticated_callers() {
    let platform = Platform::start().await;
    let base = platform.token_url.trim_end_matches("/token").to_owned();

    let (status, body) = curl_as(
        &platform.client_dir("weather-app"),
        &["--data", "grant_type=client_credentials&scope=weather:read", &platform.token_url],
    );
    assert_eq!(status, 200, "{body}");
    let token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["access_token"].as_str().unwrap().to_owned();
    let token_param = format!("token={token}");

    // Introspection: the weather service sees its token; records does not;
    // an app may not introspect.
    let (status, body) =
        curl_as(&platform.client_dir("weather"), &["--data", &token_param, &format!("{base}/introspect")]);
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["active"], true);
    assert_eq!(json["sub"], "weather-app");
    assert_eq!(json["scope"], "weather:read");

    let (_, body) = curl_as(&platform.client_dir("records"), &["--data", &token_param, &format!("{base}/introspect")]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["active"], false);

    let (status, body) =
        curl_as(&platform.client_dir("weather-app"), &["--data", &token_param, &format!("{base}/introspect")]);
    assert_eq!(status, 401, "{body}");

    // Revocation: another app may not revoke it; the owner may.
    let (status, body) =
        curl_as(&platform.client_dir("other-app"), &["--data", &token_param, &format!("{base}/revoke")]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unauthorized_client"), "{body}");

    let (status, _) =
        curl_as(&platform.client_dir("weather-app"), &["--data", &token_param, &format!("{base}/revoke")]);
    assert_eq!(status, 200);

    let (_, body) = curl_as(&platform.client_dir("weather"), &["--data", &token_param, &format!("{base}/introspect")]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["active"], false, "revoked token is inactive");
    assert_eq!(platform.store.revoked_access_tokens(now_secs()).await.unwrap().len(), 1, "revocation is stored");

    // Unknown tokens get 200 (RFC 7009 section 2.2).
    let (status, _) =
        curl_as(&platform.client_dir("weather-app"), &["--data", "token=unknown", &format!("{base}/revoke")]);
    assert_eq!(status, 200);

    // Metadata and JWKS.
    let (status, body) = curl_as(
        &platform.client_dir("weather-app"),
        &[&format!("{}/.well-known/oauth-authorization-server", base.trim_end_matches("/oauth2"))],
    );
    assert_eq!(status, 200, "{body}");
    let metadata: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(metadata["tls_client_certificate_bound_access_tokens"], true);
    assert_eq!(metadata["code_challenge_methods_supported"][0], "S256");
    assert_eq!(metadata["authorization_endpoint"], format!("{}/oauth2/authorize", platform.consent_url));
    let (_, body) = curl_as(&platform.client_dir("weather-app"), &[&format!("{base}/jwks")]);
    let jwks: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    assert!(jwks["keys"][0].get("d").is_none(), "no private key material in the JWKS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawn_grant_invalidates_tokens_at_once() {
    let platform = Platform::start().await;
    let [cert, _, _] = client_args(&platform.client_dir("weather-app"));
    let (_, body) = curl_as(
        &platform.client_dir("weather-app"),
        &["--data", "grant_type=client_credentials&scope=weather:read", &platform.token_url],
    );
    let token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["access_token"].as_str().unwrap().to_owned();
    let leaf_pem = std::fs::read(&cert).unwrap();
    let leaf: rustls_pki_types::CertificateDer<'static> =
        rustls_pki_types::pem::PemObject::from_pem_slice(&leaf_pem).unwrap();
    let audience = format!("spiffe://{DOMAIN}/service/weather");
    assert!(platform.service.verifier().verify(&token, &audience, &leaf, now_secs()).is_ok());

    // Another process (the CLI) withdraws the grant: it writes the store;
    // the running service picks it up on its next sync.
    platform.store.remove_grant("weather-app", "weather", "weather:read").await.unwrap();
    platform.store.set_token_cut_off("weather-app", now_secs()).await.unwrap();
    platform.service.sync_invalidations().await.unwrap();
    assert_eq!(
        platform.service.verifier().verify(&token, &audience, &leaf, now_secs()).err(),
        Some(portcullis_token::RejectReason::Invalidated("weather-app".into()))
    );

    // In this process the change applies without waiting for a sync.
    platform.store.add_grant("weather-app", "weather", "weather:read", "operator").await.unwrap();
    platform.service.invalidate_app("weather-app").await.unwrap();
    assert!(platform.service.verifier().verify(&token, &audience, &leaf, now_secs()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_rotates_when_due() {
    let platform = Platform::start().await;
    let client = platform.client_dir("weather-app");
    let request = ["--data", "grant_type=client_credentials&scope=weather:read", platform.token_url.as_str()];
    let (_, body) = curl_as(&client, &request);
    let old_token =
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["access_token"].as_str().unwrap().to_owned();

    let key_file = platform.dir.path().join("signing-keys.json");
    let rotation = std::time::Duration::from_secs(3600);
    assert!(!platform.service.rotate_keys_if_due(rotation, &key_file).unwrap(), "a fresh key is not due");
    assert!(platform.service.rotate_keys_if_due(std::time::Duration::ZERO, &key_file).unwrap());
    assert!(key_file.exists(), "the rotated keys are saved");

    let jwks_url = platform.token_url.replace("/token", "/jwks");
    let (_, body) = curl_as(&client, &[jwks_url.as_str()]);
    let jwks: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "the old key stays published");

    let (_, body) = curl_as(&client, &request);
    let new_token =
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["access_token"].as_str().unwrap().to_owned();
    let kid = |token: &str| -> String {
        use base64::Engine;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap();
        serde_json::from_slice::<serde_json::Value>(&header).unwrap()["kid"].as_str().unwrap().to_owned()
    };
    assert_ne!(kid(&old_token), kid(&new_token));

    let leaf_pem = std::fs::read(client.join("cert.pem")).unwrap();
    let leaf: rustls_pki_types::CertificateDer<'static> =
        rustls_pki_types::pem::PemObject::from_pem_slice(&leaf_pem).unwrap();
    let audience = format!("spiffe://{DOMAIN}/service/weather");
    for token in [&old_token, &new_token] {
        assert!(platform.service.verifier().verify(token, &audience, &leaf, now_secs()).is_ok());
    }
}

/// Stores a refresh token for `weather-app` consented by alice and returns
/// its value.
async fn seed_refresh_token(platform: &Platform, value: &str) {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
    let hash: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let now_ms = now_secs() * 1000;
    platform
        .store
        .insert_refresh_token(&portcullis_store::RefreshTokenRecord {
            token_hash: hash,
            family_id: "seeded-family".into(),
            app_id: "weather-app".into(),
            customer_id: "alice".into(),
            audience: format!("spiffe://{DOMAIN}/service/weather"),
            scopes: "weather:read".into(),
            access_jti: "seeded-jti".into(),
            access_exp: now_secs() + 300,
            issued_at: now_ms,
            expires_at: now_ms + 3_600_000,
            used_at: None,
            revoked_at: None,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_fails_once_grant_is_withdrawn() {
    let platform = Platform::start().await;
    let client = platform.client_dir("weather-app");
    seed_refresh_token(&platform, "seeded-refresh-token").await;

    let (status, body) = curl_as(
        &client,
        &["--data", "grant_type=refresh_token&refresh_token=seeded-refresh-token", &platform.token_url],
    );
    assert_eq!(status, 200, "{body}");
    let next = serde_json::from_str::<serde_json::Value>(&body).unwrap()["refresh_token"].as_str().unwrap().to_owned();

    platform.store.remove_grant("weather-app", "weather", "weather:read").await.unwrap();
    let request = format!("grant_type=refresh_token&refresh_token={next}");
    let (status, body) = curl_as(&client, &["--data", &request, &platform.token_url]);
    assert_eq!(status, 400, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "invalid_grant");
    assert_eq!(json["error_description"], "scope weather:read is no longer granted to app weather-app");

    // The family is revoked: granting again does not revive the token.
    platform.store.add_grant("weather-app", "weather", "weather:read", "operator").await.unwrap();
    let (status, _) = curl_as(&client, &["--data", &request, &platform.token_url]);
    assert_eq!(status, 400);
}
