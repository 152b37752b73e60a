//! The reconciler: compares the rounds scheduled with the rounds completed, so a round that
//! cannot run is reported instead of silently lost — whatever the reason (no agent of the
//! subscription connected, every agent failing it, a queue that lost or stuck a message, a
//! publish that never succeeded).
//!
//! Every backend expects every round it published. At the round's deadline it reads the
//! round's slot: completed → fine (and if the check's rounds were reported missed, the
//! "round missed" event is resolved); otherwise the round is recorded missed with a
//! compare-and-set on the slot, and only the backend that wins it raises the event, so several
//! backends report a miss once.
//!
//! The "round missed" event: entity `round-robin:<subscription>` (a proxy entity standing for
//! the subscription's pool of agents), the check's own definition — so its handlers and
//! pipelines alert as for any failure — with status 2, an output naming the round, and the
//! check annotation `kensa.io/missed-round: "true"` (what the dashboard shows). The next
//! completed round sends status 0 on the same event.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kensa_store::Store;
use kensa_types::resources::check::{Check, CheckConfig};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::record::{self, Miss, RoundRef};
use super::RecentSet;
use crate::eventd::{Eventd, Origin, Submission};
use crate::telemetry::{RoundLabels, Telemetry};
use crate::view::ConfigView;

/// The annotation the dashboard reads (see `web::index::MISSED_ROUND_ANNOTATION`).
pub const MISSED_ROUND_ANNOTATION: &str = "kensa.io/missed-round";
/// The annotation naming the round a "round missed" event is about.
pub const ROUND_ANNOTATION: &str = "kensa.io/round";
/// The label naming the subscription of a round-robin pool entity.
pub const SUBSCRIPTION_LABEL: &str = "kensa.io/round-robin-subscription";
/// How long what the store said about a "round missed" event is trusted.
const RECHECK_MS: i64 = 30_000;
/// How often due rounds are checked.
const CHECK_PERIOD: Duration = Duration::from_millis(500);

/// The entity name standing for a subscription's pool of agents.
pub fn pool_entity(subscription: &str) -> String {
    format!("round-robin:{subscription}")
}

#[derive(Clone)]
pub struct Reconciler {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    view: Arc<ConfigView>,
    eventd: Eventd,
    telemetry: Arc<Telemetry>,
    /// Rounds this backend saw completed: no store read needed for them.
    completed: Arc<Mutex<RecentSet>>,
    /// Rounds waiting for their deadline, earliest first. Never held across an await.
    pending: Mutex<BinaryHeap<Reverse<Pending>>>,
    /// Per `(namespace, check, subscription)`: whether its "round missed" event is failing, and
    /// when that was last read from the store (another backend, or this one before a restart,
    /// may have raised it).
    failing: Mutex<HashMap<MissKey, (bool, i64)>>,
}

/// `(namespace, check, subscription)`: what a "round missed" event is raised for.
type MissKey = (String, String, String);

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    deadline_ms: i64,
    round_id: String,
    period_ms: i64,
}

impl Reconciler {
    pub fn new(
        store: Arc<dyn Store>,
        view: Arc<ConfigView>,
        eventd: Eventd,
        telemetry: Arc<Telemetry>,
        completed: Arc<Mutex<RecentSet>>,
    ) -> Reconciler {
        Reconciler {
            inner: Arc::new(Inner {
                store,
                view,
                eventd,
                telemetry,
                completed,
                pending: Mutex::new(BinaryHeap::new()),
                failing: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Remembers that `round` must be completed by `deadline_ms`.
    pub fn expect(&self, round: RoundRef, period_ms: i64, deadline_ms: i64) {
        self.inner
            .pending
            .lock()
            .expect("reconciler lock poisoned")
            .push(Reverse(Pending {
                deadline_ms,
                round_id: round.id,
                period_ms,
            }));
    }

    /// Checks `round` right away (the queue gave it back too late to run).
    pub async fn report_now(&self, round: RoundRef, period_ms: i64) {
        self.inner.reconcile(&round, period_ms).await;
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(CHECK_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = jiff::Timestamp::now().as_millisecond();
            loop {
                let due = {
                    let mut pending = self.inner.pending.lock().expect("reconciler lock poisoned");
                    match pending.peek() {
                        Some(Reverse(first)) if first.deadline_ms <= now => pending.pop(),
                        _ => None,
                    }
                };
                let Some(Reverse(due)) = due else { break };
                if let Some(round) = RoundRef::parse(&due.round_id) {
                    self.inner.reconcile(&round, due.period_ms).await;
                }
            }
        }
    }
}

impl Inner {
    async fn reconcile(&self, round: &RoundRef, period_ms: i64) {
        let now = jiff::Timestamp::now().as_millisecond();
        let series = (
            round.namespace.clone(),
            round.check.clone(),
            round.subscription.clone(),
        );
        let known_completed = self
            .completed
            .lock()
            .expect("completed rounds lock poisoned")
            .contains(&round.id);
        let outcome = if known_completed {
            Ok(Miss::Completed)
        } else {
            record::mark_missed(self.store.as_ref(), round, period_ms, now).await
        };
        match outcome {
            Ok(Miss::Completed) => {
                let known = self
                    .failing
                    .lock()
                    .expect("reconciler lock poisoned")
                    .get(&series)
                    .copied();
                let failing = match known {
                    Some((failing, checked)) if now - checked < RECHECK_MS => failing,
                    _ => self.pool_event_failing(round).await,
                };
                if failing {
                    self.raise(round, false, now).await;
                }
                self.failing
                    .lock()
                    .expect("reconciler lock poisoned")
                    .insert(series, (false, now));
            }
            Ok(Miss::AlreadyRecorded) => {}
            Ok(Miss::Recorded) => {
                self.telemetry
                    .rounds_missed
                    .get_or_create(&RoundLabels::new(&round.namespace, &round.subscription))
                    .inc();
                tracing::warn!(round = %round.id, "round-robin round missed: no agent completed it by its deadline");
                self.failing
                    .lock()
                    .expect("reconciler lock poisoned")
                    .insert(series, (true, now));
                self.raise(round, true, now).await;
            }
            Err(err) => {
                tracing::error!(round = %round.id, %err, "cannot reconcile a round-robin round");
            }
        }
    }

    /// Whether the stored "round missed" event of the round's check is failing (another
    /// backend, or this one before a restart, raised it).
    async fn pool_event_failing(&self, round: &RoundRef) -> bool {
        let key = kensa_store::Key::new(
            "events",
            &round.namespace,
            format!("{}/{}", pool_entity(&round.subscription), round.check),
        );
        match self.store.get(&key).await {
            Ok(Some(stored)) => stored.value["check"]["status"].as_u64().unwrap_or(0) != 0,
            _ => false,
        }
    }

    /// Sends the "round missed" event (`missed`) or its resolution.
    async fn raise(&self, round: &RoundRef, missed: bool, now_ms: i64) {
        let Some(config) =
            self.view
                .decode::<CheckConfig>("checks", &round.namespace, &round.check)
        else {
            return; // the check is gone: nothing to report on
        };
        let event = pool_event(config, round, missed, now_ms);
        if let Err(err) = self
            .eventd
            .submit(Submission::result(event, Origin::Internal))
            .await
        {
            tracing::warn!(round = %round.id, %err, "could not raise the round missed event");
        }
    }
}

/// The event on the subscription's pool entity for `round`.
fn pool_event(config: CheckConfig, round: &RoundRef, missed: bool, now_ms: i64) -> Value {
    let now = now_ms.div_euclid(1000);
    let mut check = Check::from(config);
    check.proxy_entity_name.clear();
    check.executed = now;
    check.issued = round.tick_ms.map_or(now, |tick| tick.div_euclid(1000));
    let subscription = &round.subscription;
    if missed {
        check.status = 2;
        check.output = format!(
            "round {} of round-robin check {} was not completed by any agent of subscription {subscription} before its deadline\n",
            round.id, round.check
        );
    } else {
        check.status = 0;
        check.output = format!(
            "round-robin rounds of check {} on subscription {subscription} complete again\n",
            round.check
        );
    }
    check
        .metadata
        .annotations
        .insert(MISSED_ROUND_ANNOTATION.to_owned(), missed.to_string());
    check
        .metadata
        .annotations
        .insert(ROUND_ANNOTATION.to_owned(), round.id.clone());
    json!({
        "metadata": {"namespace": round.namespace},
        "timestamp": now,
        "id": uuid::Uuid::new_v4().to_string(),
        "entity": {
            "metadata": {
                "name": pool_entity(subscription),
                "namespace": round.namespace,
                "labels": {SUBSCRIPTION_LABEL: subscription},
            },
            "entity_class": "proxy",
        },
        "check": check,
    })
}
