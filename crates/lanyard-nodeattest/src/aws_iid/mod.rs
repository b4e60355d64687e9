//! `aws_iid`: the EC2 instance identity document, signed by AWS.
//!
//! The agent reads three things from the instance metadata service and sends them
//! as JSON (`{"document": …, "signature": …, "rsa2048": …}`, SPIRE's payload shape):
//!
//! * `document`: `/latest/dynamic/instance-identity/document`, byte for byte;
//! * `signature`: `/latest/dynamic/instance-identity/signature`, base64 of an RSA
//!   PKCS #1 v1.5 SHA-256 signature over the document, verified with the region's
//!   AWS "RSA" certificate. AWS's keys for this form are 1024-bit, so it is accepted
//!   only with a 2048-bit-or-larger configured key, or when the configuration opts in
//!   to 1024-bit keys explicitly ([`AwsIidConfig::allow_rsa1024_signature`]);
//! * `rsa2048`: `/latest/dynamic/instance-identity/rsa2048`, a PKCS #7 SignedData
//!   (base64, with or without PEM armor) verified with the region's AWS "RSA-2048"
//!   certificate. Preferred when present.
//!
//! The certificates come from configuration (AWS publishes them per region), never
//! from the evidence. Then the account must be on the allow-list, and the node is
//! admitted as `/lanyard/agent/aws_iid/<account>/<region>/<instance id>` with the
//! selectors `aws_iid:account:…`, `aws_iid:region:…`, `aws_iid:az:…`,
//! `aws_iid:instance:id:…`, `aws_iid:image:id:…`, `aws_iid:instance:type:…` (SPIRE's
//! spelling where SPIRE has the selector: `az`, `image:id`, `instance:id`, `region`).
//!
//! An identity document never expires, so it is replayable by anyone who reads it
//! from the instance: like SPIRE, an instance attests once
//! ([`check_first_attestation`]) unless re-attestation is allowed.

mod ber;
pub mod pkcs7;

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use lanyard_core::{Selector, SpiffeId, TrustDomain, check_agent_id};
use serde::{Deserialize, Serialize};

pub use pkcs7::{Pkcs7Error, SignedData};

/// The attestor's name and selector type.
pub const NAME: &str = "aws_iid";
/// Largest evidence payload accepted, in bytes.
pub const MAX_EVIDENCE_BYTES: usize = 64 * 1024;
/// Largest identity document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;

/// The instance identity document (the fields AWS documents; unknown ones ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceIdentityDocument {
    /// The AWS account ID (12 digits).
    pub account_id: String,
    /// The region, e.g. `us-east-1`.
    pub region: String,
    /// The instance ID, e.g. `i-1234567890abcdef0`.
    pub instance_id: String,
    /// The AMI ID.
    #[serde(default)]
    pub image_id: Option<String>,
    /// The instance type, e.g. `t3.micro`.
    #[serde(default)]
    pub instance_type: Option<String>,
    /// The availability zone, e.g. `us-east-1a`.
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// The architecture, e.g. `x86_64`.
    #[serde(default)]
    pub architecture: Option<String>,
    /// The private IPv4 address.
    #[serde(default)]
    pub private_ip: Option<String>,
    /// When the instance was launched.
    #[serde(default)]
    pub pending_time: Option<String>,
    /// The document format version.
    #[serde(default)]
    pub version: Option<String>,
    /// The kernel ID, if any.
    #[serde(default)]
    pub kernel_id: Option<String>,
    /// The RAM disk ID, if any.
    #[serde(default)]
    pub ramdisk_id: Option<String>,
    /// Billing products, if any.
    #[serde(default)]
    pub billing_products: Option<Vec<String>>,
    /// Marketplace product codes, if any.
    #[serde(default)]
    pub marketplace_product_codes: Option<Vec<String>>,
    /// DevPay product codes (legacy), if any.
    #[serde(default)]
    pub devpay_product_codes: Option<Vec<String>>,
}

/// Why an instance identity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IidRefusal {
    /// The evidence payload is not the expected JSON.
    #[error(
        "the aws_iid evidence is malformed: {0}; the agent sends {{\"document\": …, \"signature\": …, \"rsa2048\": …}} read from the instance metadata service"
    )]
    Malformed(String),
    /// The identity document is not a valid document.
    #[error("the instance identity document is invalid: {0}")]
    BadDocument(String),
    /// Neither signature form is present.
    #[error(
        "the evidence has neither an rsa2048 nor a signature; the agent must send one from /latest/dynamic/instance-identity/"
    )]
    MissingSignature,
    /// No certificate is configured for the region.
    #[error(
        "no AWS certificate is configured for region {region:?}; add that region's AWS public certificate (from the EC2 documentation) to the aws_iid configuration"
    )]
    NoCertificate {
        /// The document's region.
        region: String,
    },
    /// The only key for the `signature` form is shorter than 2048 bits.
    #[error(
        "the configured certificate for this region has a {bits}-bit RSA key, which is accepted only with allow_rsa1024_signature; prefer the rsa2048 signature and AWS's RSA-2048 certificate"
    )]
    WeakKeyNotAllowed {
        /// The key size.
        bits: usize,
    },
    /// The `signature` form does not verify.
    #[error(
        "the instance identity signature does not verify with the configured AWS certificate: the document was altered (it must be sent byte for byte as IMDS returned it) or not signed by AWS for this region"
    )]
    BadSignature,
    /// The `rsa2048` form was refused.
    #[error(transparent)]
    Pkcs7(#[from] Pkcs7Error),
    /// The document beside the PKCS #7 differs from the one inside it.
    #[error("the document sent differs from the one the rsa2048 signature carries")]
    DocumentMismatch,
    /// The account is not allowed.
    #[error(
        "AWS account {account} is not allowed to attest (allowed: {}); add it to `accounts` in the server's [aws_iid] table",
        allowed.join(", ")
    )]
    AccountNotAllowed {
        /// The document's account.
        account: String,
        /// The allow-list.
        allowed: Vec<String>,
    },
    /// The instance attested before.
    #[error(
        "instance {agent_id} has already attested and aws_iid allows one attestation per instance (an identity document never expires, so a second one may be a copy); evict the agent first (lanyard agent evict), or set allow_reattestation = true in [aws_iid]"
    )]
    AlreadyAttested {
        /// The agent ID of the instance.
        agent_id: String,
    },
}

impl IidRefusal {
    /// A stable short code for evidence events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::BadDocument(_) => "bad_document",
            Self::MissingSignature => "missing_signature",
            Self::NoCertificate { .. } => "no_certificate",
            Self::WeakKeyNotAllowed { .. } => "weak_key",
            Self::BadSignature => "bad_signature",
            Self::Pkcs7(Pkcs7Error::Malformed(_)) => "malformed",
            Self::Pkcs7(_) => "bad_signature",
            Self::DocumentMismatch => "document_mismatch",
            Self::AccountNotAllowed { .. } => "account_not_allowed",
            Self::AlreadyAttested { .. } => "already_attested",
        }
    }

    /// Whether the evidence is unreadable (gRPC `InvalidArgument`) rather than not
    /// proving enough.
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            Self::Malformed(_) | Self::BadDocument(_) | Self::Pkcs7(Pkcs7Error::Malformed(_))
        )
    }
}

fn segment_ok(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

impl InstanceIdentityDocument {
    /// Parse a document and check the fields that name the instance.
    pub fn parse(bytes: &[u8]) -> Result<Self, IidRefusal> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(IidRefusal::BadDocument(format!(
                "it is {} bytes; at most {MAX_DOCUMENT_BYTES} are accepted",
                bytes.len()
            )));
        }
        let doc: Self = serde_json::from_slice(bytes)
            .map_err(|e| IidRefusal::BadDocument(format!("not the JSON AWS returns ({e})")))?;
        if doc.account_id.len() != 12 || !doc.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IidRefusal::BadDocument(format!(
                "accountId {:?} is not a 12-digit AWS account ID",
                doc.account_id
            )));
        }
        if !segment_ok(&doc.region, b"-") || doc.region.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(IidRefusal::BadDocument(format!(
                "region {:?} is not an AWS region name",
                doc.region
            )));
        }
        if !doc.instance_id.starts_with("i-") || !segment_ok(&doc.instance_id, b"-") {
            return Err(IidRefusal::BadDocument(format!(
                "instanceId {:?} is not an EC2 instance ID",
                doc.instance_id
            )));
        }
        Ok(doc)
    }
}

/// What the agent sends: the document and its signatures, as read from IMDS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IidEvidence {
    /// The document, byte for byte (may be empty when `rsa2048` carries it).
    #[serde(default)]
    pub document: String,
    /// The base64 `signature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The base64 `rsa2048` PKCS #7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsa2048: Option<String>,
}

impl IidEvidence {
    /// Parse the agent's JSON payload.
    pub fn parse(bytes: &[u8]) -> Result<Self, IidRefusal> {
        if bytes.len() > MAX_EVIDENCE_BYTES {
            return Err(IidRefusal::Malformed(format!(
                "it is {} bytes; at most {MAX_EVIDENCE_BYTES} are accepted",
                bytes.len()
            )));
        }
        serde_json::from_slice(bytes).map_err(|e| IidRefusal::Malformed(e.to_string()))
    }
}

/// Decode base64 that may be wrapped in PEM armor and lines (as IMDS and the AWS
/// documentation present signatures).
fn decode_armored_base64(text: &str) -> Result<Vec<u8>, IidRefusal> {
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("-----"))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD
        .decode(body)
        .map_err(|e| IidRefusal::Malformed(format!("a signature is not base64 ({e})")))
}

/// Why an aws_iid configuration is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IidConfigError {
    /// No account is allowed.
    #[error(
        "aws_iid needs at least one allowed account ID; an empty allow-list would admit nobody"
    )]
    NoAccounts,
    /// An account ID is not 12 digits.
    #[error("{0:?} is not an AWS account ID (12 digits)")]
    BadAccount(String),
    /// No certificate is configured.
    #[error(
        "aws_iid needs the AWS public certificate of each region it admits instances from (from the EC2 documentation, \"instance identity documents\")"
    )]
    NoCertificates,
    /// A certificate cannot be used.
    #[error("an aws_iid certificate cannot be used: {0}")]
    BadCertificate(String),
}

/// An AWS public certificate's RSA key, for one region or (without a region) for
/// any region that has no certificate of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsCertificate {
    region: Option<String>,
    rsa_public_key: Vec<u8>,
    bits: usize,
}

impl AwsCertificate {
    /// From a PEM certificate (as AWS publishes them).
    pub fn from_pem(pem: &str, region: Option<&str>) -> Result<Self, IidConfigError> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| IidConfigError::BadCertificate(format!("not a PEM certificate ({e})")))?;
        Self::from_der(&p.contents, region)
    }

    /// From a DER certificate.
    pub fn from_der(der: &[u8], region: Option<&str>) -> Result<Self, IidConfigError> {
        use x509_parser::public_key::PublicKey;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IidConfigError::BadCertificate(format!("not a certificate ({e})")))?;
        let spki = cert.public_key();
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => {
                let m = rsa.modulus;
                let zeros = m.iter().take_while(|&&b| b == 0).count();
                (m.len() - zeros) * 8
            }
            _ => {
                return Err(IidConfigError::BadCertificate(
                    "its key is not RSA (the DSA certificate is for the pkcs7 form, which is not supported; use the RSA or RSA-2048 certificate)".to_string(),
                ));
            }
        };
        if let Some(r) = region
            && !segment_ok(r, b"-")
        {
            return Err(IidConfigError::BadCertificate(format!(
                "{r:?} is not a region name"
            )));
        }
        Ok(Self {
            region: region.map(str::to_string),
            rsa_public_key: spki.subject_public_key.data.to_vec(),
            bits,
        })
    }

    /// The region, if the certificate is for one.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// The RSA key size.
    pub fn bits(&self) -> usize {
        self.bits
    }
}

/// The aws_iid attestor's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsIidConfig {
    accounts: BTreeSet<String>,
    certificates: Vec<AwsCertificate>,
    /// Whether an instance may attest again (default: no).
    pub allow_reattestation: bool,
    /// Whether the `signature` form may be verified with a 1024-bit key (AWS's RSA
    /// certificates for that form). Default: no; prefer `rsa2048`.
    pub allow_rsa1024_signature: bool,
}

impl AwsIidConfig {
    /// A configuration admitting instances of `accounts`, verified with
    /// `certificates`.
    pub fn new(
        accounts: &[&str],
        certificates: Vec<AwsCertificate>,
    ) -> Result<Self, IidConfigError> {
        if accounts.is_empty() {
            return Err(IidConfigError::NoAccounts);
        }
        if let Some(bad) = accounts
            .iter()
            .find(|a| a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(IidConfigError::BadAccount((*bad).to_string()));
        }
        if certificates.is_empty() {
            return Err(IidConfigError::NoCertificates);
        }
        Ok(Self {
            accounts: accounts.iter().map(|a| (*a).to_string()).collect(),
            certificates,
            allow_reattestation: false,
            allow_rsa1024_signature: false,
        })
    }

    /// The certificates for `region`: its own, else the region-less ones.
    fn certificates_for(&self, region: &str) -> Vec<&AwsCertificate> {
        let own: Vec<&AwsCertificate> = self
            .certificates
            .iter()
            .filter(|c| c.region.as_deref() == Some(region))
            .collect();
        if !own.is_empty() {
            return own;
        }
        self.certificates
            .iter()
            .filter(|c| c.region.is_none())
            .collect()
    }
}

/// Which signature proved the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureForm {
    /// The PKCS #7 `rsa2048` form.
    Rsa2048,
    /// The base64 RSA-SHA256 `signature` form.
    Signature,
}

/// An instance the aws_iid attestor admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IidAttestation {
    /// `/lanyard/agent/aws_iid/<account>/<region>/<instance id>`.
    pub agent_id: SpiffeId,
    /// The selectors, sorted.
    pub selectors: Vec<Selector>,
    /// The verified document.
    pub document: InstanceIdentityDocument,
    /// Which signature verified.
    pub form: SignatureForm,
}

fn verify_rsa_sha256(
    certs: &[&AwsCertificate],
    allow_1024: bool,
    document: &[u8],
    signature: &[u8],
) -> Result<(), IidRefusal> {
    use aws_lc_rs::signature::{
        RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY, RSA_PKCS1_2048_8192_SHA256,
        UnparsedPublicKey,
    };
    let mut weak = None;
    for c in certs {
        let alg = if c.bits >= 2048 {
            &RSA_PKCS1_2048_8192_SHA256
        } else if allow_1024 && c.bits >= 1024 {
            &RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY
        } else {
            weak = Some(c.bits);
            continue;
        };
        if UnparsedPublicKey::new(alg, &c.rsa_public_key)
            .verify(document, signature)
            .is_ok()
        {
            return Ok(());
        }
    }
    match weak {
        Some(bits) if certs.iter().all(|c| c.bits < 2048) && !allow_1024 => {
            Err(IidRefusal::WeakKeyNotAllowed { bits })
        }
        _ => Err(IidRefusal::BadSignature),
    }
}

/// Verify an instance identity and say which node it proves (agent ID in `td`,
/// selectors). Afterwards the server applies [`check_first_attestation`].
pub fn verify(
    evidence: &IidEvidence,
    config: &AwsIidConfig,
    td: &TrustDomain,
) -> Result<IidAttestation, IidRefusal> {
    let (document, form) = if let Some(p7) = &evidence.rsa2048 {
        let sd = SignedData::parse(&decode_armored_base64(p7)?)?;
        let bytes = match (sd.content(), evidence.document.as_bytes()) {
            (Some(inside), beside) if !beside.is_empty() && inside != beside => {
                return Err(IidRefusal::DocumentMismatch);
            }
            (Some(inside), _) => inside.to_vec(),
            (None, beside) if !beside.is_empty() => beside.to_vec(),
            (None, _) => return Err(Pkcs7Error::NoContent.into()),
        };
        let unverified = InstanceIdentityDocument::parse(&bytes)?;
        let certs = config.certificates_for(&unverified.region);
        if certs.is_empty() {
            return Err(IidRefusal::NoCertificate {
                region: unverified.region,
            });
        }
        let mut result = Err(IidRefusal::Pkcs7(Pkcs7Error::BadSignature));
        for c in &certs {
            match sd.verify(&c.rsa_public_key, Some(&bytes)) {
                Ok(_) => {
                    result = Ok(());
                    break;
                }
                Err(e) => result = Err(e.into()),
            }
        }
        result?;
        (unverified, SignatureForm::Rsa2048)
    } else if let Some(sig) = &evidence.signature {
        let sig = decode_armored_base64(sig)?;
        let bytes = evidence.document.as_bytes();
        let unverified = InstanceIdentityDocument::parse(bytes)?;
        let certs = config.certificates_for(&unverified.region);
        if certs.is_empty() {
            return Err(IidRefusal::NoCertificate {
                region: unverified.region,
            });
        }
        verify_rsa_sha256(&certs, config.allow_rsa1024_signature, bytes, &sig)?;
        (unverified, SignatureForm::Signature)
    } else {
        return Err(IidRefusal::MissingSignature);
    };
    if !config.accounts.contains(&document.account_id) {
        return Err(IidRefusal::AccountNotAllowed {
            account: document.account_id.clone(),
            allowed: config.accounts.iter().cloned().collect(),
        });
    }
    let path = format!(
        "/lanyard/agent/{NAME}/{}/{}/{}",
        document.account_id, document.region, document.instance_id
    );
    let bad_id = |e: String| IidRefusal::BadDocument(format!("it makes no valid agent ID ({e})"));
    let agent_id = SpiffeId::from_parts(td, &path).map_err(|e| bad_id(e.to_string()))?;
    check_agent_id(&agent_id, td).map_err(|e| bad_id(e.to_string()))?;
    let mut selectors = Vec::new();
    let fields = [
        ("account", Some(&document.account_id)),
        ("region", Some(&document.region)),
        ("az", document.availability_zone.as_ref()),
        ("instance:id", Some(&document.instance_id)),
        ("image:id", document.image_id.as_ref()),
        ("instance:type", document.instance_type.as_ref()),
    ];
    for (name, value) in fields {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            let v = crate::claims::encode_selector_value(v);
            if let Ok(s) = Selector::from_parts(NAME, &format!("{name}:{v}")) {
                selectors.push(s);
            }
        }
    }
    selectors.sort();
    Ok(IidAttestation {
        agent_id,
        selectors,
        document,
        form,
    })
}

/// One attestation per instance: refuse `agent_id` if it `already_attested`
/// (the server knows from its store) unless `allow_reattestation`.
pub fn check_first_attestation(
    agent_id: &SpiffeId,
    already_attested: bool,
    allow_reattestation: bool,
) -> Result<(), IidRefusal> {
    if already_attested && !allow_reattestation {
        return Err(IidRefusal::AlreadyAttested {
            agent_id: agent_id.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
