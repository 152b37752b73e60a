//! Checks: `CheckConfig` (the stored definition, `type: CheckConfig`) and `Check` (the `check`
//! of an event: the definition as it was executed plus its result and state). Both carry the
//! same ~30 definition fields, interleaved with the result fields in Sensu's order; the
//! `check_structs!` macro writes that list once and generates both structs, a borrowed
//! [`CheckDefinition`] view over the shared fields (what validation reads), and the
//! `CheckConfig` → `Check` conversion.
//!
//! Also here: `ProxyRequests`, `MetricThreshold` and `CheckHistory`, and the validation rules
//! shared by both kinds (reference §2.1–2.2).

use serde::{Deserialize, Serialize};

use super::common::{validate_env_vars, validate_runtime_assets, ResourceReference, Secret};
use super::hook::{Hook, HookList};
use super::metrics::MetricTag;
use super::time_window::{TimeWindowRepeated, TimeWindowWhen};
use super::{
    field, go_float, is_false, is_zero_f64, is_zero_i64, joined, label_fields, nullable, Resource,
};
use crate::meta::{validate_named, NAME};
use crate::{cron, ObjectMeta, ResourceError, CORE_V2};

/// Writes the definition fields shared by `CheckConfig` and `Check` once, in Sensu's order, and
/// lets each struct insert its own fields at the three places where Sensu's `Check` interleaves
/// result fields (after `round_robin`, after `secrets`, after `output_metric_tags`).
macro_rules! check_structs {
    (
        $(#[$config_attr:meta])* struct CheckConfig {
            after_round_robin { $($config_a:tt)* }
            after_secrets { $($config_b:tt)* }
            after_output_metric_tags { $($config_c:tt)* }
        }
        $(#[$check_attr:meta])* struct Check {
            after_round_robin { $($check_a:tt)* }
            after_secrets { $($check_b:tt)* }
            after_output_metric_tags { $($check_c:tt)* }
        }
    ) => {
        check_structs! {
            @emit
            config [$(#[$config_attr])*] [$($config_a)*] [$($config_b)*] [$($config_c)*]
            check [$(#[$check_attr])*] [$($check_a)*] [$($check_b)*] [$($check_c)*]
            shared_a {
                /// The command the agent runs (tokens such as `{{ .labels.x }}` are substituted).
                #[serde(skip_serializing_if = "String::is_empty")]
                command: String,
                /// Legacy handlers for the check's events.
                #[serde(deserialize_with = "super::null_default")]
                handlers: Vec<String>,
                /// Flap detection high threshold, % state change (0 disables flap detection).
                high_flap_threshold: u32,
                /// Seconds between scheduled runs; 0 when `cron` is used.
                interval: u32,
                /// Flap detection low threshold, % state change.
                low_flap_threshold: u32,
                /// Whether the scheduler publishes requests (false: ad hoc only).
                publish: bool,
                /// Assets the agent installs before running the command.
                #[serde(with = "nullable")]
                runtime_assets: Vec<String>,
                /// Subscriptions the requests are published to.
                #[serde(deserialize_with = "super::null_default")]
                subscriptions: Vec<String>,
                /// Entity the results are attributed to instead of the executing agent.
                proxy_entity_name: String,
                /// Hooks to run by check status.
                #[serde(with = "nullable")]
                check_hooks: Vec<HookList>,
                /// Whether the agent writes the entity and check as JSON to the command's stdin.
                stdin: bool,
                /// Legacy (1.x-style) subdue windows.
                subdue: Option<TimeWindowWhen>,
                /// Cron schedule, instead of `interval`.
                #[serde(skip_serializing_if = "String::is_empty")]
                cron: String,
                /// Seconds after which a missing result raises a TTL event (0 disables).
                ttl: i64,
                /// Seconds after which the agent kills the command (0: no timeout).
                timeout: u32,
                /// Run the check once per matching proxy entity.
                #[serde(skip_serializing_if = "Option::is_none")]
                proxy_requests: Option<ProxyRequests>,
                /// One subscriber per interval instead of all.
                round_robin: bool,
            }
            shared_b {
                /// How metrics are extracted from the output (`nagios_perfdata`, …).
                output_metric_format: String,
                /// Legacy handlers for the extracted metrics.
                #[serde(with = "nullable")]
                output_metric_handlers: Vec<String>,
                /// `KEY=VALUE` environment of the command.
                #[serde(with = "nullable")]
                env_vars: Vec<String>,
                /// Name, namespace, labels, annotations.
                metadata: ObjectMeta,
                /// Bytes of output the backend stores (0: all).
                #[serde(skip_serializing_if = "is_zero_i64")]
                max_output_size: i64,
                /// Whether the agent drops the output after metric extraction.
                #[serde(skip_serializing_if = "is_false")]
                discard_output: bool,
                /// Secrets exposed to the command as environment variables.
                #[serde(with = "nullable")]
                secrets: Vec<Secret>,
            }
            shared_c {
                /// Tags added to every extracted point.
                #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "super::null_default")]
                output_metric_tags: Vec<MetricTag>,
            }
            shared_d {
                /// Pipelines that process the check's events.
                #[serde(deserialize_with = "super::null_default")]
                pipelines: Vec<ResourceReference>,
                /// Rules that turn extracted metrics into a check status.
                #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "super::null_default")]
                output_metric_thresholds: Vec<MetricThreshold>,
                /// Periods during which the check is not scheduled.
                #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "super::null_default")]
                subdues: Vec<TimeWindowRepeated>,
            }
        }
    };
    (
        @emit
        config [$($config_attr:tt)*] [$($config_a:tt)*] [$($config_b:tt)*] [$($config_c:tt)*]
        check [$($check_attr:tt)*] [$($check_a:tt)*] [$($check_b:tt)*] [$($check_c:tt)*]
        shared_a { $( $(#[$a_attr:meta])* $a_name:ident : $a_ty:ty, )* }
        shared_b { $( $(#[$b_attr:meta])* $b_name:ident : $b_ty:ty, )* }
        shared_c { $( $(#[$c_attr:meta])* $c_name:ident : $c_ty:ty, )* }
        shared_d { $( $(#[$d_attr:meta])* $d_name:ident : $d_ty:ty, )* }
    ) => {
        $($config_attr)*
        pub struct CheckConfig {
            $( $(#[$a_attr])* pub $a_name: $a_ty, )*
            $($config_a)*
            $( $(#[$b_attr])* pub $b_name: $b_ty, )*
            $($config_b)*
            $( $(#[$c_attr])* pub $c_name: $c_ty, )*
            $($config_c)*
            $( $(#[$d_attr])* pub $d_name: $d_ty, )*
        }

        $($check_attr)*
        pub struct Check {
            $( $(#[$a_attr])* pub $a_name: $a_ty, )*
            $($check_a)*
            $( $(#[$b_attr])* pub $b_name: $b_ty, )*
            $($check_b)*
            $( $(#[$c_attr])* pub $c_name: $c_ty, )*
            $($check_c)*
            $( $(#[$d_attr])* pub $d_name: $d_ty, )*
        }

        /// The definition fields `CheckConfig` and `Check` share, borrowed from either.
        #[derive(Debug, Clone, Copy)]
        pub struct CheckDefinition<'a> {
            $( pub $a_name: &'a $a_ty, )*
            $( pub $b_name: &'a $b_ty, )*
            $( pub $c_name: &'a $c_ty, )*
            $( pub $d_name: &'a $d_ty, )*
        }

        impl CheckConfig {
            /// The definition fields, as validation and the scheduler read them.
            pub fn definition(&self) -> CheckDefinition<'_> {
                CheckDefinition {
                    $( $a_name: &self.$a_name, )*
                    $( $b_name: &self.$b_name, )*
                    $( $c_name: &self.$c_name, )*
                    $( $d_name: &self.$d_name, )*
                }
            }
        }

        impl Check {
            /// The definition fields this check was executed with.
            pub fn definition(&self) -> CheckDefinition<'_> {
                CheckDefinition {
                    $( $a_name: &self.$a_name, )*
                    $( $b_name: &self.$b_name, )*
                    $( $c_name: &self.$c_name, )*
                    $( $d_name: &self.$d_name, )*
                }
            }

            /// A check carrying `config`'s definition and no result yet (Sensu's `NewCheck`).
            fn from_definition(config: CheckConfig) -> Check {
                Check {
                    $( $a_name: config.$a_name, )*
                    $( $b_name: config.$b_name, )*
                    $( $c_name: config.$c_name, )*
                    $( $d_name: config.$d_name, )*
                    ..Check::default()
                }
            }
        }
    };
}

check_structs! {
    /// `type: CheckConfig`, a stored check definition (reference §2.1).
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    struct CheckConfig {
        after_round_robin {}
        after_secrets {}
        after_output_metric_tags {
            /// Which scheduler runs the check (`memory`, `etcd`, `postgres`); set by the
            /// backend, never part of the definition's JSON.
            #[serde(skip)]
            pub scheduler: String,
        }
    }

    /// The `check` of an event: the definition it ran with, and its result and state
    /// (reference §2.2).
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    struct Check {
        after_round_robin {
            /// Seconds the command ran.
            #[serde(skip_serializing_if = "is_zero_f64", serialize_with = "go_float")]
            pub duration: f64,
            /// When the command ran (Unix seconds).
            pub executed: i64,
            /// The last 21 results, oldest first.
            #[serde(with = "nullable")]
            pub history: Vec<CheckHistory>,
            /// When the request was issued (Unix seconds).
            pub issued: i64,
            /// The command's output.
            pub output: String,
            /// `passing`, `failing` or `flapping`; computed by the backend.
            #[serde(skip_serializing_if = "String::is_empty")]
            pub state: String,
            /// The exit status: 0 OK, 1 WARNING, 2 CRITICAL, other UNKNOWN.
            pub status: u32,
            /// Weighted % of state changes over the history.
            pub total_state_change: u32,
            /// When the status was last 0 (Unix seconds).
            pub last_ok: i64,
            /// Consecutive results with the current status.
            pub occurrences: i64,
            /// High-water mark of `occurrences` at the current severity.
            pub occurrences_watermark: i64,
            /// Names of the silences that match the event.
            #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "super::null_default")]
            pub silenced: Vec<String>,
            /// Results of the hooks that ran.
            #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "super::null_default")]
            pub hooks: Vec<Hook>,
        }
        after_secrets {
            /// Whether `silenced` is non-empty.
            pub is_silenced: bool,
        }
        after_output_metric_tags {
            /// Which scheduler issued the request (`memory`, `etcd`, `postgres`).
            pub scheduler: String,
            /// The agent that executed the check (useful for proxy checks).
            #[serde(skip_serializing_if = "String::is_empty")]
            pub processed_by: String,
            /// The round this result answers (`CheckRequest::round`; a Kensa extension, absent
            /// from Sensu events): how the backend completes round-robin rounds and spots a
            /// second execution of one round.
            #[serde(skip_serializing_if = "String::is_empty")]
            pub round: String,
        }
    }
}

impl From<CheckConfig> for Check {
    /// Sensu's `NewCheck`: the definition, the scheduler, and an empty result.
    fn from(mut config: CheckConfig) -> Check {
        let scheduler = std::mem::take(&mut config.scheduler);
        Check {
            scheduler,
            ..Check::from_definition(config)
        }
    }
}

/// `check.history[]`: one past result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckHistory {
    pub status: u32,
    pub executed: i64,
    /// Whether this result was flapping (a Kensa extension: Sensu never sets it).
    #[serde(skip_serializing_if = "is_false")]
    pub flapping: bool,
}

/// `proxy_requests`: run the check for every entity matching `entity_attributes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyRequests {
    /// JavaScript expressions over `entity`; all must be true.
    #[serde(with = "nullable")]
    pub entity_attributes: Vec<String>,
    /// Spread the requests over the interval.
    pub splay: bool,
    /// % of the interval to spread over (90 at runtime when 0).
    pub splay_coverage: u32,
}

/// The splay coverage the scheduler uses when `splay_coverage` is 0.
pub const DEFAULT_SPLAY_COVERAGE: u32 = 90;

impl ProxyRequests {
    pub fn validate(&self) -> Result<(), ResourceError> {
        if self.splay_coverage > 100 {
            return Err(ResourceError::invalid_field(
                "splay_coverage",
                "proxy request splay coverage must be between 0 and 100",
            ));
        }
        if self.splay && self.splay_coverage == 0 {
            return Err(ResourceError::invalid_field(
                "splay_coverage",
                "proxy request splay coverage must be greater than 0 if splay is enabled",
            ));
        }
        Ok(())
    }
}

/// `output_metric_thresholds[]`: rules for the points named `name` carrying all `tags`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricThreshold {
    pub name: String,
    #[serde(with = "nullable")]
    pub tags: Vec<MetricThresholdTag>,
    #[serde(with = "nullable")]
    pub thresholds: Vec<MetricThresholdRule>,
}

/// A tag a point must carry for a [`MetricThreshold`] to apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricThresholdTag {
    pub name: String,
    pub value: String,
}

/// A bound: a point below `min` or above `max` gets `status`; a missing point `null_status`.
/// `min`/`max` are strings holding floats (empty: unbounded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricThresholdRule {
    pub min: String,
    pub max: String,
    pub status: u32,
    pub null_status: u32,
}

impl MetricThreshold {
    pub fn validate(&self) -> Result<(), ResourceError> {
        validate_named("name", "metric threshold name", &self.name, &NAME)?;
        if self.thresholds.is_empty() {
            return Err(ResourceError::invalid_field(
                "thresholds",
                "there must be at least one threshold rule",
            ));
        }
        for (i, rule) in self.thresholds.iter().enumerate() {
            rule.validate()
                .map_err(|err| err.within(&format!("thresholds[{i}]"), &format!("rule {i}: ")))?;
        }
        for (i, tag) in self.tags.iter().enumerate() {
            validate_named(
                &format!("tags[{i}].name"),
                &format!("tag {i}: metric threshold tag name"),
                &tag.name,
                &NAME,
            )?;
            if tag.value.is_empty() {
                return Err(ResourceError::invalid_field(
                    format!("tags[{i}].value"),
                    format!("tag {i}: metric threshold tag value must not be empty"),
                ));
            }
        }
        Ok(())
    }
}

impl MetricThresholdRule {
    pub fn validate(&self) -> Result<(), ResourceError> {
        let (min, max) = (self.min.trim(), self.max.trim());
        if min.is_empty() && max.is_empty() {
            return Err(ResourceError::invalid("one of min or max required"));
        }
        for (field, bound) in [("min", min), ("max", max)] {
            if !bound.is_empty() && bound.parse::<f64>().is_err() {
                return Err(ResourceError::invalid_field(
                    field,
                    format!("{field} must be a floating point number"),
                ));
            }
        }
        Ok(())
    }
}

/// The formats `output_metric_format` accepts.
pub const OUTPUT_METRIC_FORMATS: [&str; 5] = [
    "nagios_perfdata",
    "graphite_plaintext",
    "opentsdb_line",
    "influxdb_line",
    "prometheus_text",
];

/// The event states the backend computes.
pub const STATE_PASSING: &str = "passing";
pub const STATE_FAILING: &str = "failing";
pub const STATE_FLAPPING: &str = "flapping";

/// Which of the two rule sets applies: a stored definition, or the check of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rules {
    Config,
    Event,
}

/// Validates the shared fields in Sensu's order. The two kinds differ in the schedule rule
/// (an event check only needs a schedule when published), the namespace (required on
/// definitions only), the minimum TTL, and the output-size and threshold rules (events only).
fn validate_definition(def: CheckDefinition<'_>, rules: Rules) -> Result<(), ResourceError> {
    def.metadata.validate_name_as("check", &NAME)?;
    validate_schedule(&def, rules)?;
    if rules == Rules::Config {
        def.metadata.require_namespace()?;
    }
    if *def.ttl > 0 && *def.ttl <= i64::from(*def.interval) {
        return Err(ResourceError::invalid_field(
            "ttl",
            "ttl must be greater than check interval",
        ));
    }
    if rules == Rules::Event && *def.ttl > 0 && *def.ttl < 5 {
        return Err(ResourceError::invalid_field(
            "ttl",
            "minimum ttl is 5 seconds",
        ));
    }
    validate_runtime_assets(def.runtime_assets)?;
    if let Some(i) = def.subscriptions.iter().position(String::is_empty) {
        return Err(ResourceError::invalid_field(
            format!("subscriptions[{i}]"),
            "subscriptions cannot be empty strings",
        ));
    }
    if !def.proxy_entity_name.is_empty() {
        validate_named(
            "proxy_entity_name",
            "proxy entity name",
            def.proxy_entity_name,
            &NAME,
        )?;
    }
    if let Some(proxy_requests) = def.proxy_requests {
        proxy_requests
            .validate()
            .map_err(|err| err.within("proxy_requests", ""))?;
    }
    if !def.output_metric_format.is_empty()
        && !OUTPUT_METRIC_FORMATS.contains(&def.output_metric_format.as_str())
    {
        return Err(ResourceError::invalid_field(
            "output_metric_format",
            "output metric format is not valid",
        ));
    }
    let (low, high) = (*def.low_flap_threshold, *def.high_flap_threshold);
    if low != 0 && high != 0 && low >= high {
        return Err(ResourceError::invalid_field(
            "low_flap_threshold",
            "invalid flap thresholds",
        ));
    }
    validate_env_vars("env_vars", def.env_vars)?;
    if rules == Rules::Event {
        if *def.max_output_size < 0 {
            return Err(ResourceError::invalid_field(
                "max_output_size",
                "max_output_size must be >= 0",
            ));
        }
        for (i, threshold) in def.output_metric_thresholds.iter().enumerate() {
            threshold.validate().map_err(|err| {
                err.within(
                    &format!("output_metric_thresholds[{i}]"),
                    &format!("invalid metric threshold {i}: "),
                )
            })?;
        }
    }
    for (i, subdue) in def.subdues.iter().enumerate() {
        subdue.validate().map_err(|err| {
            err.within(&format!("subdues[{i}]"), &format!("subdue {i} invalid: "))
        })?;
    }
    if let Some(subdue) = def.subdue {
        subdue.validate().map_err(|err| err.within("subdue", ""))?;
    }
    // Not checked by Sensu on write, but a malformed hook list can never run.
    for (i, hooks) in def.check_hooks.iter().enumerate() {
        hooks
            .validate()
            .map_err(|err| err.within(&format!("check_hooks[{i}]"), ""))?;
    }
    Ok(())
}

fn validate_schedule(def: &CheckDefinition<'_>, rules: Rules) -> Result<(), ResourceError> {
    if rules == Rules::Event && !def.publish {
        return Ok(());
    }
    if !def.cron.is_empty() {
        if *def.interval > 0 {
            return Err(ResourceError::invalid_field(
                "cron",
                "must only specify either an interval or a cron schedule",
            ));
        }
        return cron::validate(def.cron).map_err(|err| {
            ResourceError::invalid_field("cron", format!("check cron string is invalid: {err}"))
        });
    }
    match rules {
        Rules::Config if *def.interval == 0 => Err(ResourceError::invalid_field(
            "interval",
            "check interval must be greater than 0 or a valid cron schedule must be provided",
        )),
        Rules::Event if *def.interval < 1 => Err(ResourceError::invalid_field(
            "interval",
            "check interval must be greater than or equal to 1",
        )),
        _ => Ok(()),
    }
}

impl CheckDefinition<'_> {
    /// Whether a subdue period covers `now` (Unix seconds): the scheduler skips the run.
    pub fn is_subdued(&self, now: i64) -> bool {
        self.subdues.iter().any(|subdue| subdue.contains(now))
    }
}

impl Resource for CheckConfig {
    /// Pipeline references without `api_version`/`type` mean `core/v2` `Pipeline`, as Sensu
    /// fills them in when it writes a CheckConfig.
    fn apply_defaults(&mut self) {
        for pipeline in &mut self.pipelines {
            if pipeline.api_version.is_empty() {
                pipeline.api_version = CORE_V2.to_owned();
            }
            if pipeline.ref_type.is_empty() {
                pipeline.ref_type = "Pipeline".to_owned();
            }
        }
    }

    fn validate(&self) -> Result<(), ResourceError> {
        validate_definition(self.definition(), Rules::Config)
    }

    fn fields(&self) -> Vec<(String, String)> {
        let pipelines: Vec<String> = self
            .pipelines
            .iter()
            .map(ResourceReference::resource_id)
            .collect();
        let mut out = vec![
            field("check.name", &self.metadata.name),
            field("check.namespace", &self.metadata.namespace),
            field("check.handlers", joined(&self.handlers)),
            field("check.publish", self.publish.to_string()),
            field("check.round_robin", self.round_robin.to_string()),
            field("check.runtime_assets", joined(&self.runtime_assets)),
            field("check.subscriptions", joined(&self.subscriptions)),
            field("check.pipelines", joined(&pipelines)),
        ];
        label_fields("check", &self.metadata, &mut out);
        out
    }
}

impl Check {
    /// Validates an event's check (the rules of `Check`, not `CheckConfig`).
    pub fn validate(&self) -> Result<(), ResourceError> {
        validate_definition(self.definition(), Rules::Event)
    }

    /// `is_silenced` follows `silenced`.
    pub fn apply_defaults(&mut self) {
        self.is_silenced = !self.silenced.is_empty();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_check_inherits_the_definition_and_scheduler() {
        let config: CheckConfig = serde_json::from_value(json!({
            "command": "check-cpu.sh", "interval": 60, "subscriptions": ["linux"],
            "metadata": {"name": "cpu", "namespace": "default", "labels": {"team": "ops"}},
            "output_metric_tags": [{"name": "host", "value": "{{ .name }}"}]
        }))
        .expect("decodes");
        let config = CheckConfig {
            scheduler: "memory".into(),
            ..config
        };
        let check = Check::from(config.clone());
        assert_eq!(check.command, "check-cpu.sh");
        assert_eq!(check.metadata, config.metadata);
        assert_eq!(check.output_metric_tags, config.output_metric_tags);
        assert_eq!(check.scheduler, "memory");
        assert_eq!(
            (check.status, check.executed, check.history.len()),
            (0, 0, 0)
        );
    }

    #[test]
    fn scheduler_is_hidden_in_definitions_but_shown_in_events() {
        let config = CheckConfig {
            scheduler: "etcd".into(),
            ..CheckConfig::default()
        };
        assert!(serde_json::to_value(&config)
            .expect("encodes")
            .get("scheduler")
            .is_none());
        let check = Check::from(config);
        assert_eq!(
            serde_json::to_value(&check).expect("encodes")["scheduler"],
            "etcd"
        );
    }

    #[test]
    fn subdues_make_a_definition_subdued() {
        let config: CheckConfig = serde_json::from_value(json!({
            "subdues": [{"begin": "2022-04-18T17:00:00Z", "end": "2022-04-19T08:00:00Z", "repeat": ["daily"]}]
        }))
        .expect("decodes");
        let def = config.definition();
        assert!(def.is_subdued(1_650_387_600)); // 2022-04-19T17:00:00Z
        assert!(!def.is_subdued(1_650_373_200)); // 2022-04-19T13:00:00Z
    }
}
