//! Unit tests of SDS's pure parts: resource selection, the validator choice, the
//! state-of-the-world and delta state machines, and the protobuf edge.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn svid(id: &str, leaf: &[u8]) -> SvidFacts {
    SvidFacts {
        spiffe_id: id.into(),
        chain_der: vec![leaf.to_vec(), b"intermediate".to_vec()],
        key_pkcs8: b"secret-key-bytes".to_vec(),
        serial: format!("serial-{}", leaf.len()),
        event_id: "ev".into(),
    }
}

fn bundle(td: &str, ca: &[u8]) -> BundleFacts {
    BundleFacts {
        trust_domain: td.into(),
        authorities_der: vec![ca.to_vec()],
    }
}

fn holdings() -> Holdings {
    Holdings {
        svids: vec![
            svid("spiffe://example.org/web", b"leaf-web"),
            svid("spiffe://example.org/db", b"leaf-db"),
        ],
        pending: vec!["spiffe://example.org/new".into()],
        bundle: Some(bundle("example.org", b"ca-own")),
        federated: vec![bundle("partner.org", b"ca-partner")],
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn cfg() -> SdsConfig {
    SdsConfig::default()
}

fn leaf_of(r: &SecretResource) -> &[u8] {
    match &r.kind {
        SecretKind::Certificate { chain_der, .. } => &chain_der[0],
        other => panic!("not a certificate: {other:?}"),
    }
}

// ---- which resources a caller gets ----

#[test]
fn default_is_the_first_svid_and_a_spiffe_id_names_its_own() {
    let sel = select(
        &names(&["default", "spiffe://example.org/db"]),
        &holdings(),
        &cfg(),
        false,
    );
    assert!(sel.missing.is_empty(), "{sel:?}");
    assert_eq!(sel.resources.len(), 2);
    assert_eq!(sel.resources[0].name, "default");
    assert_eq!(leaf_of(&sel.resources[0]), b"leaf-web");
    assert_eq!(sel.resources[1].name, "spiffe://example.org/db");
    assert_eq!(leaf_of(&sel.resources[1]), b"leaf-db");
}

#[test]
fn rootca_and_trust_domain_ids_are_validation_contexts() {
    let sel = select(
        &names(&["ROOTCA", "spiffe://example.org", "spiffe://partner.org"]),
        &holdings(),
        &cfg(),
        false,
    );
    assert!(sel.missing.is_empty(), "{sel:?}");
    let kinds: Vec<_> = sel.resources.iter().map(|r| r.kind.clone()).collect();
    assert_eq!(
        kinds,
        vec![
            SecretKind::TrustedCa {
                authorities_der: vec![b"ca-own".to_vec()]
            },
            SecretKind::TrustedCa {
                authorities_der: vec![b"ca-own".to_vec()]
            },
            SecretKind::TrustedCa {
                authorities_der: vec![b"ca-partner".to_vec()]
            },
        ]
    );
    // With the SPIFFE validator each is a one-trust-domain validator config.
    let sel = select(&names(&["ROOTCA"]), &holdings(), &cfg(), true);
    assert_eq!(
        sel.resources[0].kind,
        SecretKind::Spiffe {
            trust_domains: vec![bundle("example.org", b"ca-own")]
        }
    );
}

#[test]
fn all_holds_every_bundle_sorted_and_needs_the_spiffe_validator() {
    let mut h = holdings();
    h.federated.insert(0, bundle("zeta.org", b"ca-zeta"));
    let sel = select(&names(&["ALL"]), &h, &cfg(), true);
    let SecretKind::Spiffe { trust_domains } = &sel.resources[0].kind else {
        panic!("{sel:?}")
    };
    let tds: Vec<_> = trust_domains
        .iter()
        .map(|t| t.trust_domain.as_str())
        .collect();
    assert_eq!(tds, ["example.org", "partner.org", "zeta.org"]);
    let sel = select(&names(&["ALL"]), &h, &cfg(), false);
    assert!(sel.resources.is_empty());
    assert_eq!(
        sel.missing,
        vec![("ALL".to_string(), Missing::AllNeedsSpiffeValidator)]
    );
}

#[test]
fn unknown_and_not_yet_minted_names_are_left_out_with_the_reason() {
    let sel = select(
        &names(&[
            "default",
            "spiffe://example.org/other",
            "spiffe://example.org/new",
            "spiffe://stranger.org",
            "default",
        ]),
        &holdings(),
        &cfg(),
        false,
    );
    assert_eq!(sel.resources.len(), 1, "each name answered once");
    assert_eq!(
        sel.missing,
        vec![
            ("spiffe://example.org/other".to_string(), Missing::Unknown),
            (
                "spiffe://example.org/new".to_string(),
                Missing::NotMintedYet
            ),
            ("spiffe://stranger.org".to_string(), Missing::Unknown),
        ]
    );
    let only_pending = Holdings {
        svids: vec![],
        ..holdings()
    };
    let sel = select(&names(&["default"]), &only_pending, &cfg(), false);
    assert_eq!(
        sel.missing,
        vec![("default".to_string(), Missing::NotMintedYet)]
    );
    let no_bundle = Holdings {
        bundle: None,
        ..holdings()
    };
    let sel = select(&names(&["ROOTCA"]), &no_bundle, &cfg(), false);
    assert_eq!(
        sel.missing,
        vec![("ROOTCA".to_string(), Missing::NoBundleYet)]
    );
}

#[test]
fn no_names_is_every_svid_and_bundle_by_canonical_name() {
    let sel = select(&[], &holdings(), &cfg(), false);
    let got: Vec<_> = sel.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        got,
        [
            "spiffe://example.org/web",
            "spiffe://example.org/db",
            "spiffe://example.org",
            "spiffe://partner.org"
        ]
    );
    assert_eq!(select(&names(&[""]), &holdings(), &cfg(), false), sel);
}

#[test]
fn configured_names_replace_the_defaults() {
    let c = SdsConfig {
        default_svid_name: "mine".into(),
        default_bundle_name: "trust".into(),
        default_all_bundles_name: "everything".into(),
        disable_spiffe_cert_validation: false,
    };
    let sel = select(
        &names(&["mine", "trust", "everything", "default", "ROOTCA"]),
        &holdings(),
        &c,
        true,
    );
    let got: Vec<_> = sel.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(got, ["mine", "trust", "everything"]);
    assert_eq!(sel.missing.len(), 2);
}

#[test]
fn the_spiffe_validator_needs_envoy_1_18_and_is_not_disabled() {
    let node = |v: Option<(u32, u32)>, off: bool| NodeFacts {
        id: "n".into(),
        build_version: v,
        disable_spiffe_cert_validation: off,
    };
    let c = cfg();
    assert!(use_spiffe_validator(&node(Some((1, 18)), false), &c));
    assert!(use_spiffe_validator(&node(Some((1, 36)), false), &c));
    assert!(use_spiffe_validator(&node(Some((2, 0)), false), &c));
    assert!(!use_spiffe_validator(&node(Some((1, 17)), false), &c));
    assert!(!use_spiffe_validator(&node(None, false), &c));
    assert!(!use_spiffe_validator(&node(Some((1, 30)), true), &c));
    let off = SdsConfig {
        disable_spiffe_cert_validation: true,
        ..cfg()
    };
    assert!(!use_spiffe_validator(&node(Some((1, 30)), false), &off));
}

#[test]
fn node_facts_come_from_the_build_version_and_metadata() {
    use prost_types::value::Kind;
    let n = core_pb::Node {
        id: "envoy-1".into(),
        metadata: Some(prost_types::Struct {
            fields: [(
                DISABLE_SPIFFE_VALIDATION_KEY.to_string(),
                prost_types::Value {
                    kind: Some(Kind::BoolValue(true)),
                },
            )]
            .into(),
        }),
        user_agent_name: "envoy".into(),
        user_agent_version_type: Some(core_pb::node::UserAgentVersionType::UserAgentBuildVersion(
            core_pb::BuildVersion {
                version: Some(lanyard_proto::envoy::r#type::v3::SemanticVersion {
                    major_number: 1,
                    minor_number: 30,
                    patch: 2,
                }),
                metadata: None,
            },
        )),
        ..Default::default()
    };
    let f = NodeFacts::from(&n);
    assert_eq!(f.id, "envoy-1");
    assert_eq!(f.build_version, Some((1, 30)));
    assert!(f.disable_spiffe_cert_validation);
    let plain = NodeFacts::from(&core_pb::Node {
        user_agent_version_type: Some(core_pb::node::UserAgentVersionType::UserAgentVersion(
            "1.30".into(),
        )),
        ..Default::default()
    });
    assert_eq!(plain.build_version, None);
    assert!(!plain.disable_spiffe_cert_validation);
}

// ---- versions and key material ----

#[test]
fn versions_follow_content_and_debug_never_shows_the_key() {
    let h = holdings();
    let a = select(&names(&["default"]), &h, &cfg(), false).resources;
    let again = select(&names(&["default"]), &h, &cfg(), false).resources;
    assert_eq!(a[0].version(), again[0].version());
    assert_eq!(response_version(&a), response_version(&again));
    let mut rotated = h.clone();
    rotated.svids[0].chain_der[0] = b"leaf-web-2".to_vec();
    let b = select(&names(&["default"]), &rotated, &cfg(), false).resources;
    assert_ne!(a[0].version(), b[0].version());
    assert_ne!(response_version(&a), response_version(&b));
    assert_eq!(a[0].version().len(), 16);
    let dbg = format!("{a:?} {h:?}");
    assert!(!dbg.contains("secret-key-bytes"), "{dbg}");
    assert!(
        !dbg.contains(&format!("{:?}", b"secret-key-bytes")),
        "{dbg}"
    );
    assert!(dbg.contains("redacted"));
}

// ---- protobuf edge ----

#[test]
fn secrets_are_pem_inline_bytes_in_any() {
    use tls_pb::secret::Type;
    let h = holdings();
    let sel = select(&names(&["default", "ROOTCA", "ALL"]), &h, &cfg(), true);
    let anys: Vec<_> = sel.resources.iter().map(to_any).collect();
    assert!(anys.iter().all(|a| a.type_url == tls_pb::SECRET_TYPE_URL));
    let decode = |a: &prost_types::Any| tls_pb::Secret::decode(a.value.as_slice()).unwrap();
    let inline = |d: &Option<core_pb::DataSource>| match d.as_ref().unwrap().specifier.as_ref() {
        Some(core_pb::data_source::Specifier::InlineBytes(b)) => b.clone(),
        other => panic!("{other:?}"),
    };
    let cert = decode(&anys[0]);
    assert_eq!(cert.name, "default");
    let Some(Type::TlsCertificate(tc)) = cert.r#type else {
        panic!()
    };
    let chain = pem::parse_many(inline(&tc.certificate_chain)).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].tag(), "CERTIFICATE");
    assert_eq!(chain[0].contents(), b"leaf-web");
    let key = pem::parse(inline(&tc.private_key)).unwrap();
    assert_eq!(key.tag(), "PRIVATE KEY");
    assert_eq!(key.contents(), b"secret-key-bytes");

    let root = decode(&anys[1]);
    let Some(Type::ValidationContext(vc)) = root.r#type else {
        panic!()
    };
    assert!(vc.trusted_ca.is_none());
    let ext = vc.custom_validator_config.unwrap();
    assert_eq!(ext.name, SPIFFE_VALIDATOR_NAME);
    let any = ext.typed_config.unwrap();
    assert_eq!(any.type_url, tls_pb::SPIFFE_VALIDATOR_TYPE_URL);
    let v = tls_pb::SpiffeCertValidatorConfig::decode(any.value.as_slice()).unwrap();
    assert_eq!(v.trust_domains.len(), 1);
    assert_eq!(v.trust_domains[0].name, "example.org");
    let all = decode(&anys[2]);
    let Some(Type::ValidationContext(vc)) = all.r#type else {
        panic!()
    };
    let any = vc.custom_validator_config.unwrap().typed_config.unwrap();
    let v = tls_pb::SpiffeCertValidatorConfig::decode(any.value.as_slice()).unwrap();
    let tds: Vec<_> = v.trust_domains.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(tds, ["example.org", "partner.org"]);
    let bundle = pem::parse(inline(&v.trust_domains[1].trust_bundle)).unwrap();
    assert_eq!(bundle.contents(), b"ca-partner");

    let plain = select(&names(&["ROOTCA"]), &h, &cfg(), false);
    let Some(Type::ValidationContext(vc)) = decode(&to_any(&plain.resources[0])).r#type else {
        panic!()
    };
    assert!(vc.custom_validator_config.is_none());
    assert_eq!(
        pem::parse(inline(&vc.trusted_ca)).unwrap().contents(),
        b"ca-own"
    );
}

#[test]
fn requests_of_another_type_are_refused_and_nacks_keep_their_message() {
    let e = SotwRequest::try_from(disc_pb::DiscoveryRequest {
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        e.to_string().contains("envoy.config.cluster.v3.Cluster"),
        "{e}"
    );
    assert_eq!(Status::from(e).code(), tonic::Code::InvalidArgument);
    let r = SotwRequest::try_from(disc_pb::DiscoveryRequest {
        type_url: tls_pb::SECRET_TYPE_URL.into(),
        resource_names: names(&["default"]),
        response_nonce: "3".into(),
        version_info: "abc".into(),
        error_detail: Some(lanyard_proto::google::rpc::Status {
            code: 3,
            message: "bad key".into(),
        }),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.error.as_deref(), Some("bad key"));
    assert_eq!(r.response_nonce, "3");
    let d = DeltaRequest::try_from(disc_pb::DeltaDiscoveryRequest {
        error_detail: Some(lanyard_proto::google::rpc::Status {
            code: 13,
            message: String::new(),
        }),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(d.error.as_deref(), Some("code 13"));
}

// ---- state of the world ----

fn req(names_: &[&str], version: &str, nonce: &str, error: Option<&str>) -> SotwRequest {
    SotwRequest {
        names: names(names_),
        version_info: version.into(),
        response_nonce: nonce.into(),
        error: error.map(str::to_string),
        node: None,
    }
}

fn current(h: &Holdings, s: &SotwStream) -> Vec<SecretResource> {
    select(s.names().unwrap(), h, &cfg(), false).resources
}

#[test]
fn sotw_first_request_ack_rotation_nack_and_stale_nonces() {
    let mut h = holdings();
    let mut s = SotwStream::default();
    assert_eq!(
        s.offer(select(&[], &h, &cfg(), false).resources, false),
        None
    );
    let d = s.on_request(req(&["default", "ROOTCA"], "", "", None));
    assert_eq!(d.received, Received::First);
    assert!(d.respond);
    let first = s.offer(current(&h, &s), true).unwrap();
    assert_eq!(first.resources.len(), 2);
    assert_eq!(first.nonce, "1");
    assert_eq!(first.version, response_version(&first.resources));

    // ACK: nothing new; unchanged state sends nothing either.
    let d = s.on_request(req(&["ROOTCA", "default"], &first.version, "1", None));
    assert_eq!(
        d.received,
        Received::Ack {
            version: first.version.clone()
        }
    );
    assert!(!d.respond, "same names in another order is no change");
    assert_eq!(s.offer(current(&h, &s), false), None);

    // Rotation: pushed with a new version and nonce.
    h.svids[0].chain_der[0] = b"leaf-web-2".to_vec();
    let second = s.offer(current(&h, &s), false).unwrap();
    assert_ne!(second.version, first.version);
    assert_eq!(second.nonce, "2");

    // A late request still carrying nonce 1 is stale and ignored.
    let d = s.on_request(req(&["default"], &first.version, "1", None));
    assert_eq!(
        d.received,
        Received::Stale {
            nonce: "1".into(),
            expected: "2".into()
        }
    );
    assert!(!d.respond);
    assert_eq!(s.names().unwrap(), names(&["default", "ROOTCA"]).as_slice());

    // NACK: logged, not resent while nothing changes.
    let d = s.on_request(req(&["default", "ROOTCA"], &first.version, "2", Some("no")));
    assert_eq!(
        d.received,
        Received::Nack {
            version: first.version.clone(),
            message: "no".into()
        }
    );
    assert!(!d.respond);
    assert_eq!(s.offer(current(&h, &s), false), None);
    // ... until the content changes.
    h.bundle = Some(bundle("example.org", b"ca-own-2"));
    let third = s.offer(current(&h, &s), false).unwrap();
    assert_ne!(third.version, second.version);
    assert_eq!(third.nonce, "3");
}

#[test]
fn sotw_new_names_are_answered_at_once_and_unknown_ones_left_out() {
    let h = holdings();
    let mut s = SotwStream::default();
    s.on_request(req(&["default"], "", "", None));
    let first = s.offer(current(&h, &s), true).unwrap();
    let d = s.on_request(req(
        &["default", "spiffe://example.org/nope"],
        &first.version,
        &first.nonce,
        None,
    ));
    assert!(d.respond);
    let again = s.offer(current(&h, &s), true).unwrap();
    assert_eq!(
        again.resources, first.resources,
        "the unknown name is left out"
    );
    assert_eq!(again.version, first.version);
    assert_ne!(again.nonce, first.nonce);

    // Only unknown names: nothing to send (Envoy would reject an empty response).
    let mut only = SotwStream::default();
    only.on_request(req(&["spiffe://example.org/nope"], "", "", None));
    assert_eq!(only.offer(current(&h, &only), true), None);
    // A request before any response is an update, answered when names change.
    let d = only.on_request(req(&["default"], "", "", None));
    assert_eq!(d.received, Received::Update);
    assert!(d.respond);
    assert!(only.offer(current(&h, &only), true).is_some());

    // Wildcard: an empty response is a valid answer.
    let mut all = SotwStream::default();
    all.on_request(req(&[], "", "", None));
    let r = all.offer(Vec::new(), true).unwrap();
    assert!(r.resources.is_empty());
}

#[test]
fn sotw_response_proto_carries_version_nonce_and_type() {
    let h = holdings();
    let mut s = SotwStream::default();
    s.on_request(req(&["default"], "", "", None));
    let out = s.offer(current(&h, &s), true).unwrap().to_proto();
    assert_eq!(out.type_url, tls_pb::SECRET_TYPE_URL);
    assert_eq!(out.nonce, "1");
    assert!(!out.version_info.is_empty());
    assert_eq!(out.resources.len(), 1);
}

// ---- delta ----

fn dreq(sub: &[&str], unsub: &[&str], nonce: &str, error: Option<&str>) -> DeltaRequest {
    DeltaRequest {
        subscribe: names(sub),
        unsubscribe: names(unsub),
        response_nonce: nonce.into(),
        error: error.map(str::to_string),
        ..Default::default()
    }
}

fn dcurrent(h: &Holdings, s: &DeltaStream) -> Vec<SecretResource> {
    let (wildcard, n) = s.subscription();
    let mut r = if wildcard {
        select(&[], h, &cfg(), false).resources
    } else {
        Vec::new()
    };
    if !n.is_empty() {
        r.extend(select(n, h, &cfg(), false).resources);
    }
    r
}

#[test]
fn delta_sends_changes_only_and_removals() {
    let mut h = holdings();
    let mut s = DeltaStream::default();
    assert_eq!(s.offer(dcurrent(&h, &s)), None, "nothing before a request");
    let d = s.on_request(dreq(&["default", "ROOTCA"], &[], "", None));
    assert_eq!(d.received, Received::First);
    assert!(d.respond);
    let first = s.offer(dcurrent(&h, &s)).unwrap();
    assert_eq!(first.resources.len(), 2);
    assert!(first.removed.is_empty());
    assert_eq!(first.to_proto().resources[0].name, "default");
    assert_eq!(first.to_proto().resources[0].version, first.resources[0].0);

    // ACK: nothing new.
    let d = s.on_request(dreq(&[], &[], &first.nonce, None));
    assert_eq!(
        d.received,
        Received::Ack {
            version: String::new()
        }
    );
    assert!(!d.respond);
    assert_eq!(s.offer(dcurrent(&h, &s)), None);

    // Rotation: only the certificate.
    h.svids[0].chain_der[0] = b"leaf-web-2".to_vec();
    let second = s.offer(dcurrent(&h, &s)).unwrap();
    assert_eq!(second.resources.len(), 1);
    assert_eq!(second.resources[0].1.name, "default");

    // NACK: not resent.
    let d = s.on_request(dreq(&[], &[], &second.nonce, Some("bad")));
    assert!(matches!(d.received, Received::Nack { .. }));
    assert_eq!(s.offer(dcurrent(&h, &s)), None);

    // Subscribing to a name that exists sends it; an unknown one is left out.
    let d = s.on_request(dreq(
        &["spiffe://partner.org", "spiffe://x.org"],
        &[],
        "",
        None,
    ));
    assert_eq!(d.received, Received::Update);
    assert!(d.respond);
    let third = s.offer(dcurrent(&h, &s)).unwrap();
    assert_eq!(third.resources.len(), 1);
    assert_eq!(third.resources[0].1.name, "spiffe://partner.org");

    // The federation ends: removal.
    h.federated.clear();
    let fourth = s.offer(dcurrent(&h, &s)).unwrap();
    assert!(fourth.resources.is_empty());
    assert_eq!(fourth.removed, names(&["spiffe://partner.org"]));

    // Unsubscribing forgets the name (no removal is sent for it).
    s.on_request(dreq(&[], &["ROOTCA"], "", None));
    assert_eq!(s.offer(dcurrent(&h, &s)), None);
    // A stale nonce is reported but its subscription change applies.
    let d = s.on_request(dreq(&["ROOTCA"], &[], "1", None));
    assert!(matches!(d.received, Received::Stale { .. }));
    assert!(d.respond);
    assert_eq!(s.offer(dcurrent(&h, &s)).unwrap().resources.len(), 1);
}

#[test]
fn delta_wildcard_and_initial_versions() {
    let h = holdings();
    let mut s = DeltaStream::default();
    let version_of = |name: &str| {
        select(&[], &h, &cfg(), false)
            .resources
            .iter()
            .find(|r| r.name == name)
            .unwrap()
            .version()
    };
    let mut initial = BTreeMap::new();
    initial.insert(
        "spiffe://example.org/web".to_string(),
        version_of("spiffe://example.org/web"),
    );
    initial.insert("spiffe://gone.org".to_string(), "old".to_string());
    s.on_request(DeltaRequest {
        initial_versions: initial,
        ..Default::default()
    });
    assert!(s.subscription().0, "an empty first request is a wildcard");
    let out = s.offer(dcurrent(&h, &s)).unwrap();
    let sent: Vec<_> = out.resources.iter().map(|(_, r)| r.name.as_str()).collect();
    assert_eq!(
        sent,
        [
            "spiffe://example.org/db",
            "spiffe://example.org",
            "spiffe://partner.org"
        ],
        "what the client already holds is not resent"
    );
    assert_eq!(out.removed, names(&["spiffe://gone.org"]));
    let mut s = DeltaStream::default();
    s.on_request(dreq(&["*", "default"], &[], "", None));
    assert_eq!(s.subscription(), (true, names(&["default"]).as_slice()));
    s.on_request(dreq(&[], &["*"], "", None));
    assert!(!s.subscription().0);
}

// ---- the service: attestation without the header, refusals, evidence ----

mod service {
    use super::*;
    use crate::attestor::{AttestError, PeerCredentials, WorkloadAttestor, WorkloadAttestors};
    use crate::evidence::Deliveries;
    use crate::h2shim::PeerInfo;
    use crate::state::{AgentState, CachedSvid};
    use crate::sync::NodeHandle;
    use crate::sync_update::SyncState;
    use crate::test_support::{TestCa, entry, trust_domain};
    use lanyard_core::{Clock, SpiffeId, SystemClock};

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
                    reason: "runtime socket unreachable".into(),
                }),
            }
        }
    }

    /// An SDS service over a state with entry `web` (uid 1000) and its SVID.
    fn sds(selectors: Option<Vec<&'static str>>) -> (SdsService, Arc<Deliveries>, Vec<u8>) {
        let ca = TestCa::new("ca1");
        let state = Arc::new(AgentState::new(trust_domain(), Some(ca.bundle())));
        state.apply(SyncState {
            entries: vec![entry("web", &["unix:uid:1000"], 1)],
            ..SyncState::default()
        });
        let now = SystemClock.unix_seconds();
        let (leaf, key) = ca.leaf("spiffe://example.org/web", now - 60, now + 3600);
        state.store_svid(
            "web",
            CachedSvid {
                spiffe_id: SpiffeId::new("spiffe://example.org/web").unwrap(),
                chain: vec![leaf.clone(), ca.der.clone()],
                key_pkcs8: key,
                issued_at: now - 60,
                expires_at: now + 3600,
                rotate_at: now + 1800,
                entry_revision: 1,
                serial: "01".into(),
                event_id: "ev-web".into(),
                authority: ca.key_id(),
            },
        );
        let deliveries = Arc::new(Deliveries::default());
        let workload = WorkloadService::new(
            state,
            Arc::new(WorkloadAttestors::new(
                vec![Arc::new(Fixed(selectors))],
                crate::attestor::ATTEST_BOUND,
            )),
            NodeHandle::default(),
            deliveries.clone(),
        );
        (
            SdsService::new(workload, SdsConfig::default()),
            deliveries,
            leaf,
        )
    }

    /// A request as Envoy sends it: peer credentials, no `workload.spiffe.io` header.
    fn request(names_: &[&str], type_url: &str) -> Request<disc_pb::DiscoveryRequest> {
        let mut r = Request::new(disc_pb::DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names(names_),
            ..Default::default()
        });
        r.extensions_mut().insert(PeerInfo {
            pid: Some(42),
            uid: 1000,
            gid: 1000,
        });
        r
    }

    #[tokio::test]
    async fn fetch_needs_no_header_and_serves_the_svid_and_bundle_with_evidence() {
        let (s, deliveries, leaf) = sds(Some(vec!["unix:uid:1000"]));
        let resp = s
            .fetch_secrets(request(
                &["default", "ROOTCA", "spiffe://example.org/nope"],
                tls_pb::SECRET_TYPE_URL,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.type_url, tls_pb::SECRET_TYPE_URL);
        assert!(resp.nonce.is_empty());
        assert!(!resp.version_info.is_empty());
        let secrets: Vec<tls_pb::Secret> = resp
            .resources
            .iter()
            .map(|a| tls_pb::Secret::decode(a.value.as_slice()).unwrap())
            .collect();
        let got: Vec<_> = secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(got, ["default", "ROOTCA"], "the unknown name is left out");
        let Some(tls_pb::secret::Type::TlsCertificate(tc)) = &secrets[0].r#type else {
            panic!()
        };
        let Some(core_pb::data_source::Specifier::InlineBytes(chain)) = tc
            .certificate_chain
            .as_ref()
            .and_then(|d| d.specifier.clone())
        else {
            panic!()
        };
        assert_eq!(pem::parse_many(chain).unwrap()[0].contents(), leaf);
        assert_eq!(deliveries.pending(), 1, "the delivery is recorded");
    }

    #[tokio::test]
    async fn refusals_are_clear() {
        // No identity.
        let (s, deliveries, _) = sds(Some(vec!["unix:uid:7"]));
        let e = s
            .fetch_secrets(request(&["default"], ""))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().starts_with("no identity issued"), "{e:?}");
        assert_eq!(deliveries.pending(), 0);
        // Attestation fails: Unavailable with the attestor's reason.
        let (s, _, _) = sds(None);
        let e = s
            .fetch_secrets(request(&["default"], ""))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(e.message().contains("runtime socket unreachable"), "{e:?}");
        // No peer credentials.
        let (s, _, _) = sds(Some(vec!["unix:uid:1000"]));
        let e = s
            .fetch_secrets(Request::new(disc_pb::DiscoveryRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        // Another resource type.
        let e = s
            .fetch_secrets(request(
                &["x"],
                "type.googleapis.com/envoy.config.listener.v3.Listener",
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        // Only unknown names: NotFound naming each and why.
        let e = s
            .fetch_secrets(request(&["spiffe://example.org/nope", "ALL"], ""))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(
            e.message()
                .contains("\"spiffe://example.org/nope\" (no SVID or bundle")
                && e.message()
                    .contains("\"ALL\" (all bundles are served only through"),
            "{e:?}"
        );
    }
}
