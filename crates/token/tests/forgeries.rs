//! Forged and misused tokens, each rejected with its own reason.

use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_token::*;

const ISSUER: &str = "https://token.weather.example";
const WEATHER: &str = "spiffe://weather.example/service/weather";
const RECORDS: &str = "spiffe://weather.example/service/records";
const NOW: i64 = 1_800_000_000;
const GRACE: i64 = DEFAULT_LIFETIME_SECS + DEFAULT_LEEWAY_SECS;

/// Stand-ins for the DER certificates of two apps: the verifier only hashes them.
const CERT_A: &[u8] = b"DER certificate of app-a";
const CERT_B: &[u8] = b"DER certificate of app-b";

struct Fixture {
    issuer: TokenIssuer,
    verifier: Verifier,
    invalidations: InvalidationsHandle,
}

fn fixture() -> Fixture {
    let keys = Arc::new(RwLock::new(SigningKeys::generate(NOW - 100, GRACE).unwrap()));
    let issuer = TokenIssuer::new(ISSUER, DEFAULT_LIFETIME_SECS, keys.clone());
    let invalidations = InvalidationsHandle::default();
    let public = VerifierKeys::from_public_keys(&keys.read().unwrap().public_keys(NOW)).unwrap();
    let verifier = Verifier::new(ISSUER, public, GRACE, DEFAULT_LEEWAY_SECS, invalidations.clone());
    Fixture { issuer, verifier, invalidations }
}

fn token_for(issuer: &TokenIssuer, app: &str, cert: &[u8], at: i64) -> (String, AccessClaims) {
    let scopes = vec!["weather:read".to_owned()];
    issuer.issue(&TokenRequest { app_id: app, audience: WEATHER, scopes: &scopes, certificate_der: cert }, at).unwrap()
}

fn b64(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// Replaces the header of `token`, keeping its claims and signature.
fn with_header(token: &str, header: serde_json::Value) -> String {
    let (_, rest) = token.split_once('.').unwrap();
    format!("{}.{rest}", b64(&header))
}

fn claims_part(token: &str) -> serde_json::Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// HMAC-SHA256 over the signing input, as an attacker would compute it.
fn hs256(token_without_signature: &str, secret: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, token_without_signature.as_bytes());
    URL_SAFE_NO_PAD.encode(tag.as_ref())
}

#[test]
fn valid_token_is_accepted() {
    let f = fixture();
    let (token, claims) = token_for(&f.issuer, "app-a", CERT_A, NOW);
    let verified = f.verifier.verify(&token, WEATHER, CERT_A, NOW + 10).expect("valid token");
    assert_eq!(verified.app_id(), "app-a");
    assert_eq!(verified.claims(), &claims);
    assert_eq!(claims.exp - claims.iat, 300);
    assert_eq!(claims.cnf.x5t_s256, certificate_thumbprint(CERT_A));
    assert!(verified.require_scope("weather:read").is_ok());
}

#[test]
fn token_header_and_claims_follow_rfc_9068() {
    let f = fixture();
    let (token, _) = token_for(&f.issuer, "app-a", CERT_A, NOW);
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["kid"], f.issuer.keys().read().unwrap().current_kid());

    let claims = claims_part(&token);
    for name in ["iss", "sub", "aud", "scope", "client_id", "iat", "nbf", "exp", "jti"] {
        assert!(claims.get(name).is_some(), "claim {name} missing from {claims}");
    }
    assert_eq!(claims["cnf"]["x5t#S256"], certificate_thumbprint(CERT_A));
}

#[test]
fn forged_and_misused_tokens_are_rejected() {
    let f = fixture();
    let (good, _) = token_for(&f.issuer, "app-a", CERT_A, NOW);
    let kid = f.issuer.keys().read().unwrap().current_kid().to_owned();
    let public = f.issuer.keys().read().unwrap().public_keys(NOW).remove(0);
    let claims = claims_part(&good);

    let alg_none =
        format!("{}.{}.", b64(&serde_json::json!({"alg": "none", "typ": "at+jwt", "kid": kid})), b64(&claims));

    // HS256 keyed with the public key, the classic algorithm confusion.
    let unsigned =
        format!("{}.{}", b64(&serde_json::json!({"alg": "HS256", "typ": "at+jwt", "kid": kid})), b64(&claims));
    let public_bytes = serde_json::to_vec(&public.to_jwk()).unwrap();
    let hs256_confusion = format!("{unsigned}.{}", hs256(&unsigned, &public_bytes));

    let unknown_kid = with_header(&good, serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": "no-such-key"}));

    // Change a character inside the signature, not the last one: the last
    // character of a 64-byte base64url value has two padding bits, so
    // changing it can make the encoding invalid instead of the signature.
    let mut characters: Vec<char> = good.chars().collect();
    let index = characters.len() - 10;
    characters[index] = if characters[index] == 'A' { 'B' } else { 'A' };
    let bad_signature: String = characters.into_iter().collect();

    // Claims changed after signing: the signature no longer covers them.
    let mut widened = claims.clone();
    widened["scope"] = "weather:read records:write".into();
    let (head, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let tampered_claims = format!("{head}.{}.{signature}", b64(&widened));

    let other_keys = Arc::new(RwLock::new(SigningKeys::generate(NOW, GRACE).unwrap()));
    let foreign_issuer = TokenIssuer::new("https://evil.example", DEFAULT_LIFETIME_SECS, f.issuer.keys().clone());
    let (wrong_iss, _) = token_for(&foreign_issuer, "app-a", CERT_A, NOW);
    // Signed by another key that claims the published key's id.
    let (other_key, _) = token_for(&TokenIssuer::new(ISSUER, 300, other_keys), "app-a", CERT_A, NOW);
    let stolen_kid = {
        let header = serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": kid});
        with_header(&other_key, header)
    };

    let jwt_type = with_header(&good, serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid}));
    let embedded_jwk =
        with_header(&good, serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": kid, "jwk": public.to_jwk()}));

    let (expired, _) = token_for(&f.issuer, "app-a", CERT_A, NOW - 400);
    let (future, _) = token_for(&f.issuer, "app-a", CERT_A, NOW + 120);

    // (case, token, audience, certificate, expected reason)
    let cases: Vec<(&str, String, &str, &[u8], RejectReason)> = vec![
        ("alg none", alg_none, WEATHER, CERT_A, RejectReason::Algorithm("none".into())),
        ("HS256 keyed with the public key", hs256_confusion, WEATHER, CERT_A, RejectReason::Algorithm("HS256".into())),
        ("unknown kid", unknown_kid, WEATHER, CERT_A, RejectReason::UnknownKey("no-such-key".into())),
        ("bad signature", bad_signature, WEATHER, CERT_A, RejectReason::Signature),
        ("claims changed after signing", tampered_claims, WEATHER, CERT_A, RejectReason::Signature),
        ("another key claiming the kid", stolen_kid, WEATHER, CERT_A, RejectReason::Signature),
        ("expired", expired, WEATHER, CERT_A, RejectReason::Expired(NOW - 100)),
        ("not yet valid", future, WEATHER, CERT_A, RejectReason::NotYetValid(NOW + 120)),
        ("wrong iss", wrong_iss, WEATHER, CERT_A, RejectReason::Issuer("https://evil.example".into())),
        (
            "wrong aud",
            good.clone(),
            RECORDS,
            CERT_A,
            RejectReason::Audience { got: WEATHER.into(), expected: RECORDS.into() },
        ),
        ("app A's token with app B's certificate", good.clone(), WEATHER, CERT_B, RejectReason::CertificateMismatch),
        ("plain JWT type", jwt_type, WEATHER, CERT_A, RejectReason::TokenType("JWT".into())),
        ("embedded jwk is ignored, signature still checked", embedded_jwk, WEATHER, CERT_A, RejectReason::Signature),
        (
            "two parts",
            "abc.def".into(),
            WEATHER,
            CERT_A,
            RejectReason::Malformed("not three dot-separated parts".into()),
        ),
        ("empty", String::new(), WEATHER, CERT_A, RejectReason::Malformed("not three dot-separated parts".into())),
        (
            "header not base64url",
            "###.e30.sig".into(),
            WEATHER,
            CERT_A,
            RejectReason::Malformed("header is not base64url".into()),
        ),
    ];

    for (case, token, audience, certificate, expected) in cases {
        let result = f.verifier.verify(&token, audience, certificate, NOW);
        assert_eq!(result.err(), Some(expected), "{case}");
    }
}

#[test]
fn embedded_jwk_signed_by_attacker_is_rejected() {
    let f = fixture();
    let attacker_keys = Arc::new(RwLock::new(SigningKeys::generate(NOW, GRACE).unwrap()));
    let attacker = TokenIssuer::new(ISSUER, 300, attacker_keys.clone());
    let (token, _) = token_for(&attacker, "app-a", CERT_A, NOW);
    let attacker_jwk = attacker_keys.read().unwrap().public_keys(NOW)[0].to_jwk();
    let kid = f.issuer.keys().read().unwrap().current_kid().to_owned();
    let forged =
        with_header(&token, serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": kid, "jwk": attacker_jwk}));
    assert_eq!(f.verifier.verify(&forged, WEATHER, CERT_A, NOW).err(), Some(RejectReason::Signature));
}

#[test]
fn scope_not_allowed_by_route_is_rejected() {
    let f = fixture();
    let (token, _) = token_for(&f.issuer, "app-a", CERT_A, NOW);
    let verified = f.verifier.verify(&token, WEATHER, CERT_A, NOW).unwrap();
    let error = verified.require_scope("weather:write").unwrap_err();
    assert_eq!(error, RejectReason::MissingScope("weather:write".into()));
    assert_eq!(error.error_code(), "insufficient_scope");
    // A scope that is a prefix of a granted one does not match.
    assert!(verified.require_scope("weather:rea").is_err());
}

#[test]
fn revoked_jti_is_rejected() {
    let f = fixture();
    let (token, claims) = token_for(&f.issuer, "app-a", CERT_A, NOW);
    let (other, _) = token_for(&f.issuer, "app-a", CERT_A, NOW);
    f.invalidations.revoke_token(&claims.jti, claims.exp);
    assert_eq!(f.verifier.verify(&token, WEATHER, CERT_A, NOW).err(), Some(RejectReason::Revoked));
    assert!(f.verifier.verify(&other, WEATHER, CERT_A, NOW).is_ok(), "only the revoked token is refused");
}

#[test]
fn app_cut_off_invalidates_earlier_tokens() {
    let f = fixture();
    let (before, _) = token_for(&f.issuer, "app-a", CERT_A, NOW);
    let (other_app, _) = token_for(&f.issuer, "app-b", CERT_B, NOW);
    f.invalidations.cut_off_app("app-a", NOW + 5);
    let (after, _) = token_for(&f.issuer, "app-a", CERT_A, NOW + 6);

    assert_eq!(
        f.verifier.verify(&before, WEATHER, CERT_A, NOW + 6).err(),
        Some(RejectReason::Invalidated("app-a".into()))
    );
    assert!(f.verifier.verify(&after, WEATHER, CERT_A, NOW + 6).is_ok());
    assert!(f.verifier.verify(&other_app, WEATHER, CERT_B, NOW + 6).is_ok());
}

#[test]
fn retired_key_accepted_only_during_grace() {
    let f = fixture();
    let (old_token, _) = token_for(&f.issuer, "app-a", CERT_A, NOW);
    let old_kid = f.issuer.keys().read().unwrap().current_kid().to_owned();

    let new_kid = f.issuer.keys().write().unwrap().rotate(NOW + 1).unwrap();
    assert_ne!(new_kid, old_kid);
    let jwks = f.issuer.keys().read().unwrap().jwks(NOW + 1);
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "old key stays published during grace");
    f.verifier.set_keys(VerifierKeys::from_public_keys(&f.issuer.keys().read().unwrap().public_keys(NOW + 1)).unwrap());

    let (new_token, _) = token_for(&f.issuer, "app-a", CERT_A, NOW + 2);
    assert!(f.verifier.verify(&old_token, WEATHER, CERT_A, NOW + 2).is_ok(), "inside grace");
    assert!(f.verifier.verify(&new_token, WEATHER, CERT_A, NOW + 2).is_ok());

    // After the grace period the old key is refused even by a verifier that
    // still holds it, and the issuer no longer publishes it.
    let after_grace = NOW + 1 + GRACE;
    assert_eq!(
        f.verifier.verify(&old_token, WEATHER, CERT_A, after_grace).err(),
        Some(RejectReason::RetiredKey(old_kid.clone()))
    );
    let jwks = f.issuer.keys().read().unwrap().jwks(after_grace);
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, [new_kid.as_str()]);
}

#[test]
fn key_file_survives_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signing-keys.json");
    let keys = SigningKeys::load_or_create(&path, NOW, GRACE).unwrap();
    let kid = keys.current_kid().to_owned();

    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

    let reloaded = SigningKeys::load_or_create(&path, NOW + 10, GRACE).unwrap();
    assert_eq!(reloaded.current_kid(), kid);

    std::fs::write(&path, b"not json").unwrap();
    let error = SigningKeys::load_or_create(&path, NOW, GRACE).unwrap_err();
    assert!(error.to_string().starts_with(&format!("token key file {}: ", path.display())), "{error}");
}

#[test]
fn cached_signature_keeps_other_checks() {
    let f = fixture();
    let (token, claims) = token_for(&f.issuer, "app-a", CERT_A, NOW);
    assert!(f.verifier.verify(&token, WEATHER, CERT_A, NOW).is_ok(), "first use fills the cache");

    assert_eq!(f.verifier.verify(&token, WEATHER, CERT_B, NOW).err(), Some(RejectReason::CertificateMismatch));
    assert_eq!(
        f.verifier.verify(&token, RECORDS, CERT_A, NOW).err(),
        Some(RejectReason::Audience { got: WEATHER.into(), expected: RECORDS.into() })
    );
    assert_eq!(f.verifier.verify(&token, WEATHER, CERT_A, NOW + 400).err(), Some(RejectReason::Expired(claims.exp)));
    f.invalidations.revoke_token(&claims.jti, claims.exp);
    assert_eq!(f.verifier.verify(&token, WEATHER, CERT_A, NOW).err(), Some(RejectReason::Revoked));
}
