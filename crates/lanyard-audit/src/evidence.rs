//! Typed evidence: the `evidence` of each [`EventKind`] as a Rust type, the source of
//! truth for the keys and JSON types the log holds (docs/audit.md points here).
//!
//! An event's `evidence` stays a `BTreeMap<String, Value>` (that is what is hashed,
//! stored and read back from old logs); these types only fix what goes into it.
//! Field names are the keys and field types serialize to exactly the JSON the
//! hand-written code put there: an event built with [`Event::set_evidence`] encodes
//! byte for byte like the same event filled by hand (pinned by the golden test in
//! `src/golden.rs`). Keys are never renamed: old logs must still read and verify.
//!
//! ```
//! use lanyard_audit::evidence::{Evidence, EvidenceOf, JwtRevoked};
//! # fn event(kind: lanyard_audit::EventKind) -> lanyard_audit::Event {
//! #     lanyard_audit::Event::new("id", 0, kind, lanyard_audit::Outcome::Success, "s")
//! # }
//! let ev = event(JwtRevoked::KIND).with(JwtRevoked::new("j-1", 1_800_000_000));
//! let back: JwtRevoked = ev.evidence_as().unwrap();
//! assert_eq!(back.expires_at, 1_800_000_000);
//! ```
//!
//! Optional keys are `Option`s, left out when `None`. Numbers are JSON integers
//! (`expires_at` in unix seconds, `*_ms` in unix milliseconds); certificate serials
//! and hashes are lowercase hex strings.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Event, EventKind, Outcome, SCHEMA_VERSION};

mod sealed {
    pub trait Sealed {}
}

/// A shape of evidence that can be read from events of [`EvidenceView::KINDS`].
pub trait EvidenceView: DeserializeOwned {
    /// The kinds whose events carry this shape (or, for a view, a part of it).
    const KINDS: &'static [EventKind];
}

/// The complete evidence of events of [`EvidenceView::KINDS`]: what a writer puts
/// into [`Event::evidence`]. Implemented only by the types of this module (their
/// fields always encode as a JSON object, so writing cannot fail).
pub trait Evidence: EvidenceView + Serialize + sealed::Sealed {
    /// The JSON map this evidence is in an event.
    fn to_map(&self) -> BTreeMap<String, Value> {
        to_map(self)
    }
}

/// Evidence of exactly one kind, so a site can write
/// `shared.event(JwtRevoked::KIND, outcome).with(JwtRevoked::new(..))`.
pub trait EvidenceOf: Evidence {
    const KIND: EventKind;
}

/// Why an event's evidence is not of the type asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    #[error("a {kind} event does not carry {wanted} evidence (that is for {kinds})")]
    WrongKind {
        kind: String,
        wanted: &'static str,
        kinds: String,
    },
    #[error("the evidence of this {kind} event is not {wanted}: {error}")]
    Shape {
        kind: String,
        wanted: &'static str,
        error: String,
    },
    #[error(
        "the evidence of this {kind} event has keys or types beyond its schema: stored {stored}, schema reads {typed}"
    )]
    NotExact {
        kind: String,
        stored: String,
        typed: String,
    },
}

/// Key holding the (never expected) failure to encode typed evidence, so that a bug
/// shows in the log instead of silently dropping the evidence.
const ENCODE_ERROR_KEY: &str = "evidence_error";

fn to_map<T: Serialize + ?Sized>(e: &T) -> BTreeMap<String, Value> {
    match serde_json::to_value(e) {
        Ok(Value::Object(m)) => m.into_iter().collect(),
        Ok(other) => BTreeMap::from([(
            ENCODE_ERROR_KEY.to_string(),
            Value::String(format!("evidence is not a JSON object: {other}")),
        )]),
        Err(err) => BTreeMap::from([(ENCODE_ERROR_KEY.to_string(), err.to_string().into())]),
    }
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// `Some(s)` unless `s` is empty: for keys written only when there is a value.
pub fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl Event {
    /// A new event with no actor, subject, evidence, policies or correlation (what
    /// the server's `Shared::event` fills in before a site adds the rest).
    pub fn new(
        id: impl Into<String>,
        time: i64,
        kind: EventKind,
        outcome: Outcome,
        server_id: impl Into<String>,
    ) -> Self {
        Self {
            version: SCHEMA_VERSION,
            id: id.into(),
            time,
            kind,
            actor: None,
            subject: None,
            evidence: BTreeMap::new(),
            policy_ids: Vec::new(),
            decision: None,
            outcome,
            reason: None,
            owner: None,
            trace_id: None,
            parent_id: None,
            server_id: server_id.into(),
        }
    }

    /// Replace the evidence with `evidence`. The event's kind is not changed (pick
    /// it with [`EvidenceOf::KIND`]); [`Event::check_evidence`] tells whether the
    /// two agree.
    pub fn set_evidence<T: Evidence>(&mut self, evidence: T) {
        self.evidence = evidence.to_map();
    }

    /// [`Event::set_evidence`], by value.
    #[must_use]
    pub fn with<T: Evidence>(mut self, evidence: T) -> Self {
        self.set_evidence(evidence);
        self
    }

    /// Add the keys `evidence` has (its `None` fields are left out) to the
    /// evidence, keeping the others: for evidence gathered step by step, such as a
    /// [`TokenExchangeRefused`] filled while a request is checked.
    pub fn merge_evidence<T: Evidence>(&mut self, evidence: T) {
        self.evidence.extend(evidence.to_map());
    }

    /// The evidence read as `T`. Keys `T` does not name are ignored (a view such
    /// as [`IssuedToken`] reads a part); a missing required key or a wrong JSON type
    /// is an error, and so is an event of a kind `T` is not for.
    pub fn evidence_as<T: EvidenceView>(&self) -> Result<T, EvidenceError> {
        let wanted = short_type_name::<T>();
        if !T::KINDS.contains(&self.kind) {
            return Err(EvidenceError::WrongKind {
                kind: self.kind.name(),
                wanted,
                kinds: T::KINDS
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let map: serde_json::Map<String, Value> = self
            .evidence
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        serde_json::from_value(Value::Object(map)).map_err(|e| EvidenceError::Shape {
            kind: self.kind.name(),
            wanted,
            error: e.to_string(),
        })
    }

    /// Whether the evidence has exactly the schema of the event's kind: it reads as
    /// the kind's type and that type writes it back unchanged (no other keys, no
    /// other JSON types). Kinds with two shapes (a report with dropped items) accept
    /// either.
    pub fn check_evidence(&self) -> Result<(), EvidenceError> {
        use EventKind as K;
        match self.kind {
            K::NodeAttested => self.exact::<NodeAttested>(),
            K::NodeRefused => self.exact::<NodeRefused>(),
            K::NodeAttestationRefused => self.exact::<NodeAttestationRefused>(),
            K::ServerJoined | K::ServerDeregistered => self.exact::<ServerChanged>(),
            K::KeyStored => self.exact::<KeyStored>(),
            K::AgentSvidIssued | K::AgentSvidRenewed => self.exact::<AgentSvid>(),
            K::AgentCloneSuspected => self.exact::<AgentCloneSuspected>(),
            K::X509SvidIssued => self.exact::<X509SvidIssued>(),
            K::JwtSvidIssued => self.exact::<JwtSvidIssued>(),
            K::WorkloadSvidDelivered => self
                .exact::<WorkloadSvidDelivered>()
                .or_else(|e| self.exact::<ReportsDropped>().map_err(|_| e)),
            K::EntryCreated | K::EntryUpdated | K::EntryDeleted => self.exact::<EntryChanged>(),
            K::EntryRefused => self.exact::<EntryRefused>(),
            K::TokenCreated => self.exact::<TokenCreated>(),
            K::AgentBanned | K::AgentEvicted => self.exact::<AgentRemoved>(),
            K::CaKeyPrepared | K::CaKeyActivated | K::CaKeyRetired | K::CaKeyTainted => {
                self.exact::<CaKeyStep>()
            }
            K::BundleChanged => self.exact::<BundleChanged>(),
            K::AdminCallRefused => self.exact::<AdminCallRefused>(),
            K::PolicyChanged => self.exact::<PolicyChanged>(),
            K::JwtRevoked => self.exact::<JwtRevoked>(),
            K::ExceptionCreated => self.exact::<ExceptionCreated>(),
            K::ExceptionRevoked => self.exact::<ExceptionRevoked>(),
            K::SecretReleased => self.exact::<SecretReleased>(),
            K::SecretRefused => self.exact::<SecretRefused>(),
            K::AuthzDecision => self
                .exact::<AuthzDecision>()
                .or_else(|e| self.exact::<ReportsDropped>().map_err(|_| e)),
            K::TokenExchanged => self.exact::<TokenExchanged>(),
            K::TokenExchangeRefused => self.exact::<TokenExchangeRefused>(),
            K::TaskTokenIssued => self.exact::<TaskTokenIssued>(),
        }
    }

    fn exact<T: Evidence>(&self) -> Result<(), EvidenceError> {
        let typed = self.evidence_as::<T>()?.to_map();
        if typed == self.evidence {
            Ok(())
        } else {
            let show = |m: &BTreeMap<String, Value>| serde_json::to_string(m).unwrap_or_default();
            Err(EvidenceError::NotExact {
                kind: self.kind.name(),
                stored: show(&self.evidence),
                typed: show(&typed),
            })
        }
    }
}

macro_rules! evidence_kinds {
    ($ty:ty => $kind:ident) => {
        impl sealed::Sealed for $ty {}
        impl EvidenceView for $ty {
            const KINDS: &'static [EventKind] = &[EventKind::$kind];
        }
        impl Evidence for $ty {}
        impl EvidenceOf for $ty {
            const KIND: EventKind = EventKind::$kind;
        }
    };
    ($ty:ty => $($kind:ident),+) => {
        impl sealed::Sealed for $ty {}
        impl EvidenceView for $ty {
            const KINDS: &'static [EventKind] = &[$(EventKind::$kind),+];
        }
        impl Evidence for $ty {}
    };
}

// ---------------------------------------------------------------------------------
// Identity proof: nodes and agent SVIDs.

/// `node_attested`: an agent attested and received its agent SVID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAttested {
    /// `join_token`, `x509pop`, ...
    pub attestation_type: String,
    /// The node's selectors (`type:value`).
    pub selectors: Vec<String>,
    /// The agent SVID's serial (lowercase hex).
    pub serial: String,
    /// The agent SVID's expiry, unix seconds.
    pub expires_at: i64,
}
evidence_kinds!(NodeAttested => NodeAttested);

impl NodeAttested {
    pub fn new(
        attestation_type: impl Into<String>,
        selectors: Vec<String>,
        serial: impl Into<String>,
        expires_at: i64,
    ) -> Self {
        Self {
            attestation_type: attestation_type.into(),
            selectors,
            serial: serial.into(),
            expires_at,
        }
    }
}

/// `node_refused`: `attestation_type` when the refused agent ID is known (an ID
/// outside `/lanyard/agent/`); empty when the attestation itself failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRefused {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation_type: Option<String>,
    /// A verifier's stable reason code (`wrong_audience`, `expired`, `replayed`,
    /// `unknown_issuer`, `bad_signature`, …), when a token or document was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}
evidence_kinds!(NodeRefused => NodeRefused);

/// `node_attestation_refused`: the method whose verifier refused the node's
/// evidence and its stable reason code (`wrong_audience`, `expired`, `replayed`,
/// `unknown_issuer`, `bad_signature`, `unsupported_algorithm`, `claim_mismatch`,
/// `account_not_allowed`, `already_attested`, …); the event's `reason` is the
/// message the agent got. Never the token or document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAttestationRefused {
    pub attestation_type: String,
    pub refusal: String,
}
evidence_kinds!(NodeAttestationRefused => NodeAttestationRefused);

impl NodeAttestationRefused {
    pub fn new(attestation_type: &str, refusal: &str) -> Self {
        Self {
            attestation_type: attestation_type.to_string(),
            refusal: refusal.to_string(),
        }
    }
}

impl NodeRefused {
    /// A refusal of an attestation of this type.
    pub fn of(attestation_type: impl Into<String>) -> Self {
        Self {
            attestation_type: Some(attestation_type.into()),
            refusal: None,
        }
    }

    /// A refusal with nothing known but the reason (the event's `reason`).
    pub fn unknown() -> Self {
        Self::default()
    }

    /// A refusal of `attestation_type` (when known) by a verifier, with its reason
    /// `code` (when it gave one).
    pub fn refusal(attestation_type: Option<&str>, code: Option<&str>) -> Self {
        Self {
            attestation_type: attestation_type.map(str::to_string),
            refusal: code.map(str::to_string),
        }
    }
}

/// `agent_svid_issued` and `agent_svid_renewed`: the agent SVID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSvid {
    /// Lowercase hex.
    pub serial: String,
    /// Unix seconds.
    pub expires_at: i64,
}
evidence_kinds!(AgentSvid => AgentSvidIssued, AgentSvidRenewed);

impl AgentSvid {
    pub fn new(serial: impl Into<String>, expires_at: i64) -> Self {
        Self {
            serial: serial.into(),
            expires_at,
        }
    }
}

/// `agent_clone_suspected`: a superseded agent SVID was presented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCloneSuspected {
    /// The serial presented on the connection.
    pub presented_serial: String,
    /// The node's current agent SVID serial.
    pub current_serial: String,
    /// How often a superseded SVID of this agent was presented, this time included.
    pub superseded_count: i64,
}
evidence_kinds!(AgentCloneSuspected => AgentCloneSuspected);

impl AgentCloneSuspected {
    pub fn new(
        presented_serial: impl Into<String>,
        current_serial: impl Into<String>,
        superseded_count: i64,
    ) -> Self {
        Self {
            presented_serial: presented_serial.into(),
            current_serial: current_serial.into(),
            superseded_count,
        }
    }
}

// ---------------------------------------------------------------------------------
// Workload SVIDs.

/// `x509_svid_issued`: the server signed an X509-SVID for a workload entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct X509SvidIssued {
    pub entry_id: String,
    /// Lowercase hex.
    pub serial: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// SHA-256 (hex) of the leaf's SubjectPublicKeyInfo; left out when the leaf
    /// could not be parsed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_sha256: Option<String>,
    /// The entry's selectors (`type:value`).
    pub selectors: Vec<String>,
}
evidence_kinds!(X509SvidIssued => X509SvidIssued);

impl X509SvidIssued {
    pub fn new(
        entry_id: impl Into<String>,
        serial: impl Into<String>,
        expires_at: i64,
        public_key_sha256: Option<String>,
        selectors: Vec<String>,
    ) -> Self {
        Self {
            entry_id: entry_id.into(),
            serial: serial.into(),
            expires_at,
            public_key_sha256,
            selectors,
        }
    }
}

/// `jwt_svid_issued`: the server minted a JWT-SVID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtSvidIssued {
    pub jti: String,
    /// The requested audience (a JSON array, even of one).
    pub audience: Vec<String>,
    /// The signing key's `kid`.
    pub kid: String,
    /// Unix seconds.
    pub expires_at: i64,
}
evidence_kinds!(JwtSvidIssued => JwtSvidIssued);

impl JwtSvidIssued {
    pub fn new(
        jti: impl Into<String>,
        audience: Vec<String>,
        kid: impl Into<String>,
        expires_at: i64,
    ) -> Self {
        Self {
            jti: jti.into(),
            audience,
            kid: kid.into(),
            expires_at,
        }
    }
}

/// `workload_svid_delivered`: an agent reported that a process received an SVID
/// (`serial` for `svid_type` `x509`; `jti` and `audience` for `jwt`). A report of
/// dropped deliveries is a [`ReportsDropped`] instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSvidDelivered {
    /// `x509` or `jwt`.
    pub svid_type: String,
    /// X509-SVID serial (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// JWT-SVID `jti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// JWT-SVID audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Vec<String>>,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Executable path, when the agent could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Executable SHA-256 (hex), when the agent could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// When the agent handed it out, unix milliseconds.
    pub delivered_at_ms: i64,
}
evidence_kinds!(WorkloadSvidDelivered => WorkloadSvidDelivered);

impl WorkloadSvidDelivered {
    /// An X509-SVID (by serial) delivered to process `pid`.
    pub fn x509(
        serial: impl Into<String>,
        pid: i32,
        uid: u32,
        gid: u32,
        delivered_at_ms: i64,
    ) -> Self {
        Self {
            svid_type: "x509".to_string(),
            serial: Some(serial.into()),
            jti: None,
            audience: None,
            pid,
            uid,
            gid,
            path: None,
            sha256: None,
            delivered_at_ms,
        }
    }

    /// A JWT-SVID (by `jti`, with its audience) delivered to process `pid`.
    pub fn jwt(
        jti: impl Into<String>,
        audience: Vec<String>,
        pid: i32,
        uid: u32,
        gid: u32,
        delivered_at_ms: i64,
    ) -> Self {
        Self {
            svid_type: "jwt".to_string(),
            serial: None,
            jti: Some(jti.into()),
            audience: Some(audience),
            pid,
            uid,
            gid,
            path: None,
            sha256: None,
            delivered_at_ms,
        }
    }

    /// The executable's path and SHA-256, each only when not empty.
    #[must_use]
    pub fn binary(mut self, path: &str, sha256: &str) -> Self {
        self.path = non_empty(path);
        self.sha256 = non_empty(sha256);
        self
    }
}

/// An agent's report that it had to drop `dropped` items (buffer full while the
/// server was unreachable): the `failure` event of `workload_svid_delivered`, and of
/// `authz_decision` (there with `via: agent` and the reporting `agent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportsDropped {
    pub dropped: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The reporting agent's SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}
evidence_kinds!(ReportsDropped => WorkloadSvidDelivered, AuthzDecision);

impl ReportsDropped {
    /// Dropped delivery reports.
    pub fn new(dropped: u64) -> Self {
        Self {
            dropped,
            via: None,
            agent: None,
        }
    }

    /// Dropped decision reports of `agent` (`via: agent`).
    #[must_use]
    pub fn by_agent(mut self, agent: impl Into<String>) -> Self {
        self.via = Some("agent".to_string());
        self.agent = Some(agent.into());
        self
    }
}

// ---------------------------------------------------------------------------------
// Registration and administration.

/// `entry_created`, `entry_updated`, `entry_deleted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryChanged {
    pub entry_id: String,
    /// The entry's parent SPIFFE ID (not the event's `parent_id`, which links
    /// events).
    pub parent_id: String,
    /// `type:value`.
    pub selectors: Vec<String>,
    pub revision: i64,
}
evidence_kinds!(EntryChanged => EntryCreated, EntryUpdated, EntryDeleted);

impl EntryChanged {
    pub fn new(
        entry_id: impl Into<String>,
        parent_id: impl Into<String>,
        selectors: Vec<String>,
        revision: i64,
    ) -> Self {
        Self {
            entry_id: entry_id.into(),
            parent_id: parent_id.into(),
            selectors,
            revision,
        }
    }
}

/// `entry_refused`: registration policy refused `action` (`create_entry`,
/// `update_entry`, `delete_entry`, `create_exception`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRefused {
    pub action: String,
}
evidence_kinds!(EntryRefused => EntryRefused);

impl EntryRefused {
    pub fn new(action: impl Into<String>) -> Self {
        Self {
            action: action.into(),
        }
    }
}

/// `admin_call_refused`: `action` when registration policy refused it; nothing for
/// a caller that is not an admin identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminCallRefused {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}
evidence_kinds!(AdminCallRefused => AdminCallRefused);

impl AdminCallRefused {
    /// Registration policy refused `action` (`create_join_token`, `ban_agent`, ...).
    pub fn action(action: impl Into<String>) -> Self {
        Self {
            action: Some(action.into()),
        }
    }

    /// The caller is not an admin identity.
    pub fn not_admin() -> Self {
        Self::default()
    }
}

/// `token_created`: a join token; never the token, only a hash prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    /// The first 16 hex digits of the token's SHA-256.
    pub token_hash_prefix: String,
    /// Unix seconds.
    pub expires_at: i64,
}
evidence_kinds!(TokenCreated => TokenCreated);

impl TokenCreated {
    pub fn new(token_hash_prefix: impl Into<String>, expires_at: i64) -> Self {
        Self {
            token_hash_prefix: token_hash_prefix.into(),
            expires_at,
        }
    }
}

/// `agent_banned`, `agent_evicted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRemoved {
    /// How the node had attested.
    pub attestation_type: String,
}
evidence_kinds!(AgentRemoved => AgentBanned, AgentEvicted);

impl AgentRemoved {
    pub fn new(attestation_type: impl Into<String>) -> Self {
        Self {
            attestation_type: attestation_type.into(),
        }
    }
}

/// `ca_key_prepared`, `ca_key_activated`, `ca_key_retired`, `ca_key_tainted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaKeyStep {
    /// The CA slot (`A`, `B`, ...).
    pub slot: String,
}
evidence_kinds!(CaKeyStep => CaKeyPrepared, CaKeyActivated, CaKeyRetired, CaKeyTainted);

impl CaKeyStep {
    pub fn new(slot: impl Into<String>) -> Self {
        Self { slot: slot.into() }
    }
}

/// `bundle_changed`: the new bundle sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleChanged {
    pub sequence: u64,
}
evidence_kinds!(BundleChanged => BundleChanged);

impl BundleChanged {
    pub fn new(sequence: u64) -> Self {
        Self { sequence }
    }
}

/// `server_joined`, `server_deregistered`: the server (its name, as events'
/// `server_id` carry it) and the authorities it publishes (X.509 CA Subject Key
/// Identifiers, hex, and JWT key ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerChanged {
    pub server: String,
    pub authorities: Vec<String>,
}
evidence_kinds!(ServerChanged => ServerJoined, ServerDeregistered);

impl ServerChanged {
    pub fn new(server: &str, authorities: Vec<String>) -> Self {
        Self {
            server: server.to_string(),
            authorities,
        }
    }
}

/// `key_stored`: which key (`secrets`, `token-signing`, `audit/<server>`) and the
/// id of the key-encryption key sealing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStored {
    pub name: String,
    pub kek_id: String,
}
evidence_kinds!(KeyStored => KeyStored);

impl KeyStored {
    pub fn new(name: &str, kek_id: &str) -> Self {
        Self {
            name: name.to_string(),
            kek_id: kek_id.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------
// Governance.

/// `policy_changed`: a new policy set was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChanged {
    /// The permitting policy ids (`local-socket-recovery` for a recovery).
    pub allowed_by: Vec<String>,
    /// `registration` or `authz` (the policy kind, not the event kind).
    pub kind: String,
    pub version: i64,
    /// SHA-256 (hex) of the policy text.
    pub sha256: String,
}
evidence_kinds!(PolicyChanged => PolicyChanged);

impl PolicyChanged {
    pub fn new(
        allowed_by: Vec<String>,
        kind: impl Into<String>,
        version: i64,
        sha256: impl Into<String>,
    ) -> Self {
        Self {
            allowed_by,
            kind: kind.into(),
            version,
            sha256: sha256.into(),
        }
    }
}

/// `jwt_revoked`: a `jti` on the deny-list until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtRevoked {
    pub jti: String,
    /// Unix seconds.
    pub expires_at: i64,
}
evidence_kinds!(JwtRevoked => JwtRevoked);

impl JwtRevoked {
    pub fn new(jti: impl Into<String>, expires_at: i64) -> Self {
        Self {
            jti: jti.into(),
            expires_at,
        }
    }
}

/// `exception_created`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionCreated {
    /// The exception's name.
    pub exception: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// The SPIFFE IDs allowed to receive the secret.
    pub allowed: Vec<String>,
}
evidence_kinds!(ExceptionCreated => ExceptionCreated);

impl ExceptionCreated {
    pub fn new(exception: impl Into<String>, expires_at: i64, allowed: Vec<String>) -> Self {
        Self {
            exception: exception.into(),
            expires_at,
            allowed,
        }
    }
}

/// `exception_revoked`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionRevoked {
    /// The exception's name.
    pub exception: String,
}
evidence_kinds!(ExceptionRevoked => ExceptionRevoked);

impl ExceptionRevoked {
    pub fn new(exception: impl Into<String>) -> Self {
        Self {
            exception: exception.into(),
        }
    }
}

/// The process that asked for a secret, as the agent reported it; each part only
/// when it is plausible (see [`Process::bounded`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Executable path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Executable SHA-256 (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Longest executable path recorded.
pub const MAX_PATH: usize = 4096;

impl Process {
    /// The reported process, bounded: `pid`, `uid` and `gid` only for a positive
    /// pid, `path` only when 1 to [`MAX_PATH`] bytes, `sha256` only when 64 hex
    /// digits (unknown or oversized parts are left out).
    pub fn bounded(pid: i32, uid: u32, gid: u32, path: &str, sha256: &str) -> Self {
        let known = pid > 0;
        Self {
            pid: known.then_some(pid),
            uid: known.then_some(uid),
            gid: known.then_some(gid),
            path: (!path.is_empty() && path.len() <= MAX_PATH).then(|| path.to_string()),
            sha256: (sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| sha256.to_string()),
        }
    }
}

/// `secret_released`: an exception's secret went to a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretReleased {
    /// The exception's name.
    pub exception: String,
    /// The exception's expiry, unix seconds.
    pub expires_at: i64,
    /// The requesting process (its keys are top-level keys of the evidence).
    #[serde(flatten)]
    pub process: Process,
}
evidence_kinds!(SecretReleased => SecretReleased);

impl SecretReleased {
    pub fn new(exception: impl Into<String>, expires_at: i64, process: Process) -> Self {
        Self {
            exception: exception.into(),
            expires_at,
            process,
        }
    }
}

/// `secret_refused`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRefused {
    /// The requested exception's name (as asked, possibly unknown).
    pub exception: String,
    /// The requesting process (its keys are top-level keys of the evidence).
    #[serde(flatten)]
    pub process: Process,
}
evidence_kinds!(SecretRefused => SecretRefused);

impl SecretRefused {
    pub fn new(exception: impl Into<String>, process: Process) -> Self {
        Self {
            exception: exception.into(),
            process,
        }
    }
}

// ---------------------------------------------------------------------------------
// Runtime authorization and token exchange.

/// `authz_decision`: a runtime decision. A report of dropped agent decisions is a
/// [`ReportsDropped`] instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzDecision {
    /// `authzen`, `ext_authz` or `agent`.
    pub via: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    /// The task token's `txn`, for a tool call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_txn: Option<String>,
    /// The task token's agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_agent: Option<String>,
    /// Whom the task is for, when the agent acts for someone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acting_for: Option<String>,
    /// The agent that decided and reported it (`via: agent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The id the agent returned (`via: agent`; the server's own decisions use the
    /// event id instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<String>,
    /// The authz policy version the agent used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<i64>,
    /// When the agent decided, unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at_ms: Option<i64>,
}
evidence_kinds!(AuthzDecision => AuthzDecision);

impl AuthzDecision {
    pub fn new(
        via: impl Into<String>,
        action: impl Into<String>,
        resource_type: impl Into<String>,
        resource_id: impl Into<String>,
    ) -> Self {
        Self {
            via: via.into(),
            action: action.into(),
            resource_type: resource_type.into(),
            resource_id: resource_id.into(),
            task_txn: None,
            task_agent: None,
            acting_for: None,
            agent: None,
            decision_id: None,
            policy_version: None,
            decided_at_ms: None,
        }
    }

    /// The task token presented: `acting_for` only when not empty.
    #[must_use]
    pub fn task(
        mut self,
        txn: impl Into<String>,
        agent: impl Into<String>,
        acting_for: &str,
    ) -> Self {
        self.task_txn = Some(txn.into());
        self.task_agent = Some(agent.into());
        self.acting_for = non_empty(acting_for);
        self
    }

    /// Decided by `agent` and reported with `ReportDecisions`.
    #[must_use]
    pub fn reported(
        mut self,
        agent: impl Into<String>,
        decision_id: impl Into<String>,
        policy_version: i64,
        decided_at_ms: i64,
    ) -> Self {
        self.agent = Some(agent.into());
        self.decision_id = Some(decision_id.into());
        self.policy_version = Some(policy_version);
        self.decided_at_ms = Some(decided_at_ms);
        self
    }
}

/// `token_exchanged`: `POST /oauth2/token` issued a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenExchanged {
    /// The subject token's `jti`.
    pub subject_jti: String,
    /// The actor token's `jti`, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_jti: Option<String>,
    /// The one audience (a string here, unlike `jwt_svid_issued`).
    pub audience: String,
    /// The new token's `jti`.
    pub jti: String,
    /// Granted scopes, space-separated (`""` when none were asked for).
    pub scope: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// The actors, nearest first.
    pub chain: Vec<String>,
    /// Requested scopes policy did not grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes_not_granted: Option<Vec<String>>,
}
evidence_kinds!(TokenExchanged => TokenExchanged);

/// `token_exchange_refused`: what was known of the request when it was refused
/// (every key optional); the accumulator a token request fills with
/// [`Event::merge_evidence`] as it is checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenExchangeRefused {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_jti: Option<String>,
    /// The one audience (string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The trusted identity provider of a person's subject token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person_issuer: Option<String>,
    /// A task token's purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// A task token's tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
}
evidence_kinds!(TokenExchangeRefused => TokenExchangeRefused);

impl TokenExchangeRefused {
    pub fn subject_jti(jti: impl Into<String>) -> Self {
        Self {
            subject_jti: Some(jti.into()),
            ..Self::default()
        }
    }

    pub fn actor_jti(jti: impl Into<String>) -> Self {
        Self {
            actor_jti: Some(jti.into()),
            ..Self::default()
        }
    }

    pub fn audience(audience: impl Into<String>) -> Self {
        Self {
            audience: Some(audience.into()),
            ..Self::default()
        }
    }

    pub fn person_issuer(issuer: impl Into<String>) -> Self {
        Self {
            person_issuer: Some(issuer.into()),
            ..Self::default()
        }
    }

    pub fn task(purpose: impl Into<String>, tools: Vec<String>) -> Self {
        Self {
            purpose: Some(purpose.into()),
            tools: Some(tools),
            ..Self::default()
        }
    }

    /// The `task_token_issued` evidence once the task token is issued: the tokens
    /// and issuer gathered so far, the task (`purpose`, `tools`), and the new token.
    pub fn task_token_issued(
        self,
        txn: impl Into<String>,
        jti: impl Into<String>,
        expires_at: i64,
    ) -> TaskTokenIssued {
        TaskTokenIssued {
            subject_jti: self.subject_jti,
            actor_jti: self.actor_jti,
            person_issuer: self.person_issuer,
            purpose: self.purpose.unwrap_or_default(),
            tools: self.tools.unwrap_or_default(),
            txn: txn.into(),
            jti: jti.into(),
            expires_at,
        }
    }
}

/// `task_token_issued`: an agent received a task token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTokenIssued {
    /// The agent's (or workload's) subject token `jti`; left out for a person's task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_jti: Option<String>,
    /// The actor token's `jti`, when the agent acts for a workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_jti: Option<String>,
    /// The trusted identity provider, for a person's task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person_issuer: Option<String>,
    pub purpose: String,
    pub tools: Vec<String>,
    /// The task's transaction id (also the event's `trace_id`).
    pub txn: String,
    /// The task token's `jti`.
    pub jti: String,
    /// Unix seconds.
    pub expires_at: i64,
}
evidence_kinds!(TaskTokenIssued => TaskTokenIssued);

// ---------------------------------------------------------------------------------
// Views for readers.

/// The `jti` and expiry of an issued token, from any event that issues one
/// (`jwt_svid_issued`, `token_exchanged`, `task_token_issued`): what `lanyard jwt
/// revoke --jti` looks up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IssuedToken {
    pub jti: String,
    /// Unix seconds. Every writer records it; optional here so that a reader of
    /// an old log can still find the token if it were missing.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

impl EvidenceView for IssuedToken {
    const KINDS: &'static [EventKind] = &[
        EventKind::JwtSvidIssued,
        EventKind::TokenExchanged,
        EventKind::TaskTokenIssued,
    ];
}

/// [`Process`] also reads the receiving process of a `workload_svid_delivered`
/// event (each part as far as it is recorded): what `lanyard inventory` shows as
/// last seen.
impl EvidenceView for Process {
    const KINDS: &'static [EventKind] = &[
        EventKind::WorkloadSvidDelivered,
        EventKind::SecretReleased,
        EventKind::SecretRefused,
    ];
}
