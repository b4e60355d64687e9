//! A CI job's identity without any distributed secret: `tests/ci/github-runner.sh`
//! behaves as a GitHub Actions runner (the two `ACTIONS_ID_TOKEN_REQUEST_*`
//! variables, served by the loopback `TestIssuer`) and runs `lanyard agent
//! --oneshot --write DIR` (checked with `openssl verify`) and `lanyard agent
//! --oneshot -- python3 …` (py-spiffe, unchanged). The server knows the issuer only
//! by URL (keys by OIDC discovery); the job's entry is parented to a node alias of
//! the repository and branch, as docs/attestation.md describes for fleets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{ServerProc, TD};
use lanyard_testkit::{GithubJob, TestIssuer};

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_github_job_gets_its_identity_from_its_oidc_token_alone() {
    // scripts/test installs both; a bare `cargo test` says what is missing.
    assert!(
        have("openssl", "version"),
        "openssl is required (scripts/test installs it)"
    );
    assert!(
        have("python3", "-c")
            || Command::new("python3")
                .args(["-c", "import spiffe"])
                .status()
                .is_ok_and(|s| s.success()),
        "python3 with py-spiffe is required (scripts/test installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let gh = TestIssuer::start();
    gh.set_github_job(GithubJob {
        environment: Some("prod".into()),
        run_id: "90210".into(),
        ..Default::default()
    });
    let ca = dir.path().join("issuer-ca.pem");
    gh.write_ca(&ca);
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[[jwt_attestor]]\npreset = \"github_actions\"\nissuer = \"{}\"\naudience = \"lanyard-server\"\nca_file = \"{}\"\nrequire = {{ repository_owner = \"acme\" }}\n",
            gh.issuer(),
            ca.display()
        ),
    )
    .unwrap();
    let server = ServerProc::start(&dir.path().join("data"), None, Some(&config));

    // Every job of acme/api on main (a node alias), and the deploy identity under it
    // for the job's user.
    let alias = format!("spiffe://{TD}/nodes/ci/acme-api-main");
    let uid =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()).to_string();
    server.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        &alias,
        "--parent-id",
        &format!("spiffe://{TD}/lanyard/server"),
        "--selector",
        "github:repository:acme/api",
        "--selector",
        "github:ref:refs/heads/main",
        "--owner",
        "platform",
        "--environment",
        "ci",
    ]);
    let job_id = format!("spiffe://{TD}/ci/api/deploy");
    server.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        &job_id,
        "--parent-id",
        &alias,
        "--selector",
        &format!("unix:uid:{uid}"),
        "--owner",
        "team-api",
        "--environment",
        "ci",
    ]);
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, server.ok(&["bundle", "show", "--format", "pem"])).unwrap();

    let (url, request_token) = gh.github_request();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let o = Command::new("bash")
        .arg(root.join("tests/ci/github-runner.sh"))
        .env("LANYARD_BIN", common::bin())
        .env("LANYARD_SERVER", &server.agent_addr)
        .env("LANYARD_TRUST_BUNDLE", &bundle)
        .env("EXPECTED_ID", &job_id)
        .env("PY_CHECK", root.join("tests/py/pyspiffe_interop.py"))
        .env("SSL_CERT_FILE", &ca)
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", &url)
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", &request_token)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "the runner script failed\n{out}\n{err}");
    assert!(
        out.contains("step 1 ok") && out.contains("step 2 ok"),
        "{out}"
    );
    assert!(
        out.contains("py-spiffe:") && out.contains("0 failed"),
        "{out}"
    );
    // Never a token in the agent's output.
    assert!(
        !out.contains(&request_token) && !err.contains(&request_token),
        "{err}"
    );
    // Two attestations, each with a fresh token requested for the server's audience.
    let asked = gh.requested_audiences();
    assert_eq!(
        asked,
        vec![Some("lanyard-server".to_string()); 2],
        "{asked:?}"
    );
    // Both one-shot agents attested as jobs of acme/api.
    let agents = server.json(&["agent", "list"]);
    let jobs = agents
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            a["spiffe_id"].as_str().unwrap().starts_with(&format!(
                "spiffe://{TD}/lanyard/agent/github/acme/api/90210/"
            ))
        })
        .count();
    assert_eq!(jobs, 2, "{agents}");
}
