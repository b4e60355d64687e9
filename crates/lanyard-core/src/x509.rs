//! X509-SVID validation: every leaf and signing-certificate rule of the X509-SVID
//! specification, and path validation of a DER chain against a trust bundle.
//!
//! The rules are data ([`Rule`]), so the same checks drive both validation (the first
//! violated `MUST` rule is the error) and the `lanyard svid inspect` report (every rule,
//! passed or not).

use std::collections::BTreeSet;
use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

use crate::bundle::{BundleSet, PublicJwk};
use crate::clock::Clock;
use crate::id::{IdError, SpiffeId, TrustDomain};

/// Longest chain we will walk (leaf + intermediates); real SPIFFE chains have 1–3.
pub const MAX_CHAIN_LEN: usize = 16;

const OID_SHA1_RSA: &str = "1.2.840.113549.1.1.5";
const OID_SHA1_RSA_OLD: &str = "1.3.14.3.2.29";
const OID_ECDSA_SHA1: &str = "1.2.840.10045.4.1";
const OID_MD5_RSA: &str = "1.2.840.113549.1.1.4";

/// Whether a rule is a requirement or a recommendation of the specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The specification says MUST: a violation makes the certificate invalid.
    Must,
    /// The specification says SHOULD: reported, but not fatal.
    Should,
}

/// One rule of the X509-SVID specification (or of RFC 5280 that SPIFFE relies on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// Leaf: exactly one URI SAN.
    LeafSingleUriSan,
    /// Leaf: the URI SAN is a valid SPIFFE ID.
    LeafSpiffeIdValid,
    /// Leaf: the SPIFFE ID has a path (is not the trust domain's own ID).
    LeafSpiffeIdHasPath,
    /// Leaf: basicConstraints extension present.
    LeafBasicConstraintsPresent,
    /// Leaf: cA is false.
    LeafNotCa,
    /// Any SVID: keyUsage extension present.
    KeyUsagePresent,
    /// Any SVID: keyUsage marked critical.
    KeyUsageCritical,
    /// Leaf: digitalSignature set.
    LeafDigitalSignature,
    /// Leaf: keyCertSign not set.
    LeafNoKeyCertSign,
    /// Leaf: cRLSign not set.
    LeafNoCrlSign,
    /// Leaf: if extendedKeyUsage is present it allows TLS use.
    LeafEkuUsable,
    /// Leaf: extendedKeyUsage includes id-kp-serverAuth.
    LeafEkuServerAuth,
    /// Leaf: extendedKeyUsage includes id-kp-clientAuth.
    LeafEkuClientAuth,
    /// Signing certificate: cA is true.
    CaIsCa,
    /// Signing certificate: keyCertSign set.
    CaKeyCertSign,
    /// Signing certificate: its URI SAN, if any, is a SPIFFE ID without a path.
    CaSpiffeIdNoPath,
    /// Any certificate: the signature algorithm is not SHA-1 or MD5 based.
    StrongSignatureAlgorithm,
    /// Any certificate: outer and inner signature algorithms agree.
    SignatureAlgorithmsMatch,
    /// Any certificate: no critical extension we do not understand.
    NoUnknownCriticalExtension,
    /// Any certificate: the public key is a supported type.
    SupportedPublicKey,
}

impl Rule {
    pub fn severity(self) -> Severity {
        match self {
            Rule::LeafEkuServerAuth | Rule::LeafEkuClientAuth => Severity::Should,
            _ => Severity::Must,
        }
    }

    /// What the rule demands.
    pub fn description(self) -> &'static str {
        match self {
            Rule::LeafSingleUriSan => "the leaf has exactly one URI SAN",
            Rule::LeafSpiffeIdValid => "the URI SAN is a valid SPIFFE ID",
            Rule::LeafSpiffeIdHasPath => "the leaf's SPIFFE ID has a path",
            Rule::LeafBasicConstraintsPresent => "the leaf has a basicConstraints extension",
            Rule::LeafNotCa => "the leaf has cA=false",
            Rule::KeyUsagePresent => "a keyUsage extension is present",
            Rule::KeyUsageCritical => "keyUsage is marked critical",
            Rule::LeafDigitalSignature => "the leaf's keyUsage has digitalSignature",
            Rule::LeafNoKeyCertSign => "the leaf's keyUsage lacks keyCertSign",
            Rule::LeafNoCrlSign => "the leaf's keyUsage lacks cRLSign",
            Rule::LeafEkuUsable => "extendedKeyUsage, if present, allows TLS client or server use",
            Rule::LeafEkuServerAuth => "extendedKeyUsage includes serverAuth",
            Rule::LeafEkuClientAuth => "extendedKeyUsage includes clientAuth",
            Rule::CaIsCa => "a signing certificate has cA=true",
            Rule::CaKeyCertSign => "a signing certificate's keyUsage has keyCertSign",
            Rule::CaSpiffeIdNoPath => "a signing certificate's SPIFFE ID, if any, has no path",
            Rule::StrongSignatureAlgorithm => "the signature algorithm is not SHA-1 or MD5",
            Rule::SignatureAlgorithmsMatch => "the outer and inner signature algorithms agree",
            Rule::NoUnknownCriticalExtension => "no unknown critical extension is present",
            Rule::SupportedPublicKey => "the public key is EC (P-256/P-384/P-521) or RSA",
        }
    }

    /// How to fix a certificate that breaks the rule.
    pub fn fix(self) -> &'static str {
        match self {
            Rule::LeafSingleUriSan => {
                "issue the SVID with the SPIFFE ID as its only URI subject alternative name"
            }
            Rule::LeafSpiffeIdValid => {
                "put a valid spiffe://<trust-domain>/<path> ID in the URI SAN"
            }
            Rule::LeafSpiffeIdHasPath => {
                "a workload SVID names a workload, e.g. spiffe://example.org/service, not the trust domain"
            }
            Rule::LeafBasicConstraintsPresent | Rule::LeafNotCa => {
                "issue the leaf with basicConstraints cA=false (in rcgen: IsCa::ExplicitNoCa)"
            }
            Rule::KeyUsagePresent | Rule::KeyUsageCritical => {
                "issue the certificate with a critical keyUsage extension"
            }
            Rule::LeafDigitalSignature => "set digitalSignature in the leaf's keyUsage",
            Rule::LeafNoKeyCertSign | Rule::LeafNoCrlSign => {
                "leaf SVIDs must not be able to sign certificates or CRLs; drop keyCertSign and cRLSign"
            }
            Rule::LeafEkuUsable | Rule::LeafEkuServerAuth | Rule::LeafEkuClientAuth => {
                "issue the leaf with extendedKeyUsage serverAuth and clientAuth"
            }
            Rule::CaIsCa | Rule::CaKeyCertSign => {
                "sign SVIDs only with CA certificates (basicConstraints cA=true, keyUsage keyCertSign)"
            }
            Rule::CaSpiffeIdNoPath => {
                "a CA's URI SAN must be the trust domain's own ID, e.g. spiffe://example.org"
            }
            Rule::StrongSignatureAlgorithm | Rule::SignatureAlgorithmsMatch => {
                "re-issue the certificate with ECDSA-SHA256/384 or RSA-SHA256 or stronger"
            }
            Rule::NoUnknownCriticalExtension => {
                "remove the extension or mark it non-critical; a verifier must reject unknown critical extensions"
            }
            Rule::SupportedPublicKey => "use an EC P-256 (recommended), P-384 or RSA key",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// The outcome of one rule on one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCheck {
    pub rule: Rule,
    pub passed: bool,
    /// What was found, e.g. `2 URI SANs`.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509Error {
    #[error("the certificate chain is empty; an X509-SVID needs at least the leaf certificate")]
    EmptyChain,
    #[error(
        "certificate #{index} is not valid DER X.509: {reason}; check that the file holds certificates (PEM \"CERTIFICATE\" blocks or DER)"
    )]
    Malformed { index: usize, reason: String },
    #[error("the chain has {len} certificates; at most {MAX_CHAIN_LEN} are accepted")]
    ChainTooLong { len: usize },
    #[error("certificate #{index} ({role}) breaks a SPIFFE rule: {rule}: {detail}; to fix: {fix}", fix = rule.fix())]
    RuleViolated {
        index: usize,
        role: &'static str,
        rule: Rule,
        detail: String,
    },
    #[error("the SVID's SPIFFE ID is invalid: {0}")]
    Id(#[from] IdError),
    #[error(
        "no trust bundle for trust domain {0:?}; add that trust domain's bundle (federation) or check the SVID's issuer"
    )]
    NoBundle(String),
    #[error(
        "the trust bundle of {0:?} has no X.509 authorities, so no X509-SVID can be verified against it"
    )]
    NoAuthorities(String),
    #[error(
        "certificate #{index} is not valid yet: it starts at {not_before} (unix seconds) and it is now {now}; check the clocks of issuer and verifier"
    )]
    NotYetValid {
        index: usize,
        not_before: i64,
        now: i64,
    },
    #[error(
        "certificate #{index} expired at {not_after} (unix seconds), it is now {now}; fetch a fresh SVID"
    )]
    Expired {
        index: usize,
        not_after: i64,
        now: i64,
    },
    #[error(
        "the trust-bundle authority that signs the chain expired at {not_after} (unix seconds), it is now {now}; refresh the bundle"
    )]
    AuthorityExpired { not_after: i64, now: i64 },
    #[error(
        "certificate #{index}'s signature does not verify with the key of its issuer {issuer:?}; the chain was altered or signed by another key"
    )]
    BadSignature { index: usize, issuer: String },
    #[error(
        "certificate #{index} was issued by {issuer:?}, which is neither in the chain nor an authority of the {trust_domain:?} bundle; the SVID is not trusted"
    )]
    UnknownIssuer {
        index: usize,
        issuer: String,
        trust_domain: String,
    },
    #[error(
        "signing certificate #{index} belongs to trust domain {found:?} but the leaf to {expected:?}; a CA may only sign for its own trust domain"
    )]
    ForeignCa {
        index: usize,
        found: String,
        expected: String,
    },
    #[error(
        "certificate #{index}'s pathLenConstraint is {limit}, but {below} intermediate CAs follow it; the chain is longer than its CA allows"
    )]
    PathLenExceeded {
        index: usize,
        limit: u32,
        below: u32,
    },
    #[error("the chain loops or is longer than {MAX_CHAIN_LEN} certificates")]
    PathTooLong,
}

/// A parsed and checked X509-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Svid {
    spiffe_id: SpiffeId,
    chain: Vec<Vec<u8>>,
    not_before: i64,
    not_after: i64,
    serial: String,
}

impl X509Svid {
    /// Check the leaf rules of a chain (leaf first) without verifying it against a
    /// bundle. Use [`X509Svid::validate`] to trust it.
    pub fn parse(chain: Vec<Vec<u8>>) -> Result<Self, X509Error> {
        if chain.is_empty() {
            return Err(X509Error::EmptyChain);
        }
        if chain.len() > MAX_CHAIN_LEN {
            return Err(X509Error::ChainTooLong { len: chain.len() });
        }
        let parsed = parse_all(&chain)?;
        let leaf = &parsed[0];
        first_violation(0, "leaf", &leaf_checks(leaf))?;
        let spiffe_id = leaf_id(leaf)?;
        for (i, ca) in parsed.iter().enumerate().skip(1) {
            first_violation(i, "intermediate CA", &ca_checks(ca))?;
        }
        let not_before = leaf.validity().not_before.timestamp();
        let not_after = leaf.validity().not_after.timestamp();
        let serial = hex_serial(leaf.raw_serial());
        drop(parsed);
        Ok(Self {
            spiffe_id,
            chain,
            not_before,
            not_after,
            serial,
        })
    }

    /// Parse a chain given as concatenated DER (the Workload API encoding).
    pub fn parse_concatenated(der: &[u8]) -> Result<Self, X509Error> {
        Self::parse(split_der_chain(der)?)
    }

    /// Check every rule and verify the chain up to an X.509 authority of the bundle of
    /// the leaf's trust domain, at the time given by `clock`.
    pub fn validate(
        chain: Vec<Vec<u8>>,
        bundles: &BundleSet,
        clock: &dyn Clock,
    ) -> Result<Self, X509Error> {
        let svid = Self::parse(chain)?;
        verify_path(&svid.chain, svid.spiffe_id.trust_domain(), bundles, clock)?;
        Ok(svid)
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The DER certificates, leaf first.
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    pub fn leaf_der(&self) -> &[u8] {
        self.chain.first().map(Vec::as_slice).unwrap_or_default()
    }

    /// Start of validity, unix seconds.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// End of validity, unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Leaf serial number, lowercase hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }
}

fn hex_serial(raw: &[u8]) -> String {
    let trimmed = match raw.iter().position(|&b| b != 0) {
        Some(i) => &raw[i..],
        None => &raw[raw.len().saturating_sub(1)..],
    };
    hex::encode(trimmed)
}

/// Split concatenated DER certificates.
pub fn split_der_chain(mut der: &[u8]) -> Result<Vec<Vec<u8>>, X509Error> {
    let mut out = Vec::new();
    while !der.is_empty() {
        if out.len() >= MAX_CHAIN_LEN {
            return Err(X509Error::ChainTooLong { len: out.len() + 1 });
        }
        let (rest, _) = X509Certificate::from_der(der).map_err(|e| X509Error::Malformed {
            index: out.len(),
            reason: e.to_string(),
        })?;
        let used = der.len() - rest.len();
        out.push(der[..used].to_vec());
        der = rest;
    }
    if out.is_empty() {
        return Err(X509Error::EmptyChain);
    }
    Ok(out)
}

fn parse_one(index: usize, der: &[u8]) -> Result<X509Certificate<'_>, X509Error> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(X509Error::Malformed {
            index,
            reason: format!("{} unexpected bytes after the certificate", rest.len()),
        }),
        Err(e) => Err(X509Error::Malformed {
            index,
            reason: e.to_string(),
        }),
    }
}

fn parse_all(chain: &[Vec<u8>]) -> Result<Vec<X509Certificate<'_>>, X509Error> {
    chain
        .iter()
        .enumerate()
        .map(|(i, der)| parse_one(i, der))
        .collect()
}

fn first_violation(
    index: usize,
    role: &'static str,
    checks: &[RuleCheck],
) -> Result<(), X509Error> {
    match checks
        .iter()
        .find(|c| !c.passed && c.rule.severity() == Severity::Must)
    {
        Some(c) => Err(X509Error::RuleViolated {
            index,
            role,
            rule: c.rule,
            detail: c.detail.clone(),
        }),
        None => Ok(()),
    }
}

fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, String> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => Ok(san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect()),
        Ok(None) => Ok(Vec::new()),
        Err(e) => Err(format!("the subjectAltName extension is malformed: {e}")),
    }
}

fn leaf_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, X509Error> {
    let uris = uri_sans(cert).map_err(|reason| X509Error::Malformed { index: 0, reason })?;
    match uris.as_slice() {
        [one] => Ok(SpiffeId::new(one)?),
        _ => Err(X509Error::RuleViolated {
            index: 0,
            role: "leaf",
            rule: Rule::LeafSingleUriSan,
            detail: format!("{} URI SANs", uris.len()),
        }),
    }
}

fn check(rule: Rule, passed: bool, detail: impl Into<String>) -> RuleCheck {
    RuleCheck {
        rule,
        passed,
        detail: detail.into(),
    }
}

fn common_checks(cert: &X509Certificate<'_>, out: &mut Vec<RuleCheck>) {
    let alg = cert.signature_algorithm.algorithm.to_id_string();
    let weak =
        [OID_SHA1_RSA, OID_SHA1_RSA_OLD, OID_ECDSA_SHA1, OID_MD5_RSA].contains(&alg.as_str());
    out.push(check(
        Rule::StrongSignatureAlgorithm,
        !weak,
        format!("signature algorithm {alg}"),
    ));
    let same = cert.signature_algorithm == cert.tbs_certificate.signature;
    out.push(check(
        Rule::SignatureAlgorithmsMatch,
        same,
        if same {
            "they agree".to_string()
        } else {
            format!(
                "outer {alg} vs inner {}",
                cert.tbs_certificate.signature.algorithm.to_id_string()
            )
        },
    ));
    let unknown: Vec<String> = cert
        .extensions()
        .iter()
        .filter(|e| e.critical && e.parsed_extension().unsupported())
        .map(|e| e.oid.to_id_string())
        .collect();
    out.push(check(
        Rule::NoUnknownCriticalExtension,
        unknown.is_empty(),
        if unknown.is_empty() {
            "none".to_string()
        } else {
            format!("unknown critical extension(s) {}", unknown.join(", "))
        },
    ));
    match PublicJwk::from_spki(cert.public_key()) {
        Ok(k) => out.push(check(Rule::SupportedPublicKey, true, k.describe())),
        Err(e) => out.push(check(Rule::SupportedPublicKey, false, e.to_string())),
    }
    match cert.key_usage() {
        Ok(Some(ku)) => {
            out.push(check(Rule::KeyUsagePresent, true, "present"));
            out.push(check(
                Rule::KeyUsageCritical,
                ku.critical,
                if ku.critical {
                    "critical"
                } else {
                    "not critical"
                },
            ));
        }
        Ok(None) => {
            out.push(check(Rule::KeyUsagePresent, false, "no keyUsage extension"));
        }
        Err(e) => out.push(check(
            Rule::KeyUsagePresent,
            false,
            format!("keyUsage is malformed or duplicated: {e}"),
        )),
    }
}

/// Every leaf rule, evaluated on a parsed certificate.
pub fn leaf_checks(cert: &X509Certificate<'_>) -> Vec<RuleCheck> {
    let mut out = Vec::new();
    match uri_sans(cert) {
        Ok(uris) => {
            out.push(check(
                Rule::LeafSingleUriSan,
                uris.len() == 1,
                match uris.len() {
                    0 => "no URI SAN".to_string(),
                    1 => "one URI SAN".to_string(),
                    n => format!("{n} URI SANs: {}", uris.join(", ")),
                },
            ));
            if let [uri] = uris.as_slice() {
                match SpiffeId::new(uri) {
                    Ok(id) => {
                        out.push(check(Rule::LeafSpiffeIdValid, true, id.to_string()));
                        out.push(check(
                            Rule::LeafSpiffeIdHasPath,
                            !id.is_root(),
                            if id.is_root() {
                                format!("{id} has no path")
                            } else {
                                format!("path {}", id.path())
                            },
                        ));
                    }
                    Err(e) => out.push(check(
                        Rule::LeafSpiffeIdValid,
                        false,
                        format!("{uri:?}: {e}"),
                    )),
                }
            }
        }
        Err(reason) => out.push(check(Rule::LeafSingleUriSan, false, reason)),
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) => {
            out.push(check(Rule::LeafBasicConstraintsPresent, true, "present"));
            out.push(check(
                Rule::LeafNotCa,
                !bc.value.ca,
                if bc.value.ca { "cA=true" } else { "cA=false" },
            ));
        }
        Ok(None) => out.push(check(
            Rule::LeafBasicConstraintsPresent,
            false,
            "no basicConstraints extension",
        )),
        Err(e) => out.push(check(
            Rule::LeafBasicConstraintsPresent,
            false,
            format!("basicConstraints is malformed or duplicated: {e}"),
        )),
    }
    common_checks(cert, &mut out);
    if let Ok(Some(ku)) = cert.key_usage() {
        let ku = ku.value;
        out.push(check(
            Rule::LeafDigitalSignature,
            ku.digital_signature(),
            if ku.digital_signature() {
                "set"
            } else {
                "not set"
            },
        ));
        out.push(check(
            Rule::LeafNoKeyCertSign,
            !ku.key_cert_sign(),
            if ku.key_cert_sign() {
                "keyCertSign is set"
            } else {
                "not set"
            },
        ));
        out.push(check(
            Rule::LeafNoCrlSign,
            !ku.crl_sign(),
            if ku.crl_sign() {
                "cRLSign is set"
            } else {
                "not set"
            },
        ));
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) => {
            let e = eku.value;
            let usable = e.any || e.server_auth || e.client_auth;
            out.push(check(
                Rule::LeafEkuUsable,
                usable,
                if usable {
                    "allows TLS"
                } else {
                    "neither serverAuth nor clientAuth nor anyExtendedKeyUsage"
                },
            ));
            out.push(check(
                Rule::LeafEkuServerAuth,
                e.server_auth || e.any,
                if e.server_auth { "present" } else { "absent" },
            ));
            out.push(check(
                Rule::LeafEkuClientAuth,
                e.client_auth || e.any,
                if e.client_auth { "present" } else { "absent" },
            ));
        }
        Ok(None) => {
            out.push(check(
                Rule::LeafEkuServerAuth,
                false,
                "no extendedKeyUsage extension",
            ));
            out.push(check(
                Rule::LeafEkuClientAuth,
                false,
                "no extendedKeyUsage extension",
            ));
        }
        Err(e) => out.push(check(
            Rule::LeafEkuUsable,
            false,
            format!("extendedKeyUsage is malformed or duplicated: {e}"),
        )),
    }
    out
}

/// Every signing-certificate (CA) rule, evaluated on a parsed certificate.
pub fn ca_checks(cert: &X509Certificate<'_>) -> Vec<RuleCheck> {
    let mut out = Vec::new();
    match cert.basic_constraints() {
        Ok(Some(bc)) => out.push(check(
            Rule::CaIsCa,
            bc.value.ca,
            if bc.value.ca { "cA=true" } else { "cA=false" },
        )),
        Ok(None) => out.push(check(Rule::CaIsCa, false, "no basicConstraints extension")),
        Err(e) => out.push(check(
            Rule::CaIsCa,
            false,
            format!("basicConstraints is malformed or duplicated: {e}"),
        )),
    }
    common_checks(cert, &mut out);
    if let Ok(Some(ku)) = cert.key_usage() {
        out.push(check(
            Rule::CaKeyCertSign,
            ku.value.key_cert_sign(),
            if ku.value.key_cert_sign() {
                "set"
            } else {
                "not set"
            },
        ));
    }
    match uri_sans(cert) {
        Ok(uris) => {
            let bad: Vec<String> = uris
                .iter()
                .filter(|u| SpiffeId::new(u).map(|id| !id.is_root()).unwrap_or(true))
                .map(|u| (*u).to_string())
                .collect();
            out.push(check(
                Rule::CaSpiffeIdNoPath,
                bad.is_empty() && uris.len() <= 1,
                if uris.is_empty() {
                    "no URI SAN".to_string()
                } else if bad.is_empty() && uris.len() == 1 {
                    uris.join(", ")
                } else {
                    format!("URI SAN(s) {}", uris.join(", "))
                },
            ));
        }
        Err(reason) => out.push(check(Rule::CaSpiffeIdNoPath, false, reason)),
    }
    out
}

fn ca_trust_domain(cert: &X509Certificate<'_>) -> Option<TrustDomain> {
    let uris = uri_sans(cert).ok()?;
    let first = uris.first()?;
    SpiffeId::new(first)
        .ok()
        .map(|id| id.trust_domain().clone())
}

fn check_time(index: usize, cert: &X509Certificate<'_>, now: i64) -> Result<(), X509Error> {
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    if now < not_before {
        return Err(X509Error::NotYetValid {
            index,
            not_before,
            now,
        });
    }
    if now > not_after {
        return Err(X509Error::Expired {
            index,
            not_after,
            now,
        });
    }
    Ok(())
}

fn path_len_ok(index: usize, cert: &X509Certificate<'_>, below: u32) -> Result<(), X509Error> {
    if let Ok(Some(bc)) = cert.basic_constraints()
        && let Some(limit) = bc.value.path_len_constraint
        && below > limit
    {
        return Err(X509Error::PathLenExceeded {
            index,
            limit,
            below,
        });
    }
    Ok(())
}

/// Verify that `chain` (leaf first, already rule-checked) leads to an X.509 authority
/// of `td`'s bundle, every certificate valid at the clock's time.
pub fn verify_path(
    chain: &[Vec<u8>],
    td: &TrustDomain,
    bundles: &BundleSet,
    clock: &dyn Clock,
) -> Result<(), X509Error> {
    let bundle = bundles
        .get(td)
        .ok_or_else(|| X509Error::NoBundle(td.to_string()))?;
    if bundle.x509_authorities().is_empty() {
        return Err(X509Error::NoAuthorities(td.to_string()));
    }
    let certs = parse_all(chain)?;
    let authorities: Vec<X509Certificate<'_>> = bundle
        .x509_authorities()
        .iter()
        .filter_map(|a| X509Certificate::from_der(a.der()).ok().map(|(_, c)| c))
        .collect();
    let now = clock.unix_seconds();
    let mut current = 0usize;
    let mut used = BTreeSet::from([0usize]);
    let mut intermediates_below = 0u32;
    check_time(0, &certs[0], now)?;
    for _ in 0..MAX_CHAIN_LEN {
        let cur = &certs[current];
        // Issued directly by a bundle authority?
        let mut authority_expired = None;
        for auth in &authorities {
            if auth.subject().as_raw() != cur.issuer().as_raw() {
                continue;
            }
            if cur.verify_signature(Some(auth.public_key())).is_err() {
                continue;
            }
            let not_after = auth.validity().not_after.timestamp();
            let not_before = auth.validity().not_before.timestamp();
            if now > not_after || now < not_before {
                authority_expired = Some(not_after);
                continue;
            }
            path_len_ok(usize::MAX, auth, intermediates_below).map_err(|e| match e {
                X509Error::PathLenExceeded { limit, below, .. } => X509Error::PathLenExceeded {
                    index: chain.len(),
                    limit,
                    below,
                },
                other => other,
            })?;
            return Ok(());
        }
        if let Some(not_after) = authority_expired {
            return Err(X509Error::AuthorityExpired { not_after, now });
        }
        // Otherwise the issuer must be a not-yet-used intermediate from the chain.
        let next = certs
            .iter()
            .enumerate()
            .skip(1)
            .find(|(i, c)| !used.contains(i) && c.subject().as_raw() == cur.issuer().as_raw());
        let Some((next_index, next_cert)) = next else {
            return Err(X509Error::UnknownIssuer {
                index: current,
                issuer: cur.issuer().to_string(),
                trust_domain: td.to_string(),
            });
        };
        if cur.verify_signature(Some(next_cert.public_key())).is_err() {
            return Err(X509Error::BadSignature {
                index: current,
                issuer: cur.issuer().to_string(),
            });
        }
        first_violation(next_index, "intermediate CA", &ca_checks(next_cert))?;
        if let Some(found) = ca_trust_domain(next_cert)
            && &found != td
        {
            return Err(X509Error::ForeignCa {
                index: next_index,
                found: found.to_string(),
                expected: td.to_string(),
            });
        }
        check_time(next_index, next_cert, now)?;
        path_len_ok(next_index, next_cert, intermediates_below)?;
        intermediates_below += 1;
        used.insert(next_index);
        current = next_index;
    }
    Err(X509Error::PathTooLong)
}

/// Human-oriented facts about one certificate, for `lanyard svid inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub public_key: String,
}

/// Summarize a DER certificate.
pub fn summarize(der: &[u8]) -> Result<CertSummary, X509Error> {
    let cert = parse_one(0, der)?;
    let mut uri_sans_v = Vec::new();
    let mut dns_sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::URI(u) => uri_sans_v.push((*u).to_string()),
                GeneralName::DNSName(d) => dns_sans.push((*d).to_string()),
                _ => {}
            }
        }
    }
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: hex_serial(cert.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
        uri_sans: uri_sans_v,
        dns_sans,
        public_key: PublicJwk::from_spki(cert.public_key())
            .map(|k| k.describe())
            .unwrap_or_else(|e| e.to_string()),
    })
}

/// Every rule check on a DER certificate, as a leaf (`as_leaf`) or as a CA.
pub fn rule_report(der: &[u8], as_leaf: bool) -> Result<Vec<RuleCheck>, X509Error> {
    let cert = parse_one(0, der)?;
    Ok(if as_leaf {
        leaf_checks(&cert)
    } else {
        ca_checks(&cert)
    })
}

/// True if the parsed extension list marks the certificate as a CA.
pub fn is_ca_der(der: &[u8]) -> bool {
    parse_one(0, der)
        .map(|c| {
            matches!(
                c.basic_constraints(),
                Ok(Some(BasicExtension { value: bc, .. })) if bc.ca
            )
        })
        .unwrap_or(false)
}

#[cfg(test)]
#[path = "x509_tests.rs"]
mod tests;

/// The certificate's Subject Key Identifier (hex), if present.
pub fn subject_key_id(der: &[u8]) -> Option<String> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    c.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(hex::encode(k.0)),
            _ => None,
        })
}

/// The certificate's Authority Key Identifier (hex): the Subject Key Identifier of
/// the CA that signed it, if present.
pub fn authority_key_id(der: &[u8]) -> Option<String> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    c.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| hex::encode(k.0))
            }
            _ => None,
        })
}
