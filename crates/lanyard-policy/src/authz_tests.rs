use serde_json::json;

use crate::*;

fn wl(id: &str, owner: &str) -> WorkloadFacts {
    WorkloadFacts {
        spiffe_id: id.to_string(),
        registered: true,
        owner: owner.to_string(),
        environment: "prod".to_string(),
        selectors: vec!["unix:uid:1000".to_string()],
    }
}

fn compile(text: &str) -> CompiledPolicies {
    match CompiledPolicies::compile(PolicyKind::Authz, text) {
        Ok(p) => p,
        Err(e) => panic!("policy should compile: {e}"),
    }
}

fn decide(p: &CompiledPolicies, r: &AuthzRequest) -> Decision {
    match p.evaluate_authz(r) {
        Ok(d) => d,
        Err(e) => panic!("evaluation failed: {e}"),
    }
}

const READS: &str = r#"
@id("web-reads-orders")
@reason("the web frontend reads orders")
permit (
  principal == Workload::"spiffe://example.org/prod/web",
  action == Action::"read",
  resource
) when { resource.type == "orders" };

@id("team-a-writes")
@reason("team-a workloads write their own things")
permit (principal, action in [Action::"write", Action::"delete"], resource)
when { principal.owner == "team-a" && resource.hasTag("team") && resource.getTag("team") == "team-a" };

@id("office-network-only")
@reason("writes only from the office network")
forbid (principal, action == Action::"write", resource)
when { context.request.hasTag("ip") && !(context.request.getTag("ip") like "10.*") };
"#;

#[test]
fn default_authz_policy_denies_everything_by_default() {
    let p = match CompiledPolicies::default_for(PolicyKind::Authz) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(p.policy_ids(), vec!["task-tools-only", "task-agent-only"]);
    let d = decide(
        &p,
        &AuthzRequest::new(wl("spiffe://example.org/web", "a"), "start_task", "x"),
    );
    assert!(!d.allowed);
    assert!(d.explain(PolicyKind::Authz).contains("deny by default"));
}

#[test]
fn permits_name_their_policy_and_others_are_denied() {
    let p = compile(READS);
    assert_eq!(p.actions(), vec!["delete", "read", "write"]);
    let mut r = AuthzRequest::new(wl("spiffe://example.org/prod/web", "web"), "read", "o-1");
    r.target = Target::Resource {
        id: "o-1".into(),
        kind: "orders".into(),
        properties: Default::default(),
    };
    let d = decide(&p, &r);
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policy_ids, vec!["web-reads-orders"]);
    // Another workload, same request: denied.
    r.principal = wl("spiffe://example.org/prod/batch", "web");
    assert!(!decide(&p, &r).allowed);
    // Unknown action: denied, and the reason says so.
    let d = decide(
        &p,
        &AuthzRequest::new(wl("spiffe://example.org/prod/web", "web"), "launch", "o-1"),
    );
    assert!(!d.allowed);
    assert!(
        d.explain(PolicyKind::Authz).contains("\"launch\""),
        "{}",
        d.explain(PolicyKind::Authz)
    );
}

#[test]
fn resource_properties_and_request_context_are_tags() {
    let p = compile(READS);
    let mut r = AuthzRequest::new(wl("spiffe://example.org/a", "team-a"), "write", "doc");
    r.target = Target::Resource {
        id: "doc".into(),
        kind: "document".into(),
        properties: json!({"team": "team-a", "size": 3})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    };
    r.context = json!({"ip": "10.1.2.3", "nested": {"x": 1}})
        .as_object()
        .cloned()
        .unwrap_or_default();
    let d = decide(&p, &r);
    assert!(d.allowed, "{d:?}");
    r.context.insert("ip".into(), json!("192.168.1.1"));
    let d = decide(&p, &r);
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, vec!["office-network-only"]);
    assert!(d.explain(PolicyKind::Authz).contains("office network"));
    // Wrong team tag.
    r.context.insert("ip".into(), json!("10.0.0.1"));
    r.target = Target::Resource {
        id: "doc".into(),
        kind: "document".into(),
        properties: json!({"team": "team-b"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    };
    assert!(!decide(&p, &r).allowed);
}

#[test]
fn task_tokens_bind_tools_and_agent() {
    let text = format!(
        "{}\n{}",
        PolicyKind::Authz.default_policy(),
        r#"
@id("agents-call-tools")
@reason("agents may call tools within a task")
permit (principal, action == Action::"call_tool", resource)
when { principal.path like "/agents/*" && context has task };
"#
    );
    let p = compile(&text);
    let agent = wl("spiffe://example.org/agents/helper", "ai");
    let task = TaskFacts {
        txn: "t-1".into(),
        purpose: "summarize tickets".into(),
        tools: vec!["search".into(), "read_ticket".into()],
        agent: agent.spiffe_id.clone(),
        acting_for: "spiffe://example.org/people/alice".into(),
    };
    let mut r = AuthzRequest::new(agent.clone(), "call_tool", "search");
    r.task = Some(task.clone());
    let d = decide(&p, &r);
    assert!(d.allowed, "{d:?}");
    // A tool the task does not name.
    let mut r2 = AuthzRequest::new(agent.clone(), "call_tool", "delete_ticket");
    r2.task = Some(task.clone());
    let d = decide(&p, &r2);
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, vec!["task-tools-only"]);
    // Another agent presenting this task's token.
    let mut r3 = AuthzRequest::new(
        wl("spiffe://example.org/agents/other", "ai"),
        "call_tool",
        "search",
    );
    r3.task = Some(task);
    let d = decide(&p, &r3);
    assert_eq!(d.policy_ids, vec!["task-agent-only"]);
    // Without a task: no permit.
    assert!(!decide(&p, &AuthzRequest::new(agent, "call_tool", "search")).allowed);
}

#[test]
fn delegation_and_scopes() {
    let p = compile(
        r#"
@id("gateway-acts-for-web")
@reason("the gateway may act for web workloads")
permit (principal == Workload::"spiffe://example.org/gateway", action == Action::"act_for", resource)
when { resource.path like "/web/*" };

@id("web-gets-orders-read")
@reason("web workloads may get orders:read tokens for the orders API")
permit (principal, action == Action::"token_exchange", resource == Resource::"https://orders.example.org")
when { principal.path like "/web/*" && context has scope && context.scope == "orders:read" };
"#,
    );
    let gw = wl("spiffe://example.org/gateway", "net");
    let web = wl("spiffe://example.org/web/frontend", "web");
    let mut r = AuthzRequest::new(gw.clone(), "act_for", "");
    r.target = Target::Workload(web.clone());
    assert!(decide(&p, &r).allowed);
    r.target = Target::Workload(wl("spiffe://example.org/db", "data"));
    assert!(!decide(&p, &r).allowed);
    // Acting for itself needs a policy too, and uses one entity.
    let mut own = AuthzRequest::new(gw.clone(), "act_for", "");
    own.target = Target::Workload(gw);
    assert!(!decide(&p, &own).allowed);
    // People (from a trusted identity provider) are a resource type of act_for.
    let p2 = compile(
        r#"
@id("helpers-act-for-idp-people")
permit (principal, action == Action::"act_for_person", resource)
when { principal.path like "/agents/*" && resource.issuer == "https://idp.example.com" };
"#,
    );
    let mut person = AuthzRequest::new(
        wl("spiffe://example.org/agents/h", "ai"),
        "act_for_person",
        "",
    );
    person.target = Target::Person {
        id: "alice".into(),
        issuer: "https://idp.example.com".into(),
        email: "alice@example.com".into(),
    };
    assert!(decide(&p2, &person).allowed);
    person.target = Target::Person {
        id: "alice".into(),
        issuer: "https://evil.example".into(),
        email: String::new(),
    };
    assert!(!decide(&p2, &person).allowed);

    let mut x = AuthzRequest::new(web.clone(), "token_exchange", "https://orders.example.org");
    x.scope = Some("orders:read".into());
    x.actor = Some("spiffe://example.org/gateway".into());
    assert!(decide(&p, &x).allowed);
    x.scope = Some("orders:write".into());
    assert!(!decide(&p, &x).allowed);
}

#[test]
fn invalid_authz_policies_are_refused_with_their_location() {
    let err = match CompiledPolicies::compile(
        PolicyKind::Authz,
        "permit (principal, action == Action::\"read\", resource)\nwhen { principal.ownr == \"a\" };",
    ) {
        Ok(_) => panic!("a typo must be refused"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(msg.contains("line 2"), "{msg}");
    assert!(msg.contains("ownr"), "{msg}");
    // Context attributes are typed too: an unknown one is refused.
    assert!(
        CompiledPolicies::compile(
            PolicyKind::Authz,
            "permit (principal, action == Action::\"read\", resource) when { context.ip == \"x\" };"
        )
        .is_err()
    );
    // Parse errors.
    let err = match CompiledPolicies::compile(PolicyKind::Authz, "permit (principal, action") {
        Ok(_) => panic!("must not parse"),
        Err(e) => e,
    };
    assert!(matches!(err, PolicyError::Parse { .. }));
    // A registration request cannot go to authz policy.
    let p = compile("");
    assert!(
        p.evaluate_registration(&RegistrationRequest {
            caller: Caller::Local { uid: 0 },
            action: RegistrationAction::Create,
            entry: EntryFacts::default(),
        })
        .is_err()
    );
}
