//! Nothing jams it: output with NUL and invalid UTF-8 is stored escaped, unreadable or
//! unappliable runner messages are dead-lettered without delaying anyone, and a flood of output
//! never costs a job its lease.

use std::time::Duration;

use serde_json::json;
use slipway_tests::git::Entry;
use slipway_tests::harness::psql_value;
use slipway_tests::{GitServer, Slipway, SlipwayOptions, unique};

const SECRET: &str = "robustness-secret-0123456789";
const FINISH: Duration = Duration::from_secs(180);
const BASES: &str = "node=slipway/busybox:1,node-run=slipway/busybox:1,static-run=slipway/caddy:2";

async fn push(s: &Slipway, url: &str, sha: &str) -> String {
    let (status, answer) = s.push(url, sha, SECRET, &unique("delivery")).await;
    assert_eq!(status, 202, "{answer}");
    answer["deployments"][0]["deployment_id"].as_str().expect("deployment id").to_string()
}

fn site(run: &str) -> Vec<(String, Vec<u8>)> {
    let dockerfile = format!(
        "FROM slipway/busybox:1\nRUN {run}\nCOPY www /www\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
    );
    vec![("Dockerfile".into(), dockerfile.into_bytes()), ("www/healthz".into(), b"ok\n".to_vec())]
}

fn commit(git: &GitServer, repo: &str, files: &[(String, Vec<u8>)]) -> String {
    let entries: Vec<Entry<'_>> = files.iter().map(|(p, c)| Entry::File(p.as_str(), c.as_slice())).collect();
    git.commit(repo, "change", &entries)
}

#[tokio::test]
async fn nul_and_invalid_utf8_output_is_stored_escaped_and_poison_messages_delay_no_one() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions {
        runners: 2,
        runner_env: vec![("SLIPWAY_BASE_IMAGES".into(), BASES.into()), ("SLIPWAY_TEST_MEMORY_MB".into(), "256".into())],
        ..Default::default()
    })
    .await;

    // Poison first: an unreadable message and an envelope for no deployment, ahead of everything.
    s.publish_runner_message(b"\x00\xff not json at all").await;
    s.publish_runner_message(
        &serde_json::to_vec(&json!({
            "deployment_id": uuid::Uuid::now_v7(), "attempt": 1, "runner_id": "ghost",
            "claim": uuid::Uuid::now_v7(), "body": {"type": "heartbeat"}
        }))
        .expect("json"),
    )
    .await;

    let noisy_repo = unique("noisy");
    let noisy_url = git.url(&noisy_repo);
    s.create_app("noisy", &noisy_url, SECRET, json!({"port": 8080})).await;
    let name = unique("noisy-app");
    let toml = "install = \"printf 'build-nul:\\\\000:end\\\\n'\"\nstart = \"httpd -f -p $PORT -h /app/www\"\n\
                test = \"printf 'test-nul:\\\\000: bad:\\\\377\\\\376:end\\\\n'\"\nhealth_path = \"/healthz\"\n";
    let files: Vec<(String, Vec<u8>)> = vec![
        ("package.json".into(), format!(r#"{{"name":"{name}","scripts":{{"start":"node server.js"}}}}"#).into_bytes()),
        ("package-lock.json".into(), br#"{"lockfileVersion":3}"#.to_vec()),
        ("slipway.toml".into(), toml.as_bytes().to_vec()),
        ("www/healthz".into(), b"ok\n".to_vec()),
    ];
    let noisy = push(&s, &noisy_url, &commit(&git, &noisy_repo, &files)).await;
    let quiet_repo = unique("quiet");
    let quiet_url = git.url(&quiet_repo);
    s.create_app("quiet", &quiet_url, SECRET, json!({})).await;
    let quiet = push(&s, &quiet_url, &commit(&git, &quiet_repo, &site("true"))).await;

    let d = s.finished(&quiet, FINISH).await;
    assert_eq!(d["state"], "completed", "the other app is not held up: {d}");
    let d = s.finished(&noisy, FINISH).await;
    assert_eq!(d["state"], "completed", "{d}\n{}", s.dump());
    let lines: Vec<String> = s.log_lines(&noisy, None).await.into_iter().map(|(_, l)| l).collect();
    assert!(lines.iter().any(|l| l == "build-nul:\\0:end"), "NUL in build output is shown escaped: {lines:#?}");
    assert!(
        lines.iter().any(|l| l == "test-nul:\\0: bad:\\xff\\xfe:end"),
        "NUL and invalid UTF-8 in test output are shown escaped: {lines:#?}"
    );
    let dead = psql_value(&s.database_url, "SELECT count(*) FROM dead_letters WHERE reason LIKE 'unreadable%'");
    assert_eq!(dead, "1", "the unreadable message is recorded with its reason");
}

#[tokio::test]
async fn a_flood_of_output_during_the_build_never_costs_the_lease() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { lease_seconds: 4, heartbeat_seconds: 1, ..Default::default() }).await;
    let repo = unique("flood");
    let url = git.url(&repo);
    s.create_app("flood", &url, SECRET, json!({})).await;
    let marker = unique("flood");
    let id = push(&s, &url, &commit(&git, &repo, &site(&format!("echo {marker} && seq 1 200000")))).await;
    let d = s.finished(&id, FINISH).await;
    assert_eq!(d["state"], "completed", "{d}");
    assert_eq!(d["attempt"], 1, "the lease held through the flood: {d}");
    let distinct = psql_value(
        &s.database_url,
        &format!(
            "SELECT count(DISTINCT line) FROM log_lines WHERE deployment_id = '{id}' AND step = 'build'
               AND line ~ '^[0-9]{{1,6}}$' AND line::int BETWEEN 1 AND 200000"
        ),
    );
    assert_eq!(distinct.parse::<u64>().expect("count"), 200_000, "every line is stored");
}

/// The forms a secret is commonly printed in: plain, base64 (standard, URL-safe), percent-encoded,
/// hex and JSON-escaped.
fn encodings(value: &str) -> Vec<String> {
    use base64::Engine;
    let b = value.as_bytes();
    vec![
        value.to_string(),
        base64::engine::general_purpose::STANDARD.encode(b),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b),
        percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string(),
        b.iter().map(|x| format!("{x:02x}")).collect(),
        serde_json::to_string(value).expect("json").trim_matches('"').to_string(),
    ]
}

#[tokio::test]
async fn five_kinds_of_secret_in_six_encodings_never_reach_the_log_or_the_api() {
    let git = GitServer::start();
    let mut s = Slipway::start(SlipwayOptions { health_timeout_seconds: 5, ..Default::default() }).await;
    let repo = unique("masking");
    let url = git.url(&repo);
    let secrets = [
        ("API_TOKEN", unique("tok")),
        ("DB_PASSWORD", format!("p@ss:w/rd\"x\\y-{}", unique("q"))),
        ("AWS_SECRET_ACCESS_KEY", format!("wJalrXUtnFEMI/K7MDENG+{}", unique("k"))),
        ("SIGNING_KEY", format!("ünï-cödé-{}", unique("key"))),
        ("DATABASE_URL", format!("postgres://app:{}@db.internal:5432/app", unique("pw"))),
    ];
    let forms: Vec<String> = secrets.iter().flat_map(|(_, v)| encodings(v)).collect();
    // What the repository prints: every form on a line of its own, and every form split in the
    // middle over two lines.
    let mut printed = Vec::new();
    for form in &forms {
        printed.push(format!("whole: {form}"));
        let mut cut = form.len() / 2;
        while !form.is_char_boundary(cut) {
            cut += 1;
        }
        printed.push(format!("split: {}", &form[..cut]));
        printed.push(format!("{} :split", &form[cut..]));
    }
    let printed = printed.join("\n") + "\n";
    let env: serde_json::Map<String, serde_json::Value> =
        secrets.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    s.create_app("masking", &url, SECRET, json!({"env": env})).await;
    // Printed by the build, by the test step, and by the app at start-up (which then fails its
    // health check, so its output is in the failure too).
    let dockerfile = "FROM slipway/busybox:1\nCOPY printed.txt /printed.txt\nRUN cat /printed.txt\n\
                      CMD [\"sh\", \"-c\", \"cat /printed.txt; echo done printing; exit 1\"]\n";
    let sha = git.commit(
        &repo,
        "leaky",
        &[
            Entry::File("Dockerfile", dockerfile.as_bytes()),
            Entry::File("printed.txt", printed.as_bytes()),
            Entry::File("slipway.toml", b"test = \"cat /printed.txt\"\n"),
        ],
    );
    let id = push(&s, &url, &sha).await;
    let d = s.finished(&id, FINISH).await;
    assert_eq!((d["state"].as_str(), d["error_step"].as_str()), (Some("failed"), Some("deploy")), "{d}");
    let logged: Vec<(String, String)> = s.log_lines(&id, None).await;
    let lines: Vec<String> = logged.iter().map(|(_, l)| l.clone()).collect();
    assert!(lines.iter().any(|l| l.contains("done printing")), "the app's output is shown: {lines:#?}");
    let masked = |step: &str| {
        let of_step = psql_value(
            &s.database_url,
            &format!(
                "SELECT count(*) FROM log_lines WHERE deployment_id = '{id}' AND step = '{step}' AND line LIKE '%***%'"
            ),
        );
        of_step.parse::<usize>().expect("count")
    };
    for step in ["build", "test"] {
        assert!(masked(step) >= 3 * forms.len(), "{step}: every printed form was masked ({})", masked(step));
    }
    // The failed health check shows the app's last 50 lines.
    assert!(masked("deploy") >= 45, "deploy: the app's output was masked ({})", masked("deploy"));
    let api = d.to_string();
    let own_logs = s.dump();
    let mut leaks = Vec::new();
    for form in &forms {
        for (place, text) in [("log", lines.join("\n")), ("api", api.clone()), ("process logs", own_logs.clone())] {
            if text.contains(form.as_str()) {
                leaks.push(format!("{place}: {form}"));
            }
        }
    }
    assert!(leaks.is_empty(), "{} leaks of {} forms: {leaks:#?}", leaks.len(), forms.len());
    // Nor the halves of a split secret (each longer than the shortest secret masked).
    for form in &forms {
        let half = &form[..form.floor_char_boundary(form.len() / 2)];
        if half.len() >= 8 {
            assert!(!lines.iter().any(|l| l.ends_with(half)), "the first half of {form} was shown");
        }
    }
}
