//! Which SPIFFE IDs an agent may hold. An agent's X509-SVID authenticates it to the
//! server and lets it mint SVIDs for the entries parented to it, so an agent ID must
//! never be the server's (`/lanyard/server`), a workload's, or another trust domain's.
//! Every way an agent ID is chosen (join tokens, node attestors) goes through
//! [`check_agent_id`], at creation and again at attestation.

use crate::{SpiffeId, TrustDomain};

/// Agent IDs are `spiffe://<trust domain>/lanyard/agent/<at least one segment>`.
pub const AGENT_PATH_PREFIX: &str = "/lanyard/agent/";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentIdError {
    #[error(
        "{id} is not in trust domain {trust_domain}: an agent ID must be spiffe://{trust_domain}{AGENT_PATH_PREFIX}<name>"
    )]
    ForeignTrustDomain { id: String, trust_domain: String },
    #[error(
        "{id} is not an agent ID: agent IDs must be under {AGENT_PATH_PREFIX} (spiffe://{trust_domain}{AGENT_PATH_PREFIX}<name>); the rest of /lanyard/ is reserved for the server"
    )]
    NotUnderAgentPath { id: String, trust_domain: String },
}

/// Check that `id` may be an agent's ID in `td`.
pub fn check_agent_id(id: &SpiffeId, td: &TrustDomain) -> Result<(), AgentIdError> {
    if !id.is_member_of(td) {
        return Err(AgentIdError::ForeignTrustDomain {
            id: id.to_string(),
            trust_domain: td.to_string(),
        });
    }
    // SpiffeId paths have no empty, "." or ".." segments, so a prefix match cannot be
    // escaped; the prefix ends in '/', so at least one more segment follows.
    match id.path().strip_prefix(AGENT_PATH_PREFIX) {
        Some(rest) if !rest.is_empty() => Ok(()),
        _ => Err(AgentIdError::NotUnderAgentPath {
            id: id.to_string(),
            trust_domain: td.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn check(s: &str) -> Result<(), AgentIdError> {
        check_agent_id(
            &SpiffeId::new(s).unwrap(),
            &TrustDomain::new("example.org").unwrap(),
        )
    }

    #[test]
    fn agent_paths_are_accepted() {
        check("spiffe://example.org/lanyard/agent/join_token/ab12").unwrap();
        check("spiffe://example.org/lanyard/agent/team-a/node1").unwrap();
    }

    #[test]
    fn everything_else_is_refused_with_the_allowed_form() {
        for bad in [
            "spiffe://example.org/lanyard/server",
            "spiffe://example.org/lanyard/agent",
            "spiffe://example.org/lanyard/agentx/a",
            "spiffe://example.org/lanyard",
            "spiffe://example.org/web",
            "spiffe://example.org",
        ] {
            let e = check(bad).unwrap_err();
            assert!(matches!(e, AgentIdError::NotUnderAgentPath { .. }), "{bad}");
            assert!(
                e.to_string()
                    .contains("spiffe://example.org/lanyard/agent/<name>"),
                "{e}"
            );
        }
        assert!(matches!(
            check("spiffe://other.org/lanyard/agent/a").unwrap_err(),
            AgentIdError::ForeignTrustDomain { .. }
        ));
    }
}
