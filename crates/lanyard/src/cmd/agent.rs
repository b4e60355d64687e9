//! `lanyard agent` (run the agent) and `lanyard dev` (server + agent in one process).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use lanyard_agent::{AgentConfig, Overrides};

/// Flags of `lanyard agent` when it runs the agent.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AgentArgs {
    /// TOML configuration file; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The trust domain, e.g. example.org.
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// The server's agent API, host:port (default 127.0.0.1:8081).
    #[arg(long)]
    pub server_address: Option<String>,
    /// Directory for the agent SVID (kept across restarts) and the saved bundle.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Workload API socket (default DATA_DIR/agent.sock).
    #[arg(long)]
    pub socket_path: Option<PathBuf>,
    /// Join token for the first attestation.
    #[arg(long, env = "LANYARD_JOIN_TOKEN")]
    pub join_token: Option<String>,
    /// Trust bundle of the server: SPIFFE bundle JSON or PEM CA certificates.
    #[arg(long)]
    pub trust_bundle: Option<PathBuf>,
    /// Trust the server on first contact without a bundle (insecure; explicit only).
    #[arg(long)]
    pub insecure_bootstrap: bool,
    /// x509pop node certificate (PEM chain).
    #[arg(long)]
    pub x509pop_cert: Option<PathBuf>,
    /// x509pop node key (PEM PKCS#8).
    #[arg(long)]
    pub x509pop_key: Option<PathBuf>,
    /// A file holding a signed OIDC token (a CI job's) for `jwt` node attestation;
    /// read afresh at every attestation.
    #[arg(long)]
    pub jwt_token_file: Option<PathBuf>,
    /// The environment variable holding a signed OIDC token for `jwt` node
    /// attestation (GitLab CI: the name declared under `id_tokens:`).
    #[arg(long, value_name = "VAR")]
    pub jwt_token_env: Option<String>,
    /// Request the `jwt` node attestation token from the platform: `github-actions`
    /// (the job's ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN; needs `permissions: id-token:
    /// write`), `gcp-metadata` (the VM's instance identity token) or `azure-imds`
    /// (the VM's managed-identity token), with --jwt-attestation-audience.
    #[arg(long = "jwt-from", value_name = "SOURCE")]
    pub jwt_token_source: Option<String>,
    /// The audience to request the `jwt` node attestation token for (what the
    /// server's [[jwt_attestor]] expects, e.g. lanyard-server); with --jwt-from.
    #[arg(long = "jwt-attestation-audience", value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// The VM metadata service for --jwt-from gcp-metadata|azure-imds (default
    /// http://metadata.google.internal or http://169.254.169.254).
    #[arg(long, value_name = "URL")]
    pub jwt_metadata_url: Option<String>,
    /// Attest with a Kubernetes projected service-account token (`k8s_psat`), for
    /// this cluster name as configured on the server.
    #[arg(long, value_name = "NAME")]
    pub k8s_psat_cluster: Option<String>,
    /// The projected service-account token file (default
    /// /var/run/secrets/tokens/lanyard-agent); re-read at every attestation.
    #[arg(long, value_name = "FILE")]
    pub k8s_psat_token_file: Option<PathBuf>,
    /// Attest with the EC2 instance identity document (`aws_iid`, via IMDSv2).
    #[arg(long)]
    pub aws_iid: bool,
    /// The instance metadata service (default http://169.254.169.254).
    #[arg(long, value_name = "URL")]
    pub aws_imds_url: Option<String>,
    /// Serve the AuthZEN evaluation API for agent-local decisions on ip:port
    /// (plain HTTP; e.g. 127.0.0.1:8181).
    #[arg(long)]
    pub authz_bind: Option<String>,
    /// Workload attestors to run, in order, comma-separated: unix, k8s, docker,
    /// containerd, systemd (default unix; their settings are the [k8s], [docker],
    /// [containerd] and [systemd] tables of the config file).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub workload_attestors: Option<Vec<String>>,
    /// Where the workload attestors read /proc (default /proc; e.g. /host/proc for
    /// an agent in a container with the host's /proc mounted there).
    #[arg(long, value_name = "DIR")]
    pub proc_root: Option<PathBuf>,
    /// One-shot mode for CI jobs: attest, fetch the SVIDs of the entries that match
    /// the job, then --write them to a directory or run `-- CMD…` with a Workload API
    /// socket; the agent's identity and keys live in a temporary directory removed
    /// at exit (unless --data-dir is given).
    #[arg(long)]
    pub oneshot: bool,
    /// One-shot: write svid.pem, svid.key (0600), bundle.pem and the JWT-SVIDs to DIR
    /// and exit.
    #[arg(
        long,
        value_name = "DIR",
        requires = "oneshot",
        conflicts_with = "command"
    )]
    pub write: Option<PathBuf>,
    /// One-shot with --write: also write a JWT-SVID for this audience (repeatable;
    /// the n-th, from 0, goes to jwt_svid.<n>.token).
    #[arg(long = "jwt-audience", value_name = "AUD", requires = "write")]
    pub jwt_audiences: Vec<String>,
    /// One-shot: how long to wait for attestation, the entries and the SVIDs, e.g.
    /// 30s, 2m, 90 (seconds).
    #[arg(long, value_name = "DURATION", requires = "oneshot", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// One-shot: the command to run with SPIFFE_ENDPOINT_SOCKET set (after `--`).
    #[arg(last = true, value_name = "CMD", requires = "oneshot")]
    pub command: Vec<std::ffi::OsString>,
}

/// `30`, `30s`, `2m` or `1h`.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s, 2m or 90"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{s:?}: use s, m or h (e.g. 30s, 2m)")),
    };
    if secs == 0 {
        return Err("the timeout must be at least 1s".into());
    }
    Ok(std::time::Duration::from_secs(secs))
}

fn overrides(a: &AgentArgs) -> Overrides {
    Overrides {
        config: a.config.clone(),
        trust_domain: a.trust_domain.clone(),
        server_address: a.server_address.clone(),
        data_dir: a.data_dir.clone(),
        socket_path: a.socket_path.clone(),
        join_token: a.join_token.clone(),
        trust_bundle: a.trust_bundle.clone(),
        insecure_bootstrap: a.insecure_bootstrap,
        x509pop_cert: a.x509pop_cert.clone(),
        x509pop_key: a.x509pop_key.clone(),
        jwt_token_file: a.jwt_token_file.clone(),
        jwt_token_env: a.jwt_token_env.clone(),
        jwt_token_source: a.jwt_token_source.clone(),
        jwt_audience: a.jwt_audience.clone(),
        jwt_metadata_url: a.jwt_metadata_url.clone(),
        k8s_psat_cluster: a.k8s_psat_cluster.clone(),
        k8s_psat_token_file: a.k8s_psat_token_file.clone(),
        aws_iid: a.aws_iid,
        aws_imds_url: a.aws_imds_url.clone(),
        authz_bind: a.authz_bind.clone(),
        workload_attestors: a.workload_attestors.clone(),
        proc_root: a.proc_root.clone(),
    }
}

/// `lanyard agent --oneshot`: see [`lanyard_agent::oneshot`].
async fn oneshot(a: AgentArgs) -> Result<ExitCode, String> {
    use lanyard_agent::oneshot::{self as os, Action};
    let action = match (&a.write, a.command.is_empty()) {
        (Some(dir), true) => Action::Write {
            dir: dir.clone(),
            jwt_audiences: a.jwt_audiences.clone(),
        },
        (None, false) => Action::Run {
            command: a.command.clone(),
        },
        _ => {
            return Err(
                "--oneshot needs --write DIR (write the SVIDs and exit) or `-- CMD ARGS…` (run CMD with a Workload API socket)".into(),
            );
        }
    };
    if a.socket_path.is_some() {
        return Err(
            "--socket-path is not used with --oneshot: the socket is made in a private temporary directory and passed to the command as SPIFFE_ENDPOINT_SOCKET".into(),
        );
    }
    // Before anything is on disk, so that an interrupt still cleans up.
    let interrupts = os::Interrupts::install().map_err(|e| e.to_string())?;
    let workspace = os::Workspace::new().map_err(|e| e.to_string())?;
    let mut o = overrides(&a);
    // Only --data-dir keeps the agent's identity; a config file's data_dir and
    // socket_path (a long-running agent's) are not used.
    o.data_dir = Some(a.data_dir.clone().unwrap_or_else(|| workspace.data_dir()));
    o.socket_path = Some(workspace.socket_path());
    let cfg = AgentConfig::load(&o).map_err(|e| e.to_string())?;
    crate::cmd::server::init_tracing(&cfg.log_level);
    let code = os::run(
        cfg,
        action,
        a.timeout.unwrap_or(os::DEFAULT_TIMEOUT),
        workspace,
        interrupts,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(ExitCode::from(code))
}

pub async fn run(a: AgentArgs) -> Result<ExitCode, String> {
    if a.oneshot {
        return oneshot(a).await;
    }
    let cfg = AgentConfig::load(&overrides(&a)).map_err(|e| e.to_string())?;
    crate::cmd::server::init_tracing(&cfg.log_level);
    let agent = lanyard_agent::start(cfg).await.map_err(|e| e.to_string())?;
    let authzen = agent
        .authz_addr
        .map(|a| format!(" authzen=http://{a}/access/v1/evaluation"))
        .unwrap_or_default();
    println!(
        "lanyard agent ready SPIFFE_ENDPOINT_SOCKET=unix://{}{authzen}",
        agent.socket_path.display()
    );
    let stop = agent.shutdown_handle();
    tokio::spawn(async move {
        crate::cmd::server::wait_for_signal().await;
        let _ = stop.send(true);
    });
    agent.wait().await.map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// The uid of this process (the owner of /proc/self).
pub fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

/// A server and an agent in this process, with an entry for `uid`; used by `lanyard
/// dev` and `lanyard bench workload`.
pub struct DevStack {
    pub server: lanyard_server::RunningServer,
    pub agent: lanyard_agent::RunningAgent,
    pub socket: PathBuf,
    pub workload_id: String,
    pub dir: PathBuf,
}

pub async fn start_dev_stack(
    dir: PathBuf,
    trust_domain: &str,
    uid: u32,
) -> Result<DevStack, String> {
    start_dev_stack_with(dir, trust_domain, uid, None).await
}

/// [`start_dev_stack`] with an optional server TOML file (e.g. `[[trusted_issuer]]`);
/// the dev listeners and data dir win over it.
pub async fn start_dev_stack_with(
    dir: PathBuf,
    trust_domain: &str,
    uid: u32,
    server_config: Option<PathBuf>,
) -> Result<DevStack, String> {
    use lanyard_proto::admin as apb;
    let trust_domain = trust_domain.to_string();
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dir = dir.canonicalize().map_err(|e| e.to_string())?;
    let config = lanyard_server::ServerConfig::load(&lanyard_server::Overrides {
        trust_domain: Some(trust_domain.clone()),
        data_dir: Some(dir.clone()),
        bind: Some("127.0.0.1:0".to_string()),
        http_bind: Some("127.0.0.1:0".to_string()),
        ext_authz_bind: Some("127.0.0.1:0".to_string()),
        authzen_tls_bind: Some("127.0.0.1:0".to_string()),
        config: server_config,
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    let server = lanyard_server::start(config, Arc::new(lanyard_core::SystemClock))
        .await
        .map_err(|e| e.to_string())?;
    let mut admin = apb::admin_client::AdminClient::new(
        lanyard_server::client::unix_channel(&server.admin_socket)
            .await
            .map_err(|e| e.to_string())?,
    );
    let agent_id = format!("spiffe://{trust_domain}/lanyard/agent/dev");
    let token = admin
        .generate_join_token(apb::JoinTokenRequest {
            ttl_seconds: 0,
            spiffe_id: agent_id.clone(),
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner()
        .token;
    let workload_id = format!("spiffe://{trust_domain}/dev/uid-{uid}");
    let created = admin
        .create_entry(apb::Entry {
            spiffe_id: workload_id.clone(),
            parent_id: agent_id,
            selectors: vec![format!("unix:uid:{uid}")],
            owner: "dev".to_string(),
            environment: "dev".to_string(),
            ..Default::default()
        })
        .await;
    match created {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::AlreadyExists => {}
        Err(s) => return Err(s.message().to_string()),
    }
    let bundle = lanyard_core::Bundle::parse(
        lanyard_core::TrustDomain::new(&trust_domain).map_err(|e| e.to_string())?,
        admin
            .get_bundle(apb::Empty {})
            .await
            .map_err(|e| e.message().to_string())?
            .into_inner()
            .jwks
            .as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let agent_dir = dir.join("agent");
    let socket = dir.join("agent.sock");
    let mut cfg = AgentConfig::load(&Overrides {
        trust_domain: Some(trust_domain.clone()),
        server_address: Some(server.agent_addr.to_string()),
        data_dir: Some(agent_dir),
        socket_path: Some(socket.clone()),
        join_token: Some(token),
        authz_bind: Some("127.0.0.1:0".to_string()),
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    cfg.trust_bundle = Some(bundle);
    let agent = lanyard_agent::start(cfg).await.map_err(|e| e.to_string())?;
    // Ready when the workload's SVID is in the cache.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let ready =
            agent.state.entries().iter().any(|e| {
                e.spiffe_id.to_string() == workload_id && agent.state.svid(&e.id).is_some()
            });
        if ready || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(DevStack {
        server,
        agent,
        socket,
        workload_id,
        dir,
    })
}

pub async fn dev(
    dir: Option<PathBuf>,
    trust_domain: String,
    server_config: Option<PathBuf>,
) -> Result<ExitCode, String> {
    crate::cmd::server::init_tracing("warn");
    let uid = my_uid();
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("lanyard-dev-{uid}")));
    let DevStack {
        server,
        agent,
        socket,
        workload_id,
        dir,
    } = start_dev_stack_with(dir, &trust_domain, uid, server_config).await?;
    println!(
        "Lanyard dev is running (trust domain {trust_domain}, data in {}).",
        dir.display()
    );
    println!("SPIFFE_ENDPOINT_SOCKET=unix://{}", socket.display());
    println!("LANYARD_ADMIN_SOCKET={}", server.admin_socket.display());
    println!("server HTTP: http://{}", server.http_addr);
    println!(
        "OIDC discovery: http://{}/.well-known/openid-configuration",
        server.http_addr
    );
    println!(
        "AuthZEN evaluation: http://{}/access/v1/evaluation (token endpoint: http://{}/oauth2/token)",
        server.http_addr, server.http_addr
    );
    if let Some(a) = server.ext_authz_addr {
        println!("Envoy ext_authz (gRPC over mTLS): {a}");
    }
    if let Some(a) = server.authzen_tls_addr {
        println!("AuthZEN over mTLS: https://{a}/access/v1/evaluation");
    }
    if let Some(a) = agent.authz_addr {
        println!("agent AuthZEN: http://{a}/access/v1/evaluation");
    }
    println!("server agent API: {}", server.agent_addr);
    println!("workload identity for uid {uid}: {workload_id}");
    println!(
        "try: SPIFFE_ENDPOINT_SOCKET=unix://{} lanyard svid fetch --write out/",
        socket.display()
    );
    let stop_agent = agent.shutdown_handle();
    let stop_server = server.shutdown_handle();
    tokio::spawn(async move {
        crate::cmd::server::wait_for_signal().await;
        let _ = stop_agent.send(true);
        let _ = stop_server.send(true);
    });
    let a = agent.wait().await.map_err(|e| e.to_string());
    let s = server.shutdown().await.map_err(|e| e.to_string());
    a?;
    s?;
    Ok(ExitCode::SUCCESS)
}
