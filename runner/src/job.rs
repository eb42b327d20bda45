//! One job attempt, step by step: workspace, clone, build, test, push, deploy, cleanup. Each
//! step is reported with its status and returns a `Result`; a failure is a [`StepError`] naming
//! the step, classified once by [`JobError::cause`]; the workspace is removed whatever happens.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bollard::Docker;
use slipway_deploy::{DeployTarget, DockerTarget, KubeTarget, Release};
use slipway_detect::dockerfile::{self, BaseImages};
use slipway_detect::{Options, Provider};
use slipway_proto::{Job, Step, StepStatus, TargetKind};
use tokio_util::sync::CancellationToken;

use crate::checkout::{self, GitAuth};
use crate::claim::Claim;
use crate::config::Config;
use crate::failure::{JobError, StepError};
use crate::report::Reporter;
use crate::suite::{self, Verdict};
use crate::{cache, context, image, leftovers, snapshot, watch};

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
    /// Where repositories may be fetched from.
    pub guard: Arc<slipway_proto::outbound::Guard>,
    /// Credentials for the registry, when it needs them.
    pub registry_auth: Option<bollard::auth::DockerCredentials>,
}

/// How an attempt that ran to its end ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// What it made live.
    Live { image: String, url: Option<String> },
    /// The push changed no watched file: nothing was built or deployed.
    Skipped { reason: String },
}

/// How long the registry may take to say whether the image is there already.
const REGISTRY_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the scheduler may take to confirm the grant before the deploy step.
const CONFIRM_BEFORE_DEPLOY: Duration = Duration::from_secs(60);

/// Runs every step of `job` under `claim` (granted already), reporting as it goes. The
/// workspace is removed whatever happens, once nothing writes to it any more.
pub async fn run(job: &Job, tools: &Tools, claim: &Claim) -> Result<Done, StepError> {
    let r = &claim.reporter;
    r.line(
        None,
        &format!("attempt {} of deployment {} on runner {}", job.attempt, job.deployment_id, tools.config.runner_id()),
    );
    let workspace = leftovers::workspace(&tools.config, job).map_err(|e| JobError::Workspace(e).at(Step::Clone))?;
    let result = steps(job, tools, claim, workspace.path()).await;
    if let Err(StepError { step, error }) = &result {
        report_failure(r, *step, error);
    }
    r.step(Step::Cleanup, StepStatus::Running, None);
    let path = workspace.path().display().to_string();
    match tokio::task::spawn_blocking(move || workspace.close()).await {
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

/// Shows how a step ended in the log and the step table: cancelled, or failed with the cause.
fn report_failure(r: &Reporter, step: Step, error: &JobError) {
    if let JobError::Cancelled = error {
        r.line(Some(step), &format!("{} stopped: the job was cancelled", step.as_str()));
        r.step(step, StepStatus::Cancelled, None);
        return;
    }
    let message = r.mask(&error.to_string());
    r.line(Some(step), &format!("{} failed: {message}", step.as_str()));
    r.step(step, StepStatus::Failed, Some(message));
}

async fn steps(job: &Job, tools: &Tools, claim: &Claim, dir: &Path) -> Result<Done, StepError> {
    let (r, cancel) = (&claim.reporter, &claim.cancel);
    let log = |step: Step| {
        let r = r.clone();
        move |line: String| r.line(Some(step), &line)
    };

    if job.teardown {
        return teardown(job, tools, claim).await;
    }
    // An image already in the registry was built and tested by an earlier attempt (or this is a
    // rollback): deploy it without cloning or building again.
    // A deploy of the branch head names no commit: resolve it here, never in the scheduler.
    let sha = match job.sha.is_empty() {
        false => job.sha.clone(),
        true => resolve_head(job, tools, claim).await.map_err(|e| e.at(Step::Clone))?,
    };
    if job.head_only
        && let Some(reason) = moved_past(job, &sha, tools, claim).await.map_err(|e| e.at(Step::Clone))?
    {
        for step in [Step::Clone, Step::Build, Step::Test, Step::Push, Step::Deploy] {
            r.step(step, StepStatus::Skipped, None);
        }
        return Ok(Done::Skipped { reason });
    }
    let reference =
        image::reference(&tools.config.registry, &job.app.name, &sha).map_err(|e| JobError::from(e).at(Step::Build))?;
    let image_name = reference.whole();
    // Skipped only if the registry holds exactly the image Slipway itself pushed for this commit:
    // an image someone else put under the same name is rebuilt, never trusted.
    let registry_check = tokio::time::timeout(
        REGISTRY_CHECK_TIMEOUT,
        image::registry_digest(&tools.docker, &image_name, tools.registry_auth.as_ref()),
    );
    let found = registry_check.await.unwrap_or_else(|_| {
        r.line(Some(Step::Clone), &format!("the registry did not answer within {REGISTRY_CHECK_TIMEOUT:?}; building"));
        None
    });
    let trusted = match (&job.image_digest, &found) {
        (Some(expected), Some(found)) if expected == found => true,
        (Some(expected), Some(found)) => {
            tracing::warn!(image = %image_name, expected = %expected, found = %found, "the registry holds another image than the one Slipway pushed; rebuilding");
            r.line(
                Some(Step::Clone),
                &format!("{image_name} in the registry is {found}, not the {expected} Slipway pushed; rebuilding"),
            );
            false
        }
        (None, Some(_)) => {
            r.line(
                Some(Step::Clone),
                &format!("{image_name} is in the registry but was not pushed by this deployment's history; rebuilding"),
            );
            false
        }
        (_, None) => false,
    };
    if let (true, Some(digest)) = (trusted, &found) {
        for step in [Step::Clone, Step::Build, Step::Test, Step::Push] {
            r.line(Some(step), &format!("{image_name} is already in the registry (built and tested before); skipping"));
            r.step(step, StepStatus::Skipped, None);
        }
        let pull_log = log(Step::Deploy);
        let pulling = image::ensure_local(&tools.docker, &reference, digest, tools.registry_auth.as_ref(), &pull_log);
        cancellable(cancel, tokio::time::timeout(tools.config.push_timeout(), pulling))
            .await
            .and_then(|pulled| pulled.map_err(|_| JobError::PushTimedOut(tools.config.push_timeout())))
            .and_then(|pulled| pulled.map_err(JobError::from))
            .map_err(|e| e.at(Step::Deploy))?;
    } else if let Some(promotion) = &job.promotion {
        promote(tools, claim, promotion, &sha, &reference).await?;
    } else {
        r.step(Step::Clone, StepStatus::Running, None);
        clone(job, &sha, tools, cancel, dir, log(Step::Clone)).await.map_err(|e| e.at(Step::Clone))?;
        let unwatched = watch::check(job, &sha, tools, cancel, dir, log(Step::Clone)).await;
        let unwatched = unwatched.map_err(|e| e.at(Step::Clone))?;
        r.step(Step::Clone, StepStatus::Succeeded, None);
        if let Some(reason) = unwatched {
            for step in [Step::Build, Step::Test, Step::Push, Step::Deploy] {
                r.step(step, StepStatus::Skipped, None);
            }
            return Ok(Done::Skipped { reason });
        }
        // The app's network is made while the image builds, off the deploy step's path (the
        // engine creates networks one at a time: 0.1 s alone, up to 1.5 s with eight at once on
        // two cores). A failure is only logged: the deploy step asks again and reports its own.
        if job.app.target == TargetKind::Docker {
            let (target, app, environment) = (tools.target.clone(), job.app.name.clone(), job.app.environment.clone());
            tokio::spawn(async move {
                if let Err(err) = target.network_of(&app, &environment).await {
                    tracing::debug!(%app, %environment, "making the app's network ahead of the deploy: {err}");
                }
            });
        }
        build_and_test(job, tools, claim, dir, &image_name).await?;
        r.step(Step::Push, StepStatus::Running, None);
        let limit = tools.config.push_timeout();
        let push_log = log(Step::Push);
        let pushing = tokio::time::timeout(
            limit,
            image::push(&tools.docker, &reference, tools.registry_auth.as_ref(), &push_log),
        );
        let digest = cancellable(cancel, pushing)
            .await
            .and_then(|pushed| pushed.map_err(|_| JobError::PushTimedOut(limit)))
            .and_then(|pushed| pushed.map_err(JobError::from))
            .map_err(|e| e.at(Step::Push))?;
        let digest = match digest {
            Some(digest) => Some(digest),
            None => image::registry_digest(&tools.docker, &image_name, tools.registry_auth.as_ref()).await,
        };
        r.line(Some(Step::Push), &format!("pushed {image_name} {}", digest.as_deref().unwrap_or_default()));
        if let Some(digest) = digest {
            // Recorded before the step counts as done: a retry or rollback trusts only this digest.
            r.send_confirmed(slipway_proto::Body::Pushed { digest }).await;
        }
        r.step(Step::Push, StepStatus::Succeeded, None);
    }

    let release = Release {
        app: job.app.name.clone(),
        environment: job.app.environment.clone(),
        deployment_id: job.deployment_id,
        attempt: job.attempt,
        sha: sha.clone(),
        image: image_name.clone(),
        port: job.app.port,
        health_path: job.app.health_path.clone(),
        env: job.app.env.clone(),
        secrets: job.app.secrets.clone(),
        limits: job.app.limits.map(|l| tools.config.app_limits_with(&l)),
        hosts: job.app.edge.as_ref().map(|e| e.hosts.clone()).unwrap_or_default(),
        drain: job.app.edge.as_ref().and_then(|e| e.drain_seconds).map(|s| std::time::Duration::from_secs(s.into())),
        rollback: job.rollback,
        settings: job.app.settings.clone(),
    };
    let commands = image::commands(&tools.docker, &release.image).await;
    release_command(job, tools, claim, &release, &commands).await?;
    pre_deploy(tools, claim, job, &release, commands.pre_deploy.as_deref()).await?;
    // Fenced: only the attempt the scheduler still grants may change what serves. Once it
    // starts, the deploy step is never cut off half-way, so it is not cancellable.
    claim.confirm(CONFIRM_BEFORE_DEPLOY).await.map_err(|e| e.at(Step::Deploy))?;
    r.step(Step::Deploy, StepStatus::Running, None);
    let deploy_log = log(Step::Deploy);
    let deployed = match (job.app.target, &tools.kube) {
        (TargetKind::Docker, _) => tools.target.deploy(&release, &deploy_log).await.map_err(JobError::from),
        (TargetKind::Kubernetes, Some(kube)) => kube.deploy(&release, &deploy_log).await.map_err(JobError::from),
        (TargetKind::Kubernetes, None) => Err(JobError::NoCluster),
    };
    let live = deployed.map_err(|e| e.at(Step::Deploy))?;
    if let Some(url) = &live.url {
        r.line(Some(Step::Deploy), &format!("live at {url}"));
    }
    r.step(Step::Deploy, StepStatus::Succeeded, None);
    post_deploy(tools, claim, job, &release, commands.post_deploy.as_deref()).await;
    Ok(Done::Live { image: image_name, url: live.url })
}

/// A teardown of the app's environment (a closed pull request's preview): every step but the
/// deploy step is skipped, and the deploy step, fenced like any other, removes what serves it.
async fn teardown(job: &Job, tools: &Tools, claim: &Claim) -> Result<Done, StepError> {
    let r = &claim.reporter;
    let env = &job.app.environment;
    for step in [Step::Clone, Step::Build, Step::Test, Step::Push, Step::Release, Step::PreDeploy] {
        r.line(Some(step), &format!("tearing down {env}: nothing to {}", step.as_str()));
        r.step(step, StepStatus::Skipped, None);
    }
    claim.confirm(CONFIRM_BEFORE_DEPLOY).await.map_err(|e| e.at(Step::Deploy))?;
    r.step(Step::Deploy, StepStatus::Running, None);
    r.line(Some(Step::Deploy), &format!("tearing down {} {env}", job.app.name));
    let release = Release {
        app: job.app.name.clone(),
        environment: env.clone(),
        deployment_id: job.deployment_id,
        attempt: job.attempt,
        sha: String::new(),
        image: String::new(),
        port: job.app.port,
        health_path: job.app.health_path.clone(),
        env: job.app.env.clone(),
        secrets: job.app.secrets.clone(),
        limits: None,
        hosts: Vec::new(),
        drain: None,
        rollback: false,
        settings: job.app.settings.clone(),
    };
    let log = {
        let r = r.clone();
        move |line: String| r.line(Some(Step::Deploy), &line)
    };
    let done = match (job.app.target, &tools.kube) {
        (TargetKind::Docker, _) => tools.target.teardown(&release, &log).await.map_err(JobError::from),
        (TargetKind::Kubernetes, Some(kube)) => kube.teardown(&release, &log).await.map_err(JobError::from),
        (TargetKind::Kubernetes, None) => Err(JobError::NoCluster),
    };
    done.map_err(|e| e.at(Step::Deploy))?;
    r.step(Step::Deploy, StepStatus::Succeeded, None);
    r.step(Step::PostDeploy, StepStatus::Skipped, None);
    Ok(Done::Live { image: String::new(), url: None })
}

/// A promotion: the image of another app's release, by its digest, tagged and pushed under this
/// app's name; nothing is cloned, built or tested again (it was, for that release).
async fn promote(
    tools: &Tools,
    claim: &Claim,
    promotion: &slipway_proto::Promotion,
    sha: &str,
    to: &oci_spec::distribution::Reference,
) -> Result<(), StepError> {
    let r = &claim.reporter;
    let at = |e: JobError| e.at(Step::Push);
    for step in [Step::Clone, Step::Build, Step::Test] {
        let said = format!(
            "promoted from {} release v{} ({}): not built again",
            promotion.app, promotion.version, promotion.digest
        );
        r.line(Some(step), &said);
        r.step(step, StepStatus::Skipped, None);
    }
    r.step(Step::Push, StepStatus::Running, None);
    let from = image::reference(&tools.config.registry, &promotion.app, sha).map_err(|e| at(JobError::from(e)))?;
    let log = {
        let r = r.clone();
        move |line: String| r.line(Some(Step::Push), &line)
    };
    let auth = tools.registry_auth.as_ref();
    let limit = tools.config.push_timeout();
    let moving = async {
        image::ensure_local(&tools.docker, &from, &promotion.digest, auth, &log).await?;
        let pinned = format!("{}/{}@{}", from.registry(), from.repository(), promotion.digest);
        image::tag(&tools.docker, &pinned, to).await?;
        image::push(&tools.docker, to, auth, &log).await
    };
    let pushed = cancellable(&claim.cancel, tokio::time::timeout(limit, moving))
        .await
        .and_then(|done| done.map_err(|_| JobError::PushTimedOut(limit)))
        .and_then(|done| done.map_err(JobError::from))
        .map_err(at)?;
    let digest = match pushed {
        Some(digest) => Some(digest),
        None => image::registry_digest(&tools.docker, &to.whole(), auth).await,
    };
    match &digest {
        Some(d) if d == &promotion.digest => {
            r.line(Some(Step::Push), &format!("pushed {} {d}: the same image", to.whole()))
        }
        Some(d) => r.line(
            Some(Step::Push),
            &format!("pushed {} {d} (the registry gave it another digest than {})", to.whole(), promotion.digest),
        ),
        None => r.line(Some(Step::Push), &format!("pushed {}", to.whole())),
    }
    if let Some(digest) = digest {
        r.send_confirmed(slipway_proto::Body::Pushed { digest }).await;
    }
    r.step(Step::Push, StepStatus::Succeeded, None);
    Ok(())
}

/// The release step: the image's release command (migrations), once per deployment, in a
/// one-off container of the new image with the app's environment, network and limits, before
/// any traffic moves. It is fenced like the deploy step (the scheduler confirms the grant
/// first), recorded before it starts and when it ends (an attempt after one that started it
/// never runs it again), and not cut off by a cancel once started. Rollbacks do not run it.
async fn release_command(
    job: &Job,
    tools: &Tools,
    claim: &Claim,
    release: &Release,
    commands: &image::Commands,
) -> Result<(), StepError> {
    use slipway_proto::{Body, ReleaseState};
    let r = &claim.reporter;
    let at = |e: JobError| e.at(Step::Release);
    let named = commands.snapshot_database.as_deref();
    if let Some(restore) = &job.restore {
        return restore_snapshot(job, tools, claim, release, restore, named).await.map_err(at);
    }
    let Some(argv) = commands.release.as_deref().filter(|_| !job.rollback) else {
        let why = if job.rollback { "a rollback does not run the release command" } else { "no release command" };
        r.line(Some(Step::Release), why);
        r.step(Step::Release, StepStatus::Skipped, None);
        return Ok(());
    };
    match job.release_command {
        Some(record) if record.state == ReleaseState::Succeeded => {
            let said = format!("the release command ran in attempt {} and succeeded; not run again", record.attempt);
            r.line(Some(Step::Release), &said);
            r.step(Step::Release, StepStatus::Skipped, None);
            return Ok(());
        }
        Some(record) if record.state == ReleaseState::Failed => {
            return Err(at(JobError::ReleaseFailed(record.exit_code.unwrap_or(-1))));
        }
        Some(record) => return Err(at(JobError::ReleaseUnknown(record.attempt))),
        None => {}
    }
    claim.confirm(CONFIRM_BEFORE_DEPLOY).await.map_err(at)?;
    r.step(Step::Release, StepStatus::Running, None);
    take_snapshot(job, tools, claim, release, named).await.map_err(at)?;
    r.send_confirmed(Body::ReleaseCommand { state: ReleaseState::Started, exit_code: None }).await;
    let verdict = one_off(job, tools, claim, release, Step::Release, argv).await;
    let (state, exit_code) = match &verdict {
        Ok(Verdict::Passed) => (ReleaseState::Succeeded, Some(0)),
        Ok(Verdict::Failed { exit_code }) => (ReleaseState::Failed, Some(*exit_code)),
        _ => (ReleaseState::Failed, None),
    };
    r.send_confirmed(Body::ReleaseCommand { state, exit_code }).await;
    match verdict.map_err(at)? {
        Verdict::Passed => {
            r.step(Step::Release, StepStatus::Succeeded, None);
            Ok(())
        }
        Verdict::Failed { exit_code } => Err(at(JobError::ReleaseFailed(exit_code))),
        Verdict::TimedOut | Verdict::Cancelled => {
            Err(at(JobError::ReleaseTimedOut(Duration::from_secs(tools.config.release_timeout_seconds))))
        }
    }
}

/// The database snapshot before the release command, when the app has a PostgreSQL database
/// (docker target): `pg_dump -Fc` into the runner's snapshot directory, then retention, then
/// the record (confirmed) so it is listed and can be restored.
async fn take_snapshot(
    job: &Job,
    tools: &Tools,
    claim: &Claim,
    release: &Release,
    named: Option<&str>,
) -> Result<(), JobError> {
    let r = &claim.reporter;
    let say = |line: &str| r.line(Some(snapshot::STEP), line);
    let Some((variable, url)) = snapshot::database_url(release, named)? else {
        if named != Some("") {
            say(
                "no database snapshot: the app has no PostgreSQL DATABASE_URL (slipway.toml's snapshot_database names another variable)",
            );
        }
        return Ok(());
    };
    if job.app.target == TargetKind::Kubernetes {
        say(
            "no database snapshot: on the Kubernetes target the runner's snapshot directory is not reachable from the cluster",
        );
        return Ok(());
    }
    let dir = snapshot::app_dir(&tools.config.snapshot_dir, &release.app);
    create_private_dir(&dir).map_err(JobError::SnapshotIo)?;
    let name = snapshot::file_name(release, chrono::Utc::now());
    say(&format!("database snapshot of {variable} before the release command: pg_dump -Fc to {name}"));
    let verdict = snapshot_run(job, tools, release, &dir, false, &url)
        .await?
        .script(&snapshot::dump_script(), &name, &|line: String| say(&line))
        .await?;
    match verdict {
        Verdict::Passed => {}
        Verdict::Failed { exit_code } => {
            return Err(JobError::SnapshotFailed(format!("pg_dump exited with {exit_code}")));
        }
        Verdict::TimedOut | Verdict::Cancelled => {
            return Err(JobError::SnapshotFailed("pg_dump did not finish in time".into()));
        }
    }
    let bytes = std::fs::metadata(dir.join(&name)).map_err(JobError::SnapshotIo)?.len();
    let keep = tools.config.snapshot_keep;
    let pruned = snapshot::prune(&dir, keep).map_err(JobError::SnapshotIo)?;
    say(&format!("snapshot {name} taken: {bytes} bytes ({} older removed; {keep} kept per app)", pruned.len()));
    r.send_confirmed(slipway_proto::Body::Snapshot { name, bytes, pruned }).await;
    Ok(())
}

/// A restore, in the release step of a `restore` deployment: the snapshot back into the app's
/// database in one transaction; the live release is deployed again after it.
async fn restore_snapshot(
    job: &Job,
    tools: &Tools,
    claim: &Claim,
    release: &Release,
    restore: &slipway_proto::RestoreSnapshot,
    named: Option<&str>,
) -> Result<(), JobError> {
    let r = &claim.reporter;
    let say = |line: &str| r.line(Some(snapshot::STEP), line);
    r.step(Step::Release, StepStatus::Running, None);
    let Some((variable, url)) = snapshot::database_url(release, named)? else {
        return Err(JobError::SnapshotFailed("the app has no PostgreSQL database to restore into".into()));
    };
    if job.app.target == TargetKind::Kubernetes {
        return Err(JobError::SnapshotFailed("snapshots are taken and restored on the docker target only".into()));
    }
    let dir = snapshot::app_dir(&tools.config.snapshot_dir, &release.app);
    let single = Path::new(&restore.name).file_name().is_some_and(|n| n == restore.name.as_str());
    if !single || !dir.join(&restore.name).is_file() {
        return Err(JobError::SnapshotMissing(format!(
            "snapshot {} is not in this runner's snapshot directory {}: runners that restore each other's snapshots must share SLIPWAY_SNAPSHOT_DIR",
            restore.name,
            dir.display()
        )));
    }
    claim.confirm(CONFIRM_BEFORE_DEPLOY).await?;
    say(&format!(
        "restoring {} into the database of {variable}: pg_restore --clean --if-exists, in one transaction",
        restore.name
    ));
    let verdict = snapshot_run(job, tools, release, &dir, true, &url)
        .await?
        .script(&snapshot::restore_script(), &restore.name, &|line: String| say(&line))
        .await?;
    match verdict {
        Verdict::Passed => {
            say(&format!("restored {}; deploying the live release again", restore.name));
            r.step(Step::Release, StepStatus::Succeeded, None);
            Ok(())
        }
        Verdict::Failed { exit_code } => Err(JobError::RestoreFailed(exit_code)),
        Verdict::TimedOut | Verdict::Cancelled => Err(JobError::RestoreFailed(-1)),
    }
}

/// A run of the PostgreSQL client image on the app's network, with the app's limits and the
/// release timeout, mounting the app's snapshot directory.
async fn snapshot_run<'a>(
    job: &Job,
    tools: &'a Tools,
    release: &Release,
    dir: &'a Path,
    read_only: bool,
    url: &'a str,
) -> Result<snapshot::Run<'a>, JobError> {
    let limits = release.limits.unwrap_or(tools.config.app_limits());
    Ok(snapshot::Run {
        docker: &tools.docker,
        image: &tools.config.snapshot_image,
        network: tools.target.network(release).await?,
        dir,
        read_only,
        url,
        limits: suite::Limits {
            memory_bytes: limits.memory_bytes,
            nano_cpus: limits.nano_cpus,
            pids: limits.pids,
            timeout: Duration::from_secs(tools.config.release_timeout_seconds),
        },
        labels: leftovers::labels(&tools.config, job),
    })
}

/// Creates `dir` (and its parents) readable by its owner only: snapshots hold the app's data.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// The `pre_deploy` hook: before the deploy step, fenced; a failure stops the deployment.
async fn pre_deploy(
    tools: &Tools,
    claim: &Claim,
    job: &Job,
    release: &Release,
    argv: Option<&[String]>,
) -> Result<(), StepError> {
    let r = &claim.reporter;
    let at = |e: JobError| e.at(Step::PreDeploy);
    let Some(argv) = argv else {
        return Ok(());
    };
    claim.confirm(CONFIRM_BEFORE_DEPLOY).await.map_err(at)?;
    r.step(Step::PreDeploy, StepStatus::Running, None);
    match one_off(job, tools, claim, release, Step::PreDeploy, argv).await.map_err(at)? {
        Verdict::Passed => {
            r.step(Step::PreDeploy, StepStatus::Succeeded, None);
            Ok(())
        }
        Verdict::Failed { exit_code } => Err(at(JobError::PreDeployFailed(exit_code))),
        Verdict::TimedOut | Verdict::Cancelled => Err(at(JobError::PreDeployFailed(-1))),
    }
}

/// The `post_deploy` hook, once the new version serves: a failure is reported on the
/// deployment (its step fails) and nothing is undone.
async fn post_deploy(tools: &Tools, claim: &Claim, job: &Job, release: &Release, argv: Option<&[String]>) {
    let r = &claim.reporter;
    let Some(argv) = argv else {
        return;
    };
    r.step(Step::PostDeploy, StepStatus::Running, None);
    let failed = match one_off(job, tools, claim, release, Step::PostDeploy, argv).await {
        Ok(Verdict::Passed) => None,
        Ok(Verdict::Failed { exit_code }) => Some(format!("exit code {exit_code}")),
        Ok(Verdict::TimedOut | Verdict::Cancelled) => Some("it did not finish in time".to_string()),
        Err(err) => Some(r.mask(&err.to_string())),
    };
    match failed {
        None => r.step(Step::PostDeploy, StepStatus::Succeeded, None),
        Some(why) => {
            let said = format!("the post_deploy hook failed ({why}); the new version stays live");
            r.line(Some(Step::PostDeploy), &said);
            r.step(Step::PostDeploy, StepStatus::Failed, Some(said));
        }
    }
}

/// Runs `argv` in a one-off container of the release's image with the app's environment (its
/// secrets masked in the output), network and limits, logging to `step` — on Kubernetes as a Job
/// in the app's namespace. Not cancellable: a migration or hook cut off half-way is worse than
/// one that ends.
async fn one_off(
    job: &Job,
    tools: &Tools,
    claim: &Claim,
    release: &Release,
    step: Step,
    argv: &[String],
) -> Result<Verdict, JobError> {
    let r = claim.reporter.clone();
    r.line(Some(step), &format!("running {argv:?}"));
    if job.app.target == TargetKind::Kubernetes {
        let kube = tools.kube.as_ref().ok_or(JobError::NoCluster)?;
        let hook = match step {
            Step::PreDeploy => slipway_deploy::kubernetes::Hook::PreDeploy,
            Step::PostDeploy => slipway_deploy::kubernetes::Hook::PostDeploy,
            _ => slipway_deploy::kubernetes::Hook::Release,
        };
        let timeout = Duration::from_secs(tools.config.release_timeout_seconds);
        let log = {
            let r = r.clone();
            move |line: String| r.line(Some(step), &line)
        };
        use slipway_deploy::kubernetes::JobOutcome;
        return Ok(match kube.run_once(release, hook, argv, timeout, &log).await? {
            JobOutcome::Succeeded => Verdict::Passed,
            JobOutcome::Failed { exit_code, reason } => {
                r.line(Some(step), &format!("the Job failed: {reason}"));
                Verdict::Failed { exit_code: exit_code.map_or(-1, i64::from) }
            }
            JobOutcome::TimedOut => Verdict::TimedOut,
        });
    }
    let network = tools.target.network(release).await?;
    let limits = release.limits.unwrap_or(tools.config.app_limits());
    let timeout = Duration::from_secs(tools.config.release_timeout_seconds);
    let one = suite::OneOff {
        image: &release.image,
        cmd: argv.to_vec(),
        env: release.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        limits: suite::Limits {
            memory_bytes: limits.memory_bytes,
            nano_cpus: limits.nano_cpus,
            pids: limits.pids,
            timeout,
        },
        network,
        labels: leftovers::labels(&tools.config, job),
        binds: Vec::new(),
    };
    let log = move |line: String| r.line(Some(step), &line);
    suite::run_once(&tools.docker, one, &log, &CancellationToken::new()).await.map_err(JobError::ReleaseRun)
}

/// The credentials for the job's repository: the app's own, else the runner's token when the
/// repository's host is one it was configured for; only ever over https to that host.
pub(crate) fn git_auth(job: &Job, tools: &Tools) -> Option<GitAuth> {
    let target = slipway_proto::outbound::target(&job.app.repo_url).ok().filter(|t| t.scheme == "https")?;
    if let Some(creds) = &job.app.git_credentials {
        return Some(GitAuth { username: creds.username.clone(), token: creds.token.clone(), host: target.host });
    }
    let token = tools.config.git_token.clone()?;
    tools.config.git_token_hosts().contains(&target.host).then(|| GitAuth {
        username: tools.config.git_username.clone(),
        token,
        host: target.host,
    })
}

/// The commit the job's ref points at, reported to the scheduler before anything uses it.
async fn resolve_head(job: &Job, tools: &Tools, claim: &Claim) -> Result<String, JobError> {
    let r = &claim.reporter;
    r.line(Some(Step::Clone), &format!("resolving the head of {}", job.git_ref));
    let sha = list_head(job, tools, claim).await?;
    r.line(Some(Step::Clone), &format!("{} is at {sha}", job.git_ref));
    r.send_confirmed(slipway_proto::Body::Resolved { sha: sha.clone() }).await;
    Ok(sha)
}

/// For a push of a branch: why it is no longer deployed (the branch has moved on to another
/// commit, whose own push deploys it), or `None` while it is the head. One reference listing,
/// before anything is cloned; a per-app queue runs one deployment at a time, so the head cannot
/// be overtaken by an older push after this.
async fn moved_past(job: &Job, sha: &str, tools: &Tools, claim: &Claim) -> Result<Option<String>, JobError> {
    let head = list_head(job, tools, claim).await?;
    Ok((head != sha).then(|| format!("{} has moved on to {head}; that push deploys instead of {sha}", job.git_ref)))
}

/// Where the job's ref points on the git server now (one reference listing, through the
/// outbound guard; interrupted by a cancel).
async fn list_head(job: &Job, tools: &Tools, claim: &Claim) -> Result<String, JobError> {
    let auth = git_auth(job, tools);
    let guard = tools.guard.clone();
    let (url, git_ref) = (job.app.repo_url.clone(), job.git_ref.clone());
    interruptible("resolve", &claim.cancel, move |stop| {
        checkout::guard(&url, &guard)?;
        checkout::resolve_ref(&url, &git_ref, auth.as_ref(), stop)
    })
    .await
}

/// Fetches the commit into `dir`. On cancel the fetch is interrupted, and this returns only once
/// the blocking fetch has stopped writing (bounded by the git network timeouts).
async fn clone(
    job: &Job,
    sha: &str,
    tools: &Tools,
    cancel: &CancellationToken,
    dir: &Path,
    log: impl Fn(String) + Send + 'static,
) -> Result<(), JobError> {
    let auth = git_auth(job, tools);
    let guard = tools.guard.clone();
    let (url, sha, git_ref, dest) = (job.app.repo_url.clone(), sha.to_string(), job.git_ref.clone(), dir.to_path_buf());
    interruptible("clone", cancel, move |stop| {
        checkout::guard(&url, &guard)?;
        checkout::shallow_checkout(&url, &sha, &git_ref, &dest, auth.as_ref(), &log, stop)
    })
    .await
}

/// Runs a blocking git operation on the blocking pool. On cancel it is interrupted through its
/// stop flag (checked by the transfer callbacks), and this returns only once it has stopped.
pub(crate) async fn interruptible<T: Send + 'static>(
    what: &'static str,
    cancel: &CancellationToken,
    operation: impl FnOnce(&AtomicBool) -> Result<T, checkout::CheckoutError> + Send + 'static,
) -> Result<T, JobError> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let mut running = tokio::task::spawn_blocking(move || operation(&flag));
    let joined = tokio::select! {
        joined = &mut running => joined,
        _ = cancel.cancelled() => {
            stop.store(true, Ordering::Relaxed);
            let _ = (&mut running).await;
            return Err(JobError::Cancelled);
        }
    };
    joined.map_err(|source| JobError::Task { what, source })?.map_err(JobError::from)
}

/// Plans, builds and tests the image.
async fn build_and_test(job: &Job, tools: &Tools, claim: &Claim, dir: &Path, tag: &str) -> Result<(), StepError> {
    let (r, cancel) = (&claim.reporter, &claim.cancel);
    r.step(Step::Build, StepStatus::Running, None);
    let at_build = |e: JobError| e.at(Step::Build);
    // The app root must be a real directory of the checkout: a link in it could point anywhere.
    context::contained(dir, &job.app.app_root).map_err(|e| at_build(JobError::from(e)))?;
    let options = Options { app_root: Some(job.app.app_root.clone()), ignore_dockerfile: false };
    let repo = dir.to_path_buf();
    let plan = tokio::task::spawn_blocking(move || slipway_detect::detect(&repo, &options))
        .await
        .map_err(|source| at_build(JobError::Task { what: "detect", source }))?
        .map_err(|e| at_build(JobError::Plan(e)))?;
    for line in plan_summary(&plan) {
        r.line(Some(Step::Build), &line);
    }
    let generated = match plan.provider {
        Provider::Dockerfile => None,
        _ => Some(dockerfile::generate(&plan, &tools.base_images).map_err(|e| at_build(JobError::Dockerfile(e)))?),
    };
    if let Some(text) = &generated {
        r.line(Some(Step::Build), "generated Dockerfile:");
        for line in text.lines() {
            r.line(Some(Step::Build), &format!("  {line}"));
        }
    }
    let app_dir = context::contained(dir, &plan.app_root).map_err(|e| at_build(JobError::from(e)))?;
    let text = generated.clone();
    let (tar, files) = tokio::task::spawn_blocking(move || {
        context::tarball(&app_dir, CONTEXT_LIMIT, text.as_deref()).map(|tar| {
            let files = cache::files_of(&tar);
            (tar, files)
        })
    })
    .await
    .map_err(|source| at_build(JobError::Task { what: "context", source }))?
    .map_err(|e| at_build(JobError::from(e)))?;
    r.line(Some(Step::Build), &format!("build context: {} bytes", tar.len()));
    metrics::histogram!(slipway_telemetry::metrics::BUILD_CONTEXT).record(tar.len() as f64);
    let dockerfile_name = if generated.is_some() { context::GENERATED_DOCKERFILE } else { "Dockerfile" };
    // The release command travels with the image, so a deployment that does not build it (a
    // configuration change, a retry) runs the command of exactly this image.
    let commands: Vec<(&str, String)> = [
        (image::RELEASE_LABEL, "release command", &plan.release),
        (image::PRE_DEPLOY_LABEL, "pre_deploy hook", &plan.pre_deploy),
        (image::POST_DEPLOY_LABEL, "post_deploy hook", &plan.post_deploy),
    ]
    .into_iter()
    .filter_map(|(label, what, fact)| {
        let fact = fact.as_ref()?;
        r.line(Some(Step::Build), &format!("plan: {what} {:?} ({})", fact.value, fact.from.join(", ")));
        Some((label, serde_json::to_string(&fact.value).unwrap_or_default()))
    })
    .chain(
        plan.snapshot_database
            .as_ref()
            .map(|fact| (image::SNAPSHOT_DATABASE_LABEL, serde_json::to_string(&fact.value).unwrap_or_default())),
    )
    .collect();
    let labels: HashMap<&str, &str> = commands.iter().map(|(label, argv)| (*label, argv.as_str())).collect();
    let observer = std::sync::Arc::new(std::sync::Mutex::new(cache::Observer::default()));
    let watched = Some(observer.clone());
    build_image(tools, claim, tar.clone(), tag, dockerfile_name, None, &labels, watched).await.map_err(at_build)?;
    explain_cache(tools, claim, &job.app.name, observer, files).await;
    r.step(Step::Build, StepStatus::Succeeded, None);

    let Some(test) = &plan.test else {
        r.line(Some(Step::Test), "no test command found; skipped (set `test` in slipway.toml to run one)");
        r.step(Step::Test, StepStatus::Skipped, None);
        return Ok(());
    };
    r.step(Step::Test, StepStatus::Running, None);
    let at_test = |e: JobError| e.at(Step::Test);
    let labels = leftovers::labels(&tools.config, job);
    let (key, value) = leftovers::image_label(&tools.config, job);
    let label_refs = HashMap::from([(key.as_str(), value.as_str())]);
    // Generated images are tested in their build stage (sources and dev dependencies present),
    // tagged for this attempt and removed after the test.
    let test_image = match generated {
        Some(_) => {
            let test_tag = format!("{tag}-test");
            let stage = Some(dockerfile::TEST_STAGE);
            build_image(tools, claim, tar, &test_tag, dockerfile_name, stage, &label_refs, None)
                .await
                .map_err(at_test)?;
            Some(test_tag)
        }
        None => None,
    };
    let image_name = test_image.as_deref().unwrap_or(tag);
    r.line(Some(Step::Test), &format!("running `{}` in {image_name}", test.value));
    let log = {
        let r = r.clone();
        move |line: String| r.line(Some(Step::Test), &line)
    };
    let limits = tools.config.test_limits();
    let network = job.app.test_network;
    let verdict =
        suite::run(&tools.docker, image_name, &test.value, &plan.env, limits, network, labels, &log, cancel).await;
    if let Some(test_tag) = &test_image {
        leftovers::remove_image(&tools.docker, test_tag).await;
    }
    match verdict.map_err(|e| at_test(JobError::TestRun(e)))? {
        Verdict::Passed => {
            r.step(Step::Test, StepStatus::Succeeded, None);
            Ok(())
        }
        Verdict::Failed { exit_code } => Err(at_test(JobError::TestsFailed(exit_code))),
        Verdict::TimedOut => Err(at_test(JobError::TestsTimedOut(limits.timeout))),
        Verdict::Cancelled => Err(at_test(JobError::Cancelled)),
    }
}

/// Builds `tar` as `tag` (optionally only up to `target`), with the build timeout. No labels are
/// added to a pushed image: a label that names the commit would make every build miss the cache
/// on its last layer.
/// Says what the layer cache did in the build and why its first rebuilt step was rebuilt (in
/// the log and to the scheduler, for `slipway status`), then keeps this build's manifest.
async fn explain_cache(
    tools: &Tools,
    claim: &Claim,
    app: &str,
    observer: std::sync::Arc<std::sync::Mutex<cache::Observer>>,
    files: std::collections::BTreeMap<String, String>,
) {
    let r = &claim.reporter;
    let steps = match observer.lock() {
        Ok(mut o) => std::mem::take(&mut *o).finish(),
        Err(_) => return,
    };
    let dir = leftovers::cache_dir(&tools.config);
    let app = app.to_string();
    let kept = tokio::task::spawn_blocking(move || {
        let before = cache::load(&dir, &app);
        let summary = cache::explain(&app, &steps, &files, before.as_ref());
        let saved = cache::save(&dir, &app, files, &steps);
        (summary, saved)
    })
    .await;
    let Ok((mut summary, saved)) = kept else { return };
    // File names are the repository's: masked like every text that leaves the runner.
    summary.first_miss = summary.first_miss.map(|m| r.mask(&m));
    let first = summary.first_miss.as_deref().map(|m| format!("; first rebuilt: {m}")).unwrap_or_default();
    r.line(
        Some(Step::Build),
        &format!("layer cache: {} steps reused, {} rebuilt{first}", summary.reused, summary.rebuilt),
    );
    if let Err(err) = saved {
        tracing::warn!(error = %err, "could not keep the build's cache manifest");
    }
    r.send(slipway_proto::Body::Cache { summary });
}

#[allow(clippy::too_many_arguments)]
async fn build_image(
    tools: &Tools,
    claim: &Claim,
    tar: Vec<u8>,
    tag: &str,
    dockerfile: &str,
    target: Option<&str>,
    labels: &HashMap<&str, &str>,
    observer: Option<std::sync::Arc<std::sync::Mutex<cache::Observer>>>,
) -> Result<(), JobError> {
    let step = if target.is_some() { Step::Test } else { Step::Build };
    let r = claim.reporter.clone();
    let log = move |line: String| {
        if let Some(observer) = &observer
            && let Ok(mut o) = observer.lock()
        {
            o.line(&line);
        }
        r.line(Some(step), &line)
    };
    let limit = Duration::from_secs(tools.config.build_timeout_seconds);
    let building = image::build(&tools.docker, tar, tag, dockerfile, target, labels, &log);
    match cancellable(&claim.cancel, tokio::time::timeout(limit, building)).await? {
        Err(_elapsed) => Err(JobError::BuildTimedOut(limit)),
        Ok(built) => built.map_err(JobError::from),
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
            fact("static", &plan.static_dir),
            fact("test", &plan.test),
        ]
        .into_iter()
        .flatten(),
    );
    lines
}

/// Runs `fut` unless `cancel` fires first; then the future is dropped at an await point (for a
/// build or push, that closes the engine connection, which stops the operation in the engine).
async fn cancellable<F: std::future::Future>(cancel: &CancellationToken, fut: F) -> Result<F::Output, JobError> {
    tokio::select! {
        _ = cancel.cancelled() => Err(JobError::Cancelled),
        out = fut => Ok(out),
    }
}
