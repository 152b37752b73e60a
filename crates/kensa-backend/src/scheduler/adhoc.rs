//! Ad hoc execution requests (`POST /checks/:name/execute`): the API queues a `kensa.adhoc`
//! record in the store, the ConfigView carries it to the scheduler, which runs it once and
//! deletes it. The store side of that — deleting handled records, and listing the queued ones
//! at startup and on each resync (the view hands out values without their keys) — runs in
//! [`store_worker`], so a slow or unavailable store never stalls the timer queue.

use std::sync::Arc;

use kensa_store::{Key, ListQuery, Precondition, Store, StoreError};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::api::special::ADHOC_KIND;

/// A queued request as `api::special` writes it, under `(namespace, request uuid)`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AdhocRecord {
    /// The check's name (in the record's namespace).
    pub check: String,
    /// When non-empty, they replace the check's subscriptions.
    pub subscriptions: Vec<String>,
    pub creator: String,
    pub reason: String,
    /// When it was queued (Unix seconds).
    pub issued: i64,
}

/// What the scheduler asks of the store.
#[derive(Debug)]
pub enum StoreCommand {
    /// Remove a handled record (absent already is fine).
    Delete(Key),
    /// List every queued record and send the keys back on the listings channel.
    ListAdhoc,
}

/// Runs the scheduler's store commands, one at a time, until the scheduler drops its sender
/// (then it finishes what is queued and returns). A listing waits for room on `listings`: the
/// scheduler task drains it in its select loop.
pub async fn store_worker(
    store: Arc<dyn Store>,
    mut commands: mpsc::Receiver<StoreCommand>,
    listings: mpsc::Sender<Vec<Key>>,
) {
    while let Some(command) = commands.recv().await {
        match command {
            StoreCommand::Delete(key) => match store.delete(&key, Precondition::None).await {
                Ok(()) | Err(StoreError::NotFound(_)) => {}
                Err(err) => {
                    // The record stays queued; the next resync asks for its deletion again.
                    tracing::warn!(%key, %err, "could not delete a handled ad hoc request");
                }
            },
            StoreCommand::ListAdhoc => match list_queued(store.as_ref()).await {
                Ok(keys) => {
                    if listings.send(keys).await.is_err() {
                        return;
                    }
                }
                Err(err) => tracing::warn!(%err, "could not list queued ad hoc requests"),
            },
        }
    }
}

async fn list_queued(store: &dyn Store) -> kensa_store::Result<Vec<Key>> {
    let mut keys = Vec::new();
    let mut query = ListQuery {
        kind: ADHOC_KIND.to_owned(),
        namespace: None,
        limit: 1000,
        ..Default::default()
    };
    loop {
        let page = store.list(&query).await?;
        keys.extend(page.items.into_iter().map(|item| item.key));
        match page.continue_token {
            Some(token) => query.continue_token = Some(token),
            None => return Ok(keys),
        }
    }
}
