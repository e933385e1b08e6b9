//! A thin HTTP client of the dispatcher: the admin token or a tenant key as bearer,
//! JSON in and out, and the API's error shape turned into a readable error.

use std::time::Duration;

use anyhow::{Context, anyhow};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// An error answer of the API: status, stable code, message.
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// Seconds from `Retry-After`, on 429 and 503.
    pub retry_after: Option<u64>,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    admin_token: Option<String>,
    api_key: Option<String>,
}

/// Which credential a call presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum As {
    Admin,
    Tenant,
    Nobody,
}

impl Client {
    pub fn new(
        base: &str,
        admin_token: Option<String>,
        api_key: Option<String>,
    ) -> anyhow::Result<Self> {
        let http = tenantry::tls::http_client()
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            admin_token,
            api_key,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn credential(&self, who: As) -> anyhow::Result<Option<&str>> {
        match who {
            As::Admin => self.admin_token.as_deref().map(Some).ok_or_else(|| {
                anyhow!(
                    "this command needs the admin token: set TENANTRY_ADMIN_TOKEN or pass --token"
                )
            }),
            As::Tenant => self.api_key.as_deref().map(Some).ok_or_else(|| {
                anyhow!("this command needs a tenant API key: set TENANTRY_API_KEY or pass --key")
            }),
            As::Nobody => Ok(None),
        }
    }

    /// Sends a request; returns the JSON answer of a 2xx, or the API's error.
    pub async fn call(
        &self,
        who: As,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = self.credential(who)? {
            request = request.bearer_auth(token);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the dispatcher at {}", self.base))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text)
                .with_context(|| format!("the answer of {path} is not JSON"));
        }
        Err(failure(status, &text, retry_after).into())
    }

    pub async fn get(&self, who: As, path: &str) -> anyhow::Result<Value> {
        self.call(who, Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, who: As, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(who, Method::POST, path, Some(body), &[]).await
    }

    pub async fn delete(&self, who: As, path: &str) -> anyhow::Result<Value> {
        self.call(who, Method::DELETE, path, None, &[]).await
    }
}

fn failure(status: StatusCode, text: &str, retry_after: Option<u64>) -> ApiFailure {
    let parsed: Option<Value> = serde_json::from_str(text).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |k: &str| {
        error
            .and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    ApiFailure {
        status: status.as_u16(),
        code: field("code").unwrap_or_else(|| "http_error".to_owned()),
        message: field("message").unwrap_or_else(|| {
            let t = text.trim();
            if t.is_empty() {
                status.to_string()
            } else {
                t.chars().take(200).collect()
            }
        }),
        retry_after,
    }
}

/// Percent-encodes a path segment or query value (ids are plain, but be safe).
pub fn encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
