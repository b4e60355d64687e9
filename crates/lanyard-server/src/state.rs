//! The server's shared state: configuration, datastore, CA, the published bundle, and
//! the change signal that drives pushed updates to agents.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use lanyard_audit::evidence::{BundleChanged, CaKeyStep};
use lanyard_ca::{
    CaConfig, CaSlot, CertificateAuthority, KeyAlgorithm, SigningKey, SlotRecord, SubjectKey,
    UpstreamCa,
};
use lanyard_core::bundle::pem_certificates;
use lanyard_core::{Bundle, BundleSet, Clock, SpiffeId, SystemClock};
use lanyard_store::{AnyStore, Entry, Node, Store};
use tokio::sync::watch;

use crate::config::ServerConfig;
use crate::tls::{SharedBundles, SvidResolver, certified_key};

/// Errors while starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("datastore: {0}")]
    Store(#[from] lanyard_store::StoreError),
    #[error("CA: {0}")]
    Ca(#[from] lanyard_ca::CaError),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    File(#[from] lanyard_fs::FsError),
    #[error("TLS: {0}")]
    Tls(#[from] lanyard_tls::TlsError),
    /// A listener could not be bound.
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// A file the server needs exists but cannot be used; `reason` says how to fix it.
    #[error("{what} {}: {reason}", path.display())]
    BadFile {
        what: String,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot generate {0}: the system random source failed")]
    Random(&'static str),
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    #[error("{0} lock poisoned")]
    Poisoned(&'static str),
    #[error("{} is in use: another lanyard server runs on this data dir", .0.display())]
    InUse(PathBuf),
    /// A listener stopped with an error.
    #[error("{what}: {reason}")]
    Serve { what: &'static str, reason: String },
    /// A task of the server panicked or was cancelled.
    #[error("a server task failed: {0}")]
    Task(String),
    /// What the request needs cannot be read now (fail closed).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Audit(#[from] lanyard_audit::AuditError),
    #[error("{0}")]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error("token key: {0}")]
    Token(#[from] lanyard_authz::TokenError),
    #[error("trust bundle: {0}")]
    Bundle(#[from] lanyard_core::BundleError),
    #[error("{0}")]
    Id(#[from] lanyard_core::IdError),
}

impl ServerError {
    /// A file operation on `path` failed.
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn bad_file(
        what: impl std::fmt::Display,
        path: &Path,
        reason: impl std::fmt::Display,
    ) -> Self {
        Self::BadFile {
            what: what.to_string(),
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

/// The path under which the server's own SVID lives.
pub const SERVER_PATH: &str = "/lanyard/server";

/// Shared server state.
pub struct Shared {
    pub config: ServerConfig,
    pub store: AnyStore,
    pub ca: RwLock<CertificateAuthority>,
    pub bundles: SharedBundles,
    /// The published bundle document (with its sequence).
    pub bundle: RwLock<PublishedBundle>,
    pub changes: watch::Sender<u64>,
    /// The registration entries, indexed (see [`crate::entries`]).
    pub entries: crate::entries::EntryCache,
    pub server_id: SpiffeId,
    pub server_tls: Arc<SvidResolver>,
    server_svid_expiry: RwLock<(i64, i64)>,
    pub x509pop_roots: Option<BundleSet>,
    /// Federated trust domains' bundles (name -> SPIFFE bundle JSON).
    pub federated: std::collections::BTreeMap<String, String>,
    keystore: PathBuf,
    pub clock: Arc<dyn Clock>,
    /// The dedicated audit key that signs evidence-log checkpoints.
    pub audit_key: lanyard_audit::AuditKey,
    /// This server's identity in audit events.
    pub server_name: String,
    /// Compiled policy sets by kind, with the stored version they came from.
    pub policies: RwLock<
        std::collections::HashMap<
            lanyard_policy::PolicyKind,
            (i64, lanyard_policy::CompiledPolicies),
        >,
    >,
    /// Seals exception secrets at rest.
    pub secrets: crate::secrets::SecretBox,
    /// Group-commit queue for events that are not part of a state change's own
    /// transaction (attestations, issuance, CA steps).
    audit_queue: lanyard_store::AuditQueue,
    /// Head of the log at the last checkpoint.
    last_checkpoint: std::sync::Mutex<Option<u64>>,
}

#[derive(Debug, Clone, Default)]
pub struct PublishedBundle {
    pub sequence: u64,
    pub document: String,
    pub bundle: Option<Bundle>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("trust_domain", &self.config.trust_domain)
            .finish_non_exhaustive()
    }
}

fn io(action: &'static str, path: &Path, e: std::io::Error) -> ServerError {
    ServerError::io(action, path, e)
}

/// Write a file atomically with mode 0600 (see [`lanyard_fs::write_private`]).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), ServerError> {
    Ok(lanyard_fs::write_private(path, data)?)
}

fn load_slots(path: &Path) -> Result<Vec<CaSlot>, ServerError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("cannot read", path, e)),
    };
    let records: Vec<SlotRecord> = serde_json::from_str(&text).map_err(|e| {
        ServerError::bad_file(
            "the CA key file",
            path,
            format!("is corrupt: {e}; restore it from backup (removing it makes a new CA)"),
        )
    })?;
    records
        .iter()
        .map(|r| CaSlot::from_record(r).map_err(ServerError::from))
        .collect()
}

fn load_upstream(cfg: &ServerConfig) -> Result<Option<UpstreamCa>, ServerError> {
    let (Some(cert), Some(key)) = (&cfg.upstream_cert, &cfg.upstream_key) else {
        return Ok(None);
    };
    let certs = pem_certificates(&std::fs::read(cert).map_err(|e| io("cannot read", cert, e))?)
        .map_err(|e| ServerError::bad_file("ca.upstream_cert", cert, e))?;
    let key_pem = std::fs::read_to_string(key).map_err(|e| io("cannot read", key, e))?;
    let key = SigningKey::from_pkcs8_pem(&key_pem)
        .map_err(|e| ServerError::bad_file("ca.upstream_key", key, e))?;
    Ok(Some(UpstreamCa::new(certs, key)?))
}

fn load_x509pop_roots(cfg: &ServerConfig) -> Result<Option<BundleSet>, ServerError> {
    let Some(path) = &cfg.x509pop_ca_bundle else {
        return Ok(None);
    };
    let td = crate::node::x509pop_trust_domain()?;
    let bytes = std::fs::read(path).map_err(|e| io("cannot read", path, e))?;
    let b = Bundle::from_pem(td, &bytes)
        .map_err(|e| ServerError::bad_file("x509pop.ca_bundle", path, e))?;
    Ok(Some([b].into_iter().collect()))
}

/// The audit key: `audit-key.pk8` (0600) and its public half `audit-key.pub` (hex),
/// which `lanyard audit verify` uses.
fn load_or_create_audit_key(dir: &Path) -> Result<lanyard_audit::AuditKey, ServerError> {
    let path = dir.join("audit-key.pk8");
    let key = match std::fs::read(&path) {
        Ok(der) => lanyard_audit::AuditKey::from_pkcs8(&der).map_err(|e| {
            ServerError::bad_file(
                "the audit key",
                &path,
                format!("{e}; restore it from backup"),
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (key, der) = lanyard_audit::AuditKey::generate()?;
            write_private(&path, &der)?;
            key
        }
        Err(e) => return Err(io("cannot read", &path, e)),
    };
    let public = hex::encode(key.public_key());
    let pub_path = dir.join("audit-key.pub");
    if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(public.as_str()) {
        std::fs::write(&pub_path, &public).map_err(|e| io("cannot write", &pub_path, e))?;
    }
    Ok(key)
}

fn load_or_create_server_name(dir: &Path) -> Result<String, ServerError> {
    let path = dir.join("server-id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(s.trim().to_string());
    }
    let mut raw = [0u8; 8];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| ServerError::Random("the server name"))?;
    let name = hex::encode(raw);
    std::fs::write(&path, &name).map_err(|e| io("cannot write", &path, e))?;
    Ok(name)
}

fn load_federation(
    cfg: &ServerConfig,
) -> Result<std::collections::BTreeMap<String, String>, ServerError> {
    let mut out = std::collections::BTreeMap::new();
    for (td, path) in &cfg.federation {
        let bytes = std::fs::read(path).map_err(|e| io("cannot read", path, e))?;
        let bundle = Bundle::parse_json_or_pem(td.clone(), &bytes)
            .map_err(|e| ServerError::bad_file(format!("federation {td}:"), path, e))?;
        let doc = bundle.to_json()?;
        out.insert(td.name().to_string(), doc);
    }
    Ok(out)
}

impl Shared {
    /// Open the datastore, load or create the CA, publish the bundle, mint the
    /// server's own SVID.
    pub async fn open(
        config: ServerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, ServerError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| io("cannot create data dir", &config.data_dir, e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ =
                std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700));
        }
        let store = match &config.database_url {
            Some(url) => AnyStore::open(url).await?,
            None => {
                let path = config.data_dir.join("lanyard.db");
                let s = AnyStore::open(&path.to_string_lossy()).await?;
                {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
                }
                s
            }
        };
        let keystore = config.data_dir.join("ca-keys.json");
        let slots = load_slots(&keystore)?;
        let mut ca_cfg = CaConfig::new(config.trust_domain.clone());
        ca_cfg.key_algorithm = config.key_type;
        ca_cfg.ca_ttl = config.ca_ttl;
        ca_cfg.x509_svid_ttl = config.x509_svid_ttl;
        ca_cfg.jwt_svid_ttl = config.jwt_svid_ttl;
        ca_cfg.jwt_issuer = config.jwt_issuer.clone();
        ca_cfg.common_name = config.ca_common_name.clone();
        let upstream = load_upstream(&config)?;
        let mut ca = CertificateAuthority::new(ca_cfg, upstream, slots)?;
        let now = clock.unix_seconds();
        let initial_events = ca.tick(now)?;
        let server_id = SpiffeId::from_parts(&config.trust_domain, SERVER_PATH)?;
        let (server_key, minted) = mint_server_svid(&ca, &server_id, now)?;
        let resolver = Arc::new(SvidResolver::new(certified_key(
            &minted.chain,
            server_key.pkcs8_der(),
        )?));
        let x509pop_roots = load_x509pop_roots(&config)?;
        let federated = load_federation(&config)?;
        let audit_key = load_or_create_audit_key(&config.data_dir)?;
        let server_name = load_or_create_server_name(&config.data_dir)?;
        let (changes, _) = watch::channel(0u64);
        let audit_queue = lanyard_store::AuditQueue::start(store.clone(), 256);
        let secrets = crate::secrets::SecretBox::load_or_create(&config.data_dir)?;
        let shared = Arc::new(Self {
            policies: RwLock::new(Default::default()),
            secrets,
            audit_queue,
            store,
            ca: RwLock::new(ca),
            bundles: Arc::new(RwLock::new(BundleSet::new())),
            bundle: RwLock::new(PublishedBundle::default()),
            changes,
            entries: crate::entries::EntryCache::default(),
            server_id,
            server_tls: resolver,
            server_svid_expiry: RwLock::new((now, minted.not_after)),
            x509pop_roots,
            federated,
            keystore,
            clock,
            audit_key,
            server_name,
            last_checkpoint: std::sync::Mutex::new(None),
            config,
        });
        shared.save_keys()?;
        let audit = initial_events.iter().map(|e| shared.ca_event(e)).collect();
        shared.record(audit).await?;
        shared.publish_bundle().await?;
        Ok(shared)
    }

    fn save_keys(&self) -> Result<(), ServerError> {
        let records: Vec<SlotRecord> = {
            let ca = self.ca_read()?;
            ca.slots().iter().map(CaSlot::to_record).collect()
        };
        let json = serde_json::to_vec_pretty(&records).map_err(|e| ServerError::Encode {
            what: "the CA key file",
            reason: e.to_string(),
        })?;
        write_private(&self.keystore, &json)
    }

    pub fn ca_read(
        &self,
    ) -> Result<std::sync::RwLockReadGuard<'_, CertificateAuthority>, ServerError> {
        self.ca.read().map_err(|_| ServerError::Poisoned("CA"))
    }

    /// Publish the CA's bundle if it differs from the stored one (the sequence then
    /// increases); always refresh the in-memory copies.
    pub async fn publish_bundle(&self) -> Result<(), ServerError> {
        let bundle = self.ca_read()?.bundle()?;
        let doc = bundle.to_json()?;
        let td = self.config.trust_domain.name().to_string();
        let stored = self.store.get_bundle(&td).await?;
        let sequence = match stored {
            Some(s) if s.document == doc => s.sequence,
            _ => {
                let seq = self
                    .store
                    .put_bundle(&td, &doc, self.clock.unix_seconds(), &|seq| {
                        let mut ev = self.event(
                            lanyard_audit::EventKind::BundleChanged,
                            lanyard_audit::Outcome::Success,
                        );
                        ev.subject = Some(self.config.trust_domain.id_string());
                        ev.set_evidence(BundleChanged::new(*seq));
                        vec![ev]
                    })
                    .await?;
                tracing::info!(sequence = seq, "trust bundle changed");
                seq
            }
        };
        let mut with_seq = bundle.clone();
        with_seq.set_sequence(sequence);
        with_seq.set_refresh_hint(300);
        let document = with_seq.to_json()?;
        if let Ok(mut b) = self.bundles.write() {
            b.insert(bundle);
        }
        let changed = {
            let mut p = self
                .bundle
                .write()
                .map_err(|_| ServerError::Poisoned("bundle"))?;
            let changed = p.sequence != sequence;
            *p = PublishedBundle {
                sequence,
                document,
                bundle: Some(with_seq),
            };
            changed
        };
        if changed {
            self.notify();
        }
        Ok(())
    }

    pub fn published(&self) -> PublishedBundle {
        self.bundle.read().map(|b| b.clone()).unwrap_or_default()
    }

    /// A new audit event of `kind`, stamped with id, time, schema version and server.
    pub fn event(
        &self,
        kind: lanyard_audit::EventKind,
        outcome: lanyard_audit::Outcome,
    ) -> lanyard_audit::Event {
        let mut raw = [0u8; 16];
        let _ = aws_lc_rs::rand::fill(&mut raw);
        let millis = self
            .clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        lanyard_audit::Event::new(
            hex::encode(raw),
            millis,
            kind,
            outcome,
            self.server_name.clone(),
        )
    }

    /// Taint a CA slot (`lanyard ca taint`): a new key signs from now on, agents
    /// re-mint what the tainted key signed, and it leaves the bundle once no agent
    /// reports depending on it (see [`Self::drop_tainted_when_unused`]).
    pub async fn taint(
        &self,
        slot: &str,
        actor: &str,
        policy_ids: &[String],
    ) -> Result<(), ServerError> {
        let now = self.clock.unix_seconds();
        let events = {
            let mut ca = self.ca.write().map_err(|_| ServerError::Poisoned("CA"))?;
            ca.taint(slot, now)?
        };
        let audit = events
            .iter()
            .map(|e| {
                let mut ev = self.ca_event(e);
                ev.actor = Some(actor.to_string());
                ev.policy_ids = policy_ids.to_vec();
                ev
            })
            .collect();
        self.record(audit).await?;
        self.save_keys()?;
        self.renew_server_svid(now)?;
        self.publish_bundle().await?;
        self.notify();
        Ok(())
    }

    /// Subject Key Identifiers (hex) of tainted slots' certificates, and their JWT
    /// key ids: what agents must stop relying on.
    pub fn tainted_authorities(&self) -> Vec<String> {
        let Ok(ca) = self.ca_read() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for s in ca.slots() {
            if s.state() == lanyard_ca::SlotState::Tainted {
                if let Some(ski) = lanyard_core::x509::subject_key_id(s.x509_cert_der()) {
                    out.push(ski);
                }
                out.push(s.jwt_kid().to_string());
            }
        }
        out
    }

    /// Take tainted slots out of the bundle once nothing depends on them: every agent
    /// whose SVID is still valid has reported, after the taint, holdings without the
    /// tainted key (or the SVIDs it held from that key have expired).
    pub async fn drop_tainted_when_unused(&self) -> Result<(), ServerError> {
        let now = self.clock.unix_seconds();
        let tainted: Vec<(String, String, i64)> = {
            let ca = self.ca_read()?;
            ca.slots()
                .iter()
                .filter(|s| s.state() == lanyard_ca::SlotState::Tainted)
                .filter_map(|s| {
                    Some((
                        s.id().to_string(),
                        lanyard_core::x509::subject_key_id(s.x509_cert_der())?,
                        s.tainted_at().unwrap_or(0),
                    ))
                })
                .collect()
        };
        if tainted.is_empty() {
            return Ok(());
        }
        let nodes = self.store.list_nodes().await?;
        let mut removed = Vec::new();
        for (slot, ski, tainted_at) in tainted {
            let depends = nodes
                .iter()
                .filter(|n| !n.banned && n.expires_at > now)
                .any(|n| {
                    n.holdings.reported_at < tainted_at
                        || n.holdings
                            .authorities
                            .get(&ski)
                            .is_some_and(|&exp| exp > now)
                });
            if !depends {
                let ev = self
                    .ca
                    .write()
                    .map_err(|_| ServerError::Poisoned("CA"))?
                    .remove_tainted(&slot);
                if let Some(ev) = ev {
                    tracing::warn!(slot = %slot, "tainted CA key removed from the bundle: nothing depends on it");
                    removed.push(ev);
                }
            }
        }
        if !removed.is_empty() {
            let audit = removed
                .iter()
                .map(|e| {
                    let mut ev = self.ca_event(e);
                    ev.reason = Some("tainted key no longer used by any agent".to_string());
                    ev
                })
                .collect();
            self.record(audit).await?;
            self.save_keys()?;
            self.publish_bundle().await?;
        }
        Ok(())
    }

    fn renew_server_svid(&self, now: i64) -> Result<(), ServerError> {
        let (key, minted) = {
            let ca = self.ca_read()?;
            mint_server_svid(&ca, &self.server_id, now)?
        };
        self.server_tls
            .set(certified_key(&minted.chain, key.pkcs8_der())?);
        if let Ok(mut g) = self.server_svid_expiry.write() {
            *g = (now, minted.not_after);
        }
        Ok(())
    }

    /// The audit event for a CA rotation step.
    fn ca_event(&self, e: &lanyard_ca::CaEvent) -> lanyard_audit::Event {
        use lanyard_audit::EventKind;
        use lanyard_ca::CaEvent;
        let (kind, slot) = match e {
            CaEvent::Prepared { slot, .. } => (EventKind::CaKeyPrepared, slot),
            CaEvent::Activated { slot } => (EventKind::CaKeyActivated, slot),
            CaEvent::Retired { slot } | CaEvent::Removed { slot } => {
                (EventKind::CaKeyRetired, slot)
            }
            CaEvent::Tainted { slot } => (EventKind::CaKeyTainted, slot),
        };
        self.event(kind, lanyard_audit::Outcome::Success)
            .with(CaKeyStep::new(slot))
    }

    /// Append events to the evidence log (group commit: concurrent callers share one
    /// transaction); callers hand out nothing until this returns Ok, which is after
    /// the commit.
    pub async fn record(&self, events: Vec<lanyard_audit::Event>) -> Result<(), ServerError> {
        self.audit_queue.append(events).await?;
        Ok(())
    }

    /// Sign a checkpoint if the log grew since the last one; also append it to the
    /// external checkpoint file when configured.
    pub async fn checkpoint(&self) -> Result<(), ServerError> {
        let chain = self.store.audit_chain().await?;
        let done = self.last_checkpoint.lock().map(|g| *g).unwrap_or(None);
        if done == Some(chain.next_seq) || chain.next_seq == 0 {
            return Ok(());
        }
        let cp = self
            .audit_key
            .checkpoint(&chain, self.clock.unix_seconds())?;
        self.store.put_audit_checkpoint(&cp).await?;
        if let Some(path) = &self.config.audit_checkpoint_file {
            use std::io::Write as _;
            let line = serde_json::to_string(&cp).map_err(|e| ServerError::Encode {
                what: "the audit checkpoint",
                reason: e.to_string(),
            })?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| io("cannot append to", path, e))?;
            writeln!(f, "{line}").map_err(|e| io("cannot append to", path, e))?;
            f.sync_all().map_err(|e| io("cannot sync", path, e))?;
        }
        if let Ok(mut g) = self.last_checkpoint.lock() {
            *g = Some(chain.next_seq);
        }
        Ok(())
    }

    /// Tell every pushed stream that something changed.
    pub fn notify(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// One rotation step: advance the CA, persist keys, republish, renew our SVID.
    pub async fn tick(&self) -> Result<(), ServerError> {
        let now = self.clock.unix_seconds();
        let events = {
            let mut ca = self.ca.write().map_err(|_| ServerError::Poisoned("CA"))?;
            ca.tick(now)?
        };
        if !events.is_empty() {
            for e in &events {
                tracing::info!(event = ?e, "CA rotation");
            }
            let audit = events.iter().map(|e| self.ca_event(e)).collect();
            self.record(audit).await?;
            self.save_keys()?;
            self.publish_bundle().await?;
        }
        let (issued, expiry) = self.server_svid_expiry.read().map(|g| *g).unwrap_or((0, 0));
        if now >= issued + (expiry - issued) / 2 || !events.is_empty() {
            self.renew_server_svid(now)?;
        }
        self.drop_tainted_when_unused().await?;
        Ok(())
    }

    /// The entry index as of the latest change this server knows of (see
    /// [`crate::entries::EntryCache`]); unavailable when it cannot be read fresh.
    pub async fn entry_index(&self) -> Result<Arc<(u64, crate::entries::EntryIndex)>, ServerError> {
        let version = *self.changes.borrow();
        self.entries
            .get(&self.store, &self.server_id, version)
            .await
            .map_err(|e| ServerError::Unavailable(e.0))
    }

    /// The entries an agent may serve: those parented to the agent itself and to any
    /// node alias (an entry parented to the server) whose selectors the agent has.
    /// Expired entries issue nothing and are left out.
    pub async fn authorized_entries(&self, node: &Node) -> Result<Vec<Entry>, ServerError> {
        let index = self.entry_index().await?;
        Ok(index
            .1
            .authorized(&node.spiffe_id, &node.selectors, self.clock.unix_seconds()))
    }
}

fn mint_server_svid(
    ca: &CertificateAuthority,
    id: &SpiffeId,
    now: i64,
) -> Result<(SigningKey, lanyard_ca::MintedX509), ServerError> {
    let key = SigningKey::generate(KeyAlgorithm::EcP256)?;
    let minted = ca.mint_x509_svid(
        id,
        SubjectKey::PublicKey(&key.public_key_der()),
        Some(Duration::from_secs(3600)),
        &[],
        now,
    )?;
    Ok((key, minted))
}

/// The system clock as a shared trait object.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}
