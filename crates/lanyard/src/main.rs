//! `lanyard`: one binary for the Lanyard server, agent and admin CLI.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod cmd;

/// Lanyard: SPIFFE workload identity with governance built in.
#[derive(Debug, Parser)]
#[command(name = "lanyard", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Output format of inspection commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
struct AdminArgs {
    /// The server's admin socket (DATA_DIR/admin.sock).
    #[arg(long, env = "LANYARD_ADMIN_SOCKET", global = true)]
    admin_socket: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value_t, global = true)]
    output: Output,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Lanyard server (CA, datastore, admin API, agent API); `server list`
    /// and `server deregister` manage the servers sharing its datastore.
    #[command(args_conflicts_with_subcommands = true)]
    Server {
        #[command(subcommand)]
        command: Option<ServerCommand>,
        /// TOML configuration file; flags override it.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Directory for the database, CA keys (mode 0600) and admin socket.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// The trust domain, e.g. example.org.
        #[arg(long)]
        trust_domain: Option<String>,
        /// Agent API address (default 127.0.0.1:8081; port 0 picks a free port).
        #[arg(long)]
        bind: Option<String>,
        /// Health endpoint address (default 127.0.0.1:8082).
        #[arg(long)]
        http_bind: Option<String>,
        /// Admin socket path (default DATA_DIR/admin.sock).
        #[arg(long)]
        admin_socket: Option<std::path::PathBuf>,
        /// PostgreSQL URL (default: SQLite in the data dir).
        #[arg(long, env = "LANYARD_DATABASE_URL")]
        database_url: Option<String>,
        /// Also append signed audit checkpoints to this file (outside the datastore).
        #[arg(long)]
        audit_checkpoint_file: Option<std::path::PathBuf>,
        /// Key-encryption key (32 bytes: raw, base64 or hex): keys every server needs
        /// are kept in the datastore sealed under it (or set LANYARD_KEK).
        #[arg(long, env = "LANYARD_KEK_FILE")]
        kek_file: Option<std::path::PathBuf>,
    },
    /// The evidence log: verify, query, export.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Manage registration entries (admin API).
    Entry {
        #[command(subcommand)]
        command: EntryCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Policy as code (Cedar): set, get, check, test.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Time-boxed exceptions for legacy static secrets (admin API).
    Exception {
        #[command(subcommand)]
        command: ExceptionCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Every identity with owner, agents, last activity and risk flags (admin API).
    Inventory {
        /// Flag identities not issued for this long (default 7d).
        #[arg(long)]
        stale_after: Option<String>,
        /// Flag entries expiring within this long (default 7d).
        #[arg(long)]
        expiring_within: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The server's CA keys: list, taint (admin API).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// JWT-SVID revocation (admin API).
    Jwt {
        #[command(subcommand)]
        command: JwtCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Workload side: fetch an exception's secret through the agent socket.
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// Join tokens for node attestation (admin API).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Whole-system benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Run the agent (no subcommand), or manage attested agents (admin API).
    #[command(args_conflicts_with_subcommands = true)]
    Agent {
        #[command(subcommand)]
        command: Option<AgentCommand>,
        #[command(flatten)]
        run: Box<cmd::agent::AgentArgs>,
    },
    /// Server and agent in one process with an entry for your uid: try Lanyard now.
    Dev {
        /// Data directory (default: a directory in the temp dir for your uid).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        #[arg(long, default_value = "example.org")]
        trust_domain: String,
        /// A server TOML file for settings dev does not make (e.g. `[[trusted_issuer]]`).
        #[arg(long)]
        server_config: Option<std::path::PathBuf>,
    },
    /// Work with SPIFFE IDs.
    Id {
        #[command(subcommand)]
        command: IdCommand,
    },
    /// Work with X509-SVIDs.
    Svid {
        #[command(subcommand)]
        command: SvidCommand,
    },
    /// Work with SPIFFE trust bundles.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy file and make it the active set of its kind.
    Set {
        #[arg(long, default_value = "registration")]
        kind: String,
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Print the active set (the shipped default until one is set).
    Get {
        #[arg(long, default_value = "registration")]
        kind: String,
    },
    /// Validate a policy file against its schema (no server needed).
    Check {
        #[arg(long, default_value = "registration")]
        kind: String,
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Evaluate a sample request (JSON) against a file or the server's active set;
    /// exit code 1 when refused.
    Test {
        #[arg(long, default_value = "registration")]
        kind: String,
        /// Policy file (default: the server's active set).
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// registration: {"caller": "uid:0", "action": "create_entry", "entry": {"spiffe_id": ..., "selectors": [...], "owner": ...}};
        /// authz: an AuthZEN request {"subject": {"id": ..., "properties": {"owner": ...}}, "action": {"name": ...}, "resource": {"type": ..., "id": ...}, "context": {...}, "task": {...}}
        #[arg(long)]
        request: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ExceptionCommand {
    /// Store a legacy secret for a limited time, releasable only to the allowed identities.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        owner: String,
        #[arg(long)]
        justification: String,
        /// How long it lasts, e.g. 30d (the maximum is registration policy).
        #[arg(long)]
        expires: String,
        /// A SPIFFE ID the secret may be released to (repeatable).
        #[arg(long, required = true)]
        allow: Vec<String>,
        /// File holding the secret.
        #[arg(long)]
        secret_file: std::path::PathBuf,
    },
    List,
    Show {
        name: String,
    },
    /// Stop releasing the secret now.
    Revoke {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ServerCommand {
    /// The servers sharing this server's datastore: address, last heartbeat and the
    /// CA certificates and JWT keys each publishes in the trust bundle.
    List {
        #[arg(long, env = "LANYARD_ADMIN_SOCKET")]
        admin_socket: Option<std::path::PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Take a server out of the trust domain: its keys leave the bundle, and SVIDs
    /// it signed are no longer trusted. Run it through another server.
    Deregister {
        /// The server's name, as `lanyard server list` shows it.
        name: String,
        /// Even though it was seen in the last 30s (it may be running).
        #[arg(long)]
        force: bool,
        #[arg(long, env = "LANYARD_ADMIN_SOCKET")]
        admin_socket: Option<std::path::PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// List CA slots (prepared, active, retired, tainted).
    List,
    /// Distrust a CA key now: a new key signs, agents re-mint, and the tainted key
    /// leaves the bundle once nothing depends on it.
    Taint { slot: String },
}

#[derive(Debug, Subcommand)]
enum JwtCommand {
    /// Put a JWT-SVID on the deny-list (honoured by ValidateJWTSVID on every agent).
    Revoke {
        #[arg(long, conflicts_with = "token_file")]
        jti: Option<String>,
        /// A file holding the token itself (it is not stored).
        #[arg(long)]
        token_file: Option<std::path::PathBuf>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// List revoked JWT-SVIDs that have not expired yet.
    Revoked,
}

#[derive(Debug, Subcommand)]
enum SecretCommand {
    /// Print an exception's secret (uses SPIFFE_ENDPOINT_SOCKET or --socket).
    Fetch {
        name: String,
        #[arg(long)]
        socket: Option<String>,
        /// Use this one of your identities.
        #[arg(long)]
        spiffe_id: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum IdCommand {
    /// Check a SPIFFE ID against the SPIFFE-ID specification; prints the normalized ID.
    Check {
        /// The ID, e.g. spiffe://example.org/service
        id: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum SvidCommand {
    /// Fetch X509-SVIDs from the Workload API (SPIFFE_ENDPOINT_SOCKET or --socket).
    Fetch {
        #[arg(long)]
        socket: Option<String>,
        /// Write svid.pem, svid.key and bundle.pem into this directory.
        #[arg(long)]
        write: Option<std::path::PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Keep SVIDs as files for software that cannot speak SPIFFE: write chain, key
    /// and bundle atomically on every rotation, then run a reload hook (--exec,
    /// --signal --pid-file) or supervise a program given after --.
    Watch {
        #[command(flatten)]
        args: Box<cmd::watch::WatchArgs>,
    },
    /// Fetch a JWT-SVID for an audience.
    Jwt {
        #[arg(long)]
        socket: Option<String>,
        #[arg(long = "audience", required = true)]
        audience: Vec<String>,
        #[arg(long)]
        spiffe_id: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Validate a JWT-SVID through the Workload API.
    Validate {
        #[arg(long)]
        socket: Option<String>,
        #[arg(long)]
        audience: String,
        token: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Inspect an X509-SVID (PEM, leaf first): SPIFFE ID, validity and every spec rule;
    /// with --bundle, the chain is verified too.
    Inspect {
        /// PEM file with the leaf certificate followed by any intermediates.
        file: std::path::PathBuf,
        /// Trust bundle: a SPIFFE bundle (JSON) or PEM CA certificates.
        #[arg(long)]
        bundle: Option<std::path::PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum EntryCommand {
    /// Create an entry; prints its id. With --file, create every entry of a JSON
    /// file (an array, or {"entries": [...]}, in the shape `entry list -o json`
    /// prints), each reported on its own.
    Create {
        #[command(flatten)]
        flags: cmd::admin::EntryFlags,
        /// A JSON file of entries to create in batches.
        #[arg(
            long,
            conflicts_with_all = [
                "spiffe_id", "parent_id", "selectors", "owner", "environment", "x509_ttl",
                "jwt_ttl", "dns_names", "hint", "admin", "expires_at", "federates_with"
            ]
        )]
        file: Option<std::path::PathBuf>,
        /// With --file: read and compare, write nothing.
        #[arg(long, requires = "file")]
        dry_run: bool,
        /// With --file: change a stored entry with the same SPIFFE ID, parent and
        /// selectors whose other fields differ (otherwise it is refused).
        #[arg(long, requires = "file")]
        update: bool,
    },
    /// Import registration entries from SPIRE: the output of `spire-server entry
    /// show -output json` or a `spire-server entry create -data` file, as they
    /// are. Reports created / unchanged / refused / malformed per entry; exit code
    /// 1 if anything was refused or malformed.
    Import {
        /// The SPIRE JSON file.
        #[arg(long)]
        spire: std::path::PathBuf,
        /// Owner of every imported identity (SPIRE entries have none).
        #[arg(long)]
        owner: String,
        /// Environment label of every imported identity.
        #[arg(long)]
        environment: Option<String>,
        /// Read and compare, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Change a stored entry with the same SPIFFE ID, parent and selectors
        /// whose other fields differ (otherwise it is refused).
        #[arg(long)]
        update: bool,
    },
    /// Change an entry; only the given flags change.
    Update {
        /// The entry id.
        id: String,
        #[command(flatten)]
        flags: cmd::admin::EntryFlags,
    },
    /// Delete an entry by id.
    Delete { id: String },
    /// Show one entry.
    Show { id: String },
    /// List entries, optionally filtered.
    List {
        #[arg(long)]
        spiffe_id: Option<String>,
        #[arg(long)]
        parent_id: Option<String>,
        #[arg(long)]
        selector: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// X509-SVIDs per second through the agent API, next to raw P-256 sign+verify.
    Issue {
        #[command(flatten)]
        args: cmd::bench::IssueArgs,
    },
    /// Workload API latencies (p50/p99) and ValidateJWTSVID throughput.
    Workload {
        #[command(flatten)]
        args: cmd::bench::WorkloadArgs,
    },
    /// Durable evidence-log appends per second next to raw durable SQLite inserts.
    Audit {
        #[command(flatten)]
        args: cmd::bench::AuditArgs,
    },
    /// SPIRE import throughput on SQLite next to plain INSERTs in one transaction
    /// and single CreateEntry calls.
    Import {
        #[command(flatten)]
        args: cmd::bench::ImportArgs,
    },
    /// Revocation delay: admin DeleteEntry to the workload's stream update.
    Revoke {
        #[command(flatten)]
        args: cmd::bench::RevokeArgs,
    },
    /// Runtime authorization: AuthZEN decisions over loopback HTTP next to in-process
    /// Cedar evaluation of the same policy set; token exchange latency.
    Authz {
        #[command(flatten)]
        args: cmd::bench::AuthzArgs,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Prove the log is intact: every record chained, every checkpoint signed and met.
    Verify {
        #[command(flatten)]
        src: cmd::audit::Source,
    },
    /// List events, optionally filtered.
    Query {
        #[command(flatten)]
        src: cmd::audit::Source,
        /// Only events about this SPIFFE ID.
        #[arg(long)]
        subject: Option<String>,
        /// Only events of this kind, e.g. x509_svid_issued.
        #[arg(long)]
        kind: Option<String>,
        /// Only events newer than this, e.g. 1h.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Every event of one trace, in order.
    Trace {
        trace_id: String,
        #[command(flatten)]
        src: cmd::audit::Source,
    },
    /// Export the whole log.
    Export {
        #[command(flatten)]
        src: cmd::audit::Source,
        /// Only jsonl is supported.
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Generate a single-use join token.
    Generate {
        /// Lifetime (default 10m).
        #[arg(long)]
        ttl: Option<String>,
        /// Agent ID the node using this token will get.
        #[arg(long)]
        spiffe_id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// List attested agents.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one agent.
    Show {
        spiffe_id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Ban an agent: it is refused from now on, even with a valid SVID.
    Ban {
        spiffe_id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Evict an agent: forget it; it must attest again.
    Evict {
        spiffe_id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
enum BundleFormat {
    #[default]
    Pem,
    Jwks,
}

#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Fetch trust bundles from the Workload API (PEM; --format jwks for JWT bundles).
    Fetch {
        #[arg(long)]
        socket: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: BundleFormat,
    },
    /// Show the server's trust bundle (admin API).
    Show {
        #[arg(long, value_enum, default_value_t)]
        format: BundleFormat,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Inspect a SPIFFE bundle (JWK Set JSON).
    Inspect {
        /// The bundle file.
        file: std::path::PathBuf,
        /// Trust domain the bundle belongs to (default: taken from the CA certificates).
        #[arg(long)]
        trust_domain: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = dispatch(cli);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Offline inspectors exit 2 when they could not run at all (1 means "invalid").
fn could_not_run(r: Result<ExitCode, String>) -> Result<ExitCode, String> {
    r.or_else(|e| {
        eprintln!("error: {e}");
        Ok(ExitCode::from(2))
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn dispatch(cli: Cli) -> Result<ExitCode, String> {
    use cmd::admin as a;
    match cli.command {
        Command::Server {
            command: Some(command),
            ..
        } => runtime()?.block_on(async move {
            match command {
                ServerCommand::List {
                    admin_socket,
                    output,
                } => cmd::governance::server_list(admin_socket.as_deref(), output).await,
                ServerCommand::Deregister {
                    name,
                    force,
                    admin_socket,
                    output,
                } => {
                    cmd::governance::server_deregister(
                        admin_socket.as_deref(),
                        &name,
                        force,
                        output,
                    )
                    .await
                }
            }
        }),
        Command::Server {
            command: None,
            config,
            data_dir,
            trust_domain,
            bind,
            http_bind,
            admin_socket,
            database_url,
            audit_checkpoint_file,
            kek_file,
        } => runtime()?.block_on(cmd::server::run(lanyard_server::Overrides {
            audit_checkpoint_file,
            kek_file,
            config,
            trust_domain,
            data_dir,
            bind,
            http_bind,
            admin_socket,
            database_url,
            ext_authz_bind: None,
            authzen_tls_bind: None,
        })),
        Command::Entry { command, admin } => {
            let s = admin.admin_socket.as_deref();
            let out = admin.output;
            runtime()?.block_on(async move {
                match command {
                    EntryCommand::Create {
                        file: Some(file),
                        dry_run,
                        update,
                        ..
                    } => {
                        let opts = cmd::bulk::Options { dry_run, update };
                        cmd::bulk::create_from_file(s, &file, opts, out).await
                    }
                    EntryCommand::Create { flags, .. } => a::entry_create(s, &flags, out).await,
                    EntryCommand::Import {
                        spire,
                        owner,
                        environment,
                        dry_run,
                        update,
                    } => {
                        let opts = cmd::bulk::Options { dry_run, update };
                        cmd::bulk::import_spire(
                            s,
                            &spire,
                            &owner,
                            environment.as_deref(),
                            opts,
                            out,
                        )
                        .await
                    }
                    EntryCommand::Update { id, flags } => {
                        a::entry_update(s, &id, &flags, out).await
                    }
                    EntryCommand::Delete { id } => a::entry_delete(s, &id, out).await,
                    EntryCommand::Show { id } => a::entry_show(s, &id, out).await,
                    EntryCommand::List {
                        spiffe_id,
                        parent_id,
                        selector,
                    } => {
                        let filter = lanyard_proto::admin::ListEntriesRequest {
                            spiffe_id: spiffe_id.unwrap_or_default(),
                            parent_id: parent_id.unwrap_or_default(),
                            selector: selector.unwrap_or_default(),
                        };
                        a::entry_list(s, filter, out).await
                    }
                }
            })
        }
        Command::Policy { command, admin } => {
            use cmd::governance as g;
            let sock = admin.admin_socket.clone();
            let out = admin.output;
            runtime()?.block_on(async move {
                let s = sock.as_deref();
                match command {
                    PolicyCommand::Set { kind, file } => g::policy_set(s, &kind, &file, out).await,
                    PolicyCommand::Get { kind } => g::policy_get(s, &kind, out).await,
                    PolicyCommand::Check { kind, file } => g::policy_check(&kind, &file, out),
                    PolicyCommand::Test {
                        kind,
                        file,
                        request,
                    } => g::policy_test(s, &kind, file.as_deref(), &request, out).await,
                }
            })
        }
        Command::Exception { command, admin } => {
            use cmd::governance as g;
            let sock = admin.admin_socket.clone();
            let out = admin.output;
            runtime()?.block_on(async move {
                let s = sock.as_deref();
                match command {
                    ExceptionCommand::Create {
                        name,
                        owner,
                        justification,
                        expires,
                        allow,
                        secret_file,
                    } => {
                        g::exception_create(
                            s,
                            &name,
                            &owner,
                            &justification,
                            &expires,
                            &allow,
                            &secret_file,
                            out,
                        )
                        .await
                    }
                    ExceptionCommand::List => g::exception_list(s, out).await,
                    ExceptionCommand::Show { name } => g::exception_show(s, &name, out).await,
                    ExceptionCommand::Revoke { name } => g::exception_revoke(s, &name, out).await,
                }
            })
        }
        Command::Inventory {
            stale_after,
            expiring_within,
            admin,
        } => runtime()?.block_on(cmd::governance::inventory(
            admin.admin_socket.as_deref(),
            stale_after.as_deref(),
            expiring_within.as_deref(),
            admin.output,
        )),
        Command::Ca { command, admin } => {
            let s = admin.admin_socket.clone();
            runtime()?.block_on(async move {
                match command {
                    CaCommand::List => cmd::governance::ca_list(s.as_deref(), admin.output).await,
                    CaCommand::Taint { slot } => {
                        cmd::governance::ca_taint(s.as_deref(), &slot, admin.output).await
                    }
                }
            })
        }
        Command::Jwt { command, admin } => {
            let s = admin.admin_socket.clone();
            runtime()?.block_on(async move {
                match command {
                    JwtCommand::Revoke {
                        jti,
                        token_file,
                        reason,
                    } => {
                        cmd::governance::jwt_revoke(
                            s.as_deref(),
                            jti.as_deref(),
                            token_file.as_deref(),
                            reason.as_deref(),
                            admin.output,
                        )
                        .await
                    }
                    JwtCommand::Revoked => {
                        cmd::governance::jwt_revoked(s.as_deref(), admin.output).await
                    }
                }
            })
        }
        Command::Secret {
            command:
                SecretCommand::Fetch {
                    name,
                    socket,
                    spiffe_id,
                    output,
                },
        } => runtime()?.block_on(cmd::workload::secret_fetch(
            socket.as_deref(),
            &name,
            spiffe_id.as_deref(),
            output,
        )),
        Command::Token {
            command: TokenCommand::Generate { ttl, spiffe_id },
            admin,
        } => runtime()?.block_on(a::token_generate(
            admin.admin_socket.as_deref(),
            ttl,
            spiffe_id,
            admin.output,
        )),
        Command::Bench {
            command: BenchCommand::Issue { args },
        } => runtime()?.block_on(cmd::bench::issue(args)),
        Command::Bench {
            command: BenchCommand::Workload { args },
        } => runtime()?.block_on(cmd::bench::workload(args)),
        Command::Bench {
            command: BenchCommand::Revoke { args },
        } => runtime()?.block_on(cmd::bench::revoke(args)),
        Command::Bench {
            command: BenchCommand::Authz { args },
        } => runtime()?.block_on(cmd::bench::authz(args)),
        Command::Bench {
            command: BenchCommand::Audit { args },
        } => runtime()?.block_on(cmd::bench::audit(args)),
        Command::Bench {
            command: BenchCommand::Import { args },
        } => runtime()?.block_on(cmd::bench::import(args)),
        Command::Audit { command } => runtime()?.block_on(async move {
            match command {
                AuditCommand::Verify { src } => cmd::audit::verify(&src).await,
                AuditCommand::Query {
                    src,
                    subject,
                    kind,
                    since,
                    output,
                } => cmd::audit::query(&src, subject, kind, since, None, output).await,
                AuditCommand::Trace { trace_id, src } => {
                    cmd::audit::query(&src, None, None, None, Some(trace_id), Output::Text).await
                }
                AuditCommand::Export { src, format } => {
                    if format != "jsonl" {
                        return Err(format!("--format {format:?}: only jsonl is supported"));
                    }
                    cmd::audit::export(&src).await
                }
            }
        }),
        Command::Agent { command: None, run } => runtime()?.block_on(cmd::agent::run(*run)),
        Command::Dev {
            dir,
            trust_domain,
            server_config,
        } => runtime()?.block_on(cmd::agent::dev(dir, trust_domain, server_config)),
        Command::Agent {
            command: Some(command),
            ..
        } => {
            let (action, id, admin) = match &command {
                AgentCommand::List { admin } => ("list", None, admin),
                AgentCommand::Show { spiffe_id, admin } => {
                    ("show", Some(spiffe_id.as_str()), admin)
                }
                AgentCommand::Ban { spiffe_id, admin } => ("ban", Some(spiffe_id.as_str()), admin),
                AgentCommand::Evict { spiffe_id, admin } => {
                    ("evict", Some(spiffe_id.as_str()), admin)
                }
            };
            runtime()?.block_on(a::agent(
                admin.admin_socket.as_deref(),
                action,
                id,
                admin.output,
            ))
        }
        Command::Bundle {
            command: BundleCommand::Show { format, admin },
        } => {
            let f = match format {
                BundleFormat::Pem => "pem",
                BundleFormat::Jwks => "jwks",
            };
            runtime()?.block_on(a::bundle_show(
                admin.admin_socket.as_deref(),
                f,
                admin.output,
            ))
        }
        Command::Svid {
            command:
                SvidCommand::Fetch {
                    socket,
                    write,
                    output,
                },
        } => runtime()?.block_on(cmd::workload::svid_fetch(
            socket.as_deref(),
            write.as_deref(),
            output,
        )),
        Command::Svid {
            command: SvidCommand::Watch { args },
        } => runtime()?.block_on(cmd::watch::run(*args)),
        Command::Svid {
            command:
                SvidCommand::Jwt {
                    socket,
                    audience,
                    spiffe_id,
                    output,
                },
        } => runtime()?.block_on(cmd::workload::svid_jwt(
            socket.as_deref(),
            audience,
            spiffe_id,
            output,
        )),
        Command::Svid {
            command:
                SvidCommand::Validate {
                    socket,
                    audience,
                    token,
                    output,
                },
        } => runtime()?.block_on(cmd::workload::svid_validate(
            socket.as_deref(),
            audience,
            token,
            output,
        )),
        Command::Bundle {
            command: BundleCommand::Fetch { socket, format },
        } => runtime()?.block_on(cmd::workload::bundle_fetch(
            socket.as_deref(),
            format == BundleFormat::Jwks,
        )),
        Command::Id {
            command: IdCommand::Check { id, output },
        } => could_not_run(cmd::inspect::id_check(&id, output)),
        Command::Svid {
            command:
                SvidCommand::Inspect {
                    file,
                    bundle,
                    output,
                },
        } => could_not_run(cmd::inspect::svid_inspect(&file, bundle.as_deref(), output)),
        Command::Bundle {
            command:
                BundleCommand::Inspect {
                    file,
                    trust_domain,
                    output,
                },
        } => could_not_run(cmd::inspect::bundle_inspect(
            &file,
            trust_domain.as_deref(),
            output,
        )),
    }
}
