//! Database snapshots: what runners report having taken (`pg_dump -Fc`, before a release
//! command) and what their retention removed; listed per app and named for a restore.

use slipway_proto::api;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::apps::App;

/// Whether `name` is a snapshot file name a runner makes (`<app>-<UTC time>-<deployment>.dump`):
/// one path component of letters, digits, `-` and `.`, so it can never point elsewhere.
pub fn is_name(name: &str) -> bool {
    name.len() <= 120
        && name.ends_with(".dump")
        && !name.starts_with('.')
        && !name.contains("..")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Records a snapshot of the deployment's app and marks the files retention removed.
pub async fn record(
    conn: &mut PgConnection,
    deployment_id: Uuid,
    attempt: u32,
    name: &str,
    bytes: u64,
    runner: Option<&str>,
    pruned: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO db_snapshots (id, app_id, deployment_id, attempt, name, bytes, runner)
         SELECT $1, d.app_id, d.id, $3, $4, $5, $6 FROM deployments d WHERE d.id = $2
         ON CONFLICT (app_id, name) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(deployment_id)
    .bind(attempt as i32)
    .bind(name)
    .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
    .bind(runner)
    .execute(&mut *conn)
    .await?;
    let pruned: Vec<&String> = pruned.iter().filter(|n| is_name(n)).collect();
    if !pruned.is_empty() {
        sqlx::query(
            "UPDATE db_snapshots SET pruned_at = now()
             WHERE app_id = (SELECT app_id FROM deployments WHERE id = $1) AND name = ANY($2) AND pruned_at IS NULL",
        )
        .bind(deployment_id)
        .bind(pruned)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    bytes: i64,
    deployment_id: Uuid,
    release: Option<i32>,
    runner: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    pruned_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<Row> for api::Snapshot {
    fn from(r: Row) -> Self {
        api::Snapshot {
            id: r.id,
            name: r.name,
            bytes: u64::try_from(r.bytes).unwrap_or_default(),
            deployment_id: r.deployment_id,
            release: r.release.and_then(|v| u32::try_from(v).ok()),
            runner: r.runner,
            created_at: r.created_at,
            pruned_at: r.pruned_at,
        }
    }
}

/// The app's snapshots, newest first; with `which`, only the one it names: its id, its file
/// name, or `v3` (the one taken before release 3).
async fn select(pool: &sqlx::PgPool, app: &App, which: Option<&str>, limit: i64) -> Result<Vec<Row>, sqlx::Error> {
    let id = which.and_then(|w| Uuid::parse_str(w).ok());
    let version = which.and_then(|w| w.strip_prefix('v')).and_then(|v| v.parse::<i32>().ok());
    sqlx::query_as(
        "SELECT s.id, s.name, s.bytes, s.deployment_id, r.version AS release, s.runner, s.created_at, s.pruned_at
         FROM db_snapshots s LEFT JOIN releases r ON r.deployment_id = s.deployment_id
         WHERE s.app_id = $1 AND ($2::text IS NULL OR s.id = $3 OR s.name = $2 OR r.version = $4)
         ORDER BY s.created_at DESC LIMIT $5",
    )
    .bind(app.id)
    .bind(which)
    .bind(id)
    .bind(version)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The app's snapshots, newest first.
pub async fn list(pool: &sqlx::PgPool, app: &App, limit: i64) -> Result<Vec<api::Snapshot>, sqlx::Error> {
    Ok(select(pool, app, None, limit).await?.into_iter().map(api::Snapshot::from).collect())
}

/// The app's snapshot named by its id, its file name, or `v3` (the one taken before release 3).
pub async fn find(pool: &sqlx::PgPool, app: &App, which: &str) -> Result<Option<api::Snapshot>, sqlx::Error> {
    Ok(select(pool, app, Some(which), 1).await?.into_iter().next().map(api::Snapshot::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_a_runner_makes_are_taken() {
        assert!(is_name("shop-20261123T010203Z-0197a1b2.dump"));
        for bad in [
            "",
            "../etc/passwd.dump",
            "shop/../../x.dump",
            ".dump",
            "shop.sql",
            "shop 1.dump",
            "shöp.dump",
            &format!("{}.dump", "a".repeat(200)),
        ] {
            assert!(!is_name(bad), "{bad:?}");
        }
    }
}
