//! Leaf issuance by the intermediate CA.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::IdentityError;
use crate::ca::{INTERMEDIATE_CERT, INTERMEDIATE_KEY, ROOT_CERT, read_cert, read_key, serial_of, trust_domain_of};
use crate::pin::spki_pin;
use crate::spiffe::{SpiffeId, TrustDomain};
use portcullis_store::{CertificateKind, CertificateRecord, Store};

/// Maximum leaf lifetime: 397 days, the CA/Browser Forum's limit
/// for server certificates (Baseline Requirements section 6.3.2).
pub const MAX_LIFETIME: Duration = Duration::from_secs(397 * 24 * 3600);

/// Leaf lifetimes per kind and the renewal point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lifetimes {
    /// Lifetime of platform component certificates (default 1 h).
    pub platform: Duration,
    /// Lifetime of app certificates (default 24 h).
    pub app: Duration,
    /// Lifetime of platform service certificates (default 24 h).
    pub service: Duration,
    /// Fraction of a lifetime after which a leaf is renewed (default 2/3).
    pub renew_at: f64,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            platform: Duration::from_secs(3600),
            app: Duration::from_secs(24 * 3600),
            service: Duration::from_secs(24 * 3600),
            renew_at: 2.0 / 3.0,
        }
    }
}

impl Lifetimes {
    /// Takes the lifetimes from the configuration's `[identity]` section.
    /// Services get the app lifetime: both are workloads outside Portcullis.
    pub fn from_settings(settings: &portcullis_config::IdentitySettings) -> Self {
        Self {
            platform: settings.platform_cert_lifetime,
            app: settings.app_cert_lifetime,
            service: settings.app_cert_lifetime,
            renew_at: settings.renew_at,
        }
    }

    /// The default lifetime of a leaf of `kind`.
    pub fn of(&self, kind: CertificateKind) -> Duration {
        match kind {
            CertificateKind::App => self.app,
            CertificateKind::Service => self.service,
            CertificateKind::Platform => self.platform,
        }
    }
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// The SPIFFE id, the leaf's only URI SAN.
    pub identity: SpiffeId,
    /// DNS names (or IP addresses) for a server certificate; empty for a
    /// certificate used only as a client.
    pub dns_names: Vec<String>,
    /// Validity length.
    pub lifetime: Duration,
    /// Validity start; `None` means now. Tests set it in the past to get an
    /// expired certificate.
    pub valid_from: Option<SystemTime>,
}

impl LeafRequest {
    /// A request for `identity` with the default lifetime of its kind.
    pub fn new(identity: SpiffeId, lifetimes: &Lifetimes) -> Self {
        let lifetime = lifetimes.of(identity.kind());
        Self { identity, dns_names: Vec::new(), lifetime, valid_from: None }
    }

    /// Adds DNS names or IP addresses as SANs.
    pub fn with_dns_names(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.dns_names.extend(names.into_iter().map(Into::into));
        self
    }

    /// Sets the lifetime.
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Sets the validity start.
    pub fn valid_from(mut self, start: SystemTime) -> Self {
        self.valid_from = Some(start);
        self
    }
}

/// An issued leaf with its private key.
///
/// `Debug` omits the key, so logging this value never leaks it.
#[derive(Clone)]
pub struct IssuedLeaf {
    identity: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key_pkcs8: Arc<Vec<u8>>,
    serial: String,
    spki_pin: String,
    not_before: SystemTime,
    not_after: SystemTime,
    root_pem: Arc<String>,
}

impl fmt::Debug for IssuedLeaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedLeaf")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial)
            .field("spki_pin", &self.spki_pin)
            .finish_non_exhaustive()
    }
}

impl IssuedLeaf {
    /// The SPIFFE id.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// Serial number, lowercase hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// SPKI pin (RFC 7469 `pin-sha256`).
    pub fn spki_pin(&self) -> &str {
        &self.spki_pin
    }

    /// Validity start.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// Validity end.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The leaf followed by the intermediate, the chain a peer presents.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf and the intermediate as PEM (`cert.pem`).
    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(|der| pem_encode("CERTIFICATE", der)).collect()
    }

    /// The private key as PKCS#8 PEM (`key.pem`). Write it with mode 0600.
    pub fn key_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.key_pkcs8)
    }

    /// The root certificate as PEM (`ca-bundle.pem`), the only trust anchor
    /// a peer needs.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The private key as DER, for rustls.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.as_ref().clone()))
    }

    /// The chain and key as a rustls signing identity.
    pub fn certified_key(&self) -> Result<CertifiedKey, IdentityError> {
        Ok(CertifiedKey::from_der(self.chain.clone(), self.key_der(), &crate::policy::crypto_provider())?)
    }

    /// The store row recording this leaf.
    pub fn record(&self) -> CertificateRecord {
        CertificateRecord {
            serial: self.serial.clone(),
            identity: self.identity.to_string(),
            kind: self.identity.kind(),
            subject: self.identity.name().to_owned(),
            spki_sha256: self.spki_pin.clone(),
            not_before: portcullis_store::unix_ms(self.not_before),
            not_after: portcullis_store::unix_ms(self.not_after),
            issued_at: portcullis_store::now_ms(),
            revoked_at: None,
            revocation_reason: None,
        }
    }

    /// Writes `cert.pem`, `key.pem` (mode 0600) and `ca-bundle.pem` into
    /// `dir`, creating it (mode 0700) if needed, and returns the paths.
    pub fn write_files(&self, dir: &Path) -> Result<[PathBuf; 3], IdentityError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(IdentityError::io("create", dir))?;

        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let bundle = dir.join("ca-bundle.pem");
        std::fs::write(&cert, self.chain_pem()).map_err(IdentityError::io("write", &cert))?;
        crate::ca::write_private(&key, self.key_pem().as_bytes())?;
        std::fs::write(&bundle, self.root_pem.as_bytes()).map_err(IdentityError::io("write", &bundle))?;
        Ok([cert, key, bundle])
    }
}

/// Encodes DER as PEM with 64-character lines (RFC 7468 section 2).
fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The issuing side of the platform CA: the intermediate certificate and
/// key, and the root certificate (not its key) for the trust bundle.
pub struct PlatformCa {
    trust_domain: TrustDomain,
    root: CertificateDer<'static>,
    root_pem: Arc<String>,
    intermediate: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

impl fmt::Debug for PlatformCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformCa").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

impl PlatformCa {
    /// Loads the CA from `dir`, reading only the root certificate and the
    /// intermediate certificate and key: the root key may be offline.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let root_path = dir.join(ROOT_CERT);
        let root = read_cert(&root_path)?;
        let trust_domain = trust_domain_of(&root_path, &root)?;

        let intermediate_path = dir.join(INTERMEDIATE_CERT);
        let intermediate = read_cert(&intermediate_path)?;
        let intermediate_domain = trust_domain_of(&intermediate_path, &intermediate)?;
        if intermediate_domain != trust_domain {
            return Err(IdentityError::InvalidCa {
                path: intermediate_path,
                reason: format!("its trust domain {intermediate_domain} differs from the root's {trust_domain}"),
            });
        }

        let key_path = dir.join(INTERMEDIATE_KEY);
        let key = read_key(&key_path)?;
        check_key_matches(&intermediate_path, &intermediate, &key)?;
        let issuer = rcgen::Issuer::from_ca_cert_der(&intermediate, key)
            .map_err(|e| IdentityError::InvalidCa { path: intermediate_path, reason: e.to_string() })?;

        let root_pem = Arc::new(pem_encode("CERTIFICATE", &root));
        Ok(Self { trust_domain, root, root_pem, intermediate, issuer })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root certificate, the trust anchor of every listener and client.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// Issues a leaf: a new ECDSA P-256 key, signed with ECDSA-SHA256 by the
    /// intermediate, with the SPIFFE id as its only URI SAN, usable as TLS
    /// server and client (RFC 5280 section 4.2.1.12).
    pub fn issue(&self, request: &LeafRequest) -> Result<IssuedLeaf, IdentityError> {
        if request.identity.trust_domain() != &self.trust_domain {
            return Err(IdentityError::InvalidName {
                what: "trust domain",
                value: request.identity.trust_domain().to_string(),
                rule: format!("this CA issues only for {}", self.trust_domain),
            });
        }
        if request.lifetime.is_zero() || request.lifetime > MAX_LIFETIME {
            return Err(IdentityError::InvalidLifetime { seconds: request.lifetime.as_secs() });
        }

        let identity = request.identity.to_string();
        let failed = |source| IdentityError::Certificate { identity: identity.clone(), source };

        // X.509 times have whole seconds; truncating here keeps the
        // returned validity equal to the validity in the certificate.
        let start = request.valid_from.unwrap_or_else(SystemTime::now);
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(portcullis_store::unix_ms(start).max(0) as u64 / 1000);
        let end = start + Duration::from_secs(request.lifetime.as_secs().max(1));

        let mut params = CertificateParams::default();
        params.not_before = start.into();
        params.not_after = end.into();
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;

        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, self.trust_domain.as_str());
        name.push(DnType::CommonName, request.identity.name());
        params.distinguished_name = name;

        params.subject_alt_names.push(SanType::URI(identity.clone().try_into().map_err(failed)?));
        for dns in &request.dns_names {
            params.subject_alt_names.push(dns_san(dns)?);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];

        let key = crate::ca::new_key(&identity)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(failed)?;

        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let leaf = IssuedLeaf {
            identity: request.identity.clone(),
            serial: serial_of(cert.der())?,
            spki_pin: spki_pin(&spki),
            chain: vec![cert.der().clone(), self.intermediate.clone()],
            key_pkcs8: Arc::new(key.serialize_der()),
            not_before: start,
            not_after: end,
            root_pem: self.root_pem.clone(),
        };
        tracing::debug!(identity = %leaf.identity, serial = %leaf.serial, "leaf issued");
        Ok(leaf)
    }

    /// Issues a leaf and records it in the store with its SPKI pin. This is
    /// the call for deploys and renewals: a leaf not in the store fails
    /// the pin check of app-facing listeners.
    pub async fn issue_and_record(&self, store: &Store, request: &LeafRequest) -> Result<IssuedLeaf, IdentityError> {
        let leaf = self.issue(request)?;
        store.insert_certificate(&leaf.record()).await?;
        tracing::info!(identity = %leaf.identity, serial = %leaf.serial, "leaf issued and recorded");
        Ok(leaf)
    }
}

/// A DNS SAN, or an IP SAN when `value` parses as an IP address. The
/// syntax check is rustls-pki-types', the same one TLS clients apply to the
/// name they connect to.
fn dns_san(value: &str) -> Result<SanType, IdentityError> {
    let invalid = || IdentityError::InvalidDnsName { value: value.to_owned() };
    match rustls_pki_types::ServerName::try_from(value).map_err(|_| invalid())? {
        rustls_pki_types::ServerName::IpAddress(ip) => Ok(SanType::IpAddress(std::net::IpAddr::from(ip))),
        rustls_pki_types::ServerName::DnsName(name) => {
            let name = name.as_ref().to_ascii_lowercase().try_into().map_err(|_| invalid())?;
            Ok(SanType::DnsName(name))
        }
        _ => Err(invalid()),
    }
}

/// A random 16-byte serial (RFC 5280 section 4.1.2.2 allows up to 20).
/// The top bit is cleared so the DER INTEGER is positive without a pad
/// byte, and the next bit set so it never shrinks; 126 bits stay random.
pub(crate) fn random_serial() -> Result<SerialNumber, IdentityError> {
    let mut bytes = [0u8; 16];
    crate::policy::crypto_provider().secure_random.fill(&mut bytes).map_err(|_| IdentityError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Checks that the intermediate's key belongs to its certificate.
fn check_key_matches(path: &Path, cert: &[u8], key: &KeyPair) -> Result<(), IdentityError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| IdentityError::InvalidCa { path: path.to_owned(), reason: e.to_string() })?;
    let spki = rcgen::PublicKeyData::subject_public_key_info(key);
    if parsed.public_key().raw != spki.as_slice() {
        return Err(IdentityError::InvalidCa {
            path: path.to_owned(),
            reason: format!("its public key does not match {INTERMEDIATE_KEY}"),
        });
    }
    Ok(())
}
