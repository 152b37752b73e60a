//! Assets (`type: Asset`): archives agents and backends download, verify (SHA-512) and put on
//! the PATH of checks, hooks, handlers and mutators. Either one `url`/`sha512` with `filters`,
//! or a list of `builds`, the first whose filters all match being used.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::validate_asset_name;
use super::{field, joined, label_fields, nullable, Resource};
use crate::{ObjectMeta, ResourceError};

/// A SHA-512 checksum in hex is 128 characters.
const SHA512_HEX_LEN: usize = 128;

/// `type: Asset` (reference §2.9).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Asset {
    /// Download location (tokens allowed); required without `builds`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Hex SHA-512 of the archive; required without `builds`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sha512: String,
    /// JavaScript expressions over `entity` that must all be true.
    #[serde(with = "nullable")]
    pub filters: Vec<String>,
    /// Per-platform variants; when present, the top-level url/sha512/filters are ignored.
    #[serde(with = "nullable")]
    pub builds: Vec<AssetBuild>,
    pub metadata: ObjectMeta,
    /// HTTP headers for the download (tokens allowed).
    #[serde(with = "nullable")]
    pub headers: BTreeMap<String, String>,
}

/// `asset.builds[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AssetBuild {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sha512: String,
    #[serde(with = "nullable")]
    pub filters: Vec<String>,
    #[serde(with = "nullable")]
    pub headers: BTreeMap<String, String>,
}

/// The download rules shared by an asset and each of its builds.
fn validate_download(url: &str, sha512: &str) -> Result<(), ResourceError> {
    if sha512.is_empty() {
        return Err(ResourceError::invalid_field(
            "sha512",
            "SHA-512 checksum cannot be empty",
        ));
    }
    if sha512.len() < SHA512_HEX_LEN {
        return Err(ResourceError::invalid_field(
            "sha512",
            "SHA-512 checksum must be at least 128 characters",
        ));
    }
    if url.is_empty() {
        return Err(ResourceError::invalid_field("url", "URL cannot be empty"));
    }
    Ok(())
}

impl Resource for Asset {
    fn validate(&self) -> Result<(), ResourceError> {
        validate_asset_name("metadata.name", "", &self.metadata.name)?;
        if self.metadata.namespace.is_empty() {
            return Err(ResourceError::invalid_field(
                "metadata.namespace",
                "namespace cannot be empty",
            ));
        }
        if self.builds.is_empty() {
            return validate_download(&self.url, &self.sha512);
        }
        for (i, build) in self.builds.iter().enumerate() {
            validate_download(&build.url, &build.sha512)
                .map_err(|err| err.within(&format!("builds[{i}]"), ""))?;
        }
        Ok(())
    }

    fn fields(&self) -> Vec<(String, String)> {
        let mut out = vec![
            field("asset.name", &self.metadata.name),
            field("asset.namespace", &self.metadata.namespace),
            field("asset.filters", joined(&self.filters)),
        ];
        label_fields("asset", &self.metadata, &mut out);
        out
    }
}
