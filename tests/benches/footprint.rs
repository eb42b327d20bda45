//! Benchmark: what an idle scheduler and an idle runner cost (release build): the time from
//! starting the process to ready (the scheduler answers `/healthz`; the runner reported itself
//! idle), and the resident memory while idle (the largest of ten samples a second apart, after
//! it became ready). Target: at most 20 MB per idle runner.
//!
//! Run with `scripts/bench` (it starts the services and builds the binaries in release mode).

use std::time::{Duration, Instant};

use slipway_tests::bench::{Figure, Unit, ms, report};
use slipway_tests::{Slipway, SlipwayOptions};

/// Resident memory of `pid` in MB (VmRSS).
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

/// The largest resident size of each of `pids` over ten seconds of idling.
async fn idle_rss(pids: &[u32]) -> Vec<f64> {
    let mut most = vec![0.0f64; pids.len()];
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (m, pid) in most.iter_mut().zip(pids) {
            *m = m.max(rss_mb(*pid));
        }
    }
    most
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("SLIPWAY_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5).max(1);
    let mut s = Slipway::start(SlipwayOptions { runners: 0, edge: false, ..Default::default() }).await;
    let (mut scheduler_ready, mut runner_ready) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let started = Instant::now();
        s.add_scheduler().await;
        scheduler_ready.push(ms(started.elapsed()));

        let started = Instant::now();
        let id = s.add_runner();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, runners) = s.get("/api/v1/runners").await;
            let idle = runners.as_array().is_some_and(|all| all.iter().any(|r| r["id"] == id && r["state"] == "idle"));
            if idle {
                break;
            }
            assert!(Instant::now() < deadline, "runner {id} did not report itself idle within 30 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        runner_ready.push(ms(started.elapsed()));
    }
    let schedulers: Vec<u32> =
        std::iter::once(s.scheduler.pid()).chain(s.more_schedulers.iter().map(|p| p.pid())).collect();
    let runners: Vec<u32> = s.runners.iter().map(|p| p.pid()).collect();
    let rss = idle_rss(&[schedulers.clone(), runners.clone()].concat()).await;
    let (scheduler_rss, runner_rss) = rss.split_at(schedulers.len());
    let median = |values: &[f64]| slipway_tests::bench::quantile(values, 0.5);
    println!(
        "footprint: {rounds} scheduler replicas and {rounds} runners started one after another, then idle for 10 s"
    );
    report(&Figure {
        bench: "footprint",
        what: "runner idle memory",
        unit: Unit::Megabytes,
        ours: median(runner_rss),
        baseline: None,
        target: Some(20.0),
    });
    report(&Figure {
        bench: "footprint",
        what: "scheduler idle memory",
        unit: Unit::Megabytes,
        ours: median(scheduler_rss),
        baseline: None,
        target: None,
    });
    report(&Figure {
        bench: "footprint",
        what: "runner start to ready",
        unit: Unit::Milliseconds,
        ours: median(&runner_ready),
        baseline: None,
        target: None,
    });
    report(&Figure {
        bench: "footprint",
        what: "scheduler start to ready",
        unit: Unit::Milliseconds,
        ours: median(&scheduler_ready),
        baseline: None,
        target: None,
    });
}
