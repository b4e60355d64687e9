//! The agent API (`lanyard.node.v1.Node`): node attestation (join token, x509pop),
//! agent SVID renewal, the pushed stream of authorized entries, and SVID signing.
//! Every RPC except `Attest` authenticates the caller by its agent X509-SVID and
//! re-checks, on every request, that the agent is attested, not banned, and entitled
//! to the entry it asks for.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use futures_util::Stream;
use lanyard_audit::evidence::{
    AgentCloneSuspected, AgentSvid, JwtSvidIssued, NodeAttestationRefused, NodeAttested,
    NodeRefused, Process, ReportsDropped, SecretRefused, SecretReleased, WorkloadSvidDelivered,
    X509SvidIssued,
};
use lanyard_ca::SubjectKey;
use lanyard_core::{Clock, Selector, SpiffeId, TrustDomain};
use lanyard_proto::node as pb;
use lanyard_store::{AnyStore, Entry, Node, Store};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::access::Access;
use crate::attest::join_token::JoinTokenAttestor;
use crate::attest::x509pop::X509PopAttestor;
use crate::attest::{AttestError, Challenger, NodeAttestors, NodeEvidence};
use crate::decision::{DecisionOut, DecisionRecord, decision_event, decision_evidence};
use crate::handles::{AuditSink, Authority, Changes, Entries, PolicyCache, Publication};
use crate::release::{Release, decide_release};
use crate::state::Shared;

/// How long an x509pop agent has to answer the challenge.
const CHALLENGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most SVIDs signed in one batch request.
pub use lanyard_proto::node::MAX_BATCH;

/// A field an agent sent that is malformed or out of bounds; the text names the
/// field and what is allowed. Answered as `InvalidArgument`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadReport(pub String);

pub use crate::attest::join_token::join_token_agent_id;
pub use crate::attest::x509pop::x509pop_trust_domain;

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

/// A server error as the agent sees it: `Unavailable` when the datastore cannot
/// be read (the agent retries), else `Internal`.
pub(crate) fn server_status(e: crate::state::ServerError) -> Status {
    match e {
        crate::state::ServerError::Unavailable(m) => Status::unavailable(m),
        crate::state::ServerError::Store(lanyard_store::StoreError::Unavailable(m)) => {
            Status::unavailable(m)
        }
        other => internal(other),
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "internal error");
    Status::internal(e.to_string())
}

/// What the agent API reads and writes: the narrow handles of [`Shared`] it uses,
/// and the two settings it needs. Nothing here reaches the admin-only parts of the
/// server (taint, policy writes, configuration).
#[derive(Debug)]
pub struct NodeState {
    pub store: AnyStore,
    pub clock: Arc<dyn Clock>,
    pub ca: Arc<Authority>,
    pub publication: Arc<Publication>,
    pub audit: Arc<AuditSink>,
    pub policies: Arc<PolicyCache>,
    pub changes: Changes,
    pub entries: Arc<Entries>,
    pub secrets: Arc<crate::secrets::SecretBox>,
    pub trust_domain: TrustDomain,
    pub agent_svid_ttl: Duration,
    /// What every agent's stream sends besides its entries, read once per change.
    pub stream_facts: StreamFacts,
}

/// The deny-list and the authz policy as of one change of this server's change
/// counter: read once per change (single flight: concurrent streams woken by the
/// same change wait for one read) instead of once per connected agent.
#[derive(Debug, Default)]
pub struct StreamFacts {
    slot: tokio::sync::Mutex<Option<(u64, std::time::Instant, Arc<Facts>)>>,
}

/// See [`StreamFacts`].
#[derive(Debug)]
pub struct Facts {
    pub revoked_jtis: Vec<String>,
    /// `None`: the stored authz policy does not compile (agents keep theirs).
    pub authz_policy: Option<(i64, String)>,
}

impl StreamFacts {
    /// Re-read at least this often even without a change.
    pub const MAX_AGE: Duration = Duration::from_secs(5);

    /// The facts as of change counter `version`.
    pub async fn get(&self, state: &NodeState, version: u64) -> Result<Arc<Facts>, Status> {
        let mut slot = self.slot.lock().await;
        if let Some((v, at, f)) = slot.as_ref()
            && *v == version
            && at.elapsed() < Self::MAX_AGE
        {
            return Ok(f.clone());
        }
        let revoked_jtis = state
            .store
            .revoked_jwts(state.clock.unix_seconds())
            .await
            .map_err(internal)?
            .into_iter()
            .map(|r| r.jti)
            .collect();
        let authz_policy = match crate::policy::active(
            &state.store,
            &state.policies,
            lanyard_policy::PolicyKind::Authz,
        )
        .await
        {
            Ok((v, p)) => Some((v, p.text().to_string())),
            Err(status) => {
                tracing::warn!(error = %status.message(), "authz policy not sent to agents");
                None
            }
        };
        let facts = Arc::new(Facts {
            revoked_jtis,
            authz_policy,
        });
        *slot = Some((version, std::time::Instant::now(), facts.clone()));
        Ok(facts)
    }
}

impl NodeState {
    /// An agent SVID for `id` from the agent's CSR (attestation and renewal).
    fn mint_agent_svid(
        &self,
        id: &SpiffeId,
        csr: &[u8],
        now: i64,
    ) -> Result<lanyard_ca::MintedX509, Status> {
        let ca = self.ca.read().map_err(internal)?;
        ca.mint_x509_svid(
            id,
            SubjectKey::Csr(csr),
            Some(self.agent_svid_ttl),
            &[],
            now,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    pub fn of(shared: &Shared) -> Self {
        Self {
            store: shared.store.clone(),
            clock: shared.clock.clone(),
            ca: shared.ca.clone(),
            publication: shared.publication.clone(),
            audit: shared.audit.clone(),
            policies: shared.policies.clone(),
            changes: shared.changes.clone(),
            entries: shared.entries.clone(),
            secrets: shared.secrets.clone(),
            trust_domain: shared.config.trust_domain.clone(),
            agent_svid_ttl: shared.config.agent_svid_ttl,
            stream_facts: StreamFacts::default(),
        }
    }
}

/// The service.
#[derive(Debug, Clone)]
pub struct NodeService {
    state: Arc<NodeState>,
    /// The node attestation methods this server offers.
    attestors: Arc<NodeAttestors>,
    /// Runtime authorization: the token key and issuer agents decide with.
    access: Arc<Access>,
}

impl NodeService {
    pub fn new(shared: &Shared, access: Arc<Access>) -> Result<Self, crate::state::ServerError> {
        Ok(Self {
            attestors: Arc::new(node_attestors(shared)?),
            state: Arc::new(NodeState::of(shared)),
            access,
        })
    }
}

/// The node attestors of a server's configuration.
pub fn node_attestors(shared: &Shared) -> Result<NodeAttestors, crate::state::ServerError> {
    let td = shared.config.trust_domain.clone();
    let mut a = NodeAttestors::default();
    if shared.config.jwt_attestors.is_empty() {
        a.disable(
            crate::attest::jwt::NAME,
            "jwt attestation is not enabled on this server; add a [[jwt_attestor]] table (see docs/server-config.md)",
        );
    } else {
        a.add(Arc::new(crate::attest::jwt::JwtNodeAttestor::new(
            &shared.config.jwt_attestors,
            shared.store.clone(),
            shared.clock.clone(),
            td.clone(),
        )?));
    }
    if shared.config.k8s_psat_clusters.is_empty() {
        a.disable(
            lanyard_nodeattest::k8s_psat::NAME,
            "k8s_psat attestation is not enabled on this server; add a [[k8s_psat]] table per cluster (see docs/attestation.md)",
        );
    } else {
        a.add(Arc::new(crate::attest::k8s_psat::K8sPsatAttestor::new(
            &shared.config.k8s_psat_clusters,
            shared.store.clone(),
            shared.clock.clone(),
            td.clone(),
        )?));
    }
    match &shared.config.aws_iid {
        Some(cfg) => a.add(Arc::new(crate::attest::aws_iid::AwsIidAttestor::new(
            cfg.clone(),
            shared.store.clone(),
            shared.clock.clone(),
            td.clone(),
        ))),
        None => a.disable(
            lanyard_nodeattest::aws_iid::NAME,
            "aws_iid attestation is not enabled on this server; add an [aws_iid] table with the accounts and AWS's region certificates (see docs/attestation.md)",
        ),
    }
    a.add(Arc::new(JoinTokenAttestor::new(
        shared.store.clone(),
        shared.clock.clone(),
        td.clone(),
    )));
    match &shared.x509pop_roots {
        Some(roots) => a.add(Arc::new(X509PopAttestor::new(
            roots.clone(),
            shared.clock.clone(),
            td,
        ))),
        None => a.disable(
            crate::attest::x509pop::NAME,
            crate::attest::x509pop::HOW_TO_ENABLE,
        ),
    }
    Ok(a)
}

/// Most deliveries accepted in one report.
pub const MAX_DELIVERIES: usize = 1000;

/// Check a reported delivery's fields before anything is recorded.
fn validate_delivery(d: &pb::Delivery) -> Result<(), BadReport> {
    let bad = |m: String| BadReport(m);
    SpiffeId::new(&d.spiffe_id).map_err(|e| bad(format!("spiffe_id {:?}: {e}", d.spiffe_id)))?;
    let hex_ok = |s: &str, max: usize| s.len() <= max && s.bytes().all(|b| b.is_ascii_hexdigit());
    match d.svid_type.as_str() {
        "x509" if !d.serial.is_empty() && hex_ok(&d.serial, 64) => {}
        "x509" => {
            return Err(bad(format!(
                "serial {:?} must be 1 to 64 hex digits",
                d.serial
            )));
        }
        "jwt" if !d.jti.is_empty() && d.jti.len() <= 128 => {}
        "jwt" => return Err(bad("jti must be 1 to 128 characters".to_string())),
        other => {
            return Err(bad(format!(
                "svid_type {other:?} must be \"x509\" or \"jwt\""
            )));
        }
    }
    if d.pid <= 0 {
        return Err(bad(format!("pid {} must be positive", d.pid)));
    }
    if !(d.sha256.is_empty() || d.sha256.len() == 64 && hex_ok(&d.sha256, 64)) {
        return Err(bad("sha256 must be 64 hex digits".to_string()));
    }
    if d.path.len() > 4096 || d.issuance_event_id.len() > 64 || d.audience.len() > 32 {
        return Err(bad(
            "path, issuance_event_id or audience is too long".to_string()
        ));
    }
    Ok(())
}

/// Refuse an agent report with more than `max` items.
fn check_report_size(n: usize, max: usize, what: &str) -> Result<(), Status> {
    if n > max {
        return Err(Status::invalid_argument(format!(
            "{n} {what} in one report; at most {max} are allowed"
        )));
    }
    Ok(())
}

impl NodeService {
    /// The event recording that an agent dropped `dropped.dropped` reports of `what`.
    fn dropped_event(
        &self,
        node: &Node,
        kind: lanyard_audit::EventKind,
        dropped: ReportsDropped,
        what: &str,
    ) -> lanyard_audit::Event {
        let mut ev = self
            .state
            .audit
            .event(kind, lanyard_audit::Outcome::Failure);
        ev.actor = Some(node.spiffe_id.to_string());
        ev.reason = Some(format!(
            "the agent dropped {} {what} reports (buffer full while the server was unreachable)",
            dropped.dropped
        ));
        ev.with(dropped)
    }

    /// The evidence-log event for one reported delivery. An identity the agent does
    /// not serve is still recorded (the claim itself is evidence) but as denied.
    fn delivery_event(&self, node: &Node, d: &pb::Delivery, served: bool) -> lanyard_audit::Event {
        let outcome = if served {
            lanyard_audit::Outcome::Success
        } else {
            lanyard_audit::Outcome::Denied
        };
        let mut ev = self
            .state
            .audit
            .event(lanyard_audit::EventKind::WorkloadSvidDelivered, outcome);
        if !served {
            ev.reason = Some(format!(
                "agent {} does not serve this identity",
                node.spiffe_id
            ));
        }
        ev.actor = Some(node.spiffe_id.to_string());
        ev.subject = Some(d.spiffe_id.clone());
        if !d.issuance_event_id.is_empty() {
            ev.parent_id = Some(d.issuance_event_id.clone());
        }
        // `svid_type` is "x509" or "jwt" (see `validate_delivery`).
        let delivered = if d.svid_type == "x509" {
            WorkloadSvidDelivered::x509(&d.serial, d.pid, d.uid, d.gid, d.delivered_at_ms)
        } else {
            WorkloadSvidDelivered::jwt(
                &d.jti,
                d.audience.clone(),
                d.pid,
                d.uid,
                d.gid,
                d.delivered_at_ms,
            )
        };
        ev.set_evidence(delivered.binary(&d.path, &d.sha256));
        ev
    }
}

/// The caller's agent SVID as presented on the TLS connection: its SPIFFE ID and
/// certificate serial (lowercase hex, as the CA records it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PeerSvid {
    id: SpiffeId,
    serial: String,
}

/// The caller's agent SVID, as [`crate::caller::CallerLayer`] read it from the TLS
/// connection.
fn peer_id<T>(req: &Request<T>) -> Option<PeerSvid> {
    match req.extensions().get::<crate::caller::Caller>()? {
        crate::caller::Caller::Svid { id, serial } => Some(PeerSvid {
            id: id.clone(),
            serial: serial.clone(),
        }),
        _ => None,
    }
}

/// How a presented agent SVID stands against the node's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvidStanding {
    /// The SVID issued last.
    Current,
    /// The SVID before the last renewal, not yet replaced on the wire by the
    /// current one (an agent keeps its connection across a renewal).
    Previous,
    /// Any other SVID of this agent ID: renewed away, so a copy is in use.
    Superseded,
}

/// Decide how `serial` stands for `node` (pure).
pub fn svid_standing(node: &Node, serial: &str) -> SvidStanding {
    if serial.is_empty() {
        SvidStanding::Superseded
    } else if serial == node.serial {
        SvidStanding::Current
    } else if !node.previous_serial.is_empty() && serial == node.previous_serial {
        SvidStanding::Previous
    } else {
        SvidStanding::Superseded
    }
}

/// Authenticate an agent: a verified agent SVID whose node is attested and not
/// banned, and which is the node's current SVID (or the one just renewed away, until
/// the current one is seen). A superseded SVID is refused and recorded as a possible
/// clone.
async fn authenticate(state: &NodeState, peer: Option<PeerSvid>) -> Result<Node, Status> {
    let peer = peer.ok_or_else(|| {
        Status::unauthenticated("this RPC requires the agent's X509-SVID as TLS client certificate")
    })?;
    let id = &peer.id;
    let node = state
        .store
        .get_node(id)
        .await
        .map_err(crate::admin::store_status)?
        .ok_or_else(|| {
            Status::permission_denied(format!(
                "{id} is not an attested agent (it was evicted or never attested); attest again"
            ))
        })?;
    if node.banned {
        return Err(Status::permission_denied(format!(
            "agent {id} is banned; evict it (`lanyard agent evict`) to let it attest again"
        )));
    }
    match svid_standing(&node, &peer.serial) {
        SvidStanding::Current => {
            if !node.previous_serial.is_empty() {
                state
                    .store
                    .promote_node_serial(id, &peer.serial)
                    .await
                    .map_err(crate::admin::store_status)?;
            }
            Ok(node)
        }
        SvidStanding::Previous => Ok(node),
        SvidStanding::Superseded => {
            let now = state.clock.unix_seconds();
            tracing::warn!(agent = %id, serial = %peer.serial, current = %node.serial, "superseded agent SVID presented: possible clone");
            let recorded = state
                .store
                .record_superseded_svid(id, now, &|n| {
                    let mut ev = state.audit.event(
                        lanyard_audit::EventKind::AgentCloneSuspected,
                        lanyard_audit::Outcome::Denied,
                    );
                    ev.actor = Some(id.to_string());
                    ev.subject = Some(id.to_string());
                    ev.reason = Some(
                        "an agent SVID that a renewal superseded was presented: a copy of the agent's key and SVID is in use"
                            .to_string(),
                    );
                    ev.set_evidence(AgentCloneSuspected::new(
                        &peer.serial,
                        &n.serial,
                        n.superseded_count,
                    ));
                    vec![ev]
                })
                .await;
            if let Err(e) = recorded {
                return Err(crate::admin::store_status(e));
            }
            Err(Status::permission_denied(format!(
                "the agent SVID of {id} with serial {} was superseded by a renewal: a copy of an earlier agent SVID is in use (possible clone); this is recorded, see `lanyard agent show`, and the agent must attest again",
                peer.serial
            )))
        }
    }
}

fn agent_svid(state: &NodeState, id: &SpiffeId, minted: &lanyard_ca::MintedX509) -> pb::AgentSvid {
    let published = state.publication.published();
    pb::AgentSvid {
        spiffe_id: id.to_string(),
        cert_chain: minted.chain.clone(),
        expires_at: minted.not_after,
        bundle: published.document,
        bundle_sequence: published.sequence,
    }
}

/// Issue an agent SVID to a node that just proved itself, and record the node.
async fn admit(
    state: &NodeState,
    id: SpiffeId,
    attestation_type: &str,
    selectors: Vec<Selector>,
    csr: &[u8],
) -> Result<pb::AgentSvid, Status> {
    // Every way of choosing an agent ID ends here: refuse anything outside
    // /lanyard/agent/ (a token row written by hand or by an older version included).
    if let Err(e) = lanyard_core::check_agent_id(&id, &state.trust_domain) {
        tracing::warn!(agent = %id, attestation = attestation_type, "node attestation refused: not an agent ID");
        let mut ev = state.audit.event(
            lanyard_audit::EventKind::NodeRefused,
            lanyard_audit::Outcome::Denied,
        );
        ev.subject = Some(id.to_string());
        ev.reason = Some(e.to_string());
        ev.set_evidence(NodeRefused::of(attestation_type));
        state.audit.record(vec![ev]).await.map_err(internal)?;
        return Err(Status::permission_denied(format!(
            "{attestation_type} attestation refused: {e}"
        )));
    }
    if let Some(existing) = state.store.get_node(&id).await.map_err(internal)?
        && existing.banned
    {
        return Err(Status::permission_denied(format!(
            "agent {id} is banned; evict it (`lanyard agent evict`) to let it attest again"
        )));
    }
    let now = state.clock.unix_seconds();
    let minted = state.mint_agent_svid(&id, csr, now)?;
    let node = Node {
        spiffe_id: id.clone(),
        attestation_type: attestation_type.to_string(),
        selectors,
        serial: minted.serial.clone(),
        expires_at: minted.not_after,
        banned: false,
        created_at: now,
        updated_at: now,
        holdings: Default::default(),
        previous_serial: String::new(),
        superseded_count: 0,
        superseded_at: None,
    };
    state.store.upsert_node(&node).await.map_err(internal)?;
    tracing::info!(agent = %id, attestation = attestation_type, serial = %minted.serial, "node attested");
    let mut ev = state.audit.event(
        lanyard_audit::EventKind::NodeAttested,
        lanyard_audit::Outcome::Success,
    );
    ev.subject = Some(id.to_string());
    ev.set_evidence(NodeAttested::new(
        attestation_type,
        node.selectors.iter().map(ToString::to_string).collect(),
        &minted.serial,
        minted.not_after,
    ));
    let mut issued = state.audit.event(
        lanyard_audit::EventKind::AgentSvidIssued,
        lanyard_audit::Outcome::Success,
    );
    issued.subject = Some(id.to_string());
    issued.parent_id = Some(ev.id.clone());
    issued.set_evidence(AgentSvid::new(&minted.serial, minted.not_after));
    state
        .audit
        .record(vec![ev, issued])
        .await
        .map_err(internal)?;
    state.changes.notify();
    Ok(agent_svid(state, &id, &minted))
}

/// Challenges over the attestation stream, each answered within
/// [`CHALLENGE_TIMEOUT`].
struct StreamChallenger<'a> {
    inbound: &'a mut Streaming<pb::AttestRequest>,
    tx: &'a mpsc::Sender<Result<pb::AttestResponse, Status>>,
    method: &'static str,
}

#[tonic::async_trait]
impl Challenger for StreamChallenger<'_> {
    async fn challenge(
        &mut self,
        nonce: Vec<u8>,
        algorithm: String,
    ) -> Result<Vec<u8>, AttestError> {
        let method = self.method;
        self.tx
            .send(Ok(pb::AttestResponse {
                step: Some(pb::attest_response::Step::Challenge(pb::Challenge {
                    nonce,
                    algorithm,
                })),
            }))
            .await
            .map_err(|_| AttestError::Gone)?;
        let answer = tokio::time::timeout(CHALLENGE_TIMEOUT, self.inbound.message())
            .await
            .map_err(|_| {
                AttestError::Timeout(format!("{method}: no answer to the challenge within 30s"))
            })?
            .map_err(|e| AttestError::Malformed(format!("{method}: {}", e.message())))?
            .ok_or_else(|| {
                AttestError::Malformed(format!(
                    "{method}: the stream ended before the challenge answer"
                ))
            })?;
        match answer.step {
            Some(pb::attest_request::Step::ChallengeResponse(r)) => Ok(r.signature),
            _ => Err(AttestError::Malformed(format!(
                "{method}: expected a challenge_response message"
            ))),
        }
    }
}

/// The node's evidence and CSR from the first attestation message (the protobuf
/// edge).
fn evidence_of(step: Option<pb::attest_request::Step>) -> Result<(NodeEvidence, Vec<u8>), Status> {
    match step {
        Some(pb::attest_request::Step::JoinToken(j)) => {
            Ok((NodeEvidence::JoinToken { token: j.token }, j.csr))
        }
        Some(pb::attest_request::Step::X509pop(x)) => Ok((
            NodeEvidence::X509Pop {
                cert_chain: x.cert_chain,
            },
            x.csr,
        )),
        Some(pb::attest_request::Step::Token(t)) => {
            let method = match t.method.as_str() {
                crate::attest::jwt::NAME => crate::attest::jwt::NAME,
                lanyard_nodeattest::k8s_psat::NAME => lanyard_nodeattest::k8s_psat::NAME,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "token attestation method {other:?} is not known; use \"jwt\" or \"k8s_psat\""
                    )));
                }
            };
            Ok((
                NodeEvidence::Token {
                    method,
                    cluster: t.cluster,
                    token: t.token,
                },
                t.csr,
            ))
        }
        Some(pb::attest_request::Step::AwsIid(a)) => {
            Ok((NodeEvidence::AwsIid { payload: a.payload }, a.csr))
        }
        _ => Err(Status::invalid_argument(
            "the first attestation message must be join_token, x509pop, token or aws_iid",
        )),
    }
}

/// Attest a node with the method its evidence names and admit it.
/// A refused attestation: what the agent is told, and what the evidence log
/// records (the method, and a verifier's stable reason code when there is one).
struct Refused {
    status: Status,
    method: Option<&'static str>,
    code: Option<&'static str>,
}

impl From<Status> for Refused {
    fn from(status: Status) -> Self {
        Self {
            status,
            method: None,
            code: None,
        }
    }
}

async fn attest_node(
    state: &NodeState,
    attestors: &NodeAttestors,
    first: pb::AttestRequest,
    inbound: &mut Streaming<pb::AttestRequest>,
    tx: &mpsc::Sender<Result<pb::AttestResponse, Status>>,
) -> Result<pb::AgentSvid, Refused> {
    let (evidence, csr) = evidence_of(first.step)?;
    let method = evidence.method();
    let attestor = attestors.get(method).map_err(Status::from)?;
    // Check the request before spending a single-use credential on it.
    lanyard_ca::verify_csr(&csr).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut challenger = StreamChallenger {
        inbound,
        tx,
        method,
    };
    let node = match attestor.attest(evidence, &mut challenger).await {
        Ok(node) => node,
        Err(e) => {
            let code = match &e {
                AttestError::Evidence { code, .. } => Some(*code),
                _ => None,
            };
            tracing::warn!(method, reason = code.unwrap_or_default(), error = %e, "node attestation refused");
            return Err(Refused {
                status: e.into(),
                method: Some(method),
                code,
            });
        }
    };
    Ok(admit(state, node.agent_id, method, node.selectors, &csr).await?)
}

/// The entries an agent holds after an update: id -> revision.
fn held_by_agent(entries: &[Entry]) -> HashMap<String, i64> {
    entries.iter().map(|e| (e.id.clone(), e.revision)).collect()
}

/// Pure: the delta from what an agent holds (`held`: id -> revision) to `now`: the
/// entries added or changed (a new revision), and the ids removed (sorted).
pub fn entry_delta<'a>(
    held: &HashMap<String, i64>,
    now: &'a [Entry],
) -> (Vec<&'a Entry>, Vec<String>) {
    let changed: Vec<&Entry> = now
        .iter()
        .filter(|e| held.get(&e.id) != Some(&e.revision))
        .collect();
    let current: HashSet<&str> = now.iter().map(|e| e.id.as_str()).collect();
    let mut removed: Vec<String> = held
        .keys()
        .filter(|id| !current.contains(id.as_str()))
        .cloned()
        .collect();
    removed.sort();
    (changed, removed)
}

fn to_pb_entry(e: &Entry) -> pb::RegistrationEntry {
    pb::RegistrationEntry {
        id: e.id.clone(),
        spiffe_id: e.spec.spiffe_id.to_string(),
        parent_id: e.spec.parent_id.to_string(),
        selectors: e.spec.selectors.iter().map(ToString::to_string).collect(),
        x509_ttl_seconds: e.spec.x509_ttl,
        jwt_ttl_seconds: e.spec.jwt_ttl,
        dns_names: e.spec.dns_names.clone(),
        hint: e.spec.hint.clone().unwrap_or_default(),
        admin: e.spec.admin,
        downstream: e.spec.downstream,
        expires_at: e.spec.expires_at.unwrap_or(0),
        revision: e.revision,
        owner: e.spec.owner.clone(),
        environment: e.spec.environment.clone().unwrap_or_default(),
    }
}

/// Most decisions accepted in one report.
pub const MAX_DECISIONS: usize = 1000;

/// Check a reported agent decision and read it as a record. Sizes are bounded so
/// that an agent cannot flood the evidence log with large events.
fn agent_decision(d: pb::AuthzDecision) -> Result<DecisionRecord, BadReport> {
    let bad = |m: String| BadReport(m);
    SpiffeId::new(&d.subject).map_err(|e| bad(format!("subject {:?}: {e}", d.subject)))?;
    SpiffeId::new(&d.caller).map_err(|e| bad(format!("caller {:?}: {e}", d.caller)))?;
    if d.decision_id.is_empty() || d.decision_id.len() > 64 {
        return Err(bad("decision_id must be 1 to 64 characters".to_string()));
    }
    if d.action.is_empty() || d.resource_id.is_empty() {
        return Err(bad("action and resource_id are required".to_string()));
    }
    let long = [
        &d.owner,
        &d.action,
        &d.resource_type,
        &d.resource_id,
        &d.trace_id,
        &d.task_txn,
        &d.task_agent,
        &d.acting_for,
    ]
    .iter()
    .any(|s| s.len() > 2048);
    if long || d.reason.len() > 8192 || d.policy_ids.len() > 64 {
        return Err(bad(
            "a field is too long (2048 bytes; reason 8192; at most 64 policy ids)".to_string(),
        ));
    }
    let task = (!d.task_txn.is_empty()).then(|| lanyard_policy::TaskFacts {
        txn: d.task_txn,
        agent: d.task_agent,
        acting_for: d.acting_for,
        ..Default::default()
    });
    Ok(DecisionRecord {
        out: DecisionOut {
            allowed: d.allowed,
            policy_ids: d.policy_ids,
            reason: d.reason,
            decision_id: d.decision_id,
        },
        subject: d.subject,
        owner: d.owner,
        action: d.action,
        resource_type: d.resource_type,
        resource_id: d.resource_id,
        trace_id: (!d.trace_id.is_empty()).then_some(d.trace_id),
        task,
    })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::node_server::Node for NodeService {
    type AttestStream = BoxStream<pb::AttestResponse>;
    type SyncStream = BoxStream<pb::SyncUpdate>;

    async fn attest(
        &self,
        req: Request<Streaming<pb::AttestRequest>>,
    ) -> Result<Response<Self::AttestStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty attestation request"))?;
        let (tx, rx) = mpsc::channel(4);
        let state = self.state.clone();
        let attestors = self.attestors.clone();
        tokio::spawn(async move {
            let result = attest_node(&state, &attestors, first, &mut inbound, &tx).await;
            if let Err(refused) = &result
                && matches!(
                    refused.status.code(),
                    tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
                )
            {
                // A verifier's refusal of a token or document names its reason
                // (`node_attestation_refused`); other refusals stay `node_refused`.
                let mut ev = match (refused.method, refused.code) {
                    (Some(method), Some(code)) => {
                        let mut ev = state.audit.event(
                            lanyard_audit::EventKind::NodeAttestationRefused,
                            lanyard_audit::Outcome::Denied,
                        );
                        ev.set_evidence(NodeAttestationRefused::new(method, code));
                        ev
                    }
                    (method, code) => {
                        let mut ev = state.audit.event(
                            lanyard_audit::EventKind::NodeRefused,
                            lanyard_audit::Outcome::Denied,
                        );
                        ev.set_evidence(NodeRefused::refusal(method, code));
                        ev
                    }
                };
                ev.reason = Some(refused.status.message().to_string());
                if let Err(e) = state.audit.record(vec![ev]).await {
                    tracing::error!(error = %e, "evidence log");
                }
            }
            let msg = result
                .map(|svid| pb::AttestResponse {
                    step: Some(pb::attest_response::Step::Result(svid)),
                })
                .map_err(|r| r.status);
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn renew_agent(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::AgentSvid>, Status> {
        let peer = peer_id(&req);
        let presented = peer.as_ref().map(|p| p.serial.clone()).unwrap_or_default();
        let node = authenticate(&self.state, peer).await?;
        let csr = req.into_inner().csr;
        let now = self.state.clock.unix_seconds();
        let minted = self.state.mint_agent_svid(&node.spiffe_id, &csr, now)?;
        self.state
            .store
            .set_node_svid(
                &node.spiffe_id,
                &presented,
                &minted.serial,
                minted.not_after,
                now,
            )
            .await
            .map_err(internal)?;
        tracing::info!(agent = %node.spiffe_id, serial = %minted.serial, "agent SVID renewed");
        let mut ev = self.state.audit.event(
            lanyard_audit::EventKind::AgentSvidRenewed,
            lanyard_audit::Outcome::Success,
        );
        ev.actor = Some(node.spiffe_id.to_string());
        ev.subject = Some(node.spiffe_id.to_string());
        ev.set_evidence(AgentSvid::new(&minted.serial, minted.not_after));
        self.state.audit.record(vec![ev]).await.map_err(internal)?;
        Ok(Response::new(agent_svid(
            &self.state,
            &node.spiffe_id,
            &minted,
        )))
    }

    async fn sync(
        &self,
        req: Request<pb::SyncRequest>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let peer = peer_id(&req);
        let deltas = req.get_ref().deltas;
        authenticate(&self.state, peer.clone()).await?;
        let state = self.state.clone();
        let access = self.access.clone();
        let token_key = pb::TokenKey {
            kid: access.token_key.kid().to_string(),
            jwk: access.token_key.jwk().to_string(),
        };
        let mut changes = state.changes.subscribe();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            // The last update's state apart from entries, and the entries the agent
            // holds (id -> revision), for deltas.
            let mut last: Option<pb::SyncUpdate> = None;
            let mut held: Option<HashMap<String, i64>> = None;
            loop {
                changes.mark_unchanged();
                // Re-check the agent on every round: a ban or eviction ends the stream.
                // The stream stays bound to the SVID it was opened with: once a renewal
                // supersedes it and the new one is seen, a cloned stream ends here.
                let current = match authenticate(&state, peer.clone()).await {
                    Ok(n) => n,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                // Read before the facts: a change after this point wakes the loop again.
                let version = state.changes.version();
                let facts = match state.stream_facts.get(&state, version).await {
                    Ok(f) => f,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let revoked = facts.revoked_jtis.clone();
                // The authz policy for agent-local decisions; one that no longer
                // compiles is not sent (agents keep the last one).
                let (authz_policy_version, authz_policy) = match &facts.authz_policy {
                    Some((v, p)) => (*v, p.clone()),
                    None => last
                        .as_ref()
                        .map(|l| (l.authz_policy_version, l.authz_policy.clone()))
                        .unwrap_or_default(),
                };
                let update = match state
                    .entries
                    .authorized(&current, state.clock.unix_seconds())
                    .await
                {
                    Ok(entries) => {
                        let published = state.publication.published();
                        (
                            entries,
                            pb::SyncUpdate {
                                authz_policy,
                                authz_policy_version,
                                jwt_issuer: access.issuer(),
                                token_key: Some(token_key.clone()),
                                revoked_jtis: revoked,
                                tainted_authorities: state.publication.tainted(),
                                bundle: published.document,
                                bundle_sequence: published.sequence,
                                federated_bundles: state
                                    .publication
                                    .federated()
                                    .iter()
                                    .map(|(k, v)| (k.clone(), v.clone()))
                                    .collect(),
                                ..Default::default()
                            },
                        )
                    }
                    Err(e) => {
                        let _ = tx.send(Err(internal(e))).await;
                        return;
                    }
                };
                let (entries, rest) = update;
                let message = match held.as_ref().filter(|_| deltas) {
                    // A delta: what changed since the last update.
                    Some(h) => {
                        let (changed, removed) = entry_delta(h, &entries);
                        (!changed.is_empty() || !removed.is_empty() || last.as_ref() != Some(&rest))
                            .then(|| pb::SyncUpdate {
                                entries: changed.into_iter().map(to_pb_entry).collect(),
                                removed_entry_ids: removed,
                                delta: true,
                                ..rest.clone()
                            })
                    }
                    // The first update of the stream, or an agent without deltas: the
                    // full set, when anything changed.
                    None => {
                        let now_held = held_by_agent(&entries);
                        (held.as_ref() != Some(&now_held) || last.as_ref() != Some(&rest)).then(
                            || pb::SyncUpdate {
                                entries: entries.iter().map(to_pb_entry).collect(),
                                ..rest.clone()
                            },
                        )
                    }
                };
                if let Some(m) = message {
                    if tx.send(Ok(m)).await.is_err() {
                        return;
                    }
                    held = Some(held_by_agent(&entries));
                    last = Some(rest);
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    // Entry expiry is time-driven, not write-driven: re-check now and then.
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn batch_new_x509_svid(
        &self,
        req: Request<pb::BatchX509SvidRequest>,
    ) -> Result<Response<pb::BatchX509SvidResponse>, Status> {
        let node = authenticate(&self.state, peer_id(&req)).await?;
        let requests = req.into_inner().requests;
        if requests.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} requests in one batch; at most {MAX_BATCH} are allowed",
                requests.len()
            )));
        }
        let entries: HashMap<String, Entry> = self
            .state
            .entries
            .authorized(&node, self.state.clock.unix_seconds())
            .await
            .map_err(server_status)?
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
        let now = self.state.clock.unix_seconds();
        let mut issued: Vec<lanyard_audit::Event> = Vec::new();
        let results: Vec<pb::X509SvidResult> = {
            let ca = self.state.ca.read().map_err(internal)?;
            requests
            .iter()
            .map(|r| {
                let Some(entry) = entries.get(&r.entry_id) else {
                    tracing::warn!(agent = %node.spiffe_id, entry = %r.entry_id, "X509-SVID refused: entry not authorized for agent");
                    return pb::X509SvidResult {
                        entry_id: r.entry_id.clone(),
                        error: format!(
                            "entry {:?} does not exist or is not authorized for agent {}",
                            r.entry_id, node.spiffe_id
                        ),
                        ..Default::default()
                    };
                };
                let ttl = (entry.spec.x509_ttl > 0).then(|| Duration::from_secs(entry.spec.x509_ttl));
                match ca.mint_x509_svid(
                    &entry.spec.spiffe_id,
                    SubjectKey::Csr(&r.csr),
                    ttl,
                    &entry.spec.dns_names,
                    now,
                ) {
                    Ok(m) => {
                        tracing::debug!(agent = %node.spiffe_id, spiffe_id = %entry.spec.spiffe_id, serial = %m.serial, "X509-SVID issued");
                        let mut ev = self
                            .state
                            .audit.event(lanyard_audit::EventKind::X509SvidIssued, lanyard_audit::Outcome::Success);
                        ev.actor = Some(node.spiffe_id.to_string());
                        ev.subject = Some(entry.spec.spiffe_id.to_string());
                        ev.owner = Some(entry.spec.owner.clone());
                        let public_key_sha256 = m
                            .chain
                            .first()
                            .and_then(|leaf| x509_parser::parse_x509_certificate(leaf).ok())
                            .map(|(_, c)| sha256_hex(c.public_key().raw));
                        ev.set_evidence(X509SvidIssued::new(
                            &entry.id,
                            &m.serial,
                            m.not_after,
                            public_key_sha256,
                            entry.spec.selectors.iter().map(ToString::to_string).collect(),
                        ));
                        let event_id = ev.id.clone();
                        issued.push(ev);
                        pb::X509SvidResult {
                            entry_id: r.entry_id.clone(),
                            cert_chain: m.chain,
                            expires_at: m.not_after,
                            error: String::new(),
                            serial: m.serial,
                            event_id,
                        }
                    }
                    Err(e) => pb::X509SvidResult {
                        entry_id: r.entry_id.clone(),
                        error: e.to_string(),
                        ..Default::default()
                    },
                }
            })
            .collect()
        };
        // Evidence first: nothing is handed out unless it is on record.
        self.state.audit.record(issued).await.map_err(internal)?;
        Ok(Response::new(pb::BatchX509SvidResponse { results }))
    }

    async fn new_jwt_svid(
        &self,
        req: Request<pb::JwtSvidRequest>,
    ) -> Result<Response<pb::JwtSvidResponse>, Status> {
        let node = authenticate(&self.state, peer_id(&req)).await?;
        let r = req.into_inner();
        let entry = self
            .state
            .entries
            .authorized(&node, self.state.clock.unix_seconds())
            .await
            .map_err(server_status)?
            .into_iter()
            .find(|e| e.id == r.entry_id)
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "entry {:?} does not exist or is not authorized for agent {}",
                    r.entry_id, node.spiffe_id
                ))
            })?;
        let ttl = if r.ttl_seconds > 0 {
            Some(Duration::from_secs(r.ttl_seconds))
        } else if entry.spec.jwt_ttl > 0 {
            Some(Duration::from_secs(entry.spec.jwt_ttl))
        } else {
            None
        };
        let now = self.state.clock.unix_seconds();
        let minted = {
            let ca = self.state.ca.read().map_err(internal)?;
            ca.mint_jwt_svid(&entry.spec.spiffe_id, &r.audience, ttl, now)
                .map_err(|e| Status::invalid_argument(e.to_string()))?
        };
        let mut ev = self.state.audit.event(
            lanyard_audit::EventKind::JwtSvidIssued,
            lanyard_audit::Outcome::Success,
        );
        ev.actor = Some(node.spiffe_id.to_string());
        ev.subject = Some(entry.spec.spiffe_id.to_string());
        ev.owner = Some(entry.spec.owner.clone());
        ev.set_evidence(JwtSvidIssued::new(
            &minted.jti,
            r.audience.clone(),
            &minted.kid,
            minted.expiry,
        ));
        let event_id = ev.id.clone();
        self.state.audit.record(vec![ev]).await.map_err(internal)?;
        Ok(Response::new(pb::JwtSvidResponse {
            token: minted.token,
            expires_at: minted.expiry,
            spiffe_id: entry.spec.spiffe_id.to_string(),
            jti: minted.jti,
            event_id,
        }))
    }

    async fn report_holdings(
        &self,
        req: Request<pb::Holdings>,
    ) -> Result<Response<pb::HoldingsAck>, Status> {
        let node = authenticate(&self.state, peer_id(&req)).await?;
        let h = req.into_inner();
        if h.authorities.len() > 64
            || h.authorities
                .keys()
                .any(|k| k.is_empty() || k.len() > 128 || !k.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(Status::invalid_argument(
                "holdings: at most 64 authorities, each a hex Subject Key Identifier",
            ));
        }
        let holdings = lanyard_store::NodeHoldings {
            reported_at: self.state.clock.unix_seconds(),
            authorities: h.authorities.into_iter().collect(),
        };
        self.state
            .store
            .set_node_holdings(&node.spiffe_id, &holdings)
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::HoldingsAck {}))
    }

    async fn fetch_secret(
        &self,
        req: Request<pb::SecretRequest>,
    ) -> Result<Response<pb::SecretResponse>, Status> {
        let node = authenticate(&self.state, peer_id(&req)).await?;
        let r = req.into_inner();
        let who = r.recipient.unwrap_or_default();
        let entry = self
            .state
            .entries
            .authorized(&node, self.state.clock.unix_seconds())
            .await
            .map_err(server_status)?
            .into_iter()
            .find(|e| e.id == r.entry_id)
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "entry {:?} does not exist or is not authorized for agent {}",
                    r.entry_id, node.spiffe_id
                ))
            })?;
        let now = self.state.clock.unix_seconds();
        let process = || Process::bounded(who.pid, who.uid, who.gid, &who.path, &who.sha256);
        let read = self.state.store.get_exception(&r.name).await;
        if let Err(e) = &read {
            tracing::error!(error = %e, "internal error");
        }
        let released = match decide_release(
            read.as_ref().map(Option::as_ref),
            &r.name,
            &entry.spec.spiffe_id,
            now,
        ) {
            Ok(Release { exception: exc }) => {
                match self.state.secrets.open(&exc.name, &exc.sealed) {
                    Ok(secret) => Ok((secret, exc)),
                    Err(e) => Err((Status::internal(e.to_string()), Some(exc.owner.clone()))),
                }
            }
            Err(refusal) => Err((Status::from(&refusal), refusal.owner().map(str::to_string))),
        };
        match released {
            Ok((secret, exc)) => {
                let mut ev = self.state.audit.event(
                    lanyard_audit::EventKind::SecretReleased,
                    lanyard_audit::Outcome::Success,
                );
                ev.actor = Some(node.spiffe_id.to_string());
                ev.subject = Some(entry.spec.spiffe_id.to_string());
                ev.owner = Some(exc.owner.clone());
                ev.set_evidence(SecretReleased::new(&exc.name, exc.expires_at, process()));
                // On record before it is handed out.
                self.state.audit.record(vec![ev]).await.map_err(internal)?;
                tracing::info!(exception = %exc.name, spiffe_id = %entry.spec.spiffe_id, "secret released");
                Ok(Response::new(pb::SecretResponse {
                    secret,
                    expires_at: exc.expires_at,
                    spiffe_id: entry.spec.spiffe_id.to_string(),
                }))
            }
            Err((status, owner)) => {
                let mut ev = self.state.audit.event(
                    lanyard_audit::EventKind::SecretRefused,
                    lanyard_audit::Outcome::Denied,
                );
                ev.actor = Some(node.spiffe_id.to_string());
                ev.subject = Some(entry.spec.spiffe_id.to_string());
                ev.owner = owner;
                ev.reason = Some(status.message().to_string());
                ev.set_evidence(SecretRefused::new(&r.name, process()));
                tracing::warn!(exception = %r.name, spiffe_id = %entry.spec.spiffe_id, reason = %status.message(), "secret refused");
                self.state.audit.record(vec![ev]).await.map_err(internal)?;
                Err(status)
            }
        }
    }

    async fn report_deliveries(
        &self,
        req: Request<pb::DeliveryReport>,
    ) -> Result<Response<pb::DeliveryAck>, Status> {
        let node = authenticate(&self.state, peer_id(&req)).await?;
        let report = req.into_inner();
        check_report_size(report.deliveries.len(), MAX_DELIVERIES, "deliveries")?;
        for (i, d) in report.deliveries.iter().enumerate() {
            validate_delivery(d)
                .map_err(|e| Status::invalid_argument(format!("delivery {i}: {e}")))?;
        }
        let served: std::collections::HashSet<String> = self
            .state
            .entries
            .authorized(&node, self.state.clock.unix_seconds())
            .await
            .map_err(server_status)?
            .into_iter()
            .map(|e| e.spec.spiffe_id.to_string())
            .collect();
        let mut events = Vec::with_capacity(report.deliveries.len() + 1);
        for d in &report.deliveries {
            events.push(self.delivery_event(&node, d, served.contains(&d.spiffe_id)));
        }
        if report.dropped > 0 {
            events.push(self.dropped_event(
                &node,
                lanyard_audit::EventKind::WorkloadSvidDelivered,
                ReportsDropped::new(report.dropped),
                "delivery",
            ));
        }
        let recorded = u32::try_from(report.deliveries.len()).unwrap_or(u32::MAX);
        self.state.audit.record(events).await.map_err(internal)?;
        Ok(Response::new(pb::DeliveryAck { recorded }))
    }

    async fn report_decisions(
        &self,
        req: Request<pb::DecisionReport>,
    ) -> Result<Response<pb::DecisionAck>, Status> {
        let node = authenticate(&self.state, peer_id(&req)).await?;
        let report = req.into_inner();
        check_report_size(report.decisions.len(), MAX_DECISIONS, "decisions")?;
        let recorded = u32::try_from(report.decisions.len()).unwrap_or(u32::MAX);
        let agent = node.spiffe_id.to_string();
        let mut events = Vec::with_capacity(report.decisions.len() + 1);
        for (i, d) in report.decisions.into_iter().enumerate() {
            let (caller, policy_version, decided_at_ms) =
                (d.caller.clone(), d.policy_version, d.decided_at_ms);
            let rec = agent_decision(d)
                .map_err(|e| Status::invalid_argument(format!("decision {i}: {e}")))?;
            let mut ev = decision_event(
                self.state.audit.event(
                    lanyard_audit::EventKind::AuthzDecision,
                    lanyard_audit::Outcome::Denied,
                ),
                &caller,
                "agent",
                &rec,
            );
            ev.set_evidence(decision_evidence("agent", &rec).reported(
                &agent,
                &rec.out.decision_id,
                policy_version,
                decided_at_ms,
            ));
            events.push(ev);
        }
        if report.dropped > 0 {
            events.push(self.dropped_event(
                &node,
                lanyard_audit::EventKind::AuthzDecision,
                ReportsDropped::new(report.dropped).by_agent(agent),
                "decision",
            ));
        }
        self.state.audit.record(events).await.map_err(internal)?;
        Ok(Response::new(pb::DecisionAck { recorded }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_testkit::{entry, node};

    #[tokio::test]
    async fn stream_facts_are_read_once_per_change_for_every_stream() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::ServerConfig::load(&crate::config::Overrides {
            trust_domain: Some("example.org".into()),
            data_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        })
        .unwrap();
        let shared = Shared::open(config, crate::state::system_clock())
            .await
            .unwrap();
        let state = NodeState::of(&shared);
        let a = state.stream_facts.get(&state, 1).await.unwrap();
        assert!(a.revoked_jtis.is_empty());
        assert!(a.authz_policy.is_some());
        // Another stream woken by the same change gets the same read.
        let b = state.stream_facts.get(&state, 1).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let revoked = lanyard_store::RevokedJwt {
            jti: "j1".into(),
            spiffe_id: None,
            expires_at: i64::MAX / 2,
            revoked_at: 1,
            reason: "test".into(),
        };
        shared
            .store
            .revoke_jwt(&revoked, &|_| vec![])
            .await
            .unwrap();
        // The next change reads again and sees the revocation.
        let c = state.stream_facts.get(&state, 2).await.unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.revoked_jtis, ["j1"]);
        // Concurrent streams on a new change: one read, one answer.
        let (x, y) = tokio::join!(
            state.stream_facts.get(&state, 3),
            state.stream_facts.get(&state, 3)
        );
        assert!(Arc::ptr_eq(&x.unwrap(), &y.unwrap()));
    }

    #[test]
    fn a_delta_names_added_changed_and_removed_entries_only() {
        let e = |id: &str, rev: i64| {
            let mut x = entry(id, "/agent", &format!("/{id}"), &["unix:uid:1"]).build();
            x.revision = rev;
            x
        };
        let held: HashMap<String, i64> = [
            ("a".to_string(), 1),
            ("b".to_string(), 1),
            ("c".to_string(), 2),
        ]
        .into();
        let now = vec![e("a", 1), e("b", 2), e("d", 1)];
        let (changed, removed) = entry_delta(&held, &now);
        assert_eq!(
            changed.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
            ["b", "d"]
        );
        assert_eq!(removed, ["c"]);
        // Nothing changed: an empty delta.
        let (changed, removed) = entry_delta(&held_by_agent(&now), &now);
        assert!(changed.is_empty() && removed.is_empty());
        // Everything removed.
        let (changed, removed) = entry_delta(&held, &[]);
        assert!(changed.is_empty());
        assert_eq!(removed, ["a", "b", "c"]);
    }

    fn delivery() -> pb::Delivery {
        pb::Delivery {
            spiffe_id: "spiffe://example.org/web".into(),
            svid_type: "x509".into(),
            serial: "0a1b".into(),
            pid: 42,
            sha256: "ab".repeat(32),
            ..Default::default()
        }
    }

    fn decision() -> pb::AuthzDecision {
        pb::AuthzDecision {
            decision_id: "d1".into(),
            caller: "spiffe://example.org/gateway".into(),
            subject: "spiffe://example.org/web".into(),
            action: "read".into(),
            resource_id: "o1".into(),
            allowed: true,
            policy_ids: vec!["p".into()],
            ..Default::default()
        }
    }

    #[test]
    fn an_agent_svid_stands_current_previous_or_superseded() {
        let mut n = node("/lanyard/agent/a", 100).build();
        n.serial = "02".into();
        assert_eq!(svid_standing(&n, "02"), SvidStanding::Current);
        assert_eq!(svid_standing(&n, "01"), SvidStanding::Superseded);
        n.previous_serial = "01".into();
        assert_eq!(svid_standing(&n, "01"), SvidStanding::Previous);
        assert_eq!(svid_standing(&n, "00"), SvidStanding::Superseded);
        // No serial never matches, not even an empty previous one.
        n.previous_serial = String::new();
        assert_eq!(svid_standing(&n, ""), SvidStanding::Superseded);
    }

    #[test]
    fn deliveries_are_checked_field_by_field() {
        assert!(validate_delivery(&delivery()).is_ok());
        let jwt = pb::Delivery {
            svid_type: "jwt".into(),
            serial: String::new(),
            jti: "j".into(),
            sha256: String::new(),
            ..delivery()
        };
        assert!(validate_delivery(&jwt).is_ok());
        let cases: Vec<(pb::Delivery, &str)> = vec![
            (
                pb::Delivery {
                    spiffe_id: "not an id".into(),
                    ..delivery()
                },
                "spiffe_id",
            ),
            (
                pb::Delivery {
                    serial: "xyz".into(),
                    ..delivery()
                },
                "hex digits",
            ),
            (
                pb::Delivery {
                    serial: "a".repeat(65),
                    ..delivery()
                },
                "1 to 64",
            ),
            (
                pb::Delivery {
                    svid_type: "jwt".into(),
                    jti: String::new(),
                    ..delivery()
                },
                "jti",
            ),
            (
                pb::Delivery {
                    svid_type: "secret".into(),
                    ..delivery()
                },
                "svid_type",
            ),
            (
                pb::Delivery {
                    pid: 0,
                    ..delivery()
                },
                "pid 0",
            ),
            (
                pb::Delivery {
                    sha256: "ab".into(),
                    ..delivery()
                },
                "sha256",
            ),
            (
                pb::Delivery {
                    path: "p".repeat(4097),
                    ..delivery()
                },
                "too long",
            ),
        ];
        for (d, want) in cases {
            let e = validate_delivery(&d).unwrap_err();
            assert!(e.0.contains(want), "{want:?} not in {:?}", e.0);
        }
    }

    #[test]
    fn reports_are_bounded() {
        assert!(check_report_size(1000, MAX_DELIVERIES, "deliveries").is_ok());
        let s = check_report_size(1001, MAX_DELIVERIES, "deliveries").unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("at most 1000"), "{}", s.message());
    }

    #[test]
    fn agent_decisions_are_checked_and_read_as_records() {
        let rec = agent_decision(decision()).unwrap();
        assert!(rec.out.allowed);
        assert_eq!(rec.subject, "spiffe://example.org/web");
        assert_eq!(rec.trace_id, None);
        assert!(rec.task.is_none());
        let with_task = agent_decision(pb::AuthzDecision {
            task_txn: "t1".into(),
            task_agent: "spiffe://example.org/agent".into(),
            trace_id: "t1".into(),
            ..decision()
        })
        .unwrap();
        assert_eq!(with_task.task.unwrap().txn, "t1");
        assert_eq!(with_task.trace_id.as_deref(), Some("t1"));
        for (d, want) in [
            (
                pb::AuthzDecision {
                    subject: "web".into(),
                    ..decision()
                },
                "subject",
            ),
            (
                pb::AuthzDecision {
                    caller: String::new(),
                    ..decision()
                },
                "caller",
            ),
            (
                pb::AuthzDecision {
                    decision_id: "d".repeat(65),
                    ..decision()
                },
                "decision_id",
            ),
            (
                pb::AuthzDecision {
                    action: String::new(),
                    ..decision()
                },
                "required",
            ),
            (
                pb::AuthzDecision {
                    reason: "r".repeat(8193),
                    ..decision()
                },
                "too long",
            ),
            (
                pb::AuthzDecision {
                    policy_ids: vec!["p".into(); 65],
                    ..decision()
                },
                "too long",
            ),
        ] {
            let e = agent_decision(d).unwrap_err();
            assert!(e.0.contains(want), "{want:?} not in {:?}", e.0);
        }
    }

    #[test]
    fn the_first_attestation_message_names_the_method() {
        let (ev, csr) = evidence_of(Some(pb::attest_request::Step::JoinToken(
            pb::JoinTokenAttestation {
                token: "t".into(),
                csr: vec![1],
            },
        )))
        .unwrap();
        assert_eq!(ev, NodeEvidence::JoinToken { token: "t".into() });
        assert_eq!(csr, [1]);
        let s = evidence_of(None).unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn entries_go_to_agents_with_every_field() {
        let e = entry("e1", "/agent", "/web", &["unix:uid:1"])
            .owner("team-a")
            .environment("prod")
            .expires_at(77)
            .revision(3)
            .build();
        let p = to_pb_entry(&e);
        assert_eq!(p.spiffe_id, "spiffe://example.org/web");
        assert_eq!(p.parent_id, "spiffe://example.org/agent");
        assert_eq!(p.selectors, ["unix:uid:1"]);
        assert_eq!((p.expires_at, p.revision), (77, 3));
        assert_eq!(
            (p.owner.as_str(), p.environment.as_str()),
            ("team-a", "prod")
        );
        // No expiry travels as 0.
        let p = to_pb_entry(&entry("e2", "/agent", "/web", &[]).build());
        assert_eq!(p.expires_at, 0);
    }
}
