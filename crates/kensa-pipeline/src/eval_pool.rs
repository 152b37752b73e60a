//! The threads that run JavaScript for the pipeline: filter expressions and JavaScript
//! mutators. A QuickJS engine is used by one thread at a time and costs milliseconds to
//! create, so each of a few dedicated threads owns one engine for its whole life, and async
//! code talks to them through a bounded job queue with a oneshot reply per job.
//!
//! An event's filters travel as ONE job: the worker binds the (redacted) event once and runs
//! every expression of every filter against that binding.
//!
//! When the queue is full, `send` waits: event processing slows down to the speed of the
//! JavaScript threads instead of buffering without bound. The threads stop when the
//! [`EvalPool`] (the only sender) is dropped.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kensa_eval::{Engine, ExprError, Limits};
use kensa_types::resources::filter::{EventFilter, ACTION_DENY};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::expression::{EventView, Expression};

/// Queued jobs per thread before senders wait.
const QUEUE_PER_THREAD: usize = 64;

/// What the expressions of one filter said about one event.
#[derive(Debug, Clone)]
pub(crate) struct FilterVerdict {
    /// allow: every expression was true; deny: at least one was. A failing expression is
    /// "no match": it is not true, in both cases.
    pub matched: bool,
    /// `(expression, error)` for each expression that failed.
    pub errors: Vec<(String, ExprError)>,
}

enum Job {
    Filters {
        /// The event as JSON, entity redacted.
        event: Value,
        now_unix: i64,
        filters: Vec<Arc<EventFilter>>,
        reply: oneshot::Sender<Vec<FilterVerdict>>,
    },
    Mutate {
        eval: String,
        event: Arc<Value>,
        env_vars: Vec<String>,
        timeout: Option<Duration>,
        reply: oneshot::Sender<Result<Vec<u8>, ExprError>>,
    },
}

/// Handle on the JavaScript threads; dropping it stops them once the queue is drained.
pub(crate) struct EvalPool {
    jobs: mpsc::Sender<Job>,
}

impl EvalPool {
    pub(crate) fn new(threads: usize, limits: Limits) -> EvalPool {
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::channel(threads * QUEUE_PER_THREAD);
        // Idle workers take turns waiting on the queue; the lock is never held while a job runs.
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..threads {
            let queue = Arc::clone(&queue);
            let limits = limits.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("kensa-js-{index}"))
                .spawn(move || worker(&queue, &limits));
            if let Err(err) = spawned {
                tracing::error!(%err, "could not start a javascript thread");
            }
        }
        EvalPool { jobs }
    }

    /// Evaluates every filter's expressions against `event`, bound once; one verdict per
    /// filter, in order. When the threads are gone, every expression counts as failed.
    pub(crate) async fn filters(
        &self,
        event: Value,
        now_unix: i64,
        filters: Vec<Arc<EventFilter>>,
    ) -> Vec<FilterVerdict> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Filters {
            event,
            now_unix,
            filters: filters.clone(),
            reply,
        };
        let verdicts = match self.jobs.send(job).await {
            Ok(()) => answer.await.ok(),
            Err(_) => None,
        };
        verdicts.unwrap_or_else(|| {
            let error = unavailable();
            filters
                .iter()
                .map(|filter| verdict_of_error(filter, &error))
                .collect()
        })
    }

    /// Runs a JavaScript mutator (see [`Engine::mutate`]).
    pub(crate) async fn mutate(
        &self,
        eval: String,
        event: Arc<Value>,
        env_vars: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, ExprError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Mutate {
            eval,
            event,
            env_vars,
            timeout,
            reply,
        };
        self.jobs.send(job).await.map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())?
    }
}

fn unavailable() -> ExprError {
    ExprError::Engine("javascript threads are unavailable".to_owned())
}

/// The verdict when no expression could run.
fn verdict_of_error(filter: &EventFilter, error: &ExprError) -> FilterVerdict {
    FilterVerdict {
        matched: false,
        errors: filter
            .expressions
            .iter()
            .map(|expression| (expression.clone(), error.clone()))
            .collect(),
    }
}

/// One JavaScript thread: takes jobs until the pool is dropped. The engine is created on first
/// use and recreated after a panic (its state is then unknown).
fn worker(queue: &Mutex<mpsc::Receiver<Job>>, limits: &Limits) {
    let mut engine: Option<Engine> = None;
    loop {
        let job = queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .blocking_recv();
        let Some(job) = job else {
            return;
        };
        if engine.is_none() {
            match Engine::new(limits.clone()) {
                Ok(created) => engine = Some(created),
                Err(error) => {
                    tracing::error!(%error, "could not create a javascript engine");
                    fail_job(job, &error);
                    continue;
                }
            }
        }
        let Some(ready) = engine.as_mut() else {
            continue;
        };
        // On a panic the job (and its reply sender) is dropped: the caller sees the threads as
        // unavailable for that job only.
        if catch_unwind(AssertUnwindSafe(|| run_job(ready, job))).is_err() {
            tracing::error!("javascript evaluation panicked; recreating the engine");
            engine = None;
        }
    }
}

fn fail_job(job: Job, error: &ExprError) {
    match job {
        Job::Filters { filters, reply, .. } => {
            let verdicts = filters
                .iter()
                .map(|filter| verdict_of_error(filter, error))
                .collect();
            let _ = reply.send(verdicts);
        }
        Job::Mutate { reply, .. } => {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

fn run_job(engine: &mut Engine, job: Job) {
    match job {
        Job::Filters {
            event,
            now_unix,
            filters,
            reply,
        } => {
            let verdicts = match engine.bind_event(&event, now_unix) {
                Ok(bound) => filters
                    .iter()
                    .map(|filter| evaluate_filter(filter, |e| bound.eval_bool(e)))
                    .collect(),
                Err(error) => filters
                    .iter()
                    .map(|filter| verdict_of_error(filter, &error))
                    .collect(),
            };
            // The caller may have gone (its event was cancelled): nothing to do then.
            let _ = reply.send(verdicts);
        }
        Job::Mutate {
            eval,
            event,
            env_vars,
            timeout,
            reply,
        } => {
            let _ = reply.send(engine.mutate(&eval, &event, &env_vars, timeout));
        }
    }
}

/// The verdict of `filter` for `event` when every expression it evaluates can
/// be decided without JavaScript (see `expression.rs`), else `None` (the filter then goes to
/// the JavaScript threads whole). Uses [`evaluate_filter`], so allow/deny and short-circuiting
/// are the same as on those threads; decided expressions never fail.
pub(crate) fn decide_without_javascript(
    filter: &EventFilter,
    event: &EventView<'_>,
) -> Option<FilterVerdict> {
    let mut undecided = false;
    let verdict = evaluate_filter(filter, |source| {
        match Expression::parse(source).and_then(|expression| expression.decide(event)) {
            Some(value) => Ok(value),
            None => {
                // The verdict is discarded; any value lets evaluate_filter finish.
                undecided = true;
                Ok(false)
            }
        }
    });
    (!undecided).then_some(verdict)
}

/// allow: AND, stopping at the first expression that is false or fails. deny: OR, stopping at
/// the first true one; a failing expression is skipped (it did not match).
fn evaluate_filter(
    filter: &EventFilter,
    mut eval: impl FnMut(&str) -> Result<bool, ExprError>,
) -> FilterVerdict {
    let deny = filter.action == ACTION_DENY;
    let mut errors = Vec::new();
    for expression in &filter.expressions {
        let result = eval(expression);
        let is_true = match result {
            Ok(value) => value,
            Err(error) => {
                errors.push((expression.clone(), error));
                false
            }
        };
        if deny && is_true {
            return FilterVerdict {
                matched: true,
                errors,
            };
        }
        if !deny && !is_true {
            return FilterVerdict {
                matched: false,
                errors,
            };
        }
    }
    // allow: every expression was true; deny: none was.
    FilterVerdict {
        matched: !deny,
        errors,
    }
}
