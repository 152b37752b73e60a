//! Event pipelines (reference §3.7): resolve an event's legacy handlers and `Pipeline`
//! references into workflows, run filters, mutators and handlers, and report what happened.
//!
//! The shape of one [`Pipelines::process`] call:
//!
//! 1. `workflow.rs` builds the workflows, resolving every filter, mutator and handler once
//!    through the [`Resolver`] (the backend's in-memory view — never the store).
//! 2. `filter.rs` settles what needs no JavaScript; the stored filters whose expressions still
//!    matter are decided natively when every expression is a plain comparison
//!    (`expression.rs`, exactly JavaScript's answer), and the rest are evaluated in ONE job on
//!    the JavaScript threads (`eval_pool.rs`), which bind the redacted event once.
//! 3. The workflows then run concurrently: filters in order (the first that stops the event
//!    wins), the mutator (`mutator.rs`), the handler (`handler.rs`). Mutator and handler run
//!    under a permit of a semaphore shared by all events, so at most
//!    [`Settings::handler_concurrency`] of them run at once; the others wait for a permit.
//!
//! Dropping the `process` future cancels the event: running commands are killed with their
//! process group (kensa-exec does that).
//!
//! Logging: nothing per event at info; failures at warn with the event key
//! (`namespace/entity/check`) and the handler.

mod eval_pool;
mod expression;
mod field;
mod filter;
mod handler;
mod mutator;
mod workflow;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kensa_types::resources::entity::redact_entity_json;
use kensa_types::resources::event::Event;
use kensa_types::resources::filter::EventFilter;
use kensa_types::resources::handler::Handler;
use kensa_types::resources::mutator::Mutator;
use kensa_types::resources::pipeline::Pipeline;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::eval_pool::{EvalPool, FilterVerdict};
use crate::expression::EventView;
use crate::filter::StaticDecision;
use crate::workflow::{ResolvedFilter, Workflow, WorkflowFilter, WorkflowHandler};

pub use crate::mutator::PIPE_MUTATOR_OUTPUT_LIMIT;
pub use crate::workflow::{LEGACY_PIPELINE, MAX_HANDLER_SET_DEPTH};

/// Where the pipeline finds resources: the backend's in-memory view (never the store).
pub trait Resolver: Send + Sync + 'static {
    fn handler(&self, namespace: &str, name: &str) -> Option<Arc<Handler>>;
    fn filter(&self, namespace: &str, name: &str) -> Option<Arc<EventFilter>>;
    fn mutator(&self, namespace: &str, name: &str) -> Option<Arc<Mutator>>;
    fn pipeline(&self, namespace: &str, name: &str) -> Option<Arc<Pipeline>>;
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// At most this many handler executions at once (across all events).
    pub handler_concurrency: usize,
    /// Threads evaluating JavaScript filters and mutators (one engine each).
    pub eval_threads: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            handler_concurrency: 64,
            eval_threads: 2,
        }
    }
}

/// Events whose JSON is larger than this always have their filters run in JavaScript (never
/// decided natively), so the engine's heap and time limits keep applying to them.
const NATIVE_EVENT_BYTES: usize = 1 << 20;

/// What happened to one workflow (one handler) for one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `legacy-pipeline` for the legacy `handlers` path, else the Pipeline's name.
    pub pipeline: String,
    pub handler: String,
    /// Handler type (`pipe`, `tcp`, `udp`), for metrics labels.
    pub handler_type: String,
    pub result: OutcomeResult,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutcomeResult {
    /// The handler ran and succeeded (pipe: exit 0).
    Handled,
    /// A filter stopped the workflow.
    Filtered { filter: String },
    /// The mutator or handler failed; the reason names it.
    Failed { reason: String },
}

/// One JavaScript expression that raised an error (treated as "no match").
#[derive(Debug, Clone, PartialEq)]
pub struct ExpressionError {
    pub filter: String,
    pub expression: String,
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
    pub expression_errors: Vec<ExpressionError>,
}

/// Runs events through their pipelines. Cheap to share (`Arc`).
pub struct Pipelines {
    resolver: Arc<dyn Resolver>,
    /// The JavaScript threads; they stop when this is dropped.
    eval: EvalPool,
    /// Permits for mutator + handler runs, shared by every event: bounds the processes and
    /// connections the pipeline has open at once.
    handler_slots: Arc<Semaphore>,
}

impl Pipelines {
    /// Starts `settings.eval_threads` JavaScript threads (at least one).
    pub fn new(resolver: Arc<dyn Resolver>, settings: Settings) -> Pipelines {
        Pipelines {
            resolver,
            eval: EvalPool::new(settings.eval_threads, kensa_eval::Limits::default()),
            handler_slots: Arc::new(Semaphore::new(settings.handler_concurrency.max(1))),
        }
    }

    /// Runs every workflow of `event`; returns when all handlers finished (or timed out).
    pub async fn process(&self, event: Arc<Event>) -> Report {
        let started = Instant::now();
        let ctx = EventContext::new(event);
        let workflows = workflow::workflows(&*self.resolver, &ctx);
        if workflows.is_empty() {
            return Report::default();
        }
        let now = now_unix();
        let (verdicts, expression_errors) = self.evaluate_filters(&ctx, &workflows, now).await;
        let runs = workflows
            .iter()
            .map(|workflow| self.run_workflow(&ctx, workflow, &verdicts, now, started));
        let outcomes = futures::future::join_all(runs).await;
        Report {
            outcomes,
            expression_errors,
        }
    }

    /// Runs the expressions of every stored filter a workflow may reach (all in one job, the
    /// event bound once). Returns the verdicts by filter name and the failed expressions.
    async fn evaluate_filters(
        &self,
        ctx: &EventContext,
        workflows: &[Workflow],
        now: i64,
    ) -> (BTreeMap<String, FilterVerdict>, Vec<ExpressionError>) {
        let mut needed: BTreeMap<String, Arc<EventFilter>> = BTreeMap::new();
        for workflow in workflows {
            for filter in &workflow.filters {
                match step(filter, &ctx.event, now) {
                    Step::Pass => {}
                    // Later filters of this workflow cannot matter.
                    Step::Stop => break,
                    Step::Eval(stored) => {
                        needed.entry(filter.name.clone()).or_insert(stored);
                    }
                }
            }
        }
        if needed.is_empty() {
            return (BTreeMap::new(), Vec::new());
        }
        // Filters whose expressions are plain comparisons are decided here, exactly as
        // JavaScript would (`expression.rs`), mostly without even building the event as JSON;
        // only the others make the trip to the JavaScript threads. Events that are very large
        // (or do not serialize) always go there, so its limits and failures apply as before.
        let native = ctx
            .json()
            .is_ok_and(|json| json.len() <= NATIVE_EVENT_BYTES);
        let view = EventView::new(&ctx.event);
        let mut verdicts: BTreeMap<String, FilterVerdict> = BTreeMap::new();
        let mut for_javascript: Vec<(String, Arc<EventFilter>)> = Vec::new();
        for (name, filter) in needed {
            let decided = native
                .then(|| eval_pool::decide_without_javascript(&filter, &view))
                .flatten();
            match decided {
                Some(verdict) => {
                    verdicts.insert(name, verdict);
                }
                None => for_javascript.push((name, filter)),
            }
        }
        if !for_javascript.is_empty() {
            let (names, filters): (Vec<String>, Vec<Arc<EventFilter>>) =
                for_javascript.into_iter().unzip();
            let evaluated = self.eval.filters(view.into_redacted(), now, filters).await;
            verdicts.extend(names.into_iter().zip(evaluated));
        }
        let mut errors = Vec::new();
        for (filter, verdict) in &verdicts {
            for (expression, error) in &verdict.errors {
                tracing::warn!(
                    event = %ctx.key,
                    filter = %filter,
                    expression = %expression,
                    %error,
                    "filter expression failed; counted as no match"
                );
                errors.push(ExpressionError {
                    filter: filter.clone(),
                    expression: expression.clone(),
                    error: error.to_string(),
                });
            }
        }
        (verdicts, errors)
    }

    async fn run_workflow(
        &self,
        ctx: &EventContext,
        workflow: &Workflow,
        verdicts: &BTreeMap<String, FilterVerdict>,
        now: i64,
        started: Instant,
    ) -> Outcome {
        let result = self.workflow_result(ctx, workflow, verdicts, now).await;
        if let OutcomeResult::Failed { reason } = &result {
            tracing::warn!(
                event = %ctx.key,
                pipeline = %workflow.pipeline,
                handler = %workflow.handler.name(),
                %reason,
                "event not handled"
            );
        }
        Outcome {
            pipeline: workflow.pipeline.clone(),
            handler: workflow.handler.name().to_owned(),
            handler_type: workflow.handler.handler_type().to_owned(),
            result,
            duration: started.elapsed(),
        }
    }

    async fn workflow_result(
        &self,
        ctx: &EventContext,
        workflow: &Workflow,
        verdicts: &BTreeMap<String, FilterVerdict>,
        now: i64,
    ) -> OutcomeResult {
        for filter in &workflow.filters {
            let goes_on = match step(filter, &ctx.event, now) {
                Step::Pass => true,
                Step::Stop => false,
                // No verdict only if the filter was never sent, which `evaluate_filters` rules
                // out; count it as a failed evaluation.
                Step::Eval(stored) => filter::verdict_decision(
                    &stored,
                    verdicts.get(&filter.name).is_some_and(|v| v.matched),
                ),
            };
            if !goes_on {
                if let ResolvedFilter::Unavailable(reason) = &filter.resolved {
                    tracing::warn!(
                        event = %ctx.key,
                        pipeline = %workflow.pipeline,
                        handler = %workflow.handler.name(),
                        %reason,
                        "filter unavailable; workflow filtered"
                    );
                }
                return OutcomeResult::Filtered {
                    filter: filter.name.clone(),
                };
            }
        }
        let handler = match &workflow.handler {
            WorkflowHandler::Found(handler) => handler,
            WorkflowHandler::Unavailable { reason, .. } => {
                return OutcomeResult::Failed {
                    reason: reason.clone(),
                }
            }
        };
        let Ok(_permit) = self.handler_slots.acquire().await else {
            return OutcomeResult::Failed {
                reason: "pipeline is shutting down".to_owned(),
            };
        };
        let payload = match mutator::mutate(&workflow.mutator, ctx, &self.eval).await {
            Ok(payload) => payload,
            Err(reason) => return OutcomeResult::Failed { reason },
        };
        match handler::handle(handler, &payload, &ctx.key).await {
            Ok(()) => OutcomeResult::Handled,
            Err(reason) => OutcomeResult::Failed { reason },
        }
    }
}

/// What one filter of a workflow does to the event, before JavaScript runs.
enum Step {
    Pass,
    Stop,
    /// A stored filter whose expressions decide.
    Eval(Arc<EventFilter>),
}

fn step(filter: &WorkflowFilter, event: &Event, now: i64) -> Step {
    let decision = match &filter.resolved {
        ResolvedFilter::BuiltIn(built_in) => filter::built_in_decision(*built_in, event),
        ResolvedFilter::Unavailable(_) => StaticDecision::Stop,
        ResolvedFilter::Stored(stored) => match filter::static_decision(stored, now) {
            StaticDecision::NeedsEval => return Step::Eval(Arc::clone(stored)),
            decided => decided,
        },
    };
    match decision {
        StaticDecision::Pass => Step::Pass,
        StaticDecision::Stop | StaticDecision::NeedsEval => Step::Stop,
    }
}

/// One event being processed, with its serialized forms computed at most once.
pub(crate) struct EventContext {
    pub(crate) event: Arc<Event>,
    /// The namespace resources are resolved in.
    pub(crate) namespace: String,
    /// `namespace/entity/check`, for logs.
    pub(crate) key: String,
    /// The event as JSON bytes (the `json` mutator's payload, pipe mutators' stdin).
    json: OnceLock<Result<Arc<Vec<u8>>, String>>,
    /// The event as a JSON value (JavaScript mutators' `event`).
    value: OnceLock<Result<Arc<Value>, String>>,
}

impl EventContext {
    fn new(event: Arc<Event>) -> EventContext {
        let entity = event.entity.as_ref();
        let namespace = [
            event.metadata.namespace.as_str(),
            entity.map_or("", |entity| entity.metadata.namespace.as_str()),
            event
                .check
                .as_ref()
                .map_or("", |check| check.metadata.namespace.as_str()),
        ]
        .into_iter()
        .find(|namespace| !namespace.is_empty())
        .unwrap_or_default()
        .to_owned();
        let key = format!(
            "{namespace}/{}/{}",
            entity.map_or("", |entity| entity.metadata.name.as_str()),
            event
                .check
                .as_ref()
                .map_or("", |check| check.metadata.name.as_str()),
        );
        EventContext {
            event,
            namespace,
            key,
            json: OnceLock::new(),
            value: OnceLock::new(),
        }
    }

    pub(crate) fn json(&self) -> Result<Arc<Vec<u8>>, String> {
        self.json
            .get_or_init(|| {
                serde_json::to_vec(&*self.event)
                    .map(Arc::new)
                    .map_err(|err| format!("could not serialize the event: {err}"))
            })
            .clone()
    }

    pub(crate) fn value(&self) -> Result<Arc<Value>, String> {
        self.value
            .get_or_init(|| {
                serde_json::to_value(&*self.event)
                    .map(Arc::new)
                    .map_err(|err| format!("could not serialize the event: {err}"))
            })
            .clone()
    }
}

/// The event as filters see it: its entity's redacted labels and annotations hidden. (A
/// serialization failure gives `null`, on which every expression fails: fail closed.)
pub(crate) fn redacted_json(event: &Event) -> Value {
    let mut value = serde_json::to_value(event).unwrap_or(Value::Null);
    if let Some(entity) = value.get_mut("entity") {
        redact_entity_json(entity);
    }
    value
}

/// `KEY=VALUE` entries as pairs; entries without `=` are skipped.
pub(crate) fn env_pairs(env_vars: &[String]) -> Vec<(String, String)> {
    env_vars
        .iter()
        .filter_map(|entry| entry.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// The first non-blank line of a command's output, shortened, for failure reasons.
pub(crate) fn first_line(output: &str) -> String {
    const MAX_CHARS: usize = 200;
    let line = output
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("(no output)");
    if line.chars().count() > MAX_CHARS {
        let cut: String = line.chars().take(MAX_CHARS).collect();
        format!("{cut}…")
    } else {
        line.to_owned()
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}
