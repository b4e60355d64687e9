//! The Lanyard agent: attests its node to the server, keeps the SVIDs of the entries
//! it may serve (minted from keys it generates, rotated at about half their life),
//! and serves the SPIFFE Workload API on a Unix socket, attesting each caller from its
//! peer credentials. With `authz_bind` it also serves the AuthZEN evaluation API for
//! agent-local decisions ([`authz`]).

pub mod attestor;
pub mod attestor_config;
pub mod authz;
pub mod cgroup;
pub mod config;
pub mod containerd;
pub mod docker;
pub mod error;
pub mod evidence;
pub mod h2shim;
pub mod k8s;
pub mod lifecycle;
pub mod node_attest;
pub mod oneshot;
pub mod sds;
pub mod state;
pub mod sync;
pub mod sync_update;
pub mod systemd;
#[cfg(test)]
mod test_support;
pub mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use lanyard_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

pub use config::{AgentConfig, Bootstrap, Overrides};
pub use error::{AgentError, ConfigError};

/// A started agent.
#[derive(Debug)]
pub struct RunningAgent {
    pub socket_path: PathBuf,
    /// The AuthZEN listener, when `authz_bind` is set.
    pub authz_addr: Option<SocketAddr>,
    pub state: Arc<state::AgentState>,
    /// The Workload API service the socket serves (one-shot mode calls it
    /// in-process for its own process).
    pub workload: workload::WorkloadService,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<Result<(), AgentError>>,
}

impl RunningAgent {
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// Run until stopped or a task fails.
    pub async fn wait(mut self) -> Result<(), AgentError> {
        while let Some(r) = self.tasks.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = self.shutdown.send(true);
                    return Err(e);
                }
                Err(e) => {
                    let _ = self.shutdown.send(true);
                    return Err(AgentError::Task(e.to_string()));
                }
            }
        }
        let _ = std::fs::remove_file(&self.socket_path);
        Ok(())
    }

    pub async fn shutdown(self) -> Result<(), AgentError> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }
}

async fn until(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Start the agent.
pub async fn start(cfg: AgentConfig) -> Result<RunningAgent, AgentError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| AgentError::io("cannot create", &cfg.data_dir, e))?;
    // The workload attestors (a kubelet CA that cannot be read fails the start).
    let attestors = Arc::new(
        attestor_config::build(&cfg.workload_attestors)
            .map_err(|e| ConfigError::invalid("workload_attestors", e))?,
    );
    tracing::info!(
        attestors = ?cfg.workload_attestors.iter().map(|a| a.name()).collect::<Vec<_>>(),
        "workload attestors"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700));
    }
    // Trust: the configured bundle, else the one saved by a previous run.
    let saved = sync::bundle_file(&cfg.data_dir);
    let bundle = match &cfg.trust_bundle {
        Some(b) => Some(b.clone()),
        None if saved.exists() => Some(config::read_bundle(&saved, &cfg.trust_domain)?),
        None => None,
    };
    if bundle.is_none() && !cfg.insecure_bootstrap {
        return Err(AgentError::NoTrustBundle);
    }
    let state = Arc::new(state::AgentState::new(cfg.trust_domain.clone(), bundle));

    // The Workload API socket is public: anyone may ask; attestation decides.
    let path = cfg.socket_path.clone();
    if path.exists() {
        if tokio::net::UnixStream::connect(&path).await.is_ok() {
            return Err(AgentError::SocketInUse(path));
        }
        std::fs::remove_file(&path).map_err(|e| AgentError::io("cannot remove stale", &path, e))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| AgentError::io("cannot create", dir, e))?;
    }
    let listener =
        UnixListener::bind(&path).map_err(|e| AgentError::io("cannot bind", &path, e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| AgentError::io("cannot set permissions on", &path, e))?;
    }

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let node = sync::NodeHandle::default();
    let cfg = Arc::new(cfg);
    {
        let (cfg, state, node, rx) = (
            cfg.clone(),
            state.clone(),
            node.clone(),
            shutdown_rx.clone(),
        );
        tasks.spawn(async move {
            sync::run(cfg, state, node, Arc::new(lanyard_core::SystemClock), rx).await;
            Ok(())
        });
    }
    let deliveries = Arc::new(evidence::Deliveries::default());
    {
        let (outbox, node, rx) = (deliveries.outbox(), node.clone(), shutdown_rx.clone());
        tasks.spawn(async move {
            evidence::report(outbox, node, std::time::Duration::from_secs(1), rx).await;
            Ok(())
        });
    }
    let authz_addr = match cfg.authz_bind {
        None => None,
        Some(bind) => Some(
            serve_authz(
                bind,
                state.clone(),
                node.clone(),
                shutdown_rx.clone(),
                &mut tasks,
            )
            .await?,
        ),
    };
    let svc = workload::WorkloadService::new(state.clone(), attestors, node, deliveries);
    // Each connection goes through the HTTP/2 shim (see `h2shim`), carrying the
    // caller's kernel credentials with it.
    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel(64);
    let rx = shutdown_rx.clone();
    tasks.spawn(async move {
        let mut stop = Box::pin(until(rx));
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok((sock, _)) => match h2shim::shim(sock) {
                        Ok(s) => { let _ = conn_tx.send(Ok::<_, std::io::Error>(s)).await; }
                        Err(e) => tracing::warn!(error = %e, "Workload API connection without credentials refused"),
                    },
                    Err(e) => tracing::warn!(error = %e, "Workload API accept failed"),
                },
            }
        }
    });
    let workload = svc.clone();
    // Envoy SDS on the same socket, attesting callers the same way.
    let sds = lanyard_proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer::new(
        sds::SdsService::new(svc.clone(), cfg.sds.clone()),
    );
    let rx = shutdown_rx.clone();
    tasks.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(svc.clone()))
            .add_service(sds)
            .add_service(lanyard_proto::secrets::secrets_server::SecretsServer::new(
                svc,
            ))
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), until(rx))
            .await
            .map_err(|e| AgentError::Serve {
                what: "Workload API",
                reason: e.to_string(),
            })
    });
    Ok(RunningAgent {
        socket_path: path,
        authz_addr,
        state,
        workload,
        shutdown,
        tasks,
    })
}

/// The AuthZEN evaluation API for agent-local decisions, and the task that reports
/// them to the server.
async fn serve_authz(
    bind: SocketAddr,
    state: Arc<state::AgentState>,
    node: sync::NodeHandle,
    shutdown_rx: watch::Receiver<bool>,
    tasks: &mut JoinSet<Result<(), AgentError>>,
) -> Result<SocketAddr, AgentError> {
    let bind_error = |source| AgentError::Bind {
        what: "authz_bind",
        addr: bind.to_string(),
        source,
    };
    let listener = TcpListener::bind(bind).await.map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let decisions = Arc::new(evidence::Outbox::default());
    {
        let (decisions, rx) = (decisions.clone(), shutdown_rx.clone());
        tasks.spawn(async move {
            evidence::report(decisions, node, std::time::Duration::from_secs(1), rx).await;
            Ok(())
        });
    }
    let pdp = Arc::new(authz::LocalPdp::new(state, decisions));
    pdp.set_base_url(format!("http://{addr}"));
    let app = lanyard_authz::http::authzen_routes(pdp)
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024));
    tasks.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(until(shutdown_rx))
            .await
            .map_err(|e| AgentError::Serve {
                what: "AuthZEN listener",
                reason: e.to_string(),
            })
    });
    Ok(addr)
}
