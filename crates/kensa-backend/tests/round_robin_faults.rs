//! The round-robin fault-injection suite (issue 4): real `kensa-backend` and `kensa-agent`
//! processes run round-robin checks every second for a few minutes while the test kills,
//! stops and cuts them off, once per queue implementation:
//!
//! - **in-process queue**: one backend on SQLite; an agent is killed with SIGKILL in the middle
//!   of an execution (and restarted later), another is stopped (SIGSTOP) past its round's
//!   deadline then continued, a third is cut off at its TCP proxy, and the backend itself is
//!   killed and restarted on the same state directory (its persisted queue must still run the
//!   rounds published before the kill);
//! - **NATS JetStream queue**: three backends sharing a fresh PostgreSQL database and a
//!   nats-server of the test's own; the same agent faults, one backend killed (its agents move
//!   to the others) and later restarted, and the nats-server killed and restarted on the same
//!   port and store directory. Skipped (with a notice) without `KENSA_TEST_NATS_URL` and
//!   `KENSA_TEST_POSTGRES_URL`; the machine's shared nats-server is never used.
//!
//! What is measured comes from outside the backend: every check execution appends a line to
//! its agent's file (executions per agent), and the checks' pipe handler writes every event it
//! receives to a file of its own (which rounds were handled, how often, and whether a "round
//! missed" event was raised). Duplicates flagged and redeliveries come from the backends'
//! `/metrics`, read before each kill and at the end.
//!
//! Pass criteria: every tick between a check's first and last handled round was handled (ticks
//! are 1000 ms apart; ticks while no backend ran at all are not expected), no round was handled
//! twice, no "round missed" event, and duplicates flagged ≤ 1 % of the rounds. A summary table
//! is printed either way; on failure the backend log lines naming the failed rounds are too.
//! Set `KENSA_KEEP_FAULT_DIRS=1` to keep the temporary directory (logs, events) for inspection.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::faults::{
    binaries, free_port, get_text, grep, metric_sum, now_ms, tail, wait_ok, CounterBank, Process,
    TcpProxy,
};
use common::{expect, Client};
use kensa_backend::rounds::record::{self, RoundRef};
use kensa_store::{ListQuery, Store};
use serde_json::{json, Value};

/// The two scenarios are heavy for a small machine and time-sensitive: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SUBSCRIPTION: &str = "rr";
const AGENTS: usize = 4;
const CHECKS: usize = 4;
const ADMIN_USER: &str = "admin";
const ADMIN_PASSWORD: &str = "rr-faults-admin-pass";
/// How long the checks run (faults happen within it).
const RUN: Duration = Duration::from_secs(150);
/// How long in-flight rounds get to settle after the checks are deleted.
const SETTLE: Duration = Duration::from_secs(25);
/// How long a SIGSTOPped agent stays stopped: past its round's 2 s timeout (the budget is at
/// least 5 s) and the 2 s grace, so the round goes to another agent.
const STOPPED_FOR: Duration = Duration::from_secs(8);
/// How long a cut agent cannot reach any backend.
const CUT_FOR: Duration = Duration::from_secs(5);
/// A tick this close before a backend crash may have been in the middle of its publish when
/// the process died: such a round never reached the queue, like the ticks while no backend ran.
const PUBLISH_IN_PROGRESS_MS: i64 = 250;
/// Metrics read from each backend.
const DUPLICATED: &str = "kensa_rounds_duplicated_total";
const REDELIVERED: &str = "kensa_rounds_redelivered_total";
const COMPLETED: &str = "kensa_rounds_completed_total";
const MISSED: &str = "kensa_rounds_missed_total";
const DELIVERED: &str = "kensa_rounds_delivered_total";
const COUNTERS: [&str; 5] = [DUPLICATED, REDELIVERED, COMPLETED, MISSED, DELIVERED];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_queue_runs_every_round_through_agent_and_backend_faults() {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::new("in-process");
    rig.add_backend(&[]);
    rig.start_backend(0).await;
    let store = kensa_store::sqlite::SqliteStore::open(&rig.backends[0].state_dir.join("kensa.db"))
        .await
        .expect("opening the backend's SQLite store beside it");
    rig.watch_round_records(Arc::new(store));
    rig.start_monitoring().await;

    let t0 = Instant::now();
    rig.at(t0, 12).await;
    rig.kill_agent_mid_execution(0).await;
    rig.at(t0, 27).await;
    rig.start_agent(0);
    rig.at(t0, 32).await;
    rig.stop_agent_mid_execution(1).await;
    rig.at(t0, 50).await;
    rig.cut_agent_mid_execution(2).await;
    rig.at(t0, 70).await;
    // The only backend: the ticks until it is back are never scheduled, but every round it
    // published before dying is in its persisted queue and must still run.
    let killed_at = rig.kill_backend(0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.start_backend(0).await;
    rig.excluded
        .push((killed_at - PUBLISH_IN_PROGRESS_MS, now_ms() + 1000));
    rig.at(t0, 100).await;
    rig.kill_agent_mid_execution(3).await;
    rig.at(t0, 110).await;
    rig.start_agent(3);

    rig.at(t0, RUN.as_secs()).await;
    let outcome = rig.finish().await;
    rig.judge(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_queue_runs_every_round_through_agent_backend_and_server_faults() {
    if std::env::var_os("KENSA_TEST_NATS_URL").is_none() {
        println!("skipped: KENSA_TEST_NATS_URL not set (this test starts its own nats-server, but only where NATS tests are enabled)");
        return;
    }
    let Some((store, database)) = kensa_store::testing::temp_postgres().await else {
        return; // temp_postgres printed the skip notice
    };
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::new("nats");
    let nats_port = free_port();
    rig.nats = Some(NatsNode::new(&rig.root(), nats_port));
    rig.start_nats().await;
    let stream = format!("KENSA_RR_FAULTS_{}", std::process::id());
    let store_url = database.url();
    let queue_url = format!("nats://127.0.0.1:{nats_port}");
    for _ in 0..3 {
        rig.add_backend(&[
            "--store-url",
            &store_url,
            "--queue-url",
            &queue_url,
            "--queue-stream",
            &stream,
        ]);
    }
    // The first one initializes the database; the others find it initialized.
    rig.start_backend(0).await;
    rig.start_backend(1).await;
    rig.start_backend(2).await;
    rig.watch_round_records(Arc::new(store));
    rig.start_monitoring().await;

    let t0 = Instant::now();
    rig.at(t0, 12).await;
    rig.kill_agent_mid_execution(0).await;
    rig.at(t0, 27).await;
    rig.start_agent(0);
    rig.at(t0, 32).await;
    rig.stop_agent_mid_execution(1).await;
    rig.at(t0, 48).await;
    rig.cut_agent_mid_execution(2).await;
    rig.at(t0, 60).await;
    // Two backends keep scheduling every round: nothing is excluded.
    rig.kill_backend(2).await;
    rig.at(t0, 75).await;
    rig.kill_nats();
    let nats_killed = Instant::now();
    // Without the bus the backends say so in /health and hold their agent sessions (every
    // check but round robin keeps running); they recover by themselves when it is back.
    rig.bus_loss_reported_and_sessions_held().await;
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(nats_killed.elapsed())).await;
    rig.start_nats().await;
    rig.healthy_again(Duration::from_secs(15)).await;
    rig.at(t0, 95).await;
    rig.start_backend(2).await;
    rig.at(t0, 100).await;
    rig.kill_agent_mid_execution(3).await;
    rig.at(t0, 110).await;
    rig.start_agent(3);

    rig.at(t0, RUN.as_secs()).await;
    let outcome = rig.finish().await;
    rig.judge(&outcome);
    // Processes first, then the database (on a panic, `rig` is dropped before `database` too,
    // and the guard drops the database on its own).
    drop(rig);
    database.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// The rig: processes, proxies and the files they leave behind.

struct BackendNode {
    api_port: u16,
    agent_port: u16,
    state_dir: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    process: Option<Process>,
}

impl BackendNode {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    fn agent_address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.agent_port))
    }
}

struct AgentNode {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    /// One proxy per backend; the agent knows the backends only through these.
    proxies: Vec<TcpProxy>,
    process: Option<Process>,
}

struct NatsNode {
    port: u16,
    store_dir: PathBuf,
    log: PathBuf,
    process: Option<Process>,
}

impl NatsNode {
    fn new(root: &Path, port: u16) -> NatsNode {
        NatsNode {
            port,
            store_dir: root.join("nats-store"),
            log: root.join("nats-server.log"),
            process: None,
        }
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a round record said, as last read from the store.
#[derive(Debug, Clone, Default)]
struct SeenRecord {
    state: String,
    entity: String,
    duplicates: u64,
}

struct Rig {
    label: &'static str,
    http: reqwest::Client,
    backend_bin: PathBuf,
    agent_bin: PathBuf,
    // Dropped in this order: agents (and their proxies), backends, the nats-server, the
    // round-record watcher, then the directory.
    agents: Vec<AgentNode>,
    backends: Vec<BackendNode>,
    nats: Option<NatsNode>,
    records_task: Option<AbortOnDrop>,
    records: Arc<Mutex<HashMap<String, SeenRecord>>>,
    client: Option<Client>,
    counters: CounterBank,
    /// Tick ranges (Unix ms, inclusive) in which no backend could schedule.
    excluded: Vec<(i64, i64)>,
    /// What the test did, when (seconds since the rig started).
    timeline: Vec<String>,
    started: Instant,
    events_dir: PathBuf,
    exec_dir: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl Rig {
    fn new(label: &'static str) -> Rig {
        let (backend_bin, agent_bin) = binaries();
        let dir = tempfile::Builder::new()
            .prefix(&format!("kensa-rr-faults-{label}-"))
            .tempdir()
            .expect("a temporary directory");
        let events_dir = dir.path().join("events");
        let exec_dir = dir.path().join("executions");
        std::fs::create_dir_all(&events_dir).unwrap();
        std::fs::create_dir_all(&exec_dir).unwrap();
        println!("[{label}] working directory {}", dir.path().display());
        Rig {
            label,
            http: reqwest::Client::new(),
            backend_bin,
            agent_bin,
            agents: Vec::new(),
            backends: Vec::new(),
            nats: None,
            records_task: None,
            records: Arc::default(),
            client: None,
            counters: CounterBank::default(),
            excluded: Vec::new(),
            timeline: Vec::new(),
            started: Instant::now(),
            events_dir,
            exec_dir,
            dir: Some(dir),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir
            .as_ref()
            .expect("rig directory")
            .path()
            .to_path_buf()
    }

    fn note(&mut self, what: String) {
        let line = format!("{:7.2}s  {what}", self.started.elapsed().as_secs_f64());
        println!("[{}] {line}", self.label);
        self.timeline.push(line);
    }

    /// Sleeps until `seconds` after `t0`.
    async fn at(&self, t0: Instant, seconds: u64) {
        let when = t0 + Duration::from_secs(seconds);
        let now = Instant::now();
        if when > now {
            tokio::time::sleep(when - now).await;
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("logged in")
    }

    // --- backends ---------------------------------------------------------------------------

    fn add_backend(&mut self, extra: &[&str]) {
        let index = self.backends.len();
        let state_dir = self.root().join(format!("backend-{index}"));
        std::fs::create_dir_all(&state_dir).unwrap();
        let (api_port, agent_port, dashboard_port) = (free_port(), free_port(), free_port());
        let mut args: Vec<String> = [
            "start",
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
            "--cluster-admin-username",
            ADMIN_USER,
            "--cluster-admin-password",
            ADMIN_PASSWORD,
            "--log-level",
            "debug",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        self.backends.push(BackendNode {
            api_port,
            agent_port,
            log: self.root().join(format!("backend-{index}.log")),
            state_dir,
            args,
            process: None,
        });
    }

    /// Starts backend `index` and waits until it answers `/health`.
    async fn start_backend(&mut self, index: usize) {
        let node = &mut self.backends[index];
        // Debug for Kensa's own crates only: the dependencies' debug output would drown it.
        let filter = "info,kensa_backend=debug,kensa_queue=debug,sqlx=warn,hyper=warn";
        node.process = Some(Process::spawn(
            &format!("backend-{index}"),
            &self.backend_bin,
            &node.args,
            &[("KENSA_LOG", filter)],
            &node.log,
        ));
        let health = format!("{}/health", node.url());
        let log = node.log.clone();
        let up = wait_ok(&self.http, &health, Duration::from_secs(60)).await;
        assert!(
            up,
            "backend-{index} did not become healthy; its log:\n{}",
            tail(&log, 60)
        );
        self.note(format!("backend-{index} started and healthy"));
    }

    /// With the nats-server down, every running backend answers `/health` with 503 and
    /// `QueueHealth.Healthy: false` within a few seconds, and keeps its agent sessions.
    async fn bus_loss_reported_and_sessions_held(&mut self) {
        let running: Vec<String> = self
            .backends
            .iter()
            .filter(|node| node.process.is_some())
            .map(|node| node.url())
            .collect();
        let mut sessions_before = 0.0;
        for url in &running {
            let deadline = Instant::now() + Duration::from_secs(4);
            loop {
                let response = self
                    .http
                    .get(format!("{url}/health"))
                    .timeout(Duration::from_secs(3))
                    .send()
                    .await;
                if let Ok(response) = response {
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap_or_default();
                    if status == 503 && body["QueueHealth"]["Healthy"] == false {
                        break;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "{url} did not report the lost queue in /health"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let metrics = get_text(&self.http, &format!("{url}/metrics"))
                .await
                .expect("/metrics answers without the bus");
            sessions_before += metric_sum(&metrics, "kensa_agent_sessions");
        }
        assert!(
            sessions_before >= 1.0,
            "agents stay connected while the bus is down"
        );
        self.note("backends report the lost queue, sessions held".into());
    }

    /// Every running backend answers `/health` with 200 again within `wait`.
    async fn healthy_again(&mut self, wait: Duration) {
        for node in self.backends.iter().filter(|node| node.process.is_some()) {
            let up = wait_ok(&self.http, &format!("{}/health", node.url()), wait).await;
            assert!(
                up,
                "backend did not become healthy again after the bus returned:\n{}",
                tail(&node.log, 40)
            );
        }
        self.note("backends healthy again".into());
    }

    /// Reads backend `index`'s counters, then kills it with SIGKILL; returns when (Unix ms).
    async fn kill_backend(&mut self, index: usize) -> i64 {
        let url = format!("{}/metrics", self.backends[index].url());
        let banked = self.counters.bank(&self.http, &url, &COUNTERS).await;
        assert!(
            banked,
            "backend-{index} /metrics did not answer before its kill"
        );
        let killed_at = now_ms();
        if let Some(process) = self.backends[index].process.take() {
            process.kill9();
        }
        self.note(format!("backend-{index} killed (SIGKILL)"));
        killed_at
    }

    // --- nats-server ---------------------------------------------------------------------------

    async fn start_nats(&mut self) {
        let nats = self.nats.as_mut().expect("a nats node");
        let args: Vec<String> = [
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &nats.port.to_string(),
            "-sd",
            nats.store_dir.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        nats.process = Some(Process::spawn(
            "nats-server",
            Path::new("/usr/sbin/nats-server"),
            &args,
            &[],
            &nats.log,
        ));
        let address = SocketAddr::from(([127, 0, 0, 1], nats.port));
        let log = nats.log.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start:\n{}",
                tail(&log, 30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.note(format!("nats-server started on port {}", address.port()));
    }

    fn kill_nats(&mut self) {
        if let Some(process) = self.nats.as_mut().and_then(|n| n.process.take()) {
            process.kill9();
        }
        self.note("nats-server killed (SIGKILL)".into());
    }

    // --- agents --------------------------------------------------------------------------------

    async fn add_agents(&mut self) {
        for index in 0..AGENTS {
            let name = format!("rr-agent-{}", index + 1);
            let mut proxies = Vec::new();
            for backend in &self.backends {
                proxies.push(TcpProxy::start(backend.agent_address()).await);
            }
            let urls: Vec<String> = proxies
                .iter()
                .map(|p| format!("ws://{}", p.address))
                .collect();
            let cache_dir = self.root().join(format!("cache-{name}"));
            let args: Vec<String> = [
                "start",
                "--name",
                &name,
                "--backend-url",
                &urls.join(","),
                "--subscriptions",
                SUBSCRIPTION,
                "--cache-dir",
                cache_dir.to_str().unwrap(),
                "--disable-api",
                "--disable-sockets",
                "--statsd-disable",
                "--keepalive-interval",
                "5",
                "--retry-min",
                "100ms",
                "--retry-max",
                "1s",
                "--log-level",
                "info",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            self.agents.push(AgentNode {
                log: self.root().join(format!("{name}.log")),
                name,
                args,
                proxies,
                process: None,
            });
        }
    }

    fn start_agent(&mut self, index: usize) {
        let node = &mut self.agents[index];
        node.process = Some(Process::spawn(
            &node.name,
            &self.agent_bin,
            &node.args,
            &[],
            &node.log,
        ));
        let name = node.name.clone();
        self.note(format!("{name} started"));
    }

    fn executions_file(&self, index: usize) -> PathBuf {
        self.exec_dir
            .join(format!("{}.log", self.agents[index].name))
    }

    fn executions(&self, index: usize) -> usize {
        std::fs::read_to_string(self.executions_file(index))
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }

    /// Returns as soon as agent `index` starts a check execution (its command appends its line
    /// first, then sleeps 0.2 s): a fault injected now hits the agent mid-execution.
    async fn wait_execution_start(&self, index: usize) {
        let file = self.executions_file(index);
        let size = |file: &Path| std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        let before = size(&file);
        let deadline = Instant::now() + Duration::from_secs(20);
        while size(&file) == before {
            assert!(
                Instant::now() < deadline,
                "{} ran no check for 20 s; its log:\n{}",
                self.agents[index].name,
                tail(&self.agents[index].log, 30)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn kill_agent_mid_execution(&mut self, index: usize) {
        self.wait_execution_start(index).await;
        if let Some(process) = self.agents[index].process.take() {
            process.kill9();
        }
        let name = self.agents[index].name.clone();
        self.note(format!("{name} killed (SIGKILL) mid-execution"));
    }

    async fn stop_agent_mid_execution(&mut self, index: usize) {
        self.wait_execution_start(index).await;
        let name = self.agents[index].name.clone();
        let process = self.agents[index].process.as_ref().expect("agent running");
        process.signal("STOP");
        self.note(format!("{name} stopped (SIGSTOP) mid-execution"));
        tokio::time::sleep(STOPPED_FOR).await;
        let process = self.agents[index].process.as_ref().expect("agent running");
        process.signal("CONT");
        self.note(format!("{name} continued (SIGCONT)"));
    }

    async fn cut_agent_mid_execution(&mut self, index: usize) {
        self.wait_execution_start(index).await;
        let open: usize = self.agents[index]
            .proxies
            .iter()
            .map(|p| p.open_connections())
            .sum();
        for proxy in &self.agents[index].proxies {
            proxy.cut(CUT_FOR);
        }
        let name = self.agents[index].name.clone();
        self.note(format!(
            "{name} cut off at its proxies for {}s mid-execution ({open} connection(s) closed)",
            CUT_FOR.as_secs()
        ));
        tokio::time::sleep(CUT_FOR).await;
    }

    // --- resources -----------------------------------------------------------------------------

    /// Logs in, creates the recording handler, starts the agents, creates the round-robin
    /// checks once every agent is registered, and waits until every agent has run one.
    async fn start_monitoring(&mut self) {
        self.client =
            Some(Client::login(&self.backends[0].url(), ADMIN_USER, ADMIN_PASSWORD).await);
        // Each event goes to a file of its own (written aside, then renamed), so nothing
        // interleaves and no half-written file is ever read.
        let events = self.events_dir.display().to_string();
        let handler = json!({
            "metadata": {"name": "record", "namespace": "default"},
            "type": "pipe",
            "command": format!(
                "t=$(mktemp -p '{events}' .event.XXXXXXXXXX) && cat > \"$t\" && mv \"$t\" \"$t.json\""
            ),
            "timeout": 10,
        });
        expect(
            self.client()
                .post("namespaces/default/handlers", &handler)
                .await,
            201,
        );
        self.add_agents().await;
        for index in 0..AGENTS {
            self.start_agent(index);
        }
        for index in 0..AGENTS {
            let name = self.agents[index].name.clone();
            let registered = common::poll_until(
                self.client(),
                &format!("namespaces/default/entities/{name}"),
                Duration::from_secs(30),
                |_| true,
            )
            .await;
            assert!(
                registered.is_some(),
                "{name} did not register; its log:\n{}",
                tail(&self.agents[index].log, 30)
            );
        }
        self.note("every agent registered".into());
        let executions = self.exec_dir.display().to_string();
        for n in 1..=CHECKS {
            let name = format!("rr-{n}");
            let check = json!({
                "metadata": {"name": name, "namespace": "default"},
                "command": format!("echo run >> '{executions}/{{{{ .name }}}}.log'; sleep 0.2; echo ok"),
                "interval": 1,
                "timeout": 2,
                "subscriptions": [SUBSCRIPTION],
                "round_robin": true,
                "publish": true,
                "handlers": ["record"],
            });
            expect(
                self.client()
                    .put(&format!("namespaces/default/checks/{name}"), &check)
                    .await,
                201,
            );
        }
        self.note(format!(
            "{CHECKS} round-robin checks created (interval 1 s, timeout 2 s)"
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        for index in 0..AGENTS {
            while self.executions(index) == 0 {
                assert!(
                    Instant::now() < deadline,
                    "{} ran no round within 20 s of the checks' creation; its log:\n{}\nbackend-0 log:\n{}",
                    self.agents[index].name,
                    tail(&self.agents[index].log, 30),
                    tail(&self.backends[0].log, 60),
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.note("every agent took rounds".into());
    }

    /// Follows the round records in the store (they are a ring of the last 64 rounds per
    /// check, so they are read every second and remembered here).
    fn watch_round_records(&mut self, store: Arc<dyn Store>) {
        let records = self.records.clone();
        let task = tokio::spawn(async move {
            loop {
                let mut continue_token = None;
                loop {
                    let query = ListQuery {
                        kind: record::KIND.to_owned(),
                        namespace: Some("default".to_owned()),
                        name_prefix: None,
                        limit: 500,
                        continue_token: continue_token.take(),
                    };
                    let Ok(page) = store.list(&query).await else {
                        break;
                    };
                    {
                        let mut records = records.lock().unwrap();
                        for item in &page.items {
                            let seen = record::decode(&item.value);
                            if seen.round.is_empty() {
                                continue;
                            }
                            let entry = records.entry(seen.round.clone()).or_default();
                            entry.state = seen.state.clone();
                            entry.entity = seen.entity.clone();
                            entry.duplicates = entry.duplicates.max(seen.duplicate_count);
                        }
                    }
                    match page.continue_token {
                        Some(token) => continue_token = Some(token),
                        None => break,
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        self.records_task = Some(AbortOnDrop(task));
    }

    // --- the end -------------------------------------------------------------------------------

    /// Deletes the checks, lets in-flight rounds settle, reads the counters and analyses what
    /// the handler received.
    async fn finish(&mut self) -> Outcome {
        for n in 1..=CHECKS {
            expect(
                self.client()
                    .delete(&format!("namespaces/default/checks/rr-{n}"))
                    .await,
                204,
            );
        }
        self.note("checks deleted; letting in-flight rounds settle".into());
        let deadline = Instant::now() + SETTLE;
        let mut last_count = usize::MAX;
        let mut quiet_since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let outcome = self.analyse();
            if outcome.events_read != last_count {
                last_count = outcome.events_read;
                quiet_since = Instant::now();
            }
            let quiet = quiet_since.elapsed() >= Duration::from_secs(5);
            if (quiet && outcome.missing.is_empty()) || Instant::now() >= deadline {
                break;
            }
        }
        self.note("settled".into());
        for index in 0..self.backends.len() {
            if self.backends[index].process.is_some() {
                let url = format!("{}/metrics", self.backends[index].url());
                let banked = self.counters.bank(&self.http, &url, &COUNTERS).await;
                assert!(banked, "backend-{index} /metrics did not answer at the end");
            }
        }
        // Round records are read every second; give the watcher one more pass.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.analyse()
    }

    fn analyse(&self) -> Outcome {
        let mut outcome = Outcome::default();
        let mut handled: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let entries = std::fs::read_dir(&self.events_dir).expect("events directory");
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let event: Value = serde_json::from_str(&text).unwrap_or_else(|err| {
                panic!(
                    "{}: the handler got no JSON ({err}): {text}",
                    path.display()
                )
            });
            outcome.events_read += 1;
            let entity = event["entity"]["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let annotations = &event["check"]["metadata"]["annotations"];
            if annotations["kensa.io/missed-round"] == "true" {
                outcome.missed_events.push(format!(
                    "{entity}: {}",
                    annotations["kensa.io/round"].as_str().unwrap_or("?")
                ));
                continue;
            }
            if entity.starts_with("round-robin:") {
                outcome.resolutions += 1; // a "rounds complete again" event
                continue;
            }
            let round = event["check"]["round"].as_str().unwrap_or_default();
            if RoundRef::parse(round).is_none() {
                outcome.other_events += 1;
                continue;
            }
            if event["check"]["status"] != 0 {
                outcome.failed_results += 1;
            }
            handled.entry(round.to_owned()).or_default().push(entity);
        }
        // Expected rounds: every tick between a check's first and last handled round.
        let mut ticks: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
        for round in handled.keys() {
            let parsed = RoundRef::parse(round).expect("parsed above");
            if let Some(tick) = parsed.tick_ms {
                ticks.entry(parsed.check).or_default().insert(tick);
            }
        }
        let records = self.records.lock().unwrap().clone();
        for (check, seen) in &ticks {
            let (first, last) = (*seen.first().unwrap(), *seen.last().unwrap());
            for &tick in seen {
                if (tick - first) % 1000 != 0 {
                    outcome
                        .off_grid
                        .push(format!("default/{check}@{tick}#{SUBSCRIPTION}"));
                }
            }
            let mut tick = first;
            while tick <= last {
                let excluded = self
                    .excluded
                    .iter()
                    .any(|(from, to)| (*from..=*to).contains(&tick));
                let id = format!("default/{check}@{tick}#{SUBSCRIPTION}");
                if !excluded {
                    outcome.expected += 1;
                    if !seen.contains(&tick) {
                        outcome.missing.push(id);
                    }
                }
                tick += 1000;
            }
        }
        for (round, entities) in &handled {
            if entities.len() > 1 {
                outcome
                    .handled_twice
                    .push(format!("{round} by {}", entities.join(", ")));
            }
        }
        outcome.handled = handled.len();
        outcome.executions = (0..self.agents.len())
            .map(|i| (self.agents[i].name.clone(), self.executions(i)))
            .collect();
        outcome.recorded_duplicates = records.values().map(|r| r.duplicates).sum();
        outcome.records_seen = records.len();
        for missing in &outcome.missing {
            let note = match records.get(missing) {
                Some(r) => format!("round record: {} by {:?}", r.state, r.entity),
                None => "no round record seen".to_owned(),
            };
            outcome.missing_notes.push(format!("{missing} ({note})"));
        }
        outcome
    }

    fn counter(&self, name: &str) -> u64 {
        self.counters.get(name) as u64
    }

    /// Prints the summary, then asserts the pass criteria (printing the evidence first).
    fn judge(&self, outcome: &Outcome) {
        let duplicates = self.counter(DUPLICATED);
        let redelivered = self.counter(REDELIVERED);
        let missed_metric = self.counter(MISSED);
        let total_executions: usize = outcome.executions.iter().map(|(_, n)| n).sum();
        let spread: Vec<String> = outcome
            .executions
            .iter()
            .map(|(name, n)| format!("{name}={n}"))
            .collect();
        let allowed_duplicates = outcome.handled as f64 * 0.01;
        println!(
            "\n===== round robin under faults: {} queue =====",
            self.label
        );
        println!("timeline:");
        for line in &self.timeline {
            println!("  {line}");
        }
        println!(
            "excluded tick windows (no backend running): {:?}",
            self.excluded
        );
        println!(
            "  {:<44} {:>8}",
            "rounds expected (ticks first..last handled)", outcome.expected
        );
        println!(
            "  {:<44} {:>8}",
            "rounds handled (distinct)", outcome.handled
        );
        println!(
            "  {:<44} {:>8}",
            "missing (expected, never handled)",
            outcome.missing.len()
        );
        println!(
            "  {:<44} {:>8}",
            "handled twice",
            outcome.handled_twice.len()
        );
        println!(
            "  {:<44} {:>8}",
            "off the 1000 ms tick grid",
            outcome.off_grid.len()
        );
        println!(
            "  {:<44} {:>8}",
            "\"round missed\" events handled",
            outcome.missed_events.len()
        );
        println!(
            "  {:<44} {:>8}",
            "kensa_rounds_missed_total (sum)", missed_metric
        );
        println!(
            "  {:<44} {:>8}   (allowed ≤ {allowed_duplicates:.1})",
            "duplicates flagged (kensa_rounds_duplicated)", duplicates
        );
        println!(
            "  {:<44} {:>8}   (over {} round records seen)",
            "duplicates on round records", outcome.recorded_duplicates, outcome.records_seen
        );
        println!(
            "  {:<44} {:>8}",
            "redeliveries (kensa_rounds_redelivered)", redelivered
        );
        println!(
            "  {:<44} {:>8}",
            "deliveries (kensa_rounds_delivered)",
            self.counter(DELIVERED)
        );
        println!(
            "  {:<44} {:>8}",
            "completions (kensa_rounds_completed)",
            self.counter(COMPLETED)
        );
        println!(
            "  {:<44} {:>8}",
            "results with status ≠ 0", outcome.failed_results
        );
        println!(
            "  {:<44} {:>8}",
            "executions (all agents)", total_executions
        );
        println!(
            "  {:<44} {:>8}",
            "executions without a result (killed agents)",
            total_executions as i64 - outcome.handled as i64 - duplicates as i64
        );
        println!("  executions per agent: {}", spread.join("  "));
        println!(
            "  events handled: {} ({} pool resolutions, {} other)",
            outcome.events_read, outcome.resolutions, outcome.other_events
        );

        let mut failures = Vec::new();
        if !outcome.missing.is_empty() {
            failures.push(format!(
                "{} expected round(s) never handled",
                outcome.missing.len()
            ));
        }
        if !outcome.handled_twice.is_empty() {
            failures.push(format!(
                "{} round(s) handled twice",
                outcome.handled_twice.len()
            ));
        }
        if !outcome.missed_events.is_empty() || missed_metric > 0 {
            failures.push(format!(
                "{} \"round missed\" event(s), {missed_metric} counted missed",
                outcome.missed_events.len()
            ));
        }
        if !outcome.off_grid.is_empty() {
            failures.push(format!(
                "{} round(s) off the tick grid",
                outcome.off_grid.len()
            ));
        }
        if duplicates as f64 > allowed_duplicates {
            failures.push(format!(
                "{duplicates} duplicates flagged > 1 % of {} rounds",
                outcome.handled
            ));
        }
        if outcome.handled < 300 {
            failures.push(format!(
                "only {} rounds handled; the run proves little",
                outcome.handled
            ));
        }
        if failures.is_empty() {
            println!("===== passed =====\n");
            return;
        }
        println!("\n===== FAILED: {} =====", failures.join("; "));
        let mut named: Vec<String> = Vec::new();
        for (title, list) in [
            ("missing", &outcome.missing_notes),
            ("handled twice", &outcome.handled_twice),
            ("round missed events", &outcome.missed_events),
            ("off grid", &outcome.off_grid),
        ] {
            if !list.is_empty() {
                println!("{title}:");
                for item in list.iter().take(40) {
                    println!("  {item}");
                }
            }
        }
        named.extend(outcome.missing.iter().take(10).cloned());
        named.extend(
            outcome
                .handled_twice
                .iter()
                .take(10)
                .filter_map(|line| line.split(' ').next().map(str::to_owned)),
        );
        for (index, backend) in self.backends.iter().enumerate() {
            let lines = grep(&backend.log, &named, 80);
            if !lines.is_empty() {
                println!("backend-{index} log lines naming those rounds:");
                for line in lines {
                    println!("  {line}");
                }
            }
            let warnings: Vec<String> =
                grep(&backend.log, &[" WARN ".into(), " ERROR ".into()], 60);
            if !warnings.is_empty() {
                println!("backend-{index} warnings and errors (first 60):");
                for line in warnings {
                    println!("  {line}");
                }
            }
        }
        panic!(
            "round robin under faults ({} queue) failed: {}",
            self.label,
            failures.join("; ")
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Processes go first (their guards kill them), then the directory.
        self.agents.clear();
        self.backends.clear();
        self.nats = None;
        self.records_task = None;
        if std::thread::panicking() {
            println!("[{}] last lines of the logs:", self.label);
            let root = self.root();
            for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) == Some("log") {
                    println!("--- {} ---\n{}", path.display(), tail(&path, 25));
                }
            }
        }
        if let Some(dir) = self.dir.take() {
            if std::env::var_os("KENSA_KEEP_FAULT_DIRS").is_some() {
                println!("[{}] kept {}", self.label, dir.keep().display());
            }
        }
    }
}

#[derive(Debug, Default)]
struct Outcome {
    events_read: usize,
    expected: usize,
    handled: usize,
    missing: Vec<String>,
    missing_notes: Vec<String>,
    handled_twice: Vec<String>,
    off_grid: Vec<String>,
    missed_events: Vec<String>,
    resolutions: usize,
    other_events: usize,
    failed_results: usize,
    executions: Vec<(String, usize)>,
    recorded_duplicates: u64,
    records_seen: usize,
}
