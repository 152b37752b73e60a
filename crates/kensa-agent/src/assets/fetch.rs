//! Downloading an asset archive (Sensu's `asset/fetcher.go`, plus what it lacked): HTTP(S) GET
//! with the asset's `headers` (a value with commas is several values, as in Sensu), public
//! roots plus the agent's `trusted-ca-file`, proxies from the environment, connect and read
//! timeouts and an overall one, a size cap, and anything but `200 OK` is an error. The body is
//! streamed to a file while it is hashed, so the caller compares SHA-512 before anything is
//! unpacked.
//!
//! Downloads are rate-limited by a token bucket (`assets-rate-limit` per second, burst
//! `assets-burst-limit`); as in Sensu an empty bucket fails the download at once rather than
//! waiting — the check fails with that reason and the next request tries again.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha512};
use tokio::io::AsyncWriteExt;

/// The longest a download may take, all of it.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest to wait for a connection (TCP and TLS).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest the server may stay silent in the middle of a download.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest archive the agent downloads.
pub const MAX_DOWNLOAD_BYTES: u64 = 1 << 30;

/// A token bucket: `rate` tokens per second up to `burst`, starting full.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            updated: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Builds the HTTP client: webpki roots plus every certificate of `trusted_ca_file`.
pub fn client(trusted_ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .timeout(DOWNLOAD_TIMEOUT)
        .user_agent(concat!("kensa-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = trusted_ca_file {
        let pem = std::fs::read(path)
            .map_err(|err| format!("trusted-ca-file {}: {err}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|err| format!("trusted-ca-file {}: {err}", path.display()))?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|err| format!("cannot create the HTTP client: {}", error_chain(&err)))
}

/// Downloads `url` into the file `to` (created); returns the lowercase hex SHA-512 of what
/// was written. The error text never contains header values or URL credentials.
pub async fn download(
    client: &reqwest::Client,
    url: &str,
    headers: &BTreeMap<String, String>,
    to: &Path,
) -> Result<String, String> {
    let shown = display_url(url);
    let mut request = client.get(url);
    for (name, value) in headers {
        for part in value.split(',') {
            request = request.header(name.as_str(), part.trim());
        }
    }
    let mut response = request
        .send()
        .await
        .map_err(|err| format!("GET {shown}: {}", error_chain(&err.without_url())))?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        return Err(format!("GET {shown}: HTTP {status}"));
    }
    if response.content_length().unwrap_or(0) > MAX_DOWNLOAD_BYTES {
        return Err(too_large(&shown));
    }
    let mut file = tokio::fs::File::create(to)
        .await
        .map_err(|err| format!("cannot create {}: {err}", to.display()))?;
    let mut hasher = Sha512::new();
    let mut written: u64 = 0;
    loop {
        let chunk = response
            .chunk()
            .await
            .map_err(|err| format!("GET {shown}: {}", error_chain(&err.without_url())))?;
        let Some(chunk) = chunk else { break };
        written += chunk.len() as u64;
        if written > MAX_DOWNLOAD_BYTES {
            return Err(too_large(&shown));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|err| format!("cannot write {}: {err}", to.display()))?;
    }
    file.flush()
        .await
        .map_err(|err| format!("cannot write {}: {err}", to.display()))?;
    Ok(hex(&hasher.finalize()))
}

fn too_large(shown: &str) -> String {
    format!("GET {shown}: larger than {} MiB", MAX_DOWNLOAD_BYTES >> 20)
}

/// The URL without credentials or query string (which may carry tokens).
pub fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.to_string()
        }
        Err(_) => format!("{url:?}"),
    }
}

/// An error and its causes, `: `-separated (reqwest's own text is only the outermost).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2.0, 3, start);
        assert!((0..3).all(|_| bucket.try_take(start)), "the burst");
        assert!(!bucket.try_take(start), "empty: fails at once");
        assert!(bucket.try_take(start + Duration::from_millis(500)));
        assert!(!bucket.try_take(start + Duration::from_millis(500)));
        // Refills up to the burst, no further.
        let later = start + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.try_take(later)));
        assert!(!bucket.try_take(later));
    }

    #[test]
    fn urls_are_shown_without_secrets() {
        assert_eq!(
            display_url("https://user:pw@example.com/a.tar.gz?token=x"),
            "https://example.com/a.tar.gz"
        );
    }
}
