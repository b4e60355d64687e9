//! The SPIFFE Workload API served on the agent's Unix socket.
//!
//! Every call must carry `workload.spiffe.io: true` (else `InvalidArgument`); the
//! caller is attested from its peer credentials (failure: `Unavailable`); a caller
//! with no identity gets `PermissionDenied`. Streams send full state at once and again
//! on every rotation, entry change or bundle change.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use lanyard_core::{Bundle, BundleSet, Clock, JwtSvid, Selector, SystemClock};
use lanyard_proto::node as npb;
use lanyard_proto::workload as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::attestor::{PeerCredentials, WorkloadAttestors};
use crate::evidence::{Deliveries, Recipient};
use crate::h2shim::PeerInfo;
use crate::state::{AgentState, CachedJwt};
use crate::sync::NodeHandle;

/// How long a first X509-SVID response may wait for SVIDs being minted.
const FIRST_SVID_WAIT: Duration = Duration::from_secs(10);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The Workload API service.
#[derive(Clone)]
pub struct WorkloadService {
    state: Arc<AgentState>,
    attestors: Arc<WorkloadAttestors>,
    node: NodeHandle,
    deliveries: Arc<Deliveries>,
}

impl std::fmt::Debug for WorkloadService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadService").finish_non_exhaustive()
    }
}

impl WorkloadService {
    pub fn new(
        state: Arc<AgentState>,
        attestors: Arc<WorkloadAttestors>,
        node: NodeHandle,
        deliveries: Arc<Deliveries>,
    ) -> Self {
        Self {
            state,
            attestors,
            node,
            deliveries,
        }
    }

    /// Header check and attestation: the caller's selectors and who it is.
    async fn caller<T>(&self, req: &Request<T>) -> Result<(Vec<Selector>, Recipient), Status> {
        match req.metadata().get("workload.spiffe.io") {
            Some(v) if v.as_bytes() == b"true" => {}
            _ => {
                return Err(Status::invalid_argument(
                    "security header missing from request: every Workload API call must carry the metadata `workload.spiffe.io: true`",
                ));
            }
        }
        let cred = req.extensions().get::<PeerInfo>().copied().ok_or_else(|| {
            Status::unavailable("workload attestation failed: no peer credentials")
        })?;
        let pid = cred.pid.ok_or_else(|| {
            Status::unavailable("workload attestation failed: the caller's pid is unknown")
        })?;
        let peer = PeerCredentials {
            pid,
            uid: cred.uid,
            gid: cred.gid,
        };
        let selectors = self.attestors.attest(&peer).await.map_err(|e| {
            tracing::warn!(pid, error = %e, "workload attestation failed");
            Status::unavailable(format!("workload attestation failed: {e}"))
        })?;
        let who = Recipient::new(pid, cred.uid, cred.gid, &selectors);
        Ok((selectors, who))
    }

    /// Header check, attestation, and at least one identity; streams refuse a caller
    /// with none at once rather than inside the stream.
    async fn entitled_caller<T>(
        &self,
        req: &Request<T>,
    ) -> Result<(Vec<Selector>, Recipient), Status> {
        let (selectors, who) = self.caller(req).await?;
        if self
            .state
            .identities(&selectors, SystemClock.unix_seconds())
            .is_empty()
        {
            tracing::info!(?selectors, "Workload API: no identity for caller");
            return Err(Status::permission_denied("no identity issued"));
        }
        Ok((selectors, who))
    }

    fn bundle_or_unavailable(&self) -> Result<Bundle, Status> {
        self.state.bundle().ok_or_else(|| {
            Status::unavailable("the agent has no trust bundle yet; it is still starting")
        })
    }

    fn x509_response(
        &self,
        selectors: &[Selector],
        who: &Recipient,
    ) -> Result<Option<pb::X509svidResponse>, Status> {
        let now = SystemClock.unix_seconds();
        let ids = self.state.identities(selectors, now);
        if ids.is_empty() {
            return Err(Status::permission_denied("no identity issued"));
        }
        let bundle = self.bundle_or_unavailable()?.x509_authorities_der();
        let svids: Vec<pb::X509svid> = ids
            .iter()
            .filter_map(|(e, s)| {
                s.as_ref().map(|s| {
                    self.deliveries
                        .x509(who, &e.spiffe_id.to_string(), &s.serial, &s.event_id);
                    pb::X509svid {
                        spiffe_id: e.spiffe_id.to_string(),
                        x509_svid: s.chain.concat(),
                        x509_svid_key: s.key_pkcs8.clone(),
                        bundle: bundle.clone(),
                        hint: e.hint.clone(),
                    }
                })
            })
            .collect();
        if svids.is_empty() {
            return Ok(None); // identities exist, SVIDs are being minted
        }
        let federated_bundles = self
            .state
            .federated()
            .iter()
            .filter(|b| !b.x509_authorities().is_empty())
            .map(|b| (td_key(b), b.x509_authorities_der()))
            .collect();
        Ok(Some(pb::X509svidResponse {
            svids,
            crl: Vec::new(),
            federated_bundles,
        }))
    }
}

fn td_key(b: &Bundle) -> String {
    b.trust_domain().id_string()
}

fn jwt_bundle_json(b: &Bundle) -> Vec<u8> {
    let mut only_jwt = Bundle::new(b.trust_domain().clone());
    for a in b.jwt_authorities() {
        only_jwt.add_jwt_authority(a.clone());
    }
    if let Some(s) = b.sequence() {
        only_jwt.set_sequence(s);
    }
    if let Some(r) = b.refresh_hint() {
        only_jwt.set_refresh_hint(r);
    }
    only_jwt
        .to_json()
        .map(String::into_bytes)
        .unwrap_or_default()
}

/// A stream that recomputes `make` on every state change and sends it when it differs
/// from the last message; an error ends the stream.
fn watch_stream<T, F>(state: Arc<AgentState>, make: F) -> BoxStream<T>
where
    T: Clone + PartialEq + Send + 'static,
    F: Fn() -> Result<Option<T>, Status> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let mut changes = state.subscribe();
    tokio::spawn(async move {
        let mut last: Option<T> = None;
        let started = tokio::time::Instant::now();
        loop {
            changes.mark_unchanged();
            match make() {
                Ok(Some(msg)) => {
                    if last.as_ref() != Some(&msg) {
                        if tx.send(Ok(msg.clone())).await.is_err() {
                            return;
                        }
                        last = Some(msg);
                    }
                }
                Ok(None) => {
                    if last.is_none() && started.elapsed() > FIRST_SVID_WAIT {
                        let _ = tx
                            .send(Err(Status::unavailable(
                                "SVIDs are not available yet; retry",
                            )))
                            .await;
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                // Re-check now and then, and right when the next entry expires.
                _ = tokio::time::sleep(until_next_check(&state)) => {}
                _ = tx.closed() => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// At most 5 s, or until just after the soonest entry expiry.
fn until_next_check(state: &AgentState) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let default = Duration::from_secs(5);
    match state.next_entry_expiry(i64::try_from(now.as_secs()).unwrap_or(i64::MAX)) {
        Some(t) => {
            let at = Duration::from_secs(u64::try_from(t).unwrap_or(0));
            at.saturating_sub(now)
                .saturating_add(Duration::from_millis(20))
                .min(default)
        }
        None => default,
    }
}

fn struct_from_json(map: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), value_from_json(v)))
            .collect(),
    }
}

fn value_from_json(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(value_from_json).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(struct_from_json(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[tonic::async_trait]
impl pb::spiffe_workload_api_server::SpiffeWorkloadApi for WorkloadService {
    type FetchX509SVIDStream = BoxStream<pb::X509svidResponse>;
    type FetchX509BundlesStream = BoxStream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = BoxStream<pb::JwtBundlesResponse>;
    type FetchWITSVIDStream = BoxStream<pb::WitsvidResponse>;
    type FetchWITBundlesStream = BoxStream<pb::WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let (selectors, who) = self.entitled_caller(&req).await?;
        let this = self.clone();
        Ok(Response::new(watch_stream(self.state.clone(), move || {
            this.x509_response(&selectors, &who)
        })))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.entitled_caller(&req).await?;
        let state = self.state.clone();
        Ok(Response::new(watch_stream(self.state.clone(), move || {
            let b = state
                .bundle()
                .ok_or_else(|| Status::unavailable("no trust bundle yet"))?;
            let mut bundles = HashMap::from([(td_key(&b), b.x509_authorities_der())]);
            for f in state.federated() {
                if !f.x509_authorities().is_empty() {
                    bundles.insert(td_key(&f), f.x509_authorities_der());
                }
            }
            Ok(Some(pb::X509BundlesResponse {
                crl: Vec::new(),
                bundles,
            }))
        })))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let (selectors, who) = self.caller(&req).await?;
        let r = req.into_inner();
        if r.audience.is_empty() || r.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument(
                "audience must be specified (one or more non-empty values)",
            ));
        }
        let now = SystemClock.unix_seconds();
        let mut ids = self.state.identities(&selectors, now);
        if !r.spiffe_id.is_empty() {
            ids.retain(|(e, _)| e.spiffe_id.to_string() == r.spiffe_id);
        }
        if ids.is_empty() {
            return Err(Status::permission_denied("no identity issued"));
        }
        let mut audience = r.audience.clone();
        audience.sort();
        audience.dedup();
        let mut svids = Vec::new();
        for (entry, _) in ids {
            let jwt = match self.state.cached_jwt(&entry.id, &audience, now) {
                Some(j) => j,
                None => {
                    let mut client = self.node.client().await.ok_or_else(|| {
                        Status::unavailable("the Lanyard server is not reachable; retry shortly")
                    })?;
                    let resp = client
                        .new_jwt_svid(npb::JwtSvidRequest {
                            entry_id: entry.id.clone(),
                            audience: audience.clone(),
                            ttl_seconds: 0,
                        })
                        .await
                        .map_err(|e| {
                            Status::unavailable(format!("JWT-SVID minting failed: {}", e.message()))
                        })?
                        .into_inner();
                    let kid = JwtSvid::parse_insecure(&resp.token)
                        .map(|t| t.kid().to_string())
                        .unwrap_or_default();
                    let jwt = CachedJwt {
                        kid,
                        token: resp.token,
                        issued_at: now,
                        expires_at: resp.expires_at,
                        jti: resp.jti,
                        event_id: resp.event_id,
                    };
                    self.state.store_jwt(&entry.id, &audience, jwt.clone());
                    jwt
                }
            };
            self.deliveries.jwt(
                &who,
                &entry.spiffe_id.to_string(),
                &jwt.jti,
                &audience,
                &jwt.event_id,
            );
            let token = jwt.token;
            svids.push(pb::Jwtsvid {
                spiffe_id: entry.spiffe_id.to_string(),
                svid: token,
                hint: entry.hint.clone(),
            });
        }
        Ok(Response::new(pb::JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.entitled_caller(&req).await?;
        let state = self.state.clone();
        Ok(Response::new(watch_stream(self.state.clone(), move || {
            let b = state
                .bundle()
                .ok_or_else(|| Status::unavailable("no trust bundle yet"))?;
            let mut bundles = HashMap::from([(td_key(&b), jwt_bundle_json(&b))]);
            for f in state.federated() {
                bundles.insert(td_key(&f), jwt_bundle_json(&f));
            }
            Ok(Some(pb::JwtBundlesResponse { bundles }))
        })))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        self.caller(&req).await?;
        let r = req.into_inner();
        if r.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if r.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let set: BundleSet = self
            .state
            .bundles
            .read()
            .map(|b| b.clone())
            .unwrap_or_default();
        let svid = JwtSvid::validate(&r.svid, &[r.audience.as_str()], &set, &SystemClock)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some(jti) = svid.claims().get("jti").and_then(|v| v.as_str())
            && self.state.is_revoked(jti)
        {
            return Err(Status::invalid_argument(format!(
                "the JWT-SVID with jti {jti:?} has been revoked"
            )));
        }
        Ok(Response::new(pb::ValidateJwtsvidResponse {
            spiffe_id: svid.spiffe_id().to_string(),
            claims: Some(struct_from_json(svid.claims())),
        }))
    }

    async fn fetch_witsvid(
        &self,
        _req: Request<pb::WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::unimplemented(
            "the WIT-SVID profile is not implemented by this agent",
        ))
    }

    async fn fetch_wit_bundles(
        &self,
        _req: Request<pb::WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented(
            "the WIT-SVID profile is not implemented by this agent",
        ))
    }
}

/// Lanyard's secrets service on the Workload API socket: releases the secret of a
/// time-boxed exception to an attested workload whose identity the exception allows.
/// The server decides and records every release and refusal.
#[tonic::async_trait]
impl lanyard_proto::secrets::secrets_server::Secrets for WorkloadService {
    async fn fetch_secret(
        &self,
        req: Request<lanyard_proto::secrets::FetchSecretRequest>,
    ) -> Result<Response<lanyard_proto::secrets::FetchSecretResponse>, Status> {
        let (selectors, who) = self.caller(&req).await?;
        let r = req.into_inner();
        if r.name.is_empty() || r.name.len() > 64 {
            return Err(Status::invalid_argument(
                "name must be the exception's name (1 to 64 characters)",
            ));
        }
        let now = SystemClock.unix_seconds();
        let mut ids = self.state.identities(&selectors, now);
        if !r.spiffe_id.is_empty() {
            ids.retain(|(e, _)| e.spiffe_id.to_string() == r.spiffe_id);
        }
        if ids.is_empty() {
            return Err(Status::permission_denied(
                "no identity issued: secrets are released only to attested workloads holding an SVID",
            ));
        }
        let mut client = self.node.client().await.ok_or_else(|| {
            Status::unavailable("the Lanyard server is not reachable; retry shortly")
        })?;
        let recipient = npb::Delivery {
            spiffe_id: String::new(),
            svid_type: "secret".into(),
            pid: who.pid,
            uid: who.uid,
            gid: who.gid,
            path: who.path.clone(),
            sha256: who.sha256.clone(),
            ..Default::default()
        };
        // Try each of the caller's identities; the first one the exception allows wins.
        let mut last = Status::permission_denied("no identity issued");
        for (entry, _) in ids {
            let mut rec = recipient.clone();
            rec.spiffe_id = entry.spiffe_id.to_string();
            match client
                .fetch_secret(npb::SecretRequest {
                    name: r.name.clone(),
                    entry_id: entry.id.clone(),
                    recipient: Some(rec),
                })
                .await
            {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    return Ok(Response::new(lanyard_proto::secrets::FetchSecretResponse {
                        name: r.name,
                        secret: resp.secret,
                        expires_at: resp.expires_at,
                        spiffe_id: resp.spiffe_id,
                    }));
                }
                Err(e) if e.code() == tonic::Code::PermissionDenied => last = e,
                Err(e) => return Err(Status::new(e.code(), e.message().to_string())),
            }
        }
        Err(Status::permission_denied(last.message().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestor::{AttestError, WorkloadAttestor};
    use crate::state::CachedEntry;
    use crate::sync_update::SyncState;
    use lanyard_core::TrustDomain;
    use pb::spiffe_workload_api_server::SpiffeWorkloadApi;

    /// Attests every caller with fixed selectors, or fails.
    #[derive(Debug)]
    struct Fixed(Option<Vec<&'static str>>);

    #[tonic::async_trait]
    impl WorkloadAttestor for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        async fn attest(&self, _: &PeerCredentials) -> Result<Vec<Selector>, AttestError> {
            match &self.0 {
                Some(s) => Ok(s.iter().map(|x| Selector::new(x).unwrap()).collect()),
                None => Err(AttestError::Source {
                    attestor: "fixed",
                    reason: "kubelet refused".into(),
                }),
            }
        }
    }

    fn service(selectors: Option<Vec<&'static str>>) -> WorkloadService {
        let td = TrustDomain::new("example.org").unwrap();
        let state = Arc::new(AgentState::new(td, None));
        state.apply(SyncState {
            entries: vec![CachedEntry {
                id: "e1".into(),
                spiffe_id: lanyard_core::SpiffeId::new("spiffe://example.org/web").unwrap(),
                selectors: vec![Selector::new("unix:uid:1000").unwrap()],
                hint: String::new(),
                x509_ttl: 0,
                jwt_ttl: 0,
                expires_at: 0,
                revision: 1,
                owner: "team-a".into(),
                environment: String::new(),
            }],
            ..SyncState::default()
        });
        WorkloadService::new(
            state,
            Arc::new(WorkloadAttestors::new(
                vec![Arc::new(Fixed(selectors))],
                crate::attestor::ATTEST_BOUND,
            )),
            NodeHandle::default(),
            Arc::new(Deliveries::default()),
        )
    }

    fn request<T>(msg: T, header: bool, peer: Option<PeerInfo>) -> Request<T> {
        let mut r = Request::new(msg);
        if header {
            r.metadata_mut()
                .insert("workload.spiffe.io", "true".parse().unwrap());
        }
        if let Some(p) = peer {
            r.extensions_mut().insert(p);
        }
        r
    }

    const PEER: PeerInfo = PeerInfo {
        pid: Some(42),
        uid: 1000,
        gid: 1000,
    };

    #[tokio::test]
    async fn callers_without_the_header_or_credentials_are_refused() {
        let s = service(Some(vec!["unix:uid:1000"]));
        let e = s
            .fetch_x509svid(request(pb::X509svidRequest {}, false, Some(PEER)))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("workload.spiffe.io"));
        let e = s
            .fetch_x509svid(request(pb::X509svidRequest {}, true, None))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        let no_pid = PeerInfo { pid: None, ..PEER };
        let e = s
            .fetch_x509svid(request(pb::X509svidRequest {}, true, Some(no_pid)))
            .await
            .err()
            .unwrap();
        assert!(e.message().contains("pid is unknown"), "{e:?}");
    }

    #[tokio::test]
    async fn a_failing_attestor_is_unavailable_with_its_reason() {
        let s = service(None);
        let e = s
            .fetch_x509svid(request(pb::X509svidRequest {}, true, Some(PEER)))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert_eq!(
            e.message(),
            "workload attestation failed: the fixed attestor: kubelet refused"
        );
    }

    #[tokio::test]
    async fn entitlement_follows_the_selectors() {
        let stranger = service(Some(vec!["unix:uid:7"]));
        let e = stranger
            .fetch_x509svid(request(pb::X509svidRequest {}, true, Some(PEER)))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let web = service(Some(vec!["unix:uid:1000", "unix:gid:1000"]));
        let (selectors, who) = web
            .entitled_caller(&request((), true, Some(PEER)))
            .await
            .unwrap();
        // The entry matches, but without a trust bundle nothing is served yet.
        let e = web.x509_response(&selectors, &who).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(e.message().contains("no trust bundle yet"), "{e:?}");
    }
}
