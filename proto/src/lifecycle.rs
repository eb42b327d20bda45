//! The deployment lifecycle as one pure decision. A deployment's row is a [`Row`] whose
//! [`Phase`] carries the data of its state; [`decide`] takes the row and one [`Input`] (a runner
//! message, a lease expiry, a cancel request, a supersede) and returns what to write, what to
//! announce and what to tell runners — or why the input does not apply. The scheduler executes
//! a [`Decision`] as one write guarded by the state and attempt it was decided on, and nothing
//! else writes a state.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::message::{Body, Control, Envelope, Notification};
use crate::state::{Cause, State, Step, StepStatus, retry_delay};

/// A deployment as the lifecycle sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: Uuid,
    pub app: String,
    /// 1-based; a redispatch increments it, and every runner message names the attempt it is about.
    pub attempt: u32,
    /// The runner claim the scheduler granted for this attempt, kept after the attempt ends so a
    /// late copy of its last message is recognised.
    pub holder: Option<Holder>,
    pub phase: Phase,
}

/// A granted claim: which runner works on the attempt, and which of its copies of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub runner_id: String,
    /// Unique per taking of a job message, so a duplicate copy on the same runner is told apart.
    pub claim: Uuid,
}

/// Where a deployment is, with what that state needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Waiting to be published (no sooner than `not_before`) and claimed.
    Queued {
        not_before: Option<DateTime<Utc>>,
        last_failure: Option<Failure>,
    },
    /// The holder works through the steps; `cancel` is set once someone asked it to stop.
    Running {
        step: Option<Step>,
        cancel: Option<CancelRequest>,
        last_failure: Option<Failure>,
    },
    /// Every step succeeded; `cancel` is a request that came once the deploy step had started.
    Completed {
        image: String,
        url: Option<String>,
        cancel: Option<CancelRequest>,
    },
    /// A step failed for good; `cancel` is a request made before it ended (never retried then).
    Failed {
        failure: Failure,
        cancel: Option<CancelRequest>,
    },
    Cancelled {
        cancel: CancelRequest,
        step: Option<Step>,
    },
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub step: Step,
    pub cause: Cause,
    pub message: String,
    /// The previous revision was put back and serves.
    pub rolled_back: bool,
}

/// Who asked to stop a deployment, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub by: String,
    pub reason: String,
}

/// What can happen to a deployment.
#[derive(Debug, Clone, PartialEq)]
pub enum Input<'a> {
    /// A message from a runner (log lines are stored by the caller, not decided here).
    Runner(&'a Envelope),
    /// The holder sent no heartbeat for a whole lease.
    LeaseExpired,
    /// A person asked to stop it.
    Cancel(CancelRequest),
    /// A newer deployment of the same app and environment was recorded.
    Superseded { by: Uuid, sha: String },
}

/// Knobs of the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Attempts before an infrastructure failure, a lost lease or a hand-back is final.
    pub max_attempts: u32,
}

/// What to do about an input.
// One decision lives for one message; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Write `next` guarded by the row's current state and attempt, then announce and send.
    Change { next: Row, note: Notification, control: Option<Control> },
    /// Refresh the holder's lease (guarded like a change); nothing to announce. `reply` repeats
    /// a stop to a holder that keeps working after a cancel (the first stop may have been lost).
    Touch { reply: Option<Control> },
    /// Nothing to write; send `reply` if there is one (a repeated grant).
    Ignore { reply: Option<Control> },
    /// The input does not apply; a runner that sent it is told to stop with `control`.
    Reject { why: Rejection, control: Option<Control> },
}

/// Why an input does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("attempt {sent} is stale; the current attempt is {current}")]
    StaleAttempt { sent: u32, current: u32 },
    #[error("the attempt is held by another claim (runner {holder})")]
    NotHolder { holder: String },
    #[error("the deployment is {}", .0.as_str())]
    Finished(State),
    #[error("the deployment is {}, not running", .0.as_str())]
    NotRunning(State),
    #[error("the deployment is {}, not queued", .0.as_str())]
    NotQueued(State),
    #[error("the deployment is being cancelled (by {by})")]
    Cancelling { by: String },
}

impl Phase {
    /// The stored state of this phase.
    pub fn state(&self) -> State {
        match self {
            Phase::Queued { .. } => State::Queued,
            Phase::Running { .. } => State::Running,
            Phase::Completed { .. } => State::Completed,
            Phase::Failed { .. } => State::Failed,
            Phase::Cancelled { .. } => State::Cancelled,
        }
    }
}

impl Row {
    /// The row's state.
    pub fn state(&self) -> State {
        self.phase.state()
    }

    fn note(&self, step: Option<Step>, step_status: Option<StepStatus>, message: Option<String>) -> Notification {
        Notification {
            deployment_id: self.id,
            app: self.app.clone(),
            attempt: self.attempt,
            state: self.state(),
            step,
            step_status,
            message,
        }
    }

    fn with(&self, attempt: u32, holder: Option<Holder>, phase: Phase) -> Row {
        Row { id: self.id, app: self.app.clone(), attempt, holder, phase }
    }

    fn is_holder(&self, env: &Envelope) -> bool {
        self.holder.as_ref().is_some_and(|h| h.claim == env.claim && h.runner_id == env.runner_id)
    }
}

/// Decides what `input` does to `row` at time `now`.
pub fn decide(row: &Row, input: &Input<'_>, policy: Policy, now: DateTime<Utc>) -> Decision {
    match input {
        Input::Runner(env) => runner_message(row, env, policy, now),
        Input::LeaseExpired => lease_expired(row, policy, now),
        Input::Cancel(request) => cancel(row, request),
        Input::Superseded { by, sha } => superseded(row, *by, sha),
    }
}

/// Tells the sender of `env` (that copy of the job only) to stop.
fn stop(env: &Envelope, reason: &Rejection) -> Option<Control> {
    Some(Control::Cancel {
        deployment_id: env.deployment_id,
        attempt: env.attempt,
        runner_id: Some(env.runner_id.clone()),
        claim: Some(env.claim),
        reason: reason.to_string(),
    })
}

fn reject(env: &Envelope, why: Rejection) -> Decision {
    let control = stop(env, &why);
    Decision::Reject { why, control }
}

fn runner_message(row: &Row, env: &Envelope, policy: Policy, now: DateTime<Utc>) -> Decision {
    if env.attempt != row.attempt {
        return reject(env, Rejection::StaleAttempt { sent: env.attempt, current: row.attempt });
    }
    if let Body::Claimed = env.body {
        return claimed(row, env);
    }
    if !row.is_holder(env) {
        let holder = row.holder.as_ref().map_or_else(|| "none".to_string(), |h| h.runner_id.clone());
        return reject(env, Rejection::NotHolder { holder });
    }
    let Phase::Running { step: current_step, cancel, last_failure } = &row.phase else {
        return match &env.body {
            // A late copy of the holder's last message: it was applied already.
            Body::Completed { .. }
            | Body::Failed { .. }
            | Body::Abandoned { .. }
            | Body::Skipped { .. }
            | Body::Logs { .. } => Decision::Ignore { reply: None },
            Body::Claimed
            | Body::Heartbeat
            | Body::Step { .. }
            | Body::Resolved { .. }
            | Body::Pushed { .. }
            | Body::ReleaseCommand { .. }
            | Body::Snapshot { .. }
            | Body::Cache { .. } => reject(env, Rejection::Finished(row.state())),
        };
    };
    match &env.body {
        Body::Claimed | Body::Logs { .. } => Decision::Ignore { reply: None },
        Body::Heartbeat => Decision::Touch { reply: cancel.as_ref().and_then(|c| stop_holder(row, &cancel_reason(c))) },
        Body::Step { step, status, error } => {
            let phase =
                Phase::Running { step: Some(*step), cancel: cancel.clone(), last_failure: last_failure.clone() };
            let next = row.with(row.attempt, row.holder.clone(), phase);
            let note = next.note(Some(*step), Some(*status), error.clone());
            Decision::Change { next, note, control: None }
        }
        // Recorded beside the row (the commit is not part of the lifecycle), announced like a step.
        Body::Resolved { sha } => {
            let next = row.with(row.attempt, row.holder.clone(), row.phase.clone());
            let note = next.note(*current_step, None, Some(format!("resolved the branch head to {sha}")));
            Decision::Change { next, note, control: None }
        }
        Body::Pushed { digest } => {
            let next = row.with(row.attempt, row.holder.clone(), row.phase.clone());
            let note = next.note(*current_step, None, Some(format!("pushed {digest}")));
            Decision::Change { next, note, control: None }
        }
        // Recorded beside the row, so a later attempt knows it ran.
        Body::ReleaseCommand { state, exit_code } => {
            let next = row.with(row.attempt, row.holder.clone(), row.phase.clone());
            let code = exit_code.map(|c| format!(" (exit code {c})")).unwrap_or_default();
            let note = next.note(*current_step, None, Some(format!("release command {}{code}", state.as_str())));
            Decision::Change { next, note, control: None }
        }
        // Recorded beside the row (the snapshot list), announced like a step.
        Body::Snapshot { name, bytes, .. } => {
            let next = row.with(row.attempt, row.holder.clone(), row.phase.clone());
            let note = next.note(*current_step, None, Some(format!("database snapshot {name} taken ({bytes} bytes)")));
            Decision::Change { next, note, control: None }
        }
        // Recorded beside the row, announced like a step.
        Body::Cache { summary } => {
            let next = row.with(row.attempt, row.holder.clone(), row.phase.clone());
            let said = format!("layer cache: {} steps reused, {} rebuilt", summary.reused, summary.rebuilt);
            let note = next.note(*current_step, None, Some(said));
            Decision::Change { next, note, control: None }
        }
        Body::Completed { image, url } => {
            let phase = Phase::Completed { image: image.clone(), url: url.clone(), cancel: cancel.clone() };
            let next = row.with(row.attempt, row.holder.clone(), phase);
            let note = next.note(None, None, url.clone());
            Decision::Change { next, note, control: None }
        }
        Body::Failed { step, cause, message, rolled_back } => {
            let failure = Failure { step: *step, cause: *cause, message: message.clone(), rolled_back: *rolled_back };
            // A failure after a cancel request is reported as it happened, never retried.
            let retry = cancel.is_none() && retry_decision(*cause, row.attempt, policy.max_attempts);
            let delay = chrono::Duration::from_std(retry_delay(row.attempt)).unwrap_or(chrono::Duration::MAX);
            failed_or_retried(row, failure, retry.then(|| now + delay), cancel.clone(), None)
        }
        // Nothing was built or deployed; a cancel asked for meanwhile is what is recorded.
        Body::Skipped { reason } => {
            let request = cancel
                .clone()
                .unwrap_or_else(|| CancelRequest { by: "slipway".into(), reason: format!("skipped: {reason}") });
            cancelled(row, request, *current_step, None)
        }
        Body::Abandoned { reason } => {
            if let Some(request) = cancel {
                return cancelled(row, request.clone(), *current_step, None);
            }
            let message = format!("runner {} handed the job back: {reason}", env.runner_id);
            let failure = Failure {
                step: current_step.unwrap_or(Step::Clone),
                cause: Cause::Infrastructure,
                message,
                rolled_back: false,
            };
            let retry = row.attempt < policy.max_attempts;
            failed_or_retried(row, failure, retry.then_some(now), None, None)
        }
    }
}

fn claimed(row: &Row, env: &Envelope) -> Decision {
    let grant = Control::Grant {
        deployment_id: row.id,
        attempt: row.attempt,
        runner_id: env.runner_id.clone(),
        claim: env.claim,
    };
    match &row.phase {
        Phase::Queued { last_failure, .. } => {
            let holder = Holder { runner_id: env.runner_id.clone(), claim: env.claim };
            let phase = Phase::Running { step: None, cancel: None, last_failure: last_failure.clone() };
            let next = row.with(row.attempt, Some(holder), phase);
            let note = next.note(None, None, Some(format!("claimed by runner {}", env.runner_id)));
            Decision::Change { next, note, control: Some(grant) }
        }
        // Asked again before the deploy step, after a cancel: no grant, stop (again).
        Phase::Running { cancel: Some(request), .. } if row.is_holder(env) => {
            let why = Rejection::Cancelling { by: request.by.clone() };
            Decision::Reject { control: stop_holder(row, &cancel_reason(request)), why }
        }
        // The claim message came again (a redelivery, or the runner asking once more): grant again.
        Phase::Running { .. } if row.is_holder(env) => Decision::Ignore { reply: Some(grant) },
        Phase::Running { .. } => {
            let holder = row.holder.as_ref().map_or_else(|| "none".to_string(), |h| h.runner_id.clone());
            reject(env, Rejection::NotHolder { holder })
        }
        Phase::Completed { .. } | Phase::Failed { .. } | Phase::Cancelled { .. } => {
            reject(env, Rejection::Finished(row.state()))
        }
    }
}

/// The attempt failed: another attempt published no sooner than `retry_at`, or failed for good.
fn failed_or_retried(
    row: &Row,
    failure: Failure,
    retry_at: Option<DateTime<Utc>>,
    cancel: Option<CancelRequest>,
    control: Option<Control>,
) -> Decision {
    let (next, message) = match retry_at {
        Some(at) => {
            let message = format!("attempt {} failed, retrying: {}", row.attempt, failure.message);
            let phase = Phase::Queued { not_before: Some(at), last_failure: Some(failure.clone()) };
            (row.with(row.attempt + 1, None, phase), message)
        }
        None => {
            let phase = Phase::Failed { failure: failure.clone(), cancel };
            (row.with(row.attempt, row.holder.clone(), phase), failure.message.clone())
        }
    };
    let note = next.note(Some(failure.step), Some(StepStatus::Failed), Some(message));
    Decision::Change { next, note, control }
}

fn cancelled(row: &Row, request: CancelRequest, step: Option<Step>, control: Option<Control>) -> Decision {
    let message = format!("cancelled by {}: {}", request.by, request.reason);
    let next = row.with(row.attempt, row.holder.clone(), Phase::Cancelled { cancel: request, step });
    let note = next.note(step, None, Some(message));
    Decision::Change { next, note, control }
}

fn cancel_reason(request: &CancelRequest) -> String {
    format!("cancelled by {}: {}", request.by, request.reason)
}

/// Tells the holder of the row's attempt to stop.
fn stop_holder(row: &Row, reason: &str) -> Option<Control> {
    row.holder.as_ref().map(|h| Control::Cancel {
        deployment_id: row.id,
        attempt: row.attempt,
        runner_id: Some(h.runner_id.clone()),
        claim: Some(h.claim),
        reason: reason.to_string(),
    })
}

fn lease_expired(row: &Row, policy: Policy, now: DateTime<Utc>) -> Decision {
    let Phase::Running { step, cancel, .. } = &row.phase else {
        return Decision::Reject { why: Rejection::NotRunning(row.state()), control: None };
    };
    let runner = row.holder.as_ref().map_or("?", |h| h.runner_id.as_str());
    let control = stop_holder(row, "lease expired");
    if let Some(request) = cancel {
        return cancelled(row, request.clone(), *step, control);
    }
    let message = format!("runner {runner} stopped sending heartbeats during attempt {}", row.attempt);
    let failure =
        Failure { step: step.unwrap_or(Step::Clone), cause: Cause::Infrastructure, message, rolled_back: false };
    let retry = retry_decision(Cause::Infrastructure, row.attempt, policy.max_attempts);
    failed_or_retried(row, failure, retry.then_some(now), None, control)
}

fn cancel(row: &Row, request: &CancelRequest) -> Decision {
    match &row.phase {
        Phase::Queued { .. } => cancelled(row, request.clone(), None, None),
        Phase::Running { cancel: Some(_), .. } => Decision::Ignore { reply: None },
        Phase::Running { step, last_failure, .. } => {
            let reason = cancel_reason(request);
            let phase =
                Phase::Running { step: *step, cancel: Some(request.clone()), last_failure: last_failure.clone() };
            let next = row.with(row.attempt, row.holder.clone(), phase);
            let control = stop_holder(row, &reason);
            let note = next.note(*step, None, Some(format!("cancel requested by {}", request.by)));
            Decision::Change { next, note, control }
        }
        Phase::Completed { .. } | Phase::Failed { .. } | Phase::Cancelled { .. } => {
            Decision::Reject { why: Rejection::Finished(row.state()), control: None }
        }
    }
}

fn superseded(row: &Row, by: Uuid, sha: &str) -> Decision {
    match &row.phase {
        Phase::Queued { .. } => {
            let request =
                CancelRequest { by: "slipway".into(), reason: format!("superseded by deployment {by} of {sha}") };
            cancelled(row, request, None, None)
        }
        Phase::Running { .. } | Phase::Completed { .. } | Phase::Failed { .. } | Phase::Cancelled { .. } => {
            Decision::Reject { why: Rejection::NotQueued(row.state()), control: None }
        }
    }
}

/// Whether a failure with `cause` in attempt `attempt` (1-based) is tried again: only
/// infrastructure failures, and only while fewer than `max_attempts` were made.
pub fn retry_decision(cause: Cause, attempt: u32, max_attempts: u32) -> bool {
    match cause {
        Cause::User => false,
        Cause::Infrastructure => attempt < max_attempts,
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
