//! One trace per deployment, over OTLP (HTTP/protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; with neither, the global tracer is a no-op and
//! nothing is exported.
//!
//! A deployment's trace and root span ids are chosen when it is recorded ([`Root::new`]) and kept
//! with it as a W3C `traceparent`, which travels to the runner in the job message's AMQP
//! headers. The runner's job span and its step spans are children of the root; the scheduler
//! exports the root span itself, with those ids, when the deployment reaches its terminal state
//! — so the trace survives a scheduler restart between the push and the end.
//!
//! Attributes follow the OpenTelemetry CI/CD semantic conventions (`cicd.pipeline.*`,
//! `cicd.worker.id`, `vcs.ref.head.*`).

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};

/// The header W3C trace context travels in.
pub const TRACEPARENT: &str = "traceparent";

/// Whether the environment asks for traces.
pub fn configured() -> bool {
    ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| !v.trim().is_empty()))
        && std::env::var("OTEL_TRACES_EXPORTER").map_or(true, |v| v.trim() != "none")
}

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether [`init`] installed an exporter (spans are recorded and sent).
pub fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Flushes and stops the exporter when dropped (at the end of `main`).
#[derive(Debug)]
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "flushing traces at exit failed");
        }
    }
}

/// Installs the OTLP exporter as the global tracer provider when [`configured`]; `service` is
/// the `service.name` (unless `OTEL_SERVICE_NAME` says otherwise).
pub fn init(service: &'static str) -> anyhow::Result<Guard> {
    if !configured() {
        return Ok(Guard(None));
    }
    if std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").is_ok_and(|p| p.trim() != "http/protobuf") {
        tracing::warn!("OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is supported; using it");
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(PresetIds::default())
        .with_resource(resource.build())
        .build();
    global::set_tracer_provider(provider.clone());
    ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(service, "exporting traces over OTLP");
    Ok(Guard(Some(provider)))
}

thread_local! {
    /// The ids the next span built on this thread gets (see [`Root::end`]).
    static PRESET: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Random ids, except for a root span whose ids were chosen when its deployment was recorded.
#[derive(Debug, Default)]
struct PresetIds(RandomIdGenerator);

impl IdGenerator for PresetIds {
    fn new_trace_id(&self) -> TraceId {
        match PRESET.get() {
            Some((trace, _)) => trace,
            None => self.0.new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        match PRESET.get() {
            Some((_, span)) => span,
            None => self.0.new_span_id(),
        }
    }
}

/// A deployment's trace: its trace id and its root span's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Root {
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

/// How a deployment or a step ended, as `cicd.pipeline.result` / `cicd.pipeline.task.run.result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The user's code failed.
    Failure,
    /// The platform failed.
    Error,
    Cancellation,
    Skip,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Error => "error",
            Outcome::Cancellation => "cancellation",
            Outcome::Skip => "skip",
        }
    }

    fn status(self, message: Option<&str>) -> Status {
        match self {
            Outcome::Failure | Outcome::Error => Status::error(message.unwrap_or(self.as_str()).to_string()),
            _ => Status::Ok,
        }
    }
}

impl Root {
    /// Fresh random ids for a new deployment.
    pub fn new() -> Self {
        let ids = RandomIdGenerator::default();
        Self { trace_id: ids.new_trace_id(), span_id: ids.new_span_id() }
    }

    /// The W3C `traceparent` value (sampled).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }

    /// Reads a stored `traceparent`; `None` for anything malformed.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let cx = extract(traceparent);
        let sc = cx.span().span_context().clone();
        sc.is_valid().then_some(Self { trace_id: sc.trace_id(), span_id: sc.span_id() })
    }

    /// Exports the root span, from `start` (the push was received) to `end` (the terminal
    /// state), with the ids the deployment's trace was started with.
    pub fn end(
        &self,
        name: String,
        start: SystemTime,
        end: SystemTime,
        outcome: Outcome,
        message: Option<&str>,
        attributes: Vec<KeyValue>,
    ) {
        let tracer = global::tracer("slipway-scheduler");
        let mut attributes = attributes;
        attributes.push(KeyValue::new("cicd.pipeline.result", outcome.as_str()));
        let builder =
            tracer.span_builder(name).with_kind(SpanKind::Server).with_start_time(start).with_attributes(attributes);
        PRESET.set(Some((self.trace_id, self.span_id)));
        let mut span = tracer.build_with_context(builder, &Context::new());
        PRESET.set(None);
        span.set_status(outcome.status(message));
        span.end_with_timestamp(end);
    }
}

impl Default for Root {
    fn default() -> Self {
        Self::new()
    }
}

/// The context a `traceparent` header carries (empty when it is malformed).
pub fn extract(traceparent: &str) -> Context {
    use opentelemetry::propagation::TextMapPropagator;
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier)
}

/// A runner's spans for one job attempt: the job span, child of the deployment's root, and one
/// span per step under it.
pub struct JobTrace {
    cx: Context,
    base: Vec<KeyValue>,
    steps: Mutex<HashMap<&'static str, global::BoxedSpan>>,
}

impl std::fmt::Debug for JobTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobTrace").field("span", self.cx.span().span_context()).finish()
    }
}

impl JobTrace {
    /// Starts the job span under `traceparent` (a trace of its own when there is none).
    /// `attributes` go on the job span and every step span.
    pub fn start(traceparent: Option<&str>, name: String, attributes: Vec<KeyValue>) -> Self {
        let parent = traceparent.map(extract).unwrap_or_default();
        let tracer = global::tracer("slipway-runner");
        let builder = tracer.span_builder(name).with_kind(SpanKind::Consumer).with_attributes(attributes.clone());
        let span = tracer.build_with_context(builder, &parent);
        Self { cx: parent.with_span(span), base: attributes, steps: Mutex::new(HashMap::new()) }
    }

    /// A job span that records nothing (for tests and tools).
    pub fn none() -> Self {
        let sc =
            SpanContext::new(TraceId::INVALID, SpanId::INVALID, TraceFlags::default(), false, TraceState::default());
        Self { cx: Context::new().with_remote_span_context(sc), base: Vec::new(), steps: Mutex::new(HashMap::new()) }
    }

    /// The job span's own `traceparent`.
    pub fn traceparent(&self) -> Option<String> {
        let sc = self.cx.span().span_context().clone();
        sc.is_valid().then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
    }

    /// A step started: its span opens under the job span.
    pub fn step_started(&self, step: &'static str, task_type: Option<&'static str>) {
        let tracer = global::tracer("slipway-runner");
        let mut attributes = self.base.clone();
        attributes.push(KeyValue::new("cicd.pipeline.task.name", step));
        if let Some(kind) = task_type {
            attributes.push(KeyValue::new("cicd.pipeline.task.type", kind));
        }
        let builder = tracer.span_builder(Cow::Borrowed(step)).with_attributes(attributes);
        let span = tracer.build_with_context(builder, &self.cx);
        self.steps.lock().unwrap_or_else(|e| e.into_inner()).insert(step, span);
    }

    /// A step ended with `outcome`; a step that never started gets a span of no length.
    pub fn step_ended(&self, step: &'static str, outcome: Outcome, message: Option<&str>) {
        let open = self.steps.lock().unwrap_or_else(|e| e.into_inner()).remove(step);
        let mut span = match open {
            Some(span) => span,
            None => {
                self.step_started(step, None);
                match self.steps.lock().unwrap_or_else(|e| e.into_inner()).remove(step) {
                    Some(span) => span,
                    None => return,
                }
            }
        };
        span.set_attribute(KeyValue::new("cicd.pipeline.task.run.result", outcome.as_str()));
        span.set_status(outcome.status(message));
        span.end();
    }

    /// The job ended: closes any step still open (as cancelled) and the job span.
    pub fn end(&self, outcome: Outcome, message: Option<&str>) {
        let open: Vec<&'static str> = self.steps.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
        for step in open {
            self.step_ended(step, Outcome::Cancellation, None);
        }
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("cicd.pipeline.task.run.result", outcome.as_str()));
        span.set_status(outcome.status(message));
        span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_round_trips_through_its_traceparent_and_garbage_is_none() {
        let root = Root::new();
        let header = root.traceparent();
        assert_eq!(header.len(), 55, "{header}");
        assert_eq!(Root::parse(&header), Some(root));
        for bad in ["", "00-zz-yy-01", "00-00000000000000000000000000000000-0000000000000000-01", &"x".repeat(100_000)]
        {
            assert_eq!(Root::parse(bad), None, "{bad:.40}");
        }
    }

    #[test]
    fn preset_ids_apply_only_while_set() {
        let ids = PresetIds::default();
        let root = Root::new();
        PRESET.set(Some((root.trace_id, root.span_id)));
        assert_eq!((ids.new_trace_id(), ids.new_span_id()), (root.trace_id, root.span_id));
        PRESET.set(None);
        assert_ne!(ids.new_span_id(), root.span_id);
    }
}
