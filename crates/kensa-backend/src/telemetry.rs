//! Every metric the backend exports, in one place (so `/metrics` is a list you can read), on
//! an explicit prometheus-client registry.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// `2xx`, `4xx`… (status classes keep the cardinality bounded).
    pub status: String,
}

pub struct Telemetry {
    /// Guarded for encoding only; metrics themselves are lock-free atomics.
    registry: Mutex<Registry>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub logins: Counter,
    pub auth_failures: Counter,
    pub rbac_denials: Counter,
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let mut registry = Registry::with_prefix("kensa");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method and status class",
            http_requests.clone(),
        );
        let logins = Counter::default();
        registry.register(
            "auth_logins",
            "Access tokens issued (logins and refreshes)",
            logins.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "auth_failures",
            "Failed password logins",
            auth_failures.clone(),
        );
        let rbac_denials = Counter::default();
        registry.register(
            "rbac_denials",
            "API requests refused by RBAC",
            rbac_denials.clone(),
        );
        Telemetry {
            registry: Mutex::new(registry),
            http_requests,
            logins,
            auth_failures,
            rbac_denials,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("registry lock poisoned");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}
