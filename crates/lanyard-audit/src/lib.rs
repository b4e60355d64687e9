//! Lanyard's evidence log, the pure part: the event schema, the hash chain and signed
//! checkpoints, and verification that names the first bad record.
//!
//! * Every record is chained to its predecessor: `hash = SHA-256("lanyard-audit-v1" ||
//!   seq (u64, big endian) || prev_hash || canonical(event))`, where the canonical
//!   encoding is the event's JSON with fields in schema order and maps sorted by key.
//! * A checkpoint `(size, head, time)` is signed with a dedicated audit key (EC P-256)
//!   and kept outside the datastore too, so removing the newest records is detected.
//!
//! Storage and the wiring into the server come later (issue #5); this crate is what
//! both the writer and `lanyard audit verify` share.

use std::collections::BTreeMap;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod evidence;
pub use evidence::{Evidence, EvidenceError, EvidenceOf, EvidenceView};

/// Version of the event schema (docs/audit.md when the log is wired in).
pub const SCHEMA_VERSION: u32 = 1;
const DOMAIN: &[u8] = b"lanyard-audit-v1";
/// Hash of "nothing before the first record".
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    NodeAttested,
    NodeRefused,
    AgentSvidIssued,
    AgentSvidRenewed,
    X509SvidIssued,
    JwtSvidIssued,
    EntryCreated,
    EntryUpdated,
    EntryDeleted,
    TokenCreated,
    AgentBanned,
    AgentEvicted,
    CaKeyPrepared,
    CaKeyActivated,
    CaKeyRetired,
    BundleChanged,
    AdminCallRefused,
    WorkloadSvidDelivered,
    /// A registration change refused by registration policy.
    EntryRefused,
    PolicyChanged,
    JwtRevoked,
    CaKeyTainted,
    ExceptionCreated,
    ExceptionRevoked,
    SecretReleased,
    SecretRefused,
    /// A runtime authorization decision (AuthZEN evaluation, Envoy ext_authz).
    AuthzDecision,
    /// An RFC 8693 token exchange issued a token.
    TokenExchanged,
    /// A token exchange (or task token request) was refused.
    TokenExchangeRefused,
    /// A task token was issued to an agent workload.
    TaskTokenIssued,
    /// An agent SVID that a renewal had superseded was presented: a copy of the
    /// agent's key and SVID is in use.
    AgentCloneSuspected,
    /// A node's token or identity document was refused by its verifier
    /// (`jwt`, `k8s_psat`, `aws_iid`): wrong audience, expired, replayed, …
    NodeAttestationRefused,
    /// A server sharing the datastore published its CA certificates and JWT keys
    /// for the first time: they join the trust domain's bundle.
    ServerJoined,
    /// An operator deregistered a server (`lanyard server deregister`): its keys
    /// leave the bundle.
    ServerDeregistered,
    /// A server stored a key every server needs in the datastore, sealed under the
    /// key-encryption key (the key itself is never in an event).
    KeyStored,
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

/// One event. Never holds key material or a full token (only `jti`, hashes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub version: u32,
    pub id: String,
    /// Unix milliseconds.
    pub time: i64,
    pub kind: EventKind,
    /// Caller SPIFFE ID or `uid:<n>` for the local admin socket.
    pub actor: Option<String>,
    /// The identity the event is about.
    pub subject: Option<String>,
    /// Attestation type and selectors, certificate serial and public-key hash, JWT
    /// `jti` and audience, ...: per kind, the keys and JSON types of a type in
    /// [`evidence`] (write with [`Event::set_evidence`], read with
    /// [`Event::evidence_as`]).
    pub evidence: BTreeMap<String, Value>,
    pub policy_ids: Vec<String>,
    pub decision: Option<String>,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub owner: Option<String>,
    pub trace_id: Option<String>,
    pub parent_id: Option<String>,
    pub server_id: String,
}

/// A stored record: the event and its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    pub event: Event,
    /// What the store keeps beside the hashed event for its queries (time, kind,
    /// subject), as read back; [`verify`] checks it equals what the event says.
    /// `None` for a record that was never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<IndexColumns>,
}

/// Copies of event fields a store keeps in columns of their own so queries can use
/// indexes. They are not hashed, so verification compares them with the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexColumns {
    /// Unix milliseconds.
    pub time: i64,
    /// The event kind's name (`node_attested`, ...).
    pub kind: String,
    pub subject: Option<String>,
}

impl IndexColumns {
    /// The columns as they must be stored for `event`.
    pub fn of(event: &Event) -> Self {
        Self {
            time: event.time,
            kind: event.kind.name(),
            subject: event.subject.clone(),
        }
    }
}

impl EventKind {
    /// The kind's name as stored and queried (`node_attested`, ...).
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// A signed statement "the log had `size` records ending in `head` at `time`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub size: u64,
    pub head: String,
    pub time: i64,
    pub key_id: String,
    /// base64url ECDSA P-256 (ASN.1) signature over [`Checkpoint::signed_bytes`].
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("cannot encode the event: {0}")]
    Encode(String),
    #[error("the audit key cannot be used: {0}")]
    Key(String),
    #[error("signing failed")]
    Sign,
}

/// Why verification failed; `seq` names the first bad record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "record {expected} is missing (the next stored record is {found}): records were removed or reordered"
    )]
    Gap { expected: u64, found: u64 },
    #[error("record {seq} was modified: its content no longer matches its hash")]
    Modified { seq: u64 },
    #[error(
        "record {seq} was modified: its stored {column} column is {stored:?} but the hashed event says {hashed:?}"
    )]
    ColumnMismatch {
        seq: u64,
        column: &'static str,
        stored: String,
        hashed: String,
    },
    #[error(
        "record {seq} does not follow record {prev}: its predecessor hash differs (records were removed, inserted or reordered)"
    )]
    BrokenLink { seq: u64, prev: u64 },
    #[error("record {seq} does not start the chain from the genesis hash")]
    BadGenesis { seq: u64 },
    #[error(
        "checkpoint at size {size} is signed by key {key_id:?}, which does not verify it: the checkpoint was forged or altered"
    )]
    BadCheckpoint { size: u64, key_id: String },
    #[error(
        "checkpoint at size {size} is signed by key {key_id:?}, which is not among the pinned public keys: give that server's audit-key.pub with --public-key (or in --keys-file), or the checkpoint is forged"
    )]
    UnknownKey { size: u64, key_id: String },
    #[error("a signed checkpoint covers {size} records but only {present} are stored: the newest {missing} records were removed", missing = size - present)]
    Truncated { size: u64, present: u64 },
    #[error(
        "record {seq} differs from what checkpoint {size} signed: the log was rewritten after the checkpoint"
    )]
    CheckpointMismatch { seq: u64, size: u64 },
}

/// A summary of an intact log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    pub checkpoints: u64,
    pub head: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The canonical encoding of an event.
pub fn canonical(event: &Event) -> Result<Vec<u8>, AuditError> {
    serde_json::to_vec(event).map_err(|e| AuditError::Encode(e.to_string()))
}

/// The chain hash of a record.
pub fn record_hash(seq: u64, prev_hash: &str, event: &Event) -> Result<String, AuditError> {
    Ok(hash_encoded(seq, prev_hash, &canonical(event)?))
}

/// The chain hash of a record whose event is already canonically encoded.
fn hash_encoded(seq: u64, prev_hash: &str, encoded: &[u8]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(DOMAIN);
    ctx.update(&seq.to_be_bytes());
    ctx.update(prev_hash.as_bytes());
    ctx.update(encoded);
    hex(ctx.finish().as_ref())
}

/// The writer's view of the chain: the next sequence number and the head hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub next_seq: u64,
    pub head: String,
}

impl Default for Chain {
    fn default() -> Self {
        Self {
            next_seq: 0,
            head: GENESIS.to_string(),
        }
    }
}

impl Chain {
    /// Continue after the last stored record (or from the start).
    pub fn after(last: Option<&Record>) -> Self {
        match last {
            None => Self::default(),
            Some(r) => Self {
                next_seq: r.seq + 1,
                head: r.hash.clone(),
            },
        }
    }

    /// Chain a new event.
    pub fn append(&mut self, event: Event) -> Result<Record, AuditError> {
        self.append_encoded(event).map(|(r, _)| r)
    }

    /// Chain a new event; also returns its canonical encoding (what is stored), so
    /// writers encode each event once.
    pub fn append_encoded(&mut self, event: Event) -> Result<(Record, Vec<u8>), AuditError> {
        let encoded = canonical(&event)?;
        let hash = hash_encoded(self.next_seq, &self.head, &encoded);
        let r = Record {
            seq: self.next_seq,
            prev_hash: self.head.clone(),
            hash: hash.clone(),
            event,
            columns: None,
        };
        self.next_seq += 1;
        self.head = hash;
        Ok((r, encoded))
    }
}

impl Checkpoint {
    /// The bytes a checkpoint signature covers.
    pub fn signed_bytes(size: u64, head: &str, time: i64) -> Vec<u8> {
        format!("lanyard-audit-checkpoint-v1\n{size}\n{head}\n{time}\n").into_bytes()
    }
}

/// The dedicated audit signing key.
pub struct AuditKey {
    key: EcdsaKeyPair,
    id: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl AuditKey {
    /// Generate a key; returns it with its PKCS#8 for storage (mode 0600).
    pub fn generate() -> Result<(Self, Vec<u8>), AuditError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|e| AuditError::Key(e.to_string()))?;
        let pkcs8 = doc.as_ref().to_vec();
        Ok((Self::from_pkcs8(&pkcs8)?, pkcs8))
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, AuditError> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der)
            .map_err(|e| AuditError::Key(e.to_string()))?;
        let id = key_id(key.public_key().as_ref());
        Ok(Self {
            key,
            id,
            rng: SystemRandom::new(),
        })
    }

    /// The public key (uncompressed point), for verifiers.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sign a checkpoint of the chain as it is now.
    pub fn checkpoint(&self, chain: &Chain, time: i64) -> Result<Checkpoint, AuditError> {
        let sig = self
            .key
            .sign(
                &self.rng,
                &Checkpoint::signed_bytes(chain.next_seq, &chain.head, time),
            )
            .map_err(|_| AuditError::Sign)?;
        Ok(Checkpoint {
            size: chain.next_seq,
            head: chain.head.clone(),
            time,
            key_id: self.id.clone(),
            signature: URL_SAFE_NO_PAD.encode(sig.as_ref()),
        })
    }
}

/// The stored index columns of record `seq` must equal the hashed event's.
fn check_columns(
    seq: u64,
    stored: &IndexColumns,
    hashed: &IndexColumns,
) -> Result<(), VerifyError> {
    let mismatch = |column, stored: String, hashed: String| VerifyError::ColumnMismatch {
        seq,
        column,
        stored,
        hashed,
    };
    if stored.time != hashed.time {
        return Err(mismatch(
            "time",
            stored.time.to_string(),
            hashed.time.to_string(),
        ));
    }
    if stored.kind != hashed.kind {
        return Err(mismatch("kind", stored.kind.clone(), hashed.kind.clone()));
    }
    if stored.subject != hashed.subject {
        let show = |s: &Option<String>| s.clone().unwrap_or_else(|| "NULL".to_string());
        return Err(mismatch(
            "subject",
            show(&stored.subject),
            show(&hashed.subject),
        ));
    }
    Ok(())
}

/// Verify stored records (in stored order) and checkpoints against the audit public
/// key. Returns a summary, or the first problem found.
pub fn verify(
    records: &[Record],
    checkpoints: &[Checkpoint],
    public_key: &[u8],
) -> Result<Summary, VerifyError> {
    verify_with_keys(records, checkpoints, &[public_key.to_vec()])
}

/// The id a checkpoint names its signing key by: the first 8 bytes (hex) of the
/// SHA-256 of the public key.
pub fn key_id(public_key: &[u8]) -> String {
    hex(&digest::digest(&digest::SHA256, public_key).as_ref()[..8])
}

/// [`verify`] with the public keys of every server that writes to the log (pinned
/// outside the datastore): each checkpoint is checked with the key it names. With
/// one key, every checkpoint is checked with it; with several, a checkpoint naming
/// a key not among them is refused.
pub fn verify_with_keys(
    records: &[Record],
    checkpoints: &[Checkpoint],
    public_keys: &[Vec<u8>],
) -> Result<Summary, VerifyError> {
    let mut prev: Option<&Record> = None;
    for (i, r) in records.iter().enumerate() {
        let expected = i as u64;
        if r.seq != expected {
            return Err(VerifyError::Gap {
                expected,
                found: r.seq,
            });
        }
        match prev {
            None if r.prev_hash != GENESIS => return Err(VerifyError::BadGenesis { seq: r.seq }),
            Some(p) if r.prev_hash != p.hash => {
                return Err(VerifyError::BrokenLink {
                    seq: r.seq,
                    prev: p.seq,
                });
            }
            _ => {}
        }
        let recomputed = record_hash(r.seq, &r.prev_hash, &r.event)
            .map_err(|_| VerifyError::Modified { seq: r.seq })?;
        if recomputed != r.hash {
            return Err(VerifyError::Modified { seq: r.seq });
        }
        if let Some(stored) = &r.columns {
            check_columns(r.seq, stored, &IndexColumns::of(&r.event))?;
        }
        prev = Some(r);
    }
    let keyed: Vec<(String, &Vec<u8>)> = public_keys.iter().map(|k| (key_id(k), k)).collect();
    for c in checkpoints {
        let key = match keyed.iter().find(|(id, _)| *id == c.key_id) {
            Some((_, k)) => *k,
            None => match public_keys {
                [only] => only,
                _ => {
                    return Err(VerifyError::UnknownKey {
                        size: c.size,
                        key_id: c.key_id.clone(),
                    });
                }
            },
        };
        let verifier = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key);
        let sig = URL_SAFE_NO_PAD.decode(&c.signature).unwrap_or_default();
        if verifier
            .verify(&Checkpoint::signed_bytes(c.size, &c.head, c.time), &sig)
            .is_err()
        {
            return Err(VerifyError::BadCheckpoint {
                size: c.size,
                key_id: c.key_id.clone(),
            });
        }
        let present = records.len() as u64;
        if c.size > present {
            return Err(VerifyError::Truncated {
                size: c.size,
                present,
            });
        }
        let head_ok = match c.size {
            0 => c.head == GENESIS,
            n => records
                .get(usize::try_from(n - 1).unwrap_or(usize::MAX))
                .is_some_and(|r| r.hash == c.head),
        };
        if !head_ok {
            return Err(VerifyError::CheckpointMismatch {
                seq: c.size.saturating_sub(1),
                size: c.size,
            });
        }
    }
    Ok(Summary {
        events: records.len() as u64,
        checkpoints: checkpoints.len() as u64,
        head: records
            .last()
            .map(|r| r.hash.clone())
            .unwrap_or_else(|| GENESIS.to_string()),
    })
}

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;
