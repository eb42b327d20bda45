//! The web dashboard in a real browser: Debian's Chromium, headless, driven by playwright-core
//! (tests/browser/dashboard.mjs) against a real scheduler, runner, registry, git server and
//! edge. Sign-in, a push appearing live with its log streamed to the end (a `<script>` in it
//! inert, colours rendered), search and line links, the rollback button, a failed build's step
//! and cause, the cancel button, the queue and runners pages, a phone's width, a viewer without
//! action buttons, the CSRF guard and sign-out. Screenshots of every page are kept in
//! target/dashboard-screenshots.

use std::process::Command;

use serde_json::json;
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, unique};

const SECRET: &str = "dashboard-secret-0123456789";

fn site(git: &GitServer, repo: &str, marker: &str, run: &str) -> String {
    let dockerfile = format!(
        "FROM slipway/busybox:1\n{run}\nRUN mkdir -p /www && echo {marker} > /www/index.html && echo ok > /www/healthz\n\
         CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
    );
    git.commit(repo, marker, &[Entry::File("Dockerfile", dockerfile.as_bytes())])
}

#[tokio::test]
async fn the_dashboard_signs_in_streams_a_deploy_rolls_back_cancels_and_shows_viewers_no_actions() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/browser");
    assert!(
        std::path::Path::new(root).join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: scripts/test runs `npm ci --prefix tests/browser`"
    );
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("dash");
    let url = git.url(&repo);
    let app = s.create_app("dash", &url, SECRET, json!({"env": {"API_TOKEN": "dash-secret-token-value"}})).await;
    let viewer = s.create_token("dash-viewer", "viewer", None).await;
    // The repository's name makes the step new, so its output is never a cached layer's silence.
    let colours =
        format!(r"RUN printf '\033[32m%s\033[0m %s %s\n' green 'build-ok <script>window.__xss=1</script>' {repo}");
    let shas = [
        site(&git, &repo, "v1", &colours),
        site(&git, &repo, "v2", "RUN echo second"),
        site(&git, &repo, "v3", "RUN echo broken build && exit 3"),
        site(&git, &repo, "v4", "RUN for i in $(seq 1 40); do echo tick-$i; sleep 0.25; done && sleep 120"),
    ];
    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/dashboard-screenshots");
    std::fs::create_dir_all(shots).expect("screenshot dir");

    let base = s.base.clone();
    let admin = s.token.clone();
    let run = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("dashboard.mjs")
            .current_dir(root)
            .env("BASE", base)
            .env("ADMIN_TOKEN", admin)
            .env("VIEWER_TOKEN", viewer)
            .env("APP", &app)
            .env("REPO_URL", &url)
            .env("SECRET", SECRET)
            .env("SHAS", shas.join(","))
            .env("SHOTS", shots)
            .output()
            .expect("node runs")
    })
    .await
    .expect("the browser run");
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    println!("{stdout}");
    assert!(run.status.success(), "the browser checks failed:\n{stdout}\n{stderr}\n{}", s.dump());
    for page in ["01-sign-in", "02-deployment-completed", "04-rollback", "05-failed", "06-cancelled", "11-viewer-app"] {
        let shot = std::path::Path::new(shots).join(format!("{page}.png"));
        assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000), "screenshot {}", shot.display());
    }
}

#[tokio::test]
async fn sign_in_sets_a_secure_cookie_over_https_refuses_bad_input_and_the_events_need_a_token() {
    let s = Slipway::start(SlipwayOptions {
        runners: 0,
        edge: false,
        scheduler_env: vec![("SLIPWAY_PUBLIC_URL".into(), "https://slipway.example.com".into())],
        ..Default::default()
    })
    .await;
    let viewer = s.create_token("events-viewer", "viewer", None).await;
    let session = |body: String| {
        s.anonymous
            .post(format!("{}/api/v1/session", s.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let signed = session(json!({"token": viewer}).to_string()).await.expect("answers");
    assert_eq!(signed.status(), 200);
    let cookie = signed.headers()["set-cookie"].to_str().expect("text").to_string();
    for part in ["slipway_session=slw_", "HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(part), "{part} in {cookie}");
    }
    let body: serde_json::Value = signed.json().await.expect("json");
    assert_eq!((body["name"].as_str(), body["role"].as_str()), (Some("events-viewer"), Some("viewer")));

    // The session authorises like the token: reads, and no change without the CSRF header.
    let value = cookie.split(';').next().expect("name=value").to_string();
    let with_cookie = |method: reqwest::Method, path: &str| {
        s.anonymous.request(method, format!("{}{path}", s.base)).header("cookie", value.clone())
    };
    assert_eq!(with_cookie(reqwest::Method::GET, "/api/v1/whoami").send().await.expect("answers").status(), 200);
    let change = with_cookie(reqwest::Method::POST, "/api/v1/apps").json(&json!({})).send().await.expect("answers");
    assert_eq!(change.status(), 403);
    assert!(change.text().await.unwrap_or_default().contains("x-slipway-csrf"));
    let marked = with_cookie(reqwest::Method::POST, "/api/v1/apps").header("x-slipway-csrf", "1").json(&json!({}));
    assert_eq!(marked.send().await.expect("answers").status(), 403, "a viewer's session still may not change");

    // The dashboard's files carry the policy; the page is the same for everyone.
    let page = s.anonymous.get(format!("{}/", s.base)).send().await.expect("answers");
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap_or_default().contains("script-src 'self'"));
    assert_eq!(page.headers()["x-frame-options"], "DENY");

    // The change events need a token like every other route; sign-in refuses what is not one.
    let events = |client: &reqwest::Client| client.get(format!("{}/api/v1/events", s.base)).send();
    assert_eq!(events(&s.anonymous).await.expect("answers").status(), 401);
    let streaming = events(&s.client(&viewer)).await.expect("answers");
    assert_eq!(streaming.status(), 200);
    assert_eq!(streaming.headers()["content-type"], "text/event-stream");
    drop(streaming);
    for (body, want) in [
        ("{\"token\": \"slw_nope\"}", 401),
        ("{\"token\": \"\"}", 401),
        ("{\"token\": 5}", 400),
        ("{\"token\": \"x\", \"role\": \"admin\"}", 400),
        ("not json", 400),
    ] {
        let answered = session(body.to_string()).await.expect("answers");
        assert_eq!(answered.status().as_u16(), want, "{body}");
        assert!(answered.headers().get("set-cookie").is_none(), "{body}: no cookie");
    }
    let huge = format!("{{\"token\": \"{}\"}}", "a".repeat(2 * 1024 * 1024));
    let answered = session(huge).await;
    assert!(answered.is_err() || answered.is_ok_and(|r| r.status() == 413), "an oversized sign-in is refused");
}
