//! The frames a simulated agent sends, shaped like a real agent's: an entity with system facts
//! and a check result naming its handlers, framed by `kensa-proto` (`<type>\n<json>`).
//!
//! Check results — and answers to check requests — are rendered from templates serialized once,
//! with a few slots filled per event (the event id, `check.executed`, and for answers `issued`
//! and `round`), because the load generator shares the machine's two
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
const ISSUED_SLOT: i64 = 4_107_000_000_002;
const TIMESTAMP_SLOT: i64 = 4_107_000_000_003;
const ROUND_SLOT: &str = "5107510d-round-slot";

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

/// A serialized frame with placeholders ("slots") cut out, rendered by pasting values back.
#[derive(Debug, Clone)]
struct Slotted {
    /// The text around the slots, in order of appearance: one more part than slots.
    parts: Vec<Vec<u8>>,
    /// For each slot in order of appearance, its index in the constructor's `slots`.
    order: Vec<usize>,
}

impl Slotted {
    /// Cuts `slots` out of `text`; each must occur exactly once.
    fn new(text: &str, slots: &[&str]) -> anyhow::Result<Slotted> {
        let mut found = Vec::with_capacity(slots.len());
        for (index, slot) in slots.iter().enumerate() {
            ensure!(
                text.matches(slot).count() == 1,
                "template slot {slot:?} must occur exactly once (does a name contain it?)"
            );
            let Some(at) = text.find(slot) else {
                bail!("template slot {slot:?} not found");
            };
            found.push((at, slot.len(), index));
        }
        found.sort_unstable();
        let mut parts = Vec::with_capacity(slots.len() + 1);
        let mut from = 0;
        for (at, len, _) in &found {
            parts.push(text.as_bytes()[from..*at].to_vec());
            from = at + len;
        }
        parts.push(text.as_bytes()[from..].to_vec());
        Ok(Slotted {
            parts,
            order: found.into_iter().map(|(_, _, index)| index).collect(),
        })
    }

    /// The frame with `values[i]` in place of the constructor's `slots[i]`.
    fn render(&self, values: &[&[u8]]) -> Vec<u8> {
        let size = self.parts.iter().map(Vec::len).sum::<usize>()
            + values.iter().map(|v| v.len()).sum::<usize>();
        let mut frame = Vec::with_capacity(size);
        for (part, index) in self.parts.iter().zip(&self.order) {
            frame.extend_from_slice(part);
            frame.extend_from_slice(values[*index]);
        }
        frame.extend_from_slice(self.parts.last().map(Vec::as_slice).unwrap_or_default());
        frame
    }
}

/// `<type>\n<json>` as a string.
fn framed(message_type: &str, value: &Value) -> anyhow::Result<String> {
    let mut text = String::from(message_type);
    text.push('\n');
    text.push_str(&serde_json::to_string(value)?);
    Ok(text)
}

fn hyphenated(id: Uuid) -> [u8; 36] {
    let mut buffer = [0u8; 36];
    id.hyphenated().encode_lower(&mut buffer);
    buffer
}

/// A pre-serialized `event` frame with slots for the id and `check.executed`.
#[derive(Debug, Clone)]
pub struct EventTemplate(Slotted);

impl EventTemplate {
    pub fn new(identity: &AgentIdentity, result: &CheckResult<'_>) -> anyhow::Result<Self> {
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
        let text = framed(kensa_proto::TYPE_EVENT, &event)?;
        let template = EventTemplate(Slotted::new(&text, &[ID_SLOT, &EXECUTED_SLOT.to_string()])?);
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
        self.0
            .render(&[&hyphenated(id), executed.to_string().as_bytes()])
    }
}

/// The answer to a check request as a real agent sends it — the request's check
/// configuration with its result, `issued` and `round` — pre-serialized per (check
/// configuration, status) so that answering thousands of requests per second costs the load
/// generator a few copies instead of building and serializing an event each time.
#[derive(Debug, Clone)]
pub struct AnswerTemplate {
    /// The configuration the template was built from: a request with another one needs a new
    /// template.
    pub config: kensa_types::resources::check::CheckConfig,
    slotted: Slotted,
}

impl AnswerTemplate {
    pub fn new(
        identity: &AgentIdentity,
        config: &kensa_types::resources::check::CheckConfig,
        status: u32,
        output: &str,
    ) -> anyhow::Result<Self> {
        let mut check =
            serde_json::to_value(kensa_types::resources::check::Check::from(config.clone()))?;
        check["status"] = json!(status);
        check["output"] = json!(output);
        check["executed"] = json!(EXECUTED_SLOT);
        check["issued"] = json!(ISSUED_SLOT);
        check["round"] = json!(ROUND_SLOT);
        check["processed_by"] = json!(identity.name);
        let event = json!({
            "id": ID_SLOT,
            "timestamp": TIMESTAMP_SLOT,
            "metadata": {"namespace": identity.namespace},
            "entity": identity.entity(),
            "check": check,
        });
        let text = framed(kensa_proto::TYPE_EVENT, &event)?;
        let slotted = Slotted::new(
            &text,
            &[
                ID_SLOT,
                &TIMESTAMP_SLOT.to_string(),
                &EXECUTED_SLOT.to_string(),
                &ISSUED_SLOT.to_string(),
                &format!("\"{ROUND_SLOT}\""),
            ],
        )?;
        let template = AnswerTemplate {
            config: config.clone(),
            slotted,
        };
        let probe = template.render(Uuid::new_v4(), 1, 1, "default/probe@1");
        AgentMessage::decode(&probe).with_context(|| {
            format!(
                "the answer template of check {:?} does not decode",
                config.metadata.name
            )
        })?;
        Ok(template)
    }

    /// The answer with a fresh `id`, executed at `executed`, to the request `issued` for
    /// `round`.
    pub fn render(&self, id: Uuid, executed: i64, issued: i64, round: &str) -> Vec<u8> {
        let executed = executed.to_string();
        let round = serde_json::to_string(round).unwrap_or_else(|_| "\"\"".to_owned());
        self.slotted.render(&[
            &hyphenated(id),
            executed.as_bytes(),
            executed.as_bytes(),
            issued.to_string().as_bytes(),
            round.as_bytes(),
        ])
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
    fn answers_carry_the_request_round_and_times() {
        let config: kensa_types::resources::check::CheckConfig = serde_json::from_value(json!({
            "metadata": {"name": "scale-03", "namespace": "default"},
            "command": "true",
            "interval": 2,
            "subscriptions": ["loadgen-group-03"],
            "publish": true,
        }))
        .unwrap();
        for (status, output) in [(0, "OK: canned"), (2, "CRITICAL: \"quoted\"")] {
            let template = AnswerTemplate::new(&identity(), &config, status, output).unwrap();
            let id = Uuid::new_v4();
            let round = "default/scale-03@1700000000500";
            let frame = template.render(id, 1_700_000_001, 1_700_000_000, round);
            let AgentMessage::Event(event) = AgentMessage::decode(&frame).unwrap() else {
                panic!("not an event frame");
            };
            assert_eq!(event.id, Some(id));
            assert_eq!(event.timestamp, 1_700_000_001);
            let check = event.check.unwrap();
            assert_eq!(check.metadata.name, "scale-03");
            assert_eq!((check.status, check.output.as_str()), (status, output));
            assert_eq!(
                (check.executed, check.issued),
                (1_700_000_001, 1_700_000_000)
            );
            assert_eq!(check.round, round);
            assert_eq!(check.interval, 2);
            assert_eq!(check.processed_by, "loadgen-0007");
        }
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
