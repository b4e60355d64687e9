//! Runtime authorization: the decision core shared by the OpenID AuthZEN evaluation
//! API (HTTP) and Envoy ext_authz (gRPC), the token-signing key of exchanged and task
//! tokens, and the caches that keep decisions off the datastore's hot path.
//!
//! A decision is a pure Cedar evaluation ([`lanyard_policy`]) over the principal's
//! registration facts; its audit event goes to the group-commit queue without
//! holding up the answer (a decision changes no state).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lanyard_ca::{KeyAlgorithm, SigningKey};
use lanyard_core::{Clock, JwtSvid, PublicJwk, TrustDomain};
use lanyard_policy::{CompiledPolicies, PolicyKind, PreparedWorkload, TaskFacts, WorkloadFacts};
use lanyard_store::{AnyStore, Store};
use serde_json::{Value, json};

use crate::fresh::{FreshCache, MAX_STALE};
use crate::handles::{AuditSink, Authority, Entries, PolicyCache, Publication};
use crate::state::{ServerError, Shared};
use lanyard_audit::{EventKind, Outcome};
pub use lanyard_authz::decision::{
    AuthnError, DecideError, DecisionOut, Question, TaskError, Unavailable,
};
use lanyard_authz::decision::{Callers, Sources, WorkloadIndex, decision_event, index_entry};
pub use lanyard_authz::token::{EXCHANGE_TYP, TASK_TYP, TokenVerifier, token_hash, verify_task};

/// How stale the cached policy, entry index and deny-list may get before they are
/// re-read from the datastore (changes made through this server apply at once).
const REFRESH: Duration = Duration::from_secs(1);

/// The token-signing key's file in the data dir (without a KEK).
pub const TOKEN_KEY_FILE: &str = "token-signing.pk8";

/// The key that signs exchanged and task tokens (`DATA_DIR/token-signing.pk8`, EC
/// P-256). Published in the OIDC JWKS, never in the SPIFFE bundle.
pub struct TokenKey {
    key: SigningKey,
    jwk: PublicJwk,
    verifier: TokenVerifier,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey({})", self.verifier.kid())
    }
}

impl TokenKey {
    /// Load the key from `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, ServerError> {
        Self::from_pkcs8(&Self::local_pkcs8(dir, true)?)
            .map_err(|e| ServerError::bad_file("the token key", &dir.join(TOKEN_KEY_FILE), e))
    }

    /// The PKCS#8 key in `dir`, or a new one (written there when `write`).
    pub fn local_pkcs8(dir: &Path, write: bool) -> Result<Vec<u8>, ServerError> {
        crate::state::read_or_generate(&dir.join(TOKEN_KEY_FILE), write, || {
            Ok(SigningKey::generate(KeyAlgorithm::EcP256)?
                .pkcs8_der()
                .to_vec())
        })
    }

    /// From an EC P-256 PKCS#8 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, ServerError> {
        let key = SigningKey::from_pkcs8(KeyAlgorithm::EcP256, der).map_err(|e| {
            ServerError::Unavailable(format!(
                "is not an EC P-256 PKCS#8 key ({e}); restore it from backup or remove it to make a new one"
            ))
        })?;
        let spki = key.public_key_der();
        let jwk = PublicJwk::from_spki_der(&spki)?;
        let kid = format!("lanyard-token-{}", &crate::node::sha256_hex(&spki)[..16]);
        let verifier = TokenVerifier::from_jwk(&kid, &jwk_json(&jwk, &kid))?;
        Ok(Self { key, jwk, verifier })
    }

    pub fn kid(&self) -> &str {
        self.verifier.kid()
    }

    /// The public key as a JWK for the OIDC JWKS.
    pub fn jwk(&self) -> Value {
        jwk_json(&self.jwk, self.kid())
    }

    /// Sign `claims` with header `typ`.
    pub fn sign(&self, typ: &str, claims: &Value) -> Result<String, lanyard_ca::CaError> {
        let header = json!({"alg": "ES256", "kid": self.kid(), "typ": typ});
        lanyard_ca::sign_compact(&self.key, &header, claims)
    }

    /// The public half (verifies what this key signed).
    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
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

/// Registration facts by SPIFFE ID, with each workload's Cedar entity, at which
/// change version.
type Workloads = (u64, WorkloadIndex);

/// Runtime authorization state of one server.
pub struct Access {
    pub token_key: TokenKey,
    pub(crate) ca: Arc<Authority>,
    pub(crate) publication: Arc<Publication>,
    pub(crate) audit: Arc<AuditSink>,
    pub(crate) policies: Arc<PolicyCache>,
    pub(crate) entries: Arc<Entries>,
    /// Read for the stored authz policy and the JWT deny-list.
    pub(crate) store: AnyStore,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) trust_domain: TrustDomain,
    /// Lifetime of exchanged tokens, and how deep delegation chains may go.
    pub(crate) exchange_token_ttl: std::time::Duration,
    pub(crate) max_delegation_depth: u32,
    public_url: OnceLock<String>,
    callers: Callers,
    /// The authz policy set and its stored version.
    policy: FreshCache<(i64, CompiledPolicies)>,
    workloads: FreshCache<Workloads>,
    revoked: FreshCache<HashSet<String>>,
    /// Identity providers trusted for person tokens: (issuer, JWKS).
    trusted: Vec<(String, jsonwebtoken::jwk::JwkSet)>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token_key", &self.token_key)
            .finish()
    }
}

impl Access {
    /// The runtime authorization state over `shared`'s handles.
    pub fn new(shared: &Shared) -> Result<Self, ServerError> {
        let token_key = match &shared.token_key_pkcs8 {
            Some(der) => TokenKey::from_pkcs8(der)?,
            None => TokenKey::load_or_create(&shared.config.data_dir)?,
        };
        let mut trusted = Vec::new();
        for (issuer, path) in &shared.config.trusted_issuers {
            let what = format!("trusted_issuer {issuer}: jwks_file");
            let text = std::fs::read(path)
                .map_err(|e| ServerError::bad_file(&what, path, format!("cannot be read: {e}")))?;
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&text).map_err(|e| {
                ServerError::bad_file(
                    &what,
                    path,
                    format!("is not a JWKS ({e}); give the provider's jwks_uri document"),
                )
            })?;
            trusted.push((issuer.clone(), set));
        }
        Ok(Self {
            trusted,
            token_key,
            ca: shared.ca.clone(),
            publication: shared.publication.clone(),
            audit: shared.audit.clone(),
            policies: shared.policies.clone(),
            entries: shared.entries.clone(),
            store: shared.store.clone(),
            clock: shared.clock.clone(),
            trust_domain: shared.config.trust_domain.clone(),
            exchange_token_ttl: shared.config.exchange_token_ttl,
            max_delegation_depth: shared.config.max_delegation_depth,
            public_url: OnceLock::new(),
            callers: Callers::default(),
            policy: FreshCache::new("authz policy", REFRESH, MAX_STALE),
            workloads: FreshCache::new("entry index", REFRESH * 5, MAX_STALE),
            revoked: FreshCache::new("JWT deny-list", REFRESH, MAX_STALE),
        })
    }

    /// Another server changed the authz policy: read it again on the next decision.
    pub fn invalidate_policy(&self) {
        self.policy.invalidate();
    }

    /// Another server changed the deny-list: read it again on the next check.
    pub fn invalidate_deny_list(&self) {
        self.revoked.invalidate();
    }

    /// Identity providers trusted for person tokens: (issuer, JWKS).
    pub fn trusted_issuers(&self) -> &[(String, jsonwebtoken::jwk::JwkSet)] {
        &self.trusted
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
        self.ca
            .read()
            .map(|c| c.config().issuer())
            .unwrap_or_else(|_| format!("https://{}", self.trust_domain))
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
        if let Ok(set) = self.publication.bundles().read()
            && let Some(b) = set.get(&self.trust_domain)
        {
            for a in b.jwt_authorities() {
                keys.push(jwk_json(a.key(), a.kid()));
            }
        }
        keys.push(self.token_key.jwk());
        json!({ "keys": keys })
    }

    /// JWT IDs on the deny-list. `Err` (fail closed): it cannot be read and the last
    /// copy is too old.
    pub async fn revoked(&self) -> Result<Arc<HashSet<String>>, Unavailable> {
        let now = self.clock.unix_seconds();
        self.revoked
            .get(|| async {
                self.store
                    .revoked_jwts(now)
                    .await
                    .map(|v| v.into_iter().map(|r| r.jti).collect())
            })
            .await
    }

    /// Validate a JWT-SVID addressed to this server (audience: the issuer or the
    /// token endpoint) and not revoked.
    pub async fn validate_svid(&self, token: &str) -> Result<JwtSvid, AuthnError> {
        let revoked = self.revoked().await?;
        lanyard_authz::decision::validate_svid(
            token,
            &self.own_audiences(),
            self.publication.bundles(),
            self.clock.as_ref(),
            &|jti| revoked.contains(jti),
        )
        .map_err(|e| AuthnError::Unauthenticated(e.to_string()))
    }

    /// Authenticate an enforcement point by its `Authorization: Bearer` JWT-SVID.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<String, AuthnError> {
        let revoked = self.revoked().await?;
        self.callers.authenticate(
            authorization,
            &self.own_audiences(),
            self.publication.bundles(),
            self.clock.as_ref(),
            &|jti| revoked.contains(jti),
        )
    }

    /// The active authz policy set (this server's changes apply at once; other
    /// servers' within [`REFRESH`]). `Err` (fail closed): it cannot be read.
    pub async fn policy(&self) -> Result<CompiledPolicies, Unavailable> {
        // A `policy set` through this server updates the shared compiled cache.
        let known = self.policies.version(PolicyKind::Authz);
        let p = self
            .policy
            .get_where(
                |(v, _)| known.is_none_or(|k| k == *v),
                || async {
                    crate::policy::active(&self.store, &self.policies, PolicyKind::Authz)
                        .await
                        .map_err(|s| s.message().to_string())
                },
            )
            .await?;
        Ok(p.1.clone())
    }

    /// Registration facts of every SPIFFE ID with an entry.
    async fn workloads(&self) -> Result<Arc<Workloads>, Unavailable> {
        let version = self.entries.version();
        self.workloads
            .get_where(
                |(v, _)| *v == version,
                || async {
                    // The entries as the agent API's index last read them: one
                    // datastore read per change serves both.
                    let index = self.entries.current().await?;
                    let mut map: HashMap<String, WorkloadFacts> = HashMap::new();
                    for e in index.1.entries() {
                        index_entry(
                            &mut map,
                            &e.spec.spiffe_id.to_string(),
                            &e.spec.owner,
                            e.spec.environment.as_deref().unwrap_or_default(),
                            e.spec.selectors.iter().map(ToString::to_string),
                        );
                    }
                    // Each workload's Cedar entity is built here, once per change.
                    let prepared = WorkloadIndex::build(map).map_err(|e| {
                        Unavailable(format!("the entries cannot be prepared for policy: {e}"))
                    })?;
                    // Keyed by the change the index was built at (it may be newer
                    // than `version`), so that the next call does not rebuild it.
                    Ok::<_, Unavailable>((index.0, prepared))
                },
            )
            .await
    }

    /// Facts of `id` for policy (unregistered when it has no entry). `Err` (fail
    /// closed): the entry index cannot be read.
    pub async fn workload(&self, id: &str) -> Result<WorkloadFacts, Unavailable> {
        Ok(self.workloads().await?.1.facts(id))
    }

    /// [`Self::workload`] with its Cedar entity, built when the entries changed.
    pub async fn prepared_workload(&self, id: &str) -> Result<PreparedWorkload, DecideError> {
        self.workloads().await?.1.get(id)
    }

    /// Verify a task token presented with a request (not revoked).
    pub async fn verify_task(&self, token: &str) -> Result<TaskFacts, TaskError> {
        let revoked = self
            .revoked()
            .await
            .map_err(|e| TaskError::Unavailable(e.0))?;
        verify_task(
            self.token_key.verifier(),
            &self.issuer(),
            token,
            self.clock.unix_seconds(),
            &|jti| revoked.contains(jti),
        )
        .map_err(TaskError::Rejected)
    }

    /// Decide one question for `caller` (the enforcement point) and audit it.
    /// `Err` is a malformed question (the caller's fault).
    pub async fn decide(
        &self,
        caller: &str,
        via: &str,
        q: Question,
    ) -> Result<DecisionOut, DecideError> {
        let rec = lanyard_authz::decide(self, q).await?;
        let mut ev = decision_event(
            self.audit.event(EventKind::AuthzDecision, Outcome::Denied),
            caller,
            via,
            &rec,
        );
        // The decision id the caller gets is the id of its evidence.
        ev.id = rec.out.decision_id.clone();
        self.record_later(ev);
        Ok(rec.out)
    }

    /// Append an event through the group-commit queue without waiting for it.
    pub fn record_later(&self, ev: lanyard_audit::Event) {
        let audit = self.audit.clone();
        tokio::spawn(async move {
            if let Err(e) = audit.record(vec![ev]).await {
                tracing::error!(error = %e, "cannot record an authorization decision");
            }
        });
    }

    /// A new random id (txn, jti).
    pub fn new_id() -> String {
        lanyard_authz::decision::random_id()
    }
}

impl Sources for Access {
    async fn workload(&self, id: &str) -> Result<PreparedWorkload, DecideError> {
        self.prepared_workload(id).await
    }
    async fn policy(&self) -> Result<CompiledPolicies, Unavailable> {
        Access::policy(self).await
    }
    async fn verify_task(&self, token: &str) -> Result<TaskFacts, TaskError> {
        Access::verify_task(self, token).await
    }
}
