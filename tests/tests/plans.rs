//! Repositories without a Dockerfile: the runner detects the plan, generates the Dockerfile,
//! builds it with the layer cache, runs the app's tests in a sandbox, and deploys. No base image
//! can be pulled here, so the base images are the locally built `slipway/busybox:1`, pointed at
//! through `SLIPWAY_BASE_IMAGES` exactly as users point them at their own registry.

use std::time::Duration;

use serde_json::{Value, json};
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, unique};

const SECRET: &str = "plans-secret-0123456789";
const FINISH: Duration = Duration::from_secs(120);
const BASES: &str = "node=slipway/busybox:1,node-run=slipway/busybox:1,static-run=slipway/caddy:2";

async fn installation() -> Slipway {
    Slipway::start(SlipwayOptions {
        runner_env: vec![("SLIPWAY_BASE_IMAGES".into(), BASES.into()), ("SLIPWAY_TEST_MEMORY_MB".into(), "256".into())],
        ..Default::default()
    })
    .await
}

async fn deploy(s: &Slipway, url: &str, sha: &str) -> Value {
    let (status, answer) = s.push(url, sha, SECRET, &unique("delivery")).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    s.finished(&id, FINISH).await
}

fn step_status(d: &Value, step: &str) -> String {
    let steps = d["steps"].as_array().cloned().unwrap_or_default();
    steps
        .iter()
        .rev()
        .find(|s| s["step"] == step)
        .map(|s| s["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// A "Node" app whose runtime is busybox: package manifests (named `name`, so no other test run's
/// layers are in the cache), a dependency install step that leaves a marker, and a web root.
fn node_app(name: &str, page: &str, test: &str) -> Vec<(String, Vec<u8>)> {
    let toml = format!(
        "install = \"echo installing-dependencies && mkdir -p node_modules && date > node_modules/.installed\"\n\
         start = \"httpd -f -p $PORT -h /app/www\"\n\
         test = {test}\n\
         health_path = \"/healthz\"\n"
    );
    vec![
        ("package.json".into(), format!(r#"{{"name":"{name}","scripts":{{"start":"node server.js"}}}}"#).into_bytes()),
        ("package-lock.json".into(), br#"{"lockfileVersion":3}"#.to_vec()),
        ("slipway.toml".into(), toml.into_bytes()),
        ("www/index.html".into(), page.as_bytes().to_vec()),
        ("www/healthz".into(), b"ok\n".to_vec()),
    ]
}

fn commit(git: &GitServer, repo: &str, files: &[(String, Vec<u8>)]) -> String {
    let entries: Vec<Entry<'_>> = files.iter().map(|(p, c)| Entry::File(p, c)).collect();
    git.commit(repo, "change", &entries)
}

#[tokio::test]
async fn a_static_site_without_a_dockerfile_is_built_and_answers() {
    let git = GitServer::start();
    let mut s = installation().await;
    let repo = unique("static");
    let url = git.url(&repo);
    s.create_app("static", &url, SECRET, json!({"port": 8080})).await;
    let marker = unique("static-page");
    let page = format!("<h1>{marker}</h1>\n");
    let files = [
        Entry::File("index.html", page.as_bytes()),
        Entry::File("healthz", b"ok\n"),
        Entry::File("404.html", b"<p>custom not found</p>\n"),
        Entry::File("assets/site.3f9a1c2b.css", b"body { color: #123; }\n"),
    ];
    let sha = git.commit(&repo, "site", &files);
    let d = deploy(&s, &url, &sha).await;
    assert_eq!(d["state"], "completed", "{d}\n{}", s.dump());
    assert_eq!(step_status(&d, "test"), "skipped", "no test command is reported as skipped");
    let body = s.app_body(d["url"].as_str().expect("url"), "/").await.expect("answers");
    assert!(body.contains(&marker));
    // A production server: content types, a real 404 for a page that is not there, no-cache
    // on HTML and a year on fingerprinted assets.
    let url = d["url"].as_str().expect("url");
    let get = |path: &'static str| {
        let client = reqwest::Client::new();
        slipway_tests::harness::app_request(&client, url, path).send()
    };
    let css = get("/assets/site.3f9a1c2b.css").await.expect("answers");
    assert_eq!(css.status(), 200);
    assert!(css.headers()["content-type"].to_str().unwrap_or_default().starts_with("text/css"), "{:?}", css.headers());
    assert_eq!(css.headers()["cache-control"], "public, max-age=31536000, immutable");
    let page = get("/").await.expect("answers");
    assert_eq!(page.headers()["cache-control"], "no-cache");
    assert!(page.headers()["content-type"].to_str().unwrap_or_default().starts_with("text/html"));
    let missing = get("/no/such/page").await.expect("answers");
    assert_eq!(missing.status(), 404, "not a single-page app: no fallback");
    assert!(missing.text().await.unwrap_or_default().contains("custom not found"), "its own 404.html");
    let lines = s.log_lines(d["id"].as_str().expect("id"), None).await;
    assert!(lines.iter().any(|(_, l)| l == "plan: provider static in ."), "the plan is in the log");
    assert!(lines.iter().any(|(_, l)| l.contains("USER 10001:10001")), "the generated Dockerfile is in the log");
    assert!(lines.iter().any(|(_, l)| l.starts_with("no test command found; skipped")));
}

#[tokio::test]
async fn a_single_page_app_answers_its_client_routes_with_its_index() {
    let git = GitServer::start();
    let mut s = installation().await;
    let repo = unique("spa");
    let url = git.url(&repo);
    s.create_app("spa", &url, SECRET, json!({"port": 8080, "health_path": "/"})).await;
    let marker = unique("spa-shell");
    let page = format!("<div id=app>{marker}</div>\n");
    // A Vite app whose build copies its pages (the toolchain is not here; busybox stands in).
    let package =
        format!(r#"{{"name":"{repo}","devDependencies":{{"vite":"^5.4.0"}},"scripts":{{"build":"vite build"}}}}"#);
    let toml = "install = \"true\"\nbuild = \"mkdir -p dist && cp -r site/. dist/\"\n";
    let files = [
        Entry::File("package.json", package.as_bytes()),
        Entry::File("slipway.toml", toml.as_bytes()),
        Entry::File("site/index.html", page.as_bytes()),
        Entry::File("site/assets/index-B2x9kQ1f.js", b"console.log('app');\n"),
    ];
    let sha = git.commit(&repo, "spa", &files);
    let d = deploy(&s, &url, &sha).await;
    assert_eq!(d["state"], "completed", "{d}\n{}", s.dump());
    let url = d["url"].as_str().expect("url").to_string();
    for route in ["/", "/settings/profile", "/orders/42"] {
        let client = reqwest::Client::new();
        let answer = slipway_tests::harness::app_request(&client, &url, route).send().await.expect("answers");
        assert_eq!(answer.status(), 200, "{route}");
        assert!(answer.text().await.unwrap_or_default().contains(&marker), "{route} is the app's shell");
    }
    let client = reqwest::Client::new();
    let js = slipway_tests::harness::app_request(&client, &url, "/assets/index-B2x9kQ1f.js").send().await.expect("js");
    assert!(js.headers()["content-type"].to_str().unwrap_or_default().contains("javascript"), "{:?}", js.headers());
    assert_eq!(js.headers()["cache-control"], "public, max-age=31536000, immutable");
}

#[tokio::test]
async fn a_source_only_change_reuses_the_dependency_layers_and_an_unchanged_tree_reuses_all() {
    let git = GitServer::start();
    let mut s = installation().await;
    let repo = unique("cache");
    let url = git.url(&repo);
    s.create_app("cache", &url, SECRET, json!({})).await;
    let test = "\"test -f node_modules/.installed\"";

    let first = deploy(&s, &url, &commit(&git, &repo, &node_app(&repo, &unique("v1"), test))).await;
    assert_eq!(first["state"], "completed", "{first}\n{}", s.dump());
    assert_eq!(step_status(&first, "test"), "succeeded");
    let first_log = s.log_lines(first["id"].as_str().expect("id"), None).await;
    assert!(first_log.iter().any(|(_, l)| l == "installing-dependencies"), "the first build installs");

    let marker = unique("v2");
    let second = deploy(&s, &url, &commit(&git, &repo, &node_app(&repo, &marker, test))).await;
    assert_eq!(second["state"], "completed", "{second}");
    let log: Vec<String> =
        s.log_lines(second["id"].as_str().expect("id"), None).await.into_iter().map(|(_, l)| l).collect();
    assert!(!log.iter().any(|l| l == "installing-dependencies"), "a source-only change must not reinstall: {log:#?}");
    let install_step =
        log.iter().position(|l| l.starts_with("Step ") && l.contains("installing-dependencies")).expect("install step");
    assert_eq!(log[install_step + 1].trim(), "---> Using cache", "the dependency layer comes from the cache");
    assert!(s.app_body(second["url"].as_str().expect("url"), "/").await.expect("answers").contains(&marker));
    // The first miss explained, naming the one file that changed; the summary in the status.
    let explained = log.iter().find(|l| l.starts_with("layer cache: ")).expect("the cache explained");
    assert!(
        explained.contains("first rebuilt: step")
            && explained.contains("`COPY . .`: 1 file it copies changed since the last build")
            && explained.ends_with(": www/index.html"),
        "{explained}"
    );
    let cache = &second["cache"];
    assert!(
        cache["reused"].as_u64().unwrap_or_default() >= 2 && cache["rebuilt"].as_u64().unwrap_or_default() >= 1,
        "{cache}"
    );
    let status = s.cli_command().args(["status", second["id"].as_str().expect("id")]).output().expect("slipway");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("steps reused") && status.contains("www/index.html"), "{status}");

    // The same tree again (a new commit, nothing changed): every step of the build is cached.
    let same = git.commit(
        &repo,
        "empty",
        &node_app(&repo, &marker, test).iter().map(|(p, c)| Entry::File(p, c)).collect::<Vec<_>>(),
    );
    let third = deploy(&s, &url, &same).await;
    assert_eq!(third["state"], "completed", "{third}");
    let log: Vec<String> =
        s.log_lines(third["id"].as_str().expect("id"), None).await.into_iter().map(|(_, l)| l).collect();
    let build: Vec<&String> = log
        .iter()
        .skip_while(|l| !l.starts_with("Step 1/"))
        .take_while(|l| !l.starts_with("Successfully built"))
        .collect();
    let steps = build.iter().filter(|l| l.starts_with("Step ")).count();
    let cached = build.iter().filter(|l| l.trim() == "---> Using cache").count();
    // FROM steps print no cache line; every other step must have come from the cache.
    let froms = build.iter().filter(|l| l.starts_with("Step ") && l.contains(" : FROM ")).count();
    assert_eq!(cached, steps - froms, "every layer reused: {build:#?}");
    assert!(!build.iter().any(|l| l.contains("Running in")), "nothing ran: {build:#?}");
    assert!(
        log.iter().any(|l| l.starts_with("layer cache: ") && l.ends_with(" rebuilt")),
        "nothing to explain: {log:#?}"
    );

    // A lockfile change: the dependency step is the first rebuilt, and the lockfile is named.
    let mut files = node_app(&repo, &marker, test);
    for (path, content) in files.iter_mut() {
        if path == "package-lock.json" {
            *content = br#"{"lockfileVersion":3,"packages":{}}"#.to_vec();
        }
    }
    let fourth = deploy(&s, &url, &commit(&git, &repo, &files)).await;
    assert_eq!(fourth["state"], "completed", "{fourth}");
    let log: Vec<String> =
        s.log_lines(fourth["id"].as_str().expect("id"), None).await.into_iter().map(|(_, l)| l).collect();
    let explained = log.iter().find(|l| l.starts_with("layer cache: ")).expect("the cache explained");
    assert!(
        explained.contains("package-lock.json") && explained.contains("1 file it copies changed"),
        "the dependency step, by the lockfile: {explained}"
    );
    assert!(log.iter().any(|l| l == "installing-dependencies"), "the dependencies are installed again");
}

#[tokio::test]
async fn failing_tests_stop_the_deployment_before_anything_is_pushed() {
    let git = GitServer::start();
    let mut s = installation().await;
    let repo = unique("redtests");
    let url = git.url(&repo);
    let app = s.create_app("redtests", &url, SECRET, json!({})).await;
    let marker = unique("assertion-failed");
    let d =
        deploy(&s, &url, &commit(&git, &repo, &node_app(&repo, "page", &format!("\"echo {marker}; exit 4\"")))).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert_eq!((d["error_step"].as_str(), d["error_cause"].as_str()), (Some("test"), Some("user")));
    assert!(d["error_message"].as_str().unwrap_or_default().contains("exit code 4"), "{d}");
    let log = s.log_lines(d["id"].as_str().expect("id"), None).await;
    assert!(log.iter().any(|(_, l)| l == &marker), "the test output is in the log");
    assert!(step_status(&d, "push").is_empty() && step_status(&d, "deploy").is_empty(), "nothing after the test step");
    let tags = reqwest::get(format!("http://{}/v2/{app}/tags/list", slipway_tests::env("SLIPWAY_REGISTRY")))
        .await
        .expect("registry");
    assert_eq!(tags.status().as_u16(), 404, "nothing was pushed");
}

#[tokio::test]
async fn tests_run_without_network_docker_socket_or_credentials_and_with_limits() {
    let git = GitServer::start();
    let mut s = installation().await;
    let repo = unique("sandbox");
    let url = git.url(&repo);
    s.create_app("sandbox", &url, SECRET, json!({})).await;
    let probe = "\"cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | sed 's/^/iface=/'; \
                 test -e /var/run/docker.sock && echo socket=present || echo socket=absent; \
                 env | grep -c SLIPWAY_ | sed 's/^/slipway_vars=/'; \
                 echo memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max); \
                 echo user=$(id -u)\"";
    let d = deploy(&s, &url, &commit(&git, &repo, &node_app(&repo, "page", probe))).await;
    assert_eq!(d["state"], "completed", "{d}\n{}", s.dump());
    let log: Vec<String> = s.log_lines(d["id"].as_str().expect("id"), None).await.into_iter().map(|(_, l)| l).collect();
    let ifaces: Vec<&String> = log.iter().filter(|l| l.starts_with("iface=")).collect();
    assert_eq!(ifaces, ["iface=lo"], "only loopback: no network");
    assert!(log.iter().any(|l| l == "socket=absent"), "{log:#?}");
    assert!(log.iter().any(|l| l == "slipway_vars=0"), "no runner variables reach the tests");
    assert!(log.iter().any(|l| l == &format!("memory={}", 256 * 1024 * 1024)), "the memory limit applies: {log:#?}");
}

#[tokio::test]
async fn secrets_reach_the_container_never_the_image_and_tests_may_get_the_network_when_allowed() {
    let git = GitServer::start();
    let mut s = installation().await;
    let repo = unique("secretnet");
    let url = git.url(&repo);
    let token = unique("api-token-value");
    let app = s.create_app("secretnet", &url, SECRET, json!({"env": {"API_TOKEN": token}, "test_network": true})).await;
    let probe = "\"cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | sed 's/^/iface=/'; echo token=${API_TOKEN:-unset}\"";
    let d = deploy(&s, &url, &commit(&git, &repo, &node_app(&repo, "page", probe))).await;
    assert_eq!(d["state"], "completed", "{d}\n{}", s.dump());
    let log: Vec<String> = s.log_lines(d["id"].as_str().expect("id"), None).await.into_iter().map(|(_, l)| l).collect();
    assert!(log.iter().any(|l| l == "iface=eth0"), "the app allowed the network to its tests: {log:#?}");
    assert!(log.iter().any(|l| l == "token=unset"), "app secrets are not given to the test step");
    assert!(!log.iter().any(|l| l.contains(&token)), "the secret never reaches the log");
    let image =
        slipway_tests::docker(&["image", "inspect", d["image"].as_str().expect("image")]).expect("inspect image");
    let history =
        slipway_tests::docker(&["history", "--no-trunc", d["image"].as_str().expect("image")]).expect("history");
    assert!(!image.contains(&token) && !history.contains(&token), "the secret is in no layer or config");
    let container =
        slipway_tests::docker(&["ps", "-q", "--filter", &format!("label=dev.slipway.app={app}")]).expect("ps");
    let env = slipway_tests::docker(&["inspect", "--format", "{{json .Config.Env}}", container.trim()])
        .expect("inspect container");
    assert!(env.contains(&format!("API_TOKEN={token}")), "the running container gets it: {env}");
}
