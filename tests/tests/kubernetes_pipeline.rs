//! A push to an app whose target is `kubernetes`: the runner builds and pushes as usual, then
//! applies to the cluster its kubeconfig names — here the API-server double — and the deployment
//! ends with the rollout's outcome.

use std::time::Duration;

use serde_json::json;
use slipway_tests::apiserver::ApiServer;
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, unique};

const SECRET: &str = "kube-pipeline-secret-0123456789";

/// A site that answers its health check.
const HEALTHY_SITE: &[u8] =
    b"FROM slipway/busybox:1\nRUN mkdir /www && echo ok > /www/healthz\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";

/// A kubeconfig naming the double, in `dir`.
fn kubeconfig(api: &ApiServer, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("config");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\ncontexts:\n- name: double\n  context:\n    cluster: double\n    user: slipway\ncurrent-context: double\nusers:\n- name: slipway\n  user: {{}}\n",
            api.url
        ),
    )
    .expect("write kubeconfig");
    path
}

/// An installation whose runners deploy `kubernetes` apps to the cluster `kubeconfig` names.
async fn on_kubernetes(kubeconfig: &std::path::Path) -> Slipway {
    Slipway::start(SlipwayOptions {
        runner_env: vec![
            ("SLIPWAY_KUBERNETES".into(), "true".into()),
            ("KUBECONFIG".into(), kubeconfig.display().to_string()),
            ("SLIPWAY_ROLLOUT_TIMEOUT_SECONDS".into(), "20".into()),
        ],
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn a_push_deploys_to_kubernetes_a_crash_looping_first_rollout_fails_and_a_rollback_reapplies_the_old_image() {
    let api = ApiServer::start(Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().expect("kubeconfig dir");
    let kubeconfig = kubeconfig(&api, dir.path());
    let git = GitServer::start();
    let mut s = on_kubernetes(&kubeconfig).await;
    let dockerfile = HEALTHY_SITE;
    let settings = json!({"host": "shop.example.com", "replicas": 3, "secret_env": {"TOKEN": "s3cret"}});

    for (stem, expect_ok) in [("shop", true), ("crash", false)] {
        let repo = unique(stem);
        let url = git.url(&repo);
        let app = s.create_app(stem, &url, SECRET, json!({"target": "kubernetes", "kubernetes": settings})).await;
        let sha = git.commit(&repo, "v1", &[Entry::File("Dockerfile", dockerfile)]);
        let (status, answer) = s.push(&url, &sha, SECRET, &unique("delivery")).await;
        assert_eq!(status, 202, "{answer}");
        let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
        let d = s.finished(&id, Duration::from_secs(120)).await;
        let ns = format!("app-{app}");
        if expect_ok {
            assert_eq!(d["state"], "completed", "{d}\n{}", s.dump());
            assert_eq!(d["url"], "https://shop.example.com");
            let deployment = api.get("deployments", &ns, &app).expect("deployment applied");
            assert_eq!(deployment["spec"]["replicas"], 3);
            let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert_eq!(Some(image.as_str()), d["image"].as_str());
            assert_eq!(
                api.get("secrets", &ns, &format!("{app}-secrets")).expect("secret")["stringData"]["TOKEN"],
                "s3cret"
            );
        } else {
            assert_eq!(d["state"], "failed", "{d}");
            assert_eq!((d["error_step"].as_str(), d["error_cause"].as_str()), (Some("deploy"), Some("user")));
            assert!(d["error_message"].as_str().unwrap_or_default().contains("CrashLoopBackOff"), "{d}");
        }
    }

    // A second revision, then a manual rollback: the first image is applied again, unbuilt.
    let repo = unique("roll");
    let url = git.url(&repo);
    let app = s.create_app("roll", &url, SECRET, json!({"target": "kubernetes"})).await;
    let ns = format!("app-{app}");
    let image_in_cluster = || {
        api.get("deployments", &ns, &app)
            .and_then(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].as_str().map(str::to_string))
    };
    let mut images = Vec::new();
    for n in 1..=2 {
        let file =
            format!("FROM slipway/busybox:1\nRUN echo {n} > /version\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\"]\n");
        let sha = git.commit(&repo, "rev", &[Entry::File("Dockerfile", file.as_bytes())]);
        let (_, answer) = s.push(&url, &sha, SECRET, &unique("delivery")).await;
        let d =
            s.finished(answer["deployments"][0]["deployment_id"].as_str().expect("id"), Duration::from_secs(120)).await;
        assert_eq!(d["state"], "completed", "{d}");
        images.push(d["image"].as_str().expect("image").to_string());
    }
    assert_eq!(image_in_cluster().as_deref(), Some(images[1].as_str()));
    let (status, answer) = s.post(&format!("/api/v1/apps/{app}/rollback"), &json!({})).await;
    assert_eq!(status, 202, "{answer}");
    let d = s.finished(answer["deployment_id"].as_str().expect("id"), Duration::from_secs(120)).await;
    assert_eq!(d["state"], "completed", "{d}");
    assert_eq!(image_in_cluster().as_deref(), Some(images[0].as_str()), "the first revision is applied again");
    let build =
        d["steps"].as_array().expect("steps").iter().find(|st| st["step"] == "build").cloned().expect("build step");
    assert_eq!(build["status"], "skipped", "nothing was rebuilt");
}

fn step_of(d: &serde_json::Value, step: &str) -> Option<serde_json::Value> {
    d["steps"].as_array()?.iter().rev().find(|s| s["step"] == step).cloned()
}

#[tokio::test]
async fn release_command_and_hooks_run_as_jobs_before_the_deployment_and_a_failing_one_applies_nothing() {
    let api = ApiServer::start(Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().expect("kubeconfig dir");
    let kubeconfig = kubeconfig(&api, dir.path());
    let git = GitServer::start();
    let mut s = on_kubernetes(&kubeconfig).await;
    let repo = unique("kmigrate");
    let url = git.url(&repo);
    let token = "db-token-9f8e7d6c5b4a";
    let settings =
        json!({"target": "kubernetes", "env": {"GREETING": "hi", "DB_TOKEN": {"value": token, "secret": true}}});
    let app = s.create_app("kmigrate", &url, SECRET, settings).await;
    let ns = format!("app-{app}");
    let dockerfile = HEALTHY_SITE;
    let push = |marker: &str, release: &str| {
        let toml = format!(
            "release = [\"sh\", \"-c\", \"{release}\"]\n\
             pre_deploy = [\"sh\", \"-c\", \"echo pre for {marker}\"]\n\
             post_deploy = [\"sh\", \"-c\", \"echo post for {marker}\"]\n"
        );
        git.commit(
            &repo,
            marker,
            &[Entry::File("Dockerfile", dockerfile), Entry::File("slipway.toml", toml.as_bytes())],
        )
    };

    let sha = push("v1", "echo migrating for $GREETING with $DB_TOKEN; exit 0");
    let (status, answer) = s.push(&url, &sha, SECRET, &unique("delivery")).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let d = s.finished(&id, Duration::from_secs(120)).await;
    assert_eq!(d["state"], "completed", "{d}\n{}", s.dump());
    for step in ["release", "pre_deploy", "deploy", "post_deploy"] {
        let status = step_of(&d, step).map(|st| st["status"].clone());
        assert_eq!(status, Some(json!("succeeded")), "{step}: {d}");
    }
    let log = s.log_lines(&id, None).await.into_iter().map(|(_, l)| l).collect::<Vec<_>>().join("\n");
    assert!(log.contains("migrating for hi with "), "the Job's output streams into the log: {log}");
    assert!(!log.contains(token), "a secret in the Job's output is masked: {log}");
    assert!(log.contains("pre for v1") && log.contains("post for v1"), "{log}");
    // Order on the wire: the release Job and pre_deploy Job before the Deployment, post_deploy after.
    let requests = api.lock().requests.clone();
    let first = |needle: &str| requests.iter().position(|r| r.starts_with("PATCH") && r.contains(needle));
    let (release, pre, deployment, post) = (
        first(&format!("/jobs/{app}-release-")),
        first(&format!("/jobs/{app}-pre-")),
        first(&format!("/deployments/{app}")),
        first(&format!("/jobs/{app}-post-")),
    );
    assert!(release.is_some() && pre.is_some() && deployment.is_some() && post.is_some(), "{requests:#?}");
    assert!(release < pre && pre < deployment && deployment < post, "{requests:#?}");
    let image_v1 = d["image"].as_str().expect("image").to_string();

    // A failing release command: nothing is applied, the previous image keeps serving.
    let sha = push("v2", "echo half way; exit 3");
    let (_, answer) = s.push(&url, &sha, SECRET, &unique("delivery")).await;
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let d = s.finished(&id, Duration::from_secs(120)).await;
    assert_eq!(d["state"], "failed", "{d}");
    let failed = (d["error_step"].as_str(), d["error_cause"].as_str());
    assert_eq!(failed, (Some("release"), Some("user")), "{d}");
    assert!(d["error_message"].as_str().unwrap_or_default().contains('3'), "names the exit code: {d}");
    let deployment = api.get("deployments", &ns, &app).expect("deployment");
    let serving = deployment["spec"]["template"]["spec"]["containers"][0]["image"].as_str().map(str::to_string);
    assert_eq!(serving, Some(image_v1), "the failed release applied nothing");
    let log = s.log_lines(&id, None).await.into_iter().map(|(_, l)| l).collect::<Vec<_>>().join("\n");
    assert!(log.contains("half way"), "{log}");
    assert!(step_of(&d, "pre_deploy").is_none_or(|st| st["status"] != "succeeded"), "pre_deploy never ran: {d}");
}

/// A signed GitHub `pull_request` event for request `number` of `repo_url` at `sha`.
async fn pull_request(s: &Slipway, repo_url: &str, action: &str, number: u64, sha: &str) -> serde_json::Value {
    let body = serde_json::to_vec(&json!({
        "action": action, "number": number,
        "pull_request": {
            "number": number, "merged": action == "closed", "user": {"login": "octocat"},
            "head": {"ref": "feature", "sha": sha, "repo": {"id": 1}},
            "base": {"ref": "main", "repo": {"id": 1}},
        },
        "repository": {"clone_url": repo_url},
    }))
    .expect("json");
    let headers = [
        ("X-GitHub-Event", "pull_request".to_string()),
        ("X-GitHub-Delivery", unique("pr")),
        ("X-Hub-Signature-256", slipway_tests::harness::sign(SECRET, &body)),
    ];
    let (status, answer) = s.webhook(&headers, body).await;
    assert_eq!(status, 202, "{answer}");
    answer
}

#[tokio::test]
async fn a_pull_requests_preview_is_its_own_namespace_deleted_when_the_request_closes() {
    let api = ApiServer::start(Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().expect("kubeconfig dir");
    let kubeconfig = kubeconfig(&api, dir.path());
    let git = GitServer::start();
    let mut s = on_kubernetes(&kubeconfig).await;
    let dockerfile = HEALTHY_SITE;
    let repo = unique("kpv");
    let url = git.url(&repo);
    let settings = json!({"host": "shop.example.com", "replicas": 2});
    let extra = json!({"target": "kubernetes", "kubernetes": settings, "previews": {"env": {"MODE": "preview"}}});
    let app = s.create_app("kpv", &url, SECRET, extra).await;
    let main = git.commit(&repo, "v1", &[Entry::File("Dockerfile", dockerfile)]);
    let (status, answer) = s.push(&url, &main, SECRET, &unique("delivery")).await;
    assert_eq!(status, 202, "{answer}");
    let d = s.finished(answer["deployments"][0]["deployment_id"].as_str().expect("id"), Duration::from_secs(120)).await;
    assert_eq!(d["state"], "completed", "{d}");

    let head = git.commit_to(
        &repo,
        "refs/pull/3/head",
        "change",
        &[Entry::File("Dockerfile", dockerfile), Entry::File("x", b"3")],
    );
    let answer = pull_request(&s, &url, "opened", 3, &head).await;
    let d = s.finished(answer["deployments"][0]["deployment_id"].as_str().expect("id"), Duration::from_secs(120)).await;
    assert_eq!(
        (d["state"].as_str(), d["environment"].as_str()),
        (Some("completed"), Some("pr-3")),
        "{d}\n{}",
        s.dump()
    );
    assert_eq!(d["url"], "https://pr-3.shop.example.com");
    let ns = format!("app-{app}-pr-3");
    let deployment = api.get("deployments", &ns, &app).expect("the preview's Deployment in its own namespace");
    assert_eq!(deployment["spec"]["replicas"], 1);
    let config = api.get("configmaps", &ns, &format!("{app}-config")).expect("the preview's config");
    assert_eq!(config["data"]["MODE"], "preview", "the previews' variables: {config}");
    assert_eq!(api.get("deployments", &format!("app-{app}"), &app).expect("the app")["spec"]["replicas"], 2);

    let answer = pull_request(&s, &url, "closed", 3, &head).await;
    let d = s.finished(answer["deployments"][0]["deployment_id"].as_str().expect("id"), Duration::from_secs(120)).await;
    assert_eq!((d["state"].as_str(), d["source"].as_str()), (Some("completed"), Some("teardown")), "{d}");
    assert!(api.get("namespaces", "", &ns).is_none(), "the preview's namespace is deleted");
    assert!(api.get("deployments", &format!("app-{app}"), &app).is_some(), "the app stays");
}
