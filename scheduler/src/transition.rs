//! Runner messages applied to deployments: the pure decision of what a message means for the
//! row, and the compare-and-set that writes it through the state machine in `slipway_proto`;
//! and the lease reaper's expiry of silent runners.

use std::time::Duration;

use slipway_proto::{
    Body, Cause, Envelope, Event, Notification, State, Step, StepStatus, apply, retry_decision, retry_delay,
};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// What applying a runner message did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The state or a step changed; publish this notification.
    Changed(Notification),
    /// A log line was stored (or was a duplicate).
    Logged,
    /// A duplicate or a heartbeat: nothing to announce.
    Unchanged,
    /// The message is from an attempt or runner that no longer owns the job; tell it to stop.
    Rejected { runner_id: String, reason: String },
}

/// What the row says now, locked for the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub state: State,
    pub attempt: u32,
    pub runner_id: Option<String>,
}

/// What a runner message means for the row, decided without IO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Apply this event to the state machine.
    Apply(Event),
    /// Only refresh the lease.
    Heartbeat,
    /// A duplicate or late message from the owner: nothing to do.
    Ignore,
    /// The sender does not own this attempt.
    Reject(String),
}

/// Decides what `body` from `runner_id` for `attempt` means given the row's current values.
pub fn decide(current: &Current, runner_id: &str, attempt: u32, body: &Body, max_attempts: u32) -> Decision {
    if attempt != current.attempt {
        return Decision::Reject(format!("attempt {attempt} is stale; the current attempt is {}", current.attempt));
    }
    let owner = current.runner_id.as_deref() == Some(runner_id);
    if let Body::Claimed = body {
        return match current.state {
            State::Queued => Decision::Apply(Event::Claimed),
            State::Running | State::Completed | State::Failed if owner => Decision::Ignore,
            State::Running => {
                Decision::Reject(format!("taken by runner {}", current.runner_id.as_deref().unwrap_or("?")))
            }
            other => Decision::Reject(format!("the deployment is {}", other.as_str())),
        };
    }
    if !owner {
        return Decision::Reject("this runner does not hold the job".into());
    }
    if current.state.is_terminal() {
        return match current.state {
            State::Cancelled => Decision::Reject("the deployment was cancelled".into()),
            _ => Decision::Ignore,
        };
    }
    match body {
        Body::Claimed | Body::Log(_) => Decision::Ignore,
        Body::Heartbeat => Decision::Heartbeat,
        Body::Step { .. } => Decision::Apply(Event::Step),
        Body::Completed { .. } => Decision::Apply(Event::Completed),
        Body::Failed { cause, .. } => Decision::Apply(retry_decision(*cause, attempt, max_attempts)),
        Body::Abandoned { .. } => Decision::Apply(Event::Retry),
    }
}

/// Applies one runner message as a compare-and-set on (id, state, attempt, runner).
pub async fn apply_envelope(pool: &PgPool, env: &Envelope, max_attempts: u32) -> Result<Applied, sqlx::Error> {
    if let Body::Log(line) = &env.body {
        sqlx::query(
            "INSERT INTO log_lines (deployment_id, attempt, seq, step, line, ts)
             SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM deployments WHERE id = $1)
             ON CONFLICT DO NOTHING",
        )
        .bind(env.deployment_id)
        .bind(env.attempt as i32)
        .bind(line.seq as i64)
        .bind(line.step.map(Step::as_str))
        .bind(&line.line)
        .bind(line.ts)
        .execute(pool)
        .await?;
        return Ok(Applied::Logged);
    }
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as::<_, (String, i32, Option<String>, String)>(
        "SELECT d.state, d.attempt, d.runner_id, a.name FROM deployments d JOIN apps a ON a.id = d.app_id WHERE d.id = $1 FOR UPDATE OF d",
    )
    .bind(env.deployment_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((state, attempt, runner_id, app)) = row else {
        return Ok(Applied::Rejected { runner_id: env.runner_id.clone(), reason: "unknown deployment".into() });
    };
    let current = Current { state: State::parse(&state).unwrap_or(State::Failed), attempt: attempt as u32, runner_id };
    let event = match decide(&current, &env.runner_id, env.attempt, &env.body, max_attempts) {
        Decision::Ignore => return Ok(Applied::Unchanged),
        Decision::Reject(reason) => {
            return Ok(Applied::Rejected { runner_id: env.runner_id.clone(), reason });
        }
        Decision::Heartbeat => {
            sqlx::query("UPDATE deployments SET heartbeat_at = now() WHERE id = $1")
                .bind(env.deployment_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(Applied::Unchanged);
        }
        Decision::Apply(event) => event,
    };
    let Ok(next) = apply(current.state, event) else {
        tracing::warn!(deployment_id = %env.deployment_id, state = current.state.as_str(), ?event, "runner message does not apply; ignored");
        return Ok(Applied::Unchanged);
    };
    let mut note = Notification {
        deployment_id: env.deployment_id,
        app,
        attempt: env.attempt,
        state: next,
        step: None,
        step_status: None,
        message: None,
    };
    write_transition(&mut tx, env, event, &mut note).await?;
    tx.commit().await?;
    Ok(Applied::Changed(note))
}

async fn write_transition(
    tx: &mut Transaction<'_, Postgres>,
    env: &Envelope,
    event: Event,
    note: &mut Notification,
) -> Result<(), sqlx::Error> {
    let (id, attempt) = (env.deployment_id, env.attempt as i32);
    match (&env.body, event) {
        (Body::Claimed, _) => {
            sqlx::query(
                "UPDATE deployments SET state = 'running', runner_id = $3, heartbeat_at = now(), started_at = coalesce(started_at, now())
                 WHERE id = $1 AND attempt = $2 AND state = 'queued'",
            )
            .bind(id)
            .bind(attempt)
            .bind(&env.runner_id)
            .execute(&mut **tx)
            .await?;
        }
        (Body::Step { step, status, error }, _) => {
            note.step = Some(*step);
            note.step_status = Some(*status);
            note.message = error.clone();
            let running = *status == StepStatus::Running;
            sqlx::query(
                "INSERT INTO deployment_steps (deployment_id, attempt, step, status, started_at, finished_at, error)
                 VALUES ($1, $2, $3, $4, now(), CASE WHEN $5 THEN NULL ELSE now() END, $6)
                 ON CONFLICT (deployment_id, attempt, step) DO UPDATE
                 SET status = $4, finished_at = CASE WHEN $5 THEN NULL ELSE now() END, error = $6",
            )
            .bind(id)
            .bind(attempt)
            .bind(step.as_str())
            .bind(status.as_str())
            .bind(running)
            .bind(error)
            .execute(&mut **tx)
            .await?;
            sqlx::query("UPDATE deployments SET current_step = $2, heartbeat_at = now() WHERE id = $1")
                .bind(id)
                .bind(step.as_str())
                .execute(&mut **tx)
                .await?;
        }
        (Body::Completed { image, url }, _) => {
            note.message = url.clone();
            sqlx::query(
                "UPDATE deployments SET state = 'completed', finished_at = now(), current_step = NULL, image = $2, url = $3 WHERE id = $1",
            )
            .bind(id)
            .bind(image)
            .bind(url)
            .execute(&mut **tx)
            .await?;
        }
        (Body::Failed { step, cause, message, rolled_back }, event) => {
            note.step = Some(*step);
            note.message = Some(message.clone());
            let retry = (event == Event::Retry).then(|| retry_delay(env.attempt));
            record_failure(tx, id, *step, *cause, message, retry).await?;
            if *rolled_back {
                sqlx::query("UPDATE deployments SET rolled_back = true WHERE id = $1")
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        (Body::Abandoned { reason }, _) => {
            note.message = Some(reason.clone());
            requeue(tx, id, &format!("runner {} handed the job back: {reason}", env.runner_id), Duration::ZERO).await?;
        }
        (Body::Heartbeat | Body::Log(_), _) => {}
    }
    Ok(())
}

async fn record_failure(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    step: Step,
    cause: Cause,
    message: &str,
    retry_after: Option<Duration>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE deployment_steps SET status = 'failed', finished_at = coalesce(finished_at, now()), error = $3 WHERE deployment_id = $1 AND step = $2 AND status = 'running'")
        .bind(id)
        .bind(step.as_str())
        .bind(message)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE deployments SET error_step = $2, error_cause = $3, error_message = $4 WHERE id = $1")
        .bind(id)
        .bind(step.as_str())
        .bind(cause.as_str())
        .bind(message)
        .execute(&mut **tx)
        .await?;
    if let Some(delay) = retry_after {
        requeue(tx, id, message, delay).await
    } else {
        sqlx::query("UPDATE deployments SET state = 'failed', finished_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// Puts a deployment back in the outbox as its next attempt, published no sooner than `delay`.
async fn requeue(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    reason: &str,
    delay: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE deployments SET state = 'queued', attempt = attempt + 1, runner_id = NULL, published_at = NULL,
                heartbeat_at = NULL, current_step = NULL, error_message = $2,
                not_before = now() + make_interval(secs => $3) WHERE id = $1",
    )
    .bind(id)
    .bind(reason)
    .bind(delay.as_secs_f64())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A deployment whose runner stopped sending heartbeats, and what became of it.
#[derive(Debug, Clone)]
pub struct Expired {
    pub runner_id: String,
    pub old_attempt: u32,
    pub note: Notification,
}

/// Dispatches again (or fails, when out of attempts) every running deployment whose lease ran out.
pub async fn expire_leases(pool: &PgPool, lease: Duration, max_attempts: u32) -> Result<Vec<Expired>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query_as::<_, (Uuid, i32, Option<String>, String, Option<String>)>(
        "SELECT d.id, d.attempt, d.runner_id, a.name, d.current_step FROM deployments d JOIN apps a ON a.id = d.app_id
         WHERE d.state = 'running' AND d.heartbeat_at < now() - make_interval(secs => $1)
         FOR UPDATE OF d SKIP LOCKED",
    )
    .bind(lease.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    let mut expired = Vec::with_capacity(rows.len());
    for (id, attempt, runner_id, app, current_step) in rows {
        let runner_id = runner_id.unwrap_or_default();
        let message = format!("runner {runner_id} stopped sending heartbeats during attempt {attempt}");
        let event = retry_decision(Cause::Infrastructure, attempt as u32, max_attempts);
        let step = current_step.as_deref().and_then(Step::parse).unwrap_or(Step::Clone);
        record_failure(
            &mut tx,
            id,
            step,
            Cause::Infrastructure,
            &message,
            (event == Event::Retry).then_some(Duration::ZERO),
        )
        .await?;
        let state = apply(State::Running, event).unwrap_or(State::Failed);
        expired.push(Expired {
            runner_id,
            old_attempt: attempt as u32,
            note: Notification {
                deployment_id: id,
                app,
                attempt: if state == State::Queued { attempt as u32 + 1 } else { attempt as u32 },
                state,
                step: Some(step),
                step_status: None,
                message: Some(message),
            },
        });
    }
    tx.commit().await?;
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use slipway_proto::LogLine;

    fn current(state: State, attempt: u32, runner: Option<&str>) -> Current {
        Current { state, attempt, runner_id: runner.map(str::to_string) }
    }

    #[test]
    fn decision_table() {
        let failed_user =
            Body::Failed { step: Step::Build, cause: Cause::User, message: "x".into(), rolled_back: false };
        let failed_infra =
            Body::Failed { step: Step::Push, cause: Cause::Infrastructure, message: "x".into(), rolled_back: false };
        let completed = Body::Completed { image: "i".into(), url: None };
        let log = Body::Log(LogLine { seq: 1, step: None, line: "l".into(), ts: Utc::now() });
        let rows: Vec<(Current, &str, u32, Body, Decision)> = vec![
            (current(State::Queued, 1, None), "a", 1, Body::Claimed, Decision::Apply(Event::Claimed)),
            (current(State::Running, 1, Some("a")), "a", 1, Body::Claimed, Decision::Ignore),
            (
                current(State::Running, 1, Some("a")),
                "b",
                1,
                Body::Claimed,
                Decision::Reject("taken by runner a".into()),
            ),
            (
                current(State::Cancelled, 1, None),
                "b",
                1,
                Body::Claimed,
                Decision::Reject("the deployment is cancelled".into()),
            ),
            (
                current(State::Queued, 2, None),
                "a",
                1,
                Body::Claimed,
                Decision::Reject("attempt 1 is stale; the current attempt is 2".into()),
            ),
            (current(State::Running, 1, Some("a")), "a", 1, Body::Heartbeat, Decision::Heartbeat),
            (
                current(State::Running, 1, Some("a")),
                "b",
                1,
                Body::Heartbeat,
                Decision::Reject("this runner does not hold the job".into()),
            ),
            (current(State::Running, 1, Some("a")), "a", 1, completed.clone(), Decision::Apply(Event::Completed)),
            (current(State::Completed, 1, Some("a")), "a", 1, completed, Decision::Ignore),
            (current(State::Running, 1, Some("a")), "a", 1, failed_user, Decision::Apply(Event::Failed)),
            (current(State::Running, 1, Some("a")), "a", 1, failed_infra.clone(), Decision::Apply(Event::Retry)),
            (current(State::Running, 3, Some("a")), "a", 3, failed_infra, Decision::Apply(Event::Failed)),
            (
                current(State::Running, 1, Some("a")),
                "a",
                1,
                Body::Abandoned { reason: "drain".into() },
                Decision::Apply(Event::Retry),
            ),
            (
                current(State::Cancelled, 1, Some("a")),
                "a",
                1,
                Body::Heartbeat,
                Decision::Reject("the deployment was cancelled".into()),
            ),
            (current(State::Running, 1, Some("a")), "a", 1, log, Decision::Ignore),
        ];
        for (cur, runner, attempt, body, expected) in rows {
            assert_eq!(decide(&cur, runner, attempt, &body, 3), expected, "{cur:?} {runner} {attempt} {body:?}");
        }
    }
}
