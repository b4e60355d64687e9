//! Agent-local runtime authorization: the OpenID AuthZEN evaluation API on the agent
//! (`authz_bind`), so that enforcement points next to the workloads get decisions
//! without a round trip to the server.
//!
//! The agent decides with what the server syncs to it ([`SyncedAuthz`]): the active
//! authz policy set (compiled here; one that does not compile is logged and the
//! previous one kept), the JWT issuer (the audience callers address their
//! JWT-SVIDs to), the public token key (task tokens), and the registration entries
//! this agent serves. Callers are authenticated against the agent's bundles and its
//! JWT deny-list. The HTTP binding and the decision core are the server's too
//! ([`lanyard_authz`]), so answers match.
//!
//! One difference from the server: a principal's facts (owner, environment,
//! selectors, `registered`) come from the entries this agent serves. A SPIFFE ID
//! it does not serve is `unregistered` here even when the server has an entry for
//! it; policies that need facts of workloads on other nodes are decided on the
//! server.
//!
//! Every decision is reported to the server's evidence log (`ReportDecisions`,
//! batched about every second, see [`crate::evidence`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};

use lanyard_authz::decision::{
    AuthnError, Callers, DecideError, DecisionOut, DecisionRecord, Question, Sources, TaskError,
    Unavailable, WorkloadIndex, decide, index_entry,
};
use lanyard_authz::http::Pdp;
use lanyard_authz::token::{TokenError, TokenVerifier, verify_task};
use lanyard_core::{Clock, SystemClock};
use lanyard_policy::{CompiledPolicies, PolicyKind, PreparedWorkload, TaskFacts};
use lanyard_proto::node as pb;

use crate::evidence::{Outbox, now_ms};
use crate::state::AgentState;
use crate::sync_update::SyncState;

/// Everything one decision is made with, as last synced.
#[derive(Debug)]
pub struct AuthzSnapshot {
    /// Version of the authz policy set (0: the shipped default).
    pub version: i64,
    policy: CompiledPolicies,
    issuer: String,
    token_key: Option<TokenVerifier>,
    workloads: WorkloadIndex,
    /// The JWT deny-list of the same update (task tokens are refused by `jti`).
    revoked: HashSet<String>,
}

impl AuthzSnapshot {
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

impl Sources for AuthzSnapshot {
    async fn workload(&self, id: &str) -> Result<PreparedWorkload, DecideError> {
        self.workloads.get(id)
    }

    async fn policy(&self) -> Result<CompiledPolicies, Unavailable> {
        Ok(self.policy.clone())
    }

    async fn verify_task(&self, token: &str) -> Result<TaskFacts, TaskError> {
        let key = self
            .token_key
            .as_ref()
            .ok_or(TaskError::Rejected(TokenError::NoKey))?;
        verify_task(
            key,
            &self.issuer,
            token,
            SystemClock.unix_seconds(),
            &|jti| self.revoked.contains(jti),
        )
        .map_err(TaskError::Rejected)
    }
}

/// The authz state pushed by the server.
#[derive(Debug, Default)]
pub struct SyncedAuthz {
    current: RwLock<Option<Arc<AuthzSnapshot>>>,
}

impl SyncedAuthz {
    /// What the next decision uses (`None` until the first sync).
    pub fn snapshot(&self) -> Option<Arc<AuthzSnapshot>> {
        self.current.read().ok().and_then(|g| g.clone())
    }

    /// Take what a sync update carries: the authz state with the entries this
    /// agent serves and the JWT deny-list of the same update. A server that sends
    /// no issuer (older than agent-local decisions) leaves the state as it is.
    pub fn apply(&self, u: &SyncState) {
        let Some(a) = &u.authz else {
            return;
        };
        let (entries, revoked) = (&u.entries, &u.revoked_jtis);
        let previous = self.snapshot();
        let same_policy = previous
            .as_ref()
            .filter(|p| p.version == a.policy_version && p.policy.text() == a.policy);
        let (version, policy) = match same_policy {
            Some(p) => (p.version, p.policy.clone()),
            None => match CompiledPolicies::compile(PolicyKind::Authz, &a.policy) {
                Ok(p) => {
                    tracing::info!(
                        version = a.policy_version,
                        "authz policy applied for local decisions"
                    );
                    (a.policy_version, p)
                }
                Err(e) => match &previous {
                    Some(p) => {
                        tracing::error!(version = a.policy_version, error = %e, kept = p.version, "the synced authz policy does not compile here; keeping the previous one");
                        (p.version, p.policy.clone())
                    }
                    None => {
                        tracing::error!(version = a.policy_version, error = %e, "the synced authz policy does not compile here; no local decisions until one does");
                        return;
                    }
                },
            },
        };
        let token_key = a.token_key.as_ref().and_then(|k| {
            serde_json::from_str(&k.jwk)
                .map_err(|e| TokenError::Key {
                    kid: k.kid.clone(),
                    reason: format!("not JSON: {e}"),
                })
                .and_then(|jwk| TokenVerifier::from_jwk(&k.kid, &jwk))
                .map_err(|e| {
                    tracing::warn!(error = %e, "the synced token key is unusable; task tokens are refused")
                })
                .ok()
        });
        let mut facts = HashMap::new();
        for e in entries {
            index_entry(
                &mut facts,
                &e.spiffe_id.to_string(),
                &e.owner,
                &e.environment,
                e.selectors.iter().map(ToString::to_string),
            );
        }
        // Each workload's Cedar entity is built here, once per entry update.
        let workloads = match WorkloadIndex::build(facts) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "the synced entries cannot be prepared for local decisions; none until the next update");
                if let Ok(mut g) = self.current.write() {
                    *g = None;
                }
                return;
            }
        };
        let snapshot = Arc::new(AuthzSnapshot {
            version,
            policy,
            issuer: a.issuer.clone(),
            token_key,
            workloads,
            revoked: revoked.clone(),
        });
        if let Ok(mut g) = self.current.write() {
            *g = Some(snapshot);
        }
    }
}

/// The agent's policy decision point behind its AuthZEN listener.
#[derive(Debug)]
pub struct LocalPdp {
    state: Arc<AgentState>,
    callers: Callers,
    decisions: Arc<Outbox<pb::AuthzDecision>>,
    base_url: OnceLock<String>,
}

impl LocalPdp {
    pub fn new(state: Arc<AgentState>, decisions: Arc<Outbox<pb::AuthzDecision>>) -> Self {
        Self {
            state,
            callers: Callers::default(),
            decisions,
            base_url: OnceLock::new(),
        }
    }

    /// Set once the listener is bound.
    pub fn set_base_url(&self, url: String) {
        let _ = self.base_url.set(url);
    }

    fn snapshot(&self) -> Result<Arc<AuthzSnapshot>, Unavailable> {
        self.state.authz.snapshot().ok_or_else(|| {
            Unavailable(
                "the agent has not received the authz policy from the server yet; retry shortly"
                    .to_string(),
            )
        })
    }
}

/// A decision as the agent reports it to the server.
pub fn report_of(caller: &str, rec: &DecisionRecord, policy_version: i64) -> pb::AuthzDecision {
    let task = rec.task.clone().unwrap_or_default();
    pb::AuthzDecision {
        decision_id: rec.out.decision_id.clone(),
        caller: caller.to_string(),
        subject: rec.subject.clone(),
        owner: rec.owner.clone(),
        action: rec.action.clone(),
        resource_type: rec.resource_type.clone(),
        resource_id: rec.resource_id.clone(),
        allowed: rec.out.allowed,
        policy_ids: rec.out.policy_ids.clone(),
        reason: rec.out.reason.clone(),
        trace_id: rec.trace_id.clone().unwrap_or_default(),
        task_txn: task.txn,
        task_agent: task.agent,
        acting_for: task.acting_for,
        policy_version,
        decided_at_ms: now_ms(),
    }
}

impl Pdp for LocalPdp {
    fn base_url(&self) -> String {
        self.base_url.get().cloned().unwrap_or_default()
    }

    fn ready(&self) -> Result<(), Unavailable> {
        self.snapshot().map(|_| ())
    }

    async fn authenticate(&self, authorization: Option<&str>) -> Result<String, AuthnError> {
        let issuer = self.snapshot()?.issuer.clone();
        let state = &self.state;
        self.callers.authenticate(
            authorization,
            &[issuer],
            &state.bundles,
            &SystemClock,
            &|jti| state.is_revoked(jti),
        )
    }

    async fn evaluate(&self, caller: &str, q: Question) -> Result<DecisionOut, DecideError> {
        let snapshot = self.snapshot()?;
        let rec = decide(&*snapshot, q).await?;
        self.decisions
            .push(report_of(caller, &rec, snapshot.version));
        Ok(rec.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(policy: &str, version: i64) -> SyncState {
        let td = lanyard_core::TrustDomain::new("example.org").unwrap();
        let u = pb::SyncUpdate {
            authz_policy: policy.to_string(),
            authz_policy_version: version,
            jwt_issuer: "https://example.org".to_string(),
            entries: vec![pb::RegistrationEntry {
                spiffe_id: "spiffe://example.org/web".into(),
                selectors: vec!["unix:uid:1".into()],
                owner: "team-a".into(),
                environment: "prod".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        SyncState::from_pb(&u, &td)
    }

    const READ: &str = "permit (principal, action == Action::\"read\", resource) when { principal.environment == \"prod\" };";

    fn question(subject: &str) -> Question {
        Question::new(subject, "read", "orders", "o-1")
    }

    #[tokio::test]
    async fn decides_with_synced_entries_and_keeps_a_good_policy() {
        let s = SyncedAuthz::default();
        assert!(s.snapshot().is_none());
        s.apply(&update(READ, 3));
        let snap = s.snapshot().unwrap();
        assert_eq!((snap.version, snap.issuer()), (3, "https://example.org"));
        let r = decide(&*snap, question("spiffe://example.org/web"))
            .await
            .unwrap();
        assert!(r.out.allowed, "{}", r.out.reason);
        assert_eq!(r.owner, "team-a");
        // Not served by this agent: unregistered here.
        let r = decide(&*snap, question("spiffe://example.org/db"))
            .await
            .unwrap();
        assert!(!r.out.allowed);
        // A policy that does not compile leaves the previous one in force.
        s.apply(&update(
            "permit (principal, action, resource) when { nope };",
            4,
        ));
        assert_eq!(s.snapshot().unwrap().version, 3);
        // No task token key: task tokens are refused.
        let mut q = question("spiffe://example.org/web");
        q.context.insert("task_token".into(), "x.y.z".into());
        let r = decide(&*s.snapshot().unwrap(), q).await.unwrap();
        assert!(!r.out.allowed && r.out.reason.contains("token key"));
    }

    #[test]
    fn reports_carry_the_caller_trace_and_version() {
        let rec = DecisionRecord {
            out: DecisionOut {
                allowed: true,
                policy_ids: vec!["p".into()],
                reason: "ok".into(),
                decision_id: "d1".into(),
            },
            subject: "spiffe://example.org/web".into(),
            trace_id: Some("t".into()),
            task: Some(TaskFacts {
                txn: "t".into(),
                agent: "spiffe://example.org/web".into(),
                ..TaskFacts::default()
            }),
            ..DecisionRecord::default()
        };
        let r = report_of("spiffe://example.org/pep", &rec, 7);
        assert_eq!(
            (
                r.caller.as_str(),
                r.decision_id.as_str(),
                r.trace_id.as_str()
            ),
            ("spiffe://example.org/pep", "d1", "t")
        );
        assert_eq!((r.task_txn.as_str(), r.policy_version), ("t", 7));
    }
}
