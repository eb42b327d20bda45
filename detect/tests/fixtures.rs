//! Every fixture repository under `tests/fixtures` against its reviewed snapshot of the full
//! plan (or the exact error). `cargo insta review` after a deliberate change.

use std::path::Path;

use slipway_detect::{Options, detect};

#[test]
fn every_fixture_repository_gets_its_full_plan_or_a_clear_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .expect("fixtures dir")
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 40, "the fixture table is complete: {names:?}");
    for name in names {
        let outcome = match detect(&root.join(&name), &Options::default()) {
            Ok(plan) => serde_json::to_value(plan).expect("plan serializes"),
            Err(err) => serde_json::json!({ "error": err.to_string() }),
        };
        insta::assert_json_snapshot!(name, outcome);
    }
}

#[test]
fn the_app_root_selects_one_app_of_a_monorepo() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/monorepo");
    let plan = detect(&root, &Options { app_root: Some("apps/api".into()), ..Default::default() }).expect("go app");
    assert_eq!(plan.provider.as_str(), "go");
    assert_eq!(plan.app_root, "apps/api");
    for bad in ["../escape", "/etc", "apps/../../x", "missing"] {
        let err = detect(&root, &Options { app_root: Some(bad.into()), ..Default::default() }).expect_err(bad);
        assert!(err.to_string().contains("app root"), "{bad}: {err}");
    }
}

#[test]
fn a_dockerfile_is_used_unless_told_otherwise() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dockerfile");
    assert_eq!(detect(&root, &Options::default()).expect("plan").provider.as_str(), "dockerfile");
    let plan = detect(&root, &Options { ignore_dockerfile: true, ..Default::default() }).expect("plan");
    assert_eq!(plan.provider.as_str(), "node");
}
