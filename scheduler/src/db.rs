//! PostgreSQL as the scheduler uses it: what a failure means (unreachable, to retry, or a
//! refused query, which will fail again).

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
