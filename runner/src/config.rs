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

    /// Token for private repositories, given to git through a credential callback (never in a
    /// URL), only over https and only to the hosts of SLIPWAY_GIT_TOKEN_HOSTS.
    #[arg(long, env = "SLIPWAY_GIT_TOKEN", hide_env_values = true)]
    pub git_token: Option<String>,

    /// User name for a registry that needs credentials to push and pull.
    #[arg(long, env = "SLIPWAY_REGISTRY_USERNAME")]
    pub registry_username: Option<String>,

    /// Password or token for the registry (with SLIPWAY_REGISTRY_USERNAME); masked in every log.
    #[arg(long, env = "SLIPWAY_REGISTRY_PASSWORD", hide_env_values = true)]
    pub registry_password: Option<String>,

    /// A file holding the registry password, instead of SLIPWAY_REGISTRY_PASSWORD.
    #[arg(long, env = "SLIPWAY_REGISTRY_PASSWORD_FILE")]
    pub registry_password_file: Option<PathBuf>,

    /// The hosts (comma-separated) SLIPWAY_GIT_TOKEN is for; it goes to no other.
    #[arg(long, env = "SLIPWAY_GIT_TOKEN_HOSTS", default_value = "github.com")]
    pub git_token_hosts: String,

    /// Hosts, addresses and CIDRs (comma-separated) repositories may be fetched from although
    /// they are not public (loopback, private, link-local ...); by default none.
    #[arg(long, env = "SLIPWAY_ALLOW_PRIVATE_GIT", default_value = "")]
    pub allow_private_git: String,

    /// Seconds git may wait on a silent server (connecting, or mid-fetch) before the clone fails
    /// as an infrastructure error (retried).
    #[arg(long, env = "SLIPWAY_GIT_TIMEOUT_SECONDS", default_value_t = 60)]
    pub git_timeout_seconds: u64,

    /// Seconds a push to the registry may take before it fails as an infrastructure error (retried).
    #[arg(long, env = "SLIPWAY_PUSH_TIMEOUT_SECONDS", default_value_t = 3600)]
    pub push_timeout_seconds: u64,

    /// Memory limit of every app container, in MiB.
    #[arg(long, env = "SLIPWAY_APP_MEMORY_MB", default_value_t = 512)]
    pub app_memory_mb: i64,

    /// CPUs every app container may use.
    #[arg(long, env = "SLIPWAY_APP_CPUS", default_value_t = 1.0)]
    pub app_cpus: f64,

    /// Processes every app container may run at once.
    #[arg(long, env = "SLIPWAY_APP_PIDS", default_value_t = 512)]
    pub app_pids: i64,

    /// Seconds a new container has to answer its health check.
    #[arg(long, env = "SLIPWAY_HEALTH_TIMEOUT_SECONDS", default_value_t = 60)]
    pub health_timeout_seconds: u64,

    /// Host address deployed containers publish their port on.
    #[arg(long, env = "SLIPWAY_PUBLISH_ADDRESS", default_value = "127.0.0.1")]
    pub publish_address: String,

    /// On SIGTERM, how long running jobs may take to finish before they are handed back.
    #[arg(long, env = "SLIPWAY_DRAIN_SECONDS", default_value_t = 300)]
    pub drain_seconds: u64,

    /// Base images of generated Dockerfiles, `role=image` pairs separated by commas, where a role
    /// is a provider (build stages, e.g. `node`) or `<provider>-run` (the final stage), and
    /// `{version}` stands for the detected runtime version.
    #[arg(long, env = "SLIPWAY_BASE_IMAGES", default_value = "")]
    pub base_images: String,

    /// Seconds the test step may take.
    #[arg(long, env = "SLIPWAY_TEST_TIMEOUT_SECONDS", default_value_t = 1800)]
    pub test_timeout_seconds: u64,
    /// How long a release command (migrations) may run before the deployment fails.
    #[arg(long, env = "SLIPWAY_RELEASE_TIMEOUT_SECONDS", default_value_t = 1800)]
    pub release_timeout_seconds: u64,
    /// Where database snapshots are kept (`<dir>/<app>/<name>.dump`). Runners that may restore
    /// each other's snapshots must share it (one machine, or a shared volume).
    #[arg(long, env = "SLIPWAY_SNAPSHOT_DIR", default_value = "/var/lib/slipway/snapshots")]
    pub snapshot_dir: std::path::PathBuf,
    /// How many snapshots of each app are kept; older ones are removed after a new one.
    #[arg(long, env = "SLIPWAY_SNAPSHOT_KEEP", default_value_t = 5)]
    pub snapshot_keep: usize,
    /// The image with `pg_dump` and `pg_restore` (PostgreSQL client tools).
    #[arg(long, env = "SLIPWAY_SNAPSHOT_IMAGE", default_value = "slipway/pg-client:bookworm")]
    pub snapshot_image: String,

    /// Memory limit of the test container, in MiB.
    #[arg(long, env = "SLIPWAY_TEST_MEMORY_MB", default_value_t = 2048)]
    pub test_memory_mb: i64,

    /// CPUs the test container may use.
    #[arg(long, env = "SLIPWAY_TEST_CPUS", default_value_t = 1.0)]
    pub test_cpus: f64,

    /// Deploy apps whose target is `kubernetes`, to the cluster of kube's defaults (KUBECONFIG,
    /// ~/.kube/config, or the in-cluster service account).
    #[arg(long, env = "SLIPWAY_KUBERNETES", default_value_t = false)]
    pub kubernetes: bool,

    /// Seconds a Kubernetes rollout may take before it is failed and rolled back.
    #[arg(long, env = "SLIPWAY_ROLLOUT_TIMEOUT_SECONDS", default_value_t = 600)]
    pub rollout_timeout_seconds: u64,

    /// Seconds a build may take before it is stopped (a user error).
    #[arg(long, env = "SLIPWAY_BUILD_TIMEOUT_SECONDS", default_value_t = 4 * 3600)]
    pub build_timeout_seconds: u64,

    /// Where this runner serves Prometheus metrics (`GET /metrics`), or `off`. An address other
    /// than loopback needs SLIPWAY_METRICS_TOKEN_FILE.
    #[arg(long, env = "SLIPWAY_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: String,

    /// A file holding the bearer token `/metrics` asks for (Prometheus' `credentials_file`).
    #[arg(long, env = "SLIPWAY_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<std::path::PathBuf>,

    /// Caddy's admin API, which gives each app of the docker target its stable address; `off`
    /// for none (apps then answer only on their container's published port).
    #[arg(long, env = "SLIPWAY_EDGE_ADMIN", default_value = "http://127.0.0.1:2019")]
    pub edge_admin: String,

    /// The address the edge serves apps on: `http://<app>.<domain>:<port>`.
    #[arg(long, env = "SLIPWAY_EDGE_LISTEN", default_value = "127.0.0.1:8880")]
    pub edge_listen: String,

    /// Apps answer at `<app>.<domain>` on the edge (`localhost` resolves to loopback).
    #[arg(long, env = "SLIPWAY_EDGE_DOMAIN", default_value = "localhost")]
    pub edge_domain: String,

    /// Let Caddy get certificates and serve HTTPS for the apps' hosts (needs a real domain
    /// whose names point at this host, and SLIPWAY_EDGE_LISTEN=:443).
    #[arg(long, env = "SLIPWAY_EDGE_HTTPS", default_value_t = false, action = clap::ArgAction::Set)]
    pub edge_https: bool,

    /// Seconds the previous version's in-flight requests may take after a switch, before it is
    /// stopped anyway (an app's `edge.drain_seconds` overrides it).
    #[arg(long, env = "SLIPWAY_EDGE_DRAIN_SECONDS", default_value_t = 30)]
    pub edge_drain_seconds: u64,

    /// Labels this runner reports of itself (comma-separated), shown in `slipway runners`.
    #[arg(long, env = "SLIPWAY_RUNNER_LABELS", default_value = "")]
    pub labels: String,
}

impl Config {
    /// The registry's credentials, when configured; an unreadable password file is an error.
    pub fn registry_auth(&self) -> Result<Option<bollard::auth::DockerCredentials>, String> {
        let Some(username) = self.registry_username.clone().filter(|u| !u.is_empty()) else {
            if self.registry_password.is_some() || self.registry_password_file.is_some() {
                return Err("SLIPWAY_REGISTRY_PASSWORD needs SLIPWAY_REGISTRY_USERNAME".into());
            }
            return Ok(None);
        };
        let password = match (&self.registry_password, &self.registry_password_file) {
            (Some(p), None) => p.clone(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .map_err(|e| format!("SLIPWAY_REGISTRY_PASSWORD_FILE {}: {e}", file.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            (Some(_), Some(_)) => {
                return Err("give SLIPWAY_REGISTRY_PASSWORD or SLIPWAY_REGISTRY_PASSWORD_FILE, not both".into());
            }
            (None, None) => return Err("SLIPWAY_REGISTRY_USERNAME needs SLIPWAY_REGISTRY_PASSWORD".into()),
        };
        if password.len() < slipway_proto::message::MIN_SECRET_LEN {
            return Err("the registry password must be at least 6 characters, so it can be masked".into());
        }
        let server = self.registry.split('/').next().unwrap_or_default().to_string();
        Ok(Some(bollard::auth::DockerCredentials {
            username: Some(username),
            password: Some(password),
            serveraddress: Some(server),
            ..Default::default()
        }))
    }

    /// Values of the runner's own configuration never to show in a log: its git token and
    /// registry password.
    pub fn own_secrets(&self) -> Vec<String> {
        let registry = self.registry_auth().ok().flatten().and_then(|a| a.password);
        let metrics = self.metrics().ok().flatten().and_then(|(_, token)| token);
        self.git_token
            .iter()
            .cloned()
            .chain(registry)
            .chain(metrics)
            .filter(|s| s.len() >= slipway_proto::message::MIN_SECRET_LEN)
            .collect()
    }

    /// The hosts SLIPWAY_GIT_TOKEN is for, lowercase.
    pub fn git_token_hosts(&self) -> Vec<String> {
        self.git_token_hosts.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect()
    }

    /// Checks what clap cannot; the message names the variable.
    pub fn validate(&self) -> Result<(), String> {
        slipway_proto::outbound::Guard::parse(&self.allow_private_git)?;
        self.registry_auth()?;
        if self.concurrency == 0 {
            return Err("SLIPWAY_CONCURRENCY must be at least 1".into());
        }
        if self.app_memory_mb < 16 || !(0.05..=64.0).contains(&self.app_cpus) || self.app_pids < 16 {
            return Err("SLIPWAY_APP_MEMORY_MB must be at least 16, SLIPWAY_APP_CPUS between 0.05 and 64, SLIPWAY_APP_PIDS at least 16".into());
        }
        if !(1..=3600).contains(&self.git_timeout_seconds) {
            return Err("SLIPWAY_GIT_TIMEOUT_SECONDS must be between 1 and 3600".into());
        }
        if self.heartbeat_seconds == 0 {
            return Err("SLIPWAY_HEARTBEAT_SECONDS must be at least 1".into());
        }
        if self.registry.is_empty() || self.registry.contains("://") || self.registry.ends_with('/') {
            return Err("SLIPWAY_REGISTRY must look like host[:port][/namespace], without a scheme".into());
        }
        if let Err(err) = slipway_detect::dockerfile::BaseImages::with_overrides(&self.base_images) {
            return Err(format!("SLIPWAY_BASE_IMAGES: {err}"));
        }
        if self.test_memory_mb < 16 || !(0.1..=64.0).contains(&self.test_cpus) || self.test_timeout_seconds == 0 {
            return Err("SLIPWAY_TEST_MEMORY_MB must be at least 16, SLIPWAY_TEST_CPUS between 0.1 and 64, SLIPWAY_TEST_TIMEOUT_SECONDS above 0".into());
        }
        if !(1..=86_400).contains(&self.release_timeout_seconds) {
            return Err("SLIPWAY_RELEASE_TIMEOUT_SECONDS must be between 1 and 86400".into());
        }
        if !(1..=1000).contains(&self.snapshot_keep) || !self.snapshot_dir.is_absolute() {
            return Err(
                "SLIPWAY_SNAPSHOT_KEEP must be between 1 and 1000 and SLIPWAY_SNAPSHOT_DIR an absolute path".into()
            );
        }
        self.metrics()?;
        self.edge()?;
        if self.edge_drain_seconds > 3600 {
            return Err("SLIPWAY_EDGE_DRAIN_SECONDS must be at most 3600".into());
        }
        if self.labels().iter().any(|l| l.len() > 100 || l.chars().any(|c| c.is_control())) {
            return Err("SLIPWAY_RUNNER_LABELS must be labels of at most 100 printable characters".into());
        }
        if let Some(id) = &self.runner_id
            && (id.is_empty() || id.len() > 100 || id.chars().any(|c| c.is_control()))
        {
            return Err("SLIPWAY_RUNNER_ID must be 1 to 100 printable characters".into());
        }
        Ok(())
    }

    /// The metrics address and the token it asks for: `None` when off. A token file that
    /// cannot be read or is empty, or an address beyond loopback without a token, is an error.
    pub fn metrics(&self) -> Result<Option<(std::net::SocketAddr, Option<String>)>, String> {
        let Some(addr) = slipway_telemetry::metrics::parse_listen(&self.metrics_listen)
            .map_err(|e| format!("SLIPWAY_METRICS_LISTEN: {e}"))?
        else {
            return Ok(None);
        };
        let token = match &self.metrics_token_file {
            None => None,
            Some(path) => {
                let token = std::fs::read_to_string(path)
                    .map_err(|e| format!("SLIPWAY_METRICS_TOKEN_FILE {}: {e}", path.display()))?;
                let token = token.trim().to_string();
                if token.len() < 16 {
                    return Err("SLIPWAY_METRICS_TOKEN_FILE must hold a token of at least 16 characters".into());
                }
                Some(token)
            }
        };
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(format!(
                "SLIPWAY_METRICS_LISTEN {addr} is reachable beyond this host: set SLIPWAY_METRICS_TOKEN_FILE too"
            ));
        }
        Ok(Some((addr, token)))
    }

    /// The edge's settings, `None` when it is off; the message names the bad variable.
    pub fn edge(&self) -> Result<Option<slipway_deploy::EdgeConfig>, String> {
        let admin = self.edge_admin.trim();
        if admin.is_empty() || admin == "off" {
            return Ok(None);
        }
        let url = url::Url::parse(admin).map_err(|e| format!("SLIPWAY_EDGE_ADMIN {admin:?}: {e}"))?;
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        if url.scheme() != "http" || !loopback {
            return Err(format!(
                "SLIPWAY_EDGE_ADMIN must be Caddy's admin API on loopback (http://127.0.0.1:2019), not {admin:?}"
            ));
        }
        let listen_ok = self
            .edge_listen
            .rsplit_once(':')
            .is_some_and(|(host, port)| port.parse::<u16>().is_ok_and(|p| p > 0) && !host.contains('/'));
        if !listen_ok {
            return Err(format!("SLIPWAY_EDGE_LISTEN must be [host]:port, not {:?}", self.edge_listen));
        }
        let domain_ok =
            self.edge_domain.split('.').all(|l| slipway_proto::validate_dns_label("domain label", l).is_ok());
        if !domain_ok || self.edge_domain.len() > 200 {
            return Err(format!(
                "SLIPWAY_EDGE_DOMAIN must be a DNS name such as apps.example.com, not {:?}",
                self.edge_domain
            ));
        }
        Ok(Some(slipway_deploy::EdgeConfig {
            admin: admin.trim_end_matches('/').to_string(),
            listen: self.edge_listen.clone(),
            domain: self.edge_domain.clone(),
            https: self.edge_https,
            installation: self.queue_prefix.clone(),
        }))
    }

    /// The labels this runner reports.
    pub fn labels(&self) -> Vec<String> {
        self.labels.split(',').map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
    }

    /// This runner's id.
    pub fn runner_id(&self) -> String {
        self.runner_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "runner".into());
            format!("{}-{}", host.trim(), std::process::id())
        })
    }

    /// Limits of the test container.
    pub fn test_limits(&self) -> crate::suite::Limits {
        crate::suite::Limits {
            memory_bytes: self.test_memory_mb * 1024 * 1024,
            nano_cpus: (self.test_cpus * 1e9) as i64,
            pids: 1024,
            timeout: Duration::from_secs(self.test_timeout_seconds),
        }
    }

    /// Limits of every app container.
    pub fn app_limits(&self) -> slipway_deploy::AppLimits {
        slipway_deploy::AppLimits {
            memory_bytes: self.app_memory_mb * 1024 * 1024,
            nano_cpus: (self.app_cpus * 1e9) as i64,
            pids: self.app_pids,
        }
    }

    /// An app's own limits, each unset one the default.
    pub fn app_limits_with(&self, app: &slipway_proto::message::Limits) -> slipway_deploy::AppLimits {
        let default = self.app_limits();
        slipway_deploy::AppLimits {
            memory_bytes: app.memory_mb.map_or(default.memory_bytes, |m| i64::from(m) * 1024 * 1024),
            nano_cpus: app.millicpus.map_or(default.nano_cpus, |c| i64::from(c) * 1_000_000),
            pids: app.pids.map_or(default.pids, i64::from),
        }
    }

    /// How long a push may take.
    pub fn push_timeout(&self) -> Duration {
        Duration::from_secs(self.push_timeout_seconds.max(1))
    }

    /// How long git may wait on a silent server.
    pub fn git_timeout(&self) -> Duration {
        Duration::from_secs(self.git_timeout_seconds)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(env: &[&str]) -> Config {
        let mut args = vec!["slipway-runner"];
        args.extend(env);
        Config::try_parse_from(args).expect("parses")
    }

    #[test]
    fn metrics_stay_on_loopback_unless_a_token_guards_them() {
        assert!(matches!(config(&[]).metrics(), Ok(Some((addr, None))) if addr.to_string() == "127.0.0.1:9464"));
        assert_eq!(config(&["--metrics-listen", "off"]).metrics(), Ok(None));
        let open = config(&["--metrics-listen", "0.0.0.0:9464"]).metrics().expect_err("beyond loopback, no token");
        assert!(open.contains("SLIPWAY_METRICS_TOKEN_FILE"), "{open}");
        assert!(config(&["--metrics-listen", "nonsense"]).metrics().is_err());

        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("token");
        std::fs::write(&file, "short\n").expect("write");
        let path = file.display().to_string();
        let short = config(&["--metrics-listen", "0.0.0.0:9464", "--metrics-token-file", &path]).metrics();
        assert!(short.is_err(), "{short:?}");
        std::fs::write(&file, "a-long-enough-metrics-token\n").expect("write");
        let guarded = config(&["--metrics-listen", "0.0.0.0:9464", "--metrics-token-file", &path]);
        assert!(matches!(guarded.metrics(), Ok(Some((_, Some(t)))) if t == "a-long-enough-metrics-token"));
        assert!(guarded.own_secrets().contains(&"a-long-enough-metrics-token".to_string()), "masked in the log");
        let missing = config(&["--metrics-token-file", "/nonexistent/token"]).metrics();
        assert!(missing.is_err_and(|e| e.contains("/nonexistent/token")));
    }

    #[test]
    fn labels_are_a_trimmed_comma_list() {
        assert_eq!(config(&["--labels", " linux, gpu ,,"]).labels(), ["linux", "gpu"]);
        assert!(config(&[]).labels().is_empty());
    }
}
