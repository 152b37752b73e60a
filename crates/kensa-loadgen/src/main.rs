//! `kensa-loadgen`: the load generator behind `bench/`. Each subcommand drives an already
//! running backend from the outside, over its public interfaces only, and prints one JSON
//! document describing what it measured (stdout, and `--out FILE`). Progress goes to stderr so
//! that stdout stays machine-readable.
//!
//! It never starts or stops the backend: the bench scripts own process lifecycles, this binary
//! only measures. Subcommands:
//! - `api`: seed entities and events through the REST API, then time paged listings and
//!   single-resource reads (`api.rs`);
//! - `agents`: simulated agents on the agent protocol, measuring events acknowledged (stored)
//!   and handled per second, connect and reconnect storms and the backends' memory over time
//!   (`agents.rs`, with `frames.rs`, the handler sinks `sink.rs` and `alerts.rs`, source
//!   addresses `sources.rs`, `fdlimit.rs`, `storm.rs` and `series.rs`);
//! - `agent-rss`: the RSS and CPU of one real agent, idle and running checks (`agent_rss.rs`).

mod agent_rss;
mod agents;
mod alerts;
mod api;
mod client;
mod fdlimit;
mod frames;
mod procfs;
mod series;
mod sink;
mod sources;
mod stats;
mod storm;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kensa-loadgen",
    version,
    about = "Load generator for Kensa benchmarks (prints JSON)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Seed entities and events over the REST API, then time paged listings and single GETs.
    Api(api::ApiArgs),
    /// Simulated agents sending check results over WebSocket; events acked and handled per s.
    Agents(agents::AgentsArgs),
    /// RSS and CPU of a running kensa-agent, idle and while it runs checks.
    AgentRss(agent_rss::AgentRssArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (report, out) = match cli.command {
        Command::Api(args) => {
            let out = args.out.clone();
            (api::run(args).await?, out)
        }
        Command::Agents(args) => {
            let out = args.out.clone();
            (agents::run(args).await?, out)
        }
        Command::AgentRss(args) => {
            let out = args.out.clone();
            (agent_rss::run(args).await?, out)
        }
    };
    write_report(&report, out.as_ref())
}

/// Prints the report on stdout and, when asked, writes the same document to `out`.
fn write_report(report: &serde_json::Value, out: Option<&PathBuf>) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)? + "\n";
    if let Some(path) = out {
        std::fs::write(path, &text)
            .with_context(|| format!("writing report {}", path.display()))?;
    }
    print!("{text}");
    Ok(())
}
