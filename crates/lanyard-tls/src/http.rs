//! A small HTTP/1.1 client for the few HTTP calls Lanyard makes to platforms it
//! trusts for attestation: an OIDC issuer's discovery document and JWKS, the
//! Kubernetes TokenReview API, GitHub Actions' token-request endpoint and the EC2
//! instance metadata service.
//!
//! Deliberately narrow: one request per connection, a whole-exchange timeout, a cap
//! on the response body, no redirects followed (a 3xx is returned as it is, so a
//! caller decides), no cookies, no proxies. `https://` verifies the server against
//! the system's roots or a given CA file (then only those roots); `http://` is
//! plain, for IMDS (link-local) and loopback tests — callers that must not use it
//! check the URL first. Errors name the host, never the path or query (a token
//! request URL carries secrets in neither, but callers' URLs might).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Uri};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::tls::provider;

/// The default whole-exchange timeout (connect, TLS, request, response body).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default cap on a response body.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// Which certificate authorities an `https://` server must chain to.
#[derive(Debug, Clone)]
pub enum Roots {
    /// The operating system's trust store.
    System,
    /// Only the PEM certificates in this file.
    PemFile(PathBuf),
    /// Only these PEM certificates.
    Pem(Vec<u8>),
    /// None: plain `http://` only (IMDS); an `https://` URL is refused.
    None,
}

/// Why an HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot load the CA certificates {what}: {reason}")]
    Roots { what: String, reason: String },
    #[error("cannot connect to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error(
        "TLS with {host} failed: {reason} (is the server's certificate issued by the configured CA?)"
    )]
    Tls { host: String, reason: String },
    #[error("{host} did not answer within {secs} s")]
    Timeout { host: String, secs: u64 },
    #[error("the answer from {host} is larger than {limit} bytes")]
    TooLarge { host: String, limit: usize },
    #[error("HTTP exchange with {host} failed: {reason}")]
    Protocol { host: String, reason: String },
}

/// One request.
#[derive(Clone)]
pub struct HttpRequest {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl std::fmt::Debug for HttpRequest {
    // Header values (bearer tokens) and bodies (tokens under review) stay out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("host", &host_of(&self.url))
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

fn host_of(url: &str) -> String {
    url.parse::<Uri>()
        .ok()
        .and_then(|u| {
            u.authority().map(|a| {
                a.as_str()
                    .rsplit('@')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
        })
        .unwrap_or_else(|| "(unparsable URL)".into())
}

impl HttpRequest {
    fn new(method: Method, url: &str) -> Self {
        Self {
            method,
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
    pub fn get(url: &str) -> Self {
        Self::new(Method::GET, url)
    }
    pub fn put(url: &str) -> Self {
        Self::new(Method::PUT, url)
    }
    pub fn post(url: &str) -> Self {
        Self::new(Method::POST, url)
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }
}

/// One response (the whole body, read up to the client's cap).
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
    /// The start of the body as text, for error messages (at most 200 characters).
    pub fn snippet(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut s: String = text.chars().take(200).collect();
        if text.chars().count() > 200 {
            s.push('…');
        }
        s
    }
}

/// The client: TLS roots, timeout and body cap. Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    tls: Arc<rustls::ClientConfig>,
    /// Whether `https://` is configured (not [`Roots::None`]).
    https: bool,
    timeout: Duration,
    max_body: usize,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .field("max_body", &self.max_body)
            .finish()
    }
}

fn root_store(roots: &Roots) -> Result<RootCertStore, HttpError> {
    let mut store = RootCertStore::empty();
    let from_pem = |what: String, bytes: &[u8], store: &mut RootCertStore| {
        let err = |reason: String| HttpError::Roots {
            what: what.clone(),
            reason,
        };
        let certs = CertificateDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(format!("not PEM certificates ({e})")))?;
        if certs.is_empty() {
            return Err(err("no CERTIFICATE block in it".into()));
        }
        for c in certs {
            store
                .add(c)
                .map_err(|e| err(format!("a certificate is unusable as a root ({e})")))?;
        }
        Ok(())
    };
    match roots {
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // A system store may hold certificates rustls cannot use; skip them.
                let _ = store.add(c);
            }
            if store.is_empty() {
                return Err(HttpError::Roots {
                    what: "of the system".into(),
                    reason: "the system trust store is empty or unreadable; install ca-certificates or configure a CA file".into(),
                });
            }
        }
        Roots::PemFile(path) => {
            let bytes = std::fs::read(path).map_err(|e| HttpError::Roots {
                what: path.display().to_string(),
                reason: e.to_string(),
            })?;
            from_pem(path.display().to_string(), &bytes, &mut store)?;
        }
        Roots::Pem(bytes) => from_pem("given".into(), bytes, &mut store)?,
        Roots::None => {}
    }
    Ok(store)
}

impl HttpClient {
    /// A client verifying `https://` servers against `roots`.
    pub fn new(roots: &Roots) -> Result<Self, HttpError> {
        let store = root_store(roots)?;
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::Roots {
                what: "(TLS configuration)".into(),
                reason: e.to_string(),
            })?
            .with_root_certificates(store)
            .with_no_client_auth();
        Ok(Self {
            tls: Arc::new(cfg),
            https: !matches!(roots, Roots::None),
            timeout: DEFAULT_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
        })
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    /// Send `req` and read the whole answer.
    pub async fn send(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let target = Target::parse(&req.url)?;
        if target.https && !self.https {
            return Err(HttpError::BadUrl {
                url: target.authority,
                reason: "this client speaks plain http:// only (no CA roots configured)".into(),
            });
        }
        let host = target.authority.clone();
        match tokio::time::timeout(self.timeout, self.exchange(&target, req)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout {
                host,
                secs: self.timeout.as_secs().max(1),
            }),
        }
    }

    async fn exchange(&self, t: &Target, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| HttpError::Connect {
                host: t.authority.clone(),
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        if t.https {
            let name = ServerName::try_from(t.host.clone()).map_err(|e| HttpError::BadUrl {
                url: t.authority.clone(),
                reason: format!("not a TLS server name ({e})"),
            })?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| HttpError::Tls {
                    host: t.authority.clone(),
                    reason: e.to_string(),
                })?;
            self.over(hyper_util::rt::TokioIo::new(tls), t, req).await
        } else {
            self.over(hyper_util::rt::TokioIo::new(tcp), t, req).await
        }
    }

    async fn over<IO>(
        &self,
        io: IO,
        t: &Target,
        req: HttpRequest,
    ) -> Result<HttpResponse, HttpError>
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let proto = |e: &dyn std::fmt::Display| HttpError::Protocol {
            host: t.authority.clone(),
            reason: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| proto(&e))?;
        let driver = tokio::spawn(conn);
        let mut builder = hyper::Request::builder()
            .method(req.method)
            .uri(t.path_and_query.as_str())
            .header(hyper::header::HOST, t.authority.as_str())
            .header(
                hyper::header::USER_AGENT,
                concat!("lanyard/", env!("CARGO_PKG_VERSION")),
            )
            .header(hyper::header::CONNECTION, "close");
        for (k, v) in &req.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let request = builder
            .body(Full::new(Bytes::from(req.body)))
            .map_err(|e| proto(&format!("bad request header ({e})")))?;
        let result = async {
            let response = sender.send_request(request).await.map_err(|e| proto(&e))?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let body = Limited::new(response.into_body(), self.max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        HttpError::TooLarge {
                            host: t.authority.clone(),
                            limit: self.max_body,
                        }
                    } else {
                        proto(&e)
                    }
                })?
                .to_bytes()
                .to_vec();
            Ok(HttpResponse {
                status,
                headers,
                body,
            })
        }
        .await;
        driver.abort();
        result
    }
}

/// Where a request goes.
#[derive(Debug)]
struct Target {
    https: bool,
    host: String,
    port: u16,
    authority: String,
    path_and_query: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, HttpError> {
        let bad = |reason: &str| HttpError::BadUrl {
            url: host_of(url),
            reason: reason.to_string(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not an absolute URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            None => return Err(bad("not an absolute URL; give https://HOST/… (or http://)")),
            _ => return Err(bad("only http:// and https:// URLs are supported")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user information in a URL is not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        Ok(Self {
            https,
            host,
            port,
            authority: authority.as_str().to_string(),
            path_and_query,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP/1.1 server: answers `reply` to the first request and hands
    /// the raw request back.
    async fn serve_once(reply: Vec<u8>) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(&reply).await.unwrap();
            s.shutdown().await.ok();
            String::from_utf8_lossy(&buf).to_string()
        });
        (format!("http://{addr}"), task)
    }

    fn client() -> HttpClient {
        HttpClient::new(&Roots::Pem(rcgen_ca_pem())).unwrap()
    }

    fn rcgen_ca_pem() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem().into_bytes()
    }

    #[tokio::test]
    async fn a_request_carries_method_path_headers_and_body_and_the_answer_is_read() {
        let (base, server) = serve_once(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}".to_vec(),
        )
        .await;
        let r = client()
            .send(
                HttpRequest::post(&format!("{base}/apis/x?y=1&audience=a%20b"))
                    .header("Authorization", "Bearer t0ken")
                    .body(b"hello".to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201);
        assert!(r.is_success());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body, b"{\"a\":1}");
        let raw = server.await.unwrap();
        assert!(
            raw.starts_with("POST /apis/x?y=1&audience=a%20b HTTP/1.1\r\n"),
            "{raw}"
        );
        assert!(raw.contains("authorization: Bearer t0ken\r\n"), "{raw}");
        assert!(raw.ends_with("hello"), "{raw}");
    }

    #[tokio::test]
    async fn redirects_are_returned_not_followed() {
        let (base, _s) = serve_once(
            b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere.invalid/\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        )
        .await;
        let r = client().send(HttpRequest::get(&base)).await.unwrap();
        assert_eq!(r.status, 302);
        assert_eq!(r.header("location"), Some("http://elsewhere.invalid/"));
    }

    #[tokio::test]
    async fn an_answer_over_the_cap_is_refused() {
        let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n".to_vec();
        reply.extend(std::iter::repeat_n(b'x', 5000));
        let (base, _s) = serve_once(reply).await;
        let e = client()
            .with_max_body(1000)
            .send(HttpRequest::get(&base))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::TooLarge { limit: 1000, .. }), "{e}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_errors_name_only_the_host() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _keep = tokio::spawn(async move {
            let (_s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let e = client()
            .with_timeout(Duration::from_millis(300))
            .send(HttpRequest::get(&format!("http://{addr}/secret?token=abc")))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&addr.to_string()) && !text.contains("abc"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn https_refuses_a_server_outside_the_configured_roots() {
        // A TLS server whose certificate no configured root issued.
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(s).await;
        });
        let e = client()
            .send(HttpRequest::get(&format!("https://{addr}/")))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Tls { .. }), "{e}");
        // Trusting that very certificate makes the handshake succeed.
        let trusted = HttpClient::new(&Roots::Pem(cert.pem().into_bytes())).unwrap();
        let listener2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr2 = listener2.local_addr().unwrap();
        let cfg2 = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor2 = tokio_rustls::TlsAcceptor::from(Arc::new(cfg2));
        tokio::spawn(async move {
            let (s, _) = listener2.accept().await.unwrap();
            let mut tls = acceptor2.accept(s).await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tls.read(&mut buf).await;
            tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            tls.shutdown().await.ok();
        });
        let r = trusted
            .send(HttpRequest::get(&format!("https://{addr2}/")))
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()));
    }

    #[test]
    fn bad_urls_and_roots_are_clear_errors() {
        for (url, want) in [
            ("ftp://x/", "only http"),
            ("/relative", "absolute"),
            ("https://user:pw@host/", "user information"),
        ] {
            let e = Target::parse(url).unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("pw"), "{e}");
        }
        let t = Target::parse("https://[::1]:8443").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path_and_query.as_str()),
            ("::1", 8443, "/")
        );
        let e = HttpClient::new(&Roots::Pem(b"not pem".to_vec())).unwrap_err();
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
        let plain = HttpClient::new(&Roots::None).unwrap();
        let e = futures_block(plain.send(HttpRequest::get("https://h.example/")));
        assert!(e.unwrap_err().to_string().contains("plain http"));
        let e = HttpClient::new(&Roots::PemFile("/nonexistent/ca.pem".into())).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    fn futures_block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn debug_of_a_request_hides_header_values_and_body() {
        let r = HttpRequest::get("https://h.example/p?q=secret")
            .header("Authorization", "Bearer hidden")
            .body(b"token".to_vec());
        let d = format!("{r:?}");
        assert!(
            !d.contains("hidden") && !d.contains("secret") && !d.contains("token\""),
            "{d}"
        );
        assert!(d.contains("h.example"), "{d}");
    }
}
