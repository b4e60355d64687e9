//! Reading SPIRE's registration-entry JSON (pure: no I/O) into Lanyard entries.
//!
//! Two shapes are accepted as SPIRE writes them:
//! - `spire-server entry show -output json`: protobuf JSON of `ListEntriesResponse`
//!   (`spire.api.types.Entry` with proto field names): `{"entries": [{"id",
//!   "spiffe_id": {"trust_domain", "path"}, "parent_id": {…}, "selectors": [{"type",
//!   "value"}], "x509_svid_ttl", "jwt_svid_ttl", "federates_with", "admin",
//!   "downstream", "expires_at", "dns_names", "revision_number", "store_svid",
//!   "hint", "created_at"}], "next_page_token"}`; 64-bit numbers may be strings.
//! - `spire-server entry create -data FILE`: `{"entries": [{"spiffe_id":
//!   "spiffe://…", "parent_id": "spiffe://…", "selectors": [{"type", "value"}],
//!   "x509_svid_ttl" (formerly "ttl"), "jwt_svid_ttl", "federates_with", "admin",
//!   "downstream", "entryExpiry", "dns_names", "hint", "store_svid",
//!   "entry_id"}]}` (`spire.common.RegistrationEntry`).
//!
//! SPIFFE IDs may be strings or `{trust_domain, path}` objects in either shape.
//! Each entry is read on its own: one that does not parse is reported with its
//! index and the reason, and the others are still read.

use std::collections::BTreeMap;

use lanyard_core::{Selector, SpiffeId, TrustDomain};
use lanyard_proto::admin as pb;
use serde_json::Value;

/// SPIRE's server ID path; entries parented to it define node aliases, which in
/// Lanyard are parented to the Lanyard server (`/lanyard/server`).
const SPIRE_SERVER_PATH: &str = "/spire/server";
const LANYARD_SERVER_PATH: &str = "/lanyard/server";

/// Fields that describe a SPIRE entry's bookkeeping, not the identity: read and
/// dropped without a warning (Lanyard assigns its own id and revisions).
const BOOKKEEPING: &[&str] = &["id", "entry_id", "revision_number", "created_at"];

/// One entry of the file as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    /// A Lanyard entry (owner and environment still to be set by the caller).
    Entry(Box<pb::Entry>),
    /// It cannot be imported: the reason.
    Malformed(String),
    /// It parses but asks for what Lanyard does not do: the reason.
    Unsupported {
        entry: Box<pb::Entry>,
        reason: String,
    },
}

/// The whole file as read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadFile {
    /// In file order; index i is `entries[i]` of the file.
    pub entries: Vec<Read>,
    /// Unknown field name -> how many entries had it (ignored).
    pub unknown_fields: BTreeMap<String, usize>,
    /// Entries whose parent was SPIRE's server, re-parented to Lanyard's.
    pub reparented: usize,
}

/// Why the file as a whole cannot be read (nothing is imported).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpireFileError {
    #[error("the file is not JSON: {0}")]
    NotJson(String),
    #[error(
        "the file has no \"entries\" array; expected the output of `spire-server entry show -output json` or a `spire-server entry create -data` file"
    )]
    NoEntries,
}

/// Read a SPIRE entry file.
pub fn read(text: &str) -> Result<ReadFile, SpireFileError> {
    let doc: Value =
        serde_json::from_str(text).map_err(|e| SpireFileError::NotJson(e.to_string()))?;
    let items = match &doc {
        Value::Object(o) => match o.get("entries") {
            Some(Value::Array(a)) => a.as_slice(),
            // `entry show` prints `{}`-like responses without the field when empty.
            None if o.is_empty() || o.keys().all(|k| k == "next_page_token") => &[],
            _ => return Err(SpireFileError::NoEntries),
        },
        Value::Array(a) => a.as_slice(),
        _ => return Err(SpireFileError::NoEntries),
    };
    let mut out = ReadFile::default();
    for item in items {
        let read = match item {
            Value::Object(o) => read_entry(o, &mut out),
            other => Read::Malformed(format!("expected an entry object, found {}", kind(other))),
        };
        out.entries.push(read);
    }
    Ok(out)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

type Obj = serde_json::Map<String, Value>;

fn read_entry(o: &Obj, file: &mut ReadFile) -> Read {
    let mut unsupported = Vec::new();
    for key in o.keys() {
        match key.as_str() {
            "spiffe_id" | "parent_id" | "selectors" | "x509_svid_ttl" | "ttl" | "jwt_svid_ttl"
            | "federates_with" | "admin" | "downstream" | "expires_at" | "entryExpiry"
            | "dns_names" | "hint" => {}
            "store_svid" => {
                if o.get(key).and_then(Value::as_bool).unwrap_or(false) {
                    unsupported.push(
                        "store_svid is set: Lanyard has no SVID store plugins, so this identity would not be delivered where SPIRE delivered it".to_string(),
                    );
                }
            }
            k if BOOKKEEPING.contains(&k) => {}
            k => *file.unknown_fields.entry(k.to_string()).or_default() += 1,
        }
    }
    let entry = match to_entry(o) {
        Ok((e, reparented)) => {
            if reparented {
                file.reparented += 1;
            }
            e
        }
        Err(reason) => return Read::Malformed(reason),
    };
    if unsupported.is_empty() {
        Read::Entry(Box::new(entry))
    } else {
        Read::Unsupported {
            entry: Box::new(entry),
            reason: unsupported.join("; "),
        }
    }
}

fn to_entry(o: &Obj) -> Result<(pb::Entry, bool), String> {
    let spiffe_id = id_field(o, "spiffe_id")?.ok_or("spiffe_id is missing")?;
    let parent = id_field(o, "parent_id")?.ok_or("parent_id is missing")?;
    let (parent, reparented) = if parent.path() == SPIRE_SERVER_PATH {
        let server = SpiffeId::from_parts(parent.trust_domain(), LANYARD_SERVER_PATH)
            .map_err(|e| format!("parent_id: {e}"))?;
        (server, true)
    } else {
        (parent, false)
    };
    let selectors = match o.get("selectors") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, s)| selector(s).map_err(|e| format!("selectors[{i}]: {e}")))
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(format!("selectors: expected an array, found {}", kind(v))),
    };
    if selectors.is_empty() {
        return Err("it has no selectors; every entry needs at least one".to_string());
    }
    let x509 = match o.get("x509_svid_ttl") {
        Some(v) if !v.is_null() => ttl("x509_svid_ttl", v)?,
        _ => o
            .get("ttl")
            .map(|v| ttl("ttl", v))
            .transpose()?
            .unwrap_or(0),
    };
    let jwt = o
        .get("jwt_svid_ttl")
        .map(|v| ttl("jwt_svid_ttl", v))
        .transpose()?
        .unwrap_or(0);
    let expires_at = match o.get("expires_at").or_else(|| o.get("entryExpiry")) {
        None | Some(Value::Null) => 0,
        Some(v) => integer("expires_at", v)?,
    };
    let federates_with = strings(o, "federates_with")?
        .iter()
        .map(|t| {
            TrustDomain::new(t)
                .map(|td| td.to_string())
                .map_err(|e| format!("federates_with {t:?}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    Ok((
        pb::Entry {
            spiffe_id: spiffe_id.to_string(),
            parent_id: parent.to_string(),
            selectors,
            x509_ttl_seconds: x509,
            jwt_ttl_seconds: jwt,
            dns_names: strings(o, "dns_names")?,
            hint: match o.get("hint") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => return Err(format!("hint: expected a string, found {}", kind(v))),
            },
            admin: boolean(o, "admin")?,
            downstream: boolean(o, "downstream")?,
            expires_at,
            federates_with,
            ..Default::default()
        },
        reparented,
    ))
}

/// A SPIFFE ID as a string or as `{"trust_domain", "path"}`.
fn id_field(o: &Obj, field: &str) -> Result<Option<SpiffeId>, String> {
    let text = match o.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.is_empty() => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(id)) => {
            let td = id.get("trust_domain").and_then(Value::as_str).unwrap_or("");
            let path = id.get("path").and_then(Value::as_str).unwrap_or("");
            if td.is_empty() {
                return Err(format!("{field}: trust_domain is missing"));
            }
            if !path.is_empty() && !path.starts_with('/') {
                return Err(format!("{field}: path {path:?} must start with /"));
            }
            format!("spiffe://{td}{path}")
        }
        Some(v) => {
            return Err(format!(
                "{field}: expected a SPIFFE ID string or {{trust_domain, path}}, found {}",
                kind(v)
            ));
        }
    };
    SpiffeId::new(&text)
        .map(Some)
        .map_err(|e| format!("{field} {text:?}: {e}"))
}

fn selector(v: &Value) -> Result<String, String> {
    let (t, val) = match v {
        Value::Object(s) => (
            s.get("type").and_then(Value::as_str).unwrap_or(""),
            s.get("value").and_then(Value::as_str).unwrap_or(""),
        ),
        // Not SPIRE's JSON, but what people write by hand.
        Value::String(s) => s.split_once(':').unwrap_or((s, "")),
        other => return Err(format!("expected {{type, value}}, found {}", kind(other))),
    };
    if t.is_empty() || val.is_empty() {
        return Err(format!(
            "selector {{\"type\": {t:?}, \"value\": {val:?}}} needs both a type and a value, e.g. {{\"type\": \"unix\", \"value\": \"uid:1000\"}}"
        ));
    }
    let text = format!("{t}:{val}");
    Selector::new(&text)
        .map(|s| s.to_string())
        .map_err(|e| format!("{text:?}: {e}"))
}

/// A 64-bit integer as protobuf JSON writes it: a number or a decimal string.
fn integer(field: &str, v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("{field}: {n} is not a whole number")),
        Value::String(s) => s
            .parse()
            .map_err(|_| format!("{field}: {s:?} is not a whole number")),
        other => Err(format!("{field}: expected a number, found {}", kind(other))),
    }
}

fn ttl(field: &str, v: &Value) -> Result<u64, String> {
    if v.is_null() {
        return Ok(0);
    }
    let n = integer(field, v)?;
    u64::try_from(n)
        .map_err(|_| format!("{field}: {n} is negative; give seconds, 0 for the default"))
}

fn boolean(o: &Obj, field: &str) -> Result<bool, String> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(format!(
            "{field}: expected true or false, found {}",
            kind(v)
        )),
    }
}

fn strings(o: &Obj, field: &str) -> Result<Vec<String>, String> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "{field}[{i}]: expected a string, found {}",
                    kind(other)
                )),
            })
            .collect(),
        Some(v) => Err(format!(
            "{field}: expected an array of strings, found {}",
            kind(v)
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn entry(r: &Read) -> &pb::Entry {
        match r {
            Read::Entry(e) => e,
            other => panic!("expected an entry, got {other:?}"),
        }
    }

    fn malformed(r: &Read) -> &str {
        match r {
            Read::Malformed(m) => m,
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    /// What `spire-server entry show -output json` prints (protojson, proto names,
    /// unpopulated fields emitted, int64 as strings).
    const SHOW: &str = r#"{
      "entries": [
        {
          "id": "4e6bb6e2-5e5c-4a11-8c7d-0b4c6e9d8a01",
          "spiffe_id": {"trust_domain": "example.org", "path": "/web"},
          "parent_id": {"trust_domain": "example.org", "path": "/spire/agent/join_token/abc"},
          "selectors": [{"type": "unix", "value": "uid:1000"}, {"type": "unix", "value": "gid:50"}],
          "x509_svid_ttl": 3600,
          "federates_with": ["partner.example", "spiffe://other.example"],
          "admin": true,
          "downstream": false,
          "expires_at": "1900000000",
          "dns_names": ["web.example.org"],
          "revision_number": "3",
          "store_svid": false,
          "jwt_svid_ttl": 300,
          "hint": "web",
          "created_at": "1712345678"
        },
        {
          "id": "node-alias",
          "spiffe_id": {"trust_domain": "example.org", "path": "/nodes/k8s"},
          "parent_id": {"trust_domain": "example.org", "path": "/spire/server"},
          "selectors": [{"type": "k8s_psat", "value": "cluster:prod"}],
          "x509_svid_ttl": 0, "jwt_svid_ttl": 0, "federates_with": [], "admin": false,
          "downstream": false, "expires_at": "0", "dns_names": [], "revision_number": "0",
          "store_svid": false, "hint": "", "created_at": "0",
          "jwt_svid_audience_policies": {}
        }
      ],
      "next_page_token": ""
    }"#;

    #[test]
    fn entry_show_output_maps_every_field() {
        let f = read(SHOW).unwrap();
        assert_eq!(f.entries.len(), 2);
        let e = entry(&f.entries[0]);
        assert_eq!(e.spiffe_id, "spiffe://example.org/web");
        assert_eq!(
            e.parent_id,
            "spiffe://example.org/spire/agent/join_token/abc"
        );
        assert_eq!(e.selectors, ["unix:uid:1000", "unix:gid:50"]);
        assert_eq!((e.x509_ttl_seconds, e.jwt_ttl_seconds), (3600, 300));
        assert_eq!(e.federates_with, ["partner.example", "other.example"]);
        assert!(e.admin && !e.downstream);
        assert_eq!(e.expires_at, 1_900_000_000);
        assert_eq!(e.dns_names, ["web.example.org"]);
        assert_eq!(e.hint, "web");
        assert!(e.owner.is_empty() && e.id.is_empty() && e.revision == 0);
        // The node alias is re-parented to the Lanyard server.
        let alias = entry(&f.entries[1]);
        assert_eq!(alias.parent_id, "spiffe://example.org/lanyard/server");
        assert_eq!(alias.expires_at, 0);
        assert_eq!(f.reparented, 1);
        assert_eq!(
            f.unknown_fields,
            BTreeMap::from([("jwt_svid_audience_policies".to_string(), 1)])
        );
    }

    /// A `spire-server entry create -data` file: string IDs, `entryExpiry`,
    /// the old `ttl`.
    #[test]
    fn entry_create_data_file_maps_every_field() {
        let f = read(
            r#"{"entries": [
              {"spiffe_id": "spiffe://example.org/db", "parent_id": "spiffe://example.org/agent/a1",
               "selectors": [{"type": "unix", "value": "uid:999"}],
               "x509_svid_ttl": 600, "jwt_svid_ttl": 120, "dns_names": ["db.local"],
               "federates_with": ["spiffe://partner.example"], "admin": false,
               "downstream": true, "hint": "db", "entryExpiry": 1900000001, "entry_id": "x"},
              {"spiffe_id": "spiffe://example.org/old", "parent_id": "spiffe://example.org/agent/a1",
               "selectors": [{"type": "unix", "value": "uid:1"}], "ttl": 90}
            ]}"#,
        )
        .unwrap();
        let e = entry(&f.entries[0]);
        assert_eq!(e.spiffe_id, "spiffe://example.org/db");
        assert_eq!((e.x509_ttl_seconds, e.jwt_ttl_seconds), (600, 120));
        assert_eq!(e.expires_at, 1_900_000_001);
        assert_eq!(e.federates_with, ["partner.example"]);
        assert!(e.downstream, "downstream is mapped (the server refuses it)");
        assert_eq!(e.dns_names, ["db.local"]);
        assert_eq!(e.hint, "db");
        assert_eq!(entry(&f.entries[1]).x509_ttl_seconds, 90);
        assert!(f.unknown_fields.is_empty());
        assert_eq!(f.reparented, 0);
    }

    #[test]
    fn a_malformed_entry_is_reported_and_the_rest_are_read() {
        let f = read(
            r#"{"entries": [
              {"spiffe_id": "spiffe://Example.org/x", "parent_id": "spiffe://example.org/a", "selectors": [{"type":"unix","value":"uid:1"}]},
              {"spiffe_id": "spiffe://example.org/ok", "parent_id": "spiffe://example.org/a", "selectors": [{"type":"unix","value":"uid:1"}]},
              {"spiffe_id": "spiffe://example.org/y", "parent_id": "spiffe://example.org/a", "selectors": [{"type":"unix"}]},
              {"spiffe_id": "spiffe://example.org/z", "parent_id": "spiffe://example.org/a", "selectors": []},
              {"spiffe_id": {"path": "/p"}, "parent_id": "spiffe://example.org/a", "selectors": [{"type":"unix","value":"uid:1"}]},
              {"parent_id": "spiffe://example.org/a", "selectors": [{"type":"unix","value":"uid:1"}]},
              {"spiffe_id": "spiffe://example.org/t", "parent_id": "spiffe://example.org/a", "selectors": [{"type":"unix","value":"uid:1"}], "x509_svid_ttl": -5},
              {"spiffe_id": "spiffe://example.org/f", "parent_id": "spiffe://example.org/a", "selectors": [{"type":"unix","value":"uid:1"}], "federates_with": ["bad domain"]},
              "not an entry",
              {"spiffe_id": "spiffe://example.org/s", "parent_id": "spiffe://example.org/a", "selectors": [{"type":"unix","value":"uid:1"}], "store_svid": true}
            ]}"#,
        )
        .unwrap();
        assert_eq!(f.entries.len(), 10);
        assert!(
            malformed(&f.entries[0]).contains("spiffe_id"),
            "{:?}",
            f.entries[0]
        );
        assert_eq!(entry(&f.entries[1]).spiffe_id, "spiffe://example.org/ok");
        assert!(malformed(&f.entries[2]).contains("selectors[0]"));
        assert!(malformed(&f.entries[3]).contains("no selectors"));
        assert!(malformed(&f.entries[4]).contains("trust_domain is missing"));
        assert!(malformed(&f.entries[5]).contains("spiffe_id is missing"));
        assert!(malformed(&f.entries[6]).contains("negative"));
        assert!(malformed(&f.entries[7]).contains("federates_with"));
        assert!(malformed(&f.entries[8]).contains("a string"));
        match &f.entries[9] {
            Read::Unsupported { reason, entry } => {
                assert!(reason.contains("store_svid"), "{reason}");
                assert_eq!(entry.spiffe_id, "spiffe://example.org/s");
            }
            other => panic!("store_svid must be reported, got {other:?}"),
        }
    }

    #[test]
    fn whole_file_errors_are_clear() {
        assert!(matches!(read("{not json"), Err(SpireFileError::NotJson(_))));
        assert_eq!(read(r#"{"items": []}"#), Err(SpireFileError::NoEntries));
        assert_eq!(read("42"), Err(SpireFileError::NoEntries));
        // An empty listing is an empty import.
        assert!(
            read(r#"{"next_page_token": ""}"#)
                .unwrap()
                .entries
                .is_empty()
        );
        assert!(read("{}").unwrap().entries.is_empty());
    }
}
