//! Claims: each copy of a job a runner takes gets a fresh claim id, and the runner does nothing
//! with side effects until the scheduler granted that claim the attempt. [`Claims`] is the
//! runner's registry of them, fed by the control listener (grants and stops); a [`Claim`] is one
//! job's handle: its reporter, its cancellation token, and [`Claim::confirm`], which asks for
//! the grant — first before any work, again before the deploy step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_proto::Body;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::failure::JobError;
use crate::report::Reporter;

/// How often an unanswered claim is sent again (the scheduler re-grants a repeated claim); well
/// under any lease, so a lost grant costs a second, not the attempt.
const RESEND: Duration = Duration::from_secs(1);

/// The claims this runner holds or waits for.
#[derive(Debug, Default)]
pub struct Claims {
    inner: Mutex<HashMap<Uuid, Entry>>,
}

#[derive(Debug)]
struct Entry {
    deployment_id: Uuid,
    attempt: u32,
    cancel: CancellationToken,
    grant: Option<oneshot::Sender<()>>,
    stop_reason: Option<String>,
}

impl Claims {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<Uuid, Entry>) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Registers a claim before it is sent, so a stop that arrives before the grant is not lost.
    pub fn register(&self, claim: Uuid, deployment_id: Uuid, attempt: u32, cancel: CancellationToken) {
        let entry = Entry { deployment_id, attempt, cancel, grant: None, stop_reason: None };
        self.with(|m| m.insert(claim, entry));
    }

    /// Forgets a claim once its job ended or its copy was dropped.
    pub fn remove(&self, claim: Uuid) {
        self.with(|m| m.remove(&claim));
    }

    /// The scheduler granted `claim`: wake whoever waits for it.
    pub fn grant(&self, claim: Uuid) {
        self.with(|m| {
            if let Some(sender) = m.get_mut(&claim).and_then(|e| e.grant.take()) {
                let _ = sender.send(());
            }
        });
    }

    /// Stops `claim`, or every claim of (deployment, attempt) when `claim` is `None`; returns how
    /// many were stopped.
    pub fn stop(&self, deployment_id: Uuid, attempt: u32, claim: Option<Uuid>, reason: &str) -> usize {
        self.with(|m| {
            let mut stopped = 0;
            for (id, entry) in m.iter_mut() {
                let hit = match claim {
                    Some(c) => c == *id,
                    None => entry.deployment_id == deployment_id && entry.attempt == attempt,
                };
                if hit {
                    entry.stop_reason.get_or_insert_with(|| reason.to_string());
                    entry.cancel.cancel();
                    stopped += 1;
                }
            }
            stopped
        })
    }

    /// Why the scheduler stopped `claim`, if it did.
    pub fn stop_reason(&self, claim: Uuid) -> Option<String> {
        self.with(|m| m.get(&claim).and_then(|e| e.stop_reason.clone()))
    }

    fn expect_grant(&self, claim: Uuid) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.with(|m| {
            if let Some(entry) = m.get_mut(&claim) {
                entry.grant = Some(tx);
            }
        });
        rx
    }
}

/// One claimed copy of a job.
#[derive(Debug, Clone)]
pub struct Claim {
    pub id: Uuid,
    pub reporter: Reporter,
    /// Fires when the scheduler stops this claim, or when the runner aborts its jobs.
    pub cancel: CancellationToken,
    pub claims: Arc<Claims>,
}

impl Claim {
    /// Asks the scheduler to grant (or confirm) this claim the attempt, sending the claim again
    /// every few seconds until it answers, for at most `patience`. `Cancelled` means the
    /// scheduler refused the claim (or the runner is aborting); `NotConfirmed` that no answer came.
    pub async fn confirm(&self, patience: Duration) -> Result<(), JobError> {
        let mut granted = self.claims.expect_grant(self.id);
        let asking = async {
            loop {
                self.reporter.send_confirmed(Body::Claimed).await;
                tokio::select! {
                    _ = &mut granted => return,
                    _ = tokio::time::sleep(RESEND) => {}
                }
            }
        };
        tokio::select! {
            _ = self.cancel.cancelled() => Err(JobError::Cancelled),
            answered = tokio::time::timeout(patience, asking) => answered.map_err(|_| JobError::NotConfirmed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_names_one_claim_or_every_claim_of_the_attempt() {
        let claims = Claims::default();
        let (d, a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3), Uuid::from_u128(4));
        let tokens: Vec<CancellationToken> = (0..3).map(|_| CancellationToken::new()).collect();
        claims.register(a, d, 1, tokens[0].clone());
        claims.register(b, d, 1, tokens[1].clone());
        claims.register(c, d, 2, tokens[2].clone());
        assert_eq!(claims.stop(d, 1, Some(b), "duplicate copy"), 1);
        assert!(!tokens[0].is_cancelled() && tokens[1].is_cancelled() && !tokens[2].is_cancelled());
        assert_eq!(claims.stop_reason(b).as_deref(), Some("duplicate copy"));
        assert_eq!(claims.stop(d, 1, None, "cancelled"), 2);
        assert!(tokens[0].is_cancelled() && !tokens[2].is_cancelled());
        assert_eq!(claims.stop(Uuid::from_u128(9), 1, None, "unknown"), 0);
    }

    #[tokio::test]
    async fn a_grant_wakes_the_waiting_claim_and_a_stop_before_it_refuses() {
        let claims = Arc::new(Claims::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reporter =
            Reporter::new(crate::report::Outbox::new(tx), Uuid::from_u128(1), 1, "r".into(), Uuid::from_u128(2));
        let claim =
            Claim { id: Uuid::from_u128(2), reporter, cancel: CancellationToken::new(), claims: claims.clone() };
        claims.register(claim.id, Uuid::from_u128(1), 1, claim.cancel.clone());
        let waiting = tokio::spawn({
            let claim = claim.clone();
            async move { claim.confirm(Duration::from_secs(30)).await }
        });
        // The claim goes out, is confirmed by the broker, then the scheduler grants it.
        let sent = rx.recv().await.expect("claim sent");
        sent.confirm();
        tokio::task::yield_now().await;
        claims.grant(claim.id);
        assert!(waiting.await.expect("join").is_ok());

        let refused = tokio::spawn({
            let claim = claim.clone();
            async move { claim.confirm(Duration::from_secs(30)).await }
        });
        claims.stop(Uuid::from_u128(1), 1, Some(claim.id), "the deployment is cancelled");
        assert!(matches!(refused.await.expect("join"), Err(JobError::Cancelled)));
    }
}
