//! A push becomes a running container: the whole pipeline on real services — PostgreSQL,
//! RabbitMQ, the Docker engine, the registry and a `git daemon` — with Slipway's binaries.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, PrivateBroker, Slipway, SlipwayOptions, docker, eventually, unique};

const SECRET: &str = "pipeline-secret-0123456789";
const FINISH: Duration = Duration::from_secs(120);

/// A static site on the local busybox image; `/healthz` answers when `healthy`.
fn site(marker: &str, healthy: bool) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        (
            "Dockerfile".to_string(),
            b"FROM slipway/busybox:1\nCOPY www /www\nCMD [\"httpd\", \"-f\", \"-v\", \"-p\", \"8080\", \"-h\", \"/www\"]\n".to_vec(),
        ),
        ("www/index.html".to_string(), format!("<p>{marker}</p>\n").into_bytes()),
    ];
    if healthy {
        files.push(("www/healthz".to_string(), b"ok\n".to_vec()));
    }
    files
}

fn commit(git: &GitServer, repo: &str, message: &str, files: &[(String, Vec<u8>)]) -> String {
    let entries: Vec<Entry<'_>> = files.iter().map(|(p, c)| Entry::File(p.as_str(), c.as_slice())).collect();
    git.commit(repo, message, &entries)
}

fn steps_of(d: &Value) -> Vec<(i64, String, String)> {
    d["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["attempt"].as_i64().unwrap_or(0),
                s["step"].as_str().unwrap_or("").to_string(),
                s["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn deploy(s: &Slipway, repo_url: &str, sha: &str) -> Value {
    let (status, answer) = s.push(repo_url, sha, SECRET, &unique("delivery")).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("deployment id").to_string();
    s.finished(&id, FINISH).await
}

/// A consumer of every `deploy.*` notification of the installation with `prefix`.
async fn subscribe_events(prefix: &str) -> (lapin::Connection, lapin::Consumer) {
    let conn =
        lapin::Connection::connect(&slipway_tests::env("SLIPWAY_AMQP_URL"), lapin::ConnectionProperties::default())
            .await
            .expect("amqp");
    let channel = conn.create_channel().await.expect("channel");
    let exchange = format!("{prefix}.events");
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel
        .exchange_declare(exchange.as_str().into(), lapin::ExchangeKind::Topic, durable, FieldTable::default())
        .await
        .expect("exchange");
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("queue");
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.as_str().into(),
            "deploy.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    (conn, consumer)
}

fn containers_of(app: &str) -> Vec<String> {
    docker(&["ps", "-q", "--filter", &format!("label=dev.slipway.app={app}")])
        .expect("docker ps")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn signed_push_ends_completed_with_the_container_answering_and_logs_resumable() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("hello");
    let url = git.url(&repo);
    let app = s.create_app("hello", &url, SECRET, json!({})).await;

    let (_amqp, mut events) = subscribe_events(&s.prefix).await;
    let marker_v1 = unique("version-one");
    let sha1 = commit(&git, &repo, "v1", &site(&marker_v1, true));
    let (status, answer) = s.push(&url, &sha1, SECRET, "first-delivery").await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    // Follow the live stream from the start while the job runs: it must end by itself.
    let followed =
        tokio::time::timeout(FINISH, s.sse(&id, true, None)).await.expect("the live stream ends with the deployment");
    let d = s.finished(&id, FINISH).await;
    assert_eq!(d["state"], "completed", "{d}\n{}", s.dump());
    let (last_event, _, end) = followed.last().expect("events").clone();
    assert_eq!(last_event, "end");
    assert!(end.contains("completed"), "{end}");
    let followed_lines: Vec<(String, String)> =
        followed.into_iter().filter(|(e, _, _)| e == "log").map(|(_, i, l)| (i, l)).collect();
    assert_eq!(followed_lines, s.log_lines(&id, None).await, "following live sees every stored line, in order");

    let mut keys = Vec::new();
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(Duration::from_secs(2), events.next()).await {
        let note: Value = serde_json::from_slice(&delivery.data).expect("notification json");
        if note["deployment_id"] == id.as_str() {
            keys.push(delivery.routing_key.to_string());
        }
        if delivery.routing_key.as_str() == "deploy.completed" {
            break;
        }
    }
    assert_eq!(keys.first().map(String::as_str), Some("deploy.queued"), "{keys:?}");
    assert!(keys.iter().filter(|k| *k == "deploy.step").count() >= 5, "{keys:?}");
    assert_eq!(keys.last().map(String::as_str), Some("deploy.completed"), "{keys:?}");

    let live = d["url"].as_str().expect("url").to_string();
    let body = s.app_body(&live, "/").await.expect("the app answers");
    assert!(body.contains(&marker_v1), "{body}");
    assert_eq!(d["image"].as_str(), Some(format!("{}/{app}:{sha1}", slipway_tests::env("SLIPWAY_REGISTRY")).as_str()));

    let steps = steps_of(&d);
    let names: Vec<&str> = steps.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(names, ["clone", "build", "test", "push", "release", "deploy", "cleanup"]);
    // No test command and no release command: both shown as skipped, never as passed.
    let expected = |name: &str| if matches!(name, "test" | "release") { "skipped" } else { "succeeded" };
    assert!(
        steps.iter().all(|(a, n, st)| *a == 1 && st == expected(n)),
        "no test command is skipped, never passed: {steps:?}"
    );
    for step in d["steps"].as_array().expect("steps") {
        assert!(step["started_at"].is_string() && step["finished_at"].is_string(), "timings: {step}");
    }

    let lines = s.log_lines(d["id"].as_str().expect("id"), None).await;
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert!(text.iter().any(|l| l.starts_with("checked out")), "{text:?}");
    assert!(text.iter().any(|l| l.starts_with("Step 1/")), "builder output: {text:?}");
    assert!(text.iter().any(|l| l.starts_with("live at")), "{text:?}");
    let ids: Vec<&str> = lines.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids[0], "1.1");
    let resumed = s.log_lines(d["id"].as_str().expect("id"), Some(&lines[2].0)).await;
    assert_eq!(resumed, lines[3..].to_vec(), "Last-Event-ID resumes right after the given line");

    // A second push replaces the first container.
    let marker_v2 = unique("version-two");
    let sha2 = commit(&git, &repo, "v2", &site(&marker_v2, true));
    let d2 = deploy(&s, &url, &sha2).await;
    assert_eq!(d2["state"], "completed", "{d2}");
    let body = s.app_body(d2["url"].as_str().expect("url"), "/").await.expect("v2 answers");
    assert!(body.contains(&marker_v2));
    assert_eq!(containers_of(&app).len(), 1, "the previous container is retired");
}

#[tokio::test]
async fn the_same_delivery_sent_20_times_yields_one_deployment_and_one_build() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { runners: 2, ..Default::default() }).await;
    let repo = unique("dedupe");
    let url = git.url(&repo);
    let app = s.create_app("dedupe", &url, SECRET, json!({})).await;
    let sha = commit(&git, &repo, "v1", &site(&unique("dedupe"), true));

    let answers = join_all((0..20).map(|_| s.push(&url, &sha, SECRET, "the-same-delivery"))).await;
    let created = answers.iter().filter(|(status, _)| *status == 202).count();
    assert_eq!(created, 1, "{answers:?}");
    assert!(answers.iter().all(|(status, _)| *status == 202 || *status == 200), "{answers:?}");
    let ids: std::collections::HashSet<String> = answers
        .iter()
        .map(|(_, a)| a["deployments"][0]["deployment_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "every answer names the same deployment");

    let id = ids.into_iter().next().expect("one id");
    let d = s.finished(&id, FINISH).await;
    assert_eq!(d["state"], "completed", "{d}");
    assert_eq!(d["attempt"], 1);
    assert_eq!(s.deployments_of(&app).await.len(), 1);
    let builds = steps_of(&d).into_iter().filter(|(_, n, _)| n == "build").count();
    assert_eq!(builds, 1);
    let lines = s.log_lines(&id, None).await;
    assert_eq!(lines.iter().filter(|(_, l)| l.starts_with("Step 1/")).count(), 1, "the builder ran once");
    assert_eq!(containers_of(&app).len(), 1);
}

#[tokio::test]
async fn a_version_that_never_becomes_healthy_leaves_the_old_one_serving() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { health_timeout_seconds: 4, ..Default::default() }).await;
    let repo = unique("unhealthy");
    let url = git.url(&repo);
    let app = s.create_app("unhealthy", &url, SECRET, json!({})).await;

    let marker = unique("good-version");
    let good = deploy(&s, &url, &commit(&git, &repo, "good", &site(&marker, true))).await;
    assert_eq!(good["state"], "completed", "{good}");
    let live = good["url"].as_str().expect("url").to_string();

    let bad = deploy(&s, &url, &commit(&git, &repo, "no health", &site("bad version", false))).await;
    assert_eq!(bad["state"], "failed", "{bad}");
    assert_eq!(bad["error_step"], "deploy");
    assert_eq!(bad["error_cause"], "user");
    assert!(bad["error_message"].as_str().unwrap_or_default().contains("did not become healthy"), "{bad}");
    let lines = s.log_lines(bad["id"].as_str().expect("id"), None).await;
    assert!(lines.iter().any(|(_, l)| l.contains("last output of the new container")), "{lines:?}");

    let body = s.app_body(&live, "/").await.expect("the old version still answers");
    assert!(body.contains(&marker));
    assert_eq!(containers_of(&app).len(), 1, "the unhealthy container is removed");
}

#[tokio::test]
async fn a_broken_dockerfile_fails_at_the_build_step_with_the_builder_output() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("broken");
    let url = git.url(&repo);
    let app = s.create_app("broken", &url, SECRET, json!({})).await;
    let token = unique("echoed-by-the-build");
    let dockerfile = format!("FROM slipway/busybox:1\nRUN echo {token} && exit 3\n");
    let sha = git.commit(&repo, "broken", &[Entry::File("Dockerfile", dockerfile.as_bytes())]);

    let d = deploy(&s, &url, &sha).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert_eq!((d["error_step"].as_str(), d["error_cause"].as_str()), (Some("build"), Some("user")));
    assert!(d["error_message"].as_str().unwrap_or_default().contains("non-zero code: 3"), "{d}");
    let lines = s.log_lines(d["id"].as_str().expect("id"), None).await;
    assert!(lines.iter().any(|(_, l)| l.trim() == token), "the RUN output is in the log: {lines:?}");
    assert!(!steps_of(&d).iter().any(|(_, n, _)| n == "push" || n == "deploy"), "nothing after the build ran");
    let tags = reqwest::get(format!("http://{}/v2/{app}/tags/list", slipway_tests::env("SLIPWAY_REGISTRY")))
        .await
        .expect("registry");
    assert_eq!(tags.status().as_u16(), 404, "nothing was pushed");
    let left: Vec<_> = std::fs::read_dir(s.work_dir("runner-1")).expect("work dir").collect();
    assert!(left.is_empty(), "the failed job's workspace is removed: {left:?}");
}

#[tokio::test]
async fn a_commit_that_cannot_be_fetched_fails_at_the_clone_step_with_a_clear_error() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("missing");
    let url = git.url(&repo);
    s.create_app("missing", &url, SECRET, json!({})).await;
    commit(&git, &repo, "v1", &site("exists", true));
    let d = deploy(&s, &url, "0123456789abcdef0123456789abcdef01234567").await;
    assert_eq!(d["state"], "failed", "{d}");
    assert_eq!((d["error_step"].as_str(), d["error_cause"].as_str()), (Some("clone"), Some("user")));
    assert!(
        d["error_message"]
            .as_str()
            .unwrap_or_default()
            .contains("0123456789abcdef0123456789abcdef01234567 could not be fetched"),
        "{d}"
    );
    let left: Vec<_> = std::fs::read_dir(s.work_dir("runner-1")).expect("work dir").collect();
    assert!(left.is_empty(), "the workspace is removed: {left:?}");
}

#[tokio::test]
async fn a_runner_told_to_stop_finishes_its_running_job_first() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("drain");
    let url = git.url(&repo);
    s.create_app("drain", &url, SECRET, json!({})).await;
    let mut files = site(&unique("drained"), true);
    files[0].1 = format!(
        "FROM slipway/busybox:1\nRUN echo {} && sleep 3\nCOPY www /www\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
        unique("drain-layer")
    )
    .into_bytes();
    let sha = commit(&git, &repo, "slow", &files);
    let (status, answer) = s.push(&url, &sha, SECRET, "drain-delivery").await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    eventually(Duration::from_secs(60), "the build to start", || {
        let (s, id) = (&s, id.clone());
        async move { (s.deployment(&id).await["current_step"] == "build").then_some(()) }
    })
    .await;
    assert!(s.runners[0].terminate(), "the runner drains and exits 0\n{}", s.dump());
    let d = s.finished(&id, Duration::from_secs(10)).await;
    assert_eq!(d["state"], "completed", "finished by the draining runner: {d}");
    assert_eq!(d["attempt"], 1);
}

#[tokio::test]
async fn a_symlink_to_a_file_outside_the_repository_does_not_leak_it_into_the_image() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("symlink");
    let url = git.url(&repo);
    s.create_app("symlink", &url, SECRET, json!({})).await;
    let outside = tempfile::NamedTempFile::new().expect("outside file");
    let secret = unique("HOST-SECRET-CONTENT");
    std::fs::write(outside.path(), &secret).expect("write outside file");
    let abs = outside.path().display().to_string();
    let rel = format!("../../../../../../../../..{abs}");
    let mut entries: Vec<Entry<'_>> = Vec::new();
    let files = site("symlink test", true);
    for (p, c) in &files {
        entries.push(Entry::File(p, c));
    }
    entries.push(Entry::Symlink("www/absolute", &abs));
    entries.push(Entry::Symlink("www/relative", &rel));
    let sha = git.commit(&repo, "symlinks", &entries);

    let d = deploy(&s, &url, &sha).await;
    assert_eq!(d["state"], "completed", "{d}");
    let live = d["url"].as_str().expect("url");
    for path in ["/absolute", "/relative"] {
        let body = s.app_body(live, path).await.unwrap_or_default();
        assert!(!body.contains(&secret), "{path} served the host file");
    }
    let image = d["image"].as_str().expect("image");
    for path in ["/www/absolute", "/www/relative"] {
        let read = docker(&["run", "--rm", "--entrypoint", "cat", image, path]);
        assert!(
            !read.clone().unwrap_or_default().contains(&secret),
            "{path} in the image holds the host file: {read:?}"
        );
    }
}

#[tokio::test]
async fn a_push_while_rabbitmq_is_stopped_is_deployed_once_it_is_back() {
    let broker = PrivateBroker::start("", "");
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { amqp_url: broker.url(), ..Default::default() }).await;
    let repo = unique("outage");
    let url = git.url(&repo);
    s.create_app("outage", &url, SECRET, json!({})).await;
    let marker = unique("after-the-outage");
    let sha = commit(&git, &repo, "v1", &site(&marker, true));

    broker.stop();
    let (status, answer) = s.push(&url, &sha, SECRET, "outage-delivery").await;
    assert_eq!(status, 202, "the webhook succeeds while the broker is down: {answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = s.deployment(&id).await;
    assert_eq!(waiting["state"], "queued");
    assert!(waiting["published_at"].is_null(), "not published while the broker is down: {waiting}");

    broker.restart();
    let d = s.finished(&id, FINISH).await;
    assert_eq!(d["state"], "completed", "{d}\n{}", s.dump());
    let body = s.app_body(d["url"].as_str().expect("url"), "/").await.expect("the app answers");
    assert!(body.contains(&marker));
}

#[tokio::test]
async fn a_runner_killed_mid_build_is_replaced_and_the_deployment_completes_once() {
    let git = GitServer::start();
    let mut s =
        Slipway::start(SlipwayOptions { runners: 2, lease_seconds: 4, heartbeat_seconds: 1, ..Default::default() })
            .await;
    let repo = unique("killed");
    let url = git.url(&repo);
    let app = s.create_app("killed", &url, SECRET, json!({})).await;
    let mut files = site(&unique("survivor"), true);
    // A unique, slow layer so the build is certainly running (and not cached) when the kill comes.
    files[0].1 = format!(
        "FROM slipway/busybox:1\nRUN echo {} && sleep 6\nCOPY www /www\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
        unique("slow-layer")
    )
    .into_bytes();
    let sha = commit(&git, &repo, "slow build", &files);
    let (status, answer) = s.push(&url, &sha, SECRET, "kill-delivery").await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();

    let victim = eventually(Duration::from_secs(60), "the build to start", || {
        let s = &s;
        let id = id.clone();
        async move {
            let d = s.deployment(&id).await;
            let building = d["current_step"] == "build"
                && s.log_lines(&id, None).await.iter().any(|(_, l)| l.starts_with("Step 2/"));
            building.then(|| d["runner_id"].as_str().unwrap_or_default().to_string())
        }
    })
    .await;
    let index = s.runners.iter().position(|r| r.name == victim).expect("the victim is one of ours");
    s.runners[index].kill9();

    let d = s.finished(&id, FINISH).await;
    assert_eq!(d["state"], "completed", "{d}\n{}", s.dump());
    assert_eq!(d["attempt"], 2, "the job was dispatched again after the lease ran out: {d}\n{}", s.dump());
    assert_ne!(d["runner_id"].as_str(), Some(victim.as_str()));
    let steps = steps_of(&d);
    assert!(steps.contains(&(1, "build".into(), "failed".into())), "{steps:?}");
    assert!(steps.contains(&(2, "deploy".into(), "succeeded".into())), "{steps:?}");
    assert_eq!(steps.iter().filter(|(_, n, st)| n == "deploy" && st == "succeeded").count(), 1, "deployed once");
    assert_eq!(containers_of(&app).len(), 1);
    assert_eq!(s.deployments_of(&app).await.len(), 1);
}

#[tokio::test]
async fn an_infrastructure_failure_is_retried_with_backoff_then_fails_naming_the_step() {
    let git = GitServer::start();
    let dead_registry = format!("127.0.0.1:{}", slipway_tests::free_port());
    let mut s =
        Slipway::start(SlipwayOptions { registry: Some(dead_registry), max_attempts: 2, ..Default::default() }).await;
    let repo = unique("infra");
    let url = git.url(&repo);
    s.create_app("infra", &url, SECRET, json!({})).await;
    let d = deploy(&s, &url, &commit(&git, &repo, "v1", &site("unpushable", true))).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert_eq!((d["error_step"].as_str(), d["error_cause"].as_str()), (Some("push"), Some("infrastructure")));
    assert_eq!(d["attempt"], 2, "retried once, then out of attempts");
    let at = |attempt: i64, key: &str| {
        let step = d["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .find(|st| st["attempt"] == attempt && st["step"] == "push")
            .cloned();
        step.and_then(|st| st[key].as_str().and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok()))
            .expect("push timings")
    };
    let waited = at(2, "started_at") - at(1, "finished_at");
    assert!(waited >= chrono::Duration::seconds(5), "attempt 2 waited for the backoff ({waited})");
}

#[tokio::test]
async fn a_manual_rollback_redeploys_an_earlier_revision_without_rebuilding() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("rollback");
    let url = git.url(&repo);
    let app = s.create_app("rollback", &url, SECRET, json!({})).await;
    let (m1, m2) = (unique("first"), unique("second"));
    let sha1 = commit(&git, &repo, "v1", &site(&m1, true));
    let d1 = deploy(&s, &url, &sha1).await;
    let d2 = deploy(&s, &url, &commit(&git, &repo, "v2", &site(&m2, true))).await;
    assert_eq!((d1["state"].as_str(), d2["state"].as_str()), (Some("completed"), Some("completed")));
    // As on a runner that never built it: the image is only in the registry.
    let image1 = d1["image"].as_str().expect("first image");
    slipway_tests::docker(&["image", "rm", "-f", image1]).expect("remove the first image from the engine");

    let out = s.cli_command().args(["rollback", &app, "--follow"]).output().expect("run slipway rollback");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("rolling {app} back to {sha1}")), "{stdout}");
    let list = s.deployments_of(&app).await;
    let rb = list.iter().find(|d| d["source"] == "rollback").expect("a rollback deployment");
    let rb = s.deployment(rb["id"].as_str().expect("id")).await;
    assert_eq!(rb["state"], "completed", "{rb}");
    assert_eq!(rb["sha"].as_str(), Some(sha1.as_str()));
    for step in ["clone", "build", "test", "push"] {
        assert_eq!(
            steps_of(&rb).iter().find(|(_, n, _)| n == step).map(|(_, _, st)| st.as_str()),
            Some("skipped"),
            "{step}"
        );
    }
    assert!(stdout.contains("pulling") && stdout.contains("@sha256:"), "pulled by digest: {stdout}");
    let body = s.app_body(rb["url"].as_str().expect("url"), "/").await.expect("answers");
    assert!(body.contains(&m1), "the first version serves again: {body}");
    assert_eq!(containers_of(&app).len(), 1);

    let (status, answer) = s.post(&format!("/api/v1/apps/{app}/rollback"), &json!({"to": "deadbeef00"})).await;
    assert_eq!(status, 422, "{answer}");
}

#[tokio::test]
async fn secret_values_never_reach_the_log() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { health_timeout_seconds: 5, ..Default::default() }).await;
    let repo = unique("masked");
    let url = git.url(&repo);
    let token = unique("tok");
    s.create_app("masked", &url, SECRET, json!({"env": {"API_TOKEN": token, "GREETING": "hello-there"}})).await;
    let dockerfile =
        b"FROM slipway/busybox:1\nCMD [\"sh\", \"-c\", \"echo token is $API_TOKEN and $GREETING; exit 1\"]\n";
    let d = deploy(&s, &url, &git.commit(&repo, "leaky", &[Entry::File("Dockerfile", dockerfile)])).await;
    assert_eq!(d["state"], "failed", "{d}");
    let lines = s.log_lines(d["id"].as_str().expect("id"), None).await;
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert!(
        text.iter().any(|l| l.contains("token is *** and hello-there")),
        "the app's output is shown, masked: {text:#?}"
    );
    assert!(!text.iter().any(|l| l.contains(&token)), "the secret never appears");
    assert!(!d.to_string().contains(&token));
}

#[tokio::test]
async fn a_queued_deployment_superseded_by_a_newer_push_never_runs() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { runners: 0, ..Default::default() }).await;
    let repo = unique("supersede");
    let url = git.url(&repo);
    s.create_app("supersede", &url, SECRET, json!({})).await;
    let older = commit(&git, &repo, "older", &site("older", true));
    let (_, a) = s.push(&url, &older, SECRET, "older-delivery").await;
    let marker = unique("newer");
    let newer = commit(&git, &repo, "newer", &site(&marker, true));
    let (_, b) = s.push(&url, &newer, SECRET, "newer-delivery").await;
    let older_id = a["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let newer_id = b["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let superseded = s.deployment(&older_id).await;
    assert_eq!(superseded["state"], "cancelled", "{superseded}");
    assert_eq!(superseded["cancel_by"], "slipway");
    let reason = superseded["cancel_reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&newer_id) && reason.contains(&newer), "names the newer deployment: {reason}");

    s.add_runner();
    let d = s.finished(&newer_id, FINISH).await;
    assert_eq!(d["state"], "completed", "{d}");
    assert!(s.app_body(d["url"].as_str().expect("url"), "/").await.expect("answers").contains(&marker));
    let old = s.deployment(&older_id).await;
    assert_eq!(old["state"], "cancelled");
    assert!(old["steps"].as_array().is_none_or(|st| st.is_empty()), "the superseded deployment never ran: {old}");
}

#[tokio::test]
async fn an_app_root_that_is_a_link_out_of_the_repository_is_refused_and_nothing_of_the_host_is_read() {
    let git = GitServer::start();
    let outside = tempfile::tempdir().expect("host dir");
    let secret = unique("HOST-DIR-SECRET");
    std::fs::write(outside.path().join("index.html"), &secret).expect("host file");
    std::fs::write(
        outside.path().join("Dockerfile"),
        "FROM slipway/busybox:1\nCOPY . /www\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    )
    .expect("host Dockerfile");
    let host_dir = outside.path().display().to_string();
    for (stem, app_root, target) in [("abs-root", "esc", host_dir.as_str()), ("up-root", "up/www", "../../../../../..")]
    {
        let mut s = Slipway::start(SlipwayOptions::default()).await;
        let repo = unique(stem);
        let url = git.url(&repo);
        let files = site("inside", true);
        let mut entries: Vec<Entry<'_>> = files.iter().map(|(p, c)| Entry::File(p.as_str(), c.as_slice())).collect();
        let link = app_root.split('/').next().expect("first component");
        entries.push(Entry::Symlink(link, target));
        let sha = git.commit(&repo, "links", &entries);
        s.create_app(stem, &url, SECRET, json!({"app_root": app_root})).await;
        let d = deploy(&s, &url, &sha).await;
        assert_eq!(d["state"], "failed", "{d}");
        assert_eq!((d["error_step"].as_str(), d["error_cause"].as_str()), (Some("build"), Some("user")), "{d}");
        assert!(d["error_message"].as_str().unwrap_or_default().contains("symbolic link"), "says why: {d}");
        let lines = s.log_lines(d["id"].as_str().expect("id"), None).await;
        assert!(!lines.iter().any(|(_, l)| l.contains(&secret)), "nothing of the host dir was read");
    }
}

#[tokio::test]
async fn an_image_someone_else_pushed_under_the_apps_name_is_rebuilt_not_trusted() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("trusted");
    let url = git.url(&repo);
    let app = s.create_app("trusted", &url, SECRET, json!({})).await;
    let marker = unique("the-real-one");
    let sha = commit(&git, &repo, "v1", &site(&marker, true));

    // Someone with registry access pushes their own image under <registry>/<app>:<sha> first.
    let dir = tempfile::tempdir().expect("context");
    std::fs::create_dir_all(dir.path().join("www")).expect("www");
    std::fs::write(dir.path().join("www/index.html"), "FOREIGN").expect("index");
    std::fs::write(dir.path().join("www/healthz"), "ok").expect("healthz");
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM slipway/busybox:1\nCOPY www /www\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    )
    .expect("Dockerfile");
    let reference = format!("{}/{app}:{sha}", slipway_tests::env("SLIPWAY_REGISTRY"));
    let built = std::process::Command::new("docker")
        .args(["build", "-q", "-t", &reference])
        .arg(dir.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker build");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    docker(&["push", &reference]).expect("push the foreign image");

    let d = deploy(&s, &url, &sha).await;
    assert_eq!(d["state"], "completed", "{d}");
    assert!(steps_of(&d).contains(&(1, "build".into(), "succeeded".into())), "built, not skipped: {d}");
    let body = s.app_body(d["url"].as_str().expect("url"), "/").await.expect("answers");
    assert!(body.contains(&marker) && !body.contains("FOREIGN"), "serves its own build: {body}");
}
