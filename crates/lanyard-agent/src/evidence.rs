//! Agent-side evidence: which workload process (pid, uid, gid, executable path and
//! SHA-256) received which SVID, and when. Deliveries are buffered and reported to
//! the server in batches (`ReportDeliveries`), which records each one in the
//! evidence log linked to the issuance event. While the server is unreachable they
//! wait in a bounded buffer; what overflows is counted and reported as dropped.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use lanyard_core::Selector;
use lanyard_proto::node as pb;
use tokio::sync::{Notify, watch};

use crate::sync::NodeHandle;

/// Deliveries kept while the server is unreachable.
pub const MAX_PENDING: usize = 10_000;
/// Deliveries per report.
const REPORT_BATCH: usize = 500;
/// Remembered (pid, credential) pairs, so that a stream re-sending the same SVID to
/// the same process is reported once.
const MAX_SEEN: usize = 100_000;

#[derive(Debug, Default)]
struct Inner {
    pending: VecDeque<pb::Delivery>,
    dropped: u64,
    seen: HashSet<(i32, String)>,
}

/// The delivery buffer shared by the Workload API and the reporter task.
#[derive(Debug, Default)]
pub struct Deliveries {
    inner: Mutex<Inner>,
    wake: Notify,
}

/// The workload process a credential was handed to.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub path: String,
    pub sha256: String,
}

impl Recipient {
    /// Path and hash come from the attestation selectors (`unix:path:`, `unix:sha256:`).
    pub fn new(pid: i32, uid: u32, gid: u32, selectors: &[Selector]) -> Self {
        let find = |prefix: &str| {
            selectors
                .iter()
                .map(ToString::to_string)
                .find_map(|s| s.strip_prefix(prefix).map(str::to_string))
                .unwrap_or_default()
        };
        Self {
            pid,
            uid,
            gid,
            path: find("unix:path:"),
            sha256: find("unix:sha256:"),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Deliveries {
    /// An X509-SVID with `serial` went to `to`.
    pub fn x509(&self, to: &Recipient, spiffe_id: &str, serial: &str, event_id: &str) {
        self.push(
            to,
            pb::Delivery {
                spiffe_id: spiffe_id.to_string(),
                svid_type: "x509".into(),
                serial: serial.to_string(),
                issuance_event_id: event_id.to_string(),
                ..Default::default()
            },
            serial,
        );
    }

    /// A JWT-SVID with `jti` went to `to`.
    pub fn jwt(
        &self,
        to: &Recipient,
        spiffe_id: &str,
        jti: &str,
        audience: &[String],
        event_id: &str,
    ) {
        let key = format!("jwt:{jti}");
        self.push(
            to,
            pb::Delivery {
                spiffe_id: spiffe_id.to_string(),
                svid_type: "jwt".into(),
                jti: jti.to_string(),
                audience: audience.to_vec(),
                issuance_event_id: event_id.to_string(),
                ..Default::default()
            },
            &key,
        );
    }

    fn push(&self, to: &Recipient, mut d: pb::Delivery, key: &str) {
        if key.is_empty() {
            return;
        }
        d.pid = to.pid;
        d.uid = to.uid;
        d.gid = to.gid;
        d.path = to.path.clone();
        d.sha256 = to.sha256.clone();
        d.delivered_at_ms = now_ms();
        let Ok(mut g) = self.inner.lock() else { return };
        if g.seen.len() >= MAX_SEEN {
            g.seen.clear();
        }
        if !g.seen.insert((to.pid, key.to_string())) {
            return;
        }
        if g.pending.len() >= MAX_PENDING {
            g.pending.pop_front();
            g.dropped += 1;
        }
        g.pending.push_back(d);
        let full = g.pending.len() >= REPORT_BATCH;
        drop(g);
        if full {
            self.wake.notify_one();
        }
    }

    /// Deliveries waiting to be reported.
    pub fn pending(&self) -> usize {
        self.inner.lock().map(|g| g.pending.len()).unwrap_or(0)
    }

    fn take(&self) -> (Vec<pb::Delivery>, u64) {
        let Ok(mut g) = self.inner.lock() else {
            return (Vec::new(), 0);
        };
        let n = g.pending.len().min(REPORT_BATCH);
        let batch = g.pending.drain(..n).collect();
        (batch, std::mem::take(&mut g.dropped))
    }

    /// Put a batch that could not be reported back at the front.
    fn restore(&self, batch: Vec<pb::Delivery>, dropped: u64) {
        let Ok(mut g) = self.inner.lock() else { return };
        g.dropped += dropped;
        for d in batch.into_iter().rev() {
            if g.pending.len() >= MAX_PENDING {
                g.dropped += 1;
            } else {
                g.pending.push_front(d);
            }
        }
    }
}

/// Report buffered deliveries every `interval` (sooner when a batch is full) until
/// shutdown, then once more.
pub async fn report(
    deliveries: std::sync::Arc<Deliveries>,
    node: NodeHandle,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = deliveries.wake.notified() => false,
            _ = shutdown.changed() => true,
        };
        flush(&deliveries, &node).await;
        if stopping || *shutdown.borrow() {
            return;
        }
    }
}

/// Send everything pending; stop at the first failure (the batch goes back).
pub async fn flush(deliveries: &Deliveries, node: &NodeHandle) {
    loop {
        let (batch, dropped) = deliveries.take();
        if batch.is_empty() && dropped == 0 {
            return;
        }
        let Some(mut client) = node.client().await else {
            deliveries.restore(batch, dropped);
            return;
        };
        let n = batch.len();
        match client
            .report_deliveries(pb::DeliveryReport {
                deliveries: batch.clone(),
                dropped,
            })
            .await
        {
            Ok(_) => tracing::debug!(deliveries = n, "delivery evidence reported"),
            Err(e) if e.code() == tonic::Code::InvalidArgument => {
                // The server will never accept this batch; keep the rest flowing.
                tracing::warn!(error = %e.message(), deliveries = n, "delivery report refused");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e.message(), "delivery report failed; will retry");
                deliveries.restore(batch, dropped);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(pid: i32) -> Recipient {
        Recipient::new(
            pid,
            1000,
            100,
            &[
                Selector::new("unix:uid:1000").unwrap(),
                Selector::new("unix:path:/usr/bin/web").unwrap(),
                Selector::new(&format!("unix:sha256:{}", "ab".repeat(32))).unwrap(),
            ],
        )
    }

    #[test]
    fn recipient_takes_path_and_hash_from_selectors() {
        let r = who(7);
        assert_eq!(r.path, "/usr/bin/web");
        assert_eq!(r.sha256, "ab".repeat(32));
    }

    #[test]
    fn the_same_svid_to_the_same_process_is_reported_once() {
        let d = Deliveries::default();
        d.x509(&who(7), "spiffe://example.org/web", "0a", "ev1");
        d.x509(&who(7), "spiffe://example.org/web", "0a", "ev1");
        d.x509(&who(8), "spiffe://example.org/web", "0a", "ev1");
        d.x509(&who(7), "spiffe://example.org/web", "0b", "ev2");
        d.jwt(
            &who(7),
            "spiffe://example.org/web",
            "j1",
            &["a".into()],
            "ev3",
        );
        assert_eq!(d.pending(), 4);
        let (batch, dropped) = d.take();
        assert_eq!((batch.len(), dropped), (4, 0));
        assert_eq!(batch[0].path, "/usr/bin/web");
        assert_eq!(batch[3].svid_type, "jwt");
    }

    #[test]
    fn overflow_is_counted_and_failed_batches_go_back_in_order() {
        let d = Deliveries::default();
        for i in 0..(MAX_PENDING + 5) {
            d.x509(&who(1), "spiffe://example.org/web", &format!("{i:x}"), "");
        }
        assert_eq!(d.pending(), MAX_PENDING);
        let (batch, dropped) = d.take();
        assert_eq!(dropped, 5);
        assert_eq!(batch[0].serial, "5", "the oldest were dropped");
        d.restore(batch, dropped);
        let (again, dropped) = d.take();
        assert_eq!(again[0].serial, "5");
        assert_eq!(dropped, 5);
    }
}
