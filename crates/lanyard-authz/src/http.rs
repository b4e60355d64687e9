//! The OpenID AuthZEN 1.0 evaluation API over HTTP ([`authzen_routes`]) for any
//! policy decision point ([`Pdp`]): the server's, and the agent's local one. The
//! JSON answers and OAuth-style errors here are shared with the server's other
//! access routes.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use crate::decision::{AuthnError, DecideError, DecisionOut, Question, Unavailable};

/// A policy decision point behind the AuthZEN evaluation API.
pub trait Pdp: Send + Sync + 'static {
    /// Base URL of the listener (for the AuthZEN metadata).
    fn base_url(&self) -> String;
    /// `Err` when it cannot decide yet (HTTP 503 with the reason).
    fn ready(&self) -> Result<(), Unavailable> {
        Ok(())
    }
    /// The enforcement point's SPIFFE ID from its `Authorization` header.
    fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> impl Future<Output = Result<String, AuthnError>> + Send;
    /// Decide one question for `caller` (and see that it is audited). `Err` is a
    /// malformed question (HTTP 400) or facts that cannot be read (HTTP 503).
    fn evaluate(
        &self,
        caller: &str,
        q: Question,
    ) -> impl Future<Output = Result<DecisionOut, DecideError>> + Send;
}

/// Longest accepted evaluation body.
const MAX_BODY: usize = 256 * 1024;
/// Most evaluations in one batch.
const MAX_BATCH: usize = 256;

/// A JSON answer that is never cached.
pub fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        v.to_string(),
    )
        .into_response()
}

/// No decision can be made now (fail closed): HTTP 503 naming the cause.
pub fn unavailable(msg: impl Into<String>) -> Response {
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"error": "temporarily_unavailable", "error_description": msg.into()}),
    )
}

/// A decision error as the HTTP answer.
fn decide_error(e: DecideError, prefix: &str) -> Response {
    match e {
        DecideError::Malformed(m) => bad_request(format!("{prefix}{m}")),
        DecideError::Unavailable(m) => unavailable(m),
    }
}

/// An `invalid_request` answer (HTTP 400).
pub fn bad_request(msg: impl Into<String>) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"error": "invalid_request", "error_description": msg.into()}),
    )
}

/// The AuthZEN routes of a decision point: metadata, single and batch evaluation.
pub fn authzen_routes<P: Pdp>(pdp: Arc<P>) -> axum::Router {
    let (p1, p2, p3) = (pdp.clone(), pdp.clone(), pdp);
    axum::Router::new()
        .route(
            "/.well-known/authzen-configuration",
            get(move || {
                let p = p1.clone();
                async move {
                    let base = p.base_url();
                    json_response(
                        StatusCode::OK,
                        &json!({
                            "policy_decision_point": base,
                            "access_evaluation_endpoint": format!("{base}/access/v1/evaluation"),
                            "access_evaluations_endpoint": format!("{base}/access/v1/evaluations"),
                        }),
                    )
                }
            }),
        )
        .route(
            "/access/v1/evaluation",
            post(move |req: axum::extract::Request| {
                let p = p2.clone();
                async move {
                    let (peer, headers, body) = parts(req).await;
                    evaluation(&*p, peer, &headers, &body, false).await
                }
            }),
        )
        .route(
            "/access/v1/evaluations",
            post(move |req: axum::extract::Request| {
                let p = p3.clone();
                async move {
                    let (peer, headers, body) = parts(req).await;
                    evaluation(&*p, peer, &headers, &body, true).await
                }
            }),
        )
}

/// The mTLS peer, headers and body (at most 256 KiB + 1 byte, so that larger bodies
/// are refused by `evaluation`) of a request.
async fn parts(req: axum::extract::Request) -> (Option<MtlsPeer>, HeaderMap, Bytes) {
    let peer = req.extensions().get::<MtlsPeer>().cloned();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY + 1)
        .await
        .unwrap_or_else(|_| Bytes::from(vec![0u8; MAX_BODY + 1]));
    (peer, headers, body)
}

fn obj<'a>(v: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    v.get(key).and_then(Value::as_object)
}

fn string(m: Option<&Map<String, Value>>, key: &str) -> String {
    m.and_then(|m| m.get(key))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// One AuthZEN request object (defaults merged in) as a question.
fn question(v: &Value) -> Result<Question, DecideError> {
    let missing = |m: &str| DecideError::Malformed(m.to_string());
    let subject = obj(v, "subject")
        .ok_or_else(|| missing("subject is missing (an object with type and id)"))?;
    let action =
        obj(v, "action").ok_or_else(|| missing("action is missing (an object with name)"))?;
    let resource = obj(v, "resource")
        .ok_or_else(|| missing("resource is missing (an object with type and id)"))?;
    let context = match v.get("context") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(missing("context must be an object")),
    };
    Ok(Question {
        subject: string(Some(subject), "id"),
        action: string(Some(action), "name"),
        resource_type: string(Some(resource), "type"),
        resource_id: string(Some(resource), "id"),
        resource_properties: resource
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        context,
    })
}

fn answer(d: &DecisionOut) -> Value {
    json!({
        "decision": d.allowed,
        "context": {
            "decision_id": d.decision_id,
            "reason": d.reason,
            "policy_ids": d.policy_ids,
        }
    })
}

/// The SPIFFE ID of an mTLS peer, set per connection by the mTLS AuthZEN listener;
/// such a caller needs no bearer token.
#[derive(Debug, Clone)]
pub struct MtlsPeer(pub String);

async fn evaluation<P: Pdp>(
    a: &P,
    peer: Option<MtlsPeer>,
    headers: &HeaderMap,
    body: &[u8],
    batch: bool,
) -> Response {
    if let Err(e) = a.ready() {
        return unavailable(e.0);
    }
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let authenticated = match peer {
        Some(MtlsPeer(id)) => Ok(id),
        None => a.authenticate(auth).await,
    };
    let caller = match authenticated {
        Ok(c) => c,
        Err(AuthnError::Unavailable(e)) => return unavailable(e),
        Err(AuthnError::Unauthenticated(e)) => {
            return (
                StatusCode::UNAUTHORIZED,
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\""),
                ],
                json!({"error": "unauthenticated", "error_description": e}).to_string(),
            )
                .into_response();
        }
    };
    if body.len() > MAX_BODY {
        return bad_request("the request body is larger than 256 KiB");
    }
    let v: Value = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Value::Object(m),
        Ok(_) => return bad_request("the request body must be a JSON object"),
        Err(e) => return bad_request(format!("the request body is not JSON: {e}")),
    };
    let items = match (batch, v.get("evaluations")) {
        (true, Some(Value::Array(items))) if !items.is_empty() => items.clone(),
        (true, Some(Value::Array(_)) | None) => {
            // AuthZEN: without evaluations the batch endpoint answers one decision.
            return single(a, &caller, &v).await;
        }
        (true, Some(_)) => return bad_request("evaluations must be an array of objects"),
        (false, _) => return single(a, &caller, &v).await,
    };
    if items.len() > MAX_BATCH {
        return bad_request(format!("at most {MAX_BATCH} evaluations per request"));
    }
    let semantic = v
        .get("options")
        .and_then(|o| o.get("evaluations_semantic"))
        .and_then(Value::as_str)
        .unwrap_or("execute_all")
        .to_string();
    if !matches!(
        semantic.as_str(),
        "execute_all" | "deny_on_first_deny" | "permit_on_first_permit"
    ) {
        return bad_request(format!(
            "options.evaluations_semantic {semantic:?} is not one of execute_all, deny_on_first_deny, permit_on_first_permit"
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(item) = item.as_object() else {
            return bad_request(format!("evaluations[{i}] is not an object"));
        };
        // Top-level subject/action/resource/context are defaults for each item.
        let mut merged = Map::new();
        for k in ["subject", "action", "resource", "context"] {
            if let Some(x) = item.get(k).or_else(|| v.get(k)) {
                merged.insert(k.to_string(), x.clone());
            }
        }
        let q = match question(&Value::Object(merged)) {
            Ok(q) => q,
            Err(e) => return decide_error(e, &format!("evaluations[{i}]: ")),
        };
        let d = match a.evaluate(&caller, q).await {
            Ok(d) => d,
            Err(e) => return decide_error(e, &format!("evaluations[{i}]: ")),
        };
        let stop = (semantic == "deny_on_first_deny" && !d.allowed)
            || (semantic == "permit_on_first_permit" && d.allowed);
        out.push(answer(&d));
        if stop {
            break;
        }
    }
    json_response(StatusCode::OK, &json!({ "evaluations": out }))
}

async fn single<P: Pdp>(a: &P, caller: &str, v: &Value) -> Response {
    let q = match question(v) {
        Ok(q) => q,
        Err(e) => return decide_error(e, ""),
    };
    match a.evaluate(caller, q).await {
        Ok(d) => json_response(StatusCode::OK, &answer(&d)),
        Err(e) => decide_error(e, ""),
    }
}
