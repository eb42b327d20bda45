//! Deployments in PostgreSQL: creation (deduplicated per commit, superseding queued ones through
//! the lifecycle), queries, and the outbox. Every state change goes through `transition`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_proto::{Input, Job, Policy, State};
use sqlx::PgPool;
use uuid::Uuid;

use crate::apps::App;
use crate::transition::{self, Applied, TransitionError};

/// A deployment as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Deployment {
    pub id: Uuid,
    pub app: String,
    pub sha: String,
    pub environment: String,
    pub git_ref: String,
    pub source: String,
    pub state: String,
    pub attempt: i32,
    pub runner_id: Option<String>,
    pub current_step: Option<String>,
    pub created_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub image: Option<String>,
    pub url: Option<String>,
    pub error_step: Option<String>,
    pub error_cause: Option<String>,
    pub error_message: Option<String>,
    /// The rollout failed and the previous revision was put back.
    pub rolled_back: bool,
    /// Who asked to cancel it (also while the runner is still stopping it), and why.
    pub cancel_by: Option<String>,
    pub cancel_reason: Option<String>,
}

/// One step of one attempt, with its timings.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StepRow {
    pub attempt: i32,
    pub step: String,
    pub status: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

/// The result of recording a push or a manual deploy.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// A new deployment row (and so a new job); older queued ones were superseded.
    New { id: Uuid, superseded: Vec<Applied> },
    /// The same (app, sha, environment) was recorded before: nothing new.
    Existing(Uuid),
}

const DEPLOYMENT_COLUMNS: &str = "d.id, a.name AS app, d.sha, d.environment, d.git_ref, d.source, d.state, d.attempt, d.runner_id,
    d.current_step, d.created_at, d.published_at, d.started_at, d.finished_at, d.image, d.url, d.error_step, d.error_cause, d.error_message,
    d.rolled_back, d.cancel_by, d.cancel_reason";

/// Records a deployment of `sha` unless one exists for (app, sha, environment); a new one
/// supersedes older deployments of the app that are still only queued.
pub async fn create(
    pool: &PgPool,
    app: &App,
    sha: &str,
    git_ref: &str,
    source: &str,
    delivery_id: Option<&str>,
    policy: Policy,
) -> Result<Created, TransitionError> {
    let mut tx = pool.begin().await?;
    let id = Uuid::now_v7();
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO deployments (id, app_id, sha, environment, git_ref, source, delivery_id, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued')
         ON CONFLICT (app_id, sha, environment) WHERE source <> 'rollback' AND sha <> '' DO NOTHING RETURNING id",
    )
    .bind(id)
    .bind(app.id)
    .bind(sha)
    .bind(&app.environment)
    .bind(git_ref)
    .bind(source)
    .bind(delivery_id)
    .fetch_optional(&mut *tx)
    .await?;
    let created = match inserted {
        Some(id) => {
            let older: Vec<Uuid> = sqlx::query_scalar(
                "SELECT id FROM deployments WHERE app_id = $1 AND environment = $2 AND state = 'queued' AND id <> $3",
            )
            .bind(app.id)
            .bind(&app.environment)
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            let mut superseded = Vec::new();
            let input = Input::Superseded { by: id, sha: sha.to_string() };
            for old in older {
                // A row that moved on meanwhile (claimed by a runner) is not superseded.
                if let Some(applied) = transition::apply_once(&mut tx, old, &input, policy).await? {
                    superseded.push(applied);
                }
            }
            Created::New { id, superseded }
        }
        None => {
            let existing: Uuid =
                sqlx::query_scalar("SELECT id FROM deployments WHERE app_id = $1 AND sha = $2 AND environment = $3")
                    .bind(app.id)
                    .bind(sha)
                    .bind(&app.environment)
                    .fetch_one(&mut *tx)
                    .await?;
            Created::Existing(existing)
        }
    };
    tx.commit().await?;
    Ok(created)
}

/// One deployment with the steps of all its attempts.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<(Deployment, Vec<StepRow>)>, sqlx::Error> {
    let dep = sqlx::query_as::<_, Deployment>(sqlx::AssertSqlSafe(format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN apps a ON a.id = d.app_id WHERE d.id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(dep) = dep else { return Ok(None) };
    let steps = sqlx::query_as::<_, StepRow>(
        "SELECT attempt, step, status, started_at, finished_at, error FROM deployment_steps
         WHERE deployment_id = $1 ORDER BY attempt, started_at NULLS LAST",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Some((dep, steps)))
}

/// The newest deployments, of one app or of all.
pub async fn list(pool: &PgPool, app: Option<&str>, limit: i64) -> Result<Vec<Deployment>, sqlx::Error> {
    sqlx::query_as::<_, Deployment>(sqlx::AssertSqlSafe(format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN apps a ON a.id = d.app_id
         WHERE $1::text IS NULL OR a.name = $1 ORDER BY d.created_at DESC LIMIT $2"
    )))
    .bind(app)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The app's completed deployments, newest first.
pub async fn completed(pool: &PgPool, app: &str, limit: i64) -> Result<Vec<Deployment>, sqlx::Error> {
    sqlx::query_as::<_, Deployment>(sqlx::AssertSqlSafe(format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN apps a ON a.id = d.app_id
         WHERE a.name = $1 AND d.state = 'completed' ORDER BY d.finished_at DESC LIMIT $2"
    )))
    .bind(app)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The state of a deployment, if it exists; an unknown stored state is an error.
pub async fn state(pool: &PgPool, id: Uuid) -> Result<Option<State>, TransitionError> {
    let s: Option<String> =
        sqlx::query_scalar("SELECT state FROM deployments WHERE id = $1").bind(id).fetch_optional(pool).await?;
    s.map(|s| State::parse(&s).ok_or(TransitionError::Corrupt { id, column: "state", value: s })).transpose()
}

/// Jobs waiting in the outbox: queued, not yet confirmed published, due, and the oldest of their
/// app and environment, which must have no other deployment published or running: at most one
/// deployment of an app and environment is out with runners at a time.
pub async fn outbox(pool: &PgPool, limit: i64) -> Result<Vec<Job>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        deployment_id: Uuid,
        attempt: i32,
        sha: String,
        git_ref: String,
        #[sqlx(flatten)]
        app: App,
    }
    let rows = sqlx::query_as::<_, Row>(
        "SELECT d.id AS deployment_id, d.attempt, d.sha, d.git_ref,
                a.id, a.name, a.repo_url, a.branch, a.environment, a.target, a.health_path, a.port, a.env,
                a.app_root, a.test_network, a.kube_settings, a.created_at
         FROM deployments d JOIN apps a ON a.id = d.app_id
         WHERE d.state = 'queued' AND d.published_at IS NULL AND (d.not_before IS NULL OR d.not_before <= now())
           AND NOT EXISTS (SELECT 1 FROM deployments r WHERE r.app_id = d.app_id AND r.environment = d.environment
                           AND r.id <> d.id AND (r.state = 'running'
                                OR (r.state = 'queued' AND (r.published_at IS NOT NULL OR r.created_at < d.created_at))))
         ORDER BY d.created_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Job {
            deployment_id: r.deployment_id,
            attempt: r.attempt as u32,
            sha: r.sha,
            git_ref: r.git_ref,
            app: r.app.job_app(),
        })
        .collect())
}

/// Marks the outbox row of (id, attempt) as published; false if it moved on meanwhile.
pub async fn mark_published(pool: &PgPool, id: Uuid, attempt: u32) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE deployments SET published_at = now() WHERE id = $1 AND attempt = $2 AND state = 'queued' AND published_at IS NULL")
        .bind(id)
        .bind(attempt as i32)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}
