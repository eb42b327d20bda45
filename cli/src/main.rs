//! `slipway`: the command for people — apps, deploys, status and live logs.

mod client;
mod config;

use std::process::ExitCode;

use std::io::Read;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::Value;
use slipway_proto::api::{self, LogEvent};
use slipway_proto::{Cause, State, Step};

use client::{Client, LogEnd};

#[derive(Debug, Parser)]
#[command(name = "slipway", version, about = "Deploy apps with git push, and watch them go live")]
struct Cli {
    /// The scheduler's base URL (default: the one `slipway login` stored, else http://127.0.0.1:8080).
    #[arg(long, global = true, env = "SLIPWAY_URL")]
    url: Option<String>,
    /// The API token (default: the one `slipway login` stored).
    #[arg(long, global = true, env = "SLIPWAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Store the scheduler's URL and an API token (read from stdin) in the config file (0600),
    /// after checking the token with the scheduler.
    Login {
        /// Read the token from standard input (the only way; a token never goes in a flag).
        #[arg(long)]
        with_token: bool,
    },
    /// Remove the stored token.
    Logout,
    /// The token in use: its name, role and app scope.
    Whoami,
    /// Create, list and revoke API tokens (admin).
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Register and list apps.
    Apps {
        #[command(subcommand)]
        command: AppsCommand,
    },
    /// Deploy an app's branch head, or a given commit, without a webhook.
    Deploy {
        app: String,
        /// The commit to deploy (default: the head of the app's branch).
        #[arg(long)]
        sha: Option<String>,
        /// Follow the deployment's logs until it ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Read the app's branch head now and deploy it if no deployment has it (a missed webhook).
    Sync { app: String },
    /// An app's releases (image + configuration), newest first, with who made each and why; or,
    /// with --diff, what changed between two of them (secret values only as "changed").
    Releases {
        app: String,
        /// Two releases (`3` or `v3`) to compare, older first.
        #[arg(long, num_args = 2, value_names = ["FROM", "TO"])]
        diff: Option<Vec<String>>,
    },
    /// Deploy a release of an app (default: the one serving) to another app of the same
    /// repository — staging to production — by its image digest: no clone, no build, the other
    /// app's own configuration.
    Promote {
        app: String,
        /// The app to deploy it to.
        #[arg(long)]
        to: String,
        /// The release to promote (`v3`; default: the one serving).
        #[arg(long)]
        release: Option<String>,
        /// Follow the promotion's logs until it ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Set or remove an app's environment variables; the live image is deployed with them as a
    /// new release, without a clone or a build.
    Env {
        #[command(subcommand)]
        command: EnvCommand,
    },
    /// Where deployment events are sent (signed webhooks, Slack), and what was sent.
    Notifications {
        #[command(subcommand)]
        command: NotificationsCommand,
    },
    /// An app's database snapshots (taken before release commands), and restoring one.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// An app's pull request previews: list them, close one by hand.
    Previews {
        #[command(subcommand)]
        command: PreviewsCommand,
    },
    /// Redeploy an earlier successful revision without rebuilding it.
    Rollback {
        app: String,
        /// A release (`v3`), deployment id or commit SHA (default: the release before the current one).
        #[arg(long)]
        to: Option<String>,
        /// Follow the rollback's logs until it ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a deployment: a queued one at once; a running one stops its current step and ends
    /// `cancelled` (a deploy step already switching traffic finishes first).
    Cancel {
        deployment: String,
        /// Why; recorded with the deployment.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Recent deployments, one deployment with its steps and timings, or (given an app name) the
    /// running app: its address and its containers' state, restarts and last exit.
    Status {
        deployment: Option<String>,
        /// Only deployments of this app.
        #[arg(long)]
        app: Option<String>,
    },
    /// Print the build plan of a directory, and the files that decided it. Needs no service.
    Detect {
        /// The repository (default: the current directory).
        #[arg(default_value = ".")]
        dir: std::path::PathBuf,
        /// The app's directory inside the repository, for monorepos.
        #[arg(long)]
        app_root: Option<String>,
        /// Plan a build even when the repository has a Dockerfile.
        #[arg(long)]
        ignore_dockerfile: bool,
        /// Print the Dockerfile the runner would generate (base images from SLIPWAY_BASE_IMAGES).
        #[arg(long)]
        dockerfile: bool,
    },
    /// Render the Kubernetes manifests of an app and an image, offline, for review and diff.
    Manifests(Box<ManifestsArgs>),
    /// Every queued deployment, oldest first, and why it waits; a summary line first.
    Queue {
        /// Refresh in place every --interval seconds until interrupted.
        #[arg(long, short)]
        watch: bool,
        /// Seconds between refreshes with --watch.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
    },
    /// The runner fleet: each runner's state, jobs in hand and when it was last heard.
    Runners {
        /// Refresh in place every --interval seconds until interrupted.
        #[arg(long, short)]
        watch: bool,
        /// Seconds between refreshes with --watch.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
    },
    /// A deployment's log.
    Logs {
        /// A deployment's build and deploy log (or --app for a running app's output).
        #[arg(required_unless_present = "app", conflicts_with = "app")]
        deployment: Option<String>,
        /// The running app's output (stdout and stderr, secrets masked; docker target).
        #[arg(long)]
        app: Option<String>,
        /// Keep following: until the deployment ends, or the app's output until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// With --app: only output since then (30s, 10m, 2h, 1d or an RFC 3339 time).
        #[arg(long, requires = "app")]
        since: Option<String>,
        /// With --app: this many lines from the end (default 100).
        #[arg(long, requires = "app")]
        tail: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Create a token; its value is printed once.
    Create {
        name: String,
        /// `admin`, `deployer` or `viewer`.
        #[arg(long, default_value = "deployer")]
        role: String,
        /// Limit the token to one app.
        #[arg(long)]
        app: Option<String>,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List tokens (never their values).
    List,
    /// Revoke the live token with this name.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
enum AppsCommand {
    /// Register an app.
    Create(Box<CreateApp>),
    /// List apps.
    List,
    /// Change an app's settings; a setting it is deployed with (port, health path, limits,
    /// hosts, drain) deploys the live image with it as a new release.
    Update(Box<UpdateApp>),
}

#[derive(Debug, Subcommand)]
enum EnvCommand {
    /// Set variables, `KEY=VALUE` (secret when the name looks secret; --secret/--plain mark them).
    Set {
        app: String,
        #[arg(value_name = "KEY=VALUE")]
        vars: Vec<String>,
        #[arg(long = "secret", value_name = "KEY=VALUE")]
        secret: Vec<String>,
        #[arg(long = "plain", value_name = "KEY=VALUE")]
        plain: Vec<String>,
    },
    /// Remove variables.
    Unset {
        app: String,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum NotificationsCommand {
    /// Add a target: a webhook (signed, Standard Webhooks) or a Slack incoming webhook, for one
    /// app (--app) or every app. A URL of `-` is read from standard input (a Slack URL is a
    /// secret; keep it out of the shell's history).
    Add {
        name: String,
        #[arg(long, conflicts_with = "slack", required_unless_present = "slack")]
        webhook: Option<String>,
        #[arg(long)]
        slack: Option<String>,
        #[arg(long)]
        app: Option<String>,
        /// Events to send (comma-separated; default every one): deploy.queued, deploy.started,
        /// deploy.completed, deploy.failed, deploy.cancelled, deploy.rolled_back.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// A webhook's signing secret (`whsec_...`); one is made and shown once when none is given.
        #[arg(long)]
        secret: Option<String>,
    },
    /// The targets (URLs shown as scheme, host and port only).
    List,
    /// Remove a target and its deliveries.
    Remove { name: String },
    /// Send a test event to a target.
    Test { name: String },
    /// What was sent, newest first, with the receivers' answers.
    Deliveries {
        #[arg(long)]
        target: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Debug, Subcommand)]
enum PreviewsCommand {
    /// The app's previews, open ones first: state, head, address, and why one was refused.
    List { app: String },
    /// Tear an open preview down now (`12` or `pr-12`), as if its pull request closed.
    Close { app: String, number: String },
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// The app's snapshots, newest first.
    Snapshots { app: String },
    /// Restore a snapshot (its name, id, or `v3` for the one taken before release 3) into the
    /// app's database with `pg_restore --clean --if-exists`, then deploy the live release again.
    /// Asks for the app's name first unless --yes.
    Restore {
        app: String,
        snapshot: String,
        /// Do not ask: the database is replaced by the snapshot's content.
        #[arg(long)]
        yes: bool,
        /// Follow the restore's logs until it ends.
        #[arg(long, short)]
        follow: bool,
    },
}

/// `slipway apps update` arguments: only the settings given change.
#[derive(Debug, clap::Args)]
struct UpdateApp {
    name: String,
    #[arg(long)]
    port: Option<u32>,
    #[arg(long)]
    health_path: Option<String>,
    #[arg(long)]
    memory_mb: Option<u32>,
    #[arg(long)]
    millicpus: Option<u32>,
    #[arg(long)]
    pids: Option<u32>,
    /// The hosts the app answers at on the edge besides <app>.<domain> (replaces the list).
    #[arg(long = "host")]
    hosts: Vec<String>,
    #[arg(long)]
    drain_seconds: Option<u32>,
    /// The watch paths (replaces the list); `--watch-path ''` alone clears it.
    #[arg(long = "watch-path", value_name = "GLOB")]
    watch_paths: Vec<String>,
    #[command(flatten)]
    status: StatusArgs,
    #[command(flatten)]
    previews: PreviewArgs,
}

/// `slipway manifests` arguments: a YAML config file, flags, or both (flags win).
#[derive(Debug, clap::Args)]
struct ManifestsArgs {
    /// The image reference to deploy, e.g. registry.example.com/web:<sha>.
    #[arg(long)]
    image: String,
    /// App settings in YAML (the keys of `docs/kubernetes.md`).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    port: Option<u32>,
    #[arg(long)]
    health_path: Option<String>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    replicas: Option<i32>,
    /// The commit the image was built from (labels).
    #[arg(long, default_value = "0000000000000000000000000000000000000000")]
    sha: String,
    /// The deployment id (labels).
    #[arg(long, default_value = "manual")]
    deployment_id: String,
    /// Deployment track for blue-green and canary (`blue`, `green`, `canary`).
    #[arg(long)]
    track: Option<String>,
    /// Print secret values instead of redacting them.
    #[arg(long)]
    show_secrets: bool,
}

/// `slipway apps create` arguments.
#[derive(Debug, clap::Args)]
struct CreateApp {
    /// DNS-label name: lowercase letters, digits and '-'.
    name: String,
    /// Repository URL (https://, git:// or ssh://), without credentials.
    #[arg(long)]
    repo: String,
    #[arg(long, default_value = "main")]
    branch: String,
    #[arg(long, default_value = "production")]
    environment: String,
    /// `docker` or `kubernetes`.
    #[arg(long, default_value = "docker")]
    target: String,
    #[arg(long, default_value = "/")]
    health_path: String,
    /// Port the app listens on in its container.
    #[arg(long, default_value_t = 8080)]
    port: u32,
    /// Environment variable for the app, `KEY=VALUE`; secret when the name looks secret
    /// (TOKEN, SECRET, PASSWORD, KEY, ..._URL ...). Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A secret environment variable: encrypted at rest, masked in every log, never shown.
    #[arg(long = "secret", value_name = "KEY=VALUE")]
    secret: Vec<String>,
    /// A plain environment variable, even if its name looks secret.
    #[arg(long = "plain", value_name = "KEY=VALUE")]
    plain: Vec<String>,
    /// Memory limit of the app's containers in MB (docker target; default: the runner's).
    #[arg(long)]
    memory_mb: Option<u32>,
    /// CPU limit in thousandths of a CPU, e.g. 500 for half a CPU (default: the runner's).
    #[arg(long)]
    millicpus: Option<u32>,
    /// Process limit of the app's containers (default: the runner's).
    #[arg(long)]
    pids: Option<u32>,
    /// Another host name the app answers at on the edge, besides <app>.<domain> (repeatable).
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Seconds the previous version's in-flight requests may take after a switch (default: the runner's, 30).
    #[arg(long)]
    drain_seconds: Option<u32>,
    /// Username for a private https repository (with --git-token).
    #[arg(long, default_value = "x-access-token")]
    git_username: String,
    /// Token for a private https repository; sent only to the repository's host.
    #[arg(long, env = "SLIPWAY_APP_GIT_TOKEN", hide_env_values = true)]
    git_token: Option<String>,
    /// The app's directory inside the repository, for monorepos.
    #[arg(long, default_value = ".")]
    app_root: String,
    /// Deploy only pushes that change a file matching this glob, from the repository root
    /// (`services/api/**`; `!**/*.md` excludes). Repeatable; default: every push.
    #[arg(long = "watch-path", value_name = "GLOB")]
    watch_paths: Vec<String>,
    /// Let the app's tests use the network (off by default).
    #[arg(long)]
    test_network: bool,
    /// Kubernetes settings (YAML, the keys of docs/kubernetes.md) for `--target kubernetes`.
    #[arg(long, value_name = "FILE")]
    kubernetes: Option<std::path::PathBuf>,
    /// Secret the forge signs webhooks with.
    #[arg(long, env = "SLIPWAY_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: String,
    #[command(flatten)]
    status: StatusArgs,
    #[command(flatten)]
    previews: PreviewArgs,
}

/// Where commit statuses go (`slipway apps create|update`).
#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Report each deployment as a commit status at this forge: github, gitlab, bitbucket or
    /// gitea (Forgejo too); with a token that may set statuses in SLIPWAY_STATUS_TOKEN.
    #[arg(long)]
    status_forge: Option<String>,
    /// The forge's API root (default for github.com, gitlab.com and bitbucket.org).
    #[arg(long, requires = "status_forge")]
    status_api_url: Option<String>,
    /// `owner/repo` at the forge (default: from --repo).
    #[arg(long, requires = "status_forge")]
    status_repo: Option<String>,
    #[arg(long, env = "SLIPWAY_STATUS_TOKEN", hide_env_values = true, hide = true)]
    status_token: Option<String>,
}

impl StatusArgs {
    fn settings(self) -> Option<api::CommitStatus> {
        let StatusArgs { status_forge, status_api_url, status_repo, status_token } = self;
        status_forge.map(|forge| api::CommitStatus {
            forge,
            api_url: status_api_url,
            repo: status_repo,
            token: status_token,
        })
    }
}

/// Preview environments (`slipway apps create|update`); on update they replace the settings.
#[derive(Debug, clap::Args)]
struct PreviewArgs {
    /// Deploy each pull (merge) request against the app's branch as its preview `pr-<n>`, at
    /// `pr-<n>.<app>.<domain>`, and tear it down when the request closes.
    #[arg(long)]
    previews: bool,
    /// Turn previews off (`slipway apps update`).
    #[arg(long, conflicts_with = "previews")]
    no_previews: bool,
    /// Build requests from forks too (they get the app's secrets).
    #[arg(long, requires = "previews")]
    preview_forks: bool,
    /// At most this many open previews (default 5); more are refused.
    #[arg(long, requires = "previews")]
    preview_max: Option<u32>,
    /// Tear down a preview with no push for this long: `45s`, `30m`, `12h`, `3d`.
    #[arg(long, requires = "previews", value_parser = duration_seconds)]
    preview_ttl: Option<u64>,
    /// A variable that replaces or adds to the app's in its previews, `KEY=VALUE` (repeatable).
    #[arg(long = "preview-env", value_name = "KEY=VALUE", requires = "previews")]
    preview_env: Vec<String>,
}

impl PreviewArgs {
    fn settings(self) -> anyhow::Result<Option<api::PreviewSettings>> {
        if self.no_previews {
            return Ok(Some(api::PreviewSettings { enabled: false, ..Default::default() }));
        }
        if !self.previews {
            return Ok(None);
        }
        let mut env = std::collections::BTreeMap::new();
        for pair in self.preview_env {
            let (key, value) =
                pair.split_once('=').with_context(|| format!("--preview-env {pair}: expected KEY=VALUE"))?;
            env.insert(key.to_string(), value.to_string());
        }
        let defaults = api::PreviewSettings::default();
        Ok(Some(api::PreviewSettings {
            enabled: true,
            forks: self.preview_forks,
            max: self.preview_max.unwrap_or(defaults.max),
            ttl_seconds: self.preview_ttl,
            env,
        }))
    }
}

/// `45s`, `30m`, `12h`, `3d` or plain seconds, as seconds.
fn duration_seconds(text: &str) -> Result<u64, String> {
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits.parse().map_err(|_| format!("`{text}` is not a duration such as 30m, 12h or 3d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("`{text}` is too long"))
}

/// Variables given as `KEY=VALUE`: bare, marked secret or marked plain.
fn env_values(
    bare: Vec<String>,
    secret: Vec<String>,
    plain: Vec<String>,
) -> anyhow::Result<std::collections::BTreeMap<String, api::EnvValue>> {
    let mut vars = std::collections::BTreeMap::new();
    for (flag, pairs, marking) in
        [("--env", bare, None), ("--secret", secret, Some(true)), ("--plain", plain, Some(false))]
    {
        for pair in pairs {
            let (k, v) = pair.split_once('=').with_context(|| format!("{flag} `{pair}` must be KEY=VALUE"))?;
            let value = match marking {
                None => api::EnvValue::Bare(v.to_string()),
                Some(secret) => api::EnvValue::Marked { value: v.to_string(), secret },
            };
            if vars.insert(k.to_string(), value).is_some() {
                bail!("`{k}` is given twice");
            }
        }
    }
    Ok(vars)
}

/// Says what a configuration change did.
fn config_answered(answer: &api::ConfigAnswer, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(answer)?);
        return Ok(());
    }
    match (answer.deployment_id, answer.release) {
        (Some(id), Some(v)) => println!("release v{v} of {} is deploying (deployment {id})", answer.app.name),
        (Some(id), None) => println!("{} is deploying the change (deployment {id})", answer.app.name),
        _ => println!("saved; {} has nothing live, so its next deployment takes it", answer.app.name),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    // `slipway logs ... | head` ends quietly, like any Unix tool, instead of panicking on EPIPE.
    sigpipe::reset();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config_path = config::path();
    // Offline commands never read the config or build a client, so neither can stop them.
    let stored = || match (&cli.url, &cli.token) {
        (Some(_), Some(_)) => Ok(config::Stored::default()),
        _ => config::load(&config_path),
    };
    let url = || -> anyhow::Result<String> {
        Ok(cli.url.clone().or(stored()?.url).unwrap_or_else(|| "http://127.0.0.1:8080".to_string()))
    };
    let online = || -> anyhow::Result<Client> {
        let token = match &cli.token {
            Some(token) => Some(token.clone()),
            None => stored()?.token,
        };
        Client::new(&url()?, token)
    };
    match cli.command {
        Command::Login { with_token } => {
            if !with_token {
                bail!("give the token on standard input: `slipway login --with-token < token-file`");
            }
            let mut token = String::new();
            std::io::Read::take(std::io::stdin(), 4096)
                .read_to_string(&mut token)
                .context("reading the token from stdin")?;
            let token = token.trim().to_string();
            if token.is_empty() {
                bail!("no token on standard input");
            }
            let url = url()?;
            let me: api::Whoami = Client::new(&url, Some(token.clone()))?.get("/api/v1/whoami").await?;
            let mut stored = config::load(&config_path).unwrap_or_default();
            stored.url = Some(url.clone());
            stored.token = Some(token);
            config::save(&config_path, &stored)?;
            println!("logged in to {url} as `{}` ({}); stored in {}", me.name, me.role.as_str(), config_path.display());
        }
        Command::Logout => {
            let mut stored = config::load(&config_path)?;
            stored.token = None;
            config::save(&config_path, &stored)?;
            println!("removed the token from {}", config_path.display());
        }
        Command::Whoami => {
            let me: api::Whoami = online()?.get("/api/v1/whoami").await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&me)?);
            } else {
                let app = me.app.as_deref().map(|a| format!(" for app {a}")).unwrap_or_default();
                println!("{} ({}{app})", me.name, me.role.as_str());
            }
        }
        Command::Tokens { command: TokensCommand::Create { name, role, app, expires_in_days } } => {
            let role = api::Role::parse(&role)
                .with_context(|| format!("--role `{role}` must be admin, deployer or viewer"))?;
            let new = api::NewToken { name, role, app, expires_in_days };
            let created: api::CreatedToken = online()?.post("/api/v1/tokens", &new).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                eprintln!(
                    "created token `{}` ({}); it is shown only this once:",
                    created.info.name,
                    created.info.role.as_str()
                );
                println!("{}", created.token);
            }
        }
        Command::Tokens { command: TokensCommand::List } => {
            let tokens: Vec<api::Token> = online()?.get("/api/v1/tokens").await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                println!("{:<24} {:<9} {:<16} {:<20} {:<20} STATUS", "NAME", "ROLE", "APP", "CREATED", "LAST USED");
                let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "-".into())
                };
                for t in &tokens {
                    let status = match (t.revoked_at, t.expires_at) {
                        (Some(_), _) => "revoked".to_string(),
                        (None, Some(exp)) if exp <= chrono::Utc::now() => "expired".to_string(),
                        (None, Some(exp)) => format!("expires {}", exp.format("%Y-%m-%d")),
                        (None, None) => "active".to_string(),
                    };
                    let app = t.app.as_deref().unwrap_or("*");
                    println!(
                        "{:<24} {:<9} {app:<16} {:<20} {:<20} {status}",
                        t.name,
                        t.role.as_str(),
                        when(Some(t.created_at)),
                        when(t.last_used_at)
                    );
                }
            }
        }
        Command::Tokens { command: TokensCommand::Revoke { name } } => {
            let token: api::Token = online()?.delete(&format!("/api/v1/tokens/{name}")).await?;
            println!("revoked token `{}`", token.name);
        }
        Command::Detect { dir, app_root, ignore_dockerfile, dockerfile } => {
            let plan = slipway_detect::detect(&dir, &slipway_detect::Options { app_root, ignore_dockerfile })?;
            if dockerfile {
                if plan.provider == slipway_detect::Provider::Dockerfile {
                    bail!("the repository has its own Dockerfile (--ignore-dockerfile plans one instead)");
                }
                let overrides = std::env::var("SLIPWAY_BASE_IMAGES").unwrap_or_default();
                let images = slipway_detect::dockerfile::BaseImages::with_overrides(&overrides)?;
                print!("{}", slipway_detect::dockerfile::generate(&plan, &images)?);
            } else if cli.json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print_plan(&serde_json::to_value(&plan)?);
            }
        }
        Command::Manifests(args) => print!("{}", manifests(&args)?),
        Command::Apps { command: AppsCommand::List } => {
            let apps: Vec<api::App> = online()?.get("/api/v1/apps").await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&apps)?);
            } else {
                println!("{:<24} {:<12} {:<12} {:<8} {:<40} REPOSITORY", "NAME", "BRANCH", "ENV", "TARGET", "URL");
                for a in &apps {
                    let target = a.target.as_str();
                    let url = neutralised(a.url.as_deref().unwrap_or("(not deployed)")).into_owned();
                    println!(
                        "{:<24} {:<12} {:<12} {target:<8} {url:<40} {}",
                        a.name, a.branch, a.environment, a.repo_url
                    );
                }
            }
        }
        Command::Apps { command: AppsCommand::Create(args) } => {
            let CreateApp {
                name,
                repo,
                branch,
                environment,
                target,
                health_path,
                port,
                env,
                secret,
                plain,
                git_username,
                git_token,
                memory_mb,
                millicpus,
                pids,
                hosts,
                drain_seconds,
                app_root,
                watch_paths,
                test_network,
                kubernetes,
                webhook_secret,
                status,
                previews,
            } = *args;
            if status.status_forge.is_some() && status.status_token.is_none() {
                bail!("--status-forge needs a token that may set statuses, in SLIPWAY_STATUS_TOKEN");
            }
            let vars = env_values(env, secret, plain)?;
            let git_credentials =
                git_token.map(|token| slipway_proto::message::GitCredentials { username: git_username, token });
            let kubernetes = match kubernetes {
                Some(path) => {
                    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                    let settings: Value =
                        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    Some(settings)
                }
                None => None,
            };
            let new = api::NewApp {
                name,
                repo_url: repo,
                branch,
                environment,
                target,
                health_path,
                port,
                env: vars,
                webhook_secret,
                git_credentials,
                limits: (memory_mb.is_some() || millicpus.is_some() || pids.is_some())
                    .then_some(slipway_proto::message::Limits { memory_mb, millicpus, pids }),
                edge: (!hosts.is_empty() || drain_seconds.is_some())
                    .then_some(slipway_proto::message::EdgeSettings { hosts, drain_seconds }),
                app_root,
                watch_paths,
                test_network,
                kubernetes,
                commit_status: status.settings(),
                previews: previews.settings()?,
            };
            let app: api::App = online()?.post("/api/v1/apps", &new).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&app)?);
            } else {
                let target = app.target.as_str();
                println!("registered {} ({} on {target}, branch {})", app.name, app.environment, app.branch);
                if !app.watch_paths.is_empty() {
                    println!("deploys pushes that change: {}", app.watch_paths.join(" "));
                }
                println!(
                    "webhook: POST {}/api/v1/webhooks/github (content type application/json, your secret)",
                    url()?
                );
            }
        }
        Command::Deploy { app, sha, follow } => {
            let body = api::DeployRequest { sha };
            let out: api::DeployAnswer = online()?.post(&format!("/api/v1/apps/{app}/deployments"), &body).await?;
            let id = out.deployment_id.to_string();
            if cli.json && !follow {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let word = if out.new { "queued" } else { "already recorded as" };
                let at = match &out.sha {
                    Some(sha) => sha.clone(),
                    None => format!("the head of {} (resolved by the runner)", out.git_ref),
                };
                println!("{word} deployment {id} of {app} at {at}");
            }
            if follow {
                return follow_logs(&online()?, &id).await;
            }
        }
        Command::Rollback { app, to, follow } => {
            let body = api::RollbackRequest { to };
            let out: api::RollbackAnswer = online()?.post(&format!("/api/v1/apps/{app}/rollback"), &body).await?;
            let id = out.deployment_id.to_string();
            println!("rolling {app} back to {} (as deployment {id})", out.sha);
            if follow {
                return follow_logs(&online()?, &id).await;
            }
        }
        Command::Cancel { deployment, reason } => {
            let body = api::CancelBody { reason };
            let out: api::CancelAnswer =
                online()?.post(&format!("/api/v1/deployments/{deployment}/cancel"), &body).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else if out.state == State::Cancelled {
                println!("cancelled deployment {deployment}");
            } else {
                println!(
                    "asked the runner to stop deployment {deployment}; `slipway status {deployment}` shows how it ends"
                );
            }
        }
        Command::Status { deployment: Some(app), .. } if uuid_like(&app).is_none() => {
            let status: api::AppStatus = online()?.get(&format!("/api/v1/apps/{app}/status")).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", app_status(&status));
            }
        }
        Command::Status { deployment: Some(id), .. } => {
            let d: api::DeploymentDetail = online()?.get(&format!("/api/v1/deployments/{id}")).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print_deployment(&d);
            }
        }
        Command::Status { deployment: None, app } => {
            let path = match &app {
                Some(app) => format!("/api/v1/deployments?app={app}"),
                None => "/api/v1/deployments".to_string(),
            };
            let list: Vec<api::Deployment> = online()?.get(&path).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<36} {:<16} {:<10} {:<10} {:>7} {:<8} CREATED",
                    "DEPLOYMENT", "APP", "SHA", "STATE", "ATTEMPT", "STEP"
                );
                for d in &list {
                    let step = d.current_step.map(Step::as_str).unwrap_or("");
                    let sha: String = d.sha.chars().take(10).collect();
                    let skipped = d.cancel_reason.as_deref().and_then(|r| r.strip_prefix("skipped: "));
                    let state = if skipped.is_some() { "skipped" } else { d.state.as_str() };
                    let id = d.id.to_string();
                    let note = skipped.map(|r| format!("  ({})", neutralised(r))).unwrap_or_default();
                    println!(
                        "{id:<36} {:<16} {sha:<10} {state:<10} {:>7} {step:<8} {}{note}",
                        d.app,
                        d.attempt,
                        d.created_at.to_rfc3339()
                    );
                }
            }
        }
        Command::Releases { app, diff: None } => {
            let list: Vec<api::Release> = online()?.get(&format!("/api/v1/apps/{app}/releases")).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<6} {:<10} {:<10} {:<12} {:<16} {:<20} REASON",
                    "", "STATE", "SHA", "SOURCE", "BY", "CREATED"
                );
                for r in &list {
                    let version = format!("v{}{}", r.version, if r.live { "*" } else { "" });
                    let sha: String = r.sha.chars().take(10).collect();
                    println!(
                        "{version:<6} {:<10} {sha:<10} {:<12} {:<16} {:<20} {}",
                        r.state.as_str(),
                        r.source,
                        neutralised(r.created_by.as_deref().unwrap_or("(push)")),
                        r.created_at.format("%Y-%m-%d %H:%M:%S"),
                        neutralised(&r.reason)
                    );
                }
                println!("* serving now");
            }
        }
        Command::Releases { app, diff: Some(pair) } => {
            let (from, to) = (&pair[0], &pair[1]);
            let diff: api::ReleaseDiff =
                online()?.get(&format!("/api/v1/apps/{app}/releases/{from}/diff/{to}")).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&diff)?);
            } else {
                println!("v{} -> v{}", diff.from, diff.to);
                if let Some((a, b)) = &diff.image {
                    println!("  image: {} -> {}", a.as_deref().unwrap_or("(none)"), b.as_deref().unwrap_or("(none)"));
                }
                if diff.changes.is_empty() && diff.image.is_none() {
                    println!("  (no change)");
                }
                for c in &diff.changes {
                    let show = |v: &Option<String>| neutralised(v.as_deref().unwrap_or("(unset)")).into_owned();
                    match (c.secret, &c.from, &c.to) {
                        (true, Some(_), Some(_)) => println!("  {}: changed (secret)", c.key),
                        (true, None, _) => println!("  {}: added (secret)", c.key),
                        (true, _, None) => println!("  {}: removed (secret)", c.key),
                        _ => println!("  {}: {} -> {}", c.key, show(&c.from), show(&c.to)),
                    }
                }
            }
        }
        Command::Notifications { command: NotificationsCommand::Add { name, webhook, slack, app, events, secret } } => {
            let (kind, url) = match (webhook, slack) {
                (Some(url), _) => ("webhook", url),
                (None, Some(url)) => ("slack", url),
                (None, None) => bail!("give --webhook URL or --slack URL"),
            };
            let url = if url == "-" {
                let mut read = String::new();
                std::io::Read::take(std::io::stdin(), 4096).read_to_string(&mut read).context("reading the URL")?;
                read.trim().to_string()
            } else {
                url
            };
            let new = api::NewNotificationTarget { name, kind: kind.into(), url, secret, app, events };
            let created: api::NotificationTargetCreated = online()?.post("/api/v1/notifications/targets", &new).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                println!("added notification target `{}`", created.name);
                if let Some(secret) = &created.secret {
                    eprintln!("its signing secret, shown only this once (verify webhook-signature with it):");
                    println!("{secret}");
                }
            }
        }
        Command::Notifications { command: NotificationsCommand::List } => {
            let targets: Vec<api::NotificationTarget> = online()?.get("/api/v1/notifications/targets").await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&targets)?);
            } else {
                println!("{:<24} {:<8} {:<16} {:<36} EVENTS", "NAME", "KIND", "APP", "URL");
                for t in &targets {
                    println!(
                        "{:<24} {:<8} {:<16} {:<36} {}",
                        t.name,
                        t.kind,
                        t.app.as_deref().unwrap_or("(every app)"),
                        neutralised(&t.url),
                        t.events.join(",")
                    );
                }
            }
        }
        Command::Notifications { command: NotificationsCommand::Remove { name } } => {
            let _: serde_json::Value =
                online()?.delete(&format!("/api/v1/notifications/targets/{}", path_segment(&name))).await?;
            println!("removed notification target `{name}`");
        }
        Command::Notifications { command: NotificationsCommand::Test { name } } => {
            let path = format!("/api/v1/notifications/targets/{}/test", path_segment(&name));
            let sent: api::NotificationTest = online()?.post(&path, &serde_json::json!({})).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&sent)?);
            } else {
                println!(
                    "test event queued for `{name}` (delivery {}); see `slipway notifications deliveries`",
                    sent.delivery_id
                );
            }
        }
        Command::Notifications { command: NotificationsCommand::Deliveries { target, limit } } => {
            let mut path = format!("/api/v1/notifications/deliveries?limit={limit}");
            if let Some(t) = &target {
                path.push_str(&format!("&target={}", path_segment(t)));
            }
            let list: Vec<api::Delivery> = online()?.get(&path).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<20} {:<20} {:<20} {:<10} {:>8} {:>6} ANSWER",
                    "CREATED", "TARGET", "EVENT", "STATE", "ATTEMPTS", "STATUS"
                );
                for d in &list {
                    let answer = d.last_error.as_deref().or(d.last_response.as_deref()).unwrap_or("");
                    let answer: String = answer.chars().take(60).collect();
                    println!(
                        "{:<20} {:<20} {:<20} {:<10} {:>8} {:>6} {}",
                        d.created_at.format("%Y-%m-%d %H:%M:%S"),
                        d.target,
                        d.event,
                        d.state,
                        d.attempts,
                        d.last_status.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                        neutralised(&answer)
                    );
                }
            }
        }
        Command::Previews { command: PreviewsCommand::List { app } } => {
            let list: Vec<api::Preview> = online()?.get(&format!("/api/v1/apps/{app}/previews")).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<10} {:<9} {:<13} {:<20} {:<40} DETAIL", "PREVIEW", "STATE", "HEAD", "UPDATED", "URL");
                for p in &list {
                    let head =
                        if p.head_sha.is_empty() { p.head_ref.clone() } else { p.head_sha.chars().take(12).collect() };
                    let detail = match (&p.reason, &p.title) {
                        (Some(reason), _) => reason.clone(),
                        (None, Some(title)) => format!("{title} ({})", p.author.as_deref().unwrap_or("?")),
                        (None, None) => String::new(),
                    };
                    println!(
                        "{:<10} {:<9} {:<13} {:<20} {:<40} {}",
                        p.environment,
                        p.state,
                        neutralised(&head),
                        p.updated_at.format("%Y-%m-%d %H:%M:%S"),
                        neutralised(p.url.as_deref().unwrap_or("-")),
                        neutralised(&detail)
                    );
                }
            }
        }
        Command::Previews { command: PreviewsCommand::Close { app, number } } => {
            let path = format!("/api/v1/apps/{app}/previews/{}/close", path_segment(&number));
            let out: Value = online()?.post(&path, &serde_json::json!({})).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "tearing down {} of {app} (deployment {})",
                    out["environment"].as_str().unwrap_or_default(),
                    out["deployment_id"].as_str().unwrap_or_default()
                );
            }
        }
        Command::Db { command: DbCommand::Snapshots { app } } => {
            let list: Vec<api::Snapshot> = online()?.get(&format!("/api/v1/apps/{app}/snapshots")).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<48} {:<8} {:>12} {:<20} STATUS", "SNAPSHOT", "RELEASE", "BYTES", "TAKEN");
                for snap in &list {
                    let release = snap.release.map(|v| format!("v{v}")).unwrap_or_default();
                    let status = match snap.pruned_at {
                        Some(at) => format!("removed by retention {}", at.format("%Y-%m-%d %H:%M:%S")),
                        None => "kept".into(),
                    };
                    println!(
                        "{:<48} {release:<8} {:>12} {:<20} {status}",
                        neutralised(&snap.name),
                        snap.bytes,
                        snap.created_at.format("%Y-%m-%d %H:%M:%S")
                    );
                }
            }
        }
        Command::Db { command: DbCommand::Restore { app, snapshot, yes, follow } } => {
            if !yes {
                confirm_restore(&app, &snapshot)?;
            }
            let body = api::RestoreRequest { confirm: app.clone() };
            let path = format!("/api/v1/apps/{app}/snapshots/{}/restore", path_segment(&snapshot));
            let out: api::RestoreAnswer = online()?.post(&path, &body).await?;
            if cli.json && !follow {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let short: String = out.sha.chars().take(12).collect();
                println!(
                    "restoring {} into {app}'s database, then deploying {short} again (deployment {})",
                    neutralised(&out.snapshot),
                    out.deployment_id
                );
            }
            if follow {
                return follow_logs(&online()?, &out.deployment_id.to_string()).await;
            }
        }
        Command::Promote { app, to, release, follow } => {
            let body = api::PromoteRequest { to, release };
            let out: api::PromoteAnswer = online()?.post(&format!("/api/v1/apps/{app}/promote"), &body).await?;
            if cli.json && !follow {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let short: String = out.sha.chars().take(12).collect();
                let release = out.release.map(|v| format!(" as release v{v}")).unwrap_or_default();
                println!(
                    "promoting {} v{} ({short}, {}) to {}{release} (deployment {})",
                    out.from_app, out.from_release, out.digest, out.app, out.deployment_id
                );
            }
            if follow {
                return follow_logs(&online()?, &out.deployment_id.to_string()).await;
            }
        }
        Command::Env { command: EnvCommand::Set { app, vars, secret, plain } } => {
            let set = env_values(vars, secret, plain)?;
            if set.is_empty() {
                bail!("give KEY=VALUE pairs to set");
            }
            let body = api::EnvChange { set, unset: Vec::new() };
            let answer: api::ConfigAnswer = online()?.patch(&format!("/api/v1/apps/{app}/env"), &body).await?;
            config_answered(&answer, cli.json)?;
        }
        Command::Env { command: EnvCommand::Unset { app, names } } => {
            let body = api::EnvChange { set: Default::default(), unset: names };
            let answer: api::ConfigAnswer = online()?.patch(&format!("/api/v1/apps/{app}/env"), &body).await?;
            config_answered(&answer, cli.json)?;
        }
        Command::Apps { command: AppsCommand::Update(args) } => {
            let UpdateApp {
                name,
                port,
                health_path,
                memory_mb,
                millicpus,
                pids,
                hosts,
                drain_seconds,
                watch_paths,
                status,
                previews,
            } = *args;
            let limits = (memory_mb.is_some() || millicpus.is_some() || pids.is_some())
                .then_some(slipway_proto::message::Limits { memory_mb, millicpus, pids });
            let edge = (!hosts.is_empty() || drain_seconds.is_some())
                .then_some(slipway_proto::message::EdgeSettings { hosts, drain_seconds });
            let watch_paths = match watch_paths.as_slice() {
                [] => None,
                [only] if only.is_empty() => Some(Vec::new()),
                _ => Some(watch_paths),
            };
            let (commit_status, previews) = (status.settings(), previews.settings()?);
            let body = api::AppUpdate { port, health_path, limits, edge, watch_paths, commit_status, previews };
            if body == api::AppUpdate::default() {
                bail!("give at least one setting to change (see `slipway apps update --help`)");
            }
            let answer: api::ConfigAnswer = online()?.patch(&format!("/api/v1/apps/{name}"), &body).await?;
            config_answered(&answer, cli.json)?;
        }
        Command::Sync { app } => {
            let answer: Value = online()?.post(&format!("/api/v1/apps/{app}/sync"), &serde_json::json!({})).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                println!(
                    "asked to read the head of {app}'s branch; a missed push shows up in `slipway status --app {app}`"
                );
            }
        }
        Command::Queue { watch, interval } => {
            let client = online()?;
            watching(watch, interval, || async {
                let queue: api::Queue = client.get("/api/v1/queue").await?;
                Ok(match cli.json {
                    true => serde_json::to_string_pretty(&queue)?,
                    false => queue_table(&queue, chrono::Utc::now()),
                })
            })
            .await?;
        }
        Command::Runners { watch, interval } => {
            let client = online()?;
            watching(watch, interval, || async {
                let runners: Vec<api::Runner> = client.get("/api/v1/runners").await?;
                Ok(match cli.json {
                    true => serde_json::to_string_pretty(&runners)?,
                    false => runners_table(&runners, chrono::Utc::now()),
                })
            })
            .await?;
        }
        Command::Logs { app: Some(app), follow, since, tail, .. } => {
            let mut query = format!("follow={follow}");
            if let Some(since) = &since {
                let encoded = percent_encoding::utf8_percent_encode(since, percent_encoding::NON_ALPHANUMERIC);
                query.push_str(&format!("&since={encoded}"));
            }
            if let Some(tail) = tail {
                query.push_str(&format!("&tail={tail}"));
            }
            let json = cli.json;
            let ended = online()?
                .app_logs(&query, &app, |line| {
                    if json {
                        println!("{}", serde_json::to_string(line).unwrap_or_default());
                    } else if line.stream == "stderr" {
                        println!("[stderr] {}", neutralised(&line.line));
                    } else {
                        println!("{}", neutralised(&line.line));
                    }
                })
                .await?;
            if follow {
                eprintln!("{}", neutralised(&ended));
            }
        }
        Command::Logs { deployment: Some(deployment), follow, .. } => {
            if follow {
                return follow_logs(&online()?, &deployment).await;
            }
            online()?.logs(&deployment, false, line_printer()).await?;
        }
        Command::Logs { deployment: None, app: None, .. } => bail!("name a deployment, or an app with --app"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn follow_logs(client: &Client, id: &str) -> anyhow::Result<ExitCode> {
    let end = client.logs(id, true, line_printer()).await?;
    let LogEnd::State(state) = end else { bail!("the log stream ended before the deployment did") };
    let d: api::DeploymentDetail = client.get(&format!("/api/v1/deployments/{id}")).await?;
    let d = d.deployment;
    match state {
        State::Completed => {
            println!("deployment {id} completed{}", d.url.map(|u| format!(": {u}")).unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        State::Cancelled => {
            let by = d.cancel_by.unwrap_or_default();
            eprintln!("deployment {id} cancelled by {by}: {}", d.cancel_reason.unwrap_or_default());
            Ok(ExitCode::FAILURE)
        }
        other => {
            eprintln!(
                "deployment {id} {} at step {} ({} error): {}",
                other.as_str(),
                d.error_step.map(Step::as_str).unwrap_or("?"),
                d.error_cause.map(Cause::as_str).unwrap_or("?"),
                d.error_message.unwrap_or_default()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn manifests(args: &ManifestsArgs) -> anyhow::Result<String> {
    use slipway_deploy::kubernetes::{KubeSpec, Revision, render};
    let mut spec: KubeSpec = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => KubeSpec::default(),
    };
    if let Some(v) = &args.name {
        spec.name = v.clone();
    }
    if let Some(v) = args.port {
        spec.port = v;
    }
    if let Some(v) = &args.health_path {
        spec.health_path = v.clone();
    }
    if let Some(v) = &args.host {
        spec.host = Some(v.clone());
    }
    if let Some(v) = args.replicas {
        spec.replicas = v;
    }
    if spec.name.is_empty() {
        bail!("name: set --name or `name:` in the config");
    }
    let revision =
        Revision { deployment_id: args.deployment_id.clone(), sha: args.sha.clone(), image: args.image.clone() };
    let manifests = render(&spec, &revision, args.track.as_deref())?;
    Ok(manifests.to_yaml(args.show_secrets))
}

fn print_plan(plan: &Value) {
    println!("{:<16} {}", "provider", s(plan, "provider"));
    println!("{:<16} {}", "app root", s(plan, "app_root"));
    for key in [
        "version",
        "package_manager",
        "framework",
        "install",
        "build",
        "start",
        "test",
        "port",
        "health_path",
        "static_dir",
        "artifact",
        "base_image",
    ] {
        let fact = &plan[key];
        let value = match &fact["value"] {
            Value::String(v) => v.clone(),
            Value::Null if key == "test" => "skipped (no test command found)".into(),
            Value::Null => continue,
            other => other.to_string(),
        };
        let from: Vec<&str> = fact["from"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let from = if from.is_empty() { String::new() } else { format!("  ({})", from.join(", ")) };
        println!("{:<16} {value}{from}", key.replace('_', " "));
    }
    if let Some(files) = plan["dependency_files"].as_array().filter(|f| !f.is_empty()) {
        let files: Vec<&str> = files.iter().filter_map(Value::as_str).collect();
        println!("{:<16} {}", "dependencies", files.join(", "));
    }
    if let Some(env) = plan["env"].as_object().filter(|e| !e.is_empty()) {
        for (k, v) in env {
            println!("{:<16} {k}={}", "env", v.as_str().unwrap_or_default());
        }
    }
    for note in plan["notes"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        println!("{:<16} {note}", "note");
    }
}

/// Prints log events as lines; the parts of a long line (`more`) are joined into one.
/// Prints what `render` gives once, or with `watch` again every `interval` seconds, in place on
/// a terminal (the screen is cleared first) and one after another otherwise.
async fn watching<F, Fut>(watch: bool, interval: u64, render: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal();
    loop {
        let text = render().await?;
        let mut out = std::io::stdout().lock();
        if watch && tty {
            write!(out, "\x1b[H\x1b[2J")?;
        }
        writeln!(out, "{text}")?;
        out.flush()?;
        drop(out);
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(interval)).await;
    }
}

/// `Some` when `raw` is a deployment id rather than an app name.
fn uuid_like(raw: &str) -> Option<()> {
    (raw.len() == 36 && raw.chars().all(|c| c.is_ascii_hexdigit() || c == '-')).then_some(())
}

/// A running app: where it answers, then each container with its state, restarts and last exit.
fn app_status(status: &api::AppStatus) -> String {
    let mut out = format!("app        {}\n", status.app);
    out.push_str(&format!("url        {}\n", status.url.as_deref().unwrap_or("(not deployed)")));
    out.push_str(&format!(
        "{:<8} {:<10} {:>8} {:>9} {:<28} CONTAINER\n",
        "SERVING", "STATE", "RESTARTS", "LAST EXIT", "SINCE"
    ));
    for c in &status.containers {
        let since = if c.state == "running" { c.started_at.as_deref() } else { c.finished_at.as_deref() };
        let exit = c.exit_code.map(|e| e.to_string()).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<8} {:<10} {:>8} {:>9} {:<28} {}\n",
            if c.serving { "yes" } else { "" },
            neutralised(&c.state),
            c.restarts,
            exit,
            since.map(|s| s.chars().take(19).collect::<String>()).unwrap_or_default(),
            neutralised(&c.name)
        ));
    }
    out
}

/// "4m12s", "3h05m", "12s" or "0.4s".
fn span(seconds: f64) -> String {
    let s = seconds.max(0.0);
    match s {
        s if s < 10.0 => format!("{s:.1}s"),
        s if s < 60.0 => format!("{}s", s as u64),
        s if s < 3600.0 => format!("{}m{:02}s", s as u64 / 60, s as u64 % 60),
        s => format!("{}h{:02}m", s as u64 / 3600, s as u64 % 3600 / 60),
    }
}

/// The queue: a summary line, then every waiting deployment, oldest first.
fn queue_table(queue: &api::Queue, now: chrono::DateTime<chrono::Utc>) -> String {
    let q = &queue.summary;
    let oldest = q.oldest_wait_seconds.map(|s| format!(", oldest waiting {}", span(s))).unwrap_or_default();
    let mut out = format!(
        "queue: {} waiting{oldest}; runners: {} of {} busy, slots: {} of {} busy (at {})\n",
        q.depth,
        q.runners_busy,
        q.runners_online,
        q.slots_busy,
        q.slots,
        now.format("%H:%M:%S")
    );
    if queue.entries.is_empty() {
        out.push_str("nothing is waiting");
        return out;
    }
    out.push_str(&format!(
        "{:>3} {:>7} {:<36} {:<16} {:<10} {:>7} REASON",
        "POS", "WAITED", "DEPLOYMENT", "APP", "SHA", "ATTEMPT"
    ));
    for e in &queue.entries {
        let sha: String = e.sha.chars().take(10).collect();
        let sha = if sha.is_empty() { "(head)".to_string() } else { sha };
        out.push_str(&format!(
            "\n{:>3} {:>7} {:<36} {:<16} {:<10} {:>7} {}",
            e.position,
            span(e.wait_seconds),
            e.deployment_id.to_string(),
            e.app,
            neutralised(&sha),
            e.attempt,
            e.reason.describe()
        ));
    }
    out
}

/// The runners, oldest first.
fn runners_table(runners: &[api::Runner], now: chrono::DateTime<chrono::Utc>) -> String {
    let ago = |t: chrono::DateTime<chrono::Utc>| format!("{} ago", span((now - t).num_milliseconds() as f64 / 1000.0));
    let online = runners.iter().filter(|r| r.state.is_online()).count();
    let mut out = format!("runners: {online} online of {} listed (at {})\n", runners.len(), now.format("%H:%M:%S"));
    if runners.is_empty() {
        out.push_str("no runner has reported to this scheduler");
        return out;
    }
    out.push_str(&format!(
        "{:<28} {:<8} {:<9} {:>9} {:>10} {:>10} {:<20} LABELS",
        "RUNNER", "VERSION", "STATE", "JOBS", "LAST SEEN", "STARTED", "HOST"
    ));
    for r in runners {
        out.push_str(&format!(
            "\n{:<28} {:<8} {:<9} {:>9} {:>10} {:>10} {:<20} {}",
            neutralised(&r.id),
            neutralised(&r.version),
            r.state.as_str(),
            format!("{}/{}", r.jobs.len(), r.slots),
            ago(r.last_seen_at),
            ago(r.started_at),
            neutralised(&r.host),
            neutralised(&r.labels.join(","))
        ));
    }
    out
}

fn line_printer() -> impl FnMut(&LogEvent) {
    use std::io::Write;
    let mut continuing = false;
    move |event: &LogEvent| {
        let mut out = std::io::stdout().lock();
        if !continuing {
            let step = event.step.map(Step::as_str).unwrap_or("runner");
            let _ = write!(out, "[{step:>7}] ");
        }
        continuing = event.more;
        let line = neutralised(&event.line);
        let _ = match continuing {
            true => write!(out, "{line}"),
            false => writeln!(out, "{line}"),
        };
    }
}

/// `text` with terminal control sequences made visible (`\x1b[...`) instead of acted on, so
/// build output cannot move the cursor, rewrite the screen or forge a line of this CLI's own.
fn neutralised(text: &str) -> std::borrow::Cow<'_, str> {
    let control = |c: char| (c.is_control() && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c);
    if !text.chars().any(control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match control(c) {
            true => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            false => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

fn print_deployment(detail: &api::DeploymentDetail) {
    let d = &detail.deployment;
    println!("deployment {}  app {}  sha {}", d.id, d.app, d.sha);
    println!("state      {} (attempt {})", d.state.as_str(), d.attempt);
    if let Some(url) = &d.url {
        println!("url        {url}");
    }
    if d.rolled_back {
        println!("rolled back yes: the previous revision serves again");
    }
    if let Some(by) = &d.cancel_by {
        println!("cancel     by {by}: {}", d.cancel_reason.as_deref().unwrap_or_default());
    }
    if let Some(message) = &d.error_message {
        let step = d.error_step.map(Step::as_str).unwrap_or("?");
        println!("error      {message} at {step} ({} error)", d.error_cause.map(Cause::as_str).unwrap_or("?"));
    }
    if let Some(cache) = &d.cache {
        println!("cache      {} steps reused, {} rebuilt", cache.reused, cache.rebuilt);
        if let Some(miss) = &cache.first_miss {
            println!("           first rebuilt: {}", neutralised(miss));
        }
    }
    println!("{:>7}  {:<8} {:<10} {:>9}  ERROR", "ATTEMPT", "STEP", "STATUS", "SECONDS");
    for st in &detail.steps {
        let secs = match (st.started_at, st.finished_at) {
            (Some(a), Some(b)) => format!("{:.2}", (b - a).num_milliseconds() as f64 / 1000.0),
            _ => "-".into(),
        };
        let (step, status) = (st.step.as_str(), st.status.as_str());
        println!("{:>7}  {step:<8} {status:<10} {secs:>9}  {}", st.attempt, st.error.as_deref().unwrap_or_default());
    }
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Asks on the terminal for the app's name before a restore; no terminal, no restore.
fn confirm_restore(app: &str, snapshot: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        bail!("a restore replaces {app}'s database; confirm on a terminal, or pass --yes");
    }
    print!(
        "This replaces the database of {app} with snapshot {}.\nType the app's name to continue: ",
        neutralised(snapshot)
    );
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().take(256).read_line(&mut answer)?;
    if answer.trim() != app {
        bail!("not confirmed; nothing was restored");
    }
    Ok(())
}

/// `s` as one URL path segment.
fn path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_table_leads_with_a_summary_and_says_why_each_waits() {
        let now = chrono::Utc::now();
        let queued = |position: u32, wait: f64, reason: api::WaitReason| api::Queued {
            position,
            deployment_id: uuid::Uuid::from_u128(position.into()),
            app: "web".into(),
            environment: "production".into(),
            sha: if position == 1 { "0123456789abcdef".into() } else { String::new() },
            source: "github".into(),
            attempt: 1,
            created_at: now,
            wait_seconds: wait,
            reason,
        };
        let queue = api::Queue {
            summary: api::QueueSummary {
                depth: 2,
                oldest_wait_seconds: Some(252.0),
                runners_online: 2,
                runners_busy: 2,
                slots: 2,
                slots_busy: 2,
            },
            entries: vec![
                queued(1, 252.0, api::WaitReason::WaitingForRunner { slots_busy: 2, slots: 2 }),
                queued(2, 3.0, api::WaitReason::NoRunner),
            ],
        };
        let table = queue_table(&queue, now);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("queue: 2 waiting, oldest waiting 4m12s; runners: 2 of 2 busy, slots: 2 of 2 busy")
        );
        assert!(lines[1].starts_with("POS  WAITED DEPLOYMENT"), "{table}");
        assert!(
            lines[2].contains("4m12s") && lines[2].contains("0123456789 ") && lines[2].ends_with("(2 of 2 slots busy)")
        );
        assert!(lines[3].contains("(head)") && lines[3].ends_with("no runner online"), "{table}");
        let empty = api::Queue {
            summary: api::QueueSummary { depth: 0, oldest_wait_seconds: None, ..queue.summary },
            entries: vec![],
        };
        assert!(queue_table(&empty, now).ends_with("nothing is waiting"));
    }

    #[test]
    fn runner_fields_cannot_drive_the_terminal() {
        let now = chrono::Utc::now();
        let runner = api::Runner {
            id: "evil\u{1b}[2J".into(),
            version: "0.1.0".into(),
            host: "h\u{7}".into(),
            state: api::RunnerState::Busy,
            slots: 2,
            jobs: vec![uuid::Uuid::nil()],
            labels: vec!["gpu".into()],
            started_at: now - chrono::Duration::seconds(3700),
            last_seen_at: now - chrono::Duration::seconds(2),
        };
        let table = runners_table(&[runner], now);
        assert!(!table.contains('\u{1b}') && !table.contains('\u{7}'), "{table:?}");
        let row = table.lines().nth(2).expect("row");
        assert!(
            row.contains(" busy ") && row.contains("1/2") && row.contains("2.0s ago") && row.contains("1h01m ago"),
            "{row}"
        );
    }

    #[test]
    fn spans_read_at_a_glance() {
        assert_eq!(span(0.42), "0.4s");
        assert_eq!(span(42.0), "42s");
        assert_eq!(span(252.0), "4m12s");
        assert_eq!(span(3.0 * 3600.0 + 300.0), "3h05m");
        assert_eq!(span(-1.0), "0.0s");
    }

    #[test]
    fn terminal_control_sequences_in_output_are_shown_not_acted_on() {
        assert_eq!(neutralised("plain\ttext é"), "plain\ttext é");
        assert_eq!(neutralised("\u{1b}[2K\rdeployment completed"), "\\x1b[2K\\x0ddeployment completed");
        assert_eq!(neutralised("bell\u{7} c1\u{9b}31m"), "bell\\x07 c1\\x9b31m");
    }
}
