//! Secrets at rest on real PostgreSQL: apps stored in the clear before sealing are sealed at
//! start-up, and a key rotation re-encrypts every app so only the new key opens them.

use slipway_scheduler::apps::{self, NewApp};
use slipway_scheduler::seal::{self, KeySource, Keyring};
use sqlx::PgPool;

fn new_app(name: &str) -> NewApp {
    serde_json::from_value(serde_json::json!({
        "name": name, "repo_url": "https://git.example.com/acme/web.git", "webhook_secret": "s3cret-s3cret-s3cret",
        "env": {"API_TOKEN": "tok-0123456789", "COLOUR": "blue"},
    }))
    .expect("new app")
}

fn key_file_source(dir: &std::path::Path) -> KeySource {
    KeySource { key: None, file: dir.join("secret.key"), previous: Vec::new() }
}

#[sqlx::test]
async fn apps_stored_in_the_clear_are_sealed_at_start_up(pool: PgPool) {
    sqlx::query(
        "INSERT INTO apps (id, name, repo_url, repo_key, branch, environment, target, health_path, port, env, webhook_secret, kube_settings)
         VALUES (gen_random_uuid(), 'legacy', 'https://x/y', 'https://x/y', 'main', 'production', 'docker', '/', 8080,
                 '{\"DB_PASSWORD\": \"pw-0123456789\", \"COLOUR\": \"blue\"}', 'legacy-webhook-secret',
                 '{\"secret_env\": {\"KUBE\": \"kube-secret-value\"}}')",
    )
    .execute(&pool)
    .await
    .expect("legacy row");
    let keyring = Keyring::from_key([3; 32]);
    assert_eq!(apps::seal_legacy(&pool, &keyring).await.expect("sealed"), 1);
    assert_eq!(apps::seal_legacy(&pool, &keyring).await.expect("again"), 0, "idempotent");

    let row: String = sqlx::query_scalar("SELECT a::text FROM apps a").fetch_one(&pool).await.expect("row");
    for value in ["pw-0123456789", "legacy-webhook-secret", "kube-secret-value"] {
        assert!(!row.contains(value), "{value} still in the clear: {row}");
    }
    let app = apps::get(&pool, "legacy").await.expect("query").expect("app");
    let secrets = app.secrets(&keyring).expect("opens");
    assert_eq!(secrets.webhook_secret, "legacy-webhook-secret");
    let job = app.job_app(&keyring, None, &app.environment).expect("job app");
    assert_eq!(job.env["DB_PASSWORD"], "pw-0123456789");
    assert_eq!(job.env["COLOUR"], "blue");
    assert_eq!(job.secrets, ["DB_PASSWORD"]);
    assert_eq!(job.settings.expect("settings")["secret_env"]["KUBE"], "kube-secret-value");
    assert_eq!(app.view().env["DB_PASSWORD"], "***");
}

#[sqlx::test]
async fn a_rotation_re_encrypts_every_app_with_the_new_key(pool: PgPool) {
    let dir = tempfile::tempdir().expect("dir");
    let source = key_file_source(dir.path());
    let old = Keyring::load(&source).expect("key file created");
    for name in ["one", "two", "three"] {
        apps::create(&pool, &old, &new_app(name)).await.expect("app");
    }
    let before: Vec<String> =
        sqlx::query_scalar("SELECT sealed FROM apps ORDER BY name").fetch_all(&pool).await.expect("rows");

    let (count, new_id) = seal::rotate(&pool, &source, None).await.expect("rotated");
    assert_eq!(count, 3);
    assert_ne!(new_id, old.current_id());
    assert!(dir.path().join("secret.key.previous").exists() && !dir.path().join("secret.key.next").exists());

    let after: Vec<String> =
        sqlx::query_scalar("SELECT sealed FROM apps ORDER BY name").fetch_all(&pool).await.expect("rows");
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(b, a);
        assert!(a.starts_with(&format!("s1.{new_id}.")), "{a}");
    }
    // The key file now holds the new key, and it alone opens every app.
    std::fs::remove_file(dir.path().join("secret.key.previous")).expect("drop the old key");
    let new = Keyring::load(&source).expect("new key file");
    assert_eq!(new.current_id(), new_id);
    for name in ["one", "two", "three"] {
        let app = apps::get(&pool, name).await.expect("query").expect("app");
        assert_eq!(app.secrets(&new).expect("opens with the new key").webhook_secret, "s3cret-s3cret-s3cret");
        assert!(app.secrets(&old).is_err(), "the old key no longer opens {name}");
    }
}

#[sqlx::test]
async fn with_a_key_in_the_environment_the_new_key_goes_to_the_named_file(pool: PgPool) {
    use base64::Engine;
    let dir = tempfile::tempdir().expect("dir");
    let key = base64::engine::general_purpose::STANDARD.encode([5u8; 32]);
    let source = KeySource { key: Some(key), file: dir.path().join("unused.key"), previous: Vec::new() };
    let old = Keyring::load(&source).expect("env key");
    apps::create(&pool, &old, &new_app("env")).await.expect("app");
    assert!(seal::rotate(&pool, &source, None).await.is_err(), "needs --to with SLIPWAY_SECRET_KEY");
    let to = dir.path().join("new.key");
    seal::rotate(&pool, &source, Some(&to)).await.expect("rotated");
    assert!(!source.file.exists(), "no key file is created when the key is given");
    let text = std::fs::read_to_string(&to).expect("new key");
    let new =
        Keyring::load(&KeySource { key: Some(text), file: source.file.clone(), previous: Vec::new() }).expect("key");
    let app = apps::get(&pool, "env").await.expect("query").expect("app");
    assert!(app.secrets(&new).is_ok());
}
