//! The one TLS policy of Portcullis, used by every listener and client.
//!
//! - Protocols: TLS 1.3, and TLS 1.2 for older clients.
//! - TLS 1.2 suites: ECDHE with ECDSA and an AEAD only
//!   (ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-ECDSA-AES256-GCM-SHA384,
//!   ECDHE-ECDSA-CHACHA20-POLY1305). No CBC, no RSA key exchange, no
//!   static DH. Every platform key is ECDSA P-256, so ECDHE-RSA suites
//!   could never be negotiated and are left out.
//! - Key exchange groups: aws-lc-rs's defaults (X25519MLKEM768, X25519,
//!   P-256, P-384).
//! - Compression and renegotiation: rustls implements neither.
//! - Session resumption: off on both sides. A resumed TLS 1.3 session does
//!   not run the client certificate verifier again, so a revoked or
//!   unpinned certificate could keep connecting through a ticket issued
//!   before the revocation.
//! - Crypto provider: aws-lc-rs, the only provider in the build.

use std::sync::{Arc, OnceLock};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider};
use rustls::server::{NoServerSessionStorage, ResolvesServerCert};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::CertificateDer;

use crate::IdentityError;
use crate::verifier::PlatformClientVerifier;

/// Protocol versions: TLS 1.3 first, then TLS 1.2.
pub static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The aws-lc-rs provider narrowed to the policy's cipher suites.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = default_provider();
            provider.cipher_suites = vec![
                cipher_suite::TLS13_AES_128_GCM_SHA256,
                cipher_suite::TLS13_AES_256_GCM_SHA384,
                cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
                cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            ];
            Arc::new(provider)
        })
        .clone()
}

/// Builds a server configuration that requires a client certificate
/// checked by `verifier` and presents the certificate from `certificate`
/// (usually a [`crate::RenewingCertificate`]). `alpn` lists the protocols
/// to offer, such as `h2` and `http/1.1`.
pub fn server_config(
    certificate: Arc<dyn ResolvesServerCert>,
    verifier: Arc<PlatformClientVerifier>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, IdentityError> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificate);
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Builds a server configuration without client authentication, for the
/// few listeners that browsers reach (the customer consent page). Every
/// other part of the policy is the same as [`server_config`].
pub fn public_server_config(
    certificate: Arc<dyn ResolvesServerCert>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, IdentityError> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Builds a client configuration that trusts only the platform root
/// `root` and presents the client certificate from `certificate`.
pub fn client_config(
    root: &CertificateDer<'static>,
    certificate: Arc<dyn ResolvesClientCert>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, IdentityError> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone())?;
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_root_certificates(roots)
        .with_client_cert_resolver(certificate);
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_offers_only_aead_ecdhe_suites() {
        let names: Vec<String> = crypto_provider().cipher_suites.iter().map(|s| format!("{:?}", s.suite())).collect();
        assert_eq!(names.len(), 6, "{names:?}");
        for name in &names {
            assert!(name.contains("GCM") || name.contains("CHACHA20_POLY1305"), "{name} is not AEAD");
            assert!(!name.contains("CBC"), "{name} is CBC");
            assert!(name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_ECDSA_"), "{name}");
        }
    }
}
