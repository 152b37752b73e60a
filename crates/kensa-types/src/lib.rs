//! Kensa's resource model: every Sensu Go core/v2 kind as a typed struct with the same JSON
//! field names, defaults and validation rules as Sensu (see `shared/reference/sensu-resources-api.md`
//! §1–2), plus the two envelopes (unwrapped API bodies, wrapped `{type, api_version, metadata,
//! spec}` files) and the label/field selector language.
//!
//! Invariant: this crate does no I/O and has no async code. Everything here is a pure function
//! of its input (the current time, where it matters, is passed in).
//!
//! The rest of Kensa mostly talks to resources through [`Kind`]: `Kind::normalize` decodes a JSON
//! body into the kind's typed struct (filling defaults, reporting the failing field path),
//! validates it, and re-encodes it in Sensu's canonical JSON shape.

pub mod cron;
pub mod error;
pub mod event_state;
pub mod kind;
pub mod meta;
pub mod resources;
pub mod selector;
pub mod wrapped;

pub use error::ResourceError;
pub use kind::Kind;
pub use meta::ObjectMeta;
pub use selector::{Selector, SelectorError};
pub use wrapped::Wrapped;

/// The API group/version every kind in this crate belongs to.
pub const CORE_V2: &str = "core/v2";
