//! API tokens: every route but `/healthz` and the webhook receivers (which check their forge's
//! signature) needs `Authorization: Bearer <token>`. A token is 32 random bytes shown once;
//! PostgreSQL keeps only its SHA-256 (a random 256-bit secret needs no slow hash), its name, its
//! role, an optional app scope and expiry, and when it was revoked. The first admin token comes
//! from `SLIPWAY_ADMIN_TOKEN`, or is created on first start and written to a 0600 file.

use std::path::Path;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use ring::rand::{SecureRandom, SystemRandom};
use slipway_proto::api::{self, Role};
use sqlx::PgPool;
use uuid::Uuid;

use crate::Shared;
use crate::api::ApiError;

/// Every token starts with this, so secret scanners and people can tell what it is.
pub const TOKEN_PREFIX: &str = "slw_";

/// The shortest `SLIPWAY_ADMIN_TOKEN` accepted.
pub const MIN_TOKEN_LEN: usize = 32;

/// The token a request was made with.
#[derive(Debug, Clone)]
pub struct Caller {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    /// The one app the token may act on; `None` for every app.
    pub app: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Caller {
    /// 403 unless the token's role is at least `role` and it may act on `app` (`None`: an action
    /// on no single app, which an app-scoped token may not take unless it only reads).
    pub fn require(&self, role: Role, app: Option<&str>) -> Result<(), ApiError> {
        if self.role < role {
            return Err(ApiError::Forbidden(format!(
                "token `{}` is a {}; this needs a {} token",
                self.name,
                self.role.as_str(),
                role.as_str()
            )));
        }
        match (&self.app, app) {
            (None, _) => Ok(()),
            (Some(scope), Some(app)) if scope == app => Ok(()),
            (Some(scope), Some(_)) => {
                Err(ApiError::Forbidden(format!("token `{}` may act only on app `{scope}`", self.name)))
            }
            (Some(scope), None) => {
                Err(ApiError::Forbidden(format!("token `{}` may act only on app `{scope}`", self.name)))
            }
        }
    }

    /// Whether the token may see `app`.
    pub fn sees(&self, app: &str) -> bool {
        self.app.as_deref().is_none_or(|scope| scope == app)
    }
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Shared) -> Result<Self, Self::Rejection> {
        // Set by [`authenticate`], which guards every route that takes a `Caller`.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("authentication required".into()))
    }
}

/// A new random token.
pub fn generate() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).map_err(|_| ApiError::Unavailable("the random source failed".into()))?;
    Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// What is stored of a token.
pub fn hash(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref().to_vec()
}

/// The bearer token of a request, if it has one.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let value = value.to_str().map_err(|_| ApiError::Unauthorized("the Authorization header is not text".into()))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthorized("use `Authorization: Bearer <token>`".into()));
    }
    Ok(Some(token.trim()))
}

/// The middleware in front of every authenticated route: 401 without a valid token (a bearer
/// token, or the dashboard's session cookie); a viewer may only read (GET). A change made with
/// the cookie must carry [`crate::dashboard::CSRF_HEADER`]. Handlers check the rest
/// ([`Caller::require`]).
pub async fn authenticate(
    State(shared): State<Shared>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let reads = request.method() == Method::GET || request.method() == Method::HEAD;
    let token = match bearer(request.headers())? {
        Some(token) => token,
        None => {
            let token = crate::dashboard::cookie_token(request.headers())
                .ok_or_else(|| ApiError::Unauthorized("this route needs `Authorization: Bearer <token>`".into()))?;
            let marked = request.headers().get(crate::dashboard::CSRF_HEADER).is_some_and(|v| v.as_bytes() == b"1");
            if !reads && !marked {
                return Err(ApiError::Forbidden(format!(
                    "a change made with the session cookie needs the {} header",
                    crate::dashboard::CSRF_HEADER
                )));
            }
            token
        }
    };
    if token.len() > 512 {
        return Err(ApiError::Unauthorized("invalid token".into()));
    }
    let caller = lookup(&shared.pool, token).await?.ok_or_else(|| ApiError::Unauthorized("invalid token".into()))?;
    if !reads && caller.role < Role::Deployer {
        return Err(ApiError::Forbidden(format!("token `{}` is a viewer; it may only read", caller.name)));
    }
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    name: String,
    role: String,
    app: Option<String>,
    created_by: Option<String>,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
}

const TOKEN_COLUMNS: &str = "id, name, role, app, created_by, created_at, expires_at, revoked_at, last_used_at";

impl TokenRow {
    fn view(self) -> Result<api::Token, ApiError> {
        let role = Role::parse(&self.role).ok_or_else(|| ApiError::Corrupt(format!("token role `{}`", self.role)))?;
        Ok(api::Token {
            id: self.id,
            name: self.name,
            role,
            app: self.app,
            created_by: self.created_by,
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            last_used_at: self.last_used_at,
        })
    }
}

/// The live (unrevoked, unexpired) token `token` is, if any; notes its use at most once a minute.
pub(crate) async fn lookup(pool: &PgPool, token: &str) -> Result<Option<Caller>, ApiError> {
    let row = sqlx::query_as::<_, TokenRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens
         WHERE hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
    )))
    .bind(hash(token))
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    sqlx::query(
        "UPDATE api_tokens SET last_used_at = now()
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
    )
    .bind(row.id)
    .execute(pool)
    .await?;
    let token = row.view()?;
    Ok(Some(Caller { id: token.id, name: token.name, role: token.role, app: token.app, expires_at: token.expires_at }))
}

/// Checks a new token's fields.
pub fn validate(new: &api::NewToken) -> Result<(), ApiError> {
    let name_ok = !new.name.is_empty()
        && new.name.len() <= 64
        && new.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if !name_ok {
        return Err(ApiError::Unprocessable("token name must be 1 to 64 letters, digits, '-', '_', '.' or '@'".into()));
    }
    if let Some(app) = &new.app {
        slipway_proto::validate_dns_label("app", app).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    }
    if new.expires_in_days.is_some_and(|d| d == 0 || d > 3650) {
        return Err(ApiError::Unprocessable("expires_in_days must be 1 to 3650".into()));
    }
    Ok(())
}

/// Creates a token; its value is returned once and never stored.
pub async fn create(pool: &PgPool, new: &api::NewToken, created_by: &str) -> Result<api::CreatedToken, ApiError> {
    validate(new)?;
    let token = generate()?;
    let row = sqlx::query_as::<_, TokenRow>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO api_tokens (id, name, role, app, hash, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(days => $7))
         ON CONFLICT (name) WHERE revoked_at IS NULL DO NOTHING
         RETURNING {TOKEN_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(&new.name)
    .bind(new.role.as_str())
    .bind(&new.app)
    .bind(hash(&token))
    .bind(created_by)
    .bind(new.expires_in_days.map(|d| d as i32))
    .fetch_optional(pool)
    .await?;
    let row = row.ok_or_else(|| ApiError::Conflict(format!("a token named `{}` exists; revoke it first", new.name)))?;
    Ok(api::CreatedToken { token, info: row.view()? })
}

/// Every token, newest first (revoked ones too, marked).
pub async fn list(pool: &PgPool) -> Result<Vec<api::Token>, ApiError> {
    let rows = sqlx::query_as::<_, TokenRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC LIMIT 1000"
    )))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(TokenRow::view).collect()
}

/// Revokes the live token named `name`.
pub async fn revoke(pool: &PgPool, name: &str) -> Result<api::Token, ApiError> {
    let row = sqlx::query_as::<_, TokenRow>(sqlx::AssertSqlSafe(format!(
        "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL RETURNING {TOKEN_COLUMNS}"
    )))
    .bind(name)
    .fetch_optional(pool)
    .await?;
    row.ok_or_else(|| {
        ApiError::NotFound(format!("no live token named `{}`", name.chars().take(64).collect::<String>()))
    })?
    .view()
}

/// Makes sure an admin can get in. With `env_token` (`SLIPWAY_ADMIN_TOKEN`), that token is the
/// live token named `admin` (replacing an older `admin`). Without it, when no live admin token
/// exists, a new one is created and written to `file` (0600). Several schedulers starting at
/// once agree through an advisory lock.
pub async fn bootstrap(pool: &PgPool, env_token: Option<&str>, file: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('slipway.bootstrap_admin'))").execute(&mut *tx).await?;
    if let Some(token) = env_token {
        if token.len() < MIN_TOKEN_LEN || token.len() > 512 || !token.chars().all(|c| c.is_ascii_graphic()) {
            anyhow::bail!("SLIPWAY_ADMIN_TOKEN must be {MIN_TOKEN_LEN} to 512 printable characters without spaces");
        }
        let known: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL")
                .bind(hash(token))
                .fetch_optional(&mut *tx)
                .await?;
        if known.is_none() {
            sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE name = 'admin' AND revoked_at IS NULL")
                .execute(&mut *tx)
                .await?;
            insert_admin(&mut tx, token, "SLIPWAY_ADMIN_TOKEN").await?;
            tracing::info!("admin token taken from SLIPWAY_ADMIN_TOKEN");
        }
    } else {
        let admins: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM api_tokens WHERE role = 'admin' AND revoked_at IS NULL
             AND (expires_at IS NULL OR expires_at > now())",
        )
        .fetch_one(&mut *tx)
        .await?;
        if admins == 0 {
            let token = generate().map_err(|e| anyhow::anyhow!("{e}"))?;
            // Written before the commit: a failed commit leaves a stale file the next start
            // overwrites, never a token nobody has.
            crate::seal::write_private(file, &format!("{token}\n"))
                .with_context(|| format!("writing the admin token to {}", file.display()))?;
            sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE name = 'admin' AND revoked_at IS NULL")
                .execute(&mut *tx)
                .await?;
            insert_admin(&mut tx, &token, "first start").await?;
            tracing::warn!(file = %file.display(), "created the first admin token; it is in this file (mode 0600)");
        }
    }
    tx.commit().await?;
    Ok(())
}

async fn insert_admin(tx: &mut sqlx::PgConnection, token: &str, by: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO api_tokens (id, name, role, hash, created_by) VALUES ($1, 'admin', 'admin', $2, $3)")
        .bind(Uuid::now_v7())
        .bind(hash(token))
        .bind(by)
        .execute(tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, app: Option<&str>) -> Caller {
        Caller { id: Uuid::nil(), name: "t".into(), role, app: app.map(str::to_string), expires_at: None }
    }

    #[test]
    fn roles_are_ordered_and_scopes_hold() {
        assert!(caller(Role::Admin, None).require(Role::Deployer, Some("web")).is_ok());
        assert!(caller(Role::Deployer, None).require(Role::Admin, None).is_err());
        assert!(caller(Role::Viewer, None).require(Role::Deployer, Some("web")).is_err());
        assert!(caller(Role::Deployer, Some("web")).require(Role::Deployer, Some("web")).is_ok());
        assert!(caller(Role::Deployer, Some("web")).require(Role::Deployer, Some("api")).is_err());
        assert!(caller(Role::Admin, Some("web")).require(Role::Admin, None).is_err());
        assert!(caller(Role::Viewer, Some("web")).sees("web"));
        assert!(!caller(Role::Viewer, Some("web")).sees("api"));
    }

    #[test]
    fn tokens_are_random_prefixed_and_hashed() {
        let (a, b) = (generate().expect("token"), generate().expect("token"));
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 43, "{a}");
        assert_eq!(hash(&a).len(), 32);
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().expect("header"));
            h
        };
        assert_eq!(bearer(&headers("Bearer abc")).expect("ok"), Some("abc"));
        assert_eq!(bearer(&headers("bearer  abc ")).expect("ok"), Some("abc"));
        assert!(bearer(&headers("Basic abc")).is_err());
        assert!(bearer(&headers("Bearer ")).is_err());
        assert_eq!(bearer(&HeaderMap::new()).expect("ok"), None);
    }

    #[test]
    fn token_fields_are_checked() {
        let new = |name: &str, app: Option<&str>, days: Option<u32>| api::NewToken {
            name: name.into(),
            role: Role::Viewer,
            app: app.map(str::to_string),
            expires_in_days: days,
        };
        assert!(validate(&new("ci-bot", Some("web"), Some(30))).is_ok());
        for bad in [new("", None, None), new("has space", None, None), new(&"x".repeat(65), None, None)] {
            assert!(validate(&bad).is_err(), "{bad:?}");
        }
        assert!(validate(&new("a", Some("Not_An_App"), None)).is_err());
        assert!(validate(&new("a", None, Some(0))).is_err());
        assert!(validate(&new("a", None, Some(100_000))).is_err());
    }
}
