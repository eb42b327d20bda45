//! The Slipway runner: takes jobs from RabbitMQ and runs them — clone, build, push, deploy —
//! streaming every line back. It never opens a database connection.

pub mod checkout;
pub mod config;
pub mod context;
pub mod image;
pub mod job;
pub mod report;
pub mod suite;
pub mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let docker = Docker::connect_with_local_defaults()
        .context("connecting to the Docker engine")?
        .negotiate_version()
        .await
        .context("talking to the Docker engine (is dockerd running?)")?;
    let config = Arc::new(config);
    let runner_id: Arc<str> = config.runner_id().into();
    let topo = Topology::new(&config.queue_prefix);
    let target = DockerTarget::new(
        docker.clone(),
        DockerTargetConfig {
            publish_address: config.publish_address.clone(),
            health_timeout: Duration::from_secs(config.health_timeout_seconds),
            memory_bytes: None,
        },
    );
    let kube = match config.kubernetes {
        true => {
            let client = kube::Client::try_default().await.context("connecting to Kubernetes (SLIPWAY_KUBERNETES)")?;
            Some(KubeTarget::new(client, Duration::from_secs(config.rollout_timeout_seconds)))
        }
        false => None,
    };
    let (outbox, outbox_rx) = tokio::sync::mpsc::unbounded_channel();
    let shipper_cancel = CancellationToken::new();
    let shipper =
        tokio::spawn(report::run_shipper(config.amqp_url.clone(), topo.clone(), outbox_rx, shipper_cancel.clone()));

    let worker = worker::Worker {
        tools: job::Tools {
            docker,
            target,
            config: config.clone(),
            base_images: slipway_detect::dockerfile::BaseImages::with_overrides(&config.base_images)
                .context("SLIPWAY_BASE_IMAGES")?,
            kube,
        },
        topo: topo.clone(),
        runner_id: runner_id.clone(),
        outbox,
        running: Arc::new(Mutex::new(HashMap::new())),
        stop: shutdown.clone(),
        abort: CancellationToken::new(),
    };
    let control_cancel = CancellationToken::new();
    let slots = TaskTracker::new();
    tokio::spawn(worker::control(
        config.amqp_url.clone(),
        topo,
        runner_id.clone(),
        worker.running.clone(),
        control_cancel.clone(),
    ));
    for index in 0..config.concurrency {
        slots.spawn(worker.clone().slot(index));
    }
    slots.close();
    tracing::info!(runner_id = %runner_id, concurrency = config.concurrency, "runner ready");

    shutdown.cancelled().await;
    tracing::info!(drain_seconds = config.drain_seconds, "draining: no new jobs");
    if tokio::time::timeout(Duration::from_secs(config.drain_seconds), slots.wait()).await.is_err() {
        tracing::warn!("drain period over; handing back running jobs");
        worker.abort.cancel();
        slots.wait().await;
    }
    control_cancel.cancel();
    drop(worker);
    // Every reporter is gone now; the shipper flushes what is queued and ends.
    let _ = tokio::time::timeout(Duration::from_secs(30), shipper).await;
    shipper_cancel.cancel();
    Ok(())
}
