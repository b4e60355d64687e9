//! End-to-end node attestation without static secrets, against loopback
//! emulators of the platforms (lanyard_testkit's `TestIssuer`: an OIDC issuer over
//! HTTPS with discovery, JWKS, GitHub/GitLab/Kubernetes claim sets and the
//! Kubernetes TokenReview API; `TestImds`: EC2's instance metadata service):
//! the real `lanyard server` fetches keys by OIDC discovery, verifies, refuses with
//! clear messages, and records every refusal as a `node_attestation_refused` event
//! naming its reason.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ServerProc, TD, node_client, shared_bundles};
use lanyard_core::{BundleSet, SystemClock, X509Svid};
use lanyard_proto::node as pb;
use lanyard_testkit::oidc::{GithubJob, GitlabJob, K8sPod, KeyAlg, Mint, ReviewFailure};
use lanyard_testkit::{TestImds, TestIssuer};
use rcgen::{CertificateParams, KeyPair};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

fn csr() -> Vec<u8> {
    CertificateParams::default()
        .serialize_request(&KeyPair::generate().unwrap())
        .unwrap()
        .der()
        .to_vec()
}

/// Attest with one first message; the agent SVID or the refusal.
async fn attest(
    server: &ServerProc,
    step: pb::attest_request::Step,
) -> Result<pb::AgentSvid, tonic::Status> {
    let mut c = node_client(&server.agent_addr, shared_bundles(server.bundle()), None).await;
    let req = pb::AttestRequest { step: Some(step) };
    let mut stream = c.attest(tokio_stream::iter(vec![req])).await?.into_inner();
    match stream.next().await.expect("one response")?.step {
        Some(pb::attest_response::Step::Result(svid)) => Ok(svid),
        other => panic!("unexpected attestation step {other:?}"),
    }
}

fn token_step(method: &str, cluster: &str, token: String) -> pb::attest_request::Step {
    pb::attest_request::Step::Token(pb::TokenAttestation {
        method: method.into(),
        cluster: cluster.into(),
        token,
        csr: csr(),
    })
}

fn verify(chain: &[Vec<u8>], server: &ServerProc) -> X509Svid {
    let set: BundleSet = [server.bundle()].into_iter().collect();
    X509Svid::validate(chain.to_vec(), &set, &SystemClock).unwrap()
}

/// Events of `kind` in the server's evidence log.
fn events(data: &std::path::Path, kind: &str) -> Vec<Value> {
    let o = std::process::Command::new(common::bin())
        .args(["audit", "query", "--data-dir"])
        .arg(data)
        .args(["--kind", kind, "--output", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn refusal_codes(data: &std::path::Path) -> Vec<String> {
    events(data, "node_attestation_refused")
        .iter()
        .map(|e| {
            let ev = &e["event"];
            assert!(ev["reason"].as_str().is_some_and(|r| r.len() > 20), "{ev}");
            format!(
                "{}:{}",
                ev["evidence"]["attestation_type"].as_str().unwrap(),
                ev["evidence"]["refusal"].as_str().unwrap()
            )
        })
        .collect()
}

/// The refusal's code and message, asserting the message names `hint`.
fn refused(r: Result<pb::AgentSvid, tonic::Status>, hint: &str) -> tonic::Code {
    let e = r.expect_err("the attestation must be refused");
    eprintln!("refused ({:?}): {}", e.code(), e.message());
    assert!(
        e.message().contains(hint),
        "{hint:?} not in the refusal: {}",
        e.message()
    );
    e.code()
}

/// A node alias `alias` (parented to the server) selecting agents by `selector`,
/// and under it the identity `workload` for this process's uid (owner `platform`,
/// environment `prod`).
fn alias_with_workload(server: &ServerProc, alias: &str, selector: &str, workload: &str) {
    let uid =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()).to_string();
    let alias = format!("spiffe://{TD}{alias}");
    let server_id = format!("spiffe://{TD}/lanyard/server");
    for (id, parent, sel) in [
        (alias.clone(), server_id.as_str(), selector.to_string()),
        (
            format!("spiffe://{TD}{workload}"),
            alias.as_str(),
            format!("unix:uid:{uid}"),
        ),
    ] {
        server.ok(&[
            "entry",
            "create",
            "--spiffe-id",
            &id,
            "--parent-id",
            parent,
            "--selector",
            &sel,
            "--owner",
            "platform",
            "--environment",
            "prod",
        ]);
    }
}

fn agent_selectors(server: &ServerProc, id: &str) -> String {
    let agents = server.json(&["agent", "list"]);
    agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["spiffe_id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {agents}"))["selectors"]
        .to_string()
}

/// GitHub Actions and GitLab CI tokens from issuers the server knows only by URL
/// (keys by OIDC discovery over HTTPS with the issuers' CA): each attests once;
/// every forgery and mismatch the issue lists is refused with a clear message and
/// an event naming its reason; made-up key IDs cost the issuer at most one JWKS
/// fetch per interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_job_tokens_attest_through_oidc_discovery_and_every_refusal_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let gh = TestIssuer::start_with_path("/gha");
    let gl = TestIssuer::start();
    let stranger = TestIssuer::start();
    gh.write_ca(dir.path().join("gh-ca.pem"));
    gl.write_ca(dir.path().join("gl-ca.pem"));
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[jwt_attestor]]
preset = "github_actions"
issuer = "{gh}"
audience = "lanyard-server"
ca_file = "{gh_ca}"
require = {{ repository_owner = "acme", ref = ["refs/heads/main", "refs/tags/v*"] }}

[[jwt_attestor]]
preset = "gitlab_ci"
issuer = "{gl}"
audience = "https://lanyard.example"
ca_file = "{gl_ca}"
require = {{ project_path = "acme/*" }}
"#,
            gh = gh.issuer(),
            gl = gl.issuer(),
            gh_ca = dir.path().join("gh-ca.pem").display(),
            gl_ca = dir.path().join("gl-ca.pem").display(),
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = ServerProc::start(&data, None, Some(&config));

    // GitHub: the documented claim set of a push to main in the prod environment.
    let job = GithubJob {
        environment: Some("prod".into()),
        run_id: "4711".into(),
        ..Default::default()
    };
    let token = gh.mint(gh.github_claims(&job));
    let svid = attest(&server, token_step("jwt", "", token.clone()))
        .await
        .unwrap();
    assert!(
        svid.spiffe_id.starts_with(&format!(
            "spiffe://{TD}/lanyard/agent/github/acme/api/4711/"
        )),
        "{}",
        svid.spiffe_id
    );
    verify(&svid.cert_chain, &server);
    let sels = agent_selectors(&server, &svid.spiffe_id);
    for want in [
        "github:repository:acme/api",
        "github:ref:refs/heads/main",
        "github:environment:prod",
        "github:ref_protected:true",
    ] {
        assert!(sels.contains(want), "{want} not in {sels}");
    }
    assert!(gh.fetch_count("/.well-known/openid-configuration") >= 1);

    // GitLab: a pipeline job of acme/api on main.
    let gl_job = GitlabJob {
        audience: "https://lanyard.example".into(),
        ..Default::default()
    };
    let svid = attest(
        &server,
        token_step("jwt", "", gl.mint(gl.gitlab_claims(&gl_job))),
    )
    .await
    .unwrap();
    assert!(
        svid.spiffe_id
            .starts_with(&format!("spiffe://{TD}/lanyard/agent/gitlab/")),
        "{}",
        svid.spiffe_id
    );
    let sels = agent_selectors(&server, &svid.spiffe_id);
    assert!(sels.contains("gitlab:project_path:acme/api"), "{sels}");

    // Every refusal: a clear message to the agent, and an event with its code.
    use tonic::Code::PermissionDenied;
    let with = |extra: Value| {
        let mut j = job.clone();
        j.extra = extra.as_object().unwrap().clone();
        gh.github_claims(&j)
    };
    let cases: Vec<(String, &str, tonic::Code)> = vec![
        (token.clone(), "already attested", PermissionDenied),
        (
            gh.mint(gh.github_claims(&GithubJob {
                audience: "someone-else".into(),
                ..job.clone()
            })),
            "lanyard-server",
            PermissionDenied,
        ),
        (
            gh.mint(gh.github_claims(&GithubJob {
                now: lanyard_core::Clock::unix_seconds(&SystemClock) - 3600,
                ..job.clone()
            })),
            "expired",
            PermissionDenied,
        ),
        (
            stranger.mint(stranger.github_claims(&job)),
            "no jwt attestor on this server trusts the issuer",
            PermissionDenied,
        ),
        (
            gh.mint_with(gh.github_claims(&job), Mint::alg_none()),
            "none",
            PermissionDenied,
        ),
        (
            gh.mint_with(gh.github_claims(&job), Mint::hs256(b"shared-secret")),
            "HS256",
            PermissionDenied,
        ),
        (
            gh.mint_with(gh.github_claims(&job), Mint::foreign(KeyAlg::Es256)),
            "foreign-",
            PermissionDenied,
        ),
        (
            gh.mint(with(json!({"repository_owner": null}))),
            "repository_owner",
            PermissionDenied,
        ),
        (
            gh.mint(with(json!({"ref": "refs/heads/feature-x"}))),
            "refs/heads/feature-x",
            PermissionDenied,
        ),
    ];
    for (token, hint, code) in cases {
        assert_eq!(
            refused(attest(&server, token_step("jwt", "", token)).await, hint),
            code
        );
    }
    let codes = refusal_codes(&data);
    assert_eq!(
        codes,
        [
            "jwt:replayed",
            "jwt:wrong_audience",
            "jwt:expired",
            "jwt:unknown_issuer",
            "jwt:unsupported_algorithm",
            "jwt:unsupported_algorithm",
            "jwt:unknown_key",
            "jwt:missing_claim",
            "jwt:claim_mismatch",
        ],
        "{codes:?}"
    );

    // A flood of made-up key IDs: at most one JWKS fetch in the refresh interval.
    let before = gh.fetch_count("/jwks");
    for _ in 0..5 {
        let t = gh.mint_with(gh.github_claims(&job), Mint::foreign(KeyAlg::Rs256));
        let _ = attest(&server, token_step("jwt", "", t)).await.unwrap_err();
    }
    assert!(
        gh.fetch_count("/jwks") <= before + 1,
        "{} JWKS fetches for 5 unknown key IDs",
        gh.fetch_count("/jwks") - before
    );
}

fn pod(node_uid: &str) -> K8sPod {
    K8sPod {
        namespace: "lanyard".into(),
        service_account: "lanyard-agent".into(),
        node_name: Some("node-1".into()),
        node_uid: Some(node_uid.into()),
        ..Default::default()
    }
}

/// Kubernetes projected service-account tokens: cluster `prod` checked by a
/// TokenReview against its API server, cluster `edge` offline with keys by OIDC
/// discovery. SPIRE's selectors, the node-UID agent ID, and refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projected_service_account_tokens_attest_by_token_review_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let prod = TestIssuer::start();
    let edge = TestIssuer::start_with(lanyard_testkit::oidc::IssuerOptions {
        alg: KeyAlg::Es256,
        ..Default::default()
    });
    prod.write_ca(dir.path().join("prod-ca.pem"));
    edge.write_ca(dir.path().join("edge-ca.pem"));
    std::fs::write(dir.path().join("reviewer.token"), prod.reviewer_token()).unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[k8s_psat]]
cluster = "prod"
service_accounts = ["lanyard:lanyard-agent"]
issuer = "{prod}"
kube_api_url = "{prod}"
kube_ca_file = "{prod_ca}"
kube_token_file = "{reviewer}"

[[k8s_psat]]
cluster = "edge"
service_accounts = ["lanyard:lanyard-agent"]
issuer = "{edge}"
ca_file = "{edge_ca}"
"#,
            prod = prod.issuer(),
            edge = edge.issuer(),
            prod_ca = dir.path().join("prod-ca.pem").display(),
            edge_ca = dir.path().join("edge-ca.pem").display(),
            reviewer = dir.path().join("reviewer.token").display(),
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = ServerProc::start(&data, None, Some(&config));

    let token = prod.mint(prod.k8s_claims(&pod("node-uid-1")));
    let svid = attest(&server, token_step("k8s_psat", "prod", token.clone()))
        .await
        .unwrap();
    assert_eq!(
        svid.spiffe_id,
        format!("spiffe://{TD}/lanyard/agent/k8s_psat/prod/node-uid-1")
    );
    verify(&svid.cert_chain, &server);
    let sels = agent_selectors(&server, &svid.spiffe_id);
    for want in [
        "k8s_psat:cluster:prod",
        "k8s_psat:agent_ns:lanyard",
        "k8s_psat:agent_sa:lanyard-agent",
        "k8s_psat:agent_node_name:node-1",
        "k8s_psat:agent_node_uid:node-uid-1",
        "k8s_psat:agent_pod_name:",
        "k8s_psat:agent_pod_uid:",
    ] {
        assert!(sels.contains(want), "{want} not in {sels}");
    }
    assert!(prod.fetch_count("/apis/authentication.k8s.io/v1/tokenreviews") >= 1);

    let svid = attest(
        &server,
        token_step(
            "k8s_psat",
            "edge",
            edge.mint(edge.k8s_claims(&pod("node-uid-2"))),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        svid.spiffe_id,
        format!("spiffe://{TD}/lanyard/agent/k8s_psat/edge/node-uid-2")
    );

    // Refusals.
    let other_sa = K8sPod {
        service_account: "default".into(),
        ..pod("node-uid-3")
    };
    assert_eq!(
        refused(
            attest(&server, token_step("k8s_psat", "prod", token)).await,
            "already attested"
        ),
        tonic::Code::PermissionDenied
    );
    refused(
        attest(
            &server,
            token_step("k8s_psat", "prod", prod.mint(prod.k8s_claims(&other_sa))),
        )
        .await,
        "lanyard:default",
    );
    refused(
        attest(
            &server,
            token_step(
                "k8s_psat",
                "staging",
                prod.mint(prod.k8s_claims(&pod("n4"))),
            ),
        )
        .await,
        "no [[k8s_psat]] cluster \"staging\"",
    );
    // A token of another cluster's issuer: the API server does not authenticate it.
    refused(
        attest(
            &server,
            token_step("k8s_psat", "prod", edge.mint(edge.k8s_claims(&pod("n5")))),
        )
        .await,
        "did not authenticate",
    );
    prod.set_review_failure(Some(ReviewFailure::Forbidden));
    refused(
        attest(
            &server,
            token_step("k8s_psat", "prod", prod.mint(prod.k8s_claims(&pod("n6")))),
        )
        .await,
        "system:auth-delegator",
    );
    prod.set_review_failure(None);
    // Offline: a token signed by a key the edge issuer never published.
    refused(
        attest(
            &server,
            token_step(
                "k8s_psat",
                "edge",
                edge.mint_with(edge.k8s_claims(&pod("n7")), Mint::foreign(KeyAlg::Es256)),
            ),
        )
        .await,
        "foreign-",
    );
    let codes = refusal_codes(&data);
    assert_eq!(
        codes,
        [
            "k8s_psat:replayed",
            "k8s_psat:service_account_not_allowed",
            "k8s_psat:unknown_cluster",
            "k8s_psat:token_review_not_authenticated",
            "k8s_psat:token_review_failed",
            "k8s_psat:unknown_key",
        ],
        "{codes:?}"
    );
}

/// An EC2 instance identity document in AWS's format, signed by a test key whose
/// certificate the server is configured with, attests the instance once; a
/// tampered document and another account are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_identity_document_attests_an_instance_once() {
    let dir = tempfile::tempdir().unwrap();
    let imds = TestImds::start();
    imds.write_certificate(dir.path().join("aws-us-east-1.pem"));
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[aws_iid]\naccounts = [\"123456789012\"]\n[[aws_iid.certificate]]\nregion = \"us-east-1\"\nfile = \"{}\"\n",
            dir.path().join("aws-us-east-1.pem").display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = ServerProc::start(&data, None, Some(&config));
    let step = |payload: Value| {
        pb::attest_request::Step::AwsIid(pb::AwsIidAttestation {
            payload: payload.to_string().into_bytes(),
            csr: csr(),
        })
    };
    let doc = imds.document();
    let svid = attest(
        &server,
        step(json!({"document": doc, "rsa2048": imds.rsa2048()})),
    )
    .await
    .unwrap();
    let id =
        format!("spiffe://{TD}/lanyard/agent/aws_iid/123456789012/us-east-1/i-0123456789abcdef0");
    assert_eq!(svid.spiffe_id, id);
    verify(&svid.cert_chain, &server);
    let sels = agent_selectors(&server, &id);
    for want in [
        "aws_iid:account:123456789012",
        "aws_iid:region:us-east-1",
        "aws_iid:instance:id:i-0123456789abcdef0",
        "aws_iid:image:id:ami-0abcdef1234567890",
        "aws_iid:instance:type:t3.micro",
    ] {
        assert!(sels.contains(want), "{want} not in {sels}");
    }
    // The same instance again (the `signature` form, equally valid): refused.
    refused(
        attest(
            &server,
            step(json!({"document": doc, "signature": imds.signature()})),
        )
        .await,
        "already attested",
    );
    // A document edited after signing.
    let tampered = doc.replace("t3.micro", "m7i.48xlarge");
    refused(
        attest(
            &server,
            step(json!({"document": tampered, "signature": imds.signature()})),
        )
        .await,
        "signature",
    );
    // Another account's instance, correctly signed.
    imds.set_document(&lanyard_testkit::imds::InstanceDocument {
        account_id: "210987654321".into(),
        ..Default::default()
    });
    refused(
        attest(
            &server,
            step(json!({"document": imds.document(), "rsa2048": imds.rsa2048()})),
        )
        .await,
        "210987654321",
    );
    let codes = refusal_codes(&data);
    assert_eq!(
        codes,
        [
            "aws_iid:already_attested",
            "aws_iid:bad_signature",
            "aws_iid:account_not_allowed"
        ],
        "{codes:?}"
    );
}

/// The real agent attests with what the platform gives it — a projected
/// service-account token file (re-read at each attestation) and the instance
/// metadata service (IMDSv2) — and one-shot mode writes the SVID of the entry its
/// node alias grants.
#[test]
fn the_agent_attests_from_a_projected_token_file_and_from_imds() {
    let dir = tempfile::tempdir().unwrap();
    let k8s = TestIssuer::start();
    let imds = TestImds::start();
    k8s.write_jwks(dir.path().join("k8s-jwks.json"));
    imds.write_certificate(dir.path().join("aws.pem"));
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[k8s_psat]]
cluster = "prod"
service_accounts = ["lanyard:lanyard-agent"]
issuer = "{iss}"
jwks_file = "{jwks}"

[aws_iid]
accounts = ["123456789012"]
[[aws_iid.certificate]]
file = "{cert}"
"#,
            iss = k8s.issuer(),
            jwks = dir.path().join("k8s-jwks.json").display(),
            cert = dir.path().join("aws.pem").display(),
        ),
    )
    .unwrap();
    let server = ServerProc::start(&dir.path().join("data"), None, Some(&config));
    for (alias, selector, workload) in [
        (
            "/nodes/k8s/prod",
            "k8s_psat:cluster:prod",
            "/k8s/prod/node-agent",
        ),
        (
            "/nodes/aws/main",
            "aws_iid:account:123456789012",
            "/aws/batch",
        ),
    ] {
        alias_with_workload(&server, alias, selector, workload);
    }
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, server.ok(&["bundle", "show", "--format", "pem"])).unwrap();
    let token_file = dir.path().join("lanyard-agent.token");
    let oneshot = |method: &[&str], out: &std::path::Path| {
        std::process::Command::new(common::bin())
            .args([
                "agent",
                "--oneshot",
                "--trust-domain",
                TD,
                "--server-address",
            ])
            .arg(&server.agent_addr)
            .arg("--trust-bundle")
            .arg(&bundle)
            .args(method)
            .arg("--write")
            .arg(out)
            .output()
            .unwrap()
    };
    let id_of = |out: &std::path::Path| {
        let pem = std::fs::read(out.join("svid.pem")).unwrap();
        let chain = lanyard_core::bundle::pem_certificates(&pem).unwrap();
        verify(&chain, &server).spiffe_id().to_string()
    };

    // Kubernetes: the kubelet writes (and refreshes) the projected token.
    std::fs::write(&token_file, k8s.mint(k8s.k8s_claims(&pod("node-uid-9")))).unwrap();
    let k8s_args = [
        "--k8s-psat-cluster",
        "prod",
        "--k8s-psat-token-file",
        token_file.to_str().unwrap(),
    ];
    let out = dir.path().join("k8s-out");
    let o = oneshot(&k8s_args, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(id_of(&out), format!("spiffe://{TD}/k8s/prod/node-agent"));
    // The same token file again: the token was spent; the agent says why.
    let o = oneshot(&k8s_args, &dir.path().join("k8s-again"));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already attested"), "{err}");
    // The kubelet refreshed the token: the agent re-reads it and attests.
    std::fs::write(&token_file, k8s.mint(k8s.k8s_claims(&pod("node-uid-9")))).unwrap();
    let o = oneshot(&k8s_args, &dir.path().join("k8s-fresh"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // EC2: the identity document from IMDSv2.
    let out = dir.path().join("aws-out");
    let imds_url = imds.url();
    let o = oneshot(&["--aws-iid", "--aws-imds-url", &imds_url], &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(id_of(&out), format!("spiffe://{TD}/aws/batch"));
    assert!(imds.tokens_issued() >= 1, "IMDSv2 session token requested");
    let o = oneshot(
        &["--aws-iid", "--aws-imds-url", &imds_url],
        &dir.path().join("aws-again"),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already attested"), "{err}");
}

/// Registration for fleets under the example policy: a prod identity is allowed
/// only under a node alias whose every definition requires protected prod jobs,
/// and a later, looser definition of that alias is refused naming the entry it
/// would expose.
#[test]
fn the_fleet_policy_keeps_prod_identities_to_protected_prod_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), None, None);
    let policy = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/policies/ci-fleets.cedar");
    server.ok(&[
        "policy",
        "set",
        "--kind",
        "registration",
        "--file",
        policy.to_str().unwrap(),
    ]);
    let server_id = format!("spiffe://{TD}/lanyard/server");
    let entry = |id: &str, parent: &str, selectors: &[&str], env: &str| {
        let mut args = vec![
            "entry".to_string(),
            "create".into(),
            "--spiffe-id".into(),
            format!("spiffe://{TD}{id}"),
            "--parent-id".into(),
            parent.to_string(),
            "--owner".into(),
            "team-api".into(),
            "--environment".into(),
            env.into(),
        ];
        for s in selectors {
            args.push("--selector".into());
            args.push((*s).to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        server.cli(&args)
    };
    let protected = format!("spiffe://{TD}/nodes/ci/api-prod");
    let loose = format!("spiffe://{TD}/nodes/ci/api-any");
    for (alias, sels) in [
        (
            &protected,
            &[
                "github:repository:acme/api",
                "github:environment:prod",
                "github:ref_protected:true",
            ][..],
        ),
        (&loose, &["github:repository:acme/api"][..]),
    ] {
        let o = entry(
            &alias[format!("spiffe://{TD}").len()..],
            &server_id,
            sels,
            "ci",
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = entry("/prod/deploy", &protected, &["unix:uid:1001"], "prod");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = entry("/prod/deploy-any", &loose, &["unix:uid:1001"], "prod");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("prod-only-for-protected-prod-jobs"), "{err}");
    // A second, looser definition of the protected alias would let any job of the
    // repository serve /prod/deploy: refused, naming it.
    let o = entry(
        "/nodes/ci/api-prod",
        &server_id,
        &["github:repository:acme/api"],
        "ci",
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/prod/deploy") && err.contains("prod-only-for-protected-prod-jobs"),
        "{err}"
    );
    // A definition that keeps the guarantees is fine.
    let o = entry(
        "/nodes/ci/api-prod",
        &server_id,
        &[
            "github:repository:acme/web",
            "github:environment:prod",
            "github:ref_protected:true",
        ],
        "ci",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A loopback metadata service: answers every request with `status` and `body`,
/// and hands back the raw requests (to check the headers clients must send).
fn metadata_server(
    status: u16,
    body: String,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 8192];
            let n = conn.read(&mut buf).unwrap_or(0);
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).to_string());
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

/// GCP and Azure VMs: the agent asks the VM's metadata service for its identity
/// token (with the header each cloud requires), and the server's presets admit it
/// with the cloud's documented claims as selectors.
#[test]
fn cloud_vms_attest_with_tokens_from_their_metadata_services() {
    const TENANT: &str = "9e85e111-1103-48fc-a933-9533fe47de05";
    let dir = tempfile::tempdir().unwrap();
    let keys = TestIssuer::start();
    keys.write_jwks(dir.path().join("jwks.json"));
    let jwks = dir.path().join("jwks.json");
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[jwt_attestor]]
preset = "gcp_instance_identity"
audience = "https://lanyard.example"
project_ids = ["acme-prod"]
jwks_file = "{jwks}"

[[jwt_attestor]]
preset = "azure_managed_identity"
tenant_id = "{TENANT}"
audience = "api://lanyard"
jwks_file = "{jwks}"
"#,
            jwks = jwks.display()
        ),
    )
    .unwrap();
    let server = ServerProc::start(&dir.path().join("data"), None, Some(&config));
    let now = lanyard_core::Clock::unix_seconds(&SystemClock);
    // GCP's documented `format=full` identity token.
    let gcp_token = keys.mint(json!({
        "iss": "https://accounts.google.com", "aud": "https://lanyard.example",
        "azp": "112233445566778899000", "sub": "112233445566778899000",
        "email": "vm@acme-prod.iam.gserviceaccount.com", "email_verified": true,
        "iat": now - 5, "exp": now + 3600,
        "google": {"compute_engine": {
            "project_id": "acme-prod", "project_number": 123456789012u64,
            "zone": "europe-west1-b", "instance_id": "4567890123456789012",
            "instance_name": "batch-1", "instance_creation_timestamp": now - 86400
        }}
    }));
    // An Azure managed identity's access token (v1), as IMDS returns it.
    let azure_token = keys.mint(json!({
        "iss": format!("https://sts.windows.net/{TENANT}/"), "aud": "api://lanyard",
        "tid": TENANT, "sub": "d1f0b2a4-1111-4222-8333-944455556666",
        "oid": "d1f0b2a4-1111-4222-8333-944455556666", "appid": "abc",
        "xms_mirid": "/subscriptions/sub-1/resourcegroups/rg-1/providers/Microsoft.Compute/virtualMachines/vm-1",
        "iat": now - 5, "nbf": now - 5, "exp": now + 3600
    }));
    let (gcp_url, gcp_seen) = metadata_server(200, gcp_token);
    let (azure_url, azure_seen) = metadata_server(
        200,
        json!({"access_token": azure_token, "token_type": "Bearer", "resource": "api://lanyard"})
            .to_string(),
    );
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, server.ok(&["bundle", "show", "--format", "pem"])).unwrap();
    for (alias, selector, workload) in [
        (
            "/nodes/gcp/acme-prod",
            "gcp_iit:project-id:acme-prod",
            "/gcp/batch",
        ),
        (
            "/nodes/azure/rg-1",
            "azure_msi:vm-name:rg-1:vm-1",
            "/azure/batch",
        ),
    ] {
        alias_with_workload(&server, alias, selector, workload);
    }
    for (from, aud, url, seen, header, want) in [
        (
            "gcp-metadata",
            "https://lanyard.example",
            &gcp_url,
            &gcp_seen,
            "metadata-flavor: google",
            "/gcp/batch",
        ),
        (
            "azure-imds",
            "api://lanyard",
            &azure_url,
            &azure_seen,
            "metadata: true",
            "/azure/batch",
        ),
    ] {
        let out = dir.path().join(from);
        let o = std::process::Command::new(common::bin())
            .args([
                "agent",
                "--oneshot",
                "--trust-domain",
                TD,
                "--server-address",
            ])
            .arg(&server.agent_addr)
            .arg("--trust-bundle")
            .arg(&bundle)
            .args([
                "--jwt-from",
                from,
                "--jwt-attestation-audience",
                aud,
                "--jwt-metadata-url",
                url,
            ])
            .arg("--write")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{from}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let pem = std::fs::read(out.join("svid.pem")).unwrap();
        let chain = lanyard_core::bundle::pem_certificates(&pem).unwrap();
        assert_eq!(
            verify(&chain, &server).spiffe_id().to_string(),
            format!("spiffe://{TD}{want}")
        );
        let requests = seen.lock().unwrap().join("\n").to_ascii_lowercase();
        assert!(requests.contains(header), "{from}: {requests}");
        assert!(
            requests.contains(&format!("={}", aud.replace(':', "%3a").replace('/', "%2f"))),
            "{from}: {requests}"
        );
    }
    let agents = server.json(&["agent", "list"]).to_string();
    for want in [
        "gcp_iit:project-id:acme-prod",
        "gcp_iit:zone:europe-west1-b",
        "gcp_iit:sa:vm@acme-prod.iam.gserviceaccount.com",
        "azure_msi:tenant-id:9e85e111-1103-48fc-a933-9533fe47de05",
        "azure_msi:subscription-id:sub-1",
        "azure_msi:vm-name:rg-1:vm-1",
    ] {
        assert!(agents.contains(want), "{want} not in {agents}");
    }
}
