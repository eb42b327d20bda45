//! Real language builds without a Dockerfile, offline: a Node, a Python and a Go app with no
//! third-party dependencies, built from generated Dockerfiles on the locally debootstrapped
//! `slipway/runtimes:bookworm` (Node.js, npm, Python, Go from Debian) and answering over HTTP.

use std::time::Duration;

use serde_json::{Value, json};
use slipway_tests::git::Entry;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, unique};

const SECRET: &str = "runtimes-secret-0123456789";
const BASES: &str = "node=slipway/runtimes:bookworm,node-run=slipway/runtimes:bookworm,\
    python=slipway/runtimes:bookworm,python-run=slipway/runtimes:bookworm,\
    go=slipway/runtimes:bookworm,go-run=slipway/debian:bookworm";

async fn build_and_deploy(stem: &str, files: &[(&str, String)]) -> (Value, Vec<String>, Slipway) {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions {
        runner_env: vec![("SLIPWAY_BASE_IMAGES".into(), BASES.into())],
        health_timeout_seconds: 30,
        ..Default::default()
    })
    .await;
    let repo = unique(stem);
    let url = git.url(&repo);
    s.create_app(stem, &url, SECRET, json!({})).await;
    let entries: Vec<Entry<'_>> = files.iter().map(|(p, c)| Entry::File(p, c.as_bytes())).collect();
    let sha = git.commit(&repo, "app", &entries);
    let (status, answer) = s.push(&url, &sha, SECRET, "runtime-delivery").await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployments"][0]["deployment_id"].as_str().expect("id").to_string();
    let d = s.finished(&id, Duration::from_secs(300)).await;
    let log = s.log_lines(&id, None).await.into_iter().map(|(_, l)| l).collect();
    (d, log, s)
}

fn assert_live_and_tested(d: &Value, log: &[String], s: &Slipway, provider: &str) {
    assert_eq!(d["state"], "completed", "{d}\n{}\n{}", log.join("\n"), s.dump());
    assert!(log.iter().any(|l| l == &format!("plan: provider {provider} in .")), "{log:#?}");
    let test =
        d["steps"].as_array().expect("steps").iter().find(|st| st["step"] == "test").cloned().expect("test step");
    assert_eq!(test["status"], "succeeded", "the app's own tests ran and passed: {log:#?}");
}

#[tokio::test]
async fn a_node_app_without_a_dockerfile_builds_tests_and_answers() {
    let marker = unique("node-answer");
    let server = format!(
        "const http = require('http');\n\
         http.createServer((req, res) => {{ res.end(req.url === '/healthz' ? 'ok' : '{marker}'); }})\n\
         .listen(process.env.PORT);\n"
    );
    let files = [
        ("package.json", r#"{"name":"node-app","version":"1.0.0","scripts":{"start":"node server.js","test":"node test.js"}}"#.to_string()),
        ("package-lock.json", r#"{"name":"node-app","version":"1.0.0","lockfileVersion":3,"requires":true,"packages":{"":{"name":"node-app","version":"1.0.0"}}}"#.to_string()),
        (".npmrc", "audit=false\nfund=false\nupdate-notifier=false\n".to_string()),
        ("server.js", server),
        ("test.js", "const assert = require('assert');\nassert.strictEqual(1 + 1, 2);\nconsole.log('node tests passed');\n".to_string()),
    ];
    let (d, log, s) = build_and_deploy("nodeapp", &files).await;
    assert_live_and_tested(&d, &log, &s, "node");
    assert!(log.iter().any(|l| l == "node tests passed"), "{log:#?}");
    let body = s.app_body(d["url"].as_str().expect("url"), "/").await.expect("answers");
    assert_eq!(body, marker);
}

/// A Go app's files with `main.go` answering `marker`, at `dir`.
fn go_main(marker: &str, import: &str, body: &str) -> String {
    format!(
        "package main\n\nimport (\n\t\"net/http\"\n\t\"os\"\n{import})\n\n\
         func main() {{\n\thttp.HandleFunc(\"/\", func(w http.ResponseWriter, r *http.Request) {{ w.Write([]byte({body} + \"{marker}\")) }})\n\
         \thttp.ListenAndServe(\":\"+os.Getenv(\"PORT\"), nil)\n}}\n"
    )
}

#[tokio::test]
async fn go_without_a_go_mod_and_a_go_work_workspace_are_recognised_built_and_answer() {
    // Found unrecognised before: a main package without go.mod, and a workspace whose root is
    // no module (reported as several apps).
    let marker = unique("go-bare");
    let files = [("main.go", go_main(&marker, "", "\"\""))];
    let (d, log, s) = build_and_deploy("gobare", &files).await;
    assert_eq!(d["state"], "completed", "{d}\n{}\n{}", log.join("\n"), s.dump());
    assert_eq!(s.app_body(d["url"].as_str().expect("url"), "/").await.as_deref(), Some(marker.as_str()));
    drop(s);

    let marker = unique("go-work");
    let files = [
        ("go.work", "go 1.19\n\nuse (\n\t./svc/api\n\t./lib/util\n)\n".to_string()),
        ("svc/api/go.mod", "module example.com/api\n\ngo 1.19\n".to_string()),
        ("svc/api/main.go", go_main(&marker, "\n\t\"example.com/util\"\n", "util.Greeting()")),
        ("lib/util/go.mod", "module example.com/util\n\ngo 1.19\n".to_string()),
        ("lib/util/util.go", "package util\n\nfunc Greeting() string { return \"workspace:\" }\n".to_string()),
    ];
    let (d, log, s) = build_and_deploy("gowork", &files).await;
    assert_eq!(d["state"], "completed", "{d}\n{}\n{}", log.join("\n"), s.dump());
    assert!(log.iter().any(|l| l.contains("go build -trimpath -o /out/app ./svc/api")), "{log:#?}");
    let body = s.app_body(d["url"].as_str().expect("url"), "/").await;
    assert_eq!(body, Some(format!("workspace:{marker}")), "the workspace's library is linked in");
}

#[tokio::test]
async fn a_python_script_with_only_a_version_file_is_recognised_built_and_answers() {
    // Found unrecognised before: no requirements.txt, pyproject.toml or Pipfile at all.
    let marker = unique("bare-python");
    let main = format!(
        "import http.server, os\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       self.send_response(200); self.end_headers(); self.wfile.write(b'{marker}')\n\
         http.server.HTTPServer(('0.0.0.0', int(os.environ['PORT'])), H).serve_forever()\n"
    );
    let version = std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "slipway/runtimes:bookworm",
            "python3",
            "-c",
            "import sys; print('%d.%d' % sys.version_info[:2])",
        ])
        .output()
        .expect("docker");
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let files = [("main.py", main), (".python-version", format!("{version}\n"))];
    let (d, log, s) = build_and_deploy("barepy", &files).await;
    assert_eq!(d["state"], "completed", "{d}\n{}\n{}", log.join("\n"), s.dump());
    assert!(log.iter().any(|l| l == "plan: provider python in ."), "{log:#?}");
    assert!(log.iter().any(|l| l.contains("no dependencies: the standard library only")), "{log:#?}");
    let body = s.app_body(d["url"].as_str().expect("url"), "/").await.expect("answers");
    assert_eq!(body, marker);
}

#[tokio::test]
async fn a_python_app_without_a_dockerfile_builds_tests_and_answers() {
    let marker = unique("python-answer");
    let main = format!(
        "import http.server, os\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       body = b'ok' if self.path == '/healthz' else b'{marker}'\n\
         \x20       self.send_response(200); self.end_headers(); self.wfile.write(body)\n\
         if __name__ == '__main__':\n\
         \x20   http.server.HTTPServer(('0.0.0.0', int(os.environ['PORT'])), H).serve_forever()\n"
    );
    let files = [
        ("requirements.txt", "# standard library only\n".to_string()),
        ("main.py", main),
        ("test_app.py", "import unittest\nclass T(unittest.TestCase):\n    def test_sum(self):\n        self.assertEqual(1 + 1, 2)\n".to_string()),
        ("slipway.toml", "test = \"python -m unittest -v\"\n".to_string()),
    ];
    let (d, log, s) = build_and_deploy("pyapp", &files).await;
    assert_live_and_tested(&d, &log, &s, "python");
    assert!(log.iter().any(|l| l.contains("test_sum") && l.contains("ok")), "{log:#?}");
    let body = s.app_body(d["url"].as_str().expect("url"), "/").await.expect("answers");
    assert_eq!(body, marker);
}

#[tokio::test]
async fn a_go_app_without_a_dockerfile_builds_tests_and_answers_from_a_toolchain_free_image() {
    let marker = unique("go-answer");
    let main = format!(
        "package main\n\nimport (\n\t\"net/http\"\n\t\"os\"\n)\n\n\
         func answer(path string) string {{\n\tif path == \"/healthz\" {{\n\t\treturn \"ok\"\n\t}}\n\treturn \"{marker}\"\n}}\n\n\
         func main() {{\n\thttp.HandleFunc(\"/\", func(w http.ResponseWriter, r *http.Request) {{ w.Write([]byte(answer(r.URL.Path))) }})\n\
         \thttp.ListenAndServe(\":\"+os.Getenv(\"PORT\"), nil)\n}}\n"
    );
    let files = [
        ("go.mod", "module example.com/goapp\n\ngo 1.19\n".to_string()),
        ("main.go", main),
        ("main_test.go", "package main\n\nimport \"testing\"\n\nfunc TestHealth(t *testing.T) {\n\tif answer(\"/healthz\") != \"ok\" {\n\t\tt.Fatal(\"health\")\n\t}\n}\n".to_string()),
    ];
    let (d, log, s) = build_and_deploy("goapp", &files).await;
    assert_live_and_tested(&d, &log, &s, "go");
    assert!(log.iter().any(|l| l.starts_with("ok") && l.contains("example.com/goapp")), "go test output: {log:#?}");
    let body = s.app_body(d["url"].as_str().expect("url"), "/").await.expect("answers");
    assert_eq!(body, marker);
    let image = d["image"].as_str().expect("image");
    let go =
        slipway_tests::docker(&["run", "--rm", "--entrypoint", "/bin/sh", image, "-c", "command -v go || echo no-go"]);
    assert_eq!(go.expect("docker run").trim(), "no-go", "the final image holds no Go toolchain");
}
