//! The far end of the backend's `keepalive` handler: records every keepalive incident the
//! backend raises (and every resolution), so a benchmark can count false alerts — in a run
//! where every simulated agent stays alive, any keepalive event with a non-zero status that
//! reaches a handler is one.
//!
//! The bench script points a `tcp` handler named `keepalive` (the handler the backend uses for
//! keepalive events by default), filtered by `is_incident`, at this listener. Unlike the event
//! sink (`sink.rs`), which only counts, this one parses each delivery: there are few of them,
//! and what matters is whose alert it was and when.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::stats::round3;

/// Deliveries read at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// Largest delivery read (an event with a big entity is a few KiB).
const MAX_PAYLOAD: u64 = 1024 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Alerts listed in the report (all are counted).
const SAMPLES: usize = 20;

/// One handled keepalive event.
#[derive(Debug, Clone)]
struct Delivery {
    at_s: f64,
    entity: String,
    check: String,
    status: i64,
    output: String,
}

#[derive(Debug, Default)]
struct Received {
    deliveries: Vec<Delivery>,
    /// Payloads that were not an event.
    invalid: u64,
}

/// A running alert listener; stops accepting when dropped.
pub struct AlertSink {
    address: SocketAddr,
    /// Appended to by connection tasks; locked for one push at a time.
    received: Arc<Mutex<Received>>,
    accept_loop: tokio::task::JoinHandle<()>,
    t0: Instant,
}

impl AlertSink {
    /// Binds `address`; delivery times are reported in seconds since `t0`.
    pub async fn bind(address: SocketAddr, t0: Instant) -> anyhow::Result<AlertSink> {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the keepalive alert listener on {address}"))?;
        let address = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Received::default()));
        let accept_loop = tokio::spawn(accept(listener, received.clone(), t0));
        Ok(AlertSink {
            address,
            received,
            accept_loop,
            t0,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Counts of alerts and resolutions, distinct entities alerted, and the first alerts.
    pub fn report(&self) -> Value {
        let received = self.received.lock().expect("alerts");
        let keepalives: Vec<&Delivery> = received
            .deliveries
            .iter()
            .filter(|d| d.check == "keepalive")
            .collect();
        let alerts: Vec<&&Delivery> = keepalives.iter().filter(|d| d.status != 0).collect();
        let mut entities: Vec<&str> = alerts.iter().map(|d| d.entity.as_str()).collect();
        entities.sort_unstable();
        entities.dedup();
        json!({
            "address": self.address.to_string(),
            "deliveries": received.deliveries.len(),
            "keepalive_alerts": alerts.len(),
            "keepalive_resolutions": keepalives.len() - alerts.len(),
            "entities_alerted": entities.len(),
            "other_checks": received.deliveries.len() - keepalives.len(),
            "invalid": received.invalid,
            "first_alerts": alerts.iter().take(SAMPLES).map(|d| json!({
                "at_s": round3(d.at_s),
                "entity": d.entity,
                "status": d.status,
                "output": d.output,
            })).collect::<Vec<_>>(),
            "t0_elapsed_s": round3(self.t0.elapsed().as_secs_f64()),
        })
    }
}

impl Drop for AlertSink {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

async fn accept(listener: TcpListener, received: Arc<Mutex<Received>>, t0: Instant) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let received = received.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut payload = Vec::new();
            let read = tokio::time::timeout(
                READ_TIMEOUT,
                (&mut stream).take(MAX_PAYLOAD).read_to_end(&mut payload),
            )
            .await;
            let at_s = t0.elapsed().as_secs_f64();
            let delivery = match read {
                Ok(Ok(_)) => parse(&payload, at_s),
                _ => None,
            };
            let mut received = received.lock().expect("alerts");
            match delivery {
                Some(delivery) => received.deliveries.push(delivery),
                None => received.invalid += 1,
            }
        });
    }
}

/// The fields of a handled event that identify an alert.
fn parse(payload: &[u8], at_s: f64) -> Option<Delivery> {
    let event: Value = serde_json::from_slice(payload).ok()?;
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    Some(Delivery {
        at_s,
        entity: text(&event["entity"]["metadata"]["name"]),
        check: text(&event["check"]["metadata"]["name"]),
        status: event["check"]["status"].as_i64()?,
        output: text(&event["check"]["output"]).chars().take(200).collect(),
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use super::*;

    #[tokio::test]
    async fn counts_keepalive_alerts_and_resolutions() {
        let sink = AlertSink::bind("127.0.0.1:0".parse().unwrap(), Instant::now())
            .await
            .unwrap();
        let event = |entity: &str, check: &str, status: i64| {
            json!({
                "entity": {"metadata": {"name": entity}},
                "check": {"metadata": {"name": check}, "status": status, "output": "late"},
            })
            .to_string()
        };
        let payloads = [
            event("a", "keepalive", 1),
            event("a", "keepalive", 0),
            event("b", "keepalive", 2),
            event("a", "keepalive", 1),
            event("c", "disk", 2),
            "not json".to_owned(),
        ];
        for payload in &payloads {
            let mut stream = TcpStream::connect(sink.address()).await.unwrap();
            stream.write_all(payload.as_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let report = loop {
            let report = sink.report();
            let done = report["deliveries"].as_u64().unwrap() + report["invalid"].as_u64().unwrap();
            if done == 6 || Instant::now() > deadline {
                break report;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(report["keepalive_alerts"], 3, "{report}");
        assert_eq!(report["keepalive_resolutions"], 1, "{report}");
        assert_eq!(report["entities_alerted"], 2, "{report}");
        assert_eq!(report["other_checks"], 1, "{report}");
        assert_eq!(report["invalid"], 1, "{report}");
        assert_eq!(report["first_alerts"][0]["output"], "late", "{report}");
    }
}
