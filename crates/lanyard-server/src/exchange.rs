//! RFC 8693 token exchange at `POST /oauth2/token`, with delegation chains (`act`)
//! and task (transaction) tokens for AI agents.
//!
//! * The subject token is a JWT-SVID addressed to this server (audience: the issuer
//!   or the token endpoint), or a token this endpoint issued (re-exchange: then an
//!   actor whose SPIFFE ID is in that token's audience must present its JWT-SVID).
//! * The actor token, when present, is a JWT-SVID addressed to this server. The
//!   authz policy (`act_for`) decides whether the actor may act for the subject;
//!   chains are limited in depth. (No token this server issues carries RFC 8693
//!   `may_act`, so delegation is decided by policy alone.)
//! * Scopes are granted one by one by the authz policy (`token_exchange`) and only
//!   narrow on re-exchange.
//! * Task tokens (`requested_token_type=urn:ietf:params:oauth:token-type:txn_token`)
//!   bind an agent to a purpose (`scope`) and the tools it may call (`tools`), each
//!   tool allowed by the authz policy (`start_task`); they live at most 5 minutes.
//!
//! Every issued token and every refusal is audited before the answer is sent.

use std::collections::BTreeSet;

use lanyard_audit::evidence::{TokenExchangeRefused, TokenExchanged};
use lanyard_audit::{EventKind, Outcome};
use lanyard_core::SpiffeId;
use lanyard_policy::{AuthzRequest, PolicyKind, Target};
use serde_json::{Map, Value, json};

use crate::access::{Access, EXCHANGE_TYP, TASK_TYP};

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TYPE_TXN_TOKEN: &str = "urn:ietf:params:oauth:token-type:txn_token";
/// Task tokens never live longer than this.
pub const MAX_TASK_TTL: i64 = 300;
/// Longest accepted form body.
pub const MAX_FORM: usize = 64 * 1024;

/// An RFC 6749 / 8693 error answer (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub kind: OAuthErrorKind,
    pub description: String,
}

/// The RFC 6749 error codes the token endpoint answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthErrorKind {
    /// The request is malformed or not allowed (HTTP 400).
    InvalidRequest,
    /// RFC 8693: the grant type is not the token exchange (HTTP 400).
    UnsupportedGrantType,
    /// RFC 8693: the audience or resource is not one the caller may get (HTTP 400).
    InvalidTarget,
    /// The requested scope is not allowed (HTTP 400).
    InvalidScope,
    /// What the exchange needs cannot be read: fail closed (HTTP 503).
    TemporarilyUnavailable,
    /// The server failed (signing, recording): HTTP 500.
    ServerError,
}

impl OAuthErrorKind {
    /// The `error` code.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidTarget => "invalid_target",
            Self::InvalidScope => "invalid_scope",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::ServerError => "server_error",
        }
    }
}

impl OAuthError {
    fn new(kind: OAuthErrorKind, description: impl Into<String>) -> Self {
        Self {
            kind,
            description: description.into(),
        }
    }
    fn request(d: impl Into<String>) -> Self {
        Self::new(OAuthErrorKind::InvalidRequest, d)
    }
    /// What the exchange needs cannot be read (fail closed, HTTP 503).
    fn unavailable(d: impl std::fmt::Display) -> Self {
        Self::new(OAuthErrorKind::TemporarilyUnavailable, d.to_string())
    }
    /// The server failed.
    fn server(d: impl std::fmt::Display) -> Self {
        Self::new(OAuthErrorKind::ServerError, d.to_string())
    }
    /// The `error` code.
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }
    pub fn body(&self) -> Value {
        json!({"error": self.code(), "error_description": self.description})
    }
}

/// The form parameters.
#[derive(Debug, Default, Clone)]
pub struct ExchangeForm {
    pub grant_type: String,
    pub subject_token: String,
    pub subject_token_type: String,
    pub actor_token: String,
    pub actor_token_type: String,
    pub audience: Vec<String>,
    pub resource: Vec<String>,
    pub scope: String,
    pub requested_token_type: String,
    /// Task tokens: tools the task may call (space-separated).
    pub tools: String,
}

impl ExchangeForm {
    /// Parse `application/x-www-form-urlencoded`; repeated single-valued
    /// parameters are refused.
    pub fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        if body.len() > MAX_FORM {
            return Err(OAuthError::request(
                "the request body is larger than 64 KiB",
            ));
        }
        let mut f = Self::default();
        let mut seen = BTreeSet::new();
        for (k, v) in form_urlencoded::parse(body) {
            let v = v.into_owned();
            let single = |seen: &mut BTreeSet<String>, slot: &mut String| {
                if !seen.insert(k.to_string()) {
                    return Err(OAuthError::request(format!(
                        "the parameter {k} is given twice"
                    )));
                }
                *slot = v.clone();
                Ok(())
            };
            match k.as_ref() {
                "grant_type" => single(&mut seen, &mut f.grant_type)?,
                "subject_token" => single(&mut seen, &mut f.subject_token)?,
                "subject_token_type" => single(&mut seen, &mut f.subject_token_type)?,
                "actor_token" => single(&mut seen, &mut f.actor_token)?,
                "actor_token_type" => single(&mut seen, &mut f.actor_token_type)?,
                "scope" => single(&mut seen, &mut f.scope)?,
                "requested_token_type" => single(&mut seen, &mut f.requested_token_type)?,
                "tools" => single(&mut seen, &mut f.tools)?,
                "audience" => f.audience.push(v),
                "resource" => f.resource.push(v),
                _ => {} // RFC 6749: unknown parameters are ignored.
            }
        }
        Ok(f)
    }
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

/// A person, from a verified token of a trusted identity provider.
#[derive(Debug, Clone)]
pub struct PersonToken {
    pub sub: String,
    pub issuer: String,
    pub email: String,
    pub exp: i64,
}

/// A validated subject or actor.
#[derive(Debug, Clone)]
struct Party {
    id: SpiffeId,
    exp: i64,
    jti: String,
    /// Claims of a token this endpoint issued (re-exchange).
    issued: Option<Map<String, Value>>,
}

fn scopes_of(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.split_whitespace().map(str::to_string).collect();
    v.dedup();
    v
}

/// Actors already in an `act` chain, nearest first.
fn chain_of(act: Option<&Value>) -> Vec<String> {
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

impl Access {
    async fn party(
        &self,
        token: &str,
        kind: &str,
        allow_issued: bool,
    ) -> Result<Party, OAuthError> {
        if token.is_empty() {
            return Err(OAuthError::request(format!("{kind}_token is missing")));
        }
        let header_kid = jsonwebtoken::decode_header(token)
            .map_err(|e| OAuthError::request(format!("the {kind}_token is not a JWT: {e}")))?
            .kid;
        if header_kid.as_deref() == Some(self.token_key.kid()) {
            if !allow_issued {
                return Err(OAuthError::request(format!(
                    "the {kind}_token must be the {kind}'s own JWT-SVID, not an exchanged token"
                )));
            }
            let now = self.shared.clock.unix_seconds();
            let claims = self
                .token_key
                .verifier()
                .verify(token, EXCHANGE_TYP, &self.issuer(), now)
                .map_err(|e| {
                    OAuthError::request(format!("the {kind}_token is not accepted: {e}"))
                })?;
            let sub = claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let id = SpiffeId::new(sub).map_err(|e| {
                OAuthError::request(format!("the {kind}_token's sub is not a SPIFFE ID: {e}"))
            })?;
            let jti = claims
                .get("jti")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if self
                .revoked()
                .await
                .map_err(OAuthError::unavailable)?
                .contains(&jti)
            {
                return Err(OAuthError::request(format!("the {kind}_token was revoked")));
            }
            return Ok(Party {
                id,
                exp: claims.get("exp").and_then(Value::as_i64).unwrap_or(0),
                jti,
                issued: Some(claims),
            });
        }
        let svid = self.validate_svid(token).await.map_err(|e| match e {
            crate::decision::AuthnError::Unavailable(m) => OAuthError::unavailable(m),
            crate::decision::AuthnError::Unauthenticated(e) => OAuthError::request(format!(
                "the {kind}_token is not an acceptable JWT-SVID: {e} (its audience must be {:?})",
                self.issuer()
            )),
        })?;
        Ok(Party {
            id: svid.spiffe_id().clone(),
            exp: svid.expiry(),
            jti: svid
                .claims()
                .get("jti")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            issued: None,
        })
    }

    /// Handle one token request. The caller answers 400 with the error body.
    pub async fn exchange(&self, form: ExchangeForm) -> Result<Value, OAuthError> {
        let mut refused = self
            .shared
            .event(EventKind::TokenExchangeRefused, Outcome::Denied);
        match self.exchange_inner(&form, &mut refused).await {
            Ok(v) => Ok(v),
            Err(e) => {
                refused.reason = Some(format!("{}: {}", e.code(), e.description));
                refused.decision = Some("deny".to_string());
                if let Err(err) = self.shared.record(vec![refused]).await {
                    tracing::error!(error = %err, "cannot record a refused token exchange");
                }
                Err(e)
            }
        }
    }

    async fn exchange_inner(
        &self,
        form: &ExchangeForm,
        refused: &mut lanyard_audit::Event,
    ) -> Result<Value, OAuthError> {
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
        if let Some(person) = self.person_token(&form.subject_token).await? {
            return self.person_task(form, person, refused).await;
        }
        let subject = self.party(&form.subject_token, "subject", true).await?;
        refused.subject = Some(subject.id.to_string());
        refused.merge_evidence(TokenExchangeRefused::subject_jti(&subject.jti));
        let actor = if form.actor_token.is_empty() {
            None
        } else {
            let a = self.party(&form.actor_token, "actor", false).await?;
            refused.actor = Some(a.id.to_string());
            refused.merge_evidence(TokenExchangeRefused::actor_jti(&a.jti));
            Some(a)
        };
        let task = match form.requested_token_type.as_str() {
            "" | TYPE_JWT | TYPE_ACCESS_TOKEN => false,
            TYPE_TXN_TOKEN => true,
            other => {
                return Err(OAuthError::request(format!(
                    "requested_token_type {other:?} is not supported; use {TYPE_JWT} or {TYPE_TXN_TOKEN}"
                )));
            }
        };
        // Re-exchange of an issued token: the next hop (in its audience) must act.
        let prior_act = subject.issued.as_ref().and_then(|c| c.get("act")).cloned();
        let mut chain = chain_of(prior_act.as_ref());
        if let Some(claims) = &subject.issued {
            let a = actor.as_ref().ok_or_else(|| {
                OAuthError::request(
                    "an exchanged token can only be exchanged again by an actor in its audience: add actor_token",
                )
            })?;
            let aud: Vec<String> = match claims.get("aud") {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(v)) => v
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                _ => Vec::new(),
            };
            if !aud.contains(&a.id.to_string()) {
                return Err(OAuthError::request(format!(
                    "the actor {} is not in the subject token's audience {aud:?}",
                    a.id
                )));
            }
        }
        let policy = self.policy().await.map_err(OAuthError::unavailable)?;
        let subject_facts = self
            .workload(&subject.id.to_string())
            .await
            .map_err(OAuthError::unavailable)?;
        let mut policy_ids: Vec<String> = Vec::new();
        // Delegation: may the actor act for the subject?
        if let Some(a) = &actor
            && a.id != subject.id
        {
            if chain.len() + 1 > self.shared.config.max_delegation_depth as usize {
                return Err(OAuthError::request(format!(
                    "the delegation chain would be {} deep; at most {} actors are allowed",
                    chain.len() + 1,
                    self.shared.config.max_delegation_depth
                )));
            }
            let allowed = self
                .may_act(
                    &policy,
                    &a.id,
                    "act_for",
                    Target::Workload(subject_facts.clone()),
                    chain.clone(),
                    &subject.id.to_string(),
                    refused,
                )
                .await?;
            policy_ids.extend(allowed);
        }
        if task {
            if subject.issued.is_some() && actor.is_none() {
                return Err(OAuthError::request(
                    "a task token is requested with the agent's own JWT-SVID",
                ));
            }
            // The agent is the actor when it acts for someone, else the subject itself.
            let agent = actor.as_ref().map_or(&subject.id, |a| &a.id);
            let sub = subject.id.to_string();
            return self
                .task_token(
                    form,
                    &policy,
                    TaskFor {
                        sub: &sub,
                        sub_exp: subject.exp,
                        person_issuer: None,
                        agent,
                        agent_exp: actor.as_ref().map_or(subject.exp, |a| a.exp),
                        acting: actor.as_ref().is_some_and(|a| a.id != subject.id),
                    },
                    policy_ids,
                    refused,
                )
                .await;
        }
        // Audience.
        let mut targets: Vec<String> = form.audience.clone();
        targets.extend(form.resource.iter().cloned());
        targets.dedup();
        let audience = match targets.as_slice() {
            [] => {
                return Err(OAuthError::new(
                    OAuthErrorKind::InvalidTarget,
                    "name the service the token is for with audience (or resource)",
                ));
            }
            [one] => one.clone(),
            _ => {
                return Err(OAuthError::new(
                    OAuthErrorKind::InvalidTarget,
                    "one audience per exchange: ask once per service",
                ));
            }
        };
        refused.merge_evidence(TokenExchangeRefused::audience(&audience));
        // Scopes: requested ones (or the prior token's), each granted by policy,
        // never wider than the prior token's.
        let prior_scopes: Option<Vec<String>> = subject
            .issued
            .as_ref()
            .map(|c| scopes_of(c.get("scope").and_then(Value::as_str).unwrap_or_default()));
        let mut requested = scopes_of(&form.scope);
        if let Some(prior) = &prior_scopes {
            if requested.is_empty() {
                requested = prior.clone();
            }
            let wider: Vec<&String> = requested.iter().filter(|s| !prior.contains(s)).collect();
            if !wider.is_empty() {
                return Err(OAuthError::new(
                    OAuthErrorKind::InvalidScope,
                    format!(
                        "scopes only narrow on re-exchange: {wider:?} are not in the subject token's scope {prior:?}"
                    ),
                ));
            }
        }
        if let Some(a) = &actor {
            chain.insert(0, a.id.to_string());
        }
        let ask = |scope: Option<String>| {
            let mut r = AuthzRequest::new(subject_facts.clone(), "token_exchange", &audience);
            r.scope = scope;
            r.actor = actor.as_ref().map(|a| a.id.to_string());
            r.chain = Some(chain.clone());
            r
        };
        let mut granted = Vec::new();
        let mut denied = Vec::new();
        if requested.is_empty() {
            let d = policy
                .evaluate_authz(&ask(None))
                .map_err(OAuthError::server)?;
            if !d.allowed {
                refused.policy_ids = d.policy_ids.clone();
                return Err(OAuthError::new(
                    OAuthErrorKind::InvalidTarget,
                    format!(
                        "{} may not obtain a token for {audience:?}: {}",
                        subject.id,
                        d.explain(PolicyKind::Authz)
                    ),
                ));
            }
            policy_ids.extend(d.policy_ids);
        } else {
            for s in &requested {
                let d = policy
                    .evaluate_authz(&ask(Some(s.clone())))
                    .map_err(OAuthError::server)?;
                if d.allowed {
                    granted.push(s.clone());
                    policy_ids.extend(d.policy_ids);
                } else {
                    denied.push((s.clone(), d.explain(PolicyKind::Authz)));
                }
            }
            if granted.is_empty() {
                return Err(OAuthError::new(
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
                ));
            }
        }
        policy_ids.sort();
        policy_ids.dedup();
        // The token.
        let now = self.shared.clock.unix_seconds();
        let ttl = i64::try_from(self.shared.config.exchange_token_ttl.as_secs()).unwrap_or(300);
        let exp = (now + ttl).min(subject.exp);
        let jti = Access::new_id();
        let mut claims = Map::new();
        claims.insert("iss".into(), self.issuer().into());
        claims.insert("sub".into(), subject.id.to_string().into());
        claims.insert("aud".into(), audience.clone().into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), exp.into());
        claims.insert("jti".into(), jti.clone().into());
        if !granted.is_empty() {
            claims.insert("scope".into(), granted.join(" ").into());
        }
        if let Some(a) = &actor {
            let mut act = Map::new();
            act.insert("sub".into(), a.id.to_string().into());
            if let Some(p) = prior_act {
                act.insert("act".into(), p);
            }
            claims.insert("act".into(), Value::Object(act));
        } else if let Some(p) = prior_act {
            claims.insert("act".into(), p);
        }
        let token = self
            .token_key
            .sign(EXCHANGE_TYP, &Value::Object(claims))
            .map_err(OAuthError::server)?;
        let mut ev = self
            .shared
            .event(EventKind::TokenExchanged, Outcome::Success);
        ev.actor = Some(
            actor
                .as_ref()
                .map_or_else(|| subject.id.to_string(), |a| a.id.to_string()),
        );
        ev.subject = Some(subject.id.to_string());
        if !subject_facts.owner.is_empty() {
            ev.owner = Some(subject_facts.owner.clone());
        }
        ev.policy_ids = policy_ids;
        ev.decision = Some("allow".to_string());
        // The tokens and audience gathered in `refused`, and the new token.
        ev.set_evidence(TokenExchanged {
            subject_jti: subject.jti.clone(),
            actor_jti: actor.as_ref().map(|a| a.jti.clone()),
            audience,
            jti,
            scope: granted.join(" "),
            expires_at: exp,
            chain,
            scopes_not_granted: (!denied.is_empty())
                .then(|| denied.iter().map(|(s, _)| s.clone()).collect()),
        });
        self.shared
            .record(vec![ev])
            .await
            .map_err(|e| OAuthError::server(format!("cannot record the exchange: {e}")))?;
        let mut out = json!({
            "access_token": token,
            "issued_token_type": TYPE_JWT,
            "token_type": "Bearer",
            "expires_in": (exp - now).max(0),
        });
        if !granted.is_empty() {
            out["scope"] = granted.join(" ").into();
        }
        Ok(out)
    }

    /// Issue a task token for `agent`, for `task.sub` (the agent itself, a workload or
    /// a person it acts for).
    async fn task_token(
        &self,
        form: &ExchangeForm,
        policy: &lanyard_policy::CompiledPolicies,
        task: TaskFor<'_>,
        mut policy_ids: Vec<String>,
        refused: &mut lanyard_audit::Event,
    ) -> Result<Value, OAuthError> {
        let agent = task.agent;
        let acting = task.acting;
        let purpose = form.scope.trim().to_string();
        if purpose.is_empty() {
            return Err(OAuthError::request(
                "give the task's purpose as scope (e.g. scope=summarize-tickets)",
            ));
        }
        let tools = scopes_of(&form.tools);
        if tools.is_empty() {
            return Err(OAuthError::request(
                "name the tools the task may call with tools (space-separated)",
            ));
        }
        refused.merge_evidence(TokenExchangeRefused::task(&purpose, tools.clone()));
        let agent_facts = self
            .workload(&agent.to_string())
            .await
            .map_err(OAuthError::unavailable)?;
        let mut denied = Vec::new();
        for t in &tools {
            let mut r = AuthzRequest::new(agent_facts.clone(), "start_task", t);
            r.scope = Some(purpose.clone());
            r.tool = Some(t.clone());
            if acting {
                r.actor = Some(agent.to_string());
            }
            let d = policy.evaluate_authz(&r).map_err(OAuthError::server)?;
            if d.allowed {
                policy_ids.extend(d.policy_ids);
            } else {
                denied.push(format!("{t}: {}", d.explain(PolicyKind::Authz)));
            }
        }
        if !denied.is_empty() {
            return Err(OAuthError::new(
                OAuthErrorKind::InvalidScope,
                format!(
                    "{agent} may not run a task with these tools: {}",
                    denied.join("; ")
                ),
            ));
        }
        policy_ids.sort();
        policy_ids.dedup();
        let now = self.shared.clock.unix_seconds();
        let ttl = i64::try_from(self.shared.config.exchange_token_ttl.as_secs())
            .unwrap_or(MAX_TASK_TTL)
            .min(MAX_TASK_TTL);
        let exp = (now + ttl).min(task.sub_exp).min(task.agent_exp);
        let txn = Access::new_id();
        let jti = Access::new_id();
        let mut claims = json!({
            "iss": self.issuer(),
            "aud": format!("spiffe://{}", self.shared.config.trust_domain),
            "sub": task.sub,
            "txn": txn,
            "jti": jti,
            "iat": now,
            "exp": exp,
            "scope": purpose,
            "tctx": {"purpose": purpose, "tools": tools},
            "rctx": {"req_wl": agent.to_string()},
        });
        if acting {
            claims["act"] = json!({"sub": agent.to_string()});
        }
        if let Some(iss) = task.person_issuer {
            // Whose `sub` it is: a person at a trusted identity provider.
            claims["sub_iss"] = json!(iss);
        }
        let token = self
            .token_key
            .sign(TASK_TYP, &claims)
            .map_err(OAuthError::server)?;
        let mut ev = self
            .shared
            .event(EventKind::TaskTokenIssued, Outcome::Success);
        ev.actor = Some(agent.to_string());
        ev.subject = Some(task.sub.to_string());
        ev.trace_id = Some(txn.clone());
        if !agent_facts.owner.is_empty() {
            ev.owner = Some(agent_facts.owner.clone());
        }
        ev.policy_ids = policy_ids;
        ev.decision = Some("allow".to_string());
        // The tokens (or the person's issuer) and the task gathered in `refused`,
        // and the new token.
        let gathered = refused
            .evidence_as::<TokenExchangeRefused>()
            .map_err(OAuthError::server)?;
        ev.set_evidence(gathered.task_token_issued(txn, jti, exp));
        self.shared
            .record(vec![ev])
            .await
            .map_err(|e| OAuthError::server(format!("cannot record the task: {e}")))?;
        Ok(json!({
            "access_token": token,
            "issued_token_type": TYPE_TXN_TOKEN,
            "token_type": "N_A",
            "expires_in": (exp - now).max(0),
            "scope": purpose,
        }))
    }

    /// A subject token from a trusted identity provider (`[[trusted_issuer]]`), by
    /// its `iss`; `None` when it names no trusted issuer (then it must be a JWT-SVID
    /// or an exchanged token).
    async fn person_token(&self, token: &str) -> Result<Option<PersonToken>, OAuthError> {
        use base64::Engine as _;
        if self.trusted_issuers().is_empty() {
            return Ok(None);
        }
        let Some(payload) = token.split('.').nth(1) else {
            return Ok(None);
        };
        let Some(claims) = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        else {
            return Ok(None);
        };
        let Some(iss) = claims.get("iss").and_then(Value::as_str) else {
            return Ok(None);
        };
        let Some((issuer, jwks)) = self.trusted_issuers().iter().find(|(i, _)| i == iss) else {
            return Ok(None);
        };
        let bad = |e: String| {
            OAuthError::request(format!(
                "the subject_token from the trusted issuer {issuer} is not accepted: {e}"
            ))
        };
        let header = jsonwebtoken::decode_header(token).map_err(|e| bad(e.to_string()))?;
        if matches!(
            header.alg,
            jsonwebtoken::Algorithm::HS256
                | jsonwebtoken::Algorithm::HS384
                | jsonwebtoken::Algorithm::HS512
        ) {
            return Err(bad(format!(
                "{:?} is not accepted (asymmetric keys only)",
                header.alg
            )));
        }
        let kid = header
            .kid
            .clone()
            .ok_or_else(|| bad("it has no kid".to_string()))?;
        let jwk = jwks
            .find(&kid)
            .ok_or_else(|| bad(format!("its key {kid:?} is not in the issuer's JWKS")))?;
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?;
        let mut v = jsonwebtoken::Validation::new(header.alg);
        v.set_issuer(&[issuer.as_str()]);
        let auds = self.own_audiences();
        v.set_audience(&auds);
        v.leeway = 0;
        v.required_spec_claims = ["exp", "iss", "sub", "aud"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v)
            .map_err(|e| bad(format!("{e} (its audience must be {:?})", self.issuer())))?;
        let c = data.claims;
        let sub = c
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("it has no sub".to_string()))?
            .to_string();
        let exp = c.get("exp").and_then(Value::as_i64).unwrap_or(0);
        if exp <= self.shared.clock.unix_seconds() {
            return Err(bad("it has expired".to_string()));
        }
        Ok(Some(PersonToken {
            sub,
            issuer: issuer.clone(),
            email: c
                .get("email")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            exp,
        }))
    }

    /// A task token for an agent acting for a person: only with the agent's JWT-SVID
    /// as actor, and only when the authz policy lets the agent act for that person.
    async fn person_task(
        &self,
        form: &ExchangeForm,
        person: PersonToken,
        refused: &mut lanyard_audit::Event,
    ) -> Result<Value, OAuthError> {
        refused.subject = Some(person.sub.clone());
        refused.merge_evidence(TokenExchangeRefused::person_issuer(&person.issuer));
        if form.requested_token_type != TYPE_TXN_TOKEN {
            return Err(OAuthError::request(format!(
                "a person's token (from {}) can only be exchanged for a task token (requested_token_type={TYPE_TXN_TOKEN}) by the agent acting for them",
                person.issuer
            )));
        }
        if form.actor_token.is_empty() {
            return Err(OAuthError::request(
                "a task for a person needs the agent's JWT-SVID as actor_token",
            ));
        }
        let agent = self.party(&form.actor_token, "actor", false).await?;
        refused.actor = Some(agent.id.to_string());
        let policy = self.policy().await.map_err(OAuthError::unavailable)?;
        let allowed = self
            .may_act(
                &policy,
                &agent.id,
                "act_for_person",
                Target::Person {
                    id: person.sub.clone(),
                    issuer: person.issuer.clone(),
                    email: person.email.clone(),
                },
                Vec::new(),
                &format!("{} ({})", person.sub, person.issuer),
                refused,
            )
            .await?;
        self.task_token(
            form,
            &policy,
            TaskFor {
                sub: &person.sub,
                sub_exp: person.exp,
                person_issuer: Some(&person.issuer),
                agent: &agent.id,
                agent_exp: agent.exp,
                acting: true,
            },
            allowed,
            refused,
        )
        .await
    }

    /// May `actor` act for `target` (`act_for` on a workload, `act_for_person` on a
    /// person)? Returns the permitting policies; a refusal is `invalid_request`
    /// naming the policy.
    #[allow(clippy::too_many_arguments)]
    async fn may_act(
        &self,
        policy: &lanyard_policy::CompiledPolicies,
        actor: &SpiffeId,
        action: &str,
        target: Target,
        chain: Vec<String>,
        whom: &str,
        refused: &mut lanyard_audit::Event,
    ) -> Result<Vec<String>, OAuthError> {
        let mut r = AuthzRequest::new(
            self.workload(&actor.to_string())
                .await
                .map_err(OAuthError::unavailable)?,
            action,
            "",
        );
        r.target = target;
        r.chain = Some(chain);
        let d = policy.evaluate_authz(&r).map_err(OAuthError::server)?;
        if !d.allowed {
            refused.policy_ids = d.policy_ids.clone();
            return Err(OAuthError::request(format!(
                "{actor} may not act for {whom}: {}",
                d.explain(PolicyKind::Authz)
            )));
        }
        Ok(d.policy_ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_parsing() {
        let f = match ExchangeForm::parse(
            b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=a.b.c&audience=x&audience=y&scope=r+w&foo=bar",
        ) {
            Ok(f) => f,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(f.grant_type, GRANT_TYPE);
        assert_eq!(f.audience, vec!["x", "y"]);
        assert_eq!(scopes_of(&f.scope), vec!["r", "w"]);
        let e = ExchangeForm::parse(b"scope=a&scope=b").err();
        assert_eq!(e.map(|e| e.code()), Some("invalid_request"));
    }

    #[test]
    fn chains_read_nearest_first() {
        let act = json!({"sub": "spiffe://t/b", "act": {"sub": "spiffe://t/a"}});
        assert_eq!(chain_of(Some(&act)), vec!["spiffe://t/b", "spiffe://t/a"]);
        assert!(chain_of(None).is_empty());
    }
}
