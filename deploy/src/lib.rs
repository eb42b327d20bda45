//! Deploy targets: what makes a built image the serving version of an app. `docker` runs it
//! on the local engine (the embedded default); `kubernetes` follows.

pub mod docker;
pub mod kubernetes;

use std::collections::BTreeMap;
use std::future::Future;

pub use docker::{DockerTarget, DockerTargetConfig};

/// One version of an app to make live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub app: String,
    pub environment: String,
    pub deployment_id: uuid::Uuid,
    /// A pullable image reference, e.g. `127.0.0.1:5000/web:<sha>`.
    pub image: String,
    /// Port the app listens on inside the container.
    pub port: u16,
    /// Path that answers 2xx once the app is ready.
    pub health_path: String,
    pub env: BTreeMap<String, String>,
}

/// Where the release answers once it is live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub url: Option<String>,
}

/// Why a deploy failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The new version never became healthy; the previous one keeps serving.
    #[error("the new version did not become healthy: {reason}")]
    Unhealthy { reason: String, last_output: Vec<String> },
    /// The engine or cluster failed us.
    #[error("{action} failed")]
    Engine {
        action: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
}

impl Error {
    /// A user error (the app's own fault) is not retried; anything else is.
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Unhealthy { .. } => true,
            Error::Engine { .. } => false,
        }
    }
}

/// Receives progress lines for the deployment's log.
pub type LogFn<'a> = &'a (dyn Fn(String) + Send + Sync);

/// A place releases go live.
///
/// Contract: `deploy` is idempotent for a given `Release::deployment_id` (a retried attempt
/// replaces what an earlier attempt of the same deployment left), it never leaves the previous
/// version stopped unless the new one is healthy, and it cleans up the new version on failure.
pub trait DeployTarget: Send + Sync {
    /// Makes `release` the serving version, or leaves the previous one serving and says why not.
    fn deploy(&self, release: &Release, log: LogFn<'_>) -> impl Future<Output = Result<Live, Error>> + Send;
}
