//! The fault suite's bookkeeping: a fleet of apps, each a chain of commits pushed as a forge
//! pushes them (with the commit before), and a ledger of what became of every delivery — sent,
//! acknowledged, refused — and, once the fault is over, of every deployment: created, completed,
//! duplicated, lost, and what was left behind on the machine. `tests/tests/faults.rs` uses it;
//! each fault prints one `fault <name>: …` line and appends it as JSON to the file
//! `SLIPWAY_FAULTS_JSON` names (`scripts/faults` gathers them).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::git::Entry;
use crate::harness::{psql_value, sign};
use crate::{GitServer, Slipway, unique};

const ZERO: &str = "0000000000000000000000000000000000000000";

/// Whether the suite runs at the sizes (`SLIPWAY_FAULTS_FULL=1`, as `scripts/faults`
/// runs it) rather than the smaller ones CI runs.
pub fn full() -> bool {
    std::env::var("SLIPWAY_FAULTS_FULL").is_ok_and(|v| v == "1")
}

/// `ci` in CI, `full` under `scripts/faults`.
pub fn sized<T>(ci: T, full_size: T) -> T {
    if full() { full_size } else { ci }
}

/// One push of a commit to an app's branch, as a forge sends it.
#[derive(Debug, Clone)]
pub struct Push {
    pub app: String,
    pub url: String,
    pub sha: String,
    /// The commit the branch pointed at before (the previous push's).
    pub before: String,
    pub delivery: String,
    pub secret: String,
}

impl Push {
    /// The same push with a new delivery id (the forge sending it again as a new event).
    pub fn anew(&self) -> Push {
        Push { delivery: unique("delivery"), ..self.clone() }
    }
}

/// Apps registered on an installation, each with its own repository of a small site.
pub struct Fleet {
    pub apps: Vec<FleetApp>,
}

pub struct FleetApp {
    pub name: String,
    pub repo: String,
    pub url: String,
    pub secret: String,
    /// The last commit made (the branch's head).
    pub head: String,
}

/// A site whose every commit is a new image: `run` runs in the build after the commit's own
/// files are copied (`true`, or `sleep 1` to give the build a duration).
pub fn site(git: &GitServer, repo: &str, marker: &str, run: &str) -> String {
    let dockerfile = format!(
        "FROM slipway/busybox:1\nCOPY www /www\nRUN {run}\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
    );
    let index = format!("<p>{marker}</p>\n");
    git.commit(
        repo,
        marker,
        &[
            Entry::File("Dockerfile", dockerfile.as_bytes()),
            Entry::File("www/index.html", index.as_bytes()),
            Entry::File("www/healthz", b"ok\n"),
        ],
    )
}

impl Fleet {
    /// Apps registered some other way, by name (for [`leftovers_now`]).
    pub fn named(names: &[&str]) -> Self {
        let app = |name: &&str| FleetApp {
            name: name.to_string(),
            repo: String::new(),
            url: String::new(),
            secret: String::new(),
            head: ZERO.into(),
        };
        Self { apps: names.iter().map(app).collect() }
    }

    /// Registers `count` apps, each with a repository and no commit yet.
    pub async fn register(s: &mut Slipway, git: &GitServer, stem: &str, count: usize) -> Self {
        Self::register_via(s, git, stem, count, None).await
    }

    /// [`Fleet::register`], with the repositories reached through a proxy on `via` (a port).
    pub async fn register_via(s: &mut Slipway, git: &GitServer, stem: &str, count: usize, via: Option<u16>) -> Self {
        let mut apps = Vec::new();
        for i in 0..count {
            let repo = unique(&format!("{stem}{i}"));
            let url = match via {
                None => git.url(&repo),
                Some(port) => git.url(&repo).replace(&git.address(), &format!("127.0.0.1:{port}")),
            };
            let secret = format!("fault-secret-{}", unique("s"));
            let name = s.create_app(&format!("{stem}{i}"), &url, &secret, json!({})).await;
            apps.push(FleetApp { name, repo, url, secret, head: ZERO.into() });
        }
        Self { apps }
    }

    /// Push `i` of a stream, round-robin over the apps: a new commit on its app's branch, made
    /// now (so it is the branch's head when it is pushed, as a developer's push is).
    pub fn next(&mut self, git: &GitServer, i: usize, run: &str) -> Push {
        let n = self.apps.len();
        let app = &mut self.apps[i % n];
        let sha = site(git, &app.repo, &unique(&format!("v{i}")), run);
        Push {
            app: app.name.clone(),
            url: app.url.clone(),
            sha: sha.clone(),
            before: std::mem::replace(&mut app.head, sha),
            delivery: unique("delivery"),
            secret: app.secret.clone(),
        }
    }

    /// `count` pushes made ahead (all but each app's last are past by the time they arrive).
    pub fn commits(&mut self, git: &GitServer, count: usize, run: &str) -> Vec<Push> {
        (0..count).map(|i| self.next(git, i, run)).collect()
    }
}

/// Sends one push to the scheduler at `base`: the status, or `None` when nothing answered, and
/// the answer.
pub async fn deliver(http: &reqwest::Client, base: &str, push: &Push) -> (Option<u16>, Value) {
    let body = serde_json::to_vec(&json!({
        "ref": "refs/heads/main", "before": push.before, "after": push.sha,
        "created": push.before == ZERO, "deleted": false, "forced": false,
        "repository": {"full_name": "test/repo", "clone_url": push.url, "html_url": push.url},
        "pusher": {"name": "test"}, "commits": []
    }))
    .expect("json");
    let resp = http
        .post(format!("{base}/api/v1/webhooks/github"))
        .header("content-type", "application/json")
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", &push.delivery)
        .header("X-Hub-Signature-256", sign(&push.secret, &body))
        .timeout(Duration::from_secs(15))
        .body(body)
        .send()
        .await;
    match resp {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (Some(status), resp.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (None, Value::Null),
    }
}

/// What became of the deliveries of one fault.
pub struct Ledger {
    pub fault: String,
    pub sent: u64,
    /// Deliveries answered 2xx.
    pub acknowledged: u64,
    /// Deliveries answered otherwise, by status (`none`: no answer).
    pub refused: BTreeMap<String, u64>,
    /// Pushes refused or unanswered, which a forge sends again.
    pub to_redeliver: Vec<Push>,
    pub redelivered: u64,
    /// Every deployment an acknowledgement named, with the app and commit it was for.
    pub named: BTreeMap<String, (String, String)>,
    /// Acknowledgements that named no deployment.
    pub unnamed: Vec<String>,
    /// Figures of the fault itself (reconnection time, ...), printed with the counts.
    pub figures: Vec<(String, String)>,
    started: Instant,
}

impl Ledger {
    pub fn new(fault: &str) -> Self {
        Self {
            fault: fault.to_string(),
            sent: 0,
            acknowledged: 0,
            refused: BTreeMap::new(),
            to_redeliver: Vec::new(),
            redelivered: 0,
            named: BTreeMap::new(),
            unnamed: Vec::new(),
            figures: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Sends `push` to the scheduler and records the answer; returns the deployments it named.
    pub async fn send(&mut self, s: &Slipway, push: &Push) -> Vec<String> {
        let (status, answer) = deliver(&s.anonymous, &s.base, push).await;
        self.record(push, status, &answer)
    }

    /// Records one delivery's answer; returns the deployments it named.
    pub fn record(&mut self, push: &Push, status: Option<u16>, answer: &Value) -> Vec<String> {
        self.sent += 1;
        match status {
            Some(200..=299) => {
                self.acknowledged += 1;
                let ids: Vec<&str> = answer["deployments"]
                    .as_array()
                    .map(|ds| ds.iter().filter_map(|d| d["deployment_id"].as_str()).collect())
                    .unwrap_or_default();
                if ids.is_empty() {
                    self.unnamed.push(format!("{} {}: {answer}", push.app, push.sha));
                }
                for id in &ids {
                    self.named.insert(id.to_string(), (push.app.clone(), push.sha.clone()));
                }
                ids.into_iter().map(str::to_string).collect()
            }
            other => {
                let key = other.map_or("none".to_string(), |c| c.to_string());
                *self.refused.entry(key).or_default() += 1;
                self.to_redeliver.push(push.clone());
                Vec::new()
            }
        }
    }

    /// Sends every refused or unanswered push again, as the forge does, until each is
    /// acknowledged (or `within` passes).
    pub async fn redeliver(&mut self, s: &Slipway, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.to_redeliver.is_empty() && Instant::now() < deadline {
            for push in std::mem::take(&mut self.to_redeliver) {
                self.redelivered += 1;
                self.send(s, &push).await;
            }
            if !self.to_redeliver.is_empty() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// Adds a figure of the fault (`reconnected`, `1234 ms`).
    pub fn figure(&mut self, what: &str, value: String) {
        self.figures.push((what.to_string(), value));
    }

    /// Waits (up to `within`) until every named deployment has ended and nothing is left behind,
    /// then counts.
    pub async fn settle(&self, s: &Slipway, fleet: &Fleet, within: Duration) -> Outcome {
        let deadline = Instant::now() + within;
        let ids: Vec<String> = self.named.keys().cloned().collect();
        let id_list = format!("'{{{}}}'::uuid[]", ids.join(","));
        let open = || {
            psql_value(
                &s.database_url,
                &format!(
                    "SELECT count(*) FROM unnest({id_list}) AS x(id)
                      LEFT JOIN deployments d ON d.id = x.id
                      WHERE d.id IS NULL OR d.state NOT IN ('completed', 'failed', 'cancelled')"
                ),
            )
            .parse::<u64>()
            .unwrap_or(u64::MAX)
        };
        while open() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let mut leftovers = leftovers_now(s, fleet).await;
        while !leftovers.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            leftovers = leftovers_now(s, fleet).await;
        }
        let count = |sql: &str| psql_value(&s.database_url, sql).parse::<u64>().unwrap_or(u64::MAX);
        let by_state = |state: &str| count(&format!("SELECT count(*) FROM deployments WHERE state = '{state}'"));
        // Two deployments of one app and commit; two attempts of one deployment that both rolled
        // out; two attempts whose builds ran at the same time (two runners on one job).
        let duplicated = count(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM deployments WHERE sha <> ''
                       GROUP BY app_id, sha, environment HAVING count(*) > 1) x)
                  + (SELECT count(*) FROM (SELECT 1 FROM deployment_steps WHERE step = 'deploy' AND status = 'succeeded'
                       GROUP BY deployment_id HAVING count(*) > 1) y)
                  + (SELECT count(*) FROM deployment_steps a JOIN deployment_steps b
                       ON a.deployment_id = b.deployment_id AND a.step = 'build' AND b.step = 'build'
                      AND a.attempt < b.attempt AND a.status = 'succeeded' AND b.started_at < a.finished_at)",
        );
        // Each app's branch head is what serves, unless that commit failed on its own merits.
        let mut stale = Vec::new();
        for app in &fleet.apps {
            if app.head == ZERO {
                continue;
            }
            let live = psql_value(
                &s.database_url,
                &format!(
                    "SELECT d.sha FROM deployments d JOIN apps a ON a.id = d.app_id
                      WHERE a.name = '{}' AND d.state = 'completed' ORDER BY d.finished_at DESC LIMIT 1",
                    app.name
                ),
            );
            if live != app.head {
                let head_state = psql_value(
                    &s.database_url,
                    &format!(
                        "SELECT d.state || ' ' || coalesce(d.error_cause, '') || ' ' || coalesce(d.cancel_reason, d.error_message, '')
                           FROM deployments d JOIN apps a ON a.id = d.app_id
                          WHERE a.name = '{}' AND d.sha = '{}'",
                        app.name, app.head
                    ),
                );
                stale.push(format!("{}: serves {live:.10}, head {:.10} is {head_state}", app.name, app.head));
            }
        }
        Outcome {
            created: count("SELECT count(*) FROM deployments"),
            completed: by_state("completed"),
            failed: by_state("failed"),
            cancelled: by_state("cancelled"),
            duplicated,
            lost: open() + self.unnamed.len() as u64,
            stale,
            leftovers,
        }
    }

    /// Prints the fault's line (and its JSON, to `SLIPWAY_FAULTS_JSON`).
    pub fn report(&self, o: &Outcome) {
        let refused: Vec<String> = self.refused.iter().map(|(k, v)| format!("{v}x {k}")).collect();
        let figures: String = self.figures.iter().map(|(k, v)| format!("; {k} {v}")).collect();
        println!(
            "fault {}: sent {}, acknowledged {}, refused {} ({}), redelivered {}, created {}, completed {}, failed {}, \
             cancelled {}, duplicated {}, lost {}, leftovers {}, heads not live {}{figures} ({:.0} s)",
            self.fault,
            self.sent,
            self.acknowledged,
            self.refused.values().sum::<u64>(),
            if refused.is_empty() { "none".to_string() } else { refused.join(", ") },
            self.redelivered,
            o.created,
            o.completed,
            o.failed,
            o.cancelled,
            o.duplicated,
            o.lost,
            o.leftovers.len(),
            o.stale.len(),
            self.started.elapsed().as_secs_f64(),
        );
        for l in &o.leftovers {
            println!("  leftover: {l}");
        }
        for l in &o.stale {
            println!("  head not live: {l}");
        }
        for l in &self.unnamed {
            println!("  acknowledged without a deployment: {l}");
        }
        publish(json!({
                "fault": self.fault, "sent": self.sent, "acknowledged": self.acknowledged,
                "refused": self.refused, "redelivered": self.redelivered, "created": o.created,
                "completed": o.completed, "failed": o.failed, "cancelled": o.cancelled,
                "duplicated": o.duplicated, "lost": o.lost, "leftovers": o.leftovers,
                "heads_not_live": o.stale, "figures": self.figures.iter().cloned().collect::<BTreeMap<_, _>>(),
                "seconds": self.started.elapsed().as_secs_f64(),
        }));
    }
}

/// Appends one fault's figures as a JSON line to the file `SLIPWAY_FAULTS_JSON` names.
pub fn publish(line: Value) {
    if let Ok(path) = std::env::var("SLIPWAY_FAULTS_JSON")
        && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// The counts of one fault, once it is over.
#[derive(Debug)]
pub struct Outcome {
    pub created: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub duplicated: u64,
    /// Acknowledged and never ended (or acknowledged naming no deployment).
    pub lost: u64,
    /// Apps whose branch head is not what serves, with why.
    pub stale: Vec<String>,
    pub leftovers: Vec<String>,
}

impl Outcome {
    /// Fails the test unless nothing was lost, duplicated or left behind, and every app serves
    /// its head.
    pub fn assert_clean(&self, s: &Slipway) {
        assert!(
            self.lost == 0 && self.duplicated == 0 && self.leftovers.is_empty() && self.stale.is_empty(),
            "lost {}, duplicated {}, leftovers {:?}, heads not live {:?}\n{}",
            self.lost,
            self.duplicated,
            self.leftovers,
            self.stale,
            s.dump()
        );
    }
}

/// What the installation has on the machine beyond what serves: app containers other than each
/// app's live one and the one stopped container kept for a rollback, build and test containers,
/// temporary images, job workspaces, and edge routes to anything but a live container.
pub async fn leftovers_now(s: &Slipway, fleet: &Fleet) -> Vec<String> {
    let mut found = Vec::new();
    let docker = |args: &[&str]| crate::docker(args).unwrap_or_default();
    let mut live_ports = BTreeSet::new();
    for app in &fleet.apps {
        let deployed = psql_value(
            &s.database_url,
            &format!(
                "SELECT count(*) FROM deployments d JOIN apps a ON a.id = d.app_id
                  WHERE a.name = '{}' AND d.state = 'completed'",
                app.name
            ),
        );
        let listing = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=dev.slipway.app={}", app.name),
            "--format",
            "{{.Names}} {{.State}} {{.Ports}}",
        ]);
        // What serves (one running container) and the previous version kept stopped for an
        // instant rollback (one more); anything beyond is left over.
        let (mut running, mut stopped) = (0, 0);
        for line in listing.lines() {
            let mut parts = line.split_whitespace();
            let (name, state) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let ports = parts.collect::<Vec<_>>().join(" ");
            match state {
                "running" if running == 0 => {
                    running += 1;
                    // 127.0.0.1:49153->8080/tcp
                    if let Some(port) = ports.split("->").next().and_then(|hp| hp.rsplit(':').next()) {
                        live_ports.insert(port.to_string());
                    }
                }
                "exited" | "created" if stopped == 0 => stopped += 1,
                _ => found.push(format!("container {name} ({state}) of {}", app.name)),
            }
        }
        if running == 0 && deployed != "0" {
            found.push(format!("{}: deployed, but no container serves it", app.name));
        }
    }
    let installation = format!("label=dev.slipway.installation={}", s.prefix);
    let helpers = docker(&[
        "ps",
        "-a",
        "--filter",
        &installation,
        "--filter",
        "label=dev.slipway.runner",
        "--format",
        "{{.Names}}",
    ]);
    for name in helpers.lines() {
        found.push(format!("build or test container {name}"));
    }
    for runner in &s.runners {
        let dir = s.work_dir(&runner.name);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with("slipway-job-") {
                    found.push(format!("workspace {}", e.path().display()));
                }
            }
        }
    }
    // Temporary images: labelled `<runner>/<deployment>`, for this installation's deployments.
    let jobs =
        docker(&["images", "--filter", "label=dev.slipway.job", "--format", "{{.ID}} {{.Label \"dev.slipway.job\"}}"]);
    let ours: BTreeSet<String> = psql_value(&s.database_url, "SELECT string_agg(id::text, ' ') FROM deployments")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    for line in jobs.lines() {
        if let Some((id, job)) = line.split_once(' ')
            && job.rsplit('/').next().is_some_and(|d| ours.contains(d))
        {
            found.push(format!("temporary image {id} ({job})"));
        }
    }
    if let Some(edge) = &s.edge {
        let server = format!("slipway-{}", s.prefix);
        let routes: Value =
            match reqwest::get(format!("{}/config/apps/http/servers/{server}/routes", edge.admin())).await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
        for route in routes.as_array().into_iter().flatten() {
            let id = route["@id"].as_str().unwrap_or("");
            if id.ends_with("-unrouted") {
                continue;
            }
            let dial = route["handle"][0]["routes"][0]["handle"][0]["upstreams"][0]["dial"].as_str().unwrap_or("");
            let port = dial.rsplit(':').next().unwrap_or("");
            if !live_ports.contains(port) {
                found.push(format!("route {id} to {dial}, which no live container publishes"));
            }
        }
    }
    found
}
