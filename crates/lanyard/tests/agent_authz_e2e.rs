//! End-to-end agent-local runtime authorization with `lanyard dev`: the agent serves
//! the AuthZEN evaluation API with the authz policy the server syncs to it, applies
//! a policy change within seconds, authenticates callers by JWT-SVIDs for the
//! issuer, verifies task tokens with the synced token key, and every decision it
//! makes reaches the server's evidence log (`via: agent`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Dev, eval, http, jwt, post_json, raw};
use serde_json::{Value, json};

const ISSUER: &str = "https://example.org";
const AGENT_ID: &str = "spiffe://example.org/lanyard/agent/dev";

const RULES: &str = r#"
@id("registered-read-catalog")
@reason("registered workloads may read the catalog")
permit (principal, action == Action::"read", resource)
when { principal.registered && resource.type == "catalog" };

@id("agents-start-tasks")
@reason("agents may start tasks with the ticket tools")
permit (principal, action == Action::"start_task", resource)
when { principal.path like "/agents/*" && ["search", "delete_ticket"].contains(resource.id) };

@id("agents-call-tools")
@reason("agents call tools within a task")
permit (principal, action == Action::"call_tool", resource)
when { context has task };
"#;

/// The one rule that changes: web may `action` orders.
fn web_may(action: &str) -> String {
    format!(
        "@id(\"web-{action}s-orders\")\n@reason(\"web may {action} orders\")\npermit (principal, action == Action::\"{action}\", resource)\nwhen {{ principal.path == \"/web\" && resource.type == \"orders\" }};"
    )
}

/// A decision that must be answered (200).
async fn evaluate(base: &str, bearer: &str, q: &Value) -> Value {
    let (s, body) = post_json(
        base,
        "/access/v1/evaluation",
        Some(bearer),
        q.to_string().as_bytes(),
    )
    .await;
    assert_eq!(s, 200, "{q} -> {body}");
    body
}

/// Ask the listener at `base` until its answer to `q` is `want`; how long that took.
async fn until_says(base: &str, bearer: &str, q: &Value, want: bool) -> Duration {
    let started = Instant::now();
    loop {
        let body = evaluate(base, bearer, q).await;
        if body["decision"] == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{base} still answers {body} to {q}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Agent decisions in the evidence log, by decision id (waits for `ids`).
async fn agent_events(dev: &Dev, ids: &[&str]) -> Vec<Value> {
    for _ in 0..100 {
        let out = dev.ok(&[
            "audit",
            "query",
            "--data-dir",
            dev.dir.to_str().unwrap(),
            "--kind",
            "authz_decision",
            "--output",
            "json",
        ]);
        let records: Vec<Value> = serde_json::from_str(&out).unwrap();
        let events: Vec<Value> = records
            .into_iter()
            .map(|r| r["event"].clone())
            .filter(|e| e["evidence"]["via"] == "agent")
            .collect();
        if ids
            .iter()
            .all(|id| events.iter().any(|e| e["evidence"]["decision_id"] == *id))
        {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("agent decisions {ids:?} not in the evidence log");
}

fn event<'a>(events: &'a [Value], decision_id: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["evidence"]["decision_id"] == decision_id)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_decides_locally_with_the_synced_policy_and_reports_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    for p in ["/web", "/pep", "/agents/helper"] {
        dev.entry(p, AGENT_ID, "team-a");
    }
    // Registered on the server, but served by another agent.
    dev.entry(
        "/remote-job",
        "spiffe://example.org/lanyard/agent/other",
        "team-b",
    );
    let mut c = raw(&dev).await;
    let pep = jwt(&mut c, "/pep", ISSUER).await;
    let ask = async |q: Value| evaluate(&dev.agent_authzen, &pep, &q).await;
    let read_orders = eval("/web", "read", "orders", "o-1");
    // Before any policy is set, the shipped default denies.
    until_says(&dev.agent_authzen, &pep, &read_orders, false).await;

    // The policy reaches the agent within a few seconds.
    dev.set_authz_policy(&format!("{RULES}\n{}", web_may("read")));
    let took = until_says(&dev.agent_authzen, &pep, &read_orders, true).await;
    assert!(
        took < Duration::from_secs(5),
        "policy applied after {took:?}"
    );
    let permit = ask(read_orders.clone()).await;
    assert_eq!(permit["context"]["policy_ids"], json!(["web-reads-orders"]));
    let permit_id = permit["context"]["decision_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(permit_id.len(), 32);

    // Deny: another action, another workload.
    let deny = ask(eval("/web", "write", "orders", "o-1")).await;
    assert_eq!(deny["decision"], false, "{deny}");
    assert!(
        deny["context"]["reason"]
            .as_str()
            .unwrap()
            .contains("deny by default"),
        "{deny}"
    );
    let deny_id = deny["context"]["decision_id"].as_str().unwrap().to_string();
    let other = ask(eval("/pep", "read", "orders", "o-1")).await;
    assert_eq!(other["decision"], false, "{other}");

    // Facts come from the entries this agent serves: /remote-job is registered on
    // the server but unknown here.
    let catalog = |who: &str| eval(who, "read", "catalog", "c-1");
    let body = ask(catalog("/web")).await;
    assert_eq!(body["decision"], true, "{body}");
    let body = ask(catalog("/remote-job")).await;
    assert_eq!(body["decision"], false, "{body}");
    let body = evaluate(&dev.http, &pep, &catalog("/remote-job")).await;
    assert_eq!(body["decision"], true, "{body}");

    // The same API as the server's: callers authenticate with a JWT-SVID for the
    // issuer (401 otherwise), malformed questions get 400, batches.
    let wrong = jwt(&mut c, "/pep", "some-other-service").await;
    common::authzen_conformance(&dev.agent_authzen, &pep, &wrong, ISSUER).await;

    // Task tokens from the server's token endpoint verify on the agent.
    let helper = jwt(&mut c, "/agents/helper", ISSUER).await;
    let form = format!(
        "grant_type={}&requested_token_type={}&subject_token={helper}&subject_token_type={}&scope=triage&tools=search",
        "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange",
        "urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Atxn_token",
        "urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt",
    );
    let (s, text) = http(
        "POST",
        &dev.http,
        "/oauth2/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
    .await;
    assert_eq!(s, 200, "{text}");
    let task = serde_json::from_str::<Value>(&text).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let call = |tool: &str, token: &str| {
        json!({
            "subject": {"type": "workload", "id": "spiffe://example.org/agents/helper"},
            "action": {"name": "call_tool"},
            "resource": {"type": "tool", "id": tool},
            "context": {"task_token": token}
        })
    };
    let body = ask(call("search", &task)).await;
    assert_eq!(body["decision"], true, "{body}");
    let task_id = body["context"]["decision_id"].as_str().unwrap().to_string();
    let body = ask(call("delete_ticket", &task)).await;
    assert_eq!(body["decision"], false, "{body}");
    assert_eq!(body["context"]["policy_ids"], json!(["task-tools-only"]));
    // A tampered token (another signature) is refused.
    let (head, _) = task.rsplit_once('.').unwrap();
    let forged = format!("{head}.AAAA");
    let body = ask(call("search", &forged)).await;
    assert_eq!(body["decision"], false, "{body}");
    assert!(
        body["context"]["reason"]
            .as_str()
            .unwrap()
            .contains("task token is not accepted"),
        "{body}"
    );

    // Revoking the task token (`jwt revoke --jti`) reaches the agent within seconds.
    dev.ok(&["jwt", "revoke", "--jti", &common::jti_of(&task)]);
    for base in [&dev.agent_authzen, &dev.http] {
        let took = until_says(base, &pep, &call("search", &task), false).await;
        assert!(took < Duration::from_secs(5), "revocation after {took:?}");
        let body = evaluate(base, &pep, &call("search", &task)).await;
        let reason = body["context"]["reason"].as_str().unwrap();
        assert!(reason.contains("revoked"), "{base}: {body}");
    }

    // A policy change flips the agent's answers within seconds.
    dev.set_authz_policy(&format!("{RULES}\n{}", web_may("write")));
    let took = until_says(&dev.agent_authzen, &pep, &read_orders, false).await;
    assert!(
        took < Duration::from_secs(5),
        "policy applied after {took:?}"
    );
    let body = ask(eval("/web", "write", "orders", "o-1")).await;
    assert_eq!(body["decision"], true, "{body}");
    assert_eq!(body["context"]["policy_ids"], json!(["web-writes-orders"]));

    // Every agent decision is in the server's evidence log.
    let events = agent_events(&dev, &[&permit_id, &deny_id, &task_id]).await;
    let pep_id = "spiffe://example.org/pep";
    let e = event(&events, &permit_id);
    assert_eq!(e["actor"], pep_id, "{e}");
    assert_eq!(e["subject"], "spiffe://example.org/web");
    assert_eq!(e["owner"], "team-a");
    assert_eq!(e["evidence"]["agent"], AGENT_ID);
    assert_eq!(e["decision"], "allow");
    assert_eq!(e["policy_ids"], json!(["web-reads-orders"]));
    assert_eq!(e["evidence"]["action"], "read");
    assert_eq!(e["evidence"]["resource_id"], "o-1");
    assert!(e["evidence"]["policy_version"].as_i64().unwrap() >= 1);
    let e = event(&events, &deny_id);
    assert_eq!(
        (e["decision"].as_str(), e["outcome"].as_str()),
        (Some("deny"), Some("denied")),
        "{e}"
    );
    let e = event(&events, &task_id);
    let txn = e["evidence"]["task_txn"].as_str().unwrap();
    assert_eq!(e["trace_id"], txn, "{e}");
    assert_eq!(
        e["evidence"]["task_agent"],
        "spiffe://example.org/agents/helper"
    );
    // And the log still verifies.
    let out = dev.cli(&[
        "audit",
        "verify",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
