//! Filter decisions: the built-in filters, `when` time windows, and how the JavaScript verdict
//! of an `EventFilter` (computed on the eval threads, see `eval_pool.rs`) stops a workflow.
//!
//! A filter is decided in two steps so that JavaScript only runs when it can matter:
//! [`static_decision`] settles everything that needs no JavaScript (built-ins, missing filters,
//! time windows, empty expression lists); what is left is evaluated once per event and then
//! [`verdict_decision`] applies Sensu's allow/deny rule to the result.

use kensa_types::resources::event::Event;
use kensa_types::resources::filter::{EventFilter, ACTION_ALLOW, ACTION_DENY};
use kensa_types::resources::time_window::TimeWindowWhen;

/// The filters Sensu provides without a stored resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BuiltInFilter {
    /// Lets through incidents (status ≠ 0) and resolutions (0 right after non-zero).
    IsIncident,
    /// Lets through events no silence matched.
    NotSilenced,
    /// Lets through events carrying metric points.
    HasMetrics,
}

impl BuiltInFilter {
    pub(crate) fn from_name(name: &str) -> Option<BuiltInFilter> {
        match name {
            "is_incident" => Some(BuiltInFilter::IsIncident),
            "not_silenced" => Some(BuiltInFilter::NotSilenced),
            "has_metrics" => Some(BuiltInFilter::HasMetrics),
            _ => None,
        }
    }

    fn lets_through(self, event: &Event) -> bool {
        match self {
            BuiltInFilter::IsIncident => event.is_incident() || event.is_resolution(),
            BuiltInFilter::NotSilenced => !event.is_silenced(),
            // Sensu only asks for a `metrics` object; an empty batch is not worth a handler run.
            BuiltInFilter::HasMetrics => event
                .metrics
                .as_ref()
                .is_some_and(|metrics| !metrics.points.is_empty()),
        }
    }
}

/// What can be decided about one filter without running JavaScript.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StaticDecision {
    Pass,
    Stop,
    /// The filter's expressions decide.
    NeedsEval,
}

/// The decision for a built-in filter.
pub(crate) fn built_in_decision(filter: BuiltInFilter, event: &Event) -> StaticDecision {
    if filter.lets_through(event) {
        StaticDecision::Pass
    } else {
        StaticDecision::Stop
    }
}

/// The decision for a stored filter before its expressions run, at `now` (Unix seconds).
///
/// allow: stop outside the `when` windows; otherwise every expression must be true.
/// deny: pass outside the `when` windows; otherwise stop if any expression is true.
/// A filter with no windows is "inside". An unknown action stops the workflow (fail closed).
pub(crate) fn static_decision(filter: &EventFilter, now: i64) -> StaticDecision {
    let outside_windows = filter
        .when
        .as_ref()
        .is_some_and(|when| has_windows(when) && !when.contains(now));
    match filter.action.as_str() {
        ACTION_ALLOW if outside_windows => StaticDecision::Stop,
        ACTION_DENY if outside_windows => StaticDecision::Pass,
        // All of none is true (allow passes); any of none is false (deny passes).
        ACTION_ALLOW | ACTION_DENY if filter.expressions.is_empty() => StaticDecision::Pass,
        ACTION_ALLOW | ACTION_DENY => StaticDecision::NeedsEval,
        _ => StaticDecision::Stop,
    }
}

/// Applies the allow/deny rule to `matched` (allow: every expression was true; deny: at least
/// one was). Returns whether the workflow goes on.
pub(crate) fn verdict_decision(filter: &EventFilter, matched: bool) -> bool {
    match filter.action.as_str() {
        ACTION_ALLOW => matched,
        ACTION_DENY => !matched,
        _ => false,
    }
}

/// Whether `when` lists at least one range (an empty `when` restricts nothing).
fn has_windows(when: &TimeWindowWhen) -> bool {
    let days = &when.days;
    [
        &days.all,
        &days.sunday,
        &days.monday,
        &days.tuesday,
        &days.wednesday,
        &days.thursday,
        &days.friday,
        &days.saturday,
    ]
    .iter()
    .any(|ranges| !ranges.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kensa_types::resources::check::{Check, CheckHistory};
    use kensa_types::resources::metrics::{MetricPoint, Metrics};
    use kensa_types::resources::time_window::{TimeWindowDays, TimeWindowTimeRange};

    fn event(status: u32, previous: Option<u32>, silenced: bool, points: Option<usize>) -> Event {
        let mut history: Vec<CheckHistory> = previous
            .iter()
            .map(|&status| CheckHistory {
                status,
                executed: 1,
                flapping: false,
            })
            .collect();
        history.push(CheckHistory {
            status,
            executed: 2,
            flapping: false,
        });
        Event {
            check: Some(Check {
                status,
                history,
                silenced: if silenced {
                    vec!["linux:*".to_owned()]
                } else {
                    Vec::new()
                },
                ..Default::default()
            }),
            metrics: points.map(|n| Metrics {
                points: vec![MetricPoint::default(); n],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn built_in_filters() {
        use BuiltInFilter::*;
        let cases = [
            // (filter, status, previous status, silenced, metric points, lets through)
            (IsIncident, 2, None, false, None, true),
            (IsIncident, 1, Some(0), false, None, true),
            (IsIncident, 0, Some(2), false, None, true), // resolution
            (IsIncident, 0, Some(0), false, None, false),
            (IsIncident, 0, None, false, None, false),
            (NotSilenced, 2, None, false, None, true),
            (NotSilenced, 2, None, true, None, false),
            (HasMetrics, 0, None, false, Some(3), true),
            (HasMetrics, 0, None, false, Some(0), false),
            (HasMetrics, 0, None, false, None, false),
        ];
        for (filter, status, previous, silenced, points, want) in cases {
            let event = event(status, previous, silenced, points);
            let want = if want {
                StaticDecision::Pass
            } else {
                StaticDecision::Stop
            };
            assert_eq!(
                built_in_decision(filter, &event),
                want,
                "{filter:?} status={status} previous={previous:?} silenced={silenced} points={points:?}"
            );
        }
        let no_check = Event::default();
        assert_eq!(
            built_in_decision(IsIncident, &no_check),
            StaticDecision::Stop
        );
        assert_eq!(
            built_in_decision(NotSilenced, &no_check),
            StaticDecision::Pass
        );
    }

    #[test]
    fn windows_and_actions_before_javascript() {
        // 2023-11-14T22:13:20Z, a Tuesday.
        let now = 1_700_000_000;
        let window = |begin: &str, end: &str| TimeWindowWhen {
            days: TimeWindowDays {
                all: vec![TimeWindowTimeRange {
                    begin: begin.to_owned(),
                    end: end.to_owned(),
                }],
                ..Default::default()
            },
        };
        let inside = Some(window("10:00PM", "11:00PM"));
        let outside = Some(window("8:00AM", "5:00PM"));
        let empty = Some(TimeWindowWhen::default());
        let expr = vec!["true".to_owned()];
        let cases = [
            (ACTION_ALLOW, None, &expr, StaticDecision::NeedsEval),
            (
                ACTION_ALLOW,
                inside.clone(),
                &expr,
                StaticDecision::NeedsEval,
            ),
            (ACTION_ALLOW, outside.clone(), &expr, StaticDecision::Stop),
            (
                ACTION_ALLOW,
                empty.clone(),
                &expr,
                StaticDecision::NeedsEval,
            ),
            (ACTION_ALLOW, None, &vec![], StaticDecision::Pass),
            (ACTION_DENY, None, &expr, StaticDecision::NeedsEval),
            (ACTION_DENY, inside, &expr, StaticDecision::NeedsEval),
            (ACTION_DENY, outside, &expr, StaticDecision::Pass),
            (ACTION_DENY, empty, &expr, StaticDecision::NeedsEval),
            (ACTION_DENY, None, &vec![], StaticDecision::Pass),
            ("bogus", None, &expr, StaticDecision::Stop),
        ];
        for (action, when, expressions, want) in cases {
            let filter = EventFilter {
                action: action.to_owned(),
                expressions: expressions.clone(),
                when: when.clone(),
                ..Default::default()
            };
            assert_eq!(
                static_decision(&filter, now),
                want,
                "{action} {when:?} {expressions:?}"
            );
        }
    }
}
