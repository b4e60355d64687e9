//! Other servers' changes, pushed: on PostgreSQL every committed change is in the
//! change feed (`changes` table) and announced with `NOTIFY lanyard_changes`. This
//! task listens, reads what is new from the feed (also after a reconnect, and every
//! [`CATCH_UP`] as a safety net, so nothing is missed), and refreshes what this
//! server caches: the entry index and agents' streams, the policy and deny-list
//! caches, the published bundle. On SQLite there is one server and nothing to do.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lanyard_store::{Change, ChangeKind, Heard, Store};
use tokio::sync::watch;

use crate::access::Access;
use crate::state::Shared;

/// Longest time between two reads of the feed when no notification arrives.
pub const CATCH_UP: Duration = Duration::from_secs(5);
/// Changes read per query.
const PAGE: i64 = 1000;
/// Changes kept in the feed (older ones are pruned by the rotation tick).
pub const KEEP: i64 = 100_000;

/// What a batch of other servers' changes requires of this server.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refresh {
    /// Re-read entries, nodes, deny-list and exceptions: wake agents' streams.
    pub notify: bool,
    /// Drop the cached authz policy.
    pub policy: bool,
    /// Drop the cached deny-list.
    pub deny_list: bool,
    /// Recompute and re-read the bundle.
    pub bundle: bool,
}

/// Pure: what to refresh for `changes`, ignoring this server's own (it applied
/// them when it made them).
pub fn refresh_for(changes: &[Change], own: &str) -> Refresh {
    let kinds: BTreeSet<ChangeKind> = changes
        .iter()
        .filter(|c| c.origin.is_empty() || c.origin != own)
        .map(|c| c.kind)
        .collect();
    let has = |k| kinds.contains(&k);
    Refresh {
        notify: !kinds.is_empty(),
        policy: has(ChangeKind::Policy),
        deny_list: has(ChangeKind::DenyList),
        bundle: has(ChangeKind::Bundle) || has(ChangeKind::Server),
    }
}

/// Read the feed after `last` and apply it; returns the newest revision seen.
async fn catch_up(shared: &Shared, access: &Access, mut last: i64) -> i64 {
    loop {
        let page = match shared.store.changes_since(last, PAGE).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read other servers' changes; retrying");
                return last;
            }
        };
        let Some(newest) = page.last().map(|c| c.revision) else {
            return last;
        };
        apply(shared, access, &refresh_for(&page, &shared.server_name)).await;
        last = newest;
        if i64::try_from(page.len()).unwrap_or(PAGE) < PAGE {
            return last;
        }
    }
}

async fn apply(shared: &Shared, access: &Access, r: &Refresh) {
    if r.policy {
        access.invalidate_policy();
    }
    if r.deny_list {
        access.invalidate_deny_list();
    }
    if r.bundle
        && let Err(e) = shared.publish_bundle().await
    {
        tracing::warn!(error = %e, "cannot refresh the trust bundle after another server's change");
    }
    if r.notify {
        shared.changes.notify();
    }
}

/// Run until shutdown: listen, catch up, apply.
pub async fn run(shared: Arc<Shared>, access: Arc<Access>, mut shutdown: watch::Receiver<bool>) {
    // Start from the feed's head: what is older is already in this server's first
    // reads.
    let mut last = shared.store.change_revision().await.unwrap_or(0);
    loop {
        let mut listener = match shared.store.listen_changes().await {
            None => return,
            Some(Ok(l)) => Some(l),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot listen to other servers' changes; reading the feed every {}s until it works", CATCH_UP.as_secs());
                None
            }
        };
        // Whatever was committed while not listening.
        last = catch_up(&shared, &access, last).await;
        loop {
            let heard = async {
                match listener.as_mut() {
                    Some(l) => l.next().await.map(Some),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                h = heard => match h {
                    Ok(Some(Heard::Revision(r))) if r <= last => {}
                    Ok(_) => last = catch_up(&shared, &access, last).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "lost the change notifications; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                },
                () = tokio::time::sleep(CATCH_UP) => {
                    last = catch_up(&shared, &access, last).await;
                    if listener.is_none() {
                        break;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(kind: ChangeKind, origin: &str) -> Change {
        Change {
            revision: 1,
            kind,
            key: "k".to_string(),
            origin: origin.to_string(),
        }
    }

    #[test]
    fn own_changes_need_nothing_others_need_their_refresh() {
        assert_eq!(refresh_for(&[], "a"), Refresh::default());
        assert_eq!(
            refresh_for(
                &[c(ChangeKind::Entry, "a"), c(ChangeKind::Policy, "a")],
                "a"
            ),
            Refresh::default()
        );
        let r = refresh_for(&[c(ChangeKind::Entry, "b")], "a");
        assert_eq!(
            r,
            Refresh {
                notify: true,
                ..Refresh::default()
            }
        );
        let r = refresh_for(
            &[
                c(ChangeKind::Policy, "b"),
                c(ChangeKind::DenyList, ""),
                c(ChangeKind::Server, "b"),
            ],
            "a",
        );
        assert_eq!(
            r,
            Refresh {
                notify: true,
                policy: true,
                deny_list: true,
                bundle: true
            }
        );
        assert!(refresh_for(&[c(ChangeKind::Bundle, "b")], "a").bundle);
    }
}
