//! Taking jobs off the queue. Each of the runner's `concurrency` slots has its own channel and
//! a prefetch-1 consumer that exists only while the slot is idle, so a busy runner never hoards
//! jobs. A job is claimed (the claim confirmed by the broker) before its message is
//! acknowledged; from then on the scheduler's lease, fed by heartbeats, guards it — which is
//! what lets a build outlive RabbitMQ's 30-minute delivery acknowledgement timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::job::{self, Tools};
use crate::report::{Outbox, Reporter};

/// Jobs running on this runner, by (deployment, attempt), with the token that stops each.
pub type Running = Arc<Mutex<HashMap<(Uuid, u32), CancellationToken>>>;

/// What every slot shares.
#[derive(Debug, Clone)]
pub struct Worker {
    pub tools: Tools,
    pub topo: Topology,
    pub runner_id: Arc<str>,
    pub outbox: Outbox,
    pub running: Running,
    /// Stop taking new jobs.
    pub stop: CancellationToken,
    /// Stop running jobs too (after the drain period).
    pub abort: CancellationToken,
}

const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);

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
            let Some((job, reporter)) = self.take(&channel, index).await? else {
                return Ok(());
            };
            self.execute(job, reporter).await;
        }
    }

    /// Waits for one job, claims it and acknowledges it; `None` when stopping.
    async fn take(&self, channel: &Channel, index: u16) -> anyhow::Result<Option<(Job, Reporter)>> {
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
            // Idle no more: stop the consumer before acknowledging, so nothing else is sent here.
            channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await?;
            let job: Job = match serde_json::from_slice(&delivery.data) {
                Ok(job) => job,
                Err(err) => {
                    tracing::error!(error = %err, bytes = delivery.data.len(), "unreadable job message rejected");
                    delivery.acker.reject(BasicRejectOptions { requeue: false }).await?;
                    consumer = consume().await?;
                    continue;
                }
            };
            let reporter = Reporter::new(self.outbox.clone(), job.deployment_id, job.attempt, self.runner_id.clone())
                .with_secrets(job.app.secret_values());
            let claimed = tokio::time::timeout(CLAIM_TIMEOUT, reporter.send_confirmed(Body::Claimed)).await;
            if !matches!(claimed, Ok(true)) {
                delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
                anyhow::bail!("could not report the claim of {}; job handed back", job.deployment_id);
            }
            delivery.acker.ack(BasicAckOptions::default()).await?;
            return Ok(Some((job, reporter)));
        }
    }

    /// Runs a claimed job with heartbeats until it ends, and reports how it ended.
    async fn execute(&self, job: Job, reporter: Reporter) {
        let span = tracing::info_span!("job", deployment_id = %job.deployment_id, attempt = job.attempt, app = %job.app.name, sha = %job.sha);
        let _enter = span.enter();
        tracing::info!("job started");
        let cancel = self.abort.child_token();
        let key = (job.deployment_id, job.attempt);
        self.running.lock().unwrap_or_else(|e| e.into_inner()).insert(key, cancel.clone());
        let beating = CancellationToken::new();
        let heart = tokio::spawn(heartbeat(reporter.clone(), self.tools.config.heartbeat(), beating.clone()));

        let outcome = job::run(&job, &self.tools, &reporter, &cancel).await;

        tracing::info!(outcome = ?outcome, "job ended");
        let reason = if self.abort.is_cancelled() {
            "the runner is shutting down"
        } else {
            "stopped on the scheduler's request"
        };
        let body = match outcome.into_body(reason) {
            Body::Failed { step, cause, message, rolled_back } => {
                Body::Failed { step, cause, message: reporter.mask(&message), rolled_back }
            }
            other => other,
        };
        reporter.send_confirmed(body).await;
        beating.cancel();
        let _ = heart.await;
        self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    }
}

async fn heartbeat(reporter: Reporter, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => reporter.send(Body::Heartbeat),
        }
    }
}

/// Listens on the control exchange and stops the jobs the scheduler names.
pub async fn control(url: String, topo: Topology, runner_id: Arc<str>, running: Running, cancel: CancellationToken) {
    let session = |conn: Connection| {
        let (topo, runner_id, running, cancel) = (topo.clone(), runner_id.clone(), running.clone(), cancel.clone());
        async move { listen(&conn, &topo, &runner_id, &running, &cancel).await }
    };
    broker::with_reconnect(&url, &cancel, "control listener", session).await;
}

async fn listen(
    conn: &Connection,
    topo: &Topology,
    runner_id: &str,
    running: &Running,
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
    loop {
        let delivery = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            d = consumer.next() => match d {
                Some(d) => d?,
                None => anyhow::bail!("control consumer cancelled"),
            },
        };
        let Ok(Control::Cancel { deployment_id, attempt, runner_id: target, reason }) =
            serde_json::from_slice::<Control>(&delivery.data)
        else {
            continue;
        };
        if target.as_deref().is_some_and(|t| t != runner_id) {
            continue;
        }
        if let Some(token) = running.lock().unwrap_or_else(|e| e.into_inner()).get(&(deployment_id, attempt)) {
            tracing::warn!(deployment_id = %deployment_id, attempt, reason = %reason, "scheduler asked to stop the job");
            token.cancel();
        }
    }
}
