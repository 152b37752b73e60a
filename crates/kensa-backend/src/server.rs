//! Assembling and running a backend: open the store, seed it if asked, load the config view,
//! serve the API (plain or TLS) until the shutdown token fires, then stop in reverse order.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use kensa_store::Store;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::agentd::Agentd;
use crate::api::{self, ApiSettings, AppState};
use crate::bootstrap;
use crate::cluster::{self, Membership};
use crate::config::{BackendConfig, StoreLocation};
use crate::dispatch::Dispatcher;
use crate::eventd::{Eventd, FailingAgents};
use crate::keepalived::Keepalived;
use crate::pipelined::{self, RecentOutcomes};
use crate::rounds::{RoundOrders, RoundRobin};
use crate::scheduler::Scheduler;
use crate::telemetry::Telemetry;
use crate::tls::{self, Peer, TlsListener};
use crate::view::ConfigView;

pub async fn open_store(location: &StoreLocation) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match location {
        StoreLocation::Sqlite(path) => Arc::new(
            kensa_store::sqlite::SqliteStore::open(path)
                .await
                .with_context(|| format!("opening the embedded store {}", path.display()))?,
        ),
        StoreLocation::Postgres(url) => Arc::new(
            kensa_store::postgres::PostgresStore::connect(url)
                .await
                .context("connecting to PostgreSQL")?,
        ),
    })
}

/// The sockets a backend serves, bound by the caller (tests bind port 0).
pub struct Listeners {
    pub api: TcpListener,
    /// Agent WebSocket connections.
    pub agent: TcpListener,
    /// The dashboard; `None` disables it.
    pub dashboard: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses `config` names.
    pub async fn bind(config: &BackendConfig) -> anyhow::Result<Listeners> {
        let api = TcpListener::bind(config.api_listen_address)
            .await
            .with_context(|| format!("binding api-listen-address {}", config.api_listen_address))?;
        let agent_address = format!("{}:{}", config.agent_host, config.agent_port);
        let agent = TcpListener::bind(&agent_address)
            .await
            .with_context(|| format!("binding the agent listener {agent_address}"))?;
        let dashboard_address = format!("{}:{}", config.dashboard_host, config.dashboard_port);
        let dashboard = TcpListener::bind(&dashboard_address)
            .await
            .with_context(|| format!("binding the dashboard listener {dashboard_address}"))?;
        Ok(Listeners {
            api,
            agent,
            dashboard: Some(dashboard),
        })
    }
}

/// Runs the backend on already-bound listeners until `shutdown` is cancelled.
pub async fn run(
    config: BackendConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api_listener = listeners.api;
    let store = open_store(&config.store).await?;
    if let Some(admin) = &config.bootstrap_admin {
        match bootstrap::initialize(store.as_ref(), admin).await {
            Ok(()) => tracing::info!(admin = %admin.username, "initialized the store"),
            Err(bootstrap::InitError::AlreadyInitialized) => {}
            Err(err) => return Err(err).context("initializing the store"),
        }
    }
    if !bootstrap::is_initialized(store.as_ref()).await? {
        anyhow::bail!(
            "the store is not initialized: run `kensa-backend init` or set KENSA_BACKEND_CLUSTER_ADMIN_USERNAME and _PASSWORD"
        );
    }
    let jwt_secret = bootstrap::jwt_secret(store.as_ref())
        .await
        .context("loading the token signing key")?;
    let view = ConfigView::load(store.as_ref())
        .await
        .context("loading configuration")?;
    let follower = tokio::spawn(view.clone().follow(store.clone(), shutdown.child_token()));
    // Membership first: this backend's heartbeat is in the store before it serves an agent.
    let (membership, membership_task) = Membership::start(
        member_identity(
            &config,
            api_listener.local_addr()?,
            listeners.agent.local_addr()?,
        ),
        store.clone(),
        match config.store {
            StoreLocation::Sqlite(_) => cluster::StoreLink::Embedded,
            StoreLocation::Postgres(_) => cluster::StoreLink::Network,
        },
        shutdown.child_token(),
    )
    .await
    .context("joining the cluster")?;
    let pruner = tokio::spawn(prune_change_feed(store.clone(), shutdown.child_token()));

    // The services, built from their dependencies and stopped by the shutdown token (in
    // reverse order of the arrows: sessions → keepalived/eventd → pipelines).
    let telemetry = Arc::new(Telemetry::new());
    let failing = Arc::new(FailingAgents::default());
    let outcomes = Arc::new(RecentOutcomes::default());
    let (pipeline_tx, pipeline_rx) = mpsc::channel(pipelined::QUEUE);
    // eventd → round robin's tap → pipelines: completed rounds are acknowledged on the way.
    let (stored_tx, stored_rx) = mpsc::channel(pipelined::QUEUE);
    let (duplicate_rounds_tx, duplicate_rounds_rx) = mpsc::channel(4096);
    let queue = kensa_queue::connect(
        config.queue_url.as_deref(),
        &config.queue_stream,
        store.clone(),
    )
    .await
    .context("opening the round-robin queue")?;
    let mut tasks = vec![
        follower,
        pruner,
        membership_task,
        pipelined::start(
            view.clone(),
            telemetry.clone(),
            outcomes.clone(),
            pipeline_rx,
            kensa_pipeline::Settings::default(),
            shutdown.child_token(),
        ),
    ];
    let (eventd, eventd_tasks) = Eventd::start(
        store.clone(),
        view.clone(),
        telemetry.clone(),
        failing.clone(),
        stored_tx,
        duplicate_rounds_tx,
        crate::eventd::EventdSettings {
            shared_store: matches!(config.store, StoreLocation::Postgres(_)),
            ..config.eventd.clone()
        },
        shutdown.child_token(),
    );
    tasks.extend(eventd_tasks);
    let (keepalived, keepalived_task) = Keepalived::start(
        store.clone(),
        view.clone(),
        eventd.clone(),
        pipeline_tx.clone(),
        failing,
        telemetry.clone(),
        membership.clone(),
        shutdown.child_token(),
    );
    tasks.push(keepalived_task);
    let dispatcher = Arc::new(Dispatcher::new());
    let (refusals_tx, refusals_rx) = mpsc::channel(4096);
    let agentd = Agentd::new(
        view.clone(),
        dispatcher.clone(),
        keepalived,
        eventd.clone(),
        telemetry.clone(),
        refusals_tx,
    );
    tasks.push(tokio::spawn(
        agentd.clone().follow_entities(shutdown.child_token()),
    ));
    tasks.push(tokio::spawn(shed_sessions_while_store_lost(
        membership.clone(),
        agentd.clone(),
        telemetry.clone(),
        shutdown.child_token(),
    )));
    let (round_orders, round_orders_rx) = RoundOrders::channel(telemetry.clone());
    let queue_handle = queue.clone();
    let (rounds, rounds_tasks) = RoundRobin::start(
        queue,
        store.clone(),
        view.clone(),
        dispatcher.clone(),
        eventd.clone(),
        telemetry.clone(),
        round_orders_rx,
        shutdown.child_token(),
    );
    tasks.extend(rounds_tasks);
    tasks.push(tokio::spawn(crate::rounds::settle_duplicates(
        duplicate_rounds_rx,
        rounds.clone(),
    )));
    tasks.push(tokio::spawn(crate::rounds::release_refused(
        refusals_rx,
        rounds.clone(),
        shutdown.child_token(),
    )));
    tasks.push(tokio::spawn(crate::rounds::tap(
        stored_rx,
        pipeline_tx,
        rounds,
    )));
    tasks.push(Scheduler::start(
        view.clone(),
        store.clone(),
        dispatcher,
        round_orders,
        telemetry.clone(),
        shutdown.child_token(),
    ));

    let state = AppState {
        store: store.clone(),
        view,
        jwt_secret: Arc::new(jwt_secret),
        settings: ApiSettings {
            request_limit: config.api_request_limit,
            access_token_expiry: config.access_token_expiry,
            refresh_token_expiry: config.refresh_token_expiry,
        },
        telemetry,
        eventd,
        outcomes,
        queue: queue_handle,
    };
    let tls = config
        .tls
        .as_ref()
        .map(|files| tls::acceptor(files, "", None))
        .transpose()?;
    let agent_tls = config
        .agent_listener_tls()
        .map(|files| {
            let option = match config.agent_tls.cert {
                Some(_) => "agent-auth-",
                None => "",
            };
            tls::acceptor(files, option, Some(&config.agent_tls))
        })
        .transpose()?;
    if config.local_agent {
        let agent_port = listeners.agent.local_addr()?.port();
        tasks.push(crate::local_agent::start(
            &config,
            agent_port,
            store.clone(),
            shutdown.child_token(),
        ));
    }
    let mut servers = Vec::new();
    servers.push(serve_http(
        "api",
        api_listener,
        api::router(state.clone()).layer(axum::Extension(membership.clone())),
        tls.clone(),
        shutdown.clone(),
    )?);
    if let Some(listener) = listeners.dashboard {
        servers.push(serve_http(
            "dashboard",
            listener,
            crate::web::router_until(state.clone(), shutdown.clone())
                .layer(axum::Extension(membership.clone())),
            tls.clone(),
            shutdown.clone(),
        )?);
    }
    servers.push(serve_http(
        "agent",
        listeners.agent,
        agentd.router(),
        agent_tls,
        shutdown.clone(),
    )?);
    let mut result = Ok(());
    for server in servers {
        if let Ok(Err(err)) = server.await {
            result = Err(err);
        }
    }
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    tracing::info!("backend stopped");
    result
}

/// Sheds agent sessions while membership says the store is lost, and takes agents again once
/// it is back (see `cluster.rs`, `agentd.rs`); exports what membership sees as metrics.
async fn shed_sessions_while_store_lost(
    membership: Arc<Membership>,
    agentd: Arc<Agentd>,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
) {
    let mut states = membership.subscribe();
    loop {
        let state = states.borrow_and_update().clone();
        let lost = !state.store_reachable;
        agentd.set_shedding(lost);
        let alive = state.members.iter().filter(|m| m.alive).count();
        telemetry.cluster_members_alive.set(alive as i64);
        telemetry
            .cluster_members_dead
            .set((state.members.len() - alive) as i64);
        telemetry.store_reachable.set(i64::from(!lost));
        telemetry.agent_sessions_shedding.set(i64::from(lost));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = states.changed() => if changed.is_err() { return },
        }
    }
}

/// Who this backend is in the cluster: its listeners' addresses and a fresh member id.
fn member_identity(
    config: &BackendConfig,
    api: SocketAddr,
    agent: SocketAddr,
) -> cluster::Identity {
    let http = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let ws = if config.agent_listener_tls().is_some() {
        "wss"
    } else {
        "ws"
    };
    cluster::Identity::new(
        cluster::default_name(api.port()),
        format!("{http}://{api}"),
        format!("{ws}://{agent}"),
    )
}

/// Serves `app` on `listener` (over TLS when `tls` is set) until `shutdown`.
fn serve_http(
    name: &'static str,
    listener: TcpListener,
    app: axum::Router,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let address = listener.local_addr()?;
    Ok(tokio::spawn(async move {
        let stop = shutdown.clone();
        match tls {
            None => {
                tracing::info!(%address, "{name} listening (http)");
                axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await?;
            }
            Some(acceptor) => {
                tracing::info!(%address, "{name} listening (https)");
                let listener = TlsListener::spawn(listener, acceptor, shutdown.child_token());
                axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await?;
            }
        }
        // One listener failing stops the whole backend.
        shutdown.cancel();
        Ok(())
    }))
}

/// How many change-feed entries are kept: enough for followers that lag by minutes; one that
/// falls further behind reloads its view from the store.
const CHANGE_FEED_RETAINED: i64 = 100_000;

/// Trims the change feed once a minute so it does not grow without bound.
async fn prune_change_feed(store: Arc<dyn Store>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = async {
            let revision = store.revision().await?;
            store.prune_changes(revision - CHANGE_FEED_RETAINED).await
        }
        .await;
        match result {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "pruned the change feed"),
            Err(err) => tracing::warn!(%err, "could not prune the change feed"),
        }
    }
}
