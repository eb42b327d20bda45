//! Who gets in, and what leaves: every API route by every role, token lifetimes, who did what,
//! secrets at rest and in answers, the outbound guard at registration and in the runner,
//! credentials only over https to their host, and forged webhooks that cannot stall the
//! scheduler. Against a real scheduler, PostgreSQL, RabbitMQ and a git server.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slipway_tests::git::Entry;
use slipway_tests::harness::{psql, psql_value, push_body, sign};
use slipway_tests::{GitServer, Slipway, SlipwayOptions};

const SECRET: &str = "security-secret-0123456789";

async fn scheduler_only() -> Slipway {
    Slipway::start(SlipwayOptions { runners: 0, ..Default::default() }).await
}

async fn send(client: &reqwest::Client, method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "PATCH" => client.patch(url),
        "DELETE" => client.delete(url),
        other => panic!("method {other}"),
    };
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("scheduler reachable");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_route_answers_each_role_as_documented() {
    let mut s = scheduler_only().await;
    let app = s.create_app("mine", "https://git.example.com/acme/mine.git", SECRET, json!({})).await;
    let other = s.create_app("other", "https://git.example.com/acme/other.git", SECRET, json!({})).await;
    let (_, deployed) = s.post(&format!("/api/v1/apps/{app}/deployments"), &json!({})).await;
    let id = deployed["deployment_id"].as_str().expect("deployment id").to_string();
    let (_, deployed) = s.post(&format!("/api/v1/apps/{other}/deployments"), &json!({})).await;
    let other_id = deployed["deployment_id"].as_str().expect("deployment id").to_string();

    let viewer = s.create_token("viewer", "viewer", None).await;
    let deployer = s.create_token("deployer", "deployer", None).await;
    let scoped = s.create_token("scoped", "deployer", Some(&app)).await;
    let revoked = s.create_token("revoked", "admin", None).await;
    let (status, _) = send(&s.http, "DELETE", &format!("{}/api/v1/tokens/revoked", s.base), None).await;
    assert_eq!(status, 200);
    let expired = s.create_token("expired", "admin", None).await;
    psql(&s.database_url, "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE name = 'expired'");

    // (name, client); the admin is the harness's own client.
    let callers: Vec<(&str, reqwest::Client)> = vec![
        ("none", s.anonymous.clone()),
        ("garbage", s.client("slw_not-a-real-token")),
        ("revoked", s.client(&revoked)),
        ("expired", s.client(&expired)),
        ("viewer", s.client(&viewer)),
        ("deployer", s.client(&deployer)),
        ("scoped", s.client(&scoped)),
        ("admin", s.http.clone()),
    ];
    // Who may call each route: the lowest role, and whether a token scoped to `app` may.
    // A route a caller may call must not answer 401 or 403 (it may answer 404, 409, 422).
    let new_token = |n: &str| Some(json!({"name": n, "role": "viewer"}));
    let new_app =
        |n: &str| Some(json!({"name": n, "repo_url": "https://git.example.com/x/y.git", "webhook_secret": SECRET}));
    type Route = (&'static str, String, Option<Value>, &'static str, bool);
    let routes: Vec<Route> = vec![
        ("GET", "/api/v1/whoami".into(), None, "viewer", true),
        ("GET", "/api/v1/tokens".into(), None, "admin", false),
        ("POST", "/api/v1/tokens".into(), new_token("made-by"), "admin", false),
        ("DELETE", "/api/v1/tokens/nobody".into(), None, "admin", false),
        ("GET", "/api/v1/apps".into(), None, "viewer", true),
        ("POST", "/api/v1/apps".into(), new_app("made-by"), "admin", false),
        ("GET", format!("/api/v1/apps/{app}"), None, "viewer", true),
        ("GET", format!("/api/v1/apps/{other}"), None, "viewer", false),
        ("POST", format!("/api/v1/apps/{app}/deployments"), Some(json!({})), "deployer", true),
        ("POST", format!("/api/v1/apps/{other}/deployments"), Some(json!({})), "deployer", false),
        ("POST", format!("/api/v1/apps/{app}/rollback"), Some(json!({})), "deployer", true),
        ("GET", "/api/v1/deployments".into(), None, "viewer", true),
        ("GET", format!("/api/v1/deployments/{id}"), None, "viewer", true),
        ("GET", format!("/api/v1/deployments/{other_id}"), None, "viewer", false),
        ("GET", format!("/api/v1/deployments/{id}/logs?follow=false"), None, "viewer", true),
        ("POST", format!("/api/v1/deployments/{other_id}/cancel"), Some(json!({})), "deployer", false),
        ("POST", format!("/api/v1/deployments/{id}/cancel"), Some(json!({})), "deployer", true),
        ("GET", "/api/v1/queue".into(), None, "viewer", true),
        ("POST", format!("/api/v1/apps/{app}/sync"), Some(json!({})), "deployer", true),
        ("POST", format!("/api/v1/apps/{other}/sync"), Some(json!({})), "deployer", false),
        ("GET", format!("/api/v1/apps/{app}/releases"), None, "viewer", true),
        ("GET", format!("/api/v1/apps/{other}/releases"), None, "viewer", false),
        ("GET", format!("/api/v1/apps/{app}/releases/v1/diff/v2"), None, "viewer", true),
        ("PATCH", format!("/api/v1/apps/{app}/env"), Some(json!({"set": {"ROLE_TEST": "x"}})), "deployer", true),
        ("PATCH", format!("/api/v1/apps/{other}/env"), Some(json!({"set": {"ROLE_TEST": "x"}})), "deployer", false),
        ("PATCH", format!("/api/v1/apps/{app}"), Some(json!({"watch_paths": []})), "deployer", true),
        ("PATCH", format!("/api/v1/apps/{other}"), Some(json!({"watch_paths": []})), "deployer", false),
        // Promoting needs the deployer role on the target: a token scoped to `app` may not.
        ("POST", format!("/api/v1/apps/{app}/promote"), Some(json!({"to": other})), "deployer", false),
        ("GET", format!("/api/v1/apps/{app}/previews"), None, "viewer", true),
        ("GET", format!("/api/v1/apps/{other}/previews"), None, "viewer", false),
        ("POST", format!("/api/v1/apps/{app}/previews/3/close"), Some(json!({})), "deployer", true),
        ("POST", format!("/api/v1/apps/{other}/previews/3/close"), Some(json!({})), "deployer", false),
        ("GET", format!("/api/v1/apps/{app}/snapshots"), None, "viewer", true),
        ("GET", format!("/api/v1/apps/{other}/snapshots"), None, "viewer", false),
        ("POST", format!("/api/v1/apps/{app}/snapshots/v1/restore"), Some(json!({"confirm": app})), "deployer", true),
        (
            "POST",
            format!("/api/v1/apps/{other}/snapshots/v1/restore"),
            Some(json!({"confirm": other})),
            "deployer",
            false,
        ),
        ("GET", "/api/v1/notifications/targets".into(), None, "viewer", true),
        ("GET", "/api/v1/notifications/deliveries".into(), None, "viewer", true),
        (
            "POST",
            "/api/v1/notifications/targets".into(),
            Some(json!({"name": "n", "kind": "slack", "url": "https://hooks.example.com/x", "app": app})),
            "deployer",
            true,
        ),
        (
            "POST",
            "/api/v1/notifications/targets".into(),
            Some(json!({"name": "n", "kind": "slack", "url": "https://hooks.example.com/x"})),
            "admin",
            false,
        ),
        ("GET", "/api/v1/runners".into(), None, "viewer", false),
        ("GET", "/metrics".into(), None, "viewer", false),
    ];
    let rank = |r: &str| ["viewer", "deployer", "admin"].iter().position(|x| *x == r).expect("role");
    let mut made = 0;
    for (method, path, body, needs, scoped_ok) in &routes {
        for (who, client) in &callers {
            // Fresh names, so a create that is allowed is not a conflict.
            made += 1;
            let body = body.clone().map(|mut b| {
                if b.get("name").is_some() {
                    b["name"] = json!(format!("made-{made}"));
                }
                b
            });
            let (status, answer) = send(client, method, &format!("{}{path}", s.base), body).await;
            let expected: &[u16] = match *who {
                "none" | "garbage" | "revoked" | "expired" => &[401],
                "viewer" if rank(needs) > 0 => &[403],
                "deployer" if rank(needs) > 1 => &[403],
                // A scoped token gets 403 for another app, 404 for another app's deployment
                // (it cannot tell whether the id exists), 403 for what needs an admin.
                "scoped" if rank(needs) > 1 => &[403],
                "scoped" if !scoped_ok && path.contains("/deployments/") => &[404],
                "scoped" if !scoped_ok => &[403],
                _ => &[],
            };
            match expected {
                [] => assert!(
                    ![401, 403].contains(&status) && status < 500,
                    "{who} {method} {path} should be allowed, got {status} {answer}"
                ),
                codes => {
                    assert!(codes.contains(&status), "{who} {method} {path}: expected {codes:?}, got {status} {answer}")
                }
            }
            if status == 401 {
                assert!(answer["error"].is_string(), "{who} {method} {path}: {answer}");
            }
        }
    }
    // Open routes stay open.
    let (status, _) = send(&s.anonymous, "GET", &format!("{}/healthz", s.base), None).await;
    assert_eq!(status, 200);
    let (status, answer) = s.webhook(&[("X-GitHub-Event", "ping".into())], b"{}".to_vec()).await;
    assert_eq!(status, 401, "a webhook is checked by its signature, not a token: {answer}");
}

#[tokio::test]
async fn a_scoped_token_lists_only_its_app_and_every_action_records_the_token_name() {
    let mut s = scheduler_only().await;
    let app = s.create_app("named", "https://git.example.com/acme/named.git", SECRET, json!({})).await;
    let other = s.create_app("hidden", "https://git.example.com/acme/hidden.git", SECRET, json!({})).await;
    s.post(&format!("/api/v1/apps/{other}/deployments"), &json!({})).await;
    let token = s.create_token("ci-bot", "deployer", Some(&app)).await;
    let ci = s.client(&token);

    let (status, apps) = send(&ci, "GET", &format!("{}/api/v1/apps", s.base), None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = apps.as_array().expect("list").iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names, [app.as_str()]);

    let url = format!("{}/api/v1/apps/{app}/deployments", s.base);
    let (status, deployed) = send(&ci, "POST", &url, Some(json!({"sha": "a".repeat(40)}))).await;
    assert_eq!(status, 202, "{deployed}");
    let id = deployed["deployment_id"].as_str().expect("id");
    let (status, listed) = send(&ci, "GET", &format!("{}/api/v1/deployments?app={other}", s.base), None).await;
    assert_eq!(status, 403, "{listed}");
    let (_, listed) = send(&ci, "GET", &format!("{}/api/v1/deployments", s.base), None).await;
    assert!(listed.as_array().expect("list").iter().all(|d| d["app"] == app.as_str()), "{listed}");

    let (status, cancelled) =
        send(&ci, "POST", &format!("{}/api/v1/deployments/{id}/cancel", s.base), Some(json!({"reason": "x"}))).await;
    assert_eq!(status, 200, "{cancelled}");
    let d = s.deployment(id).await;
    assert_eq!((d["created_by"].as_str(), d["cancel_by"].as_str()), (Some("ci-bot"), Some("ci-bot")), "{d}");

    // A push through the webhook is the forge's, not a token's.
    let repo = "https://git.example.com/acme/named.git";
    let (status, pushed) = s.push(repo, &"b".repeat(40), SECRET, "delivery-1").await;
    assert_eq!(status, 202, "{pushed}");
    let pushed = s.deployment(pushed["deployments"][0]["deployment_id"].as_str().expect("id")).await;
    assert_eq!(pushed["created_by"], Value::Null);
}

#[tokio::test]
async fn tokens_are_shown_once_stored_hashed_and_revocable() {
    let s = scheduler_only().await;
    let (status, created) =
        s.post("/api/v1/tokens", &json!({"name": "once", "role": "viewer", "expires_in_days": 7})).await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().expect("value").to_string();
    assert!(token.starts_with("slw_") && token.len() >= 40, "{token}");
    assert!(created["expires_at"].is_string(), "{created}");
    let (status, again) = s.post("/api/v1/tokens", &json!({"name": "once", "role": "viewer"})).await;
    assert_eq!(status, 409, "{again}");

    let (_, listed) = s.get("/api/v1/tokens").await;
    assert!(!listed.to_string().contains(&token), "a listing never shows a token");
    let stored = psql_value(&s.database_url, "SELECT string_agg(t::text, ' ') FROM api_tokens t");
    assert!(!stored.contains(&token) && !stored.contains(&token[4..]), "only a hash is stored");

    let me = s.client(&token);
    let (status, whoami) = send(&me, "GET", &format!("{}/api/v1/whoami", s.base), None).await;
    assert_eq!((status, whoami["name"].as_str(), whoami["role"].as_str()), (200, Some("once"), Some("viewer")));
    let (status, _) = send(&s.http, "DELETE", &format!("{}/api/v1/tokens/once", s.base), None).await;
    assert_eq!(status, 200);
    let (status, _) = send(&me, "GET", &format!("{}/api/v1/whoami", s.base), None).await;
    assert_eq!(status, 401, "a revoked token is refused at once");

    for bad in [
        json!({"name": "", "role": "viewer"}),
        json!({"name": "x y", "role": "viewer"}),
        json!({"name": "ok", "role": "root"}),
        json!({"name": "ok", "role": "viewer", "app": "Not_An_App"}),
        json!({"name": "ok", "role": "viewer", "expires_in_days": 0}),
        json!({"name": "ok", "role": "viewer", "colour": "blue"}),
        json!({"name": "ok\u{0}", "role": "viewer"}),
    ] {
        let (status, answer) = s.post("/api/v1/tokens", &bad).await;
        assert!([400, 422].contains(&status), "{bad}: {status} {answer}");
    }
    for header in ["Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer \u{7f}", &format!("Bearer {}", "x".repeat(10_000))] {
        let resp = s.anonymous.get(format!("{}/api/v1/whoami", s.base)).header("authorization", header).send().await;
        if let Ok(resp) = resp {
            assert_eq!(resp.status().as_u16(), 401, "{header:.40}");
        }
    }
}

#[tokio::test]
async fn the_first_admin_token_is_written_to_a_private_file_when_none_is_given() {
    use std::os::unix::fs::PermissionsExt;
    let state = tempfile::tempdir().expect("state dir");
    let file = state.path().join("admin-token");
    let options = SlipwayOptions {
        runners: 0,
        scheduler_env: vec![
            ("SLIPWAY_ADMIN_TOKEN".into(), String::new()),
            ("SLIPWAY_ADMIN_TOKEN_FILE".into(), file.display().to_string()),
        ],
        ..Default::default()
    };
    let s = Slipway::start(options).await;
    let written = std::fs::read_to_string(&file).expect("admin token file");
    assert_eq!(std::fs::metadata(&file).expect("file").permissions().mode() & 0o777, 0o600);
    let admin = s.client(written.trim());
    let (status, me) = send(&admin, "GET", &format!("{}/api/v1/whoami", s.base), None).await;
    assert_eq!((status, me["role"].as_str()), (200, Some("admin")), "{me}");
    let (status, _) = send(&s.http, "GET", &format!("{}/api/v1/whoami", s.base), None).await;
    assert_eq!(status, 401, "the harness's token was not given, so it is not valid");
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_and_never_answered() {
    let mut s = scheduler_only().await;
    let values = ["tok-abcdef-123456", "hunter2-marked", "s3ss10n-kube-value", "ghp_repotoken123"];
    let app = s
        .create_app(
            "sealed",
            "https://git.example.com/acme/sealed.git",
            SECRET,
            json!({
                "env": {
                    "API_TOKEN": values[0],
                    "COLOUR": "blue",
                    "SESSION": {"value": values[1], "secret": true},
                    "PUBLIC_KEY_ID": {"value": "kid-1", "secret": false},
                },
                "git_credentials": {"username": "bot", "token": values[3]},
                "kubernetes": {"secret_env": {"KUBE_SECRET": values[2]}},
            }),
        )
        .await;
    let (_, shown) = s.get(&format!("/api/v1/apps/{app}")).await;
    assert_eq!(shown["env"]["API_TOKEN"], "***");
    assert_eq!(shown["env"]["SESSION"], "***");
    assert_eq!(shown["env"]["COLOUR"], "blue");
    assert_eq!(shown["env"]["PUBLIC_KEY_ID"], "kid-1", "marked plain although its name looks secret");
    assert_eq!(shown["secrets"], json!(["API_TOKEN", "SESSION"]));
    assert_eq!(shown["git_username"], "bot");
    assert_eq!(shown["kube_settings"]["secret_env"]["KUBE_SECRET"], "***");
    let (_, listed) = s.get("/api/v1/apps").await;
    let row = psql_value(&s.database_url, &format!("SELECT a::text FROM apps a WHERE name = '{app}'"));
    for value in values.iter().chain([&SECRET]) {
        assert!(!shown.to_string().contains(value) && !listed.to_string().contains(value), "{value} answered");
        assert!(!row.contains(value), "{value} stored in the clear: {row}");
    }
    let sealed = psql_value(&s.database_url, &format!("SELECT sealed FROM apps WHERE name = '{app}'"));
    assert!(sealed.starts_with("s1."), "{sealed}");

    // The webhook secret still verifies pushes (opened from the sealed value).
    let repo = "https://git.example.com/acme/sealed.git";
    let (status, answer) = s.push(repo, &"c".repeat(40), SECRET, "d1").await;
    assert_eq!(status, 202, "{answer}");

    // A secret too short to mask is refused, with the way out.
    let (status, answer) = s
        .post(
            "/api/v1/apps",
            &json!({"name": "shortsecret", "repo_url": repo, "webhook_secret": SECRET, "env": {"DB_PASSWORD": "abc"}}),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"].as_str().unwrap_or_default().contains("DB_PASSWORD"), "{answer}");
}

#[tokio::test]
async fn hostile_repository_urls_are_refused_at_registration_without_probing_them() {
    // No private address is allowed here, unlike the rest of the suite.
    let options = SlipwayOptions {
        runners: 0,
        scheduler_env: vec![("SLIPWAY_ALLOW_PRIVATE_GIT".into(), String::new())],
        ..Default::default()
    };
    let s = Slipway::start(options).await;
    let pg_port = slipway_tests::env("SLIPWAY_ADMIN_DATABASE_URL")
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .unwrap_or("5432")
        .to_string();
    let hostile = [
        "file:///etc/passwd".to_string(),
        "/etc".into(),
        "ext::sh -c touch% /tmp/pwned".into(),
        "https://user:token@github.com/a/b.git".into(),
        "http://169.254.169.254/latest/meta-data/".into(),
        format!("http://127.0.0.1:{pg_port}/x.git"),
        "http://127.0.0.1:5672/x.git".into(),
        "http://127.0.0.1:5000/x.git".into(),
        "http://[::1]:80/x.git".into(),
        "http://0x7f000001/x.git".into(),
        "http://2130706433/x.git".into(),
        "git://localhost/x.git".into(),
        "http://10.0.0.1/x.git".into(),
        "ssh://git:password@example.com/x.git".into(),
    ];
    for (i, url) in hostile.iter().enumerate() {
        let body = json!({"name": format!("hostile-{i}"), "repo_url": url, "webhook_secret": SECRET});
        let (status, answer) = s.post("/api/v1/apps", &body).await;
        assert_eq!(status, 422, "{url}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default().to_ascii_lowercase();
        for probe in ["refused", "connect", "timed out", "reset", "open", "closed"] {
            assert!(!error.contains(probe), "{url}: the error reveals what listens: {error}");
        }
    }
    let (_, apps) = s.get("/api/v1/apps").await;
    assert_eq!(apps, json!([]), "nothing was registered");
}

#[tokio::test]
async fn the_runner_checks_the_address_again_when_it_connects() {
    // The scheduler allows the loopback git server (as registration saw it); the runner's guard
    // does not, as when a name resolved to a public address at registration and to an internal
    // one later (DNS rebinding).
    let git = GitServer::start();
    let sha = git.commit("rebind", "first", &[Entry::File("Dockerfile", b"FROM scratch\n")]);
    let url = git.url("rebind");
    let options =
        SlipwayOptions { runner_env: vec![("SLIPWAY_ALLOW_PRIVATE_GIT".into(), String::new())], ..Default::default() };
    let mut s = Slipway::start(options).await;
    s.create_app("rebind", &url, SECRET, json!({})).await;
    let (status, answer) = s.push(&url, &sha, SECRET, "d1").await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let d = s.finished(&id, Duration::from_secs(60)).await;
    assert_eq!((d["state"].as_str(), d["error_step"].as_str()), (Some("failed"), Some("clone")), "{d}");
    assert_eq!(d["error_cause"], "user", "{d}");
    let message = d["error_message"].as_str().unwrap_or_default();
    assert!(message.contains("loopback") && message.contains("SLIPWAY_ALLOW_PRIVATE_GIT"), "{message}");
    assert_eq!(d["attempt"], 1, "a refused address is not retried: {d}");
}

/// A plain-HTTP server that asks for credentials and records every request's headers.
async fn challenging_git_server() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                record.lock().expect("lock").push(String::from_utf8_lossy(&buf[..n]).to_string());
                let answer = "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn a_runner_token_never_goes_over_plain_http_or_to_another_host() {
    let (port, seen) = challenging_git_server().await;
    let token = "runner-token-must-not-leak-0123";
    let options = SlipwayOptions {
        runner_env: vec![
            ("SLIPWAY_GIT_TOKEN".into(), token.into()),
            ("SLIPWAY_GIT_TOKEN_HOSTS".into(), "127.0.0.1".into()),
        ],
        ..Default::default()
    };
    let mut s = Slipway::start(options).await;
    let repo = format!("http://127.0.0.1:{port}/private.git");
    s.create_app("private", &repo, SECRET, json!({})).await;
    let (status, answer) = s.push(&repo, &"d".repeat(40), SECRET, "d1").await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let d = s.finished(&id, Duration::from_secs(60)).await;
    assert_eq!(d["state"], "failed", "{d}");
    let requests = seen.lock().expect("lock").clone();
    assert!(!requests.is_empty(), "the runner asked the server");
    for request in &requests {
        assert!(!request.to_ascii_lowercase().contains("authorization:"), "credentials sent over http: {request}");
    }
    let logs: Vec<String> = s.log_lines(&id, None).await.into_iter().map(|(_, l)| l).collect();
    assert!(!logs.join("\n").contains(token), "the token is never logged");
}

#[tokio::test]
async fn forged_large_webhooks_neither_stall_the_scheduler_nor_grow_it_past_its_bound() {
    let mut s = scheduler_only().await;
    let repo = "https://git.example.com/acme/flood.git";
    for i in 0..5 {
        s.create_app(&format!("flood{i}"), repo, SECRET, json!({})).await;
    }
    // 20 MB bodies for a repository five apps follow, signed with the wrong secret.
    let mut body = push_body(repo, "refs/heads/main", &"e".repeat(40));
    body.truncate(body.len() - 1);
    body.extend_from_slice(b",\"padding\":\"");
    body.extend(std::iter::repeat_n(b'x', 20 * 1024 * 1024));
    body.extend_from_slice(b"\"}");
    let forged = sign("not-the-secret-0123456789", &body);
    let pid = s.scheduler.pid();
    let mut floods = Vec::new();
    for _ in 0..8 {
        let (client, url, body, sig) =
            (s.anonymous.clone(), format!("{}/api/v1/webhooks/github", s.base), body.clone(), forged.clone());
        floods.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .header("content-type", "application/json")
                .header("x-github-event", "push")
                .header("x-hub-signature-256", sig)
                .body(body)
                .send()
                .await;
            resp.map(|r| r.status().as_u16()).unwrap_or(0)
        }));
    }
    // While they are read and checked, other requests are answered promptly.
    let mut slowest = Duration::ZERO;
    while !floods.iter().all(|f| f.is_finished()) {
        let started = Instant::now();
        let (status, _) = s.get("/api/v1/apps").await;
        assert_eq!(status, 200);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for flood in floods {
        let status = flood.await.expect("flood task");
        assert!([401, 503].contains(&status), "a forged webhook got {status}");
    }
    assert!(slowest < Duration::from_secs(3), "an API call waited {slowest:?} behind forged webhooks");
    let peak_kb: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("scheduler status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .expect("VmHWM");
    // The documented bound: about 3 bodies per webhook in flight (4) plus the process itself.
    let bound_kb = (4 * 3 * 20 + 150) * 1024;
    assert!(peak_kb < bound_kb, "scheduler peaked at {} MB", peak_kb / 1024);
}

#[tokio::test]
async fn an_apps_own_limits_apply_to_its_container_and_the_rest_are_the_runners() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let dockerfile = b"FROM slipway/busybox:1\nRUN mkdir /www && echo ok > /www/healthz\n\
                       CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";
    let sha = git.commit("limited", "first", &[Entry::File("Dockerfile", dockerfile)]);
    let url = git.url("limited");
    let app = s.create_app("limited", &url, SECRET, json!({"limits": {"memory_mb": 128, "millicpus": 250}})).await;
    let (_, shown) = s.get(&format!("/api/v1/apps/{app}")).await;
    assert_eq!(shown["limits"], json!({"memory_mb": 128, "millicpus": 250}));
    let (status, answer) = s.push(&url, &sha, SECRET, "d1").await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let d = s.finished(&id, Duration::from_secs(120)).await;
    assert_eq!(d["state"], "completed", "{d}");
    let containers =
        slipway_tests::docker(&["ps", "-q", "--filter", &format!("label=dev.slipway.app={app}")]).expect("containers");
    let container = containers.lines().next().expect("the app's container").to_string();
    let inspect = |format: &str| {
        slipway_tests::docker(&["inspect", "--format", format, &container]).expect("inspect").trim().to_string()
    };
    assert_eq!(inspect("{{.HostConfig.Memory}}"), (128 * 1024 * 1024).to_string());
    assert_eq!(inspect("{{.HostConfig.NanoCpus}}"), "250000000");
    assert_eq!(inspect("{{.HostConfig.PidsLimit}}"), "512", "unset: the runner's default");
    assert_eq!(inspect("{{json .HostConfig.SecurityOpt}}"), r#"["no-new-privileges"]"#);

    for bad in [json!({"memory_mb": 1}), json!({"millicpus": 0}), json!({"pids": 2}), json!({"memory": 5})] {
        let body = json!({"name": "badlimits", "repo_url": url, "webhook_secret": SECRET, "limits": bad});
        let (status, answer) = s.post("/api/v1/apps", &body).await;
        assert!([400, 422].contains(&status), "{bad}: {status} {answer}");
    }
}
