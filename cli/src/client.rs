//! The scheduler's REST API and log stream, as the CLI uses them.

use std::time::Duration;

use anyhow::{Context, bail};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use slipway_proto::State;
use slipway_proto::api::{self, ErrorBody, LogEvent};

/// A client of one scheduler.
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish_non_exhaustive()
    }
}

/// How a followed log stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEnd {
    /// The deployment reached this state.
    State(State),
    /// The stream had nothing more (not following).
    Drained,
}

impl Client {
    /// A client sending `token` as its bearer token on every request.
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!("SLIPWAY_URL must start with http:// or https://");
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                .context("the token contains characters a header cannot carry")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        // No redirects: a redirect to another host must not take the token with it.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { base, http })
    }

    /// DELETEs `path` and reads the answer as `T`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self.http.delete(format!("{}{path}", self.base)).send().await.with_context(|| self.unreachable())?;
        Self::json(resp).await
    }

    /// GETs `path` and reads the answer as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await.with_context(|| self.unreachable())?;
        Self::json(resp).await
    }

    /// POSTs `body` to `path` and reads the answer as `T`.
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .with_context(|| self.unreachable())?;
        Self::json(resp).await
    }

    /// PATCHes `path` with `body` and reads the answer as `T`.
    pub async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        let resp = self
            .http
            .patch(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .with_context(|| self.unreachable())?;
        Self::json(resp).await
    }

    fn unreachable(&self) -> String {
        format!("could not reach the scheduler at {} (set SLIPWAY_URL)", self.base)
    }

    async fn json<T: DeserializeOwned>(resp: reqwest::Response) -> anyhow::Result<T> {
        let status = resp.status();
        let text = resp.text().await.with_context(|| format!("reading the scheduler's answer (HTTP {status})"))?;
        if !status.is_success() {
            let msg = serde_json::from_str::<ErrorBody>(&text).map(|e| e.error).unwrap_or_else(|_| "no detail".into());
            let msg = crate::neutralised(&msg);
            if status == reqwest::StatusCode::UNAUTHORIZED {
                bail!("{msg} (HTTP 401): log in with `slipway login --with-token` or set SLIPWAY_TOKEN");
            }
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        serde_json::from_str(&text)
            .with_context(|| format!("the scheduler's answer is not what this CLI expects: {text:.200}"))
    }

    /// Streams the log of `id` to `each`, resuming with `Last-Event-ID` after a dropped
    /// connection, until the deployment ends (or, without `follow`, until what is stored is sent).
    pub async fn logs(&self, id: &str, follow: bool, mut each: impl FnMut(&LogEvent)) -> anyhow::Result<LogEnd> {
        let mut last_id: Option<String> = None;
        let mut failures = 0;
        loop {
            let mut req = self.http.get(format!("{}/api/v1/deployments/{id}/logs?follow={follow}", self.base));
            if let Some(last) = &last_id {
                req = req.header("Last-Event-ID", last);
            }
            let resp = match req.send().await {
                Ok(resp) if resp.status().is_success() => resp,
                Ok(resp) => return Self::json::<serde_json::Value>(resp).await.map(|_| LogEnd::Drained),
                Err(err) if failures < 30 => {
                    failures += 1;
                    eprintln!("log stream interrupted ({err}); reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(err) => return Err(err).with_context(|| self.unreachable()),
            };
            let mut events = resp.bytes_stream().eventsource();
            while let Some(event) = events.next().await {
                let Ok(event) = event else { break };
                failures = 0;
                match event.event.as_str() {
                    "log" => {
                        last_id = Some(event.id.clone());
                        let line: LogEvent = serde_json::from_str(&event.data)
                            .with_context(|| format!("unreadable log event: {:.200}", event.data))?;
                        each(&line);
                    }
                    "end" => {
                        let end: api::LogEnd = serde_json::from_str(&event.data)
                            .with_context(|| format!("unreadable end event: {:.200}", event.data))?;
                        return Ok(if follow { LogEnd::State(end.state) } else { LogEnd::Drained });
                    }
                    _ => {}
                }
            }
            failures += 1;
            if failures > 30 {
                bail!("the log stream kept dropping");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Client {
    /// Streams a running app's output to `each` until the runner ends it (at once without
    /// `follow`); returns why it ended.
    pub async fn app_logs(
        &self,
        query: &str,
        app: &str,
        mut each: impl FnMut(&api::AppLogLine),
    ) -> anyhow::Result<String> {
        let resp = self
            .http
            .get(format!("{}/api/v1/apps/{app}/logs?{query}", self.base))
            .send()
            .await
            .with_context(|| self.unreachable())?;
        if !resp.status().is_success() {
            Self::json::<serde_json::Value>(resp).await?;
            bail!("the scheduler refused the request");
        }
        let mut events = resp.bytes_stream().eventsource();
        while let Some(event) = events.next().await {
            let event = event.context("the log stream broke")?;
            match event.event.as_str() {
                "log" => {
                    let line: api::AppLogLine = serde_json::from_str(&event.data)
                        .with_context(|| format!("unreadable log event: {:.200}", event.data))?;
                    each(&line);
                }
                "end" => {
                    let end: serde_json::Value = serde_json::from_str(&event.data).unwrap_or_default();
                    return Ok(end["reason"].as_str().unwrap_or("the output ended").to_string());
                }
                _ => {}
            }
        }
        Ok("the stream ended".into())
    }
}
