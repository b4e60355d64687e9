//! Registration requests as Cedar entities.

use serde_json::{Value, json};

use crate::{CompiledPolicies, Decision, PolicyError, PolicyKind};

/// Who calls the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The local admin Unix socket.
    Local { uid: u32 },
    /// An admin SVID over mTLS (a validated SPIFFE ID).
    Spiffe(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationAction {
    Create,
    Update,
    Delete,
}

impl RegistrationAction {
    pub fn name(self) -> &'static str {
        match self {
            Self::Create => "create_entry",
            Self::Update => "update_entry",
            Self::Delete => "delete_entry",
        }
    }
}

/// The entry as policy sees it. TTLs are effective (server default applied).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFacts {
    pub spiffe_id: String,
    pub parent_id: String,
    pub selectors: Vec<String>,
    pub x509_ttl: u64,
    pub jwt_ttl: u64,
    pub owner: String,
    pub environment: String,
    pub admin: bool,
    pub downstream: bool,
    pub has_expiry: bool,
    /// What every agent that may serve the entry is known to have proved: for an
    /// entry parented to an attested agent, that node's selectors; for one
    /// parented to a node alias, the selectors all of the alias's definitions
    /// share (an agent matching any definition serves it); else none.
    pub parent_selectors: Vec<String>,
    /// The attestation methods behind `parent_selectors` (`github`, `k8s_psat`,
    /// `aws_iid`, `join_token`, …: the agent's attestation type and the selectors'
    /// types).
    pub parent_attestors: Vec<String>,
}

/// An exception as policy sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExceptionFacts {
    pub name: String,
    pub owner: String,
    pub duration: u64,
    pub allowed: Vec<String>,
}

/// An agent (ban, evict) as policy sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentFacts {
    pub spiffe_id: String,
    pub attestation_type: String,
    pub selectors: Vec<String>,
    pub banned: bool,
}

/// An admin operation other than an entry change, with the facts policy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminOperation {
    /// A join token that will attest as `agent_id` (`custom_id`: chosen by the caller).
    CreateJoinToken {
        agent_id: String,
        custom_id: bool,
        ttl: u64,
    },
    BanAgent(AgentFacts),
    EvictAgent(AgentFacts),
    /// A CA key slot of this server.
    TaintCa {
        slot: String,
        state: String,
    },
    /// `subject`: the token's `sub` when known, else "".
    RevokeJwt {
        jti: String,
        subject: String,
    },
    /// A policy set replacing the active one of `kind`.
    SetPolicy {
        kind: String,
        policy_ids: Vec<String>,
    },
    CreateException(ExceptionFacts),
    RevokeException(ExceptionFacts),
    /// A server sharing the datastore whose keys leave the bundle; `seen_ago`:
    /// seconds since its last heartbeat.
    DeregisterServer {
        name: String,
        seen_ago: u64,
    },
}

impl AdminOperation {
    /// The Cedar action name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CreateJoinToken { .. } => "create_join_token",
            Self::BanAgent(_) => "ban_agent",
            Self::EvictAgent(_) => "evict_agent",
            Self::TaintCa { .. } => "taint_ca",
            Self::RevokeJwt { .. } => "revoke_jwt",
            Self::SetPolicy { .. } => "set_policy",
            Self::CreateException(_) => "create_exception",
            Self::RevokeException(_) => "revoke_exception",
            Self::DeregisterServer { .. } => "deregister_server",
        }
    }

    /// The resource as (Cedar type, entity id, attributes).
    fn resource(&self) -> (&'static str, String, Value) {
        match self {
            Self::CreateJoinToken {
                agent_id,
                custom_id,
                ttl,
            } => {
                let (_, path) = split_id(agent_id);
                (
                    "JoinToken",
                    agent_id.clone(),
                    json!({"agent_id": agent_id, "agent_path": path, "custom_id": custom_id, "ttl": long(*ttl)}),
                )
            }
            Self::BanAgent(a) | Self::EvictAgent(a) => {
                let (_, path) = split_id(&a.spiffe_id);
                (
                    "Agent",
                    a.spiffe_id.clone(),
                    json!({
                        "spiffe_id": a.spiffe_id,
                        "path": path,
                        "attestation_type": a.attestation_type,
                        "selectors": a.selectors,
                        "banned": a.banned,
                    }),
                )
            }
            Self::TaintCa { slot, state } => (
                "Authority",
                slot.clone(),
                json!({"slot": slot, "state": state}),
            ),
            Self::RevokeJwt { jti, subject } => {
                let path = if subject.is_empty() {
                    String::new()
                } else {
                    split_id(subject).1
                };
                (
                    "Jwt",
                    jti.clone(),
                    json!({"jti": jti, "subject": subject, "subject_path": path}),
                )
            }
            Self::SetPolicy { kind, policy_ids } => (
                "PolicySet",
                kind.clone(),
                json!({"kind": kind, "policy_ids": policy_ids}),
            ),
            Self::DeregisterServer { name, seen_ago } => (
                "Server",
                name.clone(),
                json!({"name": name, "seen_ago": long(*seen_ago)}),
            ),
            Self::CreateException(e) | Self::RevokeException(e) => (
                "Exception",
                e.name.clone(),
                json!({
                    "name": e.name,
                    "owner": e.owner,
                    "duration": long(e.duration),
                    "allowed": e.allowed,
                }),
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationRequest {
    pub caller: Caller,
    pub action: RegistrationAction,
    pub entry: EntryFacts,
}

/// ("example.org", "/a/b") from "spiffe://example.org/a/b".
fn split_id(id: &str) -> (String, String) {
    let rest = id.strip_prefix("spiffe://").unwrap_or(id);
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), String::new()),
    }
}

fn long(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn admin_entity(caller: &Caller) -> (String, Value) {
    let (id, attrs) = match caller {
        Caller::Local { uid } => (
            format!("uid:{uid}"),
            json!({"local": true, "spiffe_id": "", "trust_domain": "", "path": ""}),
        ),
        Caller::Spiffe(s) => {
            let (td, path) = split_id(s);
            (
                s.clone(),
                json!({"local": false, "spiffe_id": s, "trust_domain": td, "path": path}),
            )
        }
    };
    let uid = format!("Lanyard::Admin::{}", Value::String(id.clone()));
    (
        uid,
        json!({"uid": {"type": "Lanyard::Admin", "id": id}, "attrs": attrs, "parents": []}),
    )
}

impl CompiledPolicies {
    pub(crate) fn expect_kind(&self, kind: PolicyKind) -> Result<(), PolicyError> {
        if self.kind() == kind {
            Ok(())
        } else {
            Err(PolicyError::Request(format!(
                "a {kind} request cannot be evaluated by {} policy",
                self.kind()
            )))
        }
    }

    /// Decide an entry create, update or delete.
    pub fn evaluate_registration(
        &self,
        req: &RegistrationRequest,
    ) -> Result<Decision, PolicyError> {
        self.expect_kind(PolicyKind::Registration)?;
        let e = &req.entry;
        let (td, path) = split_id(&e.spiffe_id);
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let kinds: Vec<String> = e
            .selectors
            .iter()
            .map(|s| {
                let mut it = s.splitn(3, ':');
                match (it.next(), it.next()) {
                    (Some(t), Some(k)) => format!("{t}:{k}"),
                    _ => s.clone(),
                }
            })
            .collect();
        let (principal, admin) = admin_entity(&req.caller);
        let resource = format!("Lanyard::Entry::{}", Value::String(e.spiffe_id.clone()));
        let entry = json!({
            "uid": {"type": "Lanyard::Entry", "id": e.spiffe_id},
            "attrs": {
                "spiffe_id": e.spiffe_id,
                "trust_domain": td,
                "path": path,
                "segments": segments,
                "first_segment": segments.first().copied().unwrap_or(""),
                "parent_id": e.parent_id,
                "selectors": e.selectors,
                "selector_kinds": kinds,
                "selector_count": e.selectors.len(),
                "x509_ttl": long(e.x509_ttl),
                "jwt_ttl": long(e.jwt_ttl),
                "owner": e.owner,
                "environment": e.environment,
                "admin": e.admin,
                "downstream": e.downstream,
                "has_expiry": e.has_expiry,
                "parent_selectors": e.parent_selectors,
                "parent_attestors": e.parent_attestors,
            },
            "parents": []
        });
        self.evaluate(
            &principal,
            &format!("Lanyard::Action::\"{}\"", req.action.name()),
            &resource,
            json!([admin, entry]),
        )
    }

    /// Decide whether `caller` may create the exception.
    pub fn evaluate_exception(
        &self,
        caller: &Caller,
        e: &ExceptionFacts,
    ) -> Result<Decision, PolicyError> {
        self.evaluate_admin(caller, &AdminOperation::CreateException(e.clone()))
    }

    /// Decide an admin operation other than an entry change.
    pub fn evaluate_admin(
        &self,
        caller: &Caller,
        op: &AdminOperation,
    ) -> Result<Decision, PolicyError> {
        self.expect_kind(PolicyKind::Registration)?;
        let (principal, admin) = admin_entity(caller);
        let (ty, id, attrs) = op.resource();
        let ty = format!("Lanyard::{ty}");
        let resource = format!("{ty}::{}", Value::String(id.clone()));
        let entity = json!({"uid": {"type": ty, "id": id}, "attrs": attrs, "parents": []});
        self.evaluate(
            &principal,
            &format!("Lanyard::Action::\"{}\"", op.name()),
            &resource,
            json!([admin, entity]),
        )
    }
}
