//! The `docker` target: run the new image as a container on the local engine, wait for its
//! HTTP health check, then retire the previous container of the app. If the new container
//! never becomes healthy it is removed and the old one keeps serving.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures_util::StreamExt;

use slipway_proto::text::escape_bytes;

use crate::edge::Edge;
use crate::{DeployTarget, Error, Live, LogFn, Release};

/// Labels that mark Slipway's containers.
pub const LABEL_APP: &str = "dev.slipway.app";
pub const LABEL_ENV: &str = "dev.slipway.environment";
pub const LABEL_DEPLOYMENT: &str = "dev.slipway.deployment";
pub const LABEL_ATTEMPT: &str = "dev.slipway.attempt";
/// The installation a container or network belongs to; Slipway touches only its own.
pub const LABEL_INSTALLATION: &str = "dev.slipway.installation";
/// The app's extra hosts on the edge (comma-separated), so routes can be rebuilt from containers.
pub const LABEL_HOSTS: &str = "dev.slipway.hosts";
/// The names (never the values) of the app's secret variables, so its output can be masked.
pub const LABEL_SECRETS: &str = "dev.slipway.secrets";
/// [`Release::fingerprint`] of the container's version: image and settings.
pub const LABEL_FINGERPRINT: &str = "dev.slipway.fingerprint";

/// Capabilities an app keeps of Docker's default set: enough to start as root and drop to a
/// user, or bind a low port; not raw sockets, device nodes, chroot or file capabilities.
const KEPT_CAPABILITIES: [&str; 8] =
    ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "NET_BIND_SERVICE"];

/// Settings of the docker target.
#[derive(Debug, Clone)]
pub struct DockerTargetConfig {
    /// Host address the app's port is published on (a random free port is chosen).
    pub publish_address: String,
    /// How long a new container has to answer its health check.
    pub health_timeout: Duration,
    /// This installation's name (the queue prefix): its containers and networks carry it.
    pub installation: String,
    /// Limits of every app container.
    pub limits: AppLimits,
    /// The edge proxy that gives each app its stable address; `None`: apps answer only on
    /// their container's published port.
    pub edge: Option<crate::edge::EdgeConfig>,
    /// How long the previous version's in-flight requests may take after a switch, unless the
    /// app says otherwise.
    pub drain: Duration,
}

/// What an app container may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppLimits {
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids: i64,
}

impl Default for AppLimits {
    fn default() -> Self {
        Self { memory_bytes: 512 * 1024 * 1024, nano_cpus: 1_000_000_000, pids: 512 }
    }
}

/// Deploys to the Docker engine the runner talks to.
#[derive(Debug, Clone)]
pub struct DockerTarget {
    docker: Docker,
    config: DockerTargetConfig,
    http: reqwest::Client,
    edge: Option<Edge>,
    /// Held while an app's network is looked up and made: engines before API 1.44 make a second
    /// network of the same name when two creations race (the engine makes them one at a time
    /// anyway, so this costs no parallelism).
    networks: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// One of an app's containers: its name, deployment, whether it runs, and its published port.
#[derive(Debug, Clone)]
struct AppContainer {
    name: String,
    app: Option<String>,
    environment: Option<String>,
    deployment: Option<uuid::Uuid>,
    running: bool,
    host_port: Option<u16>,
    hosts: Vec<String>,
    image: String,
    fingerprint: Option<String>,
}

impl DockerTarget {
    /// A target on `docker` with `config`.
    pub fn new(docker: Docker, config: DockerTargetConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let edge = config.edge.clone().map(Edge::new);
        Self { docker, config, http, edge, networks: Default::default() }
    }

    /// The edge, when this target has one.
    pub fn edge(&self) -> Option<&Edge> {
        self.edge.as_ref()
    }

    /// The container name of a release attempt. An earlier attempt's container keeps serving
    /// until this one is healthy; a container of the same attempt is a leftover of a crash here.
    pub fn container_name(release: &Release) -> String {
        let (app, env, id) = (&release.app, &release.environment, release.deployment_id.simple());
        format!("slipway-{app}-{env}-{id}-{}", release.attempt)
    }

    /// The release's app's own network (created when missing): its containers, and the one-off
    /// containers of its release command, are on it.
    pub async fn network(&self, release: &Release) -> Result<String, Error> {
        self.network_of(&release.app, &release.environment).await
    }

    /// The network of `app`'s `environment`, named after the installation, app and environment,
    /// created when missing; its containers are reachable from the host only through their
    /// published port. Created only here, one caller of this target at a time: engines before
    /// API 1.44 do not refuse a second network of the same name, and two would make its name
    /// ambiguous.
    pub async fn network_of(&self, app: &str, environment: &str) -> Result<String, Error> {
        use bollard::models::NetworkCreateRequest;
        let name = format!("slipway-{}-{app}-{environment}", self.config.installation);
        let _one_at_a_time = self.networks.lock().await;
        if self.docker.inspect_network(&name, None::<bollard::query_parameters::InspectNetworkOptions>).await.is_ok() {
            return Ok(name);
        }
        let labels = HashMap::from([
            (LABEL_INSTALLATION.to_string(), self.config.installation.clone()),
            (LABEL_APP.to_string(), app.to_string()),
        ]);
        let request = NetworkCreateRequest { name: name.clone(), labels: Some(labels), ..Default::default() };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(name),
            // Created meanwhile by another runner of this installation.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => Ok(name),
            Err(source) => Err(Error::Engine { action: "creating the app's network", source }),
        }
    }

    /// The app's containers with the deployment each belongs to (`None`: not a readable label).
    async fn app_containers(&self, release: &Release) -> Result<Vec<AppContainer>, Error> {
        let labels = vec![
            format!("{LABEL_INSTALLATION}={}", self.config.installation),
            format!("{LABEL_APP}={}", release.app),
            format!("{LABEL_ENV}={}", release.environment),
        ];
        self.containers(labels).await
    }

    /// This installation's app containers carrying every label of `labels`.
    async fn containers(&self, labels: Vec<String>) -> Result<Vec<AppContainer>, Error> {
        let filters = HashMap::from([("label".to_string(), labels)]);
        let listed = self
            .docker
            .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
            .await
            .map_err(|source| Error::Engine { action: "listing the app's containers", source })?;
        Ok(listed
            .into_iter()
            .filter_map(|c| {
                let label = |key: &str| c.labels.as_ref().and_then(|l| l.get(key)).cloned();
                let deployment = label(LABEL_DEPLOYMENT).and_then(|d| d.parse().ok());
                let hosts = label(LABEL_HOSTS)
                    .map(|h| h.split(',').filter(|h| !h.is_empty()).map(str::to_string).collect())
                    .unwrap_or_default();
                let host_port = c.ports.iter().flatten().find_map(|p| p.public_port);
                let running = c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
                let image = c.image.clone().unwrap_or_default();
                let (app, environment) = (label(LABEL_APP), label(LABEL_ENV));
                let fingerprint = label(LABEL_FINGERPRINT);
                let name = c.names?.into_iter().next()?.trim_start_matches('/').to_string();
                Some(AppContainer { name, app, environment, deployment, running, host_port, hosts, image, fingerprint })
            })
            .collect())
    }

    async fn start(&self, release: &Release, name: &str) -> Result<u16, Error> {
        let engine = |action| move |source| Error::Engine { action, source };
        // Deployment ids are UUIDv7, ordered by creation: a larger one is a newer deployment.
        let others = self.app_containers(release).await?;
        if let Some(newer) = others.iter().find(|c| c.deployment.is_some_and(|d| d > release.deployment_id)) {
            return Err(Error::Stale { newer: newer.name.clone() });
        }
        if others.iter().any(|c| c.name == name) {
            // Only a crash of this very attempt leaves its container behind: replace it.
            self.remove(name).await;
        }
        let port_key = format!("{}/tcp", release.port);
        let network = self.network(release).await?;
        let labels = HashMap::from([
            (LABEL_INSTALLATION.to_string(), self.config.installation.clone()),
            (LABEL_APP.to_string(), release.app.clone()),
            (LABEL_ENV.to_string(), release.environment.clone()),
            (LABEL_DEPLOYMENT.to_string(), release.deployment_id.to_string()),
            (LABEL_ATTEMPT.to_string(), release.attempt.to_string()),
            (LABEL_HOSTS.to_string(), release.hosts.join(",")),
            (LABEL_SECRETS.to_string(), release.secrets.join(",")),
            (LABEL_FINGERPRINT.to_string(), release.fingerprint()),
        ]);
        let limits = release.limits.unwrap_or(self.config.limits);
        let body = ContainerCreateBody {
            image: Some(release.image.clone()),
            // The app's port as `$PORT` (as on Kubernetes), over an image's own `ENV PORT`, so a
            // generated plan that listens on `$PORT` serves where the health check and the edge
            // look; a `PORT` among the app's own variables, later, wins.
            env: Some(
                std::iter::once(format!("PORT={}", release.port))
                    .chain(release.env.iter().map(|(k, v)| format!("{k}={v}")))
                    .collect(),
            ),
            exposed_ports: Some(vec![port_key.clone()]),
            labels: Some(labels),
            host_config: Some(HostConfig {
                port_bindings: Some(HashMap::from([(
                    port_key.clone(),
                    Some(vec![PortBinding {
                        host_ip: Some(self.config.publish_address.clone()),
                        host_port: Some(String::new()),
                    }]),
                )])),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                memory: Some(limits.memory_bytes),
                memory_swap: Some(limits.memory_bytes),
                nano_cpus: Some(limits.nano_cpus),
                pids_limit: Some(limits.pids),
                security_opt: Some(vec!["no-new-privileges".into()]),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(KEPT_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
                privileged: Some(false),
                // Its own network: apps cannot reach each other's containers.
                network_mode: Some(network),
                // An init as PID 1 forwards SIGTERM (so the old version stops at once) and reaps zombies.
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.docker
            .create_container(Some(CreateContainerOptionsBuilder::default().name(name).build()), body)
            .await
            .map_err(engine("creating the container"))?;
        self.docker.start_container(name, None).await.map_err(engine("starting the container"))?;
        let info = self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(engine("inspecting the container"))?;
        let host_port = info
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|p| p.get(&port_key).cloned().flatten())
            .and_then(|b| b.into_iter().find_map(|b| b.host_port))
            .and_then(|p| p.parse::<u16>().ok());
        match host_port {
            Some(port) => Ok(port),
            None => Err(Error::Unhealthy {
                reason: format!("the container exposes no port {} (did it exit at once?)", release.port),
                last_output: self.last_output(name).await,
            }),
        }
    }

    /// Polls the health URL until it answers 2xx or 3xx, the container exits, or time runs out.
    async fn wait_healthy(&self, name: &str, url: &str, log: LogFn<'_>) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.config.health_timeout;
        let mut logged_at = tokio::time::Instant::now();
        loop {
            let last = match self.http.get(url).send().await {
                Ok(resp) if resp.status().is_success() || resp.status().is_redirection() => {
                    return Ok(());
                }
                Ok(resp) => format!("health check answered {}", resp.status()),
                Err(err) => format!("health check failed: {}", error_chain(&err)),
            };
            if let Ok(info) = self.docker.inspect_container(name, None::<InspectContainerOptions>).await {
                let state = info.state.unwrap_or_default();
                if state.running == Some(false) || state.restarting == Some(true) {
                    return Err(format!("the container stopped (exit code {})", state.exit_code.unwrap_or_default()));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "no healthy answer from {url} within {:?}; last: {last}",
                    self.config.health_timeout
                ));
            }
            if logged_at.elapsed() >= Duration::from_secs(5) {
                log(format!("waiting for {url}: {last}"));
                logged_at = tokio::time::Instant::now();
            }
            // Often at first, so a version that is up at once is routed at once.
            let pause = if deadline - tokio::time::Instant::now()
                > self.config.health_timeout.saturating_sub(Duration::from_secs(2))
            {
                Duration::from_millis(25)
            } else {
                Duration::from_millis(300)
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// The last lines the container printed.
    async fn last_output(&self, name: &str) -> Vec<String> {
        let opts = LogsOptionsBuilder::default().stdout(true).stderr(true).tail("50").build();
        let mut stream = self.docker.logs(name, Some(opts));
        let mut lines = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            lines.extend(chunk.into_bytes().split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(escape_bytes));
        }
        lines
    }

    /// Shows why the new container failed and what it printed, removes it, and says so.
    async fn give_up(&self, name: &str, reason: String, last_output: Vec<String>, log: LogFn<'_>) -> Error {
        log(format!("{reason}; last output of the new container:"));
        // Unadorned, so a secret the app split over two lines is still seen whole by the masking.
        for line in &last_output {
            log(line.clone());
        }
        self.remove(name).await;
        log("removed the new container; the previous version keeps serving".into());
        Error::Unhealthy { reason, last_output }
    }

    async fn remove(&self, name: &str) {
        let removed = self
            .docker
            .remove_container(name, Some(RemoveContainerOptionsBuilder::default().force(true).build()))
            .await;
        match removed {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(err) => tracing::warn!(error = %err, container = name, "could not remove a container"),
        }
    }

    /// Stops the app's containers of older deployments (and of earlier attempts of this one) and
    /// removes them, except the newest older deployment's, which is kept stopped so a rollback
    /// to it only has to start it again. Never touches `keep`, a newer deployment's container, or
    /// one whose deployment is unreadable.
    async fn retire_others(&self, release: &Release, keep: &str, log: LogFn<'_>) -> Result<(), Error> {
        let older: Vec<AppContainer> = self
            .app_containers(release)
            .await?
            .into_iter()
            .filter(|c| c.name != keep && c.deployment.is_some_and(|d| d <= release.deployment_id))
            .collect();
        let warm = older
            .iter()
            .filter(|c| c.deployment.is_some_and(|d| d < release.deployment_id))
            .max_by_key(|c| c.deployment)
            .map(|c| c.name.clone());
        for AppContainer { name, running, .. } in older {
            if running {
                let stop = StopContainerOptionsBuilder::default().t(10).build();
                if let Err(err) = self.docker.stop_container(&name, Some(stop)).await {
                    log(format!("stopping {name} failed ({err}); removing it"));
                    self.remove(&name).await;
                    continue;
                }
            }
            if warm.as_deref() == Some(name.as_str()) {
                log(format!("stopped previous container {name}; kept for an instant rollback"));
            } else {
                log(format!("retiring previous container {name}"));
                self.remove(&name).await;
            }
        }
        Ok(())
    }

    /// For a rollback: the app's stopped container of exactly this version (image and settings,
    /// [`Release::fingerprint`]), started again. Returns its name and published port, or `None`
    /// when there is none (or it will not start).
    async fn restart_kept(&self, release: &Release, log: LogFn<'_>) -> Option<(String, u16)> {
        let containers = self.app_containers(release).await.ok()?;
        let fingerprint = release.fingerprint();
        let kept = containers.into_iter().find(|c| {
            !c.running && c.image == release.image && c.fingerprint.as_deref() == Some(fingerprint.as_str())
        })?;
        if let Err(err) = self.docker.start_container(&kept.name, None).await {
            log(format!("could not start the kept container {} ({err}); starting a new one", kept.name));
            return None;
        }
        let port_key = format!("{}/tcp", release.port);
        let info = self.docker.inspect_container(&kept.name, None::<InspectContainerOptions>).await.ok()?;
        let port = info
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|p| p.get(&port_key).cloned().flatten())
            .and_then(|b| b.into_iter().find_map(|b| b.host_port))
            .and_then(|p| p.parse::<u16>().ok())?;
        log(format!("started the kept container {} of this version again", kept.name));
        Some((kept.name, port))
    }
}

impl DockerTarget {
    /// Routes the app to the healthy new container `name` at `dial` (holding the previous
    /// versions in the same change, so their request counts stay visible), then lets them finish
    /// their in-flight requests (at most the drain timeout) before they stop. An error is
    /// returned only before the route changed; once the new version serves, nothing undoes that
    /// (a previous version that cannot be retired now is retired by the next deploy).
    async fn switch(
        &self,
        edge: &Edge,
        release: &Release,
        name: &str,
        dial: &str,
        log: LogFn<'_>,
        began: std::time::Instant,
    ) -> Result<(), Error> {
        let (app, env) = (&release.app, &release.environment);
        let old: Vec<String> = self
            .app_containers(release)
            .await?
            .into_iter()
            .filter(|c| c.name != name && c.running && c.deployment.is_some_and(|d| d <= release.deployment_id))
            .filter_map(|c| c.host_port.map(|p| format!("{}:{p}", self.config.publish_address)))
            .collect();
        let started = std::time::Instant::now();
        edge.route(app, env, &release.hosts, dial, &old).await?;
        log(format!(
            "routed {} to the new version in {} ms ({} ms after the deploy step began)",
            edge.url(app, env),
            started.elapsed().as_millis(),
            began.elapsed().as_millis()
        ));
        if !old.is_empty() {
            let timeout = release.drain.unwrap_or(self.config.drain);
            let started = std::time::Instant::now();
            match edge.wait_drained(&old, timeout).await {
                Ok(0) => log(format!("previous version drained in {} ms", started.elapsed().as_millis())),
                Ok(left) => log(format!("drain timeout ({timeout:?}) passed with {left} requests still in flight")),
                Err(err) => log(format!("could not watch the previous version's requests ({err}); stopping it")),
            }
        }
        if let Err(err) = self.retire_others(release, name, log).await {
            log(format!("could not retire the previous version ({err}); the next deploy retires it"));
        }
        Ok(())
    }

    /// Rebuilds this installation's routes from its running app containers when the edge lost
    /// them (Caddy restarted with an empty config): each app goes to its newest running
    /// container. Returns how many routes were written (0 when the edge had them).
    pub async fn reconcile_edge(&self) -> Result<usize, Error> {
        let Some(edge) = &self.edge else { return Ok(0) };
        if edge.has_server().await? {
            return Ok(0);
        }
        edge.ensure_server().await?;
        let mut newest: HashMap<(String, String), AppContainer> = HashMap::new();
        let labels = vec![format!("{LABEL_INSTALLATION}={}", self.config.installation), LABEL_APP.to_string()];
        for c in self.containers(labels).await?.into_iter().filter(|c| c.running && c.host_port.is_some()) {
            let (Some(app), Some(env)) = (c.app.clone(), c.environment.clone()) else { continue };
            match newest.get(&(app.clone(), env.clone())) {
                Some(best) if best.deployment >= c.deployment => {}
                _ => {
                    newest.insert((app, env), c);
                }
            }
        }
        for ((app, env), c) in &newest {
            let dial = format!("{}:{}", self.config.publish_address, c.host_port.unwrap_or_default());
            edge.route(app, env, &c.hosts, &dial, &[]).await?;
        }
        Ok(newest.len())
    }
}

impl DeployTarget for DockerTarget {
    async fn deploy(&self, release: &Release, log: LogFn<'_>) -> Result<Live, Error> {
        let began = std::time::Instant::now();
        let kept = match release.rollback {
            true => self.restart_kept(release, log).await,
            false => None,
        };
        let (name, host_port) = match kept {
            Some(kept) => kept,
            None => {
                let name = Self::container_name(release);
                log(format!("starting container {name} from {}", release.image));
                match self.start(release, &name).await {
                    Ok(port) => (name, port),
                    Err(Error::Unhealthy { reason, last_output }) => {
                        return Err(self.give_up(&name, reason, last_output, log).await);
                    }
                    Err(err) => {
                        self.remove(&name).await;
                        return Err(err);
                    }
                }
            }
        };
        let base = format!("http://{}:{host_port}", self.config.publish_address);
        let health_url = format!("{base}{}", release.health_path);
        log(format!("waiting for {health_url} to answer"));
        if let Err(reason) = self.wait_healthy(&name, &health_url, log).await {
            let last_output = self.last_output(&name).await;
            return Err(self.give_up(&name, reason, last_output, log).await);
        }
        log(format!("healthy: {health_url}"));
        let Some(edge) = &self.edge else {
            self.retire_others(release, &name, log).await?;
            return Ok(Live { url: Some(base) });
        };
        let dial = format!("{}:{host_port}", self.config.publish_address);
        if let Err(err) = self.switch(edge, release, &name, &dial, log, began).await {
            log(format!("could not route the new version: {err}"));
            self.remove(&name).await;
            log("removed the new container; the previous version keeps serving".into());
            return Err(err);
        }
        Ok(Live { url: Some(edge.url(&release.app, &release.environment)) })
    }

    async fn teardown(&self, release: &Release, log: LogFn<'_>) -> Result<(), Error> {
        if let Some(edge) = &self.edge {
            match edge.remove_route(&release.app, &release.environment).await? {
                true => log(format!("removed the route of {}", edge.url(&release.app, &release.environment))),
                false => log("no route on the edge".into()),
            }
        }
        let containers: Vec<AppContainer> = self
            .app_containers(release)
            .await?
            .into_iter()
            .filter(|c| c.deployment.is_some_and(|d| d <= release.deployment_id))
            .collect();
        let mut images: Vec<String> = Vec::new();
        for c in &containers {
            log(format!("removing container {}", c.name));
            self.remove(&c.name).await;
            if !images.contains(&c.image) {
                images.push(c.image.clone());
            }
        }
        let left = self.app_containers(release).await?;
        if left.is_empty() {
            let network = format!("slipway-{}-{}-{}", self.config.installation, release.app, release.environment);
            match self.docker.remove_network(&network).await {
                Ok(()) => log(format!("removed network {network}")),
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
                Err(err) => log(format!("could not remove network {network}: {err}")),
            }
        }
        // An image another container still uses (the app's own environment at the same commit)
        // is refused by the engine without `force`, and so kept.
        for image in images {
            let options = bollard::query_parameters::RemoveImageOptionsBuilder::default().noprune(false).build();
            match self.docker.remove_image(&image, Some(options), None).await {
                Ok(_) => log(format!("removed image {image} from this engine")),
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => {
                    log(format!("kept image {image}: another container uses it"))
                }
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
                Err(err) => log(format!("could not remove image {image}: {err}")),
            }
        }
        log(format!("{} container(s) of {} {} removed", containers.len(), release.app, release.environment));
        Ok(())
    }
}

/// `err` and its sources, joined.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
