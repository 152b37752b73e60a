//! `kensactl`: the command line client of Kensa, compatible with sensuctl's commands, files
//! and configuration. This file parses the command line and dispatches; the commands live in
//! the sibling modules and everything reusable (API client, file parsing, output) in the
//! `kensa_cli` library.
//!
//! Exit status: 0 on success, 1 on any error (printed as `Error: ...` on stderr), 2 for
//! command-line usage errors (clap's convention).

mod args;
mod bulk;
mod configure;
mod context;
mod resource_cmds;

use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser};
use kensa_types::Kind;

use args::{Cli, Command};
use context::Context;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Err(message) = cli.global.apply_sensu_env() {
        eprintln!("Error: {message}");
        return ExitCode::FAILURE;
    }
    if let Command::Completion { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "kensactl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let mut ctx = match Context::load(cli.global) {
        Ok(ctx) => ctx,
        Err(err) => return report(err),
    };
    let result = run(&mut ctx, cli.command);
    // Refreshed tokens are saved even when the command failed: the old ones are now spent.
    let saved = ctx.finish();
    match result.and(saved) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(err),
    }
}

fn report(err: anyhow::Error) -> ExitCode {
    eprintln!("Error: {err:#}");
    ExitCode::FAILURE
}

fn run(ctx: &mut Context, command: Command) -> Result<()> {
    use resource_cmds::generic;
    match command {
        Command::Configure(args) => configure::configure(ctx, args),
        Command::Config { action } => configure::config(ctx, action),
        Command::Create(args) => bulk::create(ctx, args),
        Command::Delete(args) => bulk::delete(ctx, args),
        Command::Dump(args) => bulk::dump(ctx, args),
        Command::Edit(args) => bulk::edit(ctx, args),
        Command::Completion { .. } => unreachable!("handled before loading the configuration"),
        Command::Asset { action } => generic(ctx, Kind::Asset, action),
        Command::Check { action } => resource_cmds::check(ctx, action),
        Command::ClusterRole { action } => generic(ctx, Kind::ClusterRole, action),
        Command::ClusterRoleBinding { action } => generic(ctx, Kind::ClusterRoleBinding, action),
        Command::Entity { action } => generic(ctx, Kind::Entity, action),
        Command::Event { action } => resource_cmds::event(ctx, action),
        Command::Filter { action } => generic(ctx, Kind::EventFilter, action),
        Command::Handler { action } => generic(ctx, Kind::Handler, action),
        Command::Hook { action } => generic(ctx, Kind::HookConfig, action),
        Command::Mutator { action } => generic(ctx, Kind::Mutator, action),
        Command::Namespace { action } => resource_cmds::namespace(ctx, action),
        Command::Pipeline { action } => generic(ctx, Kind::Pipeline, action),
        Command::Role { action } => generic(ctx, Kind::Role, action),
        Command::RoleBinding { action } => generic(ctx, Kind::RoleBinding, action),
        Command::Silenced { action } => generic(ctx, Kind::Silenced, action),
        Command::User { action } => resource_cmds::user(ctx, action),
        Command::ApiKey { action } => resource_cmds::api_key(ctx, action),
    }
}
