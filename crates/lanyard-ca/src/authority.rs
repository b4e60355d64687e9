//! The CA of one trust domain: slots that move prepared → active → retired, and the
//! minting of X509-SVIDs and JWT-SVIDs with the active slot.
//!
//! Rotation is a pure function of the slots and the time ([`CertificateAuthority::tick`]):
//!
//! * with no usable active slot, a new one is made active at once;
//! * at half of the active slot's lifetime a successor is **prepared**: its X.509 CA
//!   certificate and JWT key are published in the bundle from then on, but sign nothing;
//! * at five sixths of the active lifetime the prepared slot becomes **active** and the
//!   old one **retired** (still in the bundle);
//! * a retired slot leaves the bundle only once its CA certificate has expired. Every
//!   SVID is capped at its CA's expiry, so by then nothing it signed is still valid.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_core::bundle::{Bundle, JwtAuthority, PublicJwk, X509Authority};
use lanyard_core::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyUsagePurpose, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509CertificationRequest};

use crate::CaError;
use crate::keys::{KeyAlgorithm, SigningKey};

/// Certificates are back-dated by this much to tolerate small clock skew.
pub const BACKDATE_SECS: i64 = 10;

/// Settings of a CA.
#[derive(Debug, Clone)]
pub struct CaConfig {
    pub trust_domain: TrustDomain,
    pub key_algorithm: KeyAlgorithm,
    pub ca_ttl: Duration,
    pub x509_svid_ttl: Duration,
    pub jwt_svid_ttl: Duration,
    /// `iss` of JWT-SVIDs; defaults to `https://<trust-domain>`.
    pub jwt_issuer: Option<String>,
    /// Common name of the CA certificates.
    pub common_name: String,
}

impl CaConfig {
    /// The reference defaults: EC P-256, CA 24h, X509-SVID 1h, JWT-SVID 5m.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            key_algorithm: KeyAlgorithm::EcP256,
            ca_ttl: Duration::from_secs(24 * 3600),
            x509_svid_ttl: Duration::from_secs(3600),
            jwt_svid_ttl: Duration::from_secs(300),
            jwt_issuer: None,
            common_name: "Lanyard CA".to_string(),
        }
    }

    pub fn issuer(&self) -> String {
        self.jwt_issuer
            .clone()
            .unwrap_or_else(|| format!("https://{}", self.trust_domain))
    }
}

/// An upstream CA (loaded from disk) that signs our CA certificates, making them
/// intermediates. The bundle then carries the upstream root(s).
#[derive(Debug)]
pub struct UpstreamCa {
    cert_der: Vec<u8>,
    key: SigningKey,
    /// Certificates from the upstream CA certificate up to (excluding) the roots.
    chain: Vec<Vec<u8>>,
    roots: Vec<Vec<u8>>,
}

impl UpstreamCa {
    /// `cert_chain` is the upstream CA certificate first, then any intermediates up to
    /// and including the root (a self-signed upstream is just one certificate).
    pub fn new(cert_chain: Vec<Vec<u8>>, key: SigningKey) -> Result<Self, CaError> {
        let Some(cert_der) = cert_chain.first().cloned() else {
            return Err(CaError::Upstream("no certificate given".to_string()));
        };
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| CaError::Upstream(format!("certificate is not valid DER: {e}")))?;
        if !cert.is_ca() {
            return Err(CaError::Upstream(
                "the upstream certificate is not a CA (basicConstraints cA=true is required)"
                    .to_string(),
            ));
        }
        if cert.public_key().raw != key.public_key_der().as_slice() {
            return Err(CaError::Upstream(
                "the upstream key does not belong to the upstream certificate".to_string(),
            ));
        }
        let mut chain = Vec::new();
        let mut roots = Vec::new();
        for der in cert_chain {
            let (_, c) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| CaError::Upstream(format!("certificate is not valid DER: {e}")))?;
            if c.subject().as_raw() == c.issuer().as_raw() {
                roots.push(der);
            } else {
                chain.push(der);
            }
        }
        if roots.is_empty() {
            return Err(CaError::Upstream(
                "the upstream chain has no self-signed root; append the root certificate to the upstream certificate file".to_string(),
            ));
        }
        Ok(Self {
            cert_der,
            key,
            chain,
            roots,
        })
    }

    pub fn roots(&self) -> &[Vec<u8>] {
        &self.roots
    }
}

/// Lifecycle state of a CA slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Published in the bundle, signs nothing yet.
    Prepared,
    /// Signs new SVIDs.
    Active,
    /// Signs nothing; published until its certificate expires.
    Retired,
    /// Distrusted by an operator (`lanyard ca taint`): signs nothing; agents re-mint
    /// what it signed; published only until nothing depends on it.
    Tainted,
}

impl SlotState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Active => "active",
            Self::Retired => "retired",
            Self::Tainted => "tainted",
        }
    }
}

/// One CA key generation: an X.509 CA key and certificate plus a JWT signing key.
#[derive(Debug)]
pub struct CaSlot {
    id: String,
    state: SlotState,
    x509_key: SigningKey,
    x509_cert: Vec<u8>,
    jwt_key: SigningKey,
    jwt_kid: String,
    not_before: i64,
    not_after: i64,
    tainted_at: Option<i64>,
}

impl CaSlot {
    /// When the slot was tainted.
    pub fn tainted_at(&self) -> Option<i64> {
        self.tainted_at
    }
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn state(&self) -> SlotState {
        self.state
    }
    pub fn x509_cert_der(&self) -> &[u8] {
        &self.x509_cert
    }
    pub fn jwt_kid(&self) -> &str {
        &self.jwt_kid
    }
    pub fn not_before(&self) -> i64 {
        self.not_before
    }
    pub fn not_after(&self) -> i64 {
        self.not_after
    }
    pub fn jwt_public_key_der(&self) -> Vec<u8> {
        self.jwt_key.public_key_der()
    }

    /// The storable form (holds private keys: store it with restrictive permissions).
    pub fn to_record(&self) -> SlotRecord {
        SlotRecord {
            id: self.id.clone(),
            state: self.state,
            algorithm: self.x509_key.algorithm(),
            x509_key_pkcs8: URL_SAFE_NO_PAD.encode(self.x509_key.pkcs8_der()),
            x509_cert_der: URL_SAFE_NO_PAD.encode(&self.x509_cert),
            jwt_algorithm: self.jwt_key.algorithm(),
            jwt_key_pkcs8: URL_SAFE_NO_PAD.encode(self.jwt_key.pkcs8_der()),
            jwt_kid: self.jwt_kid.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
            tainted_at: self.tainted_at,
        }
    }

    /// Load a stored slot.
    pub fn from_record(r: &SlotRecord) -> Result<Self, CaError> {
        let dec = |what: &str, v: &str| {
            URL_SAFE_NO_PAD
                .decode(v)
                .map_err(|e| CaError::BadRecord(format!("slot {}: {what}: {e}", r.id)))
        };
        let x509_key = SigningKey::from_pkcs8(r.algorithm, &dec("x509 key", &r.x509_key_pkcs8)?)?;
        let jwt_key = SigningKey::from_pkcs8(r.jwt_algorithm, &dec("jwt key", &r.jwt_key_pkcs8)?)?;
        let x509_cert = dec("x509 certificate", &r.x509_cert_der)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&x509_cert)
            .map_err(|e| CaError::BadRecord(format!("slot {}: certificate: {e}", r.id)))?;
        if cert.public_key().raw != x509_key.public_key_der().as_slice() {
            return Err(CaError::BadRecord(format!(
                "slot {}: the stored key does not match the stored certificate",
                r.id
            )));
        }
        Ok(Self {
            id: r.id.clone(),
            state: r.state,
            x509_key,
            x509_cert,
            jwt_key,
            jwt_kid: r.jwt_kid.clone(),
            not_before: r.not_before,
            not_after: r.not_after,
            tainted_at: r.tainted_at,
        })
    }
}

/// Serializable form of a [`CaSlot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRecord {
    pub id: String,
    pub state: SlotState,
    pub algorithm: KeyAlgorithm,
    pub x509_key_pkcs8: String,
    pub x509_cert_der: String,
    pub jwt_algorithm: KeyAlgorithm,
    pub jwt_key_pkcs8: String,
    pub jwt_kid: String,
    pub not_before: i64,
    pub not_after: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tainted_at: Option<i64>,
}

/// What a [`CertificateAuthority::tick`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaEvent {
    Prepared { slot: String, not_after: i64 },
    Activated { slot: String },
    Retired { slot: String },
    Removed { slot: String },
    Tainted { slot: String },
}

/// Where the subject key of an X509-SVID comes from.
#[derive(Debug, Clone, Copy)]
pub enum SubjectKey<'a> {
    /// A PKCS#10 CSR, whose self-signature proves possession of the key.
    Csr(&'a [u8]),
    /// A DER SubjectPublicKeyInfo (for keys the caller generated itself).
    PublicKey(&'a [u8]),
}

/// A freshly minted X509-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedX509 {
    /// Leaf first, then our CA certificate when it is an intermediate, then any
    /// upstream intermediates (never the root).
    pub chain: Vec<Vec<u8>>,
    pub not_after: i64,
    /// Lowercase hex.
    pub serial: String,
    /// The slot that signed it.
    pub slot: String,
}

/// A freshly minted JWT-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedJwt {
    pub token: String,
    pub expiry: i64,
    pub issued_at: i64,
    pub kid: String,
    pub jti: String,
}

/// The CA of one trust domain.
#[derive(Debug)]
pub struct CertificateAuthority {
    config: CaConfig,
    upstream: Option<UpstreamCa>,
    slots: Vec<CaSlot>,
}

fn random_hex(n: usize) -> Result<String, CaError> {
    let mut b = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut b).map_err(|e| CaError::Signing(format!("random: {e}")))?;
    Ok(hex::encode(b))
}

fn random_serial() -> Result<(SerialNumber, String), CaError> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|e| CaError::Signing(format!("random: {e}")))?;
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // no leading zero byte, so DER keeps all 16 bytes
    let hex = hex::encode(b);
    Ok((SerialNumber::from_slice(&b), hex))
}

fn odt(secs: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| CaError::Signing(format!("time {secs} out of range: {e}")))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl CertificateAuthority {
    /// A CA with the given slots (e.g. loaded from storage). Call [`Self::tick`] before
    /// use so that a usable active slot exists.
    pub fn new(
        config: CaConfig,
        upstream: Option<UpstreamCa>,
        slots: Vec<CaSlot>,
    ) -> Result<Self, CaError> {
        if config.ca_ttl.as_secs() < 60 {
            return Err(CaError::Config("ca_ttl must be at least 1m".to_string()));
        }
        if config.x509_svid_ttl.is_zero() || config.jwt_svid_ttl.is_zero() {
            return Err(CaError::Config(
                "SVID TTLs must be greater than zero".to_string(),
            ));
        }
        if config.x509_svid_ttl > config.ca_ttl || config.jwt_svid_ttl > config.ca_ttl {
            return Err(CaError::Config(format!(
                "SVID TTLs must not exceed the CA TTL ({}s)",
                config.ca_ttl.as_secs()
            )));
        }
        Ok(Self {
            config,
            upstream,
            slots,
        })
    }

    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    pub fn slots(&self) -> &[CaSlot] {
        &self.slots
    }

    /// Whether an upstream CA signs this CA's certificates (the bundle then holds
    /// the upstream roots instead of the slots' certificates).
    pub fn has_upstream(&self) -> bool {
        self.upstream.is_some()
    }

    pub fn active(&self) -> Option<&CaSlot> {
        self.slots.iter().find(|s| s.state == SlotState::Active)
    }

    fn new_slot(&self, state: SlotState, now: i64) -> Result<CaSlot, CaError> {
        let alg = self.config.key_algorithm;
        let x509_key = SigningKey::generate(alg)?;
        let jwt_key = SigningKey::generate(alg)?;
        let not_before = now - BACKDATE_SECS;
        let mut not_after = now + secs(self.config.ca_ttl);
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, self.config.common_name.clone());
        p.distinguished_name
            .push(DnType::OrganizationName, "Lanyard");
        p.distinguished_name.push(
            DnType::OrganizationalUnitName,
            self.config.trust_domain.name().to_string(),
        );
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let td_uri = self.config.trust_domain.id_string();
        p.subject_alt_names =
            vec![SanType::URI(td_uri.clone().try_into().map_err(|_| {
                CaError::Signing(format!("bad URI {td_uri}"))
            })?)];
        let (serial, _) = random_serial()?;
        p.serial_number = Some(serial);
        p.not_before = odt(not_before)?;
        let cert = match &self.upstream {
            None => {
                p.not_after = odt(not_after)?;
                p.self_signed(x509_key.rcgen())
            }
            Some(up) => {
                let (_, upc) = x509_parser::parse_x509_certificate(&up.cert_der)
                    .map_err(|e| CaError::Upstream(e.to_string()))?;
                not_after = not_after.min(upc.validity().not_after.timestamp());
                if not_after <= now {
                    return Err(CaError::Upstream(
                        "the upstream CA certificate has expired; renew it".to_string(),
                    ));
                }
                p.not_after = odt(not_after)?;
                let issuer = Issuer::from_ca_cert_der(&up.cert_der.clone().into(), up.key.rcgen())
                    .map_err(|e| CaError::Upstream(e.to_string()))?;
                p.signed_by(x509_key.rcgen(), &issuer)
            }
        }
        .map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(CaSlot {
            id: random_hex(8)?,
            state,
            x509_key,
            x509_cert: cert.der().to_vec(),
            jwt_kid: random_hex(16)?,
            jwt_key,
            not_before,
            not_after,
            tainted_at: None,
        })
    }

    /// Distrust a slot at once: it signs nothing more. If it was the active slot, the
    /// prepared slot (or a new one) takes over. The slot stays published until
    /// [`Self::remove_tainted`] (once nothing depends on it) or its expiry.
    pub fn taint(&mut self, slot_id: &str, now: i64) -> Result<Vec<CaEvent>, CaError> {
        let pos = self
            .slots
            .iter()
            .position(|s| s.id == slot_id)
            .ok_or_else(|| CaError::UnknownSlot(slot_id.to_string()))?;
        if self.slots[pos].state == SlotState::Tainted {
            return Err(CaError::AlreadyTainted(slot_id.to_string()));
        }
        let was_active = self.slots[pos].state == SlotState::Active;
        let mut events = Vec::new();
        if was_active {
            if let Some(p) = self
                .slots
                .iter_mut()
                .find(|s| s.state == SlotState::Prepared)
            {
                p.state = SlotState::Active;
                events.push(CaEvent::Activated { slot: p.id.clone() });
            } else {
                let slot = self.new_slot(SlotState::Active, now)?;
                events.push(CaEvent::Prepared {
                    slot: slot.id.clone(),
                    not_after: slot.not_after,
                });
                events.push(CaEvent::Activated {
                    slot: slot.id.clone(),
                });
                self.slots.push(slot);
            }
        }
        let s = &mut self.slots[pos];
        s.state = SlotState::Tainted;
        s.tainted_at = Some(now);
        events.insert(
            0,
            CaEvent::Tainted {
                slot: slot_id.to_string(),
            },
        );
        Ok(events)
    }

    /// Take a tainted slot out of the bundle (nothing depends on it any more).
    pub fn remove_tainted(&mut self, slot_id: &str) -> Option<CaEvent> {
        let pos = self
            .slots
            .iter()
            .position(|s| s.id == slot_id && s.state == SlotState::Tainted)?;
        self.slots.remove(pos);
        Some(CaEvent::Removed {
            slot: slot_id.to_string(),
        })
    }

    /// Ids of tainted slots and their JWT key ids.
    pub fn tainted(&self) -> Vec<(String, String)> {
        self.slots
            .iter()
            .filter(|s| s.state == SlotState::Tainted)
            .map(|s| (s.id.clone(), s.jwt_kid.clone()))
            .collect()
    }

    /// Advance the rotation to time `now` (unix seconds). Returns what changed.
    pub fn tick(&mut self, now: i64) -> Result<Vec<CaEvent>, CaError> {
        let mut events = Vec::new();
        // Expired retired slots leave; an expired active or prepared slot is retired
        // (and leaves in the same step, as it has expired).
        for s in &mut self.slots {
            if s.state != SlotState::Retired && s.state != SlotState::Tainted && now >= s.not_after
            {
                s.state = SlotState::Retired;
                events.push(CaEvent::Retired { slot: s.id.clone() });
            }
        }
        let mut removed = Vec::new();
        self.slots.retain(|s| {
            let keep =
                !(matches!(s.state, SlotState::Retired | SlotState::Tainted) && now >= s.not_after);
            if !keep {
                removed.push(s.id.clone());
            }
            keep
        });
        events.extend(removed.into_iter().map(|slot| CaEvent::Removed { slot }));

        let active_info = self
            .active()
            .map(|a| (a.id.clone(), a.not_before, a.not_after));
        match active_info {
            None => {
                // Prefer an already-published prepared slot.
                if let Some(p) = self
                    .slots
                    .iter_mut()
                    .find(|s| s.state == SlotState::Prepared)
                {
                    p.state = SlotState::Active;
                    events.push(CaEvent::Activated { slot: p.id.clone() });
                } else {
                    let slot = self.new_slot(SlotState::Active, now)?;
                    events.push(CaEvent::Prepared {
                        slot: slot.id.clone(),
                        not_after: slot.not_after,
                    });
                    events.push(CaEvent::Activated {
                        slot: slot.id.clone(),
                    });
                    self.slots.push(slot);
                }
            }
            Some((active_id, active_not_before, active_not_after)) => {
                let lifetime = (active_not_after - active_not_before).max(1);
                let age = now - active_not_before;
                let has_prepared = self.slots.iter().any(|s| s.state == SlotState::Prepared);
                if !has_prepared && age * 2 >= lifetime {
                    let slot = self.new_slot(SlotState::Prepared, now)?;
                    events.push(CaEvent::Prepared {
                        slot: slot.id.clone(),
                        not_after: slot.not_after,
                    });
                    self.slots.push(slot);
                }
                if age * 6 >= lifetime * 5
                    && let Some(pos) = self
                        .slots
                        .iter()
                        .position(|s| s.state == SlotState::Prepared)
                {
                    for s in &mut self.slots {
                        if s.id == active_id {
                            s.state = SlotState::Retired;
                        }
                    }
                    self.slots[pos].state = SlotState::Active;
                    events.push(CaEvent::Retired { slot: active_id });
                    events.push(CaEvent::Activated {
                        slot: self.slots[pos].id.clone(),
                    });
                }
            }
        }
        Ok(events)
    }

    fn active_or_err(&self) -> Result<&CaSlot, CaError> {
        self.active().ok_or(CaError::NoActiveSlot)
    }

    /// The trust bundle: every published CA certificate (or the upstream roots) and
    /// every published JWT key. The sequence number is the caller's to set.
    pub fn bundle(&self) -> Result<Bundle, CaError> {
        let mut b = Bundle::new(self.config.trust_domain.clone());
        match &self.upstream {
            Some(up) => {
                for r in &up.roots {
                    b.add_x509_authority(
                        X509Authority::from_der(r.clone())
                            .map_err(|e| CaError::Upstream(e.to_string()))?,
                    );
                }
            }
            None => {
                for s in &self.slots {
                    b.add_x509_authority(
                        X509Authority::from_der(s.x509_cert.clone())
                            .map_err(|e| CaError::Signing(e.to_string()))?,
                    );
                }
            }
        }
        for s in &self.slots {
            let jwk = PublicJwk::from_spki_der(&s.jwt_key.public_key_der())
                .map_err(|e| CaError::Signing(e.to_string()))?;
            b.add_jwt_authority(
                JwtAuthority::new(&s.jwt_kid, jwk).map_err(|e| CaError::Signing(e.to_string()))?,
            );
        }
        Ok(b)
    }

    fn check_id(&self, id: &SpiffeId) -> Result<(), CaError> {
        if !id.is_member_of(&self.config.trust_domain) {
            return Err(CaError::ForeignId {
                id: id.to_string(),
                trust_domain: self.config.trust_domain.to_string(),
            });
        }
        if id.is_root() {
            return Err(CaError::RootId(id.to_string()));
        }
        Ok(())
    }

    /// Sign an X509-SVID for `id`. `ttl` of `None` uses the configured default; the
    /// result never outlives the signing CA.
    pub fn mint_x509_svid(
        &self,
        id: &SpiffeId,
        key: SubjectKey<'_>,
        ttl: Option<Duration>,
        dns_names: &[String],
        now: i64,
    ) -> Result<MintedX509, CaError> {
        self.check_id(id)?;
        let ca = self.active_or_err()?;
        let spki_der: Vec<u8> = match key {
            SubjectKey::Csr(der) => {
                let (rest, csr) = X509CertificationRequest::from_der(der)
                    .map_err(|e| CaError::BadCsr(format!("not a DER PKCS#10 request: {e}")))?;
                if !rest.is_empty() {
                    return Err(CaError::BadCsr(
                        "trailing bytes after the request".to_string(),
                    ));
                }
                csr.verify_signature().map_err(|e| {
                    CaError::BadCsr(format!(
                        "its signature does not verify, so possession of the key is not proven: {e}"
                    ))
                })?;
                csr.certification_request_info.subject_pki.raw.to_vec()
            }
            SubjectKey::PublicKey(der) => der.to_vec(),
        };
        let spki = rcgen::SubjectPublicKeyInfo::from_der(&spki_der)
            .map_err(|e| CaError::BadCsr(format!("unsupported public key: {e}")))?;
        let ttl = ttl.unwrap_or(self.config.x509_svid_ttl);
        if ttl.is_zero() {
            return Err(CaError::BadTtl(
                "the TTL must be greater than zero".to_string(),
            ));
        }
        let not_after = (now.saturating_add(secs(ttl))).min(ca.not_after);
        if not_after <= now {
            return Err(CaError::NoActiveSlot);
        }
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::OrganizationName, "Lanyard");
        if let Some(first) = dns_names.first() {
            p.distinguished_name.push(DnType::CommonName, first.clone());
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let uri = id.to_string();
        let mut sans = vec![SanType::URI(
            uri.clone()
                .try_into()
                .map_err(|_| CaError::Signing(format!("bad URI {uri}")))?,
        )];
        for d in dns_names {
            lanyard_core::dns::validate_dns_name(d).map_err(|_| CaError::BadDnsName(d.clone()))?;
            sans.push(SanType::DnsName(
                d.clone()
                    .try_into()
                    .map_err(|_| CaError::BadDnsName(d.clone()))?,
            ));
        }
        p.subject_alt_names = sans;
        let (serial, serial_hex) = random_serial()?;
        p.serial_number = Some(serial);
        p.not_before = odt(now - BACKDATE_SECS)?;
        p.not_after = odt(not_after)?;
        p.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_der(&ca.x509_cert.clone().into(), ca.x509_key.rcgen())
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let cert = p
            .signed_by(&spki, &issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let mut chain = vec![cert.der().to_vec()];
        if let Some(up) = &self.upstream {
            chain.push(ca.x509_cert.clone());
            chain.extend(up.chain.iter().cloned());
        }
        Ok(MintedX509 {
            chain,
            not_after,
            serial: serial_hex,
            slot: ca.id.clone(),
        })
    }

    /// Sign a JWT-SVID for `id` and `audience` (non-empty). The token carries `kid`,
    /// `typ: JWT`, and the claims `sub`, `aud`, `exp`, `iat`, `iss` and `jti`.
    pub fn mint_jwt_svid(
        &self,
        id: &SpiffeId,
        audience: &[String],
        ttl: Option<Duration>,
        now: i64,
    ) -> Result<MintedJwt, CaError> {
        self.check_id(id)?;
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(CaError::EmptyAudience);
        }
        let ca = self.active_or_err()?;
        let ttl = ttl.unwrap_or(self.config.jwt_svid_ttl);
        if ttl.is_zero() {
            return Err(CaError::BadTtl(
                "the TTL must be greater than zero".to_string(),
            ));
        }
        let expiry = now.saturating_add(secs(ttl)).min(ca.not_after);
        let jti = random_hex(16)?;
        let header =
            json!({"alg": ca.jwt_key.algorithm().jwt_alg(), "kid": ca.jwt_kid, "typ": "JWT"});
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::String(id.to_string()));
        claims.insert(
            "aud".into(),
            if audience.len() == 1 {
                Value::String(audience[0].clone())
            } else {
                Value::Array(audience.iter().cloned().map(Value::String).collect())
            },
        );
        claims.insert("exp".into(), Value::from(expiry));
        claims.insert("iat".into(), Value::from(now));
        claims.insert("iss".into(), Value::String(self.config.issuer()));
        claims.insert("jti".into(), Value::String(jti.clone()));
        let token = sign_compact(&ca.jwt_key, &header, &Value::Object(claims))?;
        Ok(MintedJwt {
            token,
            expiry,
            issued_at: now,
            kid: ca.jwt_kid.clone(),
            jti,
        })
    }
}

/// Check a PKCS#10 CSR (DER) and its self-signature (proof of possession); returns
/// the DER SubjectPublicKeyInfo it certifies.
pub fn verify_csr(der: &[u8]) -> Result<Vec<u8>, CaError> {
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| CaError::BadCsr(format!("not a DER PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::BadCsr(
            "trailing bytes after the request".to_string(),
        ));
    }
    csr.verify_signature().map_err(|e| {
        CaError::BadCsr(format!(
            "its signature does not verify, so possession of the key is not proven: {e}"
        ))
    })?;
    Ok(csr.certification_request_info.subject_pki.raw.to_vec())
}

/// Sign a compact JWS.
pub fn sign_compact(key: &SigningKey, header: &Value, claims: &Value) -> Result<String, CaError> {
    let enc = |v: &Value| -> Result<String, CaError> {
        Ok(URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(v).map_err(|e| CaError::Signing(e.to_string()))?))
    };
    let signing_input = format!("{}.{}", enc(header)?, enc(claims)?);
    let sig = key.sign_jws(signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}
