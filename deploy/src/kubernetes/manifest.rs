//! The typed Kubernetes objects of one app revision (k8s-openapi, API pinned to v1.33): a
//! namespace with quota and limits, config and secrets, the Deployment, Service, Ingress,
//! autoscaler and network policy — and their YAML for `slipway manifests`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar, HTTPGetAction,
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceQuota, ResourceQuotaSpec, ResourceRequirements, SeccompProfile, Secret, SecretEnvSource, SecurityContext,
    Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use super::spec::{KubeSpec, SpecError, StrategyKind};

/// The label every object of an app carries; pruning selects by it.
pub const LABEL_APP: &str = "slipway.dev/app";
/// The label of the Deployment track (`stable`, `blue`, `green`, `canary`).
pub const LABEL_TRACK: &str = "slipway.dev/track";
/// Pod template annotation that changes whenever config or secrets change.
pub const CONFIG_HASH: &str = "slipway.dev/config-hash";

/// Which revision is rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub deployment_id: String,
    pub sha: String,
    pub image: String,
}

/// Every object of one revision.
#[derive(Debug, Clone)]
pub struct Manifests {
    pub namespace: Namespace,
    pub quota: ResourceQuota,
    pub limits: LimitRange,
    pub config: ConfigMap,
    pub secret: Option<Secret>,
    pub deployment: Deployment,
    pub service: Service,
    pub ingress: Option<Ingress>,
    pub autoscaler: Option<HorizontalPodAutoscaler>,
    pub network_policy: NetworkPolicy,
}

/// Renders the objects of `revision`; `track` names the Deployment variant (`None` for the
/// single Deployment of the rolling and recreate strategies).
pub fn render(spec: &KubeSpec, revision: &Revision, track: Option<&str>) -> Result<Manifests, SpecError> {
    spec.validate()?;
    let ns = spec.namespace();
    let labels = common_labels(spec, revision);
    let meta = |name: String| ObjectMeta {
        name: Some(name),
        namespace: Some(ns.clone()),
        labels: Some(labels.clone()),
        ..Default::default()
    };
    let quantity = |q: &str| Quantity(q.to_string());
    let namespace = Namespace {
        metadata: ObjectMeta { name: Some(ns.clone()), labels: Some(labels.clone()), ..Default::default() },
        ..Default::default()
    };
    let quota = ResourceQuota {
        metadata: meta(format!("{}-quota", spec.name)),
        spec: Some(ResourceQuotaSpec {
            hard: Some(BTreeMap::from([
                ("limits.cpu".to_string(), quantity(&spec.quota_cpu)),
                ("limits.memory".to_string(), quantity(&spec.quota_memory)),
                ("pods".to_string(), quantity(&spec.quota_pods)),
            ])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let limits = LimitRange {
        metadata: meta(format!("{}-limits", spec.name)),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default: Some(resources(&spec.cpu_limit, &spec.memory_limit)),
                default_request: Some(resources(&spec.cpu_request, &spec.memory_request)),
                ..Default::default()
            }],
        }),
    };
    let config = ConfigMap {
        metadata: meta(format!("{}-config", spec.name)),
        data: Some(spec.env.clone()),
        ..Default::default()
    };
    let secret = (!spec.secret_env.is_empty()).then(|| Secret {
        metadata: meta(format!("{}-secrets", spec.name)),
        string_data: Some(spec.secret_env.clone()),
        type_: Some("Opaque".into()),
        ..Default::default()
    });
    let deployment = deployment(spec, revision, track, &labels)?;
    let service = Service {
        metadata: meta(spec.name.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(service_selector(spec, track)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ingress = spec.host.as_ref().map(|host| Ingress {
        metadata: meta(spec.name.clone()),
        spec: Some(IngressSpec {
            ingress_class_name: Some(spec.ingress_class.clone()),
            tls: spec
                .tls_secret
                .as_ref()
                .map(|secret| vec![IngressTLS { hosts: Some(vec![host.clone()]), secret_name: Some(secret.clone()) }]),
            rules: Some(vec![IngressRule {
                host: Some(host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: spec.name.clone(),
                                port: Some(ServiceBackendPort { name: Some("http".into()), ..Default::default() }),
                            }),
                            ..Default::default()
                        },
                    }],
                }),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });
    let autoscaler = match (spec.min_replicas, spec.max_replicas) {
        (Some(min), Some(max)) => Some(HorizontalPodAutoscaler {
            metadata: meta(spec.name.clone()),
            spec: Some(HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: "Deployment".into(),
                    name: deployment_name(spec, track),
                },
                min_replicas: Some(min),
                max_replicas: max,
                metrics: Some(vec![MetricSpec {
                    type_: "Resource".into(),
                    resource: Some(ResourceMetricSource {
                        name: "cpu".into(),
                        target: MetricTarget {
                            type_: "Utilization".into(),
                            average_utilization: Some(spec.target_cpu_percent),
                            ..Default::default()
                        },
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        _ => None,
    };
    let network_policy = NetworkPolicy {
        metadata: meta(spec.name.clone()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(app_selector(spec)), ..Default::default() }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![
                    NetworkPolicyPeer {
                        namespace_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(
                                "kubernetes.io/metadata.name".to_string(),
                                spec.ingress_namespace.clone(),
                            )])),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    NetworkPolicyPeer { pod_selector: Some(LabelSelector::default()), ..Default::default() },
                ]),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    };
    Ok(Manifests { namespace, quota, limits, config, secret, deployment, service, ingress, autoscaler, network_policy })
}

/// The Deployment's name for a track.
pub fn deployment_name(spec: &KubeSpec, track: Option<&str>) -> String {
    match track {
        Some(t) => format!("{}-{t}", spec.name),
        None => spec.name.clone(),
    }
}

/// Labels that select the app's pods of every track.
pub fn app_selector(spec: &KubeSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), spec.name.clone()),
        ("app.kubernetes.io/instance".to_string(), format!("{}-{}", spec.name, spec.environment)),
    ])
}

/// The Service selects one track for blue-green, every track otherwise (canary splits by replicas).
fn service_selector(spec: &KubeSpec, track: Option<&str>) -> BTreeMap<String, String> {
    let mut selector = app_selector(spec);
    if let (StrategyKind::BlueGreen, Some(t)) = (spec.strategy, track) {
        selector.insert(LABEL_TRACK.into(), t.into());
    }
    selector
}

fn common_labels(spec: &KubeSpec, revision: &Revision) -> BTreeMap<String, String> {
    let mut labels = app_selector(spec);
    labels.insert("app.kubernetes.io/version".into(), revision.sha.chars().take(12).collect());
    labels.insert("app.kubernetes.io/managed-by".into(), "slipway".into());
    labels.insert("app.kubernetes.io/part-of".into(), spec.name.clone());
    labels.insert(LABEL_APP.into(), spec.name.clone());
    labels.insert("slipway.dev/deployment".into(), revision.deployment_id.clone());
    labels.insert("slipway.dev/commit".into(), revision.sha.clone());
    labels
}

fn resources(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    BTreeMap::from([("cpu".to_string(), Quantity(cpu.into())), ("memory".to_string(), Quantity(memory.into()))])
}

/// A hash of everything the pods read from config and secrets, so a change rolls them.
pub fn config_hash(spec: &KubeSpec) -> String {
    let mut h = Sha256::new();
    for (k, v) in &spec.env {
        h.update(format!("env:{k}={v}\n"));
    }
    for (k, v) in &spec.secret_env {
        h.update(format!("secret:{k}={v}\n"));
    }
    hex::encode(h.finalize())[..16].to_string()
}

fn deployment(
    spec: &KubeSpec,
    revision: &Revision,
    track: Option<&str>,
    labels: &BTreeMap<String, String>,
) -> Result<Deployment, SpecError> {
    let track_name = track.unwrap_or("stable").to_string();
    let mut selector = app_selector(spec);
    selector.insert(LABEL_TRACK.into(), track_name.clone());
    let mut pod_labels = labels.clone();
    pod_labels.insert(LABEL_TRACK.into(), track_name);
    let port = i32::try_from(spec.port).map_err(|_| SpecError { field: "port", message: "out of range".into() })?;
    let probe = |failure_threshold: i32, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(spec.health_path.clone()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Default::default()
    };
    let mut env_from = vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource { name: format!("{}-config", spec.name), ..Default::default() }),
        ..Default::default()
    }];
    if !spec.secret_env.is_empty() {
        env_from.push(EnvFromSource {
            secret_ref: Some(SecretEnvSource { name: format!("{}-secrets", spec.name), ..Default::default() }),
            ..Default::default()
        });
    }
    let container = Container {
        name: "app".into(),
        image: Some(revision.image.clone()),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: Some(vec![EnvVar { name: "PORT".into(), value: Some(spec.port.to_string()), ..Default::default() }]),
        env_from: Some(env_from),
        resources: Some(ResourceRequirements {
            requests: Some(resources(&spec.cpu_request, &spec.memory_request)),
            limits: Some(resources(&spec.cpu_limit, &spec.memory_limit)),
            ..Default::default()
        }),
        readiness_probe: Some(probe(3, 5)),
        liveness_probe: Some(probe(3, 10)),
        startup_probe: Some(probe(30, 2)),
        security_context: Some(container_security()),
        ..Default::default()
    };
    let strategy = match spec.strategy {
        StrategyKind::Recreate => DeploymentStrategy { type_: Some("Recreate".into()), ..Default::default() },
        _ => DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::String("25%".into())),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        },
    };
    let autoscaled = spec.min_replicas.is_some() && spec.max_replicas.is_some();
    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(spec, track)),
            namespace: Some(spec.namespace()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            // With an autoscaler the replica count is its to set; applying one would fight it.
            replicas: (!autoscaled).then_some(spec.replicas),
            selector: LabelSelector { match_labels: Some(selector), ..Default::default() },
            strategy: Some(strategy),
            progress_deadline_seconds: Some(spec.progress_deadline_seconds),
            revision_history_limit: Some(10),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(CONFIG_HASH.to_string(), config_hash(spec))])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security()),
                    termination_grace_period_seconds: Some(30),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The app container's security context: no privilege escalation, no capabilities, not root.
fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        ..Default::default()
    }
}

/// The app pod's security context (a fixed non-root user, the runtime's seccomp profile).
fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(10001),
        run_as_group: Some(10001),
        fs_group: Some(10001),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

/// Which one-off command of a release a Job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Release,
    PreDeploy,
    PostDeploy,
}

impl Hook {
    /// The hook's name in object names and the `slipway.dev/hook` label.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Release => "release",
            Hook::PreDeploy => "pre",
            Hook::PostDeploy => "post",
        }
    }
}

/// The label naming the hook a Job runs.
pub const LABEL_HOOK: &str = "slipway.dev/hook";

/// A one-off command of a release as a Job, with the Secret holding the release's secret
/// variables for it.
#[derive(Debug, Clone)]
pub struct OneOffJob {
    pub job: Job,
    pub secret: Option<Secret>,
}

/// The Job that runs `argv` once in the release's image: the app's container settings (image,
/// limits, security context) with the release's own variables — plain ones inline, secret ones
/// from a Secret of the Job's own — so a release command sees the configuration it is released
/// with, not what the app's ConfigMap held before. No retries (`backoffLimit: 0`,
/// `restartPolicy: Never`: a migration runs at most once), a deadline, and labels that do not
/// match the app's Service, so no traffic ever reaches it. Named by deployment and attempt.
pub fn one_off_job(
    spec: &KubeSpec,
    revision: &Revision,
    attempt: u32,
    hook: Hook,
    argv: &[String],
    deadline_seconds: i64,
) -> Result<OneOffJob, SpecError> {
    spec.validate()?;
    if argv.is_empty() {
        return Err(SpecError { field: "command", message: "the command is empty".into() });
    }
    let short: String = revision.deployment_id.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    let name = format!("{}-{}-{}-{attempt}", spec.name, hook.name(), short.to_ascii_lowercase());
    let mut labels = BTreeMap::from([
        (LABEL_APP.to_string(), spec.name.clone()),
        (LABEL_HOOK.to_string(), hook.name().to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "slipway".to_string()),
        ("slipway.dev/deployment".to_string(), revision.deployment_id.clone()),
    ]);
    labels.insert("slipway.dev/commit".into(), revision.sha.clone());
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(spec.namespace()),
        labels: Some(labels.clone()),
        ..Default::default()
    };
    let mut env = vec![EnvVar { name: "PORT".into(), value: Some(spec.port.to_string()), ..Default::default() }];
    env.extend(spec.env.iter().map(|(k, v)| EnvVar { name: k.clone(), value: Some(v.clone()), ..Default::default() }));
    let secret = (!spec.secret_env.is_empty()).then(|| Secret {
        metadata: meta.clone(),
        string_data: Some(spec.secret_env.clone()),
        type_: Some("Opaque".into()),
        ..Default::default()
    });
    let env_from = secret.as_ref().map(|_| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource { name: name.clone(), ..Default::default() }),
            ..Default::default()
        }]
    });
    let container = Container {
        name: "run".into(),
        image: Some(revision.image.clone()),
        args: Some(argv.to_vec()),
        env: Some(env),
        env_from,
        resources: Some(ResourceRequirements {
            requests: Some(resources(&spec.cpu_request, &spec.memory_request)),
            limits: Some(resources(&spec.cpu_limit, &spec.memory_limit)),
            ..Default::default()
        }),
        security_context: Some(container_security()),
        ..Default::default()
    };
    let job = Job {
        metadata: meta,
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(deadline_seconds),
            ttl_seconds_after_finished: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security()),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(OneOffJob { job, secret })
}

impl OneOffJob {
    /// The Job's name.
    pub fn name(&self) -> String {
        self.job.metadata.name.clone().unwrap_or_default()
    }

    /// The Secret (if any) then the Job, as JSON values in apply order.
    pub fn objects(&self) -> Vec<serde_json::Value> {
        let secret = self.secret.as_ref().and_then(|s| serde_json::to_value(s).ok());
        secret.into_iter().chain(serde_json::to_value(&self.job).ok()).collect()
    }
}

impl Manifests {
    /// Every object as a JSON value, in apply order.
    pub fn objects(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut push = |v: Result<serde_json::Value, serde_json::Error>| {
            if let Ok(v) = v {
                out.push(v);
            }
        };
        push(serde_json::to_value(&self.namespace));
        push(serde_json::to_value(&self.quota));
        push(serde_json::to_value(&self.limits));
        push(serde_json::to_value(&self.config));
        if let Some(s) = &self.secret {
            push(serde_json::to_value(s));
        }
        push(serde_json::to_value(&self.deployment));
        push(serde_json::to_value(&self.service));
        if let Some(i) = &self.ingress {
            push(serde_json::to_value(i));
        }
        if let Some(h) = &self.autoscaler {
            push(serde_json::to_value(h));
        }
        push(serde_json::to_value(&self.network_policy));
        out
    }

    /// A multi-document YAML stream; secret values are shown only when `show_secrets`.
    pub fn to_yaml(&self, show_secrets: bool) -> String {
        let mut docs = Vec::new();
        for mut object in self.objects() {
            if !show_secrets
                && object["kind"] == "Secret"
                && let Some(data) = object.get_mut("stringData").and_then(|d| d.as_object_mut())
            {
                for v in data.values_mut() {
                    *v = serde_json::Value::String("<redacted: use --show-secrets>".into());
                }
            }
            docs.push(serde_saphyr::to_string(&object).unwrap_or_default());
        }
        docs.iter().map(|d| format!("---\n{d}")).collect()
    }
}
