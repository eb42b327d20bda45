//! The runner fleet on real PostgreSQL: reports recorded in order (a late, older one is
//! ignored), hostile fields bounded, silent runners marked lost and back when they report.

use std::time::Duration;

use chrono::Utc;
use slipway_proto::api::RunnerState;
use slipway_proto::message::{RunnerActivity, RunnerReport};
use slipway_scheduler::fleet;
use sqlx::PgPool;

fn report(id: &str, state: RunnerActivity, sent_ago_ms: i64) -> RunnerReport {
    RunnerReport {
        runner_id: id.into(),
        version: "0.1.0".into(),
        host: "builder-1".into(),
        slots: 2,
        labels: vec!["linux".into()],
        state,
        jobs: Vec::new(),
        started_at: Utc::now() - chrono::Duration::seconds(60),
        sent_at: Utc::now() - chrono::Duration::milliseconds(sent_ago_ms),
    }
}

const LOST: Duration = Duration::from_secs(30);

#[sqlx::test]
async fn a_late_older_report_does_not_undo_a_newer_one(pool: PgPool) {
    assert!(!fleet::record(&pool, &report("r1", RunnerActivity::Draining, 0)).await.expect("record"));
    fleet::record(&pool, &report("r1", RunnerActivity::Idle, 5_000)).await.expect("record");
    let runners = fleet::list(&pool, LOST).await.expect("list");
    assert_eq!(runners.len(), 1);
    assert_eq!((runners[0].state, runners[0].slots), (RunnerState::Draining, 2));
    fleet::record(&pool, &report("r1", RunnerActivity::Stopped, 0)).await.expect("record");
    assert_eq!(fleet::list(&pool, LOST).await.expect("list")[0].state, RunnerState::Stopped);
}

#[sqlx::test]
async fn hostile_fields_are_bounded(pool: PgPool) {
    let mut hostile = report(&"x".repeat(10_000), RunnerActivity::Idle, 0);
    hostile.host = "h\u{1b}[2J".repeat(1_000);
    hostile.labels = (0..1_000).map(|i| format!("label-{i}")).collect();
    hostile.slots = u32::MAX;
    fleet::record(&pool, &hostile).await.expect("recorded, bounded");
    let r = &fleet::list(&pool, LOST).await.expect("list")[0];
    assert_eq!((r.id.len(), r.labels.len()), (200, 32));
    assert!(r.host.len() <= 200);
    assert_eq!(r.slots, i32::MAX as u32);
}

#[sqlx::test]
async fn a_silent_runner_is_marked_lost_and_comes_back_when_it_reports(pool: PgPool) {
    fleet::record(&pool, &report("quiet", RunnerActivity::Busy, 0)).await.expect("record");
    fleet::record(&pool, &report("left", RunnerActivity::Stopped, 0)).await.expect("record");
    sqlx::query("UPDATE runners SET last_seen_at = now() - interval '1 minute'").execute(&pool).await.expect("age");
    let listed = fleet::list(&pool, LOST).await.expect("list");
    assert_eq!(listed.iter().find(|r| r.id == "quiet").map(|r| r.state), Some(RunnerState::Lost), "shown lost at once");
    assert_eq!(fleet::mark_lost(&pool, LOST).await.expect("mark"), ["quiet"], "a runner that left is not lost");
    assert!(fleet::mark_lost(&pool, LOST).await.expect("again").is_empty(), "marked once");
    assert!(fleet::record(&pool, &report("quiet", RunnerActivity::Idle, 0)).await.expect("back"), "it was lost");
    let back = fleet::list(&pool, LOST).await.expect("list");
    assert_eq!(back.iter().find(|r| r.id == "quiet").map(|r| r.state), Some(RunnerState::Idle));
}
