//! Benchmark: a build that prints 200,000 lines. Baseline: the same build run by the Docker CLI
//! (classic builder, output read to the end), timed in the same run. Ours: from the build step's
//! start to the moment the last of the 200,000 lines is stored in PostgreSQL, through the runner,
//! RabbitMQ and the scheduler. Prints both and their ratio (the target is at most 1.5x).
//! Run with `scripts/bench` (it starts the services and builds the binaries in release mode).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, unique};

const LINES: u32 = 200_000;
const SECRET: &str = "bench-secret-0123456789";

fn dockerfile(marker: &str) -> String {
    format!(
        "FROM slipway/busybox:1\nRUN echo {marker} && seq 1 {LINES}\nRUN mkdir /www && echo ok > /www/healthz\n\
         CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
    )
}

/// The Docker CLI building the same Dockerfile, its output read to the end.
fn baseline() -> Duration {
    let dir = tempfile::tempdir().expect("context");
    std::fs::write(dir.path().join("Dockerfile"), dockerfile(&unique("baseline"))).expect("Dockerfile");
    let tag = format!("slipway-bench/{}:1", unique("flood"));
    let started = Instant::now();
    let out = Command::new("docker")
        .args(["build", "--no-cache", "-t", &tag])
        .arg(dir.path())
        .env("DOCKER_BUILDKIT", "0")
        .stdout(Stdio::piped())
        .output()
        .expect("docker build");
    let took = started.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.trim() == LINES.to_string()).count();
    assert_eq!(printed, 1, "the baseline printed every line");
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
    took
}

/// Lines stored so far, and how long ago the build step started (by the database's clock).
fn stored(database_url: &str, id: &str) -> (u64, Option<f64>) {
    let sql = format!(
        "SELECT (SELECT count(*) FROM log_lines WHERE deployment_id = '{id}' AND step = 'build' AND line ~ '^[0-9]+$'),
                (SELECT extract(epoch FROM clock_timestamp() - started_at)::float8 FROM deployment_steps
                  WHERE deployment_id = '{id}' AND step = 'build' LIMIT 1)"
    );
    let out = Command::new("psql").args([database_url, "-AtXc", &sql]).output().expect("psql");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (count, since) = text.split_once('|').unwrap_or(("0", ""));
    (count.parse().unwrap_or(0), since.parse().ok())
}

async fn ours() -> Duration {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("flood");
    let url = git.url(&repo);
    // Secrets like a real app's, so every line goes through the masking (and its line hold).
    let env = json!({
        "API_TOKEN": unique("tok"), "DB_PASSWORD": unique("pw"), "DATABASE_URL": format!("postgres://u:{}@db/x", unique("p")),
        "SIGNING_KEY": unique("key"), "STRIPE_SECRET": unique("sk"),
    });
    s.create_app("flood", &url, SECRET, json!({"env": env})).await;
    let text = dockerfile(&unique("ours"));
    let sha = git.commit(&repo, "flood", &[Entry::File("Dockerfile", text.as_bytes())]);
    let (status, answer) = s.push(&url, &sha, SECRET, &unique("delivery")).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (count, since_build) = stored(&s.database_url, &id);
        if count >= u64::from(LINES) {
            let took = Duration::from_secs_f64(since_build.expect("the build step's start"));
            s.finished(&id, Duration::from_secs(120)).await;
            if std::env::var("SLIPWAY_BENCH_TRACE").is_ok() {
                for line in
                    s.dump().lines().filter(|l| l.contains("log batch stored") || l.contains("message confirmed"))
                {
                    println!("{line}");
                }
            }
            return took;
        }
        assert!(Instant::now() < deadline, "the lines were not stored within 10 minutes ({count})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("SLIPWAY_BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    let mut base = Vec::new();
    let mut mine = Vec::new();
    for _ in 0..runs {
        base.push(baseline());
        mine.push(ours().await);
    }
    base.sort();
    mine.sort();
    let (b, m) = (base[runs / 2], mine[runs / 2]);
    println!(
        "log flood ({LINES} lines in a build, median of {runs}): docker build prints them in {:.2} s; \
         slipway stores them in {:.2} s; ratio {:.2}x (target <= 1.5x)",
        b.as_secs_f64(),
        m.as_secs_f64(),
        m.as_secs_f64() / b.as_secs_f64()
    );
    slipway_tests::bench::report(&slipway_tests::bench::Figure {
        bench: "logs",
        what: "storing a 200,000-line build log",
        unit: slipway_tests::bench::Unit::Seconds,
        ours: m.as_secs_f64(),
        baseline: Some(("docker build printing it", b.as_secs_f64())),
        target: Some(1.5),
    });
}
