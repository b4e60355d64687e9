//! Agent ID templates: the path of the SPIFFE ID an attested node gets, with claims
//! substituted, e.g. `/lanyard/agent/github/{*repository}/{run_id}`.
//!
//! Rules, chosen so that a rendered path is always a valid SPIFFE ID path and two
//! different claim sets can never render the same ID by moving a `/` around:
//!
//! * The template starts with `/lanyard/agent/` (agent IDs live there) and its literal
//!   parts use only SPIFFE path characters: letters, digits, `.`, `-`, `_` and `/`.
//! * `{claim}` (a claim path, as in [`ClaimPath`]) is replaced by the claim's value,
//!   which must consist only of letters, digits, `.`, `-` and `_`. Numbers and
//!   booleans are used in their text form.
//! * `{*claim}` fills one or more whole segments: its value may contain `/` (e.g. a
//!   GitHub repository `acme/api`), every `/`-separated part being a valid segment.
//!   It must be a whole segment of the template, and a template has at most one, so
//!   the split into segments is never ambiguous.
//! * Values are never encoded or altered: a value outside these rules (empty, `.`,
//!   `..`, `@`, spaces, …) refuses the attestation with the claim and value named.

use std::fmt;

use lanyard_core::{AGENT_PATH_PREFIX, SpiffeId, TrustDomain, check_agent_id};
use serde_json::{Map, Value};

use crate::claims::{ClaimConfigError, ClaimPath};

/// Why a template is invalid (a configuration error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template does not start with the agent path.
    #[error(
        "the agent ID template {0:?} must start with {AGENT_PATH_PREFIX}, e.g. /lanyard/agent/github/{{*repository}}/{{run_id}}"
    )]
    NotAgentPath(String),
    /// Braces do not pair up.
    #[error("the agent ID template {0:?} has an unmatched {{ or }}")]
    Unbalanced(String),
    /// A placeholder names no valid claim.
    #[error("the agent ID template has an invalid placeholder {placeholder:?}: {source}")]
    BadPlaceholder {
        /// The placeholder text.
        placeholder: String,
        /// What is wrong with its claim path.
        source: ClaimConfigError,
    },
    /// A literal part has a character SPIFFE paths do not allow.
    #[error(
        "the agent ID template {template:?} has {ch:?} outside a placeholder; SPIFFE ID paths allow only letters, digits, '.', '-', '_' and '/'"
    )]
    BadLiteral {
        /// The template.
        template: String,
        /// The character.
        ch: char,
    },
    /// A literal segment is empty, `.` or `..`, or the template ends in `/`.
    #[error(
        "the agent ID template {0:?} has an empty, \".\" or \"..\" segment or a trailing '/'; SPIFFE ID paths do not allow them"
    )]
    BadSegment(String),
    /// `{*claim}` is not a whole segment, or there are several.
    #[error(
        "the agent ID template {0:?} misuses {{*claim}}: it must be a whole segment (between two '/' or at the end), and a template may have only one"
    )]
    BadMultiSegment(String),
}

/// Why a template could not be rendered for a token (the attestation is refused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The token lacks a claim the template uses.
    #[error(
        "the token has no {claim:?} claim (or it is not a string, number or boolean), which the agent ID template needs; use a template that names only claims this issuer sets"
    )]
    MissingClaim {
        /// The claim.
        claim: String,
    },
    /// A claim's value cannot be part of a SPIFFE ID path.
    #[error("the claim {claim:?} is {value:?}, which cannot be part of an agent ID: {reason}")]
    BadValue {
        /// The claim.
        claim: String,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The rendered ID is not a valid agent ID.
    #[error("the rendered agent ID {path:?} is not valid: {reason}")]
    BadId {
        /// The rendered path.
        path: String,
        /// Why.
        reason: String,
    },
}

impl RenderError {
    /// A stable short code for evidence events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingClaim { .. } => "missing_claim",
            Self::BadValue { .. } | Self::BadId { .. } => "bad_agent_id_claim",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Claim { path: ClaimPath, multi: bool },
}

/// A parsed agent ID template. See the module documentation for the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdTemplate {
    text: String,
    parts: Vec<Part>,
}

fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

fn segment_problem(seg: &str) -> Option<&'static str> {
    if seg.is_empty() {
        Some("it would make an empty path segment")
    } else if seg == "." || seg == ".." {
        Some("\".\" and \"..\" are not allowed as path segments")
    } else if !seg.chars().all(is_segment_char) {
        Some("SPIFFE ID path segments allow only letters, digits, '.', '-' and '_'")
    } else {
        None
    }
}

impl AgentIdTemplate {
    /// Parse and check a template.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        if !text.starts_with(AGENT_PATH_PREFIX) || text.len() == AGENT_PATH_PREFIX.len() {
            return Err(TemplateError::NotAgentPath(text.to_string()));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err(TemplateError::Unbalanced(text.to_string()));
                }
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Literal(rest[..i].to_string()));
                    }
                    let after = &rest[i + 1..];
                    let end = after
                        .find(['{', '}'])
                        .filter(|&j| after.as_bytes()[j] == b'}')
                        .ok_or_else(|| TemplateError::Unbalanced(text.to_string()))?;
                    let inner = &after[..end];
                    let (multi, name) = match inner.strip_prefix('*') {
                        Some(n) => (true, n),
                        None => (false, inner),
                    };
                    let path =
                        ClaimPath::new(name).map_err(|source| TemplateError::BadPlaceholder {
                            placeholder: format!("{{{inner}}}"),
                            source,
                        })?;
                    parts.push(Part::Claim { path, multi });
                    rest = &after[end + 1..];
                }
                None => {
                    parts.push(Part::Literal(rest.to_string()));
                    rest = "";
                }
            }
        }
        let t = Self {
            text: text.to_string(),
            parts,
        };
        t.check_shape()?;
        Ok(t)
    }

    fn check_shape(&self) -> Result<(), TemplateError> {
        let text = &self.text;
        // Literal characters.
        for p in &self.parts {
            if let Part::Literal(l) = p
                && let Some(ch) = l.chars().find(|&c| c != '/' && !is_segment_char(c))
            {
                return Err(TemplateError::BadLiteral {
                    template: text.clone(),
                    ch,
                });
            }
        }
        // Segments: render with a stand-in for every placeholder and check each one.
        let probe: String = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => l.as_str(),
                Part::Claim { .. } => "x",
            })
            .collect();
        if probe.ends_with('/') || probe[1..].split('/').any(|s| segment_problem(s).is_some()) {
            return Err(TemplateError::BadSegment(text.clone()));
        }
        // Multi-segment placeholders: at most one, and a whole segment.
        let multis: Vec<usize> = self
            .parts
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p, Part::Claim { multi: true, .. }))
            .map(|(i, _)| i)
            .collect();
        if multis.len() > 1 {
            return Err(TemplateError::BadMultiSegment(text.clone()));
        }
        if let Some(&i) = multis.first() {
            let before_ok = matches!(self.parts.get(i.wrapping_sub(1)), Some(Part::Literal(l)) if l.ends_with('/'));
            let after_ok = match self.parts.get(i + 1) {
                None => true,
                Some(Part::Literal(l)) => l.starts_with('/'),
                Some(Part::Claim { .. }) => false,
            };
            if i == 0 || !before_ok || !after_ok {
                return Err(TemplateError::BadMultiSegment(text.clone()));
            }
        }
        Ok(())
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The claims the template uses.
    pub fn claims(&self) -> Vec<&ClaimPath> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Claim { path, .. } => Some(path),
                Part::Literal(_) => None,
            })
            .collect()
    }

    /// The path with `claims` substituted, checked against the rules.
    pub fn render_path(&self, claims: &Map<String, Value>) -> Result<String, RenderError> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Claim { path, multi } => {
                    let value = path
                        .scalar(claims)
                        .ok_or_else(|| RenderError::MissingClaim {
                            claim: path.to_string(),
                        })?;
                    let bad = |reason: &str| RenderError::BadValue {
                        claim: path.to_string(),
                        value: value.clone(),
                        reason: reason.to_string(),
                    };
                    if value.is_empty() {
                        return Err(bad("it is empty"));
                    }
                    if *multi {
                        if let Some(problem) = value.split('/').find_map(segment_problem) {
                            return Err(bad(problem));
                        }
                    } else if value.contains('/') {
                        return Err(bad(&format!(
                            "it contains '/'; write {{*{path}}} in the template to let this claim span several path segments"
                        )));
                    } else if let Some(problem) = segment_problem(&value) {
                        return Err(bad(problem));
                    }
                    out.push_str(&value);
                }
            }
        }
        // A value glued to a literal could still form "." or ".." (e.g. "{a}." with a = ".").
        if let Some(problem) = out[1..].split('/').find_map(segment_problem) {
            return Err(RenderError::BadId {
                path: out,
                reason: problem.to_string(),
            });
        }
        Ok(out)
    }

    /// The agent ID in `td` for `claims`, checked to be a valid agent ID.
    pub fn render(
        &self,
        td: &TrustDomain,
        claims: &Map<String, Value>,
    ) -> Result<SpiffeId, RenderError> {
        let path = self.render_path(claims)?;
        let id = SpiffeId::from_parts(td, &path).map_err(|e| RenderError::BadId {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        check_agent_id(&id, td).map_err(|e| RenderError::BadId {
            path,
            reason: e.to_string(),
        })?;
        Ok(id)
    }
}

impl fmt::Display for AgentIdTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    #[test]
    fn renders_claims_into_the_agent_id() {
        let t = AgentIdTemplate::parse("/lanyard/agent/github/{*repository}/{run_id}").unwrap();
        let c = claims(json!({"repository": "acme/api", "run_id": "123456"}));
        assert_eq!(
            t.render(&td(), &c).unwrap().to_string(),
            "spiffe://example.org/lanyard/agent/github/acme/api/123456"
        );
        let t = AgentIdTemplate::parse(
            "/lanyard/agent/gcp_iit/{google.compute_engine.project_id}/{google.compute_engine.instance_id}",
        )
        .unwrap();
        let c = claims(
            json!({"google": {"compute_engine": {"project_id": "p-1", "instance_id": 4242}}}),
        );
        assert_eq!(
            t.render_path(&c).unwrap(),
            "/lanyard/agent/gcp_iit/p-1/4242"
        );
        assert_eq!(t.claims().len(), 2);
        // Placeholders inside a segment.
        let t = AgentIdTemplate::parse("/lanyard/agent/ci/run-{run_id}.{attempt}").unwrap();
        let c = claims(json!({"run_id": 7, "attempt": true}));
        assert_eq!(t.render_path(&c).unwrap(), "/lanyard/agent/ci/run-7.true");
        assert_eq!(t.as_str(), "/lanyard/agent/ci/run-{run_id}.{attempt}");
    }

    #[test]
    fn refuses_values_outside_the_spiffe_path_rules() {
        let t = AgentIdTemplate::parse("/lanyard/agent/github/{*repository}/{run_id}").unwrap();
        let cases = [
            (
                json!({"repository": "acme/api", "run_id": "1/2"}),
                "contains '/'",
            ),
            (
                json!({"repository": "acme/api", "run_id": ".."}),
                "not allowed",
            ),
            (json!({"repository": "acme/api", "run_id": ""}), "empty"),
            (
                json!({"repository": "acme/api", "run_id": "a b"}),
                "allow only",
            ),
            (
                json!({"repository": "acme/api", "run_id": "x@y"}),
                "allow only",
            ),
            (
                json!({"repository": "acme/../x", "run_id": "1"}),
                "not allowed",
            ),
            (json!({"repository": "acme//x", "run_id": "1"}), "empty"),
            (json!({"repository": "/acme", "run_id": "1"}), "empty"),
            (json!({"repository": "acme/", "run_id": "1"}), "empty"),
            (json!({"repository": "ac%2e", "run_id": "1"}), "allow only"),
        ];
        for (c, why) in cases {
            let e = t.render(&td(), &claims(c.clone())).unwrap_err();
            assert!(matches!(e, RenderError::BadValue { .. }), "{c}: {e:?}");
            assert!(e.to_string().contains(why), "{c}: {e}");
            assert_eq!(e.reason(), "bad_agent_id_claim");
        }
        let e = t
            .render(&td(), &claims(json!({"repository": "acme/api"})))
            .unwrap_err();
        assert_eq!(
            e,
            RenderError::MissingClaim {
                claim: "run_id".into()
            }
        );
        assert_eq!(e.reason(), "missing_claim");
        let e = t
            .render(
                &td(),
                &claims(json!({"repository": {"o": 1}, "run_id": "1"})),
            )
            .unwrap_err();
        assert!(matches!(e, RenderError::MissingClaim { .. }));
        // A single-segment placeholder with '/' says how to allow it.
        let t = AgentIdTemplate::parse("/lanyard/agent/github/{repository}/{run_id}").unwrap();
        let e = t
            .render(
                &td(),
                &claims(json!({"repository": "acme/api", "run_id": "1"})),
            )
            .unwrap_err();
        assert!(e.to_string().contains("{*repository}"), "{e}");
        // Glued values that make "." or "..".
        let t = AgentIdTemplate::parse("/lanyard/agent/x/{a}.").unwrap();
        assert!(t.render(&td(), &claims(json!({"a": "."}))).is_err());
        let t = AgentIdTemplate::parse("/lanyard/agent/x/{a}{b}").unwrap();
        assert!(
            t.render(&td(), &claims(json!({"a": ".", "b": "."})))
                .is_err()
        );
    }

    #[test]
    fn refuses_bad_templates() {
        let bad = [
            ("/spire/agent/x", "must start"),
            ("/lanyard/agent/", "must start"),
            ("lanyard/agent/x", "must start"),
            ("/lanyard/agent/x/{a", "unmatched"),
            ("/lanyard/agent/x/a}", "unmatched"),
            ("/lanyard/agent/x/{a{b}}", "unmatched"),
            ("/lanyard/agent/x/{}", "placeholder"),
            ("/lanyard/agent/x/{a..b}", "placeholder"),
            ("/lanyard/agent/x/{*}", "placeholder"),
            ("/lanyard/agent/x y/{a}", "outside a placeholder"),
            ("/lanyard/agent/x@/{a}", "outside a placeholder"),
            ("/lanyard/agent//{a}", "segment"),
            ("/lanyard/agent/../{a}", "segment"),
            ("/lanyard/agent/{a}/", "segment"),
            ("/lanyard/agent/{*a}/{*b}", "only one"),
            ("/lanyard/agent/x-{*a}", "whole segment"),
            ("/lanyard/agent/{*a}-x", "whole segment"),
            ("/lanyard/agent/{*a}{b}", "whole segment"),
        ];
        for (t, why) in bad {
            let e = AgentIdTemplate::parse(t).unwrap_err();
            assert!(e.to_string().contains(why), "{t}: {e}");
        }
        AgentIdTemplate::parse("/lanyard/agent/{*a}").unwrap();
        AgentIdTemplate::parse("/lanyard/agent/x/{*a}/y").unwrap();
        AgentIdTemplate::parse("/lanyard/agent/static").unwrap();
    }

    #[test]
    fn multi_segment_split_is_unambiguous() {
        // With one {*…} and single-segment others, different claim sets give
        // different IDs: moving a '/' between claims is impossible.
        let t = AgentIdTemplate::parse("/lanyard/agent/g/{*repo}/{run}").unwrap();
        let a = t.render_path(&claims(json!({"repo": "a/b", "run": "c"})));
        let b = t.render_path(&claims(json!({"repo": "a", "run": "b/c"})));
        assert!(a.is_ok());
        assert!(b.is_err());
    }
}
