//! Agent-side evidence, reported to the server in batches for its evidence log:
//! which workload process (pid, uid, gid, executable path and SHA-256) received
//! which SVID, and when (`ReportDeliveries`, linked to the issuance event), and the
//! runtime authorization decisions the agent made locally (`ReportDecisions`).
//! While the server is unreachable they wait in a bounded buffer ([`Outbox`]); what
//! overflows is counted and reported as dropped.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lanyard_core::Selector;
use lanyard_proto::node as pb;
use lanyard_proto::node::node_client::NodeClient;
use tokio::sync::{Notify, watch};
use tonic::transport::Channel;

use crate::sync::NodeHandle;

/// Reports kept while the server is unreachable.
pub const MAX_PENDING: usize = 10_000;
/// Reports per request.
const REPORT_BATCH: usize = 500;
/// Remembered (pid, credential) pairs, so that a stream re-sending the same SVID to
/// the same process is reported once.
const MAX_SEEN: usize = 100_000;

#[derive(Debug)]
struct Pending<T> {
    items: VecDeque<T>,
    dropped: u64,
}

/// A bounded buffer of evidence waiting to be reported: when full, the oldest
/// report goes and is counted as dropped.
#[derive(Debug)]
pub struct Outbox<T> {
    inner: Mutex<Pending<T>>,
    wake: Notify,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Pending {
                items: VecDeque::new(),
                dropped: 0,
            }),
            wake: Notify::new(),
        }
    }
}

impl<T> Outbox<T> {
    /// Queue one report (the reporter is woken when a batch is full).
    pub fn push(&self, item: T) {
        let Ok(mut g) = self.inner.lock() else { return };
        if g.items.len() >= MAX_PENDING {
            g.items.pop_front();
            g.dropped += 1;
        }
        g.items.push_back(item);
        let full = g.items.len() >= REPORT_BATCH;
        drop(g);
        if full {
            self.wake.notify_one();
        }
    }

    /// Reports waiting to be sent.
    pub fn pending(&self) -> usize {
        self.inner.lock().map(|g| g.items.len()).unwrap_or(0)
    }

    fn take(&self) -> (Vec<T>, u64) {
        let Ok(mut g) = self.inner.lock() else {
            return (Vec::new(), 0);
        };
        let n = g.items.len().min(REPORT_BATCH);
        let batch = g.items.drain(..n).collect();
        (batch, std::mem::take(&mut g.dropped))
    }

    /// Put a batch that could not be reported back at the front.
    fn restore(&self, batch: Vec<T>, dropped: u64) {
        let Ok(mut g) = self.inner.lock() else { return };
        g.dropped += dropped;
        for d in batch.into_iter().rev() {
            if g.items.len() >= MAX_PENDING {
                g.dropped += 1;
            } else {
                g.items.push_front(d);
            }
        }
    }
}

/// Evidence the server takes in batches.
pub trait Report: Clone + Send + Sync + 'static {
    /// What is reported, for logs.
    const WHAT: &'static str;
    /// Send one batch (and how many were dropped before it).
    fn send(
        client: &mut NodeClient<Channel>,
        batch: Vec<Self>,
        dropped: u64,
    ) -> impl Future<Output = Result<(), tonic::Status>> + Send;
}

impl Report for pb::Delivery {
    const WHAT: &'static str = "delivery";
    async fn send(
        client: &mut NodeClient<Channel>,
        deliveries: Vec<Self>,
        dropped: u64,
    ) -> Result<(), tonic::Status> {
        client
            .report_deliveries(pb::DeliveryReport {
                deliveries,
                dropped,
            })
            .await
            .map(|_| ())
    }
}

impl Report for pb::AuthzDecision {
    const WHAT: &'static str = "decision";
    async fn send(
        client: &mut NodeClient<Channel>,
        decisions: Vec<Self>,
        dropped: u64,
    ) -> Result<(), tonic::Status> {
        client
            .report_decisions(pb::DecisionReport { decisions, dropped })
            .await
            .map(|_| ())
    }
}

/// The delivery buffer shared by the Workload API and the reporter task.
#[derive(Debug, Default)]
pub struct Deliveries {
    outbox: Arc<Outbox<pb::Delivery>>,
    seen: Mutex<HashSet<(i32, String)>>,
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

pub(crate) fn now_ms() -> i64 {
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
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() >= MAX_SEEN {
                seen.clear();
            }
            if !seen.insert((to.pid, key.to_string())) {
                return;
            }
        }
        self.outbox.push(d);
    }

    /// The buffer the reporter sends from.
    pub fn outbox(&self) -> Arc<Outbox<pb::Delivery>> {
        self.outbox.clone()
    }

    /// Deliveries waiting to be reported.
    pub fn pending(&self) -> usize {
        self.outbox.pending()
    }
}

/// Report what is buffered every `interval` (sooner when a batch is full) until
/// shutdown, then once more.
pub async fn report<T: Report>(
    outbox: Arc<Outbox<T>>,
    node: NodeHandle,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = outbox.wake.notified() => false,
            _ = shutdown.changed() => true,
        };
        flush(&outbox, &node).await;
        if stopping || *shutdown.borrow() {
            return;
        }
    }
}

/// Send everything pending; stop at the first failure (the batch goes back).
pub async fn flush<T: Report>(outbox: &Outbox<T>, node: &NodeHandle) {
    loop {
        let (batch, dropped) = outbox.take();
        if batch.is_empty() && dropped == 0 {
            return;
        }
        let Some(mut client) = node.client().await else {
            outbox.restore(batch, dropped);
            return;
        };
        let n = batch.len();
        match T::send(&mut client, batch.clone(), dropped).await {
            Ok(()) => tracing::debug!(count = n, what = T::WHAT, "evidence reported"),
            Err(e) if e.code() == tonic::Code::InvalidArgument => {
                // The server will never accept this batch; keep the rest flowing.
                tracing::warn!(error = %e.message(), count = n, what = T::WHAT, "evidence report refused");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e.message(), what = T::WHAT, "evidence report failed; will retry");
                outbox.restore(batch, dropped);
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
        let (batch, dropped) = d.outbox.take();
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
        let (batch, dropped) = d.outbox.take();
        assert_eq!(dropped, 5);
        assert_eq!(batch[0].serial, "5", "the oldest were dropped");
        d.outbox.restore(batch, dropped);
        let (again, dropped) = d.outbox.take();
        assert_eq!(again[0].serial, "5");
        assert_eq!(dropped, 5);
    }
}
