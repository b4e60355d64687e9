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
//!
//! What a request gets is decided by the pure functions of `plan` (over the
//! verified tokens, the policy and the registrations as read); this module parses
//! the form, verifies the tokens, reads those facts, and signs and records what
//! was decided.

use std::collections::BTreeSet;

use lanyard_audit::{EventKind, Outcome};
use lanyard_core::SpiffeId;
use serde_json::{Map, Value, json};

use crate::access::{Access, EXCHANGE_TYP, TASK_TYP};

mod plan;

use plan::{
    ExchangeAuthz, ExchangeFacts, ExchangePlan, Issuing, Known, PersonAuthz, PersonFacts, Refused,
    TaskPlan, TokenPlan, check_person_request, check_request, plan_exchange, plan_person_task,
};

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
            let now = self.clock.unix_seconds();
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
        match self.exchange_inner(&form).await {
            Ok(v) => Ok(v),
            Err(refused) => {
                let mut ev = self
                    .audit
                    .event(EventKind::TokenExchangeRefused, Outcome::Denied);
                refused.record_in(&mut ev);
                if let Err(err) = self.audit.record(vec![ev]).await {
                    tracing::error!(error = %err, "cannot record a refused token exchange");
                }
                Err(refused.error)
            }
        }
    }

    /// Gather the facts (the verified tokens, the policy and the registrations),
    /// decide ([`plan_exchange`]), then issue what was decided.
    async fn exchange_inner(&self, form: &ExchangeForm) -> Result<Value, Refused> {
        check_request(form).map_err(Refused::early)?;
        if let Some(person) = self
            .person_token(&form.subject_token)
            .await
            .map_err(Refused::early)?
        {
            return self.person_task(form, person).await;
        }
        let subject = self
            .party(&form.subject_token, "subject", true)
            .await
            .map_err(Refused::early)?;
        let actor = if form.actor_token.is_empty() {
            None
        } else {
            let a = self
                .party(&form.actor_token, "actor", false)
                .await
                .map_err(|e| Known::parties(&subject, None).refuse(e))?;
            Some(a)
        };
        let authz = self.exchange_authz(&subject, actor.as_ref()).await;
        let plan = plan_exchange(ExchangeFacts {
            form,
            subject: &subject,
            actor: actor.as_ref(),
            authz: &authz,
            issuing: &self.issuing(),
        })?;
        match plan {
            ExchangePlan::Token(p) => self.issue_token(p).await,
            ExchangePlan::Task(p) => self.issue_task(p).await,
        }
    }

    /// A task token for an agent acting for a person ([`plan_person_task`]).
    async fn person_task(
        &self,
        form: &ExchangeForm,
        person: PersonToken,
    ) -> Result<Value, Refused> {
        check_person_request(form, &person)?;
        let agent = self
            .party(&form.actor_token, "actor", false)
            .await
            .map_err(|e| Known::person(&person, None).refuse(e))?;
        let authz = async {
            Ok(PersonAuthz {
                policy: self.policy().await?,
                agent: self.workload(&agent.id.to_string()).await?,
            })
        }
        .await;
        let plan = plan_person_task(PersonFacts {
            form,
            person: &person,
            agent: &agent,
            authz: &authz,
            issuing: &self.issuing(),
        })?;
        self.issue_task(plan).await
    }

    /// The issuer's settings, now.
    fn issuing(&self) -> Issuing {
        Issuing {
            issuer: self.issuer(),
            trust_domain: self.trust_domain.to_string(),
            now: self.clock.unix_seconds(),
            ttl: self.exchange_token_ttl,
            max_delegation_depth: self.max_delegation_depth,
        }
    }

    /// The authz policy and the registrations of the subject and of the actor.
    async fn exchange_authz(
        &self,
        subject: &Party,
        actor: Option<&Party>,
    ) -> Result<ExchangeAuthz, crate::decision::Unavailable> {
        let policy = self.policy().await?;
        let subject_facts = self.workload(&subject.id.to_string()).await?;
        let acting = match actor {
            Some(a) if a.id != subject.id => self.workload(&a.id.to_string()).await?,
            _ => subject_facts.clone(),
        };
        Ok(ExchangeAuthz {
            policy,
            subject: subject_facts,
            acting,
        })
    }

    /// Sign the exchanged token, record it, answer.
    async fn issue_token(&self, plan: TokenPlan) -> Result<Value, Refused> {
        let jti = Access::new_id();
        let token = self
            .token_key
            .sign(EXCHANGE_TYP, &plan.claims(&jti))
            .map_err(|e| plan.known.refuse(OAuthError::server(e)))?;
        let mut ev = self
            .audit
            .event(EventKind::TokenExchanged, Outcome::Success);
        plan.grant.record_in(&mut ev);
        ev.set_evidence(plan.evidence(jti));
        self.audit.record(vec![ev]).await.map_err(|e| {
            plan.known.refuse(OAuthError::server(format!(
                "cannot record the exchange: {e}"
            )))
        })?;
        Ok(plan.answer(token))
    }

    /// Sign the task token, record it, answer.
    async fn issue_task(&self, plan: TaskPlan) -> Result<Value, Refused> {
        let txn = Access::new_id();
        let jti = Access::new_id();
        let token = self
            .token_key
            .sign(TASK_TYP, &plan.claims(&txn, &jti))
            .map_err(|e| plan.known.refuse(OAuthError::server(e)))?;
        let mut ev = self
            .audit
            .event(EventKind::TaskTokenIssued, Outcome::Success);
        plan.grant.record_in(&mut ev);
        ev.trace_id = Some(txn.clone());
        ev.set_evidence(plan.evidence(txn, jti));
        self.audit.record(vec![ev]).await.map_err(|e| {
            plan.known
                .refuse(OAuthError::server(format!("cannot record the task: {e}")))
        })?;
        Ok(plan.answer(token))
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
        if exp <= self.clock.unix_seconds() {
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
}

#[cfg(test)]
mod tests {
    use super::plan::{chain_of, scopes_of};
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
