//! An app's Kubernetes settings: YAML as `slipway apps create --kubernetes <file>` reads it, then
//! checked and rendered into manifests as the runner does for a release.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_deploy::KubeTarget;
use slipway_deploy::kubernetes::{Revision, render};

fuzz_target!(|text: &str| {
    let Ok(settings) = serde_saphyr::from_str::<serde_json::Value>(text) else { return };
    let release = slipway_deploy::Release {
        app: "shop".into(),
        environment: "production".into(),
        deployment_id: uuid::Uuid::nil(),
        attempt: 1,
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        image: "registry.example/shop:0123456".into(),
        port: 8080,
        health_path: "/healthz".into(),
        env: [("DATABASE_URL".to_string(), "postgres://db/shop".to_string())].into(),
        secrets: vec!["DATABASE_URL".into()],
        limits: None,
        hosts: Vec::new(),
        drain: None,
        rollback: false,
        settings: Some(settings),
    };
    let Ok(spec) = KubeTarget::spec(&release) else { return };
    let revision = Revision {
        deployment_id: release.deployment_id.to_string(),
        sha: release.sha.clone(),
        image: release.image.clone(),
    };
    if let Ok(manifests) = render(&spec, &revision, None) {
        let _ = manifests.to_yaml(false);
    }
});
