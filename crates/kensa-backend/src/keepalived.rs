//! Keepalives (reference §2.3, §3.5): agent liveness, registration, keepalive failure and
//! recovery events, deregistration.
//!
//! Liveness is decided here, from keepalives as they arrive on the sessions' keepalive lane —
//! never behind the event backlog (reference §8.1) — and kept as exact deadlines in memory: the
//! warning event fires at `last_seen + warning timeout` and the critical one at `last_seen +
//! critical timeout` (Sensu fired critical only at a multiple of the warning timeout). While an
//! agent stays silent its failure is re-raised every warning period, as Sensu does.
//!
//! Durability: every keepalive also writes a small liveness record (`kensa.liveness`) with the
//! keepalive event and the entity, in one transaction.
//!
//! Ownership (cluster mode, `cluster.rs`): the record names its `owner`, the member whose
//! session last received the agent's keepalive, and only the owner raises the agent's alerts.
//! An agent that reconnects to another backend becomes that backend's with its first
//! keepalive. When a member dies (or leaves, or before this backend started), the **takeover**
//! task adopts the records it owned: one compare-and-set on each record's revision, so exactly
//! one backend wins each agent, which then gets one warning timeout from the takeover to
//! reconnect somewhere (healthy agents reconnect within their retry backoff and never see a
//! false alert) and still raises its alert, once, if it does not. A restarted single backend
//! is the same case: its previous incarnation is a dead member. Before raising an alert the
//! owner re-reads the record: if another live member owns it now, it forgets the agent; if not,
//! it claims the alert with a compare-and-set, so a keepalive that lands elsewhere at the same
//! moment and a second backend that thinks it owns the agent both lose the race cleanly.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kensa_store::{Key, ListQuery, Precondition, Store};
use kensa_types::Kind;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cluster::Membership;
use crate::eventd::{Eventd, FailingAgents, Origin, Processed, Submission};
use crate::telemetry::{StatusLabels, Telemetry};
use crate::view::ConfigView;

/// Store kind of liveness records, keyed `(namespace, entity)`.
pub const LIVENESS_KIND: &str = "kensa.liveness";

/// Sensu's defaults (reference §6).
pub const DEFAULT_WARNING_TIMEOUT: i64 = 120;

/// Capacity of the keepalive lane; when full, a session drops the keepalive (counted) — the
/// next one follows within a keepalive interval.
const LANE_CAPACITY: usize = 16_384;

/// Adopted agents waiting for the service; the takeover task waits when it is full.
const ADOPTED_CAPACITY: usize = 1024;

/// Besides reacting to members dying, the takeover task rescans every record this often
/// (records of members it never saw, writes that raced with a scan).
const FULL_SCAN_EVERY: Duration = Duration::from_secs(60);

/// How soon a deadline whose check could not complete (store error, lost race) is retried.
const RETRY_DEADLINE_MS: i64 = 1000;

#[derive(Debug, Clone, PartialEq)]
struct Liveness {
    /// Unix milliseconds of the last keepalive (deadlines are exact to the millisecond).
    last_seen: i64,
    warning: i64,
    critical: i64,
    /// 0 alive, 1 warning raised, 2 critical raised.
    status: u32,
    /// The member id of the backend tracking the agent ("" in records older than clusters).
    owner: String,
}

impl Liveness {
    fn record(&self) -> Value {
        json!({
            "last_seen_ms": self.last_seen,
            "last_seen": self.last_seen / 1000,
            "warning": self.warning,
            "critical": self.critical,
            "status": self.status,
            "owner": self.owner,
        })
    }

    fn from_record(value: &Value) -> Liveness {
        Liveness {
            last_seen: value["last_seen_ms"]
                .as_i64()
                .unwrap_or_else(|| value["last_seen"].as_i64().unwrap_or(0) * 1000),
            warning: value["warning"].as_i64().unwrap_or(DEFAULT_WARNING_TIMEOUT),
            critical: value["critical"].as_i64().unwrap_or(0),
            status: value["status"].as_u64().unwrap_or(0) as u32,
            owner: str_of(&value["owner"]).to_owned(),
        }
    }

    /// When an adopted agent's next deadline is: one warning timeout from now to reconnect
    /// when it was alive, else the failure's next deadline (see the module comment).
    fn adopted_deadline(&self, now_ms: i64) -> i64 {
        if self.status == 0 {
            (self.last_seen + self.warning * 1000).max(now_ms + self.warning * 1000)
        } else {
            next_failure_deadline(self, now_ms)
        }
    }
}

/// A record the takeover task won, on its way to the service.
struct Adopted {
    key: AgentKey,
    liveness: Liveness,
}

type AgentKey = (String, String);

/// Handle for agent sessions.
#[derive(Clone)]
pub struct Keepalived {
    lane: mpsc::Sender<Value>,
}

impl Keepalived {
    /// Hands a keepalive (normalized event JSON) to keepalived without waiting; `false` when
    /// the lane is full.
    pub fn try_submit(&self, keepalive: Value) -> bool {
        self.lane.try_send(keepalive).is_ok()
    }

    /// Starts the service and its takeover task (both stop with `shutdown`; the returned
    /// task ends after both).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        store: Arc<dyn Store>,
        view: Arc<ConfigView>,
        eventd: Eventd,
        pipeline: mpsc::Sender<Processed>,
        failing: Arc<FailingAgents>,
        telemetry: Arc<Telemetry>,
        membership: Arc<Membership>,
        shutdown: CancellationToken,
    ) -> (Keepalived, tokio::task::JoinHandle<()>) {
        let (lane, rx) = mpsc::channel(LANE_CAPACITY);
        let (adopted_tx, adopted_rx) = mpsc::channel(ADOPTED_CAPACITY);
        let takeover = tokio::spawn(takeover(
            store.clone(),
            membership.clone(),
            telemetry.clone(),
            adopted_tx,
            shutdown.clone(),
        ));
        let service = Service {
            me: membership.id(),
            store,
            view,
            eventd,
            pipeline,
            failing,
            telemetry,
            membership,
            agents: HashMap::new(),
            deadlines: BTreeSet::new(),
            pending: HashMap::new(),
        };
        let task = tokio::spawn(async move {
            service.run(rx, adopted_rx, shutdown).await;
            let _ = takeover.await;
        });
        (Keepalived { lane }, task)
    }
}

struct Service {
    /// This backend's member id: the `owner` of the records it writes.
    me: String,
    store: Arc<dyn Store>,
    view: Arc<ConfigView>,
    eventd: Eventd,
    pipeline: mpsc::Sender<Processed>,
    failing: Arc<FailingAgents>,
    telemetry: Arc<Telemetry>,
    membership: Arc<Membership>,
    /// Liveness of every agent this backend owns (or owned until another member took it)
    /// with its next deadline (unix milliseconds).
    agents: HashMap<AgentKey, (Liveness, i64)>,
    deadlines: BTreeSet<(i64, AgentKey)>,
    /// Keepalive writes eventd had no room for; only the latest per agent is kept.
    pending: HashMap<AgentKey, Submission>,
}

impl Service {
    async fn run(
        mut self,
        mut lane: mpsc::Receiver<Value>,
        mut adopted: mpsc::Receiver<Adopted>,
        shutdown: CancellationToken,
    ) {
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        loop {
            let next = self.deadlines.first().map(|(at, _)| *at);
            let wait = match next {
                Some(at) => Duration::from_millis((at - crate::api::now_millis()).max(0) as u64),
                None => Duration::from_secs(3600),
            };
            // Keepalives first: a deadline must never fire while a keepalive that would have
            // moved it waits in the lane.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                keepalive = lane.recv() => match keepalive {
                    Some(keepalive) => self.keepalive(keepalive).await,
                    None => return,
                },
                Some(record) = adopted.recv() => self.adopt(record),
                _ = tokio::time::sleep(wait), if next.is_some() => self.fire_due().await,
                _ = retry.tick() => self.flush_pending(),
            }
        }
    }

    /// Arms an agent the takeover task won, unless this backend heard from it since.
    fn adopt(&mut self, Adopted { key, liveness }: Adopted) {
        if let Some((current, _)) = self.agents.get(&key) {
            if current.owner == self.me && current.last_seen > liveness.last_seen {
                return;
            }
        }
        let due = liveness.adopted_deadline(crate::api::now_millis());
        if liveness.status > 0 {
            self.failing.set(&key.0, &key.1, true);
        }
        self.arm(key, liveness, due);
    }

    fn arm(&mut self, key: AgentKey, liveness: Liveness, due: i64) {
        if let Some((_, previous)) = self.agents.get(&key) {
            self.deadlines.remove(&(*previous, key.clone()));
        }
        self.deadlines.insert((due, key.clone()));
        self.agents.insert(key, (liveness, due));
    }

    fn forget(&mut self, key: &AgentKey) {
        if let Some((_, due)) = self.agents.remove(key) {
            self.deadlines.remove(&(due, key.clone()));
        }
        self.failing.set(&key.0, &key.1, false);
    }

    async fn keepalive(&mut self, keepalive: Value) {
        self.telemetry.keepalives.inc();
        let now_millis = crate::api::now_millis();
        let now = now_millis / 1000;
        let namespace = str_of(&keepalive["metadata"]["namespace"]).to_owned();
        let name = str_of(&keepalive["entity"]["metadata"]["name"]).to_owned();
        if namespace.is_empty() || name.is_empty() {
            return;
        }
        let key = (namespace.clone(), name.clone());
        let warning = match keepalive["check"]["timeout"].as_i64().unwrap_or(0) {
            0 => DEFAULT_WARNING_TIMEOUT,
            t => t,
        };
        let critical = keepalive["check"]["ttl"].as_i64().unwrap_or(0).max(0);
        let was_failing = self.agents.get(&key).is_some_and(|(l, _)| l.status > 0);
        let liveness = Liveness {
            last_seen: now_millis,
            warning,
            critical,
            status: 0,
            owner: self.me.clone(),
        };
        self.arm(key.clone(), liveness.clone(), now_millis + warning * 1000);
        if was_failing {
            self.failing.set(&namespace, &name, false);
        }

        // The entity: the stored configuration wins; the agent owns its state fields. The
        // write is conditional on the revision the view shows, so a change the view has not
        // applied yet (an entity updated through another backend a moment ago) is never
        // overwritten: this keepalive's entity write is skipped and the next one applies.
        let entity_key = Key::new("entities", &namespace, &name);
        let reported = &keepalive["entity"];
        let (mut entity, precondition) = match self.view.get_stored(&entity_key) {
            Some((stored, revision)) => {
                let mut entity = (*stored).clone();
                for field in ["system", "sensu_agent_version", "user"] {
                    if !reported[field].is_null() {
                        entity[field] = reported[field].clone();
                    }
                }
                (entity, Precondition::Revision(revision))
            }
            None => {
                self.register(&namespace, reported, now).await;
                let mut entity = reported.clone();
                entity["entity_class"] = json!("agent");
                crate::api::special::ensure_entity_subscription(&mut entity);
                (entity, Precondition::Absent)
            }
        };
        entity["last_seen"] = json!(now);
        let entity = match Kind::Entity.normalize(entity) {
            Ok(entity) => entity,
            Err(err) => {
                tracing::warn!(%err, namespace, agent = %name, "keepalive entity is invalid");
                return;
            }
        };

        let handlers = keepalive_handlers(&entity);
        let mut event = keepalive.clone();
        event["entity"] = entity.clone();
        event["timestamp"] = json!(now);
        let check = &mut event["check"];
        check["status"] = json!(0);
        check["output"] = json!(format!(
            "Keepalive last sent from {name} at {}",
            rfc3339(now)
        ));
        check["executed"] = json!(now);
        check["issued"] = json!(now);
        check["handlers"] = json!(handlers);
        check["scheduler"] = json!("memory");
        if str_of(&event["id"]).is_empty() {
            event["id"] = json!(Uuid::new_v4().to_string());
        }
        let writes = vec![
            (entity_key, entity, precondition),
            (
                Key::new(LIVENESS_KIND, &namespace, &name),
                liveness.record(),
                Precondition::None,
            ),
        ];
        self.submit(
            key,
            Submission::with_writes(event, Origin::Internal, writes),
        );
    }

    /// Writes through eventd without ever waiting: when eventd is full the latest write per
    /// agent is kept and retried every second (liveness itself is already up to date here).
    fn submit(&mut self, key: AgentKey, submission: Submission) {
        self.pending.remove(&key);
        if let Err(submission) = self.eventd.try_submit(submission) {
            self.pending.insert(key, submission);
        }
    }

    fn flush_pending(&mut self) {
        let keys: Vec<AgentKey> = self.pending.keys().cloned().collect();
        for key in keys {
            if let Some(submission) = self.pending.remove(&key) {
                if let Err(submission) = self.eventd.try_submit(submission) {
                    self.pending.insert(key, submission);
                    return;
                }
            }
        }
    }

    /// A new agent: the registration event goes to the pipelines (it is not stored), as in
    /// Sensu (reference §3.5 step 2).
    async fn register(&self, namespace: &str, entity: &Value, now: i64) {
        self.telemetry.registrations.inc();
        let name = str_of(&entity["metadata"]["name"]);
        tracing::info!(namespace, agent = name, "registering a new agent");
        let event = json!({
            "timestamp": now,
            "entity": entity,
            "check": {
                "metadata": {"name": "registration", "namespace": namespace},
                "status": 1,
                "interval": 1,
                "handlers": ["registration"],
                "output": format!("Agent {name} registered"),
                "executed": now,
                "issued": now,
            },
            "metadata": {"namespace": namespace},
            "id": Uuid::new_v4().to_string(),
        });
        self.to_pipeline(event).await;
    }

    async fn to_pipeline(&self, event: Value) {
        match serde_json::from_value::<kensa_types::resources::event::Event>(event) {
            Ok(event) => {
                let _ = self.pipeline.send(Arc::new(event)).await;
            }
            Err(err) => tracing::warn!(%err, "internal event does not decode"),
        }
    }

    async fn fire_due(&mut self) {
        let now = crate::api::now_millis();
        // Without the store nothing can be decided (who owns the agent now?) nor recorded:
        // postpone every due deadline instead of failing one store call per agent.
        let store_lost = !self.membership.state().store_reachable;
        while let Some((at, key)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some((liveness, _)) = self.agents.get(&key).cloned() else {
                continue;
            };
            if store_lost {
                self.arm(key, liveness, now + RETRY_DEADLINE_MS);
            } else {
                self.expired(key, liveness, now).await;
            }
        }
    }

    /// A deadline passed: unless another live member owns the agent now, deregister it, or
    /// raise (or re-raise, or escalate) its failure. `now` is in unix milliseconds.
    async fn expired(&mut self, key: AgentKey, mut liveness: Liveness, now_millis: i64) {
        let now = now_millis / 1000;
        let (namespace, name) = key.clone();
        let record_key = Key::new(LIVENESS_KIND, &namespace, &name);
        let record_revision = match self.store.get(&record_key).await {
            Ok(Some(stored)) => {
                let recorded = Liveness::from_record(&stored.value);
                if recorded.owner != self.me {
                    self.not_owned(key, recorded, stored.revision, now_millis)
                        .await;
                    return;
                }
                Some(stored.revision)
            }
            // Never written (its first write failed) or deleted (deregistered, entity deleted):
            // decided below from the entity.
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(%err, namespace, agent = %name, "keepalive deadline: could not read the liveness record; retrying");
                self.arm(key, liveness, now_millis + RETRY_DEADLINE_MS);
                return;
            }
        };
        let entity_key = Key::new("entities", &namespace, &name);
        let Some(entity) = self.view.get(&entity_key) else {
            // Deleted entity: nothing to watch any more.
            self.forget(&key);
            let _ = self
                .store
                .delete(
                    &Key::new(LIVENESS_KIND, &namespace, &name),
                    Precondition::None,
                )
                .await;
            return;
        };
        if entity["deregister"].as_bool().unwrap_or(false) {
            self.deregister(&key, &entity, now).await;
            return;
        }
        let elapsed_ms = now_millis - liveness.last_seen;
        let elapsed = elapsed_ms / 1000;
        let (status, threshold) = if liveness.critical > 0 && elapsed_ms >= liveness.critical * 1000
        {
            (2, liveness.critical)
        } else {
            (1, liveness.warning)
        };
        liveness.status = status;
        liveness.owner = self.me.clone();
        // Claim the alert: if anything wrote the record since it was read (a keepalive on
        // another backend, a member that believes it owns the agent), look again instead.
        let claim = match record_revision {
            Some(revision) => {
                self.store
                    .put(
                        &record_key,
                        &liveness.record(),
                        Precondition::Revision(revision),
                    )
                    .await
            }
            None => self.store.create(&record_key, &liveness.record()).await,
        };
        if let Err(err) = claim {
            tracing::debug!(%err, namespace, agent = %name, "keepalive alert not claimed; looking again");
            liveness.status = self.agents.get(&key).map_or(0, |(l, _)| l.status);
            self.arm(key, liveness, now_millis + RETRY_DEADLINE_MS);
            return;
        }
        self.failing.set(&namespace, &name, true);
        self.telemetry
            .keepalive_failures
            .get_or_create(&StatusLabels {
                status: status.to_string(),
            })
            .inc();
        tracing::warn!(namespace, agent = %name, elapsed, status, "keepalive failure");

        let event_key = Key::new("events", &namespace, format!("{name}/keepalive"));
        let mut event = match self.store.get(&event_key).await {
            Ok(Some(stored)) => stored.value,
            _ => json!({
                "entity": (*entity).clone(),
                "check": {
                    "metadata": {"name": "keepalive", "namespace": namespace},
                    "interval": 20,
                    "timeout": liveness.warning,
                    "ttl": liveness.critical,
                    "handlers": keepalive_handlers(&entity),
                },
                "metadata": {"namespace": namespace},
            }),
        };
        event["timestamp"] = json!(now);
        event["id"] = json!(Uuid::new_v4().to_string());
        event["check"]["status"] = json!(status);
        event["check"]["output"] = json!(format!(
            "No keepalive sent from {name} for {elapsed} seconds (>= {threshold})"
        ));
        event["check"]["executed"] = json!(now);
        self.submit(key.clone(), Submission::result(event, Origin::Internal));
        let due = next_failure_deadline(&liveness, now_millis);
        self.arm(key, liveness, due);
    }

    /// The deadline of an agent whose record names another owner: forget it when that owner
    /// is alive (it tracks the agent now), else adopt it as the takeover task would have.
    async fn not_owned(&mut self, key: AgentKey, recorded: Liveness, revision: i64, now_ms: i64) {
        if self
            .membership
            .is_alive(self.store.as_ref(), &recorded.owner)
            .await
        {
            tracing::debug!(namespace = %key.0, agent = %key.1, owner = %recorded.owner, "agent tracked by another backend");
            self.forget(&key);
            return;
        }
        let adopted = Liveness {
            owner: self.me.clone(),
            ..recorded
        };
        let record_key = Key::new(LIVENESS_KIND, &key.0, &key.1);
        match self
            .store
            .put(
                &record_key,
                &adopted.record(),
                Precondition::Revision(revision),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(namespace = %key.0, agent = %key.1, "took over an agent of a dead backend");
                if adopted.status > 0 {
                    self.failing.set(&key.0, &key.1, true);
                }
                let due = adopted.adopted_deadline(now_ms);
                self.arm(key, adopted, due);
            }
            // Somebody else wrote it first; whoever that was tracks it.
            Err(kensa_store::StoreError::Conflict(_) | kensa_store::StoreError::NotFound(_)) => {
                self.forget(&key)
            }
            Err(err) => {
                tracing::warn!(%err, namespace = %key.0, agent = %key.1, "could not take over an agent; retrying");
                let (liveness, _) = self.agents.get(&key).cloned().unwrap_or((adopted, 0));
                self.arm(key, liveness, now_ms + RETRY_DEADLINE_MS);
            }
        }
    }

    /// Deletes the entity and its events, resolving each through the pipelines, and emits the
    /// deregistration event (reference §2.11).
    async fn deregister(&mut self, key: &AgentKey, entity: &Value, now: i64) {
        let (namespace, name) = key;
        self.telemetry.deregistrations.inc();
        tracing::info!(namespace, agent = %name, "deregistering agent");
        self.forget(key);
        let mut query = ListQuery {
            kind: "events".into(),
            namespace: Some(namespace.clone()),
            name_prefix: Some(format!("{name}/")),
            limit: 500,
            ..Default::default()
        };
        let mut events = Vec::new();
        loop {
            match self.store.list(&query).await {
                Ok(page) => {
                    events.extend(page.items.into_iter().map(|i| i.value));
                    match page.continue_token {
                        Some(token) => query.continue_token = Some(token),
                        None => break,
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, "deregistration: could not list events");
                    break;
                }
            }
        }
        let deletes = async {
            self.store
                .delete_prefix("events", namespace, &format!("{name}/"))
                .await?;
            self.store
                .delete(&Key::new("entities", namespace, name), Precondition::None)
                .await
                .or_else(|err| match err {
                    kensa_store::StoreError::NotFound(_) => Ok(()),
                    err => Err(err),
                })?;
            self.store
                .delete(
                    &Key::new(LIVENESS_KIND, namespace, name),
                    Precondition::None,
                )
                .await
                .or_else(|err| match err {
                    kensa_store::StoreError::NotFound(_) => Ok(()),
                    err => Err(err),
                })
        };
        if let Err(err) = deletes.await {
            tracing::warn!(%err, namespace, agent = %name, "deregistration: delete failed");
        }
        // An agent of the same name registering later starts with a fresh history.
        self.eventd.forget(namespace, &format!("{name}/")).await;
        for mut event in events {
            event["check"]["status"] = json!(0);
            event["check"]["output"] = json!("Resolving due to entity deregistering");
            event["check"]["history"] = json!([]);
            event["timestamp"] = json!(now);
            self.to_pipeline(event).await;
        }
        let handler = str_of(&entity["deregistration"]["handler"]);
        if !handler.is_empty() {
            let event = json!({
                "timestamp": now,
                "entity": entity,
                "check": {
                    "metadata": {"name": "deregistration", "namespace": namespace},
                    "status": 1,
                    "interval": 1,
                    "handlers": [handler],
                    "output": format!("Agent {name} deregistered"),
                    "executed": now,
                },
                "metadata": {"namespace": namespace},
                "id": Uuid::new_v4().to_string(),
            });
            self.to_pipeline(event).await;
        }
    }
}

/// The takeover task: adopts the liveness records of members that are not alive — at start
/// (the previous incarnation of this backend, records older than clusters), whenever a member
/// stops being alive, and every [`FULL_SCAN_EVERY`]. Each adoption is a compare-and-set on the
/// record's revision, so of several backends scanning at once exactly one wins each record.
async fn takeover(
    store: Arc<dyn Store>,
    membership: Arc<Membership>,
    telemetry: Arc<Telemetry>,
    adopted: mpsc::Sender<Adopted>,
    shutdown: CancellationToken,
) {
    let mut states = membership.subscribe();
    let mut previously_alive: HashSet<String> = HashSet::new();
    let mut scan_due = true;
    let mut last_scan = Instant::now();
    loop {
        let state = states.borrow_and_update().clone();
        let alive = state.alive_ids();
        if previously_alive.difference(&alive).next().is_some() {
            scan_due = true;
        }
        previously_alive = alive;
        if last_scan.elapsed() >= FULL_SCAN_EVERY {
            scan_due = true;
        }
        // A backend that lost its store adopts nothing: it cannot tell who is alive.
        if scan_due && state.store_reachable {
            let scan = adopt_orphans(store.as_ref(), &membership, &adopted);
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = scan => outcome,
            };
            match outcome {
                Ok(count) => {
                    if count > 0 {
                        telemetry.keepalive_takeovers.inc_by(count as u64);
                        tracing::info!(
                            agents = count,
                            "took over the keepalives of agents whose backend is gone"
                        );
                    }
                    scan_due = false;
                    last_scan = Instant::now();
                }
                Err(TakeoverError::Closed) => return,
                // Retried on the next membership round.
                Err(err) => tracing::warn!(%err, "keepalive takeover scan failed; retrying"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = states.changed() => if changed.is_err() { return },
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum TakeoverError {
    #[error(transparent)]
    Store(#[from] kensa_store::StoreError),
    #[error("keepalived stopped")]
    Closed,
}

/// One pass over every liveness record; returns how many this backend adopted.
async fn adopt_orphans(
    store: &dyn Store,
    membership: &Membership,
    adopted: &mpsc::Sender<Adopted>,
) -> Result<usize, TakeoverError> {
    let me = membership.id();
    let mut count = 0;
    // Verdicts per owner within one pass (one store lookup per unknown owner at most).
    let mut verdicts: HashMap<String, bool> = HashMap::new();
    let mut query = ListQuery {
        kind: LIVENESS_KIND.into(),
        namespace: None,
        limit: 500,
        ..Default::default()
    };
    loop {
        let page = store.list(&query).await?;
        for item in page.items {
            let recorded = Liveness::from_record(&item.value);
            if recorded.owner == me {
                continue;
            }
            let owner_alive = match verdicts.get(&recorded.owner) {
                Some(alive) => *alive,
                None => {
                    let alive = membership.is_alive(store, &recorded.owner).await;
                    verdicts.insert(recorded.owner.clone(), alive);
                    alive
                }
            };
            if owner_alive {
                continue;
            }
            let liveness = Liveness {
                owner: me.clone(),
                ..recorded
            };
            match store
                .put(
                    &item.key,
                    &liveness.record(),
                    Precondition::Revision(item.revision),
                )
                .await
            {
                Ok(_) => {
                    count += 1;
                    let key = (item.key.namespace, item.key.name);
                    adopted
                        .send(Adopted { key, liveness })
                        .await
                        .map_err(|_| TakeoverError::Closed)?;
                }
                // Another backend adopted it, or the agent's keepalive landed: not ours.
                Err(
                    kensa_store::StoreError::Conflict(_) | kensa_store::StoreError::NotFound(_),
                ) => {}
                Err(err) => return Err(err.into()),
            }
        }
        match page.continue_token {
            Some(token) => query.continue_token = Some(token),
            None => return Ok(count),
        }
    }
}

/// When (unix ms) to look again at a failing agent: at its critical deadline while that is
/// pending, else one warning period from now (the failure is re-raised while the agent stays
/// silent).
fn next_failure_deadline(liveness: &Liveness, now_ms: i64) -> i64 {
    if liveness.critical > 0 && liveness.status < 2 {
        (liveness.last_seen + liveness.critical * 1000).max(now_ms)
    } else {
        now_ms + liveness.warning.max(1) * 1000
    }
}

fn keepalive_handlers(entity: &Value) -> Vec<String> {
    let configured: Vec<String> = entity["keepalive_handlers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h.as_str().map(str::to_owned))
        .collect();
    if configured.is_empty() {
        vec!["keepalive".to_owned()]
    } else {
        configured
    }
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// `2006-01-02T15:04:05Z` for a Unix time (UTC).
fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two backends scanning at the same time for the agents of a dead member: every agent is
    /// adopted by exactly one of them, and agents of live members by neither.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_takeovers_adopt_each_agent_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            kensa_store::sqlite::SqliteStore::open(&dir.path().join("kensa.db"))
                .await
                .unwrap(),
        );
        let shutdown = CancellationToken::new();
        let member = |name: &str| {
            crate::cluster::Membership::start(
                crate::cluster::Identity::new(name.into(), String::new(), String::new()),
                store.clone(),
                crate::cluster::StoreLink::Network,
                shutdown.clone(),
            )
        };
        let (first, _) = member("first").await.unwrap();
        let (second, _) = member("second").await.unwrap();
        let dead = Uuid::new_v4().to_string();
        let orphans = 300;
        for index in 0..orphans + 20 {
            // The last 20 belong to a live member and must stay where they are.
            let owner = if index < orphans {
                dead.clone()
            } else {
                first.id()
            };
            let liveness = Liveness {
                last_seen: crate::api::now_millis(),
                warning: 5,
                critical: 0,
                status: 0,
                owner,
            };
            store
                .put(
                    &Key::new(LIVENESS_KIND, "default", format!("agent-{index}")),
                    &liveness.record(),
                    Precondition::None,
                )
                .await
                .unwrap();
        }
        let (first_tx, mut first_rx) = mpsc::channel(1000);
        let (second_tx, mut second_rx) = mpsc::channel(1000);
        let (first_count, second_count) = tokio::join!(
            adopt_orphans(store.as_ref(), &second, &second_tx),
            adopt_orphans(store.as_ref(), &first, &first_tx),
        );
        let (second_count, first_count) = (first_count.unwrap(), second_count.unwrap());
        assert_eq!(
            first_count + second_count,
            orphans,
            "{first_count} + {second_count}"
        );
        let mut adopted = HashSet::new();
        for (rx, owner) in [(&mut first_rx, first.id()), (&mut second_rx, second.id())] {
            while let Ok(Adopted { key, liveness }) = rx.try_recv() {
                assert_eq!(liveness.owner, owner);
                let stored = store
                    .get(&Key::new(LIVENESS_KIND, &key.0, &key.1))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(str_of(&stored.value["owner"]), owner, "{key:?}");
                assert!(adopted.insert(key.clone()), "{key:?} adopted twice");
            }
        }
        assert_eq!(adopted.len(), orphans);
        shutdown.cancel();
    }

    /// A keepalive is handled by a backend whose view has not yet applied a change of the
    /// agent's entity made through another backend: the change survives (the keepalive's
    /// entity write is compare-and-set on the revision the view shows), and once the view has
    /// caught up the next keepalive updates the entity again, keeping the change.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_keepalive_never_overwrites_an_entity_change_its_view_has_not_seen() {
        let store: Arc<dyn Store> = Arc::new(
            kensa_store::sqlite::SqliteStore::open_in_memory()
                .await
                .unwrap(),
        );
        let entity_key = Key::new("entities", "default", "web-1");
        let entity = |subscriptions: Value, last_seen: i64| {
            Kind::Entity
                .normalize(json!({
                    "metadata": {"name": "web-1", "namespace": "default"},
                    "entity_class": "agent",
                    "subscriptions": subscriptions,
                    "last_seen": last_seen,
                }))
                .unwrap()
        };
        store
            .put(
                &entity_key,
                &entity(json!(["linux"]), 1),
                Precondition::None,
            )
            .await
            .unwrap();
        // Loaded, not following: the view stays as it was, like a view a moment behind.
        let view = ConfigView::load(store.as_ref()).await.unwrap();
        // Another backend adds a subscription.
        store
            .put(
                &entity_key,
                &entity(json!(["linux", "db"]), 1),
                Precondition::None,
            )
            .await
            .unwrap();

        let shutdown = CancellationToken::new();
        let telemetry = Arc::new(Telemetry::new());
        let failing = Arc::new(FailingAgents::default());
        let (pipeline_tx, mut pipeline_rx) = mpsc::channel(64);
        let (duplicates_tx, _duplicates_rx) = mpsc::channel(8);
        let (eventd, _) = Eventd::start(
            store.clone(),
            view.clone(),
            telemetry.clone(),
            failing.clone(),
            pipeline_tx.clone(),
            duplicates_tx,
            Default::default(),
            shutdown.clone(),
        );
        tokio::spawn(async move { while pipeline_rx.recv().await.is_some() {} });
        let (membership, _) = crate::cluster::Membership::start(
            crate::cluster::Identity::new("me".into(), String::new(), String::new()),
            store.clone(),
            crate::cluster::StoreLink::Embedded,
            shutdown.clone(),
        )
        .await
        .unwrap();
        let (keepalived, _) = Keepalived::start(
            store.clone(),
            view.clone(),
            eventd,
            pipeline_tx,
            failing,
            telemetry,
            membership,
            shutdown.clone(),
        );
        let keepalive = Kind::Event
            .normalize(json!({
                "metadata": {"namespace": "default"},
                "entity": {
                    "metadata": {"name": "web-1", "namespace": "default"},
                    "entity_class": "agent",
                    "subscriptions": ["linux"],
                    "system": {"hostname": "web-1"},
                },
                "check": {
                    "metadata": {"name": "keepalive", "namespace": "default"},
                    "interval": 20,
                    "timeout": 120,
                },
            }))
            .unwrap();
        let stored_keepalive = Key::new("events", "default", "web-1/keepalive");
        let keepalive_stored = |after: i64| {
            let store = store.clone();
            let key = stored_keepalive.clone();
            async move {
                for _ in 0..500 {
                    if let Some(stored) = store.get(&key).await.unwrap() {
                        if stored.revision > after {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("the keepalive was not stored");
            }
        };

        assert!(keepalived.try_submit(keepalive.clone()));
        keepalive_stored(0).await;
        let stored = store.get(&entity_key).await.unwrap().unwrap();
        assert_eq!(
            stored.value["subscriptions"],
            json!(["linux", "db"]),
            "the keepalive overwrote a change its view had not applied"
        );

        // The view catches up: the next keepalive writes the entity, with the change.
        tokio::spawn(view.clone().follow(store.clone(), shutdown.clone()));
        let head = store.revision().await.unwrap();
        view.wait_for(head).await;
        assert!(keepalived.try_submit(keepalive));
        keepalive_stored(head).await;
        let stored = store.get(&entity_key).await.unwrap().unwrap();
        assert_eq!(stored.value["subscriptions"], json!(["linux", "db"]));
        assert!(
            stored.value["last_seen"].as_i64().unwrap() > 1,
            "the entity's last_seen was not updated: {}",
            stored.value
        );
        assert_eq!(stored.value["system"]["hostname"], json!("web-1"));
        shutdown.cancel();
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn failure_deadlines_escalate_exactly_at_the_critical_timeout() {
        let liveness = Liveness {
            last_seen: 1_000_000,
            warning: 10,
            critical: 25,
            status: 1,
            owner: String::new(),
        };
        // Warning raised at +10 s: critical exactly at last_seen + 25 s, not at +20 or +30 s.
        assert_eq!(next_failure_deadline(&liveness, 1_010_000), 1_025_000);
        let critical = Liveness {
            status: 2,
            ..liveness.clone()
        };
        assert_eq!(next_failure_deadline(&critical, 1_025_000), 1_035_000);
    }
}
