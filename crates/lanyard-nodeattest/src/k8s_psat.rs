//! `k8s_psat`: Kubernetes projected service-account tokens.
//!
//! The agent runs as a pod whose service account token is projected into a file
//! with the server's audience (default [`DEFAULT_AUDIENCE`]). The server validates the
//! token in one of two ways:
//!
//! * offline, against the cluster's service-account issuer JWKS
//!   ([`PsatCluster::verify`]: signature, issuer, audience, times, with the shared
//!   rules of [`crate::oidc`]);
//! * with a TokenReview sent to the API server ([`TokenReview::request`], then
//!   [`PsatCluster::verify_reviewed`] with the response): the API server vouches for
//!   the token, and its answer is cross-checked against the token's claims.
//!
//! Either way, the token must be bound to a pod and a node (the `kubernetes.io`
//! claims; node binding needs Kubernetes 1.30 or later), its service account must be
//! allowed (`namespace:name`), and the node is admitted as
//! `/lanyard/agent/k8s_psat/<cluster>/<node uid>` with SPIRE's selectors
//! (`k8s_psat:cluster:…`, `k8s_psat:agent_ns:…`, `k8s_psat:agent_sa:…`,
//! `k8s_psat:agent_pod_name:…`, `k8s_psat:agent_pod_uid:…`,
//! `k8s_psat:agent_node_name:…`, `k8s_psat:agent_node_uid:…`).
//!
//! Projected tokens live for their `expirationSeconds` (at least 10 minutes, often
//! an hour) and the kubelet replaces them at 80 % of that, so the default age and
//! lifetime limits here are 1 h and 24 h. With replay protection a token attests
//! once: an agent restarting before the kubelet rotated its token is refused until
//! then, so give the projected volume a short `expirationSeconds` (600).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lanyard_core::{Clock, SpiffeId, TrustDomain, check_agent_id};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::jwks::Jwks;
use crate::jws::UnverifiedToken;
use crate::oidc::{PolicyError, TokenPolicy, TokenRefusal, verify_parsed};
use crate::replay::ReplayKey;

/// The attestor's name and selector type.
pub const NAME: &str = "k8s_psat";
/// The audience the agent's projected token is requested for, by default.
pub const DEFAULT_AUDIENCE: &str = "lanyard-server";
/// Where the agent reads its projected token, by default.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/tokens/lanyard-agent";
/// Default maximum age of a projected token.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60 * 60);
/// Default maximum remaining lifetime of a projected token.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The TokenReview `apiVersion`.
pub const TOKEN_REVIEW_API_VERSION: &str = "authentication.k8s.io/v1";
/// TokenReview `user.extra` keys with the pod and node a token is bound to.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// See [`EXTRA_POD_NAME`].
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// See [`EXTRA_POD_NAME`].
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// See [`EXTRA_POD_NAME`].
pub const EXTRA_NODE_UID: &str = "authentication.kubernetes.io/node-uid";

/// Why a cluster configuration is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PsatConfigError {
    /// The cluster name cannot be part of an agent ID or selector.
    #[error(
        "the k8s_psat cluster name {0:?} is invalid: use letters, digits, '.', '-' and '_' (it becomes part of agent IDs: /lanyard/agent/k8s_psat/<cluster>/<node uid>)"
    )]
    BadClusterName(String),
    /// An allowed service account is not `namespace:name`.
    #[error("the allowed service account {0:?} is not namespace:name (e.g. lanyard:lanyard-agent)")]
    BadServiceAccount(String),
    /// No service account is allowed.
    #[error(
        "cluster {0:?} allows no service account; list the agent's as namespace:name (e.g. lanyard:lanyard-agent) in service_accounts"
    )]
    NoServiceAccounts(String),
    /// Issuer or audience invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Why a projected token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PsatRefusal {
    /// The token itself was refused (structure, signature, issuer, audience, time).
    #[error(transparent)]
    Token(#[from] TokenRefusal),
    /// The `sub` or `kubernetes.io` claims are missing or inconsistent.
    #[error(
        "the token is not a projected service-account token bound to a pod: {0}; project a token with serviceAccountToken in the agent pod's volumes"
    )]
    NotBound(String),
    /// The token is not bound to a node.
    #[error(
        "the token has no node binding (kubernetes.io.node); Kubernetes 1.30 or later adds it to projected tokens (ServiceAccountTokenPodNodeInfo), and the agent ID needs the node's UID"
    )]
    NoNodeBinding,
    /// The service account is not allowed.
    #[error(
        "service account {got} of cluster {cluster:?} is not allowed to attest; allowed: {}; add it to the cluster's service_accounts or run the agent under an allowed one",
        allowed.join(", ")
    )]
    ServiceAccountNotAllowed {
        /// The cluster.
        cluster: String,
        /// `namespace:name`.
        got: String,
        /// The allow-list.
        allowed: Vec<String>,
    },
    /// A value cannot be part of the agent ID.
    #[error(
        "the node UID {0:?} cannot be part of an agent ID (only letters, digits, '.', '-', '_')"
    )]
    BadNodeUid(String),
    /// The API server did not authenticate the token.
    #[error(
        "the Kubernetes API server did not authenticate the token{}",
        if error.is_empty() { String::new() } else { format!(": {error}") }
    )]
    NotAuthenticated {
        /// The TokenReview's `status.error`.
        error: String,
    },
    /// The TokenReview did not confirm the audience.
    #[error(
        "the TokenReview did not confirm audience {want:?} (it returned {got:?}); the token was requested for another audience"
    )]
    ReviewAudience {
        /// The expected audience.
        want: String,
        /// The audiences the review returned.
        got: Vec<String>,
    },
    /// The TokenReview's user differs from the token's claims.
    #[error(
        "the TokenReview says {field} is {review:?} but the token says {token:?}; the review does not describe this token"
    )]
    ReviewMismatch {
        /// What differs.
        field: &'static str,
        /// From the review.
        review: String,
        /// From the token.
        token: String,
    },
}

impl PsatRefusal {
    /// A stable short code for evidence events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Token(t) => t.reason(),
            Self::NotBound(_) => "not_pod_bound",
            Self::NoNodeBinding => "no_node_binding",
            Self::ServiceAccountNotAllowed { .. } => "service_account_not_allowed",
            Self::BadNodeUid(_) => "bad_node_uid",
            Self::NotAuthenticated { .. } => "token_review_not_authenticated",
            Self::ReviewAudience { .. } => "token_review_audience",
            Self::ReviewMismatch { .. } => "token_review_mismatch",
        }
    }

    /// See [`TokenRefusal::wants_jwks_refresh`].
    pub fn wants_jwks_refresh(&self) -> bool {
        matches!(self, Self::Token(t) if t.wants_jwks_refresh())
    }

    /// Whether the evidence is unreadable (gRPC `InvalidArgument`) rather than not
    /// proving enough (`PermissionDenied`).
    pub fn is_malformed(&self) -> bool {
        matches!(self, Self::Token(t) if t.is_malformed())
    }
}

/// The identity claims of a projected service-account token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsatClaims {
    /// Namespace of the pod and service account.
    pub namespace: String,
    /// Service account name.
    pub service_account_name: String,
    /// Service account UID.
    pub service_account_uid: Option<String>,
    /// Pod name.
    pub pod_name: String,
    /// Pod UID.
    pub pod_uid: String,
    /// Node name (Kubernetes 1.30+).
    pub node_name: Option<String>,
    /// Node UID (Kubernetes 1.30+).
    pub node_uid: Option<String>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

impl PsatClaims {
    /// Read the `sub` and `kubernetes.io` claims and check they agree.
    pub fn from_claims(claims: &Map<String, Value>) -> Result<Self, PsatRefusal> {
        let k = claims
            .get("kubernetes.io")
            .ok_or_else(|| PsatRefusal::NotBound("there is no \"kubernetes.io\" claim".into()))?;
        let need = |path: &[&str]| {
            str_at(k, path).map(str::to_string).ok_or_else(|| {
                PsatRefusal::NotBound(format!("kubernetes.io.{} is missing", path.join(".")))
            })
        };
        let namespace = need(&["namespace"])?;
        let service_account_name = need(&["serviceaccount", "name"])?;
        let pod_name = need(&["pod", "name"])?;
        let pod_uid = need(&["pod", "uid"])?;
        let opt = |path: &[&str]| str_at(k, path).map(str::to_string);
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| PsatRefusal::NotBound("there is no \"sub\" claim".into()))?;
        let want_sub = service_account_username(&namespace, &service_account_name);
        if sub != want_sub {
            return Err(PsatRefusal::NotBound(format!(
                "\"sub\" is {sub:?} but the kubernetes.io claims name {want_sub:?}"
            )));
        }
        Ok(Self {
            namespace,
            service_account_name,
            service_account_uid: opt(&["serviceaccount", "uid"]),
            pod_name,
            pod_uid,
            node_name: opt(&["node", "name"]),
            node_uid: opt(&["node", "uid"]),
        })
    }

    /// `namespace:name` of the service account.
    pub fn service_account(&self) -> String {
        format!("{}:{}", self.namespace, self.service_account_name)
    }
}

/// The username Kubernetes gives a service account: `system:serviceaccount:NS:NAME`.
pub fn service_account_username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// A node the `k8s_psat` attestor admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsatAttestation {
    /// `/lanyard/agent/k8s_psat/<cluster>/<node uid>`.
    pub agent_id: SpiffeId,
    /// SPIRE's `k8s_psat` selectors.
    pub selectors: Vec<lanyard_core::Selector>,
    /// The token's identity claims.
    pub claims: PsatClaims,
    /// Remember until [`Self::expires_at`] in the replay cache.
    pub replay_key: ReplayKey,
    /// The token's `exp`.
    pub expires_at: i64,
}

/// One cluster the server admits agents from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsatCluster {
    name: String,
    allowed: BTreeSet<String>,
    policy: TokenPolicy,
}

fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

impl PsatCluster {
    /// A cluster called `name` whose service-account tokens are issued by `issuer`
    /// (the API server's `--service-account-issuer`) for `audience` (usually
    /// [`DEFAULT_AUDIENCE`]), admitting the service accounts `allowed`
    /// (`namespace:name`).
    pub fn new(
        name: &str,
        issuer: &str,
        audience: &str,
        allowed: &[&str],
    ) -> Result<Self, PsatConfigError> {
        if !is_segment(name) {
            return Err(PsatConfigError::BadClusterName(name.to_string()));
        }
        if allowed.is_empty() {
            return Err(PsatConfigError::NoServiceAccounts(name.to_string()));
        }
        let mut set = BTreeSet::new();
        for sa in allowed {
            match sa.split_once(':') {
                Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains(':') => {
                    set.insert((*sa).to_string());
                }
                _ => return Err(PsatConfigError::BadServiceAccount((*sa).to_string())),
            }
        }
        let policy = TokenPolicy::new(issuer, audience)?
            .with_max_age(DEFAULT_MAX_AGE)
            .with_max_lifetime(DEFAULT_MAX_LIFETIME);
        Ok(Self {
            name: name.to_string(),
            allowed: set,
            policy,
        })
    }

    /// Replace the token policy (e.g. other age limits); its issuer and audience are
    /// the cluster's.
    pub fn with_policy(mut self, policy: TokenPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The token policy.
    pub fn policy(&self) -> &TokenPolicy {
        &self.policy
    }

    /// The audience tokens must carry.
    pub fn audience(&self) -> &str {
        self.policy.audience()
    }

    /// Verify `token` offline with the cluster issuer's `jwks`.
    pub fn verify(
        &self,
        token: &str,
        jwks: &Jwks,
        td: &TrustDomain,
        clock: &dyn Clock,
    ) -> Result<PsatAttestation, PsatRefusal> {
        let parsed = UnverifiedToken::parse(token)?;
        let verified = verify_parsed(parsed, &self.policy, jwks, clock.unix_seconds())?;
        self.admit(
            verified.claims(),
            verified.replay_key(),
            verified.expires_at(),
            td,
        )
    }

    /// Verify `token` with the API server's answer to a TokenReview of it: the
    /// review must authenticate it for the cluster's audience, its user and extra
    /// fields must agree with the token's claims, and the token's issuer, times
    /// and binding are checked as offline (only the signature is the API server's
    /// word).
    pub fn verify_reviewed(
        &self,
        token: &str,
        review: &TokenReview,
        td: &TrustDomain,
        clock: &dyn Clock,
    ) -> Result<PsatAttestation, PsatRefusal> {
        let reviewed = interpret_token_review(review, self.audience())?;
        let parsed = UnverifiedToken::parse(token)?;
        let claims = parsed.claims();
        let times = self.policy.check_claims(claims, clock.unix_seconds())?;
        let psat = PsatClaims::from_claims(claims)?;
        let token_user = service_account_username(&psat.namespace, &psat.service_account_name);
        if reviewed.username != token_user {
            return Err(PsatRefusal::ReviewMismatch {
                field: "the user",
                review: reviewed.username,
                token: token_user,
            });
        }
        let pairs = [
            ("the pod name", &reviewed.pod_name, Some(&psat.pod_name)),
            ("the pod UID", &reviewed.pod_uid, Some(&psat.pod_uid)),
            (
                "the node name",
                &reviewed.node_name,
                psat.node_name.as_ref(),
            ),
            ("the node UID", &reviewed.node_uid, psat.node_uid.as_ref()),
        ];
        for (field, from_review, from_token) in pairs {
            if let Some(r) = from_review
                && Some(r) != from_token
            {
                return Err(PsatRefusal::ReviewMismatch {
                    field,
                    review: r.clone(),
                    token: from_token.cloned().unwrap_or_default(),
                });
            }
        }
        let key = ReplayKey::for_token(
            parsed.issuer().unwrap_or(""),
            claims.get("jti").and_then(Value::as_str),
            parsed.token(),
        );
        self.admit(claims, key, times.expires_at, td)
    }

    fn admit(
        &self,
        claims: &Map<String, Value>,
        replay_key: ReplayKey,
        expires_at: i64,
        td: &TrustDomain,
    ) -> Result<PsatAttestation, PsatRefusal> {
        let psat = PsatClaims::from_claims(claims)?;
        let sa = psat.service_account();
        if !self.allowed.contains(&sa) {
            return Err(PsatRefusal::ServiceAccountNotAllowed {
                cluster: self.name.clone(),
                got: sa,
                allowed: self.allowed.iter().cloned().collect(),
            });
        }
        let (Some(node_name), Some(node_uid)) = (&psat.node_name, &psat.node_uid) else {
            return Err(PsatRefusal::NoNodeBinding);
        };
        if !is_segment(node_uid) {
            return Err(PsatRefusal::BadNodeUid(node_uid.clone()));
        }
        let path = format!("/lanyard/agent/{NAME}/{}/{node_uid}", self.name);
        let agent_id = SpiffeId::from_parts(td, &path)
            .map_err(|_| PsatRefusal::BadNodeUid(node_uid.clone()))?;
        check_agent_id(&agent_id, td).map_err(|_| PsatRefusal::BadNodeUid(node_uid.clone()))?;
        let mut selectors = Vec::new();
        for (name, value) in [
            ("cluster", self.name.as_str()),
            ("agent_ns", psat.namespace.as_str()),
            ("agent_sa", psat.service_account_name.as_str()),
            ("agent_pod_name", psat.pod_name.as_str()),
            ("agent_pod_uid", psat.pod_uid.as_str()),
            ("agent_node_name", node_name.as_str()),
            ("agent_node_uid", node_uid.as_str()),
        ] {
            let v = crate::claims::encode_selector_value(value);
            if let Ok(s) = lanyard_core::Selector::from_parts(NAME, &format!("{name}:{v}")) {
                selectors.push(s);
            }
        }
        selectors.sort();
        Ok(PsatAttestation {
            agent_id,
            selectors,
            claims: psat,
            replay_key,
            expires_at,
        })
    }
}

/// A TokenReview (`authentication.k8s.io/v1`), as sent and as returned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenReview {
    /// `authentication.k8s.io/v1`.
    #[serde(default)]
    pub api_version: String,
    /// `TokenReview`.
    #[serde(default)]
    pub kind: String,
    /// What to review.
    #[serde(default)]
    pub spec: TokenReviewSpec,
    /// The API server's answer (absent in requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TokenReviewStatus>,
}

/// `spec` of a TokenReview.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenReviewSpec {
    /// The token.
    #[serde(default)]
    pub token: String,
    /// The audiences the token must be for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
}

/// `status` of a TokenReview.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenReviewStatus {
    /// Whether the token is valid.
    #[serde(default)]
    pub authenticated: bool,
    /// Who the token authenticates.
    #[serde(default)]
    pub user: TokenReviewUser,
    /// The audiences of the request the token is valid for.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Why the token is not valid.
    #[serde(default)]
    pub error: String,
}

/// `status.user` of a TokenReview.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenReviewUser {
    /// `system:serviceaccount:NS:NAME` for service-account tokens.
    #[serde(default)]
    pub username: String,
    /// The service account's UID.
    #[serde(default)]
    pub uid: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Extra attributes (pod and node binding).
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl TokenReview {
    /// The request to POST to `/apis/authentication.k8s.io/v1/tokenreviews`.
    pub fn request(token: &str, audience: &str) -> Self {
        Self {
            api_version: TOKEN_REVIEW_API_VERSION.to_string(),
            kind: "TokenReview".to_string(),
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: vec![audience.to_string()],
            },
            status: None,
        }
    }

    /// Parse the API server's response body.
    pub fn parse(body: &[u8]) -> Result<Self, PsatRefusal> {
        serde_json::from_slice(body).map_err(|e| PsatRefusal::NotAuthenticated {
            error: format!("the TokenReview response is not valid JSON: {e}"),
        })
    }
}

/// What a TokenReview confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewedServiceAccount {
    /// `system:serviceaccount:NS:NAME`.
    pub username: String,
    /// Namespace.
    pub namespace: String,
    /// Service account name.
    pub name: String,
    /// Pod name from `extra`, if given.
    pub pod_name: Option<String>,
    /// Pod UID from `extra`, if given.
    pub pod_uid: Option<String>,
    /// Node name from `extra`, if given.
    pub node_name: Option<String>,
    /// Node UID from `extra`, if given.
    pub node_uid: Option<String>,
}

/// Interpret a TokenReview response: authenticated, for `audience`, of a service
/// account.
pub fn interpret_token_review(
    review: &TokenReview,
    audience: &str,
) -> Result<ReviewedServiceAccount, PsatRefusal> {
    let Some(status) = &review.status else {
        return Err(PsatRefusal::NotAuthenticated {
            error: "the TokenReview response has no status".to_string(),
        });
    };
    if !status.authenticated {
        return Err(PsatRefusal::NotAuthenticated {
            error: status.error.clone(),
        });
    }
    if !status.audiences.iter().any(|a| a == audience) {
        return Err(PsatRefusal::ReviewAudience {
            want: audience.to_string(),
            got: status.audiences.clone(),
        });
    }
    let username = status.user.username.clone();
    let (namespace, name) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains(':'))
        .map(|(ns, n)| (ns.to_string(), n.to_string()))
        .ok_or_else(|| {
            PsatRefusal::NotBound(format!(
                "the TokenReview user {username:?} is not a service account"
            ))
        })?;
    let extra = |k: &str| {
        status
            .user
            .extra
            .get(k)
            .and_then(|v| v.first())
            .filter(|s| !s.is_empty())
            .cloned()
    };
    Ok(ReviewedServiceAccount {
        username,
        namespace,
        name,
        pod_name: extra(EXTRA_POD_NAME),
        pod_uid: extra(EXTRA_POD_UID),
        node_name: extra(EXTRA_NODE_NAME),
        node_uid: extra(EXTRA_NODE_UID),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::testutil::{TestKey, jwks_doc, sign_token, unsigned_token};
    use lanyard_core::FakeClock;
    use serde_json::json;

    const ISS: &str = "https://kubernetes.default.svc.cluster.local";
    const NOW: i64 = 1_800_000_000;
    const NODE_UID: &str = "5dbb7b21-65fe-11e9-b1b0-0800277ac80f";

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn clock() -> FakeClock {
        FakeClock::at(NOW)
    }

    fn cluster() -> PsatCluster {
        PsatCluster::new("prod-eu", ISS, DEFAULT_AUDIENCE, &["lanyard:lanyard-agent"]).unwrap()
    }

    /// The claim set of a projected token as Kubernetes 1.30+ issues it.
    fn claims() -> Value {
        json!({
            "aud": [DEFAULT_AUDIENCE], "exp": NOW + 3000, "iat": NOW - 600, "nbf": NOW - 600,
            "iss": ISS, "jti": "0b8a6c4e-2d46-4f3a-9e5b-1d2c3b4a5f60",
            "kubernetes.io": {
                "namespace": "lanyard",
                "node": {"name": "worker-1", "uid": NODE_UID},
                "pod": {"name": "lanyard-agent-v5wgr", "uid": "79261129-6b60-11e9-9054-0800277ac80f"},
                "serviceaccount": {"name": "lanyard-agent", "uid": "0d5b1e4a-1111-2222-3333-444455556666"},
                "warnafter": NOW + 2400
            },
            "sub": "system:serviceaccount:lanyard:lanyard-agent"
        })
    }

    fn keys() -> (TestKey, Jwks) {
        let k = TestKey::rsa();
        let j = Jwks::parse(&jwks_doc(&[k.jwk(Some("sa-1"), Some("RS256"))])).unwrap();
        (k, j)
    }

    fn token(k: &TestKey, c: &Value) -> String {
        sign_token(k, &json!({"alg":"RS256","kid":"sa-1"}), c)
    }

    #[test]
    fn offline_verification_admits_the_node() {
        let (k, j) = keys();
        let a = cluster()
            .verify(&token(&k, &claims()), &j, &td(), &clock())
            .unwrap();
        assert_eq!(
            a.agent_id.to_string(),
            format!("spiffe://example.org/lanyard/agent/k8s_psat/prod-eu/{NODE_UID}")
        );
        let sel: Vec<String> = a.selectors.iter().map(ToString::to_string).collect();
        assert_eq!(
            sel,
            [
                "k8s_psat:agent_node_name:worker-1".to_string(),
                format!("k8s_psat:agent_node_uid:{NODE_UID}"),
                "k8s_psat:agent_ns:lanyard".to_string(),
                "k8s_psat:agent_pod_name:lanyard-agent-v5wgr".to_string(),
                "k8s_psat:agent_pod_uid:79261129-6b60-11e9-9054-0800277ac80f".to_string(),
                "k8s_psat:agent_sa:lanyard-agent".to_string(),
                "k8s_psat:cluster:prod-eu".to_string(),
            ]
        );
        assert_eq!(a.expires_at, NOW + 3000);
        assert_eq!(a.claims.service_account(), "lanyard:lanyard-agent");
        assert_eq!(
            a.claims.service_account_uid.as_deref(),
            Some("0d5b1e4a-1111-2222-3333-444455556666")
        );
        assert_eq!(
            a.replay_key,
            ReplayKey::for_token(
                ISS,
                Some("0b8a6c4e-2d46-4f3a-9e5b-1d2c3b4a5f60"),
                &token(&k, &claims())
            )
        );
    }

    #[test]
    fn refusals() {
        let (k, j) = keys();
        let run = |c: Value| cluster().verify(&token(&k, &c), &j, &td(), &clock());
        let mut c = claims();
        c["aud"] = json!(["https://kubernetes.default.svc"]);
        assert_eq!(run(c).unwrap_err().reason(), "wrong_audience");

        let mut c = claims();
        c["kubernetes.io"]["serviceaccount"]["name"] = json!("default");
        c["sub"] = json!("system:serviceaccount:lanyard:default");
        let e = run(c).unwrap_err();
        assert_eq!(e.reason(), "service_account_not_allowed");
        assert!(e.to_string().contains("lanyard:lanyard-agent"), "{e}");

        let mut c = claims();
        c["sub"] = json!("system:serviceaccount:kube-system:lanyard-agent");
        assert_eq!(run(c).unwrap_err().reason(), "not_pod_bound");

        let mut c = claims();
        c["kubernetes.io"].as_object_mut().unwrap().remove("pod");
        assert_eq!(run(c).unwrap_err().reason(), "not_pod_bound");

        let mut c = claims();
        c.as_object_mut().unwrap().remove("kubernetes.io");
        assert_eq!(run(c).unwrap_err().reason(), "not_pod_bound");

        let mut c = claims();
        c["kubernetes.io"].as_object_mut().unwrap().remove("node");
        let e = run(c).unwrap_err();
        assert_eq!(e, PsatRefusal::NoNodeBinding);
        assert!(e.to_string().contains("1.30"));

        let mut c = claims();
        c["kubernetes.io"]["node"]["uid"] = json!("../../server");
        assert_eq!(run(c).unwrap_err().reason(), "bad_node_uid");

        // Legacy secret-based tokens have no exp.
        let legacy = json!({"iss": ISS, "aud": [DEFAULT_AUDIENCE],
            "sub": "system:serviceaccount:lanyard:lanyard-agent",
            "kubernetes.io": claims()["kubernetes.io"].clone()});
        assert_eq!(run(legacy).unwrap_err().reason(), "missing_claim");

        let mut c = claims();
        c["exp"] = json!(NOW - 1);
        assert_eq!(run(c).unwrap_err().reason(), "expired");

        let mut c = claims();
        c["iss"] = json!("https://other-cluster");
        assert_eq!(run(c).unwrap_err().reason(), "wrong_issuer");

        let e = cluster()
            .verify(
                &sign_token(&k, &json!({"alg":"RS256","kid":"rotated"}), &claims()),
                &j,
                &td(),
                &clock(),
            )
            .unwrap_err();
        assert!(e.wants_jwks_refresh());
        let e = cluster()
            .verify("not.a.token", &j, &td(), &clock())
            .unwrap_err();
        assert!(e.is_malformed(), "{e:?}");
        assert!(!PsatRefusal::NoNodeBinding.is_malformed());
        let forged = sign_token(
            &TestKey::rsa_other(),
            &json!({"alg":"RS256","kid":"sa-1"}),
            &claims(),
        );
        assert_eq!(
            cluster()
                .verify(&forged, &j, &td(), &clock())
                .unwrap_err()
                .reason(),
            "bad_signature"
        );
    }

    #[test]
    fn cluster_configuration_is_checked() {
        let bad = |n: &str, sas: &[&str]| PsatCluster::new(n, ISS, DEFAULT_AUDIENCE, sas);
        assert!(matches!(
            bad("a/b", &["a:b"]),
            Err(PsatConfigError::BadClusterName(_))
        ));
        assert!(matches!(
            bad("..", &["a:b"]),
            Err(PsatConfigError::BadClusterName(_))
        ));
        assert!(matches!(
            bad("c", &[]),
            Err(PsatConfigError::NoServiceAccounts(_))
        ));
        for sa in ["nocolon", ":b", "a:", "a:b:c"] {
            assert!(
                matches!(bad("c", &[sa]), Err(PsatConfigError::BadServiceAccount(_))),
                "{sa}"
            );
        }
        assert!(matches!(
            PsatCluster::new("c", ISS, "", &["a:b"]),
            Err(PsatConfigError::Policy(_))
        ));
        let c = cluster();
        assert_eq!((c.name(), c.audience()), ("prod-eu", DEFAULT_AUDIENCE));
        assert_eq!(c.policy().max_age_secs(), 3600);
        let p = c.policy().clone().with_max_age(Duration::from_secs(60));
        assert_eq!(c.with_policy(p).policy().max_age_secs(), 60);
    }

    fn review(authenticated: bool, aud: &[&str]) -> TokenReview {
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "metadata": {"creationTimestamp": null},
            "spec": {"token": "t", "audiences": [DEFAULT_AUDIENCE]},
            "status": {
                "authenticated": authenticated,
                "user": {
                    "username": "system:serviceaccount:lanyard:lanyard-agent",
                    "uid": "0d5b1e4a-1111-2222-3333-444455556666",
                    "groups": ["system:serviceaccounts", "system:serviceaccounts:lanyard", "system:authenticated"],
                    "extra": {
                        "authentication.kubernetes.io/credential-id": ["JTI=0b8a6c4e"],
                        "authentication.kubernetes.io/node-name": ["worker-1"],
                        "authentication.kubernetes.io/node-uid": [NODE_UID],
                        "authentication.kubernetes.io/pod-name": ["lanyard-agent-v5wgr"],
                        "authentication.kubernetes.io/pod-uid": ["79261129-6b60-11e9-9054-0800277ac80f"]
                    }
                },
                "audiences": aud
            }
        });
        TokenReview::parse(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn token_review_request_shape() {
        let r = TokenReview::request("tok", DEFAULT_AUDIENCE);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                   "spec": {"token": "tok", "audiences": ["lanyard-server"]}})
        );
    }

    #[test]
    fn token_review_interpretation() {
        let r =
            interpret_token_review(&review(true, &[DEFAULT_AUDIENCE]), DEFAULT_AUDIENCE).unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str()),
            ("lanyard", "lanyard-agent")
        );
        assert_eq!(r.node_uid.as_deref(), Some(NODE_UID));
        assert_eq!(r.pod_name.as_deref(), Some("lanyard-agent-v5wgr"));

        let mut unauth = review(false, &[]);
        if let Some(s) = unauth.status.as_mut() {
            s.error = "[invalid bearer token, token has been invalidated]".into();
        }
        let e = interpret_token_review(&unauth, DEFAULT_AUDIENCE).unwrap_err();
        assert_eq!(e.reason(), "token_review_not_authenticated");
        assert!(e.to_string().contains("invalidated"), "{e}");

        let e = interpret_token_review(&review(true, &["other"]), DEFAULT_AUDIENCE).unwrap_err();
        assert_eq!(e.reason(), "token_review_audience");

        let mut user = review(true, &[DEFAULT_AUDIENCE]);
        if let Some(s) = user.status.as_mut() {
            s.user.username = "alice".into();
        }
        assert_eq!(
            interpret_token_review(&user, DEFAULT_AUDIENCE)
                .unwrap_err()
                .reason(),
            "not_pod_bound"
        );
        let none = TokenReview::request("t", "a");
        assert!(interpret_token_review(&none, "a").is_err());
        assert!(TokenReview::parse(b"not json").is_err());
    }

    #[test]
    fn reviewed_tokens_are_cross_checked_with_their_claims() {
        // The signature is the API server's word: any signature bytes will do here.
        let tok = unsigned_token(&json!({"alg":"RS256","kid":"x"}), &claims(), "c2ln");
        let a = cluster()
            .verify_reviewed(&tok, &review(true, &[DEFAULT_AUDIENCE]), &td(), &clock())
            .unwrap();
        assert_eq!(
            a.agent_id.path(),
            format!("/lanyard/agent/k8s_psat/prod-eu/{NODE_UID}")
        );
        assert_eq!(a.selectors.len(), 7);

        // A review of some other pod's token does not vouch for this one.
        let mut other = review(true, &[DEFAULT_AUDIENCE]);
        if let Some(s) = other.status.as_mut() {
            s.user
                .extra
                .insert(EXTRA_NODE_UID.into(), vec!["another-node".into()]);
        }
        let e = cluster()
            .verify_reviewed(&tok, &other, &td(), &clock())
            .unwrap_err();
        assert_eq!(e.reason(), "token_review_mismatch");
        let mut other = review(true, &[DEFAULT_AUDIENCE]);
        if let Some(s) = other.status.as_mut() {
            s.user.username = "system:serviceaccount:lanyard:other".into();
        }
        let e = cluster()
            .verify_reviewed(&tok, &other, &td(), &clock())
            .unwrap_err();
        assert!(matches!(
            e,
            PsatRefusal::ReviewMismatch {
                field: "the user",
                ..
            }
        ));

        // Time and issuer rules still apply.
        let mut c = claims();
        c["exp"] = json!(NOW - 5);
        let tok = unsigned_token(&json!({"alg":"RS256"}), &c, "c2ln");
        let e = cluster()
            .verify_reviewed(&tok, &review(true, &[DEFAULT_AUDIENCE]), &td(), &clock())
            .unwrap_err();
        assert_eq!(e.reason(), "expired");
        // Not authenticated.
        let e = cluster()
            .verify_reviewed(&tok, &review(false, &[]), &td(), &clock())
            .unwrap_err();
        assert_eq!(e.reason(), "token_review_not_authenticated");
    }
}
