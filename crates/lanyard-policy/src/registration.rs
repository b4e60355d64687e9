//! Registration requests as Cedar entities.

use serde_json::{Value, json};

use crate::{CompiledPolicies, Decision, PolicyError, PolicyKind};

/// Who calls the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The local admin Unix socket.
    Local { uid: u32 },
    /// An admin SVID over mTLS (a validated SPIFFE ID).
    Spiffe(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationAction {
    Create,
    Update,
    Delete,
}

impl RegistrationAction {
    pub fn name(self) -> &'static str {
        match self {
            Self::Create => "create_entry",
            Self::Update => "update_entry",
            Self::Delete => "delete_entry",
        }
    }
}

/// The entry as policy sees it. TTLs are effective (server default applied).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFacts {
    pub spiffe_id: String,
    pub parent_id: String,
    pub selectors: Vec<String>,
    pub x509_ttl: u64,
    pub jwt_ttl: u64,
    pub owner: String,
    pub environment: String,
    pub admin: bool,
    pub downstream: bool,
    pub has_expiry: bool,
}

/// An exception as policy sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExceptionFacts {
    pub name: String,
    pub owner: String,
    pub duration: u64,
    pub allowed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationRequest {
    pub caller: Caller,
    pub action: RegistrationAction,
    pub entry: EntryFacts,
}

/// ("example.org", "/a/b") from "spiffe://example.org/a/b".
fn split_id(id: &str) -> (String, String) {
    let rest = id.strip_prefix("spiffe://").unwrap_or(id);
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), String::new()),
    }
}

fn long(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn admin_entity(caller: &Caller) -> (String, Value) {
    let (id, attrs) = match caller {
        Caller::Local { uid } => (
            format!("uid:{uid}"),
            json!({"local": true, "spiffe_id": "", "trust_domain": "", "path": ""}),
        ),
        Caller::Spiffe(s) => {
            let (td, path) = split_id(s);
            (
                s.clone(),
                json!({"local": false, "spiffe_id": s, "trust_domain": td, "path": path}),
            )
        }
    };
    let uid = format!("Lanyard::Admin::{}", Value::String(id.clone()));
    (
        uid,
        json!({"uid": {"type": "Lanyard::Admin", "id": id}, "attrs": attrs, "parents": []}),
    )
}

impl CompiledPolicies {
    pub(crate) fn expect_kind(&self, kind: PolicyKind) -> Result<(), PolicyError> {
        if self.kind() == kind {
            Ok(())
        } else {
            Err(PolicyError::Request(format!(
                "a {kind} request cannot be evaluated by {} policy",
                self.kind()
            )))
        }
    }

    /// Decide an entry create, update or delete.
    pub fn evaluate_registration(
        &self,
        req: &RegistrationRequest,
    ) -> Result<Decision, PolicyError> {
        self.expect_kind(PolicyKind::Registration)?;
        let e = &req.entry;
        let (td, path) = split_id(&e.spiffe_id);
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let kinds: Vec<String> = e
            .selectors
            .iter()
            .map(|s| {
                let mut it = s.splitn(3, ':');
                match (it.next(), it.next()) {
                    (Some(t), Some(k)) => format!("{t}:{k}"),
                    _ => s.clone(),
                }
            })
            .collect();
        let (principal, admin) = admin_entity(&req.caller);
        let resource = format!("Lanyard::Entry::{}", Value::String(e.spiffe_id.clone()));
        let entry = json!({
            "uid": {"type": "Lanyard::Entry", "id": e.spiffe_id},
            "attrs": {
                "spiffe_id": e.spiffe_id,
                "trust_domain": td,
                "path": path,
                "segments": segments,
                "first_segment": segments.first().copied().unwrap_or(""),
                "parent_id": e.parent_id,
                "selectors": e.selectors,
                "selector_kinds": kinds,
                "selector_count": e.selectors.len(),
                "x509_ttl": long(e.x509_ttl),
                "jwt_ttl": long(e.jwt_ttl),
                "owner": e.owner,
                "environment": e.environment,
                "admin": e.admin,
                "downstream": e.downstream,
                "has_expiry": e.has_expiry,
            },
            "parents": []
        });
        self.evaluate(
            &principal,
            &format!("Lanyard::Action::\"{}\"", req.action.name()),
            &resource,
            json!([admin, entry]),
        )
    }

    /// Decide whether `caller` may create the exception.
    pub fn evaluate_exception(
        &self,
        caller: &Caller,
        e: &ExceptionFacts,
    ) -> Result<Decision, PolicyError> {
        self.expect_kind(PolicyKind::Registration)?;
        let (principal, admin) = admin_entity(caller);
        let resource = format!("Lanyard::Exception::{}", Value::String(e.name.clone()));
        let exc = json!({
            "uid": {"type": "Lanyard::Exception", "id": e.name},
            "attrs": {
                "name": e.name,
                "owner": e.owner,
                "duration": long(e.duration),
                "allowed": e.allowed,
            },
            "parents": []
        });
        self.evaluate(
            &principal,
            "Lanyard::Action::\"create_exception\"",
            &resource,
            json!([admin, exc]),
        )
    }
}
