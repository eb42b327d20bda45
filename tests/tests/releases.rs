//! Releases on the real services: every deployment records its image and configuration; a
//! configuration change deploys the live image with it (no clone, no build); one that fails its
//! health check leaves the previous release serving; a rollback restores image and
//! configuration together; the diff names what changed and never a secret value.

use std::time::Duration;

use serde_json::{Value, json};
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, unique};

const SECRET: &str = "releases-secret-0123456789";
const FINISH: Duration = Duration::from_secs(120);

/// A site that writes its `GREETING` to `/greeting.txt` when it starts.
fn commit(git: &GitServer, repo: &str, marker: &str) -> String {
    let dockerfile = "FROM slipway/busybox:1\nCOPY www /www\n\
        CMD [\"sh\", \"-c\", \"echo \\\"greeting=$GREETING\\\" > /www/greeting.txt && exec httpd -f -p 8080 -h /www\"]\n";
    let index = format!("<p>{marker}</p>\n");
    git.commit(
        repo,
        marker,
        &[
            Entry::File("Dockerfile", dockerfile.as_bytes()),
            Entry::File("www/index.html", index.as_bytes()),
            Entry::File("www/healthz", b"ok\n"),
        ],
    )
}

/// Runs the CLI with `--json` and reads its answer.
fn cli(s: &Slipway, args: &[&str]) -> Value {
    let out = s.cli_command().arg("--json").args(args).output().expect("slipway");
    assert!(out.status.success(), "slipway {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

async fn greeting(s: &Slipway, url: &str) -> String {
    s.app_body(url, "/greeting.txt").await.unwrap_or_default().trim().to_string()
}

#[tokio::test]
async fn configuration_changes_are_releases_deployed_without_a_build_and_a_rollback_restores_image_and_config() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { health_timeout_seconds: 5, ..Default::default() }).await;
    let repo = unique("releases");
    let url = git.url(&repo);
    let old_token = "tok-release-one-123456";
    let app = s
        .create_app(
            "releases",
            &url,
            SECRET,
            json!({"env": {"GREETING": "one", "API_TOKEN": {"value": old_token, "secret": true}}}),
        )
        .await;

    // v1: a push.
    let sha = commit(&git, &repo, "first");
    let (status, answer) = s.push(&url, &sha, SECRET, "releases-1").await;
    assert_eq!(status, 202, "{answer}");
    let v1 = s.finished(answer["deployments"][0]["deployment_id"].as_str().expect("id"), FINISH).await;
    assert_eq!(v1["state"], "completed", "{v1}");
    let live = v1["url"].as_str().expect("url").to_string();
    assert_eq!(greeting(&s, &live).await, "greeting=one");

    // v2: the environment changes; the live image is deployed with it, nothing is built.
    let new_token = "tok-release-two-654321";
    let answer = cli(&s, &["env", "set", &app, "GREETING=two", "--secret", &format!("API_TOKEN={new_token}")]);
    assert_eq!(answer["release"], 2, "{answer}");
    let v2 = s.finished(answer["deployment_id"].as_str().expect("id"), FINISH).await;
    assert_eq!((v2["state"].as_str(), v2["source"].as_str()), (Some("completed"), Some("config")), "{v2}");
    assert_eq!(v2["sha"], sha.as_str());
    for step in ["clone", "build", "test", "push"] {
        let status =
            v2["steps"].as_array().expect("steps").iter().find(|st| st["step"] == step).map(|st| st["status"].clone());
        assert_eq!(status, Some(json!("skipped")), "{step} is not run for a configuration change: {v2}");
    }
    assert_eq!(greeting(&s, &live).await, "greeting=two", "the stable address serves the new configuration");
    assert!(!answer.to_string().contains(new_token), "the answer never shows a secret: {answer}");

    // v3: a setting that breaks the health check (nothing listens on 9999): it fails, and v2 serves on.
    let answer = cli(&s, &["apps", "update", &app, "--port", "9999"]);
    let v3 = s.finished(answer["deployment_id"].as_str().expect("id"), FINISH).await;
    assert_eq!((v3["state"].as_str(), v3["error_step"].as_str()), (Some("failed"), Some("deploy")), "{v3}");
    assert_eq!(greeting(&s, &live).await, "greeting=two", "the previous release keeps serving");
    // v4: set back.
    let answer = cli(&s, &["apps", "update", &app, "--port", "8080"]);
    let v4 = s.finished(answer["deployment_id"].as_str().expect("id"), FINISH).await;
    assert_eq!(v4["state"], "completed", "{v4}");

    // Every release, with who made it and why.
    let releases = cli(&s, &["releases", &app]);
    let rows: Vec<(u64, String, String)> = releases
        .as_array()
        .expect("releases")
        .iter()
        .map(|r| {
            (
                r["version"].as_u64().unwrap_or(0),
                r["state"].as_str().unwrap_or("").to_string(),
                r["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [4, 3, 2, 1], "{releases}");
    assert!(rows[3].2.starts_with(&format!("push of {}", &sha[..12])), "{rows:?}");
    assert_eq!(rows[2].2, "env set API_TOKEN, GREETING", "{rows:?}");
    assert_eq!((rows[1].1.as_str(), rows[1].2.as_str()), ("failed", "settings changed: port"));
    assert_eq!(releases[0]["live"], true);
    assert_eq!(releases[1]["created_by"], "admin", "{releases}");

    // What changed from v1 to v2: the greeting, and that the token changed (never its values).
    let diff = cli(&s, &["releases", &app, "--diff", "v1", "v2"]);
    let changes = diff["changes"].as_array().expect("changes");
    let keys: Vec<&str> = changes.iter().filter_map(|c| c["key"].as_str()).collect();
    assert_eq!(keys, ["env.API_TOKEN", "env.GREETING"], "{diff}");
    assert_eq!((changes[1]["from"].as_str(), changes[1]["to"].as_str()), (Some("one"), Some("two")));
    assert_eq!(changes[0]["secret"], true);
    let text = diff.to_string();
    assert!(!text.contains(old_token) && !text.contains(new_token), "{text}");
    assert!(diff["image"].is_null(), "a configuration change keeps the image: {diff}");
    let out = s.cli_command().args(["releases", &app, "--diff", "1", "2"]).output().expect("slipway");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("env.API_TOKEN: changed (secret)") && table.contains("env.GREETING: one -> two"), "{table}");
    let (status, _) = s.get(&format!("/api/v1/apps/{app}/releases/v1/diff/v99")).await;
    assert_eq!(status, 404);
    let (status, _) = s.get(&format!("/api/v1/apps/{app}/releases/one/diff/v2")).await;
    assert_eq!(status, 400);

    // A rollback to v1 brings back its image and its configuration, though the app's is now v4's.
    let out = s.cli_command().args(["rollback", &app, "--to", "v1"]).output().expect("rollback");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let latest = s.deployments_of(&app).await;
    let rollback = latest.iter().find(|d| d["source"] == "rollback").expect("the rollback deployment");
    let v5 = s.finished(rollback["id"].as_str().expect("id"), FINISH).await;
    assert_eq!(v5["state"], "completed", "{v5}");
    assert_eq!(greeting(&s, &live).await, "greeting=one", "v1's configuration is back with v1");
    let releases = cli(&s, &["releases", &app]);
    assert_eq!(releases[0]["reason"].as_str(), Some(format!("rollback to release v1 ({})", &sha[..12]).as_str()));
    let diff = cli(&s, &["releases", &app, "--diff", "v1", "v5"]);
    assert_eq!(diff["changes"], json!([]), "v5 is v1 again: {diff}");
}

#[tokio::test]
async fn configuration_changes_are_checked_and_need_a_deployer() {
    let mut s = Slipway::start(SlipwayOptions { runners: 0, ..Default::default() }).await;
    let app = s.create_app("cfg", "git://127.0.0.1:1/cfg.git", SECRET, json!({"env": {"KEEP": "x"}})).await;
    // Nothing is live yet: saved for the next deployment, nothing deployed.
    let (status, answer) = s.patch(&format!("/api/v1/apps/{app}/env"), &json!({"set": {"NEW": "y"}})).await;
    assert_eq!((status, answer["deployment_id"].clone()), (200, Value::Null), "{answer}");
    assert_eq!(answer["app"]["env"]["NEW"], "y");
    for (body, needle) in [
        (json!({}), "nothing to change"),
        (json!({"unset": ["MISSING"]}), "`MISSING` is not a variable"),
        (json!({"set": {"1BAD": "x"}}), "1BAD"),
        (json!({"set": {"API_TOKEN": "short"}}), "API_TOKEN"),
        (json!({"set": {"NUL": "a\u{0}b"}}), "NUL byte"),
    ] {
        let (status, answer) = s.patch(&format!("/api/v1/apps/{app}/env"), &body).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(answer.to_string().contains(needle), "{body}: {answer}");
    }
    let (status, answer) = s.patch(&format!("/api/v1/apps/{app}/env"), &json!({"sett": {}})).await;
    assert_eq!(status, 400, "{answer}");
    for (body, needle) in [
        (json!({"port": 0}), "port"),
        (json!({"health_path": "nope"}), "health_path"),
        (json!({"watch_paths": ["a/{b"]}), "not a glob"),
        (json!({"limits": {"memory_mb": 1}}), "memory"),
    ] {
        let (status, answer) = s.patch(&format!("/api/v1/apps/{app}"), &body).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(answer.to_string().contains(needle), "{body}: {answer}");
    }
    // Watch paths are not a deployed setting: saved, no release.
    let (status, answer) = s.patch(&format!("/api/v1/apps/{app}"), &json!({"watch_paths": ["src/**"]})).await;
    assert_eq!((status, answer["app"]["watch_paths"].clone()), (200, json!(["src/**"])), "{answer}");
    // A viewer reads releases but changes nothing; no token, nothing at all.
    let viewer = s.create_token("cfg-viewer", "viewer", None).await;
    let refused = s
        .client(&viewer)
        .patch(format!("{}/api/v1/apps/{app}/env", s.base))
        .json(&json!({"set": {"A": "b"}}))
        .send()
        .await;
    assert_eq!(refused.expect("send").status().as_u16(), 403);
    let listed = s.client(&viewer).get(format!("{}/api/v1/apps/{app}/releases", s.base)).send().await.expect("send");
    assert_eq!(listed.status().as_u16(), 200);
    let anonymous = s.anonymous.get(format!("{}/api/v1/apps/{app}/releases", s.base)).send().await.expect("send");
    assert_eq!(anonymous.status().as_u16(), 401);
    let anonymous = s.anonymous.patch(format!("{}/api/v1/apps/{app}", s.base)).json(&json!({"port": 80})).send().await;
    assert_eq!(anonymous.expect("send").status().as_u16(), 401);
}

/// A site whose `slipway.toml` declares `release`, and whose start waits `start_delay` seconds
/// before it answers (so a deploy step can be caught in the middle).
fn with_release(git: &GitServer, repo: &str, marker: &str, release: &str, start_delay: u32) -> String {
    let dockerfile = format!(
        "FROM slipway/busybox:1\nCOPY www /www\n\
         CMD [\"sh\", \"-c\", \"sleep {start_delay}; echo \\\"greeting=$GREETING\\\" > /www/greeting.txt && exec httpd -f -p 8080 -h /www\"]\n"
    );
    site_with(git, repo, marker, &dockerfile, &format!("release = {release}\n"))
}

/// A commit of a site: its Dockerfile and `slipway.toml`, an index naming `marker`, a health file.
fn site_with(git: &GitServer, repo: &str, marker: &str, dockerfile: &str, toml: &str) -> String {
    let index = format!("<p>{marker}</p>\n");
    git.commit(
        repo,
        marker,
        &[
            Entry::File("Dockerfile", dockerfile.as_bytes()),
            Entry::File("slipway.toml", toml.as_bytes()),
            Entry::File("www/index.html", index.as_bytes()),
            Entry::File("www/healthz", b"ok\n"),
        ],
    )
}

fn step_of(d: &Value, attempt: u64, step: &str) -> Option<Value> {
    d["steps"].as_array()?.iter().find(|s| s["attempt"] == attempt && s["step"] == step).cloned()
}

async fn log_text(s: &Slipway, id: &str) -> String {
    s.log_lines(id, None).await.into_iter().map(|(_, line)| line).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn the_release_command_runs_once_before_traffic_moves_and_a_failing_one_switches_nothing() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { lease_seconds: 6, heartbeat_seconds: 1, ..Default::default() }).await;
    let repo = unique("migrate");
    let url = git.url(&repo);
    let app = s.create_app("migrate", &url, SECRET, json!({"env": {"GREETING": "one"}})).await;
    let release = r#"["sh", "-c", "echo migrating for $GREETING; test \"$FAIL\" != yes"]"#;

    // It runs after the push and before the deploy step, with the app's environment.
    let sha = with_release(&git, &repo, "v1", release, 0);
    let (status, answer) = s.push(&url, &sha, SECRET, "migrate-1").await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let d = s.finished(&id, FINISH).await;
    assert_eq!(d["state"], "completed", "{d}");
    let ran = step_of(&d, 1, "release").expect("a release step");
    let deploy = step_of(&d, 1, "deploy").expect("a deploy step");
    assert_eq!(ran["status"], "succeeded", "{d}");
    assert!(ran["finished_at"].as_str() <= deploy["started_at"].as_str(), "release before any traffic moved: {d}");
    assert!(log_text(&s, &id).await.contains("migrating for one"), "its output is in the log");
    let live = d["url"].as_str().expect("url").to_string();

    // A configuration change runs it too (the command travels with the image); a failure is the
    // user's, and nothing is switched.
    let out =
        s.cli_command().args(["--json", "env", "set", &app, "FAIL=yes", "GREETING=two"]).output().expect("env set");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).expect("json");
    let failed = s.finished(answer["deployment_id"].as_str().expect("id"), FINISH).await;
    assert_eq!(
        (failed["state"].as_str(), failed["error_step"].as_str(), failed["error_cause"].as_str()),
        (Some("failed"), Some("release"), Some("user")),
        "{failed}"
    );
    assert!(failed["error_message"].as_str().unwrap_or_default().contains("exit code 1"), "{failed}");
    assert!(step_of(&failed, 1, "deploy").is_none_or(|st| st["status"] != "succeeded"), "{failed}");
    assert_eq!(greeting(&s, &live).await, "greeting=one", "the previous release keeps serving");
    let out = s.cli_command().args(["env", "unset", &app, "FAIL"]).output().expect("env unset");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The runner dies after the command succeeded, in the middle of the deploy step: the next
    // attempt does not run it again.
    let sha = with_release(&git, &repo, "v2", r#""echo migration-two-ran""#, 8);
    let (_, answer) = s.push(&url, &sha, SECRET, "migrate-2").await;
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    slipway_tests::eventually(FINISH, "the deploy step to start", || async {
        let d = s.deployment(&id).await;
        step_of(&d, 1, "deploy").filter(|st| st["status"] == "running").map(|_| ())
    })
    .await;
    s.restart_runner(0);
    let d = s.finished(&id, FINISH).await;
    assert_eq!((d["state"].as_str(), d["attempt"].as_u64()), (Some("completed"), Some(2)), "{d}");
    assert_eq!(step_of(&d, 2, "release").map(|st| st["status"].clone()), Some(json!("skipped")), "{d}");
    let log = log_text(&s, &id).await;
    let ran = log.lines().filter(|l| l.trim() == "migration-two-ran").count();
    assert_eq!(ran, 1, "its output once: it ran once across both attempts:\n{log}");
    assert!(log.contains("ran in attempt 1 and succeeded; not run again"), "{log}");

    // The runner dies while the command runs: how it ended is unknown, so it is never run again
    // and the deployment fails saying so.
    let sha = with_release(&git, &repo, "v3", r#""echo migration-three-started; sleep 30""#, 0);
    let (_, answer) = s.push(&url, &sha, SECRET, "migrate-3").await;
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    slipway_tests::eventually(FINISH, "the release command to start", || async {
        log_text(&s, &id).await.lines().any(|l| l.trim() == "migration-three-started").then_some(())
    })
    .await;
    s.restart_runner(0);
    let d = s.finished(&id, FINISH).await;
    assert_eq!((d["state"].as_str(), d["error_step"].as_str()), (Some("failed"), Some("release")), "{d}");
    assert!(d["error_message"].as_str().unwrap_or_default().contains("never runs twice"), "{d}");
    let log = log_text(&s, &id).await;
    assert_eq!(log.lines().filter(|l| l.trim() == "migration-three-started").count(), 1, "{log}");
    assert_eq!(greeting(&s, &live).await, "greeting=two", "v2 still serves");
}

#[tokio::test]
async fn a_failing_pre_deploy_hook_stops_the_deployment_and_a_failing_post_deploy_hook_is_reported_only() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("hooks");
    let url = git.url(&repo);
    s.create_app("hooks", &url, SECRET, json!({"env": {"GREETING": "hooked"}})).await;
    let commit = |marker: &str, pre: &str, post: &str| {
        let toml = format!("pre_deploy = {pre}\npost_deploy = {post}\n");
        let dockerfile = "FROM slipway/busybox:1\nCOPY www /www\n\
            CMD [\"sh\", \"-c\", \"echo \\\"greeting=$GREETING\\\" > /www/greeting.txt && exec httpd -f -p 8080 -h /www\"]\n";
        site_with(&git, &repo, marker, dockerfile, &toml)
    };
    // pre_deploy passes (with the app's environment), post_deploy fails after the switch: the
    // deployment completes, the hook's step says it failed.
    let sha = commit("v1", r#""echo pre-deploy sees $GREETING""#, r#"["sh", "-c", "echo purging; exit 3"]"#);
    let (_, answer) = s.push(&url, &sha, SECRET, "hooks-1").await;
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let d = s.finished(&id, FINISH).await;
    assert_eq!(d["state"], "completed", "{d}");
    assert_eq!(step_of(&d, 1, "pre_deploy").map(|st| st["status"].clone()), Some(json!("succeeded")), "{d}");
    let post = step_of(&d, 1, "post_deploy").expect("post_deploy step");
    assert_eq!(post["status"], "failed", "{d}");
    assert!(post["error"].as_str().unwrap_or_default().contains("exit code 3"), "{post}");
    assert!(
        post["started_at"].as_str()
            >= step_of(&d, 1, "deploy").and_then(|st| st["finished_at"].as_str().map(str::to_string)).as_deref()
    );
    let log = log_text(&s, &id).await;
    assert!(log.contains("pre-deploy sees hooked") && log.contains("purging"), "{log}");
    let live = d["url"].as_str().expect("url").to_string();
    assert_eq!(greeting(&s, &live).await, "greeting=hooked");

    // pre_deploy fails: nothing is switched, the user's error.
    let sha = commit("v2", r#""exit 4""#, r#""true""#);
    let (_, answer) = s.push(&url, &sha, SECRET, "hooks-2").await;
    let d = s.finished(answer["deployments"][0]["deployment_id"].as_str().expect("id"), FINISH).await;
    assert_eq!(
        (d["state"].as_str(), d["error_step"].as_str(), d["error_cause"].as_str()),
        (Some("failed"), Some("pre_deploy"), Some("user")),
        "{d}"
    );
    assert!(s.app_body(&live, "/").await.unwrap_or_default().contains("v1"), "v1 keeps serving");
}

#[tokio::test]
async fn a_release_is_promoted_to_another_environment_by_its_digest_with_that_environments_configuration() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("promote");
    let url = git.url(&repo);
    let staging = s
        .create_app("staging", &url, SECRET, json!({"environment": "staging", "env": {"GREETING": "from-staging"}}))
        .await;
    // Production follows another branch: pushes to main never deploy it; promotions do.
    let production = s
        .create_app("production", &url, SECRET, json!({"branch": "release", "env": {"GREETING": "from-production"}}))
        .await;
    let sha = commit(&git, &repo, "promoted");
    let (_, answer) = s.push(&url, &sha, SECRET, "promote-1").await;
    assert_eq!(answer["deployments"].as_array().map(Vec::len), Some(1), "only staging follows main: {answer}");
    let built = s.finished(answer["deployments"][0]["deployment_id"].as_str().expect("id"), FINISH).await;
    assert_eq!(built["state"], "completed", "{built}");

    let promoted = cli(&s, &["promote", &staging, "--to", &production]);
    assert_eq!((promoted["from_release"].as_u64(), promoted["release"].as_u64()), (Some(1), Some(1)), "{promoted}");
    let d = s.finished(promoted["deployment_id"].as_str().expect("id"), FINISH).await;
    assert_eq!(
        (d["state"].as_str(), d["source"].as_str(), d["sha"].as_str()),
        (Some("completed"), Some("promotion"), Some(sha.as_str())),
        "{d}"
    );
    for step in ["clone", "build", "test"] {
        assert_eq!(step_of(&d, 1, step).map(|st| st["status"].clone()), Some(json!("skipped")), "{step}: {d}");
    }
    // Exactly the image staging runs, with production's configuration.
    let digest = |id: &str| {
        slipway_tests::harness::psql_value(
            &s.database_url,
            &format!("SELECT image_digest FROM deployments WHERE id = '{id}'"),
        )
    };
    assert_eq!(digest(d["id"].as_str().expect("id")), digest(built["id"].as_str().expect("id")), "the same digest");
    assert_eq!(promoted["digest"].as_str(), Some(digest(built["id"].as_str().expect("id")).as_str()));
    assert_eq!(greeting(&s, d["url"].as_str().expect("url")).await, "greeting=from-production");
    assert_eq!(greeting(&s, built["url"].as_str().expect("url")).await, "greeting=from-staging");

    // Recorded on both sides.
    let theirs = cli(&s, &["releases", &production]);
    assert_eq!(
        theirs[0]["reason"].as_str(),
        Some(format!("promotion of {staging} v1 ({})", &sha[..12]).as_str()),
        "{theirs}"
    );
    let ours = cli(&s, &["releases", &staging]);
    assert_eq!(ours[0]["promoted_to"], json!([format!("{production} v1")]), "{ours}");

    // Refused: to itself, to an app of another repository, a release that never went live, a
    // viewer of the target.
    let other = s.create_app("elsewhere", &git.url(&unique("other")), SECRET, json!({})).await;
    for (body, status, needle) in [
        (json!({"to": staging}), 422, "another app"),
        (json!({"to": other}), 422, "another repository"),
        (json!({"to": production, "release": "v9"}), 404, "no release v9"),
        (json!({"to": production, "release": "nine"}), 400, "not a release"),
        (json!({"to": "no-such-app"}), 404, "no app"),
    ] {
        let (got, answer) = s.post(&format!("/api/v1/apps/{staging}/promote"), &body).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer.to_string().contains(needle), "{body}: {answer}");
    }
    let viewer = s.create_token("promote-viewer", "viewer", None).await;
    let refused = s
        .client(&viewer)
        .post(format!("{}/api/v1/apps/{staging}/promote", s.base))
        .json(&json!({"to": production}))
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status().as_u16(), 403);
}

/// The app's own PostgreSQL server (`slipway/postgres`), reachable as `db` on the app's network;
/// removed with its network when dropped.
struct AppDatabase {
    container: String,
    network: String,
}

impl AppDatabase {
    fn start(s: &Slipway, app: &str, password: &str) -> Self {
        let network = format!("slipway-{}-{app}-production", s.prefix);
        let container = unique("appdb");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("docker").args(args).output().expect("docker");
            assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let label = format!("dev.slipway.installation={}", s.prefix);
        run(&["network", "create", "--label", &label, &network]);
        let password = format!("POSTGRES_PASSWORD={password}");
        let image = "slipway/postgres:bookworm";
        run(&["run", "-d", "--name", &container, "--network", &network, "--network-alias", "db", "-e", &password]
            .into_iter()
            .chain(["-e", "POSTGRES_DB=shop", image])
            .collect::<Vec<_>>());
        Self { container, network }
    }

    /// Runs SQL as the superuser; its output, or `None` while the server does not answer.
    fn sql(&self, sql: &str) -> Option<String> {
        let out = std::process::Command::new("docker")
            .args(["exec", &self.container, "psql", "-h", "/tmp", "-U", "postgres", "-d", "shop", "-v"])
            .args(["ON_ERROR_STOP=1", "-Atc", sql])
            .output()
            .expect("docker exec");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for AppDatabase {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker").args(["rm", "-f", &self.container]).output();
        let _ = std::process::Command::new("docker").args(["network", "rm", &self.network]).output();
    }
}

#[tokio::test]
async fn a_snapshot_is_taken_before_each_release_command_and_a_failed_migration_is_restored_from_it() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions {
        runner_env: vec![("SLIPWAY_SNAPSHOT_KEEP".into(), "1".into())],
        ..Default::default()
    })
    .await;
    let repo = unique("dbsnap");
    let url = git.url(&repo);
    let password = "pg-app-password-5f4e3d2c1b";
    let database_url = format!("postgresql://postgres:{password}@db:5432/shop");
    let env = json!({"env": {"DATABASE_URL": {"value": database_url, "secret": true}}});
    let app = s.create_app("dbsnap", &url, SECRET, env).await;
    let db = AppDatabase::start(&s, &app, password);
    slipway_tests::eventually(Duration::from_secs(60), "the app's PostgreSQL", || {
        let ready = db.sql("SELECT 1");
        async move { ready }
    })
    .await;
    db.sql("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)").expect("create the table");
    db.sql("INSERT INTO items VALUES (1, 'anchor'), (2, 'keel')").expect("seed");

    // The image has psql (the client image) and a static busybox for its web server.
    let push = |marker: &str, release: &str| {
        let dockerfile = "FROM slipway/pg-client:bookworm\nCOPY --from=slipway/busybox:1 /bin/busybox /bin/busybox\n\
             COPY www /www\nCMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";
        let toml = format!("release = [\"sh\", \"-c\", {release:?}]\n");
        site_with(&git, &repo, marker, dockerfile, &toml)
    };
    let deploy = async |s: &Slipway, sha: &str, delivery: &str| {
        let (status, answer) = s.push(&url, sha, SECRET, delivery).await;
        assert_eq!(status, 202, "{answer}");
        let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
        (s.finished(&id, FINISH).await, id)
    };

    // v1: a migration that adds a column; a snapshot is taken before it.
    let v1 = push(
        "v1",
        "psql \"$DATABASE_URL\" -v ON_ERROR_STOP=1 -c 'ALTER TABLE items ADD COLUMN IF NOT EXISTS price int'",
    );
    let (d, id) = deploy(&s, &v1, "dbsnap-1").await;
    assert_eq!(d["state"], "completed", "{d}\n{}", s.dump());
    let log = log_text(&s, &id).await;
    assert!(log.contains("database snapshot of DATABASE_URL before the release command"), "{log}");
    assert!(!log.contains(password), "the database URL is masked: {log}");

    // v2: a migration that drops a column (its data with it) and then fails.
    let v2 = push("v2", "psql \"$DATABASE_URL\" -v ON_ERROR_STOP=1 -c 'ALTER TABLE items DROP COLUMN name' && exit 4");
    let (d, _) = deploy(&s, &v2, "dbsnap-2").await;
    assert_eq!(d["state"], "failed", "{d}");
    assert_eq!((d["error_step"].as_str(), d["error_cause"].as_str()), (Some("release"), Some("user")), "{d}");
    assert_eq!(db.sql("SELECT name FROM items ORDER BY id"), None, "the failed migration dropped the column");

    // Both snapshots are listed; with a retention of one, v1's file is gone.
    let list = cli(&s, &["db", "snapshots", &app]);
    let list = list.as_array().expect("snapshots").clone();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!((list[0]["release"].as_u64(), list[0]["pruned_at"].is_null()), (Some(2), true), "{list:?}");
    assert_eq!((list[1]["release"].as_u64(), list[1]["pruned_at"].is_null()), (Some(1), false), "{list:?}");
    assert!(list[0]["bytes"].as_u64().unwrap_or_default() > 0, "{list:?}");
    let files: Vec<String> = std::fs::read_dir(s.snapshot_dir().join(&app))
        .expect("the app's snapshot directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, vec![list[0]["name"].as_str().expect("name").to_string()], "retention keeps one file");

    // A restore needs a confirmation; a removed snapshot cannot be restored.
    let out =
        s.cli_command().args(["db", "restore", &app, "v2"]).stdin(std::process::Stdio::null()).output().expect("cli");
    assert!(!out.status.success(), "no terminal, no --yes: refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --yes"), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, answer) =
        s.post(&format!("/api/v1/apps/{app}/snapshots/v2/restore"), &json!({"confirm": "someone-else"})).await;
    assert_eq!(status, 422, "{answer}");
    let (status, answer) = s.post(&format!("/api/v1/apps/{app}/snapshots/v1/restore"), &json!({"confirm": app})).await;
    assert_eq!(status, 422, "a pruned snapshot: {answer}");
    assert!(answer.to_string().contains("removed by retention"), "{answer}");
    let (status, _) = s.post(&format!("/api/v1/apps/{app}/snapshots/v9/restore"), &json!({"confirm": app})).await;
    assert_eq!(status, 404);

    // The restore brings the column and its data back, and deploys the live release (v1) again.
    let answer = cli(&s, &["db", "restore", &app, "v2", "--yes"]);
    let id = answer["deployment_id"].as_str().expect("id").to_string();
    let d = s.finished(&id, FINISH).await;
    assert_eq!(d["state"], "completed", "{d}\n{}", s.dump());
    assert_eq!(d["sha"].as_str(), Some(v1.as_str()), "the live release again: {d}");
    assert_eq!(db.sql("SELECT name FROM items ORDER BY id").as_deref(), Some("anchor\nkeel"), "the data is back");
    let log = log_text(&s, &id).await;
    assert!(log.contains("restoring ") && log.contains("in one transaction"), "{log}");
    assert_eq!(step_of(&d, 1, "build").map(|st| st["status"].clone()), Some(json!("skipped")), "nothing rebuilt: {d}");
    drop(db);
}
