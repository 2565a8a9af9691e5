//! Reading `Proxy-Authorization: Basic` (RFC 7617) and identifying the
//! calling app.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use http::header::PROXY_AUTHORIZATION;
use portcullis_config::AppId;

use super::Proxy;
use super::error::ProxyError;
use crate::rules::AppRules;

/// An app whose secret matched, with its registered rules.
pub(crate) struct Caller {
    pub app_id: AppId,
    pub rules: Arc<AppRules>,
}

/// Authenticates the caller of a request by its app id and secret.
///
/// A failed authentication is logged with the claimed app id and the
/// client's address, never with the secret.
pub(crate) async fn authenticate(proxy: &Proxy, peer: SocketAddr, headers: &HeaderMap) -> Result<AppId, ProxyError> {
    let (claimed, secret) =
        basic_credentials(headers).map_err(|problem| ProxyError::MissingCredentials { peer, problem })?;

    let wrong_secret = || ProxyError::WrongSecret { claimed: printable(&claimed), peer };
    let Ok(app_id) = AppId::parse(&claimed) else {
        return Err(wrong_secret());
    };
    if !proxy.secrets.verify(&app_id, &secret).await? {
        return Err(wrong_secret());
    }
    Ok(app_id)
}

/// Checks that an authenticated app is not banned and finds its rules.
pub(crate) fn admit(proxy: &Proxy, app_id: AppId) -> Result<Caller, ProxyError> {
    if proxy.bans.is_banned(&app_id) {
        return Err(ProxyError::Banned { app_id: app_id.to_string() });
    }
    let Some(rules) = proxy.apps.get(&app_id) else {
        return Err(ProxyError::NotDeployed { app_id: app_id.to_string() });
    };
    Ok(Caller { app_id, rules })
}

/// Decodes the user name and password of the one `Proxy-Authorization`
/// header. The scheme name is case-insensitive (RFC 9110 section 11.1).
fn basic_credentials(headers: &HeaderMap) -> Result<(String, String), &'static str> {
    let mut values = headers.get_all(PROXY_AUTHORIZATION).iter();
    let value = values.next().ok_or("the header is missing")?;
    if values.next().is_some() {
        return Err("the header appears more than once");
    }

    let value = value.to_str().map_err(|_| "the header is not ASCII")?;
    let (scheme, token) = value.trim().split_once(' ').ok_or("the header has no credentials after the scheme")?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err("the scheme is not Basic");
    }

    let decoded = STANDARD.decode(token.trim()).map_err(|_| "the credentials are not valid base64")?;
    let decoded = String::from_utf8(decoded).map_err(|_| "the credentials are not UTF-8")?;
    let (user, password) = decoded.split_once(':').ok_or("the credentials have no ':' between user and password")?;
    Ok((user.to_owned(), password.to_owned()))
}

/// Shortens a claimed app id to what is useful in a log line; the log's
/// formatter escapes control characters.
fn printable(claimed: &str) -> String {
    claimed.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(PROXY_AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn basic_credentials_decode() {
        // "weather-app:pa:ss" in base64; the password may contain ':'.
        let parsed = basic_credentials(&headers(&["Basic d2VhdGhlci1hcHA6cGE6c3M="])).unwrap();
        assert_eq!(parsed, ("weather-app".to_owned(), "pa:ss".to_owned()));
        let lowercase = basic_credentials(&headers(&["basic d2VhdGhlci1hcHA6cGE6c3M="])).unwrap();
        assert_eq!(lowercase.0, "weather-app");
    }

    #[test]
    fn basic_credentials_reject_malformed() {
        let cases = [
            (&[][..], "the header is missing"),
            (&["Bearer abc"][..], "the scheme is not Basic"),
            (&["Basic"][..], "the header has no credentials after the scheme"),
            (&["Basic !!!"][..], "the credentials are not valid base64"),
            (&["Basic d2VhdGhlcg=="][..], "the credentials have no ':' between user and password"),
            (&["Basic YTpi", "Basic YTpi"][..], "the header appears more than once"),
        ];
        for (values, expected) in cases {
            assert_eq!(basic_credentials(&headers(values)).unwrap_err(), expected, "{values:?}");
        }
    }
}
