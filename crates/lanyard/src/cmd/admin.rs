//! Admin commands: talk to the server's admin API over its local Unix socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lanyard_core::duration::{format_duration, parse_duration};
use lanyard_proto::admin as pb;
use lanyard_proto::admin::admin_client::AdminClient;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::transport::Channel;

use crate::Output;

/// Largest admin response the CLI reads (about a million entries in a listing).
const MAX_ADMIN_RESPONSE: usize = 512 * 1024 * 1024;

/// Connect to the admin socket.
pub async fn connect(socket: Option<&Path>) -> Result<AdminClient<Channel>, String> {
    let path: PathBuf = socket.map(Path::to_path_buf).ok_or_else(|| {
        "no admin socket given; pass --admin-socket DIR/admin.sock or set LANYARD_ADMIN_SOCKET"
            .to_string()
    })?;
    if !path.exists() {
        return Err(format!(
            "the admin socket {} does not exist; is `lanyard server` running with that data dir?",
            path.display()
        ));
    }
    let channel = lanyard_server::client::unix_channel(&path)
        .await
        .map_err(|e| e.to_string())?;
    // Listings of many entries (an import compares against all of them) are larger
    // than tonic's 4 MiB default.
    Ok(AdminClient::new(channel).max_decoding_message_size(MAX_ADMIN_RESPONSE))
}

pub fn status(e: tonic::Status) -> String {
    e.message().to_string()
}

pub fn time_str(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

/// Parse `--expires-at`: RFC 3339 or unix seconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|d| d.unix_timestamp())
        .map_err(|_| {
            format!("--expires-at {s:?}: use RFC 3339 (2026-12-31T00:00:00Z) or unix seconds")
        })
}

fn ttl_secs(flag: &str, s: &Option<String>) -> Result<Option<u64>, String> {
    s.as_ref()
        .map(|v| {
            parse_duration(v)
                .map(|d| d.as_secs())
                .map_err(|e| format!("{flag}: {e}"))
        })
        .transpose()
}

fn entry_json(e: &pb::Entry) -> Value {
    json!({
        "id": e.id,
        "spiffe_id": e.spiffe_id,
        "parent_id": e.parent_id,
        "selectors": e.selectors,
        "owner": e.owner,
        "environment": (!e.environment.is_empty()).then_some(&e.environment),
        "x509_ttl_seconds": e.x509_ttl_seconds,
        "jwt_ttl_seconds": e.jwt_ttl_seconds,
        "dns_names": e.dns_names,
        "hint": (!e.hint.is_empty()).then_some(&e.hint),
        "admin": e.admin,
        "federates_with": e.federates_with,
        "expires_at": (e.expires_at != 0).then_some(e.expires_at),
        "revision": e.revision,
        "created_at": e.created_at,
        "updated_at": e.updated_at,
    })
}

fn ttl_text(s: u64) -> String {
    if s == 0 {
        "default".to_string()
    } else {
        format_duration(std::time::Duration::from_secs(s))
    }
}

fn entry_text(e: &pb::Entry) -> String {
    let opt = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    [
        format!("Entry ID:     {}", e.id),
        format!("SPIFFE ID:    {}", e.spiffe_id),
        format!("Parent ID:    {}", e.parent_id),
        format!("Selectors:    {}", e.selectors.join(", ")),
        format!("Owner:        {}", e.owner),
        format!("Environment:  {}", opt(&e.environment)),
        format!("X.509 TTL:    {}", ttl_text(e.x509_ttl_seconds)),
        format!("JWT TTL:      {}", ttl_text(e.jwt_ttl_seconds)),
        format!("DNS names:    {}", opt(&e.dns_names.join(", "))),
        format!("Hint:         {}", opt(&e.hint)),
        format!("Admin:        {}", e.admin),
        format!("Federates:    {}", opt(&e.federates_with.join(", "))),
        format!(
            "Expires at:   {}",
            if e.expires_at == 0 {
                "never".to_string()
            } else {
                time_str(e.expires_at)
            }
        ),
        format!("Revision:     {}", e.revision),
    ]
    .join("\n")
}

pub fn print(output: Output, text: String, value: Value) {
    match output {
        Output::Text => println!("{text}"),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string())
        ),
    }
}

/// Flags shared by `entry create` and `entry update`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EntryFlags {
    /// The workload's SPIFFE ID, e.g. spiffe://example.org/web
    #[arg(long)]
    pub spiffe_id: Option<String>,
    /// The agent (or node alias) that may serve this identity.
    #[arg(long)]
    pub parent_id: Option<String>,
    /// A selector the workload must match, e.g. unix:uid:1000 (repeatable).
    #[arg(long = "selector")]
    pub selectors: Vec<String>,
    /// Team or person accountable for the identity (required).
    #[arg(long)]
    pub owner: Option<String>,
    /// Environment label, e.g. prod.
    #[arg(long)]
    pub environment: Option<String>,
    /// X509-SVID lifetime, e.g. 1h (default: server setting).
    #[arg(long)]
    pub x509_ttl: Option<String>,
    /// JWT-SVID lifetime, e.g. 5m (default: server setting).
    #[arg(long)]
    pub jwt_ttl: Option<String>,
    /// DNS name for the X509-SVID (repeatable).
    #[arg(long = "dns-name")]
    pub dns_names: Vec<String>,
    /// Hint for workloads that receive several SVIDs.
    #[arg(long)]
    pub hint: Option<String>,
    /// Mark the identity as an admin identity.
    #[arg(long)]
    pub admin: Option<Option<bool>>,
    /// When the entry stops issuing: RFC 3339 or unix seconds.
    #[arg(long)]
    pub expires_at: Option<String>,
    /// A trust domain this identity federates with, e.g. partner.example
    /// (repeatable; stored and shown, not yet enforced).
    #[arg(long = "federates-with")]
    pub federates_with: Vec<String>,
}

impl EntryFlags {
    fn apply(&self, e: &mut pb::Entry) -> Result<(), String> {
        if let Some(v) = &self.spiffe_id {
            e.spiffe_id = v.clone();
        }
        if let Some(v) = &self.parent_id {
            e.parent_id = v.clone();
        }
        if !self.selectors.is_empty() {
            e.selectors = self.selectors.clone();
        }
        if let Some(v) = &self.owner {
            e.owner = v.clone();
        }
        if let Some(v) = &self.environment {
            e.environment = v.clone();
        }
        if let Some(v) = ttl_secs("--x509-ttl", &self.x509_ttl)? {
            e.x509_ttl_seconds = v;
        }
        if let Some(v) = ttl_secs("--jwt-ttl", &self.jwt_ttl)? {
            e.jwt_ttl_seconds = v;
        }
        if !self.dns_names.is_empty() {
            e.dns_names = self.dns_names.clone();
        }
        if let Some(v) = &self.hint {
            e.hint = v.clone();
        }
        if let Some(v) = self.admin {
            e.admin = v.unwrap_or(true);
        }
        if let Some(v) = &self.expires_at {
            e.expires_at = parse_time(v)?;
        }
        if !self.federates_with.is_empty() {
            e.federates_with = self.federates_with.clone();
        }
        Ok(())
    }
}

pub async fn entry_create(
    socket: Option<&Path>,
    flags: &EntryFlags,
    output: Output,
) -> Result<ExitCode, String> {
    let mut e = pb::Entry::default();
    flags.apply(&mut e)?;
    if e.spiffe_id.is_empty() {
        return Err("--spiffe-id is required".to_string());
    }
    if e.parent_id.is_empty() {
        return Err(
            "--parent-id is required (the agent ID that may serve this identity)".to_string(),
        );
    }
    let mut c = connect(socket).await?;
    let created = c.create_entry(e).await.map_err(status)?.into_inner();
    print(output, entry_text(&created), entry_json(&created));
    Ok(ExitCode::SUCCESS)
}

pub async fn entry_update(
    socket: Option<&Path>,
    id: &str,
    flags: &EntryFlags,
    output: Output,
) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    let mut e = c
        .get_entry(pb::EntryId { id: id.to_string() })
        .await
        .map_err(status)?
        .into_inner();
    let revision = e.revision;
    flags.apply(&mut e)?;
    let updated = c
        .update_entry(pb::UpdateEntryRequest {
            entry: Some(e),
            expected_revision: revision,
        })
        .await
        .map_err(status)?
        .into_inner();
    print(output, entry_text(&updated), entry_json(&updated));
    Ok(ExitCode::SUCCESS)
}

pub async fn entry_delete(
    socket: Option<&Path>,
    id: &str,
    output: Output,
) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    let e = c
        .delete_entry(pb::EntryId { id: id.to_string() })
        .await
        .map_err(status)?
        .into_inner();
    print(
        output,
        format!("Deleted entry {} ({})", e.id, e.spiffe_id),
        entry_json(&e),
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn entry_show(
    socket: Option<&Path>,
    id: &str,
    output: Output,
) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    let e = c
        .get_entry(pb::EntryId { id: id.to_string() })
        .await
        .map_err(status)?
        .into_inner();
    print(output, entry_text(&e), entry_json(&e));
    Ok(ExitCode::SUCCESS)
}

pub async fn entry_list(
    socket: Option<&Path>,
    filter: pb::ListEntriesRequest,
    output: Output,
) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    let list = c.list_entries(filter).await.map_err(status)?.into_inner();
    let text = if list.entries.is_empty() {
        "No entries.".to_string()
    } else {
        let mut t = format!(
            "{} entr{}\n",
            list.entries.len(),
            if list.entries.len() == 1 { "y" } else { "ies" }
        );
        t.push_str(
            &list
                .entries
                .iter()
                .map(entry_text)
                .collect::<Vec<_>>()
                .join("\n\n"),
        );
        t
    };
    print(
        output,
        text,
        Value::Array(list.entries.iter().map(entry_json).collect()),
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn token_generate(
    socket: Option<&Path>,
    ttl: Option<String>,
    spiffe_id: Option<String>,
    output: Output,
) -> Result<ExitCode, String> {
    let ttl_seconds = ttl_secs("--ttl", &ttl)?.unwrap_or(0);
    if ttl.is_some() && ttl_seconds == 0 {
        return Err("--ttl must be greater than zero".to_string());
    }
    let mut c = connect(socket).await?;
    let t = c
        .generate_join_token(pb::JoinTokenRequest {
            ttl_seconds,
            spiffe_id: spiffe_id.unwrap_or_default(),
        })
        .await
        .map_err(status)?
        .into_inner();
    print(
        output,
        format!(
            "Token:      {}\nExpires at: {}",
            t.token,
            time_str(t.expires_at)
        ),
        json!({"token": t.token, "expires_at": t.expires_at, "spiffe_id": (!t.spiffe_id.is_empty()).then_some(&t.spiffe_id)}),
    );
    Ok(ExitCode::SUCCESS)
}

fn agent_json(a: &pb::Agent) -> Value {
    json!({
        "spiffe_id": a.spiffe_id,
        "attestation_type": a.attestation_type,
        "selectors": a.selectors,
        "serial": a.serial,
        "expires_at": a.expires_at,
        "banned": a.banned,
        "created_at": a.created_at,
        "updated_at": a.updated_at,
        "superseded_svids_presented": a.superseded_count,
        "superseded_svid_last_at": (a.superseded_at != 0).then_some(a.superseded_at),
    })
}

fn agent_text(a: &pb::Agent) -> String {
    [
        format!("Agent ID:     {}", a.spiffe_id),
        format!("Attestation:  {}", a.attestation_type),
        format!("Selectors:    {}", a.selectors.join(", ")),
        format!("SVID serial:  {}", a.serial),
        format!("SVID expiry:  {}", time_str(a.expires_at)),
        format!("Banned:       {}", a.banned),
        if a.superseded_count == 0 {
            "Clone check:  ok (no superseded agent SVID presented)".to_string()
        } else {
            format!(
                "Clone check:  POSSIBLE CLONE: a superseded agent SVID was presented {} time(s), last {}; ban the agent (`lanyard agent ban`) if this host did not lose its state",
                a.superseded_count,
                time_str(a.superseded_at)
            )
        },
    ]
    .join("\n")
}

/// `agent list|show|ban|evict`
pub async fn agent(
    socket: Option<&Path>,
    action: &str,
    id: Option<&str>,
    output: Output,
) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    if action == "list" {
        let list = c
            .list_agents(pb::Empty {})
            .await
            .map_err(status)?
            .into_inner();
        let text = if list.agents.is_empty() {
            "No attested agents.".to_string()
        } else {
            list.agents
                .iter()
                .map(agent_text)
                .collect::<Vec<_>>()
                .join("\n\n")
        };
        print(
            output,
            text,
            Value::Array(list.agents.iter().map(agent_json).collect()),
        );
        return Ok(ExitCode::SUCCESS);
    }
    let req = pb::AgentId {
        spiffe_id: id.unwrap_or_default().to_string(),
    };
    let a = match action {
        "show" => c.get_agent(req).await,
        "ban" => c.ban_agent(req).await,
        _ => c.evict_agent(req).await,
    }
    .map_err(status)?
    .into_inner();
    let text = match action {
        "ban" => format!("Banned agent {}", a.spiffe_id),
        "evict" => format!("Evicted agent {}; it must attest again", a.spiffe_id),
        _ => agent_text(&a),
    };
    print(output, text, agent_json(&a));
    Ok(ExitCode::SUCCESS)
}

pub async fn bundle_show(
    socket: Option<&Path>,
    format: &str,
    output: Output,
) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    let b = c
        .get_bundle(pb::Empty {})
        .await
        .map_err(status)?
        .into_inner();
    match (format, output) {
        (_, Output::Json) | ("jwks", _) => println!("{}", b.jwks),
        _ => print!("{}", b.pem),
    }
    Ok(ExitCode::SUCCESS)
}
