//! The route table: which service and scope a canonical path and method
//! reach. Built from the configuration and swapped whole on reload.

use std::sync::Arc;

use http::Uri;
use portcullis_config::PlatformConfig;

use crate::error::GatewayError;
use crate::path::CanonicalPath;

/// One platform service as the gateway forwards to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The service name.
    pub service: String,
    /// The token audience of the service: `spiffe://<trust_domain>/service/<name>`.
    pub audience: String,
    /// Scheme and authority to forward to, such as `https://127.0.0.1:9101`.
    pub origin: Uri,
    /// A base path from the upstream URL prepended to the canonical path,
    /// without a trailing `/`; empty when the URL has none.
    pub base_path: String,
    /// Whether HTTP/2 is offered to the upstream; otherwise HTTP/1.1.
    pub http2: bool,
    /// The origin and protocol choice as one string, which names the
    /// upstream's connections in a worker's pool.
    pub pool_key: Arc<str>,
}

/// One route: a prefix and method filter leading to a service and scope.
#[derive(Debug, Clone)]
pub struct Route {
    /// Canonical path prefix.
    pub prefix: String,
    /// Upper-case methods; empty means every method.
    pub methods: Vec<String>,
    /// The scope the caller's token must carry.
    pub scope: String,
    /// The upstream the route forwards to.
    pub upstream: Arc<Upstream>,
}

impl Route {
    /// Returns whether `path` is under this route's prefix. A prefix that
    /// does not end in `/` matches only at a segment boundary, so `/records`
    /// matches `/records` and `/records/x` but not `/recordsx`.
    fn covers(&self, path: &str) -> bool {
        if !path.starts_with(&self.prefix) {
            return false;
        }
        self.prefix.ends_with('/') || path.len() == self.prefix.len() || path.as_bytes()[self.prefix.len()] == b'/'
    }

    fn allows(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }
}

/// The routes of every service, longest prefix first.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Builds the table from the configuration's services. Fails if an
    /// upstream URL is not an absolute `http` or `https` URL.
    pub fn from_config(config: &PlatformConfig) -> Result<Self, GatewayError> {
        let mut routes = Vec::new();
        for service in &config.services {
            let upstream = Arc::new(upstream_of(&config.trust_domain, service)?);
            for route in &service.routes {
                routes.push(Route {
                    prefix: route.prefix.clone(),
                    methods: route.methods.clone(),
                    scope: route.scope.clone(),
                    upstream: Arc::clone(&upstream),
                });
            }
        }

        // Longest prefix first; among equal prefixes the configuration
        // guarantees that methods do not overlap.
        routes.sort_by(|a, b| b.prefix.len().cmp(&a.prefix.len()));
        Ok(Self { routes })
    }

    /// Returns the route with the longest prefix covering `path` whose
    /// methods include `method`, or `None` (the response is 404).
    pub fn find(&self, path: &CanonicalPath, method: &str) -> Option<&Route> {
        self.routes.iter().find(|route| route.covers(path.as_str()) && route.allows(method))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Returns whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// Parses a service's upstream URL.
fn upstream_of(trust_domain: &str, config: &portcullis_config::Service) -> Result<Upstream, GatewayError> {
    let (service, url) = (config.name.as_str(), config.upstream.as_str());
    let invalid = |reason: &str| GatewayError::UpstreamUrl {
        service: service.to_owned(),
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| invalid("not a valid URL"))?;
    let scheme = uri.scheme_str().ok_or_else(|| invalid("no scheme"))?;
    if scheme != "https" && scheme != "http" {
        return Err(invalid("scheme is neither https nor http"));
    }
    let authority = uri.authority().ok_or_else(|| invalid("no host"))?.clone();
    if uri.query().is_some() {
        return Err(invalid("a query is not allowed"));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    let origin = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query("/")
        .build()
        .map_err(|_| invalid("not a valid URL"))?;
    let http2 = config.upstream_http2;
    let pool_key = Arc::from(format!("{origin} {}", if http2 { "h2" } else { "http/1.1" }));
    Ok(Upstream {
        service: service.to_owned(),
        audience: format!("spiffe://{trust_domain}/service/{service}"),
        origin,
        base_path,
        http2,
        pool_key,
    })
}
