//! Public suffixes: names under which anyone can register a domain, from
//! the Public Suffix List in `data/public_suffix_list.txt` (source and
//! licence in `data/SOURCES.md`).
//!
//! Written here rather than taken from a crate: the crates that embed the
//! list give the suffix of a name. The wildcard check also needs every
//! suffix below a domain (`s3.amazonaws.com` below `amazonaws.com`), which
//! they cannot list.

use std::collections::BTreeSet;
use std::sync::LazyLock;

/// The list's rules, one per line, in Unicode.
const LIST: &str = include_str!("../../data/public_suffix_list.txt");

/// The rules in lowercase A-label form, by kind.
struct Rules {
    /// Plain rules such as `co.uk`: the name is a suffix.
    exact: BTreeSet<String>,
    /// The `X` of wildcard rules `*.X`: every name one label below `X` is
    /// a suffix.
    wildcard: BTreeSet<String>,
    /// The `Y` of exception rules `!Y`: `Y` is not a suffix although a
    /// wildcard covers it.
    exceptions: BTreeSet<String>,
}

static RULES: LazyLock<Rules> = LazyLock::new(|| {
    let mut rules = Rules { exact: BTreeSet::new(), wildcard: BTreeSet::new(), exceptions: BTreeSet::new() };
    for line in LIST.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let (set, name) = if let Some(base) = line.strip_prefix("*.") {
            (&mut rules.wildcard, base)
        } else if let Some(name) = line.strip_prefix('!') {
            (&mut rules.exceptions, name)
        } else {
            (&mut rules.exact, line)
        };
        let ascii =
            if name.is_ascii() { name.to_ascii_lowercase() } else { idna::domain_to_ascii(name).unwrap_or_default() };
        if !ascii.is_empty() {
            set.insert(ascii);
        }
    }
    rules
});

/// Returns a public suffix that is `domain` itself or lies below it, or
/// `None` if there is none, so that no name a wildcard `*.domain` matches
/// can be registered by anyone. `domain` must be in normalised form
/// (lowercase A-labels, no trailing dot). The result is `domain` itself,
/// a plain rule below it, or `*.X` for a wildcard rule at or below it.
/// Of several, it is the first in sort order.
pub(super) fn suffix_at_or_below(domain: &str) -> Option<String> {
    let rules = &*RULES;

    let wildcard_parent = domain.split_once('.').is_some_and(|(_, parent)| rules.wildcard.contains(parent));
    if rules.exact.contains(domain) || (wildcard_parent && !rules.exceptions.contains(domain)) {
        return Some(domain.to_owned());
    }

    let tail = format!(".{domain}");
    let below = |name: &String| name == domain || name.ends_with(&tail);
    let wildcard = rules.wildcard.iter().find(|base| below(base)).map(|base| format!("*.{base}"));
    let exact = rules.exact.iter().find(|name| name.ends_with(&tail)).cloned();
    match (exact, wildcard) {
        (Some(exact), Some(wildcard)) => Some(exact.min(wildcard)),
        (exact, wildcard) => exact.or(wildcard),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_at_and_below_domains() {
        // (domain, expected suffix at or below it; rules from the list)
        let cases = [
            ("co.uk", Some("co.uk")),
            ("github.io", Some("github.io")),
            ("s3.amazonaws.com", Some("s3.amazonaws.com")),
            ("kawasaki.jp", Some("*.kawasaki.jp")),
            ("city.kawasaki.jp", None),
            ("www.ck", None),
            ("xn--55qx5d.cn", Some("xn--55qx5d.cn")),
            ("example.co.uk", None),
            ("weather.test", None),
        ];
        for (domain, expected) in cases {
            assert_eq!(suffix_at_or_below(domain).as_deref(), expected, "{domain}");
        }

        let below_amazonaws = suffix_at_or_below("amazonaws.com").expect("suffixes lie below amazonaws.com");
        assert!(below_amazonaws.ends_with(".amazonaws.com"), "{below_amazonaws}");
        let below_windows = suffix_at_or_below("core.windows.net").expect("suffixes lie below core.windows.net");
        assert!(below_windows.ends_with(".core.windows.net"), "{below_windows}");
    }
}
