//! When `lanyard svid watch` acts: JWT-SVID refresh at half-life and reconnect
//! backoff. Pure functions of the times passed in.

use std::time::Duration;

/// Shortest wait before refreshing a JWT-SVID, so a token that is already past
/// its half-life (or a skewed clock) cannot make the helper spin.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long to wait before fetching a new JWT-SVID for a token issued at `iat`
/// (when it says so) and expiring at `exp`, fetched at `now` (unix seconds): until
/// half of its lifetime has passed, as SPIFFE clients renew. A token without
/// `iat` counts its lifetime from `now`.
pub fn jwt_refresh_in(now: i64, iat: Option<i64>, exp: i64) -> Duration {
    let start = iat.filter(|&t| t <= now).unwrap_or(now);
    let half = start + (exp - start) / 2;
    let secs = u64::try_from(half - now).unwrap_or(0);
    Duration::from_secs(secs).max(MIN_REFRESH)
}

/// The wait before reconnection attempt `attempt` (0 for the first retry): 1 s,
/// doubling, at most [`MAX_BACKOFF`].
pub fn backoff(attempt: u32) -> Duration {
    let secs = 1u64.checked_shl(attempt.min(16)).unwrap_or(u64::MAX);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_svids_are_refreshed_at_half_life() {
        // 5 minute token fetched as it was issued: refresh after 150 s.
        assert_eq!(
            jwt_refresh_in(1000, Some(1000), 1300),
            Duration::from_secs(150)
        );
        // Fetched 100 s after issue (the agent's cache): 50 s left to half-life.
        assert_eq!(
            jwt_refresh_in(1100, Some(1000), 1300),
            Duration::from_secs(50)
        );
        // Past half-life already, or expired: soon, but never a busy loop.
        assert_eq!(jwt_refresh_in(1200, Some(1000), 1300), MIN_REFRESH);
        assert_eq!(jwt_refresh_in(2000, Some(1000), 1300), MIN_REFRESH);
        // No iat, or an iat in the future (clock skew): lifetime counted from now.
        assert_eq!(jwt_refresh_in(1000, None, 1060), Duration::from_secs(30));
        assert_eq!(
            jwt_refresh_in(1000, Some(1500), 1060),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let secs: Vec<u64> = (0..8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
