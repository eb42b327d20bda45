//! The operator kit in ops/: the alert rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`), and every query of the Grafana dashboard is valid PromQL (checked by
//! promtool as a recording rule) over metrics Slipway exports.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn ops() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops")
}

fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (scripts/services installs Debian's prometheus package)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The metric names a PromQL expression reads, without histogram suffixes.
fn metrics_of(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("slipway_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        names.push(base.to_string());
        rest = &tail[end..];
    }
    names
}

fn known(name: &str) -> bool {
    slipway_telemetry::metrics::ALL.contains(&name)
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = ops().join("prometheus");
    let (ok, said) = promtool(&["check", "rules", "alerts.yml"], &dir);
    assert!(ok, "{said}");
    let (ok, said) = promtool(&["test", "rules", "alerts.test.yml"], &dir);
    assert!(ok && said.contains("SUCCESS"), "{said}");
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).expect("alerts.yml");
    let used = metrics_of(&rules);
    assert!(!used.is_empty());
    for name in used {
        assert!(known(&name), "alerts.yml uses {name}, which Slipway does not export");
    }
    let docs = std::fs::read_to_string(ops().join("../docs/operations.md")).expect("docs/operations.md");
    for line in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(docs.contains(line), "docs/operations.md explains {line}");
    }
}

#[test]
fn every_dashboard_query_is_valid_promql_over_exported_metrics() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(ops().join("grafana/slipway.json")).expect("dashboard"))
            .expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() >= 15, "{exprs:?}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let names = metrics_of(expr);
        assert!(!names.is_empty(), "{expr}");
        for name in names {
            assert!(known(&name), "the dashboard reads {name}, which Slipway does not export: {expr}");
        }
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(expr).expect("quoted")
        ));
    }
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("dashboard.yml"), rules).expect("write");
    let (ok, said) = promtool(&["check", "rules", "dashboard.yml"], dir.path());
    assert!(ok, "{said}");
    let docs = std::fs::read_to_string(ops().join("../docs/operations.md")).expect("docs/operations.md");
    for name in slipway_telemetry::metrics::ALL {
        assert!(docs.contains(name), "docs/operations.md explains {name}");
    }
}
