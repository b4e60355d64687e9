//! Lanyard's policy engine. A policy set is Cedar text, parsed and validated against
//! its kind's schema once when it is loaded (refused with line and column when
//! invalid), then evaluated as a pure function per request.
//!
//! Kinds: `registration` (who may create, change and delete which identity; how
//! long an exception may last) and `authz` (what a workload may do at request time,
//! who may act for whom in token exchange, which tools a task may call). Each policy names itself with `@id("...")` and
//! explains itself with `@reason("...")`; refusals quote both.

use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, EntityUid, PolicySet, Request,
    Schema, ValidationMode, Validator,
};

mod authz;
#[cfg(test)]
mod authz_tests;
#[cfg(test)]
mod authz_typed_tests;
mod registration;
#[cfg(test)]
mod tests;

pub use authz::{
    AuthzRequest, BUILTIN_ACTIONS, PreparedWorkload, RawBaseline, Target, TaskFacts, WorkloadFacts,
    bench_authz_policy,
};
pub use registration::{
    AdminOperation, AgentFacts, Caller, EntryFacts, ExceptionFacts, RegistrationAction,
    RegistrationRequest,
};

/// Which policy set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    Registration,
    Authz,
}

impl PolicyKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Registration => "registration",
            Self::Authz => "authz",
        }
    }

    /// The Cedar schema (human-readable format).
    pub fn schema_text(self) -> &'static str {
        match self {
            Self::Registration => include_str!("registration.cedarschema"),
            Self::Authz => include_str!("authz.cedarschema"),
        }
    }

    /// What a new install enforces.
    pub fn default_policy(self) -> &'static str {
        match self {
            Self::Registration => include_str!("registration_default.cedar"),
            Self::Authz => include_str!("authz_default.cedar"),
        }
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "registration" => Ok(Self::Registration),
            "authz" => Ok(Self::Authz),
            other => Err(PolicyError::UnknownKind(other.to_string())),
        }
    }
}

/// A problem at a place in the policy text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// 1-based; 0 when Cedar gave no location.
    pub line: usize,
    pub column: usize,
    pub policy_id: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Located {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "line {}, column {}: ", self.line, self.column)?;
        }
        if let Some(id) = &self.policy_id {
            write!(f, "policy {id:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

fn join(errors: &[Located]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Errors of this module.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown policy kind {0:?}; the kinds are: registration, authz")]
    UnknownKind(String),
    #[error("the policy does not parse: {}", join(.errors))]
    Parse { errors: Vec<Located> },
    #[error("the policy does not match the {kind} schema: {}", join(.errors))]
    Validation {
        kind: PolicyKind,
        errors: Vec<Located>,
    },
    #[error("two policies share @id({0:?}); every @id must be unique")]
    DuplicateId(String),
    #[error("the built-in {0} schema is invalid: {1}")]
    Schema(PolicyKind, String),
    #[error("cannot build the policy request: {0}")]
    Request(String),
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let upto = &text[..offset.min(text.len())];
    let line = upto.matches('\n').count() + 1;
    let col = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn locate(text: &str, d: &dyn miette::Diagnostic, policy_id: Option<String>) -> Located {
    let offset = d.labels().and_then(|mut l| l.next()).map(|l| l.offset());
    let (line, column) = offset.map_or((0, 0), |o| line_col(text, o));
    let mut message = d.to_string();
    if let Some(help) = d.help() {
        message.push_str(&format!(" ({help})"));
    }
    Located {
        line,
        column,
        policy_id,
        message,
    }
}

struct Inner {
    kind: PolicyKind,
    text: String,
    set: PolicySet,
    schema: Schema,
    /// Action names the policies declare (authz: user-defined actions).
    actions: std::collections::BTreeSet<String>,
    /// Cedar names of authz requests, built once (empty actions for registration).
    names: authz::AuthzNames,
    /// What a decision quotes of each policy, computed once.
    meta: std::collections::HashMap<cedar_policy::PolicyId, PolicyMeta>,
}

/// What a decision quotes of one policy.
struct PolicyMeta {
    /// Text order (Cedar's `policyN`), for sorting the policies that decided.
    order: usize,
    /// `@id`, or Cedar's own id.
    display: String,
    /// `@reason`, or "".
    reason: String,
    forbid: bool,
}

/// The text order of a Cedar policy id (`policy3` → 3).
fn policy_order(id: &cedar_policy::PolicyId) -> usize {
    id.to_string()
        .trim_start_matches("policy")
        .parse::<usize>()
        .unwrap_or(usize::MAX)
}

/// A parsed and validated policy set. Cheap to clone.
#[derive(Clone)]
pub struct CompiledPolicies {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CompiledPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicies")
            .field("kind", &self.inner.kind)
            .field("policies", &self.policy_ids())
            .finish()
    }
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `@id` of the policies that decided: the permits that allowed, or the
    /// forbids that denied (empty when nothing permitted).
    pub policy_ids: Vec<String>,
    /// `@reason` of those policies.
    pub reasons: Vec<String>,
    /// Policies that failed to evaluate (skipped by Cedar).
    pub errors: Vec<String>,
}

impl Decision {
    /// A sentence for the caller.
    pub fn explain(&self, kind: PolicyKind) -> String {
        if self.allowed {
            return format!(
                "allowed by {kind} policy {}",
                self.policy_ids
                    .iter()
                    .map(|p| format!("{p:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if self.policy_ids.is_empty() {
            let mut s = format!(
                "refused: no {kind} policy permits this request (policies deny by default)"
            );
            if !self.errors.is_empty() {
                s.push_str(&format!("; {}", self.errors.join("; ")));
            }
            return s;
        }
        let parts: Vec<String> = self
            .policy_ids
            .iter()
            .zip(
                self.reasons
                    .iter()
                    .map(String::as_str)
                    .chain(std::iter::repeat("")),
            )
            .map(|(id, reason)| {
                if reason.is_empty() {
                    format!("{id:?}")
                } else {
                    format!("{id:?}: {reason}")
                }
            })
            .collect();
        format!("refused by {kind} policy {}", parts.join("; "))
    }
}

impl CompiledPolicies {
    /// Parse `text` and validate it against the kind's schema (strict mode).
    pub fn compile(kind: PolicyKind, text: &str) -> Result<Self, PolicyError> {
        let set = PolicySet::from_str(text).map_err(|errs| PolicyError::Parse {
            errors: errs.iter().map(|e| locate(text, e, None)).collect(),
        })?;
        // Authz actions are the user's: declare every one the policies name.
        let (actions, schema_text) = match kind {
            PolicyKind::Registration => (Default::default(), kind.schema_text().to_string()),
            PolicyKind::Authz => {
                let actions = authz::named_actions(&set);
                let text = authz::schema_text(&actions);
                (actions, text)
            }
        };
        let (schema, _) = Schema::from_cedarschema_str(&schema_text)
            .map_err(|e| PolicyError::Schema(kind, e.to_string()))?;
        let mut seen = std::collections::HashSet::new();
        for p in set.policies() {
            if let Some(id) = p.annotation("id")
                && !seen.insert(id.to_string())
            {
                return Err(PolicyError::DuplicateId(id.to_string()));
            }
        }
        let names = match kind {
            PolicyKind::Registration => authz::AuthzNames::new(&Default::default()),
            PolicyKind::Authz => authz::AuthzNames::new(&actions),
        }
        .map_err(|e| PolicyError::Schema(kind, e))?;
        let meta = set
            .policies()
            .map(|p| {
                let meta = PolicyMeta {
                    order: policy_order(p.id()),
                    display: p
                        .annotation("id")
                        .map_or_else(|| p.id().to_string(), str::to_string),
                    reason: p.annotation("reason").unwrap_or("").to_string(),
                    forbid: p.effect() == cedar_policy::Effect::Forbid,
                };
                (p.id().clone(), meta)
            })
            .collect();
        let compiled = Self {
            inner: Arc::new(Inner {
                kind,
                text: text.to_string(),
                set,
                schema,
                actions,
                names,
                meta,
            }),
        };
        let result = Validator::new(compiled.inner.schema.clone())
            .validate(&compiled.inner.set, ValidationMode::Strict);
        let errors: Vec<Located> = result
            .validation_errors()
            .map(|e| {
                let id = compiled.display_id(e.policy_id());
                locate(text, e, Some(id))
            })
            .collect();
        if !errors.is_empty() {
            return Err(PolicyError::Validation { kind, errors });
        }
        Ok(compiled)
    }

    /// The shipped default of `kind`.
    pub fn default_for(kind: PolicyKind) -> Result<Self, PolicyError> {
        Self::compile(kind, kind.default_policy())
    }

    pub fn kind(&self) -> PolicyKind {
        self.inner.kind
    }

    pub fn text(&self) -> &str {
        &self.inner.text
    }

    /// Every policy's `@id` (or Cedar's own id when it has none), in text order.
    pub fn policy_ids(&self) -> Vec<String> {
        let mut v: Vec<(usize, String)> = self
            .inner
            .set
            .policies()
            .map(|p| {
                let order = p
                    .id()
                    .to_string()
                    .trim_start_matches("policy")
                    .parse()
                    .unwrap_or(usize::MAX);
                (order, self.display_id(p.id()))
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, id)| id).collect()
    }

    fn display_id(&self, id: &cedar_policy::PolicyId) -> String {
        self.inner
            .set
            .policy(id)
            .and_then(|p| p.annotation("id"))
            .map_or_else(|| id.to_string(), str::to_string)
    }

    fn reason_of(&self, id: &cedar_policy::PolicyId) -> String {
        self.inner
            .set
            .policy(id)
            .and_then(|p| p.annotation("reason"))
            .unwrap_or("")
            .to_string()
    }

    /// User-defined actions the policies name (authz).
    pub fn actions(&self) -> Vec<String> {
        self.inner.actions.iter().cloned().collect()
    }

    /// Evaluate one request given as Cedar entity JSON, with an empty context.
    fn evaluate(
        &self,
        principal: &str,
        action: &str,
        resource: &str,
        entities: serde_json::Value,
    ) -> Result<Decision, PolicyError> {
        self.evaluate_with(principal, action, resource, serde_json::json!({}), entities)
    }

    /// Evaluate one request given as Cedar JSON. A forbid policy that fails to
    /// evaluate denies (fail closed); a failing permit is skipped.
    fn evaluate_with(
        &self,
        principal: &str,
        action: &str,
        resource: &str,
        context: serde_json::Value,
        entities: serde_json::Value,
    ) -> Result<Decision, PolicyError> {
        let (request, entities) = self.json_parts(
            principal,
            action,
            resource,
            context,
            entities,
            self.check_schema(),
        )?;
        Ok(self.decide(&request, &entities))
    }

    /// The schema requests and entities are checked against: none in release
    /// builds. Requests and entities are built by this crate from typed facts, so
    /// their conformance to the schema holds by construction; checking it costs
    /// more than the evaluation itself. Debug builds (the tests) still check it.
    fn check_schema(&self) -> Option<&Schema> {
        cfg!(debug_assertions).then_some(&self.inner.schema)
    }

    /// A Cedar request and its entities from their JSON form, checked against
    /// `check` when given.
    fn json_parts(
        &self,
        principal: &str,
        action: &str,
        resource: &str,
        context: serde_json::Value,
        entities: serde_json::Value,
        check: Option<&Schema>,
    ) -> Result<(Request, Entities), PolicyError> {
        let uid =
            |s: &str| EntityUid::from_str(s).map_err(|e| PolicyError::Request(format!("{s}: {e}")));
        let (p, a, r) = (uid(principal)?, uid(action)?, uid(resource)?);
        let context = Context::from_json_value(context, check.map(|s| (s, &a)))
            .map_err(|e| PolicyError::Request(e.to_string()))?;
        let request = Request::new(p, a, r, context, check)
            .map_err(|e| PolicyError::Request(e.to_string()))?;
        let entities = Entities::from_json_value(entities, check)
            .map_err(|e| PolicyError::Request(e.to_string()))?;
        Ok((request, entities))
    }

    /// Run Cedar on a built request and turn its answer into a [`Decision`]. A
    /// forbid policy that fails to evaluate denies (fail closed); a failing permit
    /// is skipped.
    fn decide(&self, request: &Request, entities: &Entities) -> Decision {
        let response = Authorizer::new().is_authorized(request, &self.inner.set, entities);
        let meta = |id: &cedar_policy::PolicyId| self.inner.meta.get(id);
        let display = |id: &cedar_policy::PolicyId| {
            meta(id).map_or_else(|| self.display_id(id), |m| m.display.clone())
        };
        let reason = |id: &cedar_policy::PolicyId| {
            meta(id).map_or_else(|| self.reason_of(id), |m| m.reason.clone())
        };
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(ToString::to_string)
            .collect();
        let failed_forbids: Vec<&cedar_policy::PolicyId> = response
            .diagnostics()
            .errors()
            .map(|e| match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(e) => e.policy_id(),
            })
            .filter(|id| match meta(id) {
                Some(m) => m.forbid,
                None => self
                    .inner
                    .set
                    .policy(id)
                    .is_some_and(|p| p.effect() == cedar_policy::Effect::Forbid),
            })
            .collect();
        if !failed_forbids.is_empty() {
            return Decision {
                allowed: false,
                policy_ids: failed_forbids.iter().map(|id| display(id)).collect(),
                reasons: failed_forbids
                    .iter()
                    .map(|id| {
                        format!(
                            "{} (this forbid policy failed to evaluate, so it denies)",
                            reason(id)
                        )
                    })
                    .collect(),
                errors,
            };
        }
        let mut ids: Vec<&cedar_policy::PolicyId> = response.diagnostics().reason().collect();
        ids.sort_by_key(|id| meta(id).map_or_else(|| policy_order(id), |m| m.order));
        Decision {
            allowed: response.decision() == CedarDecision::Allow,
            policy_ids: ids.iter().map(|id| display(id)).collect(),
            reasons: ids.iter().map(|id| reason(id)).collect(),
            errors,
        }
    }
}
