//! The HTTP surface: routes, the REST handlers for apps and deployments, and error mapping.

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use slipway_proto::api::{self, Role};
use slipway_proto::{CancelRequest, Input, State as DeployState};
use uuid::Uuid;

use crate::apps::{self, AppError, NewApp};
use crate::auth::{self, Caller};
use crate::deployments::{self, Created, NewDeployment};
use crate::forge::Forge;
use crate::transition::{self, Applied, TransitionError};
use crate::{Shared, logs, notify, releases, snapshots, webhook};

/// An error answered to an HTTP client; 5xx bodies are generic and the detail is logged.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("database error")]
    Db(#[from] sqlx::Error),
    /// A stored value the scheduler cannot read; logged with the detail.
    #[error("internal error")]
    Corrupt(String),
    /// The store cannot make sense of a row; logged with the detail.
    #[error("internal error")]
    Internal(#[source] TransitionError),
}

fn error_body(message: &str) -> Json<api::ErrorBody> {
    Json(api::ErrorBody { error: message.to_string() })
}

impl From<TransitionError> for ApiError {
    fn from(err: TransitionError) -> Self {
        match err {
            TransitionError::Db(db) => ApiError::Db(db),
            TransitionError::Unknown(id) => ApiError::NotFound(format!("no deployment {id}")),
            other => ApiError::Internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => {
                let body = error_body(&self.to_string());
                return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
            }
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests(_) | ApiError::Unavailable(_) => {
                let status = match &self {
                    ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                return (status, [(header::RETRY_AFTER, "1")], error_body(&self.to_string())).into_response();
            }
            ApiError::Corrupt(what) => {
                tracing::error!(what = %what, "a stored value cannot be read");
                return (StatusCode::INTERNAL_SERVER_ERROR, error_body("internal error")).into_response();
            }
            ApiError::Db(err) if crate::db::is_unavailable(err) => {
                tracing::warn!(error = %err, "database unavailable; answering 503");
                let body = error_body("the database is unavailable; retry shortly");
                return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], body).into_response();
            }
            ApiError::Db(err) => {
                tracing::error!(error = %err, "request failed on the database");
                return (StatusCode::INTERNAL_SERVER_ERROR, error_body("internal error")).into_response();
            }
            ApiError::Internal(err) => {
                tracing::error!(error = %err, "request failed");
                return (StatusCode::INTERNAL_SERVER_ERROR, error_body("internal error")).into_response();
            }
        };
        (status, error_body(&self.to_string())).into_response()
    }
}

impl From<AppError> for ApiError {
    fn from(err: AppError) -> Self {
        match err {
            AppError::Exists(_) => ApiError::Conflict(err.to_string()),
            AppError::Db(db) => ApiError::Db(db),
            AppError::Seal(seal) => ApiError::Corrupt(seal.to_string()),
            AppError::Name(_) | AppError::Invalid(_) => ApiError::Unprocessable(err.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(rejection.body_text()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(rejection.body_text()),
            _ => ApiError::BadRequest(rejection.body_text()),
        }
    }
}

/// Every route of the scheduler: `/healthz` and the webhook receivers are open (a webhook is
/// checked against its forge's signature); every other route needs a token
/// ([`auth::authenticate`]) and checks its role and app scope.
pub fn router(shared: Shared) -> Router {
    // The webhook handler reads its body itself, within the limit, once it has its turn.
    let webhooks = Router::new()
        .route("/api/v1/webhooks/github", post(webhook::github))
        .route(
            "/api/v1/webhooks/gitlab",
            post(|State(s): State<Shared>, h: HeaderMap, b: Body| webhook::take(Forge::GitLab, s, h, b)),
        )
        .route(
            "/api/v1/webhooks/bitbucket",
            post(|State(s): State<Shared>, h: HeaderMap, b: Body| webhook::take(Forge::Bitbucket, s, h, b)),
        )
        .route(
            "/api/v1/webhooks/gitea",
            post(|State(s): State<Shared>, h: HeaderMap, b: Body| webhook::take(Forge::Gitea, s, h, b)),
        )
        .layer(DefaultBodyLimit::disable());
    let authenticated = Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{name}", delete(revoke_token))
        .route("/api/v1/apps", get(list_apps).post(create_app))
        .route("/api/v1/apps/{name}", get(get_app).patch(update_app))
        .route("/api/v1/apps/{name}/env", axum::routing::patch(change_env))
        .route("/api/v1/apps/{name}/releases", get(list_releases))
        .route("/api/v1/apps/{name}/releases/{from}/diff/{to}", get(diff_releases))
        .route("/api/v1/apps/{name}/deployments", post(deploy_app))
        .route("/api/v1/apps/{name}/rollback", post(rollback_app))
        .route("/api/v1/apps/{name}/promote", post(promote_app))
        .route("/api/v1/apps/{name}/snapshots", get(list_snapshots))
        .route("/api/v1/apps/{name}/snapshots/{snapshot}/restore", post(restore_snapshot))
        .route("/api/v1/apps/{name}/sync", post(sync_app))
        .route("/api/v1/apps/{name}/previews", get(list_previews))
        .route("/api/v1/apps/{name}/previews/{number}/close", post(close_preview))
        .route("/api/v1/apps/{name}/logs", get(crate::applogs::stream))
        .route("/api/v1/apps/{name}/status", get(crate::applogs::status))
        .route("/api/v1/deployments", get(list_deployments))
        .route("/api/v1/deployments/{id}", get(get_deployment))
        .route("/api/v1/deployments/{id}/logs", get(logs::stream))
        .route("/api/v1/deployments/{id}/cancel", post(cancel_deployment))
        .route("/api/v1/notifications/targets", get(list_targets).post(create_target))
        .route("/api/v1/notifications/targets/{name}", delete(delete_target))
        .route("/api/v1/notifications/targets/{name}/test", post(test_target))
        .route("/api/v1/notifications/deliveries", get(list_deliveries))
        .route("/api/v1/queue", get(queue))
        .route("/api/v1/events", get(crate::dashboard::changes))
        .route("/api/v1/runners", get(runners))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), auth::authenticate));
    // The dashboard's files and its sign-in are open; what the pages read is not.
    let dashboard = Router::new()
        .route("/", get(crate::dashboard::asset))
        .route("/assets/app.js", get(crate::dashboard::asset))
        .route("/assets/app.css", get(crate::dashboard::asset))
        .route("/api/v1/session", post(crate::dashboard::sign_in).delete(crate::dashboard::sign_out));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(dashboard)
        .merge(authenticated)
        .layer(DefaultBodyLimit::max(1024 * 1024))
        .merge(webhooks)
        .with_state(shared)
}

/// How long the broker may be out of reach before this replica says it is not ready.
const BROKER_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

/// Readiness: 200 while PostgreSQL answers within two seconds and the relay has (or had within
/// [`BROKER_GRACE`]) a channel to RabbitMQ; 503 otherwise. Open, like the webhooks: load
/// balancers and kubelets ask it without a token; it says nothing but ok or not, and whether
/// this replica leads.
async fn healthz(State(shared): State<Shared>) -> (StatusCode, Json<api::Health>) {
    let query = sqlx::query("SELECT 1").execute(&shared.pool);
    let database = match tokio::time::timeout(std::time::Duration::from_secs(2), query).await {
        Ok(Ok(_)) => "ok",
        _ => "unreachable",
    };
    let broker = match shared.broker.down_since() {
        None => "ok",
        Some(since) if chrono::Utc::now() - since < BROKER_GRACE => "connecting",
        Some(_) => "unreachable",
    };
    let ready = database == "ok" && broker != "unreachable";
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let health = api::Health {
        status: if ready { "ok" } else { "unavailable" }.to_string(),
        database: database.to_string(),
        broker: broker.to_string(),
        leader: shared.leader.is_leader(),
    };
    (status, Json(health))
}

async fn whoami(caller: Caller) -> Json<api::Whoami> {
    Json(api::Whoami { name: caller.name, role: caller.role, app: caller.app, expires_at: caller.expires_at })
}

async fn create_token(
    State(shared): State<Shared>,
    caller: Caller,
    body: Result<Json<api::NewToken>, JsonRejection>,
) -> Result<(StatusCode, Json<api::CreatedToken>), ApiError> {
    caller.require(Role::Admin, None)?;
    let Json(new) = body?;
    let created = auth::create(&shared.pool, &new, &caller.name).await?;
    tracing::info!(token = %created.info.name, role = created.info.role.as_str(), app = created.info.app.as_deref().unwrap_or("*"), by = %caller.name, "API token created");
    Ok((StatusCode::CREATED, Json(created)))
}

async fn list_tokens(State(shared): State<Shared>, caller: Caller) -> Result<Json<Vec<api::Token>>, ApiError> {
    caller.require(Role::Admin, None)?;
    Ok(Json(auth::list(&shared.pool).await?))
}

async fn revoke_token(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<api::Token>, ApiError> {
    caller.require(Role::Admin, None)?;
    let token = auth::revoke(&shared.pool, &name).await?;
    tracing::info!(token = %token.name, by = %caller.name, "API token revoked");
    Ok(Json(token))
}

async fn create_app(
    State(shared): State<Shared>,
    caller: Caller,
    body: Result<Json<NewApp>, JsonRejection>,
) -> Result<(StatusCode, Json<api::App>), ApiError> {
    caller.require(Role::Admin, None)?;
    let Json(new) = body?;
    apps::validate(&new)?;
    shared.check_repo_url(&new.repo_url).await.map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let app = apps::create(&shared.pool, &shared.keyring, &new).await?;
    tracing::info!(app = %app.name, repo = %app.repo_url, by = %caller.name, "app registered");
    Ok((StatusCode::CREATED, Json(app.view())))
}

async fn list_apps(State(shared): State<Shared>, caller: Caller) -> Result<Json<Vec<api::App>>, ApiError> {
    let apps = apps::list(&shared.pool).await?;
    Ok(Json(apps.iter().filter(|a| caller.sees(&a.name)).map(apps::App::view).collect()))
}

/// The app named `name`, if the caller may act on it with `role` (a scope mismatch is a 403;
/// an app that does not exist is a 404 only for a caller who could see it).
async fn app_for(shared: &Shared, caller: &Caller, name: &str, role: Role) -> Result<apps::App, ApiError> {
    caller.require(role, Some(name))?;
    let app = apps::get(&shared.pool, name).await?;
    app.ok_or_else(|| ApiError::NotFound(format!("no app named `{}`", name.chars().take(80).collect::<String>())))
}

async fn get_app(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<api::App>, ApiError> {
    Ok(Json(app_for(&shared, &caller, &name, Role::Viewer).await?.view()))
}

/// `PATCH /api/v1/apps/{name}/env`: sets and removes variables, then deploys the live image
/// with them as a new release (deployer).
async fn change_env(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<api::EnvChange>, JsonRejection>,
) -> Result<(StatusCode, Json<api::ConfigAnswer>), ApiError> {
    let app = app_for(&shared, &caller, &name, Role::Deployer).await?;
    let Json(change) = body?;
    let app = apps::update_env(&shared.pool, &shared.keyring, &app, &change).await?;
    let mut said = Vec::new();
    if !change.set.is_empty() {
        said.push(format!("env set {}", change.set.keys().cloned().collect::<Vec<_>>().join(", ")));
    }
    if !change.unset.is_empty() {
        said.push(format!("env unset {}", change.unset.join(", ")));
    }
    tracing::info!(app = %app.name, by = %caller.name, change = %said.join("; "), "app environment changed");
    config_release(&shared, &app, &caller, &said.join("; ")).await
}

/// `PATCH /api/v1/apps/{name}`: changes settings; a setting the app is deployed with (port,
/// health path, limits, edge) deploys the live image with it as a new release (deployer).
async fn update_app(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<api::AppUpdate>, JsonRejection>,
) -> Result<(StatusCode, Json<api::ConfigAnswer>), ApiError> {
    let app = app_for(&shared, &caller, &name, Role::Deployer).await?;
    let Json(update) = body?;
    let (app, deployed_with_changed) = apps::update_settings(&shared.pool, &shared.keyring, &app, &update).await?;
    let fields =
        serde_json::to_value(&update).ok().and_then(|v| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()));
    let reason = format!("settings changed: {}", fields.unwrap_or_default().join(", "));
    tracing::info!(app = %app.name, by = %caller.name, reason = %reason, "app settings changed");
    if !deployed_with_changed {
        return Ok((StatusCode::OK, Json(api::ConfigAnswer { app: app.view(), deployment_id: None, release: None })));
    }
    config_release(&shared, &app, &caller, &reason).await
}

/// Deploys the live image with the app's configuration now, as a new release (`source =
/// config`, no clone or build); nothing live yet: the next deployment takes the configuration.
async fn config_release(
    shared: &Shared,
    app: &apps::App,
    caller: &Caller,
    reason: &str,
) -> Result<(StatusCode, Json<api::ConfigAnswer>), ApiError> {
    let live = deployments::completed(&shared.pool, &app.name, 1).await?.into_iter().next();
    let Some(live) = live else {
        return Ok((StatusCode::OK, Json(api::ConfigAnswer { app: app.view(), deployment_id: None, release: None })));
    };
    let digest = deployments::image_digest(&shared.pool, live.id).await?;
    let new = NewDeployment {
        image_digest: digest.as_deref(),
        created_by: Some(&caller.name),
        reason: Some(reason),
        ..NewDeployment::of(app, &live.sha, &live.git_ref, "config")
    };
    let id = match deployments::create(&shared.pool, &shared.keyring, new, shared.policy()).await? {
        Created::New { id, superseded } => {
            webhook::announce_queued(shared, id, &app.name, &live.sha, &superseded);
            id
        }
        Created::Existing(id) => id,
    };
    let release = releases::version_of(&shared.pool, id).await?;
    Ok((StatusCode::ACCEPTED, Json(api::ConfigAnswer { app: app.view(), deployment_id: Some(id), release })))
}

/// `POST /api/v1/apps/{name}/promote`: deploys a completed release of this app (default: the
/// one serving) to another app of the same repository, by its image digest, with the other
/// app's configuration (viewer of this app, deployer of the other).
async fn promote_app(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<api::PromoteRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<api::PromoteAnswer>), ApiError> {
    let from = app_for(&shared, &caller, &name, Role::Viewer).await?;
    let Json(req) = body?;
    let to = app_for(&shared, &caller, &req.to, Role::Deployer).await?;
    if to.id == from.id {
        return Err(ApiError::Unprocessable("an app is promoted to another app (another environment)".into()));
    }
    if apps::normalize_repo_url(&to.repo_url) != apps::normalize_repo_url(&from.repo_url) {
        return Err(ApiError::Unprocessable(format!(
            "{} follows another repository than {}: only a build of the same repository can be promoted",
            to.name, from.name
        )));
    }
    let deployment_id = match req.release.as_deref() {
        Some(raw) => {
            let version = raw.strip_prefix('v').unwrap_or(raw).parse::<u32>().ok().ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "`{}` is not a release such as v3",
                    raw.chars().take(20).collect::<String>()
                ))
            })?;
            let found = releases::get(&shared.pool, &from, version).await?;
            found
                .map(|(id, _)| id)
                .ok_or_else(|| ApiError::NotFound(format!("{} has no release v{version}", from.name)))?
        }
        None => deployments::completed(&shared.pool, &from.name, 1)
            .await?
            .into_iter()
            .next()
            .map(|d| d.id)
            .ok_or_else(|| ApiError::Unprocessable(format!("{} has nothing live to promote", from.name)))?,
    };
    let source = deployments::get(&shared.pool, deployment_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such release".into()))?
        .deployment;
    let digest = deployments::image_digest(&shared.pool, deployment_id).await?;
    let (Some(digest), true) = (digest, source.state == DeployState::Completed) else {
        return Err(ApiError::Unprocessable(format!(
            "only a release that went live (completed, its image pushed) can be promoted; this one is {}",
            source.state.as_str()
        )));
    };
    let version = releases::version_of(&shared.pool, deployment_id).await?.unwrap_or(0);
    let promotion = slipway_proto::Promotion { app: from.name.clone(), deployment_id, version, digest: digest.clone() };
    let short: String = source.sha.chars().take(12).collect();
    let reason = format!("promotion of {} v{version} ({short})", from.name);
    let new = NewDeployment {
        created_by: Some(&caller.name),
        reason: Some(&reason),
        promoted_from: Some(&promotion),
        ..NewDeployment::of(&to, &source.sha, &source.git_ref, "promotion")
    };
    let id = match deployments::create(&shared.pool, &shared.keyring, new, shared.policy()).await? {
        Created::New { id, superseded } => {
            webhook::announce_queued(&shared, id, &to.name, &source.sha, &superseded);
            id
        }
        Created::Existing(id) => id,
    };
    tracing::info!(from = %from.name, to = %to.name, version, by = %caller.name, deployment_id = %id, "release promoted");
    let release = releases::version_of(&shared.pool, id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(api::PromoteAnswer {
            deployment_id: id,
            app: to.name.clone(),
            release,
            from_app: from.name,
            from_release: version,
            sha: source.sha,
            digest,
        }),
    ))
}

impl From<notify::TargetError> for ApiError {
    fn from(err: notify::TargetError) -> Self {
        match err {
            notify::TargetError::Invalid(_) => ApiError::Unprocessable(err.to_string()),
            notify::TargetError::Exists(_) => ApiError::Conflict(err.to_string()),
            notify::TargetError::Seal(seal) => ApiError::Corrupt(seal.to_string()),
            notify::TargetError::Db(db) => ApiError::Db(db),
            notify::TargetError::Random => ApiError::Unavailable(err.to_string()),
        }
    }
}

/// A target by name, with the role `role` checked on what it covers: its app (a deployer acts
/// on their app's targets), or every app (an admin's).
async fn target_for(
    shared: &Shared,
    caller: &Caller,
    name: &str,
    role: Role,
) -> Result<(Uuid, Option<Uuid>), ApiError> {
    let not_found =
        || ApiError::NotFound(format!("no notification target `{}`", name.chars().take(80).collect::<String>()));
    let (id, app_id) = notify::find(&shared.pool, name).await?.ok_or_else(not_found)?;
    match app_id {
        Some(app_id) => {
            let app = apps::get_by_id(&shared.pool, app_id).await?.ok_or_else(not_found)?;
            if !caller.sees(&app.name) {
                return Err(not_found());
            }
            caller.require(role, Some(&app.name))?;
        }
        None => caller.require(Role::Admin, None)?,
    }
    Ok((id, app_id))
}

/// `POST /api/v1/notifications/targets`: a target for one app (deployer of that app) or for
/// every app (admin). The answer shows a webhook's signing secret this once.
async fn create_target(
    State(shared): State<Shared>,
    caller: Caller,
    body: Result<Json<api::NewNotificationTarget>, JsonRejection>,
) -> Result<(StatusCode, Json<api::NotificationTargetCreated>), ApiError> {
    let Json(new) = body?;
    let app_id = match &new.app {
        Some(name) => Some(app_for(&shared, &caller, name, Role::Deployer).await?.id),
        None => {
            caller.require(Role::Admin, None)?;
            None
        }
    };
    let created = notify::create(&shared.pool, &shared.keyring, &new, app_id, &caller.name).await?;
    tracing::info!(target = %new.name, kind = %new.kind, app = new.app.as_deref().unwrap_or("*"), by = %caller.name, "notification target created");
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /api/v1/notifications/targets` (viewer): a scoped token sees its app's and the global ones.
async fn list_targets(
    State(shared): State<Shared>,
    caller: Caller,
) -> Result<Json<Vec<api::NotificationTarget>>, ApiError> {
    let scope = match &caller.app {
        Some(name) => Some(apps::get(&shared.pool, name).await?.map(|a| a.id).unwrap_or_else(Uuid::nil)),
        None => None,
    };
    Ok(Json(notify::list(&shared.pool, scope).await?))
}

/// `DELETE /api/v1/notifications/targets/{name}`.
async fn delete_target(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (id, _) = target_for(&shared, &caller, &name, Role::Deployer).await?;
    notify::delete(&shared.pool, id).await?;
    tracing::info!(target = %name, by = %caller.name, "notification target deleted");
    Ok(Json(serde_json::json!({ "deleted": name })))
}

/// `POST /api/v1/notifications/targets/{name}/test`: sends a test event to the target.
async fn test_target(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<api::NotificationTest>), ApiError> {
    let (id, _) = target_for(&shared, &caller, &name, Role::Deployer).await?;
    let delivery_id = notify::enqueue_test(&shared.pool, id, &name, &caller.name).await?;
    Ok((StatusCode::ACCEPTED, Json(api::NotificationTest { delivery_id })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    target: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/v1/notifications/deliveries[?target=NAME]` (viewer): newest first, with the
/// receivers' answers.
async fn list_deliveries(
    State(shared): State<Shared>,
    caller: Caller,
    query: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<api::Delivery>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let target = match &query.target {
        Some(name) => Some(target_for(&shared, &caller, name, Role::Viewer).await?.0),
        None => None,
    };
    let scope = match &caller.app {
        Some(name) => Some(apps::get(&shared.pool, name).await?.map(|a| a.id).unwrap_or_else(Uuid::nil)),
        None => None,
    };
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(notify::deliveries(&shared.pool, target, scope, limit).await?))
}

/// `GET /api/v1/apps/{name}/snapshots`: the app's database snapshots, newest first (viewer).
async fn list_snapshots(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<api::Snapshot>>, ApiError> {
    let app = app_for(&shared, &caller, &name, Role::Viewer).await?;
    Ok(Json(snapshots::list(&shared.pool, &app, 500).await?))
}

/// `POST /api/v1/apps/{name}/snapshots/{snapshot}/restore` (deployer): a deployment that
/// restores the snapshot into the app's database (`pg_restore --clean --if-exists`, in its
/// release step) and then deploys the live release again, so the app reconnects to what was
/// restored. The body must confirm with the app's name.
async fn restore_snapshot(
    State(shared): State<Shared>,
    caller: Caller,
    Path((name, which)): Path<(String, String)>,
    body: Result<Json<api::RestoreRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<api::RestoreAnswer>), ApiError> {
    let app = app_for(&shared, &caller, &name, Role::Deployer).await?;
    let Json(req) = body?;
    if req.confirm != app.name {
        return Err(ApiError::Unprocessable(format!(
            "a restore replaces the database of {}: confirm with the app's name",
            app.name
        )));
    }
    let short = |s: &str| s.chars().take(80).collect::<String>();
    let snapshot = snapshots::find(&shared.pool, &app, &which)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("{} has no snapshot `{}`", app.name, short(&which))))?;
    if let Some(when) = snapshot.pruned_at {
        return Err(ApiError::Unprocessable(format!(
            "snapshot {} was removed by retention at {when}; it cannot be restored",
            snapshot.name
        )));
    }
    let live = deployments::completed(&shared.pool, &app.name, 1).await?.into_iter().next().ok_or_else(|| {
        ApiError::Unprocessable(format!("{} has nothing live: a restore deploys the live release again", app.name))
    })?;
    let digest = deployments::image_digest(&shared.pool, live.id).await?;
    let restore = slipway_proto::RestoreSnapshot { id: snapshot.id, name: snapshot.name.clone() };
    let reason = format!("restore of database snapshot {}", snapshot.name);
    let new = NewDeployment {
        image_digest: digest.as_deref(),
        created_by: Some(&caller.name),
        // The live release, image and configuration, deployed again once the data is back.
        copy_release_of: Some(live.id),
        reason: Some(&reason),
        restore_of: Some(&restore),
        ..NewDeployment::of(&app, &live.sha, &live.git_ref, "restore")
    };
    let id = match deployments::create(&shared.pool, &shared.keyring, new, shared.policy()).await? {
        Created::New { id, superseded } => {
            webhook::announce_queued(&shared, id, &app.name, &live.sha, &superseded);
            id
        }
        Created::Existing(id) => id,
    };
    tracing::warn!(app = %app.name, snapshot = %snapshot.name, by = %caller.name, deployment_id = %id, "database restore requested");
    Ok((StatusCode::ACCEPTED, Json(api::RestoreAnswer { deployment_id: id, snapshot: snapshot.name, sha: live.sha })))
}

/// `GET /api/v1/apps/{name}/releases`: the app's releases, newest first (viewer).
async fn list_releases(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<api::Release>>, ApiError> {
    let app = app_for(&shared, &caller, &name, Role::Viewer).await?;
    Ok(Json(releases::list(&shared.pool, &app, 500).await?))
}

/// `GET /api/v1/apps/{name}/releases/{from}/diff/{to}`: what changed between two releases
/// (`3` or `v3`); secret values never, only that they changed (viewer).
async fn diff_releases(
    State(shared): State<Shared>,
    caller: Caller,
    Path((name, from, to)): Path<(String, String, String)>,
) -> Result<Json<api::ReleaseDiff>, ApiError> {
    let app = app_for(&shared, &caller, &name, Role::Viewer).await?;
    let version = |raw: &str| {
        raw.strip_prefix('v').unwrap_or(raw).parse::<u32>().ok().filter(|v| *v > 0).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "`{}` is not a release version such as v3",
                raw.chars().take(20).collect::<String>()
            ))
        })
    };
    let (a, b) = (version(&from)?, version(&to)?);
    let load = |v: u32| {
        let (shared, app) = (shared.clone(), app.clone());
        async move {
            let found = releases::get(&shared.pool, &app, v).await?;
            let (deployment, stored) =
                found.ok_or_else(|| ApiError::NotFound(format!("{} has no release v{v}", app.name)))?;
            let secrets = stored.secrets(&shared.keyring, app.id).map_err(|e| ApiError::Corrupt(e.to_string()))?;
            let image: Option<String> =
                sqlx::query_scalar("SELECT coalesce(image_digest, image) FROM deployments WHERE id = $1")
                    .bind(deployment)
                    .fetch_one(&shared.pool)
                    .await?;
            Ok::<_, ApiError>((stored.config.0, secrets, image))
        }
    };
    let ((ca, sa, ia), (cb, sb, ib)) = (load(a).await?, load(b).await?);
    let image = (ia != ib).then_some((ia, ib));
    Ok(Json(api::ReleaseDiff { from: a, to: b, image, changes: releases::diff(&ca, &sa, &cb, &sb) }))
}

async fn deploy_app(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<api::DeployRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<api::DeployAnswer>), ApiError> {
    let app = app_for(&shared, &caller, &name, Role::Deployer).await?;
    let Json(req) = body?;
    let sha = match req.sha {
        Some(sha) if webhook::is_sha(&sha) => sha.to_ascii_lowercase(),
        Some(sha) => {
            return Err(ApiError::Unprocessable(format!(
                "`{}` is not a full commit SHA (40 or 64 hex digits)",
                sha.chars().take(80).collect::<String>()
            )));
        }
        // The branch head: the runner resolves it (no git call ever runs in a request).
        None => String::new(),
    };
    let git_ref = format!("refs/heads/{}", app.branch);
    let new = NewDeployment { created_by: Some(&caller.name), ..NewDeployment::of(&app, &sha, &git_ref, "manual") };
    let created = deployments::create(&shared.pool, &shared.keyring, new, shared.policy()).await?;
    let (status, deployment_id, new) = match created {
        Created::New { id, superseded } => {
            webhook::announce_queued(&shared, id, &app.name, &sha, &superseded);
            (StatusCode::ACCEPTED, id, true)
        }
        Created::Existing(id) => (StatusCode::OK, id, false),
    };
    let sha = (!sha.is_empty()).then_some(sha);
    Ok((status, Json(api::DeployAnswer { deployment_id, sha, git_ref, new })))
}

/// Redeploys an earlier successful revision; its image is in the registry, so nothing is rebuilt.
async fn rollback_app(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<api::RollbackRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<api::RollbackAnswer>), ApiError> {
    let app = app_for(&shared, &caller, &name, Role::Deployer).await?;
    let Json(req) = body?;
    let history = deployments::completed(&shared.pool, &name, 200).await?;
    let target = match req.to.as_deref() {
        None => history
            .get(1)
            .ok_or_else(|| ApiError::Unprocessable("no earlier successful deployment to roll back to".into()))?,
        Some(to) => {
            // `v3` (or `3`) names a release of the app.
            let version = to.strip_prefix('v').unwrap_or(to).parse::<u32>().ok().filter(|_| to.len() <= 10);
            let by_version = match version {
                Some(v) => releases::get(&shared.pool, &app, v).await?.map(|(id, _)| id),
                None => None,
            };
            let by_id = Uuid::parse_str(to).ok().or(by_version);
            let sha_prefix = to.len() >= 7 && to.len() <= 64 && to.bytes().all(|b| b.is_ascii_hexdigit());
            history
                .iter()
                .find(|d| Some(d.id) == by_id || (sha_prefix && d.sha.starts_with(&to.to_ascii_lowercase())))
                .ok_or_else(|| {
                    ApiError::Unprocessable(format!(
                        "`{}` names no successful deployment of {name}",
                        to.chars().take(80).collect::<String>()
                    ))
                })?
        }
    };
    let digest = deployments::image_digest(&shared.pool, target.id).await?;
    let version = releases::version_of(&shared.pool, target.id).await?;
    let short: String = target.sha.chars().take(12).collect();
    let rollback_reason = match version {
        Some(v) => format!("rollback to release v{v} ({short})"),
        None => format!("rollback to {short}"),
    };
    let new = NewDeployment {
        image_digest: digest.as_deref(),
        created_by: Some(&caller.name),
        // The image and the configuration it ran with, together.
        copy_release_of: Some(target.id),
        reason: Some(&rollback_reason),
        ..NewDeployment::of(&app, &target.sha, &target.git_ref, "rollback")
    };
    let created = deployments::create(&shared.pool, &shared.keyring, new, shared.policy()).await?;
    let (id, superseded) = match created {
        Created::New { id, superseded } => (id, superseded),
        Created::Existing(id) => (id, Vec::new()),
    };
    webhook::announce_queued(&shared, id, &app.name, &target.sha, &superseded);
    let answer = api::RollbackAnswer { deployment_id: id, sha: target.sha.clone(), rollback_of: target.id };
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    app: Option<String>,
    limit: Option<i64>,
}

async fn list_deployments(
    State(shared): State<Shared>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<api::Deployment>>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    // An app-scoped token lists its app's deployments, whatever it asked for.
    let app = match (&caller.app, q.app.as_deref()) {
        (Some(scope), Some(asked)) if scope != asked => {
            caller.require(Role::Viewer, Some(asked))?;
            None
        }
        (Some(scope), _) => Some(scope.as_str()),
        (None, asked) => asked,
    };
    Ok(Json(deployments::list(&shared.pool, app, limit).await?))
}

/// `POST /api/v1/apps/{name}/sync`: read the app's branch head now (in the background; a head
/// with no deployment is deployed with source `reconcile`). 202 once asked.
async fn sync_app(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    caller.require(Role::Deployer, Some(&name))?;
    if apps::get(&shared.pool, &name).await?.is_none() {
        return Err(ApiError::NotFound(format!("no app named {name}")));
    }
    if !shared.sync.ask(&name) {
        return Err(ApiError::Unavailable("too many syncs are waiting; try again".into()));
    }
    let answer = serde_json::json!({"status": "sync requested", "app": name});
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// `GET /api/v1/apps/{name}/previews`: the app's pull request previews, open ones first (viewer).
async fn list_previews(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<api::Preview>>, ApiError> {
    let app = app_for(&shared, &caller, &name, Role::Viewer).await?;
    Ok(Json(crate::previews::list(&shared.pool, &app).await?))
}

/// `POST /api/v1/apps/{name}/previews/{number}/close`: tears an open preview down now, as if its
/// pull request closed (deployer). 202 with the teardown; 409 when it is not open.
async fn close_preview(
    State(shared): State<Shared>,
    caller: Caller,
    Path((name, number)): Path<(String, String)>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    use crate::previews::Outcome;
    let app = app_for(&shared, &caller, &name, Role::Deployer).await?;
    let number = number.strip_prefix("pr-").unwrap_or(&number);
    let number = number.parse::<u64>().ok().filter(|n| *n > 0 && *n <= i64::MAX as u64).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "`{}` is not a pull request number such as 12",
            number.chars().take(20).collect::<String>()
        ))
    })?;
    match crate::previews::close_by_hand(&shared, &app, number, &caller.name).await? {
        Outcome::TornDown(created) => {
            let id = match created {
                Created::New { id, superseded } => {
                    webhook::announce_queued(&shared, id, &app.name, "", &superseded);
                    id
                }
                Created::Existing(id) => id,
            };
            tracing::info!(app = %app.name, number, by = %caller.name, deployment_id = %id, "preview closed by hand");
            let answer = serde_json::json!({"status": "tearing down", "deployment_id": id, "environment": format!("pr-{number}")});
            Ok((StatusCode::ACCEPTED, Json(answer)))
        }
        Outcome::Nothing(reason) | Outcome::Refused(reason) => Err(ApiError::Conflict(reason)),
        Outcome::Deployed(_) => Err(ApiError::Conflict(format!("preview pr-{number} was not closed"))),
    }
}

/// `GET /api/v1/queue`: every queued deployment, oldest first, with why it waits. An
/// app-scoped token sees its app's, and a summary of those (the runner figures are the fleet's).
async fn queue(State(shared): State<Shared>, caller: Caller) -> Result<Json<api::Queue>, ApiError> {
    let (mut queue, _) = crate::queue::snapshot(&shared.pool, &shared.broker, shared.runner_lost_after).await?;
    if caller.app.is_some() {
        queue.entries.retain(|e| caller.sees(&e.app));
        for (i, e) in queue.entries.iter_mut().enumerate() {
            e.position = i as u32 + 1;
        }
        queue.summary.depth = queue.entries.len() as u32;
        queue.summary.oldest_wait_seconds = queue.entries.first().map(|e| e.wait_seconds);
    }
    Ok(Json(queue))
}

/// `GET /api/v1/runners`: the fleet; for tokens not scoped to an app.
async fn runners(State(shared): State<Shared>, caller: Caller) -> Result<Json<Vec<api::Runner>>, ApiError> {
    caller.require(Role::Viewer, None)?;
    Ok(Json(crate::fleet::list(&shared.pool, shared.runner_lost_after).await?))
}

/// `GET /metrics`: the Prometheus text, for tokens not scoped to an app. The queue and fleet
/// gauges are read from PostgreSQL at each scrape (bounded by 5 s); the counters and histograms
/// are this scheduler's since it started.
async fn metrics(State(shared): State<Shared>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, None)?;
    let Some(handle) = &shared.metrics else {
        return Err(ApiError::NotFound("metrics are off on this scheduler (SLIPWAY_METRICS=false)".into()));
    };
    let gauges = tokio::time::timeout(std::time::Duration::from_secs(5), crate::observe::gauges(&shared)).await;
    match gauges {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "queue gauges not refreshed for this scrape"),
        Err(_) => tracing::warn!("queue gauges not refreshed for this scrape: PostgreSQL took over 5 s"),
    }
    Ok(([(header::CONTENT_TYPE, slipway_telemetry::metrics::CONTENT_TYPE)], handle.render()).into_response())
}

/// Parses a deployment id from a path segment, with a clear error.
pub fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::BadRequest(format!("`{}` is not a deployment id", raw.chars().take(80).collect::<String>()))
    })
}

/// The app a deployment belongs to, if the caller may act on it with `role`; 404 for an id the
/// caller may not see, so a scoped token cannot probe other apps' deployment ids.
pub async fn deployment_app(shared: &Shared, caller: &Caller, id: Uuid, role: Role) -> Result<String, ApiError> {
    let app = deployments::app_of(&shared.pool, id).await?;
    match app {
        Some(app) if caller.sees(&app) => {
            caller.require(role, Some(&app))?;
            Ok(app)
        }
        _ => Err(ApiError::NotFound(format!("no deployment {id}"))),
    }
}

async fn get_deployment(
    State(shared): State<Shared>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<api::DeploymentDetail>, ApiError> {
    let id = parse_id(&raw)?;
    deployment_app(&shared, &caller, id, Role::Viewer).await?;
    let detail =
        deployments::get(&shared.pool, id).await?.ok_or_else(|| ApiError::NotFound(format!("no deployment {id}")))?;
    Ok(Json(detail))
}

/// `POST /api/v1/deployments/{id}/cancel`: a queued deployment is cancelled at once (200); a
/// running one is asked to stop (202) and ends `cancelled` once its runner stopped — or, when
/// its deploy step was already switching traffic, ends as that step did. A finished one is 409.
async fn cancel_deployment(
    State(shared): State<Shared>,
    caller: Caller,
    Path(raw): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<api::CancelAnswer>), ApiError> {
    let id = parse_id(&raw)?;
    deployment_app(&shared, &caller, id, Role::Deployer).await?;
    let body: api::CancelBody = match body.is_empty() {
        true => api::CancelBody::default(),
        false => serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?,
    };
    let reason = body.reason.unwrap_or_default();
    if reason.chars().count() > 500 || reason.chars().any(|c| c.is_control()) {
        return Err(ApiError::Unprocessable("`reason` must be at most 500 printable characters".into()));
    }
    let reason = if reason.trim().is_empty() { "no reason given".to_string() } else { reason.trim().to_string() };
    let request = CancelRequest { by: caller.name.clone(), reason };
    let applied = transition::apply(&shared.pool, id, &Input::Cancel(request), shared.policy()).await?;
    shared.react(&applied);
    let answer = |state, cancel_requested| Json(api::CancelAnswer { deployment_id: id, state, cancel_requested });
    match applied {
        Applied::Changed { note, .. } if note.state == DeployState::Cancelled => {
            Ok((StatusCode::OK, answer(DeployState::Cancelled, true)))
        }
        Applied::Changed { .. } | Applied::Ignored { .. } | Applied::Touched { .. } => {
            Ok((StatusCode::ACCEPTED, answer(DeployState::Running, true)))
        }
        Applied::Rejected { why, .. } => Err(ApiError::Conflict(format!("cannot cancel: {why}"))),
    }
}
