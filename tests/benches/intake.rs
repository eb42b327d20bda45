//! Benchmark: webhook intake. Signed GitHub pushes of new commits to ten apps, 32 at a time,
//! every tenth delivered twice (the same delivery id and commit, as a forge's retry): pushes
//! accepted per second, and every push must have made exactly one deployment. Against the rate
//! of inserting the same deployment rows straight into PostgreSQL, 32 at a time, in the same run.
//! No runner takes the jobs: this is the scheduler's side alone.
//!
//! `SLIPWAY_BENCH_WEBHOOKS` (default 2,000 pushes). Run with `scripts/bench`.

use std::time::Instant;

use futures_util::StreamExt;
use serde_json::json;
use slipway_tests::bench::{Figure, Unit, report};
use slipway_tests::harness::{push_body, sign};
use slipway_tests::{Slipway, SlipwayOptions};

const SECRET: &str = "bench-secret-0123456789";
const APPS: usize = 10;
const AT_ONCE: usize = 32;

fn sha(i: usize) -> String {
    format!("{:040x}", (i as u128 + 1) * 0x9e37_79b9_7f4a_7c15)
}

#[tokio::main]
async fn main() {
    let pushes: usize =
        std::env::var("SLIPWAY_BENCH_WEBHOOKS").ok().and_then(|p| p.parse().ok()).unwrap_or(2000).max(100);
    let mut s = Slipway::start(SlipwayOptions { runners: 0, edge: false, ..Default::default() }).await;
    let mut repos = Vec::new();
    for i in 0..APPS {
        let url = format!("https://git.example.com/bench/intake-{i}.git");
        s.create_app(&format!("intake{i}"), &url, SECRET, json!({})).await;
        repos.push(url);
    }
    // Every push, and every tenth again as the forge's retry of the same delivery.
    let deliveries: Vec<(usize, bool)> =
        (0..pushes).flat_map(|i| std::iter::once((i, false)).chain((i % 10 == 9).then_some((i, true)))).collect();
    let url = format!("{}/api/v1/webhooks/github", s.base);
    let http = reqwest::Client::new();
    let started = Instant::now();
    let answers: Vec<(usize, bool, u16, String)> = futures_util::stream::iter(deliveries)
        .map(|(i, again)| {
            let body = push_body(&repos[i % APPS], "refs/heads/main", &sha(i));
            let request = http
                .post(&url)
                .header("content-type", "application/json")
                .header("x-github-event", "push")
                .header("x-github-delivery", format!("intake-{i}"))
                .header("x-hub-signature-256", sign(SECRET, &body))
                .body(body);
            async move {
                let resp = request.send().await.expect("the scheduler answers");
                let status = resp.status().as_u16();
                let answer: serde_json::Value = resp.json().await.unwrap_or_default();
                (i, again, status, answer["status"].as_str().unwrap_or_default().to_string())
            }
        })
        .buffer_unordered(AT_ONCE)
        .collect()
        .await;
    let took = started.elapsed().as_secs_f64();
    for (i, again, status, said) in &answers {
        assert!(matches!(status, 200 | 202), "push {i} (again: {again}) answered {status} {said}");
    }
    let rows: usize = slipway_tests::harness::psql_value(&s.database_url, "SELECT count(*) FROM deployments")
        .parse()
        .expect("a count");
    let twice: usize = slipway_tests::harness::psql_value(
        &s.database_url,
        "SELECT count(*) FROM (SELECT 1 FROM deployments GROUP BY app_id, sha HAVING count(*) > 1) t",
    )
    .parse()
    .expect("a count");
    let duplicates = rows.saturating_sub(pushes) + twice;
    assert_eq!((rows, duplicates), (pushes, 0), "one deployment for each push, none twice");
    let ours = pushes as f64 / took;

    // The baseline: the same rows, inserted by 32 connections, each insert its own transaction.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(AT_ONCE as u32)
        .connect(&s.database_url)
        .await
        .expect("the database");
    let template: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM deployments LIMIT 1").fetch_one(&pool).await.expect("a row");
    let started = Instant::now();
    futures_util::stream::iter(0..pushes)
        .map(|i| {
            let pool = pool.clone();
            async move {
                sqlx::query(
                    "INSERT INTO deployments
                     SELECT (jsonb_populate_record(NULL::deployments, to_jsonb(d) || jsonb_build_object(
                         'id', $1::uuid, 'sha', $2::text, 'delivery_id', $3::text, 'environment', 'baseline'))).*
                     FROM deployments d WHERE d.id = $4",
                )
                .bind(uuid::Uuid::now_v7())
                .bind(sha(i))
                .bind(format!("baseline-{i}"))
                .bind(template)
                .execute(&pool)
                .await
                .expect("insert");
            }
        })
        .buffer_unordered(AT_ONCE)
        .collect::<Vec<()>>()
        .await;
    let baseline = pushes as f64 / started.elapsed().as_secs_f64();
    pool.close().await;
    println!(
        "intake: {pushes} signed pushes to {APPS} apps ({} delivered twice), {AT_ONCE} at a time: {rows} deployments, {duplicates} duplicated",
        pushes / 10
    );
    report(&Figure {
        bench: "intake",
        what: "webhooks accepted",
        unit: Unit::PerSecond,
        ours,
        baseline: Some(("raw inserts of the same rows", baseline)),
        target: None,
    });
}
