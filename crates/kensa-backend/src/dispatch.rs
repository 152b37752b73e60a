//! The dispatcher: which connected agent sessions subscribe to what, and delivery of check
//! requests to them. The scheduler publishes here; agent sessions register here.
//!
//! Delivery never blocks: each session has a bounded outbound queue, and a request that does
//! not fit is dropped for that agent only (counted in `kensa_check_requests_dropped`), so one
//! slow agent never stalls the scheduler or the other agents (reference §8.1). An agent that
//! holds several of a check's subscriptions receives the request once (Sensu sent it once per
//! matching subscription and relied on a wall-clock dedup on the agent).

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;

use tokio::sync::{mpsc, watch};

/// A frame ready to write to an agent's WebSocket (encoded once, shared by every recipient:
/// cloning it never copies the bytes).
pub type Frame = bytes::Bytes;

/// Identifies one agent connection (an agent that reconnects gets a new session id).
pub type SessionId = u64;

/// What the dispatcher holds of a session.
#[derive(Clone)]
pub struct SessionHandle {
    pub id: SessionId,
    pub namespace: String,
    pub agent: String,
    /// The session's request queue; its writer task drains it.
    pub requests: mpsc::Sender<Frame>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Sessions that got the request.
    pub delivered: usize,
    /// Sessions whose queue was full (or closing).
    pub dropped: usize,
}

#[derive(Default)]
struct Registry {
    /// `(namespace, subscription) → session ids`.
    by_subscription: HashMap<(String, String), BTreeSet<SessionId>>,
    sessions: HashMap<SessionId, (SessionHandle, Vec<String>)>,
}

/// Shared by the agent listener (register/unregister), the scheduler (publish) and round
/// robin (which picks one session per round).
pub struct Dispatcher {
    /// Never held across an await; publishing clones the senders it needs and releases it.
    registry: RwLock<Registry>,
    /// Bumped on every register/unregister, so round robin learns about sessions that came or
    /// went without agentd knowing about it.
    membership: watch::Sender<u64>,
}

impl Default for Dispatcher {
    fn default() -> Dispatcher {
        Dispatcher {
            registry: RwLock::default(),
            membership: watch::Sender::new(0),
        }
    }
}

impl Dispatcher {
    pub fn new() -> Dispatcher {
        Dispatcher::default()
    }

    /// Changes whenever a session registers or unregisters.
    pub fn membership(&self) -> watch::Receiver<u64> {
        self.membership.subscribe()
    }

    fn membership_changed(&self) {
        self.membership.send_modify(|generation| *generation += 1);
    }

    /// The session `id`, if it is still registered.
    pub fn session(&self, id: SessionId) -> Option<SessionHandle> {
        let registry = self.registry.read().expect("dispatcher lock poisoned");
        registry.sessions.get(&id).map(|(s, _)| s.clone())
    }

    /// Whether session `id` is still registered (cheaper than [`Dispatcher::session`]).
    pub fn is_registered(&self, id: SessionId) -> bool {
        let registry = self.registry.read().expect("dispatcher lock poisoned");
        registry.sessions.contains_key(&id)
    }

    /// The ids of the sessions holding `subscription` in `namespace`, in id order (the order
    /// they connected).
    pub fn subscriber_ids(&self, namespace: &str, subscription: &str) -> Vec<SessionId> {
        let registry = self.registry.read().expect("dispatcher lock poisoned");
        registry
            .by_subscription
            .get(&(namespace.to_owned(), subscription.to_owned()))
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Adds a session (or replaces its subscriptions when it is already registered).
    pub fn register(&self, session: SessionHandle, subscriptions: Vec<String>) {
        let mut registry = self.registry.write().expect("dispatcher lock poisoned");
        registry.remove(session.id);
        for subscription in &subscriptions {
            registry
                .by_subscription
                .entry((session.namespace.clone(), subscription.clone()))
                .or_default()
                .insert(session.id);
        }
        registry
            .sessions
            .insert(session.id, (session, subscriptions));
        drop(registry);
        self.membership_changed();
    }

    pub fn unregister(&self, id: SessionId) {
        self.registry
            .write()
            .expect("dispatcher lock poisoned")
            .remove(id);
        self.membership_changed();
    }

    /// The subscriptions a session is registered with.
    pub fn subscriptions_of(&self, id: SessionId) -> Option<Vec<String>> {
        let registry = self.registry.read().expect("dispatcher lock poisoned");
        registry.sessions.get(&id).map(|(_, subs)| subs.clone())
    }

    /// The sessions of `(namespace, agent)` (normally one; two while a reconnect overlaps).
    pub fn sessions_of_agent(&self, namespace: &str, agent: &str) -> Vec<SessionHandle> {
        let registry = self.registry.read().expect("dispatcher lock poisoned");
        registry
            .sessions
            .values()
            .filter(|(s, _)| s.namespace == namespace && s.agent == agent)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// How many sessions are connected.
    pub fn session_count(&self) -> usize {
        self.registry
            .read()
            .expect("dispatcher lock poisoned")
            .sessions
            .len()
    }

    /// Sessions subscribed to any of `subscriptions` in `namespace`, each once.
    pub fn subscribers(&self, namespace: &str, subscriptions: &[String]) -> Vec<SessionHandle> {
        let registry = self.registry.read().expect("dispatcher lock poisoned");
        let mut ids = BTreeSet::new();
        for subscription in subscriptions {
            if let Some(set) = registry
                .by_subscription
                .get(&(namespace.to_owned(), subscription.clone()))
            {
                ids.extend(set.iter().copied());
            }
        }
        ids.iter()
            .filter_map(|id| registry.sessions.get(id).map(|(s, _)| s.clone()))
            .collect()
    }

    /// Delivers `frame` to every session subscribed to any of `subscriptions`.
    pub fn publish(&self, namespace: &str, subscriptions: &[String], frame: &Frame) -> Delivery {
        let mut delivery = Delivery::default();
        for session in self.subscribers(namespace, subscriptions) {
            match session.requests.try_send(frame.clone()) {
                Ok(()) => delivery.delivered += 1,
                Err(_) => {
                    tracing::warn!(
                        namespace,
                        agent = %session.agent,
                        "agent request queue is full; dropping a check request for this agent"
                    );
                    delivery.dropped += 1;
                }
            }
        }
        delivery
    }
}

impl Registry {
    fn remove(&mut self, id: SessionId) {
        if let Some((session, subscriptions)) = self.sessions.remove(&id) {
            for subscription in subscriptions {
                let slot = (session.namespace.clone(), subscription);
                if let Some(set) = self.by_subscription.get_mut(&slot) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.by_subscription.remove(&slot);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(
        id: SessionId,
        agent: &str,
        capacity: usize,
    ) -> (SessionHandle, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            SessionHandle {
                id,
                namespace: "default".into(),
                agent: agent.into(),
                requests: tx,
            },
            rx,
        )
    }

    fn subs(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_agent_in_two_matching_subscriptions_gets_one_copy() {
        let dispatcher = Dispatcher::new();
        let (a, mut a_rx) = session(1, "a", 8);
        let (b, mut b_rx) = session(2, "b", 8);
        dispatcher.register(a, subs(&["linux", "db"]));
        dispatcher.register(b, subs(&["windows"]));
        let frame = Frame::from_static(b"check_request\n{}");
        let delivery = dispatcher.publish("default", &subs(&["linux", "db"]), &frame);
        assert_eq!(
            delivery,
            Delivery {
                delivered: 1,
                dropped: 0
            }
        );
        assert!(a_rx.try_recv().is_ok());
        assert!(a_rx.try_recv().is_err(), "exactly one copy");
        assert!(b_rx.try_recv().is_err());
        assert_eq!(
            dispatcher.publish("other-ns", &subs(&["linux"]), &frame),
            Delivery::default()
        );
    }

    #[test]
    fn a_full_agent_queue_drops_for_that_agent_only() {
        let dispatcher = Dispatcher::new();
        let (slow, _slow_rx) = session(1, "slow", 1);
        let (fast, mut fast_rx) = session(2, "fast", 8);
        dispatcher.register(slow, subs(&["linux"]));
        dispatcher.register(fast, subs(&["linux"]));
        let frame = Frame::from_static(b"x\n{}");
        dispatcher.publish("default", &subs(&["linux"]), &frame);
        let second = dispatcher.publish("default", &subs(&["linux"]), &frame);
        assert_eq!(
            second,
            Delivery {
                delivered: 1,
                dropped: 1
            }
        );
        assert_eq!(fast_rx.try_recv().ok(), Some(frame.clone()));
        assert_eq!(fast_rx.try_recv().ok(), Some(frame));
    }

    #[test]
    fn unregister_and_resubscribe() {
        let dispatcher = Dispatcher::new();
        let (a, _rx) = session(7, "a", 8);
        dispatcher.register(a.clone(), subs(&["linux"]));
        dispatcher.register(a, subs(&["db"]));
        assert!(dispatcher
            .subscribers("default", &subs(&["linux"]))
            .is_empty());
        assert_eq!(dispatcher.subscribers("default", &subs(&["db"])).len(), 1);
        dispatcher.unregister(7);
        assert_eq!(dispatcher.session_count(), 0);
        assert!(dispatcher.subscribers("default", &subs(&["db"])).is_empty());
    }
}
