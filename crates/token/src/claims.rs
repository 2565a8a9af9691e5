//! The claims of an access token (RFC 9068 section 2.2).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// Claims of a Portcullis access token. Times are seconds since the Unix
/// epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer: the token service's URL.
    pub iss: String,
    /// Subject: the app id.
    pub sub: String,
    /// Audience: the SPIFFE id of the one service the token is for.
    pub aud: String,
    /// Space-separated scopes (RFC 6749 section 3.3).
    pub scope: String,
    /// OAuth client id; for apps it equals `sub`.
    pub client_id: String,
    /// Issued at.
    pub iat: i64,
    /// Not valid before.
    pub nbf: i64,
    /// Expiry.
    pub exp: i64,
    /// Unique token id, used for revocation.
    pub jti: String,
    /// Certificate binding.
    pub cnf: Confirmation,
}

impl AccessClaims {
    /// Iterates over the granted scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }
}

/// The `cnf` claim (RFC 7800) with the certificate thumbprint of RFC 8705.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// base64url SHA-256 of the DER client certificate.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// Computes the `x5t#S256` thumbprint of a DER certificate: the base64url
/// encoding, without padding, of its SHA-256 digest (RFC 8705 section 3.1).
pub fn certificate_thumbprint(certificate_der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, certificate_der);
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}
