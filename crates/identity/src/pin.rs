//! SPKI pins (RFC 7469 section 2.4): base64 of SHA-256 over the DER
//! SubjectPublicKeyInfo, the `pin-sha256` format.

use base64::Engine;
use sha2::{Digest, Sha256};

/// Returns the pin of a DER SubjectPublicKeyInfo.
pub fn spki_pin(spki_der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki_der))
}

/// Returns a serial number as lowercase hex without leading zero bytes
/// (DER adds a zero byte to keep a serial positive; the store does not).
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len().saturating_sub(1));
    raw[start..].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_of_empty_input() {
        // SHA-256 of the empty string, base64: a fixed vector.
        assert_eq!(spki_pin(b""), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
    }

    #[test]
    fn serial_hex_strips_sign_byte() {
        assert_eq!(serial_hex(&[0x00, 0x81, 0x0a]), "810a");
        assert_eq!(serial_hex(&[0x40, 0x00]), "4000");
        assert_eq!(serial_hex(&[0x00]), "00");
    }
}
