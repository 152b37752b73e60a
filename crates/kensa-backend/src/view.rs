//! `ConfigView`: an in-memory copy of the configuration kinds (users, RBAC, API keys,
//! namespaces, and later handlers, filters, pipelines, silences…), kept current by following the
//! store's change feed. Hot paths (authentication, RBAC, pipelines) read it instead of the
//! store, so a request or an event never costs a configuration query.
//!
//! Consistency: after an API write returns revision R, the API calls [`ConfigView::wait_for`]
//! (R) before answering, so a client reads its own writes through the view. Writes made on
//! another backend arrive as fast as the store's change notification (well under a second).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kensa_store::{ChangeOp, Key, ListQuery, Store};
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

type Entries = BTreeMap<(String, String), Arc<Value>>;

pub struct ConfigView {
    /// Per kind, `(namespace, name) → value`. Written only by the follower task; the lock is
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
                    entries.insert((item.key.namespace, item.key.name), Arc::new(item.value));
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

    /// Follows the change feed until `shutdown`. Store errors are logged and retried.
    pub async fn follow(self: Arc<Self>, store: Arc<dyn Store>, shutdown: CancellationToken) {
        loop {
            let after = *self.applied.borrow();
            let changes = tokio::select! {
                _ = shutdown.cancelled() => return,
                changes = store.changes_since(after, 1000) => changes,
            };
            match changes {
                Ok(changes) if changes.is_empty() => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = store.wait_for_change(after) => {}
                    }
                }
                Ok(changes) => {
                    if changes[0].revision != after + 1 {
                        // The feed was pruned past us (or we fell far behind): start over.
                        tracing::warn!(
                            after,
                            first = changes[0].revision,
                            "config view fell behind the change feed; reloading"
                        );
                        if let Err(err) = self.reload(store.as_ref()).await {
                            tracing::error!(%err, "config view reload failed");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        continue;
                    }
                    let last = changes.last().map(|c| c.revision).unwrap_or(after);
                    let mut changed_keys = Vec::new();
                    {
                        let mut entries = self.entries.write().expect("view lock poisoned");
                        for change in changes {
                            if !VIEW_KINDS.contains(&change.key.kind.as_str()) {
                                continue;
                            }
                            changed_keys.push(change.key.clone());
                            let kind = entries.entry(change.key.kind).or_default();
                            let slot = (change.key.namespace, change.key.name);
                            match (change.op, change.value) {
                                (ChangeOp::Put, Some(value)) => {
                                    kind.insert(slot, Arc::new(value));
                                }
                                _ => {
                                    kind.remove(&slot);
                                }
                            }
                        }
                    }
                    self.applied.send_replace(last);
                    for key in changed_keys {
                        // No subscriber is fine: nobody needs to react.
                        let _ = self.changed.send(Arc::new(key));
                    }
                }
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

    /// Waits (at most a few seconds) until the view reflects `revision`.
    pub async fn wait_for(&self, revision: i64) {
        let mut applied = self.applied.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), applied.wait_for(|r| *r >= revision))
            .await;
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        let entries = self.entries.read().expect("view lock poisoned");
        entries
            .get(&key.kind)?
            .get(&(key.namespace.clone(), key.name.clone()))
            .cloned()
    }

    /// Every value of `kind`, in `namespace` if given, ordered by (namespace, name).
    pub fn list(&self, kind: &str, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let entries = self.entries.read().expect("view lock poisoned");
        let Some(kind) = entries.get(kind) else {
            return Vec::new();
        };
        kind.iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|wanted| wanted == ns))
            .map(|(_, value)| value.clone())
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
        let value = self.get(&Key::new(kind, namespace, name))?;
        match T::deserialize(value.as_ref()) {
            Ok(decoded) => Some(decoded),
            Err(err) => {
                tracing::warn!(kind, namespace, name, %err, "stored resource does not decode");
                None
            }
        }
    }

    /// Every resource of `kind` in `namespace` (all namespaces when `None`), decoded.
    pub fn decode_all<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        namespace: Option<&str>,
    ) -> Vec<T> {
        self.list(kind, namespace)
            .iter()
            .filter_map(|value| T::deserialize(value.as_ref()).ok())
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
