//! Group commit for ingestion: concurrent `ingest` calls share transactions.
//!
//! Every transaction costs a durable flush and a turn on the store's writer
//! (one connection on SQLite), so concurrent callers each committing a few
//! events wait mostly on each other. Here a call of fewer than `ALONE_FROM`
//! events queues its plans and waits for the turn; whoever gets the turn
//! commits everything queued so far in one transaction and hands each call
//! its own outcomes. What callers see is unchanged: a call is answered only
//! after its events are committed, all of them together, and calls committed
//! together behave as if they had arrived one after another (the store
//! applies the plans in order). If a group's transaction fails, its calls are
//! committed again one by one, so each gets its own answer and its own error.
//!
//! The commit runs in a task of its own, holding the turn: a caller that goes
//! away (its client disconnected) cannot cancel the commit of the other calls
//! grouped with it.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use crate::store::{EventPlan, IngestOutcome, Store, StoreError};

/// A call of this many events pays for its own commit: it goes straight to
/// the store, as if there were no grouping. Queueing it behind the turn
/// would only make large batches wait for each other, and the work each does
/// before its transaction would no longer overlap another's (measured: 4
/// callers of 500 events, 15 % slower when grouped).
const ALONE_FROM: usize = 100;

/// A group takes queued calls while it holds at most this many events; the
/// calls behind them wait for the next turn.
const MAX_GROUP_EVENTS: usize = 1_000;

type Answer = Result<Vec<IngestOutcome>, StoreError>;

struct Pending {
    id: u64,
    plans: Vec<EventPlan>,
    now: DateTime<Utc>,
    reply: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Queue {
    next_id: u64,
    pending: VecDeque<Pending>,
}

#[derive(Default)]
pub(crate) struct GroupCommit {
    queue: std::sync::Mutex<Queue>,
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Transactions started, for the tests.
    #[cfg(test)]
    groups: std::sync::atomic::AtomicUsize,
}

impl GroupCommit {
    /// Commits `plans` with whatever other calls are queued, and returns this
    /// call's outcomes (one per plan, in order).
    pub(crate) async fn ingest(
        &self,
        store: &Arc<dyn Store>,
        plans: Vec<EventPlan>,
        now: DateTime<Utc>,
    ) -> Answer {
        if plans.len() >= ALONE_FROM {
            return store.ingest(plans, now).await;
        }
        let (reply, mut answer) = oneshot::channel();
        let id = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let id = queue.next_id;
            queue.next_id += 1;
            queue.pending.push_back(Pending {
                id,
                plans,
                now,
                reply,
            });
            id
        };
        loop {
            // A group committed while this call waited may have taken it:
            // then its answer comes without the turn.
            let turn = tokio::select! {
                result = &mut answer => return result.unwrap_or_else(|_| Err(lost())),
                turn = self.turn.clone().lock_owned() => turn,
            };
            match answer.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => return Err(lost()),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let group = self.take_group();
            #[cfg(test)]
            self.groups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let ours = group.iter().any(|p| p.id == id);
            let store = store.clone();
            tokio::spawn(async move {
                commit(store.as_ref(), group).await;
                drop(turn);
            });
            if ours {
                return answer.await.unwrap_or_else(|_| Err(lost()));
            }
        }
    }

    /// The oldest queued calls, up to `MAX_GROUP_EVENTS` events (at least one
    /// call, however large).
    fn take_group(&self) -> Vec<Pending> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut group = Vec::new();
        let mut events = 0;
        while let Some(next) = queue.pending.front() {
            if !group.is_empty() && events + next.plans.len() > MAX_GROUP_EVENTS {
                break;
            }
            events += next.plans.len();
            group.extend(queue.pending.pop_front());
        }
        group
    }
}

/// The commit task ended without answering (it panicked): the call's events
/// may or may not be stored; sending them again is safe (ids are idempotent).
fn lost() -> StoreError {
    StoreError::Database(sqlx::Error::WorkerCrashed)
}

/// Commits a group in one transaction and answers each call; if that fails,
/// commits the calls one by one.
async fn commit(store: &dyn Store, group: Vec<Pending>) {
    if group.len() == 1 {
        // Nothing to share: committed as it came.
        return one_by_one(store, group).await;
    }
    // The latest receive time of the group stands for all of it (they differ
    // by the time the earlier calls waited for this turn).
    let Some(now) = group.iter().map(|p| p.now).max() else {
        return;
    };
    let plans: Vec<EventPlan> = group.iter().flat_map(|p| p.plans.clone()).collect();
    let total = plans.len();
    match store.ingest(plans, now).await {
        Ok(outcomes) if outcomes.len() == total => {
            let mut outcomes = outcomes.into_iter();
            for call in group {
                let own = outcomes.by_ref().take(call.plans.len()).collect();
                let _ = call.reply.send(Ok(own));
            }
        }
        Ok(outcomes) => {
            // Committed, but not answerable call by call: a store bug.
            let message = format!(
                "a grouped ingest of {total} events returned {} outcomes",
                outcomes.len()
            );
            tracing::error!("{message}");
            for call in group {
                let _ = call.reply.send(Err(StoreError::Corrupt {
                    table: "events",
                    message: message.clone(),
                }));
            }
        }
        Err(error) => {
            tracing::debug!(%error, calls = group.len(), "a grouped ingest failed; committing its calls one by one");
            one_by_one(store, group).await;
        }
    }
}

async fn one_by_one(store: &dyn Store, group: Vec<Pending>) {
    for call in group {
        let _ = call.reply.send(store.ingest(call.plans, call.now).await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Customer, Event};

    fn plan(id: &str) -> EventPlan {
        let at: DateTime<Utc> = "2026-01-05T09:00:00Z".parse().expect("time");
        EventPlan {
            event: Event {
                id: id.into(),
                event_type: "payment_failed".into(),
                customer: Customer {
                    id: format!("cus_{id}"),
                    ..Default::default()
                },
                subject: format!("in_{id}"),
                data: serde_json::json!({}),
                occurred_at: Some(at),
            },
            occurred_at: at,
            starts: vec![],
            notes: vec![],
        }
    }

    /// A real SQLite store in `dir`.
    async fn sqlite_store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        Arc::new(
            crate::store::sqlite::SqliteStore::open(&dir.path().join("test.db"))
                .await
                .expect("open store"),
        )
    }

    /// A plan the store refuses: its case has the same step and channel
    /// twice, so the two deliveries' idempotency keys collide.
    fn refused_plan(id: &str) -> EventPlan {
        let mut plan = plan(id);
        let delivery = crate::store::NewDelivery {
            step_index: 0,
            step: "notice".into(),
            channel: "email".into(),
            template: "notice".into(),
            due_at: plan.occurred_at,
            planned_at: plan.occurred_at,
            critical: false,
        };
        plan.starts.push(crate::store::NewCase {
            workflow: "payment-failed".into(),
            workflow_version: "v1".into(),
            workflow_source: "name: payment-failed".into(),
            exit_on: vec![],
            deliveries: vec![delivery.clone(), delivery],
        });
        plan
    }

    /// Calls queued behind the turn form one group; the store refuses one of
    /// them, so the group's transaction fails and its calls are committed
    /// one by one: the refused call gets the error and stores nothing, every
    /// other call gets its own outcomes and is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_group_is_committed_call_by_call() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(&dir).await;
        let group = Arc::new(GroupCommit::default());
        let now = Utc::now();
        // Holding the turn, so that every call queues before any commits.
        let turn = group.turn.clone().lock_owned().await;
        let mut calls = tokio::task::JoinSet::new();
        for n in 0..10 {
            let id = format!("e{n}");
            let (group, store) = (group.clone(), store.clone());
            calls.spawn(async move {
                let plans = vec![if n == 4 { refused_plan(&id) } else { plan(&id) }];
                (id, group.ingest(&store, plans, now).await)
            });
        }
        while group.queue.lock().expect("queue").pending.len() < 10 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drop(turn);

        let mut refused = Vec::new();
        while let Some(joined) = calls.join_next().await {
            match joined.expect("call") {
                (id, Ok(outcomes)) => {
                    let answered: Vec<&str> =
                        outcomes.iter().map(|o| o.event_id.as_str()).collect();
                    assert_eq!(answered, [id.as_str()]);
                    assert!(!outcomes[0].duplicate, "{id}");
                }
                (id, Err(error)) => refused.push((id, error.to_string())),
            }
        }
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].0, "e4");
        assert!(refused[0].1.contains("UNIQUE"), "{refused:?}");
        assert_eq!(
            group.groups.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "the ten calls were one group"
        );

        // What was stored: every event but the refused one.
        let again: Vec<EventPlan> = (0..10).map(|n| plan(&format!("e{n}"))).collect();
        let outcomes = store.ingest(again, now).await.expect("ingest again");
        let new: Vec<&str> = outcomes
            .iter()
            .filter(|o| !o.duplicate)
            .map(|o| o.event_id.as_str())
            .collect();
        assert_eq!(new, ["e4"]);
    }

    /// Forty concurrent calls (one of two events, and the same event id in
    /// two calls) share a few transactions, and each call gets exactly its
    /// own outcomes: its event ids in order, the repeated id accepted once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_share_transactions_and_get_their_own_outcomes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(&dir).await;
        let group = Arc::new(GroupCommit::default());
        let now = Utc::now();
        let mut calls = tokio::task::JoinSet::new();
        for n in 0..40 {
            let ids: Vec<String> = match n {
                7 => vec!["e7".into(), "e7b".into()],
                9 => vec!["e3".into()],
                n => vec![format!("e{n}")],
            };
            let (group, store) = (group.clone(), store.clone());
            calls.spawn(async move {
                let plans = ids.iter().map(|id| plan(id)).collect();
                let outcomes = group.ingest(&store, plans, now).await.expect("ingest");
                (ids, outcomes)
            });
        }
        let mut duplicates = Vec::new();
        while let Some(joined) = calls.join_next().await {
            let (ids, outcomes) = joined.expect("call");
            let answered: Vec<&str> = outcomes.iter().map(|o| o.event_id.as_str()).collect();
            assert_eq!(answered, ids, "a call got another call's outcomes");
            duplicates.extend(
                outcomes
                    .iter()
                    .filter(|o| o.duplicate)
                    .map(|o| o.event_id.clone()),
            );
        }
        assert_eq!(
            duplicates,
            ["e3"],
            "the repeated id is a duplicate exactly once"
        );
        let groups = group.groups.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            groups < 40,
            "every call committed on its own ({groups} transactions)"
        );
    }
}
