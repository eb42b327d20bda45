//! The lifecycle's guarded write on real PostgreSQL: concurrent writers, corrupt rows,
//! supersede and the one-at-a-time outbox. Each test gets its own migrated database.

use slipway_proto::{Body, CancelRequest, Control, Envelope, Input, Policy, Step, StepStatus};
use slipway_scheduler::apps::{self, App, NewApp};
use slipway_scheduler::deployments::{self, Created, NewDeployment};
use slipway_scheduler::seal::Keyring;
use slipway_scheduler::transition::{self, Applied, TransitionError};
use sqlx::PgPool;
use uuid::Uuid;

const POLICY: Policy = Policy { max_attempts: 3 };

async fn app(pool: &PgPool) -> App {
    let new: NewApp = serde_json::from_value(serde_json::json!({
        "name": "web", "repo_url": "https://git.example.com/acme/web.git", "webhook_secret": "s3cret-s3cret-s3cret",
    }))
    .expect("new app");
    apps::create(pool, &Keyring::from_key([9; 32]), &new).await.expect("app created")
}

fn manual<'a>(app: &'a App, sha: &'a str) -> NewDeployment<'a> {
    NewDeployment { created_by: Some("ci"), ..NewDeployment::of(app, sha, "refs/heads/main", "manual") }
}

async fn queued(pool: &PgPool, app: &App, sha: char) -> Uuid {
    let sha: String = std::iter::repeat_n(sha, 40).collect();
    match deployments::create(pool, &Keyring::from_key([9; 32]), manual(app, &sha), POLICY).await.expect("created") {
        Created::New { id, .. } => id,
        Created::Existing(id) => panic!("{id} existed"),
    }
}

fn message(id: Uuid, runner: &str, claim: Uuid, body: Body) -> Envelope {
    Envelope { deployment_id: id, attempt: 1, runner_id: runner.into(), claim, body }
}

async fn state(pool: &PgPool, id: Uuid) -> (String, Option<String>, Option<String>, Option<String>) {
    sqlx::query_as("SELECT state, runner_id, current_step, cancel_by FROM deployments WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("row")
}

#[sqlx::test]
async fn of_two_writers_deciding_on_the_same_row_only_one_writes(pool: PgPool) {
    let app = app(&pool).await;
    let id = queued(&pool, &app, 'a').await;
    let (a, b) = (message(id, "a", Uuid::new_v4(), Body::Claimed), message(id, "b", Uuid::new_v4(), Body::Claimed));
    let mut first = pool.begin().await.expect("tx");
    let mut second = pool.begin().await.expect("tx");
    // The second writer reads the row before the first commits, then blocks on the row lock.
    let loaded = transition::load(&mut second, id).await.expect("load");
    assert_eq!(loaded.row.state().as_str(), "queued");
    let won = transition::apply_once(&mut first, id, &Input::Runner(&a), POLICY).await.expect("first");
    assert!(matches!(won, Some(Applied::Changed { control: Some(Control::Grant { .. }), .. })), "{won:?}");
    let racing = tokio::spawn(async move {
        let lost = transition::apply_once(&mut second, id, &Input::Runner(&b), POLICY).await;
        (lost, second)
    });
    // Wait until the second writer's guarded UPDATE is blocked on the first writer's row lock.
    let mut waited = 0;
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE NOT l.granted AND a.datname = current_database()")
        .fetch_one(&pool)
        .await
        .expect("pg_locks")
        == 0
    {
        waited += 1;
        assert!(waited < 500, "the second writer never blocked");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    first.commit().await.expect("commit");
    let (lost, second) = racing.await.expect("join");
    second.rollback().await.expect("rollback");
    // Its UPDATE matched zero rows once the first committed: it lost, and wrote nothing.
    assert!(matches!(lost, Ok(None)), "the second claim must lose the race: {lost:?}");
    assert_eq!(state(&pool, id).await.1.as_deref(), Some("a"));
}

#[sqlx::test]
async fn twenty_concurrent_claims_yield_exactly_one_grant(pool: PgPool) {
    let app = app(&pool).await;
    let id = queued(&pool, &app, 'b').await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let env = message(id, &format!("r{i}"), Uuid::new_v4(), Body::Claimed);
                transition::apply(&pool, id, &Input::Runner(&env), POLICY).await.expect("apply")
            })
        })
        .collect();
    let mut grants = 0;
    for task in tasks {
        match task.await.expect("join") {
            Applied::Changed { control: Some(Control::Grant { .. }), .. } => grants += 1,
            Applied::Rejected { control: Some(Control::Cancel { .. }), .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(grants, 1);
}

#[sqlx::test]
async fn a_cancel_racing_step_reports_is_never_lost(pool: PgPool) {
    let app = app(&pool).await;
    let id = queued(&pool, &app, 'c').await;
    let claim = Uuid::new_v4();
    let claimed = message(id, "a", claim, Body::Claimed);
    transition::apply(&pool, id, &Input::Runner(&claimed), POLICY).await.expect("claim");
    let steps: Vec<_> = (0..30)
        .map(|i| {
            let pool = pool.clone();
            let step = if i % 2 == 0 { Step::Build } else { Step::Test };
            tokio::spawn(async move {
                let env = message(id, "a", claim, Body::Step { step, status: StepStatus::Running, error: None });
                transition::apply(&pool, id, &Input::Runner(&env), POLICY).await.expect("step")
            })
        })
        .collect();
    let cancel = Input::Cancel(CancelRequest { by: "ann".into(), reason: "wrong commit".into() });
    let cancelled = transition::apply(&pool, id, &cancel, POLICY).await.expect("cancel");
    assert!(matches!(cancelled, Applied::Changed { control: Some(Control::Cancel { .. }), .. }), "{cancelled:?}");
    for step in steps {
        step.await.expect("join");
    }
    let (state, runner, _, cancel_by) = state(&pool, id).await;
    assert_eq!((state.as_str(), runner.as_deref(), cancel_by.as_deref()), ("running", Some("a"), Some("ann")));
    let stopped = message(id, "a", claim, Body::Abandoned { reason: "cancelled".into() });
    transition::apply(&pool, id, &Input::Runner(&stopped), POLICY).await.expect("stopped");
    let row: (String, Option<String>) = sqlx::query_as("SELECT state, cancel_reason FROM deployments WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_eq!(row, ("cancelled".into(), Some("wrong commit".into())));
}

#[sqlx::test]
async fn an_unknown_stored_state_is_an_error_not_a_default(pool: PgPool) {
    let app = app(&pool).await;
    let id = queued(&pool, &app, 'd').await;
    sqlx::query("ALTER TABLE deployments DROP CONSTRAINT deployments_state_check").execute(&pool).await.expect("ddl");
    sqlx::query("UPDATE deployments SET state = 'paused' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .expect("corrupt");
    let env = message(id, "a", Uuid::new_v4(), Body::Heartbeat);
    let err = transition::apply(&pool, id, &Input::Runner(&env), POLICY).await.expect_err("corrupt row");
    assert!(matches!(&err, TransitionError::Corrupt { column: "state", value, .. } if value == "paused"), "{err}");
    assert!(!err.is_transient());
    assert!(deployments::state(&pool, id).await.is_err());
    assert_eq!(state(&pool, id).await.0, "paused", "nothing was written");
}

#[sqlx::test]
async fn a_newer_deployment_supersedes_queued_ones_through_the_lifecycle(pool: PgPool) {
    let app = app(&pool).await;
    let old = queued(&pool, &app, 'e').await;
    let sha: String = std::iter::repeat_n('f', 40).collect();
    let created =
        deployments::create(&pool, &Keyring::from_key([9; 32]), manual(&app, &sha), POLICY).await.expect("new");
    let Created::New { id, superseded } = created else { panic!("expected new") };
    assert_eq!(superseded.len(), 1);
    let (state, _, _, by) = state(&pool, old).await;
    assert_eq!((state.as_str(), by.as_deref()), ("cancelled", Some("slipway")));
    let reason: String = sqlx::query_scalar("SELECT cancel_reason FROM deployments WHERE id = $1")
        .bind(old)
        .fetch_one(&pool)
        .await
        .expect("row");
    assert!(reason.contains(&id.to_string()), "{reason}");
}

#[sqlx::test]
async fn the_outbox_gives_one_deployment_per_app_until_it_is_finished(pool: PgPool) {
    let app = app(&pool).await;
    let first = queued(&pool, &app, '1').await;
    // A second queued row of the same app that no supersede touched (as a rollback racing a push could leave).
    sqlx::query(
        "INSERT INTO deployments (id, app_id, sha, environment, git_ref, source, state)
         VALUES ($1, $2, repeat('2', 40), 'production', 'refs/heads/main', 'rollback', 'queued')",
    )
    .bind(Uuid::now_v7())
    .bind(app.id)
    .execute(&pool)
    .await
    .expect("second row");
    let out = deployments::outbox(&pool, &Keyring::from_key([9; 32]), 10).await.expect("outbox");
    assert_eq!(out.iter().map(|o| o.job.deployment_id).collect::<Vec<_>>(), [first]);
    assert!(out.iter().all(|o| o.traceparent.as_deref().and_then(slipway_telemetry::trace::Root::parse).is_some()));
    assert!(deployments::mark_published(&pool, first, 1).await.expect("mark"));
    assert!(
        deployments::outbox(&pool, &Keyring::from_key([9; 32]), 10).await.expect("outbox").is_empty(),
        "the first is out with runners"
    );
    let cancel = Input::Cancel(CancelRequest { by: "ann".into(), reason: "r".into() });
    transition::apply(&pool, first, &cancel, POLICY).await.expect("cancel");
    assert_eq!(
        deployments::outbox(&pool, &Keyring::from_key([9; 32]), 10).await.expect("outbox").len(),
        1,
        "the next one goes once the first ended"
    );
}

#[sqlx::test]
async fn concurrent_deployments_of_one_app_get_one_release_each_without_a_deadlock(pool: PgPool) {
    let app = app(&pool).await;
    let creating: Vec<_> = (0..12u8)
        .map(|i| {
            let (pool, app) = (pool.clone(), app.clone());
            tokio::spawn(async move {
                let sha = format!("{:040x}", u64::from(i) + 1);
                deployments::create(&pool, &Keyring::from_key([9; 32]), manual(&app, &sha), POLICY).await
            })
        })
        .collect();
    for created in creating {
        let created = created.await.expect("task");
        assert!(matches!(created, Ok(Created::New { .. })), "{created:?}");
    }
    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM releases ORDER BY version").fetch_all(&pool).await.expect("versions");
    assert_eq!(versions, (1..=12).collect::<Vec<i32>>(), "one release each, numbered without gaps or repeats");
}
