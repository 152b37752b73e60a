//! The `metrics` of an event (points extracted from check output or sent by the agent's
//! socket), and the tags checks attach to them (`output_metric_tags`).

use serde::{Deserialize, Serialize};

use super::{go_float, nullable};

/// `event.metrics`: the legacy metric handlers and the measured points.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metrics {
    #[serde(with = "nullable")]
    pub handlers: Vec<String>,
    /// Extractors always produce a list, so an empty one is written as `[]`.
    #[serde(deserialize_with = "super::null_default")]
    pub points: Vec<MetricPoint>,
}

/// One measurement. `timestamp` is in Unix seconds in practice (reference §7).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricPoint {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(serialize_with = "go_float")]
    pub value: f64,
    pub timestamp: i64,
    #[serde(deserialize_with = "super::null_default")]
    pub tags: Vec<MetricTag>,
}

/// A dimension of a point, or (in `output_metric_tags`) one to add; `value` may contain
/// tokens such as `{{ .name }}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricTag {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
}
