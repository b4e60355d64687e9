use crate::*;

fn default() -> CompiledPolicies {
    CompiledPolicies::default_for(PolicyKind::Registration).unwrap()
}

fn entry(id: &str, selectors: &[&str]) -> EntryFacts {
    EntryFacts {
        spiffe_id: id.into(),
        parent_id: "spiffe://example.org/lanyard/agent/a".into(),
        selectors: selectors.iter().map(|s| s.to_string()).collect(),
        x509_ttl: 3600,
        jwt_ttl: 300,
        owner: "team-a".into(),
        environment: "dev".into(),
        admin: false,
        downstream: false,
        has_expiry: false,
        parent_selectors: Vec::new(),
        parent_attestors: Vec::new(),
    }
}

fn local(action: RegistrationAction, e: EntryFacts) -> RegistrationRequest {
    RegistrationRequest {
        caller: Caller::Local { uid: 0 },
        action,
        entry: e,
    }
}

fn refused_by(p: &CompiledPolicies, r: &RegistrationRequest) -> Vec<String> {
    let d = p.evaluate_registration(r).unwrap();
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    if d.allowed { vec![] } else { d.policy_ids }
}

#[test]
fn default_policy_compiles_and_names_its_rules() {
    assert_eq!(
        default().policy_ids(),
        vec![
            "allow-admins",
            "owner-required",
            "environment-required",
            "x509-ttl-max-24h",
            "jwt-ttl-max-1h",
            "prod-strong-selectors",
            "admin-entries-local-only",
            "exception-max-90d"
        ]
    );
}

#[test]
fn a_good_entry_is_allowed_by_allow_admins() {
    let d = default()
        .evaluate_registration(&local(
            RegistrationAction::Create,
            entry("spiffe://example.org/web", &["unix:uid:1000"]),
        ))
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.policy_ids, vec!["allow-admins"]);
}

#[test]
fn owner_required() {
    let p = default();
    let mut e = entry("spiffe://example.org/web", &["unix:uid:1000"]);
    e.owner = String::new();
    let r = local(RegistrationAction::Create, e.clone());
    assert_eq!(refused_by(&p, &r), vec!["owner-required"]);
    let d = p.evaluate_registration(&r).unwrap();
    let msg = d.explain(PolicyKind::Registration);
    assert!(
        msg.contains("\"owner-required\": every identity needs an owner: set --owner TEAM"),
        "{msg}"
    );
    // Update too; delete of an unowned legacy entry is fine.
    assert_eq!(
        refused_by(&p, &local(RegistrationAction::Update, e.clone())),
        vec!["owner-required"]
    );
    assert!(refused_by(&p, &local(RegistrationAction::Delete, e)).is_empty());
}

#[test]
fn ttl_caps() {
    let p = default();
    let mut e = entry("spiffe://example.org/web", &["unix:uid:1000"]);
    e.x509_ttl = 86_400;
    assert!(refused_by(&p, &local(RegistrationAction::Create, e.clone())).is_empty());
    e.x509_ttl = 86_401;
    assert_eq!(
        refused_by(&p, &local(RegistrationAction::Create, e.clone())),
        vec!["x509-ttl-max-24h"]
    );
    e.x509_ttl = 3600;
    e.jwt_ttl = 3601;
    assert_eq!(
        refused_by(&p, &local(RegistrationAction::Update, e.clone())),
        vec!["jwt-ttl-max-1h"]
    );
    e.x509_ttl = 90_000;
    assert_eq!(
        refused_by(&p, &local(RegistrationAction::Create, e)),
        vec!["x509-ttl-max-24h", "jwt-ttl-max-1h"],
        "every violated rule is named"
    );
}

#[test]
fn prod_needs_two_selectors_one_strong() {
    let p = default();
    let create = |sel: &[&str]| {
        local(
            RegistrationAction::Create,
            entry("spiffe://example.org/prod/web", sel),
        )
    };
    assert_eq!(
        refused_by(&p, &create(&["unix:uid:1000"])),
        vec!["prod-strong-selectors"]
    );
    assert_eq!(
        refused_by(&p, &create(&["unix:uid:1000", "unix:gid:10"])),
        vec!["prod-strong-selectors"]
    );
    assert_eq!(
        refused_by(&p, &create(&["unix:sha256:ab"])),
        vec!["prod-strong-selectors"]
    );
    assert!(refused_by(&p, &create(&["unix:uid:1000", "unix:path:/usr/bin/web"])).is_empty());
    assert!(refused_by(&p, &create(&["unix:uid:1000", "unix:sha256:ab"])).is_empty());
    // Not under /prod/: one weak selector is allowed.
    let staging = local(
        RegistrationAction::Create,
        entry("spiffe://example.org/production-ish/web", &["unix:uid:1"]),
    );
    assert!(refused_by(&p, &staging).is_empty());
}

#[test]
fn admin_entries_only_from_the_local_socket() {
    let p = default();
    let mut e = entry("spiffe://example.org/ops/admin", &["unix:uid:0"]);
    e.admin = true;
    assert!(refused_by(&p, &local(RegistrationAction::Create, e.clone())).is_empty());
    let remote = |action, e: EntryFacts| RegistrationRequest {
        caller: Caller::Spiffe("spiffe://example.org/ops/admin".into()),
        action,
        entry: e,
    };
    assert_eq!(
        refused_by(&p, &remote(RegistrationAction::Create, e.clone())),
        vec!["admin-entries-local-only"]
    );
    assert_eq!(
        refused_by(&p, &remote(RegistrationAction::Delete, e.clone())),
        vec!["admin-entries-local-only"]
    );
    e.admin = false;
    assert!(refused_by(&p, &remote(RegistrationAction::Create, e)).is_empty());
}

#[test]
fn delegated_administration_by_path_prefix() {
    let text = r#"
@id("local-root")
permit (principal, action, resource) when { principal.local };

@id("team-a-admins")
@reason("team-a admins manage identities under /team-a/")
permit (principal, action, resource is Lanyard::Entry)
when { principal.path like "/team-a/*" && resource.path like "/team-a/*" };
"#;
    let p = CompiledPolicies::compile(PolicyKind::Registration, text).unwrap();
    let team_admin = |id: &str| RegistrationRequest {
        caller: Caller::Spiffe("spiffe://example.org/team-a/admin".into()),
        action: RegistrationAction::Create,
        entry: entry(id, &["unix:uid:1"]),
    };
    let d = p
        .evaluate_registration(&team_admin("spiffe://example.org/team-a/web"))
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.policy_ids, vec!["team-a-admins"]);
    let d = p
        .evaluate_registration(&team_admin("spiffe://example.org/team-b/web"))
        .unwrap();
    assert!(!d.allowed);
    assert!(d.policy_ids.is_empty());
    assert!(
        d.explain(PolicyKind::Registration)
            .contains("no registration policy permits")
    );
    assert!(
        p.evaluate_registration(&local(
            RegistrationAction::Create,
            entry("spiffe://example.org/team-b/web", &["unix:uid:1"])
        ))
        .unwrap()
        .allowed
    );
}

#[test]
fn exception_duration_is_a_policy() {
    let p = default();
    let facts = |days: u64| ExceptionFacts {
        name: "legacy-db".into(),
        owner: "team-a".into(),
        duration: days * 86_400,
        allowed: vec!["spiffe://example.org/web".into()],
    };
    let caller = Caller::Local { uid: 0 };
    assert!(p.evaluate_exception(&caller, &facts(90)).unwrap().allowed);
    let d = p.evaluate_exception(&caller, &facts(91)).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, vec!["exception-max-90d"]);
    let custom = CompiledPolicies::compile(
        PolicyKind::Registration,
        "permit (principal, action, resource);\n@id(\"exc-7d\")\nforbid (principal, action == Lanyard::Action::\"create_exception\", resource) when { resource.duration > 604800 };",
    )
    .unwrap();
    assert_eq!(
        custom
            .evaluate_exception(&caller, &facts(8))
            .unwrap()
            .policy_ids,
        vec!["exc-7d"]
    );
}

#[test]
fn invalid_policies_are_refused_with_their_location() {
    let syntax = "permit (principal, action, resource)\nwhen { resource.owner == };";
    match CompiledPolicies::compile(PolicyKind::Registration, syntax) {
        Err(PolicyError::Parse { errors }) => {
            assert_eq!(errors[0].line, 2, "{errors:?}");
            assert!(errors[0].column > 1, "{errors:?}");
        }
        other => panic!("{other:?}"),
    }
    let unknown_attr = "@id(\"bad\")\nforbid (principal, action, resource is Lanyard::Entry)\nwhen { resource.ttl > 5 };";
    match CompiledPolicies::compile(PolicyKind::Registration, unknown_attr) {
        Err(e @ PolicyError::Validation { .. }) => {
            let PolicyError::Validation { errors, .. } = &e else {
                unreachable!()
            };
            assert_eq!(
                (errors[0].line, errors[0].policy_id.as_deref()),
                (3, Some("bad")),
                "{errors:?}"
            );
            let msg = e.to_string();
            assert!(msg.contains("line 3") && msg.contains("ttl"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    let wrong_type =
        "forbid (principal, action, resource is Lanyard::Entry)\nwhen { resource.owner > 5 };";
    assert!(matches!(
        CompiledPolicies::compile(PolicyKind::Registration, wrong_type),
        Err(PolicyError::Validation { .. })
    ));
    let unknown_type = "permit (principal == Lanyard::Robot::\"x\", action, resource);";
    match CompiledPolicies::compile(PolicyKind::Registration, unknown_type) {
        Err(PolicyError::Validation { errors, .. }) => assert_eq!(errors[0].line, 1),
        other => panic!("{other:?}"),
    }
    let dup = "@id(\"a\")\npermit (principal, action, resource);\n@id(\"a\")\nforbid (principal, action, resource);";
    assert!(matches!(
        CompiledPolicies::compile(PolicyKind::Registration, dup),
        Err(PolicyError::DuplicateId(_))
    ));
    assert!(matches!(
        "nope".parse::<PolicyKind>(),
        Err(PolicyError::UnknownKind(_))
    ));
}

#[test]
fn empty_policy_denies_everything() {
    let p = CompiledPolicies::compile(PolicyKind::Registration, "// nothing\n").unwrap();
    let d = p
        .evaluate_registration(&local(
            RegistrationAction::Create,
            entry("spiffe://example.org/web", &["unix:uid:1"]),
        ))
        .unwrap();
    assert!(!d.allowed);
}

#[test]
fn line_col_counts_from_one() {
    assert_eq!(crate::line_col("ab\ncd", 0), (1, 1));
    assert_eq!(crate::line_col("ab\ncd", 4), (2, 2));
}

#[test]
fn environment_required() {
    let p = default();
    let mut e = entry("spiffe://example.org/web", &["unix:uid:1"]);
    e.environment = String::new();
    for action in [RegistrationAction::Create, RegistrationAction::Update] {
        assert_eq!(
            refused_by(&p, &local(action, e.clone())),
            vec!["environment-required"]
        );
    }
    // Deleting an entry that predates the rule stays possible.
    assert!(refused_by(&p, &local(RegistrationAction::Delete, e.clone())).is_empty());
    e.environment = "staging".into();
    assert!(refused_by(&p, &local(RegistrationAction::Create, e)).is_empty());
}

fn admin_ops() -> Vec<AdminOperation> {
    let agent = AgentFacts {
        spiffe_id: "spiffe://example.org/lanyard/agent/join_token/ab".into(),
        attestation_type: "join_token".into(),
        selectors: vec!["join_token:ab".into()],
        banned: false,
    };
    vec![
        AdminOperation::CreateJoinToken {
            agent_id: "spiffe://example.org/lanyard/agent/team-b/node1".into(),
            custom_id: true,
            ttl: 600,
        },
        AdminOperation::BanAgent(agent.clone()),
        AdminOperation::EvictAgent(agent),
        AdminOperation::TaintCa {
            slot: "a".into(),
            state: "active".into(),
        },
        AdminOperation::RevokeJwt {
            jti: "j1".into(),
            subject: "spiffe://example.org/team-b/web".into(),
        },
        AdminOperation::SetPolicy {
            kind: "registration".into(),
            policy_ids: vec!["allow-everything".into()],
        },
        AdminOperation::RevokeException(ExceptionFacts {
            name: "legacy".into(),
            owner: "team-b".into(),
            duration: 86_400,
            allowed: vec![],
        }),
        AdminOperation::DeregisterServer {
            name: "0a1b2c3d4e5f6a7b".into(),
            seen_ago: 3600,
        },
    ]
}

#[test]
fn a_policy_can_keep_recently_seen_servers_registered() {
    let text = r#"
@id("allow-admins")
permit (principal, action, resource);

@id("only-dead-servers")
@reason("deregister only servers silent for an hour")
forbid (principal, action == Lanyard::Action::"deregister_server", resource is Lanyard::Server)
when { resource.seen_ago < 3600 };
"#;
    let p = CompiledPolicies::compile(PolicyKind::Registration, text).unwrap();
    let op = |seen_ago| AdminOperation::DeregisterServer {
        name: "s1".into(),
        seen_ago,
    };
    let caller = Caller::Local { uid: 0 };
    let d = p.evaluate_admin(&caller, &op(60)).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, vec!["only-dead-servers"]);
    assert!(p.evaluate_admin(&caller, &op(7200)).unwrap().allowed);
}

#[test]
fn the_default_lets_full_admins_do_every_admin_operation() {
    let p = default();
    for caller in [
        Caller::Local { uid: 0 },
        Caller::Spiffe("spiffe://example.org/ops/admin".into()),
    ] {
        for op in admin_ops() {
            let d = p.evaluate_admin(&caller, &op).unwrap();
            assert!(d.allowed, "{} refused for {caller:?}: {d:?}", op.name());
            assert!(d.errors.is_empty(), "{:?}", d.errors);
            assert_eq!(d.policy_ids, vec!["allow-admins"]);
        }
    }
}

#[test]
fn a_delegated_admin_gets_only_what_policy_grants() {
    let text = r#"
@id("local-root")
permit (principal, action, resource) when { principal.local };

@id("team-a-entries")
permit (principal, action, resource is Lanyard::Entry)
when { principal.path like "/team-a/*" && resource.path like "/team-a/*" };

@id("team-a-agents")
@reason("team-a admins enrol and ban agents under /lanyard/agent/team-a/")
permit (
  principal,
  action in [Lanyard::Action::"create_join_token"],
  resource is Lanyard::JoinToken
)
when { principal.path like "/team-a/*" && resource.agent_path like "/lanyard/agent/team-a/*" };

@id("team-a-revoke")
permit (principal, action == Lanyard::Action::"revoke_jwt", resource is Lanyard::Jwt)
when { principal.path like "/team-a/*" && resource.subject_path like "/team-a/*" };
"#;
    let p = CompiledPolicies::compile(PolicyKind::Registration, text).unwrap();
    let team = Caller::Spiffe("spiffe://example.org/team-a/admin".into());
    // Nothing of the default list is granted: other agent paths, bans, taint,
    // policy replacement, another team's tokens and exceptions.
    for op in admin_ops() {
        let d = p.evaluate_admin(&team, &op).unwrap();
        assert!(!d.allowed, "{} allowed: {d:?}", op.name());
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        assert!(
            p.evaluate_admin(&Caller::Local { uid: 0 }, &op)
                .unwrap()
                .allowed
        );
    }
    let own = AdminOperation::CreateJoinToken {
        agent_id: "spiffe://example.org/lanyard/agent/team-a/node1".into(),
        custom_id: true,
        ttl: 600,
    };
    let d = p.evaluate_admin(&team, &own).unwrap();
    assert!(d.allowed);
    assert_eq!(d.policy_ids, vec!["team-a-agents"]);
    let revoke = AdminOperation::RevokeJwt {
        jti: "j2".into(),
        subject: "spiffe://example.org/team-a/web".into(),
    };
    assert!(p.evaluate_admin(&team, &revoke).unwrap().allowed);
    let unknown = AdminOperation::RevokeJwt {
        jti: "j3".into(),
        subject: String::new(),
    };
    assert!(!p.evaluate_admin(&team, &unknown).unwrap().allowed);
}

#[test]
fn the_ci_fleet_example_gives_prod_identities_only_to_protected_prod_jobs() {
    let text = include_str!("../../../examples/policies/ci-fleets.cedar");
    let p = CompiledPolicies::compile(PolicyKind::Registration, text).unwrap();
    let with_parent = |id: &str, env: &str, parent: &[&str]| {
        let mut e = entry(id, &["unix:uid:1001"]);
        e.environment = env.into();
        e.parent_id = "spiffe://example.org/nodes/ci/api-deploy".into();
        e.parent_selectors = parent.iter().map(|s| s.to_string()).collect();
        e.parent_attestors = vec!["github".into()];
        local(RegistrationAction::Create, e)
    };
    let prod_job = [
        "github:environment:prod",
        "github:ref_protected:true",
        "github:repository:acme/api",
    ];
    let decide = |r: &RegistrationRequest| p.evaluate_registration(r).unwrap();
    assert!(
        decide(&with_parent(
            "spiffe://example.org/prod/deploy",
            "prod",
            &prod_job
        ))
        .allowed
    );
    for parent in [
        &["github:environment:prod", "github:repository:acme/api"][..],
        &["github:ref_protected:true", "github:environment:staging"][..],
        &[][..],
    ] {
        let d = decide(&with_parent(
            "spiffe://example.org/prod/deploy",
            "prod",
            parent,
        ));
        assert!(!d.allowed, "{parent:?}");
        assert_eq!(
            d.policy_ids,
            ["prod-only-for-protected-prod-jobs"],
            "{parent:?}"
        );
    }
    // A staging identity needs no prod job; a CI identity needs a GitHub parent.
    assert!(
        decide(&with_parent(
            "spiffe://example.org/staging/deploy",
            "staging",
            &[]
        ))
        .allowed
    );
    let mut ci = with_parent("spiffe://example.org/ci/api/deploy", "dev", &[]);
    assert!(decide(&ci).allowed);
    ci.entry.parent_attestors = vec!["join_token".into()];
    assert!(!decide(&ci).allowed);
}
