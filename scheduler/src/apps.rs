//! Registered apps: validation of what users send, and their rows in PostgreSQL.

use std::collections::BTreeMap;

use slipway_proto::api::REDACTED;
use slipway_proto::{JobApp, TargetKind, validate_dns_label};
use sqlx::PgPool;
use uuid::Uuid;

use crate::seal::{AppSecrets, Keyring, SealError, app_context};

pub use slipway_proto::api::NewApp;

/// A registered app as stored: plain values in the clear, every secret sealed in `sealed`
/// ([`AppSecrets`]); [`App::view`] is what the API shows.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct App {
    pub id: Uuid,
    pub name: String,
    pub repo_url: String,
    pub branch: String,
    pub environment: String,
    pub target: String,
    pub health_path: String,
    pub port: i32,
    /// The plain variables; the secret ones are in `sealed`, named in `secret_names`.
    pub env: sqlx::types::Json<BTreeMap<String, String>>,
    pub app_root: String,
    /// Globs of the files whose changes deploy the app (empty: every push).
    pub watch_paths: Vec<String>,
    pub test_network: bool,
    /// Kubernetes settings with the values of `secret_env` replaced by [`REDACTED`].
    pub kube_settings: Option<sqlx::types::Json<serde_json::Value>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub sealed: Option<String>,
    pub secret_names: Vec<String>,
    pub git_username: Option<String>,
    pub limits: Option<sqlx::types::Json<slipway_proto::message::Limits>>,
    pub edge: Option<sqlx::types::Json<slipway_proto::message::EdgeSettings>>,
    /// Where the app's latest completed deployment answers (its stable address on the edge).
    #[sqlx(default)]
    pub url: Option<String>,
    /// Where its deployments are reported as commit statuses (the token is sealed).
    #[sqlx(default)]
    pub commit_status: Option<sqlx::types::Json<crate::status::Settings>>,
    /// Its preview environments for pull requests, when it has them.
    #[sqlx(default)]
    pub previews: Option<sqlx::types::Json<slipway_proto::api::PreviewSettings>>,
}

/// Why an app was refused.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Name(#[from] slipway_proto::NameError),
    #[error("{0}")]
    Invalid(String),
    #[error("an app named `{0}` already exists")]
    Exists(String),
    #[error("sealing the app's secrets: {0}")]
    Seal(#[from] SealError),
    #[error("database error")]
    Db(#[source] sqlx::Error),
}

/// Checks every field of a new app; the first problem found is the error.
pub fn validate(new: &NewApp) -> Result<(), AppError> {
    validate_dns_label("app name", &new.name)?;
    validate_dns_label("environment", &new.environment)?;
    let invalid = |m: &str| Err(AppError::Invalid(m.to_string()));
    if TargetKind::parse(&new.target).is_none() {
        return invalid("target must be `docker` or `kubernetes`");
    }
    if !(1..=65535).contains(&new.port) {
        return invalid("port must be between 1 and 65535");
    }
    if !new.health_path.starts_with('/')
        || new.health_path.len() > 1024
        || new.health_path.chars().any(|c| c.is_control() || c == ' ')
    {
        return invalid("health_path must be an absolute URL path such as /healthz");
    }
    if !is_branch_name(&new.branch) {
        return invalid(
            "branch must be a branch name such as `main` (not a full ref), valid for `git check-ref-format`",
        );
    }
    validate_repo_url(&new.repo_url)?;
    let root_parts: Vec<&str> = new.app_root.split('/').collect();
    if new.app_root.starts_with('/')
        || new.app_root.len() > 255
        || root_parts.contains(&"..")
        || new.app_root.chars().any(|c| c.is_control() || c == '\\')
    {
        return invalid("app_root must be a relative directory inside the repository, such as apps/web");
    }
    slipway_git::watch::WatchPaths::new(&new.watch_paths).map_err(AppError::Invalid)?;
    if let Some(asked) = &new.commit_status {
        crate::status::resolve(asked, &new.repo_url).map_err(AppError::Invalid)?;
    }
    if slipway_proto::preview_number(&new.environment).is_some() {
        return invalid(
            "environment `pr-<number>` is kept for pull request previews; name the app's environment otherwise",
        );
    }
    if let Some(previews) = &new.previews {
        previews.validate().map_err(AppError::Invalid)?;
    }
    if let Some(settings) = &new.kubernetes {
        let release = slipway_deploy::Release {
            app: new.name.clone(),
            environment: new.environment.clone(),
            deployment_id: Uuid::nil(),
            attempt: 1,
            sha: String::new(),
            image: String::new(),
            port: u16::try_from(new.port).unwrap_or(8080),
            health_path: new.health_path.clone(),
            env: new.env.iter().map(|(k, v)| (k.clone(), v.value().to_string())).collect(),
            limits: None,
            secrets: Vec::new(),
            hosts: Vec::new(),
            drain: None,
            rollback: false,
            settings: Some(settings.clone()),
        };
        if let Err(err) = slipway_deploy::KubeTarget::spec(&release) {
            return Err(AppError::Invalid(format!("kubernetes: {err}")));
        }
    }
    if new.webhook_secret.chars().any(char::is_control) {
        return invalid("webhook_secret must not contain control characters");
    }
    if new.webhook_secret.len() < 16 || new.webhook_secret.len() > 1024 {
        return invalid("webhook_secret must be 16 to 1024 characters");
    }
    validate_env(&new.env)?;
    let min = slipway_proto::message::MIN_SECRET_LEN;
    for (key, value) in kube_secret_env(new.kubernetes.as_ref()) {
        if value.chars().count() < min {
            return Err(AppError::Invalid(format!(
                "kubernetes secret_env `{key}` must be at least {min} characters, so it can be masked in every log"
            )));
        }
    }
    if let Some(edge) = &new.edge {
        edge.validate().map_err(AppError::Invalid)?;
    }
    if let Some(limits) = &new.limits {
        limits.validate().map_err(AppError::Invalid)?;
    }
    if let Some(creds) = &new.git_credentials {
        if creds.token.chars().count() < min || creds.token.len() > 4096 || creds.token.chars().any(char::is_control) {
            return invalid("git_credentials.token must be 6 to 4096 characters without control characters");
        }
        if creds.username.is_empty()
            || creds.username.len() > 256
            || creds.username.chars().any(|c| c.is_control() || c == ':')
        {
            return invalid("git_credentials.username must be 1 to 256 characters without `:` or control characters");
        }
        if !new.repo_url.starts_with("https://") {
            return invalid("git_credentials are only sent over https: the repo_url must be an https:// URL");
        }
    }
    Ok(())
}

/// Checks a whole environment: names, the length of secret values (they are masked in every
/// log), no NUL byte.
fn validate_env(env: &BTreeMap<String, slipway_proto::api::EnvValue>) -> Result<(), AppError> {
    for key in env.keys() {
        let ok = !key.is_empty()
            && key.len() <= 256
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(AppError::Invalid(format!(
                "environment variable name `{}` must match [A-Za-z_][A-Za-z0-9_]*",
                key.chars().take(80).collect::<String>()
            )));
        }
    }
    let min = slipway_proto::message::MIN_SECRET_LEN;
    if let Some((key, _)) = env.iter().find(|(k, v)| v.is_secret(k) && v.value().chars().count() < min) {
        return Err(AppError::Invalid(format!(
            "`{key}` is secret, so its value is masked in every log: it must be at least {min} characters \
             (or mark it plain: {{\"value\": ..., \"secret\": false}})"
        )));
    }
    if let Some((key, _)) = env.iter().find(|(_, v)| v.value().contains('\0')) {
        return Err(AppError::Invalid(format!("environment variable `{key}` must not contain a NUL byte")));
    }
    if env.len() > 500 || env.values().map(|v| v.value().len()).sum::<usize>() > 256 * 1024 {
        return Err(AppError::Invalid("at most 500 variables and 256 KiB of values".into()));
    }
    Ok(())
}

/// Sets and removes variables of `app` (secret values sealed again); the app as it is now.
/// Names to remove that the app does not have are an error, as is a change that changes nothing.
pub async fn update_env(
    pool: &PgPool,
    keyring: &Keyring,
    app: &App,
    change: &slipway_proto::api::EnvChange,
) -> Result<App, AppError> {
    use slipway_proto::api::EnvValue;
    if change.set.is_empty() && change.unset.is_empty() {
        return Err(AppError::Invalid("nothing to change: give variables to set or names to unset".into()));
    }
    let mut secrets = app.secrets(keyring)?;
    let mut env: BTreeMap<String, EnvValue> = app
        .env
        .0
        .iter()
        .map(|(k, v)| (k.clone(), EnvValue::Marked { value: v.clone(), secret: false }))
        .chain(secrets.env.iter().map(|(k, v)| (k.clone(), EnvValue::Marked { value: v.clone(), secret: true })))
        .collect();
    for name in &change.unset {
        if env.remove(name).is_none() {
            return Err(AppError::Invalid(format!(
                "`{}` is not a variable of {}",
                name.chars().take(80).collect::<String>(),
                app.name
            )));
        }
    }
    for (name, value) in &change.set {
        env.insert(name.clone(), value.clone());
    }
    validate_env(&env)?;
    let (secret, plain): (BTreeMap<_, _>, BTreeMap<_, _>) = env.iter().partition(|(k, v)| v.is_secret(k));
    secrets.env = secret.iter().map(|(k, v)| (k.to_string(), v.value().to_string())).collect();
    let plain: BTreeMap<String, String> = plain.iter().map(|(k, v)| (k.to_string(), v.value().to_string())).collect();
    let sealed = keyring.seal_json(&secrets, &app_context(app.id))?;
    let names: Vec<String> = secrets.env.keys().cloned().collect();
    sqlx::query("UPDATE apps SET env = $2, sealed = $3, secret_names = $4 WHERE id = $1")
        .bind(app.id)
        .bind(sqlx::types::Json(&plain))
        .bind(sealed)
        .bind(&names)
        .execute(pool)
        .await
        .map_err(AppError::Db)?;
    get(pool, &app.name).await.map_err(AppError::Db)?.ok_or_else(|| AppError::Invalid("the app was deleted".into()))
}

/// Changes the settings `update` names (the others stay); the app as it is now, and whether a
/// setting the app is deployed with changed (and so a new release is due).
///
/// `commit_status` replaces where statuses go; its token, when given, replaces the sealed one
/// (none keeps it). `previews` replaces the preview settings (open previews stay until their
/// requests close).
pub async fn update_settings(
    pool: &PgPool,
    keyring: &Keyring,
    app: &App,
    update: &slipway_proto::api::AppUpdate,
) -> Result<(App, bool), AppError> {
    let port = update.port.unwrap_or(u32::try_from(app.port).unwrap_or(8080));
    if !(1..=65535).contains(&port) {
        return Err(AppError::Invalid("port must be between 1 and 65535".into()));
    }
    let health_path = update.health_path.clone().unwrap_or_else(|| app.health_path.clone());
    if !health_path.starts_with('/')
        || health_path.len() > 1024
        || health_path.chars().any(|c| c.is_control() || c == ' ')
    {
        return Err(AppError::Invalid("health_path must be an absolute URL path such as /healthz".into()));
    }
    if let Some(limits) = &update.limits {
        limits.validate().map_err(AppError::Invalid)?;
    }
    if let Some(edge) = &update.edge {
        edge.validate().map_err(AppError::Invalid)?;
    }
    if let Some(watch) = &update.watch_paths {
        slipway_git::watch::WatchPaths::new(watch).map_err(AppError::Invalid)?;
    }
    if let Some(previews) = &update.previews {
        previews.validate().map_err(AppError::Invalid)?;
    }
    let commit_status = match &update.commit_status {
        Some(asked) => Some(crate::status::resolve(asked, &app.repo_url).map_err(AppError::Invalid)?),
        None => app.commit_status.as_ref().map(|c| c.0.clone()),
    };
    let sealed = match update.commit_status.as_ref().and_then(|c| c.token.clone()) {
        Some(token) => {
            let mut secrets = app.secrets(keyring)?;
            secrets.status_token = Some(token);
            Some(keyring.seal_json(&secrets, &app_context(app.id))?)
        }
        None => app.sealed.clone(),
    };
    let previews = update.previews.clone().or(app.previews.as_ref().map(|p| p.0.clone()));
    let limits = update.limits.or(app.limits.as_ref().map(|l| l.0));
    let edge = update.edge.clone().or(app.edge.as_ref().map(|e| e.0.clone()));
    let watch_paths = update.watch_paths.clone().unwrap_or_else(|| app.watch_paths.clone());
    let deployed_with_changed = port != u32::try_from(app.port).unwrap_or(0)
        || health_path != app.health_path
        || limits != app.limits.as_ref().map(|l| l.0)
        || edge != app.edge.as_ref().map(|e| e.0.clone());
    sqlx::query(
        "UPDATE apps SET port = $2, health_path = $3, limits = $4, edge = $5, watch_paths = $6, commit_status = $7,
                         sealed = $8, previews = $9
         WHERE id = $1",
    )
    .bind(app.id)
    .bind(port as i32)
    .bind(&health_path)
    .bind(limits.as_ref().map(sqlx::types::Json))
    .bind(edge.as_ref().map(sqlx::types::Json))
    .bind(&watch_paths)
    .bind(commit_status.as_ref().map(sqlx::types::Json))
    .bind(&sealed)
    .bind(previews.as_ref().map(sqlx::types::Json))
    .execute(pool)
    .await
    .map_err(AppError::Db)?;
    let now = get(pool, &app.name)
        .await
        .map_err(AppError::Db)?
        .ok_or_else(|| AppError::Invalid("the app was deleted".into()))?;
    Ok((now, deployed_with_changed))
}

/// Whether `name` is a branch name git accepts (`git check-ref-format --branch`), short form.
pub fn is_branch_name(name: &str) -> bool {
    let bad_char = |c: char| c.is_control() || c == '\u{7f}' || " ~^:?*[\\".contains(c);
    !name.is_empty()
        && name.len() <= 255
        && name != "@"
        && !name.starts_with("refs/")
        && !name.starts_with('-')
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.ends_with('.')
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && !name.chars().any(bad_char)
        && name.split('/').all(|part| !part.starts_with('.') && !part.ends_with(".lock"))
}

/// A repository URL's form: `https://`, `http://`, `git://`, `ssh://` or scp-style, with no
/// credentials in it. Where it points is the outbound guard's to check ([`crate::Shared::check_repo_url`]).
pub fn validate_repo_url(url: &str) -> Result<(), AppError> {
    slipway_proto::outbound::target(url).map(|_| ()).map_err(|e| AppError::Invalid(format!("repo_url: {e}")))
}

/// The form repository URLs are compared in: lowercase scheme and host, no trailing `/` or `.git`.
pub fn normalize_repo_url(url: &str) -> String {
    let trimmed = url.trim().trim_end_matches('/');
    let trimmed = trimmed.strip_suffix(".git").unwrap_or(trimmed);
    match trimmed.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            format!("{}://{}/{}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase(), path)
        }
        None => trimmed.to_string(),
    }
}

/// The `secret_env` of Kubernetes settings, as name and value.
fn kube_secret_env(settings: Option<&serde_json::Value>) -> Vec<(String, String)> {
    let map = settings.and_then(|s| s.get("secret_env")).and_then(|e| e.as_object());
    map.into_iter().flatten().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()
}

/// The settings with each `secret_env` value replaced by `with(name)`.
fn replace_kube_secrets(settings: &serde_json::Value, with: impl Fn(&str) -> Option<String>) -> serde_json::Value {
    let mut settings = settings.clone();
    if let Some(map) = settings.get_mut("secret_env").and_then(|e| e.as_object_mut()) {
        for (name, value) in map.iter_mut() {
            *value = serde_json::Value::String(with(name).unwrap_or_else(|| REDACTED.to_string()));
        }
    }
    settings
}

const APP_COLUMNS: &str =
    "id, name, repo_url, branch, environment, target, health_path, port, env, app_root, watch_paths, test_network,
    kube_settings, created_at, sealed, secret_names, git_username, limits, edge, commit_status, previews";

/// The URL of an app's latest completed deployment, as a column of a query on `apps`.
const APP_URL: &str = "(SELECT d.url FROM deployments d WHERE d.app_id = apps.id AND d.environment = apps.environment
    AND d.state = 'completed'
    ORDER BY d.finished_at DESC LIMIT 1) AS url";

/// Inserts a validated app, its secrets sealed.
pub async fn create(pool: &PgPool, keyring: &Keyring, new: &NewApp) -> Result<App, AppError> {
    validate(new)?;
    let id = Uuid::now_v7();
    let (secret, plain): (BTreeMap<_, _>, BTreeMap<_, _>) = new.env.iter().partition(|(k, v)| v.is_secret(k));
    let secrets = AppSecrets {
        webhook_secret: new.webhook_secret.clone(),
        env: secret.iter().map(|(k, v)| (k.to_string(), v.value().to_string())).collect(),
        kube_secret_env: kube_secret_env(new.kubernetes.as_ref()).into_iter().collect(),
        git: new.git_credentials.clone(),
        status_token: new.commit_status.as_ref().and_then(|c| c.token.clone()),
    };
    let sealed = keyring.seal_json(&secrets, &app_context(id))?;
    let commit_status = match &new.commit_status {
        Some(asked) => Some(crate::status::resolve(asked, &new.repo_url).map_err(AppError::Invalid)?),
        None => None,
    };
    let plain: BTreeMap<String, String> = plain.iter().map(|(k, v)| (k.to_string(), v.value().to_string())).collect();
    let secret_names: Vec<String> = secrets.env.keys().cloned().collect();
    let kube_settings = new.kubernetes.as_ref().map(|s| replace_kube_secrets(s, |_| None));
    let row = sqlx::query_as::<_, App>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO apps (id, name, repo_url, repo_key, branch, environment, target, health_path, port, env, app_root,
                           test_network, kube_settings, sealed, secret_names, git_username, limits, edge, watch_paths,
                           commit_status, previews)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)
         ON CONFLICT (name) DO NOTHING
         RETURNING {APP_COLUMNS}"
    )))
    .bind(id)
    .bind(&new.name)
    .bind(&new.repo_url)
    .bind(normalize_repo_url(&new.repo_url))
    .bind(&new.branch)
    .bind(&new.environment)
    .bind(&new.target)
    .bind(&new.health_path)
    .bind(new.port as i32)
    .bind(sqlx::types::Json(&plain))
    .bind(&new.app_root)
    .bind(new.test_network)
    .bind(kube_settings.as_ref().map(sqlx::types::Json))
    .bind(sealed)
    .bind(&secret_names)
    .bind(new.git_credentials.as_ref().map(|c| c.username.clone()))
    .bind(new.limits.as_ref().map(sqlx::types::Json))
    .bind(new.edge.as_ref().map(sqlx::types::Json))
    .bind(&new.watch_paths)
    .bind(commit_status.as_ref().map(sqlx::types::Json))
    .bind(new.previews.as_ref().map(sqlx::types::Json))
    .fetch_optional(pool)
    .await
    .map_err(AppError::Db)?;
    row.ok_or_else(|| AppError::Exists(new.name.clone()))
}

/// Seals what apps registered before secrets were sealed keep in the clear: the webhook secret,
/// secret-looking variables and Kubernetes `secret_env` values. Runs at start-up; idempotent.
pub async fn seal_legacy(pool: &PgPool, keyring: &Keyring) -> Result<usize, AppError> {
    #[derive(sqlx::FromRow)]
    struct Legacy {
        id: Uuid,
        env: sqlx::types::Json<BTreeMap<String, String>>,
        kube_settings: Option<sqlx::types::Json<serde_json::Value>>,
        webhook_secret: String,
    }
    let mut tx = pool.begin().await.map_err(AppError::Db)?;
    let rows = sqlx::query_as::<_, Legacy>(
        "SELECT id, env, kube_settings, webhook_secret FROM apps WHERE sealed IS NULL AND webhook_secret IS NOT NULL FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(AppError::Db)?;
    for row in &rows {
        let (secret, plain): (BTreeMap<_, _>, BTreeMap<_, _>) =
            row.env.0.clone().into_iter().partition(|(k, _)| slipway_proto::message::is_secret_name(k));
        let settings = row.kube_settings.as_ref().map(|s| &s.0);
        let secrets = AppSecrets {
            webhook_secret: row.webhook_secret.clone(),
            env: secret,
            kube_secret_env: kube_secret_env(settings).into_iter().collect(),
            git: None,
            status_token: None,
        };
        let sealed = keyring.seal_json(&secrets, &app_context(row.id))?;
        sqlx::query(
            "UPDATE apps SET sealed = $2, env = $3, secret_names = $4, kube_settings = $5, webhook_secret = NULL WHERE id = $1",
        )
        .bind(row.id)
        .bind(sealed)
        .bind(sqlx::types::Json(&plain))
        .bind(secrets.env.keys().cloned().collect::<Vec<_>>())
        .bind(settings.map(|s| sqlx::types::Json(replace_kube_secrets(s, |_| None))))
        .execute(&mut *tx)
        .await
        .map_err(AppError::Db)?;
    }
    tx.commit().await.map_err(AppError::Db)?;
    Ok(rows.len())
}

/// Every app, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<App>, sqlx::Error> {
    sqlx::query_as::<_, App>(sqlx::AssertSqlSafe(format!("SELECT {APP_COLUMNS}, {APP_URL} FROM apps ORDER BY name")))
        .fetch_all(pool)
        .await
}

/// One app by name.
pub async fn get(pool: &PgPool, name: &str) -> Result<Option<App>, sqlx::Error> {
    sqlx::query_as::<_, App>(sqlx::AssertSqlSafe(format!("SELECT {APP_COLUMNS}, {APP_URL} FROM apps WHERE name = $1")))
        .bind(name)
        .fetch_optional(pool)
        .await
}

/// One app by id.
pub async fn get_by_id(pool: &PgPool, id: Uuid) -> Result<Option<App>, sqlx::Error> {
    sqlx::query_as::<_, App>(sqlx::AssertSqlSafe(format!("SELECT {APP_COLUMNS}, {APP_URL} FROM apps WHERE id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Apps following `repo_url` (normalized), for webhook verification.
pub async fn following_repo(pool: &PgPool, repo_urls: &[String]) -> Result<Vec<App>, sqlx::Error> {
    let normalized: Vec<String> = repo_urls.iter().map(|u| normalize_repo_url(u)).collect();
    sqlx::query_as::<_, App>(sqlx::AssertSqlSafe(format!(
        "SELECT {APP_COLUMNS} FROM apps WHERE repo_key = ANY($1) ORDER BY name"
    )))
    .bind(&normalized)
    .fetch_all(pool)
    .await
}

impl App {
    /// The app's sealed secrets, opened.
    pub fn secrets(&self, keyring: &Keyring) -> Result<AppSecrets, SealError> {
        match &self.sealed {
            Some(sealed) => keyring.open_json(sealed, &app_context(self.id)),
            None => Err(SealError::Malformed),
        }
    }

    /// The app as the API shows it: secret values as [`REDACTED`].
    pub fn view(&self) -> slipway_proto::api::App {
        let mut env = self.env.0.clone();
        env.extend(self.secret_names.iter().map(|name| (name.clone(), REDACTED.to_string())));
        slipway_proto::api::App {
            id: self.id,
            name: self.name.clone(),
            repo_url: self.repo_url.clone(),
            branch: self.branch.clone(),
            environment: self.environment.clone(),
            target: self.target(),
            health_path: self.health_path.clone(),
            port: u16::try_from(self.port).unwrap_or(8080),
            env,
            secrets: self.secret_names.clone(),
            git_username: self.git_username.clone(),
            limits: self.limits.as_ref().map(|l| l.0),
            edge: self.edge.as_ref().map(|e| e.0.clone()),
            url: self.url.clone(),
            app_root: self.app_root.clone(),
            watch_paths: self.watch_paths.clone(),
            test_network: self.test_network,
            kube_settings: self.kube_settings.as_ref().map(|s| replace_kube_secrets(&s.0, |_| None)),
            commit_status: self.commit_status.as_ref().map(|c| slipway_proto::api::CommitStatus {
                forge: c.forge.clone(),
                api_url: Some(c.api_url.clone()),
                repo: Some(c.repo.clone()),
                token: None,
            }),
            previews: self.previews.as_ref().map(|p| p.0.clone()),
            created_at: self.created_at,
        }
    }

    /// The deploy target; the column's CHECK constraint admits only the two known values.
    pub fn target(&self) -> TargetKind {
        match self.target.as_str() {
            "kubernetes" => TargetKind::Kubernetes,
            _ => TargetKind::Docker,
        }
    }

    /// What a runner needs of this app to deploy `release` (its configuration and secrets), or,
    /// for a deployment recorded before releases were, the app's configuration now. The
    /// repository credentials are always the app's current ones.
    ///
    /// In a preview environment (`pr-<n>`) the previews' variables replace the app's, and the
    /// app's extra hosts stay the app's.
    pub fn job_app(
        &self,
        keyring: &Keyring,
        release: Option<&crate::releases::Stored>,
        environment: &str,
    ) -> Result<JobApp, SealError> {
        let secrets = self.secrets(keyring)?;
        let (config, release_secrets) = match release {
            Some(stored) => (stored.config.0.clone(), stored.secrets(keyring, self.id)?),
            None => {
                let (config, secrets) = crate::releases::current(self, keyring)?;
                (config, secrets)
            }
        };
        let mut env = config.env.clone();
        env.extend(release_secrets.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut secret_names: Vec<String> = release_secrets.env.keys().cloned().collect();
        let mut edge = config.edge.clone();
        if slipway_proto::preview_number(environment).is_some() {
            let overrides = self.previews.as_ref().map(|p| p.0.env.clone()).unwrap_or_default();
            secret_names.retain(|name| !overrides.contains_key(name));
            env.extend(overrides);
            if let Some(edge) = edge.as_mut() {
                edge.hosts.clear();
            }
        }
        let settings = config
            .kube_settings
            .as_ref()
            .map(|s| replace_kube_secrets(s, |k| release_secrets.kube_secret_env.get(k).cloned()));
        Ok(JobApp {
            name: self.name.clone(),
            repo_url: self.repo_url.clone(),
            environment: environment.to_string(),
            target: self.target(),
            port: config.port,
            health_path: config.health_path.clone(),
            env,
            secrets: secret_names,
            git_credentials: secrets.git,
            limits: config.limits,
            edge,
            app_root: self.app_root.clone(),
            watch_paths: self.watch_paths.clone(),
            test_network: self.test_network,
            settings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> NewApp {
        serde_json::from_value(serde_json::json!({
            "name": "web", "repo_url": "https://github.com/acme/web.git", "webhook_secret": "0123456789abcdef"
        }))
        .expect("valid app json")
    }

    #[test]
    fn defaults_are_filled_and_valid() {
        let app = valid();
        assert_eq!((app.branch.as_str(), app.environment.as_str(), app.port), ("main", "production", 8080));
        validate(&app).expect("valid");
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = fn(&mut NewApp);
        let cases: Vec<(Mutation, &str)> = vec![
            (|a| a.name = "Web_App".into(), "app name"),
            (|a| a.environment = "".into(), "environment"),
            (|a| a.target = "nomad".into(), "target"),
            (|a| a.port = 70000, "port"),
            (|a| a.health_path = "health".into(), "health_path"),
            (|a| a.branch = "refs/heads/main".into(), "branch"),
            (|a| a.repo_url = "https://user:token@github.com/a/b".into(), "credentials"),
            (|a| a.repo_url = "file:///etc".into(), "https://"),
            (|a| a.repo_url = "not a url".into(), "repo_url"),
            (|a| a.repo_url = "ext::sh -c id".into(), "repo_url"),
            (|a| a.repo_url = "ssh://git:pw@example.com/r".into(), "password"),
            (
                |a| {
                    let creds =
                        slipway_proto::message::GitCredentials { username: "u".into(), token: "tok-123456".into() };
                    a.git_credentials = Some(creds);
                    a.repo_url = "http://example.com/r".into();
                },
                "https",
            ),
            (
                |a| {
                    a.env.insert("API_TOKEN".into(), slipway_proto::api::EnvValue::Bare("abc".into()));
                },
                "API_TOKEN",
            ),
            (
                |a| {
                    let marked = slipway_proto::api::EnvValue::Marked { value: "x".into(), secret: true };
                    a.env.insert("COLOUR".into(), marked);
                },
                "COLOUR",
            ),
            (|a| a.webhook_secret = "short".into(), "webhook_secret"),
            (|a| a.app_root = "../other".into(), "app_root"),
            (|a| a.app_root = "/abs".into(), "app_root"),
            (|a| a.watch_paths = vec!["services/{api".into()], "`services/{api` is not a glob"),
            (|a| a.watch_paths = vec!["../up/**".into()], "inside the repository"),
            (|a| a.watch_paths = (0..65).map(|i| format!("d{i}/**")).collect(), "at most 64"),
            (|a| a.environment = "pr-12".into(), "kept for pull request previews"),
            (
                |a| a.previews = Some(slipway_proto::api::PreviewSettings { max: 0, ..Default::default() }),
                "previews.max",
            ),
            (
                |a| {
                    a.previews =
                        Some(slipway_proto::api::PreviewSettings { ttl_seconds: Some(1), ..Default::default() })
                },
                "previews.ttl_seconds",
            ),
            (
                |a| {
                    let env = [("9X".to_string(), "v".to_string())].into();
                    a.previews = Some(slipway_proto::api::PreviewSettings { env, ..Default::default() });
                },
                "previews.env",
            ),
            (
                |a| {
                    let env = (0..101).map(|i| (format!("K{i}"), "v".to_string())).collect();
                    a.previews = Some(slipway_proto::api::PreviewSettings { env, ..Default::default() });
                },
                "at most 100",
            ),
            (
                |a| {
                    let env = [("BIG".to_string(), "x".repeat(70_000))].into();
                    a.previews = Some(slipway_proto::api::PreviewSettings { env, ..Default::default() });
                },
                "64 KiB",
            ),
            (|a| a.kubernetes = Some(serde_json::json!({"memory_limit": "lots"})), "memory_limit"),
            (|a| a.kubernetes = Some(serde_json::json!({"host": "not a host"})), "host"),
            (
                |a| {
                    a.env.insert("1BAD".into(), slipway_proto::api::EnvValue::Bare("x".into()));
                },
                "1BAD",
            ),
        ];
        for (mutate, needle) in cases {
            let mut app = valid();
            mutate(&mut app);
            let err = validate(&app).expect_err(needle).to_string();
            assert!(err.contains(needle), "`{err}` should mention `{needle}`");
        }
    }

    #[test]
    fn branch_names_follow_git_check_ref_format() {
        for good in ["main", "feature/login", "release-1.2", "user/jo/fix_3", "v1.0"] {
            assert!(is_branch_name(good), "{good}");
        }
        let long = "a".repeat(256);
        for bad in [
            "",
            "@",
            "a..b",
            "x.lock",
            "a/b.lock/c",
            ".hidden",
            "a/.b",
            "a//b",
            "a/",
            "/a",
            "end.",
            "we@{ird",
            "sp ace",
            "t\tab",
            "col:on",
            "q?",
            "st*r",
            "br[acket",
            "back\\slash",
            "ti~lde",
            "ca^ret",
            "refs/heads/main",
            "-flag",
            long.as_str(),
        ] {
            assert!(!is_branch_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_value::<NewApp>(serde_json::json!({
            "name": "web", "repo_url": "https://x/y", "webhook_secret": "0123456789abcdef", "prot": 80
        }))
        .expect_err("unknown field");
        assert!(err.to_string().contains("prot"), "{err}");
    }

    #[test]
    fn repo_urls_compare_without_case_suffix_or_slash() {
        assert_eq!(normalize_repo_url("https://GitHub.com/Acme/Web.git"), "https://github.com/Acme/Web");
        assert_eq!(normalize_repo_url("https://github.com/Acme/Web/"), "https://github.com/Acme/Web");
        assert_eq!(normalize_repo_url("git://127.0.0.1:9418/app.git"), "git://127.0.0.1:9418/app");
    }
}
