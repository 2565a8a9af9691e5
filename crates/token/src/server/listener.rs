//! Serving the token service's routers over TLS.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use portcullis_identity::PlatformAcceptor;
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::TlsClient;

/// Time allowed for a TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time in-flight requests get to finish after shutdown is requested.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` (named `name` in logs) with client
/// certificates required and
/// verified by `acceptor`; each request carries the connection's
/// [`TlsClient`]. Returns after `shutdown` completes and in-flight requests
/// are drained (or [`DRAIN_TIMEOUT`] passed).
pub async fn serve_mutual_tls(
    name: &'static str,
    listener: TcpListener,
    acceptor: PlatformAcceptor,
    router: Router,
    shutdown: impl Future<Output = ()>,
) {
    let accept = move |tcp: tokio::net::TcpStream| {
        let acceptor = acceptor.clone();
        async move {
            let (tls, peer) = acceptor.accept(tcp).await?;
            let der = tls.get_ref().1.peer_certificates().and_then(|chain| chain.first()).map(|c| c.to_vec());
            let client = TlsClient {
                spiffe_id: peer.identity().to_string(),
                certificate_der: Arc::new(der.unwrap_or_default()),
            };
            Ok::<_, std::io::Error>((tls, Some(client)))
        }
    };
    serve(name, listener, router, accept, shutdown).await;
}

/// Serves `router` on `listener` with server-authenticated TLS only.
pub async fn serve_public_tls(
    name: &'static str,
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let accept = move |tcp: tokio::net::TcpStream| {
        let acceptor = acceptor.clone();
        async move { Ok::<_, std::io::Error>((acceptor.accept(tcp).await?, None)) }
    };
    serve(name, listener, router, accept, shutdown).await;
}

async fn serve<A, F, S>(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    accept: A,
    shutdown: impl Future<Output = ()>,
) where
    A: Fn(tokio::net::TcpStream) -> F + Clone + Send + 'static,
    F: Future<Output = std::io::Result<(S, Option<TlsClient>)>> + Send,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(listener = name, %address, "listening");
    tokio::pin!(shutdown);

    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };

        let accept = accept.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let (stream, client) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept(tcp)).await {
                Ok(Ok(accepted)) => accepted,
                Ok(Err(error)) => {
                    tracing::info!(%remote, %error, "TLS handshake rejected");
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let router = router.map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
                if let Some(client) = &client {
                    request.extensions_mut().insert(client.clone());
                }
                request
            });
            let service = TowerToHyperService::new(router);
            let connection =
                auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).into_owned();
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%remote, %error, "connection ended with an error");
            }
        });
    }

    tracing::info!(listener = name, %address, "stopping; draining connections");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!(listener = name, %address, "connections still open after the drain timeout; closing them");
    }
}
