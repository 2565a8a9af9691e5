//! Token signing keys: generation, rotation, retirement and the JWKS.
//!
//! Keys are ECDSA P-256 and tokens are signed ES256 (RFC 7518 section 3.4),
//! which every mainstream JOSE library verifies. A rotated key stops
//! signing at once but stays published, and accepted by verifiers, for a
//! grace period: the longest token lifetime plus the clock leeway, so every
//! token it signed has expired by the time it disappears.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};

use crate::TokenError;

/// One signing key. The private half never leaves this struct except into
/// the key file (mode 0600).
#[derive(Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// PKCS#8 DER of the private key, base64.
    pkcs8: String,
    /// Creation time, seconds since the Unix epoch.
    created_at: i64,
    /// When the key stopped signing, seconds since the Unix epoch.
    retired_at: Option<i64>,
}

/// The signing keys of the token service: exactly one current key and any
/// number of retired keys still inside their grace period.
pub struct SigningKeys {
    keys: Vec<StoredKey>,
    current: EncodingKey,
    grace_secs: i64,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|k| k.kid.as_str()).collect();
        f.debug_struct("SigningKeys").field("kids", &kids).field("grace_secs", &self.grace_secs).finish()
    }
}

/// A public key as verifiers see it.
#[derive(Debug, Clone)]
pub struct PublicKey {
    /// Key id, the JWS `kid` header.
    pub kid: String,
    /// Uncompressed P-256 point coordinates, base64url.
    pub x: String,
    /// See `x`.
    pub y: String,
    /// When the key stopped signing, seconds since the Unix epoch.
    pub retired_at: Option<i64>,
}

impl PublicKey {
    /// Returns the key as a JWK (RFC 7517 section 4, RFC 7518 section 6.2).
    pub fn to_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": self.x,
            "y": self.y,
            "kid": self.kid,
            "use": "sig",
            "alg": "ES256",
        })
    }

    pub(crate) fn decoding_key(&self) -> Result<DecodingKey, TokenError> {
        DecodingKey::from_ec_components(&self.x, &self.y)
            .map_err(|e| TokenError::Key { kid: self.kid.clone(), reason: e.to_string() })
    }
}

fn generate(now: i64) -> Result<StoredKey, TokenError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| TokenError::Key { kid: "(new)".into(), reason: "key generation failed".into() })?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .map_err(|e| TokenError::Key { kid: "(new)".into(), reason: e.to_string() })?;

    // The kid is the RFC 7638 thumbprint's first 16 characters: stable for
    // the key, and unrelated to creation order.
    let public = public_of(&pair);
    let thumbprint_input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#, public.0, public.1);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, thumbprint_input.as_bytes());
    let kid = URL_SAFE_NO_PAD.encode(digest.as_ref())[..16].to_owned();

    Ok(StoredKey { kid, pkcs8: STANDARD.encode(pkcs8.as_ref()), created_at: now, retired_at: None })
}

/// Returns the base64url x and y coordinates of a P-256 key pair.
fn public_of(pair: &EcdsaKeyPair) -> (String, String) {
    // An uncompressed SEC1 point: 0x04, then 32 bytes of x and 32 of y.
    let point = pair.public_key().as_ref();
    (URL_SAFE_NO_PAD.encode(&point[1..33]), URL_SAFE_NO_PAD.encode(&point[33..65]))
}

fn pkcs8_of(key: &StoredKey) -> Result<Vec<u8>, TokenError> {
    STANDARD.decode(&key.pkcs8).map_err(|e| TokenError::Key { kid: key.kid.clone(), reason: e.to_string() })
}

impl SigningKeys {
    /// Creates a key set with one fresh key. `grace_secs` is how long a
    /// retired key stays published: the longest token lifetime plus leeway.
    pub fn generate(now: i64, grace_secs: i64) -> Result<Self, TokenError> {
        let key = generate(now)?;
        Self::from_keys(vec![key], grace_secs)
    }

    fn from_keys(keys: Vec<StoredKey>, grace_secs: i64) -> Result<Self, TokenError> {
        let current = keys.iter().find(|k| k.retired_at.is_none()).ok_or_else(|| TokenError::Key {
            kid: "(none)".into(),
            reason: "no current signing key in the key file".into(),
        })?;
        let encoding = EncodingKey::from_ec_der(&pkcs8_of(current)?);
        Ok(Self { keys, current: encoding, grace_secs })
    }

    /// Loads the key file at `path`, or creates it with one fresh key.
    pub fn load_or_create(path: &Path, now: i64, grace_secs: i64) -> Result<Self, TokenError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let keys: Vec<StoredKey> = serde_json::from_slice(&bytes)
                    .map_err(|e| TokenError::KeyFile { path: path.to_owned(), reason: e.to_string() })?;
                Self::from_keys(keys, grace_secs)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let keys = Self::generate(now, grace_secs)?;
                keys.save(path)?;
                Ok(keys)
            }
            Err(error) => Err(TokenError::KeyFile { path: path.to_owned(), reason: error.to_string() }),
        }
    }

    /// Writes the key file with mode 0600, replacing it atomically.
    pub fn save(&self, path: &Path) -> Result<(), TokenError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;

        let fail = |e: std::io::Error| TokenError::KeyFile { path: path.to_owned(), reason: e.to_string() };
        let json = serde_json::to_vec_pretty(&self.keys).expect("keys serialise");
        let temporary = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(fail)?;
        file.write_all(&json).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&temporary, path).map_err(fail)
    }

    /// Returns the id of the key that signs new tokens.
    pub fn current_kid(&self) -> &str {
        &self.keys.iter().find(|k| k.retired_at.is_none()).expect("one current key").kid
    }

    /// When the current key was created, seconds since the Unix epoch.
    pub fn current_created_at(&self) -> i64 {
        self.keys.iter().find(|k| k.retired_at.is_none()).expect("one current key").created_at
    }

    pub(crate) fn current_encoding_key(&self) -> &EncodingKey {
        &self.current
    }

    /// Makes a fresh key current and retires the previous one at `now`, then
    /// drops keys whose grace period has ended. Returns the new key id.
    pub fn rotate(&mut self, now: i64) -> Result<String, TokenError> {
        let fresh = generate(now)?;
        let encoding = EncodingKey::from_ec_der(&pkcs8_of(&fresh)?);
        for key in &mut self.keys {
            key.retired_at.get_or_insert(now);
        }
        let kid = fresh.kid.clone();
        self.keys.push(fresh);
        self.current = encoding;
        self.prune(now);
        tracing::info!(kid = %kid, "token signing key rotated");
        Ok(kid)
    }

    /// Drops retired keys whose grace period ended before `now`.
    pub fn prune(&mut self, now: i64) {
        let grace = self.grace_secs;
        self.keys.retain(|k| k.retired_at.is_none_or(|retired| retired + grace > now));
    }

    /// Returns the public keys to publish at `now`: the current key and retired
    /// keys inside their grace period.
    pub fn public_keys(&self, now: i64) -> Vec<PublicKey> {
        self.keys
            .iter()
            .filter(|k| k.retired_at.is_none_or(|retired| retired + self.grace_secs > now))
            .filter_map(|k| {
                let pkcs8 = pkcs8_of(k).ok()?;
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8).ok()?;
                let (x, y) = public_of(&pair);
                Some(PublicKey { kid: k.kid.clone(), x, y, retired_at: k.retired_at })
            })
            .collect()
    }

    /// Returns the JWKS document (RFC 7517 section 5) at `now`.
    pub fn jwks(&self, now: i64) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self.public_keys(now).iter().map(PublicKey::to_jwk).collect();
        serde_json::json!({ "keys": keys })
    }

    /// Grace period of retired keys, in seconds.
    pub fn grace_secs(&self) -> i64 {
        self.grace_secs
    }
}
