//! Responses for refused and failed requests: a status code and a short
//! JSON body with fixed words, never an internal detail such as an address.

use http::header::{CONTENT_TYPE, HeaderValue, PROXY_AUTHENTICATE};
use http::{Response, StatusCode};
use serde_json::json;

use super::REALM;
use super::body::{ProxyBody, full};
use super::error::ProxyError;
use crate::decision::{
    BANNED_RULE, BYTE_LIMIT_RULE, INVALID_TARGET_RULE, NO_RULES_RULE, ReasonCode, TUNNEL_LIMIT_RULE,
};

/// Returns the response for `error`. A refusal by a rule names the rule id
/// and reason code; a 407 carries the `Proxy-Authenticate` challenge (RFC
/// 9110 section 11.7.1).
pub(crate) fn error_response(error: &ProxyError) -> Response<ProxyBody> {
    let body = match error {
        ProxyError::MissingCredentials { .. } | ProxyError::WrongSecret { .. } => {
            json!({ "error": "proxy_authentication_required" })
        }
        ProxyError::Banned { .. } => json!({ "error": "app_banned", "rule": BANNED_RULE }),
        ProxyError::NotDeployed { .. } => json!({ "error": "app_not_deployed", "rule": NO_RULES_RULE }),
        ProxyError::BadTarget { problem, .. } => {
            json!({ "error": "bad_request_target", "rule": INVALID_TARGET_RULE, "detail": problem })
        }
        ProxyError::TunnelLimit { limit, .. } => {
            json!({ "error": "tunnel_limit", "rule": TUNNEL_LIMIT_RULE, "limit": limit })
        }
        ProxyError::ByteLimit { .. } => {
            json!({ "error": "egress_denied", "rule": BYTE_LIMIT_RULE, "reason": ReasonCode::ByteLimit.as_str() })
        }
        ProxyError::Denied { rule, reason, .. } => {
            json!({ "error": "egress_denied", "rule": rule, "reason": reason.as_str() })
        }
        ProxyError::ConnectTimeout { .. } | ProxyError::UpstreamTimeout { .. } => {
            json!({ "error": "upstream_timeout" })
        }
        ProxyError::Unreachable { .. } | ProxyError::Upstream { .. } => json!({ "error": "upstream_unreachable" }),
        ProxyError::Store { .. } => json!({ "error": "internal_error" }),
    };

    let mut response = Response::new(full(format!("{body}\n")));
    *response.status_mut() = error.status();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if error.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        let challenge = format!("Basic realm=\"{REALM}\"");
        response
            .headers_mut()
            .insert(PROXY_AUTHENTICATE, HeaderValue::from_str(&challenge).expect("the realm is ASCII"));
    }
    response
}
