//! kensactl's configuration directory, laid out like sensuctl's (reference §4.1): a `profile`
//! file (output format, namespace, username) and a `cluster` file (API URL, TLS settings and
//! the access/refresh tokens with their expiry), both JSON. The directory is
//! `dirs::config_dir()/kensa/kensactl` unless `--config-dir`/`KENSA_CONFIG_DIR` says otherwise
//! (tests point it at a temp dir).
//!
//! Missing files are not an error: a fresh install reads as an empty configuration, and the
//! commands that need a login say so. The `cluster` file holds credentials, so it is written
//! owner-only and replaced atomically (a crash never leaves half a token file).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::client::Tokens;

pub const PROFILE_FILE: &str = "profile";
pub const CLUSTER_FILE: &str = "cluster";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(
        "no configuration directory on this system: pass --config-dir or set KENSA_CONFIG_DIR"
    )]
    NoConfigDir,
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid kensactl configuration file: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Per-user preferences.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    pub format: String,
    pub namespace: String,
    pub username: String,
}

/// How to reach the backend, and the current session. Key names follow sensuctl's file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cluster {
    #[serde(rename = "api-url")]
    pub api_url: String,
    #[serde(rename = "trusted-ca-file")]
    pub trusted_ca_file: String,
    #[serde(rename = "insecure-skip-tls-verify")]
    pub insecure_skip_tls_verify: bool,
    pub access_token: String,
    /// Unix seconds, as returned by `/auth`.
    pub expires_at: i64,
    pub refresh_token: String,
}

impl Cluster {
    /// The stored session, if there is one.
    pub fn tokens(&self) -> Option<Tokens> {
        (!self.access_token.is_empty()).then(|| Tokens {
            access_token: self.access_token.clone(),
            expires_at: self.expires_at,
            refresh_token: self.refresh_token.clone(),
        })
    }

    pub fn set_tokens(&mut self, tokens: &Tokens) {
        self.access_token = tokens.access_token.clone();
        self.expires_at = tokens.expires_at;
        self.refresh_token = tokens.refresh_token.clone();
    }
}

/// Both files, and the directory they live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub dir: PathBuf,
    pub profile: Profile,
    pub cluster: Cluster,
}

/// `<user config dir>/kensa/kensactl`.
pub fn default_dir() -> Result<PathBuf, ConfigError> {
    dirs::config_dir()
        .map(|dir| dir.join("kensa").join("kensactl"))
        .ok_or(ConfigError::NoConfigDir)
}

impl Config {
    /// Reads the configuration in `dir`; absent files read as defaults.
    pub fn load(dir: &Path) -> Result<Config, ConfigError> {
        Ok(Config {
            dir: dir.to_owned(),
            profile: read_json(&dir.join(PROFILE_FILE))?,
            cluster: read_json(&dir.join(CLUSTER_FILE))?,
        })
    }

    /// Writes both files, creating the directory if needed.
    pub fn save(&self) -> Result<(), ConfigError> {
        fs::create_dir_all(&self.dir).map_err(|source| ConfigError::Write {
            path: self.dir.clone(),
            source,
        })?;
        write_json(&self.dir.join(PROFILE_FILE), &self.profile)?;
        write_json(&self.dir.join(CLUSTER_FILE), &self.cluster)
    }
}

fn read_json<T: Default + for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes through a temp file in the same directory and renames it over the target. tempfile
/// creates the file readable by its owner only, which the token file needs.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ConfigError> {
    let write_err = |source| ConfigError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(write_err)?;
    let mut bytes = serde_json::to_vec_pretty(value).expect("configuration always serializes");
    bytes.push(b'\n');
    file.write_all(&bytes).map_err(write_err)?;
    file.persist(path).map_err(|err| write_err(err.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_read_as_defaults_and_saves_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let config_dir = dir.path().join("nested/kensactl");
        let mut config = Config::load(&config_dir).unwrap();
        assert_eq!(config.profile, Profile::default());
        assert!(config.cluster.tokens().is_none());

        config.profile.namespace = "prod".into();
        config.cluster.api_url = "http://127.0.0.1:8080".into();
        config.cluster.set_tokens(&Tokens {
            access_token: "a".into(),
            expires_at: 42,
            refresh_token: "r".into(),
        });
        config.save().unwrap();

        let reread = Config::load(&config_dir).unwrap();
        assert_eq!(reread, config);
        let raw: serde_json::Value =
            serde_json::from_slice(&fs::read(config_dir.join(CLUSTER_FILE)).unwrap()).unwrap();
        assert_eq!(
            raw["api-url"], "http://127.0.0.1:8080",
            "sensuctl's key names"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(config_dir.join(CLUSTER_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "token file must not be readable by others");
        }
    }

    #[test]
    fn corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(PROFILE_FILE), "{not json").unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("profile"), "{err}");
    }
}
