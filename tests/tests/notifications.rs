//! Notifications of deployment events: a webhook receiver double that checks the Standard
//! Webhooks signature of every request exactly as the spec defines it (its own HMAC, not
//! Slipway's), and a Slack double that checks an incoming-webhook message. Deliveries are
//! retried until delivered, survive a scheduler that dies, never hold up a deployment, and
//! never go where the outbound guard forbids.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use base64::Engine;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, eventually, unique};

const SECRET: &str = "notify-secret-0123456789";

/// What a double received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    /// The status the receiver answered it with.
    answered: u16,
}

/// What the receiver answers, and what it received.
type Shared = (Arc<AtomicU16>, Arc<Mutex<Vec<Received>>>);

/// An HTTP receiver on 127.0.0.1 that records every request and answers `status`.
#[derive(Clone)]
struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start() -> Self {
        let status = Arc::new(AtomicU16::new(200));
        let got = Arc::new(Mutex::new(Vec::new()));
        let state = (status.clone(), got.clone());
        let app = Router::new().fallback(
            |State((status, got)): State<Shared>, uri: Uri, headers: HeaderMap, body: Bytes| async move {
                let code = StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
                let answered = code.as_u16();
                got.lock().expect("lock").push(Received { path: uri.path().to_string(), headers, body, answered });
                (code, if code.is_success() { "ok" } else { "try later" })
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app.with_state(state)).await;
        });
        Self { url, status, got }
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }
}

/// Checks a Standard Webhooks request: `webhook-id`, a timestamp within five minutes, and a
/// `v1,` signature that is the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` keyed by the
/// base64 after `whsec_`. Returns the event.
fn verified(r: &Received, secret: &str) -> Value {
    let header = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let (id, timestamp, signature) = (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    assert!(!id.is_empty(), "webhook-id");
    assert_eq!(header("content-type"), "application/json");
    let ts: i64 = timestamp.parse().expect("webhook-timestamp is Unix seconds");
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 300, "timestamp {ts}");
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ secret"))
        .expect("base64 key");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&r.body);
    let want = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
    assert!(signature.split(' ').any(|s| s == want), "signature {signature} is not {want}");
    let event: Value = serde_json::from_slice(&r.body).expect("a JSON body");
    assert!(event["type"].is_string() && event["timestamp"].is_string() && event["data"].is_object(), "{event}");
    event
}

fn cli(s: &Slipway, args: &[&str]) -> Value {
    let out = s.cli_command().arg("--json").args(args).output().expect("slipway");
    assert!(out.status.success(), "slipway {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The events of `deployment` the webhook receiver verified and accepted (answered 2xx), by
/// `webhook-id` (a retry repeats it).
fn events_for(hook: &Receiver, secret: &str, deployment: &str) -> std::collections::BTreeMap<String, String> {
    hook.received()
        .iter()
        .filter(|r| r.path == "/hook" && (200..300).contains(&r.answered))
        .map(|r| (r.headers["webhook-id"].to_str().unwrap_or_default().to_string(), verified(r, secret)))
        .filter(|(_, e)| e["data"]["deployment_id"] == deployment)
        .map(|(id, e)| (id, e["type"].as_str().unwrap_or_default().to_string()))
        .collect()
}

fn site(git: &GitServer, repo: &str, marker: &str, fail: bool) -> String {
    let run = if fail { "RUN echo broken build && exit 3" } else { "RUN mkdir -p /www && echo ok > /www/healthz" };
    let dockerfile = format!(
        "FROM slipway/busybox:1\n{run}\nRUN echo {} > /www/v\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
        unique(marker)
    );
    git.commit(repo, marker, &[Entry::File("Dockerfile", dockerfile.as_bytes())])
}

#[tokio::test]
async fn deployment_events_reach_signed_webhooks_and_slack_retried_durably_and_never_blocking() {
    let hook = Receiver::start().await;
    let slack = Receiver::start().await;
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions {
        scheduler_env: vec![("SLIPWAY_ALLOW_PRIVATE_NOTIFY".into(), "127.0.0.1".into())],
        ..Default::default()
    })
    .await;
    let repo = unique("notify");
    let url = git.url(&repo);
    let app = s.create_app("notify", &url, SECRET, json!({})).await;

    // A global webhook (its secret made and shown once), a Slack target for the app's endings.
    let created = cli(&s, &["notifications", "add", "ops-hook", "--webhook", &format!("{}/hook", hook.url)]);
    let secret = created["secret"].as_str().expect("a signing secret").to_string();
    let slack_url = format!("{}/services/T000/B000/XXXXSECRETXXXX", slack.url);
    let args = ["notifications", "add", "team-slack", "--slack", &slack_url, "--app", &app];
    cli(&s, &[&args[..], &["--events", "deploy.completed,deploy.failed"]].concat());
    let listed = cli(&s, &["notifications", "list"]).to_string();
    assert!(!listed.contains("XXXXSECRETXXXX") && listed.contains("team-slack"), "URLs are not shown: {listed}");

    // The receiver is down for the first two tries: the deployment does not wait, the events
    // arrive once it answers, each signed.
    hook.answer(503);
    let sha = site(&git, &repo, "v1", false);
    let (status, answer) = s.push(&url, &sha, SECRET, "notify-1").await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let d = s.finished(&id, Duration::from_secs(120)).await;
    assert_eq!(d["state"], "completed", "{d}");
    eventually(Duration::from_secs(30), "two refused tries", || {
        let n = hook.received().len();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    hook.answer(200);
    let events = eventually(Duration::from_secs(60), "queued, started and completed", || {
        let events = events_for(&hook, &secret, &id);
        let kinds: std::collections::BTreeSet<String> = events.values().cloned().collect();
        let want = ["deploy.queued", "deploy.started", "deploy.completed"].map(String::from).into_iter().collect();
        async move { (kinds == want).then_some(events) }
    })
    .await;
    assert_eq!(events.len(), 3, "one webhook-id per event, kept across retries: {events:?}");
    let completed = hook
        .received()
        .into_iter()
        .map(|r| verified(&r, &secret))
        .find(|e| e["type"] == "deploy.completed" && e["data"]["deployment_id"] == id.as_str())
        .expect("completed");
    assert_eq!(completed["data"]["app"], app.as_str());
    assert_eq!(completed["data"]["sha"], sha.as_str());
    assert!(completed["data"]["link"].as_str().unwrap_or_default().ends_with(&format!("/api/v1/deployments/{id}")));
    let slack_text = eventually(Duration::from_secs(30), "the Slack message", || {
        let got = slack.received();
        async move {
            got.iter().find_map(|r| {
                let body: Value = serde_json::from_slice(&r.body).ok()?;
                let text = body["text"].as_str()?.to_string();
                assert_eq!(r.path, "/services/T000/B000/XXXXSECRETXXXX");
                assert_eq!(r.headers["content-type"], "application/json");
                text.contains("is live").then_some(text)
            })
        }
    })
    .await;
    assert!(slack_text.contains(&format!("*{app}*")) && slack_text.contains(&sha[..12]), "{slack_text}");
    assert!(slack_text.contains("pushed by test (github)"), "who pushed, from the push: {slack_text}");
    assert_eq!(completed["data"]["pushed_by"], "test");
    // The receiver's 200 and the worker's record of it are not one instant: wait for the record.
    eventually(Duration::from_secs(30), "a delivery that took more than one attempt listed as delivered", || {
        let deliveries = cli(&s, &["notifications", "deliveries", "--target", "ops-hook"]);
        let retried = deliveries.as_array().expect("deliveries").iter().any(|d| {
            d["state"] == "delivered" && d["attempts"].as_u64().unwrap_or_default() >= 2 && d["last_status"] == 200
        });
        async move { retried.then_some(()) }
    })
    .await;

    // A failing build: Slack names the failed step; the scheduler dies before the webhook's
    // receiver is back, and the one that comes up delivers what was recorded.
    hook.answer(500);
    let sha = site(&git, &repo, "v2", true);
    let (_, answer) = s.push(&url, &sha, SECRET, "notify-2").await;
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let d = s.finished(&id, Duration::from_secs(120)).await;
    assert_eq!(d["state"], "failed", "{d}");
    s.scheduler.kill9();
    hook.answer(200);
    s.base = s.add_scheduler().await;
    eventually(Duration::from_secs(90), "the failure's events after the restart", || {
        let kinds: std::collections::BTreeSet<String> = events_for(&hook, &secret, &id).into_values().collect();
        async move { kinds.contains("deploy.failed").then_some(()) }
    })
    .await;
    let failed_text = eventually(Duration::from_secs(30), "the Slack failure message", || {
        let got = slack.received();
        async move {
            got.iter().find_map(|r| {
                let text = serde_json::from_slice::<Value>(&r.body).ok()?["text"].as_str()?.to_string();
                text.contains("failed at").then_some(text)
            })
        }
    })
    .await;
    assert!(failed_text.contains("failed at *build* (user error)"), "{failed_text}");

    // A target the outbound guard forbids is never sent to; a test event reaches an allowed one.
    cli(&s, &["notifications", "add", "inside", "--webhook", "http://10.255.255.1/hook"]);
    let before = hook.received().len();
    cli(&s, &["notifications", "test", "ops-hook"]);
    let sent = cli(&s, &["notifications", "test", "inside"]);
    let delivery = sent["delivery_id"].as_str().expect("delivery").to_string();
    eventually(Duration::from_secs(30), "the guard's refusal recorded", || {
        let list = cli(&s, &["notifications", "deliveries", "--target", "inside"]);
        let refused = list.as_array().into_iter().flatten().any(|d| {
            d["id"] == delivery.as_str()
                && d["last_status"].is_null()
                && d["last_error"].as_str().unwrap_or_default().contains("outbound guard")
        });
        async move { refused.then_some(()) }
    })
    .await;
    eventually(Duration::from_secs(30), "the test event", || {
        let got = hook.received();
        async move {
            got[before..]
                .iter()
                .any(|r| serde_json::from_slice::<Value>(&r.body).is_ok_and(|e| e["type"] == "notification.test"))
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn targets_are_validated_and_scoped_by_role() {
    let mut s = Slipway::start(SlipwayOptions { runners: 0, edge: false, ..Default::default() }).await;
    let app = s.create_app("scoped", "https://git.example.com/acme/scoped.git", SECRET, json!({})).await;
    let other = s.create_app("other", "https://git.example.com/acme/other.git", SECRET, json!({})).await;
    let deployer = s.create_token("app-deployer", "deployer", Some(&app)).await;
    let client = s.client(&deployer);
    let post = |c: &reqwest::Client, body: Value| {
        let c = c.clone();
        let url = format!("{}/api/v1/notifications/targets", s.base);
        async move {
            let resp = c.post(url).json(&body).send().await.expect("send");
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let hook = |name: &str, app: Option<&str>| {
        let mut body = json!({"name": name, "kind": "webhook", "url": "https://hooks.example.com/slipway"});
        if let Some(app) = app {
            body["app"] = json!(app);
        }
        body
    };
    // A deployer adds targets for its app only; every app's targets are an admin's.
    assert_eq!(post(&client, hook("mine", Some(&app))).await.0, 201);
    assert_eq!(post(&client, hook("theirs", Some(&other))).await.0, 403);
    assert_eq!(post(&client, hook("everyone", None)).await.0, 403);
    assert_eq!(post(&s.http, hook("everyone", None)).await.0, 201);
    assert_eq!(post(&s.http, hook("mine", None)).await.0, 409, "names are unique");
    let (status, _) = {
        let resp =
            client.delete(format!("{}/api/v1/notifications/targets/everyone", s.base)).send().await.expect("send");
        (resp.status().as_u16(), ())
    };
    assert_eq!(status, 403, "a deployer of one app cannot remove a global target");
    let resp = s.anonymous.get(format!("{}/api/v1/notifications/deliveries", s.base)).send().await.expect("send");
    assert_eq!(resp.status().as_u16(), 401);

    // Hostile and malformed targets get clear errors, never a 500.
    let cases = [
        (json!({"name": "bad name", "kind": "webhook", "url": "https://h.example/x"}), 422, "name"),
        (json!({"name": "k", "kind": "pager", "url": "https://h.example/x"}), 422, "kind"),
        (json!({"name": "u", "kind": "webhook", "url": "file:///etc/passwd"}), 422, "url"),
        (json!({"name": "c", "kind": "webhook", "url": "https://u:p@h.example/x"}), 422, "url"),
        (json!({"name": "e", "kind": "slack", "url": "https://h.example/x", "events": ["rm -rf"]}), 422, "events"),
        (json!({"name": "s", "kind": "webhook", "url": "https://h.example/x", "secret": "short"}), 422, "whsec_"),
        (json!({"name": "x", "kind": "webhook", "url": "https://h.example/x", "colour": "red"}), 400, "colour"),
        (json!({"name": "n\u{0}", "kind": "webhook", "url": "https://h.example/x"}), 422, "name"),
        (
            json!({"name": "l", "kind": "webhook", "url": format!("https://h.example/{}", "a".repeat(5000))}),
            422,
            "2048",
        ),
    ];
    for (body, want, needle) in cases {
        let (status, answer) = post(&s.http, body.clone()).await;
        assert_eq!(status, want, "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap_or_default().contains(needle), "{answer} should mention {needle}");
    }
    let resp = s.http.get(format!("{}/api/v1/notifications/deliveries?limit=abc", s.base)).send().await.expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    let resp = s.http.post(format!("{}/api/v1/notifications/targets/nobody/test", s.base)).send().await.expect("send");
    assert_eq!(resp.status().as_u16(), 404);
}

/// What a forge double checks of one status request, as each forge documents it: the path,
/// the auth header, the state values and the body's exact keys.
fn check_status(forge: &str, r: &Received, repo: &str, sha: &str, token: &str) -> Option<String> {
    let path = match forge {
        "github" => format!("/gh/repos/{repo}/statuses/{sha}"),
        "gitlab" => format!("/gl/projects/{}/statuses/{sha}", repo.replace('/', "%2F")),
        "bitbucket" => format!("/bb/repositories/{repo}/commit/{sha}/statuses/build"),
        _ => format!("/gt/repos/{repo}/statuses/{sha}"),
    };
    if r.path != path {
        return None;
    }
    let header = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body: Value = serde_json::from_slice(&r.body).expect("a JSON body");
    assert_eq!(header("content-type"), "application/json", "{forge}");
    let keys = |want: &[&str]| {
        let mut got: Vec<&str> = body.as_object().expect("object").keys().map(String::as_str).collect();
        got.sort_unstable();
        let mut want = want.to_vec();
        want.sort_unstable();
        assert_eq!(got, want, "{forge}: {body}");
    };
    let states: &[&str] = match forge {
        "github" => {
            assert_eq!(header("authorization"), format!("Bearer {token}"));
            assert_eq!(header("accept"), "application/vnd.github+json");
            assert_eq!(header("x-github-api-version"), "2022-11-28");
            keys(&["state", "target_url", "description", "context"]);
            &["pending", "success", "failure", "error"]
        }
        "gitlab" => {
            assert_eq!(header("private-token"), token);
            keys(&["state", "name", "target_url", "description"]);
            &["pending", "running", "success", "failed", "canceled"]
        }
        "bitbucket" => {
            assert_eq!(header("authorization"), format!("Bearer {token}"));
            keys(&["key", "name", "url", "description", "state"]);
            &["INPROGRESS", "SUCCESSFUL", "FAILED", "STOPPED"]
        }
        _ => {
            assert_eq!(header("authorization"), format!("token {token}"));
            keys(&["state", "target_url", "description", "context"]);
            &["pending", "success", "failure", "error"]
        }
    };
    let state = body["state"].as_str().unwrap_or_default().to_string();
    assert!(states.contains(&state.as_str()), "{forge}: state {state}");
    assert!(body["description"].as_str().is_some_and(|d| d.len() <= 140), "{forge}: {body}");
    Some(state)
}

#[tokio::test]
async fn each_forge_gets_its_commit_statuses_as_documented_and_a_failure_names_its_step() {
    let forge = Receiver::start().await;
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions {
        scheduler_env: vec![("SLIPWAY_ALLOW_PRIVATE_NOTIFY".into(), "127.0.0.1".into())],
        ..Default::default()
    })
    .await;
    let forges = [("github", "gh"), ("gitlab", "gl"), ("bitbucket", "bb"), ("gitea", "gt")];
    let mut pushed = Vec::new();
    for (i, (kind, prefix)) in forges.iter().enumerate() {
        let repo = unique(&format!("status{i}"));
        let url = git.url(&repo);
        let (owner_repo, token) = (format!("acme/web-{i}"), format!("{prefix}-token-{i}"));
        let status =
            json!({"forge": kind, "api_url": format!("{}/{prefix}", forge.url), "repo": owner_repo, "token": token});
        let app = s.create_app(&format!("status{i}"), &url, SECRET, json!({"commit_status": status})).await;
        let (_, shown) = s.get(&format!("/api/v1/apps/{app}")).await;
        assert!(!shown.to_string().contains(&token), "the token is never shown: {shown}");
        assert_eq!(shown["commit_status"]["forge"], *kind);
        let fail = *kind == "github";
        let sha = site(&git, &repo, "v1", fail);
        let (status, answer) = s.push(&url, &sha, SECRET, &format!("status-{i}")).await;
        assert_eq!(status, 202, "{answer}");
        let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
        pushed.push((kind.to_string(), owner_repo, token, sha, id, fail));
    }
    for (kind, repo, token, sha, id, fail) in &pushed {
        let d = s.finished(id, Duration::from_secs(120)).await;
        assert_eq!(d["state"], if *fail { "failed" } else { "completed" }, "{d}");
        let last = if *fail { ["failure", "FAILED", "failed"] } else { ["success", "SUCCESSFUL", "success"] };
        let states = eventually(Duration::from_secs(60), "the final status", || {
            let states: Vec<String> =
                forge.received().iter().filter_map(|r| check_status(kind, r, repo, sha, token)).collect();
            async move { states.last().is_some_and(|s| last.contains(&s.as_str())).then_some(states) }
        })
        .await;
        assert!(states.len() >= 3, "{kind}: queued, started and the end: {states:?}");
        assert!(["pending", "INPROGRESS"].contains(&states[0].as_str()), "{kind}: {states:?}");
        let end = forge
            .received()
            .into_iter()
            .filter(|r| check_status(kind, r, repo, sha, token).is_some())
            .map(|r| serde_json::from_slice::<Value>(&r.body).expect("json"))
            .last()
            .expect("the end");
        let (link, description) = match kind.as_str() {
            "bitbucket" => (end["url"].clone(), end["description"].clone()),
            _ => (end["target_url"].clone(), end["description"].clone()),
        };
        if *fail {
            assert_eq!(description, "Slipway: failed at build (user error)", "{kind}: {end}");
            assert!(link.as_str().unwrap_or_default().ends_with(&format!("/api/v1/deployments/{id}")), "{end}");
        } else {
            assert_eq!(
                Some(link.as_str().unwrap_or_default()),
                d["url"].as_str(),
                "{kind}: success links the app: {end}"
            );
        }
    }
    let deliveries = cli(&s, &["notifications", "deliveries"]);
    assert!(deliveries.to_string().contains("commit-status:status0"), "{deliveries}");
}
