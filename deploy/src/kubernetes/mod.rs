//! The `kubernetes` target: manifests from the app's settings (typed, API v1.33), applied with
//! server-side apply; rollout watch, rollback and strategies build on them.

pub mod cluster;
pub mod manifest;
pub mod oneoff;
pub mod rollout;
pub mod spec;
pub mod strategy;

use std::time::Duration;

pub use cluster::Cluster;
pub use manifest::{Hook, Manifests, Revision, render};
pub use oneoff::JobOutcome;
pub use spec::{KubeSpec, SpecError, StrategyKind};

use crate::{DeployTarget, Error, Live, LogFn, Release};

/// Deploys to a Kubernetes cluster.
#[derive(Debug, Clone)]
pub struct KubeTarget {
    cluster: Cluster,
    /// How long a rollout may take before it is failed (and rolled back).
    pub rollout_timeout: Duration,
}

impl KubeTarget {
    pub fn new(client: kube::Client, rollout_timeout: Duration) -> Self {
        Self { cluster: Cluster::new(client), rollout_timeout }
    }

    /// The app's settings for a release: its `settings`, with name, environment, port, health
    /// path and variables from the release.
    pub fn spec(release: &Release) -> Result<KubeSpec, Error> {
        let mut spec: KubeSpec = match &release.settings {
            Some(settings) => serde_json::from_value(settings.clone()).map_err(|e| Error::Invalid(e.to_string()))?,
            None => KubeSpec::default(),
        };
        spec.name = release.app.clone();
        spec.environment = release.environment.clone();
        if let Some(n) = slipway_proto::preview_number(&release.environment) {
            // A pull request's preview: a namespace of its own (deleted when the request closes),
            // one replica without an autoscaler, and `pr-<n>.<host>` (without the app's TLS
            // secret, which is for the app's own host).
            spec.namespace = Some(format!("{}-pr-{n}", spec.namespace()));
            spec.replicas = 1;
            (spec.min_replicas, spec.max_replicas) = (None, None);
            spec.host = spec.host.take().filter(|h| !h.starts_with("*.")).map(|h| format!("pr-{n}.{h}"));
            spec.tls_secret = None;
        }
        spec.port = u32::from(release.port);
        spec.health_path = release.health_path.clone();
        // The release's secret variables go to the app's Secret, never its ConfigMap.
        for (key, value) in &release.env {
            let to = if release.secrets.contains(key) { &mut spec.secret_env } else { &mut spec.env };
            to.insert(key.clone(), value.clone());
        }
        spec.validate().map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(spec)
    }

    /// Runs a one-off command of the release (its release command or a hook) as a Job in the
    /// app's namespace, with the release's image and configuration; see [`oneoff`].
    pub async fn run_once(
        &self,
        release: &Release,
        hook: Hook,
        argv: &[String],
        timeout: Duration,
        log: LogFn<'_>,
    ) -> Result<JobOutcome, Error> {
        let spec = Self::spec(release)?;
        let revision = Self::revision(release);
        let one = oneoff::OneOff {
            cluster: &self.cluster,
            spec: &spec,
            revision: &revision,
            attempt: release.attempt,
            hook,
            argv,
            timeout,
            log,
        };
        one.run().await
    }

    fn revision(release: &Release) -> Revision {
        Revision {
            deployment_id: release.deployment_id.to_string(),
            sha: release.sha.clone(),
            image: release.image.clone(),
        }
    }
}

impl DeployTarget for KubeTarget {
    async fn deploy(&self, release: &Release, log: LogFn<'_>) -> Result<Live, Error> {
        let spec = Self::spec(release)?;
        let revision = Self::revision(release);
        let rollout = strategy::Rollout {
            cluster: &self.cluster,
            spec: &spec,
            revision: &revision,
            timeout: self.rollout_timeout,
            log,
        };
        rollout.run().await
    }

    /// Deletes the preview's namespace, and with it everything in it. Only a preview's, and only
    /// one Slipway made for this app: another namespace is refused, never deleted.
    async fn teardown(&self, release: &Release, log: LogFn<'_>) -> Result<(), Error> {
        let spec = Self::spec(release)?;
        if slipway_proto::preview_number(&release.environment).is_none() {
            return Err(Error::Invalid(format!(
                "only a preview environment is torn down, not {}",
                release.environment
            )));
        }
        let ns = spec.namespace();
        let found = self.cluster.get("Namespace", "", &ns).await.map_err(|e| Error::Cluster(e.to_string()))?;
        let Some(found) = found else {
            log(format!("namespace {ns} is gone already"));
            return Ok(());
        };
        let labels = &found["metadata"]["labels"];
        if labels[manifest::LABEL_APP] != release.app.as_str() || labels["app.kubernetes.io/managed-by"] != "slipway" {
            return Err(Error::Invalid(format!("namespace {ns} is not this app's preview; not deleting it")));
        }
        self.cluster.delete("Namespace", "", &ns).await.map_err(|e| Error::Cluster(e.to_string()))?;
        log(format!("deleted namespace {ns} and everything in it"));
        Ok(())
    }
}
