//! Runtime assets on the agent (reference §2.7): the archives a check or hook names in
//! `runtime_assets`, resolved by the backend into the request, installed here and put on the
//! command's `PATH` (see `exec_env.rs`).
//!
//! For each asset of a request, in order:
//! 1. **Selection**: with `builds`, the first build whose `filters` are all true for the
//!    agent's entity (Sensu 6's rule); otherwise the asset itself if its `filters` are. No
//!    match: the asset is skipped (as in Sensu) and a warning is logged once per asset.
//! 2. **Tokens**: the chosen `url` and `headers` are token-substituted against the entity
//!    (`sha512` never is).
//! 3. **Install**, unless `<cache-dir>/assets/<sha512>/` exists: download to a temporary file
//!    while hashing ([`fetch`]), compare the SHA-512 *before* unpacking, unpack into a fresh
//!    temporary directory ([`archive`]) and rename it into place. A directory under its
//!    SHA-512 is therefore always a complete, verified install; it is never fetched again,
//!    across restarts too.
//!
//! What Sensu got wrong and this does not (anchors B6 #51): a failed download or a SHA-512
//! mismatch fails *that* check with a status-3 result naming the asset and the reason
//! ([`AssetError`]) — never silently, never blocking other checks — and nothing is remembered
//! about the failure, so the next request tries again. Concurrent requests for the same asset
//! wait for one download (a lock per SHA-512), while different assets install in parallel
//! (Sensu serialized every install behind one BoltDB transaction).

pub mod archive;
pub mod fetch;
pub mod filters;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kensa_types::resources::asset::Asset;
use serde_json::Value;

use self::fetch::TokenBucket;
use self::filters::FilterCache;

/// An installed asset, as a command sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeAsset {
    /// The asset's name (`sensu/http-checks`), which names its `<NAME>_PATH` variable.
    pub name: String,
    /// Its install directory, holding `bin/`, `lib/`, `include/`.
    pub path: PathBuf,
}

/// Why an asset a check needs is not available: the text of the check's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("asset {asset:?}: {reason}")]
pub struct AssetError {
    pub asset: String,
    pub reason: String,
}

/// The asset options (Sensu's names).
#[derive(Debug, Clone)]
pub struct AssetSettings {
    /// Assets go to `<cache-dir>/assets/`.
    pub cache_dir: PathBuf,
    /// CAs trusted for `https://` downloads, besides the public roots.
    pub trusted_ca_file: Option<PathBuf>,
    /// `assets-rate-limit`: downloads per second.
    pub rate_limit: f64,
    /// `assets-burst-limit`.
    pub burst_limit: u32,
}

/// One build of an asset (or the asset itself when it has no `builds`).
struct Candidate<'a> {
    url: &'a str,
    sha512: &'a str,
    filters: &'a [String],
    headers: &'a BTreeMap<String, String>,
}

/// Installs and finds runtime assets. Shared by every check execution.
pub struct AssetManager {
    /// `<cache-dir>/assets`: one directory per installed SHA-512, plus `.download-*` and
    /// `.unpack-*` temporaries while installing.
    root: PathBuf,
    trusted_ca_file: Option<PathBuf>,
    limiter: Mutex<TokenBucket>,
    /// One lock per SHA-512 being installed, so concurrent requests download it once. An
    /// entry lives while someone holds or waits for it.
    installing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    filters: FilterCache,
    /// Assets already warned about for matching no build (name + first SHA-512).
    warned_skips: Mutex<HashSet<String>>,
}

impl AssetManager {
    /// Creates `<cache-dir>/assets` and removes temporaries a crash left behind.
    pub fn new(settings: AssetSettings) -> std::io::Result<AssetManager> {
        let root = settings.cache_dir.join("assets");
        std::fs::create_dir_all(&root)?;
        for entry in std::fs::read_dir(&root)?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".download-") {
                let _ = std::fs::remove_file(entry.path());
            } else if name.starts_with(".unpack-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(AssetManager {
            root,
            trusted_ca_file: settings.trusted_ca_file,
            limiter: Mutex::new(TokenBucket::new(
                settings.rate_limit,
                settings.burst_limit,
                Instant::now(),
            )),
            installing: Mutex::new(HashMap::new()),
            filters: FilterCache::default(),
            warned_skips: Mutex::new(HashSet::new()),
        })
    }

    /// Where the asset with `sha512` is (or would be) installed.
    pub fn install_dir(&self, sha512: &str) -> PathBuf {
        self.root.join(sha512.to_ascii_lowercase())
    }

    /// Selects, installs and returns the assets of a request, in order; the first asset that
    /// cannot be had fails the whole call. `entity` is the agent's entity (for filters),
    /// `tokens` its synthesized form (for token substitution).
    pub async fn get_all(
        &self,
        assets: &[Asset],
        entity: &Value,
        tokens: &Value,
        now_unix: i64,
    ) -> Result<Vec<RuntimeAsset>, AssetError> {
        let candidates: Vec<Vec<Candidate<'_>>> = assets.iter().map(candidates).collect();
        let lists: Vec<Vec<String>> = candidates
            .iter()
            .flatten()
            .map(|candidate| candidate.filters.to_vec())
            .collect();
        let mut verdicts = self
            .filters
            .evaluate(entity, &lists, now_unix)
            .await
            .into_iter();
        let mut installed = Vec::with_capacity(assets.len());
        for (asset, candidates) in assets.iter().zip(&candidates) {
            let name = asset.metadata.name.as_str();
            let fail = |reason: String| AssetError {
                asset: name.to_owned(),
                reason,
            };
            let verdicts: Vec<_> = verdicts.by_ref().take(candidates.len()).collect();
            let mut chosen = None;
            for (index, (candidate, verdict)) in candidates.iter().zip(verdicts).enumerate() {
                let in_build = |message: String| match asset.builds.is_empty() {
                    true => message,
                    false => format!("builds[{index}]: {message}"),
                };
                match verdict {
                    Ok(true) => {
                        chosen = Some((candidate, index));
                        break;
                    }
                    Ok(false) => continue,
                    Err(message) => return Err(fail(in_build(message))),
                }
            }
            let Some((candidate, index)) = chosen else {
                self.warn_skipped(asset);
                continue;
            };
            let context = |message: String| match asset.builds.is_empty() {
                true => message,
                false => format!("builds[{index}]: {message}"),
            };
            let sha512 = candidate.sha512.to_ascii_lowercase();
            if sha512.len() != 128 || !sha512.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                return Err(fail(context(
                    "sha512 must be 128 hexadecimal characters".to_owned(),
                )));
            }
            let url = kensa_eval::render(candidate.url, tokens)
                .map_err(|err| fail(context(format!("url: {err}"))))?;
            let headers = candidate
                .headers
                .iter()
                .map(|(header, value)| {
                    kensa_eval::render(value, tokens)
                        .map(|value| (header.clone(), value))
                        .map_err(|err| fail(context(format!("headers.{header}: {err}"))))
                })
                .collect::<Result<BTreeMap<_, _>, _>>()?;
            let path = self
                .install(&url, &sha512, &headers)
                .await
                .map_err(|reason| fail(context(reason)))?;
            installed.push(RuntimeAsset {
                name: name.to_owned(),
                path,
            });
        }
        Ok(installed)
    }

    /// Installs the archive at `url` under `sha512` unless it already is.
    async fn install(
        &self,
        url: &str,
        sha512: &str,
        headers: &BTreeMap<String, String>,
    ) -> Result<PathBuf, String> {
        let target = self.install_dir(sha512);
        if target.is_dir() {
            return Ok(target);
        }
        let lock = {
            let mut installing = self.installing.lock().expect("install map lock poisoned");
            installing.entry(sha512.to_owned()).or_default().clone()
        };
        let result = async {
            let _installing = lock.lock().await;
            // Whoever held the lock before may have installed it.
            if target.is_dir() {
                return Ok(target.clone());
            }
            self.download_and_unpack(url, sha512, headers, &target)
                .await
                .map(|()| target.clone())
        }
        .await;
        {
            let mut installing = self.installing.lock().expect("install map lock poisoned");
            // Two references: the map's and ours. Nobody else waits, so forget the lock.
            if Arc::strong_count(&lock) == 2 {
                installing.remove(sha512);
            }
        }
        result
    }

    async fn download_and_unpack(
        &self,
        url: &str,
        sha512: &str,
        headers: &BTreeMap<String, String>,
        target: &Path,
    ) -> Result<(), String> {
        let started = Instant::now();
        if !self
            .limiter
            .lock()
            .expect("asset rate limiter lock poisoned")
            .try_take(started)
        {
            return Err(
                "download rate limit reached (assets-rate-limit, assets-burst-limit); \
                 the next request tries again"
                    .to_owned(),
            );
        }
        // A client per download, dropped after it: an asset is downloaded once, ever, so
        // keeping a client (its roots, its connection pool) would only cost an idle agent
        // memory.
        let client = fetch::client(self.trusted_ca_file.as_deref())?;
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let download = self.root.join(format!(".download-{suffix}"));
        let unpack_dir = self.root.join(format!(".unpack-{suffix}"));
        let result = async {
            let actual = fetch::download(&client, url, headers, &download).await?;
            if actual != sha512 {
                return Err(format!(
                    "sha512 mismatch: the download from {} has sha512 {actual}, \
                     the asset says {sha512}",
                    fetch::display_url(url)
                ));
            }
            let (archive, unpacked, target) =
                (download.clone(), unpack_dir.clone(), target.to_owned());
            tokio::task::spawn_blocking(move || {
                archive::unpack(&archive, &unpacked)?;
                match std::fs::rename(&unpacked, &target) {
                    Ok(()) => Ok(()),
                    // Installed meanwhile (another agent process on the same cache-dir).
                    Err(_) if target.is_dir() => Ok(()),
                    Err(err) => Err(format!("cannot move into {}: {err}", target.display())),
                }
            })
            .await
            .map_err(|err| format!("unpacking failed: {err}"))?
        }
        .await;
        let _ = tokio::fs::remove_file(&download).await;
        if unpack_dir.exists() {
            let _ = tokio::fs::remove_dir_all(&unpack_dir).await;
        }
        match &result {
            Ok(()) => tracing::info!(
                sha512 = %&sha512[..16],
                path = %target.display(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "asset installed"
            ),
            Err(reason) => {
                tracing::warn!(sha512 = %&sha512[..16], "asset install failed: {reason}")
            }
        }
        result
    }

    fn warn_skipped(&self, asset: &Asset) {
        let key = format!(
            "{}/{}",
            asset.metadata.name,
            candidates(asset).first().map_or("", |first| first.sha512)
        );
        if self
            .warned_skips
            .lock()
            .expect("warned lock poisoned")
            .insert(key)
        {
            tracing::warn!(
                asset = %asset.metadata.name,
                "no build of this asset matches the agent's entity: it is skipped \
                 (commands that need it will not find it; logged once)"
            );
        }
    }
}

/// The asset's builds, or the asset itself when it has none.
fn candidates(asset: &Asset) -> Vec<Candidate<'_>> {
    if asset.builds.is_empty() {
        return vec![Candidate {
            url: &asset.url,
            sha512: &asset.sha512,
            filters: &asset.filters,
            headers: &asset.headers,
        }];
    }
    asset
        .builds
        .iter()
        .map(|build| Candidate {
            url: &build.url,
            sha512: &build.sha512,
            filters: &build.filters,
            headers: &build.headers,
        })
        .collect()
}
