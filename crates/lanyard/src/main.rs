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
    /// Run the Lanyard server (CA, datastore, admin API, agent API).
    Server {
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
        run: cmd::agent::AgentArgs,
    },
    /// Server and agent in one process with an entry for your uid: try Lanyard now.
    Dev {
        /// Data directory (default: a directory in the temp dir for your uid).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        #[arg(long, default_value = "example.org")]
        trust_domain: String,
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
    /// Create an entry; prints its id.
    Create {
        #[command(flatten)]
        flags: cmd::admin::EntryFlags,
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
            config,
            data_dir,
            trust_domain,
            bind,
            http_bind,
            admin_socket,
            database_url,
            audit_checkpoint_file,
        } => runtime()?.block_on(cmd::server::run(lanyard_server::Overrides {
            audit_checkpoint_file,
            config,
            trust_domain,
            data_dir,
            bind,
            http_bind,
            admin_socket,
            database_url,
        })),
        Command::Entry { command, admin } => {
            let s = admin.admin_socket.as_deref();
            let out = admin.output;
            runtime()?.block_on(async move {
                match command {
                    EntryCommand::Create { flags } => a::entry_create(s, &flags, out).await,
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
            command: BenchCommand::Audit { args },
        } => runtime()?.block_on(cmd::bench::audit(args)),
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
        Command::Agent { command: None, run } => runtime()?.block_on(cmd::agent::run(run)),
        Command::Dev { dir, trust_domain } => {
            runtime()?.block_on(cmd::agent::dev(dir, trust_domain))
        }
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
