//! A minimal asynchronous client of the core/v2 REST API, for load generation: one pooled
//! `reqwest` client shared by every worker, and an access token obtained with Basic auth on
//! `GET /auth` and renewed before it expires (or after a 401). Not the typed CLI client of
//! `kensa-cli`, which is blocking and does far more than a benchmark needs.
//!
//! Every exchange reports the time of the HTTP round trip alone (request sent → body fully
//! read), so an occasional re-login never lands in a request's latency.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// One completed request.
pub struct Exchange {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// Request sent → last byte of the body read.
    pub elapsed: Duration,
}

/// What a streamed read measured (the body is counted, not kept).
pub struct StreamedExchange {
    pub status: StatusCode,
    pub first_byte: Duration,
    pub elapsed: Duration,
    pub body_bytes: u64,
}

pub struct ApiClient {
    http: reqwest::Client,
    /// `http://host:port`, no trailing slash.
    base_url: String,
    username: String,
    password: String,
    /// The current access token, shared by all workers. Locked only to read or replace it,
    /// never across an `.await`; two workers may log in at once at expiry, which is harmless.
    token: Mutex<Option<AccessToken>>,
}

#[derive(Clone)]
struct AccessToken {
    value: String,
    renew_at: Instant,
}

impl ApiClient {
    /// `pool_size` idle connections are kept, so `pool_size` concurrent workers reuse theirs.
    pub fn new(
        base_url: &str,
        username: &str,
        password: &str,
        pool_size: usize,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(pool_size)
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the http client")?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            username: username.to_owned(),
            password: password.to_owned(),
            token: Mutex::new(None),
        })
    }

    /// Polls `/health` until it answers 200 or `timeout` passes.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/health", self.base_url);
        loop {
            let last = match self.http.get(&url).send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => format!("status {}", response.status()),
                Err(err) => err.to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "backend at {} not healthy after {timeout:?}: {last}",
                    self.base_url
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends one request with the current token; on a 401 logs in again and retries once.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Exchange> {
        for attempt in 0..2 {
            let token = self.access_token(attempt > 0).await?;
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base_url))
                .bearer_auth(token);
            if let Some(body) = body {
                request = request.json(body);
            }
            let started = Instant::now();
            let response = request
                .send()
                .await
                .with_context(|| format!("{method} {path}"))?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response
                .bytes()
                .await
                .with_context(|| format!("{method} {path}: reading body"))?;
            let elapsed = started.elapsed();
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                continue;
            }
            return Ok(Exchange {
                status,
                headers,
                body: body.to_vec(),
                elapsed,
            });
        }
        bail!("{method} {path}: unauthorized even after logging in again")
    }

    /// `GET path`, reading the body chunk by chunk and keeping only its length.
    pub async fn get_streamed(&self, path: &str) -> anyhow::Result<StreamedExchange> {
        let token = self.access_token(false).await?;
        let started = Instant::now();
        let mut response = self
            .http
            .get(format!("{}{path}", self.base_url))
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status();
        let mut first_byte = None;
        let mut body_bytes = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("GET {path}: reading body"))?
        {
            first_byte.get_or_insert_with(|| started.elapsed());
            body_bytes += chunk.len() as u64;
        }
        let elapsed = started.elapsed();
        Ok(StreamedExchange {
            status,
            first_byte: first_byte.unwrap_or(elapsed),
            elapsed,
            body_bytes,
        })
    }

    /// The cached token, or a fresh one when it is due for renewal or `force_login`.
    async fn access_token(&self, force_login: bool) -> anyhow::Result<String> {
        if !force_login {
            let cached = self.token.lock().expect("token lock").clone();
            if let Some(token) = cached.filter(|t| Instant::now() < t.renew_at) {
                return Ok(token.value);
            }
        }
        let token = self.login().await?;
        *self.token.lock().expect("token lock") = Some(token.clone());
        Ok(token.value)
    }

    async fn login(&self) -> anyhow::Result<AccessToken> {
        let response = self
            .http
            .get(format!("{}/auth", self.base_url))
            .basic_auth(&self.username, Some(&self.password))
            .send()
            .await
            .context("GET /auth")?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("GET /auth as {:?}: {status}: {text}", self.username);
        }
        let body: Value = response
            .json()
            .await
            .context("GET /auth: decoding the token")?;
        let value = body["access_token"]
            .as_str()
            .context("GET /auth: no access_token")?
            .to_owned();
        // Renew well before expiry: at 80% of the lifetime the server announced.
        let lifetime_s = body["expires_at"].as_i64().unwrap_or(0) - unix_now();
        let renew_after = Duration::from_secs(lifetime_s.max(1) as u64).mul_f64(0.8);
        Ok(AccessToken {
            value,
            renew_at: Instant::now() + renew_after,
        })
    }
}

pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
