//! Presets of the `jwt` attestor for platforms that hand their jobs or machines a
//! signed OIDC token: GitHub Actions, GitLab CI, GCP instance identity tokens and
//! Azure managed identities. Each preset fixes the issuer, the claims that become
//! selectors (with the platforms' documented claim names), the agent ID template and
//! token age limits that fit how the platform issues tokens. The audience is always
//! the operator's choice. A preset is a starting point: the returned [`JwtAttestor`]
//! can take more required claims through [`JwtAttestor::with_policy`].
//!
//! | preset | selectors | agent ID |
//! | --- | --- | --- |
//! | [`github_actions`] | `github:repository:acme/api`, `github:ref:refs/heads/main`, `github:environment:prod`, `github:job_workflow_ref:…`, … | `/lanyard/agent/github/<owner>/<repo>/<run_id>/<jti>` |
//! | [`gitlab_ci`] | `gitlab:project_path:…`, `gitlab:ref_protected:true`, `gitlab:pipeline_source:push`, … | `/lanyard/agent/gitlab/<group>/<project>/<job_id>` |
//! | [`gcp_instance_identity`] | `gcp_iit:project-id:…`, `gcp_iit:zone:…`, `gcp_iit:instance-name:…`, `gcp_iit:sa:…` (SPIRE's names) | `/lanyard/agent/gcp_iit/<project>/<instance id>` |
//! | [`azure_managed_identity`] | `azure_msi:tenant-id:…`, `azure_msi:principal-id:…`, `azure_msi:subscription-id:…`, `azure_msi:vm-name:<rg>:<vm>` | `/lanyard/agent/azure_msi/<tenant>/<principal>` |
//!
//! The GitHub agent ID ends in the token's `jti` because every job of a workflow run
//! (a matrix build, say) shares the run ID, and each job's agent needs its own ID.

use std::time::Duration;

use lanyard_core::Selector;
use serde_json::{Map, Value};

use crate::claims::{ClaimConfigError, ClaimRequirement, ClaimSelector};
use crate::oidc::{JwtAttestor, PolicyError, TokenPolicy};
use crate::template::{AgentIdTemplate, TemplateError};

/// GitHub Actions' OIDC issuer.
pub const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";
/// GitLab.com's issuer (self-managed instances use their own URL).
pub const GITLAB_COM_ISSUER: &str = "https://gitlab.com";
/// The issuer of GCP instance identity tokens.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// The resource Azure managed identities request tokens for by default (SPIRE's
/// default too). Prefer an application ID URI of your own, so a token for this
/// server is good for nothing else.
pub const AZURE_DEFAULT_RESOURCE: &str = "https://management.azure.com/";

/// The platforms with a preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// GitHub Actions ID tokens.
    GithubActions,
    /// GitLab CI `id_tokens`.
    GitlabCi,
    /// GCP Compute Engine instance identity tokens (`format=full`).
    GcpInstanceIdentity,
    /// Azure managed identity access tokens.
    AzureManagedIdentity,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 4] = [
        Self::GithubActions,
        Self::GitlabCi,
        Self::GcpInstanceIdentity,
        Self::AzureManagedIdentity,
    ];

    /// The preset's name in configuration, also its selector type.
    pub fn name(self) -> &'static str {
        match self {
            Self::GithubActions => "github",
            Self::GitlabCi => "gitlab",
            Self::GcpInstanceIdentity => "gcp_iit",
            Self::AzureManagedIdentity => "azure_msi",
        }
    }

    /// The preset called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Why a preset could not be built from the given settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresetError {
    /// Issuer or audience invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// An allow-list is empty.
    #[error(
        "the {preset} preset needs at least one allowed {what}; an empty allow-list would admit nobody (or, worse, everybody)"
    )]
    EmptyAllowList {
        /// The preset.
        preset: &'static str,
        /// What is listed.
        what: &'static str,
    },
    /// An Azure tenant ID is not a tenant ID.
    #[error(
        "{0:?} is not an Azure tenant ID; give the directory (tenant) ID, a GUID like 9e85e111-1103-48fc-a933-9533fe47de05"
    )]
    BadTenant(String),
    /// Internal: the preset's own mapping is invalid (a bug).
    #[error("the preset's claim mapping is invalid: {0}")]
    Claims(#[from] ClaimConfigError),
    /// Internal: the preset's own template is invalid (a bug).
    #[error("the preset's agent ID template is invalid: {0}")]
    Template(#[from] TemplateError),
}

fn mapping(pairs: &[(&str, &str)]) -> Result<Vec<ClaimSelector>, ClaimConfigError> {
    pairs
        .iter()
        .map(|(claim, name)| ClaimSelector::new(claim, name))
        .collect()
}

/// The GitHub Actions preset for tokens requested with `audience`.
///
/// Selectors (type `github`): `repository`, `repository_id`, `repository_owner`,
/// `repository_owner_id`, `repository_visibility`, `ref`, `ref_type`,
/// `ref_protected`, `environment`, `job_workflow_ref`, `workflow`, `workflow_ref`,
/// `event_name`, `runner_environment`. Prefer the `_id` selectors in entries where
/// possible: names can be reused after a rename or deletion, IDs cannot. `run_id` is
/// not a selector (every run differs) but is part of the agent ID.
pub fn github_actions(audience: &str) -> Result<JwtAttestor, PresetError> {
    github_actions_for_issuer(GITHUB_ISSUER, audience)
}

/// [`github_actions`] for a custom issuer (GitHub Enterprise Cloud with a unique
/// issuer URL, `https://token.actions.githubusercontent.com/<enterprise>`).
pub fn github_actions_for_issuer(issuer: &str, audience: &str) -> Result<JwtAttestor, PresetError> {
    let policy = TokenPolicy::new(issuer, audience)?
        .with_max_age(Duration::from_secs(10 * 60))
        .with_max_lifetime(Duration::from_secs(60 * 60));
    let selectors = mapping(&[
        ("repository", "repository"),
        ("repository_id", "repository_id"),
        ("repository_owner", "repository_owner"),
        ("repository_owner_id", "repository_owner_id"),
        ("repository_visibility", "repository_visibility"),
        ("ref", "ref"),
        ("ref_type", "ref_type"),
        ("ref_protected", "ref_protected"),
        ("environment", "environment"),
        ("job_workflow_ref", "job_workflow_ref"),
        ("workflow", "workflow"),
        ("workflow_ref", "workflow_ref"),
        ("event_name", "event_name"),
        ("runner_environment", "runner_environment"),
    ])?;
    let template = AgentIdTemplate::parse("/lanyard/agent/github/{*repository}/{run_id}/{jti}")?;
    Ok(JwtAttestor::new(
        Preset::GithubActions.name(),
        policy,
        selectors,
        template,
    )?)
}

/// The GitLab CI preset: tokens from `issuer` (`https://gitlab.com`, or a
/// self-managed instance's URL) declared in the job's `id_tokens` with `aud:
/// audience`. GitLab mints the token when the job starts and it lives for the job's
/// timeout, so the age limit is one hour (GitLab's default job timeout); raise it
/// with [`JwtAttestor::with_policy`] for longer jobs.
///
/// Selectors (type `gitlab`): `project_path`, `project_id`, `namespace_path`,
/// `namespace_id`, `ref`, `ref_type`, `ref_protected`, `environment`,
/// `environment_protected`, `deployment_tier`, `pipeline_source`,
/// `ci_config_ref_uri`, `runner_environment`.
pub fn gitlab_ci(issuer: &str, audience: &str) -> Result<JwtAttestor, PresetError> {
    let policy = TokenPolicy::new(issuer, audience)?
        .with_max_age(Duration::from_secs(60 * 60))
        .with_max_lifetime(Duration::from_secs(60 * 60));
    let selectors = mapping(&[
        ("project_path", "project_path"),
        ("project_id", "project_id"),
        ("namespace_path", "namespace_path"),
        ("namespace_id", "namespace_id"),
        ("ref", "ref"),
        ("ref_type", "ref_type"),
        ("ref_protected", "ref_protected"),
        ("environment", "environment"),
        ("environment_protected", "environment_protected"),
        ("deployment_tier", "deployment_tier"),
        ("pipeline_source", "pipeline_source"),
        ("ci_config_ref_uri", "ci_config_ref_uri"),
        ("runner_environment", "runner_environment"),
    ])?;
    let template = AgentIdTemplate::parse("/lanyard/agent/gitlab/{*project_path}/{job_id}")?;
    Ok(JwtAttestor::new(
        Preset::GitlabCi.name(),
        policy,
        selectors,
        template,
    )?)
}

/// The GCP instance identity preset: tokens a VM fetches from its metadata server
/// (`…/instance/service-accounts/default/identity?audience=<audience>&format=full`;
/// without `format=full` the `google.compute_engine` claims are missing and the
/// token is refused). Only VMs of `project_ids` are admitted, as in SPIRE.
///
/// Selectors (type `gcp_iit`, SPIRE's names): `project-id`, `zone`,
/// `instance-name`, `sa` (the service account email), plus `project-number` and
/// `instance-id`.
pub fn gcp_instance_identity(
    audience: &str,
    project_ids: &[&str],
) -> Result<JwtAttestor, PresetError> {
    if project_ids.is_empty() {
        return Err(PresetError::EmptyAllowList {
            preset: Preset::GcpInstanceIdentity.name(),
            what: "project ID",
        });
    }
    let policy = TokenPolicy::new(GOOGLE_ISSUER, audience)?
        .with_max_age(Duration::from_secs(10 * 60))
        .with_max_lifetime(Duration::from_secs(60 * 60))
        .require(ClaimRequirement::new(
            crate::claims::ClaimPath::new("google.compute_engine.project_id")?,
            project_ids
                .iter()
                .map(|p| crate::claims::ClaimPattern::Exact((*p).to_string()))
                .collect(),
        )?);
    let selectors = mapping(&[
        ("google.compute_engine.project_id", "project-id"),
        ("google.compute_engine.project_number", "project-number"),
        ("google.compute_engine.zone", "zone"),
        ("google.compute_engine.instance_name", "instance-name"),
        ("google.compute_engine.instance_id", "instance-id"),
        ("email", "sa"),
    ])?;
    let template = AgentIdTemplate::parse(
        "/lanyard/agent/gcp_iit/{google.compute_engine.project_id}/{google.compute_engine.instance_id}",
    )?;
    Ok(JwtAttestor::new(
        Preset::GcpInstanceIdentity.name(),
        policy,
        selectors,
        template,
    )?)
}

/// The issuer of Azure managed identity (v1) access tokens for `tenant_id`.
pub fn azure_issuer(tenant_id: &str) -> String {
    format!("https://sts.windows.net/{tenant_id}/")
}

/// The discovery document of `tenant_id` whose `issuer` is [`azure_issuer`].
pub fn azure_discovery_url(tenant_id: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant_id}/.well-known/openid-configuration")
}

/// The Azure managed identity preset for one tenant: access tokens a VM gets from
/// IMDS for resource `audience`. Azure caches these tokens for up to a day, so the
/// age and lifetime limits are 24 h and 25 h; replay protection and one attestation
/// per agent ID (as in SPIRE) matter all the more here.
///
/// Selectors (type `azure_msi`): `tenant-id`, `principal-id`, and from the
/// `xms_mirid` resource ID: `subscription-id` and, for a VM's system-assigned
/// identity, SPIRE's `vm-name:<resource group>:<vm>`.
pub fn azure_managed_identity(tenant_id: &str, audience: &str) -> Result<JwtAttestor, PresetError> {
    let guid_like = tenant_id.len() == 36
        && tenant_id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-');
    if !guid_like {
        return Err(PresetError::BadTenant(tenant_id.to_string()));
    }
    let policy = TokenPolicy::new(&azure_issuer(tenant_id), audience)?
        .with_max_age(Duration::from_secs(24 * 60 * 60))
        .with_max_lifetime(Duration::from_secs(25 * 60 * 60))
        .require(ClaimRequirement::parse("tid", &[tenant_id])?);
    let selectors = mapping(&[("tid", "tenant-id"), ("sub", "principal-id")])?;
    let template = AgentIdTemplate::parse("/lanyard/agent/azure_msi/{tid}/{sub}")?;
    Ok(JwtAttestor::new(
        Preset::AzureManagedIdentity.name(),
        policy,
        selectors,
        template,
    )?
    .with_derivation(Derivation::AzureResourceId))
}

/// Selectors derived from claims by a fixed rule rather than copied from one claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derivation {
    /// From Azure's `xms_mirid` (the managed identity's resource ID,
    /// `/subscriptions/<sub>/resourcegroups/<rg>/providers/<provider>/<type>/<name>`):
    /// `subscription-id:<sub>`, and `vm-name:<rg>:<name>` when the identity is a
    /// virtual machine's own (`Microsoft.Compute/virtualMachines`).
    AzureResourceId,
}

impl Derivation {
    /// The selectors of type `kind` this rule derives from `claims`.
    pub fn selectors(self, kind: &str, claims: &Map<String, Value>) -> Vec<Selector> {
        match self {
            Self::AzureResourceId => {
                let Some(id) = claims.get("xms_mirid").and_then(Value::as_str) else {
                    return Vec::new();
                };
                azure_resource_selectors(id)
                    .into_iter()
                    .filter_map(|v| Selector::from_parts(kind, &v).ok())
                    .collect()
            }
        }
    }
}

fn azure_resource_selectors(id: &str) -> Vec<String> {
    let parts: Vec<&str> = id.split('/').collect();
    let mut out = Vec::new();
    // ["", "subscriptions", S, "resourcegroups", RG, "providers", NS, TYPE, NAME]
    if parts.len() < 3 || !parts[0].is_empty() || !parts[1].eq_ignore_ascii_case("subscriptions") {
        return out;
    }
    let ok = |s: &str| !s.is_empty() && !s.contains(':');
    if ok(parts[2]) {
        out.push(format!("subscription-id:{}", parts[2]));
    }
    if parts.len() == 9
        && parts[3].eq_ignore_ascii_case("resourcegroups")
        && parts[5].eq_ignore_ascii_case("providers")
        && parts[6].eq_ignore_ascii_case("Microsoft.Compute")
        && parts[7].eq_ignore_ascii_case("virtualMachines")
        && ok(parts[4])
        && ok(parts[8])
    {
        out.push(format!("vm-name:{}:{}", parts[4], parts[8]));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::jwks::Jwks;
    use crate::testutil::{TestKey, jwks_doc, sign_token};
    use lanyard_core::{FakeClock, TrustDomain};
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn run(a: &JwtAttestor, claims: Value) -> Result<crate::oidc::JwtAttestation, String> {
        let k = TestKey::rsa();
        let j = Jwks::parse(&jwks_doc(&[k.jwk(Some("k"), None)])).unwrap();
        let t = sign_token(&k, &json!({"alg":"RS256","kid":"k","typ":"JWT"}), &claims);
        a.attest(
            &t,
            &j,
            &TrustDomain::new("example.org").unwrap(),
            &FakeClock::at(NOW),
        )
        .map_err(|e| e.to_string())
    }

    fn sel(a: &crate::oidc::JwtAttestation) -> Vec<String> {
        a.selectors.iter().map(ToString::to_string).collect()
    }

    /// The claim set GitHub documents for an environment-bound job.
    fn github_claims() -> Value {
        json!({
            "jti": "1c9e6b2e-0e1d-4f63-9d2a-33fd5ab0a1a1",
            "sub": "repo:acme/api:environment:prod",
            "environment": "prod",
            "aud": "https://lanyard.example",
            "ref": "refs/heads/main", "sha": "c040cae0f0dc81641728557b80f09cfa23b83fe5",
            "repository": "acme/api", "repository_owner": "acme",
            "actor_id": "12", "repository_visibility": "private",
            "repository_id": "74", "repository_owner_id": "65",
            "run_id": "22259804324", "run_number": "10", "run_attempt": "2",
            "runner_environment": "github-hosted", "actor": "octocat",
            "workflow": "CI build",
            "head_ref": "", "base_ref": "", "event_name": "workflow_dispatch",
            "ref_type": "branch", "ref_protected": "true",
            "job_workflow_ref": "acme/shared/.github/workflows/deploy.yml@refs/heads/main",
            "workflow_ref": "acme/api/.github/workflows/ci.yml@refs/heads/main",
            "iss": GITHUB_ISSUER,
            "nbf": NOW - 70, "exp": NOW + 230, "iat": NOW - 10
        })
    }

    #[test]
    fn github_actions() {
        let a = super::github_actions("https://lanyard.example").unwrap();
        let out = run(&a, github_claims()).unwrap();
        assert_eq!(
            out.agent_id.to_string(),
            "spiffe://example.org/lanyard/agent/github/acme/api/22259804324/1c9e6b2e-0e1d-4f63-9d2a-33fd5ab0a1a1"
        );
        assert_eq!(
            sel(&out),
            [
                "github:environment:prod",
                "github:event_name:workflow_dispatch",
                "github:job_workflow_ref:acme/shared/.github/workflows/deploy.yml@refs/heads/main",
                "github:ref:refs/heads/main",
                "github:ref_protected:true",
                "github:ref_type:branch",
                "github:repository:acme/api",
                "github:repository_id:74",
                "github:repository_owner:acme",
                "github:repository_owner_id:65",
                "github:repository_visibility:private",
                "github:runner_environment:github-hosted",
                "github:workflow:CI%20build",
                "github:workflow_ref:acme/api/.github/workflows/ci.yml@refs/heads/main",
            ]
        );
        // Required claims narrow the preset.
        let p = a
            .policy()
            .clone()
            .require(ClaimRequirement::parse("repository_owner", &["acme"]).unwrap())
            .require(ClaimRequirement::parse("ref", &["refs/heads/*"]).unwrap());
        let narrowed = a.clone().with_policy(p);
        run(&narrowed, github_claims()).unwrap();
        let mut other = github_claims();
        other["ref"] = json!("refs/pull/1/merge");
        let e = run(&narrowed, other).unwrap_err();
        assert!(e.contains("\"ref\""), "{e}");
        // A token for another audience (GitHub's default is the owner's URL).
        let mut c = github_claims();
        c["aud"] = json!("https://github.com/acme");
        assert!(run(&a, c).unwrap_err().contains("audience"));
        assert!(
            github_actions_for_issuer("https://token.actions.githubusercontent.com/acme", "x")
                .is_ok()
        );
    }

    #[test]
    fn gitlab_ci() {
        let a = super::gitlab_ci(GITLAB_COM_ISSUER, "https://lanyard.example").unwrap();
        let claims = json!({
            "namespace_id": "72", "namespace_path": "acme/platform",
            "project_id": "20", "project_path": "acme/platform/api",
            "user_id": "1", "user_login": "dev", "user_email": "dev@acme.example",
            "pipeline_id": "574", "pipeline_source": "push",
            "job_id": "302", "ref": "main", "ref_type": "branch", "ref_path": "refs/heads/main",
            "ref_protected": "true", "environment": "production",
            "environment_protected": "true", "deployment_tier": "production",
            "runner_id": 1, "runner_environment": "gitlab-hosted",
            "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
            "ci_config_ref_uri": "gitlab.com/acme/platform/api//.gitlab-ci.yml@refs/heads/main",
            "project_visibility": "private",
            "jti": "235b3a54-b797-45c7-ae9a-f72d7bc6ef5b",
            "iss": GITLAB_COM_ISSUER, "iat": NOW - 1800, "nbf": NOW - 1805,
            "exp": NOW + 1800, "sub": "project_path:acme/platform/api:ref_type:branch:ref:main",
            "aud": "https://lanyard.example"
        });
        let out = run(&a, claims).unwrap();
        assert_eq!(
            out.agent_id.path(),
            "/lanyard/agent/gitlab/acme/platform/api/302"
        );
        let s = sel(&out);
        for want in [
            "gitlab:project_path:acme/platform/api",
            "gitlab:namespace_path:acme/platform",
            "gitlab:ref:main",
            "gitlab:ref_type:branch",
            "gitlab:ref_protected:true",
            "gitlab:environment:production",
            "gitlab:pipeline_source:push",
            "gitlab:project_id:20",
        ] {
            assert!(s.contains(&want.to_string()), "{want} not in {s:?}");
        }
        assert!(super::gitlab_ci("https://gitlab.example", "x").is_ok());
    }

    fn gcp_claims(project: &str) -> Value {
        json!({
            "aud": "https://lanyard.example", "azp": "1122334455",
            "email": "123-compute@developer.gserviceaccount.com", "email_verified": true,
            "exp": NOW + 3590, "iat": NOW - 10, "iss": GOOGLE_ISSUER, "sub": "1122334455",
            "google": {"compute_engine": {
                "instance_creation_timestamp": 1_700_000_000, "instance_id": "5566778899",
                "instance_name": "blog-server", "project_id": project,
                "project_number": 739419398126_u64, "zone": "us-west1-b"}}
        })
    }

    #[test]
    fn gcp_instance_identity() {
        let a = super::gcp_instance_identity("https://lanyard.example", &["big-kahuna"]).unwrap();
        let out = run(&a, gcp_claims("big-kahuna")).unwrap();
        assert_eq!(
            out.agent_id.path(),
            "/lanyard/agent/gcp_iit/big-kahuna/5566778899"
        );
        assert_eq!(
            sel(&out),
            [
                "gcp_iit:instance-id:5566778899",
                "gcp_iit:instance-name:blog-server",
                "gcp_iit:project-id:big-kahuna",
                "gcp_iit:project-number:739419398126",
                "gcp_iit:sa:123-compute@developer.gserviceaccount.com",
                "gcp_iit:zone:us-west1-b",
            ]
        );
        let e = run(&a, gcp_claims("other-project")).unwrap_err();
        assert!(e.contains("project_id"), "{e}");
        // format=standard tokens lack the compute_engine claims.
        let mut c = gcp_claims("big-kahuna");
        c.as_object_mut().unwrap().remove("google");
        assert!(
            run(&a, c)
                .unwrap_err()
                .contains("google.compute_engine.project_id")
        );
        assert!(matches!(
            super::gcp_instance_identity("x", &[]),
            Err(PresetError::EmptyAllowList { .. })
        ));
    }

    const TENANT: &str = "9e85e111-1103-48fc-a933-9533fe47de05";

    fn azure_claims(mirid: &str) -> Value {
        json!({
            "aud": "api://lanyard", "iss": azure_issuer(TENANT),
            "iat": NOW - 3600, "nbf": NOW - 3600, "exp": NOW + 80_000,
            "aio": "x", "appid": "a1", "appidacr": "2", "idp": azure_issuer(TENANT),
            "oid": "2f6c5cbd-7a1b-4b0e-8f5c-6a0d1b2c3d4e",
            "sub": "2f6c5cbd-7a1b-4b0e-8f5c-6a0d1b2c3d4e",
            "tid": TENANT, "uti": "u", "ver": "1.0", "xms_mirid": mirid
        })
    }

    #[test]
    fn azure_managed_identity() {
        let a = super::azure_managed_identity(TENANT, "api://lanyard").unwrap();
        let vm = "/subscriptions/d5b40d61-272e-48da-beb9-05f295c42bd6/resourcegroups/frontend/providers/Microsoft.Compute/virtualMachines/blog";
        let out = run(&a, azure_claims(vm)).unwrap();
        assert_eq!(
            out.agent_id.path(),
            format!("/lanyard/agent/azure_msi/{TENANT}/2f6c5cbd-7a1b-4b0e-8f5c-6a0d1b2c3d4e")
        );
        assert_eq!(
            sel(&out),
            [
                "azure_msi:principal-id:2f6c5cbd-7a1b-4b0e-8f5c-6a0d1b2c3d4e".to_string(),
                "azure_msi:subscription-id:d5b40d61-272e-48da-beb9-05f295c42bd6".to_string(),
                format!("azure_msi:tenant-id:{TENANT}"),
                "azure_msi:vm-name:frontend:blog".to_string(),
            ]
        );
        // A user-assigned identity: no VM name.
        let uai = "/subscriptions/s1/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1";
        let s = sel(&run(&a, azure_claims(uai)).unwrap());
        assert!(s.contains(&"azure_msi:subscription-id:s1".to_string()));
        assert!(!s.iter().any(|x| x.contains("vm-name")));
        // Another tenant's token (issuer differs).
        let mut c = azure_claims(vm);
        c["iss"] = json!("https://sts.windows.net/00000000-0000-0000-0000-000000000000/");
        assert!(run(&a, c).unwrap_err().contains("issued by"));
        assert!(matches!(
            super::azure_managed_identity("contoso.onmicrosoft.com", "x"),
            Err(PresetError::BadTenant(_))
        ));
        assert_eq!(
            azure_discovery_url(TENANT),
            format!("https://login.microsoftonline.com/{TENANT}/.well-known/openid-configuration")
        );
    }

    #[test]
    fn azure_resource_ids() {
        assert!(azure_resource_selectors("garbage").is_empty());
        assert!(azure_resource_selectors("/subscriptions/").is_empty());
        assert_eq!(
            azure_resource_selectors(
                "/SUBSCRIPTIONS/s/resourceGroups/r/providers/microsoft.compute/VIRTUALMACHINES/v"
            ),
            ["subscription-id:s", "vm-name:r:v"]
        );
        assert_eq!(
            azure_resource_selectors(
                "/subscriptions/s/resourcegroups/r:x/providers/Microsoft.Compute/virtualMachines/v"
            ),
            ["subscription-id:s"]
        );
    }

    #[test]
    fn presets_by_name() {
        for p in Preset::ALL {
            assert_eq!(Preset::from_name(p.name()), Some(p));
        }
        assert_eq!(Preset::from_name("jwt"), None);
    }
}
