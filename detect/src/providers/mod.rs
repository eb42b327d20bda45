//! Which provider a repository is, in a fixed order, and the monorepo check when none is.

mod compiled;
mod node;
mod python;
mod scripted;

use serde_json::Value;

use crate::{DetectError, Fact, Plan, Provider, Tree};

type Detector = fn(&Tree, &str) -> Result<Option<Plan>, DetectError>;

/// Detectors in the order they are tried, with the files each looks for.
const DETECTORS: &[(Provider, &str, Detector)] = &[
    (Provider::Node, "package.json, package.json5", node::detect),
    (Provider::Deno, "deno.json, deno.jsonc, a main.ts written for Deno", scripted::deno),
    (Provider::Python, "requirements.txt, pyproject.toml, Pipfile, setup.py", python::detect),
    (Provider::Go, "go.mod, go.work, *.go of package main", compiled::go),
    (Provider::Java, "pom.xml, build.gradle, build.gradle.kts", compiled::java),
    (Provider::Ruby, "Gemfile", scripted::ruby),
    (Provider::Rust, "Cargo.toml", compiled::rust),
    (Provider::Php, "composer.json, index.php", scripted::php),
    (Provider::Dotnet, "*.csproj, *.fsproj, *.vbproj", compiled::dotnet),
    (Provider::Elixir, "mix.exs", compiled::elixir),
    (Provider::Static, "Staticfile, index.html, public/index.html, dist/index.html", scripted::static_site),
];

/// Files that make a directory an app, for the monorepo check.
const APP_MARKERS: &[&str] = &[
    "Dockerfile",
    "package.json",
    "package.json5",
    "deno.json",
    "requirements.txt",
    "pyproject.toml",
    "Pipfile",
    "go.mod",
    "go.work",
    "pom.xml",
    "build.gradle",
    "build.gradle.kts",
    "Gemfile",
    "Cargo.toml",
    "composer.json",
    "mix.exs",
];

pub(crate) fn detect(
    tree: &Tree,
    app_root: &str,
    forced: Option<&str>,
    ignore_dockerfile: bool,
) -> Result<Plan, DetectError> {
    if forced == Some("dockerfile") || (forced.is_none() && !ignore_dockerfile && tree.file("Dockerfile")) {
        if !tree.file("Dockerfile") {
            return Err(DetectError::Invalid {
                file: "slipway.toml".into(),
                message: "provider is `dockerfile` but there is no Dockerfile".into(),
            });
        }
        let mut plan = plan(Provider::Dockerfile, app_root);
        plan.install = None;
        plan.start = None;
        return Ok(plan);
    }
    // Rails and Laravel apps carry a package.json for their assets: the backend is the app.
    let backend = (tree.file("Gemfile") && tree.file("config/application.rb"))
        || (tree.file("composer.json") && (tree.file("artisan") || tree.file("bin/console")));
    let assets_only = forced.is_none() && backend && tree.file("package.json");
    let order = DETECTORS
        .iter()
        .filter(|(p, ..)| assets_only && matches!(p, Provider::Ruby | Provider::Php))
        .chain(DETECTORS.iter().filter(|(p, ..)| !(assets_only && matches!(p, Provider::Ruby | Provider::Php))));
    for (provider, files, detector) in order {
        if forced.is_some_and(|f| f != provider.as_str()) {
            continue;
        }
        if let Some(mut plan) = detector(tree, app_root)? {
            if assets_only {
                plan.notes.push(format!(
                    "package.json is taken for the {} app's assets, not as a Node.js app (slipway.toml `provider = \"node\"` says otherwise)",
                    plan.provider.as_str()
                ));
            }
            return Ok(plan);
        }
        if let Some(f) = forced {
            return Err(DetectError::Invalid {
                file: "slipway.toml".into(),
                message: format!("provider is `{f}` but none of {files} is there"),
            });
        }
    }
    let apps = nested_apps(tree);
    if apps.len() > 1 {
        return Err(DetectError::SeveralApps { root: app_root.into(), apps: apps.join(", ") });
    }
    if let [only] = apps.as_slice() {
        return Err(DetectError::SeveralApps {
            root: app_root.into(),
            apps: format!("{only} (the only one; set the app root to it)"),
        });
    }
    let looked_for: Vec<&str> =
        std::iter::once("Dockerfile").chain(DETECTORS.iter().map(|(_, files, _)| *files)).collect();
    Err(DetectError::NothingMatched { root: app_root.into(), looked_for: looked_for.join("; ") })
}

/// Directories one or two levels down that look like apps of their own.
fn nested_apps(tree: &Tree) -> Vec<String> {
    let mut found = Vec::new();
    for top in tree.list(".", |name, is_dir| is_dir && !name.starts_with('.') && name != "node_modules") {
        if APP_MARKERS.iter().any(|m| tree.file(&format!("{top}/{m}"))) {
            found.push(top.clone());
            continue;
        }
        for sub in tree.list(&top, |name, is_dir| is_dir && !name.starts_with('.') && name != "node_modules") {
            let dir = format!("{top}/{sub}");
            if APP_MARKERS.iter().any(|m| tree.file(&format!("{dir}/{m}"))) {
                found.push(dir);
            }
        }
    }
    found
}

/// A plan with the defaults every provider starts from.
pub(crate) fn plan(provider: Provider, app_root: &str) -> Plan {
    Plan {
        provider,
        app_root: app_root.to_string(),
        version: None,
        package_manager: None,
        framework: None,
        install: None,
        build: None,
        start: None,
        test: None,
        port: Fact::default_value(8080),
        health_path: None,
        dependency_files: Vec::new(),
        static_dir: None,
        artifact: None,
        base_image: None,
        env: Default::default(),
        release: None,
        pre_deploy: None,
        post_deploy: None,
        snapshot_database: None,
        notes: Vec::new(),
    }
}

/// A `Procfile` `web:` line sets the start command.
/// A shell command as an argv.
pub(crate) fn shell(command: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), command.into()]
}

pub(crate) fn apply_procfile(tree: &Tree, plan: &mut Plan) -> Result<(), DetectError> {
    let Some(text) = tree.read("Procfile")? else {
        return Ok(());
    };
    for (i, line) in text.lines().enumerate() {
        if let Some(cmd) = line.trim().strip_prefix("web:") {
            let cmd = cmd.trim();
            if cmd.is_empty() {
                return Err(DetectError::Parse {
                    file: "Procfile".into(),
                    line: i + 1,
                    column: 5,
                    message: "the `web:` line has no command".into(),
                });
            }
            plan.start = Some(Fact::new(cmd.to_string(), &["Procfile"]));
        }
        // Heroku's release phase: migrations and the like, once per deployment.
        if let Some(cmd) = line.trim().strip_prefix("release:") {
            let cmd = cmd.trim();
            if cmd.is_empty() {
                return Err(DetectError::Parse {
                    file: "Procfile".into(),
                    line: i + 1,
                    column: 9,
                    message: "the `release:` line has no command".into(),
                });
            }
            plan.release = Some(Fact::new(shell(cmd), &["Procfile"]));
        }
    }
    Ok(())
}

/// Parses a JSON file, with the file, line and column of a syntax error.
pub(crate) fn read_json(tree: &Tree, file: &str) -> Result<Option<Value>, DetectError> {
    let Some(text) = tree.read(file)? else {
        return Ok(None);
    };
    if file.ends_with(".jsonc") || file.ends_with(".json5") {
        // Comments (line and block), trailing commas, unquoted keys: JSON5 is a superset of JSONC.
        return json5::from_str::<Value>(&text).map(Some).map_err(|e| {
            let (line, column) = match &e {
                json5::Error::Message { location: Some(at), .. } => (at.line, at.column),
                _ => (0, 0),
            };
            // The parser's message quotes the offending line, which may be the whole file:
            // keep only what it says is wrong, bounded.
            let json5::Error::Message { msg, .. } = e;
            let said =
                msg.lines().rev().find_map(|l| l.trim().strip_prefix("= ")).unwrap_or(msg.lines().next().unwrap_or(""));
            let message: String = said.trim().chars().take(200).collect();
            DetectError::Parse { file: file.into(), line, column, message }
        });
    }
    serde_json::from_str(&text).map(Some).map_err(|e| {
        let text = e.to_string();
        let message = text.rsplit_once(" at line ").map(|(m, _)| m.to_string()).unwrap_or(text);
        DetectError::Parse { file: file.into(), line: e.line(), column: e.column(), message }
    })
}

/// Parses a TOML file, with the file, line and column of a syntax error.
pub(crate) fn read_toml(tree: &Tree, file: &str) -> Result<Option<toml::Table>, DetectError> {
    let Some(text) = tree.read(file)? else {
        return Ok(None);
    };
    text.parse::<toml::Table>().map(Some).map_err(|e| crate::config::toml_error(file, &text, &e))
}

/// The first line of `text` of the form `<key> <value>` (e.g. `go 1.22`), its value.
pub(crate) fn directive<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.trim().strip_prefix(key).filter(|rest| rest.starts_with(' ')).map(str::trim))
}
