//! [`TestIssuer`]: an OpenID Connect issuer over HTTPS on loopback, behaving as
//! the platforms node attestation trusts document theirs.
//!
//! One issuer serves, under its issuer URL (`https://127.0.0.1:PORT[/path]`):
//!
//! * `GET /.well-known/openid-configuration`: the discovery document (shaped like
//!   GitHub's: `issuer`, `jwks_uri`, `id_token_signing_alg_values_supported`,
//!   `response_types_supported`, `subject_types_supported`, `claims_supported`,
//!   `scopes_supported`);
//! * `GET /jwks`: the JWK Set of the published keys (ES256 on P-256 and RS256, each
//!   with `kid`, `kty`, `alg`, `use: "sig"`);
//! * `GET /_apis/token?api-version=2.0[&audience=AUD]`: the GitHub Actions token
//!   request (`ACTIONS_ID_TOKEN_REQUEST_URL`/`_TOKEN`), answering
//!   `{"count": …, "value": "<jwt>"}` for the job set by
//!   [`TestIssuer::set_github_job`];
//! * `POST /apis/authentication.k8s.io/v1/tokenreviews`: a kube-apiserver
//!   TokenReview of tokens this issuer signed.
//!
//! TLS uses a fresh test CA ([`TestIssuer::ca_pem`]) and a server certificate for
//! `127.0.0.1` and `localhost`. Tokens are minted with [`TestIssuer::mint`] (or
//! [`TestIssuer::mint_with`] for forgeries) from the claim sets of
//! [`GithubJob`], [`GitlabJob`] and [`K8sPod`], which carry the claims the platforms
//! document, with their types (GitHub's IDs and `ref_protected` are strings, as are
//! GitLab's; GitLab's `runner_id` is a number).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents,
    UnparsedPublicKey,
};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_nodeattest::k8s_psat::{
    EXTRA_NODE_NAME, EXTRA_NODE_UID, EXTRA_POD_NAME, EXTRA_POD_UID, TOKEN_REVIEW_API_VERSION,
    TokenReview,
};
use serde_json::{Map, Value, json};

use crate::loopback::{Background, b64url, lock, random_hex, random_uuid, unix_now};

/// The path of the GitHub Actions token request under the issuer URL.
pub const GITHUB_REQUEST_PATH: &str = "/_apis/token";
/// The path of the TokenReview API under the issuer URL.
pub const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// The claims GitHub's discovery document lists in `claims_supported`.
const GITHUB_CLAIMS_SUPPORTED: &[&str] = &[
    "sub",
    "aud",
    "exp",
    "iat",
    "iss",
    "jti",
    "nbf",
    "ref",
    "sha",
    "repository",
    "repository_id",
    "repository_owner",
    "repository_owner_id",
    "enterprise",
    "enterprise_id",
    "run_id",
    "run_number",
    "run_attempt",
    "actor",
    "actor_id",
    "workflow",
    "workflow_ref",
    "workflow_sha",
    "head_ref",
    "base_ref",
    "event_name",
    "ref_type",
    "ref_protected",
    "environment",
    "environment_node_id",
    "job_workflow_ref",
    "job_workflow_sha",
    "repository_visibility",
    "runner_environment",
    "issuer_scope",
];

// ---------------------------------------------------------------------------
// Keys

/// The algorithm of one of the issuer's signing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyAlg {
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// RSA PKCS #1 v1.5 (2048-bit) with SHA-256: what GitHub, GitLab and
    /// Kubernetes sign with.
    #[default]
    Rs256,
}

impl KeyAlg {
    /// The JOSE `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Rs256 => "RS256",
        }
    }
}

enum Pair {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A signing key: the private half and its public JWK.
struct IssuerKey {
    kid: String,
    alg: KeyAlg,
    pair: Pair,
    jwk: Value,
}

impl IssuerKey {
    /// A fresh key whose `kid` is its RFC 7638 JWK thumbprint.
    fn generate(alg: KeyAlg) -> Self {
        match alg {
            KeyAlg::Es256 => {
                let pair =
                    EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("a P-256 key");
                let point = pair.public_key().as_ref().to_vec();
                assert_eq!(point.len(), 65, "an uncompressed P-256 point");
                let (x, y) = (b64url(&point[1..33]), b64url(&point[33..65]));
                let kid = thumbprint(&format!(
                    r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#
                ));
                let jwk = json!({
                    "kty": "EC", "crv": "P-256", "x": x, "y": y,
                    "kid": kid, "alg": "ES256", "use": "sig",
                });
                Self {
                    kid,
                    alg,
                    pair: Pair::Ec(pair),
                    jwk,
                }
            }
            KeyAlg::Rs256 => {
                let pair = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .expect("an RSA-2048 key");
                let public = pair.public_key();
                let n = b64url(public.modulus().big_endian_without_leading_zero());
                let e = b64url(public.exponent().big_endian_without_leading_zero());
                let kid = thumbprint(&format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#));
                let jwk = json!({
                    "kty": "RSA", "n": n, "e": e,
                    "kid": kid, "alg": "RS256", "use": "sig",
                });
                Self {
                    kid,
                    alg,
                    pair: Pair::Rsa(pair),
                    jwk,
                }
            }
        }
    }

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Ec(p) => p
                .sign(&rng, msg)
                .expect("an ES256 signature")
                .as_ref()
                .to_vec(),
            Pair::Rsa(p) => {
                let mut out = vec![0u8; p.public_modulus_len()];
                p.sign(&RSA_PKCS1_SHA256, &rng, msg, &mut out)
                    .expect("an RS256 signature");
                out
            }
        }
    }

    fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
        match &self.pair {
            Pair::Ec(p) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, p.public_key())
                .verify(msg, signature)
                .is_ok(),
            Pair::Rsa(p) => {
                let public = p.public_key();
                RsaPublicKeyComponents {
                    n: public.modulus().big_endian_without_leading_zero(),
                    e: public.exponent().big_endian_without_leading_zero(),
                }
                .verify(&RSA_PKCS1_2048_8192_SHA256, msg, signature)
                .is_ok()
            }
        }
    }
}

fn thumbprint(canonical_jwk: &str) -> String {
    b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical_jwk.as_bytes()).as_ref())
}

// ---------------------------------------------------------------------------
// Minting options

/// Which key signs a token minted by [`TestIssuer::mint_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Signer {
    /// The current signing key (as [`TestIssuer::mint`]).
    #[default]
    Current,
    /// The issuer's key with this `kid`, published or not (e.g. one dropped by
    /// [`TestIssuer::drop_old_keys`]).
    Kid(String),
    /// No signature: header `alg: "none"` and an empty signature part.
    AlgNone,
    /// HMAC-SHA256 with this secret (e.g. the public key, for a key-confusion
    /// forgery): header `alg: "HS256"`.
    Hs256(Vec<u8>),
    /// A fresh key of this algorithm that the JWKS never publishes, with a `kid`
    /// of its own (override the header's `kid` to pose as a published key).
    Foreign(KeyAlg),
}

/// How [`TestIssuer::mint_with`] signs: the [`Signer`] and header overrides.
///
/// The header starts as `{"alg", "kid", "typ": "JWT"}` for the signer (`alg:
/// "none"` and `HS256` tokens keep the current key's `kid`, as a forger would);
/// then each override is applied: a value replaces the field, `null` removes it.
/// The signature is over the final header.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mint {
    /// Which key signs.
    pub signer: Signer,
    /// Header fields to set (`null` removes one).
    pub header: Map<String, Value>,
}

impl Mint {
    /// Sign with `signer`.
    pub fn signer(signer: Signer) -> Self {
        Self {
            signer,
            header: Map::new(),
        }
    }

    /// `alg: none`, no signature.
    pub fn alg_none() -> Self {
        Self::signer(Signer::AlgNone)
    }

    /// HS256 with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::signer(Signer::Hs256(secret.to_vec()))
    }

    /// A key not in the JWKS.
    pub fn foreign(alg: KeyAlg) -> Self {
        Self::signer(Signer::Foreign(alg))
    }

    /// The issuer's key `kid`.
    pub fn key(kid: &str) -> Self {
        Self::signer(Signer::Kid(kid.to_string()))
    }

    /// Also set header field `name` to `value` (`Value::Null` removes it).
    pub fn header(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.header.insert(name.to_string(), value.into());
        self
    }
}

// ---------------------------------------------------------------------------
// Claim sets

/// Apply `extra` to `claims`: each value replaces the claim, `null` removes it.
fn merge(mut claims: Value, extra: &Map<String, Value>) -> Value {
    if let Value::Object(m) = &mut claims {
        for (k, v) in extra {
            if v.is_null() {
                m.remove(k);
            } else {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    claims
}

fn issued_at(now: i64) -> i64 {
    if now == 0 { unix_now() } else { now }
}

/// A GitHub Actions job, for the claims of its OIDC token
/// ([`GithubJob::claims`], [`TestIssuer::github_claims`]).
///
/// The defaults are a push to `main` of `acme/api` on a GitHub-hosted runner,
/// with no environment.
#[derive(Debug, Clone, PartialEq)]
pub struct GithubJob {
    /// `aud` (default `lanyard-server`; GitHub's own default is the owner's URL,
    /// `https://github.com/OWNER`, which the token-request flow uses when no
    /// audience is asked for).
    pub audience: String,
    /// `repository`, `OWNER/REPO` (`repository_owner` is the part before `/`).
    pub repository: String,
    /// `repository_id` (a string of digits).
    pub repository_id: String,
    /// `repository_owner_id`.
    pub repository_owner_id: String,
    /// `repository_visibility`: `public`, `private` or `internal`.
    pub repository_visibility: String,
    /// `ref`, e.g. `refs/heads/main` or `refs/tags/v1.0.0`.
    pub ref_: String,
    /// `ref_type`: `branch` or `tag`.
    pub ref_type: String,
    /// `ref_protected` (GitHub sends the string `"true"`/`"false"`).
    pub ref_protected: bool,
    /// `environment`; also changes `sub` to `repo:…:environment:ENV`.
    pub environment: Option<String>,
    /// `event_name`, e.g. `push`, `pull_request`, `workflow_dispatch`.
    pub event_name: String,
    /// `run_id`.
    pub run_id: String,
    /// `run_number`.
    pub run_number: String,
    /// `run_attempt`.
    pub run_attempt: String,
    /// `sha`, the commit (also `workflow_sha` and `job_workflow_sha`).
    pub sha: String,
    /// `actor`.
    pub actor: String,
    /// `actor_id`.
    pub actor_id: String,
    /// `workflow`, the workflow's name.
    pub workflow: String,
    /// The workflow file, for `workflow_ref` (`REPO/PATH@REF`).
    pub workflow_path: String,
    /// `job_workflow_ref` when the job runs a reusable workflow of another
    /// repository; by default the same as `workflow_ref`.
    pub job_workflow_ref: Option<String>,
    /// `head_ref` (pull requests).
    pub head_ref: String,
    /// `base_ref` (pull requests).
    pub base_ref: String,
    /// `runner_environment`: `github-hosted` or `self-hosted`.
    pub runner_environment: String,
    /// `enterprise` and `enterprise_id`, for repositories of an enterprise.
    pub enterprise: Option<(String, String)>,
    /// `iat`; 0 (the default) means the real clock when the claims are built.
    pub now: i64,
    /// `exp - iat` (GitHub: 5 minutes). `nbf` is `iat - 600`, as in GitHub's
    /// documented example.
    pub expires_in: i64,
    /// `jti`; `None` (the default) draws a fresh UUID for each claim set.
    pub jti: Option<String>,
    /// Claims set last (`null` removes one).
    pub extra: Map<String, Value>,
}

impl Default for GithubJob {
    fn default() -> Self {
        Self {
            audience: "lanyard-server".into(),
            repository: "acme/api".into(),
            repository_id: "690123456".into(),
            repository_owner_id: "1234567".into(),
            repository_visibility: "private".into(),
            ref_: "refs/heads/main".into(),
            ref_type: "branch".into(),
            ref_protected: true,
            environment: None,
            event_name: "push".into(),
            run_id: "9876543210".into(),
            run_number: "42".into(),
            run_attempt: "1".into(),
            sha: "7d0b8f6c2a1e4b3d9c8f7e6a5b4c3d2e1f0a9b8c".into(),
            actor: "octocat".into(),
            actor_id: "583231".into(),
            workflow: "CI".into(),
            workflow_path: ".github/workflows/ci.yml".into(),
            job_workflow_ref: None,
            head_ref: String::new(),
            base_ref: String::new(),
            runner_environment: "github-hosted".into(),
            enterprise: None,
            now: 0,
            expires_in: 300,
            jti: None,
            extra: Map::new(),
        }
    }
}

impl GithubJob {
    /// `repository_owner`.
    pub fn owner(&self) -> &str {
        self.repository
            .split_once('/')
            .map_or(self.repository.as_str(), |(o, _)| o)
    }

    /// GitHub's default audience, `https://github.com/OWNER`.
    pub fn default_audience(&self) -> String {
        format!("https://github.com/{}", self.owner())
    }

    /// `sub` as GitHub builds it: `repo:OWNER/REPO:environment:ENV` for a job with
    /// an environment, `repo:OWNER/REPO:pull_request` for a pull request, else
    /// `repo:OWNER/REPO:ref:REF`.
    pub fn subject(&self) -> String {
        match (&self.environment, self.event_name.as_str()) {
            (Some(env), _) => format!("repo:{}:environment:{env}", self.repository),
            (None, "pull_request") => format!("repo:{}:pull_request", self.repository),
            (None, _) => format!("repo:{}:ref:{}", self.repository, self.ref_),
        }
    }

    /// The claim set of this job's token from `issuer`.
    pub fn claims(&self, issuer: &str) -> Value {
        let iat = issued_at(self.now);
        let workflow_ref = format!("{}/{}@{}", self.repository, self.workflow_path, self.ref_);
        let mut c = json!({
            "jti": self.jti.clone().unwrap_or_else(random_uuid),
            "sub": self.subject(),
            "aud": self.audience,
            "ref": self.ref_,
            "sha": self.sha,
            "repository": self.repository,
            "repository_owner": self.owner(),
            "repository_owner_id": self.repository_owner_id,
            "run_id": self.run_id,
            "run_number": self.run_number,
            "run_attempt": self.run_attempt,
            "repository_visibility": self.repository_visibility,
            "repository_id": self.repository_id,
            "actor_id": self.actor_id,
            "actor": self.actor,
            "workflow": self.workflow,
            "head_ref": self.head_ref,
            "base_ref": self.base_ref,
            "event_name": self.event_name,
            "ref_protected": self.ref_protected.to_string(),
            "ref_type": self.ref_type,
            "workflow_ref": workflow_ref,
            "workflow_sha": self.sha,
            "job_workflow_ref": self.job_workflow_ref.clone().unwrap_or(workflow_ref),
            "job_workflow_sha": self.sha,
            "runner_environment": self.runner_environment,
            "iss": issuer,
            "nbf": iat - 600,
            "exp": iat + self.expires_in,
            "iat": iat,
        });
        if let Some(env) = &self.environment {
            c["environment"] = json!(env);
        }
        if let Some((slug, id)) = &self.enterprise {
            c["enterprise"] = json!(slug);
            c["enterprise_id"] = json!(id);
        }
        merge(c, &self.extra)
    }
}

/// A GitLab CI job with an `id_tokens` entry, for the claims of that ID token
/// ([`GitlabJob::claims`], [`TestIssuer::gitlab_claims`]).
///
/// The defaults are a push pipeline on the protected branch `main` of
/// `acme/api`, on a GitLab-hosted runner, with no environment.
#[derive(Debug, Clone, PartialEq)]
pub struct GitlabJob {
    /// `aud`, as the job's `id_tokens` declares it (default `lanyard-server`).
    pub audience: String,
    /// `namespace_id`.
    pub namespace_id: String,
    /// `namespace_path`, the group (or user) path.
    pub namespace_path: String,
    /// `project_id`.
    pub project_id: String,
    /// `project_path`, `GROUP/PROJECT`.
    pub project_path: String,
    /// `project_visibility`.
    pub project_visibility: String,
    /// `user_id`.
    pub user_id: String,
    /// `user_login`.
    pub user_login: String,
    /// `user_email`.
    pub user_email: String,
    /// `user_access_level`, e.g. `developer`, `maintainer`.
    pub user_access_level: String,
    /// `pipeline_id`.
    pub pipeline_id: String,
    /// `pipeline_source`, e.g. `push`, `merge_request_event`, `schedule`.
    pub pipeline_source: String,
    /// `job_id`.
    pub job_id: String,
    /// `ref`, the branch or tag name (no `refs/heads/` prefix).
    pub ref_: String,
    /// `ref_type`: `branch` or `tag`.
    pub ref_type: String,
    /// `ref_protected` (GitLab sends the string `"true"`/`"false"`).
    pub ref_protected: bool,
    /// `environment`, with `environment_protected`, `deployment_tier` and
    /// `environment_action` (GitLab sends those only for a job with an
    /// environment).
    pub environment: Option<String>,
    /// `environment_protected` (a string, like `ref_protected`).
    pub environment_protected: bool,
    /// `deployment_tier`, e.g. `production`.
    pub deployment_tier: String,
    /// `environment_action`, e.g. `start`.
    pub environment_action: String,
    /// `runner_id` (a number).
    pub runner_id: i64,
    /// `runner_environment`: `gitlab-hosted` or `self-hosted`.
    pub runner_environment: String,
    /// `sha` (also `ci_config_sha`).
    pub sha: String,
    /// `iat`; 0 (the default) means the real clock when the claims are built.
    pub now: i64,
    /// `exp - iat` (GitLab: the job's timeout, default one hour). `nbf` is
    /// `iat - 5`, as GitLab sets it.
    pub expires_in: i64,
    /// `jti`; `None` (the default) draws a fresh UUID for each claim set.
    pub jti: Option<String>,
    /// Claims set last (`null` removes one).
    pub extra: Map<String, Value>,
}

impl Default for GitlabJob {
    fn default() -> Self {
        Self {
            audience: "lanyard-server".into(),
            namespace_id: "72".into(),
            namespace_path: "acme".into(),
            project_id: "20".into(),
            project_path: "acme/api".into(),
            project_visibility: "private".into(),
            user_id: "1".into(),
            user_login: "sample-user".into(),
            user_email: "sample-user@example.com".into(),
            user_access_level: "maintainer".into(),
            pipeline_id: "574".into(),
            pipeline_source: "push".into(),
            job_id: "302".into(),
            ref_: "main".into(),
            ref_type: "branch".into(),
            ref_protected: true,
            environment: None,
            environment_protected: false,
            deployment_tier: "production".into(),
            environment_action: "start".into(),
            runner_id: 1,
            runner_environment: "gitlab-hosted".into(),
            sha: "714a629c0b401fdce83e847fc9589983fc6f46bc".into(),
            now: 0,
            expires_in: 3600,
            jti: None,
            extra: Map::new(),
        }
    }
}

impl GitlabJob {
    /// `sub`: `project_path:GROUP/PROJECT:ref_type:TYPE:ref:REF`.
    pub fn subject(&self) -> String {
        format!(
            "project_path:{}:ref_type:{}:ref:{}",
            self.project_path, self.ref_type, self.ref_
        )
    }

    /// The claim set of this job's ID token from `issuer`.
    pub fn claims(&self, issuer: &str) -> Value {
        let iat = issued_at(self.now);
        let host = issuer
            .split_once("://")
            .map_or(issuer, |(_, rest)| rest)
            .trim_end_matches('/');
        let ref_path = match self.ref_type.as_str() {
            "tag" => format!("refs/tags/{}", self.ref_),
            _ => format!("refs/heads/{}", self.ref_),
        };
        let mut c = json!({
            "namespace_id": self.namespace_id,
            "namespace_path": self.namespace_path,
            "project_id": self.project_id,
            "project_path": self.project_path,
            "user_id": self.user_id,
            "user_login": self.user_login,
            "user_email": self.user_email,
            "user_access_level": self.user_access_level,
            "pipeline_id": self.pipeline_id,
            "pipeline_source": self.pipeline_source,
            "job_id": self.job_id,
            "ref": self.ref_,
            "ref_type": self.ref_type,
            "ref_path": ref_path,
            "ref_protected": self.ref_protected.to_string(),
            "runner_id": self.runner_id,
            "runner_environment": self.runner_environment,
            "sha": self.sha,
            "project_visibility": self.project_visibility,
            "ci_config_ref_uri": format!("{host}/{}//.gitlab-ci.yml@{ref_path}", self.project_path),
            "ci_config_sha": self.sha,
            "jti": self.jti.clone().unwrap_or_else(random_uuid),
            "iss": issuer,
            "iat": iat,
            "nbf": iat - 5,
            "exp": iat + self.expires_in,
            "sub": self.subject(),
            "aud": self.audience,
        });
        if let Some(env) = &self.environment {
            c["environment"] = json!(env);
            c["environment_protected"] = json!(self.environment_protected.to_string());
            c["deployment_tier"] = json!(self.deployment_tier);
            c["environment_action"] = json!(self.environment_action);
        }
        merge(c, &self.extra)
    }
}

/// A pod with a projected service-account token, for the token's claims
/// ([`K8sPod::claims`], [`TestIssuer::k8s_claims`]), as kube-apiserver 1.30+
/// issues them (with the node binding).
#[derive(Debug, Clone, PartialEq)]
pub struct K8sPod {
    /// `aud` (an array; default `["lanyard-server"]`).
    pub audiences: Vec<String>,
    /// `kubernetes.io.namespace`.
    pub namespace: String,
    /// `kubernetes.io.serviceaccount.name`.
    pub service_account: String,
    /// `kubernetes.io.serviceaccount.uid`.
    pub service_account_uid: String,
    /// `kubernetes.io.pod.name`.
    pub pod_name: String,
    /// `kubernetes.io.pod.uid`.
    pub pod_uid: String,
    /// `kubernetes.io.node.name` (`None`: no node binding, as before 1.30).
    pub node_name: Option<String>,
    /// `kubernetes.io.node.uid`.
    pub node_uid: Option<String>,
    /// `kubernetes.io.warnafter`, which the API server adds to tokens it extended.
    pub warn_after: Option<i64>,
    /// `iat` (and `nbf`); 0 (the default) means the real clock.
    pub now: i64,
    /// `exp - iat` (the projection's `expirationSeconds`, default one hour).
    pub expires_in: i64,
    /// `jti`; `None` (the default) draws a fresh UUID for each claim set.
    pub jti: Option<String>,
    /// Claims set last (`null` removes one).
    pub extra: Map<String, Value>,
}

impl Default for K8sPod {
    fn default() -> Self {
        Self {
            audiences: vec!["lanyard-server".into()],
            namespace: "lanyard".into(),
            service_account: "lanyard-agent".into(),
            service_account_uid: "0d5b1e4a-1111-4222-8333-444455556666".into(),
            pod_name: "lanyard-agent-v5wgr".into(),
            pod_uid: "79261129-6b60-11e9-9054-0800277ac80f".into(),
            node_name: Some("worker-1".into()),
            node_uid: Some("5dbb7b21-65fe-11e9-b1b0-0800277ac80f".into()),
            warn_after: None,
            now: 0,
            expires_in: 3600,
            jti: None,
            extra: Map::new(),
        }
    }
}

impl K8sPod {
    /// `sub`: `system:serviceaccount:NS:SA`.
    pub fn subject(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }

    /// The claim set of this pod's projected token from `issuer`.
    pub fn claims(&self, issuer: &str) -> Value {
        let iat = issued_at(self.now);
        let mut k = json!({
            "namespace": self.namespace,
            "pod": {"name": self.pod_name, "uid": self.pod_uid},
            "serviceaccount": {"name": self.service_account, "uid": self.service_account_uid},
        });
        if let Some(name) = &self.node_name {
            k["node"] = json!({"name": name, "uid": self.node_uid.clone().unwrap_or_default()});
        }
        if let Some(w) = self.warn_after {
            k["warnafter"] = json!(w);
        }
        let c = json!({
            "aud": self.audiences,
            "exp": iat + self.expires_in,
            "iat": iat,
            "iss": issuer,
            "jti": self.jti.clone().unwrap_or_else(random_uuid),
            "kubernetes.io": k,
            "nbf": iat,
            "sub": self.subject(),
        });
        merge(c, &self.extra)
    }
}

// ---------------------------------------------------------------------------
// The issuer

/// How the TokenReview endpoint fails, for failure tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewFailure {
    /// 403: the reviewer may not create TokenReviews (no `system:auth-delegator`).
    Forbidden,
    /// 500: an internal error of the API server.
    InternalError,
}

/// How to start a [`TestIssuer`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuerOptions {
    /// A path for the issuer URL (`/gha` gives `https://127.0.0.1:PORT/gha`), as
    /// GitHub Enterprise and other multi-tenant issuers have; empty for none.
    pub path: String,
    /// The first signing key's algorithm (default RS256).
    pub alg: KeyAlg,
}

struct GithubFlow {
    job: GithubJob,
    request_token: String,
    audiences: Vec<Option<String>>,
}

struct Review {
    reviewer_token: String,
    failure: Option<ReviewFailure>,
    time: Option<i64>,
    api_audiences: Vec<String>,
    deleted_pods: BTreeSet<String>,
}

struct Inner {
    issuer: String,
    prefix: String,
    /// Every key ever made, by kid (dropped ones too, for [`Signer::Kid`]).
    keys: BTreeMap<String, Arc<IssuerKey>>,
    /// The published kids, in the order they were added.
    published: Vec<String>,
    current: String,
    counts: BTreeMap<String, usize>,
    failures: BTreeMap<String, u16>,
    discovery_override: Option<Value>,
    github: GithubFlow,
    review: Review,
}

impl Inner {
    fn key(&self, kid: &str) -> Arc<IssuerKey> {
        self.keys
            .get(kid)
            .cloned()
            .unwrap_or_else(|| panic!("the test issuer has no key {kid:?}"))
    }

    fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .published
            .iter()
            .map(|k| self.key(k).jwk.clone())
            .collect();
        json!({ "keys": keys })
    }

    fn discovery(&self) -> Value {
        if let Some(v) = &self.discovery_override {
            return v.clone();
        }
        let mut algs: Vec<&str> = self
            .published
            .iter()
            .map(|k| self.key(k).alg.name())
            .collect();
        algs.sort_unstable();
        algs.dedup();
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/jwks", self.issuer),
            "subject_types_supported": ["public", "pairwise"],
            "response_types_supported": ["id_token"],
            "claims_supported": GITHUB_CLAIMS_SUPPORTED,
            "id_token_signing_alg_values_supported": algs,
            "scopes_supported": ["openid"],
        })
    }

    /// Sign `claims` as `how` says; `foreign` is the key for [`Signer::Foreign`]
    /// (made by the caller, outside the lock).
    fn mint(&self, claims: &Value, how: &Mint, foreign: Option<Arc<IssuerKey>>) -> String {
        let current = self.key(&self.current);
        let mut header = Map::new();
        let other;
        let key: Option<&IssuerKey> = match &how.signer {
            Signer::Current => Some(&current),
            Signer::Kid(kid) => {
                other = self.key(kid);
                Some(&other)
            }
            Signer::Foreign(_) => {
                other = foreign.expect("a foreign key for Signer::Foreign");
                Some(&other)
            }
            Signer::AlgNone => {
                header.insert("alg".into(), json!("none"));
                header.insert("kid".into(), json!(current.kid));
                None
            }
            Signer::Hs256(_) => {
                header.insert("alg".into(), json!("HS256"));
                header.insert("kid".into(), json!(current.kid));
                None
            }
        };
        if let Some(k) = key {
            header.insert("alg".into(), json!(k.alg.name()));
            header.insert("kid".into(), json!(k.kid));
        }
        header.insert("typ".into(), json!("JWT"));
        let header = merge(Value::Object(header), &how.header);
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signature = match (&how.signer, key) {
            (_, Some(k)) => k.sign(signing_input.as_bytes()),
            (Signer::Hs256(secret), None) => {
                let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
                aws_lc_rs::hmac::sign(&key, signing_input.as_bytes())
                    .as_ref()
                    .to_vec()
            }
            _ => Vec::new(),
        };
        format!("{signing_input}.{}", b64url(&signature))
    }

    fn full_path(&self, path: &str) -> String {
        if self.prefix.is_empty()
            || path == self.prefix
            || path.starts_with(&format!("{}/", self.prefix))
        {
            path.to_string()
        } else {
            format!("{}{path}", self.prefix)
        }
    }
}

/// An OIDC issuer over HTTPS on `127.0.0.1`, on its own thread; stopped on drop.
///
/// Usable from sync tests and from `#[tokio::test]`s alike: it never runs on the
/// caller's runtime.
pub struct TestIssuer {
    inner: Arc<Mutex<Inner>>,
    issuer: String,
    ca_pem: String,
    ca_der: Vec<u8>,
    _service: Background,
}

impl std::fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestIssuer")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl TestIssuer {
    /// An issuer at `https://127.0.0.1:PORT` with one RS256 key.
    pub fn start() -> Self {
        Self::start_with(IssuerOptions::default())
    }

    /// An issuer at `https://127.0.0.1:PORT{path}` (e.g. `/gha`).
    pub fn start_with_path(path: &str) -> Self {
        Self::start_with(IssuerOptions {
            path: path.to_string(),
            ..IssuerOptions::default()
        })
    }

    /// An issuer as `options` say.
    pub fn start_with(options: IssuerOptions) -> Self {
        let prefix = options.path.trim_end_matches('/').to_string();
        assert!(
            prefix.is_empty() || (prefix.starts_with('/') && !prefix.contains(['?', '#'])),
            "an issuer path starts with / and has no query or fragment: {prefix:?}"
        );
        let tls = TestTls::generate();
        let first = IssuerKey::generate(options.alg);
        let current = first.kid.clone();
        let inner = Arc::new(Mutex::new(Inner {
            issuer: String::new(),
            prefix: prefix.clone(),
            keys: BTreeMap::from([(current.clone(), Arc::new(first))]),
            published: vec![current.clone()],
            current,
            counts: BTreeMap::new(),
            failures: BTreeMap::new(),
            discovery_override: None,
            github: GithubFlow {
                job: GithubJob::default(),
                request_token: random_hex(),
                audiences: Vec::new(),
            },
            review: Review {
                reviewer_token: random_hex(),
                failure: None,
                time: None,
                api_audiences: Vec::new(),
                deleted_pods: BTreeSet::new(),
            },
        }));
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let service = Background::serve("oidc", router, Some(tls.acceptor()));
        let issuer = format!("https://{}{prefix}", service.addr());
        {
            let mut st = lock(&inner);
            st.issuer = issuer.clone();
            st.review.api_audiences = vec![issuer.clone()];
        }
        Self {
            inner,
            issuer,
            ca_pem: tls.ca_pem,
            ca_der: tls.ca_der,
            _service: service,
        }
    }

    /// The issuer URL, `https://127.0.0.1:PORT[/path]` (no trailing slash): what
    /// tokens carry in `iss` and the discovery document in `issuer`.
    pub fn issuer(&self) -> String {
        self.issuer.clone()
    }

    /// `{issuer}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// `{issuer}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        self.url("/.well-known/openid-configuration")
    }

    /// `{issuer}/jwks`, the discovery document's `jwks_uri`.
    pub fn jwks_uri(&self) -> String {
        self.url("/jwks")
    }

    /// The test CA that issued the server certificate (PEM).
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// The test CA certificate (DER).
    pub fn ca_der(&self) -> Vec<u8> {
        self.ca_der.clone()
    }

    /// Write [`Self::ca_pem`] to `path`.
    pub fn write_ca(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        std::fs::write(path, &self.ca_pem)
            .unwrap_or_else(|e| panic!("write the test CA to {}: {e}", path.display()));
    }

    // --- keys ---

    /// The `kid` of the current signing key.
    pub fn current_kid(&self) -> String {
        lock(&self.inner).current.clone()
    }

    /// The published `kid`s, oldest first.
    pub fn kids(&self) -> Vec<String> {
        lock(&self.inner).published.clone()
    }

    /// The JWK Set `/jwks` serves (public keys only).
    pub fn jwks(&self) -> Value {
        lock(&self.inner).jwks()
    }

    /// The public JWK of key `kid`.
    pub fn jwk(&self, kid: &str) -> Value {
        lock(&self.inner).key(kid).jwk.clone()
    }

    /// Write [`Self::jwks`] to `path` (for configurations that read a JWKS file).
    pub fn write_jwks(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        std::fs::write(path, self.jwks().to_string())
            .unwrap_or_else(|e| panic!("write the JWKS to {}: {e}", path.display()));
    }

    /// Publish a new key of the current key's algorithm and sign with it from now
    /// on; the old keys stay published. Returns the new `kid`.
    pub fn rotate_key(&self) -> String {
        let alg = {
            let st = lock(&self.inner);
            st.key(&st.current).alg
        };
        self.rotate_key_to(alg)
    }

    /// [`Self::rotate_key`] to a key of algorithm `alg`.
    pub fn rotate_key_to(&self, alg: KeyAlg) -> String {
        let kid = self.add_key(alg);
        lock(&self.inner).current = kid.clone();
        kid
    }

    /// Publish a new key of algorithm `alg` without signing with it. Returns its
    /// `kid`.
    pub fn add_key(&self, alg: KeyAlg) -> String {
        let key = IssuerKey::generate(alg);
        let kid = key.kid.clone();
        let mut st = lock(&self.inner);
        st.keys.insert(kid.clone(), Arc::new(key));
        st.published.push(kid.clone());
        kid
    }

    /// Stop publishing every key but the current one (they can still sign, with
    /// [`Signer::Kid`]).
    pub fn drop_old_keys(&self) {
        let mut st = lock(&self.inner);
        let current = st.current.clone();
        st.published.retain(|k| *k == current);
    }

    // --- request accounting and failures ---

    /// How many requests reached `path`: a path under the issuer (`/jwks`,
    /// `/.well-known/openid-configuration`) or the full request path.
    pub fn fetch_count(&self, path: &str) -> usize {
        let st = lock(&self.inner);
        let full = st.full_path(path);
        st.counts.get(&full).copied().unwrap_or(0)
    }

    /// Every request path seen, with its count.
    pub fn fetch_counts(&self) -> BTreeMap<String, usize> {
        lock(&self.inner).counts.clone()
    }

    /// Answer every request to `path` (as for [`Self::fetch_count`]) with `status`
    /// and no useful body; `None` serves it normally again.
    pub fn fail_path(&self, path: &str, status: Option<u16>) {
        let mut st = lock(&self.inner);
        let full = st.full_path(path);
        match status {
            Some(s) => st.failures.insert(full, s),
            None => st.failures.remove(&full),
        };
    }

    /// Serve `doc` as the discovery document instead of the issuer's own (e.g.
    /// with a different `issuer`); `None` restores it.
    pub fn override_discovery(&self, doc: Option<Value>) {
        lock(&self.inner).discovery_override = doc;
    }

    /// The discovery document served.
    pub fn discovery(&self) -> Value {
        lock(&self.inner).discovery()
    }

    // --- minting ---

    /// A compact JWS of `claims` signed with the current key (header `alg`, `kid`,
    /// `typ: JWT`).
    pub fn mint(&self, claims: Value) -> String {
        self.mint_with(claims, Mint::default())
    }

    /// A compact JWS of `claims` signed as `how` says (forgeries included).
    pub fn mint_with(&self, claims: Value, how: Mint) -> String {
        let foreign = match &how.signer {
            Signer::Foreign(alg) => {
                let mut k = IssuerKey::generate(*alg);
                k.kid = format!("foreign-{}", &k.kid[..16]);
                Some(Arc::new(k))
            }
            _ => None,
        };
        lock(&self.inner).mint(&claims, &how, foreign)
    }

    /// [`GithubJob::claims`] with this issuer.
    pub fn github_claims(&self, job: &GithubJob) -> Value {
        job.claims(&self.issuer)
    }

    /// [`GitlabJob::claims`] with this issuer.
    pub fn gitlab_claims(&self, job: &GitlabJob) -> Value {
        job.claims(&self.issuer)
    }

    /// [`K8sPod::claims`] with this issuer.
    pub fn k8s_claims(&self, pod: &K8sPod) -> Value {
        pod.claims(&self.issuer)
    }

    // --- the GitHub Actions token request ---

    /// `(ACTIONS_ID_TOKEN_REQUEST_URL, ACTIONS_ID_TOKEN_REQUEST_TOKEN)`. The URL
    /// has a query string already (`…/_apis/token?api-version=2.0`), so a client
    /// appends `&audience=AUD`; a request without `api-version=2.0` gets 400.
    pub fn github_request(&self) -> (String, String) {
        (
            format!("{}{GITHUB_REQUEST_PATH}?api-version=2.0", self.issuer),
            lock(&self.inner).github.request_token.clone(),
        )
    }

    /// The job whose tokens the token request returns (its `audience` is replaced
    /// by the requested one, or GitHub's default, the owner's URL; each token
    /// gets a fresh `jti` unless the job fixes one).
    pub fn set_github_job(&self, job: GithubJob) {
        lock(&self.inner).github.job = job;
    }

    /// The audiences token requests asked for, in order (`None`: none asked).
    pub fn requested_audiences(&self) -> Vec<Option<String>> {
        lock(&self.inner).github.audiences.clone()
    }

    // --- the Kubernetes TokenReview API ---

    /// `{issuer}/apis/authentication.k8s.io/v1/tokenreviews`.
    pub fn token_review_url(&self) -> String {
        self.url(TOKEN_REVIEW_PATH)
    }

    /// The bearer token a TokenReview request must carry (the reviewer's own
    /// service-account token).
    pub fn reviewer_token(&self) -> String {
        lock(&self.inner).review.reviewer_token.clone()
    }

    /// Make TokenReviews fail with 403 or 500; `None` reviews again.
    pub fn set_review_failure(&self, failure: Option<ReviewFailure>) {
        lock(&self.inner).review.failure = failure;
    }

    /// Review tokens as of `now` (unix seconds) instead of the real clock; `None`
    /// is the real clock again.
    pub fn set_review_time(&self, now: Option<i64>) {
        lock(&self.inner).review.time = now;
    }

    /// The API server's audiences (`--api-audiences`), used when a review asks for
    /// none; default: the issuer URL.
    pub fn set_api_audiences(&self, audiences: &[&str]) {
        lock(&self.inner).review.api_audiences =
            audiences.iter().map(|a| (*a).to_string()).collect();
    }

    /// Delete the pod with UID `pod_uid`: reviews of tokens bound to it fail, as
    /// the API server refuses tokens whose bound object is gone.
    pub fn delete_pod(&self, pod_uid: &str) {
        lock(&self.inner)
            .review
            .deleted_pods
            .insert(pod_uid.to_string());
    }
}

// ---------------------------------------------------------------------------
// TLS

pub(crate) struct TestTls {
    pub(crate) ca_pem: String,
    ca_der: Vec<u8>,
    leaf_der: Vec<u8>,
    leaf_key_pkcs8: Vec<u8>,
}

impl TestTls {
    pub(crate) fn generate() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType,
            ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
        };
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Lanyard testkit issuer CA");
        ca.distinguished_name = dn;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("a self-signed CA");
        let ca_issuer = Issuer::new(ca, ca_key);

        let leaf_key = KeyPair::generate().expect("a server key");
        let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
        leaf.subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "127.0.0.1");
        leaf.distinguished_name = dn;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf
            .signed_by(&leaf_key, &ca_issuer)
            .expect("a server certificate");
        Self {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().to_vec(),
            leaf_der: leaf_cert.der().to_vec(),
            leaf_key_pkcs8: leaf_key.serialize_der(),
        }
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(self.leaf_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key_pkcs8.clone())),
            )
            .expect("a TLS server configuration");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    }
}

// ---------------------------------------------------------------------------
// Handlers

type Shared = Arc<Mutex<Inner>>;

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let mut st = lock(&shared);
    *st.counts.entry(path.clone()).or_default() += 1;
    if let Some(code) = st.failures.get(&path) {
        let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, format!("injected failure {code}\n")).into_response();
    }
    let Some(rest) = path.strip_prefix(&st.prefix) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    match (method, rest) {
        (Method::GET, "/.well-known/openid-configuration") => {
            json_response(StatusCode::OK, &st.discovery())
        }
        (Method::GET, "/jwks") => json_response(StatusCode::OK, &st.jwks()),
        (Method::GET, GITHUB_REQUEST_PATH) => github_token(&mut st, &uri, &headers),
        (Method::POST, TOKEN_REVIEW_PATH) => token_review(&st, &headers, &body),
        (
            _,
            "/.well-known/openid-configuration" | "/jwks" | GITHUB_REQUEST_PATH | TOKEN_REVIEW_PATH,
        ) => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response(),
        _ => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

fn query_params(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn github_token(st: &mut Inner, uri: &Uri, headers: &HeaderMap) -> Response {
    if bearer(headers) != Some(st.github.request_token.as_str()) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"message": "Unauthorized: the request token is missing or invalid"}),
        );
    }
    let params = query_params(uri);
    if !params.iter().any(|(k, v)| k == "api-version" && v == "2.0") {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"message": "api-version=2.0 is required (append &audience=… to the request URL; do not replace its query)"}),
        );
    }
    let audience = params
        .iter()
        .find(|(k, _)| k == "audience")
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty());
    st.github.audiences.push(audience.clone());
    let mut job = st.github.job.clone();
    job.audience = audience.unwrap_or_else(|| job.default_audience());
    let claims = job.claims(&st.issuer);
    let token = st.mint(&claims, &Mint::default(), None);
    json_response(
        StatusCode::OK,
        &json!({"count": token.len(), "value": token}),
    )
}

/// A Kubernetes `Status` failure body.
fn k8s_status(code: StatusCode, reason: &str, message: &str) -> Response {
    json_response(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason,
            "details": {"group": "authentication.k8s.io", "kind": "tokenreviews"},
            "code": code.as_u16(),
        }),
    )
}

fn token_review(st: &Inner, headers: &HeaderMap, body: &[u8]) -> Response {
    if bearer(headers) != Some(st.review.reviewer_token.as_str()) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized",
                "code": 401,
            }),
        );
    }
    match st.review.failure {
        Some(ReviewFailure::Forbidden) => {
            return k8s_status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:lanyard:lanyard-server\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope",
            );
        }
        Some(ReviewFailure::InternalError) => {
            return k8s_status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "Internal error occurred: the test API server was told to fail",
            );
        }
        None => {}
    }
    let review: TokenReview = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return k8s_status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("the body of the request was in an unknown format: {e}"),
            );
        }
    };
    if !review.kind.is_empty() && review.kind != "TokenReview" {
        return k8s_status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("kind {:?} is not TokenReview", review.kind),
        );
    }
    let status = match review_token(st, &review.spec.token, &review.spec.audiences) {
        Ok(status) => status,
        Err(error) => json!({"user": {}, "error": error}),
    };
    json_response(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenReview",
            "apiVersion": TOKEN_REVIEW_API_VERSION,
            "metadata": {"creationTimestamp": null},
            "spec": review.spec,
            "status": status,
        }),
    )
}

/// What kube-apiserver's service-account authenticator decides about `token`.
fn review_token(st: &Inner, token: &str, want: &[String]) -> Result<Value, String> {
    let invalid = |why: &str| format!("[invalid bearer token, {why}]");
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts.as_slice() else {
        return Err(invalid("the token is not a compact JWS"));
    };
    let decode = |x: &str| URL_SAFE_NO_PAD.decode(x).ok();
    let header: Value = decode(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| invalid("the token header is not JSON"))?;
    let claims: Value = decode(p)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| invalid("the token payload is not JSON"))?;
    let signature = decode(s).ok_or_else(|| invalid("the signature is not base64url"))?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let signing_input = format!("{h}.{p}");
    let kid = header.get("kid").and_then(Value::as_str);
    let candidates: Vec<Arc<IssuerKey>> = st
        .published
        .iter()
        .filter(|k| kid.is_none_or(|want| want == k.as_str()))
        .map(|k| st.key(k))
        .filter(|k| k.alg.name() == alg)
        .collect();
    if !candidates
        .iter()
        .any(|k| k.verify(signing_input.as_bytes(), &signature))
    {
        return Err(invalid("square/go-jose: error in cryptographic primitive"));
    }
    if claims.get("iss").and_then(Value::as_str) != Some(st.issuer.as_str()) {
        return Err(invalid("token issuer is not this API server's"));
    }
    let now = st.review.time.unwrap_or_else(unix_now);
    let num = |k: &str| claims.get(k).and_then(Value::as_i64);
    const LEEWAY: i64 = 60;
    match num("exp") {
        Some(exp) if now > exp + LEEWAY => {
            return Err(invalid("service account token has expired"));
        }
        None => return Err(invalid("service account token has no exp")),
        _ => {}
    }
    if let Some(nbf) = num("nbf")
        && now + LEEWAY < nbf
    {
        return Err(invalid("service account token is not valid yet"));
    }
    let token_aud: Vec<String> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    let targets: Vec<String> = if want.is_empty() {
        st.review.api_audiences.clone()
    } else {
        want.to_vec()
    };
    let audiences: Vec<String> = targets
        .iter()
        .filter(|t| token_aud.contains(t))
        .cloned()
        .collect();
    if audiences.is_empty() {
        return Err(invalid(&format!(
            "token audiences {token_aud:?} is invalid for the target audiences {targets:?}"
        )));
    }
    let k = claims.get("kubernetes.io").ok_or_else(|| {
        invalid("the token has no kubernetes.io claim (not a service-account token)")
    })?;
    let at = |path: &[&str]| {
        let mut cur = k;
        for p in path {
            cur = cur.get(p)?;
        }
        cur.as_str().map(str::to_string)
    };
    let (Some(ns), Some(sa)) = (at(&["namespace"]), at(&["serviceaccount", "name"])) else {
        return Err(invalid("the kubernetes.io claim names no service account"));
    };
    let pod_uid = at(&["pod", "uid"]);
    if let Some(uid) = &pod_uid
        && st.review.deleted_pods.contains(uid)
    {
        return Err(invalid(&format!(
            "pod \"{}\" (uid {uid}) is not found: the token's bound object was deleted",
            at(&["pod", "name"]).unwrap_or_default()
        )));
    }
    let mut extra = Map::new();
    for (key, path) in [
        (EXTRA_POD_NAME, &["pod", "name"][..]),
        (EXTRA_POD_UID, &["pod", "uid"][..]),
        (EXTRA_NODE_NAME, &["node", "name"][..]),
        (EXTRA_NODE_UID, &["node", "uid"][..]),
    ] {
        if let Some(v) = at(path) {
            extra.insert(key.to_string(), json!([v]));
        }
    }
    if let Some(jti) = claims.get("jti").and_then(Value::as_str) {
        extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            json!([format!("JTI={jti}")]),
        );
    }
    Ok(json!({
        "authenticated": true,
        "user": {
            "username": format!("system:serviceaccount:{ns}:{sa}"),
            "uid": at(&["serviceaccount", "uid"]).unwrap_or_default(),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
            "extra": extra,
        },
        "audiences": audiences,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testclient::{Resp, request, send};
    use lanyard_core::{FakeClock, TrustDomain};
    use lanyard_nodeattest::discovery::{DiscoveryDocument, UrlPolicy};
    use lanyard_nodeattest::k8s_psat::PsatCluster;
    use lanyard_nodeattest::{Jwks, TokenPolicy, presets, verify_token};

    const NOW: i64 = 1_800_000_000;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn get(iss: &TestIssuer, url: &str) -> Resp {
        request("GET", url, &[], b"", Some(&iss.ca_der()))
    }

    fn served_jwks(iss: &TestIssuer) -> Jwks {
        Jwks::parse(&get(iss, &iss.jwks_uri()).body).unwrap()
    }

    fn decode_part(token: &str, i: usize) -> Value {
        let part = token.split('.').nth(i).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn discovery_names_the_exact_issuer_with_or_without_a_path() {
        for path in ["", "/gha"] {
            let iss = TestIssuer::start_with_path(path);
            assert!(iss.issuer().starts_with("https://127.0.0.1:"));
            assert!(iss.issuer().ends_with(path) && !iss.issuer().ends_with('/'));
            let r = get(
                &iss,
                &format!("{}/.well-known/openid-configuration", iss.issuer()),
            );
            assert_eq!(r.status, 200);
            assert!(
                r.headers["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json")
            );
            let doc = r.json();
            assert_eq!(doc["issuer"], json!(iss.issuer()));
            assert_eq!(doc["jwks_uri"], json!(format!("{}/jwks", iss.issuer())));
            assert_eq!(
                doc["id_token_signing_alg_values_supported"],
                json!(["RS256"])
            );
            assert_eq!(doc["response_types_supported"], json!(["id_token"]));
            assert_eq!(
                doc["subject_types_supported"],
                json!(["public", "pairwise"])
            );
            let claims = doc["claims_supported"].as_array().unwrap();
            for c in [
                "sub",
                "repository",
                "job_workflow_ref",
                "runner_environment",
            ] {
                assert!(claims.contains(&json!(c)), "{c}");
            }
            // The real discovery parser accepts it for exactly this issuer.
            let parsed =
                DiscoveryDocument::parse(&r.body, &iss.issuer(), UrlPolicy::HttpsOnly).unwrap();
            assert_eq!(parsed.jwks_uri, iss.jwks_uri());
            assert!(
                DiscoveryDocument::parse(
                    &r.body,
                    &format!("{}/", iss.issuer()),
                    UrlPolicy::HttpsOnly
                )
                .is_err()
            );
            assert_eq!(iss.fetch_count("/.well-known/openid-configuration"), 1);
        }
        // With a path, nothing is served outside it.
        let iss = TestIssuer::start_with_path("/gha");
        let root = iss.issuer().trim_end_matches("/gha").to_string();
        assert_eq!(
            get(&iss, &format!("{root}/.well-known/openid-configuration")).status,
            404
        );
        assert_eq!(get(&iss, &format!("{root}/jwks")).status, 404);
        assert_eq!(iss.fetch_count("/jwks"), 0);
        assert_eq!(iss.fetch_count("/gha/jwks"), 0);
        get(&iss, &iss.jwks_uri());
        assert_eq!(iss.fetch_count("/jwks"), 1);
        assert_eq!(iss.fetch_count("/gha/jwks"), 1);
    }

    #[test]
    fn the_ca_is_what_tls_clients_trust() {
        let iss = TestIssuer::start();
        assert!(iss.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let dir = std::env::temp_dir().join(format!("lanyard-testkit-ca-{}", random_hex()));
        std::fs::create_dir_all(&dir).unwrap();
        iss.write_ca(dir.join("ca.pem"));
        let pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
        assert_eq!(pem, iss.ca_pem());
        std::fs::remove_dir_all(&dir).unwrap();
        // `localhost` is in the certificate too.
        let url = iss.discovery_url().replace("127.0.0.1", "localhost");
        assert_eq!(get(&iss, &url).status, 200);
    }

    #[tokio::test]
    async fn jwks_keys_verify_minted_tokens_with_jsonwebtoken_and_the_verifier() {
        let iss = TestIssuer::start();
        let es = iss.add_key(KeyAlg::Es256);
        let r = send("GET", &iss.jwks_uri(), &[], b"", Some(&iss.ca_der())).await;
        assert_eq!(r.status, 200);
        let set = r.json();
        let keys = set["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        for k in keys {
            assert_eq!(k["use"], "sig");
            assert!(k["kid"].is_string() && k["alg"].is_string() && k["kty"].is_string());
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                assert!(k.get(private).is_none(), "{private} published");
            }
        }
        let jwk_set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(set.clone()).unwrap();
        let claims = json!({"iss": iss.issuer(), "aud": "lanyard-server", "sub": "x",
            "iat": unix_now(), "exp": unix_now() + 300});
        for (kid, alg) in [
            (iss.current_kid(), jsonwebtoken::Algorithm::RS256),
            (es.clone(), jsonwebtoken::Algorithm::ES256),
        ] {
            let token = iss.mint_with(claims.clone(), Mint::key(&kid));
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
            assert_eq!(header.alg, alg);
            assert_eq!(decode_part(&token, 0)["typ"], "JWT");
            let key = jsonwebtoken::DecodingKey::from_jwk(jwk_set.find(&kid).unwrap()).unwrap();
            let mut v = jsonwebtoken::Validation::new(alg);
            v.set_audience(&["lanyard-server"]);
            v.set_issuer(&[iss.issuer()]);
            let data = jsonwebtoken::decode::<Value>(&token, &key, &v).unwrap();
            assert_eq!(data.claims, claims);
            // And Lanyard's own verifier, against the served JWKS.
            let policy = TokenPolicy::new(&iss.issuer(), "lanyard-server").unwrap();
            let jwks = Jwks::parse(set.to_string().as_bytes()).unwrap();
            verify_token(&token, &policy, &jwks, &FakeClock::at(unix_now())).unwrap();
        }
        // mint() signs with the current (RS256) key.
        let t = iss.mint(claims);
        assert_eq!(decode_part(&t, 0)["kid"], json!(iss.current_kid()));
        assert_eq!(decode_part(&t, 0)["alg"], "RS256");
        assert_eq!(iss.fetch_count("/jwks"), 1);
    }

    #[test]
    fn rotation_publishes_new_keys_and_dropping_unpublishes_old_ones() {
        let iss = TestIssuer::start_with(IssuerOptions {
            path: String::new(),
            alg: KeyAlg::Es256,
        });
        let policy = TokenPolicy::new(&iss.issuer(), "a").unwrap();
        let clock = FakeClock::at(NOW);
        let claims =
            json!({"iss": iss.issuer(), "aud": "a", "sub": "s", "iat": NOW, "exp": NOW + 60});
        let k1 = iss.current_kid();
        let old = iss.mint(claims.clone());
        let k2 = iss.rotate_key();
        assert_ne!(k1, k2);
        assert_eq!(iss.kids(), vec![k1.clone(), k2.clone()]);
        assert_eq!(iss.current_kid(), k2);
        let new = iss.mint(claims.clone());
        assert_eq!(decode_part(&new, 0)["kid"], json!(k2));
        assert_eq!(decode_part(&new, 0)["alg"], "ES256");
        let jwks = served_jwks(&iss);
        verify_token(&old, &policy, &jwks, &clock).unwrap();
        verify_token(&new, &policy, &jwks, &clock).unwrap();
        let disc = get(&iss, &iss.discovery_url()).json();
        assert_eq!(
            disc["id_token_signing_alg_values_supported"],
            json!(["ES256"])
        );
        let k3 = iss.rotate_key_to(KeyAlg::Rs256);
        let disc = get(&iss, &iss.discovery_url()).json();
        assert_eq!(
            disc["id_token_signing_alg_values_supported"],
            json!(["ES256", "RS256"])
        );
        iss.drop_old_keys();
        assert_eq!(iss.kids(), vec![k3.clone()]);
        let jwks = served_jwks(&iss);
        let e = verify_token(&old, &policy, &jwks, &clock).unwrap_err();
        assert!(e.wants_jwks_refresh(), "{e}");
        // A dropped key still signs on request (a token from before the drop).
        let t = iss.mint_with(claims, Mint::key(&k1));
        assert_eq!(decode_part(&t, 0)["kid"], json!(k1));
        assert_eq!(iss.fetch_count("/jwks"), 2);
        assert_eq!(iss.fetch_count("/.well-known/openid-configuration"), 2);
        assert_eq!(iss.fetch_counts().values().sum::<usize>(), 4);
    }

    #[test]
    fn forgeries_are_refused_by_the_verifier() {
        let iss = TestIssuer::start();
        let policy = TokenPolicy::new(&iss.issuer(), "a").unwrap();
        let clock = FakeClock::at(NOW);
        let jwks = served_jwks(&iss);
        let claims =
            json!({"iss": iss.issuer(), "aud": "a", "sub": "s", "iat": NOW, "exp": NOW + 60});
        verify_token(&iss.mint(claims.clone()), &policy, &jwks, &clock).unwrap();

        let none = iss.mint_with(claims.clone(), Mint::alg_none());
        assert!(none.ends_with('.'));
        assert_eq!(decode_part(&none, 0)["alg"], "none");
        assert_eq!(decode_part(&none, 0)["kid"], json!(iss.current_kid()));
        assert!(verify_token(&none, &policy, &jwks, &clock).is_err());

        let pem = iss.ca_pem();
        let hs = iss.mint_with(claims.clone(), Mint::hs256(pem.as_bytes()));
        assert_eq!(decode_part(&hs, 0)["alg"], "HS256");
        assert!(verify_token(&hs, &policy, &jwks, &clock).is_err());
        // The HMAC is real: jsonwebtoken accepts it with the secret.
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_audience(&["a"]);
        v.validate_exp = false;
        jsonwebtoken::decode::<Value>(
            &hs,
            &jsonwebtoken::DecodingKey::from_secret(pem.as_bytes()),
            &v,
        )
        .unwrap();

        let foreign = iss.mint_with(claims.clone(), Mint::foreign(KeyAlg::Es256));
        let kid = decode_part(&foreign, 0)["kid"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(kid.starts_with("foreign-") && !iss.kids().contains(&kid));
        let e = verify_token(&foreign, &policy, &jwks, &clock).unwrap_err();
        assert!(e.wants_jwks_refresh(), "an unknown kid: {e}");
        // Posing as the published key: the signature does not verify.
        let posing = iss.mint_with(
            claims.clone(),
            Mint::foreign(KeyAlg::Rs256).header("kid", iss.current_kid()),
        );
        let e = verify_token(&posing, &policy, &jwks, &clock).unwrap_err();
        assert!(!e.wants_jwks_refresh(), "{e}");
        // Header overrides: set and remove.
        let t = iss.mint_with(
            claims,
            Mint::default()
                .header("typ", Value::Null)
                .header("x5t", "abc"),
        );
        let h = decode_part(&t, 0);
        assert!(h.get("typ").is_none());
        assert_eq!(h["x5t"], "abc");
    }

    #[test]
    fn claim_sets_carry_the_documented_claims() {
        let iss = TestIssuer::start();
        let job = GithubJob {
            now: NOW,
            ..GithubJob::default()
        };
        let c = iss.github_claims(&job);
        assert_eq!(c["sub"], "repo:acme/api:ref:refs/heads/main");
        assert_eq!(c["iss"], json!(iss.issuer()));
        assert_eq!(c["repository_owner"], "acme");
        assert_eq!(c["ref_protected"], "true");
        assert_eq!(c["ref_type"], "branch");
        assert_eq!(
            c["job_workflow_ref"],
            "acme/api/.github/workflows/ci.yml@refs/heads/main"
        );
        assert_eq!(
            (c["iat"].as_i64(), c["exp"].as_i64()),
            (Some(NOW), Some(NOW + 300))
        );
        assert_eq!(c["nbf"].as_i64(), Some(NOW - 600));
        assert!(c.get("environment").is_none());
        for k in [
            "jti",
            "repository_id",
            "repository_owner_id",
            "workflow",
            "runner_environment",
            "run_id",
            "event_name",
            "sha",
            "actor",
            "workflow_ref",
            "repository_visibility",
        ] {
            assert!(c[k].is_string(), "{k}");
        }
        assert_ne!(
            iss.github_claims(&job)["jti"],
            c["jti"],
            "a fresh jti each time"
        );
        let env = GithubJob {
            environment: Some("prod".into()),
            now: NOW,
            jti: Some("j-1".into()),
            ..GithubJob::default()
        };
        let c = iss.github_claims(&env);
        assert_eq!(c["sub"], "repo:acme/api:environment:prod");
        assert_eq!(
            (c["environment"].as_str(), c["jti"].as_str()),
            (Some("prod"), Some("j-1"))
        );

        let c = iss.gitlab_claims(&GitlabJob {
            now: NOW,
            ..GitlabJob::default()
        });
        assert_eq!(c["sub"], "project_path:acme/api:ref_type:branch:ref:main");
        assert_eq!(c["ref_protected"], "true");
        assert_eq!(c["namespace_path"], "acme");
        assert_eq!(c["runner_id"], 1);
        assert_eq!(
            (c["nbf"].as_i64(), c["exp"].as_i64()),
            (Some(NOW - 5), Some(NOW + 3600))
        );
        assert!(c.get("environment").is_none());
        let c = iss.gitlab_claims(&GitlabJob {
            environment: Some("production".into()),
            environment_protected: true,
            ..GitlabJob::default()
        });
        assert_eq!(
            (
                c["environment"].as_str(),
                c["environment_protected"].as_str()
            ),
            (Some("production"), Some("true"))
        );

        let mut extra = Map::new();
        extra.insert("jti".into(), Value::Null);
        let c = iss.k8s_claims(&K8sPod {
            now: NOW,
            expires_in: 600,
            extra,
            ..K8sPod::default()
        });
        assert_eq!(c["sub"], "system:serviceaccount:lanyard:lanyard-agent");
        assert_eq!(c["aud"], json!(["lanyard-server"]));
        assert_eq!(
            c["kubernetes.io"]["serviceaccount"]["name"],
            "lanyard-agent"
        );
        assert_eq!(c["kubernetes.io"]["node"]["name"], "worker-1");
        assert_eq!(c["exp"].as_i64(), Some(NOW + 600));
        assert!(c.get("jti").is_none(), "extra null removes a claim");
    }

    #[test]
    fn platform_tokens_attest_with_the_presets() {
        let iss = TestIssuer::start();
        let clock = FakeClock::at(NOW + 10);
        let jwks = served_jwks(&iss);
        let gh = presets::github_actions_for_issuer(&iss.issuer(), "lanyard-server").unwrap();
        let c = iss.github_claims(&GithubJob {
            now: NOW,
            jti: Some("jti-1".into()),
            ..GithubJob::default()
        });
        let a = gh.attest(&iss.mint(c), &jwks, &td(), &clock).unwrap();
        assert_eq!(
            a.agent_id.to_string(),
            "spiffe://example.org/lanyard/agent/github/acme/api/9876543210/jti-1"
        );
        let sel: Vec<String> = a.selectors.iter().map(ToString::to_string).collect();
        assert!(
            sel.contains(&"github:repository:acme/api".to_string()),
            "{sel:?}"
        );
        assert!(
            sel.contains(&"github:ref_protected:true".to_string()),
            "{sel:?}"
        );

        let gl = presets::gitlab_ci(&iss.issuer(), "lanyard-server").unwrap();
        let c = iss.gitlab_claims(&GitlabJob {
            now: NOW,
            ..GitlabJob::default()
        });
        let a = gl.attest(&iss.mint(c), &jwks, &td(), &clock).unwrap();
        assert_eq!(
            a.agent_id.to_string(),
            "spiffe://example.org/lanyard/agent/gitlab/acme/api/302"
        );

        let cluster = PsatCluster::new(
            "prod",
            &iss.issuer(),
            "lanyard-server",
            &["lanyard:lanyard-agent"],
        )
        .unwrap();
        let c = iss.k8s_claims(&K8sPod {
            now: NOW,
            ..K8sPod::default()
        });
        let a = cluster.verify(&iss.mint(c), &jwks, &td(), &clock).unwrap();
        assert_eq!(
            a.agent_id.to_string(),
            "spiffe://example.org/lanyard/agent/k8s_psat/prod/5dbb7b21-65fe-11e9-b1b0-0800277ac80f"
        );
    }

    #[tokio::test]
    async fn the_github_token_request_flow() {
        let iss = TestIssuer::start_with_path("/gha");
        iss.set_github_job(GithubJob {
            environment: Some("prod".into()),
            ..GithubJob::default()
        });
        let (url, token) = iss.github_request();
        assert!(url.contains("?api-version=2.0"), "{url}");
        let auth = format!("Bearer {token}");
        let ca = iss.ca_der();
        let r = send(
            "GET",
            &format!("{url}&audience=sts.example%2Fx"),
            &[("authorization", &auth)],
            b"",
            Some(&ca),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        let jwt = body["value"].as_str().unwrap();
        assert_eq!(body["count"].as_u64(), Some(jwt.len() as u64));
        let claims = decode_part(jwt, 1);
        assert_eq!(claims["aud"], "sts.example/x");
        assert_eq!(claims["iss"], json!(iss.issuer()));
        assert_eq!(claims["sub"], "repo:acme/api:environment:prod");
        let now = unix_now();
        assert!((claims["iat"].as_i64().unwrap() - now).abs() < 60);
        // It verifies against the served keys.
        let jwks =
            Jwks::parse(&send("GET", &iss.jwks_uri(), &[], b"", Some(&ca)).await.body).unwrap();
        let policy = TokenPolicy::new(&iss.issuer(), "sts.example/x").unwrap();
        verify_token(jwt, &policy, &jwks, &FakeClock::at(now)).unwrap();

        // No audience: GitHub's default, the owner's URL; a fresh jti.
        let r = send("GET", &url, &[("authorization", &auth)], b"", Some(&ca)).await;
        let c2 = decode_part(r.json()["value"].as_str().unwrap(), 1);
        assert_eq!(c2["aud"], "https://github.com/acme");
        assert_ne!(c2["jti"], claims["jti"]);

        // Wrong or missing bearer: 401.
        let r = send(
            "GET",
            &url,
            &[("authorization", "Bearer nope")],
            b"",
            Some(&ca),
        )
        .await;
        assert_eq!(r.status, 401);
        let r = send("GET", &url, &[], b"", Some(&ca)).await;
        assert_eq!(r.status, 401);
        // A client that replaced the query instead of appending to it: 400.
        let bare = url.split('?').next().unwrap();
        let r = send(
            "GET",
            &format!("{bare}?audience=x"),
            &[("authorization", &auth)],
            b"",
            Some(&ca),
        )
        .await;
        assert_eq!(r.status, 400);

        assert_eq!(
            iss.requested_audiences(),
            vec![Some("sts.example/x".to_string()), None]
        );
        assert_eq!(iss.fetch_count(GITHUB_REQUEST_PATH), 5);
    }

    fn review(iss: &TestIssuer, bearer: &str, token: &str, audiences: &[&str]) -> Resp {
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        });
        request(
            "POST",
            &iss.token_review_url(),
            &[
                ("authorization", &format!("Bearer {bearer}")),
                ("content-type", "application/json"),
            ],
            body.to_string().as_bytes(),
            Some(&iss.ca_der()),
        )
    }

    #[test]
    fn token_review_authenticates_tokens_as_kube_apiserver_does() {
        let iss = TestIssuer::start();
        iss.set_review_time(Some(NOW + 30));
        let rt = iss.reviewer_token();
        let pod = K8sPod {
            now: NOW,
            ..K8sPod::default()
        };
        let token = iss.mint(iss.k8s_claims(&pod));
        let r = review(&iss, &rt, &token, &["lanyard-server"]);
        assert_eq!(r.status, 201, "{}", r.text());
        let body = r.json();
        assert_eq!(body["kind"], "TokenReview");
        assert_eq!(body["status"]["authenticated"], true);
        assert_eq!(body["status"]["audiences"], json!(["lanyard-server"]));
        assert_eq!(
            body["status"]["user"]["username"],
            "system:serviceaccount:lanyard:lanyard-agent"
        );
        assert_eq!(
            body["status"]["user"]["uid"],
            json!(pod.service_account_uid)
        );
        assert_eq!(
            body["status"]["user"]["extra"][EXTRA_POD_NAME],
            json!([pod.pod_name])
        );
        assert_eq!(
            body["status"]["user"]["extra"][EXTRA_NODE_UID],
            json!([pod.node_uid])
        );
        assert!(
            body["status"]["user"]["groups"]
                .as_array()
                .unwrap()
                .contains(&json!("system:serviceaccounts:lanyard"))
        );
        // What the server does with the answer.
        let parsed = TokenReview::parse(&r.body).unwrap();
        let cluster = PsatCluster::new(
            "prod",
            &iss.issuer(),
            "lanyard-server",
            &["lanyard:lanyard-agent"],
        )
        .unwrap();
        let a = cluster
            .verify_reviewed(&token, &parsed, &td(), &FakeClock::at(NOW + 30))
            .unwrap();
        assert_eq!(a.claims.pod_uid, pod.pod_uid);

        // Refusals: authenticated false with an error.
        let refused = |r: Resp| {
            assert_eq!(r.status, 201);
            let b = r.json();
            // As kube-apiserver: `authenticated` is omitted when false.
            assert!(b["status"].get("authenticated").is_none(), "{b}");
            let err = b["status"]["error"].as_str().unwrap().to_string();
            assert!(!err.is_empty());
            let parsed = TokenReview::parse(&serde_json::to_vec(&b).unwrap()).unwrap();
            assert!(!parsed.status.unwrap().authenticated);
            err
        };
        let e = refused(review(&iss, &rt, &token, &["other"]));
        assert!(e.contains("audiences"), "{e}");
        let forged = iss.mint_with(
            iss.k8s_claims(&pod),
            Mint::foreign(KeyAlg::Rs256).header("kid", iss.current_kid()),
        );
        refused(review(&iss, &rt, &forged, &["lanyard-server"]));
        let none = iss.mint_with(iss.k8s_claims(&pod), Mint::alg_none());
        refused(review(&iss, &rt, &none, &["lanyard-server"]));
        refused(review(&iss, &rt, "garbage", &["lanyard-server"]));
        let expired = iss.mint(iss.k8s_claims(&K8sPod {
            now: NOW - 7200,
            ..K8sPod::default()
        }));
        let e = refused(review(&iss, &rt, &expired, &["lanyard-server"]));
        assert!(e.contains("expired"), "{e}");
        // No audiences asked: the API server's own (the issuer by default).
        refused(review(&iss, &rt, &token, &[]));
        iss.set_api_audiences(&["lanyard-server"]);
        let b = review(&iss, &rt, &token, &[]).json();
        assert_eq!(b["status"]["authenticated"], true);
        // A deleted pod's token no longer authenticates.
        iss.delete_pod(&pod.pod_uid);
        let e = refused(review(&iss, &rt, &token, &["lanyard-server"]));
        assert!(e.contains("not found"), "{e}");
    }

    #[test]
    fn token_review_failures() {
        let iss = TestIssuer::start();
        let token = iss.mint(iss.k8s_claims(&K8sPod::default()));
        let r = review(&iss, "wrong", &token, &["lanyard-server"]);
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["reason"], "Unauthorized");
        iss.set_review_failure(Some(ReviewFailure::Forbidden));
        let r = review(&iss, &iss.reviewer_token(), &token, &["lanyard-server"]);
        assert_eq!(
            (r.status, r.json()["reason"].as_str()),
            (403, Some("Forbidden"))
        );
        iss.set_review_failure(Some(ReviewFailure::InternalError));
        let r = review(&iss, &iss.reviewer_token(), &token, &["lanyard-server"]);
        assert_eq!(r.status, 500);
        iss.set_review_failure(None);
        let r = review(&iss, &iss.reviewer_token(), &token, &["lanyard-server"]);
        assert_eq!(
            r.json()["status"]["authenticated"],
            true,
            "real clock by default"
        );
        let r = request(
            "POST",
            &iss.token_review_url(),
            &[("authorization", &format!("Bearer {}", iss.reviewer_token()))],
            b"{",
            Some(&iss.ca_der()),
        );
        assert_eq!(r.status, 400);
        assert_eq!(iss.fetch_count(TOKEN_REVIEW_PATH), 5);
    }

    #[test]
    fn injected_failures_and_discovery_overrides() {
        let iss = TestIssuer::start();
        iss.fail_path("/jwks", Some(503));
        assert_eq!(get(&iss, &iss.jwks_uri()).status, 503);
        iss.fail_path("/jwks", None);
        assert_eq!(get(&iss, &iss.jwks_uri()).status, 200);
        assert_eq!(iss.fetch_count("/jwks"), 2);
        iss.override_discovery(Some(
            json!({"issuer": "https://elsewhere.example", "jwks_uri": iss.jwks_uri()}),
        ));
        let r = get(&iss, &iss.discovery_url());
        assert!(DiscoveryDocument::parse(&r.body, &iss.issuer(), UrlPolicy::HttpsOnly).is_err());
        iss.override_discovery(None);
        assert_eq!(
            get(&iss, &iss.discovery_url()).json()["issuer"],
            json!(iss.issuer())
        );
        assert_eq!(get(&iss, &iss.url("/nope")).status, 404);
        let r = request("POST", &iss.jwks_uri(), &[], b"", Some(&iss.ca_der()));
        assert_eq!(r.status, 405);
    }

    #[test]
    fn dropping_the_issuer_stops_it() {
        let iss = TestIssuer::start();
        let addr = iss.issuer().trim_start_matches("https://").to_string();
        drop(iss);
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}
