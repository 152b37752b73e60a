//! The NATS JetStream [`WorkQueue`], for several backends sharing one queue. Uses only what
//! nats-server 2.9.10 offers (async-nats is built without its `server_2_10`+ features).
//!
//! Layout: one file-storage stream with work-queue retention (a message is deleted when acked)
//! named after the `stream` argument, subjects `<stream>.rr.<namespace>.<subscription>` with
//! both names escaped into subject-safe tokens ([`subject_token`]), and a duplicate window of
//! [`DEDUP_WINDOW`]. Each group has one durable pull consumer (name from [`durable_name`]:
//! readable prefix + hash) filtered on its subject; every backend's callers pull from it with
//! pull requests: [`Consumer::next`] asks for one message, [`Consumer::next_batch`] for
//! several. The server keeps the open requests in line and serves them in turn: a batch
//! request that got a message goes to the back of the line, so callers that each keep one
//! batch request open share the messages in proportion (one-message requests instead only
//! move when served or expired, and a caller whose requests keep expiring can starve).
//!
//! Server settings and why:
//! - `max_deliver` is left unlimited on the server: with work-queue retention the server keeps
//!   a message it stopped delivering forever. The client enforces the limit instead: a
//!   delivery with `attempt > max_deliver` is acked away and counted as exhausted, and a nak
//!   of the last allowed delivery removes the message at once.
//! - `max_waiting` is 4096 (server default 512, not editable later): every idle agent session
//!   keeps one pull request open.
//! - Pull requests carry no idle heartbeat: `next` bounds every pull by its own deadline, and
//!   the server rejects heartbeats above half the expiry, which short waits would hit.
//! - Publishes carry `Nats-Msg-Id = <durable>:<msg_id>`: the server deduplicates per stream,
//!   so the id is scoped by the group's durable name (which contains no `:`).
//! - Acks, naks, progress and terms are double acks (the server confirms them), so an error
//!   means the outcome may not have been recorded.
//!
//! Reconnects: the client reconnects by itself; consumer handles are only names, so they stay
//! valid across a server restart. Any failed pull or create drops the cached handle, and the
//! next use looks the consumer (and if needed the stream) up again, creating what is missing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::Acker as NatsAcker;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self as js, AckKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{
    validate_msg_id, Acker, Consumer, ConsumerSettings, Counters, Delivery, Group, Published,
    QueueError, QueueStats, WorkQueue, DEDUP_WINDOW,
};

/// Outstanding pull requests a group's consumer accepts (one per idle caller of `next`).
pub const MAX_WAITING_PULLS: i64 = 4096;
/// How long past its deadline `next` waits for the server's answer to a pull before giving up
/// on it (a message delivered to an abandoned pull is redelivered after `ack_wait`).
const PULL_GRACE: Duration = Duration::from_millis(500);
/// A pull shorter than this is not worth a round trip.
const MIN_PULL: Duration = Duration::from_millis(10);
/// Pause after a failed pull or lookup before trying again within the same `next` call.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

pub struct JetStreamQueue {
    client: async_nats::Client,
    context: js::Context,
    stream: String,
    /// One entry per group this process used; handles are shared by all its consumers.
    groups: Mutex<HashMap<Group, Arc<GroupConsumer>>>,
    counters: Arc<Counters>,
}

/// A group's durable consumer as seen from this process.
struct GroupConsumer {
    context: js::Context,
    stream: String,
    group: Group,
    durable: String,
    subject: String,
    counters: Arc<Counters>,
    /// The settings of the last `consumer` call (last call wins).
    settings: Mutex<ConsumerSettings>,
    /// The cached server handle; `None` after an error or a settings change, so the next use
    /// looks the consumer up (or creates/updates it) again.
    handle: Mutex<Option<PullConsumer>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unavailable(what: impl std::fmt::Display, err: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(format!("nats jetstream: {what}: {err}"))
}

/// Escapes `value` into one NATS subject token: `[A-Za-z0-9_-]` stay, every other byte
/// becomes `=XX` (hex), and the empty string becomes `=` (tokens cannot be empty; `=` alone
/// is never produced otherwise). Subjects cannot contain `.`, `*`, `>` or whitespace.
pub fn subject_token(value: &str) -> String {
    if value.is_empty() {
        return "=".to_string();
    }
    let mut token = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            token.push(byte as char);
        } else {
            token.push_str(&format!("={byte:02X}"));
        }
    }
    token
}

/// The durable consumer name of `group`: `rr_<namespace>_<subscription>_<hash>`, with the
/// names reduced to at most 20 characters of `[A-Za-z0-9-]` for readability and 12 hex digits
/// of SHA-256 over both names for uniqueness.
pub fn durable_name(group: &Group) -> String {
    let readable = |value: &str| -> String {
        value
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(20)
            .collect()
    };
    let mut hasher = Sha256::new();
    hasher.update(group.namespace.as_bytes());
    hasher.update([0]);
    hasher.update(group.subscription.as_bytes());
    let hash: String = hasher.finalize()[..6]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!(
        "rr_{}_{}_{hash}",
        readable(&group.namespace),
        readable(&group.subscription)
    )
}

fn group_subject(stream: &str, group: &Group) -> String {
    format!(
        "{stream}.rr.{}.{}",
        subject_token(&group.namespace),
        subject_token(&group.subscription)
    )
}

fn validate_stream_name(stream: &str) -> Result<(), QueueError> {
    if stream.is_empty()
        || stream.len() > 64
        || !stream
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
    {
        return Err(QueueError::Invalid(format!(
            "stream name \"{stream}\": use 1 to 64 characters of [A-Za-z0-9_-]"
        )));
    }
    Ok(())
}

async fn ensure_stream(context: &js::Context, name: &str) -> Result<(), QueueError> {
    context
        .get_or_create_stream(stream::Config {
            name: name.to_string(),
            subjects: vec![format!("{name}.rr.>")],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            duplicate_window: DEDUP_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|err| unavailable(format!("stream {name}"), err))?;
    Ok(())
}

impl JetStreamQueue {
    /// Connects to `url` and creates the stream `stream` if it does not exist (an existing
    /// stream is used as it is).
    pub async fn connect(url: &str, stream: &str) -> Result<JetStreamQueue, QueueError> {
        validate_stream_name(stream)?;
        let client = async_nats::ConnectOptions::new()
            .name("kensa-queue")
            .connect(url)
            .await
            .map_err(|err| unavailable(format!("connecting to {url}"), err))?;
        let context = js::new(client.clone());
        ensure_stream(&context, stream).await?;
        Ok(JetStreamQueue {
            client,
            context,
            stream: stream.to_string(),
            groups: Mutex::new(HashMap::new()),
            counters: Arc::new(Counters::default()),
        })
    }

    /// The stream name this queue uses.
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    async fn publish_once(
        &self,
        subject: &str,
        nats_msg_id: &str,
        payload: Bytes,
    ) -> Result<bool, (PublishErrorKind, String)> {
        let message = js::message::PublishMessage::build()
            .payload(payload)
            .message_id(nats_msg_id);
        let pending = self
            .context
            .send_publish(subject.to_string(), message)
            .await
            .map_err(|err| (err.kind(), err.to_string()))?;
        let ack = pending.await.map_err(|err| (err.kind(), err.to_string()))?;
        Ok(ack.duplicate)
    }
}

#[async_trait]
impl WorkQueue for JetStreamQueue {
    async fn publish(
        &self,
        group: &Group,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<Published, QueueError> {
        group.validate()?;
        validate_msg_id(msg_id)?;
        let subject = group_subject(&self.stream, group);
        let nats_msg_id = format!("{}:{msg_id}", durable_name(group));
        let mut outcome = self
            .publish_once(&subject, &nats_msg_id, payload.clone())
            .await;
        if let Err((kind, _)) = &outcome {
            // The stream may be gone (server restarted without its store) or the server may
            // have been briefly away; the id makes a retry safe.
            if matches!(kind, PublishErrorKind::StreamNotFound) {
                ensure_stream(&self.context, &self.stream).await?;
            }
            outcome = self.publish_once(&subject, &nats_msg_id, payload).await;
        }
        match outcome {
            Ok(duplicate) => {
                self.counters.published(duplicate);
                Ok(Published { duplicate })
            }
            Err((_, err)) => Err(unavailable(format!("publishing to {subject}"), err)),
        }
    }

    async fn consumer(
        &self,
        group: &Group,
        settings: ConsumerSettings,
    ) -> Result<Arc<dyn Consumer>, QueueError> {
        group.validate()?;
        settings.validate(group)?;
        let group_consumer = {
            let mut groups = lock(&self.groups);
            groups
                .entry(group.clone())
                .or_insert_with(|| {
                    Arc::new(GroupConsumer {
                        context: self.context.clone(),
                        stream: self.stream.clone(),
                        group: group.clone(),
                        durable: durable_name(group),
                        subject: group_subject(&self.stream, group),
                        counters: self.counters.clone(),
                        settings: Mutex::new(settings),
                        handle: Mutex::new(None),
                    })
                })
                .clone()
        };
        {
            let mut current = lock(&group_consumer.settings);
            if *current != settings {
                *current = settings;
                *lock(&group_consumer.handle) = None;
            }
        }
        // Create (or update) the durable now, so configuration errors surface here.
        group_consumer.handle().await?;
        Ok(Arc::new(JetStreamConsumer {
            group: group_consumer,
            client: self.client.clone(),
        }))
    }

    async fn depth(&self, group: &Group) -> Result<u64, QueueError> {
        // With work-queue retention the stream holds exactly the messages not yet acked, so
        // the subject's message count is queued + in flight, with or without a consumer.
        let subject = group_subject(&self.stream, group);
        let stream = self
            .context
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|err| unavailable(format!("stream {}", self.stream), err))?;
        let mut subjects = stream
            .info_with_subjects(&subject)
            .await
            .map_err(|err| unavailable(format!("stream {} info", self.stream), err))?;
        let mut depth = 0u64;
        while let Some(entry) = subjects.next().await {
            let (name, count) =
                entry.map_err(|err| unavailable(format!("stream {} info", self.stream), err))?;
            if name == subject {
                depth += count as u64;
            }
        }
        Ok(depth)
    }

    fn stats(&self) -> QueueStats {
        self.counters.snapshot()
    }

    async fn ping(&self) -> Result<(), QueueError> {
        // Account info would do, but async-nats 0.51 cannot parse 2.9.10's answer; the stream's
        // info proves the connection, JetStream and the stream in one request.
        self.context
            .get_stream(&self.stream)
            .await
            .map(|_| ())
            .map_err(|err| unavailable(format!("stream {}", self.stream), err))
    }

    fn kind(&self) -> &'static str {
        "nats-jetstream"
    }
}

impl GroupConsumer {
    fn settings(&self) -> ConsumerSettings {
        *lock(&self.settings)
    }

    fn config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.durable.clone()),
            description: Some(format!("kensa round robin {}", self.group)),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.settings().ack_wait,
            // Unlimited on the server; enforced by the client (see the module docs).
            max_deliver: -1,
            filter_subject: self.subject.clone(),
            max_waiting: MAX_WAITING_PULLS,
            ..Default::default()
        }
    }

    /// The cached handle, or a fresh one from creating/updating the durable.
    async fn handle(&self) -> Result<PullConsumer, QueueError> {
        if let Some(handle) = lock(&self.handle).clone() {
            return Ok(handle);
        }
        let config = self.config();
        let created = match self
            .context
            .create_consumer_on_stream(config.clone(), &self.stream)
            .await
        {
            Ok(consumer) => Ok(consumer),
            Err(first) => {
                // The stream may be missing (server restarted without its store): create it
                // and try once more.
                tracing::debug!(group = %self.group, "creating consumer failed: {first}");
                ensure_stream(&self.context, &self.stream).await?;
                self.context
                    .create_consumer_on_stream(config, &self.stream)
                    .await
            }
        };
        let consumer =
            created.map_err(|err| unavailable(format!("consumer {}", self.durable), err))?;
        *lock(&self.handle) = Some(consumer.clone());
        Ok(consumer)
    }

    fn forget_handle(&self) {
        *lock(&self.handle) = None;
    }

    /// One pull request for one message, bounded by `expires` (plus a grace for the answer).
    async fn pull_one(
        &self,
        consumer: &PullConsumer,
        expires: Duration,
    ) -> Result<Option<js::Message>, QueueError> {
        let mut batch = consumer
            .batch()
            .max_messages(1)
            .expires(expires)
            .messages()
            .await
            .map_err(|err| unavailable(format!("pulling from {}", self.durable), err))?;
        match tokio::time::timeout(expires + PULL_GRACE, batch.next()).await {
            Ok(Some(Ok(message))) => Ok(Some(message)),
            Ok(Some(Err(err))) => Err(unavailable(format!("pulling from {}", self.durable), err)),
            Ok(None) | Err(_) => Ok(None),
        }
    }

    /// Turns a pulled message into a delivery, or removes it if it is past `max_deliver`.
    async fn accept(&self, message: js::Message) -> Result<Option<Delivery>, QueueError> {
        let (attempt, stream_sequence) = {
            let info = message
                .info()
                .map_err(|err| QueueError::Internal(format!("jetstream message info: {err}")))?;
            (
                u32::try_from(info.delivered).unwrap_or(u32::MAX),
                info.stream_sequence,
            )
        };
        let scope = format!("{}:", self.durable);
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|value| value.as_str())
            .map(|id| id.strip_prefix(&scope).unwrap_or(id).to_string())
            .unwrap_or_else(|| format!("stream-seq-{stream_sequence}"));
        let (message, acker) = message.split();
        let settings = self.settings();
        if attempt > settings.max_deliver {
            self.drop_exhausted(&acker, &msg_id, attempt - 1).await;
            return Ok(None);
        }
        self.counters.delivered(attempt);
        Ok(Some(Delivery::new(
            msg_id.clone(),
            message.payload,
            attempt,
            Box::new(JetStreamAcker {
                acker,
                attempt,
                max_deliver: settings.max_deliver,
                counters: self.counters.clone(),
                group: self.group.clone(),
                msg_id_for_logs: msg_id,
            }),
        )))
    }

    async fn drop_exhausted(&self, acker: &NatsAcker, msg_id: &str, deliveries: u32) {
        // An ack is what removes a message from a work-queue stream.
        if let Err(err) = acker.double_ack_with(AckKind::Ack).await {
            tracing::warn!(group = %self.group, msg_id, "removing an exhausted message failed: {err}");
            return;
        }
        self.counters.exhausted();
        tracing::warn!(
            group = %self.group,
            msg_id,
            attempts = deliveries,
            "queue message dropped after its last delivery (max_deliver reached)"
        );
    }
}

struct JetStreamConsumer {
    group: Arc<GroupConsumer>,
    client: async_nats::Client,
}

#[async_trait]
impl Consumer for JetStreamConsumer {
    async fn next(&self, wait: Duration) -> Result<Option<Delivery>, QueueError> {
        let group = &self.group;
        let deadline = Instant::now() + wait;
        let mut last_error: Option<QueueError> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < MIN_PULL {
                break;
            }
            let pulled = match group.handle().await {
                Ok(consumer) => {
                    let started = Instant::now();
                    let pulled = group.pull_one(&consumer, remaining).await;
                    if matches!(pulled, Ok(None)) && started.elapsed() < remaining / 2 {
                        // The pull ended early without a message (e.g. the connection
                        // dropped); do not spin.
                        pause_until(deadline, RETRY_PAUSE).await;
                    }
                    pulled
                }
                Err(err) => Err(err),
            };
            match pulled {
                Ok(Some(message)) => {
                    if let Some(delivery) = group.accept(message).await? {
                        return Ok(Some(delivery));
                    }
                    last_error = None;
                }
                Ok(None) => last_error = None,
                Err(err) => {
                    tracing::debug!(group = %group.group, "pull failed: {err}");
                    group.forget_handle();
                    last_error = Some(err);
                    pause_until(deadline, RETRY_PAUSE).await;
                }
            }
        }
        if let Some(err) = last_error {
            return Err(err);
        }
        self.connected()?;
        Ok(None)
    }

    /// One pull request for up to `max` messages (see the trait: the server serves the open
    /// requests of all backends in turn).
    async fn next_batch(
        &self,
        max: usize,
        wait: Duration,
        deliveries: &mpsc::Sender<Delivery>,
    ) -> Result<usize, QueueError> {
        let group = &self.group;
        let started = Instant::now();
        if max == 0 || wait < MIN_PULL {
            return Ok(0);
        }
        let failed = |err: QueueError| {
            tracing::debug!(group = %group.group, "pull failed: {err}");
            group.forget_handle();
            err
        };
        let consumer = group.handle().await.map_err(failed)?;
        let mut batch = consumer
            .batch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(|err| failed(unavailable(format!("pulling from {}", group.durable), err)))?;
        let give_up = started + wait + PULL_GRACE;
        let (mut received, mut sent) = (0, 0);
        while received < max {
            match tokio::time::timeout_at(give_up, batch.next()).await {
                Ok(Some(Ok(message))) => {
                    received += 1;
                    if let Some(delivery) = group.accept(message).await? {
                        crate::hand_over(delivery, deliveries).await;
                        sent += 1;
                    }
                }
                Ok(Some(Err(err))) => {
                    let err = failed(unavailable(format!("pulling from {}", group.durable), err));
                    if sent == 0 {
                        pause_until(started + wait, RETRY_PAUSE).await;
                        return Err(err);
                    }
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        if received == 0 && started.elapsed() < wait / 2 {
            // The request ended early without a message (e.g. the connection dropped): say
            // why, or at least do not let the caller spin.
            self.connected()?;
            pause_until(started + wait, RETRY_PAUSE).await;
        }
        Ok(sent)
    }
}

impl JetStreamConsumer {
    /// `Err` when the client is not connected (a pull that ended without a message then
    /// says why).
    fn connected(&self) -> Result<(), QueueError> {
        if self.client.connection_state() == async_nats::connection::State::Connected {
            Ok(())
        } else {
            Err(QueueError::Unavailable(
                "nats jetstream: not connected".into(),
            ))
        }
    }
}

async fn pause_until(deadline: Instant, pause: Duration) {
    tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
}

struct JetStreamAcker {
    acker: NatsAcker,
    attempt: u32,
    max_deliver: u32,
    counters: Arc<Counters>,
    group: Group,
    msg_id_for_logs: String,
}

impl JetStreamAcker {
    async fn send(&self, kind: AckKind, what: &str) -> Result<(), QueueError> {
        self.acker
            .double_ack_with(kind)
            .await
            .map_err(|err| unavailable(format!("{what} in group {}", self.group), err))
    }
}

#[async_trait]
impl Acker for JetStreamAcker {
    async fn ack(&self) -> Result<(), QueueError> {
        self.send(AckKind::Ack, "ack").await?;
        self.counters.acked();
        Ok(())
    }

    async fn nak(&self, delay: Duration) -> Result<(), QueueError> {
        if self.attempt >= self.max_deliver {
            // Its last allowed delivery: remove it now rather than after one more delivery.
            self.send(AckKind::Ack, "nak").await?;
            self.counters.nacked();
            self.counters.exhausted();
            tracing::warn!(
                group = %self.group,
                msg_id = self.msg_id_for_logs,
                attempts = self.attempt,
                "queue message dropped after its last delivery (max_deliver reached)"
            );
            return Ok(());
        }
        let delay = (!delay.is_zero()).then_some(delay);
        self.send(AckKind::Nak(delay), "nak").await?;
        self.counters.nacked();
        Ok(())
    }

    async fn progress(&self) -> Result<(), QueueError> {
        self.send(AckKind::Progress, "progress").await
    }

    async fn term(&self) -> Result<(), QueueError> {
        self.send(AckKind::Term, "term").await?;
        self.counters.terminated();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::conformance::Fixture;

    /// The NATS server of the shared tests, or `None` (and a skip notice) when unset.
    fn nats_url() -> Option<String> {
        match std::env::var("KENSA_TEST_NATS_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                eprintln!("skipping: KENSA_TEST_NATS_URL is not set");
                None
            }
        }
    }

    /// A stream name no other test (or test run) uses.
    fn unique_stream() -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!(
            "kensa_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            nanos % 1_000_000_000
        )
    }

    /// Deletes the test's stream when dropped, also when the case panicked.
    struct StreamGuard {
        url: String,
        stream: String,
    }

    impl Drop for StreamGuard {
        fn drop(&mut self) {
            let (url, stream) = (self.url.clone(), self.stream.clone());
            // Drop cannot await; a helper thread with its own runtime does the deletion.
            let deleted = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
                    js::new(client)
                        .delete_stream(&stream)
                        .await
                        .map_err(|e| e.to_string())
                        .map(|_| ())
                })
            })
            .join();
            if let Ok(Err(err)) = deleted {
                eprintln!("deleting test stream {}: {err}", self.stream);
            }
        }
    }

    /// A fresh queue on its own stream of the shared server; reopening connects again.
    async fn fixture() -> Option<Fixture> {
        let url = nats_url()?;
        let stream = unique_stream();
        let queue = JetStreamQueue::connect(&url, &stream)
            .await
            .expect("connect to KENSA_TEST_NATS_URL");
        let guard = StreamGuard {
            url: url.clone(),
            stream: stream.clone(),
        };
        Some(Fixture::new(
            Arc::new(queue),
            move || {
                let (url, stream) = (url.clone(), stream.clone());
                Box::pin(async move {
                    Arc::new(
                        JetStreamQueue::connect(&url, &stream)
                            .await
                            .expect("reconnect"),
                    ) as Arc<dyn WorkQueue>
                })
            },
            async move { drop(guard) },
        ))
    }

    crate::queue_conformance_tests!(fixture);

    #[test]
    fn subject_tokens_are_safe_and_distinct() {
        let cases = [
            ("default", "default"),
            ("", "="),
            ("a.b", "a=2Eb"),
            ("x*>", "x=2A=3E"),
            ("with space\t", "with=20space=09"),
            ("=", "=3D"),
            ("é", "=C3=A9"),
        ];
        for (value, token) in cases {
            assert_eq!(subject_token(value), token, "{value:?}");
        }
    }

    #[test]
    fn durable_names_are_valid_and_distinct() {
        let plain = durable_name(&Group::new("default", "linux"));
        assert!(plain.starts_with("rr_default_linux_"), "{plain}");
        // Groups that read the same once reduced still get different names.
        let dotted = durable_name(&Group::new("default", "lin.ux"));
        assert_ne!(plain, dotted);
        let shifted = durable_name(&Group::new("defaultl", "inux"));
        assert_ne!(durable_name(&Group::new("default", "linux")), shifted);
        let long = durable_name(&Group::new("n".repeat(300), "s.* >/\\".repeat(50)));
        assert!(long.len() <= 64, "{long}");
        assert!(
            long.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "{long}"
        );
    }

    #[tokio::test]
    async fn a_url_that_is_not_nats_is_invalid() {
        let store: Arc<dyn kensa_store::Store> = Arc::new(
            kensa_store::sqlite::SqliteStore::open_in_memory()
                .await
                .unwrap(),
        );
        match crate::connect(Some("http://localhost:4222"), "kensa", store).await {
            Err(QueueError::Invalid(message)) => {
                assert!(message.contains("http://localhost:4222"), "{message}")
            }
            Err(other) => panic!("expected Invalid, got {other}"),
            Ok(_) => panic!("accepted an http url"),
        }
        match JetStreamQueue::connect("nats://127.0.0.1:1", "bad.name").await {
            Err(QueueError::Invalid(_)) => {}
            Err(other) => panic!("expected Invalid, got {other}"),
            Ok(_) => panic!("accepted a stream name with a dot"),
        }
    }

    /// A nats-server of this test's own, killed (SIGKILL) when dropped.
    struct OwnServer {
        child: Option<Child>,
        port: u16,
        store_dir: std::path::PathBuf,
    }

    impl OwnServer {
        fn start(port: u16, store_dir: &std::path::Path) -> OwnServer {
            let child = Command::new("/usr/sbin/nats-server")
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(store_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start /usr/sbin/nats-server");
            OwnServer {
                child: Some(child),
                port,
                store_dir: store_dir.to_path_buf(),
            }
        }

        fn url(&self) -> String {
            format!("nats://127.0.0.1:{}", self.port)
        }

        fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        fn restart(&mut self) {
            self.kill();
            *self = OwnServer::start(self.port, &self.store_dir.clone());
        }
    }

    impl Drop for OwnServer {
        fn drop(&mut self) {
            self.kill();
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Connects once the server accepts connections and JetStream answers.
    async fn connect_when_ready(url: &str, stream: &str) -> JetStreamQueue {
        let give_up = Instant::now() + Duration::from_secs(15);
        loop {
            match JetStreamQueue::connect(url, stream).await {
                Ok(queue) => return queue,
                Err(err) if Instant::now() < give_up => {
                    eprintln!("waiting for nats-server: {err}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => panic!("nats-server did not come up: {err}"),
            }
        }
    }

    /// kill -9 of the server and a restart on the same store dir: the unacked message comes
    /// back and the same queue object keeps publishing and consuming.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_restart_keeps_messages_and_the_queue_usable() {
        let dir = tempfile::tempdir().unwrap();
        let mut server = OwnServer::start(free_port(), dir.path());
        let queue = connect_when_ready(&server.url(), "kensa_restart").await;
        let group = Group::new("default", "linux");
        let settings = ConsumerSettings {
            ack_wait: Duration::from_secs(1),
            max_deliver: 10,
        };
        let published = queue
            .publish(&group, "before", Bytes::from("run me"))
            .await
            .unwrap();
        assert!(!published.duplicate);
        let consumer = queue.consumer(&group, settings).await.unwrap();
        let delivery = consumer
            .next(Duration::from_secs(5))
            .await
            .unwrap()
            .expect("first delivery");
        assert_eq!((delivery.msg_id.as_str(), delivery.attempt), ("before", 1));
        drop(delivery); // never acked

        server.restart();

        // The same consumer object, while the client reconnects: errors are allowed while the
        // server is away, the message must come back within a bounded time.
        let give_up = Instant::now() + Duration::from_secs(30);
        let redelivered = loop {
            match consumer.next(Duration::from_secs(3)).await {
                Ok(Some(delivery)) => break delivery,
                Ok(None) => {}
                Err(err) => eprintln!("while the server restarts: {err}"),
            }
            assert!(
                Instant::now() < give_up,
                "message not redelivered after restart"
            );
        };
        assert_eq!(redelivered.msg_id, "before");
        assert_eq!(redelivered.payload, Bytes::from("run me"));
        eprintln!("redelivered with attempt {}", redelivered.attempt);
        redelivered.ack().await.unwrap();

        // Publish and consume after the restart with the same objects.
        let published = queue
            .publish(&group, "after", Bytes::from("again"))
            .await
            .unwrap();
        assert!(!published.duplicate);
        let delivery = consumer
            .next(Duration::from_secs(5))
            .await
            .unwrap()
            .expect("delivery after restart");
        assert_eq!((delivery.msg_id.as_str(), delivery.attempt), ("after", 1));
        delivery.ack().await.unwrap();
        assert_eq!(queue.depth(&group).await.unwrap(), 0);
        queue.ping().await.unwrap();
    }
}
