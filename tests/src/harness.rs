//! Slipway's binaries as child processes, each test with its own database and queue prefix,
//! plus the HTTP calls tests make.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::{Proxy, free_port, unique};

/// A child process, killed on drop; its output goes to a log file kept for failures.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
    /// Where a runner serves its metrics.
    pub metrics_port: Option<u16>,
}

impl Proc {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to exit and returns whether it exited with 0.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// What the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Knobs of a test installation.
#[derive(Debug, Clone)]
pub struct SlipwayOptions {
    pub runners: usize,
    pub amqp_url: String,
    pub lease_seconds: u64,
    pub heartbeat_seconds: u64,
    pub health_timeout_seconds: u64,
    pub max_attempts: u32,
    /// The registry runners push to (default: `SLIPWAY_REGISTRY`).
    pub registry: Option<String>,
    /// More environment for every runner.
    pub runner_env: Vec<(String, String)>,
    /// More environment for the scheduler (overrides the harness's own).
    pub scheduler_env: Vec<(String, String)>,
    /// Put a [`Proxy`] between the scheduler and PostgreSQL, so the test can cut it.
    pub database_proxy: bool,
    /// Give the installation its own Caddy as the edge (`false`: runners run with the edge off).
    pub edge: bool,
}

impl Default for SlipwayOptions {
    fn default() -> Self {
        Self {
            runners: 1,
            amqp_url: crate::env("SLIPWAY_AMQP_URL"),
            lease_seconds: 30,
            heartbeat_seconds: 2,
            health_timeout_seconds: 20,
            max_attempts: 3,
            registry: None,
            runner_env: Vec::new(),
            scheduler_env: Vec::new(),
            database_proxy: false,
            edge: true,
        }
    }
}

/// One scheduler and its runners, on a fresh database.
pub struct Slipway {
    pub base: String,
    /// A client of the API, with the admin token.
    pub http: reqwest::Client,
    /// A client with no token (for apps, and for what anyone could send).
    pub anonymous: reqwest::Client,
    /// The admin API token the scheduler was started with.
    pub token: String,
    pub scheduler: Proc,
    /// Further scheduler replicas ([`Slipway::add_scheduler`]).
    pub more_schedulers: Vec<Proc>,
    pub runners: Vec<Proc>,
    pub database_url: String,
    /// The database URL the schedulers use (through the proxy, when there is one).
    scheduler_db: String,
    pub prefix: String,
    /// The proxy the scheduler reaches PostgreSQL through, with `database_proxy`.
    pub db_proxy: Option<Proxy>,
    /// The installation's private Caddy, when it has one.
    pub edge: Option<crate::caddy::Caddy>,
    options: SlipwayOptions,
    logs: tempfile::TempDir,
    apps: Vec<String>,
}

/// The path of one of Slipway's binaries, built beside the tests.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: build the binaries first (cargo build --workspace --bins)", path.display());
    path
}

impl Slipway {
    /// Creates a database, starts the scheduler and `options.runners` runners, and waits until
    /// the scheduler answers.
    pub async fn start(options: SlipwayOptions) -> Self {
        let prefix = unique("t").replace('-', "");
        let admin = crate::env("SLIPWAY_ADMIN_DATABASE_URL");
        let db_name = format!("slipway_{prefix}");
        psql(&admin, &format!("CREATE DATABASE {db_name}"));
        let database_url =
            admin.rsplit_once('/').map(|(base, _)| format!("{base}/{db_name}")).expect("admin url has a database");
        let logs = tempfile::tempdir().expect("log dir");
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let (scheduler_db, db_proxy) = match options.database_proxy {
            false => (database_url.clone(), None),
            true => {
                let host = database_url.split('@').nth(1).and_then(|h| h.split('/').next()).expect("db host:port");
                let proxy = Proxy::start(host).await;
                (database_url.replace(host, &format!("127.0.0.1:{}", proxy.port)), Some(proxy))
            }
        };
        let token = format!("slw_test_{}", uuid::Uuid::new_v4().simple());
        let scheduler = spawn_scheduler("scheduler", &logs, &token, port, &scheduler_db, &prefix, &options);
        let mut me = Self {
            base,
            http: client_with_token(&token),
            anonymous: reqwest::Client::new(),
            token,
            scheduler,
            runners: Vec::new(),
            database_url,
            scheduler_db,
            prefix,
            db_proxy,
            more_schedulers: Vec::new(),
            edge: options.edge.then(crate::caddy::Caddy::start),
            options: options.clone(),
            logs,
            apps: Vec::new(),
        };
        for _ in 0..options.runners {
            me.add_runner();
        }
        // Its port was free a moment ago, but anything may take it before the scheduler binds it
        // (a container's published port, from the same range): then it starts on another one.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let health = format!("{}/healthz", me.base);
            if me.http.get(&health).send().await.is_ok_and(|r| r.status().is_success()) {
                return me;
            }
            if me.scheduler.exited() {
                let output = me.scheduler.output();
                assert!(output.contains("in use"), "the scheduler exited at start:\n{output}");
                let port = free_port();
                me.base = format!("http://127.0.0.1:{port}");
                me.scheduler =
                    spawn_scheduler("scheduler", &me.logs, &me.token, port, &me.scheduler_db, &me.prefix, &me.options);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after 30s waiting for the scheduler to answer\n{}",
                me.scheduler.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts another scheduler replica of this installation (same database, broker, queues and
    /// state directory) and waits until it answers; returns its base URL.
    pub async fn add_scheduler(&mut self) -> String {
        let port = free_port();
        let name = format!("scheduler-{}", self.more_schedulers.len() + 2);
        let proc =
            spawn_scheduler(&name, &self.logs, &self.token, port, &self.scheduler_db, &self.prefix, &self.options);
        let base = format!("http://127.0.0.1:{port}");
        let health = format!("{base}/healthz");
        // Checked often: the footprint benchmark times a replica's start to ready with this.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.http.get(&health).send().await.is_ok_and(|r| r.status().is_success()) {
            assert!(tokio::time::Instant::now() < deadline, "timed out after 30s waiting for {name} to answer");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.more_schedulers.push(proc);
        base
    }

    /// SIGKILLs the first scheduler (if it still runs) and starts it again on its port; returns
    /// once it answers, with how long that took from the start.
    pub async fn restart_scheduler(&mut self) -> Duration {
        self.scheduler.kill9();
        let port: u16 = self.base.rsplit(':').next().and_then(|p| p.parse().ok()).expect("scheduler port");
        let started = std::time::Instant::now();
        self.scheduler = spawn_scheduler(
            "scheduler",
            &self.logs,
            &self.token,
            port,
            &self.scheduler_db,
            &self.prefix,
            &self.options,
        );
        let health = format!("{}/healthz", self.base);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.http.get(&health).send().await.is_ok_and(|r| r.status().is_success()) {
            assert!(
                tokio::time::Instant::now() < deadline && !self.scheduler.exited(),
                "the restarted scheduler did not answer:\n{}",
                self.scheduler.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    }

    /// Starts one more runner; its id is `runner-<n>`.
    pub fn add_runner(&mut self) -> String {
        let id = format!("runner-{}", self.runners.len() + 1);
        let proc = self.spawn_runner(&id);
        self.runners.push(proc);
        id
    }

    /// Starts runner `index` again under the same id (after it was killed), as a new life of it.
    pub fn restart_runner(&mut self, index: usize) {
        self.runners[index].kill9();
        let id = self.runners[index].name.clone();
        self.runners[index] = self.spawn_runner(&id);
    }

    fn spawn_runner(&self, id: &str) -> Proc {
        let id = id.to_string();
        let work = self.work_dir(&id);
        let metrics_port = free_port();
        let mut env = vec![
            ("SLIPWAY_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}")),
            ("SLIPWAY_RUNNER_ID", id.clone()),
            ("SLIPWAY_ALLOW_PRIVATE_GIT", "127.0.0.1".into()),
            ("SLIPWAY_AMQP_URL", self.options.amqp_url.clone()),
            ("SLIPWAY_QUEUE_PREFIX", self.prefix.clone()),
            ("SLIPWAY_REGISTRY", self.options.registry.clone().unwrap_or_else(|| crate::env("SLIPWAY_REGISTRY"))),
            ("SLIPWAY_HEARTBEAT_SECONDS", self.options.heartbeat_seconds.to_string()),
            ("SLIPWAY_HEALTH_TIMEOUT_SECONDS", self.options.health_timeout_seconds.to_string()),
            ("SLIPWAY_WORK_DIR", work.display().to_string()),
            ("SLIPWAY_DRAIN_SECONDS", "60".into()),
            // Shared by the installation's runners, as on one machine.
            ("SLIPWAY_SNAPSHOT_DIR", self.logs.path().join("snapshots").display().to_string()),
        ];
        match &self.edge {
            Some(caddy) => {
                env.push(("SLIPWAY_EDGE_ADMIN", caddy.admin()));
                env.push(("SLIPWAY_EDGE_LISTEN", format!("127.0.0.1:{}", caddy.edge_port)));
                env.push(("SLIPWAY_EDGE_DRAIN_SECONDS", "5".into()));
            }
            None => env.push(("SLIPWAY_EDGE_ADMIN", "off".into())),
        }
        env.extend(self.options.runner_env.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let life = self.runners.iter().filter(|r| r.name == id).count();
        let mut proc = spawn(&id, &format!("{id}.{life}"), &bin("slipway-runner"), &self.logs, &env);
        proc.metrics_port = Some(metrics_port);
        proc
    }

    /// Asks to cancel a deployment.
    pub async fn cancel(&self, id: &str, reason: &str) -> (u16, Value) {
        self.post(&format!("/api/v1/deployments/{id}/cancel"), &json!({"reason": reason})).await
    }

    /// Publishes `job` (a `proto::Job` as JSON) on the installation's jobs queue, as a stale or
    /// duplicate copy would arrive.
    pub async fn publish_job(&self, job: &Value) {
        self.publish("jobs", &serde_json::to_vec(job).expect("job json")).await;
    }

    /// Publishes raw bytes on the runner queue, as a runner (or something broken) would.
    pub async fn publish_runner_message(&self, body: &[u8]) {
        self.publish("runner", body).await;
    }

    async fn publish(&self, queue: &str, payload: &[u8]) {
        use lapin::options::BasicPublishOptions;
        let conn = lapin::Connection::connect(&self.options.amqp_url, lapin::ConnectionProperties::default())
            .await
            .expect("amqp");
        let channel = conn.create_channel().await.expect("channel");
        channel.confirm_select(Default::default()).await.expect("confirms");
        // Declared the way Slipway declares it, so nothing is dropped for want of a queue.
        slipway_broker::declare(&channel, &slipway_proto::Topology::new(&self.prefix)).await.expect("declare");
        let queue = format!("{}.{queue}", self.prefix);
        let props = lapin::BasicProperties::default().with_delivery_mode(2);
        channel
            .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), payload, props)
            .await
            .expect("publish")
            .await
            .expect("confirm");
        let _ = conn.close(200, "bye".into()).await;
    }

    /// The broker the installation uses.
    pub fn amqp_url(&self) -> &str {
        &self.options.amqp_url
    }

    /// The work directory of runner `id` (where its job workspaces are made).
    pub fn work_dir(&self, id: &str) -> PathBuf {
        self.logs.path().join(format!("{id}-work"))
    }

    /// The path of the CLI binary.
    pub fn cli(&self) -> PathBuf {
        bin("slipway")
    }

    /// The CLI, pointed at this scheduler with the admin token, reading no config file.
    /// Where the installation's runners keep database snapshots.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.logs.path().join("snapshots")
    }

    pub fn cli_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.cli());
        cmd.env("SLIPWAY_URL", &self.base)
            .env("SLIPWAY_TOKEN", &self.token)
            .env("SLIPWAY_CONFIG", self.logs.path().join("cli-config.toml"));
        cmd
    }

    /// A client of the API with another token.
    pub fn client(&self, token: &str) -> reqwest::Client {
        client_with_token(token)
    }

    /// Creates an API token (as admin) and returns its value.
    pub async fn create_token(&self, name: &str, role: &str, app: Option<&str>) -> String {
        let (status, body) = self.post("/api/v1/tokens", &json!({"name": name, "role": role, "app": app})).await;
        assert_eq!(status, 201, "creating token {name}: {body}");
        body["token"].as_str().expect("token value").to_string()
    }

    /// Everything the processes printed, for failure messages.
    pub fn dump(&self) -> String {
        let mut out = format!("--- scheduler\n{}", self.scheduler.output());
        for r in self.more_schedulers.iter().chain(&self.runners) {
            out.push_str(&format!("--- {}\n{}", r.name, r.output()));
        }
        out
    }

    /// Registers an app named `unique(stem)` following `repo_url`; returns its name.
    pub async fn create_app(&mut self, stem: &str, repo_url: &str, secret: &str, extra: Value) -> String {
        let name = unique(stem);
        let mut body = json!({"name": name, "repo_url": repo_url, "webhook_secret": secret, "health_path": "/healthz"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, answer) = self.post("/api/v1/apps", &body).await;
        assert_eq!(status, 201, "creating app: {answer}");
        self.apps.push(name.clone());
        name
    }

    /// POSTs JSON, returning status and body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self.http.post(format!("{}{path}", self.base)).json(body).send().await.expect("scheduler reachable");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// PATCHes JSON, returning status and body.
    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp =
            self.http.patch(format!("{}{path}", self.base)).json(body).send().await.expect("scheduler reachable");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// GETs JSON.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await.expect("scheduler reachable");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Sends a GitHub webhook with the given headers and raw body.
    pub async fn webhook(&self, headers: &[(&str, String)], body: Vec<u8>) -> (u16, Value) {
        self.webhook_at(&self.base, headers, body).await.expect("scheduler reachable")
    }

    /// Sends a GitHub webhook to the scheduler at `base`; `None` when it does not answer.
    pub async fn webhook_at(&self, base: &str, headers: &[(&str, String)], body: Vec<u8>) -> Option<(u16, Value)> {
        let mut req =
            self.anonymous.post(format!("{base}/api/v1/webhooks/github")).header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.body(body).send().await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// Sends a correctly signed `push` of `sha` to `main` of `repo_url`.
    pub async fn push(&self, repo_url: &str, sha: &str, secret: &str, delivery: &str) -> (u16, Value) {
        self.push_to(&self.base, repo_url, sha, secret, delivery).await.expect("scheduler reachable")
    }

    /// [`Slipway::push`] to the scheduler at `base`; `None` when it does not answer.
    pub async fn push_to(
        &self,
        base: &str,
        repo_url: &str,
        sha: &str,
        secret: &str,
        delivery: &str,
    ) -> Option<(u16, Value)> {
        let body = push_body(repo_url, "refs/heads/main", sha);
        let headers = [
            ("X-GitHub-Event", "push".to_string()),
            ("X-GitHub-Delivery", delivery.to_string()),
            ("X-Hub-Signature-256", sign(secret, &body)),
        ];
        self.webhook_at(base, &headers, body).await
    }

    /// The deployment, with its steps.
    pub async fn deployment(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/deployments/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until the deployment is in a terminal state and returns it.
    pub async fn finished(&self, id: &str, timeout: Duration) -> Value {
        let result = tokio::time::timeout(timeout, async {
            loop {
                let d = self.deployment(id).await;
                if matches!(d["state"].as_str(), Some("completed" | "failed" | "cancelled")) {
                    return d;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        match result {
            Ok(d) => d,
            Err(_) => panic!(
                "deployment {id} did not finish within {timeout:?}: {}\n{}",
                self.deployment(id).await,
                self.dump()
            ),
        }
    }

    /// Every log line of a deployment (not following), from the SSE endpoint.
    pub async fn log_lines(&self, id: &str, last_event_id: Option<&str>) -> Vec<(String, String)> {
        let events = self.sse(id, false, last_event_id).await;
        events.into_iter().filter(|(event, _, _)| event == "log").map(|(_, id, line)| (id, line)).collect()
    }

    /// The events of the log stream as (event, id, line for `log` or data otherwise).
    pub async fn sse(&self, id: &str, follow: bool, last_event_id: Option<&str>) -> Vec<(String, String, String)> {
        sse_at(&self.http, &self.base, id, follow, last_event_id).await
    }

    /// How many deployments the app has.
    pub async fn deployments_of(&self, app: &str) -> Vec<Value> {
        let (_, list) = self.get(&format!("/api/v1/deployments?app={app}")).await;
        list.as_array().cloned().unwrap_or_default()
    }

    /// Fetches `path` from a deployed app.
    pub async fn app_body(&self, url: &str, path: &str) -> Option<String> {
        let resp = app_request(&self.anonymous, url, path).timeout(Duration::from_secs(3)).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.text().await.ok()
    }
}

impl Drop for Slipway {
    /// Removes what the test left: app containers, the database, the queues and exchanges.
    fn drop(&mut self) {
        self.scheduler.kill9();
        for scheduler in &mut self.more_schedulers {
            scheduler.kill9();
        }
        for runner in &mut self.runners {
            runner.kill9();
        }
        // Every app of the installation, also those registered through the CLI.
        let registered =
            Command::new("psql").args([self.database_url.as_str(), "-AtXc", "SELECT name FROM apps"]).output();
        let mut apps = self.apps.clone();
        if let Ok(out) = registered {
            apps.extend(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string));
        }
        let admin = crate::env("SLIPWAY_ADMIN_DATABASE_URL");
        if let Some((_, db)) = self.database_url.rsplit_once('/') {
            let _ = Command::new("psql")
                .args([admin.as_str(), "-qXc", &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")])
                .output();
        }
        let (url, prefix) = (self.options.amqp_url.clone(), self.prefix.clone());
        let _ = std::thread::spawn(move || crate::rabbit::delete_topology(&url, &prefix)).join();
        for app in &apps {
            if let Ok(ids) = crate::docker(&["ps", "-aq", "--filter", &format!("label=dev.slipway.app={app}")]) {
                for id in ids.split_whitespace() {
                    let _ = crate::docker(&["rm", "-f", id]);
                }
            }
        }
        // The installation's app networks (named and labelled after its queue prefix).
        let filter = format!("label=dev.slipway.installation={}", self.prefix);
        if let Ok(ids) = crate::docker(&["network", "ls", "-q", "--filter", &filter]) {
            for id in ids.split_whitespace() {
                let _ = crate::docker(&["network", "rm", id]);
            }
        }
    }
}

fn client_with_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {token}").parse().expect("token is a header value");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder().default_headers(headers).build().expect("http client")
}

fn spawn(name: &str, log_name: &str, path: &PathBuf, logs: &tempfile::TempDir, env: &[(&str, String)]) -> Proc {
    let log = logs.path().join(format!("{log_name}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let err = file.try_clone().expect("log file clone");
    let mut cmd = Command::new(path);
    cmd.env("SLIPWAY_LOG", "info,slipway=debug").stdout(Stdio::from(file)).stderr(Stdio::from(err));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
    Proc { name: name.to_string(), child, log, metrics_port: None }
}

/// A GET of `path` on an app's `url`. A `*.localhost` host is sent to 127.0.0.1 with its name in
/// the Host header (as browsers and curl do; the system resolver here does not know the names).
/// Starts a scheduler of the installation `prefix` listening on `port`.
fn spawn_scheduler(
    name: &str,
    logs: &tempfile::TempDir,
    token: &str,
    port: u16,
    database_url: &str,
    prefix: &str,
    options: &SlipwayOptions,
) -> Proc {
    let env = [
        ("SLIPWAY_ADMIN_TOKEN", token.to_string()),
        ("SLIPWAY_STATE_DIR", logs.path().join("state").display().to_string()),
        ("SLIPWAY_ALLOW_PRIVATE_GIT", "127.0.0.1".into()),
        ("SLIPWAY_LISTEN", format!("127.0.0.1:{port}")),
        ("DATABASE_URL", database_url.to_string()),
        ("SLIPWAY_AMQP_URL", options.amqp_url.clone()),
        ("SLIPWAY_QUEUE_PREFIX", prefix.to_string()),
        ("SLIPWAY_LEASE_SECONDS", options.lease_seconds.to_string()),
        ("SLIPWAY_MAX_ATTEMPTS", options.max_attempts.to_string()),
        // Tests push on purpose; the reconcile test turns it on with its own interval.
        ("SLIPWAY_RECONCILE_SECONDS", "0".to_string()),
    ];
    let env: Vec<(&str, String)> =
        env.into_iter().chain(options.scheduler_env.iter().map(|(k, v)| (k.as_str(), v.clone()))).collect();
    spawn(name, name, &bin("slipway-scheduler"), logs, &env)
}

/// The events of a deployment's log stream from the scheduler at `base`, as (event, id, line for
/// `log` or data otherwise); with `follow`, until the deployment ends.
pub async fn sse_at(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    follow: bool,
    last_event_id: Option<&str>,
) -> Vec<(String, String, String)> {
    let mut req = http.get(format!("{base}/api/v1/deployments/{id}/logs?follow={follow}"));

    if let Some(last) = last_event_id {
        req = req.header("Last-Event-ID", last);
    }
    let text = req.send().await.expect("logs reachable").text().await.expect("logs body");
    parse_sse(&text)
        .into_iter()
        .map(|(event, id, data)| match event.as_str() {
            "log" => {
                let v: Value = serde_json::from_str(&data).expect("log event is JSON");
                (event, id, v["line"].as_str().unwrap_or_default().to_string())
            }
            _ => (event, id, data),
        })
        .collect()
}

pub fn app_request(client: &reqwest::Client, url: &str, path: &str) -> reqwest::RequestBuilder {
    let parsed = url.strip_prefix("http://").and_then(|rest| rest.split_once(':'));
    match parsed {
        Some((host, port)) if host.ends_with(".localhost") => {
            client.get(format!("http://127.0.0.1:{port}{path}")).header("host", format!("{host}:{port}"))
        }
        _ => client.get(format!("{url}{path}")),
    }
}

/// A GitHub-shaped push payload.
pub fn push_body(repo_url: &str, git_ref: &str, sha: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ref": git_ref, "before": "0000000000000000000000000000000000000000", "after": sha,
        "created": false, "deleted": false, "forced": false,
        "repository": {"full_name": "test/repo", "clone_url": repo_url, "html_url": repo_url},
        "pusher": {"name": "test"}, "commits": []
    }))
    .expect("json")
}

/// `sha256=<hex hmac>` as GitHub sends it.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Parses an SSE body into (event, id, data) triples.
pub fn parse_sse(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut fields: HashMap<&str, String> = HashMap::new();
        for line in block.lines() {
            if let Some((k, v)) = line.split_once(':') {
                fields.entry(k).or_default().push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if let Some(event) = fields.get("event") {
            out.push((
                event.clone(),
                fields.get("id").cloned().unwrap_or_default(),
                fields.get("data").cloned().unwrap_or_default(),
            ));
        }
    }
    out
}

/// Runs one SQL statement with psql against `url`.
/// Runs one SQL statement with psql against `url`; tries again while another session holds the
/// template database (concurrent `CREATE DATABASE` of tests running side by side).
/// The value of a query, as `psql -tA` prints it.
pub fn psql_value(url: &str, sql: &str) -> String {
    let out = Command::new("psql").args([url, "-qXtAc", sql]).output().expect("run psql");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn psql(url: &str, sql: &str) {
    for _ in 0..50 {
        let out = Command::new("psql").args([url, "-qXc", sql]).output().expect("run psql");
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is being accessed by other users"), "psql {sql}: {err}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("psql {sql}: the template database stayed busy");
}
