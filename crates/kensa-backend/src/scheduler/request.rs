//! Building check requests (reference §3.4.3–3.4.4): the check definition plus the runtime
//! assets, hooks and hook assets it names, resolved from the ConfigView by exact name — Sensu
//! matched asset names by prefix, so `http` also shipped `http-checks` — and the round id
//! agents deduplicate on. Proxy requests are one request per matching entity, with the check's
//! tokens substituted from that entity.
//!
//! Matching entities runs JavaScript (`entity_attributes`) and substitution walks the whole
//! check once per entity, so [`expand_proxy`] is meant for the blocking pool; it uses one
//! [`Engine`] per blocking thread, created on first use.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use kensa_eval::{substitute_json, synthesize_entity, Engine, Limits};
use kensa_proto::{BackendMessage, CheckRequest};
use kensa_types::resources::asset::Asset;
use kensa_types::resources::check::CheckConfig;
use kensa_types::resources::hook::HookConfig;
use serde_json::Value;

use crate::dispatch::Frame;
use crate::view::ConfigView;

/// The `scheduler` a request's check carries (Sensu: `memory`, `etcd` or `postgres`): Kensa's
/// scheduler keeps its timers in memory on every backend.
pub const SCHEDULER_NAME: &str = "memory";

/// The round id of a scheduled fire: `<namespace>/<check>@<scheduled tick, Unix ms>`. Every
/// backend computes the same ticks, so the same round has the same id everywhere.
pub fn scheduled_round(namespace: &str, check: &str, tick_ms: i64) -> String {
    format!("{namespace}/{check}@{tick_ms}")
}

/// The round id of an ad hoc execution: `<namespace>/<check>@adhoc-<request id>`.
pub fn adhoc_round(namespace: &str, check: &str, request_id: &str) -> String {
    format!("{namespace}/{check}@adhoc-{request_id}")
}

/// The request for one fire of `config` (without proxy expansion): `issued` in Unix seconds.
pub fn build(view: &ConfigView, config: &CheckConfig, issued: i64, round: String) -> CheckRequest {
    let namespace = config.metadata.namespace.as_str();
    let check = config.metadata.name.as_str();
    let assets = resolve_assets(view, namespace, &config.runtime_assets, check);
    let mut hooks = Vec::new();
    let mut hook_assets = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for name in config.check_hooks.iter().flat_map(|list| &list.hooks) {
        if !seen.insert(name.as_str()) {
            continue;
        }
        let Some(hook) = view.decode::<HookConfig>("hooks", namespace, name) else {
            tracing::warn!(namespace, check, hook = %name, "check names a hook that does not exist");
            continue;
        };
        let assets = resolve_assets(view, namespace, &hook.runtime_assets, check);
        if !assets.is_empty() {
            hook_assets.insert(hook.metadata.name.clone(), assets);
        }
        hooks.push(hook);
    }
    let mut config = config.clone();
    config.scheduler = SCHEDULER_NAME.to_owned();
    CheckRequest {
        config,
        assets,
        hooks,
        issued,
        round,
        hook_assets,
    }
}

fn resolve_assets(view: &ConfigView, namespace: &str, names: &[String], check: &str) -> Vec<Asset> {
    names
        .iter()
        .filter_map(|name| {
            let asset = view.decode::<Asset>("assets", namespace, name);
            if asset.is_none() {
                tracing::warn!(namespace, check, asset = %name, "runtime asset does not exist");
            }
            asset
        })
        .collect()
}

/// Encodes a request into the frame every recipient shares.
pub fn encode(request: CheckRequest) -> Frame {
    Frame::from(BackendMessage::CheckRequest(Box::new(request)).encode())
}

thread_local! {
    /// The entity-expression engine of this blocking-pool thread (QuickJS contexts are used by
    /// one thread at a time); `None` until first use or if it could not be created.
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
}

/// For each entity matching every `proxy_requests.entity_attributes` expression: the request
/// with the check's tokens substituted from that entity, `proxy_entity_name` set and
/// `/<entity>` appended to the round id. An entity whose expressions fail to evaluate, or
/// whose substitution leaves a token unmatched, is skipped with a warning. Blocking.
pub fn expand_proxy(
    template: &CheckRequest,
    entities: &[Arc<Value>],
    now_unix: i64,
) -> Vec<CheckRequest> {
    let config = &template.config;
    let namespace = config.metadata.namespace.as_str();
    let check = config.metadata.name.as_str();
    let expressions = config
        .proxy_requests
        .as_ref()
        .map(|proxy| proxy.entity_attributes.as_slice())
        .unwrap_or_default();
    let matching = ENGINE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            match Engine::new(Limits::default()) {
                Ok(engine) => *slot = Some(engine),
                Err(err) => {
                    tracing::error!(%err, "cannot create the entity expression engine");
                    return Vec::new();
                }
            }
        }
        let engine = slot.as_mut().expect("engine was just created");
        entities
            .iter()
            .filter(
                |entity| match engine.entity_matches(entity, expressions, now_unix) {
                    Ok(matched) => matched,
                    Err(err) => {
                        tracing::warn!(
                            namespace,
                            check,
                            entity = %entity_name(entity),
                            %err,
                            "proxy entity_attributes failed to evaluate; entity not matched"
                        );
                        false
                    }
                },
            )
            .cloned()
            .collect::<Vec<_>>()
    });
    if matching.is_empty() {
        tracing::warn!(
            namespace,
            check,
            "no entities match the proxy check's entity_attributes"
        );
        return Vec::new();
    }
    let config_json = match serde_json::to_value(config) {
        Ok(json) => json,
        Err(err) => {
            tracing::error!(namespace, check, %err, "check does not serialize");
            return Vec::new();
        }
    };
    let mut requests = Vec::with_capacity(matching.len());
    for entity in matching {
        let name = entity_name(&entity);
        let substituted = substitute_json(&config_json, &synthesize_entity(&entity))
            .map_err(|err| err.to_string())
            .and_then(|json| {
                serde_json::from_value::<CheckConfig>(json).map_err(|err| err.to_string())
            });
        let mut proxy_config = match substituted {
            Ok(proxy_config) => proxy_config,
            Err(err) => {
                tracing::warn!(
                    namespace,
                    check,
                    entity = %name,
                    %err,
                    "cannot substitute the proxy check's tokens; skipping this entity"
                );
                continue;
            }
        };
        proxy_config.scheduler = SCHEDULER_NAME.to_owned();
        proxy_config.proxy_entity_name = name.clone();
        let request = CheckRequest {
            config: proxy_config,
            assets: template.assets.clone(),
            hooks: template.hooks.clone(),
            issued: template.issued,
            round: format!("{}/{name}", template.round),
            hook_assets: template.hook_assets.clone(),
        };
        requests.push(request);
    }
    requests
}

fn entity_name(entity: &Value) -> String {
    entity["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
