//! Push webhooks of every forge: the handlers, and the decision of what a push deploys. Reading
//! each forge's delivery and checking its proof are pure ([`crate::forge`]).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use slipway_git::watch::WatchPaths;
use slipway_proto::api::{WebhookAnswer, WebhookDeployment};
use slipway_proto::{Notification, State as DeployState, WatchCheck};

use crate::Shared;
use crate::api::ApiError;
use crate::apps;
use crate::deployments::{self, Created, NewDeployment};
use crate::forge::{self, Event, Forge, ForgeError};
use crate::transition::Applied;

/// The fields of a `push` event Slipway reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Push {
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub after: String,
    #[serde(default)]
    pub deleted: bool,
    pub repository: Repository,
}

/// The repository of any event; its URLs identify the apps that follow it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Repository {
    #[serde(default)]
    pub clone_url: Option<String>,
    #[serde(default)]
    pub html_url: Option<String>,
    #[serde(default)]
    pub ssh_url: Option<String>,
    #[serde(default)]
    pub git_url: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
}

impl Repository {
    /// Every URL the forge gave for the repository.
    pub fn urls(&self) -> Vec<String> {
        [&self.clone_url, &self.html_url, &self.ssh_url, &self.git_url, &self.url]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

/// What a push asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushIntent {
    /// Deploy `sha` of `branch`.
    Deploy { branch: String, sha: String },
    /// Nothing to deploy, and why.
    Ignore(String),
}

/// Checks `X-Hub-Signature-256` (`sha256=<hex>`) against the HMAC-SHA256 of `body`, in constant time.
pub fn signature_matches(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Decides what a push deploys: branch pushes with a commit; not deletions or tags.
pub fn intent(push: &Push) -> PushIntent {
    if push.deleted || push.after.bytes().all(|b| b == b'0') {
        return PushIntent::Ignore(format!("{} was deleted", push.git_ref));
    }
    if let Some(tag) = push.git_ref.strip_prefix("refs/tags/") {
        return PushIntent::Ignore(format!("tag pushes are not deployed (tag {tag})"));
    }
    let Some(branch) = push.git_ref.strip_prefix("refs/heads/") else {
        return PushIntent::Ignore(format!("{} is not a branch", push.git_ref));
    };
    if !is_sha(&push.after) {
        return PushIntent::Ignore(format!(
            "`after` is not a commit SHA: {}",
            push.after.chars().take(80).collect::<String>()
        ));
    }
    PushIntent::Deploy { branch: branch.to_string(), sha: push.after.to_ascii_lowercase() }
}

/// A full SHA-1 or SHA-256 object name in hex.
pub fn is_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `POST /api/v1/webhooks/github` (JSON or form-encoded; a Gitea or Forgejo delivery sent here
/// is read as one). At most `SLIPWAY_WEBHOOK_CONCURRENCY` webhooks are read and parsed at once
/// (others wait, then get 503); parsing and signature checks run on the blocking pool, so a
/// large body never stalls the async workers other requests run on.
pub async fn github(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<WebhookAnswer>), ApiError> {
    let forge = forge::detect(&headers);
    take(forge, shared, headers, body).await
}

/// Reads, checks and answers one delivery of `forge`, and counts it: the handler of
/// `POST /api/v1/webhooks/{gitlab,bitbucket,gitea}`, and of the GitHub URL once the forge is known.
pub async fn take(
    forge: Forge,
    shared: Shared,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<WebhookAnswer>), ApiError> {
    let answered = receive(shared, forge, headers, body).await;
    counted(forge.as_str(), &answered);
    answered
}

/// Counts a webhook delivery on `slipway_webhooks_total` by what was answered: accepted (a new
/// deployment), duplicate, skipped (a skip marker), ignored (nothing to deploy, or a ping),
/// refused (4xx) or failed (5xx).
fn counted(forge: &'static str, answered: &Result<(StatusCode, Json<WebhookAnswer>), ApiError>) {
    let outcome = match answered {
        Ok((_, Json(a))) if a.status == "queued" => "accepted",
        Ok((_, Json(a))) if a.status == "duplicate" => "duplicate",
        Ok((_, Json(a))) if a.status == "skipped" => "skipped",
        Ok(_) => "ignored",
        Err(ApiError::Unavailable(_) | ApiError::Db(_) | ApiError::Corrupt(_) | ApiError::Internal(_)) => "failed",
        Err(_) => "refused",
    };
    metrics::counter!(slipway_telemetry::metrics::WEBHOOKS, "forge" => forge, "outcome" => outcome).increment(1);
}

impl From<ForgeError> for ApiError {
    fn from(err: ForgeError) -> Self {
        match err {
            ForgeError::Unsigned(m) => ApiError::Unauthorized(m),
            ForgeError::Malformed(m) => ApiError::BadRequest(m),
            ForgeError::UnsupportedMediaType(m) => ApiError::UnsupportedMediaType(m),
        }
    }
}

async fn receive(
    shared: Shared,
    forge: Forge,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<WebhookAnswer>), ApiError> {
    // The headers are checked before the body is read: an unsigned delivery costs nothing.
    forge::precheck(forge, &headers)?;
    let permit = tokio::time::timeout(WEBHOOK_WAIT, shared.webhooks.clone().acquire_owned()).await;
    let Ok(Ok(_permit)) = permit else {
        return Err(ApiError::Unavailable("too many webhooks at once; the forge will redeliver".into()));
    };
    let body =
        axum::body::to_bytes(body, shared.webhook_max_bytes).await.map_err(|e| {
            match std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
                true => ApiError::TooLarge(format!("the body is larger than {} bytes", shared.webhook_max_bytes)),
                false => ApiError::BadRequest("the body could not be read".into()),
            }
        })?;
    let read = tokio::task::spawn_blocking(move || forge::read(forge, &headers, &body)).await;
    let delivery = match read {
        Ok(read) => read?,
        Err(_) => return Err(ApiError::Unavailable("parsing the webhook failed".into())),
    };
    let candidates = apps::following_repo(&shared.pool, &delivery.repo_urls).await?;
    if candidates.is_empty() {
        return Ok(ignored("no app follows this repository"));
    }
    let mut keyed = Vec::with_capacity(candidates.len());
    for app in candidates {
        match app.secrets(&shared.keyring) {
            Ok(secrets) => keyed.push((app, secrets.webhook_secret)),
            Err(err) => tracing::error!(app = %app.name, error = %err, "cannot open the app's webhook secret"),
        }
    }
    let (proof, signed_body) = (delivery.proof.clone(), delivery.signed_body.clone());
    let now = chrono::Utc::now().timestamp();
    let verified = tokio::task::spawn_blocking(move || {
        keyed
            .into_iter()
            .filter(|(_, secret)| forge::verifies(&proof, secret, &signed_body, now))
            .map(|(app, _)| app)
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|_| ApiError::Unavailable("verifying the webhook failed".into()))?;
    if verified.is_empty() {
        tracing::warn!(
            forge = forge.as_str(),
            delivery = delivery.id.as_deref().unwrap_or(""),
            "webhook signature did not verify"
        );
        return Err(ApiError::Unauthorized("signature does not match".into()));
    }
    let changes = match delivery.event {
        Event::PullRequest(pull) => {
            return pull_request(&shared, forge, delivery.id.as_deref(), &verified, &pull).await;
        }
        Event::Ping => return Ok((StatusCode::OK, Json(answer("pong", None, None, Vec::new())))),
        Event::Other(reason) => return Ok(ignored(&reason)),
        Event::Malformed(reason) => return Err(ApiError::BadRequest(reason)),
        Event::Push(changes) => changes,
    };
    let mut out = Vec::new();
    let mut reasons = Vec::new();
    let (mut any_new, mut any_skipped) = (false, false);
    let mut last_sha = None;
    for change in changes {
        let push = Push {
            git_ref: change.git_ref.clone(),
            after: change.after.clone(),
            deleted: change.deleted,
            repository: Repository::default(),
        };
        let (branch, sha) = match intent(&push) {
            PushIntent::Deploy { branch, sha } => (branch, sha),
            PushIntent::Ignore(reason) => {
                reasons.push(reason);
                continue;
            }
        };
        let following: Vec<_> = verified.iter().filter(|a| a.branch == branch).collect();
        if following.is_empty() {
            reasons.push(format!("no app follows branch `{branch}`"));
            continue;
        }
        let marker = change.message.as_deref().and_then(forge::skip_marker);
        for app in following {
            let (unwatched, watch_check) = watch_decision(app, change.paths.as_deref());
            let new = NewDeployment {
                delivery_id: delivery.id.as_deref(),
                before_sha: change.before.as_deref(),
                watch_check: watch_check.as_ref(),
                pushed_by: change.pusher.as_deref(),
                ..NewDeployment::of(app, &sha, &change.git_ref, forge.as_str())
            };
            // A commit that an already recorded push of a newer commit came after is older:
            // its delivery came late. It is recorded as skipped, never deployed over the newer one.
            let older = match (&marker, &unwatched) {
                (Some(_), _) | (_, Some(_)) => None,
                (None, None) => deployments::newer_descendant(&shared.pool, app, &app.environment, &sha).await?.map(
                    |(id, newer, state)| {
                        format!("{sha} is older than {newer}, already {state} (deployment {id}); not deployed over it")
                    },
                ),
            };
            let skip = marker.clone().or(unwatched).or(older);
            let created = match &skip {
                Some(reason) => deployments::record_skipped(&shared.pool, new, reason).await?,
                None => deployments::create(&shared.pool, &shared.keyring, new, shared.policy()).await?,
            };
            let (id, new) = match created {
                Created::New { id, .. } if skip.is_some() => {
                    let reason = skip.unwrap_or_default();
                    tracing::info!(deployment_id = %id, app = %app.name, sha = %sha, reason = %reason, "push skipped");
                    if !reasons.contains(&reason) {
                        reasons.push(reason);
                    }
                    any_skipped = true;
                    (id, true)
                }
                Created::New { id, superseded } => {
                    announce_queued(&shared, id, &app.name, &sha, &superseded);
                    any_new = true;
                    (id, true)
                }
                Created::Existing(id) => (id, false),
            };
            out.push(WebhookDeployment { app: app.name.clone(), deployment_id: id, new });
        }
        last_sha = Some(sha);
    }
    if out.is_empty() {
        if reasons.is_empty() {
            reasons.push("the push changed no ref".into());
        }
        return Ok(ignored(&reasons.join("; ")));
    }
    let status = if any_new || any_skipped { StatusCode::ACCEPTED } else { StatusCode::OK };
    let (word, reason) = match (any_new, any_skipped) {
        (true, _) => ("queued", None),
        (false, true) => ("skipped", Some(reasons.join("; "))),
        (false, false) => ("duplicate", None),
    };
    Ok((status, Json(answer(word, last_sha, reason.as_deref(), out))))
}

/// A pull request event: each verified app that follows its target branch takes it for its
/// previews ([`crate::previews`]). Answered like a push: `queued` for a new deployment (or
/// teardown), `duplicate` for a redelivery, `ignored` with the reasons otherwise.
async fn pull_request(
    shared: &Shared,
    forge: Forge,
    delivery_id: Option<&str>,
    verified: &[apps::App],
    pull: &forge::PullRequest,
) -> Result<(StatusCode, Json<WebhookAnswer>), ApiError> {
    use crate::previews::Outcome;
    let following: Vec<_> = verified.iter().filter(|a| a.branch == pull.target_branch).collect();
    if following.is_empty() {
        return Ok(ignored(&format!("no app follows branch `{}`", pull.target_branch)));
    }
    let (mut out, mut reasons, mut any_new) = (Vec::new(), Vec::new(), false);
    for app in following {
        let (id, new) = match crate::previews::take(shared, app, forge, delivery_id, pull).await? {
            Outcome::Deployed(Created::New { id, superseded }) | Outcome::TornDown(Created::New { id, superseded }) => {
                announce_queued(shared, id, &app.name, pull.head_sha.as_deref().unwrap_or(""), &superseded);
                (id, true)
            }
            Outcome::Deployed(Created::Existing(id)) | Outcome::TornDown(Created::Existing(id)) => (id, false),
            Outcome::Refused(reason) | Outcome::Nothing(reason) => {
                reasons.push(reason);
                continue;
            }
        };
        any_new |= new;
        out.push(WebhookDeployment { app: app.name.clone(), deployment_id: id, new });
    }
    if out.is_empty() {
        return Ok(ignored(&reasons.join("; ")));
    }
    let (status, word) = if any_new { (StatusCode::ACCEPTED, "queued") } else { (StatusCode::OK, "duplicate") };
    let reason = (!reasons.is_empty()).then(|| reasons.join("; "));
    Ok((status, Json(answer(word, pull.head_sha.clone(), reason.as_deref(), out))))
}

/// What the app's watch paths make of a push that changed `paths` (when the forge listed them
/// all): a reason to skip it (none of them watched), or the check the runner is to make after
/// the clone (the list unknown here, or the app's `slipway.toml` may declare watch paths).
fn watch_decision(app: &apps::App, paths: Option<&[String]>) -> (Option<String>, Option<WatchCheck>) {
    let check = |paths: Option<&[String]>| Some(WatchCheck { paths: paths.map(<[String]>::to_vec), base: None });
    if app.watch_paths.is_empty() {
        return (None, check(paths));
    }
    let watched = match WatchPaths::new(&app.watch_paths) {
        Ok(watched) => watched,
        Err(err) => {
            // Checked when the app was created; a stored list that no longer compiles deploys.
            tracing::error!(app = %app.name, error = %err, "the app's watch paths do not compile; deploying every push");
            return (None, None);
        }
    };
    match paths {
        Some(paths) => match watched.first_match(paths.iter().map(String::as_str)) {
            Some(_) => (None, None),
            None => (Some(watched.unmatched_reason(paths.len())), None),
        },
        None => (None, check(None)),
    }
}

/// How long a webhook waits for its turn before a 503 (the forge redelivers).
const WEBHOOK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Wakes the relay and publishes `deploy.queued` for a new deployment, and announces the queued
/// deployments it superseded.
pub fn announce_queued(shared: &Shared, id: uuid::Uuid, app: &str, sha: &str, superseded: &[Applied]) {
    tracing::info!(deployment_id = %id, app, sha, "deployment queued");
    shared.live.wake(id);
    for applied in superseded {
        shared.react(applied);
    }
    shared.relay_wake.notify_one();
    shared.publisher.notify(&Notification {
        deployment_id: id,
        app: app.to_string(),
        attempt: 1,
        state: DeployState::Queued,
        step: None,
        step_status: None,
        message: None,
    });
}

fn answer(
    status: &str,
    sha: Option<String>,
    reason: Option<&str>,
    deployments: Vec<WebhookDeployment>,
) -> WebhookAnswer {
    WebhookAnswer { status: status.to_string(), sha, reason: reason.map(str::to_string), deployments }
}

fn ignored(reason: &str) -> (StatusCode, Json<WebhookAnswer>) {
    (StatusCode::ACCEPTED, Json(answer("ignored", None, Some(reason), Vec::new())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signature_verifies_only_with_the_right_secret_and_body() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = sign("s3cret-s3cret-s3cret", body);
        assert!(signature_matches(b"s3cret-s3cret-s3cret", body, &good));
        assert!(!signature_matches(b"other-secret-value", body, &good));
        assert!(!signature_matches(b"s3cret-s3cret-s3cret", b"{}", &good));
        assert!(!signature_matches(b"s3cret-s3cret-s3cret", body, good.trim_start_matches("sha256=")));
        assert!(!signature_matches(b"s3cret-s3cret-s3cret", body, "sha256=zz"));
        assert!(!signature_matches(b"s3cret-s3cret-s3cret", body, "sha256="));
        assert!(!signature_matches(b"s3cret-s3cret-s3cret", body, &good.replace("sha256", "sha1")));
    }

    fn push(git_ref: &str, after: &str, deleted: bool) -> Push {
        Push { git_ref: git_ref.into(), after: after.into(), deleted, repository: Repository::default() }
    }

    #[test]
    fn intent_table() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            intent(&push("refs/heads/main", sha, false)),
            PushIntent::Deploy { branch: "main".into(), sha: sha.into() }
        );
        assert_eq!(
            intent(&push("refs/heads/feature/x", &sha.to_uppercase(), false)),
            PushIntent::Deploy { branch: "feature/x".into(), sha: sha.into() }
        );
        for (r, a, d, reason) in [
            ("refs/heads/main", sha, true, "deleted"),
            ("refs/heads/main", "0000000000000000000000000000000000000000", false, "deleted"),
            ("refs/tags/v1.0", sha, false, "tag"),
            ("refs/notes/x", sha, false, "not a branch"),
            ("refs/heads/main", "abc", false, "not a commit"),
        ] {
            match intent(&push(r, a, d)) {
                PushIntent::Ignore(why) => assert!(why.contains(reason), "{why}"),
                other => panic!("{r} {a} should be ignored, got {other:?}"),
            }
        }
    }

    #[test]
    fn real_github_push_payload_parses() {
        let raw = include_str!("../testdata/github-push.json");
        let p: Push = serde_json::from_str(raw).expect("github push payload");
        assert_eq!(p.git_ref, "refs/heads/main");
        assert!(p.repository.urls().iter().any(|u| u == "https://github.com/Codertocat/Hello-World.git"));
        assert!(matches!(intent(&p), PushIntent::Deploy { .. }));
    }
}
