//! Who is calling: the transport's proof of the caller, read once per request.
//!
//! Every gRPC listener of the server is built with [`CallerLayer`]. The layer reads
//! what the transport proved — the kernel's peer credentials on the admin Unix
//! socket, the X509-SVID a TLS peer presented (verified against the trust bundle
//! during the handshake) — turns it into a [`Caller`] and puts it in the request's
//! extensions. Handlers take the caller with [`Caller::of`]; nothing else parses
//! connection info. A request that reaches a handler without a caller is refused
//! (fail closed: that is a listener built without the layer).

use std::task::{Context, Poll};

use lanyard_core::SpiffeId;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tonic::{Request, Status};

use crate::policy::CallerFacts;
use crate::tls::peer_spiffe_id;

/// The caller of one request, as the transport proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A local process on a Unix socket; `uid` is its kernel peer credential, when
    /// the kernel reported one.
    Local { uid: Option<u32> },
    /// A TLS peer that presented an X509-SVID: its SPIFFE ID and the leaf's serial
    /// (lowercase hex, as the CA records it).
    Svid { id: SpiffeId, serial: String },
    /// A TLS peer without a client certificate (the agent API before attestation),
    /// or with one that carries no SPIFFE ID.
    Anonymous,
}

impl Caller {
    /// What the connection info in `ext` proves about the caller.
    pub fn from_extensions(ext: &http::Extensions) -> Self {
        if let Some(tls) = ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
            return tls
                .peer_certs()
                .and_then(|certs| {
                    let id = peer_spiffe_id(&certs)?;
                    let serial = certs
                        .first()
                        .and_then(|leaf| x509_parser::parse_x509_certificate(leaf.as_ref()).ok())
                        .map(|(_, cert)| hex::encode(cert.raw_serial()))
                        .unwrap_or_default();
                    Some(Self::Svid { id, serial })
                })
                .unwrap_or(Self::Anonymous);
        }
        if let Some(uds) = ext.get::<UdsConnectInfo>() {
            return Self::Local {
                uid: uds.peer_cred.map(|c| c.uid()),
            };
        }
        Self::Anonymous
    }

    /// The caller [`CallerLayer`] attached to `req`; refused when there is none.
    pub fn of<T>(req: &Request<T>) -> Result<&Self, Status> {
        req.extensions().get::<Self>().ok_or_else(|| {
            tracing::error!("a request reached a handler without a caller: listener misbuilt");
            Status::internal("the caller of this request is unknown; nothing was done")
        })
    }

    /// The caller's SPIFFE ID, when it presented an SVID.
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        match self {
            Self::Svid { id, .. } => Some(id),
            _ => None,
        }
    }

    /// The caller as the evidence log names it: its SPIFFE ID, `uid:N` for a local
    /// process, `local` when the kernel reported no credentials.
    pub fn actor(&self) -> String {
        match self {
            Self::Svid { id, .. } => id.to_string(),
            Self::Local { uid: Some(uid) } => format!("uid:{uid}"),
            Self::Local { uid: None } | Self::Anonymous => "local".to_string(),
        }
    }

    /// The caller as registration policy sees it.
    pub fn policy_facts(&self) -> CallerFacts {
        match self {
            Self::Svid { id, .. } => CallerFacts::Spiffe(id.clone()),
            Self::Local { uid } => CallerFacts::Local {
                uid: uid.unwrap_or(u32::MAX),
            },
            Self::Anonymous => CallerFacts::Local { uid: u32::MAX },
        }
    }
}

/// The tower layer that attaches a [`Caller`] to every request of a listener.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallerLayer;

impl<S> tower::Layer<S> for CallerLayer {
    type Service = CallerService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CallerService { inner }
    }
}

/// See [`CallerLayer`].
#[derive(Debug, Clone)]
pub struct CallerService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for CallerService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let caller = Caller::from_extensions(req.extensions());
        req.extensions_mut().insert(caller);
        self.inner.call(req)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap()
    }

    #[test]
    fn no_connection_info_is_an_anonymous_caller() {
        assert_eq!(
            Caller::from_extensions(&http::Extensions::new()),
            Caller::Anonymous
        );
    }

    #[test]
    fn actors_and_policy_facts() {
        let svid = Caller::Svid {
            id: id("spiffe://example.org/admin"),
            serial: "01".into(),
        };
        assert_eq!(svid.actor(), "spiffe://example.org/admin");
        assert_eq!(svid.spiffe_id(), Some(&id("spiffe://example.org/admin")));
        assert!(
            matches!(svid.policy_facts(), CallerFacts::Spiffe(ref i) if i == &id("spiffe://example.org/admin"))
        );
        let local = Caller::Local { uid: Some(1000) };
        assert_eq!(local.actor(), "uid:1000");
        assert!(local.spiffe_id().is_none());
        assert!(matches!(
            local.policy_facts(),
            CallerFacts::Local { uid: 1000 }
        ));
        // Without credentials a local caller is no uid at all (never root).
        let unknown = Caller::Local { uid: None };
        assert_eq!(unknown.actor(), "local");
        assert!(matches!(
            unknown.policy_facts(),
            CallerFacts::Local { uid: u32::MAX }
        ));
    }

    #[test]
    fn a_handler_without_the_layer_refuses() {
        let req = Request::new(());
        assert_eq!(Caller::of(&req).unwrap_err().code(), tonic::Code::Internal);
        let mut req = Request::new(());
        req.extensions_mut().insert(Caller::Anonymous);
        assert_eq!(Caller::of(&req).unwrap(), &Caller::Anonymous);
    }

    #[tokio::test]
    async fn the_layer_attaches_the_caller() {
        use tower::{Layer, ServiceExt};
        let svc = CallerLayer.layer(tower::service_fn(|req: http::Request<()>| async move {
            Ok::<_, std::convert::Infallible>(req.extensions().get::<Caller>().cloned())
        }));
        let got = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(got, Some(Caller::Anonymous));
    }
}
