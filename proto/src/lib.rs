//! The wire contract between the scheduler and runners, and the pure job state machine.
//!
//! Nothing here does IO or needs an async runtime: both binaries, the CLI and the tests share
//! these types, and the state machine is tested as a table.

pub mod api;
pub mod lifecycle;
pub mod message;
pub mod name;
pub mod outbound;
pub mod state;
pub mod text;

pub use lifecycle::{CancelRequest, Decision, Failure, Holder, Input, Phase, Policy, Rejection, Row, decide};
pub use message::{
    Body, CacheSummary, Control, Envelope, Job, JobApp, LogLine, Notification, Promotion, ReleaseRecord, ReleaseState,
    RestoreSnapshot, TargetKind, WatchCheck,
};
pub use name::{NameError, preview_environment, preview_number, validate_dns_label};
pub use state::{Cause, State, Step, StepStatus, retry_delay};

/// Exchange and queue names, derived from one prefix so tests can run side by side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Durable queue of jobs, consumed by runners.
    pub jobs_queue: String,
    /// Durable queue of runner messages (events, heartbeats, log lines), consumed by the scheduler.
    pub runner_queue: String,
    /// Fanout exchange the scheduler uses to tell runners to stop a job.
    pub control_exchange: String,
    /// Topic exchange where the scheduler publishes `deploy.*` notifications.
    pub events_exchange: String,
}

impl Topology {
    /// Names for the given prefix (`slipway` in production).
    pub fn new(prefix: &str) -> Self {
        Self {
            jobs_queue: format!("{prefix}.jobs"),
            runner_queue: format!("{prefix}.runner"),
            control_exchange: format!("{prefix}.control"),
            events_exchange: format!("{prefix}.events"),
        }
    }
}
