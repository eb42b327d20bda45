//! PostgreSQL as the scheduler uses it: the pool (quick to give up on a request while the
//! database is unreachable, patient at start-up), and what a failure means (unreachable, to
//! retry, or a refused query, which will fail again).

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

/// How long a request waits for a connection before it answers 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long start-up waits for PostgreSQL to answer at all.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// The scheduler's pool. A request gives up on a connection after [`ACQUIRE_TIMEOUT`] (so the
/// API answers 503 at once while PostgreSQL is unreachable); start-up tries for
/// [`STARTUP_PATIENCE`], so a scheduler started beside a database that is still starting waits.
pub async fn connect(url: &str, cancel: &CancellationToken) -> Result<PgPool, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + STARTUP_PATIENCE;
    loop {
        let options = PgPoolOptions::new().max_connections(20).acquire_timeout(ACQUIRE_TIMEOUT);
        match options.connect(url).await {
            Ok(pool) => return Ok(pool),
            Err(err) if is_unavailable(&err) && tokio::time::Instant::now() < deadline && !cancel.is_cancelled() => {
                tracing::warn!(error = %err, "PostgreSQL not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Whether `err` means PostgreSQL cannot be reached right now (as opposed to a query it refused).
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        // 08: connection exceptions; 57P: the server is shutting down or restarting; 40001/40P01:
        // serialization failures and deadlocks, which succeed when tried again.
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "40001" || c == "40P01")
        }
        _ => false,
    }
}
