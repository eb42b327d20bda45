//! The stored vocabulary of the lifecycle: states, steps, step statuses, causes, and the retry
//! back-off. The decision itself is in `lifecycle`.

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
    /// The app's release command (migrations), in a one-off container of the new image, before
    /// any traffic moves.
    Release,
    /// The `pre_deploy` hook: a failure stops the deployment before anything is switched.
    PreDeploy,
    Deploy,
    /// The `post_deploy` hook, once the new version serves: a failure is reported, the switch stays.
    PostDeploy,
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
    /// Stopped because the deployment was cancelled.
    Cancelled,
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
    pub const ALL: [Step; 9] = [
        Step::Clone,
        Step::Build,
        Step::Test,
        Step::Push,
        Step::Release,
        Step::PreDeploy,
        Step::Deploy,
        Step::PostDeploy,
        Step::Cleanup,
    ];

    /// The column value stored in PostgreSQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Clone => "clone",
            Step::Build => "build",
            Step::Test => "test",
            Step::Push => "push",
            Step::Release => "release",
            Step::PreDeploy => "pre_deploy",
            Step::Deploy => "deploy",
            Step::PostDeploy => "post_deploy",
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
            StepStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a stored column value.
    pub fn parse(s: &str) -> Option<Self> {
        [StepStatus::Running, StepStatus::Succeeded, StepStatus::Failed, StepStatus::Skipped, StepStatus::Cancelled]
            .into_iter()
            .find(|st| st.as_str() == s)
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

    /// Parses a stored column value.
    pub fn parse(s: &str) -> Option<Self> {
        [Cause::User, Cause::Infrastructure].into_iter().find(|c| c.as_str() == s)
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
    use State as S;

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
        for c in [Cause::User, Cause::Infrastructure] {
            assert_eq!(Cause::parse(c.as_str()), Some(c));
        }
        assert_eq!(S::parse("bogus"), None);
        assert_eq!(Cause::parse("bogus"), None);
    }
}
