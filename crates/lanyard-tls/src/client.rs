//! Client-side connections to a Lanyard server: gRPC over SPIFFE mTLS (agent API,
//! admin mTLS) and over the local admin Unix socket.

use std::path::Path;
use std::sync::Arc;

use lanyard_core::SpiffeId;
use tonic::transport::{Channel, Endpoint};

use crate::tls::{
    SharedBundles, SpiffeServerVerifier, SvidResolver, TlsError, certified_key, client_config,
};

/// Errors while connecting.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad client identity: {0}")]
    Identity(#[from] TlsError),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
}

/// A gRPC channel to `addr` over TLS, accepting only a server that presents an
/// X509-SVID for `server_id` valid under `bundles`; `identity` is an optional client
/// SVID as (DER chain, PKCS#8 key).
pub async fn tls_channel(
    addr: &str,
    bundles: SharedBundles,
    server_id: SpiffeId,
    identity: Option<(&[Vec<u8>], &[u8])>,
) -> Result<Channel, ConnectError> {
    let resolver = match identity {
        Some((chain, key)) => Some(Arc::new(SvidResolver::new(certified_key(chain, key)?))),
        None => None,
    };
    tls_channel_with(addr, bundles, server_id, resolver).await
}

/// Like [`tls_channel`], with a resolver whose SVID the caller can swap on renewal.
pub async fn tls_channel_with(
    addr: &str,
    bundles: SharedBundles,
    server_id: SpiffeId,
    identity: Option<Arc<SvidResolver>>,
) -> Result<Channel, ConnectError> {
    let verifier = Arc::new(SpiffeServerVerifier::new(bundles, server_id));
    let cfg = Arc::new(client_config(verifier, identity)?);
    connect_tls(addr, cfg).await
}

/// Connect a gRPC channel over TLS with the given client configuration.
async fn connect_tls(addr: &str, cfg: Arc<rustls::ClientConfig>) -> Result<Channel, ConnectError> {
    let target = addr.to_string();
    let err = |reason: String| ConnectError::Connect {
        addr: addr.to_string(),
        reason,
    };
    Endpoint::try_from(format!("http://{addr}"))
        .map_err(|e| err(e.to_string()))?
        .connect_with_connector(tower::service_fn(move |_| {
            let cfg = cfg.clone();
            let target = target.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(target).await?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from("lanyard-server")
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| {
            let source = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            err(format!("{e}{source}"))
        })
}

/// A TLS channel that does NOT verify the server: only for an agent's explicitly
/// requested insecure first contact, after which the bundle it receives is trusted.
pub async fn insecure_channel(addr: &str) -> Result<Channel, ConnectError> {
    let cfg = Arc::new(crate::tls::insecure_client_config()?);
    connect_tls(addr, cfg).await
}

/// A gRPC channel over a Unix socket (the admin socket).
pub async fn unix_channel(path: &Path) -> Result<Channel, ConnectError> {
    let p = path.to_path_buf();
    Endpoint::try_from("http://lanyard.local")
        .map_err(|e| ConnectError::Connect {
            addr: path.display().to_string(),
            reason: e.to_string(),
        })?
        .connect_with_connector(tower::service_fn(move |_| {
            let p = p.clone();
            async move {
                let s = tokio::net::UnixStream::connect(p).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .map_err(|e| ConnectError::Connect {
            addr: path.display().to_string(),
            reason: e.to_string(),
        })
}
