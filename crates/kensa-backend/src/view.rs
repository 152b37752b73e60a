//! `ConfigView`: an in-memory copy of the configuration kinds (users, RBAC, API keys,
//! namespaces, and later handlers, filters, pipelines, silences…), kept current by following the
//! store's change feed. Hot paths (authentication, RBAC, pipelines) read it instead of the
//! store, so a request or an event never costs a configuration query.
//!
//! Consistency: after an API write returns revision R, the API calls [`ConfigView::wait_for`]
//! (R) before answering, so a client reads its own writes through the view. Writes made on
//! another backend arrive as fast as the store's change notification (well under a second).

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use kensa_store::{ChangeOp, Key, ListQuery, RawChange, Store};
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// Kinds the view holds: all configuration, plus entities (the scheduler matches proxy
/// entities and agent sessions follow their entity's configuration). Events are state, written
/// at event rate, and are never cached here.
pub const VIEW_KINDS: &[&str] = &[
    "namespaces",
    "users",
    "apikeys",
    "roles",
    "rolebindings",
    "clusterroles",
    "clusterrolebindings",
    "checks",
    "hooks",
    "assets",
    "handlers",
    "filters",
    "mutators",
    "pipelines",
    "silenced",
    "entities",
    // Ad hoc execution requests, queued by the API for the scheduler.
    "kensa.adhoc",
];

/// How many changed keys the change broadcast buffers; a subscriber that lags further is told
/// so (`RecvError::Lagged`) and must resynchronize from the view.
const CHANGE_BROADCAST_CAPACITY: usize = 16_384;

/// One resource of the view: its value and, once someone asked for it, its typed form.
struct Entry {
    value: Arc<Value>,
    /// The store revision of the write the value came from, for compare-and-set writes based
    /// on what the view shows ([`ConfigView::get_stored`]).
    revision: i64,
    /// The typed form [`ConfigView::decoded`] made of `value` (each kind is decoded to one
    /// type), so hot paths (pipelines, eventd) do not decode the same JSON once per event. A
    /// change of the resource replaces the whole entry, so it is never stale.
    typed: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl Entry {
    fn new(value: Value, revision: i64) -> Arc<Entry> {
        Arc::new(Entry {
            value: Arc::new(value),
            revision,
            typed: OnceLock::new(),
        })
    }
}

/// One kind: namespace → name → entry, so one namespace is a lookup and every key is found
/// by `&str` without building owned keys; iteration is in (namespace, name) order.
type Entries = BTreeMap<String, BTreeMap<String, Arc<Entry>>>;

pub struct ConfigView {
    /// Per kind, namespace → name → entry. Written only by the follower task; the lock is
    /// never held across an await.
    entries: RwLock<HashMap<String, Entries>>,
    /// The store revision the view reflects; waiters subscribe to it.
    applied: watch::Sender<i64>,
    /// Every key the follower applied, after it is visible in `entries` (services that react
    /// to configuration changes — the scheduler, agent sessions — subscribe).
    changed: broadcast::Sender<Arc<Key>>,
}

impl ConfigView {
    /// Loads every view kind from the store. Call [`ConfigView::follow`] to keep it current.
    pub async fn load(store: &dyn Store) -> kensa_store::Result<Arc<ConfigView>> {
        let view = Arc::new(ConfigView {
            entries: RwLock::new(HashMap::new()),
            applied: watch::channel(0).0,
            changed: broadcast::channel(CHANGE_BROADCAST_CAPACITY).0,
        });
        view.reload(store).await?;
        Ok(view)
    }

    async fn reload(&self, store: &dyn Store) -> kensa_store::Result<()> {
        // The revision is read before listing: replaying changes after it onto the listed state
        // is idempotent, so nothing between the two reads is lost.
        let revision = store.revision().await?;
        let mut fresh: HashMap<String, Entries> = HashMap::new();
        for kind in VIEW_KINDS {
            let entries = fresh.entry((*kind).to_owned()).or_default();
            let mut query = ListQuery {
                kind: (*kind).to_owned(),
                namespace: None,
                limit: 1000,
                ..Default::default()
            };
            loop {
                let page = store.list(&query).await?;
                for item in page.items {
                    entries
                        .entry(item.key.namespace)
                        .or_default()
                        .insert(item.key.name, Entry::new(item.value, item.revision));
                }
                match page.continue_token {
                    Some(token) => query.continue_token = Some(token),
                    None => break,
                }
            }
        }
        *self.entries.write().expect("view lock poisoned") = fresh;
        self.applied.send_replace(revision);
        Ok(())
    }

    /// Follows the change feed until `shutdown`. Store errors are logged and retried. Only
    /// the view's kinds are read: events, written at event rate, are skipped inside the store.
    pub async fn follow(self: Arc<Self>, store: Arc<dyn Store>, shutdown: CancellationToken) {
        loop {
            let after = *self.applied.borrow();
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                read = store.changes_of_kinds(after, VIEW_KINDS, 1000) => read,
            };
            match read {
                Ok(read) if read.pruned => {
                    // The feed was pruned past us (or we fell far behind): start over.
                    tracing::warn!(after, "config view fell behind the change feed; reloading");
                    if let Err(err) = self.reload(store.as_ref()).await {
                        tracing::error!(%err, "config view reload failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Ok(read) if read.through == after => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = store.wait_for_change(after) => {}
                    }
                }
                Ok(read) => self.apply(read.changes, read.through),
                Err(err) => {
                    tracing::warn!(%err, "config view could not read the change feed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Applies changes of the view's kinds, then records that the view reflects `through`
    /// and tells subscribers which keys changed.
    fn apply(&self, changes: Vec<RawChange>, through: i64) {
        // Parsed before the lock is taken. A stored value that is not JSON (never written by
        // the API) removes the entry rather than keeping a stale one.
        let parsed: Vec<(Key, Option<Value>, i64)> = changes
            .into_iter()
            .map(|change| {
                let value = match change.op {
                    ChangeOp::Put => change.value.and_then(|text| {
                        serde_json::from_str(&text)
                            .map_err(|err| {
                                tracing::warn!(key = %change.key, %err, "stored value is not JSON");
                            })
                            .ok()
                    }),
                    ChangeOp::Delete => None,
                };
                (change.key, value, change.revision)
            })
            .collect();
        let mut changed_keys = Vec::with_capacity(parsed.len());
        {
            let mut entries = self.entries.write().expect("view lock poisoned");
            for (key, value, revision) in parsed {
                changed_keys.push(key.clone());
                let kind = entries.entry(key.kind).or_default();
                match value {
                    Some(value) => {
                        kind.entry(key.namespace)
                            .or_default()
                            .insert(key.name, Entry::new(value, revision));
                    }
                    None => {
                        if let Some(names) = kind.get_mut(&key.namespace) {
                            names.remove(&key.name);
                            if names.is_empty() {
                                kind.remove(&key.namespace);
                            }
                        }
                    }
                }
            }
        }
        self.applied.send_replace(through);
        for key in changed_keys {
            // No subscriber is fine: nobody needs to react.
            let _ = self.changed.send(Arc::new(key));
        }
    }

    /// Waits (at most a few seconds) until the view reflects `revision`.
    pub async fn wait_for(&self, revision: i64) {
        let mut applied = self.applied.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), applied.wait_for(|r| *r >= revision))
            .await;
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        self.entry(&key.kind, &key.namespace, &key.name)
            .map(|entry| entry.value.clone())
    }

    /// The value and the store revision it was written at: a writer that derives a new value
    /// from the view's writes it with `Precondition::Revision(revision)`, so a change the view
    /// has not applied yet (made through another backend) is never overwritten.
    pub fn get_stored(&self, key: &Key) -> Option<(Arc<Value>, i64)> {
        self.entry(&key.kind, &key.namespace, &key.name)
            .map(|entry| (entry.value.clone(), entry.revision))
    }

    fn entry(&self, kind: &str, namespace: &str, name: &str) -> Option<Arc<Entry>> {
        let entries = self.entries.read().expect("view lock poisoned");
        entries.get(kind)?.get(namespace)?.get(name).cloned()
    }

    fn entries_of(&self, kind: &str, namespace: Option<&str>) -> Vec<Arc<Entry>> {
        let entries = self.entries.read().expect("view lock poisoned");
        let Some(kind) = entries.get(kind) else {
            return Vec::new();
        };
        match namespace {
            Some(namespace) => kind
                .get(namespace)
                .map(|names| names.values().cloned().collect())
                .unwrap_or_default(),
            None => kind
                .values()
                .flat_map(|names| names.values().cloned())
                .collect(),
        }
    }

    /// Every value of `kind`, in `namespace` if given, ordered by (namespace, name).
    pub fn list(&self, kind: &str, namespace: Option<&str>) -> Vec<Arc<Value>> {
        self.entries_of(kind, namespace)
            .into_iter()
            .map(|entry| entry.value.clone())
            .collect()
    }

    /// Decodes one resource into its typed form (`None` when absent or undecodable — the API
    /// validated it on the way in, so the latter only happens after a format change).
    pub fn decode<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<T> {
        let entry = self.entry(kind, namespace, name)?;
        decode_logged(&entry.value, kind, namespace, name)
    }

    /// Like [`ConfigView::decode`], shared: the typed form is decoded once per version of the
    /// resource and then handed out again, so per-event lookups (handlers, filters,
    /// silences) cost no JSON decoding.
    pub fn decoded<T>(&self, kind: &str, namespace: &str, name: &str) -> Option<Arc<T>>
    where
        T: serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        let entry = self.entry(kind, namespace, name)?;
        typed(&entry, kind, namespace, name)
    }

    /// Every resource of `kind` in `namespace` (all namespaces when `None`), decoded.
    pub fn decode_all<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        namespace: Option<&str>,
    ) -> Vec<T> {
        self.entries_of(kind, namespace)
            .iter()
            .filter_map(|entry| T::deserialize(entry.value.as_ref()).ok())
            .collect()
    }

    /// [`ConfigView::decode_all`], shared like [`ConfigView::decoded`]. Values that do not
    /// decode are skipped.
    pub fn decoded_all<T>(&self, kind: &str, namespace: Option<&str>) -> Vec<Arc<T>>
    where
        T: serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        self.entries_of(kind, namespace)
            .iter()
            .filter_map(|entry| typed_quiet(entry))
            .collect()
    }

    /// Keys the view applies from now on (see `changed`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Key>> {
        self.changed.subscribe()
    }

    /// The revision the view reflects.
    pub fn revision(&self) -> i64 {
        *self.applied.borrow()
    }
}

/// Decodes `value` as `T`, logging (with the resource's key) when it does not decode.
fn decode_logged<T: serde::de::DeserializeOwned>(
    value: &Value,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Option<T> {
    match T::deserialize(value) {
        Ok(decoded) => Some(decoded),
        Err(err) => {
            tracing::warn!(kind, namespace, name, %err, "stored resource does not decode");
            None
        }
    }
}

/// The entry's typed form as `T`: the cached one, else decoded (and cached unless another type
/// got there first, which no caller does: each kind has one type).
fn typed<T>(entry: &Entry, kind: &str, namespace: &str, name: &str) -> Option<Arc<T>>
where
    T: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    cached_or(entry, || decode_logged(&entry.value, kind, namespace, name))
}

/// [`typed`] without the log line (for listings, which skip what does not decode).
fn typed_quiet<T>(entry: &Entry) -> Option<Arc<T>>
where
    T: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    cached_or(entry, || T::deserialize(entry.value.as_ref()).ok())
}

fn cached_or<T>(entry: &Entry, decode: impl FnOnce() -> Option<T>) -> Option<Arc<T>>
where
    T: Send + Sync + 'static,
{
    if let Some(cached) = entry.typed.get() {
        if let Ok(typed) = Arc::clone(cached).downcast::<T>() {
            return Some(typed);
        }
        return decode().map(Arc::new);
    }
    // A value that does not decode is not cached: it is retried (and logged) each time, as
    // before there was a cache.
    let decoded = Arc::new(decode()?);
    // Two threads may decode at once; the first one's result is kept, both are equal.
    let _ = entry.typed.set(decoded.clone());
    Some(decoded)
}

impl crate::auth::rbac::RbacSource for ConfigView {
    fn cluster_role_bindings(&self) -> Vec<Arc<Value>> {
        self.list("clusterrolebindings", Some(""))
    }
    fn role_bindings(&self, namespace: &str) -> Vec<Arc<Value>> {
        self.list("rolebindings", Some(namespace))
    }
    fn cluster_role(&self, name: &str) -> Option<Arc<Value>> {
        self.get(&Key::new("clusterroles", "", name))
    }
    fn role(&self, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.get(&Key::new("roles", namespace, name))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kensa_store::sqlite::SqliteStore;
    use kensa_store::{Key, Precondition, Store};
    use kensa_types::resources::handler::Handler;
    use serde_json::json;
    use tokio::sync::broadcast::error::TryRecvError;
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn handler(command: &str) -> Value {
        json!({"metadata": {"name": "h", "namespace": "default"}, "type": "pipe",
               "command": command})
    }

    /// A view following a fresh in-memory store until the returned token is cancelled.
    async fn following() -> (Arc<dyn Store>, Arc<ConfigView>, CancellationToken) {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await.unwrap());
        let view = ConfigView::load(store.as_ref()).await.unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(view.clone().follow(store.clone(), stop.clone()));
        (store, view, stop)
    }

    async fn caught_up(store: &dyn Store, view: &ConfigView) {
        let head = store.revision().await.unwrap();
        view.wait_for(head).await;
        assert_eq!(view.revision(), head, "the view reflects the store's head");
    }

    /// Events are skipped, yet the view's revision still reaches the head (API writes wait on
    /// it), configuration changes are applied and announced, and events are not.
    #[tokio::test]
    async fn follows_configuration_and_moves_past_events() {
        let (store, view, stop) = following().await;
        let mut changed = view.subscribe();
        let key = Key::new("handlers", "default", "h");
        store
            .put(&key, &handler("a"), Precondition::None)
            .await
            .unwrap();
        let events: Vec<(Key, Value)> = (0..50)
            .map(|index| {
                let event = Key::new("events", "default", format!("e/{index}"));
                (event, json!({"check": {"status": index}}))
            })
            .collect();
        store.put_all(&events).await.unwrap();
        caught_up(store.as_ref(), &view).await;
        assert_eq!(view.get(&key).as_deref(), Some(&handler("a")));
        assert_eq!(view.get(&events[0].0), None, "events are not kept");
        assert_eq!(*changed.try_recv().unwrap(), key);
        assert!(matches!(changed.try_recv(), Err(TryRecvError::Empty)));

        store.delete(&key, Precondition::None).await.unwrap();
        store.put_all(&events).await.unwrap();
        caught_up(store.as_ref(), &view).await;
        assert_eq!(view.get(&key), None);
        assert_eq!(*changed.try_recv().unwrap(), key);
        assert!(matches!(changed.try_recv(), Err(TryRecvError::Empty)));
        stop.cancel();
    }

    /// A typed form is decoded once per version of a resource and shared; a new version is
    /// decoded anew.
    #[tokio::test]
    async fn decoded_forms_are_shared_until_the_resource_changes() {
        let (store, view, stop) = following().await;
        let key = Key::new("handlers", "default", "h");
        store
            .put(&key, &handler("a"), Precondition::None)
            .await
            .unwrap();
        caught_up(store.as_ref(), &view).await;
        let first: Arc<Handler> = view.decoded("handlers", "default", "h").unwrap();
        let again: Arc<Handler> = view.decoded("handlers", "default", "h").unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first.command, "a");
        assert_eq!(
            view.decode::<Handler>("handlers", "default", "h").as_ref(),
            Some(first.as_ref())
        );
        assert_eq!(
            view.decoded_all::<Handler>("handlers", Some("default"))
                .len(),
            1
        );
        assert!(view
            .decoded_all::<Handler>("handlers", Some("other"))
            .is_empty());

        store
            .put(&key, &handler("b"), Precondition::None)
            .await
            .unwrap();
        caught_up(store.as_ref(), &view).await;
        let changed: Arc<Handler> = view.decoded("handlers", "default", "h").unwrap();
        assert_eq!(changed.command, "b");
        assert_eq!(first.command, "a", "holders of the old version keep it");
        assert_eq!(
            view.decoded::<Handler>("handlers", "default", "missing"),
            None
        );
        stop.cancel();
    }

    /// A view whose next change was pruned from the feed reloads and catches up.
    #[tokio::test]
    async fn reloads_when_the_feed_was_pruned_past_it() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await.unwrap());
        let view = ConfigView::load(store.as_ref()).await.unwrap();
        let key = Key::new("handlers", "default", "h");
        store
            .put(&key, &handler("a"), Precondition::None)
            .await
            .unwrap();
        store
            .put(
                &Key::new("events", "default", "e/1"),
                &json!({}),
                Precondition::None,
            )
            .await
            .unwrap();
        let head = store.revision().await.unwrap();
        store.prune_changes(head).await.unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(view.clone().follow(store.clone(), stop.clone()));
        tokio::time::timeout(Duration::from_secs(10), async {
            while view.revision() < head {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the view reloads");
        assert_eq!(view.get(&key).as_deref(), Some(&handler("a")));
        stop.cancel();
    }
}
