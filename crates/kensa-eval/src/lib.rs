//! Kensa's pure evaluators: everything user-supplied that Kensa *evaluates* rather than stores.
//!
//! - **JavaScript expressions** ([`Engine`]): Sensu event-filter expressions over a bound
//!   `event`, proxy-request `entity_attributes` and asset `filters` over a bound `entity`, and
//!   JavaScript mutators, in a sandboxed QuickJS (via `rquickjs`) with a heap cap, a stack cap
//!   and a per-call time budget. [`validate_expression`] and [`validate_mutator`] are the
//!   parse-only checks to run when a resource is created.
//! - **Token substitution** ([`render`], [`substitute_json`]): Sensu's subset of Go templates
//!   (`{{ .labels.disk | default 80 }}`) over a synthesized entity ([`synthesize_entity`]).
//!
//! Invariants: no I/O, no async, no clock. The current time is an argument (`now_unix`), and
//! the JavaScript sandbox has no I/O globals at all (no `console`, `require`, timers, modules
//! or `fetch`; QuickJS only gets them from `quickjs-libc`, which is not linked).
//!
//! # Error policy
//!
//! **A runtime error counts as no match, for allow and deny filters alike; it is reported by
//! the caller as a log line and a metric.** [`Bound::eval_bool`] returns the error instead of
//! deciding (with [`ExprError::kind`] as the metric label). "No match" means: in an `allow`
//! filter the failing expression is not true, so the event does not pass; in a `deny` filter
//! it is not true either, so it does not drop the event. Sensu instead logs and skips a failing
//! expression; Kensa prefers the failure to be visible and to err on the side of not
//! handling. Entity expressions follow the same rule: an entity whose expression fails is not
//! matched. Guarding optional fields is the user's job: `event.entity.labels.team == 'x'` is
//! simply false when the label is missing, `event.foo.bar` is a TypeError.
//!
//! # JavaScript environment
//!
//! - `event`: the event with metadata flattened into every object (`event.check.name`,
//!   `event.entity.labels.x`, `event.namespace`; `metadata` itself is kept), labels and
//!   annotations never null, plus `has_check`, `has_metrics`, `is_incident`, `is_resolution`,
//!   `is_silenced`, `is_flapping_start`, `is_flapping_end` (see [`EventFacts`]). JSON numbers
//!   are JS numbers, so `event.check.occurrences % 60 == 0` works.
//! - `entity`: the synthesized entity, in entity expressions.
//! - `hour(t)`, `minute(t)`, `second(t)`, `weekday(t)` (Sunday = 0): UTC fields of Unix
//!   seconds `t`; `seconds_since(t)`: bound `now_unix - t`. A missing or non-numeric `t` is 0.
//! - Expressions run as strict-mode programs: the completion value is the result, `var`s are
//!   local to one evaluation, and everything shared (globals, builtins, the bound value) is
//!   frozen, so nothing leaks from one evaluation, event or namespace to the next. Sloppy-only
//!   syntax (`with`, legacy octal literals) is rejected at validation.
//!
//! # Threads and cost
//!
//! An [`Engine`] is `Send` but used by one thread at a time (`&mut self`); give each pipeline
//! worker thread its own engine. Creating one costs a few milliseconds (the builtins are
//! frozen one by one), binding an event tens of microseconds (one JSON conversion), and each
//! evaluation a few microseconds (one short parse and run). `examples/eval_cost.rs` measures.
//!
//! # Code map
//!
//! - `engine.rs`: [`Engine`], [`Limits`], [`Bound`]; the budget/interrupt plumbing and the
//!   translation of QuickJS exceptions into [`ExprError`]. Start here.
//! - `js/prelude.js`: what the filter context contains and how it is locked down.
//! - `validate.rs`: the parse-only checks.
//! - `synth.rs`: the flattened event/entity views and [`EventFacts`].
//! - `token/`: the template parser (`parse.rs`) and its evaluation and printing (`mod.rs`).

mod engine;
mod error;
mod synth;
mod token;
mod validate;

pub use engine::{Bound, Engine, Limits};
pub use error::ExprError;
pub use synth::{synthesize_entity, synthesize_event, EventFacts};
pub use token::{asset_path_variable, render, substitute_json, TokenError};
pub use validate::{validate_expression, validate_mutator};
