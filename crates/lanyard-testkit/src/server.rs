//! [`TestServer`]: the real `lanyard server` binary on a temp dir and loopback
//! ports.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use lanyard_core::{Bundle, TrustDomain};

use crate::TD;

/// The `lanyard` binary tests run: `$LANYARD_BIN` when set, else the one Cargo
/// built beside the running test (`target/<profile>/lanyard`; an integration test
/// of the `lanyard` crate runs from `target/<profile>/deps/`).
pub fn lanyard_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("LANYARD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the path of the running test");
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("lanyard");
    assert!(
        bin.exists(),
        "{} does not exist: build it (cargo build -p lanyard) or set LANYARD_BIN",
        bin.display()
    );
    bin
}

/// A running `lanyard server`, killed on drop.
pub struct TestServer {
    pub child: Child,
    pub dir: PathBuf,
    pub agent_addr: String,
    pub http_addr: String,
    pub admin_socket: PathBuf,
    pub admin_mtls: Option<String>,
    pub database_url: Option<String>,
    pub config: Option<PathBuf>,
    pub fixed_bind: bool,
}

impl TestServer {
    pub fn start(dir: &Path, database_url: Option<&str>, config: Option<&Path>) -> Self {
        Self::start_on(dir, database_url, config, "127.0.0.1:0")
    }

    /// Start with a fixed agent API address (kept across `restart`).
    pub fn start_on(
        dir: &Path,
        database_url: Option<&str>,
        config: Option<&Path>,
        bind: &str,
    ) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut cmd = Command::new(lanyard_binary());
        cmd.args([
            "server",
            "--trust-domain",
            TD,
            "--bind",
            bind,
            "--http-bind",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("server.log"))
                .unwrap(),
        ));
        if let Some(u) = database_url {
            cmd.args(["--database-url", u]);
        }
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd.spawn().expect("start lanyard server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("lanyard server ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                panic!("server did not become ready; log:\n{log}")
            });
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .unwrap()
                .to_string()
        };
        Self {
            child,
            dir: dir.to_path_buf(),
            agent_addr: field("agent_api"),
            http_addr: field("http"),
            admin_socket: PathBuf::from(field("admin_socket")),
            admin_mtls: line
                .split_whitespace()
                .find_map(|f| f.strip_prefix("admin_mtls="))
                .map(str::to_string),
            database_url: database_url.map(str::to_string),
            config: config.map(Path::to_path_buf),
            fixed_bind: bind != "127.0.0.1:0",
        }
    }

    /// Stop (SIGKILL: nothing acknowledged may be lost) and start again on the same state.
    pub fn restart(mut self) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = self.dir.clone();
        let url = self.database_url.clone();
        let config = self.config.clone();
        let bind = if self.fixed_bind {
            self.agent_addr.clone()
        } else {
            "127.0.0.1:0".to_string()
        };
        drop(self);
        let mut s = Self::start_on(&dir, url.as_deref(), config.as_deref(), &bind);
        s.fixed_bind = bind != "127.0.0.1:0";
        s
    }

    /// Run a CLI command against this server's admin socket.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(lanyard_binary())
            .args(args)
            .env("LANYARD_ADMIN_SOCKET", &self.admin_socket)
            .output()
            .unwrap()
    }

    /// Run a CLI command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        succeeded(args, &self.cli(args))
    }

    /// Run a CLI command that must fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            !o.status.success(),
            "{args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// The trust bundle, as `lanyard bundle show` prints it.
    pub fn bundle(&self) -> Bundle {
        let doc = self.ok(&["bundle", "show", "--format", "jwks"]);
        Bundle::parse(TrustDomain::new(TD).unwrap(), doc.as_bytes()).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stdout of CLI command `args` that exited `o`; fails the test (with both
/// streams) unless it succeeded.
pub fn succeeded(args: &[&str], o: &Output) -> String {
    assert!(
        o.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
