//! The gateway's check of an access token.
//!
//! [`Verifier::verify`] applies every check in a fixed order and returns the
//! first failure as a [`RejectReason`]:
//!
//! 1. structure: three base64url parts and a JSON header;
//! 2. header: `alg` exactly `ES256` (the only algorithm accepted, so `none`
//!    and HMAC confusions fail here), `typ` exactly `at+jwt`, a `kid`;
//! 3. key: the `kid` is a published key, and a retired key is inside its
//!    grace period;
//! 4. signature, unless this exact token string passed steps 1 to 4 before
//!    (a bounded cache, because an app reuses a token for many requests and
//!    an ECDSA verification costs about 50 µs);
//! 5. claims: `iss`, then `nbf`, `iat` and `exp` with the leeway;
//! 6. invalidation: the `jti` is not revoked and the app has no cut-off at
//!    or after `iat`;
//! 7. audience: `aud` is the routed service;
//! 8. binding: `cnf.x5t#S256` equals the thumbprint of the client
//!    certificate of the connection the token arrived on.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::claims::{AccessClaims, certificate_thumbprint};
use crate::invalidation::InvalidationsHandle;
use crate::keys::PublicKey;
use crate::{ACCESS_TOKEN_TYPE, TokenError};

/// Why a token was rejected. The text is safe to log because it contains no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// Not a compact JWS with a JSON header and claims of the right shape.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// `alg` other than ES256.
    #[error("algorithm {0:?} is not accepted; tokens must be signed ES256")]
    Algorithm(String),
    /// `typ` other than `at+jwt`.
    #[error("token type {0:?} is not an access token (expected \"at+jwt\")")]
    TokenType(String),
    /// No published key has this id.
    #[error("unknown signing key id {0:?}")]
    UnknownKey(String),
    /// The key was retired longer ago than the grace period.
    #[error("signing key {0:?} was retired")]
    RetiredKey(String),
    /// The signature does not verify.
    #[error("invalid signature")]
    Signature,
    /// `iss` is not this platform's token service.
    #[error("issuer {0:?} is not this platform's token service")]
    Issuer(String),
    /// `aud` is not the service being called.
    #[error("token audience {got:?} does not match the service {expected:?}")]
    Audience {
        /// The token's audience.
        got: String,
        /// The routed service.
        expected: String,
    },
    /// `exp` has passed.
    #[error("token expired at {0}")]
    Expired(i64),
    /// `nbf` or `iat` is in the future.
    #[error("token not valid before {0}")]
    NotYetValid(i64),
    /// `cnf.x5t#S256` does not match the connection's client certificate.
    #[error("token is bound to another certificate")]
    CertificateMismatch,
    /// The token's id was revoked.
    #[error("token was revoked")]
    Revoked,
    /// The app's tokens issued up to a later time were invalidated.
    #[error("token was invalidated for app {0}")]
    Invalidated(String),
    /// The token does not carry the scope the route requires.
    #[error("token lacks scope {0:?}")]
    MissingScope(String),
}

impl RejectReason {
    /// The RFC 6750 section 3.1 error code: `insufficient_scope` for a missing
    /// scope (HTTP 403), `invalid_token` for everything else (HTTP 401).
    pub fn error_code(&self) -> &'static str {
        match self {
            Self::MissingScope(_) => "insufficient_scope",
            _ => "invalid_token",
        }
    }

    /// Returns a fixed sentence for RFC 6750's `error_description` that
    /// names the failed check. It contains no value from the token or the
    /// platform, so it is safe to show to the caller.
    pub fn description(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "the token is not a well-formed signed JWT",
            Self::Algorithm(_) => "the token is not signed with ES256",
            Self::TokenType(_) => "the token is not an access token (typ at+jwt)",
            Self::UnknownKey(_) => "the token's signing key is not published by this platform",
            Self::RetiredKey(_) => "the token's signing key was retired",
            Self::Signature => "the token's signature is invalid",
            Self::Issuer(_) => "the token was issued by another token service",
            Self::Audience { .. } => "the token was issued for another service",
            Self::Expired(_) => "the token has expired",
            Self::NotYetValid(_) => "the token is not valid yet",
            Self::CertificateMismatch => "the token is bound to another client certificate",
            Self::Revoked => "the token was revoked",
            Self::Invalidated(_) => "the app's tokens were invalidated; request a new one",
            Self::MissingScope(_) => "the token lacks the scope this route requires",
        }
    }
}

/// A token that passed every check of [`Verifier::verify`]. Only the
/// verifier constructs it, so code that requires one cannot skip a check.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    claims: Arc<AccessClaims>,
}

impl VerifiedToken {
    /// The verified claims.
    pub fn claims(&self) -> &AccessClaims {
        &self.claims
    }

    /// The app the token was issued to.
    pub fn app_id(&self) -> &str {
        &self.claims.sub
    }

    /// Checks that the token carries `scope`.
    pub fn require_scope(&self, scope: &str) -> Result<(), RejectReason> {
        if self.claims.scopes().any(|s| s == scope) {
            Ok(())
        } else {
            Err(RejectReason::MissingScope(scope.to_owned()))
        }
    }
}

/// The published keys in the form a verifier uses.
#[derive(Clone, Default)]
pub struct VerifierKeys {
    keys: HashMap<String, (DecodingKey, Option<i64>)>,
}

impl std::fmt::Debug for VerifierKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifierKeys").field("kids", &self.keys.keys().collect::<Vec<_>>()).finish()
    }
}

impl VerifierKeys {
    /// Builds the key set from published public keys.
    pub fn from_public_keys(keys: &[PublicKey]) -> Result<Self, TokenError> {
        let mut map = HashMap::new();
        for key in keys {
            map.insert(key.kid.clone(), (key.decoding_key()?, key.retired_at));
        }
        Ok(Self { keys: map })
    }
}

/// Verifies access tokens for one issuer.
#[derive(Debug, Clone)]
pub struct Verifier {
    issuer: String,
    grace_secs: i64,
    leeway_secs: i64,
    keys: Arc<RwLock<Arc<VerifierKeys>>>,
    invalidations: InvalidationsHandle,
    validation: Validation,
    /// Tokens whose header and signature verified, with their key id and
    /// claims. Every other check still runs on each call.
    /// Keyed with foldhash, seeded per process, because SipHash over a
    /// token of several hundred bytes cost more than the rest of the
    /// lookup. Only tokens with a valid signature enter the cache, so an
    /// attacker cannot fill it with colliding keys.
    signature_cache: moka::sync::Cache<String, Arc<CheckedToken>, foldhash::fast::RandomState>,
}

/// A token's key id and claims, as the signature cache keeps them. The key
/// id lets a cached token of a removed or retired key still be rejected.
#[derive(Debug)]
struct CheckedToken {
    kid: String,
    claims: Arc<AccessClaims>,
}

/// Tokens remembered by the signature cache.
const SIGNATURE_CACHE_ENTRIES: u64 = 100_000;

impl Verifier {
    /// Creates a verifier for tokens of `issuer`. `grace_secs` must equal the
    /// issuer's key grace period; `leeway_secs` is the clock skew allowed on
    /// time claims.
    pub fn new(
        issuer: impl Into<String>,
        keys: VerifierKeys,
        grace_secs: i64,
        leeway_secs: i64,
        invalidations: InvalidationsHandle,
    ) -> Self {
        // jsonwebtoken checks only the algorithm and the signature here. The
        // time claims are checked below against the injected `now`, and the
        // issuer and audience there too, to return a precise reason.
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();

        Self {
            issuer: issuer.into(),
            grace_secs,
            leeway_secs,
            keys: Arc::new(RwLock::new(Arc::new(keys))),
            invalidations,
            validation,
            signature_cache: moka::sync::Cache::builder()
                .max_capacity(SIGNATURE_CACHE_ENTRIES)
                .time_to_live(std::time::Duration::from_secs((grace_secs.max(1)) as u64))
                .build_with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    /// Replaces the published keys, after a rotation.
    pub fn set_keys(&self, keys: VerifierKeys) {
        *self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(keys);
    }

    /// Verifies `token` for a request to the service `audience`, arriving on
    /// a connection whose client certificate is `certificate_der`, at `now`
    /// (seconds since the Unix epoch).
    pub fn verify(
        &self,
        token: &str,
        audience: &str,
        certificate_der: &[u8],
        now: i64,
    ) -> Result<VerifiedToken, RejectReason> {
        self.verify_for_thumbprint(token, audience, &certificate_thumbprint(certificate_der), now)
    }

    /// Verifies `token` as [`Verifier::verify`] does, for a connection whose
    /// client certificate has the thumbprint `thumbprint` (from
    /// [`certificate_thumbprint`]). A server computes it once per connection
    /// instead of hashing the certificate on every request.
    pub fn verify_for_thumbprint(
        &self,
        token: &str,
        audience: &str,
        thumbprint: &str,
        now: i64,
    ) -> Result<VerifiedToken, RejectReason> {
        let claims = self.check_token(token, now)?;

        if claims.aud != audience {
            return Err(RejectReason::Audience { got: claims.aud.clone(), expected: audience.to_owned() });
        }
        if claims.cnf.x5t_s256 != thumbprint {
            return Err(RejectReason::CertificateMismatch);
        }
        Ok(VerifiedToken { claims })
    }

    /// Checks everything but the audience and the certificate binding, for
    /// introspection (RFC 7662) and revocation (RFC 7009), where the caller
    /// is not the token's holder. Returns the claims of an active token.
    pub fn inspect(&self, token: &str, now: i64) -> Result<AccessClaims, RejectReason> {
        self.check_token(token, now).map(Arc::unwrap_or_clone)
    }

    /// Steps 1 to 6 of the module's list.
    fn check_token(&self, token: &str, now: i64) -> Result<Arc<AccessClaims>, RejectReason> {
        // A cached token is byte for byte one whose header passed
        // check_header, so only its key is looked up again.
        let cached = self.signature_cache.get(token);
        let header_kid;
        let kid = match &cached {
            Some(checked) => checked.kid.as_str(),
            None => {
                header_kid = check_header(token)?;
                header_kid.as_str()
            }
        };

        let keys = self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let (key, retired_at) = keys.keys.get(kid).ok_or_else(|| RejectReason::UnknownKey(kid.to_owned()))?;
        if retired_at.is_some_and(|retired| retired + self.grace_secs <= now) {
            return Err(RejectReason::RetiredKey(kid.to_owned()));
        }

        let claims = match cached {
            Some(checked) => Arc::clone(&checked.claims),
            None => {
                let data =
                    jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation).map_err(|e| match e.kind() {
                        jsonwebtoken::errors::ErrorKind::InvalidSignature => RejectReason::Signature,
                        jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                            RejectReason::Algorithm("(mismatch)".into())
                        }
                        _ => RejectReason::Malformed(e.to_string()),
                    })?;
                let claims = Arc::new(data.claims);
                let checked = CheckedToken { kid: kid.to_owned(), claims: Arc::clone(&claims) };
                self.signature_cache.insert(token.to_owned(), Arc::new(checked));
                claims
            }
        };

        if claims.iss != self.issuer {
            return Err(RejectReason::Issuer(claims.iss.clone()));
        }
        if claims.exp + self.leeway_secs <= now {
            return Err(RejectReason::Expired(claims.exp));
        }
        let valid_from = claims.nbf.max(claims.iat);
        if valid_from > now + self.leeway_secs {
            return Err(RejectReason::NotYetValid(valid_from));
        }

        let invalidations = self.invalidations.snapshot();
        if invalidations.is_revoked(&claims.jti) {
            return Err(RejectReason::Revoked);
        }
        if invalidations.cut_off(&claims.sub).is_some_and(|cut_off| claims.iat <= cut_off) {
            return Err(RejectReason::Invalidated(claims.sub.clone()));
        }
        Ok(claims)
    }
}

/// Checks the JWS header and returns the key id.
fn check_header(token: &str) -> Result<String, RejectReason> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(RejectReason::Malformed("not three dot-separated parts".into()));
    };
    let bytes =
        URL_SAFE_NO_PAD.decode(header).map_err(|_| RejectReason::Malformed("header is not base64url".into()))?;
    let header: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| RejectReason::Malformed("header is not JSON".into()))?;

    let field = |name: &str| header.get(name).and_then(serde_json::Value::as_str).map(str::to_owned);
    let alg = field("alg").unwrap_or_default();
    if alg != "ES256" {
        return Err(RejectReason::Algorithm(alg));
    }
    let typ = field("typ").unwrap_or_default();
    if !typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE) && !typ.eq_ignore_ascii_case("application/at+jwt") {
        return Err(RejectReason::TokenType(typ));
    }
    if header.get("crit").is_some() {
        return Err(RejectReason::Malformed("unsupported crit header".into()));
    }
    field("kid").ok_or_else(|| RejectReason::Malformed("no kid header".into()))
}
