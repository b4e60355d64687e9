//! SPIFFE IDs and trust domains, validated on construction.
//!
//! The rules are those of the SPIFFE-ID specification, applied as strictly as the
//! reference implementations (go-spiffe, rust-spiffe) do:
//!
//! * the scheme is exactly `spiffe://` (lowercase);
//! * the trust domain is 1..=255 bytes of `[a-z0-9._-]` (no uppercase, no port,
//!   no userinfo, no percent-encoding);
//! * the path is empty or a sequence of `/segment`, each segment non-empty, not `.`
//!   or `..`, of `[a-zA-Z0-9._-]`; no trailing `/`;
//! * no query and no fragment;
//! * the whole ID is at most 2048 bytes.
//!
//! Because anything non-canonical is rejected rather than rewritten, the textual form
//! of a valid ID is its normal form: `Display` prints exactly what `FromStr` accepted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The URI scheme prefix of every SPIFFE ID.
pub const SCHEME_PREFIX: &str = "spiffe://";
/// Maximum length of a trust domain name, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Maximum length of a whole SPIFFE ID, in bytes.
pub const MAX_ID_LEN: usize = 2048;

/// Every way a SPIFFE ID or trust domain can be malformed. Each message says what is
/// wrong and how to write it instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("the SPIFFE ID is empty; write it as spiffe://<trust-domain>/<path>")]
    Empty,
    #[error(
        "the SPIFFE ID has no scheme; it must start with \"spiffe://\", e.g. spiffe://example.org/service"
    )]
    MissingScheme,
    #[error(
        "the scheme {found:?} is not allowed; a SPIFFE ID must start with exactly \"spiffe://\" (lowercase)"
    )]
    WrongScheme { found: String },
    #[error(
        "the SPIFFE ID has no trust domain; write spiffe://<trust-domain>/..., e.g. spiffe://example.org/service"
    )]
    MissingTrustDomain,
    #[error(
        "the trust domain is {len} bytes long; at most {MAX_TRUST_DOMAIN_LEN} bytes are allowed"
    )]
    TrustDomainTooLong { len: usize },
    #[error(
        "the trust domain {trust_domain:?} contains uppercase letters; trust domains are lowercase, use {lower:?}"
    )]
    TrustDomainUppercase { trust_domain: String, lower: String },
    #[error(
        "the trust domain contains a port (\":\"); SPIFFE IDs carry no port, remove \":{port}\""
    )]
    TrustDomainPort { port: String },
    #[error(
        "the trust domain contains userinfo (\"@\"); SPIFFE IDs carry no user or password, remove everything up to and including \"@\""
    )]
    TrustDomainUserinfo,
    #[error(
        "the trust domain contains {ch:?} at byte {pos}; trust domains may only use lowercase letters, digits, \".\", \"-\" and \"_\""
    )]
    TrustDomainChar { ch: char, pos: usize },
    #[error(
        "the SPIFFE ID contains percent-encoding (\"%\") at byte {pos}; SPIFFE IDs must not be percent-encoded, write the plain characters [a-zA-Z0-9._-] instead"
    )]
    PercentEncoded { pos: usize },
    #[error(
        "the SPIFFE ID contains a query (\"?\") at byte {pos}; SPIFFE IDs have no query part, remove it"
    )]
    Query { pos: usize },
    #[error(
        "the SPIFFE ID contains a fragment (\"#\") at byte {pos}; SPIFFE IDs have no fragment part, remove it"
    )]
    Fragment { pos: usize },
    #[error("the path has an empty segment (\"//\") at byte {pos}; remove the doubled \"/\"")]
    EmptySegment { pos: usize },
    #[error(
        "the path has a {segment:?} segment at byte {pos}; dot segments are not allowed, write the resolved path instead"
    )]
    DotSegment { segment: String, pos: usize },
    #[error("the path ends with \"/\"; remove the trailing slash")]
    TrailingSlash,
    #[error(
        "the path contains {ch:?} at byte {pos}; path segments may only use letters, digits, \".\", \"-\" and \"_\""
    )]
    PathChar { ch: char, pos: usize },
    #[error("the path {path:?} must be empty or start with \"/\", e.g. \"/service\"")]
    PathNoLeadingSlash { path: String },
    #[error(
        "a trust domain name has no path, but {path:?} follows it; give only the name, e.g. example.org"
    )]
    TrustDomainHasPath { path: String },
    #[error(
        "the SPIFFE ID is {len} bytes long; at most {MAX_ID_LEN} bytes are allowed, shorten the path"
    )]
    TooLong { len: usize },
}

fn is_td_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

/// Character at byte offset `pos` of `s` (which may be a multi-byte char).
fn char_at(s: &str, pos: usize) -> char {
    s.get(pos..)
        .and_then(|rest| rest.chars().next())
        .unwrap_or('\u{FFFD}')
}

/// Validate a bare trust domain name; `offset` is where it starts in the full input,
/// so positions in errors point into what the user typed.
fn validate_trust_domain(td: &str, offset: usize) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::MissingTrustDomain);
    }
    // Structural problems first: they explain many bad characters at once.
    if td.contains('@') {
        return Err(IdError::TrustDomainUserinfo);
    }
    if let Some(i) = td.find(':') {
        return Err(IdError::TrustDomainPort {
            port: td[i + 1..].to_string(),
        });
    }
    if let Some(i) = td.find('%') {
        return Err(IdError::PercentEncoded { pos: offset + i });
    }
    if let Some(i) = td.find('?') {
        return Err(IdError::Query { pos: offset + i });
    }
    if let Some(i) = td.find('#') {
        return Err(IdError::Fragment { pos: offset + i });
    }
    if td.bytes().any(|b| b.is_ascii_uppercase()) {
        let lower = td.to_ascii_lowercase();
        if lower.bytes().all(is_td_char) {
            return Err(IdError::TrustDomainUppercase {
                trust_domain: td.to_string(),
                lower,
            });
        }
    }
    if let Some(i) = td.bytes().position(|b| !is_td_char(b)) {
        return Err(IdError::TrustDomainChar {
            ch: char_at(td, i),
            pos: offset + i,
        });
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong { len: td.len() });
    }
    Ok(())
}

/// Validate a path (empty, or `/seg/seg...`); `offset` is where it starts in the input.
fn validate_path(path: &str, offset: usize) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    if !path.starts_with('/') {
        return Err(IdError::PathNoLeadingSlash {
            path: path.to_string(),
        });
    }
    if let Some(i) = path.find('%') {
        return Err(IdError::PercentEncoded { pos: offset + i });
    }
    if let Some(i) = path.find('?') {
        return Err(IdError::Query { pos: offset + i });
    }
    if let Some(i) = path.find('#') {
        return Err(IdError::Fragment { pos: offset + i });
    }
    let bytes = path.as_bytes();
    let mut seg_start = 1; // byte after the leading '/'
    let mut i = 1;
    while i <= bytes.len() {
        let at_end = i == bytes.len();
        if at_end || bytes[i] == b'/' {
            let seg = &path[seg_start..i];
            if seg.is_empty() {
                if at_end {
                    return Err(IdError::TrailingSlash);
                }
                return Err(IdError::EmptySegment {
                    pos: offset + seg_start - 1,
                });
            }
            if seg == "." || seg == ".." {
                return Err(IdError::DotSegment {
                    segment: seg.to_string(),
                    pos: offset + seg_start,
                });
            }
            seg_start = i + 1;
        } else if !is_path_char(bytes[i]) {
            return Err(IdError::PathChar {
                ch: char_at(path, i),
                pos: offset + i,
            });
        }
        i += 1;
    }
    Ok(())
}

/// A SPIFFE trust domain name, e.g. `example.org`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain {
    name: String,
}

impl TrustDomain {
    /// Parse a trust domain from its bare name (`example.org`) or from its ID form
    /// (`spiffe://example.org`).
    pub fn new(s: &str) -> Result<Self, IdError> {
        if s.contains("://") || s.starts_with("spiffe:") {
            let id = SpiffeId::new(s)?;
            if !id.is_root() {
                return Err(IdError::TrustDomainHasPath {
                    path: id.path().to_string(),
                });
            }
            return Ok(id.trust_domain().clone());
        }
        if s.is_empty() {
            return Err(IdError::MissingTrustDomain);
        }
        if let Some(i) = s.find('/') {
            return Err(IdError::TrustDomainHasPath {
                path: s[i..].to_string(),
            });
        }
        validate_trust_domain(s, 0)?;
        Ok(Self {
            name: s.to_string(),
        })
    }

    /// The bare name, e.g. `example.org`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The trust domain's own SPIFFE ID, `spiffe://example.org`.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            trust_domain: self.clone(),
            path: String::new(),
        }
    }

    /// The ID string `spiffe://example.org` (the key used in Workload API bundle maps).
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.name)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A SPIFFE ID, `spiffe://<trust-domain><path>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Empty, or `/seg(/seg)*`.
    path: String,
}

impl SpiffeId {
    /// Parse and validate a SPIFFE ID.
    pub fn new(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        let Some(rest) = s.strip_prefix(SCHEME_PREFIX) else {
            return Err(scheme_error(s));
        };
        let offset = SCHEME_PREFIX.len();
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        // A query or fragment may sit right after the trust domain (no path).
        let (td, td_tail) = match td.find(['?', '#']) {
            Some(i) => (&td[..i], &td[i..]),
            None => (td, ""),
        };
        validate_trust_domain(td, offset)?;
        if let Some(c) = td_tail.chars().next() {
            let pos = offset + td.len();
            return Err(if c == '?' {
                IdError::Query { pos }
            } else {
                IdError::Fragment { pos }
            });
        }
        validate_path(path, offset + td.len())?;
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong { len: s.len() });
        }
        Ok(Self {
            trust_domain: TrustDomain {
                name: td.to_string(),
            },
            path: path.to_string(),
        })
    }

    /// Build an ID from a trust domain and a path (`""` or `/a/b`).
    pub fn from_parts(trust_domain: &TrustDomain, path: &str) -> Result<Self, IdError> {
        validate_path(path, SCHEME_PREFIX.len() + trust_domain.name.len())?;
        let len = SCHEME_PREFIX.len() + trust_domain.name.len() + path.len();
        if len > MAX_ID_LEN {
            return Err(IdError::TooLong { len });
        }
        Ok(Self {
            trust_domain: trust_domain.clone(),
            path: path.to_string(),
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, empty for a trust domain's own ID, else `/seg(/seg)*`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path segments, without slashes.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path.split('/').skip(1)
    }

    /// True for the trust domain's own ID (no path).
    pub fn is_root(&self) -> bool {
        self.path.is_empty()
    }

    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        &self.trust_domain == td
    }
}

fn scheme_error(s: &str) -> IdError {
    match s.find("://") {
        Some(i) => IdError::WrongScheme {
            found: s[..i].to_string(),
        },
        None => match s.find(':') {
            // `spiffe:example.org`, `SPIFFE:/x`
            Some(i) if !s[..i].contains('/') && !s[..i].is_empty() => IdError::WrongScheme {
                found: s[..i].to_string(),
            },
            _ => IdError::MissingScheme,
        },
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME_PREFIX}{}{}", self.trust_domain.name, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = IdError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn err(s: &str) -> IdError {
        match SpiffeId::new(s) {
            Ok(id) => panic!("{s:?} was accepted as {id}"),
            Err(e) => e,
        }
    }

    #[test]
    fn valid_ids() {
        let cases: &[(&str, &str, &str)] = &[
            ("spiffe://example.org", "example.org", ""),
            ("spiffe://example.org/a", "example.org", "/a"),
            ("spiffe://example.org/a/b/c", "example.org", "/a/b/c"),
            (
                "spiffe://example.org/ns/prod/sa/web",
                "example.org",
                "/ns/prod/sa/web",
            ),
            ("spiffe://td", "td", ""),
            ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
            ("spiffe://a-b_c.d/x", "a-b_c.d", "/x"),
            (
                "spiffe://example.org/UPPER/Case",
                "example.org",
                "/UPPER/Case",
            ),
            (
                "spiffe://example.org/a.b/c-d/e_f",
                "example.org",
                "/a.b/c-d/e_f",
            ),
            ("spiffe://example.org/...", "example.org", "/..."),
            ("spiffe://example.org/.a", "example.org", "/.a"),
            ("spiffe://example.org/a..", "example.org", "/a.."),
            ("spiffe://example.org/-", "example.org", "/-"),
            ("spiffe://example.org/_", "example.org", "/_"),
            ("spiffe://example.org/0/1/2", "example.org", "/0/1/2"),
            ("spiffe://-/x", "-", "/x"),
            ("spiffe://_._", "_._", ""),
        ];
        for (s, td, path) in cases {
            let id = SpiffeId::new(s).unwrap_or_else(|e| panic!("{s:?} rejected: {e}"));
            assert_eq!(id.trust_domain().name(), *td, "{s}");
            assert_eq!(id.path(), *path, "{s}");
            assert_eq!(id.to_string(), *s, "round trip of {s}");
            assert_eq!(id.is_root(), path.is_empty());
        }
    }

    #[test]
    fn length_limits() {
        let td255 = "a".repeat(255);
        let id = SpiffeId::new(&format!("spiffe://{td255}/x")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(id.trust_domain().name().len(), 255);
        assert_eq!(
            err(&format!("spiffe://{}/x", "a".repeat(256))),
            IdError::TrustDomainTooLong { len: 256 }
        );
        assert_eq!(
            TrustDomain::new(&"b".repeat(256)),
            Err(IdError::TrustDomainTooLong { len: 256 })
        );
        // Whole ID exactly 2048 bytes is fine, 2049 is not.
        let prefix = "spiffe://example.org/";
        let ok = format!("{prefix}{}", "p".repeat(MAX_ID_LEN - prefix.len()));
        assert_eq!(ok.len(), 2048);
        assert!(SpiffeId::new(&ok).is_ok());
        let long = format!("{ok}q");
        assert_eq!(err(&long), IdError::TooLong { len: 2049 });
        // Long path built of many segments.
        let many = format!("{prefix}{}", vec!["seg"; 600].join("/"));
        assert!(matches!(err(&many), IdError::TooLong { .. }));
    }

    #[test]
    fn invalid_ids() {
        use IdError::*;
        let cases: Vec<(&str, IdError)> = vec![
            ("", Empty),
            ("example.org/a", MissingScheme),
            ("//example.org/a", MissingScheme),
            ("/a/b", MissingScheme),
            (
                "SPIFFE://example.org/a",
                WrongScheme {
                    found: "SPIFFE".into(),
                },
            ),
            (
                "Spiffe://example.org",
                WrongScheme {
                    found: "Spiffe".into(),
                },
            ),
            (
                "https://example.org/a",
                WrongScheme {
                    found: "https".into(),
                },
            ),
            (
                "spiffe:/example.org/a",
                WrongScheme {
                    found: "spiffe".into(),
                },
            ),
            (
                "spiffe:example.org",
                WrongScheme {
                    found: "spiffe".into(),
                },
            ),
            (
                "spife://example.org",
                WrongScheme {
                    found: "spife".into(),
                },
            ),
            (
                " spiffe://example.org",
                WrongScheme {
                    found: " spiffe".into(),
                },
            ),
            ("spiffe://", MissingTrustDomain),
            ("spiffe:///a", MissingTrustDomain),
            ("spiffe:///", MissingTrustDomain),
            (
                "spiffe://Example.org/a",
                TrustDomainUppercase {
                    trust_domain: "Example.org".into(),
                    lower: "example.org".into(),
                },
            ),
            (
                "spiffe://EXAMPLE.ORG",
                TrustDomainUppercase {
                    trust_domain: "EXAMPLE.ORG".into(),
                    lower: "example.org".into(),
                },
            ),
            (
                "spiffe://example.org:8080/a",
                TrustDomainPort {
                    port: "8080".into(),
                },
            ),
            (
                "spiffe://example.org:/a",
                TrustDomainPort { port: "".into() },
            ),
            ("spiffe://user@example.org/a", TrustDomainUserinfo),
            ("spiffe://user:pass@example.org/a", TrustDomainUserinfo),
            ("spiffe://exa%41mple.org/a", PercentEncoded { pos: 12 }),
            ("spiffe://example.org/a%20b", PercentEncoded { pos: 22 }),
            ("spiffe://example.org/%2e%2e", PercentEncoded { pos: 21 }),
            ("spiffe://example.org?x=1", Query { pos: 20 }),
            ("spiffe://example.org/a?x=1", Query { pos: 22 }),
            ("spiffe://example.org#frag", Fragment { pos: 20 }),
            ("spiffe://example.org/a#frag", Fragment { pos: 22 }),
            ("spiffe://example.org/a/", TrailingSlash),
            ("spiffe://example.org/", TrailingSlash),
            ("spiffe://example.org//a", EmptySegment { pos: 20 }),
            ("spiffe://example.org/a//b", EmptySegment { pos: 22 }),
            (
                "spiffe://example.org/.",
                DotSegment {
                    segment: ".".into(),
                    pos: 21,
                },
            ),
            (
                "spiffe://example.org/..",
                DotSegment {
                    segment: "..".into(),
                    pos: 21,
                },
            ),
            (
                "spiffe://example.org/a/./b",
                DotSegment {
                    segment: ".".into(),
                    pos: 23,
                },
            ),
            (
                "spiffe://example.org/a/../b",
                DotSegment {
                    segment: "..".into(),
                    pos: 23,
                },
            ),
            (
                "spiffe://example.org/a/..",
                DotSegment {
                    segment: "..".into(),
                    pos: 23,
                },
            ),
            (
                "spiffe://exa mple.org",
                TrustDomainChar { ch: ' ', pos: 12 },
            ),
            (
                "spiffe://exa$mple.org",
                TrustDomainChar { ch: '$', pos: 12 },
            ),
            ("spiffe://exämple.org", TrustDomainChar { ch: 'ä', pos: 11 }),
            ("spiffe://[::1]/a", TrustDomainPort { port: ":1]".into() }),
            ("spiffe://example.org/a b", PathChar { ch: ' ', pos: 22 }),
            ("spiffe://example.org/a$b", PathChar { ch: '$', pos: 22 }),
            ("spiffe://example.org/ä", PathChar { ch: 'ä', pos: 21 }),
            ("spiffe://example.org/a:b", PathChar { ch: ':', pos: 22 }),
            ("spiffe://example.org/a@b", PathChar { ch: '@', pos: 22 }),
            ("spiffe://example.org/a+b", PathChar { ch: '+', pos: 22 }),
            ("spiffe://example.org/a\\b", PathChar { ch: '\\', pos: 22 }),
            ("spiffe://example.org/a\nb", PathChar { ch: '\n', pos: 22 }),
            ("spiffe://example.org/a\0", PathChar { ch: '\0', pos: 22 }),
            ("spiffe://example.org/a~b", PathChar { ch: '~', pos: 22 }),
        ];
        assert!(cases.len() >= 40);
        for (s, want) in cases {
            let got = err(s);
            assert_eq!(got, want, "for {s:?}");
            // Every message says what to do.
            let msg = got.to_string();
            assert!(msg.len() > 30, "terse message for {s:?}: {msg}");
        }
    }

    #[test]
    fn trust_domain_forms() {
        let td = TrustDomain::new("example.org").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(td.to_string(), "example.org");
        assert_eq!(td.id_string(), "spiffe://example.org");
        assert_eq!(td.id().to_string(), "spiffe://example.org");
        let td2 = TrustDomain::new("spiffe://example.org").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(td, td2);
        assert!(TrustDomain::new("").is_err());
        assert!(TrustDomain::new("Example.org").is_err());
        assert!(TrustDomain::new("example.org:443").is_err());
        assert!(TrustDomain::new("example.org/path").is_err());
        assert!(TrustDomain::new("https://example.org").is_err());
    }

    #[test]
    fn parts_and_membership() {
        let td = TrustDomain::new("example.org").unwrap_or_else(|e| panic!("{e}"));
        let id = SpiffeId::from_parts(&td, "/ns/web").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(id.to_string(), "spiffe://example.org/ns/web");
        assert_eq!(id.segments().collect::<Vec<_>>(), vec!["ns", "web"]);
        assert!(id.is_member_of(&td));
        assert!(SpiffeId::from_parts(&td, "ns").is_err());
        assert!(SpiffeId::from_parts(&td, "/a/").is_err());
        let other = TrustDomain::new("other.org").unwrap_or_else(|e| panic!("{e}"));
        assert!(!id.is_member_of(&other));
    }

    #[test]
    fn serde_round_trip_and_rejection() {
        let id = SpiffeId::new("spiffe://example.org/a").unwrap_or_else(|e| panic!("{e}"));
        let json = serde_json::to_string(&id).unwrap_or_default();
        assert_eq!(json, "\"spiffe://example.org/a\"");
        let back: SpiffeId = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://example.org/a/\"").is_err());
    }

    fn td_strategy() -> impl Strategy<Value = String> {
        "[a-z0-9._-]{1,40}"
    }
    fn seg_strategy() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._-]{1,20}".prop_filter("no dot segments", |s| s != "." && s != "..")
    }

    proptest! {
        #[test]
        fn round_trip(td in td_strategy(), segs in proptest::collection::vec(seg_strategy(), 0..8)) {
            let path: String = segs.iter().map(|s| format!("/{s}")).collect();
            let s = format!("spiffe://{td}{path}");
            let id = SpiffeId::new(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(id.to_string(), s.clone());
            let again: SpiffeId = id.to_string().parse().map_err(|e: IdError| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again, id);
        }

        #[test]
        fn never_panics_and_accepted_means_canonical(s in "\\PC{0,64}") {
            if let Ok(id) = SpiffeId::new(&s) {
                prop_assert_eq!(id.to_string(), s);
            }
        }

        #[test]
        fn mutated_ids_never_panic(td in td_strategy(), junk in "[ -~]{0,10}", at in 0usize..64) {
            let mut s = format!("spiffe://{td}/a/b");
            let at = at.min(s.len());
            s.insert_str(at, &junk);
            if let Ok(id) = SpiffeId::new(&s) {
                prop_assert_eq!(id.to_string(), s);
            }
        }
    }
}
