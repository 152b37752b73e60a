//! Every metric the backend exports, in one place (so `/metrics` is a list you can read), on
//! an explicit prometheus-client registry.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// `2xx`, `4xx`… (status classes keep the cardinality bounded).
    pub status: String,
}

pub struct Telemetry {
    /// Guarded for encoding only; metrics themselves are lock-free atomics.
    registry: Mutex<Registry>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub logins: Counter,
    pub auth_failures: Counter,
    pub rbac_denials: Counter,
    // Agent sessions.
    pub agent_sessions: Gauge,
    pub agent_connects: Counter,
    pub agent_session_errors: Family<ReasonLabels, Counter>,
    pub check_requests_sent: Counter,
    pub check_requests_dropped: Counter,
    // Event processing.
    pub events_processed: Counter,
    pub events_deferred: Counter,
    pub events_rejected: Counter,
    pub events_duplicate: Counter,
    pub event_write_conflicts: Counter,
    pub ttl_failures: Counter,
    pub event_batches: Counter,
    pub event_batch_seconds: Histogram,
    // Keepalives.
    pub keepalives: Counter,
    pub keepalive_failures: Family<StatusLabels, Counter>,
    pub registrations: Counter,
    pub deregistrations: Counter,
    pub keepalive_takeovers: Counter,
    // Cluster.
    pub cluster_members_alive: Gauge,
    pub cluster_members_dead: Gauge,
    pub store_reachable: Gauge,
    pub agent_sessions_shedding: Gauge,
    // Pipelines.
    pub handler_outcomes: Family<HandlerLabels, Counter>,
    pub filter_expression_errors: Counter,
    // Scheduler.
    pub checks_scheduled: Counter,
    // Round robin (one family per stage, labelled by namespace and subscription).
    pub rounds_scheduled: Family<RoundLabels, Counter>,
    pub rounds_delivered: Family<RoundLabels, Counter>,
    pub rounds_redelivered: Family<RoundLabels, Counter>,
    pub rounds_refused: Family<RoundLabels, Counter>,
    pub rounds_completed: Family<RoundLabels, Counter>,
    pub rounds_duplicated: Family<RoundLabels, Counter>,
    pub rounds_missed: Family<RoundLabels, Counter>,
    pub round_queue_depth: Family<RoundLabels, Gauge>,
    pub round_dispatch_seconds: Histogram,
    pub round_publish_errors: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoundLabels {
    pub namespace: String,
    pub subscription: String,
}

impl RoundLabels {
    pub fn new(namespace: &str, subscription: &str) -> RoundLabels {
        RoundLabels {
            namespace: namespace.to_owned(),
            subscription: subscription.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabels {
    /// `handled`, `filtered` or `failed`.
    pub outcome: String,
    /// `pipe`, `tcp`, `udp`…
    pub r#type: String,
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let mut registry = Registry::with_prefix("kensa");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method and status class",
            http_requests.clone(),
        );
        let logins = Counter::default();
        registry.register(
            "auth_logins",
            "Access tokens issued (logins and refreshes)",
            logins.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "auth_failures",
            "Failed password logins",
            auth_failures.clone(),
        );
        let rbac_denials = Counter::default();
        registry.register(
            "rbac_denials",
            "API requests refused by RBAC",
            rbac_denials.clone(),
        );
        let agent_sessions = Gauge::default();
        registry.register(
            "agent_sessions",
            "Agent WebSocket sessions connected to this backend",
            agent_sessions.clone(),
        );
        let agent_connects = Counter::default();
        registry.register(
            "agent_connects",
            "Agent sessions accepted",
            agent_connects.clone(),
        );
        let agent_session_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "agent_session_errors",
            "Agent sessions closed because of a protocol error, by reason",
            agent_session_errors.clone(),
        );
        let check_requests_sent = Counter::default();
        registry.register(
            "check_requests_sent",
            "Check requests queued to agent sessions",
            check_requests_sent.clone(),
        );
        let check_requests_dropped = Counter::default();
        registry.register(
            "check_requests_dropped",
            "Check requests dropped because an agent's queue was full",
            check_requests_dropped.clone(),
        );
        let events_processed = Counter::default();
        registry.register(
            "events_processed",
            "Check results merged and stored",
            events_processed.clone(),
        );
        let events_deferred = Counter::default();
        registry.register(
            "events_deferred",
            "Agent events not accepted because event processing was full (the agent re-sends)",
            events_deferred.clone(),
        );
        let events_rejected = Counter::default();
        registry.register(
            "events_rejected",
            "Invalid events refused",
            events_rejected.clone(),
        );
        let events_duplicate = Counter::default();
        registry.register(
            "events_duplicate",
            "Re-sent events recognized by their id and dropped",
            events_duplicate.clone(),
        );
        let event_write_conflicts = Counter::default();
        registry.register(
            "event_write_conflicts",
            "Event writes retried because another backend wrote the same event first",
            event_write_conflicts.clone(),
        );
        let ttl_failures = Counter::default();
        registry.register(
            "check_ttl_failures",
            "Failures raised because a check's TTL expired",
            ttl_failures.clone(),
        );
        let keepalive_takeovers = Counter::default();
        registry.register(
            "keepalive_takeovers",
            "Agents whose liveness this backend adopted from a dead cluster member",
            keepalive_takeovers.clone(),
        );
        let cluster_members_alive = Gauge::default();
        registry.register(
            "cluster_members_alive",
            "Cluster members this backend sees alive (itself included)",
            cluster_members_alive.clone(),
        );
        let cluster_members_dead = Gauge::default();
        registry.register(
            "cluster_members_dead",
            "Cluster members whose heartbeat stopped, not yet forgotten",
            cluster_members_dead.clone(),
        );
        let store_reachable = Gauge::default();
        registry.register(
            "store_reachable",
            "1 while this backend writes its heartbeat to the store, 0 when it lost the store",
            store_reachable.clone(),
        );
        let agent_sessions_shedding = Gauge::default();
        registry.register(
            "agent_sessions_shedding",
            "1 while agent sessions are shed and refused (the store is lost)",
            agent_sessions_shedding.clone(),
        );
        let event_batches = Counter::default();
        registry.register(
            "event_store_batches",
            "Store transactions committing event writes",
            event_batches.clone(),
        );
        let event_batch_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "event_store_batch_seconds",
            "Duration of event write transactions",
            event_batch_seconds.clone(),
        );
        let keepalives = Counter::default();
        registry.register("keepalives", "Keepalives received", keepalives.clone());
        let keepalive_failures = Family::<StatusLabels, Counter>::default();
        registry.register(
            "keepalive_failures",
            "Keepalive failure events raised, by status (1 warning, 2 critical)",
            keepalive_failures.clone(),
        );
        let registrations = Counter::default();
        registry.register(
            "agent_registrations",
            "New agents registered",
            registrations.clone(),
        );
        let deregistrations = Counter::default();
        registry.register(
            "agent_deregistrations",
            "Agents deregistered after their keepalive expired",
            deregistrations.clone(),
        );
        let handler_outcomes = Family::<HandlerLabels, Counter>::default();
        registry.register(
            "handler_outcomes",
            "Pipeline workflows run, by outcome and handler type",
            handler_outcomes.clone(),
        );
        let filter_expression_errors = Counter::default();
        registry.register(
            "filter_expression_errors",
            "Filter expressions that raised an error (treated as no match)",
            filter_expression_errors.clone(),
        );
        let checks_scheduled = Counter::default();
        registry.register(
            "checks_scheduled",
            "Check executions requested by the scheduler (per check fire)",
            checks_scheduled.clone(),
        );
        let round_family = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<RoundLabels, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let rounds_scheduled = round_family(
            &mut registry,
            "rounds_scheduled",
            "Round-robin rounds this backend scheduled and published (every backend publishes every round; the queue keeps one)",
        );
        let rounds_delivered = round_family(
            &mut registry,
            "rounds_delivered",
            "Round-robin rounds this backend handed to one of its agents (first deliveries and redeliveries)",
        );
        let rounds_redelivered = round_family(
            &mut registry,
            "rounds_redelivered",
            "Round-robin rounds handed to an agent again after an agent died, stalled or was cut off",
        );
        let rounds_refused = round_family(
            &mut registry,
            "rounds_refused",
            "Round-robin rounds an agent of this backend refused (busy with that check, execution queue full, shutting down); each goes to another agent",
        );
        let rounds_completed = round_family(
            &mut registry,
            "rounds_completed",
            "Round-robin rounds whose result this backend stored first",
        );
        let rounds_duplicated = round_family(
            &mut registry,
            "rounds_duplicated",
            "Second executions of an already completed round (stored on the round record, not handled)",
        );
        let rounds_missed = round_family(
            &mut registry,
            "rounds_missed",
            "Round-robin rounds with no result by their deadline (a round missed event was raised)",
        );
        let round_queue_depth = Family::<RoundLabels, Gauge>::default();
        registry.register(
            "round_queue_depth",
            "Round-robin rounds queued or in flight, by subscription",
            round_queue_depth.clone(),
        );
        let round_dispatch_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "round_dispatch_seconds",
            "From a round's scheduled tick to its request leaving for an agent",
            round_dispatch_seconds.clone(),
        );
        let round_publish_errors = Counter::default();
        registry.register(
            "round_publish_errors",
            "Failed attempts to publish a round to the queue (retried until the round's deadline)",
            round_publish_errors.clone(),
        );
        Telemetry {
            registry: Mutex::new(registry),
            http_requests,
            logins,
            auth_failures,
            rbac_denials,
            agent_sessions,
            agent_connects,
            agent_session_errors,
            check_requests_sent,
            check_requests_dropped,
            events_processed,
            events_deferred,
            events_rejected,
            events_duplicate,
            event_write_conflicts,
            keepalive_takeovers,
            cluster_members_alive,
            cluster_members_dead,
            store_reachable,
            agent_sessions_shedding,
            ttl_failures,
            event_batches,
            event_batch_seconds,
            keepalives,
            keepalive_failures,
            registrations,
            deregistrations,
            handler_outcomes,
            filter_expression_errors,
            checks_scheduled,
            rounds_scheduled,
            rounds_delivered,
            rounds_redelivered,
            rounds_refused,
            rounds_completed,
            rounds_duplicated,
            rounds_missed,
            round_queue_depth,
            round_dispatch_seconds,
            round_publish_errors,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("registry lock poisoned");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}
