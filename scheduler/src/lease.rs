//! The lease reaper: a running job whose runner stopped sending heartbeats is dispatched again
//! as its next attempt (or failed when out of attempts), and the old runner is told to stop.

use std::time::Duration;

use slipway_proto::Control;
use tokio_util::sync::CancellationToken;

use crate::{Shared, transition};

/// Checks every quarter lease until `cancel`.
pub async fn run(shared: Shared, lease: Duration, cancel: CancellationToken) {
    let period = (lease / 4).max(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        match transition::expire_leases(&shared.pool, lease, shared.max_attempts).await {
            Ok(expired) => {
                for e in expired {
                    tracing::warn!(deployment_id = %e.note.deployment_id, attempt = e.old_attempt, runner_id = %e.runner_id, state = e.note.state.as_str(), "lease expired");
                    shared.publisher.control(&Control::Cancel {
                        deployment_id: e.note.deployment_id,
                        attempt: e.old_attempt,
                        runner_id: Some(e.runner_id.clone()),
                        reason: "lease expired".into(),
                    });
                    shared.publisher.notify(&e.note);
                    let _ = shared.live.send(e.note.deployment_id);
                    shared.relay_wake.notify_one();
                }
            }
            Err(err) => tracing::warn!(error = %err, "lease check failed; will retry"),
        }
    }
}
