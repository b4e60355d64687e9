//! Several servers, one trust domain: what each server publishes in the datastore
//! (its CA certificates and JWT keys in every state) and the bundle every server
//! serves — the union over servers that are not deregistered, of authorities that
//! have not expired. Pure functions over the stored rows; `state.rs` does the I/O.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use lanyard_ca::{CertificateAuthority, SlotState};
use lanyard_core::bundle::{JwtAuthority, PublicJwk, X509Authority};
use lanyard_core::{Bundle, BundleError, TrustDomain};
use lanyard_store::{AuthorityKind, PublishedAuthority, ServerRecord};

/// The state name of an upstream root (published by a server whose CA an upstream
/// CA signs).
pub const UPSTREAM: &str = "upstream";

/// What this server's CA publishes: each slot's certificate (or, with an upstream
/// CA, the upstream roots) and each slot's JWT key, sorted.
pub fn own_authorities(ca: &CertificateAuthority) -> Result<Vec<PublishedAuthority>, BundleError> {
    let mut out = Vec::new();
    if ca.has_upstream() {
        let bundle = ca
            .bundle()
            .map_err(|e| BundleError::UnsupportedKey(e.to_string()))?;
        for a in bundle.x509_authorities() {
            let not_after = x509_parser::parse_x509_certificate(a.der())
                .map(|(_, c)| c.validity().not_after.timestamp())
                .map_err(|e| BundleError::UnsupportedKey(format!("upstream root: {e}")))?;
            out.push(PublishedAuthority {
                kind: AuthorityKind::X509,
                id: lanyard_core::x509::subject_key_id(a.der())
                    .unwrap_or_else(|| crate::node::sha256_hex(a.der())),
                state: UPSTREAM.to_string(),
                not_after,
                public: STANDARD.encode(a.der()),
            });
        }
    }
    for s in ca.slots() {
        if !ca.has_upstream() {
            out.push(PublishedAuthority {
                kind: AuthorityKind::X509,
                id: lanyard_core::x509::subject_key_id(s.x509_cert_der())
                    .unwrap_or_else(|| crate::node::sha256_hex(s.x509_cert_der())),
                state: s.state().name().to_string(),
                not_after: s.not_after(),
                public: STANDARD.encode(s.x509_cert_der()),
            });
        }
        out.push(PublishedAuthority {
            kind: AuthorityKind::Jwt,
            id: s.jwt_kid().to_string(),
            state: s.state().name().to_string(),
            not_after: s.not_after(),
            public: STANDARD.encode(s.jwt_public_key_der()),
        });
    }
    out.sort();
    Ok(out)
}

/// The servers whose authorities are in the bundle: not deregistered.
fn live(servers: &[ServerRecord]) -> impl Iterator<Item = &ServerRecord> {
    servers.iter().filter(|s| s.deregistered_at.is_none())
}

/// The trust domain's bundle: every unexpired authority of every server that is not
/// deregistered, each once, in a fixed order (so that every server computes the same
/// document). An authority that does not decode is skipped and named in the second
/// value (a corrupt row must not take the others' keys out of the bundle).
pub fn union_bundle(
    trust_domain: &TrustDomain,
    servers: &[ServerRecord],
    now: i64,
) -> (Bundle, Vec<String>) {
    let mut authorities: Vec<&PublishedAuthority> = live(servers)
        .flat_map(|s| s.authorities.iter())
        .filter(|a| a.not_after > now)
        .collect();
    authorities.sort_by(|a, b| (a.kind, &a.id, &a.public).cmp(&(b.kind, &b.id, &b.public)));
    let mut bundle = Bundle::new(trust_domain.clone());
    let mut skipped = Vec::new();
    for a in authorities {
        let der = match STANDARD.decode(&a.public) {
            Ok(d) => d,
            Err(e) => {
                skipped.push(format!("{}: {e}", a.id));
                continue;
            }
        };
        let added = match a.kind {
            AuthorityKind::X509 => {
                X509Authority::from_der(der).map(|x| bundle.add_x509_authority(x))
            }
            AuthorityKind::Jwt => PublicJwk::from_spki_der(&der)
                .and_then(|k| JwtAuthority::new(&a.id, k))
                .map(|j| bundle.add_jwt_authority(j)),
        };
        if let Err(e) = added {
            skipped.push(format!("{}: {e}", a.id));
        }
    }
    (bundle, skipped)
}

/// Ids (Subject Key Identifiers and JWT key ids) of tainted authorities of servers
/// that are not deregistered: agents re-mint what these signed, whichever server
/// they are attached to.
pub fn tainted(servers: &[ServerRecord], now: i64) -> Vec<String> {
    let mut out: Vec<String> = live(servers)
        .flat_map(|s| s.authorities.iter())
        .filter(|a| a.state == SlotState::Tainted.name() && a.not_after > now)
        .map(|a| a.id.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The ids a server publishes, for its evidence.
pub fn authority_ids(authorities: &[PublishedAuthority]) -> Vec<String> {
    authorities.iter().map(|a| a.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_ca::CaConfig;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn ca(now: i64) -> CertificateAuthority {
        let mut ca = CertificateAuthority::new(CaConfig::new(td()), None, Vec::new()).unwrap();
        ca.tick(now).unwrap();
        ca
    }

    fn server(name: &str, ca: &CertificateAuthority) -> ServerRecord {
        let authorities = own_authorities(ca).unwrap();
        ServerRecord {
            name: name.to_string(),
            address: String::new(),
            expires_at: authorities.iter().map(|a| a.not_after).max().unwrap_or(0),
            authorities,
            started_at: 0,
            seen_at: 0,
            deregistered_at: None,
        }
    }

    #[test]
    fn every_live_servers_keys_are_in_one_bundle_in_a_fixed_order() {
        let now = 1_800_000_000;
        let (a, b) = (ca(now), ca(now));
        let servers = vec![server("a", &a), server("b", &b)];
        let (bundle, skipped) = union_bundle(&td(), &servers, now);
        assert!(skipped.is_empty(), "{skipped:?}");
        let own_a = a.bundle().unwrap();
        let own_b = b.bundle().unwrap();
        for own in [&own_a, &own_b] {
            for x in own.x509_authorities() {
                assert!(bundle.x509_authorities().contains(x));
            }
            for j in own.jwt_authorities() {
                assert_eq!(bundle.jwt_authority(j.kid()), Some(j));
            }
        }
        assert_eq!(
            bundle.x509_authorities().len(),
            own_a.x509_authorities().len() + own_b.x509_authorities().len()
        );
        // Every server computes the same document, whatever order it reads rows in.
        let reversed: Vec<ServerRecord> = servers.iter().rev().cloned().collect();
        assert_eq!(
            union_bundle(&td(), &reversed, now).0.to_json().unwrap(),
            bundle.to_json().unwrap()
        );
    }

    #[test]
    fn deregistered_servers_and_expired_keys_leave_the_bundle() {
        let now = 1_800_000_000;
        let (a, b) = (ca(now), ca(now));
        let mut servers = vec![server("a", &a), server("b", &b)];
        servers[1].deregistered_at = Some(now);
        let (bundle, _) = union_bundle(&td(), &servers, now);
        assert_eq!(bundle.to_json().unwrap(), {
            let (only_a, _) = union_bundle(&td(), &servers[..1], now);
            only_a.to_json().unwrap()
        });
        // Past every key's expiry nothing is left.
        let later = servers[0].expires_at;
        let (empty, _) = union_bundle(&td(), &servers, later);
        assert!(empty.x509_authorities().is_empty());
        assert_eq!(empty.jwt_authorities().count(), 0);
    }

    #[test]
    fn a_corrupt_authority_is_skipped_and_named_not_fatal() {
        let now = 1_800_000_000;
        let a = ca(now);
        let mut bad = server("bad", &ca(now));
        for x in &mut bad.authorities {
            x.public = "%%%".to_string();
        }
        let (bundle, skipped) = union_bundle(&td(), &[server("a", &a), bad.clone()], now);
        assert_eq!(skipped.len(), bad.authorities.len());
        assert_eq!(
            bundle.to_json().unwrap(),
            union_bundle(&td(), &[server("a", &a)], now)
                .0
                .to_json()
                .unwrap()
        );
    }

    #[test]
    fn tainted_keys_of_any_live_server_are_named() {
        let now = 1_800_000_000;
        let mut b = ca(now);
        let active = b.active().unwrap().id().to_string();
        b.taint(&active, now).unwrap();
        let sb = server("b", &b);
        let t = tainted(&[server("a", &ca(now)), sb.clone()], now);
        let slot = b.slots().iter().find(|s| s.id() == active).unwrap();
        assert!(t.contains(&slot.jwt_kid().to_string()), "{t:?}");
        assert!(t.contains(&lanyard_core::x509::subject_key_id(slot.x509_cert_der()).unwrap()));
        let mut gone = sb;
        gone.deregistered_at = Some(now);
        assert!(tainted(&[gone], now).is_empty());
    }
}
