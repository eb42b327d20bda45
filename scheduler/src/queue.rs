//! "Why is it waiting": every queued deployment, oldest first, with the one reason it is not
//! running yet, decided from its row, the deployments of the same app, the fleet and the
//! broker. The same snapshot feeds `GET /api/v1/queue` and the queue gauges on `/metrics`.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use slipway_proto::State;
use slipway_proto::api::{self, WaitReason};
use sqlx::PgPool;
use uuid::Uuid;

use crate::fleet::{self, Capacity};

/// Whether the relay can reach RabbitMQ, and since when it cannot.
#[derive(Debug, Default)]
pub struct BrokerHealth {
    down_since: Mutex<Option<DateTime<Utc>>>,
}

impl BrokerHealth {
    /// The relay has a channel.
    pub fn up(&self) {
        *self.down_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The relay lost (or has not yet made) its connection; keeps the first moment.
    pub fn down(&self) {
        self.down_since.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(Utc::now);
    }

    pub fn down_since(&self) -> Option<DateTime<Utc>> {
        *self.down_since.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    app: String,
    environment: String,
    sha: String,
    source: String,
    attempt: i32,
    created_at: DateTime<Utc>,
    published: bool,
    not_before: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    blocker: Option<Uuid>,
    blocker_state: Option<String>,
}

/// The queue now, with the fleet's capacity.
pub async fn snapshot(
    pool: &PgPool,
    broker: &BrokerHealth,
    lost_after: std::time::Duration,
) -> Result<(api::Queue, Vec<api::Runner>), sqlx::Error> {
    let runners = fleet::list(pool, lost_after).await?;
    let capacity = Capacity::of(&runners);
    // The blocker is what the outbox waits for (deployments::outbox): a running or published
    // deployment of the same app and environment, or an older queued one.
    let rows = sqlx::query_as::<_, Row>(
        "SELECT d.id, a.name AS app, d.environment, d.sha, d.source, d.attempt, d.created_at,
                d.published_at IS NOT NULL AS published, d.not_before, now() AS now,
                b.id AS blocker, b.state AS blocker_state
         FROM deployments d JOIN apps a ON a.id = d.app_id
         LEFT JOIN LATERAL (
             SELECT r.id, r.state FROM deployments r
             WHERE r.app_id = d.app_id AND r.environment = d.environment AND r.id <> d.id
               AND (r.state = 'running' OR (r.state = 'queued' AND (r.published_at IS NOT NULL OR r.created_at < d.created_at)))
             ORDER BY r.state = 'running' DESC, r.published_at IS NOT NULL DESC, r.created_at
             LIMIT 1
         ) b ON true
         WHERE d.state = 'queued'
         ORDER BY d.created_at, d.id",
    )
    .fetch_all(pool)
    .await?;
    let down_since = broker.down_since();
    let mut entries = Vec::with_capacity(rows.len());
    let mut oldest = None;
    for (i, r) in rows.into_iter().enumerate() {
        let wait = (r.now - r.created_at).num_milliseconds().max(0) as f64 / 1000.0;
        oldest.get_or_insert(wait);
        let reason = reason(&r, &capacity, down_since);
        entries.push(api::Queued {
            position: i as u32 + 1,
            deployment_id: r.id,
            app: r.app,
            environment: r.environment,
            sha: r.sha,
            source: r.source,
            attempt: r.attempt.max(0) as u32,
            created_at: r.created_at,
            wait_seconds: wait,
            reason,
        });
    }
    let summary = api::QueueSummary {
        depth: entries.len() as u32,
        oldest_wait_seconds: oldest,
        runners_online: capacity.online,
        runners_busy: capacity.busy,
        slots: capacity.slots,
        slots_busy: capacity.slots_busy,
    };
    Ok((api::Queue { summary, entries }, runners))
}

fn reason(r: &Row, capacity: &Capacity, broker_down_since: Option<DateTime<Utc>>) -> WaitReason {
    if r.published {
        return match capacity.slots {
            0 => WaitReason::NoRunner,
            slots => WaitReason::WaitingForRunner { slots_busy: capacity.slots_busy, slots },
        };
    }
    if let Some(until) = r.not_before.filter(|until| *until > r.now) {
        return WaitReason::BackingOff { until, attempt: r.attempt.max(0) as u32 };
    }
    if let (Some(deployment_id), Some(state)) = (r.blocker, r.blocker_state.as_deref().and_then(State::parse)) {
        return WaitReason::HeldBehind { deployment_id, state };
    }
    WaitReason::Unpublished { broker_down_since }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(published: bool, not_before: Option<i64>, blocker: Option<&str>) -> Row {
        let now = Utc::now();
        Row {
            id: Uuid::from_u128(1),
            app: "web".into(),
            environment: "production".into(),
            sha: "a".repeat(40),
            source: "github".into(),
            attempt: 2,
            created_at: now,
            published,
            not_before: not_before.map(|s| now + chrono::Duration::seconds(s)),
            now,
            blocker: blocker.map(|_| Uuid::from_u128(9)),
            blocker_state: blocker.map(str::to_string),
        }
    }

    const FLEET: Capacity = Capacity { online: 2, busy: 2, slots: 3, slots_busy: 3 };

    #[test]
    fn each_queued_deployment_gets_the_one_reason_it_waits() {
        let down = Some(Utc::now());
        assert_eq!(
            reason(&row(true, None, None), &FLEET, None),
            WaitReason::WaitingForRunner { slots_busy: 3, slots: 3 }
        );
        assert_eq!(reason(&row(true, None, None), &Capacity::default(), None), WaitReason::NoRunner);
        let draining_only = Capacity { online: 1, busy: 1, slots: 0, slots_busy: 0 };
        assert_eq!(
            reason(&row(true, None, None), &draining_only, None),
            WaitReason::NoRunner,
            "a draining runner takes nothing"
        );
        let backing = reason(&row(false, Some(30), Some("running")), &FLEET, down);
        assert!(matches!(backing, WaitReason::BackingOff { attempt: 2, .. }), "{backing:?}");
        assert_eq!(
            reason(&row(false, Some(-1), Some("running")), &FLEET, down),
            WaitReason::HeldBehind { deployment_id: Uuid::from_u128(9), state: State::Running },
            "a backoff that is over no longer counts"
        );
        assert_eq!(
            reason(&row(false, None, Some("queued")), &FLEET, None),
            WaitReason::HeldBehind { deployment_id: Uuid::from_u128(9), state: State::Queued }
        );
        assert_eq!(reason(&row(false, None, None), &FLEET, down), WaitReason::Unpublished { broker_down_since: down });
        assert_eq!(reason(&row(false, None, None), &FLEET, None), WaitReason::Unpublished { broker_down_since: None });
    }

    #[test]
    fn the_broker_is_down_since_the_first_failure_until_it_is_up() {
        let health = BrokerHealth::default();
        assert_eq!(health.down_since(), None);
        health.down();
        let first = health.down_since().expect("down");
        health.down();
        assert_eq!(health.down_since(), Some(first), "the first moment is kept");
        health.up();
        assert_eq!(health.down_since(), None);
    }
}
