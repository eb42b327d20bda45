//! The deployment state machine: states, steps, events and the pure transition function.

use serde::{Deserialize, Serialize};

/// Where a deployment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Recorded and waiting for a runner (published or about to be).
    Queued,
    /// A runner holds the lease and is working through the steps.
    Running,
    /// Every step succeeded; the new version serves.
    Completed,
    /// A step failed for good; the previous version (if any) still serves.
    Failed,
    /// Stopped before it finished, by a person or by a newer push.
    Cancelled,
}

/// The steps of a job, in the order a runner runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Clone,
    Build,
    /// The app's own tests, run in the built image before anything is pushed.
    Test,
    Push,
    Deploy,
    Cleanup,
}

/// How a step ended (or that it has not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Running,
    Succeeded,
    Failed,
    /// Its effect already existed (e.g. the image was already in the registry), or it does not apply.
    Skipped,
}

/// Who has to act on a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The user's code or config: the build exits non-zero, the app never becomes healthy. Not retried.
    User,
    /// The platform: registry, engine or broker trouble. Retried with backoff.
    Infrastructure,
}

/// What can happen to a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A runner took the job for the current attempt.
    Claimed,
    /// A step started or finished; the deployment stays running.
    Step,
    /// The runner finished every step.
    Completed,
    /// A step failed and will not be retried.
    Failed,
    /// An infrastructure failure with attempts left, or a lost lease: dispatch again.
    Retry,
    /// A person or a newer push stopped it.
    Cancel,
}

/// An event that does not apply in the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event {event:?} does not apply to a deployment in state {from:?}")]
pub struct InvalidTransition {
    pub from: State,
    pub event: Event,
}

impl State {
    /// The column value stored in PostgreSQL.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Completed => "completed",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    /// Parses a stored column value.
    pub fn parse(s: &str) -> Option<Self> {
        [State::Queued, State::Running, State::Completed, State::Failed, State::Cancelled]
            .into_iter()
            .find(|st| st.as_str() == s)
    }

    /// No event changes a terminal state.
    pub fn is_terminal(self) -> bool {
        match self {
            State::Queued | State::Running => false,
            State::Completed | State::Failed | State::Cancelled => true,
        }
    }
}

impl Step {
    /// Every step in pipeline order.
    pub const ALL: [Step; 6] = [Step::Clone, Step::Build, Step::Test, Step::Push, Step::Deploy, Step::Cleanup];

    /// The column value stored in PostgreSQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Clone => "clone",
            Step::Build => "build",
            Step::Test => "test",
            Step::Push => "push",
            Step::Deploy => "deploy",
            Step::Cleanup => "cleanup",
        }
    }

    /// Parses a stored column value.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl StepStatus {
    /// The column value stored in PostgreSQL.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
        }
    }
}

impl Cause {
    /// The column value stored in PostgreSQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::User => "user",
            Cause::Infrastructure => "infrastructure",
        }
    }
}

/// The transition function: the state after `event`, or why the event does not apply.
pub fn apply(from: State, event: Event) -> Result<State, InvalidTransition> {
    let invalid = Err(InvalidTransition { from, event });
    match (from, event) {
        (State::Queued, Event::Claimed) => Ok(State::Running),
        (State::Queued, Event::Cancel) => Ok(State::Cancelled),
        (State::Queued, Event::Step | Event::Completed | Event::Failed | Event::Retry) => invalid,
        (State::Running, Event::Step) => Ok(State::Running),
        (State::Running, Event::Completed) => Ok(State::Completed),
        (State::Running, Event::Failed) => Ok(State::Failed),
        (State::Running, Event::Retry) => Ok(State::Queued),
        (State::Running, Event::Cancel) => Ok(State::Cancelled),
        (State::Running, Event::Claimed) => invalid,
        (State::Completed | State::Failed | State::Cancelled, _) => invalid,
    }
}

/// Decides what a failure with `cause` in attempt `attempt` (1-based) becomes: another attempt
/// only for infrastructure failures while fewer than `max_attempts` were made.
pub fn retry_decision(cause: Cause, attempt: u32, max_attempts: u32) -> Event {
    match cause {
        Cause::User => Event::Failed,
        Cause::Infrastructure if attempt < max_attempts => Event::Retry,
        Cause::Infrastructure => Event::Failed,
    }
}

/// How long attempt `attempt` (1-based) waits before it is dispatched again after an
/// infrastructure failure: 5 s, doubling per attempt, at most 5 minutes.
pub fn retry_delay(attempt: u32) -> std::time::Duration {
    let secs = 5u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
    std::time::Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event as E;
    use State as S;

    #[test]
    fn transition_table() {
        let rows: &[(S, E, Option<S>)] = &[
            (S::Queued, E::Claimed, Some(S::Running)),
            (S::Queued, E::Cancel, Some(S::Cancelled)),
            (S::Queued, E::Step, None),
            (S::Queued, E::Completed, None),
            (S::Queued, E::Failed, None),
            (S::Queued, E::Retry, None),
            (S::Running, E::Step, Some(S::Running)),
            (S::Running, E::Completed, Some(S::Completed)),
            (S::Running, E::Failed, Some(S::Failed)),
            (S::Running, E::Retry, Some(S::Queued)),
            (S::Running, E::Cancel, Some(S::Cancelled)),
            (S::Running, E::Claimed, None),
        ];
        for &(from, event, expected) in rows {
            assert_eq!(apply(from, event).ok(), expected, "{from:?} + {event:?}");
        }
    }

    #[test]
    fn terminal_states_accept_nothing() {
        let events = [E::Claimed, E::Step, E::Completed, E::Failed, E::Retry, E::Cancel];
        for from in [S::Completed, S::Failed, S::Cancelled] {
            assert!(from.is_terminal());
            for event in events {
                assert_eq!(apply(from, event), Err(InvalidTransition { from, event }));
            }
        }
    }

    #[test]
    fn only_infrastructure_failures_retry_and_only_while_attempts_remain() {
        assert_eq!(retry_decision(Cause::User, 1, 3), E::Failed);
        assert_eq!(retry_decision(Cause::Infrastructure, 1, 3), E::Retry);
        assert_eq!(retry_decision(Cause::Infrastructure, 2, 3), E::Retry);
        assert_eq!(retry_decision(Cause::Infrastructure, 3, 3), E::Failed);
    }

    #[test]
    fn retry_delay_doubles_and_is_capped() {
        let secs: Vec<u64> = [1, 2, 3, 4, 7, 60, u32::MAX].iter().map(|a| retry_delay(*a).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 300, 300, 300]);
    }

    #[test]
    fn stored_names_round_trip() {
        for s in [S::Queued, S::Running, S::Completed, S::Failed, S::Cancelled] {
            assert_eq!(S::parse(s.as_str()), Some(s));
        }
        for st in Step::ALL {
            assert_eq!(Step::parse(st.as_str()), Some(st));
        }
        assert_eq!(S::parse("bogus"), None);
    }
}
