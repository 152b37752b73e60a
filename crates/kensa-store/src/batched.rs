//! Group commit for small compare-and-set writes: callers that each need one conditional put
//! (round-robin claims, many per second from many tasks) wait here for one transaction shared
//! with every other put that arrived meanwhile ([`Store::put_each`]), instead of one
//! transaction each. Under load a transaction holds as many puts as queued up during the
//! previous commit; alone, a put waits for nothing but its own commit.
//!
//! Each caller gets its own outcome (a failed precondition skips only that put) and is
//! answered only after the transaction holding its put committed.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::{Key, Precondition, Result, Store, StoreError};

/// The most puts one transaction takes.
const MAX_BATCH: usize = 256;

struct Pending {
    key: Key,
    value: Value,
    precondition: Precondition,
    done: oneshot::Sender<Result<i64>>,
}

/// The sending side; the committing task ends when every clone is dropped.
#[derive(Clone)]
pub struct BatchedPuts {
    tx: mpsc::UnboundedSender<Pending>,
}

impl BatchedPuts {
    /// Starts the committing task on the current Tokio runtime.
    pub fn start(store: Arc<dyn Store>) -> BatchedPuts {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx));
        BatchedPuts { tx }
    }

    /// [`Store::put`], sharing a transaction with concurrent callers; returns once committed.
    pub async fn put(&self, key: Key, value: Value, precondition: Precondition) -> Result<i64> {
        let stopped = || StoreError::Unavailable("the batched writer has stopped".into());
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Pending {
                key,
                value,
                precondition,
                done,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Waits for the next write, then takes every other one already waiting, up to `max`: the
/// batch of a group commit. `None` once every sender is gone and nothing is left.
pub async fn next_batch<T>(rx: &mut mpsc::UnboundedReceiver<T>, max: usize) -> Option<Vec<T>> {
    let mut batch = vec![rx.recv().await?];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(batch) = next_batch(&mut rx, MAX_BATCH).await {
        let (items, waiters): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|pending| {
                (
                    (pending.key, pending.value, pending.precondition),
                    pending.done,
                )
            })
            .unzip();
        match store.put_each(&items).await {
            Ok(outcomes) => {
                for (waiter, outcome) in waiters.into_iter().zip(outcomes) {
                    // A caller that went away (its future dropped) needs no answer.
                    let _ = waiter.send(outcome);
                }
            }
            Err(err) => {
                tracing::warn!(writes = waiters.len(), %err, "batched store write failed");
                for waiter in waiters {
                    let _ = waiter.send(Err(err.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::SqliteStore;
    use serde_json::json;

    /// Many concurrent callers, some with stale revisions: each gets its own outcome, and the
    /// ones that matched are stored.
    #[tokio::test]
    async fn concurrent_puts_each_get_their_own_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("kensa.db"))
                .await
                .unwrap(),
        );
        let puts = BatchedPuts::start(store.clone());
        let mut revisions = Vec::new();
        for i in 0..50 {
            let key = Key::new("kensa.rounds", "default", format!("slot-{i}"));
            revisions.push(store.create(&key, &json!({"n": 0})).await.unwrap());
        }
        let mut tasks = Vec::new();
        for (i, revision) in revisions.iter().enumerate() {
            let puts = puts.clone();
            // Odd slots are asked with a revision that is no longer current.
            let precondition =
                Precondition::Revision(if i % 2 == 0 { *revision } else { revision - 1 });
            let key = Key::new("kensa.rounds", "default", format!("slot-{i}"));
            tasks.push(tokio::spawn(async move {
                puts.put(key, json!({"n": 1}), precondition).await
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let outcome = task.await.unwrap();
            let key = Key::new("kensa.rounds", "default", format!("slot-{i}"));
            let stored = store.get(&key).await.unwrap().unwrap();
            if i % 2 == 0 {
                assert_eq!(outcome, Ok(stored.revision), "slot {i}");
                assert_eq!(stored.value, json!({"n": 1}));
            } else {
                assert!(
                    matches!(outcome, Err(StoreError::Conflict(_))),
                    "slot {i}: {outcome:?}"
                );
                assert_eq!(stored.value, json!({"n": 0}));
            }
        }
    }
}
