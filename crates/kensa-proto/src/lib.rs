//! The agent ↔ backend protocol. An agent opens a WebSocket to the backend's agent listener
//! (path `/`) with Sensu's handshake headers and Basic credentials; after that every message is
//! one binary frame `<type> '\n' <JSON body>` (Sensu's framing, reference §1.5) — JSON only.
//!
//! What Kensa adds to Sensu's message set, and why:
//! - `ack` (backend → agent): the ids of events the backend has durably stored (or refused for
//!   good). The agent keeps every event in its on-disk outbox until it is acknowledged, so
//!   nothing is lost across disconnects and restarts; the backend drops duplicates by event id.
//! - `CheckRequest::round`: an opaque id per (check, scheduled round). The agent deduplicates on
//!   `(check, round)` instead of Sensu's wall-clock `issued` seconds (reference §8.7).
//! - `refused` (agent → backend): a round-robin request the agent will not run (busy with that
//!   check, its execution queue full, shutting down), so the backend hands the round to another
//!   agent at once instead of waiting for the round's deadline.
//!
//! Invariant: this crate is pure — types, encoding and decoding; no I/O.

use std::collections::BTreeMap;

use kensa_types::resources::asset::Asset;
use kensa_types::resources::check::CheckConfig;
use kensa_types::resources::entity::Entity;
use kensa_types::resources::event::Event;
use kensa_types::resources::hook::HookConfig;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Handshake headers (Sensu's names, reference §1.2).
pub const HEADER_AGENT_NAME: &str = "Sensu-AgentName";
pub const HEADER_NAMESPACE: &str = "Sensu-Namespace";
pub const HEADER_SUBSCRIPTIONS: &str = "Sensu-Subscriptions";
pub const HEADER_USER: &str = "Sensu-User";
/// The protocol revision the agent speaks; the backend refuses revisions it does not know.
pub const HEADER_PROTOCOL: &str = "Kensa-Protocol";
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame either side accepts. An agent caps check output well below this (see
/// `kensa-exec`), so only a broken or hostile peer sends more; the receiver then closes the
/// session with a logged reason.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// A check execution request (Sensu's `CheckRequest` plus `round`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckRequest {
    pub config: CheckConfig,
    /// The runtime assets the check names, resolved by the backend.
    pub assets: Vec<Asset>,
    /// The hooks `check_hooks` names, resolved by the backend.
    pub hooks: Vec<HookConfig>,
    /// When the request was issued (Unix seconds).
    pub issued: i64,
    /// Unique per (check, proxy entity, scheduled round); the agent runs a given round once.
    pub round: String,
    /// Assets of each hook, by hook name.
    pub hook_assets: BTreeMap<String, Vec<Asset>>,
}

impl CheckRequest {
    /// The key under which an agent deduplicates and guards in-progress executions: the check
    /// name, plus `/<proxy entity>` for proxy requests (Sensu's rule, reference §2.4).
    pub fn execution_key(&self) -> String {
        match self.config.proxy_entity_name.as_str() {
            "" => self.config.metadata.name.clone(),
            proxy => format!("{}/{}", self.config.metadata.name, proxy),
        }
    }
}

/// The backend's acknowledgement of events the agent sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ack {
    /// Events stored (or recognized as duplicates of stored ones): delete them from the outbox.
    pub ids: Vec<Uuid>,
    /// Events refused for good (invalid): delete them too, and log the reason.
    pub rejected: Vec<Rejected>,
    /// Non-zero: the backend was overloaded and left some of the events sent before this
    /// frame unacknowledged. Those still unacknowledged this many milliseconds after the frame
    /// arrived should be sent again then (with some jitter), instead of after the agent's ack
    /// timeout. Absent from older backends' frames (0).
    #[serde(skip_serializing_if = "is_zero")]
    pub retry_after_ms: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rejected {
    pub id: Uuid,
    pub reason: String,
}

/// An agent's refusal of a round-robin check request ([`AgentMessage::Refused`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Refused {
    /// The request's `round`.
    pub round: String,
    /// The request's execution key ([`CheckRequest::execution_key`]).
    pub check: String,
    /// Why, for the backend's log (`check execution still in progress`, …).
    pub reason: String,
}

/// Agent → backend.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentMessage {
    /// A keepalive: the agent's entity and a `keepalive` check carrying the warning timeout in
    /// `check.timeout` and the critical one in `check.ttl` (reference §2.3). Never queued.
    Keepalive(Box<Event>),
    /// A check result, hook result, StatsD flush or locally submitted event. Always has an
    /// `id`; the backend acknowledges it with [`Ack`].
    Event(Box<Event>),
    /// A round-robin request this agent will not run. Best effort: not queued, not re-sent (the
    /// backend's deadline for the round covers a lost refusal).
    Refused(Refused),
}

/// Backend → agent.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendMessage {
    CheckRequest(Box<CheckRequest>),
    /// The stored entity configuration (subscriptions, labels…), which wins over the agent's
    /// flags; `None` when the backend has no entity yet (the agent keeps its local one).
    EntityConfig(Option<Box<Entity>>),
    Ack(Ack),
}

pub const TYPE_KEEPALIVE: &str = "keepalive";
pub const TYPE_EVENT: &str = "event";
pub const TYPE_REFUSED: &str = "refused";
pub const TYPE_CHECK_REQUEST: &str = "check_request";
pub const TYPE_ENTITY_CONFIG: &str = "entity_config";
pub const TYPE_ACK: &str = "ack";

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES} byte limit")]
    TooLarge(usize),
    #[error("invalid message: no newline after the message type")]
    NoType,
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("invalid {kind} message: {error}")]
    Body {
        kind: &'static str,
        error: serde_json::Error,
    },
}

fn frame<T: Serialize + ?Sized>(kind: &str, body: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(kind.as_bytes());
    out.push(b'\n');
    serde_json::to_writer(&mut out, body).expect("protocol bodies always serialize");
    out
}

/// Splits a frame into its message type and JSON body (for receivers that parse the body
/// themselves), enforcing [`MAX_FRAME_BYTES`].
pub fn split_frame(frame: &[u8]) -> Result<(&str, &[u8]), DecodeError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge(frame.len()));
    }
    let newline = frame
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(DecodeError::NoType)?;
    let kind = std::str::from_utf8(&frame[..newline])
        .map_err(|_| DecodeError::UnknownType(String::from_utf8_lossy(&frame[..newline]).into()))?;
    Ok((kind, &frame[newline + 1..]))
}

fn body<T: for<'de> Deserialize<'de>>(kind: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|error| DecodeError::Body { kind, error })
}

impl AgentMessage {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            AgentMessage::Keepalive(event) => frame(TYPE_KEEPALIVE, event),
            AgentMessage::Event(event) => frame(TYPE_EVENT, event),
            AgentMessage::Refused(refused) => frame(TYPE_REFUSED, refused),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<AgentMessage, DecodeError> {
        match split_frame(bytes)? {
            (TYPE_KEEPALIVE, rest) => Ok(AgentMessage::Keepalive(body(TYPE_KEEPALIVE, rest)?)),
            (TYPE_EVENT, rest) => Ok(AgentMessage::Event(body(TYPE_EVENT, rest)?)),
            (TYPE_REFUSED, rest) => Ok(AgentMessage::Refused(body(TYPE_REFUSED, rest)?)),
            (other, _) => Err(DecodeError::UnknownType(other.to_owned())),
        }
    }
}

impl BackendMessage {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            BackendMessage::CheckRequest(request) => frame(TYPE_CHECK_REQUEST, request),
            BackendMessage::EntityConfig(entity) => frame(TYPE_ENTITY_CONFIG, entity),
            BackendMessage::Ack(ack) => frame(TYPE_ACK, ack),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<BackendMessage, DecodeError> {
        match split_frame(bytes)? {
            (TYPE_CHECK_REQUEST, rest) => Ok(BackendMessage::CheckRequest(body(
                TYPE_CHECK_REQUEST,
                rest,
            )?)),
            (TYPE_ENTITY_CONFIG, rest) => Ok(BackendMessage::EntityConfig(body(
                TYPE_ENTITY_CONFIG,
                rest,
            )?)),
            (TYPE_ACK, rest) => Ok(BackendMessage::Ack(body(TYPE_ACK, rest)?)),
            (other, _) => Err(DecodeError::UnknownType(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_frames() {
        let mut event = Event::default();
        event.id = Some(Uuid::new_v4());
        event.timestamp = 1_700_000_000;
        let message = AgentMessage::Event(Box::new(event));
        let bytes = message.encode();
        assert!(bytes.starts_with(b"event\n{"));
        assert_eq!(AgentMessage::decode(&bytes).unwrap(), message);

        let mut request = CheckRequest::default();
        request.config.metadata.name = "disk".into();
        request.config.proxy_entity_name = "router-1".into();
        request.round = "disk@1700000000000".into();
        assert_eq!(request.execution_key(), "disk/router-1");
        let message = BackendMessage::CheckRequest(Box::new(request));
        assert_eq!(BackendMessage::decode(&message.encode()).unwrap(), message);

        let message = AgentMessage::Refused(Refused {
            round: "default/ping@1700000000000#zone-a".into(),
            check: "ping".into(),
            reason: "check execution still in progress".into(),
        });
        assert!(message.encode().starts_with(b"refused\n{"));
        assert_eq!(AgentMessage::decode(&message.encode()).unwrap(), message);

        let message = BackendMessage::EntityConfig(None);
        assert_eq!(message.encode(), b"entity_config\nnull");
        assert_eq!(BackendMessage::decode(&message.encode()).unwrap(), message);
    }

    #[test]
    fn bad_frames_are_named() {
        let cases: &[(&[u8], &str)] = &[
            (b"no newline here", "no newline"),
            (b"bogus\n{}", "unknown message type \"bogus\""),
            (b"event\n{not json", "invalid event message"),
            (b"keepalive\n[1,2]", "invalid keepalive message"),
        ];
        for (frame, expected) in cases {
            let err = AgentMessage::decode(frame).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
        let huge = vec![b'x'; MAX_FRAME_BYTES + 1];
        assert!(matches!(
            AgentMessage::decode(&huge),
            Err(DecodeError::TooLarge(_))
        ));
    }
}
