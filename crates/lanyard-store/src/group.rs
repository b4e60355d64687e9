//! Group commit for the evidence log: events recorded concurrently are appended in
//! one transaction (one fsync) instead of one each. A caller's `append` returns only
//! after the transaction holding its events committed, so "recorded before the
//! credential is handed out" still holds.

use tokio::sync::{mpsc, oneshot};

use crate::{Result, Store, StoreError};

struct Job {
    events: Vec<lanyard_audit::Event>,
    done: oneshot::Sender<Result<()>>,
}

/// A queue in front of [`Store::append_audit`]. While one transaction is in flight,
/// new events wait; the next transaction takes all of them (up to `max_batch`).
#[derive(Debug, Clone)]
pub struct AuditQueue {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("events", &self.events.len())
            .finish()
    }
}

impl AuditQueue {
    /// Start the writer task on the current Tokio runtime. It stops when every
    /// handle to the queue is dropped.
    pub fn start<S: Store + Clone + 'static>(store: S, max_batch: usize) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(4096);
        let max_batch = max_batch.max(1);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut count = first.events.len();
                let mut jobs = vec![first];
                while count < max_batch {
                    match rx.try_recv() {
                        Ok(j) => {
                            count += j.events.len();
                            jobs.push(j);
                        }
                        Err(_) => break,
                    }
                }
                let all: Vec<lanyard_audit::Event> = jobs
                    .iter_mut()
                    .flat_map(|j| std::mem::take(&mut j.events))
                    .collect();
                let result = store.append_audit(&all).await;
                for j in jobs {
                    let r = match &result {
                        Ok(_) => Ok(()),
                        Err(e) => Err(StoreError::Database(format!(
                            "evidence log append failed: {e}"
                        ))),
                    };
                    let _ = j.done.send(r);
                }
            }
        });
        Self { tx }
    }

    /// Append `events` and wait until they are durable.
    pub async fn append(&self, events: Vec<lanyard_audit::Event>) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job { events, done })
            .await
            .map_err(|_| StoreError::Database("the evidence-log writer has stopped".into()))?;
        wait.await
            .map_err(|_| StoreError::Database("the evidence-log writer has stopped".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u64) -> lanyard_audit::Event {
        lanyard_audit::Event {
            version: lanyard_audit::SCHEMA_VERSION,
            id: format!("e{i}"),
            time: i as i64,
            kind: lanyard_audit::EventKind::X509SvidIssued,
            actor: None,
            subject: Some(format!("spiffe://example.org/w{i}")),
            evidence: Default::default(),
            policy_ids: vec![],
            decision: None,
            outcome: lanyard_audit::Outcome::Success,
            reason: None,
            owner: None,
            trace_id: None,
            parent_id: None,
            server_id: "t".into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_all_durable_and_chained() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::SqliteStore::open(&dir.path().join("a.db"))
            .await
            .unwrap();
        let q = AuditQueue::start(store.clone(), 64);
        let mut handles = Vec::new();
        for t in 0..16u64 {
            let q = q.clone();
            handles.push(tokio::spawn(async move {
                for i in 0..10u64 {
                    q.append(vec![ev(t * 100 + i)]).await.unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let recs = store.audit_records().await.unwrap();
        assert_eq!(recs.len(), 160);
        let mut ids: Vec<_> = recs.iter().map(|r| r.event.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 160, "every event stored once");
        let (key, _) = lanyard_audit::AuditKey::generate().unwrap();
        lanyard_audit::verify(&recs, &[], &key.public_key()).unwrap();
    }

    #[tokio::test]
    async fn a_failed_transaction_fails_every_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::SqliteStore::open(&dir.path().join("a.db"))
            .await
            .unwrap();
        let q = AuditQueue::start(store.clone(), 64);
        q.append(vec![ev(1)]).await.unwrap();
        // Make every further insert fail.
        sqlx::query("CREATE TRIGGER no_more BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'read-only'); END")
            .execute(store.pool())
            .await
            .unwrap();
        let err = q.append(vec![ev(2)]).await.unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
        assert_eq!(store.audit_records().await.unwrap().len(), 1);
    }
}
