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
    // pnpm also reads its manifest from package.json5.
    let manifest = if tree.file("package.json") { "package.json" } else { "package.json5" };
    let Some(pkg) = read_json(tree, manifest)? else {
        return Ok(None);
    };
    if !pkg.is_object() {
        return Err(DetectError::Invalid { file: manifest.into(), message: "must be a JSON object".into() });
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
    p.dependency_files = ["package.json", "package.json5", ".npmrc", ".yarnrc.yml", lockfile.unwrap_or("")]
        .into_iter()
        .filter(|f| !f.is_empty() && tree.file(f))
        .map(str::to_string)
        .collect();
    let install = match (pm, lockfile.is_some()) {
        ("npm", true) => "npm ci".to_string(),
        ("yarn", true) if tree.file(".yarnrc.yml") || is_berry_lock(tree)? => "yarn install --immutable".to_string(),
        ("yarn", true) => "yarn install --frozen-lockfile".to_string(),
        (pm, true) => format!("{pm} install --frozen-lockfile"),
        // No lockfile to hold the install to.
        (pm, false) => format!("{pm} install"),
    };
    if lockfile == Some("package-lock.json")
        && let Some(stale) = stale_lock(tree, &pkg)?
    {
        // `npm ci` refuses such a lockfile; installing anyway would deploy what nobody tested.
        p.notes.push(format!(
            "package-lock.json is out of sync with package.json ({stale}): `npm ci` will fail; run `npm install` and commit the lockfile"
        ));
    }
    p.install = Some(Fact::new(install, &[lockfile.unwrap_or(manifest)]));
    let run = |s: &str| {
        if pm == "npm" { format!("npm run {s}") } else { format!("{pm} run {s}") }
    };
    if script("build").is_some() {
        p.build = Some(Fact::new(run("build"), &[manifest]));
    }
    if script("test").is_some_and(|t| !t.contains("no test specified")) {
        p.test = Some(Fact::new(if pm == "npm" { "npm test".into() } else { format!("{pm} test") }, &[manifest]));
    }

    // A start script that runs a development server is never what production runs.
    let start_script = script("start").filter(|s| !is_dev_server(s));
    if script("start").is_some() && start_script.is_none() {
        p.notes.push(format!(
            "the start script `{}` runs a development server; not used in production",
            script("start").unwrap_or_default()
        ));
    }
    let config = |files: &[&'static str]| -> Result<Option<(String, &'static str)>, DetectError> {
        for file in files {
            if let Some(text) = tree.read(file)? {
                return Ok(Some((text, *file)));
            }
        }
        Ok(None)
    };
    let says = |text: &str, key: &str, value: &str| {
        text.lines().any(|l| {
            let l: String = l.split("//").next().unwrap_or("").chars().filter(|c| !c.is_whitespace()).collect();
            l.contains(&format!("{key}:\"{value}\"")) || l.contains(&format!("{key}:'{value}'"))
        })
    };
    let framework = |p: &mut Plan, name: &str, from: &[&str]| p.framework = Some(Fact::new(name.to_string(), from));
    let serve = |p: &mut Plan, command: String, from: &[&str]| {
        p.start = Some(Fact::new(start_script.as_ref().map(|_| run("start")).unwrap_or(command), from))
    };
    let static_site = |p: &mut Plan, dir: &str, from: &[&str]| {
        p.static_dir = Some(Fact::new(dir.to_string(), from));
        p.start = None;
    };

    if has_dep("next") {
        framework(&mut p, "next", &[manifest]);
        let next_config = config(&["next.config.js", "next.config.mjs", "next.config.cjs", "next.config.ts"])?;
        match next_config {
            Some((text, file)) if says(&text, "output", "export") => {
                // `next start` cannot serve an export: its `out` directory is the site.
                static_site(&mut p, "out", &[manifest, file]);
                return Ok(Some(p));
            }
            Some((text, file)) if says(&text, "output", "standalone") => {
                // A standalone build is served by its own server, with the static assets and
                // `public/` copied beside it (as Next.js's own Dockerfile does); `next start`
                // does not serve it.
                let build = p.build.as_ref().map(|b| b.value.clone()).unwrap_or_else(|| "npx next build".into());
                let public = if tree.dir("public") { " && cp -r public .next/standalone/public" } else { "" };
                p.build = Some(Fact::new(
                    format!("{build} && cp -r .next/static .next/standalone/.next/static{public}"),
                    &[manifest, file],
                ));
                p.start = Some(Fact::new("node .next/standalone/server.js".into(), &[manifest, file]));
                if script("start").is_some_and(|s| s.contains("next start")) {
                    p.notes.push(format!(
                        "{file} sets output: \"standalone\": runs .next/standalone/server.js, not the start script `next start`"
                    ));
                }
                // The server listens on $HOSTNAME, which Docker sets to the container's name.
                p.env.insert("HOSTNAME".into(), "0.0.0.0".into());
                p.port = Fact::new(3000, &[manifest]);
                return Ok(Some(p));
            }
            _ => {
                serve(&mut p, "npx next start -p $PORT".into(), &[manifest]);
                p.port = Fact::new(3000, &[manifest]);
                return Ok(Some(p));
            }
        }
    }
    if has_dep("nuxt") {
        framework(&mut p, "nuxt", &[manifest]);
        if p.build.is_none() {
            p.build = Some(Fact::new("npx nuxt build".into(), &[manifest]));
        }
        serve(&mut p, "node .output/server/index.mjs".into(), &[manifest]);
        p.env.insert("HOST".into(), "0.0.0.0".into());
        p.env.insert("NITRO_HOST".into(), "0.0.0.0".into());
        return Ok(Some(p));
    }
    if has_dep("@tanstack/react-start") || has_dep("@tanstack/start") || has_dep("@tanstack/solid-start") {
        framework(&mut p, "tanstack-start", &[manifest]);
        serve(&mut p, "node .output/server/index.mjs".into(), &[manifest]);
        return Ok(Some(p));
    }
    if has_dep("@sveltejs/kit") {
        framework(&mut p, "sveltekit", &[manifest]);
        let adapter = ["@sveltejs/adapter-node", "@sveltejs/adapter-static"].into_iter().find(|a| has_dep(a));
        match adapter {
            Some("@sveltejs/adapter-static") => static_site(&mut p, "build", &[manifest]),
            Some(_) => {
                serve(&mut p, "node build".into(), &[manifest]);
                p.env.insert("HOST".into(), "0.0.0.0".into());
            }
            None => {
                p.notes.push(
                    "SvelteKit without @sveltejs/adapter-node or adapter-static cannot run in a container: \
                     add adapter-node (a server) or adapter-static (a static site)"
                        .into(),
                );
                serve(&mut p, "node build".into(), &[manifest]);
            }
        }
        return Ok(Some(p));
    }
    let react_router = has_dep("@react-router/dev") || has_dep("@remix-run/dev");
    if react_router {
        let name = if has_dep("@react-router/dev") { "react-router" } else { "remix" };
        framework(&mut p, name, &[manifest]);
        let command = match name {
            "react-router" => "npx react-router-serve ./build/server/index.js",
            _ if has_dep("vite") => "npx remix-serve ./build/server/index.js",
            _ => "npx remix-serve ./build/index.js",
        };
        serve(&mut p, command.into(), &[manifest]);
        return Ok(Some(p));
    }
    if has_dep("astro") {
        framework(&mut p, "astro", &[manifest]);
        if has_dep("@astrojs/node") {
            serve(&mut p, "node ./dist/server/entry.mjs".into(), &[manifest]);
            p.env.insert("HOST".into(), "0.0.0.0".into());
        } else {
            static_site(&mut p, "dist", &[manifest]);
        }
        return Ok(Some(p));
    }
    if has_dep("@angular/core") {
        framework(&mut p, "angular", &[manifest]);
        let angular = read_json(tree, "angular.json")?;
        let (project, out, from) = angular_output(angular.as_ref());
        let from: &[&str] = if from { &[manifest, "angular.json"] } else { &[manifest] };
        if has_dep("@angular/ssr") || has_dep("@nguniversal/express-engine") {
            serve(&mut p, format!("node {out}/server/server.mjs"), from);
        } else {
            // The application builder (Angular 17+) writes the site to `browser/`.
            let dir = if angular.is_some() && !application_builder(angular.as_ref(), &project) {
                out
            } else {
                format!("{out}/browser")
            };
            static_site(&mut p, &dir, from);
        }
        return Ok(Some(p));
    }
    if has_dep("expo") && (has_dep("react-native-web") || has_dep("react-dom")) {
        framework(&mut p, "expo", &[manifest]);
        p.build = Some(Fact::new("npx expo export --platform web".into(), &[manifest]));
        static_site(&mut p, "dist", &[manifest]);
        return Ok(Some(p));
    }
    if start_script.is_some() {
        p.start = Some(Fact::new(run("start"), &[manifest]));
    }
    // NestJS's `start` runs through the CLI; its production start is `start:prod`.
    if has_dep("@nestjs/core") && script("start:prod").is_some() {
        p.start = Some(Fact::new(run("start:prod"), &[manifest]));
    }
    for (framework, dir) in STATIC_OUTPUT {
        if has_dep(framework) && p.start.is_none() {
            p.framework = Some(Fact::new(framework.to_string(), &[manifest]));
            p.static_dir = Some(Fact::new(dir.to_string(), &[manifest]));
            return Ok(Some(p));
        }
    }
    for framework in ["express", "fastify", "koa", "@nestjs/core", "hono"] {
        if has_dep(framework) {
            p.framework = Some(Fact::new(
                framework.trim_start_matches('@').split('/').next().unwrap_or(framework).to_string(),
                &[manifest],
            ));
            break;
        }
    }
    if p.start.is_none() {
        let main = pkg.get("main").and_then(Value::as_str).filter(|m| tree.file(m));
        let module = pkg.get("module").and_then(Value::as_str).filter(|m| tree.file(m));
        let entry = main.or(module).or_else(|| tree.first_file(&["server.js", "index.js", "app.js", "main.js"]));
        let ts_entry = entry
            .filter(|e| e.ends_with(".ts"))
            .or_else(|| tree.first_file(&["index.ts", "src/index.ts", "server.ts"]));
        match (entry.filter(|e| !e.ends_with(".ts")), ts_entry) {
            (Some(entry), _) => p.start = Some(Fact::new(format!("node {entry}"), &[manifest, entry])),
            // Bun runs TypeScript as it is.
            (None, Some(entry)) if pm == "bun" => {
                p.start = Some(Fact::new(format!("bun run {entry}"), &[manifest, entry]))
            }
            (None, Some(entry)) => {
                p.notes.push(format!("{entry} is TypeScript: add a build and a start script (or use Bun) to run it"))
            }
            (None, None) => {}
        }
    }
    Ok(Some(p))
}

/// Whether a script starts a development server (`react-scripts start`, `ng serve`, `vite`,
/// `next dev`, `expo start` ...), by its first command.
fn is_dev_server(script: &str) -> bool {
    let first = script.split("&&").next().unwrap_or(script);
    let words: Vec<&str> = first.split_whitespace().filter(|w| !w.contains('=')).collect();
    let (tool, verb) = (words.first().copied().unwrap_or(""), words.get(1).copied().unwrap_or(""));
    let tool = tool.trim_start_matches("npx").trim();
    let tool = if tool.is_empty() { verb } else { tool };
    matches!(
        (tool, verb),
        ("react-scripts", "start")
            | ("ng", "serve")
            | ("expo", "start")
            | ("next", "dev")
            | ("nuxt" | "nuxi", "dev")
            | ("webpack", "serve")
            | ("webpack-dev-server", _)
            | ("vue-cli-service", "serve")
            | ("gatsby", "develop")
            | ("astro", "dev")
            | ("remix" | "react-router", "dev")
            | ("vite", "" | "dev" | "serve" | "--host" | "--port")
            | ("parcel", "" | "serve")
    ) || (tool == "parcel" && verb.ends_with(".html"))
}

/// The default project's name and output directory in `angular.json`, and whether it was read.
fn angular_output(angular: Option<&Value>) -> (String, String, bool) {
    let Some(angular) = angular else { return (String::new(), "dist".into(), false) };
    let projects = angular.get("projects").and_then(Value::as_object);
    let project = angular
        .get("defaultProject")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| projects.and_then(|p| p.keys().next().cloned()))
        .unwrap_or_default();
    let options = projects.and_then(|p| p.get(&project)).and_then(|p| p.pointer("/architect/build/options"));
    let out = options
        .and_then(|o| o.get("outputPath"))
        .and_then(|o| o.as_str().or_else(|| o.get("base").and_then(Value::as_str)))
        .map(str::to_string)
        .unwrap_or_else(|| format!("dist/{project}"));
    (project, out, true)
}

/// Whether the project builds with Angular's application builder (17+), which writes `browser/`.
fn application_builder(angular: Option<&Value>, project: &str) -> bool {
    let builder = angular
        .and_then(|a| a.get("projects"))
        .and_then(|p| p.get(project))
        .and_then(|p| p.pointer("/architect/build/builder"))
        .and_then(Value::as_str)
        .unwrap_or("");
    builder.ends_with(":application")
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
    // No lockfile: `engines` naming a package manager, then the scripts' own commands.
    let engines = pkg.get("engines").and_then(Value::as_object);
    for name in ["pnpm", "bun", "yarn"] {
        if engines.is_some_and(|e| e.contains_key(name)) {
            return (name, "package.json");
        }
    }
    let scripts = pkg.get("scripts").and_then(Value::as_object);
    let commands: Vec<&str> = scripts.into_iter().flatten().filter_map(|(_, v)| v.as_str()).collect();
    for name in ["bun", "pnpm"] {
        let runs = |c: &&str| c.split("&&").any(|part| part.split_whitespace().next() == Some(name));
        if commands.iter().any(runs) {
            return (name, "package.json");
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

/// The first dependency package.json names that package-lock.json records otherwise (or not).
fn stale_lock(tree: &Tree, pkg: &Value) -> Result<Option<String>, DetectError> {
    let Ok(Some(lock)) = read_json(tree, "package-lock.json") else { return Ok(None) };
    let Some(root) = lock.pointer("/packages/").filter(|r| r.is_object()) else { return Ok(None) };
    for table in ["dependencies", "devDependencies", "optionalDependencies"] {
        for (name, spec) in pkg.get(table).and_then(Value::as_object).into_iter().flatten() {
            match root.get(table).and_then(|t| t.get(name)) {
                Some(locked) if locked == spec => {}
                Some(locked) => return Ok(Some(format!("{name} is {spec} in package.json, {locked} in the lockfile"))),
                None => return Ok(Some(format!("{name} is not in the lockfile"))),
            }
        }
    }
    Ok(None)
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
