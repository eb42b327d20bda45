//! Rollout status with the meaning of `kubectl rollout status`: the controller has observed the
//! applied generation, and updated and available replicas equal the desired count with no old
//! pods left. `ProgressDeadlineExceeded`, a timeout, or new pods in CrashLoopBackOff or an image
//! pull error are failures, and the failure says which pods, in which state, and the latest events.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, WatchParams};

use crate::LogFn;

/// Container states that will not fix themselves.
const FATAL_WAITING: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Why a rollout did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RolloutFailure(pub String);

/// What to wait for.
#[derive(Debug, Clone)]
pub struct Watch<'a> {
    pub namespace: &'a str,
    pub deployment: &'a str,
    /// The generation the apply produced; older observations do not count.
    pub generation: i64,
    /// Label selector of the new revision's pods.
    pub pods: String,
    pub timeout: Duration,
}

/// Waits until the rollout completes or fails: re-evaluated on every change the API server
/// reports through a watch of the Deployment, and at least every second (for the pods).
pub async fn wait(client: &kube::Client, watch: &Watch<'_>, log: LogFn<'_>) -> Result<(), RolloutFailure> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), watch.namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), watch.namespace);
    let start = Instant::now();
    let mut last_line = String::new();
    let mut changes = None;
    loop {
        let d = deployments
            .get_opt(watch.deployment)
            .await
            .map_err(|e| RolloutFailure(format!("reading deployment {}: {e}", watch.deployment)))?
            .ok_or_else(|| RolloutFailure(format!("deployment {} disappeared", watch.deployment)))?;
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = d.status.clone().unwrap_or_default();
        let observed = status.observed_generation.unwrap_or(0) >= watch.generation;
        let updated = status.updated_replicas.unwrap_or(0);
        let available = status.available_replicas.unwrap_or(0);
        let total = status.replicas.unwrap_or(0);
        if observed {
            let deadline = status.conditions.iter().flatten().any(|c| {
                c.type_ == "Progressing"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            });
            if deadline {
                return Err(diagnose(
                    client,
                    watch,
                    "ProgressDeadlineExceeded: the deployment made no progress within its deadline",
                )
                .await);
            }
            if updated == desired && available == desired && total == desired {
                log(format!("rollout of {} complete: {available}/{desired} available", watch.deployment));
                return Ok(());
            }
        }
        let listed = pods.list(&ListParams::default().labels(&watch.pods)).await;
        if let Ok(listed) = listed {
            for pod in &listed.items {
                if let Some(reason) = fatal_state(pod) {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    return Err(diagnose(client, watch, &format!("pod {name} is in {reason}")).await);
                }
            }
        }
        if start.elapsed() >= watch.timeout {
            let summary = format!("timed out after {:?} with {available}/{desired} available", watch.timeout);
            return Err(diagnose(client, watch, &summary).await);
        }
        let line = format!("waiting for {}: {updated} updated, {available}/{desired} available", watch.deployment);
        if line != last_line {
            log(line.clone());
            last_line = line;
        }
        if changes.is_none() {
            let params = WatchParams::default().fields(&format!("metadata.name={}", watch.deployment)).timeout(290);
            changes = deployments.watch(&params, "0").await.ok().map(|s| s.boxed());
        }
        match changes.as_mut() {
            Some(stream) => {
                let ended = tokio::select! {
                    event = stream.next() => !matches!(event, Some(Ok(_))),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => false,
                };
                if ended {
                    changes = None; // the server closed the watch; open a new one next time
                }
            }
            None => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn fatal_state(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find_map(|s| {
        let waiting = s.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.clone()?;
        FATAL_WAITING.contains(&reason.as_str()).then(|| match &waiting.message {
            Some(m) => format!("{reason} ({}: {m})", s.name),
            None => format!("{reason} ({})", s.name),
        })
    })
}

/// The failure, with every new pod's state and the namespace's latest events about them.
async fn diagnose(client: &kube::Client, watch: &Watch<'_>, summary: &str) -> RolloutFailure {
    let pods: Api<Pod> = Api::namespaced(client.clone(), watch.namespace);
    let mut parts = vec![summary.to_string()];
    let mut names = Vec::new();
    if let Ok(listed) = pods.list(&ListParams::default().labels(&watch.pods)).await {
        for pod in listed.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let state = fatal_state(&pod).unwrap_or_else(|| {
                let ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if ready { "ready".into() } else { "not ready".into() }
            });
            parts.push(format!("pod {name}: {state}"));
            names.push(name);
        }
    }
    let events: Api<Event> = Api::namespaced(client.clone(), watch.namespace);
    if let Ok(listed) = events.list(&ListParams::default()).await {
        let mut relevant: Vec<Event> = listed
            .items
            .into_iter()
            .filter(|e| {
                e.involved_object
                    .name
                    .as_deref()
                    .is_some_and(|n| names.iter().any(|p| p == n) || n.starts_with(watch.deployment))
            })
            .collect();
        relevant.sort_by_key(|e| e.last_timestamp.clone().map(|t| t.0));
        for e in relevant.iter().rev().take(5).rev() {
            let object = e.involved_object.name.clone().unwrap_or_default();
            parts.push(format!(
                "event {object}: {} {}",
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default()
            ));
        }
    }
    RolloutFailure(parts.join("; "))
}
