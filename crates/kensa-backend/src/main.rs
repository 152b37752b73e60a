//! The `kensa-backend` binary: `init`, `start` and `version`.

use clap::Parser;
use kensa_backend::config::{Cli, Command};
use kensa_backend::{bootstrap, server};
use tokio_util::sync::CancellationToken;

/// jemalloc, not glibc's malloc: the event path allocates and frees many small JSON nodes on
/// several threads, which glibc served with ~35 % of the backend's CPU (arena contention,
/// consolidation) and an RSS that kept growing; jemalloc's per-thread caches cost a fraction
/// of that (bench/events.sh, BENCHMARKS.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KENSA_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},sqlx=warn,hyper=warn"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("kensa-backend {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Init(args) => {
            init_logging("info");
            let (location, admin) = args.resolve()?;
            let store = server::open_store(&location).await?;
            match bootstrap::initialize(store.as_ref(), &admin).await {
                Ok(()) => {
                    println!(
                        "initialized: namespace default, cluster admin {:?}, user agent",
                        admin.username
                    );
                    Ok(())
                }
                Err(bootstrap::InitError::AlreadyInitialized)
                    if args.ignore_already_initialized =>
                {
                    println!("already initialized");
                    Ok(())
                }
                Err(err) => Err(err.into()),
            }
        }
        Command::Start(args) => {
            let config = args.resolve()?;
            init_logging(&config.log_level);
            let listeners = server::Listeners::bind(&config).await?;
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutting down");
                stop.cancel();
            });
            server::run(config, listeners, shutdown).await
        }
    }
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
