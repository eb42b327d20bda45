//! The runner's reports of itself: who it is (id, version, host, slots, labels) and what it is
//! doing (idle, busy, draining, and finally stopped), sent when it starts, every heartbeat
//! period, at once when it starts draining, and once more, confirmed, as it leaves. The
//! scheduler records them and marks the runner lost when they stop coming.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use slipway_proto::message::{RunnerActivity, RunnerReport};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::report::Outbox;

/// What this runner is doing, shared by its slots and the reporting task.
#[derive(Debug)]
pub struct Presence {
    pub runner_id: String,
    pub host: String,
    pub slots: u32,
    pub labels: Vec<String>,
    pub started_at: DateTime<Utc>,
    jobs: Mutex<BTreeSet<Uuid>>,
    draining: AtomicBool,
    changed: Notify,
}

impl Presence {
    pub fn new(runner_id: String, slots: u32, labels: Vec<String>) -> Self {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".into());
        Self {
            runner_id,
            host,
            slots,
            labels,
            started_at: Utc::now(),
            jobs: Mutex::new(BTreeSet::new()),
            draining: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    fn with_jobs<T>(&self, f: impl FnOnce(&mut BTreeSet<Uuid>) -> T) -> T {
        f(&mut self.jobs.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A granted job started.
    pub fn started(&self, deployment_id: Uuid) {
        let n = self.with_jobs(|j| {
            j.insert(deployment_id);
            j.len()
        });
        metrics::gauge!(slipway_telemetry::metrics::JOBS_RUNNING).set(n as f64);
        self.changed.notify_one();
    }

    /// A job ended (however it ended).
    pub fn ended(&self, deployment_id: Uuid) {
        let n = self.with_jobs(|j| {
            j.remove(&deployment_id);
            j.len()
        });
        metrics::gauge!(slipway_telemetry::metrics::JOBS_RUNNING).set(n as f64);
        self.changed.notify_one();
    }

    /// The runner takes no new jobs from now on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// The report of this moment; `stopped` for the last one.
    pub fn report(&self, stopped: bool) -> RunnerReport {
        let jobs: Vec<Uuid> = self.with_jobs(|j| j.iter().copied().collect());
        let state = match (stopped, self.draining.load(Ordering::SeqCst), jobs.is_empty()) {
            (true, _, _) => RunnerActivity::Stopped,
            (false, true, _) => RunnerActivity::Draining,
            (false, false, true) => RunnerActivity::Idle,
            (false, false, false) => RunnerActivity::Busy,
        };
        RunnerReport {
            runner_id: self.runner_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            host: self.host.clone(),
            slots: self.slots,
            labels: self.labels.clone(),
            state,
            jobs,
            started_at: self.started_at,
            sent_at: Utc::now(),
        }
    }
}

/// Sends a report now, every `every`, and whenever the runner's jobs or draining change, until
/// `cancel`; the caller sends the last one ([`Presence::report`] with `stopped`).
pub async fn run(presence: std::sync::Arc<Presence>, outbox: Outbox, every: Duration, cancel: CancellationToken) {
    loop {
        outbox.report(presence.report(false), false).await;
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
            _ = presence.changed.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_follows_jobs_and_draining() {
        let p = Presence::new("r1".into(), 2, vec!["linux".into()]);
        assert_eq!(p.report(false).state, RunnerActivity::Idle);
        let id = Uuid::from_u128(7);
        p.started(id);
        let busy = p.report(false);
        assert_eq!((busy.state, busy.jobs.clone()), (RunnerActivity::Busy, vec![id]));
        p.drain();
        assert_eq!(p.report(false).state, RunnerActivity::Draining);
        p.ended(id);
        let draining = p.report(false);
        assert_eq!((draining.state, draining.jobs.len()), (RunnerActivity::Draining, 0));
        assert_eq!(p.report(true).state, RunnerActivity::Stopped);
        assert_eq!(p.report(true).slots, 2);
    }
}
