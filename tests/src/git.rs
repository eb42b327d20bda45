//! A `git daemon` serving bare repositories from a temp dir, and helpers to commit to them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A git server on 127.0.0.1 for one test; killed on drop.
pub struct GitServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

/// A file to commit: path and content, or a symlink target.
pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Slipway Test",
            "-c",
            "user.email=test@slipway.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl GitServer {
    /// Starts `git-daemon` on a free port. The daemon itself is started (not the `git` wrapper,
    /// which would leave the daemon running when killed).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("git server dir");
        std::fs::create_dir_all(dir.path().join("repos")).expect("repos dir");
        let port = crate::free_port();
        let exec_path = git(dir.path(), &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args(["--export-all", "--reuseaddr", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", dir.path().join("repos").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start git daemon");
        let server = Self { dir, port, child };
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("git daemon did not listen on {port}");
    }

    /// Where the daemon listens (`127.0.0.1:<port>`), for a proxy in front of it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The URL a repository is served at.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}.git", self.port)
    }

    fn work(&self, name: &str) -> PathBuf {
        self.dir.path().join("work").join(name)
    }

    /// Commits a tree of exactly `entries` to branch `main` of repository `name` (created on
    /// first use) and returns the new commit's SHA.
    pub fn commit(&self, name: &str, message: &str, entries: &[Entry<'_>]) -> String {
        self.commit_to(name, "refs/heads/main", message, entries)
    }

    /// Like [`GitServer::commit`], to any ref (`refs/pull/7/head`, as a forge keeps a pull
    /// request's head). The commit's parent is the last one made in this repository.
    pub fn commit_to(&self, name: &str, git_ref: &str, message: &str, entries: &[Entry<'_>]) -> String {
        let work = self.work(name);
        let bare = self.dir.path().join("repos").join(format!("{name}.git"));
        if !work.exists() {
            std::fs::create_dir_all(&work).expect("work dir");
            git(&work, &["init", "-q"]);
            git(self.dir.path(), &["init", "-q", "--bare", bare.to_str().expect("utf-8 path")]);
            git(&bare, &["config", "uploadpack.allowAnySHA1InWant", "true"]);
            git(&work, &["remote", "add", "origin", bare.to_str().expect("utf-8 path")]);
        }
        for old in std::fs::read_dir(&work).expect("read work dir").flatten() {
            if old.file_name() != ".git" {
                let path = old.path();
                if path.is_dir() && !path.is_symlink() {
                    std::fs::remove_dir_all(path).expect("clear work tree");
                } else {
                    std::fs::remove_file(path).expect("clear work tree");
                }
            }
        }
        for entry in entries {
            match entry {
                Entry::File(path, content) => {
                    let p = work.join(path);
                    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                    std::fs::write(p, content).expect("write file");
                }
                Entry::Symlink(path, target) => {
                    let p = work.join(path);
                    let _ = std::fs::remove_file(&p);
                    std::os::unix::fs::symlink(target, p).expect("symlink");
                }
            }
        }
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "--allow-empty", "-m", message]);
        git(&work, &["push", "-q", "-f", "origin", &format!("HEAD:{git_ref}")]);
        git(&work, &["rev-parse", "HEAD"])
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
