//! Benchmark: a running app's output, live. The app prints numbered lines stamped with the time
//! they were written, 10,000 a second; two followers read them at once: Slipway's SSE stream
//! (`GET /api/v1/apps/{name}/logs?follow=true`: engine → runner → RabbitMQ → scheduler →
//! client, with the masking on the way) and the baseline, `docker logs -f` of the same container.
//! Each line's latency is the time it arrived minus the time it was written (one machine, one
//! clock). Prints p50 and p99 for both and their ratio, and the lines each lost or reordered
//! (0 for both). Run with `scripts/bench` (release build, services started).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{Value, json};
use slipway_tests::bench::{self, Figure, Unit};
use slipway_tests::git::Entry;
use slipway_tests::harness::app_request;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, eventually, unique};

const SECRET: &str = "bench-secret-0123456789";
const RATE: u32 = 10_000;
const SECONDS: u32 = 3;

/// A small HTTP server that answers `/healthz`, prints `tick` every 50 ms (so a follower knows
/// it is attached), and on `/go` prints `line <n> <ns>` lines at `RATE` a second for `SECONDS`
/// (paced against the clock, flushed each line).
const APP: &str = r#"
import http.server, sys, threading, time
lock = threading.Lock()
def tick():
    while True:
        with lock:
            sys.stdout.write("tick\n")
            sys.stdout.flush()
        time.sleep(0.05)
def emit():
    total, rate = int(sys.argv[1]), int(sys.argv[2])
    start = time.time_ns()
    for i in range(total):
        due = start + i * 1_000_000_000 // rate
        while time.time_ns() < due:
            pass
        with lock:
            sys.stdout.write(f"line {i} {time.time_ns()}\n")
            sys.stdout.flush()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/go":
            threading.Thread(target=emit, daemon=True).start()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *a):
        pass
threading.Thread(target=tick, daemon=True).start()
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
"#;

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos()
}

/// Latencies (ms) by line number, and the numbers in the order they came.
#[derive(Default)]
struct Seen {
    latency: BTreeMap<u64, f64>,
    order: Vec<u64>,
}

impl Seen {
    fn take(&mut self, line: &str) {
        let mut parts = line.split_whitespace();
        if parts.next() != Some("line") {
            return;
        }
        let (Some(n), Some(ns)) =
            (parts.next().and_then(|n| n.parse().ok()), parts.next().and_then(|t| t.parse::<u128>().ok()))
        else {
            return;
        };
        let ms = now_ns().saturating_sub(ns) as f64 / 1e6;
        self.latency.insert(n, ms);
        self.order.push(n);
    }

    fn done(&self, total: u64) -> bool {
        self.latency.contains_key(&(total - 1))
    }

    fn lost(&self, total: u64) -> u64 {
        total - self.latency.len() as u64
    }

    fn reordered(&self) -> usize {
        self.order.windows(2).filter(|w| w[1] <= w[0]).count()
    }

    fn quantile(&self, q: f64) -> f64 {
        let mut all: Vec<f64> = self.latency.values().copied().collect();
        all.sort_by(f64::total_cmp);
        bench::quantile(&all, q)
    }
}

#[tokio::main]
async fn main() {
    let total = u64::from(RATE * SECONDS);
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("applogs");
    let url = git.url(&repo);
    let app = s.create_app("applogs", &url, SECRET, json!({"env": {"API_TOKEN": unique("tok")}})).await;
    let dockerfile = format!(
        "FROM slipway/runtimes:bookworm\nCOPY app.py /app.py\nCMD [\"python3\", \"-u\", \"/app.py\", \"{total}\", \"{RATE}\"]\n"
    );
    let sha = git.commit(
        &repo,
        "app",
        &[Entry::File("Dockerfile", dockerfile.as_bytes()), Entry::File("app.py", APP.as_bytes())],
    );
    let (status, answer) = s.push(&url, &sha, SECRET, &unique("delivery")).await;
    assert_eq!(status, 202, "{answer}");
    let d = s.finished(answer["deployments"][0]["deployment_id"].as_str().expect("id"), Duration::from_secs(300)).await;
    assert_eq!(d["state"], "completed", "{d}");
    let stable = d["url"].as_str().expect("url").to_string();
    let container = slipway_tests::docker(&["ps", "-q", "--filter", &format!("label=dev.slipway.app={app}")])
        .expect("docker ps")
        .trim()
        .to_string();

    // The baseline follower: `docker logs -f` of the same container, from now on.
    let mut cli = Command::new("docker")
        .args(["logs", "-f", "--tail", "0", &container])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker logs -f");
    let stdout = cli.stdout.take().expect("stdout");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let baseline = std::thread::spawn(move || {
        let mut seen = Seen::default();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == "tick" {
                let _ = ready_tx.send(());
            }
            seen.take(&line);
            if seen.done(total) {
                break;
            }
        }
        seen
    });
    ready_rx.recv_timeout(Duration::from_secs(30)).expect("docker logs -f to show the app's ticks");

    // Slipway's follower: the SSE stream, from now on.
    let resp = s
        .http
        .get(format!("{}/api/v1/apps/{app}/logs?follow=true&tail=0", s.base))
        .send()
        .await
        .expect("follow the app's output");
    assert_eq!(resp.status(), 200);
    let (attached_tx, attached) = tokio::sync::oneshot::channel::<()>();
    let ours = tokio::spawn(async move {
        let mut attached_tx = Some(attached_tx);
        let mut seen = Seen::default();
        let mut body = resp.bytes_stream();
        let mut buffer = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, body.next()).await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            let Some(end) = buffer.rfind('\n') else { continue };
            let complete: String = buffer.drain(..=end).collect();
            for line in complete.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    let event: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                    if let Some(text) = event["line"].as_str() {
                        if text == "tick" {
                            attached_tx.take().map(|tx| tx.send(()));
                        }
                        seen.take(text);
                    }
                }
            }
            if seen.done(total) {
                break;
            }
        }
        seen
    });
    tokio::time::timeout(Duration::from_secs(30), attached).await.expect("the SSE stream to show the app's ticks").ok();

    let http = reqwest::Client::new();
    eventually(Duration::from_secs(10), "the app to start printing", || async {
        app_request(&http, &stable, "/go").send().await.ok()?.status().is_success().then_some(())
    })
    .await;
    let ours = tokio::time::timeout(Duration::from_secs(150), ours).await.expect("Slipway's follower").expect("task");
    let _ = cli.kill();
    let _ = cli.wait();
    let baseline = baseline.join().expect("baseline follower");

    for (what, q) in [("p50", 0.5), ("p99", 0.99)] {
        bench::report(&Figure {
            bench: "logs",
            what: &format!("line latency {what} at {RATE} lines/s"),
            unit: Unit::Milliseconds,
            ours: ours.quantile(q),
            baseline: Some(("docker logs -f", baseline.quantile(q))),
            target: None,
        });
    }
    println!(
        "bench logs lost and reordered: Slipway {} lost, {} reordered; docker logs -f {} lost, {} reordered (of {total})",
        ours.lost(total),
        ours.reordered(),
        baseline.lost(total),
        baseline.reordered()
    );
    assert_eq!((ours.lost(total), ours.reordered()), (0, 0), "every line arrives, in order");
}
