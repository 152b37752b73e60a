//! The agents that have a session on this backend ("residents"), for eventd's cache of
//! previous check states.
//!
//! On a store that other backends write too (PostgreSQL), a shard may only trust what it
//! remembers of a key while no other backend can have written that key since. That holds for
//! an agent's own events while the agent is connected here: its results and keepalives come
//! through this backend only. Every time a session starts, the agent gets a new generation,
//! so what a shard remembered from an earlier session (before the agent visited another
//! backend) no longer counts. Events of entities that are not resident here (proxy entities,
//! agents connected elsewhere or gone, API posts about them) are merged from the store and
//! written with compare-and-set instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

#[derive(Default)]
pub struct Residents {
    /// namespace → agent → residency (nested so that lookups borrow instead of allocating).
    agents: RwLock<HashMap<String, HashMap<String, Resident>>>,
    next_generation: AtomicU64,
}

struct Resident {
    generation: u64,
    /// Sessions of the agent on this backend (a reconnect can overlap the old session).
    sessions: usize,
}

impl Residents {
    /// A session of `agent` started here. Always a new generation: the agent may have been
    /// connected to another backend since its last session here.
    pub fn enter(&self, namespace: &str, agent: &str) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
        let mut agents = self.agents.write().expect("residents lock poisoned");
        let resident = agents
            .entry(namespace.to_owned())
            .or_default()
            .entry(agent.to_owned())
            .or_insert(Resident {
                generation,
                sessions: 0,
            });
        resident.generation = generation;
        resident.sessions += 1;
    }

    /// A session of `agent` ended here.
    pub fn leave(&self, namespace: &str, agent: &str) {
        let mut agents = self.agents.write().expect("residents lock poisoned");
        let Some(in_namespace) = agents.get_mut(namespace) else {
            return;
        };
        if let Some(resident) = in_namespace.get_mut(agent) {
            resident.sessions = resident.sessions.saturating_sub(1);
            if resident.sessions == 0 {
                in_namespace.remove(agent);
            }
        }
        if in_namespace.is_empty() {
            agents.remove(namespace);
        }
    }

    /// The current generation of `entity` while it has a session here.
    pub fn generation(&self, namespace: &str, entity: &str) -> Option<u64> {
        let agents = self.agents.read().expect("residents lock poisoned");
        agents
            .get(namespace)
            .and_then(|in_namespace| in_namespace.get(entity))
            .map(|resident| resident.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_session_start_is_a_new_generation_and_the_last_leave_ends_residency() {
        let residents = Residents::default();
        assert_eq!(residents.generation("default", "web-1"), None);
        residents.enter("default", "web-1");
        let first = residents.generation("default", "web-1").unwrap();
        // A reconnect that overlaps the old session still starts a new generation.
        residents.enter("default", "web-1");
        let second = residents.generation("default", "web-1").unwrap();
        assert_ne!(first, second);
        residents.leave("default", "web-1");
        assert_eq!(residents.generation("default", "web-1"), Some(second));
        residents.leave("default", "web-1");
        assert_eq!(residents.generation("default", "web-1"), None);
        assert_eq!(residents.generation("other", "web-1"), None);
    }
}
