//! Messages on RabbitMQ: jobs to runners, runner envelopes back, control and notifications.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::state::{Cause, State, Step, StepStatus};

/// Where an app is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// The local Docker engine of the runner.
    Docker,
    /// A Kubernetes cluster.
    Kubernetes,
}

impl TargetKind {
    /// The column value stored in PostgreSQL.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Docker => "docker",
            TargetKind::Kubernetes => "kubernetes",
        }
    }

    /// Parses a stored column value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "docker" => Some(TargetKind::Docker),
            "kubernetes" => Some(TargetKind::Kubernetes),
            _ => None,
        }
    }
}

/// What a runner needs to know of the app; runners never read the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobApp {
    pub name: String,
    pub repo_url: String,
    pub environment: String,
    pub target: TargetKind,
    /// Port the app listens on inside its container.
    pub port: u16,
    /// Path answered with 2xx once the app is ready.
    pub health_path: String,
    pub env: BTreeMap<String, String>,
    /// The names in `env` whose values are secret: masked in every text that leaves a runner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// This app's container limits (docker target); unset ones are the runner's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// The app's edge settings (docker target): extra hosts and the drain timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeSettings>,
    /// Credentials for the repository, given only to its host (never in a URL or a log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_credentials: Option<GitCredentials>,
    /// The app's directory inside the repository (`.` for the root).
    #[serde(default = "dot")]
    pub app_root: String,
    /// Globs of the files whose changes deploy the app (empty: every push, unless the app's
    /// `slipway.toml` sets `watch_paths`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch_paths: Vec<String>,
    /// Whether the test step may use the network.
    #[serde(default)]
    pub test_network: bool,
    /// Settings of the deploy target (for `kubernetes`: replicas, resources, host, strategy ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<serde_json::Value>,
}

/// What one app's containers may use; each unset one is the runner's default
/// (`SLIPWAY_APP_MEMORY_MB`, `SLIPWAY_APP_CPUS`, `SLIPWAY_APP_PIDS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Thousandths of a CPU (500 is half a CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub millicpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

impl Limits {
    /// Checks the bounds; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.memory_mb.is_some_and(|m| !(16..=262_144).contains(&m)) {
            return Err("limits.memory_mb must be between 16 and 262144".into());
        }
        if self.millicpus.is_some_and(|c| !(50..=256_000).contains(&c)) {
            return Err("limits.millicpus must be between 50 (a twentieth of a CPU) and 256000".into());
        }
        if self.pids.is_some_and(|p| !(16..=1_000_000).contains(&p)) {
            return Err("limits.pids must be between 16 and 1000000".into());
        }
        Ok(())
    }
}

/// How an app is served by the edge proxy (docker target).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSettings {
    /// Host names the app answers at besides `<app>.<domain>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Seconds the previous version's in-flight requests may take after a switch (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_seconds: Option<u32>,
}

impl EdgeSettings {
    /// Checks the hosts (DNS names, at most 10) and the drain timeout (at most an hour).
    pub fn validate(&self) -> Result<(), String> {
        if self.hosts.len() > 10 {
            return Err("edge.hosts may list at most 10 hosts".into());
        }
        for host in &self.hosts {
            let labels_ok =
                host.split('.').all(|l| !l.is_empty() && crate::name::validate_dns_label("host label", l).is_ok());
            if host.len() > 253 || !host.contains('.') || !labels_ok {
                return Err(format!(
                    "edge.hosts: {:?} is not a host name (lowercase DNS labels separated by dots)",
                    host.chars().take(80).collect::<String>()
                ));
            }
        }
        if self.drain_seconds.is_some_and(|s| s > 3600) {
            return Err("edge.drain_seconds must be at most 3600".into());
        }
        Ok(())
    }
}

/// A username and token for a repository's host, as git's HTTP basic authentication takes them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitCredentials {
    #[serde(default = "default_git_username")]
    pub username: String,
    pub token: String,
}

fn default_git_username() -> String {
    "x-access-token".into()
}

impl std::fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitCredentials").field("username", &self.username).field("token", &"<redacted>").finish()
    }
}

fn dot() -> String {
    ".".into()
}

/// The shortest value masked as a secret; a secret-looking variable with a shorter value is
/// refused when the app is registered (it could not be masked without masking common words).
pub const MIN_SECRET_LEN: usize = 6;

/// Whether a variable's name says its value is secret (TOKEN, SECRET, PASSWORD, KEY, CREDENTIAL,
/// AUTH, PRIVATE, DSN, ..._URL).
pub fn is_secret_name(name: &str) -> bool {
    const MARKERS: &[&str] = &["TOKEN", "SECRET", "PASSW", "KEY", "CREDENTIAL", "AUTH", "PRIVATE", "DSN"];
    let name = name.to_ascii_uppercase();
    MARKERS.iter().any(|m| name.contains(m)) || name.ends_with("_URL")
}

impl JobApp {
    /// Values never to show in a log: those of variables marked secret (and, for jobs recorded
    /// before variables were marked, those whose name says secret, [`is_secret_name`]), the git
    /// token, and every `secret_env` value of the target settings; longest first, so a value
    /// containing another is masked whole.
    pub fn secret_values(&self) -> Vec<String> {
        let secret = |k: &String| self.secrets.contains(k) || is_secret_name(k);
        let mut values: Vec<String> = self.env.iter().filter(|(k, _)| secret(k)).map(|(_, v)| v.clone()).collect();
        values.extend(self.git_credentials.iter().map(|c| c.token.clone()));
        let settings = self.settings.as_ref().and_then(|s| s.get("secret_env")).and_then(|e| e.as_object());
        values.extend(settings.into_iter().flatten().filter_map(|(_, v)| v.as_str().map(str::to_string)));
        values.retain(|v| v.len() >= MIN_SECRET_LEN);
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        values
    }
}

/// One unit of work on the jobs queue: deploy `sha` of `app`, attempt `attempt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub deployment_id: Uuid,
    /// 1-based; a redispatch after a lost lease or an infrastructure failure increments it.
    pub attempt: u32,
    /// The commit; empty for a deploy of the head of `git_ref`, which the runner resolves first.
    pub sha: String,
    /// The digest Slipway pushed for this commit's image (an earlier attempt, or the deployment
    /// a rollback returns to): the build is skipped only if the registry holds exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// The ref the push was to (e.g. `refs/heads/main`), used when the SHA cannot be fetched directly.
    pub git_ref: String,
    pub app: JobApp,
    /// A rollback to an earlier version (its kept container may simply be started again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
    /// Set for a push whose changed files were not checked against the watch paths yet: the
    /// runner checks them after the clone and reports [`Body::Skipped`] when none is watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchCheck>,
    /// What an earlier attempt recorded of the release command (it never runs twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_command: Option<ReleaseRecord>,
    /// A promotion: the image of another app's release, taken by its digest and pushed under
    /// this app's name (no clone, no build, no test).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
    /// A restore: this database snapshot is restored into the app's database (in the release
    /// step, instead of the release command), then the release is deployed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSnapshot>,
    /// A teardown of the app's environment (a closed pull request's preview): nothing is
    /// cloned, built or pushed; the deploy step removes what serves the environment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub teardown: bool,
    /// A forge push of a branch (one that names the commit before it, or any once the app's
    /// pushes do): deployed only while it is the branch's head. The runner asks the git server
    /// before anything else, and a push the branch has since moved past (its webhook delivered
    /// late or out of order) ends skipped; the head's own push deploys.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub head_only: bool,
}

/// A database snapshot to restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSnapshot {
    pub id: Uuid,
    /// The file's name in the runners' snapshot directory (`<app>/<name>`).
    pub name: String,
}

/// Where a promoted image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The app whose release it is (its image is `<registry>/<app>:<sha>`).
    pub app: String,
    pub deployment_id: Uuid,
    pub version: u32,
    /// The digest Slipway pushed for it: exactly this image is deployed.
    pub digest: String,
}

/// Where a deployment's release command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseState {
    /// It was started; how it ended is not (yet) known.
    Started,
    Succeeded,
    Failed,
}

impl ReleaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseState::Started => "started",
            ReleaseState::Succeeded => "succeeded",
            ReleaseState::Failed => "failed",
        }
    }
}

/// What is recorded of a deployment's release command: it runs at most once per deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// The attempt that ran it.
    pub attempt: u32,
    pub state: ReleaseState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
}

/// What the runner needs to tell whether a push changed a watched file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchCheck {
    /// Every file the push changed, when the forge listed them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// The commit this app and environment last made live: without `paths`, the runner diffs
    /// the new commit's tree against it (none: nothing was live, so the push deploys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// Every message a runner sends carries the deployment and attempt it is about, so the
/// scheduler can apply it as a compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub deployment_id: Uuid,
    pub attempt: u32,
    pub runner_id: String,
    /// Unique per taking of a job message: the scheduler grants one claim per attempt, and only
    /// the granted claim's messages change the deployment.
    pub claim: Uuid,
    pub body: Body,
}

/// What a runner reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// The runner took a copy of the job and asks for the attempt; it does nothing with side
    /// effects until the scheduler answers with [`Control::Grant`] for its claim.
    Claimed,
    /// The runner is alive and still working on the job.
    Heartbeat,
    /// The runner resolved the branch head of a deployment recorded without a commit.
    Resolved { sha: String },
    /// The runner pushed the image; `digest` is what the registry now holds for it.
    Pushed { digest: String },
    /// A step started or ended.
    Step {
        step: Step,
        status: StepStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Lines of output, in order (the shipper batches consecutive lines into one message).
    Logs { lines: Vec<LogLine> },
    /// Every step succeeded.
    Completed {
        image: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    /// A step failed.
    Failed {
        step: Step,
        cause: Cause,
        message: String,
        /// The previous revision was put back and serves.
        #[serde(default)]
        rolled_back: bool,
    },
    /// The runner stopped the job before it finished: on the scheduler's request (a cancel) or
    /// while shutting down (a hand-back, dispatched again as the next attempt).
    Abandoned { reason: String },
    /// The push changed no watched file (decided after the clone): nothing was built or
    /// deployed, and the deployment ends cancelled by Slipway as `skipped: <reason>`.
    Skipped { reason: String },
    /// The release command of the attempt: about to start (sent, and confirmed by the broker,
    /// before it runs), or how it ended. Recorded once per deployment, so it never runs twice.
    ReleaseCommand {
        state: ReleaseState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i64>,
    },
    /// A database snapshot taken before the release command: its file in the runner's snapshot
    /// directory (`<app>/<name>`), its size, and the older files of the app that retention
    /// removed.
    Snapshot {
        name: String,
        bytes: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pruned: Vec<String>,
    },
    /// What the layer cache did in the build: steps reused and rebuilt, and why the first
    /// rebuilt one was rebuilt.
    Cache { summary: CacheSummary },
}

/// The layer cache of a deployment's build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheSummary {
    pub reused: u32,
    pub rebuilt: u32,
    /// `step 7/9 `COPY . .`: 1 file it copies changed since the last build of web here: src/a.js`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_miss: Option<String>,
}

/// The AMQP `type` of a [`RunnerReport`] on the runner queue (job envelopes carry none).
pub const RUNNER_REPORT_TYPE: &str = "slipway.runner";

/// A runner says who it is and what it is doing: when it starts, every heartbeat period while
/// it runs (idle, busy or draining), and once more as it leaves. Not about any deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerReport {
    pub runner_id: String,
    pub version: String,
    pub host: String,
    pub slots: u32,
    #[serde(default)]
    pub labels: Vec<String>,
    pub state: RunnerActivity,
    /// The deployments it holds a granted claim on.
    #[serde(default)]
    pub jobs: Vec<Uuid>,
    pub started_at: DateTime<Utc>,
    pub sent_at: DateTime<Utc>,
}

/// What a runner reports of itself (the scheduler adds `lost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerActivity {
    Idle,
    Busy,
    Draining,
    /// Its last report: it is gone.
    Stopped,
}

/// One line of output, numbered per (deployment, attempt) from 1. A line longer than a message
/// may carry is sent in parts; every part but the last has `more` set, and readers join them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
    pub line: String,
    pub ts: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// Scheduler to runners, on the control fanout exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Stop working on this attempt (it was cancelled, its lease expired, or another claim holds
    /// it). `runner_id` names the runner addressed and `claim` its copy of the job; all when absent.
    Cancel {
        deployment_id: Uuid,
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        runner_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        claim: Option<Uuid>,
        reason: String,
    },
    /// The scheduler granted `claim` of `runner_id` the attempt: it may start working.
    Grant { deployment_id: Uuid, attempt: u32, runner_id: String, claim: Uuid },
    /// A user asked for a running app's output or status (docker target): every runner whose
    /// engine has the app's containers answers on `reply_to`; the scheduler keeps the first.
    AppLogs(AppLogsRequest),
    /// Stop answering `request_id` (the user went away), except `keep_runner` if given (the
    /// runner the scheduler kept).
    AppLogsStop {
        request_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep_runner: Option<String>,
    },
}

/// What a user asked of a running app: its output (the last `tail` lines, or those since
/// `since`, and with `follow` what comes next) and its containers' status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppLogsRequest {
    pub request_id: Uuid,
    pub app: String,
    pub environment: String,
    #[serde(default)]
    pub follow: bool,
    /// Lines from the end to start with (0: none, only the status).
    pub tail: u32,
    /// Only lines after this time (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// The queue to answer on.
    pub reply_to: String,
}

/// A runner's answer to an [`AppLogsRequest`], in as many messages as it takes; the last has `end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppLogChunk {
    pub request_id: Uuid,
    pub runner_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<crate::api::AppLogLine>,
    /// The app's containers, in the first message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Vec<crate::api::AppContainer>>,
    #[serde(default)]
    pub end: bool,
    /// Why the answer ended early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the scheduler publishes on the events exchange (`deploy.queued`, `deploy.step`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub deployment_id: Uuid,
    pub app: String,
    pub attempt: u32,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_status: Option<StepStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Notification {
    /// Routing key on the events exchange.
    pub fn routing_key(&self) -> &'static str {
        match (self.state, self.step) {
            (State::Queued, _) => "deploy.queued",
            (State::Running, Some(_)) => "deploy.step",
            (State::Running, None) => "deploy.started",
            (State::Completed, _) => "deploy.completed",
            (State::Failed, _) => "deploy.failed",
            (State::Cancelled, _) => "deploy.cancelled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_wire_format_is_tagged_json() {
        let env = Envelope {
            deployment_id: Uuid::nil(),
            attempt: 2,
            runner_id: "r1".into(),
            claim: Uuid::nil(),
            body: Body::Step { step: Step::Build, status: StepStatus::Running, error: None },
        };
        let json = serde_json::to_value(&env).expect("serialize");
        assert_eq!(json["body"]["type"], "step");
        assert_eq!(json["body"]["step"], "build");
        let back: Envelope = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, env);
    }

    #[test]
    fn secret_values_come_from_secret_looking_names_and_secret_env() {
        let app = JobApp {
            name: "web".into(),
            repo_url: "https://x/y".into(),
            environment: "production".into(),
            target: TargetKind::Docker,
            port: 8080,
            health_path: "/".into(),
            env: BTreeMap::from([
                ("API_TOKEN".into(), "tok-123456".into()),
                ("DATABASE_URL".into(), "postgres://u:p@db/x".into()),
                ("NODE_ENV".into(), "production".into()),
                ("SECRET_SHORT".into(), "abc".into()),
                ("MARKED".into(), "marked-secret".into()),
            ]),
            secrets: vec!["MARKED".into()],
            limits: None,
            edge: None,
            git_credentials: Some(GitCredentials { username: "bot".into(), token: "ghp_gittoken".into() }),
            app_root: ".".into(),
            watch_paths: Vec::new(),
            test_network: false,
            settings: Some(serde_json::json!({"secret_env": {"SESSION": "s3ss10n-value"}})),
        };
        assert_eq!(
            app.secret_values(),
            ["postgres://u:p@db/x", "marked-secret", "s3ss10n-value", "ghp_gittoken", "tok-123456"]
        );
    }

    #[test]
    fn unknown_body_type_is_an_error() {
        let raw = r#"{"deployment_id":"00000000-0000-0000-0000-000000000000","attempt":1,"runner_id":"r","claim":"00000000-0000-0000-0000-000000000000","body":{"type":"explode"}}"#;
        assert!(serde_json::from_str::<Envelope>(raw).is_err());
    }
}
