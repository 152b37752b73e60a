//! The event writer: commits the shards' writes in batches (one store transaction each, so the
//! embedded store sustains thousands of events per second) and, only after a commit, runs the
//! completions — acknowledgements to agents (one `ack` frame per session per batch), API
//! replies, TTL timers and the hand-off to the pipelines. Completions run on a second task, in
//! commit order, while the next batch commits.
//!
//! A failed commit acknowledges nothing: agents re-send from their outbox, the API answers an
//! error, and the shards forget the state they had assumed for those keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kensa_store::{Key, Precondition, Store};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{AckBatch, AckTarget, Deps, EventError, Origin, ShardCache, Write, WriteItem};
use crate::dispatch::SessionId;

/// Committed batches waiting for their completions. One: while it is completed the next
/// batch commits, and if completing falls behind (pipelines pushing back) commits wait.
const COMPLETIONS_QUEUE: usize = 1;

pub(super) async fn run(
    mut rx: mpsc::Receiver<WriteItem>,
    deps: Arc<Deps>,
    caches: Vec<Arc<Mutex<ShardCache>>>,
    batch_writes: usize,
) {
    // Completions run on their own task, in commit order, so that acknowledging and handing
    // off one batch overlaps with committing the next instead of adding to it.
    let (committed_tx, mut committed_rx) = mpsc::channel::<Committed>(COMPLETIONS_QUEUE);
    let completer = tokio::spawn({
        let deps = deps.clone();
        async move {
            while let Some(committed) = committed_rx.recv().await {
                complete(&deps, committed.items).await;
                // The written values are dropped here, off the commit path.
                drop(committed.written);
            }
        }
    });
    let mut batch: Vec<WriteItem> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut writes = first.writes.len();
        batch.push(first);
        while writes < batch_writes {
            match rx.try_recv() {
                Ok(item) => {
                    writes += item.writes.len();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        if let Some(committed) = commit(&deps, &caches, std::mem::take(&mut batch)).await {
            if committed_tx.send(committed).await.is_err() {
                break;
            }
        }
    }
    // Every committed batch is completed before the writer counts as stopped.
    drop(committed_tx);
    let _ = completer.await;
}

/// A batch that is in the store, for the completer.
struct Committed {
    items: Vec<WriteItem>,
    written: Vec<(Key, Value)>,
}

/// Stores the batch in one transaction. Committed: the batch, for its completions; failed:
/// the items are failed here (nothing is acknowledged) and `None` is returned.
async fn commit(
    deps: &Deps,
    caches: &[Arc<Mutex<ShardCache>>],
    mut batch: Vec<WriteItem>,
) -> Option<Committed> {
    // Moved, not copied: nothing needs the written values after the commit.
    let all: Vec<Write> = batch
        .iter_mut()
        .flat_map(|item| std::mem::take(&mut item.writes))
        .collect();
    let started = Instant::now();
    let (result, all) = store_writes(&*deps.store, all).await;
    deps.telemetry
        .event_batch_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            deps.telemetry.event_batches.inc();
            Some(Committed {
                items: batch,
                written: all,
            })
        }
        Err(err) => {
            tracing::error!(%err, writes = all.len(), "storing events failed; not acknowledged");
            for item in batch {
                let mut cache = caches[item.shard].lock().expect("shard cache poisoned");
                if let Some(key) = &item.cache_key {
                    cache.previous.remove(key);
                }
                if let Some(id) = item.completion.event_id {
                    cache.recent_set.remove(&id);
                }
                drop(cache);
                if let Origin::Api(reply) = item.completion.origin {
                    let _ = reply.send(Err(EventError::Unavailable(err.to_string())));
                }
            }
            None
        }
    }
}

/// Stores `writes` in one transaction and hands them back, without their preconditions, to
/// be dropped off the commit path. Unconditional batches (nearly all of them) take the plain
/// multi-row write; a conditional write whose precondition fails is skipped and logged, the
/// others stand (see [`Write`]).
async fn store_writes(
    store: &dyn Store,
    writes: Vec<Write>,
) -> (kensa_store::Result<()>, Vec<(Key, Value)>) {
    let conditional = writes.iter().any(|(_, _, p)| *p != Precondition::None);
    let result = if writes.is_empty() {
        // Items whose event was written with compare-and-set may bring nothing more to write.
        Ok(())
    } else if conditional {
        store.put_each(&writes).await.map(|outcomes| {
            for (outcome, (key, _, _)) in outcomes.into_iter().zip(&writes) {
                if let Err(err) = outcome {
                    tracing::debug!(%key, %err, "conditional write skipped: changed meanwhile");
                }
            }
        })
    } else {
        let plain: Vec<(Key, Value)> = writes.into_iter().map(|(k, v, _)| (k, v)).collect();
        let result = store.put_all(&plain).await;
        return (result, plain);
    };
    (result, writes.into_iter().map(|(k, v, _)| (k, v)).collect())
}

async fn complete(deps: &Deps, batch: Vec<WriteItem>) {
    let mut acks: HashMap<SessionId, (AckTarget, Vec<uuid::Uuid>)> = HashMap::new();
    let mut processed = Vec::with_capacity(batch.len());
    for item in batch {
        let completion = item.completion;
        match completion.origin {
            Origin::Agent(target) => {
                if let Some(id) = completion.event_id {
                    acks.entry(target.session)
                        .or_insert_with(|| (target.clone(), Vec::new()))
                        .1
                        .push(id);
                }
            }
            Origin::Api(reply) => {
                let _ = reply.send(Ok(()));
            }
            Origin::Internal => {}
        }
        if let Some((key, ttl)) = completion.ttl {
            if ttl > 0 {
                deps.ttl.arm(key, ttl);
            } else {
                deps.ttl.disarm(&key);
            }
        }
        for silence in completion.expire_silences {
            let store = deps.store.clone();
            tokio::spawn(async move {
                match store.delete(&silence, Precondition::None).await {
                    Ok(()) | Err(kensa_store::StoreError::NotFound(_)) => {}
                    Err(err) => tracing::warn!(%err, %silence, "could not expire a silence"),
                }
            });
        }
        processed.extend(completion.processed);
    }
    for (_, (target, ids)) in acks {
        // A full ack queue means the session is stuck writing; the agent re-sends later and
        // the duplicate is recognized by its id.
        let _ = target.acks.try_send(AckBatch {
            ids,
            ..AckBatch::default()
        });
    }
    for event in processed {
        // Waiting here is the back-pressure from slow pipelines to the shards.
        if deps.pipeline.send(event).await.is_err() {
            return;
        }
    }
}
