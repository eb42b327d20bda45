//! Benchmark: what the dependency layer of a generated Dockerfile saves on a source-only change,
//! for a Node (Express), a Python (Flask on gunicorn), a Go and a Rust (serde) app without a
//! Dockerfile, built on the base images of `scripts/base-images`.
//!
//! For each app, in the same run: an **uncached** build, where the dependency manifest changed (a
//! marker in `package.json`, `requirements.txt`, `go.mod`, `Cargo.toml`), so the dependencies are
//! installed (or compiled) again from the registries, and then **source-only** builds, where one
//! source file changed and the dependency layer comes from the cache. Prints the build step's
//! median time of each, their ratio, and what the layer cache said (steps reused / rebuilt).
//! `SLIPWAY_BENCH_ROUNDS` sets the rounds per app (default 3), `SLIPWAY_BENCH_LANGUAGES` which
//! apps run (e.g. `go,rust`; default all).
//!
//! Run with `scripts/bench` (it starts the services, builds the base images and the binaries).

use std::time::Duration;

use serde_json::{Value, json};
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, unique};

const SECRET: &str = "bench-secret-0123456789";
const BASES: &str = "node=slipway/runtimes:bookworm,node-run=slipway/runtimes:bookworm,\
    python=slipway/runtimes:bookworm,python-run=slipway/runtimes:bookworm,\
    go=slipway/runtimes:bookworm,go-run=slipway/debian:bookworm,\
    rust=slipway/rust:bookworm,rust-run=slipway/debian:bookworm";

struct App {
    language: &'static str,
    /// The fixture, under `tests/fixtures`.
    fixture: &'static str,
    /// The dependency manifest, and how to mark it so that its layer misses.
    manifest: &'static str,
    mark_manifest: fn(&str, &str) -> String,
}

fn apps() -> Vec<App> {
    vec![
        App {
            language: "node",
            fixture: "frameworks/express",
            manifest: "package.json",
            mark_manifest: |text, marker| text.replacen('{', &format!("{{\n  \"description\": \"{marker}\","), 1),
        },
        App {
            language: "python",
            fixture: "frameworks/flask",
            manifest: "requirements.txt",
            mark_manifest: |text, marker| format!("# {marker}\n{text}"),
        },
        App {
            language: "go",
            fixture: "bench/go",
            manifest: "go.mod",
            mark_manifest: |text, marker| format!("// {marker}\n{text}"),
        },
        App {
            language: "rust",
            fixture: "bench/rust",
            manifest: "Cargo.toml",
            mark_manifest: |text, marker| {
                text.replacen("[package]\n", &format!("[package]\ndescription = \"{marker}\"\n"), 1)
            },
        },
    ]
}

/// The fixture's files, the source ones with `__MARKER__` replaced by `source` and the manifest
/// marked with `deps`.
fn files(app: &App, deps: &str, source: &str) -> Vec<(String, Vec<u8>)> {
    slipway_tests::fixture_files(app.fixture)
        .into_iter()
        .map(|(name, text)| {
            let text = if name == app.manifest {
                (app.mark_manifest)(&text, deps)
            } else {
                text.replace("__MARKER__", source)
            };
            (name, text.into_bytes())
        })
        .collect()
}

/// The seconds a step of a finished deployment took.
fn step_seconds(d: &Value, step: &str) -> f64 {
    let st = d["steps"].as_array().expect("steps").iter().find(|s| s["step"] == step).expect("step");
    let at = |k: &str| chrono::DateTime::parse_from_rfc3339(st[k].as_str().expect("time")).expect("rfc3339");
    (at("finished_at") - at("started_at")).num_milliseconds() as f64 / 1000.0
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("SLIPWAY_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions {
        runner_env: vec![("SLIPWAY_BASE_IMAGES".into(), BASES.into())],
        health_timeout_seconds: 60,
        edge: false,
        ..Default::default()
    })
    .await;
    println!("build cache: the build step, uncached (dependency manifest changed) against source-only changes");
    let only = std::env::var("SLIPWAY_BENCH_LANGUAGES").unwrap_or_default();
    for app in apps().into_iter().filter(|a| only.is_empty() || only.split(',').any(|l| l.trim() == a.language)) {
        let repo = unique(app.language);
        let url = git.url(&repo);
        s.create_app(app.language, &url, SECRET, json!({"health_path": "/healthz"})).await;
        let (mut uncached, mut cached, mut summary) = (Vec::new(), Vec::new(), String::new());
        for round in 0..rounds {
            let deps = unique("deps");
            for change in 0..2 {
                let tree = files(&app, &deps, &unique("source"));
                let entries: Vec<Entry<'_>> = tree.iter().map(|(p, c)| Entry::File(p, c)).collect();
                let sha = git.commit(&repo, "change", &entries);
                let (status, answer) = s.push(&url, &sha, SECRET, &unique("delivery")).await;
                assert_eq!(status, 202, "{answer}");
                let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
                let d = s.finished(&id, Duration::from_secs(900)).await;
                assert_eq!(d["state"], "completed", "{} round {round}: {d}\n{}", app.language, s.dump());
                let took = step_seconds(&d, "build");
                if change == 0 {
                    uncached.push(took);
                } else {
                    cached.push(took);
                    let c = &d["cache"];
                    summary = format!("{} reused, {} rebuilt", c["reused"], c["rebuilt"]);
                }
            }
        }
        let (u, c) = (median(&uncached), median(&cached));
        println!(
            "  {:<6} uncached {u:>6.1} s   source-only {c:>6.1} s   ratio {:>5.1}x   (source-only layer cache: {summary}; {rounds} rounds)",
            app.language,
            u / c.max(0.001),
        );
        slipway_tests::bench::report(&slipway_tests::bench::Figure {
            bench: "build cache",
            what: &format!("{} build step, one source file changed", app.language),
            unit: slipway_tests::bench::Unit::Seconds,
            ours: c,
            baseline: Some(("the same with its dependency manifest changed", u)),
            target: None,
        });
    }
}
