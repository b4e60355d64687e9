//! The Lanyard server: the trust root of a trust domain.
//!
//! [`start`] opens the datastore, loads or creates the CA, and serves:
//! * the admin API on a local Unix socket (mode 0600: trusted by file permissions);
//! * the agent API (node attestation, pushed entries, signing) over TLS;
//! * on an HTTP port: `/live`, `/ready`, OIDC discovery and JWKS, the AuthZEN
//!   evaluation API and the RFC 8693 token endpoint ([`http`]);
//! * Envoy ext_authz over mTLS when `ext_authz_bind` is set ([`extauthz`]).
//!
//! A background task rotates the CA and renews the server's own SVID.

pub mod access;
pub mod admin;
pub mod attest;
pub mod caller;
pub mod cluster;
pub mod config;
pub mod entries;
pub mod exchange;
pub mod extauthz;
pub mod feed;
pub mod fresh;
pub mod governance;
pub mod handles;
pub mod http;
pub mod keyring;
pub mod node;
pub mod policy;
pub mod release;
pub mod secrets;
pub mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use lanyard_core::Clock;
use lanyard_proto::admin::admin_server::AdminServer;
use lanyard_proto::node::node_server::NodeServer;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};

pub use config::{ConfigError, Overrides, ServerConfig};
/// The runtime decision core (the shared [`lanyard_authz`] crate).
pub use lanyard_authz::decision;
/// SPIFFE mTLS and client channels (the shared [`lanyard_tls`] crate).
pub use lanyard_tls::{client, tls};
pub use state::{ServerError, Shared};

/// How often the CA rotation task runs.
pub const TICK: Duration = Duration::from_secs(5);
/// Longest a TLS handshake may take on the agent API.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A started server.
#[derive(Debug)]
pub struct RunningServer {
    pub shared: Arc<Shared>,
    pub agent_addr: SocketAddr,
    /// The admin mTLS listener, when `admin_bind` is set.
    pub admin_addr: Option<SocketAddr>,
    pub http_addr: SocketAddr,
    /// The Envoy ext_authz listener, when `ext_authz_bind` is set.
    pub ext_authz_addr: Option<SocketAddr>,
    /// The mTLS AuthZEN listener, when `authzen_tls_bind` is set.
    pub authzen_tls_addr: Option<SocketAddr>,
    pub access: Arc<access::Access>,
    pub admin_socket: PathBuf,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<Result<(), ServerError>>,
}

impl RunningServer {
    /// Run until a task fails or shutdown is requested.
    pub async fn wait(mut self) -> Result<(), ServerError> {
        while let Some(r) = self.tasks.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = self.shutdown.send(true);
                    return Err(e);
                }
                Err(e) => {
                    let _ = self.shutdown.send(true);
                    return Err(ServerError::Task(e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Ask every listener to stop, then wait for them.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.shutdown.send(true);
        let path = self.admin_socket.clone();
        let r = self.wait().await;
        let _ = std::fs::remove_file(path);
        r
    }

    /// A handle that stops the server when sent `true`.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

async fn until(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Bind the admin socket, refusing to steal it from a running server.
async fn bind_admin_socket(path: &Path) -> Result<UnixListener, ServerError> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ServerError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(|e| ServerError::io("cannot remove stale", path, e))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ServerError::io("cannot create", dir, e))?;
    }
    let l = UnixListener::bind(path)
        .map_err(|e| ServerError::io("cannot bind admin socket", path, e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ServerError::io("cannot restrict", path, e))?;
    Ok(l)
}

type TlsConns = tokio::sync::mpsc::Receiver<
    Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
>;

/// Accept TCP connections, complete SPIFFE mTLS handshakes off the accept loop, and
/// hand finished TLS streams to a gRPC server. Failed handshakes are logged only.
async fn tls_listener(
    shared: &Arc<Shared>,
    bind: SocketAddr,
    client_cert_mandatory: bool,
    shutdown: watch::Receiver<bool>,
    tasks: &mut JoinSet<Result<(), ServerError>>,
) -> Result<(SocketAddr, TlsConns), ServerError> {
    let bind_error = |source| ServerError::Bind {
        what: "listener",
        addr: bind.to_string(),
        source,
    };
    let listener = TcpListener::bind(bind).await.map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let verifier = Arc::new(tls::SpiffeClientVerifier::new(
        shared.publication.bundles().clone(),
        client_cert_mandatory,
    ));
    let tls_cfg = tls::server_config(shared.ca.server_tls(), verifier)?;
    let acceptor = TlsAcceptor::from(Arc::new(tls_cfg));
    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel(64);
    tasks.spawn(async move {
        let mut stop = Box::pin(until(shutdown));
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                accepted = listener.accept() => {                    let (tcp, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
                    };
                    // gRPC answers are small writes: without NODELAY, Nagle and
                    // delayed ACKs add ~40ms to every request.
                    let _ = tcp.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    let conn_tx = conn_tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => { let _ = conn_tx.send(Ok::<_, std::io::Error>(tls)).await; }
                            Ok(Err(e)) => tracing::warn!(%peer, error = %e, "TLS handshake refused"),
                            Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    Ok((addr, conn_rx))
}

/// Serve gRPC `routes` over SPIFFE TLS on `bind` (client SVID mandatory or
/// optional); returns the bound address.
async fn serve_grpc_tls(
    shared: &Arc<Shared>,
    bind: SocketAddr,
    client_cert_mandatory: bool,
    routes: tonic::service::Routes,
    what: &'static str,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut JoinSet<Result<(), ServerError>>,
) -> Result<SocketAddr, ServerError> {
    let (addr, conns) =
        tls_listener(shared, bind, client_cert_mandatory, shutdown.clone(), tasks).await?;
    let rx = shutdown.clone();
    tasks.spawn(async move {
        tonic::transport::Server::builder()
            .layer(caller::CallerLayer)
            .add_routes(routes)
            .serve_with_incoming_shutdown(ReceiverStream::new(conns), until(rx))
            .await
            .map_err(|e| ServerError::Serve {
                what,
                reason: e.to_string(),
            })
    });
    Ok(addr)
}

/// Start the server with the given configuration and clock.
pub async fn start(
    config: ServerConfig,
    clock: Arc<dyn Clock>,
) -> Result<RunningServer, ServerError> {
    let shared = Shared::open(config, clock).await?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    // Datastore health, probed in the background for /ready and the admin API.
    let probe = shared.clone();
    let mut rx = shutdown_rx.clone();
    tasks.spawn(async move {
        loop {
            probe.db_health.probe(&probe.store).await;
            tokio::select! {
                () = tokio::time::sleep(handles::DatastoreHealth::INTERVAL) => {}
                _ = rx.changed() => return Ok(()),
            }
        }
    });

    // Admin API on the Unix socket.
    let admin_socket = shared.config.admin_socket.clone();
    let admin_listener = bind_admin_socket(&admin_socket).await?;
    let admin = AdminServer::new(admin::AdminService::local(shared.clone()));
    let rx = shutdown_rx.clone();
    tasks.spawn(async move {
        tonic::transport::Server::builder()
            .layer(caller::CallerLayer)
            .add_service(admin)
            .serve_with_incoming_shutdown(UnixListenerStream::new(admin_listener), until(rx))
            .await
            .map_err(|e| ServerError::Serve {
                what: "admin API",
                reason: e.to_string(),
            })
    });

    // Agent API over TLS (client certificate optional: attestation has none yet).
    let access = Arc::new(access::Access::new(&shared)?);
    let agent_addr = serve_grpc_tls(
        &shared,
        shared.config.bind,
        false,
        tonic::service::Routes::new(NodeServer::new(node::NodeService::new(
            &shared,
            access.clone(),
        )?)),
        "agent API",
        &shutdown_rx,
        &mut tasks,
    )
    .await?;

    let _ = shared.agent_address.set(agent_addr.to_string());

    // Other servers' changes (PostgreSQL LISTEN/NOTIFY and the change feed).
    let (feed_shared, feed_access, feed_rx) = (shared.clone(), access.clone(), shutdown_rx.clone());
    tasks.spawn(async move {
        feed::run(feed_shared, feed_access, feed_rx).await;
        Ok(())
    });

    // Admin API over mTLS for admin SVIDs (client certificate mandatory).
    let admin_addr = match shared.config.admin_bind {
        None => None,
        Some(bind) => Some(
            serve_grpc_tls(
                &shared,
                bind,
                true,
                tonic::service::Routes::new(AdminServer::new(admin::AdminService::mtls(
                    shared.clone(),
                ))),
                "admin mTLS API",
                &shutdown_rx,
                &mut tasks,
            )
            .await?,
        ),
    };

    // Health.
    let http_bind_error = |source| ServerError::Bind {
        what: "HTTP",
        addr: shared.config.http_bind.to_string(),
        source,
    };
    let http = TcpListener::bind(shared.config.http_bind)
        .await
        .map_err(http_bind_error)?;
    let http_addr = http.local_addr().map_err(http_bind_error)?;
    access.set_public_url(
        shared
            .config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{http_addr}")),
    );
    let ready_state = shared.clone();
    let app = http::routes(access.clone())
        .route("/live", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/ready",
            axum::routing::get(move || {
                let s = ready_state.clone();
                async move {
                    let ca_ok = s.ca.read().map(|c| c.active().is_some()).unwrap_or(false);
                    let db_down = s.db_health.down_cause();
                    match (ca_ok, db_down) {
                        (true, None) => (StatusCode::OK, "ready\n".to_string()),
                        (ca_ok, db) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!(
                                "not ready: ca_active={ca_ok} datastore={}\n",
                                db.map(|c| format!("unreachable ({c})"))
                                    .unwrap_or_else(|| "ok".into())
                            ),
                        ),
                    }
                }
            }),
        );
    let app = app.layer(axum::extract::DefaultBodyLimit::max(1024 * 1024));
    let rx = shutdown_rx.clone();
    tasks.spawn(async move {
        axum::serve(http, app)
            .with_graceful_shutdown(until(rx))
            .await
            .map_err(|e| ServerError::Serve {
                what: "HTTP",
                reason: e.to_string(),
            })
    });

    // Envoy ext_authz over mTLS (the enforcement point presents its SVID).
    let ext_authz_addr = match shared.config.ext_authz_bind {
        None => None,
        Some(bind) => Some(
            serve_grpc_tls(
                &shared,
                bind,
                true,
                tonic::service::Routes::new(
                    lanyard_proto::envoy::service::auth::v3::authorization_server::AuthorizationServer::new(
                        extauthz::ExtAuthz::new(access.clone()),
                    ),
                ),
                "ext_authz",
                &shutdown_rx,
                &mut tasks,
            )
            .await?,
        ),
    };

    // AuthZEN over HTTPS with mTLS: the caller's SVID authenticates it.
    let authzen_tls_addr = match shared.config.authzen_tls_bind {
        None => None,
        Some(bind) => {
            let (addr, mut conns) =
                tls_listener(&shared, bind, true, shutdown_rx.clone(), &mut tasks).await?;
            let app = http::authzen_routes(access.clone());
            let rx = shutdown_rx.clone();
            tasks.spawn(async move {
                let mut stop = Box::pin(until(rx));
                loop {
                    tokio::select! {
                        _ = &mut stop => return Ok(()),
                        conn = conns.recv() => {
                            let tls = match conn {
                                None => return Ok(()),
                                Some(Err(_)) => continue,
                                Some(Ok(tls)) => tls,
                            };
                            let Some(peer) = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(tls::peer_spiffe_id)
                            else {
                                continue;
                            };
                            let app = app
                                .clone()
                                .layer(axum::Extension(http::MtlsPeer(peer.to_string())));
                            tokio::spawn(async move {
                                let svc = hyper_util::service::TowerToHyperService::new(app);
                                let _ = hyper_util::server::conn::auto::Builder::new(
                                    hyper_util::rt::TokioExecutor::new(),
                                )
                                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                                .await;
                            });
                        }
                    }
                }
            });
            Some(addr)
        }
    };

    // CA rotation and server SVID renewal.
    let rot = shared.clone();
    let rx = shutdown_rx.clone();
    tasks.spawn(async move {
        let mut stop = Box::pin(until(rx));
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = tokio::time::sleep(TICK) => {
                    if let Err(e) = rot.tick().await {
                        tracing::error!(error = %e, "CA rotation step failed; retrying");
                    }
                    if let Err(e) = rot.audit.checkpoint().await {
                        tracing::error!(error = %e, "audit checkpoint failed; retrying");
                    }
                }
            }
        }
    });

    Ok(RunningServer {
        shared,
        agent_addr,
        admin_addr,
        http_addr,
        ext_authz_addr,
        authzen_tls_addr,
        access,
        admin_socket,
        shutdown,
        tasks,
    })
}
