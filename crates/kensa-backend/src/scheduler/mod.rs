//! The scheduler (reference §3.4): turns check definitions into check requests for agents.
//!
//! One task owns one timer queue for every check of every namespace; nothing sleeps per check
//! and nothing sleeps inside a fire (proxy splay is more timers, §8.8). The task follows the
//! ConfigView: a changed key is applied at once (a changed `interval`/`cron` restarts the
//! check's schedule, any other change swaps the definition in place, a deletion stops it), and
//! the whole view is re-read when the change broadcast lagged and every 30 s as a safety net.
//!
//! Every backend runs every check, as Sensu does, and sends only to its own agents. A fire is
//! identified by its scheduled tick, which every backend computes the same (interval phases
//! are a stable hash, cron is wall-clock), so the round id `<namespace>/<check>@<tick ms>` is
//! the same everywhere and agents can deduplicate on it (§8.7).
//!
//! Code map: `state.rs` — the state and what happens on each event, given the time (start
//! there); `schedule.rs` — fire times and the timer queue; `cron.rs` — cron next-fire;
//! `request.rs` — building, proxy expansion and round ids; `adhoc.rs` — the ad hoc queue's
//! store side.
//!
//! Round-robin checks are not sent here: each round goes, as a [`crate::rounds::RoundOrder`],
//! to the round-robin service, which queues one message per subscription.
//!
//! Not yet: secrets are never sent (Sensu only sends them over mTLS).

mod adhoc;
pub mod cron;
mod request;
mod schedule;
mod state;

use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use kensa_store::Store;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use self::state::{Inbox, SchedulerCore};
use crate::dispatch::Dispatcher;
use crate::rounds::RoundOrders;
use crate::telemetry::Telemetry;
use crate::view::ConfigView;

/// How often the whole view is re-read even when no change was missed.
const RESYNC_PERIOD: Duration = Duration::from_secs(30);
/// The longest the task sleeps without looking at the wall clock: timers are wall-clock
/// instants, and a clock step must not leave them late by more than this.
const MAX_SLEEP: Duration = Duration::from_secs(1);

pub use request::encode as encode_request;

pub struct Scheduler;

impl Scheduler {
    /// Runs until `shutdown`.
    pub fn start(
        view: Arc<ConfigView>,
        store: Arc<dyn Store>,
        dispatcher: Arc<Dispatcher>,
        rounds: RoundOrders,
        telemetry: Arc<Telemetry>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            // Subscribed before the first sync, so no change falls between the two.
            let changes = view.subscribe();
            let (core, inbox) = SchedulerCore::new(
                view,
                store,
                dispatcher,
                rounds,
                telemetry,
                TimeZone::system(),
            );
            run(core, inbox, changes, shutdown).await;
        })
    }
}

fn wall_clock_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

async fn run(
    mut core: SchedulerCore,
    mut inbox: Inbox,
    mut changes: tokio::sync::broadcast::Receiver<Arc<kensa_store::Key>>,
    shutdown: CancellationToken,
) {
    let mut resync = tokio::time::interval(RESYNC_PERIOD);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut following = true;
    loop {
        let now = wall_clock_ms();
        core.run_due(now);
        let sleep = match core.next_due() {
            Some(due) => Duration::from_millis(due.saturating_sub(now).max(0) as u64),
            None => MAX_SLEEP,
        }
        .min(MAX_SLEEP);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            // The first tick is immediate: that is the initial sync.
            _ = resync.tick() => core.sync_all(wall_clock_ms()),
            change = changes.recv(), if following => match change {
                Ok(key) => core.on_change(&key, wall_clock_ms()),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "scheduler missed configuration changes; resynchronizing");
                    core.sync_all(wall_clock_ms());
                }
                Err(RecvError::Closed) => {
                    // Only if the view is dropped; the periodic resync still applies changes.
                    following = false;
                }
            },
            Some(expansion) = inbox.expansions.recv() => {
                core.on_expansion(expansion, wall_clock_ms());
            }
            Some(keys) = inbox.adhoc_listings.recv() => {
                core.on_adhoc_listing(keys, wall_clock_ms());
            }
            _ = tokio::time::sleep(sleep) => {}
        }
    }
    tracing::debug!("scheduler stopped");
}

#[cfg(test)]
mod tests;
