//! Envoy's secret discovery service (SDS, `envoy.service.secret.v3.SecretDiscoveryService`)
//! on the Workload API socket, as SPIRE's agent offers it.
//!
//! The caller is attested exactly like a Workload API caller (kernel peer credentials
//! and the workload attestors), but no `workload.spiffe.io` header is required: Envoy
//! does not send one. A caller with no identity is refused with `PermissionDenied`
//! before any stream starts; an attestation failure is `Unavailable`.
//!
//! Resource names (SPIRE's, configurable in [`SdsConfig`]):
//!
//! | name | resource |
//! | --- | --- |
//! | `default` | the caller's first X509-SVID (entry order), as a `TlsCertificate` |
//! | a SPIFFE ID, `spiffe://example.org/web` | that X509-SVID, if the caller holds it |
//! | `ROOTCA` | the agent's trust domain bundle, as a `CertificateValidationContext` |
//! | a trust domain ID, `spiffe://example.org` or `spiffe://partner.org` | that bundle |
//! | `ALL` | every bundle in one SPIFFE validator config (needs the SPIFFE validator) |
//! | none (wildcard) | every SVID by SPIFFE ID and every bundle by trust domain ID |
//!
//! Validation contexts use Envoy's SPIFFE certificate validator
//! (`envoy.tls.cert_validator.spiffe`, per-trust-domain bundles) when the node says it
//! is Envoy 1.18 or later and neither the agent nor the node's metadata
//! (`disable_spiffe_cert_validation: true`) disables it; otherwise `trusted_ca` PEM.
//!
//! xDS semantics: every streamed response has a `version_info` (a digest of its
//! content) and a fresh nonce. A request echoing the last nonce is an ACK, or a NACK
//! when `error_detail` is set: a NACK is logged and the same content is not sent again;
//! the next push comes when the content changes (rotation, bundle or entry change). A
//! request with a stale nonce is ignored. A request that changes the names is answered
//! at once. Names the caller has no resource for are left out of the response (and
//! logged); a response that would hold nothing for named resources is not sent, so
//! Envoy's initial-fetch timeout applies, and the resource is pushed once it exists.
//! SPIRE instead fails the stream with `InvalidArgument`. `FetchSecrets` answers the
//! resources found, or `NotFound` when none of the named ones exists.
//!
//! The decisions — which resources a caller gets, whether a request is an ACK, a NACK
//! or stale, what a delta response carries — are pure functions and state machines
//! here; the tonic service only gathers the facts, calls them and sends.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use lanyard_core::{Bundle, Selector};
use lanyard_proto::envoy::config::core::v3 as core_pb;
use lanyard_proto::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
use lanyard_proto::envoy::service::discovery::v3 as disc_pb;
use lanyard_proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::evidence::Recipient;
use crate::workload::WorkloadService;

/// The name of Envoy's SPIFFE certificate validator extension.
pub const SPIFFE_VALIDATOR_NAME: &str = "envoy.tls.cert_validator.spiffe";

/// The node metadata key (a boolean) with which one Envoy opts out of the SPIFFE
/// validator, as in SPIRE.
pub const DISABLE_SPIFFE_VALIDATION_KEY: &str = "disable_spiffe_cert_validation";

// ---------------------------------------------------------------------------
// Configuration and facts
// ---------------------------------------------------------------------------

/// Resource names and options, with SPIRE's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdsConfig {
    /// The name of the caller's default (first) X509-SVID.
    pub default_svid_name: String,
    /// The name of the agent's own trust domain bundle.
    pub default_bundle_name: String,
    /// The name of the validation context holding every bundle.
    pub default_all_bundles_name: String,
    /// Always serve `trusted_ca` validation contexts, never the SPIFFE validator.
    pub disable_spiffe_cert_validation: bool,
}

impl Default for SdsConfig {
    fn default() -> Self {
        Self {
            default_svid_name: "default".into(),
            default_bundle_name: "ROOTCA".into(),
            default_all_bundles_name: "ALL".into(),
            disable_spiffe_cert_validation: false,
        }
    }
}

/// An X509-SVID the caller holds. `Debug` leaves the key out.
#[derive(Clone, PartialEq, Eq)]
pub struct SvidFacts {
    pub spiffe_id: String,
    /// DER certificates, leaf first.
    pub chain_der: Vec<Vec<u8>>,
    /// The private key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
    /// Certificate serial and the server's issuance event, for delivery evidence.
    pub serial: String,
    pub event_id: String,
}

impl fmt::Debug for SvidFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidFacts")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("key_pkcs8", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A trust domain's X.509 authorities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFacts {
    /// The bare trust domain name, `example.org`.
    pub trust_domain: String,
    /// DER certificates.
    pub authorities_der: Vec<Vec<u8>>,
}

impl BundleFacts {
    /// From a bundle; `None` when it has no X.509 authorities (a JWT-only bundle).
    pub fn from_bundle(b: &Bundle) -> Option<Self> {
        let authorities_der: Vec<Vec<u8>> = b
            .x509_authorities()
            .iter()
            .map(|a| a.der().to_vec())
            .collect();
        (!authorities_der.is_empty()).then(|| Self {
            trust_domain: b.trust_domain().name().to_string(),
            authorities_der,
        })
    }

    /// The trust domain ID, `spiffe://example.org`.
    pub fn id(&self) -> String {
        format!("spiffe://{}", self.trust_domain)
    }
}

/// What the caller may be served right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    /// Minted X509-SVIDs, in entry order.
    pub svids: Vec<SvidFacts>,
    /// SPIFFE IDs of the caller's identities whose SVID is still being minted.
    pub pending: Vec<String>,
    /// The agent's trust domain bundle.
    pub bundle: Option<BundleFacts>,
    /// Federated bundles with X.509 authorities.
    pub federated: Vec<BundleFacts>,
}

/// What the requesting node says about itself (`envoy.config.core.v3.Node`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub id: String,
    /// `user_agent_build_version` major and minor.
    pub build_version: Option<(u32, u32)>,
    /// `metadata.disable_spiffe_cert_validation` is `true`.
    pub disable_spiffe_cert_validation: bool,
}

impl From<&core_pb::Node> for NodeFacts {
    fn from(n: &core_pb::Node) -> Self {
        use core_pb::node::UserAgentVersionType;
        let build_version = match &n.user_agent_version_type {
            Some(UserAgentVersionType::UserAgentBuildVersion(b)) => {
                b.version.as_ref().map(|v| (v.major_number, v.minor_number))
            }
            _ => None,
        };
        let disable_spiffe_cert_validation = n
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(DISABLE_SPIFFE_VALIDATION_KEY))
            .is_some_and(|v| matches!(v.kind, Some(prost_types::value::Kind::BoolValue(true))));
        Self {
            id: n.id.clone(),
            build_version,
            disable_spiffe_cert_validation,
        }
    }
}

/// Whether validation contexts use Envoy's SPIFFE validator: the node is Envoy 1.18 or
/// later (the first with the extension) and neither the agent nor the node disables it.
pub fn use_spiffe_validator(node: &NodeFacts, cfg: &SdsConfig) -> bool {
    !cfg.disable_spiffe_cert_validation
        && !node.disable_spiffe_cert_validation
        && matches!(node.build_version, Some((major, minor)) if major > 1 || (major == 1 && minor >= 18))
}

// ---------------------------------------------------------------------------
// Resources and which ones a caller gets
// ---------------------------------------------------------------------------

/// Which SVID a certificate resource carries, for delivery evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub spiffe_id: String,
    pub serial: String,
    pub event_id: String,
}

/// The content of one secret. `Debug` leaves the key out.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretKind {
    /// An X509-SVID chain and its key (`TlsCertificate`).
    Certificate {
        chain_der: Vec<Vec<u8>>,
        key_pkcs8: Vec<u8>,
        delivered: Delivered,
    },
    /// A bundle as trusted CAs for Envoy's default verifier.
    TrustedCa { authorities_der: Vec<Vec<u8>> },
    /// Bundles per trust domain for the SPIFFE validator, sorted by trust domain.
    Spiffe { trust_domains: Vec<BundleFacts> },
}

impl fmt::Debug for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Certificate { delivered, .. } => f
                .debug_struct("Certificate")
                .field("spiffe_id", &delivered.spiffe_id)
                .field("serial", &delivered.serial)
                .field("key_pkcs8", &"<redacted>")
                .finish_non_exhaustive(),
            Self::TrustedCa { authorities_der } => f
                .debug_struct("TrustedCa")
                .field("authorities", &authorities_der.len())
                .finish(),
            Self::Spiffe { trust_domains } => f
                .debug_struct("Spiffe")
                .field(
                    "trust_domains",
                    &trust_domains
                        .iter()
                        .map(|t| t.trust_domain.as_str())
                        .collect::<Vec<_>>(),
                )
                .finish(),
        }
    }
}

/// One named secret a caller is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretResource {
    pub name: String,
    pub kind: SecretKind,
}

impl SecretResource {
    /// The resource's version: a digest of its name and certificates. The private key
    /// is left out (a new key always comes with a new certificate), so versions, which
    /// are logged and sent, reveal nothing about it.
    pub fn version(&self) -> String {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut feed = |tag: u8, bytes: &[u8]| {
            ctx.update(&[tag]);
            ctx.update(&(bytes.len() as u64).to_be_bytes());
            ctx.update(bytes);
        };
        feed(0, self.name.as_bytes());
        match &self.kind {
            SecretKind::Certificate { chain_der, .. } => {
                for c in chain_der {
                    feed(1, c);
                }
            }
            SecretKind::TrustedCa { authorities_der } => {
                for c in authorities_der {
                    feed(2, c);
                }
            }
            SecretKind::Spiffe { trust_domains } => {
                for t in trust_domains {
                    feed(3, t.trust_domain.as_bytes());
                    for c in &t.authorities_der {
                        feed(4, c);
                    }
                }
            }
        }
        short_hex(ctx.finish().as_ref())
    }
}

/// The version of a whole state-of-the-world response.
pub fn response_version(resources: &[SecretResource]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for r in resources {
        ctx.update(r.version().as_bytes());
        ctx.update(b"\n");
    }
    short_hex(ctx.finish().as_ref())
}

fn short_hex(digest: &[u8]) -> String {
    hex::encode(digest.get(..8).unwrap_or(digest))
}

/// Why a requested name has no resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No SVID or bundle of the caller's has this name.
    Unknown,
    /// The caller's identity exists but its SVID is still being minted.
    NotMintedYet,
    /// The agent has no trust bundle yet.
    NoBundleYet,
    /// `ALL` needs the SPIFFE validator (Envoy 1.18 or later, not disabled).
    AllNeedsSpiffeValidator,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unknown => "no SVID or bundle of this caller has this name",
            Self::NotMintedYet => "the SVID is still being minted",
            Self::NoBundleYet => "the agent has no trust bundle yet",
            Self::AllNeedsSpiffeValidator => {
                "all bundles are served only through Envoy's SPIFFE validator (Envoy 1.18 or later, not disabled)"
            }
        })
    }
}

/// The resources for a request, and the names left out with the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub resources: Vec<SecretResource>,
    pub missing: Vec<(String, Missing)>,
}

fn certificate(name: &str, s: &SvidFacts) -> SecretResource {
    SecretResource {
        name: name.to_string(),
        kind: SecretKind::Certificate {
            chain_der: s.chain_der.clone(),
            key_pkcs8: s.key_pkcs8.clone(),
            delivered: Delivered {
                spiffe_id: s.spiffe_id.clone(),
                serial: s.serial.clone(),
                event_id: s.event_id.clone(),
            },
        },
    }
}

fn validation(name: &str, b: &BundleFacts, spiffe: bool) -> SecretResource {
    let kind = if spiffe {
        SecretKind::Spiffe {
            trust_domains: vec![b.clone()],
        }
    } else {
        SecretKind::TrustedCa {
            authorities_der: b.authorities_der.clone(),
        }
    };
    SecretResource {
        name: name.to_string(),
        kind,
    }
}

/// Which resources a caller gets for the requested `names` (empty: every SVID by
/// SPIFFE ID and every bundle by trust domain ID). Names are answered in request
/// order, each once; names without a resource are listed in `missing`.
pub fn select(
    names: &[String],
    holdings: &Holdings,
    cfg: &SdsConfig,
    spiffe_validator: bool,
) -> Selection {
    let mut out = Selection::default();
    if names.iter().all(String::is_empty) {
        for s in &holdings.svids {
            out.resources.push(certificate(&s.spiffe_id, s));
        }
        for b in holdings.bundle.iter().chain(&holdings.federated) {
            out.resources.push(validation(&b.id(), b, spiffe_validator));
        }
        return out;
    }
    let mut seen = BTreeSet::new();
    for name in names {
        if name.is_empty() || !seen.insert(name.as_str()) {
            continue;
        }
        match resolve(name, holdings, cfg, spiffe_validator) {
            Ok(r) => out.resources.push(r),
            Err(why) => out.missing.push((name.clone(), why)),
        }
    }
    out
}

fn resolve(
    name: &str,
    h: &Holdings,
    cfg: &SdsConfig,
    spiffe: bool,
) -> Result<SecretResource, Missing> {
    if name == cfg.default_svid_name {
        return match h.svids.first() {
            Some(s) => Ok(certificate(name, s)),
            None if !h.pending.is_empty() => Err(Missing::NotMintedYet),
            None => Err(Missing::Unknown),
        };
    }
    if name == cfg.default_bundle_name {
        return h
            .bundle
            .as_ref()
            .map(|b| validation(name, b, spiffe))
            .ok_or(Missing::NoBundleYet);
    }
    if name == cfg.default_all_bundles_name {
        if !spiffe {
            return Err(Missing::AllNeedsSpiffeValidator);
        }
        let mut trust_domains: Vec<BundleFacts> =
            h.bundle.iter().chain(&h.federated).cloned().collect();
        if trust_domains.is_empty() {
            return Err(Missing::NoBundleYet);
        }
        trust_domains.sort_by(|a, b| a.trust_domain.cmp(&b.trust_domain));
        return Ok(SecretResource {
            name: name.to_string(),
            kind: SecretKind::Spiffe { trust_domains },
        });
    }
    if let Some(b) = h.bundle.iter().chain(&h.federated).find(|b| b.id() == name) {
        return Ok(validation(name, b, spiffe));
    }
    if let Some(s) = h.svids.iter().find(|s| s.spiffe_id == name) {
        return Ok(certificate(name, s));
    }
    if h.pending.iter().any(|p| p == name) {
        return Err(Missing::NotMintedYet);
    }
    Err(Missing::Unknown)
}

// ---------------------------------------------------------------------------
// Protobuf at the edge
// ---------------------------------------------------------------------------

/// A request SDS cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdsError {
    #[error(
        "this SDS serves only {want} resources, not {got:?}: set the type URL to {want} or leave it empty"
    )]
    WrongType { got: String, want: &'static str },
}

impl From<SdsError> for Status {
    fn from(e: SdsError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

fn check_type(type_url: &str) -> Result<(), SdsError> {
    if type_url.is_empty() || type_url == tls_pb::SECRET_TYPE_URL {
        Ok(())
    } else {
        Err(SdsError::WrongType {
            got: type_url.to_string(),
            want: tls_pb::SECRET_TYPE_URL,
        })
    }
}

fn error_message(s: Option<&lanyard_proto::google::rpc::Status>) -> Option<String> {
    s.map(|s| {
        if s.message.is_empty() {
            format!("code {}", s.code)
        } else {
            s.message.clone()
        }
    })
}

/// A state-of-the-world request, converted from `DiscoveryRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SotwRequest {
    pub names: Vec<String>,
    pub version_info: String,
    pub response_nonce: String,
    /// The NACK's message when `error_detail` is set.
    pub error: Option<String>,
    pub node: Option<NodeFacts>,
}

impl TryFrom<disc_pb::DiscoveryRequest> for SotwRequest {
    type Error = SdsError;
    fn try_from(r: disc_pb::DiscoveryRequest) -> Result<Self, SdsError> {
        check_type(&r.type_url)?;
        Ok(Self {
            error: error_message(r.error_detail.as_ref()),
            node: r.node.as_ref().map(NodeFacts::from),
            names: r.resource_names,
            version_info: r.version_info,
            response_nonce: r.response_nonce,
        })
    }
}

/// An incremental request, converted from `DeltaDiscoveryRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaRequest {
    pub subscribe: Vec<String>,
    pub unsubscribe: Vec<String>,
    pub initial_versions: BTreeMap<String, String>,
    pub response_nonce: String,
    pub error: Option<String>,
    pub node: Option<NodeFacts>,
}

impl TryFrom<disc_pb::DeltaDiscoveryRequest> for DeltaRequest {
    type Error = SdsError;
    fn try_from(r: disc_pb::DeltaDiscoveryRequest) -> Result<Self, SdsError> {
        check_type(&r.type_url)?;
        Ok(Self {
            error: error_message(r.error_detail.as_ref()),
            node: r.node.as_ref().map(NodeFacts::from),
            subscribe: r.resource_names_subscribe,
            unsubscribe: r.resource_names_unsubscribe,
            initial_versions: r.initial_resource_versions.into_iter().collect(),
            response_nonce: r.response_nonce,
        })
    }
}

fn pem_certs(ders: &[Vec<u8>]) -> Vec<u8> {
    ders.iter()
        .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.clone())))
        .collect::<String>()
        .into_bytes()
}

fn inline(bytes: Vec<u8>) -> Option<core_pb::DataSource> {
    Some(core_pb::DataSource {
        specifier: Some(core_pb::data_source::Specifier::InlineBytes(bytes)),
    })
}

/// The `envoy.extensions.transport_sockets.tls.v3.Secret` of a resource: PEM inline
/// bytes, as SPIRE sends them.
pub fn to_secret(r: &SecretResource) -> tls_pb::Secret {
    use tls_pb::secret::Type;
    let t = match &r.kind {
        SecretKind::Certificate {
            chain_der,
            key_pkcs8,
            ..
        } => Type::TlsCertificate(tls_pb::TlsCertificate {
            certificate_chain: inline(pem_certs(chain_der)),
            private_key: inline(
                pem::encode(&pem::Pem::new("PRIVATE KEY", key_pkcs8.clone())).into_bytes(),
            ),
        }),
        SecretKind::TrustedCa { authorities_der } => {
            Type::ValidationContext(tls_pb::CertificateValidationContext {
                trusted_ca: inline(pem_certs(authorities_der)),
                custom_validator_config: None,
            })
        }
        SecretKind::Spiffe { trust_domains } => {
            let config = tls_pb::SpiffeCertValidatorConfig {
                trust_domains: trust_domains
                    .iter()
                    .map(|t| tls_pb::spiffe_cert_validator_config::TrustDomain {
                        name: t.trust_domain.clone(),
                        trust_bundle: inline(pem_certs(&t.authorities_der)),
                    })
                    .collect(),
            };
            Type::ValidationContext(tls_pb::CertificateValidationContext {
                trusted_ca: None,
                custom_validator_config: Some(core_pb::TypedExtensionConfig {
                    name: SPIFFE_VALIDATOR_NAME.into(),
                    typed_config: Some(prost_types::Any {
                        type_url: tls_pb::SPIFFE_VALIDATOR_TYPE_URL.into(),
                        value: config.encode_to_vec(),
                    }),
                }),
            })
        }
    };
    tls_pb::Secret {
        name: r.name.clone(),
        r#type: Some(t),
    }
}

/// A resource as `google.protobuf.Any`.
pub fn to_any(r: &SecretResource) -> prost_types::Any {
    prost_types::Any {
        type_url: tls_pb::SECRET_TYPE_URL.into(),
        value: to_secret(r).encode_to_vec(),
    }
}

// ---------------------------------------------------------------------------
// xDS state machines (pure)
// ---------------------------------------------------------------------------

/// What a request was, in xDS terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The first request of the stream.
    First,
    /// The last response was applied.
    Ack { version: String },
    /// The last response was rejected; the client kept `version`.
    Nack { version: String, message: String },
    /// The nonce is not the last one sent: the request is ignored.
    Stale { nonce: String, expected: String },
    /// A request before any response was sent, or (delta) without a nonce.
    Update,
}

/// The outcome of a request: what it was, and whether it is answered now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub received: Received,
    /// The subscription changed (or this is the first request): answer at once.
    pub respond: bool,
}

/// A state-of-the-world response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SotwResponse {
    pub version: String,
    pub nonce: String,
    pub resources: Vec<SecretResource>,
}

impl SotwResponse {
    pub fn to_proto(&self) -> disc_pb::DiscoveryResponse {
        disc_pb::DiscoveryResponse {
            version_info: self.version.clone(),
            resources: self.resources.iter().map(to_any).collect(),
            canary: false,
            type_url: tls_pb::SECRET_TYPE_URL.into(),
            nonce: self.nonce.clone(),
        }
    }
}

#[derive(Debug)]
struct Sent {
    nonce: String,
    resources: Vec<SecretResource>,
}

/// One `StreamSecrets` stream: the subscription and what was last sent.
#[derive(Debug, Default)]
pub struct SotwStream {
    names: Option<Vec<String>>,
    node: NodeFacts,
    sent: Option<Sent>,
    nonces: u64,
}

fn same_names(a: &[String], b: &[String]) -> bool {
    let a: BTreeSet<&String> = a.iter().filter(|n| !n.is_empty()).collect();
    let b: BTreeSet<&String> = b.iter().filter(|n| !n.is_empty()).collect();
    a == b
}

impl SotwStream {
    /// The names subscribed to (`None` before the first request; empty: wildcard).
    pub fn names(&self) -> Option<&[String]> {
        self.names.as_deref()
    }

    /// The node of the first request (or the last that named one).
    pub fn node(&self) -> &NodeFacts {
        &self.node
    }

    /// Classify a request and update the subscription.
    pub fn on_request(&mut self, req: SotwRequest) -> Decision {
        if let Some(n) = req.node {
            self.node = n;
        }
        let Some(names) = &self.names else {
            self.names = Some(req.names);
            return Decision {
                received: Received::First,
                respond: true,
            };
        };
        let changed = !same_names(names, &req.names);
        let received = match &self.sent {
            None => Received::Update,
            Some(sent) if sent.nonce != req.response_nonce => {
                return Decision {
                    received: Received::Stale {
                        nonce: req.response_nonce,
                        expected: sent.nonce.clone(),
                    },
                    respond: false,
                };
            }
            Some(_) => match req.error {
                Some(message) => Received::Nack {
                    version: req.version_info,
                    message,
                },
                None => Received::Ack {
                    version: req.version_info,
                },
            },
        };
        if changed {
            self.names = Some(req.names);
        }
        Decision {
            received,
            respond: changed,
        }
    }

    /// Offer the current resources for the subscription; returns the response to
    /// send, if any. `answering` is set when answering a request (send even if the
    /// content is unchanged); otherwise only changed content is sent, so a NACKed
    /// response is not repeated. Nothing is sent for named resources none of which
    /// exists, nor before the first request.
    pub fn offer(
        &mut self,
        resources: Vec<SecretResource>,
        answering: bool,
    ) -> Option<SotwResponse> {
        let names = self.names.as_ref()?;
        let wildcard = names.iter().all(String::is_empty);
        if resources.is_empty() && !wildcard {
            return None;
        }
        if !answering && self.sent.as_ref().is_some_and(|s| s.resources == resources) {
            return None;
        }
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let version = response_version(&resources);
        self.sent = Some(Sent {
            nonce: nonce.clone(),
            resources: resources.clone(),
        });
        Some(SotwResponse {
            version,
            nonce,
            resources,
        })
    }
}

/// A delta response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaResponse {
    pub system_version: String,
    pub nonce: String,
    /// Added or changed resources with their versions.
    pub resources: Vec<(String, SecretResource)>,
    /// Names the client holds that no longer exist.
    pub removed: Vec<String>,
}

impl DeltaResponse {
    pub fn to_proto(&self) -> disc_pb::DeltaDiscoveryResponse {
        disc_pb::DeltaDiscoveryResponse {
            system_version_info: self.system_version.clone(),
            resources: self
                .resources
                .iter()
                .map(|(version, r)| disc_pb::Resource {
                    name: r.name.clone(),
                    aliases: Vec::new(),
                    version: version.clone(),
                    resource: Some(to_any(r)),
                })
                .collect(),
            type_url: tls_pb::SECRET_TYPE_URL.into(),
            nonce: self.nonce.clone(),
            removed_resources: self.removed.clone(),
        }
    }
}

/// One `DeltaSecrets` stream: the subscription and the versions the client holds.
#[derive(Debug, Default)]
pub struct DeltaStream {
    started: bool,
    wildcard: bool,
    names: Vec<String>,
    /// What the client holds (as far as the server knows): name → version.
    client_has: BTreeMap<String, String>,
    last_nonce: Option<String>,
    node: NodeFacts,
    nonces: u64,
}

impl DeltaStream {
    /// Whether every resource is subscribed, and the names subscribed explicitly.
    pub fn subscription(&self) -> (bool, &[String]) {
        (self.wildcard, &self.names)
    }

    pub fn node(&self) -> &NodeFacts {
        &self.node
    }

    /// Classify a request and apply its subscription changes (applied even with a
    /// stale nonce, as the delta protocol asks).
    pub fn on_request(&mut self, req: DeltaRequest) -> Decision {
        if let Some(n) = req.node {
            self.node = n;
        }
        let first = !self.started;
        let mut changed = first;
        if first {
            self.started = true;
            // A first request naming nothing is a (legacy) wildcard subscription.
            self.wildcard = req.subscribe.is_empty();
            self.client_has = req.initial_versions;
        }
        for name in req.subscribe {
            if name == "*" {
                changed |= !self.wildcard;
                self.wildcard = true;
            } else if !name.is_empty() && !self.names.contains(&name) {
                self.names.push(name);
                changed = true;
            }
        }
        for name in req.unsubscribe {
            if name == "*" {
                changed |= self.wildcard;
                self.wildcard = false;
            } else if let Some(i) = self.names.iter().position(|n| *n == name) {
                self.names.remove(i);
                changed = true;
            }
            self.client_has.remove(&name);
        }
        let received = if first {
            Received::First
        } else if req.response_nonce.is_empty() {
            Received::Update
        } else if self.last_nonce.as_deref() != Some(req.response_nonce.as_str()) {
            Received::Stale {
                nonce: req.response_nonce,
                expected: self.last_nonce.clone().unwrap_or_default(),
            }
        } else {
            match req.error {
                Some(message) => Received::Nack {
                    version: String::new(),
                    message,
                },
                None => Received::Ack {
                    version: String::new(),
                },
            }
        };
        Decision {
            received,
            respond: changed,
        }
    }

    /// Offer the current resources for the subscription: the response carries those
    /// the client does not hold at their current version, and the removal of those it
    /// holds that no longer exist. `None` when there is nothing to tell.
    pub fn offer(&mut self, resources: Vec<SecretResource>) -> Option<DeltaResponse> {
        if !self.started {
            return None;
        }
        let current: BTreeSet<String> = resources.iter().map(|r| r.name.clone()).collect();
        let mut changed = Vec::new();
        for r in resources {
            let v = r.version();
            if self.client_has.get(&r.name) != Some(&v) {
                self.client_has.insert(r.name.clone(), v.clone());
                changed.push((v, r));
            }
        }
        let removed: Vec<String> = self
            .client_has
            .keys()
            .filter(|n| !current.contains(*n))
            .cloned()
            .collect();
        for n in &removed {
            self.client_has.remove(n);
        }
        if changed.is_empty() && removed.is_empty() {
            return None;
        }
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        self.last_nonce = Some(nonce.clone());
        let system_version = {
            let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            for (n, v) in &self.client_has {
                ctx.update(n.as_bytes());
                ctx.update(b"=");
                ctx.update(v.as_bytes());
                ctx.update(b"\n");
            }
            short_hex(ctx.finish().as_ref())
        };
        Some(DeltaResponse {
            system_version,
            nonce,
            resources: changed,
            removed,
        })
    }
}

// ---------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The SDS service: the Workload API service's attestation and cache, SDS's names.
#[derive(Clone)]
pub struct SdsService {
    workload: WorkloadService,
    config: Arc<SdsConfig>,
}

impl fmt::Debug for SdsService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SdsService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SdsService {
    pub fn new(workload: WorkloadService, config: SdsConfig) -> Self {
        Self {
            workload,
            config: Arc::new(config),
        }
    }

    /// Attest the caller and require at least one identity.
    async fn caller<T>(&self, req: &Request<T>) -> Result<(Vec<Selector>, Recipient), Status> {
        let (selectors, who) = self.workload.attest_caller(req).await?;
        self.holdings(&selectors).inspect_err(|_| {
            tracing::info!(
                pid = who.pid,
                uid = who.uid,
                ?selectors,
                "SDS: no identity for caller"
            );
        })?;
        Ok((selectors, who))
    }

    /// What the caller may be served now; `PermissionDenied` when it has no identity.
    fn holdings(&self, selectors: &[Selector]) -> Result<Holdings, Status> {
        let state = self.workload.state();
        let ids = state.identities(selectors, self.workload.clock().unix_seconds());
        if ids.is_empty() {
            return Err(Status::permission_denied(
                "no identity issued: no registration entry matches this caller, so SDS has no secret for it",
            ));
        }
        let mut h = Holdings {
            bundle: state.bundle().as_ref().and_then(BundleFacts::from_bundle),
            federated: state
                .federated()
                .iter()
                .filter_map(BundleFacts::from_bundle)
                .collect(),
            ..Holdings::default()
        };
        for (entry, svid) in ids {
            match svid {
                Some(s) => h.svids.push(SvidFacts {
                    spiffe_id: entry.spiffe_id.to_string(),
                    chain_der: s.chain,
                    key_pkcs8: s.key_pkcs8,
                    serial: s.serial,
                    event_id: s.event_id,
                }),
                None => h.pending.push(entry.spiffe_id.to_string()),
            }
        }
        Ok(h)
    }

    fn record(&self, who: &Recipient, resources: &[SecretResource]) {
        for r in resources {
            if let SecretKind::Certificate { delivered, .. } = &r.kind {
                self.workload.deliveries().x509(
                    who,
                    &delivered.spiffe_id,
                    &delivered.serial,
                    &delivered.event_id,
                );
            }
        }
    }

    /// Wait for the next state change, periodic re-check, or the client going away.
    /// Returns `false` when the stream should end.
    async fn next_change<T>(
        &self,
        changes: &mut tokio::sync::watch::Receiver<u64>,
        tx: &mpsc::Sender<T>,
    ) -> bool {
        let wait = crate::workload::until_next_check(
            self.workload.state(),
            self.workload.clock().as_ref(),
        );
        tokio::select! {
            r = changes.changed() => r.is_ok(),
            _ = tokio::time::sleep(wait) => true,
            _ = tx.closed() => false,
        }
    }
}

fn log_received(kind: &'static str, pid: i32, r: &Received) {
    match r {
        Received::Nack { version, message } => tracing::warn!(
            pid,
            rpc = kind,
            version,
            error = %message,
            "SDS: the client rejected the last response (NACK); not resending it until the secrets change"
        ),
        Received::Stale { nonce, expected } => {
            tracing::debug!(
                pid,
                rpc = kind,
                nonce,
                expected,
                "SDS: stale nonce; request ignored"
            );
        }
        Received::Ack { version } => tracing::debug!(pid, rpc = kind, version, "SDS: ACK"),
        Received::First | Received::Update => {}
    }
}

fn log_missing(kind: &'static str, pid: i32, missing: &[(String, Missing)]) {
    for (name, why) in missing {
        tracing::info!(pid, rpc = kind, resource = %name, reason = %why, "SDS: requested resource left out");
    }
}

enum Event<T> {
    Request(T),
    Changed,
    End,
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = BoxStream<disc_pb::DeltaDiscoveryResponse>;
    type StreamSecretsStream = BoxStream<disc_pb::DiscoveryResponse>;

    async fn stream_secrets(
        &self,
        req: Request<Streaming<disc_pb::DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (selectors, who) = self.caller(&req).await?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let mut stream = SotwStream::default();
            let mut changes = this.workload.state().subscribe();
            loop {
                let event = tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(r)) => Event::Request(r),
                        _ => Event::End,
                    },
                    alive = this.next_change(&mut changes, &tx) => {
                        if alive { Event::Changed } else { Event::End }
                    }
                };
                let answering = match event {
                    Event::End => return,
                    Event::Changed => false,
                    Event::Request(r) => {
                        let r = match SotwRequest::try_from(r) {
                            Ok(r) => r,
                            Err(e) => {
                                let _ = tx.send(Err(e.into())).await;
                                return;
                            }
                        };
                        let d = stream.on_request(r);
                        log_received("StreamSecrets", who.pid, &d.received);
                        if !d.respond {
                            continue;
                        }
                        true
                    }
                };
                let Some(names) = stream.names() else {
                    continue;
                };
                changes.mark_unchanged();
                let holdings = match this.holdings(&selectors) {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let spiffe = use_spiffe_validator(stream.node(), &this.config);
                let sel = select(names, &holdings, &this.config, spiffe);
                if answering {
                    log_missing("StreamSecrets", who.pid, &sel.missing);
                }
                if let Some(out) = stream.offer(sel.resources, answering) {
                    this.record(&who, &out.resources);
                    tracing::debug!(
                        pid = who.pid,
                        version = out.version,
                        nonce = out.nonce,
                        count = out.resources.len(),
                        "SDS: sending StreamSecrets response"
                    );
                    if tx.send(Ok(out.to_proto())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(
        &self,
        req: Request<disc_pb::DiscoveryRequest>,
    ) -> Result<Response<disc_pb::DiscoveryResponse>, Status> {
        let (selectors, who) = self.caller(&req).await?;
        let r = SotwRequest::try_from(req.into_inner())?;
        let holdings = self.holdings(&selectors)?;
        let node = r.node.unwrap_or_default();
        let spiffe = use_spiffe_validator(&node, &self.config);
        let sel = select(&r.names, &holdings, &self.config, spiffe);
        log_missing("FetchSecrets", who.pid, &sel.missing);
        if sel.resources.is_empty() && !r.names.iter().all(String::is_empty) {
            let list: Vec<String> = sel
                .missing
                .iter()
                .map(|(n, why)| format!("{n:?} ({why})"))
                .collect();
            return Err(Status::not_found(format!(
                "no secret for the requested names: {}",
                list.join(", ")
            )));
        }
        self.record(&who, &sel.resources);
        Ok(Response::new(disc_pb::DiscoveryResponse {
            version_info: response_version(&sel.resources),
            resources: sel.resources.iter().map(to_any).collect(),
            canary: false,
            type_url: tls_pb::SECRET_TYPE_URL.into(),
            nonce: String::new(),
        }))
    }

    async fn delta_secrets(
        &self,
        req: Request<Streaming<disc_pb::DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let (selectors, who) = self.caller(&req).await?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let mut stream = DeltaStream::default();
            let mut changes = this.workload.state().subscribe();
            loop {
                let event = tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(r)) => Event::Request(r),
                        _ => Event::End,
                    },
                    alive = this.next_change(&mut changes, &tx) => {
                        if alive { Event::Changed } else { Event::End }
                    }
                };
                let answering = match event {
                    Event::End => return,
                    Event::Changed => false,
                    Event::Request(r) => {
                        let r = match DeltaRequest::try_from(r) {
                            Ok(r) => r,
                            Err(e) => {
                                let _ = tx.send(Err(e.into())).await;
                                return;
                            }
                        };
                        let d = stream.on_request(r);
                        log_received("DeltaSecrets", who.pid, &d.received);
                        if !d.respond {
                            continue;
                        }
                        true
                    }
                };
                changes.mark_unchanged();
                let holdings = match this.holdings(&selectors) {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let spiffe = use_spiffe_validator(stream.node(), &this.config);
                let (wildcard, names) = stream.subscription();
                let mut sel = if wildcard {
                    select(&[], &holdings, &this.config, spiffe)
                } else {
                    Selection::default()
                };
                if !names.is_empty() {
                    let named = select(names, &holdings, &this.config, spiffe);
                    for r in named.resources {
                        if !sel.resources.iter().any(|x| x.name == r.name) {
                            sel.resources.push(r);
                        }
                    }
                    sel.missing = named.missing;
                }
                if answering {
                    log_missing("DeltaSecrets", who.pid, &sel.missing);
                }
                if let Some(out) = stream.offer(sel.resources) {
                    let sent: Vec<SecretResource> =
                        out.resources.iter().map(|(_, r)| r.clone()).collect();
                    this.record(&who, &sent);
                    if tx.send(Ok(out.to_proto())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
#[path = "sds_tests.rs"]
mod tests;
