//! Benchmark: Slipway's clone, build and push steps against `git clone --depth 1`, `docker
//! build` and `docker push` of the same repository and commit, cold (no layer cached) and cached
//! (only a file copied after the build's `RUN` changed); and the orchestration overhead: a
//! push's push-to-live (the webhook's commit to the deployment's end, the scheduler's figure)
//! minus the sum of the CLI steps it replaces (clone, build, push, and a `docker run` on a network
//! of its own, polled until it answers).
//!
//! Each round makes a new commit (cold) and one that changes only `www/` (cached: the `RUN`
//! layer is reused, the `COPY` and what follows are built). For each, the CLI goes first and its
//! image is then removed (`docker rmi` takes the layers only it made with it), so Slipway's build
//! of the same commit finds exactly as much cached as the CLI's did. Each side pushes to a repository of its own; every layer differs between builds
//! (the `RUN` writes a file, so its time is in the layer).
//!
//! `SLIPWAY_BENCH_ROUNDS` (default 15). Run with `scripts/bench`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slipway_tests::bench::{Figure, Unit, quantile, report};
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, unique};

const SECRET: &str = "bench-secret-0123456789";

/// What the CLI took for each step, in milliseconds.
#[derive(Debug, Default, Clone, Copy)]
struct Steps {
    clone: f64,
    build: f64,
    push: f64,
    run: f64,
}

/// Clone, build, push and run `url` at its branch head by hand; the image is removed afterwards.
fn by_hand(url: &str, image: &str) -> Steps {
    let [clone, build, push] = slipway_tests::bench::build_by_hand(url, image);
    let started = Instant::now();
    let container = slipway_tests::bench::run_by_hand(image, Duration::from_secs(30));
    let run = started.elapsed().as_secs_f64() * 1000.0;
    slipway_tests::bench::remove_by_hand(&container, image);
    Steps { clone, build, push, run }
}

/// Milliseconds `step` took in deployment `d`.
fn step_ms(d: &Value, step: &str) -> f64 {
    let run =
        d["steps"].as_array().and_then(|steps| steps.iter().find(|s| s["step"] == step && s["status"] == "succeeded"));
    let at = |key: &str| {
        run.and_then(|r| r[key].as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .expect("step times")
    };
    (at("finished_at") - at("started_at")).num_microseconds().unwrap_or(0) as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("SLIPWAY_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(15).max(3);
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { edge: false, ..Default::default() }).await;
    let registry = slipway_tests::env("SLIPWAY_REGISTRY");
    let repo = unique("pipeline");
    let url = git.url(&repo);
    s.create_app("pipeline", &url, SECRET, json!({})).await;
    let commit = |nonce: &str, page: &str| {
        let dockerfile = format!(
            "FROM slipway/busybox:1\nRUN echo {nonce} > /built\nCOPY www /www\n\
             CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
        );
        let files = [
            ("Dockerfile", dockerfile.into_bytes()),
            ("www/healthz", b"ok\n".to_vec()),
            ("www/index.html", page.as_bytes().to_vec()),
        ];
        let entries: Vec<Entry<'_>> = files.iter().map(|(p, c)| Entry::File(p, c)).collect();
        git.commit(&repo, nonce, &entries)
    };
    let deploy = |sha: String| {
        let (s, url) = (&s, &url);
        async move {
            let (status, answer) = s.push(url, &sha, SECRET, &unique("delivery")).await;
            assert_eq!(status, 202, "{answer}");
            let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
            let d = s.finished(&id, Duration::from_secs(120)).await;
            assert_eq!(d["state"], "completed", "{d}");
            let sql = format!(
                "SELECT (extract(epoch FROM finished_at - created_at) * 1000)::float8 FROM deployments WHERE id = '{id}'"
            );
            let live: f64 = slipway_tests::harness::psql_value(&s.database_url, &sql).parse().expect("ms");
            (d, live)
        }
    };
    // One round first that is not counted: the first connections, the base image's layers.
    commit(&unique("warm"), "warm");
    by_hand(&url, &format!("{registry}/{repo}-by-hand:warm"));
    deploy(commit(&unique("warm"), "warm")).await;

    let (mut ours, mut theirs) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    let mut overhead = Vec::new();
    for round in 0..rounds {
        let nonce = unique("cold");
        // Cold: by hand first, whose image (and so every layer it made) is removed after.
        let sha = commit(&nonce, "cold");
        let hand = by_hand(&url, &format!("{registry}/{repo}-by-hand:{round}-cold"));
        let (d, live) = deploy(sha).await;
        ours[0].push([step_ms(&d, "clone"), step_ms(&d, "build"), step_ms(&d, "push")]);
        theirs[0].push([hand.clone, hand.build, hand.push]);
        overhead.push(live - (hand.clone + hand.build + hand.push + hand.run));
        // Cached: only www/ changed, so the `RUN` layer (Slipway's, from the cold build) is
        // reused by both and the layers after it are built by both: by hand first again.
        let sha = commit(&nonce, &format!("page {round}"));
        let hand = by_hand(&url, &format!("{registry}/{repo}-by-hand:{round}-cached"));
        let (d, _) = deploy(sha).await;
        ours[1].push([step_ms(&d, "clone"), step_ms(&d, "build"), step_ms(&d, "push")]);
        theirs[1].push([hand.clone, hand.build, hand.push]);
    }
    println!(
        "pipeline: {rounds} rounds of a cold and a cached build of the same commits, Slipway's steps against the CLI's"
    );
    for (cache, (ours, theirs)) in ["cold", "cached"].iter().zip(ours.iter().zip(&theirs)) {
        for (i, (step, command)) in
            [("clone", "git clone --depth 1"), ("build", "docker build"), ("push", "docker push")].iter().enumerate()
        {
            let mine: Vec<f64> = ours.iter().map(|r| r[i]).collect();
            let base: Vec<f64> = theirs.iter().map(|r| r[i]).collect();
            report(&Figure {
                bench: "pipeline",
                what: &format!("{step} ({cache}) p50"),
                unit: Unit::Milliseconds,
                ours: quantile(&mine, 0.5),
                baseline: Some((command, quantile(&base, 0.5))),
                target: Some(1.1),
            });
        }
    }
    for (what, q) in [("p50", 0.5), ("p99", 0.99)] {
        report(&Figure {
            bench: "pipeline",
            what: &format!("orchestration overhead {what} (push-to-live minus the CLI steps)"),
            unit: Unit::Milliseconds,
            ours: quantile(&overhead, q),
            baseline: None,
            target: Some(50.0),
        });
    }
}
