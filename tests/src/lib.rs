//! The end-to-end harness: real PostgreSQL, RabbitMQ, Docker, registry and `git daemon`, with
//! Slipway's own binaries started as processes (so a test can SIGKILL one). Each test gets its
//! own database, queue prefix, app names and git server, so tests run side by side.
//!
//! Services come from `scripts/services` (which `scripts/test` runs first); the variables it
//! prints are read here.

pub mod apiserver;
pub mod bench;
pub mod caddy;
pub mod faults;
pub mod git;
pub mod harness;
pub mod otlp;
pub mod prometheus;
pub mod proxy;
pub mod rabbit;

use std::future::Future;
use std::time::Duration;

pub use git::GitServer;
pub use harness::{Proc, Slipway, SlipwayOptions, sse_at};
pub use proxy::{Proxy, UnixProxy};
pub use rabbit::PrivateBroker;

/// Waits until `check` returns `Some`, polling every 200 ms, or panics naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// A short random suffix for names that must not collide between tests.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// A required environment variable, with a hint when it is missing.
pub fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests through scripts/test (it starts the services)"))
}

/// Runs `docker` with `args` (never through a shell) and returns stdout, or stderr on failure.
/// Every file of the fixture repository `tests/fixtures/<name>`, as (path relative to it, text),
/// sorted by path.
pub fn fixture_files(name: &str) -> Vec<(String, String)> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).expect("fixture dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("inside").to_string_lossy().into_owned();
                out.push((rel, std::fs::read_to_string(&path).expect("fixture file")));
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    files.sort();
    files
}

pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("docker").args(args).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
