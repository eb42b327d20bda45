//! Deployments in PostgreSQL: creation (deduplicated per commit, superseding queued ones through
//! the lifecycle), queries, and the outbox. Every state change goes through `transition`.

use chrono::{DateTime, Utc};
use slipway_proto::api;
use slipway_proto::{Cause, Input, Job, Policy, State, Step, StepStatus};
use sqlx::PgPool;
use uuid::Uuid;

use crate::apps::App;
use crate::seal::Keyring;
use crate::transition::{self, Applied, TransitionError};

/// A deployment's row, as stored; [`Row::view`] checks every stored value.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    id: Uuid,
    app: String,
    sha: String,
    environment: String,
    git_ref: String,
    source: String,
    state: String,
    attempt: i32,
    runner_id: Option<String>,
    current_step: Option<String>,
    created_at: DateTime<Utc>,
    published_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    image: Option<String>,
    url: Option<String>,
    error_step: Option<String>,
    error_cause: Option<String>,
    error_message: Option<String>,
    rolled_back: bool,
    created_by: Option<String>,
    cancel_by: Option<String>,
    cancel_reason: Option<String>,
    cache: Option<sqlx::types::Json<slipway_proto::CacheSummary>>,
}

/// One step of one attempt, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
struct StepRow {
    attempt: i32,
    step: String,
    status: String,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    error: Option<String>,
}

/// A stored value the API's types do not know: an error, never a default.
fn parsed<T>(
    id: Uuid,
    column: &'static str,
    raw: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, TransitionError> {
    parse(raw).ok_or_else(|| TransitionError::Corrupt { id, column, value: raw.to_string() })
}

fn parsed_opt<T>(
    id: Uuid,
    column: &'static str,
    raw: &Option<String>,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, TransitionError> {
    raw.as_deref().map(|r| parsed(id, column, r, &parse)).transpose()
}

impl Row {
    fn view(self) -> Result<api::Deployment, TransitionError> {
        let id = self.id;
        Ok(api::Deployment {
            state: parsed(id, "state", &self.state, State::parse)?,
            attempt: parsed(id, "attempt", &self.attempt.to_string(), |a| a.parse().ok())?,
            current_step: parsed_opt(id, "current_step", &self.current_step, Step::parse)?,
            error_step: parsed_opt(id, "error_step", &self.error_step, Step::parse)?,
            error_cause: parsed_opt(id, "error_cause", &self.error_cause, Cause::parse)?,
            id,
            app: self.app,
            sha: self.sha,
            environment: self.environment,
            git_ref: self.git_ref,
            source: self.source,
            runner_id: self.runner_id,
            created_at: self.created_at,
            published_at: self.published_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            image: self.image,
            url: self.url,
            error_message: self.error_message,
            rolled_back: self.rolled_back,
            created_by: self.created_by,
            cancel_by: self.cancel_by,
            cancel_reason: self.cancel_reason,
            cache: self.cache.map(|c| c.0),
        })
    }
}

impl StepRow {
    fn view(self, id: Uuid) -> Result<api::StepRun, TransitionError> {
        Ok(api::StepRun {
            attempt: parsed(id, "deployment_steps.attempt", &self.attempt.to_string(), |a| a.parse().ok())?,
            step: parsed(id, "deployment_steps.step", &self.step, Step::parse)?,
            status: parsed(id, "deployment_steps.status", &self.status, StepStatus::parse)?,
            started_at: self.started_at,
            finished_at: self.finished_at,
            error: self.error,
        })
    }
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
    d.rolled_back, d.created_by, d.cancel_by, d.cancel_reason, d.cache";

/// What a new deployment is of.
#[derive(Debug, Clone, Copy)]
pub struct NewDeployment<'a> {
    pub app: &'a App,
    /// The commit; empty for the branch head, which the runner resolves.
    pub sha: &'a str,
    pub git_ref: &'a str,
    /// `github`, `manual`, `rollback`, ...
    pub source: &'a str,
    /// The forge's delivery id, when there is one.
    pub delivery_id: Option<&'a str>,
    /// The image digest Slipway recorded for this commit (a rollback's), so the runner may skip
    /// the build only if the registry still holds exactly it.
    pub image_digest: Option<&'a str>,
    /// The name of the API token that asked for it; `None` for a webhook.
    pub created_by: Option<&'a str>,
    /// The commit the branch pointed at before this push (a forge push that was not forced).
    pub before_sha: Option<&'a str>,
    /// Set when the runner is to check the push against the watch paths (a forge push or a
    /// reconcile not decided here); its `base` is filled in when the job is sent.
    pub watch_check: Option<&'a slipway_proto::WatchCheck>,
    /// The deployment whose release this one deploys again (a rollback); otherwise the release
    /// records the app's configuration now.
    pub copy_release_of: Option<Uuid>,
    /// Why, for the release; by default said from the source and the commit.
    pub reason: Option<&'a str>,
    /// For a promotion: the release whose image it deploys.
    pub promoted_from: Option<&'a slipway_proto::Promotion>,
    /// For a restore: the database snapshot restored before the live release is deployed again.
    pub restore_of: Option<&'a slipway_proto::RestoreSnapshot>,
    /// Who pushed, as the forge names them (a forge push).
    pub pushed_by: Option<&'a str>,
    /// Another environment of the app than its own (a pull request's preview, `pr-<n>`).
    pub environment: Option<&'a str>,
}

impl<'a> NewDeployment<'a> {
    /// A deployment of `sha` (at `git_ref`) from `source` with nothing else said: the fields a
    /// caller sets beyond these start from here (`NewDeployment { reason, ..NewDeployment::of(..) }`).
    pub fn of(app: &'a App, sha: &'a str, git_ref: &'a str, source: &'a str) -> Self {
        Self {
            app,
            sha,
            git_ref,
            source,
            delivery_id: None,
            image_digest: None,
            created_by: None,
            before_sha: None,
            watch_check: None,
            copy_release_of: None,
            reason: None,
            promoted_from: None,
            restore_of: None,
            pushed_by: None,
            environment: None,
        }
    }

    /// The environment it deploys to: the app's own, or the one it names.
    pub fn environment(&self) -> &str {
        self.environment.unwrap_or(&self.app.environment)
    }

    /// Why this deployment's release was made, in words.
    fn reason(&self) -> String {
        if let Some(reason) = self.reason {
            return reason.to_string();
        }
        let short: String = self.sha.chars().take(12).collect();
        let branch = self.git_ref.strip_prefix("refs/heads/").unwrap_or(self.git_ref);
        match self.source {
            "manual" if short.is_empty() => format!("deploy of the head of {branch}"),
            "manual" => format!("deploy of {short}"),
            "rollback" => format!("rollback to {short}"),
            "promotion" => format!("promotion of {short}"),
            "restore" => format!("restore of a database snapshot, then {short} again"),
            "reconcile" => format!("head of {branch} at {short} (no webhook came)"),
            "teardown" => format!("teardown of {}", self.environment.unwrap_or("the environment")),
            _ if self.environment.is_some() && short.is_empty() => {
                format!("preview {} at the head of {branch}", self.environment.unwrap_or_default())
            }
            forge if self.environment.is_some() => {
                format!("preview {} of {short} ({forge})", self.environment.unwrap_or_default())
            }
            forge => format!("push of {short} to {branch} ({forge})"),
        }
    }
}

/// Records a deployment of `sha` unless one exists for (app, sha, environment); a new one
/// supersedes older deployments of the app that are still only queued.
pub async fn create(
    pool: &PgPool,
    keyring: &Keyring,
    new: NewDeployment<'_>,
    policy: Policy,
) -> Result<Created, TransitionError> {
    let reason = new.reason();
    let environment = new.environment().to_string();
    let NewDeployment {
        app,
        sha,
        git_ref,
        source,
        delivery_id,
        image_digest,
        created_by,
        before_sha,
        watch_check,
        copy_release_of,
        promoted_from,
        restore_of,
        pushed_by,
        ..
    } = new;
    let mut tx = pool.begin().await?;
    let id = Uuid::now_v7();
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO deployments (id, app_id, sha, environment, git_ref, source, delivery_id, image_digest, created_by, trace_parent,
                                  before_sha, watch_check, promoted_from, restore_of, pushed_by, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 'queued')
         ON CONFLICT (app_id, sha, environment) WHERE source NOT IN ('rollback', 'config', 'promotion', 'restore', 'preview', 'teardown') AND sha <> ''
         DO NOTHING RETURNING id",
    )
    .bind(id)
    .bind(app.id)
    .bind(sha)
    .bind(&environment)
    .bind(git_ref)
    .bind(source)
    .bind(delivery_id)
    .bind(image_digest)
    .bind(created_by)
    .bind(slipway_telemetry::trace::Root::new().traceparent())
    .bind(before_sha)
    .bind(watch_check.map(sqlx::types::Json))
    .bind(promoted_from.map(sqlx::types::Json))
    .bind(restore_of.map(sqlx::types::Json))
    .bind(pushed_by)
    .fetch_optional(&mut *tx)
    .await?;
    let created = match inserted {
        Some(id) => {
            crate::releases::record(&mut tx, keyring, app, id, copy_release_of, &reason, created_by).await?;
            crate::notify::enqueue(&mut tx, id, &["deploy.queued"]).await?;
            // A push supersedes the queued pushes it is known to come after (the chain of
            // `before` commits leads back to them) and whatever else is queued; not a push whose
            // place it cannot tell (a late webhook of a commit past a gap in the chain, or a
            // branch's creation arriving after later pushes): the runner deploys that one only
            // if it is still the branch's head.
            let older: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "WITH RECURSIVE ancestry (sha, depth) AS (
                     SELECT $4::text, 0 WHERE $4::text IS NOT NULL
                     UNION
                     SELECT d.before_sha, a.depth + 1 FROM deployments d JOIN ancestry a ON d.sha = a.sha
                     WHERE d.app_id = $1 AND d.environment = $2 AND d.before_sha IS NOT NULL AND a.depth < 200
                 )
                 SELECT id FROM deployments d WHERE d.app_id = $1 AND d.environment = $2 AND d.state = 'queued' AND d.id <> $3
                   AND (NOT $5 OR NOT {HEAD_ONLY} OR d.sha IN (SELECT sha FROM ancestry))"
            )))
            .bind(app.id)
            .bind(&environment)
            .bind(id)
            .bind(before_sha)
            .bind(branch_push(source, git_ref, sha))
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
        None => Created::Existing(existing(&mut *tx, app, sha, &environment).await?),
    };
    tx.commit().await?;
    if let Created::New { .. } = created {
        metrics::counter!(slipway_telemetry::metrics::DEPLOYMENTS_CREATED, "source" => crate::observe::source_label(source))
            .increment(1);
    }
    Ok(created)
}

/// The deployment already recorded for (app, sha, environment).
async fn existing(db: impl sqlx::PgExecutor<'_>, app: &App, sha: &str, environment: &str) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM deployments WHERE app_id = $1 AND sha = $2 AND environment = $3
         AND source NOT IN ('rollback', 'config', 'promotion', 'restore', 'preview', 'teardown')",
    )
    .bind(app.id)
    .bind(sha)
    .bind(environment)
    .fetch_one(db)
    .await
}

/// Records a push whose head commit asks not to be deployed (a skip marker): a deployment that
/// ends at once, cancelled by `slipway` with `reason`, deduplicated like any other (the same
/// commit again is the same row). It supersedes nothing: what was queued still deploys.
pub async fn record_skipped(pool: &PgPool, new: NewDeployment<'_>, reason: &str) -> Result<Created, TransitionError> {
    let environment = new.environment().to_string();
    let NewDeployment { app, sha, git_ref, source, delivery_id, before_sha, .. } = new;
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO deployments (id, app_id, sha, environment, git_ref, source, delivery_id, state, cancel_by, cancel_reason,
                                  published_at, finished_at, before_sha)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'cancelled', 'slipway', $8, now(), now(), $9)
         ON CONFLICT (app_id, sha, environment) WHERE source NOT IN ('rollback', 'config', 'promotion', 'restore', 'preview', 'teardown') AND sha <> ''
         DO NOTHING RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(app.id)
    .bind(sha)
    .bind(&environment)
    .bind(git_ref)
    .bind(source)
    .bind(delivery_id)
    .bind(format!("skipped: {reason}"))
    .bind(before_sha)
    .fetch_optional(pool)
    .await?;
    match inserted {
        Some(id) => Ok(Created::New { id, superseded: Vec::new() }),
        None => Ok(Created::Existing(existing(pool, app, sha, &environment).await?)),
    }
}

/// Whether deployment `d` deploys only while its commit is the branch's head
/// ([`Job::head_only`]): a push of a branch (from a forge, or the reconcile's view of one) that
/// names the commit before it, or any such push once the app's pushes do (every forge push but
/// a branch's creation or a forced push names it; a late creation is then checked too). A push
/// supersedes only the queued ones of these it is known to come after.
const HEAD_ONLY: &str = "(d.source IN ('github', 'gitlab', 'bitbucket', 'gitea', 'reconcile')
                          AND d.git_ref LIKE 'refs/heads/%' AND d.sha <> ''
                          AND (d.before_sha IS NOT NULL
                               OR EXISTS (SELECT 1 FROM deployments h WHERE h.app_id = d.app_id
                                          AND h.environment = d.environment AND h.before_sha IS NOT NULL)))";

/// Whether a deployment about to be recorded is a push of a branch (the first part of
/// [`HEAD_ONLY`]).
fn branch_push(source: &str, git_ref: &str, sha: &str) -> bool {
    ["github", "gitlab", "bitbucket", "gitea", "reconcile"].contains(&source)
        && git_ref.starts_with("refs/heads/")
        && !sha.is_empty()
}

/// A deployment of the app and environment that a chain of forge pushes leads to from `sha`
/// (each push's `before` is the previous one's commit): a newer commit than `sha`. Only one
/// still queued, running or completed counts. Follows at most 200 pushes.
pub async fn newer_descendant(
    pool: &PgPool,
    app: &App,
    environment: &str,
    sha: &str,
) -> Result<Option<(Uuid, String, String)>, sqlx::Error> {
    sqlx::query_as(
        "WITH RECURSIVE chain (sha, depth) AS (
             SELECT $2::text, 0
             UNION
             SELECT d.sha, c.depth + 1 FROM deployments d JOIN chain c ON d.before_sha = c.sha
             WHERE d.app_id = $1 AND d.environment = $3 AND d.sha <> '' AND c.depth < 200
         )
         SELECT d.id, d.sha, d.state FROM deployments d JOIN chain c ON d.sha = c.sha
         WHERE c.depth > 0 AND d.app_id = $1 AND d.environment = $3 AND d.state IN ('queued', 'running', 'completed')
         ORDER BY c.depth DESC, d.created_at DESC LIMIT 1",
    )
    .bind(app.id)
    .bind(sha)
    .bind(environment)
    .fetch_optional(pool)
    .await
}

/// One deployment with the steps of all its attempts.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<api::DeploymentDetail>, TransitionError> {
    let row = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN apps a ON a.id = d.app_id WHERE d.id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let steps = sqlx::query_as::<_, StepRow>(
        "SELECT attempt, step, status, started_at, finished_at, error FROM deployment_steps
         WHERE deployment_id = $1 ORDER BY attempt, started_at NULLS LAST",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let steps = steps.into_iter().map(|s| s.view(id)).collect::<Result<_, _>>()?;
    Ok(Some(api::DeploymentDetail { deployment: row.view()?, steps }))
}

/// The newest deployments, of one app or of all.
pub async fn list(pool: &PgPool, app: Option<&str>, limit: i64) -> Result<Vec<api::Deployment>, TransitionError> {
    let rows = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN apps a ON a.id = d.app_id
         WHERE $1::text IS NULL OR a.name = $1 ORDER BY d.created_at DESC LIMIT $2"
    )))
    .bind(app)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Row::view).collect()
}

/// The app's completed deployments in its own environment (not its previews), newest first.
pub async fn completed(pool: &PgPool, app: &str, limit: i64) -> Result<Vec<api::Deployment>, TransitionError> {
    let rows = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN apps a ON a.id = d.app_id
         WHERE a.name = $1 AND d.environment = a.environment AND d.state = 'completed'
         ORDER BY d.finished_at DESC LIMIT $2"
    )))
    .bind(app)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Row::view).collect()
}

/// The image digest Slipway pushed for a deployment, if it recorded one.
pub async fn image_digest(pool: &PgPool, id: Uuid) -> Result<Option<String>, sqlx::Error> {
    let digest: Option<Option<String>> =
        sqlx::query_scalar("SELECT image_digest FROM deployments WHERE id = $1").bind(id).fetch_optional(pool).await?;
    Ok(digest.flatten())
}

/// The name of the app a deployment is of, if the deployment exists.
pub async fn app_of(pool: &PgPool, id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT a.name FROM deployments d JOIN apps a ON a.id = d.app_id WHERE d.id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The state of a deployment, if it exists; an unknown stored state is an error.
pub async fn state(pool: &PgPool, id: Uuid) -> Result<Option<State>, TransitionError> {
    let s: Option<String> =
        sqlx::query_scalar("SELECT state FROM deployments WHERE id = $1").bind(id).fetch_optional(pool).await?;
    s.map(|s| State::parse(&s).ok_or(TransitionError::Corrupt { id, column: "state", value: s })).transpose()
}

/// A job to publish, with its deployment's trace context for the message headers.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub job: Job,
    pub traceparent: Option<String>,
}

/// Jobs waiting in the outbox: queued, not yet confirmed published, due, and the oldest of their
/// app and environment, which must have no other deployment published or running: at most one
/// deployment of an app and environment is out with runners at a time.
pub async fn outbox(
    db: impl sqlx::PgExecutor<'_>,
    keyring: &Keyring,
    limit: i64,
) -> Result<Vec<Outgoing>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        trace_parent: Option<String>,
        source: String,
        head_only: bool,
        watch_check: Option<sqlx::types::Json<slipway_proto::WatchCheck>>,
        before_sha: Option<String>,
        live_sha: Option<String>,
        release_command: Option<sqlx::types::Json<slipway_proto::ReleaseRecord>>,
        promoted_from: Option<sqlx::types::Json<slipway_proto::Promotion>>,
        restore_of: Option<sqlx::types::Json<slipway_proto::RestoreSnapshot>>,
        release_config: Option<sqlx::types::Json<crate::releases::Config>>,
        release_sealed: Option<String>,
        deployment_id: Uuid,
        attempt: i32,
        sha: String,
        git_ref: String,
        image_digest: Option<String>,
        /// The deployment's environment: the app's own, or a preview's.
        #[sqlx(rename = "deployment_environment")]
        environment: String,
        #[sqlx(flatten)]
        app: App,
    }
    let rows = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "SELECT d.id AS deployment_id, d.attempt, d.sha, d.git_ref, d.image_digest, d.trace_parent, d.source,
                {HEAD_ONLY} AS head_only,
                d.environment AS deployment_environment,
                d.watch_check, d.before_sha, d.release_command, d.promoted_from, d.restore_of,
                CASE WHEN d.watch_check IS NOT NULL THEN
                    (SELECT l.sha FROM deployments l WHERE l.app_id = d.app_id AND l.environment = d.environment
                     AND l.state = 'completed' AND l.sha <> '' ORDER BY l.finished_at DESC LIMIT 1)
                END AS live_sha,
                a.id, a.name, a.repo_url, a.branch, a.environment, a.target, a.health_path, a.port, a.env,
                a.app_root, a.watch_paths, a.test_network, a.kube_settings, a.created_at, a.sealed, a.secret_names, a.git_username, a.limits, a.edge,
                a.commit_status, a.previews, r.config AS release_config, r.sealed AS release_sealed
         FROM deployments d JOIN apps a ON a.id = d.app_id LEFT JOIN releases r ON r.deployment_id = d.id
         WHERE d.state = 'queued' AND d.published_at IS NULL AND (d.not_before IS NULL OR d.not_before <= now())
           AND NOT EXISTS (SELECT 1 FROM deployments r WHERE r.app_id = d.app_id AND r.environment = d.environment
                           AND r.id <> d.id AND (r.state = 'running'
                                OR (r.state = 'queued' AND (r.published_at IS NOT NULL OR r.created_at < d.created_at))))
         ORDER BY d.created_at LIMIT $1
         FOR UPDATE OF d SKIP LOCKED"
    )))
    .bind(limit)
    .fetch_all(db)
    .await?;
    let mut jobs = Vec::with_capacity(rows.len());
    for r in rows {
        // An app whose secrets cannot be opened (the key is not configured) stays queued: its
        // job is not sent without them, and the operator is told why.
        let release = match (r.release_config, r.release_sealed) {
            (Some(config), Some(sealed)) => Some(crate::releases::Stored { config, sealed }),
            _ => None,
        };
        match r.app.job_app(keyring, release.as_ref(), &r.environment) {
            Ok(app) => jobs.push(Outgoing {
                job: Job {
                    head_only: r.head_only,
                    deployment_id: r.deployment_id,
                    attempt: r.attempt as u32,
                    sha: r.sha,
                    git_ref: r.git_ref,
                    image_digest: r.image_digest,
                    app,
                    rollback: r.source == "rollback" || r.source == "restore",
                    watch: r.watch_check.map(|check| watch_against_live(check.0, r.before_sha, r.live_sha)),
                    release_command: r.release_command.map(|record| record.0),
                    promotion: r.promoted_from.map(|p| p.0),
                    restore: r.restore_of.map(|p| p.0),
                    teardown: r.source == "teardown",
                },
                traceparent: r.trace_parent,
            }),
            Err(err) => {
                tracing::error!(deployment_id = %r.deployment_id, app = %r.app.name, error = %err, "cannot open the app's secrets; its job waits")
            }
        }
    }
    Ok(jobs)
}

/// The watch check as the runner gets it: the push's own list of changed files is what changed
/// since the live commit only when the push came right after it; otherwise the runner diffs the
/// new commit against the live one. Nothing live: no base, so the push deploys.
fn watch_against_live(
    check: slipway_proto::WatchCheck,
    before_sha: Option<String>,
    live_sha: Option<String>,
) -> slipway_proto::WatchCheck {
    let paths = check.paths.filter(|_| before_sha.is_some() && before_sha == live_sha);
    slipway_proto::WatchCheck { paths, base: live_sha }
}

/// Marks the outbox row of (id, attempt) as published; false if it moved on meanwhile.
pub async fn mark_published(db: impl sqlx::PgExecutor<'_>, id: Uuid, attempt: u32) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE deployments SET published_at = now() WHERE id = $1 AND attempt = $2 AND state = 'queued' AND published_at IS NULL")
        .bind(id)
        .bind(attempt as i32)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_proto::WatchCheck;

    #[test]
    fn the_forges_list_counts_only_for_a_push_right_after_the_live_commit() {
        let listed = WatchCheck { paths: Some(vec!["api/a.go".into()]), base: None };
        let (a, b) = (Some("a".repeat(40)), Some("b".repeat(40)));
        let check = |before: &Option<String>, live: &Option<String>| {
            watch_against_live(listed.clone(), before.clone(), live.clone())
        };
        assert_eq!(check(&a, &a), WatchCheck { paths: listed.paths.clone(), base: a.clone() });
        // Another commit is live (an earlier push was superseded or failed): diff through git.
        assert_eq!(check(&a, &b), WatchCheck { paths: None, base: b.clone() });
        // A forced push or a new branch names no parent; nothing live: the push deploys.
        assert_eq!(check(&None, &b), WatchCheck { paths: None, base: b });
        assert_eq!(check(&a, &None), WatchCheck { paths: None, base: None });
    }
}
