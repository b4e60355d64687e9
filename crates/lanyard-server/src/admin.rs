//! The admin API (`lanyard.admin.v1.Admin`), served on the local Unix socket. Every
//! input is validated before anything is written; a refused request changes nothing.

use std::sync::Arc;
use std::time::Duration;

use lanyard_audit::evidence::{AgentRemoved, EntryChanged, TokenCreated};
use lanyard_core::{Selector, SpiffeId, TrustDomain};
use lanyard_proto::admin as pb;
use lanyard_store::{Entry, EntrySpec, JoinToken, Node, Store, StoreError};
use tonic::{Request, Response, Status};

use crate::caller::Caller;
use crate::entries::EntryIndex;
use crate::node::server_status;
use crate::node::sha256_hex;
use crate::state::Shared;

mod bulk;

/// Longest owner / environment / hint accepted.
const MAX_LABEL: usize = 256;

#[derive(Debug, Clone)]
pub struct AdminService {
    shared: Arc<Shared>,
    /// On the mTLS listener every caller must present the X509-SVID of an admin
    /// entry; on the local socket, file permissions are the gate.
    require_admin_svid: bool,
}

impl AdminService {
    /// The service for the local Unix socket.
    pub fn local(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            require_admin_svid: false,
        }
    }

    /// The service for the mTLS listener.
    pub fn mtls(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            require_admin_svid: true,
        }
    }

    /// The evidence-log event for an entry change; stored in the change's transaction.
    fn entry_event(
        &self,
        kind: lanyard_audit::EventKind,
        actor: &str,
        policy_ids: &[String],
        e: &Entry,
    ) -> Vec<lanyard_audit::Event> {
        let mut ev = self
            .shared
            .audit
            .event(kind, lanyard_audit::Outcome::Success);
        ev.actor = Some(actor.to_string());
        ev.policy_ids = policy_ids.to_vec();
        ev.decision = Some("allow".to_string());
        ev.subject = Some(e.spec.spiffe_id.to_string());
        ev.owner = Some(e.spec.owner.clone());
        ev.set_evidence(EntryChanged::new(
            &e.id,
            e.spec.parent_id.to_string(),
            e.spec.selectors.iter().map(ToString::to_string).collect(),
            e.revision,
        ));
        vec![ev]
    }

    /// The evidence-log event for a ban or eviction; stored in the change's transaction.
    fn agent_event(
        &self,
        kind: lanyard_audit::EventKind,
        actor: &str,
        policy_ids: &[String],
        n: &Node,
    ) -> Vec<lanyard_audit::Event> {
        let mut ev = self
            .shared
            .audit
            .event(kind, lanyard_audit::Outcome::Success);
        ev.actor = Some(actor.to_string());
        ev.policy_ids = policy_ids.to_vec();
        ev.decision = Some("allow".to_string());
        ev.subject = Some(n.spiffe_id.to_string());
        ev.set_evidence(AgentRemoved::new(&n.attestation_type));
        vec![ev]
    }

    /// Decide a ban or eviction of agent `id` by registration policy.
    async fn check_agent_op(
        &self,
        who: &AdminCaller,
        id: &SpiffeId,
        op: fn(lanyard_policy::AgentFacts) -> lanyard_policy::AdminOperation,
    ) -> Result<Vec<String>, Status> {
        let facts = self.agent_facts(id).await?;
        crate::policy::check_admin(
            &self.shared,
            &who.facts,
            &who.actor,
            &op(facts),
            Some(id.to_string()),
        )
        .await
    }

    /// What registration policy sees of an attested agent (ban, evict).
    async fn agent_facts(&self, id: &SpiffeId) -> Result<lanyard_policy::AgentFacts, Status> {
        let n = self
            .shared
            .store
            .get_node(id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                store_status(StoreError::NotFound {
                    what: "agent",
                    id: id.to_string(),
                })
            })?;
        Ok(lanyard_policy::AgentFacts {
            spiffe_id: n.spiffe_id.to_string(),
            attestation_type: n.attestation_type.clone(),
            selectors: n.selectors.iter().map(ToString::to_string).collect(),
            banned: n.banned,
        })
    }

    /// The admin caller of `req`, through the admin gate ([`admit_admin`]); a
    /// refusal over mTLS is recorded in the evidence log.
    async fn admin<T>(&self, req: &Request<T>) -> Result<AdminCaller, Status> {
        let caller = Caller::of(req)?;
        // Fail fast while the datastore is away rather than wait on it.
        if let Some(cause) = self.shared.db_health.down_cause() {
            return Err(Status::unavailable(format!(
                "the datastore is unreachable ({cause}); nothing was read or changed; the server reconnects by itself, retry when GET /ready answers 200"
            )));
        }
        let index = if self.require_admin_svid {
            Some(self.shared.entries.index().await.map_err(server_status)?)
        } else {
            None
        };
        let now = self.shared.clock.unix_seconds();
        let gate = match &index {
            None => AdminGate::LocalSocket,
            Some(i) => AdminGate::AdminSvid(&i.1),
        };
        match admit_admin(gate, caller, now) {
            Ok(who) => Ok(who),
            Err(refusal) => {
                tracing::warn!(caller = %caller.actor(), reason = %refusal, "admin call refused");
                if let AdminRefusal::NotAdmin(peer) = &refusal {
                    let mut ev = self.shared.audit.event(
                        lanyard_audit::EventKind::AdminCallRefused,
                        lanyard_audit::Outcome::Denied,
                    );
                    ev.actor = Some(peer.to_string());
                    ev.reason = Some("not an admin identity".to_string());
                    let _ = self.shared.audit.record(vec![ev]).await;
                }
                Err(refusal.into())
            }
        }
    }
}

/// An admin caller the gate let through, as policy and evidence see it.
#[derive(Debug, Clone)]
pub struct AdminCaller {
    pub facts: crate::policy::CallerFacts,
    pub actor: String,
}

/// Which proof an admin listener demands.
#[derive(Debug, Clone, Copy)]
pub enum AdminGate<'a> {
    /// The local Unix socket: file permissions are the gate.
    LocalSocket,
    /// The mTLS listener: the X509-SVID of an unexpired admin entry in `index`.
    AdminSvid(&'a EntryIndex),
}

/// Why the admin gate refused a caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminRefusal {
    #[error("no client SVID")]
    NoSvid,
    #[error("{0} is not an admin identity")]
    NotAdmin(SpiffeId),
}

impl From<AdminRefusal> for Status {
    fn from(r: AdminRefusal) -> Self {
        match r {
            AdminRefusal::NoSvid => {
                Status::unauthenticated("the admin API over TLS requires an admin X509-SVID")
            }
            AdminRefusal::NotAdmin(peer) => Status::permission_denied(format!(
                "{peer} is not an admin identity; only SVIDs of entries created with --admin may use the admin API"
            )),
        }
    }
}

/// The admin gate (pure): who may call the admin API through `gate` at `now`.
pub fn admit_admin(
    gate: AdminGate<'_>,
    caller: &Caller,
    now: i64,
) -> Result<AdminCaller, AdminRefusal> {
    let who = AdminCaller {
        facts: caller.policy_facts(),
        actor: caller.actor(),
    };
    match gate {
        AdminGate::LocalSocket => Ok(who),
        AdminGate::AdminSvid(index) => {
            let id = caller.spiffe_id().ok_or(AdminRefusal::NoSvid)?;
            if index.is_admin(id, now) {
                Ok(who)
            } else {
                Err(AdminRefusal::NotAdmin(id.clone()))
            }
        }
    }
}

pub(crate) fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Duplicate(m) => Status::already_exists(m),
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::Conflict { .. } => Status::aborted(e.to_string()),
        StoreError::Unavailable(_) => {
            tracing::error!(error = %e, "datastore unreachable");
            Status::unavailable(format!(
                "{e}; nothing was decided or changed, retry when it is back"
            ))
        }
        other => {
            tracing::error!(error = %other, "datastore error");
            Status::internal(other.to_string())
        }
    }
}

fn bad(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

fn label(field: &str, v: &str, required: bool) -> Result<Option<String>, Status> {
    let t = v.trim();
    if t.is_empty() {
        if required {
            return Err(bad(format!(
                "{field} is required: every identity must have an owner (a team or person), e.g. --owner payments-team"
            )));
        }
        return Ok(None);
    }
    if t.len() > MAX_LABEL {
        return Err(bad(format!(
            "{field} is longer than {MAX_LABEL} characters"
        )));
    }
    if t.chars().any(char::is_control) {
        return Err(bad(format!("{field} contains control characters")));
    }
    Ok(Some(t.to_string()))
}

/// Validate an entry from the wire into a domain spec.
pub fn validate_entry(shared: &Shared, e: &pb::Entry) -> Result<EntrySpec, Status> {
    let td = &shared.config.trust_domain;
    let spiffe_id = SpiffeId::new(&e.spiffe_id)
        .map_err(|err| bad(format!("spiffe_id {:?}: {err}", e.spiffe_id)))?;
    if !spiffe_id.is_member_of(td) {
        return Err(bad(format!(
            "spiffe_id {spiffe_id} is not in this server's trust domain {td}; use spiffe://{td}/..."
        )));
    }
    if spiffe_id.is_root() {
        return Err(bad(format!(
            "spiffe_id {spiffe_id} names the trust domain itself; give it a path, e.g. {spiffe_id}/service"
        )));
    }
    if spiffe_id.path().starts_with("/lanyard/") {
        return Err(bad(format!(
            "spiffe_id {spiffe_id}: the /lanyard/ path is reserved for the server and agents"
        )));
    }
    let parent_id = SpiffeId::new(&e.parent_id)
        .map_err(|err| bad(format!("parent_id {:?}: {err}", e.parent_id)))?;
    if !parent_id.is_member_of(td) {
        return Err(bad(format!(
            "parent_id {parent_id} is not in this server's trust domain {td}"
        )));
    }
    if e.selectors.is_empty() {
        return Err(bad(
            "at least one selector is required, e.g. --selector unix:uid:1000",
        ));
    }
    let selectors = e
        .selectors
        .iter()
        .map(|s| Selector::new(s).map_err(|err| bad(format!("selector {s:?}: {err}"))))
        .collect::<Result<Vec<_>, _>>()?;
    // Whether an owner is required is registration policy ("owner-required").
    let owner = label("owner", &e.owner, false)?.unwrap_or_default();
    let environment = label("environment", &e.environment, false)?;
    let hint = label("hint", &e.hint, false)?;
    let ca_ttl = shared.config.ca_ttl.as_secs();
    for (field, ttl) in [
        ("x509_ttl", e.x509_ttl_seconds),
        ("jwt_ttl", e.jwt_ttl_seconds),
    ] {
        if ttl > ca_ttl {
            return Err(bad(format!(
                "{field} of {ttl}s exceeds the CA lifetime of {ca_ttl}s; an SVID never outlives its CA"
            )));
        }
    }
    for d in &e.dns_names {
        lanyard_core::dns::validate_dns_name(d).map_err(|err| bad(format!("dns_name: {err}")))?;
    }
    if e.downstream {
        return Err(bad(
            "downstream entries (an SVID that signs SVIDs for a nested server) are not supported; leave downstream unset",
        ));
    }
    let mut federates_with: Vec<TrustDomain> = Vec::with_capacity(e.federates_with.len());
    for t in &e.federates_with {
        let fed = TrustDomain::new(t).map_err(|err| {
            bad(format!(
                "federates_with {t:?}: {err}; give a trust domain name such as partner.example"
            ))
        })?;
        if &fed == td {
            return Err(bad(format!(
                "federates_with {t:?} names this server's own trust domain; list only other trust domains"
            )));
        }
        if !federates_with.contains(&fed) {
            federates_with.push(fed);
        }
    }
    let expires_at = match e.expires_at {
        0 => None,
        t if t <= shared.clock.unix_seconds() => {
            return Err(bad(format!(
                "expires_at {t} is in the past; give a future time or none"
            )));
        }
        t => Some(t),
    };
    Ok(EntrySpec {
        spiffe_id,
        parent_id,
        selectors,
        owner,
        environment,
        x509_ttl: e.x509_ttl_seconds,
        jwt_ttl: e.jwt_ttl_seconds,
        dns_names: e.dns_names.clone(),
        hint,
        admin: e.admin,
        downstream: e.downstream,
        expires_at,
        federates_with,
    })
}

pub fn to_pb_entry(e: &Entry) -> pb::Entry {
    pb::Entry {
        id: e.id.clone(),
        spiffe_id: e.spec.spiffe_id.to_string(),
        parent_id: e.spec.parent_id.to_string(),
        selectors: e.spec.selectors.iter().map(ToString::to_string).collect(),
        owner: e.spec.owner.clone(),
        environment: e.spec.environment.clone().unwrap_or_default(),
        x509_ttl_seconds: e.spec.x509_ttl,
        jwt_ttl_seconds: e.spec.jwt_ttl,
        dns_names: e.spec.dns_names.clone(),
        hint: e.spec.hint.clone().unwrap_or_default(),
        admin: e.spec.admin,
        downstream: e.spec.downstream,
        expires_at: e.spec.expires_at.unwrap_or(0),
        revision: e.revision,
        created_at: e.created_at,
        updated_at: e.updated_at,
        federates_with: e
            .spec
            .federates_with
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}

fn to_pb_agent(n: &Node) -> pb::Agent {
    pb::Agent {
        spiffe_id: n.spiffe_id.to_string(),
        attestation_type: n.attestation_type.clone(),
        selectors: n.selectors.iter().map(ToString::to_string).collect(),
        serial: n.serial.clone(),
        expires_at: n.expires_at,
        banned: n.banned,
        created_at: n.created_at,
        updated_at: n.updated_at,
        superseded_count: n.superseded_count,
        superseded_at: n.superseded_at.unwrap_or(0),
    }
}

fn agent_id(s: &str) -> Result<SpiffeId, Status> {
    SpiffeId::new(s).map_err(|e| bad(format!("agent ID {s:?}: {e}")))
}

fn entry_id(s: &str) -> Result<&str, Status> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(format!(
            "entry id {s:?} is malformed; entry ids are the 32 hex characters that `lanyard entry create` and `list` print"
        )));
    }
    Ok(s)
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn create_entry(&self, req: Request<pb::Entry>) -> Result<Response<pb::Entry>, Status> {
        let who = self.admin(&req).await?;
        let spec = validate_entry(&self.shared, req.get_ref())?;
        let actor = who.actor.clone();
        let policy_ids = crate::policy::check_entry(
            &self.shared,
            &who.facts,
            &actor,
            lanyard_policy::RegistrationAction::Create,
            &spec,
        )
        .await?;
        crate::policy::check_alias_children(
            &self.shared,
            &who.facts,
            &actor,
            lanyard_policy::RegistrationAction::Create,
            &spec,
            None,
        )
        .await?;
        let e = self
            .shared
            .store
            .create_entry(&spec, self.shared.clock.unix_seconds(), &|e| {
                self.entry_event(
                    lanyard_audit::EventKind::EntryCreated,
                    &actor,
                    &policy_ids,
                    e,
                )
            })
            .await
            .map_err(store_status)?;
        tracing::info!(entry = %e.id, spiffe_id = %e.spec.spiffe_id, owner = %e.spec.owner, "entry created");
        self.shared.changes.notify();
        Ok(Response::new(to_pb_entry(&e)))
    }

    async fn update_entry(
        &self,
        req: Request<pb::UpdateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let AdminCaller {
            facts: caller,
            actor,
        } = self.admin(&req).await?;
        let r = req.into_inner();
        let e = r.entry.ok_or_else(|| bad("entry is required"))?;
        let id = entry_id(&e.id)?;
        let spec = validate_entry(&self.shared, &e)?;
        // Both the entry as it is and as it would become must be allowed (an admin
        // scoped to a path cannot move an entry in or out of it).
        let current = self
            .shared
            .store
            .get_entry(id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no entry with id {id:?}")))?;
        crate::policy::check_entry(
            &self.shared,
            &caller,
            &actor,
            lanyard_policy::RegistrationAction::Update,
            &current.spec,
        )
        .await?;
        let policy_ids = crate::policy::check_entry(
            &self.shared,
            &caller,
            &actor,
            lanyard_policy::RegistrationAction::Update,
            &spec,
        )
        .await?;
        crate::policy::check_alias_children(
            &self.shared,
            &caller,
            &actor,
            lanyard_policy::RegistrationAction::Update,
            &spec,
            Some(id),
        )
        .await?;
        let expected = (r.expected_revision > 0).then_some(r.expected_revision);
        let updated = self
            .shared
            .store
            .update_entry(
                id,
                &spec,
                expected,
                self.shared.clock.unix_seconds(),
                &|e| {
                    self.entry_event(
                        lanyard_audit::EventKind::EntryUpdated,
                        &actor,
                        &policy_ids,
                        e,
                    )
                },
            )
            .await
            .map_err(store_status)?;
        tracing::info!(entry = %updated.id, revision = updated.revision, "entry updated");
        self.shared.changes.notify();
        Ok(Response::new(to_pb_entry(&updated)))
    }

    async fn delete_entry(&self, req: Request<pb::EntryId>) -> Result<Response<pb::Entry>, Status> {
        let who = self.admin(&req).await?;
        let id = entry_id(&req.get_ref().id)?;
        let actor = who.actor.clone();
        let current = self
            .shared
            .store
            .get_entry(id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no entry with id {id:?}")))?;
        let policy_ids = crate::policy::check_entry(
            &self.shared,
            &who.facts,
            &actor,
            lanyard_policy::RegistrationAction::Delete,
            &current.spec,
        )
        .await?;
        let e = self
            .shared
            .store
            .delete_entry(id, &|e| {
                self.entry_event(
                    lanyard_audit::EventKind::EntryDeleted,
                    &actor,
                    &policy_ids,
                    e,
                )
            })
            .await
            .map_err(store_status)?;
        tracing::info!(entry = %e.id, spiffe_id = %e.spec.spiffe_id, "entry deleted");
        self.shared.changes.notify();
        Ok(Response::new(to_pb_entry(&e)))
    }

    async fn batch_create_entry(
        &self,
        req: Request<pb::BatchCreateEntryRequest>,
    ) -> Result<Response<pb::BatchEntryResponse>, Status> {
        let who = self.admin(&req).await?;
        let entries = req.into_inner().entries;
        Ok(Response::new(
            self.batch(&who, bulk::BatchRequest::Create(entries))
                .await?,
        ))
    }

    async fn batch_update_entry(
        &self,
        req: Request<pb::BatchUpdateEntryRequest>,
    ) -> Result<Response<pb::BatchEntryResponse>, Status> {
        let who = self.admin(&req).await?;
        let updates = req.into_inner().entries;
        Ok(Response::new(
            self.batch(&who, bulk::BatchRequest::Update(updates))
                .await?,
        ))
    }

    async fn batch_delete_entry(
        &self,
        req: Request<pb::BatchDeleteEntryRequest>,
    ) -> Result<Response<pb::BatchEntryResponse>, Status> {
        let who = self.admin(&req).await?;
        let ids = req.into_inner().ids;
        Ok(Response::new(
            self.batch(&who, bulk::BatchRequest::Delete(ids)).await?,
        ))
    }

    async fn get_entry(&self, req: Request<pb::EntryId>) -> Result<Response<pb::Entry>, Status> {
        self.admin(&req).await?;
        let id = entry_id(&req.get_ref().id)?;
        let e = self
            .shared
            .store
            .get_entry(id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no entry with id {id:?}")))?;
        Ok(Response::new(to_pb_entry(&e)))
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::EntryList>, Status> {
        self.admin(&req).await?;
        let f = req.into_inner();
        let spiffe = (!f.spiffe_id.is_empty())
            .then(|| SpiffeId::new(&f.spiffe_id).map_err(|e| bad(format!("spiffe_id filter: {e}"))))
            .transpose()?;
        let parent = (!f.parent_id.is_empty())
            .then(|| SpiffeId::new(&f.parent_id).map_err(|e| bad(format!("parent_id filter: {e}"))))
            .transpose()?;
        let selector = (!f.selector.is_empty())
            .then(|| Selector::new(&f.selector).map_err(|e| bad(format!("selector filter: {e}"))))
            .transpose()?;
        let entries = self
            .shared
            .store
            .list_entries()
            .await
            .map_err(store_status)?;
        let entries = entries
            .iter()
            .filter(|e| spiffe.as_ref().is_none_or(|s| &e.spec.spiffe_id == s))
            .filter(|e| parent.as_ref().is_none_or(|p| &e.spec.parent_id == p))
            .filter(|e| {
                selector
                    .as_ref()
                    .is_none_or(|s| e.spec.selectors.contains(s))
            })
            .map(to_pb_entry)
            .collect();
        Ok(Response::new(pb::EntryList { entries }))
    }

    async fn generate_join_token(
        &self,
        req: Request<pb::JoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenResponse>, Status> {
        let AdminCaller {
            facts: caller,
            actor,
        } = self.admin(&req).await?;
        let r = req.into_inner();
        let ttl = if r.ttl_seconds == 0 {
            self.shared.config.join_token_ttl
        } else {
            Duration::from_secs(r.ttl_seconds)
        };
        if ttl > Duration::from_secs(7 * 86_400) {
            return Err(bad("a join token may live at most 7d; use a shorter --ttl"));
        }
        let spiffe_id = if r.spiffe_id.is_empty() {
            None
        } else {
            let id = SpiffeId::new(&r.spiffe_id).map_err(|e| bad(format!("spiffe_id: {e}")))?;
            lanyard_core::check_agent_id(&id, &self.shared.config.trust_domain)
                .map_err(|e| bad(format!("spiffe_id: {e}")))?;
            Some(id)
        };
        let mut raw = [0u8; 24];
        aws_lc_rs::rand::fill(&mut raw).map_err(|e| Status::internal(e.to_string()))?;
        let token = hex::encode(raw);
        let now = self.shared.clock.unix_seconds();
        let expires_at = now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let token_hash = sha256_hex(token.as_bytes());
        // The agent ID the token will attest as, for policy.
        let agent_id = match &spiffe_id {
            Some(id) => id.clone(),
            None => crate::node::join_token_agent_id(&self.shared.config.trust_domain, &token_hash)
                .map_err(|e| Status::internal(e.to_string()))?,
        };
        let policy_ids = crate::policy::check_admin(
            &self.shared,
            &caller,
            &actor,
            &lanyard_policy::AdminOperation::CreateJoinToken {
                agent_id: agent_id.to_string(),
                custom_id: spiffe_id.is_some(),
                ttl: ttl.as_secs(),
            },
            Some(agent_id.to_string()),
        )
        .await?;
        let event = |_: &()| {
            let mut ev = self.shared.audit.event(
                lanyard_audit::EventKind::TokenCreated,
                lanyard_audit::Outcome::Success,
            );
            ev.actor = Some(actor.clone());
            ev.subject = Some(agent_id.to_string());
            ev.policy_ids = policy_ids.clone();
            ev.decision = Some("allow".to_string());
            ev.set_evidence(TokenCreated::new(&token_hash[..16], expires_at));
            vec![ev]
        };
        self.shared
            .store
            .create_join_token(
                &token_hash,
                &JoinToken {
                    spiffe_id: spiffe_id.clone(),
                    expires_at,
                },
                now,
                &event,
            )
            .await
            .map_err(store_status)?;
        tracing::info!(expires_at, "join token created");
        Ok(Response::new(pb::JoinTokenResponse {
            token,
            expires_at,
            spiffe_id: spiffe_id.map(|i| i.to_string()).unwrap_or_default(),
        }))
    }

    async fn list_agents(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::AgentList>, Status> {
        self.admin(&req).await?;
        let nodes = self.shared.store.list_nodes().await.map_err(store_status)?;
        Ok(Response::new(pb::AgentList {
            agents: nodes.iter().map(to_pb_agent).collect(),
        }))
    }

    async fn get_agent(&self, req: Request<pb::AgentId>) -> Result<Response<pb::Agent>, Status> {
        self.admin(&req).await?;
        let id = agent_id(&req.get_ref().spiffe_id)?;
        let n = self
            .shared
            .store
            .get_node(&id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no attested agent {id}")))?;
        Ok(Response::new(to_pb_agent(&n)))
    }

    async fn ban_agent(&self, req: Request<pb::AgentId>) -> Result<Response<pb::Agent>, Status> {
        let who = self.admin(&req).await?;
        let id = agent_id(&req.get_ref().spiffe_id)?;
        let actor = who.actor.clone();
        let policy_ids = self
            .check_agent_op(&who, &id, lanyard_policy::AdminOperation::BanAgent)
            .await?;
        let n = self
            .shared
            .store
            .set_node_banned(&id, true, self.shared.clock.unix_seconds(), &|n| {
                self.agent_event(
                    lanyard_audit::EventKind::AgentBanned,
                    &actor,
                    &policy_ids,
                    n,
                )
            })
            .await
            .map_err(store_status)?;
        tracing::warn!(agent = %id, "agent banned");
        self.shared.changes.notify();
        Ok(Response::new(to_pb_agent(&n)))
    }

    async fn evict_agent(&self, req: Request<pb::AgentId>) -> Result<Response<pb::Agent>, Status> {
        let who = self.admin(&req).await?;
        let id = agent_id(&req.get_ref().spiffe_id)?;
        let actor = who.actor.clone();
        let policy_ids = self
            .check_agent_op(&who, &id, lanyard_policy::AdminOperation::EvictAgent)
            .await?;
        let n = self
            .shared
            .store
            .delete_node(&id, &|n| {
                self.agent_event(
                    lanyard_audit::EventKind::AgentEvicted,
                    &actor,
                    &policy_ids,
                    n,
                )
            })
            .await
            .map_err(store_status)?;
        tracing::warn!(agent = %id, "agent evicted");
        self.shared.changes.notify();
        Ok(Response::new(to_pb_agent(&n)))
    }

    async fn get_bundle(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::BundleResponse>, Status> {
        self.admin(&req).await?;
        let p = self.shared.publication.published();
        let pem = p
            .bundle
            .as_ref()
            .map(|b| b.x509_authorities_pem())
            .unwrap_or_default();
        Ok(Response::new(pb::BundleResponse {
            trust_domain: self.shared.config.trust_domain.to_string(),
            sequence: p.sequence,
            jwks: p.document,
            pem,
        }))
    }

    async fn revoke_jwt(
        &self,
        req: Request<pb::RevokeJwtRequest>,
    ) -> Result<Response<pb::RevokedJwt>, Status> {
        let AdminCaller {
            facts: caller,
            actor,
        } = self.admin(&req).await?;
        let r =
            crate::governance::revoke_jwt(&self.shared, &caller, &actor, req.into_inner()).await?;
        Ok(Response::new(r))
    }

    async fn list_revoked_jwts(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::RevokedJwtList>, Status> {
        self.admin(&req).await?;
        let list = self
            .shared
            .store
            .revoked_jwts(self.shared.clock.unix_seconds())
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::RevokedJwtList {
            revoked: list.iter().map(crate::governance::to_pb_revoked).collect(),
        }))
    }

    async fn set_policy(
        &self,
        req: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let AdminCaller {
            facts: caller,
            actor,
        } = self.admin(&req).await?;
        let r = req.into_inner();
        let p = crate::policy::set_policy(&self.shared, &caller, &actor, &r.kind, &r.body).await?;
        Ok(Response::new(p))
    }

    async fn get_policy(
        &self,
        req: Request<pb::PolicyKind>,
    ) -> Result<Response<pb::Policy>, Status> {
        self.admin(&req).await?;
        let p = crate::policy::get_policy(&self.shared, &req.get_ref().kind).await?;
        Ok(Response::new(p))
    }

    async fn create_exception(
        &self,
        req: Request<pb::CreateExceptionRequest>,
    ) -> Result<Response<pb::ExceptionInfo>, Status> {
        let AdminCaller {
            facts: caller,
            actor,
        } = self.admin(&req).await?;
        let r = req.into_inner();
        let policy_ids = crate::policy::check_exception(&self.shared, &caller, &actor, &r).await?;
        let e = crate::governance::create_exception(&self.shared, &actor, &r, policy_ids).await?;
        Ok(Response::new(e))
    }

    async fn list_exceptions(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::ExceptionList>, Status> {
        self.admin(&req).await?;
        let now = self.shared.clock.unix_seconds();
        let list = self
            .shared
            .store
            .list_exceptions()
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ExceptionList {
            exceptions: list
                .iter()
                .map(|e| crate::governance::to_pb_exception(e, now))
                .collect(),
        }))
    }

    async fn get_exception(
        &self,
        req: Request<pb::ExceptionName>,
    ) -> Result<Response<pb::ExceptionInfo>, Status> {
        self.admin(&req).await?;
        let name = &req.get_ref().name;
        let e = self
            .shared
            .store
            .get_exception(name)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no exception named {name:?}")))?;
        Ok(Response::new(crate::governance::to_pb_exception(
            &e,
            self.shared.clock.unix_seconds(),
        )))
    }

    async fn revoke_exception(
        &self,
        req: Request<pb::ExceptionName>,
    ) -> Result<Response<pb::ExceptionInfo>, Status> {
        let AdminCaller {
            facts: caller,
            actor,
        } = self.admin(&req).await?;
        let e =
            crate::governance::revoke_exception(&self.shared, &caller, &actor, &req.get_ref().name)
                .await?;
        Ok(Response::new(e))
    }

    async fn get_inventory(
        &self,
        req: Request<pb::InventoryRequest>,
    ) -> Result<Response<pb::Inventory>, Status> {
        self.admin(&req).await?;
        let inv = crate::governance::inventory(&self.shared, req.get_ref()).await?;
        Ok(Response::new(inv))
    }

    async fn list_ca_slots(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::CaSlots>, Status> {
        self.admin(&req).await?;
        Ok(Response::new(self.ca_slots()?))
    }

    async fn taint_ca(
        &self,
        req: Request<pb::TaintRequest>,
    ) -> Result<Response<pb::CaSlots>, Status> {
        let who = self.admin(&req).await?;
        let actor = who.actor.clone();
        let slot = req.get_ref().slot.clone();
        let state = self
            .ca_slots()?
            .slots
            .into_iter()
            .find(|s| s.id == slot)
            .map(|s| s.state)
            // An unknown slot is refused by the taint itself, naming it.
            .unwrap_or_default();
        let policy_ids = crate::policy::check_admin(
            &self.shared,
            &who.facts,
            &actor,
            &lanyard_policy::AdminOperation::TaintCa {
                slot: slot.clone(),
                state,
            },
            None,
        )
        .await?;
        self.shared
            .taint(&slot, &actor, &policy_ids)
            .await
            .map_err(|e| match e {
                crate::state::ServerError::Ca(
                    c @ (lanyard_ca::CaError::UnknownSlot(_)
                    | lanyard_ca::CaError::AlreadyTainted(_)),
                ) => Status::failed_precondition(c.to_string()),
                other => Status::internal(other.to_string()),
            })?;
        tracing::warn!(slot = %slot, "CA key tainted");
        Ok(Response::new(self.ca_slots()?))
    }

    async fn list_servers(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::ServerList>, Status> {
        self.admin(&req).await?;
        let servers = self
            .shared
            .store
            .list_servers()
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ServerList {
            servers: servers
                .iter()
                .map(|r| to_pb_server(r, &self.shared.server_name))
                .collect(),
        }))
    }

    async fn deregister_server(
        &self,
        req: Request<pb::DeregisterServerRequest>,
    ) -> Result<Response<pb::ServerInfo>, Status> {
        let who = self.admin(&req).await?;
        let actor = who.actor.clone();
        let pb::DeregisterServerRequest { name, force } = req.get_ref().clone();
        let now = self.shared.clock.unix_seconds();
        let servers = self
            .shared
            .store
            .list_servers()
            .await
            .map_err(store_status)?;
        let target = servers.iter().find(|s| s.name == name).ok_or_else(|| {
            Status::not_found(format!(
                "no server named {name:?} shares this datastore; `lanyard server list` shows them"
            ))
        })?;
        let seen_ago = u64::try_from(now - target.seen_at).unwrap_or(0);
        deregistration_allowed(&name, &self.shared.server_name, seen_ago, force)
            .map_err(Status::failed_precondition)?;
        let policy_ids = crate::policy::check_admin(
            &self.shared,
            &who.facts,
            &actor,
            &lanyard_policy::AdminOperation::DeregisterServer {
                name: name.clone(),
                seen_ago,
            },
            None,
        )
        .await?;
        let gone = self
            .shared
            .store
            .deregister_server(&name, now, &|r| {
                let mut ev = self.shared.audit.event(
                    lanyard_audit::EventKind::ServerDeregistered,
                    lanyard_audit::Outcome::Success,
                );
                ev.actor = Some(actor.clone());
                ev.subject = Some(self.shared.server_id.to_string());
                ev.policy_ids = policy_ids.clone();
                ev.set_evidence(lanyard_audit::evidence::ServerChanged::new(
                    &r.name,
                    crate::cluster::authority_ids(&r.authorities),
                ));
                vec![ev]
            })
            .await
            .map_err(store_status)?;
        tracing::warn!(server = %name, "server deregistered: its keys leave the trust bundle");
        self.shared
            .publish_bundle()
            .await
            .map_err(|e| Status::internal(format!("deregistered, but the bundle could not be republished yet (the next tick retries): {e}")))?;
        Ok(Response::new(to_pb_server(&gone, &self.shared.server_name)))
    }
}

/// A server seen within this long is presumed running: deregistering it needs
/// `--force`.
pub const SERVER_LIVE_SECS: u64 = 30;

/// Pure: whether `name` may be deregistered through server `this`, last seen
/// `seen_ago` seconds ago.
pub fn deregistration_allowed(
    name: &str,
    this: &str,
    seen_ago: u64,
    force: bool,
) -> Result<(), String> {
    if name == this {
        return Err(format!(
            "{name} is the server answering this call; deregister it through another server (or stop it and run `lanyard server deregister` against another)"
        ));
    }
    if seen_ago < SERVER_LIVE_SECS && !force {
        return Err(format!(
            "server {name} was seen {seen_ago}s ago and is probably running: agents attached to it would stop trusting it; stop it first, or pass --force"
        ));
    }
    Ok(())
}

fn to_pb_server(r: &lanyard_store::ServerRecord, this: &str) -> pb::ServerInfo {
    pb::ServerInfo {
        name: r.name.clone(),
        address: r.address.clone(),
        authorities: r
            .authorities
            .iter()
            .map(|a| pb::ServerAuthority {
                kind: match a.kind {
                    lanyard_store::AuthorityKind::X509 => "x509",
                    lanyard_store::AuthorityKind::Jwt => "jwt",
                }
                .to_string(),
                id: a.id.clone(),
                state: a.state.clone(),
                not_after: a.not_after,
            })
            .collect(),
        expires_at: r.expires_at,
        started_at: r.started_at,
        seen_at: r.seen_at,
        deregistered_at: r.deregistered_at.unwrap_or(0),
        this_server: r.name == this,
    }
}

impl AdminService {
    fn ca_slots(&self) -> Result<pb::CaSlots, Status> {
        let ca = self
            .shared
            .ca
            .read()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(pb::CaSlots {
            slots: ca
                .slots()
                .iter()
                .map(|s| pb::CaSlotInfo {
                    id: s.id().to_string(),
                    state: s.state().name().to_string(),
                    not_before: s.not_before(),
                    not_after: s.not_after(),
                    subject_key_id: lanyard_core::x509::subject_key_id(s.x509_cert_der())
                        .unwrap_or_default(),
                    tainted_at: s.tainted_at().unwrap_or(0),
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_testkit::{entry, spiffe_id as id};

    #[test]
    fn a_server_is_not_deregistered_by_itself_nor_while_it_runs_unless_forced() {
        let e = deregistration_allowed("a", "a", 999, true).unwrap_err();
        assert!(e.contains("the server answering this call"), "{e}");
        let e = deregistration_allowed("b", "a", 3, false).unwrap_err();
        assert!(e.contains("seen 3s ago") && e.contains("--force"), "{e}");
        assert!(deregistration_allowed("b", "a", 3, true).is_ok());
        assert!(deregistration_allowed("b", "a", SERVER_LIVE_SECS, false).is_ok());
    }

    fn index() -> EntryIndex {
        EntryIndex::build(
            vec![
                entry("ops", "/agent", "/ops", &["unix:uid:0"])
                    .admin()
                    .build(),
                entry("old-ops", "/agent", "/old-ops", &["unix:uid:0"])
                    .admin()
                    .expires_at(100)
                    .build(),
                entry("web", "/agent", "/web", &["unix:uid:0"]).build(),
            ],
            &id("/lanyard/server"),
        )
    }

    fn svid(p: &str) -> Caller {
        Caller::Svid {
            id: id(p),
            serial: "01".into(),
        }
    }

    #[test]
    fn the_local_socket_admits_any_local_caller_and_names_it_by_uid() {
        let who = admit_admin(
            AdminGate::LocalSocket,
            &Caller::Local { uid: Some(1000) },
            0,
        )
        .unwrap();
        assert_eq!(who.actor, "uid:1000");
        assert_eq!(who.facts, crate::policy::CallerFacts::Local { uid: 1000 });
    }

    #[test]
    fn the_tls_listener_admits_only_unexpired_admin_entries() {
        let idx = index();
        let gate = AdminGate::AdminSvid(&idx);
        let ok = admit_admin(gate, &svid("/ops"), 50).unwrap();
        assert_eq!(ok.actor, "spiffe://example.org/ops");
        assert_eq!(ok.facts, crate::policy::CallerFacts::Spiffe(id("/ops")));
        // An admin entry that expired no longer admits.
        assert!(admit_admin(gate, &svid("/old-ops"), 99).is_ok());
        assert_eq!(
            admit_admin(gate, &svid("/old-ops"), 100).unwrap_err(),
            AdminRefusal::NotAdmin(id("/old-ops"))
        );
        // A workload entry is not an admin, nor is an unknown ID.
        assert_eq!(
            admit_admin(gate, &svid("/web"), 0).unwrap_err(),
            AdminRefusal::NotAdmin(id("/web"))
        );
        assert!(admit_admin(gate, &svid("/nobody"), 0).is_err());
    }

    #[test]
    fn the_tls_listener_refuses_callers_without_an_svid() {
        let idx = index();
        let gate = AdminGate::AdminSvid(&idx);
        assert_eq!(
            admit_admin(gate, &Caller::Anonymous, 0).unwrap_err(),
            AdminRefusal::NoSvid
        );
        // A local caller cannot reach the TLS gate, and would be refused if it did.
        assert_eq!(
            admit_admin(gate, &Caller::Local { uid: Some(0) }, 0).unwrap_err(),
            AdminRefusal::NoSvid
        );
    }

    #[test]
    fn refusals_map_to_unauthenticated_and_permission_denied() {
        assert_eq!(
            Status::from(AdminRefusal::NoSvid).code(),
            tonic::Code::Unauthenticated
        );
        let s = Status::from(AdminRefusal::NotAdmin(id("/web")));
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert!(s.message().contains("--admin"), "{}", s.message());
    }
}
