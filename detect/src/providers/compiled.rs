//! Compiled languages: Go, Java (Maven, Gradle, Spring Boot), Rust, .NET and Elixir. Their
//! final image holds the built artifact, not the toolchain.

use super::{directive, plan, read_toml};
use crate::{DetectError, Fact, Plan, Provider, Tree};

/// Whether `dir` (`.` for the root) holds a Go file of `package main`.
fn main_package(tree: &Tree, dir: &str) -> bool {
    tree.list(dir, |n, d| !d && n.ends_with(".go") && !n.ends_with("_test.go")).iter().any(|f| {
        let path = if dir == "." { f.clone() } else { format!("{dir}/{f}") };
        tree.read(&path).ok().flatten().is_some_and(|t| t.lines().any(|l| l.trim() == "package main"))
    })
}

/// The modules a `go.work` uses (`use ./svc`, or a `use ( ... )` block).
fn work_modules(gowork: &str) -> Vec<String> {
    let mut modules = Vec::new();
    let mut block = false;
    for line in gowork.lines().map(|l| l.split("//").next().unwrap_or("").trim()) {
        let entry = match (block, line) {
            (true, ")") => {
                block = false;
                continue;
            }
            (true, entry) => entry,
            (false, "use (") => {
                block = true;
                continue;
            }
            (false, l) => match l.strip_prefix("use ") {
                Some(entry) => entry.trim(),
                None => continue,
            },
        };
        let entry = entry.trim_matches('"').trim_start_matches("./").trim_end_matches('/');
        if !entry.is_empty() {
            modules.push(if entry == "." { ".".into() } else { entry.to_string() });
        }
    }
    modules
}

pub(super) fn go(tree: &Tree, app_root: &str) -> Result<Option<Plan>, DetectError> {
    if !tree.file("go.mod")
        && let Some(gowork) = tree.read("go.work")?
    {
        return go_workspace(tree, app_root, &gowork).map(Some);
    }
    let Some(gomod) = tree.read("go.mod")? else {
        // A main package without go.mod: built as module `app`.
        if !main_package(tree, ".") {
            return Ok(None);
        }
        let mut p = plan(Provider::Go, app_root);
        p.version = Some(Fact::default_value("1.23".into()));
        p.notes.push(
            "no go.mod: built as module `app` (go mod init); commit a go.mod and go.sum to pin dependencies".into(),
        );
        let build = "test -f go.mod || (go mod init app && go mod tidy); go build -trimpath -o /out/app .";
        p.build = Some(Fact::new(build.into(), &["package main"]));
        p.artifact = Some(Fact::new("/out/app".into(), &["package main"]));
        p.start = Some(Fact::new("/app/app".into(), &["package main"]));
        p.test = Some(Fact::new("go test -trimpath ./...".into(), &["package main"]));
        return Ok(Some(p));
    };
    let Some(module) = directive(&gomod, "module") else {
        return Err(DetectError::Invalid { file: "go.mod".into(), message: "has no `module` line".into() });
    };
    let mut p = plan(Provider::Go, app_root);
    p.version = Some(match directive(&gomod, "go") {
        Some(v) => Fact::new(v.split('.').take(2).collect::<Vec<_>>().join("."), &["go.mod"]),
        None => Fact::default_value("1.23".into()),
    });
    p.dependency_files = ["go.mod", "go.sum"].iter().filter(|f| tree.file(f)).map(|f| f.to_string()).collect();
    p.install = Some(Fact::new("go mod download".into(), &["go.mod"]));
    let main_at_root = tree
        .list(".", |n, d| !d && n.ends_with(".go"))
        .iter()
        .any(|f| tree.read(f).ok().flatten().is_some_and(|t| t.contains("package main")));
    let package = if main_at_root {
        Fact::new(".".to_string(), &["go.mod", "package main"])
    } else {
        let cmds = tree.list("cmd", |_, is_dir| is_dir);
        let name = module.rsplit('/').next().unwrap_or(module);
        match cmds.as_slice() {
            [] => {
                return Err(DetectError::Invalid {
                    file: "go.mod".into(),
                    message: "no main package at the root or under cmd/".into(),
                });
            }
            [one] => Fact::new(format!("./cmd/{one}"), &["go.mod", "cmd/"]),
            several if several.iter().any(|c| c == name) => Fact::new(format!("./cmd/{name}"), &["go.mod", "cmd/"]),
            several => {
                let apps: Vec<String> = several.iter().map(|c| format!("cmd/{c}")).collect();
                return Err(DetectError::SeveralApps {
                    root: app_root.into(),
                    apps: format!("{} (set `build` in slipway.toml)", apps.join(", ")),
                });
            }
        }
    };
    p.build = Some(Fact::new(
        format!("go build -trimpath -o /out/app {}", package.value),
        &package.from.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    p.artifact = Some(Fact::new("/out/app".into(), &["go.mod"]));
    p.start = Some(Fact::new("/app/app".into(), &["go.mod"]));
    p.test = Some(Fact::new("go test -trimpath ./...".into(), &["go.mod"]));
    Ok(Some(p))
}

/// A `go.work` workspace without a module at its root: the one module with a main package (at
/// its root or its one `cmd/*`) is the app; several are reported.
fn go_workspace(tree: &Tree, app_root: &str, gowork: &str) -> Result<Plan, DetectError> {
    let modules = work_modules(gowork);
    if modules.is_empty() {
        return Err(DetectError::Invalid { file: "go.work".into(), message: "uses no module".into() });
    }
    let mut mains = Vec::new();
    for module in &modules {
        if main_package(tree, module) {
            mains.push(module.clone());
        } else if let [one] = tree.list(&format!("{module}/cmd"), |_, d| d).as_slice() {
            mains.push(format!("{module}/cmd/{one}"));
        }
    }
    let package = match mains.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(DetectError::Invalid {
                file: "go.work".into(),
                message: format!("none of its modules ({}) has a main package", modules.join(", ")),
            });
        }
        several => {
            return Err(DetectError::SeveralApps {
                root: app_root.into(),
                apps: format!("{} (set `build` in slipway.toml)", several.join(", ")),
            });
        }
    };
    let mut p = plan(Provider::Go, app_root);
    p.version = Some(match directive(gowork, "go") {
        Some(v) => Fact::new(v.split('.').take(2).collect::<Vec<_>>().join("."), &["go.work"]),
        None => Fact::default_value("1.23".into()),
    });
    let mut deps = vec!["go.work".to_string(), "go.work.sum".to_string()];
    for module in &modules {
        let dir = if module == "." { String::new() } else { format!("{module}/") };
        deps.push(format!("{dir}go.mod"));
        deps.push(format!("{dir}go.sum"));
    }
    p.dependency_files = deps.into_iter().filter(|f| tree.file(f)).collect();
    p.install = Some(Fact::new("go mod download".into(), &["go.work"]));
    p.build = Some(Fact::new(format!("go build -trimpath -o /out/app ./{package}"), &["go.work", "package main"]));
    p.artifact = Some(Fact::new("/out/app".into(), &["go.work"]));
    p.start = Some(Fact::new("/app/app".into(), &["go.work"]));
    let tests: Vec<String> =
        modules.iter().map(|m| if m == "." { "./...".into() } else { format!("./{m}/...") }).collect();
    p.test = Some(Fact::new(format!("go test -trimpath {}", tests.join(" ")), &["go.work"]));
    Ok(p)
}

pub(super) fn java(tree: &Tree, app_root: &str) -> Result<Option<Plan>, DetectError> {
    let mut p = plan(Provider::Java, app_root);
    let (build_file, text) = if let Some(text) = tree.read("pom.xml")? {
        ("pom.xml", text)
    } else if let Some(file) = tree.first_file(&["build.gradle.kts", "build.gradle"]) {
        (file, tree.read(file)?.unwrap_or_default())
    } else {
        return Ok(None);
    };
    let maven = build_file == "pom.xml";
    let wrapper =
        if maven { tree.file("mvnw").then_some("./mvnw") } else { tree.file("gradlew").then_some("./gradlew") };
    let tool = wrapper.unwrap_or(if maven { "mvn" } else { "gradle" });
    let tool_from = wrapper.map(|w| w.trim_start_matches("./")).unwrap_or(build_file);
    p.package_manager = Some(Fact::new((if maven { "maven" } else { "gradle" }).to_string(), &[build_file, tool_from]));
    let spring = text.contains("spring-boot");
    let quarkus = text.contains("io.quarkus");
    if spring {
        p.framework = Some(Fact::new("spring-boot".into(), &[build_file]));
    } else if quarkus {
        p.framework = Some(Fact::new("quarkus".into(), &[build_file]));
    }
    p.version = Some(
        java_version(&text).map(|v| Fact::new(v, &[build_file])).unwrap_or_else(|| Fact::default_value("21".into())),
    );
    p.dependency_files = if maven {
        ["pom.xml", "mvnw", ".mvn"].iter().filter(|f| tree.file(f) || tree.dir(f)).map(|f| f.to_string()).collect()
    } else {
        [build_file, "settings.gradle", "settings.gradle.kts", "gradlew", "gradle"]
            .iter()
            .filter(|f| tree.file(f) || tree.dir(f))
            .map(|f| f.to_string())
            .collect()
    };
    // Quarkus's default jar needs its lib/ beside it: an uber-jar is one file to run.
    let uber = " -Dquarkus.package.jar.type=uber-jar";
    let (install, build, jar_glob, test) = if maven {
        (
            format!("{tool} -q -B dependency:go-offline"),
            format!("{tool} -q -B -DskipTests package{}", if quarkus { uber } else { "" }),
            if quarkus { "target/*-runner.jar" } else { "target/*.jar" },
            format!("{tool} -q -B test"),
        )
    } else {
        let task = if spring {
            "bootJar".to_string()
        } else if quarkus {
            format!("quarkusBuild{uber}")
        } else {
            "build -x test".to_string()
        };
        (
            format!("{tool} --no-daemon dependencies"),
            format!("{tool} --no-daemon {task}"),
            if quarkus { "build/*-runner.jar" } else { "build/libs/*.jar" },
            format!("{tool} --no-daemon test"),
        )
    };
    p.install = Some(Fact::new(install, &[build_file]));
    p.build = Some(Fact::new(build, &[build_file]));
    p.artifact = Some(Fact::new(jar_glob.to_string(), &[build_file]));
    // The framework's own port setting, from the plan's $PORT.
    let start = if spring {
        "java -Dserver.port=$PORT -jar /app/app.jar"
    } else if quarkus {
        "java -Dquarkus.http.host=0.0.0.0 -Dquarkus.http.port=$PORT -jar /app/app.jar"
    } else {
        "java -jar /app/app.jar"
    };
    p.start = Some(Fact::new(start.into(), &[build_file]));
    p.test = Some(Fact::new(test, &[build_file]));
    if !maven && !spring && !quarkus {
        gradle_subproject(tree, app_root, &mut p, tool)?;
    }
    Ok(Some(p))
}

/// The projects a Gradle settings file includes (`include("api", ":core")`, `include 'a', 'b'`),
/// as directories.
fn gradle_includes(settings: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in settings.lines().map(str::trim).filter(|l| l.starts_with("include")) {
        let mut rest = line;
        while let Some(start) = rest.find(['"', '\'']) {
            let quote = rest.as_bytes()[start] as char;
            let after = &rest[start + 1..];
            let Some(end) = after.find(quote) else { break };
            let name = after[..end].trim_start_matches(':').replace(':', "/");
            if !name.is_empty() && !name.split('/').any(|p| p == ".." || p.is_empty()) {
                out.push(name);
            }
            rest = &after[end + 1..];
        }
    }
    out
}

/// A multi-project Gradle build whose root is no application: the one included project that is
/// a Spring Boot application is built and run; several are reported.
fn gradle_subproject(tree: &Tree, app_root: &str, p: &mut Plan, tool: &str) -> Result<(), DetectError> {
    let Some((settings_file, settings)) = ["settings.gradle.kts", "settings.gradle"]
        .into_iter()
        .find_map(|f| tree.read(f).ok().flatten().map(|t| (f, t)))
    else {
        return Ok(());
    };
    let mut apps = Vec::new();
    for project in gradle_includes(&settings) {
        for file in ["build.gradle.kts", "build.gradle"] {
            let path = format!("{project}/{file}");
            if let Some(text) = tree.read(&path)? {
                p.dependency_files.push(path.clone());
                if text.contains("org.springframework.boot") {
                    apps.push((project.clone(), path));
                }
                break;
            }
        }
    }
    match apps.as_slice() {
        [] => {}
        [(project, file)] => {
            let task = format!(":{}", project.replace('/', ":"));
            p.framework = Some(Fact::new("spring-boot".into(), &[file.as_str()]));
            let from = [settings_file, file.as_str()];
            p.install = Some(Fact::new(format!("{tool} --no-daemon {task}:dependencies"), &from));
            p.build = Some(Fact::new(format!("{tool} --no-daemon {task}:bootJar"), &from));
            p.artifact = Some(Fact::new(format!("{project}/build/libs/*.jar"), &from));
            p.start = Some(Fact::new("java -Dserver.port=$PORT -jar /app/app.jar".into(), &from));
        }
        several => {
            let names: Vec<&str> = several.iter().map(|(p, _)| p.as_str()).collect();
            return Err(DetectError::SeveralApps {
                root: app_root.into(),
                apps: format!("Gradle projects {} (set `build` and `start` in slipway.toml)", names.join(", ")),
            });
        }
    }
    Ok(())
}

fn java_version(text: &str) -> Option<String> {
    for key in ["<java.version>", "<maven.compiler.release>", "<maven.compiler.source>", "<maven.compiler.target>"] {
        if let Some(rest) = text.split(key).nth(1) {
            let v: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            if !v.is_empty() {
                return Some(v.trim_start_matches("1.").to_string());
            }
        }
    }
    for key in
        ["JavaLanguageVersion.of(", "sourceCompatibility = '", "sourceCompatibility = \"", "JavaVersion.VERSION_"]
    {
        if let Some(rest) = text.split(key).nth(1) {
            let v: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '_').collect();
            if !v.is_empty() {
                return Some(v.replace("1_", "").replace('_', "."));
            }
        }
    }
    None
}

pub(super) fn rust(tree: &Tree, app_root: &str) -> Result<Option<Plan>, DetectError> {
    let Some(manifest) = read_toml(tree, "Cargo.toml")? else {
        return Ok(None);
    };
    let mut p = plan(Provider::Rust, app_root);
    let mut bins: Vec<String> = Vec::new();
    let mut from = vec!["Cargo.toml".to_string()];
    collect_bins(&manifest, tree, ".", &mut bins);
    // Every package of the workspace, for the dependency layer: (dir, manifest).
    let mut packages: Vec<(String, toml::Table)> = Vec::new();
    if manifest.get("package").is_some() {
        packages.push((".".into(), manifest.clone()));
    }
    if let Some(members) = manifest.get("workspace").and_then(|w| w.get("members")).and_then(|m| m.as_array()) {
        for member in members.iter().filter_map(|m| m.as_str()) {
            let dirs: Vec<String> = match member.strip_suffix("/*") {
                Some(parent) => tree.list(parent, |_, d| d).into_iter().map(|c| format!("{parent}/{c}")).collect(),
                None => vec![member.to_string()],
            };
            for dir in dirs {
                let file = format!("{dir}/Cargo.toml");
                if let Some(m) = read_toml(tree, &file)? {
                    let before = bins.len();
                    collect_bins(&m, tree, &dir, &mut bins);
                    if bins.len() > before {
                        from.push(file);
                    }
                    packages.push((dir, m));
                }
            }
        }
    }
    bins.sort();
    bins.dedup();
    let bin = match bins.as_slice() {
        [] => {
            return Err(DetectError::Invalid {
                file: "Cargo.toml".into(),
                message: "no binary to run (no src/main.rs or [[bin]])".into(),
            });
        }
        [one] => one.clone(),
        several => {
            return Err(DetectError::SeveralApps {
                root: app_root.into(),
                apps: format!("binaries {} (set `build` and `start` in slipway.toml)", several.join(", ")),
            });
        }
    };
    let from_refs: Vec<&str> = from.iter().map(String::as_str).collect();
    p.version = Some(match tree.read("rust-toolchain.toml")?.or(tree.read("rust-toolchain")?) {
        Some(text) => {
            let channel = text.lines().find_map(|l| {
                l.trim().strip_prefix("channel").map(|r| r.trim_start_matches([' ', '=']).trim_matches('"').to_string())
            });
            Fact::new(channel.unwrap_or_else(|| text.trim().to_string()), &["rust-toolchain.toml"])
        }
        None => Fact::default_value("stable".into()),
    });
    p.package_manager = Some(Fact::new("cargo".into(), &["Cargo.toml"]));
    let locked = if tree.file("Cargo.lock") { " --locked" } else { "" };
    // The dependency layer: the manifests (and build scripts) with every target's source file
    // replaced by an empty stub, built once, so a source change rebuilds only the app's crates.
    // The tests' build (with the dev-dependencies) is part of it, in the release profile the test
    // step uses too, so that step compiles only the app's crates as well.
    let (manifests, stubs) = dependency_layer(tree, &packages);
    p.dependency_files = ["Cargo.toml".to_string(), "Cargo.lock".to_string()]
        .into_iter()
        .chain(manifests)
        .filter(|f| tree.file(f))
        .fold(Vec::new(), |mut all, f| {
            if !all.contains(&f) {
                all.push(f);
            }
            all
        });
    if !stubs.is_empty() {
        let quoted: Vec<String> = stubs.iter().map(|f| format!("'{f}'")).collect();
        let list = quoted.join(" ");
        p.install = Some(Fact::new(
            format!(
                "for f in {list}; do mkdir -p \"$(dirname \"$f\")\" && echo 'fn main() {{}}' > \"$f\"; done \
                 && cargo build --release{locked} && cargo build --release{locked} --tests && rm -f {list}"
            ),
            &["Cargo.toml"],
        ));
        // The real sources are older than the stubs' build: touched, cargo rebuilds the app's
        // crates from them (and only them).
        p.build = Some(Fact::new(format!("touch {list} && cargo build --release{locked} --bin {bin}"), &from_refs));
    } else {
        p.build = Some(Fact::new(format!("cargo build --release{locked} --bin {bin}"), &from_refs));
    }
    p.artifact = Some(Fact::new(format!("target/release/{bin}"), &from_refs));
    p.start = Some(Fact::new(format!("/app/{bin}"), &from_refs));
    p.test = Some(Fact::new(format!("cargo test --release{locked}"), &["Cargo.toml"]));
    Ok(Some(p))
}

/// The files of a Rust dependency layer: each package's manifest and build script, and the
/// target source files to stub (`src/main.rs`, `src/lib.rs`, `src/bin/*.rs`, explicit target
/// paths). Only files that exist are stubbed, so the build sees the same targets.
fn dependency_layer(tree: &Tree, packages: &[(String, toml::Table)]) -> (Vec<String>, Vec<String>) {
    let mut manifests = Vec::new();
    let mut stubs = Vec::new();
    let at = |dir: &str, rel: &str| if dir == "." { rel.to_string() } else { format!("{dir}/{rel}") };
    for (dir, manifest) in packages {
        manifests.push(at(dir, "Cargo.toml"));
        let build_script =
            manifest.get("package").and_then(|p| p.get("build")).and_then(|b| b.as_str()).unwrap_or("build.rs");
        manifests.push(at(dir, build_script));
        let mut sources = vec![at(dir, "src/main.rs"), at(dir, "src/lib.rs")];
        sources.extend(
            tree.list(&at(dir, "src/bin"), |n, d| !d && n.ends_with(".rs"))
                .iter()
                .map(|f| at(dir, &format!("src/bin/{f}"))),
        );
        for kind in ["bin", "lib"] {
            let targets = match manifest.get(kind) {
                Some(toml::Value::Array(a)) => a.clone(),
                Some(t @ toml::Value::Table(_)) => vec![t.clone()],
                _ => Vec::new(),
            };
            sources.extend(
                targets.iter().filter_map(|t| t.get("path").and_then(|p| p.as_str())).map(|path| at(dir, path)),
            );
        }
        for source in sources {
            let safe = !source.contains(['\'', '\\', '\n']) && !source.split('/').any(|p| p == "..");
            if safe && tree.file(&source) && !stubs.contains(&source) {
                stubs.push(source);
            }
        }
    }
    (manifests, stubs)
}

fn collect_bins(manifest: &toml::Table, tree: &Tree, dir: &str, bins: &mut Vec<String>) {
    let explicit: Vec<String> = manifest
        .get("bin")
        .and_then(|b| b.as_array())
        .map(|a| a.iter().filter_map(|b| b.get("name").and_then(|n| n.as_str()).map(str::to_string)).collect())
        .unwrap_or_default();
    bins.extend(explicit);
    let package = manifest.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str());
    if let Some(name) = package
        && tree.file(&format!("{dir}/src/main.rs"))
    {
        bins.push(name.to_string());
    }
}

pub(super) fn dotnet(tree: &Tree, app_root: &str) -> Result<Option<Plan>, DetectError> {
    // C#, F# and Visual Basic projects build and publish the same way.
    let projects = tree.list(".", |n, d| !d && [".csproj", ".fsproj", ".vbproj"].iter().any(|e| n.ends_with(e)));
    let project = match projects.as_slice() {
        [] => return Ok(None),
        [one] => one.clone(),
        several => {
            return Err(DetectError::SeveralApps { root: app_root.into(), apps: several.join(", ") });
        }
    };
    let text = tree.read(&project)?.unwrap_or_default();
    let mut p = plan(Provider::Dotnet, app_root);
    let assembly = between(&text, "<AssemblyName>", "</AssemblyName>")
        .unwrap_or_else(|| project.rsplit_once('.').map(|(stem, _)| stem).unwrap_or(&project).to_string());
    p.version = Some(match between(&text, "<TargetFramework>", "</TargetFramework>") {
        Some(tf) => Fact::new(tf.trim_start_matches("net").to_string(), &[&project]),
        None => Fact::default_value("8.0".into()),
    });
    p.package_manager = Some(Fact::new("nuget".into(), &[&project]));
    if text.contains("Microsoft.NET.Sdk.Web") {
        p.framework = Some(Fact::new("aspnetcore".into(), &[&project]));
    }
    p.dependency_files = vec![project.clone()];
    p.install = Some(Fact::new(format!("dotnet restore {project}"), &[&project]));
    p.build = Some(Fact::new(format!("dotnet publish {project} -c Release -o /out --no-restore"), &[&project]));
    p.artifact = Some(Fact::new("/out".into(), &[&project]));
    p.start = Some(Fact::new(format!("dotnet /app/{assembly}.dll"), &[&project]));
    let tests = tree.list(".", |n, d| d && n.ends_with("Tests"));
    if !tests.is_empty() {
        p.test = Some(Fact::new("dotnet test".into(), &[tests[0].as_str()]));
    }
    Ok(Some(p))
}

fn between(text: &str, open: &str, close: &str) -> Option<String> {
    let rest = text.split(open).nth(1)?;
    Some(rest.split(close).next()?.trim().to_string()).filter(|s| !s.is_empty())
}

pub(super) fn elixir(tree: &Tree, app_root: &str) -> Result<Option<Plan>, DetectError> {
    let Some(mix) = tree.read("mix.exs")? else {
        return Ok(None);
    };
    let Some(app) = mix
        .split("app: :")
        .nth(1)
        .map(|r| r.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>())
        .filter(|a| !a.is_empty())
    else {
        return Err(DetectError::Invalid { file: "mix.exs".into(), message: "no `app: :name` in the project".into() });
    };
    let mut p = plan(Provider::Elixir, app_root);
    p.package_manager = Some(Fact::new("mix".into(), &["mix.exs"]));
    if mix.contains(":phoenix") {
        p.framework = Some(Fact::new("phoenix".into(), &["mix.exs"]));
        p.port = Fact::new(4000, &["mix.exs"]);
        p.env.insert("PHX_SERVER".into(), "true".into());
    }
    p.version = Some(match mix.split("elixir: \"").nth(1) {
        Some(rest) => Fact::new(
            rest.chars().skip_while(|c| !c.is_ascii_digit()).take_while(|c| c.is_ascii_digit() || *c == '.').collect(),
            &["mix.exs"],
        ),
        None => Fact::default_value("1.17".into()),
    });
    p.dependency_files = ["mix.exs", "mix.lock", "config"]
        .iter()
        .filter(|f| tree.file(f) || tree.dir(f))
        .map(|f| f.to_string())
        .collect();
    // Every environment's dependencies are fetched (the test step runs without a network and
    // needs the test ones); only the production ones are compiled into the layer.
    p.install = Some(Fact::new("mix deps.get && mix deps.compile".into(), &["mix.exs"]));
    // Phoenix's generator defines `assets.deploy` (esbuild, tailwind, phx.digest): a release
    // without it serves no CSS or JavaScript.
    p.build = Some(if mix.contains("\"assets.deploy\"") {
        Fact::new("mix assets.deploy && mix release --path /out".into(), &["mix.exs"])
    } else {
        Fact::new("mix release --path /out".into(), &["mix.exs"])
    });
    p.artifact = Some(Fact::new("/out".into(), &["mix.exs"]));
    p.start = Some(Fact::new(format!("/app/bin/{app} start"), &["mix.exs"]));
    p.env.insert("MIX_ENV".into(), "prod".into());
    // `mix test` refuses to run in the prod environment the image sets.
    p.test = Some(Fact::new("MIX_ENV=test mix test".into(), &["mix.exs"]));
    Ok(Some(p))
}
