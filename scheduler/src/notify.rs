//! Notifications of deployment events to the team's systems: outbound webhooks signed in the
//! Standard Webhooks format and Slack incoming-webhook messages, per app or for every app.
//!
//! Durable and out of the pipeline's way: a state change writes one delivery per matching target
//! in its own transaction ([`enqueue`]), so a committed change is never told to no one; any
//! scheduler replica sends due deliveries ([`run`], rows claimed with `SKIP LOCKED`), through the
//! outbound guard, with a short timeout, and retries failures with backoff across restarts
//! until they are delivered or out of attempts. Sending never touches a deployment.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use slipway_proto::State;
use slipway_proto::api;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::Shared;
use crate::seal::{Keyring, SealError};

/// The events a target may ask for.
pub const EVENTS: &[&str] =
    &["deploy.queued", "deploy.started", "deploy.completed", "deploy.failed", "deploy.cancelled", "deploy.rolled_back"];

/// Sent by `slipway notifications test`.
pub const TEST_EVENT: &str = "notification.test";

/// Attempts before a delivery is given up (about two hours of backoff).
pub const MAX_ATTEMPTS: i32 = 12;

/// How long a receiver may take to answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a claimed delivery is held before another replica may take it again.
const CLAIM_SECONDS: i32 = 60;

/// Most of a receiver's answer kept with the delivery.
const RESPONSE_LIMIT: usize = 1024;

/// What is sealed of a target.
#[derive(Clone, Serialize, Deserialize)]
struct TargetSecret {
    url: String,
    /// `whsec_<base64>` for webhooks.
    #[serde(default)]
    secret: Option<String>,
}

/// The sealing context of a target (`seal::rotate` reseals in it).
pub fn context(id: Uuid) -> String {
    format!("slipway/notifications/{id}")
}

/// A target's creation that cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    Invalid(String),
    #[error("a notification target named `{0}` exists")]
    Exists(String),
    #[error("sealing the target failed: {0}")]
    Seal(#[from] SealError),
    #[error("database error")]
    Db(#[from] sqlx::Error),
    #[error("the system's random generator failed; try again")]
    Random,
}

/// Checks a new target: its name, kind, URL (https, or http to a host the outbound guard lets
/// through), events and secret. Returns the events to store.
pub fn validate(new: &api::NewNotificationTarget) -> Result<Vec<String>, TargetError> {
    let invalid = |m: String| Err(TargetError::Invalid(m));
    if slipway_proto::validate_dns_label("name", &new.name).is_err() {
        return invalid(format!(
            "name: `{}` must be a DNS label (lowercase letters, digits, '-', at most 63)",
            new.name.chars().take(80).collect::<String>()
        ));
    }
    if !matches!(new.kind.as_str(), "webhook" | "slack") {
        return invalid("kind must be `webhook` or `slack`".into());
    }
    if new.url.len() > 2048 {
        return invalid("url must be at most 2048 characters".into());
    }
    let target = slipway_proto::outbound::target(&new.url).map_err(|e| TargetError::Invalid(format!("url: {e}")))?;
    if !matches!(target.scheme.as_str(), "https" | "http") {
        return invalid("url must be an http(s) URL of at most 2048 characters".into());
    }
    if let Some(secret) = &new.secret {
        let key = secret.strip_prefix("whsec_").and_then(|k| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(k).ok()
        });
        if new.kind != "webhook" || !key.is_some_and(|k| (24..=64).contains(&k.len())) {
            return invalid("secret is for webhooks: `whsec_` and the base64 of 24 to 64 random bytes".into());
        }
    }
    let events =
        if new.events.is_empty() { EVENTS.iter().map(|e| e.to_string()).collect() } else { new.events.clone() };
    if let Some(bad) = events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
        return invalid(format!(
            "events: `{}` is not one of {}",
            bad.chars().take(80).collect::<String>(),
            EVENTS.join(", ")
        ));
    }
    Ok(events)
}

/// `scheme://host[:port]`: what is shown of a URL (its path may hold a token).
fn shown(url: &str) -> String {
    match slipway_proto::outbound::target(url) {
        Ok(t) => format!("{}://{}:{}/…", t.scheme, t.host, t.port),
        Err(_) => "(unreadable)".into(),
    }
}

/// A new random signing secret.
fn new_secret() -> Result<String, TargetError> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut key = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut key).map_err(|_| TargetError::Random)?;
    Ok(format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key)))
}

/// Stores a target; the answer shows its signing secret this once.
pub async fn create(
    pool: &PgPool,
    keyring: &Keyring,
    new: &api::NewNotificationTarget,
    app_id: Option<Uuid>,
    created_by: &str,
) -> Result<api::NotificationTargetCreated, TargetError> {
    let events = validate(new)?;
    let id = Uuid::now_v7();
    let secret = match (new.kind.as_str(), &new.secret) {
        ("webhook", Some(given)) => Some(given.clone()),
        ("webhook", None) => Some(new_secret()?),
        _ => None,
    };
    let sealed = keyring.seal_json(&TargetSecret { url: new.url.clone(), secret: secret.clone() }, &context(id))?;
    let inserted = sqlx::query(
        "INSERT INTO notification_targets (id, name, app_id, kind, url_shown, sealed, events, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO NOTHING",
    )
    .bind(id)
    .bind(&new.name)
    .bind(app_id)
    .bind(&new.kind)
    .bind(shown(&new.url))
    .bind(sealed)
    .bind(&events)
    .bind(created_by)
    .execute(pool)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(TargetError::Exists(new.name.clone()));
    }
    Ok(api::NotificationTargetCreated { name: new.name.clone(), secret })
}

#[derive(sqlx::FromRow)]
struct TargetRow {
    id: Uuid,
    name: String,
    app: Option<String>,
    app_id: Option<Uuid>,
    kind: String,
    url_shown: String,
    events: Vec<String>,
    created_by: Option<String>,
    created_at: DateTime<Utc>,
}

impl TargetRow {
    fn api(self) -> api::NotificationTarget {
        api::NotificationTarget {
            name: self.name,
            app: self.app,
            kind: self.kind,
            url: self.url_shown,
            events: self.events,
            created_by: self.created_by,
            created_at: self.created_at,
        }
    }
}

const TARGETS: &str =
    "SELECT t.id, t.name, a.name AS app, t.app_id, t.kind, t.url_shown, t.events, t.created_by, t.created_at
     FROM notification_targets t LEFT JOIN apps a ON a.id = t.app_id";

/// Every target (`app`: only that app's and the global ones), by name.
pub async fn list(pool: &PgPool, app: Option<Uuid>) -> Result<Vec<api::NotificationTarget>, sqlx::Error> {
    let rows: Vec<TargetRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{TARGETS} WHERE $1::uuid IS NULL OR t.app_id IS NULL OR t.app_id = $1 ORDER BY t.name"
    )))
    .bind(app)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(TargetRow::api).collect())
}

/// A target by name: its id and the app it belongs to (`None`: every app).
pub async fn find(pool: &PgPool, name: &str) -> Result<Option<(Uuid, Option<Uuid>)>, sqlx::Error> {
    let row: Option<TargetRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{TARGETS} WHERE t.name = $1")))
        .bind(name)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| (r.id, r.app_id)))
}

/// Deletes a target (and its deliveries).
pub async fn delete(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM notification_targets WHERE id = $1").bind(id).execute(pool).await.map(|_| ())
}

/// The events a state change tells of.
pub fn events_of(before: State, after: State, rolled_back: bool) -> Vec<&'static str> {
    if before == after {
        return Vec::new();
    }
    match after {
        State::Queued if before == State::Queued => Vec::new(),
        State::Queued => Vec::new(), // a retry: the failure that caused it is not final
        State::Running => vec!["deploy.started"],
        State::Completed => vec!["deploy.completed"],
        State::Failed if rolled_back => vec!["deploy.failed", "deploy.rolled_back"],
        State::Failed => vec!["deploy.failed"],
        State::Cancelled => vec!["deploy.cancelled"],
    }
}

#[derive(sqlx::FromRow)]
struct Facts {
    app: String,
    environment: String,
    sha: String,
    git_ref: String,
    source: String,
    created_by: Option<String>,
    pushed_by: Option<String>,
    state: String,
    attempt: i32,
    url: Option<String>,
    image: Option<String>,
    error_step: Option<String>,
    error_cause: Option<String>,
    error_message: Option<String>,
    rolled_back: bool,
    cancel_reason: Option<String>,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

/// The event's JSON (the webhook body), from the deployment as written; its `link` is filled in
/// when it is sent (the scheduler's public URL).
fn event_json(id: Uuid, event: &str, f: &Facts) -> Value {
    let error = f.error_step.as_ref().map(
        |step| json!({"step": step, "cause": f.error_cause, "message": f.error_message, "rolled_back": f.rolled_back}),
    );
    json!({
        "type": event,
        "timestamp": Utc::now(),
        "data": {
            "deployment_id": id,
            "app": f.app,
            "environment": f.environment,
            "sha": f.sha,
            "ref": f.git_ref,
            "source": f.source,
            "created_by": f.created_by,
            "pushed_by": f.pushed_by,
            "state": f.state,
            "attempt": f.attempt,
            "url": f.url,
            "image": f.image,
            "error": error,
            "cancel_reason": f.cancel_reason,
            "created_at": f.created_at,
            "finished_at": f.finished_at,
        }
    })
}

/// Writes one delivery of each of `events` of deployment `id` per target that asked for it,
/// inside the caller's transaction (the one that made the change).
pub async fn enqueue(conn: &mut PgConnection, id: Uuid, events: &[&str]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let targets: Vec<(Uuid, Vec<String>)> = sqlx::query_as(
        "SELECT t.id, t.events FROM notification_targets t JOIN deployments d ON d.id = $1
         WHERE t.app_id IS NULL OR t.app_id = d.app_id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    // Commit statuses, for an app that reports them and a deployment of a known commit.
    let status_app: Option<Uuid> = sqlx::query_scalar(
        "SELECT a.id FROM deployments d JOIN apps a ON a.id = d.app_id
         WHERE d.id = $1 AND a.commit_status IS NOT NULL AND d.sha <> ''",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let statuses: Vec<&&str> = events.iter().filter(|e| crate::status::Status::of(e).is_some()).collect();
    if targets.is_empty() && (status_app.is_none() || statuses.is_empty()) {
        return Ok(());
    }
    let facts: Facts = sqlx::query_as(
        "SELECT a.name AS app, d.environment, d.sha, d.git_ref, d.source, d.created_by, d.pushed_by, d.state, d.attempt,
                d.url, d.image, d.error_step, d.error_cause, d.error_message, d.rolled_back, d.cancel_reason,
                d.created_at, d.finished_at
         FROM deployments d JOIN apps a ON a.id = d.app_id WHERE d.id = $1",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    for event in events {
        let payload = event_json(id, event, &facts);
        if let Some(app) = status_app.filter(|_| statuses.contains(&event)) {
            sqlx::query(
                "INSERT INTO deliveries (id, app_id, kind, deployment_id, event, payload) VALUES ($1, $2, 'status', $3, $4, $5)",
            )
            .bind(Uuid::now_v7())
            .bind(app)
            .bind(id)
            .bind(*event)
            .bind(&payload)
            .execute(&mut *conn)
            .await?;
        }
        for (target, wanted) in &targets {
            if !wanted.iter().any(|w| w == event) {
                continue;
            }
            sqlx::query(
                "INSERT INTO deliveries (id, target_id, deployment_id, event, payload) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(Uuid::now_v7())
            .bind(target)
            .bind(id)
            .bind(*event)
            .bind(&payload)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// A test event for one target; the delivery's id.
pub async fn enqueue_test(pool: &PgPool, target: Uuid, name: &str, by: &str) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    let payload = json!({
        "type": TEST_EVENT,
        "timestamp": Utc::now(),
        "data": {"target": name, "requested_by": by, "message": "a test of this notification target"},
    });
    sqlx::query("INSERT INTO deliveries (id, target_id, event, payload) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(target)
        .bind(TEST_EVENT)
        .bind(payload)
        .execute(pool)
        .await?;
    Ok(id)
}

/// Deliveries, newest first: of one target, and (`app`) only those about the app: its own
/// targets', and the global targets' of its deployments.
pub async fn deliveries(
    pool: &PgPool,
    target: Option<Uuid>,
    app: Option<Uuid>,
    limit: i64,
) -> Result<Vec<api::Delivery>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: Uuid,
        target: String,
        deployment_id: Option<Uuid>,
        event: String,
        state: String,
        attempts: i32,
        next_at: DateTime<Utc>,
        last_status: Option<i32>,
        last_error: Option<String>,
        last_response: Option<String>,
        created_at: DateTime<Utc>,
        delivered_at: Option<DateTime<Utc>>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT d.id, coalesce(t.name, 'commit-status:' || a.name) AS target, d.deployment_id, d.event, d.state,
                d.attempts, d.next_at, d.last_status, d.last_error, d.last_response, d.created_at, d.delivered_at
         FROM deliveries d LEFT JOIN notification_targets t ON t.id = d.target_id LEFT JOIN apps a ON a.id = d.app_id
         WHERE ($1::uuid IS NULL OR d.target_id = $1)
           AND ($2::uuid IS NULL OR t.app_id = $2 OR d.app_id = $2
                OR (t.app_id IS NULL AND d.deployment_id IN (SELECT id FROM deployments WHERE app_id = $2)))
         ORDER BY d.created_at DESC LIMIT $3",
    )
    .bind(target)
    .bind(app)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| api::Delivery {
            id: r.id,
            target: r.target,
            deployment_id: r.deployment_id,
            event: r.event,
            state: r.state,
            attempts: u32::try_from(r.attempts).unwrap_or_default(),
            next_at: r.next_at,
            last_status: r.last_status.and_then(|s| u16::try_from(s).ok()),
            last_error: r.last_error,
            last_response: r.last_response,
            created_at: r.created_at,
            delivered_at: r.delivered_at,
        })
        .collect())
}

/// The wait before attempt `n + 1` after `n` failed ones: 2, 4, 8 ... seconds, at most 20 minutes.
pub fn backoff(attempts: i32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(attempts.clamp(1, 20) as u32).min(1200))
}

/// A claimed delivery: to a notification target (its kind and sealed URL), or a commit status
/// (the app's settings and sealed secrets).
#[derive(sqlx::FromRow)]
struct Due {
    id: Uuid,
    target_id: Option<Uuid>,
    app_id: Option<Uuid>,
    target_kind: Option<String>,
    target_sealed: Option<String>,
    app_sealed: Option<String>,
    commit_status: Option<sqlx::types::Json<crate::status::Settings>>,
    payload: Value,
    attempts: i32,
}

/// How one send went.
struct Outcome {
    status: Option<u16>,
    error: Option<String>,
    response: Option<String>,
}

/// Sends due deliveries until `stop`: every replica runs it; rows are claimed (their `next_at`
/// pushed out) in a short transaction, sent outside it, and their outcome written after.
pub async fn run(shared: Shared, stop: tokio_util::sync::CancellationToken) {
    loop {
        match send_due(&shared).await {
            Ok(0) | Err(_) => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            Ok(_) => {
                if stop.is_cancelled() {
                    return;
                }
            }
        }
    }
}

/// Claims and sends up to 16 due deliveries at once; how many there were.
async fn send_due(shared: &Shared) -> Result<usize, sqlx::Error> {
    let due: Vec<Due> = sqlx::query_as(
        "WITH due AS (
             SELECT id FROM deliveries WHERE state = 'pending' AND next_at <= now()
             ORDER BY next_at LIMIT 16 FOR UPDATE SKIP LOCKED)
         UPDATE deliveries d SET next_at = now() + make_interval(secs => $1), attempts = d.attempts + 1
         FROM due WHERE d.id = due.id
         RETURNING d.id, d.target_id, d.app_id,
                   (SELECT t.kind FROM notification_targets t WHERE t.id = d.target_id) AS target_kind,
                   (SELECT t.sealed FROM notification_targets t WHERE t.id = d.target_id) AS target_sealed,
                   (SELECT a.sealed FROM apps a WHERE a.id = d.app_id) AS app_sealed,
                   (SELECT a.commit_status FROM apps a WHERE a.id = d.app_id) AS commit_status,
                   d.payload, d.attempts",
    )
    .bind(CLAIM_SECONDS)
    .fetch_all(&shared.pool)
    .await
    .inspect_err(|err| tracing::warn!(error = %err, "reading due notifications failed; trying again"))?;
    let count = due.len();
    let sends = due.into_iter().map(|d| async move {
        let outcome = send(shared, &d).await;
        if let Err(err) = record(&shared.pool, &d, outcome).await {
            tracing::warn!(error = %err, delivery = %d.id, "recording a notification's outcome failed; it is sent again");
        }
    });
    futures_util::future::join_all(sends).await;
    Ok(count)
}

async fn record(pool: &PgPool, d: &Due, outcome: Outcome) -> Result<(), sqlx::Error> {
    let delivered = outcome.status.is_some_and(|s| (200..300).contains(&s));
    let state = match (delivered, d.attempts >= MAX_ATTEMPTS) {
        (true, _) => "delivered",
        (false, true) => "failed",
        (false, false) => "pending",
    };
    let wait = backoff(d.attempts).as_secs_f64();
    sqlx::query(
        "UPDATE deliveries SET state = $2, last_status = $3, last_error = $4, last_response = $5,
                delivered_at = CASE WHEN $2 = 'delivered' THEN now() END,
                next_at = CASE WHEN $2 = 'pending' THEN now() + make_interval(secs => $6) ELSE next_at END
         WHERE id = $1",
    )
    .bind(d.id)
    .bind(state)
    .bind(outcome.status.map(i32::from))
    .bind(outcome.error)
    .bind(outcome.response)
    .bind(wait)
    .execute(pool)
    .await?;
    if !delivered {
        tracing::info!(delivery = %d.id, attempts = d.attempts, state, "a notification was not delivered");
    }
    Ok(())
}

/// Sends one delivery: opens the target, checks its URL with the outbound guard (the request
/// goes to the addresses checked, never a redirect), signs or formats the body.
async fn send(shared: &Shared, d: &Due) -> Outcome {
    let failed = |error: String| Outcome { status: None, error: Some(error), response: None };
    let mut payload = d.payload.clone();
    if let Some(id) = payload["data"]["deployment_id"].as_str().map(str::to_string) {
        payload["data"]["link"] = json!(format!("{}/api/v1/deployments/{id}", shared.public_url));
    }
    let request = match (d.target_id, &d.target_kind, &d.target_sealed, d.app_id) {
        (Some(target), Some(kind), Some(sealed), _) => {
            match target_request(shared, target, kind, sealed, d.id, &payload) {
                Ok(r) => r,
                Err(err) => return failed(err),
            }
        }
        (None, _, _, Some(app)) => match status_request(shared, app, d, &payload) {
            Ok(r) => r,
            Err(err) => return failed(err),
        },
        _ => return failed("its target or app is gone".into()),
    };
    post(shared, request).await
}

/// A request to send: URL, headers, body.
struct Outgoing {
    url: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

/// A notification target's request: the Standard Webhooks signed event, or a Slack message.
fn target_request(
    shared: &Shared,
    target: Uuid,
    kind: &str,
    sealed: &str,
    delivery: Uuid,
    payload: &Value,
) -> Result<Outgoing, String> {
    let secret: TargetSecret = shared
        .keyring
        .open_json(sealed, &context(target))
        .map_err(|err| format!("the target's URL cannot be opened: {err}"))?;
    let json_type = ("content-type", "application/json".to_string());
    if kind == "slack" {
        let body = serde_json::to_vec(&slack_message(payload)).unwrap_or_default();
        return Ok(Outgoing { url: secret.url, headers: vec![json_type], body });
    }
    let body = serde_json::to_vec(payload).unwrap_or_default();
    let timestamp = Utc::now().timestamp();
    let key = secret.secret.as_deref().and_then(crate::forge::standard_webhook_key).unwrap_or_default();
    let signature = crate::forge::standard_webhook_signature(&key, &delivery.to_string(), timestamp, &body);
    let headers = vec![
        json_type,
        ("webhook-id", delivery.to_string()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ];
    Ok(Outgoing { url: secret.url, headers, body })
}

/// A commit status request for the app's forge, from the event.
fn status_request(shared: &Shared, app: Uuid, d: &Due, payload: &Value) -> Result<Outgoing, String> {
    let (Some(settings), Some(sealed)) = (&d.commit_status, &d.app_sealed) else {
        return Err("the app no longer reports commit statuses".into());
    };
    let secrets: crate::seal::AppSecrets = shared
        .keyring
        .open_json(sealed, &crate::seal::app_context(app))
        .map_err(|err| format!("the app's secrets cannot be opened: {err}"))?;
    let token = secrets.status_token.ok_or("the app has no status token")?;
    let event = payload["type"].as_str().unwrap_or_default();
    let status = crate::status::Status::of(event).ok_or("not a status event")?;
    let data = &payload["data"];
    let sha = data["sha"].as_str().filter(|s| crate::webhook::is_sha(s)).ok_or("no commit")?;
    let link = data["link"].as_str().unwrap_or_default();
    let target_url = match (status, data["url"].as_str()) {
        (crate::status::Status::Success, Some(url)) => url,
        _ => link,
    };
    let context = status_context(data);
    let description = crate::status::description(payload);
    let r = crate::status::request(&settings.0, &token, sha, status, &context, target_url, &description);
    let mut headers = r.headers;
    headers.push(("content-type", "application/json".to_string()));
    Ok(Outgoing { url: r.url, headers, body: serde_json::to_vec(&r.body).unwrap_or_default() })
}

/// The check a commit status is reported under: `slipway/<app>`, and a preview's its own
/// (`slipway/<app>/pr-<n>`), which the app's would otherwise take for the merged commit.
fn status_context(data: &Value) -> String {
    let (app, environment) =
        (data["app"].as_str().unwrap_or_default(), data["environment"].as_str().unwrap_or_default());
    match slipway_proto::preview_number(environment) {
        Some(_) => format!("slipway/{app}/{environment}"),
        None => format!("slipway/{app}"),
    }
}

/// POSTs `request` to the addresses the outbound guard checked (never following a redirect).
async fn post(shared: &Shared, request: Outgoing) -> Outcome {
    let failed = |error: String| Outcome { status: None, error: Some(error), response: None };
    let guard = shared.notify_guard.clone();
    let url = request.url.clone();
    let checked = tokio::task::spawn_blocking(move || guard.check(&url)).await;
    let (target, addrs) = match checked {
        Ok(Ok(ok)) => ok,
        Ok(Err(err)) => return failed(format!("refused by the outbound guard: {err}")),
        Err(err) => return failed(format!("checking the URL failed: {err}")),
    };
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(SEND_TIMEOUT)
        .user_agent(concat!("Slipway-Notifications/", env!("CARGO_PKG_VERSION")))
        .resolve_to_addrs(&target.host, &addrs)
        .build();
    let client = match client {
        Ok(c) => c,
        Err(err) => return failed(format!("building the HTTP client failed: {err}")),
    };
    let mut sending = client.post(&request.url).body(request.body);
    for (name, value) in request.headers {
        sending = sending.header(name, value);
    }
    match sending.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            let response: String =
                text.chars().filter(|c| !c.is_control() || *c == '\n').take(RESPONSE_LIMIT).collect();
            let error = (!(200..300).contains(&status)).then(|| format!("the receiver answered {status}"));
            Outcome { status: Some(status), error, response: Some(response) }
        }
        // The URL is not in the message (reqwest's error may name it; a Slack URL is a secret).
        Err(err) => failed(format!("sending failed: {}", err.without_url())),
    }
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped; everything from a repository, a commit or a
/// log goes through it.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A Slack incoming-webhook message for an event: what happened to which app and commit, who
/// asked, the failed step and its message, and a link.
pub fn slack_message(payload: &Value) -> Value {
    let data = &payload["data"];
    let s = |v: &Value| slack_escape(v.as_str().unwrap_or_default());
    let event = payload["type"].as_str().unwrap_or_default();
    if event == TEST_EVENT {
        let text = format!("Slipway: a test of the notification target *{}*", s(&data["target"]));
        return json!({"text": text});
    }
    let short: String = data["sha"].as_str().unwrap_or_default().chars().take(12).collect();
    if data["source"] == "teardown" {
        let what = match event {
            "deploy.completed" => "torn down",
            "deploy.failed" | "deploy.rolled_back" => "could not be torn down",
            "deploy.cancelled" => "teardown cancelled",
            _ => "being torn down",
        };
        let mut text = format!("Slipway: preview *{}* of *{}* {what}", s(&data["environment"]), s(&data["app"]));
        if let Some(message) = data["error"]["message"].as_str().filter(|_| what.starts_with("could")) {
            text.push_str(&format!(": {}", slack_escape(message)));
        }
        return json!({"text": text});
    }
    let (icon, what) = match event {
        "deploy.queued" => (":hourglass:", "queued"),
        "deploy.started" => (":arrow_forward:", "started"),
        "deploy.completed" => (":white_check_mark:", "is live"),
        "deploy.failed" => (":x:", "failed"),
        "deploy.cancelled" => (":no_entry_sign:", "was cancelled"),
        "deploy.rolled_back" => (":leftwards_arrow_with_hook:", "failed and was rolled back"),
        _ => (":information_source:", "changed"),
    };
    let who = match (data["created_by"].as_str(), data["pushed_by"].as_str()) {
        (Some(by), _) => format!("by {}", slack_escape(by)),
        (None, Some(pusher)) => format!("pushed by {} ({})", slack_escape(pusher), s(&data["source"])),
        (None, None) => format!("by a {} push", s(&data["source"])),
    };
    let mut text = format!(
        "{icon} *{}* ({}) {what}: `{short}` on {} {who}",
        s(&data["app"]),
        s(&data["environment"]),
        s(&data["ref"])
    );
    if let Some(url) = data["url"].as_str().filter(|_| event == "deploy.completed") {
        text.push_str(&format!("\n<{}|{}>", slack_escape(url), slack_escape(url)));
    }
    if !data["error"].is_null() {
        let message: String = data["error"]["message"].as_str().unwrap_or_default().chars().take(500).collect();
        text.push_str(&format!(
            "\nfailed at *{}* ({} error): {}",
            s(&data["error"]["step"]),
            s(&data["error"]["cause"]),
            slack_escape(&message)
        ));
    }
    if let Some(link) = data["link"].as_str() {
        text.push_str(&format!("\n<{}|deployment {}>", slack_escape(link), s(&data["deployment_id"])));
    }
    json!({"text": text})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(kind: &str, url: &str) -> api::NewNotificationTarget {
        api::NewNotificationTarget {
            name: "team".into(),
            kind: kind.into(),
            url: url.into(),
            secret: None,
            app: None,
            events: Vec::new(),
        }
    }

    #[test]
    fn a_previews_status_and_slack_message_are_its_own() {
        let data = |env: &str| json!({"app": "shop", "environment": env});
        assert_eq!(status_context(&data("production")), "slipway/shop");
        assert_eq!(status_context(&data("pr-12")), "slipway/shop/pr-12");
        let torn = |event: &str| {
            let payload = json!({"type": event, "data": {"app": "shop", "environment": "pr-12", "source": "teardown",
                "error": {"message": "the cluster failed: <b>"}}});
            slack_message(&payload)["text"].as_str().unwrap_or_default().to_string()
        };
        assert_eq!(torn("deploy.completed"), "Slipway: preview *pr-12* of *shop* torn down");
        assert_eq!(
            torn("deploy.failed"),
            "Slipway: preview *pr-12* of *shop* could not be torn down: the cluster failed: &lt;b&gt;"
        );
    }

    #[test]
    fn targets_are_checked_before_they_are_stored() {
        assert_eq!(validate(&new("webhook", "https://hooks.example.com/x")).expect("valid").len(), EVENTS.len());
        let cases: Vec<(api::NewNotificationTarget, &str)> = vec![
            (api::NewNotificationTarget { name: "Team!".into(), ..new("webhook", "https://h.example/x") }, "name"),
            (new("email", "https://h.example/x"), "kind"),
            (new("webhook", "ftp://h.example/x"), "url"),
            (new("webhook", "https://user:pw@h.example/x"), "url"),
            (new("webhook", &format!("https://h.example/{}", "a".repeat(3000))), "2048"),
            (
                api::NewNotificationTarget {
                    events: vec!["deploy.exploded".into()],
                    ..new("slack", "https://h.example/x")
                },
                "events",
            ),
            (
                api::NewNotificationTarget { secret: Some("hunter2".into()), ..new("webhook", "https://h.example/x") },
                "whsec_",
            ),
            (
                api::NewNotificationTarget {
                    secret: Some("whsec_AAAA".into()),
                    ..new("webhook", "https://h.example/x")
                },
                "whsec_",
            ),
            (
                api::NewNotificationTarget {
                    secret: Some(new_secret().expect("random")),
                    ..new("slack", "https://h.example/x")
                },
                "for webhooks",
            ),
        ];
        for (target, needle) in cases {
            let err = validate(&target).expect_err(needle).to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn state_changes_tell_of_their_events_and_retries_of_none() {
        assert_eq!(events_of(State::Queued, State::Running, false), ["deploy.started"]);
        assert_eq!(events_of(State::Running, State::Completed, false), ["deploy.completed"]);
        assert_eq!(events_of(State::Running, State::Failed, true), ["deploy.failed", "deploy.rolled_back"]);
        assert_eq!(events_of(State::Running, State::Queued, false), Vec::<&str>::new(), "a retry");
        assert_eq!(events_of(State::Running, State::Running, false), Vec::<&str>::new(), "a step");
        assert_eq!(events_of(State::Queued, State::Cancelled, false), ["deploy.cancelled"]);
    }

    #[test]
    fn slack_messages_escape_what_comes_from_users_and_name_the_failed_step() {
        let payload = json!({"type": "deploy.failed", "data": {
            "app": "shop", "environment": "production", "sha": "0123456789abcdef", "ref": "refs/heads/<main>",
            "source": "github", "created_by": null, "deployment_id": "d1", "link": "https://slipway.example/api/v1/deployments/d1",
            "error": {"step": "test", "cause": "user", "message": "expected <b>1</b> & got 2"}}});
        let text = slack_message(&payload)["text"].as_str().expect("text").to_string();
        assert!(
            text.contains("*shop*") && text.contains("`0123456789ab`") && text.contains("by a github push"),
            "{text}"
        );
        assert!(text.contains("failed at *test* (user error): expected &lt;b&gt;1&lt;/b&gt; &amp; got 2"), "{text}");
        assert!(text.contains("refs/heads/&lt;main&gt;"), "{text}");
        assert!(!text.contains("<b>"), "{text}");
    }

    #[test]
    fn backoff_doubles_up_to_twenty_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(11), Duration::from_secs(1200));
        assert_eq!(backoff(i32::MAX), Duration::from_secs(1200));
    }
}
