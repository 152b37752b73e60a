//! Check execution: what the agent does with a `check_request` (reference §2.4–2.6), with the
//! weaknesses of Sensu's agent fixed (reference §8.6–8.7).
//!
//! Intake, in order, all without waiting:
//! 1. **Dedup** on `(execution key, round)` ([`RoundDedup`]): the same round delivered through
//!    several subscriptions, or re-delivered after a reconnect, runs once; any other round runs.
//!    A request without a round (an older backend) uses its `issued` time as the round.
//! 2. **In-progress guard** per execution key: a check still running is not started again.
//! 3. **Admission**: at most `max-concurrent-checks` run at once, and at most
//!    [`QUEUE_FACTOR`]× that many more wait for a slot; beyond that the request is refused with
//!    a warning (Sensu started a goroutine per request, without limit).
//!
//! Before all of these, a round-robin request read just after the agent's process did not run
//! for a while ([`FreezeWatch`]: SIGSTOP, a paused VM) is refused: its round has gone to
//! another agent meanwhile.
//!
//! Execution: token substitution of the whole check definition against the agent's
//! synthesized entity (an unmatched token is a status-3 result naming it); its runtime assets
//! installed (`assets/`; a failure, or assets with `disable-assets`, is a status-3 result
//! naming the asset and the reason); the allow-list consulted (`allow_list.rs`; a denial is a
//! status-3 result, or the check's `allow_list_on_deny_status`); the command through
//! `kensa_exec` with the environment of `exec_env.rs` (assets' `bin/` on `PATH`,
//! `<ASSET>_PATH`, then the check's `env_vars` unless the allow-list entry drops them),
//! optional stdin, and a timeout that always exists (see [`check_timeout`]); metric extraction
//! and thresholds (`metrics::process_check_output`); hooks matching the resulting status,
//! sequentially, each at most once, with their own assets and the same allow-list; then the
//! event goes to the durable outbox. Every event carries the *unsubstituted* command, so
//! substituted values (secrets in labels) are never echoed back.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kensa_proto::CheckRequest;
use kensa_types::resources::asset::Asset;
use kensa_types::resources::check::{Check, CheckConfig};
use kensa_types::resources::common::env_var_pairs;
use kensa_types::resources::entity::Entity;
use kensa_types::resources::event::Event;
use kensa_types::resources::hook::{Hook, HookConfig};
use kensa_types::ObjectMeta;
use serde_json::Value;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::allow_list::{AllowList, Verdict, CHECK_DENIED, HOOK_DENIED, ON_DENY_STATUS_ANNOTATION};
use crate::assets::{AssetManager, RuntimeAsset};
use crate::dedup::RoundDedup;
use crate::entity::unix_now;
use crate::exec_env::ExecEnv;
use crate::outbox::Outbox;

/// Requests waiting for a slot, as a multiple of `max-concurrent-checks`.
pub const QUEUE_FACTOR: usize = 4;

/// The longest a check with `timeout: 0` may run; shorter when its interval is shorter.
pub const MAX_DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The status of a result the agent could not produce by running the command (Sensu's
/// "unknown").
const FAILURE_STATUS: u32 = 3;

/// Why a request was not executed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("duplicate check request (round already executed)")]
    Duplicate,
    #[error("check execution still in progress")]
    InProgress,
    #[error("too many checks running or waiting ({0})")]
    QueueFull(usize),
    #[error("the agent is shutting down")]
    ShuttingDown,
    #[error("the agent did not run for {0:?} (stopped or paused): a round that waited meanwhile is stale")]
    Frozen(Duration),
}

/// How often the freeze watch ticks.
const FREEZE_TICK: Duration = Duration::from_millis(250);
/// A gap between ticks this long means the process did not run (SIGSTOP, a paused VM, a
/// machine too starved to run a timer).
const FREEZE: Duration = Duration::from_secs(2);
/// How long after a freeze round-robin requests count as having waited through it.
const THAW_WINDOW: Duration = Duration::from_millis(500);

/// Notices that the agent's process did not run for a while. Round-robin requests that reached
/// the agent meanwhile waited in its socket; by the time it reads them, the backend has given
/// their rounds to other agents (at their deadline), so running them would only execute the
/// rounds a second time. Those read in the moments after a freeze are refused instead: a round
/// that is still in flight then goes to another agent at once, and a refused round is never
/// lost. Subscription checks are not affected.
#[derive(Debug)]
pub struct FreezeWatch {
    state: Mutex<FreezeState>,
}

#[derive(Debug)]
struct FreezeState {
    last_seen: std::time::Instant,
    /// When the last freeze ended, and how long it was.
    thawed: Option<(std::time::Instant, Duration)>,
}

impl FreezeWatch {
    pub fn new(now: std::time::Instant) -> FreezeWatch {
        FreezeWatch {
            state: Mutex::new(FreezeState {
                last_seen: now,
                thawed: None,
            }),
        }
    }

    /// Records that the process runs at `now`; the freeze it just came out of, if any, and
    /// whether `now` is still within [`THAW_WINDOW`] of one.
    pub fn frozen_recently(&self, now: std::time::Instant) -> Option<Duration> {
        let mut state = self.state.lock().expect("freeze lock poisoned");
        let gap = now.saturating_duration_since(state.last_seen);
        if gap >= FREEZE {
            state.thawed = Some((now, gap));
        }
        state.last_seen = state.last_seen.max(now);
        state
            .thawed
            .filter(|(at, _)| now.saturating_duration_since(*at) < THAW_WINDOW)
            .map(|(_, gap)| gap)
    }

    /// Ticks until `watch` is dropped, so that a gap means the process was not running.
    async fn tick(watch: std::sync::Weak<FreezeWatch>) {
        loop {
            tokio::time::sleep(FREEZE_TICK).await;
            let Some(watch) = watch.upgrade() else {
                return;
            };
            watch.frozen_recently(std::time::Instant::now());
        }
    }
}

/// Runs check requests. Shared (`Arc`) by the session reader (which calls [`handle`]) and the
/// agent (which calls [`shutdown`]).
///
/// [`handle`]: CheckExecutor::handle
/// [`shutdown`]: CheckExecutor::shutdown
pub struct CheckExecutor {
    agent_name: String,
    outbox: Arc<Outbox>,
    entity: watch::Receiver<Arc<Entity>>,
    dedup: Mutex<RoundDedup>,
    /// Execution keys running or waiting for a slot.
    in_progress: Mutex<HashSet<String>>,
    /// Per check name, the `sequence` of its last event (from 1 for each agent process).
    sequences: Mutex<HashMap<String, i64>>,
    /// Execution slots (`max-concurrent-checks`).
    slots: Arc<Semaphore>,
    /// Requests running or waiting; bounded by `max_admitted`.
    admitted: AtomicUsize,
    max_admitted: usize,
    /// Every execution task, so shutdown can wait for them and then stop them.
    tasks: Mutex<JoinSet<()>>,
    closed: AtomicBool,
    /// Installs runtime assets; `None` with `disable-assets`.
    assets: Option<Arc<AssetManager>>,
    /// `allow-list`; `None`: every command may run.
    allow_list: Option<Arc<AllowList>>,
    /// Refuses round-robin requests that waited through a freeze of the process.
    freeze: Arc<FreezeWatch>,
}

/// Releases a request's in-progress entry and admission slot however its task ends.
struct Admission {
    executor: Arc<CheckExecutor>,
    key: String,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.executor
            .in_progress
            .lock()
            .expect("in-progress lock poisoned")
            .remove(&self.key);
        self.executor.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The timeout of a check: its own `timeout`, or when it has none (`0`, Sensu's "forever",
/// which left a hung check "in progress" for good) `min(interval, 60 s)`, or 60 s for cron
/// checks.
pub fn check_timeout(config: &CheckConfig) -> Duration {
    if config.timeout > 0 {
        return Duration::from_secs(config.timeout.into());
    }
    match config.interval {
        0 => MAX_DEFAULT_TIMEOUT,
        interval => Duration::from_secs(interval.into()).min(MAX_DEFAULT_TIMEOUT),
    }
}

impl CheckExecutor {
    pub fn new(
        agent_name: String,
        outbox: Arc<Outbox>,
        entity: watch::Receiver<Arc<Entity>>,
        max_concurrent: usize,
        assets: Option<Arc<AssetManager>>,
        allow_list: Option<Arc<AllowList>>,
    ) -> Arc<CheckExecutor> {
        let freeze = Arc::new(FreezeWatch::new(std::time::Instant::now()));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(FreezeWatch::tick(Arc::downgrade(&freeze)));
        }
        Arc::new(CheckExecutor {
            agent_name,
            outbox,
            entity,
            dedup: Mutex::new(RoundDedup::default()),
            in_progress: Mutex::new(HashSet::new()),
            sequences: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(max_concurrent)),
            admitted: AtomicUsize::new(0),
            max_admitted: max_concurrent * (1 + QUEUE_FACTOR),
            tasks: Mutex::new(JoinSet::new()),
            closed: AtomicBool::new(false),
            assets,
            allow_list,
            freeze,
        })
    }

    /// Accepts `request` for execution in the background, or says why not (already logged).
    pub fn handle(self: &Arc<Self>, request: CheckRequest) -> Result<(), Refusal> {
        let key = request.execution_key();
        let refused = |refusal: Refusal| {
            match &refusal {
                Refusal::Duplicate => {
                    tracing::debug!(check = %key, round = %request.round, "{refusal}")
                }
                _ => {
                    tracing::warn!(check = %key, round = %request.round, "check request refused: {refusal}")
                }
            }
            Err(refusal)
        };
        if self.closed.load(Ordering::Acquire) {
            return refused(Refusal::ShuttingDown);
        }
        if request.config.round_robin && !request.round.is_empty() {
            if let Some(gap) = self.freeze.frozen_recently(std::time::Instant::now()) {
                return refused(Refusal::Frozen(gap));
            }
        }
        let round = match request.round.as_str() {
            "" => format!("issued:{}", request.issued),
            round => round.to_owned(),
        };
        let first = self.dedup.lock().expect("dedup lock poisoned").first_time(
            &key,
            &round,
            tokio::time::Instant::now(),
        );
        if !first {
            return refused(Refusal::Duplicate);
        }
        {
            let mut in_progress = self.in_progress.lock().expect("in-progress lock poisoned");
            if in_progress.contains(&key) {
                drop(in_progress);
                return refused(Refusal::InProgress);
            }
            let admitted = self.admitted.fetch_add(1, Ordering::AcqRel);
            if admitted >= self.max_admitted {
                self.admitted.fetch_sub(1, Ordering::AcqRel);
                drop(in_progress);
                return refused(Refusal::QueueFull(admitted));
            }
            in_progress.insert(key.clone());
        }
        let admission = Admission {
            executor: self.clone(),
            key,
        };
        let executor = self.clone();
        let mut tasks = self.tasks.lock().expect("task lock poisoned");
        while let Some(finished) = tasks.try_join_next() {
            if let Err(err) = finished {
                if err.is_panic() {
                    tracing::error!(error = %err, "a check execution panicked");
                }
            }
        }
        tasks.spawn(async move {
            let _admission = admission;
            let Ok(_slot) = executor.slots.clone().acquire_owned().await else {
                return;
            };
            let name = request.config.metadata.name.clone();
            let event = executor.execute(request).await;
            if let Err(err) = executor.outbox.push(event).await {
                tracing::error!(check = %name, error = %err, "check result lost: not stored in the outbox");
            }
        });
        Ok(())
    }

    /// Stops accepting requests, lets running checks finish for up to `grace`, then stops the
    /// rest (their results are lost; their process groups are killed by `kensa_exec`).
    pub async fn shutdown(&self, grace: Duration) {
        self.closed.store(true, Ordering::Release);
        let mut tasks = std::mem::take(&mut *self.tasks.lock().expect("task lock poisoned"));
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                checks = tasks.len(),
                "stopping checks still running at shutdown"
            );
        }
        tasks.shutdown().await;
    }

    fn next_sequence(&self, check: &str) -> i64 {
        let mut sequences = self.sequences.lock().expect("sequence lock poisoned");
        let sequence = sequences.entry(check.to_owned()).or_insert(0);
        *sequence += 1;
        *sequence
    }

    /// Runs one request to its event (never fails: a failure is a status-3 result).
    async fn execute(&self, request: CheckRequest) -> Event {
        let entity = self.entity.borrow().clone();
        let executed = unix_now();
        let original_command = request.config.command.clone();
        let entity_json = serde_json::to_value(&*entity).expect("entities always serialize");
        let data = kensa_eval::synthesize_entity(&entity_json);
        let config = match substitute(&request.config, &data) {
            Ok(config) => config,
            Err(message) => {
                let output = format!("error while substituting check tokens: {message}");
                return self.failure(entity, &request, executed, output, FAILURE_STATUS);
            }
        };
        let mut env = ExecEnv::default();
        if !request.assets.is_empty() || !request.config.runtime_assets.is_empty() {
            let (names, assets) = (&request.config.runtime_assets, &request.assets);
            match self
                .assets_for("check", names, assets, &entity_json, &data)
                .await
            {
                Ok(assets) => env.add_assets(&assets),
                Err(output) => {
                    return self.failure(entity, &request, executed, output, FAILURE_STATUS)
                }
            }
        }
        let env_vars: Vec<(String, String)> = env_var_pairs(&config.env_vars)
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        let env = match &self.allow_list {
            None => {
                env.add_env_vars(
                    env_vars
                        .iter()
                        .map(|(name, value)| (name.as_str(), value.as_str())),
                );
                env
            }
            Some(allow_list) => match allow_list.check(&config.command, env, env_vars).await {
                Verdict::Run(env) => env,
                Verdict::Denied(why) => {
                    let status = config
                        .metadata
                        .annotations
                        .get(ON_DENY_STATUS_ANNOTATION)
                        .and_then(|status| status.trim().parse().ok())
                        .unwrap_or(FAILURE_STATUS);
                    let output = format!("{CHECK_DENIED}: {why}");
                    return self.failure(entity, &request, executed, output, status);
                }
            },
        };
        let timeout = check_timeout(&config);
        let mut check = Check::from(config);
        check.executed = executed;
        check.issued = request.issued;
        let stdin = check.stdin.then(|| stdin_json(&entity, &check));
        let spec = kensa_exec::Spec {
            command: check.command.clone(),
            env: env.into_pairs(),
            stdin,
            timeout: Some(timeout),
            output_limit: 0,
        };
        match kensa_exec::run(&spec).await {
            Ok(outcome) => {
                check.status = u32::try_from(outcome.status).unwrap_or(FAILURE_STATUS);
                check.output = outcome.output;
                check.duration = outcome.duration.as_secs_f64();
            }
            Err(err) => {
                check.status = FAILURE_STATUS;
                check.output = err.to_string();
            }
        }
        check.command = original_command;
        let mut event = self.event(entity.clone(), check, &request);
        crate::metrics::process_check_output(&mut event, unix_now());
        if let Some(check) = event.check.as_mut() {
            let hooks = self
                .run_hooks(check, &request, &entity, &entity_json, &data)
                .await;
            check.hooks = hooks;
        }
        event
    }

    /// A result the agent produced without running the command (`output` says why); it
    /// carries the request's unsubstituted definition. Logged too: never silent.
    fn failure(
        &self,
        entity: Arc<Entity>,
        request: &CheckRequest,
        executed: i64,
        output: String,
        status: u32,
    ) -> Event {
        tracing::warn!(
            check = %request.execution_key(),
            status,
            "check not executed: {output}"
        );
        let mut check = Check::from(request.config.clone());
        check.executed = executed;
        check.status = status;
        check.output = output;
        self.event(entity, check, request)
    }

    /// Installs `assets` for a check or hook (`what`) naming `names` in `runtime_assets`;
    /// the error is the result's output. A name the backend sent no asset for (it does not
    /// exist) is an error too: the command would fail later with a puzzling "not found".
    async fn assets_for(
        &self,
        what: &str,
        names: &[String],
        assets: &[Asset],
        entity: &Value,
        data: &Value,
    ) -> Result<Vec<RuntimeAsset>, String> {
        let Some(manager) = &self.assets else {
            return Err(format!(
                "{what} requested assets, but they are disabled on this agent"
            ));
        };
        if let Some(missing) = names
            .iter()
            .find(|name| !assets.iter().any(|asset| asset.metadata.name == **name))
        {
            return Err(format!(
                "error getting assets for {what}: asset {missing:?} does not exist"
            ));
        }
        manager
            .get_all(assets, entity, data, unix_now())
            .await
            .map_err(|err| format!("error getting assets for {what}: {err}"))
    }

    /// Wraps a finished check into its event.
    fn event(&self, entity: Arc<Entity>, mut check: Check, request: &CheckRequest) -> Event {
        check.issued = request.issued;
        check.processed_by = self.agent_name.clone();
        check.round = request.round.clone();
        let now = unix_now();
        let mut entity = (*entity).clone();
        entity.last_seen = now;
        Event {
            timestamp: now,
            metadata: ObjectMeta {
                namespace: entity.metadata.namespace.clone(),
                ..ObjectMeta::default()
            },
            sequence: self.next_sequence(&check.metadata.name),
            pipelines: check.pipelines.clone(),
            entity: Some(entity),
            check: Some(check),
            ..Event::default()
        }
    }

    /// Runs the hooks of every `check_hooks` entry matching the check's status, in order, each
    /// hook at most once.
    async fn run_hooks(
        &self,
        check: &Check,
        request: &CheckRequest,
        entity: &Entity,
        entity_json: &Value,
        data: &Value,
    ) -> Vec<Hook> {
        let mut ran = HashSet::new();
        let mut results = Vec::new();
        for list in &check.check_hooks {
            if !list.matches_status(check.status) {
                continue;
            }
            for name in &list.hooks {
                if ran.insert(name.as_str()) {
                    results.push(
                        self.run_hook(name, check, request, entity, entity_json, data)
                            .await,
                    );
                }
            }
        }
        results
    }

    async fn run_hook(
        &self,
        name: &str,
        check: &Check,
        request: &CheckRequest,
        entity: &Entity,
        entity_json: &Value,
        data: &Value,
    ) -> Hook {
        let executed = unix_now();
        let failed = |config: HookConfig, status: i32, output: String| Hook {
            config,
            executed,
            issued: request.issued,
            output,
            status,
            duration: 0.0,
        };
        let Some(original) = request.hooks.iter().find(|hook| hook.metadata.name == name) else {
            let config = HookConfig {
                metadata: ObjectMeta {
                    name: name.to_owned(),
                    namespace: check.metadata.namespace.clone(),
                    ..ObjectMeta::default()
                },
                ..HookConfig::default()
            };
            return failed(config, 2, format!("check hook {name:?} does not exist"));
        };
        if original.timeout == 0 {
            let message = format!("check hook {name:?} is invalid: timeout must be greater than 0");
            return failed(original.clone(), 2, message);
        }
        let hook = match substitute(original, data) {
            Ok(hook) => hook,
            Err(message) => {
                let output = format!("error while substituting hook tokens: {message}");
                return failed(original.clone(), FAILURE_STATUS as i32, output);
            }
        };
        let mut env = ExecEnv::default();
        let assets = request.hook_assets.get(name).map_or(&[][..], Vec::as_slice);
        if !assets.is_empty() || !original.runtime_assets.is_empty() {
            let names = &original.runtime_assets;
            match self
                .assets_for("hook", names, assets, entity_json, data)
                .await
            {
                Ok(assets) => env.add_assets(&assets),
                Err(output) => {
                    tracing::warn!(check = %check.metadata.name, hook = %name, "hook not executed: {output}");
                    return failed(original.clone(), FAILURE_STATUS as i32, output);
                }
            }
        }
        if let Some(allow_list) = &self.allow_list {
            match allow_list.check(&hook.command, env, Vec::new()).await {
                Verdict::Run(allowed) => env = allowed,
                Verdict::Denied(why) => {
                    let output = format!("{HOOK_DENIED}: {why}");
                    tracing::warn!(check = %check.metadata.name, hook = %name, "hook not executed: {output}");
                    return failed(original.clone(), FAILURE_STATUS as i32, output);
                }
            }
        }
        let spec = kensa_exec::Spec {
            command: hook.command.clone(),
            env: env.into_pairs(),
            stdin: hook.stdin.then(|| stdin_json(entity, check)),
            timeout: Some(Duration::from_secs(hook.timeout.into())),
            ..kensa_exec::Spec::default()
        };
        match kensa_exec::run(&spec).await {
            Ok(outcome) => Hook {
                config: original.clone(),
                duration: outcome.duration.as_secs_f64(),
                executed,
                issued: request.issued,
                output: outcome.output,
                status: outcome.status,
            },
            Err(err) => failed(original.clone(), FAILURE_STATUS as i32, err.to_string()),
        }
    }
}

/// Renders every string of `definition` against `data`; the error names the field and token.
fn substitute<T>(definition: &T, data: &Value) -> Result<T, String>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let json = serde_json::to_value(definition).map_err(|err| err.to_string())?;
    let rendered = kensa_eval::substitute_json(&json, data).map_err(|err| err.to_string())?;
    serde_json::from_value(rendered)
        .map_err(|err| format!("substituted definition is invalid: {err}"))
}

/// What a check or hook with `stdin: true` reads: the event so far (entity and check).
fn stdin_json(entity: &Entity, check: &Check) -> Vec<u8> {
    let event = Event {
        entity: Some(entity.clone()),
        check: Some(check.clone()),
        metadata: ObjectMeta {
            namespace: entity.metadata.namespace.clone(),
            ..ObjectMeta::default()
        },
        ..Event::default()
    };
    serde_json::to_vec(&event).expect("events always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freeze_makes_the_requests_read_just_after_it_stale() {
        use std::time::Instant;
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let watch = FreezeWatch::new(start);
        // Ticking along: never frozen.
        for ms in (250..=2_000).step_by(250) {
            assert_eq!(watch.frozen_recently(at(ms)), None, "{ms} ms");
        }
        // Not run for 8 s (SIGSTOP): what is read right after is stale, for a moment.
        assert_eq!(
            watch.frozen_recently(at(10_000)),
            Some(Duration::from_secs(8))
        );
        assert_eq!(
            watch.frozen_recently(at(10_300)),
            Some(Duration::from_secs(8))
        );
        assert_eq!(watch.frozen_recently(at(10_600)), None);
        // A gap just short of the threshold is not a freeze.
        assert_eq!(watch.frozen_recently(at(12_500)), None);
    }

    #[test]
    fn every_check_gets_a_timeout() {
        let cases = [
            // (timeout, interval, expected seconds)
            (30, 10, 30),
            (0, 10, 10),
            (0, 300, 60),
            (0, 0, 60),
        ];
        for (timeout, interval, expected) in cases {
            let config = CheckConfig {
                timeout,
                interval,
                ..CheckConfig::default()
            };
            assert_eq!(
                check_timeout(&config),
                Duration::from_secs(expected),
                "timeout {timeout}, interval {interval}"
            );
        }
    }

    #[test]
    fn substitution_names_the_unmatched_token() {
        let data = serde_json::json!({"name": "web1", "labels": {"disk": "70"}});
        let config = CheckConfig {
            command: "check -w {{ .labels.disk }} {{ .name }}".into(),
            ..CheckConfig::default()
        };
        assert_eq!(
            substitute(&config, &data).unwrap().command,
            "check -w 70 web1"
        );
        let config = CheckConfig {
            command: "check {{ .labels.missing }}".into(),
            ..CheckConfig::default()
        };
        let err = substitute(&config, &data).unwrap_err();
        assert_eq!(err, "command: unmatched token: {{ .labels.missing }}");
    }
}
