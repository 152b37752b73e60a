//! Handlers (`type: Handler`): what the backend does with an event at the end of a pipeline —
//! pipe it to a command, write it to a TCP/UDP socket, or fan out to a set of handlers.

use serde::{Deserialize, Serialize};

use super::common::Secret;
use super::{field, joined, label_fields, nullable, Resource};
use crate::meta::NAME;
use crate::{ObjectMeta, ResourceError};

/// The handler types Sensu knows.
pub const TYPE_PIPE: &str = "pipe";
pub const TYPE_TCP: &str = "tcp";
pub const TYPE_UDP: &str = "udp";
pub const TYPE_SET: &str = "set";

/// The timeout tcp/udp handlers use when `timeout` is 0.
pub const DEFAULT_SOCKET_TIMEOUT: u32 = 60;

/// `type: Handler` (reference §2.6).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Handler {
    pub metadata: ObjectMeta,
    /// `pipe`, `tcp`, `udp` or `set`.
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub handler_type: String,
    /// Mutator applied before handling (legacy pipeline only; empty means `json`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mutator: String,
    /// Command of a pipe handler; the (mutated) event is its stdin.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// Seconds (0: none for pipe, [`DEFAULT_SOCKET_TIMEOUT`] for tcp/udp).
    pub timeout: u32,
    /// Target of a tcp/udp handler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<HandlerSocket>,
    /// Members of a handler set.
    #[serde(with = "nullable")]
    pub handlers: Vec<String>,
    /// Filters applied first (legacy pipeline only).
    #[serde(with = "nullable")]
    pub filters: Vec<String>,
    #[serde(with = "nullable")]
    pub env_vars: Vec<String>,
    #[serde(with = "nullable")]
    pub runtime_assets: Vec<String>,
    #[serde(with = "nullable")]
    pub secrets: Vec<Secret>,
}

/// `handler.socket`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HandlerSocket {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
    pub port: u32,
}

impl Handler {
    /// The timeout in effect, with the tcp/udp default applied.
    pub fn effective_timeout(&self) -> u32 {
        match self.handler_type.as_str() {
            TYPE_TCP | TYPE_UDP if self.timeout == 0 => DEFAULT_SOCKET_TIMEOUT,
            _ => self.timeout,
        }
    }

    fn validate_type(&self) -> Result<(), ResourceError> {
        match self.handler_type.as_str() {
            "" => Err(ResourceError::invalid_field("type", "empty handler type")),
            TYPE_PIPE if self.command.trim().is_empty() => {
                Err(ResourceError::invalid_field("command", "missing command"))
            }
            TYPE_PIPE | TYPE_SET => Ok(()),
            TYPE_TCP | TYPE_UDP => match &self.socket {
                None => Err(ResourceError::invalid_field(
                    "socket",
                    "tcp and udp handlers need a valid socket",
                )),
                Some(socket) if socket.host.is_empty() => Err(ResourceError::invalid_field(
                    "socket.host",
                    "socket host undefined",
                )),
                Some(socket) if socket.port == 0 => Err(ResourceError::invalid_field(
                    "socket.port",
                    "socket port undefined",
                )),
                Some(_) => Ok(()),
            },
            other => Err(ResourceError::invalid_field(
                "type",
                format!("unknown handler type: {other}"),
            )),
        }
    }
}

impl Resource for Handler {
    fn validate(&self) -> Result<(), ResourceError> {
        self.metadata.validate_name_as("handler", &NAME)?;
        self.validate_type()?;
        self.metadata.require_namespace()
    }

    fn fields(&self) -> Vec<(String, String)> {
        let mut out = vec![
            field("handler.name", &self.metadata.name),
            field("handler.namespace", &self.metadata.namespace),
            field("handler.filters", joined(&self.filters)),
            field("handler.handlers", joined(&self.handlers)),
            field("handler.mutator", &self.mutator),
            field("handler.type", &self.handler_type),
        ];
        label_fields("handler", &self.metadata, &mut out);
        out
    }
}
