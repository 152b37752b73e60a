//! Parts for fault-injection tests that run Kensa as real processes: the `kensa-backend` and
//! `kensa-agent` binaries, a nats-server of the test's own, a TCP proxy that can cut an agent
//! off, and readers for what the processes leave behind (Prometheus counters, log tails).
//!
//! Every process started here is owned by a [`Process`], which kills it (SIGKILL) and reaps it
//! when dropped — also when the test panics — so a failed run leaves nothing behind. Ports are
//! picked by binding `127.0.0.1:0` and releasing the port just before the process binds it.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// A free TCP port on 127.0.0.1 (bound, then released for the process that needs it).
/// A port nothing listens on, for a process this test starts later. Picked below Linux's
/// ephemeral range (32768+), so the port cannot meanwhile be handed to an outgoing connection
/// or a `bind(0)` (a proxy, a client), and never the same port twice in one test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Start somewhere different per process, so concurrent test binaries rarely meet.
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 500) as u16 * 20,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 32_000, "no free port left below the ephemeral range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Wall-clock time in Unix milliseconds (the unit of round ticks).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// The last `lines` lines of a (log) file, or a note that it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("({}: {err})", path.display()),
    }
}

/// The lines of a file that contain any of `needles` (at most `limit`).
pub fn grep(path: &Path, needles: &[String], limit: usize) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|line| needles.iter().any(|needle| line.contains(needle.as_str())))
        .take(limit)
        .map(str::to_owned)
        .collect()
}

/// Where the binaries under test are: the backend's from Cargo, the agent's next to it, built
/// (once per test binary) with the same target directory so that it is never a stale build
/// (`cargo test -p kensa-backend` does not rebuild another package's binary by itself).
pub fn binaries() -> (PathBuf, PathBuf) {
    static AGENT_BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let backend = PathBuf::from(env!("CARGO_BIN_EXE_kensa-backend"));
    let profile_dir = backend.parent().expect("binary directory").to_path_buf();
    let agent = profile_dir.join("kensa-agent");
    AGENT_BUILT.get_or_init(|| {
        let target_dir = profile_dir.parent().expect("target directory");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args([
                "build",
                "--locked",
                "-p",
                "kensa-agent",
                "--bin",
                "kensa-agent",
            ])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build for kensa-agent");
        assert!(status.success(), "building kensa-agent failed");
    });
    assert!(agent.exists(), "{} is missing", agent.display());
    (backend, agent)
}

/// A child process owned by the test: killed with SIGKILL and reaped when dropped. Its stdout
/// and stderr are appended to `log`, with a marker line per start.
pub struct Process {
    pub name: String,
    pub log: PathBuf,
    child: Child,
    /// Set once the process was killed and reaped, so `Drop` has nothing left to do.
    reaped: bool,
}

impl Process {
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Process {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("opening a process log");
        writeln!(
            file,
            "===== {name} started at {} ms: {} {}",
            now_ms(),
            program.display(),
            args.join(" ")
        )
        .ok();
        let stderr = file.try_clone().expect("cloning a log handle");
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(stderr));
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("starting {name} ({}): {err}", program.display()));
        Process {
            name: name.to_owned(),
            log: log.to_owned(),
            child,
            reaped: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill -9, and reap it.
    pub fn kill9(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if std::mem::replace(&mut self.reaped, true) {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(mut file) = OpenOptions::new().append(true).open(&self.log) {
            writeln!(
                file,
                "===== {} killed (SIGKILL) at {} ms",
                self.name,
                now_ms()
            )
            .ok();
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`…) to the process itself (not its children).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("running kill");
        assert!(
            status.success(),
            "kill -{signal} {} ({}) failed",
            self.pid(),
            self.name
        );
        if let Ok(mut file) = OpenOptions::new().append(true).open(&self.log) {
            writeln!(
                file,
                "===== {} got SIG{signal} at {} ms",
                self.name,
                now_ms()
            )
            .ok();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped (SIGSTOP) process; reaping it leaves no zombie behind.
        self.kill_now();
    }
}

/// A TCP proxy in front of one upstream address, which the test can "cut": close every current
/// connection and, for a while, close new ones as soon as they are accepted (the client sees
/// its connection refused at the application level and retries, as after a network outage).
pub struct TcpProxy {
    pub address: SocketAddr,
    shared: Arc<ProxyShared>,
    accept: JoinHandle<()>,
}

struct ProxyShared {
    upstream: SocketAddr,
    /// Until when new connections are dropped. Never held across an await.
    refuse_until: Mutex<Option<Instant>>,
    /// The forwarding tasks of current connections (finished ones pruned on each accept).
    connections: Mutex<Vec<AbortHandle>>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy listener");
        let address = listener.local_addr().expect("proxy address");
        let shared = Arc::new(ProxyShared {
            upstream,
            refuse_until: Mutex::new(None),
            connections: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        TcpProxy {
            address,
            shared,
            accept,
        }
    }

    /// Closes every current connection and drops new ones for `duration`.
    pub fn cut(&self, duration: Duration) {
        *self.shared.refuse_until.lock().unwrap() = Some(Instant::now() + duration);
        for connection in self.shared.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// Connections currently forwarded.
    pub fn open_connections(&self) -> usize {
        let mut connections = self.shared.connections.lock().unwrap();
        connections.retain(|c| !c.is_finished());
        connections.len()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for connection in self.shared.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<ProxyShared>) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        let refusing = shared
            .refuse_until
            .lock()
            .unwrap()
            .is_some_and(|until| Instant::now() < until);
        if refusing {
            drop(client);
            continue;
        }
        let upstream = shared.upstream;
        let task = tokio::spawn(async move {
            let connect =
                tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(upstream));
            let Ok(Ok(mut server)) = connect.await else {
                return; // upstream down: the client sees its connection closed
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
        let mut connections = shared.connections.lock().unwrap();
        connections.retain(|c| !c.is_finished());
        connections.push(task.abort_handle());
    }
}

/// Sums every sample of a counter (all label sets) in a Prometheus text exposition.
pub fn metric_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// GETs `url` with a short timeout; `None` when it does not answer 200.
pub async fn get_text(http: &reqwest::Client, url: &str) -> Option<String> {
    let response = http
        .get(url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// Counters read from the `/metrics` of backends that restart: counters start again at 0 in
/// every process, so the last values read from a process before it is killed are banked.
#[derive(Default)]
pub struct CounterBank {
    banked: HashMap<String, f64>,
}

impl CounterBank {
    /// Reads `names` from `metrics_url` and adds them to the bank (call just before killing
    /// the process, or at the end for processes that are still running).
    pub async fn bank(
        &mut self,
        http: &reqwest::Client,
        metrics_url: &str,
        names: &[&str],
    ) -> bool {
        let Some(text) = get_text(http, metrics_url).await else {
            return false;
        };
        for name in names {
            *self.banked.entry((*name).to_owned()).or_default() += metric_sum(&text, name);
        }
        true
    }

    pub fn get(&self, name: &str) -> f64 {
        self.banked.get(name).copied().unwrap_or(0.0)
    }
}

/// Polls `url` until it answers 200, for at most `wait`.
pub async fn wait_ok(http: &reqwest::Client, url: &str, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if get_text(http, url).await.is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
