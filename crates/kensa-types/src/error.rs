//! The one error type of the resource model: what is wrong, and where (a field path such as
//! `interval`, `check_hooks[0]` or `check.subdues[1]`), so that the API and kensactl can name it.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResourceError {
    /// The body is not the JSON shape of the kind: wrong type, bad enum value, malformed UUID.
    /// `path` is the JSON path of the offending value (`interval`, `metadata.labels.x`).
    #[error("{path}: {message}")]
    Decode { path: String, message: String },
    /// The body decoded, but breaks one of the kind's rules. `message` is Sensu's wording
    /// (`check interval must be greater than 0 or a valid cron schedule must be provided`);
    /// `field` the path of the offending field. Displayed as `<field>: <message>`.
    #[error("{}", display_invalid(.field.as_deref(), .message))]
    Invalid {
        field: Option<String>,
        message: String,
    },
}

fn display_invalid(field: Option<&str>, message: &str) -> String {
    match field {
        Some(field) => format!("{field}: {message}"),
        None => message.to_owned(),
    }
}

impl ResourceError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ResourceError::Invalid {
            field: None,
            message: message.into(),
        }
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ResourceError::Invalid {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// Places an error found in a nested object under `parent`: the field path becomes
    /// `parent.<field>` (or `parent[i]` style when the path starts with an index) and the message
    /// gets Sensu's `context` prefix, e.g. `check is invalid: `.
    pub fn within(self, parent: &str, context: &str) -> Self {
        let join = |path: &str| match path {
            "" => parent.to_owned(),
            p if p.starts_with('[') => format!("{parent}{p}"),
            p => format!("{parent}.{p}"),
        };
        match self {
            ResourceError::Decode { path, message } => ResourceError::Decode {
                path: join(&path),
                message,
            },
            ResourceError::Invalid { field, message } => ResourceError::Invalid {
                field: Some(join(field.as_deref().unwrap_or_default())),
                message: format!("{context}{message}"),
            },
        }
    }

    /// The path of the offending field, when known.
    pub fn field(&self) -> Option<&str> {
        match self {
            ResourceError::Decode { path, .. } => Some(path),
            ResourceError::Invalid { field, .. } => field.as_deref(),
        }
    }

    /// The message without the field path.
    pub fn message(&self) -> &str {
        match self {
            ResourceError::Decode { message, .. } | ResourceError::Invalid { message, .. } => {
                message
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_errors_keep_the_full_path_and_sensu_context() {
        let err = ResourceError::invalid_field(
            "interval",
            "check interval must be greater than or equal to 1",
        )
        .within("check", "check is invalid: ");
        assert_eq!(err.field(), Some("check.interval"));
        assert_eq!(
            err.to_string(),
            "check.interval: check is invalid: check interval must be greater than or equal to 1"
        );
        let indexed = ResourceError::invalid_field("[2]", "bad").within("subdues", "");
        assert_eq!(indexed.field(), Some("subdues[2]"));
        assert_eq!(ResourceError::invalid("plain").to_string(), "plain");
    }
}
