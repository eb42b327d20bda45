//! The fault suite: a stream of pushes across a fleet of apps while one thing breaks, then a
//! count of what became of every delivery and deployment (see `slipway_tests::faults`). Each
//! test fails unless nothing acknowledged was lost, nothing ran twice, nothing was left behind,
//! and every app serves its branch head. CI runs them at small sizes; `scripts/faults` runs them
//! at the full ones (`SLIPWAY_FAULTS_FULL=1`: 100 pushes, 10 s outages, a 900-delivery storm).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use slipway_tests::faults::{Fleet, Ledger, Push, deliver, sized};
use slipway_tests::harness::psql_value;
use slipway_tests::{GitServer, PrivateBroker, Proxy, Slipway, SlipwayOptions, UnixProxy, eventually};
use tokio::sync::Notify;

/// How long a fault's deployments may take to end once the stream is over.
const SETTLE: Duration = Duration::from_secs(300);

/// Sends `count` pushes (each a new commit, made just before), one every `every`, and wakes
/// `fault` when push `at` is about to go.
#[allow(clippy::too_many_arguments)]
async fn stream(
    s: &Slipway,
    git: &GitServer,
    fleet: &mut Fleet,
    ledger: &mut Ledger,
    count: usize,
    every: Duration,
    at: usize,
    fault: &Notify,
) {
    let start = Instant::now();
    for i in 0..count {
        if i == at {
            fault.notify_one();
        }
        let push = fleet.next(git, i, "true");
        tokio::time::sleep_until((start + every * i as u32).into()).await;
        ledger.send(s, &push).await;
    }
}

/// Milliseconds from the database's clock reading `since` to the earliest value of `column`
/// after it, among the installation's deployments.
fn first_after(s: &Slipway, column: &str, since: &str) -> String {
    let ms = psql_value(
        &s.database_url,
        &format!(
            "SELECT round(extract(epoch FROM min({column}) - '{since}'::timestamptz) * 1000)
               FROM deployments WHERE {column} > '{since}'::timestamptz"
        ),
    );
    if ms.is_empty() { "none".into() } else { format!("{ms} ms") }
}

fn db_now(s: &Slipway) -> String {
    psql_value(&s.database_url, "SELECT now()::text")
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_stopped_under_a_stream_of_pushes_loses_and_duplicates_nothing() {
    let git = GitServer::start();
    let broker = PrivateBroker::start("", "");
    let mut s = Slipway::start(SlipwayOptions { runners: 2, amqp_url: broker.url(), ..Default::default() }).await;
    let mut fleet = Fleet::register(&mut s, &git, "mq", 5).await;
    let count = sized(20, 100);
    let outage = Duration::from_secs(sized(4, 10));
    let mut ledger = Ledger::new("rabbitmq-stopped");
    let go = Notify::new();
    let fault = async {
        go.notified().await;
        tokio::task::block_in_place(|| broker.stop());
        tokio::time::sleep(outage).await;
        tokio::task::block_in_place(|| broker.restart());
        db_now(&s)
    };
    let every = Duration::from_millis(sized(250, 200));
    let ((), back) = tokio::join!(stream(&s, &git, &mut fleet, &mut ledger, count, every, count / 4, &go), fault);
    let outcome = ledger.settle(&s, &fleet, SETTLE).await;
    // Rows recorded while the broker was down were published, and claimed, once it was back.
    ledger.figure("first publish after the restart", first_after(&s, "published_at", &back));
    ledger.figure("first claim after the restart", first_after(&s, "started_at", &back));
    ledger.report(&outcome);
    assert_eq!(ledger.acknowledged, ledger.sent, "the outbox takes every push while the broker is down");
    outcome.assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgresql_unreachable_under_a_stream_of_pushes_refuses_with_503_and_recovers_by_itself() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { runners: 2, database_proxy: true, ..Default::default() }).await;
    let mut fleet = Fleet::register(&mut s, &git, "pg", 5).await;
    let count = sized(20, 100);
    let outage = Duration::from_secs(sized(4, 10));
    let mut ledger = Ledger::new("postgresql-stopped");
    let go = Notify::new();
    let proxy = s.db_proxy.as_ref().expect("proxy");
    let fault = async {
        go.notified().await;
        proxy.cut();
        tokio::time::sleep(outage).await;
        proxy.restore();
        // How long the scheduler takes to be ready again by itself.
        let restored = Instant::now();
        let health = format!("{}/healthz", s.base);
        while !s.anonymous.get(&health).send().await.is_ok_and(|r| r.status().is_success()) {
            assert!(restored.elapsed() < Duration::from_secs(60), "the scheduler did not recover by itself");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        restored.elapsed()
    };
    let every = Duration::from_millis(sized(250, 200));
    let ((), restored) = tokio::join!(stream(&s, &git, &mut fleet, &mut ledger, count, every, count / 4, &go), fault);
    let refused: Vec<String> = ledger.refused.keys().cloned().collect();
    assert_eq!(refused, ["503"], "while PostgreSQL is unreachable webhooks get 503, and only then");
    // The forge sends the refused ones again; the scheduler took itself back, no restart.
    ledger.redeliver(&s, Duration::from_secs(60)).await;
    ledger.figure("ready again after the restore", format!("{} ms", restored.as_millis()));
    assert!(!s.scheduler.exited(), "the scheduler recovered by itself");
    let outcome = ledger.settle(&s, &fleet, SETTLE).await;
    ledger.report(&outcome);
    outcome.assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_killed_three_times_under_a_stream_of_pushes_loses_and_duplicates_nothing() {
    let git = GitServer::start();
    // The scheduler reaches RabbitMQ through a proxy, so a kill can land after a row's commit
    // and before its publish (the link cut, the row committed, the process killed).
    let amqp = slipway_tests::env("SLIPWAY_AMQP_URL");
    let host = amqp.split('@').nth(1).and_then(|h| h.split('/').next()).expect("amqp host:port").to_string();
    let broker_link = Proxy::start(&host).await;
    let through = amqp.replace(&host, &format!("127.0.0.1:{}", broker_link.port));
    let mut s = Slipway::start(SlipwayOptions {
        runners: 2,
        scheduler_env: vec![("SLIPWAY_AMQP_URL".into(), through)],
        ..Default::default()
    })
    .await;
    let mut fleet = Fleet::register(&mut s, &git, "kill", 5).await;
    let total = sized(20, 50);
    let mut ledger = Ledger::new("scheduler-killed");
    let kills = [total / 4, total / 2, 3 * total / 4];
    let mut restarts = Vec::new();
    for i in 0..total {
        let push = &fleet.next(&git, i, "true");
        if i == kills[1] {
            // Between commit and publish: acknowledged rows the relay cannot publish, then the kill.
            broker_link.cut();
            let ids = ledger.send(&s, push).await;
            let unpublished = ids
                .iter()
                .filter(|id| {
                    psql_value(
                        &s.database_url,
                        &format!("SELECT published_at IS NULL FROM deployments WHERE id = '{id}'"),
                    ) == "t"
                })
                .count();
            ledger.figure("committed and unpublished at the second kill", unpublished.to_string());
            assert!(unpublished > 0, "the second kill lands between a row's commit and its publish");
            s.scheduler.kill9();
            broker_link.restore();
            restarts.push(s.restart_scheduler().await);
            continue;
        }
        if kills.contains(&i) {
            s.scheduler.kill9();
            // What the forge sends while nothing listens goes unanswered; it sends it again.
            ledger.send(&s, push).await;
            restarts.push(s.restart_scheduler().await);
            continue;
        }
        ledger.send(&s, push).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    ledger.redeliver(&s, Duration::from_secs(60)).await;
    let ms: Vec<String> = restarts.iter().map(|d| d.as_millis().to_string()).collect();
    ledger.figure("restart to ready", format!("{} ms", ms.join("/")));
    let outcome = ledger.settle(&s, &fleet, SETTLE).await;
    ledger.report(&outcome);
    outcome.assert_clean(&s);
}

const STEPS: [&str; 4] = ["clone", "build", "push", "deploy"];

#[tokio::test(flavor = "multi_thread")]
async fn runners_killed_at_random_moments_in_each_step_lose_and_duplicate_nothing() {
    let git = GitServer::start();
    // The clone and the push are slowed down, so that a kill can land in them as surely as in
    // the build (a second) and the deploy (the health check).
    let (git_link, registry) =
        (Proxy::start(&git.address()).await, Proxy::start(&slipway_tests::env("SLIPWAY_REGISTRY")).await);
    git_link.throttle(512);
    registry.throttle(4096);
    let mut s = Slipway::start(SlipwayOptions {
        runners: 2,
        lease_seconds: 4,
        heartbeat_seconds: 1,
        registry: Some(format!("127.0.0.1:{}", registry.port)),
        ..Default::default()
    })
    .await;
    let mut fleet = Fleet::register_via(&mut s, &git, "runner", 4, Some(git_link.port)).await;
    let total = sized(4, 20);
    let mut ledger = Ledger::new("runners-killed");
    let mut killed_in = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..total {
        let push = &fleet.next(&git, i, "sleep 1");
        let step = STEPS[i % STEPS.len()];
        let id = ledger.send(&s, push).await.pop().expect("acknowledged with a deployment");
        // When the step starts, then a random moment into it (up to 400 ms).
        // Polled closely (a step may last only a few hundred milliseconds).
        let deadline = Instant::now() + Duration::from_secs(120);
        let runner = loop {
            let row = psql_value(
                &s.database_url,
                &format!(
                    "SELECT coalesce(current_step, '') || ' ' || coalesce(runner_id, '') FROM deployments WHERE id = '{id}'"
                ),
            );
            let (now, runner) = row.split_once(' ').unwrap_or_default();
            let reached = STEPS.iter().position(|st| *st == now) >= STEPS.iter().position(|st| *st == step);
            if reached && !runner.is_empty() {
                break runner.to_string();
            }
            assert!(Instant::now() < deadline, "{id} did not reach {step}: {row}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 400 / 255;
        tokio::time::sleep(Duration::from_millis(jitter)).await;
        let index = s.runners.iter().position(|r| r.name == runner).expect("the runner holding it");
        s.runners[index].kill9();
        let at = psql_value(
            &s.database_url,
            &format!("SELECT coalesce(current_step, state) FROM deployments WHERE id = '{id}'"),
        );
        *killed_in.entry(at).or_default() += 1;
        s.restart_runner(index);
        s.finished(&id, Duration::from_secs(180)).await;
    }
    let steps: Vec<String> = killed_in.iter().map(|(k, v)| format!("{k} {v}")).collect();
    ledger.figure("killed in", steps.join(", "));
    let outcome = ledger.settle(&s, &fleet, SETTLE).await;
    ledger.report(&outcome);
    outcome.assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_and_the_docker_engine_unreachable_for_a_while_are_retried_and_nothing_is_half_deployed() {
    let git = GitServer::start();
    let registry = Proxy::start(&slipway_tests::env("SLIPWAY_REGISTRY")).await;
    let engine = UnixProxy::start("/var/run/docker.sock");
    let mut s = Slipway::start(SlipwayOptions {
        runners: 2,
        max_attempts: 4,
        registry: Some(format!("127.0.0.1:{}", registry.port)),
        runner_env: vec![("DOCKER_HOST".into(), format!("unix://{}", engine.path.display()))],
        ..Default::default()
    })
    .await;
    let mut fleet = Fleet::register(&mut s, &git, "infra", 3).await;
    let total = sized(6, 18);
    let mut ledger = Ledger::new("registry-and-engine-unreachable");
    let third = total / 3;
    let outage = Duration::from_secs(sized(6, 10));
    for i in 0..total {
        let push = fleet.next(&git, i, "sleep 1");
        ledger.send(&s, &push).await;
        if i == third || i == 2 * third {
            let (what, cut, restore): (&str, &dyn Fn(), &dyn Fn()) = match i == third {
                true => ("registry", &|| registry.cut(), &|| registry.restore()),
                false => ("engine", &|| engine.cut(), &|| engine.restore()),
            };
            // Once a job is building (so its build stream, or its push next, meets the cut), the
            // link goes for the outage.
            eventually(Duration::from_secs(60), "a job building", || async {
                let building = "SELECT count(*) FROM deployments WHERE state = 'running' AND current_step = 'build'";
                (psql_value(&s.database_url, building) != "0").then_some(())
            })
            .await;
            cut();
            tokio::time::sleep(outage).await;
            restore();
            ledger.figure(&format!("{what} cut for"), format!("{} s", outage.as_secs()));
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let outcome = ledger.settle(&s, &fleet, SETTLE).await;
    let retried = psql_value(
        &s.database_url,
        "SELECT count(*) || ' (' || count(*) FILTER (WHERE state = 'completed') || ' of them completed)'
           FROM deployments WHERE attempt > 1",
    );
    ledger.figure("retried after an infrastructure failure", retried);
    ledger.report(&outcome);
    outcome.assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storm_of_duplicate_deliveries_makes_one_deployment_a_push() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { runners: 2, ..Default::default() }).await;
    let mut fleet = Fleet::register(&mut s, &git, "storm", 10).await;
    let pushes = fleet.commits(&git, sized(30, 300), "true");
    // Each push three times: twice with its delivery id (a redelivery) and once with a new one
    // (the forge sending the event again), 20 at once.
    let deliveries: Vec<Push> = pushes.iter().flat_map(|p| [p.clone(), p.clone(), p.anew()]).collect();
    let mut ledger = Ledger::new("duplicate-storm");
    let answers: Vec<(Push, Option<u16>, serde_json::Value)> = futures_util::stream::iter(deliveries)
        .map(|p| {
            let (http, base) = (s.anonymous.clone(), s.base.clone());
            async move {
                let (status, answer) = deliver(&http, &base, &p).await;
                (p, status, answer)
            }
        })
        .buffer_unordered(20)
        .collect()
        .await;
    let mut per_push = std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for (p, status, answer) in &answers {
        ledger.record(p, *status, answer);
        if let Some(id) = answer["deployments"][0]["deployment_id"].as_str() {
            per_push.entry(p.sha.clone()).or_default().insert(id.to_string());
        }
    }
    let outcome = ledger.settle(&s, &fleet, SETTLE).await;
    ledger.report(&outcome);
    assert_eq!(ledger.acknowledged, ledger.sent, "every delivery is acknowledged: {:?}", ledger.refused);
    let split: Vec<_> = per_push.iter().filter(|(_, ids)| ids.len() != 1).collect();
    assert!(split.is_empty(), "the three deliveries of a push name one deployment: {split:?}");
    assert_eq!(outcome.created, pushes.len() as u64, "one deployment a push");
    outcome.assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_of_parent_and_child_commits_out_of_order_end_with_the_child_serving() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { runners: 2, ..Default::default() }).await;
    let mut fleet = Fleet::register(&mut s, &git, "order", 3).await;
    let pushes = fleet.commits(&git, sized(12, 30), "true");
    let mut ledger = Ledger::new("out-of-order");
    // Per app, its pushes in a scrambled order: the child first, then the parents, newest last
    // but one, with gaps (a grandparent before its child).
    let apps = fleet.apps.len();
    let mut order: Vec<&Push> = Vec::new();
    for a in 0..apps {
        let mine: Vec<&Push> = pushes.iter().skip(a).step_by(apps).collect();
        let n = mine.len();
        order.push(mine[n - 1]);
        order.extend(mine.iter().take(n - 1).rev().step_by(2));
        order.extend(mine.iter().take(n - 1).rev().skip(1).step_by(2));
    }
    for push in order {
        ledger.send(&s, push).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outcome = ledger.settle(&s, &fleet, SETTLE).await;
    ledger.report(&outcome);
    outcome.assert_clean(&s);
}
