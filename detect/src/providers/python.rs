//! Python: pip, poetry, uv, pdm, pipenv or setuptools; version from `.python-version`,
//! `runtime.txt` or `requires-python`; Django, Flask, FastAPI and Streamlit start commands.
//! Dependencies are read by name from each manifest's own structure, never by text prefix.

use super::plan;
use crate::{DetectError, Fact, Plan, Provider, Tree};

pub(super) fn detect(tree: &Tree, app_root: &str) -> Result<Option<Plan>, DetectError> {
    let pyproject = super::read_toml(tree, "pyproject.toml")?;
    let requirements = tree.read("requirements.txt")?;
    let pipfile = super::read_toml(tree, "Pipfile")?;
    // A script with a Python version file and no dependency list is a Python app too.
    let pinned = tree.file(".python-version") || tree.file("runtime.txt");
    let bare_entry = pinned && tree.first_file(&["main.py", "app.py", "server.py"]).is_some();
    if pyproject.is_none() && requirements.is_none() && pipfile.is_none() && !tree.file("setup.py") && !bare_entry {
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
    } else if pyproject.is_some() || tree.file("setup.py") {
        (
            "setuptools",
            if pyproject.is_some() { "pyproject.toml" } else { "setup.py" },
            "pip install --no-cache-dir .",
            &[],
        )
    } else {
        // Nothing to install: the standard library only.
        let from = if tree.file(".python-version") { ".python-version" } else { "runtime.txt" };
        ("pip", from, "echo 'no dependencies: the standard library only'", &[])
    };
    p.package_manager = Some(Fact::new(pm.to_string(), &[from]));
    p.install = Some(Fact::new(install.to_string(), &[from]));
    p.dependency_files = deps.iter().filter(|f| tree.file(f)).map(|f| f.to_string()).collect();
    p.version = Some(version(tree, pyproject.as_ref(), pipfile.as_ref())?);

    let names = dependency_names(requirements.as_deref(), pyproject.as_ref(), pipfile.as_ref());
    let depends = |name: &str| names.contains(name);
    let dep_file = if requirements.is_some() {
        "requirements.txt"
    } else if pipfile.is_some() {
        "Pipfile"
    } else {
        "pyproject.toml"
    };

    if tree.file("manage.py") && depends("django") {
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
    } else if depends("streamlit") {
        p.framework = Some(Fact::new("streamlit".into(), &[dep_file]));
        if let Some(file) = find_file(tree, &["streamlit_app.py", "app.py", "main.py", "Home.py"], "streamlit")? {
            let start =
                format!("streamlit run {file} --server.port $PORT --server.address 0.0.0.0 --server.headless true");
            p.start = Some(Fact::new(start, &[dep_file, file]));
        }
    }
    // A framework without the object it serves found, or no framework: the script itself.
    if p.start.is_none()
        && let Some(entry) = tree.first_file(&["main.py", "app.py", "server.py"])
    {
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

/// The first of `files` that contains `marker`.
fn find_file<'a>(tree: &Tree, files: &[&'a str], marker: &str) -> Result<Option<&'a str>, DetectError> {
    for file in files {
        if tree.read(file)?.is_some_and(|t| t.contains(marker)) {
            return Ok(Some(file));
        }
    }
    Ok(None)
}

/// A distribution name as PEP 503 compares them: lowercase, runs of `-`, `_` and `.` as one `-`.
fn normalized(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.trim().chars() {
        match c {
            '-' | '_' | '.' if !out.ends_with('-') => out.push('-'),
            '-' | '_' | '.' => {}
            c => out.push(c.to_ascii_lowercase()),
        }
    }
    out
}

/// The name a requirement (`fastapi[standard]>=0.110 ; python_version > "3.8"`) is for; none for
/// an option (`-r other.txt`), a URL or a comment.
fn requirement_name(line: &str) -> Option<String> {
    let line = line.split('#').next().unwrap_or("").trim();
    if line.is_empty() || line.starts_with('-') || line.contains("://") {
        return None;
    }
    let end = line.find(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c))).unwrap_or(line.len());
    let name = normalized(&line[..end]);
    (!name.is_empty()).then_some(name)
}

/// Every dependency the app declares, by normalized name: requirements.txt lines, PEP 621
/// `[project] dependencies` and optional ones, PEP 735 dependency groups, Poetry's tables and
/// the Pipfile's packages. Names are compared whole, so `fastapi-ipware` is not `fastapi`.
fn dependency_names(
    requirements: Option<&str>,
    pyproject: Option<&toml::Table>,
    pipfile: Option<&toml::Table>,
) -> std::collections::BTreeSet<String> {
    let mut names: std::collections::BTreeSet<String> =
        requirements.unwrap_or_default().lines().filter_map(requirement_name).collect();
    let strings = |v: Option<&toml::Value>| -> Vec<String> {
        v.and_then(toml::Value::as_array)
            .map(|a| a.iter().filter_map(toml::Value::as_str).map(str::to_string).collect())
            .unwrap_or_default()
    };
    let keys = |v: Option<&toml::Value>| -> Vec<String> {
        v.and_then(toml::Value::as_table).map(|t| t.keys().cloned().collect()).unwrap_or_default()
    };
    if let Some(py) = pyproject {
        let project = py.get("project");
        names.extend(strings(project.and_then(|p| p.get("dependencies"))).iter().filter_map(|r| requirement_name(r)));
        for (_, group) in
            project.and_then(|p| p.get("optional-dependencies")).and_then(|o| o.as_table()).into_iter().flatten()
        {
            names.extend(strings(Some(group)).iter().filter_map(|r| requirement_name(r)));
        }
        for (_, group) in py.get("dependency-groups").and_then(|g| g.as_table()).into_iter().flatten() {
            names.extend(strings(Some(group)).iter().filter_map(|r| requirement_name(r)));
        }
        let poetry = py.get("tool").and_then(|t| t.get("poetry"));
        names.extend(keys(poetry.and_then(|p| p.get("dependencies"))).iter().map(|k| normalized(k)));
        for (_, group) in poetry.and_then(|p| p.get("group")).and_then(|g| g.as_table()).into_iter().flatten() {
            names.extend(keys(group.get("dependencies")).iter().map(|k| normalized(k)));
        }
    }
    if let Some(pipfile) = pipfile {
        for table in ["packages", "dev-packages"] {
            names.extend(keys(pipfile.get(table)).iter().map(|k| normalized(k)));
        }
    }
    names
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
