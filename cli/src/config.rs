//! The CLI's config file: the scheduler's URL and the API token `slipway login` stored, in
//! `$SLIPWAY_CONFIG`, else `$XDG_CONFIG_HOME/slipway/config.toml`, else
//! `~/.config/slipway/config.toml`, readable only by its owner (0600, like `gh auth login`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// What `slipway login` stores.
#[derive(Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    pub url: Option<String>,
    pub token: Option<String>,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where the config file is.
pub fn path() -> PathBuf {
    if let Some(path) = std::env::var_os("SLIPWAY_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".config"),
    };
    base.join("slipway/config.toml")
}

/// Reads the config file; a missing one is empty. A file others can read is refused while it
/// holds a token (the token would be as good as published).
pub fn load(path: &Path) -> anyhow::Result<Stored> {
    use std::os::unix::fs::PermissionsExt;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::default()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    if text.len() > 64 * 1024 {
        bail!("{} is larger than a Slipway config file can be", path.display());
    }
    let stored: Stored = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if stored.token.is_some() && mode & 0o077 != 0 {
        bail!(
            "{} holds a token but others may read it (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    Ok(stored)
}

/// Writes the config file with mode 0600 (its directory 0700), replacing it atomically.
pub fn save(path: &Path, stored: &Stored) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = toml::to_string(stored)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saved_config_is_private_and_reads_back() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("nested/config.toml");
        let stored = Stored { url: Some("http://127.0.0.1:8080".into()), token: Some("slw_abc".into()) };
        save(&path, &stored).expect("saved");
        assert_eq!(std::fs::metadata(&path).expect("file").permissions().mode() & 0o777, 0o600);
        assert_eq!(load(&path).expect("loaded"), stored);
        assert!(!format!("{stored:?}").contains("slw_abc"));
    }

    #[test]
    fn a_readable_token_file_or_garbage_is_refused_with_the_path() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "token = \"slw_abc\"\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load(&path).expect_err("world-readable").to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::write(&path, "tokn = 1\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(load(&path).expect_err("unknown key").to_string().contains("config.toml"));
        std::fs::write(&path, [0xff, 0xfe]).expect("write");
        assert!(load(&path).is_err());
        assert_eq!(load(&dir.path().join("missing.toml")).expect("missing is empty"), Stored::default());
    }
}
