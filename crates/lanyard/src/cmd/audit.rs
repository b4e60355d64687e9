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
    /// The audit public key (hex), if not in DATA_DIR/audit-key.pub.
    #[arg(long)]
    pub public_key: Option<PathBuf>,
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

fn public_key(src: &Source) -> Result<Vec<u8>, String> {
    let path = match (&src.public_key, &src.data_dir) {
        (Some(p), _) => p.clone(),
        (None, Some(d)) => d.join("audit-key.pub"),
        (None, None) => {
            return Err("give --data-dir or --public-key to verify signatures".to_string());
        }
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let t = text.trim();
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(t.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| format!("{} is not a hex public key", path.display()))
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
    let key = public_key(src)?;
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
    match lanyard_audit::verify(&records, &checkpoints, &key) {
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
