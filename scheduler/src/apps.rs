//! Registered apps: validation of what users send, and their rows in PostgreSQL.

use std::collections::BTreeMap;

use slipway_proto::{JobApp, TargetKind, validate_dns_label};
use sqlx::PgPool;
use uuid::Uuid;

pub use slipway_proto::api::NewApp;

/// A registered app as stored (never with its webhook secret); [`App::view`] is what the API shows.
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
    pub env: sqlx::types::Json<BTreeMap<String, String>>,
    pub app_root: String,
    pub test_network: bool,
    pub kube_settings: Option<sqlx::types::Json<serde_json::Value>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// An app with the secret its webhooks are signed with.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AppWithSecret {
    #[sqlx(flatten)]
    pub app: App,
    pub webhook_secret: String,
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
            env: new.env.clone(),
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
    let min = slipway_proto::message::MIN_SECRET_LEN;
    let short =
        new.env.iter().find(|(k, v)| slipway_proto::message::is_secret_name(k) && !v.is_empty() && v.len() < min);
    if let Some((key, _)) = short {
        return Err(AppError::Invalid(format!(
            "`{key}` looks secret, so its value is masked in every log: it must be at least {min} characters"
        )));
    }
    if let Some((key, _)) = new.env.iter().find(|(_, v)| v.contains('\0')) {
        return Err(AppError::Invalid(format!("environment variable `{key}` must not contain a NUL byte")));
    }
    for key in new.env.keys() {
        let ok = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(AppError::Invalid(format!(
                "environment variable name `{key}` must match [A-Za-z_][A-Za-z0-9_]*"
            )));
        }
    }
    Ok(())
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

/// A repository URL: `https://`, `http://`, `git://` or `ssh://`, with no credentials in it.
pub fn validate_repo_url(url: &str) -> Result<(), AppError> {
    let invalid = |m: &str| Err(AppError::Invalid(m.to_string()));
    let Some((scheme, rest)) = url.split_once("://") else {
        return invalid("repo_url must be a URL such as https://github.com/org/repo.git");
    };
    if !["https", "http", "git", "ssh"].contains(&scheme) {
        return invalid("repo_url scheme must be https, http, git or ssh");
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') && scheme != "ssh" {
        return invalid("repo_url must not contain credentials; give the runner a token instead (SLIPWAY_GIT_TOKEN)");
    }
    if authority.is_empty() || url.len() > 2048 || url.chars().any(|c| c.is_control() || c == ' ') {
        return invalid("repo_url has no host or contains spaces or control characters");
    }
    Ok(())
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

const APP_COLUMNS: &str =
    "id, name, repo_url, branch, environment, target, health_path, port, env, app_root, test_network,
    kube_settings, created_at";

/// Inserts a validated app.
pub async fn create(pool: &PgPool, new: &NewApp) -> Result<App, AppError> {
    validate(new)?;
    let row = sqlx::query_as::<_, App>(
        "INSERT INTO apps (id, name, repo_url, repo_key, branch, environment, target, health_path, port, env, webhook_secret, app_root, test_network, kube_settings)
         VALUES ($1, $2, $3, $11, $4, $5, $6, $7, $8, $9, $10, $12, $13, $14)
         ON CONFLICT (name) DO NOTHING
         RETURNING id, name, repo_url, branch, environment, target, health_path, port, env, app_root, test_network, kube_settings, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(&new.name)
    .bind(&new.repo_url)
    .bind(&new.branch)
    .bind(&new.environment)
    .bind(&new.target)
    .bind(&new.health_path)
    .bind(new.port as i32)
    .bind(sqlx::types::Json(&new.env))
    .bind(&new.webhook_secret)
    .bind(normalize_repo_url(&new.repo_url))
    .bind(&new.app_root)
    .bind(new.test_network)
    .bind(new.kubernetes.as_ref().map(sqlx::types::Json))
    .fetch_optional(pool)
    .await
    .map_err(AppError::Db)?;
    row.ok_or_else(|| AppError::Exists(new.name.clone()))
}

/// Every app, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<App>, sqlx::Error> {
    sqlx::query_as::<_, App>(sqlx::AssertSqlSafe(format!("SELECT {APP_COLUMNS} FROM apps ORDER BY name")))
        .fetch_all(pool)
        .await
}

/// One app by name.
pub async fn get(pool: &PgPool, name: &str) -> Result<Option<App>, sqlx::Error> {
    sqlx::query_as::<_, App>(sqlx::AssertSqlSafe(format!("SELECT {APP_COLUMNS} FROM apps WHERE name = $1")))
        .bind(name)
        .fetch_optional(pool)
        .await
}

/// Apps following `repo_url` (normalized), with their secrets, for webhook verification.
pub async fn following_repo(pool: &PgPool, repo_urls: &[String]) -> Result<Vec<AppWithSecret>, sqlx::Error> {
    let normalized: Vec<String> = repo_urls.iter().map(|u| normalize_repo_url(u)).collect();
    sqlx::query_as::<_, AppWithSecret>(sqlx::AssertSqlSafe(format!(
        "SELECT {APP_COLUMNS}, webhook_secret FROM apps WHERE repo_key = ANY($1) ORDER BY name"
    )))
    .bind(&normalized)
    .fetch_all(pool)
    .await
}

impl App {
    /// The app as the API shows it.
    pub fn view(&self) -> slipway_proto::api::App {
        slipway_proto::api::App {
            id: self.id,
            name: self.name.clone(),
            repo_url: self.repo_url.clone(),
            branch: self.branch.clone(),
            environment: self.environment.clone(),
            target: self.target(),
            health_path: self.health_path.clone(),
            port: u16::try_from(self.port).unwrap_or(8080),
            env: self.env.0.clone(),
            app_root: self.app_root.clone(),
            test_network: self.test_network,
            kube_settings: self.kube_settings.as_ref().map(|s| s.0.clone()),
            created_at: self.created_at,
        }
    }

    /// The deploy target; the column's CHECK constraint admits only the two known values.
    fn target(&self) -> TargetKind {
        match self.target.as_str() {
            "kubernetes" => TargetKind::Kubernetes,
            _ => TargetKind::Docker,
        }
    }

    /// What a runner needs of this app.
    pub fn job_app(&self) -> JobApp {
        JobApp {
            name: self.name.clone(),
            repo_url: self.repo_url.clone(),
            environment: self.environment.clone(),
            target: self.target(),
            port: u16::try_from(self.port).unwrap_or(8080),
            health_path: self.health_path.clone(),
            env: self.env.0.clone(),
            app_root: self.app_root.clone(),
            test_network: self.test_network,
            settings: self.kube_settings.as_ref().map(|s| s.0.clone()),
        }
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
            (|a| a.repo_url = "file:///etc".into(), "scheme"),
            (|a| a.repo_url = "not a url".into(), "repo_url"),
            (|a| a.webhook_secret = "short".into(), "webhook_secret"),
            (|a| a.app_root = "../other".into(), "app_root"),
            (|a| a.app_root = "/abs".into(), "app_root"),
            (|a| a.kubernetes = Some(serde_json::json!({"memory_limit": "lots"})), "memory_limit"),
            (|a| a.kubernetes = Some(serde_json::json!({"host": "not a host"})), "host"),
            (
                |a| {
                    a.env.insert("1BAD".into(), "x".into());
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
