//! [`TestImds`]: the EC2 instance metadata service on loopback (plain HTTP, as
//! IMDS is), serving a signed instance identity document.
//!
//! * `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds: 1..=21600`
//!   → an IMDSv2 session token (400 without a valid TTL, 403 with
//!   `X-Forwarded-For`, as AWS refuses proxied token requests);
//! * `GET /latest/dynamic/instance-identity/{document,signature,rsa2048,pkcs7}`
//!   (and a few `/latest/meta-data/…` values) with `X-aws-ec2-metadata-token`;
//!   401 without one (IMDSv2 required, the default) or with one that is invalid or
//!   expired.
//!
//! The document is AWS's JSON, pretty-printed as IMDS serves it. `signature` is
//! base64 RSA-SHA256 (PKCS #1 v1.5) over the document's bytes; `rsa2048` (and
//! `pkcs7`) is base64 of a PKCS #7 SignedData: the document embedded, one signer,
//! SHA-256, rsaEncryption, signed attributes contentType + messageDigest +
//! signingTime, and the signer's certificate. All are signed by one test RSA-2048
//! key whose self-signed certificate ([`TestImds::certificate_pem`]) stands in
//! for AWS's per-region public certificate. (AWS signs `pkcs7` with DSA; here it
//! is the same RSA SignedData as `rsa2048`.)

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::loopback::{Background, lock, random_bytes, unix_now};

/// The IMDSv2 token request header.
pub const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// The IMDSv2 token header of metadata requests.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

/// An instance identity document, with AWS's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceDocument {
    /// `accountId`.
    pub account_id: String,
    /// `architecture`.
    pub architecture: String,
    /// `availabilityZone`.
    pub availability_zone: String,
    /// `billingProducts` (`null` when `None`).
    pub billing_products: Option<Vec<String>>,
    /// `devpayProductCodes`.
    pub devpay_product_codes: Option<Vec<String>>,
    /// `marketplaceProductCodes`.
    pub marketplace_product_codes: Option<Vec<String>>,
    /// `imageId`.
    pub image_id: String,
    /// `instanceId`.
    pub instance_id: String,
    /// `instanceType`.
    pub instance_type: String,
    /// `kernelId`.
    pub kernel_id: Option<String>,
    /// `pendingTime`.
    pub pending_time: String,
    /// `privateIp`.
    pub private_ip: String,
    /// `ramdiskId`.
    pub ramdisk_id: Option<String>,
    /// `region`.
    pub region: String,
    /// `version`.
    pub version: String,
}

impl Default for InstanceDocument {
    fn default() -> Self {
        Self {
            account_id: "123456789012".into(),
            architecture: "x86_64".into(),
            availability_zone: "us-east-1a".into(),
            billing_products: None,
            devpay_product_codes: None,
            marketplace_product_codes: None,
            image_id: "ami-0abcdef1234567890".into(),
            instance_id: "i-0123456789abcdef0".into(),
            instance_type: "t3.micro".into(),
            kernel_id: None,
            pending_time: "2024-05-01T12:00:00Z".into(),
            private_ip: "172.31.16.25".into(),
            ramdisk_id: None,
            region: "us-east-1".into(),
            version: "2017-09-30".into(),
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn opt_str(s: &Option<String>) -> String {
    s.as_deref().map_or_else(|| "null".to_string(), json_str)
}

/// Jackson's pretty-printed array, as IMDS prints one: `[ "a", "b" ]`.
fn opt_list(l: &Option<Vec<String>>) -> String {
    match l {
        None => "null".to_string(),
        Some(v) if v.is_empty() => "[ ]".to_string(),
        Some(v) => format!(
            "[ {} ]",
            v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(", ")
        ),
    }
}

impl InstanceDocument {
    /// The document as IMDS serves it: `{`, one `  "key" : value` line per field
    /// in AWS's order, `}`, no final newline.
    pub fn to_json(&self) -> String {
        let fields = [
            ("accountId", json_str(&self.account_id)),
            ("architecture", json_str(&self.architecture)),
            ("availabilityZone", json_str(&self.availability_zone)),
            ("billingProducts", opt_list(&self.billing_products)),
            ("devpayProductCodes", opt_list(&self.devpay_product_codes)),
            (
                "marketplaceProductCodes",
                opt_list(&self.marketplace_product_codes),
            ),
            ("imageId", json_str(&self.image_id)),
            ("instanceId", json_str(&self.instance_id)),
            ("instanceType", json_str(&self.instance_type)),
            ("kernelId", opt_str(&self.kernel_id)),
            ("pendingTime", json_str(&self.pending_time)),
            ("privateIp", json_str(&self.private_ip)),
            ("ramdiskId", opt_str(&self.ramdisk_id)),
            ("region", json_str(&self.region)),
            ("version", json_str(&self.version)),
        ];
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("  \"{k}\" : {v}"))
            .collect();
        format!("{{\n{}\n}}", body.join(",\n"))
    }
}

/// How to start a [`TestImds`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImdsOptions {
    /// Also answer requests without a session token (IMDSv1); default: IMDSv2
    /// required (`HttpTokens=required`).
    pub allow_v1: bool,
}

/// The test signing key and its self-signed certificate.
struct SigningIdentity {
    key: RsaKeyPair,
    cert_der: Vec<u8>,
    cert_pem: String,
    issuer_name_der: Vec<u8>,
    serial_der: Vec<u8>,
}

impl SigningIdentity {
    fn generate() -> Self {
        use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_RSA_SHA256};
        let rc_key = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .expect("an RSA-2048 key");
        let key = RsaKeyPair::from_pkcs8(&rc_key.serialize_der()).expect("the RSA key, again");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("cert params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "US");
        dn.push(DnType::StateOrProvinceName, "Washington State");
        dn.push(DnType::LocalityName, "Seattle");
        dn.push(
            DnType::OrganizationName,
            "Amazon Web Services LLC (Lanyard testkit)",
        );
        params.distinguished_name = dn;
        let cert = params
            .self_signed(&rc_key)
            .expect("a self-signed certificate");
        let cert_der = cert.der().to_vec();
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&cert_der).expect("the certificate just made");
        let issuer_name_der = parsed.tbs_certificate.issuer.as_raw().to_vec();
        let serial_der = der::tlv(der::INTEGER, parsed.tbs_certificate.raw_serial());
        Self {
            key,
            cert_pem: cert.pem(),
            cert_der,
            issuer_name_der,
            serial_der,
        }
    }

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut out)
            .expect("an RSA-SHA256 signature");
        out
    }

    /// The PKCS #7 SignedData (ContentInfo, DER) of `content`.
    fn pkcs7(&self, content: &[u8], signing_time: i64) -> Vec<u8> {
        use der::*;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content);
        let attrs = [
            seq(&[oid(OID_CONTENT_TYPE), set_of(vec![oid(OID_DATA)])]),
            seq(&[oid(OID_SIGNING_TIME), set_of(vec![utc_time(signing_time)])]),
            seq(&[
                oid(OID_MESSAGE_DIGEST),
                set_of(vec![tlv(OCTET_STRING, digest.as_ref())]),
            ]),
        ];
        // Signed as a SET OF (DER: sorted), carried as [0] IMPLICIT.
        let attrs_set = set_of(attrs.to_vec());
        let signature = self.sign(&attrs_set);
        let signed_attrs = retag(&attrs_set, 0xA0);
        let signer_info = seq(&[
            integer(1),
            seq(&[self.issuer_name_der.clone(), self.serial_der.clone()]),
            alg(OID_SHA256),
            signed_attrs,
            alg(OID_RSA),
            tlv(OCTET_STRING, &signature),
        ]);
        let signed_data = seq(&[
            integer(1),
            set_of(vec![alg(OID_SHA256)]),
            seq(&[oid(OID_DATA), tlv(0xA0, &tlv(OCTET_STRING, content))]),
            tlv(0xA0, &self.cert_der),
            set_of(vec![signer_info]),
        ]);
        seq(&[oid(OID_SIGNED_DATA), tlv(0xA0, &signed_data)])
    }
}

/// A small DER encoder: just what a PKCS #7 SignedData needs.
mod der {
    pub const INTEGER: u8 = 0x02;
    pub const OCTET_STRING: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const OID: u8 = 0x06;
    pub const UTC_TIME: u8 = 0x17;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;

    pub const OID_SIGNED_DATA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x02];
    pub const OID_DATA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x01];
    pub const OID_CONTENT_TYPE: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x03];
    pub const OID_MESSAGE_DIGEST: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x04];
    pub const OID_SIGNING_TIME: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x05];
    pub const OID_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];
    pub const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];

    /// Tag, definite length, content.
    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .iter()
                .copied()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(content);
        out
    }

    pub fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(SEQUENCE, &parts.concat())
    }

    /// A SET OF, its elements sorted by their encodings (DER).
    pub fn set_of(mut elems: Vec<Vec<u8>>) -> Vec<u8> {
        elems.sort();
        tlv(SET, &elems.concat())
    }

    pub fn oid(content: &[u8]) -> Vec<u8> {
        tlv(OID, content)
    }

    /// A small non-negative INTEGER.
    pub fn integer(v: u8) -> Vec<u8> {
        if v & 0x80 == 0 {
            tlv(INTEGER, &[v])
        } else {
            tlv(INTEGER, &[0, v])
        }
    }

    /// An AlgorithmIdentifier with NULL parameters.
    pub fn alg(oid_content: &[u8]) -> Vec<u8> {
        seq(&[oid(oid_content), tlv(NULL, &[])])
    }

    /// The same element with another tag (for IMPLICIT tagging).
    pub fn retag(der: &[u8], tag: u8) -> Vec<u8> {
        let mut out = der.to_vec();
        out[0] = tag;
        out
    }

    /// UTCTime `YYMMDDHHMMSSZ` of unix seconds `t` (years 1950–2049).
    pub fn utc_time(t: i64) -> Vec<u8> {
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let s = format!(
            "{:02}{m:02}{d:02}{:02}{:02}{:02}Z",
            y.rem_euclid(100),
            secs / 3600,
            secs % 3600 / 60,
            secs % 60
        );
        tlv(UTC_TIME, s.as_bytes())
    }

    /// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
    /// algorithm).
    fn civil_from_days(z: i64) -> (i64, i64, i64) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn lengths_and_times_encode_as_der() {
            assert_eq!(tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
            let long = tlv(0x04, &[0u8; 300]);
            assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2C]);
            assert_eq!(integer(1), vec![0x02, 1, 1]);
            assert_eq!(integer(0x80), vec![0x02, 2, 0, 0x80]);
            assert_eq!(civil_from_days(0), (1970, 1, 1));
            assert_eq!(utc_time(1_714_564_800)[2..], *b"240501120000Z");
        }
    }
}

/// Wrap base64 at 64 columns, as IMDS prints signatures.
fn wrap64(bytes: &[u8]) -> String {
    let b64 = STANDARD.encode(bytes);
    b64.as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

struct Inner {
    allow_v1: bool,
    document: String,
    signature: String,
    rsa2048: String,
    tokens: BTreeMap<String, Instant>,
    counts: BTreeMap<String, usize>,
    tokens_issued: usize,
    meta: BTreeMap<&'static str, String>,
}

impl Inner {
    fn set_document(&mut self, id: &SigningIdentity, document: String, meta: &InstanceDocument) {
        self.signature = wrap64(&id.sign(document.as_bytes()));
        self.rsa2048 = wrap64(&id.pkcs7(document.as_bytes(), unix_now()));
        self.document = document;
        self.meta = BTreeMap::from([
            ("ami-id", meta.image_id.clone()),
            ("instance-id", meta.instance_id.clone()),
            ("instance-type", meta.instance_type.clone()),
            ("local-ipv4", meta.private_ip.clone()),
            (
                "placement/availability-zone",
                meta.availability_zone.clone(),
            ),
            ("placement/region", meta.region.clone()),
        ]);
    }
}

/// The EC2 instance metadata service on `http://127.0.0.1:PORT`, on its own
/// thread; stopped on drop.
pub struct TestImds {
    inner: Arc<Mutex<Inner>>,
    identity: Arc<SigningIdentity>,
    url: String,
    _service: Background,
}

impl std::fmt::Debug for TestImds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestImds")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl TestImds {
    /// IMDS with the default document, IMDSv2 required.
    pub fn start() -> Self {
        Self::start_with(ImdsOptions::default())
    }

    /// IMDS as `options` say.
    pub fn start_with(options: ImdsOptions) -> Self {
        let identity = Arc::new(SigningIdentity::generate());
        let mut inner = Inner {
            allow_v1: options.allow_v1,
            document: String::new(),
            signature: String::new(),
            rsa2048: String::new(),
            tokens: BTreeMap::new(),
            counts: BTreeMap::new(),
            tokens_issued: 0,
            meta: BTreeMap::new(),
        };
        let doc = InstanceDocument::default();
        inner.set_document(&identity, doc.to_json(), &doc);
        let inner = Arc::new(Mutex::new(inner));
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let service = Background::serve("imds", router, None);
        let url = format!("http://{}", service.addr());
        Self {
            inner,
            identity,
            url,
            _service: service,
        }
    }

    /// `http://127.0.0.1:PORT` (IMDS's `http://169.254.169.254`).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Serve (and sign) `doc`.
    pub fn set_document(&self, doc: &InstanceDocument) {
        lock(&self.inner).set_document(&self.identity, doc.to_json(), doc);
    }

    /// Serve (and sign) these exact bytes as the document (e.g. malformed
    /// ones); the metadata paths keep the last [`InstanceDocument`]'s values.
    pub fn set_raw_document(&self, document: &str) {
        let mut st = lock(&self.inner);
        let sig = wrap64(&self.identity.sign(document.as_bytes()));
        let p7 = wrap64(&self.identity.pkcs7(document.as_bytes(), unix_now()));
        st.document = document.to_string();
        st.signature = sig;
        st.rsa2048 = p7;
    }

    /// Allow (or stop allowing) IMDSv1 requests without a token.
    pub fn set_allow_v1(&self, allow: bool) {
        lock(&self.inner).allow_v1 = allow;
    }

    /// Invalidate every session token issued so far (as if their TTLs ran out).
    pub fn expire_tokens(&self) {
        lock(&self.inner).tokens.clear();
    }

    /// The document served, byte for byte.
    pub fn document(&self) -> String {
        lock(&self.inner).document.clone()
    }

    /// The `signature` served (base64, 64-column lines).
    pub fn signature(&self) -> String {
        lock(&self.inner).signature.clone()
    }

    /// The `rsa2048` (and `pkcs7`) served (base64, 64-column lines).
    pub fn rsa2048(&self) -> String {
        lock(&self.inner).rsa2048.clone()
    }

    /// The signing key's self-signed certificate (PEM): what a server's aws_iid
    /// configuration takes as the region's AWS certificate.
    pub fn certificate_pem(&self) -> String {
        self.identity.cert_pem.clone()
    }

    /// The certificate (DER).
    pub fn certificate_der(&self) -> Vec<u8> {
        self.identity.cert_der.clone()
    }

    /// Write [`Self::certificate_pem`] to `path`.
    pub fn write_certificate(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        std::fs::write(path, &self.identity.cert_pem)
            .unwrap_or_else(|e| panic!("write the IMDS certificate to {}: {e}", path.display()));
    }

    /// How many requests reached `path` (e.g. `/latest/api/token`), whatever the
    /// answer.
    pub fn request_count(&self, path: &str) -> usize {
        lock(&self.inner).counts.get(path).copied().unwrap_or(0)
    }

    /// How many session tokens were issued.
    pub fn tokens_issued(&self) -> usize {
        lock(&self.inner).tokens_issued
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body.into()).into_response()
}

async fn handle(
    State(shared): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path().to_string();
    let mut st = lock(&shared);
    *st.counts.entry(path.clone()).or_default() += 1;
    if path == "/latest/api/token" {
        if method != Method::PUT {
            return text(StatusCode::METHOD_NOT_ALLOWED, "");
        }
        if headers.contains_key("x-forwarded-for") {
            return text(StatusCode::FORBIDDEN, "");
        }
        let ttl = headers
            .get(TOKEN_TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|t| (1..=21_600).contains(t));
        let Some(ttl) = ttl else {
            return text(StatusCode::BAD_REQUEST, "");
        };
        let token = STANDARD.encode(random_bytes::<42>());
        st.tokens
            .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
        st.tokens_issued += 1;
        return (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/plain".to_string()),
                (
                    header::HeaderName::from_static(TOKEN_TTL_HEADER),
                    ttl.to_string(),
                ),
            ],
            token,
        )
            .into_response();
    }
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "");
    }
    match headers.get(TOKEN_HEADER).map(|v| v.to_str().unwrap_or("")) {
        Some(t) => {
            let valid = st.tokens.get(t).is_some_and(|exp| Instant::now() < *exp);
            if !valid {
                return text(StatusCode::UNAUTHORIZED, "");
            }
        }
        None if st.allow_v1 => {}
        None => return text(StatusCode::UNAUTHORIZED, ""),
    }
    let body = match path.as_str() {
        "/latest/dynamic/instance-identity/document" => st.document.clone(),
        "/latest/dynamic/instance-identity/signature" => st.signature.clone(),
        "/latest/dynamic/instance-identity/rsa2048" | "/latest/dynamic/instance-identity/pkcs7" => {
            st.rsa2048.clone()
        }
        "/latest/dynamic/instance-identity" | "/latest/dynamic/instance-identity/" => {
            "document\npkcs7\nrsa2048\nsignature".to_string()
        }
        p => match p
            .strip_prefix("/latest/meta-data/")
            .and_then(|k| st.meta.get(k))
        {
            Some(v) => v.clone(),
            None => return text(StatusCode::NOT_FOUND, "Not Found"),
        },
    };
    text(StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testclient::{Resp, request, send};
    use lanyard_core::TrustDomain;
    use lanyard_nodeattest::aws_iid::{
        self, AwsCertificate, AwsIidConfig, IidEvidence, InstanceIdentityDocument, SignatureForm,
    };

    const AGENT_ID: &str =
        "spiffe://example.org/lanyard/agent/aws_iid/123456789012/us-east-1/i-0123456789abcdef0";

    fn token(imds: &TestImds) -> String {
        let r = request(
            "PUT",
            &format!("{}/latest/api/token", imds.url()),
            &[(TOKEN_TTL_HEADER, "21600")],
            b"",
            None,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.headers[TOKEN_TTL_HEADER], "21600");
        r.text()
    }

    fn get(imds: &TestImds, path: &str, token: Option<&str>) -> Resp {
        let h: Vec<(&str, &str)> = token.map(|t| (TOKEN_HEADER, t)).into_iter().collect();
        request("GET", &format!("{}{path}", imds.url()), &h, b"", None)
    }

    fn config(imds: &TestImds) -> AwsIidConfig {
        let cert = AwsCertificate::from_pem(&imds.certificate_pem(), Some("us-east-1")).unwrap();
        AwsIidConfig::new(&["123456789012"], vec![cert]).unwrap()
    }

    #[test]
    fn imdsv2_session_tokens_are_required() {
        let imds = TestImds::start();
        assert!(imds.url().starts_with("http://127.0.0.1:"));
        let doc = "/latest/dynamic/instance-identity/document";
        assert_eq!(get(&imds, doc, None).status, 401);
        assert_eq!(get(&imds, doc, Some("made-up")).status, 401);
        let put = |h: &[(&str, &str)]| {
            request(
                "PUT",
                &format!("{}/latest/api/token", imds.url()),
                h,
                b"",
                None,
            )
            .status
        };
        assert_eq!(put(&[]), 400);
        assert_eq!(put(&[(TOKEN_TTL_HEADER, "0")]), 400);
        assert_eq!(put(&[(TOKEN_TTL_HEADER, "21601")]), 400);
        assert_eq!(
            put(&[(TOKEN_TTL_HEADER, "60"), ("x-forwarded-for", "10.0.0.1")]),
            403
        );
        let r = request(
            "GET",
            &format!("{}/latest/api/token", imds.url()),
            &[],
            b"",
            None,
        );
        assert_eq!(r.status, 405);
        let t = token(&imds);
        let r = get(&imds, doc, Some(&t));
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), imds.document());
        assert_eq!(
            get(&imds, "/latest/meta-data/instance-id", Some(&t)).text(),
            "i-0123456789abcdef0"
        );
        assert_eq!(
            get(&imds, "/latest/meta-data/placement/region", Some(&t)).text(),
            "us-east-1"
        );
        assert_eq!(
            get(&imds, "/latest/meta-data/nothing", Some(&t)).status,
            404
        );
        imds.expire_tokens();
        assert_eq!(get(&imds, doc, Some(&t)).status, 401);
        imds.set_allow_v1(true);
        assert_eq!(get(&imds, doc, None).status, 200);
        assert_eq!(
            get(&imds, doc, Some("made-up")).status,
            401,
            "a bad token is still refused"
        );
        assert_eq!(imds.tokens_issued(), 1);
        assert_eq!(imds.request_count("/latest/api/token"), 6);
        assert_eq!(imds.request_count(doc), 6);

        let v1 = TestImds::start_with(ImdsOptions { allow_v1: true });
        assert_eq!(get(&v1, doc, None).status, 200);
    }

    #[test]
    fn the_document_is_aws_json_as_imds_prints_it() {
        let imds = TestImds::start();
        let doc = imds.document();
        assert!(
            doc.starts_with(
                "{\n  \"accountId\" : \"123456789012\",\n  \"architecture\" : \"x86_64\",\n"
            ),
            "{doc}"
        );
        assert!(doc.contains("\n  \"billingProducts\" : null,\n"));
        assert!(doc.ends_with("\n  \"version\" : \"2017-09-30\"\n}"));
        let keys: Vec<String> = doc
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix('"'))
            .map(|l| l.split('"').next().unwrap().to_string())
            .collect();
        assert_eq!(
            keys,
            [
                "accountId",
                "architecture",
                "availabilityZone",
                "billingProducts",
                "devpayProductCodes",
                "marketplaceProductCodes",
                "imageId",
                "instanceId",
                "instanceType",
                "kernelId",
                "pendingTime",
                "privateIp",
                "ramdiskId",
                "region",
                "version",
            ]
        );
        let parsed = InstanceIdentityDocument::parse(doc.as_bytes()).unwrap();
        assert_eq!(parsed.instance_id, "i-0123456789abcdef0");
        assert_eq!(parsed.instance_type.as_deref(), Some("t3.micro"));
        // Same layout as a real document the verifier's tests keep.
        let real = "{\n  \"accountId\" : \"123456789012\",\n  \"architecture\" : \"x86_64\",";
        assert!(doc.starts_with(real));
        let with_codes = InstanceDocument {
            billing_products: Some(vec!["bp-6ba54002".into()]),
            marketplace_product_codes: Some(vec![]),
            ..InstanceDocument::default()
        };
        let j = with_codes.to_json();
        assert!(j.contains("\"billingProducts\" : [ \"bp-6ba54002\" ],"));
        assert!(j.contains("\"marketplaceProductCodes\" : [ ],"));
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["billingProducts"][0], "bp-6ba54002");
    }

    #[tokio::test]
    async fn both_signature_forms_verify_with_the_real_verifier() {
        let imds = TestImds::start();
        let td = TrustDomain::new("example.org").unwrap();
        let base = imds.url();
        let t = send(
            "PUT",
            &format!("{base}/latest/api/token"),
            &[(TOKEN_TTL_HEADER, "60")],
            b"",
            None,
        )
        .await
        .text();
        let fetch = |p: &'static str| {
            let url = format!("{base}/latest/dynamic/instance-identity/{p}");
            let t = t.clone();
            async move {
                let r = send("GET", &url, &[(TOKEN_HEADER, &t)], b"", None).await;
                assert_eq!(r.status, 200, "{p}");
                r.text()
            }
        };
        let document = fetch("document").await;
        let signature = fetch("signature").await;
        let rsa2048 = fetch("rsa2048").await;
        assert_eq!(fetch("pkcs7").await, rsa2048);
        assert!(rsa2048.lines().all(|l| l.len() <= 64));
        let cfg = config(&imds);

        let ev = IidEvidence {
            document: document.clone(),
            signature: Some(signature.clone()),
            rsa2048: None,
        };
        let a = aws_iid::verify(&ev, &cfg, &td).unwrap();
        assert_eq!(a.agent_id.to_string(), AGENT_ID);
        assert_eq!(a.form, SignatureForm::Signature);

        let ev = IidEvidence {
            document: document.clone(),
            signature: None,
            rsa2048: Some(rsa2048.clone()),
        };
        let a = aws_iid::verify(&ev, &cfg, &td).unwrap();
        assert_eq!(a.agent_id.to_string(), AGENT_ID);
        assert_eq!(a.form, SignatureForm::Rsa2048);
        let sel: Vec<String> = a.selectors.iter().map(ToString::to_string).collect();
        assert!(
            sel.contains(&"aws_iid:instance:type:t3.micro".to_string()),
            "{sel:?}"
        );
        // The PKCS #7 carries the document: it verifies without the copy beside it.
        let ev = IidEvidence {
            document: String::new(),
            signature: None,
            rsa2048: Some(rsa2048),
        };
        assert_eq!(
            aws_iid::verify(&ev, &cfg, &td)
                .unwrap()
                .agent_id
                .to_string(),
            AGENT_ID
        );

        // A document altered by one byte is refused.
        let tampered = document.replace("t3.micro", "t3.large");
        let ev = IidEvidence {
            document: tampered,
            signature: Some(signature),
            rsa2048: None,
        };
        assert!(aws_iid::verify(&ev, &cfg, &td).is_err());
        // Another IMDS's certificate does not verify this one's documents.
        let other = TestImds::start();
        let ev = IidEvidence {
            document: imds.document(),
            signature: None,
            rsa2048: Some(imds.rsa2048()),
        };
        assert!(aws_iid::verify(&ev, &config(&other), &td).is_err());
    }

    #[test]
    fn set_document_re_signs() {
        let imds = TestImds::start();
        let td = TrustDomain::new("example.org").unwrap();
        imds.set_document(&InstanceDocument {
            account_id: "210987654321".into(),
            region: "eu-west-1".into(),
            availability_zone: "eu-west-1b".into(),
            instance_id: "i-0fedcba9876543210".into(),
            ..InstanceDocument::default()
        });
        let cert = AwsCertificate::from_pem(&imds.certificate_pem(), None).unwrap();
        let cfg = AwsIidConfig::new(&["210987654321"], vec![cert]).unwrap();
        let ev = IidEvidence {
            document: imds.document(),
            signature: None,
            rsa2048: Some(imds.rsa2048()),
        };
        assert_eq!(
            aws_iid::verify(&ev, &cfg, &td)
                .unwrap()
                .agent_id
                .to_string(),
            "spiffe://example.org/lanyard/agent/aws_iid/210987654321/eu-west-1/i-0fedcba9876543210"
        );
        let t = token(&imds);
        assert_eq!(
            get(&imds, "/latest/meta-data/placement/region", Some(&t)).text(),
            "eu-west-1"
        );
        imds.set_raw_document("{not json");
        assert_eq!(
            get(
                &imds,
                "/latest/dynamic/instance-identity/document",
                Some(&t)
            )
            .text(),
            "{not json"
        );
        let dir =
            std::env::temp_dir().join(format!("lanyard-imds-{}", crate::loopback::random_hex()));
        std::fs::create_dir_all(&dir).unwrap();
        imds.write_certificate(dir.join("aws.pem"));
        assert_eq!(
            std::fs::read_to_string(dir.join("aws.pem")).unwrap(),
            imds.certificate_pem()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn openssl_verifies_the_rsa2048_signed_data() {
        let Ok(out) = std::process::Command::new("openssl")
            .arg("version")
            .output()
        else {
            eprintln!("openssl is not installed: skipping the cross-check of rsa2048");
            return;
        };
        assert!(out.status.success());
        let imds = TestImds::start();
        let dir =
            std::env::temp_dir().join(format!("lanyard-imds-{}", crate::loopback::random_hex()));
        std::fs::create_dir_all(&dir).unwrap();
        let der = STANDARD.decode(imds.rsa2048().replace('\n', "")).unwrap();
        std::fs::write(dir.join("p7.der"), der).unwrap();
        imds.write_certificate(dir.join("cert.pem"));
        let verify = |extra: &[&str]| {
            let mut cmd = std::process::Command::new("openssl");
            cmd.args(["cms", "-verify", "-inform", "DER", "-in"])
                .arg(dir.join("p7.der"))
                .args(["-binary", "-out"])
                .arg(dir.join("content"))
                .args(extra);
            cmd.output().unwrap()
        };
        // The signer's certificate is in the message; -noverify skips the chain.
        let out = verify(&["-noverify"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("content")).unwrap(),
            imds.document()
        );
        // And with the certificate as the trust anchor, the chain too.
        let ca = dir.join("cert.pem");
        let out = verify(&["-CAfile", ca.to_str().unwrap(), "-purpose", "any"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The signature form: openssl dgst over the document.
        std::fs::write(dir.join("doc"), imds.document()).unwrap();
        std::fs::write(
            dir.join("sig"),
            STANDARD.decode(imds.signature().replace('\n', "")).unwrap(),
        )
        .unwrap();
        let pubkey = std::process::Command::new("openssl")
            .args(["x509", "-pubkey", "-noout", "-in"])
            .arg(&ca)
            .output()
            .unwrap();
        std::fs::write(dir.join("pub.pem"), pubkey.stdout).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(dir.join("pub.pem"))
            .arg("-signature")
            .arg(dir.join("sig"))
            .arg(dir.join("doc"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
