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

#[derive(Debug, Subcommand)]
enum Command {
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
enum BundleCommand {
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
    let result = match cli.command {
        Command::Id {
            command: IdCommand::Check { id, output },
        } => cmd::inspect::id_check(&id, output),
        Command::Svid {
            command:
                SvidCommand::Inspect {
                    file,
                    bundle,
                    output,
                },
        } => cmd::inspect::svid_inspect(&file, bundle.as_deref(), output),
        Command::Bundle {
            command:
                BundleCommand::Inspect {
                    file,
                    trust_domain,
                    output,
                },
        } => cmd::inspect::bundle_inspect(&file, trust_domain.as_deref(), output),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
