//! The one loop that drives a consumer of a queue: a subscribed client (`deliver`) or a peer
//! link (`forward`).
//!
//! It settles the copies whose attempts ended (the dispatcher says what each outcome means, the
//! ledger carries it out), asks the dispatcher for the next copy the windows allow and hands it
//! to the consumer's [`Sink`], and otherwise waits: for a settlement, for the queue to change,
//! for a parked copy to fall due, or for the consumer to end. What a consumer does with a copy
//! (a stream per alert, a pipelined stream for analytical copies, an acknowledgement or an
//! answer) is its own; the rules are the dispatcher's.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::ledger::{Copy, InFlight, Queue};
use super::state::Node;
use crate::dispatch::{Dispatcher, Next, Outcome, Ticket};

/// A copy whose attempt ended, on its way back to the loop.
pub(super) type Settled = (InFlight, Ticket, Outcome);

/// What a consumer does with the copies the loop takes for it.
pub(super) trait Sink {
    /// Sends `copy` (or holds it back); false when the consumer is gone.
    async fn send(&mut self, copy: InFlight, ticket: Ticket) -> bool;

    /// After settlements, before the next copy is taken: a chance to send what was held back
    /// (the dispatcher's barriers may have moved). False when the consumer is gone.
    async fn settled(&mut self, dispatcher: &Dispatcher) -> bool {
        let _ = dispatcher;
        true
    }

    /// Whether this consumer may have `copy` at all (a client, by the policy's receive rules);
    /// the loop takes only such copies for it and leaves the others for other consumers.
    fn accepts(&self, copy: &Copy) -> bool {
        let _ = copy;
        true
    }

    /// Completes when a consumer paused for time-sensitive copies (a late alert) shows it is
    /// alive after all; never, by default.
    async fn resumed(&self) {
        std::future::pending::<()>().await
    }
}

/// Drives `sink` over `queue` with `dispatcher` until `ended` completes or the sink is gone.
/// `back` brings the copies whose attempts ended (each copy in flight comes back once; the
/// channel is sized to the windows, so its senders never wait); `by` names the consumer to the
/// ledger (the client that acknowledged, the peer that accepted).
pub(super) async fn run(
    node: &Arc<Node>,
    queue: &Arc<Queue>,
    mut dispatcher: Dispatcher,
    by: &str,
    mut back: mpsc::Receiver<Settled>,
    sink: &mut impl Sink,
    ended: impl Future,
) {
    let mut ended = std::pin::pin!(ended);
    let settle = |d: &mut Dispatcher, (copy, ticket, outcome): Settled| {
        // A late alert goes back for the unit's other readers: the log says why.
        let late = (outcome == Outcome::Late).then(|| {
            format!(
                "{by} did not acknowledge within the alert deadline (limits.alert_ack_timeout_ms)"
            )
        });
        let action = d.settle(ticket, outcome, copy.copy().attempts, SystemTime::now());
        node.ledger
            .settle(copy, action, late.as_deref().unwrap_or(by));
    };
    loop {
        while let Ok(s) = back.try_recv() {
            settle(&mut dispatcher, s);
        }
        if !sink.settled(&dispatcher).await {
            return;
        }
        let notified = queue.notified();
        let next = node
            .ledger
            .next(queue, &mut dispatcher, SystemTime::now(), |c| {
                sink.accepts(c)
            });
        let (wake_at, full) = match next {
            Next::Send(copy, ticket) => {
                if !sink.send(copy, ticket).await {
                    return;
                }
                continue;
            }
            Next::Wait { wake_at } => (wake_at, false),
            Next::Full => (None, true),
        };
        let due = async {
            match wake_at {
                Some(at) => {
                    let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::time::sleep(wait).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut ended => return,
            s = back.recv() => match s {
                Some(s) => settle(&mut dispatcher, s),
                // Every sender is gone: nothing in flight can come back.
                None => return,
            },
            // With both windows full, a change of the queue changes nothing.
            _ = notified, if !full => {}
            _ = due => {}
            _ = sink.resumed() => dispatcher.resume_alerts(),
        }
    }
}
