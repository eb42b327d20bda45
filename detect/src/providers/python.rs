//! Python: pip, poetry, uv, pdm, pipenv or setuptools; version from `.python-version`,
//! `runtime.txt` or `requires-python`; Django, Flask and FastAPI start commands.

use super::plan;
use crate::{DetectError, Fact, Plan, Provider, Tree};

pub(super) fn detect(tree: &Tree, app_root: &str) -> Result<Option<Plan>, DetectError> {
    let pyproject = super::read_toml(tree, "pyproject.toml")?;
    let requirements = tree.read("requirements.txt")?;
    let pipfile = super::read_toml(tree, "Pipfile")?;
    if pyproject.is_none() && requirements.is_none() && pipfile.is_none() && !tree.file("setup.py") {
        return Ok(None);
    }
    let mut p = plan(Provider::Python, app_root);
    let tool = |name: &str| pyproject.as_ref().and_then(|t| t.get("tool")).and_then(|t| t.get(name)).is_some();
    let (pm, from, install, deps): (&str, &str, &str, &[&str]) = if tree.file("poetry.lock") || tool("poetry") {
        (
            "poetry",
            if tree.file("poetry.lock") { "poetry.lock" } else { "pyproject.toml" },
            "poetry install --no-root --only main",
            &["pyproject.toml", "poetry.lock"],
        )
    } else if tree.file("uv.lock") || tool("uv") {
        (
            "uv",
            if tree.file("uv.lock") { "uv.lock" } else { "pyproject.toml" },
            "uv sync --frozen --no-dev --no-install-project",
            &["pyproject.toml", "uv.lock"],
        )
    } else if tree.file("pdm.lock") || tool("pdm") {
        (
            "pdm",
            if tree.file("pdm.lock") { "pdm.lock" } else { "pyproject.toml" },
            "pdm install --prod --no-self",
            &["pyproject.toml", "pdm.lock"],
        )
    } else if pipfile.is_some() {
        ("pipenv", "Pipfile", "pipenv install --deploy --system", &["Pipfile", "Pipfile.lock"])
    } else if requirements.is_some() {
        ("pip", "requirements.txt", "pip install --no-cache-dir -r requirements.txt", &["requirements.txt"])
    } else {
        (
            "setuptools",
            if pyproject.is_some() { "pyproject.toml" } else { "setup.py" },
            "pip install --no-cache-dir .",
            &[],
        )
    };
    p.package_manager = Some(Fact::new(pm.to_string(), &[from]));
    p.install = Some(Fact::new(install.to_string(), &[from]));
    p.dependency_files = deps.iter().filter(|f| tree.file(f)).map(|f| f.to_string()).collect();
    p.version = Some(version(tree, pyproject.as_ref(), pipfile.as_ref())?);

    let manifest = [
        requirements.clone().unwrap_or_default(),
        pyproject.as_ref().map(|t| t.to_string()).unwrap_or_default(),
        pipfile.as_ref().map(|t| t.to_string()).unwrap_or_default(),
    ]
    .join("\n")
    .to_ascii_lowercase();
    let depends = |name: &str| manifest.lines().any(|l| l.trim_start_matches(['"', '\'', ' ']).starts_with(name));
    let dep_file = if requirements.is_some() {
        "requirements.txt"
    } else if pipfile.is_some() {
        "Pipfile"
    } else {
        "pyproject.toml"
    };

    if tree.file("manage.py") && (depends("django") || manifest.contains("django")) {
        p.framework = Some(Fact::new("django".into(), &["manage.py", dep_file]));
        let project = tree
            .list(".", |name, is_dir| is_dir && !name.starts_with('.'))
            .into_iter()
            .find(|d| tree.file(&format!("{d}/wsgi.py")));
        if let Some(project) = project {
            p.start =
                Some(Fact::new(format!("gunicorn {project}.wsgi --bind 0.0.0.0:$PORT"), &["manage.py", "wsgi.py"]));
        }
        p.test = Some(Fact::new("python manage.py test".into(), &["manage.py"]));
    } else if depends("fastapi") {
        p.framework = Some(Fact::new("fastapi".into(), &[dep_file]));
        if let Some((module, file)) =
            find_module(tree, &["main.py", "app.py", "app/main.py", "src/main.py"], "FastAPI(")?
        {
            p.start = Some(Fact::new(format!("uvicorn {module}:app --host 0.0.0.0 --port $PORT"), &[dep_file, file]));
        }
    } else if depends("flask") {
        p.framework = Some(Fact::new("flask".into(), &[dep_file]));
        if let Some((module, file)) = find_module(tree, &["app.py", "main.py", "wsgi.py", "app/__init__.py"], "Flask(")?
        {
            p.start = Some(Fact::new(format!("gunicorn {module}:app --bind 0.0.0.0:$PORT"), &[dep_file, file]));
        }
    } else if let Some(entry) = tree.first_file(&["main.py", "app.py", "server.py"]) {
        p.start = Some(Fact::new(format!("python {entry}"), &[entry]));
    }
    if p.test.is_none() && (depends("pytest") || tree.dir("tests") || tree.file("pytest.ini")) {
        let from = if depends("pytest") {
            dep_file
        } else if tree.file("pytest.ini") {
            "pytest.ini"
        } else {
            "tests/"
        };
        p.test = Some(Fact::new("python -m pytest".into(), &[from]));
    }
    Ok(Some(p))
}

/// The first of `files` containing `marker`, as a module path (`app/main.py` → `app.main`).
fn find_module<'a>(tree: &Tree, files: &[&'a str], marker: &str) -> Result<Option<(String, &'a str)>, DetectError> {
    for file in files {
        if tree.read(file)?.is_some_and(|t| t.contains(marker)) {
            let module = file.trim_end_matches(".py").trim_end_matches("/__init__").replace('/', ".");
            return Ok(Some((module, file)));
        }
    }
    Ok(None)
}

fn version(
    tree: &Tree,
    pyproject: Option<&toml::Table>,
    pipfile: Option<&toml::Table>,
) -> Result<Fact<String>, DetectError> {
    if let Some(text) = tree.read(".python-version")? {
        let v = text.lines().next().unwrap_or_default().trim();
        if !v.is_empty() {
            return Ok(Fact::new(minor(v), &[".python-version"]));
        }
    }
    if let Some(text) = tree.read("runtime.txt")?
        && let Some(v) = text.trim().strip_prefix("python-")
    {
        return Ok(Fact::new(minor(v), &["runtime.txt"]));
    }
    let requires =
        pyproject.and_then(|t| t.get("project")).and_then(|p| p.get("requires-python")).and_then(|v| v.as_str());
    if let Some(range) = requires {
        let v: String =
            range.chars().skip_while(|c| !c.is_ascii_digit()).take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        if !v.is_empty() {
            return Ok(Fact::new(minor(&v), &["pyproject.toml"]));
        }
    }
    let pinned = pipfile.and_then(|t| t.get("requires")).and_then(|r| r.get("python_version"));
    if let Some(v) = pinned.and_then(|v| v.as_str()) {
        return Ok(Fact::new(minor(v), &["Pipfile"]));
    }
    Ok(Fact::default_value("3.12".into()))
}

fn minor(v: &str) -> String {
    v.split('.').take(2).collect::<Vec<_>>().join(".")
}
