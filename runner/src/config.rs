//! The runner's configuration, read once from flags and `SLIPWAY_*` environment variables.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Everything the runner reads at start-up; `--help` documents each variable. A runner needs
/// RabbitMQ, the Docker engine and the registry; never the database.
#[derive(Debug, Clone, Parser)]
#[command(name = "slipway-runner", version, about = "Slipway runner: clones, builds, pushes and deploys jobs")]
pub struct Config {
    /// RabbitMQ connection string.
    #[arg(long, env = "SLIPWAY_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,

    /// Prefix of every queue and exchange name; must match the scheduler's.
    #[arg(long, env = "SLIPWAY_QUEUE_PREFIX", default_value = "slipway")]
    pub queue_prefix: String,

    /// This runner's name in events and `slipway runners` (default: host name and process id).
    #[arg(long, env = "SLIPWAY_RUNNER_ID")]
    pub runner_id: Option<String>,

    /// Jobs run at once; also the prefetch of the jobs queue.
    #[arg(long, env = "SLIPWAY_CONCURRENCY", default_value_t = 1)]
    pub concurrency: u16,

    /// Registry images are pushed to, as `host[:port][/namespace]`.
    #[arg(long, env = "SLIPWAY_REGISTRY", default_value = "127.0.0.1:5000")]
    pub registry: String,

    /// Seconds between heartbeats; keep it well under the scheduler's SLIPWAY_LEASE_SECONDS.
    #[arg(long, env = "SLIPWAY_HEARTBEAT_SECONDS", default_value_t = 10)]
    pub heartbeat_seconds: u64,

    /// Directory for job workspaces (default: the system temp dir).
    #[arg(long, env = "SLIPWAY_WORK_DIR")]
    pub work_dir: Option<PathBuf>,

    /// User name sent with SLIPWAY_GIT_TOKEN when a repository asks for credentials.
    #[arg(long, env = "SLIPWAY_GIT_USERNAME", default_value = "x-access-token")]
    pub git_username: String,

    /// Token for private repositories, given to git through a credential callback (never in a URL).
    #[arg(long, env = "SLIPWAY_GIT_TOKEN", hide_env_values = true)]
    pub git_token: Option<String>,

    /// Seconds a new container has to answer its health check.
    #[arg(long, env = "SLIPWAY_HEALTH_TIMEOUT_SECONDS", default_value_t = 60)]
    pub health_timeout_seconds: u64,

    /// Host address deployed containers publish their port on.
    #[arg(long, env = "SLIPWAY_PUBLISH_ADDRESS", default_value = "127.0.0.1")]
    pub publish_address: String,

    /// On SIGTERM, how long running jobs may take to finish before they are handed back.
    #[arg(long, env = "SLIPWAY_DRAIN_SECONDS", default_value_t = 300)]
    pub drain_seconds: u64,

    /// Seconds a build may take before it is stopped (a user error).
    #[arg(long, env = "SLIPWAY_BUILD_TIMEOUT_SECONDS", default_value_t = 4 * 3600)]
    pub build_timeout_seconds: u64,
}

impl Config {
    /// Checks what clap cannot; the message names the variable.
    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency == 0 {
            return Err("SLIPWAY_CONCURRENCY must be at least 1".into());
        }
        if self.heartbeat_seconds == 0 {
            return Err("SLIPWAY_HEARTBEAT_SECONDS must be at least 1".into());
        }
        if self.registry.is_empty() || self.registry.contains("://") || self.registry.ends_with('/') {
            return Err("SLIPWAY_REGISTRY must look like host[:port][/namespace], without a scheme".into());
        }
        if let Some(id) = &self.runner_id
            && (id.is_empty() || id.len() > 100 || id.chars().any(|c| c.is_control()))
        {
            return Err("SLIPWAY_RUNNER_ID must be 1 to 100 printable characters".into());
        }
        Ok(())
    }

    /// This runner's id.
    pub fn runner_id(&self) -> String {
        self.runner_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "runner".into());
            format!("{}-{}", host.trim(), std::process::id())
        })
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_seconds)
    }
}
