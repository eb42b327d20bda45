//! The branch-head reconcile: forges drop webhooks (GitLab sends none when a push changes more
//! than three refs, GitHub none for more than three tags, any delivery can be lost), so every
//! app's followed branch is read from its repository (`git ls-remote`, through the outbound
//! guard, with the app's own credentials only for its host) every `SLIPWAY_RECONCILE_SECONDS`
//! (jittered) and whenever `POST /api/v1/apps/{name}/sync` asks. A head with no deployment
//! recorded becomes a deployment with source `reconcile`, through the same deduplication as
//! webhooks (a webhook redelivered after it is a no-op) and the same never-older-over-newer check.
//! It runs in the background, never in a request.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use slipway_git::GitAuth;
use slipway_proto::outbound;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::apps::{self, App};
use crate::deployments::{self, Created, NewDeployment};
use crate::{Shared, webhook};

/// How long one ls-remote may take.
const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks the reconcile loop to check one app now.
#[derive(Debug, Clone)]
pub struct SyncRequests(mpsc::Sender<String>);

impl SyncRequests {
    pub fn channel() -> (Self, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(256);
        (Self(tx), rx)
    }

    /// Queues a check of `app`; false when too many wait already.
    pub fn ask(&self, app: &str) -> bool {
        self.0.try_send(app.to_string()).is_ok()
    }
}

/// What a check of one app did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The head has a deployment already (or is older than one).
    UpToDate,
    /// A deployment of the head was recorded.
    Queued { sha: String },
    /// The repository could not be read; why.
    Unreadable(String),
}

/// Runs until `cancel`: every `every` (jittered by up to a fifth), all apps; on request, one.
pub async fn run(
    shared: Shared,
    every: Option<Duration>,
    mut asked: mpsc::Receiver<String>,
    cancel: CancellationToken,
) {
    let next = |every: Duration| {
        let jitter = every.as_millis() as u64 / 5;
        let offset = if jitter == 0 { 0 } else { u64::from(rand_u32()) % (2 * jitter) };
        (every + Duration::from_millis(offset)).saturating_sub(Duration::from_millis(jitter))
    };
    let mut wait = every.map(next);
    loop {
        let timer = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            // The schedule is the leader's; a replica that does not lead only answers `sync`.
            _ = timer => {
                let listed = match shared.leader.is_leader() {
                    true => apps::list(&shared.pool).await,
                    false => Ok(Vec::new()),
                };
                match listed {
                    Ok(all) => {
                        for app in all {
                            if cancel.is_cancelled() {
                                return;
                            }
                            check(&shared, &app).await;
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "reconcile could not list the apps; will retry"),
                }
                wait = every.map(next);
            }
            name = asked.recv() => {
                let Some(name) = name else { return };
                match apps::get(&shared.pool, &name).await {
                    Ok(Some(app)) => {
                        check(&shared, &app).await;
                    }
                    Ok(None) => {}
                    Err(err) => tracing::warn!(error = %err, app = %name, "sync could not read the app"),
                }
            }
        }
    }
}

fn rand_u32() -> u32 {
    let mut bytes = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u32::from_le_bytes(bytes)
}

/// Reads the app's branch head and records a deployment of it when none exists.
pub async fn check(shared: &Shared, app: &App) -> Outcome {
    let git_ref = format!("refs/heads/{}", app.branch);
    let head = match head(shared, app, &git_ref).await {
        Ok(head) => head,
        Err(why) => {
            tracing::debug!(app = %app.name, reason = %why, "reconcile could not read the branch head");
            return Outcome::Unreadable(why);
        }
    };
    let recorded: Result<Option<uuid::Uuid>, sqlx::Error> =
        sqlx::query_scalar("SELECT id FROM deployments WHERE app_id = $1 AND sha = $2 AND environment = $3")
            .bind(app.id)
            .bind(&head)
            .bind(&app.environment)
            .fetch_optional(&shared.pool)
            .await;
    match recorded {
        Ok(Some(_)) => return Outcome::UpToDate,
        Ok(None) => {}
        Err(err) => return Outcome::Unreadable(format!("database: {err}")),
    }
    match deployments::newer_descendant(&shared.pool, app, &app.environment, &head).await {
        Ok(Some(_)) => return Outcome::UpToDate,
        Ok(None) => {}
        Err(err) => return Outcome::Unreadable(format!("database: {err}")),
    }
    let new = NewDeployment {
        // The runner diffs the head against the live commit.
        watch_check: Some(&slipway_proto::WatchCheck::default()),
        ..NewDeployment::of(app, &head, &git_ref, "reconcile")
    };
    match deployments::create(&shared.pool, &shared.keyring, new, shared.policy()).await {
        Ok(Created::New { id, superseded }) => {
            tracing::warn!(app = %app.name, sha = %head, deployment_id = %id, "the branch head had no deployment (a webhook was missed); deploying it");
            webhook::announce_queued(shared, id, &app.name, &head, &superseded);
            Outcome::Queued { sha: head }
        }
        Ok(Created::Existing(_)) => Outcome::UpToDate,
        Err(err) => Outcome::Unreadable(format!("recording the deployment: {err}")),
    }
}

/// The commit `git_ref` points at in the app's repository: the outbound guard first (the name
/// resolved again), the app's own credentials only for its host over https; bounded.
async fn head(shared: &Shared, app: &App, git_ref: &str) -> Result<String, String> {
    let auth = match app.secrets(&shared.keyring) {
        Ok(secrets) => secrets.git.and_then(|creds| {
            let target = outbound::target(&app.repo_url).ok().filter(|t| t.scheme == "https")?;
            Some(GitAuth { username: creds.username, token: creds.token, host: target.host })
        }),
        Err(err) => return Err(format!("the app's secrets cannot be opened: {err}")),
    };
    let (guard, url, git_ref) = (shared.guard.clone(), app.repo_url.clone(), git_ref.to_string());
    let reading = tokio::task::spawn_blocking(move || {
        slipway_git::guard(&url, &guard).map_err(|e| e.to_string())?;
        slipway_git::resolve_ref(&url, &git_ref, auth.as_ref(), &AtomicBool::new(false)).map_err(|e| e.to_string())
    });
    match tokio::time::timeout(LS_REMOTE_TIMEOUT, reading).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err("reading the repository failed".into()),
        Err(_) => Err(format!("the repository did not answer within {LS_REMOTE_TIMEOUT:?}")),
    }
}
