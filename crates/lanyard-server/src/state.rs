//! The server's shared state: configuration, datastore, CA, the published bundle, and
//! the change signal that drives pushed updates to agents.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lanyard_audit::evidence::BundleChanged;
use lanyard_ca::{
    CaConfig, CaSlot, CertificateAuthority, KeyAlgorithm, SigningKey, SlotRecord, SubjectKey,
    UpstreamCa,
};
use lanyard_core::bundle::pem_certificates;
use lanyard_core::{Bundle, BundleSet, Clock, SpiffeId, SystemClock};
use lanyard_store::{AnyStore, Node, Store};

use crate::config::ServerConfig;
pub use crate::handles::PublishedBundle;
use crate::handles::{AuditSink, Authority, Changes, Entries, PolicyCache, Publication};
use crate::tls::{SvidResolver, certified_key};

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

/// The server's state, as narrow handles (see [`crate::handles`]). Services take
/// the handles they touch; what spans several (CA rotation, taint, publication,
/// the periodic tick) is here.
pub struct Shared {
    pub config: ServerConfig,
    pub store: AnyStore,
    pub clock: Arc<dyn Clock>,
    pub server_id: SpiffeId,
    pub ca: Arc<Authority>,
    pub publication: Arc<Publication>,
    pub audit: Arc<AuditSink>,
    pub policies: Arc<PolicyCache>,
    pub changes: Changes,
    /// The registration entries, indexed (see [`crate::entries`]).
    pub entries: Arc<Entries>,
    pub x509pop_roots: Option<BundleSet>,
    /// Seals exception secrets at rest.
    pub secrets: Arc<crate::secrets::SecretBox>,
    /// Whether the datastore answers (probed in the background).
    pub db_health: Arc<crate::handles::DatastoreHealth>,
    /// This server's name among the servers sharing the datastore (`server-id` in
    /// the data dir; events' `server_id`).
    pub server_name: String,
    /// When this process started (unix seconds).
    pub started_at: i64,
    /// The agent API address, once bound (what `lanyard server list` shows).
    pub agent_address: std::sync::OnceLock<String>,
    /// The token-signing key shared through the datastore (with a KEK); `None`:
    /// `DATA_DIR/token-signing.pk8`.
    pub token_key_pkcs8: Option<Vec<u8>>,
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

/// The key in the file `path`, or — when there is no such file — a new one from
/// `generate`, written there (mode 0600) when `write`.
pub(crate) fn read_or_generate(
    path: &Path,
    write: bool,
    generate: impl FnOnce() -> Result<Vec<u8>, ServerError>,
) -> Result<Vec<u8>, ServerError> {
    match std::fs::read(path) {
        Ok(key) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate()?;
            if write {
                write_private(path, &key)?;
            }
            Ok(key)
        }
        Err(e) => Err(io("cannot read", path, e)),
    }
}

/// The audit key's PKCS#8 in `dir/audit-key.pk8`, or a new one (written there when
/// `write`).
fn local_audit_key(dir: &Path, write: bool) -> Result<Vec<u8>, ServerError> {
    read_or_generate(&dir.join("audit-key.pk8"), write, || {
        Ok(lanyard_audit::AuditKey::generate()?.1)
    })
}

/// The audit key from its PKCS#8, and its public half written to `audit-key.pub`
/// (hex), which `lanyard audit verify` pins.
fn audit_key(dir: &Path, der: &[u8]) -> Result<lanyard_audit::AuditKey, ServerError> {
    let path = dir.join("audit-key.pk8");
    let key = lanyard_audit::AuditKey::from_pkcs8(der).map_err(|e| {
        ServerError::bad_file(
            "the audit key",
            &path,
            format!("{e}; restore it from backup"),
        )
    })?;
    let public = hex::encode(key.public_key());
    let pub_path = dir.join("audit-key.pub");
    if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(public.as_str()) {
        std::fs::write(&pub_path, &public).map_err(|e| io("cannot write", &pub_path, e))?;
    }
    Ok(key)
}

/// The keys every server needs: from the datastore, sealed under the KEK, when
/// there is one (the first server stores its own); else from the data dir.
struct ServerKeys {
    audit: lanyard_audit::AuditKey,
    secrets: crate::secrets::SecretBox,
    token_pkcs8: Option<Vec<u8>>,
    /// Keys this server stored in the datastore (name, KEK id), for the evidence log.
    published: Vec<(String, String)>,
}

async fn load_keys(
    config: &ServerConfig,
    store: &AnyStore,
    server_name: &str,
    now: i64,
) -> Result<ServerKeys, ServerError> {
    use crate::keyring::{self, Source};
    let dir = &config.data_dir;
    let env = std::env::var("LANYARD_KEK").ok();
    let Some(kek) = keyring::load_kek(config.kek_file.as_deref(), env.as_deref())? else {
        if config.database_url.is_some() {
            tracing::warn!(
                "no kek_file: secrets.key, token-signing.pk8 and audit-key.pk8 stay in the data dir; copy secrets.key and token-signing.pk8 to every server sharing this database, or set kek_file (docs/ha.md)"
            );
        }
        return Ok(ServerKeys {
            audit: audit_key(dir, &local_audit_key(dir, true)?)?,
            secrets: crate::secrets::SecretBox::load_or_create(dir)?,
            token_pkcs8: None,
            published: Vec::new(),
        });
    };
    let mut published = Vec::new();
    let mut note = |name: &str, src: Source| {
        if src == Source::Published {
            tracing::info!(
                key = name,
                kek = kek.id(),
                "key stored in the datastore, sealed under the KEK"
            );
            published.push((name.to_string(), kek.id().to_string()));
        }
    };
    let audit_name = keyring::audit_key_name(server_name);
    let (audit_der, src) = keyring::shared_key(store, &kek, &audit_name, now, || {
        local_audit_key(dir, false)
    })
    .await?;
    note(&audit_name, src);
    let (secret, src) = keyring::shared_key(store, &kek, keyring::SECRETS_KEY, now, || {
        crate::secrets::SecretBox::local_key(dir, false)
    })
    .await?;
    note(keyring::SECRETS_KEY, src);
    let (token, src) = keyring::shared_key(store, &kek, keyring::TOKEN_KEY, now, || {
        crate::access::TokenKey::local_pkcs8(dir, false)
    })
    .await?;
    note(keyring::TOKEN_KEY, src);
    if std::fs::read(dir.join("secrets.key")).is_ok_and(|local| local != secret) {
        tracing::warn!(
            "DATA_DIR/secrets.key differs from the shared secrets key in the datastore, which this server uses; remove the file"
        );
    }
    Ok(ServerKeys {
        audit: audit_key(dir, &audit_der)?,
        secrets: crate::secrets::SecretBox::from_bytes(&secret)?,
        token_pkcs8: Some(token),
        published,
    })
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
        let server_name = load_or_create_server_name(&config.data_dir)?;
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
        let store = store.with_origin(&server_name);
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
        let keys = load_keys(&config, &store, &server_name, now).await?;
        let (audit_key, secrets) = (keys.audit, keys.secrets);
        let changes = Changes::default();
        let shared = Arc::new(Self {
            audit: Arc::new(AuditSink::start(
                store.clone(),
                audit_key,
                server_name.clone(),
                clock.clone(),
                config.audit_checkpoint_file.clone(),
            )),
            entries: Arc::new(Entries::new(
                store.clone(),
                server_id.clone(),
                changes.clone(),
            )),
            changes,
            policies: Arc::new(PolicyCache::default()),
            secrets: Arc::new(secrets),
            db_health: Arc::default(),
            server_name,
            started_at: now,
            token_key_pkcs8: keys.token_pkcs8,
            agent_address: std::sync::OnceLock::new(),
            store,
            ca: Arc::new(Authority::new(
                ca,
                keystore,
                server_id.clone(),
                resolver,
                (now, minted.not_after),
            )),
            publication: Arc::new(Publication::new(federated)),
            server_id,
            x509pop_roots,
            clock,
            config,
        });
        shared.ca.save_keys()?;
        let mut audit: Vec<lanyard_audit::Event> = initial_events
            .iter()
            .map(|e| shared.audit.ca_event(e))
            .collect();
        for (name, kek_id) in &keys.published {
            let mut ev = shared.audit.event(
                lanyard_audit::EventKind::KeyStored,
                lanyard_audit::Outcome::Success,
            );
            ev.subject = Some(shared.server_id.to_string());
            ev.set_evidence(lanyard_audit::evidence::KeyStored::new(name, kek_id));
            audit.push(ev);
        }
        shared.audit.record(audit).await?;
        shared.publish_bundle().await?;
        Ok(shared)
    }

    /// Publish this server's authorities and heartbeat in the datastore, then serve
    /// the trust domain's bundle: the union of every live server's authorities
    /// (see [`crate::cluster`]), stored with one increasing sequence shared by all
    /// servers (it increases only when the document changes). Always refreshes the
    /// in-memory copies.
    pub async fn publish_bundle(&self) -> Result<(), ServerError> {
        let now = self.clock.unix_seconds();
        let authorities = crate::cluster::own_authorities(&*self.ca.read()?)?;
        let record = lanyard_store::ServerRecord {
            name: self.server_name.clone(),
            address: self.agent_address.get().cloned().unwrap_or_default(),
            expires_at: authorities.iter().map(|a| a.not_after).max().unwrap_or(0),
            authorities,
            started_at: self.started_at,
            seen_at: now,
            deregistered_at: None,
        };
        let registered = self
            .store
            .register_server(&record, &|r| {
                if !r.joined {
                    return Vec::new();
                }
                let mut ev = self.audit.event(
                    lanyard_audit::EventKind::ServerJoined,
                    lanyard_audit::Outcome::Success,
                );
                ev.subject = Some(self.server_id.to_string());
                ev.set_evidence(lanyard_audit::evidence::ServerChanged::new(
                    &self.server_name,
                    crate::cluster::authority_ids(&r.record.authorities),
                ));
                vec![ev]
            })
            .await?;
        if registered.joined {
            tracing::info!(server = %self.server_name, "this server joined the trust domain: its keys are in the bundle");
        }
        if let Some(at) = registered.record.deregistered_at {
            tracing::error!(
                server = %self.server_name,
                deregistered_at = at,
                "this server was deregistered (lanyard server deregister): its keys are not in the trust bundle, so agents and workloads do not trust it; stop it, and start it with a new data dir to rejoin"
            );
        }
        let servers = self.store.list_servers().await?;
        let (bundle, skipped) =
            crate::cluster::union_bundle(&self.config.trust_domain, &servers, now);
        for s in &skipped {
            tracing::error!(authority = %s, "a published authority in the datastore does not decode; left out of the bundle");
        }
        let doc = bundle.to_json()?;
        let td = self.config.trust_domain.name().to_string();
        let put = self
            .store
            .put_bundle(&td, &doc, now, &|p| {
                if !p.changed {
                    return Vec::new();
                }
                let mut ev = self.audit.event(
                    lanyard_audit::EventKind::BundleChanged,
                    lanyard_audit::Outcome::Success,
                );
                ev.subject = Some(self.config.trust_domain.id_string());
                ev.set_evidence(BundleChanged::new(p.sequence));
                vec![ev]
            })
            .await?;
        if put.changed {
            tracing::info!(sequence = put.sequence, "trust bundle changed");
        }
        let sequence = put.sequence;
        let mut with_seq = bundle.clone();
        with_seq.set_sequence(sequence);
        with_seq.set_refresh_hint(300);
        let document = with_seq.to_json()?;
        let tainted_changed = self
            .publication
            .set_tainted(crate::cluster::tainted(&servers, now));
        if self.publication.set(bundle, with_seq, sequence, document)? || tainted_changed {
            self.changes.notify();
        }
        Ok(())
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
            let mut ca = self.ca.write()?;
            ca.taint(slot, now)?
        };
        let audit = events
            .iter()
            .map(|e| {
                let mut ev = self.audit.ca_event(e);
                ev.actor = Some(actor.to_string());
                ev.policy_ids = policy_ids.to_vec();
                ev
            })
            .collect();
        self.audit.record(audit).await?;
        self.ca.save_keys()?;
        self.ca.renew_server_svid(now)?;
        self.publish_bundle().await?;
        self.changes.notify();
        Ok(())
    }

    /// Take tainted slots out of the bundle once nothing depends on them: every agent
    /// whose SVID is still valid has reported, after the taint, holdings without the
    /// tainted key (or the SVIDs it held from that key have expired).
    pub async fn drop_tainted_when_unused(&self) -> Result<(), ServerError> {
        let now = self.clock.unix_seconds();
        let tainted: Vec<(String, String, i64)> = {
            let ca = self.ca.read()?;
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
            if !depended_on(&nodes, &ski, tainted_at, now) {
                let ev = self.ca.write()?.remove_tainted(&slot);
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
                    let mut ev = self.audit.ca_event(e);
                    ev.reason = Some("tainted key no longer used by any agent".to_string());
                    ev
                })
                .collect();
            self.audit.record(audit).await?;
            self.ca.save_keys()?;
            self.publish_bundle().await?;
        }
        Ok(())
    }

    /// One rotation step: advance the CA, persist keys, republish, renew our SVID.
    pub async fn tick(&self) -> Result<(), ServerError> {
        let now = self.clock.unix_seconds();
        let events = {
            let mut ca = self.ca.write()?;
            ca.tick(now)?
        };
        if !events.is_empty() {
            for e in &events {
                tracing::info!(event = ?e, "CA rotation");
            }
            let audit = events.iter().map(|e| self.audit.ca_event(e)).collect();
            self.audit.record(audit).await?;
            self.ca.save_keys()?;
        }
        // Every tick: the heartbeat, and the union of every server's keys (another
        // server's rotation, expiry or deregistration changes it).
        self.publish_bundle().await?;
        if self.ca.server_svid_due(now) || !events.is_empty() {
            self.ca.renew_server_svid(now)?;
        }
        self.drop_tainted_when_unused().await?;
        self.store.prune_changes(crate::feed::KEEP).await?;
        Ok(())
    }
}

/// Whether a tainted CA key (certificate SKI `ski`, tainted at `tainted_at`) is still
/// depended on at `now`: some live agent (not banned, SVID unexpired) has not
/// reported holdings since the taint, or reports an unexpired SVID from that key.
pub fn depended_on(nodes: &[Node], ski: &str, tainted_at: i64, now: i64) -> bool {
    nodes
        .iter()
        .filter(|n| !n.banned && n.expires_at > now)
        .any(|n| {
            n.holdings.reported_at < tainted_at
                || n.holdings
                    .authorities
                    .get(ski)
                    .is_some_and(|&exp| exp > now)
        })
}

pub(crate) fn mint_server_svid(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node(banned: bool, expires_at: i64, reported_at: i64, held: &[(&str, i64)]) -> Node {
        let n = lanyard_testkit::node("/lanyard/agent/join_token/t", expires_at)
            .holdings(reported_at, held);
        if banned {
            n.banned().build()
        } else {
            n.build()
        }
    }

    #[test]
    fn a_tainted_key_is_depended_on_until_every_live_agent_reported_without_it() {
        // Tainted at 100, now 200.
        // An agent that has not reported since the taint may still hold it.
        assert!(depended_on(&[node(false, 500, 99, &[])], "ski", 100, 200));
        // One that reported since, without the key, does not.
        assert!(!depended_on(&[node(false, 500, 150, &[])], "ski", 100, 200));
        // One that reports an unexpired SVID from the key does.
        assert!(depended_on(
            &[node(false, 500, 150, &[("ski", 300)])],
            "ski",
            100,
            200
        ));
        // ...until that SVID expires.
        assert!(!depended_on(
            &[node(false, 500, 150, &[("ski", 200)])],
            "ski",
            100,
            200
        ));
        // Banned agents and agents whose own SVID expired count for nothing.
        assert!(!depended_on(&[node(true, 500, 0, &[])], "ski", 100, 200));
        assert!(!depended_on(&[node(false, 200, 0, &[])], "ski", 100, 200));
        // Any one live dependent keeps the key.
        assert!(depended_on(
            &[node(false, 500, 150, &[]), node(false, 500, 50, &[])],
            "ski",
            100,
            200
        ));
        assert!(!depended_on(&[], "ski", 100, 200));
    }

    #[test]
    fn server_errors_say_which_file_and_how_to_fix_it() {
        let e = ServerError::bad_file(
            "the CA key file",
            Path::new("/d/ca-keys.json"),
            "is corrupt: x; restore it from backup",
        );
        assert_eq!(
            e.to_string(),
            "the CA key file /d/ca-keys.json: is corrupt: x; restore it from backup"
        );
        let e = ServerError::io(
            "cannot read",
            Path::new("/d/x"),
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert!(e.to_string().starts_with("cannot read /d/x: "), "{e}");
    }

    #[test]
    fn a_corrupt_ca_key_file_is_refused_not_replaced() {
        let dir = std::env::temp_dir().join(format!("lanyard-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ca-keys.json");
        // Missing: a new CA.
        let _ = std::fs::remove_file(&path);
        assert!(load_slots(&path).unwrap().is_empty());
        std::fs::write(&path, b"{not json").unwrap();
        let e = load_slots(&path).unwrap_err().to_string();
        assert!(
            e.contains("is corrupt") && e.contains("restore it from backup"),
            "{e}"
        );
        // The file is left as it was.
        assert_eq!(std::fs::read(&path).unwrap(), b"{not json");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
