//! `k8s_psat`: a Kubernetes projected service-account token proves the node the
//! agent's pod runs on. Per cluster (`[[k8s_psat]]`, docs/attestation.md): the
//! cluster name, the service accounts admitted (`namespace:name`), the audience
//! (default `lanyard-server`), the service-account issuer, and how tokens are
//! checked — offline against the issuer's keys (a `jwks_file`, or OIDC discovery
//! over HTTPS), or by a TokenReview against the API server (`kube_api_url`,
//! `kube_ca_file`, `kube_token_file`). Either way the token's bound claims (pod,
//! node, service account) give SPIRE's selectors and the agent ID
//! `spiffe://TD/lanyard/agent/k8s_psat/<cluster>/<node uid>`, and each token
//! attests once within its lifetime (replay key in the shared datastore).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lanyard_core::duration::parse_duration;
use lanyard_core::{Clock, TrustDomain};
use lanyard_nodeattest::k8s_psat::DEFAULT_AUDIENCE;
pub use lanyard_nodeattest::k8s_psat::NAME;
use lanyard_nodeattest::{PsatAttestation, PsatCluster, PsatRefusal, TokenReview, UnverifiedToken};
use lanyard_store::AnyStore;
use lanyard_tls::http::{HttpClient, HttpRequest, Roots};
use serde::Deserialize;

use super::keys::{IssuerKeys, KeySettings, KeySource, key_source};
use super::{AttestError, AttestedNode, Challenger, NodeAttestor, NodeEvidence};
use crate::config::ConfigError;
use crate::state::ServerError;

const KEY: &str = "k8s_psat";
/// The TokenReview path of the Kubernetes API.
pub const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// One `[[k8s_psat]]` table, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileK8sPsat {
    /// The cluster's name (agents send it; it is in the agent ID).
    pub cluster: String,
    /// Service accounts whose tokens attest agents, `namespace:name`.
    pub service_accounts: Vec<String>,
    /// The audience of the projected token (default `lanyard-server`).
    pub audience: Option<String>,
    /// The cluster's service-account issuer (`--service-account-issuer`).
    pub issuer: String,
    /// Offline: the issuer's JWKS file.
    pub jwks_file: Option<PathBuf>,
    /// Offline: where the issuer's discovery document is (default the issuer's).
    pub discovery_url: Option<String>,
    /// Offline: CA certificates for fetching keys (default the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Offline: how often fetched keys are refreshed.
    pub jwks_refresh_interval: Option<String>,
    /// TokenReview: the API server, e.g. `https://10.0.0.1:6443`.
    pub kube_api_url: Option<String>,
    /// TokenReview: the API server's CA (PEM).
    pub kube_ca_file: Option<PathBuf>,
    /// TokenReview: a bearer token allowed to create TokenReviews (re-read on each
    /// review, as such tokens rotate).
    pub kube_token_file: Option<PathBuf>,
    /// Oldest token accepted (`iat` age), default 1h.
    pub max_age: Option<String>,
}

/// How a cluster's tokens are checked.
#[derive(Debug, Clone)]
pub enum Validation {
    /// Offline, against the issuer's keys.
    Offline { keys: KeySource, refresh: Duration },
    /// By the API server (TokenReview).
    TokenReview {
        url: String,
        http: HttpClient,
        token_file: PathBuf,
    },
}

/// A validated `[[k8s_psat]]`.
#[derive(Debug, Clone)]
pub struct K8sClusterConfig {
    pub cluster: PsatCluster,
    pub validation: Validation,
}

fn invalid(reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: KEY,
        reason: reason.to_string(),
    }
}

/// Validate one `[[k8s_psat]]` table.
pub fn parse_config(f: &FileK8sPsat) -> Result<K8sClusterConfig, ConfigError> {
    let sas: Vec<&str> = f.service_accounts.iter().map(String::as_str).collect();
    let audience = f.audience.as_deref().unwrap_or(DEFAULT_AUDIENCE);
    let mut cluster = PsatCluster::new(&f.cluster, &f.issuer, audience, &sas)
        .map_err(|e| invalid(format!("cluster {:?}: {e}", f.cluster)))?;
    if let Some(age) = &f.max_age {
        let d = parse_duration(age).map_err(|e| invalid(format!("max_age: {e}")))?;
        let policy = cluster.policy().clone().with_max_age(d);
        cluster = cluster.with_policy(policy);
    }
    let offline_keys = f.jwks_file.is_some()
        || f.discovery_url.is_some()
        || f.ca_file.is_some()
        || f.jwks_refresh_interval.is_some();
    let validation = match &f.kube_api_url {
        Some(api) => {
            if offline_keys {
                return Err(invalid(format!(
                    "cluster {:?}: with `kube_api_url` tokens are checked by TokenReview; remove jwks_file, discovery_url, ca_file and jwks_refresh_interval (or remove kube_api_url to check offline)",
                    f.cluster
                )));
            }
            lanyard_nodeattest::discovery::check_url(
                "kube_api_url",
                api,
                lanyard_nodeattest::UrlPolicy::HttpsOnly,
            )
            .map_err(invalid)?;
            let token_file = f.kube_token_file.clone().ok_or_else(|| {
                invalid(format!(
                    "cluster {:?}: TokenReview needs `kube_token_file` (a token of a service account bound to system:auth-delegator)",
                    f.cluster
                ))
            })?;
            let ca = f.kube_ca_file.clone().ok_or_else(|| {
                invalid(format!(
                    "cluster {:?}: TokenReview needs `kube_ca_file` (the API server's CA, e.g. /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)",
                    f.cluster
                ))
            })?;
            let http = HttpClient::new(&Roots::PemFile(ca))
                .map_err(|e| invalid(format!("kube_ca_file: {e}")))?
                .with_timeout(Duration::from_secs(5))
                .with_max_body(256 * 1024);
            Validation::TokenReview {
                url: format!("{}{TOKEN_REVIEW_PATH}", api.trim_end_matches('/')),
                http,
                token_file,
            }
        }
        None => {
            if f.kube_ca_file.is_some() || f.kube_token_file.is_some() {
                return Err(invalid(format!(
                    "cluster {:?}: kube_ca_file and kube_token_file are for TokenReview; set kube_api_url too",
                    f.cluster
                )));
            }
            let (keys, refresh) = key_source(
                KEY,
                KeySettings {
                    issuer: &f.issuer,
                    jwks_file: f.jwks_file.as_deref(),
                    discovery_url: f.discovery_url.as_deref(),
                    ca_file: f.ca_file.as_deref(),
                    refresh_interval: f.jwks_refresh_interval.as_deref(),
                },
            )?;
            Validation::Offline { keys, refresh }
        }
    };
    Ok(K8sClusterConfig {
        cluster,
        validation,
    })
}

#[derive(Debug)]
enum Check {
    Offline(Arc<IssuerKeys>),
    Review {
        url: String,
        http: HttpClient,
        token_file: PathBuf,
    },
}

#[derive(Debug)]
struct Cluster {
    cluster: PsatCluster,
    check: Check,
}

fn refusal(e: &PsatRefusal) -> AttestError {
    AttestError::Evidence {
        code: e.reason(),
        message: format!("k8s_psat attestation refused: {e}"),
        malformed: e.is_malformed(),
    }
}

fn review_failed(message: String) -> AttestError {
    AttestError::Evidence {
        code: "token_review_failed",
        message: format!("k8s_psat attestation refused: {message}"),
        malformed: false,
    }
}

/// Verifies `k8s_psat` evidence for the configured clusters.
#[derive(Debug)]
pub struct K8sPsatAttestor {
    clusters: Vec<Cluster>,
    store: AnyStore,
    clock: Arc<dyn Clock>,
    trust_domain: TrustDomain,
}

impl K8sPsatAttestor {
    /// Set up every cluster (inside the server's runtime: fetched keys refresh in
    /// the background).
    pub fn new(
        configs: &[K8sClusterConfig],
        store: AnyStore,
        clock: Arc<dyn Clock>,
        trust_domain: TrustDomain,
    ) -> Result<Self, ServerError> {
        let mut clusters: Vec<Cluster> = Vec::new();
        for c in configs {
            if clusters
                .iter()
                .any(|k| k.cluster.name() == c.cluster.name())
            {
                return Err(ServerError::Config(invalid(format!(
                    "two [[k8s_psat]] tables name the cluster {:?}; merge them",
                    c.cluster.name()
                ))));
            }
            let check = match &c.validation {
                Validation::Offline { keys, refresh } => {
                    let k = Arc::new(IssuerKeys::new(keys.clone(), clock.clone())?);
                    IssuerKeys::spawn_refresh(&k, *refresh);
                    Check::Offline(k)
                }
                Validation::TokenReview {
                    url,
                    http,
                    token_file,
                } => Check::Review {
                    url: url.clone(),
                    http: http.clone(),
                    token_file: token_file.clone(),
                },
            };
            clusters.push(Cluster {
                cluster: c.cluster.clone(),
                check,
            });
        }
        Ok(Self {
            clusters,
            store,
            clock,
            trust_domain,
        })
    }

    async fn verify(&self, c: &Cluster, token: &str) -> Result<PsatAttestation, AttestError> {
        let td = &self.trust_domain;
        let clock = self.clock.as_ref();
        match &c.check {
            Check::Offline(keys) => {
                let kid = UnverifiedToken::parse(token)
                    .ok()
                    .and_then(|t| t.header().kid.clone());
                keys.verify_with(
                    NAME,
                    kid.as_deref(),
                    PsatRefusal::wants_jwks_refresh,
                    |jwks| c.cluster.verify(token, jwks, td, clock),
                )
                .await?
                .map_err(|e| refusal(&e))
            }
            Check::Review {
                url,
                http,
                token_file,
            } => {
                // Refuse what cannot be a token before asking the API server.
                UnverifiedToken::parse(token).map_err(|e| refusal(&PsatRefusal::Token(e)))?;
                let review = self
                    .token_review(url, http, token_file, token, c.cluster.audience())
                    .await?;
                c.cluster
                    .verify_reviewed(token, &review, td, clock)
                    .map_err(|e| refusal(&e))
            }
        }
    }

    async fn token_review(
        &self,
        url: &str,
        http: &HttpClient,
        token_file: &Path,
        token: &str,
        audience: &str,
    ) -> Result<TokenReview, AttestError> {
        let bearer = tokio::fs::read_to_string(token_file).await.map_err(|e| {
            review_failed(format!(
                "the server cannot read kube_token_file {}: {e}",
                token_file.display()
            ))
        })?;
        let body = serde_json::to_vec(&TokenReview::request(token, audience))
            .map_err(|e| AttestError::Internal(e.to_string()))?;
        let r = http
            .send(
                HttpRequest::post(url)
                    .header("Authorization", &format!("Bearer {}", bearer.trim()))
                    .header("Content-Type", "application/json")
                    .header("Accept", "application/json")
                    .body(body),
            )
            .await
            .map_err(|e| review_failed(format!("the TokenReview call failed: {e}")))?;
        if !r.is_success() {
            let hint = match r.status {
                401 => " (the kube_token_file token is not accepted)",
                403 => " (the reviewer needs the system:auth-delegator cluster role)",
                _ => "",
            };
            return Err(review_failed(format!(
                "the API server answered the TokenReview with HTTP {}{hint}",
                r.status
            )));
        }
        TokenReview::parse(&r.body).map_err(|e| refusal(&e))
    }
}

#[tonic::async_trait]
impl NodeAttestor for K8sPsatAttestor {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn attest(
        &self,
        evidence: NodeEvidence,
        _: &mut dyn Challenger,
    ) -> Result<AttestedNode, AttestError> {
        let NodeEvidence::Token {
            method: NAME,
            cluster,
            token,
        } = evidence
        else {
            return Err(AttestError::Malformed(format!(
                "{} evidence given to the k8s_psat attestor",
                evidence.method()
            )));
        };
        let Some(c) = self.clusters.iter().find(|c| c.cluster.name() == cluster) else {
            let known: Vec<&str> = self.clusters.iter().map(|c| c.cluster.name()).collect();
            return Err(AttestError::Evidence {
                code: "unknown_cluster",
                message: format!(
                    "k8s_psat attestation refused: this server has no [[k8s_psat]] cluster {cluster:?} (configured: {}); set the agent's k8s_psat_cluster to one of them",
                    known.join(", ")
                ),
                malformed: false,
            });
        };
        let admitted = self.verify(c, &token).await?;
        super::spend_token(
            &self.store,
            NAME,
            &admitted.replay_key,
            admitted.expires_at,
            self.clock.unix_seconds(),
            "the agent re-reads its projected token, which the kubelet refreshes",
        )
        .await?;
        Ok(AttestedNode {
            agent_id: admitted.agent_id,
            selectors: admitted.selectors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{Key, NoChallenges, write_jwks};
    use super::*;
    use lanyard_testkit::FakeClock;
    use serde_json::{Value, json};

    const ISS: &str = "https://kubernetes.default.svc.cluster.local";
    const NOW: i64 = 1_800_000_000;

    /// A projected token's claims as the API server issues them (audience
    /// `lanyard-server`, bound to a pod and its node).
    fn psat_claims(jti: &str, sa: &str) -> Value {
        json!({
            "aud": ["lanyard-server"], "exp": NOW + 600, "iat": NOW - 5, "nbf": NOW - 5,
            "iss": ISS, "jti": jti, "sub": format!("system:serviceaccount:lanyard:{sa}"),
            "kubernetes.io": {
                "namespace": "lanyard",
                "node": {"name": "node-1", "uid": "7f0c1a2b-0000-4000-8000-000000000001"},
                "pod": {"name": "lanyard-agent-x7k2p", "uid": "b1c2d3e4-0000-4000-8000-000000000002"},
                "serviceaccount": {"name": sa, "uid": "c1d2e3f4-0000-4000-8000-000000000003"}
            }
        })
    }

    fn table(jwks_file: PathBuf) -> FileK8sPsat {
        FileK8sPsat {
            cluster: "prod".into(),
            service_accounts: vec!["lanyard:lanyard-agent".into()],
            issuer: ISS.into(),
            jwks_file: Some(jwks_file),
            ..Default::default()
        }
    }

    async fn attestor(dir: &Path, f: &FileK8sPsat) -> K8sPsatAttestor {
        let store = AnyStore::open(&dir.join("db.sqlite").to_string_lossy())
            .await
            .unwrap();
        K8sPsatAttestor::new(
            &[parse_config(f).unwrap()],
            store,
            Arc::new(FakeClock::at(NOW)),
            TrustDomain::new("example.org").unwrap(),
        )
        .unwrap()
    }

    async fn run(
        a: &K8sPsatAttestor,
        cluster: &str,
        token: String,
    ) -> Result<AttestedNode, AttestError> {
        a.attest(
            NodeEvidence::Token {
                method: NAME,
                cluster: cluster.into(),
                token,
            },
            &mut NoChallenges,
        )
        .await
    }

    fn code(r: Result<AttestedNode, AttestError>) -> &'static str {
        match r {
            Err(AttestError::Evidence { code, .. }) => code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_projected_token_attests_the_node_once_with_spire_selectors() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::new("sa-1");
        let a = attestor(dir.path(), &table(write_jwks(dir.path(), &[&key]))).await;
        let token = key.sign(&psat_claims("t1", "lanyard-agent"));
        let node = run(&a, "prod", token.clone()).await.unwrap();
        assert_eq!(
            node.agent_id.to_string(),
            "spiffe://example.org/lanyard/agent/k8s_psat/prod/7f0c1a2b-0000-4000-8000-000000000001"
        );
        let sels: Vec<String> = node.selectors.iter().map(ToString::to_string).collect();
        for want in [
            "k8s_psat:cluster:prod",
            "k8s_psat:agent_ns:lanyard",
            "k8s_psat:agent_sa:lanyard-agent",
            "k8s_psat:agent_pod_name:lanyard-agent-x7k2p",
            "k8s_psat:agent_pod_uid:b1c2d3e4-0000-4000-8000-000000000002",
            "k8s_psat:agent_node_name:node-1",
            "k8s_psat:agent_node_uid:7f0c1a2b-0000-4000-8000-000000000001",
        ] {
            assert!(sels.iter().any(|s| s == want), "{want} not in {sels:?}");
        }
        assert_eq!(code(run(&a, "prod", token).await), "replayed");
    }

    #[tokio::test]
    async fn refusals_name_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::new("sa-1");
        let a = attestor(dir.path(), &table(write_jwks(dir.path(), &[&key]))).await;
        let good = psat_claims("t2", "lanyard-agent");
        let with = |k: &str, v: Value| {
            let mut c = good.clone();
            c[k] = v;
            c
        };
        let mut unbound = good.clone();
        unbound["kubernetes.io"]
            .as_object_mut()
            .unwrap()
            .remove("node");
        for (cluster, token, want) in [
            ("staging", key.sign(&good), "unknown_cluster"),
            (
                "prod",
                key.sign(&psat_claims("t3", "default")),
                "service_account_not_allowed",
            ),
            (
                "prod",
                key.sign(&with("aud", json!(["other"]))),
                "wrong_audience",
            ),
            ("prod", key.sign(&with("exp", json!(NOW - 120))), "expired"),
            ("prod", key.sign(&unbound), "no_node_binding"),
            ("prod", Key::new("sa-1").sign(&good), "bad_signature"),
            ("prod", "not a token".into(), "malformed"),
        ] {
            assert_eq!(code(run(&a, cluster, token).await), want, "{want}");
        }
    }

    #[test]
    fn config_errors_name_the_fix() {
        let base = table("/k/jwks.json".into());
        let cases = [
            (
                FileK8sPsat {
                    kube_api_url: Some("https://10.0.0.1:6443".into()),
                    ..base.clone()
                },
                "checked by TokenReview",
            ),
            (
                FileK8sPsat {
                    jwks_file: None,
                    kube_api_url: Some("https://10.0.0.1:6443".into()),
                    kube_ca_file: Some("/k/ca.pem".into()),
                    ..base.clone()
                },
                "kube_token_file",
            ),
            (
                FileK8sPsat {
                    kube_token_file: Some("/k/token".into()),
                    ..base.clone()
                },
                "set kube_api_url",
            ),
            (
                FileK8sPsat {
                    service_accounts: vec![],
                    ..base.clone()
                },
                "namespace:name",
            ),
            (
                FileK8sPsat {
                    jwks_file: None,
                    kube_api_url: Some("http://10.0.0.1:8080".into()),
                    kube_token_file: Some("/k/token".into()),
                    kube_ca_file: Some("/k/ca.pem".into()),
                    ..base.clone()
                },
                "https",
            ),
        ];
        for (f, want) in cases {
            let e = parse_config(&f).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
