//! `jwt`: a signed OIDC token proves the node — a CI job's (GitHub Actions, GitLab
//! CI), a cloud instance's (GCP, Azure) or any issuer's. The token is verified
//! offline (pure, in `lanyard_nodeattest`) against the issuer's keys — a JWKS
//! file, or fetched through OIDC discovery over HTTPS ([`super::keys`]); a token
//! naming a key the cache lacks refreshes it, at most once per interval. Each token attests once within its lifetime: its replay key is
//! recorded durably in the datastore, which every server shares.
//!
//! Configuration (`[[jwt_attestor]]`, docs/server-config.md): a `preset`
//! (`github_actions`, `gitlab_ci`, `gcp_instance_identity`, `azure_managed_identity`)
//! or a generic issuer (`kind`, `issuer`, `agent_id`, `selectors`), the exact
//! `audience`, the keys (`jwks_file`, or `discovery_url`/`ca_file`, default the
//! issuer's discovery), and `require`d claims (exact or glob).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lanyard_core::duration::parse_duration;
use lanyard_core::{Clock, TrustDomain};
use lanyard_nodeattest::presets;
use lanyard_nodeattest::{
    AgentIdTemplate, ClaimRequirement, ClaimSelector, Jwks, JwtAttestError, JwtAttestation,
    JwtAttestor, TokenPolicy, UnverifiedToken,
};
use lanyard_store::AnyStore;
use serde::Deserialize;

use super::keys::{IssuerKeys, KeySettings, KeySource, key_source};
use super::{AttestError, AttestedNode, Challenger, NodeAttestor, NodeEvidence};
use crate::config::ConfigError;
use crate::state::ServerError;

pub const NAME: &str = "jwt";
const KEY: &str = "jwt_attestor";

/// One `[[jwt_attestor]]` table, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileJwtAttestor {
    /// `github_actions`, `gitlab_ci`, `gcp_instance_identity` or
    /// `azure_managed_identity`; absent: a generic issuer.
    pub preset: Option<String>,
    /// Generic: the selector type (`ci` gives `ci:<name>:<value>`).
    pub kind: Option<String>,
    /// The issuer (`iss`); presets have a default where the platform has one.
    pub issuer: Option<String>,
    /// The exact audience the token must carry.
    pub audience: String,
    /// The issuer's JWKS (JSON) in a file; absent: fetched by OIDC discovery.
    pub jwks_file: Option<PathBuf>,
    /// Where the issuer's discovery document is (default: the issuer's
    /// `/.well-known/openid-configuration`); HTTPS only.
    pub discovery_url: Option<String>,
    /// CA certificates (PEM) for fetching keys; default the system's roots.
    pub ca_file: Option<PathBuf>,
    /// How often fetched keys are refreshed (default 5m).
    pub jwks_refresh_interval: Option<String>,
    /// Generic: the agent ID template, e.g. `/lanyard/agent/ci/{project}/{job_id}`.
    pub agent_id: Option<String>,
    /// Generic: claim → selector name.
    #[serde(default)]
    pub selectors: BTreeMap<String, String>,
    /// Claims that must match: claim → pattern or list of patterns (`*` globs).
    #[serde(default)]
    pub require: BTreeMap<String, Patterns>,
    /// `gcp_instance_identity`: the projects admitted.
    #[serde(default)]
    pub project_ids: Vec<String>,
    /// `azure_managed_identity`: the tenant.
    pub tenant_id: Option<String>,
    /// Oldest token accepted (`iat` age), e.g. `10m`.
    pub max_age: Option<String>,
}

/// One pattern or several (any may match).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Patterns {
    One(String),
    Any(Vec<String>),
}

impl Patterns {
    fn list(&self) -> Vec<&str> {
        match self {
            Self::One(p) => vec![p.as_str()],
            Self::Any(ps) => ps.iter().map(String::as_str).collect(),
        }
    }
}

/// A validated `[[jwt_attestor]]`: the verifier and where its keys are.
#[derive(Debug, Clone)]
pub struct JwtIssuerConfig {
    pub attestor: JwtAttestor,
    pub keys: KeySource,
    pub refresh: Duration,
}

fn invalid(reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: KEY,
        reason: reason.to_string(),
    }
}

/// Validate one `[[jwt_attestor]]` table.
pub fn parse_config(f: &FileJwtAttestor) -> Result<JwtIssuerConfig, ConfigError> {
    let generic_only = |what: &str, set: bool| {
        if set && f.preset.is_some() {
            Err(invalid(format!(
                "`{what}` is for generic issuers; the {} preset defines it",
                f.preset.as_deref().unwrap_or_default()
            )))
        } else {
            Ok(())
        }
    };
    generic_only("kind", f.kind.is_some())?;
    generic_only("agent_id", f.agent_id.is_some())?;
    generic_only("selectors", !f.selectors.is_empty())?;
    let preset = f.preset.as_deref().unwrap_or_default();
    if f.issuer.is_some() && matches!(preset, "gcp_instance_identity" | "azure_managed_identity") {
        return Err(invalid(format!(
            "the {preset} preset fixes the issuer; remove `issuer`"
        )));
    }
    if !f.project_ids.is_empty() && preset != "gcp_instance_identity" {
        return Err(invalid(
            "`project_ids` is only for the gcp_instance_identity preset; use `require` for other issuers",
        ));
    }
    if f.tenant_id.is_some() && preset != "azure_managed_identity" {
        return Err(invalid(
            "`tenant_id` is only for the azure_managed_identity preset",
        ));
    }
    // GitHub and GitLab sign tokens for every repository and project they host:
    // without a requirement, any job anywhere would attest.
    if f.require.is_empty() && matches!(preset, "github_actions" | "gitlab_ci") {
        let example = if preset == "github_actions" {
            "require = { repository_owner = \"acme\" }"
        } else {
            "require = { namespace_path = \"acme\" }"
        };
        return Err(invalid(format!(
            "the {preset} preset needs `require`: its issuer signs tokens for every job it runs, so name yours, e.g. {example}"
        )));
    }
    let base = match f.preset.as_deref() {
        Some("github_actions") => match &f.issuer {
            Some(iss) => presets::github_actions_for_issuer(iss, &f.audience),
            None => presets::github_actions(&f.audience),
        }
        .map_err(invalid)?,
        Some("gitlab_ci") => presets::gitlab_ci(
            f.issuer.as_deref().unwrap_or(presets::GITLAB_COM_ISSUER),
            &f.audience,
        )
        .map_err(invalid)?,
        Some("gcp_instance_identity") => {
            let ids: Vec<&str> = f.project_ids.iter().map(String::as_str).collect();
            presets::gcp_instance_identity(&f.audience, &ids).map_err(invalid)?
        }
        Some("azure_managed_identity") => {
            let tenant = f
                .tenant_id
                .as_deref()
                .ok_or_else(|| invalid("the azure_managed_identity preset needs `tenant_id`"))?;
            presets::azure_managed_identity(tenant, &f.audience).map_err(invalid)?
        }
        Some(other) => {
            return Err(invalid(format!(
                "unknown preset {other:?}; use github_actions, gitlab_ci, gcp_instance_identity or azure_managed_identity, or leave it out for a generic issuer"
            )));
        }
        None => {
            let need = |v: &Option<String>, what: &str| {
                v.clone().ok_or_else(|| {
                    invalid(format!("a generic issuer (no `preset`) needs `{what}`"))
                })
            };
            let issuer = need(&f.issuer, "issuer")?;
            let kind = need(&f.kind, "kind")?;
            let template = AgentIdTemplate::parse(&need(&f.agent_id, "agent_id")?)
                .map_err(|e| invalid(format!("agent_id: {e}")))?;
            let selectors = f
                .selectors
                .iter()
                .map(|(claim, name)| ClaimSelector::new(claim, name))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(format!("selectors: {e}")))?;
            let policy = TokenPolicy::new(&issuer, &f.audience).map_err(invalid)?;
            JwtAttestor::new(&kind, policy, selectors, template).map_err(invalid)?
        }
    };
    let mut policy = base.policy().clone();
    if let Some(age) = &f.max_age {
        let d = parse_duration(age).map_err(|e| invalid(format!("max_age: {e}")))?;
        policy = policy.with_max_age(d);
    }
    for (claim, patterns) in &f.require {
        let r = ClaimRequirement::parse(claim, &patterns.list())
            .map_err(|e| invalid(format!("require.{claim}: {e}")))?;
        policy = policy.require(r);
    }
    let attestor = base.with_policy(policy);
    let azure_discovery = match (preset, &f.tenant_id, &f.jwks_file) {
        ("azure_managed_identity", Some(tenant), None) => {
            Some(presets::azure_discovery_url(tenant))
        }
        _ => None,
    };
    let (keys, refresh) = key_source(
        KEY,
        KeySettings {
            issuer: attestor.policy().issuer(),
            jwks_file: f.jwks_file.as_deref(),
            // Azure's issuer (sts.windows.net) serves no discovery document of its
            // own; the tenant's v2.0 document lists the same signing keys.
            discovery_url: f.discovery_url.as_deref().or(azure_discovery.as_deref()),
            ca_file: f.ca_file.as_deref(),
            refresh_interval: f.jwks_refresh_interval.as_deref(),
        },
    )?;
    Ok(JwtIssuerConfig {
        attestor,
        keys,
        refresh,
    })
}

/// Read and parse a JWKS file.
pub fn read_jwks(path: &Path) -> Result<Jwks, ServerError> {
    let bytes = std::fs::read(path).map_err(|e| ServerError::io("cannot read", path, e))?;
    Jwks::parse(&bytes).map_err(|e| ServerError::bad_file("jwks_file", path, e))
}

/// One configured issuer with its keys.
#[derive(Debug)]
struct Issuer {
    attestor: JwtAttestor,
    keys: Arc<IssuerKeys>,
}

/// The refusal of a verifier, as the agent and the evidence log see it.
pub fn refusal(e: &JwtAttestError) -> AttestError {
    AttestError::Evidence {
        code: e.reason(),
        message: format!("jwt attestation refused: {e}"),
        malformed: e.is_malformed(),
    }
}

/// Verifies `jwt` evidence against the configured issuers.
#[derive(Debug)]
pub struct JwtNodeAttestor {
    issuers: Vec<Issuer>,
    store: AnyStore,
    clock: Arc<dyn Clock>,
    trust_domain: TrustDomain,
}

impl JwtNodeAttestor {
    /// Load every issuer's keys (a file that cannot be read stops the server: it
    /// names the file; fetched keys are loaded in the background and refreshed on
    /// a schedule, so this must run inside the server's runtime).
    pub fn new(
        configs: &[JwtIssuerConfig],
        store: AnyStore,
        clock: Arc<dyn Clock>,
        trust_domain: TrustDomain,
    ) -> Result<Self, ServerError> {
        let mut issuers: Vec<Issuer> = Vec::new();
        for c in configs {
            let iss = c.attestor.policy().issuer();
            if issuers.iter().any(|i| i.attestor.policy().issuer() == iss) {
                return Err(ServerError::Config(invalid(format!(
                    "two [[jwt_attestor]] tables name the issuer {iss}; merge them into one"
                ))));
            }
            let keys = Arc::new(IssuerKeys::new(c.keys.clone(), clock.clone())?);
            IssuerKeys::spawn_refresh(&keys, c.refresh);
            issuers.push(Issuer {
                attestor: c.attestor.clone(),
                keys,
            });
        }
        Ok(Self {
            issuers,
            store,
            clock,
            trust_domain,
        })
    }

    /// Verify `token` with its issuer's keys (refreshing them once on an unknown key).
    async fn verify(&self, token: &str) -> Result<JwtAttestation, AttestError> {
        let parsed =
            UnverifiedToken::parse(token).map_err(|e| refusal(&JwtAttestError::from(e)))?;
        let iss = parsed.issuer().unwrap_or_default();
        let Some(issuer) = self
            .issuers
            .iter()
            .find(|i| i.attestor.policy().issuer() == iss)
        else {
            let known: Vec<&str> = self
                .issuers
                .iter()
                .map(|i| i.attestor.policy().issuer())
                .collect();
            return Err(AttestError::Evidence {
                code: "unknown_issuer",
                message: format!(
                    "jwt attestation refused: no jwt attestor on this server trusts the issuer {iss:?} (trusted: {})",
                    known.join(", ")
                ),
                malformed: false,
            });
        };
        let attest = |jwks: &Jwks| {
            issuer
                .attestor
                .attest(token, jwks, &self.trust_domain, self.clock.as_ref())
        };
        issuer
            .keys
            .verify_with(
                NAME,
                parsed.header().kid.as_deref(),
                JwtAttestError::wants_jwks_refresh,
                attest,
            )
            .await?
            .map_err(|e| refusal(&e))
    }
}

#[tonic::async_trait]
impl NodeAttestor for JwtNodeAttestor {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn attest(
        &self,
        evidence: NodeEvidence,
        _: &mut dyn Challenger,
    ) -> Result<AttestedNode, AttestError> {
        let NodeEvidence::Token { method, token, .. } = evidence else {
            return Err(AttestError::Malformed(format!(
                "{} evidence given to the jwt attestor",
                evidence.method()
            )));
        };
        if method != NAME {
            return Err(AttestError::Malformed(format!(
                "{method} evidence given to the jwt attestor"
            )));
        }
        let admitted = self.verify(&token).await?;
        for s in &admitted.skipped {
            tracing::info!(skipped = ?s, "jwt attestation: a claim did not become a selector");
        }
        super::spend_token(
            &self.store,
            NAME,
            &admitted.replay_key(),
            admitted.expires_at(),
            self.clock.unix_seconds(),
            "request a fresh token",
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
    use super::super::testutil::{Key, NoChallenges};
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use lanyard_testkit::FakeClock;
    use serde_json::{Value, json};

    const ISS: &str = "https://token.actions.githubusercontent.com";
    const NOW: i64 = 1_800_000_000;

    /// The claims GitHub documents for an Actions ID token.
    fn github_claims(jti: &str, aud: &str) -> Value {
        json!({
            "jti": jti, "sub": "repo:acme/api:ref:refs/heads/main", "aud": aud,
            "ref": "refs/heads/main", "sha": "a1b2", "repository": "acme/api",
            "repository_owner": "acme", "repository_owner_id": "42", "repository_id": "7",
            "repository_visibility": "private", "run_id": "99", "run_number": "3",
            "run_attempt": "1", "actor": "octocat", "workflow": "deploy",
            "event_name": "push", "ref_type": "branch", "ref_protected": "true",
            "environment": "prod", "job_workflow_ref": "acme/api/.github/workflows/deploy.yml@refs/heads/main",
            "runner_environment": "github-hosted",
            "iss": ISS, "nbf": NOW - 5, "iat": NOW - 5, "exp": NOW + 300
        })
    }

    use super::super::testutil::write_jwks;

    fn file(jwks_file: PathBuf) -> FileJwtAttestor {
        FileJwtAttestor {
            preset: Some("github_actions".into()),
            audience: "lanyard-server".into(),
            jwks_file: Some(jwks_file),
            require: [("repository_owner".to_string(), Patterns::One("acme".into()))]
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    async fn attestor(dir: &Path, f: &FileJwtAttestor, clock: Arc<FakeClock>) -> JwtNodeAttestor {
        let store = AnyStore::open(&dir.join("db.sqlite").to_string_lossy())
            .await
            .unwrap();
        JwtNodeAttestor::new(
            &[parse_config(f).unwrap()],
            store,
            clock,
            TrustDomain::new("example.org").unwrap(),
        )
        .unwrap()
    }

    async fn run(a: &JwtNodeAttestor, token: String) -> Result<AttestedNode, AttestError> {
        a.attest(
            NodeEvidence::Token {
                method: NAME,
                cluster: String::new(),
                token,
            },
            &mut NoChallenges,
        )
        .await
    }

    fn code(r: Result<AttestedNode, AttestError>) -> (&'static str, tonic::Code) {
        match r {
            Err(e @ AttestError::Evidence { code, .. }) => (code, tonic::Status::from(e).code()),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_github_job_token_attests_once() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::new("k1");
        let f = file(write_jwks(dir.path(), &[&key]));
        let a = attestor(dir.path(), &f, Arc::new(FakeClock::at(NOW))).await;
        let token = key.sign(&github_claims("j1", "lanyard-server"));
        let node = run(&a, token.clone()).await.unwrap();
        assert_eq!(
            node.agent_id.to_string(),
            "spiffe://example.org/lanyard/agent/github/acme/api/99/j1"
        );
        let sels: Vec<String> = node.selectors.iter().map(ToString::to_string).collect();
        for want in [
            "github:repository:acme/api",
            "github:ref:refs/heads/main",
            "github:environment:prod",
        ] {
            assert!(sels.iter().any(|s| s == want), "{want} not in {sels:?}");
        }
        // The same token again is a replay, refused with its reason.
        assert_eq!(
            code(run(&a, token).await),
            ("replayed", tonic::Code::PermissionDenied)
        );
    }

    #[tokio::test]
    async fn refusals_name_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::new("k1");
        let other = Key::new("k1");
        let f = file(write_jwks(dir.path(), &[&key]));
        let a = attestor(dir.path(), &f, Arc::new(FakeClock::at(NOW))).await;
        let claims = github_claims("j2", "lanyard-server");
        let with = |k: &str, v: Value| {
            let mut c = claims.clone();
            c[k] = v;
            c
        };
        let cases = [
            (
                key.sign(&with("aud", json!("someone-else"))),
                "wrong_audience",
            ),
            (key.sign(&with("exp", json!(NOW - 120))), "expired"),
            (
                key.sign(&with("iss", json!("https://evil.example"))),
                "unknown_issuer",
            ),
            (
                key.sign(&with("repository_owner", json!("evil"))),
                "claim_mismatch",
            ),
            (other.sign(&claims), "bad_signature"),
        ];
        for (token, want) in cases {
            assert_eq!(code(run(&a, token).await).0, want);
        }
        // A missing required claim.
        let mut c = claims.clone();
        c.as_object_mut().unwrap().remove("repository_owner");
        assert_eq!(code(run(&a, key.sign(&c)).await).0, "missing_claim");
        // Symmetric and unsigned tokens are refused before any key is looked at.
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(code(run(&a, hs).await).0, "unsupported_algorithm");
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        assert_eq!(code(run(&a, none).await).0, "unsupported_algorithm");
    }

    #[tokio::test]
    async fn a_new_signing_key_is_picked_up_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let old = Key::new("old");
        let new = Key::new("new");
        let path = write_jwks(dir.path(), &[&old]);
        let clock = Arc::new(FakeClock::at(NOW));
        let a = attestor(dir.path(), &file(path), clock.clone()).await;
        // The issuer rotated to a key the server has not loaded.
        write_jwks(dir.path(), &[&old, &new]);
        let t1 = new.sign(&github_claims("j3", "lanyard-server"));
        // Just after start-up the gate holds: no refresh yet.
        assert_eq!(code(run(&a, t1.clone()).await).0, "unknown_key");
        clock.advance(
            lanyard_nodeattest::discovery::DEFAULT_REFRESH_INTERVAL
                + std::time::Duration::from_secs(1),
        );
        run(&a, t1).await.unwrap();
    }

    #[test]
    fn configuration_errors_say_what_to_change() {
        let err = |f: FileJwtAttestor| parse_config(&f).unwrap_err().to_string();
        let base = file(PathBuf::from("/x"));
        assert!(
            err(FileJwtAttestor {
                preset: Some("jenkins".into()),
                ..base.clone()
            })
            .contains("unknown preset \"jenkins\"")
        );
        assert!(
            err(FileJwtAttestor {
                kind: Some("ci".into()),
                ..base.clone()
            })
            .contains("`kind` is for generic issuers")
        );
        let generic = FileJwtAttestor {
            preset: None,
            kind: Some("ci".into()),
            issuer: Some("https://ci.example".into()),
            agent_id: Some("/lanyard/agent/ci/{project}/{job}".into()),
            selectors: [("project".to_string(), "project".to_string())]
                .into_iter()
                .collect(),
            ..base.clone()
        };
        assert!(parse_config(&generic).is_ok());
        assert!(
            err(FileJwtAttestor {
                issuer: None,
                ..generic.clone()
            })
            .contains("needs `issuer`")
        );
        assert!(
            err(FileJwtAttestor {
                agent_id: Some("/not-an-agent/{job}".into()),
                ..generic
            })
            .contains("agent_id")
        );
        // Multi-tenant issuers need a requirement naming the customer's jobs.
        assert!(
            err(FileJwtAttestor {
                require: BTreeMap::new(),
                ..base.clone()
            })
            .contains("needs `require`")
        );
        // Keys that would be silently ignored are errors.
        assert!(
            err(FileJwtAttestor {
                project_ids: vec!["p".into()],
                ..base.clone()
            })
            .contains("only for the gcp_instance_identity preset")
        );
        let azure = FileJwtAttestor {
            preset: Some("azure_managed_identity".into()),
            tenant_id: Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into()),
            audience: "https://management.azure.com/".into(),
            jwks_file: None,
            require: BTreeMap::new(),
            ..Default::default()
        };
        assert!(
            err(FileJwtAttestor {
                issuer: Some("https://sts.windows.net/x/".into()),
                ..azure.clone()
            })
            .contains("fixes the issuer")
        );
        // Azure's keys come from the tenant's login.microsoftonline.com document.
        let cfg = parse_config(&azure).unwrap();
        let KeySource::Discovery { discovery_url, .. } = cfg.keys else {
            panic!("{:?}", cfg.keys)
        };
        assert_eq!(
            discovery_url,
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/.well-known/openid-configuration"
        );
    }
}
