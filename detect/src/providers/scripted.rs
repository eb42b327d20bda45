//! Interpreted runtimes and plain files: Deno, Ruby (Rails, Sinatra, Rack), PHP (Laravel,
//! plain) and static sites.

use super::{plan, read_json};
use crate::{DetectError, Fact, Plan, Provider, Tree};

/// A TypeScript entry written for Deno: it calls `Deno.` or imports from `jsr:`, `npm:` or deno.land.
fn deno_entry(tree: &Tree) -> Result<Option<&'static str>, DetectError> {
    for file in ["main.ts", "mod.ts", "server.ts"] {
        if let Some(text) = tree.read(file)?
            && ["Deno.", "\"jsr:", "'jsr:", "deno.land/"].iter().any(|m| text.contains(m))
        {
            return Ok(Some(file));
        }
    }
    Ok(None)
}

pub(super) fn deno(tree: &Tree, app_root: &str) -> Result<Option<Plan>, DetectError> {
    let file = match tree.first_file(&["deno.json", "deno.jsonc"]) {
        Some(file) => file,
        // Deno needs no config file: an entry written for it is enough.
        None => match deno_entry(tree)? {
            Some(entry) => entry,
            None => return Ok(None),
        },
    };
    let config =
        if file.starts_with("deno.") { read_json(tree, file)?.unwrap_or_default() } else { Default::default() };
    let mut p = plan(Provider::Deno, app_root);
    p.version = Some(Fact::default_value("2".into()));
    p.dependency_files = [file, "deno.lock"].iter().filter(|f| tree.file(f)).map(|f| f.to_string()).collect();
    let task = |name: &str| config.get("tasks").and_then(|t| t.get(name)).is_some();
    let entry = tree.first_file(&["main.ts", "mod.ts", "server.ts", "main.js"]);
    p.start = if task("start") {
        Some(Fact::new("deno task start".into(), &[file]))
    } else {
        entry.map(|e| Fact::new(format!("deno run --allow-net --allow-env --allow-read {e}"), &[e]))
    };
    if let Some(e) = entry {
        p.install = Some(Fact::new(format!("deno cache {e}"), &[e]));
    }
    p.test =
        Some(Fact::new(if task("test") { "deno task test".into() } else { "deno test --allow-all".into() }, &[file]));
    Ok(Some(p))
}

pub(super) fn ruby(tree: &Tree, app_root: &str) -> Result<Option<Plan>, DetectError> {
    let Some(gemfile) = tree.read("Gemfile")? else {
        return Ok(None);
    };
    let mut p = plan(Provider::Ruby, app_root);
    let gem = |name: &str| {
        gemfile
            .lines()
            .any(|l| l.trim().starts_with(&format!("gem '{name}'")) || l.trim().starts_with(&format!("gem \"{name}\"")))
    };
    p.package_manager = Some(Fact::new("bundler".into(), &["Gemfile"]));
    p.version = Some(if let Some(v) = tree.read(".ruby-version")? {
        Fact::new(v.trim().trim_start_matches("ruby-").to_string(), &[".ruby-version"])
    } else if let Some(v) = gemfile.lines().find_map(|l| l.trim().strip_prefix("ruby ")) {
        Fact::new(v.trim_matches(['"', '\'', ' ']).to_string(), &["Gemfile"])
    } else {
        Fact::default_value("3.3".into())
    });
    p.dependency_files = ["Gemfile", "Gemfile.lock"].iter().filter(|f| tree.file(f)).map(|f| f.to_string()).collect();
    p.install =
        Some(Fact::new("bundle config set --local without 'development test' && bundle install".into(), &["Gemfile"]));
    if gem("rails") || tree.file("config/application.rb") {
        p.framework = Some(Fact::new("rails".into(), &["Gemfile"]));
        let application = tree.read("config/application.rb")?.unwrap_or_default();
        let api_only = application.lines().any(|l| {
            let l: String = l.split('#').next().unwrap_or("").chars().filter(|c| !c.is_whitespace()).collect();
            l == "config.api_only=true"
        });
        if api_only {
            p.notes.push("an API-only Rails app (config.api_only = true): no assets to precompile".into());
        } else {
            p.build = Some(Fact::new("bundle exec rails assets:precompile".into(), &["Gemfile"]));
        }
        p.start = Some(Fact::new("bundle exec rails server -b 0.0.0.0 -p $PORT".into(), &["Gemfile"]));
        p.env.insert("RAILS_ENV".into(), "production".into());
        p.test = Some(Fact::new("bundle exec rails test".into(), &["Gemfile"]));
    } else if tree.file("config.ru") {
        p.framework =
            Some(Fact::new(if gem("sinatra") { "sinatra" } else { "rack" }.into(), &["Gemfile", "config.ru"]));
        p.start = Some(Fact::new("bundle exec rackup -o 0.0.0.0 -p $PORT".into(), &["config.ru"]));
    } else if gem("sinatra") {
        p.framework = Some(Fact::new("sinatra".into(), &["Gemfile"]));
        if let Some(entry) = tree.first_file(&["app.rb", "main.rb", "server.rb"]) {
            p.start = Some(Fact::new(format!("bundle exec ruby {entry} -o 0.0.0.0 -p $PORT"), &["Gemfile", entry]));
        }
    }
    if p.test.is_none() && tree.dir("spec") {
        p.test = Some(Fact::new("bundle exec rspec".into(), &["spec/"]));
    }
    Ok(Some(p))
}

pub(super) fn php(tree: &Tree, app_root: &str) -> Result<Option<Plan>, DetectError> {
    let composer = read_json(tree, "composer.json")?;
    if composer.is_none() && !tree.file("index.php") && !tree.file("public/index.php") {
        return Ok(None);
    }
    let mut p = plan(Provider::Php, app_root);
    let requires = |name: &str| {
        composer
            .as_ref()
            .is_some_and(|c| ["require", "require-dev"].iter().any(|k| c.get(k).and_then(|r| r.get(name)).is_some()))
    };
    p.version = Some(
        match composer.as_ref().and_then(|c| c.get("require")).and_then(|r| r.get("php")).and_then(|v| v.as_str()) {
            Some(range) => Fact::new(
                range
                    .chars()
                    .skip_while(|c| !c.is_ascii_digit())
                    .take_while(|c| c.is_ascii_digit() || *c == '.')
                    .collect(),
                &["composer.json"],
            ),
            None => Fact::default_value("8.3".into()),
        },
    );
    if composer.is_some() {
        p.package_manager = Some(Fact::new("composer".into(), &["composer.json"]));
        p.dependency_files =
            ["composer.json", "composer.lock"].iter().filter(|f| tree.file(f)).map(|f| f.to_string()).collect();
        p.install = Some(Fact::new(
            "composer install --no-dev --no-interaction --prefer-dist --no-scripts".into(),
            &["composer.json"],
        ));
    }
    let docroot = if tree.file("public/index.php") { "public" } else { "." };
    let root_file = if docroot == "." { "index.php" } else { "public/index.php" };
    // Apache with mod_php serves the document root: `php -S` and `artisan serve` are
    // development servers, never production's.
    let document_root = if docroot == "." { "/app".to_string() } else { format!("/app/{docroot}") };
    p.env.insert("APACHE_DOCUMENT_ROOT".into(), document_root);
    if tree.file("artisan") || requires("laravel/framework") {
        p.framework = Some(Fact::new("laravel".into(), &["composer.json", "artisan"]));
        p.start = Some(Fact::new("apache2-foreground".into(), &["artisan", root_file]));
    } else if requires("symfony/framework-bundle") {
        p.framework = Some(Fact::new("symfony".into(), &["composer.json"]));
        p.env.insert("APP_ENV".into(), "prod".into());
        p.start = Some(Fact::new("apache2-foreground".into(), &["composer.json", root_file]));
    } else {
        p.start = Some(Fact::new("apache2-foreground".into(), &[root_file]));
    }
    if requires("phpunit/phpunit") {
        p.test = Some(Fact::new("vendor/bin/phpunit".into(), &["composer.json"]));
    }
    Ok(Some(p))
}

pub(super) fn static_site(tree: &Tree, app_root: &str) -> Result<Option<Plan>, DetectError> {
    // A Cloud Foundry `Staticfile` names the site's root (`root: public`); an empty one, `.`.
    if let Some(staticfile) = tree.read("Staticfile")? {
        let root = staticfile
            .lines()
            .find_map(|l| l.trim().strip_prefix("root:").map(|r| r.trim().trim_matches(['"', '\'']).to_string()))
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| ".".into());
        let root = root.trim_start_matches("./").trim_end_matches('/').to_string();
        let root = if root.is_empty() { ".".to_string() } else { root };
        if root.starts_with('/') || root.split('/').any(|part| part == "..") || !(root == "." || tree.dir(&root)) {
            return Err(DetectError::Invalid {
                file: "Staticfile".into(),
                message: format!("root `{root}` is not a directory of the repository"),
            });
        }
        let mut p = plan(Provider::Static, app_root);
        p.static_dir = Some(Fact::new(root, &["Staticfile"]));
        return Ok(Some(p));
    }
    let Some((dir, file)) = [
        (".", "index.html"),
        ("public", "public/index.html"),
        ("dist", "dist/index.html"),
        ("build", "build/index.html"),
    ]
    .into_iter()
    .find(|(_, f)| tree.file(f)) else {
        return Ok(None);
    };
    let mut p = plan(Provider::Static, app_root);
    p.static_dir = Some(Fact::new(dir.to_string(), &[file]));
    Ok(Some(p))
}
