//! The identity layer of Portcullis: the platform's own CA, leaf
//! issuance, rotation, revocation, SPKI pins and the one TLS policy that
//! every listener and client uses.
//!
//! - [`init_ca`] creates a root and an intermediate CA on disk;
//!   [`PlatformCa::load`] needs only the intermediate to issue, so the root
//!   key can stay offline.
//! - [`PlatformCa::issue_and_record`] issues an ECDSA P-256 leaf whose only
//!   URI SAN is a [`SpiffeId`] and records it with its SPKI pin.
//! - [`RenewingCertificate`] serves the current leaf to rustls and renews
//!   it at a fraction of its life.
//! - [`PlatformClientVerifier`] checks chain, SPIFFE id, revocation and,
//!   for apps, the pin; [`TrustCache`] keeps the store's revocations and
//!   pins in memory, reloaded every second.
//! - [`policy`] builds the server and client configurations.
//!
//! Not provided: CRLs or OCSP for parties outside the platform (peers learn
//! about revocation only through the store), rotation of the intermediate
//! (re-run `portcullis ca init --force`), and listeners without client
//! certificates.

mod ca;
mod error;
mod issue;
mod pin;
pub mod policy;
mod rotation;
mod spiffe;
mod trust;
mod verifier;

pub use ca::{
    CaSummary, INTERMEDIATE_CERT, INTERMEDIATE_KEY, INTERMEDIATE_LIFETIME, ROOT_CERT, ROOT_KEY, ROOT_LIFETIME, init_ca,
    write_private,
};
pub use error::IdentityError;
pub use issue::{IssuedLeaf, LeafRequest, Lifetimes, MAX_LIFETIME, PlatformCa};
pub use pin::{serial_hex, spki_pin};
pub use portcullis_store::CertificateKind;
pub use rotation::{RenewalGuard, RenewingCertificate};
pub use spiffe::{SpiffeId, TrustDomain};
pub use trust::{MAX_STALENESS, REFRESH_INTERVAL, RefresherGuard, TrustCache, TrustVerdict};
pub use verifier::{PlatformAcceptor, PlatformClientVerifier, VerifiedPeer};

/// Name of the CA directory inside the data directory.
pub const CA_DIR: &str = "ca";
