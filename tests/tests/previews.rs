//! Preview environments on the docker target with a real scheduler, runner, registry, git server
//! and Caddy: a pull request deploys its head as `pr-<n>` at `pr-<n>.<app>.<domain>` with the
//! previews' variables, an update redeploys it, a redelivery is one deployment, a fork and a
//! request past the limit are refused with the reason, closing tears everything down (route,
//! containers, network, images) while the app keeps serving, and an idle preview expires.

use std::time::Duration;

use serde_json::{Value, json};
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, eventually, unique};

const SECRET: &str = "previews-secret-0123456789";
const FINISH: Duration = Duration::from_secs(180);

/// A busybox site printing `marker` that writes `$GREETING` to /greeting when it starts.
fn commit(git: &GitServer, repo: &str, git_ref: &str, marker: &str) -> String {
    let dockerfile = "FROM slipway/busybox:1\nCOPY www /www\n\
        CMD [\"sh\", \"-c\", \"echo \\\"$GREETING\\\" > /www/greeting && exec httpd -f -p 8080 -h /www\"]\n";
    let page = format!("<p>{marker}</p>\n");
    let entries = [
        Entry::File("Dockerfile", dockerfile.as_bytes()),
        Entry::File("www/index.html", page.as_bytes()),
        Entry::File("www/healthz", b"ok\n"),
    ];
    git.commit_to(repo, git_ref, marker, &entries)
}

/// A signed GitHub `pull_request` event (the shape GitHub documents, trimmed).
async fn pull_request(
    s: &Slipway,
    repo_url: &str,
    action: &str,
    number: u64,
    sha: &str,
    fork: bool,
    delivery: &str,
) -> (u16, Value) {
    let head_repo =
        if fork { json!({"id": 999, "full_name": "someone/fork"}) } else { json!({"id": 1, "full_name": "acme/web"}) };
    let body = serde_json::to_vec(&json!({
        "action": action,
        "number": number,
        "pull_request": {
            "number": number, "title": format!("change {number}"), "user": {"login": "octocat"},
            "merged": action == "closed",
            "head": {"ref": "feature", "sha": sha, "repo": head_repo},
            "base": {"ref": "main", "sha": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e", "repo": {"id": 1, "full_name": "acme/web"}},
        },
        "repository": {"id": 1, "full_name": "acme/web", "clone_url": repo_url, "html_url": repo_url},
        "sender": {"login": "octocat"},
    }))
    .expect("json");
    let headers = [
        ("X-GitHub-Event", "pull_request".to_string()),
        ("X-GitHub-Delivery", delivery.to_string()),
        ("X-Hub-Signature-256", slipway_tests::harness::sign(SECRET, &body)),
    ];
    s.webhook(&headers, body).await
}

fn containers(app: &str, environment: &str) -> Vec<String> {
    let filters = [format!("label=dev.slipway.app={app}"), format!("label=dev.slipway.environment={environment}")];
    let out =
        slipway_tests::docker(&["ps", "-aq", "--filter", &filters[0], "--filter", &filters[1]]).expect("docker ps");
    out.split_whitespace().map(str::to_string).collect()
}

async fn previews(s: &Slipway, app: &str) -> Vec<Value> {
    let (status, list) = s.get(&format!("/api/v1/apps/{app}/previews")).await;
    assert_eq!(status, 200, "{list}");
    list.as_array().cloned().unwrap_or_default()
}

fn preview(list: &[Value], number: u64) -> &Value {
    list.iter().find(|p| p["number"] == number).unwrap_or_else(|| panic!("preview #{number} in {list:?}"))
}

#[tokio::test]
async fn pull_requests_get_previews_at_their_own_address_until_they_close_or_idle() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions {
        scheduler_env: vec![("SLIPWAY_PREVIEW_SWEEP_SECONDS".into(), "1".into())],
        ..Default::default()
    })
    .await;
    let repo = unique("previews");
    let url = git.url(&repo);
    let previews_on = json!({"max": 1, "env": {"GREETING": "hello-from-a-preview"}});
    let app = s
        .create_app("pv", &url, SECRET, json!({"env": {"GREETING": "hello-from-production"}, "previews": previews_on}))
        .await;

    // The app itself.
    let main = commit(&git, &repo, "refs/heads/main", "main-1");
    let (status, answer) = s.push(&url, &main, SECRET, &unique("push")).await;
    assert_eq!(status, 202, "{answer}");
    let live = s.finished(answer["deployments"][0]["deployment_id"].as_str().expect("id"), FINISH).await;
    assert_eq!(live["state"], "completed", "{live}");
    let app_url = live["url"].as_str().expect("url").to_string();

    // Pull request 7 opens: its head deploys as pr-7, at its own host, with the previews' variables.
    let head_a = commit(&git, &repo, "refs/pull/7/head", "pr-7-a");
    let (status, answer) = pull_request(&s, &url, "opened", 7, &head_a, false, "pr-7-opened").await;
    assert_eq!(status, 202, "{answer}");
    let first = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let d = s.finished(&first, FINISH).await;
    assert_eq!(
        (d["state"].as_str(), d["environment"].as_str(), d["source"].as_str(), d["git_ref"].as_str()),
        (Some("completed"), Some("pr-7"), Some("preview"), Some("refs/pull/7/head")),
        "{d}"
    );
    let preview_url = d["url"].as_str().expect("url").to_string();
    assert!(preview_url.starts_with(&format!("http://pr-7.{app}.localhost:")), "{preview_url}");
    assert!(s.app_body(&preview_url, "/").await.is_some_and(|b| b.contains("pr-7-a")), "the preview serves its head");
    let greeting = s.app_body(&preview_url, "/greeting").await.unwrap_or_default();
    assert_eq!(greeting.trim(), "hello-from-a-preview", "the previews' variables replace the app's");
    assert!(s.app_body(&app_url, "/").await.is_some_and(|b| b.contains("main-1")), "the app serves on");
    assert_eq!(s.app_body(&app_url, "/greeting").await.unwrap_or_default().trim(), "hello-from-production");
    let (_, got) = s.get(&format!("/api/v1/apps/{app}")).await;
    assert_eq!(got["url"].as_str(), Some(app_url.as_str()), "the app's address stays its own: {got}");

    // The same delivery again is one deployment; an update redeploys the new head.
    let (status, again) = pull_request(&s, &url, "opened", 7, &head_a, false, "pr-7-opened").await;
    assert_eq!((status, again["deployments"][0]["deployment_id"].as_str()), (200, Some(first.as_str())), "{again}");
    let head_b = commit(&git, &repo, "refs/pull/7/head", "pr-7-b");
    let (status, answer) = pull_request(&s, &url, "synchronize", 7, &head_b, false, "pr-7-sync").await;
    assert_eq!(status, 202, "{answer}");
    let d = s.finished(answer["deployments"][0]["deployment_id"].as_str().expect("id"), FINISH).await;
    assert_eq!(d["state"], "completed", "{d}");
    assert!(s.app_body(&preview_url, "/").await.is_some_and(|b| b.contains("pr-7-b")), "the update serves");
    assert_eq!(containers(&app, "pr-7").len(), 2, "the update's container, and the one before kept stopped");

    // A fork is not built; past previews.max (1) another request is refused. Both say why.
    let (status, answer) = pull_request(&s, &url, "opened", 8, &head_a, true, "pr-8").await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("ignored")), "{answer}");
    assert!(answer["reason"].as_str().unwrap_or_default().contains("fork"), "{answer}");
    let (_, answer) = pull_request(&s, &url, "opened", 9, &head_b, false, "pr-9-opened").await;
    assert!(answer["reason"].as_str().unwrap_or_default().contains("previews.max"), "{answer}");
    let list = previews(&s, &app).await;
    assert_eq!(
        (preview(&list, 7)["state"].as_str(), preview(&list, 7)["url"].as_str()),
        (Some("open"), Some(preview_url.as_str()))
    );
    assert_eq!(preview(&list, 8)["state"], "refused");
    assert_eq!(
        (preview(&list, 9)["state"].as_str(), preview(&list, 9)["from_fork"].as_bool()),
        (Some("refused"), Some(false))
    );
    assert!(containers(&app, "pr-8").is_empty() && containers(&app, "pr-9").is_empty());
    let out = s.cli_command().args(["previews", "list", &app]).output().expect("slipway");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let row = |env: &str| table.lines().find(|l| l.starts_with(&format!("{env} "))).unwrap_or_default().to_string();
    assert!(row("pr-7").contains("open") && row("pr-7").contains(&preview_url), "{table}");
    assert!(row("pr-8").contains("refused") && row("pr-8").contains("fork"), "{table}");

    // Merging tears pr-7 down: its route, containers, network and images go; the app serves on.
    let (status, answer) = pull_request(&s, &url, "closed", 7, &head_b, false, "pr-7-closed").await;
    assert_eq!(status, 202, "{answer}");
    let teardown = s.finished(answer["deployments"][0]["deployment_id"].as_str().expect("id"), FINISH).await;
    assert_eq!(
        (teardown["state"].as_str(), teardown["source"].as_str()),
        (Some("completed"), Some("teardown")),
        "{teardown}"
    );
    for step in teardown["steps"].as_array().expect("steps") {
        let ran = step["step"] == "deploy" || step["step"] == "cleanup";
        let want = if ran { "succeeded" } else { "skipped" };
        assert_eq!(step["status"], want, "{step}");
    }
    assert!(containers(&app, "pr-7").is_empty(), "the preview's containers are removed");
    let log = s.log_lines(teardown["id"].as_str().expect("id"), None).await;
    let client = reqwest::Client::new();
    let gone = slipway_tests::harness::app_request(&client, &preview_url, "/").send().await.expect("the edge answers");
    assert_eq!(gone.status(), 404, "the preview's address serves it no more: {log:?}");
    assert_eq!(gone.text().await.unwrap_or_default(), "no app answers at this address\n");
    let networks =
        slipway_tests::docker(&["network", "ls", "-q", "--filter", &format!("name=-{app}-pr-7")]).unwrap_or_default();
    assert!(networks.trim().is_empty(), "the preview's network is removed: {networks}");
    let image = format!("{}/{app}:{head_a}", slipway_tests::env("SLIPWAY_REGISTRY"));
    assert!(slipway_tests::docker(&["image", "inspect", &image]).is_err(), "the preview's images leave the engine");
    assert!(s.app_body(&app_url, "/").await.is_some_and(|b| b.contains("main-1")), "the app serves on");
    let list = previews(&s, &app).await;
    assert_eq!(preview(&list, 7)["state"], "closed");
    assert_eq!(preview(&list, 7)["reason"], "the pull request was merged");
    let (status, again) = pull_request(&s, &url, "closed", 7, &head_b, false, "pr-7-closed-again").await;
    assert_eq!((status, again["status"].as_str()), (202, Some("ignored")), "closing twice tears down once: {again}");

    // With a time-to-live, a preview with no push for that long is torn down.
    let (status, patched) =
        s.patch(&format!("/api/v1/apps/{app}"), &json!({"previews": {"max": 1, "ttl_seconds": 10}})).await;
    assert_eq!(status, 200, "{patched}");
    let (status, answer) = pull_request(&s, &url, "synchronize", 9, &head_b, false, "pr-9-sync").await;
    assert_eq!(status, 202, "under the limit now: {answer}");
    let d = s.finished(answer["deployments"][0]["deployment_id"].as_str().expect("id"), FINISH).await;
    assert_eq!((d["state"].as_str(), d["environment"].as_str()), (Some("completed"), Some("pr-9")), "{d}");
    let expired = eventually(Duration::from_secs(60), "pr-9 expired and torn down", || {
        let s = &s;
        let app = app.clone();
        async move {
            let list = previews(s, &app).await;
            let p = preview(&list, 9).clone();
            (p["state"] == "expired" && containers(&app, "pr-9").is_empty()).then_some(p)
        }
    })
    .await;
    assert!(expired["reason"].as_str().unwrap_or_default().contains("ttl_seconds"), "{expired}");
    assert!(s.app_body(&app_url, "/").await.is_some_and(|b| b.contains("main-1")), "the app serves on");
}

#[tokio::test]
async fn preview_settings_and_routes_refuse_bad_input_with_a_clear_error() {
    let mut s = Slipway::start(SlipwayOptions { runners: 0, edge: false, ..Default::default() }).await;
    let app = s.create_app("pvbad", "https://git.example.com/acme/pvbad.git", SECRET, json!({"previews": {}})).await;
    let (_, got) = s.get(&format!("/api/v1/apps/{app}")).await;
    assert_eq!(got["previews"], json!({"enabled": true, "forks": false, "max": 5}), "the defaults: {got}");

    for (body, needle) in [
        (json!({"previews": {"max": 0}}), "previews.max"),
        (json!({"previews": {"max": 101}}), "previews.max"),
        (json!({"previews": {"ttl_seconds": 5}}), "previews.ttl_seconds"),
        (json!({"previews": {"env": {"BAD-NAME": "x"}}}), "previews.env"),
        (json!({"previews": {"env": {"BIG": "x".repeat(70_000)}}}), "64 KiB"),
        (json!({"previews": {"fork": true}}), "unknown field `fork`"),
        (json!({"previews": {"max": "five"}}), "max"),
        (json!({"previews": []}), "expected an object"),
        (json!({"commit_status": {"forge": "sourcehut"}}), "commit_status.forge"),
    ] {
        let (status, answer) = s.patch(&format!("/api/v1/apps/{app}"), &body).await;
        assert!(status == 400 || status == 422, "{body}: {status} {answer}");
        assert!(answer.to_string().contains(needle), "{body}: `{needle}` in {answer}");
    }
    let (status, answer) =
        s.post("/api/v1/apps", &json!({"name": unique("pr"), "repo_url": "https://git.example.com/a/b.git", "webhook_secret": SECRET, "environment": "pr-3"})).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer.to_string().contains("kept for pull request previews"), "{answer}");

    for number in ["0", "-1", "abc", "pr-", "99999999999999999999999", "pr-1x"] {
        let (status, answer) = s.post(&format!("/api/v1/apps/{app}/previews/{number}/close"), &json!({})).await;
        assert_eq!(status, 400, "{number}: {answer}");
        assert!(answer.to_string().contains("pull request number"), "{answer}");
    }
    let (status, answer) = s.post(&format!("/api/v1/apps/{app}/previews/pr-4/close"), &json!({})).await;
    assert_eq!(status, 409, "no open preview: {answer}");
    assert!(answer.to_string().contains("no open preview of #4"), "{answer}");
    let (status, _) = s.get("/api/v1/apps/nope/previews").await;
    assert_eq!(status, 404);

    // A token, by PATCH, replaces the sealed one; without one the stored token stays.
    let body = json!({"commit_status": {"forge": "github", "api_url": "https://api.github.example", "repo": "acme/pvbad", "token": "ghp-token-0123456789"}});
    let (status, answer) = s.patch(&format!("/api/v1/apps/{app}"), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["app"]["commit_status"]["repo"], "acme/pvbad");
    assert!(!answer.to_string().contains("ghp-token"), "the token is never answered: {answer}");
    let sealed =
        slipway_tests::harness::psql_value(&s.database_url, &format!("SELECT sealed FROM apps WHERE name = '{app}'"));
    assert!(!sealed.contains("ghp-token") && !sealed.trim().is_empty(), "sealed at rest");
}
