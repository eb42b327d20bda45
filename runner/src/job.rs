//! One job attempt, step by step: workspace, clone, build, push, deploy, cleanup. Each step is
//! reported with its status; a failure names the step and whether it is the user's or the
//! platform's; the workspace is removed whatever happens.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use slipway_deploy::{DeployTarget, DockerTarget, KubeTarget, Release};
use slipway_detect::dockerfile::{self, BaseImages};
use slipway_detect::{Options, Provider};
use slipway_proto::{Body, Cause, Job, Step, StepStatus, TargetKind};
use tokio_util::sync::CancellationToken;

use crate::checkout::{self, GitAuth};
use crate::config::Config;
use crate::context;
use crate::image;
use crate::report::Reporter;
use crate::suite::{self, Verdict};

/// Largest build context accepted.
const CONTEXT_LIMIT: u64 = 2 * 1024 * 1024 * 1024;

/// What a job needs besides the job message.
#[derive(Debug, Clone)]
pub struct Tools {
    pub docker: Docker,
    pub target: DockerTarget,
    pub config: Arc<Config>,
    pub base_images: BaseImages,
    /// The Kubernetes target, when this runner has a cluster.
    pub kube: Option<KubeTarget>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed {
        image: String,
        url: Option<String>,
    },
    Failed {
        step: Step,
        cause: Cause,
        message: String,
        rolled_back: bool,
    },
    /// Stopped through its cancellation token before it finished.
    Cancelled,
}

impl Outcome {
    /// The final message to the scheduler.
    pub fn into_body(self, cancel_reason: &str) -> Body {
        match self {
            Outcome::Completed { image, url } => Body::Completed { image, url },
            Outcome::Failed { step, cause, message, rolled_back } => Body::Failed { step, cause, message, rolled_back },
            Outcome::Cancelled => Body::Abandoned { reason: cancel_reason.to_string() },
        }
    }
}

struct StepFailure {
    cause: Cause,
    message: String,
    rolled_back: bool,
}

impl StepFailure {
    fn new(user: bool, message: String) -> Self {
        let cause = if user { Cause::User } else { Cause::Infrastructure };
        Self { cause, message, rolled_back: false }
    }
}

/// Runs every step of `job`, reporting as it goes.
pub async fn run(job: &Job, tools: &Tools, reporter: &Reporter, cancel: &CancellationToken) -> Outcome {
    let r = reporter;
    r.line(
        None,
        &format!("attempt {} of deployment {} on runner {}", job.attempt, job.deployment_id, tools.config.runner_id()),
    );
    let workspace = match workspace(&tools.config) {
        Ok(dir) => dir,
        Err(err) => {
            return failed(r, Step::Clone, StepFailure::new(false, format!("creating the workspace failed: {err}")));
        }
    };
    let result = steps(job, tools, r, cancel, workspace.path()).await;
    r.step(Step::Cleanup, StepStatus::Running, None);
    let path = workspace.path().display().to_string();
    let removed = tokio::task::spawn_blocking(move || workspace.close()).await;
    match removed {
        Ok(Ok(())) => {
            r.line(Some(Step::Cleanup), &format!("removed workspace {path}"));
            r.step(Step::Cleanup, StepStatus::Succeeded, None);
        }
        Ok(Err(err)) => {
            r.line(Some(Step::Cleanup), &format!("could not remove workspace {path}: {err}"));
            r.step(Step::Cleanup, StepStatus::Failed, Some(err.to_string()));
        }
        Err(err) => r.step(Step::Cleanup, StepStatus::Failed, Some(err.to_string())),
    }
    result
}

fn workspace(config: &Config) -> std::io::Result<tempfile::TempDir> {
    let builder = tempfile::Builder::new().prefix("slipway-job-").to_owned();
    match &config.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            builder.tempdir_in(dir)
        }
        None => builder.tempdir(),
    }
}

async fn steps(job: &Job, tools: &Tools, r: &Reporter, cancel: &CancellationToken, dir: &Path) -> Outcome {
    let log = |step: Step| {
        let r = r.clone();
        move |line: String| r.line(Some(step), &line)
    };

    // An image already in the registry was built and tested by an earlier attempt (or this is a
    // rollback): deploy it without cloning or building again.
    let reference = match image::reference(&tools.config.registry, &job.app.name, &job.sha) {
        Ok(reference) => reference,
        Err(err) => return failed(r, Step::Build, StepFailure::new(true, err.to_string())),
    };
    let image_name = reference.whole();
    if image::in_registry(&tools.docker, &image_name).await {
        for step in [Step::Clone, Step::Build, Step::Test, Step::Push] {
            r.line(Some(step), &format!("{image_name} is already in the registry (built and tested before); skipping"));
            r.step(step, StepStatus::Skipped, None);
        }
    } else {
        r.step(Step::Clone, StepStatus::Running, None);
        let auth =
            tools.config.git_token.clone().map(|token| GitAuth { username: tools.config.git_username.clone(), token });
        let (url, sha, git_ref, dest, clone_log) =
            (job.app.repo_url.clone(), job.sha.clone(), job.git_ref.clone(), dir.to_path_buf(), log(Step::Clone));
        let cloning = tokio::task::spawn_blocking(move || {
            checkout::shallow_checkout(&url, &sha, &git_ref, &dest, auth.as_ref(), &clone_log)
        });
        match cancellable(cancel, cloning).await {
            None => return Outcome::Cancelled,
            Some(Ok(Ok(()))) => r.step(Step::Clone, StepStatus::Succeeded, None),
            Some(Ok(Err(err))) => {
                return failed(r, Step::Clone, StepFailure::new(err.is_user_error(), err.to_string()));
            }
            Some(Err(join)) => {
                return failed(r, Step::Clone, StepFailure::new(false, format!("clone task failed: {join}")));
            }
        }
        if let Some(outcome) = build_and_test(job, tools, r, cancel, dir, &image_name).await {
            return outcome;
        }
        r.step(Step::Push, StepStatus::Running, None);
        match cancellable(cancel, image::push(&tools.docker, &reference, &log(Step::Push))).await {
            None => return Outcome::Cancelled,
            Some(Ok(digest)) => {
                r.line(Some(Step::Push), &format!("pushed {image_name} {}", digest.unwrap_or_default()));
                r.step(Step::Push, StepStatus::Succeeded, None);
            }
            Some(Err(err)) => {
                return failed(r, Step::Push, StepFailure::new(err.is_user_error(), err.to_string()));
            }
        }
    }

    // deploy: never cut off half-way, so not cancellable
    r.step(Step::Deploy, StepStatus::Running, None);
    let release = Release {
        app: job.app.name.clone(),
        environment: job.app.environment.clone(),
        deployment_id: job.deployment_id,
        sha: job.sha.clone(),
        image: image_name.clone(),
        port: job.app.port,
        health_path: job.app.health_path.clone(),
        env: job.app.env.clone(),
        settings: job.app.settings.clone(),
    };
    let deploy_log = log(Step::Deploy);
    let deployed = match (job.app.target, &tools.kube) {
        (TargetKind::Docker, _) => tools.target.deploy(&release, &deploy_log).await,
        (TargetKind::Kubernetes, Some(kube)) => kube.deploy(&release, &deploy_log).await,
        (TargetKind::Kubernetes, None) => Err(slipway_deploy::Error::Cluster(
            "this runner has no Kubernetes cluster configured (SLIPWAY_KUBERNETES=true and a kubeconfig or in-cluster account)".into(),
        )),
    };
    match deployed {
        Ok(live) => {
            if let Some(url) = &live.url {
                r.line(Some(Step::Deploy), &format!("live at {url}"));
            }
            r.step(Step::Deploy, StepStatus::Succeeded, None);
            Outcome::Completed { image: image_name, url: live.url }
        }
        Err(err) => {
            let rolled_back = matches!(err, slipway_deploy::Error::RolledBack { .. });
            let failure = StepFailure { rolled_back, ..StepFailure::new(err.is_user_error(), err.to_string()) };
            failed(r, Step::Deploy, failure)
        }
    }
}

/// Plans, builds and tests the image; `Some(outcome)` ends the job there.
async fn build_and_test(
    job: &Job,
    tools: &Tools,
    r: &Reporter,
    cancel: &CancellationToken,
    dir: &Path,
    tag: &str,
) -> Option<Outcome> {
    r.step(Step::Build, StepStatus::Running, None);
    let build_failed = |message: String| Some(failed(r, Step::Build, StepFailure::new(true, message)));
    let options = Options { app_root: Some(job.app.app_root.clone()), ignore_dockerfile: false };
    let repo = dir.to_path_buf();
    let plan = match tokio::task::spawn_blocking(move || slipway_detect::detect(&repo, &options)).await {
        Ok(Ok(plan)) => plan,
        Ok(Err(err)) => return build_failed(format!("no build plan: {err}")),
        Err(join) => {
            return Some(failed(r, Step::Build, StepFailure::new(false, format!("detect task failed: {join}"))));
        }
    };
    for line in plan_summary(&plan) {
        r.line(Some(Step::Build), &line);
    }
    let generated = match plan.provider {
        Provider::Dockerfile => None,
        _ => match dockerfile::generate(&plan, &tools.base_images) {
            Ok(text) => Some(text),
            Err(err) => return build_failed(err.to_string()),
        },
    };
    if let Some(text) = &generated {
        r.line(Some(Step::Build), "generated Dockerfile:");
        for line in text.lines() {
            r.line(Some(Step::Build), &format!("  {line}"));
        }
    }
    let app_dir = dir.join(&plan.app_root);
    let text = generated.clone();
    let tar =
        match tokio::task::spawn_blocking(move || context::tarball(&app_dir, CONTEXT_LIMIT, text.as_deref())).await {
            Ok(Ok(tar)) => tar,
            Ok(Err(err)) => return build_failed(err.to_string()),
            Err(join) => {
                return Some(failed(r, Step::Build, StepFailure::new(false, format!("context task failed: {join}"))));
            }
        };
    r.line(Some(Step::Build), &format!("build context: {} bytes", tar.len()));
    let dockerfile_name = if generated.is_some() { context::GENERATED_DOCKERFILE } else { "Dockerfile" };
    if let Some(outcome) = build_image(tools, r, cancel, tar.clone(), tag, dockerfile_name, None).await {
        return Some(outcome);
    }
    r.step(Step::Build, StepStatus::Succeeded, None);

    let Some(test) = &plan.test else {
        r.line(Some(Step::Test), "no test command found; skipped (set `test` in slipway.toml to run one)");
        r.step(Step::Test, StepStatus::Skipped, None);
        return None;
    };
    r.step(Step::Test, StepStatus::Running, None);
    // Generated images are tested in their build stage (sources and dev dependencies present).
    let test_image = match generated {
        Some(_) => {
            let test_tag = format!("{tag}-test");
            let stage = Some(dockerfile::TEST_STAGE);
            if let Some(outcome) = build_image(tools, r, cancel, tar, &test_tag, dockerfile_name, stage).await {
                return Some(outcome);
            }
            test_tag
        }
        None => tag.to_string(),
    };
    r.line(Some(Step::Test), &format!("running `{}` in {test_image}", test.value));
    let log = {
        let r = r.clone();
        move |line: String| r.line(Some(Step::Test), &line)
    };
    let limits = tools.config.test_limits();
    let running = suite::run(&tools.docker, &test_image, &test.value, &plan.env, limits, job.app.test_network, &log);
    let verdict = match cancellable(cancel, running).await {
        None => return Some(Outcome::Cancelled),
        Some(verdict) => verdict,
    };
    let failure = match verdict {
        Ok(Verdict::Passed) => {
            r.step(Step::Test, StepStatus::Succeeded, None);
            return None;
        }
        Ok(Verdict::Failed { exit_code }) => {
            StepFailure::new(true, format!("the tests failed (exit code {exit_code})"))
        }
        Ok(Verdict::TimedOut) => StepFailure::new(true, format!("the tests took longer than {:?}", limits.timeout)),
        Err(err) => StepFailure::new(false, format!("running the tests failed: {err}")),
    };
    Some(failed(r, Step::Test, failure))
}

/// Builds `tar` as `tag` (optionally only up to `target`), with the build timeout. No labels are
/// added: a label that names the commit would make every build miss the cache on its last layer.
async fn build_image(
    tools: &Tools,
    r: &Reporter,
    cancel: &CancellationToken,
    tar: Vec<u8>,
    tag: &str,
    dockerfile: &str,
    target: Option<&str>,
) -> Option<Outcome> {
    let step = if target.is_some() { Step::Test } else { Step::Build };
    let r2 = r.clone();
    let log = move |line: String| r2.line(Some(step), &line);
    let limit = Duration::from_secs(tools.config.build_timeout_seconds);
    let building = image::build(&tools.docker, tar, tag, dockerfile, target, &log);
    match cancellable(cancel, tokio::time::timeout(limit, building)).await {
        None => Some(Outcome::Cancelled),
        Some(Err(_elapsed)) => {
            Some(failed(r, step, StepFailure::new(true, format!("the build took longer than {limit:?}"))))
        }
        Some(Ok(Err(err))) => Some(failed(r, step, StepFailure::new(err.is_user_error(), err.to_string()))),
        Some(Ok(Ok(()))) => None,
    }
}

/// The plan in a few log lines: what was decided, and from which files.
fn plan_summary(plan: &slipway_detect::Plan) -> Vec<String> {
    let fact = |name: &str, f: &Option<slipway_detect::Fact<String>>| {
        f.as_ref().map(|f| format!("plan: {name} {} ({})", f.value, f.from.join(", ")))
    };
    let mut lines = vec![format!("plan: provider {} in {}", plan.provider.as_str(), plan.app_root)];
    lines.extend(
        [
            fact("version", &plan.version),
            fact("package manager", &plan.package_manager),
            fact("framework", &plan.framework),
            fact("install", &plan.install),
            fact("build", &plan.build),
            fact("start", &plan.start),
            fact("test", &plan.test),
        ]
        .into_iter()
        .flatten(),
    );
    lines
}

/// Runs `fut` unless `cancel` fires first (then `None`; the future is dropped at an await point).
async fn cancellable<F: std::future::Future>(cancel: &CancellationToken, fut: F) -> Option<F::Output> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        out = fut => Some(out),
    }
}

fn failed(r: &Reporter, step: Step, failure: StepFailure) -> Outcome {
    r.line(Some(step), &format!("{} failed: {}", step.as_str(), failure.message));
    r.step(step, StepStatus::Failed, Some(failure.message.clone()));
    Outcome::Failed { step, cause: failure.cause, message: failure.message, rolled_back: failure.rolled_back }
}
