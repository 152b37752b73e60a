//! Check TTLs (reference §3.6 step 6): an event whose check has `ttl > 0` must be followed by
//! another result within `ttl` seconds, else the backend records a failure ("Last check
//! execution was N seconds ago", status 1) — and again every `ttl` while results stay away.
//!
//! Deadlines live in memory, keyed by event, and fire into the event's shard (so the failure is
//! merged by the key's one writer). After a restart they are rebuilt from the stored events,
//! each given one full `ttl` from startup: a check that stopped reporting while the backend was
//! down still alerts, and one that reports normally never gets a false alert.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kensa_store::{Key, ListQuery, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Eventd, Submission};

#[derive(Default)]
struct Deadlines {
    /// `(due unix ms, key)`, earliest first.
    queue: BTreeSet<(i64, Key)>,
    by_key: HashMap<Key, i64>,
}

/// Shared handle: arm and disarm deadlines. Memory grows with the number of events that have
/// a TTL, never with the event rate.
#[derive(Clone, Default)]
pub struct Ttl {
    deadlines: Arc<Mutex<Deadlines>>,
    changed: Arc<Notify>,
}

impl Ttl {
    /// (Re)arms `key` to expire `ttl_seconds` from now.
    pub fn arm(&self, key: Key, ttl_seconds: i64) {
        let due = crate::api::now_millis() + ttl_seconds * 1000;
        let mut deadlines = self.deadlines.lock().expect("ttl lock poisoned");
        if let Some(previous) = deadlines.by_key.insert(key.clone(), due) {
            deadlines.queue.remove(&(previous, key.clone()));
        }
        deadlines.queue.insert((due, key));
        drop(deadlines);
        self.changed.notify_one();
    }

    pub fn disarm(&self, key: &Key) {
        let mut deadlines = self.deadlines.lock().expect("ttl lock poisoned");
        if let Some(previous) = deadlines.by_key.remove(key) {
            deadlines.queue.remove(&(previous, key.clone()));
        }
    }

    /// Removes and returns the keys due at `now`, or the time until the next one.
    fn take_due(&self, now: i64) -> (Vec<Key>, Option<Duration>) {
        let mut deadlines = self.deadlines.lock().expect("ttl lock poisoned");
        let mut due = Vec::new();
        while let Some((at, _)) = deadlines.queue.first() {
            if *at > now {
                break;
            }
            let (_, key) = deadlines.queue.pop_first().expect("checked above");
            deadlines.by_key.remove(&key);
            due.push(key);
        }
        let next = deadlines
            .queue
            .first()
            .map(|(at, _)| Duration::from_millis((at - now).max(0) as u64));
        (due, next)
    }
}

pub(super) async fn run(eventd: Eventd, store: Arc<dyn Store>, shutdown: CancellationToken) {
    let ttl = eventd.ttl.clone();
    if let Err(err) = rebuild(&ttl, store.as_ref()).await {
        tracing::error!(%err, "could not rebuild check TTL deadlines from the store");
    }
    loop {
        let (due, next) = ttl.take_due(crate::api::now_millis());
        for key in due {
            if eventd.submit(Submission::ttl_expired(key)).await.is_err() {
                return;
            }
        }
        let wait = next.unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ttl.changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Arms every stored event that has a TTL, one full TTL from now.
async fn rebuild(ttl: &Ttl, store: &dyn Store) -> kensa_store::Result<()> {
    let mut query = ListQuery {
        kind: "events".into(),
        namespace: None,
        limit: 1000,
        ..Default::default()
    };
    let mut armed = 0;
    loop {
        let page = store.list(&query).await?;
        for item in page.items {
            let seconds = item.value["check"]["ttl"].as_i64().unwrap_or(0);
            if seconds > 0 && item.value["check"]["metadata"]["name"] != "keepalive" {
                ttl.arm(item.key, seconds);
                armed += 1;
            }
        }
        match page.continue_token {
            Some(token) => query.continue_token = Some(token),
            None => break,
        }
    }
    if armed > 0 {
        tracing::info!(armed, "rebuilt check TTL deadlines");
    }
    Ok(())
}
