//! RabbitMQ plumbing shared by the scheduler and runners: connecting with backoff until the
//! broker answers, declaring the topology the same way on both sides, and message properties.
//! lapin's own auto-recovery is not used: each consumer and publisher owns its reconnect loop.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use slipway_proto::Topology;
use tokio_util::sync::CancellationToken;

/// The frame size Slipway asks the broker for (the broker's default is 128 KiB).
pub const FRAME_MAX: u32 = 16 * 1024;

/// The longest wait between two attempts to reach the broker: after an outage of any length, a
/// process is back within about a second of the broker (the fault suite prints how long).
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

/// Connects to `url`, retrying with exponential backoff (capped at [`RECONNECT_MAX_DELAY`], with
/// jitter so a fleet does not knock at once) until it works or `cancel` fires (then `None`).
pub async fn connect(url: &str, cancel: &CancellationToken) -> Option<Connection> {
    // Frames of FRAME_MAX unless the URL sets `frame_max`: lapin keeps 32 frames of buffer each
    // way per connection, so the broker's default cost 8 MiB a connection. A URL that does not
    // parse goes to lapin as it is, which says what is wrong with it.
    let uri = url.parse::<lapin::uri::AMQPUri>().ok().map(|mut uri| {
        uri.query.frame_max = uri.query.frame_max.or(Some(FRAME_MAX));
        uri
    });
    let attempt = || async {
        match &uri {
            Some(uri) => Connection::connect_uri(uri.clone(), ConnectionProperties::default()).await,
            None => Connection::connect(url, ConnectionProperties::default()).await,
        }
    };
    let retrying = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(RECONNECT_MAX_DELAY)
                .with_jitter()
                .without_max_times(),
        )
        .notify(|err, delay| tracing::warn!(error = %err, retry_in = ?delay, "rabbitmq unreachable; retrying"));
    tokio::select! {
        _ = cancel.cancelled() => None,
        conn = retrying => conn.ok(),
    }
}

/// Runs `session` on a fresh connection, and again on a new one whenever it fails (the broker
/// restarted, the connection dropped), until it returns `Ok` or `cancel` fires. `what` names the
/// session in the warning logged for each reconnect.
pub async fn with_reconnect<E, F, Fut>(url: &str, cancel: &CancellationToken, what: &str, mut session: F)
where
    E: std::fmt::Display,
    F: FnMut(Connection) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    while let Some(conn) = connect(url, cancel).await {
        match session(conn).await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(error = %err, session = what, "rabbitmq session interrupted; reconnecting");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Declares every queue and exchange. Idempotent, and identical wherever it is called, so
/// scheduler and runners may start in any order.
pub async fn declare(channel: &Channel, topo: &Topology) -> lapin::Result<()> {
    for queue in [&topo.jobs_queue, &topo.runner_queue] {
        channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), quorum_args()).await?;
    }
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel
        .exchange_declare(topo.control_exchange.as_str().into(), ExchangeKind::Fanout, durable, FieldTable::default())
        .await?;
    channel
        .exchange_declare(topo.events_exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default())
        .await?;
    Ok(())
}

/// A channel with publisher confirms on and the topology declared.
pub async fn confirm_channel(conn: &Connection, topo: &Topology) -> lapin::Result<Channel> {
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    declare(&channel, topo).await?;
    Ok(channel)
}

/// Arguments of the durable queues: quorum queues, written to disk before a confirm.
fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args
}

/// Properties of a persistent JSON message.
pub fn persistent_json() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into())
}

/// `properties` with the W3C `traceparent` header set.
pub fn with_traceparent(properties: BasicProperties, traceparent: &str) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert("traceparent".into(), AMQPValue::LongString(traceparent.into()));
    properties.with_headers(headers)
}

/// The W3C `traceparent` header of a message, if it has a readable one.
pub fn traceparent(properties: &BasicProperties) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get("traceparent")? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
    .filter(|s| s.len() <= 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_through_message_headers() {
        let header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let props = with_traceparent(persistent_json(), header);
        assert_eq!(traceparent(&props).as_deref(), Some(header));
        assert_eq!(traceparent(&persistent_json()), None);
        let huge = with_traceparent(persistent_json(), &"x".repeat(10_000));
        assert_eq!(traceparent(&huge), None, "an oversized header is not read");
    }

    /// lapin keeps two buffers of 32 frames for each connection and fills them: at the broker's
    /// default frame size (128 KiB) that was 8 MiB of resident memory a connection, most of an
    /// idle runner's. Slipway asks for smaller frames unless the URL says otherwise.
    #[tokio::test]
    async fn connections_ask_for_small_frames_unless_the_url_sets_them() {
        let url = std::env::var("SLIPWAY_AMQP_URL")
            .expect("SLIPWAY_AMQP_URL is not set: run the tests through scripts/test (it starts the services)");
        let cancel = CancellationToken::new();
        let conn = connect(&url, &cancel).await.expect("the broker answers");
        assert_eq!(conn.configuration().frame_max(), FRAME_MAX);
        let _ = conn.close(200, "bye".into()).await;
        let sep = if url.contains('?') { '&' } else { '?' };
        let conn = connect(&format!("{url}{sep}frame_max=65536"), &cancel).await.expect("the broker answers");
        assert_eq!(conn.configuration().frame_max(), 65536);
        let _ = conn.close(200, "bye".into()).await;
    }
}
