//! Silences (`type: Silenced`): mute the events of a subscription, a check, or both. The name is
//! always derived as `<subscription or *>:<check or *>` (`linux:check_cpu`, `*:http`,
//! `entity:web1:*`), so clients may omit it.

use serde::{Deserialize, Serialize};

use super::{field, label_fields, Resource};
use crate::meta::{validate_named, NAME, SUBSCRIPTION_NAME};
use crate::{ObjectMeta, ResourceError};

/// `expire` of a silence that never expires.
pub const NEVER_EXPIRES: i64 = -1;

/// `type: Silenced` (reference §2.11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Silenced {
    pub metadata: ObjectMeta,
    /// Seconds the silence lives after `begin`; [`NEVER_EXPIRES`] (-1) for ever.
    pub expire: i64,
    /// Delete the silence when a matching event resolves.
    pub expire_on_resolve: bool,
    /// Who created it (the API sets it from the caller).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub creator: String,
    /// Check name, or `*` / empty for any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub check: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Subscription (`entity:<name>` for one entity), or `*` / empty for any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subscription: String,
    /// When it takes effect (Unix seconds; now when 0).
    pub begin: i64,
    /// When it ends (Unix seconds; 0: computed from `begin + expire`, or never).
    pub expire_at: i64,
}

impl Default for Silenced {
    fn default() -> Self {
        Silenced {
            metadata: ObjectMeta::default(),
            expire: NEVER_EXPIRES,
            expire_on_resolve: false,
            creator: String::new(),
            check: String::new(),
            reason: String::new(),
            subscription: String::new(),
            begin: 0,
            expire_at: 0,
        }
    }
}

impl Silenced {
    /// Sensu's canonical name: `<subscription or *>:<check or *>`; `None` when both are empty.
    pub fn derived_name(subscription: &str, check: &str) -> Option<String> {
        if subscription.is_empty() && check.is_empty() {
            return None;
        }
        let or_any = |s: &str| {
            if s.is_empty() {
                "*".to_owned()
            } else {
                s.to_owned()
            }
        };
        Some(format!("{}:{}", or_any(subscription), or_any(check)))
    }

    /// The time-dependent defaults the API applies on write: `begin` is `now` when unset, and
    /// `expire_at` is `begin + expire` for expiring silences.
    pub fn prepare(&mut self, now: i64) {
        if self.begin == 0 {
            self.begin = now;
        }
        if self.expire_at == 0 && self.expire > 0 {
            self.expire_at = self.begin + self.expire;
        }
    }

    /// Whether the silence has started at `now` and not yet expired.
    pub fn is_active(&self, now: i64) -> bool {
        self.begin <= now && (self.expire_at == 0 || now < self.expire_at)
    }

    /// Whether the silence covers `check` for `subscription` (empty or `*` match anything).
    pub fn matches(&self, check: &str, subscription: &str) -> bool {
        let covers =
            |pattern: &str, value: &str| pattern.is_empty() || pattern == "*" || pattern == value;
        covers(&self.subscription, subscription) && covers(&self.check, check)
    }
}

impl Resource for Silenced {
    /// Derives the name, and reads an `expire` of 0 as "never" (-1), as Sensu reports it.
    fn apply_defaults(&mut self) {
        if let Some(name) = Silenced::derived_name(&self.subscription, &self.check) {
            self.metadata.name = name;
        }
        if self.expire == 0 {
            self.expire = NEVER_EXPIRES;
        }
    }

    fn validate(&self) -> Result<(), ResourceError> {
        let any = |s: &str| s.is_empty() || s == "*";
        if (self.subscription.is_empty() && self.check.is_empty())
            || (self.subscription == "*" && self.check == "*")
        {
            return Err(ResourceError::invalid_field(
                "subscription",
                "must provide check or subscription",
            ));
        }
        if !any(&self.subscription) {
            validate_named(
                "subscription",
                "subscription name",
                &self.subscription,
                &SUBSCRIPTION_NAME,
            )?;
        }
        if !any(&self.check) {
            validate_named("check", "check name", &self.check, &NAME)?;
        }
        self.metadata.require_namespace()
    }

    fn fields(&self) -> Vec<(String, String)> {
        let mut out = vec![
            field("silenced.name", &self.metadata.name),
            field("silenced.namespace", &self.metadata.namespace),
            field("silenced.check", &self.check),
            field("silenced.creator", &self.creator),
            field(
                "silenced.expire_on_resolve",
                self.expire_on_resolve.to_string(),
            ),
            field("silenced.subscription", &self.subscription),
            field("silenced.reason", &self.reason),
        ];
        label_fields("silenced", &self.metadata, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_derived_from_subscription_and_check() {
        assert_eq!(
            Silenced::derived_name("linux", "check_cpu").as_deref(),
            Some("linux:check_cpu")
        );
        assert_eq!(
            Silenced::derived_name("", "http").as_deref(),
            Some("*:http")
        );
        assert_eq!(
            Silenced::derived_name("entity:web1", "").as_deref(),
            Some("entity:web1:*")
        );
        assert_eq!(Silenced::derived_name("", ""), None);
    }

    #[test]
    fn prepare_and_matching() {
        let mut silence = Silenced {
            subscription: "linux".into(),
            expire: 3600,
            ..Silenced::default()
        };
        silence.prepare(1_000);
        assert_eq!((silence.begin, silence.expire_at), (1_000, 4_600));
        assert!(silence.is_active(1_000) && !silence.is_active(4_600) && !silence.is_active(999));
        assert!(silence.matches("anything", "linux"));
        assert!(!silence.matches("anything", "windows"));
    }
}
