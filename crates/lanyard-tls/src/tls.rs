//! rustls glue for SPIFFE mTLS: certificate verifiers that validate X509-SVIDs against
//! the current trust bundle (which rotates, so it is read on every handshake) and match
//! SPIFFE IDs, and a certificate resolver whose SVID can be swapped on renewal.

use std::sync::{Arc, RwLock};

use lanyard_core::{BundleSet, FakeClock, SpiffeId, X509Svid};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Why a TLS configuration or identity could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The private key cannot be used by the crypto provider.
    #[error("unusable private key: {0}")]
    Key(String),
    /// The provider refused the protocol versions or settings.
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// The trust bundles, shared with the task that rotates them.
pub type SharedBundles = Arc<RwLock<BundleSet>>;

/// The crypto provider used everywhere (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn algs() -> WebPkiSupportedAlgorithms {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
}

fn validate(
    bundles: &SharedBundles,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<X509Svid, rustls::Error> {
    let mut chain = vec![end_entity.as_ref().to_vec()];
    chain.extend(intermediates.iter().map(|c| c.as_ref().to_vec()));
    let clock = FakeClock::at(i64::try_from(now.as_secs()).unwrap_or(i64::MAX));
    let set = bundles
        .read()
        .map_err(|_| rustls::Error::General("trust bundle lock poisoned".to_string()))?;
    X509Svid::validate(chain, &set, &clock)
        .map_err(|e| rustls::Error::General(format!("peer X509-SVID rejected: {e}")))
}

/// Server side: accepts clients presenting a valid X509-SVID of a trusted trust
/// domain. With `mandatory` false, clients without a certificate may connect too
/// (node attestation); the services then check `peer_spiffe_id` themselves.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundles: SharedBundles,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    pub fn new(bundles: SharedBundles, mandatory: bool) -> Self {
        Self { bundles, mandatory }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        validate(&self.bundles, end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algs())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algs())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algs().supported_schemes()
    }
}

/// Client side: accepts a server whose X509-SVID is valid and whose SPIFFE ID is
/// `expected` (DNS names are not used in SPIFFE authentication).
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundles: SharedBundles,
    expected: SpiffeId,
}

impl SpiffeServerVerifier {
    pub fn new(bundles: SharedBundles, expected: SpiffeId) -> Self {
        Self { bundles, expected }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let svid = validate(&self.bundles, end_entity, intermediates, now)?;
        if svid.spiffe_id() != &self.expected {
            return Err(rustls::Error::General(format!(
                "the server presented {} but {} was expected",
                svid.spiffe_id(),
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algs())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algs())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algs().supported_schemes()
    }
}

/// Build a rustls certified key from a DER chain and a PKCS#8 private key.
pub fn certified_key(chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let certs = chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

/// A certificate resolver whose SVID is replaced on every renewal.
#[derive(Debug)]
pub struct SvidResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl SvidResolver {
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(key),
        }
    }

    pub fn set(&self, key: Arc<CertifiedKey>) {
        if let Ok(mut g) = self.current.write() {
            *g = key;
        }
    }

    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|g| g.clone())
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl rustls::client::ResolvesClientCert for SvidResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A TLS server configuration for gRPC (ALPN h2).
pub fn server_config(
    resolver: Arc<SvidResolver>,
    verifier: Arc<SpiffeClientVerifier>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// A TLS client configuration for gRPC (ALPN h2), optionally presenting an SVID.
pub fn client_config(
    verifier: Arc<SpiffeServerVerifier>,
    identity: Option<Arc<SvidResolver>>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match identity {
        Some(r) => builder.with_client_cert_resolver(r),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// The SPIFFE ID in the leaf of a peer's (already verified) certificate chain.
pub fn peer_spiffe_id(certs: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    let leaf = certs.first()?;
    X509Svid::parse(vec![leaf.as_ref().to_vec()])
        .ok()
        .map(|s| s.spiffe_id().clone())
}

/// Accepts any server certificate (signatures are still checked). Only for an agent's
/// explicitly requested insecure bootstrap.
#[derive(Debug)]
struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algs())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algs())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algs().supported_schemes()
    }
}

/// Client configuration for the insecure bootstrap (see [`AcceptAnyServer`]).
pub fn insecure_client_config() -> Result<rustls::ClientConfig, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}
