//! Cluster membership: which backends share this store, and which of them are alive.
//!
//! Every backend is a **member** with an id made at start (a UUID, so a restarted backend is a
//! new member) and a record in the store (`kensa.members`, cluster-wide) that it rewrites
//! every [`HEARTBEAT_INTERVAL`]. Every member lists those records on the same tick. A member
//! is **dead** when its record's revision has not moved for [`DEAD_AFTER`], measured on this
//! backend's clock between two listings it made itself — so clock skew between hosts does not
//! matter, and a backend that cannot reach the store never concludes that the others died
//! (it stops observing instead). Only on the first sight of a record (at start) is its
//! wall-clock heartbeat used: a record already older than [`DEAD_AFTER`] is dead at once.
//! A member that stops gracefully deletes its record, so the others take over at once; a dead
//! member's record is deleted [`FORGET_AFTER`] after its last heartbeat.
//!
//! The store connection is **lost** when heartbeat writes fail with errors for
//! [`STORE_LOST_AFTER`], or make no progress at all (time out) for [`STORE_LOST_WHEN_HUNG`]:
//! `/health` then reports the backend unhealthy, and agent sessions are shed until the store is
//! back (see `server.rs`). A store that is merely slow — a backend under heavy load — is not
//! lost: shedding thousands of agents because writes queue behind event batches would turn load
//! into a reconnect storm. An embedded store ([`StoreLink::Embedded`]) is never lost: it is
//! part of the process, and shedding would not help.
//!
//! What membership is for: keepalive ownership (`keepalived.rs` takes over the agents of dead
//! members) and `/health`. There is no leader and no consensus: exclusive decisions (who takes
//! over an agent) are compare-and-set writes on the records they concern.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kensa_store::{Key, ListQuery, Precondition, Store};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Store kind of member records, cluster-wide (namespace `""`), named by member id.
pub const MEMBERS_KIND: &str = "kensa.members";

/// How often a member rewrites its record and lists the others.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A member whose record did not change for this long is dead (three missed heartbeats).
pub const DEAD_AFTER: Duration = Duration::from_secs(3);

/// With no successful heartbeat write for this long, this backend has lost its store. Equal to
/// [`DEAD_AFTER`]: by the time the others consider this backend dead it has stopped serving
/// agents, so they reconnect elsewhere within the grace the others give them.
pub const STORE_LOST_AFTER: Duration = DEAD_AFTER;

/// With heartbeat writes timing out (no error, no progress) for this long, the store is lost.
pub const STORE_LOST_WHEN_HUNG: Duration = Duration::from_secs(15);

/// How this backend reaches its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreLink {
    /// In the process (SQLite): never "lost".
    Embedded,
    /// Over the network, shared with other backends (PostgreSQL).
    Network,
}

/// Whether the store counts as reachable, `silent` after the last successful heartbeat write
/// (see the module comment).
fn store_reachable(link: StoreLink, last_write_error: bool, silent: Duration) -> bool {
    match link {
        StoreLink::Embedded => true,
        StoreLink::Network if last_write_error => silent < STORE_LOST_AFTER,
        StoreLink::Network => silent < STORE_LOST_WHEN_HUNG,
    }
}

/// The record of a member dead for this long is deleted.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);

/// Longest wait for one store call of the membership loop (a hung connection must not stall
/// the heartbeat and, with it, the store-lost decision).
const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Who this backend is, as the other members see it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: Uuid,
    /// Human-readable: `<hostname>:<api port>` unless configured otherwise.
    pub name: String,
    pub api_url: String,
    pub agent_url: String,
    /// Unix milliseconds.
    pub started_ms: i64,
}

impl Identity {
    /// A new member id for a backend serving the API and agents at these URLs.
    pub fn new(name: String, api_url: String, agent_url: String) -> Identity {
        Identity {
            id: Uuid::new_v4(),
            name,
            api_url,
            agent_url,
            started_ms: crate::api::now_millis(),
        }
    }

    /// The member id as Sensu's numeric `MemberID` (the first 8 bytes of the UUID).
    pub fn numeric_id(&self) -> u64 {
        numeric_id(&self.id.to_string())
    }
}

/// The first 8 bytes of a member UUID as a number (0 for something that is not a UUID).
pub fn numeric_id(id: &str) -> u64 {
    Uuid::parse_str(id)
        .map(|uuid| {
            let bytes = uuid.as_bytes();
            u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"))
        })
        .unwrap_or(0)
}

/// The default member name: the host name and the API port.
pub fn default_name(api_port: u16) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kensa-backend".to_owned());
    format!("{host}:{api_port}")
}

/// One member as this backend last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub id: String,
    pub name: String,
    pub api_url: String,
    pub agent_url: String,
    pub started_ms: i64,
    /// Wall-clock time of its last heartbeat, as it wrote it (unix milliseconds).
    pub heartbeat_ms: i64,
    /// For this backend itself: it can write to the store. For the others: their record
    /// changed within [`DEAD_AFTER`].
    pub alive: bool,
    /// How long this backend has not seen the record change (zero for itself).
    pub silent_for: Duration,
}

/// What the membership loop last concluded, replaced as a whole every heartbeat.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Every member this backend sees, itself included, by name.
    pub members: Vec<Member>,
    /// Whether the store counts as reachable (see the module comment: errors for
    /// [`STORE_LOST_AFTER`] or no progress for [`STORE_LOST_WHEN_HUNG`] lose it).
    pub store_reachable: bool,
    /// The last store error of the membership loop ("" when the last round succeeded).
    pub store_err: String,
    /// Heartbeat rounds completed (0 before the first).
    pub rounds: u64,
}

impl ClusterState {
    /// Ids of the members seen alive.
    pub fn alive_ids(&self) -> HashSet<String> {
        self.members
            .iter()
            .filter(|m| m.alive)
            .map(|m| m.id.clone())
            .collect()
    }

    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

/// The membership service's handle: this backend's identity and the latest [`ClusterState`].
pub struct Membership {
    identity: Identity,
    /// Written only by the membership loop.
    state: watch::Sender<Arc<ClusterState>>,
}

impl Membership {
    /// Writes this member's first heartbeat and lists the members (so that nobody mistakes
    /// this backend for a dead one once it serves agents), then keeps doing so every
    /// [`HEARTBEAT_INTERVAL`] until `shutdown`, when it deletes its record.
    pub async fn start(
        identity: Identity,
        store: Arc<dyn Store>,
        link: StoreLink,
        shutdown: CancellationToken,
    ) -> kensa_store::Result<(Arc<Membership>, tokio::task::JoinHandle<()>)> {
        let membership = Arc::new(Membership {
            identity,
            state: watch::channel(Arc::new(ClusterState::default())).0,
        });
        let mut service = Service {
            membership: membership.clone(),
            store,
            observed: HashMap::new(),
            link,
            last_write_ok: Instant::now(),
            last_write_error: false,
            last_list: None,
            members: Vec::new(),
            rounds: 0,
        };
        // The first round must succeed: a backend that cannot register does not start.
        service.write_heartbeat().await?;
        let listing = service.list_members().await?;
        service.observe(listing);
        service.publish(String::new());
        tracing::info!(
            member = %membership.identity.id,
            name = %membership.identity.name,
            members = service.members.len(),
            "joined the cluster"
        );
        let task = tokio::spawn(service.run(shutdown));
        Ok((membership, task))
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// This member's id as stored in liveness records' `owner`.
    pub fn id(&self) -> String {
        self.identity.id.to_string()
    }

    /// The latest state.
    pub fn state(&self) -> Arc<ClusterState> {
        self.state.borrow().clone()
    }

    /// Follows the state (a new value every heartbeat round).
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.subscribe()
    }

    /// Whether `id` names a live member. A member this backend has not listed yet (it may
    /// have started within the last heartbeat) is looked up in the store; when that fails the
    /// answer is "alive": when in doubt, nobody takes anything over.
    pub async fn is_alive(&self, store: &dyn Store, id: &str) -> bool {
        if id == self.id() {
            return true;
        }
        if id.is_empty() {
            return false;
        }
        if let Some(member) = self.state().member(id) {
            return member.alive;
        }
        let key = Key::new(MEMBERS_KIND, "", id);
        match tokio::time::timeout(STORE_CALL_TIMEOUT, store.get(&key)).await {
            Ok(Ok(Some(stored))) => {
                let heartbeat = stored.value["heartbeat_ms"].as_i64().unwrap_or(0);
                crate::api::now_millis() - heartbeat < DEAD_AFTER.as_millis() as i64
            }
            Ok(Ok(None)) => false,
            Ok(Err(_)) | Err(_) => true,
        }
    }
}

/// Runs a store write on its own task, so that a caller who stops waiting for it (the
/// timeouts here) never cancels it halfway: a write transaction dropped between its `BEGIN`
/// and the transaction object existing stays open on the connection (sqlx), and with the
/// embedded store's single writer connection every later write then failed.
async fn detached<T: Send + 'static>(
    write: impl std::future::Future<Output = kensa_store::Result<T>> + Send + 'static,
) -> kensa_store::Result<T> {
    tokio::spawn(write)
        .await
        .unwrap_or_else(|err| Err(kensa_store::StoreError::Internal(err.to_string())))
}

/// What this backend observed of one member record.
struct Observation {
    revision: i64,
    /// When (on this backend's clock) the record was last seen to change.
    changed_at: Instant,
}

struct Service {
    membership: Arc<Membership>,
    store: Arc<dyn Store>,
    /// Per member id, what the listings showed.
    observed: HashMap<String, Observation>,
    link: StoreLink,
    last_write_ok: Instant,
    /// The last heartbeat write failed with an error (not a timeout).
    last_write_error: bool,
    /// When the last successful listing was made: "dead" is measured up to it, never up to
    /// now, so an unreachable store freezes the verdicts instead of killing everybody.
    last_list: Option<Instant>,
    /// The members of the last successful listing.
    members: Vec<(Value, i64)>,
    rounds: u64,
}

impl Service {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first round ran in `start`
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let mut errors = Vec::new();
            if let Err(err) = self.write_heartbeat().await {
                errors.push(format!("heartbeat: {err}"));
            }
            match self.list_members().await {
                Ok(listing) => self.observe(listing),
                Err(err) => errors.push(format!("listing members: {err}")),
            }
            if !errors.is_empty() {
                tracing::warn!(errors = %errors.join("; "), "cluster membership round failed");
            }
            self.forget_long_dead().await;
            self.publish(errors.join("; "));
        }
        self.leave().await;
    }

    fn record(&self) -> Value {
        let identity = &self.membership.identity;
        json!({
            "id": identity.id.to_string(),
            "name": identity.name,
            "api_url": identity.api_url,
            "agent_url": identity.agent_url,
            "started_ms": identity.started_ms,
            "heartbeat_ms": crate::api::now_millis(),
            "version": env!("CARGO_PKG_VERSION"),
        })
    }

    fn own_key(&self) -> Key {
        Key::new(MEMBERS_KIND, "", self.membership.id())
    }

    async fn write_heartbeat(&mut self) -> kensa_store::Result<()> {
        let (key, record) = (self.own_key(), self.record());
        let store = self.store.clone();
        let write = detached(async move { store.put(&key, &record, Precondition::None).await });
        match tokio::time::timeout(STORE_CALL_TIMEOUT, write).await {
            Ok(Ok(_)) => {
                self.last_write_ok = Instant::now();
                self.last_write_error = false;
                Ok(())
            }
            Ok(Err(err)) => {
                self.last_write_error = true;
                Err(err)
            }
            Err(_) => {
                self.last_write_error = false;
                Err(kensa_store::StoreError::Unavailable(
                    "heartbeat write timed out".into(),
                ))
            }
        }
    }

    /// Every member record with its revision.
    async fn list_members(&self) -> kensa_store::Result<Vec<(Value, i64)>> {
        let listing = async {
            let mut query = ListQuery {
                kind: MEMBERS_KIND.into(),
                namespace: Some(String::new()),
                limit: 1000,
                ..Default::default()
            };
            let mut members = Vec::new();
            loop {
                let page = self.store.list(&query).await?;
                members.extend(page.items.into_iter().map(|i| (i.value, i.revision)));
                match page.continue_token {
                    Some(token) => query.continue_token = Some(token),
                    None => return Ok(members),
                }
            }
        };
        match tokio::time::timeout(STORE_CALL_TIMEOUT, listing).await {
            Ok(result) => result,
            Err(_) => Err(kensa_store::StoreError::Unavailable(
                "listing members timed out".into(),
            )),
        }
    }

    /// Records a successful listing.
    fn observe(&mut self, listing: Vec<(Value, i64)>) {
        let now = Instant::now();
        let now_ms = crate::api::now_millis();
        let mut seen = HashSet::new();
        for (value, revision) in &listing {
            let id = value["id"].as_str().unwrap_or_default().to_owned();
            seen.insert(id.clone());
            let observation = self.observed.entry(id).or_insert_with(|| {
                // First sight: trust the wall-clock heartbeat, bounded to what matters.
                let age_ms = (now_ms - value["heartbeat_ms"].as_i64().unwrap_or(0))
                    .clamp(0, 2 * DEAD_AFTER.as_millis() as i64);
                Observation {
                    revision: *revision,
                    changed_at: now
                        .checked_sub(Duration::from_millis(age_ms as u64))
                        .unwrap_or(now),
                }
            });
            if observation.revision != *revision {
                observation.revision = *revision;
                observation.changed_at = now;
            }
        }
        self.observed.retain(|id, _| seen.contains(id));
        self.last_list = Some(now);
        self.members = listing;
    }

    /// Builds and publishes the state from the last listing.
    fn publish(&mut self, store_err: String) {
        self.rounds += 1;
        let me = self.membership.id();
        let silent = self.last_write_ok.elapsed();
        let store_reachable = store_reachable(self.link, self.last_write_error, silent);
        let last_list = self.last_list.unwrap_or_else(Instant::now);
        let mut members: Vec<Member> = self
            .members
            .iter()
            .map(|(value, _)| {
                let id = value["id"].as_str().unwrap_or_default().to_owned();
                let silent_for = self
                    .observed
                    .get(&id)
                    .map(|o| last_list.saturating_duration_since(o.changed_at))
                    .unwrap_or_default();
                let own = id == me;
                Member {
                    alive: if own {
                        store_reachable
                    } else {
                        silent_for < DEAD_AFTER
                    },
                    silent_for: if own { Duration::ZERO } else { silent_for },
                    name: value["name"].as_str().unwrap_or_default().to_owned(),
                    api_url: value["api_url"].as_str().unwrap_or_default().to_owned(),
                    agent_url: value["agent_url"].as_str().unwrap_or_default().to_owned(),
                    started_ms: value["started_ms"].as_i64().unwrap_or(0),
                    heartbeat_ms: value["heartbeat_ms"].as_i64().unwrap_or(0),
                    id,
                }
            })
            .collect();
        if !members.iter().any(|m| m.id == me) {
            // Not listed yet (or the store is unreachable): this backend still exists.
            let identity = &self.membership.identity;
            members.push(Member {
                id: me.clone(),
                name: identity.name.clone(),
                api_url: identity.api_url.clone(),
                agent_url: identity.agent_url.clone(),
                started_ms: identity.started_ms,
                heartbeat_ms: 0,
                alive: store_reachable,
                silent_for: Duration::ZERO,
            });
        }
        members.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        let previous = self.membership.state();
        for member in &members {
            let was_alive = previous.member(&member.id).map(|m| m.alive);
            if member.id != me && was_alive == Some(true) && !member.alive {
                tracing::warn!(member = %member.id, name = %member.name, silent = ?member.silent_for, "cluster member is dead");
            }
        }
        if previous.store_reachable && !store_reachable && previous.rounds > 0 {
            tracing::error!(err = %store_err, "lost the store: no heartbeat written for {silent:?}");
        } else if !previous.store_reachable && store_reachable && previous.rounds > 0 {
            tracing::info!("the store is reachable again");
        }
        self.membership.state.send_replace(Arc::new(ClusterState {
            members,
            store_reachable,
            store_err,
            rounds: self.rounds,
        }));
    }

    /// Deletes the records of members dead for [`FORGET_AFTER`] (compare-and-set: a member
    /// that comes back in the meantime keeps its record).
    async fn forget_long_dead(&mut self) {
        let Some(last_list) = self.last_list else {
            return;
        };
        let me = self.membership.id();
        let stale: Vec<(String, i64)> = self
            .observed
            .iter()
            .filter(|(id, o)| {
                **id != me && last_list.saturating_duration_since(o.changed_at) >= FORGET_AFTER
            })
            .map(|(id, o)| (id.clone(), o.revision))
            .collect();
        for (id, revision) in stale {
            let key = Key::new(MEMBERS_KIND, "", &id);
            let store = self.store.clone();
            let delete =
                detached(async move { store.delete(&key, Precondition::Revision(revision)).await });
            // Gone already, changed (it came back), or the store failed: next round.
            if let Ok(Ok(())) = tokio::time::timeout(STORE_CALL_TIMEOUT, delete).await {
                tracing::info!(member = %id, "forgot a long-dead cluster member");
                self.observed.remove(&id);
                self.members
                    .retain(|(value, _)| value["id"].as_str() != Some(id.as_str()));
            }
        }
    }

    /// A graceful stop: delete the record so the others take over at once.
    async fn leave(&self) {
        let key = self.own_key();
        let store = self.store.clone();
        let delete = detached(async move { store.delete(&key, Precondition::None).await });
        match tokio::time::timeout(STORE_CALL_TIMEOUT, delete).await {
            Ok(Ok(())) | Ok(Err(kensa_store::StoreError::NotFound(_))) => {
                tracing::info!(member = %self.membership.id(), "left the cluster")
            }
            Ok(Err(err)) => tracing::warn!(%err, "could not delete the member record"),
            Err(_) => tracing::warn!("deleting the member record timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_ids_are_the_first_eight_bytes_of_the_uuid() {
        assert_eq!(
            numeric_id("01234567-89ab-cdef-0123-456789abcdef"),
            0x0123_4567_89ab_cdef
        );
        assert_eq!(numeric_id("not a uuid"), 0);
    }

    #[test]
    fn only_failing_or_hung_writes_to_a_shared_store_lose_it_never_slow_ones() {
        let secs = Duration::from_secs;
        // Writes that fail (connection refused, reset): lost after STORE_LOST_AFTER.
        assert!(store_reachable(StoreLink::Network, true, secs(2)));
        assert!(!store_reachable(StoreLink::Network, true, secs(3)));
        // Writes that time out under load: still reachable, unless nothing moves for 15 s.
        assert!(store_reachable(StoreLink::Network, false, secs(10)));
        assert!(!store_reachable(StoreLink::Network, false, secs(15)));
        // The embedded store is part of the process.
        assert!(store_reachable(StoreLink::Embedded, true, secs(3600)));
    }

    #[tokio::test]
    async fn members_see_each_other_and_a_silent_one_dies() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            kensa_store::sqlite::SqliteStore::open(&dir.path().join("kensa.db"))
                .await
                .unwrap(),
        );
        let shutdown = CancellationToken::new();
        let identity = |name: &str| Identity::new(name.into(), String::new(), String::new());
        let (first, first_task) = Membership::start(
            identity("a"),
            store.clone(),
            StoreLink::Network,
            shutdown.clone(),
        )
        .await
        .unwrap();
        let second_shutdown = CancellationToken::new();
        let (second, second_task) = Membership::start(
            identity("b"),
            store.clone(),
            StoreLink::Network,
            second_shutdown.clone(),
        )
        .await
        .unwrap();
        // A record left behind by a member that died long ago is dead at first sight; one
        // that stops heartbeating now dies after DEAD_AFTER.
        let ghost = Uuid::new_v4().to_string();
        let frozen = Uuid::new_v4().to_string();
        for (id, heartbeat) in [(&ghost, 1), (&frozen, crate::api::now_millis())] {
            store
                .put(
                    &Key::new(MEMBERS_KIND, "", id),
                    &json!({"id": id, "name": id, "heartbeat_ms": heartbeat}),
                    Precondition::None,
                )
                .await
                .unwrap();
        }

        let mut states = first.subscribe();
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                states.changed().await.unwrap();
                let state = states.borrow().clone();
                if state.members.len() == 4 {
                    return state;
                }
            }
        })
        .await
        .expect("the first member lists all four");
        let alive = seen.alive_ids();
        assert!(alive.contains(&first.id()) && alive.contains(&second.id()));
        assert!(alive.contains(&frozen), "{seen:?}");
        assert!(!alive.contains(&ghost), "{seen:?}");
        assert!(first.is_alive(store.as_ref(), &second.id()).await);
        assert!(!first.is_alive(store.as_ref(), &ghost).await);
        let started = Instant::now();
        while first.state().member(&frozen).is_some_and(|m| m.alive) {
            assert!(started.elapsed() < DEAD_AFTER * 2, "the frozen member dies");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(started.elapsed() >= DEAD_AFTER - HEARTBEAT_INTERVAL * 2);
        assert!(first.state().member(&second.id()).unwrap().alive);

        // The second stops gracefully: its record goes, and it is no longer alive.
        second_shutdown.cancel();
        second_task.await.unwrap();
        let gone = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                states.changed().await.unwrap();
                let state = states.borrow().clone();
                if state.member(&second.id()).is_none() {
                    return;
                }
            }
        })
        .await;
        assert!(gone.is_ok(), "a member that left disappears");
        assert!(!first.is_alive(store.as_ref(), &second.id()).await);
        shutdown.cancel();
        first_task.await.unwrap();
    }
}
