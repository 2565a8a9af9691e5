//! Minting access tokens.

use std::sync::{Arc, RwLock};

use aws_lc_rs::rand::SecureRandom;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Header};

use crate::claims::{AccessClaims, Confirmation, certificate_thumbprint};
use crate::keys::SigningKeys;
use crate::{ACCESS_TOKEN_TYPE, TokenError};

/// A token request. The caller has already authenticated the app and
/// checked that `scopes` are granted to it on `audience`.
#[derive(Debug, Clone)]
pub struct TokenRequest<'a> {
    /// The app id (the token's `sub` and `client_id`).
    pub app_id: &'a str,
    /// The service's SPIFFE id (the token's `aud`).
    pub audience: &'a str,
    /// Granted scopes.
    pub scopes: &'a [String],
    /// DER of the certificate the app authenticated with.
    pub certificate_der: &'a [u8],
}

/// Mints ES256 access tokens with the current signing key.
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    issuer: String,
    lifetime_secs: i64,
    keys: Arc<RwLock<SigningKeys>>,
    random: aws_lc_rs::rand::SystemRandom,
}

impl TokenIssuer {
    /// Creates an issuer named `issuer` (the `iss` claim) whose tokens live
    /// `lifetime_secs` seconds.
    pub fn new(issuer: impl Into<String>, lifetime_secs: i64, keys: Arc<RwLock<SigningKeys>>) -> Self {
        Self { issuer: issuer.into(), lifetime_secs, keys, random: aws_lc_rs::rand::SystemRandom::new() }
    }

    /// Returns the `iss` value.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Token lifetime in seconds.
    pub fn lifetime_secs(&self) -> i64 {
        self.lifetime_secs
    }

    /// Returns the signing keys, shared with the JWKS endpoint and rotation.
    pub fn keys(&self) -> &Arc<RwLock<SigningKeys>> {
        &self.keys
    }

    /// Mints a token at `now` (seconds since the Unix epoch) and returns it
    /// with its claims.
    pub fn issue(&self, request: &TokenRequest<'_>, now: i64) -> Result<(String, AccessClaims), TokenError> {
        let mut jti = [0_u8; 16];
        self.random.fill(&mut jti).map_err(|_| TokenError::Sign {
            app_id: request.app_id.to_owned(),
            reason: "random number generator failed".into(),
        })?;

        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: request.app_id.to_owned(),
            aud: request.audience.to_owned(),
            scope: request.scopes.join(" "),
            client_id: request.app_id.to_owned(),
            iat: now,
            nbf: now,
            exp: now + self.lifetime_secs,
            jti: URL_SAFE_NO_PAD.encode(jti),
            cnf: Confirmation { x5t_s256: certificate_thumbprint(request.certificate_der) },
        };

        let keys = self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(ACCESS_TOKEN_TYPE.into());
        header.kid = Some(keys.current_kid().to_owned());
        let token = jsonwebtoken::encode(&header, &claims, keys.current_encoding_key())
            .map_err(|e| TokenError::Sign { app_id: request.app_id.to_owned(), reason: e.to_string() })?;
        Ok((token, claims))
    }
}
