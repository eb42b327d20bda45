//! A running app's output and status (docker target): `GET /api/v1/apps/{name}/logs` (SSE) and
//! `GET /api/v1/apps/{name}/status`. The scheduler asks every runner on the control exchange
//! ([`Control::AppLogs`]) with a reply queue of its own; a runner whose engine has the app's
//! containers answers. The first runner to answer is kept and the others are told to stop; when
//! the client goes away, all are. Runners mask the app's secrets before anything leaves them.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use slipway_broker as broker;
use slipway_proto::api::{self, Role};
use slipway_proto::message::{AppLogChunk, AppLogsRequest, Control, TargetKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use crate::Shared;
use crate::api::ApiError;
use crate::auth::Caller;

/// How long the scheduler waits for a runner to answer before it says none has the app.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// The most lines asked for from the end.
const MAX_TAIL: u32 = 10_000;

/// `?follow=true&tail=100&since=10m`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    follow: Option<bool>,
    #[serde(default)]
    tail: Option<u32>,
    #[serde(default)]
    since: Option<String>,
}

/// Parses `since`: a duration back from now (`30s`, `10m`, `2h`, `1d`) or an RFC 3339 time;
/// Unix seconds.
pub fn parse_since(raw: &str, now: chrono::DateTime<chrono::Utc>) -> Result<i64, String> {
    let raw = raw.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(t.timestamp());
    }
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (n, unit) = raw.split_at(split);
    let n: i64 =
        n.parse().map_err(|_| format!("since must be like 30s, 10m, 2h, 1d or an RFC 3339 time, not {raw:?}"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("since must be like 30s, 10m, 2h, 1d or an RFC 3339 time, not {raw:?}")),
    };
    Ok(now.timestamp().saturating_sub(secs.min(100 * 365 * 86_400)))
}

/// The app, checked for the caller, and that it runs on the docker target.
async fn docker_app(shared: &Shared, caller: &Caller, name: &str) -> Result<crate::apps::App, ApiError> {
    caller.require(Role::Viewer, Some(name))?;
    let app = crate::apps::get(&shared.pool, name)
        .await
        .map_err(ApiError::Db)?
        .ok_or_else(|| ApiError::NotFound(format!("no app named {name}")))?;
    if app.target() != TargetKind::Docker {
        return Err(ApiError::Unprocessable(
            "runtime logs and status are for the docker target; on Kubernetes use kubectl logs and get pods".into(),
        ));
    }
    Ok(app)
}

/// An open request: its reply consumer, and a stop sent to every runner when it is dropped.
struct Asking {
    shared: Shared,
    request_id: Uuid,
    _conn: lapin::Connection,
    consumer: lapin::Consumer,
}

impl Drop for Asking {
    fn drop(&mut self) {
        self.shared.publisher.control(&Control::AppLogsStop { request_id: self.request_id, keep_runner: None });
    }
}

async fn ask(
    shared: &Shared,
    app: &crate::apps::App,
    follow: bool,
    tail: u32,
    since: Option<i64>,
) -> Result<Asking, ApiError> {
    let unreachable = || ApiError::Unavailable("RabbitMQ is unreachable; try again".into());
    let never = tokio_util::sync::CancellationToken::new();
    let conn = tokio::time::timeout(ANSWER_WAIT, broker::connect(&shared.amqp_url, &never))
        .await
        .ok()
        .flatten()
        .ok_or_else(unreachable)?;
    let channel = conn.create_channel().await.map_err(|_| unreachable())?;
    let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let queue = channel.queue_declare("".into(), options, FieldTable::default()).await.map_err(|_| unreachable())?;
    let consume = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let consumer = channel
        .basic_consume(queue.name().clone(), "".into(), consume, FieldTable::default())
        .await
        .map_err(|_| unreachable())?;
    let request_id = Uuid::new_v4();
    shared.publisher.control(&Control::AppLogs(AppLogsRequest {
        request_id,
        app: app.name.clone(),
        environment: app.environment.clone(),
        follow,
        tail,
        since,
        reply_to: queue.name().to_string(),
    }));
    Ok(Asking { shared: shared.clone(), request_id, _conn: conn, consumer })
}

impl Asking {
    /// The next chunk from the runner kept (the first to answer); `None` when the consumer ended.
    async fn next(&mut self, kept: &mut Option<String>) -> Option<AppLogChunk> {
        while let Some(Ok(delivery)) = self.consumer.next().await {
            let Ok(chunk) = serde_json::from_slice::<AppLogChunk>(&delivery.data) else { continue };
            if chunk.request_id != self.request_id {
                continue;
            }
            match kept {
                None => {
                    *kept = Some(chunk.runner_id.clone());
                    let keep = Some(chunk.runner_id.clone());
                    self.shared
                        .publisher
                        .control(&Control::AppLogsStop { request_id: self.request_id, keep_runner: keep });
                }
                Some(runner) if *runner != chunk.runner_id => continue,
                Some(_) => {}
            }
            return Some(chunk);
        }
        None
    }
}

fn no_answer() -> ApiError {
    ApiError::NotFound(
        "no runner answered for this app's containers: is it deployed, and is a runner on its host up?".into(),
    )
}

/// `GET /api/v1/apps/{name}/status`.
pub async fn status(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<api::AppStatus>, ApiError> {
    let app = docker_app(&shared, &caller, &name).await?;
    let mut asking = ask(&shared, &app, false, 0, None).await?;
    let mut kept = None;
    let first = tokio::time::timeout(ANSWER_WAIT, asking.next(&mut kept)).await.ok().flatten().ok_or_else(no_answer)?;
    Ok(Json(api::AppStatus {
        app: app.name.clone(),
        url: app.url.clone(),
        runner_id: first.runner_id,
        containers: first.status.unwrap_or_default(),
    }))
}

/// `GET /api/v1/apps/{name}/logs`: `log` events (an [`api::AppLogLine`] each), then `end`.
pub async fn stream(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let app = docker_app(&shared, &caller, &name).await?;
    let since = match query.since.as_deref() {
        Some(raw) => Some(parse_since(raw, chrono::Utc::now()).map_err(ApiError::BadRequest)?),
        None => None,
    };
    let follow = query.follow.unwrap_or(false);
    let tail = query.tail.unwrap_or(if since.is_some() { MAX_TAIL } else { 100 });
    if tail > MAX_TAIL {
        return Err(ApiError::BadRequest(format!("tail is at most {MAX_TAIL}")));
    }
    let mut asking = ask(&shared, &app, follow, tail.max(1), since).await?;
    let mut kept = None;
    let first = tokio::time::timeout(ANSWER_WAIT, asking.next(&mut kept)).await.ok().flatten().ok_or_else(no_answer)?;
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    let shutdown = shared.shutdown.clone();
    shared.tasks.spawn(async move {
        let mut chunk = Some(first);
        loop {
            let Some(current) = chunk.take() else {
                let _ = tx.send(Ok(Event::default().event("end").data(r#"{"reason":"the runner went away"}"#))).await;
                return;
            };
            for line in &current.lines {
                let Ok(data) = serde_json::to_string(line) else { continue };
                if tx.send(Ok(Event::default().event("log").data(data))).await.is_err() {
                    return;
                }
            }
            if current.end {
                let reason = current.error.unwrap_or_else(|| "the output ended".into());
                let data = serde_json::json!({ "reason": reason }).to_string();
                let _ = tx.send(Ok(Event::default().event("end").data(data))).await;
                return;
            }
            chunk = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                next = asking.next(&mut kept) => next,
            };
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_duration_back_or_a_time() {
        let now =
            chrono::DateTime::parse_from_rfc3339("2026-11-22T20:00:00Z").expect("now").with_timezone(&chrono::Utc);
        assert_eq!(parse_since("30s", now), Ok(now.timestamp() - 30));
        assert_eq!(parse_since("10m", now), Ok(now.timestamp() - 600));
        assert_eq!(parse_since("2h", now), Ok(now.timestamp() - 7200));
        assert_eq!(parse_since("1d", now), Ok(now.timestamp() - 86_400));
        assert_eq!(parse_since("2026-11-22T19:00:00Z", now), Ok(now.timestamp() - 3600));
        for bad in ["", "m", "10", "10y", "-5m", "ten minutes", &"9".repeat(40)] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
        assert!(parse_since("99999999999d", now).is_ok(), "bounded, not overflowed");
    }
}
