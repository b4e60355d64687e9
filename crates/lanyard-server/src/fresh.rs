//! Fail-closed caches of what security decisions read from the datastore (the JWT
//! deny-list, the authz policy set, the entry index). A cache is re-read when it is
//! older than its refresh interval; when the datastore cannot be read, the last copy
//! is used only while it is younger than a bounded staleness, after which (or when it
//! never loaded) every decision that needs it is refused as unavailable, naming the
//! cause. The cache recovers by itself on the first successful read.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use lanyard_authz::Unavailable;

/// How long the last good copy may be used while the datastore cannot be read.
pub const MAX_STALE: Duration = Duration::from_secs(5);

/// What to do with a cached copy of a given age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Young enough to use without a read.
    Fresh,
    /// Re-read; on failure the copy may still be used.
    Due,
    /// Re-read; on failure refuse.
    Expired,
}

/// Decide how a copy of `age` (None: never loaded) may be used (pure).
pub fn freshness(age: Option<Duration>, refresh: Duration, max_stale: Duration) -> Freshness {
    match age {
        Some(a) if a < refresh => Freshness::Fresh,
        Some(a) if a < max_stale.max(refresh) => Freshness::Due,
        _ => Freshness::Expired,
    }
}

/// A value read from the datastore, with the time of its last successful read.
#[derive(Debug)]
pub struct FreshCache<T> {
    what: &'static str,
    refresh: Duration,
    max_stale: Duration,
    slot: RwLock<Option<(Instant, Arc<T>)>>,
}

impl<T> FreshCache<T> {
    pub fn new(what: &'static str, refresh: Duration, max_stale: Duration) -> Self {
        Self {
            what,
            refresh,
            max_stale,
            slot: RwLock::new(None),
        }
    }

    fn current(&self) -> Option<(Instant, Arc<T>)> {
        self.slot
            .read()
            .ok()
            .and_then(|g| g.as_ref().map(|(t, v)| (*t, v.clone())))
    }

    /// Replace the value (a change made through this server, or a fresh read).
    pub fn put(&self, value: Arc<T>) {
        if let Ok(mut g) = self.slot.write() {
            *g = Some((Instant::now(), value));
        }
    }

    /// Forget the value so the next `get` reads (a change this server made).
    pub fn invalidate(&self) {
        if let Ok(mut g) = self.slot.write() {
            *g = None;
        }
    }

    /// The value, re-read with `load` when due. `Err` names what cannot be read and
    /// why, when no copy young enough is left.
    pub async fn get<F, Fut, E>(&self, load: F) -> Result<Arc<T>, Unavailable>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        self.get_where(|_| true, load).await
    }

    /// Like [`FreshCache::get`]; a copy for which `current` is false (it predates a
    /// change this server made) is re-read at once, and used only within the
    /// staleness bound when the read fails.
    pub async fn get_where<F, Fut, E>(
        &self,
        current: impl Fn(&T) -> bool,
        load: F,
    ) -> Result<Arc<T>, Unavailable>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        self.update_where(current, |_| async { load().await.map(Arc::new) })
            .await
    }

    /// Like [`FreshCache::get_where`], with `update` given the last copy (if any) to
    /// build the next from — an incremental re-read.
    pub async fn update_where<F, Fut, E>(
        &self,
        current: impl Fn(&T) -> bool,
        update: F,
    ) -> Result<Arc<T>, Unavailable>
    where
        F: FnOnce(Option<Arc<T>>) -> Fut,
        Fut: Future<Output = Result<Arc<T>, E>>,
        E: std::fmt::Display,
    {
        let copy = self.current();
        let age = copy.as_ref().map(|(t, _)| t.elapsed());
        let mut state = freshness(age, self.refresh, self.max_stale);
        if state == Freshness::Fresh && copy.as_ref().is_some_and(|(_, v)| !current(v)) {
            state = Freshness::Due;
        }
        let current = copy;
        if state == Freshness::Fresh
            && let Some((_, v)) = current
        {
            return Ok(v);
        }
        match update(current.as_ref().map(|(_, v)| v.clone())).await {
            Ok(v) => {
                self.put(v.clone());
                Ok(v)
            }
            Err(e) => match (state, current) {
                (Freshness::Due, Some((_, v))) => {
                    tracing::warn!(error = %e, what = self.what, "cannot re-read from the datastore; using the last copy");
                    Ok(v)
                }
                (_, None) => Err(Unavailable(format!(
                    "the {} has not been read from the datastore yet and cannot be ({e}); no decision is made until the datastore answers",
                    self.what
                ))),
                (_, Some(_)) => Err(Unavailable(format!(
                    "the {} cannot be re-read from the datastore ({e}) and the last copy is older than {}s; no decision is made until the datastore answers",
                    self.what,
                    self.max_stale.as_secs()
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const R: Duration = Duration::from_secs(1);
    const S: Duration = Duration::from_secs(5);

    #[test]
    fn freshness_by_age() {
        assert_eq!(freshness(None, R, S), Freshness::Expired);
        assert_eq!(freshness(Some(Duration::ZERO), R, S), Freshness::Fresh);
        assert_eq!(freshness(Some(R), R, S), Freshness::Due);
        assert_eq!(freshness(Some(S - R), R, S), Freshness::Due);
        assert_eq!(freshness(Some(S), R, S), Freshness::Expired);
        // A staleness bound below the refresh interval never extends the copy.
        assert_eq!(freshness(Some(R), R, Duration::ZERO), Freshness::Expired);
    }

    #[tokio::test]
    async fn never_loaded_refuses_and_recovers() {
        let c: FreshCache<u32> = FreshCache::new("deny-list", R, S);
        let e = c
            .get(|| async { Err::<u32, _>("connection refused") })
            .await
            .unwrap_err();
        assert!(
            e.0.contains("deny-list") && e.0.contains("connection refused"),
            "{e}"
        );
        assert_eq!(*c.get(|| async { Ok::<_, String>(7) }).await.unwrap(), 7);
        // Fresh: no read.
        assert_eq!(
            *c.get(|| async { Err::<u32, _>("not called") })
                .await
                .unwrap(),
            7
        );
    }

    #[tokio::test]
    async fn stale_copies_are_bounded() {
        let c: FreshCache<u32> = FreshCache::new("entry index", Duration::ZERO, S);
        c.put(Arc::new(1));
        // Due (refresh 0) but younger than S: the last copy serves.
        assert_eq!(*c.get(|| async { Err::<u32, _>("down") }).await.unwrap(), 1);
        let short: FreshCache<u32> = FreshCache::new("entry index", Duration::ZERO, Duration::ZERO);
        short.put(Arc::new(1));
        let e = short
            .get(|| async { Err::<u32, _>("down") })
            .await
            .unwrap_err();
        assert!(e.0.contains("older than 0s") && e.0.contains("down"), "{e}");
        assert_eq!(
            *short.get(|| async { Ok::<_, String>(2) }).await.unwrap(),
            2
        );
    }
}
