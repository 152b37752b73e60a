//! The sandboxed QuickJS engine: one runtime with a heap cap, a stack cap and an interrupt
//! handler enforcing a per-call time budget, plus one locked-down context in which filter and
//! entity expressions run (see `js/prelude.js`). JavaScript mutators get a fresh context per
//! call in the same runtime.
//!
//! QuickJS is single-threaded: an [`Engine`] is `Send` (it can be created on one thread and
//! moved to a worker) but every call takes `&mut self` or a [`Bound`] borrowed from it, so it
//! is used by one thread at a time. The intended shape is one engine per pipeline worker thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rquickjs::context::intrinsic;
use rquickjs::{CatchResultExt, CaughtError, Context, Ctx, Function, Object, Runtime};
use serde_json::Value;

use crate::synth::{synthesize_entity, synthesize_event};
use crate::ExprError;

/// The prelude run once in the filter context; see the file for what it sets up.
const PRELUDE: &str = include_str!("js/prelude.js");

/// Put in front of every filter expression. The directive makes the indirect eval strict, so
/// the expression's `var` and function declarations stay local to that evaluation; `void 0;`
/// resets the completion value, so an expression made only of declarations yields `undefined`
/// (false), as in Sensu, instead of the directive string. It ends with a newline so that
/// positions in the user's expression are only shifted by one line.
const EXPRESSION_PREFIX: &str = "\"use strict\";void 0;\n";

/// The builtins user code gets. The base objects (Object, Array, String, Math,
/// Reflect, ...) are always present; nothing here performs I/O. `Promise` is included because
/// QuickJS leaks (and asserts at teardown) when `async` functions run without it.
type Intrinsics = (
    intrinsic::Eval,
    intrinsic::RegExpCompiler,
    intrinsic::RegExp,
    intrinsic::Json,
    intrinsic::Date,
    intrinsic::Promise,
);

/// Resource limits of one [`Engine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Heap cap of the whole runtime, including the bound event.
    pub memory_bytes: usize,
    /// Maximum stack QuickJS may use, in bytes, measured from where the call starts; must
    /// stay well below the thread's stack size (0 would disable the check).
    pub stack_bytes: usize,
    /// Time budget of one call: one expression evaluation, one binding or one mutator run.
    pub timeout: Duration,
}

impl Default for Limits {
    /// 32 MiB of heap, 512 KiB of stack (tokio's blocking threads have 2 MiB), 100 ms per call.
    fn default() -> Self {
        Limits {
            memory_bytes: 32 << 20,
            stack_bytes: 512 << 10,
            timeout: Duration::from_millis(100),
        }
    }
}

/// The deadline of the call in progress, shared with the runtime's interrupt handler (which
/// QuickJS polls from inside the running script, on the same thread).
struct Budget {
    /// Origin of `deadline_nanos`.
    epoch: Instant,
    /// Nanoseconds after `epoch` at which the running call is interrupted; `u64::MAX` = none.
    deadline_nanos: AtomicU64,
    /// Set by the interrupt handler when it stopped a call, so its error reads as a timeout.
    expired: AtomicBool,
}

impl Budget {
    fn new() -> Self {
        Budget {
            epoch: Instant::now(),
            deadline_nanos: AtomicU64::new(u64::MAX),
            expired: AtomicBool::new(false),
        }
    }

    /// Called by QuickJS periodically; returning true interrupts the script.
    fn should_interrupt(&self) -> bool {
        let deadline = self.deadline_nanos.load(Ordering::Relaxed);
        if deadline == u64::MAX || self.elapsed_nanos() < deadline {
            return false;
        }
        self.expired.store(true, Ordering::Relaxed);
        true
    }

    fn elapsed_nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Starts a budget of `timeout`; it ends when the returned guard is dropped.
    fn arm(&self, timeout: Duration) -> ArmedBudget<'_> {
        let timeout = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        self.expired.store(false, Ordering::Relaxed);
        self.deadline_nanos.store(
            self.elapsed_nanos()
                .saturating_add(timeout)
                .min(u64::MAX - 1),
            Ordering::Relaxed,
        );
        ArmedBudget(self)
    }
}

/// Disarms the budget on drop, so nothing outside a call is ever interrupted.
struct ArmedBudget<'b>(&'b Budget);

impl Drop for ArmedBudget<'_> {
    fn drop(&mut self) {
        self.0.deadline_nanos.store(u64::MAX, Ordering::Relaxed);
    }
}

/// How positions reported by QuickJS map back to the user's source, which Kensa wraps.
#[derive(Clone, Copy)]
pub(crate) struct SourceMap<'s> {
    /// The user's source.
    pub(crate) source: &'s str,
    /// Lines Kensa put in front of it.
    pub(crate) lines_before: u32,
}

impl SourceMap<'_> {
    /// Translates a 1-based (line, column) in the wrapped source; positions past the end of the
    /// user's source (the parser hit Kensa's closing wrapper) point just after its last char.
    fn locate(&self, line: u32, column: u32) -> (u32, u32) {
        let lines: Vec<&str> = self.source.split('\n').collect();
        let line_count = u32::try_from(lines.len()).unwrap_or(u32::MAX);
        match line.checked_sub(self.lines_before) {
            Some(line) if line >= 1 && line <= line_count => (line, column.max(1)),
            Some(0) | None => (1, 1),
            Some(_) => {
                let last = lines.last().copied().unwrap_or_default();
                let width = u32::try_from(last.chars().count()).unwrap_or(u32::MAX - 1);
                (line_count, width + 1)
            }
        }
    }
}

/// Converts what QuickJS threw into an [`ExprError`]. Must run while the budget is still
/// armed: reading `name` and `message` of a user-made error object may run user getters.
pub(crate) fn classify(
    caught: CaughtError<'_>,
    map: SourceMap<'_>,
    timed_out: Option<Duration>,
    memory_bytes: usize,
) -> ExprError {
    if let Some(timeout) = timed_out {
        return ExprError::Timeout(timeout);
    }
    match caught {
        CaughtError::Exception(exception) => {
            let message = exception.message().unwrap_or_default();
            if message == "out of memory" {
                return ExprError::MemoryLimit(memory_bytes);
            }
            let name: String = exception
                .as_object()
                .get("name")
                .unwrap_or_else(|_| "Error".to_owned());
            let parse_position = exception.stack().as_deref().and_then(parse_position);
            match parse_position {
                Some((line, column)) if name == "SyntaxError" => {
                    let (line, column) = map.locate(line, column);
                    // QuickJS shows the end of the input as an empty token.
                    let message = match message.strip_suffix(": ''") {
                        Some(start) => format!("{start}: end of input"),
                        None => message,
                    };
                    ExprError::Syntax {
                        message,
                        line,
                        column,
                    }
                }
                _ => ExprError::Runtime {
                    message: format!("{name}: {message}"),
                },
            }
        }
        CaughtError::Value(value) if value.is_null() => ExprError::MemoryLimit(memory_bytes),
        CaughtError::Value(value) => ExprError::Runtime {
            message: format!("uncaught exception: {}", describe(&value)),
        },
        CaughtError::Error(rquickjs::Error::Allocation) => ExprError::MemoryLimit(memory_bytes),
        CaughtError::Error(error) => ExprError::Engine(error.to_string()),
    }
}

/// The position of a parse error: QuickJS reports it as a first stack frame without a function
/// name (`    at <file>:<line>:<column>`). Runtime errors have named frames
/// (`    at f (<file>:1:2)`, `    at parse (native)`), which yield `None`.
fn parse_position(stack: &str) -> Option<(u32, u32)> {
    let frame = stack.lines().next()?.trim().strip_prefix("at ")?;
    if frame.contains(' ') || frame.contains('(') {
        return None;
    }
    let mut parts = frame.rsplitn(3, ':');
    let column = parts.next()?.parse().ok()?;
    let line = parts.next()?.parse().ok()?;
    Some((line, column))
}

/// A short description of a thrown non-error value, for messages.
fn describe(value: &rquickjs::Value<'_>) -> String {
    if let Some(text) = value.as_string().and_then(|text| text.to_string().ok()) {
        return format!("{text:?}");
    }
    if let Some(number) = value.as_number() {
        return number.to_string();
    }
    if let Some(boolean) = value.as_bool() {
        return boolean.to_string();
    }
    value.type_name().to_owned()
}

/// Creates a context with Kensa's builtins in `runtime`.
pub(crate) fn new_context(runtime: &Runtime) -> Result<Context, ExprError> {
    Context::custom::<Intrinsics>(runtime).map_err(|error| engine_error(error, 0))
}

/// Maps an error from a host-side rquickjs call (no user code involved).
fn engine_error(error: rquickjs::Error, memory_bytes: usize) -> ExprError {
    match error {
        rquickjs::Error::Allocation => ExprError::MemoryLimit(memory_bytes),
        error => ExprError::Engine(error.to_string()),
    }
}

/// Rejects blank sources, which would otherwise evaluate to `undefined` silently.
pub(crate) fn reject_blank(source: &str, what: &str) -> Result<(), ExprError> {
    if source.trim().is_empty() {
        return Err(ExprError::Syntax {
            message: format!("{what} is empty"),
            line: 1,
            column: 1,
        });
    }
    Ok(())
}

/// A sandboxed JavaScript engine for filter expressions, entity expressions and mutators.
///
/// ```
/// use kensa_eval::{Engine, Limits};
/// use serde_json::json;
///
/// let mut engine = Engine::new(Limits::default()).unwrap();
/// let event = json!({"check": {"metadata": {"name": "cpu"}, "status": 2, "occurrences": 1}});
/// let bound = engine.bind_event(&event, 1_700_000_000).unwrap();
/// assert!(bound.eval_bool("event.check.occurrences == 1").unwrap());
/// assert!(bound.eval_bool("event.is_incident && event.check.name === 'cpu'").unwrap());
/// ```
pub struct Engine {
    /// Declared before `runtime`: contexts must be freed before their runtime.
    filter_context: Context,
    runtime: Runtime,
    budget: Arc<Budget>,
    /// Secret the prelude's `bind` requires, so user code cannot rebind `event`/`entity`.
    bind_token: String,
    limits: Limits,
}

impl Engine {
    /// Creates a runtime with `limits` and prepares the locked-down filter context.
    pub fn new(limits: Limits) -> Result<Engine, ExprError> {
        let runtime = Runtime::new().map_err(|error| engine_error(error, limits.memory_bytes))?;
        runtime.set_memory_limit(limits.memory_bytes);
        runtime.set_max_stack_size(limits.stack_bytes);
        let budget = Arc::new(Budget::new());
        let handler_budget = Arc::clone(&budget);
        runtime.set_interrupt_handler(Some(Box::new(move || handler_budget.should_interrupt())));
        let filter_context = new_context(&runtime)?;
        let engine = Engine {
            filter_context,
            runtime,
            budget,
            bind_token: random_token(),
            limits,
        };
        engine.run(
            &engine.filter_context,
            engine.limits.timeout,
            SourceMap {
                source: PRELUDE,
                lines_before: 0,
            },
            |ctx| {
                let install: Function = ctx.eval(PRELUDE)?;
                install.call::<_, ()>((engine.bind_token.as_str(),))
            },
        )?;
        Ok(engine)
    }

    /// The limits this engine was created with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Binds the global `event` to the synthesized form of `event` (an unwrapped Sensu event:
    /// metadata flattened, derived booleans added, see [`crate::synthesize_event`]) and
    /// `seconds_since` to `now_unix`. The event is converted once; evaluate every filter of
    /// the event through the returned [`Bound`]. The bound objects are frozen, so one
    /// expression cannot change what the next one sees.
    pub fn bind_event(&mut self, event: &Value, now_unix: i64) -> Result<Bound<'_>, ExprError> {
        self.bind("event", &synthesize_event(event), now_unix)
    }

    /// Binds the global `entity` to the synthesized form of `entity` (see
    /// [`crate::synthesize_entity`]), for proxy-request `entity_attributes` and asset `filters`.
    pub fn bind_entity(&mut self, entity: &Value, now_unix: i64) -> Result<Bound<'_>, ExprError> {
        self.bind("entity", &synthesize_entity(entity), now_unix)
    }

    /// Whether every expression is true for `entity` (Sensu's AND over `entity_attributes`
    /// or asset build `filters`; no expressions means a match). Stops at the first false one.
    pub fn entity_matches<S: AsRef<str>>(
        &mut self,
        entity: &Value,
        expressions: &[S],
        now_unix: i64,
    ) -> Result<bool, ExprError> {
        self.bind_entity(entity, now_unix)?.eval_all(expressions)
    }

    fn bind(&mut self, kind: &str, value: &Value, now_unix: i64) -> Result<Bound<'_>, ExprError> {
        let json =
            serde_json::to_string(value).map_err(|error| ExprError::Engine(error.to_string()))?;
        self.run(
            &self.filter_context,
            self.limits.timeout,
            SourceMap {
                source: "",
                lines_before: 0,
            },
            |ctx| {
                let bind: Function = internal(ctx)?.get("bind")?;
                // Unix seconds fit a JS number exactly up to 2^53.
                bind.call::<_, ()>((self.bind_token.as_str(), kind, json, now_unix as f64))
            },
        )?;
        Ok(Bound { engine: self })
    }

    /// Runs a JavaScript mutator (Sensu `type: javascript`, field `eval`).
    ///
    /// `eval` becomes the body of an immediately-invoked function, in a fresh context whose
    /// globals are `event` (the event's plain JSON, not the synthesized filter view) and one
    /// string global per `KEY=VALUE` entry of `env_vars` (entries without `=` are skipped).
    /// A returned string is the new payload; `undefined` or `null` gives the (possibly
    /// modified) global `event` as JSON; anything else is [`ExprError::BadMutatorResult`].
    /// `timeout` is the mutator's own timeout; `None` uses the engine's.
    pub fn mutate(
        &mut self,
        eval: &str,
        event: &Value,
        env_vars: &[String],
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, ExprError> {
        reject_blank(eval, "mutator eval")?;
        let event_json =
            serde_json::to_string(event).map_err(|error| ExprError::Engine(error.to_string()))?;
        let source = format!("(function () {{\n{eval}\n}})()");
        let context = new_context(&self.runtime)?;
        let output = self.run(
            &context,
            timeout.unwrap_or(self.limits.timeout),
            SourceMap {
                source: eval,
                lines_before: 1,
            },
            |ctx| {
                let globals = ctx.globals();
                for (key, value) in env_vars.iter().filter_map(|pair| pair.split_once('=')) {
                    globals.set(key, value)?;
                }
                globals.set("event", ctx.json_parse(event_json)?)?;
                let result: rquickjs::Value = ctx.eval(source)?;
                mutator_output(ctx, result)
            },
        )?;
        output.map_err(ExprError::BadMutatorResult)
    }

    /// Runs `call` in `context` under a budget of `timeout`, then lets pending promise jobs
    /// finish (under the same budget; they can only touch their own, frozen or throwaway,
    /// world) so the job queue never grows across calls.
    fn run<R>(
        &self,
        context: &Context,
        timeout: Duration,
        map: SourceMap<'_>,
        call: impl for<'js> FnOnce(&Ctx<'js>) -> rquickjs::Result<R>,
    ) -> Result<R, ExprError> {
        let armed = self.budget.arm(timeout);
        let result = context.with(|ctx| {
            call(&ctx).catch(&ctx).map_err(|caught| {
                let timed_out = self
                    .budget
                    .expired
                    .load(Ordering::Relaxed)
                    .then_some(timeout);
                classify(caught, map, timed_out, self.limits.memory_bytes)
            })
        });
        while self.runtime.is_job_pending() {
            // A failing job is the user's problem and has no one to report to.
            let _ = self.runtime.execute_pending_job();
        }
        drop(armed);
        if let Err(ExprError::MemoryLimit(_)) = result {
            self.runtime.run_gc();
        }
        result
    }
}

/// The prelude's private `__kensa` object.
fn internal<'js>(ctx: &Ctx<'js>) -> rquickjs::Result<Object<'js>> {
    ctx.globals().get("__kensa")
}

/// Interprets a mutator's return value: `Ok(Ok(bytes))`, or `Ok(Err(type))` for a bad result.
fn mutator_output<'js>(
    ctx: &Ctx<'js>,
    result: rquickjs::Value<'js>,
) -> rquickjs::Result<Result<Vec<u8>, String>> {
    if let Some(text) = result.as_string() {
        return Ok(Ok(text.to_string()?.into_bytes()));
    }
    if !result.is_undefined() && !result.is_null() {
        return Ok(Err(result.type_name().to_owned()));
    }
    let event: rquickjs::Value = ctx.globals().get("event")?;
    match ctx.json_stringify(event)? {
        Some(json) => Ok(Ok(json.to_string()?.into_bytes())),
        None => Ok(Err("an event that is not json-serializable".to_owned())),
    }
}

/// A per-engine secret for the prelude's `bind`. Not cryptographic, but seeded from the OS
/// per process and never visible to user code, which is all it must be.
fn random_token() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let high = RandomState::new().build_hasher().finish();
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(high);
    format!("{high:016x}{:016x}", hasher.finish())
}

/// An engine with a bound `event` or `entity`, borrowed for the evaluations of that value.
pub struct Bound<'e> {
    engine: &'e Engine,
}

impl Bound<'_> {
    /// Evaluates one expression as a program (its completion value counts, as in Sensu) and
    /// returns its JavaScript truthiness. Expressions run in strict mode with their own scope
    /// and a time budget of [`Limits::timeout`] each.
    ///
    /// A runtime error (ReferenceError, TypeError on `undefined`, timeout, memory limit) is
    /// returned as an error; callers count it as "no match" for allow and deny filters alike.
    pub fn eval_bool(&self, expression: &str) -> Result<bool, ExprError> {
        reject_blank(expression, "expression")?;
        let source = format!("{EXPRESSION_PREFIX}{expression}");
        let engine = self.engine;
        engine.run(
            &engine.filter_context,
            engine.limits.timeout,
            SourceMap {
                source: expression,
                lines_before: 1,
            },
            |ctx| {
                let run: Function = internal(ctx)?.get("run")?;
                run.call((source,))
            },
        )
    }

    /// Whether every expression is true (AND, stopping at the first false or failing one).
    pub fn eval_all<S: AsRef<str>>(&self, expressions: &[S]) -> Result<bool, ExprError> {
        for expression in expressions {
            if !self.eval_bool(expression.as_ref())? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_positions_come_only_from_unnamed_frames() {
        assert_eq!(parse_position("    at eval_script:2:7\n"), Some((2, 7)));
        assert_eq!(parse_position("    at <input>:1:4\n"), Some((1, 4)));
        assert_eq!(parse_position("    at <eval> (eval_script:1:39)\n"), None);
        assert_eq!(parse_position("    at parse (native)\n"), None);
    }

    #[test]
    fn positions_past_the_source_point_after_its_end() {
        let map = SourceMap {
            source: "a ==\n  b +",
            lines_before: 1,
        };
        assert_eq!(map.locate(3, 6), (2, 6));
        assert_eq!(map.locate(4, 1), (2, 6));
        assert_eq!(map.locate(1, 9), (1, 1));
    }
}
