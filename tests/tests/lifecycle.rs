//! The lifecycle end to end: cancelling in every step with nothing left behind, stale copies of
//! jobs that change nothing, leftovers of a killed runner, leases that survive a broker outage,
//! fast 503s while PostgreSQL is down, and an unreachable git server retried as infrastructure.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, PrivateBroker, Proxy, Slipway, SlipwayOptions, docker, eventually, unique};

const SECRET: &str = "lifecycle-secret-0123456789";
const FINISH: Duration = Duration::from_secs(120);
/// A cancelled step must end well before the work it stopped would have.
const STOPPED: Duration = Duration::from_secs(30);
const BASES: &str = "node=slipway/busybox:1,node-run=slipway/busybox:1,static-run=slipway/caddy:2";

fn dockerfile(run: &str, cmd: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        ("Dockerfile".into(), format!("FROM slipway/busybox:1\nRUN {run}\nCOPY www /www\nCMD {cmd}\n").into_bytes()),
        ("www/index.html".into(), b"<p>hello</p>\n".to_vec()),
        ("www/healthz".into(), b"ok\n".to_vec()),
    ]
}

const HTTPD: &str = r#"["httpd", "-f", "-p", "8080", "-h", "/www"]"#;

fn commit(git: &GitServer, repo: &str, message: &str, files: &[(String, Vec<u8>)]) -> String {
    let entries: Vec<Entry<'_>> = files.iter().map(|(p, c)| Entry::File(p.as_str(), c.as_slice())).collect();
    git.commit(repo, message, &entries)
}

async fn push(s: &Slipway, url: &str, sha: &str) -> String {
    let (status, answer) = s.push(url, sha, SECRET, &unique("delivery")).await;
    assert_eq!(status, 202, "{answer}");
    answer["deployments"][0]["deployment_id"].as_str().expect("deployment id").to_string()
}

async fn wait_for_step(s: &Slipway, id: &str, step: &str) {
    eventually(Duration::from_secs(90), &format!("step {step} to start"), || async move {
        (s.deployment(id).await["current_step"] == step).then_some(())
    })
    .await;
}

fn step_status(d: &Value, step: &str) -> Option<String> {
    d["steps"].as_array()?.iter().rev().find(|s| s["step"] == step).map(|s| s["status"].as_str().unwrap_or("").into())
}

/// Job workspaces left in a runner's work directory.
/// The job workspaces in a runner's work directory (`slipway-job-...`); its build-cache
/// manifests (`slipway-cache-...`) are kept on purpose and are not workspaces.
fn workspaces(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with("slipway-cache-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Containers (any state) whose command line contains `marker`.
fn containers_running(marker: &str) -> Vec<String> {
    let out = docker(&["ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Command}}"]).expect("docker ps");
    out.lines().filter(|l| l.contains(marker)).map(str::to_string).collect()
}

fn labelled(label: &str) -> Vec<String> {
    docker(&["ps", "-aq", "--filter", &format!("label={label}")])
        .expect("docker ps")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Pushes a commit whose build runs `seconds` and waits until its build container runs; returns
/// the deployment id and the commit.
async fn push_slow_build(s: &Slipway, git: &GitServer, repo: &str, url: &str, seconds: u32) -> (String, String) {
    let marker = unique("slow-build");
    let sha = commit(git, repo, "slow", &dockerfile(&format!("echo {marker} && sleep {seconds}"), HTTPD));
    let id = push(s, url, &sha).await;
    eventually(Duration::from_secs(90), "the build to run", || async {
        (!containers_running(&marker).is_empty()).then_some(())
    })
    .await;
    (id, sha)
}

/// Waits until the last heartbeat the scheduler applied for `id` is older than `age` (read
/// straight from PostgreSQL, which the test reaches even when the scheduler cannot).
async fn heartbeat_older_than(s: &Slipway, id: &str, age: Duration) {
    let sql = format!("SELECT extract(epoch FROM now() - heartbeat_at)::float8 FROM deployments WHERE id = '{id}'");
    let url = s.database_url.clone();
    eventually(age + Duration::from_secs(30), "the heartbeat to age past the lease", || {
        let (url, sql) = (url.clone(), sql.clone());
        async move {
            let out = std::process::Command::new("psql").args([url.as_str(), "-AtXc", &sql]).output().ok()?;
            let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
            (secs > age.as_secs_f64()).then_some(())
        }
    })
    .await;
}

/// Asks to cancel `id` and waits until it ends; returns the deployment and how long that took.
async fn cancel_and_finish(s: &Slipway, id: &str, expect_status: u16) -> (Value, Duration) {
    let asked = Instant::now();
    let (status, answer) = s.cancel(id, "changed my mind").await;
    assert_eq!(status, expect_status, "{answer}");
    let d = s.finished(id, FINISH).await;
    (d, asked.elapsed())
}

fn assert_cancelled(d: &Value, step: &str) {
    assert_eq!(d["state"], "cancelled", "{d}");
    assert_eq!((d["cancel_by"].as_str(), d["cancel_reason"].as_str()), (Some("admin"), Some("changed my mind")), "{d}");
    assert_eq!(step_status(d, step).as_deref(), Some("cancelled"), "the {step} step shows it was stopped: {d}");
    assert_eq!(step_status(d, "deploy"), None, "nothing was deployed: {d}");
}

#[tokio::test]
async fn a_queued_deployment_is_cancelled_at_once_and_a_finished_one_is_a_conflict() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { runners: 0, ..Default::default() }).await;
    let repo = unique("queued");
    let url = git.url(&repo);
    s.create_app("queued", &url, SECRET, json!({})).await;
    let id = push(&s, &url, &commit(&git, &repo, "v1", &dockerfile("true", HTTPD))).await;

    let out =
        s.cli_command().args(["cancel", &id, "--reason", "changed my mind"]).output().expect("run slipway cancel");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("cancelled deployment {id}"));
    let d = s.deployment(&id).await;
    assert_eq!(d["state"], "cancelled");
    assert_eq!((d["cancel_by"].as_str(), d["cancel_reason"].as_str()), (Some("admin"), Some("changed my mind")));

    let (status, again) = s.cancel(&id, "twice").await;
    assert_eq!(status, 409, "{again}");
    assert!(again["error"].as_str().unwrap_or_default().contains("cancelled"), "{again}");
    let (status, _) = s.cancel(&uuid::Uuid::now_v7().to_string(), "unknown").await;
    assert_eq!(status, 404);
    let (status, _) = s.cancel("not-an-id", "bad").await;
    assert_eq!(status, 400);
    let (status, bad) = s.cancel(&id, "bell\u{7}").await;
    assert_eq!(status, 422, "{bad}");
    let (status, bad) = s.post(&format!("/api/v1/deployments/{id}/cancel"), &json!({"reason": 5})).await;
    assert_eq!(status, 400, "{bad}");

    s.add_runner();
    let later = commit(&git, &repo, "v2", &dockerfile("true", HTTPD));
    let next = push(&s, &url, &later).await;
    assert_eq!(s.finished(&next, FINISH).await["state"], "completed");
    let d = s.deployment(&id).await;
    assert!(d["steps"].as_array().is_none_or(|st| st.is_empty()), "the cancelled deployment never ran: {d}");
}

#[tokio::test]
async fn cancelling_during_the_build_stops_it_and_leaves_nothing_behind() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("cancel-build");
    let url = git.url(&repo);
    let app = s.create_app("cancel-build", &url, SECRET, json!({})).await;
    let marker = unique("slow-build");
    let id =
        push(&s, &url, &commit(&git, &repo, "slow", &dockerfile(&format!("echo {marker} && sleep 120"), HTTPD))).await;
    eventually(Duration::from_secs(90), "the slow build step to run", || async {
        (!containers_running(&marker).is_empty()).then_some(())
    })
    .await;

    let (d, took) = cancel_and_finish(&s, &id, 202).await;
    assert_cancelled(&d, "build");
    assert!(took < STOPPED, "the 120 s build was stopped, not waited for ({took:?})");
    eventually(Duration::from_secs(20), "the build container to be removed", || async {
        containers_running(&marker).is_empty().then_some(())
    })
    .await;
    assert!(workspaces(&s.work_dir("runner-1")).is_empty(), "{:?}", workspaces(&s.work_dir("runner-1")));
    assert!(labelled(&format!("dev.slipway.app={app}")).is_empty());
}

#[tokio::test]
async fn cancelling_during_the_clone_interrupts_the_fetch() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("cancel-clone");
    // 4 MB that do not compress, through a proxy that passes 16 KB every 100 ms: a 25 s fetch.
    let mut noise = vec![0u8; 4 * 1024 * 1024];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut files = dockerfile("true", HTTPD);
    files.push(("noise.bin".into(), noise));
    let sha = commit(&git, &repo, "big", &files);
    let proxy = Proxy::start(git.url(&repo).trim_start_matches("git://").split('/').next().expect("host")).await;
    proxy.throttle(16 * 1024);
    let url = format!("git://127.0.0.1:{}/{repo}.git", proxy.port);
    s.create_app("cancel-clone", &url, SECRET, json!({})).await;
    let id = push(&s, &url, &sha).await;
    eventually(Duration::from_secs(60), "the fetch to be under way", || async {
        (proxy.forwarded() > 64 * 1024).then_some(())
    })
    .await;

    let (d, took) = cancel_and_finish(&s, &id, 202).await;
    assert_cancelled(&d, "clone");
    assert!(took < Duration::from_secs(15), "the fetch was interrupted, not waited for ({took:?})");
    assert!(proxy.forwarded() < 3 * 1024 * 1024, "the fetch did not run to its end");
    assert!(workspaces(&s.work_dir("runner-1")).is_empty(), "{:?}", workspaces(&s.work_dir("runner-1")));
}

#[tokio::test]
async fn cancelling_during_the_tests_removes_the_test_container_and_image() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions {
        runner_env: vec![("SLIPWAY_BASE_IMAGES".into(), BASES.into()), ("SLIPWAY_TEST_MEMORY_MB".into(), "256".into())],
        ..Default::default()
    })
    .await;
    let repo = unique("cancel-test");
    let url = git.url(&repo);
    let name = unique("cancel-test-app");
    let toml = "install = \"mkdir -p node_modules\"\nstart = \"httpd -f -p $PORT -h /app/www\"\ntest = \"sleep 120\"\nhealth_path = \"/healthz\"\n";
    let files: Vec<(String, Vec<u8>)> = vec![
        ("package.json".into(), format!(r#"{{"name":"{name}","scripts":{{"start":"node server.js"}}}}"#).into_bytes()),
        ("package-lock.json".into(), br#"{"lockfileVersion":3}"#.to_vec()),
        ("slipway.toml".into(), toml.as_bytes().to_vec()),
        ("www/healthz".into(), b"ok\n".to_vec()),
    ];
    s.create_app("cancel-test", &url, SECRET, json!({"port": 8080})).await;
    let id = push(&s, &url, &commit(&git, &repo, "slow tests", &files)).await;
    let label = format!("dev.slipway.deployment={id}");
    eventually(Duration::from_secs(90), "the test container to run", || {
        let (s, id, label) = (&s, id.clone(), label.clone());
        async move {
            let d = s.deployment(&id).await;
            assert!(!["completed", "failed", "cancelled"].contains(&d["state"].as_str().unwrap_or("")), "ended: {d}");
            (!labelled(&label).is_empty()).then_some(())
        }
    })
    .await;

    let (d, took) = cancel_and_finish(&s, &id, 202).await;
    assert_cancelled(&d, "test");
    assert!(took < STOPPED, "the 120 s tests were stopped ({took:?})");
    assert!(labelled(&label).is_empty(), "the test container is gone");
    let images = docker(&["images", "-aq", "--filter", &format!("label=dev.slipway.job={}/runner-1/{id}", s.prefix)])
        .expect("docker images");
    assert!(images.trim().is_empty(), "the test image is gone: {images}");
    assert!(workspaces(&s.work_dir("runner-1")).is_empty());
}

#[tokio::test]
async fn cancelling_during_the_deploy_lets_it_finish_and_reports_the_truth() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("cancel-deploy");
    let url = git.url(&repo);
    s.create_app("cancel-deploy", &url, SECRET, json!({})).await;
    let slow_start = r#"["sh", "-c", "sleep 4 && exec httpd -f -p 8080 -h /www"]"#;
    let id = push(&s, &url, &commit(&git, &repo, "slow start", &dockerfile("true", slow_start))).await;
    wait_for_step(&s, &id, "deploy").await;

    let (d, _) = cancel_and_finish(&s, &id, 202).await;
    assert_eq!(d["state"], "completed", "a deploy switching traffic is never cut off: {d}");
    assert_eq!(d["cancel_by"], "admin", "the request is on record: {d}");
    assert!(s.app_body(d["url"].as_str().expect("url"), "/healthz").await.is_some(), "and it serves");
}

#[tokio::test]
async fn a_stale_copy_of_a_finished_job_changes_nothing() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("stale");
    let url = git.url(&repo);
    let app = s.create_app("stale", &url, SECRET, json!({})).await;
    let mut v1 = dockerfile("true", HTTPD);
    v1[1].1 = b"<p>version one</p>\n".to_vec();
    let old_sha = commit(&git, &repo, "v1", &v1);
    let old = push(&s, &url, &old_sha).await;
    assert_eq!(s.finished(&old, FINISH).await["state"], "completed");
    let mut v2 = dockerfile("true", HTTPD);
    v2[1].1 = b"<p>version two</p>\n".to_vec();
    let new = push(&s, &url, &commit(&git, &repo, "v2", &v2)).await;
    let newest = s.finished(&new, FINISH).await;
    assert_eq!(newest["state"], "completed");
    let before = s.deployment(&old).await;

    // A delayed copy of the old job (as a redelivery or a republish after a crash would bring).
    s.publish_job(&json!({
        "deployment_id": old, "attempt": 1, "sha": old_sha, "git_ref": "refs/heads/main",
        "app": {"name": app, "repo_url": url, "environment": "production", "target": "docker", "port": 8080,
                "health_path": "/healthz", "env": {}}
    }))
    .await;
    eventually(Duration::from_secs(30), "the runner to drop the refused copy", || async {
        s.runners[0].output().contains("claim refused").then_some(())
    })
    .await;

    assert_eq!(s.deployment(&old).await, before, "the old deployment is untouched");
    let live = newest["url"].as_str().expect("url");
    assert!(s.app_body(live, "/").await.expect("serves").contains("version two"), "the newer version still serves");
    let running = docker(&["ps", "-q", "--filter", &format!("label=dev.slipway.app={app}")]).expect("docker ps");
    assert_eq!(running.split_whitespace().count(), 1, "one container of the app runs");
    assert_eq!(s.deployment(&new).await["state"], "completed");
}

#[tokio::test]
async fn a_runner_killed_mid_build_removes_its_leftovers_when_it_starts_again() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { lease_seconds: 4, heartbeat_seconds: 1, ..Default::default() }).await;
    let repo = unique("leftovers");
    let url = git.url(&repo);
    s.create_app("leftovers", &url, SECRET, json!({})).await;
    let (id, _) = push_slow_build(&s, &git, &repo, &url, 8).await;
    s.runners[0].kill9();
    let work = s.work_dir("runner-1");
    assert_eq!(workspaces(&work).len(), 1, "SIGKILL left the workspace behind");

    s.restart_runner(0);
    eventually(Duration::from_secs(30), "the new life to remove the old workspace", || async {
        s.runners[0].output().contains("removed what an earlier run of this runner left").then_some(())
    })
    .await;
    let d = s.finished(&id, FINISH).await;
    assert_eq!(d["state"], "completed", "{d}\n{}", s.dump());
    assert_eq!(d["attempt"], 2, "{d}\n{}", s.dump());
    assert!(d["error_message"].is_null(), "a completed deployment keeps no earlier attempt's error: {d}");
    assert!(workspaces(&work).is_empty(), "{:?}", workspaces(&work));
    let mine = docker(&[
        "ps",
        "-aq",
        "--filter",
        "label=dev.slipway.runner=runner-1",
        "--filter",
        &format!("label=dev.slipway.installation={}", s.prefix),
    ])
    .expect("docker ps");
    assert!(mine.trim().is_empty(), "no container of this runner is left: {mine}");
}

#[tokio::test]
async fn a_broker_outage_longer_than_the_lease_does_not_expire_a_running_job() {
    let broker = PrivateBroker::start("", "");
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions {
        amqp_url: broker.url(),
        lease_seconds: 10,
        heartbeat_seconds: 1,
        ..Default::default()
    })
    .await;
    let repo = unique("outage-lease");
    let url = git.url(&repo);
    s.create_app("outage-lease", &url, SECRET, json!({})).await;
    let (id, _) = push_slow_build(&s, &git, &repo, &url, 25).await;

    broker.stop();
    // The fault under test: the outage lasts until the job's last heartbeat is older than one
    // and a half leases, so an unpaused reaper would have expired it.
    heartbeat_older_than(&s, &id, Duration::from_secs(15)).await;
    // Meanwhile the scheduler says it is not ready: the broker is out of reach.
    let health: serde_json::Value =
        s.anonymous.get(format!("{}/healthz", s.base)).send().await.expect("healthz").json().await.expect("json");
    assert_eq!(
        (health["status"].as_str(), health["broker"].as_str()),
        (Some("unavailable"), Some("unreachable")),
        "{health}"
    );
    broker.restart();

    let d = s.finished(&id, FINISH).await;
    assert_eq!(d["state"], "completed", "{d}\n{}", s.dump());
    assert_eq!(d["attempt"], 1, "the outage did not expire the lease of a running job: {d}");
}

#[tokio::test]
async fn the_api_answers_503_at_once_while_postgresql_is_unreachable() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { runners: 0, database_proxy: true, ..Default::default() }).await;
    let repo = unique("db-down");
    let url = git.url(&repo);
    s.create_app("db-down", &url, SECRET, json!({})).await;
    let sha = commit(&git, &repo, "v1", &dockerfile("true", HTTPD));

    s.db_proxy.as_ref().expect("proxy").cut();
    let started = Instant::now();
    let body = slipway_tests::harness::push_body(&url, "refs/heads/main", &sha);
    let resp = s
        .http
        .post(format!("{}/api/v1/webhooks/github", s.base))
        .header("content-type", "application/json")
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", "db-down-delivery")
        .header("X-Hub-Signature-256", slipway_tests::harness::sign(SECRET, &body))
        .body(body)
        .send()
        .await
        .expect("scheduler answers");
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().get("retry-after").is_some(), "says when to retry");
    assert!(started.elapsed() < Duration::from_secs(5), "fast, well inside GitHub's 10 s ({:?})", started.elapsed());
    // Not ready: a load balancer or kubelet takes this replica out while it cannot reach the database.
    let health = s.anonymous.get(format!("{}/healthz", s.base)).send().await.expect("healthz");
    assert_eq!(health.status().as_u16(), 503);
    let health: serde_json::Value = health.json().await.expect("json");
    assert_eq!(
        (health["status"].as_str(), health["database"].as_str()),
        (Some("unavailable"), Some("unreachable")),
        "{health}"
    );
    // The relay keeps its broker channel through a database outage: once it has met the outage,
    // the broker is still not blamed.
    eventually(Duration::from_secs(10), "the relay to meet the outage", || async {
        s.scheduler.output().contains("the outbox cannot be read").then_some(())
    })
    .await;
    let health: serde_json::Value =
        s.anonymous.get(format!("{}/healthz", s.base)).send().await.expect("healthz").json().await.expect("json");
    assert_eq!((health["database"].as_str(), health["broker"].as_str()), (Some("unreachable"), Some("ok")), "{health}");

    s.db_proxy.as_ref().expect("proxy").restore();
    eventually(Duration::from_secs(30), "the scheduler to be ready again", || async {
        let health = s.anonymous.get(format!("{}/healthz", s.base)).send().await.ok()?;
        health.status().is_success().then_some(())
    })
    .await;
    let (status, answer) = eventually(Duration::from_secs(30), "the scheduler to reach PostgreSQL again", || async {
        let (status, answer) = s.push(&url, &sha, SECRET, "db-down-delivery").await;
        (status != 503).then_some((status, answer))
    })
    .await;
    assert_eq!(status, 202, "{answer}");
}

#[tokio::test]
async fn an_unreachable_git_server_is_an_infrastructure_failure_and_is_retried() {
    let mut s = Slipway::start(SlipwayOptions { max_attempts: 2, ..Default::default() }).await;
    let url = format!("git://127.0.0.1:{}/gone.git", slipway_tests::free_port());
    s.create_app("git-down", &url, SECRET, json!({})).await;
    let id = push(&s, &url, "0123456789abcdef0123456789abcdef01234567").await;
    let d = s.finished(&id, FINISH).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert_eq!((d["error_step"].as_str(), d["error_cause"].as_str()), (Some("clone"), Some("infrastructure")), "{d}");
    assert_eq!(d["attempt"], 2, "retried: {d}");
}

#[tokio::test]
async fn a_git_server_that_never_answers_holds_neither_a_request_nor_a_runner() {
    // Accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let mut s = Slipway::start(SlipwayOptions {
        max_attempts: 1,
        runner_env: vec![("SLIPWAY_GIT_TIMEOUT_SECONDS".into(), "2".into())],
        ..Default::default()
    })
    .await;
    let url = format!("git://127.0.0.1:{port}/silent.git");
    let app = s.create_app("silent", &url, SECRET, json!({})).await;

    let asked = Instant::now();
    let (status, answer) = s.post(&format!("/api/v1/apps/{app}/deployments"), &json!({})).await;
    assert_eq!(status, 202, "{answer}\n{}", s.dump());
    assert!(asked.elapsed() < Duration::from_secs(2), "the request does not wait for git ({:?})", asked.elapsed());
    assert!(answer["sha"].is_null(), "the head is resolved by the runner: {answer}");
    let id = answer["deployment_id"].as_str().expect("id");
    let d = s.finished(id, Duration::from_secs(60)).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert_eq!((d["error_step"].as_str(), d["error_cause"].as_str()), (Some("clone"), Some("infrastructure")), "{d}");
    assert!(d["error_message"].as_str().unwrap_or_default().contains("timed out"), "says what timed out: {d}");

    // A commit given explicitly: the fetch times out the same way.
    let (status, answer) = s
        .post(&format!("/api/v1/apps/{app}/deployments"), &json!({"sha": "0123456789abcdef0123456789abcdef01234567"}))
        .await;
    assert_eq!(status, 202, "{answer}");
    let d = s.finished(answer["deployment_id"].as_str().expect("id"), Duration::from_secs(60)).await;
    assert_eq!((d["error_step"].as_str(), d["error_cause"].as_str()), (Some("clone"), Some("infrastructure")), "{d}");
    held.abort();
}

#[tokio::test]
async fn a_duplicate_copy_of_a_running_job_is_refused_and_it_deploys_once() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { runners: 2, ..Default::default() }).await;
    let repo = unique("duplicate");
    let url = git.url(&repo);
    let app = s.create_app("duplicate", &url, SECRET, json!({})).await;
    let (id, sha) = push_slow_build(&s, &git, &repo, &url, 6).await;

    // The relay's publish confirmed, then a crash before the row was marked: the job again.
    s.publish_job(&json!({
        "deployment_id": id, "attempt": 1, "sha": sha, "git_ref": "refs/heads/main",
        "app": {"name": app, "repo_url": url, "environment": "production", "target": "docker", "port": 8080,
                "health_path": "/healthz", "env": {}}
    }))
    .await;
    eventually(Duration::from_secs(30), "the copy to be refused", || async {
        s.runners.iter().any(|r| r.output().contains("claim refused")).then_some(())
    })
    .await;

    let d = s.finished(&id, FINISH).await;
    assert_eq!(d["state"], "completed", "{d}");
    assert_eq!(d["attempt"], 1);
    let deploys = d["steps"].as_array().expect("steps").iter().filter(|st| st["step"] == "deploy").count();
    assert_eq!(deploys, 1, "deployed once: {d}");
    assert_eq!(labelled(&format!("dev.slipway.app={app}")).len(), 1);
}

#[tokio::test]
async fn a_client_following_logs_does_not_hold_the_schedulers_shutdown_open() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { runners: 0, ..Default::default() }).await;
    let repo = unique("shutdown");
    let url = git.url(&repo);
    s.create_app("shutdown", &url, SECRET, json!({})).await;
    let id = push(&s, &url, &commit(&git, &repo, "v1", &dockerfile("true", HTTPD))).await;
    let resp = s
        .http
        .get(format!("{}/api/v1/deployments/{id}/logs?follow=true", s.base))
        .send()
        .await
        .expect("the log stream opens");
    assert_eq!(resp.status().as_u16(), 200);

    let started = Instant::now();
    // Blocks this test's thread while the scheduler shuts down; nothing here needs to run meanwhile.
    let exited = s.scheduler.terminate();
    assert!(exited, "the scheduler exits cleanly on SIGTERM");
    assert!(started.elapsed() < Duration::from_secs(20), "shutdown is bounded ({:?})", started.elapsed());
    let rest = tokio::time::timeout(Duration::from_secs(10), resp.text()).await;
    assert!(rest.is_ok(), "the follower's stream ended with the scheduler");
}

#[tokio::test]
async fn cancelling_during_the_push_stops_it() {
    let git = GitServer::start();
    // The registry behind a proxy that passes 16 KB every 100 ms: a push of 4 MB takes 25 s.
    let registry = Proxy::start(&slipway_tests::env("SLIPWAY_REGISTRY")).await;
    let mut s =
        Slipway::start(SlipwayOptions { registry: Some(format!("127.0.0.1:{}", registry.port)), ..Default::default() })
            .await;
    let repo = unique("cancel-push");
    let url = git.url(&repo);
    s.create_app("cancel-push", &url, SECRET, json!({})).await;
    let marker = unique("big-layer");
    let run = format!("echo {marker} && head -c 4194304 /dev/urandom > /noise");
    registry.throttle(16 * 1024);
    let id = push(&s, &url, &commit(&git, &repo, "big", &dockerfile(&run, HTTPD))).await;
    wait_for_step(&s, &id, "push").await;
    let before = registry.forwarded();
    eventually(Duration::from_secs(60), "the push to be under way", || async {
        (registry.forwarded() > before + 64 * 1024).then_some(())
    })
    .await;

    let (d, took) = cancel_and_finish(&s, &id, 202).await;
    assert_cancelled(&d, "push");
    assert!(took < STOPPED, "the push was stopped, not waited for ({took:?})");
    assert!(workspaces(&s.work_dir("runner-1")).is_empty());
}

#[tokio::test]
async fn a_database_outage_longer_than_the_lease_does_not_expire_a_running_job() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions {
        database_proxy: true,
        lease_seconds: 4,
        heartbeat_seconds: 1,
        ..Default::default()
    })
    .await;
    let repo = unique("db-outage");
    let url = git.url(&repo);
    s.create_app("db-outage", &url, SECRET, json!({})).await;
    let (id, _) = push_slow_build(&s, &git, &repo, &url, 20).await;

    s.db_proxy.as_ref().expect("proxy").cut();
    // The fault under test: the scheduler cannot write until the job's last applied heartbeat
    // is twice the lease old; the heartbeats queue up in RabbitMQ meanwhile.
    heartbeat_older_than(&s, &id, Duration::from_secs(8)).await;
    s.db_proxy.as_ref().expect("proxy").restore();

    let d = s.finished(&id, FINISH).await;
    assert_eq!(d["state"], "completed", "{d}\n{}", s.dump());
    assert_eq!(d["attempt"], 1, "the backlog of heartbeats was applied before any lease could expire: {d}");
}
