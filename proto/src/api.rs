//! The HTTP API's request and response bodies, shared by the scheduler (which serves them) and
//! the CLI (which reads them), so a field renamed on one side breaks the build, not a user.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::message::{EdgeSettings, GitCredentials, Limits, TargetKind};
use crate::state::{Cause, State, Step, StepStatus};

/// Every error answer: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `POST /api/v1/apps`: what a user sends to register an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApp {
    pub name: String,
    pub repo_url: String,
    #[serde(default = "default_branch")]
    pub branch: String,
    #[serde(default = "default_environment")]
    pub environment: String,
    #[serde(default = "default_target")]
    pub target: String,
    #[serde(default = "default_health_path")]
    pub health_path: String,
    #[serde(default = "default_port")]
    pub port: u32,
    /// The app's environment. A bare string is secret when its name looks secret
    /// ([`crate::message::is_secret_name`]); `{"value": ..., "secret": bool}` marks it explicitly.
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    pub webhook_secret: String,
    /// Credentials for a private repository; sent only to the repository's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_credentials: Option<GitCredentials>,
    /// The app's container limits (docker target); unset ones are the runner's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Extra hosts and the drain timeout on the edge (docker target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeSettings>,
    #[serde(default = "default_app_root")]
    pub app_root: String,
    /// Globs (from the repository root) of the files whose changes deploy the app; empty: every push.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch_paths: Vec<String>,
    #[serde(default)]
    pub test_network: bool,
    /// Settings of the `kubernetes` target (the keys of docs/kubernetes.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<serde_json::Value>,
    /// Report each deployment's state on its commit at the forge.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "object")]
    pub commit_status: Option<CommitStatus>,
    /// Preview environments for pull requests against the app's branch.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "object")]
    pub previews: Option<PreviewSettings>,
}

/// A settings object as sent: an object or null, never the array serde would also take for a
/// struct (`[]` would be every default).
fn object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error;
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Null => Ok(None),
        // The field inside is named in the error (`max: invalid type ...`).
        v @ serde_json::Value::Object(_) => serde_path_to_error::deserialize(v).map(Some).map_err(D::Error::custom),
        _ => Err(D::Error::custom("expected an object")),
    }
}

/// An app's preview environments: each pull request (merge request) against its branch is
/// deployed as environment `pr-<number>` and torn down when it closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewSettings {
    /// Previews are made (false keeps the settings and tears nothing down by itself).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Requests from forks are built too. Off by default: a fork's code would run with the
    /// app's secrets.
    #[serde(default)]
    pub forks: bool,
    /// At most this many open previews; a request beyond it is refused with the reason.
    #[serde(default = "default_max_previews")]
    pub max: u32,
    /// A preview with no push for this many seconds is torn down (a push brings it back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Plain variables that replace or add to the app's in its previews (a preview database,
    /// a test payment key ...). Secret values belong in the app's own secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

fn default_max_previews() -> u32 {
    5
}

impl Default for PreviewSettings {
    fn default() -> Self {
        Self { enabled: true, forks: false, max: default_max_previews(), ttl_seconds: None, env: BTreeMap::new() }
    }
}

impl PreviewSettings {
    /// Checks the bounds; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.max) {
            return Err("previews.max must be between 1 and 100".into());
        }
        if self.ttl_seconds.is_some_and(|t| !(10..=365 * 24 * 3600).contains(&t)) {
            return Err("previews.ttl_seconds must be between 10 and 31536000 (a year)".into());
        }
        if self.env.len() > 100 {
            return Err("previews.env may set at most 100 variables".into());
        }
        for (key, value) in &self.env {
            let ok = !key.is_empty()
                && key.len() <= 256
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(format!(
                    "previews.env: `{}` must match [A-Za-z_][A-Za-z0-9_]*",
                    key.chars().take(80).collect::<String>()
                ));
            }
            if value.contains('\0') || value.len() > 64 * 1024 {
                return Err(format!("previews.env: `{key}` must have no NUL byte and at most 64 KiB"));
            }
        }
        Ok(())
    }
}

/// `POST /api/v1/session`: the dashboard's sign-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    pub token: String,
}

/// One pull request's preview of an app, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preview {
    pub app: String,
    pub number: u64,
    /// `pr-<number>`.
    pub environment: String,
    /// `open`, `closed` (the request was closed or merged: torn down), `expired` (idle past the
    /// TTL: torn down) or `refused` (a fork, or over the limit: never deployed).
    pub state: String,
    /// Why it is closed, expired or refused.
    #[serde(default)]
    pub reason: Option<String>,
    pub forge: String,
    pub head_sha: String,
    pub head_ref: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub author: Option<String>,
    pub from_fork: bool,
    /// Where it answers while it is open and deployed.
    #[serde(default)]
    pub url: Option<String>,
    /// Its newest deployment (or its teardown).
    #[serde(default)]
    pub deployment_id: Option<Uuid>,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub closed_at: Option<DateTime<Utc>>,
}

/// Where an app's deployments are reported as commit statuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitStatus {
    /// `github`, `gitlab`, `bitbucket` or `gitea` (Forgejo too).
    pub forge: String,
    /// The forge's API root; by default from the repository's host for github.com, gitlab.com
    /// and bitbucket.org (a self-hosted forge needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// `owner/repo` (GitLab: the project's path; Bitbucket: `workspace/repo`); by default from
    /// the repository URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// A token that may set statuses; stored encrypted, never shown. Absent in what the API shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// One environment value of a new app, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EnvValue {
    /// Secret when the name looks secret.
    Bare(String),
    /// Marked explicitly.
    Marked { value: String, secret: bool },
}

impl EnvValue {
    /// The value.
    pub fn value(&self) -> &str {
        match self {
            EnvValue::Bare(v) | EnvValue::Marked { value: v, .. } => v,
        }
    }

    /// Whether the value is secret, by its marking or else by `name`.
    pub fn is_secret(&self, name: &str) -> bool {
        match self {
            EnvValue::Bare(_) => crate::message::is_secret_name(name),
            EnvValue::Marked { secret, .. } => *secret,
        }
    }
}

/// What the API shows in place of a secret value.
pub const REDACTED: &str = "***";

fn default_branch() -> String {
    "main".into()
}
fn default_environment() -> String {
    "production".into()
}
fn default_target() -> String {
    "docker".into()
}
fn default_health_path() -> String {
    "/".into()
}
fn default_app_root() -> String {
    ".".into()
}
fn default_port() -> u32 {
    8080
}

/// A registered app as the API shows it (never with its webhook secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    pub id: Uuid,
    pub name: String,
    pub repo_url: String,
    pub branch: String,
    pub environment: String,
    pub target: TargetKind,
    pub health_path: String,
    pub port: u16,
    /// Every variable; secret ones (listed in `secrets`) show as [`REDACTED`], never their value.
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub secrets: Vec<String>,
    /// The username of the app's repository credentials, when it has some (never the token).
    #[serde(default)]
    pub git_username: Option<String>,
    #[serde(default)]
    pub limits: Option<Limits>,
    #[serde(default)]
    pub edge: Option<EdgeSettings>,
    /// Where the latest completed deployment answers: the app's stable address on the edge.
    #[serde(default)]
    pub url: Option<String>,
    pub app_root: String,
    #[serde(default)]
    pub watch_paths: Vec<String>,
    pub test_network: bool,
    /// Kubernetes settings; the values of `secret_env` show as [`REDACTED`].
    pub kube_settings: Option<serde_json::Value>,
    /// Where commit statuses go (without the token).
    #[serde(default)]
    pub commit_status: Option<CommitStatus>,
    #[serde(default)]
    pub previews: Option<PreviewSettings>,
    pub created_at: DateTime<Utc>,
}

/// `POST /api/v1/apps/{name}/deployments`: a commit, or none for the branch head.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
}

/// The answer to a deploy: the deployment, and whether it is new (202) or was recorded (200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployAnswer {
    pub deployment_id: Uuid,
    /// The commit; `None` until the runner resolved the branch head.
    pub sha: Option<String>,
    pub git_ref: String,
    pub new: bool,
}

/// `POST /api/v1/apps/{name}/rollback`: a deployment id or commit; none for the one before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// The answer to a rollback: the new deployment, and which one it redeploys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackAnswer {
    pub deployment_id: Uuid,
    pub sha: String,
    pub rollback_of: Uuid,
}

/// One release of an app (`GET /api/v1/apps/{name}/releases`): what a deployment deploys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// 1, 2, ... per app.
    pub version: u32,
    pub deployment_id: Uuid,
    /// The state of the deployment that deploys it.
    pub state: State,
    /// `github`, `manual`, `rollback`, `config`, ...
    pub source: String,
    pub sha: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub image_digest: Option<String>,
    /// Why it was made: the push, the deploy, the rollback or the configuration change.
    pub reason: String,
    /// The token that asked for it; none for a push.
    #[serde(default)]
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Whether it is the one serving now.
    pub live: bool,
    /// The apps and releases it was promoted to (`production v4`).
    #[serde(default)]
    pub promoted_to: Vec<String>,
}

/// A database snapshot of an app (`GET /api/v1/apps/{name}/snapshots`), taken by a runner with
/// `pg_dump -Fc` before a deployment's release command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: Uuid,
    /// The file's name in the runners' snapshot directory (under `<app>/`).
    pub name: String,
    pub bytes: u64,
    /// The deployment whose release command it was taken before, and that deployment's release.
    pub deployment_id: Uuid,
    #[serde(default)]
    pub release: Option<u32>,
    #[serde(default)]
    pub runner: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Set when the runners' retention removed the file: it can no longer be restored.
    #[serde(default)]
    pub pruned_at: Option<DateTime<Utc>>,
}

/// `POST /api/v1/apps/{name}/snapshots/{snapshot}/restore`: `confirm` must be the app's name
/// (a restore replaces the app's database).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub confirm: String,
}

/// The answer to `POST /api/v1/apps/{name}/snapshots/{snapshot}/restore`: the deployment that
/// restores it and then deploys the live release again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreAnswer {
    pub deployment_id: Uuid,
    pub snapshot: String,
    pub sha: String,
}

/// `POST /api/v1/notifications/targets`: where deployment events go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNotificationTarget {
    /// A DNS label, unique.
    pub name: String,
    /// `webhook` (signed as Standard Webhooks) or `slack` (an incoming-webhook URL).
    pub kind: String,
    pub url: String,
    /// The signing secret of a webhook (`whsec_<base64>`); one is made when none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Only this app's events; every app's when unset (an admin's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The events wanted (`deploy.failed`, ...); every one when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

/// The answer to creating a target: its signing secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationTargetCreated {
    pub name: String,
    #[serde(default)]
    pub secret: Option<String>,
}

/// A notification target as listed: its URL only as scheme, host and port (a Slack URL is a
/// secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationTarget {
    pub name: String,
    #[serde(default)]
    pub app: Option<String>,
    pub kind: String,
    pub url: String,
    pub events: Vec<String>,
    #[serde(default)]
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// One notification sent (or being sent) to a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Also its `webhook-id`.
    pub id: Uuid,
    pub target: String,
    #[serde(default)]
    pub deployment_id: Option<Uuid>,
    pub event: String,
    /// `pending`, `delivered` or `failed` (out of attempts).
    pub state: String,
    pub attempts: u32,
    pub next_at: DateTime<Utc>,
    #[serde(default)]
    pub last_status: Option<u16>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// The start of the receiver's last answer.
    #[serde(default)]
    pub last_response: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The answer to `POST /api/v1/notifications/targets/{name}/test`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationTest {
    pub delivery_id: Uuid,
}

/// `POST /api/v1/apps/{name}/promote`: deploy a release of this app to another app of the same
/// repository (another environment) by its image digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// The app to deploy it to.
    pub to: String,
    /// The release (`v3`); default: the one serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

/// The answer to a promotion: the target app's new deployment and release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteAnswer {
    pub deployment_id: Uuid,
    pub app: String,
    #[serde(default)]
    pub release: Option<u32>,
    pub from_app: String,
    pub from_release: u32,
    pub sha: String,
    pub digest: String,
}

/// `GET /api/v1/apps/{name}/releases/{a}/diff/{b}`: what changed from release `a` to `b`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseDiff {
    pub from: u32,
    pub to: u32,
    /// The image of each, when they differ.
    #[serde(default)]
    pub image: Option<(Option<String>, Option<String>)>,
    pub changes: Vec<ReleaseChange>,
}

/// One setting or variable that differs between two releases; a secret's values show as
/// [`REDACTED`] (it changed, was added or was removed), never themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseChange {
    /// `port`, `health_path`, `limits`, `edge`, `kubernetes`, `env.<NAME>`, `kubernetes.secret_env.<NAME>`.
    pub key: String,
    pub from: Option<String>,
    pub to: Option<String>,
    #[serde(default)]
    pub secret: bool,
}

/// `PATCH /api/v1/apps/{name}/env`: variables to set (a bare string is secret when its name
/// looks secret; `{"value", "secret"}` marks it) and names to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvChange {
    #[serde(default)]
    pub set: BTreeMap<String, EnvValue>,
    #[serde(default)]
    pub unset: Vec<String>,
}

/// `PATCH /api/v1/apps/{name}`: the settings to change; the others stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_paths: Option<Vec<String>>,
    /// Where commit statuses go; a new token replaces the stored one, none keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "object")]
    pub commit_status: Option<CommitStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "object")]
    pub previews: Option<PreviewSettings>,
}

/// The answer to a configuration change: the app as it is now, and the deployment of the new
/// release (none when nothing is live yet: the next deployment takes the configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigAnswer {
    pub app: App,
    #[serde(default)]
    pub deployment_id: Option<Uuid>,
    #[serde(default)]
    pub release: Option<u32>,
}

/// `POST /api/v1/deployments/{id}/cancel`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Why; shown with the cancelled deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer to a cancel: `cancelled` at once (200), or `running` with the runner asked (202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelAnswer {
    pub deployment_id: Uuid,
    pub state: State,
    pub cancel_requested: bool,
}

/// A deployment as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: Uuid,
    pub app: String,
    /// Empty until the runner resolved the branch head of a deploy that named no commit.
    pub sha: String,
    pub environment: String,
    pub git_ref: String,
    pub source: String,
    pub state: State,
    pub attempt: u32,
    pub runner_id: Option<String>,
    pub current_step: Option<Step>,
    pub created_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub image: Option<String>,
    pub url: Option<String>,
    pub error_step: Option<Step>,
    pub error_cause: Option<Cause>,
    pub error_message: Option<String>,
    /// The rollout failed and the previous revision was put back.
    pub rolled_back: bool,
    /// The name of the API token that asked for it (a deploy, rollback or redeploy); `None` for a
    /// forge's webhook.
    #[serde(default)]
    pub created_by: Option<String>,
    /// Who asked to cancel it (also while the runner is still stopping it), and why.
    pub cancel_by: Option<String>,
    pub cancel_reason: Option<String>,
    /// What the layer cache did in its build (steps reused, rebuilt, and why the first missed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::message::CacheSummary>,
}

/// One step of one attempt, with its timings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRun {
    pub attempt: u32,
    pub step: Step,
    pub status: StepStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

/// `GET /api/v1/deployments/{id}`: the deployment with the steps of all its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentDetail {
    #[serde(flatten)]
    pub deployment: Deployment,
    pub steps: Vec<StepRun>,
}

/// The data of an SSE `log` event; its id is `<attempt>.<seq>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    pub attempt: u32,
    pub seq: u64,
    pub step: Option<Step>,
    pub line: String,
    pub ts: DateTime<Utc>,
    /// The line continues in the next event (a long line sent in parts).
    #[serde(default)]
    pub more: bool,
}

/// The data of the SSE `end` event: the state the deployment ended in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEnd {
    pub state: State,
}

/// What an API token may do: a viewer reads, a deployer also deploys, rolls back and cancels,
/// an admin also registers apps and manages tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Deployer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored or typed role.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Role::Viewer),
            "deployer" => Some(Role::Deployer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// `POST /api/v1/tokens`: a new token's name, role, optional app scope and lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
    /// Limits the token to one app; `None` for every app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Days until it expires; `None` for never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_days: Option<u32>,
}

/// An API token as listed (never its value or hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub app: Option<String>,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The answer to creating a token: the only time its value is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub info: Token,
}

/// `GET /api/v1/whoami`: the token a request was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Whoami {
    pub name: String,
    pub role: Role,
    pub app: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// One deployment a webhook recorded (or found recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDeployment {
    pub app: String,
    pub deployment_id: Uuid,
    pub new: bool,
}

/// `GET /healthz`: whether this scheduler can do its work (200) or not (503), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: String,
    /// `ok` or `unreachable`.
    pub database: String,
    /// `ok`, `connecting` (just started) or `unreachable`.
    pub broker: String,
    /// Whether this replica leads (consumes the runner queue, expires leases, reconciles).
    pub leader: bool,
}

/// The answer to a webhook: `queued`, `duplicate`, `ignored` (with the reason) or `pong`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookAnswer {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<WebhookDeployment>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_app_gets_its_defaults_and_refuses_unknown_fields() {
        let app: NewApp =
            serde_json::from_str(r#"{"name":"web","repo_url":"https://x/y.git","webhook_secret":"s"}"#).expect("app");
        assert_eq!((app.branch.as_str(), app.port, app.target.as_str()), ("main", 8080, "docker"));
        let typo = r#"{"name":"web","repo_url":"https://x/y.git","webhook_secret":"s","prot":1}"#;
        assert!(serde_json::from_str::<NewApp>(typo).is_err());
    }

    #[test]
    fn a_deployment_detail_is_the_deployment_with_its_steps_beside_it() {
        let json = serde_json::json!({
            "id": Uuid::nil(), "app": "web", "sha": "", "environment": "production", "git_ref": "refs/heads/main",
            "source": "manual", "state": "running", "attempt": 1, "runner_id": null, "current_step": "build",
            "created_at": "2026-01-01T00:00:00Z", "published_at": null, "started_at": null, "finished_at": null,
            "image": null, "url": null, "error_step": null, "error_cause": null, "error_message": null,
            "rolled_back": false, "created_by": "ci", "cancel_by": null, "cancel_reason": null,
            "steps": [{"attempt": 1, "step": "clone", "status": "succeeded", "started_at": null, "finished_at": null, "error": null}]
        });
        let detail: DeploymentDetail = serde_json::from_value(json.clone()).expect("detail");
        assert_eq!(detail.deployment.current_step, Some(Step::Build));
        assert_eq!(serde_json::to_value(&detail).expect("json"), json);
    }
}

/// A runner as the scheduler last heard of it (`GET /api/v1/runners`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runner {
    pub id: String,
    pub version: String,
    pub host: String,
    pub state: RunnerState,
    /// Jobs it can run at once.
    pub slots: u32,
    /// The deployments it is working on.
    pub jobs: Vec<Uuid>,
    #[serde(default)]
    pub labels: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

/// What a runner is doing, as its reports (or their absence) say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerState {
    /// Online, no job in hand.
    Idle,
    /// Online, working on at least one job.
    Busy,
    /// Shutting down: takes no new job, finishes (or hands back) the ones it has.
    Draining,
    /// Silent for longer than the scheduler waits (`SLIPWAY_RUNNER_LOST_SECONDS`).
    Lost,
    /// Left after saying so.
    Stopped,
}

impl RunnerState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerState::Idle => "idle",
            RunnerState::Busy => "busy",
            RunnerState::Draining => "draining",
            RunnerState::Lost => "lost",
            RunnerState::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Idle, Self::Busy, Self::Draining, Self::Lost, Self::Stopped].into_iter().find(|v| v.as_str() == s)
    }

    /// Whether a runner in this state can take jobs or is still working on some.
    pub fn is_online(self) -> bool {
        matches!(self, RunnerState::Idle | RunnerState::Busy | RunnerState::Draining)
    }
}

/// `GET /api/v1/queue`: every queued deployment, oldest first, and a summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    pub summary: QueueSummary,
    pub entries: Vec<Queued>,
}

/// The queue at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueSummary {
    /// Queued deployments (all of them, also those a scoped token does not see).
    pub depth: u32,
    /// Age of the oldest queued deployment, in seconds.
    pub oldest_wait_seconds: Option<f64>,
    /// Runners online (idle, busy or draining) and those of them working.
    pub runners_online: u32,
    pub runners_busy: u32,
    /// Job slots of the runners that take jobs (idle or busy), and those in use.
    pub slots: u32,
    pub slots_busy: u32,
}

/// One queued deployment and the one reason it waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    /// 1 is the oldest.
    pub position: u32,
    pub deployment_id: Uuid,
    pub app: String,
    pub environment: String,
    pub sha: String,
    pub source: String,
    pub attempt: u32,
    pub created_at: DateTime<Utc>,
    pub wait_seconds: f64,
    pub reason: WaitReason,
}

/// Why a queued deployment is not running yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WaitReason {
    /// On the jobs queue; every runner slot is busy (or a runner is about to take it).
    WaitingForRunner { slots_busy: u32, slots: u32 },
    /// On the jobs queue, and no runner that takes jobs is online.
    NoRunner,
    /// Another deployment of the same app and environment goes first.
    HeldBehind { deployment_id: Uuid, state: State },
    /// The last attempt failed for an infrastructure reason; the next starts after `until`.
    BackingOff { until: DateTime<Utc>, attempt: u32 },
    /// Not on the jobs queue yet; `broker_down_since` is set while RabbitMQ is unreachable.
    Unpublished {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        broker_down_since: Option<DateTime<Utc>>,
    },
}

impl WaitReason {
    /// The label value of `slipway_queue_depth`.
    pub fn kind(&self) -> &'static str {
        match self {
            WaitReason::WaitingForRunner { .. } => "waiting_for_runner",
            WaitReason::NoRunner => "no_runner",
            WaitReason::HeldBehind { .. } => "held_behind",
            WaitReason::BackingOff { .. } => "backing_off",
            WaitReason::Unpublished { .. } => "unpublished",
        }
    }

    /// Every kind, so a gauge of each is exported even at zero.
    pub const KINDS: [&'static str; 5] =
        ["waiting_for_runner", "no_runner", "held_behind", "backing_off", "unpublished"];

    /// One line for people, e.g. "waiting for a free runner (2 of 2 slots busy)".
    pub fn describe(&self) -> String {
        match self {
            WaitReason::WaitingForRunner { slots_busy, slots } => {
                format!("waiting for a free runner ({slots_busy} of {slots} slots busy)")
            }
            WaitReason::NoRunner => "no runner online".to_string(),
            WaitReason::HeldBehind { deployment_id, state } => {
                format!("held behind {} deployment {deployment_id} of the same app", state.as_str())
            }
            WaitReason::BackingOff { until, attempt } => format!(
                "backing off after an infrastructure failure until {} (attempt {attempt})",
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            WaitReason::Unpublished { broker_down_since: Some(since) } => format!(
                "not yet published: the broker is unreachable since {}",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            WaitReason::Unpublished { broker_down_since: None } => "being published to the jobs queue".to_string(),
        }
    }
}

/// One line a running app printed (`GET /api/v1/apps/{name}/logs`), secrets masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppLogLine {
    /// `stdout` or `stderr`.
    pub stream: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<DateTime<Utc>>,
    pub line: String,
}

/// One of a running app's containers (`GET /api/v1/apps/{name}/status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppContainer {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<Uuid>,
    pub image: String,
    /// Docker's state: running, exited, restarting, created, ...
    pub state: String,
    /// Whether the edge sends the app's traffic to it (the newest running container).
    pub serving: bool,
    pub restarts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// `GET /api/v1/apps/{name}/status`: where the app answers and how its containers are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub app: String,
    #[serde(default)]
    pub url: Option<String>,
    /// The runner that answered.
    pub runner_id: String,
    pub containers: Vec<AppContainer>,
}
