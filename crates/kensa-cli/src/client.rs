//! A typed, blocking client for Kensa's (and Sensu's) core/v2 REST API (reference §3): login
//! and token refresh on `/auth`, API-key auth, list with `limit`/`continue` paging, and the
//! resource-specific routes kensactl uses (check execution, API keys, user management).
//!
//! Blocking on purpose: kensactl does one thing at a time and has no runtime of its own. Errors
//! keep the server's own message (`{"message": ...}`, or the capitalized `{"Message": ...}` the
//! auth middleware sends, or plain text) together with the HTTP status, because that message is
//! what the user needs to see.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kensa_types::Kind;
use reqwest::blocking::{RequestBuilder, Response};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

pub use crate::resources::Scope;
use crate::resources::{collection_path, escape_segment, list_path, ResourceRef, API_PREFIX};

/// The response header carrying the cursor of the next page.
pub const CONTINUE_HEADER: &str = "Sensu-Continue";

/// A refresh is started this long before the access token's expiry, so that a token does not
/// expire between the check and the request.
const EXPIRY_MARGIN_SECS: i64 = 10;

/// The session returned by `/auth` and `/auth/token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub refresh_token: String,
}

impl Tokens {
    fn expired(&self, now: i64) -> bool {
        self.expires_at != 0 && self.expires_at <= now + EXPIRY_MARGIN_SECS
    }
}

/// What authenticates requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Only `/auth` and public routes work.
    None,
    /// `Authorization: Key <uuid>`.
    ApiKey(String),
    /// `Authorization: Bearer <access token>`, refreshed when expired.
    Tokens(Tokens),
}

/// How to reach the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// `http(s)://host:port`, no path.
    pub url: String,
    pub timeout: Duration,
    /// A PEM bundle to trust in addition to the built-in roots.
    pub trusted_ca_file: Option<PathBuf>,
    pub insecure_skip_tls_verify: bool,
}

impl ClientOptions {
    pub fn new(url: impl Into<String>) -> Self {
        ClientOptions {
            url: url.into(),
            timeout: Duration::from_secs(15),
            trusted_ca_file: None,
            insecure_skip_tls_verify: false,
        }
    }
}

/// Query options of list requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Page size; 0 fetches everything in one request.
    pub chunk_size: u32,
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
}

#[derive(Debug, Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("{message} (HTTP {status})")]
    Api {
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
    },
    /// The request did not complete (connection refused, timeout, TLS failure).
    #[error("{method} {url}: {message}")]
    Transport {
        method: Method,
        url: String,
        message: String,
    },
    /// The server answered with success but a body kensactl cannot read.
    #[error("unexpected response to {method} {path}: {message}")]
    InvalidResponse {
        method: Method,
        path: String,
        message: String,
    },
    #[error("reading trusted CA file {path}: {message}")]
    TrustedCa { path: PathBuf, message: String },
    #[error("creating the HTTP client: {0}")]
    Build(String),
    #[error(
        "the session has expired and could not be refreshed ({0}): run `kensactl configure` again"
    )]
    SessionExpired(String),
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The API client. Shared state sits behind mutexes only because an expired access token is
/// replaced in the middle of a command; kensactl itself is single-threaded.
#[derive(Debug)]
pub struct Client {
    http: reqwest::blocking::Client,
    base_url: String,
    credentials: Mutex<Credentials>,
    /// The tokens obtained by a refresh during this process, for the caller to persist.
    refreshed: Mutex<Option<Tokens>>,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Renders an error and its causes on one line: reqwest's top-level message alone ("error
/// sending request") hides the useful part ("connection refused").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

impl Client {
    pub fn new(options: &ClientOptions, credentials: Credentials) -> Result<Client, ClientError> {
        let mut builder = reqwest::blocking::Client::builder()
            .timeout(options.timeout)
            .user_agent(concat!("kensactl/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &options.trusted_ca_file {
            let tls_err = |message: String| ClientError::TrustedCa {
                path: path.clone(),
                message,
            };
            let pem = std::fs::read(path).map_err(|e| tls_err(e.to_string()))?;
            for certificate in
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| tls_err(error_chain(&e)))?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if options.insecure_skip_tls_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Build(error_chain(&e)))?;
        Ok(Client {
            http,
            base_url: options.url.trim_end_matches('/').to_owned(),
            credentials: Mutex::new(credentials),
            refreshed: Mutex::new(None),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Tokens obtained by refreshing during this process, if any: the caller saves them so the
    /// next command starts with a valid session.
    pub fn refreshed_tokens(&self) -> Option<Tokens> {
        self.refreshed.lock().expect("lock poisoned").clone()
    }

    /// `GET /auth` with HTTP Basic credentials.
    pub fn login(&self, username: &str, password: &str) -> Result<Tokens, ClientError> {
        let path = "/auth";
        let request = self
            .http
            .get(self.url(path))
            .basic_auth(username, Some(password));
        let response = self.execute(Method::GET, path, request)?;
        let response = check_status(Method::GET, path, response)?;
        read_json(Method::GET, path, response)
    }

    /// `POST /auth/token`: the (possibly expired) access token as bearer, the refresh token in
    /// the body.
    fn refresh(&self, tokens: &Tokens) -> Result<Tokens, ClientError> {
        let path = "/auth/token";
        let request = self
            .http
            .post(self.url(path))
            .bearer_auth(&tokens.access_token)
            .json(&json!({"refresh_token": tokens.refresh_token}));
        let response = self.execute(Method::POST, path, request)?;
        let response = check_status(Method::POST, path, response)
            .map_err(|e| ClientError::SessionExpired(e.to_string()))?;
        let fresh: Tokens = read_json(Method::POST, path, response)?;
        *self.credentials.lock().expect("lock poisoned") = Credentials::Tokens(fresh.clone());
        *self.refreshed.lock().expect("lock poisoned") = Some(fresh.clone());
        Ok(fresh)
    }

    /// Refreshes the access token if it has expired (or is about to).
    fn ensure_fresh(&self) -> Result<(), ClientError> {
        let expired = match &*self.credentials.lock().expect("lock poisoned") {
            Credentials::Tokens(tokens) if tokens.expired(now_unix()) => Some(tokens.clone()),
            _ => None,
        };
        if let Some(tokens) = expired {
            self.refresh(&tokens)?;
        }
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    fn authorize(&self, request: RequestBuilder) -> RequestBuilder {
        match &*self.credentials.lock().expect("lock poisoned") {
            Credentials::None => request,
            Credentials::ApiKey(key) => {
                request.header(reqwest::header::AUTHORIZATION, format!("Key {key}"))
            }
            Credentials::Tokens(tokens) => request.bearer_auth(&tokens.access_token),
        }
    }

    fn execute(
        &self,
        method: Method,
        path: &str,
        request: RequestBuilder,
    ) -> Result<Response, ClientError> {
        request.send().map_err(|err| ClientError::Transport {
            method,
            url: self.url(path),
            message: error_chain(&err),
        })
    }

    /// Sends an authenticated request and returns the successful response. A 401 on a token
    /// session is retried once after a refresh: the server may have a shorter token lifetime
    /// than `expires_at` suggests, or a clock may be off.
    fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Response, ClientError> {
        self.ensure_fresh()?;
        let build = || {
            let mut request = self
                .http
                .request(method.clone(), self.url(path))
                .query(query);
            if let Some(body) = body {
                request = request.json(body);
            }
            self.authorize(request)
        };
        let mut response = self.execute(method.clone(), path, build())?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let tokens = match &*self.credentials.lock().expect("lock poisoned") {
                Credentials::Tokens(tokens) => Some(tokens.clone()),
                _ => None,
            };
            if let Some(tokens) = tokens {
                self.refresh(&tokens)?;
                response = self.execute(method.clone(), path, build())?;
            }
        }
        check_status(method, path, response)
    }

    /// `GET` of any API path, decoded as JSON.
    pub fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        let response = self.send(Method::GET, path, &[], None)?;
        read_json(Method::GET, path, response)
    }

    /// Lists `kind` in `scope`, following `Sensu-Continue` cursors until the last page.
    pub fn list(
        &self,
        kind: Kind,
        scope: &Scope,
        options: &ListOptions,
    ) -> Result<Vec<Value>, ClientError> {
        let path = list_path(kind, scope);
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query: Vec<(&str, String)> = Vec::new();
            if options.chunk_size > 0 {
                query.push(("limit", options.chunk_size.to_string()));
            }
            if let Some(cursor) = &cursor {
                query.push(("continue", cursor.clone()));
            }
            if let Some(selector) = &options.label_selector {
                query.push(("labelSelector", selector.clone()));
            }
            if let Some(selector) = &options.field_selector {
                query.push(("fieldSelector", selector.clone()));
            }
            let response = self.send(Method::GET, &path, &query, None)?;
            let next = response
                .headers()
                .get(CONTINUE_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_owned);
            match read_json(Method::GET, &path, response)? {
                Value::Array(page) => items.extend(page),
                // Sensu answers an empty collection with `null`.
                Value::Null => {}
                other => {
                    return Err(ClientError::InvalidResponse {
                        method: Method::GET,
                        path,
                        message: format!(
                            "expected a JSON array, got {}",
                            truncate(&other.to_string(), 80)
                        ),
                    })
                }
            }
            // A server that ignores `limit` sends no cursor, and one that repeats a cursor
            // would loop forever: stop in both cases.
            match next {
                Some(next)
                    if options.chunk_size > 0 && cursor.as_deref() != Some(next.as_str()) =>
                {
                    cursor = Some(next)
                }
                _ => break,
            }
        }
        Ok(items)
    }

    /// `GET` of one resource.
    pub fn get(&self, reference: &ResourceRef) -> Result<Value, ClientError> {
        self.get_json(&reference.path())
    }

    /// `PUT` (create or replace) of one resource with its unwrapped body.
    pub fn put(&self, reference: &ResourceRef, body: &Value) -> Result<(), ClientError> {
        self.send(Method::PUT, &reference.path(), &[], Some(body))
            .map(drop)
    }

    /// `POST` to the resource's collection (create; 409 when it exists).
    pub fn create(&self, kind: Kind, namespace: &str, body: &Value) -> Result<(), ClientError> {
        self.send(
            Method::POST,
            &collection_path(kind, namespace),
            &[],
            Some(body),
        )
        .map(drop)
    }

    pub fn delete(&self, reference: &ResourceRef) -> Result<(), ClientError> {
        self.send(Method::DELETE, &reference.path(), &[], None)
            .map(drop)
    }

    /// `POST .../checks/{name}/execute`: an ad hoc run, optionally to other subscriptions.
    pub fn execute_check(
        &self,
        namespace: &str,
        check: &str,
        subscriptions: &[String],
        reason: &str,
    ) -> Result<Value, ClientError> {
        let path = format!(
            "{}/execute",
            ResourceRef::new(Kind::CheckConfig, namespace, check).path()
        );
        let body = json!({
            "check": check,
            "subscriptions": subscriptions,
            "reason": reason,
            "metadata": {"name": check, "namespace": namespace},
        });
        let response = self.send(Method::POST, &path, &[], Some(&body))?;
        let text = response.text().unwrap_or_default();
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `POST /apikeys` for `username`; returns the `Location` of the new key.
    pub fn create_api_key(&self, username: &str) -> Result<String, ClientError> {
        let path = format!("{API_PREFIX}/apikeys");
        let response = self.send(
            Method::POST,
            &path,
            &[],
            Some(&json!({"username": username})),
        )?;
        response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| ClientError::InvalidResponse {
                method: Method::POST,
                path,
                message: "no Location header".into(),
            })
    }

    /// `PUT /users/{u}/password`. Like sensuctl, the new password is sent as a bcrypt hash and
    /// the current one in clear, for the server to check.
    pub fn change_password(
        &self,
        username: &str,
        current_password: &str,
        new_password: &str,
    ) -> Result<(), ClientError> {
        let hash = bcrypt::hash(new_password, bcrypt::DEFAULT_COST)
            .map_err(|e| ClientError::Build(e.to_string()))?;
        let path = format!(
            "{}/password",
            ResourceRef::new(Kind::User, "", username).path()
        );
        let body =
            json!({"username": username, "password": current_password, "password_hash": hash});
        self.send(Method::PUT, &path, &[], Some(&body)).map(drop)
    }

    /// `PUT /users/{u}/reinstate`.
    pub fn reinstate_user(&self, username: &str) -> Result<(), ClientError> {
        let path = format!(
            "{}/reinstate",
            ResourceRef::new(Kind::User, "", username).path()
        );
        self.send(Method::PUT, &path, &[], None).map(drop)
    }

    /// `PUT` or `DELETE /users/{u}/groups/{group}`.
    pub fn set_group_membership(
        &self,
        username: &str,
        group: &str,
        member: bool,
    ) -> Result<(), ClientError> {
        let path = format!(
            "{}/groups/{}",
            ResourceRef::new(Kind::User, "", username).path(),
            escape_segment(group)
        );
        let method = if member { Method::PUT } else { Method::DELETE };
        self.send(method, &path, &[], None).map(drop)
    }

    /// Downloads a resource file given as `-f https://...`. No credentials are sent: the URL
    /// is not the backend.
    pub fn fetch_text(&self, url: &str) -> Result<String, ClientError> {
        let response = self.execute(Method::GET, url, self.http.get(url))?;
        if !response.status().is_success() {
            return Err(ClientError::Transport {
                method: Method::GET,
                url: url.to_owned(),
                message: format!("HTTP {}", response.status()),
            });
        }
        response.text().map_err(|e| ClientError::Transport {
            method: Method::GET,
            url: url.to_owned(),
            message: error_chain(&e),
        })
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Turns an error status into [`ClientError::Api`] with the most useful message available.
fn check_status(method: Method, path: &str, response: Response) -> Result<Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().unwrap_or_default();
    Err(ClientError::Api {
        method,
        path: path.to_owned(),
        status,
        message: error_message(status, &text),
    })
}

/// `{"message": ...}` (router errors), `{"Message": ...}` (auth middleware), else the plain
/// text body, else the status reason.
fn error_message(status: StatusCode, body: &str) -> String {
    if let Ok(Value::Object(object)) = serde_json::from_str::<Value>(body) {
        for key in ["message", "Message", "error"] {
            if let Some(Value::String(message)) = object.get(key) {
                if !message.is_empty() {
                    return message.clone();
                }
            }
        }
    }
    let text = body.trim();
    if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase()
    } else {
        truncate(text, 500)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(
    method: Method,
    path: &str,
    response: Response,
) -> Result<T, ClientError> {
    let invalid = |message: String| ClientError::InvalidResponse {
        method: method.clone(),
        path: path.to_owned(),
        message,
    };
    let bytes = response.bytes().map_err(|e| invalid(error_chain(&e)))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        invalid(format!(
            "{e}: {}",
            truncate(&String::from_utf8_lossy(&bytes), 200)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_prefer_the_server_wording() {
        let cases = [
            (
                400,
                r#"{"message":"resource is invalid: bad","code":1}"#,
                "resource is invalid: bad",
            ),
            (
                401,
                r#"{"Code":5,"Message":"bad credentials"}"#,
                "bad credentials",
            ),
            (
                500,
                "Request exceeded max length\n",
                "Request exceeded max length",
            ),
            (404, "", "not found"),
        ];
        for (status, body, want) in cases {
            assert_eq!(
                error_message(StatusCode::from_u16(status).unwrap(), body),
                want
            );
        }
    }

    #[test]
    fn api_errors_show_message_and_status() {
        let err = ClientError::Api {
            method: Method::GET,
            path: "/x".into(),
            status: StatusCode::NOT_FOUND,
            message: "not found".into(),
        };
        assert_eq!(err.to_string(), "not found (HTTP 404 Not Found)");
    }

    #[test]
    fn token_expiry_has_a_margin() {
        let tokens = Tokens {
            access_token: "a".into(),
            expires_at: 1_000,
            refresh_token: "r".into(),
        };
        assert!(!tokens.expired(900));
        assert!(tokens.expired(995));
        assert!(
            !Tokens {
                expires_at: 0,
                ..tokens
            }
            .expired(i64::MAX / 2),
            "0 means no expiry known"
        );
    }
}
