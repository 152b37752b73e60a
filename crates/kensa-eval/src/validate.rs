//! Parse-only checks run when a filter, check (`proxy_requests.entity_attributes`), asset
//! (`filters`) or mutator (`eval`) is created or updated, so that an invalid expression is
//! rejected with its position instead of failing every evaluation later.
//!
//! Nothing is executed: the source is compiled as an ES module (QuickJS's only compile-only
//! entry point), which parses in strict mode exactly as evaluation does. A second parse
//! inside a block rejects what only a module accepts at its top level (`import`, `export`).

use rquickjs::{CatchResultExt, Module, Runtime};

use crate::engine::{classify, new_context, reject_blank, Limits, SourceMap};
use crate::ExprError;

/// Checks that `expression` parses as a filter or entity expression (a program whose
/// completion value is the result). Returns the first syntax error with its 1-based position.
pub fn validate_expression(expression: &str) -> Result<(), ExprError> {
    reject_blank(expression, "expression")?;
    // The plain parse gives the best messages (no wrapper in sight); a module-only construct
    // fails it with a load error instead, which the block parse turns into a syntax error.
    match parse(expression, expression, 0) {
        Err(error @ ExprError::Syntax { .. }) => Err(error),
        plain => parse(expression, &format!("{{\n{expression}\n}}"), 1).and(plain),
    }
}

/// Checks that `eval` parses as the body of a JavaScript mutator (a function body, so
/// `return` is allowed).
pub fn validate_mutator(eval: &str) -> Result<(), ExprError> {
    reject_blank(eval, "mutator eval")?;
    parse(eval, &format!("function mutator() {{\n{eval}\n}}"), 1)
}

/// Compiles `wrapped` (the user's `source` behind `lines_before` lines of Kensa's wrapper)
/// without running it, in a throwaway runtime: compiled modules stay registered in their
/// context until it is dropped.
fn parse(source: &str, wrapped: &str, lines_before: u32) -> Result<(), ExprError> {
    let limits = Limits::default();
    let runtime = Runtime::new().map_err(|error| ExprError::Engine(error.to_string()))?;
    runtime.set_memory_limit(limits.memory_bytes);
    runtime.set_max_stack_size(limits.stack_bytes);
    let context = new_context(&runtime)?;
    context.with(|ctx| {
        Module::declare(ctx.clone(), "expression", wrapped)
            .map(drop)
            .catch(&ctx)
            .map_err(|caught| {
                let map = SourceMap {
                    source,
                    lines_before,
                };
                classify(caught, map, None, limits.memory_bytes)
            })
    })
}
