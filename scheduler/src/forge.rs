//! What each forge's push webhook says, read the same way: the event (pushes with their ref
//! changes, a ping, or something not deployed and why), the repository's URLs, the delivery id,
//! and the proof of origin to check against an app's secret. Pure: no IO.
//!
//! - GitHub: `X-GitHub-Event`, `X-Hub-Signature-256: sha256=<hex>`; JSON, or a form with `payload=`
//!   (signed over the raw form body).
//! - GitLab: `X-Gitlab-Event: Push Hook`, `X-Gitlab-Token` (the secret itself) and, when present,
//!   Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature:
//!   v1,<base64>`) keyed by a `whsec_` secret, within five minutes of the timestamp.
//! - Bitbucket Cloud: `X-Event-Key: repo:push`, `X-Hub-Signature: sha256=<hex>`; one delivery
//!   may carry several ref changes.
//! - Gitea and Forgejo: `X-Gitea-Event`/`X-Forgejo-Event`, `X-Gitea-Signature`/
//!   `X-Forgejo-Signature: <hex>`. They also send GitHub's headers, so theirs are read first.

use axum::http::HeaderMap;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// Where a webhook came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    GitHub,
    GitLab,
    Bitbucket,
    Gitea,
}

impl Forge {
    /// The deployment source and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::GitHub => "github",
            Forge::GitLab => "gitlab",
            Forge::Bitbucket => "bitbucket",
            Forge::Gitea => "gitea",
        }
    }
}

/// A ref that moved: to `after`, or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub git_ref: String,
    pub after: String,
    pub deleted: bool,
    /// The message of the commit the ref now points at, when the forge sends it.
    pub message: Option<String>,
    /// The commit the ref pointed at before, for a push that was not forced (a new branch: none).
    pub before: Option<String>,
    /// Every file the push changed (from `before`), when the forge listed them all: its commits
    /// are all there, each with its added, modified and removed files. `None` when it did not
    /// (a new branch, a forced push, a truncated list, a forge that sends no file lists).
    pub paths: Option<Vec<String>>,
    /// Who pushed, as the forge names them (at most 100 characters, no control characters).
    pub pusher: Option<String>,
}

/// A forge's name for a person, kept readable and short; empty is none.
fn person(names: &[&Option<String>]) -> Option<String> {
    names.iter().find_map(|n| {
        let clean: String = n.as_deref()?.chars().filter(|c| !c.is_control()).take(100).collect();
        let clean = clean.trim().to_string();
        (!clean.is_empty()).then_some(clean)
    })
}

/// `{"login": ..., "username": ..., "name": ...}` as GitHub, Gitea and Forgejo send people.
#[derive(Debug, Default, Deserialize)]
struct HubPerson {
    #[serde(default)]
    login: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// Most changed files kept from a payload; a push that changed more is checked through git.
pub const MAX_PATHS: usize = 10_000;

/// The files a commit of a push payload lists (GitHub, Gitea, Forgejo, GitLab).
#[derive(Debug, Default, Deserialize)]
struct CommitFiles {
    #[serde(default)]
    id: String,
    #[serde(default)]
    message: Option<String>,
    // Read loosely: a list of another shape makes the files unknown, never the push unreadable.
    #[serde(default)]
    added: Option<serde_json::Value>,
    #[serde(default)]
    modified: Option<serde_json::Value>,
    #[serde(default)]
    removed: Option<serde_json::Value>,
}

/// The strings of a file list; `None` when it is missing or not a list of strings.
fn files(list: &Option<serde_json::Value>) -> Option<Vec<&str>> {
    list.as_ref()?.as_array()?.iter().map(serde_json::Value::as_str).collect()
}

/// The files `commits` changed, when they are every commit of the push (`listed_all`) and
/// each lists its files; deduplicated, at most [`MAX_PATHS`].
fn changed_paths(before: &Option<String>, commits: &[CommitFiles], listed_all: bool) -> Option<Vec<String>> {
    if before.is_none() || commits.is_empty() || !listed_all {
        return None;
    }
    let mut paths = std::collections::BTreeSet::new();
    for commit in commits {
        for list in [&commit.added, &commit.modified, &commit.removed] {
            paths.extend(files(list)?.into_iter().map(str::to_string));
        }
        if paths.len() > MAX_PATHS {
            return None;
        }
    }
    Some(paths.into_iter().collect())
}

/// GitHub lists at most this many commits in a push webhook (GitHub's documentation).
const GITHUB_MAX_COMMITS: usize = 2048;

/// A push's previous head, unless the push was forced or created the branch (the zero SHA).
fn parent(before: Option<String>, forced: bool) -> Option<String> {
    before.filter(|b| !forced && !b.is_empty() && !b.bytes().all(|c| c == b'0')).map(|b| b.to_ascii_lowercase())
}

/// Why a push whose head commit asks not to be deployed is skipped: `[skip ci]`, `[ci skip]`,
/// `[no ci]`, `[skip deploy]`, `[deploy skip]` anywhere in the message (any case), or a
/// `skip-checks: true` trailer in its last paragraph.
pub fn skip_marker(message: &str) -> Option<String> {
    const MARKERS: [&str; 5] = ["[skip ci]", "[ci skip]", "[no ci]", "[skip deploy]", "[deploy skip]"];
    let lower = message.to_ascii_lowercase();
    if let Some(marker) = MARKERS.iter().find(|m| lower.contains(*m)) {
        return Some(format!("the head commit's message says {marker}"));
    }
    let last_paragraph = lower.trim_end().rsplit("\n\n").next().unwrap_or("");
    let trailer = last_paragraph
        .lines()
        .any(|l| l.split_once(':').is_some_and(|(k, v)| k.trim() == "skip-checks" && v.trim() == "true"));
    trailer.then(|| "the head commit has the trailer skip-checks: true".to_string())
}

/// What a pull request (merge request) event asks of the previews of the apps that follow its
/// target branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullAction {
    /// Opened, reopened or updated: deploy the head.
    Deploy,
    /// Closed (`merged` or not): tear the preview down.
    Close { merged: bool },
}

/// A pull request event, read the same way for every forge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// The request's number in its repository (GitLab: the `iid`).
    pub number: u64,
    pub action: PullAction,
    /// The head commit in full, when the forge sends it (Bitbucket sends an abbreviation:
    /// the runner resolves `head_ref` instead).
    pub head_sha: Option<String>,
    /// The head commit as the forge names it (in full, or abbreviated; empty when it sent
    /// none): what tells an update from a redelivery.
    pub head: String,
    /// A ref of the app's repository the head can be fetched by (`refs/pull/<n>/head`,
    /// `refs/merge-requests/<n>/head`; Bitbucket: the source branch).
    pub head_ref: String,
    /// The branch the request would merge into.
    pub target_branch: String,
    /// The head is in another repository (a fork).
    pub from_fork: bool,
    pub title: Option<String>,
    pub author: Option<String>,
}

/// What the delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Push(Vec<Change>),
    PullRequest(PullRequest),
    Ping,
    /// Not a push; the reason says what it was.
    Other(String),
    /// A push without what a push must have: a 400, once the delivery's signature was checked.
    Malformed(String),
}

/// How the sender proves it knows the app's secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// `sha256=<hex>` (GitHub, Bitbucket) or bare `<hex>` (Gitea, Forgejo): HMAC-SHA256 of the body.
    Hmac { hex: String },
    /// GitLab: the secret token itself, and/or a Standard Webhooks signature.
    GitLab { token: Option<String>, signed: Option<Signed> },
}

/// A Standard Webhooks signature (GitLab's signed webhooks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub id: String,
    pub timestamp: String,
    pub signatures: String,
}

/// A delivery as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub forge: Forge,
    pub id: Option<String>,
    pub event: Event,
    pub repo_urls: Vec<String>,
    pub proof: Proof,
    /// The bytes the proof signs (the raw body).
    pub signed_body: Vec<u8>,
}

/// Why a delivery cannot be read; each maps to a 4xx.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgeError {
    #[error("{0}")]
    Unsigned(String),
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
}

/// How far a Standard Webhooks timestamp may be from now.
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 300;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

fn bounded(value: &str, what: &str) -> Result<String, ForgeError> {
    if value.len() > 200 || value.chars().any(|c| c.is_control()) {
        return Err(ForgeError::Malformed(format!("{what} is not a plausible value")));
    }
    Ok(value.to_string())
}

/// Which forge sent a delivery to the GitHub endpoint: Gitea and Forgejo also send GitHub's
/// headers, so their own are looked for first.
pub fn detect(headers: &HeaderMap) -> Forge {
    if header(headers, "x-gitea-event").is_some() || header(headers, "x-forgejo-event").is_some() {
        Forge::Gitea
    } else {
        Forge::GitHub
    }
}

/// Checks the headers a delivery of `forge` must carry (event and proof), before its body is read.
pub fn precheck(forge: Forge, headers: &HeaderMap) -> Result<(), ForgeError> {
    let need = |names: &[&str], what: &str, unsigned: bool| -> Result<(), ForgeError> {
        match names.iter().any(|n| header(headers, n).is_some()) {
            true => Ok(()),
            false if unsigned => Err(ForgeError::Unsigned(format!("missing {what} header"))),
            false => Err(ForgeError::Malformed(format!("missing {what} header"))),
        }
    };
    match forge {
        Forge::GitHub => {
            need(&["x-github-event"], "X-GitHub-Event", false)?;
            need(&["x-hub-signature-256"], "X-Hub-Signature-256", true)
        }
        Forge::GitLab => {
            need(&["x-gitlab-event"], "X-Gitlab-Event", false)?;
            need(&["x-gitlab-token", "webhook-signature"], "X-Gitlab-Token (or webhook-signature)", true)
        }
        Forge::Bitbucket => {
            need(&["x-event-key"], "X-Event-Key", false)?;
            need(&["x-hub-signature"], "X-Hub-Signature", true)
        }
        Forge::Gitea => {
            need(&["x-gitea-event", "x-forgejo-event"], "X-Gitea-Event (or X-Forgejo-Event)", false)?;
            need(&["x-gitea-signature", "x-forgejo-signature"], "X-Gitea-Signature (or X-Forgejo-Signature)", true)
        }
    }
}

/// Reads a delivery of `forge` from its headers and raw body.
pub fn read(forge: Forge, headers: &HeaderMap, body: &[u8]) -> Result<Delivery, ForgeError> {
    match forge {
        Forge::GitHub => github(headers, body),
        Forge::GitLab => gitlab(headers, body),
        Forge::Bitbucket => bitbucket(headers, body),
        Forge::Gitea => gitea(headers, body),
    }
}

/// The fields of a GitHub-shaped push (GitHub, Gitea, Forgejo) Slipway reads.
#[derive(Debug, Default, Deserialize)]
struct HubPush {
    #[serde(rename = "ref", default)]
    git_ref: Option<String>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    forced: bool,
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    head_commit: Option<HubCommit>,
    #[serde(default)]
    commits: Vec<CommitFiles>,
    /// Gitea and Forgejo: how many commits the push had (the list may be shorter).
    #[serde(default)]
    total_commits: Option<usize>,
    #[serde(default)]
    repository: HubRepository,
    #[serde(default)]
    sender: HubPerson,
    #[serde(default)]
    pusher: HubPerson,
}

#[derive(Debug, Default, Deserialize)]
struct HubCommit {
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct HubRepository {
    #[serde(default)]
    clone_url: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    ssh_url: Option<String>,
    #[serde(default)]
    git_url: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

impl HubRepository {
    fn urls(self) -> Vec<String> {
        [self.clone_url, self.html_url, self.ssh_url, self.git_url, self.url].into_iter().flatten().collect()
    }
}

fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ForgeError> {
    serde_json::from_slice(body).map_err(|e| match e.is_data() {
        true => ForgeError::Malformed(format!("the payload is malformed: {e}")),
        false => ForgeError::Malformed(format!("body is not valid JSON: {e}")),
    })
}

fn hub_push(event: &str, push: HubPush) -> Result<(Event, Vec<String>), ForgeError> {
    let urls = push.repository.urls();
    let event = match event {
        "ping" => Event::Ping,
        "push" => match (push.git_ref, push.after) {
            (Some(git_ref), Some(after)) => {
                let message = push.head_commit.and_then(|c| c.message);
                let before = parent(push.before, push.forced);
                let listed_all = match push.total_commits {
                    Some(total) => total == push.commits.len(),
                    None => push.commits.len() < GITHUB_MAX_COMMITS,
                };
                let paths = changed_paths(&before, &push.commits, listed_all);
                let (sender, pusher) = (&push.sender, &push.pusher);
                let pusher = person(&[&sender.login, &pusher.login, &pusher.username, &pusher.name]);
                Event::Push(vec![Change { git_ref, after, deleted: push.deleted, message, before, paths, pusher }])
            }
            _ => Event::Malformed("push payload is malformed: it needs `ref` and `after`".into()),
        },
        other => Event::Other(format!("event `{other}` is not deployed")),
    };
    Ok((event, urls))
}

/// A GitHub-shaped pull request event (GitHub, Gitea, Forgejo).
#[derive(Debug, Default, Deserialize)]
struct HubPullEvent {
    #[serde(default)]
    action: String,
    #[serde(default)]
    number: Option<u64>,
    #[serde(default)]
    pull_request: Option<HubPull>,
    #[serde(default)]
    repository: HubRepository,
}

#[derive(Debug, Default, Deserialize)]
struct HubPull {
    #[serde(default)]
    number: Option<u64>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    merged: bool,
    #[serde(default)]
    user: HubPerson,
    #[serde(default)]
    head: HubBranch,
    #[serde(default)]
    base: HubBranch,
}

/// One side of a pull request: GitHub names its repository (`null` once a fork is deleted),
/// Gitea and Forgejo also give `repo_id`.
#[derive(Debug, Default, Deserialize)]
struct HubBranch {
    #[serde(rename = "ref", default)]
    git_ref: String,
    #[serde(default)]
    sha: String,
    #[serde(default)]
    repo_id: Option<i64>,
    #[serde(default)]
    repo: Option<HubRepoId>,
}

#[derive(Debug, Default, Deserialize)]
struct HubRepoId {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    full_name: Option<String>,
}

impl HubBranch {
    /// The repository's identity: its id, else its full name.
    fn repository(&self) -> Option<String> {
        let repo = self.repo.as_ref();
        self.repo_id
            .or(repo.and_then(|r| r.id))
            .map(|id| id.to_string())
            .or_else(|| repo.and_then(|r| r.full_name.clone()))
    }
}

/// The full commit name `sha` is, lowercased; `None` for anything else.
fn full_sha(sha: &str) -> Option<String> {
    let ok = (sha.len() == 40 || sha.len() == 64) && sha.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| sha.to_ascii_lowercase())
}

/// A branch name as a forge sends it, checked like the app's own.
fn branch(name: &str, what: &str) -> Result<String, ForgeError> {
    match crate::apps::is_branch_name(name) {
        true => Ok(name.to_string()),
        false => Err(ForgeError::Malformed(format!("{what} is not a branch name"))),
    }
}

/// GitHub's `pull_request` (actions `opened`, `synchronize`, `reopened`, `closed`) and Gitea's
/// and Forgejo's (`synchronized` for an update).
fn hub_pull(event: HubPullEvent) -> (Event, Vec<String>) {
    let urls = event.repository.urls();
    let action = match event.action.as_str() {
        "opened" | "reopened" | "synchronize" | "synchronized" => PullAction::Deploy,
        "closed" => PullAction::Close { merged: event.pull_request.as_ref().is_some_and(|p| p.merged) },
        other => {
            let other: String = other.chars().filter(|c| !c.is_control()).take(40).collect();
            return (Event::Other(format!("pull request action `{other}` changes no preview")), urls);
        }
    };
    let Some(pull) = event.pull_request else {
        return (Event::Malformed("a pull_request event needs `pull_request`".into()), urls);
    };
    let Some(number) = event.number.or(pull.number).filter(|n| *n > 0) else {
        return (Event::Malformed("a pull_request event needs its `number`".into()), urls);
    };
    let head_sha = full_sha(&pull.head.sha);
    if head_sha.is_none() && matches!(action, PullAction::Deploy) {
        return (Event::Malformed("pull_request.head.sha is not a commit SHA".into()), urls);
    }
    let target_branch = match branch(&pull.base.git_ref, "pull_request.base.ref") {
        Ok(b) => b,
        Err(ForgeError::Malformed(m)) => return (Event::Malformed(m), urls),
        Err(_) => return (Event::Malformed("pull_request.base.ref".into()), urls),
    };
    let (head_repo, base_repo) = (pull.head.repository(), pull.base.repository());
    let from_fork = head_repo.is_none() || head_repo != base_repo;
    let author = person(&[&pull.user.login, &pull.user.username, &pull.user.name]);
    let title = person(&[&pull.title]);
    let request = PullRequest {
        number,
        action,
        head: head_sha.clone().unwrap_or_default(),
        head_sha,
        head_ref: format!("refs/pull/{number}/head"),
        target_branch,
        from_fork,
        title,
        author,
    };
    (Event::PullRequest(request), urls)
}

fn github(headers: &HeaderMap, body: &[u8]) -> Result<Delivery, ForgeError> {
    let event = header(headers, "x-github-event")
        .ok_or_else(|| ForgeError::Malformed("missing X-GitHub-Event header".into()))?;
    if event.len() > 100 || !event.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ForgeError::Malformed("X-GitHub-Event is not an event name".into()));
    }
    let hex = header(headers, "x-hub-signature-256")
        .ok_or_else(|| ForgeError::Unsigned("missing X-Hub-Signature-256 header".into()))?
        .to_string();
    let id = header(headers, "x-github-delivery").map(|d| d.chars().take(100).collect());
    let form = header(headers, "content-type").is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    let payload: std::borrow::Cow<[u8]> = match form {
        true => url::form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned().into_bytes().into())
            .ok_or_else(|| ForgeError::Malformed("a form-encoded webhook needs a `payload` field".into()))?,
        false => body.into(),
    };
    let (event, repo_urls) = match event {
        "pull_request" => hub_pull(json(&payload)?),
        _ => hub_push(event, json(&payload)?)?,
    };
    Ok(Delivery { forge: Forge::GitHub, id, event, repo_urls, proof: Proof::Hmac { hex }, signed_body: body.to_vec() })
}

fn gitea(headers: &HeaderMap, body: &[u8]) -> Result<Delivery, ForgeError> {
    let event = header(headers, "x-forgejo-event")
        .or_else(|| header(headers, "x-gitea-event"))
        .ok_or_else(|| ForgeError::Malformed("missing X-Gitea-Event (or X-Forgejo-Event) header".into()))?;
    let event = bounded(event, "the event header")?;
    let hex = header(headers, "x-forgejo-signature")
        .or_else(|| header(headers, "x-gitea-signature"))
        .ok_or_else(|| ForgeError::Unsigned("missing X-Gitea-Signature (or X-Forgejo-Signature) header".into()))?
        .to_string();
    let id = header(headers, "x-forgejo-delivery")
        .or_else(|| header(headers, "x-gitea-delivery"))
        .map(|d| d.chars().take(100).collect());
    let (event, repo_urls) = match event.as_str() {
        "pull_request" => hub_pull(json(body)?),
        _ => hub_push(&event, json(body)?)?,
    };
    Ok(Delivery { forge: Forge::Gitea, id, event, repo_urls, proof: Proof::Hmac { hex }, signed_body: body.to_vec() })
}

#[derive(Debug, Default, Deserialize)]
struct GitLabPush {
    #[serde(rename = "ref", default)]
    git_ref: Option<String>,
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    checkout_sha: Option<String>,
    #[serde(default)]
    commits: Vec<CommitFiles>,
    /// How many commits the push had; GitLab lists at most 20 of them.
    #[serde(default)]
    total_commits_count: Option<usize>,
    #[serde(default)]
    project: GitLabProject,
    #[serde(default)]
    repository: GitLabProject,
    #[serde(default)]
    user_username: Option<String>,
    #[serde(default)]
    user_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct GitLabProject {
    #[serde(default)]
    git_http_url: Option<String>,
    #[serde(default)]
    git_ssh_url: Option<String>,
    #[serde(default)]
    web_url: Option<String>,
    #[serde(default)]
    http_url: Option<String>,
    #[serde(default)]
    ssh_url: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    homepage: Option<String>,
}

impl GitLabProject {
    fn urls(self) -> Vec<String> {
        [self.git_http_url, self.git_ssh_url, self.web_url, self.http_url, self.ssh_url, self.url, self.homepage]
            .into_iter()
            .flatten()
            .collect()
    }
}

fn gitlab(headers: &HeaderMap, body: &[u8]) -> Result<Delivery, ForgeError> {
    let event = header(headers, "x-gitlab-event")
        .ok_or_else(|| ForgeError::Malformed("missing X-Gitlab-Event header".into()))?;
    let event = bounded(event, "X-Gitlab-Event")?;
    let token = header(headers, "x-gitlab-token").map(str::to_string);
    let signed = match (
        header(headers, "webhook-id"),
        header(headers, "webhook-timestamp"),
        header(headers, "webhook-signature"),
    ) {
        (Some(id), Some(timestamp), Some(signatures)) => Some(Signed {
            id: bounded(id, "webhook-id")?,
            timestamp: timestamp.to_string(),
            signatures: signatures.to_string(),
        }),
        (None, None, None) => None,
        _ => {
            return Err(ForgeError::Unsigned(
                "a signed webhook needs webhook-id, webhook-timestamp and webhook-signature".into(),
            ));
        }
    };
    if token.is_none() && signed.is_none() {
        return Err(ForgeError::Unsigned("missing X-Gitlab-Token (or webhook-signature) header".into()));
    }
    let id = header(headers, "x-gitlab-event-uuid")
        .or_else(|| header(headers, "webhook-id"))
        .map(|d| d.chars().take(100).collect());
    if event == "Merge Request Hook" {
        let (event, repo_urls) = gitlab_merge(json(body)?);
        let proof = Proof::GitLab { token, signed };
        return Ok(Delivery { forge: Forge::GitLab, id, event, repo_urls, proof, signed_body: body.to_vec() });
    }
    let push: GitLabPush = json(body)?;
    let mut urls = push.project.urls();
    urls.extend(push.repository.urls());
    let event = match event.as_str() {
        "Push Hook" => {
            match (push.git_ref, push.after) {
                (Some(git_ref), Some(after)) => {
                    let deleted = after.bytes().all(|b| b == b'0');
                    // `checkout_sha` is the commit the branch points at after the push (null on deletion).
                    let after = push.checkout_sha.filter(|_| !deleted).unwrap_or(after);
                    let before = parent(push.before, false);
                    let listed_all = push.total_commits_count == Some(push.commits.len());
                    let paths = changed_paths(&before, &push.commits, listed_all);
                    let message = push.commits.into_iter().find(|c| c.id == after).and_then(|c| c.message);
                    let pusher = person(&[&push.user_username, &push.user_name]);
                    Event::Push(vec![Change { git_ref, after, deleted, message, before, paths, pusher }])
                }
                _ => Event::Malformed("push payload is malformed: it needs `ref` and `after`".into()),
            }
        }
        "Tag Push Hook" => Event::Other("tag pushes are not deployed".into()),
        other => Event::Other(format!("event `{other}` is not deployed")),
    };
    Ok(Delivery {
        forge: Forge::GitLab,
        id,
        event,
        repo_urls: urls,
        proof: Proof::GitLab { token, signed },
        signed_body: body.to_vec(),
    })
}

/// GitLab's `Merge Request Hook`.
#[derive(Debug, Default, Deserialize)]
struct GitLabMerge {
    #[serde(default)]
    object_attributes: Option<GitLabMergeAttributes>,
    #[serde(default)]
    project: GitLabProject,
    #[serde(default)]
    repository: GitLabProject,
    #[serde(default)]
    user: GitLabUser,
}

#[derive(Debug, Default, Deserialize)]
struct GitLabMergeAttributes {
    #[serde(default)]
    iid: Option<u64>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    target_branch: String,
    #[serde(default)]
    source_project_id: Option<i64>,
    #[serde(default)]
    target_project_id: Option<i64>,
    #[serde(default)]
    last_commit: GitLabCommit,
}

#[derive(Debug, Default, Deserialize)]
struct GitLabCommit {
    #[serde(default)]
    id: String,
}

#[derive(Debug, Default, Deserialize)]
struct GitLabUser {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// A merge request's `action`: `open`, `reopen` and `update` deploy, `close` and `merge` tear
/// down; the others (`approved`, `unapproved` ...) change nothing.
fn gitlab_merge(merge: GitLabMerge) -> (Event, Vec<String>) {
    let mut urls = merge.project.urls();
    urls.extend(merge.repository.urls());
    let Some(attrs) = merge.object_attributes else {
        return (Event::Malformed("a merge request event needs `object_attributes`".into()), urls);
    };
    let action = match attrs.action.as_deref().unwrap_or_default() {
        "open" | "reopen" | "update" => PullAction::Deploy,
        "close" => PullAction::Close { merged: false },
        "merge" => PullAction::Close { merged: true },
        other => {
            let other: String = other.chars().filter(|c| !c.is_control()).take(40).collect();
            return (Event::Other(format!("merge request action `{other}` changes no preview")), urls);
        }
    };
    let Some(number) = attrs.iid.filter(|n| *n > 0) else {
        return (Event::Malformed("a merge request event needs object_attributes.iid".into()), urls);
    };
    let head_sha = full_sha(&attrs.last_commit.id);
    if head_sha.is_none() && matches!(action, PullAction::Deploy) {
        return (Event::Malformed("object_attributes.last_commit.id is not a commit SHA".into()), urls);
    }
    let target_branch = match branch(&attrs.target_branch, "object_attributes.target_branch") {
        Ok(b) => b,
        Err(e) => return (Event::Malformed(e.to_string()), urls),
    };
    let from_fork = attrs.source_project_id.is_none() || attrs.source_project_id != attrs.target_project_id;
    let request = PullRequest {
        number,
        action,
        head: head_sha.clone().unwrap_or_default(),
        head_sha,
        head_ref: format!("refs/merge-requests/{number}/head"),
        target_branch,
        from_fork,
        title: person(&[&attrs.title]),
        author: person(&[&merge.user.username, &merge.user.name]),
    };
    (Event::PullRequest(request), urls)
}

#[derive(Debug, Default, Deserialize)]
struct BitbucketPayload {
    #[serde(default)]
    push: Option<BitbucketPush>,
    #[serde(default)]
    pullrequest: Option<BitbucketPull>,
    #[serde(default)]
    repository: BitbucketRepository,
    #[serde(default)]
    actor: BitbucketActor,
}

#[derive(Debug, Default, Deserialize)]
struct BitbucketActor {
    #[serde(default)]
    nickname: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
}

/// A Bitbucket Cloud pull request (`pullrequest:*` events).
#[derive(Debug, Default, Deserialize)]
struct BitbucketPull {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    author: BitbucketActor,
    #[serde(default)]
    source: BitbucketEnd,
    #[serde(default)]
    destination: BitbucketEnd,
}

#[derive(Debug, Default, Deserialize)]
struct BitbucketEnd {
    #[serde(default)]
    branch: BitbucketBranch,
    #[serde(default)]
    commit: BitbucketTarget,
    #[serde(default)]
    repository: BitbucketRepository,
}

#[derive(Debug, Default, Deserialize)]
struct BitbucketBranch {
    #[serde(default)]
    name: String,
}

/// `pullrequest:created` and `pullrequest:updated` deploy, `pullrequest:fulfilled` (merged) and
/// `pullrequest:rejected` (declined) tear down. Bitbucket names the head commit by an
/// abbreviation, so the head is the source branch's, resolved by the runner.
fn bitbucket_pull(key: &str, pull: Option<BitbucketPull>) -> Event {
    let action = match key {
        "pullrequest:created" | "pullrequest:updated" => PullAction::Deploy,
        "pullrequest:fulfilled" => PullAction::Close { merged: true },
        "pullrequest:rejected" => PullAction::Close { merged: false },
        other => return Event::Other(format!("event `{other}` changes no preview")),
    };
    let Some(pull) = pull else {
        return Event::Malformed(format!("a {key} payload needs `pullrequest`"));
    };
    let Some(number) = pull.id.filter(|n| *n > 0) else {
        return Event::Malformed("pullrequest.id is missing".into());
    };
    let (source, target) = match (
        branch(&pull.source.branch.name, "pullrequest.source.branch.name"),
        branch(&pull.destination.branch.name, "pullrequest.destination.branch.name"),
    ) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(e), _) | (_, Err(e)) => return Event::Malformed(e.to_string()),
    };
    let (from, to) = (&pull.source.repository.full_name, &pull.destination.repository.full_name);
    let from_fork =
        from.is_none() || from.as_deref().map(str::to_ascii_lowercase) != to.as_deref().map(str::to_ascii_lowercase);
    let hash = &pull.source.commit.hash;
    let named = (7..=64).contains(&hash.len()) && hash.bytes().all(|b| b.is_ascii_hexdigit());
    Event::PullRequest(PullRequest {
        number,
        action,
        head: if named { hash.to_ascii_lowercase() } else { String::new() },
        head_sha: full_sha(hash),
        head_ref: format!("refs/heads/{source}"),
        target_branch: target,
        from_fork,
        title: person(&[&pull.title]),
        author: person(&[&pull.author.nickname, &pull.author.display_name]),
    })
}

#[derive(Debug, Default, Deserialize)]
struct BitbucketPush {
    #[serde(default)]
    changes: Vec<BitbucketChange>,
}

#[derive(Debug, Default, Deserialize)]
struct BitbucketChange {
    #[serde(default)]
    forced: bool,
    #[serde(default)]
    new: Option<BitbucketRef>,
    #[serde(default)]
    old: Option<BitbucketRef>,
}

#[derive(Debug, Default, Deserialize)]
struct BitbucketRef {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    target: BitbucketTarget,
}

#[derive(Debug, Default, Deserialize)]
struct BitbucketTarget {
    #[serde(default)]
    hash: String,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct BitbucketRepository {
    #[serde(default)]
    full_name: Option<String>,
    #[serde(default)]
    links: BitbucketLinks,
}

#[derive(Debug, Default, Deserialize)]
struct BitbucketLinks {
    #[serde(default)]
    html: Option<BitbucketLink>,
}

#[derive(Debug, Default, Deserialize)]
struct BitbucketLink {
    #[serde(default)]
    href: Option<String>,
}

fn bitbucket(headers: &HeaderMap, body: &[u8]) -> Result<Delivery, ForgeError> {
    let event =
        header(headers, "x-event-key").ok_or_else(|| ForgeError::Malformed("missing X-Event-Key header".into()))?;
    let event = bounded(event, "X-Event-Key")?;
    let hex = header(headers, "x-hub-signature")
        .ok_or_else(|| ForgeError::Unsigned("missing X-Hub-Signature header (set a secret on the webhook)".into()))?
        .to_string();
    let id = header(headers, "x-request-uuid")
        .or_else(|| header(headers, "x-hook-uuid"))
        .map(|d| d.chars().take(100).collect());
    let payload: BitbucketPayload = json(body)?;
    let mut urls: Vec<String> = payload.repository.links.html.and_then(|l| l.href).into_iter().collect();
    urls.extend(payload.repository.full_name.map(|n| format!("https://bitbucket.org/{n}")));
    let pusher = person(&[&payload.actor.nickname, &payload.actor.display_name]);
    let event = match event.as_str() {
        "repo:push" => {
            let push = payload.push.ok_or_else(|| ForgeError::Malformed("a repo:push payload needs `push`".into()))?;
            let changes = push
                .changes
                .into_iter()
                .filter_map(|c| match (c.new, c.old) {
                    (Some(new), old) => Some(Change {
                        git_ref: bitbucket_ref(&new),
                        before: parent(old.map(|o| o.target.hash), c.forced),
                        after: new.target.hash,
                        deleted: false,
                        message: new.target.message,
                        // Bitbucket's changes list no files: the runner diffs through git.
                        paths: None,
                        pusher: pusher.clone(),
                    }),
                    (None, Some(old)) => Some(Change {
                        git_ref: bitbucket_ref(&old),
                        after: String::new(),
                        deleted: true,
                        message: None,
                        before: None,
                        paths: None,
                        pusher: pusher.clone(),
                    }),
                    (None, None) => None,
                })
                .collect();
            Event::Push(changes)
        }
        "diagnostics:ping" => Event::Ping,
        key if key.starts_with("pullrequest:") => bitbucket_pull(key, payload.pullrequest),
        other => Event::Other(format!("event `{other}` is not deployed")),
    };
    Ok(Delivery {
        forge: Forge::Bitbucket,
        id,
        event,
        repo_urls: urls,
        proof: Proof::Hmac { hex },
        signed_body: body.to_vec(),
    })
}

fn bitbucket_ref(r: &BitbucketRef) -> String {
    match r.kind.as_str() {
        "tag" | "annotated_tag" => format!("refs/tags/{}", r.name),
        _ => format!("refs/heads/{}", r.name),
    }
}

/// Whether `proof` shows the sender knows `secret` (for GitLab signatures, at `now`, Unix seconds).
pub fn verifies(proof: &Proof, secret: &str, body: &[u8], now: i64) -> bool {
    match proof {
        Proof::Hmac { hex } => hmac_matches(secret.as_bytes(), body, hex.strip_prefix("sha256=").unwrap_or(hex)),
        Proof::GitLab { token, signed } => {
            use subtle::ConstantTimeEq;
            let token_ok =
                token.as_ref().map(|t| t.len() == secret.len() && bool::from(t.as_bytes().ct_eq(secret.as_bytes())));
            let signed_ok = signed.as_ref().map(|s| standard_webhook_matches(s, secret, body, now));
            match (token_ok, signed_ok) {
                (None, None) => false,
                (t, s) => t.unwrap_or(true) && s.unwrap_or(true),
            }
        }
    }
}

fn hmac_matches(secret: &[u8], body: &[u8], hex_sig: &str) -> bool {
    let Ok(sig) = hex::decode(hex_sig) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return false };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Standard Webhooks: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` (space-separated,
/// any may match), keyed by the base64 after `whsec_`, the timestamp within the tolerance.
fn standard_webhook_matches(signed: &Signed, secret: &str, body: &[u8], now: i64) -> bool {
    let Some(key) = standard_webhook_key(secret) else {
        return false;
    };
    let Ok(timestamp) = signed.timestamp.parse::<i64>() else { return false };
    if (now - timestamp).abs() > TIMESTAMP_TOLERANCE_SECS {
        return false;
    }
    signed.signatures.split_whitespace().filter_map(|s| s.strip_prefix("v1,")).any(|b64| {
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(b64) else { return false };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else { return false };
        mac.update(signed.id.as_bytes());
        mac.update(b".");
        mac.update(signed.timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&sig).is_ok()
    })
}

/// The key of a Standard Webhooks secret: the base64 after `whsec_`.
pub fn standard_webhook_key(secret: &str) -> Option<Vec<u8>> {
    secret.strip_prefix("whsec_").and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
}

/// A Standard Webhooks signature: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn standard_webhook_signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return String::new() };
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header"));
        }
        h
    }

    fn standard_signature(key: &[u8], id: &str, ts: i64, body: &[u8]) -> String {
        standard_webhook_signature(key, id, ts, body)
    }

    #[test]
    fn gitlab_needs_a_matching_token_and_a_valid_signature_when_one_is_sent() {
        let body = b"{}";
        let key = [9u8; 32];
        let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key));
        let now = 1_800_000_000;
        let signed = |ts: i64| {
            Some(Signed {
                id: "m".into(),
                timestamp: ts.to_string(),
                signatures: standard_signature(&key, "m", ts, body),
            })
        };
        let proof = |token: Option<&str>, signed| Proof::GitLab { token: token.map(str::to_string), signed };
        assert!(verifies(&proof(Some("tok-0123456789"), None), "tok-0123456789", body, now));
        assert!(!verifies(&proof(Some("tok-0123456789x"), None), "tok-0123456789", body, now));
        assert!(verifies(&proof(None, signed(now)), &secret, body, now));
        assert!(verifies(&proof(None, signed(now - TIMESTAMP_TOLERANCE_SECS)), &secret, body, now));
        assert!(!verifies(&proof(None, signed(now - TIMESTAMP_TOLERANCE_SECS - 1)), &secret, body, now), "replayed");
        assert!(!verifies(&proof(None, signed(now + 3600)), &secret, body, now), "from the future");
        assert!(!verifies(&proof(None, signed(now)), "not-a-whsec-secret", body, now));
        assert!(!verifies(&proof(Some(&secret), signed(now)), "whsec_other", body, now));
        assert!(!verifies(&proof(None, None), &secret, body, now), "no proof at all");
        let garbage = Some(Signed { id: "m".into(), timestamp: "soon".into(), signatures: "v1,!!! v2,abc".into() });
        assert!(!verifies(&proof(None, garbage), &secret, body, now));
    }

    #[test]
    fn skip_markers_in_the_message_or_a_trailer_skip_a_push() {
        for message in ["Fix typo [skip ci]", "[CI SKIP] docs", "wip [no ci]", "Tune [skip deploy]", "x [deploy skip]"]
        {
            assert!(skip_marker(message).is_some(), "{message}");
        }
        assert!(skip_marker("Update docs\n\nSkip-checks: true\n").is_some());
        assert!(skip_marker("Update docs\n\nskip-checks:true").is_some());
        for message in [
            "Deploy the fix",
            "skip ci without brackets",
            "skip-checks: true\n\nbut not the last paragraph",
            "[skip] ci",
            "skip-checks: false",
        ] {
            assert_eq!(skip_marker(message), None, "{message}");
        }
    }

    #[test]
    fn hmac_proofs_take_the_prefixed_and_the_bare_form() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").expect("key");
        mac.update(b"body");
        let hex = hex::encode(mac.finalize().into_bytes());
        assert!(verifies(&Proof::Hmac { hex: format!("sha256={hex}") }, "s3cret", b"body", 0));
        assert!(verifies(&Proof::Hmac { hex: hex.clone() }, "s3cret", b"body", 0));
        assert!(!verifies(&Proof::Hmac { hex: hex.clone() }, "s3cret", b"body!", 0));
        assert!(!verifies(&Proof::Hmac { hex: "zz".into() }, "s3cret", b"body", 0));
    }

    #[test]
    fn headers_are_checked_before_the_body_and_gitea_is_told_apart_from_github() {
        assert!(matches!(
            precheck(Forge::GitHub, &headers(&[("x-github-event", "push")])),
            Err(ForgeError::Unsigned(_))
        ));
        assert!(matches!(precheck(Forge::GitLab, &headers(&[("x-gitlab-token", "t")])), Err(ForgeError::Malformed(_))));
        assert!(
            precheck(Forge::Bitbucket, &headers(&[("x-event-key", "repo:push"), ("x-hub-signature", "sha256=00")]))
                .is_ok()
        );
        assert!(
            precheck(Forge::Gitea, &headers(&[("x-forgejo-event", "push"), ("x-forgejo-signature", "00")])).is_ok()
        );
        let both = headers(&[("x-github-event", "push"), ("x-gitea-event", "push")]);
        assert_eq!(detect(&both), Forge::Gitea);
        assert_eq!(detect(&headers(&[("x-github-event", "push")])), Forge::GitHub);
    }

    #[test]
    fn bitbucket_changes_become_refs_and_deletions() {
        let body = br#"{"push": {"changes": [
            {"new": {"type": "tag", "name": "v1", "target": {"hash": "aa"}}, "old": null},
            {"new": null, "old": {"type": "branch", "name": "gone", "target": {"hash": "bb"}}},
            {"new": null, "old": null}
        ]}, "repository": {"full_name": "acme/shop"}}"#;
        let h = headers(&[("x-event-key", "repo:push"), ("x-hub-signature", "sha256=00")]);
        let d = read(Forge::Bitbucket, &h, body).expect("reads");
        assert_eq!(d.repo_urls, ["https://bitbucket.org/acme/shop"]);
        let Event::Push(changes) = d.event else { panic!("a push") };
        assert_eq!(
            changes[0],
            Change {
                git_ref: "refs/tags/v1".into(),
                after: "aa".into(),
                deleted: false,
                message: None,
                before: None,
                paths: None,
                pusher: None
            }
        );
        assert_eq!(
            changes[1],
            Change {
                git_ref: "refs/heads/gone".into(),
                after: String::new(),
                deleted: true,
                message: None,
                before: None,
                paths: None,
                pusher: None
            }
        );
        assert_eq!(changes.len(), 2);
    }

    fn paths_of(forge: Forge, pairs: &[(&'static str, &str)], body: serde_json::Value) -> Option<Vec<String>> {
        let d = read(forge, &headers(pairs), &serde_json::to_vec(&body).expect("json")).expect("reads");
        let Event::Push(mut changes) = d.event else { panic!("a push") };
        changes.remove(0).paths
    }

    #[test]
    fn changed_files_come_from_the_payload_only_when_it_lists_every_commit() {
        let github = [("x-github-event", "push"), ("x-hub-signature-256", "sha256=00")];
        let gitea = [("x-gitea-event", "push"), ("x-gitea-signature", "00")];
        let gitlab = [("x-gitlab-event", "Push Hook"), ("x-gitlab-token", "t")];
        let (before, after) = ("1".repeat(40), "2".repeat(40));
        let commit = |files: &[&str]| serde_json::json!({"id": after, "message": "m", "added": [files[0]], "modified": [files[1]], "removed": [files[2]]});
        let hub = |forced: bool, before: &str, commits: Vec<serde_json::Value>, total: Option<usize>| {
            let mut body = serde_json::json!({"ref": "refs/heads/main", "before": before, "after": after,
                "forced": forced, "commits": commits, "repository": {"clone_url": "https://x/y"}});
            if let Some(total) = total {
                body["total_commits"] = total.into();
            }
            body
        };
        let two = vec![commit(&["api/a.go", "api/b.go", "web/old.js"]), commit(&["api/a.go", "README.md", "x"])];
        let all: Vec<String> =
            ["README.md", "api/a.go", "api/b.go", "web/old.js", "x"].iter().map(|p| p.to_string()).collect();
        assert_eq!(paths_of(Forge::GitHub, &github, hub(false, &before, two.clone(), None)), Some(all.clone()));
        // A forced push, a new branch, no commits listed: unknown (the runner diffs through git).
        assert_eq!(paths_of(Forge::GitHub, &github, hub(true, &before, two.clone(), None)), None);
        assert_eq!(paths_of(Forge::GitHub, &github, hub(false, &"0".repeat(40), two.clone(), None)), None);
        assert_eq!(paths_of(Forge::GitHub, &github, hub(false, &before, Vec::new(), None)), None);
        // A commit without its file lists (GitHub Actions' copy of the payload has none).
        let bare = vec![serde_json::json!({"id": after, "message": "m"})];
        assert_eq!(paths_of(Forge::GitHub, &github, hub(false, &before, bare, None)), None);
        let odd = vec![serde_json::json!({"id": after, "added": [5], "modified": "x", "removed": null})];
        assert_eq!(paths_of(Forge::GitHub, &github, hub(false, &before, odd, None)), None);
        // Gitea and Forgejo say how many commits there were: a shorter list is truncated.
        assert_eq!(paths_of(Forge::Gitea, &gitea, hub(false, &before, two.clone(), Some(2))), Some(all.clone()));
        assert_eq!(paths_of(Forge::Gitea, &gitea, hub(false, &before, two.clone(), Some(7))), None);
        // GitLab lists at most 20 commits of `total_commits_count`.
        let lab = |total: usize| {
            serde_json::json!({"ref": "refs/heads/main", "before": before, "after": after, "checkout_sha": after,
                "commits": two, "total_commits_count": total, "project": {"git_http_url": "https://x/y"}})
        };
        assert_eq!(paths_of(Forge::GitLab, &gitlab, lab(2)), Some(all));
        assert_eq!(paths_of(Forge::GitLab, &gitlab, lab(25)), None);
        // More files than kept: unknown, never a partial list.
        let huge: Vec<String> = (0..=MAX_PATHS).map(|i| format!("f/{i}")).collect();
        let big = vec![serde_json::json!({"id": after, "added": huge, "modified": [], "removed": []})];
        assert_eq!(paths_of(Forge::GitHub, &github, hub(false, &before, big, None)), None);
    }

    /// A pull request fixture of tests/fixtures/forges with its placeholders filled.
    fn pull_fixture(name: &str, action: &str, number: &str, fork: bool, merged: bool) -> Vec<u8> {
        let path = format!("{}/../tests/fixtures/forges/{name}", env!("CARGO_MANIFEST_DIR"));
        let (head_repo, head_id) = if fork { ("someone/Hello-World", "999") } else { ("acme/web", "7") };
        let (head_repo, head_id) = match name {
            n if n.starts_with("github") && !fork => ("Codertocat/Hello-World", "186853002"),
            n if n.starts_with("gitlab") && !fork => ("", "1"),
            _ => (head_repo, head_id),
        };
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .replace("{{REPO}}", "https://forge.example.com/acme/web.git")
            .replace("{{ACTION}}", action)
            .replace("{{NUMBER}}", number)
            .replace("{{HEAD_REPO_ID}}", head_id)
            .replace("{{HEAD_REPO}}", head_repo)
            .replace("{{MERGED}}", if merged { "true" } else { "false" })
            .replace("{{SHORT_SHA}}", &SHA[..12])
            .replace("{{SHA}}", SHA)
            .into_bytes()
    }

    const SHA: &str = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7";

    fn pull_of(forge: Forge, event: &str, body: &[u8]) -> Event {
        let pairs: Vec<(&'static str, &str)> = match forge {
            Forge::GitHub => vec![("x-github-event", event), ("x-hub-signature-256", "sha256=00")],
            Forge::GitLab => vec![("x-gitlab-event", event), ("x-gitlab-token", "t")],
            Forge::Bitbucket => vec![("x-event-key", event), ("x-hub-signature", "sha256=00")],
            Forge::Gitea => vec![("x-gitea-event", event), ("x-gitea-signature", "00")],
        };
        read(forge, &headers(&pairs), body).expect("readable").event
    }

    #[test]
    fn pull_requests_are_read_from_each_forges_payload() {
        let opened = |forge, event: &str, file: &str, action: &str, fork: bool| match pull_of(
            forge,
            event,
            &pull_fixture(file, action, "12", fork, false),
        ) {
            Event::PullRequest(p) => p,
            other => panic!("{file} {action}: {other:?}"),
        };
        for (forge, event, file, action, head_ref) in [
            (Forge::GitHub, "pull_request", "github-pull-request.json", "opened", "refs/pull/12/head"),
            (Forge::GitHub, "pull_request", "github-pull-request.json", "synchronize", "refs/pull/12/head"),
            (Forge::GitHub, "pull_request", "github-pull-request.json", "reopened", "refs/pull/12/head"),
            (Forge::Gitea, "pull_request", "gitea-pull-request.json", "opened", "refs/pull/12/head"),
            (Forge::Gitea, "pull_request", "gitea-pull-request.json", "synchronized", "refs/pull/12/head"),
            (Forge::GitLab, "Merge Request Hook", "gitlab-merge-request.json", "open", "refs/merge-requests/12/head"),
            (Forge::GitLab, "Merge Request Hook", "gitlab-merge-request.json", "update", "refs/merge-requests/12/head"),
            (Forge::GitLab, "Merge Request Hook", "gitlab-merge-request.json", "reopen", "refs/merge-requests/12/head"),
        ] {
            let p = opened(forge, event, file, action, false);
            assert_eq!(p.number, 12, "{file} {action}");
            assert_eq!(p.action, PullAction::Deploy, "{file} {action}");
            assert_eq!((p.head_sha.as_deref(), p.head.as_str()), (Some(SHA), SHA), "{file} {action}");
            assert_eq!((p.head_ref.as_str(), p.target_branch.as_str()), (head_ref, "main"), "{file} {action}");
            assert!(!p.from_fork, "{file} {action}");
            assert!(p.title.is_some() && p.author.is_some(), "{file}: {p:?}");
            assert!(opened(forge, event, file, action, true).from_fork, "{file} from a fork");
        }
        // Bitbucket names the head by an abbreviation: the source branch is deployed.
        let p = opened(Forge::Bitbucket, "pullrequest:created", "bitbucket-pullrequest.json", "", false);
        assert_eq!((p.number, p.head_sha.as_deref(), p.head.as_str()), (12, None, &SHA[..12]));
        assert_eq!((p.head_ref.as_str(), p.target_branch.as_str(), p.from_fork), ("refs/heads/feature", "main", false));
        assert_eq!(p.author.as_deref(), Some("emma"));
        assert!(opened(Forge::Bitbucket, "pullrequest:updated", "bitbucket-pullrequest.json", "", true).from_fork);

        // Closing and merging.
        for (forge, event, file, action, merged, want) in [
            (Forge::GitHub, "pull_request", "github-pull-request.json", "closed", true, true),
            (Forge::GitHub, "pull_request", "github-pull-request.json", "closed", false, false),
            (Forge::Gitea, "pull_request", "gitea-pull-request.json", "closed", true, true),
            (Forge::GitLab, "Merge Request Hook", "gitlab-merge-request.json", "merge", false, true),
            (Forge::GitLab, "Merge Request Hook", "gitlab-merge-request.json", "close", false, false),
            (Forge::Bitbucket, "pullrequest:fulfilled", "bitbucket-pullrequest.json", "", false, true),
            (Forge::Bitbucket, "pullrequest:rejected", "bitbucket-pullrequest.json", "", false, false),
        ] {
            match pull_of(forge, event, &pull_fixture(file, action, "12", false, merged)) {
                Event::PullRequest(p) => assert_eq!(p.action, PullAction::Close { merged: want }, "{file} {action}"),
                other => panic!("{file} {action}: {other:?}"),
            }
        }
        // Actions that change no preview, and requests without what they need.
        for (forge, event, file, action) in [
            (Forge::GitHub, "pull_request", "github-pull-request.json", "labeled"),
            (Forge::Gitea, "pull_request", "gitea-pull-request.json", "edited"),
            (Forge::GitLab, "Merge Request Hook", "gitlab-merge-request.json", "approved"),
            (Forge::Bitbucket, "pullrequest:comment_created", "bitbucket-pullrequest.json", ""),
        ] {
            let event = pull_of(forge, event, &pull_fixture(file, action, "12", false, false));
            assert!(matches!(&event, Event::Other(why) if why.contains("no preview")), "{file} {action}: {event:?}");
        }
        for (forge, event, file, action) in [
            (Forge::GitHub, "pull_request", "github-pull-request.json", "opened"),
            (Forge::GitLab, "Merge Request Hook", "gitlab-merge-request.json", "open"),
            (Forge::Bitbucket, "pullrequest:created", "bitbucket-pullrequest.json", ""),
        ] {
            let event = pull_of(forge, event, &pull_fixture(file, action, "0", false, false));
            assert!(matches!(event, Event::Malformed(_)), "{file} number 0: {event:?}");
        }
        let bad_branch = String::from_utf8(pull_fixture("github-pull-request.json", "opened", "3", false, false))
            .expect("utf-8")
            .replace("\"ref\": \"main\"", "\"ref\": \"refs/../x\"");
        assert!(matches!(pull_of(Forge::GitHub, "pull_request", bad_branch.as_bytes()), Event::Malformed(_)));
        let no_sha = String::from_utf8(pull_fixture("github-pull-request.json", "opened", "3", false, false))
            .expect("utf-8")
            .replace(SHA, "not-a-sha");
        assert!(matches!(pull_of(Forge::GitHub, "pull_request", no_sha.as_bytes()), Event::Malformed(_)));
    }

    #[test]
    fn hostile_bodies_are_errors_not_panics() {
        let cases: [(Forge, &[(&'static str, &str)]); 8] = [
            (Forge::GitHub, &[("x-github-event", "push"), ("x-hub-signature-256", "sha256=00")]),
            (Forge::GitLab, &[("x-gitlab-event", "Push Hook"), ("x-gitlab-token", "t")]),
            (Forge::Bitbucket, &[("x-event-key", "repo:push"), ("x-hub-signature", "sha256=00")]),
            (Forge::Gitea, &[("x-gitea-event", "push"), ("x-gitea-signature", "00")]),
            (Forge::GitHub, &[("x-github-event", "pull_request"), ("x-hub-signature-256", "sha256=00")]),
            (Forge::GitLab, &[("x-gitlab-event", "Merge Request Hook"), ("x-gitlab-token", "t")]),
            (Forge::Bitbucket, &[("x-event-key", "pullrequest:created"), ("x-hub-signature", "sha256=00")]),
            (Forge::Gitea, &[("x-gitea-event", "pull_request"), ("x-gitea-signature", "00")]),
        ];
        let deep = "[".repeat(10_000);
        for (forge, pairs) in cases {
            let h = headers(pairs);
            let hostile_pull = br#"{"action":"opened","number":-1,"pull_request":{"number":18446744073709551616,"head":{"sha":5},"base":{"ref":"../x"}},"object_attributes":{"iid":0,"action":"open"},"pullrequest":{"id":"x"}}"#;
            for body in [&b""[..], b"null", b"[]", b"{\"ref\": 5}", deep.as_bytes(), b"\xff\xfe", &hostile_pull[..]] {
                let _ = read(forge, &h, body);
            }
        }
        let form = headers(&[
            ("x-github-event", "push"),
            ("x-hub-signature-256", "sha256=00"),
            ("content-type", "application/x-www-form-urlencoded"),
        ]);
        assert!(read(Forge::GitHub, &form, b"payload=%ZZ").is_err());
    }

    #[test]
    fn the_pusher_is_read_from_each_forge_short_and_without_control_characters() {
        let pusher = |forge: Forge, pairs: &[(&'static str, &str)], body: serde_json::Value| {
            let d = read(forge, &headers(pairs), &serde_json::to_vec(&body).expect("json")).expect("reads");
            let Event::Push(changes) = d.event else { panic!("a push") };
            changes[0].pusher.clone()
        };
        let hub = serde_json::json!({"ref": "refs/heads/main", "after": "a".repeat(40), "sender": {"login": "octocat"},
                         "pusher": {"name": "Octo Cat"}});
        let github = [("x-github-event", "push"), ("x-hub-signature-256", "sha256=00")];
        assert_eq!(pusher(Forge::GitHub, &github, hub).as_deref(), Some("octocat"));
        let gitea =
            serde_json::json!({"ref": "refs/heads/main", "after": "a".repeat(40), "pusher": {"login": "gitea-user"}});
        let headers_gitea = [("x-gitea-event", "push"), ("x-gitea-signature", "00")];
        assert_eq!(pusher(Forge::Gitea, &headers_gitea, gitea).as_deref(), Some("gitea-user"));
        let lab = serde_json::json!({"ref": "refs/heads/main", "after": "a".repeat(40), "user_username": "", "user_name": "Lab\u{1b}[31m User"});
        let gitlab = [("x-gitlab-event", "Push Hook"), ("x-gitlab-token", "t")];
        assert_eq!(pusher(Forge::GitLab, &gitlab, lab).as_deref(), Some("Lab[31m User"), "control characters dropped");
        let bucket = serde_json::json!({"actor": {"nickname": "x".repeat(300)}, "push": {"changes": [
            {"new": {"type": "branch", "name": "main", "target": {"hash": "a".repeat(40)}}}]}});
        let bitbucket = [("x-event-key", "repo:push"), ("x-hub-signature", "sha256=00")];
        assert_eq!(pusher(Forge::Bitbucket, &bitbucket, bucket).map(|p| p.len()), Some(100), "at most 100 characters");
    }
}
