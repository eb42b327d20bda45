//! Invariant 5: a build longer than RabbitMQ's delivery acknowledgement timeout finishes, once.
//! A private broker with a 2-second `consumer_timeout` stands in for the stock 30 minutes
//! (RabbitMQ 3.10 only sets it per node), so the test takes seconds, not half an hour.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, PrivateBroker, Slipway, SlipwayOptions, unique};

const SECRET: &str = "long-build-secret-0123456789";

/// How long the broker takes to close a channel that holds a delivery unacknowledged.
async fn broker_enforcement_delay(url: &str) -> Duration {
    let conn = Connection::connect(url, ConnectionProperties::default()).await.expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .queue_declare("probe".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare");
    channel
        .basic_publish(
            "".into(),
            "probe".into(),
            BasicPublishOptions::default(),
            b"hold me",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    let mut consumer = channel
        .basic_consume("probe".into(), "holder".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    let _held = consumer.next().await.expect("a delivery").expect("delivery ok");
    let start = Instant::now();
    while channel.status().connected() {
        assert!(start.elapsed() < Duration::from_secs(120), "the broker never enforced its consumer timeout");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn a_build_longer_than_the_delivery_timeout_finishes_once() {
    let broker = PrivateBroker::start("consumer_timeout = 2000", "{channel_tick_interval, 1000}");
    let enforced_after = broker_enforcement_delay(&broker.url()).await;
    assert!(
        enforced_after < Duration::from_secs(8),
        "the probe broker enforces its timeout quickly ({enforced_after:?})"
    );

    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { amqp_url: broker.url(), runners: 2, ..Default::default() }).await;
    let repo = unique("long");
    let url = git.url(&repo);
    let app = s.create_app("long", &url, SECRET, json!({})).await;
    let build_secs = enforced_after.as_secs() + 8;
    let dockerfile = format!(
        "FROM slipway/busybox:1\nRUN echo {} && sleep {build_secs}\nRUN mkdir /www && echo ok > /www/healthz\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
        unique("long-layer")
    );
    let sha = git.commit(&repo, "long build", &[Entry::File("Dockerfile", dockerfile.as_bytes())]);
    let (status, answer) = s.push(&url, &sha, SECRET, "long-delivery").await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    // The app's network is made while the image builds, not in the deploy step.
    let label = format!("label=dev.slipway.app={app}");
    slipway_tests::eventually(Duration::from_secs(60), "the app's network, during the build", || async {
        let made = slipway_tests::docker(&["network", "ls", "-q", "--filter", &label]).ok()?;
        (!made.trim().is_empty()).then_some(())
    })
    .await;
    let during = s.deployment(&id).await;
    assert_eq!(during["current_step"], "build", "the network was there before the build ended: {during}");

    let d = s.finished(&id, Duration::from_secs(180)).await;
    assert_eq!(d["state"], "completed", "{d}\n{}", s.dump());
    assert_eq!(d["attempt"], 1, "never dispatched twice");
    let build =
        d["steps"].as_array().expect("steps").iter().find(|st| st["step"] == "build").expect("build step").clone();
    let at = |key: &str| build[key].as_str().and_then(|t| t.parse::<DateTime<Utc>>().ok()).expect("step timing");
    let took = (at("finished_at") - at("started_at")).to_std().expect("positive duration");
    assert!(took > enforced_after + Duration::from_secs(2), "the build ({took:?}) outlived the broker's timeout");
    let lines = s.log_lines(&id, None).await;
    assert_eq!(lines.iter().filter(|(_, l)| l.starts_with("Step 1/")).count(), 1, "the builder ran once");
    assert_eq!(s.deployments_of(&app).await.len(), 1);
    let starts: usize = s.runners.iter().map(|r| r.output().matches("job started").count()).sum();
    assert_eq!(starts, 1, "the job message was delivered to a runner exactly once\n{}", s.dump());
}
