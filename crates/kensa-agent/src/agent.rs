//! Assembles a running agent from its services and stops them in reverse order (reference
//! §2.1): the outbox is opened first (everything else writes to it), then the entity (with a
//! first collection of system facts), the asset cache (unless `disable-assets`), the check
//! executor (with the allow-list `config.rs` loaded), the local inputs and the connection
//! manager. On shutdown the connection closes, the inputs stop, and checks still running get
//! [`SHUTDOWN_GRACE`] to finish and store their results.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kensa_types::resources::entity::Entity;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::assets::{AssetManager, AssetSettings};
use crate::checks::CheckExecutor;
use crate::config::{AgentConfig, ListenAddress};
use crate::entity::EntityManager;
use crate::inputs::{self, InputContext};
use crate::outbox::{Outbox, OutboxError, OutboxLimits};
use crate::transport::{ConnectionManager, TransportError};

/// How long running checks may take to finish once shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cache-dir {path}: {source}")]
    Outbox {
        path: std::path::PathBuf,
        source: OutboxError,
    },
    #[error("cache-dir {path}: cannot prepare the asset cache: {source}")]
    Assets {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{option}: cannot listen on {address}: {source}")]
    Bind {
        option: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// A running agent.
pub struct Agent {
    outbox: Arc<Outbox>,
    entity: Arc<EntityManager>,
    connected: watch::Receiver<bool>,
    /// Ends once every service has stopped after `shutdown`.
    stopped: tokio::task::JoinHandle<()>,
}

impl Agent {
    /// Starts every service; they run until `shutdown` is cancelled.
    pub async fn start(
        config: AgentConfig,
        shutdown: CancellationToken,
    ) -> Result<Agent, AgentError> {
        let outbox_dir = config.cache_dir.join("outbox");
        let outbox = Outbox::open(&outbox_dir, OutboxLimits::default())
            .await
            .map_err(|source| AgentError::Outbox {
                path: outbox_dir,
                source,
            })?;
        let outbox = Arc::new(outbox);
        let entity = Arc::new(EntityManager::new(&config));
        entity.collect_system().await;
        let assets = match config.disable_assets {
            true => None,
            false => Some(Arc::new(
                AssetManager::new(AssetSettings {
                    cache_dir: config.cache_dir.clone(),
                    trusted_ca_file: config.trusted_ca_file.clone(),
                    rate_limit: config.assets_rate_limit,
                    burst_limit: config.assets_burst_limit,
                })
                .map_err(|source| AgentError::Assets {
                    path: config.cache_dir.clone(),
                    source,
                })?,
            )),
        };
        let (connected_tx, connected) = watch::channel(false);
        let executor = CheckExecutor::new(
            config.name.clone(),
            outbox.clone(),
            entity.subscribe(),
            config.max_concurrent_checks,
            assets,
            config.allow_list.clone(),
        );
        let manager = ConnectionManager::new(
            &config,
            entity.clone(),
            outbox.clone(),
            executor.clone(),
            connected_tx,
        )?;
        let context = InputContext::new(outbox.clone(), entity.subscribe(), connected.clone());

        let mut services = JoinSet::new();
        start_inputs(&config, context, &shutdown, &mut services).await?;
        services.spawn(entity.clone().refresh_system(shutdown.clone()));
        services.spawn(manager.run(shutdown.clone()));
        tracing::info!(
            name = %config.name,
            namespace = %config.namespace,
            backends = ?config.backend_urls,
            "agent started"
        );
        let stopped = tokio::spawn(async move {
            while let Some(done) = services.join_next().await {
                if let Err(err) = done {
                    tracing::error!(error = %err, "an agent service failed");
                }
            }
            executor.shutdown(SHUTDOWN_GRACE).await;
            tracing::info!("agent stopped");
        });
        Ok(Agent {
            outbox,
            entity,
            connected,
            stopped,
        })
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// The agent's current entity.
    pub fn entity(&self) -> watch::Receiver<Arc<Entity>> {
        self.entity.subscribe()
    }

    /// Whether a backend session is up.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Waits until every service has stopped (after `shutdown` was cancelled); the outbox is
    /// closed (and its lock released) once this returns and the `Agent` is dropped.
    pub async fn stopped(self) {
        if let Err(err) = self.stopped.await {
            tracing::error!(error = %err, "agent shutdown failed");
        }
    }
}

/// Binds the local inputs that are enabled (a binding error names the option) and serves them
/// until `shutdown`.
async fn start_inputs(
    config: &AgentConfig,
    context: InputContext,
    shutdown: &CancellationToken,
    services: &mut JoinSet<()>,
) -> Result<(), AgentError> {
    if let Some(address) = &config.api {
        let listener = bind_tcp("api-port", address).await?;
        let (context, shutdown) = (context.clone(), shutdown.clone());
        services.spawn(async move {
            if let Err(err) = inputs::api::serve(listener, context, shutdown).await {
                tracing::error!(error = %err, "the agent API stopped");
            }
        });
    }
    if let Some(address) = &config.socket {
        let listener = bind_tcp("socket-port", address).await?;
        let socket = bind_udp("socket-port", address).await?;
        let (context, shutdown) = (context.clone(), shutdown.clone());
        services.spawn(async move {
            if let Err(err) = inputs::socket::serve(listener, socket, context, shutdown).await {
                tracing::error!(error = %err, "the check result socket stopped");
            }
        });
    }
    if let Some(address) = &config.statsd {
        let socket = bind_udp("statsd-metrics-port", address).await?;
        let (interval, handlers) = (
            config.statsd_flush_interval,
            config.statsd_event_handlers.clone(),
        );
        let shutdown = shutdown.clone();
        services.spawn(async move {
            if let Err(err) =
                inputs::statsd::serve(socket, context, interval, handlers, shutdown).await
            {
                tracing::error!(error = %err, "the StatsD listener stopped");
            }
        });
    }
    Ok(())
}

fn socket_address(address: &ListenAddress) -> SocketAddr {
    SocketAddr::new(address.host, address.port)
}

async fn bind_tcp(
    option: &'static str,
    address: &ListenAddress,
) -> Result<TcpListener, AgentError> {
    let address = socket_address(address);
    TcpListener::bind(address)
        .await
        .map_err(|source| AgentError::Bind {
            option,
            address,
            source,
        })
}

async fn bind_udp(option: &'static str, address: &ListenAddress) -> Result<UdpSocket, AgentError> {
    let address = socket_address(address);
    UdpSocket::bind(address)
        .await
        .map_err(|source| AgentError::Bind {
            option,
            address,
            source,
        })
}
