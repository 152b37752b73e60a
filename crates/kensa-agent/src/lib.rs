//! `kensa-agent` as a library: the agent runs the checks the backend sends for its
//! subscriptions, keeps the backend informed of its liveness (keepalives), and delivers every
//! result through a durable on-disk outbox. See ARCHITECTURE.md for the map.
//!
//! Code map (start at `agent.rs`):
//! - `config.rs` — flags > `KENSA_AGENT_*` env > YAML file > defaults, validated.
//! - `agent.rs` — assembles and stops the services.
//! - `transport.rs` — the backend connection: backoff, sessions, keepalives, heartbeat.
//! - `outbox.rs` — the durable outbox every event goes through.
//! - `checks.rs` (+ `dedup.rs`) — check requests: dedup, admission, execution, hooks.
//! - `assets/` — runtime assets: build selection, download, SHA-512, unpack, cache.
//! - `allow_list.rs` — the `allow-list` of commands checks and hooks may run.
//! - `exec_env.rs` — the environment a command gets (assets' paths, `env_vars`).
//! - `entity.rs` — the agent's entity and keepalives.
//! - `metrics/`, `system.rs`, `inputs/` — metric extraction, host facts, local inputs.

pub mod agent;
pub mod allow_list;
pub mod assets;
pub mod checks;
pub mod config;
pub mod dedup;
pub mod entity;
pub mod exec_env;
pub mod inputs;
pub mod metrics;
pub mod outbox;
pub mod system;
pub mod transport;

pub use agent::{Agent, AgentError};
pub use config::AgentConfig;
