//! Every forge's push webhook against a real scheduler and PostgreSQL, with example payloads of
//! each forge (tests/fixtures/forges, in the shape each forge documents): pushes, tags, branch
//! deletions and creations, pings, redeliveries, and each forge's signature failures.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::Sha256;
use slipway_tests::{Slipway, SlipwayOptions, unique};

const SECRET: &str = "forges-secret-0123456789";
const SHA: &str = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7";
const SHA2: &str = "4c1fa9a2f1d0e3b5c7a9e1f3b5d7c9e1a3f5b7d9";

fn fixture(name: &str, repo: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/forges/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .replace("{{REPO}}", repo)
        .replace("{{SHA2}}", SHA2)
        .replace("{{SHA}}", SHA)
        .into_bytes()
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

async fn post(s: &Slipway, forge: &str, headers: &[(&str, String)], body: Vec<u8>) -> (u16, Value) {
    let mut req =
        s.anonymous.post(format!("{}/api/v1/webhooks/{forge}", s.base)).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.body(body).send().await.expect("scheduler answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

async fn deployments_of(s: &Slipway, app: &str) -> Vec<Value> {
    let (_, list) = s.get(&format!("/api/v1/deployments?app={app}")).await;
    list.as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn gitlab_pushes_are_deployed_by_token_or_signature_and_tags_and_deletions_are_ignored() {
    let mut s = Slipway::start(SlipwayOptions { runners: 0, ..Default::default() }).await;
    let repo = format!("https://gitlab.example.com/acme/{}.git", unique("gl"));
    let app = s.create_app("gitlab", &repo, SECRET, json!({})).await;
    let push = fixture("gitlab-push.json", &repo);
    let headers = |token: &str, uuid: &str| {
        vec![
            ("X-Gitlab-Event", "Push Hook".to_string()),
            ("X-Gitlab-Token", token.to_string()),
            ("X-Gitlab-Event-UUID", uuid.to_string()),
        ]
    };

    let (status, answer) = post(&s, "gitlab", &headers("wrong-token-0123456789", "u1"), push.clone()).await;
    assert_eq!(status, 401, "{answer}");
    let (status, _) = post(&s, "gitlab", &[("X-Gitlab-Event", "Push Hook".into())], push.clone()).await;
    assert_eq!(status, 401, "no token");
    assert!(deployments_of(&s, &app).await.is_empty());

    let (status, answer) = post(&s, "gitlab", &headers(SECRET, "u2"), push.clone()).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].clone();
    let (status, again) = post(&s, "gitlab", &headers(SECRET, "u2"), push.clone()).await;
    assert_eq!(
        (status, &again["deployments"][0]["deployment_id"]),
        (200, &id),
        "the same delivery twice is one deployment"
    );
    let list = deployments_of(&s, &app).await;
    assert_eq!(list.len(), 1);
    assert_eq!((list[0]["source"].as_str(), list[0]["sha"].as_str()), (Some("gitlab"), Some(SHA)));

    let (status, answer) = post(
        &s,
        "gitlab",
        &[("X-Gitlab-Event", "Tag Push Hook".into()), ("X-Gitlab-Token", SECRET.into())],
        fixture("gitlab-tag-push.json", &repo),
    )
    .await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("ignored")), "{answer}");
    assert!(answer["reason"].as_str().unwrap_or_default().contains("tag"), "{answer}");
    let (status, answer) =
        post(&s, "gitlab", &headers(SECRET, "u3"), fixture("gitlab-branch-delete.json", &repo)).await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("ignored")), "{answer}");
    assert!(answer["reason"].as_str().unwrap_or_default().contains("deleted"), "{answer}");
    let (status, answer) = post(&s, "gitlab", &headers(SECRET, "u4"), b"{not json".to_vec()).await;
    assert_eq!(status, 400, "{answer}");

    // Signed webhooks (Standard Webhooks), with a whsec_ secret.
    let key = [7u8; 32];
    let whsec = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key));
    let repo2 = format!("https://gitlab.example.com/acme/{}.git", unique("gl-signed"));
    let signed_app = s.create_app("gitlab-signed", &repo2, &whsec, json!({})).await;
    let body = fixture("gitlab-push.json", &repo2);
    let sign = |id: &str, ts: i64, body: &[u8]| {
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
    };
    let now = chrono::Utc::now().timestamp();
    let signed = |id: &str, ts: i64, sig: String| {
        vec![
            ("X-Gitlab-Event", "Push Hook".to_string()),
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sig),
        ]
    };
    let (status, answer) =
        post(&s, "gitlab", &signed("msg_1", now - 3600, sign("msg_1", now - 3600, &body)), body.clone()).await;
    assert_eq!(status, 401, "an old timestamp is a replay: {answer}");
    let (status, _) = post(&s, "gitlab", &signed("msg_1", now, sign("msg_2", now, &body)), body.clone()).await;
    assert_eq!(status, 401, "signed for another id");
    let (status, answer) =
        post(&s, "gitlab", &signed("msg_1", now, format!("v1,AAAA {}", sign("msg_1", now, &body))), body.clone()).await;
    assert_eq!(status, 202, "one of several signatures matches: {answer}");
    assert_eq!(deployments_of(&s, &signed_app).await.len(), 1);
}

#[tokio::test]
async fn a_bitbucket_push_with_several_changes_deploys_each_followed_branch() {
    let mut s = Slipway::start(SlipwayOptions { runners: 0, ..Default::default() }).await;
    let repo = format!("https://bitbucket.org/acme/{}", unique("bb"));
    let main = s.create_app("bb-main", &repo, SECRET, json!({})).await;
    let develop = s.create_app("bb-develop", &repo, SECRET, json!({"branch": "develop"})).await;
    let body = fixture("bitbucket-push.json", &repo);
    let headers = |sig: String, request: &str| {
        vec![
            ("X-Event-Key", "repo:push".to_string()),
            ("X-Hub-Signature", sig),
            ("X-Request-UUID", request.to_string()),
            ("X-Hook-UUID", "{4c3a7a7b-0b8a-4d5e-9f2a-1b2c3d4e5f60}".to_string()),
        ]
    };
    let (status, _) = post(
        &s,
        "bitbucket",
        &headers(format!("sha256={}", hmac_hex("not-the-secret-000", &body)), "r1"),
        body.clone(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = post(&s, "bitbucket", &[("X-Event-Key", "repo:push".into())], body.clone()).await;
    assert_eq!(status, 401, "unsigned");

    let sig = format!("sha256={}", hmac_hex(SECRET, &body));
    let (status, answer) = post(&s, "bitbucket", &headers(sig.clone(), "r2"), body.clone()).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["deployments"].as_array().map(Vec::len), Some(2), "one per followed branch: {answer}");
    let (m, d) = (deployments_of(&s, &main).await, deployments_of(&s, &develop).await);
    assert_eq!((m.len(), d.len()), (1, 1));
    assert_eq!((m[0]["sha"].as_str(), m[0]["source"].as_str()), (Some(SHA), Some("bitbucket")));
    assert_eq!(d[0]["sha"].as_str(), Some(SHA2), "the new branch's head");
    let (status, _) = post(&s, "bitbucket", &headers(sig, "r2"), body.clone()).await;
    assert_eq!(status, 200, "redelivered: nothing new");

    let ping = br#"{"actor": {}, "repository": {"links": {"html": {"href": "REPO"}}}}"#.to_vec();
    let ping = String::from_utf8(ping).expect("utf8").replace("REPO", &repo).into_bytes();
    let sig = format!("sha256={}", hmac_hex(SECRET, &ping));
    let (status, answer) =
        post(&s, "bitbucket", &[("X-Event-Key", "diagnostics:ping".into()), ("X-Hub-Signature", sig)], ping).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("pong")), "{answer}");
}

#[tokio::test]
async fn gitea_and_forgejo_are_verified_by_their_own_headers_wherever_they_are_sent() {
    let mut s = Slipway::start(SlipwayOptions { runners: 0, ..Default::default() }).await;
    let repo = format!("https://gitea.example.com/gitea/{}.git", unique("gt"));
    let app = s.create_app("gitea", &repo, SECRET, json!({})).await;
    let body = fixture("gitea-push.json", &repo);
    let sig = hmac_hex(SECRET, &body);
    let (status, _) = post(
        &s,
        "gitea",
        &[("X-Gitea-Event", "push".into()), ("X-Gitea-Signature", hmac_hex("wrong-secret-0000", &body))],
        body.clone(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, answer) = post(
        &s,
        "gitea",
        &[("X-Gitea-Event", "push".into()), ("X-Gitea-Signature", sig.clone()), ("X-Gitea-Delivery", "g1".into())],
        body.clone(),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let list = deployments_of(&s, &app).await;
    assert_eq!((list.len(), list[0]["source"].as_str()), (1, Some("gitea")));
    // Forgejo's own headers, the same delivery: one deployment.
    let (status, _) = post(
        &s,
        "gitea",
        &[
            ("X-Forgejo-Event", "push".into()),
            ("X-Forgejo-Signature", sig.clone()),
            ("X-Forgejo-Delivery", "g1".into()),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(status, 200);
    // Sent to the GitHub endpoint with GitHub's headers too: read as Gitea, its signature checked.
    let repo2 = format!("https://gitea.example.com/gitea/{}.git", unique("gt2"));
    let app2 = s.create_app("gitea-hub", &repo2, SECRET, json!({})).await;
    let body2 = fixture("gitea-push.json", &repo2);
    let headers = vec![
        ("X-GitHub-Event", "push".to_string()),
        ("X-Hub-Signature-256", "sha256=0000".to_string()),
        ("X-Gitea-Event", "push".to_string()),
        ("X-Gitea-Signature", hmac_hex(SECRET, &body2)),
    ];
    let (status, answer) = post(&s, "github", &headers, body2).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(deployments_of(&s, &app2).await[0]["source"].as_str(), Some("gitea"));
}

#[tokio::test]
async fn a_github_webhook_set_to_form_encoding_is_deployed() {
    let mut s = Slipway::start(SlipwayOptions { runners: 0, ..Default::default() }).await;
    let repo = format!("https://github.com/acme/{}.git", unique("form"));
    let app = s.create_app("form", &repo, SECRET, json!({})).await;
    let payload = slipway_tests::harness::push_body(&repo, "refs/heads/main", SHA);
    let form = format!(
        "payload={}",
        percent_encoding::utf8_percent_encode(
            std::str::from_utf8(&payload).expect("utf8"),
            percent_encoding::NON_ALPHANUMERIC
        )
    );
    let send = |sig: String| {
        s.anonymous
            .post(format!("{}/api/v1/webhooks/github", s.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("X-GitHub-Event", "push")
            .header("X-Hub-Signature-256", sig)
            .body(form.clone())
            .send()
    };
    let refused = send(format!("sha256={}", hmac_hex(SECRET, &payload))).await.expect("send");
    assert_eq!(refused.status().as_u16(), 401, "the signature covers the raw form body, not the JSON inside");
    let accepted = send(format!("sha256={}", hmac_hex(SECRET, form.as_bytes()))).await.expect("send");
    assert_eq!(accepted.status().as_u16(), 202);
    assert_eq!(deployments_of(&s, &app).await[0]["sha"].as_str(), Some(SHA));
    let empty = s
        .anonymous
        .post(format!("{}/api/v1/webhooks/github", s.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", format!("sha256={}", hmac_hex(SECRET, b"other=1")))
        .body("other=1")
        .send()
        .await
        .expect("send");
    assert_eq!(empty.status().as_u16(), 400, "a form without `payload`");
}

#[tokio::test]
async fn a_push_whose_head_commit_says_skip_is_recorded_as_skipped_and_deploys_nothing() {
    let mut s = Slipway::start(SlipwayOptions { runners: 0, ..Default::default() }).await;
    let repo = format!("https://github.com/acme/{}.git", unique("skip"));
    let app = s.create_app("skip", &repo, SECRET, json!({})).await;
    let push = |sha: &str, message: &str| {
        serde_json::to_vec(&json!({
            "ref": "refs/heads/main", "before": "0000000000000000000000000000000000000000", "after": sha,
            "head_commit": {"id": sha, "message": message},
            "repository": {"clone_url": repo},
        }))
        .expect("json")
    };
    let headers = |body: &[u8], delivery: &str| {
        vec![
            ("X-GitHub-Event", "push".to_string()),
            ("X-GitHub-Delivery", delivery.to_string()),
            ("X-Hub-Signature-256", format!("sha256={}", hmac_hex(SECRET, body))),
        ]
    };
    let send = |body: Vec<u8>, delivery: &str| {
        let headers = headers(&body, delivery);
        let s = &s;
        async move { post(s, "github", &headers, body).await }
    };
    // A queued deployment first: a skipped push must not supersede it.
    let (status, queued) = send(push(SHA2, "Add the checkout page"), "d1").await;
    assert_eq!(status, 202, "{queued}");
    let (status, skipped) = send(push(SHA, "Fix a typo in the docs [skip ci]"), "d2").await;
    assert_eq!((status, skipped["status"].as_str()), (202, Some("skipped")), "{skipped}");
    assert!(skipped["reason"].as_str().unwrap_or_default().contains("[skip ci]"), "{skipped}");
    let id = skipped["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let d = s.deployment(&id).await;
    assert_eq!((d["state"].as_str(), d["sha"].as_str()), (Some("cancelled"), Some(SHA)), "{d}");
    assert!(d["cancel_reason"].as_str().unwrap_or_default().starts_with("skipped: "), "{d}");
    let first = s.deployment(queued["deployments"][0]["deployment_id"].as_str().expect("id")).await;
    assert_eq!(first["state"], "queued", "the earlier deployment still goes: {first}");
    let (status, again) = send(push(SHA, "Fix a typo in the docs [skip ci]"), "d2").await;
    assert_eq!((status, again["deployments"][0]["deployment_id"].as_str()), (200, Some(id.as_str())), "{again}");
    // A trailer in a GitLab push does the same.
    let repo2 = format!("https://gitlab.example.com/acme/{}.git", unique("skip-gl"));
    let app2 = s.create_app("skip-gl", &repo2, SECRET, json!({})).await;
    let mut gitlab: Value = serde_json::from_slice(&fixture("gitlab-push.json", &repo2)).expect("json");
    gitlab["commits"][0]["message"] = json!("Update the changelog\n\nskip-checks: true\n");
    let (status, answer) = post(
        &s,
        "gitlab",
        &[("X-Gitlab-Event", "Push Hook".into()), ("X-Gitlab-Token", SECRET.into())],
        serde_json::to_vec(&gitlab).expect("json"),
    )
    .await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("skipped")), "{answer}");
    assert_eq!(deployments_of(&s, &app2).await[0]["state"], "cancelled");
    let out = s.cli_command().args(["status", "--app", &app]).output().expect("slipway status --app");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains(" skipped ") && l.contains("[skip ci]")),
        "shown as skipped, with why: {text}"
    );
    assert_eq!(deployments_of(&s, &app).await.len(), 2);
}

/// A GitHub push of `after` whose branch was at `before`.
fn hub_push(repo: &str, before: &str, after: &str, forced: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ref": "refs/heads/main", "before": before, "after": after, "forced": forced,
        "repository": {"clone_url": repo},
    }))
    .expect("json")
}

async fn hub(s: &Slipway, body: Vec<u8>, delivery: &str) -> (u16, Value) {
    let headers = vec![
        ("X-GitHub-Event", "push".to_string()),
        ("X-GitHub-Delivery", delivery.to_string()),
        ("X-Hub-Signature-256", format!("sha256={}", hmac_hex(SECRET, &body))),
    ];
    post(s, "github", &headers, body).await
}

#[tokio::test]
async fn a_late_webhook_of_an_older_commit_never_replaces_the_newer_one() {
    use slipway_tests::GitServer;
    use slipway_tests::git::Entry;
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("order");
    let url = git.url(&repo);
    s.create_app("order", &url, SECRET, json!({})).await;
    let site = |marker: &str| {
        let dockerfile =
            "FROM slipway/busybox:1\nCOPY www /www\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";
        let index = format!("<p>{marker}</p>\n");
        git.commit(
            &repo,
            marker,
            &[
                Entry::File("Dockerfile", dockerfile.as_bytes()),
                Entry::File("www/index.html", index.as_bytes()),
                Entry::File("www/healthz", b"ok\n"),
            ],
        )
    };
    let zero = "0000000000000000000000000000000000000000";
    let a = site("version-a");
    let b = site("version-b");

    // B's webhook arrives first and deploys; A's, delivered late, is older than B.
    let (status, answer) = hub(&s, hub_push(&url, &a, &b, false), "delivery-b").await;
    assert_eq!(status, 202, "{answer}");
    let newer =
        s.finished(answer["deployments"][0]["deployment_id"].as_str().expect("id"), Duration::from_secs(120)).await;
    assert_eq!(newer["state"], "completed", "{newer}");
    let (status, late) = hub(&s, hub_push(&url, zero, &a, false), "delivery-a").await;
    assert_eq!((status, late["status"].as_str()), (202, Some("skipped")), "{late}");
    let reason = late["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&b) && reason.contains("older"), "{late}");
    let skipped = s.deployment(late["deployments"][0]["deployment_id"].as_str().expect("id")).await;
    assert_eq!(skipped["state"], "cancelled", "{skipped}");
    let live = newer["url"].as_str().expect("url");
    assert!(s.app_body(live, "/").await.expect("answers").contains("version-b"), "B still serves");

    // A forced push back to A names a commit already recorded (skipped): the same deployment.
    // Going back on purpose is `slipway rollback` or `slipway deploy --sha`.
    let (status, forced) = hub(&s, hub_push(&url, &b, &a, true), "delivery-forced").await;
    assert_eq!(status, 200, "{forced}");
}

#[tokio::test]
async fn a_dropped_webhook_is_deployed_by_the_reconcile_and_a_late_redelivery_is_a_no_op() {
    use slipway_tests::git::Entry;
    use slipway_tests::{GitServer, eventually};
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions {
        scheduler_env: vec![("SLIPWAY_RECONCILE_SECONDS".into(), "2".into())],
        ..Default::default()
    })
    .await;
    let repo = unique("reconcile");
    let url = git.url(&repo);
    let app = s.create_app("reconcile", &url, SECRET, json!({})).await;
    let dockerfile =
        "FROM slipway/busybox:1\nCOPY www /www\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";
    let files = |marker: &str| {
        vec![
            ("Dockerfile".to_string(), dockerfile.as_bytes().to_vec()),
            ("www/index.html".to_string(), format!("<p>{marker}</p>\n").into_bytes()),
            ("www/healthz".to_string(), b"ok\n".to_vec()),
        ]
    };
    let commit = |marker: &str| {
        let f = files(marker);
        let entries: Vec<Entry<'_>> = f.iter().map(|(p, c)| Entry::File(p.as_str(), c.as_slice())).collect();
        git.commit(&repo, marker, &entries)
    };
    // The push happens; its webhook never arrives.
    let sha = commit("missed-push");
    let d = eventually(Duration::from_secs(60), "the reconcile to deploy the branch head", || async {
        deployments_of(&s, &app).await.into_iter().find(|d| d["sha"] == sha.as_str())
    })
    .await;
    assert_eq!(d["source"], "reconcile", "{d}");
    let d = s.finished(d["id"].as_str().expect("id"), Duration::from_secs(120)).await;
    assert_eq!(d["state"], "completed", "{d}");
    assert!(s.app_body(d["url"].as_str().expect("url"), "/").await.expect("answers").contains("missed-push"));
    // The webhook, redelivered late: the same deployment.
    let (status, answer) =
        hub(&s, hub_push(&url, "0000000000000000000000000000000000000000", &sha, false), "late").await;
    assert_eq!((status, answer["deployments"][0]["deployment_id"].as_str()), (200, d["id"].as_str()), "{answer}");
    assert_eq!(deployments_of(&s, &app).await.len(), 1);

    // `slipway sync` asks at once; an unknown app is a 404, a viewer may not ask.
    let out = s.cli_command().args(["sync", &app]).output().expect("slipway sync");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, _) = s.post("/api/v1/apps/no-such-app/sync", &json!({})).await;
    assert_eq!(status, 404);
    let viewer = s.create_token("sync-viewer", "viewer", None).await;
    let refused = s.client(&viewer).post(format!("{}/api/v1/apps/{app}/sync", s.base)).send().await.expect("send");
    assert_eq!(refused.status().as_u16(), 403);
}

#[tokio::test]
async fn sync_reads_the_head_at_once_when_the_periodic_reconcile_is_off() {
    use slipway_tests::git::Entry;
    use slipway_tests::{GitServer, eventually};
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { runners: 0, ..Default::default() }).await;
    let repo = unique("sync");
    let url = git.url(&repo);
    let app = s.create_app("sync", &url, SECRET, json!({})).await;
    let sha = git.commit(&repo, "unannounced", &[Entry::File("README", b"hello\n")]);
    assert!(deployments_of(&s, &app).await.is_empty(), "nothing announced the push");
    let (status, answer) = s.post(&format!("/api/v1/apps/{app}/sync"), &json!({})).await;
    assert_eq!(status, 202, "{answer}");
    let d = eventually(Duration::from_secs(30), "the sync to record the head", || async {
        deployments_of(&s, &app).await.into_iter().next()
    })
    .await;
    assert_eq!((d["sha"].as_str(), d["source"].as_str()), (Some(sha.as_str()), Some("reconcile")), "{d}");
}

/// A GitHub push of `after` from `before` whose commits changed `files` (the payload lists them
/// all), or a forced push (no usable list).
fn hub_push_files(repo: &str, before: &str, after: &str, files: &[&str], forced: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ref": "refs/heads/main", "before": before, "after": after, "forced": forced,
        "head_commit": {"id": after, "message": "change"},
        "commits": [{"id": after, "message": "change", "added": [], "modified": files, "removed": []}],
        "repository": {"clone_url": repo},
    }))
    .expect("json")
}

/// The deployment of `app` at `sha`, once it has ended.
async fn ended(s: &Slipway, app: &str, sha: &str) -> Value {
    let found = slipway_tests::eventually(Duration::from_secs(30), "the push's deployment", || async {
        deployments_of(s, app).await.into_iter().find(|d| d["sha"] == sha)
    })
    .await;
    s.finished(found["id"].as_str().expect("id"), Duration::from_secs(180)).await
}

#[tokio::test]
async fn watch_paths_deploy_exactly_the_apps_whose_files_changed() {
    use slipway_tests::GitServer;
    use slipway_tests::git::Entry;
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("mono");
    let url = git.url(&repo);
    // Two apps of one repository: `api` watches its directory by its settings (not Markdown),
    // `web` by the watch paths of its slipway.toml.
    let api = s
        .create_app(
            "api",
            &url,
            SECRET,
            json!({"app_root": "services/api", "watch_paths": ["services/api/**", "!**/*.md"]}),
        )
        .await;
    let web = s.create_app("web", &url, SECRET, json!({"app_root": "services/web"})).await;
    let dockerfile =
        "FROM slipway/busybox:1\nCOPY www /www\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";
    let commit = |message: &str, api_page: &str, web_page: &str, readme: &str| {
        let (api_page, web_page) = (format!("<p>{api_page}</p>\n"), format!("<p>{web_page}</p>\n"));
        git.commit(
            &repo,
            message,
            &[
                Entry::File("README.md", readme.as_bytes()),
                Entry::File("services/api/Dockerfile", dockerfile.as_bytes()),
                Entry::File("services/api/README.md", b"the api\n"),
                Entry::File("services/api/www/index.html", api_page.as_bytes()),
                Entry::File("services/api/www/healthz", b"ok\n"),
                Entry::File("services/web/Dockerfile", dockerfile.as_bytes()),
                Entry::File("services/web/slipway.toml", b"watch_paths = [\"services/web/**\"]\n"),
                Entry::File("services/web/www/index.html", web_page.as_bytes()),
                Entry::File("services/web/www/healthz", b"ok\n"),
            ],
        )
    };
    let zero = "0000000000000000000000000000000000000000";
    let serves = |d: &Value, text: &str| {
        let (url, text) = (d["url"].as_str().expect("url").to_string(), text.to_string());
        let s = &s;
        async move { s.app_body(&url, "/").await.is_some_and(|body| body.contains(&text)) }
    };

    // A new branch: the forge's list is not usable and nothing is live, so both deploy.
    let c1 = commit("first", "api-1", "web-1", "v1");
    let (status, answer) = hub(&s, hub_push_files(&url, zero, &c1, &[], false), "mono-1").await;
    assert_eq!(status, 202, "{answer}");
    let (api1, web1) = (ended(&s, &api, &c1).await, ended(&s, &web, &c1).await);
    assert_eq!((api1["state"].as_str(), web1["state"].as_str()), (Some("completed"), Some("completed")), "{web1}");

    // Only the api changed, and the payload lists the file: the api deploys; web's runner reads
    // its slipway.toml, finds no watched file changed, builds nothing and serves on.
    let c2 = commit("api only", "api-2", "web-1", "v1");
    let (status, answer) =
        hub(&s, hub_push_files(&url, &c1, &c2, &["services/api/www/index.html"], false), "mono-2").await;
    assert_eq!(status, 202, "{answer}");
    let api2 = ended(&s, &api, &c2).await;
    assert_eq!(api2["state"], "completed", "{api2}");
    assert!(serves(&api2, "api-2").await, "the api serves its new page");
    let web2 = ended(&s, &web, &c2).await;
    assert_eq!((web2["state"].as_str(), web2["cancel_by"].as_str()), (Some("cancelled"), Some("slipway")), "{web2}");
    let reason = web2["cancel_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("skipped: no changed file matches the watch paths (services/web/**)"), "{web2}");
    assert!(web2["runner_id"].is_string(), "decided by the runner after the clone: {web2}");
    let steps: Vec<(String, String)> = web2["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|st| (st["step"].as_str().unwrap_or("").to_string(), st["status"].as_str().unwrap_or("").to_string()))
        .collect();
    for step in ["build", "test", "push", "deploy"] {
        assert!(steps.contains(&(step.to_string(), "skipped".to_string())), "{step} shown as skipped: {steps:?}");
    }
    assert!(serves(&web1, "web-1").await, "web's first version still serves");

    // A forced push lists nothing usable: each runner diffs the new commit against what its app
    // has live. Since c2 the web page and the root README changed: web deploys, the api does not.
    let c3 = commit("web and docs", "api-2", "web-3", "v3");
    let (status, answer) = hub(&s, hub_push_files(&url, &c2, &c3, &[], true), "mono-3").await;
    assert_eq!(status, 202, "{answer}");
    let web3 = ended(&s, &web, &c3).await;
    assert_eq!(web3["state"], "completed", "{web3}");
    assert!(serves(&web3, "web-3").await, "web serves its new page");
    let api3 = ended(&s, &api, &c3).await;
    assert_eq!(api3["state"], "cancelled", "{api3}");
    assert!(api3["cancel_reason"].as_str().unwrap_or_default().contains("2 files changed"), "{api3}");
    assert!(serves(&api2, "api-2").await, "the api's version stays");
    let log = s.log_lines(api3["id"].as_str().expect("id"), None).await;
    let diffed = format!("differ from {c2}, the live commit");
    assert!(log.iter().any(|(_, line)| line.contains(&diffed)), "{log:?}");

    // Only Markdown changed, listed by the forge: the api's own exclusion skips it at once,
    // without a job (no runner ever held it).
    let c4 = commit("docs", "api-2", "web-3", "v4");
    let (status, answer) = hub(&s, hub_push_files(&url, &c3, &c4, &["README.md"], false), "mono-4").await;
    assert_eq!(status, 202, "{answer}");
    let api4 = ended(&s, &api, &c4).await;
    assert_eq!(api4["state"], "cancelled", "{api4}");
    assert!(api4["runner_id"].is_null(), "decided from the payload: {api4}");
    assert!(api4["cancel_reason"].as_str().unwrap_or_default().contains("1 file changed"), "{api4}");
    let web4 = ended(&s, &web, &c4).await;
    assert_eq!(web4["state"], "cancelled", "web's slipway.toml does not watch README.md: {web4}");
}

/// A pull request fixture of `forge` for `repo`: request 5 from the same repository, or request
/// 6 from a fork.
fn pull_fixture(name: &str, repo: &str, action: &str, fork: bool, merged: bool) -> Vec<u8> {
    let (head_repo, head_id) = match (name, fork) {
        (_, true) => ("someone/fork", "999"),
        (n, false) if n.starts_with("gitlab") => ("", "1"),
        (n, false) if n.starts_with("github") => ("Codertocat/Hello-World", "186853002"),
        _ => ("acme/web", "7"),
    };
    String::from_utf8(fixture(name, repo))
        .expect("utf-8")
        .replace("{{ACTION}}", action)
        .replace("{{NUMBER}}", if fork { "6" } else { "5" })
        .replace("{{HEAD_REPO_ID}}", head_id)
        .replace("{{HEAD_REPO}}", head_repo)
        .replace("{{MERGED}}", if merged { "true" } else { "false" })
        .replace("{{SHORT_SHA}}", &SHA[..12])
        .into_bytes()
}

#[tokio::test]
async fn pull_requests_of_every_forge_open_and_close_previews_once_each() {
    let mut s = Slipway::start(SlipwayOptions { runners: 0, ..Default::default() }).await;
    let previews = json!({"previews": {"max": 3}});
    // (forge path, fixture, open event, close event, headers for a body and a delivery id)
    type Headers = fn(&[u8], &str, &str) -> Vec<(&'static str, String)>;
    let cases: [(&str, &str, &str, &str, &str, &str, Headers); 4] = [
        (
            "github",
            "github-pull-request.json",
            "opened",
            "closed",
            "https://github.com/acme",
            "refs/pull/5/head",
            |b, event, id| {
                vec![
                    ("X-GitHub-Event", event.to_string()),
                    ("X-GitHub-Delivery", id.to_string()),
                    ("X-Hub-Signature-256", format!("sha256={}", hmac_hex(SECRET, b))),
                ]
            },
        ),
        (
            "gitlab",
            "gitlab-merge-request.json",
            "open",
            "merge",
            "https://gitlab.example.com/acme",
            "refs/merge-requests/5/head",
            |_, _, id| {
                vec![
                    ("X-Gitlab-Event", "Merge Request Hook".to_string()),
                    ("X-Gitlab-Token", SECRET.to_string()),
                    ("X-Gitlab-Event-UUID", id.to_string()),
                ]
            },
        ),
        (
            "bitbucket",
            "bitbucket-pullrequest.json",
            "pullrequest:created",
            "pullrequest:fulfilled",
            "https://bitbucket.org/acme",
            "refs/heads/feature",
            |b, event, id| {
                vec![
                    ("X-Event-Key", event.to_string()),
                    ("X-Request-UUID", id.to_string()),
                    ("X-Hub-Signature", format!("sha256={}", hmac_hex(SECRET, b))),
                ]
            },
        ),
        (
            "gitea",
            "gitea-pull-request.json",
            "opened",
            "closed",
            "https://gitea.example.com/acme",
            "refs/pull/5/head",
            |b, _, id| {
                vec![
                    ("X-Forgejo-Event", "pull_request".to_string()),
                    ("X-Forgejo-Delivery", id.to_string()),
                    ("X-Forgejo-Signature", hmac_hex(SECRET, b)),
                ]
            },
        ),
    ];
    for (forge, file, open, close, base, head_ref, headers) in cases {
        let repo = format!("{base}/{}.git", unique(forge));
        let app = s.create_app(forge, &repo, SECRET, previews.clone()).await;
        let plain = s.create_app(&format!("{forge}-plain"), &repo, SECRET, json!({})).await;
        // Bitbucket's event is its header; the others' action is in the body.
        let (open_event, open_action) = if forge == "bitbucket" { (open, "") } else { ("pull_request", open) };
        let (close_event, close_action) = if forge == "bitbucket" { (close, "") } else { ("pull_request", close) };
        let opened = pull_fixture(file, &repo, open_action, false, false);

        let mut forged = headers(&opened, open_event, "d-forged");
        forged.iter_mut().for_each(|(k, v)| {
            if k.contains("Signature") || k.contains("Token") {
                *v = format!("sha256={}", hmac_hex("wrong-secret-0123456", &opened));
            }
        });
        let (status, answer) = post(&s, forge, &forged, opened.clone()).await;
        assert_eq!(status, 401, "{forge}: a wrong signature: {answer}");

        let (status, answer) = post(&s, forge, &headers(&opened, open_event, "d-open"), opened.clone()).await;
        assert_eq!(status, 202, "{forge}: {answer}");
        let listed = deployments_of(&s, &app).await;
        assert_eq!(listed.len(), 1, "{forge}: {listed:?}");
        let d = &listed[0];
        assert_eq!(
            (d["environment"].as_str(), d["source"].as_str(), d["git_ref"].as_str(), d["state"].as_str()),
            (Some("pr-5"), Some("preview"), Some(head_ref), Some("queued")),
            "{forge}: {d}"
        );
        // Bitbucket names the head by an abbreviation: the runner resolves the source branch.
        let want_sha = if forge == "bitbucket" { "" } else { SHA };
        assert_eq!(d["sha"].as_str(), Some(want_sha), "{forge}: {d}");
        assert!(deployments_of(&s, &plain).await.is_empty(), "{forge}: an app without previews deploys nothing");

        // The same delivery again, or another delivery of the same head: one deployment.
        for id in ["d-open", "d-open-again"] {
            let (status, again) = post(&s, forge, &headers(&opened, open_event, id), opened.clone()).await;
            assert_eq!((status, again["status"].as_str()), (200, Some("duplicate")), "{forge}: {again}");
        }
        assert_eq!(deployments_of(&s, &app).await.len(), 1, "{forge}: the same head once");

        let from_fork = pull_fixture(file, &repo, open_action, true, false);
        let (status, answer) = post(&s, forge, &headers(&from_fork, open_event, "d-fork"), from_fork.clone()).await;
        assert_eq!((status, answer["status"].as_str()), (202, Some("ignored")), "{forge}: {answer}");
        assert!(answer["reason"].as_str().unwrap_or_default().contains("fork"), "{forge}: {answer}");

        let closed = pull_fixture(file, &repo, close_action, false, true);
        let (status, answer) = post(&s, forge, &headers(&closed, close_event, "d-close"), closed.clone()).await;
        assert_eq!(status, 202, "{forge}: {answer}");
        let listed = deployments_of(&s, &app).await;
        let teardown = listed.iter().find(|d| d["source"] == "teardown").expect("a teardown");
        assert_eq!((teardown["environment"].as_str(), teardown["state"].as_str()), (Some("pr-5"), Some("queued")));
        let superseded: Vec<_> =
            listed.iter().filter(|d| d["source"] == "preview").map(|d| d["state"].clone()).collect();
        assert!(superseded.iter().all(|st| st == "cancelled"), "{forge}: the queued preview is superseded: {listed:?}");
        let (status, again) = post(&s, forge, &headers(&closed, close_event, "d-close-2"), closed.clone()).await;
        assert_eq!((status, again["status"].as_str()), (202, Some("ignored")), "{forge}: {again}");
        let (_, list) = s.get(&format!("/api/v1/apps/{app}/previews")).await;
        let state =
            |n: u64| list.as_array().into_iter().flatten().find(|p| p["number"] == n).cloned().unwrap_or_default();
        assert_eq!(
            (state(5)["state"].as_str(), state(5)["reason"].as_str()),
            (Some("closed"), Some("the pull request was merged")),
            "{forge}: {list}"
        );
        assert_eq!(
            (state(6)["state"].as_str(), state(6)["from_fork"].as_bool()),
            (Some("refused"), Some(true)),
            "{forge}: {list}"
        );
    }
}
