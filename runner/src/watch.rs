//! The watch-path check of a push, made after the clone when the scheduler could not make it
//! (the forge did not list every changed file, a reconcile, or watch paths declared in the app's
//! `slipway.toml`): which files changed, and whether any of them is watched.

use std::path::Path;

use slipway_detect::{SlipwayToml, Tree};
use slipway_git::watch::{WatchPaths, changed_between};
use slipway_proto::Job;
use tokio_util::sync::CancellationToken;

use crate::checkout;
use crate::context;
use crate::failure::JobError;
use crate::job::{Tools, git_auth, interruptible};

/// Why the push is not deployed (none of its changed files is watched), or `None` to go on. A
/// push whose changes cannot be told (nothing live yet, the live commit cannot be fetched) is
/// deployed: never skipped on a guess.
pub async fn check(
    job: &Job,
    sha: &str,
    tools: &Tools,
    cancel: &CancellationToken,
    dir: &Path,
    log: impl Fn(String) + Send + 'static,
) -> Result<Option<String>, JobError> {
    let Some(watch) = &job.watch else {
        return Ok(None);
    };
    let (patterns, whose) = match job.app.watch_paths.is_empty() {
        false => (job.app.watch_paths.clone(), "the app's watch paths"),
        true => match declared(dir, &job.app.app_root) {
            Some(patterns) => (patterns, "the watch paths of slipway.toml"),
            None => return Ok(None),
        },
    };
    let watched = WatchPaths::new(&patterns).map_err(JobError::WatchPaths)?;
    let changed = match (&watch.paths, &watch.base) {
        (Some(paths), _) => {
            log(format!("the push changed {} file(s) (listed by the forge)", paths.len()));
            paths.clone()
        }
        (None, Some(base)) if base == sha => Vec::new(),
        (None, Some(base)) => match diff(job, base, sha, tools, cancel, dir).await {
            Ok(paths) => {
                log(format!("{} file(s) differ from {base}, the live commit", paths.len()));
                paths
            }
            Err(JobError::Cancelled) => return Err(JobError::Cancelled),
            Err(err) => {
                log(format!("cannot tell which files changed since {base} ({err}); deploying"));
                return Ok(None);
            }
        },
        (None, None) => {
            log("nothing of this app is live yet; deploying whatever changed".to_string());
            return Ok(None);
        }
    };
    match watched.first_match(changed.iter().map(String::as_str)) {
        Some(path) => {
            log(format!("{path} changed, which {whose} cover"));
            Ok(None)
        }
        None => {
            let reason = watched.unmatched_reason(changed.len());
            log(format!("{reason}: not deployed"));
            Ok(Some(reason))
        }
    }
}

/// The `watch_paths` of the app's `slipway.toml`, if it sets any. A file that cannot be read or
/// parsed sets none here: the build step reports it.
fn declared(dir: &Path, app_root: &str) -> Option<Vec<String>> {
    let root = context::contained(dir, app_root).ok()?;
    SlipwayToml::load(&Tree::new(&root)).ok().flatten()?.watch_paths.filter(|p| !p.is_empty())
}

/// The files that differ between `base` and `sha` (checked out in `dir`), through git.
async fn diff(
    job: &Job,
    base: &str,
    sha: &str,
    tools: &Tools,
    cancel: &CancellationToken,
    dir: &Path,
) -> Result<Vec<String>, JobError> {
    let auth = git_auth(job, tools);
    let guard = tools.guard.clone();
    let (url, base, sha, dir) = (job.app.repo_url.clone(), base.to_string(), sha.to_string(), dir.to_path_buf());
    interruptible("diff", cancel, move |stop| {
        checkout::guard(&url, &guard)?;
        changed_between(&dir, &url, &base, &sha, auth.as_ref(), stop)
    })
    .await
}
