//! Prometheus metrics: every name Slipway exports, described once, and the exporter set up with
//! histogram buckets (durations up to an hour, sizes up to 4 GiB). Names start with `slipway_`,
//! counters end in `_total`, durations are `_seconds` histograms, and labels take few values
//! (never a deployment id or a commit). docs/operations.md explains each one.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

// The scheduler's.
pub const DEPLOYMENTS_CREATED: &str = "slipway_deployments_created_total";
pub const DEPLOYMENTS_FINISHED: &str = "slipway_deployments_finished_total";
pub const QUEUE_DEPTH: &str = "slipway_queue_depth";
pub const QUEUE_OLDEST_WAIT: &str = "slipway_queue_oldest_wait_seconds";
pub const QUEUE_WAIT: &str = "slipway_queue_wait_seconds";
pub const STEP_DURATION: &str = "slipway_step_duration_seconds";
pub const PUSH_TO_LIVE: &str = "slipway_push_to_live_seconds";
pub const RUNNERS: &str = "slipway_runners";
pub const RUNNER_SLOTS: &str = "slipway_runner_slots";
pub const RUNNERS_LOST: &str = "slipway_runners_lost_total";
pub const WEBHOOKS: &str = "slipway_webhooks_total";
pub const OUTBOX_UNPUBLISHED: &str = "slipway_outbox_unpublished";
pub const OUTBOX_PUBLISH: &str = "slipway_outbox_publish_seconds";
pub const INBOX_MESSAGES: &str = "slipway_inbox_messages_total";
pub const DEAD_LETTERS: &str = "slipway_dead_letters";
pub const LOG_LINES_STORED: &str = "slipway_log_lines_stored_total";
// Each runner's.
pub const JOBS_RUNNING: &str = "slipway_jobs_running";
pub const JOB_SLOTS: &str = "slipway_job_slots";
pub const JOBS_FINISHED: &str = "slipway_jobs_finished_total";
pub const DOCKER_ERRORS: &str = "slipway_docker_errors_total";
pub const REGISTRY_ERRORS: &str = "slipway_registry_errors_total";
pub const BUILD_CONTEXT: &str = "slipway_build_context_bytes";

/// Every metric name Slipway exports (the dashboard and alert rules may use only these).
pub const ALL: &[&str] = &[
    DEPLOYMENTS_CREATED,
    DEPLOYMENTS_FINISHED,
    QUEUE_DEPTH,
    QUEUE_OLDEST_WAIT,
    QUEUE_WAIT,
    STEP_DURATION,
    PUSH_TO_LIVE,
    RUNNERS,
    RUNNER_SLOTS,
    RUNNERS_LOST,
    WEBHOOKS,
    OUTBOX_UNPUBLISHED,
    OUTBOX_PUBLISH,
    INBOX_MESSAGES,
    DEAD_LETTERS,
    LOG_LINES_STORED,
    JOBS_RUNNING,
    JOB_SLOTS,
    JOBS_FINISHED,
    DOCKER_ERRORS,
    REGISTRY_ERRORS,
    BUILD_CONTEXT,
];

/// Bucket bounds of every `_seconds` histogram: 5 ms to an hour.
const SECONDS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];
/// Bucket bounds of every `_bytes` histogram: 1 KiB to 4 GiB, by fours.
const BYTES: &[f64] = &[
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
];

/// Which process describes its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    Scheduler,
    Runner,
}

/// Installs the global recorder and describes `process`'s metrics; the handle renders them.
/// Histograms are kept in bounded buckets; a task keeps them compact until `cancel`.
pub fn install(process: Process, cancel: CancellationToken) -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES)?
        .install_recorder()?;
    describe(process);
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => upkeep.run_upkeep(),
            }
        }
    });
    Ok(handle)
}

fn describe(process: Process) {
    match process {
        Process::Scheduler => {
            describe_counter!(DEPLOYMENTS_CREATED, "Deployments recorded, by source (github, manual, rollback).");
            describe_counter!(
                DEPLOYMENTS_FINISHED,
                "Deployments that reached a terminal state, by source, result (completed, failed, cancelled) and cause of failure."
            );
            describe_gauge!(QUEUE_DEPTH, "Queued deployments, by the one reason each is waiting.");
            describe_gauge!(
                QUEUE_OLDEST_WAIT,
                Unit::Seconds,
                "Age of the oldest queued deployment (0 when none waits)."
            );
            describe_histogram!(
                QUEUE_WAIT,
                Unit::Seconds,
                "Time from a deployment's creation to a runner's claim being granted."
            );
            describe_histogram!(STEP_DURATION, Unit::Seconds, "Duration of each finished step, by step and result.");
            describe_histogram!(
                PUSH_TO_LIVE,
                Unit::Seconds,
                "Time from the push (or request) to the deployment serving, by source."
            );
            describe_gauge!(RUNNERS, "Runners known to the scheduler, by state (idle, busy, draining, lost).");
            describe_gauge!(RUNNER_SLOTS, "Job slots of the runners online, by state (busy, idle).");
            describe_counter!(RUNNERS_LOST, "Runners declared lost after going silent.");
            describe_counter!(
                WEBHOOKS,
                "Webhook deliveries, by forge and outcome (accepted, duplicate, skipped, ignored, refused, failed)."
            );
            describe_gauge!(OUTBOX_UNPUBLISHED, "Queued deployments whose job the broker has not confirmed yet.");
            describe_histogram!(OUTBOX_PUBLISH, Unit::Seconds, "Time from publishing a job to the broker's confirm.");
            describe_counter!(
                INBOX_MESSAGES,
                "Runner messages taken from the runner queue, by outcome (applied, rejected, dead_lettered, retried)."
            );
            describe_gauge!(DEAD_LETTERS, "Runner messages recorded in dead_letters because they can never apply.");
            describe_counter!(LOG_LINES_STORED, "Build log lines stored.");
        }
        Process::Runner => {
            describe_gauge!(JOBS_RUNNING, "Jobs this runner is working on.");
            describe_gauge!(JOB_SLOTS, "Jobs this runner can work on at once (SLIPWAY_CONCURRENCY).");
            describe_counter!(
                JOBS_FINISHED,
                "Jobs this runner finished, by outcome (completed, failed, abandoned, skipped)."
            );
            describe_counter!(DOCKER_ERRORS, "Docker engine calls that failed, by operation.");
            describe_counter!(REGISTRY_ERRORS, "Registry calls that failed, by operation (push, digest, pull).");
            describe_histogram!(BUILD_CONTEXT, Unit::Bytes, "Size of each build context sent to the Docker engine.");
        }
    }
}

/// Serves `GET /metrics` on `listener` until `cancel`; with `token`, only to a request bearing it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    token: Option<String>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    let render = move |headers: HeaderMap| {
        let (handle, token) = (handle.clone(), token.clone());
        async move {
            if let Some(token) = &token
                && !bearer_matches(&headers, token)
            {
                return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], String::new())
                    .into_response();
            }
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], handle.render()).into_response()
        }
    };
    let app = axum::Router::new().route("/metrics", get(render));
    axum::serve(listener, app).with_graceful_shutdown(async move { cancel.cancelled().await }).await
}

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether `headers` carry `Authorization: Bearer <token>` (compared in constant time).
pub fn bearer_matches(headers: &axum::http::HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    given.len() == token.len() && bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// Parses a metrics listen address: `off` (or empty) for none.
pub fn parse_listen(value: &str) -> Result<Option<SocketAddr>, String> {
    match value.trim() {
        "" | "off" => Ok(None),
        addr => addr.parse().map(Some).map_err(|_| format!("{addr:?} is not an address and port (or off)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_is_an_address_or_off() {
        assert_eq!(parse_listen("off"), Ok(None));
        assert_eq!(parse_listen(""), Ok(None));
        assert_eq!(parse_listen("127.0.0.1:9464"), Ok(Some("127.0.0.1:9464".parse().expect("addr"))));
        assert!(parse_listen("localhost").is_err());
        assert!(parse_listen("127.0.0.1:99999").is_err());
    }

    #[test]
    fn bearer_must_match_exactly() {
        let mut headers = axum::http::HeaderMap::new();
        assert!(!bearer_matches(&headers, "sesame-sesame"));
        headers.insert(axum::http::header::AUTHORIZATION, "Bearer sesame-sesam".parse().expect("header"));
        assert!(!bearer_matches(&headers, "sesame-sesame"));
        headers.insert(axum::http::header::AUTHORIZATION, "Bearer sesame-sesame".parse().expect("header"));
        assert!(bearer_matches(&headers, "sesame-sesame"));
        headers.insert(axum::http::header::AUTHORIZATION, "Basic sesame-sesame".parse().expect("header"));
        assert!(!bearer_matches(&headers, "sesame-sesame"));
    }
}
