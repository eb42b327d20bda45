//! Deploy targets: what makes a built image the serving version of an app. `docker` runs it
//! on the local engine (the embedded default); `kubernetes` follows.

pub mod docker;
pub mod edge;
pub mod kubernetes;

use std::collections::BTreeMap;
use std::future::Future;

pub use docker::{AppLimits, DockerTarget, DockerTargetConfig};
pub use edge::{Edge, EdgeConfig, EdgeError};
pub use kubernetes::KubeTarget;

/// One version of an app to make live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub app: String,
    pub environment: String,
    pub deployment_id: uuid::Uuid,
    /// The attempt of the deployment making it live (a retry replaces what an earlier one left).
    pub attempt: u32,
    /// The commit the image was built from.
    pub sha: String,
    /// A pullable image reference, e.g. `127.0.0.1:5000/web:<sha>`.
    pub image: String,
    /// Port the app listens on inside the container.
    pub port: u16,
    /// Path that answers 2xx once the app is ready.
    pub health_path: String,
    pub env: BTreeMap<String, String>,
    /// The names of the secret variables in `env` (their values are masked in the app's output).
    pub secrets: Vec<String>,
    /// This app's container limits (docker target), instead of the target's defaults.
    pub limits: Option<AppLimits>,
    /// Hosts the app answers at on the edge besides `<app>.<domain>` (docker target).
    pub hosts: Vec<String>,
    /// How long the previous version's in-flight requests may take to finish after the switch
    /// (docker target); `None`: the target's default.
    pub drain: Option<std::time::Duration>,
    /// A rollback to an earlier version: the docker target starts that version's kept container
    /// again when it still has it, instead of a new one.
    pub rollback: bool,
    /// Target-specific settings (for `kubernetes`: the keys of `KubeSpec`).
    pub settings: Option<serde_json::Value>,
}

impl Release {
    /// What makes two containers of the app the same version: the image and every setting the
    /// container is created with (environment, port, health path, limits, hosts). A release
    /// that changed only its configuration has the image of the one before and another
    /// fingerprint, so a rollback never starts a kept container with the wrong settings.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let limits = self.limits.map(|l| (l.memory_bytes, l.nano_cpus, l.pids));
        let parts = serde_json::json!([self.image, self.port, self.health_path, self.env, limits, self.hosts]);
        hex::encode(Sha256::digest(parts.to_string().as_bytes()))
    }
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
    /// The engine failed us.
    #[error("{action} failed")]
    Engine {
        action: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    /// The app's settings cannot become a deployment.
    #[error("invalid settings: {0}")]
    Invalid(String),
    /// The rollout failed and there was nothing to roll back to.
    #[error("the rollout failed: {0}")]
    Rollout(String),
    /// The rollout failed and the previous revision serves again.
    #[error("rolled back to {to}: {reason}")]
    RolledBack { reason: String, to: String },
    /// The cluster failed us.
    #[error("the cluster failed: {0}")]
    Cluster(String),
    /// The edge proxy could not be configured; the previous version keeps serving.
    #[error(transparent)]
    Edge(#[from] edge::EdgeError),
    /// A newer deployment of the app already serves; an older one never replaces it.
    #[error("a newer deployment ({newer}) of the app already serves; not deploying over it")]
    Stale { newer: String },
}

/// Receives progress lines for the deployment's log.
pub type LogFn<'a> = &'a (dyn Fn(String) + Send + Sync);

/// A place releases go live.
///
/// Contract: `deploy` is idempotent for a given `Release::deployment_id` (a retried attempt
/// replaces what an earlier attempt of the same deployment left, once its own version is
/// healthy), it never leaves the previous version stopped unless the new one is healthy, it never
/// stops or replaces a newer deployment's version, and it cleans up the new version on failure.
pub trait DeployTarget: Send + Sync {
    /// Makes `release` the serving version, or leaves the previous one serving and says why not.
    fn deploy(&self, release: &Release, log: LogFn<'_>) -> impl Future<Output = Result<Live, Error>> + Send;

    /// Removes what serves the app's environment of `release` (a closed pull request's
    /// preview): nothing of a newer deployment, nothing of another environment or
    /// installation. Idempotent: what is gone already is not an error.
    fn teardown(&self, release: &Release, log: LogFn<'_>) -> impl Future<Output = Result<(), Error>> + Send;
}
