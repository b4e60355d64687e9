//! Claims of a verified token: how a configuration names one ([`ClaimPath`]), how a
//! value is required ([`ClaimRequirement`], exact or `*` glob), and how values become
//! selectors ([`ClaimSelector`]).
//!
//! Only scalar claims have a value here: strings as they are, numbers and booleans in
//! their JSON text (`42`, `true`). An array claim matches a requirement when one of its
//! scalar elements does, and yields one selector per scalar element. Objects and
//! `null` have no value.

use std::fmt;

use lanyard_core::Selector;
use serde_json::{Map, Value};

/// Most dot-separated parts a claim path may have.
pub const MAX_PATH_PARTS: usize = 16;

/// Why a claim path, pattern or selector mapping in the configuration is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimConfigError {
    /// The claim path is empty or has an empty part.
    #[error(
        "the claim path {0:?} is invalid: name a claim such as \"repository\", or a nested one with dots such as \"google.compute_engine.project_id\" (no empty parts)"
    )]
    BadPath(String),
    /// The claim path has too many parts.
    #[error("the claim path {0:?} has more than {MAX_PATH_PARTS} dot-separated parts")]
    PathTooDeep(String),
    /// A requirement lists no allowed value.
    #[error(
        "the requirement on claim {0:?} lists no allowed value; give at least one, e.g. \"acme\" or \"refs/heads/*\""
    )]
    NoPatterns(String),
    /// A selector name is unusable.
    #[error(
        "the selector name {0:?} for claim {1:?} is invalid: use a non-empty name without whitespace, e.g. \"repository\""
    )]
    BadSelectorName(String, String),
}

/// A claim named by its path: `repository`, or `google.compute_engine.project_id` for
/// a nested claim. Because claim names may themselves contain dots (Kubernetes puts
/// its claims under `kubernetes.io`), each level is looked up with the longest
/// dotted name that exists first, so `kubernetes.io.pod.name` finds
/// `{"kubernetes.io": {"pod": {"name": …}}}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimPath {
    text: String,
    parts: Vec<String>,
}

impl ClaimPath {
    /// Parse a dotted claim path.
    pub fn new(text: &str) -> Result<Self, ClaimConfigError> {
        let parts: Vec<String> = text.split('.').map(str::to_string).collect();
        if text.is_empty() || parts.iter().any(String::is_empty) {
            return Err(ClaimConfigError::BadPath(text.to_string()));
        }
        if parts.len() > MAX_PATH_PARTS {
            return Err(ClaimConfigError::PathTooDeep(text.to_string()));
        }
        Ok(Self {
            text: text.to_string(),
            parts,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The claim's JSON value, if present.
    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        lookup_in(claims, &self.parts)
    }

    /// The claim's values as strings (see the module documentation); empty when the
    /// claim is absent or not a scalar (or an array of scalars).
    pub fn values(&self, claims: &Map<String, Value>) -> Vec<String> {
        match self.lookup(claims) {
            Some(Value::Array(items)) => items.iter().filter_map(scalar_string).collect(),
            Some(v) => scalar_string(v).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// The claim's single scalar value as a string, if it has one.
    pub fn scalar(&self, claims: &Map<String, Value>) -> Option<String> {
        self.lookup(claims).and_then(scalar_string)
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn lookup_in<'a>(map: &'a Map<String, Value>, parts: &[String]) -> Option<&'a Value> {
    // Longest dotted key first, then shorter ones (backtracking), so that keys that
    // contain dots ("kubernetes.io") and plain nesting both work.
    for take in (1..=parts.len()).rev() {
        let key = parts[..take].join(".");
        let Some(v) = map.get(&key) else {
            continue;
        };
        if take == parts.len() {
            return Some(v);
        }
        if let Value::Object(inner) = v
            && let Some(found) = lookup_in(inner, &parts[take..])
        {
            return Some(found);
        }
    }
    None
}

/// A scalar JSON value as text: strings as they are, numbers and booleans in their
/// JSON form. Arrays, objects and `null` have none.
pub fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// One allowed value of a claim: exact, or a glob where `*` matches any run of
/// characters (including `/` and nothing at all); every other character matches
/// itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimPattern {
    /// The value must equal this text exactly (a `*` here is a literal star).
    Exact(String),
    /// The value must match this glob.
    Glob(String),
}

impl ClaimPattern {
    /// A pattern from configuration text: a glob if it contains `*`, else exact.
    pub fn parse(text: &str) -> Self {
        if text.contains('*') {
            Self::Glob(text.to_string())
        } else {
            Self::Exact(text.to_string())
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(want) => want == value,
            Self::Glob(glob) => glob_match(glob.as_bytes(), value.as_bytes()),
        }
    }
}

impl fmt::Display for ClaimPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(s) => write!(f, "{s:?}"),
            Self::Glob(s) => write!(f, "{s:?} (glob)"),
        }
    }
}

/// `*`-only glob matching in linear time: on a mismatch, retry from the last star
/// with one more character consumed by it.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// A claim the token must carry, with the values it may have (any one matching is
/// enough), e.g. `repository_owner = "acme"` or `ref = ["refs/heads/main",
/// "refs/tags/v*"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequirement {
    claim: ClaimPath,
    any_of: Vec<ClaimPattern>,
}

/// How a claim failed its requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequirementFailure {
    /// The claim is absent (or has no scalar value).
    Missing,
    /// The claim's values, none of which matched.
    Mismatch(Vec<String>),
}

impl ClaimRequirement {
    /// A requirement on `claim` with at least one allowed pattern.
    pub fn new(claim: ClaimPath, any_of: Vec<ClaimPattern>) -> Result<Self, ClaimConfigError> {
        if any_of.is_empty() {
            return Err(ClaimConfigError::NoPatterns(claim.to_string()));
        }
        Ok(Self { claim, any_of })
    }

    /// A requirement from configuration text: `claim` must match one of `patterns`
    /// (each a glob if it contains `*`).
    pub fn parse(claim: &str, patterns: &[&str]) -> Result<Self, ClaimConfigError> {
        Self::new(
            ClaimPath::new(claim)?,
            patterns.iter().map(|p| ClaimPattern::parse(p)).collect(),
        )
    }

    /// The claim this requirement is about.
    pub fn claim(&self) -> &ClaimPath {
        &self.claim
    }

    /// The allowed patterns.
    pub fn patterns(&self) -> &[ClaimPattern] {
        &self.any_of
    }

    /// The allowed patterns as one readable string, for messages.
    pub fn describe(&self) -> String {
        let all: Vec<String> = self.any_of.iter().map(ToString::to_string).collect();
        if all.len() == 1 {
            all.join("")
        } else {
            format!("one of {}", all.join(", "))
        }
    }

    /// Check the requirement against verified claims.
    pub fn check(&self, claims: &Map<String, Value>) -> Result<(), RequirementFailure> {
        let values = self.claim.values(claims);
        if values.is_empty() {
            return Err(RequirementFailure::Missing);
        }
        if values
            .iter()
            .any(|v| self.any_of.iter().any(|p| p.matches(v)))
        {
            Ok(())
        } else {
            Err(RequirementFailure::Mismatch(values))
        }
    }
}

/// A claim that becomes a selector: `kind:name:value`, e.g. claim `repository` named
/// `repository` under kind `github` gives `github:repository:acme/api`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimSelector {
    claim: ClaimPath,
    name: String,
}

impl ClaimSelector {
    /// Map `claim` to selectors named `name`.
    pub fn new(claim: &str, name: &str) -> Result<Self, ClaimConfigError> {
        let path = ClaimPath::new(claim)?;
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ClaimConfigError::BadSelectorName(
                name.to_string(),
                claim.to_string(),
            ));
        }
        Ok(Self {
            claim: path,
            name: name.to_string(),
        })
    }

    /// The claim read.
    pub fn claim(&self) -> &ClaimPath {
        &self.claim
    }

    /// The selector name (the part after the kind).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A claim value that could not become a selector, for the attestor's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedSelector {
    /// The claim.
    pub claim: String,
    /// Why no selector was made from it.
    pub reason: String,
}

/// Selectors made from claims, and the values that could not be made into one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimSelectors {
    /// The selectors, sorted and without duplicates.
    pub selectors: Vec<Selector>,
    /// Values left out (too long for a selector).
    pub skipped: Vec<SkippedSelector>,
}

/// Percent-encode what a selector value may not contain (whitespace and control
/// characters) and `%` itself, so any claim text maps to exactly one selector value:
/// a GitHub workflow named `CI build` gives `github:workflow:CI%20build`.
pub fn encode_selector_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '%' || c.is_whitespace() || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Build the selectors of `kind` that `mapping` makes from `claims`. Absent claims
/// make no selector (e.g. `environment` in a job without one).
pub fn selectors_from_claims(
    kind: &str,
    mapping: &[ClaimSelector],
    claims: &Map<String, Value>,
) -> ClaimSelectors {
    let mut out = ClaimSelectors::default();
    for m in mapping {
        for value in m.claim.values(claims) {
            if value.is_empty() {
                continue;
            }
            let v = format!("{}:{}", m.name, encode_selector_value(&value));
            match Selector::from_parts(kind, &v) {
                Ok(s) => out.selectors.push(s),
                Err(e) => out.skipped.push(SkippedSelector {
                    claim: m.claim.to_string(),
                    reason: e.to_string(),
                }),
            }
        }
    }
    out.selectors.sort();
    out.selectors.dedup();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn paths_find_nested_and_dotted_keys() {
        let c = obj(json!({
            "repository": "acme/api",
            "kubernetes.io": {"pod": {"name": "p1"}},
            "google": {"compute_engine": {"project_id": "proj", "instance_id": 123}},
            "a.b": {"c": 1}, "a": {"b": {"d": 2}}
        }));
        let v = |p: &str| ClaimPath::new(p).unwrap().scalar(&c);
        assert_eq!(v("repository").as_deref(), Some("acme/api"));
        assert_eq!(v("kubernetes.io.pod.name").as_deref(), Some("p1"));
        assert_eq!(
            v("google.compute_engine.project_id").as_deref(),
            Some("proj")
        );
        assert_eq!(
            v("google.compute_engine.instance_id").as_deref(),
            Some("123")
        );
        // Backtracking: "a.b" exists but has no "d"; "a" → "b" → "d" does.
        assert_eq!(v("a.b.c").as_deref(), Some("1"));
        assert_eq!(v("a.b.d").as_deref(), Some("2"));
        assert_eq!(v("missing"), None);
        assert_eq!(v("kubernetes.io.pod"), None, "objects have no value");
    }

    #[test]
    fn bad_paths_are_refused() {
        for p in ["", ".", "a.", ".a", "a..b"] {
            assert!(matches!(
                ClaimPath::new(p),
                Err(ClaimConfigError::BadPath(_))
            ));
        }
        let deep = vec!["a"; MAX_PATH_PARTS + 1].join(".");
        assert!(matches!(
            ClaimPath::new(&deep),
            Err(ClaimConfigError::PathTooDeep(_))
        ));
    }

    #[test]
    fn numbers_and_booleans_become_text() {
        let c = obj(json!({"n": 42, "f": 1.5, "t": true, "z": null, "arr": ["x", 7, {"o": 1}]}));
        let p = |s: &str| ClaimPath::new(s).unwrap();
        assert_eq!(p("n").scalar(&c).as_deref(), Some("42"));
        assert_eq!(p("f").scalar(&c).as_deref(), Some("1.5"));
        assert_eq!(p("t").scalar(&c).as_deref(), Some("true"));
        assert_eq!(p("z").scalar(&c), None);
        assert_eq!(p("arr").values(&c), ["x", "7"]);
    }

    #[test]
    fn globs() {
        let g = |p: &str, t: &str| ClaimPattern::parse(p).matches(t);
        assert!(g("refs/heads/*", "refs/heads/main"));
        assert!(g("refs/heads/*", "refs/heads/feature/x"));
        assert!(g("refs/heads/*", "refs/heads/"));
        assert!(!g("refs/heads/*", "refs/tags/v1"));
        assert!(g("*", ""));
        assert!(g("a*b*c", "axxbyyc"));
        assert!(!g("a*b*c", "axxbyy"));
        assert!(g("*-prod", "eu-prod"));
        assert!(!g("*-prod", "eu-prod-2"));
        assert!(g("**", "anything"));
        assert!(!g("acme", "acme2"), "exact patterns are not prefixes");
        assert!(ClaimPattern::Exact("a*".into()).matches("a*"));
        assert!(!ClaimPattern::Exact("a*".into()).matches("ab"));
    }

    #[test]
    fn requirements_match_any_pattern_and_any_array_element() {
        let c = obj(json!({"ref": "refs/heads/main", "groups": ["dev", "ops"], "n": 7}));
        let r = ClaimRequirement::parse("ref", &["refs/tags/*", "refs/heads/main"]).unwrap();
        assert_eq!(r.check(&c), Ok(()));
        let r = ClaimRequirement::parse("groups", &["ops"]).unwrap();
        assert_eq!(r.check(&c), Ok(()));
        let r = ClaimRequirement::parse("n", &["7"]).unwrap();
        assert_eq!(r.check(&c), Ok(()));
        let r = ClaimRequirement::parse("ref", &["refs/tags/*"]).unwrap();
        assert_eq!(
            r.check(&c),
            Err(RequirementFailure::Mismatch(vec!["refs/heads/main".into()]))
        );
        let r = ClaimRequirement::parse("environment", &["prod"]).unwrap();
        assert_eq!(r.check(&c), Err(RequirementFailure::Missing));
        assert!(matches!(
            ClaimRequirement::parse("ref", &[]),
            Err(ClaimConfigError::NoPatterns(_))
        ));
        assert_eq!(
            ClaimRequirement::parse("ref", &["a", "b*"])
                .unwrap()
                .describe(),
            "one of \"a\", \"b*\" (glob)"
        );
    }

    #[test]
    fn selectors_are_made_encoded_sorted_and_deduplicated() {
        let c = obj(json!({
            "repository": "acme/api", "workflow": "CI build 100%",
            "aud": ["x", "x", "y"], "empty": "", "ref_protected": true,
            "long": "z".repeat(2000)
        }));
        let m = [
            ClaimSelector::new("repository", "repository").unwrap(),
            ClaimSelector::new("workflow", "workflow").unwrap(),
            ClaimSelector::new("aud", "aud").unwrap(),
            ClaimSelector::new("empty", "empty").unwrap(),
            ClaimSelector::new("absent", "absent").unwrap(),
            ClaimSelector::new("ref_protected", "ref_protected").unwrap(),
            ClaimSelector::new("long", "long").unwrap(),
        ];
        let out = selectors_from_claims("github", &m, &c);
        let got: Vec<String> = out.selectors.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "github:aud:x",
                "github:aud:y",
                "github:ref_protected:true",
                "github:repository:acme/api",
                "github:workflow:CI%20build%20100%25",
            ]
        );
        assert_eq!(out.skipped.len(), 1);
        assert_eq!(out.skipped[0].claim, "long");
        assert!(ClaimSelector::new("a", "has space").is_err());
        assert!(ClaimSelector::new("a", "").is_err());
    }

    #[test]
    fn encoding_is_lossless_for_special_characters() {
        assert_eq!(encode_selector_value("a b\tc%"), "a%20b%09c%25");
        assert_eq!(encode_selector_value("plain/text:ok"), "plain/text:ok");
        assert_eq!(encode_selector_value("\u{2003}"), "%E2%80%83");
    }
}
