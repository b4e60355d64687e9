//! Batch entry changes: `BatchCreateEntry`, `BatchUpdateEntry`, `BatchDeleteEntry`.
//!
//! Every item is validated and decided by registration policy on its own, with the
//! same facts as the single-entry RPC (a refusal is recorded as `entry_refused` and
//! reported in the item's place); the accepted items are then written in one store
//! transaction with one evidence event each, and per-item store outcomes
//! (duplicate, not found, stale revision) are reported in place too. Nothing about
//! one item stops the others; only a datastore failure fails the whole call, and
//! then nothing of the batch was written.

use lanyard_policy::RegistrationAction;
use lanyard_proto::admin as pb;
use lanyard_store::{BatchOutcome, EntrySpec, EntryUpdate, Store, StoreError};
use tonic::{Code, Status};

use super::{AdminCaller, AdminService, bad, entry_id, store_status, to_pb_entry, validate_entry};
use crate::policy::{BatchDecider, EntryRefusal};

/// One batch call's items, as received.
pub(super) enum BatchRequest {
    Create(Vec<pb::Entry>),
    Update(Vec<pb::UpdateEntryRequest>),
    Delete(Vec<String>),
}

impl BatchRequest {
    fn len(&self) -> usize {
        match self {
            Self::Create(v) => v.len(),
            Self::Update(v) => v.len(),
            Self::Delete(v) => v.len(),
        }
    }

    fn event_kind(&self) -> lanyard_audit::EventKind {
        match self {
            Self::Create(_) => lanyard_audit::EventKind::EntryCreated,
            Self::Update(_) => lanyard_audit::EventKind::EntryUpdated,
            Self::Delete(_) => lanyard_audit::EventKind::EntryDeleted,
        }
    }
}

/// A checked item, ready for the store.
enum Item {
    Create(EntrySpec),
    Update(EntryUpdate),
    Delete(String),
}

impl Item {
    fn create(&self) -> Option<EntrySpec> {
        match self {
            Self::Create(s) => Some(s.clone()),
            _ => None,
        }
    }
    fn update(&self) -> Option<EntryUpdate> {
        match self {
            Self::Update(u) => Some(u.clone()),
            _ => None,
        }
    }
    fn delete(&self) -> Option<String> {
        match self {
            Self::Delete(id) => Some(id.clone()),
            _ => None,
        }
    }
}

/// An item's checks: the item and its permitting policies, or its result.
type Checked = Result<(Item, Vec<String>), pb::EntryResult>;

/// An item the checks let through: where it came from and the permitting policies.
struct Accepted {
    index: usize,
    item: Item,
    policy_ids: Vec<String>,
}

fn refused(status: &Status, policy_ids: Vec<String>) -> pb::EntryResult {
    pb::EntryResult {
        code: status.code() as i32,
        message: status.message().to_string(),
        entry: None,
        policy_ids,
    }
}

impl From<EntryRefusal> for pb::EntryResult {
    fn from(r: EntryRefusal) -> Self {
        refused(&r.status, r.policy_ids)
    }
}

fn check_size(n: usize) -> Result<(), Status> {
    if n > pb::MAX_ENTRY_BATCH {
        return Err(bad(format!(
            "{n} entries in one batch; at most {} are accepted per call, split the rest into further calls (`lanyard entry create --file` does)",
            pb::MAX_ENTRY_BATCH
        )));
    }
    Ok(())
}

/// The response: refusals already in `results`, the store's outcome for each
/// accepted item filled in.
fn merge(
    mut results: Vec<Option<pb::EntryResult>>,
    accepted: &[Accepted],
    outcome: BatchOutcome,
) -> pb::BatchEntryResponse {
    for (a, r) in accepted.iter().zip(outcome) {
        results[a.index] = Some(match r {
            Ok(e) => pb::EntryResult {
                code: Code::Ok as i32,
                message: String::new(),
                entry: Some(to_pb_entry(&e)),
                policy_ids: a.policy_ids.clone(),
            },
            Err(e) => refused(&store_status(e), Vec::new()),
        });
    }
    pb::BatchEntryResponse {
        results: results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| refused(&Status::internal("no outcome recorded"), Vec::new()))
            })
            .collect(),
    }
}

impl AdminService {
    /// The events of the written entries, each with its item's permitting policies.
    fn batch_events(
        &self,
        kind: lanyard_audit::EventKind,
        actor: &str,
        accepted: &[Accepted],
        outcome: &BatchOutcome,
    ) -> Vec<lanyard_audit::Event> {
        accepted
            .iter()
            .zip(outcome)
            .filter_map(|(a, r)| r.as_ref().ok().map(|e| (a, e)))
            .flat_map(|(a, e)| self.entry_event(kind, actor, &a.policy_ids, e))
            .collect()
    }

    /// Checks of a new or replacing spec: registration policy, then node-alias
    /// children (`replaces`: the entry an update rewrites).
    async fn check_spec(
        &self,
        decider: &mut BatchDecider<'_>,
        who: &AdminCaller,
        action: RegistrationAction,
        spec: &EntrySpec,
        replaces: Option<&str>,
    ) -> Result<Vec<String>, pb::EntryResult> {
        let ids = decider
            .check(&who.facts, &who.actor, action, spec)
            .await
            .map_err(pb::EntryResult::from)?;
        crate::policy::check_alias_children(
            &self.shared,
            &who.facts,
            &who.actor,
            action,
            spec,
            replaces,
        )
        .await
        .map_err(|s| refused(&s, Vec::new()))?;
        Ok(ids)
    }

    /// The stored entry `id` names, or the item's error.
    async fn current(&self, id: &str) -> Result<lanyard_store::Entry, pb::EntryResult> {
        let id = entry_id(id).map_err(|s| refused(&s, Vec::new()))?;
        match self.shared.store.get_entry(id).await {
            Ok(Some(e)) => Ok(e),
            Ok(None) => Err(refused(
                &store_status(StoreError::NotFound {
                    what: "entry",
                    id: id.to_string(),
                }),
                Vec::new(),
            )),
            Err(e) => Err(refused(&store_status(e), Vec::new())),
        }
    }

    /// Decide every item of `req` on its own, write the accepted ones in one
    /// transaction, and report each in request order.
    pub(super) async fn batch(
        &self,
        who: &AdminCaller,
        req: BatchRequest,
    ) -> Result<pb::BatchEntryResponse, Status> {
        check_size(req.len())?;
        let started = std::time::Instant::now();
        let mut decider = BatchDecider::new(&self.shared).await?;
        let mut checked = Vec::with_capacity(req.len());
        match &req {
            BatchRequest::Create(entries) => {
                for e in entries {
                    checked.push(self.check_create(&mut decider, who, e).await);
                }
            }
            BatchRequest::Update(updates) => {
                for u in updates {
                    checked.push(self.check_update(&mut decider, who, u).await);
                }
            }
            BatchRequest::Delete(ids) => {
                for id in ids {
                    checked.push(self.check_delete(&mut decider, who, id).await);
                }
            }
        }
        let mut results = Vec::with_capacity(checked.len());
        let mut accepted = Vec::new();
        for (index, c) in checked.into_iter().enumerate() {
            match c {
                Ok((item, policy_ids)) => {
                    results.push(None);
                    accepted.push(Accepted {
                        index,
                        item,
                        policy_ids,
                    });
                }
                Err(r) => results.push(Some(r)),
            }
        }
        let decided_in = started.elapsed();
        let kind = req.event_kind();
        let events = |out: &BatchOutcome| self.batch_events(kind, &who.actor, &accepted, out);
        let now = self.shared.clock.unix_seconds();
        let store = &self.shared.store;
        let outcome = match &req {
            BatchRequest::Create(_) => {
                let specs: Vec<EntrySpec> =
                    accepted.iter().filter_map(|a| a.item.create()).collect();
                store.create_entries(&specs, now, &events).await
            }
            BatchRequest::Update(_) => {
                let items: Vec<EntryUpdate> =
                    accepted.iter().filter_map(|a| a.item.update()).collect();
                store.update_entries(&items, now, &events).await
            }
            BatchRequest::Delete(_) => {
                let ids: Vec<String> = accepted.iter().filter_map(|a| a.item.delete()).collect();
                store.delete_entries(&ids, &events).await
            }
        }
        .map_err(store_status)?;
        let written_in = started.elapsed().saturating_sub(decided_in);
        let resp = merge(results, &accepted, outcome);
        let ok = resp.results.iter().filter(|r| r.code == 0).count();
        tracing::info!(
            written = ok,
            refused = resp.results.len() - ok,
            decided_ms = decided_in.as_millis(),
            written_ms = written_in.as_millis(),
            "entry batch: {}",
            kind.name()
        );
        if ok > 0 {
            self.shared.changes.notify();
        }
        Ok(resp)
    }

    async fn check_create(
        &self,
        decider: &mut BatchDecider<'_>,
        who: &AdminCaller,
        e: &pb::Entry,
    ) -> Checked {
        let spec = validate_entry(&self.shared, e).map_err(|s| refused(&s, Vec::new()))?;
        let ids = self
            .check_spec(decider, who, RegistrationAction::Create, &spec, None)
            .await?;
        Ok((Item::Create(spec), ids))
    }

    /// One update item, as `UpdateEntry` decides it: the entry as it is and as it
    /// would become must both be allowed.
    async fn check_update(
        &self,
        decider: &mut BatchDecider<'_>,
        who: &AdminCaller,
        r: &pb::UpdateEntryRequest,
    ) -> Checked {
        let e = r
            .entry
            .as_ref()
            .ok_or_else(|| refused(&bad("entry is required"), Vec::new()))?;
        let current = self.current(&e.id).await?;
        let spec = validate_entry(&self.shared, e).map_err(|s| refused(&s, Vec::new()))?;
        decider
            .check(
                &who.facts,
                &who.actor,
                RegistrationAction::Update,
                &current.spec,
            )
            .await?;
        let ids = self
            .check_spec(
                decider,
                who,
                RegistrationAction::Update,
                &spec,
                Some(&current.id),
            )
            .await?;
        Ok((
            Item::Update(EntryUpdate {
                id: current.id,
                spec,
                expected_revision: (r.expected_revision > 0).then_some(r.expected_revision),
            }),
            ids,
        ))
    }

    async fn check_delete(
        &self,
        decider: &mut BatchDecider<'_>,
        who: &AdminCaller,
        id: &str,
    ) -> Checked {
        let current = self.current(id).await?;
        let ids = decider
            .check(
                &who.facts,
                &who.actor,
                RegistrationAction::Delete,
                &current.spec,
            )
            .await?;
        Ok((Item::Delete(current.id), ids))
    }
}
