//! The scheduler's state and everything it does, as plain methods taking the current time
//! (Unix milliseconds): which checks exist and when each fires next, what happens when a timer
//! comes due, how ad hoc requests and proxy expansions are handled. The task in `mod.rs` only
//! decides *when* to call these; tests call them with chosen instants instead of waiting.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use jiff::tz::TimeZone;
use kensa_proto::CheckRequest;
use kensa_store::{Key, Store};
use kensa_types::resources::check::{CheckConfig, DEFAULT_SPLAY_COVERAGE};
use serde::Deserialize as _;
use serde_json::Value;
use tokio::sync::mpsc;

use super::adhoc::{self, AdhocRecord, StoreCommand};
use super::request;
use super::schedule::{CheckSchedule, ScheduleSource, TimerQueue};
use crate::api::special::ADHOC_KIND;
use crate::dispatch::Dispatcher;
use crate::rounds::{RoundOrder, RoundOrders};
use crate::telemetry::Telemetry;
use crate::view::ConfigView;

/// How many store commands (ad hoc deletions, listings) may wait; when full, a deletion is
/// skipped with a warning and asked again at the next resync.
const STORE_COMMAND_CAPACITY: usize = 1024;
/// How many finished proxy expansions may wait for the scheduler task; when full, the
/// expansion tasks wait (they are separate tasks, so nothing else does).
const EXPANSION_CAPACITY: usize = 64;

/// A check, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckKey {
    pub namespace: String,
    pub name: String,
}

/// A check the scheduler knows, with its current definition.
struct ScheduledCheck {
    /// The stored definition this was decoded from: a resync skips checks whose value is the
    /// same allocation (the view replaces the `Arc` on every write).
    raw: Arc<Value>,
    config: Arc<CheckConfig>,
    source: ScheduleSource,
    /// `None` when the schedule cannot be computed (unknown time zone…): the check stays
    /// known, so a resync does not warn again, but has no timer.
    schedule: Option<CheckSchedule>,
    /// Changes whenever the schedule does; timers carrying another generation are stale.
    generation: u64,
}

/// What a timer does when it comes due.
enum Timer {
    /// A scheduled fire of the check; the timer's due time is the tick.
    Tick { check: CheckKey, generation: u64 },
    /// A proxy request held back by `proxy_requests.splay`.
    Publish {
        check: CheckKey,
        generation: u64,
        target: Arc<Target>,
        request: Box<CheckRequest>,
    },
}

/// Where a request goes.
#[derive(Debug)]
struct Target {
    namespace: String,
    subscriptions: Vec<String>,
    distribution: Distribution,
    /// The round's scheduled tick (Unix ms; the request time for ad hoc runs).
    tick_ms: i64,
}

/// How a request reaches the subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Distribution {
    /// Every connected agent holding one of the subscriptions gets it.
    FanOut,
    /// `round_robin: true`: one agent of each subscription runs each round, through the
    /// round-robin queue ([`crate::rounds`]).
    RoundRobin,
}

/// Where a proxy expansion came from.
#[derive(Debug)]
enum Origin {
    /// A scheduled fire at `tick_ms`; publishes spread over `window_ms` after it.
    Scheduled {
        check: CheckKey,
        generation: u64,
        tick_ms: i64,
        window_ms: i64,
    },
    /// An ad hoc request: everything is published at once.
    Adhoc,
}

/// The per-entity requests of one proxy fire, computed on the blocking pool.
pub struct ProxyExpansion {
    origin: Origin,
    target: Arc<Target>,
    requests: Vec<CheckRequest>,
}

/// What the scheduler task must also listen to, besides the view and its timers.
pub struct Inbox {
    pub expansions: mpsc::Receiver<ProxyExpansion>,
    /// Keys of the queued ad hoc requests, one batch per [`StoreCommand::ListAdhoc`].
    pub adhoc_listings: mpsc::Receiver<Vec<Key>>,
}

pub struct SchedulerCore {
    view: Arc<ConfigView>,
    dispatcher: Arc<Dispatcher>,
    telemetry: Arc<Telemetry>,
    /// Where `cron` strings without `TZ=` are evaluated (robfig's `time.Local`).
    default_zone: TimeZone,
    checks: HashMap<CheckKey, ScheduledCheck>,
    timers: TimerQueue<Timer>,
    next_generation: u64,
    /// Proxy checks whose expansion is on the blocking pool: a fire that finds its previous
    /// expansion still running is skipped rather than piling up.
    expanding: HashSet<CheckKey>,
    expansions: mpsc::Sender<ProxyExpansion>,
    /// Where round-robin rounds go (the round-robin service publishes them to the queue).
    rounds: RoundOrders,
    /// Ad hoc requests already run, until their deletion reaches the view: the record is still
    /// visible meanwhile and must not run twice.
    adhoc_handled: HashSet<Key>,
    store_commands: mpsc::Sender<StoreCommand>,
}

impl SchedulerCore {
    /// A scheduler with no checks yet (call [`SchedulerCore::sync_all`]). Spawns the store
    /// worker, which ends when the core is dropped.
    pub fn new(
        view: Arc<ConfigView>,
        store: Arc<dyn Store>,
        dispatcher: Arc<Dispatcher>,
        rounds: RoundOrders,
        telemetry: Arc<Telemetry>,
        default_zone: TimeZone,
    ) -> (SchedulerCore, Inbox) {
        let (store_commands, store_commands_rx) = mpsc::channel(STORE_COMMAND_CAPACITY);
        // One listing at a time is plenty; the worker waits when one is already pending.
        let (listings, adhoc_listings) = mpsc::channel(1);
        tokio::spawn(adhoc::store_worker(store, store_commands_rx, listings));
        let (expansions, expansions_rx) = mpsc::channel(EXPANSION_CAPACITY);
        let core = SchedulerCore {
            view,
            dispatcher,
            telemetry,
            default_zone,
            checks: HashMap::new(),
            timers: TimerQueue::default(),
            next_generation: 0,
            expanding: HashSet::new(),
            expansions,
            rounds,
            adhoc_handled: HashSet::new(),
            store_commands,
        };
        let inbox = Inbox {
            expansions: expansions_rx,
            adhoc_listings,
        };
        (core, inbox)
    }

    /// When the earliest timer is due.
    pub fn next_due(&self) -> Option<i64> {
        self.timers.next_due()
    }

    /// Brings every check in line with the view: new ones scheduled, changed schedules
    /// restarted, unchanged ones updated in place, vanished ones stopped. Also asks the store
    /// worker for the queued ad hoc requests.
    pub fn sync_all(&mut self, now_ms: i64) {
        let checks = self.view.list("checks", None);
        let mut present = HashSet::with_capacity(checks.len());
        for raw in checks {
            let metadata = &raw["metadata"];
            let key = CheckKey {
                namespace: metadata["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                name: metadata["name"].as_str().unwrap_or_default().to_owned(),
            };
            present.insert(key.clone());
            self.apply_check(key, Some(raw), now_ms);
        }
        let vanished: Vec<CheckKey> = self
            .checks
            .keys()
            .filter(|key| !present.contains(*key))
            .cloned()
            .collect();
        for key in vanished {
            self.apply_check(key, None, now_ms);
        }
        if self
            .store_commands
            .try_send(StoreCommand::ListAdhoc)
            .is_err()
        {
            tracing::debug!("store worker busy; ad hoc requests are listed at the next resync");
        }
    }

    /// Reacts to one key the view applied.
    pub fn on_change(&mut self, key: &Key, now_ms: i64) {
        match key.kind.as_str() {
            "checks" => {
                let raw = self.view.get(key);
                let check = CheckKey {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                };
                self.apply_check(check, raw, now_ms);
            }
            ADHOC_KIND => self.handle_adhoc(key, now_ms),
            // Assets, hooks and entities are read when a request is built.
            _ => {}
        }
    }

    /// Applies the stored definition `raw` of `key` (`None`: deleted).
    fn apply_check(&mut self, key: CheckKey, raw: Option<Arc<Value>>, now_ms: i64) {
        if let (Some(raw), Some(known)) = (&raw, self.checks.get(&key)) {
            if Arc::ptr_eq(raw, &known.raw) {
                return;
            }
        }
        let decoded = raw.map(|raw| (CheckConfig::deserialize(raw.as_ref()), raw));
        let (config, raw) = match decoded {
            Some((Ok(config), raw)) => (config, raw),
            Some((Err(err), _)) => {
                tracing::warn!(namespace = %key.namespace, check = %key.name, %err, "stored check does not decode; not scheduled");
                self.unschedule(&key);
                return;
            }
            None => {
                self.unschedule(&key);
                return;
            }
        };
        let source = ScheduleSource::of(&config);
        if let Some(known) = self.checks.get_mut(&key) {
            if known.source == source {
                known.config = Arc::new(config);
                known.raw = raw;
                return;
            }
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        let schedule = match CheckSchedule::of(
            &key.namespace,
            &key.name,
            &source,
            &self.default_zone,
        ) {
            Ok(schedule) => Some(schedule),
            Err(err) => {
                tracing::warn!(namespace = %key.namespace, check = %key.name, %err, "check cannot be scheduled");
                None
            }
        };
        if let Some(schedule) = &schedule {
            match schedule.next_after(now_ms) {
                Some(next) => self.timers.push(
                    next,
                    Timer::Tick {
                        check: key.clone(),
                        generation,
                    },
                ),
                None => tracing::warn!(
                    namespace = %key.namespace,
                    check = %key.name,
                    cron = %source.cron,
                    "cron schedule never fires"
                ),
            }
        }
        self.checks.insert(
            key,
            ScheduledCheck {
                raw,
                config: Arc::new(config),
                source,
                schedule,
                generation,
            },
        );
    }

    fn unschedule(&mut self, key: &CheckKey) {
        if self.checks.remove(key).is_some() {
            tracing::debug!(namespace = %key.namespace, check = %key.name, "check unscheduled");
        }
    }

    fn is_current(&self, check: &CheckKey, generation: u64) -> bool {
        self.checks
            .get(check)
            .is_some_and(|known| known.generation == generation)
    }

    /// Runs every timer due at `now_ms`.
    pub fn run_due(&mut self, now_ms: i64) {
        while let Some((due_ms, timer)) = self.timers.pop_due(now_ms) {
            match timer {
                Timer::Tick { check, generation } => self.fire(check, generation, due_ms, now_ms),
                Timer::Publish {
                    check,
                    generation,
                    target,
                    request,
                } => {
                    if self.is_current(&check, generation) {
                        self.deliver(&target, *request);
                    }
                }
            }
        }
    }

    /// One scheduled fire of `check` for the tick `tick_ms`, run at `now_ms`.
    fn fire(&mut self, check: CheckKey, generation: u64, tick_ms: i64, now_ms: i64) {
        let Some(known) = self
            .checks
            .get(&check)
            .filter(|c| c.generation == generation)
        else {
            return; // deleted or rescheduled since this timer was set
        };
        let Some(schedule) = &known.schedule else {
            return;
        };
        // Re-arm before publishing. From the later of the tick and now: a tick run late (a
        // stalled process, a clock jump) fires once, then the grid resumes without a burst.
        let next = schedule.next_after(tick_ms.max(now_ms));
        let round_length_ms = schedule.round_length_ms(tick_ms);
        let config = known.config.clone();
        if let Some(next) = next {
            self.timers.push(
                next,
                Timer::Tick {
                    check: check.clone(),
                    generation,
                },
            );
        }
        if !config.publish {
            return;
        }
        if config.definition().is_subdued(now_ms.div_euclid(1000)) {
            tracing::debug!(namespace = %check.namespace, check = %check.name, "check subdued; skipping this run");
            return;
        }
        self.telemetry.checks_scheduled.inc();
        let target = Arc::new(Target {
            namespace: check.namespace.clone(),
            subscriptions: config.subscriptions.clone(),
            distribution: if config.round_robin {
                Distribution::RoundRobin
            } else {
                Distribution::FanOut
            },
            tick_ms,
        });
        let round = request::scheduled_round(&check.namespace, &check.name, tick_ms);
        let request = request::build(&self.view, &config, now_ms.div_euclid(1000), round);
        match &config.proxy_requests {
            None => self.deliver(&target, request),
            Some(proxy) => {
                let window_ms = if proxy.splay {
                    let coverage = match proxy.splay_coverage {
                        0 => DEFAULT_SPLAY_COVERAGE,
                        coverage => coverage,
                    };
                    round_length_ms * i64::from(coverage) / 100
                } else {
                    0
                };
                if !self.expanding.insert(check.clone()) {
                    tracing::warn!(
                        namespace = %check.namespace,
                        check = %check.name,
                        "the previous round's proxy entities are still being matched; skipping this round"
                    );
                    return;
                }
                let origin = Origin::Scheduled {
                    check,
                    generation,
                    tick_ms,
                    window_ms,
                };
                self.expand(origin, request, target, now_ms);
            }
        }
    }

    /// Matches the proxy entities and builds their requests on the blocking pool; the result
    /// comes back through [`Inbox::expansions`] (hand it to [`SchedulerCore::on_expansion`]).
    fn expand(&self, origin: Origin, template: CheckRequest, target: Arc<Target>, now_ms: i64) {
        let entities = self.view.list("entities", Some(&target.namespace));
        let results = self.expansions.clone();
        let now_unix = now_ms.div_euclid(1000);
        tokio::spawn(async move {
            let requests = tokio::task::spawn_blocking(move || {
                request::expand_proxy(&template, &entities, now_unix)
            })
            .await
            .unwrap_or_else(|err| {
                tracing::error!(%err, "proxy request expansion panicked");
                Vec::new()
            });
            // Fails only when the scheduler has stopped.
            let _ = results
                .send(ProxyExpansion {
                    origin,
                    target,
                    requests,
                })
                .await;
        });
    }

    /// Publishes a finished proxy expansion: request `i` at `tick + i × window / N` (at once
    /// when that is already past), through the timer queue — the scheduler never sleeps.
    pub fn on_expansion(&mut self, expansion: ProxyExpansion, now_ms: i64) {
        let ProxyExpansion {
            origin,
            target,
            requests,
        } = expansion;
        match origin {
            Origin::Adhoc => {
                for request in requests {
                    self.deliver(&target, request);
                }
            }
            Origin::Scheduled {
                check,
                generation,
                tick_ms,
                window_ms,
            } => {
                self.expanding.remove(&check);
                if !self.is_current(&check, generation) {
                    return;
                }
                let gap_ms = window_ms / requests.len().max(1) as i64;
                for (i, request) in requests.into_iter().enumerate() {
                    let due_ms = tick_ms + i as i64 * gap_ms;
                    if due_ms <= now_ms {
                        self.deliver(&target, request);
                    } else {
                        self.timers.push(
                            due_ms,
                            Timer::Publish {
                                check: check.clone(),
                                generation,
                                target: target.clone(),
                                request: Box::new(request),
                            },
                        );
                    }
                }
            }
        }
    }

    /// Sends one request: to every subscriber, or as one round-robin round per subscription.
    fn deliver(&mut self, target: &Target, request: CheckRequest) {
        match target.distribution {
            Distribution::FanOut => self.fan_out(target, request),
            Distribution::RoundRobin => self.rounds.submit(RoundOrder {
                namespace: target.namespace.clone(),
                subscriptions: target.subscriptions.clone(),
                tick_ms: target.tick_ms,
                request,
            }),
        }
    }

    fn fan_out(&self, target: &Target, request: CheckRequest) {
        let frame = request::encode(request);
        let delivery = self
            .dispatcher
            .publish(&target.namespace, &target.subscriptions, &frame);
        self.telemetry
            .check_requests_sent
            .inc_by(delivery.delivered as u64);
        self.telemetry
            .check_requests_dropped
            .inc_by(delivery.dropped as u64);
    }

    /// Runs the ad hoc request stored under `key` once (if the view still holds it) and asks
    /// for its deletion. Ad hoc execution ignores `publish` and subdues; a round-robin check
    /// runs once per subscription on one agent, unless the request names its own
    /// subscriptions (then every agent holding them runs it, as for any check).
    fn handle_adhoc(&mut self, key: &Key, now_ms: i64) {
        let Some(value) = self.view.get(key) else {
            self.adhoc_handled.remove(key); // its deletion arrived
            return;
        };
        if !self.adhoc_handled.insert(key.clone()) {
            return;
        }
        self.request_delete(key);
        let record = match AdhocRecord::deserialize(value.as_ref()) {
            Ok(record) => record,
            Err(err) => {
                tracing::warn!(%key, %err, "malformed ad hoc request; dropped");
                return;
            }
        };
        let namespace = key.namespace.as_str();
        let Some(mut config) = self
            .view
            .decode::<CheckConfig>("checks", namespace, &record.check)
        else {
            tracing::warn!(namespace, check = %record.check, "ad hoc request for a check that does not exist; dropped");
            return;
        };
        tracing::info!(
            namespace,
            check = %record.check,
            creator = %record.creator,
            reason = %record.reason,
            "running check on request"
        );
        let distribution = if !record.subscriptions.is_empty() {
            config.subscriptions = record.subscriptions;
            Distribution::FanOut
        } else if config.round_robin {
            Distribution::RoundRobin
        } else {
            Distribution::FanOut
        };
        self.telemetry.checks_scheduled.inc();
        let target = Arc::new(Target {
            namespace: namespace.to_owned(),
            subscriptions: config.subscriptions.clone(),
            distribution,
            tick_ms: now_ms,
        });
        let round = request::adhoc_round(namespace, &record.check, &key.name);
        let request = request::build(&self.view, &config, now_ms.div_euclid(1000), round);
        match config.proxy_requests {
            None => self.deliver(&target, request),
            Some(_) => self.expand(Origin::Adhoc, request, target, now_ms),
        }
    }

    /// The queued ad hoc requests the store worker listed: run the new ones, ask again for
    /// the deletion of handled ones still there, forget handled ones that are gone.
    pub fn on_adhoc_listing(&mut self, keys: Vec<Key>, now_ms: i64) {
        let listed: HashSet<Key> = keys.into_iter().collect();
        for key in &listed {
            if self.adhoc_handled.contains(key) {
                self.request_delete(key);
            } else {
                self.handle_adhoc(key, now_ms);
            }
        }
        let view = &self.view;
        self.adhoc_handled
            .retain(|key| listed.contains(key) || view.get(key).is_some());
    }

    fn request_delete(&self, key: &Key) {
        if self
            .store_commands
            .try_send(StoreCommand::Delete(key.clone()))
            .is_err()
        {
            tracing::warn!(%key, "ad hoc deletion queue is full; retrying at the next resync");
        }
    }
}
