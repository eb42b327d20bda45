//! The `kubernetes` target against the API-server double (kube's client over real HTTP): every
//! strategy's healthy path and failing path with its rollback, pruning, config-only changes, a
//! failed apply, and invalid settings. Images name the double's scripted behaviour.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use slipway_deploy::kubernetes::{Cluster, Hook, JobOutcome};
use slipway_deploy::{DeployTarget, Error, KubeTarget, Release};
use slipway_tests::apiserver::ApiServer;

/// Set `SLIPWAY_TEST_KUBE_REAL=1` to run these tests against the cluster of kube's defaults
/// (kind, k3d) instead of the double, with `SLIPWAY_TEST_IMAGES` mapping the roles used here to
/// real images: `v1=...,v2=...,v3=...,crash=...,stall=...,flaky=...` (crash exits at once, stall
/// never becomes ready, flaky becomes ready and then restarts).
fn real_cluster() -> bool {
    std::env::var("SLIPWAY_TEST_KUBE_REAL").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The image for a role: on the double the role's name carries its behaviour.
fn image(role: &str) -> String {
    if real_cluster() {
        let images =
            std::env::var("SLIPWAY_TEST_IMAGES").expect("SLIPWAY_TEST_IMAGES names the images for a real cluster");
        let key = role.rsplit('-').next().unwrap_or(role);
        let found = images
            .split(',')
            .find_map(|pair| pair.split_once('=').filter(|(k, _)| k.trim() == key || k.trim() == role));
        found.map(|(_, v)| v.trim().to_string()).unwrap_or_else(|| panic!("SLIPWAY_TEST_IMAGES has no `{key}`"))
    } else {
        format!("registry.example.com/shop:{role}")
    }
}

struct Fixture {
    server: Option<ApiServer>,
    cluster: Cluster,
    target: KubeTarget,
    app: String,
    ns: String,
    lines: Mutex<Vec<String>>,
}

impl Fixture {
    async fn new() -> Self {
        let (server, client) = if real_cluster() {
            (None, kube::Client::try_default().await.expect("a cluster from kube's defaults"))
        } else {
            let server = ApiServer::start(Duration::from_millis(150)).await;
            let client = server.client();
            (Some(server), client)
        };
        let timeout = if real_cluster() { Duration::from_secs(180) } else { Duration::from_secs(10) };
        let app = slipway_tests::unique("shop");
        let ns = format!("app-{app}");
        Self {
            server,
            cluster: Cluster::new(client.clone()),
            target: KubeTarget::new(client, timeout),
            app,
            ns,
            lines: Mutex::new(Vec::new()),
        }
    }

    fn release(&self, image: &str, settings: Value) -> Release {
        Release {
            app: self.app.clone(),
            environment: "production".into(),
            deployment_id: uuid::Uuid::new_v4(),
            attempt: 1,
            sha: "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c".into(),
            image: image.into(),
            port: 8080,
            health_path: "/healthz".into(),
            env: BTreeMap::from([("LOG_LEVEL".into(), "info".into())]),
            limits: None,
            secrets: Vec::new(),
            hosts: Vec::new(),
            drain: None,
            rollback: false,
            settings: Some(settings),
        }
    }

    async fn deploy(&self, role: &str, mut settings: Value) -> Result<(), Error> {
        if settings["progress_deadline_seconds"].is_null() {
            settings["progress_deadline_seconds"] = json!(30);
        }
        let log = |line: String| self.lines.lock().expect("lines").push(line);
        self.target.deploy(&self.release(&image(role), settings), &log).await.map(|_| ())
    }

    /// `<app><suffix>`: the app's object names.
    fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.app)
    }

    async fn get(&self, kind: &str, suffix: &str) -> Option<Value> {
        let ns = if kind == "Namespace" { String::new() } else { self.ns.clone() };
        let name = if kind == "Namespace" { self.ns.clone() } else { self.name(suffix) };
        self.cluster.get(kind, &ns, &name).await.expect("read from the cluster")
    }

    async fn image_of(&self, suffix: &str) -> Option<String> {
        let d = self.get("Deployment", suffix).await?;
        d["spec"]["template"]["spec"]["containers"][0]["image"].as_str().map(str::to_string)
    }

    async fn replicas_of(&self, suffix: &str) -> Option<i64> {
        self.get("Deployment", suffix).await?["spec"]["replicas"].as_i64()
    }

    fn log(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if self.server.is_none() {
            let (cluster, ns) = (self.cluster.clone(), self.ns.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                let _ = rt.block_on(async { cluster.delete("Namespace", "", &ns).await });
            })
            .join();
        }
    }
}

fn rolled_back(result: Result<(), Error>) -> (String, String) {
    match result {
        Err(Error::RolledBack { reason, to }) => (reason, to),
        other => panic!("expected a rollback, got {other:?}"),
    }
}

#[tokio::test]
async fn rolling_applies_every_object_server_side_and_waits_for_the_rollout() {
    let f = Fixture::new().await;
    f.deploy("v1", json!({"host": "shop.example.com"})).await.expect("healthy rollout");
    for (kind, suffix) in [
        ("ResourceQuota", "-quota"),
        ("LimitRange", "-limits"),
        ("ConfigMap", "-config"),
        ("Deployment", ""),
        ("Service", ""),
        ("Ingress", ""),
        ("NetworkPolicy", ""),
    ] {
        let o = f.get(kind, suffix).await.unwrap_or_else(|| panic!("{kind} applied"));
        let managers: Vec<&str> = o["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["manager"].as_str())
            .collect();
        assert!(managers.contains(&"slipway"), "{kind} is applied by the slipway field manager: {managers:?}");
    }
    assert!(f.get("Namespace", "").await.is_some());
    assert_eq!(f.image_of("").await, Some(image("v1")));
    if let Some(server) = &f.server {
        let requests = server.lock().requests.join("\n");
        assert!(requests.contains("fieldManager=slipway") && requests.contains("force=true"), "{requests}");
        assert!(requests.contains("watch=true"), "the rollout is watched, not only polled: {requests}");
    }
    assert!(f.log().contains(&format!("rollout of {} complete: 2/2 available", f.app)), "{}", f.log());
}

#[tokio::test]
async fn a_crash_looping_rollout_is_rolled_back_to_the_previous_image_and_config() {
    let f = Fixture::new().await;
    f.deploy("v1", json!({})).await.expect("v1");
    let v1_hash = f.get("Deployment", "").await.expect("d")["spec"]["template"]["metadata"]["annotations"]["slipway.dev/config-hash"].clone();
    let (reason, to) = rolled_back(f.deploy("v2-crash", json!({"env": {"FEATURE": "on"}})).await);
    assert_eq!(to, image("v1"));
    assert!(
        reason.contains("CrashLoopBackOff") && reason.contains(&format!("pod {}-", f.app)),
        "names the pod and state: {reason}"
    );
    assert!(reason.contains("event "), "names the latest events: {reason}");
    assert_eq!(f.image_of("").await, Some(image("v1")));
    let d = f.get("Deployment", "").await.expect("d");
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["slipway.dev/config-hash"], v1_hash,
        "the previous config hash is back"
    );
    let config = f.get("ConfigMap", "-config").await.expect("config");
    assert!(config["data"]["FEATURE"].is_null(), "the previous config is back: {config}");
}

#[tokio::test]
async fn a_rollout_past_its_progress_deadline_is_rolled_back() {
    let f = Fixture::new().await;
    f.deploy("v1", json!({})).await.expect("v1");
    let (reason, to) = rolled_back(f.deploy("v2-stall", json!({"progress_deadline_seconds": 20})).await);
    assert!(reason.contains("ProgressDeadlineExceeded"), "{reason}");
    assert_eq!(to, image("v1"));
    assert_eq!(f.image_of("").await, Some(image("v1")));
}

#[tokio::test]
async fn a_first_deploy_that_fails_has_nothing_to_roll_back_to_and_says_so() {
    let f = Fixture::new().await;
    match f.deploy("v1-crash", json!({})).await {
        Err(Error::Rollout(reason)) => assert!(reason.contains("CrashLoopBackOff"), "{reason}"),
        other => panic!("expected a plain rollout failure, got {other:?}"),
    }
    assert!(f.log().contains("no previous revision to roll back to"));
}

#[tokio::test]
async fn objects_the_app_no_longer_declares_are_pruned() {
    let f = Fixture::new().await;
    let full =
        json!({"host": "shop.example.com", "min_replicas": 2, "max_replicas": 4, "secret_env": {"TOKEN": "t0p"}});
    f.deploy("v1", full).await.expect("v1");
    assert!(f.get("Ingress", "").await.is_some() && f.get("HorizontalPodAutoscaler", "").await.is_some());
    assert!(f.get("Secret", "-secrets").await.is_some());
    f.deploy("v2", json!({})).await.expect("v2");
    for (kind, suffix) in [("Ingress", ""), ("HorizontalPodAutoscaler", ""), ("Secret", "-secrets")] {
        assert!(f.get(kind, suffix).await.is_none(), "{kind} pruned");
    }
    assert!(f.get("Deployment", "").await.is_some() && f.get("Service", "").await.is_some());
    assert!(f.log().contains(&format!("pruned Ingress/{}", f.app)), "{}", f.log());
}

#[tokio::test]
async fn a_config_only_change_rolls_the_pods() {
    let f = Fixture::new().await;
    f.deploy("v1", json!({"secret_env": {"TOKEN": "one"}})).await.expect("v1");
    let before = f.get("Deployment", "").await.expect("d");
    f.deploy("v1", json!({"secret_env": {"TOKEN": "two"}})).await.expect("same image, new secret");
    let after = f.get("Deployment", "").await.expect("d");
    let hash = |d: &Value| d["spec"]["template"]["metadata"]["annotations"]["slipway.dev/config-hash"].clone();
    assert_ne!(hash(&before), hash(&after));
    assert!(after["metadata"]["generation"].as_i64() > before["metadata"]["generation"].as_i64(), "a new rollout");
    let secret = f.get("Secret", "-secrets").await.expect("secret");
    let value = secret["stringData"]["TOKEN"].as_str().or(secret["data"]["TOKEN"].as_str()).map(str::to_string);
    assert!(value == Some("two".into()) || value == Some("dHdv".into()), "the new secret is applied: {secret}");
}

#[tokio::test]
async fn recreate_rolls_out_and_rolls_back() {
    let f = Fixture::new().await;
    let settings = json!({"strategy": "recreate", "replicas": 1});
    f.deploy("v1", settings.clone()).await.expect("v1");
    let d = f.get("Deployment", "").await.expect("d");
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let (_, to) = rolled_back(f.deploy("v2-crash", settings).await);
    assert_eq!(to, image("v1"));
    assert_eq!(f.image_of("").await, Some(image("v1")));
}

#[tokio::test]
async fn blue_green_switches_the_service_only_when_ready_and_keeps_it_on_failure() {
    let f = Fixture::new().await;
    let settings = json!({"strategy": "blue-green", "bake_seconds": 0});
    f.deploy("v1", settings.clone()).await.expect("v1");
    let track = async || f.get("Service", "").await.expect("svc")["spec"]["selector"]["slipway.dev/track"].clone();
    assert_eq!(track().await, "blue");
    f.deploy("v2", settings.clone()).await.expect("v2");
    assert_eq!(track().await, "green");
    assert_eq!(f.image_of("-green").await, Some(image("v2")));
    assert_eq!(f.replicas_of("-blue").await, Some(0), "the old track is scaled down after the bake");

    let (_, to) = rolled_back(f.deploy("v3-crash", settings).await);
    assert!(to.contains("green"), "{to}");
    assert_eq!(track().await, "green", "the service never switched to the failed track");
    assert_eq!(f.replicas_of("-blue").await, Some(0), "the failed track is scaled away");
    assert_eq!(f.image_of("-green").await, Some(image("v2")));
}

#[tokio::test]
async fn canary_promotes_through_its_steps_and_aborts_on_restarts() {
    let f = Fixture::new().await;
    let settings = json!({"strategy": "canary", "replicas": 4, "canary_steps": [25, 50, 100], "bake_seconds": 1});
    f.deploy("v1", settings.clone()).await.expect("v1");
    f.deploy("v2", settings.clone()).await.expect("v2 promoted");
    assert!(
        f.log().contains("canary: 25% (1 canary, 3 stable)") && f.log().contains("canary: 50% (2 canary, 2 stable)"),
        "{}",
        f.log()
    );
    assert_eq!(f.image_of("").await, Some(image("v2")));
    assert!(f.get("Deployment", "-canary").await.is_none(), "the canary is removed after promotion");
    assert_eq!(f.replicas_of("").await, Some(4));

    let (reason, _) = rolled_back(f.deploy("v3-flaky", settings).await);
    assert!(reason.contains("restarted"), "{reason}");
    assert!(f.get("Deployment", "-canary").await.is_none());
    assert_eq!(f.replicas_of("").await, Some(4), "the stable track is back to full size");
    assert_eq!(f.image_of("").await, Some(image("v2")));
}

#[tokio::test]
async fn a_failed_apply_leaves_the_previous_revision_serving() {
    let f = Fixture::new().await;
    let Some(server) = &f.server else {
        eprintln!("SKIPPED on a real cluster: refusing an apply needs the double");
        return;
    };
    f.deploy("v1", json!({})).await.expect("v1");
    server.reject("NetworkPolicy");
    let (reason, _) = rolled_back(f.deploy("v2", json!({})).await);
    assert!(reason.contains("apply failed") && reason.contains("NetworkPolicy"), "{reason}");
    assert_eq!(f.image_of("").await, Some(image("v1")));
}

#[tokio::test]
async fn invalid_settings_are_refused_before_anything_is_applied() {
    let f = Fixture::new().await;
    for (settings, field) in [
        (json!({"host": "not a host"}), "host"),
        (json!({"memory_limit": "lots"}), "memory_limit"),
        (json!({"replicaz": 3}), "replicaz"),
        (json!({"canary_steps": [50, 10]}), "canary_steps"),
    ] {
        match f.deploy("v1", settings).await {
            Err(Error::Invalid(message)) => assert!(message.contains(field), "{message}"),
            other => panic!("{field}: expected invalid settings, got {other:?}"),
        }
    }
    assert!(f.get("Namespace", "").await.is_none(), "nothing was applied");
}

#[tokio::test]
async fn a_release_command_runs_as_a_job_with_the_releases_configuration_and_its_exit_code() {
    let f = Fixture::new().await;
    let Some(server) = &f.server else {
        eprintln!("skipped on a real cluster: the double runs the Job's script");
        return;
    };
    let mut release = f.release(&image("v1"), json!({}));
    release.env.insert("GREETING".into(), "hello".into());
    release.env.insert("TOKEN".into(), "s3cret-token".into());
    release.secrets = vec!["TOKEN".into()];
    let argv = |script: &str| ["sh", "-c", script].map(String::from).to_vec();
    let log = |line: String| f.lines.lock().expect("lines").push(line);
    let timeout = Duration::from_secs(30);

    let outcome = f
        .target
        .run_once(&release, Hook::Release, &argv("echo migrating for $GREETING with $TOKEN; exit 0"), timeout, &log)
        .await
        .expect("the Job runs");
    assert_eq!(outcome, JobOutcome::Succeeded, "{}", f.log());
    assert!(f.log().contains("migrating for hello with s3cret-token"), "the pod's output is logged: {}", f.log());
    let name = format!("{}-release-{}-1", f.app, &release.deployment_id.simple().to_string()[..8]);
    let job = server.get("jobs", &f.ns, &name).expect("the Job is kept for inspection");
    assert_eq!(job["spec"]["backoffLimit"], 0);
    assert!(!job.to_string().contains("s3cret-token"), "no secret value in the Job itself: {job}");
    assert!(server.get("secrets", &f.ns, &name).is_none(), "the Job's Secret is deleted once it ends");
    assert!(f.get("Deployment", "").await.is_none(), "a release command runs before anything is deployed");
    assert!(f.get("Namespace", "").await.is_some(), "in the app's namespace, made first");

    // A failing command: its exit code, its output.
    let mut failing = release.clone();
    failing.deployment_id = uuid::Uuid::new_v4();
    let outcome = f
        .target
        .run_once(&failing, Hook::Release, &argv("echo half-migrated; exit 3"), timeout, &log)
        .await
        .expect("the Job runs");
    assert!(matches!(outcome, JobOutcome::Failed { exit_code: Some(3), .. }), "{outcome:?}");
    assert!(f.log().contains("half-migrated"), "{}", f.log());

    // A retry of the same attempt replaces the Job an earlier run left.
    let outcome = f
        .target
        .run_once(&failing, Hook::Release, &argv("echo second run; exit 0"), timeout, &log)
        .await
        .expect("the Job runs");
    assert_eq!(outcome, JobOutcome::Succeeded, "{}", f.log());
    assert!(f.log().contains("replacing Job"), "{}", f.log());

    // The deploy that follows puts the secret variable in the app's Secret, never its ConfigMap.
    f.target.deploy(&release, &log).await.expect("healthy rollout");
    let config = f.get("ConfigMap", "-config").await.expect("config");
    assert_eq!(config["data"]["GREETING"], "hello");
    assert!(config["data"]["TOKEN"].is_null(), "a secret in a ConfigMap: {config}");
    let secret = f.get("Secret", "-secrets").await.expect("the app's Secret");
    assert_eq!(secret["stringData"]["TOKEN"], "s3cret-token");
}

#[tokio::test]
async fn a_preview_is_a_namespace_of_its_own_and_its_teardown_deletes_only_that() {
    let f = Fixture::new().await;
    let log = |line: String| f.lines.lock().expect("lines").push(line);
    let settings =
        json!({"host": "shop.example.com", "tls_secret": "shop-tls", "replicas": 3, "progress_deadline_seconds": 30});
    f.target.deploy(&f.release(&image("v1"), settings.clone()), &log).await.expect("the app rolls out");

    let mut preview = f.release(&image("v2"), settings.clone());
    preview.environment = "pr-4".into();
    f.target.deploy(&preview, &log).await.expect("the preview rolls out");
    let ns = format!("{}-pr-4", f.ns);
    let get = |kind: &'static str, ns: String, name: String| {
        let cluster = f.cluster.clone();
        async move { cluster.get(kind, &ns, &name).await.expect("read from the cluster") }
    };
    let deployment =
        get("Deployment", ns.clone(), f.name("")).await.expect("the preview's Deployment in its namespace");
    assert_eq!(deployment["spec"]["replicas"], 1, "a preview runs one replica");
    assert_eq!(deployment["spec"]["template"]["spec"]["containers"][0]["image"], image("v2"));
    let ingress = get("Ingress", ns.clone(), f.name("")).await.expect("the preview's Ingress");
    assert_eq!(ingress["spec"]["rules"][0]["host"], "pr-4.shop.example.com");
    assert!(ingress["spec"]["tls"].is_null(), "the app's TLS secret is for the app's host: {ingress}");
    assert_eq!(f.image_of("").await.as_deref(), Some(image("v1").as_str()), "the app keeps its version");
    assert_eq!(f.replicas_of("").await, Some(3));

    // The app's own environment is never torn down, nor a namespace Slipway did not make.
    let own = f.release(&image("v1"), settings.clone());
    let refused = f.target.teardown(&own, &log).await.expect_err("not a preview");
    assert!(refused.to_string().contains("only a preview"), "{refused}");
    let mut stranger = f.release(&image("v1"), settings.clone());
    stranger.environment = "pr-9".into();
    let foreign = format!("{}-pr-9", f.ns);
    f.cluster
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": foreign, "labels": {"team": "other"}}}))
        .await
        .expect("a namespace of someone else's");
    let refused = f.target.teardown(&stranger, &log).await.expect_err("not Slipway's namespace");
    assert!(refused.to_string().contains("not this app's preview"), "{refused}");
    assert!(get("Namespace", String::new(), foreign.clone()).await.is_some(), "left alone");

    // Its teardown deletes its namespace (and so everything in it), and nothing of the app.
    f.target.teardown(&preview, &log).await.expect("torn down");
    let gone = get("Namespace", String::new(), ns.clone()).await;
    assert!(
        gone.as_ref().is_none_or(|n| !n["metadata"]["deletionTimestamp"].is_null()),
        "the preview's namespace is deleted: {gone:?}"
    );
    assert!(f.log().contains(&format!("deleted namespace {ns}")), "{}", f.log());
    assert_eq!(f.image_of("").await.as_deref(), Some(image("v1").as_str()), "the app serves on");
    f.target.teardown(&preview, &log).await.expect("a teardown again finds nothing and is fine");
    if f.server.is_none() {
        let _ = f.cluster.delete("Namespace", "", &foreign).await;
    }
}
