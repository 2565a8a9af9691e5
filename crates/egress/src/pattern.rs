//! Matching of normalised host names against [`HostPattern`]s, and parsing
//! of the patterns an app's manifest lists.

use portcullis_config::HostPattern;

use crate::host::Host;

/// Returns whether `name` (normalised as in [`Host::Name`]) matches
/// `pattern`. `*.example.org` matches `a.example.org` and `a.b.example.org`
/// but neither `example.org` nor `evilexample.org`.
pub fn matches(pattern: &HostPattern, name: &str) -> bool {
    match pattern {
        HostPattern::Exact(exact) => name == exact,
        HostPattern::Suffix(domain) => name
            .strip_suffix(domain.as_str())
            .and_then(|rest| rest.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty()),
    }
}

/// Returns whether every name `inner` matches is also matched by `outer`.
pub fn covers(outer: &HostPattern, inner: &HostPattern) -> bool {
    match (outer, inner) {
        (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
        (HostPattern::Exact(_), HostPattern::Suffix(_)) => false,
        (HostPattern::Suffix(_), HostPattern::Exact(name)) => matches(outer, name),
        (HostPattern::Suffix(domain), HostPattern::Suffix(inner_domain)) => {
            inner_domain == domain || matches(outer, inner_domain)
        }
    }
}

/// Parses a host pattern from an app's manifest: a host name or `*.` and a
/// domain of at least two labels, already in normalised form (lowercase
/// IDNA A-labels, no trailing dot). On failure returns what is accepted,
/// with the normalised spelling where the text has one.
pub fn parse_pattern(text: &str) -> Result<HostPattern, String> {
    let (wildcard, name) = match text.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if name.contains('*') || name.is_empty() {
        return Err("a host name or \"*.\" followed by a domain, such as \"*.example.org\"; '*' is accepted only as the first label".into());
    }

    let normalised = match Host::parse(name) {
        Ok(Host::Name(normalised)) => normalised,
        Ok(Host::Ip(_)) => {
            return Err("a host name; IP addresses are allowed only by the operator's egress.allow_cidrs".into());
        }
        Err(error) => return Err(format!("a valid host name ({})", error.reason)),
    };
    if normalised != name {
        let spelling = if wildcard { format!("*.{normalised}") } else { normalised };
        return Err(format!("the normalised spelling {spelling:?}"));
    }
    if wildcard && !name.contains('.') {
        return Err("a wildcard below a domain of at least two labels, such as \"*.example.org\"".into());
    }

    Ok(if wildcard { HostPattern::Suffix(normalised) } else { HostPattern::Exact(normalised) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(name: &str) -> HostPattern {
        HostPattern::Exact(name.into())
    }

    fn suffix(name: &str) -> HostPattern {
        HostPattern::Suffix(name.into())
    }

    #[test]
    fn covers_cases() {
        assert!(covers(&suffix("example.org"), &suffix("example.org")));
        assert!(covers(&suffix("example.org"), &suffix("api.example.org")));
        assert!(covers(&suffix("example.org"), &exact("api.example.org")));
        assert!(!covers(&suffix("example.org"), &exact("example.org")));
        assert!(!covers(&suffix("example.org"), &suffix("evilexample.org")));
        assert!(!covers(&exact("api.example.org"), &suffix("api.example.org")));
        assert!(covers(&exact("api.example.org"), &exact("api.example.org")));
    }

    #[test]
    fn manifest_patterns() {
        assert_eq!(parse_pattern("*.example.org"), Ok(suffix("example.org")));
        assert_eq!(parse_pattern("api.example.org"), Ok(exact("api.example.org")));
        assert!(parse_pattern("API.example.org").unwrap_err().contains("\"api.example.org\""));
        assert!(parse_pattern("*.Bücher.example").unwrap_err().contains("\"*.xn--bcher-kva.example\""));
        assert!(parse_pattern("example.org.").unwrap_err().contains("\"example.org\""));
        assert!(parse_pattern("*").is_err());
        assert!(parse_pattern("*.org").is_err());
        assert!(parse_pattern("a.*.org").is_err());
        assert!(parse_pattern("127.0.0.1").unwrap_err().contains("allow_cidrs"));
        assert!(parse_pattern("0x7f.1").unwrap_err().contains("allow_cidrs"));
    }
}
