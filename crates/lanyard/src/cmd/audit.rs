//! `lanyard audit verify|query|trace|export`: read the evidence log straight from the
//! datastore (SQLite in the data dir, or PostgreSQL) and check it with the audit
//! public key kept in the data dir.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lanyard_audit::{Checkpoint, Record};
use lanyard_store::{AnyStore, Store};
use serde_json::json;

use crate::Output;

/// Where the log is.
#[derive(Debug, Clone, clap::Args)]
pub struct Source {
    /// The server's data dir (holds the SQLite database and audit-key.pub).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL URL, when the server uses one.
    #[arg(long, env = "LANYARD_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The checkpoint file the server appends to (--audit-checkpoint-file).
    #[arg(long)]
    pub checkpoint_file: Option<PathBuf>,
    /// An audit public key file (hex, as the server writes DATA_DIR/audit-key.pub);
    /// repeat it for every server writing to a shared database. Default:
    /// DATA_DIR/audit-key.pub.
    #[arg(long)]
    pub public_key: Vec<PathBuf>,
    /// A file of pinned audit public keys, one hex key per line (`#` comments):
    /// every server's, for a shared database.
    #[arg(long)]
    pub keys_file: Option<PathBuf>,
}

async fn open(src: &Source) -> Result<AnyStore, String> {
    match (&src.database_url, &src.data_dir) {
        (Some(url), _) => AnyStore::open(url).await.map_err(|e| e.to_string()),
        (None, Some(dir)) => {
            let db = dir.join("lanyard.db");
            if !db.exists() {
                return Err(format!(
                    "{} does not exist; is {} a Lanyard data dir?",
                    db.display(),
                    dir.display()
                ));
            }
            AnyStore::open(&db.to_string_lossy())
                .await
                .map_err(|e| e.to_string())
        }
        (None, None) => Err("give --data-dir DIR (or --database-url)".to_string()),
    }
}

fn hex_key(text: &str, what: &str) -> Result<Vec<u8>, String> {
    let t = text.trim();
    if t.is_empty() || !t.len().is_multiple_of(2) {
        return Err(format!("{what} is not a hex public key"));
    }
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(t.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| format!("{what} is not a hex public key"))
}

fn read_text(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The pinned audit public keys: every `--public-key` file and `--keys-file` line,
/// or DATA_DIR/audit-key.pub.
fn public_keys(src: &Source) -> Result<Vec<Vec<u8>>, String> {
    let mut keys = Vec::new();
    for p in &src.public_key {
        keys.push(hex_key(&read_text(p)?, &p.display().to_string())?);
    }
    if let Some(f) = &src.keys_file {
        for (i, line) in read_text(f)?.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if !line.is_empty() {
                keys.push(hex_key(line, &format!("{} line {}", f.display(), i + 1))?);
            }
        }
    }
    if keys.is_empty() {
        let Some(d) = &src.data_dir else {
            return Err(
                "give --data-dir, --public-key or --keys-file to verify signatures".to_string(),
            );
        };
        let p = d.join("audit-key.pub");
        keys.push(hex_key(&read_text(&p)?, &p.display().to_string())?);
    }
    Ok(keys)
}

fn file_checkpoints(path: &Path) -> Result<Vec<Checkpoint>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))
        })
        .collect()
}

pub async fn verify(src: &Source) -> Result<ExitCode, String> {
    let store = open(src).await?;
    let keys = public_keys(src)?;
    let records = match store.audit_records().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("audit log INVALID: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut checkpoints = store.audit_checkpoints().await.map_err(|e| e.to_string())?;
    if let Some(f) = &src.checkpoint_file {
        checkpoints.extend(file_checkpoints(f)?);
    }
    match lanyard_audit::verify_with_keys(&records, &checkpoints, &keys) {
        Ok(s) => {
            println!(
                "audit log intact: {} events, {} checkpoints verified, head {}",
                s.events, s.checkpoints, s.head
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("audit log INVALID: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn matches(
    r: &Record,
    subject: &Option<String>,
    kind: &Option<String>,
    since_ms: Option<i64>,
    trace: &Option<String>,
) -> bool {
    let k = serde_json::to_value(r.event.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    subject.as_ref().is_none_or(|s| {
        r.event.subject.as_deref() == Some(s.as_str())
            || r.event.actor.as_deref() == Some(s.as_str())
    }) && kind.as_ref().is_none_or(|want| &k == want)
        && since_ms.is_none_or(|t| r.event.time >= t)
        && trace
            .as_ref()
            .is_none_or(|t| r.event.trace_id.as_deref() == Some(t.as_str()))
}

pub async fn query(
    src: &Source,
    subject: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    trace: Option<String>,
    output: Output,
) -> Result<ExitCode, String> {
    let since_ms = match since {
        None => None,
        Some(s) => {
            let d =
                lanyard_core::duration::parse_duration(&s).map_err(|e| format!("--since: {e}"))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| e.to_string())?;
            Some(i64::try_from(now.saturating_sub(d).as_millis()).unwrap_or(0))
        }
    };
    let store = open(src).await?;
    let records = store.audit_records().await.map_err(|e| e.to_string())?;
    let hits: Vec<&Record> = records
        .iter()
        .filter(|r| matches(r, &subject, &kind, since_ms, &trace))
        .collect();
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &hits
                    .iter()
                    .map(|r| json!({"seq": r.seq, "hash": r.hash, "event": r.event}))
                    .collect::<Vec<_>>()
            )
            .unwrap_or_default()
        ),
        Output::Text => {
            for r in &hits {
                let e = &r.event;
                let kind = serde_json::to_value(e.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let evidence = serde_json::to_string(&e.evidence).unwrap_or_default();
                println!(
                    "#{:<5} {} {:<20} {:?} subject={} actor={} owner={} {}",
                    r.seq,
                    e.time,
                    kind,
                    e.outcome,
                    e.subject.as_deref().unwrap_or("-"),
                    e.actor.as_deref().unwrap_or("-"),
                    e.owner.as_deref().unwrap_or("-"),
                    evidence
                );
            }
            if hits.is_empty() {
                println!("No matching events.");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn export(src: &Source) -> Result<ExitCode, String> {
    let store = open(src).await?;
    for r in store.audit_records().await.map_err(|e| e.to_string())? {
        println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
    }
    Ok(ExitCode::SUCCESS)
}
