//! Wake-ups of live-log followers across scheduler replicas. PostgreSQL holds the lines and
//! states; a wake-up only says "deployment X has something new". Whichever replica stored it
//! sends `NOTIFY slipway_live, '<id>'` (batched, after the commit), and every replica LISTENs
//! and passes the id to its own followers. A lost connection loses no line: followers also
//! read again every two seconds, and every follower is woken once the listener is back.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The channel the wake-ups travel on (per database, so per installation).
pub const CHANNEL: &str = "slipway_live";

/// Most ids sent in one `NOTIFY` round.
const BATCH: usize = 256;

/// Wakes followers on every replica; [`Live::subscribe`] gives this replica's.
#[derive(Debug, Clone)]
pub struct Live {
    local: broadcast::Sender<Uuid>,
    outgoing: mpsc::UnboundedSender<Uuid>,
}

/// What [`Live::new`] leaves to run: the notifier and the listener.
pub struct Tasks {
    outgoing: mpsc::UnboundedReceiver<Uuid>,
    local: broadcast::Sender<Uuid>,
}

impl Live {
    pub fn new() -> (Self, Tasks) {
        let local = broadcast::channel(1024).0;
        let (outgoing, rx) = mpsc::unbounded_channel();
        (Self { local: local.clone(), outgoing }, Tasks { outgoing: rx, local })
    }

    /// Says deployment `id` has new lines or a new state, to the followers of every replica.
    pub fn wake(&self, id: Uuid) {
        let _ = self.outgoing.send(id);
    }

    /// This replica's wake-ups; the nil id wakes every follower.
    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.local.subscribe()
    }
}

impl Tasks {
    /// Runs the notifier and the listener until `cancel`.
    pub async fn run(self, pool: PgPool, cancel: CancellationToken) {
        tokio::join!(notify(pool.clone(), self.outgoing, cancel.clone()), listen(pool, self.local, cancel));
    }
}

/// Sends the queued ids as notifications, as many as are waiting in one statement.
async fn notify(pool: PgPool, mut outgoing: mpsc::UnboundedReceiver<Uuid>, cancel: CancellationToken) {
    let mut ids = Vec::with_capacity(BATCH);
    loop {
        let got = tokio::select! {
            _ = cancel.cancelled() => return,
            got = outgoing.recv_many(&mut ids, BATCH) => got,
        };
        if got == 0 {
            return;
        }
        ids.sort_unstable();
        ids.dedup();
        let payloads: Vec<String> = ids.drain(..).map(|id| id.to_string()).collect();
        let sent = sqlx::query("SELECT pg_notify($1, id) FROM unnest($2::text[]) AS id")
            .bind(CHANNEL)
            .bind(&payloads)
            .execute(&pool)
            .await;
        if let Err(err) = sent {
            // Followers read again within two seconds anyway.
            tracing::debug!(error = %err, "could not send live wake-ups");
        }
    }
}

/// Passes every notification to this replica's followers; reconnects when the connection fails
/// and then wakes every follower, since notifications sent meanwhile were missed.
async fn listen(pool: PgPool, local: broadcast::Sender<Uuid>, cancel: CancellationToken) {
    loop {
        let listener = pass_on(&pool, &local);
        tokio::select! {
            _ = cancel.cancelled() => return,
            Err(err) = listener => {
                tracing::warn!(error = %err, "live wake-up listener lost its connection; reconnecting");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Listens, wakes every follower (what was sent before is unknown), then passes notifications on
/// until the connection fails.
async fn pass_on(pool: &PgPool, local: &broadcast::Sender<Uuid>) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    let _ = local.send(Uuid::nil());
    loop {
        match listener.try_recv().await? {
            Some(note) => {
                if let Ok(id) = note.payload().parse::<Uuid>() {
                    let _ = local.send(id);
                }
            }
            // The connection was lost; the next call reconnects, and what was sent meanwhile is unknown.
            None => {
                tracing::warn!("live wake-up listener lost its connection; reconnecting");
                let _ = local.send(Uuid::nil());
            }
        }
    }
}
