//! The dashboard's static files, embedded in the binary (no separate web server, no CDN, no
//! build step: `crates/kensa-backend/web/` holds hand-written HTML, CSS and JavaScript).
//!
//! Caching: `index.html` names every other asset with a content hash (`/assets/app.js?v=…`),
//! so those are cached for a year and a new binary's assets are fetched at once; `index.html`
//! itself is revalidated on every load (`ETag`, `304`). Every response carries a strict
//! Content-Security-Policy: the page can only load its own scripts and styles and only talk to
//! its own origin, which is also what "no network fetches from the page" means in practice.

use axum::extract::{Path, RawQuery};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// Applied to everything the dashboard serves.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; manifest-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Asset {
    /// The file name under `/assets/`.
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const FILES: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/app.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../web/icon.svg"),
    },
];

const INDEX_TEMPLATE: &str = include_str!("../../web/index.html");

/// The assets with their content hashes, and `index.html` with the hashed URLs filled in.
pub struct Assets {
    index_html: String,
    index_etag: String,
    /// `(asset, version)`; the version is the first 16 hex digits of its SHA-256.
    files: Vec<(&'static Asset, String)>,
}

fn version_of(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Assets {
    pub fn new() -> Assets {
        let files: Vec<(&'static Asset, String)> =
            FILES.iter().map(|a| (a, version_of(a.body))).collect();
        let mut index_html = INDEX_TEMPLATE.to_owned();
        for (asset, version) in &files {
            index_html = index_html.replace(
                &format!("{{{{{}}}}}", asset.name),
                &format!("/assets/{}?v={version}", asset.name),
            );
        }
        let index_etag = format!("\"{}\"", version_of(index_html.as_bytes()));
        Assets {
            index_html,
            index_etag,
            files,
        }
    }

    /// `GET /`: the single page.
    pub fn index(&self, headers: &HeaderMap) -> Response {
        respond(
            headers,
            &self.index_etag,
            "text/html; charset=utf-8",
            "no-cache",
            self.index_html.clone().into_bytes(),
        )
    }

    /// `GET /assets/{name}`: immutable when asked for the current version.
    pub fn file(&self, name: &str, query: Option<&str>, headers: &HeaderMap) -> Response {
        let Some((asset, version)) = self.files.iter().find(|(a, _)| a.name == name) else {
            return (StatusCode::NOT_FOUND, "not found").into_response();
        };
        let current = query.is_some_and(|q| q == format!("v={version}"));
        let cache = if current {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        respond(
            headers,
            &format!("\"{version}\""),
            asset.content_type,
            cache,
            asset.body.to_vec(),
        )
    }
}

impl Default for Assets {
    fn default() -> Self {
        Assets::new()
    }
}

fn respond(
    headers: &HeaderMap,
    etag: &str,
    content_type: &'static str,
    cache: &'static str,
    body: Vec<u8>,
) -> Response {
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

/// Headers every dashboard response carries.
pub fn security_headers(headers: &mut HeaderMap) {
    let set = |headers: &mut HeaderMap, name: HeaderName, value: &'static str| {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
}

pub async fn serve_file(
    axum::extract::State(assets): axum::extract::State<std::sync::Arc<Assets>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    assets.file(&name, query.as_deref(), &headers)
}

pub async fn serve_index(
    axum::extract::State(assets): axum::extract::State<std::sync::Arc<Assets>>,
    headers: HeaderMap,
) -> Response {
    assets.index(&headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_every_asset_by_its_current_version() {
        let assets = Assets::new();
        for (asset, version) in &assets.files {
            let url = format!("/assets/{}?v={version}", asset.name);
            assert!(
                assets.index_html.contains(&url),
                "index.html does not reference {url}"
            );
        }
        assert!(!assets.index_html.contains("{{"), "unfilled placeholder");
    }

    #[test]
    fn assets_are_revalidated_unless_asked_by_version() {
        let assets = Assets::new();
        let (_, version) = &assets.files[0];
        let cases = [
            (
                Some(format!("v={version}")),
                "public, max-age=31536000, immutable",
            ),
            (Some("v=old".to_owned()), "no-cache"),
            (None, "no-cache"),
        ];
        for (query, cache) in cases {
            let response = assets.file("app.js", query.as_deref(), &HeaderMap::new());
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response.headers()[header::CACHE_CONTROL],
                cache,
                "{query:?}"
            );
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"{version}\"")).unwrap(),
        );
        let response = assets.file("app.js", None, &headers);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            assets.file("nope.js", None, &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
