//! What the scheduler and runners tell operators about themselves: their own log (text or JSON,
//! colour only on a terminal), Prometheus metrics through the `metrics` facade, and
//! OpenTelemetry traces over OTLP when the standard `OTEL_EXPORTER_OTLP_*` variables are set.

pub mod logs;
pub mod metrics;
pub mod trace;
