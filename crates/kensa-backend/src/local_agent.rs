//! `--local-agent`: the one-command evaluation setup. Runs an agent inside the backend process
//! (the real `kensa-agent` library, connecting over the agent WebSocket like any other agent)
//! and, when the `default` namespace has no checks yet, adds a few starter checks — Nagios
//! plugins from `monitoring-plugins-basic` when they are installed, plain shell otherwise — so
//! a new user sees events within a minute.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kensa_agent::config::{AgentConfig, RetryPolicy};
use kensa_store::{Key, ListQuery, Store};
use kensa_types::Kind;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::BackendConfig;

const PLUGINS: &str = "/usr/lib/nagios/plugins";

pub fn start(
    config: &BackendConfig,
    agent_port: u16,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let agent_config = agent_config(config, agent_port);
    tokio::spawn(async move {
        if let Err(err) = seed_starter_checks(store.as_ref()).await {
            tracing::warn!(%err, "could not add the starter checks");
        }
        match kensa_agent::Agent::start(agent_config, shutdown).await {
            Ok(agent) => agent.stopped().await,
            Err(err) => tracing::error!(%err, "the local agent could not start"),
        }
    })
}

fn agent_config(config: &BackendConfig, agent_port: u16) -> AgentConfig {
    let scheme = if config.tls.is_some() { "wss" } else { "ws" };
    let host = if config.tls.is_some() {
        "localhost"
    } else {
        "127.0.0.1"
    };
    AgentConfig {
        name: kensa_agent::config::default_name(),
        backend_urls: vec![format!("{scheme}://{host}:{agent_port}")],
        namespace: "default".into(),
        subscriptions: vec!["local".into(), "linux".into()],
        labels: Default::default(),
        annotations: Default::default(),
        user: "agent".into(),
        password: "P@ssw0rd!".into(),
        cache_dir: config.state_dir.join("local-agent"),
        keepalive_interval: 20,
        keepalive_warning_timeout: 120,
        keepalive_critical_timeout: 240,
        keepalive_handlers: Vec::new(),
        deregister: false,
        deregistration_handler: String::new(),
        redact: Vec::new(),
        // The local inputs would collide with a separately installed agent's default ports.
        api: None,
        socket: None,
        statsd: None,
        statsd_flush_interval: Duration::from_secs(10),
        statsd_event_handlers: Vec::new(),
        trusted_ca_file: config.tls.as_ref().and_then(|t| t.trusted_ca_file.clone()),
        insecure_skip_tls_verify: false,
        retry: RetryPolicy {
            min: Duration::from_millis(200),
            max: Duration::from_secs(10),
            multiplier: 2.0,
        },
        handshake_timeout: Duration::from_secs(15),
        heartbeat_interval: Duration::from_secs(30),
        heartbeat_timeout: Duration::from_secs(45),
        max_concurrent_checks: 8,
        log_level: config.log_level.clone(),
    }
}

/// The starter checks, by name: Nagios plugins when installed, else shell equivalents.
fn starter_checks() -> Vec<(&'static str, String, Option<&'static str>)> {
    let plugin = |name: &str| Path::new(PLUGINS).join(name);
    if plugin("check_load").exists() {
        vec![
            (
                "load",
                format!("{} -r -w 4,3,2 -c 8,6,4", plugin("check_load").display()),
                Some("nagios_perfdata"),
            ),
            (
                "root-disk",
                format!("{} -w 15% -c 5% -p /", plugin("check_disk").display()),
                Some("nagios_perfdata"),
            ),
            (
                "processes",
                format!("{} -w 400 -c 800", plugin("check_procs").display()),
                Some("nagios_perfdata"),
            ),
        ]
    } else {
        vec![
            (
                "load",
                "read one five fifteen rest < /proc/loadavg; echo \"load $one $five $fifteen\"".into(),
                None,
            ),
            (
                "root-disk",
                "df -P / | awk 'NR==2 { use=$5+0; print \"disk / \" $5 \" used\"; exit (use>95?2:(use>85?1:0)) }'".into(),
                None,
            ),
        ]
    }
}

async fn seed_starter_checks(store: &dyn Store) -> anyhow::Result<()> {
    let existing = store
        .list(&ListQuery {
            kind: "checks".into(),
            namespace: Some("default".into()),
            limit: 1,
            ..Default::default()
        })
        .await?;
    if !existing.items.is_empty() {
        return Ok(());
    }
    let mut writes = Vec::new();
    for (name, command, format) in starter_checks() {
        let mut check = json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"kensa.io/starter": "true"}},
            "command": command,
            "interval": 15,
            "subscriptions": ["local"],
            "publish": true,
        });
        if let Some(format) = format {
            check["output_metric_format"] = json!(format);
        }
        let check = Kind::CheckConfig.normalize(check)?;
        writes.push((Key::new("checks", "default", name), check));
    }
    store.put_all(&writes).await?;
    tracing::info!(
        checks = writes.len(),
        "added starter checks for the local agent"
    );
    Ok(())
}
