//! Live logs: `GET /api/v1/deployments/{id}/logs` as Server-Sent Events. PostgreSQL is the
//! source; wake-ups ([`crate::live`], across replicas) only wake followers. Event ids are `<attempt>.<seq>`, so a
//! client resumes with `Last-Event-ID` and gets exactly the lines after it.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use slipway_proto::api::Role;
use slipway_proto::{Step, api};
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use crate::api::{ApiError, parse_id};
use crate::auth::Caller;
use crate::{Shared, deployments};

/// A position in a deployment's log: (attempt, seq).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub attempt: i32,
    pub seq: i64,
}

impl Cursor {
    /// Parses a `Last-Event-ID` of the form `<attempt>.<seq>`.
    pub fn parse(raw: &str) -> Option<Self> {
        let (a, s) = raw.trim().split_once('.')?;
        Some(Self {
            attempt: a.parse().ok().filter(|a: &i32| *a >= 0)?,
            seq: s.parse().ok().filter(|s: &i64| *s >= 0)?,
        })
    }
}

#[derive(Debug)]
struct Line {
    attempt: i32,
    seq: i64,
    step: Option<String>,
    line: String,
    ts: DateTime<Utc>,
    more: bool,
}

/// Query of the logs endpoint: `?follow=false` sends what is stored and ends.
#[derive(Debug, Default, serde::Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    follow: Option<bool>,
}

/// The SSE handler.
pub async fn stream(
    State(shared): State<Shared>,
    caller: Caller,
    Path(raw): Path<String>,
    Query(query): Query<LogsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = parse_id(&raw)?;
    crate::api::deployment_app(&shared, &caller, id, Role::Viewer).await?;
    let cursor = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(raw) => Cursor::parse(raw)
            .ok_or_else(|| ApiError::BadRequest("Last-Event-ID must look like <attempt>.<seq>".into()))?,
        None => Cursor::default(),
    };
    let wake = shared.live.subscribe();
    let (tx, rx) = mpsc::channel(64);
    let following = follow(shared.pool.clone(), id, cursor, query.follow.unwrap_or(true), wake, tx);
    let shutdown = shared.shutdown.clone();
    // Ends with the scheduler: the stream closes, and graceful shutdown is not held open.
    shared.tasks.spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = following => {}
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

async fn follow(
    pool: PgPool,
    id: Uuid,
    mut cursor: Cursor,
    follow: bool,
    mut wake: broadcast::Receiver<Uuid>,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let mut saw_end = false;
    loop {
        let (lines, full) = match page(&pool, id, cursor).await {
            Ok(page) => page,
            Err(err) => {
                tracing::warn!(error = %err, deployment_id = %id, "log page query failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for l in lines {
            cursor = Cursor { attempt: l.attempt, seq: l.seq };
            let id_text = format!("{}.{}", l.attempt, l.seq);
            let data = api::LogEvent {
                attempt: u32::try_from(l.attempt).unwrap_or_default(),
                seq: u64::try_from(l.seq).unwrap_or_default(),
                step: l.step.as_deref().and_then(Step::parse),
                line: l.line,
                ts: l.ts,
                more: l.more,
            };
            let Ok(event) = Event::default().id(id_text).event("log").json_data(&data) else { continue };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
        if full {
            continue;
        }
        if saw_end {
            match deployments::state(&pool, id).await {
                Ok(Some(state)) => {
                    if let Ok(end) = Event::default().event("end").json_data(api::LogEnd { state }) {
                        let _ = tx.send(Ok(end)).await;
                    }
                }
                Ok(None) => {}
                Err(err) => tracing::error!(error = %err, deployment_id = %id, "log stream ended without a state"),
            }
            return;
        }
        // Lines are committed before the terminal state (one queue, in order), so once the
        // state is terminal one more page read is the last.
        if !follow || matches!(deployments::state(&pool, id).await, Ok(Some(s)) if s.is_terminal()) {
            saw_end = true;
            continue;
        }
        wait_for(&mut wake, id, &tx).await;
        if tx.is_closed() {
            return;
        }
    }
}

async fn wait_for(wake: &mut broadcast::Receiver<Uuid>, id: Uuid, tx: &mpsc::Sender<Result<Event, Infallible>>) {
    let deadline = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            got = wake.recv() => match got {
                Ok(woke) if woke == id || woke.is_nil() => return,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Batches of lines read per page.
const CHUNKS: i64 = 8;

#[derive(Debug, sqlx::FromRow)]
struct Chunk {
    attempt: i32,
    seqs: Vec<i64>,
    steps: Vec<Option<String>>,
    lines: Vec<String>,
    ts: Vec<DateTime<Utc>>,
    more: Vec<bool>,
}

/// The next lines after `after`, in order and without repeats (batches sent twice, or
/// overlapping, are read once), and whether more batches may follow.
async fn page(pool: &PgPool, id: Uuid, after: Cursor) -> Result<(Vec<Line>, bool), sqlx::Error> {
    let chunks = sqlx::query_as::<_, Chunk>(
        "SELECT attempt, seqs, steps, lines, ts, more FROM log_chunks
         WHERE deployment_id = $1 AND (attempt, last_seq) > ($2, $3) ORDER BY attempt, first_seq LIMIT $4",
    )
    .bind(id)
    .bind(after.attempt)
    .bind(after.seq)
    .bind(CHUNKS)
    .fetch_all(pool)
    .await?;
    let full = chunks.len() as i64 == CHUNKS;
    let mut lines: Vec<Line> = chunks
        .into_iter()
        .flat_map(|c| {
            let attempt = c.attempt;
            let rows = c.seqs.into_iter().zip(c.steps).zip(c.lines).zip(c.ts).zip(c.more);
            rows.map(move |((((seq, step), line), ts), more)| Line { attempt, seq, step, line, ts, more })
        })
        .filter(|l| Cursor { attempt: l.attempt, seq: l.seq } > after)
        .collect();
    lines.sort_by_key(|l| (l.attempt, l.seq));
    lines.dedup_by_key(|l| (l.attempt, l.seq));
    Ok((lines, full))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_parses_last_event_id() {
        assert_eq!(Cursor::parse("2.17"), Some(Cursor { attempt: 2, seq: 17 }));
        for bad in ["", "2", "a.b", "-1.3", "1.-3", "1.2.3", "99999999999.1"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
        assert!(Cursor { attempt: 1, seq: 900 } < Cursor { attempt: 2, seq: 1 });
    }
}
