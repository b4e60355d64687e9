//! PKCS #7 / CMS `SignedData` (RFC 2315, RFC 5652), just what the AWS `rsa2048`
//! signature of an instance identity document needs: the encapsulated content,
//! and RSA PKCS #1 v1.5 signer infos over SHA-256/384/512, with or without signed
//! attributes. Certificates inside the message are ignored: the key is the one
//! configured for the region, never one the message brings along.

use aws_lc_rs::digest;
use aws_lc_rs::signature::{
    RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_2048_8192_SHA384, RSA_PKCS1_2048_8192_SHA512,
    RsaParameters, UnparsedPublicKey,
};

use super::ber::{self, BerError, Element, tag};

const OID_SIGNED_DATA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x02];
const OID_DATA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x01];
const OID_CONTENT_TYPE: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x03];
const OID_MESSAGE_DIGEST: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x04];
const OID_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];
const OID_SHA256_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B];
const OID_SHA384_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0C];
const OID_SHA512_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0D];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const OID_SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];

/// Largest PKCS #7 message accepted, in bytes.
pub const MAX_PKCS7_BYTES: usize = 64 * 1024;
/// Most signer infos read.
const MAX_SIGNERS: usize = 8;

/// Why a PKCS #7 signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Pkcs7Error {
    /// Not a PKCS #7 SignedData message.
    #[error("the rsa2048 signature is not a PKCS #7 SignedData message: {0}")]
    Malformed(String),
    /// A digest or signature algorithm other than RSA with SHA-2.
    #[error(
        "the rsa2048 signature uses an algorithm this verifier does not accept ({0}); only RSA PKCS #1 v1.5 with SHA-256/384/512 is accepted"
    )]
    Algorithm(String),
    /// Neither embedded nor given content.
    #[error("the rsa2048 signature carries no document and none was given beside it")]
    NoContent,
    /// Signed attributes do not bind the content.
    #[error("the rsa2048 signature's signed attributes do not match the document: {0}")]
    Attributes(String),
    /// No signer's signature verifies with the configured key.
    #[error(
        "the rsa2048 signature does not verify with the configured AWS RSA-2048 certificate: the document was altered, or was not signed by AWS for this region"
    )]
    BadSignature,
}

impl From<BerError> for Pkcs7Error {
    fn from(e: BerError) -> Self {
        Self::Malformed(e.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha256 => &digest::SHA256,
            Self::Sha384 => &digest::SHA384,
            Self::Sha512 => &digest::SHA512,
        }
    }
    fn rsa(self) -> &'static RsaParameters {
        match self {
            Self::Sha256 => &RSA_PKCS1_2048_8192_SHA256,
            Self::Sha384 => &RSA_PKCS1_2048_8192_SHA384,
            Self::Sha512 => &RSA_PKCS1_2048_8192_SHA512,
        }
    }
}

fn oid_hex(oid: &[u8]) -> String {
    format!("OID bytes {}", hex::encode(oid))
}

/// The digest named by a digestAlgorithm (some signers put `shaXWithRSAEncryption`
/// there instead of the plain hash; both are understood).
fn digest_alg(oid: &[u8]) -> Result<Hash, Pkcs7Error> {
    match oid {
        OID_SHA256 | OID_SHA256_RSA => Ok(Hash::Sha256),
        OID_SHA384 | OID_SHA384_RSA => Ok(Hash::Sha384),
        OID_SHA512 | OID_SHA512_RSA => Ok(Hash::Sha512),
        other => Err(Pkcs7Error::Algorithm(format!("digest {}", oid_hex(other)))),
    }
}

fn check_signature_alg(oid: &[u8], hash: Hash) -> Result<(), Pkcs7Error> {
    let ok = match oid {
        OID_RSA => true,
        OID_SHA256_RSA => hash == Hash::Sha256,
        OID_SHA384_RSA => hash == Hash::Sha384,
        OID_SHA512_RSA => hash == Hash::Sha512,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Pkcs7Error::Algorithm(format!("signature {}", oid_hex(oid))))
    }
}

/// The OID of an AlgorithmIdentifier SEQUENCE.
fn algorithm_oid<'a>(e: &Element<'a>) -> Result<&'a [u8], Pkcs7Error> {
    let kids = e
        .expect(tag::SEQUENCE, "an AlgorithmIdentifier")?
        .children()?;
    let oid = kids
        .first()
        .ok_or_else(|| Pkcs7Error::Malformed("an empty AlgorithmIdentifier".into()))?;
    Ok(oid.expect(tag::OID, "an algorithm OID")?.content)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SignerInfo {
    hash: Hash,
    /// DER of the signed attributes re-tagged as SET, when present.
    signed_attrs: Option<Vec<u8>>,
    message_digest: Option<Vec<u8>>,
    content_type_is_data: Option<bool>,
    signature: Vec<u8>,
}

/// A parsed SignedData message (signatures not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedData {
    content: Option<Vec<u8>>,
    signers: Vec<SignerInfo>,
}

fn parse_signer(e: &Element<'_>) -> Result<SignerInfo, Pkcs7Error> {
    let kids = e.expect(tag::SEQUENCE, "a SignerInfo")?.children()?;
    let mut it = kids.iter();
    fn next<'a>(
        it: &mut std::slice::Iter<'_, Element<'a>>,
        what: &str,
    ) -> Result<Element<'a>, Pkcs7Error> {
        it.next()
            .copied()
            .ok_or_else(|| Pkcs7Error::Malformed(format!("the SignerInfo has no {what}")))
    }
    next(&mut it, "version")?.expect(tag::INTEGER, "the SignerInfo version")?;
    let _sid = next(&mut it, "signer identifier")?;
    let hash = digest_alg(algorithm_oid(&next(&mut it, "digest algorithm")?)?)?;
    let mut el = next(&mut it, "signature algorithm")?;
    let mut signed_attrs = None;
    let mut message_digest = None;
    let mut content_type_is_data = None;
    if el.tag == tag::CONTEXT_0 {
        if el.indefinite {
            return Err(Pkcs7Error::Malformed(
                "signed attributes must be DER (definite length)".into(),
            ));
        }
        let mut der = el.raw.to_vec();
        der[0] = tag::SET;
        signed_attrs = Some(der);
        for attr in el.children()? {
            let parts = attr.expect(tag::SEQUENCE, "an Attribute")?.children()?;
            let (Some(oid), Some(values)) = (parts.first(), parts.get(1)) else {
                return Err(Pkcs7Error::Malformed("an incomplete Attribute".into()));
            };
            let oid = oid.expect(tag::OID, "an attribute type")?.content;
            let values = values.expect(tag::SET, "attribute values")?.children()?;
            let single = || {
                if values.len() == 1 {
                    Ok(values[0])
                } else {
                    Err(Pkcs7Error::Attributes(
                        "an attribute that must have one value has several".into(),
                    ))
                }
            };
            if oid == OID_MESSAGE_DIGEST {
                if message_digest.is_some() {
                    return Err(Pkcs7Error::Attributes(
                        "two messageDigest attributes".into(),
                    ));
                }
                message_digest = Some(single()?.octets()?);
            } else if oid == OID_CONTENT_TYPE {
                let v = single()?.expect(tag::OID, "a content type")?;
                content_type_is_data = Some(v.content == OID_DATA);
            }
        }
        el = next(&mut it, "signature algorithm")?;
    }
    check_signature_alg(algorithm_oid(&el)?, hash)?;
    let signature = next(&mut it, "signature")?.octets()?;
    Ok(SignerInfo {
        hash,
        signed_attrs,
        message_digest,
        content_type_is_data,
        signature,
    })
}

impl SignedData {
    /// Parse a DER or BER `ContentInfo` holding `SignedData`.
    pub fn parse(der: &[u8]) -> Result<Self, Pkcs7Error> {
        if der.len() > MAX_PKCS7_BYTES {
            return Err(Pkcs7Error::Malformed(format!(
                "it is {} bytes; at most {MAX_PKCS7_BYTES} are accepted",
                der.len()
            )));
        }
        let (ci, _trailing) = ber::read(der)?;
        let ci = ci.expect(tag::SEQUENCE, "a ContentInfo")?.children()?;
        let (Some(ct), Some(wrapped)) = (ci.first(), ci.get(1)) else {
            return Err(Pkcs7Error::Malformed(
                "the ContentInfo is incomplete".into(),
            ));
        };
        if ct.expect(tag::OID, "a content type")?.content != OID_SIGNED_DATA {
            return Err(Pkcs7Error::Malformed(
                "the content type is not signedData".into(),
            ));
        }
        let inner = wrapped.expect(tag::CONTEXT_0, "[0] content")?.children()?;
        let sd = inner
            .first()
            .ok_or_else(|| Pkcs7Error::Malformed("no SignedData".into()))?
            .expect(tag::SEQUENCE, "SignedData")?
            .children()?;
        if sd.len() < 4 {
            return Err(Pkcs7Error::Malformed("the SignedData is incomplete".into()));
        }
        sd[0].expect(tag::INTEGER, "the SignedData version")?;
        sd[1].expect(tag::SET, "digestAlgorithms")?;
        let encap = sd[2]
            .expect(tag::SEQUENCE, "encapContentInfo")?
            .children()?;
        let ect = encap
            .first()
            .ok_or_else(|| Pkcs7Error::Malformed("an empty encapContentInfo".into()))?;
        if ect
            .expect(tag::OID, "the encapsulated content type")?
            .content
            != OID_DATA
        {
            return Err(Pkcs7Error::Malformed(
                "the signed content is not of type data".into(),
            ));
        }
        let content = match encap.get(1) {
            Some(c) => {
                let kids = c.expect(tag::CONTEXT_0, "[0] eContent")?.children()?;
                let os = kids
                    .first()
                    .ok_or_else(|| Pkcs7Error::Malformed("an empty eContent".into()))?;
                Some(os.octets()?)
            }
            None => None,
        };
        let signer_set = sd
            .last()
            .ok_or_else(|| Pkcs7Error::Malformed("no signerInfos".into()))?
            .expect(tag::SET, "signerInfos")?;
        let mut signers = Vec::new();
        for s in signer_set.children()?.iter().take(MAX_SIGNERS) {
            signers.push(parse_signer(s)?);
        }
        if signers.is_empty() {
            return Err(Pkcs7Error::Malformed("there is no signer".into()));
        }
        Ok(Self { content, signers })
    }

    /// The encapsulated content, if the message carries it.
    pub fn content(&self) -> Option<&[u8]> {
        self.content.as_deref()
    }

    /// Verify with the RSA public key `rsa_public_key` (PKCS #1 `RSAPublicKey` DER,
    /// as in a certificate's SubjectPublicKeyInfo) over the embedded content, or
    /// `detached` when the message has none; returns the content that verified.
    pub fn verify(
        &self,
        rsa_public_key: &[u8],
        detached: Option<&[u8]>,
    ) -> Result<Vec<u8>, Pkcs7Error> {
        let content = match (&self.content, detached) {
            (Some(c), _) => c.as_slice(),
            (None, Some(d)) => d,
            (None, None) => return Err(Pkcs7Error::NoContent),
        };
        let mut attr_error = None;
        for s in &self.signers {
            let signed: &[u8] = match &s.signed_attrs {
                Some(attrs) => {
                    let want = digest::digest(s.hash.digest(), content);
                    let problem = match (&s.message_digest, s.content_type_is_data) {
                        (None, _) => Some("there is no messageDigest attribute"),
                        (Some(d), _) if d.as_slice() != want.as_ref() => {
                            Some("the messageDigest is not the document's digest")
                        }
                        (_, Some(false)) => Some("the contentType attribute is not data"),
                        _ => None,
                    };
                    if let Some(p) = problem {
                        attr_error = Some(Pkcs7Error::Attributes(p.to_string()));
                        continue;
                    }
                    attrs
                }
                None => content,
            };
            if UnparsedPublicKey::new(s.hash.rsa(), rsa_public_key)
                .verify(signed, &s.signature)
                .is_ok()
            {
                return Ok(content.to_vec());
            }
        }
        Err(attr_error.unwrap_or(Pkcs7Error::BadSignature))
    }
}

/// DER builders for tests (here and in the parent module).
#[cfg(test)]
pub(crate) mod build {
    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else if n < 0x100 {
            out.extend([0x81, n as u8]);
        } else {
            out.extend([0x82, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(content);
        out
    }
    pub fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }
    pub fn alg(oid: &[u8]) -> Vec<u8> {
        seq(&[tlv(0x06, oid), vec![0x05, 0x00]])
    }
    pub const SHA256: &[u8] = super::OID_SHA256;
    pub const RSA: &[u8] = super::OID_RSA;
    pub const DATA: &[u8] = super::OID_DATA;
    pub const SIGNED_DATA: &[u8] = super::OID_SIGNED_DATA;
    pub const CONTENT_TYPE: &[u8] = super::OID_CONTENT_TYPE;
    pub const MESSAGE_DIGEST: &[u8] = super::OID_MESSAGE_DIGEST;

    /// SignedAttributes content (the attributes, without the outer tag).
    pub fn signed_attrs(content: &[u8]) -> Vec<u8> {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content);
        [
            seq(&[tlv(0x06, CONTENT_TYPE), tlv(0x31, &tlv(0x06, DATA))]),
            seq(&[tlv(0x06, MESSAGE_DIGEST), tlv(0x31, &tlv(0x04, d.as_ref()))]),
        ]
        .concat()
    }

    /// A ContentInfo{SignedData} with one SHA-256/RSA signer. `attrs` is the signed
    /// attributes' content (signed as a SET) or none (content signed directly);
    /// `embed` puts the content inside.
    pub fn signed_data(
        content: &[u8],
        embed: bool,
        attrs: Option<Vec<u8>>,
        sign: &dyn Fn(&[u8]) -> Vec<u8>,
    ) -> Vec<u8> {
        let (attr_field, sig) = match &attrs {
            Some(a) => (tlv(0xA0, a), sign(&tlv(0x31, a))),
            None => (Vec::new(), sign(content)),
        };
        let sid = seq(&[seq(&[]), tlv(0x02, &[1])]);
        let signer = seq(&[
            tlv(0x02, &[1]),
            sid,
            alg(SHA256),
            attr_field,
            alg(RSA),
            tlv(0x04, &sig),
        ]);
        let mut encap = vec![tlv(0x06, DATA)];
        if embed {
            encap.push(tlv(0xA0, &tlv(0x04, content)));
        }
        let sd = seq(&[
            tlv(0x02, &[1]),
            tlv(0x31, &alg(SHA256)),
            seq(&encap),
            tlv(0x31, &signer),
        ]);
        seq(&[tlv(0x06, SIGNED_DATA), tlv(0xA0, &sd)])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::build::*;
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};

    fn key() -> RsaKeyPair {
        RsaKeyPair::from_pkcs8(crate::testutil::rsa_pkcs8()).unwrap()
    }

    fn signer(k: &RsaKeyPair) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
        move |m: &[u8]| {
            let mut sig = vec![0; k.public_modulus_len()];
            k.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), m, &mut sig)
                .unwrap();
            sig
        }
    }

    const DOC: &[u8] = br#"{"accountId":"123456789012","region":"us-east-1"}"#;

    #[test]
    fn verifies_with_and_without_signed_attributes() {
        let k = key();
        let pk = k.public_key().as_ref().to_vec();
        for attrs in [None, Some(signed_attrs(DOC))] {
            let msg = signed_data(DOC, true, attrs.clone(), &signer(&k));
            let sd = SignedData::parse(&msg).unwrap();
            assert_eq!(sd.content(), Some(DOC));
            assert_eq!(sd.verify(&pk, None).unwrap(), DOC);
            // Detached.
            let msg = signed_data(DOC, false, attrs, &signer(&k));
            let sd = SignedData::parse(&msg).unwrap();
            assert_eq!(sd.content(), None);
            assert_eq!(sd.verify(&pk, Some(DOC)).unwrap(), DOC);
            assert_eq!(sd.verify(&pk, None).unwrap_err(), Pkcs7Error::NoContent);
            assert!(sd.verify(&pk, Some(b"{}")).is_err());
        }
    }

    #[test]
    fn refuses_altered_content_and_other_keys() {
        let k = key();
        let pk = k.public_key().as_ref().to_vec();
        let other = RsaKeyPair::from_pkcs8(crate::testutil::rsa_pkcs8_other()).unwrap();
        let other_pk = other.public_key().as_ref().to_vec();
        let msg = signed_data(DOC, true, Some(signed_attrs(DOC)), &signer(&k));
        let sd = SignedData::parse(&msg).unwrap();
        assert_eq!(
            sd.verify(&other_pk, None).unwrap_err(),
            Pkcs7Error::BadSignature
        );
        // Attributes that digest another document.
        let msg = signed_data(DOC, true, Some(signed_attrs(b"other")), &signer(&k));
        let e = SignedData::parse(&msg)
            .unwrap()
            .verify(&pk, None)
            .unwrap_err();
        assert!(matches!(e, Pkcs7Error::Attributes(_)), "{e:?}");
        // Content swapped after signing (no attributes).
        let mut msg = signed_data(DOC, true, None, &signer(&k));
        let pos = msg.windows(4).position(|w| w == b"1234").unwrap();
        msg[pos] = b'9';
        let e = SignedData::parse(&msg)
            .unwrap()
            .verify(&pk, None)
            .unwrap_err();
        assert_eq!(e, Pkcs7Error::BadSignature);
    }

    #[test]
    fn reads_ber_indefinite_lengths_and_chunked_content() {
        let k = key();
        let pk = k.public_key().as_ref().to_vec();
        let sig = signer(&k)(DOC);
        let signer_info = seq(&[
            tlv(0x02, &[1]),
            seq(&[seq(&[]), tlv(0x02, &[1])]),
            alg(SHA256),
            alg(RSA),
            tlv(0x04, &sig),
        ]);
        let (a, b) = DOC.split_at(10);
        let chunked = [vec![0x24, 0x80], tlv(0x04, a), tlv(0x04, b), vec![0, 0]].concat();
        let encap = [
            vec![0x30, 0x80],
            tlv(0x06, DATA),
            vec![0xA0, 0x80],
            chunked,
            vec![0, 0, 0, 0],
        ]
        .concat();
        let sd = [
            vec![0x30, 0x80],
            tlv(0x02, &[1]),
            tlv(0x31, &alg(SHA256)),
            encap,
            tlv(0x31, &signer_info),
            vec![0, 0],
        ]
        .concat();
        let ci = [
            vec![0x30, 0x80],
            tlv(0x06, SIGNED_DATA),
            vec![0xA0, 0x80],
            sd,
            vec![0, 0, 0, 0],
        ]
        .concat();
        let parsed = SignedData::parse(&ci).unwrap();
        assert_eq!(parsed.content(), Some(DOC));
        assert_eq!(parsed.verify(&pk, None).unwrap(), DOC);
    }

    #[test]
    fn refuses_other_structures_and_algorithms() {
        assert!(SignedData::parse(b"").is_err());
        assert!(SignedData::parse(&seq(&[tlv(0x06, DATA)])).is_err());
        assert!(SignedData::parse(&seq(&[tlv(0x06, DATA), tlv(0xA0, &seq(&[]))])).is_err());
        assert!(SignedData::parse(&vec![0u8; MAX_PKCS7_BYTES + 1]).is_err());
        // A SHA-1 digest algorithm.
        let k = key();
        let mut msg = signed_data(DOC, true, None, &signer(&k));
        let pos = msg
            .windows(SHA256.len())
            .rposition(|w| w == SHA256)
            .unwrap();
        msg[pos..pos + 5].copy_from_slice(&[0x2B, 0x0E, 0x03, 0x02, 0x1A]);
        msg[pos + 5..pos + SHA256.len()].fill(0);
        let e = SignedData::parse(&msg).unwrap_err();
        assert!(matches!(e, Pkcs7Error::Algorithm(_)), "{e:?}");
    }
}
