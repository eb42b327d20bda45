//! The lease reaper: a running job whose runner sent no heartbeat for a whole lease is given
//! [`Input::LeaseExpired`] (dispatched again as its next attempt, failed when out of attempts,
//! or cancelled when a cancel was pending), and the old holder is told to stop.
//!
//! A lease only runs while the scheduler could hear heartbeats: while the inbox is
//! disconnected from RabbitMQ, failing to write PostgreSQL, or behind on its queue, nothing
//! expires. So a job expires at most one lease plus the length of such an outage after its
//! runner went silent, and a broker or database outage never expires a job that is running.

use std::time::Duration;

use slipway_proto::{Input, State};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Shared;
use crate::transition::{self, TransitionError};

/// Checks every quarter lease until `cancel`.
pub async fn run(shared: Shared, lease: Duration, cancel: CancellationToken) {
    let period = (lease / 4).max(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        // Only the leader: it alone consumes the runner queue, so only it can have heard them.
        if !shared.leader.is_leader() {
            continue;
        }
        if shared.inbox.heard_within(shared.runner_lost_after) {
            lost(&shared).await;
        }
        if !shared.inbox.heard_within(lease) {
            tracing::debug!("leases paused: the inbox has not heard runners for a whole lease");
            continue;
        }
        if let Err(err) = expire(&shared, lease).await {
            tracing::warn!(error = %err, "lease check failed; will retry");
        }
    }
}

/// Marks the runners silent for `SLIPWAY_RUNNER_LOST_SECONDS` lost (only while the inbox could
/// have heard them, like leases).
async fn lost(shared: &Shared) {
    match crate::fleet::mark_lost(&shared.pool, shared.runner_lost_after).await {
        Ok(lost) => {
            for runner_id in lost {
                tracing::warn!(runner_id = %runner_id, silent_for = ?shared.runner_lost_after, "runner lost: no report from it");
                metrics::counter!(slipway_telemetry::metrics::RUNNERS_LOST).increment(1);
            }
        }
        Err(err) => tracing::warn!(error = %err, "runner check failed; will retry"),
    }
}

/// Expires every running deployment whose holder has been silent for `lease`.
pub async fn expire(shared: &Shared, lease: Duration) -> Result<usize, TransitionError> {
    let silent: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM deployments WHERE state = 'running' AND heartbeat_at < now() - make_interval(secs => $1)",
    )
    .bind(lease.as_secs_f64())
    .fetch_all(&shared.pool)
    .await?;
    let mut expired = 0;
    for id in silent {
        let still_silent = |loaded: &transition::Loaded| {
            loaded.row.state() == State::Running && loaded.heartbeat_age.is_some_and(|age| age >= lease)
        };
        match transition::apply_if(&shared.pool, id, &Input::LeaseExpired, shared.policy(), still_silent).await {
            Ok(Some(applied)) => {
                tracing::warn!(deployment_id = %id, "lease expired");
                shared.react(&applied);
                expired += 1;
            }
            Ok(None) => {}
            Err(err) if err.is_transient() => return Err(err),
            Err(err) => {
                tracing::error!(error = %err, deployment_id = %id, "lease of an unreadable deployment not expired")
            }
        }
    }
    Ok(expired)
}
