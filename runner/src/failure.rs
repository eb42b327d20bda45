//! Why a job attempt stopped: one error type for every step, classified once. [`JobError::cause`]
//! decides whether the user has to act (not retried) or the platform failed (retried by the
//! scheduler with back-off); nothing else in the runner decides that.

use std::time::Duration;

use slipway_deploy::Error as DeployError;
use slipway_proto::{Cause, Step};

use crate::checkout::CheckoutError;
use crate::context::ContextError;
use crate::image::ImageError;

/// A step that did not succeed, and why.
#[derive(Debug, thiserror::Error)]
#[error("{} failed: {error}", step.as_str())]
pub struct StepError {
    pub step: Step,
    #[source]
    pub error: JobError,
}

/// Everything that can stop a job attempt.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Stopped through its cancellation token (a cancel, a refused claim, or shutdown).
    #[error("stopped before it finished")]
    Cancelled,
    #[error(transparent)]
    Checkout(#[from] CheckoutError),
    #[error("no build plan: {0}")]
    Plan(#[source] slipway_detect::DetectError),
    #[error("slipway.toml: {0}")]
    WatchPaths(String),
    #[error("the release command failed (exit code {0}); nothing was switched, the previous release serves")]
    ReleaseFailed(i64),
    #[error("the release command took longer than {0:?}; nothing was switched")]
    ReleaseTimedOut(Duration),
    #[error(
        "the release command started in attempt {0} and how it ended is unknown (its runner stopped); it never runs twice for one deployment: check what it did, then deploy again"
    )]
    ReleaseUnknown(u32),
    #[error("running the release command failed: {0}")]
    ReleaseRun(#[source] bollard::errors::Error),
    #[error("the database snapshot before the release command failed: {0}; the release command did not run")]
    SnapshotFailed(String),
    #[error("{0}")]
    SnapshotMissing(String),
    #[error("restoring the database snapshot failed (exit code {0}); the database is as it was before the restore")]
    RestoreFailed(i64),
    #[error("taking or restoring a database snapshot failed: {0}")]
    SnapshotIo(#[source] std::io::Error),
    #[error("the pre_deploy hook failed (exit code {0}); nothing was switched")]
    PreDeployFailed(i64),
    #[error("generating the Dockerfile failed: {0}")]
    Dockerfile(#[source] slipway_detect::dockerfile::GenerateError),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("the build took longer than {0:?}")]
    BuildTimedOut(Duration),
    #[error("pushing the image to the registry took longer than {0:?}")]
    PushTimedOut(Duration),
    #[error("the tests failed (exit code {0})")]
    TestsFailed(i64),
    #[error("the tests took longer than {0:?}")]
    TestsTimedOut(Duration),
    #[error("running the tests failed: {0}")]
    TestRun(#[source] bollard::errors::Error),
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error(
        "this runner has no Kubernetes cluster configured (SLIPWAY_KUBERNETES=true and a kubeconfig or in-cluster account)"
    )]
    NoCluster,
    #[error("the scheduler did not confirm that this attempt still holds the job")]
    NotConfirmed,
    #[error("creating the workspace failed: {0}")]
    Workspace(#[source] std::io::Error),
    #[error("the {what} task failed: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl JobError {
    /// Who has to act: the user (their code, config or tests) or the platform.
    pub fn cause(&self) -> Cause {
        use Cause::{Infrastructure, User};
        match self {
            JobError::Checkout(err) => match err {
                CheckoutError::BadSha(_)
                | CheckoutError::NotFound { .. }
                | CheckoutError::NoRef { .. }
                | CheckoutError::Refused(_) => User,
                CheckoutError::Fetch(_) | CheckoutError::Checkout(_) | CheckoutError::Interrupted => Infrastructure,
            },
            JobError::Image(err) => match err {
                ImageError::BuildFailed(_) | ImageError::Reference(..) => User,
                ImageError::PushFailed(_) | ImageError::PullFailed(_) | ImageError::Engine { .. } => Infrastructure,
            },
            JobError::Context(err) => match err {
                ContextError::Io { .. } => Infrastructure,
                ContextError::Pattern { .. } | ContextError::TooLarge { .. } | ContextError::Escapes { .. } => User,
            },
            JobError::Deploy(err) => match err {
                DeployError::Unhealthy { .. }
                | DeployError::Invalid(_)
                | DeployError::Rollout(_)
                | DeployError::RolledBack { .. }
                | DeployError::Stale { .. } => User,
                DeployError::Engine { .. } | DeployError::Cluster(_) | DeployError::Edge(_) => Infrastructure,
            },
            JobError::Plan(_)
            | JobError::WatchPaths(_)
            | JobError::ReleaseFailed(_)
            | JobError::ReleaseTimedOut(_)
            | JobError::ReleaseUnknown(_)
            | JobError::PreDeployFailed(_)
            | JobError::SnapshotFailed(_)
            | JobError::RestoreFailed(_)
            | JobError::Dockerfile(_)
            | JobError::BuildTimedOut(_)
            | JobError::TestsFailed(_)
            | JobError::TestsTimedOut(_) => User,
            JobError::Cancelled
            | JobError::TestRun(_)
            | JobError::ReleaseRun(_)
            | JobError::SnapshotMissing(_)
            | JobError::SnapshotIo(_)
            | JobError::NoCluster
            | JobError::NotConfirmed
            | JobError::PushTimedOut(_)
            | JobError::Workspace(_)
            | JobError::Task { .. } => Infrastructure,
        }
    }

    /// Whether the previous revision was put back and serves.
    pub fn rolled_back(&self) -> bool {
        matches!(self, JobError::Deploy(DeployError::RolledBack { .. }))
    }

    /// Tags `self` with the step it stopped.
    pub fn at(self, step: Step) -> StepError {
        StepError { step, error: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_errors_are_the_users_code_and_platform_errors_are_retried() {
        let user = [
            JobError::Checkout(CheckoutError::NotFound { sha: "a".into(), message: "no such commit".into() }),
            JobError::Image(ImageError::BuildFailed("exit 1".into())),
            JobError::TestsFailed(1),
            JobError::WatchPaths("watch path `a/{b` is not a glob".into()),
            JobError::BuildTimedOut(Duration::from_secs(1)),
            JobError::Deploy(DeployError::Unhealthy { reason: "503".into(), last_output: vec![] }),
        ];
        for e in user {
            assert_eq!(e.cause(), Cause::User, "{e}");
        }
        let platform = [
            JobError::Checkout(CheckoutError::Fetch("connection refused".into())),
            JobError::Image(ImageError::PushFailed("registry down".into())),
            JobError::NotConfirmed,
            JobError::Deploy(DeployError::Cluster("api server down".into())),
        ];
        for e in platform {
            assert_eq!(e.cause(), Cause::Infrastructure, "{e}");
        }
    }
}
