//! Node attestation, the agent's side: a [`NodeEvidenceSource`] produces the
//! evidence the server's attestor for the same method verifies (the first
//! attestation message, with the agent's CSR) and answers the server's challenges.
//! Evidence is produced afresh for every attestation, so a source can re-read a
//! rotating credential (a projected token file, a CI job's OIDC token).
//!
//! Methods: `join_token` ([`JoinTokenSource`]), `x509pop` ([`X509PopSource`]), `jwt`
//! from a file ([`JwtFileSource`]), an environment variable ([`JwtEnvSource`], GitLab
//! CI's `id_tokens:`) or GitHub Actions' token-request endpoint
//! ([`GithubActionsSource`]), `k8s_psat` ([`K8sPsatSource`]) and `aws_iid`
//! ([`AwsIidSource`], IMDSv2). Tokens, request tokens and IMDS session tokens are
//! never logged nor put in errors; URLs in errors name the host only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lanyard_proto::node as pb;
use lanyard_tls::http::{HttpClient, HttpError, HttpRequest, Roots};

use crate::config::Bootstrap;
use crate::error::KeyError;

/// Where a node's attestation evidence comes from.
#[tonic::async_trait]
pub trait NodeEvidenceSource: Send + Sync + std::fmt::Debug {
    /// The method's name (the server's attestor of the same name verifies it).
    fn name(&self) -> &'static str;
    /// The first attestation message, carrying the agent's `csr`.
    async fn first_step(&self, csr: Vec<u8>) -> Result<pb::attest_request::Step, KeyError>;
    /// Sign a challenge `nonce` with `algorithm` (methods without challenges refuse).
    fn answer(&self, nonce: &[u8], algorithm: &str) -> Result<Vec<u8>, KeyError>;
}

/// The evidence source the configuration names (`None`: no way to attest).
pub fn evidence_source(b: &Bootstrap) -> Option<Box<dyn NodeEvidenceSource>> {
    match b {
        Bootstrap::JoinToken(t) => Some(Box::new(JoinTokenSource(t.clone()))),
        Bootstrap::X509Pop {
            cert_chain,
            key_pem,
        } => Some(Box::new(X509PopSource {
            cert_chain: cert_chain.clone(),
            key_pem: key_pem.clone(),
        })),
        Bootstrap::JwtTokenFile(path) => Some(Box::new(JwtFileSource(path.clone()))),
        Bootstrap::JwtTokenEnv(var) => Some(Box::new(JwtEnvSource::new(var.clone()))),
        Bootstrap::CloudToken {
            cloud,
            audience,
            metadata_url,
        } => Some(Box::new(CloudTokenSource {
            cloud: *cloud,
            audience: audience.clone(),
            metadata_url: metadata_url.clone(),
            timeout: Duration::from_secs(5),
        })),
        Bootstrap::GithubActions { audience } => {
            Some(Box::new(GithubActionsSource::new(audience.clone())))
        }
        Bootstrap::K8sPsat {
            cluster,
            token_file,
        } => Some(Box::new(K8sPsatSource {
            cluster: cluster.clone(),
            token_file: token_file.clone(),
        })),
        Bootstrap::AwsIid { imds_url } => Some(Box::new(AwsIidSource::new(imds_url.clone()))),
        Bootstrap::None => None,
    }
}

/// Looks up an environment variable: the process environment, or a map in tests.
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The process environment.
pub fn process_env() -> EnvLookup {
    Arc::new(|k| std::env::var(k).ok())
}

/// A `TokenAttestation` step, after a light check that `token` looks like a compact
/// JWS (the server verifies it; this only turns an obvious mistake into a clear
/// message). `what` names where the token came from.
fn token_step(
    method: &str,
    cluster: &str,
    token: &str,
    csr: Vec<u8>,
    what: &str,
) -> Result<pb::attest_request::Step, KeyError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(KeyError::Evidence(format!("{what} is empty")));
    }
    if token.split('.').count() != 3 || token.chars().any(char::is_whitespace) {
        return Err(KeyError::Evidence(format!(
            "{what} does not hold a signed JWT (three base64url parts separated by dots)"
        )));
    }
    Ok(pb::attest_request::Step::Token(pb::TokenAttestation {
        method: method.to_string(),
        cluster: cluster.to_string(),
        token: token.to_string(),
        csr,
    }))
}

/// A signed OIDC token in an environment variable: GitLab CI's `id_tokens:` puts
/// each declared token in the variable named after it.
pub struct JwtEnvSource {
    pub var: String,
    env: EnvLookup,
}

impl JwtEnvSource {
    pub fn new(var: String) -> Self {
        Self::with_env(var, process_env())
    }
    /// Reading variables through `env` (tests).
    pub fn with_env(var: String, env: EnvLookup) -> Self {
        Self { var, env }
    }
}

impl std::fmt::Debug for JwtEnvSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwtEnvSource({})", self.var)
    }
}

#[tonic::async_trait]
impl NodeEvidenceSource for JwtEnvSource {
    fn name(&self) -> &'static str {
        "jwt"
    }
    async fn first_step(&self, csr: Vec<u8>) -> Result<pb::attest_request::Step, KeyError> {
        let var = &self.var;
        let value = (self.env)(var).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
            KeyError::Evidence(format!(
                "the environment variable {var} (jwt_token_env) is not set or empty; in GitLab CI declare the token in the job: `id_tokens: {{ {var}: {{ aud: <the audience the server expects> }} }}`"
            ))
        })?;
        token_step(
            "jwt",
            "",
            &value,
            csr,
            &format!("the environment variable {var} (jwt_token_env)"),
        )
    }
    fn answer(&self, _: &[u8], _: &str) -> Result<Vec<u8>, KeyError> {
        Err(KeyError::UnexpectedChallenge(self.name()))
    }
}

/// The variables GitHub Actions sets in a job allowed to request an OIDC token.
pub const GITHUB_REQUEST_URL: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
/// The bearer token for [`GITHUB_REQUEST_URL`].
pub const GITHUB_REQUEST_TOKEN: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

/// A GitHub Actions job's OIDC token for `audience`, requested afresh for each
/// attestation: `GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=AUD` with `Authorization:
/// Bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN`; the token is the answer's `value`.
pub struct GithubActionsSource {
    pub audience: String,
    env: EnvLookup,
    roots: Roots,
    timeout: Duration,
}

impl GithubActionsSource {
    pub fn new(audience: String) -> Self {
        Self::with_env(audience, process_env(), Roots::System)
    }
    /// Reading the variables through `env` and verifying an `https://` endpoint
    /// against `roots` (tests).
    pub fn with_env(audience: String, env: EnvLookup, roots: Roots) -> Self {
        Self {
            audience,
            env,
            roots,
            timeout: Duration::from_secs(15),
        }
    }

    fn var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.trim().is_empty())
    }

    /// The request URL with the audience added (the URL GitHub gives already has a
    /// query, `api-version=…`).
    fn request_url(base: &str, audience: &str) -> String {
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}audience={}", url_encode(audience))
    }

    /// Fetch the token.
    pub async fn token(&self) -> Result<String, KeyError> {
        let (url, bearer) = match (self.var(GITHUB_REQUEST_URL), self.var(GITHUB_REQUEST_TOKEN)) {
            (Some(u), Some(t)) => (u, t),
            (u, t) => {
                let missing: Vec<&str> = [
                    u.is_none().then_some(GITHUB_REQUEST_URL),
                    t.is_none().then_some(GITHUB_REQUEST_TOKEN),
                ]
                .into_iter()
                .flatten()
                .collect();
                return Err(KeyError::Evidence(format!(
                    "{} not set: GitHub Actions sets them only in a job allowed to request an OIDC token; the workflow (or the job) needs `permissions: id-token: write`",
                    missing.join(" and ")
                )));
            }
        };
        let client = HttpClient::new(&self.roots)
            .map_err(|e| KeyError::Evidence(format!("GitHub token request: {e}")))?
            .with_timeout(self.timeout)
            .with_max_body(64 * 1024);
        let resp = client
            .send(
                HttpRequest::get(&Self::request_url(&url, &self.audience))
                    .header("Authorization", &format!("Bearer {bearer}"))
                    .header("Accept", "application/json"),
            )
            .await
            .map_err(|e| {
                KeyError::Evidence(match e {
                    HttpError::BadUrl { reason, .. } => {
                        format!("{GITHUB_REQUEST_URL} is not a usable URL: {reason}")
                    }
                    other => format!("cannot request the GitHub Actions OIDC token: {other}"),
                })
            })?;
        if resp.status != 200 {
            let hint = match resp.status {
                401 | 403 => {
                    " (the request token was refused: it is valid only in the job that received it, while that job runs)"
                }
                _ => "",
            };
            return Err(KeyError::Evidence(format!(
                "GitHub's OIDC token endpoint answered HTTP {}{hint}: {}",
                resp.status,
                resp.snippet()
            )));
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            value: String,
        }
        let answer: Answer = serde_json::from_slice(&resp.body).map_err(|e| {
            KeyError::Evidence(format!(
                "GitHub's OIDC token endpoint answered HTTP 200 but not with JSON holding a string `value` ({e})"
            ))
        })?;
        Ok(answer.value)
    }
}

impl std::fmt::Debug for GithubActionsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GithubActionsSource(audience {:?})", self.audience)
    }
}

#[tonic::async_trait]
impl NodeEvidenceSource for GithubActionsSource {
    fn name(&self) -> &'static str {
        "jwt"
    }
    async fn first_step(&self, csr: Vec<u8>) -> Result<pb::attest_request::Step, KeyError> {
        let token = self.token().await?;
        token_step(
            "jwt",
            "",
            &token,
            csr,
            "the `value` GitHub's OIDC token endpoint answered",
        )
    }
    fn answer(&self, _: &[u8], _: &str) -> Result<Vec<u8>, KeyError> {
        Err(KeyError::UnexpectedChallenge(self.name()))
    }
}

/// A VM's identity token from its cloud's metadata service, fresh per attestation:
/// GCP `GET /computeMetadata/v1/instance/service-accounts/default/identity
/// ?audience=AUD&format=full` (`Metadata-Flavor: Google`; the body is the token, with
/// the `google.compute_engine` claims the `gcp_instance_identity` preset reads);
/// Azure `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=AUD`
/// (`Metadata: true`; the token is the answer's `access_token`).
#[derive(Debug)]
pub struct CloudTokenSource {
    pub cloud: crate::config::Cloud,
    pub audience: String,
    pub metadata_url: String,
    pub timeout: Duration,
}

impl CloudTokenSource {
    fn request(&self) -> HttpRequest {
        let aud = url_encode(&self.audience);
        match self.cloud {
            crate::config::Cloud::Gcp => HttpRequest::get(&format!(
                "{}/computeMetadata/v1/instance/service-accounts/default/identity?audience={aud}&format=full",
                self.metadata_url
            ))
            .header("Metadata-Flavor", "Google"),
            crate::config::Cloud::Azure => HttpRequest::get(&format!(
                "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={aud}",
                self.metadata_url
            ))
            .header("Metadata", "true"),
        }
    }

    fn what(&self) -> &'static str {
        match self.cloud {
            crate::config::Cloud::Gcp => "GCP metadata server",
            crate::config::Cloud::Azure => "Azure instance metadata service",
        }
    }

    /// Fetch the token.
    pub async fn token(&self) -> Result<String, KeyError> {
        let what = self.what();
        let client = HttpClient::new(&Roots::None)
            .map_err(|e| KeyError::Evidence(format!("{what}: {e}")))?
            .with_timeout(self.timeout)
            .with_max_body(64 * 1024);
        let resp = client.send(self.request()).await.map_err(|e| {
            KeyError::Evidence(format!(
                "cannot reach the {what} at {} ({e}); is this a {} VM?",
                self.metadata_url,
                match self.cloud {
                    crate::config::Cloud::Gcp => "GCP",
                    crate::config::Cloud::Azure => "Azure",
                }
            ))
        })?;
        if resp.status != 200 {
            let hint = match (self.cloud, resp.status) {
                (crate::config::Cloud::Azure, 400) => {
                    " (no managed identity is assigned to this VM, or the resource is unknown)"
                }
                (crate::config::Cloud::Gcp, 404) => " (the VM has no service account)",
                _ => "",
            };
            return Err(KeyError::Evidence(format!(
                "the {what} answered HTTP {}{hint}: {}",
                resp.status,
                resp.snippet()
            )));
        }
        match self.cloud {
            crate::config::Cloud::Gcp => {
                let token = String::from_utf8(resp.body).map_err(|_| {
                    KeyError::Evidence(format!("the {what} answered a token that is not text"))
                })?;
                Ok(token.trim().to_string())
            }
            crate::config::Cloud::Azure => {
                #[derive(serde::Deserialize)]
                struct Answer {
                    access_token: String,
                }
                let a: Answer = serde_json::from_slice(&resp.body).map_err(|e| {
                    KeyError::Evidence(format!(
                        "the {what} answered HTTP 200 but not JSON with a string `access_token` ({e})"
                    ))
                })?;
                Ok(a.access_token)
            }
        }
    }
}

#[tonic::async_trait]
impl NodeEvidenceSource for CloudTokenSource {
    fn name(&self) -> &'static str {
        "jwt"
    }
    async fn first_step(&self, csr: Vec<u8>) -> Result<pb::attest_request::Step, KeyError> {
        let token = self.token().await?;
        token_step("jwt", "", &token, csr, self.what())
    }
    fn answer(&self, _: &[u8], _: &str) -> Result<Vec<u8>, KeyError> {
        Err(KeyError::UnexpectedChallenge(self.name()))
    }
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A Kubernetes projected service-account token (a `serviceAccountToken` volume
/// with the server's audience), re-read at every attestation since the kubelet
/// rotates it.
#[derive(Debug)]
pub struct K8sPsatSource {
    pub cluster: String,
    pub token_file: PathBuf,
}

#[tonic::async_trait]
impl NodeEvidenceSource for K8sPsatSource {
    fn name(&self) -> &'static str {
        "k8s_psat"
    }
    async fn first_step(&self, csr: Vec<u8>) -> Result<pb::attest_request::Step, KeyError> {
        let path = self.token_file.display();
        let text = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|e| {
                KeyError::Evidence(format!(
                    "cannot read the Kubernetes service-account token {path} (k8s_psat_token_file): {e}; mount a projected token there (a `serviceAccountToken` volume source with the server's audience) or set k8s_psat_token_file"
                ))
            })?;
        token_step(
            "k8s_psat",
            &self.cluster,
            &text,
            csr,
            &format!("the Kubernetes service-account token file {path}"),
        )
    }
    fn answer(&self, _: &[u8], _: &str) -> Result<Vec<u8>, KeyError> {
        Err(KeyError::UnexpectedChallenge(self.name()))
    }
}

/// The EC2 instance identity document and its signatures, read from the instance
/// metadata service with IMDSv2 (a session token first).
#[derive(Debug)]
pub struct AwsIidSource {
    /// The metadata service's base URL, without a trailing `/`.
    pub imds_url: String,
    roots: Roots,
    timeout: Duration,
}

/// How long each IMDS call may take: it is local.
pub const IMDS_TIMEOUT: Duration = Duration::from_secs(2);

impl AwsIidSource {
    pub fn new(imds_url: String) -> Self {
        Self {
            imds_url: imds_url.trim_end_matches('/').to_string(),
            // IMDS is plain http; roots matter only for an https:// override.
            roots: Roots::System,
            timeout: IMDS_TIMEOUT,
        }
    }

    /// Verifying an `https://` metadata URL against `roots` (tests).
    #[must_use]
    pub fn with_roots(mut self, roots: Roots) -> Self {
        self.roots = roots;
        self
    }

    fn client(&self) -> Result<HttpClient, KeyError> {
        // IMDS is plain http: it needs no CA roots (a minimal image may have none).
        let roots = if self.imds_url.starts_with("http://") {
            &Roots::None
        } else {
            &self.roots
        };
        let client = HttpClient::new(roots)
            .map_err(|e| KeyError::Evidence(format!("instance metadata service: {e}")))?;
        Ok(client
            .with_timeout(self.timeout)
            .with_max_body(lanyard_nodeattest::aws_iid::MAX_EVIDENCE_BYTES))
    }

    fn unreachable(&self, e: HttpError) -> KeyError {
        KeyError::Evidence(format!(
            "cannot read the instance identity from the instance metadata service ({e}); is this an EC2 instance with the metadata service enabled (in a container: a hop limit of 2), and is aws_imds_url right?"
        ))
    }

    /// Read the evidence: the document, and the `rsa2048` PKCS #7 signature (or the
    /// plain `signature` where there is no `rsa2048`).
    pub async fn evidence(&self) -> Result<lanyard_nodeattest::aws_iid::IidEvidence, KeyError> {
        let client = self.client()?;
        let base = &self.imds_url;
        let resp = client
            .send(
                HttpRequest::put(&format!("{base}/latest/api/token"))
                    .header("X-aws-ec2-metadata-token-ttl-seconds", "60"),
            )
            .await
            .map_err(|e| self.unreachable(e))?;
        if resp.status != 200 {
            return Err(KeyError::Evidence(format!(
                "the instance metadata service refused an IMDSv2 session token (PUT /latest/api/token answered HTTP {}); IMDSv2 must be enabled on the instance",
                resp.status
            )));
        }
        let session = String::from_utf8(resp.body)
            .map_err(|_| {
                KeyError::Evidence(
                    "the instance metadata service sent a session token that is not text".into(),
                )
            })?
            .trim()
            .to_string();
        let get = |path: &'static str| {
            let (client, session) = (&client, &session);
            async move {
                let resp = client
                    .send(
                        HttpRequest::get(&format!(
                            "{base}/latest/dynamic/instance-identity/{path}"
                        ))
                        .header("X-aws-ec2-metadata-token", session),
                    )
                    .await
                    .map_err(|e| self.unreachable(e))?;
                match resp.status {
                    200 => String::from_utf8(resp.body).map(Some).map_err(|_| {
                        KeyError::Evidence(format!(
                            "the instance metadata service's instance-identity/{path} is not text"
                        ))
                    }),
                    404 => Ok(None),
                    status => Err(KeyError::Evidence(format!(
                        "the instance metadata service answered HTTP {status} for instance-identity/{path}"
                    ))),
                }
            }
        };
        let document = get("document").await?.ok_or_else(|| {
            KeyError::Evidence(
                "the instance metadata service has no instance-identity/document (HTTP 404)".into(),
            )
        })?;
        let (rsa2048, signature) = match get("rsa2048").await? {
            Some(r) => (Some(r.trim().to_string()), None),
            None => match get("signature").await? {
                Some(s) => (None, Some(s.trim().to_string())),
                None => {
                    return Err(KeyError::Evidence(
                        "the instance metadata service has neither instance-identity/rsa2048 nor instance-identity/signature (HTTP 404)".into(),
                    ));
                }
            },
        };
        Ok(lanyard_nodeattest::aws_iid::IidEvidence {
            document,
            signature,
            rsa2048,
        })
    }
}

#[tonic::async_trait]
impl NodeEvidenceSource for AwsIidSource {
    fn name(&self) -> &'static str {
        "aws_iid"
    }
    async fn first_step(&self, csr: Vec<u8>) -> Result<pb::attest_request::Step, KeyError> {
        let evidence = self.evidence().await?;
        let payload = serde_json::to_vec(&evidence)
            .map_err(|e| KeyError::Evidence(format!("cannot encode the instance identity: {e}")))?;
        Ok(pb::attest_request::Step::AwsIid(pb::AwsIidAttestation {
            payload,
            csr,
        }))
    }
    fn answer(&self, _: &[u8], _: &str) -> Result<Vec<u8>, KeyError> {
        Err(KeyError::UnexpectedChallenge(self.name()))
    }
}

/// A signed OIDC token in a file (a CI job's token written by a step, a projected
/// token), read afresh for every attestation since such tokens are short-lived and
/// each attests once.
#[derive(Debug)]
pub struct JwtFileSource(pub std::path::PathBuf);

#[tonic::async_trait]
impl NodeEvidenceSource for JwtFileSource {
    fn name(&self) -> &'static str {
        "jwt"
    }
    async fn first_step(&self, csr: Vec<u8>) -> Result<pb::attest_request::Step, KeyError> {
        let text = tokio::fs::read_to_string(&self.0).await.map_err(|e| {
            KeyError::Evidence(format!(
                "cannot read the jwt token file {}: {e}",
                self.0.display()
            ))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(KeyError::Evidence(format!(
                "the jwt token file {} is empty; write the job's OIDC token to it",
                self.0.display()
            )));
        }
        Ok(pb::attest_request::Step::Token(pb::TokenAttestation {
            method: "jwt".to_string(),
            cluster: String::new(),
            token: token.to_string(),
            csr,
        }))
    }
    fn answer(&self, _: &[u8], _: &str) -> Result<Vec<u8>, KeyError> {
        Err(KeyError::UnexpectedChallenge(self.name()))
    }
}

/// A single-use join token given to this agent.
pub struct JoinTokenSource(pub String);

impl std::fmt::Debug for JoinTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.write_str("JoinTokenSource(..)")
    }
}

#[tonic::async_trait]
impl NodeEvidenceSource for JoinTokenSource {
    fn name(&self) -> &'static str {
        "join_token"
    }
    async fn first_step(&self, csr: Vec<u8>) -> Result<pb::attest_request::Step, KeyError> {
        Ok(pb::attest_request::Step::JoinToken(
            pb::JoinTokenAttestation {
                token: self.0.clone(),
                csr,
            },
        ))
    }
    fn answer(&self, _: &[u8], _: &str) -> Result<Vec<u8>, KeyError> {
        Err(KeyError::UnexpectedChallenge(self.name()))
    }
}

/// A node certificate and its private key (PEM).
pub struct X509PopSource {
    pub cert_chain: Vec<Vec<u8>>,
    pub key_pem: String,
}

impl std::fmt::Debug for X509PopSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "X509PopSource({} certificates, key ..)",
            self.cert_chain.len()
        )
    }
}

#[tonic::async_trait]
impl NodeEvidenceSource for X509PopSource {
    fn name(&self) -> &'static str {
        "x509pop"
    }
    async fn first_step(&self, csr: Vec<u8>) -> Result<pb::attest_request::Step, KeyError> {
        Ok(pb::attest_request::Step::X509pop(pb::X509PopAttestation {
            cert_chain: self.cert_chain.clone(),
            csr,
        }))
    }
    fn answer(&self, nonce: &[u8], algorithm: &str) -> Result<Vec<u8>, KeyError> {
        sign_pop(&self.key_pem, nonce, algorithm)
    }
}

fn sign_pop(key_pem: &str, nonce: &[u8], algorithm: &str) -> Result<Vec<u8>, KeyError> {
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
        RSA_PKCS1_SHA256, RsaKeyPair,
    };
    let der = pem::parse(key_pem)
        .map_err(|e| KeyError::PopKey(e.to_string()))?
        .into_contents();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    match algorithm {
        "ecdsa-p256-sha256" | "ecdsa-p384-sha384" => {
            let alg = if algorithm == "ecdsa-p256-sha256" {
                &ECDSA_P256_SHA256_ASN1_SIGNING
            } else {
                &ECDSA_P384_SHA384_ASN1_SIGNING
            };
            let kp =
                EcdsaKeyPair::from_pkcs8(alg, &der).map_err(|e| KeyError::PopKey(e.to_string()))?;
            Ok(kp
                .sign(&rng, nonce)
                .map_err(|e| KeyError::Sign(e.to_string()))?
                .as_ref()
                .to_vec())
        }
        "rsa-pkcs1-sha256" => {
            let kp = RsaKeyPair::from_pkcs8(&der).map_err(|e| KeyError::PopKey(e.to_string()))?;
            let mut sig = vec![0; kp.public_modulus_len()];
            kp.sign(&RSA_PKCS1_SHA256, &rng, nonce, &mut sig)
                .map_err(|e| KeyError::Sign(e.to_string()))?;
            Ok(sig)
        }
        other => Err(KeyError::UnsupportedAlgorithm(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};

    #[tokio::test]
    async fn sources_follow_the_configuration() {
        assert!(evidence_source(&Bootstrap::None).is_none());
        let s = evidence_source(&Bootstrap::JoinToken("secret".into())).unwrap();
        assert_eq!(s.name(), "join_token");
        assert!(!format!("{s:?}").contains("secret"));
        match s.first_step(vec![1]).await.unwrap() {
            pb::attest_request::Step::JoinToken(j) => {
                assert_eq!((j.token.as_str(), j.csr.as_slice()), ("secret", &[1u8][..]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.answer(b"n", "ecdsa-p256-sha256"),
            Err(KeyError::UnexpectedChallenge("join_token"))
        );
    }

    #[tokio::test]
    async fn a_jwt_token_file_is_read_at_every_attestation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let src = evidence_source(&Bootstrap::JwtTokenFile(path.clone())).unwrap();
        assert_eq!(src.name(), "jwt");
        let e = src.first_step(vec![]).await.unwrap_err().to_string();
        assert!(e.contains("cannot read the jwt token file"), "{e}");
        std::fs::write(&path, "  \n").unwrap();
        let e = src.first_step(vec![]).await.unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        for token in ["a.b.c", "d.e.f"] {
            std::fs::write(&path, format!("{token}\n")).unwrap();
            match src.first_step(vec![7]).await.unwrap() {
                pb::attest_request::Step::Token(t) => {
                    assert_eq!((t.method.as_str(), t.token.as_str()), ("jwt", token));
                    assert_eq!(t.csr, [7]);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// A request the loopback server saw.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        uri: String,
        headers: Vec<(String, String)>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    type Answer = Arc<dyn Fn(&Seen) -> (u16, String) + Send + Sync>;

    /// A plain-HTTP server on loopback answering with `answer`, recording requests.
    async fn loopback(answer: Answer) -> (String, Arc<std::sync::Mutex<Vec<Seen>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (answer, log) = (answer.clone(), log.clone());
            async move {
                let s = Seen {
                    method: req.method().to_string(),
                    uri: req.uri().to_string(),
                    headers: req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect(),
                };
                let (status, body) = answer(&s);
                log.lock().unwrap().push(s);
                (axum::http::StatusCode::from_u16(status).unwrap(), body)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    /// Roots that do not depend on the machine's trust store (the servers are http).
    fn test_roots() -> Roots {
        Roots::None
    }

    fn env(vars: &[(&str, &str)]) -> EnvLookup {
        let map: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Arc::new(move |k| map.get(k).cloned())
    }

    fn token_of(step: pb::attest_request::Step) -> pb::TokenAttestation {
        match step {
            pb::attest_request::Step::Token(t) => t,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_gitlab_id_token_is_read_from_its_variable() {
        let src = JwtEnvSource::with_env("GL_TOKEN".into(), env(&[("GL_TOKEN", " h.p.s\n")]));
        assert_eq!(src.name(), "jwt");
        let t = token_of(src.first_step(vec![3]).await.unwrap());
        assert_eq!(
            (t.method.as_str(), t.token.as_str(), t.csr.as_slice()),
            ("jwt", "h.p.s", &[3u8][..])
        );
        let e = JwtEnvSource::with_env("GL_TOKEN".into(), env(&[]))
            .first_step(vec![])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("GL_TOKEN") && e.contains("id_tokens"), "{e}");
        let e = JwtEnvSource::with_env("GL_TOKEN".into(), env(&[("GL_TOKEN", "not-a-jwt")]))
            .first_step(vec![])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not hold a signed JWT"), "{e}");
        assert!(
            !e.contains("not-a-jwt"),
            "the value stays out of errors: {e}"
        );
    }

    #[tokio::test]
    async fn a_projected_service_account_token_is_re_read_at_every_attestation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lanyard-agent");
        let src = K8sPsatSource {
            cluster: "prod-eu".into(),
            token_file: path.clone(),
        };
        assert_eq!(src.name(), "k8s_psat");
        let e = src.first_step(vec![]).await.unwrap_err().to_string();
        assert!(
            e.contains("cannot read the Kubernetes service-account token")
                && e.contains("k8s_psat_token_file"),
            "{e}"
        );
        for token in ["a.b.c", "d.e.f"] {
            std::fs::write(&path, token).unwrap();
            let t = token_of(src.first_step(vec![9]).await.unwrap());
            assert_eq!(
                (t.method.as_str(), t.cluster.as_str(), t.token.as_str()),
                ("k8s_psat", "prod-eu", token)
            );
            assert_eq!(t.csr, [9]);
        }
        std::fs::write(&path, "").unwrap();
        let e = src.first_step(vec![]).await.unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
    }

    const REQUEST_TOKEN: &str = "ghs_request_secret";

    #[tokio::test]
    async fn github_actions_tokens_are_requested_for_the_audience_each_time() {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = n.clone();
        let (base, seen) = loopback(Arc::new(move |s: &Seen| {
            if s.header("authorization") != Some(&format!("Bearer {REQUEST_TOKEN}")) {
                return (401, "bad credentials".into());
            }
            let i = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (200, format!("{{\"count\":1,\"value\":\"h.p{i}.s\"}}"))
        }))
        .await;
        let url = format!("{base}/_apis/pipelines/workflows/1/idtoken?api-version=2.0");
        let src = GithubActionsSource::with_env(
            "lanyard server/eu&x".into(),
            env(&[
                (GITHUB_REQUEST_URL, &url),
                (GITHUB_REQUEST_TOKEN, REQUEST_TOKEN),
            ]),
            test_roots(),
        );
        assert!(!format!("{src:?}").contains(REQUEST_TOKEN));
        for i in 0..2 {
            let t = token_of(src.first_step(vec![1]).await.unwrap());
            assert_eq!(
                (t.method.as_str(), t.token.clone()),
                ("jwt", format!("h.p{i}.s"))
            );
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].method, "GET");
        assert_eq!(
            seen[0].uri,
            "/_apis/pipelines/workflows/1/idtoken?api-version=2.0&audience=lanyard%20server%2Feu%26x"
        );
        // Without a query in the URL, the audience starts one.
        assert_eq!(
            GithubActionsSource::request_url("https://h/t", "a"),
            "https://h/t?audience=a"
        );
    }

    #[tokio::test]
    async fn github_actions_failures_say_what_to_fix_and_keep_the_secret_out() {
        let e = GithubActionsSource::with_env("aud".into(), env(&[]), test_roots())
            .first_step(vec![])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN")
                && e.contains("permissions: id-token: write"),
            "{e}"
        );
        let e = GithubActionsSource::with_env(
            "aud".into(),
            env(&[(GITHUB_REQUEST_URL, "https://x/?api-version=2.0")]),
            test_roots(),
        )
        .first_step(vec![])
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ACTIONS_ID_TOKEN_REQUEST_TOKEN not set") && !e.contains("URL and"),
            "{e}"
        );

        let answers: Answer = Arc::new(|s: &Seen| {
            if s.uri.contains("/refused") {
                (403, "forbidden".into())
            } else if s.uri.contains("/broken") {
                (500, "oops".into())
            } else if s.uri.contains("/html") {
                (200, "<html>".into())
            } else {
                (200, "{\"count\":1}".into())
            }
        });
        let (base, _) = loopback(answers).await;
        for (path, want) in [
            ("refused", "HTTP 403 (the request token was refused"),
            ("broken", "HTTP 500: oops"),
            ("html", "not with JSON holding a string `value`"),
            ("novalue", "not with JSON holding a string `value`"),
        ] {
            let url = format!("{base}/{path}?api-version=2.0&sig=querysecret");
            let e = GithubActionsSource::with_env(
                "aud".into(),
                env(&[
                    (GITHUB_REQUEST_URL, &url),
                    (GITHUB_REQUEST_TOKEN, REQUEST_TOKEN),
                ]),
                test_roots(),
            )
            .first_step(vec![])
            .await
            .unwrap_err()
            .to_string();
            assert!(e.contains(want), "{path}: {e}");
            assert!(
                !e.contains(REQUEST_TOKEN) && !e.contains("querysecret"),
                "{path}: secrets in the error: {e}"
            );
        }
        // Nothing listening: the host is named, not the query.
        let e = GithubActionsSource::with_env(
            "aud".into(),
            env(&[
                (GITHUB_REQUEST_URL, "http://127.0.0.1:1/t?sig=querysecret"),
                (GITHUB_REQUEST_TOKEN, REQUEST_TOKEN),
            ]),
            test_roots(),
        )
        .first_step(vec![])
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("127.0.0.1:1") && !e.contains("querysecret"),
            "{e}"
        );
    }

    /// An IMDSv2 emulator: a session token from PUT, then only requests carrying it.
    fn imds(rsa2048: bool, signature: bool) -> Answer {
        Arc::new(move |s: &Seen| {
            if s.method == "PUT" && s.uri == "/latest/api/token" {
                return match s.header("x-aws-ec2-metadata-token-ttl-seconds") {
                    Some("60") => (200, "imds-session".into()),
                    _ => (400, "missing ttl".into()),
                };
            }
            if s.header("x-aws-ec2-metadata-token") != Some("imds-session") {
                return (401, String::new());
            }
            match s.uri.as_str() {
                "/latest/dynamic/instance-identity/document" => {
                    (200, "{\n  \"instanceId\" : \"i-0abc\"\n}".into())
                }
                "/latest/dynamic/instance-identity/rsa2048" if rsa2048 => {
                    (200, "MIAGCSqG\nSIb3DQ==\n".into())
                }
                "/latest/dynamic/instance-identity/signature" if signature => {
                    (200, "c2lnbmF0dXJl".into())
                }
                _ => (404, String::new()),
            }
        })
    }

    fn iid_of(
        step: pb::attest_request::Step,
    ) -> (lanyard_nodeattest::aws_iid::IidEvidence, Vec<u8>) {
        match step {
            pb::attest_request::Step::AwsIid(a) => (
                lanyard_nodeattest::aws_iid::IidEvidence::parse(&a.payload).unwrap(),
                a.csr,
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn aws_iid_reads_the_document_and_rsa2048_with_imdsv2() {
        let (base, seen) = loopback(imds(true, true)).await;
        let src = AwsIidSource::new(format!("{base}/"));
        assert_eq!(src.name(), "aws_iid");
        let (ev, csr) = iid_of(src.first_step(vec![5]).await.unwrap());
        assert_eq!(
            ev.document, "{\n  \"instanceId\" : \"i-0abc\"\n}",
            "byte for byte"
        );
        assert_eq!(ev.rsa2048.as_deref(), Some("MIAGCSqG\nSIb3DQ=="));
        assert_eq!(ev.signature, None);
        assert_eq!(csr, [5]);
        let seen = seen.lock().unwrap().clone();
        let calls: Vec<String> = seen
            .iter()
            .map(|s| format!("{} {}", s.method, s.uri))
            .collect();
        assert_eq!(
            calls,
            [
                "PUT /latest/api/token",
                "GET /latest/dynamic/instance-identity/document",
                "GET /latest/dynamic/instance-identity/rsa2048",
            ]
        );
    }

    #[tokio::test]
    async fn aws_iid_falls_back_to_the_signature_and_names_failures() {
        let (base, _) = loopback(imds(false, true)).await;
        let (ev, _) = iid_of(AwsIidSource::new(base).first_step(vec![]).await.unwrap());
        assert_eq!(
            (ev.rsa2048, ev.signature.as_deref()),
            (None, Some("c2lnbmF0dXJl"))
        );

        let (base, _) = loopback(imds(false, false)).await;
        let e = AwsIidSource::new(base)
            .first_step(vec![])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither instance-identity/rsa2048 nor"), "{e}");

        let (base, _) = loopback(Arc::new(|_: &Seen| (403, String::new()))).await;
        let e = AwsIidSource::new(base)
            .first_step(vec![])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("IMDSv2 session token") && e.contains("HTTP 403"),
            "{e}"
        );

        let e = AwsIidSource::new("http://127.0.0.1:1".into())
            .first_step(vec![])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("instance metadata service") && e.contains("aws_imds_url"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_silent_metadata_service_times_out_quickly() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts, never answers.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let started = std::time::Instant::now();
        let e = AwsIidSource::new(format!("http://{addr}"))
            .first_step(vec![])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not answer"), "{e}");
        assert!(started.elapsed() < IMDS_TIMEOUT + Duration::from_secs(1));
    }

    #[test]
    fn x509pop_answers_challenges_with_its_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let src = X509PopSource {
            cert_chain: vec![],
            key_pem: key.serialize_pem(),
        };
        let sig = src.answer(b"nonce", "ecdsa-p256-sha256").unwrap();
        let spki = key.public_key_raw();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, spki)
            .verify(b"nonce", &sig)
            .unwrap();
        assert_eq!(
            src.answer(b"nonce", "md5"),
            Err(KeyError::UnsupportedAlgorithm("md5".into()))
        );
        let bad = X509PopSource {
            cert_chain: vec![],
            key_pem: "junk".into(),
        };
        assert!(matches!(
            bad.answer(b"n", "ecdsa-p256-sha256"),
            Err(KeyError::PopKey(_))
        ));
    }
}
