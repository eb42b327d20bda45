//! The Slipway scheduler: the only writer of PostgreSQL. It takes webhooks and API calls,
//! records deployments (the outbox), relays them to RabbitMQ, applies what runners report,
//! re-dispatches jobs whose runner went silent, and serves live logs. Any number of replicas
//! can run against one database and broker: every one serves the API and relays the outbox;
//! the [`leader`] alone consumes the runner queue, expires leases and reconciles.

pub mod api;
pub mod applogs;
pub mod apps;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod deployments;
pub mod fleet;
pub mod forge;
pub mod inbox;
pub mod leader;
pub mod lease;
pub mod live;
pub mod logs;
pub mod notify;
pub mod observe;
pub mod previews;
pub mod publisher;
pub mod queue;
pub mod reconcile;
pub mod relay;
pub mod releases;
pub mod seal;
pub mod snapshots;
pub mod status;
pub mod transition;
pub mod webhook;

use std::sync::Arc;

use slipway_proto::outbound::{self, Guard, GuardError};
use slipway_proto::{Control, Policy, State, Topology};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// What handlers and background tasks share.
#[derive(Debug, Clone)]
pub struct Shared {
    pub pool: PgPool,
    pub topo: Topology,
    pub amqp_url: String,
    pub max_attempts: u32,
    /// Wakes the outbox relay after a commit that queued a job.
    pub relay_wake: Arc<Notify>,
    /// Wakes the live-log followers of every replica about a deployment with new lines or a new state.
    pub live: live::Live,
    /// Whether this replica leads (consumes the runner queue, expires leases, reconciles).
    pub leader: leader::Leadership,
    pub publisher: publisher::Publisher,
    /// Whether the inbox could have heard runners lately; the lease reaper waits for it.
    pub inbox: Arc<inbox::Health>,
    /// Fires on shutdown; every task (live-log followers included) ends when it does.
    pub shutdown: CancellationToken,
    /// Every task the scheduler spawns, so shutdown can wait for them (with a deadline).
    pub tasks: TaskTracker,
    /// The keys app secrets are sealed with.
    pub keyring: Arc<seal::Keyring>,
    /// The hosts and networks repositories may be on although they are not public.
    pub guard: Arc<Guard>,
    /// Webhooks being read and parsed; bounds their memory.
    pub webhooks: Arc<tokio::sync::Semaphore>,
    /// The largest webhook body read.
    pub webhook_max_bytes: usize,
    /// Whether the relay reaches RabbitMQ; says why unpublished deployments wait.
    pub broker: Arc<queue::BrokerHealth>,
    /// How long a runner may be silent before it counts as lost.
    pub runner_lost_after: std::time::Duration,
    /// Asks the reconcile loop to read one app's branch head now.
    pub sync: reconcile::SyncRequests,
    /// Renders `/metrics`; `None` with `SLIPWAY_METRICS=false`.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Where notification targets may be (the outbound guard of notifications).
    pub notify_guard: Arc<Guard>,
    /// The scheduler's address as users reach it, for links.
    pub public_url: String,
}

impl Shared {
    /// Checks a repository URL with the outbound guard, resolving its host (bounded: 5 s). A
    /// name that does not resolve now is accepted: it reaches nothing, and the runner checks
    /// the addresses again right before it connects.
    pub async fn check_repo_url(&self, url: &str) -> Result<(), GuardError> {
        let (guard, owned) = (self.guard.clone(), url.to_string());
        let check = tokio::task::spawn_blocking(move || guard.check(&owned).map(|_| ()));
        let host = || outbound::target(url).map(|t| t.host).unwrap_or_default();
        let result = match tokio::time::timeout(std::time::Duration::from_secs(5), check).await {
            Ok(Ok(result)) => result,
            _ => Err(GuardError::Unresolved(host())),
        };
        match result {
            Err(GuardError::Unresolved(host)) => {
                tracing::warn!(host = %host, "the repository host does not resolve now; the runner checks again before it connects");
                Ok(())
            }
            other => other,
        }
    }

    /// The knobs of the lifecycle decision.
    pub fn policy(&self) -> Policy {
        Policy { max_attempts: self.max_attempts }
    }

    /// Carries out what an applied input says: announce the change, wake the relay and live
    /// followers, and send control messages to runners.
    pub fn react(&self, applied: &transition::Applied) {
        use transition::Applied;
        let control = match applied {
            Applied::Changed { note, control } => {
                if note.step.is_none() || note.state != State::Running {
                    tracing::info!(deployment_id = %note.deployment_id, attempt = note.attempt, state = note.state.as_str(), message = note.message.as_deref().unwrap_or(""), "deployment state changed");
                }
                if note.state == State::Queued || note.state.is_terminal() {
                    self.relay_wake.notify_one();
                }
                self.publisher.notify(note);
                self.live.wake(note.deployment_id);
                observe::changed(self, note);
                control
            }
            Applied::Touched { reply } => reply,
            Applied::Ignored { reply } => reply,
            Applied::Rejected { why, control } => {
                if let Some(Control::Cancel { deployment_id, attempt, runner_id, .. }) = control {
                    tracing::info!(deployment_id = %deployment_id, attempt, runner_id = runner_id.as_deref().unwrap_or(""), reason = %why, "telling runner to stop");
                }
                control
            }
        };
        if let Some(control) = control {
            self.publisher.control(control);
        }
    }
}

/// Connects to PostgreSQL, applies migrations, starts the background tasks on `tracker` and
/// serves HTTP until `cancel` fires.
pub async fn run(
    config: Config,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let keyring = seal::Keyring::load(&config.key_source()).context("loading the secret key")?;
    let guard = Guard::parse(&config.allow_private_git).map_err(anyhow::Error::msg)?;
    let notify_guard = Guard::parse(&config.allow_private_notify).map_err(anyhow::Error::msg)?;
    let pool = db::connect(&config.database_url, &cancel).await.context("connecting to PostgreSQL (DATABASE_URL)")?;
    sqlx::migrate!("./migrations").run(&pool).await.context("applying migrations")?;
    auth::bootstrap(&pool, config.admin_token.as_deref().filter(|t| !t.is_empty()), &config.admin_token_file()).await?;
    let sealed = apps::seal_legacy(&pool, &keyring).await.context("sealing secrets stored in the clear")?;
    if sealed > 0 {
        tracing::info!(apps = sealed, key_id = keyring.current_id(), "sealed the secrets of apps stored in the clear");
    }

    let topo = Topology::new(&config.queue_prefix);
    let (publisher, publisher_queue) = publisher::Publisher::new(topo.clone());
    let (sync, sync_requests) = reconcile::SyncRequests::channel();
    let (live, live_tasks) = live::Live::new();
    slipway_git::set_network_timeouts(std::time::Duration::from_secs(10), std::time::Duration::from_secs(30))
        .context("setting git network timeouts")?;
    let shared = Shared {
        pool,
        topo: topo.clone(),
        amqp_url: config.amqp_url.clone(),
        max_attempts: config.max_attempts,
        relay_wake: Arc::new(Notify::new()),
        live,
        leader: leader::Leadership::default(),
        publisher,
        inbox: Arc::new(inbox::Health::default()),
        shutdown: cancel.clone(),
        tasks: tracker.clone(),
        keyring: Arc::new(keyring),
        guard: Arc::new(guard),
        webhooks: Arc::new(tokio::sync::Semaphore::new(config.webhook_concurrency)),
        webhook_max_bytes: config.webhook_max_bytes,
        broker: Arc::new(queue::BrokerHealth::default()),
        runner_lost_after: config.runner_lost_after(),
        sync,
        metrics,
        notify_guard: Arc::new(notify_guard),
        public_url: config.public_url(),
    };
    tracker.spawn(publisher::run_publisher(config.amqp_url.clone(), topo, publisher_queue, cancel.clone()));
    tracker.spawn(leader::run(
        shared.pool.clone(),
        leader::lock_key(&config.queue_prefix),
        shared.leader.clone(),
        cancel.clone(),
    ));
    tracker.spawn(live_tasks.run(shared.pool.clone(), cancel.clone()));
    tracker.spawn(relay::run(shared.clone(), cancel.clone()));
    tracker.spawn(inbox::run(shared.clone(), cancel.clone()));
    tracker.spawn(lease::run(shared.clone(), config.lease(), cancel.clone()));
    tracker.spawn(reconcile::run(shared.clone(), config.reconcile_every(), sync_requests, cancel.clone()));
    tracker.spawn(notify::run(shared.clone(), cancel.clone()));
    let sweep = std::time::Duration::from_secs(config.preview_sweep_seconds);
    tracker.spawn(previews::run(shared.clone(), sweep, cancel.clone()));

    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    match config.metrics {
        true => {
            tracing::info!(listen = %config.listen, metrics = %format!("http://{}/metrics", config.listen), "scheduler listening; metrics need a viewer token")
        }
        false => {
            tracing::info!(listen = %config.listen, "scheduler listening; metrics are off (SLIPWAY_METRICS=false)")
        }
    }
    let app = api::router(shared).layer(tower_http::trace::TraceLayer::new_for_http());
    // No Nagle: a live log stream writes one small event at a time, and each would otherwise
    // wait for the client's delayed ACK of the one before (up to 40 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "could not turn Nagle off on a connection");
        }
    });
    let serving = axum::serve(listener, app).with_graceful_shutdown({
        let cancel = cancel.clone();
        async move { cancel.cancelled().await }
    });
    // Graceful, but bounded: a client that holds its connection open cannot hold shutdown.
    let deadline = async {
        cancel.cancelled().await;
        tokio::time::sleep(SHUTDOWN_DEADLINE).await;
    };
    tokio::select! {
        served = serving => served.context("serving HTTP")?,
        _ = deadline => tracing::warn!(deadline = ?SHUTDOWN_DEADLINE, "open HTTP connections cut at the shutdown deadline"),
    }
    Ok(())
}

/// `slipway-scheduler rotate-key`: re-encrypts every sealed secret with a new key.
pub async fn rotate_key(config: &Config, to: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    let never = CancellationToken::new();
    let pool = db::connect(&config.database_url, &never).await.context("connecting to PostgreSQL (DATABASE_URL)")?;
    sqlx::migrate!("./migrations").run(&pool).await.context("applying migrations")?;
    let keyring = seal::Keyring::load(&config.key_source())?;
    apps::seal_legacy(&pool, &keyring).await?;
    let (count, id) = seal::rotate(&pool, &config.key_source(), to).await?;
    println!("re-encrypted {count} sealed values (apps and releases) with key {id}");
    if let Some(to) = to {
        println!("the new key is in {}; set it as SLIPWAY_SECRET_KEY before starting the schedulers", to.display());
    }
    Ok(())
}

/// How long shutdown waits for open connections, and then for background tasks.
pub const SHUTDOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
