//! The Slipway runner: takes jobs from RabbitMQ and runs them — clone, build, push, deploy —
//! streaming every line back. It never opens a database connection.

pub mod applogs;
pub mod cache;
/// Git over the network lives in its own crate, shared with the scheduler's branch-head reconcile.
pub use slipway_git as checkout;
pub mod claim;
pub mod config;
pub mod context;
pub mod failure;
pub mod image;
pub mod job;
pub mod leftovers;
pub mod mask;
pub mod presence;
pub mod report;
pub mod snapshot;
pub mod suite;
pub mod watch;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bollard::Docker;
use slipway_deploy::{DockerTarget, DockerTargetConfig, KubeTarget};
use slipway_proto::Topology;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// Runs the runner until `shutdown` fires, then drains: stops taking jobs, lets running ones
/// finish for up to `SLIPWAY_DRAIN_SECONDS`, hands back the rest, and flushes every report.
pub async fn run(
    config: Config,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let docker = Docker::connect_with_local_defaults()
        .context("connecting to the Docker engine")?
        .negotiate_version()
        .await
        .context("talking to the Docker engine (is dockerd running?)")?;
    let git_timeout = config.git_timeout();
    checkout::set_network_timeouts(git_timeout.min(Duration::from_secs(30)), git_timeout)
        .context("setting git network timeouts")?;
    let removed = leftovers::remove_all(&docker, &config).await.context("removing what an earlier run left")?;
    if removed != leftovers::Removed::default() {
        tracing::warn!(
            workspaces = removed.workspaces,
            containers = removed.containers,
            images = removed.images,
            "removed what an earlier run of this runner left"
        );
    }
    let config = Arc::new(config);
    let runner_id: Arc<str> = config.runner_id().into();
    let metrics_cancel = CancellationToken::new();
    if let (Some(handle), Some((addr, token))) = (metrics, config.metrics().map_err(anyhow::Error::msg)?) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding SLIPWAY_METRICS_LISTEN {addr} (set another address, or off)"))?;
        let addr = listener.local_addr().unwrap_or(addr);
        tracing::info!(metrics = %format!("http://{addr}/metrics"), token = token.is_some(), "runner metrics listening");
        metrics::gauge!(slipway_telemetry::metrics::JOB_SLOTS).set(f64::from(config.concurrency));
        metrics::gauge!(slipway_telemetry::metrics::JOBS_RUNNING).set(0.0);
        tokio::spawn(slipway_telemetry::metrics::serve(listener, handle, token, metrics_cancel.clone()));
    }
    let topo = Topology::new(&config.queue_prefix);
    let target = DockerTarget::new(
        docker.clone(),
        DockerTargetConfig {
            publish_address: config.publish_address.clone(),
            health_timeout: Duration::from_secs(config.health_timeout_seconds),
            installation: config.queue_prefix.clone(),
            limits: config.app_limits(),
            edge: config.edge().map_err(anyhow::Error::msg)?,
            drain: Duration::from_secs(config.edge_drain_seconds),
        },
    );
    let edge_cancel = CancellationToken::new();
    if let Some(edge) = target.edge() {
        match edge.ensure_server().await {
            Ok(()) => tracing::info!(admin = %config.edge_admin, listen = %config.edge_listen, "edge proxy ready"),
            Err(err) => tracing::warn!(error = %err, "the edge proxy is not reachable yet; deploys fail until it is"),
        }
        tokio::spawn(reconcile_edge(target.clone(), edge_cancel.clone()));
    }
    let kube = match config.kubernetes {
        true => {
            let client = kube::Client::try_default().await.context("connecting to Kubernetes (SLIPWAY_KUBERNETES)")?;
            Some(KubeTarget::new(client, Duration::from_secs(config.rollout_timeout_seconds)))
        }
        false => None,
    };
    let (outbox, outbox_queue) = report::Outbox::channel();
    let shipper_cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let shipper =
        tasks.spawn(report::run_shipper(config.amqp_url.clone(), topo.clone(), outbox_queue, shipper_cancel.clone()));

    let presence = Arc::new(presence::Presence::new(runner_id.to_string(), config.concurrency.into(), config.labels()));
    let presence_cancel = CancellationToken::new();
    let presence_task =
        tasks.spawn(presence::run(presence.clone(), outbox.clone(), config.heartbeat(), presence_cancel.clone()));

    let (control_ready_tx, control_ready) = tokio::sync::watch::channel(false);
    let worker = worker::Worker {
        tools: job::Tools {
            docker: docker.clone(),
            target,
            config: config.clone(),
            base_images: slipway_detect::dockerfile::BaseImages::with_overrides(&config.base_images)
                .context("SLIPWAY_BASE_IMAGES")?,
            kube,
            registry_auth: config.registry_auth().map_err(anyhow::Error::msg)?,
            guard: Arc::new(
                slipway_proto::outbound::Guard::parse(&config.allow_private_git).map_err(anyhow::Error::msg)?,
            ),
        },
        topo: topo.clone(),
        runner_id: runner_id.clone(),
        outbox: outbox.clone(),
        presence: presence.clone(),
        claims: Arc::new(claim::Claims::default()),
        stop: shutdown.clone(),
        abort: CancellationToken::new(),
        control_ready,
    };
    let control_cancel = CancellationToken::new();
    let slots = TaskTracker::new();
    let app_logs = Arc::new(applogs::AppLogs::new(
        docker.clone(),
        config.queue_prefix.clone(),
        runner_id.clone(),
        config.amqp_url.clone(),
        config.own_secrets(),
    ));
    tasks.spawn(worker::control(
        config.amqp_url.clone(),
        topo,
        runner_id.clone(),
        worker.claims.clone(),
        app_logs,
        control_ready_tx,
        control_cancel.clone(),
    ));
    for index in 0..config.concurrency {
        slots.spawn(worker.clone().slot(index));
    }
    slots.close();
    tracing::info!(runner_id = %runner_id, concurrency = config.concurrency, "runner ready");

    shutdown.cancelled().await;
    tracing::info!(drain_seconds = config.drain_seconds, "draining: no new jobs");
    presence.drain();
    if tokio::time::timeout(Duration::from_secs(config.drain_seconds), slots.wait()).await.is_err() {
        tracing::warn!("drain period over; handing back running jobs");
        worker.abort.cancel();
        slots.wait().await;
    }
    control_cancel.cancel();
    drop(worker);
    // The last report says it left, so it does not show as lost; then the shipper may end.
    presence_cancel.cancel();
    // The heartbeat task may be sending a report it made a moment ago (woken by the last job's
    // end): it ends first, so no `draining` report is stamped after the `stopped` one and
    // overwrites it (the runner then showed as lost).
    if tokio::time::timeout(Duration::from_secs(5), presence_task).await.is_err() {
        tracing::warn!("the heartbeat task did not end within 5 s");
    }
    let left = tokio::time::timeout(Duration::from_secs(5), outbox.report(presence.report(true), true)).await;
    if !matches!(left, Ok(true)) {
        tracing::warn!("could not tell the scheduler this runner left; it will show as lost");
    }
    drop(outbox);
    metrics_cancel.cancel();
    // Every reporter is gone now; the shipper flushes what is queued and ends.
    if tokio::time::timeout(Duration::from_secs(30), shipper).await.is_err() {
        tracing::warn!("the broker did not take every report within 30 s; the rest is dropped");
    }
    shipper_cancel.cancel();
    edge_cancel.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// Puts the edge's routes back from this installation's running containers whenever Caddy has
/// lost them (it restarted with an empty config), checking every two seconds.
async fn reconcile_edge(target: DockerTarget, cancel: CancellationToken) {
    loop {
        match target.reconcile_edge().await {
            Ok(0) => {}
            Ok(routes) => {
                tracing::warn!(routes, "the edge proxy had lost its routes; rebuilt them from the running apps")
            }
            Err(err) => tracing::debug!(error = %err, "edge check failed; will retry"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
