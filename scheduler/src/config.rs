//! The scheduler's configuration, read once from flags and `SLIPWAY_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Everything the scheduler reads at start-up; `--help` documents each variable.
#[derive(Debug, Clone, Parser)]
#[command(name = "slipway-scheduler", version, about = "Slipway scheduler: webhooks, API, live logs, outbox relay")]
pub struct Config {
    /// Address the HTTP API, webhooks and /metrics listen on.
    #[arg(long, env = "SLIPWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// PostgreSQL connection string; migrations are applied at start-up.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    /// RabbitMQ connection string.
    #[arg(long, env = "SLIPWAY_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,

    /// Prefix of every queue and exchange name (lets several installations share a broker).
    #[arg(long, env = "SLIPWAY_QUEUE_PREFIX", default_value = "slipway")]
    pub queue_prefix: String,

    /// A running job whose runner has not sent a heartbeat for this many seconds is dispatched again.
    #[arg(long, env = "SLIPWAY_LEASE_SECONDS", default_value_t = 60)]
    pub lease_seconds: u64,

    /// A runner that sent no report for this many seconds is marked lost (runners report every
    /// SLIPWAY_HEARTBEAT_SECONDS, 10 by default).
    #[arg(long, env = "SLIPWAY_RUNNER_LOST_SECONDS", default_value_t = 30)]
    pub runner_lost_seconds: u64,

    /// Whether the scheduler keeps Prometheus metrics and serves them on /metrics.
    #[arg(long, env = "SLIPWAY_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics: bool,

    /// Seconds between reads of every app's branch head (jittered by a fifth), so a push whose
    /// webhook was lost is deployed at most this late; 0 turns the reconcile off.
    #[arg(long, env = "SLIPWAY_RECONCILE_SECONDS", default_value_t = 180)]
    pub reconcile_seconds: u64,

    /// Seconds between the leader's sweeps for previews idle past their app's TTL (at least 1).
    #[arg(long, env = "SLIPWAY_PREVIEW_SWEEP_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub preview_sweep_seconds: u64,

    /// Attempts of a job before an infrastructure failure or a lost runner fails it for good.
    #[arg(long, env = "SLIPWAY_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,

    /// Largest webhook body accepted, in bytes (GitHub sends up to 25 MB).
    #[arg(long, env = "SLIPWAY_WEBHOOK_MAX_BYTES", default_value_t = 25 * 1024 * 1024)]
    pub webhook_max_bytes: usize,

    /// Webhooks read and parsed at once; more wait (up to 10 s, then 503). Bounds the memory
    /// webhooks can take to about this many times three webhook bodies.
    #[arg(long, env = "SLIPWAY_WEBHOOK_CONCURRENCY", default_value_t = 4)]
    pub webhook_concurrency: usize,

    /// Directory of the scheduler's own files: the first admin token and the secret key file.
    /// Default: $XDG_STATE_HOME/slipway, else ~/.local/state/slipway.
    #[arg(long, env = "SLIPWAY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// The admin API token (at least 32 characters); when unset, a first admin token is
    /// created on first start and written to SLIPWAY_ADMIN_TOKEN_FILE.
    #[arg(long, env = "SLIPWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Where the first admin token is written (mode 0600). Default: <state dir>/admin-token.
    #[arg(long, env = "SLIPWAY_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// The key app secrets are sealed with: 32 random bytes in base64 (`openssl rand -base64 32`).
    /// When unset, the key file is used (and created on first start).
    #[arg(long, env = "SLIPWAY_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,

    /// The key file. Default: <state dir>/secret.key.
    #[arg(long, env = "SLIPWAY_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,

    /// Older keys (base64, comma-separated) that may still open values sealed before a rotation.
    #[arg(long, env = "SLIPWAY_PREVIOUS_SECRET_KEYS", hide_env_values = true, default_value = "")]
    pub previous_secret_keys: String,

    /// Hosts, addresses and CIDRs (comma-separated) repositories may be fetched from although
    /// they are not public (loopback, private, link-local ...); by default none.
    #[arg(long, env = "SLIPWAY_ALLOW_PRIVATE_GIT", default_value = "")]
    pub allow_private_git: String,

    /// Like SLIPWAY_ALLOW_PRIVATE_GIT, for notification targets: the hosts, addresses and CIDRs
    /// notifications may be sent to although they are not public; by default none.
    #[arg(long, env = "SLIPWAY_ALLOW_PRIVATE_NOTIFY", default_value = "")]
    pub allow_private_notify: String,

    /// The scheduler's address as users reach it (links in notifications); by default
    /// `http://` and SLIPWAY_LISTEN.
    #[arg(long, env = "SLIPWAY_PUBLIC_URL")]
    pub public_url: Option<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What else the scheduler binary does.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Re-encrypt every sealed secret with a new key, then exit. With the key file, the new key
    /// replaces it (the old one is kept as `secret.key.previous`); with SLIPWAY_SECRET_KEY, the
    /// new key is written to --to and must then be set as SLIPWAY_SECRET_KEY. Stop the
    /// schedulers first; start them again after.
    RotateKey {
        /// Write the new key here instead of replacing the key file.
        #[arg(long)]
        to: Option<PathBuf>,
    },
}

impl Config {
    /// Where users reach the scheduler, without a trailing `/`.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.listen),
        }
    }

    /// Checks what clap cannot; the message names the variable.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_seconds < 2 {
            return Err("SLIPWAY_LEASE_SECONDS must be at least 2".into());
        }
        if self.runner_lost_seconds < 2 {
            return Err("SLIPWAY_RUNNER_LOST_SECONDS must be at least 2".into());
        }
        if self.max_attempts == 0 {
            return Err("SLIPWAY_MAX_ATTEMPTS must be at least 1".into());
        }
        if self.queue_prefix.is_empty()
            || !self.queue_prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err("SLIPWAY_QUEUE_PREFIX may contain only letters, digits, '-', '_' and '.'".into());
        }
        if !(1..=256).contains(&self.webhook_concurrency) {
            return Err("SLIPWAY_WEBHOOK_CONCURRENCY must be between 1 and 256".into());
        }
        slipway_proto::outbound::Guard::parse(&self.allow_private_git)?;
        slipway_proto::outbound::Guard::parse(&self.allow_private_notify)?;
        if let Some(url) = &self.public_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err("SLIPWAY_PUBLIC_URL must be an http(s) URL".into());
        }
        if !self.database_url.starts_with("postgres://") && !self.database_url.starts_with("postgresql://") {
            return Err("DATABASE_URL must be a postgres:// URL".into());
        }
        Ok(())
    }

    /// The directory of the scheduler's own files.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        let home = std::env::var_os("HOME").map(PathBuf::from);
        match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            Some(state) => PathBuf::from(state).join("slipway"),
            None => home.unwrap_or_else(|| PathBuf::from(".")).join(".local/state/slipway"),
        }
    }

    /// Where the first admin token is written.
    pub fn admin_token_file(&self) -> PathBuf {
        self.admin_token_file.clone().unwrap_or_else(|| self.state_dir().join("admin-token"))
    }

    /// Where the sealing keys come from.
    pub fn key_source(&self) -> crate::seal::KeySource {
        crate::seal::KeySource {
            key: self.secret_key.clone().filter(|k| !k.trim().is_empty()),
            file: self.secret_key_file.clone().unwrap_or_else(|| self.state_dir().join("secret.key")),
            previous: self.previous_secret_keys.split(',').map(str::to_string).collect(),
        }
    }

    /// How often branch heads are read; `None` when the reconcile is off.
    pub fn reconcile_every(&self) -> Option<Duration> {
        (self.reconcile_seconds > 0).then(|| Duration::from_secs(self.reconcile_seconds))
    }

    /// How long a runner may be silent before it is marked lost.
    pub fn runner_lost_after(&self) -> Duration {
        Duration::from_secs(self.runner_lost_seconds)
    }

    /// The lease as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }
}
