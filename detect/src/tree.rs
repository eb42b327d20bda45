//! Read-only access to an app's files for detection: never follows a symlink, refuses files
//! over 1 MiB, and names the file in every error.

use std::path::{Path, PathBuf};

use crate::DetectError;

const MAX_FILE: u64 = 1024 * 1024;

/// The app's directory.
#[derive(Debug, Clone)]
pub struct Tree {
    root: PathBuf,
}

impl Tree {
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_path_buf() }
    }

    /// Whether `rel` is a regular file (symlinks do not count).
    pub fn file(&self, rel: &str) -> bool {
        self.root.join(rel).symlink_metadata().is_ok_and(|m| m.is_file())
    }

    /// Whether `rel` is a directory (symlinks do not count).
    pub fn dir(&self, rel: &str) -> bool {
        self.root.join(rel).symlink_metadata().is_ok_and(|m| m.is_dir())
    }

    /// The text of `rel`, `None` if it is not a regular file.
    pub fn read(&self, rel: &str) -> Result<Option<String>, DetectError> {
        if !self.file(rel) {
            return Ok(None);
        }
        let path = self.root.join(rel);
        let io = |message: String| DetectError::Io { path: rel.to_string(), message };
        let len = path.metadata().map_err(|e| io(e.to_string()))?.len();
        if len > MAX_FILE {
            return Err(io(format!("larger than {MAX_FILE} bytes; not read")));
        }
        let bytes = std::fs::read(&path).map_err(|e| io(e.to_string()))?;
        String::from_utf8(bytes).map(Some).map_err(|_| io("not UTF-8 text".into()))
    }

    /// Names of the entries of directory `rel` (sorted), filtered by `keep`.
    pub fn list(&self, rel: &str, keep: impl Fn(&str, bool) -> bool) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.root.join(rel)) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let is_dir = e.file_type().ok()?.is_dir();
                let name = e.file_name().into_string().ok()?;
                keep(&name, is_dir).then_some(name)
            })
            .collect();
        names.sort();
        names
    }

    /// The first of `names` that is a file.
    pub fn first_file<'a>(&self, names: &[&'a str]) -> Option<&'a str> {
        names.iter().copied().find(|n| self.file(n))
    }
}
