//! RabbitMQ for the scheduler: connecting with backoff until it answers, declaring the
//! topology, and a publisher task for best-effort control messages and notifications.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use slipway_proto::{Control, Notification, Topology};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Connects to `url`, retrying with exponential backoff (capped at 5 s) until it works or
/// `cancel` fires.
pub async fn connect(url: &str, cancel: &CancellationToken) -> Option<Connection> {
    let attempt = || async { Connection::connect(url, ConnectionProperties::default()).await };
    let retrying = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .without_max_times(),
        )
        .notify(|err, delay| tracing::warn!(error = %err, retry_in = ?delay, "rabbitmq unreachable; retrying"));
    tokio::select! {
        _ = cancel.cancelled() => None,
        conn = retrying => conn.ok(),
    }
}

/// Declares every queue and exchange (idempotent; runners declare the queues they use the same way).
pub async fn declare(channel: &Channel, topo: &Topology) -> lapin::Result<()> {
    for queue in [&topo.jobs_queue, &topo.runner_queue] {
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                quorum_args(),
            )
            .await?;
    }
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            topo.control_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            topo.events_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Arguments of the durable queues: quorum queues, replicated and fsynced before confirming.
pub fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

/// Properties of a persistent JSON message.
pub fn persistent_json() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

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
        self.send(
            self.topo.events_exchange.clone(),
            note.routing_key().to_string(),
            note,
        );
    }

    fn send<T: serde::Serialize>(&self, exchange: String, routing_key: String, body: &T) {
        let Ok(payload) = serde_json::to_vec(body) else {
            return;
        };
        if self
            .tx
            .try_send(Outgoing {
                exchange,
                routing_key,
                payload,
            })
            .is_err()
        {
            tracing::warn!("publisher queue full or closed; notification dropped");
        }
    }
}

/// The receiving half of a [`Publisher`].
#[derive(Debug)]
pub struct PublisherQueue(mpsc::Receiver<Outgoing>);

/// Publishes what the [`Publisher`] hands over, reconnecting when the broker goes away.
pub async fn run_publisher(
    url: String,
    topo: Topology,
    mut queue: PublisherQueue,
    cancel: CancellationToken,
) {
    let mut pending: Option<Outgoing> = None;
    while let Some(conn) = connect(&url, &cancel).await {
        let channel = match open(&conn, &topo).await {
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
                    persistent_json(),
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

async fn open(conn: &Connection, topo: &Topology) -> lapin::Result<Channel> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    declare(&channel, topo).await?;
    Ok(channel)
}

/// Opens a channel with publisher confirms on and the topology declared.
pub async fn confirm_channel(conn: &Connection, topo: &Topology) -> lapin::Result<Channel> {
    open(conn, topo).await
}
