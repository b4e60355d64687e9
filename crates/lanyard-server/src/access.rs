//! Runtime authorization: the decision core shared by the OpenID AuthZEN evaluation
//! API (HTTP) and Envoy ext_authz (gRPC), the token-signing key of exchanged and task
//! tokens, and the caches that keep decisions off the datastore's hot path.
//!
//! A decision is a pure Cedar evaluation ([`lanyard_policy`]) over the principal's
//! registration facts; its audit event goes to the group-commit queue without
//! holding up the answer (a decision changes no state).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_audit::{EventKind, Outcome};
use lanyard_ca::{KeyAlgorithm, SigningKey};
use lanyard_core::{JwtSvid, PublicJwk, SpiffeId};
use lanyard_policy::{
    AuthzRequest, CompiledPolicies, PolicyKind, Target, TaskFacts, WorkloadFacts,
};
use lanyard_store::Store;
use serde_json::{Map, Value, json};

use crate::state::{ServerError, Shared, write_private};

/// How stale the cached policy, entry index and deny-list may get before they are
/// re-read from the datastore (changes made through this server apply at once).
const REFRESH: Duration = Duration::from_secs(1);
/// Verified caller tokens kept (by value) to skip the signature check.
const MAX_CACHED_CALLERS: usize = 10_000;

/// `typ` of exchanged tokens (RFC 9068 JWT access tokens): SPIFFE validators refuse
/// them as JWT-SVIDs, and their key is not in the SPIFFE bundle.
pub const EXCHANGE_TYP: &str = "at+jwt";
/// `typ` of task (transaction) tokens.
pub const TASK_TYP: &str = "txntoken+jwt";

/// The key that signs exchanged and task tokens (`DATA_DIR/token-signing.pk8`, EC
/// P-256). Published in the OIDC JWKS, never in the SPIFFE bundle.
pub struct TokenKey {
    key: SigningKey,
    kid: String,
    jwk: PublicJwk,
    decoding: jsonwebtoken::DecodingKey,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey({})", self.kid)
    }
}

impl TokenKey {
    /// Load the key from `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, ServerError> {
        let path = dir.join("token-signing.pk8");
        let key = match std::fs::read(&path) {
            Ok(der) => SigningKey::from_pkcs8(KeyAlgorithm::EcP256, &der).map_err(|e| {
                ServerError::Other(format!(
                    "{} is not an EC P-256 PKCS#8 key ({e}); restore it from backup or remove it to make a new one",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = SigningKey::generate(KeyAlgorithm::EcP256)
                    .map_err(|e| ServerError::Other(e.to_string()))?;
                write_private(&path, k.pkcs8_der())?;
                k
            }
            Err(e) => {
                return Err(ServerError::Io(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        let spki = key.public_key_der();
        let jwk = PublicJwk::from_spki_der(&spki)
            .map_err(|e| ServerError::Other(format!("token key: {e}")))?;
        let kid = format!("lanyard-token-{}", &crate::node::sha256_hex(&spki)[..16]);
        let decoding = match &jwk {
            PublicJwk::Ec { x, y, .. } => jsonwebtoken::DecodingKey::from_ec_components(x, y)
                .map_err(|e| ServerError::Other(format!("token key: {e}")))?,
            PublicJwk::Rsa { .. } => {
                return Err(ServerError::Other(
                    "the token key must be EC P-256".to_string(),
                ));
            }
        };
        Ok(Self {
            key,
            kid,
            jwk,
            decoding,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK for the OIDC JWKS.
    pub fn jwk(&self) -> Value {
        jwk_json(&self.jwk, &self.kid)
    }

    /// Sign `claims` with header `typ`.
    pub fn sign(&self, typ: &str, claims: &Value) -> Result<String, String> {
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": typ});
        lanyard_ca::sign_compact(&self.key, &header, claims).map_err(|e| e.to_string())
    }

    /// Verify a token this key signed: signature, `typ`, `iss`, `exp`. Returns the
    /// claims.
    pub fn verify(
        &self,
        token: &str,
        typ: &str,
        issuer: &str,
        now: i64,
    ) -> Result<Map<String, Value>, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("not a compact JWT: {e}"))?;
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err("it was not issued by this server's token endpoint".to_string());
        }
        if header.typ.as_deref() != Some(typ) {
            return Err(format!(
                "its type is {:?}, expected {typ:?}",
                header.typ.unwrap_or_default()
            ));
        }
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.validate_aud = false;
        v.validate_exp = false;
        v.required_spec_claims = ["exp", "iss", "sub"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.set_issuer(&[issuer]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding, &v)
            .map_err(|e| format!("it does not verify: {e}"))?;
        let exp = data.claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        if now >= exp {
            return Err(format!("it expired at {exp} (now {now})"));
        }
        Ok(data.claims)
    }
}

/// A JWK (`use: sig`) for relying parties.
pub fn jwk_json(key: &PublicJwk, kid: &str) -> Value {
    match key {
        PublicJwk::Ec { crv, x, y } => {
            let alg = match crv.as_str() {
                "P-384" => "ES384",
                "P-521" => "ES512",
                _ => "ES256",
            };
            json!({"kty": "EC", "crv": crv, "x": x, "y": y, "kid": kid, "use": "sig", "alg": alg})
        }
        PublicJwk::Rsa { n, e } => {
            json!({"kty": "RSA", "n": n, "e": e, "kid": kid, "use": "sig", "alg": "RS256"})
        }
    }
}

/// The outcome of one runtime decision.
#[derive(Debug, Clone)]
pub struct DecisionOut {
    pub allowed: bool,
    pub policy_ids: Vec<String>,
    pub reason: String,
    /// Also the id of its audit event.
    pub decision_id: String,
}

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

/// Registration facts by SPIFFE ID, when built and at which change version.
type WorkloadIndex = (Instant, u64, Arc<HashMap<String, WorkloadFacts>>);

/// A caller authenticated by its JWT-SVID.
#[derive(Debug, Clone)]
struct CachedCaller {
    id: String,
    exp: i64,
    jti: String,
}

/// Runtime authorization state of one server.
pub struct Access {
    pub shared: Arc<Shared>,
    pub token_key: TokenKey,
    public_url: OnceLock<String>,
    callers: Mutex<HashMap<String, CachedCaller>>,
    policy_checked: Mutex<Option<Instant>>,
    workloads: RwLock<Option<WorkloadIndex>>,
    revoked: RwLock<Option<(Instant, Arc<HashSet<String>>)>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token_key", &self.token_key)
            .finish()
    }
}

/// Why a caller was not authenticated (HTTP 401).
#[derive(Debug, Clone)]
pub struct Unauthenticated(pub String);

fn random_id() -> String {
    let mut raw = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

impl Access {
    pub fn new(shared: Arc<Shared>) -> Result<Self, ServerError> {
        let token_key = TokenKey::load_or_create(&shared.config.data_dir)?;
        Ok(Self {
            shared,
            token_key,
            public_url: OnceLock::new(),
            callers: Mutex::new(HashMap::new()),
            policy_checked: Mutex::new(None),
            workloads: RwLock::new(None),
            revoked: RwLock::new(None),
        })
    }

    /// Set once the HTTP listener is bound.
    pub fn set_public_url(&self, url: String) {
        let _ = self.public_url.set(url);
    }

    /// Base URL of the HTTP listener.
    pub fn public_url(&self) -> String {
        self.public_url.get().cloned().unwrap_or_default()
    }

    /// The JWT issuer (`iss` of JWT-SVIDs and of exchanged tokens).
    pub fn issuer(&self) -> String {
        self.shared
            .ca_read()
            .map(|c| c.config().issuer())
            .unwrap_or_else(|_| format!("https://{}", self.shared.config.trust_domain))
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth2/token", self.public_url())
    }

    /// Audiences a JWT-SVID presented to this server must carry one of.
    pub fn own_audiences(&self) -> Vec<String> {
        vec![self.issuer(), self.token_endpoint()]
    }

    /// The JWKS of relying parties: JWT-SVID keys of this trust domain and the
    /// token-signing key.
    pub fn jwks(&self) -> Value {
        let mut keys = Vec::new();
        if let Ok(set) = self.shared.bundles.read()
            && let Some(b) = set.get(&self.shared.config.trust_domain)
        {
            for a in b.jwt_authorities() {
                keys.push(jwk_json(a.key(), a.kid()));
            }
        }
        keys.push(self.token_key.jwk());
        json!({ "keys": keys })
    }

    /// JWT IDs on the deny-list.
    pub async fn revoked(&self) -> Arc<HashSet<String>> {
        if let Ok(g) = self.revoked.read()
            && let Some((at, set)) = g.as_ref()
            && at.elapsed() < REFRESH
        {
            return set.clone();
        }
        let now = self.shared.clock.unix_seconds();
        let fresh: HashSet<String> = match self.shared.store.revoked_jwts(now).await {
            Ok(v) => v.into_iter().map(|r| r.jti).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the JWT deny-list; keeping the last one");
                return self
                    .revoked
                    .read()
                    .ok()
                    .and_then(|g| g.as_ref().map(|(_, s)| s.clone()))
                    .unwrap_or_default();
            }
        };
        let fresh = Arc::new(fresh);
        if let Ok(mut g) = self.revoked.write() {
            *g = Some((Instant::now(), fresh.clone()));
        }
        fresh
    }

    /// Validate a JWT-SVID addressed to this server (audience: the issuer or the
    /// token endpoint) and not revoked.
    pub async fn validate_svid(&self, token: &str) -> Result<JwtSvid, String> {
        let auds = self.own_audiences();
        let refs: Vec<&str> = auds.iter().map(String::as_str).collect();
        let svid = {
            let set = self
                .shared
                .bundles
                .read()
                .map_err(|_| "trust bundles unavailable".to_string())?;
            JwtSvid::validate(token, &refs, &set, self.shared.clock.as_ref())
                .map_err(|e| e.to_string())?
        };
        if let Some(jti) = svid.claims().get("jti").and_then(Value::as_str)
            && self.revoked().await.contains(jti)
        {
            return Err(format!("the JWT-SVID {jti} was revoked"));
        }
        Ok(svid)
    }

    /// Authenticate an enforcement point by its `Authorization: Bearer` JWT-SVID.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<String, Unauthenticated> {
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Unauthenticated(format!(
                    "send a JWT-SVID with audience {:?} as `Authorization: Bearer <token>`",
                    self.issuer()
                ))
            })?;
        let now = self.shared.clock.unix_seconds();
        let cached = self.callers.lock().ok().and_then(|c| c.get(token).cloned());
        if let Some(c) = cached
            && now < c.exp
        {
            if !c.jti.is_empty() && self.revoked().await.contains(&c.jti) {
                return Err(Unauthenticated(format!(
                    "the JWT-SVID {} was revoked",
                    c.jti
                )));
            }
            return Ok(c.id);
        }
        let svid = self
            .validate_svid(token)
            .await
            .map_err(|e| Unauthenticated(format!("the bearer JWT-SVID is not accepted: {e}")))?;
        let id = svid.spiffe_id().to_string();
        if let Ok(mut c) = self.callers.lock() {
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

    /// The active authz policy set (this server's changes apply at once; other
    /// servers' within [`REFRESH`]).
    pub async fn policy(&self) -> Result<CompiledPolicies, String> {
        let due = self
            .policy_checked
            .lock()
            .map(|g| g.is_none_or(|t| t.elapsed() >= REFRESH))
            .unwrap_or(true);
        if !due
            && let Ok(cache) = self.shared.policies.read()
            && let Some((_, p)) = cache.get(&PolicyKind::Authz)
        {
            return Ok(p.clone());
        }
        let (_, p) = crate::policy::active(&self.shared, PolicyKind::Authz)
            .await
            .map_err(|s| s.message().to_string())?;
        if let Ok(mut g) = self.policy_checked.lock() {
            *g = Some(Instant::now());
        }
        Ok(p)
    }

    /// Registration facts of every SPIFFE ID with an entry.
    async fn workloads(&self) -> Arc<HashMap<String, WorkloadFacts>> {
        let version = *self.shared.changes.borrow();
        if let Ok(g) = self.workloads.read()
            && let Some((at, v, map)) = g.as_ref()
            && *v == version
            && at.elapsed() < REFRESH * 5
        {
            return map.clone();
        }
        let entries = match self.shared.store.list_entries().await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read entries for authz; keeping the last index");
                return self
                    .workloads
                    .read()
                    .ok()
                    .and_then(|g| g.as_ref().map(|(_, _, m)| m.clone()))
                    .unwrap_or_default();
            }
        };
        let mut map: HashMap<String, WorkloadFacts> = HashMap::new();
        for e in entries {
            let id = e.spec.spiffe_id.to_string();
            let w = map.entry(id.clone()).or_insert_with(|| WorkloadFacts {
                spiffe_id: id,
                registered: true,
                ..WorkloadFacts::default()
            });
            if w.owner.is_empty() {
                w.owner = e.spec.owner.clone();
            }
            if w.environment.is_empty() {
                w.environment = e.spec.environment.clone().unwrap_or_default();
            }
            for s in &e.spec.selectors {
                let s = s.to_string();
                if !w.selectors.contains(&s) {
                    w.selectors.push(s);
                }
            }
        }
        let map = Arc::new(map);
        if let Ok(mut g) = self.workloads.write() {
            *g = Some((Instant::now(), version, map.clone()));
        }
        map
    }

    /// Facts of `id` for policy (unregistered when it has no entry).
    pub async fn workload(&self, id: &str) -> WorkloadFacts {
        self.workloads()
            .await
            .get(id)
            .cloned()
            .unwrap_or_else(|| WorkloadFacts::unregistered(id))
    }

    /// Verify a task token presented with a request.
    pub fn verify_task(&self, token: &str) -> Result<TaskFacts, String> {
        let now = self.shared.clock.unix_seconds();
        let c = self
            .token_key
            .verify(token, TASK_TYP, &self.issuer(), now)?;
        let s = |k: &str| {
            c.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let agent = c
            .get("rctx")
            .and_then(|r| r.get("req_wl"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let tools: Vec<String> = c
            .get("tctx")
            .and_then(|t| t.get("tools"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let purpose = c
            .get("tctx")
            .and_then(|t| t.get("purpose"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let sub = s("sub");
        if agent.is_empty() || s("txn").is_empty() {
            return Err("it lacks `txn` or `rctx.req_wl`".to_string());
        }
        Ok(TaskFacts {
            txn: s("txn"),
            purpose,
            tools,
            acting_for: if sub == agent { String::new() } else { sub },
            agent,
        })
    }

    /// Decide one question for `caller` (the enforcement point) and audit it.
    /// `Err` is a malformed question (the caller's fault).
    pub async fn decide(
        &self,
        caller: &str,
        via: &str,
        q: Question,
    ) -> Result<DecisionOut, String> {
        let subject = SpiffeId::new(&q.subject).map_err(|e| {
            format!(
                "subject.id {:?} is not a SPIFFE ID ({e}); the subject is the workload, e.g. spiffe://example.org/web",
                q.subject
            )
        })?;
        if q.action.is_empty() {
            return Err("action.name is missing".to_string());
        }
        if q.resource_id.is_empty() {
            return Err("resource.id is missing".to_string());
        }
        let mut context = q.context;
        let task_token = context.remove("task_token");
        let trace = context
            .get("trace_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        let principal = self.workload(&subject.to_string()).await;
        let mut ev = self
            .shared
            .event(EventKind::AuthzDecision, Outcome::Success);
        ev.actor = Some(caller.to_string());
        ev.subject = Some(subject.to_string());
        if !principal.owner.is_empty() {
            ev.owner = Some(principal.owner.clone());
        }
        ev.evidence.insert("via".into(), via.into());
        ev.evidence.insert("action".into(), q.action.clone().into());
        ev.evidence
            .insert("resource_type".into(), q.resource_type.clone().into());
        ev.evidence
            .insert("resource_id".into(), q.resource_id.clone().into());
        ev.trace_id = trace;
        let decision_id = ev.id.clone();
        let task = match task_token {
            None => None,
            Some(Value::String(t)) => match self.verify_task(&t) {
                Ok(task) => Some(task),
                Err(e) => {
                    let reason = format!("the task token is not accepted: {e}");
                    ev.outcome = Outcome::Denied;
                    ev.decision = Some("deny".to_string());
                    ev.reason = Some(reason.clone());
                    self.record_later(ev);
                    return Ok(DecisionOut {
                        allowed: false,
                        policy_ids: Vec::new(),
                        reason,
                        decision_id,
                    });
                }
            },
            Some(_) => return Err("context.task_token must be a string (a task token)".to_string()),
        };
        if let Some(t) = &task {
            ev.trace_id = Some(t.txn.clone());
            ev.evidence.insert("task_txn".into(), t.txn.clone().into());
            ev.evidence
                .insert("task_agent".into(), t.agent.clone().into());
            if !t.acting_for.is_empty() {
                ev.evidence
                    .insert("acting_for".into(), t.acting_for.clone().into());
            }
        }
        let policy = self
            .policy()
            .await
            .map_err(|e| format!("authz policy: {e}"))?;
        let req = AuthzRequest {
            principal,
            action: q.action,
            target: Target::Resource {
                id: q.resource_id,
                kind: q.resource_type,
                properties: q.resource_properties,
            },
            context,
            task,
            actor: None,
            scope: None,
            chain: None,
            tool: None,
        };
        let d = policy.evaluate_authz(&req).map_err(|e| e.to_string())?;
        let reason = d.explain(PolicyKind::Authz);
        ev.policy_ids = d.policy_ids.clone();
        ev.decision = Some(if d.allowed { "allow" } else { "deny" }.to_string());
        ev.outcome = if d.allowed {
            Outcome::Success
        } else {
            Outcome::Denied
        };
        ev.reason = Some(reason.clone());
        self.record_later(ev);
        Ok(DecisionOut {
            allowed: d.allowed,
            policy_ids: d.policy_ids,
            reason,
            decision_id,
        })
    }

    /// Append an event through the group-commit queue without waiting for it.
    pub fn record_later(&self, ev: lanyard_audit::Event) {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if let Err(e) = shared.record(vec![ev]).await {
                tracing::error!(error = %e, "cannot record an authorization decision");
            }
        });
    }

    /// A new random id (txn, jti).
    pub fn new_id() -> String {
        random_id()
    }
}

/// base64url of a SHA-256 (for token hashes in evidence).
pub fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD
        .encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref())
}
