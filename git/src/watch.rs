//! Watch paths: the globs an app is deployed for, and the files a push changed. A push deploys
//! the app only when one of its changed files matches; the changed files come from the forge's
//! payload when it lists them all, and otherwise from [`changed_between`], a diff of the trees
//! of the commit last made live and the new one.
//!
//! Globs are relative to the repository root: `*` stays within one directory, `**` crosses
//! them, a pattern naming a directory also covers everything below it, and `!pattern` excludes
//! what it matches (`services/api/**`, `!**/*.md`).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use git2::{Oid, Repository};
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::{CheckoutError, GitAuth, fetch_options, is_missing};

/// Most patterns an app may declare.
pub const MAX_PATTERNS: usize = 64;
/// Longest pattern accepted.
pub const MAX_PATTERN_LEN: usize = 512;

/// An app's compiled watch paths.
#[derive(Debug, Clone)]
pub struct WatchPaths {
    include: GlobSet,
    exclude: GlobSet,
    patterns: Vec<String>,
}

impl WatchPaths {
    /// Compiles `patterns`; the error names the pattern that is not a glob. An empty list
    /// matches every path (no watch paths: every push deploys).
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        if patterns.len() > MAX_PATTERNS {
            return Err(format!("at most {MAX_PATTERNS} watch paths, not {}", patterns.len()));
        }
        let (mut include, mut exclude) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        let mut includes = 0;
        for raw in patterns {
            if raw.is_empty() || raw.len() > MAX_PATTERN_LEN || raw.chars().any(char::is_control) {
                return Err(format!(
                    "watch path `{}` must be 1 to {MAX_PATTERN_LEN} characters without control characters",
                    raw.chars().filter(|c| !c.is_control()).take(80).collect::<String>()
                ));
            }
            let (negated, pattern) = match raw.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, raw.as_str()),
            };
            let pattern = pattern.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/');
            if pattern.is_empty() || pattern.split('/').any(|part| part == "..") {
                return Err(format!("watch path `{raw}` must name files inside the repository"));
            }
            let set = if negated { &mut exclude } else { &mut include };
            for glob in [pattern.to_string(), format!("{pattern}/**")] {
                set.add(compile(&glob).map_err(|e| format!("watch path `{raw}` is not a glob: {e}"))?);
            }
            includes += usize::from(!negated);
        }
        if includes == 0 {
            include.add(compile("**").map_err(|e| e.to_string())?);
        }
        Ok(WatchPaths {
            include: include.build().map_err(|e| e.to_string())?,
            exclude: exclude.build().map_err(|e| e.to_string())?,
            patterns: patterns.to_vec(),
        })
    }

    /// Whether the list is empty (every push deploys).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `path` (relative to the repository root) is watched.
    pub fn matches(&self, path: &str) -> bool {
        let path = path.trim_start_matches('/');
        self.include.is_match(path) && !self.exclude.is_match(path)
    }

    /// The first of `paths` that is watched.
    pub fn first_match<'a>(&self, paths: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        paths.into_iter().find(|p| self.matches(p))
    }

    /// Why a push that changed `changed` files, none watched, is not deployed.
    pub fn unmatched_reason(&self, changed: usize) -> String {
        let shown: Vec<&str> = self.patterns.iter().take(5).map(String::as_str).collect();
        let more = match self.patterns.len() > shown.len() {
            true => format!(" and {} more", self.patterns.len() - shown.len()),
            false => String::new(),
        };
        format!(
            "no changed file matches the watch paths ({}{more}); {changed} file{} changed",
            shown.join(", "),
            if changed == 1 { "" } else { "s" }
        )
    }
}

fn compile(glob: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(glob).literal_separator(true).backslash_escape(true).build()
}

/// The files that differ between commits `base` and `head` of the repository checked out in
/// `dir` (which holds `head`): `base` is fetched from `url` at depth 1 beside it and the two
/// trees are compared; a renamed file counts under both names. Blocking, like the checkout.
pub fn changed_between(
    dir: &Path,
    url: &str,
    base: &str,
    head: &str,
    auth: Option<&GitAuth>,
    stop: &AtomicBool,
) -> Result<Vec<String>, CheckoutError> {
    let oid = |sha: &str| Oid::from_str(sha).ok().filter(|_| sha.len() >= 40);
    let base_oid = oid(base).ok_or_else(|| CheckoutError::BadSha(base.to_string()))?;
    let head_oid = oid(head).ok_or_else(|| CheckoutError::BadSha(head.to_string()))?;
    let repo = Repository::open(dir).map_err(|e| CheckoutError::Checkout(e.message().to_string()))?;
    if repo.find_commit(base_oid).is_err() {
        let mut remote = repo.remote_anonymous(url).map_err(|e| CheckoutError::Fetch(e.message().to_string()))?;
        let fetched = remote.fetch(&[format!("+{base}:refs/slipway/base")], Some(&mut fetch_options(auth, stop)), None);
        fetched.map_err(|e| match () {
            _ if stop.load(Ordering::Relaxed) => CheckoutError::Interrupted,
            _ if is_missing(&e) => CheckoutError::NotFound { sha: base.to_string(), message: e.message().to_string() },
            _ => CheckoutError::Fetch(e.message().to_string()),
        })?;
    }
    let tree = |oid: Oid, sha: &str| {
        repo.find_commit(oid)
            .and_then(|c| c.tree())
            .map_err(|e| CheckoutError::NotFound { sha: sha.to_string(), message: e.message().to_string() })
    };
    let (old, new) = (tree(base_oid, base)?, tree(head_oid, head)?);
    let diff = repo
        .diff_tree_to_tree(Some(&old), Some(&new), None)
        .map_err(|e| CheckoutError::Checkout(e.message().to_string()))?;
    let mut paths = BTreeSet::new();
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            if let Some(path) = file.path().and_then(Path::to_str) {
                paths.insert(path.to_string());
            }
        }
    }
    Ok(paths.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(patterns: &[&str]) -> WatchPaths {
        WatchPaths::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).expect("valid")
    }

    #[test]
    fn globs_match_paths_from_the_repository_root() {
        let api = watch(&["services/api/**", "shared/*.toml"]);
        for yes in ["services/api/main.go", "services/api/internal/x/y.go", "shared/deps.toml", "/services/api/a"] {
            assert!(api.matches(yes), "{yes}");
        }
        for no in ["services/web/main.go", "services/apix/a", "shared/sub/deps.toml", "api/main.go", "README.md"] {
            assert!(!api.matches(no), "{no}");
        }
        // A directory name covers what is below it; a leading `/` or `./` is the root.
        let dir = watch(&["/services/api", "./lib/"]);
        assert!(dir.matches("services/api/src/main.rs") && dir.matches("lib/x.rs") && !dir.matches("services/apix"));
        assert_eq!(api.first_match(["README.md", "services/api/a.go", "services/api/b.go"]), Some("services/api/a.go"));
        assert_eq!(api.first_match(["README.md"]), None);
    }

    #[test]
    fn exclusions_win_and_exclusions_alone_watch_everything_else() {
        let code = watch(&["services/api/**", "!**/*.md"]);
        assert!(code.matches("services/api/main.go"));
        assert!(!code.matches("services/api/README.md"));
        let not_docs = watch(&["!docs/**", "!*.md"]);
        assert!(not_docs.matches("src/main.rs") && !not_docs.matches("docs/a/b.png") && !not_docs.matches("README.md"));
        assert!(watch(&[]).matches("anything/at/all") && watch(&[]).is_empty());
    }

    #[test]
    fn bad_patterns_are_refused_with_the_pattern_named() {
        let err =
            |p: &[&str]| WatchPaths::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect_err("refused");
        assert!(err(&["services/{api"]).contains("`services/{api` is not a glob"), "{}", err(&["services/{api"]));
        assert!(err(&[""]).contains("1 to 512"));
        assert!(err(&["a\u{7}b"]).contains("control"));
        assert!(err(&[&"x".repeat(600)]).contains("1 to 512"));
        assert!(err(&["../outside/**"]).contains("inside the repository"));
        assert!(err(&["!"]).contains("inside the repository"));
        let many: Vec<String> = (0..65).map(|i| format!("d{i}/**")).collect();
        assert!(WatchPaths::new(&many).expect_err("too many").contains("at most 64"));
    }

    #[test]
    fn the_reason_names_the_patterns_and_the_count() {
        let w = watch(&["a/**", "b/**", "c/**", "d/**", "e/**", "f/**"]);
        let reason = w.unmatched_reason(3);
        assert!(reason.contains("a/**, b/**, c/**, d/**, e/**") && reason.contains("1 more"), "{reason}");
        assert!(reason.ends_with("3 files changed"), "{reason}");
        assert!(watch(&["a/**"]).unmatched_reason(1).ends_with("1 file changed"));
    }
}
