//! A running app's output and status, for `slipway logs --app` and `slipway status <app>`
//! (docker target). The scheduler asks on the control exchange ([`AppLogsRequest`]); a runner
//! whose engine has the app's containers (of this installation) answers on the request's reply
//! queue: first the containers' status, then the serving container's output — masked with the
//! app's secret values, as build logs are — and, when following, what it prints next, until the
//! scheduler says stop, the reply queue is gone, or an hour has passed. Users never need the
//! Docker socket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptionsBuilder, LogsOptionsBuilder};
use futures_util::StreamExt;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use slipway_broker as broker;
use slipway_deploy::docker::{LABEL_APP, LABEL_DEPLOYMENT, LABEL_ENV, LABEL_INSTALLATION, LABEL_SECRETS};
use slipway_proto::api::{AppContainer, AppLogLine};
use slipway_proto::message::{AppLogChunk, AppLogsRequest, is_secret_name};
use slipway_proto::text::escape_bytes;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::mask::Masker;

/// The longest a followed answer runs.
const MAX_FOLLOW: Duration = Duration::from_secs(3600);
/// Lines sent in one message at most, and how long the first line of a message waits for
/// others to share it (counted from that line, not from the last one: a steady stream never
/// holds a line longer than this).
const BATCH: usize = 500;
const BATCH_WAIT: Duration = Duration::from_millis(1);

/// The runner's answers in progress, by request.
#[derive(Debug)]
pub struct AppLogs {
    pub docker: Docker,
    pub installation: String,
    pub runner_id: Arc<str>,
    pub amqp_url: String,
    pub own_secrets: Vec<String>,
    active: Mutex<HashMap<Uuid, CancellationToken>>,
}

impl AppLogs {
    pub fn new(
        docker: Docker,
        installation: String,
        runner_id: Arc<str>,
        amqp_url: String,
        own_secrets: Vec<String>,
    ) -> Self {
        Self { docker, installation, runner_id, amqp_url, own_secrets, active: Mutex::new(HashMap::new()) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<Uuid, CancellationToken>) -> T) -> T {
        f(&mut self.active.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Starts answering `request` in a task of its own.
    pub fn request(self: &Arc<Self>, request: AppLogsRequest) {
        let cancel = CancellationToken::new();
        self.with(|m| m.insert(request.request_id, cancel.clone()));
        let me = self.clone();
        tokio::spawn(async move {
            let id = request.request_id;
            if let Err(err) = me.answer(&request, &cancel).await {
                tracing::debug!(error = %err, request_id = %id, "answering an app log request failed");
            }
            me.with(|m| m.remove(&id));
        });
    }

    /// Stops answering `request_id`, unless this runner is `keep_runner`.
    pub fn stop(&self, request_id: Uuid, keep_runner: Option<&str>) {
        if keep_runner == Some(&*self.runner_id) {
            return;
        }
        if let Some(cancel) = self.with(|m| m.remove(&request_id)) {
            cancel.cancel();
        }
    }

    async fn answer(&self, request: &AppLogsRequest, cancel: &CancellationToken) -> anyhow::Result<()> {
        let containers = self.containers(&request.app, &request.environment).await?;
        if containers.is_empty() {
            return Ok(());
        }
        let Some(conn) = broker::connect(&self.amqp_url, cancel).await else { return Ok(()) };
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let send = |chunk: AppLogChunk| {
            let channel = channel.clone();
            async move {
                let payload = serde_json::to_vec(&chunk)?;
                let options = BasicPublishOptions { mandatory: true, ..Default::default() };
                let properties = broker::persistent_json().with_delivery_mode(1);
                let confirm = channel
                    .basic_publish("".into(), request.reply_to.as_str().into(), options, &payload, properties)
                    .await?
                    .await?;
                // Returned: the reply queue is gone (the user went away).
                anyhow::Ok(matches!(confirm, Confirmation::Ack(None)))
            }
        };
        let chunk = |lines: Vec<AppLogLine>, end: bool, error: Option<String>| AppLogChunk {
            request_id: request.request_id,
            runner_id: self.runner_id.to_string(),
            lines,
            status: None,
            end,
            error,
        };
        let status = AppLogChunk { status: Some(containers.clone()), ..chunk(vec![], false, None) };
        if !send(status).await? {
            return Ok(());
        }
        let target = containers.iter().find(|c| c.serving).or(containers.first()).map(|c| c.name.clone());
        let (Some(target), true) = (target, request.tail > 0 || request.follow) else {
            send(chunk(vec![], true, None)).await?;
            return Ok(());
        };
        let masker = Masker::new(&self.secrets_of(&target).await);
        let mut options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .follow(request.follow)
            .tail(&request.tail.to_string());
        if let Some(since) = request.since {
            options = options.since(i32::try_from(since).unwrap_or(i32::MAX));
        }
        let mut output = self.docker.logs(&target, Some(options.build()));
        let deadline = tokio::time::sleep(MAX_FOLLOW);
        tokio::pin!(deadline);
        let mut batch: Vec<AppLogLine> = Vec::new();
        let mut partial: HashMap<&'static str, Vec<u8>> = HashMap::new();
        let mut flush_at: Option<tokio::time::Instant> = None;
        let ended = loop {
            let due = async {
                match flush_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break None,
                _ = &mut deadline => break Some("followed for an hour; ask again to go on".to_string()),
                next = output.next() => match next {
                    None => break None,
                    Some(Err(err)) => break Some(format!("reading the container's output failed: {err}")),
                    Some(Ok(frame)) => {
                        let (stream, bytes) = match frame {
                            LogOutput::StdErr { message } => ("stderr", message),
                            LogOutput::StdOut { message } | LogOutput::Console { message } => ("stdout", message),
                            LogOutput::StdIn { .. } => continue,
                        };
                        let buffer = partial.entry(stream).or_default();
                        buffer.extend_from_slice(&bytes);
                        while let Some(at) = buffer.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buffer.drain(..=at).collect();
                            batch.push(parse_line(stream, &line[..line.len() - 1], &masker));
                        }
                        if batch.len() >= BATCH {
                            flush_at = None;
                            if !send(chunk(std::mem::take(&mut batch), false, None)).await? {
                                return Ok(());
                            }
                        } else if !batch.is_empty() && flush_at.is_none() {
                            flush_at = Some(tokio::time::Instant::now() + BATCH_WAIT);
                        }
                    }
                },
                () = due => {
                    flush_at = None;
                    if !send(chunk(std::mem::take(&mut batch), false, None)).await? {
                        return Ok(());
                    }
                }
            }
        };
        for (stream, rest) in partial {
            if !rest.is_empty() {
                batch.push(parse_line(stream, &rest, &masker));
            }
        }
        send(chunk(batch, true, ended)).await?;
        let _ = conn.close(200, "done".into()).await;
        Ok(())
    }

    /// The app's containers of this installation (newest deployment first), with whether each
    /// serves: the newest running one does.
    async fn containers(&self, app: &str, environment: &str) -> anyhow::Result<Vec<AppContainer>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_INSTALLATION}={}", self.installation),
                format!("{LABEL_APP}={app}"),
                format!("{LABEL_ENV}={environment}"),
            ],
        )]);
        let listed = self
            .docker
            .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
            .await?;
        let mut out = Vec::new();
        for c in listed {
            let Some(name) = c.names.and_then(|n| n.into_iter().next()).map(|n| n.trim_start_matches('/').to_string())
            else {
                continue;
            };
            let Ok(info) = self.docker.inspect_container(&name, None::<InspectContainerOptions>).await else {
                continue;
            };
            let state = info.state.unwrap_or_default();
            let running = state.running == Some(true);
            let deployment_id =
                c.labels.as_ref().and_then(|l| l.get(LABEL_DEPLOYMENT)).and_then(|d| d.parse::<Uuid>().ok());
            out.push(AppContainer {
                name,
                deployment_id,
                image: c.image.unwrap_or_default(),
                state: state.status.map(|s| s.to_string()).unwrap_or_default(),
                serving: false,
                restarts: info.restart_count.unwrap_or(0),
                exit_code: state.exit_code.filter(|_| !running),
                started_at: state.started_at.filter(|t| !t.starts_with("0001")),
                finished_at: state.finished_at.filter(|t| !t.starts_with("0001") && !running),
            });
        }
        out.sort_by_key(|c| std::cmp::Reverse(c.deployment_id));
        if let Some(serving) = out.iter_mut().find(|c| c.state == "running") {
            serving.serving = true;
        }
        Ok(out)
    }

    /// The values to mask in `container`'s output: its variables named secret (by the app's
    /// marking, kept in a label, or by their name) and the runner's own secrets.
    async fn secrets_of(&self, container: &str) -> Vec<String> {
        let mut values = self.own_secrets.clone();
        if let Ok(info) = self.docker.inspect_container(container, None::<InspectContainerOptions>).await {
            let config = info.config.unwrap_or_default();
            let marked: Vec<String> = config
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SECRETS))
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            for pair in config.env.unwrap_or_default() {
                if let Some((name, value)) = pair.split_once('=')
                    && (marked.iter().any(|m| m == name) || is_secret_name(name))
                    && value.len() >= slipway_proto::message::MIN_SECRET_LEN
                {
                    values.push(value.to_string());
                }
            }
        }
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        values
    }
}

/// One line of output: Docker's timestamp split off, invalid UTF-8 escaped, secrets masked.
fn parse_line(stream: &'static str, raw: &[u8], masker: &Masker) -> AppLogLine {
    let text = escape_bytes(raw);
    let (ts, line) = match text.split_once(' ') {
        Some((ts, rest)) => match chrono::DateTime::parse_from_rfc3339(ts) {
            Ok(ts) => (Some(ts.with_timezone(&chrono::Utc)), rest.to_string()),
            Err(_) => (None, text.clone()),
        },
        None => (None, text.clone()),
    };
    let line = line.strip_suffix('\r').unwrap_or(&line);
    AppLogLine { stream: stream.to_string(), ts, line: masker.mask(line).into_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_loses_its_timestamp_and_its_secrets() {
        let masker = Masker::new(&["s3cr3t-value".to_string()]);
        let line = parse_line("stderr", b"2026-11-22T20:00:00.123456789Z token=s3cr3t-value\r", &masker);
        assert_eq!(line.stream, "stderr");
        assert_eq!(line.line, "token=***");
        assert!(line.ts.is_some());
        let raw = parse_line("stdout", b"no timestamp \xff here", &masker);
        assert_eq!((raw.ts, raw.line.as_str()), (None, "no timestamp \\xff here"));
    }
}
