//! The pipeline service: takes processed events from eventd and keepalived and runs them
//! through their pipelines (`kensa-pipeline`), resolving handlers, filters, mutators and
//! pipelines from the in-memory [`ConfigView`] — never from the store per event (reference
//! §8.9). Counts every outcome in /metrics, logs failures with the event key, and keeps the
//! last outcomes per event for the dashboard.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use kensa_pipeline::{OutcomeResult, Pipelines, Resolver, Settings};
use kensa_types::resources::event::Event;
use kensa_types::resources::filter::EventFilter;
use kensa_types::resources::handler::Handler;
use kensa_types::resources::mutator::Mutator;
use kensa_types::resources::pipeline::Pipeline;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::eventd::Processed;
use crate::telemetry::{HandlerLabels, Telemetry};
use crate::view::ConfigView;

/// Events waiting for the pipelines; when full, eventd's writer waits (back-pressure).
pub const QUEUE: usize = 8192;
/// Events being processed at once (each may run several handlers; handler processes are
/// further limited by `Settings::handler_concurrency`).
const IN_FLIGHT: usize = 1024;
/// Events whose last outcomes are remembered.
const REMEMBERED_EVENTS: usize = 10_000;

/// Resolves pipeline resources from the view, as the typed forms it keeps: an event costs a
/// few map lookups, not a JSON decode per handler and filter.
struct ViewResolver {
    view: Arc<ConfigView>,
}

impl Resolver for ViewResolver {
    fn handler(&self, namespace: &str, name: &str) -> Option<Arc<Handler>> {
        self.view.decoded("handlers", namespace, name)
    }
    fn filter(&self, namespace: &str, name: &str) -> Option<Arc<EventFilter>> {
        self.view.decoded("filters", namespace, name)
    }
    fn mutator(&self, namespace: &str, name: &str) -> Option<Arc<Mutator>> {
        self.view.decoded("mutators", namespace, name)
    }
    fn pipeline(&self, namespace: &str, name: &str) -> Option<Arc<Pipeline>> {
        self.view.decoded("pipelines", namespace, name)
    }
}

/// One remembered outcome, for display.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentOutcome {
    pub pipeline: String,
    pub handler: String,
    /// `handled`, `filtered` or `failed`.
    pub outcome: String,
    pub detail: String,
    pub at: i64,
}

/// The last outcomes per event key `(namespace, "<entity>/<check>")`, bounded.
#[derive(Default)]
pub struct RecentOutcomes {
    inner: Mutex<Remembered>,
}

#[derive(Default)]
struct Remembered {
    by_event: HashMap<(String, String), Vec<RecentOutcome>>,
    /// Insertion order, to forget the oldest event first.
    order: VecDeque<(String, String)>,
}

impl RecentOutcomes {
    pub fn get(&self, namespace: &str, event: &str) -> Vec<RecentOutcome> {
        let inner = self.inner.lock().expect("outcomes lock poisoned");
        inner
            .by_event
            .get(&(namespace.to_owned(), event.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    fn put(&self, key: (String, String), outcomes: Vec<RecentOutcome>) {
        let mut inner = self.inner.lock().expect("outcomes lock poisoned");
        if inner.by_event.insert(key.clone(), outcomes).is_none() {
            inner.order.push_back(key);
            if inner.order.len() > REMEMBERED_EVENTS {
                if let Some(old) = inner.order.pop_front() {
                    inner.by_event.remove(&old);
                }
            }
        }
    }
}

pub fn start(
    view: Arc<ConfigView>,
    telemetry: Arc<Telemetry>,
    recent: Arc<RecentOutcomes>,
    mut events: mpsc::Receiver<Processed>,
    settings: Settings,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let pipelines = Arc::new(Pipelines::new(Arc::new(ViewResolver { view }), settings));
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.recv() => match event {
                    Some(event) => event,
                    None => return,
                },
            };
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let pipelines = pipelines.clone();
            let telemetry = telemetry.clone();
            let recent = recent.clone();
            tokio::spawn(async move {
                run_one(&pipelines, &telemetry, &recent, event).await;
                drop(permit);
            });
        }
    })
}

async fn run_one(
    pipelines: &Pipelines,
    telemetry: &Telemetry,
    recent: &RecentOutcomes,
    event: Arc<Event>,
) {
    let report = pipelines.process(event.clone()).await;
    let namespace = event.metadata.namespace.clone();
    let key = event.key().unwrap_or_default();
    for error in &report.expression_errors {
        telemetry.filter_expression_errors.inc();
        tracing::warn!(
            namespace,
            event = %key,
            filter = %error.filter,
            expression = %error.expression,
            error = %error.error,
            "filter expression failed (treated as no match)"
        );
    }
    if report.outcomes.is_empty() {
        return;
    }
    let now = crate::api::now_unix();
    let mut remembered = Vec::with_capacity(report.outcomes.len());
    for outcome in &report.outcomes {
        let (label, detail) = match &outcome.result {
            OutcomeResult::Handled => ("handled", String::new()),
            OutcomeResult::Filtered { filter } => ("filtered", format!("by {filter}")),
            OutcomeResult::Failed { reason } => {
                tracing::warn!(
                    namespace,
                    event = %key,
                    handler = %outcome.handler,
                    %reason,
                    "handler failed"
                );
                ("failed", reason.clone())
            }
        };
        telemetry
            .handler_outcomes
            .get_or_create(&HandlerLabels {
                outcome: label.to_owned(),
                r#type: outcome.handler_type.clone(),
            })
            .inc();
        remembered.push(RecentOutcome {
            pipeline: outcome.pipeline.clone(),
            handler: outcome.handler.clone(),
            outcome: label.to_owned(),
            detail,
            at: now,
        });
    }
    if !key.is_empty() {
        recent.put((namespace, key), remembered);
    }
}
