//! Commit statuses: each deployment's state reported on its commit at the app's forge —
//! GitHub commit statuses, GitLab's commit status API, Bitbucket build statuses, Gitea and
//! Forgejo statuses — as their documentation gives the request. They travel through the
//! notification outbox ([`crate::notify`]): durable, retried, sent through the outbound guard,
//! never in a deployment's way.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use slipway_proto::api;

/// An app's resolved status settings, as stored (the token is sealed with the app's secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub forge: String,
    pub api_url: String,
    pub repo: String,
}

/// The forges statuses can go to.
pub const FORGES: &[&str] = &["github", "gitlab", "bitbucket", "gitea"];

/// Resolves and checks what an app asked for: the API root (defaulted for the hosted forges)
/// and the repository path (defaulted from the repository URL).
pub fn resolve(asked: &api::CommitStatus, repo_url: &str) -> Result<Settings, String> {
    if !FORGES.contains(&asked.forge.as_str()) {
        return Err(format!("commit_status.forge must be one of {}", FORGES.join(", ")));
    }
    let repo_target = slipway_proto::outbound::target(repo_url).ok();
    let host = repo_target.as_ref().map(|t| t.host.as_str()).unwrap_or_default();
    let api_url = match (&asked.api_url, asked.forge.as_str(), host) {
        (Some(url), _, _) => url.trim_end_matches('/').to_string(),
        (None, "github", "github.com") => "https://api.github.com".into(),
        (None, "gitlab", "gitlab.com") => "https://gitlab.com/api/v4".into(),
        (None, "bitbucket", "bitbucket.org") => "https://api.bitbucket.org/2.0".into(),
        _ => {
            return Err(
                "commit_status.api_url is needed for a forge other than github.com, gitlab.com or bitbucket.org".into(),
            );
        }
    };
    let api = slipway_proto::outbound::target(&api_url).map_err(|e| format!("commit_status.api_url: {e}"))?;
    if !matches!(api.scheme.as_str(), "https" | "http") || api_url.len() > 512 {
        return Err("commit_status.api_url must be an http(s) URL of at most 512 characters".into());
    }
    let repo = match &asked.repo {
        Some(repo) => repo.trim_matches('/').to_string(),
        None => repo_path(repo_url).ok_or("commit_status.repo is needed: the repository URL has no owner/repo path")?,
    };
    let segments: Vec<&str> = repo.split('/').collect();
    let segment_ok = |s: &&str| {
        !s.is_empty() && *s != "." && *s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    let nested_ok = asked.forge == "gitlab" || segments.len() == 2;
    if segments.len() < 2 || !nested_ok || !segments.iter().all(segment_ok) || repo.len() > 255 {
        return Err(format!(
            "commit_status.repo `{}` must be owner/repo (GitLab: group/.../project) of letters, digits, '-', '_' and '.'",
            repo.chars().take(80).collect::<String>()
        ));
    }
    match &asked.token {
        Some(token) if !token.is_empty() && token.len() <= 512 && !token.chars().any(char::is_control) => {}
        _ => return Err("commit_status.token is needed (a token that may set statuses; at most 512 characters)".into()),
    }
    Ok(Settings { forge: asked.forge.clone(), api_url, repo })
}

/// `owner/repo` of a repository URL (`https://host/owner/repo.git`, `git@host:owner/repo.git`).
fn repo_path(url: &str) -> Option<String> {
    let path = match url.split_once("://") {
        Some((_, rest)) => rest.split_once('/')?.1.to_string(),
        None => url.split_once(':')?.1.to_string(),
    };
    let path = path.trim_matches('/').trim_end_matches(".git").to_string();
    (path.contains('/')).then_some(path)
}

/// A deployment's state as a commit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Running,
    Success,
    Failure,
    Cancelled,
}

impl Status {
    /// The status an event reports, if any.
    pub fn of(event: &str) -> Option<Self> {
        Some(match event {
            "deploy.queued" => Status::Pending,
            "deploy.started" => Status::Running,
            "deploy.completed" => Status::Success,
            "deploy.failed" => Status::Failure,
            "deploy.cancelled" => Status::Cancelled,
            _ => return None,
        })
    }
}

/// One request to a forge.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Value,
}

/// The request that sets `status` on `sha`: `context` names the check (`slipway/<app>`),
/// `target_url` where it links (the app when live, else the deployment), `description` says
/// what happened (at most 140 characters, GitHub's limit).
pub fn request(
    settings: &Settings,
    token: &str,
    sha: &str,
    status: Status,
    context: &str,
    target_url: &str,
    description: &str,
) -> Request {
    let description: String = description.chars().take(140).collect();
    let api = &settings.api_url;
    let repo = &settings.repo;
    // GitHub's status body, which Gitea and Forgejo copied.
    let hub_body = json!({
        "state": match status { Status::Pending | Status::Running => "pending", Status::Success => "success",
                                Status::Failure => "failure", Status::Cancelled => "error" },
        "target_url": target_url, "description": description, "context": context,
    });
    match settings.forge.as_str() {
        // https://docs.github.com/en/rest/commits/statuses#create-a-commit-status
        "github" => Request {
            url: format!("{api}/repos/{repo}/statuses/{sha}"),
            headers: vec![
                ("authorization", format!("Bearer {token}")),
                ("accept", "application/vnd.github+json".into()),
                ("x-github-api-version", "2022-11-28".into()),
            ],
            body: hub_body,
        },
        // https://docs.gitlab.com/api/commits/#set-the-pipeline-status-of-a-commit
        "gitlab" => Request {
            url: format!("{api}/projects/{}/statuses/{sha}", encode(repo)),
            headers: vec![("private-token", token.to_string())],
            body: json!({
                "state": match status { Status::Pending => "pending", Status::Running => "running", Status::Success => "success",
                                        Status::Failure => "failed", Status::Cancelled => "canceled" },
                "name": context, "target_url": target_url, "description": description,
            }),
        },
        // https://developer.atlassian.com/cloud/bitbucket/rest/api-group-commit-statuses/
        "bitbucket" => Request {
            url: format!("{api}/repositories/{repo}/commit/{sha}/statuses/build"),
            headers: vec![("authorization", format!("Bearer {token}"))],
            body: json!({
                "key": context, "name": context, "url": target_url, "description": description,
                "state": match status { Status::Pending | Status::Running => "INPROGRESS", Status::Success => "SUCCESSFUL",
                                        Status::Failure => "FAILED", Status::Cancelled => "STOPPED" },
            }),
        },
        // https://gitea.com/api/swagger#/repository/repoCreateStatus (Forgejo alike)
        _ => Request {
            url: format!("{api}/repos/{repo}/statuses/{sha}"),
            headers: vec![("authorization", format!("token {token}"))],
            body: hub_body,
        },
    }
}

/// A GitLab project path as one URL path segment.
fn encode(path: &str) -> String {
    path.replace('%', "%25").replace('/', "%2F")
}

/// What a status says, from the event's data.
pub fn description(event: &Value) -> String {
    let data = &event["data"];
    match event["type"].as_str().unwrap_or_default() {
        "deploy.queued" => "Slipway: queued".into(),
        "deploy.started" => "Slipway: deploying".into(),
        "deploy.completed" => {
            format!("Slipway: live{}", data["url"].as_str().map(|u| format!(" at {u}")).unwrap_or_default())
        }
        "deploy.failed" => format!(
            "Slipway: failed at {} ({} error)",
            data["error"]["step"].as_str().unwrap_or("?"),
            data["error"]["cause"].as_str().unwrap_or("?")
        ),
        "deploy.cancelled" => "Slipway: cancelled".into(),
        other => format!("Slipway: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(forge: &str) -> api::CommitStatus {
        api::CommitStatus { forge: forge.into(), api_url: None, repo: None, token: Some("tok".into()) }
    }

    #[test]
    fn hosted_forges_are_resolved_from_the_repository_url_and_others_need_their_api() {
        let gh = resolve(&asked("github"), "https://github.com/acme/web.git").expect("github");
        assert_eq!((gh.api_url.as_str(), gh.repo.as_str()), ("https://api.github.com", "acme/web"));
        let gl = resolve(&asked("gitlab"), "git@gitlab.com:group/sub/web.git").expect("gitlab");
        assert_eq!((gl.api_url.as_str(), gl.repo.as_str()), ("https://gitlab.com/api/v4", "group/sub/web"));
        let bb = resolve(&asked("bitbucket"), "https://bitbucket.org/ws/web").expect("bitbucket");
        assert_eq!(bb.api_url, "https://api.bitbucket.org/2.0");
        let err = resolve(&asked("gitea"), "https://git.example.com/acme/web.git").expect_err("needs api_url");
        assert!(err.contains("api_url is needed"), "{err}");
        let own = api::CommitStatus { api_url: Some("https://git.example.com/api/v1/".into()), ..asked("gitea") };
        assert_eq!(
            resolve(&own, "https://git.example.com/acme/web.git").expect("gitea").api_url,
            "https://git.example.com/api/v1"
        );
        for (bad, needle) in [
            (api::CommitStatus { forge: "svn".into(), ..asked("github") }, "forge must be"),
            (api::CommitStatus { repo: Some("../../etc".into()), ..asked("github") }, "must be owner/repo"),
            (api::CommitStatus { repo: Some("a/b/c".into()), ..asked("github") }, "must be owner/repo"),
            (api::CommitStatus { token: None, ..asked("github") }, "token is needed"),
            (api::CommitStatus { token: Some("a\nb".into()), ..asked("github") }, "token is needed"),
            (api::CommitStatus { api_url: Some("ftp://x/api".into()), ..asked("github") }, "api_url"),
        ] {
            let err = resolve(&bad, "https://github.com/acme/web.git").expect_err(needle);
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn each_forge_gets_the_request_its_documentation_gives() {
        let settings = |forge: &str, api: &str, repo: &str| Settings {
            forge: forge.into(),
            api_url: api.into(),
            repo: repo.into(),
        };
        let sha = "a".repeat(40);
        let r = request(
            &settings("github", "https://api.github.com", "acme/web"),
            "t0k",
            &sha,
            Status::Success,
            "slipway/web",
            "https://web.example",
            "live",
        );
        assert_eq!(r.url, format!("https://api.github.com/repos/acme/web/statuses/{sha}"));
        assert!(r.headers.contains(&("authorization", "Bearer t0k".into())));
        assert!(r.headers.contains(&("x-github-api-version", "2022-11-28".into())));
        assert_eq!(
            r.body,
            json!({"state": "success", "target_url": "https://web.example", "description": "live", "context": "slipway/web"})
        );
        let r = request(
            &settings("gitlab", "https://gitlab.com/api/v4", "group/sub/web"),
            "t0k",
            &sha,
            Status::Running,
            "slipway/web",
            "u",
            "d",
        );
        assert_eq!(r.url, format!("https://gitlab.com/api/v4/projects/group%2Fsub%2Fweb/statuses/{sha}"));
        assert_eq!(r.headers, vec![("private-token", "t0k".to_string())]);
        assert_eq!(r.body["state"], "running");
        assert_eq!(r.body["name"], "slipway/web");
        let r = request(
            &settings("bitbucket", "https://api.bitbucket.org/2.0", "ws/web"),
            "t0k",
            &sha,
            Status::Failure,
            "slipway/web",
            "u",
            "d",
        );
        assert_eq!(r.url, format!("https://api.bitbucket.org/2.0/repositories/ws/web/commit/{sha}/statuses/build"));
        assert_eq!(
            (r.body["state"].as_str(), r.body["key"].as_str(), r.body["url"].as_str()),
            (Some("FAILED"), Some("slipway/web"), Some("u"))
        );
        let r = request(
            &settings("gitea", "https://git.example.com/api/v1", "acme/web"),
            "t0k",
            &sha,
            Status::Cancelled,
            "slipway/web",
            "u",
            &"x".repeat(300),
        );
        assert_eq!(r.url, format!("https://git.example.com/api/v1/repos/acme/web/statuses/{sha}"));
        assert_eq!(r.headers, vec![("authorization", "token t0k".to_string())]);
        assert_eq!(r.body["state"], "error");
        assert_eq!(r.body["description"].as_str().map(str::len), Some(140), "GitHub's limit, kept everywhere");
    }
}
