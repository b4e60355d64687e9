//! `lanyard svid watch` with real TLS software as the consumer (#15 item 7), against
//! the real `lanyard server` and `lanyard agent`, with a 20 s X509-SVID TTL so
//! rotation (at about half-life) happens during each test:
//!
//! - nginx (Debian's package; `scripts/test` installs it) serves mTLS with the
//!   helper's files and is reloaded by it (`--signal HUP --pid-file nginx.pid`);
//!   curl with another workload's SVID (another uid, its own helper) succeeds
//!   across at least two rotations, seen as new serials nginx presents; the agent
//!   restarts in between and the helper reconnects.
//! - PostgreSQL: a private cluster run as the `postgres` user with
//!   `ssl_cert_file`/`ssl_key_file`/`ssl_ca_file` from a helper running as that
//!   user, `hostssl … trust clientcert=verify-ca`; psql connects with another
//!   workload's SVID and `sslmode=verify-full`, before and after a rotation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TTL: &str = "20s";
const NOBODY: u32 = 65534;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn my_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// A program the test needs, from PATH or the given places; panics naming how to
/// install it (never skips silently).
fn tool(name: &str, also: &[&str], install: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let candidates = path
        .split(':')
        .map(|d| Path::new(d).join(name))
        .chain(also.iter().map(PathBuf::from));
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "{name} is required for this test and was not found: {install} (./scripts/test installs it)"
    );
}

/// `lanyard server` plus a standalone `lanyard agent` (join token) whose Workload
/// API socket other uids can reach.
struct Stack {
    dir: PathBuf,
    server: common::ServerProc,
    agent: Option<Child>,
    socket: PathBuf,
}

impl Stack {
    fn start(dir: &Path) -> Self {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let server = common::ServerProc::start(&dir.join("server"), None, None);
        let token = server.json(&[
            "token",
            "generate",
            "--spiffe-id",
            "spiffe://example.org/lanyard/agent/node-1",
        ])["token"]
            .as_str()
            .unwrap()
            .to_string();
        std::fs::write(
            dir.join("trust.pem"),
            server.ok(&["bundle", "show", "--format", "pem"]),
        )
        .unwrap();
        let mut s = Self {
            dir: dir.to_path_buf(),
            server,
            agent: None,
            socket: dir.join("agent.sock"),
        };
        s.start_agent(Some(&token));
        s
    }

    fn start_agent(&mut self, token: Option<&str>) {
        let mut cmd = Command::new(common::bin());
        cmd.args([
            "agent",
            "--trust-domain",
            "example.org",
            "--server-address",
            &self.server.agent_addr,
        ])
        .arg("--data-dir")
        .arg(self.dir.join("agent"))
        .arg("--socket-path")
        .arg(&self.socket)
        .arg("--trust-bundle")
        .arg(self.dir.join("trust.pem"))
        .stdout(Stdio::null())
        .stderr(log_file(&self.dir.join("agent.log")));
        if let Some(t) = token {
            cmd.args(["--join-token", t]);
        }
        self.agent = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "the agent's socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// An entry for `uid` with the test TTL (and DNS names for servers).
    fn entry(&self, path: &str, uid: u32, dns: &[&str]) {
        self.entry_with(path, uid, dns, &[]);
    }

    fn entry_with(&self, path: &str, uid: u32, dns: &[&str], extra: &[&str]) {
        let id = format!("spiffe://example.org{path}");
        let sel = format!("unix:uid:{uid}");
        let mut args = vec![
            "entry",
            "create",
            "--spiffe-id",
            &id,
            "--parent-id",
            "spiffe://example.org/lanyard/agent/node-1",
            "--selector",
            &sel,
            "--owner",
            "helper-test",
            "--environment",
            "test",
            "--x509-ttl",
            TTL,
        ];
        for d in dns {
            args.extend(["--dns-name", d]);
        }
        args.extend(extra);
        self.server.ok(&args);
    }

    /// `lanyard svid watch --socket … ARGS`, as `uid` (via setpriv) unless it is ours;
    /// its log goes to `log`.
    fn helper(&self, uid: u32, gid: u32, args: &[&str], log: &Path) -> Proc {
        let mut cmd = if uid == my_uid() {
            Command::new(common::bin())
        } else {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
                common::bin(),
            ]);
            c
        };
        cmd.args(["svid", "watch", "--socket", &self.endpoint()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log_file(log));
        Proc {
            child: cmd.spawn().unwrap(),
            log: log.to_path_buf(),
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop_agent();
    }
}

fn log_file(p: &Path) -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap(),
    )
}

/// A child killed on drop, with its log.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first, so a master process (nginx) stops its workers instead of
        // leaving them orphaned; SIGKILL only if it does not exit.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_file(p: &Path, helper: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.exists() {
        assert!(
            Instant::now() < deadline,
            "{} was never written; helper log:\n{}",
            p.display(),
            helper.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The serial of the certificate a TLS server on `port` presents (openssl s_client,
/// with `extra` arguments, e.g. `-starttls postgres` or a client certificate).
fn served_serial(port: u16, extra: &[&str]) -> Option<String> {
    let o = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost"])
        .args(extra)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[start..].find("-----END CERTIFICATE-----")? + start + 25;
    let der = pem::parse(&text[start..end]).ok()?.into_contents();
    Some(lanyard_core::x509::summarize(&der).ok()?.serial)
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
}

fn mkdir_for(p: &Path, uid: u32, gid: u32, mode: u32) {
    std::fs::create_dir_all(p).unwrap();
    chown(p, uid, gid);
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn nginx_mtls_reloaded_across_rotations() {
    let nginx = tool("nginx", &["/usr/sbin/nginx"], "apt-get install -y nginx");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut stack = Stack::start(dir);
    let me = my_uid();
    stack.entry("/web", me, &["localhost"]);
    stack.entry("/client", NOBODY, &[]);

    // The server's helper: files in web/, nginx reloaded through its pid file.
    let web = dir.join("web");
    let pid_file = dir.join("nginx.pid");
    let web_helper = stack.helper(
        me,
        me,
        &[
            "--write",
            web.to_str().unwrap(),
            "--signal",
            "HUP",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
        &dir.join("web-helper.log"),
    );
    // Another workload (uid nobody) with its own helper: curl's client SVID.
    let client = dir.join("client");
    mkdir_for(&client, NOBODY, NOBODY, 0o755);
    let client_helper = stack.helper(
        NOBODY,
        NOBODY,
        &["--write", client.to_str().unwrap()],
        &dir.join("client-helper.log"),
    );
    wait_for_file(&web.join("svid.key"), &web_helper);
    wait_for_file(&client.join("svid.key"), &client_helper);
    assert_eq!(mode(&web.join("svid.key")), 0o600);
    assert_eq!(mode(&web.join("svid.pem")), 0o644);
    assert_eq!(mode(&web.join("bundle.pem")), 0o644);
    assert_eq!(
        std::fs::metadata(client.join("svid.key")).unwrap().uid(),
        NOBODY
    );
    assert_eq!(mode(&client.join("svid.key")), 0o600);

    let port = free_port();
    let tmpdir = dir.join("nginx-tmp");
    std::fs::create_dir_all(&tmpdir).unwrap();
    let t = tmpdir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"daemon off;
master_process on;
worker_processes 1;
pid {pid};
error_log {dir}/nginx-error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate        {web}/svid.pem;
        ssl_certificate_key    {web}/svid.key;
        ssl_client_certificate {web}/bundle.pem;
        ssl_verify_client on;
        location / {{
            return 200 "verify=$ssl_client_verify\n";
        }}
    }}
}}
"#,
            pid = pid_file.display(),
            dir = dir.display(),
            web = web.display(),
        ),
    )
    .unwrap();
    let _nginx = Proc {
        child: Command::new(&nginx)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log_file(&dir.join("nginx-stderr.log")))
            .spawn()
            .unwrap(),
        log: dir.join("nginx-error.log"),
    };

    let curl = |with_cert: bool| {
        let mut c = Command::new("curl");
        c.args(["-sS", "-f", "--max-time", "5"])
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .arg("--cacert")
            .arg(client.join("bundle.pem"));
        if with_cert {
            c.arg("--cert")
                .arg(client.join("svid.pem"))
                .arg("--key")
                .arg(client.join("svid.key"));
        }
        c.arg(format!("https://localhost:{port}/"))
            .output()
            .unwrap()
    };
    let (cert_arg, key_arg) = (client.join("svid.pem"), client.join("svid.key"));
    let client_args = [
        "-cert",
        cert_arg.to_str().unwrap(),
        "-key",
        key_arg.to_str().unwrap(),
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = curl(true);
        if o.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nginx never answered: {}\nnginx log:\n{}",
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Watch the serial nginx presents while curl keeps succeeding with the other
    // workload's SVID.
    let mut serials: Vec<String> = Vec::new();
    let started = Instant::now();
    let watch = |want: usize, secs: u64, serials: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while serials.len() < want {
            let o = curl(true);
            assert!(
                o.status.success(),
                "curl with the client SVID failed: {}\nweb helper:\n{}\nnginx:\n{}",
                String::from_utf8_lossy(&o.stderr),
                web_helper.log(),
                std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
            );
            assert_eq!(String::from_utf8_lossy(&o.stdout), "verify=SUCCESS\n");
            if let Some(s) = served_serial(port, &client_args)
                && !serials.contains(&s)
            {
                eprintln!("nginx presents serial {s} at {:?}", started.elapsed());
                serials.push(s);
            }
            assert!(
                Instant::now() < deadline,
                "saw {} serial(s) {serials:?}, wanted {want}; web helper log:\n{}",
                serials.len(),
                web_helper.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    // The first SVID and two rotations (20 s TTL: one about every 10 s).
    watch(3, 60, &mut serials);
    let log = web_helper.log();
    assert!(
        log.matches("sent SIGHUP to process").count() >= 2,
        "nginx was reloaded through its pid file:\n{log}"
    );
    assert!(!log.contains("PRIVATE KEY"), "the key is never logged");

    // The agent goes away: the files stay and nginx keeps serving; when it is back
    // the helper reconnects and the next rotation reaches nginx.
    stack.stop_agent();
    std::thread::sleep(Duration::from_secs(2));
    assert!(web.join("svid.key").exists() && web.join("svid.pem").exists());
    assert!(curl(true).status.success());
    stack.start_agent(None);
    watch(4, 45, &mut serials);
    assert!(
        web_helper.log().contains("retrying in"),
        "the helper noticed the agent was gone:\n{}",
        web_helper.log()
    );

    // Without a client certificate nginx refuses (400).
    let o = curl(false);
    assert!(!o.status.success(), "no client certificate must be refused");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("400"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // No temporary file is left behind by the atomic writes.
    let leftovers: Vec<_> = std::fs::read_dir(&web)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(client_helper);
}

/// `-- CMD`: the program starts only once the SVID and JWT-SVID files exist, gets
/// SIGHUP on each rotation, SIGTERM to the helper is forwarded to it, and the helper
/// exits with its status. The JWT-SVID (6 s TTL) is refreshed at half-life. The
/// same run writes the combined file and a PKCS #12 archive, read back by openssl,
/// and runs an `--exec` hook after each write.
#[test]
fn supervised_program_is_started_after_the_files_and_signalled_on_renewal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let stack = Stack::start(dir);
    let me = my_uid();
    stack.entry_with("/worker", me, &[], &["--jwt-ttl", "6s"]);
    let out = dir.join("out");
    let pw = dir.join("p12.pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let execs = dir.join("execs");
    let exec = format!("sh -c 'echo \"$LANYARD_SVID_DIR\" >> {}'", execs.display());
    let script = format!(
        r#"cd {out}
test -f svid.pem && test -f svid.key && test -f bundle.pem && test -f db.jwt && echo files > started
trap 'echo hup >> hups' HUP
trap 'exit 7' TERM
while :; do sleep 0.1; done"#,
        out = out.display()
    );
    let mut helper = stack.helper(
        me,
        me,
        &[
            "--write",
            out.to_str().unwrap(),
            "--jwt-audience",
            "db",
            "--jwt-file",
            "db.jwt",
            "--combined",
            "--pkcs12",
            "svid.p12",
            "--pkcs12-password-file",
            pw.to_str().unwrap(),
            "--exec",
            &exec,
            "--",
            "sh",
            "-c",
            &script,
        ],
        &dir.join("helper.log"),
    );
    wait_for_file(&out.join("started"), &helper);
    assert_eq!(
        std::fs::read_to_string(out.join("started")).unwrap(),
        "files\n",
        "the program saw every file at start"
    );
    assert_eq!(mode(&out.join("db.jwt")), 0o600);
    let first_jwt = std::fs::read_to_string(out.join("db.jwt")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hups = std::fs::read_to_string(out.join("hups")).unwrap_or_default();
        let jwt = std::fs::read_to_string(out.join("db.jwt")).unwrap();
        if hups.lines().count() >= 1 && jwt != first_jwt {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no SIGHUP after a rotation or no JWT refresh; log:\n{}",
            helper.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The hook ran after the first write and the rotation, told where the files are.
    let ran = std::fs::read_to_string(&execs).unwrap();
    assert!(ran.lines().count() >= 2, "{ran}");
    assert!(ran.lines().all(|l| l == out.to_str().unwrap()), "{ran}");
    // The combined file is the key then the chain; the PKCS #12 archive opens with
    // the password and holds the same key and leaf (openssl as the independent reader).
    assert_eq!(mode(&out.join("svid_combined.pem")), 0o600);
    assert_eq!(mode(&out.join("svid.p12")), 0o600);
    let combined = std::fs::read_to_string(out.join("svid_combined.pem")).unwrap();
    assert!(
        combined.starts_with("-----BEGIN PRIVATE KEY-----"),
        "key first"
    );
    let openssl = |args: &[&str]| {
        let o = Command::new("openssl").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let p12 = out.join("svid.p12");
    let pass = format!("file:{}", pw.display());
    let p12_cert = openssl(&[
        "pkcs12",
        "-in",
        p12.to_str().unwrap(),
        "-passin",
        &pass,
        "-nokeys",
        "-clcerts",
    ]);
    let p12_key = openssl(&[
        "pkcs12",
        "-in",
        p12.to_str().unwrap(),
        "-passin",
        &pass,
        "-nocerts",
        "-nodes",
    ]);
    let pubkey = |pem_text: &str, kind: &str| {
        let f = dir.join(format!("check.{kind}"));
        std::fs::write(&f, pem_text).unwrap();
        if kind == "key" {
            openssl(&["pkey", "-in", f.to_str().unwrap(), "-pubout"])
        } else {
            openssl(&["x509", "-in", f.to_str().unwrap(), "-noout", "-pubkey"])
        }
    };
    assert_eq!(
        pubkey(&p12_key, "key"),
        pubkey(&p12_cert, "cert"),
        "key matches leaf"
    );
    let e = Command::new("openssl")
        .args([
            "pkcs12",
            "-in",
            p12.to_str().unwrap(),
            "-passin",
            "pass:wrong",
            "-nokeys",
        ])
        .output()
        .unwrap();
    assert!(
        !e.status.success(),
        "a wrong password does not open the archive"
    );

    let token = std::fs::read_to_string(out.join("db.jwt")).unwrap();
    let claims = lanyard_core::jwt::JwtSvid::parse_insecure(&token).unwrap();
    assert_eq!(claims.audience(), ["db"]);
    // SIGTERM to the helper reaches the program; its status is the helper's.
    assert!(kill(helper.child.id(), "TERM"));
    let status = helper.child.wait().unwrap();
    assert_eq!(status.code(), Some(7), "log:\n{}", helper.log());
    assert!(helper.log().contains("forwarding SIGTERM to the program"));
}

/// `kill -SIG PID` (the test has no signal crate of its own).
fn kill(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success()
}

/// A private PostgreSQL cluster run as the `postgres` user, stopped on drop.
struct Cluster {
    pg_ctl: PathBuf,
    data: PathBuf,
    uid: u32,
    gid: u32,
}

impl Cluster {
    fn as_postgres(&self, program: &Path) -> Command {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={}", self.uid),
            &format!("--regid={}", self.gid),
            "--clear-groups",
        ])
        .arg(program);
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .as_postgres(&self.pg_ctl.clone())
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn postgres_user() -> (u32, u32) {
    let o = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the postgres OS user is required (apt-get install -y postgresql; ./scripts/test installs it)"
    );
    let uid = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let o = Command::new("id")
        .args(["-g", "postgres"])
        .output()
        .unwrap();
    let gid = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    (uid, gid)
}

/// `/usr/lib/postgresql/<version>/bin/<name>` (Debian), else PATH.
fn pg_tool(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path().join("bin").join(name))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| tool(name, &[], "apt-get install -y postgresql"))
}

#[test]
fn postgresql_serves_the_helpers_files_to_psql_with_verify_full() {
    let (pg_uid, pg_gid) = postgres_user();
    let (initdb, pg_ctl) = (pg_tool("initdb"), pg_tool("pg_ctl"));
    tool("psql", &[], "apt-get install -y postgresql-client");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let stack = Stack::start(dir);
    let me = my_uid();
    stack.entry("/db", pg_uid, &["localhost"]);
    stack.entry("/app", me, &[]);

    // The helper runs as the server's user, so the key is postgres' own and 0600,
    // as PostgreSQL demands; after each rotation it sends SIGHUP to the postmaster,
    // which reloads its SSL files.
    let tls = dir.join("tls");
    mkdir_for(&tls, pg_uid, pg_gid, 0o755);
    let data = dir.join("pgdata");
    mkdir_for(&data, pg_uid, pg_gid, 0o700);
    let helper = stack.helper(
        pg_uid,
        pg_gid,
        &[
            "--write",
            tls.to_str().unwrap(),
            "--signal",
            "HUP",
            "--pid-file",
            data.join("postmaster.pid").to_str().unwrap(),
        ],
        &dir.join("db-helper.log"),
    );
    wait_for_file(&tls.join("svid.key"), &helper);
    let key_meta = std::fs::metadata(tls.join("svid.key")).unwrap();
    assert_eq!(key_meta.uid(), pg_uid);
    assert_eq!(key_meta.mode() & 0o777, 0o600);

    let cluster = Cluster {
        pg_ctl: pg_ctl.clone(),
        data: data.clone(),
        uid: pg_uid,
        gid: pg_gid,
    };
    let o = cluster
        .as_postgres(&initdb)
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let port = free_port();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        write!(
            f,
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{d}'\n\
             ssl = on\nssl_cert_file = '{t}/svid.pem'\nssl_key_file = '{t}/svid.key'\nssl_ca_file = '{t}/bundle.pem'\n",
            d = data.display(),
            t = tls.display(),
        )
        .unwrap();
    }
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n",
    )
    .unwrap();
    // The server log goes into the data dir: the test dir is not postgres' to write.
    let o = cluster
        .as_postgres(&pg_ctl)
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(data.join("server.log"))
        .args(["-w", "-t", "30", "start"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "pg_ctl start: {}{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(data.join("server.log")).unwrap_or_default()
    );

    // The client: another workload's SVID (this uid), written by svid fetch.
    let app = dir.join("app");
    let o = Command::new(common::bin())
        .args(["svid", "fetch", "--socket", &stack.endpoint(), "--write"])
        .arg(&app)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let psql = |cert: bool| {
        let a = app.display();
        let certs = if cert {
            format!("sslcert={a}/svid.pem sslkey={a}/svid.key")
        } else {
            format!("sslcert={a}/none.pem sslkey={a}/none.key")
        };
        Command::new("psql")
            .arg(format!(
                "host=localhost hostaddr=127.0.0.1 port={port} dbname=postgres user=postgres \
                 sslmode=verify-full sslrootcert={a}/bundle.pem {certs} connect_timeout=5"
            ))
            .args([
                "-XAtc",
                "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            ])
            .output()
            .unwrap()
    };
    let check = || {
        let o = psql(true);
        assert!(
            o.status.success(),
            "psql with an SVID and sslmode=verify-full: {}\nhelper:\n{}",
            String::from_utf8_lossy(&o.stderr),
            helper.log()
        );
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "t");
    };
    check();
    let o = psql(false);
    assert!(!o.status.success(), "no client certificate must be refused");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("certificate"), "{err}");

    // A rotation reaches PostgreSQL (new serial after the helper's SIGHUP) and psql
    // still connects.
    let first = served_serial(port, &["-starttls", "postgres"]).expect("serial");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        check();
        let now = served_serial(port, &["-starttls", "postgres"]);
        if let Some(s) = now.filter(|s| *s != first) {
            eprintln!("PostgreSQL presents serial {s} after {first}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "PostgreSQL still presents serial {first}; helper log:\n{}",
            helper.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        helper.log().contains("sent SIGHUP to process"),
        "{}",
        helper.log()
    );
    check();
    drop(cluster);
}
