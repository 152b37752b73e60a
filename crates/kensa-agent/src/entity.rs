//! The agent's own entity: what the agent reports about itself in every keepalive and event.
//!
//! It is assembled from three owners, each replaced as a whole (reference §2.2):
//! - the local configuration (flags/env/file), fixed for the life of the process;
//! - the backend's stored entity configuration (`entity_config` on connect), which wins over
//!   the local one for everything a user manages (subscriptions, labels, annotations,
//!   deregistration, redact list, keepalive handlers, user); `None` means "keep local";
//! - the host's system facts, refreshed in the background every 20 s.
//!
//! The assembled entity is published on a `watch` channel: readers (check executor, inputs)
//! always see the latest complete entity and never wait on the writers.
//!
//! Labels and annotations go out unredacted, as Sensu's wire form does; the backend redacts
//! them on output using the `redact` list sent here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kensa_types::resources::check::Check;
use kensa_types::resources::entity::{Deregistration, Entity, System, CLASS_AGENT};
use kensa_types::resources::event::Event;
use kensa_types::ObjectMeta;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::AgentConfig;

/// How often system facts are re-collected (Sensu's `DefaultSystemInfoRefreshInterval`).
pub const SYSTEM_REFRESH_INTERVAL: Duration = Duration::from_secs(20);

/// The version reported in `sensu_agent_version`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The user-managed part of the entity, as configured locally.
#[derive(Debug, Clone)]
struct LocalEntity {
    name: String,
    namespace: String,
    subscriptions: Vec<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    user: String,
    redact: Vec<String>,
    deregister: bool,
    deregistration_handler: String,
    keepalive_handlers: Vec<String>,
}

/// What the writers own; replaced piecewise under the lock, then published.
struct Parts {
    /// The backend's stored configuration for this session, if it has one.
    stored: Option<Entity>,
    system: System,
}

/// Keepalive settings carried in the keepalive's `check`.
#[derive(Debug, Clone)]
struct KeepaliveSettings {
    interval: u32,
    warning_timeout: u32,
    critical_timeout: u32,
}

/// Owns the agent's entity and publishes it. Shared (`Arc`) by the connection manager (stored
/// config, keepalives) and the system refresher.
pub struct EntityManager {
    local: LocalEntity,
    keepalive: KeepaliveSettings,
    parts: Mutex<Parts>,
    /// The latest assembled entity; `send_replace` never blocks.
    published: watch::Sender<Arc<Entity>>,
}

impl EntityManager {
    pub fn new(config: &AgentConfig) -> EntityManager {
        let local = LocalEntity {
            name: config.name.clone(),
            namespace: config.namespace.clone(),
            subscriptions: config.subscriptions.clone(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            user: config.user.clone(),
            redact: config.redact.clone(),
            deregister: config.deregister,
            deregistration_handler: config.deregistration_handler.clone(),
            keepalive_handlers: config.keepalive_handlers.clone(),
        };
        let parts = Parts {
            stored: None,
            system: System::default(),
        };
        let entity = assemble(&local, &parts);
        EntityManager {
            local,
            keepalive: KeepaliveSettings {
                interval: config.keepalive_interval,
                warning_timeout: config.keepalive_warning_timeout,
                critical_timeout: config.keepalive_critical_timeout,
            },
            parts: Mutex::new(parts),
            published: watch::channel(Arc::new(entity)).0,
        }
    }

    pub fn name(&self) -> &str {
        &self.local.name
    }

    pub fn namespace(&self) -> &str {
        &self.local.namespace
    }

    /// The subscriptions sent in the handshake: the local ones (the backend replaces them with
    /// the stored ones itself).
    pub fn local_subscriptions(&self) -> &[String] {
        &self.local.subscriptions
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Entity>> {
        self.published.subscribe()
    }

    pub fn current(&self) -> Arc<Entity> {
        self.published.borrow().clone()
    }

    /// Applies the backend's stored configuration for the session just opened (`None`: the
    /// backend has none, use the local configuration).
    pub fn set_stored_config(&self, stored: Option<Entity>) {
        self.update(|parts| parts.stored = stored);
    }

    pub fn set_system(&self, system: System) {
        self.update(|parts| parts.system = system);
    }

    fn update(&self, change: impl FnOnce(&mut Parts)) {
        let mut parts = self.parts.lock().expect("entity lock poisoned");
        change(&mut parts);
        let entity = assemble(&self.local, &parts);
        self.published.send_replace(Arc::new(entity));
    }

    /// A keepalive (reference §2.3): the entity seen now, and a `keepalive` check carrying the
    /// warning timeout in `timeout` and the critical one in `ttl`.
    pub fn keepalive(&self, sequence: i64, now: i64) -> Event {
        let mut entity = (*self.current()).clone();
        entity.last_seen = now;
        let check = Check {
            metadata: ObjectMeta {
                name: "keepalive".to_owned(),
                namespace: self.local.namespace.clone(),
                ..ObjectMeta::default()
            },
            interval: self.keepalive.interval,
            timeout: self.keepalive.warning_timeout,
            ttl: self.keepalive.critical_timeout.into(),
            handlers: entity.keepalive_handlers.clone(),
            executed: now,
            issued: now,
            ..Check::default()
        };
        Event {
            timestamp: now,
            metadata: ObjectMeta {
                namespace: self.local.namespace.clone(),
                ..ObjectMeta::default()
            },
            entity: Some(entity),
            check: Some(check),
            id: Some(Uuid::new_v4()),
            sequence,
            ..Event::default()
        }
    }

    /// Collects the system facts once (on the blocking pool: it reads files and interfaces).
    pub async fn collect_system(&self) {
        match tokio::task::spawn_blocking(crate::system::collect).await {
            Ok(system) => self.set_system(system),
            Err(err) => tracing::warn!(error = %err, "collecting system facts failed"),
        }
    }

    /// Re-collects the system facts every [`SYSTEM_REFRESH_INTERVAL`] until `shutdown`.
    pub async fn refresh_system(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SYSTEM_REFRESH_INTERVAL) => {}
            }
            self.collect_system().await;
        }
    }
}

fn assemble(local: &LocalEntity, parts: &Parts) -> Entity {
    let mut entity = Entity {
        entity_class: CLASS_AGENT.to_owned(),
        system: parts.system.clone(),
        subscriptions: local.subscriptions.clone(),
        deregister: local.deregister,
        deregistration: Deregistration {
            handler: local.deregistration_handler.clone(),
        },
        user: local.user.clone(),
        redact: local.redact.clone(),
        metadata: ObjectMeta {
            name: local.name.clone(),
            namespace: local.namespace.clone(),
            labels: local.labels.clone(),
            annotations: local.annotations.clone(),
            ..ObjectMeta::default()
        },
        sensu_agent_version: AGENT_VERSION.to_owned(),
        keepalive_handlers: local.keepalive_handlers.clone(),
        last_seen: 0,
    };
    if let Some(stored) = &parts.stored {
        entity.subscriptions = stored.subscriptions.clone();
        entity.metadata.labels = stored.metadata.labels.clone();
        entity.metadata.annotations = stored.metadata.annotations.clone();
        entity.deregister = stored.deregister;
        entity.deregistration = stored.deregistration.clone();
        entity.redact = stored.redact.clone();
        entity.keepalive_handlers = stored.keepalive_handlers.clone();
        if !stored.user.is_empty() {
            entity.user = stored.user.clone();
        }
    }
    let own = Entity::entity_subscription(&local.name);
    if !entity.subscriptions.contains(&own) {
        entity.subscriptions.push(own);
    }
    entity
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StartArgs;

    fn manager() -> EntityManager {
        let args = StartArgs {
            name: Some("web1".into()),
            subscriptions: vec!["linux".into()],
            labels: vec!["region=eu".into()],
            keepalive_handlers: vec!["pager".into()],
            keepalive_critical_timeout: Some(300),
            ..StartArgs::default()
        };
        EntityManager::new(&args.resolve().unwrap())
    }

    #[test]
    fn stored_config_wins_and_none_restores_local() {
        let manager = manager();
        let entity = manager.current();
        assert_eq!(entity.entity_class, "agent");
        assert_eq!(entity.subscriptions, vec!["linux", "entity:web1"]);
        assert_eq!(entity.metadata.labels["region"], "eu");
        assert_eq!(entity.sensu_agent_version, AGENT_VERSION);

        let mut stored = Entity::default();
        stored.metadata.name = "web1".into();
        stored.subscriptions = vec!["db".into()];
        stored.metadata.labels.insert("region".into(), "us".into());
        stored.deregister = true;
        manager.set_stored_config(Some(stored));
        let entity = manager.current();
        assert_eq!(entity.subscriptions, vec!["db", "entity:web1"]);
        assert_eq!(entity.metadata.labels["region"], "us");
        assert!(entity.deregister);
        assert_eq!(
            entity.user, "agent",
            "an empty stored user keeps the local one"
        );

        manager.set_stored_config(None);
        assert_eq!(manager.current().metadata.labels["region"], "eu");
    }

    #[test]
    fn keepalive_carries_the_timeouts() {
        let event = manager().keepalive(1, 1_700_000_000);
        let check = event.check.as_ref().unwrap();
        assert_eq!(check.metadata.name, "keepalive");
        assert_eq!((check.interval, check.timeout, check.ttl), (20, 120, 300));
        assert_eq!(check.handlers, vec!["pager"]);
        assert_eq!(event.entity.as_ref().unwrap().last_seen, 1_700_000_000);
        assert_eq!(event.timestamp, 1_700_000_000);
        assert!(event.id.is_some());
        assert_eq!(event.sequence, 1);
    }
}
