//! Slipway's own Kubernetes manifests (deploy/kubernetes/slipway): every overlay renders with
//! kustomize (`kubectl kustomize`), every built-in object passes `kubernetes-validate --strict`
//! for Kubernetes 1.33, every KEDA object passes KEDA's CRD schema (a fixture, strictly), and the
//! settings that keep scale-in from killing a job agree with each other.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kubernetes/slipway")
}

/// The objects an overlay renders to.
fn render(overlay: &str) -> Vec<Value> {
    let dir = root().join("overlays").join(overlay);
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(&dir)
        .output()
        .expect("kubectl (with its built-in kustomize) is installed");
    assert!(out.status.success(), "{overlay}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    text.split("\n---\n")
        .filter(|doc| !doc.trim().is_empty())
        .map(|doc| serde_saphyr::from_str::<Value>(doc).expect("kustomize writes YAML"))
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Validates `objects`: built-in kinds with kubernetes-validate, KEDA's with its CRD schemas.
fn validate(objects: &[Value]) -> Result<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut builtin, mut custom) = (Vec::new(), Vec::new());
    for (i, object) in objects.iter().enumerate() {
        let path = dir.path().join(format!("{i}.yaml"));
        std::fs::write(&path, serde_saphyr::to_string(object).expect("yaml")).expect("write");
        match object["apiVersion"].as_str().is_some_and(|v| v.starts_with("keda.sh/")) {
            true => custom.push(path),
            false => builtin.push(path),
        }
    }
    let mut said = String::new();
    if !builtin.is_empty() {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", "1.33.0", "--no-warn"])
            .args(&builtin)
            .output()
            .expect("kubernetes-validate is installed (scripts/test installs it)");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() || stdout.matches(" passed for resource ").count() != builtin.len() {
            return Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
        }
        said.push_str(&stdout);
    }
    if !custom.is_empty() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
        let out = Command::new("python3")
            .arg(here.join("crd_validate.py"))
            .arg(here.join("fixtures/keda-crds.yaml"))
            .args(&custom)
            .output()
            .expect("python3 with jsonschema (kubernetes-validate brings it)");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() || stdout.matches("PASS ").count() != custom.len() {
            return Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
        }
        said.push_str(&stdout);
    }
    Ok(said)
}

#[test]
fn every_overlay_renders_to_objects_valid_against_kubernetes_and_keda_schemas() {
    for (overlay, builtin, keda) in [("production", 14, 0), ("keda", 14, 2)] {
        let objects = render(overlay);
        let custom = objects.iter().filter(|o| o["apiVersion"].as_str().is_some_and(|v| v.starts_with("keda.sh/")));
        assert_eq!((objects.len() - custom.clone().count(), custom.count()), (builtin, keda), "{overlay}");
        validate(&objects).unwrap_or_else(|said| panic!("{overlay}: invalid objects:\n{said}"));
        assert!(objects.iter().all(|o| o["kind"] == "Namespace" || o["metadata"]["namespace"] == "slipway"));
    }
    // The validators are strict: an unknown field fails each of them.
    let objects = render("keda");
    let mut deployment = find(&objects, "Deployment", "slipway-runner").clone();
    deployment["spec"]["replicaz"] = 3.into();
    assert!(validate(&[deployment]).is_err(), "an unknown Deployment field must fail");
    let mut scaled = find(&objects, "ScaledObject", "slipway-runner").clone();
    scaled["spec"]["triggers"][0]["metdata"] = serde_json::json!({});
    assert!(validate(&[scaled]).is_err(), "an unknown ScaledObject field must fail");
    let mut scaled = find(&objects, "ScaledObject", "slipway-runner").clone();
    scaled["spec"]["minReplicaCount"] = "one".into();
    assert!(validate(&[scaled]).is_err(), "a wrong type must fail");
}

#[test]
fn scale_in_drains_before_the_pod_is_killed_and_the_scheduler_is_ready_only_when_it_can_work() {
    let objects = render("keda");
    let config = &find(&objects, "ConfigMap", "slipway-config")["data"];
    let drain: u64 = config["SLIPWAY_DRAIN_SECONDS"].as_str().and_then(|d| d.parse().ok()).expect("drain seconds");
    let runner = &find(&objects, "Deployment", "slipway-runner")["spec"];
    assert!(runner.get("replicas").is_none(), "KEDA owns the runner replicas");
    let pod = &runner["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().expect("grace period");
    assert!(grace > drain + 30, "the grace period ({grace} s) outlasts the drain ({drain} s)");
    let container = &pod["containers"][0];
    let pre_stop = container["lifecycle"]["preStop"]["exec"]["command"].to_string();
    assert!(pre_stop.contains("kill -TERM 1"), "the preStop hook starts the drain: {pre_stop}");
    // The engine is a native sidecar: it stops only after the runner has drained.
    let engine = &pod["initContainers"][0];
    assert_eq!((engine["name"].as_str(), engine["restartPolicy"].as_str()), (Some("docker"), Some("Always")));
    assert_eq!(container["securityContext"]["runAsNonRoot"], true, "only the engine is privileged");

    // KEDA reads the jobs queue of this installation, one runner per SLIPWAY_CONCURRENCY jobs.
    let prefix = config["SLIPWAY_QUEUE_PREFIX"].as_str().expect("prefix");
    let scaled = &find(&objects, "ScaledObject", "slipway-runner")["spec"];
    let rabbit = scaled["triggers"]
        .as_array()
        .expect("triggers")
        .iter()
        .find(|t| t["type"] == "rabbitmq")
        .expect("rabbitmq trigger");
    assert_eq!(rabbit["metadata"]["queueName"].as_str(), Some(format!("{prefix}.jobs").as_str()));
    assert_eq!(rabbit["metadata"]["value"], config["SLIPWAY_CONCURRENCY"], "queue length per runner slot");
    assert!(rabbit["metadata"].get("activationValue").is_some(), "an activation threshold");
    assert_eq!(scaled["scaleTargetRef"]["name"], "slipway-runner");

    let scheduler = &find(&objects, "Deployment", "slipway-scheduler")["spec"];
    assert!(scheduler["replicas"].as_u64().is_some_and(|r| r >= 2), "several schedulers");
    let probe = &scheduler["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/healthz", "ready only while PostgreSQL and the broker answer");
    let pdb = &find(&objects, "PodDisruptionBudget", "slipway-scheduler")["spec"];
    assert_eq!(pdb["minAvailable"], 1);
    let policies: Vec<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "NetworkPolicy")
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    assert!(policies.contains(&"default-deny"), "{policies:?}");
}
