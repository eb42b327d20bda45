//! Talking to the API server: server-side apply of generated objects under one field manager,
//! reads, lists by label, merge patches (scaling), deletes and pruning — all through typed
//! `ApiResource`s of the kinds Slipway generates, so no discovery round-trip is needed.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, LimitRange, Namespace, Pod, ResourceQuota, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use serde_json::Value;

use super::manifest::LABEL_APP;

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "slipway";

/// Kinds that are pruned when an app stops declaring them (never the Namespace).
pub const PRUNABLE: &[&str] = &[
    "Deployment",
    "Service",
    "ConfigMap",
    "Secret",
    "Ingress",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
];

/// A failed call to the API server.
#[derive(Debug, thiserror::Error)]
#[error("{action} {kind}/{name} failed: {source}")]
pub struct ClusterError {
    pub action: &'static str,
    pub kind: String,
    pub name: String,
    #[source]
    pub source: kube::Error,
}

/// A cluster reached through a kube client.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

fn resource(kind: &str) -> Option<ApiResource> {
    Some(match kind {
        "Namespace" => ApiResource::erase::<Namespace>(&()),
        "ResourceQuota" => ApiResource::erase::<ResourceQuota>(&()),
        "LimitRange" => ApiResource::erase::<LimitRange>(&()),
        "ConfigMap" => ApiResource::erase::<ConfigMap>(&()),
        "Secret" => ApiResource::erase::<Secret>(&()),
        "Deployment" => ApiResource::erase::<Deployment>(&()),
        "Service" => ApiResource::erase::<Service>(&()),
        "Ingress" => ApiResource::erase::<Ingress>(&()),
        "HorizontalPodAutoscaler" => ApiResource::erase::<HorizontalPodAutoscaler>(&()),
        "NetworkPolicy" => ApiResource::erase::<NetworkPolicy>(&()),
        "Pod" => ApiResource::erase::<Pod>(&()),
        "Job" => ApiResource::erase::<Job>(&()),
        _ => return None,
    })
}

impl Cluster {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// The kube client, for typed reads.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    fn api(&self, kind: &str, namespace: &str) -> Api<DynamicObject> {
        let ar = resource(kind).unwrap_or_else(|| ApiResource::erase::<ConfigMap>(&()));
        if kind == "Namespace" {
            Api::all_with(self.client.clone(), &ar)
        } else {
            Api::namespaced_with(self.client.clone(), namespace, &ar)
        }
    }

    /// Server-side applies `object` (forcing conflicts: Slipway owns what it declares) and
    /// returns what the server stored.
    pub async fn apply(&self, object: &Value) -> Result<Value, ClusterError> {
        let (kind, namespace, name) = identity(object);
        let api = self.api(&kind, &namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let stored = api.patch(&name, &params, &Patch::Apply(object)).await;
        let stored = stored.map_err(|source| ClusterError {
            action: "applying",
            kind: kind.clone(),
            name: name.clone(),
            source,
        })?;
        Ok(serde_json::to_value(stored).unwrap_or(Value::Null))
    }

    /// Applies a JSON merge patch (used to scale without taking over the whole object).
    pub async fn merge(&self, kind: &str, namespace: &str, name: &str, patch: &Value) -> Result<(), ClusterError> {
        let api = self.api(kind, namespace);
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(|_| ())
            .map_err(|source| ClusterError { action: "patching", kind: kind.into(), name: name.into(), source })
    }

    /// The object, if it exists.
    pub async fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Option<Value>, ClusterError> {
        let found = self.api(kind, namespace).get_opt(name).await;
        let found =
            found.map_err(|source| ClusterError { action: "reading", kind: kind.into(), name: name.into(), source })?;
        Ok(found.map(|o| serde_json::to_value(o).unwrap_or(Value::Null)))
    }

    /// Deletes the object; a missing object is not an error.
    pub async fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<(), ClusterError> {
        match self.api(kind, namespace).delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(source) => Err(ClusterError { action: "deleting", kind: kind.into(), name: name.into(), source }),
        }
    }

    /// Objects of `kind` in `namespace` matching `selector`.
    pub async fn list(&self, kind: &str, namespace: &str, selector: &str) -> Result<Vec<Value>, ClusterError> {
        let listed = self.api(kind, namespace).list(&ListParams::default().labels(selector)).await;
        let listed = listed.map_err(|source| ClusterError {
            action: "listing",
            kind: kind.into(),
            name: selector.into(),
            source,
        })?;
        Ok(listed.items.into_iter().filter_map(|o| serde_json::to_value(o).ok()).collect())
    }

    /// Deletes every object of the app that `keep` does not name; returns what was deleted.
    pub async fn prune(
        &self,
        namespace: &str,
        app: &str,
        keep: &BTreeSet<(String, String)>,
    ) -> Result<Vec<String>, ClusterError> {
        let mut deleted = Vec::new();
        for kind in PRUNABLE {
            for object in self.list(kind, namespace, &format!("{LABEL_APP}={app}")).await? {
                let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
                if !keep.contains(&(kind.to_string(), name.clone())) {
                    self.delete(kind, namespace, &name).await?;
                    deleted.push(format!("{kind}/{name}"));
                }
            }
        }
        Ok(deleted)
    }
}

/// (kind, namespace, name) of an object.
pub fn identity(object: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (s(&object["kind"]), s(&object["metadata"]["namespace"]), s(&object["metadata"]["name"]))
}

/// An object as read from the server, reduced to what can be applied again: no status, no
/// server-set metadata.
pub fn reapplicable(mut object: Value) -> Value {
    if let Some(o) = object.as_object_mut() {
        o.remove("status");
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in ["resourceVersion", "uid", "creationTimestamp", "generation", "managedFields", "selfLink"] {
            meta.remove(key);
        }
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove("deployment.kubernetes.io/revision");
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    object
}
