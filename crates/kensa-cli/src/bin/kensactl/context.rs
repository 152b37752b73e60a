//! What every command starts from: the global flags resolved against the stored
//! configuration (flag > environment > profile > built-in default), and the API client built
//! from them. Tokens refreshed during the command are written back by [`Context::finish`].

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use kensa_cli::{config, Client, ClientOptions, Config, Credentials, Format};

use crate::args::GlobalArgs;

pub const DEFAULT_NAMESPACE: &str = "default";

pub struct Context {
    pub global: GlobalArgs,
    pub config: Config,
    /// Created on first use, so that commands that need no backend (completion, config view)
    /// work without a configuration.
    client: Option<Client>,
}

impl Context {
    pub fn load(global: GlobalArgs) -> Result<Context> {
        let dir = match &global.config_dir {
            Some(dir) => dir.clone(),
            None => config::default_dir()?,
        };
        let config = Config::load(&dir)?;
        Ok(Context {
            global,
            config,
            client: None,
        })
    }

    /// `--namespace` > profile > `default`.
    pub fn namespace(&self) -> String {
        self.global
            .namespace
            .clone()
            .or_else(|| Some(self.config.profile.namespace.clone()).filter(|n| !n.is_empty()))
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
    }

    /// `--format` > profile > tabular.
    pub fn format(&self) -> Format {
        self.global
            .format
            .unwrap_or_else(|| self.config.profile.format.parse().unwrap_or_default())
    }

    pub fn client_options(&self, url: &str) -> ClientOptions {
        let trusted_ca_file = self.global.trusted_ca_file.clone().or_else(|| {
            Some(PathBuf::from(&self.config.cluster.trusted_ca_file))
                .filter(|p| !p.as_os_str().is_empty())
        });
        ClientOptions {
            url: url.to_owned(),
            timeout: self.global.timeout,
            trusted_ca_file,
            insecure_skip_tls_verify: self.global.insecure_skip_tls_verify
                || self.config.cluster.insecure_skip_tls_verify,
        }
    }

    /// The client for the configured backend: `--api-key` wins over the stored session.
    pub fn client(&mut self) -> Result<&Client> {
        if self.client.is_none() {
            let url = self
                .global
                .api_url
                .clone()
                .or_else(|| Some(self.config.cluster.api_url.clone()).filter(|u| !u.is_empty()))
                .context("no backend URL configured: run `kensactl configure` or pass --api-url")?;
            let credentials = match (&self.global.api_key, self.config.cluster.tokens()) {
                (Some(key), _) => Credentials::ApiKey(key.clone()),
                (None, Some(tokens)) => Credentials::Tokens(tokens),
                (None, None) => bail!("not logged in: run `kensactl configure` or pass --api-key"),
            };
            self.client = Some(Client::new(&self.client_options(&url), credentials)?);
        }
        Ok(self.client.as_ref().expect("set above"))
    }

    /// Persists tokens refreshed while the command ran, whether it succeeded or not.
    pub fn finish(&mut self) -> Result<()> {
        if let Some(tokens) = self.client.as_ref().and_then(Client::refreshed_tokens) {
            self.config.cluster.set_tokens(&tokens);
            self.config.save()?;
        }
        Ok(())
    }
}

/// Asks before a destructive action. Without a terminal there is nobody to ask, so the caller
/// must have passed `--skip-confirm`; a script never deletes by accident.
pub fn confirm_delete(skip_confirm: bool, what: &str) -> Result<bool> {
    if skip_confirm {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!("refusing to delete {what} without confirmation: stdin is not a terminal, pass --skip-confirm");
    }
    let answer = prompt(
        &format!("Are you sure you want to delete {what}? [y/N]"),
        "",
    )?;
    Ok(matches!(answer.to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// Reads a line from the terminal, showing `default` and returning it for an empty answer.
pub fn prompt(question: &str, default: &str) -> Result<String> {
    let mut stderr = std::io::stderr();
    if default.is_empty() {
        write!(stderr, "{question} ")?;
    } else {
        write!(stderr, "{question} [{default}] ")?;
    }
    stderr.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let answer = line.trim();
    Ok(if answer.is_empty() {
        default.to_owned()
    } else {
        answer.to_owned()
    })
}

/// Reads a secret without echoing it.
pub fn prompt_secret(question: &str) -> Result<String> {
    Ok(rpassword::prompt_password(format!("{question} "))?)
}
