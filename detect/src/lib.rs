//! Build plans: what a repository is (language, version, package manager, framework), how to
//! install, build, start and test it, and which files decided each of these — for repositories
//! with and without a Dockerfile. Pure: it reads files, never runs anything. `slipway detect`
//! and the runner share it.

pub mod config;
pub mod dockerfile;
mod providers;
mod tree;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

pub use config::SlipwayToml;
pub use tree::Tree;

/// The language or kind of repository that decided the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// The repository's own Dockerfile is used as it is.
    Dockerfile,
    Node,
    Deno,
    Python,
    Go,
    Java,
    Ruby,
    Rust,
    Php,
    Dotnet,
    Elixir,
    /// Plain files served by a static web server.
    Static,
}

impl Provider {
    /// The name used in `slipway.toml` and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Dockerfile => "dockerfile",
            Provider::Node => "node",
            Provider::Deno => "deno",
            Provider::Python => "python",
            Provider::Go => "go",
            Provider::Java => "java",
            Provider::Ruby => "ruby",
            Provider::Rust => "rust",
            Provider::Php => "php",
            Provider::Dotnet => "dotnet",
            Provider::Elixir => "elixir",
            Provider::Static => "static",
        }
    }
}

/// A decided value and the files (or `slipway.toml`, or `default`) that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fact<T> {
    pub value: T,
    pub from: Vec<String>,
}

impl<T> Fact<T> {
    /// A value decided by `files`.
    pub fn new(value: T, files: &[&str]) -> Self {
        Self { value, from: files.iter().map(|f| f.to_string()).collect() }
    }

    /// A value nothing in the repository decided.
    pub fn default_value(value: T) -> Self {
        Self::new(value, &["default"])
    }
}

/// What the runner will build and run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub provider: Provider,
    /// The directory, relative to the repository, the app lives in (`.` for the root).
    pub app_root: String,
    pub version: Option<Fact<String>>,
    pub package_manager: Option<Fact<String>>,
    pub framework: Option<Fact<String>>,
    pub install: Option<Fact<String>>,
    pub build: Option<Fact<String>>,
    pub start: Option<Fact<String>>,
    /// `None` means no tests were found: the test step is reported as skipped.
    pub test: Option<Fact<String>>,
    pub port: Fact<u16>,
    pub health_path: Option<Fact<String>>,
    /// Files copied (and dependencies installed) before the rest of the source, for the cache.
    pub dependency_files: Vec<String>,
    /// For apps that build to static files: the directory served.
    pub static_dir: Option<Fact<String>>,
    /// For compiled apps: the binary or artifact that runs.
    pub artifact: Option<Fact<String>>,
    /// Base image of the final stage when `slipway.toml` sets one.
    pub base_image: Option<Fact<String>>,
    pub env: BTreeMap<String, String>,
    /// The release command (migrations): run once per deployment in a one-off container of the
    /// new image before any traffic moves; an argv (a shell command is `/bin/sh -c <command>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<Fact<Vec<String>>>,
    /// Deploy hooks (`slipway.toml`), run like the release command in one-off containers of the
    /// new image: before the deploy step (a failure stops the deployment) and once the new
    /// version serves (a failure is reported, the switch stays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_deploy: Option<Fact<Vec<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_deploy: Option<Fact<Vec<String>>>,
    /// The variable naming the PostgreSQL database snapshotted before the release command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_database: Option<Fact<String>>,
    /// What detection noticed and did not guess: a development server it did not use, an
    /// ambiguity and how to settle it (`slipway.toml`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DetectError {
    #[error("{file}:{line}:{column}: {message}")]
    Parse { file: String, line: usize, column: usize, message: String },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error(
        "no app found in {root}: looked for {looked_for}; set `provider`, `install`, `build` and `start` in slipway.toml (see docs/slipway-toml.md)"
    )]
    NothingMatched { root: String, looked_for: String },
    #[error("{root} holds several apps ({apps}); set the app root to one of them")]
    SeveralApps { root: String, apps: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// How to detect.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The app's directory inside the repository (default: the root).
    pub app_root: Option<String>,
    /// Build with the detected plan even when the repository has a Dockerfile.
    pub ignore_dockerfile: bool,
}

/// Makes the plan for the repository at `repo`.
pub fn detect(repo: &Path, options: &Options) -> Result<Plan, DetectError> {
    let app_root = normalize_root(options.app_root.as_deref().unwrap_or("."))?;
    let dir = repo.join(&app_root);
    if !dir.is_dir() {
        return Err(DetectError::Io {
            path: app_root,
            message: "the app root is not a directory of the repository".into(),
        });
    }
    let tree = Tree::new(&dir);
    let config = SlipwayToml::load(&tree)?;
    let ignore_dockerfile = options.ignore_dockerfile
        || config.as_ref().is_some_and(|c| c.provider.as_deref().is_some_and(|p| p != "dockerfile"));
    let mut plan =
        providers::detect(&tree, &app_root, config.as_ref().and_then(|c| c.provider.as_deref()), ignore_dockerfile)?;
    providers::apply_procfile(&tree, &mut plan)?;
    if let Some(config) = config {
        config.apply(&mut plan);
    }
    Ok(plan)
}

fn normalize_root(raw: &str) -> Result<String, DetectError> {
    let parts: Vec<&str> = raw.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if raw.starts_with('/') || parts.contains(&"..") {
        return Err(DetectError::Io {
            path: raw.to_string(),
            message: "the app root must be a relative path inside the repository".into(),
        });
    }
    Ok(if parts.is_empty() { ".".into() } else { parts.join("/") })
}
