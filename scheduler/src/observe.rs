//! What operators see of each state change: the deployment histograms and counters on
//! `/metrics` (queue wait when a claim is granted, each step's duration, the outcome and
//! push-to-live when it ends), and at the end, its trace's root span. Read back from the rows
//! the change wrote, in a task of its own, so the change itself never waits for it.

use slipway_proto::{Notification, State, StepStatus};

use slipway_telemetry::metrics as m;

use crate::Shared;

/// Records what the applied change `note` means for the metrics and the trace.
pub fn changed(shared: &Shared, note: &Notification) {
    if shared.metrics.is_none() && !slipway_telemetry::trace::enabled() {
        return;
    }
    let kind = match (note.state, note.step, note.step_status) {
        (State::Running, None, _) => Kind::Started,
        (State::Running, Some(_), Some(status)) if status != StepStatus::Running => Kind::Step,
        (state, _, _) if state.is_terminal() => Kind::Ended,
        _ => return,
    };
    let (shared2, note) = (shared.clone(), note.clone());
    shared.tasks.spawn(async move {
        if let Err(err) = record(&shared2, &note, kind).await {
            tracing::debug!(error = %err, deployment_id = %note.deployment_id, "could not read back a change for the metrics");
        }
    });
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Started,
    Step,
    Ended,
}

async fn record(shared: &Shared, note: &Notification, kind: Kind) -> Result<(), sqlx::Error> {
    let pool = &shared.pool;
    match kind {
        Kind::Started => {
            let waited: Option<f64> = sqlx::query_scalar(
                "SELECT extract(epoch FROM coalesce(started_at, now()) - created_at)::float8 FROM deployments WHERE id = $1",
            )
            .bind(note.deployment_id)
            .fetch_optional(pool)
            .await?;
            if let Some(waited) = waited {
                metrics::histogram!(m::QUEUE_WAIT).record(waited.max(0.0));
            }
        }
        Kind::Step => {
            let (Some(step), Some(status)) = (note.step, note.step_status) else { return Ok(()) };
            let took: Option<Option<f64>> = sqlx::query_scalar(
                "SELECT extract(epoch FROM finished_at - started_at)::float8 FROM deployment_steps
                 WHERE deployment_id = $1 AND attempt = $2 AND step = $3",
            )
            .bind(note.deployment_id)
            .bind(note.attempt as i32)
            .bind(step.as_str())
            .fetch_optional(pool)
            .await?;
            if let Some(Some(took)) = took {
                metrics::histogram!(m::STEP_DURATION, "step" => step.as_str(), "result" => status.as_str())
                    .record(took.max(0.0));
            }
        }
        Kind::Ended => {
            let ended = sqlx::query_as::<_, Ended>(
                "SELECT d.source, d.error_cause, d.error_step, d.error_message, d.cancel_reason,
                        extract(epoch FROM coalesce(d.finished_at, now()) - d.created_at)::float8 AS took,
                        d.trace_parent, d.created_at, coalesce(d.finished_at, now()) AS finished_at,
                        a.name AS app, d.sha, d.git_ref, d.environment, d.attempt
                 FROM deployments d JOIN apps a ON a.id = d.app_id WHERE d.id = $1",
            )
            .bind(note.deployment_id)
            .fetch_optional(pool)
            .await?;
            let Some(ended) = ended else { return Ok(()) };
            let source = source_label(&ended.source);
            let cause = match note.state {
                State::Failed => ended.error_cause.clone().unwrap_or_else(|| "unknown".into()),
                _ => "none".into(),
            };
            metrics::counter!(m::DEPLOYMENTS_FINISHED, "source" => source, "result" => note.state.as_str(), "cause" => cause)
                .increment(1);
            if note.state == State::Completed
                && let Some(took) = ended.took
            {
                metrics::histogram!(m::PUSH_TO_LIVE, "source" => source).record(took.max(0.0));
            }
            trace_root(note, &ended);
        }
    }
    Ok(())
}

/// What an ended deployment's metrics and root span are made of.
#[derive(sqlx::FromRow)]
struct Ended {
    source: String,
    error_cause: Option<String>,
    error_step: Option<String>,
    error_message: Option<String>,
    cancel_reason: Option<String>,
    took: Option<f64>,
    trace_parent: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    finished_at: chrono::DateTime<chrono::Utc>,
    app: String,
    sha: String,
    git_ref: String,
    environment: String,
    attempt: i32,
}

/// Exports the deployment's root span, from the push to now, under the ids it was recorded with.
fn trace_root(note: &Notification, ended: &Ended) {
    use opentelemetry::KeyValue;
    use slipway_telemetry::trace::{Outcome, Root};
    let Some(root) = ended.trace_parent.as_deref().and_then(Root::parse) else { return };
    let outcome = match (note.state, ended.error_cause.as_deref()) {
        (State::Completed, _) => Outcome::Success,
        (State::Failed, Some("user")) => Outcome::Failure,
        (State::Failed, _) => Outcome::Error,
        _ => Outcome::Cancellation,
    };
    let mut attributes = vec![
        KeyValue::new("cicd.pipeline.name", ended.app.clone()),
        KeyValue::new("cicd.pipeline.run.id", note.deployment_id.to_string()),
        KeyValue::new("vcs.ref.head.revision", ended.sha.clone()),
        KeyValue::new("vcs.ref.head.name", ended.git_ref.clone()),
        KeyValue::new("deployment.environment.name", ended.environment.clone()),
        KeyValue::new("slipway.source", ended.source.clone()),
        KeyValue::new("slipway.attempts", i64::from(ended.attempt)),
    ];
    if let Some(step) = &ended.error_step {
        attributes.push(KeyValue::new("slipway.failed_step", step.clone()));
    }
    if let Some(cause) = &ended.error_cause {
        attributes.push(KeyValue::new("error.type", cause.clone()));
    }
    let message = ended.error_message.as_deref().or(ended.cancel_reason.as_deref());
    root.end(
        format!("deploy {}", ended.app),
        ended.created_at.into(),
        ended.finished_at.into(),
        outcome,
        message,
        attributes,
    );
}

/// A deployment's source as a label: the known ones, anything else as `other`.
pub fn source_label(source: &str) -> &'static str {
    match source {
        "github" => "github",
        "gitlab" => "gitlab",
        "bitbucket" => "bitbucket",
        "gitea" => "gitea",
        "manual" => "manual",
        "rollback" => "rollback",
        "config" => "config",
        "promotion" => "promotion",
        "restore" => "restore",
        "preview" => "preview",
        "teardown" => "teardown",
        _ => "other",
    }
}

/// Sets the gauges read from PostgreSQL: queue depth by reason, the oldest wait, the outbox not
/// yet published, runners by state and their slots, and the dead letters.
pub async fn gauges(shared: &Shared) -> Result<(), sqlx::Error> {
    use slipway_proto::api::{RunnerState, WaitReason};
    let (queue, runners) = crate::queue::snapshot(&shared.pool, &shared.broker, shared.runner_lost_after).await?;
    for kind in WaitReason::KINDS {
        let n = queue.entries.iter().filter(|e| e.reason.kind() == kind).count();
        metrics::gauge!(m::QUEUE_DEPTH, "reason" => kind).set(n as f64);
    }
    metrics::gauge!(m::QUEUE_OLDEST_WAIT).set(queue.summary.oldest_wait_seconds.unwrap_or(0.0));
    let unpublished =
        queue.entries.iter().filter(|e| e.reason.kind() != "waiting_for_runner" && e.reason.kind() != "no_runner");
    metrics::gauge!(m::OUTBOX_UNPUBLISHED).set(unpublished.count() as f64);
    for state in [RunnerState::Idle, RunnerState::Busy, RunnerState::Draining, RunnerState::Lost] {
        let n = runners.iter().filter(|r| r.state == state).count();
        metrics::gauge!(m::RUNNERS, "state" => state.as_str()).set(n as f64);
    }
    let (slots, busy) = (queue.summary.slots, queue.summary.slots_busy);
    metrics::gauge!(m::RUNNER_SLOTS, "state" => "busy").set(busy as f64);
    metrics::gauge!(m::RUNNER_SLOTS, "state" => "idle").set(slots.saturating_sub(busy) as f64);
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters").fetch_one(&shared.pool).await?;
    metrics::gauge!(m::DEAD_LETTERS).set(dead as f64);
    Ok(())
}
