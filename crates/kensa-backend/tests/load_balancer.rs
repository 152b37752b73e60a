//! The `deploy/nginx` recipe end to end: nginx from Debian terminates TLS in front of three
//! `kensa-backend` processes (cluster mode: a fresh PostgreSQL database, the NATS server with a
//! stream of the test's own), rendered with `deploy/nginx/render.sh` exactly as an operator
//! would. The backends play three hosts (127.0.0.11–13, same ports); real `kensa-agent`
//! processes know only `wss://` of the load balancer and the test CA
//! (`--trusted-ca-file`). What an operator relies on:
//!
//! - the REST API (its own port) and the dashboard with the API on the same origin answer over
//!   https, certificate verified; a check created through the load balancer runs on agents and
//!   its events are read back through it; the dashboard's live stream delivers updates;
//! - agents spread over all three backends (each backend's `kensa_agent_sessions`);
//! - `kill -9` of a backend: its agents reconnect through nginx to the two others, API calls
//!   keep working, and no keepalive alert is raised for any agent;
//! - once the backend is back, agents stay where they are until the operator reloads nginx
//!   (`worker_shutdown_timeout` then closes the old workers' sessions): they spread over the
//!   three backends again, still without an alert.
//!
//! Skipped (with a notice) without nginx, `KENSA_TEST_POSTGRES_URL` or `KENSA_TEST_NATS_URL`;
//! with `KENSA_PLUGIN_TESTS` set (CI) a missing nginx fails instead. Every process is stopped
//! when the test ends, also on failure (nginx with SIGTERM, its whole process group killed if
//! that does not do); the database is dropped and the stream deleted.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::faults::{binaries, free_port, get_text, metric_sum, tail, wait_ok, Process};
use common::nats::{delete_stream, delete_stream_blocking, unique_stream_name};
use common::nginx::{
    is_nginx, nginx_available, render_recipe, write_ca_and_server_certificate, Nginx,
};
use common::{expect, Client};
use kensa_store::{Key, Store};
use serde_json::{json, Value};

const ADMIN: &str = "admin";
const PASSWORD: &str = "lb-test-admin-pass";
/// The backends' hosts: one loopback address each, the same ports on all (as on three hosts).
const HOSTS: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];
const AGENTS: usize = 6;
/// Agents' keepalive timing: an agent cut off for longer than the warning timeout alerts.
const KEEPALIVE_INTERVAL: u32 = 1;
const WARNING_TIMEOUT: u32 = 5;
const CRITICAL_TIMEOUT: u32 = 30;
/// How long nginx's old workers keep their connections after a reload.
const WORKER_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
const SESSIONS: &str = "kensa_agent_sessions";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nginx_terminates_tls_spreads_agents_and_fails_them_over() {
    if !nginx_available() {
        return;
    }
    let Ok(nats_url) = std::env::var("KENSA_TEST_NATS_URL") else {
        println!("skipped: KENSA_TEST_NATS_URL not set");
        return;
    };
    let Some((store, database)) = kensa_store::testing::temp_postgres().await else {
        return; // temp_postgres printed the skip notice
    };
    let started = Instant::now();
    let mut site = Site::start(database.url(), nats_url).await;
    let result = tokio::time::timeout(Duration::from_secs(100), scenario(&mut site, &store)).await;
    let nginx_processes = site
        .nginx
        .as_ref()
        .map(|n| n.processes())
        .unwrap_or_default();
    site.stop().await;
    database.cleanup().await;
    let nginx_processes_count = nginx_processes.len();
    let left: Vec<u32> = nginx_processes
        .into_iter()
        .filter(|p| is_nginx(*p))
        .collect();
    assert!(left.is_empty(), "nginx processes left behind: {left:?}");
    println!("nginx stopped: {nginx_processes_count} processes, none left");
    match result {
        Ok(()) => println!("load balancer test passed in {:?}", started.elapsed()),
        Err(_) => panic!("the load balancer test did not finish within 100 s"),
    }
}

async fn scenario(site: &mut Site, store: &kensa_store::postgres::PostgresStore) {
    // --- https through nginx: API, dashboard, live stream --------------------------------------
    let api = site.login(&site.lb_url(site.lb_api_port)).await;
    let dashboard = site.login(&site.lb_url(site.lb_dashboard_port)).await;
    let version = expect(api.get("/version").await, 200).body;
    assert!(version["kensa_backend"].is_string(), "{version}");
    let page = expect(dashboard.get("/").await, 200);
    assert!(
        page.text.to_lowercase().contains("<html"),
        "the dashboard page: {}",
        &page.text[..page.text.len().min(200)]
    );

    // Records every keepalive incident (warnings, criticals, resolutions) it is given.
    let incidents = site.dir.path().join("keepalive-incidents.jsonl");
    let command = format!("cat >> '{0}'; echo >> '{0}'", incidents.display());
    expect(
        api.post(
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
    let mut stream = LiveStream::open(&dashboard).await;
    stream.expect("ready").await;
    // Created through the dashboard's origin, read back through the API port.
    expect(
        dashboard
            .put(
                "namespaces/default/checks/through-lb",
                &json!({
                    "metadata": {"name": "through-lb", "namespace": "default"},
                    "command": "echo through the load balancer",
                    "subscriptions": ["lb"],
                    "interval": 1,
                    "publish": true,
                }),
            )
            .await,
        201,
    );
    expect(api.get("namespaces/default/checks/through-lb").await, 200);
    // An event (the dashboard follows events, entities and silences) reaches the open page.
    expect(
        api.put(
            "namespaces/default/events/lb-proxy/lb-probe",
            &json!({"check": {"status": 1, "output": "through nginx", "interval": 60}}),
        )
        .await,
        201,
    );
    stream.expect("change").await;
    println!("https: API and dashboard answer through nginx; the live stream got a change");

    // --- agents spread over the backends --------------------------------------------------------
    for index in 0..AGENTS {
        site.start_agent(index);
    }
    let spread = site
        .eventually("every agent has a session", Duration::from_secs(20), |s| {
            (s.iter().sum::<usize>() == AGENTS).then_some(s.to_vec())
        })
        .await;
    println!("agent sessions per backend: {spread:?}");
    assert!(
        spread.iter().all(|n| *n >= 1),
        "least_conn spreads {AGENTS} agents over the three backends: {spread:?}"
    );
    let placement = site.placement(store).await;
    for name in site.agent_names() {
        let path = format!("namespaces/default/events/{name}/through-lb");
        let event = poll_ok(&api, &path, Duration::from_secs(10)).await;
        assert_eq!(event["check"]["status"], 0, "{event}");
        assert_eq!(
            event["check"]["output"], "through the load balancer\n",
            "{event}"
        );
    }
    println!("placement: {placement:?}; the check ran on every agent, read through nginx");

    // --- kill -9 one backend --------------------------------------------------------------------
    let victim = (0..HOSTS.len())
        .max_by_key(|b| (spread[*b], std::cmp::Reverse(*b)))
        .unwrap();
    let moving: Vec<String> = placement
        .iter()
        .filter(|(_, b)| **b == victim)
        .map(|(n, _)| n.clone())
        .collect();
    assert!(!moving.is_empty(), "{placement:?}");
    site.kill_backend(victim);
    let killed = Instant::now();
    println!("killed backend {victim} holding {moving:?}");

    // API calls keep working at once: nginx tries the next backend when one refuses.
    for round in 0..6 {
        let answer = api.get("namespaces/default/events").await;
        assert_eq!(answer.status, 200, "API call {round} after the kill");
        let answer = dashboard.get("namespaces/default/entities").await;
        assert_eq!(
            answer.status, 200,
            "dashboard-origin call {round} after the kill"
        );
    }
    let after = site
        .eventually(
            "the killed backend's agents reconnect to the others",
            Duration::from_secs(15),
            |s| (s.iter().sum::<usize>() == AGENTS).then_some(s.to_vec()),
        )
        .await;
    println!(
        "{} agents back in session after {:?}: {after:?}",
        moving.len(),
        killed.elapsed()
    );
    // Each one's next keepalive (within an interval of its reconnect) moves its liveness
    // record to the survivor it is on.
    for name in &moving {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let owner = site.owner_of(store, name).await;
            if owner.is_some_and(|o| o != victim) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}'s keepalives are tracked by a survivor ({owner:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The dead member is noticed after 3 s, records it still owned would be adopted on the
    // next membership round with one warning timeout of grace: past that, a false alert
    // would have been raised.
    let quiet_until = killed + Duration::from_secs(u64::from(WARNING_TIMEOUT) + 6);
    tokio::time::sleep(quiet_until.saturating_duration_since(Instant::now())).await;
    assert_no_alerts(&api, &incidents, &site.agent_names()).await;
    println!("no keepalive alert {:?} after the kill", killed.elapsed());

    // --- the backend returns; a new agent goes to it, a reload of nginx rebalances ----------
    site.start_backend(victim).await;
    let returned = site.sessions().await;
    assert_eq!(
        returned[victim], 0,
        "agents stay on the survivors until something moves them: {returned:?}"
    );
    // least_conn: the next session goes to the backend with the fewest.
    site.start_agent(AGENTS);
    let total = AGENTS + 1;
    let with_newcomer = site
        .eventually(
            "a new agent's session goes to the returned backend",
            Duration::from_secs(10),
            |s| (s.iter().sum::<usize>() == total).then_some(s.to_vec()),
        )
        .await;
    assert_eq!(
        with_newcomer[victim], 1,
        "least_conn picks the returned backend for a new session: {with_newcomer:?}"
    );
    let reloaded = Instant::now();
    site.nginx_mut().reload();
    let rebalanced = site
        .eventually(
            "agents spread evenly over the three backends after the reload",
            WORKER_SHUTDOWN_TIMEOUT + Duration::from_secs(15),
            |s| {
                let (min, max) = (s.iter().min()?, s.iter().max()?);
                (s.iter().sum::<usize>() == total && max - min <= 1).then_some(s.to_vec())
            },
        )
        .await;
    println!(
        "backend {victim} returned: a new agent went to it {with_newcomer:?}; after nginx's \
         reload ({:?}) {rebalanced:?}",
        reloaded.elapsed()
    );
    // A keepalive interval and more for a session that did not come back to alert.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_no_alerts(&api, &incidents, &site.agent_names()).await;
    site.nginx_mut().assert_running();
    println!("rebalanced without a keepalive alert");
}

/// No incident was handled for any agent, and every agent's keepalive event is OK with no
/// failure in its history.
async fn assert_no_alerts(api: &Client, incidents: &Path, agents: &[String]) {
    let handled = read_incidents(incidents);
    assert!(
        handled.is_empty(),
        "no keepalive incident: {}",
        serde_json::to_string_pretty(&handled).unwrap()
    );
    for name in agents {
        let event = expect(
            api.get(&format!("namespaces/default/events/{name}/keepalive"))
                .await,
            200,
        )
        .body;
        assert_eq!(event["check"]["status"], 0, "{event}");
        let failures = event["check"]["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["status"] != 0)
            .count();
        assert_eq!(failures, 0, "no failure in {name}'s history: {event}");
    }
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

/// GETs `path` until it answers 200, for at most `wait`.
async fn poll_ok(client: &Client, path: &str, wait: Duration) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let answer = client.get(path).await;
        if answer.status == 200 {
            return answer.body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} did not answer 200 within {wait:?}: {} {}",
            answer.status,
            answer.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The dashboard's live updates read through the load balancer, as the page reads them.
struct LiveStream {
    response: reqwest::Response,
    received: String,
}

impl LiveStream {
    async fn open(client: &Client) -> LiveStream {
        let response = client
            .http
            .get(format!(
                "{}/dashboard/api/stream?namespace=default",
                client.base
            ))
            .header("Authorization", client.auth.as_deref().unwrap())
            .send()
            .await
            .expect("opening the live stream");
        assert_eq!(response.status(), 200, "the live stream");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        LiveStream {
            response,
            received: String::new(),
        }
    }

    /// Reads until a message `event: <name>` arrived, for at most 5 s: a proxy that buffers
    /// the stream holds it back.
    async fn expect(&mut self, name: &str) {
        let marker = format!("event: {name}\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.received.contains(&marker) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.received.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(Ok(None)) => panic!("the live stream ended: {:?}", self.received),
                Ok(Err(err)) => panic!("reading the live stream: {err}"),
                Err(_) => panic!(
                    "no `{name}` message within 5 s through nginx; got {:?}",
                    self.received
                ),
            }
        }
        // Later expectations look at what arrives after this message.
        let end = self.received.find(&marker).unwrap() + marker.len();
        self.received.drain(..end);
    }
}

struct Backend {
    host: &'static str,
    args: Vec<String>,
    log: PathBuf,
    /// The member id its `/health` reports (the owner in liveness records).
    member_id: String,
    /// `None` while killed.
    process: Option<Process>,
}

struct Agent {
    name: String,
    log: PathBuf,
    process: Option<Process>,
}

/// Three backends, nginx in front of them, the agents, and a directory for everything.
struct Site {
    backends: Vec<Backend>,
    /// The backends' API port (the same on every host; the agent and dashboard ports are
    /// only in their arguments and nginx's configuration).
    api_port: u16,
    lb_api_port: u16,
    lb_agent_port: u16,
    lb_dashboard_port: u16,
    agents: Vec<Agent>,
    nginx: Option<Nginx>,
    ca_file: PathBuf,
    backend_bin: PathBuf,
    agent_bin: PathBuf,
    /// Plain HTTP, for each backend's own `/health` and `/metrics`.
    direct: reqwest::Client,
    /// Trusts only the test CA.
    https: reqwest::Client,
    nats_url: String,
    stream: String,
    dir: tempfile::TempDir,
    /// Set by [`Site::stop`]; otherwise (a failed test) `Drop` cleans up.
    stopped: bool,
}

impl Site {
    async fn start(store_url: String, nats_url: String) -> Site {
        let dir = tempfile::tempdir().unwrap();
        // nginx's workers run as `nobody` under root and must reach their temp directories.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let (backend_bin, agent_bin) = binaries();
        let tls = write_ca_and_server_certificate(dir.path(), &["127.0.0.1", "localhost"]);
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&tls.ca).unwrap()).unwrap();
        let https = reqwest::Client::builder()
            .add_root_certificate(ca)
            .tls_built_in_root_certs(false)
            .build()
            .unwrap();
        let stream = unique_stream_name("KENSA_LB_TEST");
        let (api_port, agent_port, dashboard_port) = (free_port(), free_port(), free_port());
        let mut site = Site {
            backends: Vec::new(),
            api_port,
            lb_api_port: free_port(),
            lb_agent_port: free_port(),
            lb_dashboard_port: free_port(),
            agents: Vec::new(),
            nginx: None,
            ca_file: tls.ca.clone(),
            backend_bin,
            agent_bin,
            direct: reqwest::Client::new(),
            https,
            nats_url: nats_url.clone(),
            stream: stream.clone(),
            dir,
            stopped: false,
        };
        for (index, host) in HOSTS.iter().enumerate() {
            let state_dir = site.dir.path().join(format!("backend-{index}"));
            std::fs::create_dir_all(&state_dir).unwrap();
            let args: Vec<String> = [
                "start",
                "--store-url",
                &store_url,
                "--queue-url",
                &nats_url,
                "--queue-stream",
                &stream,
                "--state-dir",
                state_dir.to_str().unwrap(),
                "--api-listen-address",
                &format!("{host}:{api_port}"),
                "--agent-host",
                host,
                "--agent-port",
                &agent_port.to_string(),
                "--dashboard-host",
                host,
                "--dashboard-port",
                &dashboard_port.to_string(),
                // The first backend initializes the empty database; the others find it so.
                "--cluster-admin-username",
                ADMIN,
                "--cluster-admin-password",
                PASSWORD,
                "--log-level",
                "info",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            site.backends.push(Backend {
                host,
                args,
                log: site.dir.path().join(format!("backend-{index}.log")),
                member_id: String::new(),
                process: None,
            });
        }
        for index in 0..HOSTS.len() {
            site.start_backend(index).await;
        }

        let nginx_dir = site.dir.path().join("nginx");
        std::fs::create_dir_all(&nginx_dir).unwrap();
        let rendered = render_recipe(&[
            ("KENSA_BACKEND_1", HOSTS[0].to_owned()),
            ("KENSA_BACKEND_2", HOSTS[1].to_owned()),
            ("KENSA_BACKEND_3", HOSTS[2].to_owned()),
            ("KENSA_BACKEND_API_PORT", api_port.to_string()),
            ("KENSA_BACKEND_AGENT_PORT", agent_port.to_string()),
            ("KENSA_BACKEND_DASHBOARD_PORT", dashboard_port.to_string()),
            ("KENSA_LB_LISTEN_ADDRESS", "127.0.0.1".to_owned()),
            ("KENSA_LB_API_PORT", site.lb_api_port.to_string()),
            ("KENSA_LB_AGENT_PORT", site.lb_agent_port.to_string()),
            (
                "KENSA_LB_DASHBOARD_PORT",
                site.lb_dashboard_port.to_string(),
            ),
            ("KENSA_LB_SERVER_NAME", "localhost".to_owned()),
            ("KENSA_LB_CERT_FILE", tls.cert.display().to_string()),
            ("KENSA_LB_KEY_FILE", tls.key.display().to_string()),
        ]);
        let site_conf = nginx_dir.join("kensa.conf");
        std::fs::write(&site_conf, rendered).unwrap();
        site.nginx = Some(Nginx::start(
            &nginx_dir,
            &site_conf,
            WORKER_SHUTDOWN_TIMEOUT,
        ));
        for port in [site.lb_api_port, site.lb_dashboard_port] {
            let url = format!("{}/health", site.lb_url(port));
            if !wait_ok(&site.https, &url, Duration::from_secs(10)).await {
                site.nginx_mut().assert_running();
                panic!(
                    "{url} did not answer through nginx:\n{}",
                    site.nginx_mut().error_log_tail(30)
                );
            }
        }
        site
    }

    fn lb_url(&self, port: u16) -> String {
        format!("https://127.0.0.1:{port}")
    }

    fn backend_url(&self, index: usize) -> String {
        format!("http://{}:{}", self.backends[index].host, self.api_port)
    }

    fn nginx_mut(&mut self) -> &mut Nginx {
        self.nginx.as_mut().expect("nginx is running")
    }

    /// Logs in as the admin through the load balancer at `base`, certificate verified.
    async fn login(&self, base: &str) -> Client {
        let answer = self
            .https
            .get(format!("{base}/auth"))
            .basic_auth(ADMIN, Some(PASSWORD))
            .send()
            .await
            .unwrap_or_else(|err| panic!("login through {base}: {err:?}"));
        assert_eq!(answer.status(), 200, "login through {base}");
        let tokens: Value = answer.json().await.unwrap();
        Client {
            http: self.https.clone(),
            base: base.to_owned(),
            auth: Some(format!(
                "Bearer {}",
                tokens["access_token"].as_str().unwrap()
            )),
        }
    }

    /// Starts backend `index` (again) and waits until it is healthy and sees itself as a
    /// member; records its member id.
    async fn start_backend(&mut self, index: usize) {
        let backend = &mut self.backends[index];
        backend.process = Some(Process::spawn(
            &format!("backend-{index}"),
            &self.backend_bin,
            &backend.args,
            &[],
            &backend.log,
        ));
        let url = format!("{}/health", self.backend_url(index));
        let deadline = Instant::now() + Duration::from_secs(30);
        let member_id = loop {
            if let Some(body) = get_text(&self.direct, &url).await {
                let body: Value = serde_json::from_str(&body).unwrap();
                let own = &body["Header"]["member_id"];
                let me = body["ClusterHealth"]
                    .as_array()
                    .and_then(|members| members.iter().find(|m| m["MemberID"] == *own));
                if let Some(id) = me.and_then(|m| m["ID"].as_str()) {
                    break id.to_owned();
                }
            }
            assert!(
                Instant::now() < deadline,
                "backend {index} did not become healthy:\n{}",
                tail(&self.backends[index].log, 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        self.backends[index].member_id = member_id;
    }

    /// `kill -9`.
    fn kill_backend(&mut self, index: usize) {
        if let Some(process) = self.backends[index].process.take() {
            process.kill9();
        }
    }

    /// A `kensa-agent` process that knows only the load balancer, as the README sets it up.
    fn start_agent(&mut self, index: usize) {
        let name = format!("lb-agent-{}", index + 1);
        let cache_dir = self.dir.path().join(format!("cache-{name}"));
        let args: Vec<String> = [
            "start",
            "--name",
            &name,
            "--backend-url",
            &format!("wss://127.0.0.1:{}", self.lb_agent_port),
            "--trusted-ca-file",
            self.ca_file.to_str().unwrap(),
            "--subscriptions",
            "lb",
            "--cache-dir",
            cache_dir.to_str().unwrap(),
            "--disable-api",
            "--disable-sockets",
            "--statsd-disable",
            "--keepalive-interval",
            &KEEPALIVE_INTERVAL.to_string(),
            "--keepalive-warning-timeout",
            &WARNING_TIMEOUT.to_string(),
            "--keepalive-critical-timeout",
            &CRITICAL_TIMEOUT.to_string(),
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
        let log = self.dir.path().join(format!("{name}.log"));
        let process = Process::spawn(&name, &self.agent_bin, &args, &[], &log);
        self.agents.push(Agent {
            name,
            log,
            process: Some(process),
        });
    }

    fn agent_names(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.name.clone()).collect()
    }

    /// Agent sessions per backend (0 for a backend that does not answer).
    async fn sessions(&self) -> Vec<usize> {
        let mut counts = Vec::new();
        for index in 0..self.backends.len() {
            let url = format!("{}/metrics", self.backend_url(index));
            let count = match self.backends[index].process {
                Some(_) => get_text(&self.direct, &url)
                    .await
                    .map_or(0.0, |text| metric_sum(&text, SESSIONS)),
                None => 0.0,
            };
            counts.push(count as usize);
        }
        counts
    }

    /// Polls [`Site::sessions`] every 100 ms until `accept` returns `Some`, for at most `wait`;
    /// panics naming `what`, with the agents' and nginx's logs.
    async fn eventually<T>(
        &self,
        what: &str,
        wait: Duration,
        accept: impl Fn(&[usize]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + wait;
        loop {
            let sessions = self.sessions().await;
            if let Some(value) = accept(&sessions) {
                return value;
            }
            if Instant::now() >= deadline {
                for agent in &self.agents {
                    println!("--- {} ---\n{}", agent.name, tail(&agent.log, 10));
                }
                panic!(
                    "timed out after {wait:?}: {what}; sessions per backend {sessions:?}\n\
                     --- nginx error log ---\n{}",
                    self.nginx
                        .as_ref()
                        .map(|n| n.error_log_tail(30))
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

    /// Which backend tracks each agent.
    async fn placement(
        &self,
        store: &kensa_store::postgres::PostgresStore,
    ) -> BTreeMap<String, usize> {
        let mut placement = BTreeMap::new();
        for name in self.agent_names() {
            let deadline = Instant::now() + Duration::from_secs(10);
            let owner = loop {
                if let Some(owner) = self.owner_of(store, &name).await {
                    break owner;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name}'s liveness record names no running backend"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            placement.insert(name, owner);
        }
        placement
    }

    /// Agents first (no reconnect noise), then nginx, then the backends (printing the end of
    /// their logs with KENSA_TEST_VERBOSE), then the stream.
    async fn stop(&mut self) {
        self.stop_processes();
        if let Err(err) = delete_stream(&self.nats_url, &self.stream).await {
            eprintln!(
                "warning: could not delete NATS stream {}: {err}",
                self.stream
            );
        }
        self.stopped = true;
    }

    fn stop_processes(&mut self) {
        for agent in &mut self.agents {
            if let Some(process) = agent.process.take() {
                process.kill9();
            }
        }
        if let Some(mut nginx) = self.nginx.take() {
            nginx.stop();
            if std::env::var_os("KENSA_TEST_VERBOSE").is_some() {
                println!("--- nginx error log ---\n{}", nginx.error_log_tail(60));
            }
        }
        for (index, backend) in self.backends.iter_mut().enumerate() {
            if let Some(process) = backend.process.take() {
                process.kill9();
                if std::env::var_os("KENSA_TEST_VERBOSE").is_some() {
                    println!("--- backend-{index} log ---\n{}", tail(&backend.log, 60));
                }
            }
        }
    }
}

impl Drop for Site {
    /// After a failure: stops every process, then deletes the stream (a running backend would
    /// create it again).
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.stop_processes();
        if let Err(err) = delete_stream_blocking(&self.nats_url, &self.stream) {
            eprintln!(
                "warning: could not delete NATS stream {}: {err}",
                self.stream
            );
        }
    }
}
