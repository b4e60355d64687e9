//! The HTTP listener's access routes: OIDC discovery and JWKS, the OpenID AuthZEN
//! 1.0 evaluation API (the shared binding in [`lanyard_authz::http`]) with the
//! server's [`Access`] as decision point, and the RFC 8693 token endpoint.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
pub use lanyard_authz::http::{MtlsPeer, authzen_routes};
use lanyard_authz::http::{Pdp, json_response};
use lanyard_authz::{AuthnError, DecideError, DecisionOut, Question};
use serde_json::{Value, json};

use crate::access::Access;
use crate::exchange::{ExchangeForm, OAuthErrorKind};

impl Pdp for Access {
    fn base_url(&self) -> String {
        self.public_url()
    }
    async fn authenticate(&self, authorization: Option<&str>) -> Result<String, AuthnError> {
        Access::authenticate(self, authorization).await
    }
    async fn evaluate(&self, caller: &str, q: Question) -> Result<DecisionOut, DecideError> {
        self.decide(caller, "authzen", q).await
    }
}

/// The access routes, merged into the server's HTTP router.
pub fn routes(access: Arc<Access>) -> axum::Router {
    let a1 = access.clone();
    let a2 = access.clone();
    let a3 = access.clone();
    authzen_routes(access)
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let a = a1.clone();
                async move { json_response(StatusCode::OK, &discovery(&a)) }
            }),
        )
        .route(
            "/keys",
            get(move || {
                let a = a2.clone();
                async move { json_response(StatusCode::OK, &a.jwks()) }
            }),
        )
        .route(
            "/oauth2/token",
            post(move |headers: HeaderMap, body: Bytes| {
                let a = a3.clone();
                async move { token(&a, &headers, &body).await }
            }),
        )
}

/// The OpenID Provider metadata relying parties (cloud providers, services) use
/// to verify Lanyard tokens.
pub fn discovery(a: &Access) -> Value {
    let base = a.public_url();
    json!({
        "issuer": a.issuer(),
        "jwks_uri": format!("{base}/keys"),
        "token_endpoint": a.token_endpoint(),
        "authorization_endpoint": "",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "ES384", "RS256"],
        "grant_types_supported": [crate::exchange::GRANT_TYPE],
        "token_endpoint_auth_methods_supported": ["none"],
    })
}

async fn token(a: &Access, headers: &HeaderMap, body: &[u8]) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "invalid_request", "error_description": "send the parameters as application/x-www-form-urlencoded"}),
        );
    }
    let form = match ExchangeForm::parse(body) {
        Ok(f) => f,
        Err(e) => return json_response(StatusCode::BAD_REQUEST, &e.body()),
    };
    match a.exchange(form).await {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => {
            let status = match e.kind {
                OAuthErrorKind::InvalidRequest
                | OAuthErrorKind::UnsupportedGrantType
                | OAuthErrorKind::InvalidTarget
                | OAuthErrorKind::InvalidScope => StatusCode::BAD_REQUEST,
                OAuthErrorKind::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
                OAuthErrorKind::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            };
            json_response(status, &e.body())
        }
    }
}
