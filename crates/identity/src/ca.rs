//! The platform CA on disk: an offline-capable root and an issuing
//! intermediate.
//!
//! Layout of the CA directory (mode 0700; keys mode 0600):
//!
//! | file | content | needed to issue |
//! | --- | --- | --- |
//! | `root.pem` | root certificate, the trust anchor | yes (the bundle) |
//! | `root-key.pem` | root private key (PKCS#8) | no: keep it offline |
//! | `intermediate.pem` | issuing CA certificate, signed by the root | yes |
//! | `intermediate-key.pem` | issuing CA private key (PKCS#8) | yes |
//!
//! Both CA certificates carry the trust domain's SPIFFE id
//! (`spiffe://<trust-domain>`) as their URI SAN, which SPIFFE X509-SVID
//! section 3 allows for signing certificates, so a loaded CA knows its
//! trust domain without a separate file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::IdentityError;
use crate::spiffe::TrustDomain;

/// File name of the root certificate in the CA directory.
pub const ROOT_CERT: &str = "root.pem";
/// File name of the root private key; issuing works without it.
pub const ROOT_KEY: &str = "root-key.pem";
/// File name of the intermediate (issuing) certificate.
pub const INTERMEDIATE_CERT: &str = "intermediate.pem";
/// File name of the intermediate private key.
pub const INTERMEDIATE_KEY: &str = "intermediate-key.pem";

/// Validity of the root certificate: 10 years.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of the intermediate certificate: 1 year.
pub const INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// What `init` created.
#[derive(Debug, Clone)]
pub struct CaSummary {
    /// The CA directory.
    pub dir: PathBuf,
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Serial of the root certificate, lowercase hex.
    pub root_serial: String,
    /// Serial of the intermediate certificate, lowercase hex.
    pub intermediate_serial: String,
    /// End of the intermediate's validity.
    pub intermediate_not_after: SystemTime,
}

/// Creates a root CA and an intermediate issuing CA for `trust_domain` in
/// `dir`.
///
/// Refuses with [`IdentityError::CaExists`] if any CA file is present,
/// unless `force` is set, in which case the old files are replaced.
/// Keys are ECDSA P-256, the same key type as the leaves, so every client
/// that accepts a leaf also accepts its chain.
pub fn init_ca(dir: &Path, trust_domain: &TrustDomain, force: bool) -> Result<CaSummary, IdentityError> {
    let existing = [ROOT_CERT, ROOT_KEY, INTERMEDIATE_CERT, INTERMEDIATE_KEY].iter().any(|f| dir.join(f).exists());
    if existing && !force {
        return Err(IdentityError::CaExists { dir: dir.to_owned() });
    }

    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(IdentityError::io("create", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(IdentityError::io("set permissions on", dir))?;

    let now = SystemTime::now();
    let root_key = new_key(&trust_domain.id())?;
    let mut root_params = ca_params(trust_domain, "Portcullis root CA", now, ROOT_LIFETIME)?;
    root_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    let root_cert = root_params.self_signed(&root_key).map_err(cert_error(trust_domain))?;
    let root_issuer = rcgen::Issuer::new(root_params, &root_key);

    let intermediate_key = new_key(&trust_domain.id())?;
    let mut intermediate_params = ca_params(trust_domain, "Portcullis issuing CA", now, INTERMEDIATE_LIFETIME)?;
    intermediate_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    intermediate_params.use_authority_key_identifier_extension = true;
    let intermediate_cert =
        intermediate_params.signed_by(&intermediate_key, &root_issuer).map_err(cert_error(trust_domain))?;

    write_public(&dir.join(ROOT_CERT), root_cert.pem().as_bytes())?;
    write_private(&dir.join(ROOT_KEY), root_key.serialize_pem().as_bytes())?;
    write_public(&dir.join(INTERMEDIATE_CERT), intermediate_cert.pem().as_bytes())?;
    write_private(&dir.join(INTERMEDIATE_KEY), intermediate_key.serialize_pem().as_bytes())?;

    tracing::info!(dir = %dir.display(), trust_domain = %trust_domain, "platform CA created");
    Ok(CaSummary {
        dir: dir.to_owned(),
        trust_domain: trust_domain.clone(),
        root_serial: serial_of(root_cert.der())?,
        intermediate_serial: serial_of(intermediate_cert.der())?,
        intermediate_not_after: now + INTERMEDIATE_LIFETIME,
    })
}

/// Parameters shared by the root and the intermediate.
fn ca_params(
    trust_domain: &TrustDomain,
    common_name: &str,
    now: SystemTime,
    lifetime: Duration,
) -> Result<CertificateParams, IdentityError> {
    let mut params = CertificateParams::default();
    params.serial_number = Some(crate::issue::random_serial()?);
    params.not_before = now.into();
    params.not_after = (now + lifetime).into();

    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, trust_domain.as_str());
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;

    let uri = trust_domain.id().try_into().map_err(cert_error(trust_domain))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// Generates an ECDSA P-256 key.
pub(crate) fn new_key(identity: &str) -> Result<KeyPair, IdentityError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|source| IdentityError::Certificate { identity: identity.to_owned(), source })
}

fn cert_error(trust_domain: &TrustDomain) -> impl Fn(rcgen::Error) -> IdentityError + '_ {
    move |source| IdentityError::Certificate { identity: trust_domain.id(), source }
}

/// Returns the serial of a DER certificate as lowercase hex.
pub(crate) fn serial_of(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::Parse { reason: e.to_string() })?;
    Ok(crate::pin::serial_hex(cert.raw_serial()))
}

/// Writes a file readable by everyone (certificates).
fn write_public(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    fs::write(path, contents).map_err(IdentityError::io("write", path))
}

/// Writes a file readable only by its owner (mode 0600), replacing any
/// existing file. The mode is set at creation, so the key is never
/// readable by others, even briefly.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(IdentityError::io("replace", path)(e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(IdentityError::io("create", path))?;
    file.write_all(contents).map_err(IdentityError::io("write", path))?;
    file.sync_all().map_err(IdentityError::io("write", path))
}

/// Reads the first certificate of a PEM file.
pub(crate) fn read_cert(path: &Path) -> Result<CertificateDer<'static>, IdentityError> {
    if !path.exists() {
        return Err(IdentityError::CaFileMissing { path: path.to_owned() });
    }
    CertificateDer::from_pem_file(path).map_err(|e| IdentityError::Pem { path: path.to_owned(), reason: e.to_string() })
}

/// Reads a PEM private key as an rcgen key pair.
pub(crate) fn read_key(path: &Path) -> Result<KeyPair, IdentityError> {
    if !path.exists() {
        return Err(IdentityError::CaFileMissing { path: path.to_owned() });
    }
    let text = fs::read_to_string(path).map_err(IdentityError::io("read", path))?;
    KeyPair::from_pem(&text).map_err(|e| IdentityError::Pem { path: path.to_owned(), reason: e.to_string() })
}

/// Reads the trust domain from a CA certificate's `spiffe://` URI SAN.
pub(crate) fn trust_domain_of(path: &Path, der: &[u8]) -> Result<TrustDomain, IdentityError> {
    let invalid = |reason: String| IdentityError::InvalidCa { path: path.to_owned(), reason };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| invalid(e.to_string()))?;
    if !cert.is_ca() {
        return Err(invalid("it is not a CA certificate".into()));
    }
    let san = cert.subject_alternative_name().map_err(|e| invalid(e.to_string()))?;
    let uri = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix("spiffe://"),
            _ => None,
        })
        .ok_or_else(|| invalid("it has no spiffe:// URI SAN naming the trust domain".into()))?;
    TrustDomain::parse(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_sets_modes_and_refuses_overwrite() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("ca");
        let domain = TrustDomain::parse("weather.example").unwrap();
        init_ca(&dir, &domain, false).unwrap();

        let mode = |name: &str| fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(mode(ROOT_KEY), 0o600);
        assert_eq!(mode(INTERMEDIATE_KEY), 0o600);

        let error = init_ca(&dir, &domain, false).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, IdentityError::CaExists { .. }), "{message}");
        assert!(message.contains(&dir.display().to_string()), "{message}");
        assert!(message.contains("--force"), "{message}");

        let before = fs::read(dir.join(ROOT_CERT)).unwrap();
        init_ca(&dir, &domain, true).unwrap();
        assert_ne!(fs::read(dir.join(ROOT_CERT)).unwrap(), before);
    }

    #[test]
    fn ca_certificates_carry_trust_domain() {
        let temp = tempfile::tempdir().unwrap();
        let domain = TrustDomain::parse("weather.example").unwrap();
        init_ca(temp.path(), &domain, false).unwrap();
        for file in [ROOT_CERT, INTERMEDIATE_CERT] {
            let path = temp.path().join(file);
            let der = read_cert(&path).unwrap();
            assert_eq!(trust_domain_of(&path, &der).unwrap(), domain);
        }
    }
}
