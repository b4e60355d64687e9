//! Governance RPCs of the admin API: the JWT-SVID deny-list, time-boxed exceptions
//! for legacy static secrets, the identity inventory, and CA slots. Entry policy
//! lives with the entry RPCs in `admin.rs`.

use std::collections::{HashMap, HashSet};

use lanyard_audit::evidence::{
    ExceptionCreated, ExceptionRevoked, IssuedToken, JwtRevoked, Process,
};
use lanyard_audit::{EventKind, Outcome};
use lanyard_core::{JwtSvid, SpiffeId};
use lanyard_proto::admin as pb;
use lanyard_store::{Entry, Exception, Node, RevokedJwt, Store};
use tonic::Status;

use crate::state::Shared;

fn store_status(e: lanyard_store::StoreError) -> Status {
    crate::admin::store_status(e)
}

fn bad(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

/// Longest exception name.
const MAX_NAME: usize = 64;

/// Put a JWT-SVID on the deny-list. With the token, its `jti`, subject and expiry
/// come from it (it must be one of ours); with only the `jti`, from the issuance event
/// in the evidence log. The token itself is never stored or logged.
pub async fn revoke_jwt(
    shared: &Shared,
    caller: &crate::policy::CallerFacts,
    actor: &str,
    r: pb::RevokeJwtRequest,
) -> Result<pb::RevokedJwt, Status> {
    let now = shared.clock.unix_seconds();
    let (jti, spiffe_id, expires_at) = if !r.token.is_empty() {
        let svid = JwtSvid::parse_insecure(&r.token)
            .map_err(|e| bad(format!("token is not a JWT-SVID: {e}")))?;
        let bundles = shared
            .publication
            .bundles()
            .read()
            .map(|b| b.clone())
            .unwrap_or_default();
        // Our signature, whatever the audience; an expired token needs no revocation.
        let aud: Vec<&str> = svid.audience().iter().map(String::as_str).collect();
        JwtSvid::validate(&r.token, &aud, &bundles, shared.clock.as_ref()).map_err(|e| {
            bad(format!(
                "token does not validate against this trust domain: {e}"
            ))
        })?;
        let jti = svid
            .claims()
            .get("jti")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("token has no jti claim, so it cannot be revoked by id"))?
            .to_string();
        (jti, Some(svid.spiffe_id().to_string()), svid.expiry())
    } else if !r.jti.is_empty() {
        if r.jti.len() > 128 {
            return Err(bad("jti is longer than 128 characters"));
        }
        let records = shared.store.audit_records().await.map_err(store_status)?;
        // The newest event issuing a token with this jti (`jwt_svid_issued`,
        // `token_exchanged`, `task_token_issued`).
        let (issued, token) = records
            .iter()
            .rev()
            .find_map(|rec| {
                let token = rec.event.evidence_as::<IssuedToken>().ok()?;
                (token.jti == r.jti).then_some((rec, token))
            })
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no JWT-SVID with jti {:?} was issued by this trust domain; pass --token-file to revoke a token by value",
                    r.jti
                ))
            })?;
        let exp = token.expires_at.unwrap_or(now + 86_400);
        (r.jti.clone(), issued.event.subject.clone(), exp)
    } else {
        return Err(bad(
            "give the jti (--jti) or the token (--token-file) to revoke",
        ));
    };
    if expires_at <= now {
        return Err(bad(format!(
            "the JWT-SVID {jti:?} has already expired; nothing to revoke"
        )));
    }
    let policy_ids = crate::policy::check_admin(
        shared,
        caller,
        actor,
        &lanyard_policy::AdminOperation::RevokeJwt {
            jti: jti.clone(),
            subject: spiffe_id.clone().unwrap_or_default(),
        },
        spiffe_id.clone(),
    )
    .await?;
    let reason = if r.reason.is_empty() {
        "revoked by an administrator".to_string()
    } else {
        r.reason.chars().take(256).collect()
    };
    let rec = RevokedJwt {
        jti,
        spiffe_id,
        expires_at,
        revoked_at: now,
        reason,
    };
    let stored = shared
        .store
        .revoke_jwt(&rec, &|r| {
            let mut ev = shared.audit.event(EventKind::JwtRevoked, Outcome::Success);
            ev.actor = Some(actor.to_string());
            ev.policy_ids = policy_ids.clone();
            ev.subject = r.spiffe_id.clone();
            ev.reason = Some(r.reason.clone());
            ev.set_evidence(JwtRevoked::new(&r.jti, r.expires_at));
            vec![ev]
        })
        .await
        .map_err(store_status)?;
    tracing::warn!(jti = %stored.jti, "JWT-SVID revoked");
    shared.changes.notify();
    Ok(to_pb_revoked(&stored))
}

pub fn to_pb_revoked(r: &RevokedJwt) -> pb::RevokedJwt {
    pb::RevokedJwt {
        jti: r.jti.clone(),
        spiffe_id: r.spiffe_id.clone().unwrap_or_default(),
        expires_at: r.expires_at,
        revoked_at: r.revoked_at,
        reason: r.reason.clone(),
    }
}

/// Status of an exception at `now`.
pub fn exception_status(e: &Exception, now: i64) -> &'static str {
    if e.revoked_at.is_some() {
        "revoked"
    } else if e.expires_at <= now {
        "expired"
    } else {
        "active"
    }
}

pub fn to_pb_exception(e: &Exception, now: i64) -> pb::ExceptionInfo {
    pb::ExceptionInfo {
        name: e.name.clone(),
        owner: e.owner.clone(),
        justification: e.justification.clone(),
        allow: e.allowed.iter().map(ToString::to_string).collect(),
        expires_at: e.expires_at,
        created_at: e.created_at,
        created_by: e.created_by.clone(),
        revoked_at: e.revoked_at.unwrap_or(0),
        status: exception_status(e, now).to_string(),
    }
}

/// Validate and store a new exception with its sealed secret. `max_duration_check`
/// is the policy decision on the requested duration (done by the caller).
pub async fn create_exception(
    shared: &Shared,
    actor: &str,
    r: &pb::CreateExceptionRequest,
    policy_ids: Vec<String>,
) -> Result<pb::ExceptionInfo, Status> {
    let name = r.name.trim();
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(bad(format!(
            "exception name {:?} must be 1 to {MAX_NAME} characters of a-z, A-Z, 0-9, '-', '_', '.'",
            r.name
        )));
    }
    let owner = r.owner.trim();
    if owner.is_empty() || owner.len() > 256 {
        return Err(bad(
            "--owner is required: every exception needs an owner (at most 256 characters)",
        ));
    }
    let justification = r.justification.trim();
    if justification.is_empty() || justification.len() > 4096 {
        return Err(bad(
            "--justification is required: say why a static secret is still needed (at most 4096 characters)",
        ));
    }
    if r.duration_seconds == 0 {
        return Err(bad("--expires is required, e.g. --expires 30d"));
    }
    if r.allow.is_empty() {
        return Err(bad(
            "at least one --allow SPIFFE_ID is required: the identities the secret may be released to",
        ));
    }
    let allowed = r
        .allow
        .iter()
        .map(|s| SpiffeId::new(s).map_err(|e| bad(format!("--allow {s:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if r.secret.is_empty() {
        return Err(bad(
            "the secret is empty; pass --secret-file with the secret's content",
        ));
    }
    if r.secret.len() > crate::secrets::MAX_SECRET {
        return Err(bad(format!(
            "the secret is {} bytes; at most {} are accepted",
            r.secret.len(),
            crate::secrets::MAX_SECRET
        )));
    }
    let now = shared.clock.unix_seconds();
    let duration = i64::try_from(r.duration_seconds).map_err(|_| bad("--expires is too long"))?;
    let sealed = shared
        .secrets
        .seal(name, &r.secret)
        .map_err(|e| Status::internal(format!("sealing the secret: {e}")))?;
    let exc = Exception {
        name: name.to_string(),
        owner: owner.to_string(),
        justification: justification.to_string(),
        allowed,
        expires_at: now.saturating_add(duration),
        created_at: now,
        created_by: actor.to_string(),
        revoked_at: None,
        sealed,
    };
    let stored = shared
        .store
        .create_exception(&exc, &|e| {
            let mut ev = shared
                .audit
                .event(EventKind::ExceptionCreated, Outcome::Success);
            ev.actor = Some(actor.to_string());
            ev.owner = Some(e.owner.clone());
            ev.policy_ids = policy_ids.clone();
            ev.reason = Some(e.justification.clone());
            ev.set_evidence(ExceptionCreated::new(
                &e.name,
                e.expires_at,
                e.allowed.iter().map(ToString::to_string).collect(),
            ));
            vec![ev]
        })
        .await
        .map_err(store_status)?;
    tracing::info!(exception = %stored.name, owner = %stored.owner, "exception created");
    Ok(to_pb_exception(&stored, now))
}

pub async fn revoke_exception(
    shared: &Shared,
    caller: &crate::policy::CallerFacts,
    actor: &str,
    name: &str,
) -> Result<pb::ExceptionInfo, Status> {
    let now = shared.clock.unix_seconds();
    let current = shared
        .store
        .get_exception(name)
        .await
        .map_err(store_status)?
        .ok_or_else(|| Status::not_found(format!("no exception named {name:?}")))?;
    let facts = lanyard_policy::ExceptionFacts {
        name: current.name.clone(),
        owner: current.owner.clone(),
        duration: u64::try_from(current.expires_at - current.created_at).unwrap_or(0),
        allowed: current.allowed.iter().map(ToString::to_string).collect(),
    };
    let policy_ids = crate::policy::check_admin(
        shared,
        caller,
        actor,
        &lanyard_policy::AdminOperation::RevokeException(facts),
        None,
    )
    .await?;
    let e = shared
        .store
        .revoke_exception(name, now, &|e| {
            let mut ev = shared
                .audit
                .event(EventKind::ExceptionRevoked, Outcome::Success);
            ev.actor = Some(actor.to_string());
            ev.policy_ids = policy_ids.clone();
            ev.owner = Some(e.owner.clone());
            ev.set_evidence(ExceptionRevoked::new(&e.name));
            vec![ev]
        })
        .await
        .map_err(store_status)?;
    Ok(to_pb_exception(&e, now))
}

/// Selector kinds that alone identify too much: any process of a user or group.
const WEAK_KINDS: [&str; 4] = ["unix:uid", "unix:gid", "unix:user", "unix:group"];

/// Inventory flags of one entry.
pub fn flags(
    e: &Entry,
    last_issued_ms: Option<i64>,
    now: i64,
    stale_after: i64,
    expiring_within: i64,
    default_x509_ttl: u64,
    default_jwt_ttl: u64,
) -> Vec<String> {
    let mut f = Vec::new();
    if e.spec.owner.trim().is_empty() {
        f.push("unowned".to_string());
    }
    // Entries that predate the shipped `environment-required` rule.
    if e.spec
        .environment
        .as_deref()
        .is_none_or(|v| v.trim().is_empty())
    {
        f.push("no_environment".to_string());
    }
    let last_active = last_issued_ms.map_or(e.created_at, |ms| ms / 1000);
    if now - last_active > stale_after {
        f.push("stale".to_string());
    }
    if e.spec.selectors.len() == 1
        && let Some(s) = e.spec.selectors.first()
    {
        let text = s.to_string();
        if WEAK_KINDS
            .iter()
            .any(|k| text.starts_with(&format!("{k}:")))
        {
            f.push("over_broad".to_string());
        }
    }
    let x509 = if e.spec.x509_ttl == 0 {
        default_x509_ttl
    } else {
        e.spec.x509_ttl
    };
    let jwt = if e.spec.jwt_ttl == 0 {
        default_jwt_ttl
    } else {
        e.spec.jwt_ttl
    };
    if x509 > 86_400 || jwt > 3_600 {
        f.push("long_lived".to_string());
    }
    match e.spec.expires_at {
        Some(t) if t <= now => f.push("expired".to_string()),
        Some(t) if t - now <= expiring_within => f.push("expiring".to_string()),
        _ => {}
    }
    f
}

/// Which agents can serve an entry: the parent itself, or any agent matching a node
/// alias (an entry parented to the server) that is the parent.
fn agents_for(
    entries: &[Entry],
    nodes: &[Node],
    server_id: &SpiffeId,
) -> HashMap<String, Vec<String>> {
    let mut alias_members: HashMap<&SpiffeId, Vec<String>> = HashMap::new();
    for a in entries.iter().filter(|e| &e.spec.parent_id == server_id) {
        let members = nodes
            .iter()
            .filter(|n| {
                let have: HashSet<_> = n.selectors.iter().collect();
                !a.spec.selectors.is_empty() && a.spec.selectors.iter().all(|s| have.contains(s))
            })
            .map(|n| n.spiffe_id.to_string())
            .collect();
        alias_members.insert(&a.spec.spiffe_id, members);
    }
    let node_ids: HashSet<String> = nodes.iter().map(|n| n.spiffe_id.to_string()).collect();
    entries
        .iter()
        .map(|e| {
            let parent = e.spec.parent_id.to_string();
            let mut agents: Vec<String> = if node_ids.contains(&parent) {
                vec![parent]
            } else {
                alias_members
                    .get(&e.spec.parent_id)
                    .cloned()
                    .unwrap_or_default()
            };
            agents.sort();
            agents.dedup();
            (e.id.clone(), agents)
        })
        .collect()
}

pub async fn inventory(shared: &Shared, r: &pb::InventoryRequest) -> Result<pb::Inventory, Status> {
    let now = shared.clock.unix_seconds();
    let week = 7 * 86_400;
    let stale_after = i64::try_from(r.stale_after_seconds).unwrap_or(i64::MAX);
    let stale_after = if stale_after == 0 { week } else { stale_after };
    let expiring = i64::try_from(r.expiring_within_seconds).unwrap_or(i64::MAX);
    let expiring = if expiring == 0 { week } else { expiring };
    let entries = shared.store.list_entries().await.map_err(store_status)?;
    let nodes: Vec<Node> = shared
        .store
        .list_nodes()
        .await
        .map_err(store_status)?
        .into_iter()
        .filter(|n| !n.banned)
        .collect();
    let activity: HashMap<String, lanyard_store::Activity> = shared
        .store
        .identity_activity()
        .await
        .map_err(store_status)?
        .into_iter()
        .map(|a| (a.subject.clone(), a))
        .collect();
    let agents = agents_for(&entries, &nodes, &shared.server_id);
    let x509_default = shared.config.x509_svid_ttl.as_secs();
    let jwt_default = shared.config.jwt_svid_ttl.as_secs();
    let identities = entries
        .iter()
        .map(|e| {
            let act = activity.get(&e.spec.spiffe_id.to_string());
            let last_issued = act.and_then(|a| a.last_issued_ms);
            let (seen_ms, seen) = act
                .and_then(|a| a.last_delivery.as_ref())
                .map(|d| {
                    // The receiving process, as far as it is recorded ("null" for
                    // a part that is not).
                    let p: Process = d.evidence_as().unwrap_or_default();
                    let or_null = |v: Option<String>| v.unwrap_or_else(|| "null".to_string());
                    (
                        d.time,
                        format!(
                            "pid {} uid {} {}",
                            or_null(p.pid.map(|v| v.to_string())),
                            or_null(p.uid.map(|v| v.to_string())),
                            p.path.as_deref().unwrap_or("")
                        )
                        .trim()
                        .to_string(),
                    )
                })
                .unwrap_or((0, String::new()));
            pb::InventoryItem {
                entry: Some(crate::admin::to_pb_entry(e)),
                agents: agents.get(&e.id).cloned().unwrap_or_default(),
                last_issued_ms: last_issued.unwrap_or(0),
                last_seen_ms: seen_ms,
                last_seen_workload: seen,
                flags: flags(
                    e,
                    last_issued,
                    now,
                    stale_after,
                    expiring,
                    x509_default,
                    jwt_default,
                ),
            }
        })
        .collect();
    let exceptions = shared
        .store
        .list_exceptions()
        .await
        .map_err(store_status)?
        .iter()
        .map(|e| to_pb_exception(e, now))
        .collect();
    Ok(pb::Inventory {
        identities,
        exceptions,
        generated_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_core::Selector;
    use lanyard_store::EntrySpec;

    fn entry(selectors: &[&str], owner: &str, x509: u64, expires: Option<i64>) -> Entry {
        Entry {
            id: "e1".into(),
            spec: EntrySpec {
                spiffe_id: SpiffeId::new("spiffe://example.org/web").unwrap(),
                parent_id: SpiffeId::new("spiffe://example.org/agent").unwrap(),
                selectors: selectors
                    .iter()
                    .map(|s| Selector::new(s).unwrap())
                    .collect(),
                owner: owner.into(),
                environment: Some("prod".into()),
                x509_ttl: x509,
                jwt_ttl: 0,
                dns_names: vec![],
                hint: None,
                admin: false,
                downstream: false,
                expires_at: expires,
                federates_with: vec![],
            },
            revision: 1,
            created_at: 1_000,
            updated_at: 1_000,
        }
    }

    #[test]
    fn inventory_flags() {
        let sha = format!("unix:sha256:{}", "ab".repeat(32));
        let now = 1_000 + 10 * 86_400;
        let week = 7 * 86_400;
        let f = |e: &Entry, last: Option<i64>| flags(e, last, now, week, week, 3600, 300);
        let good = entry(&["unix:uid:1000", "unix:path:/bin/web"], "team", 0, None);
        assert_eq!(f(&good, Some(now * 1000)), Vec::<String>::new());
        assert_eq!(
            f(&good, None),
            vec!["stale"],
            "never issued since creation 10 days ago"
        );
        assert_eq!(f(&good, Some((now - 8 * 86_400) * 1000)), vec!["stale"]);
        let broad = entry(&["unix:uid:0"], "", 0, None);
        assert_eq!(f(&broad, Some(now * 1000)), vec!["unowned", "over_broad"]);
        let long = entry(
            &[sha.as_str(), "unix:uid:1"],
            "t",
            2 * 86_400,
            Some(now - 1),
        );
        assert_eq!(f(&long, Some(now * 1000)), vec!["long_lived", "expired"]);
        let soon = entry(&["unix:path:/x", "unix:uid:1"], "t", 0, Some(now + 3600));
        assert_eq!(f(&soon, Some(now * 1000)), vec!["expiring"]);
        let single_strong = entry(&[sha.as_str()], "t", 0, None);
        assert!(f(&single_strong, Some(now * 1000)).is_empty());
        for none in [None, Some(String::new())] {
            let mut old = good.clone();
            old.spec.environment = none;
            assert_eq!(f(&old, Some(now * 1000)), vec!["no_environment"]);
        }
    }
}
