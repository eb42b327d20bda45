//! Leadership among scheduler replicas: the replica holding a PostgreSQL advisory lock (on a
//! connection of its own) is the leader. It alone consumes the runner queue (so what runners
//! send is applied in the order they sent it), expires leases, marks silent runners lost and
//! reads branch heads on the reconcile schedule. Every replica serves the API and webhooks and
//! relays the outbox.
//!
//! The lock goes with its session: when the leader exits or is killed, PostgreSQL ends the
//! session as the socket closes and another replica takes the lock at its next try (every
//! [`TRY_EVERY`]). A leader whose connection fails (or stops answering within [`CHECK_TIMEOUT`])
//! steps down at once; a connection that stops answering without closing keeps its session (and
//! the lock) until PostgreSQL ends it, so no other replica can lead meanwhile. A host that vanishes without
//! closing its sockets holds the lock until PostgreSQL's TCP keepalives end its session (see
//! docs/scaling.md).

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often a replica that is not the leader tries to become it, and the leader checks it still is.
pub const TRY_EVERY: Duration = Duration::from_secs(1);
/// How long the leader's check may take before it steps down: long enough that a database
/// slowed by load does not make the leadership flap (a closed connection is noticed at once).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether this replica leads, and a way to wait for a change.
#[derive(Debug, Clone)]
pub struct Leadership {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Leadership {
    fn default() -> Self {
        Self { tx: Arc::new(watch::channel(false).0) }
    }
}

impl Leadership {
    /// Whether this replica is the leader now.
    pub fn is_leader(&self) -> bool {
        *self.tx.borrow()
    }

    /// Waits until this replica leads (at once if it does).
    pub async fn acquired(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|leads| *leads).await;
    }

    /// Waits until this replica no longer leads (at once if it does not).
    pub async fn lost(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|leads| !*leads).await;
    }

    fn set(&self, leads: bool) {
        self.tx.send_if_modified(|now| std::mem::replace(now, leads) != leads);
    }
}

/// The advisory lock key of an installation (its queue prefix), so installations sharing a
/// database never share a leader.
pub fn lock_key(prefix: &str) -> i64 {
    let digest = Sha256::digest(format!("slipway-leader:{prefix}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
}

/// Campaigns for leadership until `cancel`, then gives it up at once (so a graceful shutdown
/// hands over within one try of another replica).
pub async fn run(pool: PgPool, key: i64, leadership: Leadership, cancel: CancellationToken) {
    let options = (*pool.connect_options()).clone().application_name("slipway-scheduler-leader");
    loop {
        let mut conn = match tokio::time::timeout(CHECK_TIMEOUT, options.connect()).await {
            Ok(Ok(conn)) => Some(conn),
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "leadership: cannot connect to PostgreSQL");
                None
            }
            Err(_) => None,
        };
        while let Some(c) = conn.as_mut() {
            let attempt = tokio::time::timeout(CHECK_TIMEOUT, hold(c, key, leadership.is_leader())).await;
            match attempt {
                Ok(Ok(leads)) => {
                    if leads && !leadership.is_leader() {
                        tracing::info!("this scheduler is now the leader (runner queue, leases, reconcile)");
                    }
                    leadership.set(leads);
                }
                Ok(Err(_)) | Err(_) => {
                    // The session goes with the connection (and the lock with the session).
                    step_down(&leadership, "the leadership connection failed or did not answer");
                    break;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => {
                    step_down(&leadership, "shutting down");
                    if let Some(c) = conn.take() {
                        let _ = tokio::time::timeout(CHECK_TIMEOUT, c.close()).await;
                    }
                    return;
                }
                _ = tokio::time::sleep(TRY_EVERY) => {}
            }
        }
        drop(conn);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(TRY_EVERY) => {}
        }
    }
}

/// Takes the lock, or checks the session that holds it is still alive; whether it is held.
async fn hold(conn: &mut PgConnection, key: i64, held: bool) -> Result<bool, sqlx::Error> {
    match held {
        true => sqlx::query("SELECT 1").execute(&mut *conn).await.map(|_| true),
        false => sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut *conn).await,
    }
}

fn step_down(leadership: &Leadership, why: &str) {
    if leadership.is_leader() {
        tracing::warn!(reason = why, "this scheduler is no longer the leader");
    }
    leadership.set(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installations_get_their_own_lock() {
        assert_eq!(lock_key("slipway"), lock_key("slipway"));
        assert_ne!(lock_key("slipway"), lock_key("slipway-test-1"));
    }
}
