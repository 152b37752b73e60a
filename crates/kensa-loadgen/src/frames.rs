//! The frames a simulated agent sends, shaped like a real agent's: an entity with system facts
//! and a check result naming its handlers, framed by `kensa-proto` (`<type>\n<json>`).
//!
//! Check results are rendered from a template serialized once, with two slots filled per event
//! — the event id and `check.executed` — because the load generator shares the machine's two
//! cores with the backend it measures: building and serializing a JSON tree per event would
//! take CPU away from the thing being measured. Every template is decoded once through
//! `kensa_proto::AgentMessage::decode` when it is built, so a template the backend would not
//! read fails the run before it starts instead of producing a benchmark of rejections.

use anyhow::{bail, ensure, Context};
use kensa_proto::AgentMessage;
use kensa_types::resources::event::Event;
use serde_json::{json, Value};
use uuid::Uuid;

/// Placeholders in the serialized template: each must occur exactly once in it.
const ID_SLOT: &str = "5107510d-0000-4000-8000-0000510d510d";
const EXECUTED_SLOT: i64 = 4_107_000_000_001;

/// Who a simulated agent claims to be.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    pub name: String,
    pub namespace: String,
    pub subscriptions: Vec<String>,
}

impl AgentIdentity {
    /// The entity a real agent sends with every event (system facts of a small Linux host).
    pub fn entity(&self) -> Value {
        json!({
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {"kensa-loadgen": "true"},
            },
            "entity_class": "agent",
            "subscriptions": self.subscriptions,
            "user": "agent",
            "system": {
                "hostname": self.name,
                "os": "linux",
                "platform": "debian",
                "platform_family": "debian",
                "platform_version": "12.8",
                "arch": "amd64",
                "network": {"interfaces": [
                    {"name": "lo", "addresses": ["127.0.0.1/8", "::1/128"]},
                    {"name": "eth0", "mac": "52:54:00:12:34:56", "addresses": ["10.0.0.10/24"]},
                ]},
            },
        })
    }

    /// A keepalive frame: the warning timeout travels in `check.timeout`, the critical one in
    /// `check.ttl` (0: none), as the real agent sends them.
    pub fn keepalive(&self, interval: u64, warning: u64, critical: u64) -> anyhow::Result<Vec<u8>> {
        let event = json!({
            "id": Uuid::new_v4().to_string(),
            "timestamp": crate::client::unix_now(),
            "entity": self.entity(),
            "check": {
                "metadata": {"name": "keepalive", "namespace": self.namespace},
                "interval": interval,
                "timeout": warning,
                "ttl": critical,
            },
            "metadata": {"namespace": self.namespace},
        });
        let event: Event = serde_json::from_value(event).context("building a keepalive")?;
        Ok(AgentMessage::Keepalive(Box::new(event)).encode())
    }
}

/// What one simulated check reports.
#[derive(Debug, Clone)]
pub struct CheckResult<'a> {
    pub check: &'a str,
    pub status: u32,
    pub output: &'a str,
    /// The check's `interval` (seconds), which the backend uses for TTL and history.
    pub interval: u32,
    pub handlers: &'a [String],
}

/// A pre-serialized `event` frame with slots for the id and `check.executed`.
#[derive(Debug, Clone)]
pub struct EventTemplate {
    /// Up to the id.
    head: Vec<u8>,
    /// Between the id and `executed`.
    middle: Vec<u8>,
    /// After `executed`.
    tail: Vec<u8>,
}

impl EventTemplate {
    pub fn new(identity: &AgentIdentity, result: &CheckResult<'_>) -> anyhow::Result<Self> {
        // `serde_json`'s `preserve_order` keeps this key order, so the id comes first.
        let event = json!({
            "id": ID_SLOT,
            "check": {
                "metadata": {"name": result.check, "namespace": identity.namespace},
                "command": format!("check-{}", result.check),
                "interval": result.interval,
                "subscriptions": identity.subscriptions,
                "handlers": result.handlers,
                "status": result.status,
                "output": result.output,
                "executed": EXECUTED_SLOT,
                "duration": 0.002,
            },
            "entity": identity.entity(),
            "metadata": {"namespace": identity.namespace},
        });
        let mut text = String::from(kensa_proto::TYPE_EVENT);
        text.push('\n');
        text.push_str(&serde_json::to_string(&event)?);
        let (head, rest) = split_once_exactly(&text, ID_SLOT)?;
        let (middle, tail) = split_once_exactly(rest, &EXECUTED_SLOT.to_string())?;
        let template = EventTemplate {
            head: head.as_bytes().to_vec(),
            middle: middle.as_bytes().to_vec(),
            tail: tail.as_bytes().to_vec(),
        };
        let probe = template.render(Uuid::new_v4(), 1);
        AgentMessage::decode(&probe).with_context(|| {
            format!(
                "the event template of check {:?} does not decode",
                result.check
            )
        })?;
        Ok(template)
    }

    /// The frame of one result with a fresh `id`, executed at `executed` (Unix seconds).
    pub fn render(&self, id: Uuid, executed: i64) -> Vec<u8> {
        let mut frame =
            Vec::with_capacity(self.head.len() + self.middle.len() + self.tail.len() + 64);
        frame.extend_from_slice(&self.head);
        frame.extend_from_slice(
            id.hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        );
        frame.extend_from_slice(&self.middle);
        frame.extend_from_slice(executed.to_string().as_bytes());
        frame.extend_from_slice(&self.tail);
        frame
    }
}

fn split_once_exactly<'a>(text: &'a str, slot: &str) -> anyhow::Result<(&'a str, &'a str)> {
    ensure!(
        text.matches(slot).count() == 1,
        "template slot {slot:?} must occur exactly once (does a name contain it?)"
    );
    match text.split_once(slot) {
        Some(parts) => Ok(parts),
        None => bail!("template slot {slot:?} not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> AgentIdentity {
        AgentIdentity {
            name: "loadgen-0007".into(),
            namespace: "default".into(),
            subscriptions: vec!["loadgen".into()],
        }
    }

    #[test]
    fn rendered_results_decode_with_their_own_id_and_time() {
        let handlers = ["sink".to_owned()];
        let cases = [
            ("check-00", 0, "OK", &handlers[..]),
            (
                "check-13",
                2,
                "CRITICAL: \"quoted\"\nsecond line",
                &handlers[..],
            ),
            ("check-02", 1, "", &[][..]),
        ];
        for (check, status, output, handlers) in cases {
            let result = CheckResult {
                check,
                status,
                output,
                interval: 10,
                handlers,
            };
            let template = EventTemplate::new(&identity(), &result).unwrap();
            let id = Uuid::new_v4();
            let frame = template.render(id, 1_700_000_123);
            let AgentMessage::Event(event) = AgentMessage::decode(&frame).unwrap() else {
                panic!("{check}: not an event frame");
            };
            assert_eq!(event.id, Some(id), "{check}");
            let decoded = event.check.as_ref().expect("check");
            assert_eq!(decoded.metadata.name, check);
            assert_eq!(decoded.status, status, "{check}");
            assert_eq!(decoded.output, output, "{check}");
            assert_eq!(decoded.executed, 1_700_000_123, "{check}");
            assert_eq!(decoded.handlers, handlers, "{check}");
            assert_eq!(event.entity.as_ref().unwrap().metadata.name, "loadgen-0007");
        }
    }

    #[test]
    fn a_name_that_contains_a_slot_is_refused() {
        let mut identity = identity();
        identity.name = format!("x{EXECUTED_SLOT}");
        let result = CheckResult {
            check: "c",
            status: 0,
            output: "OK",
            interval: 10,
            handlers: &[],
        };
        let err = EventTemplate::new(&identity, &result).unwrap_err();
        assert!(err.to_string().contains("exactly once"), "{err}");
    }

    #[test]
    fn keepalives_carry_the_timeouts() {
        let frame = identity().keepalive(20, 120, 180).unwrap();
        let AgentMessage::Keepalive(event) = AgentMessage::decode(&frame).unwrap() else {
            panic!("not a keepalive frame");
        };
        let check = event.check.unwrap();
        assert_eq!(check.metadata.name, "keepalive");
        assert_eq!((check.interval, check.timeout, check.ttl), (20, 120, 180));
    }
}
