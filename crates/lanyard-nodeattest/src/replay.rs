//! Replay protection for token-based attestation: a token attests once within its
//! lifetime. [`ReplayCache`] remembers each accepted token (by its issuer and `jti`,
//! or by the hash of the whole token when it has no `jti`) until the token expires.
//!
//! The cache is bounded and fails closed: when it is full of tokens that have not
//! expired yet, new tokens are refused rather than evicting a remembered one (which
//! would reopen that token to replay). It is a plain value; the server keeps one per
//! attestor behind a lock. Several servers sharing a database each have their own
//! cache, so a token could be replayed once per server; a shared store can implement
//! the same rule later with [`ReplayKey::as_bytes`] as the key.

use std::collections::{BTreeSet, HashMap};

use aws_lc_rs::digest;

/// The default number of unexpired tokens remembered.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// What identifies a token for replay protection: SHA-256 over the issuer and `jti`,
/// or over the whole token. Fixed size, so the cache's memory is bounded by its
/// capacity whatever the tokens look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplayKey([u8; 32]);

impl ReplayKey {
    /// The key of a token: by `jti` (scoped to its issuer, so one issuer cannot burn
    /// another's IDs) when it has one, else by the token's bytes.
    pub fn for_token(issuer: &str, jti: Option<&str>, token: &str) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        match jti {
            Some(jti) => {
                ctx.update(b"lanyard-replay-jti\0");
                ctx.update(&(issuer.len() as u64).to_be_bytes());
                ctx.update(issuer.as_bytes());
                ctx.update(jti.as_bytes());
            }
            None => {
                ctx.update(b"lanyard-replay-token\0");
                ctx.update(token.as_bytes());
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Self(out)
    }

    /// The key of arbitrary evidence bytes under a scope (e.g. an attestor name).
    pub fn for_bytes(scope: &str, bytes: &[u8]) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"lanyard-replay-bytes\0");
        ctx.update(&(scope.len() as u64).to_be_bytes());
        ctx.update(scope.as_bytes());
        ctx.update(bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Self(out)
    }

    /// The 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, for logs and evidence.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Why a token was not accepted by the replay guard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// This token already attested and has not expired.
    #[error(
        "this token was already used to attest (it stays refused until it expires in {expires_in}s); each attestation needs a fresh token from the platform"
    )]
    Replayed {
        /// Seconds until the remembered token expires.
        expires_in: i64,
    },
    /// The cache is full of unexpired tokens.
    #[error(
        "the server is remembering {capacity} unexpired attestation tokens, its limit, and refuses new ones rather than forget one (which would allow its replay); retry later, or raise the replay cache capacity"
    )]
    Full {
        /// The configured capacity.
        capacity: usize,
    },
}

impl ReplayError {
    /// A stable short code for evidence events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Replayed { .. } => "replayed",
            Self::Full { .. } => "replay_cache_full",
        }
    }
}

/// Remembers accepted tokens until they expire. See the module documentation.
#[derive(Debug, Clone)]
pub struct ReplayCache {
    capacity: usize,
    expiry: HashMap<ReplayKey, i64>,
    by_expiry: BTreeSet<(i64, ReplayKey)>,
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl ReplayCache {
    /// A cache remembering at most `capacity` unexpired tokens.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            expiry: HashMap::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    /// Accept the token `key`, which expires at `exp` (unix seconds), at `now`: refused
    /// if it was accepted before and has not expired, or if the cache is full. Expired
    /// entries are dropped first. A token already expired at `now` is not remembered
    /// (verification refuses it anyway).
    pub fn check_and_insert(
        &mut self,
        key: ReplayKey,
        exp: i64,
        now: i64,
    ) -> Result<(), ReplayError> {
        self.prune(now);
        if let Some(&remembered) = self.expiry.get(&key) {
            return Err(ReplayError::Replayed {
                expires_in: remembered.saturating_sub(now),
            });
        }
        if exp <= now {
            return Ok(());
        }
        if self.expiry.len() >= self.capacity {
            return Err(ReplayError::Full {
                capacity: self.capacity,
            });
        }
        self.expiry.insert(key, exp);
        self.by_expiry.insert((exp, key));
        Ok(())
    }

    /// Drop the entries that expired at or before `now`.
    pub fn prune(&mut self, now: i64) {
        while let Some(&(exp, key)) = self.by_expiry.first() {
            if exp > now {
                break;
            }
            self.by_expiry.pop_first();
            self.expiry.remove(&key);
        }
    }

    /// Whether `key` is remembered (and not expired at `now`).
    pub fn contains(&self, key: &ReplayKey, now: i64) -> bool {
        self.expiry.get(key).is_some_and(|&exp| exp > now)
    }

    /// How many tokens are remembered (expired ones included until the next prune).
    pub fn len(&self) -> usize {
        self.expiry.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.expiry.is_empty()
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn k(i: u32) -> ReplayKey {
        ReplayKey::for_token("https://iss", Some(&i.to_string()), "")
    }

    #[test]
    fn a_token_attests_once_within_its_lifetime() {
        let mut c = ReplayCache::new(10);
        c.check_and_insert(k(1), 1100, 1000).unwrap();
        let e = c.check_and_insert(k(1), 1100, 1050).unwrap_err();
        assert_eq!(e, ReplayError::Replayed { expires_in: 50 });
        assert_eq!(e.reason(), "replayed");
        assert!(e.to_string().contains("fresh token"));
        assert!(c.contains(&k(1), 1099));
        // Once expired it is forgotten (verification refuses it by then anyway).
        c.check_and_insert(k(1), 1200, 1100).unwrap();
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn full_cache_fails_closed_and_recovers_after_expiry() {
        let mut c = ReplayCache::new(2);
        c.check_and_insert(k(1), 1100, 1000).unwrap();
        c.check_and_insert(k(2), 1200, 1000).unwrap();
        let e = c.check_and_insert(k(3), 1300, 1000).unwrap_err();
        assert_eq!(e, ReplayError::Full { capacity: 2 });
        assert_eq!(e.reason(), "replay_cache_full");
        // Remembered tokens are still refused: nothing was evicted.
        assert!(matches!(
            c.check_and_insert(k(1), 1100, 1001),
            Err(ReplayError::Replayed { .. })
        ));
        // After k(1) expires there is room again.
        c.check_and_insert(k(3), 1300, 1100).unwrap();
        assert_eq!(c.len(), 2);
        assert!(!c.contains(&k(1), 1100));
    }

    #[test]
    fn expired_tokens_are_not_remembered() {
        let mut c = ReplayCache::new(1);
        c.check_and_insert(k(1), 1000, 1000).unwrap();
        assert!(c.is_empty());
        c.check_and_insert(k(2), 2000, 1000).unwrap();
        c.prune(2000);
        assert!(c.is_empty());
        assert_eq!(c.capacity(), 1);
    }

    #[test]
    fn keys_are_scoped_by_issuer_and_fall_back_to_the_token() {
        let a = ReplayKey::for_token("https://a", Some("1"), "t");
        let b = ReplayKey::for_token("https://b", Some("1"), "t");
        assert_ne!(a, b);
        // The issuer/jti boundary is length-prefixed: no ambiguity.
        assert_ne!(
            ReplayKey::for_token("https://a1", Some("23"), ""),
            ReplayKey::for_token("https://a12", Some("3"), "")
        );
        let t1 = ReplayKey::for_token("https://a", None, "tok1");
        let t2 = ReplayKey::for_token("https://a", None, "tok2");
        assert_ne!(t1, t2);
        assert_eq!(t1, ReplayKey::for_token("https://b", None, "tok1"));
        assert_eq!(t1.to_hex().len(), 64);
        assert_ne!(
            ReplayKey::for_bytes("aws_iid", b"x"),
            ReplayKey::for_bytes("aws_iid2", b"x")
        );
    }

    #[test]
    fn many_entries_prune_in_order() {
        let mut c = ReplayCache::new(1000);
        for i in 0..1000 {
            c.check_and_insert(k(i), 2000 + i64::from(i), 1000).unwrap();
        }
        c.prune(2499);
        assert_eq!(c.len(), 500);
        assert!(!c.contains(&k(499), 2499));
        assert!(c.contains(&k(500), 2499));
    }
}
