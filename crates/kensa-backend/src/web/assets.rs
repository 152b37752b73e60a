//! The dashboard's static files, embedded in the binary (no separate web server, no CDN, no
//! build step: `crates/kensa-backend/web/` holds hand-written HTML, CSS and JavaScript).
//!
//! Caching: `index.html` names every other asset with a content hash (`/assets/app.js?v=…`),
//! so those are cached for a year and a new binary's assets are fetched at once; `index.html`
//! itself is revalidated on every load (`ETag`, `304`). Every response carries a strict
//! Content-Security-Policy: the page can only load its own scripts and styles and only talk to
//! its own origin, which is also what "no network fetches from the page" means in practice.
//!
//! Compression: every file is gzipped once, when the process first builds [`Assets`] (a few
//! milliseconds for ~100 KB, never per request), and served gzipped to clients whose
//! `Accept-Encoding` allows it, with `Content-Encoding: gzip`; others get the identity bytes.
//! Both carry `Vary: Accept-Encoding`, and each representation has its own `ETag`.

use std::io::Write;
use std::sync::{Arc, LazyLock};

use axum::extract::{Path, RawQuery};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
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
    index: Body,
    /// `(asset, version, body)`; the version is the first 16 hex digits of its SHA-256.
    files: Vec<(&'static Asset, String, Body)>,
}

/// One file's bytes as served: as is, and gzipped when that is smaller.
struct Body {
    identity: Bytes,
    gzip: Option<Bytes>,
    /// The quoted ETag of the identity bytes; the gzipped bytes' is the same with `-gzip`.
    etag: String,
}

impl Body {
    fn new(identity: Bytes, version: &str) -> Body {
        let gzip = gzip(&identity).filter(|packed| packed.len() < identity.len());
        Body {
            identity,
            gzip: gzip.map(Bytes::from),
            etag: format!("\"{version}\""),
        }
    }

    fn gzip_etag(&self) -> String {
        format!("{}-gzip\"", self.etag.trim_end_matches('"'))
    }
}

fn gzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(data.len() / 3), Compression::best());
    encoder.write_all(data).ok()?;
    encoder.finish().ok()
}

fn version_of(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Built (and compressed) once per process, whatever the number of routers.
static SHARED: LazyLock<Arc<Assets>> = LazyLock::new(|| Arc::new(Assets::new()));

impl Assets {
    pub fn new() -> Assets {
        let files: Vec<(&'static Asset, String, Body)> = FILES
            .iter()
            .map(|asset| {
                let version = version_of(asset.body);
                let body = Body::new(Bytes::from_static(asset.body), &version);
                (asset, version, body)
            })
            .collect();
        let mut index_html = INDEX_TEMPLATE.to_owned();
        for (asset, version, _) in &files {
            index_html = index_html.replace(
                &format!("{{{{{}}}}}", asset.name),
                &format!("/assets/{}?v={version}", asset.name),
            );
        }
        let index_version = version_of(index_html.as_bytes());
        Assets {
            index: Body::new(Bytes::from(index_html), &index_version),
            files,
        }
    }

    /// The process-wide instance: compression happens the first time it is asked for.
    pub fn shared() -> Arc<Assets> {
        SHARED.clone()
    }

    /// `GET /`: the single page.
    pub fn index(&self, headers: &HeaderMap) -> Response {
        respond(headers, &self.index, "text/html; charset=utf-8", "no-cache")
    }

    /// `GET /assets/{name}`: immutable when asked for the current version.
    pub fn file(&self, name: &str, query: Option<&str>, headers: &HeaderMap) -> Response {
        let Some((asset, version, body)) = self.files.iter().find(|(a, _, _)| a.name == name)
        else {
            return (StatusCode::NOT_FOUND, "not found").into_response();
        };
        let current = query.is_some_and(|q| q == format!("v={version}"));
        let cache = if current {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        respond(headers, body, asset.content_type, cache)
    }
}

impl Default for Assets {
    fn default() -> Self {
        Assets::new()
    }
}

/// Whether the request's `Accept-Encoding` allows gzip: `gzip` (or `x-gzip`) or `*` with a
/// non-zero quality, an explicit `gzip;q=0` winning over `*`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let quality = parts
                .filter_map(|param| {
                    let (name, value) = param.split_once('=')?;
                    name.trim()
                        .eq_ignore_ascii_case("q")
                        .then(|| value.trim().parse::<f32>().unwrap_or(0.0))
                })
                .next_back()
                .unwrap_or(1.0);
            match coding.as_str() {
                "gzip" | "x-gzip" => gzip = Some(quality > 0.0),
                "*" => any = Some(quality > 0.0),
                _ => {}
            }
        }
    }
    gzip.or(any).unwrap_or(false)
}

fn respond(
    headers: &HeaderMap,
    body: &Body,
    content_type: &'static str,
    cache: &'static str,
) -> Response {
    let gzip_etag = body.gzip_etag();
    let gzipped = body.gzip.as_ref().filter(|_| accepts_gzip(headers));
    let etag = if gzipped.is_some() {
        gzip_etag.as_str()
    } else {
        body.etag.as_str()
    };
    // Either representation's tag means the client holds the current file.
    let matched = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .map(str::trim)
                .find(|tag| *tag == body.etag || *tag == gzip_etag)
        });
    let mut response = match (matched, gzipped) {
        (Some(_), _) => StatusCode::NOT_MODIFIED.into_response(),
        (None, Some(packed)) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            packed.clone(),
        )
            .into_response(),
        (None, None) => (
            [(header::CONTENT_TYPE, content_type)],
            body.identity.clone(),
        )
            .into_response(),
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(matched.unwrap_or(etag)) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
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
        for (asset, version, _) in &assets.files {
            let url = format!("/assets/{}?v={version}", asset.name);
            assert!(
                std::str::from_utf8(&assets.index.identity)
                    .unwrap()
                    .contains(&url),
                "index.html does not reference {url}"
            );
        }
        let html = std::str::from_utf8(&assets.index.identity).unwrap();
        assert!(!html.contains("{{"), "unfilled placeholder");
    }

    #[test]
    fn assets_are_revalidated_unless_asked_by_version() {
        let assets = Assets::new();
        let (_, version, _) = &assets.files[0];
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

    #[test]
    fn gzip_is_used_only_when_the_client_accepts_it() {
        let cases = [
            ("", false),
            ("gzip", true),
            ("gzip, deflate, br, zstd", true),
            ("br;q=1.0, GZIP;q=0.5", true),
            ("x-gzip", true),
            ("*", true),
            ("identity", false),
            ("gzip;q=0", false),
            ("gzip; q=0.0, *", false),
            ("*;q=0", false),
            ("deflate, br", false),
        ];
        for (accept, expected) in cases {
            let mut headers = HeaderMap::new();
            if !accept.is_empty() {
                headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(accept));
            }
            assert_eq!(accepts_gzip(&headers), expected, "{accept:?}");
        }
    }

    async fn body_of(response: Response) -> Vec<u8> {
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec()
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn compressed_and_plain_answers_carry_the_same_bytes() {
        let assets = &Assets::new();
        let serve = |name: &str, headers: &HeaderMap| match name {
            "index.html" => assets.index(headers),
            asset => assets.file(asset, None, headers),
        };
        let mut pages = vec![("index.html", assets.index.identity.to_vec())];
        pages.extend(FILES.iter().map(|asset| (asset.name, asset.body.to_vec())));
        let mut accepting = HeaderMap::new();
        accepting.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate, br"),
        );
        for (name, original) in pages {
            let plain = serve(name, &HeaderMap::new());
            assert_eq!(plain.status(), StatusCode::OK, "{name}");
            assert!(
                plain.headers().get(header::CONTENT_ENCODING).is_none(),
                "{name}"
            );
            assert_eq!(plain.headers()[header::VARY], "accept-encoding", "{name}");
            let plain_etag = plain.headers()[header::ETAG].clone();
            assert_eq!(body_of(plain).await, original, "{name}");

            let packed = serve(name, &accepting);
            assert_eq!(packed.headers()[header::VARY], "accept-encoding", "{name}");
            if name == "icon.svg" && packed.headers().get(header::CONTENT_ENCODING).is_none() {
                continue; // too small to gain anything: served as is
            }
            assert_eq!(packed.headers()[header::CONTENT_ENCODING], "gzip", "{name}");
            let packed_etag = packed.headers()[header::ETAG].clone();
            assert_ne!(
                packed_etag, plain_etag,
                "{name}: one tag per representation"
            );
            let bytes = body_of(packed).await;
            assert!(bytes.len() < original.len(), "{name}: gzip is smaller");
            assert_eq!(gunzip(&bytes), original, "{name}");

            // Revalidating with either tag answers 304, whatever the encoding asked for.
            for tag in [plain_etag, packed_etag] {
                let mut headers = accepting.clone();
                headers.insert(header::IF_NONE_MATCH, tag);
                let response = serve(name, &headers);
                assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{name}");
                assert!(body_of(response).await.is_empty());
            }
        }
        // The big ones shrink a lot: what the first view downloads.
        let js = assets
            .files
            .iter()
            .find(|(a, _, _)| a.name == "app.js")
            .unwrap();
        assert!(js.2.gzip.as_ref().unwrap().len() * 3 < js.2.identity.len());
    }
}
