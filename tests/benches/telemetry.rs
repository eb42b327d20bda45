//! Benchmark: what metrics and traces cost on the push-to-live path. Two installations run side
//! by side on the same services, one with everything on (Prometheus metrics on the scheduler and
//! the runner, traces exported over OTLP to a receiver), one with everything off
//! (`SLIPWAY_METRICS=false`, `SLIPWAY_METRICS_LISTEN=off`, no OTLP endpoint). The same trivial
//! app is pushed to each in turn; push-to-live is the scheduler's own figure (the deployment's
//! `finished_at - created_at`). Prints the medians and p90s and the ratio on/off (the claim: no
//! measurable difference, i.e. within the run-to-run noise).
//! Run with `scripts/bench` (it starts the services and builds the binaries in release mode).

use std::time::Duration;

use serde_json::json;
use slipway_tests::bench::quantile;
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, unique};

const SECRET: &str = "bench-secret-0123456789";
const RUNS: usize = 15;

fn files(marker: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "Dockerfile".into(),
            format!(
                "FROM slipway/busybox:1\nRUN echo {marker}\nCOPY www /www\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
            )
            .into_bytes(),
        ),
        ("www/healthz".into(), b"ok\n".to_vec()),
    ]
}

struct Side {
    name: &'static str,
    slipway: Slipway,
    url: String,
    repo: String,
    took: Vec<f64>,
}

async fn side(
    name: &'static str,
    git: &GitServer,
    scheduler_env: Vec<(String, String)>,
    runner_env: Vec<(String, String)>,
) -> Side {
    let mut slipway = Slipway::start(SlipwayOptions { scheduler_env, runner_env, ..Default::default() }).await;
    let repo = unique(name);
    let url = git.url(&repo);
    slipway.create_app(name, &url, SECRET, json!({})).await;
    Side { name, slipway, url, repo, took: Vec::new() }
}

/// Pushes a new commit and returns the scheduler's push-to-live in seconds.
async fn deploy(side: &mut Side, git: &GitServer) -> f64 {
    let files = files(&unique("commit"));
    let entries: Vec<Entry<'_>> = files.iter().map(|(p, c)| Entry::File(p.as_str(), c.as_slice())).collect();
    let sha = git.commit(&side.repo, "bench", &entries);
    let (status, answer) = side.slipway.push(&side.url, &sha, SECRET, &unique("delivery")).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let d = side.slipway.finished(&id, Duration::from_secs(120)).await;
    assert_eq!(d["state"], "completed", "{d}");
    let sql = format!("SELECT extract(epoch FROM finished_at - created_at)::float8 FROM deployments WHERE id = '{id}'");
    slipway_tests::harness::psql_value(&side.slipway.database_url, &sql).parse().expect("seconds")
}

#[tokio::main]
async fn main() {
    let receiver = slipway_tests::otlp::Receiver::start().await;
    let git = GitServer::start();
    let otel = vec![("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), receiver.endpoint.clone())];
    let mut on = side("telemetry-on", &git, otel.clone(), otel).await;
    let mut off = side(
        "telemetry-off",
        &git,
        vec![("SLIPWAY_METRICS".into(), "false".into())],
        vec![("SLIPWAY_METRICS_LISTEN".into(), "off".into())],
    )
    .await;
    // One warm-up each (image cache, first connections), then alternate.
    deploy(&mut on, &git).await;
    deploy(&mut off, &git).await;
    for _ in 0..RUNS {
        for side in [&mut on, &mut off] {
            let took = deploy(side, &git).await;
            side.took.push(took);
        }
    }
    let spans = receiver.spans().len();
    assert!(spans > RUNS * 5, "the 'on' side exported its traces ({spans} spans)");
    for side in [&on, &off] {
        println!(
            "push-to-live, telemetry {:<3}: p50 {:.0} ms, p90 {:.0} ms ({} deploys)",
            side.name.trim_start_matches("telemetry-"),
            quantile(&side.took, 0.5) * 1000.0,
            quantile(&side.took, 0.9) * 1000.0,
            side.took.len()
        );
    }
    let ratio = quantile(&on.took, 0.5) / quantile(&off.took, 0.5);
    println!("telemetry on / off (p50): {ratio:.2}x; {spans} spans received");
    slipway_tests::bench::report(&slipway_tests::bench::Figure {
        bench: "telemetry",
        what: "push-to-live p50 with metrics and traces on",
        unit: slipway_tests::bench::Unit::Milliseconds,
        ours: quantile(&on.took, 0.5) * 1000.0,
        baseline: Some(("the same with them off", quantile(&off.took, 0.5) * 1000.0)),
        target: None,
    });
}
