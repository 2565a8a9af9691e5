//! TLS configurations built from the PEM files the platform issues
//! (`cert.pem`, `key.pem`, `ca-bundle.pem`), with the platform's crypto
//! provider and protocol versions.

use std::path::Path;
use std::sync::Arc;

use portcullis_identity::policy;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A failure to read credentials or build a TLS configuration.
#[derive(Debug)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("cannot read certificates from {}: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(TlsError(format!("no certificate in {}", path.display())));
    }
    Ok(certificates)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError(format!("cannot read the key {}: {e}", path.display())))
}

fn roots(ca_bundle: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(ca_bundle)? {
        roots
            .add(certificate)
            .map_err(|e| TlsError(format!("invalid CA certificate in {}: {e}", ca_bundle.display())))?;
    }
    Ok(roots)
}

/// Builds a server configuration that presents `cert`/`key` and requires a client
/// certificate issued under the roots in `ca_bundle` (the gateway's).
///
/// NOTE: any certificate from the platform CA is accepted, because the
/// client's SPIFFE id is not checked. On the process driver another platform
/// component could therefore call the service directly.
pub fn server_config(cert: &Path, key: &Path, ca_bundle: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(ca_bundle)?),
        policy::crypto_provider(),
    )
    .build()
    .map_err(|e| TlsError(format!("cannot build the client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(policy::crypto_provider())
        .with_protocol_versions(policy::PROTOCOL_VERSIONS)
        .map_err(|e| TlsError(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .map_err(|e| TlsError(format!("invalid certificate or key {}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Builds a client configuration that trusts only the roots in `ca_bundle` and
/// presents `cert`/`key`, speaking HTTP/1.1.
pub fn client_config(cert: &Path, key: &Path, ca_bundle: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(policy::crypto_provider())
        .with_protocol_versions(policy::PROTOCOL_VERSIONS)
        .map_err(|e| TlsError(e.to_string()))?
        .with_root_certificates(roots(ca_bundle)?)
        .with_client_auth_cert(certificates(cert)?, private_key(key)?)
        .map_err(|e| TlsError(format!("invalid certificate or key {}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
