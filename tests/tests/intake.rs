//! The webhook and API surface against a real scheduler and PostgreSQL (no runner needed):
//! signatures, redeliveries, ignored pushes, malformed, hostile and oversized input.

use std::time::Duration;

use serde_json::{Value, json};
use slipway_tests::harness::{push_body, sign};
use slipway_tests::{Slipway, SlipwayOptions};

const SECRET: &str = "intake-secret-0123456789";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

async fn scheduler_only() -> Slipway {
    Slipway::start(SlipwayOptions { runners: 0, ..Default::default() }).await
}

#[tokio::test]
async fn forged_or_missing_signature_is_refused_and_records_nothing() {
    let mut s = scheduler_only().await;
    let repo = "https://git.example.com/acme/forged.git";
    let app = s.create_app("forged", repo, SECRET, json!({})).await;
    let body = push_body(repo, "refs/heads/main", SHA);

    let wrong = sign("another-secret-0123456789", &body);
    let (status, answer) =
        s.webhook(&[("X-GitHub-Event", "push".into()), ("X-Hub-Signature-256", wrong)], body.clone()).await;
    assert_eq!(status, 401, "{answer}");

    let mut tampered = body.clone();
    let good = sign(SECRET, &body);
    tampered.extend_from_slice(b" ");
    let (status, _) = s.webhook(&[("X-GitHub-Event", "push".into()), ("X-Hub-Signature-256", good)], tampered).await;
    assert_eq!(status, 401, "a signature over a different body must not verify");

    let (status, answer) = s.webhook(&[("X-GitHub-Event", "push".into())], body).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer["error"].as_str().unwrap_or_default().contains("X-Hub-Signature-256"));

    assert!(s.deployments_of(&app).await.is_empty(), "nothing may be recorded");
}

#[tokio::test]
async fn redelivered_push_yields_one_deployment_and_answers_with_its_id() {
    let mut s = scheduler_only().await;
    let repo = "https://git.example.com/acme/redeliver.git";
    let app = s.create_app("redeliver", repo, SECRET, json!({})).await;
    let (first_status, first) = s.push(repo, SHA, SECRET, "delivery-1").await;
    assert_eq!(first_status, 202, "{first}");
    let id = first["deployments"][0]["deployment_id"].clone();
    for _ in 0..5 {
        let (status, again) = s.push(repo, SHA, SECRET, "delivery-1").await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["status"], "duplicate");
        assert_eq!(again["deployments"][0]["deployment_id"], id);
    }
    assert_eq!(s.deployments_of(&app).await.len(), 1);
}

#[tokio::test]
async fn deletions_tags_other_branches_and_other_events_are_acknowledged_and_ignored() {
    let mut s = scheduler_only().await;
    let repo = "https://git.example.com/acme/ignored.git";
    let app = s.create_app("ignored", repo, SECRET, json!({})).await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("push", push_body(repo, "refs/heads/main", "0000000000000000000000000000000000000000"), "deleted"),
        ("push", push_body(repo, "refs/tags/v1.0.0", SHA), "tag"),
        ("push", push_body(repo, "refs/heads/feature", SHA), "branch `feature`"),
        ("issues", push_body(repo, "refs/heads/main", SHA), "`issues`"),
    ];
    for (event, body, reason) in cases {
        let sig = sign(SECRET, &body);
        let (status, answer) = s.webhook(&[("X-GitHub-Event", event.into()), ("X-Hub-Signature-256", sig)], body).await;
        assert!((200..300).contains(&status), "{event}: {status} {answer}");
        assert_eq!(answer["status"], "ignored", "{answer}");
        assert!(answer["reason"].as_str().unwrap_or_default().contains(reason), "{answer} should mention {reason}");
    }
    let mut deleted = push_body(repo, "refs/heads/main", SHA);
    let mut v: Value = serde_json::from_slice(&deleted).expect("json");
    v["deleted"] = json!(true);
    deleted = serde_json::to_vec(&v).expect("json");
    let sig = sign(SECRET, &deleted);
    let (status, answer) = s.webhook(&[("X-GitHub-Event", "push".into()), ("X-Hub-Signature-256", sig)], deleted).await;
    assert_eq!((status, answer["status"].clone()), (202, json!("ignored")));
    assert!(s.deployments_of(&app).await.is_empty());

    let ping = serde_json::to_vec(
        &json!({"zen": "Keep it logically awesome.", "hook_id": 1, "repository": {"clone_url": repo}}),
    )
    .expect("json");
    let sig = sign(SECRET, &ping);
    let (status, answer) = s.webhook(&[("X-GitHub-Event", "ping".into()), ("X-Hub-Signature-256", sig)], ping).await;
    assert_eq!((status, answer["status"].clone()), (200, json!("pong")));
}

#[tokio::test]
async fn malformed_and_oversized_bodies_get_clear_errors() {
    let s = scheduler_only().await;
    let headers = || vec![("X-GitHub-Event", "push".to_string()), ("X-Hub-Signature-256", "sha256=00".to_string())];
    let (status, answer) = s.webhook(&headers(), b"{\"ref\": ".to_vec()).await;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap_or_default().contains("not valid JSON"), "{answer}");
    assert!(answer["error"].as_str().unwrap_or_default().contains("line 1"), "{answer}");

    let (status, _) = s.webhook(&[("X-Hub-Signature-256", "sha256=00".into())], b"{}".to_vec()).await;
    assert_eq!(status, 400, "missing event header");

    // 25 MB is accepted as a size (it then fails verification: no app follows it), 1 byte more is 413.
    let mut big = br#"{"repository":{"clone_url":"https://nowhere.example/x"},"pad":""#.to_vec();
    big.resize(25 * 1024 * 1024 - 2, b'a');
    big.extend_from_slice(b"\"}");
    let (status, answer) = s.webhook(&headers(), big.clone()).await;
    assert_eq!(status, 202, "a 25 MB body is within GitHub's cap: {answer}");
    big.insert(big.len() - 2, b'a');
    let (status, _) = s.webhook(&headers(), big).await;
    assert_eq!(status, 413);

    let resp = s
        .http
        .post(format!("{}/api/v1/webhooks/github", s.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("X-GitHub-Event", "push")
        .body("payload=%7B%7D")
        .send()
        .await
        .expect("reachable");
    assert_eq!(resp.status().as_u16(), 401, "a form-encoded webhook is read, and needs its signature");
}

#[tokio::test]
async fn app_registration_validates_every_field_with_a_clear_error() {
    let s = scheduler_only().await;
    let base = json!({"name": "valid-name", "repo_url": "https://git.example.com/a/b.git", "webhook_secret": SECRET});
    let cases = [
        (json!({"name": "Bad_Name"}), 422, "app name"),
        (json!({"name": "a".repeat(64)}), 422, "longer than 63"),
        (json!({"port": 0}), 422, "port"),
        (json!({"repo_url": "https://user:pw@git.example.com/a/b"}), 422, "credentials"),
        (json!({"target": "nomad"}), 422, "target"),
        (json!({"webhook_secret": "short"}), 422, "webhook_secret"),
        (json!({"colour": "blue"}), 400, "colour"),
        // Hostile values: a clear 422, never a 500.
        (json!({"env": {"TOKEN": "abcdef\u{0}gh"}}), 422, "TOKEN"),
        (json!({"env": {"API_KEY": "abc"}}), 422, "at least 6"),
        (json!({"repo_url": "https://git.example.com/a\u{0}b.git"}), 422, "repo_url"),
        (json!({"webhook_secret": "0123456789abcdef\u{0}"}), 422, "webhook_secret"),
        (json!({"name": "x\u{0}"}), 422, "app name"),
        (json!({"health_path": "/ok\u{0}"}), 422, "health_path"),
        (json!({"app_root": "apps/\u{0}"}), 422, "app_root"),
        (json!({"environment": "prod\u{0}"}), 422, "environment"),
        (json!({"branch": "feature..x"}), 422, "branch"),
        (json!({"branch": "release.lock"}), 422, "branch"),
        (json!({"branch": ".hidden"}), 422, "branch"),
        (json!({"branch": "a//b"}), 422, "branch"),
        (json!({"branch": "topic/"}), 422, "branch"),
        (json!({"branch": "we@{ird"}), 422, "branch"),
        (json!({"branch": "@"}), 422, "branch"),
        (json!({"branch": "a/.b"}), 422, "branch"),
        (json!({"branch": "end."}), 422, "branch"),
        (json!({"branch": "tab\there"}), 422, "branch"),
        (json!({"port": "eighty"}), 400, "port"),
        (json!({"commit_status": {"forge": "svn", "token": "t"}}), 422, "commit_status.forge"),
        (json!({"commit_status": {"forge": "gitea", "token": "t"}}), 422, "api_url is needed"),
        (
            json!({"commit_status": {"forge": "github", "api_url": "https://h.example", "repo": "../x", "token": "t"}}),
            422,
            "owner/repo",
        ),
        (
            json!({"commit_status": {"forge": "github", "api_url": "https://h.example", "repo": "a/b"}}),
            422,
            "token is needed",
        ),
    ];
    for (patch, want, needle) in cases {
        let mut body = base.clone();
        body.as_object_mut().expect("object").extend(patch.as_object().expect("object").clone());
        let (status, answer) = s.post("/api/v1/apps", &body).await;
        assert_eq!(status, want, "{patch}: {answer}");
        assert!(answer["error"].as_str().unwrap_or_default().contains(needle), "{answer} should mention {needle}");
    }
    let (status, _) = s.post("/api/v1/apps", &base).await;
    assert_eq!(status, 201);
    let (status, answer) = s.post("/api/v1/apps", &base).await;
    assert_eq!(status, 409, "{answer}");

    let resp = s
        .http
        .post(format!("{}/api/v1/apps", s.base))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("reachable");
    assert_eq!(resp.status().as_u16(), 400);

    let (status, answer) = s.post("/api/v1/apps/valid-name/deployments", &json!({"sha": "HEAD; rm -rf /"})).await;
    assert_eq!(status, 422, "{answer}");
    let (status, _) = s.get("/api/v1/deployments/not-a-uuid").await;
    assert_eq!(status, 400);
    let (status, _) = s.get(&format!("/api/v1/deployments/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(status, 404);
    let resp = s
        .http
        .get(format!("{}/api/v1/deployments/{}/logs", s.base, uuid::Uuid::new_v4()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("reachable");
    assert_eq!(resp.status().as_u16(), 404);
}

#[tokio::test]
async fn snapshot_routes_refuse_hostile_input_with_clear_errors() {
    let mut s = scheduler_only().await;
    let app = s.create_app("snaps", "https://git.example.com/acme/snaps.git", SECRET, json!({})).await;
    let (status, list) = s.get(&format!("/api/v1/apps/{app}/snapshots")).await;
    assert_eq!((status, list), (200, json!([])));
    let restore = |which: &str| format!("{}/api/v1/apps/{app}/snapshots/{which}/restore", s.base);
    let cases: Vec<(String, &str, Vec<u8>, u16, &str)> = vec![
        (restore("v1"), "application/json", b"{\"confirm\": ".to_vec(), 400, "JSON"),
        (restore("v1"), "application/json", b"{\"confirm\": 7}".to_vec(), 400, "confirm"),
        (
            restore("v1"),
            "application/json",
            format!("{{\"confirm\": \"{app}\", \"force\": true}}").into_bytes(),
            400,
            "force",
        ),
        (restore("v1"), "text/plain", b"confirm".to_vec(), 415, "Content-Type"),
        (
            restore("v1"),
            "application/json",
            format!("{{\"confirm\": \"{}\"}}", "x".repeat(3_000_000)).into_bytes(),
            413,
            "",
        ),
        (restore("v1"), "application/json", b"{\"confirm\": \"\\u0000\"}".to_vec(), 422, "confirm with the app's name"),
        (
            restore("..%2F..%2Fetc%2Fpasswd"),
            "application/json",
            format!("{{\"confirm\": \"{app}\"}}").into_bytes(),
            404,
            "no snapshot",
        ),
        (
            restore(&"v".repeat(5000)),
            "application/json",
            format!("{{\"confirm\": \"{app}\"}}").into_bytes(),
            404,
            "no snapshot",
        ),
        (
            restore("v99999999999999999999"),
            "application/json",
            format!("{{\"confirm\": \"{app}\"}}").into_bytes(),
            404,
            "no snapshot",
        ),
    ];
    for (url, content_type, body, want, needle) in cases {
        // A client of its own each time: a connection the server closed on a refused body is
        // never reused for the next case.
        let client = s.client(&s.token);
        let sent = client.post(&url).header("content-type", content_type).body(body).send().await;
        let resp = match sent {
            Ok(resp) => resp,
            // An oversized body is refused from its Content-Length, before it is read: the
            // server may close the connection while the client is still writing, so the client
            // sees the close instead of the 413. Either way it was refused (the server still
            // answers below).
            Err(err) if want == 413 && err.is_request() => continue,
            Err(err) => panic!("{}: {err}", &url[..url.len().min(120)]),
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, want, "{}: {text}", &url[..url.len().min(120)]);
        assert!(text.contains(needle), "{text} should mention {needle}");
    }
    let (status, _) = s.get(&format!("/api/v1/apps/{app}/snapshots")).await;
    assert_eq!(status, 200, "the scheduler still answers");
}
