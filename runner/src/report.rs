//! Everything a runner tells the scheduler goes through one shipper task that publishes to the
//! runner queue with publisher confirms, reconnecting and republishing after a broker outage
//! (the scheduler drops the duplicates). Messages go out in order, except heartbeats, which have
//! a lane of their own and never wait behind log lines; consecutive log lines of a job go out
//! batched, one message (and one broker round trip) for up to [`BATCH_LINES`] of them. A [`Reporter`] is one job's handle on it.

use std::sync::{Arc, Mutex};

use chrono::Utc;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use slipway_proto::message::{RUNNER_REPORT_TYPE, RunnerReport};
use slipway_proto::{Body, Envelope, LogLine, Step, StepStatus, Topology};

use crate::mask::Masker;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use slipway_broker as broker;

/// One message for the shipper, with an optional signal once the broker confirmed it.
#[derive(Debug)]
pub struct Outbound {
    message: Message,
    confirmed: Option<oneshot::Sender<()>>,
}

/// What goes on the runner queue: a job's message, or the runner's report of itself.
#[derive(Debug)]
enum Message {
    Job(Envelope),
    Runner(RunnerReport),
}

impl Outbound {
    /// The log lines this message carries (none if it is not a batch of lines).
    pub fn log_lines(&self) -> &[LogLine] {
        match &self.message {
            Message::Job(Envelope { body: Body::Logs { lines }, .. }) => lines,
            _ => &[],
        }
    }

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

    /// Sends the runner's report of itself ahead of queued job messages; with `confirmed`,
    /// waits until the broker took it (false if the shipper stopped first).
    pub async fn report(&self, report: RunnerReport, confirmed: bool) -> bool {
        let (tx, rx) = oneshot::channel();
        let msg = Outbound { message: Message::Runner(report), confirmed: confirmed.then_some(tx) };
        let queued = self.urgent.send(msg).is_ok();
        queued && (!confirmed || rx.await.is_ok())
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
    /// The last line number and the line held back; locked while a line is numbered and
    /// queued, so lines are queued in the order of their numbers even when several tasks log.
    lines: Arc<Mutex<Lines>>,
    /// Replaces secret values (in their common encodings) by `***` in everything sent.
    masker: Arc<Masker>,
    /// Keeps the same values masked in the runner's own log while this attempt runs.
    _registration: Option<Arc<crate::mask::Registration>>,
    /// This attempt's spans: each step reported opens and closes one.
    trace: Arc<slipway_telemetry::trace::JobTrace>,
}

impl Reporter {
    pub fn new(
        outbox: Outbox,
        deployment_id: uuid::Uuid,
        attempt: u32,
        runner_id: Arc<str>,
        claim: uuid::Uuid,
    ) -> Self {
        let (lines, masker) = (Arc::new(Mutex::new(Lines::default())), Arc::new(Masker::default()));
        let trace = Arc::new(slipway_telemetry::trace::JobTrace::none());
        Self { outbox, deployment_id, attempt, runner_id, claim, lines, masker, _registration: None, trace }
    }

    /// Records each step reported as a span of `trace`.
    pub fn with_trace(mut self, trace: Arc<slipway_telemetry::trace::JobTrace>) -> Self {
        self.trace = trace;
        self
    }

    /// This attempt's spans.
    pub fn trace(&self) -> &slipway_telemetry::trace::JobTrace {
        &self.trace
    }

    /// Masks `values`, in any of their common encodings, wherever they appear in what this
    /// reporter sends.
    pub fn with_secrets(mut self, values: Vec<String>) -> Self {
        self.masker = Arc::new(Masker::new(&values));
        self._registration = Some(Arc::new(crate::mask::register(values)));
        self
    }

    /// `text` with every secret value (in any common encoding) replaced by `***`.
    pub fn mask(&self, text: &str) -> String {
        self.masker.mask_lines(text)
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

    /// Queues `body` for the scheduler, after everything queued before it (a line held back
    /// goes first).
    pub fn send(&self, body: Body) {
        self.flush_held();
        self.queue(body);
    }

    fn queue(&self, body: Body) {
        let _ = self.outbox.ordered.send(Outbound { message: Message::Job(self.envelope(body)), confirmed: None });
    }

    /// Queues a heartbeat ahead of queued log lines.
    pub fn heartbeat(&self) {
        let _ = self
            .outbox
            .urgent
            .send(Outbound { message: Message::Job(self.envelope(Body::Heartbeat)), confirmed: None });
    }

    /// Sends `body` and waits until the broker confirmed it; false if the shipper stopped.
    pub async fn send_confirmed(&self, body: Body) -> bool {
        self.flush_held();
        let (tx, rx) = oneshot::channel();
        let queued =
            self.outbox.ordered.send(Outbound { message: Message::Job(self.envelope(body)), confirmed: Some(tx) });
        queued.is_ok() && rx.await.is_ok()
    }

    /// One line of output, attributed to `step`, masked and with NUL escaped. A line longer
    /// than [`LINE_PART`] goes in parts marked `more`, which readers join; nothing is dropped.
    /// A line that ends with the beginning of a secret is held back until the next line of the
    /// step (or [`HOLD`] passes), so a secret split over two lines is masked on both.
    pub fn line(&self, step: Option<Step>, line: &str) {
        let raw = line.trim_end_matches(['\r', '\n']);
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let masked = match lines.held.take() {
            Some(held) if held.step == step => {
                let (first, second) = self.masker.mask_pair(&held.text, raw);
                self.emit(&mut lines, held.step, &first);
                second
            }
            Some(held) => {
                self.emit(&mut lines, held.step, &held.text);
                self.mask(raw)
            }
            None => self.mask(raw),
        };
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(runtime) if self.masker.ends_in_prefix(&masked) => {
                lines.held = Some(Held { step, text: masked, since: std::time::Instant::now() });
                // One timer for a burst of held lines, not one per line.
                if !lines.timer {
                    lines.timer = true;
                    let me = self.clone();
                    runtime.spawn(async move { me.flush_when_due().await });
                }
            }
            _ => self.emit(&mut lines, step, &masked),
        }
    }

    /// Sends the line held back, if any.
    fn flush_held(&self) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = lines.held.take() {
            self.emit(&mut lines, held.step, &held.text);
        }
    }

    /// The timer of held lines: sends a line held for [`HOLD`], and ends once none is held.
    async fn flush_when_due(self) {
        let mut wait = HOLD;
        loop {
            tokio::time::sleep(wait).await;
            let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            let Some(since) = lines.held.as_ref().map(|h| h.since) else {
                lines.timer = false;
                return;
            };
            match HOLD.checked_sub(since.elapsed()) {
                Some(left) if !left.is_zero() => wait = left,
                _ => {
                    if let Some(held) = lines.held.take() {
                        self.emit(&mut lines, held.step, &held.text);
                    }
                    lines.timer = false;
                    return;
                }
            }
        }
    }

    /// Numbers and queues a masked line, in parts if it is long.
    fn emit(&self, lines: &mut Lines, step: Option<Step>, masked: &str) {
        let escaped = slipway_proto::text::escape_str(masked);
        let mut rest: &str = &escaped;
        loop {
            let cut = floor_char_boundary(rest, LINE_PART);
            let (head, tail) = rest.split_at(cut);
            lines.last += 1;
            let line =
                LogLine { seq: lines.last, step, line: head.to_string(), ts: Utc::now(), more: !tail.is_empty() };
            self.queue(Body::Logs { lines: vec![line] });
            if tail.is_empty() {
                break;
            }
            rest = tail;
        }
    }

    /// A step changed status; its error is masked like any line.
    pub fn step(&self, step: Step, status: StepStatus, error: Option<String>) {
        let error = error.map(|e| self.mask(&e));
        use slipway_telemetry::trace::Outcome;
        let task_type = match step {
            Step::Build | Step::Push => Some("build"),
            Step::Test => Some("test"),
            Step::Release | Step::PreDeploy | Step::Deploy | Step::PostDeploy => Some("deploy"),
            Step::Clone | Step::Cleanup => None,
        };
        match status {
            StepStatus::Running => self.trace.step_started(step.as_str(), task_type),
            StepStatus::Succeeded => self.trace.step_ended(step.as_str(), Outcome::Success, None),
            StepStatus::Skipped => self.trace.step_ended(step.as_str(), Outcome::Skip, None),
            StepStatus::Cancelled => self.trace.step_ended(step.as_str(), Outcome::Cancellation, None),
            StepStatus::Failed => self.trace.step_ended(step.as_str(), Outcome::Failure, error.as_deref()),
        }
        self.send(Body::Step { step, status, error });
    }
}

/// The numbering of an attempt's lines, and the line held back because it ends with the
/// beginning of a secret.
#[derive(Debug, Default)]
struct Lines {
    last: u64,
    held: Option<Held>,
    /// Whether a timer is running that will send a held line once it waited [`HOLD`].
    timer: bool,
}

/// A line held back, masked as far as it can be alone.
#[derive(Debug)]
struct Held {
    step: Option<Step>,
    text: String,
    since: std::time::Instant,
}

/// How long a line that may end with half a secret waits for the next line.
pub const HOLD: std::time::Duration = std::time::Duration::from_millis(100);

/// Longest part of a line in one log message (longer lines go in parts).
pub const LINE_PART: usize = 256 * 1024;
/// A batch of log lines stops growing at this many bytes of text...
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// ... or this many lines.
const BATCH_LINES: usize = 20_000;

impl OutboxQueue {
    /// The next message: a heartbeat first, if one waits; `None` once every sender is gone.
    async fn next(&mut self) -> Option<Outbound> {
        tokio::select! {
            biased;
            Some(msg) = self.urgent.recv() => Some(msg),
            msg = self.ordered.recv() => msg,
        }
    }

    /// Appends to `msg`, if it holds log lines, the log lines of the same attempt already queued
    /// behind it; the first message that does not fit is left in `carry`, to go next.
    fn batch(&mut self, mut msg: Outbound, carry: &mut Option<Outbound>) -> Outbound {
        if msg.confirmed.is_some() {
            return msg;
        }
        let Message::Job(envelope) = &mut msg.message else { return msg };
        let key = (envelope.claim, envelope.deployment_id, envelope.attempt);
        let Body::Logs { lines } = &mut envelope.body else { return msg };
        let mut bytes: usize = lines.iter().map(|l| l.line.len()).sum();
        while lines.len() < BATCH_LINES && bytes < BATCH_BYTES {
            let Ok(next) = self.ordered.try_recv() else { break };
            let same = matches!(&next.message, Message::Job(e) if (e.claim, e.deployment_id, e.attempt) == key);
            match next.message {
                Message::Job(Envelope { body: Body::Logs { lines: more }, .. }) if same && next.confirmed.is_none() => {
                    bytes += more.iter().map(|l| l.line.len()).sum::<usize>();
                    lines.extend(more);
                }
                _ => {
                    *carry = Some(next);
                    break;
                }
            }
        }
        msg
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
    let mut carry: Option<Outbound> = None;
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
            let msg = match (pending.take(), carry.take()) {
                (Some(msg), later) => {
                    carry = later;
                    msg
                }
                (None, Some(msg)) => queue.batch(msg, &mut carry),
                (None, None) => match queue.next().await {
                    Some(msg) => queue.batch(msg, &mut carry),
                    None => return,
                },
            };
            let (payload, properties) = match &msg.message {
                Message::Job(envelope) => (serde_json::to_vec(envelope), broker::persistent_json()),
                Message::Runner(report) => {
                    (serde_json::to_vec(report), broker::persistent_json().with_type(RUNNER_REPORT_TYPE.into()))
                }
            };
            let Ok(payload) = payload else {
                continue;
            };
            let lines = match &msg.message {
                Message::Job(Envelope { body: Body::Logs { lines }, .. }) => lines.len(),
                _ => 0,
            };
            let started = std::time::Instant::now();
            let published = async {
                channel
                    .basic_publish(
                        "".into(),
                        topo.runner_queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &payload,
                        properties.clone(),
                    )
                    .await?
                    .await
            }
            .await;
            match published {
                Ok(Confirmation::Ack(_)) => {
                    let ms = started.elapsed().as_millis() as u64;
                    tracing::debug!(lines, bytes = payload.len(), ms, "runner message confirmed");
                    msg.confirm();
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reporter(outbox: Outbox, claim: u128) -> Reporter {
        Reporter::new(outbox, uuid::Uuid::from_u128(1), 1, "r".into(), uuid::Uuid::from_u128(claim))
    }

    fn body(msg: &Outbound) -> &Body {
        match &msg.message {
            Message::Job(envelope) => &envelope.body,
            Message::Runner(_) => panic!("a runner report"),
        }
    }

    fn lines_of(msg: &Outbound) -> Vec<u64> {
        match body(msg) {
            Body::Logs { lines } => lines.iter().map(|l| l.seq).collect(),
            _ => Vec::new(),
        }
    }

    fn texts(queue: &mut OutboxQueue) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(msg) = queue.ordered.try_recv() {
            match body(&msg).clone() {
                Body::Logs { lines } => out.extend(lines.into_iter().map(|l| format!("{}:{}", l.seq, l.line))),
                Body::Step { step, .. } => out.push(format!("step {}", step.as_str())),
                _ => {}
            }
        }
        out
    }

    #[tokio::test]
    async fn a_secret_split_over_two_lines_is_masked_and_the_held_line_keeps_its_place() {
        let (outbox, mut queue) = Outbox::channel();
        let r = reporter(outbox, 10).with_secrets(vec!["s3cr3t-token-value".into()]);
        r.line(Some(Step::Build), "the token is s3cr3t-");
        r.line(Some(Step::Build), "token-value, split");
        r.line(Some(Step::Build), "plain line");
        // Held until the step ends: the step message goes after it.
        r.line(Some(Step::Build), "ends with s3cr3t");
        r.step(Step::Build, StepStatus::Succeeded, None);
        assert_eq!(
            texts(&mut queue),
            ["1:the token is ***", "2:***, split", "3:plain line", "4:ends with s3cr3t", "step build"]
        );
        // With nothing after it, a held line goes after a short wait.
        r.line(Some(Step::Deploy), "last words s3cr");
        assert!(texts(&mut queue).is_empty(), "held");
        let deadline = tokio::time::Instant::now() + HOLD * 20;
        let mut sent = Vec::new();
        while sent.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
            sent = texts(&mut queue);
        }
        assert_eq!(sent, ["5:last words s3cr"], "sent once it waited");
    }

    #[test]
    fn consecutive_lines_of_one_attempt_go_in_batches_and_order_is_kept() {
        let (outbox, mut queue) = Outbox::channel();
        let (a, b) = (reporter(outbox.clone(), 10), reporter(outbox, 11));
        let total = BATCH_LINES as u64 + 500;
        for i in 0..total {
            a.line(None, &format!("line {i}"));
        }
        a.step(Step::Build, StepStatus::Succeeded, None);
        a.line(None, "after the step");
        b.line(None, "another claim");
        a.heartbeat();
        let mut carry = None;
        let next = |queue: &mut OutboxQueue, carry: &mut Option<Outbound>| {
            let msg = carry.take().or_else(|| queue.urgent.try_recv().ok()).or_else(|| queue.ordered.try_recv().ok());
            msg.map(|m| queue.batch(m, carry))
        };
        let first = next(&mut queue, &mut carry).expect("heartbeat");
        assert!(matches!(body(&first), Body::Heartbeat), "heartbeats go first");
        let batch = next(&mut queue, &mut carry).expect("batch");
        assert_eq!(lines_of(&batch), (1..=BATCH_LINES as u64).collect::<Vec<_>>());
        let rest = next(&mut queue, &mut carry).expect("rest");
        assert_eq!(lines_of(&rest), (BATCH_LINES as u64 + 1..=total).collect::<Vec<_>>());
        let step = next(&mut queue, &mut carry).expect("step");
        assert!(matches!(body(&step), Body::Step { .. }), "the step stays between the lines");
        let after = next(&mut queue, &mut carry).expect("after");
        assert_eq!(lines_of(&after), [total + 1], "the line after the step goes after it");
        let other = next(&mut queue, &mut carry).expect("other");
        assert!(matches!(&other.message, Message::Job(e) if e.claim == uuid::Uuid::from_u128(11)));
    }

    #[test]
    fn a_long_line_goes_in_marked_parts_and_nul_is_escaped() {
        let (outbox, mut queue) = Outbox::channel();
        let r = reporter(outbox, 10);
        let long = "é".repeat(LINE_PART); // two bytes each: two full parts
        r.line(Some(Step::Build), &format!("{long}\0end"));
        let mut parts = Vec::new();
        while let Ok(msg) = queue.ordered.try_recv() {
            if let Body::Logs { lines } = body(&msg) {
                parts.extend(lines.clone());
            }
        }
        assert_eq!(parts.len(), 3);
        assert!(parts[0].more && parts[1].more && !parts[2].more);
        let joined: String = parts.iter().map(|p| p.line.as_str()).collect();
        assert_eq!(joined, format!("{long}\\0end"));
    }
}
