//! The agent's lifecycle as explicit states, and the decisions that move it. Every
//! function here is pure: the current state, an event or the time `now` in, the next
//! state or a decision out. [`crate::sync`] performs what they decide (talks to the
//! server, sleeps, writes files).
//!
//! - [`Lifecycle`]: the agent's [`Phase`] with the server (attesting → connecting →
//!   synced; server lost or banned, then retried with exponential backoff).
//! - [`svid_state`] and [`plan`]: each entry's X509-SVID (missing, valid, due,
//!   expired) and what to mint and drop at `now`.
//! - [`agent_renewal`]: whether the agent SVID is renewed now.
//! - [`holdings`]: the CA keys the agent depends on, reported when they change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::state::{CachedEntry, CachedSvid};

/// The wait before the first retry after the server was lost.
pub const FIRST_RETRY: Duration = Duration::from_millis(200);
/// The longest wait between retries.
pub const MAX_RETRY: Duration = Duration::from_secs(10);

/// Where the agent is in its life with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No usable agent SVID: node attestation is running.
    Attesting,
    /// An agent SVID is at hand (stored, renewed or just issued): opening the
    /// authenticated connection and the entry stream.
    Connecting,
    /// The entry stream is open: SVIDs are minted, rotated and reported.
    Synced,
    /// The session failed; cached SVIDs are served until they expire, and the next
    /// session starts after `retry_in`.
    ServerLost { retry_in: Duration },
    /// The server refused this agent (banned or evicted): its identities are dropped
    /// and its stored agent SVID forgotten; it attests afresh after `retry_in`.
    Banned { retry_in: Duration },
    /// Shut down.
    Stopped,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The agent is shutting down.
    Shutdown,
    /// The agent SVID was renewed: reconnect at once presenting the new one (the
    /// server accepts the old one only until it has seen the new one).
    Renewed,
    /// The server answered `PermissionDenied`.
    Refused,
    /// Any other failure: unreachable, stream closed, a bad answer.
    Failed,
}

impl SessionEnd {
    /// Classify the error a session ended with.
    pub fn from_status(status: &tonic::Status) -> Self {
        if status.code() == tonic::Code::PermissionDenied {
            Self::Refused
        } else {
            Self::Failed
        }
    }
}

/// What happens to the agent's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A session found no usable agent SVID.
    NoIdentity,
    /// A session has an agent SVID.
    Identified,
    /// The entry stream is open.
    StreamOpened,
    /// The session ended.
    Ended(SessionEnd),
}

/// The agent's phase and the wait before the next retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    phase: Phase,
    backoff: Duration,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// About to open the first session.
    pub const fn new() -> Self {
        Self {
            phase: Phase::Connecting,
            backoff: FIRST_RETRY,
        }
    }

    pub const fn phase(&self) -> Phase {
        self.phase
    }

    /// The wait the next failure will be given.
    pub const fn backoff(&self) -> Duration {
        self.backoff
    }

    /// The state after `event`. A failure or refusal waits the current backoff, which
    /// then doubles up to [`MAX_RETRY`]; a renewal reconnects at once and resets it.
    /// Once stopped, the agent stays stopped.
    #[must_use]
    pub fn on(self, event: Event) -> Self {
        if self.phase == Phase::Stopped {
            return self;
        }
        let retry_in = self.backoff;
        let doubled = (self.backoff * 2).min(MAX_RETRY);
        let (phase, backoff) = match event {
            Event::NoIdentity => (Phase::Attesting, self.backoff),
            Event::Identified => (Phase::Connecting, self.backoff),
            Event::StreamOpened => (Phase::Synced, self.backoff),
            Event::Ended(SessionEnd::Shutdown) => (Phase::Stopped, self.backoff),
            Event::Ended(SessionEnd::Renewed) => (Phase::Connecting, FIRST_RETRY),
            Event::Ended(SessionEnd::Refused) => (Phase::Banned { retry_in }, doubled),
            Event::Ended(SessionEnd::Failed) => (Phase::ServerLost { retry_in }, doubled),
        };
        Self { phase, backoff }
    }
}

/// Why an SVID is minted again before it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DueReason {
    /// The entry changed since the SVID was minted.
    EntryChanged,
    /// The CA key that signed it is tainted.
    TaintedAuthority,
    /// Its rotation point has passed.
    RotationPoint,
}

/// An entry's X509-SVID at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvidState {
    /// The entry itself expired: nothing is minted for it, nothing is served.
    EntryExpired,
    /// No SVID yet: mint one.
    Missing,
    /// Served, and kept until `rotate_at`.
    Valid { rotate_at: i64 },
    /// Still served, but minted again now.
    Due(DueReason),
    /// Past its expiry: dropped, and minted again.
    Expired,
}

impl SvidState {
    /// Whether an SVID is requested for the entry.
    pub const fn needs_mint(self) -> bool {
        matches!(self, Self::Missing | Self::Due(_) | Self::Expired)
    }
}

/// Whether a cached SVID is past its expiry at `now` (and so dropped).
pub const fn is_expired(svid: &CachedSvid, now: i64) -> bool {
    svid.expires_at <= now
}

/// The state of `entry`'s SVID at `now`; `tainted` are the tainted CA keys.
pub fn svid_state(
    entry: &CachedEntry,
    svid: Option<&CachedSvid>,
    tainted: &HashSet<String>,
    now: i64,
) -> SvidState {
    if entry.expires_at != 0 && entry.expires_at <= now {
        return SvidState::EntryExpired;
    }
    match svid {
        None => SvidState::Missing,
        Some(s) if is_expired(s, now) => SvidState::Expired,
        Some(s) if s.entry_revision != entry.revision => SvidState::Due(DueReason::EntryChanged),
        Some(s) if tainted.contains(&s.authority) => SvidState::Due(DueReason::TaintedAuthority),
        Some(s) if now >= s.rotate_at => SvidState::Due(DueReason::RotationPoint),
        Some(s) => SvidState::Valid {
            rotate_at: s.rotate_at,
        },
    }
}

/// What one reconcile pass does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SvidPlan {
    /// Entry ids whose SVID expired, sorted.
    pub drop: Vec<String>,
    /// Entries to mint an SVID for, in entry order.
    pub mint: Vec<CachedEntry>,
}

/// What to drop and mint at `now`, given the entries, the cached SVIDs (by entry id)
/// and the tainted CA keys.
pub fn plan(
    entries: &[CachedEntry],
    svids: &HashMap<String, CachedSvid>,
    tainted: &HashSet<String>,
    now: i64,
) -> SvidPlan {
    let mut drop: Vec<String> = svids
        .iter()
        .filter(|(_, s)| is_expired(s, now))
        .map(|(id, _)| id.clone())
        .collect();
    drop.sort();
    let mint = entries
        .iter()
        .filter(|e| svid_state(e, svids.get(&e.id), tainted, now).needs_mint())
        .cloned()
        .collect();
    SvidPlan { drop, mint }
}

/// Rotation jitter is drawn from `0..JITTER_DRAWS`.
pub const JITTER_DRAWS: u32 = 1000;

/// Rotation point of an SVID issued at `issued` and expiring at `expires`: half the
/// lifetime, minus up to 10% jitter so a fleet does not rotate in lockstep. `draw` is
/// a random number in `0..JITTER_DRAWS` (0: exactly half-life).
pub fn rotation_point(issued: i64, expires: i64, draw: u32) -> i64 {
    let life = (expires - issued).max(2);
    let jitter = (life / 10) * i64::from(draw % JITTER_DRAWS) / i64::from(JITTER_DRAWS);
    issued + life / 2 - jitter
}

/// Why the agent SVID is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewReason {
    /// The CA key that signed it is tainted.
    TaintedAuthority,
    /// Half its lifetime has passed.
    HalfLife,
}

/// Whether the agent SVID (issued at `issued_at`, expiring at `expires_at`) is
/// renewed at `now`; `authority_tainted`: its signing CA key is tainted.
pub fn agent_renewal(
    issued_at: i64,
    expires_at: i64,
    authority_tainted: bool,
    now: i64,
) -> Option<RenewReason> {
    if authority_tainted {
        Some(RenewReason::TaintedAuthority)
    } else if now >= issued_at + (expires_at - issued_at) / 2 {
        Some(RenewReason::HalfLife)
    } else {
        None
    }
}

/// The CA keys this agent depends on (authority -> latest expiry): those of the
/// cached SVIDs, and the agent SVID's own (`agent`: its authority and expiry).
pub fn holdings(
    mut svids: BTreeMap<String, i64>,
    agent: Option<(String, i64)>,
) -> BTreeMap<String, i64> {
    if let Some((authority, expires_at)) = agent {
        let e = svids.entry(authority).or_insert(expires_at);
        *e = (*e).max(expires_at);
    }
    svids
}

/// Whether `current` holdings are reported: only when they differ from the last
/// report of this session (`None`: nothing reported yet).
pub fn holdings_changed(
    current: &BTreeMap<String, i64>,
    reported: Option<&BTreeMap<String, i64>>,
) -> bool {
    reported != Some(current)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use lanyard_core::{Selector, SpiffeId};

    fn entry(id: &str, revision: i64, expires_at: i64) -> CachedEntry {
        CachedEntry {
            id: id.into(),
            spiffe_id: SpiffeId::new(&format!("spiffe://example.org/{id}")).unwrap(),
            selectors: vec![Selector::new("unix:uid:1").unwrap()],
            hint: String::new(),
            x509_ttl: 0,
            jwt_ttl: 0,
            expires_at,
            revision,
            owner: String::new(),
            environment: String::new(),
        }
    }

    fn svid(issued: i64, expires: i64, revision: i64, authority: &str) -> CachedSvid {
        CachedSvid {
            spiffe_id: SpiffeId::new("spiffe://example.org/web").unwrap(),
            chain: Vec::new(),
            key_pkcs8: Vec::new(),
            issued_at: issued,
            expires_at: expires,
            rotate_at: rotation_point(issued, expires, 0),
            entry_revision: revision,
            serial: String::new(),
            event_id: String::new(),
            authority: authority.into(),
        }
    }

    #[test]
    fn backoff_doubles_caps_at_ten_seconds_and_resets_on_renewal() {
        let mut life = Lifecycle::new();
        let mut waits = Vec::new();
        for _ in 0..8 {
            life = life
                .on(Event::Identified)
                .on(Event::Ended(SessionEnd::Failed));
            match life.phase() {
                Phase::ServerLost { retry_in } => waits.push(retry_in.as_millis()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        life = life.on(Event::StreamOpened);
        assert_eq!(life.phase(), Phase::Synced);
        // Being synced alone does not reset the backoff (as before the redesign)...
        assert_eq!(life.backoff(), MAX_RETRY);
        // ...a renewal does, and reconnects at once.
        life = life.on(Event::Ended(SessionEnd::Renewed));
        assert_eq!(life.phase(), Phase::Connecting);
        life = life.on(Event::Ended(SessionEnd::Failed));
        assert_eq!(
            life.phase(),
            Phase::ServerLost {
                retry_in: FIRST_RETRY
            }
        );
    }

    #[test]
    fn permission_denied_bans_and_other_errors_lose_the_server() {
        let refused = SessionEnd::from_status(&tonic::Status::permission_denied("banned"));
        let lost = SessionEnd::from_status(&tonic::Status::unavailable("gone"));
        assert_eq!(refused, SessionEnd::Refused);
        assert_eq!(lost, SessionEnd::Failed);
        assert_eq!(
            SessionEnd::from_status(&tonic::Status::unauthenticated("x")),
            SessionEnd::Failed
        );
        let life = Lifecycle::new().on(Event::NoIdentity);
        assert_eq!(life.phase(), Phase::Attesting);
        let banned = life.on(Event::Ended(refused));
        assert_eq!(
            banned.phase(),
            Phase::Banned {
                retry_in: FIRST_RETRY
            }
        );
        // A second refusal waits longer.
        assert_eq!(
            banned.on(Event::Ended(refused)).phase(),
            Phase::Banned {
                retry_in: 2 * FIRST_RETRY
            }
        );
        let stopped = banned.on(Event::Ended(SessionEnd::Shutdown));
        assert_eq!(stopped.phase(), Phase::Stopped);
        assert_eq!(stopped.on(Event::Identified).phase(), Phase::Stopped);
    }

    #[test]
    fn rotation_is_at_half_life_minus_up_to_ten_percent() {
        assert_eq!(rotation_point(1000, 2000, 0), 1500);
        assert_eq!(rotation_point(1000, 2000, 500), 1450);
        assert_eq!(rotation_point(1000, 2000, 999), 1401);
        // Draws wrap rather than overshoot the 10%.
        assert_eq!(rotation_point(1000, 2000, 1500), 1450);
        // A degenerate lifetime still rotates no later than its expiry.
        assert_eq!(rotation_point(1000, 1000, 0), 1001);
    }

    #[test]
    fn svid_states_over_time() {
        let none = HashSet::new();
        let e = entry("e1", 1, 0);
        let s = svid(1000, 1600, 1, "ca1");
        assert_eq!(svid_state(&e, None, &none, 1000), SvidState::Missing);
        assert_eq!(
            svid_state(&e, Some(&s), &none, 1299),
            SvidState::Valid { rotate_at: 1300 }
        );
        assert_eq!(
            svid_state(&e, Some(&s), &none, 1300),
            SvidState::Due(DueReason::RotationPoint)
        );
        assert_eq!(svid_state(&e, Some(&s), &none, 1600), SvidState::Expired);
        let tainted: HashSet<String> = ["ca1".to_string()].into();
        assert_eq!(
            svid_state(&e, Some(&s), &tainted, 1001),
            SvidState::Due(DueReason::TaintedAuthority)
        );
        let changed = entry("e1", 2, 0);
        assert_eq!(
            svid_state(&changed, Some(&s), &none, 1001),
            SvidState::Due(DueReason::EntryChanged)
        );
        let ending = entry("e1", 1, 1200);
        assert_eq!(
            svid_state(&ending, Some(&s), &none, 1200),
            SvidState::EntryExpired
        );
        assert!(!SvidState::EntryExpired.needs_mint());
        assert!(!SvidState::Valid { rotate_at: 1 }.needs_mint());
        assert!(SvidState::Expired.needs_mint());
    }

    #[test]
    fn the_plan_drops_expired_and_mints_missing_and_due() {
        let entries = vec![
            entry("fresh", 1, 0),
            entry("due", 1, 0),
            entry("expired", 1, 0),
            entry("missing", 1, 0),
            entry("gone", 1, 1500),
        ];
        let svids: HashMap<String, CachedSvid> = [
            ("fresh".to_string(), svid(1400, 2400, 1, "ca")),
            ("due".to_string(), svid(1000, 2000, 1, "ca")),
            ("expired".to_string(), svid(500, 1500, 1, "ca")),
            ("gone".to_string(), svid(400, 1500, 1, "ca")),
        ]
        .into();
        let p = plan(&entries, &svids, &HashSet::new(), 1500);
        assert_eq!(p.drop, ["expired", "gone"]);
        let mint: Vec<&str> = p.mint.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(mint, ["due", "expired", "missing"]);
    }

    #[test]
    fn agent_renewal_at_half_life_or_on_taint() {
        assert_eq!(agent_renewal(1000, 2000, false, 1499), None);
        assert_eq!(
            agent_renewal(1000, 2000, false, 1500),
            Some(RenewReason::HalfLife)
        );
        assert_eq!(
            agent_renewal(1000, 2000, true, 1001),
            Some(RenewReason::TaintedAuthority)
        );
    }

    #[test]
    fn holdings_include_the_agent_svid_and_report_only_changes() {
        let svids: BTreeMap<String, i64> =
            [("ca1".to_string(), 100), ("ca2".to_string(), 50)].into();
        let h = holdings(svids.clone(), Some(("ca2".into(), 70)));
        assert_eq!(
            h,
            [("ca1".to_string(), 100), ("ca2".to_string(), 70)].into()
        );
        let h2 = holdings(svids, Some(("ca1".into(), 70)));
        assert_eq!(h2.get("ca1"), Some(&100));
        assert!(holdings_changed(&h, None));
        assert!(!holdings_changed(&h, Some(&h.clone())));
        assert!(holdings_changed(&h, Some(&h2)));
    }
}
