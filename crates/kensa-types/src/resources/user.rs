//! Users (`type: User`): local accounts. The cleartext `password` only travels inwards (it is
//! hashed by the backend); responses strip it, and lists also strip `password_hash`.

use serde::{Deserialize, Serialize};

use super::{field, joined, Resource};
use crate::meta::{validate_named, STRICT_NAME};
use crate::ResourceError;

/// The shortest password Sensu accepts.
pub const MIN_PASSWORD_LEN: usize = 8;

/// `type: User` (reference §2.13). Users have no metadata: `username` is the name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct User {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// Cleartext, on create/update only.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub password: String,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_default"
    )]
    pub groups: Vec<String>,
    pub disabled: bool,
    /// bcrypt hash; may be supplied instead of `password`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub password_hash: String,
}

impl User {
    /// The user as a single GET returns it: without the cleartext password.
    pub fn without_password(&self) -> User {
        User {
            password: String::new(),
            ..self.clone()
        }
    }

    /// The user as a list returns it: without password or hash.
    pub fn without_credentials(&self) -> User {
        User {
            password: String::new(),
            password_hash: String::new(),
            ..self.clone()
        }
    }
}

impl Resource for User {
    fn validate(&self) -> Result<(), ResourceError> {
        validate_named("username", "username", &self.username, &STRICT_NAME)?;
        if !self.password.is_empty() && self.password.chars().count() < MIN_PASSWORD_LEN {
            return Err(ResourceError::invalid_field(
                "password",
                "password length must be at least 8 characters",
            ));
        }
        Ok(())
    }

    fn fields(&self) -> Vec<(String, String)> {
        vec![
            field("user.username", &self.username),
            field("user.disabled", self.disabled.to_string()),
            field("user.groups", joined(&self.groups)),
        ]
    }
}
