//! Consumes what runners send (claims, heartbeats, steps, log lines, outcomes) from the runner
//! queue: log lines are stored in batches, everything else is applied through
//! [`transition::apply`]. A message is acknowledged only after its effect is committed, so a
//! crash here redelivers it and the guarded write makes the repeat a no-op. A message that
//! cannot be applied — unreadable, refused by PostgreSQL, or redelivered [`MAX_DELIVERIES`]
//! times — is recorded in `dead_letters` with the reason and acknowledged, so it never blocks
//! the messages behind it; only while PostgreSQL is unreachable do messages wait.
//!
//! [`Health`] tells the lease reaper whether runners could have been heard: a lease only
//! expires while the inbox is connected and has drained its queue recently.

use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use slipway_proto::message::{RUNNER_REPORT_TYPE, RunnerActivity, RunnerReport};
use slipway_proto::{Body, Control, Envelope, Input};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fleet;
use crate::transition::{self, Applied, TransitionError};
use slipway_broker as broker;

use crate::Shared;

/// How long the queue must give nothing before the inbox counts as caught up.
const IDLE: Duration = Duration::from_millis(50);

/// Whether the inbox is hearing runners.
#[derive(Debug, Default)]
pub struct Health {
    inner: Mutex<HealthInner>,
}

#[derive(Debug, Default)]
struct HealthInner {
    connected_since: Option<Instant>,
    /// Last time the queue was empty (everything before it was applied).
    drained_at: Option<Instant>,
    /// Last time a message could not be applied for a transient reason (the database was down).
    failed_at: Option<Instant>,
}

impl Health {
    fn with<T>(&self, f: impl FnOnce(&mut HealthInner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn connected(&self) {
        self.with(|h| h.connected_since = Some(Instant::now()));
    }

    fn disconnected(&self) {
        self.with(|h| h.connected_since = None);
    }

    fn drained(&self) {
        self.with(|h| h.drained_at = Some(Instant::now()));
    }

    fn failed(&self) {
        self.with(|h| h.failed_at = Some(Instant::now()));
    }

    /// Whether the scheduler could have heard every runner that was alive during the last
    /// `window` and sends heartbeats at least every `window / 2`: the inbox has been connected
    /// for the whole window and drained its queue, after any failure, in its second half.
    pub fn heard_within(&self, window: Duration) -> bool {
        self.with(|h| {
            let now = Instant::now();
            let (Some(start), Some(half)) = (now.checked_sub(window), now.checked_sub(window / 2)) else {
                return false;
            };
            match (h.connected_since, h.drained_at) {
                (Some(connected), Some(drained)) => {
                    connected <= start && drained >= half && h.failed_at.is_none_or(|failed| failed < drained)
                }
                _ => false,
            }
        })
    }
}

/// Runs until `cancel`: consumes the runner queue while this replica leads (one consumer at a
/// time, so messages are applied in the order runners sent them), reconnecting when the broker
/// goes away, and stops consuming as soon as it no longer leads.
pub async fn run(shared: Shared, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = shared.leader.acquired() => {}
        }
        let leading = cancel.child_token();
        let consuming = consume_while(shared.clone(), leading.clone());
        tokio::pin!(consuming);
        tokio::select! {
            _ = &mut consuming => {}
            _ = shared.leader.lost() => {
                tracing::info!("no longer the leader: handing the runner queue to the next one");
                leading.cancel();
                consuming.await;
            }
        }
    }
}

async fn consume_while(shared: Shared, cancel: CancellationToken) {
    let url = shared.amqp_url.clone();
    let session = |conn: lapin::Connection| {
        let (shared, cancel) = (shared.clone(), cancel.clone());
        async move {
            let result = consume(&shared, &conn, &cancel).await;
            shared.inbox.disconnected();
            // Unacknowledged messages go back to the queue at once, for the next leader.
            let _ = conn.close(200, "no longer consuming".into()).await;
            result
        }
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
    shared.inbox.connected();
    loop {
        let delivery = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            d = consumer.next() => match d {
                Some(d) => d?,
                None => anyhow::bail!("consumer cancelled by the broker"),
            },
            _ = tokio::time::sleep(IDLE) => {
                shared.inbox.drained();
                continue;
            }
        };
        let kind = delivery.properties.kind().as_ref().map(|k| k.as_str().to_string());
        if kind.as_deref() == Some(RUNNER_REPORT_TYPE) {
            take_report(shared, delivery).await?;
            continue;
        }
        let envelope: Envelope = match serde_json::from_slice(&delivery.data) {
            Ok(env) => env,
            Err(err) => {
                dead_letter(shared, None, &format!("unreadable: {err}"), &delivery.data).await?;
                delivery.acker.ack(BasicAckOptions::default()).await?;
                continue;
            }
        };
        // One at a time, in queue order: live followers read lines by position, so a batch
        // stored before the one ahead of it would be skipped by a follower already past it.
        take(shared, delivery, envelope).await?;
    }
}

/// Applies one delivery and acknowledges it; a transient failure hands it back, anything that
/// can never apply is dead-lettered. Fails only when the broker or the dead-letter record does.
async fn take(shared: &Shared, delivery: lapin::message::Delivery, envelope: Envelope) -> anyhow::Result<()> {
    let id = envelope.deployment_id;
    match handle(shared, &envelope).await {
        Ok(outcome) => {
            delivery.acker.ack(BasicAckOptions::default()).await?;
            counted(outcome);
        }
        Err(err) if err.is_transient() && deliveries(&delivery) < MAX_DELIVERIES => {
            counted("retried");
            shared.inbox.failed();
            tracing::warn!(error = %err, deployment_id = %id, "could not apply runner message; will retry");
            delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(err) => {
            if let TransitionError::Unknown(_) = err {
                shared.publisher.control(&stop(&envelope, "unknown deployment"));
            }
            let reason = format!("{err}: {}", error_chain(&err));
            dead_letter(shared, Some(id), &reason, &delivery.data).await?;
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
    }
    Ok(())
}

/// Counts a runner message by what became of it.
fn counted(outcome: &'static str) {
    metrics::counter!(slipway_telemetry::metrics::INBOX_MESSAGES, "outcome" => outcome).increment(1);
}

/// Records a runner's report of itself. An unreadable one is dropped with a warning (it is not
/// about any deployment, and the next report comes within a heartbeat); a transient database
/// failure hands it back.
async fn take_report(shared: &Shared, delivery: lapin::message::Delivery) -> anyhow::Result<()> {
    let report: RunnerReport = match serde_json::from_slice(&delivery.data) {
        Ok(report) => report,
        Err(err) => {
            tracing::warn!(error = %err, bytes = delivery.data.len(), "unreadable runner report dropped");
            counted("rejected");
            delivery.acker.ack(BasicAckOptions::default()).await?;
            return Ok(());
        }
    };
    match fleet::record(&shared.pool, &report).await {
        Ok(was_lost) => {
            if was_lost {
                tracing::info!(runner_id = %report.runner_id, "a runner marked lost reports again");
            }
            if matches!(report.state, RunnerActivity::Stopped | RunnerActivity::Draining) {
                tracing::info!(runner_id = %report.runner_id, state = ?report.state, "runner leaving");
            }
            counted("applied");
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        Err(err) if crate::db::is_unavailable(&err) => {
            shared.inbox.failed();
            counted("retried");
            tracing::warn!(error = %err, "could not record a runner report; will retry");
            delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(err) => {
            tracing::warn!(error = %err, runner_id = %report.runner_id, "runner report refused by the database; dropped");
            counted("rejected");
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
    }
    Ok(())
}

/// Deliveries of one message before it is dead-lettered even if its failure looked transient.
const MAX_DELIVERIES: i64 = 20;

/// How many times the broker delivered this message (quorum queues count them).
fn deliveries(delivery: &lapin::message::Delivery) -> i64 {
    use lapin::types::AMQPValue;
    let count = delivery.properties.headers().as_ref().and_then(|h| h.inner().get("x-delivery-count").cloned());
    match count {
        Some(AMQPValue::LongLongInt(n)) => n,
        Some(AMQPValue::LongInt(n)) => n.into(),
        Some(AMQPValue::ShortInt(n)) => n.into(),
        Some(AMQPValue::LongUInt(n)) => n.into(),
        _ => 0,
    }
}

/// Records a runner message that will never apply, with why, so it no longer blocks the queue.
/// Fails (and the message is redelivered) only if PostgreSQL cannot take the record.
async fn dead_letter(shared: &Shared, id: Option<uuid::Uuid>, reason: &str, body: &[u8]) -> anyhow::Result<()> {
    tracing::error!(deployment_id = ?id, reason, bytes = body.len(), "runner message dead-lettered");
    counted("dead_lettered");
    let recorded = sqlx::query("INSERT INTO dead_letters (deployment_id, reason, body) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(reason)
        .bind(body)
        .execute(&shared.pool)
        .await;
    if let Err(err) = recorded {
        shared.inbox.failed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        anyhow::bail!("recording a dead letter failed: {err}");
    }
    Ok(())
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut source = err.source();
    while let Some(s) = source {
        out.push(s.to_string());
        source = s.source();
    }
    out.join(": ")
}

/// Stores a log line, or applies any other message to its deployment; says what became of it
/// (applied, ignored as a repeat, or rejected).
async fn handle(shared: &Shared, envelope: &Envelope) -> Result<&'static str, TransitionError> {
    if let Body::Logs { lines } = &envelope.body {
        let started = std::time::Instant::now();
        transition::store_logs(&shared.pool, envelope, lines).await?;
        let ms = started.elapsed().as_millis() as u64;
        tracing::debug!(deployment_id = %envelope.deployment_id, lines = lines.len(), ms, "log batch stored");
        metrics::counter!(slipway_telemetry::metrics::LOG_LINES_STORED).increment(lines.len() as u64);
        shared.live.wake(envelope.deployment_id);
        return Ok("applied");
    }
    let applied =
        transition::apply(&shared.pool, envelope.deployment_id, &Input::Runner(envelope), shared.policy()).await?;
    shared.react(&applied);
    Ok(match applied {
        Applied::Changed { .. } | Applied::Touched { .. } => "applied",
        Applied::Ignored { .. } => "ignored",
        Applied::Rejected { .. } => "rejected",
    })
}

fn stop(envelope: &Envelope, reason: &str) -> Control {
    Control::Cancel {
        deployment_id: envelope.deployment_id,
        attempt: envelope.attempt,
        runner_id: Some(envelope.runner_id.clone()),
        claim: Some(envelope.claim),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn leases_wait_until_the_inbox_was_connected_a_whole_window_and_drained_after_a_failure() {
        let window = Duration::from_secs(10);
        let h = Health::default();
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(!h.heard_within(window), "never connected");
        h.connected();
        h.drained();
        assert!(!h.heard_within(window), "connected for less than a window");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!h.heard_within(window), "not drained in the second half of the window");
        h.drained();
        assert!(h.heard_within(window));
        h.failed();
        assert!(!h.heard_within(window), "a failure after the last drain");
        tokio::time::advance(Duration::from_secs(1)).await;
        h.drained();
        assert!(h.heard_within(window), "drained after the failure");
        h.disconnected();
        assert!(!h.heard_within(window), "disconnected");
    }
}
