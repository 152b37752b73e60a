//! The library half of `kensactl`, Kensa's sensuctl-compatible command line client: a typed,
//! blocking client for the core/v2 REST API ([`client`]), the sensuctl configuration files
//! ([`config`]), the parser for resource files given to `create`/`delete` ([`documents`]), the
//! addressing and preparation of resources for writing ([`resources`]) and the output formats
//! ([`output`]). The `kensactl` binary (`src/bin/kensactl/`) is only argument parsing and
//! orchestration on top of these.
//!
//! Invariants: only [`client`] talks HTTP (`-f https://...` sources are fetched through it, so
//! TLS settings apply), and nothing here prints; the binary decides what reaches the terminal.
//! Everything that is "per kind" goes through [`kensa_types::Kind`] or one of the tables in
//! [`output`] and [`resources`], never through a hand-written branch per resource.

pub mod client;
pub mod config;
pub mod documents;
pub mod output;
pub mod resources;

pub use client::{Client, ClientError, ClientOptions, Credentials, ListOptions, Scope, Tokens};
pub use config::{Config, ConfigError};
pub use documents::{Document, DocumentError};
pub use output::Format;
pub use resources::{PlannedResource, ResourceRef};
