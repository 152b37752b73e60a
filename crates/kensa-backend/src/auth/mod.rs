//! Who is calling: password hashing, JWT access tokens, refresh-token sessions, API keys, and
//! the RBAC decision (`rbac`). The HTTP side of authentication lives in `api::auth`.

pub mod jwt;
pub mod password;
pub mod rbac;

/// An authenticated caller, as every API handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub username: String,
    pub groups: Vec<String>,
    /// True when the caller authenticated with `Authorization: Key …`.
    pub api_key: bool,
}
