//! The scheduler (reference §3.4): turns check definitions into check requests for agents.
//!
//! IMPLEMENTATION PENDING (skeleton: `Scheduler::start` is the contract server.rs calls).

use std::sync::Arc;

use kensa_store::Store;
use tokio_util::sync::CancellationToken;

use crate::dispatch::Dispatcher;
use crate::telemetry::Telemetry;
use crate::view::ConfigView;

pub struct Scheduler;

impl Scheduler {
    /// Runs until `shutdown`.
    pub fn start(
        view: Arc<ConfigView>,
        store: Arc<dyn Store>,
        dispatcher: Arc<Dispatcher>,
        telemetry: Arc<Telemetry>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let _ = (view, store, dispatcher, telemetry);
        tokio::spawn(async move { shutdown.cancelled().await })
    }
}
