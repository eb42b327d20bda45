//! Taking jobs off the queue. Each of the runner's `concurrency` slots has its own channel and
//! a prefetch-1 consumer that exists only while the slot is idle, so a busy runner never hoards
//! jobs. Each copy of a job taken gets a fresh claim; the message is acknowledged once the
//! scheduler granted the claim (or dropped when it refused it: a stale, duplicate or finished
//! copy), and nothing with side effects happens before the grant. From then on the scheduler's
//! lease, fed by heartbeats, guards the job — which is what lets a build outlive RabbitMQ's
//! 30-minute delivery acknowledgement timeout.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use slipway_broker as broker;
use slipway_proto::{Body, Control, Job, Topology};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::claim::{Claim, Claims};
use crate::failure::{JobError, StepError};
use crate::job::{self, Tools};
use crate::report::{Outbox, Reporter};

/// What every slot shares.
#[derive(Debug, Clone)]
pub struct Worker {
    pub tools: Tools,
    pub topo: Topology,
    pub runner_id: Arc<str>,
    pub outbox: Outbox,
    /// What the runner reports of itself: the jobs in hand.
    pub presence: Arc<crate::presence::Presence>,
    pub claims: Arc<Claims>,
    /// Stop taking new jobs.
    pub stop: CancellationToken,
    /// Stop running jobs too (after the drain period).
    pub abort: CancellationToken,
    /// Whether the control listener is bound: no job is taken before it is, or its grant could
    /// be published before anything listens for it.
    pub control_ready: watch::Receiver<bool>,
}

/// How long a slot waits for the scheduler to answer a claim before handing the message back.
const CLAIM_PATIENCE: Duration = Duration::from_secs(600);

impl Worker {
    /// One slot: take a job, run it, repeat until `stop`.
    pub async fn slot(self, index: u16) {
        let url = self.tools.config.amqp_url.clone();
        let session = |conn: Connection| {
            let worker = self.clone();
            async move { worker.serve(&conn, index).await }
        };
        broker::with_reconnect(&url, &self.stop, "job consumer", session).await;
    }

    async fn serve(&self, conn: &Connection, index: u16) -> anyhow::Result<()> {
        let channel = conn.create_channel().await?;
        broker::declare(&channel, &self.topo).await?;
        channel.basic_qos(1, BasicQosOptions::default()).await?;
        loop {
            let Some((job, claim, traceparent)) = self.take(&channel, index).await? else {
                return Ok(());
            };
            self.execute(job, claim, traceparent).await;
        }
    }

    /// Waits for one job whose claim the scheduler grants, and acknowledges it; `None` when stopping.
    /// With the job: the W3C trace context its message carried.
    async fn take(&self, channel: &Channel, index: u16) -> anyhow::Result<Option<(Job, Claim, Option<String>)>> {
        let tag = format!("{}-{index}", self.runner_id);
        let consume = || {
            let options = BasicConsumeOptions::default();
            channel.basic_consume(
                self.topo.jobs_queue.as_str().into(),
                tag.as_str().into(),
                options,
                FieldTable::default(),
            )
        };
        let mut ready = self.control_ready.clone();
        tokio::select! {
            _ = self.stop.cancelled() => return Ok(None),
            bound = ready.wait_for(|bound| *bound) => {
                bound.map_err(|_| anyhow::anyhow!("the control listener stopped"))?;
            }
        }
        let mut consumer = consume().await?;
        loop {
            let delivery = tokio::select! {
                _ = self.stop.cancelled() => {
                    channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await?;
                    return Ok(None);
                }
                d = consumer.next() => match d {
                    Some(d) => d?,
                    None => anyhow::bail!("the broker cancelled the job consumer"),
                },
            };
            // Idle no more: the consumer is stopped before anything is acknowledged, so nothing
            // else is sent here (prefetch 1 holds the next job back until then).
            let stop_consuming = || channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
            let job: Job = match serde_json::from_slice(&delivery.data) {
                Ok(job) => job,
                Err(err) => {
                    tracing::error!(error = %err, bytes = delivery.data.len(), "unreadable job message rejected");
                    stop_consuming().await?;
                    delivery.acker.reject(BasicRejectOptions { requeue: false }).await?;
                    consumer = consume().await?;
                    continue;
                }
            };
            // The claim goes out at once; the consumer is stopped while it travels (off the
            // dispatch path: a broker round trip saved).
            let claim = self.claim(&job);
            let confirming = async {
                tokio::select! {
                    answered = claim.confirm(CLAIM_PATIENCE) => answered,
                    _ = self.stop.cancelled() => Err(JobError::NotConfirmed),
                }
            };
            let (stopped, answered) = tokio::join!(stop_consuming(), confirming);
            stopped?;
            match answered {
                Ok(()) => {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    let traceparent = broker::traceparent(&delivery.properties);
                    return Ok(Some((job, claim, traceparent)));
                }
                Err(JobError::Cancelled) => {
                    let reason = self.claims.stop_reason(claim.id).unwrap_or_default();
                    tracing::info!(deployment_id = %job.deployment_id, attempt = job.attempt, reason = %reason, "claim refused; this copy of the job is dropped");
                    self.claims.remove(claim.id);
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    consumer = consume().await?;
                }
                Err(_) => {
                    // No answer: give the claim up (should the scheduler apply it later, it
                    // redispatches at once instead of waiting for a lease) and hand the job back.
                    claim.reporter.send(Body::Abandoned { reason: "no answer to the claim".into() });
                    self.claims.remove(claim.id);
                    delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
                    if self.stop.is_cancelled() {
                        return Ok(None);
                    }
                    anyhow::bail!("the scheduler did not answer the claim of {}; job handed back", job.deployment_id);
                }
            }
        }
    }

    /// Every value to mask in what this job's attempt sends: the app's secrets and the runner's own.
    fn secrets_of(&self, job: &Job) -> Vec<String> {
        let mut values = job.app.secret_values();
        values.extend(self.tools.config.own_secrets());
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        values
    }

    /// A fresh claim of `job`, registered before it is sent so no stop for it is missed.
    fn claim(&self, job: &Job) -> Claim {
        let id = Uuid::new_v4();
        let cancel = self.abort.child_token();
        self.claims.register(id, job.deployment_id, job.attempt, cancel.clone());
        let reporter = Reporter::new(self.outbox.clone(), job.deployment_id, job.attempt, self.runner_id.clone(), id)
            .with_secrets(self.secrets_of(job));
        Claim { id, reporter, cancel, claims: self.claims.clone() }
    }

    /// Runs a granted job with heartbeats until it ends, and reports how it ended.
    async fn execute(&self, job: Job, mut claim: Claim, traceparent: Option<String>) {
        let trace = Arc::new(job_trace(&job, &self.runner_id, traceparent.as_deref()));
        claim.reporter = claim.reporter.with_trace(trace.clone());
        let span = tracing::info_span!("job", deployment_id = %job.deployment_id, attempt = job.attempt, app = %job.app.name, sha = %job.sha);
        async {
            tracing::info!("job started");
            self.presence.started(job.deployment_id);
            // Heartbeats beside the job, in this task: they stop when it ends, nothing outlives it.
            let result = tokio::select! {
                result = job::run(&job, &self.tools, &claim) => result,
                never = heartbeat(&claim.reporter, self.tools.config.heartbeat()) => match never {},
            };
            let r = &claim.reporter;
            let body = match result {
                Ok(job::Done::Live { image, url }) => Body::Completed { image, url },
                Ok(job::Done::Skipped { reason }) => Body::Skipped { reason },
                Err(StepError { error: JobError::Cancelled, .. }) => {
                    let reason = match self.claims.stop_reason(claim.id) {
                        Some(reason) => format!("stopped on the scheduler's request: {reason}"),
                        None => "the runner is shutting down".to_string(),
                    };
                    Body::Abandoned { reason }
                }
                Err(StepError { step, error }) => {
                    count_error(&error);
                    Body::Failed {
                        step,
                        cause: error.cause(),
                        message: r.mask(&error.to_string()),
                        rolled_back: error.rolled_back(),
                    }
                }
            };
            tracing::info!(outcome = ?body, "job ended");
            use slipway_telemetry::trace::Outcome;
            let (outcome, traced) = match &body {
                Body::Completed { .. } => ("completed", Outcome::Success),
                Body::Skipped { .. } => ("skipped", Outcome::Success),
                Body::Failed { cause: slipway_proto::Cause::User, .. } => ("failed", Outcome::Failure),
                Body::Failed { .. } => ("failed", Outcome::Error),
                _ => ("abandoned", Outcome::Cancellation),
            };
            let message = match &body {
                Body::Failed { message, .. }
                | Body::Abandoned { reason: message }
                | Body::Skipped { reason: message } => Some(message.as_str()),
                _ => None,
            };
            trace.end(traced, message);
            metrics::counter!(slipway_telemetry::metrics::JOBS_FINISHED, "outcome" => outcome).increment(1);
            r.send_confirmed(body).await;
            self.claims.remove(claim.id);
            self.presence.ended(job.deployment_id);
        }
        .instrument(span)
        .await
    }
}

/// The job attempt's span, under the deployment's trace, with the CI/CD attributes.
fn job_trace(job: &Job, runner_id: &str, traceparent: Option<&str>) -> slipway_telemetry::trace::JobTrace {
    use opentelemetry::KeyValue;
    let attributes = vec![
        KeyValue::new("cicd.pipeline.name", job.app.name.clone()),
        KeyValue::new("cicd.pipeline.run.id", job.deployment_id.to_string()),
        KeyValue::new("cicd.pipeline.task.run.id", format!("{}:{}", job.deployment_id, job.attempt)),
        KeyValue::new("cicd.worker.id", runner_id.to_string()),
        KeyValue::new("vcs.ref.head.revision", job.sha.clone()),
        KeyValue::new("vcs.ref.head.name", job.git_ref.clone()),
        KeyValue::new("slipway.attempt", i64::from(job.attempt)),
    ];
    slipway_telemetry::trace::JobTrace::start(traceparent, format!("job {}", job.app.name), attributes)
}

/// Counts a failure of the Docker engine or the registry on the runner's error counters.
fn count_error(error: &JobError) {
    use crate::image::ImageError;
    use slipway_telemetry::metrics::{DOCKER_ERRORS, REGISTRY_ERRORS};
    match error {
        JobError::Image(ImageError::PushFailed(_)) | JobError::PushTimedOut(_) => {
            metrics::counter!(REGISTRY_ERRORS, "operation" => "push").increment(1)
        }
        JobError::Image(ImageError::PullFailed(_)) => {
            metrics::counter!(REGISTRY_ERRORS, "operation" => "pull").increment(1)
        }
        JobError::Image(ImageError::Engine { action, .. }) => {
            metrics::counter!(DOCKER_ERRORS, "operation" => *action).increment(1)
        }
        JobError::TestRun(_) => metrics::counter!(DOCKER_ERRORS, "operation" => "test").increment(1),
        _ => {}
    }
}

/// Sends a heartbeat every `every`, forever (the caller drops it when the job ends).
async fn heartbeat(reporter: &Reporter, every: Duration) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(every).await;
        reporter.heartbeat();
    }
}

/// Listens on the control exchange: grants wake waiting claims, stops cancel jobs.
/// `ready` is true while the listener's queue is bound.
pub async fn control(
    url: String,
    topo: Topology,
    runner_id: Arc<str>,
    claims: Arc<Claims>,
    app_logs: Arc<crate::applogs::AppLogs>,
    ready: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let session = |conn: Connection| {
        let (topo, runner_id, claims, cancel) = (topo.clone(), runner_id.clone(), claims.clone(), cancel.clone());
        let (ready, app_logs) = (ready.clone(), app_logs.clone());
        async move {
            let listened = listen(&conn, &topo, &runner_id, &claims, &app_logs, &ready, &cancel).await;
            ready.send_replace(false);
            listened
        }
    };
    broker::with_reconnect(&url, &cancel, "control listener", session).await;
}

async fn listen(
    conn: &Connection,
    topo: &Topology,
    runner_id: &str,
    claims: &Claims,
    app_logs: &Arc<crate::applogs::AppLogs>,
    ready: &watch::Sender<bool>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let channel = conn.create_channel().await?;
    broker::declare(&channel, topo).await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            topo.control_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    ready.send_replace(true);
    loop {
        let delivery = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            d = consumer.next() => match d {
                Some(d) => d?,
                None => anyhow::bail!("control consumer cancelled"),
            },
        };
        let control = match serde_json::from_slice::<Control>(&delivery.data) {
            Ok(control) => control,
            Err(err) => {
                tracing::warn!(error = %err, "unreadable control message ignored");
                continue;
            }
        };
        match control {
            Control::Grant { runner_id: target, claim, .. } if target == runner_id => claims.grant(claim),
            Control::Grant { .. } => {}
            Control::Cancel { runner_id: Some(target), .. } if target != runner_id => {}
            Control::Cancel { deployment_id, attempt, claim, reason, .. } => {
                if claims.stop(deployment_id, attempt, claim, &reason) > 0 {
                    tracing::warn!(deployment_id = %deployment_id, attempt, reason = %reason, "scheduler asked to stop the job");
                }
            }
            Control::AppLogs(request) => app_logs.request(request),
            Control::AppLogsStop { request_id, keep_runner } => app_logs.stop(request_id, keep_runner.as_deref()),
        }
    }
}
