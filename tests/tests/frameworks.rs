//! The mainstream frameworks, built for real without a Dockerfile: each app in
//! `tests/fixtures/frameworks/` installs its real dependencies from the package registries
//! (npm, PyPI, crates.io) inside a generated Dockerfile's build, on the locally built base images
//! (`scripts/base-images`: Node.js, Python and Go, and Rust, from Debian), is deployed, and answers
//! a route that only its server can render: `/greet/<a name chosen by the test>`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, unique};

const SECRET: &str = "frameworks-secret-0123456789";
const BASES: &str = "node=slipway/runtimes:bookworm,node-run=slipway/runtimes:bookworm,\
    python=slipway/runtimes:bookworm,python-run=slipway/runtimes:bookworm,\
    rust=slipway/rust:bookworm,rust-run=slipway/debian:bookworm";

/// Every file of a fixture, relative to it, with `__MARKER__` replaced by `marker`.
fn fixture(name: &str, marker: &str) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("fixture dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).expect("inside").to_path_buf());
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/frameworks").join(name);
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|rel| {
            let text = std::fs::read_to_string(root.join(&rel)).expect("fixture file");
            (rel.to_string_lossy().into_owned(), text.replace("__MARKER__", marker).into_bytes())
        })
        .collect()
}

/// Deploys fixture `name` (healthy when `health` answers) and asks its server to greet a name
/// only known at request time.
async fn builds_and_serves(name: &str, provider: &str, framework: Option<&str>, tested: bool, health: &str) {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions {
        runner_env: vec![("SLIPWAY_BASE_IMAGES".into(), BASES.into())],
        health_timeout_seconds: 60,
        ..Default::default()
    })
    .await;
    let marker = unique(name);
    let files = fixture(name, &marker);
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
