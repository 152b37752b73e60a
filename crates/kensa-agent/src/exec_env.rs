//! The environment a check or hook runs with: the agent's own, then its runtime assets'
//! variables, then the check's `env_vars` — merged as Sensu merges them
//! (`util/environment.MergeEnvironments`): a later layer overrides a variable, except the
//! search paths `PATH`, `LD_LIBRARY_PATH` and `CPATH`, where a later layer's entries go in
//! front of the earlier ones. So an asset's `bin/` comes before the agent's `PATH`, and a
//! check's own `PATH=/opt/x/bin` comes before both.
//!
//! Unlike Sensu, an empty search path is never joined in: `PATH=/a:` would make `sh` search
//! the current directory.

use std::collections::BTreeMap;

use crate::assets::RuntimeAsset;

/// Variables whose layers are joined (later first) instead of replaced.
const SEARCH_PATHS: [&str; 3] = ["PATH", "LD_LIBRARY_PATH", "CPATH"];

/// What to add to (or override in) the agent's inherited environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecEnv {
    overrides: BTreeMap<String, String>,
}

impl ExecEnv {
    /// The value the command will see: an override, or the agent's own.
    pub fn get(&self, name: &str) -> Option<String> {
        match self.overrides.get(name) {
            Some(value) => Some(value.clone()),
            None => std::env::var(name).ok(),
        }
    }

    /// Sets `name` to `value` (or, for a search path, puts `value`'s entries first).
    pub fn set(&mut self, name: &str, value: &str) {
        if !SEARCH_PATHS.contains(&name) {
            self.overrides.insert(name.to_owned(), value.to_owned());
            return;
        }
        let current = self.get(name).unwrap_or_default();
        let joined = value
            .split(':')
            .chain(current.split(':'))
            .filter(|entry| !entry.is_empty())
            .collect::<Vec<_>>()
            .join(":");
        self.overrides.insert(name.to_owned(), joined);
    }

    /// Each asset's `bin/`, `lib/` and `include/` in front of `PATH`, `LD_LIBRARY_PATH` and
    /// `CPATH` (in the order the assets are listed), and `<NAME>_PATH` = its directory, which
    /// is what the `assetPath` token refers to.
    pub fn add_assets(&mut self, assets: &[RuntimeAsset]) {
        if assets.is_empty() {
            return;
        }
        let dirs = |sub: &str| {
            assets
                .iter()
                .map(|asset| asset.path.join(sub).to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(":")
        };
        self.set("PATH", &dirs("bin"));
        self.set("LD_LIBRARY_PATH", &dirs("lib"));
        self.set("CPATH", &dirs("include"));
        for asset in assets {
            self.set(
                &kensa_eval::asset_path_variable(&asset.name),
                &asset.path.to_string_lossy(),
            );
        }
    }

    /// A check's `env_vars` (`KEY=VALUE`; entries without `=` are ignored, as in Sensu).
    pub fn add_env_vars<'a>(&mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) {
        for (name, value) in pairs {
            self.set(name, value);
        }
    }

    /// The pairs to hand to `kensa_exec::Spec::env`.
    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.overrides.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_paths_are_prepended_and_other_variables_replaced() {
        let agent_path = std::env::var("PATH").unwrap_or_default();
        let assets = [
            RuntimeAsset {
                name: "sensu/http-checks".into(),
                path: "/cache/assets/aaa".into(),
            },
            RuntimeAsset {
                name: "b".into(),
                path: "/cache/assets/bbb".into(),
            },
        ];
        let mut env = ExecEnv::default();
        env.add_assets(&assets);
        env.add_env_vars([("PATH", "/opt/check/bin"), ("FOO", "1"), ("FOO", "2")]);
        let expected_path = [
            "/opt/check/bin",
            "/cache/assets/aaa/bin:/cache/assets/bbb/bin",
        ]
        .into_iter()
        .chain((!agent_path.is_empty()).then_some(agent_path.as_str()))
        .collect::<Vec<_>>()
        .join(":");
        assert_eq!(env.get("PATH").unwrap(), expected_path);
        assert_eq!(
            env.get("SENSU_HTTP_CHECKS_PATH").as_deref(),
            Some("/cache/assets/aaa")
        );
        assert_eq!(env.get("B_PATH").as_deref(), Some("/cache/assets/bbb"));
        assert!(env
            .get("LD_LIBRARY_PATH")
            .unwrap()
            .starts_with("/cache/assets/aaa/lib:/cache/assets/bbb/lib"));
        assert_eq!(env.get("FOO").as_deref(), Some("2"));
        assert!(
            !env.get("CPATH").unwrap().ends_with(':'),
            "no empty entry joined in"
        );
    }
}
