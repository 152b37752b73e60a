//! Shared helpers for the backend's end-to-end tests: an HTTP client logged in as some user.

#![allow(dead_code)]

pub mod fake_agent;
pub mod faults;
pub mod nats;
pub mod nginx;

use reqwest::{Method, StatusCode};
use serde_json::Value;

pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub auth: Option<String>,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Client {
    pub fn anonymous(base: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base.to_owned(),
            auth: None,
        }
    }

    pub async fn login(base: &str, user: &str, password: &str) -> Client {
        let mut client = Client::anonymous(base);
        let answer = client
            .http
            .get(format!("{base}/auth"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "login as {user}");
        let tokens: Value = answer.json().await.unwrap();
        client.auth = Some(format!(
            "Bearer {}",
            tokens["access_token"].as_str().unwrap()
        ));
        client
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        self.call_with(method, path, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let url = if path.starts_with('/') {
            format!("{}{path}", self.base)
        } else {
            format!("{}/api/core/v2/{path}", self.base)
        };
        let mut request = self.http.request(method, url);
        if let Some(auth) = &self.auth {
            request = request.header("Authorization", auth);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(serde_json::to_vec(body).unwrap());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }
    pub async fn put(&self, path: &str, body: &Value) -> Answer {
        self.call(Method::PUT, path, Some(body)).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Answer {
        self.call(Method::DELETE, path, None).await
    }
}

/// Asserts a status and returns the answer, printing the body on failure.
#[track_caller]
pub fn expect(answer: Answer, status: u16) -> Answer {
    assert_eq!(
        answer.status.as_u16(),
        status,
        "unexpected answer: {}",
        answer.text
    );
    answer
}

/// Polls `path` until `accept` holds for the body (200 answers only), for at most `wait`;
/// returns the accepted body and when it was seen.
pub async fn poll_until(
    client: &Client,
    path: &str,
    wait: std::time::Duration,
    accept: impl Fn(&Value) -> bool,
) -> Option<(Value, std::time::Instant)> {
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        let answer = client.get(path).await;
        if answer.status == StatusCode::OK && accept(&answer.body) {
            return Some((answer.body, std::time::Instant::now()));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    None
}
