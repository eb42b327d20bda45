//! The `docker` target on the real engine: a retried attempt of a deployment keeps the earlier
//! attempt's container serving until its own is healthy, and an older deployment never stops or
//! replaces a newer one's container.

use std::collections::BTreeMap;
use std::time::Duration;

use slipway_deploy::{AppLimits, DeployTarget, DockerTarget, DockerTargetConfig, Error, Release};

/// The installation these tests deploy as (their networks are removed with their apps).
const INSTALLATION: &str = "targettest";
use slipway_tests::{docker, unique};

/// Builds a busybox image serving `/healthz` after `delay` seconds; returns its tag.
fn image(delay: u32) -> String {
    build(&format!(
        "FROM slipway/busybox:1\nCOPY www /www\nCMD [\"sh\", \"-c\", \"sleep {delay} && exec httpd -f -p 8080 -h /www\"]\n"
    ))
}

/// Builds `dockerfile` with a `www/healthz` beside it; returns its tag.
fn build(dockerfile: &str) -> String {
    let dir = tempfile::tempdir().expect("context dir");
    std::fs::create_dir_all(dir.path().join("www")).expect("www");
    std::fs::write(dir.path().join("www/healthz"), "ok\n").expect("healthz");
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
    let tag = format!("slipway-test/{}:1", unique("target"));
    let out = std::process::Command::new("docker")
        .args(["build", "-q", "-t", &tag])
        .arg(dir.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker build");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    tag
}

struct App {
    name: String,
    target: DockerTarget,
    images: Vec<String>,
}

impl App {
    async fn new() -> Self {
        let engine =
            bollard::Docker::connect_with_local_defaults().expect("docker").negotiate_version().await.expect("api");
        let config = DockerTargetConfig {
            publish_address: "127.0.0.1".into(),
            health_timeout: Duration::from_secs(30),
            installation: INSTALLATION.into(),
            limits: AppLimits::default(),
            edge: None,
            drain: Duration::from_secs(30),
        };
        Self { name: unique("target"), target: DockerTarget::new(engine, config), images: Vec::new() }
    }

    fn release(&self, deployment_id: uuid::Uuid, attempt: u32, image: &str) -> Release {
        Release {
            app: self.name.clone(),
            environment: "production".into(),
            deployment_id,
            attempt,
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            image: image.into(),
            port: 8080,
            health_path: "/healthz".into(),
            env: BTreeMap::new(),
            limits: None,
            secrets: Vec::new(),
            hosts: Vec::new(),
            drain: None,
            rollback: false,
            settings: None,
        }
    }

    fn containers(&self) -> Vec<String> {
        let installation = format!("label=dev.slipway.installation={INSTALLATION}");
        docker(&[
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("label=dev.slipway.app={}", self.name),
            "--filter",
            &installation,
        ])
        .expect("docker ps")
        .lines()
        .map(str::to_string)
        .collect()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        for c in self.containers() {
            let _ = docker(&["rm", "-f", &c]);
        }
        for i in &self.images {
            let _ = docker(&["rmi", "-f", i]);
        }
        let _ = docker(&["network", "rm", &format!("slipway-{INSTALLATION}-{}-production", self.name)]);
    }
}

async fn answers(url: &str) -> bool {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().expect("client");
    client.get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status().is_success())
}

#[tokio::test]
async fn a_retried_attempt_keeps_the_earlier_attempts_container_serving_until_its_own_is_healthy() {
    let mut app = App::new().await;
    let (fast, slow) = (image(0), image(3));
    app.images = vec![fast.clone(), slow.clone()];
    let deployment = uuid::Uuid::now_v7();
    let log = |_: String| {};
    let first = app.target.deploy(&app.release(deployment, 1, &fast), &log).await.expect("attempt 1 deploys");
    let first_url = first.url.expect("url");
    assert!(answers(&first_url).await);

    let second = app.release(deployment, 2, &slow);
    // Once the target logs `healthy:`, it retires attempt 1: checks count only before that.
    let healthy = std::sync::atomic::AtomicBool::new(false);
    let watch = |line: String| {
        if line.starts_with("healthy:") {
            healthy.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    };
    let deploying = app.target.deploy(&second, &watch);
    tokio::pin!(deploying);
    let (mut checks, mut failures) = (0, 0);
    let live = loop {
        tokio::select! {
            live = &mut deploying => break live.expect("attempt 2 deploys"),
            ok = answers(&first_url) => {
                if !healthy.load(std::sync::atomic::Ordering::SeqCst) {
                    checks += 1;
                    failures += usize::from(!ok);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(checks >= 10, "the replacement took its 3 s to become healthy ({checks} checks)");
    assert_eq!(failures, 0, "attempt 1 served until attempt 2 was healthy");
    assert!(answers(live.url.as_deref().expect("url")).await);
    assert_eq!(app.containers(), [DockerTarget::container_name(&second)], "attempt 1's container was retired");
}

/// An image that listens on `$PORT` and says `ENV PORT=3000` itself (a generated Dockerfile for
/// Next.js does) serves on the app's port: the target tells it the port, as Kubernetes does.
#[tokio::test]
async fn the_container_is_told_the_apps_port_whatever_its_image_says() {
    let tag = build(
        "FROM slipway/busybox:1\nENV PORT=3000\nCOPY www /www\nCMD [\"sh\", \"-c\", \"exec httpd -f -p $PORT -h /www\"]\n",
    );
    let mut app = App::new().await;
    app.images = vec![tag.clone()];
    let release = app.release(uuid::Uuid::now_v7(), 1, &tag);
    assert_eq!(release.port, 8080);
    let live = app.target.deploy(&release, &|_| {}).await.expect("healthy on the app's port");
    assert!(answers(live.url.as_deref().expect("url")).await);
    // A PORT the app sets itself is its own choice, and then its port must say the same.
    let mut own = app.release(uuid::Uuid::now_v7(), 1, &tag);
    own.env.insert("PORT".into(), "9090".into());
    own.port = 9090;
    let live = app.target.deploy(&own, &|_| {}).await.expect("healthy on its own PORT");
    assert!(answers(live.url.as_deref().expect("url")).await);
}

#[tokio::test]
async fn an_older_deployment_never_stops_or_replaces_a_newer_ones_container() {
    let mut app = App::new().await;
    let served = image(0);
    app.images = vec![served.clone()];
    let older = uuid::Uuid::now_v7();
    let newer = uuid::Uuid::now_v7();
    assert!(older < newer);
    let log = |_: String| {};
    let live = app.target.deploy(&app.release(newer, 1, &served), &log).await.expect("the newer deploys");
    let late = app.target.deploy(&app.release(older, 1, &served), &log).await;
    assert!(matches!(late, Err(Error::Stale { .. })), "{late:?}");
    assert!(answers(live.url.as_deref().expect("url")).await, "the newer version still serves");
    assert_eq!(app.containers(), [DockerTarget::container_name(&app.release(newer, 1, &served))]);
}

#[tokio::test]
async fn app_containers_are_contained_and_only_this_installations_are_touched() {
    let mut app = App::new().await;
    let served = image(0);
    // Another installation's container with the same app labels: never this one's to retire.
    let foreign = format!("{}-foreign", app.name);
    docker(&[
        "run",
        "-d",
        "--name",
        &foreign,
        "--label",
        &format!("dev.slipway.app={}", app.name),
        "--label",
        "dev.slipway.environment=production",
        "--label",
        "dev.slipway.installation=someone-else",
        "--label",
        &format!("dev.slipway.deployment={}", uuid::Uuid::nil()),
        &served,
    ])
    .expect("foreign container");
    app.images = vec![served.clone()];
    let log = |_: String| {};
    let release = app.release(uuid::Uuid::now_v7(), 1, &served);
    app.target.deploy(&release, &log).await.expect("deploys");
    let name = DockerTarget::container_name(&release);
    let inspect = |format: &str| docker(&["inspect", "--format", format, &name]).expect("inspect").trim().to_string();
    assert_eq!(inspect("{{json .HostConfig.SecurityOpt}}"), r#"["no-new-privileges"]"#);
    assert_eq!(inspect("{{.HostConfig.Memory}}"), (512 * 1024 * 1024).to_string());
    assert_eq!(inspect("{{.HostConfig.NanoCpus}}"), "1000000000");
    assert_eq!(inspect("{{.HostConfig.PidsLimit}}"), "512");
    assert_eq!(inspect("{{json .HostConfig.CapDrop}}"), r#"["ALL"]"#);
    assert!(!inspect("{{json .HostConfig.CapAdd}}").contains("NET_RAW"));
    assert_eq!(inspect("{{.HostConfig.NetworkMode}}"), format!("slipway-{INSTALLATION}-{}-production", app.name));
    assert_eq!(inspect("{{index .Config.Labels \"dev.slipway.installation\"}}"), INSTALLATION);
    let still = docker(&["inspect", "--format", "{{.State.Running}}", &foreign]);
    let _ = docker(&["rm", "-f", &foreign]);
    assert_eq!(still.expect("the foreign container still exists").trim(), "true");
}

/// Engines before API 1.44 make a second network of a name when two creations race, and the
/// app's containers then cannot start ("network ... is ambiguous"). The runner asks for the
/// app's network while the image builds and again in the deploy step: however many ask at once,
/// one network is made.
#[tokio::test]
async fn however_many_ask_for_an_apps_network_at_once_one_is_made() {
    let app = App::new().await;
    let asks = (0..8).map(|_| app.target.network_of(&app.name, "production"));
    let names = futures_util::future::join_all(asks).await;
    let wanted = format!("slipway-{INSTALLATION}-{}-production", app.name);
    for name in names {
        assert_eq!(name.expect("network made"), wanted);
    }
    let made = docker(&["network", "ls", "-q", "--filter", &format!("label=dev.slipway.app={}", app.name)])
        .expect("docker network ls");
    let ids: Vec<&str> = made.lines().collect();
    for id in &ids[1.min(ids.len())..] {
        let _ = docker(&["network", "rm", id]);
    }
    assert_eq!(ids.len(), 1, "networks made: {made}");
}
