//! Consumes what runners send (claims, heartbeats, steps, log lines, outcomes) from the runner
//! queue and applies each through [`transition::apply_envelope`]. A message is acknowledged
//! only after its effect is committed, so a crash here redelivers it and the compare-and-set
//! makes the repeat a no-op.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use slipway_proto::{Control, Envelope, State};
use tokio_util::sync::CancellationToken;

use crate::transition::{self, Applied};
use slipway_broker as broker;

use crate::Shared;

/// Runs until `cancel`, reconnecting when the broker goes away.
pub async fn run(shared: Shared, cancel: CancellationToken) {
    let url = shared.amqp_url.clone();
    let session = |conn: lapin::Connection| {
        let (shared, cancel) = (shared.clone(), cancel.clone());
        async move { consume(&shared, &conn, &cancel).await }
    };
    broker::with_reconnect(&url, &cancel, "runner queue consumer", session).await;
}

async fn consume(shared: &Shared, conn: &lapin::Connection, cancel: &CancellationToken) -> anyhow::Result<()> {
    let channel = conn.create_channel().await?;
    broker::declare(&channel, &shared.topo).await?;
    channel.basic_qos(256, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            shared.topo.runner_queue.as_str().into(),
            "slipway-scheduler".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let delivery = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            d = consumer.next() => match d {
                Some(d) => d?,
                None => anyhow::bail!("consumer cancelled by the broker"),
            },
        };
        let envelope: Envelope = match serde_json::from_slice(&delivery.data) {
            Ok(env) => env,
            Err(err) => {
                tracing::error!(error = %err, bytes = delivery.data.len(), "unreadable runner message dropped");
                delivery.acker.ack(BasicAckOptions::default()).await?;
                continue;
            }
        };
        match transition::apply_envelope(&shared.pool, &envelope, shared.max_attempts).await {
            Ok(applied) => {
                react(shared, &envelope, applied);
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            Err(err) => {
                tracing::warn!(error = %err, deployment_id = %envelope.deployment_id, "could not apply runner message; will retry");
                delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn react(shared: &Shared, envelope: &Envelope, applied: Applied) {
    match applied {
        Applied::Changed(note) => {
            if note.step.is_none() || note.state.is_terminal() || note.state == State::Queued {
                tracing::info!(deployment_id = %note.deployment_id, attempt = note.attempt, state = note.state.as_str(), "deployment state changed");
            }
            if note.state == State::Queued || note.state.is_terminal() {
                shared.relay_wake.notify_one();
            }
            shared.publisher.notify(&note);
            let _ = shared.live.send(note.deployment_id);
        }
        Applied::Logged => {
            let _ = shared.live.send(envelope.deployment_id);
        }
        Applied::Unchanged => {}
        Applied::Rejected { runner_id, reason } => {
            tracing::info!(deployment_id = %envelope.deployment_id, attempt = envelope.attempt, runner_id = %runner_id, reason = %reason, "telling runner to stop");
            shared.publisher.control(&Control::Cancel {
                deployment_id: envelope.deployment_id,
                attempt: envelope.attempt,
                runner_id: Some(runner_id),
                reason,
            });
        }
    }
}
