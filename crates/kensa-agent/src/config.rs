//! `kensa-agent` settings: flags, `KENSA_AGENT_*` environment variables and an optional YAML
//! config file (`-c`), in that order of precedence, over built-in defaults. Option names are
//! Sensu's agent options (reference §2.12) so an existing `agent.yml` mostly carries over; the
//! ones Kensa does not implement are refused by name rather than silently ignored.
//!
//! [`StartArgs::resolve`] is pure (it reads the config file and the `allow-list` file, nothing
//! else): it turns the raw options into an [`AgentConfig`] and every validation error names
//! the option at fault (and, for the allow-list, the file, entry and field).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use kensa_types::resources::entity::DEFAULT_REDACT;
use serde::Deserialize;

use crate::allow_list::AllowList;

#[derive(Debug, Parser)]
#[command(
    name = "kensa-agent",
    version,
    about = "Kensa agent: runs checks for its subscriptions and reports to a Kensa backend"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent.
    Start(Box<StartArgs>),
    /// Print the version.
    Version,
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An option has a value the agent cannot use; `option` is its kebab-case name.
    #[error("{option}: {message}")]
    Invalid {
        option: &'static str,
        message: String,
    },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
}

fn invalid(option: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        message: message.into(),
    }
}

/// Raw `start` options: `None` (or empty) means "not given here". Boolean options take an
/// optional value (`--deregister`, `--deregister=false`) so that a flag can override a file's
/// `true`.
#[derive(Debug, Clone, Default, Args)]
pub struct StartArgs {
    /// A YAML file with any of the options (kebab-case keys); flags and env win over it.
    #[arg(short = 'c', long, env = "KENSA_AGENT_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// The entity name (default: the hostname).
    #[arg(long, env = "KENSA_AGENT_NAME")]
    pub name: Option<String>,
    /// Backend WebSocket URLs, `ws://` or `wss://` (port 8081 when none is given).
    #[arg(long, env = "KENSA_AGENT_BACKEND_URL", value_delimiter = ',')]
    pub backend_url: Vec<String>,
    #[arg(long, env = "KENSA_AGENT_NAMESPACE")]
    pub namespace: Option<String>,
    #[arg(long, env = "KENSA_AGENT_SUBSCRIPTIONS", value_delimiter = ',')]
    pub subscriptions: Vec<String>,
    /// Entity labels, `key=value` (repeat the flag or separate with commas).
    #[arg(long, env = "KENSA_AGENT_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Entity annotations, `key=value`.
    #[arg(long, env = "KENSA_AGENT_ANNOTATIONS", value_delimiter = ',')]
    pub annotations: Vec<String>,
    #[arg(long, env = "KENSA_AGENT_USER")]
    pub user: Option<String>,
    #[arg(long, env = "KENSA_AGENT_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Where the outbox lives (default /var/cache/kensa-agent).
    #[arg(long, env = "KENSA_AGENT_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Seconds between keepalives (default 20).
    #[arg(long, env = "KENSA_AGENT_KEEPALIVE_INTERVAL")]
    pub keepalive_interval: Option<u32>,
    /// Seconds without a keepalive before a warning (default 120).
    #[arg(
        long,
        visible_alias = "keepalive-timeout",
        env = "KENSA_AGENT_KEEPALIVE_WARNING_TIMEOUT"
    )]
    pub keepalive_warning_timeout: Option<u32>,
    /// Seconds without a keepalive before a critical alert (default 0: none).
    #[arg(long, env = "KENSA_AGENT_KEEPALIVE_CRITICAL_TIMEOUT")]
    pub keepalive_critical_timeout: Option<u32>,
    #[arg(long, env = "KENSA_AGENT_KEEPALIVE_HANDLERS", value_delimiter = ',')]
    pub keepalive_handlers: Vec<String>,
    /// Delete the entity when its keepalive fails.
    #[arg(long, env = "KENSA_AGENT_DEREGISTER", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub deregister: Option<bool>,
    #[arg(long, env = "KENSA_AGENT_DEREGISTRATION_HANDLER")]
    pub deregistration_handler: Option<String>,
    /// Label and annotation keys the backend redacts (default: Sensu's list).
    #[arg(long, env = "KENSA_AGENT_REDACT", value_delimiter = ',')]
    pub redact: Vec<String>,
    #[arg(long, env = "KENSA_AGENT_API_HOST")]
    pub api_host: Option<String>,
    #[arg(long, env = "KENSA_AGENT_API_PORT")]
    pub api_port: Option<u16>,
    #[arg(long, env = "KENSA_AGENT_DISABLE_API", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub disable_api: Option<bool>,
    #[arg(long, env = "KENSA_AGENT_SOCKET_HOST")]
    pub socket_host: Option<String>,
    #[arg(long, env = "KENSA_AGENT_SOCKET_PORT")]
    pub socket_port: Option<u16>,
    #[arg(long, env = "KENSA_AGENT_DISABLE_SOCKETS", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub disable_sockets: Option<bool>,
    #[arg(long, env = "KENSA_AGENT_STATSD_METRICS_HOST")]
    pub statsd_metrics_host: Option<String>,
    #[arg(long, env = "KENSA_AGENT_STATSD_METRICS_PORT")]
    pub statsd_metrics_port: Option<u16>,
    #[arg(long, env = "KENSA_AGENT_STATSD_DISABLE", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub statsd_disable: Option<bool>,
    /// Seconds between StatsD flushes (default 10; 0 means 10).
    #[arg(long, env = "KENSA_AGENT_STATSD_FLUSH_INTERVAL")]
    pub statsd_flush_interval: Option<u32>,
    #[arg(long, env = "KENSA_AGENT_STATSD_EVENT_HANDLERS", value_delimiter = ',')]
    pub statsd_event_handlers: Vec<String>,
    /// Refuse checks and hooks that need runtime assets (their result says so).
    #[arg(long, env = "KENSA_AGENT_DISABLE_ASSETS", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub disable_assets: Option<bool>,
    /// Asset downloads per second (default 1.39, about 5000 an hour).
    #[arg(long, env = "KENSA_AGENT_ASSETS_RATE_LIMIT")]
    pub assets_rate_limit: Option<f64>,
    /// Asset downloads allowed in a burst (default 100).
    #[arg(long, env = "KENSA_AGENT_ASSETS_BURST_LIMIT")]
    pub assets_burst_limit: Option<u32>,
    /// A YAML or JSON file of the only commands checks and hooks may run.
    #[arg(long, env = "KENSA_AGENT_ALLOW_LIST")]
    pub allow_list: Option<PathBuf>,
    /// PEM file of the CAs trusted for `wss://` backends.
    #[arg(long, env = "KENSA_AGENT_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// PEM client certificate for `wss://` backends (mTLS): the agent authenticates with it
    /// and sends no password.
    #[arg(long, env = "KENSA_AGENT_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert-file`.
    #[arg(long, env = "KENSA_AGENT_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Accept any backend certificate (testing only).
    #[arg(long, env = "KENSA_AGENT_INSECURE_SKIP_TLS_VERIFY", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub insecure_skip_tls_verify: Option<bool>,
    /// First reconnect wait, e.g. `1s`, `500ms` (default 1s).
    #[arg(long, env = "KENSA_AGENT_RETRY_MIN")]
    pub retry_min: Option<String>,
    /// Longest reconnect wait (default 120s).
    #[arg(long, env = "KENSA_AGENT_RETRY_MAX")]
    pub retry_max: Option<String>,
    /// Growth of the reconnect wait per failure (default 2.0).
    #[arg(long, env = "KENSA_AGENT_RETRY_MULTIPLIER")]
    pub retry_multiplier: Option<f64>,
    /// Seconds to wait for the WebSocket handshake (default 15).
    #[arg(long, env = "KENSA_AGENT_BACKEND_HANDSHAKE_TIMEOUT")]
    pub backend_handshake_timeout: Option<u32>,
    /// Seconds between WebSocket pings (default 30).
    #[arg(long, env = "KENSA_AGENT_BACKEND_HEARTBEAT_INTERVAL")]
    pub backend_heartbeat_interval: Option<u32>,
    /// Seconds without any traffic from the backend before reconnecting (default 45).
    #[arg(long, env = "KENSA_AGENT_BACKEND_HEARTBEAT_TIMEOUT")]
    pub backend_heartbeat_timeout: Option<u32>,
    /// End a session after at most this long (a random time between half of it and all of it)
    /// and reconnect, so agents spread again over backends that came back, e.g. `1h`
    /// (default 0: never).
    #[arg(long, env = "KENSA_AGENT_MAX_SESSION_LENGTH")]
    pub max_session_length: Option<String>,
    /// Checks run at once; more wait in a bounded queue (default 32).
    #[arg(long, env = "KENSA_AGENT_MAX_CONCURRENT_CHECKS")]
    pub max_concurrent_checks: Option<usize>,
    /// error, warn, info, debug or trace (`KENSA_LOG` overrides with a full filter).
    #[arg(long, env = "KENSA_AGENT_LOG_LEVEL")]
    pub log_level: Option<String>,
}

/// A YAML list that may also be written as one comma-separated string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ListValue {
    One(String),
    Many(Vec<String>),
}

impl ListValue {
    fn into_vec(self) -> Vec<String> {
        match self {
            ListValue::One(text) => vec![text],
            ListValue::Many(items) => items,
        }
    }
}

/// A duration in the config file: seconds as a number, or text such as `1s` / `500ms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Seconds(f64),
    Text(String),
}

/// The config file: the same options, kebab-case; labels and annotations are maps.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    #[serde(alias = "id")]
    name: Option<String>,
    backend_url: Option<ListValue>,
    namespace: Option<String>,
    subscriptions: Option<ListValue>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    user: Option<String>,
    password: Option<String>,
    cache_dir: Option<PathBuf>,
    keepalive_interval: Option<u32>,
    #[serde(alias = "keepalive-timeout")]
    keepalive_warning_timeout: Option<u32>,
    keepalive_critical_timeout: Option<u32>,
    keepalive_handlers: Option<ListValue>,
    deregister: Option<bool>,
    deregistration_handler: Option<String>,
    redact: Option<ListValue>,
    api_host: Option<String>,
    api_port: Option<u16>,
    disable_api: Option<bool>,
    socket_host: Option<String>,
    socket_port: Option<u16>,
    disable_sockets: Option<bool>,
    statsd_metrics_host: Option<String>,
    statsd_metrics_port: Option<u16>,
    statsd_disable: Option<bool>,
    statsd_flush_interval: Option<u32>,
    statsd_event_handlers: Option<ListValue>,
    disable_assets: Option<bool>,
    assets_rate_limit: Option<f64>,
    assets_burst_limit: Option<u32>,
    allow_list: Option<PathBuf>,
    trusted_ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    insecure_skip_tls_verify: Option<bool>,
    retry_min: Option<DurationValue>,
    retry_max: Option<DurationValue>,
    retry_multiplier: Option<f64>,
    backend_handshake_timeout: Option<u32>,
    backend_heartbeat_interval: Option<u32>,
    backend_heartbeat_timeout: Option<u32>,
    max_session_length: Option<DurationValue>,
    max_concurrent_checks: Option<usize>,
    log_level: Option<String>,
}

fn read_file_config(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let file_error = |message: String| ConfigError::File {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|err| file_error(err.to_string()))?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    yaml_serde::from_str(&text).map_err(|err| file_error(err.to_string()))
}

/// Where the local inputs listen; `None` when disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddress {
    pub host: IpAddr,
    pub port: u16,
}

/// The reconnect backoff (reference §1.8).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub min: Duration,
    pub max: Duration,
    pub multiplier: f64,
}

/// Resolved settings for `start`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    /// Normalized: scheme `ws`/`wss`, explicit port.
    pub backend_urls: Vec<String>,
    pub namespace: String,
    pub subscriptions: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub user: String,
    pub password: String,
    pub cache_dir: PathBuf,
    pub keepalive_interval: u32,
    pub keepalive_warning_timeout: u32,
    /// 0: no critical alert.
    pub keepalive_critical_timeout: u32,
    pub keepalive_handlers: Vec<String>,
    pub deregister: bool,
    pub deregistration_handler: String,
    pub redact: Vec<String>,
    /// `None`: the local HTTP API is disabled.
    pub api: Option<ListenAddress>,
    /// `None`: the TCP/UDP sockets are disabled.
    pub socket: Option<ListenAddress>,
    /// `None`: StatsD is disabled.
    pub statsd: Option<ListenAddress>,
    pub statsd_flush_interval: Duration,
    pub statsd_event_handlers: Vec<String>,
    /// `disable-assets`: checks and hooks needing assets fail instead of running.
    pub disable_assets: bool,
    /// `assets-rate-limit`: asset downloads per second (> 0).
    pub assets_rate_limit: f64,
    /// `assets-burst-limit` (≥ 1).
    pub assets_burst_limit: u32,
    /// `allow-list`, loaded and validated; `None`: every command may run.
    pub allow_list: Option<Arc<AllowList>>,
    pub trusted_ca_file: Option<PathBuf>,
    /// `cert-file` and `key-file`: a client certificate replaces the password.
    pub client_certificate: Option<ClientCertificate>,
    pub insecure_skip_tls_verify: bool,
    pub retry: RetryPolicy,
    pub handshake_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// `max-session-length`: `None` keeps a session for as long as it works.
    pub max_session_length: Option<Duration>,
    pub max_concurrent_checks: usize,
    pub log_level: String,
}

pub const DEFAULT_CACHE_DIR: &str = "/var/cache/kensa-agent";
pub const DEFAULT_BACKEND_URL: &str = "ws://127.0.0.1:8081";
pub const DEFAULT_MAX_CONCURRENT_CHECKS: usize = 32;
/// Sensu's `assets-rate-limit` default: GitHub's 5000 requests an hour.
pub const DEFAULT_ASSETS_RATE_LIMIT: f64 = 1.39;
pub const DEFAULT_ASSETS_BURST_LIMIT: u32 = 100;

/// Splits list values further on commas and whitespace (`KENSA_AGENT_SUBSCRIPTIONS="a b"` and
/// a YAML `subscriptions: a,b` both work, as with Sensu) and drops empty items.
fn split_list(items: Vec<String>) -> Vec<String> {
    items
        .iter()
        .flat_map(|item| item.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Flags (when any were given) win over the file, the file over `default`.
fn list(flags: &[String], file: Option<&ListValue>, default: &[&str]) -> Vec<String> {
    if !flags.is_empty() {
        return split_list(flags.to_vec());
    }
    match file {
        Some(value) => split_list(value.clone().into_vec()),
        None => default.iter().map(|item| (*item).to_owned()).collect(),
    }
}

fn key_values(
    option: &'static str,
    flags: &[String],
    file: Option<&BTreeMap<String, String>>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    if flags.is_empty() {
        return Ok(file.cloned().unwrap_or_default());
    }
    flags
        .iter()
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => Err(invalid(option, format!("{pair:?} is not key=value"))),
        })
        .collect()
}

/// Parses `1s`, `500ms`, `2m`, `1h`, `1m30s`, `1.5s`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return seconds_to_duration(seconds);
    }
    let mut total = 0.0;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty duration".to_owned());
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{text:?} has a number without a unit"))?;
        let (number, after) = rest.split_at(number_end);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration such as 1s, 500ms or 2m"))?;
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "{text:?} has an unknown unit {unit:?} (ms, s, m, h)"
                ))
            }
        };
        total += value * scale;
        rest = next;
    }
    seconds_to_duration(total)
}

fn seconds_to_duration(seconds: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{seconds} is not a valid duration"))
}

fn duration(
    option: &'static str,
    flag: Option<&str>,
    file: Option<&DurationValue>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let parsed = match (flag, file) {
        (Some(text), _) => parse_duration(text),
        (None, Some(DurationValue::Text(text))) => parse_duration(text),
        (None, Some(DurationValue::Seconds(seconds))) => seconds_to_duration(*seconds),
        (None, None) => return Ok(default),
    };
    parsed.map_err(|message| invalid(option, message))
}

/// `cert-file` and `key-file`: the agent's client certificate (mTLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl ClientCertificate {
    /// Reads the certificate chain and its private key; errors name the option at fault.
    pub fn load(
        &self,
    ) -> Result<
        (
            Vec<rustls::pki_types::CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
        ConfigError,
    > {
        let read = |option: &'static str, path: &Path| {
            std::fs::read(path)
                .map_err(|err| invalid(option, format!("reading {}: {err}", path.display())))
        };
        let cert_pem = read("cert-file", &self.cert_file)?;
        let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| {
                invalid(
                    "cert-file",
                    format!("{} is not PEM: {err}", self.cert_file.display()),
                )
            })?;
        if certs.is_empty() {
            return Err(invalid(
                "cert-file",
                format!("{} holds no certificate", self.cert_file.display()),
            ));
        }
        let key_pem = read("key-file", &self.key_file)?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|err| {
                invalid(
                    "key-file",
                    format!("{} is not PEM: {err}", self.key_file.display()),
                )
            })?
            .ok_or_else(|| {
                invalid(
                    "key-file",
                    format!("{} holds no private key", self.key_file.display()),
                )
            })?;
        Ok((certs, key))
    }
}

/// `ws://host` → `ws://host:8081`; refuses other schemes.
fn normalize_backend_url(url: &str) -> Result<String, ConfigError> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        invalid(
            "backend-url",
            format!("{url:?} must start with ws:// or wss://"),
        )
    })?;
    if scheme != "ws" && scheme != "wss" {
        return Err(invalid(
            "backend-url",
            format!("{url:?} must use the ws or wss scheme"),
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(invalid("backend-url", format!("{url:?} has no host")));
    }
    // `[::1]` has colons of its own: only a colon after the closing bracket starts a port.
    let host_end = authority.rfind(']').map_or(0, |bracket| bracket + 1);
    let has_port = authority[host_end..].contains(':');
    let authority = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:8081")
    };
    Ok(format!("{scheme}://{authority}{path}"))
}

fn listen_address(
    host_option: &'static str,
    host: String,
    port: u16,
    disabled: bool,
) -> Result<Option<ListenAddress>, ConfigError> {
    if disabled {
        return Ok(None);
    }
    let host = match host.as_str() {
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        other => other
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| invalid(host_option, format!("{host:?} is not an IP address")))?,
    };
    Ok(Some(ListenAddress { host, port }))
}

/// The host name, or a random UUID when it cannot be read (Sensu's default entity name).
pub fn default_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

impl StartArgs {
    /// Resolves flags/env over the config file over defaults, and validates the result.
    pub fn resolve(&self) -> Result<AgentConfig, ConfigError> {
        let file = read_file_config(self.config_file.as_deref())?;
        macro_rules! pick {
            ($field:ident, $default:expr) => {
                self.$field
                    .clone()
                    .or(file.$field.clone())
                    .unwrap_or_else(|| $default)
            };
        }

        let name = pick!(name, default_name());
        if name.is_empty() || !kensa_types::meta::NAME.is_match(&name) {
            return Err(invalid(
                "name",
                format!("{name:?} cannot contain spaces or special characters"),
            ));
        }
        let backend_urls = list(
            &self.backend_url,
            file.backend_url.as_ref(),
            &[DEFAULT_BACKEND_URL],
        )
        .iter()
        .map(|url| normalize_backend_url(url))
        .collect::<Result<Vec<_>, _>>()?;
        if backend_urls.is_empty() {
            return Err(invalid(
                "backend-url",
                "at least one backend URL is required",
            ));
        }

        let keepalive_interval = pick!(keepalive_interval, 20);
        if keepalive_interval == 0 {
            return Err(invalid("keepalive-interval", "must be greater than 0"));
        }
        let keepalive_warning_timeout = pick!(keepalive_warning_timeout, 120);
        if keepalive_warning_timeout < 5 {
            return Err(invalid("keepalive-warning-timeout", "must be at least 5"));
        }
        if keepalive_warning_timeout <= keepalive_interval {
            return Err(invalid(
                "keepalive-warning-timeout",
                format!("must be greater than keepalive-interval ({keepalive_interval})"),
            ));
        }
        let keepalive_critical_timeout = pick!(keepalive_critical_timeout, 0);
        if keepalive_critical_timeout != 0 {
            if keepalive_critical_timeout < 5 {
                return Err(invalid(
                    "keepalive-critical-timeout",
                    "must be 0 (disabled) or at least 5",
                ));
            }
            if keepalive_critical_timeout <= keepalive_interval {
                return Err(invalid(
                    "keepalive-critical-timeout",
                    format!("must be greater than keepalive-interval ({keepalive_interval})"),
                ));
            }
        }

        let retry = RetryPolicy {
            min: duration(
                "retry-min",
                self.retry_min.as_deref(),
                file.retry_min.as_ref(),
                Duration::from_secs(1),
            )?,
            max: duration(
                "retry-max",
                self.retry_max.as_deref(),
                file.retry_max.as_ref(),
                Duration::from_secs(120),
            )?,
            multiplier: pick!(retry_multiplier, 2.0),
        };
        if retry.min.is_zero() {
            return Err(invalid("retry-min", "must be greater than 0"));
        }
        if retry.max < retry.min {
            return Err(invalid("retry-max", "must not be less than retry-min"));
        }
        if !(retry.multiplier.is_finite() && retry.multiplier >= 1.0) {
            return Err(invalid("retry-multiplier", "must be at least 1.0"));
        }

        let max_session_length = duration(
            "max-session-length",
            self.max_session_length.as_deref(),
            file.max_session_length.as_ref(),
            Duration::ZERO,
        )?;
        let max_session_length = (!max_session_length.is_zero()).then_some(max_session_length);

        let heartbeat_interval = pick!(backend_heartbeat_interval, 30);
        let heartbeat_timeout = pick!(backend_heartbeat_timeout, 45);
        if heartbeat_interval == 0 {
            return Err(invalid(
                "backend-heartbeat-interval",
                "must be greater than 0",
            ));
        }
        if heartbeat_timeout <= heartbeat_interval {
            return Err(invalid(
                "backend-heartbeat-timeout",
                format!("must be greater than backend-heartbeat-interval ({heartbeat_interval})"),
            ));
        }
        let handshake_timeout = pick!(backend_handshake_timeout, 15);
        if handshake_timeout == 0 {
            return Err(invalid(
                "backend-handshake-timeout",
                "must be greater than 0",
            ));
        }

        let max_concurrent_checks = pick!(max_concurrent_checks, DEFAULT_MAX_CONCURRENT_CHECKS);
        if max_concurrent_checks == 0 {
            return Err(invalid("max-concurrent-checks", "must be greater than 0"));
        }
        let log_level = pick!(log_level, "info".to_owned());
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            return Err(invalid(
                "log-level",
                format!("{log_level:?} must be one of error, warn, info, debug, trace"),
            ));
        }
        let insecure_skip_tls_verify = pick!(insecure_skip_tls_verify, false);
        let trusted_ca_file = self
            .trusted_ca_file
            .clone()
            .or(file.trusted_ca_file.clone());
        if let Some(path) = &trusted_ca_file {
            if !path.is_file() {
                return Err(invalid(
                    "trusted-ca-file",
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        let client_certificate = match (
            self.cert_file.clone().or(file.cert_file.clone()),
            self.key_file.clone().or(file.key_file.clone()),
        ) {
            (None, None) => None,
            (Some(_), None) => return Err(invalid("key-file", "cert-file needs its key-file")),
            (None, Some(_)) => return Err(invalid("cert-file", "key-file needs its cert-file")),
            (Some(cert_file), Some(key_file)) => {
                let certificate = ClientCertificate {
                    cert_file,
                    key_file,
                };
                certificate.load()?;
                if !backend_urls.iter().any(|url| url.starts_with("wss://")) {
                    return Err(invalid(
                        "cert-file",
                        "a client certificate is only presented to wss:// backends; \
                         no backend-url is wss://",
                    ));
                }
                Some(certificate)
            }
        };
        let assets_rate_limit = pick!(assets_rate_limit, DEFAULT_ASSETS_RATE_LIMIT);
        if !(assets_rate_limit.is_finite() && assets_rate_limit > 0.0) {
            return Err(invalid("assets-rate-limit", "must be greater than 0"));
        }
        let assets_burst_limit = pick!(assets_burst_limit, DEFAULT_ASSETS_BURST_LIMIT);
        if assets_burst_limit == 0 {
            return Err(invalid("assets-burst-limit", "must be at least 1"));
        }
        let allow_list = match self.allow_list.clone().or(file.allow_list.clone()) {
            None => None,
            Some(path) => Some(Arc::new(
                AllowList::load(&path).map_err(|err| invalid("allow-list", err.to_string()))?,
            )),
        };
        let statsd_flush_interval = match pick!(statsd_flush_interval, 10) {
            0 => 10,
            seconds => seconds,
        };

        Ok(AgentConfig {
            name,
            backend_urls,
            namespace: pick!(namespace, "default".to_owned()),
            subscriptions: list(&self.subscriptions, file.subscriptions.as_ref(), &[]),
            labels: key_values("labels", &self.labels, file.labels.as_ref())?,
            annotations: key_values("annotations", &self.annotations, file.annotations.as_ref())?,
            user: pick!(user, "agent".to_owned()),
            password: pick!(password, "P@ssw0rd!".to_owned()),
            cache_dir: pick!(cache_dir, PathBuf::from(DEFAULT_CACHE_DIR)),
            keepalive_interval,
            keepalive_warning_timeout,
            keepalive_critical_timeout,
            keepalive_handlers: list(
                &self.keepalive_handlers,
                file.keepalive_handlers.as_ref(),
                &[],
            ),
            deregister: pick!(deregister, false),
            deregistration_handler: pick!(deregistration_handler, String::new()),
            redact: list(&self.redact, file.redact.as_ref(), &DEFAULT_REDACT),
            api: listen_address(
                "api-host",
                pick!(api_host, "127.0.0.1".to_owned()),
                pick!(api_port, 3031),
                pick!(disable_api, false),
            )?,
            socket: listen_address(
                "socket-host",
                pick!(socket_host, "127.0.0.1".to_owned()),
                pick!(socket_port, 3030),
                pick!(disable_sockets, false),
            )?,
            statsd: listen_address(
                "statsd-metrics-host",
                pick!(statsd_metrics_host, "127.0.0.1".to_owned()),
                pick!(statsd_metrics_port, 8125),
                pick!(statsd_disable, false),
            )?,
            statsd_flush_interval: Duration::from_secs(statsd_flush_interval.into()),
            statsd_event_handlers: list(
                &self.statsd_event_handlers,
                file.statsd_event_handlers.as_ref(),
                &[],
            ),
            disable_assets: pick!(disable_assets, false),
            assets_rate_limit,
            assets_burst_limit,
            allow_list,
            trusted_ca_file,
            client_certificate,
            insecure_skip_tls_verify,
            retry,
            handshake_timeout: Duration::from_secs(handshake_timeout.into()),
            heartbeat_interval: Duration::from_secs(heartbeat_interval.into()),
            heartbeat_timeout: Duration::from_secs(heartbeat_timeout.into()),
            max_session_length,
            max_concurrent_checks,
            log_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> StartArgs {
        let mut argv = vec!["kensa-agent", "start"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Start(start) => *start,
            other => panic!("expected start, got {other:?}"),
        }
    }

    fn write_file(dir: &tempfile::TempDir, text: &str) -> String {
        let path = dir.path().join("agent.yml");
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    #[test]
    fn defaults_follow_sensu() {
        let config = StartArgs::default().resolve().unwrap();
        assert_eq!(config.backend_urls, vec!["ws://127.0.0.1:8081"]);
        assert_eq!(config.namespace, "default");
        assert_eq!(
            (config.user.as_str(), config.password.as_str()),
            ("agent", "P@ssw0rd!")
        );
        assert_eq!(config.cache_dir, PathBuf::from("/var/cache/kensa-agent"));
        assert_eq!(
            (
                config.keepalive_interval,
                config.keepalive_warning_timeout,
                config.keepalive_critical_timeout
            ),
            (20, 120, 0)
        );
        assert_eq!(config.redact, DEFAULT_REDACT.map(String::from).to_vec());
        assert_eq!(
            config.api,
            Some(ListenAddress {
                host: IpAddr::from([127, 0, 0, 1]),
                port: 3031
            })
        );
        assert_eq!(config.socket.map(|s| s.port), Some(3030));
        assert_eq!(config.statsd.map(|s| s.port), Some(8125));
        assert_eq!(
            config.retry,
            RetryPolicy {
                min: Duration::from_secs(1),
                max: Duration::from_secs(120),
                multiplier: 2.0
            }
        );
        assert_eq!(config.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(config.heartbeat_timeout, Duration::from_secs(45));
        assert_eq!(config.max_session_length, None, "sessions last by default");
        assert_eq!(config.statsd_flush_interval, Duration::from_secs(10));
        assert!(!config.name.is_empty());
        assert!(!config.disable_assets);
        assert_eq!(
            (config.assets_rate_limit, config.assets_burst_limit),
            (1.39, 100)
        );
        assert!(config.allow_list.is_none());
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(
            &dir,
            "name: from-file\nbackend-url: wss://b1.example.com\nsubscriptions: [linux, web]\n\
             labels: {region: eu, team: ops}\ndisable-api: true\nderegister: true\n\
             retry-min: 500ms\nretry-max: 30\nkeepalive-timeout: 60\n",
        );
        let from_file = parse(&["-c", &file]).resolve().unwrap();
        assert_eq!(from_file.name, "from-file");
        assert_eq!(from_file.backend_urls, vec!["wss://b1.example.com:8081"]);
        assert_eq!(from_file.subscriptions, vec!["linux", "web"]);
        assert_eq!(
            from_file.labels.get("team").map(String::as_str),
            Some("ops")
        );
        assert_eq!(from_file.api, None);
        assert!(from_file.deregister);
        assert_eq!(from_file.retry.min, Duration::from_millis(500));
        assert_eq!(from_file.retry.max, Duration::from_secs(30));
        assert_eq!(from_file.keepalive_warning_timeout, 60);

        let flagged = parse(&[
            "-c",
            &file,
            "--name",
            "from-flag",
            "--backend-url",
            "ws://a:1,ws://[::1]",
            "--subscriptions",
            "db",
            "--labels",
            "region=us,tier=1",
            "--disable-api=false",
            "--deregister=false",
        ])
        .resolve()
        .unwrap();
        assert_eq!(flagged.name, "from-flag");
        assert_eq!(flagged.backend_urls, vec!["ws://a:1", "ws://[::1]:8081"]);
        assert_eq!(flagged.subscriptions, vec!["db"]);
        assert_eq!(
            flagged.labels,
            BTreeMap::from([("region".into(), "us".into()), ("tier".into(), "1".into())])
        );
        assert!(flagged.api.is_some());
        assert!(!flagged.deregister);
    }

    #[test]
    fn bad_settings_name_the_option() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&[&str], &str)] = &[
            (&["--backend-url", "http://x"], "backend-url:"),
            (
                &["--keepalive-warning-timeout", "4"],
                "keepalive-warning-timeout:",
            ),
            (
                &[
                    "--keepalive-interval",
                    "30",
                    "--keepalive-warning-timeout",
                    "30",
                ],
                "keepalive-warning-timeout: must be greater than keepalive-interval",
            ),
            (
                &["--keepalive-critical-timeout", "3"],
                "keepalive-critical-timeout:",
            ),
            (&["--labels", "novalue"], "labels:"),
            (&["--retry-min", "1 fortnight"], "retry-min:"),
            (&["--retry-min", "10s", "--retry-max", "1s"], "retry-max:"),
            (&["--retry-multiplier", "0.5"], "retry-multiplier:"),
            (&["--max-session-length", "soon"], "max-session-length:"),
            (
                &["--backend-heartbeat-timeout", "10"],
                "backend-heartbeat-timeout:",
            ),
            (&["--max-concurrent-checks", "0"], "max-concurrent-checks:"),
            (&["--api-host", "not an ip"], "api-host:"),
            (&["--log-level", "loud"], "log-level:"),
            (&["--name", "has space"], "name:"),
            (
                &["--trusted-ca-file", "/nonexistent/ca.pem"],
                "trusted-ca-file:",
            ),
            (
                &["--cert-file", "/etc/agent.pem"],
                "key-file: cert-file needs",
            ),
            (
                &["--key-file", "/etc/agent.key"],
                "cert-file: key-file needs",
            ),
            (
                &[
                    "--cert-file",
                    "/nonexistent/a.pem",
                    "--key-file",
                    "/nonexistent/a.key",
                ],
                "cert-file: reading /nonexistent/a.pem",
            ),
            (&["--assets-rate-limit", "0"], "assets-rate-limit:"),
            (&["--assets-burst-limit", "0"], "assets-burst-limit:"),
            (
                &["--allow-list", "/nonexistent/allow.yml"],
                "allow-list: /nonexistent/allow.yml:",
            ),
        ];
        for (args, expected) in cases {
            let err = parse(args).resolve().unwrap_err().to_string();
            assert!(
                err.starts_with(expected),
                "{args:?}: {err:?} should start with {expected:?}"
            );
        }
        let file = write_file(&dir, "backend-urls: ws://x\n");
        let err = parse(&["-c", &file]).resolve().unwrap_err().to_string();
        assert!(err.contains("backend-urls"), "{err}");
    }

    #[test]
    fn a_client_certificate_is_read_and_needs_a_wss_backend() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["web-1".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_file, key_file) = (dir.path().join("a.pem"), dir.path().join("a.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let (cert_arg, key_arg) = (cert_file.to_str().unwrap(), key_file.to_str().unwrap());

        let config = parse(&[
            "--backend-url",
            "wss://b1:8081",
            "--cert-file",
            cert_arg,
            "--key-file",
            key_arg,
        ])
        .resolve()
        .unwrap();
        assert_eq!(
            config.client_certificate,
            Some(ClientCertificate {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
            })
        );
        let file = write_file(
            &dir,
            &format!("backend-url: [wss://b1:8081]\ncert-file: {cert_arg}\nkey-file: {key_arg}\n"),
        );
        let from_file = parse(&["-c", &file]).resolve().unwrap();
        assert_eq!(from_file.client_certificate, config.client_certificate);

        let err = parse(&["--cert-file", cert_arg, "--key-file", key_arg])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cert-file: a client certificate is only presented to wss://"),
            "{err}"
        );
        // The two files swapped: the key file holds no certificate.
        let err = parse(&[
            "--backend-url",
            "wss://b1:8081",
            "--cert-file",
            key_arg,
            "--key-file",
            cert_arg,
        ])
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("cert-file:") && err.contains("no certificate"),
            "{err}"
        );
    }

    #[test]
    fn asset_and_allow_list_options_come_from_flags_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let allow = dir.path().join("allow.yml");
        std::fs::write(&allow, "- exec: /bin/true\n  args: ['']\n").unwrap();
        let file = write_file(
            &dir,
            &format!(
                "disable-assets: true\nassets-rate-limit: 5\nassets-burst-limit: 7\n\
                 allow-list: {}\n",
                allow.display()
            ),
        );
        let config = parse(&["-c", &file]).resolve().unwrap();
        assert!(config.disable_assets);
        assert_eq!(
            (config.assets_rate_limit, config.assets_burst_limit),
            (5.0, 7)
        );
        assert_eq!(config.allow_list.unwrap().path(), allow);
        let config = parse(&[
            "-c",
            &file,
            "--disable-assets=false",
            "--assets-rate-limit",
            "0.5",
        ])
        .resolve()
        .unwrap();
        assert!(!config.disable_assets);
        assert_eq!(config.assets_rate_limit, 0.5);

        // A bad allow-list stops the start, naming the option, the file, the entry and field.
        std::fs::write(&allow, "- exec: /bin/true\n").unwrap();
        let err = parse(&["-c", &file]).resolve().unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "allow-list: {}: [0].args: cannot be empty (use [\"\"] for a command \
                 without arguments)",
                allow.display()
            )
        );
    }

    #[test]
    fn durations_parse_like_go() {
        let cases = [
            ("1s", Some(Duration::from_secs(1))),
            ("500ms", Some(Duration::from_millis(500))),
            ("2m", Some(Duration::from_secs(120))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("7", Some(Duration::from_secs(7))),
            ("", None),
            ("5x", None),
            ("s", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text).ok(), expected, "{text:?}");
        }
    }
}
