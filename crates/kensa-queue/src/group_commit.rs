//! Group commit for the in-process queue's write-through: publishes (puts) and removals
//! (deletes) wait here for one store transaction shared with every other write that arrived
//! meanwhile, instead of one transaction each. Under load a batch holds as many writes as
//! queued up during the previous commit; alone, a write waits for nothing but its own commit.
//!
//! A caller is answered only after the transaction holding its write committed (or failed), so
//! the queue's write-through rules hold unchanged: a publish is durable before the message is
//! deliverable, and a removal is durable before `ack` returns.

use std::sync::Arc;

use kensa_store::{Key, Store, StoreError};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::QueueError;

/// The most writes one transaction takes.
const MAX_BATCH: usize = 512;

enum Write {
    Put(Key, Value),
    Delete(Key),
}

struct Pending {
    write: Write,
    done: oneshot::Sender<Result<(), QueueError>>,
}

/// The sending side; the committing task ends when every clone is dropped.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    tx: mpsc::UnboundedSender<Pending>,
}

impl GroupCommit {
    pub(crate) fn start(store: Arc<dyn Store>) -> GroupCommit {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx));
        GroupCommit { tx }
    }

    /// Stores `value` under `key` (unconditionally); returns once committed.
    pub(crate) async fn put(&self, key: Key, value: Value) -> Result<(), QueueError> {
        self.submit(Write::Put(key, value)).await
    }

    /// Deletes `key` if it exists; returns once committed.
    pub(crate) async fn delete(&self, key: Key) -> Result<(), QueueError> {
        self.submit(Write::Delete(key)).await
    }

    async fn submit(&self, write: Write) -> Result<(), QueueError> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Pending { write, done })
            .map_err(|_| QueueError::Internal("the queue's store writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| QueueError::Internal("the queue's store writer has stopped".into()))?
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(batch) = kensa_store::batched::next_batch(&mut rx, MAX_BATCH).await {
        commit(store.as_ref(), batch).await;
    }
}

/// Puts first, then deletes: a message's removal never shares a batch with its publish (a
/// message becomes deliverable, and so removable, only after its publish committed).
async fn commit(store: &dyn Store, batch: Vec<Pending>) {
    let mut puts = Vec::new();
    let mut deletes = Vec::new();
    let mut put_waiters = Vec::new();
    let mut delete_waiters = Vec::new();
    for pending in batch {
        match pending.write {
            Write::Put(key, value) => {
                puts.push((key, value));
                put_waiters.push(pending.done);
            }
            Write::Delete(key) => {
                deletes.push(key);
                delete_waiters.push(pending.done);
            }
        }
    }
    if !puts.is_empty() {
        let result = store.put_all(&puts).await;
        answer(put_waiters, result);
    }
    if !deletes.is_empty() {
        let result = store.delete_all(&deletes).await.map(|_| ());
        answer(delete_waiters, result);
    }
}

fn answer(waiters: Vec<oneshot::Sender<Result<(), QueueError>>>, result: Result<(), StoreError>) {
    if let Err(err) = &result {
        tracing::warn!(writes = waiters.len(), "queue store write failed: {err}");
    }
    let result = result.map_err(QueueError::from);
    for waiter in waiters {
        // A caller that went away (its future dropped) needs no answer.
        let _ = waiter.send(result.clone());
    }
}
