//! Benchmark: how Slipway scales out.
//!
//! 1. Throughput against runner slots: the same batch of jobs (builds whose work is mostly
//!    waiting, a `RUN sleep`, so that two cores are not the limit) with 1, 2, 4 and 8 runners of
//!    one slot each. Prints jobs per minute and the efficiency, throughput / (N x the one-slot
//!    throughput), measured in the same run (target: at least 0.95 at 8), and where the CPU went
//!    (the machine's busy cores, the Docker engine's and Slipway's CPU per job). Twice: builds
//!    that wait 60 s (8 jobs), where two cores are not the limit, and builds that wait 10 s
//!    (16 jobs, 1 and 8 slots), where the engine's work per job is. `SLIPWAY_BENCH_SCALE`
//!    replaces both with one `jobs:sleep:slots,slots,...` (e.g. `16:10:1,2,4,8`).
//! 2. One scheduler against the traffic of 50 runners, no builds: 50 runners' claims, heartbeats
//!    and log batches sent straight to the runner queue at rising rates, every line followed live
//!    over SSE. Prints the scheduler's CPU and the line latency (runner timestamp to the
//!    follower) at each rate, and checks that no line is lost: where one scheduler stops being
//!    enough is where the latency climbs.
//!
//! Run with `scripts/bench` (it starts the services and builds the binaries in release mode).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use serde_json::{Value, json};
use slipway_proto::{Body, Envelope, LogLine, Topology};
use slipway_tests::bench::quantile;
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, unique};
use uuid::Uuid;

const SECRET: &str = "bench-secret-0123456789";
const RUNNERS: usize = 50;

/// One throughput series: jobs per batch (the same for every number of slots), what each build
/// waits, and the slot counts (the first one is the baseline).
struct Series {
    jobs: usize,
    sleep_seconds: u32,
    slots: Vec<usize>,
}

fn series() -> Vec<Series> {
    let parse = |text: &str| -> Option<Series> {
        let mut parts = text.split(':');
        let jobs = parts.next()?.trim().parse().ok().filter(|j| (1..=200).contains(j))?;
        let sleep_seconds = parts.next()?.trim().parse().ok().filter(|s| (1..=600).contains(s))?;
        let slots: Vec<usize> = parts.next()?.split(',').map(|n| n.trim().parse().ok()).collect::<Option<_>>()?;
        (!slots.is_empty() && slots.iter().all(|n| (1..=32).contains(n))).then_some(Series {
            jobs,
            sleep_seconds,
            slots,
        })
    };
    match std::env::var("SLIPWAY_BENCH_SCALE") {
        Ok(text) => vec![parse(&text).expect("SLIPWAY_BENCH_SCALE is jobs:sleep:slots,slots (e.g. 16:10:1,2,4,8)")],
        Err(_) => vec![
            Series { jobs: 8, sleep_seconds: 60, slots: vec![1, 2, 4, 8] },
            Series { jobs: 16, sleep_seconds: 10, slots: vec![1, 8] },
        ],
    }
}

/// CPU seconds used so far: the whole machine's busy time, the Docker engine's (dockerd and
/// containerd), and the given processes'.
struct Cpu {
    machine: f64,
    engine: f64,
    slipway: f64,
}

fn cpu_now(slipway: &[u32]) -> Cpu {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let busy: f64 = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4) // idle, iowait
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum();
    let mut engine = 0.0;
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if matches!(comm.trim(), "dockerd" | "containerd") {
            engine += cpu_seconds(pid);
        }
    }
    Cpu { machine: busy / 100.0, engine, slipway: slipway.iter().map(|pid| cpu_seconds(*pid)).sum() }
}

/// Runs the batch with `slots` one-slot runners; jobs per second.
async fn throughput(git: &GitServer, series: &Series, slots: usize) -> f64 {
    let (jobs, sleep_seconds) = (series.jobs, series.sleep_seconds);
    let mut s = Slipway::start(SlipwayOptions { runners: slots, edge: false, ..Default::default() }).await;
    let mut pushes = Vec::new();
    for i in 0..jobs {
        let repo = unique(&format!("scale{i}"));
        let url = git.url(&repo);
        let dockerfile = format!(
            "FROM slipway/busybox:1\nRUN echo {} && sleep {sleep_seconds}\nCOPY www /www\n\
             CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
            unique("job")
        );
        let sha = git.commit(
            &repo,
            "job",
            &[Entry::File("Dockerfile", dockerfile.as_bytes()), Entry::File("www/healthz", b"ok\n")],
        );
        s.create_app(&format!("scale{i}"), &url, SECRET, json!({})).await;
        pushes.push((url, sha));
    }
    // The fleet is up before the batch: every runner reported itself idle.
    slipway_tests::eventually(Duration::from_secs(120), "every runner idle", || async {
        let (_, runners) = s.get("/api/v1/runners").await;
        let idle = runners.as_array()?.iter().filter(|r| r["state"] == "idle").count();
        (idle == slots).then_some(())
    })
    .await;
    let pids: Vec<u32> = std::iter::once(s.scheduler.pid()).chain(s.runners.iter().map(|r| r.pid())).collect();
    let (before, started) = (cpu_now(&pids), Instant::now());
    let mut ids = Vec::new();
    for (i, (url, sha)) in pushes.iter().enumerate() {
        let (status, answer) = s.push(url, sha, SECRET, &format!("scale-{i}")).await;
        assert_eq!(status, 202, "{answer}");
        ids.push(answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string());
    }
    for id in &ids {
        let d = s.finished(id, Duration::from_secs(900)).await;
        assert_eq!(d["state"], "completed", "{d}");
    }
    let (after, wall) = (cpu_now(&pids), started.elapsed().as_secs_f64());
    let span = slipway_tests::harness::psql_value(
        &s.database_url,
        "SELECT extract(epoch FROM max(finished_at) - min(created_at))::float8 FROM deployments",
    );
    // Where the time of a job goes at this concurrency: the median of each step, and of the wait
    // from the push to a runner's claim.
    let medians = slipway_tests::harness::psql_value(
        &s.database_url,
        "SELECT string_agg(step || ' ' || round(ms) || ' ms', ', ' ORDER BY first) FROM (
             SELECT step, min(started_at) AS first,
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at) * 1000) AS ms
             FROM deployment_steps WHERE status = 'succeeded' GROUP BY step
             UNION ALL
             SELECT 'wait', min(created_at), percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at) * 1000)
             FROM deployments
             UNION ALL
             SELECT 'wait.publish', min(created_at) + interval '1 microsecond',
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM published_at - created_at) * 1000)
             FROM deployments
             UNION ALL
             SELECT 'wait.claim', min(created_at) + interval '2 microseconds',
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - published_at) * 1000)
             FROM deployments) s",
    );
    println!("  {slots} slot(s), median per job: {medians}");
    // The job that ended last sets the batch's span: where its time went, and the gaps before,
    // between and after its steps (the claim, the fences, the runner's own work, the outcome).
    let slowest = slipway_tests::harness::psql_value(
        &s.database_url,
        "WITH last AS (SELECT id, created_at, finished_at FROM deployments ORDER BY finished_at DESC LIMIT 1),
              steps AS (SELECT st.step, st.started_at, st.finished_at,
                               coalesce(lag(st.finished_at) OVER (ORDER BY st.started_at), l.created_at) AS previous
                        FROM last l JOIN deployment_steps st ON st.deployment_id = l.id AND st.status = 'succeeded')
         SELECT (SELECT round(extract(epoch FROM finished_at - created_at) * 1000) FROM last) || ' ms in all: ' ||
                string_agg('(' || round(extract(epoch FROM started_at - previous) * 1000) || ') ' || step || ' '
                           || round(extract(epoch FROM finished_at - started_at) * 1000), ', ' ORDER BY started_at) ||
                ', (' || (SELECT round(extract(epoch FROM l.finished_at - max(s.finished_at)) * 1000) FROM last l, steps s
                          GROUP BY l.finished_at) || ') end'
         FROM steps",
    );
    println!("  {slots} slot(s), the last job, ms (gaps in brackets): {slowest}");
    println!(
        "  {slots} slot(s), CPU: machine busy {:.2} of {} cores on average; per job: Docker engine {:.2} s, Slipway (scheduler and runners) {:.2} s",
        (after.machine - before.machine) / wall,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        (after.engine - before.engine) / jobs as f64,
        (after.slipway - before.slipway) / jobs as f64,
    );
    jobs as f64 / span.parse::<f64>().expect("seconds")
}

/// The same work without Slipway, as one would do it by hand with the Docker CLI: `slots` jobs
/// at once, each a `git clone --depth 1`, a `docker build` of the same Dockerfile, a `docker
/// push`, a network and a `docker run` with a published port polled until it answers. Seconds
/// from the start until the last one answered.
async fn engine_alone(git: &GitServer, sleep_seconds: u32, slots: usize) -> f64 {
    let registry = slipway_tests::env("SLIPWAY_REGISTRY");
    let mut jobs = Vec::new();
    for i in 0..slots {
        let repo = unique(&format!("engine{i}"));
        let dockerfile = format!(
            "FROM slipway/busybox:1\nRUN echo {} && sleep {sleep_seconds}\nCOPY www /www\n\
             CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
            unique("job")
        );
        git.commit(
            &repo,
            "job",
            &[Entry::File("Dockerfile", dockerfile.as_bytes()), Entry::File("www/healthz", b"ok\n")],
        );
        jobs.push((git.url(&repo), format!("{registry}/{repo}:1")));
    }
    let started = Instant::now();
    let run = |(url, image): (String, String)| {
        tokio::task::spawn_blocking(move || {
            slipway_tests::bench::build_by_hand(&url, &image);
            let container = slipway_tests::bench::run_by_hand(&image, Duration::from_secs(60));
            let took = started.elapsed().as_secs_f64();
            slipway_tests::bench::remove_by_hand(&container, &image);
            took
        })
    };
    let handles: Vec<_> = jobs.into_iter().map(run).collect();
    let mut last: f64 = 0.0;
    for handle in handles {
        last = last.max(handle.await.expect("an engine job"));
    }
    last
}

/// The scheduler's CPU seconds so far (user + system, from /proc).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).expect("stat");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// Follows a deployment's log until `want` lines arrived; each line's latency in seconds.
async fn follow(http: reqwest::Client, base: String, id: String, want: usize) -> Vec<f64> {
    let resp = http.get(format!("{base}/api/v1/deployments/{id}/logs")).send().await.expect("follow");
    let mut stream = resp.bytes_stream();
    let (mut buf, mut latencies) = (String::new(), Vec::with_capacity(want));
    while latencies.len() < want {
        let Some(Ok(chunk)) = stream.next().await else { break };
        let now = chrono::Utc::now();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) else { continue };
            if !event.contains("event: log") && !event.contains("event:log") {
                continue;
            }
            let line: Value = serde_json::from_str(data.trim()).expect("log event");
            let ts: chrono::DateTime<chrono::Utc> = serde_json::from_value(line["ts"].clone()).expect("ts");
            latencies.push((now - ts).num_microseconds().unwrap_or(0) as f64 / 1e6);
        }
    }
    latencies
}

/// 50 runners' traffic at `lines_per_second` each for `seconds`: (CPU cores used by the
/// scheduler, latencies of every line, lines sent).
async fn traffic(lines_per_second: usize, seconds: u64) -> (f64, Vec<f64>, usize) {
    let mut s = Slipway::start(SlipwayOptions { runners: 0, edge: false, ..Default::default() }).await;
    let topo = Topology::new(&s.prefix);
    let mut held = Vec::new();
    for i in 0..RUNNERS {
        let app = s.create_app(&format!("sim{i}"), &format!("git://127.0.0.1:1/sim{i}.git"), SECRET, json!({})).await;
        let (status, answer) =
            s.post(&format!("/api/v1/apps/{app}/deployments"), &json!({"sha": format!("{:040x}", i + 1)})).await;
        assert_eq!(status, 202, "{answer}");
        let id: Uuid = answer["deployment_id"].as_str().and_then(|i| i.parse().ok()).expect("id");
        held.push((id, format!("sim-runner-{i}"), Uuid::new_v4()));
    }
    let conn = lapin::Connection::connect(s.amqp_url(), lapin::ConnectionProperties::default()).await.expect("amqp");
    let channel = conn.create_channel().await.expect("channel");
    channel.confirm_select(Default::default()).await.expect("confirms");
    slipway_broker::declare(&channel, &topo).await.expect("declare");
    let send = |env: Envelope| {
        let channel = channel.clone();
        let queue = topo.runner_queue.clone();
        async move {
            let payload = serde_json::to_vec(&env).expect("json");
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &payload,
                    slipway_broker::persistent_json(),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
        }
    };
    let envelope = |(id, runner, claim): &(Uuid, String, Uuid), body: Body| Envelope {
        deployment_id: *id,
        attempt: 1,
        runner_id: runner.clone(),
        claim: *claim,
        body,
    };
    for h in &held {
        send(envelope(h, Body::Claimed)).await;
    }
    slipway_tests::eventually(Duration::from_secs(60), "every simulated job to be running", || async {
        let n = slipway_tests::harness::psql_value(
            &s.database_url,
            "SELECT count(*) FROM deployments WHERE state = 'running'",
        );
        (n == RUNNERS.to_string()).then_some(())
    })
    .await;

    // Batches of a quarter second, a heartbeat every two seconds per runner.
    let ticks = seconds * 4;
    let per_batch = (lines_per_second / 4).max(1);
    let want = per_batch * ticks as usize;
    let followers: Vec<_> = held
        .iter()
        .map(|(id, _, _)| tokio::spawn(follow(s.http.clone(), s.base.clone(), id.to_string(), want)))
        .collect();
    // No wait for the followers to connect: they read from the log's start, so a line sent
    // before one connected still arrives (and counts with its longer latency).
    let pid = s.scheduler.pid();
    let (cpu_before, started) = (cpu_seconds(pid), Instant::now());
    let mut seq = 0u64;
    let mut next = tokio::time::Instant::now();
    for tick in 0..ticks {
        let mut sending = Vec::new();
        for h in &held {
            let now = chrono::Utc::now();
            let lines = (0..per_batch)
                .map(|k| LogLine {
                    seq: seq + k as u64 + 1,
                    step: None,
                    line: format!("line {} of {}", seq + k as u64 + 1, h.1),
                    ts: now,
                    more: false,
                })
                .collect();
            sending.push(send(envelope(h, Body::Logs { lines })));
            if tick % 8 == 0 {
                sending.push(send(envelope(h, Body::Heartbeat)));
            }
        }
        futures_util::future::join_all(sending).await;
        seq += per_batch as u64;
        next += Duration::from_millis(250);
        tokio::time::sleep_until(next).await;
    }
    let mut latencies = Vec::new();
    for follower in followers {
        let got =
            tokio::time::timeout(Duration::from_secs(120), follower).await.expect("every line arrives").expect("task");
        assert_eq!(got.len(), want, "no line lost");
        latencies.extend(got);
    }
    let cores = (cpu_seconds(pid) - cpu_before) / started.elapsed().as_secs_f64();
    let _ = conn.close(200, "done".into()).await;
    (cores, latencies, want * RUNNERS)
}

#[tokio::main]
async fn main() {
    let git = GitServer::start();
    for series in series() {
        let (jobs, sleep) = (series.jobs, series.sleep_seconds);
        println!("throughput: {jobs} jobs of `sleep {sleep}` builds per run");
        let (mut base, mut base_slots) = (0.0, 1);
        for (i, &slots) in series.slots.iter().enumerate() {
            let per_second = throughput(&git, &series, slots).await;
            if i == 0 {
                (base, base_slots) = (per_second / slots as f64, slots);
            }
            let efficiency = per_second / (slots as f64 * base);
            println!(
                "scaling: sleep {sleep} s, {slots} slot(s): {:.1} jobs/min, efficiency {efficiency:.3} (against {slots} x the {base_slots}-slot run per slot)",
                per_second * 60.0
            );
            if i > 0 && slots == *series.slots.last().unwrap_or(&1) {
                // The same at this size by hand, one job a slot: what the engine itself loses.
                let (one, all) = (engine_alone(&git, sleep, 1).await, engine_alone(&git, sleep, slots).await);
                println!(
                    "engine alone (git clone, docker build, push, run to healthy): 1 job {one:.1} s, {slots} at once {all:.1} s"
                );
                slipway_tests::bench::report(&slipway_tests::bench::Figure {
                    bench: "scaling",
                    what: &format!(
                        "efficiency at {slots} slots of the same by hand, without Slipway (sleep {sleep} s)"
                    ),
                    unit: slipway_tests::bench::Unit::Efficiency,
                    ours: one / all,
                    baseline: None,
                    target: None,
                });
            }
            if i > 0 {
                slipway_tests::bench::report(&slipway_tests::bench::Figure {
                    bench: "scaling",
                    what: &format!("efficiency at {slots} slots (sleep {sleep} s)"),
                    unit: slipway_tests::bench::Unit::Efficiency,
                    ours: efficiency,
                    baseline: None,
                    target: (slots == 8 && sleep >= 60).then_some(0.95),
                });
            }
        }
    }
    println!("one scheduler, {RUNNERS} simulated runners (claims, a heartbeat every 2 s, log batches every 250 ms):");
    for rate in [20, 200, 1000] {
        let (cores, latencies, lines) = traffic(rate, 20).await;
        println!(
            "scheduler load: {rate} lines/s per runner ({} lines/s in all): scheduler CPU {:.2} cores, line latency p50 {:.0} ms, p99 {:.0} ms, {lines} lines, 0 lost",
            rate * RUNNERS,
            cores,
            quantile(&latencies, 0.5) * 1000.0,
            quantile(&latencies, 0.99) * 1000.0
        );
    }
}
