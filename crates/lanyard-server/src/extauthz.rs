//! Envoy external authorization (`envoy.service.auth.v3.Authorization/Check`) over
//! mTLS: Envoy presents its SVID; the principal is the downstream peer's SPIFFE ID
//! (`attributes.source.principal`); the action is the context extension `action`
//! (per route) or the HTTP method; the resource is the request path (type `http`,
//! with host, method and destination principal as properties); the request headers
//! (minus credentials) are the context.

use std::sync::Arc;

use lanyard_proto::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use lanyard_proto::envoy::service::auth::v3 as pb;
use lanyard_proto::envoy::r#type::v3::{HttpStatus, StatusCode};
use lanyard_proto::google::rpc::Status as RpcStatus;
use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use crate::access::{Access, Question};

/// gRPC codes in `CheckResponse.status`.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;

/// Headers never passed to policy (credentials).
const HIDDEN: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

#[derive(Debug, Clone)]
pub struct ExtAuthz {
    access: Arc<Access>,
}

impl ExtAuthz {
    pub fn new(access: Arc<Access>) -> Self {
        Self { access }
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn denied(code: StatusCode, message: String, decision_id: &str) -> pb::CheckResponse {
    pb::CheckResponse {
        status: Some(RpcStatus {
            code: PERMISSION_DENIED,
            message: message.clone(),
        }),
        http_response: Some(pb::check_response::HttpResponse::DeniedResponse(
            pb::DeniedHttpResponse {
                status: Some(HttpStatus { code: code as i32 }),
                headers: vec![
                    header("content-type", "text/plain"),
                    header("x-lanyard-decision-id", decision_id),
                ],
                body: format!("{message}\n"),
            },
        )),
    }
}

#[tonic::async_trait]
impl pb::authorization_server::Authorization for ExtAuthz {
    async fn check(
        &self,
        req: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let caller = crate::caller::Caller::of(&req)?
            .spiffe_id()
            .ok_or_else(|| {
                Status::unauthenticated("the enforcement point must present its X509-SVID")
            })?
            .to_string();
        let attrs = req.into_inner().attributes.unwrap_or_default();
        let principal = attrs
            .source
            .as_ref()
            .map(|s| s.principal.clone())
            .unwrap_or_default();
        if principal.is_empty() {
            return Ok(Response::new(denied(
                StatusCode::Forbidden,
                "no downstream SPIFFE ID: the caller must connect with mTLS (attributes.source.principal is empty)".to_string(),
                "",
            )));
        }
        let http = attrs
            .request
            .as_ref()
            .and_then(|r| r.http.clone())
            .unwrap_or_default();
        let action = attrs
            .context_extensions
            .get("action")
            .cloned()
            .unwrap_or_else(|| http.method.clone());
        let path = http.path.split('?').next().unwrap_or_default().to_string();
        let mut props = Map::new();
        props.insert("host".into(), Value::String(http.host.clone()));
        props.insert("method".into(), Value::String(http.method.clone()));
        if let Some(d) = &attrs.destination {
            props.insert("destination".into(), Value::String(d.principal.clone()));
        }
        for (k, v) in &attrs.context_extensions {
            props.insert(format!("ext:{k}"), Value::String(v.clone()));
        }
        let context: Map<String, Value> = http
            .headers
            .iter()
            .filter(|(k, _)| !HIDDEN.contains(&k.to_ascii_lowercase().as_str()))
            .map(|(k, v)| (k.to_ascii_lowercase(), Value::String(v.clone())))
            .collect();
        let q = Question {
            subject: principal,
            action,
            resource_type: "http".to_string(),
            resource_id: if path.is_empty() {
                "/".to_string()
            } else {
                path
            },
            resource_properties: props,
            context,
        };
        let d = match self.access.decide(&caller, "ext_authz", q).await {
            Ok(d) => d,
            Err(crate::decision::DecideError::Malformed(e)) => {
                return Ok(Response::new(denied(StatusCode::Forbidden, e, "")));
            }
            // Fail closed: the request is denied, with 503 to the client.
            Err(crate::decision::DecideError::Unavailable(e)) => {
                return Ok(Response::new(denied(StatusCode::ServiceUnavailable, e, "")));
            }
        };
        if !d.allowed {
            return Ok(Response::new(denied(
                StatusCode::Forbidden,
                d.reason,
                &d.decision_id,
            )));
        }
        Ok(Response::new(pb::CheckResponse {
            status: Some(RpcStatus {
                code: OK,
                message: String::new(),
            }),
            http_response: Some(pb::check_response::HttpResponse::OkResponse(
                pb::OkHttpResponse {
                    headers: vec![header("x-lanyard-decision-id", &d.decision_id)],
                    ..Default::default()
                },
            )),
        }))
    }
}
