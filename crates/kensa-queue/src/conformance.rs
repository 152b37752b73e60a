//! The one conformance suite every [`WorkQueue`] implementation must pass: each case is an
//! async function that takes a fresh, empty queue (plus a way to open the same queue again, as
//! after a restart) and checks one behaviour of the contract in the crate docs.
//! [`queue_conformance_tests!`](crate::queue_conformance_tests) turns the cases into one
//! `#[tokio::test]` each for an implementation; [`run_all`] runs them in sequence for callers
//! that prefer a single test.
//!
//! Cases use a short `ack_wait` ([`ACK_WAIT`]) so that expiry, progress and delays are
//! observable in about a second; timing assertions only bound from one side (never "not later
//! than" beyond a generous margin), so a slow machine does not make them flaky.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::{ConsumerSettings, Group, QueueError, WorkQueue};

/// The lock duration the cases use.
pub const ACK_WAIT: Duration = Duration::from_secs(1);
/// How long a case waits for a message it expects (far above any real latency).
const EXPECT_WAIT: Duration = Duration::from_secs(5);
/// How long a case waits to conclude that no message comes.
const QUIET_WAIT: Duration = Duration::from_millis(500);
/// Slack for timer granularity when checking "not before".
const EARLY_SLACK: Duration = Duration::from_millis(100);
/// A bound on each case, so a lost wake-up fails the test instead of hanging it.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens another queue object on the same underlying queue (same store, or a new connection to
/// the same stream).
pub type Reopen = Arc<dyn Fn() -> BoxFuture<'static, Arc<dyn WorkQueue>> + Send + Sync>;

/// What a case works on.
#[derive(Clone)]
pub struct Harness {
    pub queue: Arc<dyn WorkQueue>,
    reopen: Reopen,
}

impl Harness {
    /// A second queue object on the same queue, as a restarted backend would open it.
    pub async fn reopen(&self) -> Arc<dyn WorkQueue> {
        (self.reopen)().await
    }
}

/// One conformance case.
pub type Case = fn(Harness) -> BoxFuture<'static, ()>;

/// A fresh queue plus whatever must happen after the case (deleting a stream). If the case
/// panics the teardown future is dropped unpolled, so guards inside it must clean up in `Drop`
/// too.
pub struct Fixture {
    harness: Harness,
    teardown: BoxFuture<'static, ()>,
}

impl Fixture {
    pub fn new(
        queue: Arc<dyn WorkQueue>,
        reopen: impl Fn() -> BoxFuture<'static, Arc<dyn WorkQueue>> + Send + Sync + 'static,
        teardown: impl Future<Output = ()> + Send + 'static,
    ) -> Fixture {
        Fixture {
            harness: Harness {
                queue,
                reopen: Arc::new(reopen),
            },
            teardown: Box::pin(teardown),
        }
    }
}

/// Every case, by name. [`queue_conformance_tests!`](crate::queue_conformance_tests) lists the
/// same names and checks that the lists agree.
pub const CASES: &[(&str, Case)] = &[
    ("publish_next_ack", |h| Box::pin(publish_next_ack(h))),
    ("ack_removes_the_message", |h| {
        Box::pin(ack_removes_the_message(h))
    }),
    ("duplicate_ids_are_stored_once", |h| {
        Box::pin(duplicate_ids_are_stored_once(h))
    }),
    ("a_locked_message_goes_to_one_consumer", |h| {
        Box::pin(a_locked_message_goes_to_one_consumer(h))
    }),
    ("ack_wait_expiry_redelivers", |h| {
        Box::pin(ack_wait_expiry_redelivers(h))
    }),
    ("progress_keeps_the_lock", |h| {
        Box::pin(progress_keeps_the_lock(h))
    }),
    ("nak_redelivers_after_the_delay", |h| {
        Box::pin(nak_redelivers_after_the_delay(h))
    }),
    ("max_deliver_drops_the_message", |h| {
        Box::pin(max_deliver_drops_the_message(h))
    }),
    ("term_removes_the_message", |h| {
        Box::pin(term_removes_the_message(h))
    }),
    ("groups_are_isolated", |h| Box::pin(groups_are_isolated(h))),
    ("depth_counts_queued_and_in_flight", |h| {
        Box::pin(depth_counts_queued_and_in_flight(h))
    }),
    ("waiting_consumers_share_fairly", |h| {
        Box::pin(waiting_consumers_share_fairly(h))
    }),
    ("batch_callers_share_in_proportion_to_their_requests", |h| {
        Box::pin(batch_callers_share_in_proportion_to_their_requests(h))
    }),
    ("messages_survive_a_reopen", |h| {
        Box::pin(messages_survive_a_reopen(h))
    }),
    ("invalid_input_is_refused", |h| {
        Box::pin(invalid_input_is_refused(h))
    }),
    ("later_settings_apply_to_the_group", |h| {
        Box::pin(later_settings_apply_to_the_group(h))
    }),
];

/// Runs the case called `name` on `fixture` (`None`: the implementation is not available here,
/// e.g. no NATS server configured; the case is skipped), then the fixture's teardown.
pub async fn run_case(name: &str, fixture: Option<Fixture>) {
    let Some(Fixture { harness, teardown }) = fixture else {
        return;
    };
    let (_, case) = CASES
        .iter()
        .find(|(case_name, _)| *case_name == name)
        .unwrap_or_else(|| panic!("no queue conformance case named {name}"));
    tokio::time::timeout(CASE_TIMEOUT, case(harness))
        .await
        .unwrap_or_else(|_| panic!("{name} timed out"));
    teardown.await;
}

/// Runs every case, each on a fresh fixture from `make_fixture`; stops quietly if it returns
/// `None`.
pub async fn run_all<F, Fut>(make_fixture: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<Fixture>>,
{
    for (name, _) in CASES {
        let Some(fixture) = make_fixture().await else {
            return;
        };
        eprintln!("queue conformance: {name}");
        run_case(name, Some(fixture)).await;
    }
}

/// Instantiates the suite as one `#[tokio::test]` per case in the calling module. `$fixture`
/// names an `async fn() -> Option<Fixture>`. The calling crate needs tokio's `macros` and
/// `rt-multi-thread` features.
#[macro_export]
macro_rules! queue_conformance_tests {
    (@cases $fixture:path; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::run_case(stringify!($case), $fixture().await).await;
            }
        )+

        #[test]
        fn every_conformance_case_is_instantiated() {
            let instantiated = [$(stringify!($case)),+];
            let defined: Vec<&str> =
                $crate::conformance::CASES.iter().map(|(name, _)| *name).collect();
            assert_eq!(instantiated.to_vec(), defined);
        }
    };
    ($fixture:path) => {
        $crate::queue_conformance_tests!(@cases $fixture;
            publish_next_ack,
            ack_removes_the_message,
            duplicate_ids_are_stored_once,
            a_locked_message_goes_to_one_consumer,
            ack_wait_expiry_redelivers,
            progress_keeps_the_lock,
            nak_redelivers_after_the_delay,
            max_deliver_drops_the_message,
            term_removes_the_message,
            groups_are_isolated,
            depth_counts_queued_and_in_flight,
            waiting_consumers_share_fairly,
            batch_callers_share_in_proportion_to_their_requests,
            messages_survive_a_reopen,
            invalid_input_is_refused,
            later_settings_apply_to_the_group,
        );
    };
}

fn group() -> Group {
    Group::new("default", "linux")
}

fn settings() -> ConsumerSettings {
    ConsumerSettings {
        ack_wait: ACK_WAIT,
        max_deliver: 5,
    }
}

async fn publish_new(queue: &dyn WorkQueue, group: &Group, msg_id: &str, payload: &str) {
    let published = queue
        .publish(group, msg_id, Bytes::from(payload.to_string()))
        .await
        .unwrap_or_else(|err| panic!("publish {msg_id}: {err}"));
    assert!(!published.duplicate, "{msg_id} is new, not a duplicate");
}

async fn publish_next_ack(h: Harness) {
    let queue = h.queue.as_ref();
    let group = group();
    publish_new(queue, &group, "check-1", "run check-1").await;
    let consumer = queue.consumer(&group, settings()).await.unwrap();
    let delivery = consumer
        .next(EXPECT_WAIT)
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(delivery.msg_id, "check-1");
    assert_eq!(delivery.payload, Bytes::from("run check-1"));
    assert_eq!(delivery.attempt, 1);
    delivery.ack().await.unwrap();
    assert_eq!(queue.depth(&group).await.unwrap(), 0);
    let stats = queue.stats();
    assert_eq!(
        (stats.published, stats.delivered, stats.acked),
        (1, 1, 1),
        "{stats:?}"
    );
    queue.ping().await.unwrap();
    assert!(["in-process", "nats-jetstream"].contains(&queue.kind()));
}

async fn ack_removes_the_message(h: Harness) {
    let queue = h.queue.as_ref();
    let group = group();
    publish_new(queue, &group, "m", "x").await;
    let consumer = queue.consumer(&group, settings()).await.unwrap();
    let delivery = consumer
        .next(EXPECT_WAIT)
        .await
        .unwrap()
        .expect("a message");
    delivery.ack().await.unwrap();
    // Well past the ack wait: an acked message never comes back.
    let again = consumer.next(ACK_WAIT * 2).await.unwrap();
    assert!(again.is_none(), "acked message redelivered: {again:?}");
    assert_eq!(queue.stats().redelivered, 0);
}

async fn duplicate_ids_are_stored_once(h: Harness) {
    let queue = h.queue.as_ref();
    let group = group();
    publish_new(queue, &group, "tick-1", "first").await;
    let again = queue
        .publish(&group, "tick-1", Bytes::from("second"))
        .await
        .unwrap();
    assert!(again.duplicate, "same id while queued");
    publish_new(queue, &group, "tick-2", "other").await;

    let consumer = queue.consumer(&group, settings()).await.unwrap();
    let first = consumer.next(EXPECT_WAIT).await.unwrap().expect("tick-1");
    assert_eq!(
        (first.msg_id.as_str(), &first.payload),
        ("tick-1", &Bytes::from("first"))
    );
    let in_flight = queue
        .publish(&group, "tick-1", Bytes::from("third"))
        .await
        .unwrap();
    assert!(in_flight.duplicate, "same id while in flight");
    first.ack().await.unwrap();
    let second = consumer.next(EXPECT_WAIT).await.unwrap().expect("tick-2");
    assert_eq!(second.msg_id, "tick-2");
    second.ack().await.unwrap();

    let after_ack = queue
        .publish(&group, "tick-1", Bytes::from("fourth"))
        .await
        .unwrap();
    assert!(
        after_ack.duplicate,
        "same id within the window after its ack"
    );
    let none = consumer.next(QUIET_WAIT).await.unwrap();
    assert!(none.is_none(), "a duplicate was delivered: {none:?}");
    let stats = queue.stats();
    assert_eq!((stats.published, stats.duplicates), (2, 3), "{stats:?}");
}

async fn a_locked_message_goes_to_one_consumer(h: Harness) {
    let queue = h.queue.as_ref();
    let group = group();
    let first = queue.consumer(&group, settings()).await.unwrap();
    let second = queue.consumer(&group, settings()).await.unwrap();
    publish_new(queue, &group, "only", "x").await;
    let delivery = first.next(EXPECT_WAIT).await.unwrap().expect("a message");
    let other = second.next(QUIET_WAIT).await.unwrap();
    assert!(other.is_none(), "locked message delivered twice: {other:?}");
    delivery.ack().await.unwrap();
    assert!(second.next(QUIET_WAIT).await.unwrap().is_none());
}

async fn ack_wait_expiry_redelivers(h: Harness) {
    let queue = h.queue.as_ref();
    let group = group();
    publish_new(queue, &group, "slow", "x").await;
    let first_consumer = queue.consumer(&group, settings()).await.unwrap();
    let second_consumer = queue.consumer(&group, settings()).await.unwrap();
    let first = first_consumer
        .next(EXPECT_WAIT)
        .await
        .unwrap()
        .expect("a message");
    let delivered_at = Instant::now();
    let second = second_consumer
        .next(EXPECT_WAIT)
        .await
        .unwrap()
        .expect("redelivery after ack_wait");
    assert!(
        delivered_at.elapsed() + EARLY_SLACK >= ACK_WAIT,
        "redelivered after {:?}, before the ack wait",
        delivered_at.elapsed()
    );
    assert_eq!((second.msg_id.as_str(), second.attempt), ("slow", 2));
    // The first holder's late ack is accepted and removes the message.
    first.ack().await.unwrap();
    drop(second);
    assert!(first_consumer.next(ACK_WAIT * 2).await.unwrap().is_none());
    assert_eq!(queue.depth(&group).await.unwrap(), 0);
    assert_eq!(queue.stats().redelivered, 1);
}

async fn progress_keeps_the_lock(h: Harness) {
    let queue = h.queue.as_ref();
    let group = group();
    publish_new(queue, &group, "long", "x").await;
    let holder = queue.consumer(&group, settings()).await.unwrap();
    let other = queue.consumer(&group, settings()).await.unwrap();
    let delivery = holder.next(EXPECT_WAIT).await.unwrap().expect("a message");
    let competitor = tokio::spawn(async move { other.next(ACK_WAIT * 3).await });
    let until = Instant::now() + ACK_WAIT * 3;
    while Instant::now() < until {
        delivery.progress().await.unwrap();
        tokio::time::sleep(ACK_WAIT / 4).await;
    }
    let stolen = competitor.await.unwrap().unwrap();
    assert!(
        stolen.is_none(),
        "progressed message redelivered: {stolen:?}"
    );
    assert_eq!(delivery.attempt, 1);
    delivery.ack().await.unwrap();
    assert_eq!(queue.depth(&group).await.unwrap(), 0);
}

async fn nak_redelivers_after_the_delay(h: Harness) {
    let queue = h.queue.as_ref();
    let group = group();
    publish_new(queue, &group, "first", "x").await;
    publish_new(queue, &group, "second", "y").await;
    let consumer = queue.consumer(&group, settings()).await.unwrap();
    let first = consumer.next(EXPECT_WAIT).await.unwrap().expect("first");
    assert_eq!(first.msg_id, "first");
    let delay = Duration::from_millis(1500);
    let nacked_at = Instant::now();
    first.nak(delay).await.unwrap();
    // A delayed message does not hold up the ones behind it.
    let second = consumer.next(EXPECT_WAIT).await.unwrap().expect("second");
    assert_eq!(second.msg_id, "second");
    assert!(
        nacked_at.elapsed() < delay,
        "second message waited for the delay"
    );
    second.ack().await.unwrap();
    let again = consumer
        .next(EXPECT_WAIT)
        .await
        .unwrap()
        .expect("redelivery");
    assert!(
        nacked_at.elapsed() + EARLY_SLACK >= delay,
        "redelivered after {:?}, before the nak delay",
        nacked_at.elapsed()
    );
    assert_eq!((again.msg_id.as_str(), again.attempt), ("first", 2));
    again.ack().await.unwrap();
    assert_eq!(queue.stats().nacked, 1);
}

async fn max_deliver_drops_the_message(h: Harness) {
    let queue = h.queue.as_ref();
    // Exhausted by naks.
    let nacked = Group::new("default", "nacked");
    let twice = ConsumerSettings {
        ack_wait: ACK_WAIT,
        max_deliver: 2,
    };
    publish_new(queue, &nacked, "poison", "x").await;
    let consumer = queue.consumer(&nacked, twice).await.unwrap();
    for attempt in 1..=2 {
        let delivery = consumer.next(EXPECT_WAIT).await.unwrap().expect("delivery");
        assert_eq!(delivery.attempt, attempt);
        delivery.nak(Duration::ZERO).await.unwrap();
    }
    let none = consumer.next(ACK_WAIT * 2).await.unwrap();
    assert!(none.is_none(), "delivered past max_deliver: {none:?}");
    assert_eq!(queue.depth(&nacked).await.unwrap(), 0);
    assert_eq!(queue.stats().exhausted, 1);
    let again = queue
        .publish(&nacked, "poison", Bytes::from("x"))
        .await
        .unwrap();
    assert!(again.duplicate, "a dropped id stays in the dedup window");

    // Exhausted by ack-wait expiry.
    let expired = Group::new("default", "expired");
    let once = ConsumerSettings {
        ack_wait: ACK_WAIT,
        max_deliver: 1,
    };
    publish_new(queue, &expired, "crasher", "x").await;
    let consumer = queue.consumer(&expired, once).await.unwrap();
    let delivery = consumer.next(EXPECT_WAIT).await.unwrap().expect("delivery");
    drop(delivery);
    let none = consumer.next(ACK_WAIT * 3).await.unwrap();
    assert!(none.is_none(), "delivered past max_deliver: {none:?}");
    assert_eq!(queue.depth(&expired).await.unwrap(), 0);
    let stats = queue.stats();
    assert_eq!((stats.exhausted, stats.delivered), (2, 3), "{stats:?}");
}

async fn term_removes_the_message(h: Harness) {
    let queue = h.queue.as_ref();
    let group = group();
    publish_new(queue, &group, "stale", "x").await;
    let consumer = queue.consumer(&group, settings()).await.unwrap();
    let delivery = consumer
        .next(EXPECT_WAIT)
        .await
        .unwrap()
        .expect("a message");
    delivery.term().await.unwrap();
    let none = consumer.next(ACK_WAIT * 2).await.unwrap();
    assert!(none.is_none(), "terminated message redelivered: {none:?}");
    assert_eq!(queue.depth(&group).await.unwrap(), 0);
    let stats = queue.stats();
    assert_eq!((stats.terminated, stats.acked), (1, 0), "{stats:?}");
}

async fn groups_are_isolated(h: Harness) {
    let queue = h.queue.as_ref();
    // Names with characters that are special in NATS subjects and store names.
    let groups = [
        Group::new("default", "linux"),
        Group::new("default", "linux.web *>"),
        Group::new("team a/b", "linux"),
        Group::new("", "linux"),
    ];
    for (index, group) in groups.iter().enumerate() {
        publish_new(queue, group, "same-id", &format!("payload {index}")).await;
    }
    for (index, group) in groups.iter().enumerate() {
        let consumer = queue.consumer(group, settings()).await.unwrap();
        let delivery = consumer
            .next(EXPECT_WAIT)
            .await
            .unwrap()
            .expect("a message");
        assert_eq!(delivery.payload, Bytes::from(format!("payload {index}")));
        assert!(consumer.next(QUIET_WAIT).await.unwrap().is_none());
        delivery.ack().await.unwrap();
        assert_eq!(queue.depth(group).await.unwrap(), 0, "{group}");
        for later in &groups[index + 1..] {
            assert_eq!(queue.depth(later).await.unwrap(), 1, "{later}");
        }
    }
}

async fn depth_counts_queued_and_in_flight(h: Harness) {
    let queue = h.queue.as_ref();
    let group = group();
    assert_eq!(queue.depth(&group).await.unwrap(), 0);
    for id in ["a", "b", "c"] {
        publish_new(queue, &group, id, "x").await;
    }
    assert_eq!(queue.depth(&group).await.unwrap(), 3);
    let consumer = queue.consumer(&group, settings()).await.unwrap();
    let delivery = consumer
        .next(EXPECT_WAIT)
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(
        queue.depth(&group).await.unwrap(),
        3,
        "in flight still counts"
    );
    delivery.ack().await.unwrap();
    assert_eq!(queue.depth(&group).await.unwrap(), 2);
}

async fn waiting_consumers_share_fairly(h: Harness) {
    const CONSUMERS: usize = 3;
    const MESSAGES: usize = 30;
    let queue = h.queue.clone();
    let group = group();
    let stop = Arc::new(AtomicBool::new(false));
    let (received_tx, mut received_rx) = tokio::sync::mpsc::channel::<usize>(MESSAGES);
    let mut tasks = Vec::new();
    for index in 0..CONSUMERS {
        let consumer = queue.consumer(&group, settings()).await.unwrap();
        let stop = stop.clone();
        let received_tx = received_tx.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Some(delivery) = consumer.next(Duration::from_secs(2)).await.unwrap() {
                    delivery.ack().await.unwrap();
                    received_tx.send(index).await.unwrap();
                }
            }
        }));
    }
    // Let every consumer start waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut counts = [0usize; CONSUMERS];
    for n in 0..MESSAGES {
        publish_new(queue.as_ref(), &group, &format!("m{n}"), "x").await;
        let index = tokio::time::timeout(EXPECT_WAIT, received_rx.recv())
            .await
            .expect("message received")
            .expect("consumers running");
        counts[index] += 1;
    }
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.abort();
    }
    let fair = MESSAGES / CONSUMERS;
    assert!(
        counts.iter().all(|&count| count.abs_diff(fair) <= 3),
        "unfair share: {counts:?}"
    );
}

/// Three backends' pull loops on one group, as round robin runs them: one with two batch
/// requests open, two with one each (the last opened after the others), and more open
/// requests than messages arriving within a request's wait. Each gets its share — with
/// one-message requests instead, the first backend's requests kept being served and the last
/// backend got nothing (the requests that lost their turn expired and queued up behind the
/// ones just served, every time).
async fn batch_callers_share_in_proportion_to_their_requests(h: Harness) {
    const BATCH: usize = 8;
    const MESSAGES: usize = 60;
    const WAIT: Duration = Duration::from_secs(1);
    let queue = h.queue.clone();
    let group = group();
    let (received_tx, mut received_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let mut tasks = Vec::new();
    for (backend, loops) in [(0usize, 2usize), (1, 1), (2, 1)] {
        let consumer = queue.consumer(&group, settings()).await.unwrap();
        for _ in 0..loops {
            let (consumer, received_tx) = (consumer.clone(), received_tx.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let (tx, mut rx) = tokio::sync::mpsc::channel::<crate::Delivery>(BATCH);
                    let taken = async {
                        while let Some(delivery) = rx.recv().await {
                            delivery.ack().await.unwrap();
                            let _ = received_tx.send(backend);
                        }
                    };
                    let fetched = async {
                        let fetched = consumer.next_batch(BATCH, WAIT, &tx).await;
                        drop(tx);
                        fetched
                    };
                    let (fetched, ()) = tokio::join!(fetched, taken);
                    fetched.unwrap();
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in 0..MESSAGES {
        publish_new(queue.as_ref(), &group, &format!("m{n}"), "x").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut counts = [0usize; 3];
    for _ in 0..MESSAGES {
        let backend = tokio::time::timeout(EXPECT_WAIT, received_rx.recv())
            .await
            .expect("every message received")
            .expect("consumers running");
        counts[backend] += 1;
    }
    for task in tasks {
        task.abort();
    }
    // Fair: 30, 15, 15.
    assert!(
        counts[0] >= 20 && counts[1] >= 8 && counts[2] >= 8,
        "unfair share: {counts:?}"
    );
}

async fn messages_survive_a_reopen(h: Harness) {
    let group = group();
    {
        let queue = h.queue.as_ref();
        publish_new(queue, &group, "p1", "first").await;
        publish_new(queue, &group, "p2", "second").await;
        let consumer = queue.consumer(&group, settings()).await.unwrap();
        // Delivered but never acked: must come back.
        let delivery = consumer.next(EXPECT_WAIT).await.unwrap().expect("p1");
        assert_eq!(delivery.msg_id, "p1");
        drop(delivery);
    }
    let reopened = h.reopen().await;
    let again = reopened
        .publish(&group, "p2", Bytes::from("again"))
        .await
        .unwrap();
    assert!(again.duplicate, "dedup survives the reopen");
    let consumer = reopened.consumer(&group, settings()).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let delivery = consumer
            .next(EXPECT_WAIT)
            .await
            .unwrap()
            .expect("message kept across the reopen");
        seen.push((delivery.msg_id.clone(), delivery.payload.clone()));
        delivery.ack().await.unwrap();
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("p1".to_string(), Bytes::from("first")),
            ("p2".to_string(), Bytes::from("second")),
        ]
    );
    assert_eq!(reopened.depth(&group).await.unwrap(), 0);
}

async fn invalid_input_is_refused(h: Harness) {
    let queue = h.queue.as_ref();
    let group = group();
    let invalid = |result: Result<(), QueueError>, what: &str| match result {
        Err(QueueError::Invalid(_)) => {}
        Err(other) => panic!("{what}: expected Invalid, got {other}"),
        Ok(_) => panic!("{what}: accepted"),
    };
    invalid(
        queue.publish(&group, "", Bytes::new()).await.map(|_| ()),
        "empty msg_id",
    );
    invalid(
        queue
            .publish(&group, "a\nb", Bytes::new())
            .await
            .map(|_| ()),
        "msg_id with a newline",
    );
    invalid(
        queue
            .publish(&Group::new("default", ""), "id", Bytes::new())
            .await
            .map(|_| ()),
        "empty subscription",
    );
    let zero = ConsumerSettings {
        ack_wait: ACK_WAIT,
        max_deliver: 0,
    };
    invalid(
        queue.consumer(&group, zero).await.map(|_| ()),
        "max_deliver 0",
    );
    let no_wait = ConsumerSettings {
        ack_wait: Duration::ZERO,
        max_deliver: 1,
    };
    invalid(
        queue.consumer(&group, no_wait).await.map(|_| ()),
        "ack_wait 0",
    );
}

async fn later_settings_apply_to_the_group(h: Harness) {
    let queue = h.queue.as_ref();
    let group = group();
    let first = queue.consumer(&group, settings()).await.unwrap();
    let longer = ConsumerSettings {
        ack_wait: ACK_WAIT * 3,
        max_deliver: 5,
    };
    let second = queue.consumer(&group, longer).await.unwrap();
    publish_new(queue, &group, "m", "x").await;
    let delivery = first.next(EXPECT_WAIT).await.unwrap().expect("a message");
    // Locked for the longer ack wait now, whichever handle received it.
    let other = second.next(ACK_WAIT * 2).await.unwrap();
    assert!(
        other.is_none(),
        "redelivered before the new ack wait: {other:?}"
    );
    delivery.ack().await.unwrap();
}
