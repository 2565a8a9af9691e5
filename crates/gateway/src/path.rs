//! The one path rule of the gateway, applied once per request. Its output
//! is used for routing, for the scope check and as the path the upstream
//! receives, so no spelling of a path can reach a route or service that
//! its plain spelling would not.
//!
//! The rule prefers rejecting an ambiguous spelling (400) over rewriting
//! it, because a rewrite the upstream does not repeat exactly is itself a
//! way around routing. A path is accepted only if all of these hold:
//!
//! 1. It starts with `/` (origin-form, RFC 9112 section 3.2.1).
//! 2. Every byte is an RFC 3986 `pchar` or `/`: unreserved characters,
//!    sub-delimiters other than `;`, `:`, `@`, or a `%` escape. So raw
//!    control characters, NUL, space, `\`, `;` (path parameters), `"`,
//!    `<`, `>`, `^`, `` ` ``, `{`, `|`, `}` and raw non-ASCII bytes are
//!    rejected.
//! 3. Every `%` is followed by two hex digits, and the escaped byte is not
//!    `.`, `/`, `\`, `%` (double encoding such as `%252e`), `;` or a control
//!    character. Escapes of `A-Z a-z 0-9 - _ ~` are decoded, as RFC 3986
//!    section 6.2.2.2 normalises them; all other escapes stay escaped with
//!    upper-case hex digits (section 6.2.2.1).
//! 4. The escaped bytes of each segment decode to valid UTF-8, so overlong
//!    forms such as `%c0%ae` and lone continuation bytes are rejected.
//!    No decoded character is a compatibility look-alike of a character
//!    that changes how a path splits or decodes: its NFKC form (Unicode
//!    Standard Annex 15) contains none of `.`, `/`, `\`, `%`, `;`, `?`,
//!    `#` or a control character. So `%EF%BC%8E` (U+FF0E FULLWIDTH FULL
//!    STOP), `%EF%BC%8F` (U+FF0F FULLWIDTH SOLIDUS) and `%E2%80%A5`
//!    (U+2025 TWO DOT LEADER, NFKC `..`) are rejected, because an
//!    upstream that normalises paths with NFKC would read them as dot
//!    segments or separators. Other non-ASCII characters, such as `é` or
//!    U+2044 FRACTION SLASH (which NFKC leaves as it is), stay escaped.
//! 5. No segment is empty except the last one (no `//`; a trailing `/` is
//!    kept), and no segment consists only of dots (`.` and `..`, which
//!    RFC 3986 section 5.2.4 would remove, and `...`).
//!
//! The query is not part of the path and passes through unchanged.
//!
//! NOTE: the rule is hand-written because no maintained crate rejects
//! these spellings: `percent-encoding` decodes every escape and the `url`
//! crate resolves dot-segments, and both would turn a rejected spelling
//! into an accepted one.

use std::fmt;

/// A path that passed the rule in the module documentation. Only
/// [`canonicalise`] constructs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath(String);

impl CanonicalPath {
    /// The canonical path as text: ASCII, starting with `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CanonicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The reason a path was rejected. Each variant maps to one test case in
/// `tests/paths.rs` and to the status 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathRejection {
    /// The path does not start with `/`.
    #[error("path does not start with /")]
    NotAbsolute,
    /// A raw byte that RFC 3986 does not allow in a path, or that the rule
    /// excludes (`;`, `\`).
    #[error("byte 0x{0:02x} is not allowed in a path")]
    ForbiddenByte(u8),
    /// `%` not followed by two hex digits.
    #[error("malformed percent escape")]
    MalformedEscape,
    /// An escape of a byte that changes how the path splits or decodes.
    #[error("percent escape of byte 0x{0:02x} is not allowed")]
    ForbiddenEscape(u8),
    /// Escaped bytes that are not valid UTF-8, such as overlong forms.
    #[error("percent escapes are not valid UTF-8")]
    InvalidUtf8,
    /// Escaped bytes that decode to a character whose NFKC form contains
    /// a byte that [`PathRejection::ForbiddenEscape`] rejects, or `?` or `#`.
    #[error("percent escapes decode to U+{:04X}, which NFKC normalisation turns into {normalised:?}", u32::from(*character))]
    LookAlike {
        /// The decoded character.
        character: char,
        /// The first character of its NFKC form that the rule rejects.
        normalised: char,
    },
    /// `//` inside the path.
    #[error("empty path segment")]
    EmptySegment,
    /// A segment made only of dots.
    #[error("dot segment")]
    DotSegment,
}

/// Applies the path rule to `raw`, the path of the request target without
/// its query.
pub fn canonicalise(raw: &str) -> Result<CanonicalPath, PathRejection> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathRejection::NotAbsolute);
    }

    let mut out = String::with_capacity(raw.len());
    let segments: Vec<&[u8]> = bytes[1..].split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    for (index, segment) in segments.iter().enumerate() {
        out.push('/');
        if segment.is_empty() {
            if index == last {
                break;
            }
            return Err(PathRejection::EmptySegment);
        }
        let decoded = canonical_segment(segment)?;
        if decoded.bytes().all(|b| b == b'.') {
            return Err(PathRejection::DotSegment);
        }
        out.push_str(&decoded);
    }
    Ok(CanonicalPath(out))
}

/// Canonicalises one segment (rules 2 to 4).
fn canonical_segment(segment: &[u8]) -> Result<String, PathRejection> {
    let mut out = String::with_capacity(segment.len());

    // The current run of escaped non-ASCII bytes. A run must decode to
    // whole UTF-8 characters on its own, so `%C3a%A9` (a character split
    // by a raw byte) is rejected as well as overlong forms.
    let mut run: Vec<u8> = Vec::new();

    let mut i = 0;
    while i < segment.len() {
        let byte = segment[i];
        if byte != b'%' {
            check_utf8(&mut run)?;
            if !is_path_byte(byte) {
                return Err(PathRejection::ForbiddenByte(byte));
            }
            out.push(byte as char);
            i += 1;
            continue;
        }

        let value = segment
            .get(i + 1..i + 3)
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok())
            .ok_or(PathRejection::MalformedEscape)?;
        i += 3;
        if matches!(value, b'.' | b'/' | b'\\' | b'%' | b';') || value.is_ascii_control() {
            return Err(PathRejection::ForbiddenEscape(value));
        }
        if value.is_ascii() {
            check_utf8(&mut run)?;
        } else {
            run.push(value);
        }
        if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'_' | b'~') {
            out.push(value as char);
        } else {
            out.push_str(&format!("%{value:02X}"));
        }
    }
    check_utf8(&mut run)?;
    Ok(out)
}

/// Checks that `run` is valid UTF-8 (which excludes overlong forms) with no
/// look-alike character (rule 4), and empties it.
fn check_utf8(run: &mut Vec<u8>) -> Result<(), PathRejection> {
    let checked = match std::str::from_utf8(run) {
        Ok(text) => text.chars().try_for_each(check_look_alike),
        Err(_) => Err(PathRejection::InvalidUtf8),
    };
    run.clear();
    checked
}

/// Rejects a decoded character whose NFKC form contains a character that
/// splits or re-decodes a path, or starts its query or fragment.
fn check_look_alike(character: char) -> Result<(), PathRejection> {
    use unicode_normalization::UnicodeNormalization;

    let structural = |c: &char| matches!(c, '.' | '/' | '\\' | '%' | ';' | '?' | '#') || c.is_control();
    match std::iter::once(character).nfkc().find(structural) {
        Some(normalised) => Err(PathRejection::LookAlike { character, normalised }),
        None => Ok(()),
    }
}

/// Returns whether `byte` may appear raw in a path segment: an RFC 3986
/// section 3.3 `pchar` other than `%` (handled by the caller) and `;`.
fn is_path_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        canonicalise(raw).unwrap_or_else(|e| panic!("{raw}: {e}")).0
    }

    #[test]
    fn plain_paths_are_unchanged() {
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/weather/v1/today"), "/weather/v1/today");
        assert_eq!(ok("/weather/v1/"), "/weather/v1/");
        assert_eq!(ok("/a/b.json"), "/a/b.json");
    }

    #[test]
    fn unreserved_escapes_are_decoded() {
        assert_eq!(ok("/weather/%76%31/x"), "/weather/v1/x");
        assert_eq!(ok("/a/%7e%5F"), "/a/~_");
    }

    #[test]
    fn other_escapes_are_upper_cased() {
        assert_eq!(ok("/a/%3f%20b"), "/a/%3F%20b");
        assert_eq!(ok("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(ok("/a/%e2%81%84"), "/a/%E2%81%84", "U+2044 FRACTION SLASH has no NFKC mapping to /");
        assert_eq!(ok("/a/%ef%bd%98"), "/a/%EF%BD%98", "U+FF58 FULLWIDTH X is not structural");
    }

    #[test]
    fn ambiguous_spellings_are_rejected() {
        let cases = [
            ("weather", PathRejection::NotAbsolute),
            ("", PathRejection::NotAbsolute),
            ("/a/../b", PathRejection::DotSegment),
            ("/a/./b", PathRejection::DotSegment),
            ("/a/..", PathRejection::DotSegment),
            ("/a/.../b", PathRejection::DotSegment),
            ("/a//b", PathRejection::EmptySegment),
            ("//a", PathRejection::EmptySegment),
            ("/a/%2e%2e/b", PathRejection::ForbiddenEscape(b'.')),
            ("/a/%2E./b", PathRejection::ForbiddenEscape(b'.')),
            ("/a%2fb", PathRejection::ForbiddenEscape(b'/')),
            ("/a%5cb", PathRejection::ForbiddenEscape(b'\\')),
            ("/a/%252e", PathRejection::ForbiddenEscape(b'%')),
            ("/a/%00", PathRejection::ForbiddenEscape(0)),
            ("/a/%3b", PathRejection::ForbiddenEscape(b';')),
            ("/a\\b", PathRejection::ForbiddenByte(b'\\')),
            ("/a;x=1/b", PathRejection::ForbiddenByte(b';')),
            ("/a b", PathRejection::ForbiddenByte(b' ')),
            ("/a\u{7f}", PathRejection::ForbiddenByte(0x7f)),
            ("/a\tb", PathRejection::ForbiddenByte(b'\t')),
            ("/caf\u{e9}", PathRejection::ForbiddenByte(0xc3)),
            ("/a%2", PathRejection::MalformedEscape),
            ("/a%zz", PathRejection::MalformedEscape),
            ("/a/%c0%ae", PathRejection::InvalidUtf8),
            ("/a/%e0%80%ae", PathRejection::InvalidUtf8),
            ("/a/%c3", PathRejection::InvalidUtf8),
            ("/a/%c3x%a9", PathRejection::InvalidUtf8),
            ("/a/%ef%bc%8e", PathRejection::LookAlike { character: '\u{ff0e}', normalised: '.' }),
            ("/a%EF%BC%8Fb", PathRejection::LookAlike { character: '\u{ff0f}', normalised: '/' }),
            ("/a/%E2%80%A5", PathRejection::LookAlike { character: '\u{2025}', normalised: '.' }),
            ("/a/%EF%BC%85", PathRejection::LookAlike { character: '\u{ff05}', normalised: '%' }),
            ("/a/x%EF%BC%9F", PathRejection::LookAlike { character: '\u{ff1f}', normalised: '?' }),
        ];
        for (raw, expected) in cases {
            assert_eq!(canonicalise(raw), Err(expected), "{raw:?}");
        }
    }
}
