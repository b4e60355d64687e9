//! End-to-end runtime authorization with `lanyard dev`: the AuthZEN evaluation API
//! (authenticated callers, permit/deny, batches, task-bound tool calls), RFC 8693
//! token exchange with delegation chains and task tokens (verified by an independent
//! JWT library against the JWKS found through OIDC discovery), and Envoy ext_authz
//! over mTLS with a client built from the ext_authz protos.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Dev, eval, http, jwt, raw};
use lanyard_proto::workload as wpb;
use serde_json::{Value, json};

const ISSUER: &str = "https://example.org";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const TXN_TYPE: &str = "urn:ietf:params:oauth:token-type:txn_token";

const POLICY: &str = r#"
@id("web-reads-orders")
@reason("web may read orders")
permit (principal, action == Action::"read", resource)
when { principal.path == "/web" && resource.type == "orders" };

@id("gateway-acts-for-web")
@reason("the gateway may act for web")
permit (principal, action == Action::"act_for", resource)
when { principal.path == "/gateway" && resource.path == "/web" };

@id("orders-acts-onward")
@reason("orders may pass a delegated call on")
permit (principal, action == Action::"act_for", resource)
when { principal.path == "/orders" };

@id("web-orders-tokens")
@reason("web may get orders tokens with orders scopes")
permit (principal, action == Action::"token_exchange", resource == Resource::"spiffe://example.org/orders")
when { principal.path == "/web" && (context has scope && context.scope like "orders:*" || !(context has scope)) };

@id("orders-forwards-to-inventory")
@reason("orders may forward web's authority to inventory")
permit (principal, action == Action::"token_exchange", resource == Resource::"spiffe://example.org/inventory")
when { principal.path == "/web" && context has actor && context.actor == "spiffe://example.org/orders" };

@id("agents-start-tasks")
@reason("agents may start tasks with the ticket tools")
permit (principal, action == Action::"start_task", resource)
when { principal.path like "/agents/*" && ["search", "read_ticket", "delete_ticket"].contains(resource.id) };

@id("agents-call-tools")
@reason("agents call tools within a task")
permit (principal, action == Action::"call_tool", resource)
when { context has task };

@id("web-gets-api")
@reason("web may GET the API")
permit (principal, action == Action::"GET", resource)
when { principal.path == "/web" && resource.id like "/api/*" };
"#;

/// Entries for this uid with the given paths, and the authz policy.
fn setup(dev: &Dev, paths: &[&str]) {
    for p in paths {
        dev.entry(p, "spiffe://example.org/lanyard/agent/dev", "team-a");
    }
    dev.set_authz_policy(POLICY);
}

async fn post_json(dev: &Dev, path: &str, bearer: Option<&str>, body: &Value) -> (u16, Value) {
    common::post_json(&dev.http, path, bearer, body.to_string().as_bytes()).await
}

async fn token(dev: &Dev, params: &[(&str, &str)]) -> (u16, Value) {
    let body: String = form_encode(params);
    let (status, text) = http(
        "POST",
        &dev.http,
        "/oauth2/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
    .await;
    (status, serde_json::from_str(&text).unwrap())
}

fn form_encode(params: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The JWKS from OIDC discovery, as the independent library reads it.
async fn jwks(dev: &Dev) -> jsonwebtoken::jwk::JwkSet {
    let (status, text) = http(
        "GET",
        &dev.http,
        "/.well-known/openid-configuration",
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let disco: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(disco["issuer"], ISSUER);
    assert_eq!(
        disco["token_endpoint"],
        format!("{}/oauth2/token", dev.http)
    );
    let uri = disco["jwks_uri"].as_str().unwrap();
    let path = uri
        .strip_prefix(&dev.http)
        .expect("jwks_uri on this server");
    let (status, text) = http("GET", &dev.http, path, &[], b"").await;
    assert_eq!(status, 200);
    serde_json::from_str(&text).unwrap()
}

/// Verify with jsonwebtoken against the JWKS; returns the claims.
fn verify(set: &jsonwebtoken::jwk::JwkSet, token: &str, aud: &str) -> Value {
    let h = jsonwebtoken::decode_header(token).unwrap();
    let kid = h.kid.clone().expect("kid");
    let jwk = set.find(&kid).expect("the token's kid is in the JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[aud]);
    v.set_issuer(&[ISSUER]);
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .unwrap_or_else(|e| panic!("independent verification failed: {e}"))
        .claims
}

/// AuthZEN: callers authenticate with a JWT-SVID for the issuer; permit and deny
/// name their policies; batches; invalid policy refused; decisions audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authzen_evaluations_with_authenticated_callers() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    setup(&dev, &["/web", "/pep"]);
    let mut c = raw(&dev).await;
    let pep = jwt(&mut c, "/pep", ISSUER).await;

    // 401 without a token or with a wrong one, 400 for malformed questions, batches.
    let q = eval("/web", "read", "orders", "o-1");
    let wrong = jwt(&mut c, "/pep", "some-other-service").await;
    common::authzen_conformance(&dev.http, &pep, &wrong, ISSUER).await;

    // Permit, naming the policy and a decision id.
    let (s, body) = post_json(&dev, "/access/v1/evaluation", Some(&pep), &q).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["decision"], true, "{body}");
    assert_eq!(body["context"]["policy_ids"], json!(["web-reads-orders"]));
    let decision_id = body["context"]["decision_id"].as_str().unwrap().to_string();
    assert_eq!(decision_id.len(), 32);
    // Deny: another action, another workload, an unknown action.
    for q in [
        eval("/web", "write", "orders", "o-1"),
        eval("/pep", "read", "orders", "o-1"),
        eval("/web", "launch", "orders", "o-1"),
    ] {
        let (s, body) = post_json(&dev, "/access/v1/evaluation", Some(&pep), &q).await;
        assert_eq!(s, 200);
        assert_eq!(body["decision"], false, "{q} -> {body}");
        assert!(
            body["context"]["reason"]
                .as_str()
                .unwrap()
                .contains("deny by default"),
            "{body}"
        );
    }

    // `policy test` evaluates an AuthZEN-shaped sample offline against the active set.
    let sample = dir.path().join("sample.json");
    std::fs::write(
        &sample,
        json!({
            "subject": {"id": "spiffe://example.org/web", "properties": {"owner": "team-a"}},
            "action": {"name": "read"},
            "resource": {"type": "orders", "id": "o-1"}
        })
        .to_string(),
    )
    .unwrap();
    let out = dev.ok(&[
        "policy",
        "test",
        "--kind",
        "authz",
        "--request",
        sample.to_str().unwrap(),
    ]);
    assert!(out.contains("web-reads-orders"), "{out}");
    std::fs::write(
        &sample,
        json!({
            "subject": {"id": "spiffe://example.org/agents/x"},
            "action": {"name": "call_tool"},
            "resource": {"type": "tool", "id": "rm"},
            "task": {"txn": "t", "purpose": "p", "tools": ["ls"], "agent": "spiffe://example.org/agents/x", "acting_for": ""}
        })
        .to_string(),
    )
    .unwrap();
    let o = dev.cli(&[
        "policy",
        "test",
        "--kind",
        "authz",
        "--request",
        sample.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("task-tools-only"));

    // An invalid authz policy is refused with its location; the old one stays.
    let bad = dir.path().join("bad.cedar");
    std::fs::write(
        &bad,
        "permit (principal, action == Action::\"read\", resource)\nwhen { principal.ownr == \"x\" };",
    )
    .unwrap();
    let o = dev.cli(&[
        "policy",
        "set",
        "--kind",
        "authz",
        "--file",
        bad.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 2") && err.contains("ownr"), "{err}");
    let (_, body) = post_json(&dev, "/access/v1/evaluation", Some(&pep), &q).await;
    assert_eq!(body["decision"], true);

    // Over mTLS the caller's X509-SVID authenticates it: no bearer token needed.
    let (s, body) = mtls_eval(&dev, Some("/pep"), &q).await.unwrap();
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["decision"], true, "{body}");
    let mtls_decision = body["context"]["decision_id"].as_str().unwrap().to_string();
    // Without a client SVID the handshake (or the first request) fails.
    assert!(mtls_eval(&dev, None, &q).await.is_err());

    // Decisions are in the evidence log with the caller and the decision id.
    let mut found = false;
    for _ in 0..50 {
        let out = dev.ok(&[
            "audit",
            "query",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--kind",
            "authz_decision",
            "--output",
            "json",
        ]);
        if out.contains(&decision_id) && out.contains(&mtls_decision) {
            assert!(out.contains("spiffe://example.org/pep"), "{out}");
            found = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(found, "decision {decision_id} not in the audit log");
}

/// POST an evaluation to the server's mTLS AuthZEN listener, presenting the X509-SVID
/// of `path` (from the Workload API), or no client certificate.
async fn mtls_eval(dev: &Dev, path: Option<&str>, q: &Value) -> Result<(u16, Value), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;
    let bundle = lanyard_core::Bundle::parse(
        lanyard_core::TrustDomain::new("example.org").unwrap(),
        dev.ok(&["bundle", "show", "--format", "jwks"]).as_bytes(),
    )
    .unwrap();
    let identity = match path {
        None => None,
        Some(p) => {
            let id = format!("spiffe://example.org{p}");
            let mut c = raw(dev).await;
            let mut stream = c
                .fetch_x509svid(wpb::X509svidRequest {})
                .await
                .unwrap()
                .into_inner();
            let msg = stream.next().await.unwrap().unwrap();
            let svid = msg.svids.iter().find(|s| s.spiffe_id == id).unwrap();
            let chain = lanyard_core::x509::split_der_chain(&svid.x509_svid).unwrap();
            let key = lanyard_server::tls::certified_key(&chain, &svid.x509_svid_key).unwrap();
            Some(std::sync::Arc::new(lanyard_server::tls::SvidResolver::new(
                key,
            )))
        }
    };
    let verifier = std::sync::Arc::new(lanyard_server::tls::SpiffeServerVerifier::new(
        common::shared_bundles(bundle),
        lanyard_core::SpiffeId::new("spiffe://example.org/lanyard/server").unwrap(),
    ));
    let mut cfg = lanyard_server::tls::client_config(verifier, identity).unwrap();
    cfg.alpn_protocols.clear(); // HTTP/1.1
    let tcp = tokio::net::TcpStream::connect(&dev.authzen_tls)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("lanyard-server").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let body = q.to_string();
    let req = format!(
        "POST /access/v1/evaluation HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
    let json_body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((
        status,
        serde_json::from_str(json_body).unwrap_or_else(|_| json!({"raw": json_body})),
    ))
}

/// RFC 8693 token exchange: without and with an actor, refused delegation, scope
/// widening, re-exchange building an `act` chain, garbage tokens; task tokens bound
/// to their tools; every token verified independently against the discovered JWKS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_delegation_and_task_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    setup(
        &dev,
        &["/web", "/gateway", "/orders", "/agents/helper", "/pep"],
    );
    let mut c = raw(&dev).await;
    let web = jwt(&mut c, "/web", ISSUER).await;
    let gateway = jwt(&mut c, "/gateway", ISSUER).await;
    let orders = jwt(&mut c, "/orders", ISSUER).await;
    let agent = jwt(&mut c, "/agents/helper", ISSUER).await;
    let pep = jwt(&mut c, "/pep", ISSUER).await;
    let set = jwks(&dev).await;

    // Without an actor.
    let (s, body) = token(
        &dev,
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", &web),
            ("subject_token_type", JWT_TYPE),
            ("audience", "spiffe://example.org/orders"),
            ("scope", "orders:read orders:write"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["issued_token_type"], JWT_TYPE);
    let claims = verify(
        &set,
        body["access_token"].as_str().unwrap(),
        "spiffe://example.org/orders",
    );
    assert_eq!(claims["sub"], "spiffe://example.org/web");
    assert_eq!(claims["scope"], "orders:read orders:write");
    assert!(claims.get("act").is_none());
    assert!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap() <= 300);
    assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
    // The exchanged token is not a JWT-SVID: its type and key say so.
    let h = jsonwebtoken::decode_header(body["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(h.typ.as_deref(), Some("at+jwt"));

    // With an actor: `act` names it.
    let (s, body) = token(
        &dev,
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", &web),
            ("subject_token_type", JWT_TYPE),
            ("actor_token", &gateway),
            ("actor_token_type", JWT_TYPE),
            ("audience", "spiffe://example.org/orders"),
            ("scope", "orders:read"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let delegated = body["access_token"].as_str().unwrap().to_string();
    let claims = verify(&set, &delegated, "spiffe://example.org/orders");
    assert_eq!(claims["sub"], "spiffe://example.org/web");
    assert_eq!(
        claims["act"],
        json!({"sub": "spiffe://example.org/gateway"})
    );
    assert_eq!(claims["scope"], "orders:read");

    // Refused delegation: the agent may not act for web.
    let (s, body) = token(
        &dev,
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", &web),
            ("subject_token_type", JWT_TYPE),
            ("actor_token", &agent),
            ("actor_token_type", JWT_TYPE),
            ("audience", "spiffe://example.org/orders"),
        ],
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(body["error"], "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("may not act for"),
        "{body}"
    );

    // Re-exchange by the next hop: scopes only narrow ...
    let (s, body) = token(
        &dev,
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", &delegated),
            ("subject_token_type", JWT_TYPE),
            ("actor_token", &orders),
            ("actor_token_type", JWT_TYPE),
            ("audience", "spiffe://example.org/inventory"),
            ("scope", "orders:read orders:write"),
        ],
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(body["error"], "invalid_scope", "{body}");
    // ... and the chain nests.
    let (s, body) = token(
        &dev,
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", &delegated),
            ("subject_token_type", JWT_TYPE),
            ("actor_token", &orders),
            ("actor_token_type", JWT_TYPE),
            ("audience", "spiffe://example.org/inventory"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let claims = verify(
        &set,
        body["access_token"].as_str().unwrap(),
        "spiffe://example.org/inventory",
    );
    assert_eq!(
        claims["act"],
        json!({"sub": "spiffe://example.org/orders", "act": {"sub": "spiffe://example.org/gateway"}})
    );
    assert_eq!(claims["scope"], "orders:read");
    // Someone outside the token's audience cannot re-exchange it.
    let (s, body) = token(
        &dev,
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", &delegated),
            ("subject_token_type", JWT_TYPE),
            ("actor_token", &gateway),
            ("actor_token_type", JWT_TYPE),
            ("audience", "spiffe://example.org/inventory"),
        ],
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("audience"),
        "{body}"
    );

    // Garbage and wrong requests get RFC 8693 errors.
    for (params, code) in [
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token", "garbage"),
                ("subject_token_type", JWT_TYPE),
                ("audience", "spiffe://example.org/orders"),
            ],
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token", "eyJhbGciOiJFUzI1NiJ9.e30.AAAA"),
                ("subject_token_type", JWT_TYPE),
                ("audience", "spiffe://example.org/orders"),
            ],
            "invalid_request",
        ),
        (
            vec![("grant_type", "password"), ("subject_token", web.as_str())],
            "unsupported_grant_type",
        ),
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token", web.as_str()),
                ("subject_token_type", JWT_TYPE),
                ("audience", "spiffe://example.org/payments"),
            ],
            "invalid_target",
        ),
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token", pep.as_str()),
                ("subject_token_type", "urn:example:saml"),
                ("audience", "spiffe://example.org/orders"),
            ],
            "invalid_request",
        ),
    ] {
        let (s, body) = token(&dev, &params).await;
        assert_eq!(s, 400, "{params:?} -> {body}");
        assert_eq!(body["error"], code, "{params:?} -> {body}");
        assert!(body["error_description"].as_str().unwrap().len() > 10);
    }
    // A JWT-SVID for another audience is not a subject token.
    let other = jwt(&mut c, "/web", "spiffe://example.org/orders").await;
    let (s, body) = token(
        &dev,
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", &other),
            ("subject_token_type", JWT_TYPE),
            ("audience", "spiffe://example.org/orders"),
        ],
    )
    .await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_request")));

    // Task tokens: the agent acting for web, bound to two tools.
    let (s, body) = token(
        &dev,
        &[
            ("grant_type", EXCHANGE),
            ("requested_token_type", TXN_TYPE),
            ("subject_token", &web),
            ("subject_token_type", JWT_TYPE),
            ("actor_token", &agent),
            ("actor_token_type", JWT_TYPE),
            ("scope", "summarize-tickets"),
            ("tools", "search read_ticket"),
        ],
    )
    .await;
    // The agent may not act for web: refused.
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    let (s, body) = token(
        &dev,
        &[
            ("grant_type", EXCHANGE),
            ("requested_token_type", TXN_TYPE),
            ("subject_token", &agent),
            ("subject_token_type", JWT_TYPE),
            ("scope", "summarize-tickets"),
            ("tools", "search read_ticket"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["issued_token_type"], TXN_TYPE);
    let task = body["access_token"].as_str().unwrap().to_string();
    let h = jsonwebtoken::decode_header(&task).unwrap();
    assert_eq!(h.typ.as_deref(), Some("txntoken+jwt"));
    let claims = verify(&set, &task, "spiffe://example.org");
    let txn = claims["txn"].as_str().unwrap().to_string();
    assert_eq!(
        claims["rctx"]["req_wl"],
        "spiffe://example.org/agents/helper"
    );
    assert_eq!(claims["tctx"]["tools"], json!(["search", "read_ticket"]));
    assert_eq!(claims["tctx"]["purpose"], "summarize-tickets");
    assert!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap() <= 300);
    // A tool the policy does not allow for tasks: refused.
    let (s, body) = token(
        &dev,
        &[
            ("grant_type", EXCHANGE),
            ("requested_token_type", TXN_TYPE),
            ("subject_token", &agent),
            ("subject_token_type", JWT_TYPE),
            ("scope", "cleanup"),
            ("tools", "search drop_database"),
        ],
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("drop_database")
    );

    // Tool calls through the evaluation API with the task token as context.
    let call = |tool: &str, subject: &str| {
        json!({
            "subject": {"type": "workload", "id": format!("spiffe://example.org{subject}")},
            "action": {"name": "call_tool"},
            "resource": {"type": "tool", "id": tool},
            "context": {"task_token": task}
        })
    };
    let (s, body) = post_json(
        &dev,
        "/access/v1/evaluation",
        Some(&pep),
        &call("search", "/agents/helper"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body["decision"], true, "{body}");
    let (_, body) = post_json(
        &dev,
        "/access/v1/evaluation",
        Some(&pep),
        &call("delete_ticket", "/agents/helper"),
    )
    .await;
    assert_eq!(body["decision"], false, "{body}");
    assert_eq!(body["context"]["policy_ids"], json!(["task-tools-only"]));
    let (_, body) = post_json(
        &dev,
        "/access/v1/evaluation",
        Some(&pep),
        &call("search", "/web"),
    )
    .await;
    assert_eq!(body["decision"], false, "{body}");
    assert_eq!(body["context"]["policy_ids"], json!(["task-agent-only"]));

    // The trail links task and tool calls by the txn.
    let mut kinds = Vec::new();
    for _ in 0..50 {
        let out = dev.ok(&[
            "audit",
            "trace",
            &txn,
            "--data-dir",
            dir.path().to_str().unwrap(),
        ]);
        kinds = ["task_token_issued", "authz_decision"]
            .iter()
            .filter(|k| out.contains(*k))
            .map(|k| k.to_string())
            .collect();
        if kinds.len() == 2 && out.matches("authz_decision").count() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(kinds, vec!["task_token_issued", "authz_decision"]);
    let exchanged = dev.ok(&[
        "audit",
        "query",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--kind",
        "token_exchanged",
        "--output",
        "json",
    ]);
    assert!(
        exchanged.contains("spiffe://example.org/gateway"),
        "{exchanged}"
    );
}

/// Envoy ext_authz over mTLS: allow and deny by the downstream SPIFFE ID; no
/// principal is denied; a client without an SVID is refused at the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_allows_and_denies() {
    use lanyard_proto::envoy::config::core::v3 as core;
    use lanyard_proto::envoy::service::auth::v3 as ext;
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    setup(&dev, &["/web", "/envoy"]);
    let mut c = raw(&dev).await;
    // Envoy's own SVID (any SVID of the trust domain).
    let mut stream = c
        .fetch_x509svid(wpb::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    use tokio_stream::StreamExt;
    let msg = stream.next().await.unwrap().unwrap();
    let svid = msg.svids.first().unwrap();
    let chain = lanyard_core::x509::split_der_chain(&svid.x509_svid).unwrap();
    let bundle = lanyard_core::Bundle::parse(
        lanyard_core::TrustDomain::new("example.org").unwrap(),
        dev.ok(&["bundle", "show", "--format", "jwks"]).as_bytes(),
    )
    .unwrap();
    let bundles = common::shared_bundles(bundle);
    let ch = common::tls_channel(
        &dev.ext_authz,
        bundles.clone(),
        Some((&chain, &svid.x509_svid_key)),
    )
    .await
    .unwrap();
    let mut client = ext::authorization_client::AuthorizationClient::new(ch);
    let check = |principal: &str, method: &str, path: &str| ext::CheckRequest {
        attributes: Some(ext::AttributeContext {
            source: Some(ext::attribute_context::Peer {
                principal: principal.to_string(),
                address: Some(core::Address {
                    address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                        address: "10.0.0.7".to_string(),
                        port_specifier: Some(core::socket_address::PortSpecifier::PortValue(40000)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            destination: Some(ext::attribute_context::Peer {
                principal: "spiffe://example.org/orders".to_string(),
                ..Default::default()
            }),
            request: Some(ext::attribute_context::Request {
                http: Some(ext::attribute_context::HttpRequest {
                    method: method.to_string(),
                    path: path.to_string(),
                    host: "orders.internal".to_string(),
                    headers: [
                        ("x-request-id".to_string(), "r-1".to_string()),
                        ("authorization".to_string(), "Bearer secret".to_string()),
                    ]
                    .into_iter()
                    .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let ok = client
        .check(check("spiffe://example.org/web", "GET", "/api/orders?x=1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.status.as_ref().unwrap().code, 0, "{ok:?}");
    assert!(matches!(
        ok.http_response,
        Some(ext::check_response::HttpResponse::OkResponse(_))
    ));
    for (principal, method, path) in [
        ("spiffe://example.org/web", "POST", "/api/orders"),
        ("spiffe://example.org/envoy", "GET", "/api/orders"),
        ("", "GET", "/api/orders"),
    ] {
        let r = client
            .check(check(principal, method, path))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status.as_ref().unwrap().code,
            7,
            "{principal} {method} {path}"
        );
        match r.http_response {
            Some(ext::check_response::HttpResponse::DeniedResponse(d)) => {
                assert_eq!(d.status.unwrap().code, 403);
                assert!(!d.body.is_empty());
            }
            other => panic!("expected a denied response, got {other:?}"),
        }
    }
    // Without a client SVID the listener refuses the connection.
    let refused: Result<(), String> = async {
        let ch = common::tls_channel(&dev.ext_authz, bundles, None)
            .await
            .map_err(|e| e.to_string())?;
        ext::authorization_client::AuthorizationClient::new(ch)
            .check(check("spiffe://example.org/web", "GET", "/api/x"))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    .await;
    assert!(
        refused.is_err(),
        "ext_authz answered a client without an SVID"
    );
}

/// `token` with owned parameters.
async fn call(dev: &Dev, p: &[(String, String)]) -> (u16, Value) {
    let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    token(dev, &p).await
}

/// A test identity provider: an EC P-256 key, its JWKS, and tokens for people.
struct Idp {
    key: jsonwebtoken::EncodingKey,
    jwks: Value,
}

impl Idp {
    const ISSUER: &'static str = "https://idp.example.com";

    fn new() -> Self {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        use base64::Engine as _;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let public = pair.public_key().as_ref().to_vec();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        Self {
            key: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwks: json!({"keys": [{
                "kty": "EC", "crv": "P-256", "kid": "idp-1", "alg": "ES256", "use": "sig",
                "x": b64(&public[1..33]), "y": b64(&public[33..65])
            }]}),
        }
    }

    fn token(&self, sub: &str, aud: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some("idp-1".to_string());
        jsonwebtoken::encode(
            &h,
            &json!({"iss": Self::ISSUER, "sub": sub, "aud": aud, "email": format!("{sub}@example.com"),
                    "iat": now, "exp": now + 300}),
            &self.key,
        )
        .unwrap()
    }
}

/// An agent acting for a person: the person's token from a trusted identity provider
/// as subject, the agent's JWT-SVID as actor; allowed only by `act_for` on a `Person`
/// and only for task tokens; the trail names the person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_act_for_people_from_a_trusted_identity_provider() {
    let dir = tempfile::tempdir().unwrap();
    let idp = Idp::new();
    let jwks_file = dir.path().join("idp-jwks.json");
    std::fs::write(&jwks_file, idp.jwks.to_string()).unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[trusted_issuer]]\nissuer = \"{}\"\njwks_file = \"{}\"\n",
            Idp::ISSUER,
            jwks_file.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let dev = Dev::start_with(&data, &["--server-config", cfg.to_str().unwrap()]);
    setup(&dev, &["/agents/helper", "/agents/rogue", "/pep"]);
    dev.set_authz_policy(&format!(
        "{POLICY}\n{}",
        r#"
@id("helper-acts-for-idp-people")
@reason("the helper agent may act for people of our identity provider")
permit (principal, action == Action::"act_for_person", resource)
when { principal.path == "/agents/helper" && resource.issuer == "https://idp.example.com" };
"#
    ));
    let mut c = raw(&dev).await;
    let helper = jwt(&mut c, "/agents/helper", ISSUER).await;
    let rogue = jwt(&mut c, "/agents/rogue", ISSUER).await;
    let pep = jwt(&mut c, "/pep", ISSUER).await;
    let alice = idp.token("alice", ISSUER);
    let set = jwks(&dev).await;
    let task = |subject: &str, actor: Option<&str>, txn: bool| {
        let mut p: Vec<(String, String)> = vec![
            ("grant_type".into(), EXCHANGE.into()),
            ("subject_token".into(), subject.into()),
            ("subject_token_type".into(), JWT_TYPE.into()),
            ("scope".into(), "triage-my-tickets".into()),
            ("tools".into(), "search read_ticket".into()),
            ("audience".into(), "spiffe://example.org/orders".into()),
        ];
        if txn {
            p.push(("requested_token_type".into(), TXN_TYPE.into()));
        }
        if let Some(a) = actor {
            p.push(("actor_token".into(), a.into()));
            p.push(("actor_token_type".into(), JWT_TYPE.into()));
        }
        p
    };

    let (s, body) = call(&dev, &task(&alice, Some(&helper), true)).await;
    assert_eq!(s, 200, "{body}");
    let t = body["access_token"].as_str().unwrap().to_string();
    let claims = verify(&set, &t, "spiffe://example.org");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["sub_iss"], Idp::ISSUER);
    assert_eq!(
        claims["act"],
        json!({"sub": "spiffe://example.org/agents/helper"})
    );
    assert_eq!(
        claims["rctx"]["req_wl"],
        "spiffe://example.org/agents/helper"
    );
    let txn = claims["txn"].as_str().unwrap().to_string();

    // Refused: another agent, no actor, a plain exchange, a forged or HS256 token.
    for (params, needle) in [
        (task(&alice, Some(&rogue), true), "may not act for alice"),
        (task(&alice, None, true), "actor_token"),
        (task(&alice, Some(&helper), false), "task token"),
        (
            task(&Idp::new().token("alice", ISSUER), Some(&helper), true),
            "not accepted",
        ),
        (
            task(
                &idp.token("alice", "https://elsewhere"),
                Some(&helper),
                true,
            ),
            "audience",
        ),
    ] {
        let (s, body) = call(&dev, &params).await;
        assert_eq!(
            (s, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{body}"
        );
        assert!(
            body["error_description"].as_str().unwrap().contains(needle),
            "{needle}: {body}"
        );
    }
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("idp-1".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &json!({"iss": Idp::ISSUER, "sub": "mallory", "aud": ISSUER, "exp": 4_000_000_000i64}),
        &jsonwebtoken::EncodingKey::from_secret(b"guess"),
    )
    .unwrap();
    let (s, body) = call(&dev, &task(&hs, Some(&helper), true)).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("HS256"),
        "{body}"
    );

    // The tool call is decided with the task and the trail names alice.
    let (s, body) = post_json(
        &dev,
        "/access/v1/evaluation",
        Some(&pep),
        &json!({
            "subject": {"type": "workload", "id": "spiffe://example.org/agents/helper"},
            "action": {"name": "call_tool"},
            "resource": {"type": "tool", "id": "read_ticket"},
            "context": {"task_token": t}
        }),
    )
    .await;
    assert_eq!((s, body["decision"].as_bool()), (200, Some(true)), "{body}");
    let mut out = String::new();
    for _ in 0..50 {
        out = dev.ok(&["audit", "trace", &txn, "--data-dir", data.to_str().unwrap()]);
        if out.contains("authz_decision") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        out.contains("task_token_issued") && out.contains("authz_decision"),
        "{out}"
    );
    assert!(out.contains("alice"), "{out}");
}

/// Fail closed: with the datastore unreachable, the server's AuthZEN API refuses to
/// decide (503 naming the cause) once its caches are older than the staleness bound,
/// a revoked token is never accepted meanwhile, and everything recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_fail_closed_while_the_datastore_is_down() {
    use sqlx::Connection;
    use std::time::{Duration, Instant};
    let db = common::PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(&cfg, format!("database_url = \"{}\"\n", db.url)).unwrap();
    let dev = Dev::start_with(
        &dir.path().join("data"),
        &["--server-config", cfg.to_str().unwrap()],
    );
    setup(&dev, &["/web", "/pep"]);
    let mut c = raw(&dev).await;
    let pep = jwt(&mut c, "/pep", ISSUER).await;
    let revoked = jwt(&mut c, "/web", ISSUER).await;
    let jti = common::jti_of(&revoked);
    dev.ok(&["jwt", "revoke", "--jti", &jti]);
    let q = eval("/web", "read", "orders", "o-1");
    let path = "/access/v1/evaluation";
    let (s, body) = post_json(&dev, path, Some(&pep), &q).await;
    assert_eq!((s, &body["decision"]), (200, &json!(true)), "{body}");
    let (s, _) = post_json(&dev, path, Some(&revoked), &q).await;
    assert_eq!(s, 401);

    // Take the database away from the server: no new connections, existing ones
    // terminated.
    let admin_url = std::env::var("LANYARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    let name = db.url.rsplit('/').next().unwrap().to_string();
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    let exec = |sql: String| sqlx::query(sqlx::AssertSqlSafe(sql));
    exec(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .await
        .unwrap();
    exec(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .execute(&mut admin)
    .await
    .unwrap();

    // Within the staleness bound the last copies may still answer; past it, 503.
    // The revoked token is refused throughout (401 or 503, never accepted).
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (s, _) = post_json(&dev, path, Some(&revoked), &q).await;
        assert!(s == 401 || s == 503, "a revoked token got {s}");
        let (s, body) = post_json(&dev, path, Some(&pep), &q).await;
        if s == 503 {
            break body;
        }
        assert_eq!(s, 200, "{body}");
        assert!(
            Instant::now() < deadline,
            "still deciding without the datastore"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    let why = body["error_description"].as_str().unwrap();
    assert!(
        why.contains("datastore") && why.contains("no decision is made"),
        "{why}"
    );
    let (s, _) = post_json(&dev, path, Some(&revoked), &q).await;
    assert_eq!(s, 503);
    // The token endpoint fails closed as well.
    let (s, body) = token(
        &dev,
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", &revoked),
            ("subject_token_type", JWT_TYPE),
            ("audience", "spiffe://example.org/orders"),
        ],
    )
    .await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");

    // The database comes back: decisions resume by themselves.
    exec(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, body) = post_json(&dev, path, Some(&pep), &q).await;
        if s == 200 {
            assert_eq!(body["decision"], true, "{body}");
            break;
        }
        assert_eq!(s, 503, "{body}");
        assert!(Instant::now() < deadline, "no recovery: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (s, _) = post_json(&dev, path, Some(&revoked), &q).await;
    assert_eq!(s, 401, "the revocation survives the outage");
    drop(dev);
    db.drop_db().await;
}
