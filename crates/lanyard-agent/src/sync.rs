//! The agent's side of the agent API: node attestation (or reuse of the stored agent
//! SVID), the pushed entry stream, X509-SVID minting and rotation, agent SVID renewal,
//! and reconnection with backoff. Cached SVIDs keep being served while the server is
//! unreachable, until they expire.
//!
//! What to do and when is decided in [`crate::lifecycle`] (pure); this module performs
//! it. Time comes through a [`Clock`] and the server's unary calls through
//! [`NodeApi`], so a session's steps run against a fake clock and a fake server.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use lanyard_core::{Bundle, Clock, SpiffeId, X509Svid};
use lanyard_proto::node as pb;
use lanyard_proto::node::node_client::NodeClient;
use lanyard_tls::tls::{SvidResolver, certified_key};
use tokio::sync::{RwLock, watch};
use tokio_stream::StreamExt;
use tonic::Status;
use tonic::transport::Channel;

use crate::config::AgentConfig;
use crate::error::KeyError;
use crate::lifecycle::{
    self, Event, JITTER_DRAWS, Lifecycle, Phase, RenewReason, SessionEnd, SvidPlan, agent_renewal,
    holdings_changed, rotation_point,
};
use crate::node_attest::evidence_source;
use crate::state::{AgentState, CachedSvid, SessionFailure};
use lanyard_fs::{FsError, write_private};

/// The server's unary calls a session makes: implemented by the gRPC client, and by
/// an in-memory fake in tests. (The entry stream is any `Stream` of updates.)
pub trait NodeApi: Send {
    /// Mint X509-SVIDs from CSRs, one result per request.
    fn batch_new_x509_svid(
        &mut self,
        req: pb::BatchX509SvidRequest,
    ) -> impl Future<Output = Result<pb::BatchX509SvidResponse, Status>> + Send;
    /// Renew the agent SVID presented on this connection.
    fn renew_agent(
        &mut self,
        req: pb::RenewRequest,
    ) -> impl Future<Output = Result<pb::AgentSvid, Status>> + Send;
    /// Report the CA keys this agent depends on.
    fn report_holdings(
        &mut self,
        req: pb::Holdings,
    ) -> impl Future<Output = Result<(), Status>> + Send;
}

impl NodeApi for NodeClient<Channel> {
    async fn batch_new_x509_svid(
        &mut self,
        req: pb::BatchX509SvidRequest,
    ) -> Result<pb::BatchX509SvidResponse, Status> {
        Ok(NodeClient::batch_new_x509_svid(self, req)
            .await?
            .into_inner())
    }

    async fn renew_agent(&mut self, req: pb::RenewRequest) -> Result<pb::AgentSvid, Status> {
        Ok(NodeClient::renew_agent(self, req).await?.into_inner())
    }

    async fn report_holdings(&mut self, req: pb::Holdings) -> Result<(), Status> {
        NodeClient::report_holdings(self, req).await.map(|_| ())
    }
}

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

/// A random draw for [`rotation_point`]'s jitter.
fn jitter_draw() -> u32 {
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u32::from_le_bytes(b) % JITTER_DRAWS
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// Run node attestation; returns the agent SVID and the server's bundle.
async fn attest(
    cfg: &AgentConfig,
    server: &str,
    state: &AgentState,
) -> Result<(AgentSvid, Bundle), tonic::Status> {
    // The evidence first: a missing token or an unreachable metadata service is
    // reported as such, whether or not the server is reachable.
    let (key_pkcs8, csr) = new_key_and_csr().map_err(|e| tonic::Status::internal(e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let Some(source) = evidence_source(&cfg.bootstrap) else {
        return Err(tonic::Status::failed_precondition(
            "no stored agent SVID and no way to attest: give one of --join-token, --x509pop-cert/--x509pop-key, --jwt-token-file, --jwt-token-env, --jwt-from github-actions, --k8s-psat-cluster or --aws-iid (or the same keys in the config file)",
        ));
    };
    let first = source
        .first_step(csr)
        .await
        .map_err(|e| tonic::Status::failed_precondition(e.to_string()))?;
    let channel = if cfg.insecure_bootstrap && state.bundle().is_none() {
        tracing::warn!(
            "insecure bootstrap: the server's certificate is NOT verified for this first contact"
        );
        lanyard_tls::client::insecure_channel(server).await
    } else {
        lanyard_tls::client::tls_channel(server, state.bundles.clone(), cfg.server_id.clone(), None)
            .await
    }
    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = NodeClient::new(channel);
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

/// Mint SVIDs for the entries that need one at the clock's `now` (see
/// [`lifecycle::plan`]), after dropping the expired ones; at most [`pb::MAX_BATCH`] per
/// pass. An entry the server refuses is logged and the others are stored; a failed
/// call is returned (and ends the session).
async fn reconcile<A: NodeApi>(
    api: &mut A,
    state: &AgentState,
    clock: &dyn Clock,
) -> Result<(), Status> {
    let now = clock.unix_seconds();
    let SvidPlan { drop, mint } = state.plan_svids(now);
    if !drop.is_empty() {
        tracing::warn!(entries = ?drop, "X509-SVIDs expired before they could be rotated; no longer served");
    }
    if mint.is_empty() {
        return Ok(());
    }
    let mut keys = std::collections::HashMap::new();
    let mut requests = Vec::new();
    for e in mint.iter().take(pb::MAX_BATCH) {
        let (key, csr) = new_key_and_csr().map_err(internal)?;
        keys.insert(e.id.clone(), key);
        requests.push(pb::X509SvidRequest {
            entry_id: e.id.clone(),
            csr,
        });
    }
    let resp = api
        .batch_new_x509_svid(pb::BatchX509SvidRequest { requests })
        .await?;
    for r in resp.results {
        if !r.error.is_empty() {
            tracing::warn!(entry = %r.entry_id, error = %r.error, "X509-SVID not issued");
            continue;
        }
        let Some(entry) = mint.iter().find(|e| e.id == r.entry_id) else {
            continue;
        };
        let Some(key) = keys.remove(&r.entry_id) else {
            continue;
        };
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
                issued_at: now,
                expires_at: r.expires_at,
                rotate_at: rotation_point(now, r.expires_at, jitter_draw()),
                entry_revision: entry.revision,
                authority,
                serial: r.serial,
                event_id: r.event_id,
            },
        );
    }
    Ok(())
}

/// The agent's main loop. Ends when `shutdown` becomes true. Each session's end moves
/// the [`Lifecycle`], which says how long to wait before the next one.
pub async fn run(
    cfg: Arc<AgentConfig>,
    state: Arc<AgentState>,
    node: NodeHandle,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut life = Lifecycle::new();
    let mut renewed: Option<AgentSvid> = None;
    // Every address, a DNS name standing for each of its records.
    let mut candidates = resolve_all(&cfg.server_addresses).await;
    let mut servers = Failover::new(candidates.len());
    loop {
        if *shutdown.borrow() {
            return;
        }
        let server = candidates
            .get(servers.current())
            .unwrap_or(&cfg.server_address)
            .clone();
        let (end, error) = match session(
            &cfg,
            &server,
            &state,
            &node,
            clock.as_ref(),
            renewed.take(),
            &mut life,
            &mut shutdown,
        )
        .await
        {
            Ok(Ending::Shutdown) => return,
            Ok(Ending::Renewed(identity)) => {
                renewed = Some(*identity);
                (SessionEnd::Renewed, None)
            }
            Err(e) => {
                state.note_failure(SessionFailure {
                    code: e.code(),
                    message: e.message().to_string(),
                    attesting: life.phase() == Phase::Attesting,
                });
                (SessionEnd::from_status(&e), Some(e))
            }
        };
        node.set(None).await;
        let was_synced = life.phase() == Phase::Synced;
        life = life.on(Event::Ended(end));
        let Some(mut wait) = settle(life.phase(), error.as_ref(), &state, &cfg.data_dir) else {
            return;
        };
        if let Phase::ServerLost { .. } = life.phase() {
            // Another server next; at once while some have not been tried since
            // the last working one, with the backoff once all have.
            if servers.fail_over(was_synced) {
                tracing::warn!(from = %server, to = %candidates.get(servers.current()).unwrap_or(&server), "failing over to the next server");
                wait = Duration::ZERO;
            } else {
                // Every candidate failed in this round: look the names up again
                // before the next (records may have changed).
                let fresh = resolve_all(&cfg.server_addresses).await;
                if fresh != candidates {
                    tracing::info!(servers = ?fresh, "server addresses resolved anew");
                    servers = Failover::new(fresh.len());
                    candidates = fresh;
                }
            }
        } else {
            servers.reset_round();
        }
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Carry out the phase a session ended in: a banned agent drops its identities and
/// forgets its stored agent SVID. Returns the wait before the next session (zero: at
/// once, e.g. after a renewal), or `None` to stop.
fn settle(
    phase: Phase,
    error: Option<&Status>,
    state: &AgentState,
    data_dir: &Path,
) -> Option<Duration> {
    let reason = error.map(Status::message).unwrap_or_default();
    match phase {
        Phase::Stopped => None,
        Phase::Banned { retry_in } => {
            tracing::error!(error = %reason, retry_in = ?retry_in, "the server refused this agent; dropping its identities");
            state.clear_identities();
            forget_identity(data_dir);
            Some(retry_in)
        }
        Phase::ServerLost { retry_in } => {
            tracing::warn!(error = %reason, retry_in = ?retry_in, "lost the server; serving cached SVIDs and retrying");
            Some(retry_in)
        }
        Phase::Attesting | Phase::Connecting | Phase::Synced => Some(Duration::ZERO),
    }
}

/// Look up every `host:port` address: a name with several DNS records stands for
/// each of them (as `ip:port`); an IP address stays as it is; a name that does not
/// resolve now stays as a name (connecting to it reports why).
pub async fn resolve_all(addresses: &[String]) -> Vec<String> {
    let mut resolved = Vec::with_capacity(addresses.len());
    for a in addresses {
        let records = if a.parse::<std::net::SocketAddr>().is_ok() {
            None
        } else {
            match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(a.as_str()))
                .await
            {
                Ok(Ok(addrs)) => Some(addrs.map(|s| s.to_string()).collect()),
                Ok(Err(e)) => {
                    tracing::warn!(address = %a, error = %e, "cannot resolve the server address now");
                    None
                }
                Err(_) => {
                    tracing::warn!(address = %a, "resolving the server address timed out");
                    None
                }
            }
        };
        resolved.push((a.clone(), records));
    }
    candidates(resolved)
}

/// Pure: the failover candidates from each configured address and its records
/// (`None`: not resolved, kept as written), in order, each once.
pub fn candidates(resolved: Vec<(String, Option<Vec<String>>)>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (address, records) in resolved {
        let expanded = match records {
            Some(r) if !r.is_empty() => r,
            _ => vec![address],
        };
        for c in expanded {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// Which server to use, and whether a failover is immediate: each server is tried
/// once in a round; a round starts again after one worked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    n: usize,
    current: usize,
    tried: usize,
}

impl Failover {
    pub fn new(n: usize) -> Self {
        Self {
            n: n.max(1),
            current: 0,
            tried: 1,
        }
    }
    pub fn current(&self) -> usize {
        self.current
    }
    /// The current server failed (`worked`: it had served this agent before it
    /// failed). Move to the next; whether to try it at once (not every server has
    /// failed in this round).
    pub fn fail_over(&mut self, worked: bool) -> bool {
        if worked {
            self.tried = 1;
        }
        if self.n == 1 {
            return false;
        }
        self.current = (self.current + 1) % self.n;
        if self.tried < self.n {
            self.tried += 1;
            true
        } else {
            self.tried = 1;
            false
        }
    }
    /// A session ended otherwise (renewal, shutdown): a fresh round.
    pub fn reset_round(&mut self) {
        self.tried = 1;
    }
}

/// Why a session ended without an error.
#[derive(Debug)]
enum Ending {
    Shutdown,
    /// The agent SVID was renewed: reconnect presenting the new one.
    Renewed(Box<AgentSvid>),
}

/// One connection's life: identity (the one just renewed, else the saved one, else
/// attest), connect, then the synced phase ([`Session::run`]).
// One argument per thing a session touches; bundling them would only rename them.
#[allow(clippy::too_many_arguments)]
async fn session(
    cfg: &AgentConfig,
    server: &str,
    state: &AgentState,
    node: &NodeHandle,
    clock: &dyn Clock,
    renewed: Option<AgentSvid>,
    life: &mut Lifecycle,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Ending, Status> {
    let now = clock.unix_seconds();
    let identity = match renewed.or_else(|| load_identity(&cfg.data_dir, now)) {
        Some(id) => id,
        None => {
            *life = life.on(Event::NoIdentity);
            let (id, bundle) = attest(cfg, server, state).await?;
            tracing::info!(agent = %id.spiffe_id, "node attested");
            save_identity(&cfg.data_dir, &id).map_err(internal)?;
            if let Ok(doc) = bundle.to_json() {
                let _ = write_private(&bundle_file(&cfg.data_dir), doc.as_bytes());
            }
            if let Ok(mut set) = state.bundles.write() {
                set.insert(bundle);
            }
            id
        }
    };
    *life = life.on(Event::Identified);
    state.note_agent_id(&identity.spiffe_id);
    let resolver = Arc::new(SvidResolver::new(
        certified_key(&identity.chain, &identity.key_pkcs8).map_err(internal)?,
    ));
    let channel = lanyard_tls::client::tls_channel_with(
        server,
        state.bundles.clone(),
        cfg.server_id.clone(),
        Some(resolver.clone()),
    )
    .await
    .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut client = NodeClient::new(channel);
    let stream = client
        .sync(pb::SyncRequest { deltas: true })
        .await?
        .into_inner();
    node.set(Some(client.clone())).await;
    *life = life.on(Event::StreamOpened);
    Session {
        api: client,
        state,
        clock,
        data_dir: &cfg.data_dir,
        resolver,
        identity,
        reported: None,
    }
    .run(stream, shutdown)
    .await
}

/// A session in the synced phase: what its steps work with.
struct Session<'a, A> {
    api: A,
    state: &'a AgentState,
    clock: &'a dyn Clock,
    data_dir: &'a Path,
    /// Serves the agent SVID to the connection's TLS handshakes.
    resolver: Arc<SvidResolver>,
    identity: AgentSvid,
    /// The holdings last reported in this session.
    reported: Option<BTreeMap<String, i64>>,
}

impl<A: NodeApi> Session<'_, A> {
    /// Apply pushed updates and tick every second until shutdown, a renewal or an
    /// error.
    async fn run<U>(
        mut self,
        mut updates: U,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Ending, Status>
    where
        U: Stream<Item = Result<pb::SyncUpdate, Status>> + Unpin,
    {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(Ending::Shutdown),
                msg = updates.next() => {
                    let update = msg.ok_or_else(|| Status::unavailable("the server closed the entry stream"))??;
                    self.on_update(&update).await?;
                }
                _ = tick.tick() => {
                    if let Some(identity) = self.tick().await? {
                        return Ok(Ending::Renewed(Box::new(identity)));
                    }
                }
            }
        }
    }

    /// A pushed update: apply it (saving a changed bundle), then mint what it made
    /// due.
    async fn on_update(&mut self, update: &pb::SyncUpdate) -> Result<(), Status> {
        if self.state.apply_sync(update)
            && let Some(b) = self.state.bundle()
            && let Ok(doc) = b.to_json()
        {
            let _ = write_private(&bundle_file(self.data_dir), doc.as_bytes());
        }
        let minted = reconcile(&mut self.api, self.state, self.clock).await;
        self.state.note_update();
        minted
    }

    /// One tick: mint and rotate SVIDs, renew the agent SVID when
    /// [`agent_renewal`] says so (returning the renewed one: the session then ends),
    /// else report the holdings if they changed.
    async fn tick(&mut self) -> Result<Option<AgentSvid>, Status> {
        reconcile(&mut self.api, self.state, self.clock).await?;
        let now = self.clock.unix_seconds();
        let own_authority = self
            .identity
            .chain
            .first()
            .and_then(|c| lanyard_core::x509::authority_key_id(c));
        let tainted = self
            .state
            .is_tainted(own_authority.as_deref().unwrap_or_default());
        if let Some(reason) = agent_renewal(
            self.identity.issued_at,
            self.identity.expires_at,
            tainted,
            now,
        ) {
            if reason == RenewReason::TaintedAuthority {
                tracing::warn!("the agent SVID was signed by a tainted CA key; renewing now");
            }
            return self.renew(now).await.map(Some);
        }
        // Tell the server which CA keys this agent still depends on, so that a
        // tainted key can leave the bundle once nobody uses it.
        let holdings = lifecycle::holdings(
            self.state.holdings(),
            own_authority.map(|a| (a, self.identity.expires_at)),
        );
        if holdings_changed(&holdings, self.reported.as_ref()) {
            self.api
                .report_holdings(pb::Holdings {
                    authorities: holdings.clone().into_iter().collect(),
                })
                .await?;
            self.reported = Some(holdings);
        }
        Ok(None)
    }

    /// Renew the agent SVID, save it, and present it from now on.
    async fn renew(&mut self, now: i64) -> Result<AgentSvid, Status> {
        let (key, csr) = new_key_and_csr().map_err(internal)?;
        let r = self.api.renew_agent(pb::RenewRequest { csr }).await?;
        let svid = X509Svid::parse(r.cert_chain.clone()).map_err(internal)?;
        let identity = AgentSvid {
            spiffe_id: svid.spiffe_id().clone(),
            chain: r.cert_chain,
            key_pkcs8: key,
            issued_at: now,
            expires_at: svid.not_after(),
        };
        save_identity(self.data_dir, &identity).map_err(internal)?;
        self.resolver
            .set(certified_key(&identity.chain, &identity.key_pkcs8).map_err(internal)?);
        tracing::info!(agent = %identity.spiffe_id, expires_at = identity.expires_at, "agent SVID renewed; reconnecting with it");
        self.identity = identity.clone();
        Ok(identity)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use lanyard_core::FakeClock;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;
    use crate::lifecycle::{FIRST_RETRY, MAX_RETRY};
    use crate::state::CachedEntry;
    use crate::sync_update::SyncState;
    use crate::test_support::{NOW, TestCa, entry, trust_domain};

    /// Lifetime of the SVIDs the fake server signs.
    const TTL: i64 = 3600;
    const AGENT_ID: &str = "spiffe://example.org/lanyard/agent/join_token/t1";

    /// What the fake server was asked.
    #[derive(Debug, Default)]
    struct Calls {
        /// Entry ids of each batch call.
        batches: Vec<Vec<String>>,
        renewals: usize,
        holdings: Vec<BTreeMap<String, i64>>,
    }

    /// An in-memory server: signs every CSR with `ca` for [`TTL`] from the clock's
    /// now, as `spiffe://example.org/{entry id}`.
    struct FakeServer {
        ca: TestCa,
        clock: FakeClock,
        /// When set, every call fails with this.
        fail: Option<tonic::Code>,
        /// Entries refused within a batch.
        refuse: HashSet<String>,
        calls: Arc<Mutex<Calls>>,
    }

    impl FakeServer {
        fn new(ca: TestCa, clock: &FakeClock) -> Self {
            Self {
                ca,
                clock: clock.clone(),
                fail: None,
                refuse: HashSet::new(),
                calls: Arc::default(),
            }
        }

        fn reachable(&self) -> Result<(), Status> {
            match self.fail {
                Some(code) => Err(Status::new(code, "the fake server says no")),
                None => Ok(()),
            }
        }

        fn batches(&self) -> Vec<Vec<String>> {
            self.calls.lock().unwrap().batches.clone()
        }
    }

    impl NodeApi for FakeServer {
        async fn batch_new_x509_svid(
            &mut self,
            req: pb::BatchX509SvidRequest,
        ) -> Result<pb::BatchX509SvidResponse, Status> {
            self.reachable()?;
            let ids = req.requests.iter().map(|r| r.entry_id.clone()).collect();
            self.calls.lock().unwrap().batches.push(ids);
            let now = self.clock.unix_seconds();
            let results = req
                .requests
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    if self.refuse.contains(&r.entry_id) {
                        return pb::X509SvidResult {
                            entry_id: r.entry_id.clone(),
                            error: "the entry's policy forbids it".into(),
                            ..Default::default()
                        };
                    }
                    let id = format!("spiffe://example.org/{}", r.entry_id);
                    let leaf = self.ca.sign_csr(&r.csr, &id, now, now + TTL);
                    pb::X509SvidResult {
                        entry_id: r.entry_id.clone(),
                        serial: X509Svid::parse(vec![leaf.clone()])
                            .unwrap()
                            .serial()
                            .to_string(),
                        cert_chain: vec![leaf],
                        expires_at: now + TTL,
                        error: String::new(),
                        event_id: format!("ev-{now}-{i}"),
                    }
                })
                .collect();
            Ok(pb::BatchX509SvidResponse { results })
        }

        async fn renew_agent(&mut self, req: pb::RenewRequest) -> Result<pb::AgentSvid, Status> {
            self.reachable()?;
            self.calls.lock().unwrap().renewals += 1;
            let now = self.clock.unix_seconds();
            Ok(pb::AgentSvid {
                spiffe_id: AGENT_ID.into(),
                cert_chain: vec![self.ca.sign_csr(&req.csr, AGENT_ID, now, now + TTL)],
                expires_at: now + TTL,
                bundle: String::new(),
                bundle_sequence: 0,
            })
        }

        async fn report_holdings(&mut self, req: pb::Holdings) -> Result<(), Status> {
            self.reachable()?;
            let h = req.authorities.into_iter().collect();
            self.calls.lock().unwrap().holdings.push(h);
            Ok(())
        }
    }

    /// The agent state with `entries`.
    fn state_with(entries: Vec<CachedEntry>) -> AgentState {
        let state = AgentState::new(trust_domain(), None);
        state.apply(SyncState {
            entries,
            ..SyncState::default()
        });
        state
    }

    fn entries(ids: &[&str]) -> Vec<CachedEntry> {
        ids.iter()
            .map(|id| entry(id, &["unix:uid:1000"], 1))
            .collect()
    }

    /// An agent SVID signed by `ca`, issued at `issued`, living [`TTL`].
    fn agent_svid(ca: &TestCa, issued: i64) -> AgentSvid {
        let (leaf, key) = ca.leaf(AGENT_ID, issued, issued + TTL);
        AgentSvid {
            spiffe_id: SpiffeId::new(AGENT_ID).unwrap(),
            chain: vec![leaf],
            key_pkcs8: key,
            issued_at: issued,
            expires_at: issued + TTL,
        }
    }

    /// A synced session over `api`, presenting `identity`.
    fn session<'a>(
        api: FakeServer,
        state: &'a AgentState,
        clock: &'a FakeClock,
        dir: &'a Path,
        identity: AgentSvid,
    ) -> Session<'a, FakeServer> {
        let resolver = Arc::new(SvidResolver::new(
            certified_key(&identity.chain, &identity.key_pkcs8).unwrap(),
        ));
        Session {
            api,
            state,
            clock,
            data_dir: dir,
            resolver,
            identity,
            reported: None,
        }
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn a_name_with_several_records_is_a_candidate_per_record() {
        let got = candidates(vec![
            (
                "lanyard.internal:8081".into(),
                Some(vec!["10.0.0.1:8081".into(), "10.0.0.2:8081".into()]),
            ),
            ("10.0.0.3:8081".into(), None),
            ("down.internal:8081".into(), Some(vec![])),
            ("unresolvable:8081".into(), None),
            // The same record twice: tried once.
            (
                "again.internal:8081".into(),
                Some(vec!["10.0.0.1:8081".into()]),
            ),
        ]);
        assert_eq!(
            got,
            [
                "10.0.0.1:8081",
                "10.0.0.2:8081",
                "10.0.0.3:8081",
                "down.internal:8081",
                "unresolvable:8081"
            ]
        );
    }

    #[tokio::test]
    async fn names_are_looked_up_and_addresses_kept() {
        let got = resolve_all(&["127.0.0.1:9".to_string(), "localhost:9".to_string()]).await;
        assert_eq!(got[0], "127.0.0.1:9");
        // localhost resolves to at least one loopback record.
        assert!(
            got.iter()
                .skip(1)
                .all(|a| a.ends_with(":9") && !a.starts_with("localhost")),
            "{got:?}"
        );
        assert!(!got.is_empty());
    }

    #[test]
    fn failover_tries_each_server_once_per_round_then_backs_off() {
        let mut f = Failover::new(3);
        assert_eq!(f.current(), 0);
        // 0 fails (never worked): 1 at once, then 2 at once, then back to 0 with backoff.
        assert!(f.fail_over(false));
        assert_eq!(f.current(), 1);
        assert!(f.fail_over(false));
        assert_eq!(f.current(), 2);
        assert!(!f.fail_over(false), "every server failed this round");
        assert_eq!(f.current(), 0);
        // A server that worked and then failed starts a new round.
        assert!(f.fail_over(false));
        assert!(f.fail_over(true));
        assert_eq!(f.current(), 2);
        assert!(f.fail_over(false));
        assert!(!f.fail_over(false));
        // One server: never an immediate retry.
        let mut one = Failover::new(1);
        assert!(!one.fail_over(true));
        assert_eq!(one.current(), 0);
    }

    #[tokio::test]
    async fn missing_svids_are_minted_in_one_batch() {
        let clock = FakeClock::at(NOW);
        let ca = TestCa::new("ca1");
        let authority = ca.key_id();
        let mut server = FakeServer::new(ca, &clock);
        let state = state_with(entries(&["a", "b", "c"]));
        reconcile(&mut server, &state, &clock).await.unwrap();
        assert_eq!(server.batches(), [ids(&["a", "b", "c"])]);
        for id in ["a", "b", "c"] {
            let s = state.svid(id).unwrap();
            assert_eq!(
                s.spiffe_id.to_string(),
                format!("spiffe://example.org/{id}")
            );
            assert_eq!((s.issued_at, s.expires_at), (NOW, NOW + TTL));
            assert_eq!(s.authority, authority);
            assert_eq!(s.entry_revision, 1);
            assert!(s.event_id.starts_with("ev-"));
            // The key the agent generated is the one the certificate carries.
            certified_key(&s.chain, &s.key_pkcs8).unwrap();
            // Half-life minus up to 10% jitter.
            assert!(
                (NOW + TTL * 4 / 10..=NOW + TTL / 2).contains(&s.rotate_at),
                "{}",
                s.rotate_at - NOW
            );
        }
        // Nothing is due any more.
        reconcile(&mut server, &state, &clock).await.unwrap();
        assert_eq!(server.batches().len(), 1);
    }

    #[tokio::test]
    async fn an_svid_is_minted_again_only_from_its_rotation_point() {
        let clock = FakeClock::at(NOW);
        let mut server = FakeServer::new(TestCa::new("ca1"), &clock);
        let state = state_with(entries(&["web"]));
        reconcile(&mut server, &state, &clock).await.unwrap();
        let first = state.svid("web").unwrap();
        clock.set(first.rotate_at - 1);
        reconcile(&mut server, &state, &clock).await.unwrap();
        assert_eq!(
            server.batches().len(),
            1,
            "nothing before the rotation point"
        );
        assert_eq!(state.svid("web").unwrap(), first);
        clock.set(first.rotate_at);
        reconcile(&mut server, &state, &clock).await.unwrap();
        assert_eq!(server.batches(), [ids(&["web"]), ids(&["web"])]);
        let second = state.svid("web").unwrap();
        assert_eq!(second.issued_at, first.rotate_at);
        assert_ne!(second.serial, first.serial);
        assert_ne!(second.key_pkcs8, first.key_pkcs8);
        let issued = second.issued_at;
        assert!((issued + TTL * 4 / 10..=issued + TTL / 2).contains(&second.rotate_at));
    }

    #[tokio::test]
    async fn expired_svids_are_dropped_while_the_server_is_lost_and_backoff_doubles() {
        let clock = FakeClock::at(NOW);
        let mut server = FakeServer::new(TestCa::new("ca1"), &clock);
        let state = state_with(entries(&["web"]));
        reconcile(&mut server, &state, &clock).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        server.fail = Some(tonic::Code::Unavailable);
        let mut life = Lifecycle::new();
        let mut waits = Vec::new();
        let mut end_session = |e: Status| {
            life = life.on(Event::Ended(SessionEnd::from_status(&e)));
            waits.push(settle(life.phase(), Some(&e), &state, dir.path()));
        };

        // Due, but the server is gone: the cached SVID is still served.
        clock.set(NOW + TTL / 2);
        let e = reconcile(&mut server, &state, &clock).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        let served = state.identities(
            &[lanyard_core::Selector::new("unix:uid:1000").unwrap()],
            clock.unix_seconds(),
        );
        assert!(served[0].1.is_some());
        end_session(e);

        // Expired: dropped (and the Workload API streams told), though still unreachable.
        let mut changes = state.subscribe();
        changes.mark_unchanged();
        clock.set(NOW + TTL);
        let e = reconcile(&mut server, &state, &clock).await.unwrap_err();
        assert!(state.svid("web").is_none());
        assert!(changes.has_changed().unwrap());
        assert_eq!(state.entries().len(), 1, "the entries are kept");
        end_session(e);
        for _ in 0..6 {
            end_session(reconcile(&mut server, &state, &clock).await.unwrap_err());
        }
        let ms: Vec<u128> = waits.iter().map(|w| w.unwrap().as_millis()).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(life.backoff(), MAX_RETRY);
        assert_eq!(server.batches().len(), 1, "failed calls are not recorded");

        // Back: minted again at once.
        server.fail = None;
        reconcile(&mut server, &state, &clock).await.unwrap();
        assert_eq!(state.svid("web").unwrap().issued_at, NOW + TTL);
    }

    #[tokio::test]
    async fn a_tainted_authority_triggers_remint_and_agent_renewal() {
        let clock = FakeClock::at(NOW);
        let ca1 = TestCa::new("ca1");
        let tainted = ca1.key_id();
        let identity = agent_svid(&ca1, NOW);
        let state = state_with(entries(&["a", "b"]));
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(
            FakeServer::new(ca1, &clock),
            &state,
            &clock,
            dir.path(),
            identity,
        );
        assert!(s.tick().await.unwrap().is_none());
        assert_eq!(state.svid("a").unwrap().authority, tainted);

        // The server moves to a new CA key and taints the old one.
        let ca2 = TestCa::new("ca2");
        let fresh = ca2.key_id();
        s.api.ca = ca2;
        state.apply(SyncState {
            entries: entries(&["a", "b"]),
            tainted_authorities: [tainted.clone()].into(),
            ..SyncState::default()
        });
        clock.advance(Duration::from_secs(5));
        let renewed = s.tick().await.unwrap().expect("renewed");
        assert_eq!(s.api.batches(), [ids(&["a", "b"]), ids(&["a", "b"])]);
        for id in ["a", "b"] {
            assert_eq!(state.svid(id).unwrap().authority, fresh);
        }
        assert_eq!(s.api.calls.lock().unwrap().renewals, 1);
        assert_eq!(
            lanyard_core::x509::authority_key_id(&renewed.chain[0]),
            Some(fresh)
        );
        assert_eq!(renewed.issued_at, NOW + 5);
        // Saved for the next session, which presents it.
        let stored = load_identity(dir.path(), clock.unix_seconds()).unwrap();
        assert_eq!(stored.chain, renewed.chain);
        assert_eq!(stored.key_pkcs8, renewed.key_pkcs8);
        // The renewed SVIDs are not tainted: nothing more to mint.
        reconcile(&mut s.api, &state, &clock).await.unwrap();
        assert_eq!(s.api.batches().len(), 2);
        // A renewal reconnects at once with the backoff reset.
        let life = Lifecycle::new()
            .on(Event::Ended(SessionEnd::Failed))
            .on(Event::Ended(SessionEnd::Renewed));
        assert_eq!(life.backoff(), FIRST_RETRY);
        assert_eq!(
            settle(life.phase(), None, &state, dir.path()),
            Some(Duration::ZERO)
        );
    }

    #[tokio::test]
    async fn the_agent_svid_is_renewed_from_half_life() {
        let clock = FakeClock::at(NOW);
        let ca = TestCa::new("ca1");
        let identity = agent_svid(&ca, NOW);
        let state = state_with(Vec::new());
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(
            FakeServer::new(ca, &clock),
            &state,
            &clock,
            dir.path(),
            identity,
        );
        clock.set(NOW + TTL / 2 - 1);
        assert!(s.tick().await.unwrap().is_none());
        clock.set(NOW + TTL / 2);
        let renewed = s.tick().await.unwrap().expect("renewed");
        assert_eq!(renewed.expires_at, NOW + TTL / 2 + TTL);
        assert_eq!(s.identity.chain, renewed.chain);
        assert_eq!(s.api.calls.lock().unwrap().renewals, 1);
    }

    #[tokio::test]
    async fn permission_denied_bans_and_drops_the_identities() {
        let clock = FakeClock::at(NOW);
        let ca = TestCa::new("ca1");
        let identity = agent_svid(&ca, NOW);
        let state = state_with(entries(&["a", "b"]));
        let dir = tempfile::tempdir().unwrap();
        save_identity(dir.path(), &identity).unwrap();
        let mut s = session(
            FakeServer::new(ca, &clock),
            &state,
            &clock,
            dir.path(),
            identity,
        );
        s.tick().await.unwrap();
        assert!(state.svid("a").is_some());

        s.api.fail = Some(tonic::Code::PermissionDenied);
        clock.set(NOW + TTL / 2);
        let e = s.tick().await.unwrap_err();
        let life = Lifecycle::new().on(Event::Ended(SessionEnd::from_status(&e)));
        assert_eq!(
            life.phase(),
            Phase::Banned {
                retry_in: FIRST_RETRY
            }
        );
        assert_eq!(
            settle(life.phase(), Some(&e), &state, dir.path()),
            Some(FIRST_RETRY)
        );
        assert!(state.entries().is_empty());
        assert!(state.svid("a").is_none() && state.svid("b").is_none());
        // The stored agent SVID is forgotten: the next session attests afresh.
        assert!(!svid_file(dir.path()).exists());
        assert!(!key_file(dir.path()).exists());
        assert!(load_identity(dir.path(), NOW).is_none());
    }

    #[tokio::test]
    async fn a_refused_entry_is_skipped_and_the_others_are_stored() {
        let clock = FakeClock::at(NOW);
        let mut server = FakeServer::new(TestCa::new("ca1"), &clock);
        server.refuse.insert("b".into());
        let state = state_with(entries(&["a", "b", "c"]));
        reconcile(&mut server, &state, &clock).await.unwrap();
        assert!(state.svid("a").is_some());
        assert!(state.svid("b").is_none());
        assert!(state.svid("c").is_some());
        // Asked again on the next pass, alone.
        server.refuse.clear();
        reconcile(&mut server, &state, &clock).await.unwrap();
        assert_eq!(server.batches(), [ids(&["a", "b", "c"]), ids(&["b"])]);
        assert!(state.svid("b").is_some());
    }

    #[tokio::test]
    async fn holdings_are_reported_once_and_again_when_they_change() {
        let clock = FakeClock::at(NOW);
        let agent_ca = TestCa::new("agent-ca");
        let identity = agent_svid(&agent_ca, NOW - 60);
        let ca = TestCa::new("ca1");
        let (agent_key, svid_key) = (agent_ca.key_id(), ca.key_id());
        let state = state_with(entries(&["a"]));
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(
            FakeServer::new(ca, &clock),
            &state,
            &clock,
            dir.path(),
            identity,
        );
        for _ in 0..3 {
            assert!(s.tick().await.unwrap().is_none());
        }
        let reported = s.api.calls.lock().unwrap().holdings.clone();
        assert_eq!(
            reported,
            [BTreeMap::from([
                (agent_key.clone(), NOW - 60 + TTL),
                (svid_key.clone(), NOW + TTL)
            ])]
        );
        // A new entry minted later extends the CA key's holding: reported again, once.
        clock.advance(Duration::from_secs(10));
        state.apply(SyncState {
            entries: entries(&["a", "b"]),
            ..SyncState::default()
        });
        for _ in 0..3 {
            assert!(s.tick().await.unwrap().is_none());
        }
        let reported = s.api.calls.lock().unwrap().holdings.clone();
        assert_eq!(reported.len(), 2);
        assert_eq!(reported[1].get(&svid_key), Some(&(NOW + 10 + TTL)));
        assert_eq!(reported[1].get(&agent_key), Some(&(NOW - 60 + TTL)));
    }

    fn update(ca: &TestCa, ids: &[&str]) -> pb::SyncUpdate {
        pb::SyncUpdate {
            entries: ids
                .iter()
                .map(|id| pb::RegistrationEntry {
                    id: (*id).into(),
                    spiffe_id: format!("spiffe://example.org/{id}"),
                    selectors: vec!["unix:uid:1000".into()],
                    revision: 1,
                    ..Default::default()
                })
                .collect(),
            bundle: ca.bundle().to_json().unwrap(),
            bundle_sequence: 1,
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_applies_updates_ticks_and_ends_on_renewal() {
        let clock = FakeClock::at(NOW);
        let ca = TestCa::new("ca1");
        let first = update(&ca, &["a"]);
        let identity = agent_svid(&ca, NOW);
        let state = AgentState::new(trust_domain(), None);
        let dir = tempfile::tempdir().unwrap();
        let server = FakeServer::new(ca, &clock);
        let calls = server.calls.clone();
        let s = session(server, &state, &clock, dir.path(), identity);
        let (_stop, mut shutdown) = watch::channel(false);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let driver = async {
            tx.send(Ok(first)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(3500)).await;
            {
                let c = calls.lock().unwrap();
                assert_eq!(c.batches, [ids(&["a"])]);
                assert_eq!(c.holdings.len(), 1);
                assert_eq!(c.renewals, 0);
            }
            assert!(state.svid("a").is_some());
            assert!(bundle_file(dir.path()).exists());
            clock.set(NOW + TTL / 2);
            tx
        };
        let (ended, _tx) = tokio::join!(s.run(ReceiverStream::new(rx), &mut shutdown), driver);
        assert!(matches!(ended, Ok(Ending::Renewed(_))), "{ended:?}");
        assert_eq!(calls.lock().unwrap().renewals, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_ends_on_shutdown_or_when_the_stream_closes() {
        let clock = FakeClock::at(NOW);
        let ca = TestCa::new("ca1");
        let identity = agent_svid(&ca, NOW);
        let state = AgentState::new(trust_domain(), None);
        let dir = tempfile::tempdir().unwrap();
        let (stop, mut shutdown) = watch::channel(false);

        let s = session(
            FakeServer::new(TestCa::new("ca1"), &clock),
            &state,
            &clock,
            dir.path(),
            identity.clone(),
        );
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::SyncUpdate, Status>>(4);
        let stopper = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop.send(true).unwrap();
        };
        let (ended, ()) = tokio::join!(s.run(ReceiverStream::new(rx), &mut shutdown), stopper);
        assert!(matches!(ended, Ok(Ending::Shutdown)), "{ended:?}");
        drop(tx);

        let s = session(
            FakeServer::new(ca, &clock),
            &state,
            &clock,
            dir.path(),
            identity,
        );
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::SyncUpdate, Status>>(4);
        drop(tx);
        let e = s
            .run(ReceiverStream::new(rx), &mut shutdown)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert_eq!(SessionEnd::from_status(&e), SessionEnd::Failed);
        // An error in the stream ends it too.
        let s = session(
            FakeServer::new(TestCa::new("ca1"), &clock),
            &state,
            &clock,
            dir.path(),
            agent_svid(&TestCa::new("ca1"), NOW),
        );
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(Err(Status::permission_denied("evicted")))
            .await
            .unwrap();
        let e = s
            .run(ReceiverStream::new(rx), &mut shutdown)
            .await
            .unwrap_err();
        assert_eq!(SessionEnd::from_status(&e), SessionEnd::Refused);
    }
}
