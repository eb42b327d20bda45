//! Preview environments: a pull request (merge request) against the branch an app follows
//! deploys its head as the app's environment `pr-<number>` (its own container and address, the
//! app's configuration with the previews' variables); closing or merging it tears the preview
//! down, as does an idle time past the app's TTL. Requests from forks are refused unless the app
//! allows them (their code would get the app's secrets); past the app's limit of open previews a
//! request is refused with the reason. Each request is one `previews` row, which is also what
//! deduplicates its deployments (the same head of an open request deploys once); a teardown is a
//! deployment too (source `teardown`), so it is fenced, retried and queued behind the preview's
//! own rollout like any other.

use std::time::Duration;

use slipway_proto::api::{self, PreviewSettings};
use slipway_proto::preview_environment;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Shared;
use crate::apps::App;
use crate::deployments::{self, Created, NewDeployment};
use crate::forge::{Forge, PullAction, PullRequest};
use crate::transition::TransitionError;

/// What a pull request event did to one app's previews.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A deployment of the head (new, or the one recorded for the same head before).
    Deployed(Created),
    /// A teardown of the preview was queued.
    TornDown(Created),
    /// Not built, and why (recorded on the preview, shown in `slipway previews`).
    Refused(String),
    /// Nothing to do, and why.
    Nothing(String),
}

/// The app's preview settings, when previews are on.
fn settings(app: &App) -> Option<&PreviewSettings> {
    app.previews.as_ref().map(|p| &p.0).filter(|p| p.enabled)
}

/// Applies one pull request event of `forge` to `app`'s previews.
pub async fn take(
    shared: &Shared,
    app: &App,
    forge: Forge,
    delivery_id: Option<&str>,
    pull: &PullRequest,
) -> Result<Outcome, TransitionError> {
    let Some(settings) = settings(app) else {
        return Ok(Outcome::Nothing(format!("{} has no previews", app.name)));
    };
    match pull.action {
        PullAction::Deploy => open(shared, app, settings, forge, delivery_id, pull).await,
        PullAction::Close { merged } => {
            let reason = if merged { "the pull request was merged" } else { "the pull request was closed" };
            close(shared, app, pull.number, "closed", reason, None).await
        }
    }
}

/// Why a request is not built, if it is not: a fork the app does not build, a fork whose head
/// cannot be fetched from the app's repository.
fn refusal(settings: &PreviewSettings, forge: Forge, pull: &PullRequest) -> Option<String> {
    if pull.from_fork && !settings.forks {
        return Some(
            "the pull request comes from a fork, and previews.forks is off: its code would run with the app's secrets"
                .into(),
        );
    }
    if pull.from_fork && forge == Forge::Bitbucket {
        return Some(
            "Bitbucket keeps a fork's branch in the fork only: it cannot be fetched from the app's repository".into(),
        );
    }
    None
}

async fn open(
    shared: &Shared,
    app: &App,
    settings: &PreviewSettings,
    forge: Forge,
    delivery_id: Option<&str>,
    pull: &PullRequest,
) -> Result<Outcome, TransitionError> {
    let environment = preview_environment(pull.number);
    let head_sha = pull.head_sha.clone().unwrap_or_default();
    let mut tx = shared.pool.begin().await?;
    // One writer of the app's previews at a time: the limit counts what is committed.
    sqlx::query("SELECT id FROM apps WHERE id = $1 FOR UPDATE").bind(app.id).execute(&mut *tx).await?;
    let was_open: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM previews WHERE app_id = $1 AND number = $2 AND state = 'open')",
    )
    .bind(app.id)
    .bind(pull.number as i64)
    .fetch_one(&mut *tx)
    .await?;
    let open_others: i64 =
        sqlx::query_scalar("SELECT count(*) FROM previews WHERE app_id = $1 AND state = 'open' AND number <> $2")
            .bind(app.id)
            .bind(pull.number as i64)
            .fetch_one(&mut *tx)
            .await?;
    // An open preview keeps its place under the limit when it is updated.
    let refused = refusal(settings, forge, pull).or_else(|| {
        (!was_open && open_others >= i64::from(settings.max)).then(|| {
            format!(
                "{} has {open_others} open previews, the most previews.max allows: close one or raise previews.max",
                app.name
            )
        })
    });
    let state = if refused.is_some() { "refused" } else { "open" };
    // The same head of an open request again (a redelivery) changes nothing: no row comes back.
    let changed: Option<bool> = sqlx::query_scalar(
        "INSERT INTO previews (app_id, number, environment, state, reason, forge, head_sha, head_ref, title, author, from_fork)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (app_id, number) DO UPDATE SET state = EXCLUDED.state, reason = EXCLUDED.reason,
             forge = EXCLUDED.forge, head_sha = EXCLUDED.head_sha, head_ref = EXCLUDED.head_ref,
             title = EXCLUDED.title, author = EXCLUDED.author, from_fork = EXCLUDED.from_fork,
             updated_at = now(), closed_at = NULL
         WHERE previews.state <> EXCLUDED.state OR previews.head_sha <> EXCLUDED.head_sha OR EXCLUDED.head_sha = ''
         RETURNING true",
    )
    .bind(app.id)
    .bind(pull.number as i64)
    .bind(&environment)
    .bind(state)
    .bind(&refused)
    .bind(forge.as_str())
    .bind(&pull.head)
    .bind(&pull.head_ref)
    .bind(&pull.title)
    .bind(&pull.author)
    .bind(pull.from_fork)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    if let Some(reason) = refused {
        tracing::info!(app = %app.name, number = pull.number, reason = %reason, "preview refused");
        if was_open {
            // Deployed before under other settings: what serves it goes too.
            let torn = teardown(shared, app, pull.number, &pull.head_ref, &reason).await?;
            return Ok(Outcome::TornDown(torn));
        }
        return Ok(Outcome::Refused(reason));
    }
    if changed.is_none() {
        let recorded: Option<Uuid> =
            sqlx::query_scalar("SELECT deployment_id FROM previews WHERE app_id = $1 AND number = $2")
                .bind(app.id)
                .bind(pull.number as i64)
                .fetch_one(&shared.pool)
                .await?;
        // The same head is open: its deployment, or a concurrent delivery that is making it.
        return Ok(match recorded {
            Some(id) => Outcome::Deployed(Created::Existing(id)),
            None => Outcome::Nothing(format!("pr-{} at this head is being recorded by another delivery", pull.number)),
        });
    }
    let new = NewDeployment {
        environment: Some(&environment),
        delivery_id,
        pushed_by: pull.author.as_deref(),
        ..NewDeployment::of(app, &head_sha, &pull.head_ref, "preview")
    };
    let created = deployments::create(&shared.pool, &shared.keyring, new, shared.policy()).await?;
    let id = match &created {
        Created::New { id, .. } | Created::Existing(id) => *id,
    };
    sqlx::query("UPDATE previews SET deployment_id = $3 WHERE app_id = $1 AND number = $2")
        .bind(app.id)
        .bind(pull.number as i64)
        .bind(id)
        .execute(&shared.pool)
        .await?;
    Ok(Outcome::Deployed(created))
}

/// Ends an open preview (`state` `closed` or `expired`, with `reason`) and queues its teardown.
/// A preview that is not open changes only its record; with `idle_for` (seconds), only one
/// that had no push for that long (a push that came meanwhile keeps it).
async fn close(
    shared: &Shared,
    app: &App,
    number: u64,
    state: &str,
    reason: &str,
    idle_for: Option<u64>,
) -> Result<Outcome, TransitionError> {
    let was: Option<(String, String)> = sqlx::query_as(
        "UPDATE previews p SET state = $3, reason = $4, closed_at = now(), updated_at = now()
         FROM (SELECT state, head_ref, updated_at FROM previews WHERE app_id = $1 AND number = $2 FOR UPDATE) old
         WHERE p.app_id = $1 AND p.number = $2 AND old.state <> 'closed'
           AND ($5::float8 IS NULL OR old.updated_at < now() - make_interval(secs => $5::float8))
         RETURNING old.state, old.head_ref",
    )
    .bind(app.id)
    .bind(number as i64)
    .bind(state)
    .bind(reason)
    .bind(idle_for.map(|s| s as f64))
    .fetch_optional(&shared.pool)
    .await?;
    let Some((was, head_ref)) = was.filter(|(was, _)| was == "open") else {
        return Ok(Outcome::Nothing(format!("{} has no open preview of #{number}", app.name)));
    };
    tracing::info!(app = %app.name, number, was = %was, reason, "preview ends; tearing it down");
    Ok(Outcome::TornDown(teardown(shared, app, number, &head_ref, reason).await?))
}

/// Queues the teardown of preview `number` (a deployment with source `teardown`, superseding
/// its queued deployments) and records it on the preview.
async fn teardown(
    shared: &Shared,
    app: &App,
    number: u64,
    head_ref: &str,
    reason: &str,
) -> Result<Created, TransitionError> {
    let environment = preview_environment(number);
    let why = format!("teardown of {environment}: {reason}");
    let new = NewDeployment {
        environment: Some(&environment),
        reason: Some(&why),
        ..NewDeployment::of(app, "", head_ref, "teardown")
    };
    let created = deployments::create(&shared.pool, &shared.keyring, new, shared.policy()).await?;
    if let Created::New { id, .. } = &created {
        sqlx::query("UPDATE previews SET deployment_id = $3 WHERE app_id = $1 AND number = $2")
            .bind(app.id)
            .bind(number as i64)
            .bind(id)
            .execute(&shared.pool)
            .await?;
    }
    Ok(created)
}

/// The app's previews, open ones first, then the newest.
pub async fn list(pool: &PgPool, app: &App) -> Result<Vec<api::Preview>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        number: i64,
        environment: String,
        state: String,
        reason: Option<String>,
        forge: String,
        head_sha: String,
        head_ref: String,
        title: Option<String>,
        author: Option<String>,
        from_fork: bool,
        deployment_id: Option<Uuid>,
        url: Option<String>,
        opened_at: chrono::DateTime<chrono::Utc>,
        updated_at: chrono::DateTime<chrono::Utc>,
        closed_at: Option<chrono::DateTime<chrono::Utc>>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT p.number, p.environment, p.state, p.reason, p.forge, p.head_sha, p.head_ref, p.title, p.author,
                p.from_fork, p.deployment_id, p.opened_at, p.updated_at, p.closed_at,
                CASE WHEN p.state = 'open' THEN
                    (SELECT d.url FROM deployments d WHERE d.app_id = p.app_id AND d.environment = p.environment
                     AND d.state = 'completed' AND d.source <> 'teardown' ORDER BY d.finished_at DESC LIMIT 1)
                END AS url
         FROM previews p WHERE p.app_id = $1
         ORDER BY p.state = 'open' DESC, p.updated_at DESC LIMIT 200",
    )
    .bind(app.id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| api::Preview {
            app: app.name.clone(),
            number: u64::try_from(r.number).unwrap_or_default(),
            environment: r.environment,
            state: r.state,
            reason: r.reason,
            forge: r.forge,
            head_sha: r.head_sha,
            head_ref: r.head_ref,
            title: r.title,
            author: r.author,
            from_fork: r.from_fork,
            url: r.url,
            deployment_id: r.deployment_id,
            opened_at: r.opened_at,
            updated_at: r.updated_at,
            closed_at: r.closed_at,
        })
        .collect())
}

/// Closes the open preview `number` of `app` by hand (`slipway previews close`).
pub async fn close_by_hand(shared: &Shared, app: &App, number: u64, by: &str) -> Result<Outcome, TransitionError> {
    close(shared, app, number, "closed", &format!("closed by {by}"), None).await
}

/// Tears down the open previews idle past their app's TTL: no push for `ttl_seconds`.
pub async fn expire(shared: &Shared) -> Result<usize, TransitionError> {
    let idle: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT p.app_id, p.number FROM previews p JOIN apps a ON a.id = p.app_id
         WHERE p.state = 'open' AND (a.previews->>'ttl_seconds') IS NOT NULL
           AND p.updated_at < now() - make_interval(secs => (a.previews->>'ttl_seconds')::double precision)",
    )
    .fetch_all(&shared.pool)
    .await?;
    let mut expired = 0;
    for (app_id, number) in idle {
        let Some(app) = crate::apps::get_by_id(&shared.pool, app_id).await? else { continue };
        let ttl = app.previews.as_ref().and_then(|p| p.0.ttl_seconds).unwrap_or_default();
        let reason = format!("no push for {ttl} s (previews.ttl_seconds)");
        if let Outcome::TornDown(Created::New { id, superseded }) =
            close(shared, &app, u64::try_from(number).unwrap_or_default(), "expired", &reason, Some(ttl)).await?
        {
            crate::webhook::announce_queued(shared, id, &app.name, "", &superseded);
            expired += 1;
        }
    }
    Ok(expired)
}

/// The leader's sweep of idle previews, every `every`.
pub async fn run(shared: Shared, every: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if !shared.leader.is_leader() {
            continue;
        }
        match expire(&shared).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(previews = n, "idle previews torn down"),
            Err(err) => tracing::warn!(error = %err, "the preview sweep failed; will retry"),
        }
    }
}
