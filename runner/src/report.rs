//! Everything a runner tells the scheduler goes through one shipper task that publishes to the
//! runner queue with publisher confirms, reconnecting and republishing after a broker outage
//! (the scheduler drops the duplicates). Messages go out in order, except heartbeats, which have
//! a lane of their own and never wait behind log lines. A [`Reporter`] is one job's handle on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use slipway_proto::{Body, Envelope, LogLine, Step, StepStatus, Topology};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use slipway_broker as broker;

/// One message for the shipper, with an optional signal once the broker confirmed it.
#[derive(Debug)]
pub struct Outbound {
    envelope: Envelope,
    confirmed: Option<oneshot::Sender<()>>,
}

impl Outbound {
    /// Signals whoever waits that the broker confirmed this message.
    pub fn confirm(self) {
        if let Some(done) = self.confirmed {
            let _ = done.send(());
        }
    }
}

/// The sending half of the shipper: the ordered lane, and the heartbeat lane.
#[derive(Debug, Clone)]
pub struct Outbox {
    ordered: mpsc::UnboundedSender<Outbound>,
    urgent: mpsc::UnboundedSender<Outbound>,
}

/// The receiving half, for [`run_shipper`].
#[derive(Debug)]
pub struct OutboxQueue {
    ordered: mpsc::UnboundedReceiver<Outbound>,
    urgent: mpsc::UnboundedReceiver<Outbound>,
}

impl Outbox {
    /// An outbox whose messages (heartbeats included) all arrive on `ordered`; for tests.
    pub fn new(ordered: mpsc::UnboundedSender<Outbound>) -> Self {
        Self { urgent: ordered.clone(), ordered }
    }

    /// An outbox and the queue the shipper reads.
    pub fn channel() -> (Self, OutboxQueue) {
        let (ordered, ordered_rx) = mpsc::unbounded_channel();
        let (urgent, urgent_rx) = mpsc::unbounded_channel();
        (Self { ordered, urgent }, OutboxQueue { ordered: ordered_rx, urgent: urgent_rx })
    }
}

/// One job attempt's reporter: numbers log lines and stamps every message with the
/// deployment, attempt and runner.
#[derive(Debug, Clone)]
pub struct Reporter {
    outbox: Outbox,
    deployment_id: uuid::Uuid,
    attempt: u32,
    runner_id: Arc<str>,
    claim: uuid::Uuid,
    seq: Arc<AtomicU64>,
    /// Values replaced by `***` in every line and failure message.
    secrets: Arc<[String]>,
}

impl Reporter {
    pub fn new(
        outbox: Outbox,
        deployment_id: uuid::Uuid,
        attempt: u32,
        runner_id: Arc<str>,
        claim: uuid::Uuid,
    ) -> Self {
        let (seq, secrets) = (Arc::new(AtomicU64::new(0)), Arc::from([]));
        Self { outbox, deployment_id, attempt, runner_id, claim, seq, secrets }
    }

    /// Masks `values` (longest first) wherever they appear in what this reporter sends.
    pub fn with_secrets(mut self, values: Vec<String>) -> Self {
        self.secrets = values.into();
        self
    }

    /// `text` with every secret value replaced by `***`.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in self.secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }

    fn envelope(&self, body: Body) -> Envelope {
        Envelope {
            deployment_id: self.deployment_id,
            attempt: self.attempt,
            runner_id: self.runner_id.to_string(),
            claim: self.claim,
            body,
        }
    }

    /// Queues `body` for the scheduler, after everything queued before it.
    pub fn send(&self, body: Body) {
        let _ = self.outbox.ordered.send(Outbound { envelope: self.envelope(body), confirmed: None });
    }

    /// Queues a heartbeat ahead of queued log lines.
    pub fn heartbeat(&self) {
        let _ = self.outbox.urgent.send(Outbound { envelope: self.envelope(Body::Heartbeat), confirmed: None });
    }

    /// Sends `body` and waits until the broker confirmed it; false if the shipper stopped.
    pub async fn send_confirmed(&self, body: Body) -> bool {
        let (tx, rx) = oneshot::channel();
        let queued = self.outbox.ordered.send(Outbound { envelope: self.envelope(body), confirmed: Some(tx) });
        queued.is_ok() && rx.await.is_ok()
    }

    /// One line of output, attributed to `step`. Long lines are split, never dropped.
    pub fn line(&self, step: Option<Step>, line: &str) {
        const MAX: usize = 16 * 1024;
        let masked = self.mask(line.trim_end_matches(['\r', '\n']));
        let mut rest = masked.as_str();
        loop {
            let cut = floor_char_boundary(rest, MAX);
            let (head, tail) = rest.split_at(cut);
            let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
            self.send(Body::Log(LogLine { seq, step, line: head.to_string(), ts: Utc::now() }));
            if tail.is_empty() {
                break;
            }
            rest = tail;
        }
    }

    /// A step changed status.
    pub fn step(&self, step: Step, status: StepStatus, error: Option<String>) {
        self.send(Body::Step { step, status, error });
    }
}

impl OutboxQueue {
    /// The next message: a heartbeat first, if one waits; `None` once every sender is gone.
    async fn next(&mut self) -> Option<Outbound> {
        tokio::select! {
            biased;
            Some(msg) = self.urgent.recv() => Some(msg),
            msg = self.ordered.recv() => msg,
        }
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Publishes everything queued on the outbox until `cancel` and the outbox is drained.
pub async fn run_shipper(url: String, topo: Topology, mut queue: OutboxQueue, cancel: CancellationToken) {
    let mut pending: Option<Outbound> = None;
    'connect: while let Some(conn) = broker::connect(&url, &cancel).await {
        let channel = match conn.create_channel().await {
            Ok(ch) => ch,
            Err(err) => {
                tracing::warn!(error = %err, "shipper channel failed; reconnecting");
                continue;
            }
        };
        if let Err(err) = channel.confirm_select(ConfirmSelectOptions::default()).await {
            tracing::warn!(error = %err, "shipper confirm mode failed; reconnecting");
            continue;
        }
        loop {
            let msg = match pending.take() {
                Some(msg) => msg,
                None => match queue.next().await {
                    Some(msg) => msg,
                    None => return,
                },
            };
            let Ok(payload) = serde_json::to_vec(&msg.envelope) else {
                continue;
            };
            let published = async {
                channel
                    .basic_publish(
                        "".into(),
                        topo.runner_queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &payload,
                        broker::persistent_json(),
                    )
                    .await?
                    .await
            }
            .await;
            match published {
                Ok(Confirmation::Ack(_)) => msg.confirm(),
                Ok(other) => {
                    tracing::warn!(confirmation = ?other, "broker refused a runner message; republishing");
                    pending = Some(msg);
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "publishing to the runner queue failed; reconnecting");
                    pending = Some(msg);
                    continue 'connect;
                }
            }
        }
    }
}
