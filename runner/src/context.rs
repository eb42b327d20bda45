//! The build context tarball: the checked-out tree minus `.git` and what `.dockerignore`
//! excludes, in a deterministic order with zeroed times and owners (so the layer cache hits),
//! and with symlinks stored as links, never followed (so nothing outside the repository gets in).

use std::io;
use std::path::Path;

use globset::{GlobBuilder, GlobMatcher};
use walkdir::WalkDir;

/// Why the context could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error(".dockerignore line {line}: invalid pattern `{pattern}`: {source}")]
    Pattern {
        line: usize,
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("the build context is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// A path from the repository (the app root) leaves the checkout, or goes through a link.
    #[error("`{path}` is not a directory inside the repository: {why}")]
    Escapes { path: String, why: String },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// `rel` (from the app's settings or the repository) resolved inside `repo`: relative, no `..`,
/// and no component a symbolic link, so nothing read through it can be outside the checkout.
pub fn contained(repo: &Path, rel: &str) -> Result<std::path::PathBuf, ContextError> {
    use std::path::Component;
    let escapes = |why: String| ContextError::Escapes { path: rel.to_string(), why };
    let mut at = repo.to_path_buf();
    for component in Path::new(rel).components() {
        match component {
            Component::CurDir => {}
            Component::Normal(name) => {
                at.push(name);
                match std::fs::symlink_metadata(&at) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        let link = at.strip_prefix(repo).unwrap_or(&at).display().to_string();
                        return Err(escapes(format!("`{link}` is a symbolic link")));
                    }
                    Ok(meta) if !meta.is_dir() => {
                        let file = at.strip_prefix(repo).unwrap_or(&at).display().to_string();
                        return Err(escapes(format!("`{file}` is not a directory")));
                    }
                    Ok(_) => {}
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        return Err(escapes("it does not exist in this commit".into()));
                    }
                    Err(source) => return Err(ContextError::Io { path: at.display().to_string(), source }),
                }
            }
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(escapes("it must be relative and must not use `..`".into()));
            }
        }
    }
    Ok(at)
}

/// `.dockerignore` rules with Docker's semantics: patterns are relative to the context root,
/// `*` and `?` stop at `/`, `**` spans directories, a pattern matching a directory excludes
/// everything in it, `!` re-includes, and the last matching rule wins.
#[derive(Debug, Default)]
pub struct DockerIgnore {
    rules: Vec<(GlobMatcher, bool)>,
}

impl DockerIgnore {
    /// Parses the text of a `.dockerignore`.
    pub fn parse(text: &str) -> Result<Self, ContextError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (negate, pattern) = match trimmed.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, trimmed),
            };
            let pattern = clean(pattern);
            if pattern.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(&pattern)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|source| ContextError::Pattern { line: i + 1, pattern: pattern.clone(), source })?;
            rules.push((glob.compile_matcher(), negate));
        }
        Ok(Self { rules })
    }

    /// Whether `rel` (a `/`-separated path relative to the root) is left out of the context.
    pub fn excludes(&self, rel: &str) -> bool {
        let mut excluded = false;
        for (matcher, negate) in &self.rules {
            if matches_or_parent(matcher, rel) {
                excluded = !negate;
            }
        }
        excluded
    }

    fn has_negations(&self) -> bool {
        self.rules.iter().any(|(_, n)| *n)
    }
}

/// Like Go's `filepath.Clean` for the patterns Docker accepts, without a leading `/`.
fn clean(pattern: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn matches_or_parent(matcher: &GlobMatcher, rel: &str) -> bool {
    if matcher.is_match(rel) {
        return true;
    }
    let mut end = rel.len();
    while let Some(i) = rel[..end].rfind('/') {
        if matcher.is_match(&rel[..i]) {
            return true;
        }
        end = i;
    }
    false
}

/// The name a generated Dockerfile gets inside the context.
pub const GENERATED_DOCKERFILE: &str = "Dockerfile.slipway-generated";

/// Builds the context tarball of `root` in memory, refusing contexts over `limit` bytes; a
/// `generated` Dockerfile is added as [`GENERATED_DOCKERFILE`]. Blocking: call it from
/// `spawn_blocking`.
pub fn tarball(root: &Path, limit: u64, generated: Option<&str>) -> Result<Vec<u8>, ContextError> {
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| ContextError::Io { path, source }
    };
    // Read only if it is a file of the checkout: a link could make it any file of the host.
    let ignore_path = root.join(".dockerignore");
    let ignore = match std::fs::symlink_metadata(&ignore_path) {
        Ok(meta) if meta.is_file() => {
            DockerIgnore::parse(&std::fs::read_to_string(&ignore_path).map_err(io_err(&ignore_path))?)?
        }
        Ok(_) => DockerIgnore::default(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => DockerIgnore::default(),
        Err(e) => return Err(io_err(&ignore_path)(e)),
    };
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let mut total: u64 = 0;
    let mut walk = WalkDir::new(root).follow_links(false).sort_by_file_name().min_depth(1).into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.map_err(|e| ContextError::Io { path: root.display().to_string(), source: e.into() })?;
        // The name as it is on disk: `\\` is an ordinary character in a Unix file name (read as a
        // separator, `a\\b` went in as `a/b` and `..\\x` as `../x`). The text form is for the
        // ignore rules and the always-sent names.
        let rel_path = entry.path().strip_prefix(root).unwrap_or(entry.path());
        let rel = rel_path.to_string_lossy();
        let file_type = entry.file_type();
        if rel == ".git" && file_type.is_dir() {
            walk.skip_current_dir();
            continue;
        }
        // The Dockerfile and .dockerignore always reach the builder, as with `docker build`.
        let always = rel == "Dockerfile" || rel == ".dockerignore";
        if rel == GENERATED_DOCKERFILE && generated.is_some() {
            continue;
        }
        if !always && ignore.excludes(&rel) {
            if file_type.is_dir() && !ignore.has_negations() {
                walk.skip_current_dir();
            }
            continue;
        }
        let meta = entry.path().symlink_metadata().map_err(io_err(entry.path()))?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if file_type.is_symlink() {
            let target = std::fs::read_link(entry.path()).map_err(io_err(entry.path()))?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            builder.append_link(&mut header, rel_path, &target).map_err(io_err(entry.path()))?;
        } else if file_type.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, rel_path.join(""), io::empty()).map_err(io_err(entry.path()))?;
        } else if file_type.is_file() {
            total += meta.len();
            if total > limit {
                return Err(ContextError::TooLarge { limit });
            }
            let executable = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if executable { 0o755 } else { 0o644 });
            header.set_size(meta.len());
            let file = std::fs::File::open(entry.path()).map_err(io_err(entry.path()))?;
            builder.append_data(&mut header, rel_path, file).map_err(io_err(entry.path()))?;
        }
    }
    if let Some(text) = generated {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(text.len() as u64);
        builder.append_data(&mut header, GENERATED_DOCKERFILE, text.as_bytes()).map_err(io_err(root))?;
    }
    builder.into_inner().map_err(io_err(root))
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_app_root_through_a_link_or_outside_the_checkout_is_refused() {
        let outside = tempfile::tempdir().expect("outside");
        std::fs::write(outside.path().join("secret.txt"), "host secret").expect("secret");
        let repo = tempfile::tempdir().expect("repo");
        let r = repo.path();
        std::fs::create_dir_all(r.join("apps/web")).expect("dirs");
        std::fs::create_dir_all(r.join("apps/real")).expect("dirs");
        std::os::unix::fs::symlink(outside.path(), r.join("absolute")).expect("link");
        std::os::unix::fs::symlink("../../../../../../../..", r.join("relative")).expect("link");
        std::os::unix::fs::symlink("/", r.join("root")).expect("link");
        std::os::unix::fs::symlink(outside.path(), r.join("apps/nested")).expect("link");
        std::os::unix::fs::symlink("real", r.join("apps/inside")).expect("link");
        std::fs::write(r.join("file"), "x").expect("file");
        for bad in [
            "absolute",
            "relative/etc",
            "root",
            "root/etc",
            "apps/nested",
            "apps/inside",
            "../x",
            "/etc",
            "file",
            "missing",
        ] {
            let err = contained(r, bad).expect_err(bad);
            assert!(matches!(err, ContextError::Escapes { .. }), "{bad}: {err}");
        }
        assert_eq!(contained(r, ".").expect("root"), r);
        assert_eq!(contained(r, "apps/web").expect("nested dir"), r.join("apps/web"));
        assert_eq!(contained(r, "./apps/web/").expect("dot and slash"), r.join("apps/web"));
    }

    #[test]
    fn a_dockerignore_that_is_a_link_is_not_read() {
        let outside = tempfile::tempdir().expect("outside");
        std::fs::write(outside.path().join("host"), "[unbalanced host-secret-line\n").expect("host file");
        let repo = tempfile::tempdir().expect("repo");
        std::fs::write(repo.path().join("Dockerfile"), "FROM scratch\n").expect("Dockerfile");
        symlink(outside.path().join("host"), repo.path().join(".dockerignore")).expect("link");
        let tar = tarball(repo.path(), 1 << 20, None).expect("the link is packed as a link, never read");
        assert!(names(&tar).iter().any(|(n, t)| n == ".dockerignore" && *t == tar::EntryType::Symlink));
    }
    use super::*;
    use std::os::unix::fs::symlink;

    fn names(tar_bytes: &[u8]) -> Vec<(String, tar::EntryType)> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                (e.path().expect("path").to_string_lossy().into_owned(), e.header().entry_type())
            })
            .collect()
    }

    #[test]
    fn dockerignore_semantics() {
        let ig = DockerIgnore::parse("# comment\n/node_modules\n*.log\n!keep.log\nbuild/**/*.o\n./secret/../tmp\n")
            .expect("parse");
        assert!(ig.excludes("node_modules"));
        assert!(ig.excludes("node_modules/x/y.js"), "a matched directory excludes its content");
        assert!(ig.excludes("app.log"));
        assert!(!ig.excludes("keep.log"), "negation re-includes");
        assert!(!ig.excludes("logs/app.log"), "* does not cross /");
        assert!(ig.excludes("build/a/b/c.o"));
        assert!(ig.excludes("build/c.o"), "** matches zero directories");
        assert!(ig.excludes("tmp/x"), "patterns are cleaned like filepath.Clean");
        assert!(!ig.excludes("src/main.rs"));
    }

    #[test]
    fn invalid_pattern_names_the_line() {
        let err = DockerIgnore::parse("ok\n[unclosed\n").expect_err("bad pattern");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn tarball_is_deterministic_skips_git_and_ignored_and_keeps_symlinks_as_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join(".git/objects")).expect("git dir");
        std::fs::write(root.join(".git/config"), "x").expect("write");
        std::fs::write(root.join("Dockerfile"), "FROM scratch\n").expect("write");
        std::fs::write(root.join(".dockerignore"), "secrets\n").expect("write");
        std::fs::create_dir(root.join("secrets")).expect("mkdir");
        std::fs::write(root.join("secrets/key"), "k").expect("write");
        std::fs::write(root.join("b.txt"), "b").expect("write");
        std::fs::write(root.join("a.txt"), "a").expect("write");
        let outside = tempfile::NamedTempFile::new().expect("outside file");
        std::fs::write(outside.path(), "TOP SECRET OUTSIDE").expect("write");
        symlink(outside.path(), root.join("escape")).expect("symlink");

        let first = tarball(root, 1 << 20, None).expect("tarball");
        std::fs::write(root.join("a.txt"), "a").expect("rewrite (new mtime)");
        let second = tarball(root, 1 << 20, None).expect("tarball");
        assert_eq!(first, second, "same tree, same bytes");

        let entries = names(&first);
        let paths: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, [".dockerignore", "Dockerfile", "a.txt", "b.txt", "escape"]);
        assert_eq!(entries[4].1, tar::EntryType::Symlink);
        let text = String::from_utf8_lossy(&first);
        assert!(!text.contains("TOP SECRET OUTSIDE"), "the symlink target's content must not be in the context");
    }

    /// Found by the `build_context` fuzz target: a file named `a\b` went into the context as
    /// `a/b`, and one named `..\..\escape` as `../../escape`, a path out of the context.
    #[test]
    fn names_with_backslashes_are_kept_as_they_are() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(root.join("a\\b"), "one file").expect("write");
        std::fs::write(root.join("..\\..\\escape"), "another").expect("write");
        let tar = tarball(root, 1 << 20, None).expect("tarball");
        let entries = names(&tar);
        let paths: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["..\\..\\escape", "a\\b"]);
    }

    #[test]
    fn oversized_context_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("big"), vec![0u8; 4096]).expect("write");
        assert!(matches!(tarball(dir.path(), 1000, None), Err(ContextError::TooLarge { .. })));
    }
}
