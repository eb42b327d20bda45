//! Generated manifests: reviewed snapshots, and every object validated against the real
//! Kubernetes 1.33 schemas with `kubernetes-validate --strict` (PyPI, offline; `scripts/test`
//! installs it).

use std::collections::BTreeMap;
use std::process::Command;

use slipway_deploy::kubernetes::manifest::{app_selector, one_off_job};
use slipway_deploy::kubernetes::{Hook, KubeSpec, Revision, StrategyKind, render};

fn revision() -> Revision {
    Revision {
        deployment_id: "01a2003e-f35d-7330-8b90-7f69a3438d5e".into(),
        sha: "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c".into(),
        image: "registry.example.com/web:0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c".into(),
    }
}

fn cases() -> Vec<(&'static str, KubeSpec, Option<&'static str>)> {
    let minimal = KubeSpec { name: "web".into(), ..Default::default() };
    let full = KubeSpec {
        name: "shop".into(),
        port: 3000,
        health_path: "/healthz".into(),
        host: Some("shop.example.com".into()),
        tls_secret: Some("shop-tls".into()),
        min_replicas: Some(2),
        max_replicas: Some(10),
        env: BTreeMap::from([("LOG_LEVEL".into(), "info".into())]),
        secret_env: BTreeMap::from([("DATABASE_URL".into(), "postgres://u:p@db/shop".into())]),
        ..Default::default()
    };
    let recreate =
        KubeSpec { name: "worker".into(), strategy: StrategyKind::Recreate, replicas: 1, ..Default::default() };
    let blue_green = KubeSpec {
        name: "api".into(),
        strategy: StrategyKind::BlueGreen,
        host: Some("api.example.com".into()),
        ..Default::default()
    };
    vec![
        ("minimal", minimal, None),
        ("full", full, None),
        ("recreate", recreate, None),
        ("blue-green", blue_green, Some("green")),
    ]
}

#[test]
fn manifests_match_their_reviewed_snapshots() {
    for (name, spec, track) in cases() {
        let yaml = render(&spec, &revision(), track).expect("renders").to_yaml(false);
        insta::assert_snapshot!(name, yaml);
    }
}

fn migrate() -> Vec<String> {
    ["sh", "-c", "bin/migrate up"].map(String::from).to_vec()
}

#[test]
fn a_release_command_job_runs_once_with_the_releases_variables_and_is_never_behind_the_service() {
    let (_, spec, _) = cases().remove(1);
    let job = one_off_job(&spec, &revision(), 2, Hook::Release, &migrate(), 1800).expect("renders");
    let mut yaml = String::new();
    for object in job.objects() {
        yaml.push_str(&format!("---\n{}", serde_saphyr::to_string(&object).expect("yaml")));
    }
    insta::assert_snapshot!("full-release-job", yaml);
    let object = serde_json::to_value(&job.job).expect("json");
    assert_eq!(job.name(), "shop-release-01a2003e-2");
    assert_eq!(object["spec"]["backoffLimit"], 0, "a migration is never retried by Kubernetes");
    assert_eq!(object["spec"]["template"]["spec"]["restartPolicy"], "Never");
    assert_eq!(object["spec"]["template"]["spec"]["containers"][0]["args"], serde_json::json!(migrate()));
    let labels = &object["spec"]["template"]["metadata"]["labels"];
    let selected = app_selector(&spec).iter().all(|(k, v)| labels[k].as_str() == Some(v.as_str()));
    assert!(!selected, "the Service must not send traffic to a release pod: {labels}");
    let secret = serde_json::to_value(job.secret.as_ref().expect("a Secret for the secret variables")).expect("json");
    assert_eq!(secret["stringData"]["DATABASE_URL"], "postgres://u:p@db/shop");
    let inline = object["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(!inline.contains("postgres://"), "secret values never go inline: {inline}");

    let empty = one_off_job(&spec, &revision(), 1, Hook::PreDeploy, &[], 60);
    assert!(empty.is_err(), "an empty command is refused");
    let minimal = KubeSpec { name: "web".into(), ..Default::default() };
    let job = one_off_job(&minimal, &revision(), 1, Hook::PostDeploy, &migrate(), 60).expect("renders");
    assert!(job.secret.is_none(), "no secret variables, no Secret");
    assert_eq!(job.name(), "web-post-01a2003e-1");
}

#[test]
fn every_manifest_is_valid_against_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (name, spec, track) in cases() {
        for (i, object) in render(&spec, &revision(), track).expect("renders").objects().into_iter().enumerate() {
            let path = dir.path().join(format!("{name}-{i}.yaml"));
            std::fs::write(&path, serde_saphyr::to_string(&object).expect("yaml")).expect("write");
            files.push(path);
        }
        // The release command's Job (and its Secret, when the app has secret variables).
        let job = one_off_job(&spec, &revision(), 1, Hook::Release, &migrate(), 1800).expect("job renders");
        for (i, object) in job.objects().into_iter().enumerate() {
            let path = dir.path().join(format!("{name}-job-{i}.yaml"));
            std::fs::write(&path, serde_saphyr::to_string(&object).expect("yaml")).expect("write");
            files.push(path);
        }
    }
    assert!(files.len() >= 35, "{} objects", files.len());
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.33.0", "--no-warn"])
        .args(&files)
        .output()
        .expect("kubernetes-validate is installed (pip install kubernetes-validate; scripts/test does)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "invalid manifests:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches(" passed for resource ").count(), files.len(), "{stdout}");

    // The validator is strict: an unknown field in a Deployment fails it.
    let (_, spec, _) = cases().remove(0);
    let mut bad = render(&spec, &revision(), None).expect("renders").objects().remove(4);
    assert_eq!(bad["kind"], "Deployment");
    bad["spec"]["replicaz"] = serde_json::json!(3);
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, serde_saphyr::to_string(&bad).expect("yaml")).expect("write");
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success(), "an unknown field must fail strict validation");
}

#[test]
fn secrets_are_redacted_unless_asked_for_and_config_changes_roll_the_pods() {
    let (_, spec, _) = cases().remove(1);
    let m = render(&spec, &revision(), None).expect("renders");
    assert!(!m.to_yaml(false).contains("postgres://u:p@db/shop"));
    assert!(m.to_yaml(true).contains("postgres://u:p@db/shop"));
    let hash = |s: &KubeSpec| {
        let d = render(s, &revision(), None).expect("renders").deployment;
        d.spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .and_then(|a| a.get("slipway.dev/config-hash").cloned())
    };
    let mut changed = spec.clone();
    changed.secret_env.insert("DATABASE_URL".into(), "postgres://u:rotated@db/shop".into());
    assert_ne!(hash(&spec), hash(&changed), "a secret change alone changes the pod template");
    assert_eq!(hash(&spec), hash(&spec.clone()));
    let autoscaled = m.deployment.spec.expect("spec").replicas;
    assert_eq!(autoscaled, None, "with an autoscaler the Deployment leaves replicas to it");
}

#[test]
fn the_shipped_runner_rbac_is_valid_least_privilege() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/kubernetes/runner-rbac.yaml"))
        .expect("rbac yaml");
    assert!(!text.contains('*'), "no wildcards");
    assert!(!text.contains("ClusterRole"), "nothing cluster-wide");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rbac.yaml");
    std::fs::write(&path, text.replace("APP_NAMESPACE", "app-web")).expect("write");
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .arg(&path)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.matches(" passed for resource ").count(), 3, "{stdout}");
}
