//! `kensa-backend` settings: flags, `KENSA_BACKEND_*` environment variables and an optional
//! YAML config file, in that order of precedence, over built-in defaults. Option names follow
//! Sensu's backend where Sensu has one (`state-dir`, `api-listen-address`, `agent-port`…).
//!
//! Process settings only: monitoring resources (checks, handlers…) live in the store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "kensa-backend",
    version,
    about = "Kensa backend: REST API, agent sessions, scheduling and event processing"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Seed a new store: namespace `default`, the cluster admin, the `agent` user, default roles.
    Init(InitArgs),
    /// Run the backend.
    Start(Box<StartArgs>),
    /// Print the version.
    Version,
}

/// Where the store is: shared by `init` and `start`.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Directory for the embedded store and other state.
    #[arg(long, env = "KENSA_BACKEND_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// `postgres://…` to use PostgreSQL; empty for the embedded SQLite store under state-dir.
    #[arg(long, env = "KENSA_BACKEND_STORE_URL")]
    pub store_url: Option<String>,
    /// A YAML file with any of the options (kebab-case keys); flags and env win over it.
    #[arg(short = 'c', long, env = "KENSA_BACKEND_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    #[arg(long, env = "KENSA_BACKEND_CLUSTER_ADMIN_USERNAME")]
    pub cluster_admin_username: Option<String>,
    #[arg(
        long,
        env = "KENSA_BACKEND_CLUSTER_ADMIN_PASSWORD",
        hide_env_values = true
    )]
    pub cluster_admin_password: Option<String>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Exit 0 instead of failing when the store is already initialized.
    #[arg(long, env = "KENSA_BACKEND_IGNORE_ALREADY_INITIALIZED")]
    pub ignore_already_initialized: bool,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Used to initialize an empty store on first start (as Sensu's container image does).
    #[command(flatten)]
    pub admin: AdminArgs,
    /// REST API address (default `[::]:8080`).
    #[arg(long, env = "KENSA_BACKEND_API_LISTEN_ADDRESS")]
    pub api_listen_address: Option<String>,
    #[arg(long, env = "KENSA_BACKEND_AGENT_HOST")]
    pub agent_host: Option<String>,
    #[arg(long, env = "KENSA_BACKEND_AGENT_PORT")]
    pub agent_port: Option<u16>,
    #[arg(long, env = "KENSA_BACKEND_DASHBOARD_HOST")]
    pub dashboard_host: Option<String>,
    #[arg(long, env = "KENSA_BACKEND_DASHBOARD_PORT")]
    pub dashboard_port: Option<u16>,
    /// PEM certificate (chain) for HTTPS on the API and agent listeners.
    #[arg(long, env = "KENSA_BACKEND_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    #[arg(long, env = "KENSA_BACKEND_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    #[arg(long, env = "KENSA_BACKEND_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// PEM certificate for the agent listener when it differs from `cert-file`.
    #[arg(long, env = "KENSA_BACKEND_AGENT_AUTH_CERT_FILE")]
    pub agent_auth_cert_file: Option<PathBuf>,
    #[arg(long, env = "KENSA_BACKEND_AGENT_AUTH_KEY_FILE")]
    pub agent_auth_key_file: Option<PathBuf>,
    /// PEM CAs for client-certificate (mTLS) agent authentication: an agent presenting a
    /// certificate they signed authenticates as the certificate's common name.
    #[arg(long, env = "KENSA_BACKEND_AGENT_AUTH_TRUSTED_CA_FILE")]
    pub agent_auth_trusted_ca_file: Option<PathBuf>,
    /// Certificate revocation lists (PEM or DER files, as paths or `file://` URLs) checked
    /// against agent certificates; comma-separated or repeated.
    #[arg(long, env = "KENSA_BACKEND_AGENT_AUTH_CRL_URLS", value_delimiter = ',')]
    pub agent_auth_crl_urls: Vec<String>,
    /// `nats://…` for the NATS JetStream queue; empty for the in-process queue.
    #[arg(long, env = "KENSA_BACKEND_QUEUE_URL")]
    pub queue_url: Option<String>,
    /// The JetStream stream of round-robin rounds (default `KENSA_ROUNDS`); every backend of a
    /// cluster must use the same.
    #[arg(long, env = "KENSA_BACKEND_QUEUE_STREAM")]
    pub queue_stream: Option<String>,
    /// error, warn, info, debug or trace.
    #[arg(long, env = "KENSA_BACKEND_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Largest accepted request body in bytes (default 512000).
    #[arg(long, env = "KENSA_BACKEND_API_REQUEST_LIMIT")]
    pub api_request_limit: Option<usize>,
    /// Access token lifetime in seconds (default 300).
    #[arg(long, env = "KENSA_BACKEND_ACCESS_TOKEN_EXPIRY")]
    pub access_token_expiry: Option<u64>,
    /// Refresh token lifetime in seconds (default 43200).
    #[arg(long, env = "KENSA_BACKEND_REFRESH_TOKEN_EXPIRY")]
    pub refresh_token_expiry: Option<u64>,
    /// Also run an agent in this process (subscriptions `local`, `linux`), and add starter
    /// checks when the namespace `default` has none: the one-command evaluation setup.
    #[arg(long, env = "KENSA_BACKEND_LOCAL_AGENT", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub local_agent: Option<bool>,
}

/// The config file: the same options, kebab-case.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    state_dir: Option<PathBuf>,
    store_url: Option<String>,
    cluster_admin_username: Option<String>,
    cluster_admin_password: Option<String>,
    api_listen_address: Option<String>,
    agent_host: Option<String>,
    agent_port: Option<u16>,
    dashboard_host: Option<String>,
    dashboard_port: Option<u16>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    trusted_ca_file: Option<PathBuf>,
    agent_auth_cert_file: Option<PathBuf>,
    agent_auth_key_file: Option<PathBuf>,
    agent_auth_trusted_ca_file: Option<PathBuf>,
    agent_auth_crl_urls: Option<StringList>,
    queue_url: Option<String>,
    queue_stream: Option<String>,
    log_level: Option<String>,
    api_request_limit: Option<usize>,
    access_token_expiry: Option<u64>,
    refresh_token_expiry: Option<u64>,
    local_agent: Option<bool>,
}

/// A list option in the config file: a YAML list or one comma-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringList {
    Many(Vec<String>),
    One(String),
}

impl StringList {
    fn to_vec(&self) -> Vec<String> {
        match self {
            StringList::Many(items) => items.clone(),
            StringList::One(joined) => joined.split(',').map(str::to_owned).collect(),
        }
    }
}

fn read_file_config(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    yaml_serde::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

/// Which store to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

#[derive(Debug, Clone)]
pub struct AdminCredentials {
    pub username: String,
    pub password: String,
}

/// Resolved settings for `start`.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub state_dir: PathBuf,
    pub store: StoreLocation,
    pub api_listen_address: SocketAddr,
    pub agent_host: String,
    pub agent_port: u16,
    pub dashboard_host: String,
    pub dashboard_port: u16,
    pub tls: Option<TlsFiles>,
    /// The agent listener's own certificate and client-certificate authentication.
    pub agent_tls: AgentTls,
    pub queue_url: Option<String>,
    /// The JetStream stream name (ignored by the in-process queue).
    pub queue_stream: String,
    pub log_level: String,
    pub api_request_limit: usize,
    pub access_token_expiry: Duration,
    pub refresh_token_expiry: Duration,
    /// Set when the admin variables are given: `start` initializes an empty store with them.
    pub bootstrap_admin: Option<AdminCredentials>,
    /// Event processing sizing (shards, queues, batch size); defaults suit one node.
    pub eventd: crate::eventd::EventdSettings,
    /// Run an agent in-process and seed starter checks (see `local_agent.rs`).
    pub local_agent: bool,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub trusted_ca_file: Option<PathBuf>,
}

/// The agent listener's TLS beyond `cert-file`/`key-file` (Sensu's `agent-auth-*` options).
#[derive(Debug, Clone, Default)]
pub struct AgentTls {
    /// `agent-auth-cert-file`/`agent-auth-key-file`: the agent listener's certificate when it
    /// is not the API's.
    pub cert: Option<TlsFiles>,
    /// `agent-auth-trusted-ca-file`: when set, agents may authenticate with a certificate
    /// these CAs signed instead of a password.
    pub client_ca_file: Option<PathBuf>,
    /// `agent-auth-crl-urls`, as the local files they name.
    pub crl_files: Vec<PathBuf>,
}

impl BackendConfig {
    /// The certificate the agent listener serves, if it serves TLS.
    pub fn agent_listener_tls(&self) -> Option<&TlsFiles> {
        self.agent_tls.cert.as_ref().or(self.tls.as_ref())
    }
}

/// `agent-auth-crl-urls` entries → files. Revocation lists are read from disk at startup;
/// fetching them over HTTP is not built, and such a URL is refused rather than ignored.
fn crl_files(urls: Vec<String>) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for url in urls.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
        let path = match url.strip_prefix("file://") {
            Some(path) => path,
            None if url.contains("://") => bail!(
                "agent-auth-crl-urls: {url:?}: only local files are read (a path or file:// URL); \
                 download the revocation list and name the file"
            ),
            None => url,
        };
        files.push(PathBuf::from(path));
    }
    Ok(files)
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/kensa";
pub const DEFAULT_QUEUE_STREAM: &str = "KENSA_ROUNDS";

fn resolve_store(args: &StoreArgs, file: &FileConfig) -> (PathBuf, StoreLocation) {
    let state_dir = args
        .state_dir
        .clone()
        .or(file.state_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let url = args
        .store_url
        .clone()
        .or(file.store_url.clone())
        .filter(|u| !u.is_empty());
    let store = match url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            StoreLocation::Postgres(url)
        }
        Some(url) => StoreLocation::Sqlite(PathBuf::from(url.trim_start_matches("sqlite://"))),
        None => StoreLocation::Sqlite(state_dir.join("kensa.db")),
    };
    (state_dir, store)
}

fn resolve_admin(args: &AdminArgs, file: &FileConfig) -> Option<AdminCredentials> {
    let username = args
        .cluster_admin_username
        .clone()
        .or(file.cluster_admin_username.clone())?;
    let password = args
        .cluster_admin_password
        .clone()
        .or(file.cluster_admin_password.clone())?;
    Some(AdminCredentials { username, password })
}

impl InitArgs {
    pub fn resolve(&self) -> anyhow::Result<(StoreLocation, AdminCredentials)> {
        let file = read_file_config(self.store.config_file.as_deref())?;
        let (_, store) = resolve_store(&self.store, &file);
        let Some(admin) = resolve_admin(&self.admin, &file) else {
            bail!("--cluster-admin-username and --cluster-admin-password (or KENSA_BACKEND_CLUSTER_ADMIN_USERNAME/_PASSWORD) are required");
        };
        Ok((store, admin))
    }
}

impl StartArgs {
    pub fn resolve(&self) -> anyhow::Result<BackendConfig> {
        let file = read_file_config(self.store.config_file.as_deref())?;
        let (state_dir, store) = resolve_store(&self.store, &file);
        let api_listen_address = self
            .api_listen_address
            .clone()
            .or(file.api_listen_address.clone())
            .unwrap_or_else(|| "[::]:8080".to_owned());
        let api_listen_address: SocketAddr = api_listen_address.parse().with_context(|| {
            format!("api-listen-address {api_listen_address:?} is not a host:port address")
        })?;
        let tls = self.tls_files(
            "",
            self.cert_file.clone().or(file.cert_file.clone()),
            self.key_file.clone().or(file.key_file.clone()),
            &file,
        )?;
        let agent_tls = self.resolve_agent_tls(&file, tls.as_ref())?;
        let log_level = self
            .log_level
            .clone()
            .or(file.log_level.clone())
            .unwrap_or_else(|| "info".to_owned());
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            bail!("log-level {log_level:?} must be one of error, warn, info, debug, trace");
        }
        Ok(BackendConfig {
            state_dir,
            store,
            api_listen_address,
            agent_host: self
                .agent_host
                .clone()
                .or(file.agent_host.clone())
                .unwrap_or_else(|| "[::]".to_owned()),
            agent_port: self.agent_port.or(file.agent_port).unwrap_or(8081),
            dashboard_host: self
                .dashboard_host
                .clone()
                .or(file.dashboard_host.clone())
                .unwrap_or_else(|| "[::]".to_owned()),
            dashboard_port: self.dashboard_port.or(file.dashboard_port).unwrap_or(3000),
            tls,
            agent_tls,
            queue_url: self
                .queue_url
                .clone()
                .or(file.queue_url.clone())
                .filter(|u| !u.is_empty()),
            queue_stream: self
                .queue_stream
                .clone()
                .or(file.queue_stream.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_QUEUE_STREAM.to_owned()),
            log_level,
            api_request_limit: self
                .api_request_limit
                .or(file.api_request_limit)
                .unwrap_or(512_000),
            eventd: crate::eventd::EventdSettings::default(),
            local_agent: self.local_agent.or(file.local_agent).unwrap_or(false),
            access_token_expiry: Duration::from_secs(
                self.access_token_expiry
                    .or(file.access_token_expiry)
                    .unwrap_or(300),
            ),
            refresh_token_expiry: Duration::from_secs(
                self.refresh_token_expiry
                    .or(file.refresh_token_expiry)
                    .unwrap_or(12 * 3600),
            ),
            bootstrap_admin: resolve_admin(&self.admin, &file),
        })
    }
}

impl StartArgs {
    /// A certificate and key given together (or neither); `option` prefixes the option names.
    fn tls_files(
        &self,
        option: &str,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
        file: &FileConfig,
    ) -> anyhow::Result<Option<TlsFiles>> {
        Ok(match (cert_file, key_file) {
            (Some(cert_file), Some(key_file)) => Some(TlsFiles {
                cert_file,
                key_file,
                trusted_ca_file: self
                    .trusted_ca_file
                    .clone()
                    .or(file.trusted_ca_file.clone()),
            }),
            (None, None) => None,
            _ => bail!("{option}cert-file and {option}key-file must be given together"),
        })
    }

    fn resolve_agent_tls(
        &self,
        file: &FileConfig,
        api_tls: Option<&TlsFiles>,
    ) -> anyhow::Result<AgentTls> {
        let cert = self.tls_files(
            "agent-auth-",
            self.agent_auth_cert_file
                .clone()
                .or(file.agent_auth_cert_file.clone()),
            self.agent_auth_key_file
                .clone()
                .or(file.agent_auth_key_file.clone()),
            file,
        )?;
        let client_ca_file = self
            .agent_auth_trusted_ca_file
            .clone()
            .or(file.agent_auth_trusted_ca_file.clone());
        let crl_urls = if self.agent_auth_crl_urls.is_empty() {
            file.agent_auth_crl_urls
                .as_ref()
                .map(StringList::to_vec)
                .unwrap_or_default()
        } else {
            self.agent_auth_crl_urls.clone()
        };
        let crl_files = crl_files(crl_urls)?;
        if client_ca_file.is_some() && cert.is_none() && api_tls.is_none() {
            bail!(
                "agent-auth-trusted-ca-file needs TLS on the agent listener: give cert-file and \
                 key-file (or agent-auth-cert-file and agent-auth-key-file)"
            );
        }
        if !crl_files.is_empty() && client_ca_file.is_none() {
            bail!("agent-auth-crl-urls needs agent-auth-trusted-ca-file");
        }
        Ok(AgentTls {
            cert,
            client_ca_file,
            crl_files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> StartArgs {
        match Cli::parse_from(args).command {
            Command::Start(start) => *start,
            other => panic!("expected start, got {other:?}"),
        }
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backend.yml");
        std::fs::write(
            &file,
            "api-listen-address: 127.0.0.1:9000\nagent-port: 9001\nlog-level: debug\n",
        )
        .unwrap();
        let file_arg = file.to_str().unwrap();

        let from_file = parse(&["kensa-backend", "start", "-c", file_arg])
            .resolve()
            .unwrap();
        assert_eq!(from_file.api_listen_address.to_string(), "127.0.0.1:9000");
        assert_eq!(from_file.agent_port, 9001);
        assert_eq!(from_file.log_level, "debug");
        assert_eq!(from_file.api_request_limit, 512_000);

        let flagged = parse(&[
            "kensa-backend",
            "start",
            "-c",
            file_arg,
            "--agent-port",
            "7000",
        ])
        .resolve()
        .unwrap();
        assert_eq!(flagged.agent_port, 7000);
    }

    #[test]
    fn bad_settings_are_named() {
        let err = parse(&["kensa-backend", "start", "--api-listen-address", "nonsense"])
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("api-listen-address"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backend.yml");
        std::fs::write(&file, "agent-prot: 1\n").unwrap();
        let err = parse(&["kensa-backend", "start", "-c", file.to_str().unwrap()])
            .resolve()
            .unwrap_err();
        assert!(format!("{err:#}").contains("agent-prot"), "{err:#}");
    }

    #[test]
    fn agent_certificate_authentication_is_checked_before_start() {
        let tls = [
            "--cert-file",
            "/etc/kensa/cert.pem",
            "--key-file",
            "/etc/kensa/key.pem",
        ];
        // (with cert-file/key-file, the other flags, how the error starts)
        let cases: &[(bool, &[&str], &str)] = &[
            (
                false,
                &["--agent-auth-trusted-ca-file", "/etc/kensa/agents-ca.pem"],
                "agent-auth-trusted-ca-file needs TLS on the agent listener",
            ),
            (
                true,
                &["--agent-auth-cert-file", "/etc/kensa/agent.pem"],
                "agent-auth-cert-file and agent-auth-key-file must be given together",
            ),
            (
                true,
                &[
                    "--agent-auth-trusted-ca-file",
                    "/ca.pem",
                    "--agent-auth-crl-urls",
                    "http://ca.example.com/agents.crl",
                ],
                "agent-auth-crl-urls: \"http://ca.example.com/agents.crl\": only local files",
            ),
            (
                true,
                &["--agent-auth-crl-urls", "/etc/kensa/agents.crl"],
                "agent-auth-crl-urls needs agent-auth-trusted-ca-file",
            ),
        ];
        for (with_tls, args, expected) in cases {
            let mut argv = vec!["kensa-backend", "start"];
            if *with_tls {
                argv.extend_from_slice(&tls);
            }
            argv.extend_from_slice(args);
            let err = parse(&argv).resolve().unwrap_err().to_string();
            assert!(err.starts_with(expected), "{args:?}: {err}");
        }

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backend.yml");
        std::fs::write(
            &file,
            "agent-auth-cert-file: /etc/kensa/agent.pem\n\
             agent-auth-key-file: /etc/kensa/agent.key\n\
             agent-auth-trusted-ca-file: /etc/kensa/agents-ca.pem\n\
             agent-auth-crl-urls: file:///etc/kensa/a.crl,/etc/kensa/b.crl\n",
        )
        .unwrap();
        let config = parse(&["kensa-backend", "start", "-c", file.to_str().unwrap()])
            .resolve()
            .unwrap();
        assert!(config.tls.is_none(), "the API stays plain");
        assert_eq!(
            config.agent_listener_tls().map(|t| t.cert_file.clone()),
            Some(PathBuf::from("/etc/kensa/agent.pem"))
        );
        assert_eq!(
            config.agent_tls.crl_files,
            vec![
                PathBuf::from("/etc/kensa/a.crl"),
                PathBuf::from("/etc/kensa/b.crl")
            ]
        );
    }
}
