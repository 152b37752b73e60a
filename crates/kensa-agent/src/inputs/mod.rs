//! Local inputs of the agent: the HTTP API (`POST /events`…), the Sensu 1.x TCP/UDP socket and
//! the StatsD listener. Each turns what it receives into events pushed to the outbox.
//!
//! Every input is a `serve` function taking an already-bound socket, an [`InputContext`] and a
//! shutdown token, and returns when the token is cancelled. Inputs write through the
//! [`EventSink`] trait rather than the outbox type, so tests can collect events in a channel.
//! What the API and the socket receive goes through one preparation, [`prepare_event`]
//! (Sensu's `prepareEvent`), so both accept and reject the same things.

pub mod api;
pub mod socket;
pub mod statsd;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kensa_types::meta::{validate_named, NAME};
use kensa_types::resources::entity::Entity;
use kensa_types::resources::event::Event;
use kensa_types::resources::Resource;
use kensa_types::ResourceError;
use tokio::sync::watch;
use uuid::Uuid;

use crate::outbox::{Outbox, OutboxError};

/// Where inputs deliver events. Once `push` returns `Ok`, the event is the sink's to deliver.
pub trait EventSink: Send + Sync + 'static {
    fn push(&self, event: Event) -> impl Future<Output = Result<(), OutboxError>> + Send;
}

impl EventSink for Outbox {
    fn push(&self, event: Event) -> impl Future<Output = Result<(), OutboxError>> + Send {
        Outbox::push(self, event)
    }
}

/// What every input needs from the agent.
pub struct InputContext<S: EventSink = Outbox> {
    /// Where events go; durable once `push` returns.
    pub outbox: Arc<S>,
    /// The agent's current entity (with its namespace in `metadata.namespace`).
    pub entity: watch::Receiver<Arc<Entity>>,
    /// Whether the agent is connected to a backend (for `/healthz`).
    pub connected: watch::Receiver<bool>,
    /// The inputs' own counters, shared by all of them and exported by `GET /metrics`.
    pub counters: Arc<InputCounters>,
}

impl<S: EventSink> InputContext<S> {
    pub fn new(
        outbox: Arc<S>,
        entity: watch::Receiver<Arc<Entity>>,
        connected: watch::Receiver<bool>,
    ) -> Self {
        InputContext {
            outbox,
            entity,
            connected,
            counters: Arc::default(),
        }
    }

    /// The agent's entity as of now.
    pub(crate) fn agent_entity(&self) -> Arc<Entity> {
        Arc::clone(&self.entity.borrow())
    }

    /// Pushes `event` and counts the outcome for `input`.
    pub(crate) async fn deliver(&self, input: Input, event: Event) -> Result<(), OutboxError> {
        match self.outbox.push(event).await {
            Ok(()) => {
                self.counters.count(input, Outcome::Accepted);
                Ok(())
            }
            Err(err) => {
                tracing::warn!(input = input.label(), error = %err, "could not store an event");
                self.counters.count(input, Outcome::PushFailed);
                Err(err)
            }
        }
    }
}

// Derived `Clone` would require `S: Clone`; only the `Arc` is cloned.
impl<S: EventSink> Clone for InputContext<S> {
    fn clone(&self) -> Self {
        InputContext {
            outbox: Arc::clone(&self.outbox),
            entity: self.entity.clone(),
            connected: self.connected.clone(),
            counters: Arc::clone(&self.counters),
        }
    }
}

/// The inputs, as labelled in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Api,
    SocketTcp,
    SocketUdp,
    Statsd,
}

impl Input {
    const ALL: [Input; 4] = [
        Input::Api,
        Input::SocketTcp,
        Input::SocketUdp,
        Input::Statsd,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Input::Api => "api",
            Input::SocketTcp => "socket_tcp",
            Input::SocketUdp => "socket_udp",
            Input::Statsd => "statsd",
        }
    }
}

/// What became of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An event stored (API, socket), or a StatsD sample aggregated.
    Accepted,
    /// Refused: not JSON, not a valid event, not a StatsD line.
    Invalid,
    /// Valid, but the outbox refused it (full, or a disk error).
    PushFailed,
}

/// Counters of every input and outcome; lock-free, shared by all inputs.
#[derive(Debug, Default)]
pub struct InputCounters {
    counts: [[AtomicU64; 3]; 4],
}

impl InputCounters {
    pub fn count(&self, input: Input, outcome: Outcome) {
        self.cell(input, outcome).fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, input: Input, outcome: Outcome) -> u64 {
        self.cell(input, outcome).load(Ordering::Relaxed)
    }

    fn cell(&self, input: Input, outcome: Outcome) -> &AtomicU64 {
        let row = Input::ALL.iter().position(|i| *i == input).unwrap_or(0);
        let column = match outcome {
            Outcome::Accepted => 0,
            Outcome::Invalid => 1,
            Outcome::PushFailed => 2,
        };
        &self.counts[row][column]
    }

    /// The counters in the Prometheus text format.
    pub fn render_prometheus(&self) -> String {
        let families = [
            (
                "kensa_agent_input_accepted_total",
                "Events accepted by the local inputs (StatsD: samples aggregated).",
                Outcome::Accepted,
            ),
            (
                "kensa_agent_input_invalid_total",
                "Inputs refused as invalid (bad JSON, invalid event, bad StatsD line).",
                Outcome::Invalid,
            ),
            (
                "kensa_agent_input_push_failures_total",
                "Valid events the outbox could not store.",
                Outcome::PushFailed,
            ),
        ];
        let mut out = String::new();
        for (name, help, outcome) in families {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            for input in Input::ALL {
                let value = self.get(input, outcome);
                out.push_str(&format!("{name}{{input=\"{}\"}} {value}\n", input.label()));
            }
        }
        out
    }
}

/// Current Unix time in seconds.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// Sensu's `prepareEvent`: completes an event received from a local client so it passes
/// validation, and attributes it to the agent. The namespace and entity become the agent's; a
/// different entity name in the input becomes `check.proxy_entity_name`; the check gets
/// `interval` 1 when 0, the agent's namespace when it has none, `executed` and the event
/// `timestamp` now when 0, and `processed_by` the agent; the event gets a fresh `id`.
///
/// Errors name the offending field (`check.metadata.name: check is invalid: …`).
pub fn prepare_event(mut event: Event, agent: &Entity, now: i64) -> Result<Event, ResourceError> {
    let agent_name = &agent.metadata.name;
    let namespace = &agent.metadata.namespace;
    let Some(check) = event.check.as_mut() else {
        return Err(ResourceError::invalid_field(
            "check",
            "event must contain a check",
        ));
    };
    if event.timestamp == 0 {
        event.timestamp = now;
    }
    if check.interval == 0 {
        check.interval = 1;
    }
    if check.metadata.namespace.is_empty() {
        check.metadata.namespace = namespace.clone();
    }
    if check.executed == 0 {
        check.executed = now;
    }
    check.processed_by = agent_name.clone();
    if let Some(source) = event.entity.as_ref().map(|entity| &entity.metadata.name) {
        if !source.is_empty() && source != agent_name {
            validate_named("entity.metadata.name", "entity name", source, &NAME)?;
            check.proxy_entity_name = source.clone();
        }
    }
    event.entity = Some(agent.clone());
    event.metadata.namespace = namespace.clone();
    event.id = Some(Uuid::new_v4());
    event.apply_defaults();
    event.validate()?;
    Ok(event)
}
