//! What operators see, on the real services: why each queued deployment waits, the runner fleet
//! (idle, busy, draining, stopped, lost), and the Prometheus metrics of the scheduler and a
//! runner — linted by promtool and scraped by a real Prometheus.

use std::time::Duration;

use serde_json::{Value, json};
use slipway_tests::git::Entry;
use slipway_tests::prometheus::{Prometheus, ScrapeJob, promtool_check_metrics};
use slipway_tests::{GitServer, Slipway, SlipwayOptions, docker, eventually, unique};

const SECRET: &str = "operators-secret-0123456789";
const FINISH: Duration = Duration::from_secs(120);
const HTTPD: &str = r#"["httpd", "-f", "-p", "8080", "-h", "/www"]"#;

fn files(run: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        ("Dockerfile".into(), format!("FROM slipway/busybox:1\nRUN {run}\nCOPY www /www\nCMD {HTTPD}\n").into_bytes()),
        ("www/index.html".into(), b"<p>hello</p>\n".to_vec()),
        ("www/healthz".into(), b"ok\n".to_vec()),
    ]
}

fn commit(git: &GitServer, repo: &str, run: &str) -> String {
    let files = files(run);
    let entries: Vec<Entry<'_>> = files.iter().map(|(p, c)| Entry::File(p.as_str(), c.as_slice())).collect();
    git.commit(repo, "commit", &entries)
}

async fn push(s: &Slipway, url: &str, sha: &str) -> String {
    let (status, answer) = s.push(url, sha, SECRET, &unique("delivery")).await;
    assert_eq!(status, 202, "{answer}");
    answer["deployments"][0]["deployment_id"].as_str().expect("deployment id").to_string()
}

/// The queue entry of `id` once its reason is of `kind`.
async fn waits_because(s: &Slipway, id: &str, kind: &str) -> Value {
    eventually(Duration::from_secs(60), &format!("{id} to wait: {kind}"), || async move {
        let (status, queue) = s.get("/api/v1/queue").await;
        assert_eq!(status, 200, "{queue}");
        let entries = queue["entries"].as_array()?.clone();
        entries.into_iter().find(|e| e["deployment_id"] == id && e["reason"]["kind"] == kind)
    })
    .await
}

/// The runner `id` once it is in `state`. A runner leaving waits for its cancelled build to stop,
/// which a 2-core machine running the whole suite can stretch well past a minute.
async fn runner_is(s: &Slipway, id: &str, state: &str) -> Value {
    let waited = tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            let (status, runners) = s.get("/api/v1/runners").await;
            assert_eq!(status, 200, "{runners}");
            let found =
                runners.as_array().and_then(|r| r.iter().find(|r| r["id"] == id && r["state"] == state).cloned());
            if let Some(found) = found {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    match waited {
        Ok(found) => found,
        Err(_) => {
            let (_, runners) = s.get("/api/v1/runners").await;
            panic!("{id} was not {state} within 180 s: {runners}\n{}", s.dump())
        }
    }
}

fn sigterm(pid: u32) {
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
}

/// The value of the sample `name{labels}` exactly as written in the exposition, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scheduler_metrics(s: &Slipway) -> String {
    let answer = s.http.get(format!("{}/metrics", s.base)).send().await.expect("GET /metrics");
    assert_eq!(answer.status(), 200);
    answer.text().await.expect("metrics text")
}

#[tokio::test]
async fn the_queue_says_why_each_deployment_waits_and_the_fleet_shows_every_runner_state() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions {
        runners: 0,
        heartbeat_seconds: 1,
        scheduler_env: vec![("SLIPWAY_RUNNER_LOST_SECONDS".into(), "3".into())],
        ..Default::default()
    })
    .await;
    let (repo_a, repo_b) = (unique("queue-a"), unique("queue-b"));
    let (url_a, url_b) = (git.url(&repo_a), git.url(&repo_b));
    s.create_app("queue-a", &url_a, SECRET, json!({})).await;
    let app_b = s.create_app("queue-b", &url_b, SECRET, json!({})).await;

    // No runner at all.
    let marker = unique("slow-build");
    let slow = push(&s, &url_a, &commit(&git, &repo_a, &format!("echo {marker} && sleep 120"))).await;
    let entry = waits_because(&s, &slow, "no_runner").await;
    assert_eq!(entry["position"], 1, "{entry}");
    let out = s.cli_command().args(["queue"]).output().expect("slipway queue");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("queue: 1 waiting, oldest waiting"), "{text}");
    assert!(text.contains(&slow) && text.contains("no runner online"), "{text}");
    assert_eq!(sample(&scheduler_metrics(&s).await, r#"slipway_queue_depth{reason="no_runner"}"#), Some(1.0));

    // A runner takes it; the next commit of the same app is held behind it, another app waits
    // for a free slot.
    s.add_runner();
    eventually(Duration::from_secs(90), "the slow build to run", || async {
        let ps = docker(&["ps", "--no-trunc", "--format", "{{.Command}}"]).ok()?;
        ps.contains(&marker).then_some(())
    })
    .await;
    let busy = runner_is(&s, "runner-1", "busy").await;
    assert_eq!(busy["jobs"], json!([slow]), "{busy}");
    assert_eq!((busy["slots"].as_u64(), busy["version"].as_str()), (Some(1), Some(env!("CARGO_PKG_VERSION"))));
    let held = push(&s, &url_a, &commit(&git, &repo_a, "true")).await;
    let entry = waits_because(&s, &held, "held_behind").await;
    assert_eq!((&entry["reason"]["deployment_id"], &entry["reason"]["state"]), (&json!(slow), &json!("running")));
    let other = push(&s, &url_b, &commit(&git, &repo_b, "true")).await;
    let entry = waits_because(&s, &other, "waiting_for_runner").await;
    assert_eq!((entry["reason"]["slots_busy"].as_u64(), entry["reason"]["slots"].as_u64()), (Some(1), Some(1)));
    assert_eq!(entry["app"], app_b.as_str());
    let (_, queue) = s.get("/api/v1/queue").await;
    assert_eq!(queue["summary"]["depth"], 2, "{queue}");
    let positions: Vec<&Value> = queue["entries"].as_array().expect("entries").iter().map(|e| &e["position"]).collect();
    assert_eq!(positions, [&json!(1), &json!(2)], "oldest first: {queue}");
    let text =
        String::from_utf8_lossy(&s.cli_command().args(["queue"]).output().expect("slipway queue").stdout).into_owned();
    assert!(text.contains("held behind running deployment") && text.contains("1 of 1 slots busy"), "{text}");
    let out = s.cli_command().args(["runners", "--json"]).output().expect("slipway runners");
    let listed: Value = serde_json::from_slice(&out.stdout).expect("runners json");
    assert_eq!(listed[0]["state"], "busy", "{listed}");

    // SIGTERM while busy: draining until its job ends, then it says it left.
    sigterm(s.runners[0].pid());
    runner_is(&s, "runner-1", "draining").await;
    let (status, answer) = s.cancel(&slow, "operators test").await;
    assert_eq!(status, 202, "{answer}");
    runner_is(&s, "runner-1", "stopped").await;

    // A runner that goes silent without a word is lost.
    let id = s.add_runner();
    runner_is(&s, &id, "busy").await;
    s.runners[1].kill9();
    runner_is(&s, &id, "lost").await;
    let text = eventually(Duration::from_secs(30), "the lost runner to be counted", || async {
        let text = scheduler_metrics(&s).await;
        (sample(&text, "slipway_runners_lost_total") == Some(1.0)).then_some(text)
    })
    .await;
    assert_eq!(sample(&text, r#"slipway_runners{state="lost"}"#), Some(1.0), "{text}");
    let out = s.cli_command().args(["runners"]).output().expect("slipway runners");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with(&id) && l.contains(" lost ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("runner-1 ") && l.contains(" stopped ")), "{text}");
}

#[tokio::test]
async fn metrics_pass_promtool_carry_no_ids_and_prometheus_scrapes_the_queue_depth() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("metrics");
    let url = git.url(&repo);
    s.create_app("metrics", &url, SECRET, json!({})).await;
    let sha = commit(&git, &repo, "true");
    let id = push(&s, &url, &sha).await;
    assert_eq!(s.finished(&id, FINISH).await["state"], "completed");
    let (status, _) = s.push(&url, &sha, "not-the-secret-0123", "forged").await;
    assert_eq!(status, 401);

    let anonymous = s.anonymous.get(format!("{}/metrics", s.base)).send().await.expect("GET /metrics");
    assert_eq!(anonymous.status(), 401, "metrics need a token");
    let text = eventually(Duration::from_secs(30), "the deployment's metrics", || async {
        let text = scheduler_metrics(&s).await;
        text.contains("slipway_push_to_live_seconds_count").then_some(text)
    })
    .await;
    for (series, want) in [
        (r#"slipway_deployments_created_total{source="github"}"#, 1.0),
        (r#"slipway_deployments_finished_total{source="github",result="completed",cause="none"}"#, 1.0),
        (r#"slipway_webhooks_total{forge="github",outcome="accepted"}"#, 1.0),
        (r#"slipway_webhooks_total{forge="github",outcome="refused"}"#, 1.0),
        (r#"slipway_push_to_live_seconds_count{source="github"}"#, 1.0),
        ("slipway_queue_wait_seconds_count", 1.0),
        (r#"slipway_step_duration_seconds_count{step="build",result="succeeded"}"#, 1.0),
        (r#"slipway_queue_depth{reason="no_runner"}"#, 0.0),
        (r#"slipway_runners{state="idle"}"#, 1.0),
        ("slipway_outbox_unpublished", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
    assert!(sample(&text, "slipway_log_lines_stored_total").is_some_and(|n| n > 0.0), "{text}");
    assert!(sample(&text, r#"slipway_inbox_messages_total{outcome="applied"}"#).is_some_and(|n| n > 0.0), "{text}");
    assert!(sample(&text, "slipway_outbox_publish_seconds_count").is_some_and(|n| n >= 1.0), "{text}");
    assert!(!text.contains(&id) && !text.contains(&sha), "no deployment id or commit in a label:\n{text}");
    promtool_check_metrics(&text).unwrap_or_else(|said| panic!("promtool on the scheduler's metrics: {said}\n{text}"));

    let runner_port = s.runners[0].metrics_port.expect("runner metrics port");
    let runner_text = reqwest::get(format!("http://127.0.0.1:{runner_port}/metrics"))
        .await
        .expect("runner /metrics")
        .text()
        .await
        .expect("text");
    for (series, want) in [
        (r#"slipway_jobs_finished_total{outcome="completed"}"#, 1.0),
        ("slipway_build_context_bytes_count", 1.0),
        ("slipway_job_slots", 1.0),
        ("slipway_jobs_running", 0.0),
    ] {
        assert_eq!(sample(&runner_text, series), Some(want), "{series} in\n{runner_text}");
    }
    promtool_check_metrics(&runner_text)
        .unwrap_or_else(|said| panic!("promtool on the runner's metrics: {said}\n{runner_text}"));

    // A real Prometheus scrapes both, the scheduler with a viewer token.
    let viewer = s.create_token("prometheus", "viewer", None).await;
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &viewer).expect("token file");
    let scheduler_target = s.base.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&[
        ScrapeJob { name: "scheduler", targets: vec![scheduler_target], credentials_file: Some(&token_file) },
        ScrapeJob { name: "runner", targets: vec![format!("127.0.0.1:{runner_port}")], credentials_file: None },
    ])
    .await;
    eventually(Duration::from_secs(30), "both targets to be up", || async {
        let up = prometheus.query("up").await;
        (up.len() == 2 && up.iter().all(|(_, v)| *v == 1.0)).then_some(())
    })
    .await;
    // With the runner gone, a push waits for one: Prometheus sees the queue depth.
    assert!(s.runners[0].terminate(), "the runner exits cleanly");
    let later = push(&s, &url, &commit(&git, &repo, "echo later")).await;
    waits_because(&s, &later, "no_runner").await;
    eventually(Duration::from_secs(30), "Prometheus to see the queue depth", || async {
        let depth = prometheus.query(r#"slipway_queue_depth{reason="no_runner"}"#).await;
        (depth.len() == 1 && depth[0].1 == 1.0).then_some(())
    })
    .await;
    let oldest = prometheus.query("slipway_queue_oldest_wait_seconds").await;
    assert!(oldest.first().is_some_and(|(_, v)| *v > 0.0), "{oldest:?}\n{}", prometheus.output());
}

#[tokio::test]
async fn logs_are_json_when_asked_and_carry_no_colour_codes_in_a_file() {
    let s = Slipway::start(SlipwayOptions {
        runners: 1,
        scheduler_env: vec![("SLIPWAY_LOG_FORMAT".into(), "json".into())],
        ..Default::default()
    })
    .await;
    runner_is(&s, "runner-1", "idle").await;
    let scheduler = s.scheduler.output();
    let lines: Vec<&str> = scheduler.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("metrics need a viewer token")), "start-up names /metrics: {scheduler}");
    let runner = s.runners[0].output();
    assert!(!runner.contains('\u{1b}'), "no ANSI escapes in a log file: {runner}");
    assert!(runner.contains("runner metrics listening") && runner.contains("/metrics"), "{runner}");
    assert!(!scheduler.contains('\u{1b}'));
}

#[tokio::test]
async fn one_trace_per_deployment_links_the_schedulers_root_span_and_the_runners_step_spans() {
    let receiver = slipway_tests::otlp::Receiver::start().await;
    let otel = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), receiver.endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string()),
    ];
    let git = GitServer::start();
    let mut s =
        Slipway::start(SlipwayOptions { scheduler_env: otel.clone(), runner_env: otel, ..Default::default() }).await;
    let repo = unique("traced");
    let url = git.url(&repo);
    let app = s.create_app("traced", &url, SECRET, json!({})).await;
    let sha = commit(&git, &repo, "true");
    let id = push(&s, &url, &sha).await;
    assert_eq!(s.finished(&id, FINISH).await["state"], "completed");

    let root_name = format!("deploy {app}");
    // The scheduler and the runner export on their own schedules: wait for the root span, the
    // runner's job span and its seven step spans (the release step, with no release command, skipped).
    let job_name = format!("job {app}");
    let spans = eventually(Duration::from_secs(30), "the root, job and step spans to arrive", || async {
        let spans = receiver.spans();
        let job = spans.iter().find(|s| s.name == job_name)?;
        let steps = spans.iter().filter(|s| s.parent_span_id == job.span_id).count();
        (spans.iter().any(|s| s.name == root_name) && steps == 7).then_some(spans.clone())
    })
    .await;
    let root = spans.iter().find(|s| s.name == root_name).expect("root");
    assert_eq!(root.service, "slipway-scheduler");
    assert_eq!(root.parent_span_id, "", "the root has no parent");
    assert_eq!(
        (root.attr("cicd.pipeline.run.id"), root.attr("cicd.pipeline.result")),
        (Some(id.as_str()), Some("success"))
    );
    assert_eq!(
        (root.attr("cicd.pipeline.name"), root.attr("vcs.ref.head.revision")),
        (Some(app.as_str()), Some(sha.as_str()))
    );
    let stored = slipway_tests::harness::psql_value(
        &s.database_url,
        &format!("SELECT trace_parent FROM deployments WHERE id = '{id}'"),
    );
    assert_eq!(stored, format!("00-{}-{}-01", root.trace_id, root.span_id), "the ids chosen when it was recorded");

    let trace: Vec<_> = spans.iter().filter(|s| s.trace_id == root.trace_id).collect();
    let job = trace.iter().find(|s| s.name == job_name).expect("the runner's job span, in the root's trace");
    assert_eq!(job.service, "slipway-runner");
    assert_eq!(job.parent_span_id, root.span_id, "the job span is a child of the root, across RabbitMQ");
    assert_eq!(
        (job.attr("cicd.worker.id"), job.attr("cicd.pipeline.task.run.result")),
        (Some("runner-1"), Some("success"))
    );
    assert!(
        root.start_unix_nano <= job.start_unix_nano && job.end_unix_nano <= root.end_unix_nano,
        "{root:?}\n{job:?}"
    );
    let mut steps: Vec<&str> =
        trace.iter().filter(|s| s.parent_span_id == job.span_id).map(|s| s.name.as_str()).collect();
    steps.sort();
    assert_eq!(steps, ["build", "cleanup", "clone", "deploy", "push", "release", "test"], "{trace:#?}");
    for step in trace.iter().filter(|s| s.parent_span_id == job.span_id) {
        let want = if matches!(step.name.as_str(), "test" | "release") { "skip" } else { "success" };
        assert_eq!(step.attr("cicd.pipeline.task.run.result"), Some(want), "{step:?}");
        assert_eq!(step.attr("cicd.pipeline.run.id"), Some(id.as_str()));
    }
    assert_eq!(trace.iter().filter(|s| s.name == root_name).count(), 1, "one root span");
}

#[test]
fn bad_telemetry_settings_are_refused_in_one_line_with_exit_64() {
    let run = |bin: &str, env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(slipway_tests::harness::bin(bin));
        cmd.env_clear().env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    /// A binary, its environment, and what its one line of error must say.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        ("slipway-scheduler", &[("SLIPWAY_LOG_FORMAT", "xml")], "text or json"),
        ("slipway-runner", &[("SLIPWAY_LOG_FORMAT", "logfmt")], "text or json"),
        ("slipway-runner", &[("SLIPWAY_METRICS_LISTEN", "0.0.0.0:9464")], "SLIPWAY_METRICS_TOKEN_FILE"),
        ("slipway-runner", &[("SLIPWAY_METRICS_LISTEN", "everywhere")], "SLIPWAY_METRICS_LISTEN"),
        ("slipway-scheduler", &[("SLIPWAY_RUNNER_LOST_SECONDS", "1")], "SLIPWAY_RUNNER_LOST_SECONDS"),
    ];
    for (bin, env, says) in cases {
        let (code, stderr) = run(bin, env);
        assert_eq!(code, Some(64), "{bin} {env:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{bin} {env:?}: {stderr}");
    }
}

#[tokio::test]
async fn the_queue_says_when_a_deployment_backs_off_and_when_the_broker_is_unreachable() {
    let broker = slipway_tests::PrivateBroker::start("", "");
    let mut s = Slipway::start(SlipwayOptions { amqp_url: broker.url(), ..Default::default() }).await;

    // An unreachable git server fails the clone as infrastructure: attempt 2 backs off.
    let gone = format!("git://127.0.0.1:{}/gone.git", slipway_tests::free_port());
    s.create_app("backoff", &gone, SECRET, json!({})).await;
    let id = push(&s, &gone, "0123456789abcdef0123456789abcdef01234567").await;
    let entry = waits_because(&s, &id, "backing_off").await;
    assert_eq!(entry["reason"]["attempt"], 2, "{entry}");
    let until: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(entry["reason"]["until"].clone()).expect("until is a time");
    assert!(until > chrono::Utc::now() - chrono::Duration::seconds(1), "{entry}");
    let (status, _) = s.cancel(&id, "operators test").await;
    assert!(status == 200 || status == 202);

    // With the broker down, a push is recorded and waits to be published, and says since when.
    broker.stop();
    let git = GitServer::start();
    let repo = unique("broker-down");
    let url = git.url(&repo);
    s.create_app("broker-down", &url, SECRET, json!({})).await;
    let id = push(&s, &url, &commit(&git, &repo, "true")).await;
    let entry = waits_because(&s, &id, "unpublished").await;
    let entry = if entry["reason"]["broker_down_since"].is_null() {
        eventually(Duration::from_secs(30), "the relay to notice the broker is gone", || async {
            let (_, queue) = s.get("/api/v1/queue").await;
            queue["entries"]
                .as_array()?
                .iter()
                .find(|e| e["deployment_id"] == id.as_str() && !e["reason"]["broker_down_since"].is_null())
                .cloned()
        })
        .await
    } else {
        entry
    };
    let out = s.cli_command().args(["queue"]).output().expect("slipway queue");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not yet published: the broker is unreachable since"), "{text}\n{entry}");
    broker.restart();
    assert_eq!(s.finished(&id, FINISH).await["state"], "completed", "published once the broker is back");
}
