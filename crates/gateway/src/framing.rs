//! Checks of request framing and target that hyper leaves to the
//! application, and the header rewriting between app and upstream.
//!
//! Before any of this runs, heads that httparse (and so hyper) cannot parse
//! are rejected with 400: header names with spaces, control characters or
//! other non-token bytes, whitespace between a name and its colon,
//! obsolete line folding and bare CR. Over HTTP/1.1 [`crate::head`] does
//! that on the raw bytes, and over HTTP/2 the h2 library does. This module
//! rejects what hyper passes on: methods
//! outside the registered standard set, comma-listed or
//! signed Content-Length values, Transfer-Encoding with any coding besides
//! `chunked` (such as `gzip, chunked` or `chunked` twice), a missing or
//! repeated Host, absolute-form targets naming another authority or
//! scheme, CONNECT, and control characters in header values.
//!
//! Two cases never reach this module over HTTP/1.1: Content-Length next to
//! Transfer-Encoding, and repeated Content-Length lines with equal values,
//! which hyper would accept. [`crate::head`] rejects them on the raw bytes
//! before hyper parses the head. The same checks here cover HTTP/2.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Version};
use rustls_pki_types::DnsName;

use crate::error::GatewayError;

/// The identity headers the gateway sets for the upstream. Any copy sent by
/// the app is removed first.
pub const APP_ID_HEADER: &str = "x-portcullis-app-id";
/// The token's scopes, space-separated.
pub const SCOPES_HEADER: &str = "x-portcullis-scopes";
/// The request id, also returned to the app.
pub const REQUEST_ID_HEADER: &str = "x-portcullis-request-id";

/// The prefix of every header the gateway owns, with `-` as the only
/// separator.
const OWN_PREFIX: &[u8] = b"x-portcullis-";

/// Hop-by-hop headers of RFC 9110 section 7.6.1, plus `expect` (hyper
/// sends `100 Continue` to the app itself) and `host`. Every `proxy-*`
/// header, `proxy-connection` included, is removed by its prefix.
/// `Trailer` is end to end (RFC 9110 section 6.6.2) and passes, because
/// hyper's HTTP/1.1 side sends only the trailers that it names.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::EXPECT,
    header::HOST,
];

fn framing(reason: impl Into<String>) -> GatewayError {
    GatewayError::Framing { reason: reason.into() }
}

/// The names under which the gateway accepts an absolute-form request
/// target (RFC 9112 section 3.2.2), besides the address a connection
/// arrived on.
#[derive(Debug, Clone)]
pub struct ServerNames {
    /// Lower-case DNS names and IP addresses, without a port.
    names: Vec<String>,
}

impl ServerNames {
    /// Returns the names the platform issues the gateway's listener
    /// certificate for: `localhost` and `gateway.<trust_domain>`.
    pub fn for_trust_domain(trust_domain: &str) -> Self {
        Self { names: vec!["localhost".to_owned(), format!("gateway.{trust_domain}").to_ascii_lowercase()] }
    }

    /// Adds `name`, a DNS name or an IP address (IPv6 without brackets)
    /// by which apps reach the gateway, such as a container host alias or
    /// an address that is translated before it reaches the listener.
    pub fn add(&mut self, name: &str) -> Result<(), GatewayError> {
        let invalid = |reason: &str| GatewayError::ServerName { name: name.to_owned(), reason: reason.to_owned() };
        if name.parse::<IpAddr>().is_err() {
            if name.contains(':') {
                return Err(invalid("a port is not allowed; give the host alone"));
            }
            DnsName::try_from(name).map_err(|_| {
                invalid("not a DNS name or IP address; give a name such as gateway.example.org or an address")
            })?;
        }
        let name = name.to_ascii_lowercase();
        if !self.names.contains(&name) {
            self.names.push(name);
        }
        Ok(())
    }

    /// Returns whether `authority` names this gateway as reached at
    /// `local`, the address of the connection's local end. Its host must be
    /// one of the names or `local`'s IP address, and a port, if given, must
    /// be `local`'s port. An authority with user information (RFC 9110
    /// section 4.2.4) never matches.
    fn matches(&self, authority: &Authority, local: SocketAddr) -> bool {
        if authority.as_str().contains('@') {
            return false;
        }
        if authority.port_u16().is_some_and(|port| port != local.port()) {
            return false;
        }

        let host = authority.host();
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            let local_ip = local.ip().to_canonical();
            return ip.to_canonical() == local_ip || self.names.iter().any(|name| name.parse::<IpAddr>() == Ok(ip));
        }
        let host = host.to_ascii_lowercase();
        self.names.contains(&host)
    }
}

/// Checks the request head: size against `max_header_bytes` (431), then
/// method (400), then target and framing (400). `Ok` means the body length
/// is unambiguous (RFC 9112 section 6.3) and an absolute-form target names
/// this gateway by one of `names` or `local`, the address the connection
/// arrived on.
pub fn check_head<B>(
    request: &Request<B>,
    max_header_bytes: u64,
    names: &ServerNames,
    local: SocketAddr,
) -> Result<(), GatewayError> {
    let headers = request.headers();

    let size = request.method().as_str().len() as u64
        + target_len(request.uri()) as u64
        + headers.iter().map(|(name, value)| (name.as_str().len() + value.len() + 4) as u64).sum::<u64>();
    if size > max_header_bytes {
        return Err(GatewayError::HeadersTooLarge { size, max: max_header_bytes });
    }

    check_method(request.method())?;
    if request.method() == Method::CONNECT {
        return Err(framing("CONNECT is not supported"));
    }
    check_target(request, names, local)?;

    for (name, value) in headers {
        if has_control_character(value.as_bytes()) {
            return Err(framing(format!("control character in the value of {name}")));
        }
    }

    let lengths: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    if lengths.len() > 1 {
        return Err(framing(format!("{} Content-Length headers", lengths.len())));
    }
    if let Some(length) = lengths.first() {
        let bytes = length.as_bytes();
        if bytes.is_empty() || bytes.len() > 19 || !bytes.iter().all(u8::is_ascii_digit) {
            return Err(framing(format!("invalid Content-Length {:?}", String::from_utf8_lossy(bytes))));
        }
    }

    let codings: Vec<String> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| {
            String::from_utf8_lossy(value.as_bytes()).split(',').map(|c| c.trim().to_owned()).collect::<Vec<_>>()
        })
        .collect();
    if !codings.is_empty() {
        if !lengths.is_empty() {
            return Err(framing("both Content-Length and Transfer-Encoding"));
        }
        if request.version() != Version::HTTP_11 {
            return Err(framing("Transfer-Encoding outside HTTP/1.1"));
        }
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case("chunked") {
            return Err(framing(format!("Transfer-Encoding {codings:?} is not exactly chunked")));
        }
    }
    Ok(())
}

/// The methods the gateway accepts: those of RFC 9110 section 9.1 and
/// PATCH (RFC 5789). CONNECT is among them here and is rejected later as
/// unsupported.
const STANDARD_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

/// Rejects every method outside [`STANDARD_METHODS`] before routing.
///
/// Method names are case-sensitive (RFC 9110 section 9.1), and hyper
/// passes any token on as an extension method. Routes match methods
/// exactly, yet many upstream frameworks upper-case the method. Without
/// this check, `post` would miss a POST-only route with a stricter scope,
/// match a route for every method, and run as POST upstream.
fn check_method(method: &Method) -> Result<(), GatewayError> {
    if STANDARD_METHODS.contains(method) {
        return Ok(());
    }
    Err(GatewayError::NonStandardMethod {
        method: method.as_str().to_owned(),
        allowed: "GET HEAD POST PUT DELETE OPTIONS TRACE PATCH",
    })
}

/// Returns whether `value` contains a control character other than HTAB
/// (RFC 9110 section 5.5). The loop reads the whole value without an early
/// exit, which lets the compiler vectorise it. A bearer token is the
/// longest value of most requests.
fn has_control_character(value: &[u8]) -> bool {
    value.iter().fold(false, |found, &b| found | ((b < 0x20) & (b != b'\t')) | (b == 0x7f))
}

/// Returns the length of `uri` as written in a request line, without
/// formatting it into a new string.
fn target_len(uri: &http::Uri) -> usize {
    let scheme = uri.scheme_str().map_or(0, |scheme| scheme.len() + 3);
    let authority = uri.authority().map_or(0, |authority| authority.as_str().len());
    let path = uri.path_and_query().map_or(0, |path| path.as_str().len());
    scheme + authority + path
}

/// Checks Host and the request target (RFC 9112 section 3.2): exactly one
/// Host in HTTP/1.1, an HTTP/2 `:authority` only if it equals the Host
/// header, and an absolute-form target only with scheme `https`, an
/// authority equal to the Host header, and that authority naming this
/// gateway (see [`ServerNames::matches`]).
///
/// Host alone and HTTP/2 `:authority` are not compared with the gateway's
/// names, because apps may reach the gateway under names it cannot know,
/// such as a port mapping. Neither reaches the upstream, which receives
/// its own authority.
fn check_target<B>(request: &Request<B>, names: &ServerNames, local: SocketAddr) -> Result<(), GatewayError> {
    let hosts: Vec<_> = request.headers().get_all(header::HOST).iter().collect();
    if hosts.len() > 1 {
        return Err(framing(format!("{} Host headers", hosts.len())));
    }
    let host = hosts.first().map(|h| String::from_utf8_lossy(h.as_bytes()).to_ascii_lowercase());

    match request.version() {
        Version::HTTP_2 => {
            let authority = request.uri().authority().map(|a| a.as_str().to_ascii_lowercase());
            if let (Some(host), Some(authority)) = (&host, &authority) {
                if host != authority {
                    return Err(framing(format!("Host {host:?} differs from :authority {authority:?}")));
                }
            }
        }
        _ => {
            if request.version() == Version::HTTP_11 && host.is_none() {
                return Err(framing("missing Host header"));
            }
            if let Some(authority) = request.uri().authority() {
                let lower = authority.as_str().to_ascii_lowercase();
                if request.uri().scheme_str() != Some("https") || host.as_deref() != Some(lower.as_str()) {
                    return Err(framing(format!("absolute-form target for {lower:?} does not name this host")));
                }
                if !names.matches(authority, local) {
                    return Err(framing(format!("absolute-form target for {lower:?} does not name this gateway")));
                }
            }
        }
    }
    Ok(())
}

/// Removes hop-by-hop headers, the headers named in `Connection`, every
/// `Proxy-*` header, `Authorization`, `Host` and every header that
/// [`is_own_header`] claims for the gateway. Used for request headers and
/// for request trailers alike.
pub fn strip_request_headers(headers: &mut HeaderMap) {
    let stripped = |name: &HeaderName| *name == header::AUTHORIZATION || is_own_header(name.as_str());
    strip_headers(headers, stripped);
    announce_only_kept_trailers(headers, stripped);
}

/// Rewrites `Trailer` to name only trailers that may follow: none that
/// `stripped` removes, no hop-by-hop header, and no framing, routing or
/// authentication field (RFC 9110 section 6.5.1). Removes it when none is
/// left.
fn announce_only_kept_trailers(headers: &mut HeaderMap, stripped: impl Fn(&HeaderName) -> bool) {
    if !headers.contains_key(header::TRAILER) {
        return;
    }
    let forbidden = [header::CONTENT_LENGTH, header::CONTENT_TYPE, header::CONTENT_ENCODING, header::TRAILER];
    let allowed: Vec<HeaderName> = headers
        .get_all(header::TRAILER)
        .iter()
        .flat_map(|value| {
            String::from_utf8_lossy(value.as_bytes()).split(',').map(str::trim).map(str::to_owned).collect::<Vec<_>>()
        })
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .filter(|name| {
            !stripped(name)
                && !HOP_BY_HOP.contains(name)
                && !name.as_str().starts_with("proxy-")
                && !forbidden.contains(name)
        })
        .collect();
    headers.remove(header::TRAILER);
    let value = allowed.iter().map(HeaderName::as_str).collect::<Vec<_>>().join(", ");
    if let Ok(value) = HeaderValue::from_str(&value)
        && !value.is_empty()
    {
        headers.insert(header::TRAILER, value);
    }
}

/// Returns whether `name` falls in the gateway's `x-portcullis-` namespace
/// once every byte other than an ASCII letter or digit is read as `-` and
/// letters are compared case-insensitively.
///
/// CGI (RFC 3875 section 4.1.18) and the servers built on it (WSGI, Rack,
/// PHP) turn `-` into `_` and upper-case the name, and some, such as
/// Apache httpd's environment mapping, turn every other non-alphanumeric
/// byte into `_` as well. So `x_portcullis_app_id` or `X.Portcullis-App-Id`
/// would reach such an upstream as the same variable as the gateway's own
/// `x-portcullis-app-id`.
pub fn is_own_header(name: &str) -> bool {
    let name = name.as_bytes();
    name.len() >= OWN_PREFIX.len()
        && name.iter().zip(OWN_PREFIX).all(|(&byte, &own)| {
            let byte = if byte.is_ascii_alphanumeric() { byte.to_ascii_lowercase() } else { b'-' };
            byte == own
        })
}

/// Removes hop-by-hop headers (RFC 9110 section 7.6.1) from a request or
/// response: those in [`HOP_BY_HOP`], those named by `Connection`, and
/// every `Proxy-*` header.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_headers(headers, |_| false);
}

/// Removes the hop-by-hop headers and those for which `also` is true.
/// Names are compared once per header present, and a header is removed
/// only if present: most requests carry only `host` of these.
fn strip_headers(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| {
            String::from_utf8_lossy(value.as_bytes())
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|token| !token.is_empty())
        .collect();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            HOP_BY_HOP.contains(name)
                || name.as_str().starts_with("proxy-")
                || named.iter().any(|token| token == name.as_str())
                || also(name)
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Returns a new random request id: 16 bytes as 32 lowercase hex digits.
/// They come from the thread's ChaCha generator (rand's `ThreadRng`, seeded
/// and reseeded from the system), which costs a small fraction of a system
/// random call per request. Ids must not be guessable or sequential. An
/// app receives its own ids, and a counter would show it how busy the
/// platform is.
pub fn new_request_id() -> String {
    let bytes: [u8; 16] = rand::random();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for byte in bytes {
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri("/x").version(Version::HTTP_11);
        for (name, value) in lines {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn request_id_is_32_lowercase_hex_digits() {
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{id}");
        assert_ne!(id, new_request_id());
    }

    #[test]
    fn target_len_matches_formatted_uri() {
        for target in ["/x", "/a/b?c=d", "https://gw.example/a?b", "https://gw.example:8443", "*"] {
            let uri: http::Uri = target.parse().unwrap();
            assert_eq!(target_len(&uri), uri.to_string().len(), "{target}");
        }
    }

    const LOCAL: &str = "127.0.0.1:8443";

    fn check(request: &Request<()>) -> Result<(), GatewayError> {
        check_head(request, 16384, &ServerNames::for_trust_domain("weather.example"), LOCAL.parse().unwrap())
    }

    #[test]
    fn chunked_alone_is_accepted() {
        assert!(check(&request(&[("host", "gw"), ("transfer-encoding", "Chunked")])).is_ok());
    }

    #[test]
    fn absolute_form_must_name_this_gateway() {
        let mut names = ServerNames::for_trust_domain("weather.example");
        names.add("Gateway.Internal").unwrap();
        names.add("192.0.2.7").unwrap();
        names.add("2001:db8::7").unwrap();
        let local: SocketAddr = LOCAL.parse().unwrap();
        let cases = [
            ("localhost", true),
            ("LOCALHOST", true),
            ("localhost:8443", true),
            ("gateway.weather.example", true),
            ("gateway.internal", true),
            ("127.0.0.1", true),
            ("127.0.0.1:8443", true),
            ("192.0.2.7:8443", true),
            ("[2001:db8::7]:8443", true),
            ("localhost:9101", false),
            ("127.0.0.1:9101", false),
            ("evil.example", false),
            ("localhost.evil.example", false),
            ("localhost.", false),
            ("weather.example", false),
            ("records.weather.example", false),
            ("127.0.0.2", false),
            ("192.0.2.8", false),
            ("[::1]", false),
            ("user@localhost", false),
            ("localhost@evil.example", false),
        ];
        for (authority, expected) in cases {
            let parsed: Authority = authority.parse().unwrap();
            assert_eq!(names.matches(&parsed, local), expected, "{authority}");
        }
    }

    #[test]
    fn invalid_server_names_are_rejected() {
        let mut names = ServerNames::for_trust_domain("weather.example");
        for name in ["", "gateway.example:8443", "bad name", "under_score..example"] {
            let error = names.add(name).unwrap_err();
            assert!(matches!(error, GatewayError::ServerName { .. }), "{name}: {error}");
        }
    }

    #[test]
    fn length_and_chunked_together_are_rejected() {
        let result = check(&request(&[("host", "gw"), ("transfer-encoding", "chunked"), ("content-length", "3")]));
        assert_eq!(result.unwrap_err().to_string(), "malformed request: both Content-Length and Transfer-Encoding");
    }

    #[test]
    fn control_characters_in_values_are_found() {
        let cases: [(&[u8], bool); 9] = [
            (b"", false),
            (b"Bearer abc.def-ghi_jkl", false),
            (b"tab\tinside", false),
            (b"obs-text \x80\xff", false),
            (b"nul \x00", true),
            (b"bell \x07", true),
            (b"escape \x1b[0m", true),
            (b"delete \x7f", true),
            (b"\x1f at the start", true),
        ];
        for (value, expected) in cases {
            assert_eq!(has_control_character(value), expected, "{:?}", String::from_utf8_lossy(value));
        }
        let mut long = vec![b'a'; 4096];
        long[4095] = 0x0b;
        assert!(has_control_character(&long), "a control character after 4 KiB");
    }

    #[test]
    fn every_hop_by_hop_header_is_stripped() {
        let mut headers = HeaderMap::new();
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "transfer-encoding",
            "upgrade",
            "expect",
            "host",
            "proxy-authenticate",
        ] {
            headers.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), "x".parse().unwrap());
        }
        headers.insert("accept", "*/*".parse().unwrap());
        headers.insert("authorization", "Bearer t".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["accept", "authorization"]);
    }

    #[test]
    fn trailer_names_only_kept_trailers() {
        let cases = [
            ("x-checksum", Some("x-checksum")),
            ("X-Checksum, x-portcullis-app-id, X_Portcullis_Scopes", Some("x-checksum")),
            ("authorization, content-length, transfer-encoding, te, host, proxy-authorization", None),
            ("x-a,x-b , , x-c", Some("x-a, x-b, x-c")),
            ("bad name, x-ok", Some("x-ok")),
        ];
        for (announced, expected) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(header::TRAILER, announced.parse().unwrap());
            strip_request_headers(&mut headers);
            let left = headers.get(header::TRAILER).map(|value| value.to_str().unwrap());
            assert_eq!(left, expected, "{announced}");
        }
    }

    #[test]
    fn hop_by_hop_and_named_headers_are_stripped() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", "close, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("proxy-authorization", "a".parse().unwrap());
        headers.insert("x-portcullis-app-id", "forged".parse().unwrap());
        headers.insert("authorization", "Bearer t".parse().unwrap());
        headers.insert("accept", "*/*".parse().unwrap());
        strip_request_headers(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn only_standard_methods_pass() {
        let accepted = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "CONNECT"];
        for method in accepted {
            assert!(check_method(&Method::from_bytes(method.as_bytes()).unwrap()).is_ok(), "{method}");
        }
        let rejected = ["get", "Post", "pAtCh", "GET.", "GETS", "PROPFIND", "MKCOL", "BREW"];
        for method in rejected {
            let error = check_method(&Method::from_bytes(method.as_bytes()).unwrap()).unwrap_err();
            assert_eq!(error.code(), "invalid_method", "{method}");
        }
    }

    #[test]
    fn own_header_spellings_are_recognised() {
        let cases = [
            ("x-portcullis-app-id", true),
            ("x_portcullis_app_id", true),
            ("X_PORTCULLIS_APP_ID", true),
            ("x-portcullis_scopes", true),
            ("x_portcullis-request-id", true),
            ("x.portcullis.app.id", true),
            ("x~portcullis~anything", true),
            ("x-portcullis-", true),
            ("x-portcullis", false),
            ("x-portcullisx-app-id", false),
            ("xx-portcullis-app-id", false),
            ("x-portculis-app-id", false),
            ("portcullis-app-id", false),
            ("accept", false),
            ("", false),
        ];
        for (name, expected) in cases {
            assert_eq!(is_own_header(name), expected, "{name}");
        }
    }
}
