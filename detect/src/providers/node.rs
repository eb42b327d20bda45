//! Node.js: package manager from lockfiles or `packageManager`, version from `.nvmrc`,
//! `.node-version` or `engines`, scripts, static-output frameworks and workspaces.

use serde_json::Value;

use super::{plan, read_json};
use crate::{DetectError, Fact, Plan, Provider, Tree};

/// Frameworks whose build is a directory of static files, and that directory.
const STATIC_OUTPUT: &[(&str, &str)] = &[
    ("vite", "dist"),
    ("react-scripts", "build"),
    ("astro", "dist"),
    ("@vue/cli-service", "dist"),
    ("gatsby", "public"),
];

pub(super) fn detect(tree: &Tree, app_root: &str) -> Result<Option<Plan>, DetectError> {
    let Some(pkg) = read_json(tree, "package.json")? else {
        return Ok(None);
    };
    if !pkg.is_object() {
        return Err(DetectError::Invalid { file: "package.json".into(), message: "must be a JSON object".into() });
    }
    let mut p = plan(Provider::Node, app_root);
    let scripts = pkg.get("scripts").and_then(Value::as_object).cloned().unwrap_or_default();
    let script = |name: &str| scripts.get(name).and_then(Value::as_str).map(str::to_string);
    let has_dep =
        |name: &str| ["dependencies", "devDependencies"].iter().any(|k| pkg.get(k).and_then(|d| d.get(name)).is_some());

    if let Some(workspaces) = workspaces(&pkg)
        && script("start").is_none()
    {
        let apps = expand_workspaces(tree, &workspaces);
        return Err(DetectError::SeveralApps {
            root: app_root.into(),
            apps: if apps.is_empty() { workspaces.join(", ") } else { apps.join(", ") },
        });
    }

    let (pm, pm_from) = package_manager(tree, &pkg);
    p.package_manager = Some(Fact::new(pm.to_string(), &[pm_from]));
    p.version = Some(version(tree, &pkg)?);
    let lockfile = lockfile(tree, pm);
    p.dependency_files = ["package.json", ".npmrc", ".yarnrc.yml", lockfile.unwrap_or("")]
        .into_iter()
        .filter(|f| !f.is_empty() && tree.file(f))
        .map(str::to_string)
        .collect();
    let install = match (pm, lockfile.is_some()) {
        ("npm", true) => "npm ci",
        ("npm", false) => "npm install",
        ("yarn", _) if tree.file(".yarnrc.yml") || is_berry_lock(tree)? => "yarn install --immutable",
        ("yarn", _) => "yarn install --frozen-lockfile",
        ("pnpm", _) => "pnpm install --frozen-lockfile",
        _ => "bun install --frozen-lockfile",
    };
    p.install = Some(Fact::new(install.to_string(), &[lockfile.unwrap_or("package.json")]));
    let run = |s: &str| {
        if pm == "npm" { format!("npm run {s}") } else { format!("{pm} run {s}") }
    };
    if script("build").is_some() {
        p.build = Some(Fact::new(run("build"), &["package.json"]));
    }
    if script("test").is_some_and(|t| !t.contains("no test specified")) {
        p.test = Some(Fact::new(if pm == "npm" { "npm test".into() } else { format!("{pm} test") }, &["package.json"]));
    }

    if has_dep("next") {
        p.framework = Some(Fact::new("next".into(), &["package.json"]));
        p.start = Some(Fact::new(
            script("start").map(|_| run("start")).unwrap_or_else(|| "npx next start -p $PORT".into()),
            &["package.json"],
        ));
        p.port = Fact::new(3000, &["package.json"]);
        return Ok(Some(p));
    }
    if script("start").is_some() {
        p.start = Some(Fact::new(run("start"), &["package.json"]));
    }
    for (framework, dir) in STATIC_OUTPUT {
        if has_dep(framework) && p.start.is_none() {
            p.framework = Some(Fact::new(framework.to_string(), &["package.json"]));
            p.static_dir = Some(Fact::new(dir.to_string(), &["package.json"]));
            return Ok(Some(p));
        }
    }
    for framework in ["express", "fastify", "koa", "@nestjs/core", "hono"] {
        if has_dep(framework) {
            p.framework = Some(Fact::new(
                framework.trim_start_matches('@').split('/').next().unwrap_or(framework).to_string(),
                &["package.json"],
            ));
            break;
        }
    }
    if p.start.is_none() {
        let main = pkg.get("main").and_then(Value::as_str).filter(|m| tree.file(m));
        let entry = main.or_else(|| tree.first_file(&["server.js", "index.js", "app.js", "main.js"]));
        if let Some(entry) = entry {
            p.start = Some(Fact::new(format!("node {entry}"), &["package.json", entry]));
        }
    }
    Ok(Some(p))
}

fn workspaces(pkg: &Value) -> Option<Vec<String>> {
    let ws = pkg.get("workspaces")?;
    let list = ws.as_array().or_else(|| ws.get("packages").and_then(Value::as_array))?;
    Some(list.iter().filter_map(Value::as_str).map(str::to_string).collect())
}

/// `packages/*` → the package directories under `packages/`.
fn expand_workspaces(tree: &Tree, patterns: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for pattern in patterns {
        match pattern.strip_suffix("/*") {
            Some(parent) => {
                for child in tree.list(parent, |_, is_dir| is_dir) {
                    let dir = format!("{parent}/{child}");
                    if tree.file(&format!("{dir}/package.json")) {
                        out.push(dir);
                    }
                }
            }
            None if tree.file(&format!("{pattern}/package.json")) => out.push(pattern.clone()),
            None => {}
        }
    }
    out
}

fn package_manager(tree: &Tree, pkg: &Value) -> (&'static str, &'static str) {
    if let Some(pm) = pkg.get("packageManager").and_then(Value::as_str) {
        for name in ["pnpm", "yarn", "bun", "npm"] {
            if pm.starts_with(&format!("{name}@")) {
                return (name, "package.json");
            }
        }
    }
    for (file, pm) in [
        ("bun.lockb", "bun"),
        ("bun.lock", "bun"),
        ("pnpm-lock.yaml", "pnpm"),
        ("yarn.lock", "yarn"),
        ("package-lock.json", "npm"),
    ] {
        if tree.file(file) {
            return (pm, file);
        }
    }
    ("npm", "default")
}

fn lockfile(tree: &Tree, pm: &str) -> Option<&'static str> {
    let candidates: &[&'static str] = match pm {
        "bun" => &["bun.lockb", "bun.lock"],
        "pnpm" => &["pnpm-lock.yaml"],
        "yarn" => &["yarn.lock"],
        _ => &["package-lock.json", "npm-shrinkwrap.json"],
    };
    tree.first_file(candidates)
}

fn is_berry_lock(tree: &Tree) -> Result<bool, DetectError> {
    Ok(tree.read("yarn.lock")?.is_some_and(|t| t.contains("__metadata:")))
}

fn version(tree: &Tree, pkg: &Value) -> Result<Fact<String>, DetectError> {
    for file in [".nvmrc", ".node-version"] {
        if let Some(text) = tree.read(file)? {
            let v = text.trim().trim_start_matches('v');
            if !v.is_empty() {
                return Ok(Fact::new(major(v), &[file]));
            }
        }
    }
    if let Some(range) = pkg.get("engines").and_then(|e| e.get("node")).and_then(Value::as_str) {
        let digits: String =
            range.chars().skip_while(|c| !c.is_ascii_digit()).take_while(|c| c.is_ascii_digit()).collect();
        if !digits.is_empty() {
            return Ok(Fact::new(digits, &["package.json"]));
        }
    }
    Ok(Fact::default_value("22".into()))
}

fn major(v: &str) -> String {
    match v {
        "lts/*" | "lts" | "node" | "stable" => "22".into(),
        other => other.split('.').next().unwrap_or(other).to_string(),
    }
}
