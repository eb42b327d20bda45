//! Scale-out on the real services: two scheduler replicas on one PostgreSQL and one RabbitMQ,
//! webhooks sent to both, logs followed on the one that did not take the webhook, and the
//! leader killed with SIGKILL in the middle of the load.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, eventually, sse_at, unique};

const SECRET: &str = "scaling-secret-0123456789";
const LINES: usize = 150;

/// A site whose build prints `LINES` numbered lines (its own, so no build cache skips them) and
/// takes a moment, so jobs overlap the kill.
fn commit(git: &GitServer, repo: &str, marker: &str) -> String {
    let dockerfile = format!(
        "FROM slipway/busybox:1\nRUN i=1; while [ $i -le {LINES} ]; do echo \"build-line-$i of {marker}\"; i=$((i+1)); done; sleep 1\n\
         COPY www /www\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
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

#[tokio::test]
async fn with_two_schedulers_and_one_killed_every_acknowledged_webhook_deploys_once_and_every_line_arrives() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { runners: 2, ..Default::default() }).await;
    let a = s.base.clone();
    let b = s.add_scheduler().await;
    // The first scheduler took the leadership (it started first); the second answers all the same.
    eventually(Duration::from_secs(10), "the first scheduler to lead", || async {
        s.scheduler.output().contains("now the leader").then_some(())
    })
    .await;

    let mut apps = Vec::new();
    for i in 0..8 {
        let repo = unique(&format!("replica{i}"));
        let url = git.url(&repo);
        let sha = commit(&git, &repo, &unique(&format!("site-{i}")));
        let name = s.create_app(&format!("replica{i}"), &url, SECRET, json!({})).await;
        apps.push((name, url, sha));
    }

    // Webhooks alternate between the two; each deployment's log is followed on the other one
    // (the second, for those sent after the first was killed).
    let mut followers = Vec::new();
    let mut acknowledged = BTreeMap::new();
    let follow = |s: &Slipway, base: &str, id: String| {
        let (http, base) = (s.http.clone(), base.to_string());
        tokio::spawn(async move { (id.clone(), sse_at(&http, &base, &id, true, None).await) })
    };
    for (i, (name, url, sha)) in apps.iter().enumerate() {
        let killed = i >= 4;
        if i == 4 {
            // Mid-load: wait until a job is running (runners talk to the leader), then kill it.
            eventually(Duration::from_secs(60), "a job running", || async {
                let (_, list) = s.get("/api/v1/deployments").await;
                list.as_array()?.iter().any(|d| d["state"] == "running").then_some(())
            })
            .await;
            s.scheduler.kill9();
        }
        let (to, other) = match (killed, i % 2) {
            (false, 0) => (&a, &b),
            (false, _) => (&b, &a),
            (true, _) => (&b, &b),
        };
        let answered = s.push_to(to, url, sha, SECRET, &format!("delivery-{i}")).await;
        let Some((status, answer)) = answered else { panic!("{to} did not answer webhook {i}") };
        assert_eq!(status, 202, "{answer}");
        let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
        acknowledged.insert(name.clone(), id.clone());
        // Followers of the first half stay on the second scheduler too: it outlives the kill.
        let on = if other == &a { &b } else { other };
        followers.push(follow(&s, on, id));
    }

    // Every acknowledged webhook: one deployment, completed, in one attempt (no job was lost and
    // redispatched while the leadership moved).
    let http = s.http.clone();
    for (name, id) in &acknowledged {
        let d = eventually(Duration::from_secs(240), "the deployment to end", || async {
            let d: Value = http.get(format!("{b}/api/v1/deployments/{id}")).send().await.ok()?.json().await.ok()?;
            matches!(d["state"].as_str(), Some("completed" | "failed" | "cancelled")).then_some(d)
        })
        .await;
        assert_eq!((d["state"].as_str(), d["attempt"].as_u64()), (Some("completed"), Some(1)), "{name}: {d}");
        let list: Value = http
            .get(format!("{b}/api/v1/deployments?app={name}"))
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{name} deployed once: {list}");
    }

    // Every line reached its follower, in order, with no gap or repeat, and the stream ended.
    for follower in followers {
        let (id, events) = tokio::time::timeout(Duration::from_secs(60), follower)
            .await
            .expect("the follower ended with its deployment")
            .expect("follower task");
        let stored = sse_at(&s.http, &b, &id, false, None).await;
        let ids = |events: &[(String, String, String)]| -> Vec<String> {
            events.iter().filter(|(e, _, _)| e == "log").map(|(_, id, _)| id.clone()).collect()
        };
        assert_eq!(ids(&events), ids(&stored), "{id}: the follower saw exactly what is stored");
        let seqs: Vec<u64> = ids(&events).iter().filter_map(|i| i.split_once('.')?.1.parse().ok()).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{id}: no gap or repeat: {seqs:?}");
        let built: Vec<&String> =
            events.iter().filter(|(e, _, l)| e == "log" && l.contains("build-line-")).map(|(_, _, l)| l).collect();
        assert!(built.iter().any(|l| l.contains(&format!("build-line-{LINES} of"))), "{id}: the build's last line");
        assert_eq!(
            events.last().map(|(e, _, _)| e.as_str()),
            Some("end"),
            "{id}: the stream ended with the deployment"
        );
    }
    // The second scheduler took over the leadership when the first was killed.
    assert!(s.more_schedulers[0].output().contains("now the leader"), "{}", s.dump());
}

#[tokio::test]
async fn a_runner_stopped_with_a_drain_shorter_than_its_job_hands_it_back_and_another_finishes_it_once() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions {
        runners: 1,
        runner_env: vec![("SLIPWAY_DRAIN_SECONDS".into(), "1".into())],
        ..Default::default()
    })
    .await;
    let repo = unique("handback");
    let url = git.url(&repo);
    let app = s.create_app("handback", &url, SECRET, json!({})).await;
    let dockerfile = format!(
        "FROM slipway/busybox:1\nRUN echo {} && sleep 8\nCOPY www /www\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
        unique("slow-layer")
    );
    let sha = git.commit(
        &repo,
        "slow build",
        &[
            Entry::File("Dockerfile", dockerfile.as_bytes()),
            Entry::File("www/index.html", b"<p>handed back</p>\n"),
            Entry::File("www/healthz", b"ok\n"),
        ],
    );
    let (status, answer) = s.push(&url, &sha, SECRET, "handback-delivery").await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    eventually(Duration::from_secs(60), "the build to start", || async {
        (s.deployment(&id).await["current_step"] == "build").then_some(())
    })
    .await;
    // A second runner joins (scale-out), then the first is told to stop (scale-in): its one-second
    // drain is shorter than the build, so it hands the job back and exits cleanly.
    s.add_runner();
    assert!(s.runners[0].terminate(), "the stopped runner exits 0 once it handed its job back\n{}", s.dump());
    let d = s.finished(&id, Duration::from_secs(180)).await;
    assert_eq!((d["state"].as_str(), d["attempt"].as_u64()), (Some("completed"), Some(2)), "{d}");
    assert_eq!(d["runner_id"], "runner-2", "finished by the other runner: {d}");
    let first: Vec<&Value> = d["steps"].as_array().expect("steps").iter().filter(|st| st["attempt"] == 1).collect();
    assert!(
        first.iter().any(|st| st["step"] == "build" && st["status"] == "cancelled"),
        "the first attempt's build was stopped: {first:?}"
    );
    assert!(s.runners[0].output().contains("handing back"), "{}", s.runners[0].output());
    // Deployed once: one deployment, one container of the app.
    assert_eq!(s.deployments_of(&app).await.len(), 1);
    let containers =
        slipway_tests::docker(&["ps", "-q", "--filter", &format!("label=dev.slipway.app={app}")]).expect("docker ps");
    assert_eq!(containers.split_whitespace().count(), 1, "one container serves: {containers}");
}

/// Caddy run from the compose file's config (`ops/caddy/slipway.json`), its ports moved to free
/// ones and its API upstreams pointed at this test's schedulers. Killed on drop.
struct Balancer {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Balancer {
    fn start(upstreams: &[u16]) -> Self {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/caddy/slipway.json"))
            .expect("ops/caddy/slipway.json");
        let mut config: Value = serde_json::from_str(&text).expect("the compose edge config is JSON");
        let (admin, port) = (slipway_tests::free_port(), slipway_tests::free_port());
        config["admin"]["listen"] = json!(format!("127.0.0.1:{admin}"));
        let api = &mut config["apps"]["http"]["servers"]["slipway-api"];
        assert_eq!(api["listen"], json!(["127.0.0.1:8080"]), "the API answers where the README says");
        api["listen"] = json!([format!("127.0.0.1:{port}")]);
        let dials = &mut api["routes"][0]["handle"][0]["upstreams"];
        assert_eq!(dials.as_array().map(Vec::len), Some(4), "four replica ports, as docker-compose.yml maps");
        for (i, dial) in dials.as_array_mut().expect("upstreams").iter_mut().enumerate() {
            // Ports with nothing behind them stand for replicas not started.
            let to = upstreams.get(i).copied().unwrap_or_else(slipway_tests::free_port);
            dial["dial"] = json!(format!("127.0.0.1:{to}"));
        }
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("caddy.json");
        std::fs::write(&path, config.to_string()).expect("config");
        let log = std::fs::File::create(dir.path().join("caddy.log")).expect("log");
        let child = std::process::Command::new("caddy")
            .args(["run", "--config"])
            .arg(&path)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .stdout(std::process::Stdio::from(log.try_clone().expect("log")))
            .stderr(std::process::Stdio::from(log))
            .spawn()
            .expect("caddy");
        Self { port, child, _dir: dir }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port_of(base: &str) -> u16 {
    base.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port")
}

#[tokio::test]
async fn the_compose_edge_balances_the_api_over_the_schedulers_and_skips_a_dead_one() {
    let mut s = Slipway::start(SlipwayOptions { runners: 0, edge: false, ..Default::default() }).await;
    let b = s.add_scheduler().await;
    let lb = Balancer::start(&[port_of(&s.base), port_of(&b)]);
    let front = format!("http://127.0.0.1:{}", lb.port);
    eventually(Duration::from_secs(20), "the balancer to answer", || async {
        s.http.get(format!("{front}/healthz")).send().await.ok().filter(|r| r.status().is_success())
    })
    .await;
    // Webhooks through the balancer: each replica counts the ones it took; together, all of them.
    let sent = 24;
    for i in 0..sent {
        let (status, answer) = s
            .push_to(&front, "https://git.example.com/nobody/follows.git", &"a".repeat(40), SECRET, &format!("lb-{i}"))
            .await
            .expect("answers");
        assert_eq!(status, 202, "{answer}");
    }
    let ignored = |base: String| {
        let http = s.http.clone();
        async move {
            let text = http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
            text.lines()
                .find_map(|l| l.strip_prefix(r#"slipway_webhooks_total{forge="github",outcome="ignored"} "#))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        }
    };
    let (on_a, on_b) = (ignored(s.base.clone()).await, ignored(b.clone()).await);
    assert_eq!(on_a + on_b, f64::from(sent), "every webhook reached one replica");
    assert!(on_a > 0.0 && on_b > 0.0, "both replicas took webhooks: {on_a} and {on_b}");

    // One replica dies: every request still gets its answer from the other.
    s.scheduler.kill9();
    for _ in 0..10 {
        let answer = s.http.get(format!("{front}/api/v1/apps")).send().await.expect("the balancer answers");
        assert_eq!(answer.status(), 200);
    }
}
