//! Mutators: what turns an event into the bytes a handler receives. `json` (also the default)
//! and `only_check_output` are built in; stored mutators are `pipe` (a command: event JSON on
//! stdin, its stdout is the payload) or `javascript` (run on the eval threads).
//!
//! Errors are the `Failed` reason of the workflow, so they name the mutator.

use std::sync::Arc;
use std::time::Duration;

use kensa_types::resources::mutator::Mutator;

use crate::eval_pool::EvalPool;
use crate::workflow::WorkflowMutator;
use crate::{env_pairs, first_line, EventContext};

/// The largest payload a pipe mutator may produce; more is an error, not a silently cut event.
pub const PIPE_MUTATOR_OUTPUT_LIMIT: usize = 16 * 1024 * 1024;

/// The payload for the handler.
pub(crate) async fn mutate(
    mutator: &WorkflowMutator,
    ctx: &EventContext,
    eval: &EvalPool,
) -> Result<Arc<Vec<u8>>, String> {
    match mutator {
        WorkflowMutator::Json => ctx.json(),
        WorkflowMutator::OnlyCheckOutput => match &ctx.event.check {
            Some(check) => Ok(Arc::new(check.output.clone().into_bytes())),
            None => Err("mutator \"only_check_output\": event has no check".to_owned()),
        },
        WorkflowMutator::Unavailable { reason, .. } => Err(reason.clone()),
        WorkflowMutator::Stored(mutator) if mutator.is_javascript() => {
            javascript(mutator, ctx, eval).await
        }
        WorkflowMutator::Stored(mutator) => pipe(mutator, ctx).await,
    }
}

fn timeout_of(mutator: &Mutator) -> Option<Duration> {
    (mutator.timeout > 0).then(|| Duration::from_secs(u64::from(mutator.timeout)))
}

async fn pipe(mutator: &Mutator, ctx: &EventContext) -> Result<Arc<Vec<u8>>, String> {
    let name = &mutator.metadata.name;
    let spec = kensa_exec::Spec {
        command: mutator.command.clone(),
        env: env_pairs(&mutator.env_vars),
        stdin: Some(ctx.json()?.to_vec()),
        timeout: timeout_of(mutator),
        output_limit: PIPE_MUTATOR_OUTPUT_LIMIT,
    };
    let outcome = kensa_exec::run_split(&spec)
        .await
        .map_err(|err| format!("mutator {name:?}: {err}"))?;
    if outcome.timed_out {
        let timeout = spec.timeout.unwrap_or(kensa_exec::DEFAULT_TIMEOUT);
        return Err(format!("mutator {name:?} timed out after {timeout:?}"));
    }
    if outcome.status != 0 {
        return Err(format!(
            "mutator {name:?} exited with status {}: {}",
            outcome.status,
            first_line(&outcome.stderr)
        ));
    }
    if outcome.stdout_truncated_bytes > 0 {
        return Err(format!(
            "mutator {name:?} produced more than {PIPE_MUTATOR_OUTPUT_LIMIT} bytes"
        ));
    }
    Ok(Arc::new(outcome.stdout))
}

async fn javascript(
    mutator: &Mutator,
    ctx: &EventContext,
    eval: &EvalPool,
) -> Result<Arc<Vec<u8>>, String> {
    let name = &mutator.metadata.name;
    let event = ctx.value()?;
    eval.mutate(
        mutator.eval.clone(),
        event,
        mutator.env_vars.clone(),
        timeout_of(mutator),
    )
    .await
    .map(Arc::new)
    .map_err(|err| format!("mutator {name:?}: {err}"))
}
