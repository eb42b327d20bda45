//! Benchmark: dispatch, from a push webhook's 2xx to a runner's claim, against the broker's floor
//! measured in the same run.
//!
//! Slipway's path: the webhook's transaction commits the deployment, its replica publishes the
//! job (publisher confirm), an idle runner consumes it and sends its claim (publisher confirm),
//! and the scheduler records the claim (`started_at`). The floor is the broker part of that path
//! with nothing of Slipway around it: on queues declared exactly like Slipway's (quorum), a
//! publish with confirm and its consumption, twice in a row, as many times as the path crosses
//! the broker.
//!
//! Each push is a new commit that changes only files outside the app's watch paths: the runner
//! claims it, clones, sees nothing it watches changed and skips it, so the next push finds it
//! idle again within a few hundred milliseconds. `SLIPWAY_BENCH_PUSHES` (default 200).
//!
//! Run with `scripts/bench` (it starts the services and builds the binaries in release mode).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeleteOptions};
use serde_json::json;
use slipway_tests::bench::{Figure, Unit, ms, quantile, report};
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, unique};

const SECRET: &str = "bench-secret-0123456789";

/// One sample of the floor: publish with confirm and consume on the jobs queue, then the same on
/// the runner queue, as Slipway's path does; the time until the second consumer had its message.
async fn floor(rounds: usize) -> Vec<f64> {
    let url = slipway_tests::env("SLIPWAY_AMQP_URL");
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await.expect("amqp");
    let topo = slipway_proto::Topology::new(&unique("t").replace('-', ""));
    let publisher = slipway_broker::confirm_channel(&conn, &topo).await.expect("publisher channel");
    let consumer = conn.create_channel().await.expect("consumer channel");
    let mut streams = Vec::new();
    for queue in [&topo.jobs_queue, &topo.runner_queue] {
        let stream = consumer
            .basic_consume(
                queue.as_str().into(),
                queue.as_str().into(),
                BasicConsumeOptions::default(),
                Default::default(),
            )
            .await
            .expect("consume");
        streams.push(stream);
    }
    let payload = vec![b'x'; 600];
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        for (queue, stream) in [&topo.jobs_queue, &topo.runner_queue].into_iter().zip(streams.iter_mut()) {
            let confirm = publisher
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &payload,
                    slipway_broker::persistent_json(),
                )
                .await
                .expect("publish");
            confirm.await.expect("confirm");
            let delivery = stream.next().await.expect("a delivery").expect("delivery");
            delivery.acker.ack(BasicAckOptions::default()).await.expect("ack");
        }
        samples.push(ms(started.elapsed()));
    }
    for queue in [&topo.jobs_queue, &topo.runner_queue] {
        let _ = publisher.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    }
    for exchange in [&topo.control_exchange, &topo.events_exchange] {
        let _ = publisher.exchange_delete(exchange.as_str().into(), Default::default()).await;
    }
    let _ = conn.close(200, "bye".into()).await;
    samples
}

#[tokio::main]
async fn main() {
    let pushes: usize = std::env::var("SLIPWAY_BENCH_PUSHES").ok().and_then(|p| p.parse().ok()).unwrap_or(200).max(10);
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { runners: 1, edge: false, ..Default::default() }).await;
    let repo = unique("dispatch");
    let url = git.url(&repo);
    let dockerfile =
        b"FROM slipway/busybox:1\nCOPY app /www\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";
    let files = |note: &str| -> Vec<(String, Vec<u8>)> {
        vec![
            ("Dockerfile".into(), dockerfile.to_vec()),
            ("app/healthz".into(), b"ok\n".to_vec()),
            ("notes/latest.txt".into(), note.as_bytes().to_vec()),
        ]
    };
    let commit = |note: &str| {
        let files = files(note);
        let entries: Vec<Entry<'_>> = files.iter().map(|(p, c)| Entry::File(p, c)).collect();
        git.commit(&repo, note, &entries)
    };
    s.create_app("dispatch", &url, SECRET, json!({"watch_paths": ["app/**", "Dockerfile"]})).await;
    // What is live first: later pushes are compared with it.
    let sha = commit("first");
    let (status, answer) = s.push(&url, &sha, SECRET, "dispatch-first").await;
    assert_eq!(status, 202, "{answer}");
    let first = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let d = s.finished(&first, Duration::from_secs(300)).await;
    assert_eq!(d["state"], "completed", "{d}");

    let mut answered_at = Vec::with_capacity(pushes);
    for i in 0..pushes {
        let sha = commit(&format!("note {i}"));
        let (status, answer) = s.push(&url, &sha, SECRET, &format!("dispatch-{i}")).await;
        let at = chrono::Utc::now();
        assert_eq!(status, 202, "{answer}");
        let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
        // The runner is idle again before the next push: every push is dispatched alone.
        let d = s.finished(&id, Duration::from_secs(60)).await;
        let skipped =
            d["state"] == "cancelled" && d["cancel_reason"].as_str().is_some_and(|r| r.starts_with("skipped"));
        assert!(skipped, "the push changed nothing watched but was not skipped: {d}");
        answered_at.push((id, at));
    }
    // Times from the database: the webhook's commit, the publish, the claim.
    let rows = slipway_tests::harness::psql_value(
        &s.database_url,
        "SELECT string_agg(id || ' ' || extract(epoch FROM created_at)::text || ' ' || extract(epoch FROM started_at)::text, ',')
         FROM deployments",
    );
    let times: std::collections::HashMap<&str, (f64, f64)> = rows
        .split(',')
        .filter_map(|row| {
            let mut parts = row.split(' ');
            let id = parts.next()?;
            Some((id, (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?)))
        })
        .collect();
    let mut from_answer = Vec::new();
    let mut from_commit = Vec::new();
    for (id, at) in &answered_at {
        let (created, started) = times[id.as_str()];
        let answered = at.timestamp_micros() as f64 / 1e6;
        from_answer.push((started - answered) * 1000.0);
        from_commit.push((started - created) * 1000.0);
    }
    let floor = floor(pushes).await;
    let (f50, f99) = (quantile(&floor, 0.5), quantile(&floor, 0.99));
    println!(
        "dispatch: {pushes} pushes, one at a time to an idle runner; floor: publish with confirm and consume, twice, on quorum queues"
    );
    for (what, q, base) in [("p50", 0.5, f50), ("p99", 0.99, f99)] {
        let ours = quantile(&from_answer, q);
        report(&Figure {
            bench: "dispatch",
            what: &format!("webhook 2xx to claim {what}"),
            unit: Unit::Milliseconds,
            ours,
            baseline: Some(("broker floor", base)),
            target: Some(1.5),
        });
    }
    println!(
        "  (from the webhook's transaction start to the claim: p50 {:.1} ms, p99 {:.1} ms)",
        quantile(&from_commit, 0.5),
        quantile(&from_commit, 0.99)
    );
    // The relay's part, as it logs it: reading the job from the outbox, the broker's confirm,
    // marking the row (cumulative from the relay's start on the job).
    let output = s.scheduler.output();
    let field = |line: &str, name: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}="))?.parse::<f64>().ok())
            .map(|us| us / 1000.0)
    };
    let mut parts: [Vec<f64>; 3] = Default::default();
    for line in output.lines().filter(|l| l.contains("job published")) {
        for (i, name) in ["read_us", "confirmed_us", "marked_us"].iter().enumerate() {
            if let Some(ms) = field(line, name) {
                parts[i].push(ms);
            }
        }
    }
    if parts.iter().all(|p| !p.is_empty()) {
        println!(
            "  (the relay, p50 from its start on a job: outbox read {:.2} ms, broker confirm at {:.2} ms, row marked at {:.2} ms)",
            quantile(&parts[0], 0.5),
            quantile(&parts[1], 0.5),
            quantile(&parts[2], 0.5)
        );
    }
}
