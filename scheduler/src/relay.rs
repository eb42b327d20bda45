//! The outbox relay: publishes queued deployments to the jobs queue with publisher confirms
//! and marks them published only once the broker confirmed. A broker outage delays jobs; it
//! never drops one (the row stays unpublished until a confirm arrives).

use std::time::Duration;

use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use tokio_util::sync::CancellationToken;

use slipway_broker as broker;

use crate::{Shared, deployments};

const BATCH: i64 = 100;

/// Runs until `cancel`; wakes on `shared.relay_wake` and at least every second.
pub async fn run(shared: Shared, cancel: CancellationToken) {
    let url = shared.amqp_url.clone();
    shared.broker.down();
    let session = |conn: lapin::Connection| {
        let (shared, cancel) = (shared.clone(), cancel.clone());
        async move {
            let result = relay(&shared, &conn, &cancel).await;
            shared.broker.down();
            result
        }
    };
    broker::with_reconnect(&url, &cancel, "outbox relay", session).await;
}

async fn relay(shared: &Shared, conn: &lapin::Connection, cancel: &CancellationToken) -> anyhow::Result<()> {
    let channel = broker::confirm_channel(conn, &shared.topo).await?;
    shared.broker.up();
    loop {
        let jobs = deployments::outbox(&shared.pool, &shared.keyring, BATCH).await?;
        for deployments::Outgoing { job, traceparent } in &jobs {
            let payload = serde_json::to_vec(job)?;
            let mut properties =
                broker::persistent_json().with_message_id(format!("{}:{}", job.deployment_id, job.attempt).into());
            if let Some(traceparent) = traceparent {
                properties = broker::with_traceparent(properties, traceparent);
            }
            let started = std::time::Instant::now();
            let confirm = channel
                .basic_publish(
                    "".into(),
                    shared.topo.jobs_queue.as_str().into(),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    &payload,
                    properties,
                )
                .await?
                .await?;
            match confirm {
                Confirmation::Ack(None) => {
                    metrics::histogram!(slipway_telemetry::metrics::OUTBOX_PUBLISH).record(started.elapsed());
                    deployments::mark_published(&shared.pool, job.deployment_id, job.attempt).await?;
                    tracing::info!(deployment_id = %job.deployment_id, attempt = job.attempt, app = %job.app.name, sha = %job.sha, "job published");
                }
                other => {
                    anyhow::bail!("broker did not accept job {}: {other:?}", job.deployment_id)
                }
            }
        }
        if jobs.len() as i64 == BATCH {
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = shared.relay_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if !conn.status().connected() {
            anyhow::bail!("connection to rabbitmq lost");
        }
    }
}
