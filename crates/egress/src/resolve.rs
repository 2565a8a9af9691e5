//! Name resolution behind a trait, so the engine resolves names itself (and
//! checks every answer) while tests supply fixed answers without a network.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::ResolverConfig;
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::error::EgressError;

/// A boxed future returned by [`Resolve::resolve`].
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, String>> + Send + 'a>>;

/// Resolves a host name to its IPv4 and IPv6 addresses.
pub trait Resolve: Send + Sync {
    /// Resolves `name`, a normalised host name without a trailing dot, as a
    /// fully qualified name (no search domains). Returns every address in
    /// the answer, or a message saying why there is none.
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a>;
}

/// The production resolver: hickory-resolver on Tokio.
///
/// Names are looked up with a trailing dot, so the resolver's search
/// domains never turn `api.example.org` into an internal name such as
/// `api.example.org.corp.internal`. The resolver reads `/etc/hosts` as well
/// as DNS, and its answers are checked like any other.
pub struct HickoryResolver {
    inner: TokioResolver,
}

impl HickoryResolver {
    /// Builds a resolver from the system configuration (`/etc/resolv.conf`).
    pub fn from_system_conf() -> Result<Self, EgressError> {
        let builder = TokioResolver::builder_tokio()
            .map_err(|error| EgressError::ResolverSetup { message: error.to_string() })?;
        let inner = builder.build().map_err(|error| EgressError::ResolverSetup { message: error.to_string() })?;
        Ok(Self { inner })
    }

    /// Builds a resolver with an explicit configuration, such as a list of
    /// name servers.
    pub fn with_config(config: ResolverConfig) -> Result<Self, EgressError> {
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .build()
            .map_err(|error| EgressError::ResolverSetup { message: error.to_string() })?;
        Ok(Self { inner })
    }
}

impl Resolve for HickoryResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            let fqdn = format!("{name}.");
            let lookup = self.inner.lookup_ip(fqdn.as_str()).await.map_err(|error| error.to_string())?;
            Ok(lookup.iter().collect())
        })
    }
}

/// A resolver with fixed answers, for tests and for hosts pinned by the
/// operator. A name without an entry fails to resolve.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    answers: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    /// Creates an empty resolver.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the answer for `name` (normalised, without a trailing dot),
    /// returned in the given order.
    pub fn with(mut self, name: &str, addresses: &[IpAddr]) -> Self {
        self.answers.insert(name.to_owned(), addresses.to_vec());
        self
    }
}

impl Resolve for StaticResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
        let answer = self.answers.get(name).cloned().ok_or_else(|| format!("no record found for {name}"));
        Box::pin(async move { answer })
    }
}

/// A resolver that answers the names in `egress.static_hosts` from that
/// table and passes every other name to `fallback`. A pinned name never
/// reaches DNS. Its answer is checked by the engine like any other, so the
/// address still needs an `allow_cidrs` entry when it is special-purpose.
pub struct PinnedResolver<R> {
    pinned: HashMap<String, Vec<IpAddr>>,
    fallback: R,
}

impl<R: Resolve> PinnedResolver<R> {
    /// Creates the resolver from the validated `egress.static_hosts` table
    /// (normalised names without a trailing dot).
    pub fn new(static_hosts: &std::collections::BTreeMap<String, IpAddr>, fallback: R) -> Self {
        let pinned = static_hosts.iter().map(|(name, address)| (name.clone(), vec![*address])).collect();
        Self { pinned, fallback }
    }
}

impl<R: Resolve> Resolve for PinnedResolver<R> {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
        match self.pinned.get(name) {
            Some(addresses) => {
                let answer = addresses.clone();
                Box::pin(async move { Ok(answer) })
            }
            None => self.fallback.resolve(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pinned_name_never_reaches_fallback() {
        let table = std::collections::BTreeMap::from([("feed.weather.test".to_owned(), IpAddr::from([127, 0, 0, 1]))]);
        let fallback = StaticResolver::new().with("other.test", &[IpAddr::from([192, 0, 2, 1])]);
        let resolver = PinnedResolver::new(&table, fallback);

        assert_eq!(resolver.resolve("feed.weather.test").await, Ok(vec![IpAddr::from([127, 0, 0, 1])]));
        assert_eq!(resolver.resolve("other.test").await, Ok(vec![IpAddr::from([192, 0, 2, 1])]));
        assert!(resolver.resolve("missing.test").await.is_err());
    }
}
