//! One-off containers: the test step (the app's own test command in a container of the built
//! image or its build stage, with CPU, memory, process and time limits, no Docker socket, no
//! runner credentials, no mounts, and no network unless the app allows it) and the release
//! command (in a container of the new image with the app's environment, network and limits).

use std::collections::BTreeMap;
use std::time::Duration;

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{AttachContainerOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptions};
use futures_util::StreamExt;
use slipway_deploy::LogFn;
use slipway_proto::text::escape_bytes;
use tokio_util::sync::CancellationToken;

/// Limits of a test run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids: i64,
    pub timeout: Duration,
}

/// How the suite ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Failed {
        exit_code: i64,
    },
    TimedOut,
    /// Stopped through its cancellation token; the container is gone.
    Cancelled,
}

/// A one-off container of an image: the test step's, or the release command's.
#[derive(Debug, Clone)]
pub struct OneOff<'a> {
    pub image: &'a str,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub limits: Limits,
    /// `none` (no network), `bridge`, or the app's own network.
    pub network: String,
    /// The runner's identity and the deployment, so leftovers are found and removed.
    pub labels: HashMap<String, String>,
    /// Host paths mounted into the container (`host:container[:ro]`).
    pub binds: Vec<String>,
}

/// Runs `command` with `/bin/sh -c` in `image` as the test step, streaming its output to `log`.
/// The container carries `labels` (the runner's identity and the deployment) and is removed
/// however the run ends, `cancel` included.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    docker: &Docker,
    image: &str,
    command: &str,
    env: &BTreeMap<String, String>,
    limits: Limits,
    network: bool,
    labels: HashMap<String, String>,
    log: LogFn<'_>,
    cancel: &CancellationToken,
) -> Result<Verdict, bollard::errors::Error> {
    let mut vars: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    vars.push("CI=true".into());
    let network = if network { "bridge" } else { "none" }.to_string();
    let cmd = vec!["/bin/sh".into(), "-c".into(), command.to_string()];
    run_once(docker, OneOff { image, cmd, env: vars, limits, network, labels, binds: Vec::new() }, log, cancel).await
}

/// Runs a one-off container to its end, streaming its output to `log`, and removes it however
/// the run ends, `cancel` included.
pub async fn run_once(
    docker: &Docker,
    one: OneOff<'_>,
    log: LogFn<'_>,
    cancel: &CancellationToken,
) -> Result<Verdict, bollard::errors::Error> {
    let OneOff { image, cmd, env, limits, network, labels, binds } = one;
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(cmd),
        env: Some(env),
        network_disabled: Some(network == "none"),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some(network),
            binds: (!binds.is_empty()).then_some(binds),
            memory: Some(limits.memory_bytes),
            memory_swap: Some(limits.memory_bytes),
            nano_cpus: Some(limits.nano_cpus),
            pids_limit: Some(limits.pids),
            privileged: Some(false),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            init: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker.create_container(None::<bollard::query_parameters::CreateContainerOptions>, body).await?;
    let id = created.id;
    let result = tokio::select! {
        _ = cancel.cancelled() => Ok(Verdict::Cancelled),
        verdict = watch(docker, &id, limits.timeout, log) => verdict,
    };
    let removed =
        docker.remove_container(&id, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
    if let Err(err) = removed {
        tracing::warn!(error = %err, container = %id, "could not remove a one-off container; the next start of this runner removes it");
    }
    result
}

async fn watch(
    docker: &Docker,
    id: &str,
    timeout: Duration,
    log: LogFn<'_>,
) -> Result<Verdict, bollard::errors::Error> {
    // Attached (not read back from the log driver, which replaces invalid UTF-8) before the
    // start, so the output arrives as the raw bytes the tests printed.
    let attach = AttachContainerOptionsBuilder::default().stream(true).logs(true).stdout(true).stderr(true).build();
    let mut stream = docker.attach_container(id, Some(attach)).await?.output;
    docker.start_container(id, None).await?;
    let output = async {
        // Bytes, split at newlines before decoding: a character may span two chunks, and NUL or
        // invalid UTF-8 is shown escaped.
        let mut partial: Vec<u8> = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            partial.extend_from_slice(&chunk.into_bytes());
            // One pass over the complete lines, one move of the rest (not one per line).
            if let Some(last) = partial.iter().rposition(|b| *b == b'\n') {
                for line in partial[..last].split(|b| *b == b'\n') {
                    log(escape_bytes(line));
                }
                partial.drain(..=last);
            }
        }
        if !partial.is_empty() {
            log(escape_bytes(&partial));
        }
    };
    let waited = async {
        let mut wait = docker.wait_container(id, None::<WaitContainerOptions>);
        match wait.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(e),
            None => Ok(-1),
        }
    };
    match tokio::time::timeout(timeout, async { tokio::join!(output, waited).1 }).await {
        Err(_) => Ok(Verdict::TimedOut),
        Ok(Ok(0)) => Ok(Verdict::Passed),
        Ok(Ok(code)) => Ok(Verdict::Failed { exit_code: code }),
        Ok(Err(e)) => Err(e),
    }
}
