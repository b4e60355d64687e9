//! The transport-free core of one runtime authorization decision: the question and
//! its answer, caller authentication by JWT-SVID, one evaluation over the facts a
//! decision point has ([`Sources`]), and the evidence-log event that records it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, RwLock};

use lanyard_audit::evidence::AuthzDecision;
use lanyard_audit::{Event, Outcome};
use lanyard_core::{BundleSet, Clock, JwtSvid, SpiffeId};
use lanyard_policy::{
    AuthzRequest, CompiledPolicies, PolicyKind, PreparedWorkload, Target, TaskFacts, WorkloadFacts,
};
use serde_json::{Map, Value};

use crate::token::TokenError;

/// Verified caller tokens kept (by value) to skip the signature check.
const MAX_CACHED_CALLERS: usize = 10_000;

/// One runtime authorization question (AuthZEN or ext_authz).
#[derive(Debug, Clone, Default)]
pub struct Question {
    pub subject: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub resource_properties: Map<String, Value>,
    pub context: Map<String, Value>,
}

impl Question {
    /// A question without resource properties or context.
    pub fn new(subject: &str, action: &str, resource_type: &str, resource_id: &str) -> Self {
        Self {
            subject: subject.to_string(),
            action: action.to_string(),
            resource_type: resource_type.to_string(),
            resource_id: resource_id.to_string(),
            ..Self::default()
        }
    }
}

/// The outcome of one runtime decision.
#[derive(Debug, Clone, Default)]
pub struct DecisionOut {
    pub allowed: bool,
    pub policy_ids: Vec<String>,
    pub reason: String,
    /// The id the caller gets back; on the server also the id of its audit event.
    pub decision_id: String,
}

/// One decision with what the evidence log records of it.
#[derive(Debug, Clone, Default)]
pub struct DecisionRecord {
    pub out: DecisionOut,
    pub subject: String,
    /// The subject's owner ("" when unregistered).
    pub owner: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    /// The task's txn, else the caller's `context.trace_id`.
    pub trace_id: Option<String>,
    /// The verified task token presented with the question.
    pub task: Option<TaskFacts>,
}

/// Why a caller was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// Its token is missing or not accepted (HTTP 401).
    #[error("{0}")]
    Unauthenticated(String),
    /// What authentication needs (the deny-list) cannot be read: fail closed
    /// (HTTP 503, gRPC `Unavailable`).
    #[error("{0}")]
    Unavailable(String),
}

/// Why a question got no decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// The question is malformed: the caller's fault (HTTP 400).
    #[error("{0}")]
    Malformed(String),
    /// What the decision needs cannot be read: fail closed (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
}

/// Why a task token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// It does not verify, expired or was revoked: the decision is a deny.
    #[error("{0}")]
    Rejected(#[from] TokenError),
    /// The deny-list cannot be read: no decision.
    #[error("{0}")]
    Unavailable(String),
}

/// Facts a decision needs cannot be read (the datastore is unreachable, the agent
/// has not been synced yet): nothing is decided (fail closed). The text says what
/// and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

impl From<Unavailable> for DecideError {
    fn from(e: Unavailable) -> Self {
        DecideError::Unavailable(e.0)
    }
}

impl From<Unavailable> for AuthnError {
    fn from(e: Unavailable) -> Self {
        AuthnError::Unavailable(e.0)
    }
}

/// What a decision point decides with. `Err` from `workload` and `policy`: the
/// facts cannot be read, so nothing is decided (fail closed).
pub trait Sources: Sync {
    /// Registration facts of `id` ([`WorkloadFacts::unregistered`] when unknown),
    /// with its Cedar entity built (once per entry revision: see [`WorkloadIndex`]).
    fn workload(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<PreparedWorkload, DecideError>> + Send;
    /// The authz policy set in force.
    fn policy(&self) -> impl Future<Output = Result<CompiledPolicies, Unavailable>> + Send;
    /// Verify a task token (`context.task_token`), deny-list included.
    fn verify_task(&self, token: &str)
    -> impl Future<Output = Result<TaskFacts, TaskError>> + Send;
}

/// A new random id (decision ids, txn, jti): 32 hex digits.
pub fn random_id() -> String {
    let mut raw = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut raw);
    hex::encode(raw)
}

/// Decide one question. `Err` is a malformed question (the caller's fault) or facts
/// that cannot be read (no decision: fail closed). A task token that does not verify
/// denies without evaluating policy.
pub async fn decide<S: Sources>(src: &S, q: Question) -> Result<DecisionRecord, DecideError> {
    let subject = SpiffeId::new(&q.subject).map_err(|e| {
        DecideError::Malformed(format!(
            "subject.id {:?} is not a SPIFFE ID ({e}); the subject is the workload, e.g. spiffe://example.org/web",
            q.subject
        ))
    })?;
    if q.action.is_empty() {
        return Err(DecideError::Malformed("action.name is missing".to_string()));
    }
    if q.resource_id.is_empty() {
        return Err(DecideError::Malformed("resource.id is missing".to_string()));
    }
    let mut context = q.context;
    let task_token = context.remove("task_token");
    let principal = src.workload(&subject.to_string()).await?;
    let mut rec = DecisionRecord {
        out: DecisionOut {
            decision_id: random_id(),
            ..DecisionOut::default()
        },
        subject: subject.to_string(),
        owner: principal.facts().owner.clone(),
        action: q.action.clone(),
        resource_type: q.resource_type.clone(),
        resource_id: q.resource_id.clone(),
        trace_id: context
            .get("trace_id")
            .and_then(Value::as_str)
            .map(str::to_string),
        task: None,
    };
    match task_token {
        None => {}
        Some(Value::String(t)) => match src.verify_task(&t).await {
            Ok(task) => {
                rec.trace_id = Some(task.txn.clone());
                rec.task = Some(task);
            }
            Err(TaskError::Rejected(e)) => {
                rec.out.reason = format!("the task token is not accepted: {e}");
                return Ok(rec);
            }
            Err(TaskError::Unavailable(e)) => return Err(DecideError::Unavailable(e)),
        },
        Some(_) => {
            return Err(DecideError::Malformed(
                "context.task_token must be a string (a task token)".to_string(),
            ));
        }
    }
    let policy = src
        .policy()
        .await
        .map_err(|e| DecideError::Unavailable(format!("authz policy: {}", e.0)))?;
    let req = AuthzRequest {
        // The principal is the prepared entity; the request names nobody else.
        principal: WorkloadFacts::default(),
        action: q.action,
        target: Target::Resource {
            id: q.resource_id,
            kind: q.resource_type,
            properties: q.resource_properties,
        },
        context,
        task: rec.task.clone(),
        actor: None,
        scope: None,
        chain: None,
        tool: None,
    };
    let d = policy
        .evaluate_authz_prepared(&principal, &req)
        .map_err(|e| DecideError::Malformed(e.to_string()))?;
    rec.out.reason = d.explain(PolicyKind::Authz);
    rec.out.allowed = d.allowed;
    rec.out.policy_ids = d.policy_ids;
    Ok(rec)
}

/// How a decision is recorded: allowed is a success, anything else a denial.
pub fn decision_outcome(d: &DecisionOut) -> Outcome {
    if d.allowed {
        Outcome::Success
    } else {
        Outcome::Denied
    }
}

/// Fill `ev` (an [`lanyard_audit::EventKind::AuthzDecision`] event with its id,
/// time and server) with a decision made for `caller` (the enforcement point) and
/// received `via` an API ("authzen", "ext_authz", "agent").
pub fn decision_event(mut ev: Event, caller: &str, via: &str, rec: &DecisionRecord) -> Event {
    let d = &rec.out;
    ev.outcome = decision_outcome(d);
    ev.actor = Some(caller.to_string());
    ev.subject = Some(rec.subject.clone());
    if !rec.owner.is_empty() {
        ev.owner = Some(rec.owner.clone());
    }
    ev.set_evidence(decision_evidence(via, rec));
    ev.trace_id = rec.trace_id.clone();
    ev.policy_ids = d.policy_ids.clone();
    ev.decision = Some(if d.allowed { "allow" } else { "deny" }.to_string());
    ev.reason = Some(d.reason.clone());
    ev
}

/// The evidence of a decision received `via` an API ("authzen", "ext_authz",
/// "agent"): the question and, when one was presented, the task token. A decision
/// an agent reported adds [`AuthzDecision::reported`].
pub fn decision_evidence(via: &str, rec: &DecisionRecord) -> AuthzDecision {
    let e = AuthzDecision::new(
        via,
        rec.action.clone(),
        rec.resource_type.clone(),
        rec.resource_id.clone(),
    );
    match &rec.task {
        Some(t) => e.task(t.txn.clone(), t.agent.clone(), &t.acting_for),
        None => e,
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    authorization
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Validate a JWT-SVID addressed to one of `audiences` and not on the deny-list.
pub fn validate_svid(
    token: &str,
    audiences: &[String],
    bundles: &RwLock<BundleSet>,
    clock: &dyn Clock,
    revoked: &dyn Fn(&str) -> bool,
) -> Result<JwtSvid, TokenError> {
    let refs: Vec<&str> = audiences.iter().map(String::as_str).collect();
    let svid = {
        let set = bundles.read().map_err(|_| TokenError::BundlesUnavailable)?;
        JwtSvid::validate(token, &refs, &set, clock)?
    };
    if let Some(jti) = svid.claims().get("jti").and_then(Value::as_str)
        && revoked(jti)
    {
        return Err(TokenError::SvidRevoked(jti.to_string()));
    }
    Ok(svid)
}

/// A caller authenticated by its JWT-SVID.
#[derive(Debug, Clone)]
struct CachedCaller {
    id: String,
    exp: i64,
    jti: String,
}

/// Enforcement points authenticated by their bearer JWT-SVIDs, with verified tokens
/// cached (by value, until they expire; the deny-list is checked on every use).
#[derive(Debug, Default)]
pub struct Callers {
    cache: Mutex<HashMap<String, CachedCaller>>,
}

impl Callers {
    /// The caller's SPIFFE ID. `audiences[0]` is named in the error when no token
    /// was sent.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        audiences: &[String],
        bundles: &RwLock<BundleSet>,
        clock: &dyn Clock,
        revoked: &dyn Fn(&str) -> bool,
    ) -> Result<String, AuthnError> {
        let token = bearer(authorization).ok_or_else(|| {
            AuthnError::Unauthenticated(format!(
                "send a JWT-SVID with audience {:?} as `Authorization: Bearer <token>`",
                audiences.first().map(String::as_str).unwrap_or_default()
            ))
        })?;
        let now = clock.unix_seconds();
        let cached = self.cache.lock().ok().and_then(|c| c.get(token).cloned());
        if let Some(c) = cached
            && now < c.exp
        {
            if !c.jti.is_empty() && revoked(&c.jti) {
                return Err(AuthnError::Unauthenticated(format!(
                    "the JWT-SVID {} was revoked",
                    c.jti
                )));
            }
            return Ok(c.id);
        }
        let svid = validate_svid(token, audiences, bundles, clock, revoked).map_err(|e| {
            AuthnError::Unauthenticated(format!("the bearer JWT-SVID is not accepted: {e}"))
        })?;
        let id = svid.spiffe_id().to_string();
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= MAX_CACHED_CALLERS {
                c.retain(|_, v| now < v.exp);
                if c.len() >= MAX_CACHED_CALLERS {
                    c.clear();
                }
            }
            c.insert(
                token.to_string(),
                CachedCaller {
                    id: id.clone(),
                    exp: svid.expiry(),
                    jti: svid
                        .claims()
                        .get("jti")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                },
            );
        }
        Ok(id)
    }
}

/// Facts of `id` from an index ([`WorkloadFacts::unregistered`] when it has none).
pub fn facts_of(index: &HashMap<String, WorkloadFacts>, id: &str) -> WorkloadFacts {
    index
        .get(id)
        .cloned()
        .unwrap_or_else(|| WorkloadFacts::unregistered(id))
}

/// Registration facts by SPIFFE ID, each workload's Cedar entity built once when
/// the index is built (that is, once per change of the entries), not per decision.
#[derive(Debug, Clone, Default)]
pub struct WorkloadIndex {
    by_id: HashMap<String, PreparedWorkload>,
}

impl WorkloadIndex {
    /// Prepare every workload of `facts` (from [`index_entry`]). `Err`: a workload's
    /// entity cannot be built, and the index is not used (fail closed).
    pub fn build(
        facts: HashMap<String, WorkloadFacts>,
    ) -> Result<Self, lanyard_policy::PolicyError> {
        let by_id = facts
            .into_iter()
            .map(|(id, f)| Ok((id, PreparedWorkload::new(f)?)))
            .collect::<Result<_, lanyard_policy::PolicyError>>()?;
        Ok(Self { by_id })
    }

    /// The prepared workload `id`; an unknown ID is prepared as unregistered.
    pub fn get(&self, id: &str) -> Result<PreparedWorkload, DecideError> {
        match self.by_id.get(id) {
            Some(p) => Ok(p.clone()),
            None => PreparedWorkload::new(WorkloadFacts::unregistered(id))
                .map_err(|e| DecideError::Malformed(format!("workload {id:?}: {e}"))),
        }
    }

    /// The registration facts of `id` ([`WorkloadFacts::unregistered`] when unknown).
    pub fn facts(&self, id: &str) -> WorkloadFacts {
        self.by_id
            .get(id)
            .map_or_else(|| WorkloadFacts::unregistered(id), |p| p.facts().clone())
    }

    /// How many workloads are indexed.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Add one registration entry to an index of workload facts by SPIFFE ID. Several
/// entries may name one ID: the first owner and environment win, selectors add up.
pub fn index_entry(
    index: &mut HashMap<String, WorkloadFacts>,
    spiffe_id: &str,
    owner: &str,
    environment: &str,
    selectors: impl IntoIterator<Item = String>,
) {
    let w = index
        .entry(spiffe_id.to_string())
        .or_insert_with(|| WorkloadFacts {
            spiffe_id: spiffe_id.to_string(),
            registered: true,
            ..WorkloadFacts::default()
        });
    if w.owner.is_empty() {
        w.owner = owner.to_string();
    }
    if w.environment.is_empty() {
        w.environment = environment.to_string();
    }
    for s in selectors {
        if !w.selectors.contains(&s) {
            w.selectors.push(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed {
        policy: CompiledPolicies,
        /// Which source "cannot be read" (fail-closed tests).
        down: Option<&'static str>,
    }

    impl Fixed {
        fn check(&self, what: &str) -> Result<(), Unavailable> {
            match self.down {
                Some(d) if d == what => Err(Unavailable(format!("the {what} cannot be read"))),
                _ => Ok(()),
            }
        }
    }

    impl Sources for Fixed {
        async fn workload(&self, id: &str) -> Result<PreparedWorkload, DecideError> {
            self.check("entry index")?;
            let mut index = HashMap::new();
            index_entry(
                &mut index,
                "spiffe://example.org/web",
                "team-a",
                "prod",
                ["unix:uid:1".to_string()],
            );
            WorkloadIndex::build(index).unwrap().get(id)
        }
        async fn policy(&self) -> Result<CompiledPolicies, Unavailable> {
            self.check("policy")?;
            Ok(self.policy.clone())
        }
        async fn verify_task(&self, token: &str) -> Result<TaskFacts, TaskError> {
            self.check("deny-list")
                .map_err(|e| TaskError::Unavailable(e.0))?;
            if token == "good" {
                Ok(TaskFacts {
                    txn: "t1".into(),
                    agent: "spiffe://example.org/web".into(),
                    tools: vec!["o-1".into()],
                    ..TaskFacts::default()
                })
            } else {
                Err(TaskError::Rejected(TokenError::Invalid(
                    "bad signature".into(),
                )))
            }
        }
    }

    #[test]
    fn the_workload_index_prepares_registered_ids_and_answers_unknown_as_unregistered() {
        let mut facts = HashMap::new();
        index_entry(
            &mut facts,
            "spiffe://example.org/web",
            "team-a",
            "prod",
            ["unix:uid:1".to_string()],
        );
        index_entry(
            &mut facts,
            "spiffe://example.org/web",
            "team-b",
            "",
            ["unix:uid:2".to_string()],
        );
        let index = WorkloadIndex::build(facts).unwrap();
        assert_eq!(index.len(), 1);
        let web = index.get("spiffe://example.org/web").unwrap();
        assert!(web.facts().registered);
        assert_eq!(web.facts().owner, "team-a");
        assert_eq!(web.facts().selectors, ["unix:uid:1", "unix:uid:2"]);
        // The entity is built once: every lookup shares it.
        assert_eq!(index.facts("spiffe://example.org/web"), *web.facts());
        let other = index.get("spiffe://example.org/other").unwrap();
        assert!(!other.facts().registered);
        assert!(!index.facts("spiffe://example.org/other").registered);
    }

    fn fixed() -> Fixed {
        let text = format!(
            "{}\npermit (principal, action == Action::\"read\", resource) when {{ principal.owner == \"team-a\" }};",
            PolicyKind::Authz.default_policy()
        );
        Fixed {
            policy: CompiledPolicies::compile(PolicyKind::Authz, &text).unwrap(),
            down: None,
        }
    }

    fn q(subject: &str) -> Question {
        Question::new(subject, "read", "orders", "o-1")
    }

    #[tokio::test]
    async fn registered_facts_permit_and_unregistered_deny() {
        let src = fixed();
        let r = decide(&src, q("spiffe://example.org/web")).await.unwrap();
        assert!(r.out.allowed);
        assert_eq!(r.owner, "team-a");
        assert_eq!(r.out.decision_id.len(), 32);
        let r = decide(&src, q("spiffe://example.org/other")).await.unwrap();
        assert!(!r.out.allowed);
        assert!(matches!(decide(&src, q("web")).await.unwrap_err(),
                DecideError::Malformed(m) if m.contains("SPIFFE ID")));
    }

    #[tokio::test]
    async fn task_tokens_set_the_trace_or_deny() {
        let src = fixed();
        let mut question = q("spiffe://example.org/web");
        question.context.insert("task_token".into(), "good".into());
        let r = decide(&src, question.clone()).await.unwrap();
        assert!(r.out.allowed, "{}", r.out.reason);
        assert_eq!(r.trace_id.as_deref(), Some("t1"));
        question
            .context
            .insert("task_token".into(), "forged".into());
        let r = decide(&src, question.clone()).await.unwrap();
        assert!(!r.out.allowed);
        assert!(r.out.reason.contains("bad signature"));
        question.context.insert("task_token".into(), 7.into());
        assert!(matches!(
            decide(&src, question).await,
            Err(DecideError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn unreadable_facts_give_no_decision() {
        for down in ["entry index", "policy", "deny-list"] {
            let src = Fixed {
                down: Some(down),
                ..fixed()
            };
            let mut question = q("spiffe://example.org/web");
            question.context.insert("task_token".into(), "good".into());
            match decide(&src, question).await {
                Err(DecideError::Unavailable(m)) => assert!(m.contains(down), "{m}"),
                other => panic!("{down}: expected Unavailable, got {other:?}"),
            }
        }
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer(Some("Bearer abc ")), Some("abc"));
        assert_eq!(bearer(Some("bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}
