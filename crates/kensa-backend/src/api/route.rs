//! Parsing `/api/core/v2/…` paths and query strings into what a request addresses.
//!
//! Grammar (reference §1.4, §3.4–3.5):
//! - `namespaces[/{ns}]` — the Namespace kind itself;
//! - `namespaces/{ns}/{resource}[/{name}[/{sub}…]]` — a namespaced kind;
//! - `{resource}` of a namespaced kind — a listing across all namespaces (plus
//!   `silenced/checks/{check}`);
//! - `{resource}[/{name}[/{sub}…]]` of a cluster-wide kind.
//!
//! Each raw segment is percent-decoded on its own, so an asset named `sensu/ruby` arrives as
//! `sensu%2Fruby` and stays one segment.

use axum::body::Body;
use axum::http::{HeaderMap, Method};
use kensa_types::Kind;

use super::{ApiError, ApiResult};
use crate::auth::Caller;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub kind: Kind,
    /// `Some` inside `/namespaces/{ns}/…`; `None` for cluster-wide kinds and listings across
    /// namespaces.
    pub namespace: Option<String>,
    /// The addressed resource; for events `entity/check`.
    pub name: Option<String>,
    /// Segments after the name (`execute`, `hooks/{type}`, `password`, `groups/{g}`…).
    pub sub: Vec<String>,
}

impl Route {
    pub fn parse(raw_path: &str) -> ApiResult<Route> {
        let segments = raw_path
            .trim_end_matches('/')
            .split('/')
            .map(decode_segment)
            .collect::<ApiResult<Vec<String>>>()?;
        let not_found = || ApiError::not_found("not found");
        let kind_of = |segment: &str| Kind::from_resource(segment).ok_or_else(not_found);
        let [first, rest @ ..] = segments.as_slice() else {
            return Err(not_found());
        };
        if first == "namespaces" {
            return match rest {
                [] => Ok(Route {
                    kind: Kind::Namespace,
                    namespace: None,
                    name: None,
                    sub: vec![],
                }),
                [ns] => Ok(Route {
                    kind: Kind::Namespace,
                    namespace: None,
                    name: Some(ns.clone()),
                    sub: vec![],
                }),
                [ns, resource, tail @ ..] => {
                    let kind = kind_of(resource)?;
                    if !kind.is_namespaced() {
                        return Err(not_found());
                    }
                    let (name, sub) = split_name(kind, tail);
                    Ok(Route {
                        kind,
                        namespace: Some(ns.clone()),
                        name,
                        sub,
                    })
                }
            };
        }
        let kind = kind_of(first)?;
        if kind.is_namespaced() {
            // Listings across namespaces, and the silenced sub-listing `silenced/checks/{c}`.
            return Ok(Route {
                kind,
                namespace: None,
                name: None,
                sub: rest.to_vec(),
            });
        }
        let (name, sub) = split_name(kind, rest);
        Ok(Route {
            kind,
            namespace: None,
            name,
            sub,
        })
    }

    /// The RBAC resource name of this request (the kind's, or `localselfuser` for self-service).
    pub fn is_listing(&self) -> bool {
        self.name.is_none()
    }
}

/// The name and the rest of the segments after `{resource}`. Events are addressed by two
/// segments (`{entity}/{check}`); a single segment lists one entity's events.
fn split_name(kind: Kind, tail: &[String]) -> (Option<String>, Vec<String>) {
    match (kind, tail) {
        (_, []) => (None, vec![]),
        (Kind::Event, [entity]) => (None, vec![entity.clone()]),
        (Kind::Event, [entity, check, rest @ ..]) => {
            (Some(format!("{entity}/{check}")), rest.to_vec())
        }
        (Kind::Silenced, [first, value]) if first == "subscriptions" || first == "checks" => {
            (None, vec![first.clone(), value.clone()])
        }
        (_, [name, rest @ ..]) => (Some(name.clone()), rest.to_vec()),
    }
}

fn decode_segment(raw: &str) -> ApiResult<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(byte) = hex else {
                return Err(ApiError::bad_request(format!(
                    "invalid percent-encoding in path segment {raw:?}"
                )));
            };
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::bad_request(format!("path segment {raw:?} is not UTF-8")))
}

/// The query parameters the core API understands.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub limit: usize,
    pub continue_token: Option<String>,
    pub label_selectors: Vec<String>,
    pub field_selectors: Vec<String>,
}

impl Query {
    pub fn parse(raw: &str) -> Query {
        let mut query = Query::default();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode_query_value(value);
            match key {
                // Sensu: a limit that is not an integer means no limit.
                "limit" => query.limit = value.parse().unwrap_or(0),
                "continue" if !value.is_empty() => query.continue_token = Some(value),
                "labelSelector" if !value.is_empty() => query.label_selectors.push(value),
                "fieldSelector" if !value.is_empty() => query.field_selectors.push(value),
                _ => {}
            }
        }
        query
    }
}

fn decode_query_value(raw: &str) -> String {
    let replaced = raw.replace('+', " ");
    decode_segment(&replaced).unwrap_or(replaced)
}

/// A parsed core/v2 request, after authentication.
pub struct ApiRequest {
    pub method: Method,
    pub headers: HeaderMap,
    pub route: Route,
    pub query: Query,
    pub caller: Caller,
    pub body: Body,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> Route {
        Route::parse(path).unwrap()
    }

    #[test]
    fn paths_address_the_right_resource() {
        let r = route("namespaces/default/checks/cpu");
        assert_eq!(
            (r.kind, r.namespace.as_deref(), r.name.as_deref()),
            (Kind::CheckConfig, Some("default"), Some("cpu"))
        );
        let r = route("namespaces/default/checks/cpu/execute");
        assert_eq!(r.sub, vec!["execute"]);
        let r = route("namespaces/default/events/web1/http");
        assert_eq!(r.name.as_deref(), Some("web1/http"));
        let r = route("namespaces/default/events/web1");
        assert_eq!((r.name, r.sub), (None, vec!["web1".to_owned()]));
        let r = route("namespaces/default/assets/sensu%2Fruby");
        assert_eq!(r.name.as_deref(), Some("sensu/ruby"));
        let r = route("checks");
        assert_eq!(
            (r.kind, r.namespace, r.name),
            (Kind::CheckConfig, None, None)
        );
        let r = route("namespaces/prod");
        assert_eq!((r.kind, r.name.as_deref()), (Kind::Namespace, Some("prod")));
        let r = route("users/alice/groups/ops");
        assert_eq!(
            (r.kind, r.name.as_deref(), r.sub.len()),
            (Kind::User, Some("alice"), 2)
        );
        let r = route("namespaces/default/silenced/subscriptions/linux");
        assert_eq!(
            (r.name, r.sub),
            (None, vec!["subscriptions".to_owned(), "linux".to_owned()])
        );
        let r = route("namespaces/default/silenced/linux:cpu");
        assert_eq!(r.name.as_deref(), Some("linux:cpu"));
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for path in [
            "gizmos",
            "namespaces/default/users/x",
            "namespaces/default/gizmos",
            "",
        ] {
            let err = Route::parse(path).unwrap_err();
            assert_eq!(err.status, axum::http::StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[test]
    fn query_parameters() {
        let q = Query::parse("limit=50&continue=abc&fieldSelector=check.name%20matches%20%22linux%22&labelSelector=a+%3D%3D+b");
        assert_eq!(q.limit, 50);
        assert_eq!(q.continue_token.as_deref(), Some("abc"));
        assert_eq!(q.field_selectors, vec![r#"check.name matches "linux""#]);
        assert_eq!(q.label_selectors, vec!["a == b"]);
        assert_eq!(Query::parse("limit=x").limit, 0);
    }
}
