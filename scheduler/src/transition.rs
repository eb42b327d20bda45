//! Executes lifecycle decisions. A deployment is loaded as a [`slipway_proto::Row`],
//! [`slipway_proto::decide`] says what an input does to it, and the result is written as one
//! UPDATE guarded by the state, attempt and version it was decided on; zero rows means another
//! writer won, and the input is decided again on the new row. Nothing else writes a state.

use chrono::{DateTime, Utc};
use slipway_proto::{
    Body, CancelRequest, Cause, Control, Decision, Failure, Holder, Input, Notification, Phase, Policy, Rejection, Row,
    State, Step, StepStatus, decide,
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// What an input did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The row changed: announce `note`, send `control`.
    Changed { note: Notification, control: Option<Control> },
    /// The holder's lease was refreshed; send `reply` if there is one.
    Touched { reply: Option<Control> },
    /// Nothing changed; send `reply` if there is one.
    Ignored { reply: Option<Control> },
    /// The input does not apply; send `control` to the runner that sent it.
    Rejected { why: Rejection, control: Option<Control> },
}

/// Why an input could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("no deployment {0}")]
    Unknown(Uuid),
    /// A stored value the lifecycle does not know: never read as a default.
    #[error("deployment {id} has an unreadable stored {column}: {value:?}")]
    Corrupt { id: Uuid, column: &'static str, value: String },
    #[error("deployment {0} kept changing under concurrent writers")]
    Contended(Uuid),
    #[error("database error")]
    Db(#[from] sqlx::Error),
    /// The release of a new deployment could not be sealed (the key does not open the app's secrets).
    #[error("{0}")]
    Sealed(String),
}

impl From<crate::releases::ReleaseError> for TransitionError {
    fn from(err: crate::releases::ReleaseError) -> Self {
        match err {
            crate::releases::ReleaseError::Db(db) => TransitionError::Db(db),
            other => TransitionError::Sealed(other.to_string()),
        }
    }
}

impl TransitionError {
    /// Whether trying the same input again later may succeed: PostgreSQL was unreachable or the
    /// row was contended. A query PostgreSQL refused (bad data) fails the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            TransitionError::Db(err) => crate::db::is_unavailable(err),
            TransitionError::Contended(_) => true,
            TransitionError::Unknown(_) | TransitionError::Corrupt { .. } | TransitionError::Sealed(_) => false,
        }
    }
}

/// A deployment as loaded for a decision, with what guards its write.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub row: Row,
    pub version: i64,
    /// Time since the holder's last heartbeat was applied, by the database's clock.
    pub heartbeat_age: Option<std::time::Duration>,
}

/// How one try of an input went.
enum Tried {
    Done(Applied),
    /// Another writer changed the row between the read and the write.
    Lost,
}

/// Tries of an input: the first reads without a lock; after a lost race the row is read
/// `FOR UPDATE`, so the next write cannot lose again (a third try only after a deadlock retry).
const TRIES: usize = 3;

/// Applies `input` to deployment `id`, deciding again whenever a concurrent writer won.
pub async fn apply(pool: &PgPool, id: Uuid, input: &Input<'_>, policy: Policy) -> Result<Applied, TransitionError> {
    apply_if(pool, id, input, policy, |_| true).await?.ok_or(TransitionError::Unknown(id))
}

/// Like [`apply`], but only while `precondition` holds for the loaded row (`None` otherwise).
pub async fn apply_if(
    pool: &PgPool,
    id: Uuid,
    input: &Input<'_>,
    policy: Policy,
    precondition: impl Fn(&Loaded) -> bool,
) -> Result<Option<Applied>, TransitionError> {
    for try_ in 0..TRIES {
        let mut tx = pool.begin().await?;
        let loaded = if try_ == 0 { load(&mut tx, id).await? } else { load_locked(&mut tx, id).await? };
        if !precondition(&loaded) {
            return Ok(None);
        }
        match execute(&mut tx, &loaded, input, policy).await? {
            Tried::Done(applied) => {
                tx.commit().await?;
                return Ok(Some(applied));
            }
            Tried::Lost => tx.rollback().await?,
        }
    }
    Err(TransitionError::Contended(id))
}

/// Applies `input` inside the caller's transaction, once; `None` if a concurrent writer won.
pub async fn apply_once(
    conn: &mut PgConnection,
    id: Uuid,
    input: &Input<'_>,
    policy: Policy,
) -> Result<Option<Applied>, TransitionError> {
    let loaded = load(conn, id).await?;
    match execute(conn, &loaded, input, policy).await? {
        Tried::Done(applied) => Ok(Some(applied)),
        Tried::Lost => Ok(None),
    }
}

async fn execute(
    conn: &mut PgConnection,
    loaded: &Loaded,
    input: &Input<'_>,
    policy: Policy,
) -> Result<Tried, TransitionError> {
    let row = &loaded.row;
    let applied = match decide(row, input, policy, Utc::now()) {
        Decision::Change { next, note, control } => {
            if !write(conn, loaded, &next).await? {
                return Ok(Tried::Lost);
            }
            record_beside(conn, row, &next, input).await?;
            let rolled_back = matches!(&next.phase, Phase::Failed { failure, .. } if failure.rolled_back);
            let events = crate::notify::events_of(row.state(), next.state(), rolled_back);
            crate::notify::enqueue(conn, row.id, &events).await?;
            Applied::Changed { note, control }
        }
        Decision::Touch { reply } => {
            if !touch(conn, loaded).await? {
                return Ok(Tried::Lost);
            }
            Applied::Touched { reply }
        }
        Decision::Ignore { reply } => Applied::Ignored { reply },
        Decision::Reject { why, control } => Applied::Rejected { why, control },
    };
    Ok(Tried::Done(applied))
}

#[derive(sqlx::FromRow)]
struct Stored {
    app: String,
    state: String,
    attempt: i32,
    version: i64,
    runner_id: Option<String>,
    claim_id: Option<Uuid>,
    current_step: Option<String>,
    not_before: Option<DateTime<Utc>>,
    heartbeat_age: Option<f64>,
    error_step: Option<String>,
    error_cause: Option<String>,
    error_message: Option<String>,
    rolled_back: bool,
    image: Option<String>,
    url: Option<String>,
    cancel_by: Option<String>,
    cancel_reason: Option<String>,
}

const LOAD: &str = "SELECT a.name AS app, d.state, d.attempt, d.version, d.runner_id, d.claim_id, d.current_step, d.not_before,
                extract(epoch FROM now() - d.heartbeat_at)::float8 AS heartbeat_age, d.error_step, d.error_cause, d.error_message, d.rolled_back, d.image, d.url,
                d.cancel_by, d.cancel_reason
         FROM deployments d JOIN apps a ON a.id = d.app_id WHERE d.id = $1";

/// Reads deployment `id` as the lifecycle sees it; an unknown stored value is an error.
pub async fn load(conn: &mut PgConnection, id: Uuid) -> Result<Loaded, TransitionError> {
    let stored = sqlx::query_as::<_, Stored>(LOAD).bind(id).fetch_optional(&mut *conn).await?;
    parse(id, stored.ok_or(TransitionError::Unknown(id))?)
}

/// Like [`load`], holding the row's lock until the transaction ends.
async fn load_locked(conn: &mut PgConnection, id: Uuid) -> Result<Loaded, TransitionError> {
    let stored = sqlx::query_as::<_, Stored>(sqlx::AssertSqlSafe(format!("{LOAD} FOR UPDATE OF d")))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    parse(id, stored.ok_or(TransitionError::Unknown(id))?)
}

fn parse(id: Uuid, s: Stored) -> Result<Loaded, TransitionError> {
    let corrupt = |column: &'static str, value: &str| TransitionError::Corrupt { id, column, value: value.to_string() };
    let step = |column, raw: &Option<String>| match raw {
        None => Ok(None),
        Some(v) => Step::parse(v).map(Some).ok_or_else(|| corrupt(column, v)),
    };
    let state = State::parse(&s.state).ok_or_else(|| corrupt("state", &s.state))?;
    let attempt =
        u32::try_from(s.attempt).ok().filter(|a| *a >= 1).ok_or_else(|| corrupt("attempt", &s.attempt.to_string()))?;
    let failure = match (step("error_step", &s.error_step)?, &s.error_cause) {
        (Some(step), Some(cause)) => Some(Failure {
            step,
            cause: Cause::parse(cause).ok_or_else(|| corrupt("error_cause", cause))?,
            message: s.error_message.clone().unwrap_or_default(),
            rolled_back: s.rolled_back,
        }),
        _ => None,
    };
    let cancel =
        s.cancel_by.clone().map(|by| CancelRequest { by, reason: s.cancel_reason.clone().unwrap_or_default() });
    let current_step = step("current_step", &s.current_step)?;
    let phase = match state {
        State::Queued => Phase::Queued { not_before: s.not_before, last_failure: failure },
        State::Running => Phase::Running { step: current_step, cancel, last_failure: failure },
        State::Completed => Phase::Completed {
            image: s.image.clone().ok_or_else(|| corrupt("image", "NULL of a completed deployment"))?,
            url: s.url.clone(),
            cancel: cancel.clone(),
        },
        State::Failed => Phase::Failed {
            failure: failure.ok_or_else(|| corrupt("error_step", "NULL of a failed deployment"))?,
            cancel: cancel.clone(),
        },
        State::Cancelled => Phase::Cancelled {
            cancel: cancel.ok_or_else(|| corrupt("cancel_by", "NULL of a cancelled deployment"))?,
            step: current_step,
        },
    };
    let holder = match (s.runner_id, s.claim_id) {
        (Some(runner_id), Some(claim)) => Some(Holder { runner_id, claim }),
        _ => None,
    };
    Ok(Loaded {
        row: Row { id, app: s.app, attempt, holder, phase },
        version: s.version,
        heartbeat_age: s.heartbeat_age.and_then(|secs| std::time::Duration::try_from_secs_f64(secs.max(0.0)).ok()),
    })
}

/// The columns a row is stored in.
struct Columns<'a> {
    current_step: Option<Step>,
    not_before: Option<DateTime<Utc>>,
    failure: Option<&'a Failure>,
    image: Option<&'a str>,
    url: Option<&'a str>,
    cancel: Option<&'a CancelRequest>,
}

fn columns(phase: &Phase) -> Columns<'_> {
    let none = Columns { current_step: None, not_before: None, failure: None, image: None, url: None, cancel: None };
    match phase {
        Phase::Queued { not_before, last_failure } => {
            Columns { not_before: *not_before, failure: last_failure.as_ref(), ..none }
        }
        Phase::Running { step, cancel, last_failure } => {
            Columns { current_step: *step, failure: last_failure.as_ref(), cancel: cancel.as_ref(), ..none }
        }
        Phase::Completed { image, url, cancel } => {
            Columns { image: Some(image), url: url.as_deref(), cancel: cancel.as_ref(), ..none }
        }
        Phase::Failed { failure, cancel } => Columns { failure: Some(failure), cancel: cancel.as_ref(), ..none },
        Phase::Cancelled { cancel, step } => Columns { current_step: *step, cancel: Some(cancel), ..none },
    }
}

/// Writes `next` if the row still has the state, attempt and version of `loaded`.
async fn write(conn: &mut PgConnection, loaded: &Loaded, next: &Row) -> Result<bool, sqlx::Error> {
    let c = columns(&next.phase);
    let done = sqlx::query(
        "UPDATE deployments SET state = $5, attempt = $6, runner_id = $7, claim_id = $8, current_step = $9,
                not_before = $10, error_step = $11, error_cause = $12, error_message = $13, rolled_back = $14,
                image = $15, url = $16, cancel_by = $17, cancel_reason = $18, version = version + 1,
                heartbeat_at = CASE WHEN $5 = 'running' THEN now() ELSE heartbeat_at END,
                started_at = CASE WHEN $5 = 'running' THEN coalesce(started_at, now()) ELSE started_at END,
                finished_at = CASE WHEN $5 IN ('completed', 'failed', 'cancelled') THEN now() END,
                published_at = CASE WHEN $6 <> attempt THEN NULL ELSE published_at END
         WHERE id = $1 AND state = $2 AND attempt = $3 AND version = $4",
    )
    .bind(loaded.row.id)
    .bind(loaded.row.state().as_str())
    .bind(loaded.row.attempt as i32)
    .bind(loaded.version)
    .bind(next.state().as_str())
    .bind(next.attempt as i32)
    .bind(next.holder.as_ref().map(|h| h.runner_id.as_str()))
    .bind(next.holder.as_ref().map(|h| h.claim))
    .bind(c.current_step.map(Step::as_str))
    .bind(c.not_before)
    .bind(c.failure.map(|f| f.step.as_str()))
    .bind(c.failure.map(|f| f.cause.as_str()))
    .bind(c.failure.map(|f| f.message.as_str()))
    .bind(c.failure.is_some_and(|f| f.rolled_back))
    .bind(c.image)
    .bind(c.url)
    .bind(c.cancel.map(|r| r.by.as_str()))
    .bind(c.cancel.map(|r| r.reason.as_str()))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Refreshes the holder's lease; bumps the version so a decision made before it (a lease
/// expiry) loses.
async fn touch(conn: &mut PgConnection, loaded: &Loaded) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE deployments SET heartbeat_at = now(), version = version + 1
         WHERE id = $1 AND state = 'running' AND attempt = $2 AND version = $3",
    )
    .bind(loaded.row.id)
    .bind(loaded.row.attempt as i32)
    .bind(loaded.version)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Writes what a change carries beside the lifecycle's columns — the commit a runner resolved,
/// the digest it pushed, a step it reported — and closes a step still running when its attempt
/// ended (failed or cancelled).
async fn record_beside(
    conn: &mut PgConnection,
    before: &Row,
    next: &Row,
    input: &Input<'_>,
) -> Result<(), sqlx::Error> {
    if let Input::Runner(env) = input {
        match &env.body {
            Body::Resolved { sha } if crate::webhook::is_sha(sha) => {
                sqlx::query("UPDATE deployments SET sha = $2 WHERE id = $1 AND sha = ''")
                    .bind(before.id)
                    .bind(sha)
                    .execute(&mut *conn)
                    .await?;
                return Ok(());
            }
            Body::Pushed { digest } if digest.starts_with("sha256:") && digest.len() <= 100 => {
                sqlx::query("UPDATE deployments SET image_digest = $2 WHERE id = $1")
                    .bind(before.id)
                    .bind(digest)
                    .execute(&mut *conn)
                    .await?;
                return Ok(());
            }
            // `started` only where nothing is recorded; its end only over this attempt's start.
            Body::ReleaseCommand { state, exit_code } => {
                let record =
                    slipway_proto::ReleaseRecord { attempt: before.attempt, state: *state, exit_code: *exit_code };
                sqlx::query(
                    "UPDATE deployments SET release_command = $3 WHERE id = $1 AND CASE
                         WHEN $4 THEN release_command IS NULL
                         ELSE release_command->>'state' = 'started' AND (release_command->>'attempt')::int = $2 END",
                )
                .bind(before.id)
                .bind(before.attempt as i32)
                .bind(sqlx::types::Json(record))
                .bind(*state == slipway_proto::ReleaseState::Started)
                .execute(&mut *conn)
                .await?;
                return Ok(());
            }
            Body::Cache { summary } => {
                let mut summary = summary.clone();
                summary.first_miss = summary.first_miss.map(|m| m.chars().take(2000).collect());
                sqlx::query("UPDATE deployments SET cache = $2 WHERE id = $1")
                    .bind(before.id)
                    .bind(sqlx::types::Json(summary))
                    .execute(&mut *conn)
                    .await?;
                return Ok(());
            }
            // A name the runner made (`<app>-<time>-<deployment>.dump`); refused if it is not one.
            Body::Snapshot { name, bytes, pruned } if crate::snapshots::is_name(name) => {
                let runner = before.holder.as_ref().map(|h| h.runner_id.clone());
                crate::snapshots::record(
                    &mut *conn,
                    before.id,
                    before.attempt,
                    name,
                    *bytes,
                    runner.as_deref(),
                    pruned,
                )
                .await?;
                return Ok(());
            }
            Body::Step { step, status, error } => {
                let running = *status == StepStatus::Running;
                sqlx::query(
                    "INSERT INTO deployment_steps (deployment_id, attempt, step, status, started_at, finished_at, error)
                     VALUES ($1, $2, $3, $4, now(), CASE WHEN $5 THEN NULL ELSE now() END, $6)
                     ON CONFLICT (deployment_id, attempt, step) DO UPDATE
                     SET status = $4, finished_at = CASE WHEN $5 THEN NULL ELSE now() END, error = $6",
                )
                .bind(before.id)
                .bind(before.attempt as i32)
                .bind(step.as_str())
                .bind(status.as_str())
                .bind(running)
                .bind(error)
                .execute(&mut *conn)
                .await?;
                return Ok(());
            }
            _ => {}
        }
    }
    let ended_attempt = next.attempt != before.attempt || next.state().is_terminal();
    if !ended_attempt || before.state() != State::Running {
        return Ok(());
    }
    let (status, error) = match &next.phase {
        Phase::Cancelled { cancel, .. } => {
            (StepStatus::Cancelled, format!("cancelled by {}: {}", cancel.by, cancel.reason))
        }
        Phase::Failed { failure, .. } | Phase::Queued { last_failure: Some(failure), .. } => {
            (StepStatus::Failed, failure.message.clone())
        }
        Phase::Queued { last_failure: None, .. } | Phase::Running { .. } | Phase::Completed { .. } => return Ok(()),
    };
    sqlx::query(
        "UPDATE deployment_steps SET status = $3, finished_at = coalesce(finished_at, now()), error = coalesce(error, $4)
         WHERE deployment_id = $1 AND attempt = $2 AND status = 'running'",
    )
    .bind(before.id)
    .bind(before.attempt as i32)
    .bind(status.as_str())
    .bind(error)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Stores a batch of log lines of a runner's attempt as one row (`log_chunks`); a batch sent
/// again is the same row (the larger copy wins). NUL, which PostgreSQL's text cannot hold, is
/// escaped as `\0`.
pub async fn store_logs(
    pool: &PgPool,
    env: &slipway_proto::Envelope,
    lines: &[slipway_proto::LogLine],
) -> Result<(), sqlx::Error> {
    let seqs: Vec<i64> = lines.iter().map(|l| i64::try_from(l.seq).unwrap_or(i64::MAX)).collect();
    let (Some(first), Some(last)) = (seqs.iter().min().copied(), seqs.iter().max().copied()) else {
        return Ok(());
    };
    let steps: Vec<Option<&str>> = lines.iter().map(|l| l.step.map(Step::as_str)).collect();
    let texts: Vec<std::borrow::Cow<'_, str>> =
        lines.iter().map(|l| slipway_proto::text::escape_str(&l.line)).collect();
    let texts: Vec<&str> = texts.iter().map(|t| t.as_ref()).collect();
    let stamps: Vec<DateTime<Utc>> = lines.iter().map(|l| l.ts).collect();
    let more: Vec<bool> = lines.iter().map(|l| l.more).collect();
    sqlx::query(
        "INSERT INTO log_chunks (deployment_id, attempt, first_seq, last_seq, seqs, steps, lines, ts, more)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 WHERE EXISTS (SELECT 1 FROM deployments WHERE id = $1)
         ON CONFLICT (deployment_id, attempt, first_seq) DO UPDATE
         SET last_seq = EXCLUDED.last_seq, seqs = EXCLUDED.seqs, steps = EXCLUDED.steps, lines = EXCLUDED.lines,
             ts = EXCLUDED.ts, more = EXCLUDED.more
         WHERE cardinality(EXCLUDED.seqs) > cardinality(log_chunks.seqs)",
    )
    .bind(env.deployment_id)
    .bind(env.attempt as i32)
    .bind(first)
    .bind(last)
    .bind(seqs)
    .bind(steps)
    .bind(texts)
    .bind(stamps)
    .bind(more)
    .execute(pool)
    .await?;
    Ok(())
}
