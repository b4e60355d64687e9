#![allow(clippy::unwrap_used)]
use super::*;
use clap::Parser;

#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: WatchArgs,
}

fn plan(argv: &[&str]) -> Result<Plan, WatchError> {
    let mut full = vec!["watch", "--write", "/tmp/out"];
    full.extend_from_slice(argv);
    let cli = Cli::try_parse_from(full).map_err(|e| WatchError::Usage(e.to_string()))?;
    Plan::new(cli.args, Some("unix:///run/agent.sock".into()))
}

#[test]
fn defaults_write_pem_files_and_signal_nothing() {
    let p = plan(&[]).unwrap();
    assert_eq!(p.socket, "unix:///run/agent.sock");
    assert_eq!(p.names.cert, "svid.pem");
    assert_eq!(p.names.key, "svid.key");
    assert_eq!(p.names.bundle, "bundle.pem");
    assert_eq!(p.names.combined, None);
    assert_eq!(p.target, Target::None);
    assert!(p.exec.is_none());
    let p = plan(&["--socket", "unix:///x.sock", "--combined"]).unwrap();
    assert_eq!(p.socket, "unix:///x.sock");
    assert_eq!(p.names.combined.as_deref(), Some("svid_combined.pem"));
}

#[test]
fn hooks_name_their_target() {
    let p = plan(&["--signal", "HUP", "--pid-file", "/run/nginx.pid"]).unwrap();
    assert_eq!(p.target, Target::PidFile("/run/nginx.pid".into()));
    assert_eq!(p.signal, Signal::HUP);
    let p = plan(&["--pid-file", "/run/nginx.pid"]).unwrap();
    assert_eq!(p.signal, Signal::HUP, "SIGHUP by default");
    let p = plan(&["--signal", "USR1", "--", "envoy", "-c", "x.yaml"]).unwrap();
    assert_eq!(p.target, Target::Child);
    assert_eq!(p.signal, Signal::USR1);
    assert_eq!(p.command, ["envoy", "-c", "x.yaml"]);
    let p = plan(&["--exec", "nginx -s reload"]).unwrap();
    assert_eq!(p.exec.unwrap(), ["nginx", "-s", "reload"]);
    assert_eq!(p.target, Target::None);

    let e = plan(&["--signal", "HUP"]).unwrap_err().to_string();
    assert!(
        e.contains("--signal SIGHUP needs a process to signal"),
        "{e}"
    );
    let e = plan(&["--pid-file", "p", "--", "nginx"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--pid-file and -- CMD"), "{e}");
    let e = plan(&["--exec", "'unterminated"]).unwrap_err().to_string();
    assert!(e.contains("unterminated single quote"), "{e}");
}

#[test]
fn pkcs12_needs_a_password_file_and_jwt_files_follow_audiences() {
    let e = plan(&["--pkcs12", "svid.p12"]).unwrap_err().to_string();
    assert!(e.contains("--pkcs12-password-file"), "{e}");
    let p = plan(&[
        "--jwt-audience",
        "db",
        "--jwt-audience",
        "api",
        "--jwt-file",
        "db.jwt",
    ])
    .unwrap();
    assert_eq!(p.names.jwt, ["db.jwt", "jwt_svid.1.token"]);
    let e = plan(&["--jwt-audience", ""]).unwrap_err().to_string();
    assert!(e.contains("cannot be empty"), "{e}");
    let e = Plan::new(
        Cli::try_parse_from(["watch", "--write", "d"]).unwrap().args,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("SPIFFE_ENDPOINT_SOCKET"), "{e}");
}

fn answer() -> pb::X509svidResponse {
    let cert = |n: u8| super::files::tests::test_cert(&format!("c{n}"));
    pb::X509svidResponse {
        svids: vec![
            pb::X509svid {
                spiffe_id: "spiffe://example.org/a".into(),
                x509_svid: [cert(1), cert(2)].concat(),
                x509_svid_key: b"key-a".to_vec(),
                bundle: cert(9),
                hint: String::new(),
            },
            pb::X509svid {
                spiffe_id: "spiffe://example.org/b".into(),
                x509_svid: cert(3),
                x509_svid_key: b"key-b".to_vec(),
                bundle: cert(9),
                hint: String::new(),
            },
        ],
        crl: vec![],
        federated_bundles: [("spiffe://partner.org".to_string(), cert(7))]
            .into_iter()
            .collect(),
    }
}

#[test]
fn the_first_identity_or_the_one_asked_for() {
    let r = answer();
    let m = material(&r, None, false).unwrap();
    assert_eq!(m.spiffe_id, "spiffe://example.org/a");
    assert_eq!(m.chain.len(), 2);
    assert_eq!(m.bundle.len(), 1);
    let m = material(&r, Some("spiffe://example.org/b"), true).unwrap();
    assert_eq!(m.key, b"key-b");
    assert_eq!(m.bundle.len(), 2, "own and federated CA");
    let e = material(&r, Some("spiffe://example.org/c"), false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[spiffe://example.org/a, spiffe://example.org/b] but not --spiffe-id"),
        "{e}"
    );
    let e = material(&pb::X509svidResponse::default(), None, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no SVID"), "{e}");
}
