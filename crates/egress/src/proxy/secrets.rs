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

/// How long a stored secret hash read by [`ProxySecrets::verify`] is
/// reused. Reading it from the store on every CONNECT, a hand-off to the
/// store's worker thread, was the largest cost of a tunnel setup.
pub const SECRET_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Issues, rotates, revokes and verifies the apps' proxy secrets in the
/// store. Cheap to clone, and clones share the cache of stored hashes.
///
/// NOTE: a secret issued or revoked through this value takes effect at
/// once. One issued or revoked by another process (another `ProxySecrets`)
/// takes effect within [`SECRET_CACHE_TTL`].
#[derive(Debug, Clone)]
pub struct ProxySecrets {
    store: Store,
    /// Stored hashes by app id, with the time they were read. Only apps
    /// that have a secret are cached, so the map is bounded by the
    /// registered apps, whatever ids callers present.
    cache: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>>,
}

impl ProxySecrets {
    /// Uses `store` for the secrets' hashes.
    pub fn new(store: Store) -> Self {
        Self { store, cache: Default::default() }
    }

    fn forget(&self, app_id: &AppId) {
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(app_id.as_str());
    }

    /// Returns the stored hash of `app_id`, from the cache while it is fresh.
    async fn stored_hash(&self, app_id: &AppId) -> Result<Option<String>, ProxyError> {
        {
            let cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((hash, read_at)) = cache.get(app_id.as_str())
                && read_at.elapsed() < SECRET_CACHE_TTL
            {
                return Ok(Some(hash.clone()));
            }
        }
        let stored = self.store.proxy_secret(app_id.as_str()).await.map_err(store_error(app_id))?;
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match &stored {
            Some(record) => {
                cache.insert(app_id.as_str().to_owned(), (record.secret_hash.clone(), std::time::Instant::now()));
            }
            None => {
                cache.remove(app_id.as_str());
            }
        }
        Ok(stored.map(|record| record.secret_hash))
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
        self.forget(app_id);
        tracing::info!(app_id = %app_id, "egress proxy secret issued");
        Ok(ProxySecret(secret))
    }

    /// Stores `secret`, chosen by the operator, as the secret of `app_id`.
    /// An earlier secret stops working at once. Prefer [`issue`](Self::issue),
    /// whose secrets are 32 random bytes.
    pub async fn set(&self, app_id: &AppId, secret: &str) -> Result<(), ProxyError> {
        self.store
            .set_proxy_secret(app_id.as_str(), &hash_secret(secret), now_ms())
            .await
            .map_err(store_error(app_id))?;
        self.forget(app_id);
        tracing::info!(app_id = %app_id, "egress proxy secret set by the operator");
        Ok(())
    }

    /// Revokes the secret of `app_id`. Returns false if it had none.
    pub async fn revoke(&self, app_id: &AppId) -> Result<bool, ProxyError> {
        let removed = self.store.remove_proxy_secret(app_id.as_str()).await.map_err(store_error(app_id))?;
        self.forget(app_id);
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
        let stored = self.stored_hash(app_id).await?;
        let presented_hash = hash_secret(presented);

        let (expected, exists) = match &stored {
            Some(hash) => (hash.as_str(), true),
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
    hex::encode(digest(&SHA256, secret.as_bytes()))
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
