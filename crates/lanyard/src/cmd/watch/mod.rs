//! `lanyard svid watch --write DIR`: SVIDs as files for software that cannot speak
//! SPIFFE (the job spiffe-helper does for SPIRE users).
//!
//! It streams FetchX509SVID from the Workload API and, on the first SVID and on
//! every rotation or bundle change, writes the chain, key and bundle (and, when
//! asked, a combined key+chain file and a PKCS #12 archive) atomically
//! ([`files::write_atomic`]), then runs the reload hook ([`hook`]): `--exec CMD`,
//! `--signal SIG --pid-file F`, or — with `-- CMD…` — it supervises the program,
//! starting it after the first write and signalling it on each later one.
//! JWT-SVIDs for `--jwt-audience` go to files too, refreshed at half-life
//! ([`timing`]). When the agent goes away the files stay and the helper reconnects
//! with backoff.

pub mod files;
pub mod hook;
pub mod pkcs12;
pub mod timing;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lanyard_proto::workload as pb;
use rustix::process::{Pid, Signal};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use files::{FileNames, Material};

/// How long the supervised program has to exit after a forwarded SIGTERM/SIGINT
/// before it is killed.
pub const KILL_GRACE: Duration = Duration::from_secs(10);

/// Why `lanyard svid watch` cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The command line asks for something impossible.
    #[error("{0}")]
    Usage(String),
    #[error("{action} {}: {source}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The Workload API's answer cannot be written as asked.
    #[error("{0}")]
    BadAnswer(String),
    /// A reload hook failed (logged; the helper goes on).
    #[error("{0}")]
    Hook(String),
    #[error("cannot run the program {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch for signals: {0}")]
    Signals(std::io::Error),
}

/// Flags of `lanyard svid watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// The Workload API (unix:///path or tcp://ip:port); default SPIFFE_ENDPOINT_SOCKET.
    #[arg(long)]
    pub socket: Option<String>,
    /// Directory the files are written to (created 0755 if missing).
    #[arg(long, value_name = "DIR")]
    pub write: PathBuf,
    /// Certificate chain, leaf first (PEM, 0644).
    #[arg(long, value_name = "NAME", default_value = files::CERT_FILE)]
    pub cert_file: String,
    /// Private key (PKCS #8 PEM, 0600).
    #[arg(long, value_name = "NAME", default_value = files::KEY_FILE)]
    pub key_file: String,
    /// Trust bundle: the CA certificates of the SVID's trust domain (PEM, 0644).
    #[arg(long, value_name = "NAME", default_value = files::BUNDLE_FILE)]
    pub bundle_file: String,
    /// Also write the key followed by the chain into one file (0600), e.g. for HAProxy.
    #[arg(long)]
    pub combined: bool,
    /// Name of the --combined file.
    #[arg(long, value_name = "NAME", default_value = files::COMBINED_FILE)]
    pub combined_file: String,
    /// Append the CA certificates of federated trust domains to the bundle file.
    #[arg(long)]
    pub include_federated: bool,
    /// Also write a PKCS #12 archive (key, chain, bundle; 0600) with this name.
    #[arg(long, value_name = "NAME", requires = "pkcs12_password_file")]
    pub pkcs12: Option<String>,
    /// File whose first line is the PKCS #12 password.
    #[arg(long, value_name = "FILE", requires = "pkcs12")]
    pub pkcs12_password_file: Option<PathBuf>,
    /// Write a JWT-SVID for this audience too, refreshed at half-life (repeatable).
    #[arg(long = "jwt-audience", value_name = "AUD")]
    pub jwt_audience: Vec<String>,
    /// File name of the JWT-SVID for the n-th --jwt-audience (repeatable, in order;
    /// default jwt_svid.<n>.token, 0600).
    #[arg(long = "jwt-file", value_name = "NAME")]
    pub jwt_file: Vec<String>,
    /// Write this identity when the workload has several (default: the first).
    #[arg(long, value_name = "SPIFFE_ID")]
    pub spiffe_id: Option<String>,
    /// Run this command after each write (split into words, no shell), e.g. "nginx -s reload".
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Send this signal after each rotation: to the process in --pid-file, or to the
    /// program after -- (default SIGHUP).
    #[arg(long, value_name = "SIG")]
    pub signal: Option<String>,
    /// File holding the PID of the process to signal (e.g. nginx's master).
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// A program to supervise: started after the first write, signalled on renewal;
    /// the helper exits with its status.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Who is signalled after a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    None,
    PidFile(PathBuf),
    /// The program after `--`.
    Child,
}

/// The checked form of [`WatchArgs`].
#[derive(Debug, Clone)]
pub struct Plan {
    pub socket: String,
    pub dir: PathBuf,
    pub names: FileNames,
    pub include_federated: bool,
    pub pkcs12_password: Option<String>,
    pub jwt_audiences: Vec<String>,
    pub spiffe_id: Option<String>,
    pub exec: Option<Vec<String>>,
    pub signal: Signal,
    pub target: Target,
    pub command: Vec<OsString>,
}

impl Plan {
    /// Check the flags; `env_socket` is `SPIFFE_ENDPOINT_SOCKET`. Reads the PKCS #12
    /// password file.
    pub fn new(a: WatchArgs, env_socket: Option<String>) -> Result<Self, WatchError> {
        let socket = a.socket.or(env_socket).ok_or_else(|| {
            WatchError::Usage(
                "no Workload API address: pass --socket unix:///path/agent.sock or set SPIFFE_ENDPOINT_SOCKET".into(),
            )
        })?;
        let names = FileNames::new(
            a.cert_file,
            a.key_file,
            a.bundle_file,
            a.combined.then_some(a.combined_file),
            a.pkcs12,
            a.jwt_file,
            a.jwt_audience.len(),
        )?;
        let pkcs12_password = match (&names.pkcs12, &a.pkcs12_password_file) {
            (Some(_), Some(f)) => Some(pkcs12::read_password(f)?),
            (Some(_), None) => {
                return Err(WatchError::Usage(
                    "--pkcs12 needs --pkcs12-password-file FILE (the archive's password on its first line)".into(),
                ));
            }
            (None, _) => None,
        };
        if let Some(aud) = a.jwt_audience.iter().find(|a| a.is_empty()) {
            return Err(WatchError::Usage(format!(
                "--jwt-audience {aud:?}: an audience cannot be empty"
            )));
        }
        let exec = a.exec.as_deref().map(hook::split_command).transpose()?;
        let signal = a.signal.as_deref().map(hook::parse_signal).transpose()?;
        let target = match (a.pid_file, a.command.is_empty()) {
            (Some(_), false) => {
                return Err(WatchError::Usage(
                    "--pid-file and -- CMD both name a process to signal; use --pid-file for a program started elsewhere, or -- CMD to have the helper start it".into(),
                ));
            }
            (Some(p), true) => Target::PidFile(p),
            (None, false) => Target::Child,
            (None, true) => {
                if let Some(s) = signal {
                    return Err(WatchError::Usage(format!(
                        "--signal {} needs a process to signal: add --pid-file FILE, or run the program under the helper with -- CMD",
                        hook::signal_name(s)
                    )));
                }
                Target::None
            }
        };
        Ok(Self {
            socket,
            dir: a.write,
            names,
            include_federated: a.include_federated,
            pkcs12_password,
            jwt_audiences: a.jwt_audience,
            spiffe_id: a.spiffe_id,
            exec,
            signal: signal.unwrap_or(Signal::HUP),
            target,
            command: a.command,
        })
    }
}

/// What the watch tasks report to the main loop.
enum Event {
    X509(Box<Material>),
    /// The JWT-SVID for the n-th audience was written.
    Jwt(usize),
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("lanyard svid watch: {msg}");
}

fn status(e: tonic::Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

/// The material of the identity to write from one FetchX509SVID answer.
pub fn material(
    resp: &pb::X509svidResponse,
    want: Option<&str>,
    include_federated: bool,
) -> Result<Material, WatchError> {
    let svid = match want {
        Some(id) => resp.svids.iter().find(|s| s.spiffe_id == id).ok_or_else(|| {
            WatchError::BadAnswer(format!(
                "the Workload API serves this workload [{}] but not --spiffe-id {id}; check the entries for this workload's selectors",
                resp.svids
                    .iter()
                    .map(|s| s.spiffe_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?,
        None => resp.svids.first().ok_or_else(|| {
            WatchError::BadAnswer("the Workload API answered with no SVID".into())
        })?,
    };
    let chain = lanyard_core::x509::split_der_chain(&svid.x509_svid)
        .map_err(|e| WatchError::BadAnswer(format!("the SVID of {}: {e}", svid.spiffe_id)))?;
    if chain.is_empty() || svid.x509_svid_key.is_empty() {
        return Err(WatchError::BadAnswer(format!(
            "the SVID of {} has no certificate or no key",
            svid.spiffe_id
        )));
    }
    let bundle = files::bundle_certs(
        &svid.bundle,
        include_federated.then_some(&resp.federated_bundles),
    )?;
    Ok(Material {
        spiffe_id: svid.spiffe_id.clone(),
        chain,
        key: svid.x509_svid_key.clone(),
        bundle,
    })
}

/// Stream X.509 SVIDs to `tx`, reconnecting with backoff; never returns while the
/// main loop listens.
async fn watch_x509(plan: Plan, tx: mpsc::Sender<Event>) {
    let mut attempt = 0u32;
    loop {
        let e = match stream_x509(&plan, &tx, &mut attempt).await {
            Ok(()) => "the Workload API ended the stream".to_string(),
            Err(e) => e,
        };
        if tx.is_closed() {
            return;
        }
        let wait = timing::backoff(attempt);
        attempt = attempt.saturating_add(1);
        log(format_args!(
            "{e}; the files written so far stay; retrying in {} s",
            wait.as_secs()
        ));
        tokio::time::sleep(wait).await;
    }
}

async fn stream_x509(
    plan: &Plan,
    tx: &mpsc::Sender<Event>,
    attempt: &mut u32,
) -> Result<(), String> {
    let mut c = super::workload::connect(Some(&plan.socket)).await?;
    let mut stream = c
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .map_err(status)?
        .into_inner();
    while let Some(msg) = stream.next().await {
        let resp = msg.map_err(status)?;
        let m = material(&resp, plan.spiffe_id.as_deref(), plan.include_federated)
            .map_err(|e| e.to_string())?;
        *attempt = 0;
        if tx.send(Event::X509(Box::new(m))).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Keep the JWT-SVID for audience `n` fresh in its file.
async fn watch_jwt(plan: Plan, n: usize, tx: mpsc::Sender<Event>) {
    let audience = plan.jwt_audiences.get(n).cloned().unwrap_or_default();
    let name = plan.names.jwt.get(n).cloned().unwrap_or_default();
    let mut attempt = 0u32;
    loop {
        let wait = match fetch_jwt(&plan, &audience).await {
            Ok((token, spiffe_id)) => {
                match files::write_atomic(&plan.dir, &name, token.as_bytes(), files::PRIVATE_MODE) {
                    Ok(()) => {
                        attempt = 0;
                        if tx.send(Event::Jwt(n)).await.is_err() {
                            return;
                        }
                        let parsed = lanyard_core::jwt::JwtSvid::parse_insecure(&token).ok();
                        let now = lanyard_core::Clock::unix_seconds(&lanyard_core::SystemClock);
                        let wait = match parsed {
                            Some(p) => timing::jwt_refresh_in(now, p.issued_at(), p.expiry()),
                            None => timing::MIN_REFRESH.max(Duration::from_secs(60)),
                        };
                        log(format_args!(
                            "wrote the JWT-SVID of {spiffe_id} for audience {audience:?} to {}; next refresh in {} s",
                            plan.dir.join(&name).display(),
                            wait.as_secs()
                        ));
                        wait
                    }
                    Err(e) => {
                        let wait = timing::backoff(attempt);
                        attempt = attempt.saturating_add(1);
                        log(format_args!("{e}; retrying in {} s", wait.as_secs()));
                        wait
                    }
                }
            }
            Err(e) => {
                let wait = timing::backoff(attempt);
                attempt = attempt.saturating_add(1);
                log(format_args!(
                    "no JWT-SVID for audience {audience:?}: {e}; the file written last stays; retrying in {} s",
                    wait.as_secs()
                ));
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn fetch_jwt(plan: &Plan, audience: &str) -> Result<(String, String), String> {
    let mut c = super::workload::connect(Some(&plan.socket)).await?;
    let r = c
        .fetch_jwtsvid(pb::JwtsvidRequest {
            audience: vec![audience.to_string()],
            spiffe_id: plan.spiffe_id.clone().unwrap_or_default(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let s = r
        .svids
        .into_iter()
        .next()
        .ok_or("the Workload API answered with no JWT-SVID")?;
    Ok((s.svid, s.spiffe_id))
}

/// Write every file for `m`.
fn write_files(plan: &Plan, m: &Material) -> Result<(), WatchError> {
    for f in files::render(&plan.names, m) {
        files::write_atomic(&plan.dir, &f.name, &f.data, f.mode)?;
    }
    if let (Some(name), Some(pw)) = (&plan.names.pkcs12, &plan.pkcs12_password) {
        let der = pkcs12::archive(m, pw)?;
        files::write_atomic(&plan.dir, name, &der, files::PRIVATE_MODE)?;
    }
    Ok(())
}

/// The reload hook after a write: `--exec`, then the signal.
async fn reload(plan: &Plan, first: bool, child: Option<Pid>) {
    if let Some(argv) = &plan.exec {
        match hook::run_exec(argv, &plan.dir).await {
            Ok(()) => log(format_args!("--exec {:?} succeeded", argv.join(" "))),
            Err(e) => log(e),
        }
    }
    let sig = hook::signal_name(plan.signal);
    match &plan.target {
        Target::PidFile(p) => match hook::signal_pid_file(p, plan.signal) {
            Ok(pid) => log(format_args!("sent {sig} to process {pid}")),
            // The program may start after the helper has written its files.
            Err(e) if first => log(format_args!("not signalled yet: {e}")),
            Err(e) => log(e),
        },
        Target::Child => {
            if let Some(pid) = child {
                match rustix::process::kill_process(pid, plan.signal) {
                    Ok(()) => log(format_args!(
                        "sent {sig} to the program (process {})",
                        pid.as_raw_nonzero()
                    )),
                    Err(e) => log(format_args!("cannot send {sig} to the program: {e}")),
                }
            }
        }
        Target::None => {}
    }
}

/// SIGTERM and SIGINT to the helper, as a channel.
fn interrupts() -> Result<mpsc::Receiver<Signal>, WatchError> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = mpsc::channel(8);
    for (kind, sig) in [
        (SignalKind::terminate(), Signal::TERM),
        (SignalKind::interrupt(), Signal::INT),
    ] {
        let mut stream = signal(kind).map_err(WatchError::Signals)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig).await.is_err() {
                    return;
                }
            }
        });
    }
    Ok(rx)
}

fn spawn(command: &[OsString]) -> Result<tokio::process::Child, WatchError> {
    let Some((program, args)) = command.split_first() else {
        return Err(WatchError::Usage("no program after --".into()));
    };
    tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| WatchError::Spawn {
            program: program.to_string_lossy().into_owned(),
            source,
        })
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Run the helper until SIGTERM/SIGINT (exit 0) or, when supervising, until the
/// program exits (its status).
pub async fn run(args: WatchArgs) -> Result<ExitCode, String> {
    let plan =
        Plan::new(args, std::env::var("SPIFFE_ENDPOINT_SOCKET").ok()).map_err(|e| e.to_string())?;
    files::create_dir(&plan.dir).map_err(|e| e.to_string())?;
    let mut signals = interrupts().map_err(|e| e.to_string())?;
    let (tx, mut rx) = mpsc::channel(8);
    tokio::spawn(watch_x509(plan.clone(), tx.clone()));
    for n in 0..plan.jwt_audiences.len() {
        tokio::spawn(watch_jwt(plan.clone(), n, tx.clone()));
    }
    drop(tx);
    log(format_args!(
        "watching {} for SVIDs to write to {}",
        plan.socket,
        plan.dir.display()
    ));
    let mut current: Option<Box<Material>> = None;
    let mut jwt_ready = vec![false; plan.jwt_audiences.len()];
    let mut child: Option<tokio::process::Child> = None;
    let mut child_pid: Option<Pid> = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    loop {
        let waited = async {
            match child.as_mut() {
                Some(c) => c.wait().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(Event::X509(m)) => {
                    if current.as_ref() != Some(&m) {
                        let first = current.is_none();
                        match write_files(&plan, &m) {
                            Ok(()) => {
                                let (serial, not_after) = m.chain.first()
                                    .and_then(|leaf| lanyard_core::x509::summarize(leaf).ok())
                                    .map(|s| (s.serial, s.not_after))
                                    .unwrap_or_default();
                                log(format_args!(
                                    "wrote {} (serial {serial}, expires at {not_after}) to {}",
                                    m.spiffe_id,
                                    plan.dir.display()
                                ));
                                current = Some(m);
                                reload(&plan, first, child_pid).await;
                            }
                            // Nothing written yet: a wrong directory or mode is a
                            // setup error to fix, not something to wait out.
                            Err(e) if first => return Err(e.to_string()),
                            Err(e) => log(format_args!("{e}; the previous files stay")),
                        }
                    }
                }
                Some(Event::Jwt(n)) => {
                    if let Some(r) = jwt_ready.get_mut(n) {
                        *r = true;
                    }
                }
                None => return Err("the Workload API watchers stopped".into()),
            },
            sig = signals.recv() => {
                let sig = sig.unwrap_or(Signal::TERM);
                match child_pid {
                    Some(pid) => {
                        log(format_args!("forwarding {} to the program", hook::signal_name(sig)));
                        let _ = rustix::process::kill_process(pid, sig);
                        kill_at.get_or_insert_with(|| tokio::time::Instant::now() + KILL_GRACE);
                    }
                    None => {
                        log(format_args!("stopping on {}", hook::signal_name(sig)));
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
            status = waited => {
                let status = status.map_err(|e| format!("cannot wait for the program: {e}"))?;
                log(format_args!("the program exited ({status})"));
                return Ok(ExitCode::from(hook::exit_code(status)));
            }
            () = sleep_until(kill_at) => {
                log("the program did not exit after the signal; killing it");
                if let Some(c) = child.as_mut() {
                    let _ = c.start_kill();
                }
                kill_at = None;
            }
        }
        if child.is_none()
            && !plan.command.is_empty()
            && current.is_some()
            && jwt_ready.iter().all(|r| *r)
        {
            let c = spawn(&plan.command).map_err(|e| e.to_string())?;
            child_pid = c
                .id()
                .and_then(|p| i32::try_from(p).ok())
                .and_then(Pid::from_raw);
            log(format_args!(
                "started {:?} (process {})",
                plan.command
                    .iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                child_pid.map(|p| p.as_raw_nonzero().get()).unwrap_or(0)
            ));
            child = Some(c);
        }
    }
}

#[cfg(test)]
mod tests;
