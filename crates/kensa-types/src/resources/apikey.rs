//! API keys (`type: APIKey`): the key itself (a UUID) is `metadata.name`; it authenticates as
//! `username`. Created by the backend (POST), which sets the name and `created_at`.

use serde::{Deserialize, Serialize};

use super::{field, is_zero_i64, label_fields, Resource};
use crate::meta::{validate_named, NAME};
use crate::{ObjectMeta, ResourceError};

/// `type: APIKey` (reference §2.15).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiKey {
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// Unix seconds.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub created_at: i64,
}

impl Resource for ApiKey {
    fn validate(&self) -> Result<(), ResourceError> {
        if !self.metadata.namespace.is_empty() {
            return Err(ResourceError::invalid_field(
                "metadata.namespace",
                "api key cannot have a namespace",
            ));
        }
        if self.username.is_empty() {
            return Err(ResourceError::invalid_field(
                "username",
                "api key must have a username",
            ));
        }
        validate_named("metadata.name", "api key name", &self.metadata.name, &NAME)
    }

    fn fields(&self) -> Vec<(String, String)> {
        let mut out = vec![
            field("api_key.name", &self.metadata.name),
            field("api_key.username", &self.username),
        ];
        label_fields("api_key", &self.metadata, &mut out);
        out
    }
}
