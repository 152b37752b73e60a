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
//! keepalive event and the entity, in one transaction. After a restart the deadlines are
//! rebuilt from those records: an agent whose deadline passed while the backend was down gets
//! one warning timeout from startup to reconnect (so healthy agents, which reconnect within
//! their retry backoff, never see a false alert) and still raises its alert if it does not.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kensa_store::{Key, ListQuery, Precondition, Store};
use kensa_types::Kind;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

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

#[derive(Debug, Clone, PartialEq)]
struct Liveness {
    /// Unix milliseconds of the last keepalive (deadlines are exact to the millisecond).
    last_seen: i64,
    warning: i64,
    critical: i64,
    /// 0 alive, 1 warning raised, 2 critical raised.
    status: u32,
}

impl Liveness {
    fn record(&self) -> Value {
        json!({
            "last_seen_ms": self.last_seen,
            "last_seen": self.last_seen / 1000,
            "warning": self.warning,
            "critical": self.critical,
            "status": self.status,
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
        }
    }
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

    pub fn start(
        store: Arc<dyn Store>,
        view: Arc<ConfigView>,
        eventd: Eventd,
        pipeline: mpsc::Sender<Processed>,
        failing: Arc<FailingAgents>,
        telemetry: Arc<Telemetry>,
        shutdown: CancellationToken,
    ) -> (Keepalived, tokio::task::JoinHandle<()>) {
        let (lane, rx) = mpsc::channel(LANE_CAPACITY);
        let service = Service {
            store,
            view,
            eventd,
            pipeline,
            failing,
            telemetry,
            agents: HashMap::new(),
            deadlines: BTreeSet::new(),
            pending: HashMap::new(),
        };
        let task = tokio::spawn(service.run(rx, shutdown));
        (Keepalived { lane }, task)
    }
}

struct Service {
    store: Arc<dyn Store>,
    view: Arc<ConfigView>,
    eventd: Eventd,
    pipeline: mpsc::Sender<Processed>,
    failing: Arc<FailingAgents>,
    telemetry: Arc<Telemetry>,
    /// Liveness of every known agent with its next deadline (unix milliseconds).
    agents: HashMap<AgentKey, (Liveness, i64)>,
    deadlines: BTreeSet<(i64, AgentKey)>,
    /// Keepalive writes eventd had no room for; only the latest per agent is kept.
    pending: HashMap<AgentKey, Submission>,
}

impl Service {
    async fn run(mut self, mut lane: mpsc::Receiver<Value>, shutdown: CancellationToken) {
        if let Err(err) = self.rebuild().await {
            tracing::error!(%err, "could not rebuild keepalive deadlines from the store");
        }
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        loop {
            let next = self.deadlines.first().map(|(at, _)| *at);
            let wait = match next {
                Some(at) => Duration::from_millis((at - crate::api::now_millis()).max(0) as u64),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                keepalive = lane.recv() => match keepalive {
                    Some(keepalive) => self.keepalive(keepalive).await,
                    None => return,
                },
                _ = tokio::time::sleep(wait), if next.is_some() => self.fire_due().await,
                _ = retry.tick() => self.flush_pending(),
            }
        }
    }

    /// Re-arms every agent from the liveness records (see the module comment).
    async fn rebuild(&mut self) -> kensa_store::Result<()> {
        let now = crate::api::now_millis();
        let mut query = ListQuery {
            kind: LIVENESS_KIND.into(),
            namespace: None,
            limit: 1000,
            ..Default::default()
        };
        loop {
            let page = self.store.list(&query).await?;
            for item in page.items {
                let liveness = Liveness::from_record(&item.value);
                let key = (item.key.namespace, item.key.name);
                let due = if liveness.status == 0 {
                    (liveness.last_seen + liveness.warning * 1000)
                        .max(now + liveness.warning * 1000)
                } else {
                    self.failing.set(&key.0, &key.1, true);
                    next_failure_deadline(&liveness, now)
                };
                self.arm(key, liveness, due);
            }
            match page.continue_token {
                Some(token) => query.continue_token = Some(token),
                None => break,
            }
        }
        if !self.agents.is_empty() {
            tracing::info!(agents = self.agents.len(), "rebuilt keepalive deadlines");
        }
        Ok(())
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
        };
        self.arm(key.clone(), liveness.clone(), now_millis + warning * 1000);
        if was_failing {
            self.failing.set(&namespace, &name, false);
        }

        // The entity: the stored configuration wins; the agent owns its state fields.
        let entity_key = Key::new("entities", &namespace, &name);
        let reported = &keepalive["entity"];
        let mut entity = match self.view.get(&entity_key) {
            Some(stored) => {
                let mut entity = (*stored).clone();
                for field in ["system", "sensu_agent_version", "user"] {
                    if !reported[field].is_null() {
                        entity[field] = reported[field].clone();
                    }
                }
                entity
            }
            None => {
                self.register(&namespace, reported, now).await;
                let mut entity = reported.clone();
                entity["entity_class"] = json!("agent");
                crate::api::special::ensure_entity_subscription(&mut entity);
                entity
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
            (entity_key, entity),
            (
                Key::new(LIVENESS_KIND, &namespace, &name),
                liveness.record(),
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
        while let Some((at, key)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some((liveness, _)) = self.agents.get(&key).cloned() else {
                continue;
            };
            self.expired(key, liveness, now).await;
        }
    }

    /// A deadline passed: deregister, or raise (or re-raise, or escalate) the failure.
    /// `now` is in unix milliseconds.
    async fn expired(&mut self, key: AgentKey, mut liveness: Liveness, now_millis: i64) {
        let now = now_millis / 1000;
        let (namespace, name) = key.clone();
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
        let writes = vec![(
            Key::new(LIVENESS_KIND, &namespace, &name),
            liveness.record(),
        )];
        self.submit(
            key.clone(),
            Submission::with_writes(event, Origin::Internal, writes),
        );
        let due = next_failure_deadline(&liveness, now_millis);
        self.arm(key, liveness, due);
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
        };
        // Warning raised at +10 s: critical exactly at last_seen + 25 s, not at +20 or +30 s.
        assert_eq!(next_failure_deadline(&liveness, 1_010_000), 1_025_000);
        let critical = Liveness {
            status: 2,
            ..liveness
        };
        assert_eq!(next_failure_deadline(&critical, 1_025_000), 1_035_000);
    }
}
