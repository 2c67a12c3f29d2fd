//! Forwarding an outbox over a peer link, time-sensitive traffic first and in the outbox's order.
//!
//! One loop per live link connection. The sans-I/O [`Dispatcher`] says which copy goes next
//! given the windows in flight ([`PEER_WINDOWS`]: 64 alerts, 1024 analytical copies, separate so
//! that an alert never waits for a slot bulk holds) and what each answer means; the ledger takes
//! and settles the copies. Time-sensitive copies each go on a stream of their own at their
//! precedence's priority; analytical ones through a [`Pipeline`], in the order the outbox gave
//! them, each released only once the peer has answered the alerts taken before it (so after an
//! outage the alerts reach the peer before the backlog behind them).
//!
//! Every forwarded copy is the originator's exact envelope bytes and signature with this node's
//! hop record appended. A copy the peer refuses for good is given up with a non-delivery
//! report; QUEUE_FULL or SHUTTING_DOWN defers it until the peer's retry-after; a lost connection
//! puts it back. A copy whose expiry passes while the peer has not answered it (a silent link,
//! before it is declared dead) is given up as `EXPIRED` then, so its non-delivery report leaves
//! on time; should the peer have taken it after all, it may still be delivered there.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use quinn::Connection;
use tokio::sync::mpsc;

use super::consume::{self, Settled, Sink};
use super::ledger::{InFlight, Queue};
use super::state::Node;
use crate::dispatch::{Dispatcher, Outcome, PEER_WINDOWS, Slot, Ticket};
use crate::error::SubmitError;
use crate::message::Precedence;
use crate::pipeline::{Answer, DEFAULT_WINDOW_BYTES, Pipeline};
use crate::session;
use crate::signers::SentChains;
use crate::wire::pb;

/// What a peer's answer to a forward means for `copy`; a peer that asks for the signer's chain
/// gets it with the next copy of that signer.
fn answered(
    answer: Result<pb::Accepted, SubmitError>,
    copy: &InFlight,
    chains: &SentChains,
) -> Outcome {
    if let Err(SubmitError::Refused {
        code: pb::RefusalCode::ChainNeeded,
        ..
    }) = &answer
        && let Some(s) = &copy.copy().message.signature
    {
        chains.forget(&s.signer_certificate_sha256);
    }
    outcome(answer)
}

/// The peer's answer to the forward of `copy`, or, once the copy's expiry passes without one,
/// an `EXPIRED` refusal (see the module docs).
async fn by_expiry(
    copy: &InFlight,
    answer: impl Future<Output = Result<pb::Accepted, SubmitError>>,
) -> Result<pb::Accepted, SubmitError> {
    let left = copy
        .copy()
        .message
        .deadline()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::timeout(left, answer)
        .await
        .unwrap_or_else(|_| {
            Err(SubmitError::Refused {
                code: pb::RefusalCode::Expired,
                reason: "expired while the peer had not answered its forward".into(),
                retry_after: None,
            })
        })
}

/// What a peer's answer to a forward means for the copy. One that asks for the signer's chain
/// gets the copy again at once (with the chain, see [`answered`]).
fn outcome(answer: Result<pb::Accepted, SubmitError>) -> Outcome {
    match answer {
        Ok(_) => Outcome::Done,
        Err(SubmitError::Refused {
            code: pb::RefusalCode::ChainNeeded,
            ..
        }) => Outcome::Busy(Some(std::time::Duration::ZERO)),
        Err(SubmitError::Refused {
            code, retry_after, ..
        }) if crate::refusal::is_busy(code) => Outcome::Busy(retry_after),
        Err(SubmitError::Refused { code, reason, .. }) => Outcome::Refused { code, reason },
        // The connection went away, or the peer spoke nonsense: try again on the next one.
        Err(SubmitError::Connection(_) | SubmitError::Protocol(_)) => Outcome::Lost,
    }
}

/// The copy to forward: the originator's envelope with this node's hop record appended, and the
/// signer's chain unless `sent` (the chains this connection's analytical stream carried; the
/// peer caches every chain it verified) has it. Alerts, each on a stream of their own, always
/// carry it.
fn with_hop(node: &Node, copy: &InFlight, sent: Option<&SentChains>) -> pb::SignedEnvelope {
    let c = copy.copy();
    let mut hops = c.transit.hops.clone();
    hops.push(
        node.ledger
            .hop_record(c.received_at, Some(SystemTime::now())),
    );
    let chain = SentChains::select(sent, c.message.signature.as_ref(), &c.transit.signer_chain);
    c.message.signed(hops, c.transit.route_to.clone(), chain)
}

/// Forwards `outbox` to `peer` over `conn` until the connection ends.
pub(super) async fn run(node: Arc<Node>, conn: Connection, peer: String, outbox: Arc<Queue>) {
    // Every copy in flight comes back once; the windows bound how many are in flight.
    let (settled, back) = mpsc::channel::<Settled>(PEER_WINDOWS.alerts + PEER_WINDOWS.analytical);
    let pipeline = Pipeline::new(
        conn.clone(),
        DEFAULT_WINDOW_BYTES,
        Precedence::Routine.stream_priority(),
        None,
    );
    let (analytical, rx) = mpsc::channel(PEER_WINDOWS.analytical);
    // Chains sent on this connection: a new connection sends them again.
    let chains = Arc::new(SentChains::default());
    let writer = tokio::spawn(forward_analytical(
        node.clone(),
        pipeline,
        rx,
        settled.clone(),
        chains.clone(),
    ));
    let mut sink = PeerSink {
        node: node.clone(),
        conn: conn.clone(),
        settled,
        held: VecDeque::new(),
        analytical,
        chains,
    };
    let dispatcher = Dispatcher::new(PEER_WINDOWS, node.retry, true);
    consume::run(
        &node,
        &outbox,
        dispatcher,
        &peer,
        back,
        &mut sink,
        conn.closed(),
    )
    .await;
    // The copies held or in the pipeline go back to the outbox as they are dropped.
    writer.abort();
}

/// How a peer link forwards its copies: alerts each on a stream of their own, analytical copies
/// through the pipeline, each once the alerts taken before it are answered.
struct PeerSink {
    node: Arc<Node>,
    conn: Connection,
    settled: mpsc::Sender<Settled>,
    /// Analytical copies taken, waiting for the alerts taken before them to be answered.
    held: VecDeque<(InFlight, Ticket)>,
    analytical: mpsc::Sender<(InFlight, Ticket)>,
    chains: Arc<SentChains>,
}

impl Sink for PeerSink {
    async fn send(&mut self, copy: InFlight, ticket: Ticket) -> bool {
        match ticket.slot {
            Slot::Alert => {
                let signed = with_hop(&self.node, &copy, None);
                let (conn, settled) = (self.conn.clone(), self.settled.clone());
                let chains = self.chains.clone();
                tokio::spawn(async move {
                    let priority = copy.precedence().stream_priority();
                    let answer = by_expiry(&copy, session::submit(&conn, signed, priority)).await;
                    let outcome = answered(answer, &copy, &chains);
                    let _ = settled.send((copy, ticket, outcome)).await;
                });
            }
            Slot::Analytical => self.held.push_back((copy, ticket)),
        }
        true
    }

    async fn settled(&mut self, dispatcher: &Dispatcher) -> bool {
        while self
            .held
            .front()
            .is_some_and(|(_, t)| dispatcher.released(t.barrier))
        {
            let next = self.held.pop_front().expect("checked above");
            // The channel has room for the whole window, so this never waits long.
            if self.analytical.send(next).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// Hands analytical copies to the pipeline in the order they come, and reports each answer (the
/// pipeline answers in order, so the oldest is always the next to complete).
async fn forward_analytical(
    node: Arc<Node>,
    pipeline: Pipeline,
    mut rx: mpsc::Receiver<(InFlight, Ticket)>,
    settled: mpsc::Sender<Settled>,
    chains: Arc<SentChains>,
) {
    let mut answers: VecDeque<(InFlight, Ticket, Answer)> = VecDeque::new();
    loop {
        let oldest = async {
            match answers.front_mut() {
                Some((copy, _, answer)) => by_expiry(copy, answer).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            answer = oldest => {
                let (copy, ticket, _) = answers.pop_front().expect("an answer came for it");
                let outcome = answered(answer, &copy, &chains);
                if settled.send((copy, ticket, outcome)).await.is_err() {
                    return;
                }
            }
            next = rx.recv() => {
                let Some((copy, ticket)) = next else { break };
                let signed = with_hop(&node, &copy, Some(&chains));
                match pipeline.hand_over(signed).await {
                    Ok(answer) => answers.push_back((copy, ticket, answer)),
                    Err(e) => {
                        let outcome = answered(Err(e), &copy, &chains);
                        let _ = settled.send((copy, ticket, outcome)).await;
                    }
                }
            }
        }
    }
    // The loop is gone: the copies still in the pipeline go back when their answers are
    // dropped with them.
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::wire::pb::RefusalCode;

    #[test]
    fn a_peers_answer_becomes_an_outcome() {
        assert_eq!(outcome(Ok(pb::Accepted::default())), Outcome::Done);
        let refused = |code, retry_after| {
            Err(SubmitError::Refused {
                code,
                reason: "why".into(),
                retry_after,
            })
        };
        // The peer lost the signer's chain: again at once (with it).
        assert_eq!(
            outcome(refused(RefusalCode::ChainNeeded, None)),
            Outcome::Busy(Some(Duration::ZERO))
        );
        let wait = Some(Duration::from_millis(250));
        assert_eq!(
            outcome(refused(RefusalCode::QueueFull, wait)),
            Outcome::Busy(wait)
        );
        assert_eq!(
            outcome(refused(RefusalCode::ShuttingDown, None)),
            Outcome::Busy(None)
        );
        assert_eq!(
            outcome(refused(RefusalCode::UnknownRecipient, None)),
            Outcome::Refused {
                code: RefusalCode::UnknownRecipient,
                reason: "why".into()
            }
        );
        assert_eq!(
            outcome(Err(SubmitError::Connection("reset".into()))),
            Outcome::Lost
        );
    }
}
