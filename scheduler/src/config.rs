//! The scheduler's configuration, read once from flags and `SLIPWAY_*` environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

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

    /// Attempts of a job before an infrastructure failure or a lost runner fails it for good.
    #[arg(long, env = "SLIPWAY_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,

    /// Largest webhook body accepted, in bytes (GitHub sends up to 25 MB).
    #[arg(long, env = "SLIPWAY_WEBHOOK_MAX_BYTES", default_value_t = 25 * 1024 * 1024)]
    pub webhook_max_bytes: usize,
}

impl Config {
    /// Checks what clap cannot; the message names the variable.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_seconds < 2 {
            return Err("SLIPWAY_LEASE_SECONDS must be at least 2".into());
        }
        if self.max_attempts == 0 {
            return Err("SLIPWAY_MAX_ATTEMPTS must be at least 1".into());
        }
        if self.queue_prefix.is_empty()
            || !self.queue_prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err("SLIPWAY_QUEUE_PREFIX may contain only letters, digits, '-', '_' and '.'".into());
        }
        if !self.database_url.starts_with("postgres://") && !self.database_url.starts_with("postgresql://") {
            return Err("DATABASE_URL must be a postgres:// URL".into());
        }
        Ok(())
    }

    /// The lease as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }
}
