//! One-off commands of a release on Kubernetes — the release command (migrations) and the
//! `pre_deploy`/`post_deploy` hooks — as a Job in the app's namespace, before the Deployment is
//! applied (or after, for `post_deploy`). The pod's output streams into the deployment's log as
//! it is written; the outcome is the Job's condition and the container's exit code.

use std::time::Duration;

use futures_util::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};
use serde_json::Value;

use super::cluster::Cluster;
use super::manifest::{Hook, OneOffJob, Revision, one_off_job, render};
use super::spec::KubeSpec;
use crate::{Error, LogFn};

/// How a one-off Job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Succeeded,
    /// The container exited non-zero (its code when the pod reported one).
    Failed {
        exit_code: Option<i32>,
        reason: String,
    },
    /// The Job's deadline (or ours, a minute later) passed first.
    TimedOut,
}

/// How often the Job's status is read while it runs.
const POLL: Duration = Duration::from_millis(250);
/// How long the log stream may lag behind the Job's end before it is cut.
const LOG_GRACE: Duration = Duration::from_secs(5);

/// What a one-off run needs.
pub struct OneOff<'a> {
    pub cluster: &'a Cluster,
    pub spec: &'a KubeSpec,
    pub revision: &'a Revision,
    pub attempt: u32,
    pub hook: Hook,
    pub argv: &'a [String],
    pub timeout: Duration,
    pub log: LogFn<'a>,
}

impl OneOff<'_> {
    /// Applies the app's namespace (with its quota and limits), then the Job and its Secret, and
    /// waits for the Job to end while its pod's output is logged. A Job of the same name left by
    /// an earlier run of this attempt is replaced. The Job's Secret is deleted when it ends.
    pub async fn run(&self) -> Result<JobOutcome, Error> {
        let deadline = i64::try_from(self.timeout.as_secs()).unwrap_or(i64::MAX).max(1);
        let job = one_off_job(self.spec, self.revision, self.attempt, self.hook, self.argv, deadline)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let manifests = render(self.spec, self.revision, None).map_err(|e| Error::Invalid(e.to_string()))?;
        let ns = self.spec.namespace();
        for object in manifests.objects().into_iter().take(3) {
            self.cluster.apply(&object).await?; // Namespace, ResourceQuota, LimitRange
        }
        let name = job.name();
        if self.cluster.get("Job", &ns, &name).await?.is_some() {
            (self.log)(format!("replacing Job {name} left by an earlier run"));
            self.cluster.delete("Job", &ns, &name).await?;
        }
        let outcome = self.started(&job, &ns, &name).await;
        if job.secret.is_some()
            && let Err(err) = self.cluster.delete("Secret", &ns, &name).await
        {
            (self.log)(format!("could not delete the Job's Secret {name}: {err}"));
        }
        outcome
    }

    async fn started(&self, job: &OneOffJob, ns: &str, name: &str) -> Result<JobOutcome, Error> {
        for object in job.objects() {
            self.cluster.apply(&object).await?;
        }
        (self.log)(format!("Job {ns}/{name} created"));
        let pods: Api<Pod> = Api::namespaced(self.cluster.client(), ns);
        let selector = format!("job-name={name}");
        let until = tokio::time::Instant::now() + self.timeout + Duration::from_secs(60);
        let mut following: Option<tokio::task::JoinHandle<()>> = None;
        let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let ended = loop {
            while let Ok(line) = lines_rx.try_recv() {
                (self.log)(line);
            }
            let status = self.cluster.get("Job", ns, name).await?.map(|j| j["status"].clone()).unwrap_or(Value::Null);
            if following.is_none()
                && let Some(pod) = started_pod(&pods, &selector).await
            {
                following = Some(tokio::spawn(follow(pods.clone(), pod, lines_tx.clone())));
            }
            if let Some(end) = condition(&status) {
                break Some(end);
            }
            if tokio::time::Instant::now() >= until {
                break None;
            }
            tokio::time::sleep(POLL).await;
        };
        drop(lines_tx);
        if let Some(task) = following {
            // The stream ends with the container; a log that does not is cut after the grace.
            let abort = task.abort_handle();
            if tokio::time::timeout(LOG_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
        while let Some(line) = lines_rx.recv().await {
            (self.log)(line);
        }
        Ok(match ended {
            Some(JobEnd::Complete) => JobOutcome::Succeeded,
            Some(JobEnd::Deadline) | None => JobOutcome::TimedOut,
            Some(JobEnd::Failed(reason)) => JobOutcome::Failed { exit_code: exit_code(&pods, &selector).await, reason },
        })
    }
}

enum JobEnd {
    Complete,
    Deadline,
    Failed(String),
}

/// The Job's terminal condition, if it has one.
fn condition(status: &Value) -> Option<JobEnd> {
    let conditions = status["conditions"].as_array()?;
    let reached = |kind: &str| conditions.iter().find(|c| c["type"] == kind && c["status"] == "True");
    if reached("Complete").is_some() {
        return Some(JobEnd::Complete);
    }
    let failed = reached("Failed")?;
    if failed["reason"] == "DeadlineExceeded" {
        return Some(JobEnd::Deadline);
    }
    let reason = failed["reason"].as_str().unwrap_or("Failed");
    let message = failed["message"].as_str().unwrap_or_default();
    Some(JobEnd::Failed(if message.is_empty() { reason.to_string() } else { format!("{reason}: {message}") }))
}

/// The Job's pod once its container has started (running or ended), so its log can be read.
async fn started_pod(pods: &Api<Pod>, selector: &str) -> Option<String> {
    let listed = pods.list(&ListParams::default().labels(selector)).await.ok()?;
    listed.items.into_iter().find_map(|pod| {
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        (phase != "Pending" && !phase.is_empty()).then(|| pod.metadata.name.unwrap_or_default())
    })
}

/// Sends the pod's log lines as they are written, until the container's stream ends.
async fn follow(pods: Api<Pod>, pod: String, lines: tokio::sync::mpsc::UnboundedSender<String>) {
    let params = LogParams { follow: true, container: Some("run".into()), ..Default::default() };
    match pods.log_stream(&pod, &params).await {
        Ok(stream) => {
            let mut read = std::pin::pin!(stream.lines());
            while let Some(Ok(line)) = read.next().await {
                if lines.send(line).is_err() {
                    return;
                }
            }
        }
        Err(err) => {
            let _ = lines.send(format!("could not read the log of pod {pod}: {err}"));
        }
    }
}

/// The exit code of the Job's container, from its pod's status.
async fn exit_code(pods: &Api<Pod>, selector: &str) -> Option<i32> {
    let listed = pods.list(&ListParams::default().labels(selector)).await.ok()?;
    let status = serde_json::to_value(listed.items.first()?.status.as_ref()?).ok()?;
    let code = status["containerStatuses"][0]["state"]["terminated"]["exitCode"].as_i64()?;
    i32::try_from(code).ok()
}
