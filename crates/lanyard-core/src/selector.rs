//! Selectors: `type:value` facts about a workload or node, e.g. `unix:uid:1000`.
//!
//! The type is a short lowercase name (`unix`, `join_token`, `x509pop`, ...). The
//! value is everything after the first `:` and may itself contain `:`. Values of the
//! `unix` type, which Lanyard's own workload attestor produces, are checked strictly
//! so that a registration entry can never carry a selector that could not match.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest selector accepted, in bytes (type, `:` and value).
pub const MAX_SELECTOR_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("the selector is empty; write it as type:value, e.g. unix:uid:1000")]
    Empty,
    #[error("the selector {0:?} has no \":\"; write it as type:value, e.g. unix:uid:1000")]
    MissingColon(String),
    #[error("the selector {0:?} has an empty type; write it as type:value, e.g. unix:uid:1000")]
    EmptyType(String),
    #[error(
        "the selector type {0:?} is invalid; types use lowercase letters, digits, \"_\" and \"-\" (e.g. unix, join_token)"
    )]
    BadType(String),
    #[error("the selector {0:?} has an empty value; write it as type:value, e.g. unix:uid:1000")]
    EmptyValue(String),
    #[error(
        "the selector value contains a control or whitespace character at byte {pos}; remove it"
    )]
    BadValueChar { pos: usize },
    #[error("the selector is {len} bytes long; at most {MAX_SELECTOR_LEN} bytes are allowed")]
    TooLong { len: usize },
    #[error(
        "unknown unix selector {0:?}; use one of unix:uid:<n>, unix:gid:<n>, unix:user:<name>, unix:group:<name>, unix:supplementary_gid:<n>, unix:supplementary_group:<name>, unix:path:</abs/path>, unix:sha256:<hex>"
    )]
    UnknownUnixKind(String),
    #[error("{kind} must be a decimal number from 0 to 4294967295, got {value:?}")]
    NotAnId { kind: &'static str, value: String },
    #[error("unix:path must be an absolute path (starting with \"/\"), got {0:?}")]
    RelativePath(String),
    #[error(
        "unix:sha256 must be 64 lowercase hexadecimal characters (the output of sha256sum), got {0:?}"
    )]
    BadSha256(String),
}

/// A validated selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    kind: String,
    value: String,
}

fn is_type_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-')
}

impl Selector {
    /// Parse `type:value`.
    pub fn new(s: &str) -> Result<Self, SelectorError> {
        if s.is_empty() {
            return Err(SelectorError::Empty);
        }
        if s.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError::TooLong { len: s.len() });
        }
        let Some((kind, value)) = s.split_once(':') else {
            return Err(SelectorError::MissingColon(s.to_string()));
        };
        Self::from_parts(kind, value)
    }

    /// Build from a type and a value.
    pub fn from_parts(kind: &str, value: &str) -> Result<Self, SelectorError> {
        let whole = || format!("{kind}:{value}");
        if kind.is_empty() {
            return Err(SelectorError::EmptyType(whole()));
        }
        if !kind.bytes().all(is_type_char) {
            return Err(SelectorError::BadType(kind.to_string()));
        }
        if value.is_empty() {
            return Err(SelectorError::EmptyValue(whole()));
        }
        let len = kind.len() + 1 + value.len();
        if len > MAX_SELECTOR_LEN {
            return Err(SelectorError::TooLong { len });
        }
        if let Some((pos, _)) = value
            .char_indices()
            .find(|(_, c)| c.is_control() || c.is_whitespace())
        {
            return Err(SelectorError::BadValueChar {
                pos: kind.len() + 1 + pos,
            });
        }
        if kind == "unix" {
            validate_unix(value)?;
        }
        Ok(Self {
            kind: kind.to_string(),
            value: value.to_string(),
        })
    }

    /// The selector type, e.g. `unix`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The value, e.g. `uid:1000`.
    pub fn value(&self) -> &str {
        &self.value
    }
}

fn validate_unix(value: &str) -> Result<(), SelectorError> {
    let (sub, v) = value
        .split_once(':')
        .ok_or_else(|| SelectorError::UnknownUnixKind(value.to_string()))?;
    match sub {
        "uid" | "gid" | "supplementary_gid" => {
            let kind = match sub {
                "uid" => "unix:uid",
                "gid" => "unix:gid",
                _ => "unix:supplementary_gid",
            };
            // Reject "+1", "01"-style ambiguity is harmless, but signs and spaces are not numbers.
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.parse::<u32>().is_err() {
                return Err(SelectorError::NotAnId {
                    kind,
                    value: v.to_string(),
                });
            }
        }
        "user" | "group" | "supplementary_group" => {
            if v.is_empty() {
                return Err(SelectorError::EmptyValue(format!("unix:{sub}:")));
            }
        }
        "path" => {
            if !v.starts_with('/') {
                return Err(SelectorError::RelativePath(v.to_string()));
            }
        }
        "sha256" => {
            if v.len() != 64
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(SelectorError::BadSha256(v.to_string()));
            }
        }
        other => return Err(SelectorError::UnknownUnixKind(other.to_string())),
    }
    Ok(())
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn valid() {
        let sha = format!("unix:sha256:{SHA}");
        for s in [
            "unix:uid:0",
            "unix:uid:1000",
            "unix:uid:4294967295",
            "unix:gid:100",
            "unix:supplementary_gid:27",
            "unix:supplementary_group:docker",
            "unix:user:www-data",
            "unix:group:staff",
            "unix:path:/usr/bin/python3",
            sha.as_str(),
            "join_token:abc",
            "x509pop:subject:cn:node-1",
            "k8s:ns:default",
            "docker:label:a=b",
        ] {
            let sel = Selector::new(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert_eq!(sel.to_string(), s);
        }
        let sel = Selector::new("unix:uid:1000").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sel.kind(), "unix");
        assert_eq!(sel.value(), "uid:1000");
    }

    #[test]
    fn invalid() {
        use SelectorError::*;
        type Case = (&'static str, fn(&SelectorError) -> bool);
        let cases: Vec<Case> = vec![
            ("", |e| matches!(e, Empty)),
            ("unix", |e| matches!(e, MissingColon(_))),
            (":uid:1", |e| matches!(e, EmptyType(_))),
            ("Unix:uid:1", |e| matches!(e, BadType(_))),
            ("un ix:uid:1", |e| matches!(e, BadType(_))),
            ("k8s:", |e| matches!(e, EmptyValue(_))),
            ("k8s:a b", |e| matches!(e, BadValueChar { pos: 5 })),
            ("k8s:a\nb", |e| matches!(e, BadValueChar { .. })),
            ("unix:uid:-1", |e| matches!(e, NotAnId { .. })),
            ("unix:uid:abc", |e| matches!(e, NotAnId { .. })),
            ("unix:uid:4294967296", |e| matches!(e, NotAnId { .. })),
            ("unix:uid:", |e| matches!(e, NotAnId { .. })),
            ("unix:gid:+5", |e| matches!(e, NotAnId { .. })),
            ("unix:user:", |e| matches!(e, EmptyValue(_))),
            ("unix:path:bin/sh", |e| matches!(e, RelativePath(_))),
            ("unix:sha256:abc", |e| matches!(e, BadSha256(_))),
            ("unix:pid:1", |e| matches!(e, UnknownUnixKind(_))),
            ("unix:uid", |e| matches!(e, UnknownUnixKind(_))),
        ];
        for (s, ok) in cases {
            let e = Selector::new(s)
                .err()
                .unwrap_or_else(|| panic!("{s:?} accepted"));
            assert!(ok(&e), "{s:?} gave {e:?}");
        }
        let upper = format!("unix:sha256:{}", SHA.to_uppercase());
        assert!(matches!(
            Selector::new(&upper),
            Err(SelectorError::BadSha256(_))
        ));
        let long = format!("k8s:{}", "a".repeat(MAX_SELECTOR_LEN));
        assert!(matches!(
            Selector::new(&long),
            Err(SelectorError::TooLong { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(kind in "[a-z0-9_-]{1,12}", value in "[!-~]{1,40}") {
            prop_assume!(kind != "unix");
            let s = format!("{kind}:{value}");
            let sel = Selector::new(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(sel.to_string(), s);
        }

        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            if let Ok(sel) = Selector::new(&s) {
                prop_assert_eq!(sel.to_string(), s);
            }
        }
    }
}
