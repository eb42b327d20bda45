//! The scheduler's publisher task: best-effort control messages to runners and `deploy.*`
//! notifications, handed over without blocking and published with confirms, reconnecting when
//! the broker goes away.

use lapin::options::BasicPublishOptions;
use slipway_broker as broker;
use slipway_proto::{Control, Notification, Topology};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A message for the publisher task.
#[derive(Debug)]
struct Outgoing {
    exchange: String,
    routing_key: String,
    payload: Vec<u8>,
}

/// Hands control messages and notifications to the publisher task; never blocks a caller.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Outgoing>,
    topo: Topology,
}

impl Publisher {
    /// A publisher and the receiving half for [`run_publisher`].
    pub fn new(topo: Topology) -> (Self, PublisherQueue) {
        let (tx, rx) = mpsc::channel(4096);
        (Self { tx, topo }, PublisherQueue(rx))
    }

    /// Tells runners to stop working on (deployment, attempt).
    pub fn control(&self, control: &Control) {
        self.send(self.topo.control_exchange.clone(), String::new(), control);
    }

    /// Announces a change on the events exchange.
    pub fn notify(&self, note: &Notification) {
        self.send(self.topo.events_exchange.clone(), note.routing_key().to_string(), note);
    }

    fn send<T: serde::Serialize>(&self, exchange: String, routing_key: String, body: &T) {
        let Ok(payload) = serde_json::to_vec(body) else {
            return;
        };
        if self.tx.try_send(Outgoing { exchange, routing_key, payload }).is_err() {
            tracing::warn!("publisher queue full or closed; notification dropped");
        }
    }
}

/// The receiving half of a [`Publisher`].
#[derive(Debug)]
pub struct PublisherQueue(mpsc::Receiver<Outgoing>);

/// Publishes what the [`Publisher`] hands over, reconnecting when the broker goes away.
pub async fn run_publisher(url: String, topo: Topology, mut queue: PublisherQueue, cancel: CancellationToken) {
    let mut pending: Option<Outgoing> = None;
    while let Some(conn) = broker::connect(&url, &cancel).await {
        let channel = match broker::confirm_channel(&conn, &topo).await {
            Ok(channel) => channel,
            Err(err) => {
                tracing::warn!(error = %err, "publisher channel failed; reconnecting");
                continue;
            }
        };
        loop {
            let msg = match pending.take() {
                Some(msg) => msg,
                None => tokio::select! {
                    _ = cancel.cancelled() => return,
                    msg = queue.0.recv() => match msg { Some(msg) => msg, None => return },
                },
            };
            let sent = channel
                .basic_publish(
                    msg.exchange.as_str().into(),
                    msg.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &msg.payload,
                    broker::persistent_json(),
                )
                .await;
            let confirmed = match sent {
                Ok(confirm) => confirm.await.map(|_| ()),
                Err(err) => Err(err),
            };
            if let Err(err) = confirmed {
                tracing::warn!(error = %err, "publish failed; reconnecting");
                pending = Some(msg);
                break;
            }
        }
    }
}
