//! A Kubernetes API-server double for the `kubernetes` target's tests: a real HTTP server that
//! kube's client talks to over the wire, holding objects in memory. It implements what the target
//! uses — server-side apply PATCH (field manager required), JSON merge PATCH, GET, LIST by label
//! selector, watch (`?watch=true`, with field and label selectors), DELETE, pod logs — and a
//! scripted controller that advances Deployment status and pods by the image's name:
//! `...crash...` pods crash-loop, `...stall...` exceeds the progress deadline, `...flaky...`
//! becomes ready then restarts, anything else is ready after `ready_after`. Jobs get one pod that
//! "runs" the container's `sh -c` script: `echo X` writes X to the pod's log (with `$NAME`
//! expanded from the container's `env` and the Secrets and ConfigMaps of its `envFrom`, which must
//! exist), `exit N` ends it with code N; the Job then turns Complete or Failed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// (plural, namespace, name) → object.
type Store = BTreeMap<(String, String, String), Value>;

/// The double's shared state.
#[derive(Default)]
pub struct Inner {
    pub objects: Store,
    pub resource_version: u64,
    /// Kinds whose apply is refused with 422 (to test failed applies).
    pub reject_kinds: Vec<String>,
    /// Every request as "METHOD path?query", for assertions.
    pub requests: Vec<String>,
    /// (namespace, pod) → what the pod wrote, for `pods/{name}/log`.
    pub pod_logs: BTreeMap<(String, String), String>,
    /// Tells watchers that objects of (plural, namespace) changed.
    changes: Option<tokio::sync::broadcast::Sender<(String, String)>>,
}

impl Inner {
    fn changed(&mut self, plural: &str, namespace: &str) {
        self.resource_version += 1;
        if let Some(tx) = &self.changes {
            let _ = tx.send((plural.to_string(), namespace.to_string()));
        }
    }
}

/// A running double; stopped on drop.
pub struct ApiServer {
    pub url: String,
    pub state: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Ctx {
    state: Arc<Mutex<Inner>>,
    ready_after: Duration,
}

impl ApiServer {
    /// Starts the double on a free port of 127.0.0.1.
    pub async fn start(ready_after: Duration) -> Self {
        let (changes, _) = tokio::sync::broadcast::channel(1024);
        let state = Arc::new(Mutex::new(Inner { changes: Some(changes), ..Default::default() }));
        let ctx = Ctx { state: state.clone(), ready_after };
        let app = Router::new().fallback(handle).with_state(ctx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, state, task }
    }

    /// A kube client for the double.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("url"));
        kube::Client::try_from(config).expect("kube client")
    }

    /// An object, if stored.
    pub fn get(&self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        self.lock().objects.get(&(plural.to_string(), ns.to_string(), name.to_string())).cloned()
    }

    /// Makes applies of `kind` fail with 422.
    pub fn reject(&self, kind: &str) {
        self.lock().reject_kinds.push(kind.to_string());
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a request points.
struct Target {
    plural: String,
    namespace: String,
    name: Option<String>,
    group_version: String,
    /// A subresource such as `log`.
    sub: Option<String>,
}

fn parse(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    match rest {
        ["namespaces", name] => Some(Target {
            plural: "namespaces".into(),
            namespace: String::new(),
            name: Some(name.to_string()),
            group_version,
            sub: None,
        }),
        ["namespaces", ns, plural] => {
            Some(Target { plural: plural.to_string(), namespace: ns.to_string(), name: None, group_version, sub: None })
        }
        ["namespaces", ns, plural, name] => Some(Target {
            plural: plural.to_string(),
            namespace: ns.to_string(),
            name: Some(name.to_string()),
            group_version,
            sub: None,
        }),
        ["namespaces", ns, plural, name, sub] => Some(Target {
            plural: plural.to_string(),
            namespace: ns.to_string(),
            name: Some(name.to_string()),
            group_version,
            sub: Some(sub.to_string()),
        }),
        _ => None,
    }
}

fn kind_of(plural: &str) -> &'static str {
    match plural {
        "namespaces" => "Namespace",
        "deployments" => "Deployment",
        "services" => "Service",
        "configmaps" => "ConfigMap",
        "secrets" => "Secret",
        "ingresses" => "Ingress",
        "horizontalpodautoscalers" => "HorizontalPodAutoscaler",
        "networkpolicies" => "NetworkPolicy",
        "resourcequotas" => "ResourceQuota",
        "limitranges" => "LimitRange",
        "pods" => "Pod",
        "jobs" => "Job",
        "events" => "Event",
        _ => "Unknown",
    }
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code});
    (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body)).into_response()
}

async fn handle(
    State(ctx): State<Ctx>,
    method: Method,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    ctx.state.lock().unwrap_or_else(|e| e.into_inner()).requests.push(format!("{method} {uri}"));
    let Some(t) = parse(uri.path()) else { return status(404, "NotFound", format!("no route {}", uri.path())) };
    if let Some(sub) = &t.sub {
        let name = t.name.clone().unwrap_or_default();
        if method != Method::GET || t.plural != "pods" || sub != "log" {
            return status(404, "NotFound", format!("the double has no {method} {}/{sub}", t.plural));
        }
        let st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        return match st.pod_logs.get(&(t.namespace.clone(), name.clone())) {
            Some(text) => ([("content-type", "text/plain")], text.clone()).into_response(),
            None => status(404, "NotFound", format!("pods \"{name}\" not found")),
        };
    }
    match (method, &t.name) {
        (Method::GET, Some(name)) => {
            let st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
            match st.objects.get(&(t.plural.clone(), t.namespace.clone(), name.clone())) {
                Some(o) => axum::Json(o.clone()).into_response(),
                None => status(404, "NotFound", format!("{} \"{name}\" not found", t.plural)),
            }
        }
        (Method::GET, None) if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) => {
            watch(&ctx, t, &query)
        }
        (Method::GET, None) => {
            let st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
            let selector = query.get("labelSelector").cloned().unwrap_or_default();
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|((p, ns, _), o)| {
                    *p == t.plural && *ns == t.namespace && matches(&selector, &o["metadata"]["labels"])
                })
                .map(|(_, o)| o.clone())
                .collect();
            let kind = format!("{}List", kind_of(&t.plural));
            let rv = st.resource_version.to_string();
            axum::Json(json!({"apiVersion": t.group_version, "kind": kind, "metadata": {"resourceVersion": rv}, "items": items})).into_response()
        }
        (Method::PATCH, Some(name)) => patch(&ctx, &t, name, &query, &headers, &body),
        (Method::DELETE, Some(name)) => {
            let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
            let removed = st.objects.remove(&(t.plural.clone(), t.namespace.clone(), name.clone()));
            if t.plural == "deployments" {
                remove_pods(&mut st, &t.namespace, name, None);
                st.changed("pods", &t.namespace);
            }
            if t.plural == "jobs" {
                st.objects.retain(|(p, n, _), o| {
                    !(p == "pods" && *n == t.namespace && o["metadata"]["labels"]["job-name"] == name.as_str())
                });
                st.changed("pods", &t.namespace);
            }
            st.changed(&t.plural, &t.namespace);
            match removed {
                Some(o) => axum::Json(o).into_response(),
                None => status(404, "NotFound", format!("{} \"{name}\" not found", t.plural)),
            }
        }
        (m, _) => status(405, "MethodNotAllowed", format!("{m} is not implemented by the double")),
    }
}

/// A watch: the matching objects as ADDED, then MODIFIED/DELETED as they change, one JSON event
/// per line, until the client goes away or `timeoutSeconds` passes.
fn watch(ctx: &Ctx, t: Target, query: &BTreeMap<String, String>) -> Response {
    let labels = query.get("labelSelector").cloned().unwrap_or_default();
    let name = query.get("fieldSelector").and_then(|f| f.strip_prefix("metadata.name=")).map(str::to_string);
    let timeout = query.get("timeoutSeconds").and_then(|s| s.parse().ok()).unwrap_or(300u64);
    let state = ctx.state.clone();
    let rx = state.lock().unwrap_or_else(|e| e.into_inner()).changes.as_ref().map(|tx| tx.subscribe());
    let Some(rx) = rx else { return status(500, "InternalError", "no change feed".into()) };
    let snapshot = Arc::new(move |state: &Arc<Mutex<Inner>>| -> BTreeMap<String, Value> {
        let st = state.lock().unwrap_or_else(|e| e.into_inner());
        st.objects
            .iter()
            .filter(|((p, ns, n), o)| {
                *p == t.plural
                    && *ns == t.namespace
                    && name.as_ref().is_none_or(|want| want == n)
                    && matches(&labels, &o["metadata"]["labels"])
            })
            .map(|((_, _, n), o)| (n.clone(), o.clone()))
            .collect()
    });
    let line = |kind: &str, object: &Value| Bytes::from(format!("{}\n", json!({"type": kind, "object": object})));
    let first = snapshot(&state);
    let initial: Vec<Result<Bytes, std::convert::Infallible>> = first.values().map(|o| Ok(line("ADDED", o))).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let updates = futures_util::stream::unfold((rx, first, state), move |(mut rx, mut seen, state)| {
        let snapshot = snapshot.clone();
        async move {
            loop {
                let got = tokio::time::timeout_at(deadline, rx.recv()).await;
                match got {
                    Err(_) | Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return None,
                    Ok(_) => {}
                }
                let now = snapshot(&state);
                let mut out = Vec::new();
                for (n, o) in &now {
                    match seen.get(n) {
                        None => out.push(line("ADDED", o)),
                        Some(old)
                            if old["metadata"]["resourceVersion"] != o["metadata"]["resourceVersion"] || old != o =>
                        {
                            out.push(line("MODIFIED", o))
                        }
                        Some(_) => {}
                    }
                }
                for (n, o) in &seen {
                    if !now.contains_key(n) {
                        out.push(line("DELETED", o));
                    }
                }
                seen = now;
                if !out.is_empty() {
                    let chunk: Vec<u8> = out.into_iter().flat_map(|b| b.to_vec()).collect();
                    return Some((Ok::<Bytes, std::convert::Infallible>(Bytes::from(chunk)), (rx, seen, state)));
                }
            }
        }
    });
    let body =
        axum::body::Body::from_stream(futures_util::StreamExt::chain(futures_util::stream::iter(initial), updates));
    ([("content-type", "application/json")], body).into_response()
}

/// Equality-based selectors: `a=b,c=d`.
fn matches(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k.trim()].as_str() == Some(v.trim_start_matches('=').trim()),
        None => !labels[term.trim()].is_null(),
    })
}

fn patch(
    ctx: &Ctx,
    t: &Target,
    name: &str,
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "body is not JSON".into());
    };
    let key = (t.plural.clone(), t.namespace.clone(), name.to_string());
    let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    let existing = st.objects.get(&key).cloned();
    let mut object = if content_type.starts_with("application/apply-patch") {
        let Some(manager) = query.get("fieldManager") else {
            return status(422, "Invalid", "fieldManager is required for apply patch".into());
        };
        let kind = patch["kind"].as_str().unwrap_or_default().to_string();
        if st.reject_kinds.contains(&kind) {
            return status(422, "Invalid", format!("{kind}.{name} is invalid: the double was told to refuse it"));
        }
        let mut object = patch.clone();
        if let Some(old) = &existing {
            // Fields this manager does not declare but others own survive (status, replicas set by scaling).
            object["status"] = old["status"].clone();
            if object["spec"]["replicas"].is_null() && !old["spec"]["replicas"].is_null() && t.plural == "deployments" {
                object["spec"]["replicas"] = old["spec"]["replicas"].clone();
            }
        }
        object["metadata"]["managedFields"] =
            json!([{"manager": manager, "operation": "Apply", "apiVersion": t.group_version}]);
        object
    } else if content_type.starts_with("application/merge-patch") {
        let Some(mut object) = existing.clone() else {
            return status(404, "NotFound", format!("{} \"{name}\" not found", t.plural));
        };
        merge(&mut object, &patch);
        object
    } else {
        return status(415, "UnsupportedMediaType", format!("content type {content_type}"));
    };
    st.resource_version += 1;
    let rv = st.resource_version;
    let generation = match &existing {
        Some(old) if old["spec"] == object["spec"] => old["metadata"]["generation"].as_i64().unwrap_or(1),
        Some(old) => old["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
        None => 1,
    };
    let meta = &mut object["metadata"];
    meta["resourceVersion"] = json!(rv.to_string());
    meta["generation"] = json!(generation);
    meta["uid"] = existing.as_ref().map(|o| o["metadata"]["uid"].clone()).unwrap_or_else(|| json!(format!("uid-{rv}")));
    meta["creationTimestamp"] = json!("2026-11-21T00:00:00Z");
    if t.plural == "deployments" && object["status"].is_null() {
        object["status"] = json!({});
    }
    let changed = existing.as_ref().map(|o| o["metadata"]["generation"].as_i64()) != Some(Some(generation));
    st.objects.insert(key, object.clone());
    st.changed(&t.plural, &t.namespace);
    drop(st);
    if t.plural == "deployments" && changed {
        tokio::spawn(controller(ctx.clone(), t.namespace.clone(), name.to_string(), generation));
    }
    if t.plural == "jobs" && existing.is_none() {
        tokio::spawn(job_controller(ctx.clone(), t.namespace.clone(), name.to_string()));
    }
    (if existing.is_some() { StatusCode::OK } else { StatusCode::CREATED }, axum::Json(object)).into_response()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn remove_pods(st: &mut Inner, ns: &str, deployment: &str, keep_generation: Option<i64>) {
    st.objects.retain(|(p, n, _), o| {
        !(p == "pods"
            && n == ns
            && o["metadata"]["annotations"]["double/deployment"] == deployment
            && keep_generation.is_none_or(|g| o["metadata"]["annotations"]["double/generation"] != g))
    });
}

/// The scripted controller: moves one generation of a Deployment to its scripted outcome.
async fn controller(ctx: Ctx, ns: String, name: String, generation: i64) {
    tokio::time::sleep(ctx.ready_after).await;
    if advance(&ctx, &ns, &name, generation) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        for ((p, n, _), o) in st.objects.iter_mut() {
            if p == "pods" && *n == ns && o["metadata"]["annotations"]["double/deployment"] == name.as_str() {
                o["status"]["containerStatuses"][0]["restartCount"] = json!(1);
            }
        }
    }
}

/// Applies the scripted outcome; true when the pods should restart a moment later (flaky).
fn advance(ctx: &Ctx, ns: &str, name: &str, generation: i64) -> bool {
    let (ns, name) = (ns.to_string(), name.to_string());
    let key = ("deployments".to_string(), ns.clone(), name.clone());
    let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    let Some(d) = st.objects.get(&key).cloned() else { return false };
    if d["metadata"]["generation"].as_i64() != Some(generation) {
        return false; // a newer generation took over
    }
    let desired = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let image = d["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap_or_default().to_string();
    let labels = d["spec"]["template"]["metadata"]["labels"].clone();
    let old_pods = st.objects.keys().filter(|(p, n, _)| p == "pods" && *n == ns).count() as i64;
    let behaviour = if image.contains("crash") {
        "crash"
    } else if image.contains("stall") {
        "stall"
    } else if image.contains("flaky") {
        "flaky"
    } else {
        "healthy"
    };
    let pod = |i: i64, ready: bool, waiting: Option<&str>, restarts: i64| {
        let pod_name = format!("{name}-g{generation}-{i}");
        let state = match waiting {
            Some(reason) => {
                json!({"waiting": {"reason": reason, "message": "back-off 40s restarting failed container=app"}})
            }
            None => json!({"running": {"startedAt": "2026-11-21T00:00:00Z"}}),
        };
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": ns, "labels": labels,
                         "annotations": {"double/deployment": name, "double/generation": generation.to_string()}},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                       "containerStatuses": [{"name": "app", "image": image, "ready": ready, "restartCount": restarts, "state": state}]}
        })
    };
    let mut new_pods = Vec::new();
    match behaviour {
        "healthy" | "flaky" => {
            remove_pods(&mut st, &ns, &name, Some(generation));
            for i in 0..desired {
                new_pods.push(pod(i, true, None, 0));
            }
            if let Some(d) = st.objects.get_mut(&key) {
                d["status"] = json!({"observedGeneration": generation, "replicas": desired, "updatedReplicas": desired,
                    "readyReplicas": desired, "availableReplicas": desired,
                    "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
                                   {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]});
            }
        }
        "crash" => {
            for i in 0..desired.max(1) {
                new_pods.push(pod(i, false, Some("CrashLoopBackOff"), 3));
            }
            let event = json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": format!("{name}-g{generation}-0.backoff"), "namespace": ns},
                "involvedObject": {"kind": "Pod", "name": format!("{name}-g{generation}-0"), "namespace": ns},
                "reason": "BackOff", "message": "Back-off restarting failed container app", "type": "Warning",
                "lastTimestamp": "2026-11-21T00:00:01Z"});
            st.objects.insert(("events".into(), ns.clone(), format!("{name}-g{generation}-0.backoff")), event);
            if let Some(d) = st.objects.get_mut(&key) {
                d["status"] = json!({"observedGeneration": generation, "replicas": old_pods + desired, "updatedReplicas": desired,
                    "availableReplicas": old_pods, "unavailableReplicas": desired});
            }
        }
        _ => {
            if let Some(d) = st.objects.get_mut(&key) {
                d["status"] = json!({"observedGeneration": generation, "replicas": old_pods, "updatedReplicas": 0, "availableReplicas": old_pods,
                    "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                    "message": format!("ReplicaSet \"{name}\" has timed out progressing.")}]});
            }
        }
    }
    for p in new_pods {
        let pod_name = p["metadata"]["name"].as_str().unwrap_or_default().to_string();
        st.objects.insert(("pods".into(), ns.clone(), pod_name), p);
    }
    let rv = (st.resource_version + 1).to_string();
    if let Some(d) = st.objects.get_mut(&key) {
        d["metadata"]["resourceVersion"] = json!(rv);
    }
    st.changed("deployments", &ns);
    st.changed("pods", &ns);
    behaviour == "flaky"
}

/// The Job controller: one pod that runs the container's script (see the module's doc), then the
/// Job's condition.
async fn job_controller(ctx: Ctx, ns: String, name: String) {
    tokio::time::sleep(ctx.ready_after).await;
    let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    let Some(job) = st.objects.get(&("jobs".to_string(), ns.clone(), name.clone())).cloned() else { return };
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    let mut env = BTreeMap::new();
    let mut missing = Vec::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let (plural, from, field) = match (&source["secretRef"]["name"], &source["configMapRef"]["name"]) {
            (Value::String(n), _) => ("secrets", n.clone(), "stringData"),
            (_, Value::String(n)) => ("configmaps", n.clone(), "data"),
            _ => continue,
        };
        match st.objects.get(&(plural.to_string(), ns.clone(), from.clone())) {
            Some(o) => {
                for (k, v) in o[field].as_object().into_iter().flatten() {
                    env.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                }
            }
            None => missing.push(format!("{plural}/{from}")),
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let value = var["value"].as_str().unwrap_or_default().to_string();
        env.insert(var["name"].as_str().unwrap_or_default().to_string(), value);
    }
    let argv: Vec<String> = container["args"]
        .as_array()
        .or(container["command"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    let script = match argv.as_slice() {
        [sh, c, script, ..] if sh.ends_with("sh") && c == "-c" => script.clone(),
        _ => argv.join(" "),
    };
    let (log, exit_code) = if missing.is_empty() { run_script(&script, &env) } else { (String::new(), 128) };
    let pod_name = format!("{name}-x7k2p");
    let mut labels = job["spec"]["template"]["metadata"]["labels"].clone();
    labels["job-name"] = json!(name);
    labels["batch.kubernetes.io/job-name"] = json!(name);
    let phase = if exit_code == 0 { "Succeeded" } else { "Failed" };
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": ns, "labels": labels},
        "status": {"phase": phase, "containerStatuses": [{"name": "run", "image": container["image"], "ready": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": exit_code, "reason": if exit_code == 0 { "Completed" } else { "Error" }}}}]}
    });
    st.objects.insert(("pods".into(), ns.clone(), pod_name.clone()), pod);
    st.pod_logs.insert((ns.clone(), pod_name), log);
    let condition = if exit_code == 0 {
        json!({"type": "Complete", "status": "True"})
    } else if missing.is_empty() {
        json!({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"})
    } else {
        json!({"type": "Failed", "status": "True", "reason": "CreateContainerConfigError", "message": format!("{} not found", missing.join(", "))})
    };
    let counts = if exit_code == 0 { json!({"succeeded": 1}) } else { json!({"failed": 1}) };
    let rv = (st.resource_version + 1).to_string();
    if let Some(j) = st.objects.get_mut(&("jobs".to_string(), ns.clone(), name.clone())) {
        let mut status = counts;
        status["conditions"] = json!([condition]);
        j["status"] = status;
        j["metadata"]["resourceVersion"] = json!(rv);
    }
    st.changed("pods", &ns);
    st.changed("jobs", &ns);
}

/// Runs the double's shell: `echo X` (with `$NAME` expanded from `env`), `exit N`, separated by
/// `;` or `&&`. Returns the output and the exit code.
fn run_script(script: &str, env: &BTreeMap<String, String>) -> (String, i64) {
    let mut out = String::new();
    for command in script.split([';', '&']).map(str::trim).filter(|c| !c.is_empty()) {
        if let Some(text) = command.strip_prefix("echo ") {
            let mut line = text.trim_matches(|c| c == '"' || c == '\'').to_string();
            let mut names: Vec<&String> = env.keys().collect();
            names.sort_by_key(|k| std::cmp::Reverse(k.len())); // `$AB` before `$A`
            for k in names {
                line = line.replace(&format!("${k}"), &env[k]);
            }
            out.push_str(&line);
            out.push('\n');
        } else if let Some(code) = command.strip_prefix("exit ") {
            return (out, code.trim().parse().unwrap_or(1));
        }
    }
    (out, 0)
}
