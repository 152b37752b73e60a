//! A real backend for tests: in-process, on `127.0.0.1:0`, with an embedded SQLite store in a
//! temporary directory, initialized with `admin` / `P@ssw0rd!`. Used by this crate's tests and
//! by other crates' end-to-end tests (kensactl, the Ansible playbook test).

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{AdminCredentials, BackendConfig, StoreLocation};

pub const ADMIN_USERNAME: &str = "admin";
pub const ADMIN_PASSWORD: &str = "P@ssw0rd!";

pub struct TestServer {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `ws://127.0.0.1:PORT` (`wss://localhost:PORT` with TLS): where agents connect.
    pub agent_url: String,
    /// `http://127.0.0.1:PORT`: the dashboard (which also serves the API, same origin).
    pub dashboard_url: String,
    pub admin_username: String,
    pub admin_password: String,
    pub state_dir: PathBuf,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a backend on a fresh embedded store.
    pub async fn start() -> anyhow::Result<TestServer> {
        TestServer::start_configured(|_| {}).await
    }

    /// Starts a backend on a fresh embedded store, after `adjust` changed its configuration
    /// (token lifetimes, TLS, body limit…).
    pub async fn start_configured(
        adjust: impl FnOnce(&mut BackendConfig),
    ) -> anyhow::Result<TestServer> {
        let dir = tempfile::tempdir()?;
        let store = StoreLocation::Sqlite(dir.path().join("kensa.db"));
        let mut server = TestServer::start_with(store, dir.path().to_path_buf(), adjust).await?;
        server._dir = Some(dir);
        Ok(server)
    }

    /// Starts a backend on the given store (initialized on first use).
    pub async fn start_with(
        store: StoreLocation,
        state_dir: PathBuf,
        adjust: impl FnOnce(&mut BackendConfig),
    ) -> anyhow::Result<TestServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let agent_listener = TcpListener::bind("127.0.0.1:0").await?;
        let agent_port = agent_listener.local_addr()?.port();
        let dashboard_listener = TcpListener::bind("127.0.0.1:0").await?;
        let dashboard_port = dashboard_listener.local_addr()?.port();
        let mut config = BackendConfig {
            state_dir: state_dir.clone(),
            store,
            api_listen_address: address,
            agent_host: "127.0.0.1".into(),
            agent_port,
            dashboard_host: "127.0.0.1".into(),
            dashboard_port,
            tls: None,
            agent_tls: crate::config::AgentTls::default(),
            queue_url: None,
            queue_stream: crate::config::DEFAULT_QUEUE_STREAM.into(),
            log_level: "warn".into(),
            api_request_limit: 512_000,
            eventd: crate::eventd::EventdSettings::default(),
            local_agent: false,
            access_token_expiry: Duration::from_secs(300),
            refresh_token_expiry: Duration::from_secs(12 * 3600),
            bootstrap_admin: Some(AdminCredentials {
                username: ADMIN_USERNAME.into(),
                password: ADMIN_PASSWORD.into(),
            }),
        };
        adjust(&mut config);
        let (url, dashboard_url) = match config.tls {
            Some(_) => (
                format!("https://localhost:{}", address.port()),
                format!("https://localhost:{dashboard_port}"),
            ),
            None => (
                format!("http://{address}"),
                format!("http://127.0.0.1:{dashboard_port}"),
            ),
        };
        let agent_url = match config.agent_listener_tls() {
            Some(_) => format!("wss://localhost:{agent_port}"),
            None => format!("ws://127.0.0.1:{agent_port}"),
        };
        let listeners = crate::server::Listeners {
            api: listener,
            agent: agent_listener,
            dashboard: Some(dashboard_listener),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(crate::server::run(config, listeners, shutdown.clone()));
        // Ready once the port accepts connections: requests that arrive before serving starts
        // wait in the listen backlog and are answered when it does.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if task.is_finished() {
                return Err(task
                    .await?
                    .err()
                    .unwrap_or_else(|| anyhow::anyhow!("backend exited early")));
            }
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "backend did not start within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(TestServer {
            url,
            agent_url,
            dashboard_url,
            admin_username: ADMIN_USERNAME.into(),
            admin_password: ADMIN_PASSWORD.into(),
            state_dir,
            shutdown,
            task,
            _dir: None,
        })
    }

    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}
