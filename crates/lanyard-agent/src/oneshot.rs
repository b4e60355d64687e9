//! One-shot mode for CI jobs (`lanyard agent --oneshot`): attest with the job's
//! token, fetch the SVIDs of the entries that match the job, and either write them
//! to files and exit ([`Action::Write`]) or run a command with a Workload API socket
//! that is up exactly as long as the command ([`Action::Run`]).
//!
//! It is the ordinary agent ([`crate::start`]: session, SVID cache, Workload API)
//! living in a private temporary directory ([`Workspace`]) that is removed when
//! one-shot mode ends, so neither the agent SVID nor any key outlives the job.
//! For `Write`, the workload is this process: it is attested by the agent's own
//! workload attestors from the kernel's credentials for it, and served through the
//! same Workload API code a socket caller gets.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use lanyard_core::{Selector, SpiffeId};
use lanyard_proto::workload as pb;
use lanyard_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use rustix::process::Signal;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::RunningAgent;
use crate::attestor::PeerCredentials;
use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::h2shim::PeerInfo;
use crate::state::{AgentState, Progress, SessionFailure};

/// How long one-shot mode waits by default for attestation, the entries and SVIDs.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a command has to exit after a forwarded signal before it is killed.
pub const KILL_GRACE: Duration = Duration::from_secs(10);

/// Why one-shot mode failed.
#[derive(Debug, thiserror::Error)]
pub enum OneshotError {
    #[error("{0}")]
    Agent(#[from] AgentError),
    #[error("cannot create the one-shot agent's temporary directory: {0}")]
    Workspace(std::io::Error),
    #[error("node attestation failed: {message} ({code:?})")]
    Attestation { code: tonic::Code, message: String },
    #[error("the server refused this agent: {message} ({code:?})")]
    Refused { code: tonic::Code, message: String },
    #[error(
        "the agent did not attest and receive its entries within {} s{}; raise --timeout or check --server-address and the server's logs",
        .secs, .last.as_ref().map(|l| format!(" (last error: {l})")).unwrap_or_default()
    )]
    NotSynced { secs: u64, last: Option<String> },
    #[error(
        "no registration entry matches this job after {secs} s: agent {agent} has {entries} entr{plural} and none matches this process's selectors [{selectors}]; create an entry parented to the agent (or to a node alias of its selectors) whose selectors are a subset of those, or raise --timeout if it is being created",
        plural = if *.entries == 1 { "y" } else { "ies" }
    )]
    NoEntry {
        secs: u64,
        agent: String,
        entries: usize,
        selectors: String,
    },
    #[error("the agent's Workload API refused this process: {0}")]
    Workload(String),
    #[error("{action} {}: {source}", path.display())]
    Write {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    File(#[from] lanyard_fs::FsError),
    #[error("the SVID the agent served is unusable: {0}")]
    BadSvid(String),
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch for signals: {0}")]
    Signals(std::io::Error),
    #[error("interrupted by signal {0} before anything was written")]
    Interrupted(i32),
}

/// The private temporary directory a one-shot agent lives in (mode 0700): the
/// Workload API socket and, unless a data dir is given, the agent's data (its SVID
/// and key). Removed, with everything in it, when dropped.
#[derive(Debug)]
pub struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    /// A new directory under `$TMPDIR`.
    pub fn new() -> Result<Self, OneshotError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("lanyard-oneshot-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(OneshotError::Workspace)?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where the Workload API socket goes.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// The agent's data dir unless one is given.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// What one-shot mode does once the agent has its entries.
#[derive(Debug, Clone)]
pub enum Action {
    /// Write the SVIDs that match this process (see [`write_svids`]) to `dir`, with
    /// a JWT-SVID for each of `jwt_audiences`.
    Write {
        dir: PathBuf,
        jwt_audiences: Vec<String>,
    },
    /// Run `command` (program and arguments) with `SPIFFE_ENDPOINT_SOCKET` set.
    Run { command: Vec<OsString> },
}

/// Signals that interrupt one-shot mode (and are forwarded to a running command).
#[derive(Debug)]
pub struct Interrupts {
    rx: mpsc::Receiver<Signal>,
}

impl Interrupts {
    /// SIGINT, SIGTERM, SIGHUP and SIGQUIT to this process. Once installed they no
    /// longer end the process by themselves, so one-shot mode can clean up.
    pub fn install() -> Result<Self, OneshotError> {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, rx) = mpsc::channel(8);
        for (kind, sig) in [
            (SignalKind::interrupt(), Signal::INT),
            (SignalKind::terminate(), Signal::TERM),
            (SignalKind::hangup(), Signal::HUP),
            (SignalKind::quit(), Signal::QUIT),
        ] {
            let mut stream = signal(kind).map_err(OneshotError::Signals)?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(sig).await.is_err() {
                        return;
                    }
                }
            });
        }
        Ok(Self { rx })
    }

    /// Interrupts sent through the returned sender (tests).
    pub fn channel() -> (mpsc::Sender<Signal>, Self) {
        let (tx, rx) = mpsc::channel(8);
        (tx, Self { rx })
    }

    /// The next signal; never resolves once every sender is gone.
    async fn next(&mut self) -> Signal {
        match self.rx.recv().await {
            Some(s) => s,
            None => std::future::pending().await,
        }
    }
}

/// Run one-shot mode: start the agent from `cfg` (whose data dir and socket should
/// be in `workspace`), wait at most `timeout` for attestation and the entries,
/// perform `action`, stop the agent and remove `workspace`. Returns the exit status
/// for the process: 0 after writing, or the command's.
pub async fn run(
    cfg: AgentConfig,
    action: Action,
    timeout: Duration,
    workspace: Workspace,
    mut interrupts: Interrupts,
) -> Result<u8, OneshotError> {
    let deadline = Instant::now() + timeout;
    let agent = crate::start(cfg).await?;
    let outcome = async {
        tokio::select! {
            r = wait_synced(&agent.state, deadline, timeout) => r?,
            s = interrupts.next() => return Err(OneshotError::Interrupted(s.as_raw())),
        }
        match action {
            Action::Write { dir, jwt_audiences } => {
                let found = tokio::select! {
                    r = matching_svids(&agent, &jwt_audiences, deadline, timeout) => r?,
                    s = interrupts.next() => return Err(OneshotError::Interrupted(s.as_raw())),
                };
                for line in write_svids(&dir, &found)? {
                    println!("{line}");
                }
                Ok(0)
            }
            Action::Run { command } => {
                wait_minted(&agent.state, deadline).await;
                run_command(&agent, &command, &mut interrupts).await
            }
        }
    }
    .await;
    let stopped = agent.shutdown().await;
    drop(workspace);
    let code = outcome?;
    if let Err(e) = stopped {
        tracing::warn!(error = %e, "the one-shot agent stopped with an error");
    }
    Ok(code)
}

/// Whether a session failure will not go away by retrying.
fn is_final(f: &SessionFailure) -> bool {
    use tonic::Code;
    !matches!(
        f.code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
    )
}

fn final_failure(p: &Progress) -> Option<OneshotError> {
    let f = p.last_failure.as_ref().filter(|f| is_final(f))?;
    Some(if f.attesting {
        OneshotError::Attestation {
            code: f.code,
            message: f.message.clone(),
        }
    } else {
        OneshotError::Refused {
            code: f.code,
            message: f.message.clone(),
        }
    })
}

/// Until the first entry-stream update is applied (and its SVIDs minted); fails at
/// once on a failure retrying will not cure (a refused token), else at `deadline`.
async fn wait_synced(
    state: &AgentState,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), OneshotError> {
    let mut rx = state.progress();
    loop {
        {
            let p = rx.borrow_and_update();
            if p.updates > 0 {
                return Ok(());
            }
            if let Some(e) = final_failure(&p) {
                return Err(e);
            }
        }
        let expired = tokio::select! {
            r = rx.changed() => r.is_err(),
            _ = tokio::time::sleep_until(deadline) => true,
        };
        if expired {
            let p = rx.borrow();
            return Err(OneshotError::NotSynced {
                secs: timeout.as_secs(),
                last: p
                    .last_failure
                    .as_ref()
                    .map(|f| format!("{} ({:?})", f.message, f.code)),
            });
        }
    }
}

/// Until every entry has its SVID, at most until `deadline` (a command started
/// earlier would still get them: the Workload API waits for minting).
async fn wait_minted(state: &AgentState, deadline: Instant) {
    let mut changes = state.subscribe();
    loop {
        changes.mark_unchanged();
        if state.entries().iter().all(|e| state.svid(&e.id).is_some()) {
            return;
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!("not every entry has its X509-SVID yet; starting the command anyway");
                return;
            }
        }
    }
}

/// The kernel's credentials for this process, as a Workload API caller would
/// present them (read from a socket pair, like the agent's socket does).
fn own_credentials() -> Result<PeerInfo, OneshotError> {
    let (a, _b) = tokio::net::UnixStream::pair().map_err(|e| {
        OneshotError::Workload(format!("cannot read this process's credentials: {e}"))
    })?;
    let cred = a.peer_cred().map_err(|e| {
        OneshotError::Workload(format!("cannot read this process's credentials: {e}"))
    })?;
    Ok(PeerInfo {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

/// A Workload API request from this process.
fn own_request<T>(msg: T, me: PeerInfo) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req.extensions_mut().insert(me);
    req
}

/// One identity of this process, as written by [`write_svids`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub spiffe_id: String,
    /// Leaf first, then intermediates (DER).
    pub chain: Vec<Vec<u8>>,
    /// PKCS #8 DER.
    pub key_pkcs8: Vec<u8>,
    /// The trust domain's X.509 authorities (DER).
    pub bundle: Vec<Vec<u8>>,
    /// One JWT-SVID per requested audience, in the order asked.
    pub jwts: Vec<String>,
    /// Federated trust domains' X.509 authorities (DER), by trust domain name.
    pub federated: Vec<(String, Vec<Vec<u8>>)>,
}

fn split(der: &[u8]) -> Result<Vec<Vec<u8>>, OneshotError> {
    lanyard_core::x509::split_der_chain(der).map_err(|e| OneshotError::BadSvid(e.to_string()))
}

/// The SVIDs the Workload API serves this process, in its order, waiting until
/// `deadline` for an entry to match.
async fn matching_svids(
    agent: &RunningAgent,
    audiences: &[String],
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<Found>, OneshotError> {
    let me = own_credentials()?;
    let svc = &agent.workload;
    let mut changes = agent.state.subscribe();
    let response = loop {
        changes.mark_unchanged();
        if let Some(e) = final_failure(&agent.state.progress().borrow()) {
            return Err(e);
        }
        match svc
            .fetch_x509svid(own_request(pb::X509svidRequest {}, me))
            .await
        {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(Some(Ok(msg))) => break msg,
                    Ok(Some(Err(s)))
                        if matches!(
                            s.code(),
                            tonic::Code::PermissionDenied | tonic::Code::Unavailable
                        ) => {}
                    Ok(Some(Err(s))) => {
                        return Err(OneshotError::Workload(s.message().to_string()));
                    }
                    Ok(None) | Err(_) => {}
                }
            }
            Err(s) if s.code() == tonic::Code::PermissionDenied => {}
            Err(s) => return Err(OneshotError::Workload(s.message().to_string())),
        }
        let expired = tokio::select! {
            r = changes.changed() => r.is_err(),
            _ = tokio::time::sleep(Duration::from_millis(250)) => false,
            _ = tokio::time::sleep_until(deadline) => true,
        };
        if expired || Instant::now() >= deadline {
            return Err(no_entry(agent, me, timeout).await);
        }
    };
    let mut federated = Vec::new();
    for (td, der) in &response.federated_bundles {
        let td = td.strip_prefix("spiffe://").unwrap_or(td);
        // A trust domain name is also a safe file name; anything else is skipped.
        if lanyard_core::TrustDomain::new(td).is_ok() {
            federated.push((td.to_string(), split(der)?));
        }
    }
    federated.sort();
    let mut found = Vec::new();
    for svid in response.svids {
        found.push(Found {
            chain: split(&svid.x509_svid)?,
            bundle: split(&svid.bundle)?,
            key_pkcs8: svid.x509_svid_key,
            spiffe_id: svid.spiffe_id,
            jwts: Vec::new(),
            federated: federated.clone(),
        });
    }
    for audience in audiences {
        let resp = svc
            .fetch_jwtsvid(own_request(
                pb::JwtsvidRequest {
                    audience: vec![audience.clone()],
                    spiffe_id: String::new(),
                },
                me,
            ))
            .await
            .map_err(|s| {
                OneshotError::Workload(format!(
                    "no JWT-SVID for audience {audience:?}: {}",
                    s.message()
                ))
            })?
            .into_inner();
        let mut tokens = resp.svids;
        for f in &mut found {
            let i = tokens
                .iter()
                .position(|t| t.spiffe_id == f.spiffe_id)
                .ok_or_else(|| {
                    OneshotError::Workload(format!(
                        "no JWT-SVID for {} and audience {audience:?}",
                        f.spiffe_id
                    ))
                })?;
            f.jwts.push(tokens.remove(i).svid);
        }
    }
    Ok(found)
}

/// The error for "nothing matched": the agent ID and this process's selectors.
async fn no_entry(agent: &RunningAgent, me: PeerInfo, timeout: Duration) -> OneshotError {
    let selectors = match me.pid {
        Some(pid) => agent
            .workload
            .selectors(&PeerCredentials {
                pid,
                uid: me.uid,
                gid: me.gid,
            })
            .await
            .map(|s| {
                s.iter()
                    .map(Selector::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|e| format!("(workload attestation failed: {e})")),
        None => "(the pid is unknown)".to_string(),
    };
    let agent_id = agent
        .state
        .progress()
        .borrow()
        .agent_id
        .as_ref()
        .map_or_else(|| "(not attested)".to_string(), SpiffeId::to_string);
    OneshotError::NoEntry {
        secs: timeout.as_secs(),
        agent: agent_id,
        entries: agent.state.entries().len(),
        selectors,
    }
}

/// The file a JWT-SVID for the `n`-th `--jwt-audience` (from 0) is written to.
pub fn jwt_file_name(n: usize) -> String {
    format!("jwt_svid.{n}.token")
}

fn pem_chain(tag: &str, ders: &[Vec<u8>]) -> String {
    ders.iter()
        .map(|d| pem::encode(&pem::Pem::new(tag, d.clone())))
        .collect()
}

/// Write a public file (mode 0644) atomically: a temporary sibling renamed over it.
fn write_public(path: &Path, data: &[u8]) -> Result<(), OneshotError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("pem.tmp");
    let err = |action, p: &Path| {
        let p = p.to_path_buf();
        move |source| OneshotError::Write {
            action,
            path: p,
            source,
        }
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(err("cannot write", &tmp))?;
    f.write_all(data).map_err(err("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(err("cannot replace", path))
}

fn write_one(dir: &Path, f: &Found) -> Result<(), OneshotError> {
    write_public(
        &dir.join("svid.pem"),
        pem_chain("CERTIFICATE", &f.chain).as_bytes(),
    )?;
    // 0600 from creation: a temporary sibling opened with that mode, then renamed.
    lanyard_fs::write_private(
        &dir.join("svid.key"),
        pem::encode(&pem::Pem::new("PRIVATE KEY", f.key_pkcs8.clone())).as_bytes(),
    )?;
    write_public(
        &dir.join("bundle.pem"),
        pem_chain("CERTIFICATE", &f.bundle).as_bytes(),
    )?;
    for (n, token) in f.jwts.iter().enumerate() {
        lanyard_fs::write_private(&dir.join(jwt_file_name(n)), token.as_bytes())?;
    }
    if !f.federated.is_empty() {
        let fed = dir.join("federated");
        create_dir(&fed)?;
        for (td, certs) in &f.federated {
            write_public(
                &fed.join(format!("{td}.pem")),
                pem_chain("CERTIFICATE", certs).as_bytes(),
            )?;
        }
    }
    Ok(())
}

/// Remove what an earlier run wrote to `svids/<i>/` for i ≥ `keep` (only the
/// files this mode writes; a directory holding anything else stays).
fn remove_stale(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir.join("svids")) else {
        return;
    };
    for e in entries.flatten() {
        let stale = e
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|i| i >= keep);
        if !stale {
            continue;
        }
        let d = e.path();
        for name in ["svid.pem", "svid.key", "bundle.pem"] {
            let _ = std::fs::remove_file(d.join(name));
        }
        if let Ok(files) = std::fs::read_dir(&d) {
            for f in files.flatten() {
                let n = f.file_name();
                let n = n.to_string_lossy();
                if n.starts_with("jwt_svid.") && n.ends_with(".token") {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&d);
    }
    let _ = std::fs::remove_dir(dir.join("svids"));
}

fn create_dir(dir: &Path) -> Result<(), OneshotError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| OneshotError::Write {
            action: "cannot create",
            path: dir.to_path_buf(),
            source,
        })
}

/// Write `found` to `dir` (created 0700 if missing): the first identity as
/// `svid.pem` (leaf then intermediates, 0644), `svid.key` (PKCS #8 PEM, 0600),
/// `bundle.pem` (the trust domain's X.509 authorities, 0644) and
/// `jwt_svid.<n>.token` (0600) for the n-th audience; each further identity the
/// same way in `svids/<i>/` (i = 1, 2, … in Workload API order); federated
/// bundles as `federated/<trust domain>.pem`. What an earlier run left in
/// `svids/<i>/` beyond these is removed. Returns one line per identity saying
/// where it went.
pub fn write_svids(dir: &Path, found: &[Found]) -> Result<Vec<String>, OneshotError> {
    create_dir(dir)?;
    remove_stale(dir, found.len().max(1));
    let mut lines = Vec::new();
    for (i, f) in found.iter().enumerate() {
        let target = if i == 0 {
            dir.to_path_buf()
        } else {
            dir.join("svids").join(i.to_string())
        };
        create_dir(&target)?;
        write_one(&target, f)?;
        lines.push(format!(
            "wrote {} to {}",
            f.spiffe_id,
            target.join("svid.pem").display()
        ));
    }
    Ok(lines)
}

/// Exit status for a child's status: its code, or 128 + the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
        (None, Some(s)) => u8::try_from((128 + s) & 0xff).unwrap_or(1),
        (None, None) => 1,
    }
}

/// Run `command` with `SPIFFE_ENDPOINT_SOCKET` pointing at the agent's socket, its
/// standard streams inherited. Interrupts are forwarded to it; if it has not exited
/// [`KILL_GRACE`] after the first, it is killed. Returns its exit status.
///
/// Without a terminal (a CI job) the command leads a process group of its own and
/// interrupts (and the kill) go to the whole group, so what it started stops with
/// it. On a terminal it stays in the terminal's foreground group, where the
/// terminal's own interrupts already reach it and everything it started (and where
/// an interactive command may read the terminal).
pub async fn run_command(
    agent: &RunningAgent,
    command: &[OsString],
    interrupts: &mut Interrupts,
) -> Result<u8, OneshotError> {
    use std::io::IsTerminal;
    let own_group = !std::io::stdin().is_terminal();
    run_command_with(agent, command, interrupts, KILL_GRACE, own_group).await
}

async fn run_command_with(
    agent: &RunningAgent,
    command: &[OsString],
    interrupts: &mut Interrupts,
    kill_grace: Duration,
    own_group: bool,
) -> Result<u8, OneshotError> {
    let Some((program, args)) = command.split_first() else {
        return Err(OneshotError::Spawn {
            program: String::new(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no command given after --",
            ),
        });
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", agent.socket_path.display()),
        )
        .kill_on_drop(true);
    if own_group {
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().map_err(|source| OneshotError::Spawn {
        program: program.to_string_lossy().into_owned(),
        source,
    })?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw);
    let mut kill_at: Option<Instant> = None;
    loop {
        let grace = async {
            match kill_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|source| OneshotError::Spawn {
                    program: program.to_string_lossy().into_owned(),
                    source,
                })?;
                return Ok(exit_code(status));
            }
            sig = interrupts.next() => {
                if let Some(pid) = pid {
                    let _ = if own_group {
                        rustix::process::kill_process_group(pid, sig)
                    } else {
                        rustix::process::kill_process(pid, sig)
                    };
                }
                kill_at.get_or_insert_with(|| Instant::now() + kill_grace);
            }
            () = grace => {
                tracing::warn!("the command did not exit after the signal; killing it");
                if let (true, Some(pid)) = (own_group, pid) {
                    let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                }
                let _ = child.start_kill();
                kill_at = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn found(id: &str, jwts: &[&str]) -> Found {
        Found {
            spiffe_id: id.into(),
            chain: vec![b"leaf".to_vec(), b"intermediate".to_vec()],
            key_pkcs8: b"key".to_vec(),
            bundle: vec![b"root".to_vec()],
            jwts: jwts.iter().map(|s| s.to_string()).collect(),
            federated: Vec::new(),
        }
    }

    #[test]
    fn federated_bundles_are_written_and_stale_identities_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        let two = [
            found("spiffe://example.org/ci/a", &[]),
            found("spiffe://example.org/ci/b", &[]),
            found("spiffe://example.org/ci/c", &["t"]),
        ];
        write_svids(&dir, &two).unwrap();
        assert!(dir.join("svids/2/jwt_svid.0.token").exists());
        std::fs::write(dir.join("svids/2/mine.txt"), "not ours").unwrap();
        let mut one = found("spiffe://example.org/ci/a", &[]);
        one.federated = vec![("partner.example".into(), vec![b"p-root".to_vec()])];
        write_svids(&dir, &[one]).unwrap();
        assert!(!dir.join("svids/1").exists(), "a stale identity is removed");
        assert!(!dir.join("svids/2/svid.key").exists());
        assert!(dir.join("svids/2/mine.txt").exists(), "other files stay");
        let fed =
            pem::parse(std::fs::read(dir.join("federated/partner.example.pem")).unwrap()).unwrap();
        assert_eq!(fed.contents(), b"p-root");
    }

    #[test]
    fn svids_are_written_with_the_key_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        // A key left world-readable by something else is replaced, not reused.
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("svid.key"), "old").unwrap();
        std::fs::set_permissions(dir.join("svid.key"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let lines = write_svids(
            &dir,
            &[
                found("spiffe://example.org/ci/a", &["t.a.0", "t.a.1"]),
                found("spiffe://example.org/ci/b", &["t.b.0", "t.b.1"]),
            ],
        )
        .unwrap();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[1].contains("spiffe://example.org/ci/b") && lines[1].contains("svids/1/svid.pem")
        );
        let pems = pem::parse_many(std::fs::read(dir.join("svid.pem")).unwrap()).unwrap();
        let contents: Vec<&[u8]> = pems.iter().map(pem::Pem::contents).collect();
        assert_eq!(contents, [&b"leaf"[..], &b"intermediate"[..]], "leaf first");
        let key = pem::parse(std::fs::read(dir.join("svid.key")).unwrap()).unwrap();
        assert_eq!((key.tag(), key.contents()), ("PRIVATE KEY", &b"key"[..]));
        assert_eq!(mode(&dir.join("svid.key")), 0o600);
        assert_eq!(mode(&dir.join("svid.pem")), 0o644);
        assert_eq!(mode(&dir.join("bundle.pem")), 0o644);
        assert_eq!(
            std::fs::read_to_string(dir.join("jwt_svid.1.token")).unwrap(),
            "t.a.1"
        );
        assert_eq!(mode(&dir.join("jwt_svid.0.token")), 0o600);
        let second = dir.join("svids/1");
        assert_eq!(
            std::fs::read_to_string(second.join("jwt_svid.0.token")).unwrap(),
            "t.b.0"
        );
        assert_eq!(mode(&second.join("svid.key")), 0o600);
        assert_eq!(mode(&second), 0o700);
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
        // Killed by SIGTERM (15).
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(15)), 143);
    }

    #[test]
    fn only_failures_retrying_cannot_cure_end_one_shot_mode() {
        let f = |code, attesting| SessionFailure {
            code,
            message: "m".into(),
            attesting,
        };
        let p = |failure| Progress {
            last_failure: Some(failure),
            ..Progress::default()
        };
        assert!(final_failure(&p(f(tonic::Code::Unavailable, true))).is_none());
        assert!(matches!(
            final_failure(&p(f(tonic::Code::PermissionDenied, true))),
            Some(OneshotError::Attestation { .. })
        ));
        assert!(matches!(
            final_failure(&p(f(tonic::Code::FailedPrecondition, true))),
            Some(OneshotError::Attestation { .. })
        ));
        assert!(matches!(
            final_failure(&p(f(tonic::Code::PermissionDenied, false))),
            Some(OneshotError::Refused { .. })
        ));
    }

    /// An agent that cannot reach any server, serving its socket in `ws`.
    async fn lonely_agent(ws: &Workspace) -> RunningAgent {
        let cfg = AgentConfig::load(&crate::Overrides {
            trust_domain: Some("example.org".into()),
            server_address: Some("127.0.0.1:1".into()),
            data_dir: Some(ws.data_dir()),
            socket_path: Some(ws.socket_path()),
            insecure_bootstrap: true,
            join_token: Some("unused".into()),
            ..crate::Overrides::default()
        })
        .unwrap();
        crate::start(cfg).await.unwrap()
    }

    #[tokio::test]
    async fn a_command_gets_the_socket_and_its_exit_status_is_passed_on() {
        let ws = Workspace::new().unwrap();
        let root = ws.path().to_path_buf();
        assert_eq!(mode(&root), 0o700);
        let agent = lonely_agent(&ws).await;
        let (_tx, mut interrupts) = Interrupts::channel();
        let marker = root.join("seen");
        let script = format!(
            "test \"$SPIFFE_ENDPOINT_SOCKET\" = \"unix://{}\" && test -S \"${{SPIFFE_ENDPOINT_SOCKET#unix://}}\" && touch {} && exit 7",
            ws.socket_path().display(),
            marker.display()
        );
        let code = run_command(
            &agent,
            &["sh".into(), "-c".into(), script.into()],
            &mut interrupts,
        )
        .await
        .unwrap();
        assert_eq!(code, 7);
        assert!(marker.exists(), "the command saw the socket");
        agent.shutdown().await.unwrap();
        assert!(!ws.socket_path().exists(), "the socket is removed");
        drop(ws);
        assert!(!root.exists(), "the temporary directory is removed");
    }

    #[tokio::test]
    async fn interrupts_are_forwarded_and_a_stubborn_command_is_killed() {
        let ws = Workspace::new().unwrap();
        let agent = lonely_agent(&ws).await;
        let (tx, mut interrupts) = Interrupts::channel();
        let ready = ws.path().join("ready");
        let script = format!(
            "trap 'exit 42' TERM; touch {}; while :; do sleep 0.05; done",
            ready.display()
        );
        let command: Vec<OsString> = vec!["sh".into(), "-c".into(), script.into()];
        let run = run_command(&agent, &command, &mut interrupts);
        let send = async {
            while !ready.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tx.send(Signal::TERM).await.unwrap();
        };
        let (code, ()) = tokio::join!(run, send);
        assert_eq!(code.unwrap(), 42, "the command's TERM handler ran");

        let _ = std::fs::remove_file(&ready);
        let script = format!(
            "trap '' TERM; touch {}; while :; do sleep 0.05; done",
            ready.display()
        );
        let command: Vec<OsString> = vec!["sh".into(), "-c".into(), script.into()];
        let run = run_command_with(
            &agent,
            &command,
            &mut interrupts,
            Duration::from_millis(300),
            true,
        );
        let send = async {
            while !ready.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tx.send(Signal::TERM).await.unwrap();
        };
        let (code, ()) = tokio::join!(run, send);
        assert_eq!(code.unwrap(), 128 + 9, "killed after the grace period");
        // What the command started is interrupted with it (its own process group).
        let _ = std::fs::remove_file(&ready);
        let child_pid = ws.path().join("child.pid");
        let script = format!(
            "sleep 30 & echo $! > {}; touch {}; wait",
            child_pid.display(),
            ready.display()
        );
        let command: Vec<OsString> = vec!["sh".into(), "-c".into(), script.into()];
        let run = run_command_with(&agent, &command, &mut interrupts, KILL_GRACE, true);
        let send = async {
            while !ready.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tx.send(Signal::TERM).await.unwrap();
        };
        let (code, ()) = tokio::join!(run, send);
        assert_eq!(code.unwrap(), 128 + 15);
        let sleeper: i32 = std::fs::read_to_string(&child_pid)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = async {
            for _ in 0..100 {
                let alive = std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
                    .is_ok_and(|s| !s.contains(") Z "));
                if !alive {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        };
        assert!(gone.await, "the command's own child was interrupted too");
        let missing = run_command(&agent, &["/nonexistent/cmd".into()], &mut interrupts)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("cannot run \"/nonexistent/cmd\""),
            "{missing}"
        );
        agent.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn an_agent_that_never_attests_fails_at_the_timeout_naming_the_last_error() {
        let ws = Workspace::new().unwrap();
        let root = ws.path().to_path_buf();
        let cfg = AgentConfig::load(&crate::Overrides {
            trust_domain: Some("example.org".into()),
            server_address: Some("127.0.0.1:1".into()),
            data_dir: Some(ws.data_dir()),
            socket_path: Some(ws.socket_path()),
            insecure_bootstrap: true,
            join_token: Some("unused".into()),
            ..crate::Overrides::default()
        })
        .unwrap();
        let (_tx, interrupts) = Interrupts::channel();
        let out = root.join("out");
        let e = run(
            cfg,
            Action::Write {
                dir: out.clone(),
                jwt_audiences: vec![],
            },
            Duration::from_secs(1),
            ws,
            interrupts,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("did not attest") && e.contains("last error"),
            "{e}"
        );
        assert!(!root.exists(), "the temporary directory is removed");
    }
}
