//! Kensa's work queue for round-robin checks: the scheduler publishes one message per scheduled
//! round to the round-robin group of a subscription ([`Group`]: namespace + subscription), and
//! the backend sessions of that subscription's agents pull from the group's shared consumer, so
//! each round is run by one agent. One [`WorkQueue`] interface, two implementations that pass
//! one conformance suite: in-process (the single-node default, persisted in the embedded
//! [`Store`]) and NATS JetStream (scale-out, several backends share one stream).
//!
//! The contract callers rely on:
//! - **At least once.** A published message is delivered until it is acked, terminated or
//!   exhausted. Any delivery may be a redelivery (`Delivery::attempt > 1`), and a late ack from
//!   a consumer whose lock had already expired still removes the message, so results must be
//!   deduplicated by the caller (key them by check and scheduled tick).
//! - **One holder at a time.** A delivered message is locked to the caller of
//!   [`Consumer::next`] that received it for the group's `ack_wait`; no other consumer of the
//!   group receives it while the lock holds. [`Delivery::progress`] extends the lock by another
//!   `ack_wait`; [`Delivery::nak`] releases it with a redelivery delay.
//! - **Ack-wait expiry.** A delivery that is neither acked, nacked, terminated nor progressed
//!   within `ack_wait` (including one whose `Delivery` was dropped, or one delivered to a
//!   `next` call that was cancelled before returning it) is redelivered to any consumer of the
//!   group, with `attempt` increased by one.
//! - **Exhaustion.** After `max_deliver` deliveries the message is dropped instead of being
//!   delivered again (on its ack-wait expiry or on a nak), counted in
//!   [`QueueStats::exhausted`] and logged. JetStream detail: the server is configured with
//!   unlimited deliveries (a work-queue stream keeps messages the server stopped delivering
//!   forever), and a consumer that receives delivery `max_deliver + 1` acks it away and keeps
//!   waiting; until some consumer pulls it, such a message still counts in [`WorkQueue::depth`].
//! - **Dedup.** Publishing a `msg_id` that is already queued or in flight in the same group,
//!   or that was published within the dedup window ([`DEDUP_WINDOW`], 2 minutes), stores
//!   nothing and returns `duplicate: true`. In-process the window runs from the message's
//!   removal (ack, term, exhaustion); on JetStream it runs from the first publish (the
//!   stream's `duplicate_window`). Ids are scoped per group.
//! - **Fairness.** Consumers waiting in `next` are served in the order they started waiting;
//!   callers that keep one `next_batch` open each share the messages in proportion.
//! - **Restart.** In-process: every publish is written to the store before it returns, removal
//!   deletes it, and a new queue on the same store delivers every message that was not removed
//!   again (as a new delivery; a delivery in flight at the stop is not counted in `attempt`).
//!   JetStream: the file-storage stream and its durable consumers survive a server restart,
//!   and the client reconnects by itself; the same [`WorkQueue`] object keeps working, and a
//!   message in flight at the restart is redelivered after its `ack_wait`.
//!
//! Code map: [`in_process`] and [`jetstream`] are the implementations; `conformance` is the
//! suite both must pass (behind the `testsuite` feature).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kensa_store::{Store, StoreError};
use tokio::sync::mpsc;

mod group_commit;
pub mod in_process;
pub mod jetstream;

#[cfg(any(test, feature = "testsuite"))]
pub mod conformance;

/// How long a removed (in-process) or published (JetStream) `msg_id` keeps being recognised as
/// a duplicate.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(120);

/// The longest accepted `msg_id`, in bytes.
pub const MAX_MSG_ID_LEN: usize = 512;

/// A consumer group: the round-robin pool of one subscription in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Group {
    pub namespace: String,
    pub subscription: String,
}

impl Group {
    pub fn new(namespace: impl Into<String>, subscription: impl Into<String>) -> Group {
        Group {
            namespace: namespace.into(),
            subscription: subscription.into(),
        }
    }

    fn validate(&self) -> Result<(), QueueError> {
        if self.subscription.is_empty() {
            return Err(QueueError::Invalid(format!(
                "group \"{self}\": subscription must not be empty"
            )));
        }
        Ok(())
    }
}

/// `namespace/subscription`, the form log lines and errors use.
impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.subscription)
    }
}

/// The outcome of [`WorkQueue::publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The id was already known (queued, in flight, or inside the dedup window): nothing was
    /// stored.
    pub duplicate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerSettings {
    /// Redelivery when a delivered message is neither acked, nacked nor progressed for this long.
    pub ack_wait: Duration,
    /// Deliveries after which the message is dropped (removed from the queue, counted in
    /// `QueueStats::exhausted`, logged) instead of being delivered again. >= 1.
    pub max_deliver: u32,
}

impl ConsumerSettings {
    fn validate(&self, group: &Group) -> Result<(), QueueError> {
        if self.ack_wait < Duration::from_millis(1) {
            return Err(QueueError::Invalid(format!(
                "consumer settings of group \"{group}\": ack_wait must be at least 1ms"
            )));
        }
        if self.max_deliver == 0 {
            return Err(QueueError::Invalid(format!(
                "consumer settings of group \"{group}\": max_deliver must be >= 1"
            )));
        }
        Ok(())
    }
}

/// The queue's domain errors; driver and store errors are translated at the boundary.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    #[error("invalid {0}")]
    Invalid(String),
    #[error("queue error: {0}")]
    Internal(String),
}

impl From<StoreError> for QueueError {
    fn from(err: StoreError) -> QueueError {
        match err {
            StoreError::Unavailable(_) => QueueError::Unavailable(err.to_string()),
            other => QueueError::Internal(other.to_string()),
        }
    }
}

/// Counters since this queue object was created (one per process in practice).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Publishes that stored a message.
    pub published: u64,
    /// Publishes refused as duplicates.
    pub duplicates: u64,
    /// Deliveries handed to callers of `next`, redeliveries included.
    pub delivered: u64,
    /// Deliveries with `attempt > 1`.
    pub redelivered: u64,
    pub acked: u64,
    pub nacked: u64,
    /// Messages removed by [`Delivery::term`].
    pub terminated: u64,
    /// Messages dropped after `max_deliver` deliveries.
    pub exhausted: u64,
}

/// The live counters behind [`QueueStats`], shared by a queue and everything it hands out.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    published: AtomicU64,
    duplicates: AtomicU64,
    delivered: AtomicU64,
    redelivered: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    terminated: AtomicU64,
    exhausted: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn published(&self, duplicate: bool) {
        Counters::bump(if duplicate {
            &self.duplicates
        } else {
            &self.published
        });
    }

    pub(crate) fn delivered(&self, attempt: u32) {
        Counters::bump(&self.delivered);
        if attempt > 1 {
            Counters::bump(&self.redelivered);
        }
    }

    pub(crate) fn acked(&self) {
        Counters::bump(&self.acked);
    }

    pub(crate) fn nacked(&self) {
        Counters::bump(&self.nacked);
    }

    pub(crate) fn terminated(&self) {
        Counters::bump(&self.terminated);
    }

    pub(crate) fn exhausted(&self) {
        Counters::bump(&self.exhausted);
    }

    pub(crate) fn snapshot(&self) -> QueueStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        QueueStats {
            published: load(&self.published),
            duplicates: load(&self.duplicates),
            delivered: load(&self.delivered),
            redelivered: load(&self.redelivered),
            acked: load(&self.acked),
            nacked: load(&self.nacked),
            terminated: load(&self.terminated),
            exhausted: load(&self.exhausted),
        }
    }
}

#[async_trait]
pub trait WorkQueue: Send + Sync + 'static {
    /// Publishes `payload` to `group`. A second publish with the same `msg_id` (per group) while
    /// the first is still queued or within the dedup window (>= 2 min) after it was acked stores
    /// nothing and returns `duplicate: true`.
    async fn publish(
        &self,
        group: &Group,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<Published, QueueError>;

    /// The group's shared consumer (created on first use, same settings expected for a group;
    /// JetStream: a durable pull consumer). Any number of callers, in any number of processes,
    /// may call `next` on consumers of the same group: each message is locked by one of them.
    /// Asking again with other settings changes them for the whole group (last call wins).
    async fn consumer(
        &self,
        group: &Group,
        settings: ConsumerSettings,
    ) -> Result<Arc<dyn Consumer>, QueueError>;

    /// Messages in the group not yet acked (queued + in flight), for metrics.
    async fn depth(&self, group: &Group) -> Result<u64, QueueError>;

    /// Counters since this queue object was created.
    fn stats(&self) -> QueueStats;

    /// Health probe for /health.
    async fn ping(&self) -> Result<(), QueueError>;

    /// "in-process" or "nats-jetstream"
    fn kind(&self) -> &'static str;
}

#[async_trait]
pub trait Consumer: Send + Sync {
    /// Waits up to `wait` for one message and locks it to the caller. `Ok(None)` on timeout.
    /// Not cancel-safe: a message delivered to a call that is dropped before it returns stays
    /// locked and is redelivered after `ack_wait`.
    async fn next(&self, wait: Duration) -> Result<Option<Delivery>, QueueError>;

    /// Waits up to `wait` for up to `max` messages, each locked to the caller as by
    /// [`Consumer::next`] and sent to `deliveries` as it arrives; returns how many were sent.
    /// A delivery the receiver is no longer there for is released at once (nak, no delay).
    /// Returns early only on an error after which nothing was sent.
    ///
    /// The way for a caller with many free workers: JetStream serves it as one request,
    /// handing a message to the open requests of all callers in turn. Many one-message
    /// requests ([`Consumer::next`]) instead wait in line until they expire, and when they
    /// outnumber what the queue delivers within their expiry, the callers that asked first
    /// keep being served and the others never are.
    async fn next_batch(
        &self,
        max: usize,
        wait: Duration,
        deliveries: &mpsc::Sender<Delivery>,
    ) -> Result<usize, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut sent = 0;
        while sent < max {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                break;
            }
            match self.next(remaining).await {
                Ok(Some(delivery)) => {
                    hand_over(delivery, deliveries).await;
                    sent += 1;
                }
                Ok(None) => break,
                Err(err) if sent == 0 => return Err(err),
                Err(_) => break,
            }
        }
        Ok(sent)
    }
}

/// Sends `delivery` to its receiver, or releases it at once when the receiver is gone.
pub(crate) async fn hand_over(delivery: Delivery, deliveries: &mpsc::Sender<Delivery>) {
    if let Err(mpsc::error::SendError(unwanted)) = deliveries.send(delivery).await {
        let msg_id = unwanted.msg_id.clone();
        if let Err(err) = unwanted.nak(Duration::ZERO).await {
            tracing::debug!(
                msg_id,
                "releasing a delivery nobody waits for failed: {err}"
            );
        }
    }
}

/// How a [`Delivery`] reports its outcome to the implementation that produced it.
#[async_trait]
pub(crate) trait Acker: Send + Sync {
    async fn ack(&self) -> Result<(), QueueError>;
    async fn nak(&self, delay: Duration) -> Result<(), QueueError>;
    async fn progress(&self) -> Result<(), QueueError>;
    async fn term(&self) -> Result<(), QueueError>;
}

/// One delivery of a message, locked to its receiver until acked, nacked, terminated or until
/// `ack_wait` passes without progress. Dropping it without settling it lets the lock expire.
pub struct Delivery {
    pub msg_id: String,
    pub payload: Bytes,
    /// 1 for the first delivery, 2 for the first redelivery, ...
    pub attempt: u32,
    acker: Box<dyn Acker>,
}

impl Delivery {
    pub(crate) fn new(
        msg_id: String,
        payload: Bytes,
        attempt: u32,
        acker: Box<dyn Acker>,
    ) -> Delivery {
        Delivery {
            msg_id,
            payload,
            attempt,
            acker,
        }
    }

    /// Removes the message. Accepted even after the lock expired (the message may then have
    /// been delivered again meanwhile).
    pub async fn ack(self) -> Result<(), QueueError> {
        self.acker.ack().await
    }

    /// Releases the lock: the message is delivered again (to any consumer) after `delay`, or
    /// dropped as exhausted if this was its `max_deliver`-th delivery.
    pub async fn nak(self, delay: Duration) -> Result<(), QueueError> {
        self.acker.nak(delay).await
    }

    /// Restarts the `ack_wait` timer of the lock.
    pub async fn progress(&self) -> Result<(), QueueError> {
        self.acker.progress().await
    }

    /// Removes the message without it counting as done (counted in `QueueStats::terminated`).
    pub async fn term(self) -> Result<(), QueueError> {
        self.acker.term().await
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("msg_id", &self.msg_id)
            .field("payload_len", &self.payload.len())
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

fn validate_msg_id(msg_id: &str) -> Result<(), QueueError> {
    if msg_id.is_empty() {
        return Err(QueueError::Invalid("msg_id: must not be empty".into()));
    }
    if msg_id.len() > MAX_MSG_ID_LEN {
        return Err(QueueError::Invalid(format!(
            "msg_id: longer than {MAX_MSG_ID_LEN} bytes"
        )));
    }
    if msg_id.chars().any(char::is_control) {
        return Err(QueueError::Invalid(format!(
            "msg_id {msg_id:?}: must not contain control characters"
        )));
    }
    Ok(())
}

/// Opens the configured queue: `None` → the in-process queue persisted in `store`;
/// `Some("nats://…")` (or `tls://…`) → NATS JetStream using the stream named `stream`
/// (created if missing). Anything else is `Invalid`.
pub async fn connect(
    url: Option<&str>,
    stream: &str,
    store: Arc<dyn Store>,
) -> Result<Arc<dyn WorkQueue>, QueueError> {
    match url {
        None => Ok(Arc::new(in_process::InProcessQueue::open(store).await?)),
        Some(url) if url.starts_with("nats://") || url.starts_with("tls://") => Ok(Arc::new(
            jetstream::JetStreamQueue::connect(url, stream).await?,
        )),
        Some(url) => Err(QueueError::Invalid(format!(
            "queue url \"{url}\": expected nats://host:port or tls://host:port"
        ))),
    }
}
