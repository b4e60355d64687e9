//! Registration policy in the server: the active set lives in the datastore (every
//! server of a cluster uses the same one), compiled once per version and evaluated
//! on every entry create, update and delete and every exception; decisions are
//! audited.

use lanyard_audit::evidence::{AdminCallRefused, EntryRefused, PolicyChanged};
use lanyard_audit::{EventKind, Outcome};
use lanyard_core::SpiffeId;
use lanyard_policy::{
    AdminOperation, Caller, CompiledPolicies, Decision, EntryFacts, ExceptionFacts, PolicyKind,
    RegistrationAction, RegistrationRequest,
};
use lanyard_proto::admin as pb;
use lanyard_store::{AnyStore, EntrySpec, Store};
use tonic::Status;

use crate::handles::PolicyCache;
use crate::state::Shared;

/// The admin API caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerFacts {
    Local { uid: u32 },
    Spiffe(SpiffeId),
}

impl CallerFacts {
    fn to_policy(&self) -> Caller {
        match self {
            Self::Local { uid } => Caller::Local { uid: *uid },
            Self::Spiffe(id) => Caller::Spiffe(id.to_string()),
        }
    }
}

fn kind_of(s: &str) -> Result<PolicyKind, Status> {
    s.parse()
        .map_err(|e: lanyard_policy::PolicyError| Status::invalid_argument(e.to_string()))
}

/// The active policy set of `kind` and its version (0: the shipped default).
pub async fn active(
    store: &AnyStore,
    cache: &PolicyCache,
    kind: PolicyKind,
) -> Result<(i64, CompiledPolicies), Status> {
    let stored = store
        .get_policy(kind.name())
        .await
        .map_err(crate::admin::store_status)?;
    let version = stored.as_ref().map_or(0, |p| p.version);
    if let Some(p) = cache.get(kind, version) {
        return Ok((version, p));
    }
    let compiled = match &stored {
        Some(p) => CompiledPolicies::compile(kind, &p.body),
        None => CompiledPolicies::default_for(kind),
    }
    .map_err(|e| {
        Status::internal(format!(
            "the stored {kind} policy (version {version}) no longer compiles: {e}; replace it with `lanyard policy set`"
        ))
    })?;
    cache.put(kind, version, compiled.clone());
    Ok((version, compiled))
}

/// `allowed_by` of a policy change made from the local socket while the stored
/// registration policy did not compile.
pub const LOCAL_RECOVERY: &str = "local-socket-recovery";

/// Whether a registration policy is stored and no longer compiles.
async fn stored_registration_is_broken(shared: &Shared) -> Result<bool, Status> {
    let stored = shared
        .store
        .get_policy(PolicyKind::Registration.name())
        .await
        .map_err(crate::admin::store_status)?;
    Ok(stored
        .is_some_and(|p| CompiledPolicies::compile(PolicyKind::Registration, &p.body).is_err()))
}

pub async fn set_policy(
    shared: &Shared,
    caller: &CallerFacts,
    actor: &str,
    kind: &str,
    body: &str,
) -> Result<pb::Policy, Status> {
    let kind = kind_of(kind)?;
    if body.len() > 1024 * 1024 {
        return Err(Status::invalid_argument("the policy is larger than 1 MiB"));
    }
    let compiled = CompiledPolicies::compile(kind, body).map_err(|e| {
        Status::invalid_argument(format!("{kind} policy refused, nothing changed: {e}"))
    })?;
    let ids = compiled.policy_ids();
    // Replacing a policy is itself decided by the active registration policy. When
    // the stored registration set no longer compiles (after an upgrade, or a row
    // edited by hand) nothing can decide, so only the local admin socket may replace
    // it, recorded as a recovery.
    let recovery = matches!(caller, CallerFacts::Local { .. })
        && stored_registration_is_broken(shared).await?;
    let allowed_by = if recovery {
        tracing::warn!(
            actor,
            "the stored registration policy does not compile; replaced from the local admin socket"
        );
        vec![LOCAL_RECOVERY.to_string()]
    } else {
        check_admin(
            shared,
            caller,
            actor,
            &AdminOperation::SetPolicy {
                kind: kind.name().to_string(),
                policy_ids: ids.clone(),
            },
            None,
        )
        .await?
    };
    let sha = crate::node::sha256_hex(body.as_bytes());
    let stored = shared
        .store
        .put_policy(
            kind.name(),
            body,
            actor,
            shared.clock.unix_seconds(),
            &|p| {
                let mut ev = shared
                    .audit
                    .event(EventKind::PolicyChanged, Outcome::Success);
                ev.actor = Some(actor.to_string());
                ev.policy_ids = ids.clone();
                ev.decision = Some("allow".to_string());
                ev.set_evidence(PolicyChanged::new(
                    allowed_by.clone(),
                    kind.name(),
                    p.version,
                    &sha,
                ));
                vec![ev]
            },
        )
        .await
        .map_err(crate::admin::store_status)?;
    tracing::info!(kind = %kind, version = stored.version, "policy changed");
    shared.policies.put(kind, stored.version, compiled);
    shared.changes.notify();
    Ok(pb::Policy {
        kind: stored.kind,
        body: stored.body,
        version: stored.version,
        updated_at: stored.updated_at,
        updated_by: stored.updated_by,
        policy_ids: ids,
    })
}

pub async fn get_policy(shared: &Shared, kind: &str) -> Result<pb::Policy, Status> {
    let kind = kind_of(kind)?;
    let stored = shared
        .store
        .get_policy(kind.name())
        .await
        .map_err(crate::admin::store_status)?;
    let (_, compiled) = active(&shared.store, &shared.policies, kind).await?;
    Ok(match stored {
        Some(p) => pb::Policy {
            kind: p.kind,
            body: p.body,
            version: p.version,
            updated_at: p.updated_at,
            updated_by: p.updated_by,
            policy_ids: compiled.policy_ids(),
        },
        None => pb::Policy {
            kind: kind.name().to_string(),
            body: kind.default_policy().to_string(),
            version: 0,
            updated_at: 0,
            updated_by: String::new(),
            policy_ids: compiled.policy_ids(),
        },
    })
}

/// What registration policy sees of an entry; TTLs are effective.
pub fn entry_facts(shared: &Shared, spec: &EntrySpec) -> EntryFacts {
    let eff = |v: u64, d: std::time::Duration| if v == 0 { d.as_secs() } else { v };
    EntryFacts {
        spiffe_id: spec.spiffe_id.to_string(),
        parent_id: spec.parent_id.to_string(),
        selectors: spec.selectors.iter().map(ToString::to_string).collect(),
        x509_ttl: eff(spec.x509_ttl, shared.config.x509_svid_ttl),
        jwt_ttl: eff(spec.jwt_ttl, shared.config.jwt_svid_ttl),
        owner: spec.owner.clone(),
        environment: spec.environment.clone().unwrap_or_default(),
        admin: spec.admin,
        downstream: spec.downstream,
        has_expiry: spec.expires_at.is_some(),
        parent_selectors: Vec::new(),
        parent_attestors: Vec::new(),
    }
}

/// The selectors every definition of a node alias shares (an agent matching any
/// one definition serves the alias's entries, so only these are guaranteed).
pub fn alias_guarantees(definitions: &[Vec<String>]) -> Vec<String> {
    definitions
        .split_first()
        .map(|(first, rest)| {
            first
                .iter()
                .filter(|s| rest.iter().all(|other| other.contains(s)))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The attestation methods behind `selectors` (their types), plus `node_type`.
pub fn attestors_of(selectors: &[String], node_type: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = node_type.map(str::to_string).into_iter().collect();
    for s in selectors {
        if let Some((kind, _)) = s.split_once(':')
            && !out.iter().any(|a| a == kind)
        {
            out.push(kind.to_string());
        }
    }
    out.sort();
    out
}

fn internal(e: lanyard_store::StoreError) -> Status {
    Status::internal(format!("datastore: {e}"))
}

/// The stored definitions (selectors) of node alias `alias`, leaving out entry
/// `except` (the one an update replaces).
async fn alias_definitions(
    shared: &Shared,
    alias: &SpiffeId,
    except: Option<&str>,
) -> Result<Vec<Vec<String>>, Status> {
    Ok(shared
        .store
        .list_entries_by_parent(&shared.server_id)
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|e| &e.spec.spiffe_id == alias && !e.spec.selectors.is_empty())
        .filter(|e| Some(e.id.as_str()) != except)
        .map(|e| e.spec.selectors.iter().map(ToString::to_string).collect())
        .collect())
}

/// What every agent that may serve an entry parented to `parent` has proved:
/// (selectors, attestation methods). An attested node: its selectors and type. A
/// node alias (entries of that ID parented to the server): the selectors all its
/// definitions share. Anything else: nothing.
pub async fn parent_facts(
    shared: &Shared,
    parent: &SpiffeId,
) -> Result<(Vec<String>, Vec<String>), Status> {
    if let Some(node) = shared.store.get_node(parent).await.map_err(internal)? {
        let selectors: Vec<String> = node.selectors.iter().map(ToString::to_string).collect();
        let attestors = attestors_of(&selectors, Some(&node.attestation_type));
        return Ok((selectors, attestors));
    }
    let selectors = alias_guarantees(&alias_definitions(shared, parent, None).await?);
    let attestors = attestors_of(&selectors, None);
    Ok((selectors, attestors))
}

/// A change to a node alias definition (an entry parented to the server with
/// selectors) changes what its children's servers are guaranteed to have proved:
/// each child entry must still be allowed with the alias as it would become,
/// or the change is refused naming the child. `replaces`: the entry id an update
/// rewrites. (Deleting a definition only narrows who serves the children.)
pub async fn check_alias_children(
    shared: &Shared,
    caller: &CallerFacts,
    actor: &str,
    action: RegistrationAction,
    spec: &EntrySpec,
    replaces: Option<&str>,
) -> Result<(), Status> {
    if spec.parent_id != shared.server_id || spec.selectors.is_empty() {
        return Ok(());
    }
    let children = shared
        .store
        .list_entries_by_parent(&spec.spiffe_id)
        .await
        .map_err(internal)?;
    if children.is_empty() {
        return Ok(());
    }
    let mut definitions = alias_definitions(shared, &spec.spiffe_id, replaces).await?;
    definitions.push(spec.selectors.iter().map(ToString::to_string).collect());
    let guaranteed = alias_guarantees(&definitions);
    let attestors = attestors_of(&guaranteed, None);
    let (_, p) = active(&shared.store, &shared.policies, PolicyKind::Registration).await?;
    for child in children {
        let mut facts = entry_facts(shared, &child.spec);
        facts.parent_selectors = guaranteed.clone();
        facts.parent_attestors = attestors.clone();
        let d = p
            .evaluate_registration(&RegistrationRequest {
                caller: caller.to_policy(),
                action: RegistrationAction::Update,
                entry: facts,
            })
            .map_err(|e| Status::internal(format!("registration policy: {e}")))?;
        if !d.allowed {
            let status = refuse(
                shared,
                EventKind::EntryRefused,
                actor,
                Some(spec.spiffe_id.to_string()),
                action.name(),
                &d,
            )
            .await;
            if status.code() != tonic::Code::PermissionDenied {
                return Err(status);
            }
            return Err(Status::permission_denied(format!(
                "this definition of node alias {} would let agents that have proved only [{}] serve its entry {} ({}), which registration policy refuses: {}",
                spec.spiffe_id,
                guaranteed.join(", "),
                child.spec.spiffe_id,
                child.id,
                status.message()
            )));
        }
    }
    Ok(())
}

/// Record a refusal and turn it into the caller's error.
async fn refuse(
    shared: &Shared,
    kind: EventKind,
    actor: &str,
    subject: Option<String>,
    what: &str,
    d: &Decision,
) -> Status {
    let explain = d.explain(PolicyKind::Registration);
    let mut ev = shared.audit.event(kind, Outcome::Denied);
    ev.actor = Some(actor.to_string());
    ev.subject = subject;
    ev.policy_ids = d.policy_ids.clone();
    ev.decision = Some("deny".to_string());
    ev.reason = Some(explain.clone());
    if kind == EventKind::EntryRefused {
        ev.set_evidence(EntryRefused::new(what));
    } else {
        ev.set_evidence(AdminCallRefused::action(what));
    }
    if let Err(e) = shared.audit.record(vec![ev]).await {
        return Status::internal(format!("evidence log: {e}"));
    }
    tracing::warn!(actor, what, policies = ?d.policy_ids, "refused by registration policy");
    Status::permission_denied(explain)
}

/// Decide an entry change; `Ok` carries the permitting policy ids for the audit
/// event of the change.
pub async fn check_entry(
    shared: &Shared,
    caller: &CallerFacts,
    actor: &str,
    action: RegistrationAction,
    spec: &EntrySpec,
) -> Result<Vec<String>, Status> {
    let (_, p) = active(&shared.store, &shared.policies, PolicyKind::Registration).await?;
    let parent = parent_facts(shared, &spec.parent_id).await?;
    decide_entry(shared, &p, caller, actor, action, spec, parent)
        .await
        .map_err(|r| r.status)
}

/// A refused entry change: the caller's error and the deciding policies.
#[derive(Debug)]
pub struct EntryRefusal {
    pub status: Status,
    pub policy_ids: Vec<String>,
}

/// Evaluate an entry change under `p` with the parent's proven facts; a refusal is
/// recorded as `entry_refused`.
async fn decide_entry(
    shared: &Shared,
    p: &CompiledPolicies,
    caller: &CallerFacts,
    actor: &str,
    action: RegistrationAction,
    spec: &EntrySpec,
    (parent_selectors, parent_attestors): (Vec<String>, Vec<String>),
) -> Result<Vec<String>, EntryRefusal> {
    let mut entry = entry_facts(shared, spec);
    entry.parent_selectors = parent_selectors;
    entry.parent_attestors = parent_attestors;
    let req = RegistrationRequest {
        caller: caller.to_policy(),
        action,
        entry,
    };
    let d = p.evaluate_registration(&req).map_err(|e| EntryRefusal {
        status: Status::internal(format!("registration policy: {e}")),
        policy_ids: Vec::new(),
    })?;
    if d.allowed {
        Ok(d.policy_ids)
    } else {
        let status = refuse(
            shared,
            EventKind::EntryRefused,
            actor,
            Some(spec.spiffe_id.to_string()),
            action.name(),
            &d,
        )
        .await;
        Err(EntryRefusal {
            status,
            policy_ids: d.policy_ids,
        })
    }
}

/// Registration decisions for a batch of entry changes: the same facts as one
/// change each, with the active policy read once and each parent's proven facts
/// read once (as they stand before the batch).
pub struct BatchDecider<'a> {
    shared: &'a Shared,
    policy: CompiledPolicies,
    parents: std::collections::HashMap<SpiffeId, (Vec<String>, Vec<String>)>,
}

impl<'a> BatchDecider<'a> {
    pub async fn new(shared: &'a Shared) -> Result<Self, Status> {
        let (_, policy) = active(&shared.store, &shared.policies, PolicyKind::Registration).await?;
        Ok(Self {
            shared,
            policy,
            parents: std::collections::HashMap::new(),
        })
    }

    /// Decide one entry change, as [`check_entry`] does.
    pub async fn check(
        &mut self,
        caller: &CallerFacts,
        actor: &str,
        action: RegistrationAction,
        spec: &EntrySpec,
    ) -> Result<Vec<String>, EntryRefusal> {
        let parent = match self.parents.get(&spec.parent_id) {
            Some(f) => f.clone(),
            None => {
                let f = parent_facts(self.shared, &spec.parent_id)
                    .await
                    .map_err(|status| EntryRefusal {
                        status,
                        policy_ids: Vec::new(),
                    })?;
                self.parents.insert(spec.parent_id.clone(), f.clone());
                f
            }
        };
        decide_entry(
            self.shared,
            &self.policy,
            caller,
            actor,
            action,
            spec,
            parent,
        )
        .await
    }
}

/// Decide a new exception (its maximum duration is policy).
pub async fn check_exception(
    shared: &Shared,
    caller: &CallerFacts,
    actor: &str,
    r: &pb::CreateExceptionRequest,
) -> Result<Vec<String>, Status> {
    let facts = ExceptionFacts {
        name: r.name.clone(),
        owner: r.owner.clone(),
        duration: r.duration_seconds,
        allowed: r.allow.clone(),
    };
    check_admin(
        shared,
        caller,
        actor,
        &AdminOperation::CreateException(facts),
        None,
    )
    .await
}

/// Decide an admin operation other than an entry change by the registration policy.
/// `Ok` carries the permitting policy ids for the change's audit event; a refusal is
/// recorded as `admin_call_refused` (`entry_refused` for exceptions, as before) with
/// the deciding policies.
pub async fn check_admin(
    shared: &Shared,
    caller: &CallerFacts,
    actor: &str,
    op: &AdminOperation,
    subject: Option<String>,
) -> Result<Vec<String>, Status> {
    let (_, p) = active(&shared.store, &shared.policies, PolicyKind::Registration).await?;
    let d = p
        .evaluate_admin(&caller.to_policy(), op)
        .map_err(|e| Status::internal(format!("registration policy: {e}")))?;
    if d.allowed {
        return Ok(d.policy_ids);
    }
    let kind = match op {
        AdminOperation::CreateException(_) => EventKind::EntryRefused,
        _ => EventKind::AdminCallRefused,
    };
    Err(refuse(shared, kind, actor, subject, op.name(), &d).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs(d: &[&[&str]]) -> Vec<Vec<String>> {
        d.iter()
            .map(|s| s.iter().map(|x| x.to_string()).collect())
            .collect()
    }

    #[test]
    fn an_alias_guarantees_only_what_every_definition_requires() {
        assert!(alias_guarantees(&[]).is_empty());
        let one = defs(&[&["github:environment:prod", "github:ref_protected:true"]]);
        assert_eq!(alias_guarantees(&one), one[0]);
        let two = defs(&[
            &["github:environment:prod", "github:ref_protected:true"],
            &["github:environment:prod", "k8s_psat:cluster:prod"],
        ]);
        assert_eq!(alias_guarantees(&two), ["github:environment:prod"]);
        assert_eq!(
            attestors_of(
                &[
                    "k8s_psat:cluster:a".into(),
                    "github:x:y".into(),
                    "github:z:w".into()
                ],
                Some("k8s_psat")
            ),
            ["github", "k8s_psat"]
        );
    }
}
