//! Test helpers for runtime assets: real tar.gz archives built in the test, and a real HTTP(S)
//! server on port 0 that serves them, counts requests per path and records request headers.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use kensa_types::resources::asset::Asset;
use sha2::{Digest, Sha512};
use tokio_rustls::rustls;

/// A gzip-compressed tar holding `files` (path, content), every file mode 0755.
pub fn tar_gz(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        builder
            .append_data(&mut header, path, content.as_bytes())
            .unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&tar).unwrap();
    encoder.finish().unwrap()
}

/// An archive with one script, `bin/<name>`, running `body`.
pub fn script_archive(name: &str, body: &str) -> Vec<u8> {
    tar_gz(&[(&format!("bin/{name}"), &format!("#!/bin/sh\n{body}\n"))])
}

pub fn sha512_hex(bytes: &[u8]) -> String {
    Sha512::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[derive(Default)]
struct Served {
    files: Mutex<HashMap<String, Vec<u8>>>,
    hits: Mutex<HashMap<String, usize>>,
    headers: Mutex<Vec<HeaderMap>>,
    delay: Mutex<Duration>,
}

/// An HTTP server for asset archives: `GET /<path>` answers what `serve` put there, or 404.
#[derive(Clone)]
pub struct AssetServer {
    pub base: String,
    served: Arc<Served>,
}

impl AssetServer {
    pub async fn start() -> AssetServer {
        let served = Arc::new(Served::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = router(&served);
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        AssetServer { base, served }
    }

    /// An `https://localhost:<port>` server presenting `tls`'s certificate.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> AssetServer {
        let served = Arc::new(Served::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!(
            "https://localhost:{}",
            listener.local_addr().unwrap().port()
        );
        let listener = TlsListener {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(tls),
        };
        let router = router(&served);
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        AssetServer { base, served }
    }

    /// Serves `bytes` at `/<path>` (replacing what was there); returns its URL.
    pub fn serve(&self, path: &str, bytes: Vec<u8>) -> String {
        self.served
            .files
            .lock()
            .unwrap()
            .insert(path.to_owned(), bytes);
        self.url(path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// How many requests `/<path>` received.
    pub fn hits(&self, path: &str) -> usize {
        self.served
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// The headers of every request so far.
    pub fn request_headers(&self) -> Vec<HeaderMap> {
        self.served.headers.lock().unwrap().clone()
    }

    /// Makes every answer wait this long (so concurrent requests overlap).
    pub fn set_delay(&self, delay: Duration) {
        *self.served.delay.lock().unwrap() = delay;
    }
}

fn router(served: &Arc<Served>) -> Router {
    Router::new()
        .route("/{*path}", get(serve_file))
        .with_state(served.clone())
}

/// Accepts TCP connections and completes their TLS handshake (failed ones are dropped).
struct TlsListener {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, address)) = self.listener.accept().await else {
                continue;
            };
            if let Ok(stream) = self.acceptor.accept(stream).await {
                return (stream, address);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A CA (PEM) and a server configuration whose `localhost` certificate it signed.
pub fn ca_and_server() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    (ca.pem(), Arc::new(server))
}

async fn serve_file(
    State(served): State<Arc<Served>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Bytes, StatusCode> {
    *served.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    served.headers.lock().unwrap().push(headers);
    let delay = *served.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let file = served.files.lock().unwrap().get(&path).cloned();
    file.map(Bytes::from).ok_or(StatusCode::NOT_FOUND)
}

/// An asset named `name` downloading `url`, expected to have `sha512`.
pub fn asset(name: &str, url: &str, sha512: &str) -> Asset {
    let mut asset = Asset {
        url: url.into(),
        sha512: sha512.into(),
        ..Asset::default()
    };
    asset.metadata.name = name.into();
    asset.metadata.namespace = "default".into();
    asset
}
