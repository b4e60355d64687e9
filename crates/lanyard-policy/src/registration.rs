//! Registration requests as Cedar entities.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::OnceLock;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
};
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

/// Entity type names of registration requests, parsed once.
struct Names {
    admin: EntityTypeName,
    entry: EntityTypeName,
    action: EntityTypeName,
}

fn names() -> Result<&'static Names, PolicyError> {
    static NAMES: OnceLock<Result<Names, String>> = OnceLock::new();
    NAMES
        .get_or_init(|| {
            let t = |n: &str| EntityTypeName::from_str(n).map_err(|e| format!("{n}: {e}"));
            Ok(Names {
                admin: t("Lanyard::Admin")?,
                entry: t("Lanyard::Entry")?,
                action: t("Lanyard::Action")?,
            })
        })
        .as_ref()
        .map_err(|e| PolicyError::Request(e.clone()))
}

/// `type:key` of each selector (`unix:uid` of `unix:uid:1000`).
fn selector_kinds(selectors: &[String]) -> Vec<String> {
    selectors
        .iter()
        .map(|s| {
            let mut it = s.splitn(3, ':');
            match (it.next(), it.next()) {
                (Some(t), Some(k)) => format!("{t}:{k}"),
                _ => s.clone(),
            }
        })
        .collect()
}

fn rstr(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_string())
}

fn rset<'a>(v: impl IntoIterator<Item = &'a str>) -> RestrictedExpression {
    RestrictedExpression::new_set(v.into_iter().map(rstr))
}

fn entity(uid: EntityUid, attrs: Vec<(&str, RestrictedExpression)>) -> Result<Entity, PolicyError> {
    let attrs: HashMap<String, RestrictedExpression> =
        attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    Entity::new(uid, attrs, HashSet::new()).map_err(|e| PolicyError::Request(e.to_string()))
}

/// The same request and entities as the JSON form of `evaluate_registration`,
/// built with the typed API.
fn typed_registration(req: &RegistrationRequest) -> Result<(Request, Entities), PolicyError> {
    let n = names()?;
    let e = &req.entry;
    let (td, path) = split_id(&e.spiffe_id);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let kinds = selector_kinds(&e.selectors);
    let (admin_id, local, caller_id) = match &req.caller {
        Caller::Local { uid } => (format!("uid:{uid}"), true, String::new()),
        Caller::Spiffe(s) => (s.clone(), false, s.clone()),
    };
    let (caller_td, caller_path) = if local {
        (String::new(), String::new())
    } else {
        split_id(&caller_id)
    };
    let principal = EntityUid::from_type_name_and_id(n.admin.clone(), EntityId::new(&admin_id));
    let admin = entity(
        principal.clone(),
        vec![
            ("local", RestrictedExpression::new_bool(local)),
            ("spiffe_id", rstr(&caller_id)),
            ("trust_domain", rstr(&caller_td)),
            ("path", rstr(&caller_path)),
        ],
    )?;
    let resource = EntityUid::from_type_name_and_id(n.entry.clone(), EntityId::new(&e.spiffe_id));
    let count = i64::try_from(e.selectors.len()).unwrap_or(i64::MAX);
    let entry = entity(
        resource.clone(),
        vec![
            ("spiffe_id", rstr(&e.spiffe_id)),
            ("trust_domain", rstr(&td)),
            ("path", rstr(&path)),
            ("segments", rset(segments.iter().copied())),
            (
                "first_segment",
                rstr(segments.first().copied().unwrap_or("")),
            ),
            ("parent_id", rstr(&e.parent_id)),
            ("selectors", rset(e.selectors.iter().map(String::as_str))),
            ("selector_kinds", rset(kinds.iter().map(String::as_str))),
            ("selector_count", RestrictedExpression::new_long(count)),
            ("x509_ttl", RestrictedExpression::new_long(long(e.x509_ttl))),
            ("jwt_ttl", RestrictedExpression::new_long(long(e.jwt_ttl))),
            ("owner", rstr(&e.owner)),
            ("environment", rstr(&e.environment)),
            ("admin", RestrictedExpression::new_bool(e.admin)),
            ("downstream", RestrictedExpression::new_bool(e.downstream)),
            ("has_expiry", RestrictedExpression::new_bool(e.has_expiry)),
            (
                "parent_selectors",
                rset(e.parent_selectors.iter().map(String::as_str)),
            ),
            (
                "parent_attestors",
                rset(e.parent_attestors.iter().map(String::as_str)),
            ),
        ],
    )?;
    let action =
        EntityUid::from_type_name_and_id(n.action.clone(), EntityId::new(req.action.name()));
    let request = Request::new(principal, action, resource, Context::empty(), None)
        .map_err(|e| PolicyError::Request(e.to_string()))?;
    let entities = Entities::from_entities([admin, entry], None)
        .map_err(|e| PolicyError::Request(e.to_string()))?;
    Ok((request, entities))
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

    /// Decide an entry create, update or delete. The request is built with Cedar's
    /// typed API (the JSON form costs several times the evaluation); debug builds
    /// (the tests) also build the JSON form, checked against the schema, and refuse
    /// to answer if the two decide differently.
    pub fn evaluate_registration(
        &self,
        req: &RegistrationRequest,
    ) -> Result<Decision, PolicyError> {
        self.expect_kind(PolicyKind::Registration)?;
        let (request, entities) = typed_registration(req)?;
        let typed = self.decide(&request, &entities);
        if cfg!(debug_assertions) {
            let oracle = self.evaluate_registration_json(req)?;
            if oracle != typed {
                return Err(PolicyError::Request(format!(
                    "the typed registration request decided {typed:?} but its JSON form {oracle:?}"
                )));
            }
        }
        Ok(typed)
    }

    /// [`Self::evaluate_registration`] through the JSON form of the request.
    fn evaluate_registration_json(
        &self,
        req: &RegistrationRequest,
    ) -> Result<Decision, PolicyError> {
        let e = &req.entry;
        let (td, path) = split_id(&e.spiffe_id);
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let kinds = selector_kinds(&e.selectors);
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
