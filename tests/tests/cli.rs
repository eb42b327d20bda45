//! The `slipway` command against a real installation: register, list, deploy, follow.

use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, unique};

fn slipway(s: &Slipway, args: &[&str]) -> (bool, String, String) {
    let out = s.cli_command().env_remove("SLIPWAY_WEBHOOK_SECRET").args(args).output().expect("run slipway");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn apps_create_list_and_deploy_with_follow() {
    let git = GitServer::start();
    let s = Slipway::start(SlipwayOptions::default()).await;
    let repo = unique("cli");
    let url = git.url(&repo);
    let dockerfile = b"FROM slipway/busybox:1\nRUN mkdir /www && echo ok > /www/healthz\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";
    let sha = git.commit(&repo, "v1", &[Entry::File("Dockerfile", dockerfile)]);
    let name = unique("cli");

    let (ok, out, err) = slipway(
        &s,
        &[
            "apps",
            "create",
            &name,
            "--repo",
            &url,
            "--health-path",
            "/healthz",
            "--env",
            "GREETING=hi",
            "--webhook-secret",
            "cli-secret-0123456789",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("registered {name}")), "{out}");
    let (ok, _, err) =
        slipway(&s, &["apps", "create", &name, "--repo", &url, "--webhook-secret", "cli-secret-0123456789"]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) =
        slipway(&s, &["apps", "create", "Bad_Name", "--repo", &url, "--webhook-secret", "cli-secret-0123456789"]);
    assert!(!ok && err.contains("app name"), "{err}");
    let (ok, _, err) = slipway(
        &s,
        &["apps", "create", "x", "--repo", &url, "--env", "NOEQUALS", "--webhook-secret", "cli-secret-0123456789"],
    );
    assert!(!ok && err.contains("KEY=VALUE"), "{err}");

    let (ok, out, _) = slipway(&s, &["apps", "list"]);
    assert!(ok && out.lines().any(|l| l.starts_with(&name) && l.contains(&url)), "{out}");

    // No --sha: the runner resolves the branch head (the scheduler never calls git in a request).
    let (ok, out, err) = slipway(&s, &["deploy", &name, "--follow"]);
    assert!(ok, "{out}{err}\n{}", s.dump());
    assert!(out.contains("queued deployment") && out.contains("the head of refs/heads/main"), "{out}");
    assert!(out.contains(&format!("refs/heads/main is at {sha}")), "the runner says what it resolved: {out}");
    let (_, list) = s.get(&format!("/api/v1/deployments?app={name}")).await;
    assert_eq!(list[0]["sha"], sha.as_str(), "the deployment records the resolved commit: {list}");
    assert!(out.contains("[  build] Step 1/"), "build output is followed: {out}");
    let edge_port = s.edge.as_ref().expect("edge").edge_port;
    assert!(out.contains(&format!("completed: http://{name}.localhost:{edge_port}")), "the stable address: {out}");

    let (ok, _, err) = slipway(&s, &["deploy", &name, "--sha", "not-a-sha"]);
    assert!(!ok && err.contains("not a full commit SHA"), "{err}");
    let (ok, _, err) = slipway(&s, &["status", "00000000-0000-0000-0000-000000000000"]);
    assert!(!ok && err.contains("no deployment"), "{err}");
    let (ok, _, err) = slipway(&s, &["--url", "http://127.0.0.1:1", "apps", "list"]);
    assert!(!ok && err.contains("could not reach the scheduler"), "{err}");
}

#[tokio::test]
async fn kubernetes_settings_are_validated_when_the_app_is_registered() {
    let s = Slipway::start(SlipwayOptions { runners: 0, ..Default::default() }).await;
    let dir = tempfile::tempdir().expect("dir");
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "replicas: 3\nhost: shop.example.com\nstrategy: blue-green\n").expect("write");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "memory_limit: lots\n").expect("write");
    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(&unknown, "replicaz: 3\n").expect("write");
    let create = |name: &str, file: &std::path::Path| {
        let args = ["apps", "create", name, "--repo", "https://git.example.com/a/b.git", "--target", "kubernetes"];
        let file = file.display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--kubernetes", &file, "--webhook-secret", "cli-secret-0123456789"]);
        slipway(&s, &all)
    };
    let (ok, _, err) = create("kbad", &bad);
    assert!(!ok && err.contains("memory_limit"), "{err}");
    let (ok, _, err) = create("kunknown", &unknown);
    assert!(!ok && err.contains("replicaz"), "{err}");
    let (ok, out, err) = create("kgood", &good);
    assert!(ok, "{out}{err}");
    let (_, app) = s.get("/api/v1/apps/kgood").await;
    assert_eq!(app["kube_settings"]["strategy"], "blue-green", "{app}");
}

/// Runs the CLI with only a config file (no SLIPWAY_URL or SLIPWAY_TOKEN), `stdin` as input.
fn with_config(s: &Slipway, config: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(s.cli())
        .env_remove("SLIPWAY_URL")
        .env_remove("SLIPWAY_TOKEN")
        .env("SLIPWAY_CONFIG", config)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run slipway");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("slipway output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn login_stores_a_private_config_and_tokens_are_managed_from_the_cli() {
    use std::os::unix::fs::PermissionsExt;
    let s = Slipway::start(SlipwayOptions { runners: 0, ..Default::default() }).await;
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("slipway/config.toml");

    let (ok, _, err) = with_config(&s, &config, &["--url", &s.base, "apps", "list"], "");
    assert!(!ok && err.contains("401") && err.contains("slipway login"), "{err}");
    let (ok, _, err) = with_config(&s, &config, &["--url", &s.base, "login", "--with-token"], "slw_wrong\n");
    assert!(!ok && err.contains("401"), "a wrong token is not stored: {err}");
    assert!(!config.exists());

    let (ok, out, err) =
        with_config(&s, &config, &["--url", &s.base, "login", "--with-token"], &format!("{}\n", s.token));
    assert!(ok, "{err}");
    assert!(out.contains("as `admin` (admin)"), "{out}");
    assert_eq!(std::fs::metadata(&config).expect("config").permissions().mode() & 0o777, 0o600);
    let (ok, out, err) = with_config(&s, &config, &["whoami"], "");
    assert!(ok && out.contains("admin"), "{out}{err}");

    let (ok, token, err) = with_config(&s, &config, &["tokens", "create", "ci", "--role", "viewer"], "");
    assert!(ok && token.trim().starts_with("slw_"), "{token}{err}");
    let (ok, out, _) = with_config(&s, &config, &["tokens", "list"], "");
    assert!(ok && out.contains("ci") && out.contains("viewer") && !out.contains(token.trim()), "{out}");
    let (ok, _, err) = with_config(&s, &config, &["tokens", "create", "x", "--role", "root"], "");
    assert!(!ok && err.contains("--role"), "{err}");

    // The viewer's token reads but may not register apps.
    let viewer = dir.path().join("viewer.toml");
    let (ok, _, err) = with_config(&s, &viewer, &["--url", &s.base, "login", "--with-token"], &token);
    assert!(ok, "{err}");
    let create =
        ["apps", "create", "nope", "--repo", "https://git.example.com/a/b.git", "--webhook-secret", "0123456789abcdef"];
    let (ok, _, err) = with_config(&s, &viewer, &create, "");
    assert!(!ok && err.contains("403"), "{err}");

    let (ok, _, err) = with_config(&s, &config, &["tokens", "revoke", "ci"], "");
    assert!(ok, "{err}");
    let (ok, _, err) = with_config(&s, &viewer, &["whoami"], "");
    assert!(!ok && err.contains("401"), "a revoked token stops working: {err}");

    // A config others can read is refused while it holds a token.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (ok, _, err) = with_config(&s, &config, &["whoami"], "");
    assert!(!ok && err.contains("chmod 600"), "{err}");
    let (ok, _, err) = with_config(&s, &viewer, &["logout"], "");
    assert!(ok, "{err}");
    assert!(!std::fs::read_to_string(&viewer).expect("viewer config").contains("slw_"));
}
