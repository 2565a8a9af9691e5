//! A small HTTP server loop for the example services: HTTPS with mutual
//! TLS (HTTP/2 or HTTP/1.1 by ALPN) or plain HTTP/1.1, until SIGTERM or
//! Ctrl-C.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Largest request body a service reads, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// A request as the handlers see it: method, path, the app id header the
/// gateway added, and the body.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method.
    pub method: hyper::Method,
    /// The path without the query.
    pub path: String,
    /// `x-portcullis-app-id`, if present.
    pub app_id: Option<String>,
    /// The whole body, at most [`MAX_BODY_BYTES`].
    pub body: Bytes,
}

/// Command-line options shared by the services: `--listen ADDR` and, for
/// HTTPS, `--cert FILE --key FILE --ca-bundle FILE`; `--plain` for HTTP.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// Certificate, key and CA bundle for HTTPS; `None` with `--plain`.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl ServeOptions {
    /// Parses the process arguments, naming the option that is wrong.
    pub fn from_args() -> Result<Self, String> {
        let mut args = std::env::args().skip(1);
        let (mut listen, mut cert, mut key, mut ca, mut plain) = (None, None, None, None, false);
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "--listen" => {
                    let text = value()?;
                    listen = Some(text.parse().map_err(|_| format!("--listen {text:?} is not IP:port"))?);
                }
                "--cert" => cert = Some(PathBuf::from(value()?)),
                "--key" => key = Some(PathBuf::from(value()?)),
                "--ca-bundle" => ca = Some(PathBuf::from(value()?)),
                "--plain" => plain = true,
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        let listen = listen.ok_or("--listen IP:PORT is required")?;
        let tls = match (cert, key, ca, plain) {
            (Some(cert), Some(key), Some(ca), false) => Some((cert, key, ca)),
            (None, None, None, true) => None,
            _ => return Err("pass either --cert, --key and --ca-bundle, or --plain".into()),
        };
        Ok(Self { listen, tls })
    }
}

fn json(status: u16, value: serde_json::Value) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("a valid response")
}

/// Serves `handler` with `options` until SIGTERM or Ctrl-C. The handler
/// returns a status and a JSON body.
pub async fn serve<H, F>(name: &str, options: ServeOptions, handler: H) -> Result<(), String>
where
    H: Fn(Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = (u16, serde_json::Value)> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let acceptor = match &options.tls {
        Some((cert, key, ca)) => {
            Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(cert, key, ca).map_err(|e| e.to_string())?))
        }
        None => None,
    };
    eprintln!("{name}: listening on {} ({})", options.listen, if acceptor.is_some() { "HTTPS" } else { "HTTP" });

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    eprintln!("{name}: accept failed: {error}");
                    continue;
                }
            },
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let handler = handler.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
                        Ok(body) => body.to_bytes(),
                        Err(_) => {
                            return Ok::<_, std::convert::Infallible>(json(
                                413,
                                serde_json::json!({"error": "body_too_large"}),
                            ));
                        }
                    };
                    let app_id =
                        parts.headers.get("x-portcullis-app-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    let request = Request { method: parts.method, path: parts.uri.path().to_owned(), app_id, body };
                    let (status, value) = handler(request).await;
                    Ok(json(status, value))
                }
            });
            match acceptor {
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(tcp).await else { return };
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                None => {
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                }
            }
        });
    }
    eprintln!("{name}: stopped");
    Ok(())
}

/// Runs `serve` on a single-threaded Tokio runtime and exits with status 2
/// on a usage error, 1 on a failure.
pub fn main_with<H, F>(name: &str, handler: H) -> std::process::ExitCode
where
    H: Fn(Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = (u16, serde_json::Value)> + Send + 'static,
{
    let options = match ServeOptions::from_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{name}: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a Tokio runtime");
    match runtime.block_on(serve(name, options, handler)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{name}: {message}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Shared state of a service, for handlers that keep data.
pub type Shared<T> = Arc<std::sync::Mutex<T>>;
