//! The monitoring loop end to end: a real backend, real agents (in-process, talking over the
//! agent WebSocket), real Nagios plugins from Debian's `monitoring-plugins-basic`, and pipe
//! handlers that record what they receive.
//!
//! Without the plugins these tests print that they were skipped — unless KENSA_PLUGIN_TESTS is
//! set (CI), where a missing plugin is a failure.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::fake_agent::FakeAgent;
use common::{expect, poll_until, Client};
use kensa_agent::config::{AgentConfig, StartArgs};
use kensa_agent::Agent;
use kensa_backend::testing::TestServer;
use kensa_proto::{AgentMessage, BackendMessage, Refused};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const PLUGINS: &str = "/usr/lib/nagios/plugins";

fn plugins_available() -> bool {
    let present = Path::new(PLUGINS).join("check_dummy").exists();
    if !present {
        assert!(
            std::env::var_os("KENSA_PLUGIN_TESTS").is_none(),
            "KENSA_PLUGIN_TESTS is set but {PLUGINS}/check_dummy is missing"
        );
        eprintln!("skipped: monitoring-plugins-basic is not installed ({PLUGINS})");
    }
    present
}

fn plugin(name: &str) -> String {
    format!("{PLUGINS}/{name}")
}

struct Loop {
    server: TestServer,
    client: Client,
    dir: tempfile::TempDir,
}

struct RunningAgent {
    shutdown: CancellationToken,
    agent: Agent,
}

impl RunningAgent {
    /// Stops the agent without any goodbye (the backend sees the connection drop, exactly as
    /// when the process dies).
    async fn kill(self) {
        self.shutdown.cancel();
        self.agent.stopped().await;
    }
}

impl Loop {
    async fn start() -> Loop {
        let server = TestServer::start().await.unwrap();
        let client =
            Client::login(&server.url, &server.admin_username, &server.admin_password).await;
        Loop {
            server,
            client,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn agent_config(&self, name: &str, subscriptions: &[&str]) -> AgentConfig {
        StartArgs {
            name: Some(name.into()),
            backend_url: vec![self.server.agent_url.clone()],
            namespace: Some("default".into()),
            subscriptions: subscriptions.iter().map(|s| s.to_string()).collect(),
            user: Some("agent".into()),
            password: Some("P@ssw0rd!".into()),
            cache_dir: Some(self.dir.path().join(format!("cache-{name}"))),
            keepalive_interval: Some(1),
            keepalive_warning_timeout: Some(5),
            keepalive_critical_timeout: Some(8),
            disable_api: Some(true),
            disable_sockets: Some(true),
            statsd_disable: Some(true),
            retry_min: Some("100ms".into()),
            retry_max: Some("1s".into()),
            backend_handshake_timeout: Some(5),
            log_level: Some("warn".into()),
            ..StartArgs::default()
        }
        .resolve()
        .expect("agent configuration")
    }

    async fn agent(&self, name: &str, subscriptions: &[&str]) -> RunningAgent {
        self.agent_with(self.agent_config(name, subscriptions))
            .await
    }

    async fn agent_with(&self, config: AgentConfig) -> RunningAgent {
        let shutdown = CancellationToken::new();
        let agent = Agent::start(config, shutdown.clone()).await.unwrap();
        RunningAgent { shutdown, agent }
    }

    /// A pipe handler that appends every event it receives (one JSON per line) to a file.
    async fn recording_handler(&self, name: &str, filters: &[&str]) -> PathBuf {
        let file = self.dir.path().join(format!("{name}.jsonl"));
        // One handler process per event, possibly several at once: the lock keeps each
        // event's JSON and its newline together.
        let command = format!(
            "flock '{0}.lock' sh -c \"cat >> '{0}'; echo >> '{0}'\"",
            file.display()
        );
        expect(
            self.client
                .post(
                    "namespaces/default/handlers",
                    &json!({
                        "metadata": {"name": name, "namespace": "default"},
                        "type": "pipe",
                        "command": command,
                        "timeout": 10,
                        "filters": filters,
                    }),
                )
                .await,
            201,
        );
        file
    }

    async fn check(&self, definition: Value) {
        let name = definition["metadata"]["name"].as_str().unwrap().to_owned();
        let mut definition = definition;
        definition["metadata"]["namespace"] = json!("default");
        expect(
            self.client
                .put(&format!("namespaces/default/checks/{name}"), &definition)
                .await,
            201,
        );
    }

    /// Ad hoc execution of the check `name` (`POST …/execute`).
    async fn execute(&self, name: &str) {
        expect(
            self.client
                .post(
                    &format!("namespaces/default/checks/{name}/execute"),
                    &json!({"check": name}),
                )
                .await,
            202,
        );
    }

    async fn event(
        &self,
        entity: &str,
        check: &str,
        wait: Duration,
        accept: impl Fn(&Value) -> bool,
    ) -> Value {
        poll_until(
            &self.client,
            &format!("namespaces/default/events/{entity}/{check}"),
            wait,
            accept,
        )
        .await
        .unwrap_or_else(|| panic!("event {entity}/{check} did not reach the expected state"))
        .0
    }
}

/// The events a recording handler received.
fn handled(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("handler received JSON"))
        .collect()
}

async fn wait_handled(file: &Path, wait: Duration, accept: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(event) = handled(file).into_iter().find(|e| accept(e)) {
            return event;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no matching event reached the handler; it got: {:?}",
        handled(file)
            .iter()
            .map(|e| (
                e["check"]["metadata"]["name"].clone(),
                e["check"]["status"].clone()
            ))
            .collect::<Vec<_>>()
    );
}

fn check_name(event: &Value) -> &str {
    event["check"]["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test]
async fn failures_reach_the_handler_resolutions_too_and_silenced_ones_do_not() {
    if !plugins_available() {
        return;
    }
    let lp = Loop::start().await;
    let file = lp
        .recording_handler("record", &["is_incident", "not_silenced"])
        .await;
    expect(
        lp.client
            .post(
                "namespaces/default/silenced",
                &json!({"subscription": "*", "check": "quiet", "reason": "maintenance"}),
            )
            .await,
        201,
    );
    lp.check(json!({
        "metadata": {"name": "disk"},
        "command": format!("{} 2 'disk full'", plugin("check_dummy")),
        "interval": 1,
        "subscriptions": ["linux"],
        "handlers": ["record"],
        "publish": true,
    }))
    .await;
    lp.check(json!({
        "metadata": {"name": "quiet"},
        "command": format!("{} 2 'silenced failure'", plugin("check_dummy")),
        "interval": 1,
        "subscriptions": ["linux"],
        "handlers": ["record"],
        "publish": true,
    }))
    .await;
    let agent = lp.agent("web-1", &["linux"]).await;

    let failure = wait_handled(&file, Duration::from_secs(15), |e| {
        check_name(e) == "disk" && e["check"]["status"] == 2
    })
    .await;
    assert_eq!(failure["check"]["output"], "CRITICAL: disk full\n");
    assert_eq!(failure["entity"]["metadata"]["name"], "web-1");
    assert_eq!(failure["check"]["processed_by"], "web-1");

    // The silenced check fails too, and is stored as silenced, but never handled.
    let quiet = lp
        .event("web-1", "quiet", Duration::from_secs(10), |e| {
            e["check"]["occurrences"].as_i64().unwrap_or(0) >= 2
        })
        .await;
    assert_eq!(quiet["check"]["is_silenced"], true);
    assert_eq!(quiet["check"]["silenced"], json!(["*:quiet"]));

    // Fix the check: the resolution is handled (is_incident lets resolutions through).
    lp.check(json!({
        "metadata": {"name": "disk"},
        "command": format!("{} 0 'disk fine'", plugin("check_dummy")),
        "interval": 1,
        "subscriptions": ["linux"],
        "handlers": ["record"],
        "publish": true,
    }))
    .await;
    let resolution = wait_handled(&file, Duration::from_secs(15), |e| {
        check_name(e) == "disk" && e["check"]["status"] == 0
    })
    .await;
    let history: Vec<u64> = resolution["check"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_u64().unwrap())
        .collect();
    assert_eq!(history.last(), Some(&0));
    assert!(
        history.contains(&2),
        "the resolution carries the failures: {history:?}"
    );
    // OK results after the resolution are not incidents: they are filtered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let disk_ok = handled(&file)
        .into_iter()
        .filter(|e| check_name(e) == "disk" && e["check"]["status"] == 0)
        .count();
    assert_eq!(disk_ok, 1, "only the resolution itself is handled");
    assert!(
        handled(&file).iter().all(|e| check_name(e) != "quiet"),
        "a silenced event never reaches the handler"
    );
    agent.kill().await;
    lp.server.shutdown().await;
}

#[tokio::test]
async fn a_killed_agent_raises_keepalive_warning_then_critical() {
    let lp = Loop::start().await;
    let agent = lp.agent("doomed", &["linux"]).await;
    lp.event("doomed", "keepalive", Duration::from_secs(10), |e| {
        e["check"]["status"] == 0
    })
    .await;
    // Let a couple more keepalives through, then kill it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.kill().await;
    let killed = Instant::now();
    let warning = lp
        .event("doomed", "keepalive", Duration::from_secs(10), |e| {
            e["check"]["status"] == 1
        })
        .await;
    let warned_after = killed.elapsed();
    // The last keepalive came up to one interval (1 s) before the kill.
    assert!(
        warned_after <= Duration::from_secs(6),
        "warning within warning-timeout + 1 s, got {warned_after:?}"
    );
    assert!(warning["check"]["output"]
        .as_str()
        .unwrap()
        .contains("No keepalive sent from doomed"));
    lp.event("doomed", "keepalive", Duration::from_secs(10), |e| {
        e["check"]["status"] == 2
    })
    .await;
    let critical_after = killed.elapsed();
    assert!(
        critical_after >= Duration::from_secs(6) && critical_after <= Duration::from_secs(9),
        "critical at the critical timeout (8 s after the last keepalive), got {critical_after:?}"
    );
    lp.server.shutdown().await;
}

#[tokio::test]
async fn a_dead_agent_with_deregister_is_removed_its_events_resolved_and_its_handler_run() {
    if !plugins_available() {
        return;
    }
    let lp = Loop::start().await;
    let checks = lp.recording_handler("record", &[]).await;
    let deregistrations = lp.recording_handler("goodbye", &[]).await;
    lp.check(json!({
        "metadata": {"name": "disk"},
        "command": format!("{} 2 'disk full'", plugin("check_dummy")),
        "interval": 1,
        "subscriptions": ["linux"],
        "handlers": ["record"],
        "publish": true,
    }))
    .await;
    let mut config = lp.agent_config("ephemeral", &["linux"]);
    config.deregister = true;
    config.deregistration_handler = "goodbye".into();
    let agent = lp.agent_with(config).await;
    lp.event("ephemeral", "disk", Duration::from_secs(15), |e| {
        e["check"]["occurrences"].as_u64().unwrap_or(0) >= 5
    })
    .await;
    agent.kill().await;
    // At the keepalive warning timeout (5 s) the agent is deregistered instead of alerting.
    let goodbye = wait_handled(&deregistrations, Duration::from_secs(12), |e| {
        check_name(e) == "deregistration"
    })
    .await;
    assert_eq!(goodbye["entity"]["metadata"]["name"], "ephemeral");
    let resolved = wait_handled(&checks, Duration::from_secs(5), |e| {
        check_name(e) == "disk" && e["check"]["status"] == 0
    })
    .await;
    assert_eq!(
        resolved["check"]["output"],
        "Resolving due to entity deregistering"
    );
    expect(
        lp.client.get("namespaces/default/entities/ephemeral").await,
        404,
    );
    expect(
        lp.client
            .get("namespaces/default/events/ephemeral/disk")
            .await,
        404,
    );
    // No keepalive alert either: its keepalive event went with the entity.
    expect(
        lp.client
            .get("namespaces/default/events/ephemeral/keepalive")
            .await,
        404,
    );
    // Coming back under the same name is a new registration with a fresh history.
    let _again = lp.agent("ephemeral", &["linux"]).await;
    let fresh = lp
        .event("ephemeral", "disk", Duration::from_secs(10), |e| {
            e["check"]["status"] == 2
        })
        .await;
    assert!(
        fresh["check"]["history"].as_array().unwrap().len() < 5,
        "history starts again: {}",
        fresh["check"]["history"]
    );
    lp.server.shutdown().await;
}

#[tokio::test]
async fn a_check_whose_results_stop_raises_its_ttl_failure() {
    let lp = Loop::start().await;
    lp.check(json!({
        "metadata": {"name": "heartbeat"},
        "command": "true",
        "interval": 1,
        "ttl": 5,
        "subscriptions": ["linux"],
        "publish": true,
    }))
    .await;
    let agent = lp.agent("web-2", &["linux"]).await;
    lp.event("web-2", "heartbeat", Duration::from_secs(10), |e| {
        e["check"]["occurrences"].as_i64().unwrap_or(0) >= 2
    })
    .await;
    // Stop scheduling it: results stop, the TTL runs out.
    lp.check(json!({
        "metadata": {"name": "heartbeat"},
        "command": "true",
        "interval": 1,
        "ttl": 5,
        "subscriptions": ["linux"],
        "publish": false,
    }))
    .await;
    let failed = lp
        .event("web-2", "heartbeat", Duration::from_secs(12), |e| {
            e["check"]["status"] == 1
        })
        .await;
    assert!(
        failed["check"]["output"]
            .as_str()
            .unwrap()
            .starts_with("Last check execution was"),
        "{}",
        failed["check"]["output"]
    );
    agent.kill().await;
    lp.server.shutdown().await;
}

#[tokio::test]
async fn a_proxy_check_runs_once_per_matching_proxy_entity() {
    if !plugins_available() {
        return;
    }
    let lp = Loop::start().await;
    for (name, kind) in [
        ("router-1", "router"),
        ("router-2", "router"),
        ("switch-1", "switch"),
    ] {
        expect(
            lp.client
                .post(
                    "namespaces/default/entities",
                    &json!({
                        "metadata": {"name": name, "namespace": "default", "labels": {"kind": kind}},
                        "entity_class": "proxy",
                    }),
                )
                .await,
            200,
        );
    }
    lp.check(json!({
        "metadata": {"name": "reach"},
        "command": format!("{} 0 '{{{{ .name }}}} reachable'", plugin("check_dummy")),
        "interval": 1,
        "subscriptions": ["poller"],
        "publish": true,
        "proxy_requests": {"entity_attributes": ["entity.metadata.labels.kind == 'router'"]},
    }))
    .await;
    let agent = lp.agent("poller-1", &["poller"]).await;
    for router in ["router-1", "router-2"] {
        let event = lp
            .event(router, "reach", Duration::from_secs(10), |_| true)
            .await;
        assert_eq!(
            event["check"]["output"],
            format!("OK: {router} reachable\n")
        );
        assert_eq!(event["entity"]["entity_class"], "proxy");
        assert_eq!(event["check"]["processed_by"], "poller-1");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    expect(
        lp.client
            .get("namespaces/default/events/switch-1/reach")
            .await,
        404,
    );
    expect(
        lp.client
            .get("namespaces/default/events/poller-1/reach")
            .await,
        404,
    );
    agent.kill().await;
    lp.server.shutdown().await;
}

#[tokio::test]
async fn perfdata_from_real_plugins_becomes_metric_points() {
    if !plugins_available() {
        return;
    }
    let lp = Loop::start().await;
    let api_port = lp.server.url.rsplit(':').next().unwrap().to_owned();
    lp.check(json!({
        "metadata": {"name": "load"},
        "command": format!("{} -w 100,100,100 -c 200,200,200", plugin("check_load")),
        "interval": 1,
        "subscriptions": ["linux"],
        "publish": true,
        "output_metric_format": "nagios_perfdata",
        "output_metric_tags": [{"name": "team", "value": "ops"}],
    }))
    .await;
    lp.check(json!({
        "metadata": {"name": "api-port"},
        "command": format!("{} -H 127.0.0.1 -p {api_port}", plugin("check_tcp")),
        "interval": 1,
        "subscriptions": ["linux"],
        "publish": true,
        "output_metric_format": "nagios_perfdata",
    }))
    .await;
    lp.check(json!({
        "metadata": {"name": "procs"},
        "command": format!("{} -c 1:", plugin("check_procs")),
        "interval": 1,
        "subscriptions": ["linux"],
        "publish": true,
    }))
    .await;
    let agent = lp.agent("web-3", &["linux"]).await;
    let load = lp
        .event("web-3", "load", Duration::from_secs(10), |_| true)
        .await;
    assert_eq!(load["check"]["status"], 0, "{}", load["check"]["output"]);
    let points = load["metrics"]["points"].as_array().expect("metric points");
    let names: Vec<&str> = points.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"load1"), "{names:?}");
    assert!(points[0]["tags"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "team", "value": "ops"})));
    let tcp = lp
        .event("web-3", "api-port", Duration::from_secs(10), |_| true)
        .await;
    assert_eq!(tcp["check"]["status"], 0, "{}", tcp["check"]["output"]);
    assert!(tcp["metrics"]["points"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "time"));
    let procs = lp
        .event("web-3", "procs", Duration::from_secs(10), |_| true)
        .await;
    assert_eq!(procs["check"]["status"], 0, "{}", procs["check"]["output"]);
    agent.kill().await;
    lp.server.shutdown().await;
}

#[tokio::test]
async fn a_flapping_sequence_sets_state_and_total_state_change() {
    let lp = Loop::start().await;
    let flap_file = lp.recording_handler("flaps", &[]).await;
    expect(
        lp.client
            .post(
                "namespaces/default/filters",
                &json!({
                    "metadata": {"name": "flap-edges", "namespace": "default"},
                    "action": "allow",
                    "expressions": ["event.is_flapping_start || event.is_flapping_end"],
                }),
            )
            .await,
        201,
    );
    expect(
        lp.client
            .put(
                "namespaces/default/handlers/flaps",
                &json!({
                    "metadata": {"name": "flaps", "namespace": "default"},
                    "type": "pipe",
                    "command": format!("cat >> '{0}'; echo >> '{0}'", flap_file.display()),
                    "filters": ["flap-edges"],
                }),
            )
            .await,
        201,
    );
    let post = |status: u32| {
        let client = &lp.client;
        async move {
            expect(
                client
                    .post(
                        "namespaces/default/events",
                        &json!({
                            "entity": {"metadata": {"name": "flappy", "namespace": "default"}},
                            "check": {
                                "metadata": {"name": "svc", "namespace": "default"},
                                "status": status,
                                "interval": 10,
                                "low_flap_threshold": 20,
                                "high_flap_threshold": 40,
                                "handlers": ["flaps"],
                                "output": "x",
                            },
                        }),
                    )
                    .await,
                201,
            );
            expect(
                client.get("namespaces/default/events/flappy/svc").await,
                200,
            )
            .body
        }
    };
    let mut statuses = Vec::new();
    let mut states = Vec::new();
    for i in 0..10 {
        let status = if i % 2 == 0 { 0 } else { 2 };
        statuses.push(u64::from(status));
        let event = post(status).await;
        assert_eq!(
            event["check"]["total_state_change"].as_u64().unwrap(),
            u64::from(kensa_types::event_state::total_state_change(&statuses)),
            "after {statuses:?}"
        );
        states.push(event["check"]["state"].as_str().unwrap().to_owned());
    }
    assert_eq!(states.last().unwrap(), "flapping", "{states:?}");
    // Steady OK results: TSC falls; flapping ends only once it drops to the low threshold.
    let mut ended_at_tsc = None;
    for _ in 0..21 {
        statuses.push(0);
        let event = post(0).await;
        if event["check"]["state"] == "passing" && ended_at_tsc.is_none() {
            ended_at_tsc = event["check"]["total_state_change"].as_u64();
        }
    }
    let ended_at_tsc = ended_at_tsc.expect("flapping ended");
    assert!(
        ended_at_tsc <= 20,
        "hysteresis: ends at or below the low threshold, got {ended_at_tsc}"
    );
    // The handler saw exactly the flap start and the flap end.
    let edges = wait_handled(&flap_file, Duration::from_secs(10), |e| {
        e["check"]["state"] == "passing"
    })
    .await;
    assert_eq!(edges["check"]["status"], 0);
    let states: Vec<String> = handled(&flap_file)
        .iter()
        .map(|e| e["check"]["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, vec!["flapping", "passing"], "one start, one end");
    lp.server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Round robin (issue 4): one agent per round, through the in-process queue. The fault
// scenarios with real processes are in round_robin_faults.rs.

/// `(round, agent)` of every round-robin result of `check` the handler got.
fn handled_rounds(file: &Path, check: &str) -> Vec<(String, String)> {
    handled(file)
        .iter()
        .filter(|e| check_name(e) == check && e["check"]["round"].is_string())
        .map(|e| {
            (
                e["check"]["round"].as_str().unwrap().to_owned(),
                e["entity"]["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The scheduled tick of a round id `<ns>/<check>@<tick>#<subscription>`.
fn tick_of(round: &str) -> i64 {
    let after = round.split_once('@').unwrap().1;
    after.split(['#', '/']).next().unwrap().parse().unwrap()
}

async fn metric(lp: &Loop, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", lp.server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn each_round_robin_round_runs_on_exactly_one_agent_and_spreads_over_them() {
    let lp = Loop::start().await;
    let file = lp.recording_handler("record", &[]).await;
    let agents = [
        lp.agent("zone-1", &["zone"]).await,
        lp.agent("zone-2", &["zone"]).await,
        lp.agent("zone-3", &["zone"]).await,
    ];
    lp.check(json!({
        "metadata": {"name": "synthetic"},
        "command": "echo ok",
        "interval": 1,
        "timeout": 2,
        "round_robin": true,
        "subscriptions": ["zone"],
        "handlers": ["record"],
        "publish": true,
    }))
    .await;

    let deadline = Instant::now() + Duration::from_secs(40);
    while handled_rounds(&file, "synthetic").len() < 15 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rounds = handled_rounds(&file, "synthetic");
    assert!(rounds.len() >= 15, "rounds handled: {rounds:?}");
    // Exactly one agent per round: no round handled twice, and consecutive ticks.
    let mut ticks: Vec<i64> = rounds.iter().map(|(round, _)| tick_of(round)).collect();
    ticks.sort();
    let before = ticks.len();
    ticks.dedup();
    assert_eq!(ticks.len(), before, "a round was handled twice: {rounds:?}");
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], 1000, "a round is missing: {ticks:?}");
    }
    assert!(rounds.iter().all(|(round, _)| round.ends_with("#zone")));
    // Spread: every agent takes rounds, none takes most of them.
    let mut per_agent = std::collections::BTreeMap::<&str, usize>::new();
    for (_, agent) in &rounds {
        *per_agent.entry(agent.as_str()).or_default() += 1;
    }
    assert_eq!(per_agent.len(), 3, "executions per agent: {per_agent:?}");
    assert!(
        per_agent.values().all(|n| *n * 3 >= rounds.len() / 2),
        "uneven spread: {per_agent:?}"
    );

    // A newly connected agent takes rounds within about an interval.
    let newcomer = lp.agent("zone-4", &["zone"]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !handled_rounds(&file, "synthetic")
        .iter()
        .any(|(_, agent)| agent == "zone-4")
    {
        assert!(Instant::now() < deadline, "zone-4 never got a round");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Ad hoc execution of a round-robin check runs once, on one agent.
    lp.check(json!({
        "metadata": {"name": "on-demand"},
        "command": "echo adhoc",
        "interval": 60,
        "round_robin": true,
        "subscriptions": ["zone"],
        "handlers": ["record"],
        "publish": false,
    }))
    .await;
    lp.execute("on-demand").await;
    wait_handled(&file, Duration::from_secs(10), |e| {
        check_name(e) == "on-demand"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let adhoc = handled_rounds(&file, "on-demand");
    assert_eq!(adhoc.len(), 1, "ad hoc ran on one agent only: {adhoc:?}");
    assert!(adhoc[0].0.contains("@adhoc-"));

    assert!(metric(&lp, "kensa_rounds_completed_total").await >= 15.0);
    assert_eq!(metric(&lp, "kensa_rounds_missed_total").await, 0.0);
    for agent in agents {
        agent.kill().await;
    }
    newcomer.kill().await;
}

#[tokio::test]
async fn a_round_an_agent_refuses_goes_to_another_agent_at_once() {
    let lp = Loop::start().await;
    let file = lp.recording_handler("record", &[]).await;
    // A scripted agent, alone on the subscription, so the first delivery is surely its own.
    let mut busy = FakeAgent::connect(&lp.server.agent_url, "busy-1", &["pool"]).await;
    lp.check(json!({
        "metadata": {"name": "probe"},
        "command": "echo ok",
        "interval": 60,
        "timeout": 20,
        "round_robin": true,
        "subscriptions": ["pool"],
        "handlers": ["record"],
        "publish": false,
    }))
    .await;
    lp.execute("probe").await;
    let request = loop {
        match busy.next(Duration::from_secs(10)).await {
            Some(BackendMessage::CheckRequest(request)) => break request,
            Some(_) => continue,
            None => panic!("busy-1 never got the round"),
        }
    };
    assert!(request.config.round_robin);
    let worker = lp.agent("worker-1", &["pool"]).await;
    // The worker must be a member of the group before the refusal, or the round would
    // wait for it anyway.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused_at = Instant::now();
    busy.send(AgentMessage::Refused(Refused {
        round: request.round.clone(),
        check: request.execution_key(),
        reason: "check execution still in progress".into(),
    }))
    .await;
    // Without the refusal the round would wait for its in-flight deadline (timeout 20 s +
    // grace) before going to worker-1.
    wait_handled(&file, Duration::from_secs(8), |e| {
        check_name(e) == "probe" && e["entity"]["metadata"]["name"] == "worker-1"
    })
    .await;
    assert!(refused_at.elapsed() < Duration::from_secs(8));
    let rounds = handled_rounds(&file, "probe");
    assert_eq!(rounds, vec![(request.round.clone(), "worker-1".to_owned())]);
    assert_eq!(metric(&lp, "kensa_rounds_refused_total").await, 1.0);
    worker.kill().await;
}

#[tokio::test]
async fn a_round_no_agent_can_run_is_reported_missed_and_resolves_when_rounds_run_again() {
    let lp = Loop::start().await;
    let file = lp.recording_handler("record", &[]).await;
    lp.check(json!({
        "metadata": {"name": "lonely"},
        "command": "echo ok",
        "interval": 1,
        "timeout": 1,
        "round_robin": true,
        "subscriptions": ["nobody-yet"],
        "handlers": ["record"],
        "publish": true,
    }))
    .await;
    // No agent holds the subscription: the first round passes its deadline unrun.
    let missed = lp
        .event(
            "round-robin:nobody-yet",
            "lonely",
            Duration::from_secs(30),
            |e| e["check"]["status"] == 2,
        )
        .await;
    assert_eq!(
        missed["check"]["metadata"]["annotations"]["kensa.io/missed-round"],
        "true"
    );
    assert!(missed["check"]["output"]
        .as_str()
        .unwrap()
        .contains("was not completed by any agent of subscription nobody-yet"));
    assert_eq!(missed["entity"]["entity_class"], "proxy");
    // Handled like any failure of the check.
    wait_handled(&file, Duration::from_secs(5), |e| {
        e["entity"]["metadata"]["name"] == "round-robin:nobody-yet" && e["check"]["status"] == 2
    })
    .await;
    assert!(metric(&lp, "kensa_rounds_missed_total").await >= 1.0);

    // An agent arrives: rounds run again and the missed-round event resolves.
    let agent = lp.agent("late-1", &["nobody-yet"]).await;
    lp.event(
        "round-robin:nobody-yet",
        "lonely",
        Duration::from_secs(40),
        |e| e["check"]["status"] == 0,
    )
    .await;
    assert!(!handled_rounds(&file, "lonely").is_empty());
    agent.kill().await;
}

#[tokio::test]
async fn a_proxy_round_robin_check_runs_each_proxy_entity_once_per_round() {
    let lp = Loop::start().await;
    let file = lp.recording_handler("record", &[]).await;
    for name in ["router-1", "router-2"] {
        expect(
            lp.client
                .post(
                    "namespaces/default/entities",
                    &json!({
                        "metadata": {"name": name, "namespace": "default", "labels": {"kind": "router"}},
                        "entity_class": "proxy",
                    }),
                )
                .await,
            200,
        );
    }
    let pollers = [
        lp.agent("poller-1", &["poller"]).await,
        lp.agent("poller-2", &["poller"]).await,
    ];
    lp.check(json!({
        "metadata": {"name": "reach"},
        "command": "echo '{{ .name }} reachable'",
        "interval": 1,
        "timeout": 2,
        "round_robin": true,
        "subscriptions": ["poller"],
        "handlers": ["record"],
        "publish": true,
        "proxy_requests": {"entity_attributes": ["entity.metadata.labels.kind == 'router'"]},
    }))
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while handled_rounds(&file, "reach").len() < 12 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events = handled(&file);
    let mut per_router = std::collections::BTreeMap::<String, Vec<i64>>::new();
    for event in events.iter().filter(|e| check_name(e) == "reach") {
        let round = event["check"]["round"].as_str().unwrap();
        let router = event["entity"]["metadata"]["name"].as_str().unwrap();
        assert!(round.contains(&format!("/{router}#poller")), "{round}");
        assert_eq!(event["check"]["output"], format!("{router} reachable\n"));
        per_router
            .entry(router.to_owned())
            .or_default()
            .push(tick_of(round));
    }
    assert_eq!(
        per_router.len(),
        2,
        "both proxy entities ran: {per_router:?}"
    );
    for (router, ticks) in &mut per_router {
        let before = ticks.len();
        ticks.sort();
        ticks.dedup();
        assert_eq!(ticks.len(), before, "{router}: a round ran twice");
        assert!(ticks.len() >= 4, "{router}: {ticks:?}");
    }
    for poller in pollers {
        poller.kill().await;
    }
}
