//! Scheduler behaviour over a real ConfigView (in-memory SQLite store, following its change
//! feed) and a real Dispatcher with fake agent sessions (their request queues). Most tests
//! drive [`SchedulerCore`] with chosen instants, so nothing waits for a tick; the tests of the
//! running task use 1-second checks and bounded waits on events.

use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use kensa_proto::{BackendMessage, CheckRequest};
use kensa_store::sqlite::SqliteStore;
use kensa_store::{Key, Precondition, Store};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::state::{Inbox, SchedulerCore};
use super::Scheduler;
use crate::api::special::ADHOC_KIND;
use crate::dispatch::{Dispatcher, Frame, SessionHandle};
use crate::rounds::{RoundOrder, RoundOrders};
use crate::telemetry::Telemetry;
use crate::view::ConfigView;

/// 2023-11-14T22:13:20Z.
const T0: i64 = 1_700_000_000_000;
/// How long a test waits for something the running scheduler should do within ~1 s.
const PATIENCE: Duration = Duration::from_secs(5);

struct Harness {
    store: Arc<dyn Store>,
    view: Arc<ConfigView>,
    dispatcher: Arc<Dispatcher>,
    telemetry: Arc<Telemetry>,
    /// Round-robin rounds the scheduler handed over (the round-robin service's input).
    rounds: RoundOrders,
    orders: std::sync::Mutex<mpsc::Receiver<RoundOrder>>,
    stop: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A store holding `resources` (kind, name, value; namespace `default`) and a view following it.
async fn harness(resources: Vec<(&str, &str, Value)>) -> Harness {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await.expect("store"));
    for (kind, name, value) in resources {
        store
            .put(&Key::new(kind, "default", name), &value, Precondition::None)
            .await
            .expect("put");
    }
    let view = ConfigView::load(store.as_ref()).await.expect("view");
    let stop = CancellationToken::new();
    tokio::spawn(view.clone().follow(store.clone(), stop.clone()));
    let telemetry = Arc::new(Telemetry::new());
    let (rounds, orders) = RoundOrders::channel(telemetry.clone());
    Harness {
        store,
        view,
        dispatcher: Arc::new(Dispatcher::new()),
        telemetry,
        rounds,
        orders: std::sync::Mutex::new(orders),
        stop,
    }
}

impl Harness {
    fn core(&self) -> (SchedulerCore, Inbox) {
        SchedulerCore::new(
            self.view.clone(),
            self.store.clone(),
            self.dispatcher.clone(),
            self.rounds.clone(),
            self.telemetry.clone(),
            TimeZone::UTC,
        )
    }

    /// The round-robin rounds handed over so far.
    fn round_orders(&self) -> Vec<RoundOrder> {
        let mut orders = self.orders.lock().unwrap();
        std::iter::from_fn(|| orders.try_recv().ok()).collect()
    }

    fn start(&self) {
        Scheduler::start(
            self.view.clone(),
            self.store.clone(),
            self.dispatcher.clone(),
            self.rounds.clone(),
            self.telemetry.clone(),
            self.stop.clone(),
        );
    }

    /// A connected agent `agent` with `subscriptions`; returns its request queue.
    fn agent(&self, id: u64, agent: &str, subscriptions: &[&str]) -> mpsc::Receiver<Frame> {
        let (requests, queue) = mpsc::channel(64);
        self.dispatcher.register(
            SessionHandle {
                id,
                namespace: "default".into(),
                agent: agent.into(),
                requests,
            },
            subscriptions.iter().map(|s| s.to_string()).collect(),
        );
        queue
    }

    /// Writes a resource and waits until the view has it.
    async fn put(&self, kind: &str, name: &str, value: Value) -> Key {
        let key = Key::new(kind, "default", name);
        let revision = self
            .store
            .put(&key, &value, Precondition::None)
            .await
            .expect("put");
        self.view.wait_for(revision).await;
        key
    }

    async fn delete(&self, kind: &str, name: &str) -> Key {
        let key = Key::new(kind, "default", name);
        self.store
            .delete(&key, Precondition::None)
            .await
            .expect("delete");
        let revision = self.store.revision().await.expect("revision");
        self.view.wait_for(revision).await;
        key
    }

    /// Waits (at most [`PATIENCE`]) until the view no longer holds `key`.
    async fn wait_gone(&self, key: &Key) {
        let mut changes = self.view.subscribe();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.view.get(key).is_some() {
            tokio::time::timeout_at(deadline, changes.recv())
                .await
                .unwrap_or_else(|_| panic!("{key} was not deleted"))
                .expect("view changes");
        }
    }
}

fn check(name: &str, overrides: Value) -> Value {
    let mut check = json!({
        "metadata": {"name": name, "namespace": "default"},
        "command": "check-cpu.sh",
        "interval": 60,
        "publish": true,
        "subscriptions": ["linux"],
    });
    for (field, value) in overrides.as_object().expect("overrides are an object") {
        check[field] = value.clone();
    }
    check
}

fn named(name: &str, fields: Value) -> Value {
    let mut value = fields;
    value["metadata"] = json!({"name": name, "namespace": "default"});
    value
}

fn decode(frame: &Frame) -> CheckRequest {
    match BackendMessage::decode(frame).expect("a valid frame") {
        BackendMessage::CheckRequest(request) => *request,
        other => panic!("expected a check request, got {other:?}"),
    }
}

/// Every request waiting in an agent's queue.
fn drain(queue: &mut mpsc::Receiver<Frame>) -> Vec<CheckRequest> {
    std::iter::from_fn(|| queue.try_recv().ok())
        .map(|frame| decode(&frame))
        .collect()
}

async fn next_request(queue: &mut mpsc::Receiver<Frame>) -> CheckRequest {
    let frame = tokio::time::timeout(PATIENCE, queue.recv())
        .await
        .expect("a check request in time")
        .expect("queue open");
    decode(&frame)
}

/// The scheduled tick (Unix ms) in a round id `<ns>/<check>@<tick>[/<entity>]`.
fn tick_of(round: &str) -> i64 {
    let (_, rest) = round.split_once('@').expect("round has a tick");
    rest.split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .expect("tick is a number")
}

#[tokio::test]
async fn a_check_fires_on_its_subscriptions_with_resolved_assets_hooks_and_round() {
    let asset = |name: &str| {
        named(
            name,
            json!({"url": format!("http://assets/{name}.tgz"), "sha512": "abc"}),
        )
    };
    let h = harness(vec![
        (
            "checks",
            "cpu",
            check(
                "cpu",
                json!({"runtime_assets": ["tools"], "check_hooks": [{"critical": ["ps", "ps"]}]}),
            ),
        ),
        // `tools-extra` shares the prefix: Sensu shipped it too; Kensa must not.
        ("assets", "tools", asset("tools")),
        ("assets", "tools-extra", asset("tools-extra")),
        ("assets", "procps", asset("procps")),
        (
            "hooks",
            "ps",
            named(
                "ps",
                json!({"command": "ps aux", "timeout": 10, "runtime_assets": ["procps"]}),
            ),
        ),
    ])
    .await;
    let mut linux = h.agent(1, "web-1", &["linux", "all"]);
    let mut windows = h.agent(2, "win-1", &["windows"]);
    let (mut core, _inbox) = h.core();
    core.sync_all(T0);

    let due = core.next_due().expect("the check is scheduled");
    assert!(
        due > T0 && due <= T0 + 60_000,
        "first tick within one interval: {due}"
    );
    core.run_due(due - 1);
    assert!(drain(&mut linux).is_empty(), "nothing before the tick");

    core.run_due(due + 3); // a few ms late, as a real timer is
    let requests = drain(&mut linux);
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.round, format!("default/cpu@{due}"));
    assert_eq!(request.issued, (due + 3) / 1000);
    assert_eq!(request.config.metadata.name, "cpu");
    assert_eq!(request.config.command, "check-cpu.sh");
    let names = |assets: &[kensa_types::resources::asset::Asset]| -> Vec<String> {
        assets.iter().map(|a| a.metadata.name.clone()).collect()
    };
    assert_eq!(names(&request.assets), ["tools"]);
    assert_eq!(
        request
            .hooks
            .iter()
            .map(|h| h.metadata.name.as_str())
            .collect::<Vec<_>>(),
        ["ps"]
    );
    assert_eq!(
        request
            .hook_assets
            .iter()
            .map(|(hook, assets)| (hook.clone(), names(assets)))
            .collect::<Vec<_>>(),
        [("ps".to_string(), vec!["procps".to_string()])]
    );
    assert!(
        drain(&mut windows).is_empty(),
        "other subscriptions get nothing"
    );
    assert_eq!(h.telemetry.checks_scheduled.get(), 1);
    assert_eq!(h.telemetry.check_requests_sent.get(), 1);

    // Re-armed on the grid: the next tick is one interval after the scheduled one.
    assert_eq!(core.next_due(), Some(due + 60_000));
    core.run_due(due + 60_000);
    assert_eq!(
        drain(&mut linux)[0].round,
        format!("default/cpu@{}", due + 60_000)
    );
}

#[tokio::test]
async fn unpublished_and_subdued_checks_do_not_fire() {
    let always = json!([{"begin": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"}]);
    let over = json!([{"begin": "2000-01-01T00:00:00Z", "end": "2000-01-02T00:00:00Z"}]);
    let h = harness(vec![
        ("checks", "control", check("control", json!({}))),
        (
            "checks",
            "unpublished",
            check("unpublished", json!({"publish": false})),
        ),
        (
            "checks",
            "subdued",
            check("subdued", json!({"subdues": always})),
        ),
        (
            "checks",
            "was-subdued",
            check("was-subdued", json!({"subdues": over})),
        ),
    ])
    .await;
    let mut agent = h.agent(1, "web-1", &["linux"]);
    let (mut core, _inbox) = h.core();
    core.sync_all(T0);
    core.run_due(T0 + 60_000); // every check's first tick is in this interval

    let mut fired: Vec<String> = drain(&mut agent)
        .into_iter()
        .map(|request| request.config.metadata.name)
        .collect();
    fired.sort();
    assert_eq!(fired, ["control", "was-subdued"]);
    assert_eq!(h.telemetry.checks_scheduled.get(), 2);
}

#[tokio::test]
async fn round_robin_rounds_go_to_the_round_queue_not_to_every_agent() {
    let h = harness(vec![(
        "checks",
        "rr",
        check(
            "rr",
            json!({"round_robin": true, "subscriptions": ["linux", "zone-a"]}),
        ),
    )])
    .await;
    let mut first = h.agent(1, "web-1", &["linux"]);
    let mut second = h.agent(2, "web-2", &["linux"]);
    let (mut core, _inbox) = h.core();
    core.sync_all(T0);
    core.run_due(T0 + 60_000);
    assert!(drain(&mut first).is_empty() && drain(&mut second).is_empty());
    let orders = h.round_orders();
    assert_eq!(orders.len(), 1, "one order per round");
    let order = &orders[0];
    assert_eq!(order.subscriptions, ["linux", "zone-a"]);
    assert!((T0..T0 + 60_000).contains(&order.tick_ms));
    assert_eq!(
        order.request.round,
        format!("default/rr@{}", order.tick_ms),
        "the round id carries the scheduled tick"
    );
}

#[tokio::test]
async fn adhoc_round_robin_runs_as_one_round_unless_subscriptions_are_given() {
    let h = harness(vec![(
        "checks",
        "rr",
        check("rr", json!({"round_robin": true, "publish": false})),
    )])
    .await;
    let mut web = h.agent(1, "web-1", &["linux"]);
    h.start();
    h.put(
        ADHOC_KIND,
        "7c1d-once",
        json!({"check": "rr", "subscriptions": [], "creator": "admin", "reason": "", "issued": 1_700_000_000}),
    )
    .await;
    let orders = tokio::time::timeout(PATIENCE, async {
        loop {
            let orders = h.round_orders();
            if !orders.is_empty() {
                return orders;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the ad hoc round reaches the round queue");
    assert_eq!(orders[0].request.round, "default/rr@adhoc-7c1d-once");
    assert!(drain(&mut web).is_empty());

    // With subscriptions named in the request, every agent holding them runs it.
    h.put(
        ADHOC_KIND,
        "9e2f-all",
        json!({"check": "rr", "subscriptions": ["linux"], "creator": "admin", "reason": "", "issued": 1_700_000_000}),
    )
    .await;
    let request = next_request(&mut web).await;
    assert_eq!(request.round, "default/rr@adhoc-9e2f-all");
}

#[tokio::test]
async fn proxy_checks_run_once_per_matching_entity_spread_over_the_interval() {
    let entity = |name: &str, labels: Value| {
        json!({
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "entity_class": "proxy",
        })
    };
    let h = harness(vec![
        (
            "checks",
            "ping",
            check(
                "ping",
                json!({
                    "command": "ping -p {{ .labels.port }} {{ .name }}",
                    "subscriptions": ["poller"],
                    "proxy_requests": {
                        "entity_attributes": ["entity.entity_class == 'proxy'", "entity.labels.type == 'router'"],
                        "splay": true,
                        "splay_coverage": 90,
                    },
                }),
            ),
        ),
        ("entities", "router-1", entity("router-1", json!({"type": "router", "port": "8080"}))),
        ("entities", "router-2", entity("router-2", json!({"type": "router", "port": "9090"}))),
        // Matches, but `{{ .labels.port }}` has nothing to substitute: skipped.
        ("entities", "router-3", entity("router-3", json!({"type": "router"}))),
        ("entities", "server-1", entity("server-1", json!({"type": "server", "port": "22"}))),
    ])
    .await;
    let mut poller = h.agent(1, "poller-1", &["poller"]);
    let (mut core, mut inbox) = h.core();
    core.sync_all(T0);
    let tick = core.next_due().expect("scheduled");
    core.run_due(tick);
    let expansion = tokio::time::timeout(PATIENCE, inbox.expansions.recv())
        .await
        .expect("entities matched in time")
        .expect("expansion");
    core.on_expansion(expansion, tick);

    // Two publishes over 90 % of the 60 s interval: one at the tick, one 27 s later.
    let first = drain(&mut poller);
    assert_eq!(
        first.len(),
        1,
        "only the first proxy request is due at the tick"
    );
    assert_eq!(core.next_due(), Some(tick + 27_000));
    core.run_due(tick + 26_999);
    assert!(drain(&mut poller).is_empty());
    core.run_due(tick + 27_000);
    let second = drain(&mut poller);

    let got: Vec<(String, String, String)> = first
        .into_iter()
        .chain(second)
        .map(|r| (r.config.proxy_entity_name, r.config.command, r.round))
        .collect();
    assert_eq!(
        got,
        [
            (
                "router-1".to_string(),
                "ping -p 8080 router-1".to_string(),
                format!("default/ping@{tick}/router-1")
            ),
            (
                "router-2".to_string(),
                "ping -p 9090 router-2".to_string(),
                format!("default/ping@{tick}/router-2")
            ),
        ]
    );
    assert_eq!(h.telemetry.checks_scheduled.get(), 1, "one fire");
    assert_eq!(h.telemetry.check_requests_sent.get(), 2);
}

#[tokio::test]
async fn a_changed_interval_reschedules_and_other_changes_apply_in_place() {
    let h = harness(vec![("checks", "cpu", check("cpu", json!({})))]).await;
    let mut agent = h.agent(1, "web-1", &["linux"]);
    let (mut core, _inbox) = h.core();
    core.sync_all(T0);
    let tick_60 = core.next_due().expect("scheduled");

    // Same schedule: the timer stays, the next fire carries the new command.
    let key = h
        .put("checks", "cpu", check("cpu", json!({"command": "v2"})))
        .await;
    core.on_change(&key, T0 + 10);
    assert_eq!(core.next_due(), Some(tick_60));

    // Interval 60 → 1: a new 1 s grid starts now; the old 60 s tick is void.
    let key = h
        .put(
            "checks",
            "cpu",
            check("cpu", json!({"command": "v2", "interval": 1})),
        )
        .await;
    core.on_change(&key, T0 + 20);
    let first_1s = core.next_due().expect("rescheduled");
    assert!(first_1s > T0 + 20 && first_1s <= T0 + 1_020, "{first_1s}");
    while let Some(due) = core.next_due().filter(|due| *due <= tick_60) {
        core.run_due(due);
    }
    let requests = drain(&mut agent);
    let ticks: Vec<i64> = requests.iter().map(|r| tick_of(&r.round)).collect();
    let expected: Vec<i64> = (first_1s..=tick_60).step_by(1000).collect();
    assert_eq!(ticks, expected, "exactly the 1 s ticks, no stale 60 s one");
    assert!(requests.iter().all(|r| r.config.command == "v2"));

    // Deleted: it stops.
    let key = h.delete("checks", "cpu").await;
    core.on_change(&key, tick_60 + 1);
    core.run_due(tick_60 + 600_000);
    assert!(drain(&mut agent).is_empty());
}

#[tokio::test]
async fn the_running_scheduler_follows_view_changes() {
    let h = harness(vec![(
        "checks",
        "cpu",
        check("cpu", json!({"publish": false})),
    )])
    .await;
    let mut agent = h.agent(1, "web-1", &["linux"]);
    h.start();
    h.put(
        "checks",
        "cpu",
        check("cpu", json!({"publish": true, "interval": 1})),
    )
    .await;
    let first = next_request(&mut agent).await;
    let second = next_request(&mut agent).await;
    assert_eq!(tick_of(&second.round) - tick_of(&first.round), 1_000);
}

#[tokio::test]
async fn adhoc_requests_run_once_on_their_subscriptions_and_are_deleted() {
    let adhoc = |subscriptions: Value| {
        json!({"check": "cpu", "subscriptions": subscriptions, "creator": "admin",
               "reason": "testing", "issued": 1_700_000_000})
    };
    // `publish: false` and subdued: ad hoc runs it anyway.
    let h = harness(vec![
        (
            "checks",
            "cpu",
            check(
                "cpu",
                json!({"publish": false, "subdues": [{"begin": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"}]}),
            ),
        ),
        // Queued before the scheduler started: found by its startup listing.
        (ADHOC_KIND, "0b1f5a52-queued", adhoc(json!([]))),
    ])
    .await;
    let mut linux = h.agent(1, "web-1", &["linux"]);
    let mut db = h.agent(2, "db-1", &["db"]);
    h.start();

    let queued = next_request(&mut linux).await;
    assert_eq!(queued.round, "default/cpu@adhoc-0b1f5a52-queued");
    assert_eq!(queued.config.subscriptions, ["linux"]);

    // Queued while running, with its own subscriptions.
    let key = h
        .put(ADHOC_KIND, "5e0c9d1a-live", adhoc(json!(["db"])))
        .await;
    let live = next_request(&mut db).await;
    assert_eq!(live.round, "default/cpu@adhoc-5e0c9d1a-live");
    assert_eq!(live.config.subscriptions, ["db"]);

    h.wait_gone(&key).await;
    h.wait_gone(&Key::new(ADHOC_KIND, "default", "0b1f5a52-queued"))
        .await;
    assert!(
        drain(&mut linux).is_empty() && drain(&mut db).is_empty(),
        "each ran once"
    );
    assert_eq!(h.telemetry.checks_scheduled.get(), 2);
}
