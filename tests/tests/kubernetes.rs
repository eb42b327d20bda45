//! The `kubernetes` target against the API-server double (kube's client over real HTTP): every
//! strategy's healthy path and failing path with its rollback, pruning, config-only changes, a
//! failed apply, and invalid settings. Images name the double's scripted behaviour.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use slipway_deploy::{DeployTarget, Error, KubeTarget, Release};
use slipway_tests::apiserver::ApiServer;

const NS: &str = "app-shop";

fn release(image: &str, settings: Value) -> Release {
    Release {
        app: "shop".into(),
        environment: "production".into(),
        deployment_id: uuid::Uuid::new_v4(),
        sha: "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c".into(),
        image: image.into(),
        port: 8080,
        health_path: "/healthz".into(),
        env: BTreeMap::from([("LOG_LEVEL".into(), "info".into())]),
        settings: Some(settings),
    }
}

struct Fixture {
    server: ApiServer,
    target: KubeTarget,
    lines: Mutex<Vec<String>>,
}

impl Fixture {
    async fn new() -> Self {
        let server = ApiServer::start(Duration::from_millis(150)).await;
        let target = KubeTarget::new(server.client(), Duration::from_secs(10));
        Self { server, target, lines: Mutex::new(Vec::new()) }
    }

    async fn deploy(&self, image: &str, settings: Value) -> Result<(), Error> {
        let log = |line: String| self.lines.lock().expect("lines").push(line);
        self.target.deploy(&release(image, settings), &log).await.map(|_| ())
    }

    fn image_of(&self, deployment: &str) -> Option<String> {
        let d = self.server.get("deployments", NS, deployment)?;
        d["spec"]["template"]["spec"]["containers"][0]["image"].as_str().map(str::to_string)
    }

    fn replicas_of(&self, deployment: &str) -> Option<i64> {
        self.server.get("deployments", NS, deployment)?["spec"]["replicas"].as_i64()
    }

    fn log(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
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
    f.deploy("registry.example.com/shop:v1", json!({"host": "shop.example.com"})).await.expect("healthy rollout");
    for (plural, name) in [
        ("resourcequotas", "shop-quota"),
        ("limitranges", "shop-limits"),
        ("configmaps", "shop-config"),
        ("deployments", "shop"),
        ("services", "shop"),
        ("ingresses", "shop"),
        ("networkpolicies", "shop"),
    ] {
        let o = f.server.get(plural, NS, name).unwrap_or_else(|| panic!("{plural}/{name} applied"));
        assert_eq!(o["metadata"]["managedFields"][0]["manager"], "slipway", "{plural}/{name}");
    }
    assert!(f.server.get("namespaces", "", NS).is_some());
    assert_eq!(f.image_of("shop").as_deref(), Some("registry.example.com/shop:v1"));
    let requests = f.server.lock().requests.join("\n");
    assert!(requests.contains("fieldManager=slipway") && requests.contains("force=true"), "{requests}");
    assert!(f.log().contains("rollout of shop complete: 2/2 available"), "{}", f.log());
}

#[tokio::test]
async fn a_crash_looping_rollout_is_rolled_back_to_the_previous_image_and_config() {
    let f = Fixture::new().await;
    f.deploy("registry.example.com/shop:v1", json!({})).await.expect("v1");
    let v1_hash =
        f.server.get("deployments", NS, "shop").expect("d")["spec"]["template"]["metadata"]["annotations"].clone();
    let (reason, to) =
        rolled_back(f.deploy("registry.example.com/shop:v2-crash", json!({"env": {"FEATURE": "on"}})).await);
    assert_eq!(to, "registry.example.com/shop:v1");
    assert!(
        reason.contains("CrashLoopBackOff") && reason.contains("pod shop-g2-0"),
        "names the pod and state: {reason}"
    );
    assert!(reason.contains("Back-off restarting failed container"), "names the latest events: {reason}");
    assert_eq!(f.image_of("shop").as_deref(), Some("registry.example.com/shop:v1"));
    let d = f.server.get("deployments", NS, "shop").expect("d");
    assert_eq!(d["spec"]["template"]["metadata"]["annotations"], v1_hash, "the previous config hash is back");
    let config = f.server.get("configmaps", NS, "shop-config").expect("config");
    assert!(config["data"]["FEATURE"].is_null(), "the previous config is back: {config}");
}

#[tokio::test]
async fn a_rollout_past_its_progress_deadline_is_rolled_back() {
    let f = Fixture::new().await;
    f.deploy("registry.example.com/shop:v1", json!({})).await.expect("v1");
    let (reason, to) = rolled_back(f.deploy("registry.example.com/shop:v2-stall", json!({})).await);
    assert!(reason.contains("ProgressDeadlineExceeded"), "{reason}");
    assert_eq!(to, "registry.example.com/shop:v1");
    assert_eq!(f.image_of("shop").as_deref(), Some("registry.example.com/shop:v1"));
}

#[tokio::test]
async fn a_first_deploy_that_fails_has_nothing_to_roll_back_to_and_says_so() {
    let f = Fixture::new().await;
    match f.deploy("registry.example.com/shop:v1-crash", json!({})).await {
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
    f.deploy("registry.example.com/shop:v1", full).await.expect("v1");
    assert!(
        f.server.get("ingresses", NS, "shop").is_some()
            && f.server.get("horizontalpodautoscalers", NS, "shop").is_some()
    );
    assert!(f.server.get("secrets", NS, "shop-secrets").is_some());
    f.deploy("registry.example.com/shop:v2", json!({})).await.expect("v2");
    for (plural, name) in [("ingresses", "shop"), ("horizontalpodautoscalers", "shop"), ("secrets", "shop-secrets")] {
        assert!(f.server.get(plural, NS, name).is_none(), "{plural}/{name} pruned");
    }
    assert!(f.server.get("deployments", NS, "shop").is_some() && f.server.get("services", NS, "shop").is_some());
    assert!(f.log().contains("pruned Ingress/shop"), "{}", f.log());
}

#[tokio::test]
async fn a_config_only_change_rolls_the_pods() {
    let f = Fixture::new().await;
    f.deploy("registry.example.com/shop:v1", json!({"secret_env": {"TOKEN": "one"}})).await.expect("v1");
    let before = f.server.get("deployments", NS, "shop").expect("d");
    f.deploy("registry.example.com/shop:v1", json!({"secret_env": {"TOKEN": "two"}}))
        .await
        .expect("same image, new secret");
    let after = f.server.get("deployments", NS, "shop").expect("d");
    let hash = |d: &Value| d["spec"]["template"]["metadata"]["annotations"]["slipway.dev/config-hash"].clone();
    assert_ne!(hash(&before), hash(&after));
    assert!(after["metadata"]["generation"].as_i64() > before["metadata"]["generation"].as_i64(), "a new rollout");
    let pods = f.server.names("pods", NS);
    assert!(
        !pods.is_empty() && pods.iter().all(|p| p.starts_with("shop-g3-") || p.starts_with("shop-g2-")),
        "{pods:?}"
    );
}

#[tokio::test]
async fn recreate_rolls_out_and_rolls_back() {
    let f = Fixture::new().await;
    let settings = json!({"strategy": "recreate", "replicas": 1});
    f.deploy("registry.example.com/shop:v1", settings.clone()).await.expect("v1");
    let d = f.server.get("deployments", NS, "shop").expect("d");
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let (_, to) = rolled_back(f.deploy("registry.example.com/shop:v2-crash", settings).await);
    assert_eq!(to, "registry.example.com/shop:v1");
    assert_eq!(f.image_of("shop").as_deref(), Some("registry.example.com/shop:v1"));
}

#[tokio::test]
async fn blue_green_switches_the_service_only_when_ready_and_keeps_it_on_failure() {
    let f = Fixture::new().await;
    let settings = json!({"strategy": "blue-green", "bake_seconds": 0});
    f.deploy("registry.example.com/shop:v1", settings.clone()).await.expect("v1");
    let track = |f: &Fixture| {
        f.server.get("services", NS, "shop").expect("svc")["spec"]["selector"]["slipway.dev/track"].clone()
    };
    assert_eq!(track(&f), "blue");
    f.deploy("registry.example.com/shop:v2", settings.clone()).await.expect("v2");
    assert_eq!(track(&f), "green");
    assert_eq!(f.image_of("shop-green").as_deref(), Some("registry.example.com/shop:v2"));
    assert_eq!(f.replicas_of("shop-blue"), Some(0), "the old track is scaled down after the bake");

    let (_, to) = rolled_back(f.deploy("registry.example.com/shop:v3-crash", settings).await);
    assert!(to.contains("green"), "{to}");
    assert_eq!(track(&f), "green", "the service never switched to the failed track");
    assert_eq!(f.replicas_of("shop-blue"), Some(0), "the failed track is scaled away");
    assert_eq!(f.image_of("shop-green").as_deref(), Some("registry.example.com/shop:v2"));
}

#[tokio::test]
async fn canary_promotes_through_its_steps_and_aborts_on_restarts() {
    let f = Fixture::new().await;
    let settings = json!({"strategy": "canary", "replicas": 4, "canary_steps": [25, 50, 100], "bake_seconds": 1});
    f.deploy("registry.example.com/shop:v1", settings.clone()).await.expect("v1");
    f.deploy("registry.example.com/shop:v2", settings.clone()).await.expect("v2 promoted");
    assert!(
        f.log().contains("canary: 25% (1 canary, 3 stable)") && f.log().contains("canary: 50% (2 canary, 2 stable)"),
        "{}",
        f.log()
    );
    assert_eq!(f.image_of("shop").as_deref(), Some("registry.example.com/shop:v2"));
    assert!(f.server.get("deployments", NS, "shop-canary").is_none(), "the canary is removed after promotion");
    assert_eq!(f.replicas_of("shop"), Some(4));

    let (reason, _) = rolled_back(f.deploy("registry.example.com/shop:v3-flaky", settings).await);
    assert!(reason.contains("restarted"), "{reason}");
    assert!(f.server.get("deployments", NS, "shop-canary").is_none());
    assert_eq!(f.replicas_of("shop"), Some(4), "the stable track is back to full size");
    assert_eq!(f.image_of("shop").as_deref(), Some("registry.example.com/shop:v2"));
}

#[tokio::test]
async fn a_failed_apply_leaves_the_previous_revision_serving() {
    let f = Fixture::new().await;
    f.deploy("registry.example.com/shop:v1", json!({})).await.expect("v1");
    f.server.reject("NetworkPolicy");
    let (reason, _) = rolled_back(f.deploy("registry.example.com/shop:v2", json!({})).await);
    assert!(reason.contains("apply failed") && reason.contains("NetworkPolicy"), "{reason}");
    assert_eq!(f.image_of("shop").as_deref(), Some("registry.example.com/shop:v1"));
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
        match f.deploy("registry.example.com/shop:v1", settings).await {
            Err(Error::Invalid(message)) => assert!(message.contains(field), "{message}"),
            other => panic!("{field}: expected invalid settings, got {other:?}"),
        }
    }
    assert!(f.server.lock().objects.is_empty(), "nothing was applied");
}
