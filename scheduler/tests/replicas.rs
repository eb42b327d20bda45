//! Several scheduler replicas on real PostgreSQL: exactly one leads at a time, leadership moves
//! when the leader goes, the relay's outbox query never hands one row to two replicas, and a
//! wake-up sent on one replica's pool reaches a follower listening through another.

use std::time::Duration;

use slipway_scheduler::leader::{self, Leadership};
use slipway_scheduler::live::Live;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Waits up to `within` for `cond`, checking every 50 ms.
async fn until(within: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test]
async fn one_replica_leads_and_another_takes_over_when_it_goes(pool: PgPool) {
    let key = leader::lock_key("replicas-test");
    let (a, b, c) = (Leadership::default(), Leadership::default(), Leadership::default());
    let (stop_a, stop_b, stop_c) = (CancellationToken::new(), CancellationToken::new(), CancellationToken::new());
    let ta = tokio::spawn(leader::run(pool.clone(), key, a.clone(), stop_a.clone()));
    until(Duration::from_secs(5), "the first replica to lead", || a.is_leader()).await;
    let tb = tokio::spawn(leader::run(pool.clone(), key, b.clone(), stop_b.clone()));
    let tc = tokio::spawn(leader::run(pool.clone(), key, c.clone(), stop_c.clone()));
    // Several tries of the others: never two leaders.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!([a.is_leader(), b.is_leader(), c.is_leader()], [true, false, false]);
    }
    // Another installation's replica leads its own installation meanwhile.
    let other = Leadership::default();
    let stop_other = CancellationToken::new();
    let to = tokio::spawn(leader::run(pool.clone(), leader::lock_key("another"), other.clone(), stop_other.clone()));
    until(Duration::from_secs(5), "another installation's leader", || other.is_leader()).await;

    // The leader goes: one of the others leads within a couple of tries, and only one.
    let went = tokio::time::Instant::now();
    stop_a.cancel();
    ta.await.expect("leader task");
    assert!(!a.is_leader());
    until(Duration::from_secs(5), "a new leader", || b.is_leader() || c.is_leader()).await;
    let took = went.elapsed();
    assert!(took <= leader::TRY_EVERY * 3, "failover took {took:?}");
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(b.is_leader() ^ c.is_leader(), "exactly one leader");
    }
    // A leader whose session is ended from outside steps down; someone leads again.
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'slipway-scheduler-leader'
         AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = ($1::bigint & 4294967295)::oid)",
    )
    .bind(key)
    .fetch_all(&pool)
    .await
    .expect("terminate the leader's session");
    assert_eq!(ended, [true], "the leader's session held the lock");
    until(Duration::from_secs(5), "the leader to step down", || !(b.is_leader() && c.is_leader())).await;
    until(Duration::from_secs(10), "a leader after the session was ended", || b.is_leader() ^ c.is_leader()).await;
    for stop in [stop_b, stop_c, stop_other] {
        stop.cancel();
    }
    for task in [tb, tc, to] {
        task.await.expect("task");
    }
}

#[sqlx::test]
async fn a_wake_up_reaches_followers_listening_on_another_replica(pool: PgPool) {
    let (sender, sender_tasks) = Live::new();
    let (receiver, receiver_tasks) = Live::new();
    let cancel = CancellationToken::new();
    let running = [
        tokio::spawn(sender_tasks.run(pool.clone(), cancel.clone())),
        tokio::spawn(receiver_tasks.run(pool.clone(), cancel.clone())),
    ];
    let mut woken = receiver.subscribe();
    // The listener wakes everyone (nil) once it listens.
    let first = tokio::time::timeout(Duration::from_secs(5), woken.recv()).await.expect("listening").expect("open");
    assert!(first.is_nil());
    let id = uuid::Uuid::now_v7();
    sender.wake(id);
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match woken.recv().await {
                Ok(got) if got == id => return got,
                Ok(_) => {}
                Err(err) => panic!("wake-ups closed: {err}"),
            }
        }
    })
    .await
    .expect("the wake-up crossed replicas");
    assert_eq!(got, id);
    cancel.cancel();
    for task in running {
        task.await.expect("live tasks");
    }
}

#[sqlx::test]
async fn two_relays_never_take_the_same_outbox_row(pool: PgPool) {
    use slipway_scheduler::apps::{self, NewApp};
    use slipway_scheduler::deployments::{self, NewDeployment};
    use slipway_scheduler::seal::Keyring;
    let keyring = Keyring::from_key([9; 32]);
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let new: NewApp = serde_json::from_value(serde_json::json!({
            "name": name, "repo_url": format!("https://git.example.com/acme/{name}.git"),
            "webhook_secret": "s3cret-s3cret-s3cret",
        }))
        .expect("new app");
        let app = apps::create(&pool, &keyring, &new).await.expect("app");
        let sha = "a".repeat(40);
        let new = NewDeployment::of(&app, &sha, "refs/heads/main", "manual");
        match deployments::create(&pool, &keyring, new, slipway_proto::Policy { max_attempts: 3 })
            .await
            .expect("created")
        {
            deployments::Created::New { id, .. } => ids.push(id),
            other => panic!("{other:?}"),
        }
    }
    // Replica A holds the oldest row while it publishes; replica B gets the other one, never it.
    let mut a = pool.begin().await.expect("tx a");
    let taken_a = deployments::outbox(&mut *a, &keyring, 1).await.expect("outbox a");
    let mut b = pool.begin().await.expect("tx b");
    let taken_b = deployments::outbox(&mut *b, &keyring, 10).await.expect("outbox b");
    assert_eq!(taken_a.iter().map(|o| o.job.deployment_id).collect::<Vec<_>>(), [ids[0]]);
    assert_eq!(taken_b.iter().map(|o| o.job.deployment_id).collect::<Vec<_>>(), [ids[1]]);
    // A replica that dies before its commit leaves its row to be published by another.
    drop(a);
    b.commit().await.expect("commit b");
    let again = deployments::outbox(&pool, &keyring, 10).await.expect("outbox");
    assert_eq!(again.iter().map(|o| o.job.deployment_id).collect::<Vec<_>>(), ids, "none was marked published");
}
