//! The agent's side of the agent API: node attestation (or reuse of the stored agent
//! SVID), the pushed entry stream, X509-SVID minting and rotation, agent SVID renewal,
//! and reconnection with backoff. Cached SVIDs keep being served while the server is
//! unreachable, until they expire.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lanyard_core::{Bundle, Clock, SpiffeId, SystemClock, X509Svid};
use lanyard_proto::node as pb;
use lanyard_proto::node::node_client::NodeClient;
use lanyard_tls::tls::{SvidResolver, certified_key};
use tokio::sync::{RwLock, watch};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::config::AgentConfig;
use crate::error::KeyError;
use crate::node_attest::evidence_source;
use crate::state::{AgentState, CachedSvid};
use lanyard_fs::{FsError, write_private};

/// The current connection to the server, shared with the Workload API (JWT minting).
#[derive(Debug, Clone, Default)]
pub struct NodeHandle {
    inner: Arc<RwLock<Option<NodeClient<Channel>>>>,
}

impl NodeHandle {
    pub async fn client(&self) -> Option<NodeClient<Channel>> {
        self.inner.read().await.clone()
    }
    async fn set(&self, c: Option<NodeClient<Channel>>) {
        *self.inner.write().await = c;
    }
}

/// The agent's own identity.
#[derive(Debug, Clone)]
pub struct AgentSvid {
    pub spiffe_id: SpiffeId,
    pub chain: Vec<Vec<u8>>,
    pub key_pkcs8: Vec<u8>,
    pub issued_at: i64,
    pub expires_at: i64,
}

fn svid_file(dir: &Path) -> PathBuf {
    dir.join("agent-svid.pem")
}
fn key_file(dir: &Path) -> PathBuf {
    dir.join("agent-key.pem")
}
pub fn bundle_file(dir: &Path) -> PathBuf {
    dir.join("bundle.json")
}

/// Persist the agent SVID so a restart needs no new token.
fn save_identity(dir: &Path, id: &AgentSvid) -> Result<(), FsError> {
    let pem_chain: String = id
        .chain
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.clone())))
        .collect();
    write_private(
        &key_file(dir),
        pem::encode(&pem::Pem::new("PRIVATE KEY", id.key_pkcs8.clone())).as_bytes(),
    )?;
    write_private(&svid_file(dir), pem_chain.as_bytes())
}

fn load_identity(dir: &Path, now: i64) -> Option<AgentSvid> {
    let chain =
        lanyard_core::bundle::pem_certificates(&std::fs::read(svid_file(dir)).ok()?).ok()?;
    let key = pem::parse(std::fs::read(key_file(dir)).ok()?).ok()?;
    let svid = X509Svid::parse(chain.clone()).ok()?;
    if svid.not_after() <= now + 30 {
        return None;
    }
    Some(AgentSvid {
        spiffe_id: svid.spiffe_id().clone(),
        chain,
        key_pkcs8: key.into_contents(),
        issued_at: svid.not_before(),
        expires_at: svid.not_after(),
    })
}

fn forget_identity(dir: &Path) {
    let _ = std::fs::remove_file(svid_file(dir));
    let _ = std::fs::remove_file(key_file(dir));
}

fn new_key_and_csr() -> Result<(Vec<u8>, Vec<u8>), KeyError> {
    let key = rcgen::KeyPair::generate().map_err(|e| KeyError::Generate(e.to_string()))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| KeyError::Generate(e.to_string()))?
        .der()
        .to_vec();
    Ok((key.serialize_der(), csr))
}

fn jitter(span: i64) -> i64 {
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    let r = i64::from(u32::from_le_bytes(b) % 1000);
    span * r / 1000
}

/// Rotation point: half the lifetime, minus up to 10% jitter so a fleet does not
/// rotate in lockstep.
fn rotate_at(issued: i64, expires: i64) -> i64 {
    let life = (expires - issued).max(2);
    issued + life / 2 - jitter(life / 10)
}

/// Run node attestation; returns the agent SVID and the server's bundle.
async fn attest(
    cfg: &AgentConfig,
    state: &AgentState,
) -> Result<(AgentSvid, Bundle), tonic::Status> {
    let channel = if cfg.insecure_bootstrap && state.bundle().is_none() {
        tracing::warn!(
            "insecure bootstrap: the server's certificate is NOT verified for this first contact"
        );
        lanyard_tls::client::insecure_channel(&cfg.server_address).await
    } else {
        lanyard_tls::client::tls_channel(
            &cfg.server_address,
            state.bundles.clone(),
            cfg.server_id.clone(),
            None,
        )
        .await
    }
    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = NodeClient::new(channel);
    let (key_pkcs8, csr) = new_key_and_csr().map_err(|e| tonic::Status::internal(e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let Some(source) = evidence_source(&cfg.bootstrap) else {
        return Err(tonic::Status::failed_precondition(
            "no stored agent SVID and no join token or x509pop key: give --join-token or --x509pop-cert/--x509pop-key",
        ));
    };
    let first = source
        .first_step(csr)
        .await
        .map_err(|e| tonic::Status::failed_precondition(e.to_string()))?;
    let _ = tx.send(pb::AttestRequest { step: Some(first) }).await;
    let mut stream = client
        .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    loop {
        let msg = stream
            .next()
            .await
            .ok_or_else(|| tonic::Status::unavailable("attestation stream ended early"))??;
        match msg.step {
            Some(pb::attest_response::Step::Challenge(ch)) => {
                let signature = source
                    .answer(&ch.nonce, &ch.algorithm)
                    .map_err(|e| tonic::Status::internal(e.to_string()))?;
                let _ = tx
                    .send(pb::AttestRequest {
                        step: Some(pb::attest_request::Step::ChallengeResponse(
                            pb::ChallengeResponse { signature },
                        )),
                    })
                    .await;
            }
            Some(pb::attest_response::Step::Result(r)) => {
                let svid = X509Svid::parse(r.cert_chain.clone()).map_err(|e| {
                    tonic::Status::internal(format!("the server sent a bad agent SVID: {e}"))
                })?;
                let bundle =
                    Bundle::parse(cfg.trust_domain.clone(), r.bundle.as_bytes()).map_err(|e| {
                        tonic::Status::internal(format!("the server sent a bad bundle: {e}"))
                    })?;
                return Ok((
                    AgentSvid {
                        spiffe_id: svid.spiffe_id().clone(),
                        chain: r.cert_chain,
                        key_pkcs8,
                        issued_at: svid.not_before(),
                        expires_at: svid.not_after(),
                    },
                    bundle,
                ));
            }
            None => return Err(tonic::Status::internal("empty attestation response")),
        }
    }
}

/// Mint SVIDs for entries that have none or are due for rotation.
async fn reconcile(
    client: &mut NodeClient<Channel>,
    state: &AgentState,
) -> Result<(), tonic::Status> {
    let now = SystemClock.unix_seconds();
    state.drop_expired(now);
    let due = state.due(now);
    if due.is_empty() {
        return Ok(());
    }
    let mut keys = std::collections::HashMap::new();
    let mut requests = Vec::new();
    for e in due.iter().take(pb::MAX_BATCH) {
        let (key, csr) = new_key_and_csr().map_err(|e| tonic::Status::internal(e.to_string()))?;
        keys.insert(e.id.clone(), key);
        requests.push(pb::X509SvidRequest {
            entry_id: e.id.clone(),
            csr,
        });
    }
    let resp = client
        .batch_new_x509_svid(pb::BatchX509SvidRequest { requests })
        .await?
        .into_inner();
    for r in resp.results {
        if !r.error.is_empty() {
            tracing::warn!(entry = %r.entry_id, error = %r.error, "X509-SVID not issued");
            continue;
        }
        let Some(entry) = due.iter().find(|e| e.id == r.entry_id) else {
            continue;
        };
        let Some(key) = keys.remove(&r.entry_id) else {
            continue;
        };
        let issued = now;
        let authority = r
            .cert_chain
            .first()
            .and_then(|c| lanyard_core::x509::authority_key_id(c))
            .unwrap_or_default();
        tracing::info!(spiffe_id = %entry.spiffe_id, expires_at = r.expires_at, "X509-SVID cached");
        state.store_svid(
            &r.entry_id,
            CachedSvid {
                spiffe_id: entry.spiffe_id.clone(),
                chain: r.cert_chain,
                key_pkcs8: key,
                issued_at: issued,
                expires_at: r.expires_at,
                rotate_at: rotate_at(issued, r.expires_at),
                entry_revision: entry.revision,
                authority,
                serial: r.serial,
                event_id: r.event_id,
            },
        );
    }
    Ok(())
}

/// The agent's main loop. Ends when `shutdown` becomes true.
pub async fn run(
    cfg: Arc<AgentConfig>,
    state: Arc<AgentState>,
    node: NodeHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    let mut renewed: Option<AgentSvid> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        match session(&cfg, &state, &node, renewed.take(), &mut shutdown).await {
            Ok(SessionEnd::Shutdown) => return,
            Ok(SessionEnd::Renewed(identity)) => {
                // Reconnect at once with the renewed SVID: the server accepts the
                // old one only until it sees the new one.
                node.set(None).await;
                renewed = Some(*identity);
                backoff = Duration::from_millis(200);
                continue;
            }
            Err(e) => {
                node.set(None).await;
                if e.code() == tonic::Code::PermissionDenied {
                    tracing::error!(error = %e.message(), "the server refused this agent; dropping its identities");
                    state.clear_identities();
                    forget_identity(&cfg.data_dir);
                } else {
                    tracing::warn!(error = %e.message(), retry_in = ?backoff, "lost the server; serving cached SVIDs and retrying");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Why a session ended without an error.
#[derive(Debug)]
enum SessionEnd {
    Shutdown,
    /// The agent SVID was renewed: reconnect presenting the new one.
    Renewed(Box<AgentSvid>),
}

/// One connection's life: identity (the one just renewed, else the saved one, else
/// attest), connect, stream, rotate.
async fn session(
    cfg: &AgentConfig,
    state: &AgentState,
    node: &NodeHandle,
    renewed: Option<AgentSvid>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SessionEnd, tonic::Status> {
    let now = SystemClock.unix_seconds();
    let mut identity = match renewed.or_else(|| load_identity(&cfg.data_dir, now)) {
        Some(id) => id,
        None => {
            let (id, bundle) = attest(cfg, state).await?;
            tracing::info!(agent = %id.spiffe_id, "node attested");
            save_identity(&cfg.data_dir, &id)
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
            if let Ok(doc) = bundle.to_json() {
                let _ = write_private(&bundle_file(&cfg.data_dir), doc.as_bytes());
            }
            if let Ok(mut set) = state.bundles.write() {
                set.insert(bundle);
            }
            id
        }
    };
    let resolver = Arc::new(SvidResolver::new(
        certified_key(&identity.chain, &identity.key_pkcs8)
            .map_err(|e| tonic::Status::internal(e.to_string()))?,
    ));
    let channel = lanyard_tls::client::tls_channel_with(
        &cfg.server_address,
        state.bundles.clone(),
        cfg.server_id.clone(),
        Some(resolver.clone()),
    )
    .await
    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = NodeClient::new(channel);
    let mut stream = client.sync(pb::SyncRequest {}).await?.into_inner();
    node.set(Some(client.clone())).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut reported: Option<std::collections::BTreeMap<String, i64>> = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(SessionEnd::Shutdown),
            msg = stream.next() => {
                let update = msg.ok_or_else(|| tonic::Status::unavailable("the server closed the entry stream"))??;
                if state.apply_sync(&update)
                    && let Some(b) = state.bundle()
                    && let Ok(doc) = b.to_json()
                {
                    let _ = write_private(&bundle_file(&cfg.data_dir), doc.as_bytes());
                }
                reconcile(&mut client, state).await?;
            }
            _ = tick.tick() => {
                reconcile(&mut client, state).await?;
                let now = SystemClock.unix_seconds();
                let own_authority = identity
                    .chain
                    .first()
                    .and_then(|c| lanyard_core::x509::authority_key_id(c))
                    .unwrap_or_default();
                let tainted = state.is_tainted(&own_authority);
                if tainted {
                    tracing::warn!("the agent SVID was signed by a tainted CA key; renewing now");
                }
                if tainted || now >= identity.issued_at + (identity.expires_at - identity.issued_at) / 2 {
                    let (key, csr) = new_key_and_csr().map_err(|e| tonic::Status::internal(e.to_string()))?;
                    let r = client.renew_agent(pb::RenewRequest { csr }).await?.into_inner();
                    let svid = X509Svid::parse(r.cert_chain.clone())
                        .map_err(|e| tonic::Status::internal(e.to_string()))?;
                    identity = AgentSvid {
                        spiffe_id: svid.spiffe_id().clone(),
                        chain: r.cert_chain,
                        key_pkcs8: key,
                        issued_at: now,
                        expires_at: svid.not_after(),
                    };
                    save_identity(&cfg.data_dir, &identity)
                        .map_err(|e| tonic::Status::internal(e.to_string()))?;
                    resolver.set(certified_key(&identity.chain, &identity.key_pkcs8).map_err(|e| tonic::Status::internal(e.to_string()))?);
                    tracing::info!(agent = %identity.spiffe_id, expires_at = identity.expires_at, "agent SVID renewed; reconnecting with it");
                    return Ok(SessionEnd::Renewed(Box::new(identity)));
                }
                // Tell the server which CA keys this agent still depends on, so that a
                // tainted key can leave the bundle once nobody uses it.
                let mut holdings = state.holdings();
                if let Some(ski) = identity.chain.first().and_then(|c| lanyard_core::x509::authority_key_id(c)) {
                    let e = holdings.entry(ski).or_insert(identity.expires_at);
                    *e = (*e).max(identity.expires_at);
                }
                if reported.as_ref() != Some(&holdings) {
                    client
                        .report_holdings(pb::Holdings { authorities: holdings.clone().into_iter().collect() })
                        .await?;
                    reported = Some(holdings);
                }
            }
        }
    }
}
