//! What a token request gets, decided by pure functions over facts: the request,
//! the verified tokens, the authz policy and the registrations of the parties (or
//! why they could not be read: then the request fails closed), and the issuer's
//! settings. A plan says which token to issue (its claims and lifetime, the
//! evidence to record); a refusal says which OAuth error to answer and what the
//! `token_exchange_refused` event records. [`Access::exchange`] gathers the facts,
//! then signs and records what was decided.
//!
//! [`Access::exchange`]: crate::access::Access::exchange

use std::time::Duration;

use lanyard_audit::Event;
use lanyard_audit::evidence::{TaskTokenIssued, TokenExchangeRefused, TokenExchanged};
use lanyard_core::SpiffeId;
use lanyard_policy::{AuthzRequest, CompiledPolicies, PolicyKind, Target, WorkloadFacts};
use serde_json::{Map, Value, json};

use super::{
    ExchangeForm, GRANT_TYPE, MAX_TASK_TTL, OAuthError, OAuthErrorKind, Party, PersonToken,
    TYPE_ACCESS_TOKEN, TYPE_JWT, TYPE_TXN_TOKEN,
};
use crate::decision::Unavailable;

/// The issuer's settings and the time a request is decided at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Issuing {
    /// `iss` of the tokens issued.
    pub issuer: String,
    /// Task tokens are addressed to the trust domain.
    pub trust_domain: String,
    /// Unix seconds.
    pub now: i64,
    /// `exchange_token_ttl`.
    pub ttl: Duration,
    pub max_delegation_depth: u32,
}

/// What the `token_exchange_refused` event records of a request: what was known of
/// it when it was refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Known {
    pub subject: Option<String>,
    pub actor: Option<String>,
    pub evidence: TokenExchangeRefused,
    /// The policies that refused, when a policy refused.
    pub policy_ids: Vec<String>,
}

impl Known {
    /// A request with a verified subject token (and actor token).
    pub fn parties(subject: &Party, actor: Option<&Party>) -> Self {
        Self {
            subject: Some(subject.id.to_string()),
            actor: actor.map(|a| a.id.to_string()),
            evidence: TokenExchangeRefused {
                subject_jti: Some(subject.jti.clone()),
                actor_jti: actor.map(|a| a.jti.clone()),
                ..TokenExchangeRefused::default()
            },
            policy_ids: Vec::new(),
        }
    }

    /// A task request for a person (with the agent, once its token is verified).
    pub fn person(person: &PersonToken, agent: Option<&Party>) -> Self {
        Self {
            subject: Some(person.sub.clone()),
            actor: agent.map(|a| a.id.to_string()),
            evidence: TokenExchangeRefused::person_issuer(&person.issuer),
            policy_ids: Vec::new(),
        }
    }

    /// Refuse with `error`, recording what is known.
    pub fn refuse(&self, error: OAuthError) -> Refused {
        Refused {
            error,
            known: Box::new(self.clone()),
        }
    }

    /// Refuse with `error` because the policies `policy_ids` refused.
    fn refuse_by_policy(&self, error: OAuthError, policy_ids: Vec<String>) -> Refused {
        let mut known = Box::new(self.clone());
        known.policy_ids = policy_ids;
        Refused { error, known }
    }

    fn refuse_act(&self, e: MayAct) -> Refused {
        match e {
            MayAct::Error(e) => self.refuse(e),
            MayAct::Denied(e, policy_ids) => self.refuse_by_policy(e, policy_ids),
        }
    }
}

/// A refused token request: the answer, and what its evidence records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refused {
    pub error: OAuthError,
    /// Boxed: a refusal travels through every `Result` of the exchange.
    pub known: Box<Known>,
}

impl Refused {
    /// Refused before anything is known of the tokens.
    pub fn early(error: OAuthError) -> Self {
        Known::default().refuse(error)
    }

    /// Fill a `token_exchange_refused` event.
    pub fn record_in(&self, ev: &mut Event) {
        ev.subject.clone_from(&self.known.subject);
        ev.actor.clone_from(&self.known.actor);
        ev.policy_ids.clone_from(&self.known.policy_ids);
        ev.set_evidence(self.known.evidence.clone());
        ev.reason = Some(format!("{}: {}", self.error.code(), self.error.description));
        ev.decision = Some("deny".to_string());
    }
}

/// Who was granted a token, by which policies: the success event's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Grant {
    /// The workload that acts (the subject itself without an actor).
    pub actor: String,
    pub subject: String,
    pub owner: Option<String>,
    /// The permitting policies, sorted.
    pub policy_ids: Vec<String>,
}

impl Grant {
    /// Fill the success event (its evidence is the caller's).
    pub fn record_in(&self, ev: &mut Event) {
        ev.actor = Some(self.actor.clone());
        ev.subject = Some(self.subject.clone());
        ev.owner.clone_from(&self.owner);
        ev.policy_ids.clone_from(&self.policy_ids);
        ev.decision = Some("allow".to_string());
    }
}

/// What a request gets.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ExchangePlan {
    Token(TokenPlan),
    Task(TaskPlan),
}

/// An exchanged token to issue.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TokenPlan {
    pub iss: String,
    pub sub: String,
    pub audience: String,
    /// Granted scopes (empty when none were asked for).
    pub scopes: Vec<String>,
    /// Requested scopes policy did not grant, with why.
    pub not_granted: Vec<(String, String)>,
    /// The new `act` claim: the actor, nesting the subject token's chain.
    pub act: Option<Value>,
    /// Actors, nearest first.
    pub chain: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    pub subject_jti: String,
    pub actor_jti: Option<String>,
    pub grant: Grant,
    /// What a refusal records when minting or recording fails.
    pub known: Known,
}

impl TokenPlan {
    /// The claims, with the new token's `jti`.
    pub fn claims(&self, jti: &str) -> Value {
        let mut claims = Map::new();
        claims.insert("iss".into(), self.iss.clone().into());
        claims.insert("sub".into(), self.sub.clone().into());
        claims.insert("aud".into(), self.audience.clone().into());
        claims.insert("iat".into(), self.iat.into());
        claims.insert("exp".into(), self.exp.into());
        claims.insert("jti".into(), jti.into());
        if !self.scopes.is_empty() {
            claims.insert("scope".into(), self.scopes.join(" ").into());
        }
        if let Some(act) = &self.act {
            claims.insert("act".into(), act.clone());
        }
        Value::Object(claims)
    }

    /// The `token_exchanged` evidence.
    pub fn evidence(&self, jti: String) -> TokenExchanged {
        TokenExchanged {
            subject_jti: self.subject_jti.clone(),
            actor_jti: self.actor_jti.clone(),
            audience: self.audience.clone(),
            jti,
            scope: self.scopes.join(" "),
            expires_at: self.exp,
            chain: self.chain.clone(),
            scopes_not_granted: (!self.not_granted.is_empty())
                .then(|| self.not_granted.iter().map(|(s, _)| s.clone()).collect()),
        }
    }

    /// The answer.
    pub fn answer(&self, token: String) -> Value {
        let mut out = json!({
            "access_token": token,
            "issued_token_type": TYPE_JWT,
            "token_type": "Bearer",
            "expires_in": (self.exp - self.iat).max(0),
        });
        if !self.scopes.is_empty() {
            out["scope"] = self.scopes.join(" ").into();
        }
        out
    }
}

/// A task token to issue.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TaskPlan {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    /// The person's identity provider (`sub_iss`), for a person's task.
    pub person_issuer: Option<String>,
    /// The agent that runs the task.
    pub agent: String,
    /// The agent acts for someone else (`act`).
    pub acting: bool,
    pub purpose: String,
    pub tools: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    pub grant: Grant,
    /// What a refusal records when minting or recording fails; its evidence (the
    /// tokens or the person's issuer, and the task) is also the issued evidence's.
    pub known: Known,
}

impl TaskPlan {
    /// The claims, with the task's transaction id and the token's `jti`.
    pub fn claims(&self, txn: &str, jti: &str) -> Value {
        let mut claims = json!({
            "iss": self.iss,
            "aud": self.aud,
            "sub": self.sub,
            "txn": txn,
            "jti": jti,
            "iat": self.iat,
            "exp": self.exp,
            "scope": self.purpose,
            "tctx": {"purpose": self.purpose, "tools": self.tools},
            "rctx": {"req_wl": self.agent},
        });
        if self.acting {
            claims["act"] = json!({"sub": self.agent});
        }
        if let Some(iss) = &self.person_issuer {
            // Whose `sub` it is: a person at a trusted identity provider.
            claims["sub_iss"] = json!(iss);
        }
        claims
    }

    /// The `task_token_issued` evidence.
    pub fn evidence(&self, txn: String, jti: String) -> TaskTokenIssued {
        self.known
            .evidence
            .clone()
            .task_token_issued(txn, jti, self.exp)
    }

    /// The answer.
    pub fn answer(&self, token: String) -> Value {
        json!({
            "access_token": token,
            "issued_token_type": TYPE_TXN_TOKEN,
            "token_type": "N_A",
            "expires_in": (self.exp - self.iat).max(0),
            "scope": self.purpose,
        })
    }
}

/// The authz policy and the registrations a workload's request is decided with.
#[derive(Debug, Clone)]
pub(super) struct ExchangeAuthz {
    pub policy: CompiledPolicies,
    /// The subject's registration.
    pub subject: WorkloadFacts,
    /// The registration of the workload that acts: the actor, else the subject.
    pub acting: WorkloadFacts,
}

/// What a request with a workload's (or an exchanged) subject token is decided on.
#[derive(Debug, Clone, Copy)]
pub(super) struct ExchangeFacts<'a> {
    pub form: &'a ExchangeForm,
    pub subject: &'a Party,
    pub actor: Option<&'a Party>,
    /// `Err`: they could not be read.
    pub authz: &'a Result<ExchangeAuthz, Unavailable>,
    pub issuing: &'a Issuing,
}

/// The authz policy and the agent's registration a person's task is decided with.
#[derive(Debug, Clone)]
pub(super) struct PersonAuthz {
    pub policy: CompiledPolicies,
    pub agent: WorkloadFacts,
}

/// What a task request for a person is decided on.
#[derive(Debug, Clone, Copy)]
pub(super) struct PersonFacts<'a> {
    pub form: &'a ExchangeForm,
    pub person: &'a PersonToken,
    /// The agent's verified JWT-SVID (the actor token).
    pub agent: &'a Party,
    /// `Err`: they could not be read.
    pub authz: &'a Result<PersonAuthz, Unavailable>,
    pub issuing: &'a Issuing,
}

/// Whom a task token is for, and the agent that runs the task.
struct TaskFor<'a> {
    sub: &'a str,
    sub_exp: i64,
    /// `Some` when `sub` is a person at a trusted identity provider.
    person_issuer: Option<&'a str>,
    agent: &'a SpiffeId,
    agent_exp: i64,
    /// The agent acts for someone other than itself.
    acting: bool,
}

pub(super) fn scopes_of(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.split_whitespace().map(str::to_string).collect();
    v.dedup();
    v
}

/// Actors already in an `act` chain, nearest first.
pub(super) fn chain_of(act: Option<&Value>) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = act;
    while let Some(a) = cur {
        match a.get("sub").and_then(Value::as_str) {
            Some(s) => out.push(s.to_string()),
            None => break,
        }
        cur = a.get("act");
        if out.len() > 64 {
            break;
        }
    }
    out
}

/// The `aud` claim as a list.
fn audience_of(claims: &Map<String, Value>) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(v)) => v
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// The grant type and token types, checked before any token is read.
pub(super) fn check_request(form: &ExchangeForm) -> Result<(), OAuthError> {
    if form.grant_type != GRANT_TYPE {
        return Err(OAuthError::new(
            OAuthErrorKind::UnsupportedGrantType,
            format!(
                "grant_type {:?} is not supported; use {GRANT_TYPE}",
                form.grant_type
            ),
        ));
    }
    for (name, t) in [
        ("subject_token_type", &form.subject_token_type),
        ("actor_token_type", &form.actor_token_type),
    ] {
        if name == "actor_token_type" && form.actor_token.is_empty() {
            if !t.is_empty() {
                return Err(OAuthError::request(
                    "actor_token_type is given without actor_token",
                ));
            }
            continue;
        }
        if t != TYPE_JWT && t != TYPE_ACCESS_TOKEN {
            return Err(OAuthError::request(format!(
                "{name} {t:?} is not supported; use {TYPE_JWT}"
            )));
        }
    }
    Ok(())
}

/// A person's token is only exchanged for a task token, by the agent acting for
/// them: checked before the agent's token is read.
pub(super) fn check_person_request(
    form: &ExchangeForm,
    person: &PersonToken,
) -> Result<(), Refused> {
    let known = Known::person(person, None);
    if form.requested_token_type != TYPE_TXN_TOKEN {
        return Err(known.refuse(OAuthError::request(format!(
            "a person's token (from {}) can only be exchanged for a task token (requested_token_type={TYPE_TXN_TOKEN}) by the agent acting for them",
            person.issuer
        ))));
    }
    if form.actor_token.is_empty() {
        return Err(known.refuse(OAuthError::request(
            "a task for a person needs the agent's JWT-SVID as actor_token",
        )));
    }
    Ok(())
}

/// Decide a request with a workload's JWT-SVID or an exchanged token as subject:
/// an exchanged token for one audience, or a task token.
///
/// * Re-exchange: the actor must be in the subject token's audience; the chain
///   grows by the actor (nearest first) and is at most `max_delegation_depth`
///   deep; scopes only narrow.
/// * An actor other than the subject must be allowed `act_for` the subject.
/// * Each requested scope is granted by `token_exchange` policy, or (none asked)
///   the audience itself is.
pub(super) fn plan_exchange(f: ExchangeFacts<'_>) -> Result<ExchangePlan, Refused> {
    let ExchangeFacts {
        form,
        subject,
        actor,
        authz,
        issuing,
    } = f;
    let mut known = Known::parties(subject, actor);
    let task = match form.requested_token_type.as_str() {
        "" | TYPE_JWT | TYPE_ACCESS_TOKEN => false,
        TYPE_TXN_TOKEN => true,
        other => {
            return Err(known.refuse(OAuthError::request(format!(
                "requested_token_type {other:?} is not supported; use {TYPE_JWT} or {TYPE_TXN_TOKEN}"
            ))));
        }
    };
    // Re-exchange of an issued token: the next hop (in its audience) must act.
    let prior_act = subject.issued.as_ref().and_then(|c| c.get("act"));
    let mut chain = chain_of(prior_act);
    if let Some(claims) = &subject.issued {
        let a = actor.ok_or_else(|| {
            known.refuse(OAuthError::request(
                "an exchanged token can only be exchanged again by an actor in its audience: add actor_token",
            ))
        })?;
        let aud = audience_of(claims);
        if !aud.contains(&a.id.to_string()) {
            return Err(known.refuse(OAuthError::request(format!(
                "the actor {} is not in the subject token's audience {aud:?}",
                a.id
            ))));
        }
    }
    let authz = authz
        .as_ref()
        .map_err(|e| known.refuse(OAuthError::unavailable(e)))?;
    let mut policy_ids: Vec<String> = Vec::new();
    // Delegation: may the actor act for the subject?
    if let Some(a) = actor
        && a.id != subject.id
    {
        let max = issuing.max_delegation_depth;
        if chain.len() + 1 > max as usize {
            return Err(known.refuse(OAuthError::request(format!(
                "the delegation chain would be {} deep; at most {max} actors are allowed",
                chain.len() + 1,
            ))));
        }
        let allowed = may_act(
            &authz.policy,
            &authz.acting,
            &a.id,
            "act_for",
            Target::Workload(authz.subject.clone()),
            chain.clone(),
            &subject.id.to_string(),
        )
        .map_err(|e| known.refuse_act(e))?;
        policy_ids.extend(allowed);
    }
    if task {
        if subject.issued.is_some() && actor.is_none() {
            return Err(known.refuse(OAuthError::request(
                "a task token is requested with the agent's own JWT-SVID",
            )));
        }
        // The agent is the actor when it acts for someone, else the subject itself.
        let sub = subject.id.to_string();
        let task = TaskFor {
            sub: &sub,
            sub_exp: subject.exp,
            person_issuer: None,
            agent: actor.map_or(&subject.id, |a| &a.id),
            agent_exp: actor.map_or(subject.exp, |a| a.exp),
            acting: actor.is_some_and(|a| a.id != subject.id),
        };
        return plan_task(
            form,
            &authz.policy,
            &authz.acting,
            task,
            policy_ids,
            known,
            issuing,
        )
        .map(ExchangePlan::Task);
    }
    // Audience.
    let mut targets: Vec<String> = form.audience.clone();
    targets.extend(form.resource.iter().cloned());
    targets.dedup();
    let audience = match targets.as_slice() {
        [] => {
            return Err(known.refuse(OAuthError::new(
                OAuthErrorKind::InvalidTarget,
                "name the service the token is for with audience (or resource)",
            )));
        }
        [one] => one.clone(),
        _ => {
            return Err(known.refuse(OAuthError::new(
                OAuthErrorKind::InvalidTarget,
                "one audience per exchange: ask once per service",
            )));
        }
    };
    known.evidence.audience = Some(audience.clone());
    // Scopes: requested ones (or the prior token's), each granted by policy,
    // never wider than the prior token's.
    let prior_scopes: Option<Vec<String>> = subject
        .issued
        .as_ref()
        .map(|c| scopes_of(c.get("scope").and_then(Value::as_str).unwrap_or_default()));
    let mut requested = scopes_of(&form.scope);
    if let Some(prior) = &prior_scopes {
        if requested.is_empty() {
            requested.clone_from(prior);
        }
        let wider: Vec<&String> = requested.iter().filter(|s| !prior.contains(s)).collect();
        if !wider.is_empty() {
            return Err(known.refuse(OAuthError::new(
                OAuthErrorKind::InvalidScope,
                format!(
                    "scopes only narrow on re-exchange: {wider:?} are not in the subject token's scope {prior:?}"
                ),
            )));
        }
    }
    if let Some(a) = actor {
        chain.insert(0, a.id.to_string());
    }
    let ask = |scope: Option<String>| {
        let mut r = AuthzRequest::new(authz.subject.clone(), "token_exchange", &audience);
        r.scope = scope;
        r.actor = actor.map(|a| a.id.to_string());
        r.chain = Some(chain.clone());
        r
    };
    let mut granted = Vec::new();
    let mut denied = Vec::new();
    if requested.is_empty() {
        let d = authz
            .policy
            .evaluate_authz(&ask(None))
            .map_err(|e| known.refuse(OAuthError::server(e)))?;
        if !d.allowed {
            return Err(known.refuse_by_policy(
                OAuthError::new(
                    OAuthErrorKind::InvalidTarget,
                    format!(
                        "{} may not obtain a token for {audience:?}: {}",
                        subject.id,
                        d.explain(PolicyKind::Authz)
                    ),
                ),
                d.policy_ids,
            ));
        }
        policy_ids.extend(d.policy_ids);
    } else {
        for s in &requested {
            let d = authz
                .policy
                .evaluate_authz(&ask(Some(s.clone())))
                .map_err(|e| known.refuse(OAuthError::server(e)))?;
            if d.allowed {
                granted.push(s.clone());
                policy_ids.extend(d.policy_ids);
            } else {
                denied.push((s.clone(), d.explain(PolicyKind::Authz)));
            }
        }
        if granted.is_empty() {
            return Err(known.refuse(OAuthError::new(
                OAuthErrorKind::InvalidScope,
                format!(
                    "no requested scope is allowed for {} at {audience:?}: {}",
                    subject.id,
                    denied
                        .iter()
                        .map(|(s, r)| format!("{s}: {r}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            )));
        }
    }
    policy_ids.sort();
    policy_ids.dedup();
    let now = issuing.now;
    let ttl = i64::try_from(issuing.ttl.as_secs()).unwrap_or(300);
    let act = match (actor, prior_act) {
        (Some(a), prior) => {
            let mut act = Map::new();
            act.insert("sub".into(), a.id.to_string().into());
            if let Some(p) = prior {
                act.insert("act".into(), p.clone());
            }
            Some(Value::Object(act))
        }
        (None, prior) => prior.cloned(),
    };
    Ok(ExchangePlan::Token(TokenPlan {
        iss: issuing.issuer.clone(),
        sub: subject.id.to_string(),
        audience,
        scopes: granted,
        not_granted: denied,
        act,
        chain,
        iat: now,
        exp: (now + ttl).min(subject.exp),
        subject_jti: subject.jti.clone(),
        actor_jti: actor.map(|a| a.jti.clone()),
        grant: Grant {
            actor: actor.map_or_else(|| subject.id.to_string(), |a| a.id.to_string()),
            subject: subject.id.to_string(),
            owner: (!authz.subject.owner.is_empty()).then(|| authz.subject.owner.clone()),
            policy_ids,
        },
        known,
    }))
}

/// Decide a task token for an agent acting for a person: only when the authz
/// policy lets the agent act for that person (`act_for_person`), and each tool
/// is allowed.
pub(super) fn plan_person_task(f: PersonFacts<'_>) -> Result<TaskPlan, Refused> {
    let PersonFacts {
        form,
        person,
        agent,
        authz,
        issuing,
    } = f;
    check_person_request(form, person)?;
    let known = Known::person(person, Some(agent));
    let authz = authz
        .as_ref()
        .map_err(|e| known.refuse(OAuthError::unavailable(e)))?;
    let allowed = may_act(
        &authz.policy,
        &authz.agent,
        &agent.id,
        "act_for_person",
        Target::Person {
            id: person.sub.clone(),
            issuer: person.issuer.clone(),
            email: person.email.clone(),
        },
        Vec::new(),
        &format!("{} ({})", person.sub, person.issuer),
    )
    .map_err(|e| known.refuse_act(e))?;
    plan_task(
        form,
        &authz.policy,
        &authz.agent,
        TaskFor {
            sub: &person.sub,
            sub_exp: person.exp,
            person_issuer: Some(&person.issuer),
            agent: &agent.id,
            agent_exp: agent.exp,
            acting: true,
        },
        allowed,
        known,
        issuing,
    )
}

/// A task token for `task.agent`, for `task.sub` (the agent itself, a workload or
/// a person it acts for): a purpose, and tools each allowed by `start_task`
/// policy; it lives at most [`MAX_TASK_TTL`] and never beyond either token.
fn plan_task(
    form: &ExchangeForm,
    policy: &CompiledPolicies,
    agent_facts: &WorkloadFacts,
    task: TaskFor<'_>,
    mut policy_ids: Vec<String>,
    mut known: Known,
    issuing: &Issuing,
) -> Result<TaskPlan, Refused> {
    let agent = task.agent;
    let purpose = form.scope.trim().to_string();
    if purpose.is_empty() {
        return Err(known.refuse(OAuthError::request(
            "give the task's purpose as scope (e.g. scope=summarize-tickets)",
        )));
    }
    let tools = scopes_of(&form.tools);
    if tools.is_empty() {
        return Err(known.refuse(OAuthError::request(
            "name the tools the task may call with tools (space-separated)",
        )));
    }
    known.evidence.purpose = Some(purpose.clone());
    known.evidence.tools = Some(tools.clone());
    let mut denied = Vec::new();
    for t in &tools {
        let mut r = AuthzRequest::new(agent_facts.clone(), "start_task", t);
        r.scope = Some(purpose.clone());
        r.tool = Some(t.clone());
        if task.acting {
            r.actor = Some(agent.to_string());
        }
        let d = policy
            .evaluate_authz(&r)
            .map_err(|e| known.refuse(OAuthError::server(e)))?;
        if d.allowed {
            policy_ids.extend(d.policy_ids);
        } else {
            denied.push(format!("{t}: {}", d.explain(PolicyKind::Authz)));
        }
    }
    if !denied.is_empty() {
        return Err(known.refuse(OAuthError::new(
            OAuthErrorKind::InvalidScope,
            format!(
                "{agent} may not run a task with these tools: {}",
                denied.join("; ")
            ),
        )));
    }
    policy_ids.sort();
    policy_ids.dedup();
    let now = issuing.now;
    let ttl = i64::try_from(issuing.ttl.as_secs())
        .unwrap_or(MAX_TASK_TTL)
        .min(MAX_TASK_TTL);
    Ok(TaskPlan {
        iss: issuing.issuer.clone(),
        aud: format!("spiffe://{}", issuing.trust_domain),
        sub: task.sub.to_string(),
        person_issuer: task.person_issuer.map(str::to_string),
        agent: agent.to_string(),
        acting: task.acting,
        purpose,
        tools,
        iat: now,
        exp: (now + ttl).min(task.sub_exp).min(task.agent_exp),
        grant: Grant {
            actor: agent.to_string(),
            subject: task.sub.to_string(),
            owner: (!agent_facts.owner.is_empty()).then(|| agent_facts.owner.clone()),
            policy_ids,
        },
        known,
    })
}

/// Why [`may_act`] refused.
enum MayAct {
    /// The policy could not be evaluated.
    Error(OAuthError),
    /// The policy refused, by these policies.
    Denied(OAuthError, Vec<String>),
}

/// May `actor` act for `target` (`act_for` on a workload, `act_for_person` on a
/// person)? Returns the permitting policies; a refusal is `invalid_request`
/// naming the policy.
fn may_act(
    policy: &CompiledPolicies,
    actor_facts: &WorkloadFacts,
    actor: &SpiffeId,
    action: &str,
    target: Target,
    chain: Vec<String>,
    whom: &str,
) -> Result<Vec<String>, MayAct> {
    let mut r = AuthzRequest::new(actor_facts.clone(), action, "");
    r.target = target;
    r.chain = Some(chain);
    let d = policy
        .evaluate_authz(&r)
        .map_err(|e| MayAct::Error(OAuthError::server(e)))?;
    if !d.allowed {
        let error = OAuthError::request(format!(
            "{actor} may not act for {whom}: {}",
            d.explain(PolicyKind::Authz)
        ));
        return Err(MayAct::Denied(error, d.policy_ids));
    }
    Ok(d.policy_ids)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const NOW: i64 = 10_000;
    const TD: &str = "spiffe://example.org";

    const POLICY: &str = r#"
@id("gateway-acts-for-web")
@reason("the gateway may act for web")
permit (principal, action == Action::"act_for", resource)
when { principal.path == "/gateway" && resource.path == "/web" };

@id("orders-acts-onward")
@reason("orders may pass a delegated call on")
permit (principal, action == Action::"act_for", resource)
when { principal.path == "/orders" };

@id("rogue-never-acts")
@reason("the rogue may act for no one")
forbid (principal, action == Action::"act_for", resource)
when { principal.path == "/rogue" };

@id("anyone-acts-for-web")
@reason("a test permit the forbid above overrides")
permit (principal, action == Action::"act_for", resource)
when { principal.path == "/rogue" };

@id("web-orders-tokens")
@reason("web may get orders tokens with orders scopes")
permit (principal, action == Action::"token_exchange", resource == Resource::"spiffe://example.org/orders")
when { principal.path == "/web" && (context has scope && context.scope like "orders:*" || !(context has scope)) };

@id("web-orders-tokens-too")
@reason("a second permit of orders tokens without scopes")
permit (principal, action == Action::"token_exchange", resource == Resource::"spiffe://example.org/orders")
when { principal.path == "/web" && !(context has scope) };

@id("no-web-payments")
@reason("web never gets payments tokens")
forbid (principal, action == Action::"token_exchange", resource == Resource::"spiffe://example.org/payments");

@id("any-payments")
@reason("overridden by the forbid above")
permit (principal, action == Action::"token_exchange", resource == Resource::"spiffe://example.org/payments");

@id("orders-forwards-to-inventory")
@reason("orders may forward web's authority to inventory")
permit (principal, action == Action::"token_exchange", resource == Resource::"spiffe://example.org/inventory")
when { principal.path == "/web" && context has actor && context.actor == "spiffe://example.org/orders" };

@id("agents-start-tasks")
@reason("agents may start tasks with the ticket tools")
permit (principal, action == Action::"start_task", resource)
when { principal.path like "/agents/*" && ["search", "read_ticket"].contains(resource.id) };

@id("helper-acts-for-idp-people")
@reason("the helper agent may act for people of our identity provider")
permit (principal, action == Action::"act_for_person", resource)
when { principal.path == "/agents/helper" && resource.issuer == "https://idp.example.com" };
"#;

    fn id(path: &str) -> SpiffeId {
        SpiffeId::new(&format!("{TD}{path}")).unwrap()
    }

    /// A workload's JWT-SVID.
    fn svid(path: &str, exp: i64) -> Party {
        Party {
            id: id(path),
            exp,
            jti: format!("jti{path}"),
            issued: None,
        }
    }

    /// A token this endpoint issued for `path`, addressed to `aud`, with `claims`.
    fn issued(path: &str, aud: &str, claims: Value) -> Party {
        let mut c = Map::new();
        c.insert("sub".into(), id(path).to_string().into());
        c.insert("aud".into(), aud.into());
        if let Value::Object(m) = claims {
            c.extend(m);
        }
        Party {
            issued: Some(c),
            jti: format!("issued{path}"),
            ..svid(path, NOW + 100)
        }
    }

    fn facts(path: &str) -> WorkloadFacts {
        WorkloadFacts {
            spiffe_id: id(path).to_string(),
            registered: true,
            owner: format!("owner-of{path}"),
            ..WorkloadFacts::default()
        }
    }

    fn policy() -> CompiledPolicies {
        CompiledPolicies::compile(PolicyKind::Authz, POLICY).unwrap()
    }

    fn issuing() -> Issuing {
        Issuing {
            issuer: "https://example.org".into(),
            trust_domain: "example.org".into(),
            now: NOW,
            ttl: Duration::from_secs(600),
            max_delegation_depth: 2,
        }
    }

    fn form(pairs: &[(&str, &str)]) -> ExchangeForm {
        let mut f = ExchangeForm {
            grant_type: GRANT_TYPE.into(),
            subject_token: "s".into(),
            subject_token_type: TYPE_JWT.into(),
            ..ExchangeForm::default()
        };
        for (k, v) in pairs {
            let v = v.to_string();
            match *k {
                "actor_token" => f.actor_token = v,
                "actor_token_type" => f.actor_token_type = v,
                "audience" => f.audience.push(v),
                "resource" => f.resource.push(v),
                "scope" => f.scope = v,
                "requested_token_type" => f.requested_token_type = v,
                "tools" => f.tools = v,
                "grant_type" => f.grant_type = v,
                "subject_token_type" => f.subject_token_type = v,
                other => panic!("no parameter {other}"),
            }
        }
        f
    }

    fn authz(subject: &Party, actor: Option<&Party>) -> Result<ExchangeAuthz, Unavailable> {
        let subject_facts = facts(subject.id.path());
        Ok(ExchangeAuthz {
            policy: policy(),
            acting: actor.map_or_else(|| subject_facts.clone(), |a| facts(a.id.path())),
            subject: subject_facts,
        })
    }

    fn plan(
        form: &ExchangeForm,
        subject: &Party,
        actor: Option<&Party>,
    ) -> Result<ExchangePlan, Refused> {
        plan_exchange(ExchangeFacts {
            form,
            subject,
            actor,
            authz: &authz(subject, actor),
            issuing: &issuing(),
        })
    }

    fn token(form: &ExchangeForm, subject: &Party, actor: Option<&Party>) -> TokenPlan {
        match plan(form, subject, actor) {
            Ok(ExchangePlan::Token(p)) => p,
            other => panic!("not a token: {other:?}"),
        }
    }

    fn task(form: &ExchangeForm, subject: &Party, actor: Option<&Party>) -> TaskPlan {
        match plan(form, subject, actor) {
            Ok(ExchangePlan::Task(p)) => p,
            other => panic!("not a task: {other:?}"),
        }
    }

    fn refused(form: &ExchangeForm, subject: &Party, actor: Option<&Party>) -> Refused {
        match plan(form, subject, actor) {
            Err(r) => r,
            Ok(p) => panic!("not refused: {p:?}"),
        }
    }

    const ORDERS: &str = "spiffe://example.org/orders";
    const INVENTORY: &str = "spiffe://example.org/inventory";

    #[test]
    fn the_grant_and_token_types_are_checked_first() {
        let e = check_request(&form(&[("grant_type", "client_credentials")])).unwrap_err();
        assert_eq!(e.code(), "unsupported_grant_type");
        assert_eq!(
            e.description,
            format!("grant_type \"client_credentials\" is not supported; use {GRANT_TYPE}")
        );
        let e = check_request(&form(&[("subject_token_type", "saml")])).unwrap_err();
        assert_eq!(
            (e.code(), e.description.as_str()),
            (
                "invalid_request",
                "subject_token_type \"saml\" is not supported; use urn:ietf:params:oauth:token-type:jwt"
            )
        );
        let e = check_request(&form(&[("actor_token_type", TYPE_JWT)])).unwrap_err();
        assert_eq!(
            e.description,
            "actor_token_type is given without actor_token"
        );
        let e = check_request(&form(&[("actor_token", "a")])).unwrap_err();
        assert_eq!(
            e.description,
            format!("actor_token_type \"\" is not supported; use {TYPE_JWT}")
        );
        assert!(
            check_request(&form(&[
                ("actor_token", "a"),
                ("actor_token_type", TYPE_ACCESS_TOKEN)
            ]))
            .is_ok()
        );
        assert!(check_request(&form(&[])).is_ok());
    }

    #[test]
    fn a_workload_gets_a_token_for_one_audience_with_the_scopes_policy_grants() {
        let web = svid("/web", NOW + 60);
        let p = token(
            &form(&[
                ("audience", ORDERS),
                ("scope", "orders:read admin orders:write"),
            ]),
            &web,
            None,
        );
        assert_eq!(p.sub, web.id.to_string());
        assert_eq!(p.audience, ORDERS);
        assert_eq!(p.scopes, vec!["orders:read", "orders:write"]);
        assert_eq!(
            p.not_granted
                .iter()
                .map(|(s, _)| s.as_str())
                .collect::<Vec<_>>(),
            vec!["admin"]
        );
        assert!(
            p.not_granted[0].1.contains("no authz policy permits"),
            "{:?}",
            p.not_granted
        );
        assert_eq!(p.act, None);
        assert!(p.chain.is_empty());
        assert_eq!(p.iat, NOW);
        assert_eq!(p.exp, NOW + 60, "never beyond the subject token");
        assert_eq!(
            p.grant,
            Grant {
                actor: web.id.to_string(),
                subject: web.id.to_string(),
                owner: Some("owner-of/web".into()),
                policy_ids: vec!["web-orders-tokens".into()],
            },
            "policy ids deduplicated"
        );
        let jti = "j-1";
        let claims = p.claims(jti);
        assert_eq!(
            claims,
            json!({
                "iss": "https://example.org", "sub": web.id.to_string(), "aud": ORDERS,
                "iat": NOW, "exp": NOW + 60, "jti": jti, "scope": "orders:read orders:write",
            })
        );
        assert_eq!(
            p.evidence(jti.into()),
            TokenExchanged {
                subject_jti: "jti/web".into(),
                actor_jti: None,
                audience: ORDERS.into(),
                jti: jti.into(),
                scope: "orders:read orders:write".into(),
                expires_at: NOW + 60,
                chain: Vec::new(),
                scopes_not_granted: Some(vec!["admin".into()]),
            }
        );
        assert_eq!(
            p.answer("t".into()),
            json!({"access_token": "t", "issued_token_type": TYPE_JWT, "token_type": "Bearer",
                   "expires_in": 60, "scope": "orders:read orders:write"})
        );
        // The lifetime is the configured one when the subject token lives longer.
        let long = svid("/web", NOW + 10_000);
        assert_eq!(
            token(&form(&[("audience", ORDERS)]), &long, None).exp,
            NOW + 600
        );
    }

    #[test]
    fn scopes_policy_does_not_grant_are_left_out_and_recorded() {
        let web = svid("/web", NOW + 60);
        let p = token(
            &form(&[("audience", INVENTORY), ("scope", "x")]),
            &web,
            Some(&svid("/orders", NOW + 60)),
        );
        assert_eq!(p.scopes, vec!["x"]);
        let web = svid("/web", NOW + 60);
        // Only `orders-forwards-to-inventory` grants inventory, with orders acting.
        let r = refused(
            &form(&[("audience", INVENTORY), ("scope", "a b")]),
            &web,
            None,
        );
        assert_eq!(r.error.code(), "invalid_scope");
        assert!(
            r.error.description.starts_with(&format!(
                "no requested scope is allowed for {} at \"{INVENTORY}\": a: ",
                web.id
            )),
            "{}",
            r.error.description
        );
        assert!(r.known.policy_ids.is_empty());
        assert_eq!(r.known.evidence.audience.as_deref(), Some(INVENTORY));
    }

    #[test]
    fn without_scopes_the_audience_itself_must_be_allowed() {
        let web = svid("/web", NOW + 60);
        let p = token(&form(&[("audience", ORDERS)]), &web, None);
        assert!(p.scopes.is_empty());
        assert_eq!(p.answer("t".into()).get("scope"), None);
        assert_eq!(p.claims("j").get("scope"), None);
        assert_eq!(p.evidence("j".into()).scope, "");
        let r = refused(
            &form(&[("audience", "spiffe://example.org/payments")]),
            &web,
            None,
        );
        assert_eq!(r.error.code(), "invalid_target");
        assert!(
            r.error.description.starts_with(&format!(
                "{} may not obtain a token for \"spiffe://example.org/payments\": ",
                web.id
            )),
            "{}",
            r.error.description
        );
        assert_eq!(
            r.known.policy_ids,
            vec!["no-web-payments"],
            "the forbid is recorded"
        );
    }

    #[test]
    fn exactly_one_audience() {
        let web = svid("/web", NOW + 60);
        let r = refused(&form(&[]), &web, None);
        assert_eq!(
            (r.error.code(), r.error.description.as_str()),
            (
                "invalid_target",
                "name the service the token is for with audience (or resource)"
            )
        );
        assert_eq!(r.known.evidence.audience, None);
        let r = refused(
            &form(&[("audience", ORDERS), ("resource", INVENTORY)]),
            &web,
            None,
        );
        assert_eq!(
            (r.error.code(), r.error.description.as_str()),
            (
                "invalid_target",
                "one audience per exchange: ask once per service"
            )
        );
        // The same service named as audience and resource is one audience.
        let p = token(
            &form(&[("audience", ORDERS), ("resource", ORDERS)]),
            &web,
            None,
        );
        assert_eq!(p.audience, ORDERS);
        let p = token(&form(&[("resource", ORDERS)]), &web, None);
        assert_eq!(p.audience, ORDERS);
    }

    #[test]
    fn an_actor_allowed_to_act_for_the_subject_starts_the_chain() {
        let web = svid("/web", NOW + 60);
        let gw = svid("/gateway", NOW + 30);
        let p = token(
            &form(&[("audience", ORDERS), ("scope", "orders:read")]),
            &web,
            Some(&gw),
        );
        assert_eq!(p.sub, web.id.to_string(), "the subject stays the subject");
        assert_eq!(p.act, Some(json!({"sub": gw.id.to_string()})));
        assert_eq!(p.chain, vec![gw.id.to_string()]);
        assert_eq!(p.exp, NOW + 60, "the subject token bounds the lifetime");
        assert_eq!(p.grant.actor, gw.id.to_string());
        assert_eq!(
            p.grant.owner.as_deref(),
            Some("owner-of/web"),
            "the subject's owner"
        );
        assert_eq!(
            p.grant.policy_ids,
            vec!["gateway-acts-for-web", "web-orders-tokens"]
        );
        assert_eq!(p.actor_jti.as_deref(), Some("jti/gateway"));
        assert_eq!(p.known.actor.as_deref(), Some(gw.id.to_string().as_str()));
        // The subject presenting its own token as actor is not delegation.
        let p = token(&form(&[("audience", ORDERS)]), &web, Some(&web.clone()));
        assert_eq!(
            p.grant.policy_ids,
            vec!["web-orders-tokens", "web-orders-tokens-too"]
        );
        assert_eq!(p.chain, vec![web.id.to_string()]);
    }

    #[test]
    fn an_actor_policy_does_not_let_act_is_refused_naming_the_policy() {
        let web = svid("/web", NOW + 60);
        let rogue = svid("/rogue", NOW + 60);
        let r = refused(&form(&[("audience", ORDERS)]), &web, Some(&rogue));
        assert_eq!(r.error.code(), "invalid_request");
        assert!(
            r.error
                .description
                .starts_with(&format!("{} may not act for {}: ", rogue.id, web.id)),
            "{}",
            r.error.description
        );
        assert_eq!(r.known.policy_ids, vec!["rogue-never-acts"]);
        assert_eq!(
            r.known.subject.as_deref(),
            Some(web.id.to_string().as_str())
        );
        assert_eq!(
            r.known.actor.as_deref(),
            Some(rogue.id.to_string().as_str())
        );
        assert_eq!(r.known.evidence.subject_jti.as_deref(), Some("jti/web"));
        assert_eq!(r.known.evidence.actor_jti.as_deref(), Some("jti/rogue"));
        // Nothing permits: refused with no policy to name.
        let r = refused(
            &form(&[("audience", ORDERS)]),
            &web,
            Some(&svid("/stranger", NOW + 60)),
        );
        assert_eq!(r.error.code(), "invalid_request");
        assert!(r.known.policy_ids.is_empty());
    }

    #[test]
    fn re_exchange_extends_the_chain_nearest_first_and_only_narrows_scopes() {
        let prior = issued(
            "/web",
            ORDERS,
            json!({"scope": "orders:read orders:write", "act": {"sub": id("/gateway").to_string()}}),
        );
        let orders = svid("/orders", NOW + 60);
        let p = token(&form(&[("audience", INVENTORY)]), &prior, Some(&orders));
        assert_eq!(
            p.chain,
            vec![orders.id.to_string(), id("/gateway").to_string()],
            "nearest first"
        );
        assert_eq!(
            p.act,
            Some(json!({"sub": orders.id.to_string(), "act": {"sub": id("/gateway").to_string()}}))
        );
        assert_eq!(
            p.scopes,
            vec!["orders:read", "orders:write"],
            "the prior scopes when none are asked"
        );
        assert_eq!(p.subject_jti, "issued/web");
        let p = token(
            &form(&[("audience", INVENTORY), ("scope", "orders:read")]),
            &prior,
            Some(&orders),
        );
        assert_eq!(p.scopes, vec!["orders:read"]);
        let r = refused(
            &form(&[("audience", INVENTORY), ("scope", "orders:read admin")]),
            &prior,
            Some(&orders),
        );
        assert_eq!(
            (r.error.code(), r.error.description.as_str()),
            (
                "invalid_scope",
                "scopes only narrow on re-exchange: [\"admin\"] are not in the subject token's scope [\"orders:read\", \"orders:write\"]"
            )
        );
        assert_eq!(r.known.evidence.audience.as_deref(), Some(INVENTORY));
    }

    #[test]
    fn only_an_actor_in_the_audience_exchanges_an_issued_token_again() {
        let prior = issued("/web", ORDERS, json!({}));
        let r = refused(&form(&[("audience", INVENTORY)]), &prior, None);
        assert_eq!(
            r.error.description,
            "an exchanged token can only be exchanged again by an actor in its audience: add actor_token"
        );
        let gw = svid("/gateway", NOW + 60);
        let r = refused(&form(&[("audience", INVENTORY)]), &prior, Some(&gw));
        assert_eq!(
            r.error.description,
            format!(
                "the actor {} is not in the subject token's audience [\"{ORDERS}\"]",
                gw.id
            )
        );
        // `aud` as a list.
        let listed = issued("/web", ORDERS, json!({"aud": [ORDERS, "x"]}));
        let p = token(
            &form(&[("audience", INVENTORY)]),
            &listed,
            Some(&svid("/orders", NOW + 60)),
        );
        assert_eq!(p.audience, INVENTORY);
    }

    #[test]
    fn the_delegation_chain_is_bounded() {
        // Already two actors deep; the limit is two.
        let prior = issued(
            "/web",
            ORDERS,
            json!({"act": {"sub": id("/orders").to_string(), "act": {"sub": id("/gateway").to_string()}}}),
        );
        let r = refused(
            &form(&[("audience", INVENTORY)]),
            &prior,
            Some(&svid("/orders", NOW + 60)),
        );
        assert_eq!(
            (r.error.code(), r.error.description.as_str()),
            (
                "invalid_request",
                "the delegation chain would be 3 deep; at most 2 actors are allowed"
            )
        );
    }

    #[test]
    fn unreadable_policy_or_registrations_fail_closed() {
        let web = svid("/web", NOW + 60);
        let gw = svid("/gateway", NOW + 60);
        let f = form(&[("audience", ORDERS)]);
        let r = plan_exchange(ExchangeFacts {
            form: &f,
            subject: &web,
            actor: Some(&gw),
            authz: &Err(Unavailable("the datastore is unreachable".into())),
            issuing: &issuing(),
        })
        .unwrap_err();
        assert_eq!(
            (r.error.code(), r.error.description.as_str()),
            ("temporarily_unavailable", "the datastore is unreachable")
        );
        assert_eq!(*r.known, Known::parties(&web, Some(&gw)));
        // A malformed request is still answered as such.
        let f = form(&[("requested_token_type", "saml")]);
        let r = plan_exchange(ExchangeFacts {
            form: &f,
            subject: &web,
            actor: None,
            authz: &Err(Unavailable("down".into())),
            issuing: &issuing(),
        })
        .unwrap_err();
        assert_eq!(
            r.error.description,
            format!(
                "requested_token_type \"saml\" is not supported; use {TYPE_JWT} or {TYPE_TXN_TOKEN}"
            )
        );
    }

    #[test]
    fn an_agent_gets_a_short_task_token_for_allowed_tools() {
        let agent = svid("/agents/helper", NOW + 1_000);
        let f = form(&[
            ("requested_token_type", TYPE_TXN_TOKEN),
            ("scope", " triage "),
            ("tools", "search read_ticket search"),
        ]);
        let p = task(&f, &agent, None);
        assert_eq!(p.sub, agent.id.to_string());
        assert_eq!(p.agent, agent.id.to_string());
        assert!(!p.acting);
        assert_eq!(p.purpose, "triage");
        assert_eq!(
            p.tools,
            vec!["search", "read_ticket", "search"],
            "only neighbours are merged"
        );
        assert_eq!(p.exp, NOW + MAX_TASK_TTL, "at most five minutes");
        assert_eq!(p.aud, "spiffe://example.org");
        assert_eq!(p.grant.policy_ids, vec!["agents-start-tasks"]);
        assert_eq!(p.grant.owner.as_deref(), Some("owner-of/agents/helper"));
        let claims = p.claims("txn-1", "j-1");
        assert_eq!(
            claims["tctx"],
            json!({"purpose": "triage", "tools": ["search", "read_ticket", "search"]})
        );
        assert_eq!(claims["rctx"], json!({"req_wl": agent.id.to_string()}));
        assert_eq!(claims.get("act"), None);
        assert_eq!(claims.get("sub_iss"), None);
        assert_eq!(
            p.evidence("txn-1".into(), "j-1".into()),
            TaskTokenIssued {
                subject_jti: Some("jti/agents/helper".into()),
                actor_jti: None,
                person_issuer: None,
                purpose: "triage".into(),
                tools: vec!["search".into(), "read_ticket".into(), "search".into()],
                txn: "txn-1".into(),
                jti: "j-1".into(),
                expires_at: NOW + MAX_TASK_TTL,
            }
        );
        assert_eq!(
            p.answer("t".into()),
            json!({"access_token": "t", "issued_token_type": TYPE_TXN_TOKEN, "token_type": "N_A",
                   "expires_in": MAX_TASK_TTL, "scope": "triage"})
        );
    }

    #[test]
    fn an_agent_acting_for_a_workload_runs_the_task_as_actor() {
        let web = svid("/web", NOW + 100);
        let agent = svid("/agents/helper", NOW + 50);
        let f = form(&[
            ("requested_token_type", TYPE_TXN_TOKEN),
            ("scope", "p"),
            ("tools", "search"),
        ]);
        // The helper may not act for web.
        let r = refused(&f, &web, Some(&agent));
        assert!(
            r.error.description.contains("may not act for"),
            "{}",
            r.error.description
        );
        // Orders may act for anyone, but is no agent: its tools are refused.
        let orders = svid("/orders", NOW + 50);
        let r = refused(&f, &web, Some(&orders));
        assert_eq!(r.error.code(), "invalid_scope");
        assert!(
            r.error.description.starts_with(&format!(
                "{} may not run a task with these tools: search: ",
                orders.id
            )),
            "{}",
            r.error.description
        );
        assert_eq!(r.known.evidence.purpose.as_deref(), Some("p"));
        assert_eq!(r.known.evidence.tools, Some(vec!["search".to_string()]));
        assert_eq!(r.known.evidence.actor_jti.as_deref(), Some("jti/orders"));
    }

    #[test]
    fn a_task_needs_a_purpose_and_tools() {
        let agent = svid("/agents/helper", NOW + 100);
        let r = refused(
            &form(&[
                ("requested_token_type", TYPE_TXN_TOKEN),
                ("tools", "search"),
            ]),
            &agent,
            None,
        );
        assert_eq!(
            r.error.description,
            "give the task's purpose as scope (e.g. scope=summarize-tickets)"
        );
        assert_eq!(r.known.evidence.purpose, None);
        let r = refused(
            &form(&[("requested_token_type", TYPE_TXN_TOKEN), ("scope", "p")]),
            &agent,
            None,
        );
        assert_eq!(
            r.error.description,
            "name the tools the task may call with tools (space-separated)"
        );
        let r = refused(
            &form(&[
                ("requested_token_type", TYPE_TXN_TOKEN),
                ("scope", "p"),
                ("tools", "search delete_ticket"),
            ]),
            &agent,
            None,
        );
        assert_eq!(r.error.code(), "invalid_scope");
        assert!(
            r.error.description.contains("delete_ticket: "),
            "{}",
            r.error.description
        );
        assert!(
            !r.error.description.contains("search: "),
            "{}",
            r.error.description
        );
        // Within the agent token's lifetime.
        let short = svid("/agents/helper", NOW + 7);
        let p = task(
            &form(&[
                ("requested_token_type", TYPE_TXN_TOKEN),
                ("scope", "p"),
                ("tools", "search"),
            ]),
            &short,
            None,
        );
        assert_eq!(p.exp, NOW + 7);
    }

    fn alice() -> PersonToken {
        PersonToken {
            sub: "alice".into(),
            issuer: "https://idp.example.com".into(),
            email: "alice@example.com".into(),
            exp: NOW + 120,
        }
    }

    fn person_plan(f: &ExchangeForm, agent: &Party) -> Result<TaskPlan, Refused> {
        plan_person_task(PersonFacts {
            form: f,
            person: &alice(),
            agent,
            authz: &Ok(PersonAuthz {
                policy: policy(),
                agent: facts(agent.id.path()),
            }),
            issuing: &issuing(),
        })
    }

    #[test]
    fn a_person_token_is_only_for_a_task_run_by_an_agent() {
        let r = check_person_request(&form(&[("audience", ORDERS)]), &alice()).unwrap_err();
        assert_eq!(
            r.error.description,
            format!(
                "a person's token (from https://idp.example.com) can only be exchanged for a task token (requested_token_type={TYPE_TXN_TOKEN}) by the agent acting for them"
            )
        );
        assert_eq!(*r.known, Known::person(&alice(), None));
        assert_eq!(r.known.subject.as_deref(), Some("alice"));
        assert_eq!(
            r.known.evidence.person_issuer.as_deref(),
            Some("https://idp.example.com")
        );
        let r = check_person_request(&form(&[("requested_token_type", TYPE_TXN_TOKEN)]), &alice())
            .unwrap_err();
        assert_eq!(
            r.error.description,
            "a task for a person needs the agent's JWT-SVID as actor_token"
        );
        assert!(
            check_person_request(
                &form(&[
                    ("requested_token_type", TYPE_TXN_TOKEN),
                    ("actor_token", "a")
                ]),
                &alice()
            )
            .is_ok()
        );
    }

    #[test]
    fn an_agent_acts_for_a_person_only_when_policy_lets_it() {
        let f = form(&[
            ("requested_token_type", TYPE_TXN_TOKEN),
            ("actor_token", "a"),
            ("scope", "triage-my-tickets"),
            ("tools", "search"),
        ]);
        let helper = svid("/agents/helper", NOW + 1_000);
        let p = person_plan(&f, &helper).unwrap();
        assert_eq!(p.sub, "alice");
        assert!(p.acting);
        assert_eq!(p.exp, NOW + 120, "never beyond the person's token");
        let claims = p.claims("txn", "j");
        assert_eq!(claims["act"], json!({"sub": helper.id.to_string()}));
        assert_eq!(claims["sub_iss"], json!("https://idp.example.com"));
        assert_eq!(
            p.grant.policy_ids,
            vec!["agents-start-tasks", "helper-acts-for-idp-people"]
        );
        let ev = p.evidence("txn".into(), "j".into());
        assert_eq!(ev.person_issuer.as_deref(), Some("https://idp.example.com"));
        assert_eq!(
            (ev.subject_jti, ev.actor_jti),
            (None, None),
            "a person's task names no token jti"
        );
        let rogue = svid("/agents/rogue", NOW + 1_000);
        let r = person_plan(&f, &rogue).unwrap_err();
        assert_eq!(r.error.code(), "invalid_request");
        assert!(
            r.error.description.starts_with(&format!(
                "{} may not act for alice (https://idp.example.com): ",
                rogue.id
            )),
            "{}",
            r.error.description
        );
        assert_eq!(
            r.known.actor.as_deref(),
            Some(rogue.id.to_string().as_str())
        );
        assert_eq!(r.known.evidence.actor_jti, None);
        let r = plan_person_task(PersonFacts {
            form: &f,
            person: &alice(),
            agent: &helper,
            authz: &Err(Unavailable("down".into())),
            issuing: &issuing(),
        })
        .unwrap_err();
        assert_eq!(
            (r.error.code(), *r.known),
            (
                "temporarily_unavailable",
                Known::person(&alice(), Some(&helper))
            )
        );
    }

    fn refused_event() -> Event {
        Event::new(
            "e-1",
            0,
            lanyard_audit::EventKind::TokenExchangeRefused,
            lanyard_audit::Outcome::Denied,
            "server",
        )
    }

    #[test]
    fn a_refusal_fills_the_refused_event() {
        let web = svid("/web", NOW + 60);
        let r = refused(
            &form(&[("audience", "spiffe://example.org/payments")]),
            &web,
            None,
        );
        let mut ev = refused_event();
        r.record_in(&mut ev);
        assert_eq!(ev.subject.as_deref(), Some(web.id.to_string().as_str()));
        assert_eq!(ev.actor, None);
        assert_eq!(ev.policy_ids, vec!["no-web-payments"]);
        assert_eq!(ev.decision.as_deref(), Some("deny"));
        assert_eq!(
            ev.reason.as_deref(),
            Some(format!("invalid_target: {}", r.error.description).as_str())
        );
        assert_eq!(
            ev.evidence_as::<TokenExchangeRefused>().unwrap(),
            TokenExchangeRefused {
                subject_jti: Some("jti/web".into()),
                audience: Some("spiffe://example.org/payments".into()),
                ..TokenExchangeRefused::default()
            }
        );
        let mut ev = refused_event();
        Refused::early(OAuthError::request("x")).record_in(&mut ev);
        assert!(ev.evidence.is_empty());
        assert_eq!((ev.subject, ev.actor), (None, None));
    }
}
