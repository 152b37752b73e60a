//! The in-process [`WorkQueue`]: the single-node default. The authoritative state lives in
//! memory (per group: ready messages ordered by the time they become available, locked
//! messages with their lock deadline, the consumers waiting in `next`, and the ids inside the
//! dedup window); every message is also written through to the embedded [`Store`] under the
//! internal kind [`QUEUE_KIND`], so a restart loses nothing that was not removed.
//!
//! Write-through rules, chosen so that store writes may race without resurrecting a removed
//! message: a publish is written before the message enters memory (so every later write
//! follows it), removal deletes the row, and attempt-count updates (on nak and on ack-wait
//! expiry) are conditional on the row still existing. The store is never touched while the
//! state lock is held. Publishes and removals share transactions ([`GroupCommit`]): each is
//! answered once the transaction holding it committed.
//!
//! Time-driven work (lock expiry, delayed messages becoming available for waiting consumers,
//! dedup-window pruning) is done by one timer task per queue that sleeps until the earliest
//! deadline; it holds only a weak reference and ends with the queue.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use kensa_store::{Key, ListQuery, Precondition, Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::group_commit::GroupCommit;
use crate::{
    validate_msg_id, Acker, Consumer, ConsumerSettings, Counters, Delivery, Group, Published,
    QueueError, QueueStats, WorkQueue, DEDUP_WINDOW,
};

/// The store kind queue messages are kept under (namespace `""`). Names are
/// `<namespace>/<subscription>/<seq, 16 hex digits>/<msg_id>` with `%` and `/` percent-escaped
/// in each part, so a group's rows share one prefix (they list together) and sort by publish
/// sequence.
pub const QUEUE_KIND: &str = "kensa.queue";

/// The in-process queue. Cheap to share: everything lives in [`Shared`].
pub struct InProcessQueue {
    shared: Arc<Shared>,
}

/// State shared by the queue, its consumers, their deliveries and the timer task.
struct Shared {
    store: Arc<dyn Store>,
    /// Publishes' and removals' store writes.
    writes: GroupCommit,
    /// The authoritative queue state. A std mutex: it is never held across an await, and every
    /// critical section is a few map operations.
    state: Mutex<State>,
    counters: Counters,
    /// Wakes the timer task when a new deadline may be earlier than the one it sleeps for (and
    /// when the queue is dropped, so the task can end).
    timer_wake: Arc<Notify>,
}

#[derive(Default)]
struct State {
    groups: HashMap<Group, GroupState>,
    /// The next publish sequence (unique across groups; orders messages and names store rows).
    next_seq: u64,
    /// Identifies one delivery (a lock), so a late nak or progress from an earlier delivery of
    /// the same message cannot touch the current holder's lock.
    next_lease: u64,
    next_waiter: u64,
}

#[derive(Default)]
struct GroupState {
    /// Set by the first `consumer` call; until then messages only queue up.
    settings: Option<ConsumerSettings>,
    messages: HashMap<u64, Message>,
    /// Ready messages by (available at, seq): FIFO among those already available.
    ready: BTreeSet<(Instant, u64)>,
    /// Locked messages by (lock deadline, seq).
    in_flight: BTreeSet<(Instant, u64)>,
    /// Every id that makes a publish a duplicate.
    ids: HashMap<String, IdState>,
    /// Removed ids in order of the end of their dedup window.
    removed: VecDeque<(Instant, String)>,
    /// Callers blocked in `next`, longest waiting first.
    waiters: VecDeque<Waiter>,
}

enum IdState {
    /// A publish is writing it to the store.
    Reserved,
    Live,
    /// Removed; a duplicate until the instant given.
    Removed(Instant),
}

struct Message {
    msg_id: String,
    payload: Bytes,
    /// Deliveries so far.
    attempts: u32,
    status: Status,
    store_name: String,
}

enum Status {
    Ready { available_at: Instant },
    InFlight { deadline: Instant, lease: u64 },
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Handoff>,
}

/// A delivery on its way from the dispatcher to a waiting `next` call.
struct Handoff {
    seq: u64,
    lease: u64,
    msg_id: String,
    payload: Bytes,
    attempt: u32,
}

/// A store write decided under the state lock and carried out after it is released.
enum StoreOp {
    Delete(String),
    /// Conditional on the row existing, so it never resurrects a removed message.
    Update(String, Record),
}

/// A queue message as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    namespace: String,
    subscription: String,
    msg_id: String,
    seq: u64,
    attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

impl Record {
    fn new(group: &Group, seq: u64, message: &Message) -> Record {
        let (payload_text, payload_base64) = match std::str::from_utf8(&message.payload) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&message.payload)),
            ),
        };
        Record {
            namespace: group.namespace.clone(),
            subscription: group.subscription.clone(),
            msg_id: message.msg_id.clone(),
            seq,
            attempts: message.attempts,
            payload_text,
            payload_base64,
        }
    }

    fn payload(&self) -> Result<Bytes, String> {
        match (&self.payload_text, &self.payload_base64) {
            (Some(text), _) => Ok(Bytes::from(text.clone())),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map(Bytes::from)
                .map_err(|err| format!("payload_base64: {err}")),
            (None, None) => Ok(Bytes::new()),
        }
    }
}

fn store_key(name: &str) -> Key {
    Key::new(QUEUE_KIND, "", name)
}

fn store_name(group: &Group, seq: u64, msg_id: &str) -> String {
    format!(
        "{}/{}/{seq:016x}/{}",
        escape(&group.namespace),
        escape(&group.subscription),
        escape(msg_id)
    )
}

/// Percent-escapes `/` and `%` so the parts of a store name stay separable.
fn escape(part: &str) -> String {
    part.replace('%', "%25").replace('/', "%2F")
}

impl InProcessQueue {
    /// Opens the queue on `store`, loading every stored message back as ready (attempt counts
    /// kept, publish order kept).
    pub async fn open(store: Arc<dyn Store>) -> Result<InProcessQueue, QueueError> {
        let records = load_records(store.as_ref()).await?;
        let now = Instant::now();
        let mut state = State::default();
        for (name, record) in records {
            let payload = match record.payload() {
                Ok(payload) => payload,
                Err(err) => {
                    tracing::warn!(name, "skipping unreadable queue message: {err}");
                    continue;
                }
            };
            let group = Group::new(record.namespace, record.subscription);
            let group_state = state.groups.entry(group).or_default();
            if group_state.ids.contains_key(&record.msg_id) {
                // Two rows with one id (two queues once shared the store): keep the first.
                continue;
            }
            group_state.ids.insert(record.msg_id.clone(), IdState::Live);
            group_state.ready.insert((now, record.seq));
            group_state.messages.insert(
                record.seq,
                Message {
                    msg_id: record.msg_id,
                    payload,
                    attempts: record.attempts,
                    status: Status::Ready { available_at: now },
                    store_name: name,
                },
            );
            state.next_seq = state.next_seq.max(record.seq + 1);
        }
        let timer_wake = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            writes: GroupCommit::start(store.clone()),
            store,
            state: Mutex::new(state),
            counters: Counters::default(),
            timer_wake: timer_wake.clone(),
        });
        tokio::spawn(run_timer(Arc::downgrade(&shared), timer_wake));
        Ok(InProcessQueue { shared })
    }
}

async fn load_records(store: &dyn Store) -> Result<Vec<(String, Record)>, QueueError> {
    let mut records = Vec::new();
    let mut query = ListQuery {
        kind: QUEUE_KIND.to_string(),
        namespace: Some(String::new()),
        ..ListQuery::default()
    };
    loop {
        let page = store.list(&query).await?;
        for item in page.items {
            match serde_json::from_value::<Record>(item.value) {
                Ok(record) => records.push((item.key.name, record)),
                Err(err) => {
                    tracing::warn!(
                        name = item.key.name,
                        "skipping unreadable queue message: {err}"
                    )
                }
            }
        }
        match page.continue_token {
            Some(token) => query.continue_token = Some(token),
            None => break,
        }
    }
    records.sort_by_key(|(_, record)| record.seq);
    Ok(records)
}

impl Drop for InProcessQueue {
    fn drop(&mut self) {
        // Consumers and deliveries may outlive the queue object and keep `Shared` (and so the
        // timer) alive; the timer ends once the last of them is gone.
        self.shared.timer_wake.notify_one();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.timer_wake.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps that are still individually consistent;
        // keep serving rather than poisoning every later call.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn run_store_ops(&self, ops: Vec<StoreOp>) -> Result<(), QueueError> {
        let mut first_error = None;
        for op in ops {
            let result = match op {
                StoreOp::Delete(name) => match self.writes.delete(store_key(&name)).await {
                    Ok(()) => Ok(()),
                    Err(err) => {
                        first_error.get_or_insert(err);
                        continue;
                    }
                },
                StoreOp::Update(name, record) => match serde_json::to_value(&record) {
                    Ok(value) => self
                        .store
                        .put(&store_key(&name), &value, Precondition::MustExist)
                        .await
                        .map(|_| ()),
                    Err(err) => Err(StoreError::Internal(err.to_string())),
                },
            };
            // NotFound: the message was removed meanwhile, which is what both writes want.
            let result = match result {
                Err(StoreError::NotFound(_)) => Ok(()),
                other => other,
            };
            if let Err(err) = result {
                tracing::warn!("queue store write failed: {err}");
                first_error.get_or_insert(QueueError::from(err));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Expires locks, prunes dedup ids, hands available messages to waiters; returns the store
    /// writes to make and the next instant anything is due.
    fn tick(&self, now: Instant) -> (Vec<StoreOp>, Option<Instant>) {
        let mut state = self.lock();
        let state = &mut *state;
        let mut ops = Vec::new();
        let mut next_due: Option<Instant> = None;
        for (group, group_state) in state.groups.iter_mut() {
            while let Some(&(deadline, seq)) = group_state.in_flight.first() {
                if deadline > now {
                    break;
                }
                group_state.in_flight.pop_first();
                let settings = group_state
                    .settings
                    .expect("a delivered group has settings");
                let Some(message) = group_state.messages.get_mut(&seq) else {
                    continue;
                };
                if message.attempts >= settings.max_deliver {
                    ops.push(group_state.exhaust(group, seq, now, &self.counters));
                } else {
                    message.status = Status::Ready {
                        available_at: deadline,
                    };
                    group_state.ready.insert((deadline, seq));
                    let message = &group_state.messages[&seq];
                    ops.push(StoreOp::Update(
                        message.store_name.clone(),
                        Record::new(group, seq, message),
                    ));
                }
            }
            group_state.prune_removed(now);
            group_state.dispatch(now, &mut state.next_lease, &self.counters);

            let mut consider = |at: Instant| {
                next_due = Some(next_due.map_or(at, |due| due.min(at)));
            };
            if let Some(&(deadline, _)) = group_state.in_flight.first() {
                consider(deadline);
            }
            if let Some((until, _)) = group_state.removed.front() {
                consider(*until);
            }
            if !group_state.waiters.is_empty() {
                if let Some(&(available_at, _)) = group_state.ready.first() {
                    consider(available_at);
                }
            }
        }
        (ops, next_due)
    }
}

impl GroupState {
    /// Hands available messages to waiting consumers, longest waiting first.
    fn dispatch(&mut self, now: Instant, next_lease: &mut u64, counters: &Counters) {
        let Some(settings) = self.settings else {
            return;
        };
        'messages: while !self.waiters.is_empty() {
            let Some(&(available_at, seq)) = self.ready.first() else {
                return;
            };
            if available_at > now {
                return;
            }
            let Some(message) = self.messages.get(&seq) else {
                self.ready.pop_first();
                continue;
            };
            *next_lease += 1;
            let lease = *next_lease;
            let mut handoff = Handoff {
                seq,
                lease,
                msg_id: message.msg_id.clone(),
                payload: message.payload.clone(),
                attempt: message.attempts + 1,
            };
            // A waiter whose `next` call was dropped refuses the handoff; try the next one.
            while let Some(waiter) = self.waiters.pop_front() {
                match waiter.tx.send(handoff) {
                    Ok(()) => {
                        self.ready.pop_first();
                        let deadline = now + settings.ack_wait;
                        let message = self.messages.get_mut(&seq).expect("checked above");
                        message.attempts += 1;
                        message.status = Status::InFlight { deadline, lease };
                        self.in_flight.insert((deadline, seq));
                        counters.delivered(message.attempts);
                        continue 'messages;
                    }
                    Err(refused) => handoff = refused,
                }
            }
        }
    }

    /// Removes message `seq` (exhausted), keeping its id in the dedup window.
    fn exhaust(&mut self, group: &Group, seq: u64, now: Instant, counters: &Counters) -> StoreOp {
        let message = self.remove(seq, now).expect("exhausting a known message");
        counters.exhausted();
        tracing::warn!(
            group = %group,
            msg_id = message.msg_id,
            attempts = message.attempts,
            "queue message dropped after its last delivery (max_deliver reached)"
        );
        StoreOp::Delete(message.store_name)
    }

    /// Takes message `seq` out of every index; its id stays a duplicate for the dedup window.
    fn remove(&mut self, seq: u64, now: Instant) -> Option<Message> {
        let message = self.messages.remove(&seq)?;
        match message.status {
            Status::Ready { available_at } => self.ready.remove(&(available_at, seq)),
            Status::InFlight { deadline, .. } => self.in_flight.remove(&(deadline, seq)),
        };
        let until = now + DEDUP_WINDOW;
        self.ids
            .insert(message.msg_id.clone(), IdState::Removed(until));
        self.removed.push_back((until, message.msg_id.clone()));
        Some(message)
    }

    fn prune_removed(&mut self, now: Instant) {
        while let Some((until, _)) = self.removed.front() {
            if *until > now {
                break;
            }
            let (until, msg_id) = self.removed.pop_front().expect("front checked");
            if matches!(self.ids.get(&msg_id), Some(IdState::Removed(at)) if *at == until) {
                self.ids.remove(&msg_id);
            }
        }
    }
}

/// Sleeps until the earliest deadline of any group (or a wake-up), then runs [`Shared::tick`].
async fn run_timer(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let next_due = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let (ops, next_due) = shared.tick(Instant::now());
            // Errors are logged inside; the row then keeps an older attempt count.
            let _ = shared.run_store_ops(ops).await;
            next_due
        };
        match next_due {
            Some(due) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[async_trait]
impl WorkQueue for InProcessQueue {
    async fn publish(
        &self,
        group: &Group,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<Published, QueueError> {
        group.validate()?;
        validate_msg_id(msg_id)?;
        let shared = &self.shared;
        let now = Instant::now();
        let seq = {
            let mut state = shared.lock();
            let seq = state.next_seq;
            let group_state = state.groups.entry(group.clone()).or_default();
            group_state.prune_removed(now);
            if group_state.ids.contains_key(msg_id) {
                drop(state);
                shared.counters.published(true);
                return Ok(Published { duplicate: true });
            }
            group_state
                .ids
                .insert(msg_id.to_string(), IdState::Reserved);
            state.next_seq += 1;
            seq
        };

        let message = Message {
            msg_id: msg_id.to_string(),
            payload,
            attempts: 0,
            status: Status::Ready { available_at: now },
            store_name: store_name(group, seq, msg_id),
        };
        let written = match serde_json::to_value(Record::new(group, seq, &message)) {
            Ok(value) => {
                shared
                    .writes
                    .put(store_key(&message.store_name), value)
                    .await
            }
            Err(err) => Err(QueueError::Internal(err.to_string())),
        };

        let mut state = shared.lock();
        let state = &mut *state;
        let group_state = state.groups.entry(group.clone()).or_default();
        if let Err(err) = written {
            group_state.ids.remove(msg_id);
            return Err(err);
        }
        group_state.ids.insert(msg_id.to_string(), IdState::Live);
        // Available from when the write finished, so publish order is delivery order.
        let available_at = Instant::now();
        let message = Message {
            status: Status::Ready { available_at },
            ..message
        };
        group_state.ready.insert((available_at, seq));
        group_state.messages.insert(seq, message);
        group_state.dispatch(available_at, &mut state.next_lease, &shared.counters);
        shared.counters.published(false);
        shared.timer_wake.notify_one();
        Ok(Published { duplicate: false })
    }

    async fn consumer(
        &self,
        group: &Group,
        settings: ConsumerSettings,
    ) -> Result<Arc<dyn Consumer>, QueueError> {
        group.validate()?;
        settings.validate(group)?;
        {
            let mut state = self.shared.lock();
            let state = &mut *state;
            let group_state = state.groups.entry(group.clone()).or_default();
            group_state.settings = Some(settings);
            group_state.dispatch(Instant::now(), &mut state.next_lease, &self.shared.counters);
        }
        self.shared.timer_wake.notify_one();
        Ok(Arc::new(InProcessConsumer {
            shared: self.shared.clone(),
            group: group.clone(),
        }))
    }

    async fn depth(&self, group: &Group) -> Result<u64, QueueError> {
        let state = self.shared.lock();
        Ok(state
            .groups
            .get(group)
            .map_or(0, |group_state| group_state.messages.len() as u64))
    }

    fn stats(&self) -> QueueStats {
        self.shared.counters.snapshot()
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.shared.store.ping().await.map_err(QueueError::from)
    }

    fn kind(&self) -> &'static str {
        "in-process"
    }
}

struct InProcessConsumer {
    shared: Arc<Shared>,
    group: Group,
}

#[async_trait]
impl Consumer for InProcessConsumer {
    async fn next(&self, wait: Duration) -> Result<Option<Delivery>, QueueError> {
        let shared = &self.shared;
        let deadline = Instant::now() + wait;
        let (waiter_id, mut rx) = {
            let mut state = shared.lock();
            let state = &mut *state;
            state.next_waiter += 1;
            let waiter_id = state.next_waiter;
            let (tx, rx) = oneshot::channel();
            let group_state = state.groups.entry(self.group.clone()).or_default();
            // Forget waiters whose `next` call was dropped, so they do not pile up.
            group_state.waiters.retain(|waiter| !waiter.tx.is_closed());
            group_state.waiters.push_back(Waiter { id: waiter_id, tx });
            group_state.dispatch(Instant::now(), &mut state.next_lease, &shared.counters);
            (waiter_id, rx)
        };
        // The timer must know there is a waiter if only delayed messages are ready.
        shared.timer_wake.notify_one();

        let handoff = match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(Ok(handoff)) => Some(handoff),
            Ok(Err(_)) => {
                return Err(QueueError::Internal(
                    "waiting consumer was dropped by the queue".into(),
                ))
            }
            Err(_elapsed) => {
                let mut state = shared.lock();
                let group_state = state.groups.entry(self.group.clone()).or_default();
                let before = group_state.waiters.len();
                group_state.waiters.retain(|waiter| waiter.id != waiter_id);
                if group_state.waiters.len() == before {
                    // Served between the timeout and taking the lock: take the message.
                    rx.try_recv().ok()
                } else {
                    None
                }
            }
        };
        Ok(handoff.map(|handoff| {
            Delivery::new(
                handoff.msg_id,
                handoff.payload,
                handoff.attempt,
                Box::new(InProcessAcker {
                    shared: shared.clone(),
                    group: self.group.clone(),
                    seq: handoff.seq,
                    lease: handoff.lease,
                }),
            )
        }))
    }
}

struct InProcessAcker {
    shared: Arc<Shared>,
    group: Group,
    seq: u64,
    lease: u64,
}

enum Removal {
    Acked,
    Terminated,
}

impl InProcessAcker {
    async fn remove(&self, removal: Removal) -> Result<(), QueueError> {
        let name = {
            let mut state = self.shared.lock();
            let Some(group_state) = state.groups.get_mut(&self.group) else {
                return Ok(());
            };
            // Like JetStream, a late ack (after the lock expired) still removes the message.
            group_state
                .remove(self.seq, Instant::now())
                .map(|message| message.store_name)
        };
        match removal {
            Removal::Acked => self.shared.counters.acked(),
            Removal::Terminated => self.shared.counters.terminated(),
        }
        self.shared.timer_wake.notify_one();
        match name {
            Some(name) => self.shared.run_store_ops(vec![StoreOp::Delete(name)]).await,
            None => Ok(()),
        }
    }

    /// Runs `change` on the message if this delivery still holds its lock.
    fn with_lock<T>(
        &self,
        change: impl FnOnce(&Group, &mut GroupState, &mut u64, &Counters) -> T,
    ) -> Option<T> {
        let mut state = self.shared.lock();
        let state = &mut *state;
        let group_state = state.groups.get_mut(&self.group)?;
        let message = group_state.messages.get(&self.seq)?;
        match message.status {
            Status::InFlight { lease, .. } if lease == self.lease => Some(change(
                &self.group,
                group_state,
                &mut state.next_lease,
                &self.shared.counters,
            )),
            _ => None,
        }
    }
}

#[async_trait]
impl Acker for InProcessAcker {
    async fn ack(&self) -> Result<(), QueueError> {
        self.remove(Removal::Acked).await
    }

    async fn nak(&self, delay: Duration) -> Result<(), QueueError> {
        let seq = self.seq;
        let now = Instant::now();
        let op = self.with_lock(|group, group_state, next_lease, counters| {
            counters.nacked();
            let message = group_state.messages.get_mut(&seq).expect("checked");
            let Status::InFlight { deadline, .. } = message.status else {
                unreachable!("checked in flight");
            };
            group_state.in_flight.remove(&(deadline, seq));
            let settings = group_state
                .settings
                .expect("a delivered group has settings");
            if message.attempts >= settings.max_deliver {
                return group_state.exhaust(group, seq, now, counters);
            }
            let available_at = now + delay;
            message.status = Status::Ready { available_at };
            group_state.ready.insert((available_at, seq));
            let op = StoreOp::Update(message.store_name.clone(), Record::new(group, seq, message));
            group_state.dispatch(now, next_lease, counters);
            op
        });
        self.shared.timer_wake.notify_one();
        match op {
            Some(op) => self.shared.run_store_ops(vec![op]).await,
            // The lock had expired (and the message may be with another consumer) or the
            // message is gone: nothing to release.
            None => Ok(()),
        }
    }

    async fn progress(&self) -> Result<(), QueueError> {
        let seq = self.seq;
        self.with_lock(|_, group_state, _, _| {
            let settings = group_state
                .settings
                .expect("a delivered group has settings");
            let message = group_state.messages.get_mut(&seq).expect("checked");
            let Status::InFlight { deadline, lease } = message.status else {
                unreachable!("checked in flight");
            };
            group_state.in_flight.remove(&(deadline, seq));
            let deadline = Instant::now() + settings.ack_wait;
            message.status = Status::InFlight { deadline, lease };
            group_state.in_flight.insert((deadline, seq));
        });
        Ok(())
    }

    async fn term(&self) -> Result<(), QueueError> {
        self.remove(Removal::Terminated).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::Fixture;
    use kensa_store::sqlite::SqliteStore;

    /// A fresh queue on a private in-memory SQLite store; reopening builds a new queue on the
    /// same store, as a backend restart would.
    async fn fixture() -> Option<Fixture> {
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open_in_memory()
                .await
                .expect("open in-memory store"),
        );
        let queue = InProcessQueue::open(store.clone())
            .await
            .expect("open queue");
        Some(Fixture::new(
            Arc::new(queue),
            move || {
                let store = store.clone();
                Box::pin(async move {
                    Arc::new(InProcessQueue::open(store).await.expect("reopen queue"))
                        as Arc<dyn WorkQueue>
                })
            },
            async {},
        ))
    }

    crate::queue_conformance_tests!(fixture);

    /// Binary payloads survive the store round trip (kept as base64), text stays readable.
    #[tokio::test]
    async fn payloads_survive_a_reopen_on_a_file_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kensa.db");
        let group = Group::new("default", "linux");
        let settings = ConsumerSettings {
            ack_wait: Duration::from_secs(5),
            max_deliver: 5,
        };
        let binary = Bytes::from_static(&[0, 159, 146, 150, 255]);
        {
            let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
            let queue = InProcessQueue::open(store.clone()).await.unwrap();
            queue.publish(&group, "bin", binary.clone()).await.unwrap();
            queue
                .publish(&group, "text", Bytes::from("héllo"))
                .await
                .unwrap();
            let stored = store
                .list(&ListQuery {
                    kind: QUEUE_KIND.into(),
                    namespace: Some(String::new()),
                    ..ListQuery::default()
                })
                .await
                .unwrap();
            assert_eq!(stored.items.len(), 2);
            assert_eq!(stored.items[1].value["payload_text"], "héllo");
        }
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
        let queue = InProcessQueue::open(store).await.unwrap();
        let consumer = queue.consumer(&group, settings).await.unwrap();
        let first = consumer
            .next(Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((first.msg_id.as_str(), &first.payload), ("bin", &binary));
        let second = consumer
            .next(Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.payload, Bytes::from("héllo"));
        first.ack().await.unwrap();
        second.ack().await.unwrap();
        assert_eq!(queue.depth(&group).await.unwrap(), 0);
    }

    #[test]
    fn store_names_list_a_group_together_in_sequence_order() {
        let group = Group::new("default", "a/b");
        let mut names = vec![
            store_name(&group, 16, "x"),
            store_name(&group, 2, "y"),
            store_name(&Group::new("default", "a"), 99, "z"),
        ];
        names.sort();
        assert_eq!(
            names,
            [
                "default/a%2Fb/0000000000000002/y",
                "default/a%2Fb/0000000000000010/x",
                "default/a/0000000000000063/z",
            ]
        );
    }
}
