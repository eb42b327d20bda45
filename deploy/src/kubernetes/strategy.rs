//! How a revision replaces the serving one — rolling, recreate, blue-green, canary — and the
//! automatic rollback when it does not become healthy: the previous revision (image and config
//! together, read back from the cluster) is applied again and waited for.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::cluster::{Cluster, ClusterError, identity, reapplicable};
use super::manifest::{Manifests, Revision, deployment_name, render};
use super::rollout::{self, RolloutFailure, Watch};
use super::spec::{KubeSpec, StrategyKind};
use crate::{Error, Live, LogFn};

/// What a strategy needs.
pub struct Rollout<'a> {
    pub cluster: &'a Cluster,
    pub spec: &'a KubeSpec,
    pub revision: &'a Revision,
    pub timeout: Duration,
    pub log: LogFn<'a>,
}

impl From<ClusterError> for Error {
    fn from(err: ClusterError) -> Self {
        Error::Cluster(err.to_string())
    }
}

/// The serving revision's Deployment and config, as read before a change.
struct Snapshot {
    objects: Vec<Value>,
    image: Option<String>,
}

impl Rollout<'_> {
    /// Runs the app's strategy.
    pub async fn run(&self) -> Result<Live, Error> {
        match self.spec.strategy {
            StrategyKind::Rolling | StrategyKind::Recreate => self.replace().await,
            StrategyKind::BlueGreen => self.blue_green().await,
            StrategyKind::Canary => self.canary().await,
        }
    }

    fn ns(&self) -> String {
        self.spec.namespace()
    }

    fn live(&self) -> Live {
        Live { url: self.spec.host.as_ref().map(|h| format!("https://{h}")) }
    }

    async fn snapshot(&self, track: Option<&str>) -> Result<Snapshot, Error> {
        let ns = self.ns();
        let name = deployment_name(self.spec, track);
        let mut objects = Vec::new();
        let deployment = self.cluster.get("Deployment", &ns, &name).await?;
        let image = deployment
            .as_ref()
            .and_then(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].as_str().map(str::to_string));
        for (kind, object) in [
            ("ConfigMap", self.cluster.get("ConfigMap", &ns, &format!("{}-config", self.spec.name)).await?),
            ("Secret", self.cluster.get("Secret", &ns, &format!("{}-secrets", self.spec.name)).await?),
            ("Deployment", deployment),
        ] {
            if let Some(mut o) = object {
                o["kind"] = json!(kind);
                objects.push(reapplicable(o));
            }
        }
        Ok(Snapshot { objects, image })
    }

    /// Applies objects in order; the first failure stops and is returned.
    async fn apply_all(&self, objects: &[Value]) -> Result<Option<i64>, ClusterError> {
        let mut generation = None;
        for object in objects {
            let stored = self.cluster.apply(object).await?;
            if object["kind"] == "Deployment" {
                generation = stored["metadata"]["generation"].as_i64();
            }
        }
        Ok(generation)
    }

    async fn watch(&self, deployment: &str, generation: i64, pods: String) -> Result<(), RolloutFailure> {
        let ns = self.ns();
        let watch = Watch { namespace: &ns, deployment, generation, pods, timeout: self.timeout };
        rollout::wait(&self.cluster.client(), &watch, self.log).await
    }

    fn new_pods(&self) -> String {
        format!("slipway.dev/deployment={}", self.revision.deployment_id)
    }

    /// Rolling and recreate: apply everything, watch, prune; on failure put the previous back.
    async fn replace(&self) -> Result<Live, Error> {
        let previous = self.snapshot(None).await?;
        let manifests = render(self.spec, self.revision, None).map_err(|e| Error::Invalid(e.to_string()))?;
        let objects = manifests.objects();
        let name = deployment_name(self.spec, None);
        let generation = match self.apply_all(&objects).await {
            Ok(g) => g.unwrap_or(1),
            Err(err) => return Err(self.restore(&previous, &format!("apply failed: {err}")).await),
        };
        (self.log)(format!("applied {} objects; watching the rollout of {name}", objects.len()));
        match self.watch(&name, generation, self.new_pods()).await {
            Ok(()) => {
                self.prune(&manifests, &[]).await?;
                Ok(self.live())
            }
            Err(failure) => Err(self.restore(&previous, &failure.0).await),
        }
    }

    /// Puts `previous` back and waits for it; the error says why and what serves now.
    async fn restore(&self, previous: &Snapshot, reason: &str) -> Error {
        (self.log)(format!("rollout failed: {reason}"));
        let Some(image) = previous.image.clone() else {
            (self.log)("no previous revision to roll back to".into());
            return Error::Rollout(reason.to_string());
        };
        (self.log)(format!("rolling back to {image}"));
        let generation = match self.apply_all(&previous.objects).await {
            Ok(g) => g.unwrap_or(1),
            Err(err) => return Error::Cluster(format!("{reason}; rolling back failed too: {err}")),
        };
        let previous_pods = previous
            .objects
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .and_then(|d| d["spec"]["template"]["metadata"]["labels"]["slipway.dev/deployment"].as_str())
            .map(|id| format!("slipway.dev/deployment={id}"))
            .unwrap_or_else(|| self.new_pods());
        let name = deployment_name(self.spec, None);
        match self.watch(&name, generation, previous_pods).await {
            Ok(()) => Error::RolledBack { reason: reason.to_string(), to: image },
            Err(again) => {
                Error::Cluster(format!("{reason}; the previous revision did not come back either: {}", again.0))
            }
        }
    }

    async fn prune(&self, manifests: &Manifests, also_keep: &[String]) -> Result<(), Error> {
        let mut keep: BTreeSet<(String, String)> = manifests
            .objects()
            .iter()
            .map(|o| {
                let (kind, _, name) = identity(o);
                (kind, name)
            })
            .collect();
        keep.extend(also_keep.iter().map(|d| ("Deployment".to_string(), d.clone())));
        for gone in self.cluster.prune(&self.ns(), &self.spec.name, &keep).await? {
            (self.log)(format!("pruned {gone}, which the app no longer declares"));
        }
        Ok(())
    }

    /// Blue-green: the new track comes up beside the serving one; the Service switches only once
    /// it is ready; the old track is kept for the bake time, then scaled to zero.
    async fn blue_green(&self) -> Result<Live, Error> {
        let ns = self.ns();
        let service = self.cluster.get("Service", &ns, &self.spec.name).await?;
        let active =
            service.as_ref().and_then(|s| s["spec"]["selector"]["slipway.dev/track"].as_str().map(str::to_string));
        let new_track = if active.as_deref() == Some("blue") { "green" } else { "blue" };
        let old_track = if new_track == "blue" { "green" } else { "blue" };
        let config = self.snapshot(Some(new_track)).await?;
        let manifests = render(self.spec, self.revision, Some(new_track)).map_err(|e| Error::Invalid(e.to_string()))?;
        let (services, rest): (Vec<Value>, Vec<Value>) =
            manifests.objects().into_iter().partition(|o| o["kind"] == "Service");
        let name = deployment_name(self.spec, Some(new_track));
        (self.log)(format!("blue-green: bringing up {name} beside {}", active.as_deref().unwrap_or("nothing")));
        let generation = match self.apply_all(&rest).await {
            Ok(g) => g.unwrap_or(1),
            Err(err) => {
                return Err(self
                    .abandon_track(&config, &name, &format!("apply failed: {err}"), active.as_deref())
                    .await);
            }
        };
        if let Err(failure) = self.watch(&name, generation, self.new_pods()).await {
            return Err(self.abandon_track(&config, &name, &failure.0, active.as_deref()).await);
        }
        self.apply_all(&services).await?;
        (self.log)(format!("service {} now selects track {new_track}", self.spec.name));
        let old = deployment_name(self.spec, Some(old_track));
        if active.is_some() {
            (self.log)(format!("keeping {old} for {}s before scaling it down", self.spec.bake_seconds));
            tokio::time::sleep(Duration::from_secs(self.spec.bake_seconds)).await;
            self.cluster.merge("Deployment", &ns, &old, &json!({"spec": {"replicas": 0}})).await?;
            (self.log)(format!("scaled {old} to 0"));
        }
        self.prune(&manifests, &[old]).await?;
        Ok(self.live())
    }

    /// A new track that never became ready: scale it away and restore the config; the Service
    /// never left the serving track.
    async fn abandon_track(&self, config: &Snapshot, deployment: &str, reason: &str, active: Option<&str>) -> Error {
        (self.log)(format!("rollout failed: {reason}"));
        let _ = self.cluster.merge("Deployment", &self.ns(), deployment, &json!({"spec": {"replicas": 0}})).await;
        let restored: Vec<Value> = config.objects.iter().filter(|o| o["kind"] != "Deployment").cloned().collect();
        let _ = self.apply_all(&restored).await;
        match active {
            Some(track) => Error::RolledBack {
                reason: reason.to_string(),
                to: format!("track {track} (the service never switched)"),
            },
            None => Error::Rollout(reason.to_string()),
        }
    }

    /// Canary: the new revision takes a growing share of replicas, baking at each step; failed
    /// readiness or restarts abort and restore the stable track; at 100% the stable Deployment
    /// is updated and the canary removed.
    async fn canary(&self) -> Result<Live, Error> {
        let ns = self.ns();
        let stable = deployment_name(self.spec, None);
        if self.cluster.get("Deployment", &ns, &stable).await?.is_none() {
            (self.log)("canary: nothing serves yet; deploying directly".into());
            return self.replace().await;
        }
        let total = self.spec.replicas.max(1);
        let canary_name = deployment_name(self.spec, Some("canary"));
        let manifests = render(self.spec, self.revision, Some("canary")).map_err(|e| Error::Invalid(e.to_string()))?;
        for &percent in self.spec.canary_steps.iter().filter(|p| **p < 100) {
            let canary = ((total as u32 * percent).div_ceil(100)).max(1) as i32;
            let stable_replicas = (total - canary).max(1);
            (self.log)(format!("canary: {percent}% ({canary} canary, {stable_replicas} stable)"));
            let mut deployment = serde_json::to_value(&manifests.deployment).unwrap_or(Value::Null);
            deployment["spec"]["replicas"] = json!(canary);
            let applied = self.cluster.apply(&deployment).await;
            let generation = match applied {
                Ok(stored) => stored["metadata"]["generation"].as_i64().unwrap_or(1),
                Err(err) => return Err(self.abort_canary(&canary_name, total, &format!("apply failed: {err}")).await),
            };
            self.cluster.merge("Deployment", &ns, &stable, &json!({"spec": {"replicas": stable_replicas}})).await?;
            if let Err(failure) = self.watch(&canary_name, generation, self.new_pods()).await {
                return Err(self.abort_canary(&canary_name, total, &failure.0).await);
            }
            if let Err(reason) = self.bake(&canary_name).await {
                return Err(self.abort_canary(&canary_name, total, &reason).await);
            }
        }
        (self.log)("canary: promoting to 100%".into());
        let result = self.replace().await;
        self.cluster.delete("Deployment", &ns, &canary_name).await?;
        if result.is_err() {
            let _ = self.cluster.merge("Deployment", &ns, &stable, &json!({"spec": {"replicas": total}})).await;
        }
        result
    }

    /// Watches the canary's pods for the bake time: any restart or lost readiness fails it.
    async fn bake(&self, canary: &str) -> Result<(), String> {
        let until = std::time::Instant::now() + Duration::from_secs(self.spec.bake_seconds);
        loop {
            let pods = self.cluster.list("Pod", &self.ns(), &self.new_pods()).await.unwrap_or_default();
            for pod in &pods {
                let name = pod["metadata"]["name"].as_str().unwrap_or_default();
                for status in pod["status"]["containerStatuses"].as_array().into_iter().flatten() {
                    if status["restartCount"].as_i64().unwrap_or(0) > 0 {
                        return Err(format!(
                            "canary pod {name} restarted {} times during the bake",
                            status["restartCount"]
                        ));
                    }
                    if status["ready"] == json!(false) {
                        return Err(format!("canary pod {name} lost readiness during the bake"));
                    }
                }
            }
            if std::time::Instant::now() >= until {
                (self.log)(format!("{canary} baked for {}s", self.spec.bake_seconds));
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn abort_canary(&self, canary: &str, total: i32, reason: &str) -> Error {
        (self.log)(format!("canary aborted: {reason}"));
        let ns = self.ns();
        let _ = self.cluster.delete("Deployment", &ns, canary).await;
        let stable = deployment_name(self.spec, None);
        let _ = self.cluster.merge("Deployment", &ns, &stable, &json!({"spec": {"replicas": total}})).await;
        Error::RolledBack { reason: reason.to_string(), to: format!("the stable track ({stable}, {total} replicas)") }
    }
}
