//! A push to an app whose target is `kubernetes`: the runner builds and pushes as usual, then
//! applies to the cluster its kubeconfig names — here the API-server double — and the deployment
//! ends with the rollout's outcome.

use std::time::Duration;

use serde_json::json;
use slipway_tests::apiserver::ApiServer;
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, unique};

const SECRET: &str = "kube-pipeline-secret-0123456789";

#[tokio::test]
async fn a_push_deploys_to_kubernetes_a_crash_looping_first_rollout_fails_and_a_rollback_reapplies_the_old_image() {
    let api = ApiServer::start(Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().expect("kubeconfig dir");
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\ncontexts:\n- name: double\n  context:\n    cluster: double\n    user: slipway\ncurrent-context: double\nusers:\n- name: slipway\n  user: {{}}\n",
            api.url
        ),
    )
    .expect("write kubeconfig");
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions {
        runner_env: vec![
            ("SLIPWAY_KUBERNETES".into(), "true".into()),
            ("KUBECONFIG".into(), kubeconfig.display().to_string()),
            ("SLIPWAY_ROLLOUT_TIMEOUT_SECONDS".into(), "20".into()),
        ],
        ..Default::default()
    })
    .await;
    let dockerfile = b"FROM slipway/busybox:1\nRUN mkdir /www && echo ok > /www/healthz\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";
    let settings = json!({"host": "shop.example.com", "replicas": 3, "secret_env": {"TOKEN": "s3cret"}});

    for (stem, expect_ok) in [("shop", true), ("crash", false)] {
        let repo = unique(stem);
        let url = git.url(&repo);
        let app = s.create_app(stem, &url, SECRET, json!({"target": "kubernetes", "kubernetes": settings})).await;
        let sha = git.commit(&repo, "v1", &[Entry::File("Dockerfile", dockerfile)]);
        let (status, answer) = s.push(&url, &sha, SECRET, &unique("delivery")).await;
        assert_eq!(status, 202, "{answer}");
        let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
        let d = s.finished(&id, Duration::from_secs(120)).await;
        let ns = format!("app-{app}");
        if expect_ok {
            assert_eq!(d["state"], "completed", "{d}\n{}", s.dump());
            assert_eq!(d["url"], "https://shop.example.com");
            let deployment = api.get("deployments", &ns, &app).expect("deployment applied");
            assert_eq!(deployment["spec"]["replicas"], 3);
            let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert_eq!(Some(image.as_str()), d["image"].as_str());
            assert_eq!(
                api.get("secrets", &ns, &format!("{app}-secrets")).expect("secret")["stringData"]["TOKEN"],
                "s3cret"
            );
        } else {
            assert_eq!(d["state"], "failed", "{d}");
            assert_eq!((d["error_step"].as_str(), d["error_cause"].as_str()), (Some("deploy"), Some("user")));
            assert!(d["error_message"].as_str().unwrap_or_default().contains("CrashLoopBackOff"), "{d}");
        }
    }

    // A second revision, then a manual rollback: the first image is applied again, unbuilt.
    let repo = unique("roll");
    let url = git.url(&repo);
    let app = s.create_app("roll", &url, SECRET, json!({"target": "kubernetes"})).await;
    let ns = format!("app-{app}");
    let image_in_cluster = || {
        api.get("deployments", &ns, &app)
            .and_then(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].as_str().map(str::to_string))
    };
    let mut images = Vec::new();
    for n in 1..=2 {
        let file =
            format!("FROM slipway/busybox:1\nRUN echo {n} > /version\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\"]\n");
        let sha = git.commit(&repo, "rev", &[Entry::File("Dockerfile", file.as_bytes())]);
        let (_, answer) = s.push(&url, &sha, SECRET, &unique("delivery")).await;
        let d =
            s.finished(answer["deployments"][0]["deployment_id"].as_str().expect("id"), Duration::from_secs(120)).await;
        assert_eq!(d["state"], "completed", "{d}");
        images.push(d["image"].as_str().expect("image").to_string());
    }
    assert_eq!(image_in_cluster().as_deref(), Some(images[1].as_str()));
    let (status, answer) = s.post(&format!("/api/v1/apps/{app}/rollback"), &json!({})).await;
    assert_eq!(status, 202, "{answer}");
    let d = s.finished(answer["deployment_id"].as_str().expect("id"), Duration::from_secs(120)).await;
    assert_eq!(d["state"], "completed", "{d}");
    assert_eq!(image_in_cluster().as_deref(), Some(images[0].as_str()), "the first revision is applied again");
    let build =
        d["steps"].as_array().expect("steps").iter().find(|st| st["step"] == "build").cloned().expect("build step");
    assert_eq!(build["status"], "skipped", "nothing was rebuilt");
}
