//! Releases: what each deployment deploys, recorded when it is created and never changed. A
//! release is the deployment's image (its `image_digest`, once pushed) plus a snapshot of the
//! app's configuration at that moment: plain variables and deploy settings in the clear
//! ([`Config`]), secret values sealed ([`Secrets`]). Jobs are built from the release, not from
//! the app's current row, so a rollback deploys the old image with the old configuration, and a
//! configuration change (`source = config`) deploys the live image with the new one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use slipway_proto::api;
use slipway_proto::message::{EdgeSettings, Limits};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::apps::App;
use crate::seal::{Keyring, SealError, app_context};

/// The configuration a release deploys with, secrets apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The plain variables.
    pub env: BTreeMap<String, String>,
    /// The names of the secret variables (their values are in the sealed part).
    pub secret_names: Vec<String>,
    pub port: u16,
    pub health_path: String,
    #[serde(default)]
    pub limits: Option<Limits>,
    #[serde(default)]
    pub edge: Option<EdgeSettings>,
    /// Kubernetes settings with `secret_env` values redacted (their values are sealed).
    #[serde(default)]
    pub kube_settings: Option<serde_json::Value>,
}

/// The secret values of a release.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Secrets {
    pub env: BTreeMap<String, String>,
    pub kube_secret_env: BTreeMap<String, String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").field("env", &self.env.keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

/// The context release secrets are sealed in (apart from the app's own secrets).
pub fn context(app_id: Uuid) -> String {
    format!("{}/releases", app_context(app_id))
}

/// A stored release: its configuration and sealed secrets.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stored {
    pub config: sqlx::types::Json<Config>,
    pub sealed: String,
}

impl Stored {
    pub fn secrets(&self, keyring: &Keyring, app_id: Uuid) -> Result<Secrets, SealError> {
        keyring.open_json(&self.sealed, &context(app_id))
    }
}

/// The app's configuration now, as a release would record it.
pub fn current(app: &App, keyring: &Keyring) -> Result<(Config, Secrets), SealError> {
    let secrets = app.secrets(keyring)?;
    let config = Config {
        env: app.env.0.clone(),
        secret_names: app.secret_names.clone(),
        port: u16::try_from(app.port).unwrap_or(8080),
        health_path: app.health_path.clone(),
        limits: app.limits.as_ref().map(|l| l.0),
        edge: app.edge.as_ref().map(|e| e.0.clone()),
        kube_settings: app.kube_settings.as_ref().map(|s| s.0.clone()),
    };
    Ok((config, Secrets { env: secrets.env, kube_secret_env: secrets.kube_secret_env }))
}

/// Why a release could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("the app's secrets cannot be opened: {0}")]
    Seal(#[from] SealError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Records the release of the new deployment `deployment_id` in `tx`: a copy of the release of
/// `copy_of` (a rollback), or the app's configuration now. Returns its version.
pub async fn record(
    tx: &mut PgConnection,
    keyring: &Keyring,
    app: &App,
    deployment_id: Uuid,
    copy_of: Option<Uuid>,
    reason: &str,
    created_by: Option<&str>,
) -> Result<i32, ReleaseError> {
    // Versions are per app: one writer at a time. NO KEY UPDATE, not UPDATE: the deployment
    // just inserted holds a KEY SHARE lock on the app row (its foreign key), and two writers
    // each holding that and asking for UPDATE would deadlock.
    sqlx::query("SELECT id FROM apps WHERE id = $1 FOR NO KEY UPDATE").bind(app.id).execute(&mut *tx).await?;
    let copied: Option<Stored> = match copy_of {
        Some(from) => {
            sqlx::query_as("SELECT config, sealed FROM releases WHERE deployment_id = $1")
                .bind(from)
                .fetch_optional(&mut *tx)
                .await?
        }
        None => None,
    };
    let (config, sealed) = match copied {
        Some(stored) => (stored.config, stored.sealed),
        None => {
            let (config, secrets) = current(app, keyring)?;
            (sqlx::types::Json(config), keyring.seal_json(&secrets, &context(app.id))?)
        }
    };
    let version: i32 = sqlx::query_scalar(
        "INSERT INTO releases (deployment_id, app_id, version, config, sealed, reason, created_by)
         SELECT $1, $2, coalesce(max(version), 0) + 1, $3, $4, $5, $6 FROM releases WHERE app_id = $2
         RETURNING version",
    )
    .bind(deployment_id)
    .bind(app.id)
    .bind(&config)
    .bind(&sealed)
    .bind(reason)
    .bind(created_by)
    .fetch_one(&mut *tx)
    .await?;
    Ok(version)
}

/// Every release of an app, newest first, with its deployment's state and image.
pub async fn list(pool: &sqlx::PgPool, app: &App, limit: i64) -> Result<Vec<api::Release>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        version: i32,
        deployment_id: Uuid,
        state: String,
        source: String,
        sha: String,
        image: Option<String>,
        image_digest: Option<String>,
        reason: String,
        created_by: Option<String>,
        created_at: chrono::DateTime<chrono::Utc>,
        live: bool,
        promoted_to: Vec<String>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT r.version, r.deployment_id, d.state, d.source, d.sha, d.image, d.image_digest, r.reason,
                r.created_by, r.created_at,
                coalesce(d.id = (SELECT l.id FROM deployments l WHERE l.app_id = r.app_id AND l.environment = d.environment
                        AND l.state = 'completed' ORDER BY l.finished_at DESC LIMIT 1), false) AS live,
                array(SELECT a.name || ' v' || pr.version FROM deployments p JOIN apps a ON a.id = p.app_id
                      JOIN releases pr ON pr.deployment_id = p.id
                      WHERE p.promoted_from->>'deployment_id' = r.deployment_id::text ORDER BY pr.created_at) AS promoted_to
         FROM releases r JOIN deployments d ON d.id = r.deployment_id
         WHERE r.app_id = $1 ORDER BY r.version DESC LIMIT $2",
    )
    .bind(app.id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| api::Release {
            version: u32::try_from(r.version).unwrap_or_default(),
            deployment_id: r.deployment_id,
            state: slipway_proto::State::parse(&r.state).unwrap_or(slipway_proto::State::Queued),
            source: r.source,
            sha: r.sha,
            image: r.image,
            image_digest: r.image_digest,
            reason: r.reason,
            created_by: r.created_by,
            created_at: r.created_at,
            live: r.live,
            promoted_to: r.promoted_to,
        })
        .collect())
}

/// The version of the release of deployment `id`, if it has one.
pub async fn version_of(pool: &sqlx::PgPool, id: Uuid) -> Result<Option<u32>, sqlx::Error> {
    let version: Option<i32> = sqlx::query_scalar("SELECT version FROM releases WHERE deployment_id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(version.and_then(|v| u32::try_from(v).ok()))
}

/// One release of an app by version.
pub async fn get(pool: &sqlx::PgPool, app: &App, version: u32) -> Result<Option<(Uuid, Stored)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        deployment_id: Uuid,
        #[sqlx(flatten)]
        stored: Stored,
    }
    let row: Option<Row> =
        sqlx::query_as("SELECT deployment_id, config, sealed FROM releases WHERE app_id = $1 AND version = $2")
            .bind(app.id)
            .bind(i32::try_from(version).unwrap_or(i32::MAX))
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|r| (r.deployment_id, r.stored)))
}

/// What changed from release `a` to release `b`: every setting and variable that differs, a
/// secret's value only as "changed" (never shown).
pub fn diff(a: &Config, a_secrets: &Secrets, b: &Config, b_secrets: &Secrets) -> Vec<api::ReleaseChange> {
    let mut out = Vec::new();
    let mut change = |key: String, from: Option<String>, to: Option<String>, secret: bool| {
        if from != to {
            let (from, to) = match secret {
                true => (from.map(|_| api::REDACTED.to_string()), to.map(|_| api::REDACTED.to_string())),
                false => (from, to),
            };
            out.push(api::ReleaseChange { key, from, to, secret });
        }
    };
    change("port".into(), Some(a.port.to_string()), Some(b.port.to_string()), false);
    change("health_path".into(), Some(a.health_path.clone()), Some(b.health_path.clone()), false);
    change("limits".into(), shown(&a.limits), shown(&b.limits), false);
    change("edge".into(), shown(&a.edge), shown(&b.edge), false);
    change("kubernetes".into(), shown(&a.kube_settings), shown(&b.kube_settings), false);
    let names: std::collections::BTreeSet<&String> =
        a.env.keys().chain(a_secrets.env.keys()).chain(b.env.keys()).chain(b_secrets.env.keys()).collect();
    for name in names {
        let value = |plain: &BTreeMap<String, String>, secret: &BTreeMap<String, String>| {
            plain.get(name).cloned().or_else(|| secret.get(name).cloned())
        };
        let secret = a_secrets.env.contains_key(name) || b_secrets.env.contains_key(name);
        change(format!("env.{name}"), value(&a.env, &a_secrets.env), value(&b.env, &b_secrets.env), secret);
    }
    let names: std::collections::BTreeSet<&String> =
        a_secrets.kube_secret_env.keys().chain(b_secrets.kube_secret_env.keys()).collect();
    for name in names {
        let (from, to) = (a_secrets.kube_secret_env.get(name).cloned(), b_secrets.kube_secret_env.get(name).cloned());
        change(format!("kubernetes.secret_env.{name}"), from, to, true);
    }
    out
}

/// A setting as compact JSON (`None` when unset).
fn shown<T: Serialize>(value: &Option<T>) -> Option<String> {
    value.as_ref().and_then(|v| serde_json::to_string(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(env: &[(&str, &str)], port: u16) -> Config {
        Config {
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            secret_names: Vec::new(),
            port,
            health_path: "/healthz".into(),
            limits: None,
            edge: None,
            kube_settings: None,
        }
    }

    fn secrets(env: &[(&str, &str)]) -> Secrets {
        Secrets { env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Default::default() }
    }

    #[test]
    fn a_diff_names_what_changed_and_never_a_secret_value() {
        let a = config(&[("GREETING", "one"), ("GONE", "x")], 8080);
        let b = config(&[("GREETING", "two"), ("NEW", "y")], 9090);
        let (sa, sb) = (secrets(&[("API_TOKEN", "tok-old-123456")]), secrets(&[("API_TOKEN", "tok-new-654321")]));
        let changes = diff(&a, &sa, &b, &sb);
        let shown: Vec<(String, Option<String>, Option<String>)> =
            changes.iter().map(|c| (c.key.clone(), c.from.clone(), c.to.clone())).collect();
        assert_eq!(
            shown,
            [
                ("port".to_string(), Some("8080".to_string()), Some("9090".to_string())),
                ("env.API_TOKEN".into(), Some("***".into()), Some("***".into())),
                ("env.GONE".into(), Some("x".into()), None),
                ("env.GREETING".into(), Some("one".into()), Some("two".into())),
                ("env.NEW".into(), None, Some("y".into())),
            ]
        );
        let text = serde_json::to_string(&changes).expect("json");
        assert!(!text.contains("tok-old") && !text.contains("tok-new"), "{text}");
        assert!(diff(&a, &sa, &a, &sa).is_empty(), "a release does not differ from itself");
        // The same secret value is no change, even when its name moved from plain to secret.
        assert!(diff(&a, &sa, &a, &sa.clone()).is_empty());
        let plain_to_secret = diff(&config(&[("K", "v")], 1), &secrets(&[]), &config(&[], 1), &secrets(&[("K", "v")]));
        assert!(plain_to_secret.is_empty(), "{plain_to_secret:?}");
    }
}
