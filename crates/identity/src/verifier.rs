//! The client-certificate verifier of app-facing listeners, and the
//! verified peer identity it hands to the application.
//!
//! A client certificate is accepted only if all of these hold, in order:
//!
//! 1. rustls-webpki builds a chain from it to the platform root, it is
//!    within its validity period and has the clientAuth extended key usage
//!    (RFC 5280 section 6). A certificate from another CA, or from an
//!    intermediate the platform root did not sign, fails here even if it
//!    names a platform SPIFFE id.
//! 2. It has exactly one URI SAN, a SPIFFE id of this trust domain with
//!    the path `/app/<id>`, `/service/<name>` or `/platform/<name>`
//!    (SPIFFE X509-SVID section 2 allows exactly one).
//! 3. Its serial is not revoked (see [`crate::trust`] for the refresh bound).
//! 4. For an app, its SPKI pin is one of the app's valid pins in the store,
//!    so only certificates the platform recorded at issue are accepted.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;

use crate::IdentityError;
use crate::pin::{serial_hex, spki_pin};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::trust::{TrustCache, TrustVerdict};

/// A peer whose client certificate passed [`PlatformClientVerifier`].
///
/// Only this crate constructs it, from a connection whose handshake the
/// verifier checked, so a function that takes a `VerifiedPeer` cannot be
/// called with an unchecked identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPeer {
    identity: SpiffeId,
    serial: String,
    spki_pin: String,
}

impl VerifiedPeer {
    /// The peer's SPIFFE id.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The app id, if the peer is an app.
    pub fn app_id(&self) -> Option<&str> {
        self.identity.app_id()
    }

    /// The certificate's serial, lowercase hex; check it against
    /// [`TrustCache::is_revoked`] to cut long-lived connections.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The certificate's SPKI pin.
    pub fn spki_pin(&self) -> &str {
        &self.spki_pin
    }
}

/// What a parsed client certificate claims, before the store checks.
struct Claims {
    identity: SpiffeId,
    serial: String,
    spki_pin: String,
}

/// Reads the SPIFFE id, serial and pin of a leaf and checks the SPIFFE id
/// against `trust_domain`. Returns the reason as text on failure.
fn claims_of(cert: &CertificateDer<'_>, trust_domain: &TrustDomain) -> Result<Claims, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| format!("unparsable certificate: {e}"))?;
    let san = parsed.subject_alternative_name().map_err(|e| format!("unparsable SAN extension: {e}"))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(format!("{} URI SANs, expected exactly one SPIFFE id", uris.len()));
    };
    let identity = SpiffeId::parse(uri).map_err(|e| e.to_string())?;
    if identity.trust_domain() != trust_domain {
        return Err(format!("SPIFFE id {identity} is outside trust domain {trust_domain}"));
    }
    Ok(Claims { identity, serial: serial_hex(parsed.raw_serial()), spki_pin: spki_pin(parsed.public_key().raw) })
}

/// The client-certificate verifier for every app-facing listener: the
/// four checks in the module documentation. Client certificates are
/// mandatory.
#[derive(Debug)]
pub struct PlatformClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    trust_domain: TrustDomain,
    cache: Arc<TrustCache>,
}

impl PlatformClientVerifier {
    /// Builds a verifier trusting only `root`, for SPIFFE ids in
    /// `trust_domain`, with revocations and pins from `cache`.
    pub fn new(
        root: &CertificateDer<'static>,
        trust_domain: TrustDomain,
        cache: Arc<TrustCache>,
    ) -> Result<Arc<Self>, IdentityError> {
        let mut roots = RootCertStore::empty();
        roots.add(root.clone())?;
        let chain = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::policy::crypto_provider())
            .build()
            .map_err(|e| IdentityError::TrustAnchor { reason: e.to_string() })?;
        Ok(Arc::new(Self { chain, trust_domain, cache }))
    }

    /// The trust cache this verifier consults.
    pub fn cache(&self) -> &Arc<TrustCache> {
        &self.cache
    }

    /// Reads the verified identity of a connection this verifier accepted.
    /// Returns `None` if the connection has no peer certificate (the
    /// handshake has not finished) or it does not parse.
    pub fn peer(&self, connection: &rustls::ServerConnection) -> Option<VerifiedPeer> {
        let leaf = connection.peer_certificates()?.first()?;
        let claims = claims_of(leaf, &self.trust_domain).ok()?;
        Some(VerifiedPeer { identity: claims.identity, serial: claims.serial, spki_pin: claims.spki_pin })
    }
}

impl ClientCertVerifier for PlatformClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Err(error) = self.chain.verify_client_cert(end_entity, intermediates, now) {
            tracing::info!(%error, "client certificate rejected: chain");
            return Err(error);
        }

        let claims = match claims_of(end_entity, &self.trust_domain) {
            Ok(claims) => claims,
            Err(reason) => {
                tracing::info!(%reason, "client certificate rejected: identity");
                return Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure));
            }
        };

        let app_pin = claims.identity.app_id().map(|app_id| (app_id, claims.spki_pin.as_str()));
        let verdict = self.cache.check(&claims.serial, app_pin);
        let app_id = claims.identity.app_id().unwrap_or_default();
        match verdict {
            TrustVerdict::Accepted => {
                tracing::debug!(identity = %claims.identity, serial = %claims.serial, "client certificate accepted");
                Ok(ClientCertVerified::assertion())
            }
            TrustVerdict::Revoked => {
                tracing::info!(identity = %claims.identity, app_id, serial = %claims.serial, "client certificate rejected: revoked");
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
            TrustVerdict::NotPinned => {
                tracing::info!(
                    identity = %claims.identity, app_id, serial = %claims.serial, pin = %claims.spki_pin,
                    "client certificate rejected: key is not among the app's pins"
                );
                Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
            }
            TrustVerdict::Stale => {
                tracing::warn!(serial = %claims.serial, "client certificate rejected: revocation list not loaded or stale");
                Err(rustls::Error::InvalidCertificate(CertificateError::UnknownRevocationStatus))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// A TLS acceptor built only from the platform policy and a
/// [`PlatformClientVerifier`]; every accepted stream comes with its
/// [`VerifiedPeer`].
#[derive(Clone)]
pub struct PlatformAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    verifier: Arc<PlatformClientVerifier>,
}

impl std::fmt::Debug for PlatformAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformAcceptor").finish_non_exhaustive()
    }
}

impl PlatformAcceptor {
    /// Builds an acceptor presenting `certificate`, with client
    /// certificates checked by `verifier` and ALPN protocols `alpn`.
    pub fn new(
        certificate: Arc<dyn rustls::server::ResolvesServerCert>,
        verifier: Arc<PlatformClientVerifier>,
        alpn: &[&[u8]],
    ) -> Result<Self, IdentityError> {
        let config = crate::policy::server_config(certificate, Arc::clone(&verifier), alpn)?;
        Ok(Self { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), verifier })
    }

    /// Runs the TLS handshake on `stream` and returns the TLS stream with
    /// the peer's verified identity.
    pub async fn accept<S>(&self, stream: S) -> std::io::Result<(tokio_rustls::server::TlsStream<S>, VerifiedPeer)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let tls = self.acceptor.accept(stream).await?;
        let peer = self.verifier.peer(tls.get_ref().1).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "verified client certificate has no readable SPIFFE id",
            )
        })?;
        Ok((tls, peer))
    }

    /// The verifier, for its trust cache.
    pub fn verifier(&self) -> &Arc<PlatformClientVerifier> {
        &self.verifier
    }
}
