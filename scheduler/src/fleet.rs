//! The runner fleet. Runners report themselves on the runner queue ([`RunnerReport`]); the inbox
//! records each report here, the lease loop marks runners lost once they have been silent for
//! `SLIPWAY_RUNNER_LOST_SECONDS`, and `GET /api/v1/runners` lists them. `last_seen_at` is the
//! database's clock, so a runner's skewed clock cannot make it look alive or lost.

use std::time::Duration;

use chrono::{DateTime, Utc};
use slipway_proto::api::{self, RunnerState};
use slipway_proto::message::{RunnerActivity, RunnerReport};
use sqlx::PgPool;
use uuid::Uuid;

/// The longest field a runner may report (id, version, host, a label); longer ones are cut.
const FIELD_MAX: usize = 200;
/// The most labels kept.
const LABELS_MAX: usize = 32;

fn state_of(activity: RunnerActivity) -> RunnerState {
    match activity {
        RunnerActivity::Idle => RunnerState::Idle,
        RunnerActivity::Busy => RunnerState::Busy,
        RunnerActivity::Draining => RunnerState::Draining,
        RunnerActivity::Stopped => RunnerState::Stopped,
    }
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(FIELD_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Records a report; one older than the last recorded for the runner is ignored. Returns whether
/// the runner was lost until now (it came back).
pub async fn record(pool: &PgPool, report: &RunnerReport) -> Result<bool, sqlx::Error> {
    let labels: Vec<String> = report.labels.iter().take(LABELS_MAX).map(|l| cut(l)).collect();
    let was_lost: Option<bool> = sqlx::query_scalar(
        "WITH before AS (SELECT state FROM runners WHERE id = $1)
         INSERT INTO runners (id, version, host, slots, labels, state, jobs, started_at, last_seen_at, reported_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), $9)
         ON CONFLICT (id) DO UPDATE SET version = $2, host = $3, slots = $4, labels = $5, state = $6, jobs = $7,
             started_at = $8, last_seen_at = now(), reported_at = $9
         WHERE runners.reported_at <= $9
         RETURNING coalesce((SELECT state = 'lost' FROM before), false)",
    )
    .bind(cut(&report.runner_id))
    .bind(cut(&report.version))
    .bind(cut(&report.host))
    .bind(report.slots.min(i32::MAX as u32) as i32)
    .bind(serde_json::json!(labels))
    .bind(state_of(report.state).as_str())
    .bind(&report.jobs)
    .bind(report.started_at)
    .bind(report.sent_at)
    .fetch_optional(pool)
    .await?;
    Ok(was_lost.unwrap_or(false))
}

/// Marks every online runner silent for `after` as lost and returns their ids; forgets runners
/// that left or were lost more than a day ago.
pub async fn mark_lost(pool: &PgPool, after: Duration) -> Result<Vec<String>, sqlx::Error> {
    let lost: Vec<String> = sqlx::query_scalar(
        "UPDATE runners SET state = 'lost'
         WHERE state IN ('idle', 'busy', 'draining') AND last_seen_at < now() - make_interval(secs => $1)
         RETURNING id",
    )
    .bind(after.as_secs_f64())
    .fetch_all(pool)
    .await?;
    sqlx::query("DELETE FROM runners WHERE state IN ('lost', 'stopped') AND last_seen_at < now() - interval '1 day'")
        .execute(pool)
        .await?;
    Ok(lost)
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    version: String,
    host: String,
    state: String,
    slots: i32,
    jobs: Vec<Uuid>,
    labels: serde_json::Value,
    started_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
}

/// The runners seen in the last hour and every online one, oldest first. A runner silent for
/// `lost_after` shows as lost even before the lease loop marked it.
pub async fn list(pool: &PgPool, lost_after: Duration) -> Result<Vec<api::Runner>, sqlx::Error> {
    let rows = sqlx::query_as::<_, Row>(
        "SELECT id, version, host,
                CASE WHEN state IN ('idle', 'busy', 'draining') AND last_seen_at < now() - make_interval(secs => $1)
                     THEN 'lost' ELSE state END AS state,
                slots, jobs, labels, started_at, last_seen_at
         FROM runners
         WHERE state IN ('idle', 'busy', 'draining') OR last_seen_at > now() - interval '1 hour'
         ORDER BY started_at, id",
    )
    .bind(lost_after.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| api::Runner {
            state: RunnerState::parse(&r.state).unwrap_or(RunnerState::Lost),
            id: r.id,
            version: r.version,
            host: r.host,
            slots: r.slots.max(0) as u32,
            jobs: r.jobs,
            labels: serde_json::from_value(r.labels).unwrap_or_default(),
            started_at: r.started_at,
            last_seen_at: r.last_seen_at,
        })
        .collect())
}

/// Runners online and busy, and the slots of those that take jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    pub online: u32,
    pub busy: u32,
    pub slots: u32,
    pub slots_busy: u32,
}

impl Capacity {
    pub fn of(runners: &[api::Runner]) -> Self {
        let mut c = Capacity::default();
        for r in runners.iter().filter(|r| r.state.is_online()) {
            c.online += 1;
            c.busy += u32::from(!r.jobs.is_empty());
            if r.state != RunnerState::Draining {
                c.slots += r.slots;
                c.slots_busy += (r.jobs.len() as u32).min(r.slots);
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(state: RunnerState, slots: u32, jobs: usize) -> api::Runner {
        api::Runner {
            id: "r".into(),
            version: "0.1.0".into(),
            host: "h".into(),
            state,
            slots,
            jobs: (0..jobs).map(|i| Uuid::from_u128(i as u128)).collect(),
            labels: Vec::new(),
            started_at: Utc::now(),
            last_seen_at: Utc::now(),
        }
    }

    #[test]
    fn capacity_counts_online_runners_and_the_slots_of_those_taking_jobs() {
        let fleet = [
            runner(RunnerState::Idle, 2, 0),
            runner(RunnerState::Busy, 2, 1),
            runner(RunnerState::Draining, 4, 1),
            runner(RunnerState::Lost, 8, 1),
            runner(RunnerState::Stopped, 8, 0),
        ];
        assert_eq!(Capacity::of(&fleet), Capacity { online: 3, busy: 2, slots: 4, slots_busy: 1 });
    }

    #[test]
    fn reported_fields_are_cut_to_a_bounded_length_on_a_char_boundary() {
        let long = "é".repeat(FIELD_MAX);
        let cut = cut(&long);
        assert!(cut.len() <= FIELD_MAX && cut.chars().all(|c| c == 'é'));
        assert_eq!(super::cut("short"), "short");
    }
}
