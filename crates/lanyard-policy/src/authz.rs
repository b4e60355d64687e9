//! Runtime authorization requests as Cedar entities: `Workload`, `Action`,
//! `Resource`, and the request context passed through as tags.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::{CompiledPolicies, Decision, PolicyError, PolicyKind};

/// Actions Lanyard evaluates itself; every other action name comes from policies.
pub const BUILTIN_ACTIONS: [&str; 4] =
    ["act_for", "act_for_person", "token_exchange", "start_task"];

/// A workload as runtime policy sees it (from its registration entry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadFacts {
    pub spiffe_id: String,
    /// An entry exists for this SPIFFE ID.
    pub registered: bool,
    pub owner: String,
    pub environment: String,
    pub selectors: Vec<String>,
}

impl WorkloadFacts {
    /// A workload known only by its ID (no entry).
    pub fn unregistered(spiffe_id: &str) -> Self {
        Self {
            spiffe_id: spiffe_id.to_string(),
            ..Self::default()
        }
    }
}

/// A verified task token, as policy sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFacts {
    pub txn: String,
    pub purpose: String,
    pub tools: Vec<String>,
    pub agent: String,
    pub acting_for: String,
}

/// What the request is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// `Resource::"<id>"` with its AuthZEN type and properties.
    Resource {
        id: String,
        kind: String,
        properties: Map<String, Value>,
    },
    /// Another workload (`act_for`).
    Workload(WorkloadFacts),
    /// A person known by a trusted identity provider's token (`act_for_person`).
    Person {
        id: String,
        issuer: String,
        email: String,
    },
}

/// One runtime authorization request.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthzRequest {
    pub principal: WorkloadFacts,
    pub action: String,
    pub target: Target,
    /// The enforcement point's context, passed through (`context.request` tags).
    pub context: Map<String, Value>,
    pub task: Option<TaskFacts>,
    pub actor: Option<String>,
    pub scope: Option<String>,
    pub chain: Option<Vec<String>>,
    pub tool: Option<String>,
}

impl AuthzRequest {
    /// A plain request: `principal` does `action` on `Resource::"<resource>"`.
    pub fn new(principal: WorkloadFacts, action: &str, resource: &str) -> Self {
        Self {
            principal,
            action: action.to_string(),
            target: Target::Resource {
                id: resource.to_string(),
                kind: String::new(),
                properties: Map::new(),
            },
            context: Map::new(),
            task: None,
            actor: None,
            scope: None,
            chain: None,
            tool: None,
        }
    }
}

/// ("example.org", "/a/b") from "spiffe://example.org/a/b".
fn split_id(id: &str) -> (String, String) {
    let rest = id.strip_prefix("spiffe://").unwrap_or(id);
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), String::new()),
    }
}

fn workload_entity(w: &WorkloadFacts) -> Value {
    let (td, path) = split_id(&w.spiffe_id);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    json!({
        "uid": {"type": "Workload", "id": w.spiffe_id},
        "attrs": {
            "spiffe_id": w.spiffe_id,
            "trust_domain": td,
            "path": path,
            "segments": segments,
            "registered": w.registered,
            "owner": w.owner,
            "environment": w.environment,
            "selectors": w.selectors,
        },
        "parents": []
    })
}

/// Tag values are strings: JSON strings as they are, anything else as JSON text.
fn tags(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), Value::String(s))
        })
        .collect()
}

/// Action names a policy set names in its scopes (`action == Action::"x"`,
/// `action in [Action::"x", ...]`), built-ins excluded.
pub(crate) fn named_actions(set: &cedar_policy::PolicySet) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in set.policies() {
        let uids = match p.action_constraint() {
            cedar_policy::ActionConstraint::Any => Vec::new(),
            cedar_policy::ActionConstraint::Eq(u) => vec![u],
            cedar_policy::ActionConstraint::In(v) => v,
        };
        for u in uids {
            let name = u.id().unescaped().to_string();
            if u.type_name().to_string() == "Action" && !BUILTIN_ACTIONS.contains(&name.as_str()) {
                out.insert(name);
            }
        }
    }
    out
}

/// The schema text for a policy set that names `actions`.
pub(crate) fn schema_text(actions: &BTreeSet<String>) -> String {
    let mut s = PolicyKind::Authz.schema_text().to_string();
    for a in actions {
        s.push_str(&format!(
            "\naction {} appliesTo {{ principal: [Workload], resource: [Resource], context: Context }};",
            Value::String(a.clone())
        ));
    }
    s
}

impl CompiledPolicies {
    /// Decide one runtime authorization request. Deny by default; a forbid policy
    /// that fails to evaluate denies (fail closed).
    pub fn evaluate_authz(&self, req: &AuthzRequest) -> Result<Decision, PolicyError> {
        self.expect_kind(PolicyKind::Authz)?;
        if req.action.is_empty() {
            return Err(PolicyError::Request("the action name is empty".to_string()));
        }
        if !BUILTIN_ACTIONS.contains(&req.action.as_str())
            && !self.inner.actions.contains(&req.action)
        {
            return Ok(Decision {
                allowed: false,
                policy_ids: Vec::new(),
                reasons: Vec::new(),
                errors: vec![format!(
                    "no authz policy names the action {:?} (policies deny by default)",
                    req.action
                )],
            });
        }
        let principal = workload_entity(&req.principal);
        let (resource_uid, resource) = match &req.target {
            Target::Resource {
                id,
                kind,
                properties,
            } => (
                format!("Resource::{}", Value::String(id.clone())),
                json!({
                    "uid": {"type": "Resource", "id": id},
                    "attrs": {"id": id, "type": kind},
                    "parents": [],
                    "tags": tags(properties),
                }),
            ),
            Target::Workload(w) => (
                format!("Workload::{}", Value::String(w.spiffe_id.clone())),
                workload_entity(w),
            ),
            Target::Person { id, issuer, email } => (
                format!("Person::{}", Value::String(id.clone())),
                json!({
                    "uid": {"type": "Person", "id": id},
                    "attrs": {"id": id, "issuer": issuer, "email": email},
                    "parents": []
                }),
            ),
        };
        let request_id = "request";
        let request_entity = json!({
            "uid": {"type": "Request", "id": request_id},
            "attrs": {},
            "parents": [],
            "tags": tags(&req.context),
        });
        let mut context = Map::new();
        context.insert(
            "request".into(),
            json!({"__entity": {"type": "Request", "id": request_id}}),
        );
        if let Some(t) = &req.task {
            context.insert(
                "task".into(),
                json!({
                    "txn": t.txn,
                    "purpose": t.purpose,
                    "tools": t.tools,
                    "agent": t.agent,
                    "acting_for": t.acting_for,
                }),
            );
        }
        if let Some(a) = &req.actor {
            context.insert("actor".into(), Value::String(a.clone()));
        }
        if let Some(s) = &req.scope {
            context.insert("scope".into(), Value::String(s.clone()));
        }
        if let Some(c) = &req.chain {
            context.insert("chain".into(), json!(c));
        }
        if let Some(t) = &req.tool {
            context.insert("tool".into(), Value::String(t.clone()));
        }
        // The principal may be its own target (act_for itself): one entity per uid.
        let mut entities = vec![principal, request_entity];
        if !(matches!(&req.target, Target::Workload(w) if w.spiffe_id == req.principal.spiffe_id)) {
            entities.push(resource);
        }
        self.evaluate_with(
            &format!(
                "Workload::{}",
                Value::String(req.principal.spiffe_id.clone())
            ),
            &format!("Action::{}", Value::String(req.action.clone())),
            &resource_uid,
            Value::Object(context),
            Value::Array(entities),
        )
    }
}
