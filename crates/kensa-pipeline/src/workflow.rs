//! Turning one event into its workflows (filters → mutator → handler), with every resource
//! resolved once, up front, through the [`Resolver`] — so the rest of the pipeline never looks
//! anything up and a resource changing mid-event cannot make one event see two versions.
//!
//! Two sources, in this order: the `Pipeline` resources the event references, then — when the
//! check or metrics name legacy handlers — the synthetic `legacy-pipeline` (Sensu's
//! `adapterv1.go`: `set` handlers expanded up to depth 3, missing handlers skipped, duplicates
//! removed, sorted by name; each handler brings its own `filters` and `mutator`).

use std::collections::BTreeMap;
use std::sync::Arc;

use kensa_types::resources::common::ResourceReference;
use kensa_types::resources::filter::EventFilter;
use kensa_types::resources::handler::{Handler, TYPE_SET};
use kensa_types::resources::mutator::Mutator;
use kensa_types::CORE_V2;

use crate::filter::BuiltInFilter;
use crate::{EventContext, Resolver};

/// Name of the pipeline made of an event's legacy `handlers`.
pub const LEGACY_PIPELINE: &str = "legacy-pipeline";
/// How deep handler sets may nest: names in `check.handlers` are at depth 1, members of a set
/// named there at depth 2, and so on; a set whose members would be deeper is skipped.
pub const MAX_HANDLER_SET_DEPTH: usize = 3;

/// One filters → mutator → handler chain of one event.
#[derive(Debug, Clone)]
pub(crate) struct Workflow {
    /// `legacy-pipeline` or the Pipeline resource's name.
    pub pipeline: String,
    pub filters: Vec<WorkflowFilter>,
    pub mutator: WorkflowMutator,
    pub handler: WorkflowHandler,
}

/// A filter of a workflow, by name, as resolved when the workflow was built.
#[derive(Debug, Clone)]
pub(crate) struct WorkflowFilter {
    pub name: String,
    pub resolved: ResolvedFilter,
}

#[derive(Debug, Clone)]
pub(crate) enum ResolvedFilter {
    BuiltIn(BuiltInFilter),
    Stored(Arc<EventFilter>),
    /// Missing or not a filter: the workflow is filtered (fail closed); the text says why.
    Unavailable(String),
}

#[derive(Debug, Clone)]
pub(crate) enum WorkflowMutator {
    /// The event as JSON (also what "no mutator" means).
    Json,
    /// The check's output, as is.
    OnlyCheckOutput,
    Stored(Arc<Mutator>),
    /// Missing or not a mutator: the workflow fails.
    Unavailable {
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub(crate) enum WorkflowHandler {
    Found(Arc<Handler>),
    /// A Pipeline workflow whose handler cannot be used: the workflow fails.
    Unavailable {
        name: String,
        reason: String,
    },
}

impl WorkflowHandler {
    pub(crate) fn name(&self) -> &str {
        match self {
            WorkflowHandler::Found(handler) => &handler.metadata.name,
            WorkflowHandler::Unavailable { name, .. } => name,
        }
    }

    pub(crate) fn handler_type(&self) -> &str {
        match self {
            WorkflowHandler::Found(handler) => &handler.handler_type,
            WorkflowHandler::Unavailable { .. } => "",
        }
    }
}

/// Every workflow of `ctx`'s event: referenced pipelines first, then the legacy pipeline.
pub(crate) fn workflows(resolver: &dyn Resolver, ctx: &EventContext) -> Vec<Workflow> {
    let mut out = Vec::new();
    for reference in &ctx.event.pipelines {
        pipeline_workflows(resolver, ctx, reference, &mut out);
    }
    legacy_workflows(resolver, ctx, &mut out);
    out
}

/// The legacy pipeline: one workflow per expanded handler, sorted by handler name.
fn legacy_workflows(resolver: &dyn Resolver, ctx: &EventContext, out: &mut Vec<Workflow>) {
    let event = &ctx.event;
    let check_handlers = event.check.iter().flat_map(|check| &check.handlers);
    let metric_handlers = event.metrics.iter().flat_map(|metrics| &metrics.handlers);
    let names: Vec<String> = check_handlers.chain(metric_handlers).cloned().collect();
    if names.is_empty() {
        return;
    }
    let mut expanded = BTreeMap::new();
    expand_handlers(resolver, ctx, &names, 1, &mut expanded);
    for handler in expanded.into_values() {
        let filters = handler
            .filters
            .iter()
            .map(|name| resolve_filter(resolver, ctx, name))
            .collect();
        let mutator = resolve_mutator_name(resolver, ctx, &handler.mutator);
        out.push(Workflow {
            pipeline: LEGACY_PIPELINE.to_owned(),
            filters,
            mutator,
            handler: WorkflowHandler::Found(handler),
        });
    }
}

/// Adds the handlers named in `names` (at nesting `depth`) to `into`, replacing each `set` by
/// its members. Missing handlers and too deep sets are logged and skipped.
fn expand_handlers(
    resolver: &dyn Resolver,
    ctx: &EventContext,
    names: &[String],
    depth: usize,
    into: &mut BTreeMap<String, Arc<Handler>>,
) {
    for name in names {
        if into.contains_key(name) {
            continue;
        }
        let Some(handler) = resolver.handler(&ctx.namespace, name) else {
            // Keepalive and registration events name `keepalive` / `registration` by default,
            // which usually do not exist.
            if name == "keepalive" || name == "registration" {
                tracing::debug!(event = %ctx.key, handler = %name, "handler does not exist, skipped");
            } else {
                tracing::warn!(event = %ctx.key, handler = %name, "handler does not exist, skipped");
            }
            continue;
        };
        if handler.handler_type != TYPE_SET {
            into.insert(name.clone(), handler);
        } else if depth >= MAX_HANDLER_SET_DEPTH {
            tracing::warn!(
                event = %ctx.key,
                handler = %name,
                max_depth = MAX_HANDLER_SET_DEPTH,
                "handler sets cannot be deeply nested, set skipped"
            );
        } else {
            expand_handlers(resolver, ctx, &handler.handlers, depth + 1, into);
        }
    }
}

/// The workflows of the Pipeline resource `reference` points at.
fn pipeline_workflows(
    resolver: &dyn Resolver,
    ctx: &EventContext,
    reference: &ResourceReference,
    out: &mut Vec<Workflow>,
) {
    if !reference.is(CORE_V2, "Pipeline") {
        tracing::warn!(
            event = %ctx.key,
            pipeline = %reference.resource_id(),
            "pipeline reference is not a core/v2 Pipeline, skipped"
        );
        return;
    }
    let Some(pipeline) = resolver.pipeline(&ctx.namespace, &reference.name) else {
        tracing::warn!(event = %ctx.key, pipeline = %reference.name, "pipeline does not exist, skipped");
        return;
    };
    for workflow in &pipeline.workflows {
        let filters: Vec<WorkflowFilter> = workflow
            .filters
            .iter()
            .map(|reference| {
                if reference.is(CORE_V2, "EventFilter") {
                    resolve_filter(resolver, ctx, &reference.name)
                } else {
                    WorkflowFilter {
                        name: reference.name.clone(),
                        resolved: ResolvedFilter::Unavailable(format!(
                            "{} is not a core/v2 EventFilter",
                            reference.resource_id()
                        )),
                    }
                }
            })
            .collect();
        let mutator = match &workflow.mutator {
            None => WorkflowMutator::Json,
            Some(reference) if reference.is(CORE_V2, "Mutator") => {
                resolve_mutator_name(resolver, ctx, &reference.name)
            }
            Some(reference) => WorkflowMutator::Unavailable {
                reason: format!("{} is not a core/v2 Mutator", reference.resource_id()),
            },
        };
        let handlers = workflow_handlers(resolver, ctx, workflow.handler.as_ref());
        for handler in handlers {
            out.push(Workflow {
                pipeline: pipeline.metadata.name.clone(),
                filters: filters.clone(),
                mutator: mutator.clone(),
                handler,
            });
        }
    }
}

/// The handler of a Pipeline workflow; a `set` becomes its members (same filters and mutator).
fn workflow_handlers(
    resolver: &dyn Resolver,
    ctx: &EventContext,
    reference: Option<&ResourceReference>,
) -> Vec<WorkflowHandler> {
    let Some(reference) = reference else {
        return vec![WorkflowHandler::Unavailable {
            name: String::new(),
            reason: "workflow has no handler".to_owned(),
        }];
    };
    let unavailable = |reason: String| {
        vec![WorkflowHandler::Unavailable {
            name: reference.name.clone(),
            reason,
        }]
    };
    if !reference.is(CORE_V2, "Handler") {
        return unavailable(format!(
            "{} is not a core/v2 Handler",
            reference.resource_id()
        ));
    }
    let Some(handler) = resolver.handler(&ctx.namespace, &reference.name) else {
        return unavailable(format!("handler {:?} does not exist", reference.name));
    };
    if handler.handler_type != TYPE_SET {
        return vec![WorkflowHandler::Found(handler)];
    }
    let mut members = BTreeMap::new();
    expand_handlers(resolver, ctx, &handler.handlers, 2, &mut members);
    members.into_values().map(WorkflowHandler::Found).collect()
}

fn resolve_filter(resolver: &dyn Resolver, ctx: &EventContext, name: &str) -> WorkflowFilter {
    let resolved = if let Some(built_in) = BuiltInFilter::from_name(name) {
        ResolvedFilter::BuiltIn(built_in)
    } else if let Some(filter) = resolver.filter(&ctx.namespace, name) {
        ResolvedFilter::Stored(filter)
    } else {
        ResolvedFilter::Unavailable(format!("filter {name:?} does not exist"))
    };
    WorkflowFilter {
        name: name.to_owned(),
        resolved,
    }
}

/// A mutator by name: empty and `json` are the JSON mutator.
fn resolve_mutator_name(
    resolver: &dyn Resolver,
    ctx: &EventContext,
    name: &str,
) -> WorkflowMutator {
    match name {
        "" | "json" => WorkflowMutator::Json,
        "only_check_output" => WorkflowMutator::OnlyCheckOutput,
        _ => match resolver.mutator(&ctx.namespace, name) {
            Some(mutator) => WorkflowMutator::Stored(mutator),
            None => WorkflowMutator::Unavailable {
                reason: format!("mutator {name:?} does not exist"),
            },
        },
    }
}
