//! Per-app proxy secrets: issued at random, stored only as SHA-256,
//! compared in constant time.

use std::fmt;
use std::net::SocketAddr;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_config::AppId;
use portcullis_store::{Store, StoreError, now_ms};

use super::error::ProxyError;

/// Length of a proxy secret before encoding, in bytes.
pub const SECRET_BYTES: usize = 32;

/// A proxy secret in clear: 32 random bytes, base64url without padding
/// (43 characters, safe in a URL's userinfo without escaping). It exists
/// only when issued; its `Debug` output hides the value.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxySecret(String);

impl ProxySecret {
    /// Returns the secret, to hand to the app's container.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Returns the proxy URL an app sets as `HTTP_PROXY` and `HTTPS_PROXY`:
    /// `http://APP_ID:SECRET@ADDRESS`.
    pub fn proxy_url(&self, app_id: &AppId, proxy: SocketAddr) -> String {
        format!("http://{app_id}:{}@{proxy}", self.0)
    }
}

impl fmt::Debug for ProxySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProxySecret(..)")
    }
}

/// Issues, rotates, revokes and verifies the apps' proxy secrets in the
/// store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProxySecrets {
    store: Store,
}

impl ProxySecrets {
    /// Uses `store` for the secrets' hashes.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Issues a new secret for `app_id` and returns it. This is the only
    /// time the secret is seen in clear. An earlier secret of the app stops
    /// working at once, so the runtime calls this at deploy and starts the
    /// container with the new secret.
    ///
    /// NOTE: one secret is valid per app, so a container still running
    /// from the previous deploy loses egress when the next deploy issues
    /// its secret.
    pub async fn issue(&self, app_id: &AppId) -> Result<ProxySecret, ProxyError> {
        let mut bytes = [0u8; SECRET_BYTES];
        SystemRandom::new().fill(&mut bytes).expect("the system random number generator is available");
        let secret = URL_SAFE_NO_PAD.encode(bytes);

        self.store
            .set_proxy_secret(app_id.as_str(), &hash_secret(&secret), now_ms())
            .await
            .map_err(store_error(app_id))?;
        tracing::info!(app_id = %app_id, "egress proxy secret issued");
        Ok(ProxySecret(secret))
    }

    /// Revokes the secret of `app_id`. Returns false if it had none.
    pub async fn revoke(&self, app_id: &AppId) -> Result<bool, ProxyError> {
        let removed = self.store.remove_proxy_secret(app_id.as_str()).await.map_err(store_error(app_id))?;
        if removed {
            tracing::info!(app_id = %app_id, "egress proxy secret revoked");
        }
        Ok(removed)
    }

    /// Returns whether `presented` is the current secret of `app_id`. The
    /// hashes are compared in constant time. For an app without a secret the
    /// comparison runs against a fixed hash, so it takes about as long as a
    /// wrong secret.
    pub async fn verify(&self, app_id: &AppId, presented: &str) -> Result<bool, ProxyError> {
        let stored = self.store.proxy_secret(app_id.as_str()).await.map_err(store_error(app_id))?;
        let presented_hash = hash_secret(presented);

        let (expected, exists) = match &stored {
            Some(record) => (record.secret_hash.as_str(), true),
            None => (NO_SECRET_HASH, false),
        };
        let equal =
            aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), presented_hash.as_bytes()).is_ok();
        Ok(equal && exists)
    }
}

/// A hash no secret has: 64 characters, but not hex.
const NO_SECRET_HASH: &str = "################################################################";

/// Returns the lowercase hex SHA-256 of `secret`, the form the store keeps.
fn hash_secret(secret: &str) -> String {
    let hash = digest(&SHA256, secret.as_bytes());
    hash.as_ref().iter().map(|byte| format!("{byte:02x}")).collect()
}

fn store_error(app_id: &AppId) -> impl FnOnce(StoreError) -> ProxyError + '_ {
    move |source| ProxyError::Store { app_id: app_id.to_string(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_lowercase_hex_sha256() {
        // SHA-256("abc") from FIPS 180-2, appendix B.1.
        assert_eq!(hash_secret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn placeholder_hash_has_hash_length() {
        assert_eq!(NO_SECRET_HASH.len(), hash_secret("").len());
    }

    #[test]
    fn debug_hides_secret() {
        let secret = ProxySecret("s3cret".into());
        assert_eq!(format!("{secret:?}"), "ProxySecret(..)");
    }
}
