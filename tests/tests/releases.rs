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
