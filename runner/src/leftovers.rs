//! What a runner leaves on its machine, and how it finds it again. Every workspace is named
//! after the runner and the deployment, and every test container and temporary image carries
//! the runner's and the deployment's labels, so a runner that starts up removes whatever an
//! earlier life of itself left behind (after a SIGKILL, say). Set `SLIPWAY_RUNNER_ID` to a name
//! that survives restarts for this to find them; the default id contains the process id.

use std::collections::HashMap;
use std::path::PathBuf;

use bollard::Docker;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
};
use slipway_proto::Job;

use crate::config::Config;

/// Label naming the runner that made a container or image.
pub const LABEL_RUNNER: &str = "dev.slipway.runner";
/// Label naming the installation (the queue prefix) of that runner: runner ids are only unique
/// within an installation, and several may share one Docker engine.
pub const LABEL_INSTALLATION: &str = slipway_deploy::docker::LABEL_INSTALLATION;
/// Label naming the deployment a container or image was made for.
pub const LABEL_DEPLOYMENT: &str = "dev.slipway.deployment";
/// Label naming what a container is for (`test`).
pub const LABEL_ROLE: &str = "dev.slipway.role";
/// The one label of a temporary image: `<runner>/<deployment>`. One label, because the classic
/// builder adds each label as a layer of its own, which removing the image would leave behind.
pub const LABEL_JOB: &str = "dev.slipway.job";

/// What a runner removed at start-up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    pub workspaces: usize,
    pub containers: usize,
    pub images: usize,
}

/// The runner id as it appears in file names: letters, digits, `-`, `_` and `.` only.
fn file_safe(runner_id: &str) -> String {
    runner_id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

fn work_dir(config: &Config) -> PathBuf {
    config.work_dir.clone().unwrap_or_else(std::env::temp_dir)
}

/// Where this runner keeps the manifests of each app's last successful build (its engine holds
/// their layer cache), to say why the next build missed it.
pub fn cache_dir(config: &Config) -> PathBuf {
    work_dir(config).join(format!(
        "slipway-cache-{}-{}",
        file_safe(&config.queue_prefix),
        file_safe(&config.runner_id())
    ))
}

fn prefix(config: &Config) -> String {
    format!("slipway-job-{}-{}-", file_safe(&config.queue_prefix), file_safe(&config.runner_id()))
}

/// `<installation>/<runner>/`: what this runner's temporary images' job label starts with.
fn owner(config: &Config) -> String {
    format!("{}/{}/", config.queue_prefix, config.runner_id())
}

/// Whether `name` is a workspace made under `prefix`: the prefix, then a deployment id and `-`
/// (so runner `a` never takes runner `a-b`'s workspaces for its own).
fn is_workspace_of(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() > 33 && rest.as_bytes()[..32].iter().all(u8::is_ascii_hexdigit) && rest.as_bytes()[32] == b'-'
    })
}

/// A fresh workspace for `job`, named after this runner and the deployment.
pub fn workspace(config: &Config, job: &Job) -> std::io::Result<tempfile::TempDir> {
    let dir = work_dir(config);
    std::fs::create_dir_all(&dir)?;
    let name = format!("{}{}-{}-", prefix(config), job.deployment_id.simple(), job.attempt);
    tempfile::Builder::new().prefix(&name).tempdir_in(dir)
}

/// The label of a temporary image made for `job`.
pub fn image_label(config: &Config, job: &Job) -> (String, String) {
    (LABEL_JOB.to_string(), format!("{}{}", owner(config), job.deployment_id))
}

/// The labels of a container made for `job`.
pub fn labels(config: &Config, job: &Job) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_RUNNER.to_string(), config.runner_id()),
        (LABEL_INSTALLATION.to_string(), config.queue_prefix.clone()),
        (LABEL_DEPLOYMENT.to_string(), job.deployment_id.to_string()),
        (LABEL_ROLE.to_string(), "test".to_string()),
    ])
}

/// Removes a temporary image but not its parents: they are the build stage's layers, the
/// cache of the next build. A failure is logged (the next start-up tries again).
pub async fn remove_image(docker: &Docker, tag: &str) {
    let options = RemoveImageOptionsBuilder::default().force(true).noprune(true).build();
    if let Err(err) = docker.remove_image(tag, Some(options), None).await {
        tracing::warn!(error = %err, image = tag, "could not remove a temporary image");
    }
}

/// Removes the workspaces, containers and temporary images an earlier life of this runner left.
/// Call before taking any job.
pub async fn remove_all(docker: &Docker, config: &Config) -> anyhow::Result<Removed> {
    let mut removed = Removed::default();
    let (dir, prefix) = (work_dir(config), prefix(config));
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.flatten().collect::<Vec<_>>(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Err(err.into()),
    };
    for entry in entries {
        if is_workspace_of(&entry.file_name().to_string_lossy(), &prefix) {
            let path = entry.path();
            tokio::task::spawn_blocking(move || std::fs::remove_dir_all(path)).await??;
            removed.workspaces += 1;
        }
    }
    let mine = HashMap::from([(
        "label".to_string(),
        vec![format!("{LABEL_RUNNER}={}", config.runner_id()), format!("{LABEL_INSTALLATION}={}", config.queue_prefix)],
    )]);
    let containers =
        docker.list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&mine).build())).await?;
    for c in containers.into_iter().filter_map(|c| c.id) {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match docker.remove_container(&c, Some(options)).await {
            Ok(()) => removed.containers += 1,
            // Already going (or gone): nothing of ours is left either way.
            Err(err) => tracing::warn!(error = %err, container = %c, "could not remove a leftover container"),
        }
    }
    let temporary = HashMap::from([("label".to_string(), vec![LABEL_JOB.to_string()])]);
    let images = docker.list_images(Some(ListImagesOptionsBuilder::default().filters(&temporary).build())).await?;
    let owner = owner(config);
    for image in images.into_iter().filter(|i| i.labels.get(LABEL_JOB).is_some_and(|v| v.starts_with(&owner))) {
        remove_image(docker, &image.id).await;
        removed.images += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_ids_become_safe_file_name_parts() {
        assert_eq!(file_safe("runner-1.a_b"), "runner-1.a_b");
        assert_eq!(file_safe("host/../x y"), "host_.._x_y");
    }

    #[test]
    fn a_runner_recognises_only_its_own_workspaces() {
        let id = "0123456789abcdef0123456789abcdef";
        assert!(is_workspace_of(&format!("slipway-job-a-{id}-1-Xy12"), "slipway-job-a-"));
        assert!(!is_workspace_of(&format!("slipway-job-a-b-{id}-1-Xy12"), "slipway-job-a-"));
        assert!(!is_workspace_of("slipway-job-a-", "slipway-job-a-"));
        assert!(!is_workspace_of(&format!("other-{id}-1-x"), "slipway-job-a-"));
    }
}
