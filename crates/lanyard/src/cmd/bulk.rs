//! Many entries at once: `lanyard entry create --file` and `lanyard entry import
//! --spire`. Both read every entry of the file on its own (one that does not parse
//! is reported as malformed with its index, the rest go on), leave out entries
//! that already exist identically (unchanged), send the rest in batches of at most
//! `MAX_ENTRY_BATCH` to `BatchCreateEntry` (each decided by registration policy on
//! the server) and report every entry that was not created, with a summary line
//! `created N, unchanged N, refused N, malformed N`. The exit code is 1 when
//! anything was refused or malformed.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use lanyard_core::{Selector, SpiffeId};
use lanyard_proto::admin as pb;
use serde_json::{Value, json};

use super::admin::{connect, status};
use super::spire;
use crate::Output;

/// What became of one entry of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// `--update`: an entry of the same identity was changed to match.
    Updated,
    /// `--dry-run`: it would be sent.
    WouldCreate,
    WouldUpdate,
    Unchanged,
    Refused,
    Malformed,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::WouldCreate => "would_create",
            Self::WouldUpdate => "would_update",
            Self::Unchanged => "unchanged",
            Self::Refused => "refused",
            Self::Malformed => "malformed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemReport {
    /// Index in the file's entries array.
    pub index: usize,
    pub outcome: Outcome,
    pub spiffe_id: String,
    /// The created entry's id, or the existing identical one's.
    pub id: String,
    pub reason: String,
    /// Deciding registration policies (created or refused by policy).
    pub policy_ids: Vec<String>,
}

impl ItemReport {
    fn new(index: usize, outcome: Outcome, spiffe_id: &str, reason: impl Into<String>) -> Self {
        Self {
            index,
            outcome,
            spiffe_id: spiffe_id.to_string(),
            id: String::new(),
            reason: reason.into(),
            policy_ids: Vec::new(),
        }
    }
}

/// One entry of the file as read: an entry to create, or already a report.
pub type Input = Result<pb::Entry, ItemReport>;

/// The identity of an entry: SPIFFE ID, parent and the selector set.
fn identity(e: &pb::Entry) -> (String, String, Vec<String>) {
    let mut s = e.selectors.clone();
    s.sort();
    s.dedup();
    (e.spiffe_id.clone(), e.parent_id.clone(), s)
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

/// The fields in which `a` (from the file) and `b` (stored) differ, by name.
fn differences(a: &pb::Entry, b: &pb::Entry) -> Vec<&'static str> {
    let mut d = Vec::new();
    let mut check = |same: bool, name| {
        if !same {
            d.push(name);
        }
    };
    check(a.owner.trim() == b.owner.trim(), "owner");
    check(a.environment.trim() == b.environment.trim(), "environment");
    check(a.x509_ttl_seconds == b.x509_ttl_seconds, "x509_ttl");
    check(a.jwt_ttl_seconds == b.jwt_ttl_seconds, "jwt_ttl");
    check(a.dns_names == b.dns_names, "dns_names");
    check(a.hint.trim() == b.hint.trim(), "hint");
    check(a.admin == b.admin, "admin");
    check(a.downstream == b.downstream, "downstream");
    check(a.expires_at == b.expires_at, "expires_at");
    check(
        sorted(&a.federates_with) == sorted(&b.federates_with),
        "federates_with",
    );
    d
}

/// How a file is applied.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Read and compare, write nothing.
    pub dry_run: bool,
    /// Change a stored entry of the same identity whose other fields differ
    /// (otherwise it is refused).
    pub update: bool,
}

/// A change to send, with the index of its entry in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Create(pb::Entry),
    Update(pb::UpdateEntryRequest),
}

impl Change {
    fn spiffe_id(&self) -> &str {
        match self {
            Self::Create(e) => &e.spiffe_id,
            Self::Update(u) => u.entry.as_ref().map_or("", |e| e.spiffe_id.as_str()),
        }
    }
}

/// Split the inputs into changes to send (creates first, then updates, each with
/// its index) and reports of the rest: an entry identical to a stored one (or to
/// an earlier one of the file) is unchanged; one with the same SPIFFE ID, parent
/// and selectors as a stored one but other fields is an update with `update`, else
/// refused naming the fields (as is one that differs from an earlier one of the
/// file).
pub fn plan(
    existing: &[pb::Entry],
    inputs: Vec<Input>,
    update: bool,
) -> (Vec<(usize, Change)>, Vec<ItemReport>) {
    let mut known: HashMap<_, (String, pb::Entry)> = existing
        .iter()
        .map(|e| (identity(e), (e.id.clone(), e.clone())))
        .collect();
    let mut send = Vec::new();
    let mut updates = Vec::new();
    let mut reports = Vec::new();
    for (index, input) in inputs.into_iter().enumerate() {
        let e = match input {
            Ok(e) => e,
            Err(r) => {
                reports.push(r);
                continue;
            }
        };
        let key = identity(&e);
        match known.get(&key) {
            Some((id, stored)) => {
                let diff = differences(&e, stored);
                if diff.is_empty() {
                    let mut r = ItemReport::new(index, Outcome::Unchanged, &e.spiffe_id, "");
                    r.id = id.clone();
                    reports.push(r);
                } else if update && !id.is_empty() {
                    let change = pb::UpdateEntryRequest {
                        entry: Some(pb::Entry {
                            id: id.clone(),
                            ..e.clone()
                        }),
                        expected_revision: stored.revision,
                    };
                    let id = id.clone();
                    known.insert(key, (id, e));
                    updates.push((index, Change::Update(change)));
                } else {
                    let what = if id.is_empty() {
                        "an earlier entry of this file".to_string()
                    } else {
                        format!("entry {id}")
                    };
                    reports.push(ItemReport::new(
                        index,
                        Outcome::Refused,
                        &e.spiffe_id,
                        format!(
                            "{what} has the same SPIFFE ID, parent and selectors but a different {}; pass --update to change it, or change it with `lanyard entry update`",
                            diff.join(", ")
                        ),
                    ));
                }
            }
            None => {
                known.insert(key, (String::new(), e.clone()));
                send.push((index, Change::Create(e)));
            }
        }
    }
    send.extend(updates);
    (send, reports)
}

/// The server's verdict on one sent entry.
fn report_of(index: usize, sent: &Change, r: pb::EntryResult) -> ItemReport {
    let code = tonic::Code::from(r.code);
    let done = match sent {
        Change::Create(_) => Outcome::Created,
        Change::Update(_) => Outcome::Updated,
    };
    let (outcome, reason) = match code {
        tonic::Code::Ok => (done, String::new()),
        // The server's sentence names the policy: "refused by registration
        // policy \"id\": reason".
        tonic::Code::PermissionDenied => (Outcome::Refused, r.message.clone()),
        tonic::Code::InvalidArgument => (Outcome::Refused, format!("invalid: {}", r.message)),
        _ => (Outcome::Refused, r.message.clone()),
    };
    ItemReport {
        index,
        outcome,
        spiffe_id: sent.spiffe_id().to_string(),
        id: r.entry.map(|e| e.id).unwrap_or_default(),
        reason,
        policy_ids: r.policy_ids,
    }
}

/// A one-line progress bar on stderr, only when stderr is a terminal.
struct Progress {
    total: usize,
    enabled: bool,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self {
            total,
            enabled: total > 0 && std::io::stderr().is_terminal(),
        }
    }

    fn show(&self, done: usize) {
        if !self.enabled {
            return;
        }
        const WIDTH: usize = 30;
        let filled = (done * WIDTH).checked_div(self.total).unwrap_or(WIDTH);
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r[{}{}] {done}/{} entries",
            "#".repeat(filled),
            " ".repeat(WIDTH - filled.min(WIDTH)),
            self.total
        );
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.enabled {
            let _ = write!(std::io::stderr(), "\r{}\r", " ".repeat(60));
        }
    }
}

/// Notes printed with the report (unknown fields, re-parented aliases).
#[derive(Debug, Default)]
pub struct Notes(pub Vec<String>);

/// Plan, send (unless `dry_run`) and report. The exit code is 1 when anything was
/// refused or malformed.
pub async fn apply(
    socket: Option<&Path>,
    inputs: Vec<Input>,
    notes: Notes,
    opts: Options,
    output: Output,
) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    let reports = run(&mut c, inputs, opts, true).await?;
    Ok(print_report(&reports, &notes, opts, output))
}

/// Send one batch of changes of one kind.
async fn send_batch(
    c: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    chunk: &[(usize, Change)],
) -> Result<Vec<pb::EntryResult>, tonic::Status> {
    let creates: Vec<pb::Entry> = chunk
        .iter()
        .filter_map(|(_, ch)| match ch {
            Change::Create(e) => Some(e.clone()),
            Change::Update(_) => None,
        })
        .collect();
    let resp = if creates.is_empty() {
        let entries = chunk
            .iter()
            .filter_map(|(_, ch)| match ch {
                Change::Update(u) => Some(u.clone()),
                Change::Create(_) => None,
            })
            .collect();
        c.batch_update_entry(pb::BatchUpdateEntryRequest { entries })
            .await?
    } else {
        c.batch_create_entry(pb::BatchCreateEntryRequest { entries: creates })
            .await?
    };
    Ok(resp.into_inner().results)
}

/// Plan and send (unless `dry_run`); every input's report, in file order.
pub async fn run(
    c: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    inputs: Vec<Input>,
    opts: Options,
    show_progress: bool,
) -> Result<Vec<ItemReport>, String> {
    let existing = c
        .list_entries(pb::ListEntriesRequest::default())
        .await
        .map_err(status)?
        .into_inner()
        .entries;
    let (send, mut reports) = plan(&existing, inputs, opts.update);
    if opts.dry_run {
        reports.extend(send.iter().map(|(i, ch)| {
            let would = match ch {
                Change::Create(_) => Outcome::WouldCreate,
                Change::Update(_) => Outcome::WouldUpdate,
            };
            ItemReport::new(*i, would, ch.spiffe_id(), "")
        }));
    } else {
        let progress = Progress::new(if show_progress { send.len() } else { 0 });
        let mut done = 0;
        progress.show(0);
        // Creates and updates go in separate batches (creates come first).
        let split = send
            .iter()
            .position(|(_, ch)| matches!(ch, Change::Update(_)))
            .unwrap_or(send.len());
        let (creates, updates) = send.split_at(split);
        let chunks = creates
            .chunks(pb::MAX_ENTRY_BATCH)
            .chain(updates.chunks(pb::MAX_ENTRY_BATCH));
        for chunk in chunks {
            match send_batch(c, chunk).await {
                Ok(results) => {
                    for ((i, ch), r) in chunk.iter().zip(results) {
                        reports.push(report_of(*i, ch, r));
                    }
                }
                Err(s) => {
                    for (i, ch) in chunk {
                        reports.push(ItemReport::new(
                            *i,
                            Outcome::Refused,
                            ch.spiffe_id(),
                            format!("not written (the whole batch failed): {}", s.message()),
                        ));
                    }
                }
            }
            done += chunk.len();
            progress.show(done);
        }
        progress.finish();
    }
    reports.sort_by_key(|r| r.index);
    Ok(reports)
}

fn count(reports: &[ItemReport], o: Outcome) -> usize {
    reports.iter().filter(|r| r.outcome == o).count()
}

fn print_report(reports: &[ItemReport], notes: &Notes, opts: Options, output: Output) -> ExitCode {
    let created = count(reports, Outcome::Created);
    let updated = count(reports, Outcome::Updated);
    let would = count(reports, Outcome::WouldCreate);
    let would_update = count(reports, Outcome::WouldUpdate);
    let unchanged = count(reports, Outcome::Unchanged);
    let refused = count(reports, Outcome::Refused);
    let malformed = count(reports, Outcome::Malformed);
    let summary = match (opts.dry_run, opts.update) {
        (true, false) => format!(
            "dry run, nothing written: would create {would}, unchanged {unchanged}, refused {refused}, malformed {malformed} (registration policy is decided only when the entries are sent)"
        ),
        (true, true) => format!(
            "dry run, nothing written: would create {would}, would update {would_update}, unchanged {unchanged}, refused {refused}, malformed {malformed} (registration policy is decided only when the entries are sent)"
        ),
        (false, false) => format!(
            "created {created}, unchanged {unchanged}, refused {refused}, malformed {malformed}"
        ),
        (false, true) => format!(
            "created {created}, updated {updated}, unchanged {unchanged}, refused {refused}, malformed {malformed}"
        ),
    };
    match output {
        Output::Text => {
            let mut err = std::io::stderr().lock();
            for r in reports {
                match r.outcome {
                    Outcome::Refused => {
                        let _ = writeln!(
                            err,
                            "refused   entries[{}] {}: {}",
                            r.index, r.spiffe_id, r.reason
                        );
                    }
                    Outcome::Malformed => {
                        let _ = writeln!(err, "malformed entries[{}]: {}", r.index, r.reason);
                    }
                    _ => {}
                }
            }
            for n in &notes.0 {
                let _ = writeln!(err, "note: {n}");
            }
            drop(err);
            println!("{summary}");
        }
        Output::Json => {
            let items: Vec<Value> = reports
                .iter()
                .map(|r| {
                    json!({
                        "index": r.index,
                        "outcome": r.outcome.name(),
                        "spiffe_id": (!r.spiffe_id.is_empty()).then_some(&r.spiffe_id),
                        "id": (!r.id.is_empty()).then_some(&r.id),
                        "reason": (!r.reason.is_empty()).then_some(&r.reason),
                        "policy_ids": r.policy_ids,
                    })
                })
                .collect();
            let v = json!({
                "dry_run": opts.dry_run,
                "created": created,
                "updated": updated,
                "would_create": would,
                "would_update": would_update,
                "unchanged": unchanged,
                "refused": refused,
                "malformed": malformed,
                "notes": notes.0,
                "entries": items,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            );
        }
    }
    if refused + malformed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn read_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// An entry of a `lanyard entry create --file` file: the shape `lanyard entry show
/// -o json` prints (its id, revision and times are ignored).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    spiffe_id: String,
    parent_id: String,
    #[serde(default)]
    selectors: Vec<String>,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    x509_ttl_seconds: u64,
    #[serde(default)]
    jwt_ttl_seconds: u64,
    #[serde(default)]
    dns_names: Vec<String>,
    #[serde(default)]
    hint: Option<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    downstream: bool,
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    federates_with: Vec<String>,
    // Printed by `entry show`, ignored here.
    #[serde(default, rename = "id")]
    _id: Option<Value>,
    #[serde(default, rename = "revision")]
    _revision: Option<Value>,
    #[serde(default, rename = "created_at")]
    _created_at: Option<Value>,
    #[serde(default, rename = "updated_at")]
    _updated_at: Option<Value>,
}

/// Check what the client can: the IDs and selectors parse.
fn checked(index: usize, e: pb::Entry) -> Input {
    let malformed =
        |reason: String| ItemReport::new(index, Outcome::Malformed, &e.spiffe_id, reason);
    for (field, v) in [("spiffe_id", &e.spiffe_id), ("parent_id", &e.parent_id)] {
        if let Err(err) = SpiffeId::new(v) {
            return Err(malformed(format!("{field} {v:?}: {err}")));
        }
    }
    if e.selectors.is_empty() {
        return Err(malformed(
            "it has no selectors; every entry needs at least one, e.g. \"unix:uid:1000\"".into(),
        ));
    }
    for s in &e.selectors {
        if let Err(err) = Selector::new(s) {
            return Err(malformed(format!("selector {s:?}: {err}")));
        }
    }
    Ok(e)
}

/// Read a `lanyard entry create --file` document: a JSON array of entries or
/// `{"entries": [...]}`.
pub fn read_lanyard_file(text: &str) -> Result<Vec<Input>, String> {
    let doc: Value =
        serde_json::from_str(text).map_err(|e| format!("the file is not JSON: {e}"))?;
    let items = match doc {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove("entries") {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(
                    "expected a JSON array of entries or {\"entries\": [...]}, as `lanyard entry list -o json` prints"
                        .to_string(),
                );
            }
        },
        _ => return Err("expected a JSON array of entries or {\"entries\": [...]}".to_string()),
    };
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let f: FileEntry = serde_json::from_value(item)
                .map_err(|e| ItemReport::new(index, Outcome::Malformed, "", e.to_string()))?;
            checked(
                index,
                pb::Entry {
                    spiffe_id: f.spiffe_id,
                    parent_id: f.parent_id,
                    selectors: f.selectors,
                    owner: f.owner,
                    environment: f.environment.unwrap_or_default(),
                    x509_ttl_seconds: f.x509_ttl_seconds,
                    jwt_ttl_seconds: f.jwt_ttl_seconds,
                    dns_names: f.dns_names,
                    hint: f.hint.unwrap_or_default(),
                    admin: f.admin,
                    downstream: f.downstream,
                    expires_at: f.expires_at.unwrap_or(0),
                    federates_with: f.federates_with,
                    ..Default::default()
                },
            )
        })
        .collect())
}

/// `lanyard entry create --file FILE`
pub async fn create_from_file(
    socket: Option<&Path>,
    file: &Path,
    opts: Options,
    output: Output,
) -> Result<ExitCode, String> {
    let inputs =
        read_lanyard_file(&read_file(file)?).map_err(|e| format!("{}: {e}", file.display()))?;
    apply(socket, inputs, Notes::default(), opts, output).await
}

/// The SPIRE file read into inputs with `owner`/`environment` set, and its notes.
pub fn spire_inputs(read: spire::ReadFile, owner: &str, environment: &str) -> (Vec<Input>, Notes) {
    let mut notes = Vec::new();
    if !read.unknown_fields.is_empty() {
        let total: usize = read.unknown_fields.values().sum();
        let list: Vec<String> = read
            .unknown_fields
            .iter()
            .map(|(k, n)| format!("{k} ({n})"))
            .collect();
        notes.push(format!(
            "{total} unknown field{} ignored: {}",
            if total == 1 { "" } else { "s" },
            list.join(", ")
        ));
    }
    if read.reparented > 0 {
        notes.push(format!(
            "{} node entr{} parented to SPIRE's server (/spire/server) became node alias definitions under the Lanyard server (/lanyard/server)",
            read.reparented,
            if read.reparented == 1 { "y" } else { "ies" }
        ));
    }
    let inputs = read
        .entries
        .into_iter()
        .enumerate()
        .map(|(index, r)| match r {
            spire::Read::Entry(mut e) => {
                e.owner = owner.to_string();
                e.environment = environment.to_string();
                checked(index, *e)
            }
            spire::Read::Malformed(reason) => {
                Err(ItemReport::new(index, Outcome::Malformed, "", reason))
            }
            spire::Read::Unsupported { entry, reason } => Err(ItemReport::new(
                index,
                Outcome::Refused,
                &entry.spiffe_id,
                format!("not imported: {reason}"),
            )),
        })
        .collect();
    (inputs, Notes(notes))
}

/// `lanyard entry import --spire FILE --owner TEAM [--environment E] [--dry-run]`
pub async fn import_spire(
    socket: Option<&Path>,
    file: &Path,
    owner: &str,
    environment: Option<&str>,
    opts: Options,
    output: Output,
) -> Result<ExitCode, String> {
    if owner.trim().is_empty() {
        return Err("--owner is required: every imported identity gets an owner (a team or person), e.g. --owner payments-team".to_string());
    }
    let read = spire::read(&read_file(file)?).map_err(|e| format!("{}: {e}", file.display()))?;
    let (inputs, notes) = spire_inputs(read, owner, environment.unwrap_or(""));
    apply(socket, inputs, notes, opts, output).await
}

/// Counts by outcome, for tests and callers.
pub fn tally(reports: &[ItemReport]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for r in reports {
        *m.entry(r.outcome.name()).or_default() += 1;
    }
    m
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn e(path: &str, sel: &[&str]) -> pb::Entry {
        pb::Entry {
            spiffe_id: format!("spiffe://example.org{path}"),
            parent_id: "spiffe://example.org/agent/a".into(),
            selectors: sel.iter().map(|s| s.to_string()).collect(),
            owner: "team".into(),
            ..Default::default()
        }
    }

    #[test]
    fn identical_entries_are_unchanged_and_different_ones_refused() {
        let mut stored = e("/a", &["unix:uid:1", "unix:gid:2"]);
        stored.id = "0".repeat(32);
        let mut other_owner = e("/a", &["unix:gid:2", "unix:uid:1"]);
        other_owner.owner = "else".into();
        let inputs = vec![
            Ok(e("/a", &["unix:gid:2", "unix:uid:1"])),
            Ok(other_owner),
            Ok(e("/b", &["unix:uid:1"])),
            Ok(e("/b", &["unix:uid:1"])),
            Err(ItemReport::new(4, Outcome::Malformed, "", "bad")),
        ];
        let (send, reports) = plan(std::slice::from_ref(&stored), inputs.clone(), false);
        assert_eq!(send.len(), 1);
        assert_eq!(send[0].0, 2);
        let t = tally(&reports);
        assert_eq!(t.get("unchanged"), Some(&2), "{reports:?}");
        assert_eq!(t.get("refused"), Some(&1));
        assert_eq!(t.get("malformed"), Some(&1));
        let refused = reports
            .iter()
            .find(|r| r.outcome == Outcome::Refused)
            .unwrap();
        assert!(refused.reason.contains("owner"), "{}", refused.reason);
        assert_eq!(reports[0].id, "0".repeat(32));

        // With --update, the differing one becomes an update at the stored revision.
        stored.revision = 4;
        let (send, reports) = plan(&[stored], inputs, true);
        assert_eq!(send.len(), 2);
        match &send[1] {
            (1, Change::Update(u)) => {
                assert_eq!(u.expected_revision, 4);
                let e = u.entry.as_ref().unwrap();
                assert_eq!(
                    (e.id.as_str(), e.owner.as_str()),
                    ("0".repeat(32).as_str(), "else")
                );
            }
            other => panic!("expected the update of entries[1], got {other:?}"),
        }
        assert_eq!(tally(&reports).get("refused"), None, "{reports:?}");
    }

    #[test]
    fn lanyard_files_accept_the_list_output_shape() {
        let text = r#"[
          {"id": "abc", "spiffe_id": "spiffe://example.org/a", "parent_id": "spiffe://example.org/agent/a",
           "selectors": ["unix:uid:1"], "owner": "t", "environment": null, "x509_ttl_seconds": 60,
           "jwt_ttl_seconds": 0, "dns_names": [], "hint": null, "admin": false, "expires_at": null,
           "revision": 1, "created_at": 1, "updated_at": 1, "federates_with": ["partner.example"]},
          {"spiffe_id": "spiffe://example.org/b", "parent_id": "spiffe://example.org/agent/a", "selector": ["x"]},
          {"spiffe_id": "not-an-id", "parent_id": "spiffe://example.org/agent/a", "selectors": ["unix:uid:1"]},
          {"spiffe_id": "spiffe://example.org/c", "parent_id": "spiffe://example.org/agent/a", "selectors": ["nocolon"]}
        ]"#;
        let inputs = read_lanyard_file(text).unwrap();
        let a = inputs[0].as_ref().unwrap();
        assert_eq!(a.x509_ttl_seconds, 60);
        assert_eq!(a.federates_with, ["partner.example"]);
        let bad = |i: usize| inputs[i].as_ref().unwrap_err().reason.clone();
        assert!(bad(1).contains("unknown field `selector`"), "{}", bad(1));
        assert!(bad(2).contains("spiffe_id"), "{}", bad(2));
        assert!(bad(3).contains("selector"), "{}", bad(3));
        let wrapped = read_lanyard_file(r#"{"entries": []}"#).unwrap();
        assert!(wrapped.is_empty());
        assert!(read_lanyard_file("3").is_err());
    }

    #[test]
    fn spire_inputs_carry_owner_and_report_unsupported() {
        let read = spire::read(
            r#"{"entries": [
              {"spiffe_id": "spiffe://example.org/a", "parent_id": "spiffe://example.org/spire/server",
               "selectors": [{"type": "unix", "value": "uid:1"}], "extra": 1},
              {"spiffe_id": "spiffe://example.org/s", "parent_id": "spiffe://example.org/x",
               "selectors": [{"type": "unix", "value": "uid:1"}], "store_svid": true},
              {"spiffe_id": "bad"}
            ]}"#,
        )
        .unwrap();
        let (inputs, notes) = spire_inputs(read, "team", "prod");
        let a = inputs[0].as_ref().unwrap();
        assert_eq!((a.owner.as_str(), a.environment.as_str()), ("team", "prod"));
        let s = inputs[1].as_ref().unwrap_err();
        assert_eq!(s.outcome, Outcome::Refused);
        assert!(s.reason.contains("store_svid"));
        let m = inputs[2].as_ref().unwrap_err();
        assert_eq!((m.outcome, m.index), (Outcome::Malformed, 2));
        assert_eq!(notes.0.len(), 2, "{notes:?}");
        assert!(notes.0[0].contains("extra (1)"));
    }
}
