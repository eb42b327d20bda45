//! The edge on a real Caddy and Docker engine: one stable address per app across deploys,
//! rollbacks and failed deploys, extra hosts, routes rebuilt after Caddy restarts, and zero
//! failed requests under a steady load (with slow requests, so the drain matters).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slipway_tests::git::Entry;
use slipway_tests::harness::app_request;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, eventually, unique};

const SECRET: &str = "edge-secret-0123456789";
const FINISH: Duration = Duration::from_secs(120);

/// A busybox site printing `marker`, with `/cgi-bin/slow` taking a second; no `/healthz` when
/// `healthy` is false.
fn site(marker: &str, healthy: bool) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        (
            "Dockerfile".to_string(),
            b"FROM slipway/busybox:1\nCOPY www /www\nRUN chmod +x /www/cgi-bin/slow\n\
              CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
                .to_vec(),
        ),
        ("www/index.html".to_string(), format!("<p>{marker}</p>\n").into_bytes()),
        (
            "www/cgi-bin/slow".to_string(),
            format!("#!/bin/sh\nsleep 1\nprintf 'Content-Type: text/plain\\r\\n\\r\\nslow {marker}\\n'\n").into_bytes(),
        ),
    ];
    if healthy {
        files.push(("www/healthz".to_string(), b"ok\n".to_vec()));
    }
    files
}

fn commit(git: &GitServer, repo: &str, files: &[(String, Vec<u8>)]) -> String {
    let entries: Vec<Entry<'_>> = files.iter().map(|(p, c)| Entry::File(p.as_str(), c.as_slice())).collect();
    git.commit(repo, "commit", &entries)
}

async fn deploy(s: &Slipway, url: &str, sha: &str) -> Value {
    let (status, answer) = s.push(url, sha, SECRET, &unique("delivery")).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    s.finished(&id, FINISH).await
}

async fn body(s: &Slipway, url: &str, path: &str) -> Option<String> {
    s.app_body(url, path).await
}

#[tokio::test]
async fn every_app_keeps_one_stable_address_and_the_edge_is_rebuilt_after_caddy_restarts() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { health_timeout_seconds: 5, ..Default::default() }).await;
    let repo = unique("stable");
    let url = git.url(&repo);
    let extra = format!("www.{}.test", unique("shop"));
    let app = s.create_app("stable", &url, SECRET, json!({"edge": {"hosts": [extra], "drain_seconds": 3}})).await;
    let edge_port = s.edge.as_ref().expect("edge").edge_port;
    let stable = format!("http://{app}.localhost:{edge_port}");

    let v1 = unique("version-one");
    let d1 = deploy(&s, &url, &commit(&git, &repo, &site(&v1, true))).await;
    assert_eq!((d1["state"].as_str(), d1["url"].as_str()), (Some("completed"), Some(stable.as_str())), "{d1}");
    assert!(body(&s, &stable, "/").await.expect("answers").contains(&v1));
    let lines = s.log_lines(d1["id"].as_str().expect("id"), None).await;
    assert!(lines.iter().any(|(_, l)| l.starts_with("routed ") && l.contains(" ms")), "{lines:?}");

    let v2 = unique("version-two");
    let d2 = deploy(&s, &url, &commit(&git, &repo, &site(&v2, true))).await;
    assert_eq!(d2["url"].as_str(), Some(stable.as_str()), "the same address: {d2}");
    assert!(body(&s, &stable, "/").await.expect("answers").contains(&v2));
    let lines = s.log_lines(d2["id"].as_str().expect("id"), None).await;
    assert!(lines.iter().any(|(_, l)| l.starts_with("previous version drained")), "{lines:?}");
    // The extra host reaches the same app.
    let by_host = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{edge_port}/"))
        .header("host", extra.as_str())
        .send()
        .await
        .expect("extra host");
    assert!(by_host.text().await.expect("text").contains(&v2));
    // A host nobody routed gets nothing from this app.
    let unknown = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{edge_port}/"))
        .header("host", "nobody.localhost")
        .send()
        .await
        .expect("unknown host");
    assert!(!unknown.text().await.unwrap_or_default().contains(&v2));

    // The API and the CLI show the stable address.
    let (_, shown) = s.get(&format!("/api/v1/apps/{app}")).await;
    assert_eq!(shown["url"].as_str(), Some(stable.as_str()), "{shown}");
    let out = s.cli_command().args(["apps", "list"]).output().expect("apps list");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.lines().any(|l| l.starts_with(&app) && l.contains(&stable)), "{listed}");

    // A rollback starts the previous version's kept container again and switches back to it.
    let (status, answer) = s.post(&format!("/api/v1/apps/{app}/rollback"), &json!({})).await;
    assert!(status == 202 || status == 200, "{answer}");
    let rolled = s.finished(answer["deployment_id"].as_str().expect("id"), FINISH).await;
    assert_eq!(
        (rolled["state"].as_str(), rolled["url"].as_str()),
        (Some("completed"), Some(stable.as_str())),
        "{rolled}"
    );
    assert!(body(&s, &stable, "/").await.expect("answers").contains(&v1), "v1 serves again");
    let lines = s.log_lines(rolled["id"].as_str().expect("id"), None).await;
    assert!(lines.iter().any(|(_, l)| l.starts_with("started the kept container")), "{lines:?}");
    let switched_ms = deploy_step_ms(&lines);
    let image = d1["image"].as_str().expect("image");
    let baseline_ms = docker_run_to_healthy_ms(image).await;
    slipway_tests::bench::report(&slipway_tests::bench::Figure {
        bench: "rollback",
        what: "to a kept version, from the deploy step's start to routed",
        unit: slipway_tests::bench::Unit::Milliseconds,
        ours: switched_ms as f64,
        baseline: Some(("docker run of the same image to healthy", baseline_ms as f64)),
        target: None,
    });
    assert!(switched_ms < 2000, "a rollback to a kept version switches within seconds ({switched_ms} ms)");

    // Forward again, so the rest of the test runs on v2.
    let v2_again = deploy(&s, &url, &commit(&git, &repo, &site(&v2, true))).await;
    assert_eq!(v2_again["state"], "completed", "{v2_again}");

    // A version that never becomes healthy leaves the route alone.
    let bad = deploy(&s, &url, &commit(&git, &repo, &site("broken", false))).await;
    assert_eq!(bad["state"], "failed", "{bad}");
    assert!(body(&s, &stable, "/").await.expect("still answers").contains(&v2));

    // Caddy restarts with an empty config: the runner rebuilds the route from what runs.
    s.edge.as_mut().expect("edge").restart().await;
    let back = eventually(Duration::from_secs(30), "the route to be rebuilt", || async {
        body(&s, &stable, "/").await.filter(|b| b.contains(&v2))
    })
    .await;
    assert!(back.contains(&v2));
    let runner = s.runners[0].output();
    assert!(runner.contains("rebuilt them from the running apps"), "{runner}");
}

/// Milliseconds from the deploy step's start to the switch, from the deploy log.
fn deploy_step_ms(lines: &[(String, String)]) -> u64 {
    lines
        .iter()
        .find_map(|(_, l)| {
            l.strip_prefix("routed ")?
                .split(" ms (")
                .nth(1)?
                .strip_suffix(" ms after the deploy step began)")?
                .parse()
                .ok()
        })
        .expect("a routed line")
}

/// The baseline of a rollback: `docker run` of the same image until its health path answers.
async fn docker_run_to_healthy_ms(image: &str) -> u64 {
    let name = unique("baseline");
    let started = Instant::now();
    let id =
        slipway_tests::docker(&["run", "-d", "--name", &name, "-p", "127.0.0.1::8080", image]).expect("docker run");
    let port = slipway_tests::docker(&["port", id.trim(), "8080/tcp"]).expect("docker port");
    let addr = port.lines().next().expect("a port").trim().to_string();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().expect("client");
    // Polled about as often as the docker target polls a new version in its first seconds.
    loop {
        let answered = client.get(format!("http://{addr}/healthz")).send().await;
        if answered.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the baseline container never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed().as_millis() as u64;
    let _ = slipway_tests::docker(&["rm", "-f", &name]);
    took
}

/// Counts of a steady load on one address.
#[derive(Default)]
struct Load {
    ok: AtomicU64,
    slow_ok: AtomicU64,
    bad_status: AtomicU64,
    errors: AtomicU64,
    /// Requests sent again because the idle keep-alive connection they went out on was closed
    /// before any answer (Caddy closes idle connections when its config changes); browsers,
    /// curl and Go's client retry such idempotent requests on their own (RFC 9110, 9.2.2).
    retried: AtomicU64,
    stop: AtomicBool,
}

/// `workers` loops of requests on `url`, every tenth to `/cgi-bin/slow` (a second long).
fn start_load(url: String, workers: usize, load: Arc<Load>) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client");
    (0..workers)
        .map(|w| {
            let (client, url, load) = (client.clone(), url.clone(), load.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut n = 0u64;
                while !load.stop.load(Ordering::Relaxed) {
                    n += 1;
                    let slow = (n + w as u64).is_multiple_of(10);
                    let path = if slow { "/cgi-bin/slow" } else { "/" };
                    let mut sent = app_request(&client, &url, path).send().await;
                    if let Err(err) = &sent
                        && closed_while_idle(err)
                    {
                        load.retried.fetch_add(1, Ordering::Relaxed);
                        sent = app_request(&client, &url, path).send().await;
                    }
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            let counter = if slow { &load.slow_ok } else { &load.ok };
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            load.bad_status.fetch_add(1, Ordering::Relaxed);
                            failures.push(format!("{path}: {}", r.status()));
                        }
                        Err(err) => {
                            load.errors.fetch_add(1, Ordering::Relaxed);
                            failures.push(format!("{path}: {err:?}"));
                        }
                    }
                }
                failures
            })
        })
        .collect()
}

/// Whether a request failed because the pooled connection it was written to had been closed by
/// the server before any answer came (the only failure a client may retry without knowing more).
fn closed_while_idle(err: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return h.is_incomplete_message()
                || std::error::Error::source(h)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset);
        }
        source = e.source();
    }
    false
}

#[tokio::test]
async fn no_request_fails_under_load_across_ten_deploys_a_rollback_and_a_failed_deploy() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { health_timeout_seconds: 5, ..Default::default() }).await;
    let repo = unique("load");
    let url = git.url(&repo);
    let app = s.create_app("load", &url, SECRET, json!({"edge": {"drain_seconds": 30}})).await;
    let first = deploy(&s, &url, &commit(&git, &repo, &site("v0", true))).await;
    assert_eq!(first["state"], "completed", "{first}");
    let stable = first["url"].as_str().expect("url").to_string();

    let load = Arc::new(Load::default());
    let started = Instant::now();
    let workers = start_load(stable.clone(), 32, load.clone());
    let mut deployed = Vec::new();
    for i in 1..=10 {
        let d = deploy(&s, &url, &commit(&git, &repo, &site(&format!("v{i}"), true))).await;
        assert_eq!(d["state"], "completed", "{d}");
        deployed.push(d);
    }
    let (status, rollback) = s.post(&format!("/api/v1/apps/{app}/rollback"), &json!({})).await;
    assert!(status == 202 || status == 200, "{rollback}");
    let rolled = s.finished(rollback["deployment_id"].as_str().expect("id"), FINISH).await;
    assert_eq!(rolled["state"], "completed", "{rolled}");
    let failed = deploy(&s, &url, &commit(&git, &repo, &site("broken", false))).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    // Each worker finishes the request it has in flight (slow ones included), then stops.
    load.stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.expect("worker"));
    }
    let took = started.elapsed().as_secs_f64();
    let (ok, slow) = (load.ok.load(Ordering::Relaxed), load.slow_ok.load(Ordering::Relaxed));
    let total = ok + slow + load.bad_status.load(Ordering::Relaxed) + load.errors.load(Ordering::Relaxed);
    let rate = total as f64 / took;
    let retried = load.retried.load(Ordering::Relaxed);
    println!(
        "edge load: {total} requests ({slow} slow) in {took:.1} s, {rate:.0}/s, {} failed, {retried} sent again after an idle connection was closed",
        failures.len()
    );
    if !failures.is_empty() {
        let mut switches = Vec::new();
        for d in deployed.iter().chain([&rolled, &failed]) {
            let lines = s.log_lines(d["id"].as_str().expect("id"), None).await;
            switches.extend(lines.into_iter().map(|(_, l)| l).filter(|l| {
                ["routed", "drain", "previous", "kept", "retiring", "stopped", "started the kept", "could not"]
                    .iter()
                    .any(|k| l.contains(k))
            }));
        }
        panic!(
            "{} of {total} requests failed: {:?}\nswitches:\n{}",
            failures.len(),
            &failures[..failures.len().min(20)],
            switches.join("\n")
        );
    }
    // The fault suite's line for a failed rollout under load: nothing failed, nothing left.
    let fleet = slipway_tests::faults::Fleet::named(&[&app]);
    let left = eventually(Duration::from_secs(60), "the drained versions to be retired", || async {
        let left = slipway_tests::faults::leftovers_now(&s, &fleet).await;
        left.is_empty().then_some(left)
    })
    .await;
    println!(
        "fault failed-rollout-under-load: requests {total} ({slow} slow), failed {}, deployments 12 (10 completed, a rollback, 1 failed), leftovers {}",
        failures.len(),
        left.len()
    );
    slipway_tests::faults::publish(json!({
        "fault": "failed-rollout-under-load", "requests": total, "failed": failures.len(), "leftovers": left,
    }));
    assert!(rate >= 200.0, "a steady load of at least 200 requests per second ({rate:.0}/s)");
    assert!(slow >= 100, "slow requests were in flight across switches ({slow})");
    // The rollback serves v9, the version before the last good one.
    let now = s.app_body(&stable, "/").await.expect("answers");
    assert!(now.contains("v9"), "{now}");
    // Every switch took a single config change; report how long each took.
    let mut switch_ms = Vec::new();
    for d in deployed.iter().chain([&rolled]) {
        let lines = s.log_lines(d["id"].as_str().expect("id"), None).await;
        let ms = lines
            .iter()
            .find_map(|(_, l)| {
                l.strip_prefix("routed ")?.split(" in ").nth(1)?.split(" ms").next()?.parse::<u64>().ok()
            })
            .expect("a routed line");
        switch_ms.push(ms);
    }
    switch_ms.sort();
    for (what, ms) in [("median", switch_ms[switch_ms.len() / 2]), ("max", switch_ms[switch_ms.len() - 1])] {
        slipway_tests::bench::report(&slipway_tests::bench::Figure {
            bench: "edge",
            what: &format!("switch from healthy to routed, {what} of {}", switch_ms.len()),
            unit: slipway_tests::bench::Unit::Milliseconds,
            ours: ms as f64,
            baseline: None,
            target: None,
        });
    }
}

#[tokio::test]
async fn a_running_apps_output_and_status_come_through_slipway_with_secrets_masked() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("runtime");
    let url = git.url(&repo);
    let token = format!("tok-{}", unique("runtime-secret"));
    let app = s.create_app("runtime", &url, SECRET, json!({"env": {"API_TOKEN": token}})).await;
    let mut files = site("runtime", true);
    files[0].1 = b"FROM slipway/busybox:1\nCOPY www /www\nRUN chmod +x /www/cgi-bin/slow\n\
        CMD [\"sh\", \"-c\", \"echo started with $API_TOKEN; echo warming up >&2; exec httpd -f -v -p 8080 -h /www\"]\n"
        .to_vec();
    let d = deploy(&s, &url, &commit(&git, &repo, &files)).await;
    assert_eq!(d["state"], "completed", "{d}");
    let stable = d["url"].as_str().expect("url").to_string();

    // The output so far, masked, stderr marked.
    let out = s.cli_command().args(["logs", "--app", &app]).output().expect("slipway logs --app");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("started with ***"), "{text}");
    assert!(text.contains("[stderr] warming up"), "{text}");
    assert!(!text.contains(&token), "the secret never leaves the runner: {text}");

    // Following: a request made now shows up in the output (httpd -v logs each answer to
    // stderr; only this request is answered 404).
    let mut follower = s
        .cli_command()
        .args(["logs", "--app", &app, "-f", "--tail", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("slipway logs --app -f");
    let marker = unique("path");
    let stdout = follower.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let done = line.contains("response:404");
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    });
    eventually(Duration::from_secs(30), "the followed output to show a new request", || async {
        let _ = s.app_body(&stable, &format!("/marker-{marker}")).await;
        reader.is_finished().then_some(())
    })
    .await;
    let seen = reader.join().expect("reader");
    assert!(seen.iter().any(|l| l.starts_with("[stderr]") && l.contains("response:404")), "{seen:?}");
    let _ = follower.kill();
    let _ = follower.wait();

    // Status: the serving container, its state, restarts and last exit.
    let (status, body) = s.get(&format!("/api/v1/apps/{app}/status")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["url"].as_str(), Some(stable.as_str()));
    let serving: Vec<&Value> =
        body["containers"].as_array().expect("containers").iter().filter(|c| c["serving"] == true).collect();
    assert_eq!(serving.len(), 1, "{body}");
    assert_eq!((serving[0]["state"].as_str(), serving[0]["restarts"].as_i64()), (Some("running"), Some(0)), "{body}");
    let out = s.cli_command().args(["status", &app]).output().expect("slipway status app");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&stable) && text.lines().any(|l| l.starts_with("yes") && l.contains("running")), "{text}");

    // Refusals: no token, bad input, unknown apps, other apps' tokens, the other target.
    for path in ["logs", "status"] {
        let anonymous = s.anonymous.get(format!("{}/api/v1/apps/{app}/{path}", s.base)).send().await.expect("send");
        assert_eq!(anonymous.status(), 401, "{path} needs a token");
    }
    let (status, _) = s.get(&format!("/api/v1/apps/{app}/logs?since=yesterday")).await;
    assert_eq!(status, 400);
    let (status, _) = s.get(&format!("/api/v1/apps/{app}/logs?tail=999999")).await;
    assert_eq!(status, 400);
    let (status, _) = s.get("/api/v1/apps/no-such-app/status").await;
    assert_eq!(status, 404);
    let other = s.create_app("other", "https://git.example.com/x/other.git", SECRET, json!({})).await;
    let scoped = s.create_token("scoped-other", "viewer", Some(&other)).await;
    let refused = s.client(&scoped).get(format!("{}/api/v1/apps/{app}/logs", s.base)).send().await.expect("send");
    assert_eq!(refused.status(), 403);
    let (status, body) = s.get(&format!("/api/v1/apps/{other}/status")).await;
    assert_eq!(status, 404, "never deployed: no runner has it: {body}");
    let kube =
        s.create_app("kube", "https://git.example.com/x/kube.git", SECRET, json!({"target": "kubernetes"})).await;
    let (status, _) = s.get(&format!("/api/v1/apps/{kube}/logs")).await;
    assert_eq!(status, 422);
}
