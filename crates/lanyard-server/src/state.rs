//! The server's shared state: configuration, datastore, CA, the published bundle, and
//! the change signal that drives pushed updates to agents.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use lanyard_ca::{
    CaConfig, CaSlot, CertificateAuthority, KeyAlgorithm, SigningKey, SlotRecord, SubjectKey,
    UpstreamCa,
};
use lanyard_core::bundle::pem_certificates;
use lanyard_core::{Bundle, BundleSet, Clock, SpiffeId, SystemClock, X509Authority};
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
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Other(String),
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
    pub server_id: SpiffeId,
    pub server_tls: Arc<SvidResolver>,
    server_svid_expiry: RwLock<(i64, i64)>,
    pub x509pop_roots: Option<BundleSet>,
    /// Federated trust domains' bundles (name -> SPIFFE bundle JSON).
    pub federated: std::collections::BTreeMap<String, String>,
    keystore: PathBuf,
    pub clock: Arc<dyn Clock>,
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

fn io(what: &str, path: &Path, e: std::io::Error) -> ServerError {
    ServerError::Io(format!("{what} {}: {e}", path.display()))
}

/// Write a file atomically with mode 0600: temp file, fsync, rename, fsync dir.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), ServerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("cannot write", &tmp, e))?;
    f.write_all(data).map_err(|e| io("cannot write", &tmp, e))?;
    f.sync_all().map_err(|e| io("cannot sync", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("cannot replace", path, e))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

fn load_slots(path: &Path) -> Result<Vec<CaSlot>, ServerError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("cannot read", path, e)),
    };
    let records: Vec<SlotRecord> = serde_json::from_str(&text).map_err(|e| {
        ServerError::Other(format!(
            "the CA key file {} is corrupt: {e}; restore it from backup (removing it makes a new CA)",
            path.display()
        ))
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
        .map_err(|e| ServerError::Other(format!("ca.upstream_cert {}: {e}", cert.display())))?;
    let key_pem = std::fs::read_to_string(key).map_err(|e| io("cannot read", key, e))?;
    let key = SigningKey::from_pkcs8_pem(&key_pem)
        .map_err(|e| ServerError::Other(format!("ca.upstream_key {}: {e}", key.display())))?;
    Ok(Some(UpstreamCa::new(certs, key)?))
}

fn load_x509pop_roots(cfg: &ServerConfig) -> Result<Option<BundleSet>, ServerError> {
    let Some(path) = &cfg.x509pop_ca_bundle else {
        return Ok(None);
    };
    let certs = pem_certificates(&std::fs::read(path).map_err(|e| io("cannot read", path, e))?)
        .map_err(|e| ServerError::Other(format!("x509pop.ca_bundle {}: {e}", path.display())))?;
    let mut b = Bundle::new(crate::node::x509pop_trust_domain().map_err(ServerError::Other)?);
    for der in certs {
        b.add_x509_authority(X509Authority::from_der(der).map_err(|e| {
            ServerError::Other(format!("x509pop.ca_bundle {}: {e}", path.display()))
        })?);
    }
    Ok(Some([b].into_iter().collect()))
}

fn load_federation(
    cfg: &ServerConfig,
) -> Result<std::collections::BTreeMap<String, String>, ServerError> {
    let mut out = std::collections::BTreeMap::new();
    for (td, path) in &cfg.federation {
        let bytes = std::fs::read(path).map_err(|e| io("cannot read", path, e))?;
        let bundle = if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            Bundle::parse(td.clone(), &bytes).map_err(|e| {
                ServerError::Other(format!("federation {td}: {}: {e}", path.display()))
            })?
        } else {
            let mut b = Bundle::new(td.clone());
            for der in pem_certificates(&bytes).map_err(|e| {
                ServerError::Other(format!("federation {td}: {}: {e}", path.display()))
            })? {
                b.add_x509_authority(X509Authority::from_der(der).map_err(|e| {
                    ServerError::Other(format!("federation {td}: {}: {e}", path.display()))
                })?);
            }
            b
        };
        let doc = bundle
            .to_json()
            .map_err(|e| ServerError::Other(e.to_string()))?;
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
        ca.tick(now)?;
        let server_id = SpiffeId::from_parts(&config.trust_domain, SERVER_PATH)
            .map_err(|e| ServerError::Other(e.to_string()))?;
        let (server_key, minted) = mint_server_svid(&ca, &server_id, now)?;
        let resolver = Arc::new(SvidResolver::new(
            certified_key(&minted.chain, server_key.pkcs8_der()).map_err(ServerError::Other)?,
        ));
        let x509pop_roots = load_x509pop_roots(&config)?;
        let federated = load_federation(&config)?;
        let (changes, _) = watch::channel(0u64);
        let shared = Arc::new(Self {
            store,
            ca: RwLock::new(ca),
            bundles: Arc::new(RwLock::new(BundleSet::new())),
            bundle: RwLock::new(PublishedBundle::default()),
            changes,
            server_id,
            server_tls: resolver,
            server_svid_expiry: RwLock::new((now, minted.not_after)),
            x509pop_roots,
            federated,
            keystore,
            clock,
            config,
        });
        shared.save_keys()?;
        shared.publish_bundle().await?;
        Ok(shared)
    }

    fn save_keys(&self) -> Result<(), ServerError> {
        let records: Vec<SlotRecord> = {
            let ca = self.ca_read()?;
            ca.slots().iter().map(CaSlot::to_record).collect()
        };
        let json =
            serde_json::to_vec_pretty(&records).map_err(|e| ServerError::Other(e.to_string()))?;
        write_private(&self.keystore, &json)
    }

    pub fn ca_read(
        &self,
    ) -> Result<std::sync::RwLockReadGuard<'_, CertificateAuthority>, ServerError> {
        self.ca
            .read()
            .map_err(|_| ServerError::Other("CA lock poisoned".to_string()))
    }

    /// Publish the CA's bundle if it differs from the stored one (the sequence then
    /// increases); always refresh the in-memory copies.
    pub async fn publish_bundle(&self) -> Result<(), ServerError> {
        let bundle = self.ca_read()?.bundle()?;
        let doc = bundle
            .to_json()
            .map_err(|e| ServerError::Other(e.to_string()))?;
        let td = self.config.trust_domain.name().to_string();
        let stored = self.store.get_bundle(&td).await?;
        let sequence = match stored {
            Some(s) if s.document == doc => s.sequence,
            _ => {
                let seq = self
                    .store
                    .put_bundle(&td, &doc, self.clock.unix_seconds())
                    .await?;
                tracing::info!(sequence = seq, "trust bundle changed");
                seq
            }
        };
        let mut with_seq = bundle.clone();
        with_seq.set_sequence(sequence);
        with_seq.set_refresh_hint(300);
        let document = with_seq
            .to_json()
            .map_err(|e| ServerError::Other(e.to_string()))?;
        if let Ok(mut b) = self.bundles.write() {
            b.insert(bundle);
        }
        let changed = {
            let mut p = self
                .bundle
                .write()
                .map_err(|_| ServerError::Other("bundle lock poisoned".to_string()))?;
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

    /// Tell every pushed stream that something changed.
    pub fn notify(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// One rotation step: advance the CA, persist keys, republish, renew our SVID.
    pub async fn tick(&self) -> Result<(), ServerError> {
        let now = self.clock.unix_seconds();
        let events = {
            let mut ca = self
                .ca
                .write()
                .map_err(|_| ServerError::Other("CA lock poisoned".to_string()))?;
            ca.tick(now)?
        };
        if !events.is_empty() {
            for e in &events {
                tracing::info!(event = ?e, "CA rotation");
            }
            self.save_keys()?;
            self.publish_bundle().await?;
        }
        let (issued, expiry) = self.server_svid_expiry.read().map(|g| *g).unwrap_or((0, 0));
        if now >= issued + (expiry - issued) / 2 || !events.is_empty() {
            let (key, minted) = {
                let ca = self.ca_read()?;
                mint_server_svid(&ca, &self.server_id, now)?
            };
            self.server_tls
                .set(certified_key(&minted.chain, key.pkcs8_der()).map_err(ServerError::Other)?);
            if let Ok(mut g) = self.server_svid_expiry.write() {
                *g = (now, minted.not_after);
            }
        }
        Ok(())
    }

    /// The entries an agent may serve: those parented to the agent itself and to any
    /// node alias (an entry parented to the server) whose selectors the agent has.
    /// Expired entries issue nothing and are left out.
    pub async fn authorized_entries(&self, node: &Node) -> Result<Vec<Entry>, ServerError> {
        let now = self.clock.unix_seconds();
        let all = self.store.list_entries().await?;
        let node_selectors: HashSet<_> = node.selectors.iter().collect();
        let mut parents: HashSet<SpiffeId> = HashSet::from([node.spiffe_id.clone()]);
        for e in &all {
            if e.spec.parent_id == self.server_id
                && !e.spec.selectors.is_empty()
                && e.spec.selectors.iter().all(|s| node_selectors.contains(s))
            {
                parents.insert(e.spec.spiffe_id.clone());
            }
        }
        Ok(all
            .into_iter()
            .filter(|e| parents.contains(&e.spec.parent_id))
            .filter(|e| e.spec.expires_at.is_none_or(|t| t > now))
            .collect())
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
