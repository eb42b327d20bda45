//! A private Prometheus (the Debian package's binary) on a free loopback port, scraping the
//! targets it is given every second, with its own data directory; stopped on drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{eventually, free_port};

/// One scrape job: a name, `host:port` targets, and the bearer token file, if any.
pub struct ScrapeJob<'a> {
    pub name: &'a str,
    pub targets: Vec<String>,
    pub credentials_file: Option<&'a std::path::Path>,
}

pub struct Prometheus {
    pub base: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` and waits until it is ready.
    pub async fn start(jobs: &[ScrapeJob<'_>]) -> Self {
        let dir = tempfile::tempdir().expect("prometheus dir");
        let mut config = String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for job in jobs {
            config.push_str(&format!("  - job_name: {}\n", job.name));
            if let Some(file) = job.credentials_file {
                config.push_str(&format!("    authorization:\n      credentials_file: {}\n", file.display()));
            }
            let targets: Vec<String> = job.targets.iter().map(|t| format!("'{t}'")).collect();
            config.push_str(&format!("    static_configs:\n      - targets: [{}]\n", targets.join(", ")));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::from(log.try_clone().expect("log clone")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prometheus (scripts/services installs the Debian package)");
        let me = Self { base: format!("http://127.0.0.1:{port}"), child, _dir: dir };
        let ready = format!("{}/-/ready", me.base);
        eventually(Duration::from_secs(30), "prometheus to be ready", || {
            let ready = ready.clone();
            async move { reqwest::get(&ready).await.ok().filter(|r| r.status().is_success()) }
        })
        .await;
        me
    }

    /// The result vector of an instant query: (labels, value) pairs.
    pub async fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let encoded = percent_encoding::utf8_percent_encode(promql, percent_encoding::NON_ALPHANUMERIC);
        let url = format!("{}/api/v1/query?query={encoded}", self.base);
        let Ok(answer) = reqwest::get(&url).await else {
            return Vec::new();
        };
        let body: Value = answer.json().await.unwrap_or_default();
        body["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["metric"].clone(), r["value"][1].as_str()?.parse().ok()?)))
            .collect()
    }

    /// What Prometheus printed, for failure messages.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `promtool check metrics` on `text`; Err with what it said when it finds a problem.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool: {e}"))?;
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    match out.status.success() && said.trim().is_empty() {
        true => Ok(()),
        false => Err(said),
    }
}
