//! Golden test of the typed evidence: one event per kind (and per second shape of a
//! kind), built with the typed API, pinned to its canonical encoding and its chain
//! hash; each also equals byte for byte the event as the server filled it by hand
//! before the typed API (`ev.evidence.insert(..)`). A change of a key, a value type
//! or the order of anything breaks this test: old logs must keep verifying.
//!
//! When a kind is added, add its case at the end and print the new constants with
//! `cargo test -p lanyard-audit golden_print -- --ignored --nocapture`; never
//! re-pin an existing line.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::evidence::*;
use crate::*;

const AGENT: &str = "spiffe://example.org/lanyard/agent/join_token/n1";
const WEB: &str = "spiffe://example.org/web";
const ADMIN: &str = "uid:1000";
const SERIAL: &str = "5f0c2a9e77d14b3c8a6e0b1d2c3f4a5b";
const EXP: i64 = 1_800_003_600;

fn base(n: i64, kind: EventKind, outcome: Outcome) -> Event {
    let mut ev = Event::new(
        format!("{n:032x}"),
        1_800_000_000_000 + n,
        kind,
        outcome,
        "server-1",
    );
    ev.actor = Some(AGENT.to_string());
    ev.subject = Some(WEB.to_string());
    ev
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

/// `recipient_evidence` as the server wrote it by hand.
fn hand_recipient(ev: &mut Event, pid: i32, uid: u32, gid: u32, path: &str, sha256: &str) {
    let e = &mut ev.evidence;
    if pid > 0 {
        e.insert("pid".into(), pid.into());
        e.insert("uid".into(), uid.into());
        e.insert("gid".into(), gid.into());
    }
    if !path.is_empty() && path.len() <= 4096 {
        e.insert("path".into(), path.to_string().into());
    }
    if sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        e.insert("sha256".into(), sha256.to_string().into());
    }
}

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// (label, typed, hand-built) for every case.
fn cases() -> Vec<(&'static str, Event, Event)> {
    use EventKind as K;
    let mut out = Vec::new();
    let mut n = 0;
    let mut next = |kind, outcome| {
        n += 1;
        base(n, kind, outcome)
    };

    // node_attested
    let ev = next(K::NodeAttested, Outcome::Success);
    let mut hand = ev.clone();
    hand.evidence
        .insert("attestation_type".into(), "join_token".into());
    hand.evidence.insert(
        "selectors".into(),
        Value::from(strings(&["join_token:n1", "unix:uid:0"])),
    );
    hand.evidence
        .insert("serial".into(), SERIAL.to_string().into());
    hand.evidence.insert("expires_at".into(), EXP.into());
    let typed = ev.with(NodeAttested::new(
        "join_token",
        strings(&["join_token:n1", "unix:uid:0"]),
        SERIAL,
        EXP,
    ));
    out.push(("node_attested", typed, hand));

    // node_refused: an agent ID outside /lanyard/agent/, and a failed attestation.
    let ev = next(K::NodeRefused, Outcome::Denied);
    let mut hand = ev.clone();
    hand.evidence
        .insert("attestation_type".into(), "join_token".into());
    out.push(("node_refused", ev.with(NodeRefused::of("join_token")), hand));
    let ev = next(K::NodeRefused, Outcome::Denied);
    let hand = ev.clone();
    out.push(("node_refused/empty", ev.with(NodeRefused::unknown()), hand));

    // agent_svid_issued, agent_svid_renewed
    for (label, kind) in [
        ("agent_svid_issued", K::AgentSvidIssued),
        ("agent_svid_renewed", K::AgentSvidRenewed),
    ] {
        let ev = next(kind, Outcome::Success);
        let mut hand = ev.clone();
        hand.evidence
            .insert("serial".into(), SERIAL.to_string().into());
        hand.evidence.insert("expires_at".into(), EXP.into());
        out.push((label, ev.with(AgentSvid::new(SERIAL, EXP)), hand));
    }

    // agent_clone_suspected
    let ev = next(K::AgentCloneSuspected, Outcome::Denied);
    let mut hand = ev.clone();
    hand.evidence
        .insert("presented_serial".into(), "0a0b".to_string().into());
    hand.evidence
        .insert("current_serial".into(), SERIAL.to_string().into());
    hand.evidence
        .insert("superseded_count".into(), 2_i64.into());
    out.push((
        "agent_clone_suspected",
        ev.with(AgentCloneSuspected::new("0a0b", SERIAL, 2)),
        hand,
    ));

    // x509_svid_issued
    let ev = next(K::X509SvidIssued, Outcome::Success);
    let mut hand = ev.clone();
    hand.evidence
        .insert("entry_id".into(), "e-1".to_string().into());
    hand.evidence
        .insert("serial".into(), SERIAL.to_string().into());
    hand.evidence.insert("expires_at".into(), EXP.into());
    hand.evidence
        .insert("public_key_sha256".into(), SHA.to_string().into());
    hand.evidence
        .insert("selectors".into(), Value::from(strings(&["unix:uid:1000"])));
    let typed = ev.with(X509SvidIssued::new(
        "e-1",
        SERIAL,
        EXP,
        Some(SHA.to_string()),
        strings(&["unix:uid:1000"]),
    ));
    out.push(("x509_svid_issued", typed, hand));

    // jwt_svid_issued
    let ev = next(K::JwtSvidIssued, Outcome::Success);
    let mut hand = ev.clone();
    hand.evidence.insert("jti".into(), "j-1".to_string().into());
    hand.evidence
        .insert("audience".into(), Value::from(strings(&["db", "cache"])));
    hand.evidence.insert("kid".into(), "k-1".to_string().into());
    hand.evidence.insert("expires_at".into(), EXP.into());
    let typed = ev.with(JwtSvidIssued::new(
        "j-1",
        strings(&["db", "cache"]),
        "k-1",
        EXP,
    ));
    out.push(("jwt_svid_issued", typed, hand));

    // workload_svid_delivered: x509, jwt, dropped reports.
    let ev = next(K::WorkloadSvidDelivered, Outcome::Success);
    let mut hand = ev.clone();
    {
        let e = &mut hand.evidence;
        e.insert("svid_type".into(), "x509".to_string().into());
        e.insert("serial".into(), SERIAL.to_string().into());
        e.insert("pid".into(), 4242_i32.into());
        e.insert("uid".into(), 1000_u32.into());
        e.insert("gid".into(), 100_u32.into());
        e.insert("path".into(), "/usr/bin/web".to_string().into());
        e.insert("sha256".into(), SHA.to_string().into());
        e.insert("delivered_at_ms".into(), 1_800_000_000_123_i64.into());
    }
    let typed = ev.with(
        WorkloadSvidDelivered::x509(SERIAL, 4242, 1000, 100, 1_800_000_000_123)
            .binary("/usr/bin/web", SHA),
    );
    out.push(("workload_svid_delivered/x509", typed, hand));
    let ev = next(K::WorkloadSvidDelivered, Outcome::Denied);
    let mut hand = ev.clone();
    {
        let e = &mut hand.evidence;
        e.insert("svid_type".into(), "jwt".to_string().into());
        e.insert("jti".into(), "j-1".to_string().into());
        e.insert("audience".into(), Value::from(strings(&["db"])));
        e.insert("pid".into(), 4242_i32.into());
        e.insert("uid".into(), 1000_u32.into());
        e.insert("gid".into(), 100_u32.into());
        e.insert("delivered_at_ms".into(), 1_800_000_000_123_i64.into());
    }
    let typed = ev.with(
        WorkloadSvidDelivered::jwt("j-1", strings(&["db"]), 4242, 1000, 100, 1_800_000_000_123)
            .binary("", ""),
    );
    out.push(("workload_svid_delivered/jwt", typed, hand));
    let ev = next(K::WorkloadSvidDelivered, Outcome::Failure);
    let mut hand = ev.clone();
    hand.evidence.insert("dropped".into(), 7_u64.into());
    out.push((
        "workload_svid_delivered/dropped",
        ev.with(ReportsDropped::new(7)),
        hand,
    ));

    // entry_created, entry_updated, entry_deleted
    for (label, kind) in [
        ("entry_created", K::EntryCreated),
        ("entry_updated", K::EntryUpdated),
        ("entry_deleted", K::EntryDeleted),
    ] {
        let mut ev = next(kind, Outcome::Success);
        ev.actor = Some(ADMIN.to_string());
        ev.policy_ids = strings(&["allow-web"]);
        ev.decision = Some("allow".to_string());
        ev.owner = Some("team-web".to_string());
        let mut hand = ev.clone();
        hand.evidence
            .insert("entry_id".into(), "e-1".to_string().into());
        hand.evidence
            .insert("parent_id".into(), AGENT.to_string().into());
        hand.evidence.insert(
            "selectors".into(),
            Value::from(strings(&["unix:uid:1000", "unix:path:/usr/bin/web"])),
        );
        hand.evidence.insert("revision".into(), 3_i64.into());
        let typed = ev.with(EntryChanged::new(
            "e-1",
            AGENT,
            strings(&["unix:uid:1000", "unix:path:/usr/bin/web"]),
            3,
        ));
        out.push((label, typed, hand));
    }

    // entry_refused
    let mut ev = next(K::EntryRefused, Outcome::Denied);
    ev.decision = Some("deny".to_string());
    ev.reason = Some("forbidden by no-root".to_string());
    ev.policy_ids = strings(&["no-root"]);
    let mut hand = ev.clone();
    hand.evidence.insert("action".into(), "create_entry".into());
    out.push((
        "entry_refused",
        ev.with(EntryRefused::new("create_entry")),
        hand,
    ));

    // token_created
    let ev = next(K::TokenCreated, Outcome::Success);
    let token_hash = SHA;
    let mut hand = ev.clone();
    hand.evidence.insert(
        "token_hash_prefix".into(),
        token_hash[..16].to_string().into(),
    );
    hand.evidence.insert("expires_at".into(), EXP.into());
    out.push((
        "token_created",
        ev.with(TokenCreated::new(&token_hash[..16], EXP)),
        hand,
    ));

    // agent_banned, agent_evicted
    for (label, kind) in [
        ("agent_banned", K::AgentBanned),
        ("agent_evicted", K::AgentEvicted),
    ] {
        let ev = next(kind, Outcome::Success);
        let mut hand = ev.clone();
        hand.evidence
            .insert("attestation_type".into(), "x509pop".to_string().into());
        out.push((label, ev.with(AgentRemoved::new("x509pop")), hand));
    }

    // ca_key_*
    for (label, kind) in [
        ("ca_key_prepared", K::CaKeyPrepared),
        ("ca_key_activated", K::CaKeyActivated),
        ("ca_key_retired", K::CaKeyRetired),
        ("ca_key_tainted", K::CaKeyTainted),
    ] {
        let ev = next(kind, Outcome::Success);
        let mut hand = ev.clone();
        hand.evidence
            .insert("slot".into(), Value::String("B".to_string()));
        out.push((label, ev.with(CaKeyStep::new("B")), hand));
    }

    // bundle_changed
    let ev = next(K::BundleChanged, Outcome::Success);
    let mut hand = ev.clone();
    hand.evidence.insert("sequence".into(), Value::from(12_u64));
    out.push(("bundle_changed", ev.with(BundleChanged::new(12)), hand));

    // admin_call_refused: by policy, and not an admin identity.
    let ev = next(K::AdminCallRefused, Outcome::Denied);
    let mut hand = ev.clone();
    hand.evidence.insert("action".into(), "ban_agent".into());
    out.push((
        "admin_call_refused",
        ev.with(AdminCallRefused::action("ban_agent")),
        hand,
    ));
    let ev = next(K::AdminCallRefused, Outcome::Denied);
    let hand = ev.clone();
    out.push((
        "admin_call_refused/not_admin",
        ev.with(AdminCallRefused::not_admin()),
        hand,
    ));

    // workload_svid_delivered is above; the governance kinds.
    let ev = next(K::PolicyChanged, Outcome::Success);
    let allowed_by = strings(&["admins-set-policy"]);
    let mut hand = ev.clone();
    hand.evidence
        .insert("allowed_by".into(), allowed_by.clone().into());
    hand.evidence.insert("kind".into(), "registration".into());
    hand.evidence.insert("version".into(), 4_i64.into());
    hand.evidence
        .insert("sha256".into(), SHA.to_string().into());
    out.push((
        "policy_changed",
        ev.with(PolicyChanged::new(allowed_by, "registration", 4, SHA)),
        hand,
    ));

    let ev = next(K::JwtRevoked, Outcome::Success);
    let mut hand = ev.clone();
    hand.evidence.insert("jti".into(), "j-1".to_string().into());
    hand.evidence.insert("expires_at".into(), EXP.into());
    out.push(("jwt_revoked", ev.with(JwtRevoked::new("j-1", EXP)), hand));

    let ev = next(K::ExceptionCreated, Outcome::Success);
    let mut hand = ev.clone();
    hand.evidence
        .insert("exception".into(), "db".to_string().into());
    hand.evidence.insert("expires_at".into(), EXP.into());
    hand.evidence
        .insert("allowed".into(), Value::from(strings(&[WEB])));
    out.push((
        "exception_created",
        ev.with(ExceptionCreated::new("db", EXP, strings(&[WEB]))),
        hand,
    ));

    let ev = next(K::ExceptionRevoked, Outcome::Success);
    let mut hand = ev.clone();
    hand.evidence
        .insert("exception".into(), "db".to_string().into());
    out.push((
        "exception_revoked",
        ev.with(ExceptionRevoked::new("db")),
        hand,
    ));

    let ev = next(K::SecretReleased, Outcome::Success);
    let mut hand = ev.clone();
    hand.evidence
        .insert("exception".into(), "db".to_string().into());
    hand.evidence.insert("expires_at".into(), EXP.into());
    hand_recipient(&mut hand, 4242, 1000, 100, "/usr/bin/web", SHA);
    let typed = ev.with(SecretReleased::new(
        "db",
        EXP,
        Process::bounded(4242, 1000, 100, "/usr/bin/web", SHA),
    ));
    out.push(("secret_released", typed, hand));

    // secret_refused, with an unknown process (nothing but the name).
    let ev = next(K::SecretRefused, Outcome::Denied);
    let mut hand = ev.clone();
    hand.evidence
        .insert("exception".into(), "nope".to_string().into());
    hand_recipient(&mut hand, 0, 0, 0, "", "not-hex");
    let typed = ev.with(SecretRefused::new(
        "nope",
        Process::bounded(0, 0, 0, "", "not-hex"),
    ));
    out.push(("secret_refused", typed, hand));

    // authz_decision: server (with a task), agent-reported, dropped reports.
    let ev = next(K::AuthzDecision, Outcome::Success);
    let mut hand = ev.clone();
    {
        let e = &mut hand.evidence;
        e.insert("via".into(), "authzen".into());
        e.insert("action".into(), "call_tool".to_string().into());
        e.insert("resource_type".into(), "tool".to_string().into());
        e.insert("resource_id".into(), "search".to_string().into());
        e.insert("task_txn".into(), "txn-1".to_string().into());
        e.insert("task_agent".into(), AGENT.to_string().into());
        e.insert("acting_for".into(), WEB.to_string().into());
    }
    let typed = ev.with(
        AuthzDecision::new("authzen", "call_tool", "tool", "search").task("txn-1", AGENT, WEB),
    );
    out.push(("authz_decision", typed, hand));
    let ev = next(K::AuthzDecision, Outcome::Denied);
    let mut hand = ev.clone();
    {
        let e = &mut hand.evidence;
        e.insert("via".into(), "agent".into());
        e.insert("action".into(), "read".to_string().into());
        e.insert("resource_type".into(), "order".to_string().into());
        e.insert("resource_id".into(), "o-1".to_string().into());
        e.insert("agent".into(), AGENT.to_string().into());
        e.insert("decision_id".into(), "d-1".to_string().into());
        e.insert("policy_version".into(), 2_i64.into());
        e.insert("decided_at_ms".into(), 1_800_000_000_456_i64.into());
    }
    let typed = ev.with(
        AuthzDecision::new("agent", "read", "order", "o-1").reported(
            AGENT,
            "d-1",
            2,
            1_800_000_000_456,
        ),
    );
    out.push(("authz_decision/agent", typed, hand));
    let ev = next(K::AuthzDecision, Outcome::Failure);
    let mut hand = ev.clone();
    hand.evidence.insert("dropped".into(), 3_u64.into());
    hand.evidence.insert("via".into(), "agent".into());
    hand.evidence
        .insert("agent".into(), AGENT.to_string().into());
    out.push((
        "authz_decision/dropped",
        ev.with(ReportsDropped::new(3).by_agent(AGENT)),
        hand,
    ));

    // token_exchanged: the refused accumulator, then the issued token.
    let ev = next(K::TokenExchanged, Outcome::Success);
    let chain = strings(&[AGENT]);
    let mut hand = ev.clone();
    {
        let mut refused: BTreeMap<String, Value> = BTreeMap::new();
        refused.insert("subject_jti".into(), "j-1".to_string().into());
        refused.insert("actor_jti".into(), "j-2".to_string().into());
        refused.insert(
            "audience".into(),
            "spiffe://example.org/db".to_string().into(),
        );
        hand.evidence = refused;
        hand.evidence.insert("jti".into(), "x-1".into());
        hand.evidence
            .insert("scope".into(), strings(&["read", "list"]).join(" ").into());
        hand.evidence.insert("expires_at".into(), EXP.into());
        hand.evidence.insert("chain".into(), json!(chain));
        hand.evidence
            .insert("scopes_not_granted".into(), json!(["write"]));
    }
    let typed = ev.with(TokenExchanged {
        subject_jti: "j-1".to_string(),
        actor_jti: Some("j-2".to_string()),
        audience: "spiffe://example.org/db".to_string(),
        jti: "x-1".to_string(),
        scope: "read list".to_string(),
        expires_at: EXP,
        chain,
        scopes_not_granted: Some(strings(&["write"])),
    });
    out.push(("token_exchanged", typed, hand));

    // token_exchange_refused: filled step by step.
    let mut typed = next(K::TokenExchangeRefused, Outcome::Denied);
    typed.reason = Some("invalid_scope: no requested scope is allowed".to_string());
    typed.decision = Some("deny".to_string());
    let mut hand = typed.clone();
    hand.evidence
        .insert("subject_jti".into(), "j-1".to_string().into());
    hand.evidence.insert(
        "audience".into(),
        "spiffe://example.org/db".to_string().into(),
    );
    typed.merge_evidence(TokenExchangeRefused::subject_jti("j-1"));
    typed.merge_evidence(TokenExchangeRefused::audience("spiffe://example.org/db"));
    out.push(("token_exchange_refused", typed, hand));

    // task_token_issued for a person: the accumulator becomes the evidence.
    let mut refused = next(K::TokenExchangeRefused, Outcome::Denied);
    let mut ev = next(K::TaskTokenIssued, Outcome::Success);
    ev.trace_id = Some("txn-1".to_string());
    let mut hand = ev.clone();
    {
        let mut r: BTreeMap<String, Value> = BTreeMap::new();
        r.insert(
            "person_issuer".into(),
            "https://idp.example".to_string().into(),
        );
        r.insert("purpose".into(), "summarize-tickets".to_string().into());
        r.insert("tools".into(), json!(strings(&["search", "read"])));
        hand.evidence
            .insert("person_issuer".into(), "https://idp.example".into());
        hand.evidence = r;
        hand.evidence.insert("txn".into(), "txn-1".into());
        hand.evidence.insert("jti".into(), "t-1".into());
        hand.evidence.insert("expires_at".into(), EXP.into());
    }
    refused.merge_evidence(TokenExchangeRefused::person_issuer("https://idp.example"));
    refused.merge_evidence(TokenExchangeRefused::task(
        "summarize-tickets",
        strings(&["search", "read"]),
    ));
    let acc: TokenExchangeRefused = refused
        .evidence_as()
        .unwrap_or_else(|_| TokenExchangeRefused::default());
    let typed = ev.with(acc.task_token_issued("txn-1", "t-1", EXP));
    out.push(("task_token_issued", typed, hand));

    // node_attestation_refused: a verifier refused a token.
    let ev = next(K::NodeAttestationRefused, Outcome::Denied);
    let mut hand = ev.clone();
    hand.evidence
        .insert("attestation_type".into(), "jwt".into());
    hand.evidence
        .insert("refusal".into(), "wrong_audience".into());
    out.push((
        "node_attestation_refused",
        ev.with(NodeAttestationRefused::new("jwt", "wrong_audience")),
        hand,
    ));

    // server_joined, server_deregistered: a server's authorities.
    for (label, kind) in [
        ("server_joined", K::ServerJoined),
        ("server_deregistered", K::ServerDeregistered),
    ] {
        let ev = next(kind, Outcome::Success);
        let mut hand = ev.clone();
        hand.evidence.insert("server".into(), "server-2".into());
        hand.evidence
            .insert("authorities".into(), json!(["0a1b", "kid-1"]));
        out.push((
            label,
            ev.with(ServerChanged::new(
                "server-2",
                vec!["0a1b".to_string(), "kid-1".to_string()],
            )),
            hand,
        ));
    }

    // key_stored: a key sealed under the KEK entered the datastore.
    let ev = next(K::KeyStored, Outcome::Success);
    let mut hand = ev.clone();
    hand.evidence.insert("name".into(), "secrets".into());
    hand.evidence
        .insert("kek_id".into(), "0011223344556677".into());
    out.push((
        "key_stored",
        ev.with(KeyStored::new("secrets", "0011223344556677")),
        hand,
    ));
    out
}

/// (label, canonical encoding, chain hash), in chain order from the genesis hash.
const GOLDEN: &[(&str, &str, &str)] = &[
    (
        "node_attested",
        r#"{"version":1,"id":"00000000000000000000000000000001","time":1800000000001,"kind":"node_attested","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"attestation_type":"join_token","expires_at":1800003600,"selectors":["join_token:n1","unix:uid:0"],"serial":"5f0c2a9e77d14b3c8a6e0b1d2c3f4a5b"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "f2af9f275b264db370059dc410c95aabf886607f2d04ab59302152847c36651e",
    ),
    (
        "node_refused",
        r#"{"version":1,"id":"00000000000000000000000000000002","time":1800000000002,"kind":"node_refused","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"attestation_type":"join_token"},"policy_ids":[],"decision":null,"outcome":"denied","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "7ff5d0f64d719f107690d24607b1063ace0970de445f3c6d55912232a460cf0f",
    ),
    (
        "node_refused/empty",
        r#"{"version":1,"id":"00000000000000000000000000000003","time":1800000000003,"kind":"node_refused","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{},"policy_ids":[],"decision":null,"outcome":"denied","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "877ca415d59986ef6677a576303d3c0b9e631944fa7e7ecfe269d39dc7f6dca5",
    ),
    (
        "agent_svid_issued",
        r#"{"version":1,"id":"00000000000000000000000000000004","time":1800000000004,"kind":"agent_svid_issued","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"expires_at":1800003600,"serial":"5f0c2a9e77d14b3c8a6e0b1d2c3f4a5b"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "3c5107cd4fe844f121fcc78e1287344b99a6a661f57c792635787a1d5f91aabf",
    ),
    (
        "agent_svid_renewed",
        r#"{"version":1,"id":"00000000000000000000000000000005","time":1800000000005,"kind":"agent_svid_renewed","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"expires_at":1800003600,"serial":"5f0c2a9e77d14b3c8a6e0b1d2c3f4a5b"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "e14180cd1bbc79a2826fc8c694f923a540adce896cb557706ca8027067cba817",
    ),
    (
        "agent_clone_suspected",
        r#"{"version":1,"id":"00000000000000000000000000000006","time":1800000000006,"kind":"agent_clone_suspected","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"current_serial":"5f0c2a9e77d14b3c8a6e0b1d2c3f4a5b","presented_serial":"0a0b","superseded_count":2},"policy_ids":[],"decision":null,"outcome":"denied","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "c587dec0a8fe3230ccdec25284016fe6cf46a167e021fe0bee889ceedf8e343d",
    ),
    (
        "x509_svid_issued",
        r#"{"version":1,"id":"00000000000000000000000000000007","time":1800000000007,"kind":"x509_svid_issued","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"entry_id":"e-1","expires_at":1800003600,"public_key_sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","selectors":["unix:uid:1000"],"serial":"5f0c2a9e77d14b3c8a6e0b1d2c3f4a5b"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "46f4ff653392f33ab1d17c50561ea184a8accdab3249b6bd0c22b2bbf752e66a",
    ),
    (
        "jwt_svid_issued",
        r#"{"version":1,"id":"00000000000000000000000000000008","time":1800000000008,"kind":"jwt_svid_issued","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"audience":["db","cache"],"expires_at":1800003600,"jti":"j-1","kid":"k-1"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "f9d7cdfd96d832d7f5c79b6ce6b42ba0c2e730ee7fe07d1f694b1455246eee37",
    ),
    (
        "workload_svid_delivered/x509",
        r#"{"version":1,"id":"00000000000000000000000000000009","time":1800000000009,"kind":"workload_svid_delivered","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"delivered_at_ms":1800000000123,"gid":100,"path":"/usr/bin/web","pid":4242,"serial":"5f0c2a9e77d14b3c8a6e0b1d2c3f4a5b","sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","svid_type":"x509","uid":1000},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "e155a9de99f6b49413821f905bb52b60e1adfd4eeb57a19d7738c533cadabeac",
    ),
    (
        "workload_svid_delivered/jwt",
        r#"{"version":1,"id":"0000000000000000000000000000000a","time":1800000000010,"kind":"workload_svid_delivered","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"audience":["db"],"delivered_at_ms":1800000000123,"gid":100,"jti":"j-1","pid":4242,"svid_type":"jwt","uid":1000},"policy_ids":[],"decision":null,"outcome":"denied","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "8d1eec550d914ff9299f77226a16e6a47abdc7caa306c3ac8922ee92ad10b54d",
    ),
    (
        "workload_svid_delivered/dropped",
        r#"{"version":1,"id":"0000000000000000000000000000000b","time":1800000000011,"kind":"workload_svid_delivered","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"dropped":7},"policy_ids":[],"decision":null,"outcome":"failure","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "3b298f6e0afd983cfb825ff71330333fa30fdb2a2ecaec216f9b0274b3908e34",
    ),
    (
        "entry_created",
        r#"{"version":1,"id":"0000000000000000000000000000000c","time":1800000000012,"kind":"entry_created","actor":"uid:1000","subject":"spiffe://example.org/web","evidence":{"entry_id":"e-1","parent_id":"spiffe://example.org/lanyard/agent/join_token/n1","revision":3,"selectors":["unix:uid:1000","unix:path:/usr/bin/web"]},"policy_ids":["allow-web"],"decision":"allow","outcome":"success","reason":null,"owner":"team-web","trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "94a96dd3eb6fe83b6f9a744b4bbc473ba472fc270d62857d0b40585bf1cd0de4",
    ),
    (
        "entry_updated",
        r#"{"version":1,"id":"0000000000000000000000000000000d","time":1800000000013,"kind":"entry_updated","actor":"uid:1000","subject":"spiffe://example.org/web","evidence":{"entry_id":"e-1","parent_id":"spiffe://example.org/lanyard/agent/join_token/n1","revision":3,"selectors":["unix:uid:1000","unix:path:/usr/bin/web"]},"policy_ids":["allow-web"],"decision":"allow","outcome":"success","reason":null,"owner":"team-web","trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "ab592e042a57ebc547ced2d76fe270d7b015090019428974e81321e511f1292e",
    ),
    (
        "entry_deleted",
        r#"{"version":1,"id":"0000000000000000000000000000000e","time":1800000000014,"kind":"entry_deleted","actor":"uid:1000","subject":"spiffe://example.org/web","evidence":{"entry_id":"e-1","parent_id":"spiffe://example.org/lanyard/agent/join_token/n1","revision":3,"selectors":["unix:uid:1000","unix:path:/usr/bin/web"]},"policy_ids":["allow-web"],"decision":"allow","outcome":"success","reason":null,"owner":"team-web","trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "7404d6676be756da40079e418d1bfe09ee368203a7e66f1f82b4ca47af80e5c8",
    ),
    (
        "entry_refused",
        r#"{"version":1,"id":"0000000000000000000000000000000f","time":1800000000015,"kind":"entry_refused","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"action":"create_entry"},"policy_ids":["no-root"],"decision":"deny","outcome":"denied","reason":"forbidden by no-root","owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "4c7c04643f5c71a30d6e81c04081a614ebad7e8dec4ebc9014b9535dd9f9be72",
    ),
    (
        "token_created",
        r#"{"version":1,"id":"00000000000000000000000000000010","time":1800000000016,"kind":"token_created","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"expires_at":1800003600,"token_hash_prefix":"9f86d081884c7d65"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "ac0e9832a53ac3461127a271bb1ade20bd2b4581970d0dda6038094246012082",
    ),
    (
        "agent_banned",
        r#"{"version":1,"id":"00000000000000000000000000000011","time":1800000000017,"kind":"agent_banned","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"attestation_type":"x509pop"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "f6a770ba5742f2a5cf06e293d70328f1cbb5564132f8fa867c446c6bb66c609f",
    ),
    (
        "agent_evicted",
        r#"{"version":1,"id":"00000000000000000000000000000012","time":1800000000018,"kind":"agent_evicted","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"attestation_type":"x509pop"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "b6e63c21c28d104a34e712492eb32a62341bea88d9648774add1b7b80eac4500",
    ),
    (
        "ca_key_prepared",
        r#"{"version":1,"id":"00000000000000000000000000000013","time":1800000000019,"kind":"ca_key_prepared","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"slot":"B"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "971c2457c1ed8c9391577be69fbd0dcb3f083b76c0b0586768a2cec257936351",
    ),
    (
        "ca_key_activated",
        r#"{"version":1,"id":"00000000000000000000000000000014","time":1800000000020,"kind":"ca_key_activated","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"slot":"B"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "bb7a6e03102ceacf455df3f045ad69101ee19cf4b70876943eaa489ee30718af",
    ),
    (
        "ca_key_retired",
        r#"{"version":1,"id":"00000000000000000000000000000015","time":1800000000021,"kind":"ca_key_retired","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"slot":"B"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "e66aa8a932b893fe4f41d6feb575162f88851478110113d28ee59aed2296945b",
    ),
    (
        "ca_key_tainted",
        r#"{"version":1,"id":"00000000000000000000000000000016","time":1800000000022,"kind":"ca_key_tainted","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"slot":"B"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "042511f4088bf1ec3adb620d3f82e1f41bdcff1bf2befa2bd437a184b32c7455",
    ),
    (
        "bundle_changed",
        r#"{"version":1,"id":"00000000000000000000000000000017","time":1800000000023,"kind":"bundle_changed","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"sequence":12},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "06afdc4f74c31852461f8b36f526a4ffd424ede704e18759d03236b07a2131dc",
    ),
    (
        "admin_call_refused",
        r#"{"version":1,"id":"00000000000000000000000000000018","time":1800000000024,"kind":"admin_call_refused","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"action":"ban_agent"},"policy_ids":[],"decision":null,"outcome":"denied","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "e881b3613b2e985cda53e9cb191653d069857d110aa9aa60f925027231d8ef08",
    ),
    (
        "admin_call_refused/not_admin",
        r#"{"version":1,"id":"00000000000000000000000000000019","time":1800000000025,"kind":"admin_call_refused","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{},"policy_ids":[],"decision":null,"outcome":"denied","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "8f3022cca9f204a1917ba80b01fc08bc3714708c90b791606babb07af1dcdfa7",
    ),
    (
        "policy_changed",
        r#"{"version":1,"id":"0000000000000000000000000000001a","time":1800000000026,"kind":"policy_changed","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"allowed_by":["admins-set-policy"],"kind":"registration","sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","version":4},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "ad6979626e2afc56a303afb813cc4370dd284d8d59bf7b9f4de99f3f864a36b1",
    ),
    (
        "jwt_revoked",
        r#"{"version":1,"id":"0000000000000000000000000000001b","time":1800000000027,"kind":"jwt_revoked","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"expires_at":1800003600,"jti":"j-1"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "d7dcf582dc314397454df8f05d34199a78bf4a196f7eed6503059f4bcbe008eb",
    ),
    (
        "exception_created",
        r#"{"version":1,"id":"0000000000000000000000000000001c","time":1800000000028,"kind":"exception_created","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"allowed":["spiffe://example.org/web"],"exception":"db","expires_at":1800003600},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "6c3db7cfd56f0de93b92be9c71187ca57e6528877840de4732c939fb66b672cc",
    ),
    (
        "exception_revoked",
        r#"{"version":1,"id":"0000000000000000000000000000001d","time":1800000000029,"kind":"exception_revoked","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"exception":"db"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "31629cd1ed8902eb0973dc27c6a29fc7f01345f1b33e04632767c24a33708bf6",
    ),
    (
        "secret_released",
        r#"{"version":1,"id":"0000000000000000000000000000001e","time":1800000000030,"kind":"secret_released","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"exception":"db","expires_at":1800003600,"gid":100,"path":"/usr/bin/web","pid":4242,"sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","uid":1000},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "2791aba5f4bc55d31db3f8ea50aee62e0ab7689bc5c7d37d470387015504228c",
    ),
    (
        "secret_refused",
        r#"{"version":1,"id":"0000000000000000000000000000001f","time":1800000000031,"kind":"secret_refused","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"exception":"nope"},"policy_ids":[],"decision":null,"outcome":"denied","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "c5cdea2fd5fb9afcdc6485ddac77e5df251f701cde4acecf5297a695b3518f78",
    ),
    (
        "authz_decision",
        r#"{"version":1,"id":"00000000000000000000000000000020","time":1800000000032,"kind":"authz_decision","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"acting_for":"spiffe://example.org/web","action":"call_tool","resource_id":"search","resource_type":"tool","task_agent":"spiffe://example.org/lanyard/agent/join_token/n1","task_txn":"txn-1","via":"authzen"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "5e22596d0d3e5edc2b3cef1352ad966403eaeebedcdd6f6dff392750c78ac394",
    ),
    (
        "authz_decision/agent",
        r#"{"version":1,"id":"00000000000000000000000000000021","time":1800000000033,"kind":"authz_decision","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"action":"read","agent":"spiffe://example.org/lanyard/agent/join_token/n1","decided_at_ms":1800000000456,"decision_id":"d-1","policy_version":2,"resource_id":"o-1","resource_type":"order","via":"agent"},"policy_ids":[],"decision":null,"outcome":"denied","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "82a2bb79eb3565ab1b0b6c77ac8b6b6111d245ca5ad69a929b937d1832d558e9",
    ),
    (
        "authz_decision/dropped",
        r#"{"version":1,"id":"00000000000000000000000000000022","time":1800000000034,"kind":"authz_decision","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"agent":"spiffe://example.org/lanyard/agent/join_token/n1","dropped":3,"via":"agent"},"policy_ids":[],"decision":null,"outcome":"failure","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "79d0f679cc828e38014c45927b1192184fa29e0560f15349135ad6881724e625",
    ),
    (
        "token_exchanged",
        r#"{"version":1,"id":"00000000000000000000000000000023","time":1800000000035,"kind":"token_exchanged","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"actor_jti":"j-2","audience":"spiffe://example.org/db","chain":["spiffe://example.org/lanyard/agent/join_token/n1"],"expires_at":1800003600,"jti":"x-1","scope":"read list","scopes_not_granted":["write"],"subject_jti":"j-1"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "b624c0ac0bdb975fba920c6587fcf293baaba644c68d4711c1f6cab4c005c42d",
    ),
    (
        "token_exchange_refused",
        r#"{"version":1,"id":"00000000000000000000000000000024","time":1800000000036,"kind":"token_exchange_refused","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"audience":"spiffe://example.org/db","subject_jti":"j-1"},"policy_ids":[],"decision":"deny","outcome":"denied","reason":"invalid_scope: no requested scope is allowed","owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "0e7c989f1aa6e2bebf52e6d983e382a2723b25eac139b56dce3e4eb6e559669d",
    ),
    (
        "task_token_issued",
        r#"{"version":1,"id":"00000000000000000000000000000026","time":1800000000038,"kind":"task_token_issued","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"expires_at":1800003600,"jti":"t-1","person_issuer":"https://idp.example","purpose":"summarize-tickets","tools":["search","read"],"txn":"txn-1"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":"txn-1","parent_id":null,"server_id":"server-1"}"#,
        "3ee52bb1ac7040da50bc8a890314b467e885867572000b4aac2ae992d5e44969",
    ),
    (
        "node_attestation_refused",
        r#"{"version":1,"id":"00000000000000000000000000000027","time":1800000000039,"kind":"node_attestation_refused","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"attestation_type":"jwt","refusal":"wrong_audience"},"policy_ids":[],"decision":null,"outcome":"denied","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "34ffc9d662259b95b97d8e183c029ca423d7774ac4d8f9ba78ef43afdd35dd1c",
    ),
    (
        "server_joined",
        r#"{"version":1,"id":"00000000000000000000000000000028","time":1800000000040,"kind":"server_joined","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"authorities":["0a1b","kid-1"],"server":"server-2"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "81186ac69be9663c192a1c1d58651b944f43e86aacb5e2e0021f0f4a460ea274",
    ),
    (
        "server_deregistered",
        r#"{"version":1,"id":"00000000000000000000000000000029","time":1800000000041,"kind":"server_deregistered","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"authorities":["0a1b","kid-1"],"server":"server-2"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "9fa8e02b39856a001736a04a4b9060bc3579a59201ea7449c4673a0d3c4189e2",
    ),
    (
        "key_stored",
        r#"{"version":1,"id":"0000000000000000000000000000002a","time":1800000000042,"kind":"key_stored","actor":"spiffe://example.org/lanyard/agent/join_token/n1","subject":"spiffe://example.org/web","evidence":{"kek_id":"0011223344556677","name":"secrets"},"policy_ids":[],"decision":null,"outcome":"success","reason":null,"owner":null,"trace_id":null,"parent_id":null,"server_id":"server-1"}"#,
        "61669e2668c39fea3b2e701d355e909e84d71826dd14956bd692e7b6611e7f51",
    ),
];

#[test]
fn typed_events_equal_hand_built_ones_byte_for_byte() {
    for (label, typed, hand) in cases() {
        let a = canonical(&typed).unwrap();
        let b = canonical(&hand).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b),
            "{label}"
        );
        assert_eq!(typed, hand, "{label}");
    }
}

#[test]
fn every_kind_has_a_case_and_every_case_checks() {
    let cases = cases();
    for (label, typed, _) in &cases {
        typed
            .check_evidence()
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert!(
            !typed.evidence.contains_key("evidence_error"),
            "{label}: {:?}",
            typed.evidence
        );
    }
    let all: Vec<EventKind> = serde_json::from_value(json!([
        "node_attested",
        "node_refused",
        "agent_svid_issued",
        "agent_svid_renewed",
        "x509_svid_issued",
        "jwt_svid_issued",
        "entry_created",
        "entry_updated",
        "entry_deleted",
        "token_created",
        "agent_banned",
        "agent_evicted",
        "ca_key_prepared",
        "ca_key_activated",
        "ca_key_retired",
        "bundle_changed",
        "admin_call_refused",
        "workload_svid_delivered",
        "entry_refused",
        "policy_changed",
        "jwt_revoked",
        "ca_key_tainted",
        "exception_created",
        "exception_revoked",
        "secret_released",
        "secret_refused",
        "authz_decision",
        "token_exchanged",
        "token_exchange_refused",
        "task_token_issued",
        "agent_clone_suspected",
        "node_attestation_refused",
        "server_joined",
        "server_deregistered",
        "key_stored"
    ]))
    .unwrap();
    for k in all {
        assert!(
            cases.iter().any(|(_, e, _)| e.kind == k),
            "no golden case for {}",
            k.name()
        );
    }
}

#[test]
fn golden_encodings_and_hashes() {
    let cases = cases();
    assert_eq!(cases.len(), GOLDEN.len(), "a case was added or removed");
    let mut chain = Chain::default();
    for ((label, typed, _), (glabel, encoding, hash)) in cases.into_iter().zip(GOLDEN) {
        assert_eq!(label, *glabel);
        let (record, encoded) = chain.append_encoded(typed).unwrap();
        assert_eq!(String::from_utf8_lossy(&encoded), *encoding, "{label}");
        assert_eq!(record.hash, *hash, "{label}");
    }
}

#[test]
#[ignore = "prints the golden constants for a new case"]
fn golden_print() {
    let mut chain = Chain::default();
    println!("const GOLDEN: &[(&str, &str, &str)] = &[");
    for (label, typed, _) in cases() {
        let (record, encoded) = chain.append_encoded(typed).unwrap();
        let enc = String::from_utf8_lossy(&encoded).to_string();
        println!(
            "    (\n        {label:?},\n        r#\"{enc}\"#,\n        {:?},\n    ),",
            record.hash
        );
    }
    println!("];");
}

#[test]
fn typed_reading() {
    let cases = cases();
    let find = |label: &str| {
        cases
            .iter()
            .find(|(l, _, _)| *l == label)
            .map(|(_, e, _)| e.clone())
            .unwrap()
    };
    // Round trip.
    let ev = find("jwt_revoked");
    assert_eq!(
        ev.evidence_as::<JwtRevoked>().unwrap(),
        JwtRevoked::new("j-1", EXP)
    );
    let ev = find("secret_released");
    let r: SecretReleased = ev.evidence_as().unwrap();
    assert_eq!(r.process.pid, Some(4242));
    assert_eq!(r.process.path.as_deref(), Some("/usr/bin/web"));
    // Views: the issued token of every kind that issues one, the last recipient.
    for label in ["jwt_svid_issued", "token_exchanged", "task_token_issued"] {
        let t: IssuedToken = find(label).evidence_as().unwrap();
        assert_eq!(t.expires_at, Some(EXP), "{label}");
    }
    let p: Process = find("workload_svid_delivered/x509").evidence_as().unwrap();
    assert_eq!((p.pid, p.uid), (Some(4242), Some(1000)));
    // The wrong kind, the wrong shape.
    let e = find("jwt_revoked")
        .evidence_as::<IssuedToken>()
        .unwrap_err();
    assert!(matches!(e, EvidenceError::WrongKind { .. }), "{e}");
    assert!(e.to_string().contains("jwt_svid_issued"), "{e}");
    let e = find("workload_svid_delivered/dropped")
        .evidence_as::<WorkloadSvidDelivered>()
        .unwrap_err();
    assert!(matches!(e, EvidenceError::Shape { .. }), "{e}");
}

#[test]
fn check_evidence_refuses_extra_keys_and_other_types() {
    let mut ev = base(1, EventKind::JwtRevoked, Outcome::Success).with(JwtRevoked::new("j", EXP));
    ev.check_evidence().unwrap();
    // A serial-like number where a string belongs, an expiry as a string.
    let mut bad = ev.clone();
    bad.evidence
        .insert("expires_at".into(), EXP.to_string().into());
    assert!(matches!(
        bad.check_evidence(),
        Err(EvidenceError::Shape { .. })
    ));
    // A key the schema does not have.
    ev.evidence.insert("note".into(), "x".into());
    assert!(matches!(
        ev.check_evidence(),
        Err(EvidenceError::NotExact { .. })
    ));
    // Evidence of another kind.
    let ev = base(1, EventKind::JwtRevoked, Outcome::Success).with(CaKeyStep::new("A"));
    assert!(ev.check_evidence().is_err());
    // merge keeps what is there; set replaces it.
    let mut ev = base(1, EventKind::TokenExchangeRefused, Outcome::Denied);
    ev.merge_evidence(TokenExchangeRefused::subject_jti("a"));
    ev.merge_evidence(TokenExchangeRefused::actor_jti("b"));
    assert_eq!(ev.evidence.len(), 2);
    ev.set_evidence(TokenExchangeRefused::audience("c"));
    assert_eq!(
        serde_json::to_string(&ev.evidence).unwrap(),
        r#"{"audience":"c"}"#
    );
}

#[test]
fn process_is_bounded() {
    let long = "p".repeat(MAX_PATH + 1);
    let p = Process::bounded(-1, 5, 6, &long, &SHA[..63]);
    assert_eq!(p, Process::default());
    let p = Process::bounded(1, 0, 0, "/x", SHA);
    assert_eq!(
        serde_json::to_string(&p).unwrap(),
        format!(r#"{{"pid":1,"uid":0,"gid":0,"path":"/x","sha256":"{SHA}"}}"#)
    );
}
