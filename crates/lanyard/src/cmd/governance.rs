//! Governance commands: policy, exceptions, inventory, CA slots, JWT revocation.

use std::path::Path;
use std::process::ExitCode;

use lanyard_core::duration::{format_duration, parse_duration};
use lanyard_policy::{
    Caller, CompiledPolicies, EntryFacts, PolicyKind, RegistrationAction, RegistrationRequest,
};
use lanyard_proto::admin as pb;
use serde_json::{Value, json};

use crate::Output;
use crate::cmd::admin::{connect, print, status, time_str};

fn kind(s: &str) -> Result<PolicyKind, String> {
    s.parse()
        .map_err(|e: lanyard_policy::PolicyError| e.to_string())
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

pub async fn policy_set(
    socket: Option<&Path>,
    k: &str,
    file: &Path,
    output: Output,
) -> Result<ExitCode, String> {
    let body = read(file)?;
    // Check locally first: the same compiler the server uses, with the file name.
    CompiledPolicies::compile(kind(k)?, &body).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut c = connect(socket).await?;
    let p = c
        .set_policy(pb::SetPolicyRequest {
            kind: k.to_string(),
            body,
        })
        .await
        .map_err(status)?
        .into_inner();
    print(
        output,
        format!(
            "{} policy is now version {} ({} policies: {})",
            p.kind,
            p.version,
            p.policy_ids.len(),
            p.policy_ids.join(", ")
        ),
        json!({"kind": p.kind, "version": p.version, "policy_ids": p.policy_ids}),
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn policy_get(
    socket: Option<&Path>,
    k: &str,
    output: Output,
) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    let p = c
        .get_policy(pb::PolicyKind {
            kind: k.to_string(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let header = if p.version == 0 {
        format!(
            "// {} policy: the shipped default (never changed)\n",
            p.kind
        )
    } else {
        format!(
            "// {} policy version {}, set by {} at {}\n",
            p.kind,
            p.version,
            p.updated_by,
            time_str(p.updated_at)
        )
    };
    print(
        output,
        format!("{header}{}", p.body),
        json!({"kind": p.kind, "version": p.version, "updated_by": p.updated_by,
               "updated_at": p.updated_at, "policy_ids": p.policy_ids, "body": p.body}),
    );
    Ok(ExitCode::SUCCESS)
}

pub fn policy_check(k: &str, file: &Path, output: Output) -> Result<ExitCode, String> {
    let body = read(file)?;
    let p = CompiledPolicies::compile(kind(k)?, &body)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    print(
        output,
        format!(
            "{}: valid {} policy ({} policies: {})",
            file.display(),
            p.kind(),
            p.policy_ids().len(),
            p.policy_ids().join(", ")
        ),
        json!({"valid": true, "kind": p.kind().name(), "policy_ids": p.policy_ids()}),
    );
    Ok(ExitCode::SUCCESS)
}

/// A sample registration request, as `policy test --request` reads it.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleRequest {
    /// "uid:0" (local socket) or an admin SPIFFE ID.
    caller: String,
    /// create_entry, update_entry or delete_entry.
    action: String,
    entry: SampleEntry,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleEntry {
    spiffe_id: String,
    #[serde(default)]
    parent_id: String,
    #[serde(default)]
    selectors: Vec<String>,
    #[serde(default = "default_x509")]
    x509_ttl: u64,
    #[serde(default = "default_jwt")]
    jwt_ttl: u64,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    environment: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    downstream: bool,
    #[serde(default)]
    has_expiry: bool,
    /// What the parent agent (or node alias) proved, e.g. github:environment:prod.
    #[serde(default)]
    parent_selectors: Vec<String>,
    #[serde(default)]
    parent_attestors: Vec<String>,
}

fn default_x509() -> u64 {
    3600
}
fn default_jwt() -> u64 {
    300
}

/// Evaluate a sample request against a policy file, or the server's active set.
/// Exit code 0 when allowed, 1 when refused.
pub async fn policy_test(
    socket: Option<&Path>,
    k: &str,
    file: Option<&Path>,
    request: &Path,
    output: Output,
) -> Result<ExitCode, String> {
    let k = kind(k)?;
    let body = match file {
        Some(f) => read(f)?,
        None => {
            let mut c = connect(socket).await?;
            c.get_policy(pb::PolicyKind {
                kind: k.name().to_string(),
            })
            .await
            .map_err(status)?
            .into_inner()
            .body
        }
    };
    let p = CompiledPolicies::compile(k, &body).map_err(|e| e.to_string())?;
    if k == lanyard_policy::PolicyKind::Authz {
        let v: Value = serde_json::from_str(&read(request)?)
            .map_err(|e| format!("{}: not JSON: {e}", request.display()))?;
        let d = p
            .evaluate_authz(&authz_sample(&v).map_err(|e| format!("{}: {e}", request.display()))?)
            .map_err(|e| e.to_string())?;
        print(
            output,
            d.explain(k),
            json!({"allowed": d.allowed, "policy_ids": d.policy_ids, "reasons": d.reasons, "errors": d.errors}),
        );
        return Ok(if d.allowed {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let sample: SampleRequest = serde_json::from_str(&read(request)?).map_err(|e| {
        format!(
            "{}: {e}; expected {{\"caller\": \"uid:0\", \"action\": \"create_entry\", \"entry\": {{\"spiffe_id\": ..., \"selectors\": [...], \"owner\": ...}}}}",
            request.display()
        )
    })?;
    let caller = match sample.caller.strip_prefix("uid:") {
        Some(uid) => Caller::Local {
            uid: uid
                .parse()
                .map_err(|_| format!("caller {:?}: bad uid", sample.caller))?,
        },
        None => {
            lanyard_core::SpiffeId::new(&sample.caller)
                .map_err(|e| format!("caller {:?}: {e}", sample.caller))?;
            Caller::Spiffe(sample.caller.clone())
        }
    };
    let action = match sample.action.as_str() {
        "create_entry" => RegistrationAction::Create,
        "update_entry" => RegistrationAction::Update,
        "delete_entry" => RegistrationAction::Delete,
        other => {
            return Err(format!(
                "action {other:?}: use create_entry, update_entry or delete_entry"
            ));
        }
    };
    let e = sample.entry;
    let d = p
        .evaluate_registration(&RegistrationRequest {
            caller,
            action,
            entry: EntryFacts {
                spiffe_id: e.spiffe_id,
                parent_id: e.parent_id,
                selectors: e.selectors,
                x509_ttl: e.x509_ttl,
                jwt_ttl: e.jwt_ttl,
                owner: e.owner,
                environment: e.environment,
                admin: e.admin,
                downstream: e.downstream,
                has_expiry: e.has_expiry,
                parent_selectors: e.parent_selectors,
                parent_attestors: e.parent_attestors,
            },
        })
        .map_err(|e| e.to_string())?;
    print(
        output,
        d.explain(k),
        json!({"allowed": d.allowed, "policy_ids": d.policy_ids, "reasons": d.reasons, "errors": d.errors}),
    );
    Ok(if d.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// An AuthZEN-shaped sample for `policy test --kind authz`: `subject` (`id`, and
/// optional `properties` `owner`, `environment`, `selectors`, `registered` standing
/// for its entry), `action.name`, `resource` (`type`, `id`, `properties`), `context`,
/// and an optional `task` (`txn`, `purpose`, `tools`, `agent`, `acting_for`) standing
/// for a verified task token.
fn authz_sample(v: &Value) -> Result<lanyard_policy::AuthzRequest, String> {
    use lanyard_policy::{AuthzRequest, Target, TaskFacts, WorkloadFacts};
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    let list = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let id = s(v.pointer("/subject/id"));
    lanyard_core::SpiffeId::new(&id).map_err(|e| format!("subject.id {id:?}: {e}"))?;
    let props = v.pointer("/subject/properties");
    let principal = WorkloadFacts {
        spiffe_id: id,
        registered: props
            .and_then(|p| p.get("registered"))
            .and_then(Value::as_bool)
            .unwrap_or(props.is_some()),
        owner: s(props.and_then(|p| p.get("owner"))),
        environment: s(props.and_then(|p| p.get("environment"))),
        selectors: list(props.and_then(|p| p.get("selectors"))),
    };
    let action = s(v.pointer("/action/name"));
    if action.is_empty() {
        return Err("action.name is missing".to_string());
    }
    let rid = s(v.pointer("/resource/id"));
    let mut r = AuthzRequest::new(principal, &action, &rid);
    r.target = Target::Resource {
        id: rid,
        kind: s(v.pointer("/resource/type")),
        properties: v
            .pointer("/resource/properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    };
    r.context = v
        .get("context")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(t) = v.get("task") {
        r.task = Some(TaskFacts {
            txn: s(t.get("txn")),
            purpose: s(t.get("purpose")),
            tools: list(t.get("tools")),
            agent: s(t.get("agent")),
            acting_for: s(t.get("acting_for")),
        });
    }
    Ok(r)
}

fn exception_json(e: &pb::ExceptionInfo, now: i64) -> Value {
    json!({
        "name": e.name,
        "owner": e.owner,
        "justification": e.justification,
        "allow": e.allow,
        "expires_at": e.expires_at,
        "days_left": days_left(e, now),
        "created_at": e.created_at,
        "created_by": e.created_by,
        "revoked_at": (e.revoked_at != 0).then_some(e.revoked_at),
        "status": e.status,
    })
}

fn days_left(e: &pb::ExceptionInfo, now: i64) -> i64 {
    if e.status == "active" {
        (e.expires_at - now).max(0) / 86_400
    } else {
        0
    }
}

fn exception_text(e: &pb::ExceptionInfo, now: i64) -> String {
    format!(
        "{}  [{}]  owner {}  expires {} ({} days left)\n  allow: {}\n  why: {}",
        e.name,
        e.status,
        e.owner,
        time_str(e.expires_at),
        days_left(e, now),
        e.allow.join(", "),
        e.justification
    )
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
pub async fn exception_create(
    socket: Option<&Path>,
    name: &str,
    owner: &str,
    justification: &str,
    expires: &str,
    allow: &[String],
    secret_file: &Path,
    output: Output,
) -> Result<ExitCode, String> {
    let duration = parse_duration(expires).map_err(|e| format!("--expires: {e}"))?;
    let secret = std::fs::read(secret_file)
        .map_err(|e| format!("--secret-file {}: {e}", secret_file.display()))?;
    let mut c = connect(socket).await?;
    let e = c
        .create_exception(pb::CreateExceptionRequest {
            name: name.to_string(),
            owner: owner.to_string(),
            justification: justification.to_string(),
            duration_seconds: duration.as_secs(),
            allow: allow.to_vec(),
            secret,
        })
        .await
        .map_err(status)?
        .into_inner();
    let n = now();
    print(
        output,
        format!(
            "Created exception {} for {} (expires in {})",
            e.name,
            e.allow.join(", "),
            format_duration(duration)
        ),
        exception_json(&e, n),
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn exception_list(socket: Option<&Path>, output: Output) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    let list = c
        .list_exceptions(pb::Empty {})
        .await
        .map_err(status)?
        .into_inner()
        .exceptions;
    let n = now();
    let text = if list.is_empty() {
        "No exceptions.".to_string()
    } else {
        list.iter()
            .map(|e| exception_text(e, n))
            .collect::<Vec<_>>()
            .join("\n\n")
    };
    print(
        output,
        text,
        Value::Array(list.iter().map(|e| exception_json(e, n)).collect()),
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn exception_show(
    socket: Option<&Path>,
    name: &str,
    output: Output,
) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    let e = c
        .get_exception(pb::ExceptionName {
            name: name.to_string(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let n = now();
    print(output, exception_text(&e, n), exception_json(&e, n));
    Ok(ExitCode::SUCCESS)
}

pub async fn exception_revoke(
    socket: Option<&Path>,
    name: &str,
    output: Output,
) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    let e = c
        .revoke_exception(pb::ExceptionName {
            name: name.to_string(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let n = now();
    print(
        output,
        format!("Revoked exception {}", e.name),
        exception_json(&e, n),
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn inventory(
    socket: Option<&Path>,
    stale_after: Option<&str>,
    expiring_within: Option<&str>,
    output: Output,
) -> Result<ExitCode, String> {
    let secs = |flag: &str, v: Option<&str>| -> Result<u64, String> {
        v.map(|s| {
            parse_duration(s)
                .map(|d| d.as_secs())
                .map_err(|e| format!("{flag}: {e}"))
        })
        .transpose()
        .map(Option::unwrap_or_default)
    };
    let mut c = connect(socket).await?;
    let inv = c
        .get_inventory(pb::InventoryRequest {
            stale_after_seconds: secs("--stale-after", stale_after)?,
            expiring_within_seconds: secs("--expiring-within", expiring_within)?,
        })
        .await
        .map_err(status)?
        .into_inner();
    let n = inv.generated_at;
    let ms = |t: i64| {
        if t == 0 {
            "never".to_string()
        } else {
            time_str(t / 1000)
        }
    };
    let mut text = format!("{} identities\n", inv.identities.len());
    let mut items = Vec::new();
    for i in &inv.identities {
        let Some(e) = &i.entry else { continue };
        text.push_str(&format!(
            "\n{}  owner {}  env {}\n  selectors: {}\n  agents: {}\n  last issued: {}  last workload: {} {}\n  flags: {}\n",
            e.spiffe_id,
            if e.owner.is_empty() { "-" } else { &e.owner },
            if e.environment.is_empty() { "-" } else { &e.environment },
            e.selectors.join(", "),
            if i.agents.is_empty() { "-".to_string() } else { i.agents.join(", ") },
            ms(i.last_issued_ms),
            ms(i.last_seen_ms),
            i.last_seen_workload,
            if i.flags.is_empty() { "-".to_string() } else { i.flags.join(", ") },
        ));
        items.push(json!({
            "entry_id": e.id,
            "spiffe_id": e.spiffe_id,
            "owner": e.owner,
            "environment": e.environment,
            "selectors": e.selectors,
            "agents": i.agents,
            "x509_ttl_seconds": e.x509_ttl_seconds,
            "jwt_ttl_seconds": e.jwt_ttl_seconds,
            "expires_at": (e.expires_at != 0).then_some(e.expires_at),
            "last_issued_ms": (i.last_issued_ms != 0).then_some(i.last_issued_ms),
            "last_seen_ms": (i.last_seen_ms != 0).then_some(i.last_seen_ms),
            "last_seen_workload": (!i.last_seen_workload.is_empty()).then_some(&i.last_seen_workload),
            "flags": i.flags,
        }));
    }
    if !inv.exceptions.is_empty() {
        text.push_str(&format!("\n{} exceptions\n", inv.exceptions.len()));
        for e in &inv.exceptions {
            text.push_str(&format!("\n{}\n", exception_text(e, n)));
        }
    }
    print(
        output,
        text,
        json!({
            "generated_at": n,
            "identities": items,
            "exceptions": inv.exceptions.iter().map(|e| exception_json(e, n)).collect::<Vec<_>>(),
        }),
    );
    Ok(ExitCode::SUCCESS)
}

fn slots_out(s: &pb::CaSlots, output: Output, title: &str) {
    let text = s
        .slots
        .iter()
        .map(|x| {
            format!(
                "{}  {}  ski {}  {} .. {}{}",
                x.id,
                x.state,
                x.subject_key_id,
                time_str(x.not_before),
                time_str(x.not_after),
                if x.tainted_at != 0 {
                    format!("  tainted {}", time_str(x.tainted_at))
                } else {
                    String::new()
                }
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let v: Vec<Value> = s
        .slots
        .iter()
        .map(|x| {
            json!({"id": x.id, "state": x.state, "subject_key_id": x.subject_key_id,
                   "not_before": x.not_before, "not_after": x.not_after,
                   "tainted_at": (x.tainted_at != 0).then_some(x.tainted_at)})
        })
        .collect();
    print(output, format!("{title}{text}"), Value::Array(v));
}

pub async fn ca_list(socket: Option<&Path>, output: Output) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    let s = c
        .list_ca_slots(pb::Empty {})
        .await
        .map_err(status)?
        .into_inner();
    slots_out(&s, output, "");
    Ok(ExitCode::SUCCESS)
}

pub async fn ca_taint(
    socket: Option<&Path>,
    slot: &str,
    output: Output,
) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    let s = c
        .taint_ca(pb::TaintRequest {
            slot: slot.to_string(),
        })
        .await
        .map_err(status)?
        .into_inner();
    slots_out(
        &s,
        output,
        &format!(
            "Tainted CA slot {slot}: agents re-mint what it signed; it leaves the bundle once nothing depends on it.\n"
        ),
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn jwt_revoke(
    socket: Option<&Path>,
    jti: Option<&str>,
    token_file: Option<&Path>,
    reason: Option<&str>,
    output: Output,
) -> Result<ExitCode, String> {
    let token = match token_file {
        Some(f) => read(f)?.trim().to_string(),
        None => String::new(),
    };
    if jti.is_none() && token.is_empty() {
        return Err("give --jti ID or --token-file FILE".to_string());
    }
    let mut c = connect(socket).await?;
    let r = c
        .revoke_jwt(pb::RevokeJwtRequest {
            jti: jti.unwrap_or_default().to_string(),
            token,
            reason: reason.unwrap_or_default().to_string(),
        })
        .await
        .map_err(status)?
        .into_inner();
    print(
        output,
        format!(
            "Revoked JWT-SVID {} ({}) until {}",
            r.jti,
            if r.spiffe_id.is_empty() {
                "-"
            } else {
                &r.spiffe_id
            },
            time_str(r.expires_at)
        ),
        json!({"jti": r.jti, "spiffe_id": r.spiffe_id, "expires_at": r.expires_at, "reason": r.reason}),
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn jwt_revoked(socket: Option<&Path>, output: Output) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    let l = c
        .list_revoked_jwts(pb::Empty {})
        .await
        .map_err(status)?
        .into_inner()
        .revoked;
    let text = if l.is_empty() {
        "No revoked JWT-SVIDs.".to_string()
    } else {
        l.iter()
            .map(|r| {
                format!(
                    "{}  {}  until {}  {}",
                    r.jti,
                    r.spiffe_id,
                    time_str(r.expires_at),
                    r.reason
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let v: Vec<Value> = l
        .iter()
        .map(|r| json!({"jti": r.jti, "spiffe_id": r.spiffe_id, "expires_at": r.expires_at, "revoked_at": r.revoked_at, "reason": r.reason}))
        .collect();
    print(output, text, Value::Array(v));
    Ok(ExitCode::SUCCESS)
}

fn server_json(s: &pb::ServerInfo) -> Value {
    json!({
        "name": s.name,
        "address": s.address,
        "this_server": s.this_server,
        "started_at": s.started_at,
        "seen_at": s.seen_at,
        "expires_at": s.expires_at,
        "deregistered_at": (s.deregistered_at != 0).then_some(s.deregistered_at),
        "authorities": s.authorities.iter().map(|a| json!({
            "kind": a.kind, "id": a.id, "state": a.state, "not_after": a.not_after,
        })).collect::<Vec<_>>(),
    })
}

fn server_text(s: &pb::ServerInfo, now: i64) -> String {
    let status = if s.deregistered_at != 0 {
        format!("deregistered {}", time_str(s.deregistered_at))
    } else {
        format!("seen {}s ago", (now - s.seen_at).max(0))
    };
    let mut out = format!(
        "{}{}  {}  {}  started {}",
        s.name,
        if s.this_server { " (this server)" } else { "" },
        if s.address.is_empty() {
            "-"
        } else {
            &s.address
        },
        status,
        time_str(s.started_at)
    );
    for a in &s.authorities {
        out.push_str(&format!(
            "\n    {:<4} {:<8} {}  until {}",
            a.kind,
            a.state,
            a.id,
            time_str(a.not_after)
        ));
    }
    out
}

/// `lanyard server list`: the servers sharing the datastore and what each publishes.
pub async fn server_list(socket: Option<&Path>, output: Output) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    let list = c
        .list_servers(pb::Empty {})
        .await
        .map_err(status)?
        .into_inner();
    let now = now();
    let text = list
        .servers
        .iter()
        .map(|s| server_text(s, now))
        .collect::<Vec<_>>()
        .join("\n");
    print(
        output,
        text,
        Value::Array(list.servers.iter().map(server_json).collect()),
    );
    Ok(ExitCode::SUCCESS)
}

/// `lanyard server deregister NAME`: its keys leave the trust bundle.
pub async fn server_deregister(
    socket: Option<&Path>,
    name: &str,
    force: bool,
    output: Output,
) -> Result<ExitCode, String> {
    let mut c = connect(socket).await?;
    let s = c
        .deregister_server(pb::DeregisterServerRequest {
            name: name.to_string(),
            force,
        })
        .await
        .map_err(status)?
        .into_inner();
    print(
        output,
        format!(
            "Deregistered server {}: its {} keys left the trust bundle; SVIDs it signed are no longer trusted.",
            s.name,
            s.authorities.len()
        ),
        server_json(&s),
    );
    Ok(ExitCode::SUCCESS)
}
