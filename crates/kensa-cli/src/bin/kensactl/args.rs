//! The command line of kensactl, declared with clap's derive API. Commands mirror sensuctl's
//! (reference §4): bulk commands (`create`, `delete`, `dump`, `edit`), `configure`, and one
//! command per resource kind sharing `list`/`info`/`delete` ([`GenericCmd`]) plus the extras a
//! few kinds have (`check execute`, `event resolve`, `user change-password`...).
//!
//! Options read `KENSA_*` environment variables through clap; the `SENSU_*` names sensuctl
//! users already have exported are honored as a fallback in [`GlobalArgs::apply_sensu_env`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use kensa_cli::Format;

#[derive(Debug, Parser)]
#[command(
    name = "kensactl",
    version,
    about = "Command line client for Kensa (sensuctl-compatible)"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// API key to authenticate with instead of the stored session
    #[arg(long, global = true, env = "KENSA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Backend URL, overriding the configured one
    #[arg(long, global = true, env = "KENSA_API_URL")]
    pub api_url: Option<String>,
    /// Directory holding the profile and cluster files
    #[arg(long, global = true, env = "KENSA_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Namespace to work in (default: the profile's, else "default")
    #[arg(long, global = true, env = "KENSA_NAMESPACE")]
    pub namespace: Option<String>,
    /// Output format (default: the profile's, else tabular)
    #[arg(long, global = true, env = "KENSA_FORMAT")]
    pub format: Option<Format>,
    /// Request timeout: 15s, 2m, 500ms or plain seconds
    #[arg(long, global = true, value_parser = parse_duration, default_value = "15s")]
    pub timeout: Duration,
    /// PEM file of CA certificates to trust
    #[arg(long, global = true, env = "KENSA_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Accept any TLS certificate (testing only)
    #[arg(long, global = true, env = "KENSA_INSECURE_SKIP_TLS_VERIFY")]
    pub insecure_skip_tls_verify: bool,
}

/// Reads the first of `names` that is set and non-empty.
pub fn env_any(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

impl GlobalArgs {
    /// Fills options left unset from sensuctl's `SENSU_*` variables.
    pub fn apply_sensu_env(&mut self) -> Result<(), String> {
        self.api_key = self.api_key.take().or_else(|| env_any(&["SENSU_API_KEY"]));
        self.api_url = self.api_url.take().or_else(|| env_any(&["SENSU_API_URL"]));
        self.namespace = self
            .namespace
            .take()
            .or_else(|| env_any(&["SENSU_NAMESPACE"]));
        if self.format.is_none() {
            self.format = env_any(&["SENSU_FORMAT"]).map(|f| f.parse()).transpose()?;
        }
        if self.trusted_ca_file.is_none() {
            self.trusted_ca_file = env_any(&["SENSU_TRUSTED_CA_FILE"]).map(PathBuf::from);
        }
        if !self.insecure_skip_tls_verify {
            self.insecure_skip_tls_verify =
                env_any(&["SENSU_INSECURE_SKIP_TLS_VERIFY"]).is_some_and(|v| v == "true");
        }
        Ok(())
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("invalid duration unit {unit:?} (ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in to a backend and store the session and preferences
    Configure(ConfigureArgs),
    /// Show or change the stored preferences
    Config {
        #[command(subcommand)]
        action: ConfigCmd,
    },
    /// Create or replace resources described in files, directories, URLs or stdin
    Create(FileArgs),
    /// Delete the resources described in files, directories, URLs or stdin
    Delete(FileArgs),
    /// Print resources in the wrapped form `create` reads back
    Dump(DumpArgs),
    /// Edit a resource in $VISUAL/$EDITOR and save it back
    Edit(EditArgs),
    /// Print a shell completion script
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Manage assets
    Asset {
        #[command(subcommand)]
        action: GenericCmd,
    },
    /// Manage checks
    Check {
        #[command(subcommand)]
        action: CheckCmd,
    },
    /// Manage cluster roles
    ClusterRole {
        #[command(subcommand)]
        action: GenericCmd,
    },
    /// Manage cluster role bindings
    ClusterRoleBinding {
        #[command(subcommand)]
        action: GenericCmd,
    },
    /// Manage entities
    Entity {
        #[command(subcommand)]
        action: GenericCmd,
    },
    /// Manage events
    Event {
        #[command(subcommand)]
        action: EventCmd,
    },
    /// Manage event filters
    Filter {
        #[command(subcommand)]
        action: GenericCmd,
    },
    /// Manage handlers
    Handler {
        #[command(subcommand)]
        action: GenericCmd,
    },
    /// Manage hooks
    Hook {
        #[command(subcommand)]
        action: GenericCmd,
    },
    /// Manage mutators
    Mutator {
        #[command(subcommand)]
        action: GenericCmd,
    },
    /// Manage namespaces
    Namespace {
        #[command(subcommand)]
        action: NamespaceCmd,
    },
    /// Manage pipelines
    Pipeline {
        #[command(subcommand)]
        action: GenericCmd,
    },
    /// Manage roles
    Role {
        #[command(subcommand)]
        action: GenericCmd,
    },
    /// Manage role bindings
    RoleBinding {
        #[command(subcommand)]
        action: GenericCmd,
    },
    /// Manage silences
    Silenced {
        #[command(subcommand)]
        action: GenericCmd,
    },
    /// Manage users
    User {
        #[command(subcommand)]
        action: UserCmd,
    },
    /// Manage API keys
    ApiKey {
        #[command(subcommand)]
        action: ApiKeyCmd,
    },
}

#[derive(Debug, Args)]
pub struct ConfigureArgs {
    /// Do not prompt; take everything from flags and environment
    #[arg(short = 'n', long, env = "KENSA_NON_INTERACTIVE")]
    pub non_interactive: bool,
    /// Backend URL (also --api-url)
    #[arg(long, env = "KENSA_URL")]
    pub url: Option<String>,
    #[arg(long, env = "KENSA_USERNAME")]
    pub username: Option<String>,
    #[arg(long, env = "KENSA_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the active configuration (without secrets)
    View,
    /// Set the default namespace
    SetNamespace { namespace: String },
    /// Set the default output format
    SetFormat {
        #[arg(value_enum)]
        format: Format,
    },
}

#[derive(Debug, Args)]
pub struct FileArgs {
    /// Files, directories or http(s) URLs; repeatable or comma-separated; `-` or none for stdin
    #[arg(short = 'f', long = "file", value_delimiter = ',')]
    pub files: Vec<String>,
    /// Descend into subdirectories
    #[arg(short = 'r', long)]
    pub recursive: bool,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// `all` or a comma-separated list of types (checks, CheckConfig, core/v2.CheckConfig, check)
    pub types: String,
    /// Dump every namespace instead of the current one
    #[arg(long)]
    pub all_namespaces: bool,
    /// Write to this file instead of stdout
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Types to leave out, comma-separated
    #[arg(short = 'o', long, value_delimiter = ',')]
    pub omit: Vec<String>,
    /// Page size of the list requests
    #[arg(long, default_value_t = 500)]
    pub chunk_size: u32,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    /// Resource type (check, checks, CheckConfig...)
    #[arg(value_name = "TYPE")]
    pub kind: String,
    /// Resource name (ENTITY/CHECK for events)
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// List across all namespaces
    #[arg(long)]
    pub all_namespaces: bool,
    /// Fetch this many resources per request (0: all at once)
    #[arg(long, default_value_t = 0)]
    pub chunk_size: u32,
    /// Only resources whose labels match, e.g. 'region == "us-west-1"'
    #[arg(long)]
    pub label_selector: Option<String>,
    /// Only resources whose fields match, e.g. 'linux in check.subscriptions'
    #[arg(long)]
    pub field_selector: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub name: String,
    /// Do not ask for confirmation
    #[arg(long)]
    pub skip_confirm: bool,
}

/// The commands every resource kind has.
#[derive(Debug, Subcommand)]
pub enum GenericCmd {
    /// List resources
    List(ListArgs),
    /// Show one resource
    Info { name: String },
    /// Delete one resource
    Delete(DeleteArgs),
}

#[derive(Debug, Subcommand)]
pub enum CheckCmd {
    #[command(flatten)]
    Generic(GenericCmd),
    /// Request an immediate run of a check
    Execute {
        name: String,
        /// Run on these subscriptions instead of the check's
        #[arg(short = 's', long, value_delimiter = ',')]
        subscriptions: Vec<String>,
        /// Why the check is run (recorded with the request)
        #[arg(short = 'r', long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventCmd {
    /// List events
    List(ListArgs),
    /// Show one event
    Info { entity: String, check: String },
    /// Delete one event
    Delete {
        entity: String,
        check: String,
        #[arg(long)]
        skip_confirm: bool,
    },
    /// Mark an event as resolved (status 0)
    Resolve { entity: String, check: String },
}

#[derive(Debug, Subcommand)]
pub enum NamespaceCmd {
    #[command(flatten)]
    Generic(GenericCmd),
    /// Create a namespace
    Create { name: String },
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    #[command(flatten)]
    Generic(GenericCmd),
    /// Create a user
    Create {
        name: String,
        /// At least 8 characters; prompted for when omitted on a terminal
        #[arg(long)]
        password: Option<String>,
        /// Groups, comma-separated
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
    },
    /// Change a user's password (default: the configured user)
    ChangePassword {
        name: Option<String>,
        #[arg(long)]
        current_password: Option<String>,
        #[arg(long)]
        new_password: Option<String>,
    },
    /// Disable a user (the user can no longer log in)
    Disable(DeleteArgs),
    /// Re-enable a disabled user
    Reinstate { name: String },
    /// Add a user to a group
    AddGroup { name: String, group: String },
    /// Remove a user from a group
    RemoveGroup { name: String, group: String },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCmd {
    #[command(flatten)]
    Generic(GenericCmd),
    /// Create an API key for a user
    Grant { username: String },
    /// Revoke (delete) an API key
    Revoke(DeleteArgs),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse() {
        for (text, secs) in [("15s", 15.0), ("2m", 120.0), ("500ms", 0.5), ("30", 30.0)] {
            assert_eq!(parse_duration(text).unwrap().as_secs_f64(), secs, "{text}");
        }
        assert!(parse_duration("5 parsecs").is_err());
    }
}
