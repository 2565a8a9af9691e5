//! HTTP clients of the example apps: HTTPS with the app's certificate to
//! the gateway and the token service, and plain HTTP through the egress
//! proxy with the credentials in `HTTP_PROXY`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use url::Url;

/// Time allowed for one request, connecting included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `request`, failing when it takes longer than [`REQUEST_TIMEOUT`].
async fn within_timeout(request: impl Future<Output = Result<Response, String>>) -> Result<Response, String> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| format!("no response within {} s", REQUEST_TIMEOUT.as_secs()))?
}

/// The configuration the runtime gives an app in its environment.
#[derive(Debug, Clone)]
pub struct AppEnv {
    /// `PORTCULLIS_APP_ID`.
    pub app_id: String,
    /// `PORTCULLIS_GATEWAY`: the gateway's base URL.
    pub gateway: Url,
    /// `PORTCULLIS_TOKEN_URL`: the token endpoint.
    pub token_url: Url,
    /// `PORTCULLIS_CERT`, `PORTCULLIS_KEY`, `PORTCULLIS_CA_BUNDLE`.
    pub cert: PathBuf,
    /// The app's private key.
    pub key: PathBuf,
    /// The platform root.
    pub ca_bundle: PathBuf,
    /// `HTTP_PROXY`: `http://<app-id>:<secret>@<proxy>:<port>`.
    pub proxy: Url,
}

impl AppEnv {
    /// Reads the variables, naming the first one that is missing or invalid.
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).map_err(|_| format!("the environment variable {name} is not set"));
        let url = |name: &str| -> Result<Url, String> {
            let text = var(name)?;
            Url::parse(&text).map_err(|e| format!("{name} is not a URL: {e}"))
        };
        Ok(Self {
            app_id: var("PORTCULLIS_APP_ID")?,
            gateway: url("PORTCULLIS_GATEWAY")?,
            token_url: url("PORTCULLIS_TOKEN_URL")?,
            cert: var("PORTCULLIS_CERT")?.into(),
            key: var("PORTCULLIS_KEY")?.into(),
            ca_bundle: var("PORTCULLIS_CA_BUNDLE")?.into(),
            proxy: url("HTTP_PROXY")?,
        })
    }

    /// Builds the TLS client configuration with the app's certificate.
    pub fn tls(&self) -> Result<Arc<ClientConfig>, String> {
        crate::tls::client_config(&self.cert, &self.key, &self.ca_bundle).map_err(|e| e.to_string())
    }
}

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The whole body.
    pub body: Bytes,
}

/// An HTTP/1.1 client over TLS to one origin, reusing its connection and
/// opening a new one when the server has closed it.
pub struct HttpsClient {
    origin: Url,
    tls: Arc<ClientConfig>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpsClient {
    /// Creates a client for the origin (scheme, host and port) of `url`.
    pub fn new(url: &Url, tls: Arc<ClientConfig>) -> Self {
        Self { origin: url.clone(), tls, sender: None }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let host = self.origin.host_str().ok_or("the URL has no host")?.trim_matches(['[', ']']).to_owned();
        let port = self.origin.port_or_known_default().ok_or("the URL has no port")?;
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {host}:{port} failed: {e}"))?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Sends one request to `path` (with query) and reads the whole
    /// response, within [`REQUEST_TIMEOUT`].
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Response, String> {
        within_timeout(self.send_inner(method, path, headers, body)).await
    }

    async fn send_inner(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Response, String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(self.connect().await?);
        }
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await.map_err(|e| e.to_string())?;

        let authority = self.origin[url::Position::BeforeHost..url::Position::AfterPort].to_owned();
        let mut request = hyper::Request::builder().method(method).uri(path).header("host", authority);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let result = sender.send_request(request).await;
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                self.sender = None;
                return Err(error.to_string());
            }
        };
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Response { status, body })
    }
}

/// Fetches an access token with the client credentials grant, the app
/// authenticating with its certificate. Returns the token, or the response
/// when the token service refused.
pub async fn fetch_token(
    client: &mut HttpsClient,
    token_path: &str,
    scope: &str,
) -> Result<String, Result<Response, String>> {
    let body = format!("grant_type=client_credentials&scope={}", scope.replace(' ', "+"));
    let headers = [("content-type", "application/x-www-form-urlencoded".to_owned())];
    let response = client.send("POST", token_path, &headers, Bytes::from(body)).await.map_err(Err)?;
    if response.status != 200 {
        return Err(Ok(response));
    }
    let value: serde_json::Value = serde_json::from_slice(&response.body).map_err(|e| Err(e.to_string()))?;
    value["access_token"].as_str().map(str::to_owned).ok_or(Ok(response))
}

/// Plain HTTP requests through the egress proxy named by `HTTP_PROXY`, one
/// connection per request.
#[derive(Debug, Clone)]
pub struct ProxyClient {
    address: String,
    authorization: String,
}

impl ProxyClient {
    /// Creates a client for the proxy URL `http://<user>:<password>@<host>:<port>`.
    pub fn new(proxy: &Url) -> Result<Self, String> {
        let host = proxy.host_str().ok_or("HTTP_PROXY has no host")?;
        let port = proxy.port_or_known_default().ok_or("HTTP_PROXY has no port")?;
        let password = proxy.password().ok_or("HTTP_PROXY has no password")?;
        let credentials = format!("{}:{password}", proxy.username());
        let authorization = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials));
        Ok(Self { address: format!("{host}:{port}"), authorization })
    }

    /// Sends `GET url` in absolute form to the proxy, within
    /// [`REQUEST_TIMEOUT`].
    pub async fn get(&self, url: &Url) -> Result<Response, String> {
        within_timeout(self.get_inner(url)).await
    }

    async fn get_inner(&self, url: &Url) -> Result<Response, String> {
        let tcp = tokio::net::TcpStream::connect(&self.address)
            .await
            .map_err(|e| format!("cannot connect to the egress proxy {}: {e}", self.address))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let authority = url[url::Position::BeforeHost..url::Position::AfterPort].to_owned();
        let request = hyper::Request::builder()
            .method("GET")
            .uri(url.as_str())
            .header("host", authority)
            .header("proxy-authorization", &self.authorization)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Response { status, body })
    }
}
