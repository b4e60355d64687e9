//! Runtime authorization requests as Cedar entities: `Workload`, `Action`,
//! `Resource`, and the request context passed through as tags.
//!
//! Requests, contexts and entities are built with Cedar's typed API (no JSON on
//! the decision path), and a workload's entity can be built once and reused
//! ([`PreparedWorkload`]).

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    RestrictedExpression, Schema,
};
use serde_json::{Map, Value};

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

/// Cedar names every authz request uses, parsed once per policy set.
pub(crate) struct AuthzNames {
    workload: EntityTypeName,
    resource: EntityTypeName,
    person: EntityTypeName,
    request: EntityUid,
    /// The `Request` entity of a request without context (no tags).
    empty_request: Entity,
    /// The context of a request with none of the optional attributes:
    /// `{request: Request::"request"}`.
    base_context: Context,
    /// Every action a request may name: the built-ins and the policies' own.
    actions: HashMap<String, EntityUid>,
}

fn type_name(name: &str) -> Result<EntityTypeName, String> {
    EntityTypeName::from_str(name).map_err(|e| format!("entity type {name}: {e}"))
}

impl AuthzNames {
    pub(crate) fn new(actions: &BTreeSet<String>) -> Result<Self, String> {
        let action = type_name("Action")?;
        let request =
            EntityUid::from_type_name_and_id(type_name("Request")?, EntityId::new(REQUEST_ID));
        let empty_request = Entity::new_no_attrs(request.clone(), Default::default());
        let base_context = Context::from_pairs([attr(
            "request",
            RestrictedExpression::new_entity_uid(request.clone()),
        )])
        .map_err(|e| e.to_string())?;
        Ok(Self {
            empty_request,
            base_context,
            workload: type_name("Workload")?,
            resource: type_name("Resource")?,
            person: type_name("Person")?,
            request,
            actions: BUILTIN_ACTIONS
                .iter()
                .copied()
                .chain(actions.iter().map(String::as_str))
                .map(|a| {
                    (
                        a.to_string(),
                        EntityUid::from_type_name_and_id(action.clone(), EntityId::new(a)),
                    )
                })
                .collect(),
        })
    }
}

/// The id of the one `Request` entity of a request.
const REQUEST_ID: &str = "request";

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_string())
}

fn strings<'a>(v: impl IntoIterator<Item = &'a str>) -> RestrictedExpression {
    RestrictedExpression::new_set(v.into_iter().map(string))
}

fn attr(name: &str, value: RestrictedExpression) -> (String, RestrictedExpression) {
    (name.to_string(), value)
}

fn entity(
    uid: EntityUid,
    attrs: impl IntoIterator<Item = (String, RestrictedExpression)>,
    tags: impl IntoIterator<Item = (String, RestrictedExpression)>,
) -> Result<Entity, PolicyError> {
    Entity::new_with_tags(uid, attrs, [], tags).map_err(|e| PolicyError::Request(e.to_string()))
}

/// `Workload::"<spiffe id>"` and its entity.
fn workload_entity(
    ty: &EntityTypeName,
    w: &WorkloadFacts,
) -> Result<(EntityUid, Entity), PolicyError> {
    let (td, path) = split_id(&w.spiffe_id);
    let uid = EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(&w.spiffe_id));
    let attrs = [
        attr("spiffe_id", string(&w.spiffe_id)),
        attr("trust_domain", RestrictedExpression::new_string(td)),
        attr(
            "segments",
            strings(path.split('/').filter(|s| !s.is_empty())),
        ),
        attr("path", RestrictedExpression::new_string(path)),
        attr("registered", RestrictedExpression::new_bool(w.registered)),
        attr("owner", string(&w.owner)),
        attr("environment", string(&w.environment)),
        attr("selectors", strings(w.selectors.iter().map(String::as_str))),
    ];
    let e = entity(uid.clone(), attrs, [])?;
    Ok((uid, e))
}

/// Tag values are strings: JSON strings as they are, anything else as JSON text.
fn typed_tags(m: &Map<String, Value>) -> impl Iterator<Item = (String, RestrictedExpression)> {
    m.iter().map(|(k, v)| {
        let s = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        (k.clone(), RestrictedExpression::new_string(s))
    })
}

/// Before the typed API, entities were named as Cedar text
/// (`Type::"<JSON-escaped id>"`), which Cedar reads only in its normal form (ids
/// escaped as Rust's `escape_debug` does): ids with a single quote, a control
/// character other than tab, newline and carriage return, or a character Rust
/// escapes (unprintable or a leading combining mark) were refused. Refuse the same
/// ids with the same error; an id `escape_debug` leaves alone (JSON does too) was
/// always read back as itself.
fn check_uid_text(ty: &str, id: &str) -> Result<(), PolicyError> {
    // Printable ASCII but quotes and backslash: what `escape_debug` leaves alone,
    // checked faster.
    let plain = |b: u8| (b' '..=b'~').contains(&b) && !matches!(b, b'\'' | b'"' | b'\\');
    if id.bytes().all(plain) || id.escape_debug().eq(id.chars()) {
        return Ok(());
    }
    let s = format!("{ty}::{}", Value::String(id.to_string()));
    EntityUid::from_str(&s)
        .map(|_| ())
        .map_err(|e| PolicyError::Request(format!("{s}: {e}")))
}

/// A workload's Cedar entity, built once from its facts and reused for every
/// request it makes ([`CompiledPolicies::evaluate_authz_prepared`]): the entity
/// depends only on the facts, so a caller keeps one per registration entry
/// revision. Independent of the policy set (valid across policy reloads). Cheap to
/// clone (shared).
#[derive(Debug, Clone)]
pub struct PreparedWorkload {
    inner: std::sync::Arc<PreparedInner>,
}

#[derive(Debug)]
struct PreparedInner {
    facts: WorkloadFacts,
    uid: EntityUid,
    entity: Entity,
    /// A store holding only the entity, that requests add theirs to.
    entities: Entities,
}

impl PreparedWorkload {
    /// Build the Cedar entity of `facts`.
    pub fn new(facts: WorkloadFacts) -> Result<Self, PolicyError> {
        let ty = type_name("Workload").map_err(PolicyError::Request)?;
        let (uid, entity) = workload_entity(&ty, &facts)?;
        let entities = Entities::from_entities([entity.clone()], None)
            .map_err(|e| PolicyError::Request(e.to_string()))?;
        Ok(Self {
            inner: std::sync::Arc::new(PreparedInner {
                facts,
                uid,
                entity,
                entities,
            }),
        })
    }

    /// The facts the entity was built from.
    pub fn facts(&self) -> &WorkloadFacts {
        &self.inner.facts
    }

    pub fn spiffe_id(&self) -> &str {
        &self.inner.facts.spiffe_id
    }
}

/// For benchmarks (`lanyard bench authz`, `cargo bench -p lanyard-policy --bench
/// authz`): a ten-policy authz set — the shipped two forbids and eight permits,
/// one of them letting `workload` exchange tokens — as a realistic mid-size set.
pub fn bench_authz_policy(workload: &str) -> String {
    let mut text = PolicyKind::Authz.default_policy().to_string();
    for (i, (action, rtype)) in [
        ("read", "orders"),
        ("write", "orders"),
        ("read", "payments"),
        ("read", "inventory"),
        ("write", "inventory"),
        ("delete", "orders"),
        ("read", "reports"),
    ]
    .iter()
    .enumerate()
    {
        text.push_str(&format!(
            "\n@id(\"rule-{i}\")\npermit (principal, action == Action::\"{action}\", resource)\nwhen {{ principal.owner == \"dev\" && resource.type == \"{rtype}\" && context.request.hasTag(\"ip\") && context.request.getTag(\"ip\") like \"10.*\" }};\n"
        ));
    }
    text.push_str(&format!(
        "\n@id(\"bench-exchange\")\npermit (principal == Workload::\"{workload}\", action == Action::\"token_exchange\", resource);\n"
    ));
    text
}

/// For benchmarks only: Cedar's own `Authorizer::is_authorized` on a request and
/// entities built once, against a compiled set — the floor an in-process decision
/// is compared with. From [`CompiledPolicies::raw_baseline`].
pub struct RawBaseline {
    policies: CompiledPolicies,
    request: cedar_policy::Request,
    entities: Entities,
    authorizer: Authorizer,
}

impl std::fmt::Debug for RawBaseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawBaseline")
            .field("request", &self.request.to_string())
            .finish_non_exhaustive()
    }
}

impl RawBaseline {
    /// One raw Cedar evaluation: whether Cedar allows.
    pub fn is_authorized(&self) -> bool {
        self.authorizer
            .is_authorized(&self.request, &self.policies.inner.set, &self.entities)
            .decision()
            == cedar_policy::Decision::Allow
    }
}

/// The outcome of looking the action up: its uid, or the decision refusing it.
pub(crate) enum Action<'a> {
    Known(&'a EntityUid),
    Refused(Decision),
}

impl CompiledPolicies {
    /// Decide one runtime authorization request. Deny by default; a forbid policy
    /// that fails to evaluate denies (fail closed).
    pub fn evaluate_authz(&self, req: &AuthzRequest) -> Result<Decision, PolicyError> {
        self.evaluate_authz_inner(None, req)
    }

    /// [`Self::evaluate_authz`] with the principal's entity built beforehand:
    /// `principal` stands for `req.principal`, which is not read beyond its
    /// SPIFFE ID; leave it empty (`WorkloadFacts::default()`) or give the same
    /// SPIFFE ID (a different one is refused). Same decisions as
    /// `evaluate_authz` with `req.principal = principal.facts().clone()`.
    pub fn evaluate_authz_prepared(
        &self,
        principal: &PreparedWorkload,
        req: &AuthzRequest,
    ) -> Result<Decision, PolicyError> {
        self.expect_kind(PolicyKind::Authz)?;
        if !req.principal.spiffe_id.is_empty() && req.principal.spiffe_id != principal.spiffe_id() {
            return Err(PolicyError::Request(format!(
                "the request's principal {:?} is not the prepared workload {:?}",
                req.principal.spiffe_id,
                principal.spiffe_id()
            )));
        }
        self.evaluate_authz_inner(Some(principal), req)
    }

    /// For benchmarks: the Cedar request and entities `evaluate_authz` builds for
    /// `req`, built once, to time Cedar's `is_authorized` alone against this set
    /// (the floor of an in-process decision). An unknown action is refused.
    pub fn raw_baseline(&self, req: &AuthzRequest) -> Result<RawBaseline, PolicyError> {
        self.expect_kind(PolicyKind::Authz)?;
        let action = match self.authz_action(&req.action)? {
            Action::Known(a) => a,
            Action::Refused(d) => return Err(PolicyError::Request(d.errors.join("; "))),
        };
        let (request, entities) = self.authz_parts(None, action, req, self.check_schema())?;
        Ok(RawBaseline {
            policies: self.clone(),
            request,
            entities,
            authorizer: Authorizer::new(),
        })
    }

    fn evaluate_authz_inner(
        &self,
        prepared: Option<&PreparedWorkload>,
        req: &AuthzRequest,
    ) -> Result<Decision, PolicyError> {
        self.expect_kind(PolicyKind::Authz)?;
        let action = match self.authz_action(&req.action)? {
            Action::Known(a) => a,
            Action::Refused(d) => return Ok(d),
        };
        let (request, entities) = self.authz_parts(prepared, action, req, self.check_schema())?;
        Ok(self.decide(&request, &entities))
    }

    /// The action's uid; an action no policy names is denied.
    pub(crate) fn authz_action(&self, action: &str) -> Result<Action<'_>, PolicyError> {
        if action.is_empty() {
            return Err(PolicyError::Request("the action name is empty".to_string()));
        }
        match self.inner.names.actions.get(action) {
            Some(uid) => Ok(Action::Known(uid)),
            None => Ok(Action::Refused(Decision {
                allowed: false,
                policy_ids: Vec::new(),
                reasons: Vec::new(),
                errors: vec![format!(
                    "no authz policy names the action {action:?} (policies deny by default)"
                )],
            })),
        }
    }

    /// The Cedar request and entities of `req` (its principal from `prepared` when
    /// given), with Cedar's typed API.
    pub(crate) fn authz_parts(
        &self,
        prepared: Option<&PreparedWorkload>,
        action: &EntityUid,
        req: &AuthzRequest,
        check: Option<&Schema>,
    ) -> Result<(cedar_policy::Request, Entities), PolicyError> {
        let names = &self.inner.names;
        let principal_id = prepared.map_or(req.principal.spiffe_id.as_str(), |p| p.spiffe_id());
        check_uid_text("Workload", principal_id)?;
        check_uid_text("Action", &req.action)?;
        match &req.target {
            Target::Resource { id, .. } => check_uid_text("Resource", id)?,
            Target::Workload(w) => check_uid_text("Workload", &w.spiffe_id)?,
            Target::Person { id, .. } => check_uid_text("Person", id)?,
        }
        let (principal_uid, built) = match prepared {
            Some(p) => (p.inner.uid.clone(), None),
            None => {
                let (uid, e) = workload_entity(&names.workload, &req.principal)?;
                (uid, Some(e))
            }
        };
        let (resource_uid, resource) = match &req.target {
            Target::Resource {
                id,
                kind,
                properties,
            } => {
                let uid =
                    EntityUid::from_type_name_and_id(names.resource.clone(), EntityId::new(id));
                let e = entity(
                    uid.clone(),
                    [attr("id", string(id)), attr("type", string(kind))],
                    typed_tags(properties),
                )?;
                (uid, Some(e))
            }
            // The principal may be its own target (act_for itself): one entity per uid.
            Target::Workload(w) if w.spiffe_id == principal_id => (principal_uid.clone(), None),
            Target::Workload(w) => {
                let (uid, e) = workload_entity(&names.workload, w)?;
                (uid, Some(e))
            }
            Target::Person { id, issuer, email } => {
                let uid = EntityUid::from_type_name_and_id(names.person.clone(), EntityId::new(id));
                let e = entity(
                    uid.clone(),
                    [
                        attr("id", string(id)),
                        attr("issuer", string(issuer)),
                        attr("email", string(email)),
                    ],
                    [],
                )?;
                (uid, Some(e))
            }
        };
        let request_entity = if req.context.is_empty() {
            names.empty_request.clone()
        } else {
            entity(names.request.clone(), [], typed_tags(&req.context))?
        };
        let context = if req.task.is_none()
            && req.actor.is_none()
            && req.scope.is_none()
            && req.chain.is_none()
            && req.tool.is_none()
        {
            names.base_context.clone()
        } else {
            let mut context = Vec::with_capacity(6);
            context.push(attr(
                "request",
                RestrictedExpression::new_entity_uid(names.request.clone()),
            ));
            if let Some(t) = &req.task {
                let task = RestrictedExpression::new_record([
                    attr("txn", string(&t.txn)),
                    attr("purpose", string(&t.purpose)),
                    attr("tools", strings(t.tools.iter().map(String::as_str))),
                    attr("agent", string(&t.agent)),
                    attr("acting_for", string(&t.acting_for)),
                ])
                .map_err(|e| PolicyError::Request(e.to_string()))?;
                context.push(attr("task", task));
            }
            if let Some(a) = &req.actor {
                context.push(attr("actor", string(a)));
            }
            if let Some(s) = &req.scope {
                context.push(attr("scope", string(s)));
            }
            if let Some(c) = &req.chain {
                context.push(attr("chain", strings(c.iter().map(String::as_str))));
            }
            if let Some(t) = &req.tool {
                context.push(attr("tool", string(t)));
            }
            Context::from_pairs(context).map_err(|e| PolicyError::Request(e.to_string()))?
        };
        let request =
            cedar_policy::Request::new(principal_uid, action.clone(), resource_uid, context, check)
                .map_err(|e| PolicyError::Request(e.to_string()))?;
        let others = std::iter::once(request_entity).chain(resource);
        // Adding to a store is cheaper than building one (Cedar then repairs the
        // transitive closure instead of computing it), and a prepared workload's
        // store already holds it. Checked against the schema, the store is built
        // whole, as schema checking of a store and adding the schema's actions
        // go together.
        let entities = match (check, prepared, built) {
            (None, Some(p), _) => p.inner.entities.clone().add_entities(others, None),
            (None, None, Some(e)) => {
                Entities::empty().add_entities(std::iter::once(e).chain(others), None)
            }
            (check, p, e) => Entities::from_entities(
                e.or_else(|| p.map(|p| p.inner.entity.clone()))
                    .into_iter()
                    .chain(others),
                check,
            ),
        }
        .map_err(|e| PolicyError::Request(e.to_string()))?;
        Ok((request, entities))
    }
}

/// The request as Cedar JSON, as this crate built it before the typed API: the
/// oracle the typed construction is tested against.
#[cfg(test)]
pub(crate) mod json_oracle {
    use serde_json::{Map, Value, json};

    use super::{AuthzRequest, BUILTIN_ACTIONS, Target, WorkloadFacts, split_id};
    use crate::{CompiledPolicies, Decision, PolicyError, PolicyKind};

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

    /// The old JSON construction: a refusing decision, or the Cedar request and
    /// entities.
    #[allow(clippy::type_complexity)]
    pub(crate) fn parts(
        p: &CompiledPolicies,
        req: &AuthzRequest,
        check: Option<&cedar_policy::Schema>,
    ) -> Result<Result<(cedar_policy::Request, cedar_policy::Entities), Decision>, PolicyError>
    {
        p.expect_kind(PolicyKind::Authz)?;
        if req.action.is_empty() {
            return Err(PolicyError::Request("the action name is empty".to_string()));
        }
        if !BUILTIN_ACTIONS.contains(&req.action.as_str()) && !p.inner.actions.contains(&req.action)
        {
            return Ok(Err(Decision {
                allowed: false,
                policy_ids: Vec::new(),
                reasons: Vec::new(),
                errors: vec![format!(
                    "no authz policy names the action {:?} (policies deny by default)",
                    req.action
                )],
            }));
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
        let mut entities = vec![principal, request_entity];
        if !(matches!(&req.target, Target::Workload(w) if w.spiffe_id == req.principal.spiffe_id)) {
            entities.push(resource);
        }
        p.json_parts(
            &format!(
                "Workload::{}",
                Value::String(req.principal.spiffe_id.clone())
            ),
            &format!("Action::{}", Value::String(req.action.clone())),
            &resource_uid,
            Value::Object(context),
            Value::Array(entities),
            check,
        )
        .map(Ok)
    }

    /// The old `evaluate_authz`.
    pub(crate) fn evaluate(
        p: &CompiledPolicies,
        req: &AuthzRequest,
    ) -> Result<Decision, PolicyError> {
        match parts(p, req, p.check_schema())? {
            Ok((request, entities)) => Ok(p.decide(&request, &entities)),
            Err(d) => Ok(d),
        }
    }
}
