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
async fn a_push_deploys_to_kubernetes_and_a_crash_looping_first_rollout_fails_with_its_cause() {
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
}
