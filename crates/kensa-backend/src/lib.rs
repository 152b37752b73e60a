//! `kensa-backend` as a library: the services the binary assembles (see ARCHITECTURE.md), and
//! [`testing::TestServer`] for end-to-end tests.

pub mod agentd;
pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod eventd;
pub mod keepalived;
pub mod local_agent;
pub mod pipelined;
pub mod rounds;
pub mod scheduler;
pub mod server;
pub mod telemetry;
pub mod testing;
pub mod tls;
pub mod view;
pub mod web;

/// Store kind of login sessions (refresh tokens); never exposed through the API.
pub const SESSIONS_KIND: &str = "kensa.sessions";
/// Store kind of the backend's own settings (initialized marker, token signing key).
pub const CONFIG_KIND: &str = "kensa.config";
