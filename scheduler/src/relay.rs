//! The outbox relay: publishes queued deployments to the jobs queue with publisher confirms
//! and marks them published only once the broker confirmed. A broker outage delays jobs; it
//! never drops one (the row stays unpublished until a confirm arrives). Every scheduler replica
//! runs one: each takes a row with `FOR UPDATE SKIP LOCKED`, so replicas never publish the same
//! row at once (a replica that dies after the confirm and before its commit leaves the row to be
//! published again; the claim protocol turns that copy away).

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
        // One job at a time, each in a transaction that holds its row: a relay on another
        // replica skips it, and a claim for it waits only for this one publish.
        let mut published = 0;
        while published < BATCH {
            match relay_one(shared, &channel).await {
                Ok(true) => published += 1,
                Ok(false) => break,
                // PostgreSQL is out of reach: the broker channel stays, and the rows wait.
                Err(Failed::Database(err)) => {
                    tracing::warn!(error = %err, "the outbox cannot be read; trying again shortly");
                    break;
                }
                Err(Failed::Broker(err)) => return Err(err),
            }
        }
        if published == BATCH {
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

/// Why relaying a job stopped: the database (the broker channel is fine, try again later) or
/// the broker (reconnect; the relay's broker health says so).
enum Failed {
    Database(sqlx::Error),
    Broker(anyhow::Error),
}

/// Publishes the next due job, in a transaction that holds its row until the broker confirmed
/// and the row is marked; false when none is due.
async fn relay_one(shared: &Shared, channel: &lapin::Channel) -> Result<bool, Failed> {
    let started = std::time::Instant::now();
    let mut tx = shared.pool.begin().await.map_err(Failed::Database)?;
    let next = deployments::outbox(&mut *tx, &shared.keyring, 1).await.map_err(Failed::Database)?;
    let Some(deployments::Outgoing { job, traceparent }) = next.into_iter().next() else {
        return Ok(false);
    };
    let read = started.elapsed();
    publish(shared, channel, &job, traceparent.as_deref()).await.map_err(Failed::Broker)?;
    let confirmed = started.elapsed();
    // Published but not marked (the database went away): published again later, and the claim
    // protocol turns the second copy away.
    deployments::mark_published(&mut *tx, job.deployment_id, job.attempt).await.map_err(Failed::Database)?;
    tx.commit().await.map_err(Failed::Database)?;
    // Where a dispatch's time goes: reading the outbox (with the job's release), the broker's
    // confirm, marking the row.
    tracing::info!(
        deployment_id = %job.deployment_id, attempt = job.attempt, app = %job.app.name, sha = %job.sha,
        read_us = read.as_micros() as u64, confirmed_us = confirmed.as_micros() as u64,
        marked_us = started.elapsed().as_micros() as u64, "job published"
    );
    Ok(true)
}

/// Publishes one job and waits for the broker's confirm (bounded, so a silent broker never
/// holds the row's lock for long).
async fn publish(
    shared: &Shared,
    channel: &lapin::Channel,
    job: &slipway_proto::Job,
    traceparent: Option<&str>,
) -> anyhow::Result<()> {
    let payload = serde_json::to_vec(job)?;
    let mut properties =
        broker::persistent_json().with_message_id(format!("{}:{}", job.deployment_id, job.attempt).into());
    if let Some(traceparent) = traceparent {
        properties = broker::with_traceparent(properties, traceparent);
    }
    let started = std::time::Instant::now();
    let confirmed = tokio::time::timeout(CONFIRM_TIMEOUT, async {
        channel
            .basic_publish(
                "".into(),
                shared.topo.jobs_queue.as_str().into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &payload,
                properties,
            )
            .await?
            .await
    })
    .await;
    match confirmed {
        Ok(Ok(Confirmation::Ack(None))) => {
            metrics::histogram!(slipway_telemetry::metrics::OUTBOX_PUBLISH).record(started.elapsed());
            Ok(())
        }
        Ok(Ok(other)) => anyhow::bail!("broker did not accept job {}: {other:?}", job.deployment_id),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => anyhow::bail!("broker did not confirm job {} within {CONFIRM_TIMEOUT:?}", job.deployment_id),
    }
}

/// How long the broker may take to confirm a publish.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
