//! `slipway.toml`: an optional file at the app root that overrides any part of the plan.
//! Unknown keys and wrong types are errors naming the key and the line. The schema is
//! documented in `docs/slipway-toml.md`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::{DetectError, Fact, Plan, Tree};

/// The file name.
pub const FILE: &str = "slipway.toml";

/// What `slipway.toml` may set; every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlipwayToml {
    /// Force a provider (`node`, `python`, ... or `dockerfile`).
    pub provider: Option<String>,
    pub install: Option<String>,
    pub build: Option<String>,
    pub start: Option<String>,
    /// The test command; `test = false` skips the test step.
    pub test: Option<TestSetting>,
    /// The runtime version (e.g. `"20"` for Node, `"3.12"` for Python).
    pub version: Option<String>,
    /// The final stage's base image.
    pub base_image: Option<String>,
    pub port: Option<u16>,
    pub health_path: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Globs (from the repository root) of the files whose changes deploy the app; the
    /// runner checks a push against them after the clone. The app's own watch paths win.
    pub watch_paths: Option<Vec<String>>,
    /// The release command: `"bin/migrate"` (a shell command) or `["bin/migrate", "--yes"]`.
    pub release: Option<ReleaseSetting>,
    /// A hook run before the deploy step (a failure stops the deployment), like `release`.
    pub pre_deploy: Option<ReleaseSetting>,
    /// A hook run once the new version serves (a failure is reported, nothing is undone).
    pub post_deploy: Option<ReleaseSetting>,
    /// The variable holding the app's PostgreSQL URL, snapshotted before the release command
    /// (default `DATABASE_URL`); `""` turns snapshots off.
    pub snapshot_database: Option<String>,
}

/// `release = "command"` or `release = ["program", "arg", ...]` (and the hooks alike).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ReleaseSetting {
    Shell(String),
    Exec(Vec<String>),
}

impl ReleaseSetting {
    /// Whether it names something to run: a command, or a program first, without NUL bytes.
    fn usable(&self) -> bool {
        match self {
            ReleaseSetting::Shell(command) => !command.trim().is_empty() && !command.contains('\0'),
            ReleaseSetting::Exec(argv) => {
                argv.first().is_some_and(|p| !p.trim().is_empty())
                    && argv.len() <= 256
                    && !argv.iter().any(|a| a.contains('\0'))
            }
        }
    }

    /// The argv to run.
    pub fn argv(&self) -> Vec<String> {
        match self {
            ReleaseSetting::Shell(command) => crate::providers::shell(command),
            ReleaseSetting::Exec(argv) => argv.clone(),
        }
    }
}

/// `test = "cmd"` or `test = false`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TestSetting {
    Command(String),
    Enabled(bool),
}

/// The fields that are checked after parsing, with their places in the file.
#[derive(Debug, Default, Deserialize)]
struct Spans {
    provider: Option<Spanned<toml::Value>>,
    port: Option<Spanned<toml::Value>>,
    health_path: Option<Spanned<toml::Value>>,
    base_image: Option<Spanned<toml::Value>>,
    version: Option<Spanned<toml::Value>>,
    env: Option<Spanned<toml::Value>>,
    test: Option<Spanned<toml::Value>>,
    watch_paths: Option<Spanned<toml::Value>>,
    release: Option<Spanned<toml::Value>>,
    pre_deploy: Option<Spanned<toml::Value>>,
    post_deploy: Option<Spanned<toml::Value>>,
    snapshot_database: Option<Spanned<toml::Value>>,
}

const PROVIDERS: &[&str] =
    &["dockerfile", "node", "deno", "python", "go", "java", "ruby", "rust", "php", "dotnet", "elixir", "static"];

impl SlipwayToml {
    /// Reads and checks `slipway.toml` in `tree`, if there is one.
    pub fn load(tree: &Tree) -> Result<Option<Self>, DetectError> {
        let Some(text) = tree.read(FILE)? else {
            return Ok(None);
        };
        Self::parse(&text).map(Some)
    }

    /// Parses and checks the text of a `slipway.toml`.
    pub fn parse(text: &str) -> Result<Self, DetectError> {
        let parsed: Self = toml::from_str(text).map_err(|e| toml_error(FILE, text, &e))?;
        let spans: Spans = toml::from_str(text).map_err(|e| toml_error(FILE, text, &e))?;
        let at = |span: &Option<Spanned<toml::Value>>, message: String| {
            let start = span.as_ref().map(|s| s.span().start).unwrap_or(0);
            let (line, column) = line_column(text, start);
            DetectError::Parse { file: FILE.into(), line, column, message }
        };
        if let Some(p) = &parsed.provider
            && !PROVIDERS.contains(&p.as_str())
        {
            return Err(at(&spans.provider, format!("`provider` must be one of {}, not `{p}`", PROVIDERS.join(", "))));
        }
        if parsed.port == Some(0) {
            return Err(at(&spans.port, "`port` must be between 1 and 65535".into()));
        }
        if let Some(h) = &parsed.health_path
            && (!h.starts_with('/') || h.chars().any(|c| c.is_control() || c == ' '))
        {
            return Err(at(&spans.health_path, "`health_path` must be an absolute URL path such as /healthz".into()));
        }
        for (key, value, span) in
            [("base_image", &parsed.base_image, &spans.base_image), ("version", &parsed.version, &spans.version)]
        {
            if let Some(v) = value
                && (v.is_empty() || v.len() > 255 || v.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                return Err(at(span, format!("`{key}` must be one word without spaces")));
            }
        }
        for key in parsed.env.keys() {
            if !is_variable_name(key) {
                return Err(at(&spans.env, format!("`env.{key}`: names must match [A-Za-z_][A-Za-z0-9_]*")));
            }
        }
        let watch = parsed.watch_paths.as_deref().unwrap_or_default();
        if watch.len() > 64 || watch.iter().any(|p| p.is_empty() || p.len() > 512 || p.chars().any(char::is_control)) {
            let message = "`watch_paths` is at most 64 globs of 1 to 512 characters without control characters";
            return Err(at(&spans.watch_paths, message.into()));
        }
        for (key, setting, span) in [
            ("release", &parsed.release, &spans.release),
            ("pre_deploy", &parsed.pre_deploy, &spans.pre_deploy),
            ("post_deploy", &parsed.post_deploy, &spans.post_deploy),
        ] {
            if !setting.as_ref().is_none_or(ReleaseSetting::usable) {
                return Err(at(span, format!("`{key}` is a command, or an array of a program and its arguments")));
            }
        }
        if let Some(name) = &parsed.snapshot_database
            && !(name.is_empty() || is_variable_name(name))
        {
            let message = "`snapshot_database` names a variable ([A-Za-z_][A-Za-z0-9_]*), or is \"\" for no snapshots";
            return Err(at(&spans.snapshot_database, message.into()));
        }
        if parsed.test == Some(TestSetting::Enabled(true)) {
            return Err(at(&spans.test, "`test` is a command, or false to skip the test step".into()));
        }
        Ok(parsed)
    }

    /// Overrides `plan` with what the file sets.
    pub fn apply(self, plan: &mut Plan) {
        let from = |v: String| Some(Fact::new(v, &[FILE]));
        if let Some(v) = self.install {
            plan.install = from(v);
        }
        if let Some(v) = self.build {
            plan.build = from(v);
        }
        if let Some(v) = self.start {
            plan.start = from(v);
        }
        match self.test {
            Some(TestSetting::Command(v)) => plan.test = from(v),
            Some(TestSetting::Enabled(_)) => plan.test = None,
            None => {}
        }
        if let Some(v) = self.version {
            plan.version = from(v);
        }
        if let Some(v) = self.base_image {
            plan.base_image = from(v);
        }
        if let Some(port) = self.port {
            plan.port = Fact::new(port, &[FILE]);
        }
        if let Some(release) = &self.release {
            plan.release = Some(Fact::new(release.argv(), &[FILE]));
        }
        if let Some(hook) = &self.pre_deploy {
            plan.pre_deploy = Some(Fact::new(hook.argv(), &[FILE]));
        }
        if let Some(hook) = &self.post_deploy {
            plan.post_deploy = Some(Fact::new(hook.argv(), &[FILE]));
        }
        if let Some(v) = self.health_path {
            plan.health_path = from(v);
        }
        if let Some(v) = self.snapshot_database {
            plan.snapshot_database = from(v);
        }
        plan.env.extend(self.env);
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 255 characters.
fn is_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A TOML error as file:line:column and the parser's message, led by the key when the error
/// is in a value (`port: invalid type ...`).
pub fn toml_error(file: &str, text: &str, err: &toml::de::Error) -> DetectError {
    let (line, column) = err.span().map(|s| line_column(text, s.start)).unwrap_or((1, 1));
    let mut message = err.message().trim().to_string();
    let line_text = text.lines().nth(line - 1).unwrap_or_default();
    if let Some((key, _)) = line_text.split_once('=') {
        let key = key.trim().trim_matches('"');
        let in_value = column > line_text.find('=').unwrap_or(0);
        if !key.is_empty() && in_value && !message.contains(&format!("`{key}`")) {
            message = format!("`{key}`: {message}");
        }
    }
    DetectError::Parse { file: file.into(), line, column, message }
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        SlipwayToml::parse(text).expect_err(text).to_string()
    }

    #[test]
    fn full_file_parses() {
        let c = SlipwayToml::parse(
            "provider = \"node\"\ninstall = \"npm ci\"\nbuild = \"npm run build\"\nstart = \"node server.js\"\ntest = false\nversion = \"20\"\nbase_image = \"registry.example.com/node:20\"\nport = 3000\nhealth_path = \"/healthz\"\n[env]\nNODE_ENV = \"production\"\n",
        )
        .expect("valid");
        assert_eq!(c.port, Some(3000));
        assert_eq!(c.test, Some(TestSetting::Enabled(false)));
        assert_eq!(c.env.get("NODE_ENV").map(String::as_str), Some("production"));
    }

    #[test]
    fn the_release_command_is_a_shell_command_or_an_argv() {
        let shell = SlipwayToml::parse("release = \"bin/migrate --yes\"\n").expect("valid");
        assert_eq!(shell.release.expect("release").argv(), ["/bin/sh", "-c", "bin/migrate --yes"]);
        let exec = SlipwayToml::parse("release = [\"bin/migrate\", \"--yes\"]\n").expect("valid");
        assert_eq!(exec.release.expect("release").argv(), ["bin/migrate", "--yes"]);
        for bad in ["release = []\n", "release = [\"\"]\n", "port = 1\nrelease = \"\"\n"] {
            let e = err(bad);
            assert!(e.contains("`release` is a command"), "{bad}: {e}");
        }
        assert!(err("port = 1\nrelease = \"\"\n").starts_with("slipway.toml:2:"));
        assert!(err("release = 5\n").contains("release"));
        let hooks = SlipwayToml::parse("pre_deploy = \"bin/check\"\npost_deploy = [\"bin/purge\", \"--all\"]\n")
            .expect("valid");
        assert_eq!(hooks.post_deploy.expect("hook").argv(), ["bin/purge", "--all"]);
        assert!(err("pre_deploy = []\n").contains("`pre_deploy` is a command"));
        let named = SlipwayToml::parse("snapshot_database = \"PRIMARY_DB\"\n").expect("a variable name");
        assert_eq!(named.snapshot_database.as_deref(), Some("PRIMARY_DB"));
        assert!(SlipwayToml::parse("snapshot_database = \"\"\n").is_ok(), "\"\" turns snapshots off");
        for bad in ["snapshot_database = \"1DB\"\n", "snapshot_database = \"A B\"\n", "snapshot_database = \"$(id)\"\n"]
        {
            assert!(err(bad).contains("`snapshot_database` names a variable"), "{bad}");
        }
        assert!(err("post_deploy = \" \"\n").contains("`post_deploy` is a command"));
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key_and_line() {
        let e = err("start = \"x\"\nstrat = \"y\"\n");
        assert!(e.starts_with("slipway.toml:2:1:") && e.contains("unknown field `strat`"), "{e}");
        let e = err("port = \"eighty\"\n");
        assert!(e.starts_with("slipway.toml:1:") && e.contains("`port`: invalid type"), "{e}");
        let e = err("\n\nport = 70000\n");
        assert!(e.starts_with("slipway.toml:3:"), "{e}");
        let e = err("install = [\n");
        assert!(e.starts_with("slipway.toml:"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key_and_line() {
        assert!(err("\nprovider = \"cobol\"\n").starts_with("slipway.toml:2:"));
        assert!(err("port = 80\nwatch_paths = [\"\"]\n").starts_with("slipway.toml:2:"));
        assert!(err("watch_paths = \"api/**\"\n").contains("watch_paths"));
        let ok = SlipwayToml::parse("watch_paths = [\"services/api/**\", \"!**/*.md\"]\n").expect("valid");
        assert_eq!(ok.watch_paths, Some(vec!["services/api/**".to_string(), "!**/*.md".to_string()]));
        assert!(err("provider = \"cobol\"\n").contains("`provider` must be one of"));
        assert!(err("port = 0\n").contains("`port`"));
        assert!(err("health_path = \"healthz\"\n").contains("`health_path`"));
        assert!(err("base_image = \"a b\"\n").contains("`base_image`"));
        assert!(err("[env]\n1X = \"v\"\n").contains("env.1X"));
        assert!(err("test = true\n").contains("`test`"));
    }
}
