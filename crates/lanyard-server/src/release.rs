//! Whether the secret of an exception may be released to a workload: a pure
//! decision over the stored exception (or why it could not be read), the recipient
//! and the time. `NodeService::fetch_secret` gathers those facts, opens the sealed
//! secret when the decision allows it, and records the outcome. Fail closed: a
//! store that cannot be read refuses.

use lanyard_core::SpiffeId;
use lanyard_store::{Exception, StoreError};
use tonic::Status;

/// A release the exception allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release<'a> {
    /// The exception whose sealed secret is handed out.
    pub exception: &'a Exception,
}

/// Why a secret is not released; the messages are what the agent (and the
/// evidence log) is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The exception could not be read from the store (fail closed).
    #[error("{0}")]
    Unreadable(String),
    #[error("no exception named {name:?}")]
    NotFound { name: String },
    #[error(
        "exception {name:?} was revoked at {at}; ask its owner {owner} about replacing the static secret with SVID-based access"
    )]
    Revoked {
        name: String,
        at: i64,
        owner: String,
    },
    #[error(
        "exception {name:?} expired at {at} (unix time); its owner {owner} must renew it with `lanyard exception create` or move the workload to SVID-based access"
    )]
    Expired {
        name: String,
        at: i64,
        owner: String,
    },
    #[error("{recipient} is not allowed to receive the secret of exception {name:?}")]
    NotAllowed {
        name: String,
        recipient: SpiffeId,
        owner: String,
    },
}

impl Refusal {
    /// The exception's owner, when the exception was found.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Self::Unreadable(_) | Self::NotFound { .. } => None,
            Self::Revoked { owner, .. }
            | Self::Expired { owner, .. }
            | Self::NotAllowed { owner, .. } => Some(owner),
        }
    }
}

impl From<&Refusal> for Status {
    fn from(r: &Refusal) -> Self {
        let message = r.to_string();
        match r {
            Refusal::Unreadable(_) => Status::internal(message),
            Refusal::NotFound { .. } => Status::not_found(message),
            Refusal::Revoked { .. } | Refusal::Expired { .. } => {
                Status::failed_precondition(message)
            }
            Refusal::NotAllowed { .. } => Status::permission_denied(message),
        }
    }
}

/// May the secret of the exception `name` (as `read` from the store) be released
/// to `recipient` at `now` (unix seconds)? Only when it exists, is not revoked,
/// has not expired (it ends at `expires_at`) and allows `recipient`.
pub fn decide_release<'a>(
    read: Result<Option<&'a Exception>, &StoreError>,
    name: &str,
    recipient: &SpiffeId,
    now: i64,
) -> Result<Release<'a>, Refusal> {
    let exc = read
        .map_err(|e| Refusal::Unreadable(e.to_string()))?
        .ok_or_else(|| Refusal::NotFound {
            name: name.to_string(),
        })?;
    if let Some(at) = exc.revoked_at {
        return Err(Refusal::Revoked {
            name: exc.name.clone(),
            at,
            owner: exc.owner.clone(),
        });
    }
    if exc.expires_at <= now {
        return Err(Refusal::Expired {
            name: exc.name.clone(),
            at: exc.expires_at,
            owner: exc.owner.clone(),
        });
    }
    if !exc.allowed.contains(recipient) {
        return Err(Refusal::NotAllowed {
            name: exc.name.clone(),
            recipient: recipient.clone(),
            owner: exc.owner.clone(),
        });
    }
    Ok(Release { exception: exc })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap()
    }

    fn exception() -> Exception {
        Exception {
            name: "db".into(),
            owner: "team-a".into(),
            justification: "legacy database password".into(),
            allowed: vec![id("spiffe://example.org/web")],
            expires_at: NOW + 60,
            created_at: 0,
            created_by: "admin".into(),
            revoked_at: None,
            sealed: "sealed".into(),
        }
    }

    fn decide(read: Result<Option<&Exception>, &StoreError>, who: &str) -> Result<(), Refusal> {
        decide_release(read, "db", &id(who), NOW).map(|r| assert_eq!(r.exception.name, "db"))
    }

    #[test]
    fn an_allowed_recipient_gets_a_live_exception() {
        let exc = exception();
        let r = decide_release(Ok(Some(&exc)), "db", &id("spiffe://example.org/web"), NOW);
        assert_eq!(r, Ok(Release { exception: &exc }));
    }

    #[test]
    fn an_unreadable_store_refuses_as_an_internal_error() {
        let e = StoreError::Unavailable("connection refused".into());
        let r = decide(Err(&e), "spiffe://example.org/web").unwrap_err();
        assert_eq!(r, Refusal::Unreadable(e.to_string()));
        assert_eq!(r.owner(), None);
        let s = Status::from(&r);
        assert_eq!(s.code(), tonic::Code::Internal);
        assert_eq!(s.message(), e.to_string());
    }

    #[test]
    fn a_missing_exception_is_not_found() {
        let r = decide(Ok(None), "spiffe://example.org/web").unwrap_err();
        assert_eq!(r.owner(), None);
        let s = Status::from(&r);
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert_eq!(s.message(), "no exception named \"db\"");
    }

    #[test]
    fn a_revoked_exception_is_refused_even_before_it_expires() {
        let mut exc = exception();
        exc.revoked_at = Some(NOW - 5);
        let r = decide(Ok(Some(&exc)), "spiffe://example.org/web").unwrap_err();
        assert_eq!(r.owner(), Some("team-a"));
        let s = Status::from(&r);
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            s.message(),
            "exception \"db\" was revoked at 995; ask its owner team-a about replacing the static secret with SVID-based access"
        );
    }

    #[test]
    fn an_exception_ends_at_its_expiry() {
        let mut exc = exception();
        exc.expires_at = NOW;
        let r = decide(Ok(Some(&exc)), "spiffe://example.org/web").unwrap_err();
        assert_eq!(r.owner(), Some("team-a"));
        let s = Status::from(&r);
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            s.message(),
            "exception \"db\" expired at 1000 (unix time); its owner team-a must renew it with `lanyard exception create` or move the workload to SVID-based access"
        );
        exc.expires_at = NOW + 1;
        assert!(decide(Ok(Some(&exc)), "spiffe://example.org/web").is_ok());
    }

    #[test]
    fn only_allowed_recipients_receive_the_secret() {
        let exc = exception();
        let r = decide(Ok(Some(&exc)), "spiffe://example.org/other").unwrap_err();
        assert_eq!(r.owner(), Some("team-a"));
        let s = Status::from(&r);
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            s.message(),
            "spiffe://example.org/other is not allowed to receive the secret of exception \"db\""
        );
    }

    #[test]
    fn revocation_is_checked_before_expiry_and_recipient() {
        let mut exc = exception();
        exc.revoked_at = Some(1);
        exc.expires_at = 0;
        let r = decide(Ok(Some(&exc)), "spiffe://example.org/other").unwrap_err();
        assert!(matches!(r, Refusal::Revoked { at: 1, .. }), "{r:?}");
        exc.revoked_at = None;
        let r = decide(Ok(Some(&exc)), "spiffe://example.org/other").unwrap_err();
        assert!(matches!(r, Refusal::Expired { at: 0, .. }), "{r:?}");
    }
}
