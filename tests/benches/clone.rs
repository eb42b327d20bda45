//! Benchmark: our shallow checkout of one commit (git2, depth 1) against `git clone --depth 1`
//! of the same commit from the same `git daemon`, measured in the same run. Prints the medians
//! and their ratio. Run with `scripts/bench` (or `cargo bench -p slipway-tests --bench clone`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=bench", "-c", "user.email=bench@slipway.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let root = tempfile::tempdir().expect("tempdir");
    let work = root.path().join("work");
    let bare = root.path().join("repos/app.git");
    std::fs::create_dir_all(&work).expect("work");
    git(root.path(), &["init", "-q", "-b", "main", work.to_str().expect("utf-8")]);
    // A repository with history: 50 commits, each rewriting 8 files of ~35 KB.
    for commit in 0..50 {
        for f in 0..8 {
            let dir = work.join(format!("src/m{}", (commit * 8 + f) % 40));
            std::fs::create_dir_all(&dir).expect("dir");
            let body: String =
                (0..1000).map(|i| format!("line {i} of file {f} in commit {commit}\n")).collect::<String>();
            std::fs::write(dir.join(format!("f{f}-{}.txt", commit % 10)), body).expect("write");
        }
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", &format!("commit {commit}")]);
    }
    git(root.path(), &["clone", "-q", "--bare", work.to_str().expect("utf-8"), bare.to_str().expect("utf-8")]);
    git(&bare, &["config", "uploadpack.allowAnySHA1InWant", "true"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);
    let files = git(&work, &["ls-files"]).lines().count();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let mut daemon = Command::new("git")
        .args(["daemon", "--export-all", "--reuseaddr", "--listen=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", root.path().join("repos").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("git daemon");
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("git://127.0.0.1:{port}/app.git");

    let rounds = 9;
    let mut ours = Vec::new();
    let mut baseline = Vec::new();
    for round in 0..rounds {
        let dest = root.path().join(format!("ours-{round}"));
        let start = Instant::now();
        slipway_runner::checkout::shallow_checkout(
            &url,
            &sha,
            "refs/heads/main",
            &dest,
            None,
            &|_| {},
            &Default::default(),
        )
        .expect("our checkout");
        ours.push(start.elapsed());

        let dest = root.path().join(format!("git-{round}"));
        let start = Instant::now();
        let status = Command::new("git")
            .args(["clone", "-q", "--depth", "1", "--branch", "main", &url])
            .arg(&dest)
            .status()
            .expect("git clone");
        assert!(status.success());
        baseline.push(start.elapsed());
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    let (ours, baseline) = (median(ours), median(baseline));
    println!("clone: shallow checkout of a {files}-file, 50-commit repository over git://, median of {rounds}");
    slipway_tests::bench::report(&slipway_tests::bench::Figure {
        bench: "clone",
        what: "shallow checkout (git2, depth 1, by SHA)",
        unit: slipway_tests::bench::Unit::Milliseconds,
        ours: slipway_tests::bench::ms(ours),
        baseline: Some(("git clone --depth 1", slipway_tests::bench::ms(baseline))),
        target: Some(1.1),
    });
}
