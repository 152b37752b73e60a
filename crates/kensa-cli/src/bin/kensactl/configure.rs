//! `kensactl configure` and `kensactl config`: logging in (`GET /auth` with Basic credentials)
//! and storing the backend URL, the session tokens and the preferences (namespace, format).
//!
//! Values come from flags, then `KENSA_*`, then sensuctl's `SENSU_*` variables, then (on a
//! terminal, unless `-n`) prompts whose defaults are the current configuration.

use std::io::IsTerminal;

use anyhow::{bail, Context as _, Result};
use kensa_cli::{Client, Credentials, Format};

use crate::args::{env_any, ConfigCmd, ConfigureArgs};
use crate::context::{prompt, prompt_secret, Context, DEFAULT_NAMESPACE};

const DEFAULT_URL: &str = "http://127.0.0.1:8080";

pub fn configure(ctx: &mut Context, args: ConfigureArgs) -> Result<()> {
    let interactive = !args.non_interactive
        && env_any(&["SENSU_NON_INTERACTIVE"]).is_none_or(|v| v != "true")
        && std::io::stdin().is_terminal();

    let current = &ctx.config;
    let given_url = args
        .url
        .or_else(|| ctx.global.api_url.clone())
        .or_else(|| env_any(&["SENSU_URL"]));
    let given_username = args.username.or_else(|| env_any(&["SENSU_USERNAME"]));
    let given_password = args.password.or_else(|| env_any(&["SENSU_PASSWORD"]));
    let default_url = Some(current.cluster.api_url.clone())
        .filter(|u| !u.is_empty())
        .unwrap_or(DEFAULT_URL.into());
    let default_namespace = Some(current.profile.namespace.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE.into());
    let default_format = current.profile.format.parse::<Format>().unwrap_or_default();

    let (url, username, password, namespace, format) = if interactive {
        let url = match given_url {
            Some(url) => url,
            None => prompt("Kensa backend URL:", &default_url)?,
        };
        let username = match given_username {
            Some(username) => username,
            None => prompt("Username:", &current.profile.username)?,
        };
        let password = match given_password {
            Some(password) => password,
            None => prompt_secret("Password:")?,
        };
        let namespace = match ctx.global.namespace.clone() {
            Some(namespace) => namespace,
            None => prompt("Namespace:", &default_namespace)?,
        };
        let format = match ctx.global.format {
            Some(format) => format,
            None => prompt(
                "Preferred output format (tabular, json, yaml, wrapped-json):",
                default_format.as_str(),
            )?
            .parse()
            .map_err(anyhow::Error::msg)?,
        };
        (url, username, password, namespace, format)
    } else {
        let username =
            given_username.context("--username (or KENSA_USERNAME) is required with -n")?;
        let password =
            given_password.context("--password (or KENSA_PASSWORD) is required with -n")?;
        let namespace = ctx.global.namespace.clone().unwrap_or(default_namespace);
        (
            given_url.unwrap_or(default_url),
            username,
            password,
            namespace,
            ctx.global.format.unwrap_or(default_format),
        )
    };

    let url = url.trim_end_matches('/').to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("backend URL {url:?} must start with http:// or https://");
    }
    let client = Client::new(&ctx.client_options(&url), Credentials::None)?;
    let tokens = client
        .login(&username, &password)
        .with_context(|| format!("logging in to {url} as {username:?}"))?;

    let config = &mut ctx.config;
    config.cluster.api_url = url.clone();
    if let Some(path) = &ctx.global.trusted_ca_file {
        config.cluster.trusted_ca_file = path.display().to_string();
    }
    config.cluster.insecure_skip_tls_verify = ctx.global.insecure_skip_tls_verify;
    config.cluster.set_tokens(&tokens);
    config.profile.username = username.clone();
    config.profile.namespace = namespace;
    config.profile.format = format.as_str().to_owned();
    config.save()?;
    println!(
        "Configured kensactl for {url} as {username:?} (config in {})",
        config.dir.display()
    );
    Ok(())
}

pub fn config(ctx: &mut Context, action: ConfigCmd) -> Result<()> {
    match action {
        ConfigCmd::View => {
            let view = serde_json::json!({
                "api-url": ctx.config.cluster.api_url,
                "namespace": ctx.namespace(),
                "format": ctx.format().as_str(),
                "username": ctx.config.profile.username,
                "config-dir": ctx.config.dir.display().to_string(),
            });
            println!("{}", serde_json::to_string_pretty(&view)?);
        }
        ConfigCmd::SetNamespace { namespace } => {
            ctx.config.profile.namespace = namespace.clone();
            ctx.config.save()?;
            println!("Namespace set to {namespace:?}");
        }
        ConfigCmd::SetFormat { format } => {
            ctx.config.profile.format = format.as_str().to_owned();
            ctx.config.save()?;
            println!("Format set to {format}");
        }
    }
    Ok(())
}
