//! End-to-end one-shot mode for CI jobs (`lanyard agent --oneshot`): a process that
//! behaves as a GitHub Actions runner step (the two `ACTIONS_ID_TOKEN_REQUEST_*`
//! variables, served by lanyard_testkit's `TestIssuer` over HTTPS) attests with the
//! job's token to the real `lanyard server`, gets the identity registered for the
//! job's repository and branch through a node alias, and either writes it to files
//! (checked with `openssl verify`) or runs a command that fetches it with py-spiffe
//! over a socket that is gone once the command exits. Nothing of the agent stays on
//! disk.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{ServerProc, TD};
use lanyard_testkit::TestIssuer;
use lanyard_testkit::oidc::GithubJob;

const WORKLOAD_ID: &str = "spiffe://example.org/ci/api/deploy";

/// A server trusting `gh` as GitHub Actions' issuer, with a node alias for jobs of
/// acme/api on main and the job's identity for this uid under it.
struct Setup {
    dir: tempfile::TempDir,
    gh: TestIssuer,
    server: ServerProc,
    bundle: PathBuf,
    ca: PathBuf,
    tmp: PathBuf,
}

fn uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let gh = TestIssuer::start();
    let ca = dir.path().join("gh-ca.pem");
    gh.write_ca(&ca);
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[[jwt_attestor]]\npreset = \"github_actions\"\nissuer = \"{}\"\naudience = \"lanyard-server\"\nca_file = {:?}\nrequire = {{ repository_owner = \"acme\" }}\n",
            gh.issuer(),
            ca.to_str().unwrap()
        ),
    )
    .unwrap();
    let server = ServerProc::start(&dir.path().join("data"), None, Some(&config));
    let alias = format!("spiffe://{TD}/nodes/ci/api-main");
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
        "platform-team",
        "--environment",
        "ci",
    ]);
    server.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        WORKLOAD_ID,
        "--parent-id",
        &alias,
        "--selector",
        &format!("unix:uid:{}", uid()),
        "--owner",
        "api-team",
        "--environment",
        "dev",
    ]);
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, server.ok(&["bundle", "show", "--format", "pem"])).unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    Setup {
        dir,
        gh,
        server,
        bundle,
        ca,
        tmp,
    }
}

impl Setup {
    /// `lanyard agent --oneshot` as a GitHub Actions step would run it, asking for
    /// the job's token for `audience`, with `extra` flags.
    fn oneshot(&self, audience: &str, extra: &[&str]) -> Output {
        let (url, request_token) = self.gh.github_request();
        let o = Command::new(common::bin())
            .args([
                "agent",
                "--oneshot",
                "--trust-domain",
                TD,
                "--server-address",
            ])
            .arg(&self.server.agent_addr)
            .arg("--trust-bundle")
            .arg(&self.bundle)
            .args(["--jwt-from", "github-actions", "--jwt-attestation-audience"])
            .arg(audience)
            .args(extra)
            .env("ACTIONS_ID_TOKEN_REQUEST_URL", url)
            .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", &request_token)
            // The issuer's test CA stands in for the system's roots.
            .env("SSL_CERT_FILE", &self.ca)
            .env("TMPDIR", &self.tmp)
            .env_remove("LANYARD_LOG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            !stderr.contains(&request_token),
            "the request token was logged:\n{stderr}"
        );
        o
    }

    /// Nothing of a one-shot agent is left in its temp dir.
    fn assert_nothing_left(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.tmp)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn openssl(args: &[&str]) -> String {
    let o = Command::new("openssl").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

fn claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_ci_job_writes_its_svids_and_openssl_accepts_them() {
    let s = setup();
    s.gh.set_github_job(GithubJob {
        run_id: "4711".into(),
        ..Default::default()
    });
    let out = s.dir.path().join("out");
    let out_s = out.to_str().unwrap();
    let o = s.oneshot(
        "lanyard-server",
        &[
            "--write",
            out_s,
            "--jwt-audience",
            "vault",
            "--jwt-audience",
            "https://sts.example",
            "--timeout",
            "30s",
        ],
    );
    assert!(
        o.status.success(),
        "oneshot failed:\n{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(
        text(&o.stdout).contains(&format!("wrote {WORKLOAD_ID} to {out_s}/svid.pem")),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(
        s.gh.requested_audiences(),
        [Some("lanyard-server".to_string())]
    );

    let svid = out.join("svid.pem");
    let bundle = out.join("bundle.pem");
    let key = out.join("svid.key");
    let verified = openssl(&[
        "verify",
        "-CAfile",
        bundle.to_str().unwrap(),
        svid.to_str().unwrap(),
    ]);
    assert!(verified.contains(": OK"), "{verified}");
    let san = openssl(&[
        "x509",
        "-in",
        svid.to_str().unwrap(),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(san.contains(&format!("URI:{WORKLOAD_ID}")), "{san}");
    // The key is the certificate's, and only its owner may read it.
    assert_eq!(mode(&key), 0o600);
    assert_eq!(
        openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]),
        openssl(&["x509", "-in", svid.to_str().unwrap(), "-noout", "-pubkey"])
    );
    assert!(
        std::fs::read_to_string(&key)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    for (n, aud) in ["vault", "https://sts.example"].iter().enumerate() {
        let file = out.join(format!("jwt_svid.{n}.token"));
        assert_eq!(mode(&file), 0o600);
        let c = claims(&std::fs::read_to_string(&file).unwrap());
        assert_eq!(c["sub"], WORKLOAD_ID, "{c}");
        assert!(
            c["aud"] == *aud || c["aud"] == serde_json::json!([aud]),
            "{c}"
        );
    }
    assert!(!out.join("svids").exists(), "one identity matched");
    s.assert_nothing_left();
    // The agent reported, before it stopped, which process received the SVIDs.
    let o = Command::new(common::bin())
        .args(["audit", "query", "--data-dir"])
        .arg(s.dir.path().join("data"))
        .args(["--kind", "workload_svid_delivered", "--output", "json"])
        .output()
        .unwrap();
    let delivered = text(&o.stdout);
    assert!(
        delivered.contains(WORKLOAD_ID) && delivered.contains("/lanyard"),
        "{delivered}{}",
        text(&o.stderr)
    );

    // A job of another repository attests, but nothing is registered for it: a
    // bounded wait, then a message naming the agent and the selectors it had.
    s.gh.set_github_job(GithubJob {
        repository: "acme/web".into(),
        run_id: "4712".into(),
        ..Default::default()
    });
    let o = s.oneshot(
        "lanyard-server",
        &[
            "--write",
            s.dir.path().join("out2").to_str().unwrap(),
            "--timeout",
            "2s",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    eprintln!("{e}");
    assert!(
        e.contains("no registration entry matches this job")
            && e.contains(&format!(
                "agent spiffe://{TD}/lanyard/agent/github/acme/web/4712/"
            ))
            && e.contains(&format!("unix:uid:{}", uid())),
        "{e}"
    );
    assert!(!s.dir.path().join("out2").join("svid.key").exists());
    s.assert_nothing_left();

    // A token for the wrong audience is refused at once, with the server's reason.
    let started = std::time::Instant::now();
    let o = s.oneshot(
        "someone-else",
        &["--write", s.dir.path().join("out3").to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    eprintln!("{e}");
    assert!(
        e.contains("node attestation failed") && e.contains("lanyard-server"),
        "{e}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "not at the timeout"
    );
    s.assert_nothing_left();
}

#[test]
fn a_ci_job_runs_a_command_with_a_workload_api_socket_for_its_lifetime() {
    let have = Command::new("python3")
        .args(["-c", "import spiffe"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        have,
        "py-spiffe is required: pip install spiffe (./scripts/test installs it)"
    );
    let s = setup();
    s.gh.set_github_job(GithubJob {
        run_id: "5000".into(),
        ..Default::default()
    });
    let script = "import os, sys\n\
from spiffe import WorkloadApiClient\n\
socket = os.environ['SPIFFE_ENDPOINT_SOCKET']\n\
client = WorkloadApiClient(socket)\n\
print('X509', client.fetch_x509_svid().spiffe_id)\n\
print('JWT', client.fetch_jwt_svid(audience={'py-audience'}).spiffe_id)\n\
print('SOCKET', socket)\n\
sys.exit(3)\n";
    let o = s.oneshot("lanyard-server", &["--", "python3", "-c", script]);
    let stdout = text(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(3),
        "the command's exit status:\n{stdout}{}",
        text(&o.stderr)
    );
    assert!(stdout.contains(&format!("X509 {WORKLOAD_ID}")), "{stdout}");
    assert!(stdout.contains(&format!("JWT {WORKLOAD_ID}")), "{stdout}");
    let socket = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SOCKET unix://"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let socket = Path::new(socket);
    assert!(socket.starts_with(&s.tmp), "{}", socket.display());
    assert!(!socket.exists(), "the socket is removed");
    assert!(
        !socket.parent().unwrap().exists(),
        "its directory is removed"
    );
    s.assert_nothing_left();
}
