//! The mainstream frameworks, built for real without a Dockerfile: each app in
//! `tests/fixtures/frameworks/` installs its real dependencies from the package registries
//! (npm, PyPI, crates.io) inside a generated Dockerfile's build, on the locally built base images
//! (`scripts/base-images`: Node.js, Python and Go, and Rust, from Debian; Bun), is deployed, and answers
//! a route that only its server can render: `/greet/<a name chosen by the test>`.

use std::time::Duration;

use serde_json::{Value, json};
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, unique};

const SECRET: &str = "frameworks-secret-0123456789";
const BASES: &str = "node=slipway/runtimes:bookworm,node-run=slipway/runtimes:bookworm,\
    python=slipway/runtimes:bookworm,python-run=slipway/runtimes:bookworm,\
    rust=slipway/rust:bookworm,rust-run=slipway/debian:bookworm,static-run=slipway/caddy:2,\
    bun=slipway/bun:1,bun-run=slipway/bun:1";

/// Every file of a framework fixture, with `__MARKER__` replaced by `marker`.
fn fixture(name: &str, marker: &str) -> Vec<(String, Vec<u8>)> {
    slipway_tests::fixture_files(&format!("frameworks/{name}"))
        .into_iter()
        .map(|(path, text)| (path, text.replace("__MARKER__", marker).into_bytes()))
        .collect()
}

/// An installation whose runner builds on the local base images.
async fn installation() -> (GitServer, Slipway) {
    let git = GitServer::start();
    let s = Slipway::start(SlipwayOptions {
        runner_env: vec![("SLIPWAY_BASE_IMAGES".into(), BASES.into())],
        health_timeout_seconds: 60,
        ..Default::default()
    })
    .await;
    (git, s)
}

/// Deploys `files` as a new app (healthy when `health` answers); the finished deployment and its
/// log, checked to be live, planned by `provider` (and `framework`), and tested or not.
async fn deploy(
    (git, s): (&GitServer, &mut Slipway),
    name: &str,
    files: &[(String, Vec<u8>)],
    health: &str,
    (provider, framework, tested): (&str, Option<&str>, bool),
) -> (Value, Vec<String>) {
    let repo = unique(name);
    let url = git.url(&repo);
    s.create_app(name, &url, SECRET, json!({"health_path": health})).await;
    let entries: Vec<Entry<'_>> = files.iter().map(|(p, c)| Entry::File(p, c)).collect();
    let sha = git.commit(&repo, "app", &entries);
    let (status, answer) = s.push(&url, &sha, SECRET, &unique("delivery")).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let d: Value = s.finished(&id, Duration::from_secs(600)).await;
    let log: Vec<String> = s.log_lines(&id, None).await.into_iter().map(|(_, l)| l).collect();
    assert_eq!(d["state"], "completed", "{d}\n{}\n{}", log.join("\n"), s.dump());
    assert!(log.iter().any(|l| l == &format!("plan: provider {provider} in .")), "{log:#?}");
    if let Some(framework) = framework {
        assert!(
            log.iter().any(|l| l.starts_with("plan: framework") && l.contains(framework)),
            "the plan names {framework}: {log:#?}"
        );
    }
    let test = d["steps"].as_array().expect("steps").iter().find(|st| st["step"] == "test").cloned().expect("test");
    assert_eq!(test["status"], if tested { "succeeded" } else { "skipped" }, "{log:#?}");
    (d, log)
}

/// Deploys fixture `name` (healthy when `health` answers) and asks its server to greet a name
/// only known at request time.
async fn builds_and_serves(name: &str, provider: &str, framework: Option<&str>, tested: bool, health: &str) {
    let (git, mut s) = installation().await;
    let marker = unique(name);
    let files = fixture(name, &marker);
    let (d, log) = deploy((&git, &mut s), name, &files, health, (provider, framework, tested)).await;
    let who = unique("visitor");
    let body = s.app_body(d["url"].as_str().expect("url"), &format!("/greet/{who}")).await;
    let body = body.unwrap_or_else(|| panic!("{name} answers /greet/{who}\n{}", log.join("\n")));
    assert!(body.contains(&format!("{marker} {name} greets {who}")), "{name} rendered the greeting: {body}");
}

#[tokio::test]
async fn express_installs_its_dependencies_runs_its_tests_and_serves() {
    builds_and_serves("express", "node", Some("express"), true, "/healthz").await;
}

#[tokio::test]
async fn next_js_is_built_and_served_by_next_start() {
    builds_and_serves("next", "node", Some("next"), false, "/").await;
}

/// The same Next.js app with `output: "standalone"` (its own server, with its static assets
/// copied beside it) and with `output: "export"` (a static site, served by Caddy).
#[tokio::test]
async fn next_js_standalone_and_export_builds_are_served_their_own_way() {
    let (git, mut s) = installation().await;
    let marker = unique("next");
    let config = |mode: &str| format!("module.exports = {{ output: '{mode}' }};\n").into_bytes();
    let mut standalone = fixture("next", &marker);
    standalone.iter_mut().filter(|(p, _)| p == "next.config.js").for_each(|(_, c)| *c = config("standalone"));
    let (d, log) = deploy((&git, &mut s), "next", &standalone, "/", ("node", Some("next"), false)).await;
    assert!(log.iter().any(|l| l.starts_with("plan: start node .next/standalone/server.js")), "{log:#?}");
    let url = d["url"].as_str().expect("url").to_string();
    let who = unique("visitor");
    let body = s.app_body(&url, &format!("/greet/{who}")).await.expect("the standalone server answers");
    assert!(body.contains(&format!("{marker} next greets {who}")), "{body}");
    // Its client script is served too: copied beside the standalone server.
    let script =
        body.split("src=\"").skip(1).find_map(|r| r.split('"').next().filter(|p| p.starts_with("/_next/static/")));
    let script = script.unwrap_or_else(|| panic!("a script in {body}"));
    assert!(s.app_body(&url, script).await.is_some_and(|js| !js.is_empty()), "{script} is served");

    // An export cannot render a request: no dynamic route; the home page is the site.
    let mut export: Vec<_> =
        fixture("next", &marker).into_iter().filter(|(p, _)| !p.starts_with("app/greet")).collect();
    export.iter_mut().filter(|(p, _)| p == "next.config.js").for_each(|(_, c)| *c = config("export"));
    let (d, log) = deploy((&git, &mut s), "next", &export, "/", ("node", Some("next"), false)).await;
    assert!(log.iter().any(|l| l.starts_with("plan: static out ")), "{log:#?}");
    let home = s.app_body(d["url"].as_str().expect("url"), "/").await.expect("the export answers");
    assert!(home.contains(&format!("{marker} next-app home")), "{home}");
}

#[tokio::test]
async fn sveltekit_with_adapter_node_is_a_server_not_a_static_folder() {
    builds_and_serves("sveltekit", "node", Some("sveltekit"), false, "/").await;
}

#[tokio::test]
async fn flask_runs_on_gunicorn() {
    builds_and_serves("flask", "python", Some("flask"), true, "/healthz").await;
}

#[tokio::test]
async fn fastapi_runs_on_uvicorn() {
    builds_and_serves("fastapi", "python", Some("fastapi"), false, "/healthz").await;
}

#[tokio::test]
async fn django_runs_on_gunicorn() {
    builds_and_serves("django", "python", Some("django"), true, "/healthz").await;
}

#[tokio::test]
async fn a_rust_binary_with_a_crates_io_dependency_is_built_tested_and_served() {
    builds_and_serves("rust", "rust", None, true, "/healthz").await;
}

#[tokio::test]
async fn fastify_runs_its_main_file() {
    builds_and_serves("fastify", "node", Some("fastify"), false, "/healthz").await;
}

#[tokio::test]
async fn nestjs_is_compiled_and_runs_start_prod() {
    builds_and_serves("nestjs", "node", Some("nestjs"), false, "/healthz").await;
}

#[tokio::test]
async fn astro_with_the_node_adapter_renders_on_the_server() {
    builds_and_serves("astro", "node", Some("astro"), false, "/").await;
}

#[tokio::test]
async fn remix_is_served_by_remix_serve() {
    builds_and_serves("remix", "node", Some("remix"), false, "/").await;
}

/// A real Vite build of a React app, served by Caddy: client routes get the app's page, its
/// fingerprinted script is cached for a year.
#[tokio::test]
async fn a_vite_react_app_is_built_and_its_client_routes_served_by_caddy() {
    let (git, mut s) = installation().await;
    let marker = unique("vite-spa");
    let files = fixture("vite-spa", &marker);
    let (d, log) = deploy((&git, &mut s), "vite-spa", &files, "/", ("node", Some("vite"), false)).await;
    assert!(log.iter().any(|l| l.starts_with("plan: static dist ")), "{log:#?}");
    let url = d["url"].as_str().expect("url").to_string();
    let client = reqwest::Client::new();
    let mut script = None;
    for route in ["/", "/settings/profile"] {
        let answer = slipway_tests::harness::app_request(&client, &url, route).send().await.expect("answers");
        assert_eq!(answer.status(), 200, "{route}");
        let page = answer.text().await.unwrap_or_default();
        assert!(page.contains(&format!("<title>{marker} vite-spa</title>")), "{route} is the app's page: {page}");
        script = page.split("src=\"").nth(1).and_then(|r| r.split('"').next()).map(str::to_string);
    }
    let script = script.expect("the built page loads a script");
    assert!(script.starts_with("/assets/index-") && script.ends_with(".js"), "a fingerprinted bundle: {script}");
    let js = slipway_tests::harness::app_request(&client, &url, &script).send().await.expect("js");
    assert_eq!(js.status(), 200);
    assert_eq!(js.headers()["cache-control"], "public, max-age=31536000, immutable");
    assert!(js.text().await.unwrap_or_default().contains("vite-spa at"), "the React bundle");
}

/// A workspace: its one binary, its library crate and their crates.io dependency, with every
/// member's tests run.
#[tokio::test]
async fn a_rust_workspace_builds_its_one_binary_and_tests_every_member() {
    builds_and_serves("rust-workspace", "rust", None, true, "/healthz").await;
}

/// Angular's application builder: the static `dist/<project>/browser`, client routes answered
/// with the app's page.
#[tokio::test]
async fn angular_is_built_and_its_browser_output_served_by_caddy() {
    let (git, mut s) = installation().await;
    let marker = unique("angular");
    let files = fixture("angular", &marker);
    let (d, log) = deploy((&git, &mut s), "angular", &files, "/", ("node", Some("angular"), false)).await;
    assert!(log.iter().any(|l| l.starts_with("plan: static dist/shop/browser ")), "{log:#?}");
    let url = d["url"].as_str().expect("url").to_string();
    for route in ["/", "/orders/42"] {
        let page = s.app_body(&url, route).await.unwrap_or_else(|| panic!("{route} answers"));
        assert!(page.contains(&format!("<title>{marker} angular</title>")), "{route} is the app's page: {page}");
        assert!(page.contains("<app-root"), "{page}");
    }
}

/// Streamlit in production: headless, on `$PORT`, and the app's script runs (the script health
/// check executes it).
#[tokio::test]
async fn streamlit_runs_headless_and_its_script_runs() {
    let (git, mut s) = installation().await;
    let files = fixture("streamlit", &unique("streamlit"));
    let (d, _) =
        deploy((&git, &mut s), "streamlit", &files, "/_stcore/health", ("python", Some("streamlit"), false)).await;
    let url = d["url"].as_str().expect("url").to_string();
    assert_eq!(s.app_body(&url, "/_stcore/script-health-check").await.as_deref(), Some("ok"));
}

/// Bun's own image, a TypeScript entry run by Bun, and `bun test`.
#[tokio::test]
async fn a_bun_app_runs_its_typescript_entry_on_bun() {
    builds_and_serves("bun", "node", None, true, "/").await;
}
