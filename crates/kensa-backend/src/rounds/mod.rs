//! Round robin (issue 4): every round of a `round_robin: true` check runs at least once, on
//! one live agent of each of its subscriptions, through a work queue
//! ([`kensa_queue::WorkQueue`]: in-process and persisted in the store by default, NATS
//! JetStream in a cluster).
//!
//! The path of one round:
//! 1. The scheduler hands a [`RoundOrder`] to [`RoundOrders::submit`] (never blocks).
//! 2. The publisher publishes one message per subscription, with the round id
//!    `<namespace>/<check>@<tick>[/<proxy>]#<subscription>` as the queue's deduplication id.
//!    Every backend schedules and publishes every round; the queue keeps one copy. No leader.
//!    Failed publishes are retried until the round's deadline.
//! 3. Per group `(namespace, subscription)`, pull loops on each backend reserve free agent
//!    slots of *this* backend's sessions in the group (up to one agent's worth each), pull as
//!    many messages in one batch request from the group's shared consumer, and send each
//!    arriving request to the agent that least recently got a round (a few slots per agent,
//!    so rounds do not wait for each other's commits). The delivery stays locked ("in
//!    flight") meanwhile; progress is reported to the queue while the agent has time left.
//! 4. eventd claims the round when the result arrives ([`record::claim`]); only the first
//!    execution is stored and handled, a second one is recorded as a duplicate. After the
//!    commit, the tap ([`tap`]) tells this service, which acknowledges the delivery. A round is
//!    acknowledged only once its result is stored.
//! 5. If the agent disconnects, or does not answer within the check's budget, the delivery is
//!    released (nak) and the queue hands the round to another agent. If the backend dies, the
//!    queue redelivers after its ack wait.
//! 6. The reconciler ([`reconciler`]) checks every round after its deadline; a round nobody
//!    completed is recorded missed and raises a "round missed" event on the check, resolved
//!    when rounds complete again.
//!
//! Invariants: the queue is the only path of round-robin requests to agents; a delivery is
//! acked only after the round's result is stored (or the round is known completed); nothing
//! here blocks the scheduler or an agent session.

pub mod reconciler;
pub mod record;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kensa_proto::CheckRequest;
use kensa_queue::{Consumer, ConsumerSettings, Delivery, Group, WorkQueue};
use kensa_store::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use self::reconciler::Reconciler;
use self::record::RoundRef;
use crate::dispatch::{Dispatcher, SessionId};
use crate::eventd::{Eventd, Processed};
use crate::scheduler::encode_request;
use crate::telemetry::{RoundLabels, Telemetry};
use crate::view::ConfigView;

/// Orders waiting for the publisher; when full the round is reported missed right away.
const ORDER_QUEUE: usize = 65_536;
/// Publishes in flight at once.
const PUBLISH_CONCURRENCY: usize = 64;
/// Pull loops per group on one backend. Each holds one batch pull for up to [`PULL_BATCH`]
/// rounds, as many as its agents have free slots. JetStream serves the open requests of every
/// backend in turn, so backends get rounds in proportion to their requests, and with batches
/// of about one agent's slots, in proportion to their agents. (One single-round request per
/// free slot instead starved a backend: more requests than rounds within a request's wait,
/// and the ones that expired queued up behind the ones just served, every time.)
const PULLERS_PER_GROUP: usize = 64;
/// Most rounds one pull asks for: one agent's slots.
const PULL_BATCH: usize = SLOTS_PER_AGENT;
/// Rounds one agent runs at once per group. A slot is freed only once the round's result is
/// stored, so this also bounds the rounds per agent waiting on the event writer's commit.
const SLOTS_PER_AGENT: usize = 8;
/// How long one pull waits for a message.
const PULL_WAIT: Duration = Duration::from_secs(5);
/// Time an agent gets beyond the check's budget before its round goes to another agent.
pub const GRACE_MS: i64 = 2_000;
/// Deliveries of one round before the queue drops it (the reconciler then reports it).
const MAX_DELIVER: u32 = 10;
/// How long an agent that let a round time out gets no new rounds of that group.
const QUARANTINE_MS: i64 = 30_000;
/// How long an agent that refused a round gets no new rounds of that group.
const REFUSAL_QUARANTINE_MS: i64 = 5_000;
/// How often in-flight rounds are checked for deadlines and progress.
const SWEEP_PERIOD: Duration = Duration::from_millis(500);
/// Completed round ids remembered to ack redeliveries without another execution.
const RECENT_COMPLETED: usize = 100_000;

/// One round of a round-robin check, from the scheduler.
#[derive(Debug)]
pub struct RoundOrder {
    pub namespace: String,
    pub subscriptions: Vec<String>,
    /// The scheduled tick (Unix ms; the request time for ad hoc runs).
    pub tick_ms: i64,
    /// The request with the scheduler's round id (`…@<tick>` or `…@adhoc-<id>`).
    pub request: CheckRequest,
}

/// The scheduler's handle: hands rounds to the publisher without waiting.
#[derive(Clone)]
pub struct RoundOrders {
    orders: mpsc::Sender<RoundOrder>,
    telemetry: Arc<Telemetry>,
}

impl RoundOrders {
    /// A handle whose orders arrive on the returned receiver (the service's, or a test's).
    pub fn channel(telemetry: Arc<Telemetry>) -> (RoundOrders, mpsc::Receiver<RoundOrder>) {
        let (orders, rx) = mpsc::channel(ORDER_QUEUE);
        (RoundOrders { orders, telemetry }, rx)
    }

    pub fn submit(&self, order: RoundOrder) {
        if let Err(err) = self.orders.try_send(order) {
            let order = match err {
                mpsc::error::TrySendError::Full(order)
                | mpsc::error::TrySendError::Closed(order) => order,
            };
            tracing::error!(
                namespace = %order.namespace,
                check = %order.request.config.metadata.name,
                round = %order.request.round,
                "round-robin publisher is saturated; this round is not run"
            );
            for subscription in &order.subscriptions {
                self.telemetry
                    .rounds_missed
                    .get_or_create(&RoundLabels::new(&order.namespace, subscription))
                    .inc();
            }
        }
    }
}

/// The time budget of one execution and the deadlines derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// The check's timeout, or what the agent uses when there is none (its interval, at most
    /// a minute; a minute for cron checks; at least 5 s).
    pub execution_ms: i64,
    /// The check period (interval, or a minute for cron).
    pub period_ms: i64,
}

impl Budget {
    pub fn of(request: &CheckRequest) -> Budget {
        let config = &request.config;
        let period_ms = record::period_ms(u64::from(config.interval));
        let execution_ms = if config.timeout > 0 {
            i64::from(config.timeout) * 1000
        } else {
            period_ms.clamp(5_000, 60_000)
        };
        Budget {
            execution_ms,
            period_ms,
        }
    }

    /// When a delivered round goes back to the queue if no result came.
    pub fn in_flight_ms(&self) -> i64 {
        self.execution_ms + GRACE_MS
    }

    /// After this long past its tick a round counts as missed: one period, plus time for a
    /// redelivery after a lost agent or backend and a second full execution.
    pub fn round_deadline_ms(&self, tick_ms: i64) -> i64 {
        tick_ms + self.period_ms + 2 * self.in_flight_ms() + 5_000
    }
}

/// What travels through the queue: a small JSON header line, then the request frame as the
/// agent receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    round: String,
    tick_ms: i64,
    budget: Budget,
}

fn encode_message(header: &Header, frame: &[u8]) -> Bytes {
    let mut out = serde_json::to_vec(header).expect("round header serializes");
    out.push(b'\n');
    out.extend_from_slice(frame);
    Bytes::from(out)
}

fn decode_message(payload: &Bytes) -> Option<(Header, Bytes)> {
    let newline = payload.iter().position(|b| *b == b'\n')?;
    let header = serde_json::from_slice(&payload[..newline]).ok()?;
    Some((header, payload.slice(newline + 1..)))
}

/// The round-robin service handle.
#[derive(Clone)]
pub struct RoundRobin {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Arc<dyn WorkQueue>,
    store: Arc<dyn Store>,
    dispatcher: Arc<Dispatcher>,
    telemetry: Arc<Telemetry>,
    reconciler: Reconciler,
    /// Knows, on the embedded store, which rounds cannot have completed yet.
    eventd: Eventd,
    /// Rounds whose result this backend stored (shared with the reconciler, which then needs
    /// no store read for them).
    completed: Arc<Mutex<RecentSet>>,
    shutdown: CancellationToken,
    /// Groups, in-flight rounds and agent slots. Never held across an await.
    state: Mutex<State>,
    /// Woken when agent slots may have become free (completion, release, membership).
    slots_freed: Notify,
    /// When this backend started (Unix ms): see [`restart_grace_until`].
    started_ms: i64,
}

/// A round that was already due before this backend started was probably in flight when the
/// previous process died, and its agent may be about to re-send the result from its outbox
/// after reconnecting: wait that long before running it again (not past the round's
/// deadline, which stays far ahead).
fn restart_grace_until(started_ms: i64, header: &Header) -> Option<i64> {
    let until = started_ms + header.budget.in_flight_ms().min(10_000);
    (header.tick_ms < started_ms).then_some(until)
}

#[derive(Default)]
struct State {
    groups: HashMap<Group, GroupState>,
    /// Rounds delivered to agents of this backend, by round id.
    in_flight: HashMap<String, Vec<InFlight>>,
    /// `(session, execution key)` of every round in flight: an agent never gets a second
    /// round of a check it is still running (it would refuse it silently).
    holding: HashSet<(SessionId, String)>,
}

impl State {
    /// `flight`'s agent no longer runs that check for this backend.
    fn release_hold(&mut self, flight: &InFlight) {
        self.holding
            .remove(&(flight.session, execution_key(&flight.round)));
    }
}

/// What an agent deduplicates and guards executions on: the check, plus the proxy entity.
fn execution_key(round: &RoundRef) -> String {
    format!(
        "{}/{}",
        round.check,
        round.proxy_entity.as_deref().unwrap_or_default()
    )
}

struct GroupState {
    consumer: Arc<dyn Consumer>,
    ack_wait_ms: i64,
    /// Free agent slots, least recently used first (a session appears once per free slot).
    free: VecDeque<SessionId>,
    /// Sessions of the group known to this backend, with their slot count in use.
    members: HashMap<SessionId, Member>,
    /// Slots taken so far (orders the members by when they last got one).
    takes: u64,
    /// Free slots pull loops have reserved while they wait for a round.
    reserved: usize,
}

impl GroupState {
    /// `id`'s membership, if it is a member out of quarantine at `now` (may get rounds).
    fn ready_member(&self, id: &SessionId, now: i64) -> Option<&Member> {
        self.members
            .get(id)
            .filter(|member| member.quarantined_until <= now)
    }
}

#[derive(Default)]
struct Member {
    /// Until when (Unix ms) the session gets no rounds of this group.
    quarantined_until: i64,
    /// The group's `takes` when this member last got a slot (0: never).
    last_taken: u64,
}

struct InFlight {
    delivery: Delivery,
    group: Group,
    session: SessionId,
    agent: String,
    round: RoundRef,
    /// The check period its round record is filed under.
    period_ms: i64,
    deadline_ms: i64,
    last_progress_ms: i64,
}

impl RoundRobin {
    /// Starts the publisher, the sweeper and the reconciler. Orders come from `orders` (the
    /// other end of the scheduler's [`RoundOrders`]).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        queue: Arc<dyn WorkQueue>,
        store: Arc<dyn Store>,
        view: Arc<ConfigView>,
        dispatcher: Arc<Dispatcher>,
        eventd: Eventd,
        telemetry: Arc<Telemetry>,
        orders: mpsc::Receiver<RoundOrder>,
        shutdown: CancellationToken,
    ) -> (RoundRobin, Vec<tokio::task::JoinHandle<()>>) {
        let completed = Arc::new(Mutex::new(RecentSet::default()));
        let reconciler = Reconciler::new(
            store.clone(),
            view,
            eventd.clone(),
            telemetry.clone(),
            completed.clone(),
        );
        let shared = Arc::new(Shared {
            queue,
            store,
            dispatcher,
            telemetry,
            reconciler,
            eventd,
            completed,
            shutdown: shutdown.clone(),
            state: Mutex::new(State::default()),
            slots_freed: Notify::new(),
            started_ms: now_ms(),
        });
        let tasks = vec![
            tokio::spawn(publish_loop(shared.clone(), orders)),
            tokio::spawn(sweep_loop(shared.clone())),
            tokio::spawn(shared.reconciler.clone().run(shutdown)),
        ];
        (RoundRobin { shared }, tasks)
    }

    /// The result of `round` is stored: acknowledge its delivery if this backend holds it.
    pub fn completed(&self, round: &RoundRef) {
        self.shared
            .telemetry
            .rounds_completed
            .get_or_create(&RoundLabels::new(&round.namespace, &round.subscription))
            .inc();
        self.settle(round);
    }

    /// `round` is done (its result stored, here or by another execution): acknowledge every
    /// delivery of it this backend holds and free their agents' slots.
    fn settle(&self, round: &RoundRef) {
        self.shared.completed().insert(round.id.clone());
        let held = {
            let mut guard = self.shared.lock();
            let state = &mut *guard;
            let held = state.in_flight.remove(&round.id).unwrap_or_default();
            for flight in &held {
                state.release_hold(flight);
                if let Some(group) = state.groups.get_mut(&flight.group) {
                    group.free.push_back(flight.session);
                }
            }
            held
        };
        if !held.is_empty() {
            self.shared.slots_freed.notify_waiters();
        }
        for flight in held {
            if flight.delivery.attempt > 1 {
                // For the dashboard's "last rounds": the completion recorded one delivery.
                let store = self.shared.store.clone();
                let (round, period_ms) = (flight.round.clone(), flight.period_ms);
                let attempt = flight.delivery.attempt;
                tokio::spawn(async move {
                    let noted = record::note_deliveries(store.as_ref(), &round, period_ms, attempt);
                    if let Err(err) = noted.await {
                        tracing::debug!(round = %round.id, %err, "recording the round's deliveries failed");
                    }
                });
            }
            spawn_ack(flight.delivery);
        }
    }

    /// The agent of `session` refused round `round_id` (a `refused` message): release its
    /// delivery at once so the queue hands the round to another agent, and give that agent
    /// no rounds of the group for a moment. Unknown rounds (already released, delivered by
    /// another backend) are ignored.
    pub fn refused(&self, session: SessionId, round_id: &str) {
        let now = now_ms();
        let released = {
            let mut guard = self.shared.lock();
            let state = &mut *guard;
            let Some(flights) = state.in_flight.get_mut(round_id) else {
                return;
            };
            let Some(index) = flights.iter().position(|f| f.session == session) else {
                return;
            };
            let flight = flights.swap_remove(index);
            if flights.is_empty() {
                state.in_flight.remove(round_id);
            }
            state.release_hold(&flight);
            if let Some(group_state) = state.groups.get_mut(&flight.group) {
                if let Some(member) = group_state.members.get_mut(&session) {
                    member.quarantined_until = now + REFUSAL_QUARANTINE_MS;
                }
                group_state.free.push_back(session);
            }
            flight
        };
        self.shared
            .telemetry
            .rounds_refused
            .get_or_create(&RoundLabels::new(
                &released.group.namespace,
                &released.group.subscription,
            ))
            .inc();
        self.shared.slots_freed.notify_waiters();
        tracing::info!(agent = %released.agent, round = %released.round.id, "agent refused a round; it goes to another agent");
        spawn_nak(released.delivery);
    }

    /// The queue, for `/health`.
    pub fn queue(&self) -> &Arc<dyn WorkQueue> {
        &self.shared.queue
    }
}

/// Settles the deliveries of rounds whose result eventd recognized as a second execution
/// (the first one completed elsewhere): the agent answered, so its slot is free again.
pub async fn settle_duplicates(mut rounds_rx: mpsc::Receiver<String>, rounds: RoundRobin) {
    while let Some(id) = rounds_rx.recv().await {
        if let Some(round) = RoundRef::parse(&id) {
            rounds.settle(&round);
        }
    }
}

/// Releases the rounds agents refused ([`RoundRobin::refused`]) until `shutdown` (agent
/// sessions, which hold the sending side, may outlive the backend's services).
pub async fn release_refused(
    mut refusals: mpsc::Receiver<crate::agentd::RefusedRound>,
    rounds: RoundRobin,
    shutdown: CancellationToken,
) {
    loop {
        let refusal = tokio::select! {
            _ = shutdown.cancelled() => return,
            refusal = refusals.recv() => refusal,
        };
        let Some(refusal) = refusal else { return };
        rounds.refused(refusal.session, &refusal.round);
    }
}

/// Forwards stored events from eventd to the pipelines, telling round robin about every
/// round-robin result on the way (they were claimed by eventd, so each is a first execution).
pub async fn tap(
    mut events: mpsc::Receiver<Processed>,
    pipelines: mpsc::Sender<Processed>,
    rounds: RoundRobin,
) {
    while let Some(event) = events.recv().await {
        if let Some(round) = event
            .check
            .as_ref()
            .and_then(|check| RoundRef::parse(&check.round))
        {
            rounds.completed(&round);
        }
        if pipelines.send(event).await.is_err() {
            return;
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("round robin state poisoned")
    }

    fn completed(&self) -> std::sync::MutexGuard<'_, RecentSet> {
        self.completed
            .lock()
            .expect("completed rounds lock poisoned")
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

// ---------------------------------------------------------------------------------------------
// Publishing

async fn publish_loop(shared: Arc<Shared>, mut orders: mpsc::Receiver<RoundOrder>) {
    let permits = Arc::new(Semaphore::new(PUBLISH_CONCURRENCY));
    loop {
        let order = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            order = orders.recv() => match order {
                Some(order) => order,
                None => return,
            },
        };
        let budget = Budget::of(&order.request);
        for subscription in &order.subscriptions {
            let group = Group {
                namespace: order.namespace.clone(),
                subscription: subscription.clone(),
            };
            let mut request = order.request.clone();
            request.round = RoundRef::id_for(&order.request.round, subscription);
            let Some(round) = RoundRef::parse(&request.round) else {
                tracing::error!(round = %request.round, "malformed round id; round not run");
                continue;
            };
            let header = Header {
                round: request.round.clone(),
                tick_ms: order.tick_ms,
                budget,
            };
            let payload = encode_message(&header, &encode_request(request));
            let deadline_ms = budget.round_deadline_ms(order.tick_ms);
            shared
                .reconciler
                .expect(round.clone(), budget.period_ms, deadline_ms);
            if let Err(err) = ensure_group(&shared, &group, budget).await {
                tracing::warn!(namespace = %group.namespace, subscription = %group.subscription, %err, "cannot open the round-robin consumer; retrying with the next round");
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                publish_until_deadline(&shared, &group, &round, payload, deadline_ms).await;
                drop(permit);
            });
        }
    }
}

async fn publish_until_deadline(
    shared: &Shared,
    group: &Group,
    round: &RoundRef,
    payload: Bytes,
    deadline_ms: i64,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match shared
            .queue
            .publish(group, &round.id, payload.clone())
            .await
        {
            Ok(_) => {
                shared
                    .telemetry
                    .rounds_scheduled
                    .get_or_create(&RoundLabels::new(&group.namespace, &group.subscription))
                    .inc();
                return;
            }
            Err(err) => {
                shared.telemetry.round_publish_errors.inc();
                if now_ms() + backoff.as_millis() as i64 > deadline_ms {
                    tracing::error!(round = %round.id, %err, "could not publish the round before its deadline");
                    return; // the reconciler reports it missed
                }
                tracing::warn!(round = %round.id, %err, "publishing a round failed; retrying");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Consuming

/// Opens the group's consumer and starts its pull loops, once.
async fn ensure_group(
    shared: &Arc<Shared>,
    group: &Group,
    budget: Budget,
) -> Result<(), kensa_queue::QueueError> {
    if shared.lock().groups.contains_key(group) {
        return Ok(());
    }
    let ack_wait_ms = budget.in_flight_ms().clamp(5_000, 60_000);
    let consumer = shared
        .queue
        .consumer(
            group,
            ConsumerSettings {
                ack_wait: Duration::from_millis(ack_wait_ms as u64),
                max_deliver: MAX_DELIVER,
            },
        )
        .await?;
    {
        let mut state = shared.lock();
        if state.groups.contains_key(group) {
            return Ok(());
        }
        let mut group_state = GroupState {
            consumer,
            ack_wait_ms,
            free: VecDeque::new(),
            members: HashMap::new(),
            takes: 0,
            reserved: 0,
        };
        refresh_members(&shared.dispatcher, group, &mut group_state);
        state.groups.insert(group.clone(), group_state);
    }
    tracing::info!(namespace = %group.namespace, subscription = %group.subscription, "round-robin group opened");
    for _ in 0..PULLERS_PER_GROUP {
        tokio::spawn(pull_loop(shared.clone(), group.clone()));
    }
    Ok(())
}

/// Brings a group's members in line with the dispatcher: new sessions get their slots at the
/// front (a newly connected agent takes the next rounds), gone sessions lose theirs.
fn refresh_members(dispatcher: &Dispatcher, group: &Group, state: &mut GroupState) {
    let current: HashSet<SessionId> = dispatcher
        .subscriber_ids(&group.namespace, &group.subscription)
        .into_iter()
        .collect();
    state.members.retain(|id, _| current.contains(id));
    state.free.retain(|id| current.contains(id));
    for id in current {
        if let std::collections::hash_map::Entry::Vacant(entry) = state.members.entry(id) {
            entry.insert(Member::default());
            for _ in 0..SLOTS_PER_AGENT {
                state.free.push_front(id);
            }
        }
    }
}

/// Free slots [`take_slot`] compares (the front of the list).
const SLOT_SCAN: usize = 64;

/// Takes a free slot of the member that least recently got one, among the first
/// [`SLOT_SCAN`] free slots (a member has several: taking them in list order would hand
/// one agent a run of consecutive rounds), skipping quarantined members.
fn take_slot(state: &mut GroupState, now: i64) -> Option<SessionId> {
    let position = state
        .free
        .iter()
        .take(SLOT_SCAN)
        .enumerate()
        .filter_map(|(position, id)| Some((state.ready_member(id, now)?.last_taken, position)))
        .min()
        .map(|(_, position)| position)
        .or_else(|| {
            state
                .free
                .iter()
                .position(|id| state.ready_member(id, now).is_some())
        })?;
    let session = state.free.remove(position)?;
    state.takes += 1;
    if let Some(member) = state.members.get_mut(&session) {
        member.last_taken = state.takes;
    }
    Some(session)
}

async fn pull_loop(shared: Arc<Shared>, group: Group) {
    loop {
        // Wait until this backend's agents in the group have free slots that no other pull
        // loop has reserved, and reserve them. Slots are picked only as rounds arrive: a
        // pull waits long before its rounds do, and binding them at once would hand the
        // rounds out in the order the pulls started instead of in turn.
        let (consumer, reserved) = loop {
            let freed = shared.slots_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut state = shared.lock();
                let Some(group_state) = state.groups.get_mut(&group) else {
                    return;
                };
                let wanted = unreserved_slots(group_state, now_ms());
                if wanted > 0 {
                    group_state.reserved += wanted;
                    break (group_state.consumer.clone(), wanted);
                }
            }
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = freed => {}
                // Quarantines end without a notification.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };
        let (deliveries, mut arrived) = mpsc::channel(reserved);
        let pulled = async {
            let pulled = consumer.next_batch(reserved, PULL_WAIT, &deliveries).await;
            drop(deliveries);
            pulled
        };
        let handed = async {
            let mut received = 0;
            while let Some(delivery) = arrived.recv().await {
                received += 1;
                hand_out(&shared, &group, delivery).await;
            }
            received
        };
        let (pulled, received) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            both = async { tokio::join!(pulled, handed) } => both,
        };
        {
            let mut state = shared.lock();
            let Some(group_state) = state.groups.get_mut(&group) else {
                return;
            };
            group_state.reserved = group_state
                .reserved
                .saturating_sub(reserved.saturating_sub(received));
        }
        if let Err(err) = pulled {
            tracing::warn!(namespace = %group.namespace, subscription = %group.subscription, %err, "pulling round-robin rounds failed");
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Gives one pulled round (for which a slot was reserved) a slot and sends it on its way.
async fn hand_out(shared: &Arc<Shared>, group: &Group, delivery: Delivery) {
    let session = {
        let mut state = shared.lock();
        state.groups.get_mut(group).and_then(|group_state| {
            group_state.reserved = group_state.reserved.saturating_sub(1);
            take_slot(group_state, now_ms())
        })
    };
    match session {
        Some(session) => {
            let (shared, group) = (shared.clone(), group.clone());
            tokio::spawn(async move { dispatch(&shared, &group, session, delivery).await });
        }
        None => {
            // The free slots went into quarantine (or their agents left, or the group
            // closed) meanwhile: the round goes back to the queue, for another agent or a
            // moment later.
            if let Err(err) = delivery.nak(Duration::from_secs(1)).await {
                tracing::debug!(%err, "releasing an undeliverable round failed");
            }
        }
    }
}

/// How many more slots a pull loop may reserve (at most [`PULL_BATCH`]): free slots of agents
/// out of quarantine beyond those already reserved, counted over a bounded stretch of the free
/// list, so that a group of thousands of agents costs no more per pull than a small one.
/// Slots of quarantined agents met on the way move to the back of the list: at the front they
/// hid every other agent's free slots, and round robin stopped for the group until the
/// quarantine ended.
fn unreserved_slots(state: &mut GroupState, now: i64) -> usize {
    if state.free.len() <= state.reserved {
        return 0;
    }
    let wanted = state.reserved + PULL_BATCH;
    let (mut ready, mut index) = (0, 0);
    for _ in 0..(wanted + SLOT_SCAN).min(state.free.len()) {
        if ready == wanted {
            break;
        }
        if state.ready_member(&state.free[index], now).is_some() {
            ready += 1;
            index += 1;
        } else if let Some(quarantined) = state.free.remove(index) {
            state.free.push_back(quarantined);
        }
    }
    ready.saturating_sub(state.reserved).min(PULL_BATCH)
}

/// Returns a slot to the group (at the front when it was not used).
fn give_back(shared: &Shared, group: &Group, session: SessionId, unused: bool) {
    let mut state = shared.lock();
    if let Some(group_state) = state.groups.get_mut(group) {
        if group_state.members.contains_key(&session) {
            if unused {
                group_state.free.push_front(session);
            } else {
                group_state.free.push_back(session);
            }
        }
    }
    drop(state);
    shared.slots_freed.notify_waiters();
}

/// Hands one delivered round to `session`'s agent, or settles it without running it.
async fn dispatch(shared: &Arc<Shared>, group: &Group, session: SessionId, delivery: Delivery) {
    let labels = RoundLabels::new(&group.namespace, &group.subscription);
    let Some((header, frame)) = decode_message(&delivery.payload) else {
        tracing::error!(msg_id = %delivery.msg_id, "undecodable round-robin message; dropped");
        give_back(shared, group, session, true);
        let _ = delivery.term().await;
        return;
    };
    let Some(round) = RoundRef::parse(&header.round) else {
        tracing::error!(round = %header.round, "malformed round id in the queue; dropped");
        give_back(shared, group, session, true);
        let _ = delivery.term().await;
        return;
    };
    let now = now_ms();
    // Already completed (a redelivery racing the acknowledgement): settle, do not run again.
    let known_done = shared.completed().contains(&round.id);
    // A redelivery — or a round older than a period: a restarted queue may have lost its
    // delivery count — may have completed already; the round record says. On the embedded
    // store this backend's own claims can say it without a read: when round robin falls behind
    // every round is older than a period, and a store read per round then made it fall
    // further behind (2,000 checks a second collapsed to ~560 rounds/s).
    let maybe_done = (delivery.attempt > 1 || now - header.tick_ms > header.budget.period_ms)
        && !shared
            .eventd
            .round_known_open(&round, header.budget.period_ms);
    let done = known_done
        || (maybe_done
            && record::is_completed(shared.store.as_ref(), &round, header.budget.period_ms)
                .await
                .unwrap_or(false));
    if done {
        give_back(shared, group, session, true);
        spawn_ack(delivery);
        return;
    }
    if now > header.budget.round_deadline_ms(header.tick_ms) {
        // Too late to be useful: report it now rather than run a stale round.
        give_back(shared, group, session, true);
        let _ = delivery.term().await;
        shared
            .reconciler
            .report_now(round, header.budget.period_ms)
            .await;
        return;
    }
    if let Some(until) = restart_grace_until(shared.started_ms, &header).filter(|u| *u > now) {
        give_back(shared, group, session, true);
        spawn_nak_after(delivery, Duration::from_millis((until - now) as u64));
        return;
    }
    // An agent runs one execution of a check at a time, and one that was quarantined while
    // this pull waited (it refused or timed out a round) gets none: hand the round to another
    // agent, or put it back for a moment.
    // The choice and the hold are one step: dispatches run concurrently, and two rounds of
    // one check must not both pass the check before either holds it.
    let key = execution_key(&round);
    let chosen = {
        let mut guard = shared.lock();
        let state = &mut *guard;
        let holding = &state.holding;
        let available = |group_state: &GroupState, id: &SessionId| {
            !holding.contains(&(*id, key.clone())) && group_state.ready_member(id, now).is_some()
        };
        let chosen = match state.groups.get_mut(group) {
            Some(group_state) if available(group_state, &session) => Some(session),
            Some(group_state) => {
                match group_state
                    .free
                    .iter()
                    .position(|id| available(group_state, id))
                {
                    Some(position) => {
                        let other = group_state.free.remove(position);
                        group_state.free.push_front(session);
                        other
                    }
                    None => None,
                }
            }
            None => (!holding.contains(&(session, key.clone()))).then_some(session),
        };
        if let Some(chosen) = chosen {
            state.holding.insert((chosen, key.clone()));
        }
        chosen
    };
    let Some(session) = chosen else {
        give_back(shared, group, session, true);
        spawn_nak_after(delivery, Duration::from_millis(200));
        return;
    };
    let unhold = |shared: &Shared| {
        shared.lock().holding.remove(&(session, key.clone()));
    };
    let Some(handle) = shared.dispatcher.session(session) else {
        // The agent left between taking the slot and now; the sweeper drops its slots.
        unhold(shared);
        spawn_nak(delivery);
        shared.slots_freed.notify_waiters();
        return;
    };
    if handle.requests.try_send(frame).is_err() {
        tracing::warn!(agent = %handle.agent, round = %round.id, "agent request queue is full; the round goes to another agent");
        unhold(shared);
        give_back(shared, group, session, false);
        spawn_nak(delivery);
        return;
    }
    shared
        .telemetry
        .rounds_delivered
        .get_or_create(&labels)
        .inc();
    if delivery.attempt > 1 {
        shared
            .telemetry
            .rounds_redelivered
            .get_or_create(&labels)
            .inc();
    } else if let Some(tick) = round.tick_ms {
        shared
            .telemetry
            .round_dispatch_seconds
            .observe((now - tick).max(0) as f64 / 1000.0);
    }
    tracing::debug!(agent = %handle.agent, round = %round.id, attempt = delivery.attempt, "round delivered");
    let flight = InFlight {
        delivery,
        group: group.clone(),
        session,
        agent: handle.agent.clone(),
        round,
        period_ms: header.budget.period_ms,
        deadline_ms: now + header.budget.in_flight_ms(),
        last_progress_ms: now,
    };
    let mut state = shared.lock();
    state
        .in_flight
        .entry(flight.round.id.clone())
        .or_default()
        .push(flight);
}

fn spawn_ack(delivery: Delivery) {
    tokio::spawn(async move {
        let msg_id = delivery.msg_id.clone();
        if let Err(err) = delivery.ack().await {
            // The queue redelivers it; the redelivery is recognized as completed.
            tracing::warn!(%msg_id, %err, "acknowledging a round failed");
        }
    });
}

fn spawn_nak_after(delivery: Delivery, delay: Duration) {
    tokio::spawn(async move {
        let msg_id = delivery.msg_id.clone();
        if let Err(err) = delivery.nak(delay).await {
            tracing::warn!(%msg_id, %err, "releasing a round failed");
        }
    });
}

fn spawn_nak(delivery: Delivery) {
    tokio::spawn(async move {
        let msg_id = delivery.msg_id.clone();
        if let Err(err) = delivery.nak(Duration::ZERO).await {
            // The queue redelivers it after its ack wait anyway.
            tracing::warn!(%msg_id, %err, "releasing a round failed");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Sweeping: agents that left, rounds past their deadline, progress, queue depth.

async fn sweep_loop(shared: Arc<Shared>) {
    let mut membership = shared.dispatcher.membership();
    let mut tick = tokio::time::interval(SWEEP_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweeps: u64 = 0;
    loop {
        let membership_changed = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => false,
            changed = membership.changed() => changed.is_ok(),
        };
        let progressing = sweep(&shared, membership_changed);
        report_progress(&shared, progressing).await;
        sweeps += 1;
        if sweeps.is_multiple_of(10) {
            report_depths(&shared).await;
        }
    }
}

/// Releases the rounds of agents that left or ran out of time, and takes out (returns) the
/// rounds due for a progress report.
fn sweep(shared: &Shared, membership_changed: bool) -> Vec<InFlight> {
    let now = now_ms();
    let mut release = Vec::new();
    let mut progress = Vec::new();
    {
        let mut guard = shared.lock();
        let state = &mut *guard;
        if membership_changed {
            for (group, group_state) in state.groups.iter_mut() {
                refresh_members(&shared.dispatcher, group, group_state);
            }
        }
        let ack_waits: HashMap<&Group, i64> = state
            .groups
            .iter()
            .map(|(group, g)| (group, g.ack_wait_ms))
            .collect();
        let mut emptied = Vec::new();
        for (round_id, flights) in state.in_flight.iter_mut() {
            let mut index = 0;
            while index < flights.len() {
                let flight = &mut flights[index];
                let gone = !shared.dispatcher.is_registered(flight.session);
                if gone || now > flight.deadline_ms {
                    release.push((flights.swap_remove(index), gone));
                    continue;
                }
                let ack_wait = ack_waits.get(&flight.group).copied().unwrap_or(30_000);
                if now - flight.last_progress_ms > ack_wait / 3 {
                    flight.last_progress_ms = now;
                    progress.push(flights.swap_remove(index));
                    continue;
                }
                index += 1;
            }
            if flights.is_empty() {
                emptied.push(round_id.clone());
            }
        }
        for round_id in emptied {
            state.in_flight.remove(&round_id);
        }
        for (flight, gone) in &release {
            state.release_hold(flight);
            let Some(group_state) = state.groups.get_mut(&flight.group) else {
                continue;
            };
            if !gone {
                if let Some(member) = group_state.members.get_mut(&flight.session) {
                    member.quarantined_until = now + QUARANTINE_MS;
                }
                group_state.free.push_back(flight.session);
            }
        }
    }
    if !release.is_empty() || membership_changed {
        shared.slots_freed.notify_waiters();
    }
    for (flight, gone) in release {
        if gone {
            tracing::info!(agent = %flight.agent, round = %flight.round.id, "agent left while holding a round; it goes to another agent");
        } else {
            tracing::warn!(agent = %flight.agent, round = %flight.round.id, "agent did not answer a round in time; it goes to another agent");
        }
        spawn_nak(flight.delivery);
    }
    progress
}

/// Tells the queue that these rounds are still being worked on, then puts them back in flight
/// (or acks them, when their result arrived meanwhile).
async fn report_progress(shared: &Shared, flights: Vec<InFlight>) {
    for flight in flights {
        if let Err(err) = flight.delivery.progress().await {
            tracing::debug!(round = %flight.round.id, %err, "reporting round progress failed");
        }
        if shared.completed().contains(&flight.round.id) {
            shared.lock().release_hold(&flight);
            give_back(shared, &flight.group, flight.session, false);
            spawn_ack(flight.delivery);
        } else {
            shared
                .lock()
                .in_flight
                .entry(flight.round.id.clone())
                .or_default()
                .push(flight);
        }
    }
}

async fn report_depths(shared: &Shared) {
    let groups: Vec<Group> = shared.lock().groups.keys().cloned().collect();
    for group in groups {
        if let Ok(depth) = shared.queue.depth(&group).await {
            shared
                .telemetry
                .round_queue_depth
                .get_or_create(&RoundLabels::new(&group.namespace, &group.subscription))
                .set(depth as i64);
        }
    }
}

/// A bounded set of recently completed round ids (oldest forgotten first).
#[derive(Default)]
pub struct RecentSet {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl RecentSet {
    pub fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > RECENT_COMPLETED {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_header_and_the_frame_unchanged() {
        let header = Header {
            round: "default/ping@1700000000000#linux".into(),
            tick_ms: 1_700_000_000_000,
            budget: Budget {
                execution_ms: 10_000,
                period_ms: 10_000,
            },
        };
        let frame = b"check_request\n{\"round\":\"x\"}\n";
        let (decoded, rest) = decode_message(&encode_message(&header, frame)).unwrap();
        assert_eq!(decoded.round, header.round);
        assert_eq!(decoded.budget, header.budget);
        assert_eq!(&rest[..], &frame[..]);
    }

    /// A group with no members yet, on an in-process queue.
    async fn group_state() -> GroupState {
        let store: Arc<dyn Store> = Arc::new(
            kensa_store::sqlite::SqliteStore::open_in_memory()
                .await
                .unwrap(),
        );
        let queue = kensa_queue::in_process::InProcessQueue::open(store)
            .await
            .unwrap();
        let settings = ConsumerSettings {
            ack_wait: Duration::from_secs(10),
            max_deliver: 3,
        };
        GroupState {
            consumer: queue
                .consumer(&Group::new("default", "zone"), settings)
                .await
                .unwrap(),
            ack_wait_ms: 10_000,
            free: VecDeque::new(),
            members: HashMap::new(),
            takes: 0,
            reserved: 0,
        }
    }

    /// A quarantined agent's free slots at the front of the list do not stop the other agents
    /// from getting rounds (they did: round robin stalled until the quarantine ended).
    #[tokio::test]
    async fn quarantined_slots_do_not_hide_the_free_ones() {
        let mut state = group_state().await;
        for session in [1, 2] {
            state.members.insert(session, Member::default());
            for _ in 0..SLOTS_PER_AGENT {
                state.free.push_back(session);
            }
        }
        state.members.get_mut(&1).unwrap().quarantined_until = 100;
        assert_eq!(unreserved_slots(&mut state, 50), SLOTS_PER_AGENT);
        state.reserved = SLOTS_PER_AGENT;
        assert_eq!(
            unreserved_slots(&mut state, 50),
            0,
            "agent 2's slots are all reserved"
        );
        assert_eq!(
            unreserved_slots(&mut state, 100),
            SLOTS_PER_AGENT,
            "agent 1 is back"
        );
        assert_eq!(take_slot(&mut state, 50), Some(2));
    }

    /// Three agents with several free slots each, listed in blocks (as they joined): slots
    /// go to the agents in turn, a quarantined agent is skipped, and a newcomer is next.
    #[tokio::test]
    async fn slots_rotate_over_the_agents() {
        let mut state = group_state().await;
        for session in [3, 2, 1] {
            state.members.insert(session, Member::default());
            for _ in 0..SLOTS_PER_AGENT {
                state.free.push_back(session);
            }
        }
        let mut taken: Vec<SessionId> = (0..6).map(|_| take_slot(&mut state, 0).unwrap()).collect();
        assert_eq!(taken, vec![3, 2, 1, 3, 2, 1]);

        state.members.get_mut(&2).unwrap().quarantined_until = 100;
        taken = (0..4).map(|_| take_slot(&mut state, 50).unwrap()).collect();
        assert_eq!(taken, vec![3, 1, 3, 1], "agent 2 is quarantined until 100");

        state.members.insert(4, Member::default());
        state.free.push_back(4);
        assert_eq!(
            take_slot(&mut state, 50),
            Some(4),
            "a newcomer gets the next round"
        );
    }

    #[test]
    fn budgets_follow_the_check_timeout_or_interval() {
        let mut request = CheckRequest::default();
        request.config.interval = 30;
        assert_eq!(Budget::of(&request).execution_ms, 30_000);
        request.config.interval = 1;
        assert_eq!(
            Budget::of(&request).execution_ms,
            5_000,
            "at least 5 s by default"
        );
        request.config.timeout = 2;
        assert_eq!(
            Budget::of(&request).execution_ms,
            2_000,
            "an explicit timeout is honoured"
        );
        request.config.interval = 0; // cron
        request.config.timeout = 0;
        assert_eq!(Budget::of(&request).period_ms, 60_000);
        assert_eq!(Budget::of(&request).execution_ms, 60_000);
    }
}
