//! The `kensa-agent` binary: `start` and `version`. The runtime is deliberately small (two
//! worker threads, a bounded blocking pool): an agent is a guest on the host it monitors.

use clap::Parser;
use kensa_agent::config::{Cli, Command};
use kensa_agent::Agent;
use tokio_util::sync::CancellationToken;

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KENSA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("kensa-agent {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Start(args) => {
            let config = args.resolve()?;
            init_logging(&config.log_level);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .max_blocking_threads(16)
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                let agent = Agent::start(config, shutdown.clone()).await?;
                wait_for_signal().await;
                tracing::info!("shutting down");
                shutdown.cancel();
                agent.stopped().await;
                anyhow::Ok(())
            })
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
