//! Cluster mode end to end: three `kensa-backend` processes sharing a fresh PostgreSQL database
//! and the NATS server (a stream of the test's own), with real agents (in-process, every
//! backend URL configured). What a user of a cluster relies on:
//!
//! - `/health` of every backend lists the three members;
//! - an event written through one backend is read through every other one;
//! - a configuration change made through one backend (a new check, an entity's subscriptions)
//!   reaches agents connected to the others within a couple of seconds;
//! - `kill -9` of a backend moves its agents to the others without a single keepalive alert,
//!   while an agent that died together with it alerts exactly once, from a survivor, within
//!   the warning timeout plus a few seconds;
//! - a backend cut off from PostgreSQL (each backend reaches it through a TCP proxy of the
//!   test's) reports unhealthy, sheds its agents to the others — again without false alerts —
//!   and recovers by itself when the store is back.
//!
//! Skipped (with a notice) without `KENSA_TEST_POSTGRES_URL` and `KENSA_TEST_NATS_URL`. Every
//! process is killed when the test ends (also on failure), the database is dropped and the
//! stream deleted.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::faults::{free_port, get_text, metric_sum, tail, Process, TcpProxy};
use common::{expect, Client};
use kensa_agent::config::StartArgs;
use kensa_agent::Agent;
use kensa_store::{Key, Store};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "admin";
const PASSWORD: &str = "P@ssw0rd!";
/// Agents' keepalive timing. The critical timeout is far enough out that the one alert the
/// dead agent raises (at the takeover plus one warning timeout) is a warning.
const KEEPALIVE_INTERVAL: u32 = 1;
const WARNING_TIMEOUT: u32 = 5;
const CRITICAL_TIMEOUT: u32 = 30;
/// Agents that may move between backends.
const MOVERS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_backends_share_config_and_events_and_fail_over_agents() {
    let Ok(nats_url) = std::env::var("KENSA_TEST_NATS_URL") else {
        println!("skipped: KENSA_TEST_NATS_URL not set");
        return;
    };
    let Some((store, database)) = kensa_store::testing::temp_postgres().await else {
        return; // temp_postgres printed the skip notice
    };
    let started = Instant::now();
    let mut cluster = Cluster::start(database.url(), nats_url).await;
    let result =
        tokio::time::timeout(Duration::from_secs(110), scenario(&mut cluster, &store)).await;
    cluster.stop().await;
    database.cleanup().await;
    match result {
        Ok(()) => println!("cluster test passed in {:?}", started.elapsed()),
        Err(_) => panic!("the cluster test did not finish within 110 s"),
    }
}

async fn scenario(cluster: &mut Cluster, store: &kensa_store::postgres::PostgresStore) {
    // --- membership ---------------------------------------------------------------------------
    for backend in &cluster.backends {
        let health = eventually(
            "/health lists three healthy members",
            Duration::from_secs(10),
            async || {
                let (status, body) = cluster.health(backend).await?;
                let members = body["ClusterHealth"].as_array()?;
                (status == 200
                    && members.len() == 3
                    && members.iter().all(|m| m["Healthy"] == true))
                .then_some(body)
            },
        )
        .await;
        assert_eq!(health["StoreHealth"]["Healthy"], true, "{health}");
        assert_eq!(health["QueueHealth"]["Healthy"], true, "{health}");
        assert_eq!(health["QueueHealth"]["Kind"], "nats-jetstream", "{health}");
        let ids: HashSet<&str> = health["ClusterHealth"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["ID"].as_str().unwrap())
            .collect();
        let expected: HashSet<&str> = cluster
            .backends
            .iter()
            .map(|b| b.member_id.as_str())
            .collect();
        assert_eq!(ids, expected, "every backend sees the same three members");
    }
    println!("membership: every /health lists the three members");

    let clients = cluster.clients().await;
    // Records every keepalive incident (warnings, criticals, resolutions) it is given.
    let incidents = cluster.dir.path().join("keepalive-incidents.jsonl");
    let command = format!("cat >> '{0}'; echo >> '{0}'", incidents.display());
    expect(
        clients[0]
            .post(
                "namespaces/default/handlers",
                &json!({
                    "metadata": {"name": "keepalive", "namespace": "default"},
                    "type": "pipe",
                    "command": command,
                    "timeout": 10,
                    "filters": ["is_incident"],
                }),
            )
            .await,
        201,
    );

    // --- agents ---------------------------------------------------------------------------------
    let all_urls: Vec<String> = cluster
        .backends
        .iter()
        .map(|b| b.agent_url.clone())
        .collect();
    let mut movers = Vec::new();
    for index in 1..=MOVERS {
        movers.push(
            cluster
                .agent(&format!("mover-{index}"), all_urls.clone())
                .await,
        );
    }
    let mut placement: BTreeMap<String, usize> = BTreeMap::new();
    for mover in &movers {
        let backend = eventually(
            "every agent's keepalive is recorded",
            Duration::from_secs(15),
            async || cluster.owner_of(store, &mover.name).await,
        )
        .await;
        placement.insert(mover.name.clone(), backend);
    }
    println!("agents connected: {placement:?}");

    // --- events through any backend are read through every backend -----------------------------
    for (index, status) in [0, 2, 2].into_iter().enumerate() {
        let event = json!({"check": {"status": status, "output": format!("status {status}"), "interval": 60}});
        expect(
            clients[index]
                .put("namespaces/default/events/api-proxy/http", &event)
                .await,
            201,
        );
    }
    for (index, client) in clients.iter().enumerate() {
        let event = expect(
            client.get("namespaces/default/events/api-proxy/http").await,
            200,
        )
        .body;
        assert_eq!(
            event["check"]["history"].as_array().unwrap().len(),
            3,
            "backend {index}: {event}"
        );
        assert_eq!(event["check"]["occurrences"], 2, "backend {index}: {event}");
        for mover in &movers {
            let keepalive = expect(
                client
                    .get(&format!(
                        "namespaces/default/events/{}/keepalive",
                        mover.name
                    ))
                    .await,
                200,
            )
            .body;
            assert_eq!(
                keepalive["check"]["status"], 0,
                "backend {index}: {keepalive}"
            );
        }
    }
    println!("events: written through each backend, read through every backend");

    // --- configuration changes reach agents on the other backends -------------------------------
    // Made through a backend other than the busiest one, so at least two agents sit elsewhere.
    let busiest = busiest_backend(&placement, cluster.backends.len());
    let via = (busiest + 1) % cluster.backends.len();
    let elsewhere: Vec<&String> = placement
        .iter()
        .filter(|(_, b)| **b != via)
        .map(|(n, _)| n)
        .collect();
    assert!(elsewhere.len() >= 2, "{placement:?}");
    let check = |name: &str, subscription: &str| {
        json!({
            "metadata": {"name": name, "namespace": "default"},
            "command": format!("echo {name}"),
            "subscriptions": [subscription],
            "interval": 1,
            "publish": true,
        })
    };
    let created = Instant::now();
    expect(
        clients[via]
            .put(
                "namespaces/default/checks/cluster-check",
                &check("cluster-check", "cluster"),
            )
            .await,
        201,
    );
    for name in &elsewhere {
        eventually(
            "a new check runs on agents of the other backends",
            Duration::from_secs(6),
            async || {
                let answer = clients[via]
                    .get(&format!("namespaces/default/events/{name}/cluster-check"))
                    .await;
                (answer.status == 200).then_some(())
            },
        )
        .await;
    }
    println!(
        "config: a check created through backend {via} ran on {} agents of other backends within {:?}",
        elsewhere.len(),
        created.elapsed()
    );

    expect(
        clients[via]
            .put(
                "namespaces/default/checks/extra-check",
                &check("extra-check", "extra"),
            )
            .await,
        201,
    );
    let target = elsewhere[0].clone();
    let path = format!("namespaces/default/entities/{target}");
    let mut entity = expect(clients[via].get(&path).await, 200).body;
    entity["subscriptions"]
        .as_array_mut()
        .unwrap()
        .push(json!("extra"));
    let changed = Instant::now();
    let answer = clients[via].put(&path, &entity).await;
    assert!(
        answer.status.is_success(),
        "updating the entity: {}",
        answer.text
    );
    eventually(
        "an entity's new subscription reaches its agent on another backend",
        Duration::from_secs(6),
        async || {
            let answer = clients[via]
                .get(&format!("namespaces/default/events/{target}/extra-check"))
                .await;
            (answer.status == 200).then_some(())
        },
    )
    .await;
    println!(
        "config: {target} (on backend {}) ran extra-check {:?} after its subscriptions changed through backend {via}",
        placement[&target],
        changed.elapsed()
    );

    // --- kill -9 one backend --------------------------------------------------------------------
    let victim = busiest;
    let survivors: Vec<usize> = (0..cluster.backends.len())
        .filter(|i| *i != victim)
        .collect();
    let moving: Vec<String> = placement
        .iter()
        .filter(|(_, b)| **b == victim)
        .map(|(n, _)| n.clone())
        .collect();
    assert!(!moving.is_empty());
    // An agent that only knows the victim, and dies with it.
    let doomed = cluster
        .agent("doomed", vec![cluster.backends[victim].agent_url.clone()])
        .await;
    eventually(
        "the doomed agent is tracked by its backend",
        Duration::from_secs(10),
        async || (cluster.owner_of(store, "doomed").await? == victim).then_some(()),
    )
    .await;
    let doomed_path = "namespaces/default/events/doomed/keepalive";
    let reader = &clients[survivors[0]];
    eventually(
        "the doomed agent's keepalive is stored",
        Duration::from_secs(5),
        async || {
            let answer = reader.get(doomed_path).await;
            (answer.status == 200 && answer.body["check"]["status"] == 0).then_some(())
        },
    )
    .await;
    doomed.kill().await;
    cluster.kill(victim);
    let killed = Instant::now();
    println!("killed backend {victim} with {moving:?} and doomed on it");

    for name in &moving {
        let now_on = eventually(
            "agents of the killed backend reconnect to the others",
            Duration::from_secs(10),
            async || cluster.owner_of(store, name).await.filter(|b| *b != victim),
        )
        .await;
        println!(
            "{name} moved to backend {now_on} after {:?}",
            killed.elapsed()
        );
    }
    for mover in &movers {
        assert!(
            *mover.agent.connected().borrow(),
            "{} is connected",
            mover.name
        );
    }

    // The dead member is noticed after 3 s without a heartbeat, its agents are adopted on the
    // next membership round (≤ 1 s) and get one warning timeout from then; 4 s of slack for a
    // busy machine.
    let alert_by = killed + Duration::from_secs(u64::from(WARNING_TIMEOUT) + 8);
    let alert = eventually(
        "the dead agent alerts within warning timeout + a few seconds",
        alert_by.saturating_duration_since(Instant::now()),
        async || {
            let answer = reader.get(doomed_path).await;
            (answer.status == 200 && answer.body["check"]["status"] != 0).then_some(answer.body)
        },
    )
    .await;
    let alerted_after = killed.elapsed();
    println!(
        "doomed alerted after {alerted_after:?}: {}",
        alert["check"]["output"]
    );
    assert_eq!(alert["check"]["status"], 1, "a warning first: {alert}");
    assert_eq!(alert["check"]["occurrences"], 1, "{alert}");
    assert!(
        alerted_after >= Duration::from_secs(u64::from(WARNING_TIMEOUT)),
        "agents get a warning timeout to reconnect before their alert ({alerted_after:?})"
    );

    // Long enough for a second backend's duplicate, short of the re-raise one warning timeout
    // later; by now a mover that had not been taken over correctly would have alerted too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let handled = read_incidents(&incidents);
    let doomed_alerts: Vec<&Value> = handled
        .iter()
        .filter(|e| e["entity"]["metadata"]["name"] == "doomed" && e["check"]["status"] != 0)
        .collect();
    assert_eq!(
        doomed_alerts.len(),
        1,
        "the dead agent's alert is handled exactly once: {doomed_alerts:?}"
    );
    for survivor in &survivors {
        let event = expect(clients[*survivor].get(doomed_path).await, 200).body;
        let failures = event["check"]["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["status"] != 0)
            .count();
        assert_eq!(failures, 1, "one failure in the history: {event}");
        assert_eq!(event["check"]["occurrences"], 1, "{event}");
    }
    let false_alerts: Vec<&Value> = handled
        .iter()
        .filter(|e| e["entity"]["metadata"]["name"] != "doomed")
        .collect();
    assert!(
        false_alerts.is_empty(),
        "no keepalive alert for agents that moved: {false_alerts:?}"
    );
    for mover in &movers {
        let event = expect(
            clients[survivors[0]]
                .get(&format!(
                    "namespaces/default/events/{}/keepalive",
                    mover.name
                ))
                .await,
            200,
        )
        .body;
        let statuses: Vec<&Value> = event["check"]["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| &h["status"])
            .collect();
        assert!(
            statuses.iter().all(|s| **s == 0),
            "{} never alerted: {statuses:?}",
            mover.name
        );
        assert_eq!(event["check"]["status"], 0, "{event}");
    }
    println!(
        "failover: no false alert for {} agents; one alert for the dead agent",
        movers.len()
    );

    // The survivors report the killed member as unhealthy (and themselves as healthy).
    let victim_id = cluster.backends[victim].member_id.clone();
    for survivor in &survivors {
        let backend = &cluster.backends[*survivor];
        eventually(
            "survivors report the killed backend unhealthy",
            Duration::from_secs(5),
            async || {
                let (status, body) = cluster.health(backend).await?;
                let members = body["ClusterHealth"].as_array()?;
                let dead = members.iter().find(|m| m["ID"] == victim_id.as_str())?;
                (status == 200
                    && dead["Healthy"] == false
                    && members.iter().filter(|m| m["Healthy"] == true).count() == 2)
                    .then_some(())
            },
        )
        .await;
    }
    // ... and say so in their metrics, with the doomed agent's liveness adopted by one of them.
    let mut takeovers = 0.0;
    for survivor in &survivors {
        let metrics = cluster.metrics(&cluster.backends[*survivor]).await;
        assert_eq!(metric_sum(&metrics, "kensa_cluster_members_alive"), 2.0);
        assert_eq!(metric_sum(&metrics, "kensa_cluster_members_dead"), 1.0);
        takeovers += metric_sum(&metrics, "kensa_keepalive_takeovers_total");
    }
    assert!(takeovers >= 1.0, "the survivors took over the doomed agent");

    // --- one backend loses its store -----------------------------------------------------------
    let mut on_survivor: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for mover in &movers {
        let backend = cluster
            .owner_of(store, &mover.name)
            .await
            .expect("every agent is tracked");
        on_survivor
            .entry(backend)
            .or_default()
            .push(mover.name.clone());
    }
    let (isolated, stranded) = on_survivor
        .into_iter()
        .max_by_key(|(_, agents)| agents.len())
        .unwrap();
    let other = survivors.iter().copied().find(|s| *s != isolated).unwrap();
    const CUT: Duration = Duration::from_secs(10);
    let incidents_before = read_incidents(&incidents).len();
    cluster.store_proxies[isolated].cut(CUT);
    let cut = Instant::now();
    println!("cut backend {isolated} off its store with {stranded:?} on it");
    let backend = &cluster.backends[isolated];
    eventually(
        "a backend without its store reports unhealthy",
        Duration::from_secs(8),
        async || {
            let (status, _) = cluster.health(backend).await?;
            (status == 503).then_some(())
        },
    )
    .await;
    println!("backend {isolated} unhealthy after {:?}", cut.elapsed());
    eventually(
        "its metrics say the store is lost and sessions are shed",
        Duration::from_secs(8),
        async || {
            let metrics = get_text(&cluster.http, &format!("{}/metrics", backend.api)).await?;
            (metric_sum(&metrics, "kensa_store_reachable") == 0.0
                && metric_sum(&metrics, "kensa_agent_sessions_shedding") == 1.0)
                .then_some(())
        },
    )
    .await;
    for name in &stranded {
        eventually(
            "a backend without its store sheds its agents to the others",
            Duration::from_secs(10),
            async || (cluster.owner_of(store, name).await? == other).then_some(()),
        )
        .await;
    }
    println!(
        "its agents moved to backend {other} after {:?}",
        cut.elapsed()
    );
    let recovered = eventually(
        "the backend recovers by itself once the store is back",
        CUT + Duration::from_secs(10),
        async || {
            let (status, body) = cluster.health(backend).await?;
            (status == 200).then_some(body)
        },
    )
    .await;
    println!("backend {isolated} healthy again after {:?}", cut.elapsed());
    assert_eq!(
        recovered["ClusterHealth"].as_array().unwrap().len(),
        3,
        "{recovered}"
    );
    // Past the takeover grace of the agents it shed.
    let quiet_until = cut + Duration::from_secs(u64::from(WARNING_TIMEOUT) + 6);
    tokio::time::sleep(quiet_until.saturating_duration_since(Instant::now())).await;
    let false_alerts: Vec<Value> = read_incidents(&incidents)
        .into_iter()
        .skip(incidents_before)
        .filter(|e| e["entity"]["metadata"]["name"] != "doomed")
        .collect();
    assert!(
        false_alerts.is_empty(),
        "no keepalive alert for shed agents: {false_alerts:?}"
    );
    for mover in &movers {
        assert!(
            *mover.agent.connected().borrow(),
            "{} is connected",
            mover.name
        );
    }
    println!("store loss: agents shed without false alerts; the backend recovered");

    for mover in movers {
        mover.kill().await;
    }
}

/// The backend holding the most agents (the lowest index on a tie).
fn busiest_backend(placement: &BTreeMap<String, usize>, backends: usize) -> usize {
    (0..backends)
        .max_by_key(|b| {
            (
                placement.values().filter(|p| *p == b).count(),
                std::cmp::Reverse(*b),
            )
        })
        .unwrap()
}

/// Every event the recording handler got (one JSON document per line).
fn read_incidents(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).expect("the handler recorded JSON"))
        .collect()
}

/// Polls `probe` every 100 ms until it returns `Some`, for at most `wait`; panics naming `what`.
async fn eventually<T>(what: &str, wait: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {wait:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Backend {
    api: String,
    agent_url: String,
    /// The member id it reports in `/health`.
    member_id: String,
    /// `None` once killed.
    process: Option<Process>,
}

/// The backends, the test's NATS stream and a directory for logs and agent caches.
struct Cluster {
    backends: Vec<Backend>,
    /// Per backend, the TCP proxy it reaches PostgreSQL through (the test can cut it).
    store_proxies: Vec<TcpProxy>,
    nats_url: String,
    stream: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    /// Set by [`Cluster::stop`]; otherwise (a failed test) `Drop` deletes the stream.
    stopped: bool,
}

struct RunningAgent {
    name: String,
    shutdown: CancellationToken,
    agent: Agent,
}

impl RunningAgent {
    /// Stops the agent as if it died (the backend sees its connection drop).
    async fn kill(self) {
        self.shutdown.cancel();
        self.agent.stopped().await;
    }
}

impl Cluster {
    async fn start(store_url: String, nats_url: String) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_kensa-backend"));
        let init = std::process::Command::new(&binary)
            .args([
                "init",
                "--store-url",
                &store_url,
                "--cluster-admin-username",
                ADMIN,
                "--cluster-admin-password",
                PASSWORD,
            ])
            .output()
            .expect("running kensa-backend init");
        assert!(
            init.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let stream = format!(
            "KENSA_CLUSTER_TEST_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        );
        let mut backends = Vec::new();
        let mut store_proxies = Vec::new();
        for index in 0..3 {
            let (proxy, proxied_url) = proxied(&store_url).await;
            store_proxies.push(proxy);
            let (api_port, agent_port, dashboard_port) = (free_port(), free_port(), free_port());
            let state_dir = dir.path().join(format!("backend-{index}"));
            std::fs::create_dir_all(&state_dir).unwrap();
            let args: Vec<String> = [
                "start",
                "--store-url",
                &proxied_url,
                "--queue-url",
                &nats_url,
                "--queue-stream",
                &stream,
                "--state-dir",
                state_dir.to_str().unwrap(),
                "--api-listen-address",
                &format!("127.0.0.1:{api_port}"),
                "--agent-host",
                "127.0.0.1",
                "--agent-port",
                &agent_port.to_string(),
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                &dashboard_port.to_string(),
                "--log-level",
                "info",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let log = dir.path().join(format!("backend-{index}.log"));
            let process = Process::spawn(&format!("backend-{index}"), &binary, &args, &[], &log);
            backends.push(Backend {
                api: format!("http://127.0.0.1:{api_port}"),
                agent_url: format!("ws://127.0.0.1:{agent_port}"),
                member_id: String::new(),
                process: Some(process),
            });
        }
        let mut cluster = Cluster {
            backends,
            store_proxies,
            nats_url,
            stream,
            http: reqwest::Client::new(),
            dir,
            stopped: false,
        };
        for index in 0..cluster.backends.len() {
            let backend = &cluster.backends[index];
            let log = backend.process.as_ref().unwrap().log.clone();
            let deadline = Instant::now() + Duration::from_secs(30);
            let member_id = loop {
                if let Some((200, body)) = cluster.health(backend).await {
                    let own = body["Header"]["member_id"].clone();
                    let me = body["ClusterHealth"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|m| m["MemberID"] == own)
                        .cloned();
                    if let Some(me) = me {
                        break me["ID"].as_str().unwrap().to_owned();
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "backend {index} did not become healthy:\n{}",
                    tail(&log, 40)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            cluster.backends[index].member_id = member_id;
        }
        cluster
    }

    async fn health(&self, backend: &Backend) -> Option<(u16, Value)> {
        let response = self
            .http
            .get(format!("{}/health", backend.api))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.ok()?))
    }

    async fn metrics(&self, backend: &Backend) -> String {
        get_text(&self.http, &format!("{}/metrics", backend.api))
            .await
            .expect("/metrics answers")
    }

    async fn clients(&self) -> Vec<Client> {
        let mut clients = Vec::new();
        for backend in &self.backends {
            clients.push(Client::login(&backend.api, ADMIN, PASSWORD).await);
        }
        clients
    }

    /// The index of the backend whose member owns the agent's liveness record.
    async fn owner_of(
        &self,
        store: &kensa_store::postgres::PostgresStore,
        agent: &str,
    ) -> Option<usize> {
        let record = store
            .get(&Key::new("kensa.liveness", "default", agent))
            .await
            .ok()??;
        let owner = record.value["owner"].as_str()?;
        self.backends.iter().position(|b| b.member_id == owner)
    }

    async fn agent(&self, name: &str, backend_urls: Vec<String>) -> RunningAgent {
        let config = StartArgs {
            name: Some(name.into()),
            backend_url: backend_urls,
            namespace: Some("default".into()),
            subscriptions: vec!["cluster".into()],
            user: Some("agent".into()),
            password: Some(PASSWORD.into()),
            cache_dir: Some(self.dir.path().join(format!("cache-{name}"))),
            keepalive_interval: Some(KEEPALIVE_INTERVAL),
            keepalive_warning_timeout: Some(WARNING_TIMEOUT),
            keepalive_critical_timeout: Some(CRITICAL_TIMEOUT),
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
        .expect("agent configuration");
        let shutdown = CancellationToken::new();
        let agent = Agent::start(config, shutdown.clone()).await.unwrap();
        RunningAgent {
            name: name.to_owned(),
            shutdown,
            agent,
        }
    }

    /// `kill -9`.
    fn kill(&mut self, index: usize) {
        if let Some(process) = self.backends[index].process.take() {
            process.kill9();
        }
    }

    /// Kills every backend (printing the end of their logs) and deletes the stream.
    async fn stop(&mut self) {
        for index in 0..self.backends.len() {
            if let Some(process) = self.backends[index].process.take() {
                let log = process.log.clone();
                process.kill9();
                if std::env::var_os("KENSA_TEST_VERBOSE").is_some() {
                    println!("--- backend-{index} log ---\n{}", tail(&log, 60));
                }
            }
        }
        if let Err(err) = delete_stream(&self.nats_url, &self.stream).await {
            eprintln!(
                "warning: could not delete NATS stream {}: {err}",
                self.stream
            );
        }
        self.stopped = true;
    }
}

impl Drop for Cluster {
    /// After a failure: kills the backends and deletes the stream from a thread with a runtime
    /// of its own (`Drop` cannot await).
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // Backends first: a running one would create the stream again.
        for backend in &mut self.backends {
            if let Some(process) = backend.process.take() {
                process.kill9();
            }
        }
        let (url, stream) = (self.nats_url.clone(), self.stream.clone());
        let deleted = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| err.to_string())?
                .block_on(delete_stream(&url, &stream))
        })
        .join();
        if let Ok(Err(err)) = deleted {
            eprintln!(
                "warning: could not delete NATS stream {}: {err}",
                self.stream
            );
        }
    }
}

/// A TCP proxy to the PostgreSQL server of `url`, and `url` going through it.
async fn proxied(url: &str) -> (TcpProxy, String) {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// url");
    let (credentials, rest) = match rest.split_once('@') {
        Some((credentials, rest)) => (format!("{credentials}@"), rest),
        None => (String::new(), rest),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let upstream = tokio::net::lookup_host(if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:5432")
    })
    .await
    .expect("resolving the PostgreSQL host")
    .next()
    .expect("an address for the PostgreSQL host");
    let proxy = TcpProxy::start(upstream).await;
    let url = format!("{scheme}://{credentials}{}{path}", proxy.address);
    (proxy, url)
}

/// Deletes a JetStream stream with the plain NATS protocol (a JetStream API request).
async fn delete_stream(url: &str, stream: &str) -> Result<(), String> {
    let address = url.trim_start_matches("nats://").trim_end_matches('/');
    let exchange = async {
        let connection = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let (read, mut write) = connection.into_split();
        let mut lines = BufReader::new(read);
        let mut line = String::new();
        lines
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?; // INFO
        let request = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB _INBOX.kensa_cluster_test 1\r\nPUB $JS.API.STREAM.DELETE.{stream} _INBOX.kensa_cluster_test 0\r\n\r\n"
        );
        write
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        loop {
            line.clear();
            if lines
                .read_line(&mut line)
                .await
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("connection closed".to_owned());
            }
            if line.starts_with("PING") {
                write
                    .write_all(b"PONG\r\n")
                    .await
                    .map_err(|e| e.to_string())?;
            } else if line.starts_with("MSG ") {
                let mut payload = String::new();
                lines
                    .read_line(&mut payload)
                    .await
                    .map_err(|e| e.to_string())?;
                return if payload.contains("\"success\":true") {
                    Ok(())
                } else {
                    Err(payload.trim().to_owned())
                };
            } else if line.starts_with("-ERR") {
                return Err(line.trim().to_owned());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".to_owned()))
}
