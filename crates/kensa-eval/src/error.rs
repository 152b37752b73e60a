//! The error of every JavaScript operation in this crate: validating, binding, evaluating and
//! mutating. Callers tell the kinds apart to pick a log level and a metric label; the
//! pipeline treats every kind as "no match" (see the crate documentation).

use std::time::Duration;

/// Why a JavaScript expression, binding or mutator failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    /// The source does not parse. Positions are 1-based and refer to the source as the user
    /// wrote it (the wrappers Kensa adds are accounted for).
    #[error("syntax error at line {line}, column {column}: {message}")]
    Syntax {
        /// The parser's message, e.g. `unexpected token in expression: ')'`.
        message: String,
        /// 1-based line in the user's source.
        line: u32,
        /// 1-based column in the user's source.
        column: u32,
    },
    /// The code threw, e.g. `TypeError: cannot read property 'bar' of undefined`.
    #[error("runtime error: {message}")]
    Runtime {
        /// `Name: message` of the thrown error, or the thrown value.
        message: String,
    },
    /// The evaluation ran past its time budget and was interrupted.
    #[error("evaluation timed out after {0:?}")]
    Timeout(Duration),
    /// The engine's heap limit was reached. (An uncaught `throw null` is reported as this
    /// too: QuickJS throws `null` when it cannot even allocate the out-of-memory error.)
    #[error("memory limit of {0} bytes exceeded")]
    MemoryLimit(usize),
    /// A JavaScript mutator returned something other than a string, null or undefined.
    #[error("bad mutator result: expected a string, null or undefined, got {0}")]
    BadMutatorResult(String),
    /// The engine itself failed (creating a runtime, converting a value); not the user's fault.
    #[error("javascript engine error: {0}")]
    Engine(String),
}

impl ExprError {
    /// The position of a syntax error as `(line, column)`, both 1-based.
    pub fn position(&self) -> Option<(u32, u32)> {
        match self {
            ExprError::Syntax { line, column, .. } => Some((*line, *column)),
            _ => None,
        }
    }

    /// A short, stable name of the kind, meant for metric labels and structured logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ExprError::Syntax { .. } => "syntax",
            ExprError::Runtime { .. } => "runtime",
            ExprError::Timeout(_) => "timeout",
            ExprError::MemoryLimit(_) => "memory_limit",
            ExprError::BadMutatorResult(_) => "bad_mutator_result",
            ExprError::Engine(_) => "engine",
        }
    }
}
