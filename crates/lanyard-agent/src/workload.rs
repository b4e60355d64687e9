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
    /// Expiry checks of entries, SVIDs and JWT-SVIDs.
    clock: Arc<dyn Clock>,
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
            clock: Arc::new(SystemClock),
        }
    }

    /// The same service reading time from `clock` (tests: a fake clock).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The selectors the workload attestors find for `peer` (one-shot mode names
    /// them when no entry matches).
    pub async fn selectors(
        &self,
        peer: &PeerCredentials,
    ) -> Result<Vec<Selector>, crate::attestor::AttestError> {
        self.attestors.attest(peer).await
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
        self.attest_caller(req).await
    }

    /// Attestation alone, for services on the same socket whose clients send no
    /// Workload API header (Envoy SDS, [`crate::sds`]).
    pub(crate) async fn attest_caller<T>(
        &self,
        req: &Request<T>,
    ) -> Result<(Vec<Selector>, Recipient), Status> {
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
            .identities(&selectors, self.clock.unix_seconds())
            .is_empty()
        {
            tracing::info!(?selectors, "Workload API: no identity for caller");
            return Err(Status::permission_denied("no identity issued"));
        }
        Ok((selectors, who))
    }

    pub(crate) fn state(&self) -> &Arc<AgentState> {
        &self.state
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub(crate) fn deliveries(&self) -> &Deliveries {
        &self.deliveries
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
        let now = self.clock.unix_seconds();
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
fn watch_stream<T, F>(state: Arc<AgentState>, clock: Arc<dyn Clock>, make: F) -> BoxStream<T>
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
                _ = tokio::time::sleep(until_next_check(&state, clock.as_ref())) => {}
                _ = tx.closed() => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// At most 5 s, or until just after the soonest entry expiry.
pub(crate) fn until_next_check(state: &AgentState, clock: &dyn Clock) -> Duration {
    let now = clock
        .now()
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
        Ok(Response::new(watch_stream(
            self.state.clone(),
            self.clock.clone(),
            move || this.x509_response(&selectors, &who),
        )))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.entitled_caller(&req).await?;
        let state = self.state.clone();
        Ok(Response::new(watch_stream(
            self.state.clone(),
            self.clock.clone(),
            move || {
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
            },
        )))
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
        let now = self.clock.unix_seconds();
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
        Ok(Response::new(watch_stream(
            self.state.clone(),
            self.clock.clone(),
            move || {
                let b = state
                    .bundle()
                    .ok_or_else(|| Status::unavailable("no trust bundle yet"))?;
                let mut bundles = HashMap::from([(td_key(&b), jwt_bundle_json(&b))]);
                for f in state.federated() {
                    bundles.insert(td_key(&f), jwt_bundle_json(&f));
                }
                Ok(Some(pb::JwtBundlesResponse { bundles }))
            },
        )))
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
        let svid = JwtSvid::validate(&r.svid, &[r.audience.as_str()], &set, self.clock.as_ref())
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
        let now = self.clock.unix_seconds();
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

    // ---- Responses built from the cache, selector matching, JWT-SVIDs ----

    use crate::state::CachedSvid;
    use crate::test_support::{JwtKey, TestCa, b64url, entry, trust_domain};
    use lanyard_core::{SpiffeId, X509Svid};
    use tokio_stream::StreamExt;

    /// A service over a state holding `entries` and `bundle`, attesting every caller
    /// with `selectors`.
    fn service_with(
        selectors: Vec<&'static str>,
        entries: Vec<CachedEntry>,
        bundle: Option<Bundle>,
    ) -> WorkloadService {
        let state = Arc::new(AgentState::new(trust_domain(), bundle));
        state.apply(SyncState {
            entries,
            ..SyncState::default()
        });
        WorkloadService::new(
            state,
            Arc::new(WorkloadAttestors::new(
                vec![Arc::new(Fixed(Some(selectors)))],
                crate::attestor::ATTEST_BOUND,
            )),
            NodeHandle::default(),
            Arc::new(Deliveries::default()),
        )
    }

    /// Store an X509-SVID signed by `ca` for entry `id`, valid for the next hour.
    fn store_svid(s: &WorkloadService, ca: &TestCa, id: &str) -> CachedSvid {
        let now = SystemClock.unix_seconds();
        let spiffe_id = format!("spiffe://example.org/{id}");
        let (leaf, key) = ca.leaf(&spiffe_id, now - 60, now + 3600);
        let svid = CachedSvid {
            spiffe_id: SpiffeId::new(&spiffe_id).unwrap(),
            serial: X509Svid::parse(vec![leaf.clone()])
                .unwrap()
                .serial()
                .to_string(),
            chain: vec![leaf, ca.der.clone()],
            key_pkcs8: key,
            issued_at: now - 60,
            expires_at: now + 3600,
            rotate_at: now + 1800,
            entry_revision: 1,
            event_id: format!("ev-{id}"),
            authority: ca.key_id(),
        };
        s.state.store_svid(id, svid.clone());
        svid
    }

    fn who() -> Recipient {
        Recipient::new(PEER.pid.unwrap(), PEER.uid, PEER.gid, &[])
    }

    fn sel(list: &[&str]) -> Vec<Selector> {
        list.iter().map(|s| Selector::new(s).unwrap()).collect()
    }

    #[test]
    fn the_x509_response_serves_the_matching_entries_with_their_svids() {
        let ca = TestCa::new("ca1");
        let mut web = entry("web", &["unix:uid:1000"], 1);
        web.hint = "internal".into();
        let s = service_with(
            vec![],
            vec![
                web,
                entry("db", &["unix:uid:1000", "unix:gid:50"], 1),
                entry("ops", &["unix:uid:0"], 1),
                entry("pending", &["unix:uid:1000"], 1),
            ],
            Some(ca.bundle()),
        );
        let web_svid = store_svid(&s, &ca, "web");
        store_svid(&s, &ca, "db");
        store_svid(&s, &ca, "ops");
        // A federated trust domain's X.509 authorities come along.
        let other = TestCa::new("other");
        let mut fed = Bundle::new(TrustDomain::new("other.org").unwrap());
        fed.add_x509_authority(lanyard_core::X509Authority::from_der(other.der.clone()).unwrap());
        let mut jwt_only = Bundle::new(TrustDomain::new("jwt.org").unwrap());
        jwt_only.add_jwt_authority(JwtKey::new("k").authority());
        s.state.apply(SyncState {
            entries: s.state.entries(),
            federated: vec![jwt_only, fed],
            ..SyncState::default()
        });

        // uid 1000 without gid 50: web (SVID) and pending (none yet), not db or ops.
        let r = s
            .x509_response(&sel(&["unix:uid:1000", "unix:gid:1000"]), &who())
            .unwrap()
            .unwrap();
        assert_eq!(r.svids.len(), 1);
        let got = &r.svids[0];
        assert_eq!(got.spiffe_id, "spiffe://example.org/web");
        assert_eq!(got.x509_svid, web_svid.chain.concat());
        assert_eq!(got.x509_svid_key, web_svid.key_pkcs8);
        assert_eq!(got.bundle, ca.der);
        assert_eq!(got.hint, "internal");
        // The Workload API encoding parses back to the SVID.
        let parsed = X509Svid::parse_concatenated(&got.x509_svid).unwrap();
        assert_eq!(parsed.serial(), web_svid.serial);
        assert_eq!(
            r.federated_bundles,
            HashMap::from([("spiffe://other.org".to_string(), other.der.clone())])
        );
        assert!(r.crl.is_empty());
        // The delivery is recorded once per process and certificate.
        assert_eq!(s.deliveries.pending(), 1);
        s.x509_response(&sel(&["unix:uid:1000"]), &who()).unwrap();
        assert_eq!(s.deliveries.pending(), 1);

        // With every selector, db too, in entry order.
        let r = s
            .x509_response(&sel(&["unix:gid:50", "unix:uid:1000"]), &who())
            .unwrap()
            .unwrap();
        let ids: Vec<&str> = r.svids.iter().map(|v| v.spiffe_id.as_str()).collect();
        assert_eq!(ids, ["spiffe://example.org/web", "spiffe://example.org/db"]);
    }

    #[test]
    fn no_identity_is_permission_denied_and_minting_is_waited_for() {
        let ca = TestCa::new("ca1");
        let s = service_with(
            vec![],
            vec![
                entry("web", &["unix:uid:1000"], 1),
                // An entry without selectors matches nobody.
                entry("any", &[], 1),
            ],
            Some(ca.bundle()),
        );
        let e = s.x509_response(&sel(&["unix:uid:7"]), &who()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(e.message(), "no identity issued");
        assert!(s.x509_response(&[], &who()).is_err());
        // Entitled, but the SVID is still being minted.
        assert_eq!(
            s.x509_response(&sel(&["unix:uid:1000"]), &who()).unwrap(),
            None
        );
        assert_eq!(s.deliveries.pending(), 0);
    }

    #[test]
    fn the_service_reads_expiry_from_its_clock() {
        let ca = TestCa::new("ca1");
        let clock = lanyard_core::FakeClock::now_system();
        let s = service_with(
            vec![],
            vec![entry("web", &["unix:uid:1000"], 1)],
            Some(ca.bundle()),
        )
        .with_clock(Arc::new(clock.clone()));
        let svid = store_svid(&s, &ca, "web");
        assert!(
            s.x509_response(&sel(&["unix:uid:1000"]), &who())
                .unwrap()
                .is_some()
        );
        // Past the SVID's expiry on the service's clock, nothing is served.
        clock.set(svid.expires_at);
        assert_eq!(
            s.x509_response(&sel(&["unix:uid:1000"]), &who()).unwrap(),
            None
        );
    }

    #[test]
    fn expired_entries_and_svids_are_not_served() {
        let ca = TestCa::new("ca1");
        let now = SystemClock.unix_seconds();
        let mut gone = entry("gone", &["unix:uid:1000"], 1);
        gone.expires_at = now - 1;
        let s = service_with(
            vec![],
            vec![entry("web", &["unix:uid:1000"], 1), gone],
            Some(ca.bundle()),
        );
        let mut svid = store_svid(&s, &ca, "web");
        svid.expires_at = now;
        s.state.store_svid("web", svid);
        let ids = s.state.identities(&sel(&["unix:uid:1000"]), now);
        assert_eq!(ids.len(), 1, "the expired entry matches nobody");
        assert!(ids[0].1.is_none(), "the expired SVID is not served");
        assert_eq!(
            s.x509_response(&sel(&["unix:uid:1000"]), &who()).unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn the_x509_stream_sends_at_once_and_again_on_rotation() {
        let ca = TestCa::new("ca1");
        let s = service_with(
            vec!["unix:uid:1000"],
            vec![entry("web", &["unix:uid:1000"], 1)],
            Some(ca.bundle()),
        );
        let first = store_svid(&s, &ca, "web");
        let mut stream = s
            .fetch_x509svid(request(pb::X509svidRequest {}, true, Some(PEER)))
            .await
            .unwrap()
            .into_inner();
        let m = stream.next().await.unwrap().unwrap();
        assert_eq!(m.svids[0].x509_svid, first.chain.concat());
        let second = store_svid(&s, &ca, "web");
        let m = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m.svids[0].x509_svid, second.chain.concat());
        assert_ne!(first.chain, second.chain);
        // A change that leaves the response as it was sends nothing.
        s.state.store_svid("web", second);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), stream.next())
                .await
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_x509_stream_gives_up_when_no_svid_arrives() {
        let s = service_with(
            vec!["unix:uid:1000"],
            vec![entry("web", &["unix:uid:1000"], 1)],
            Some(TestCa::new("ca1").bundle()),
        );
        let mut stream = s
            .fetch_x509svid(request(pb::X509svidRequest {}, true, Some(PEER)))
            .await
            .unwrap()
            .into_inner();
        let e = stream.next().await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(e.message().contains("not available yet"), "{e:?}");
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn bundle_streams_carry_local_and_federated_bundles() {
        let ca = TestCa::new("ca1");
        let key = JwtKey::new("k1");
        let mut bundle = ca.bundle();
        bundle.add_jwt_authority(key.authority());
        bundle.set_sequence(7);
        let s = service_with(
            vec!["unix:uid:1000"],
            vec![entry("web", &["unix:uid:1000"], 1)],
            Some(bundle),
        );
        let mut fed = Bundle::new(TrustDomain::new("other.org").unwrap());
        fed.add_jwt_authority(JwtKey::new("k2").authority());
        s.state.apply(SyncState {
            entries: s.state.entries(),
            federated: vec![fed],
            ..SyncState::default()
        });
        let x = s
            .fetch_x509_bundles(request(pb::X509BundlesRequest {}, true, Some(PEER)))
            .await
            .unwrap()
            .into_inner()
            .next()
            .await
            .unwrap()
            .unwrap();
        // The federated bundle has no X.509 authority: left out.
        assert_eq!(
            x.bundles,
            HashMap::from([("spiffe://example.org".to_string(), ca.der.clone())])
        );
        let j = s
            .fetch_jwt_bundles(request(pb::JwtBundlesRequest {}, true, Some(PEER)))
            .await
            .unwrap()
            .into_inner()
            .next()
            .await
            .unwrap()
            .unwrap();
        let mut tds: Vec<&String> = j.bundles.keys().collect();
        tds.sort();
        assert_eq!(tds, ["spiffe://example.org", "spiffe://other.org"]);
        let local = Bundle::parse(trust_domain(), &j.bundles["spiffe://example.org"]).unwrap();
        assert_eq!(local.x509_authorities().len(), 0, "JWT authorities only");
        assert_eq!(local.jwt_authorities().count(), 1);
        assert!(local.jwt_authority("k1").is_some());
        assert_eq!(local.sequence(), Some(7));
        // A stranger gets no bundles.
        let stranger = service_with(vec!["unix:uid:7"], s.state.entries(), None);
        let e = stranger
            .fetch_jwt_bundles(request(pb::JwtBundlesRequest {}, true, Some(PEER)))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
    }

    #[tokio::test]
    async fn jwt_svid_requests_are_checked_and_served_from_the_cache() {
        let s = service_with(
            vec!["unix:uid:1000"],
            vec![
                entry("web", &["unix:uid:1000"], 1),
                entry("api", &["unix:uid:1000"], 1),
            ],
            None,
        );
        let ask = |audience: &[&str], spiffe_id: &str| {
            request(
                pb::JwtsvidRequest {
                    audience: audience.iter().map(|a| (*a).to_string()).collect(),
                    spiffe_id: spiffe_id.into(),
                },
                true,
                Some(PEER),
            )
        };
        for bad in [&[][..], &[""][..], &["db", ""][..]] {
            let e = s.fetch_jwtsvid(ask(bad, "")).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(e.message().contains("audience"));
        }
        let e = s
            .fetch_jwtsvid(ask(&["db"], "spiffe://example.org/other"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        // Not cached, and no server to mint it.
        let e = s
            .fetch_jwtsvid(ask(&["db"], "spiffe://example.org/web"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(e.message().contains("not reachable"), "{e:?}");
        // Cached under the sorted, deduplicated audience: served without the server.
        let now = SystemClock.unix_seconds();
        let audience = vec!["a".to_string(), "b".to_string()];
        s.state.store_jwt(
            "web",
            &audience,
            CachedJwt {
                token: "header.claims.sig".into(),
                issued_at: now,
                expires_at: now + 300,
                jti: "j1".into(),
                event_id: "ev-1".into(),
                kid: "k1".into(),
            },
        );
        let r = s
            .fetch_jwtsvid(ask(&["b", "a", "b"], "spiffe://example.org/web"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.svids.len(), 1);
        assert_eq!(r.svids[0].svid, "header.claims.sig");
        assert_eq!(r.svids[0].spiffe_id, "spiffe://example.org/web");
        assert_eq!(s.deliveries.pending(), 1);
        // Without a SPIFFE ID every identity is asked for: api is not cached.
        let e = s.fetch_jwtsvid(ask(&["a", "b"], "")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
    }

    #[tokio::test]
    async fn jwt_svids_are_validated_against_the_bundle_and_revocations() {
        let key = JwtKey::new("k1");
        let mut bundle = Bundle::new(trust_domain());
        bundle.add_jwt_authority(key.authority());
        let s = service_with(vec![], Vec::new(), Some(bundle));
        let now = SystemClock.unix_seconds();
        let token = key.sign(&serde_json::json!({
            "sub": "spiffe://example.org/web",
            "aud": ["db"],
            "exp": now + 300,
            "iat": now,
            "jti": "j1",
            "groups": ["a", {"n": 1.5, "ok": true, "none": null}],
        }));
        let ask = |audience: &str, svid: &str| {
            request(
                pb::ValidateJwtsvidRequest {
                    audience: audience.into(),
                    svid: svid.into(),
                },
                true,
                Some(PEER),
            )
        };
        for (aud, svid, says) in [
            ("", token.as_str(), "audience must be specified"),
            ("db", "", "svid must be specified"),
        ] {
            let e = s.validate_jwtsvid(ask(aud, svid)).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert_eq!(e.message(), says);
        }
        let e = s.validate_jwtsvid(ask("web", &token)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let forged = key.sign(&serde_json::json!({"sub": "spiffe://example.org/web", "aud": ["db"], "exp": now + 300}));
        let tampered = format!(
            "{}.{}",
            &token[..token.rfind('.').unwrap()],
            &forged[forged.rfind('.').unwrap() + 1..]
        );
        let e = s.validate_jwtsvid(ask("db", &tampered)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);

        let r = s
            .validate_jwtsvid(ask("db", &token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.spiffe_id, "spiffe://example.org/web");
        let claims = r.claims.unwrap().fields;
        use prost_types::value::Kind;
        assert_eq!(claims["jti"].kind, Some(Kind::StringValue("j1".into())));
        let Some(Kind::ListValue(groups)) = &claims["groups"].kind else {
            panic!("{:?}", claims["groups"]);
        };
        let Some(Kind::StructValue(inner)) = &groups.values[1].kind else {
            panic!("{groups:?}");
        };
        assert_eq!(inner.fields["n"].kind, Some(Kind::NumberValue(1.5)));
        assert_eq!(inner.fields["ok"].kind, Some(Kind::BoolValue(true)));
        assert_eq!(inner.fields["none"].kind, Some(Kind::NullValue(0)));

        // Once the server revokes its jti, it no longer validates.
        s.state.apply(SyncState {
            revoked_jtis: ["j1".to_string()].into(),
            ..SyncState::default()
        });
        let e = s.validate_jwtsvid(ask("db", &token)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("revoked"), "{e:?}");
    }

    #[tokio::test]
    async fn secrets_need_a_name_an_identity_and_the_server() {
        use lanyard_proto::secrets::FetchSecretRequest;
        use lanyard_proto::secrets::secrets_server::Secrets;
        let s = service_with(
            vec!["unix:uid:1000"],
            vec![entry("web", &["unix:uid:1000"], 1)],
            None,
        );
        let ask = |name: &str, spiffe_id: &str| {
            request(
                FetchSecretRequest {
                    name: name.into(),
                    spiffe_id: spiffe_id.into(),
                },
                true,
                Some(PEER),
            )
        };
        for bad in [String::new(), "x".repeat(65)] {
            let e = s.fetch_secret(ask(&bad, "")).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
        }
        let e = s
            .fetch_secret(ask("db-password", "spiffe://example.org/other"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().starts_with("no identity issued"));
        let e = s.fetch_secret(ask("db-password", "")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        let e = s
            .fetch_secret(request(
                ask("db-password", "").into_inner(),
                false,
                Some(PEER),
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn wit_svids_are_not_implemented() {
        let s = service(Some(vec!["unix:uid:1000"]));
        let e = s
            .fetch_witsvid(request(pb::WitsvidRequest::default(), true, Some(PEER)))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
        let e = s
            .fetch_wit_bundles(request(pb::WitBundlesRequest::default(), true, Some(PEER)))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
    }

    #[test]
    fn the_next_check_is_soon_after_the_next_entry_expiry_and_at_most_five_seconds() {
        let now = SystemClock.unix_seconds();
        let none = service_with(vec![], vec![entry("web", &["unix:uid:1"], 1)], None);
        assert_eq!(
            until_next_check(&none.state, &SystemClock),
            Duration::from_secs(5)
        );
        let mut soon = entry("soon", &["unix:uid:1"], 1);
        soon.expires_at = now + 3;
        let mut later = entry("later", &["unix:uid:1"], 1);
        later.expires_at = now + 60;
        let s = service_with(vec![], vec![later, soon], None);
        let wait = until_next_check(&s.state, &SystemClock);
        // Just after the soonest expiry (whatever second boundary passed meanwhile).
        assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_millis(3020),
            "{wait:?}"
        );
    }

    #[test]
    fn jwt_bundles_keep_only_jwt_authorities_sequence_and_refresh_hint() {
        let ca = TestCa::new("ca1");
        let mut b = ca.bundle();
        b.add_jwt_authority(JwtKey::new("k1").authority());
        b.set_sequence(3);
        b.set_refresh_hint(60);
        let only = Bundle::parse(trust_domain(), &jwt_bundle_json(&b)).unwrap();
        assert!(only.x509_authorities().is_empty());
        assert_eq!(only.jwt_authorities().count(), 1);
        assert_eq!(only.sequence(), Some(3));
        assert_eq!(only.refresh_hint(), Some(60));
        assert_eq!(td_key(&only), "spiffe://example.org");
        assert_eq!(b64url(b"ab?"), "YWI_");
    }
}
