//! `--local-agent`: the one-command evaluation setup. Runs an agent inside the backend process
//! (the real `kensa-agent` library, connecting over the agent WebSocket like any other agent)
//! and, when the `default` namespace has no checks yet, adds a few starter checks — Nagios
//! plugins from `monitoring-plugins-basic` when they are installed, plain shell otherwise — so
//! a new user sees events within a minute.

use std::path::Path;
use std::sync::Arc;

use kensa_agent::config::{AgentConfig, StartArgs};
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
        let agent_config = match agent_config {
            Ok(agent_config) => agent_config,
            Err(err) => {
                tracing::error!(%err, "the local agent's configuration is invalid");
                return;
            }
        };
        if let Err(err) = seed_starter_checks(store.as_ref()).await {
            tracing::warn!(%err, "could not add the starter checks");
        }
        match kensa_agent::Agent::start(agent_config, shutdown).await {
            Ok(agent) => agent.stopped().await,
            Err(err) => tracing::error!(%err, "the local agent could not start"),
        }
    })
}

/// The local agent's configuration: the agent's own defaults (resolved like its command line),
/// with the local inputs off — they would collide with a separately installed agent's ports.
fn agent_config(
    config: &BackendConfig,
    agent_port: u16,
) -> Result<AgentConfig, kensa_agent::config::ConfigError> {
    let listener_tls = config.agent_listener_tls();
    let (scheme, host) = if listener_tls.is_some() {
        ("wss", "localhost")
    } else {
        ("ws", "127.0.0.1")
    };
    StartArgs {
        backend_url: vec![format!("{scheme}://{host}:{agent_port}")],
        namespace: Some("default".into()),
        subscriptions: vec!["local".into(), "linux".into()],
        user: Some("agent".into()),
        password: Some("P@ssw0rd!".into()),
        cache_dir: Some(config.state_dir.join("local-agent")),
        disable_api: Some(true),
        disable_sockets: Some(true),
        statsd_disable: Some(true),
        trusted_ca_file: listener_tls.and_then(|t| t.trusted_ca_file.clone()),
        retry_min: Some("200ms".into()),
        retry_max: Some("10s".into()),
        log_level: Some(config.log_level.clone()),
        ..StartArgs::default()
    }
    .resolve()
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
